//! Reading and changing AMS's configuration files: symlinks followed,
//! bind-mounted files refused, owner and mode kept, and files that hold a
//! secret kept readable by AMS's account but nobody else.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::host::Host;
use crate::host::fs::{FileMeta, private_meta};
use crate::plan::FileChange;

pub fn read_text(host: &Host, p: &Path) -> Result<String> {
    let bytes = host.read(p)?;
    String::from_utf8(bytes).with_context(|| format!("reading {}: not UTF-8 text", p.display()))
}

/// A file as it is now: its text, and owner and mode (None when absent).
pub struct Current {
    pub path: PathBuf,
    pub text: String,
    pub meta: Option<FileMeta>,
}

/// Reads a file once for both its content and its metadata.
pub fn load(host: &Host, path: &Path) -> Result<Current> {
    // A symlinked file is changed where it lives; the link stays.
    let resolved = host.resolve_links(path)?;
    let path = resolved.as_path();
    let (text, meta) = match host.read_with_meta(path)? {
        Some((bytes, meta)) => (
            String::from_utf8(bytes)
                .with_context(|| format!("reading {}: not UTF-8 text", path.display()))?,
            Some(meta),
        ),
        None => (String::new(), None),
    };
    Ok(Current {
        path: path.to_path_buf(),
        text,
        meta,
    })
}

/// A file bind-mounted on its own (a container volume) cannot be replaced
/// by a rename: say so before anything is changed.
pub fn refuse_mount_point(host: &Host, path: &Path) -> Result<()> {
    if host.is_mount_point(path) {
        bail!(
            "{} is a mount point of its own (a bind-mounted file?), which cannot be replaced atomically; mount its folder instead, or edit it where it is mounted from; nothing was changed",
            path.display()
        );
    }
    Ok(())
}

/// Like [`load`], for a file that must exist.
pub fn load_existing(host: &Host, path: &Path) -> Result<Current> {
    let cur = load(host, path)?;
    if cur.meta.is_none() {
        bail!("reading {}: the file disappeared", path.display());
    }
    Ok(cur)
}

/// Who must still read a file that holds a password: the AMS account
/// (uid, gid), or None when the host has no such account.
#[derive(Clone, Copy)]
pub enum Secret {
    No,
    ReadableBy(Option<(u32, u32)>),
}

/// The change from a file's current content to `new`.
pub fn change(cur: Current, new: String, secret: Secret) -> FileChange {
    let mut meta = cur.meta.unwrap_or_else(|| FileMeta {
        mode: 0o644,
        ..private_meta(0o644)
    });
    match secret {
        Secret::No => {}
        // The file now holds a password: no longer readable by everyone,
        // but still by AMS (as owner, else through its group).
        Secret::ReadableBy(Some((uid, gid))) => {
            if meta.uid == uid {
                meta.mode = (meta.mode & !0o007) | 0o400;
            } else {
                meta.gid = gid;
                meta.mode = (meta.mode & !0o007) | 0o040;
            }
        }
        // Without the account, tightening could lock AMS out of its own
        // configuration: leave the mode (plan() warns).
        Secret::ReadableBy(None) => {}
    }
    FileChange {
        path: cur.path,
        before: cur.meta.map(|_| cur.text.into_bytes()),
        after: Some(new.into_bytes()),
        meta_before: cur.meta,
        meta,
        internal: false,
    }
}
