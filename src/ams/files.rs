//! Reading and changing AMS's configuration files: symlinks followed,
//! bind-mounted files refused, owner and mode kept, and files that hold a
//! secret kept readable by AMS's account but nobody else.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::host::Host;
use crate::host::fs::{Cap, FileMeta, private_meta};
use crate::plan::FileChange;

/// The kinds of text file the agent edits, each with its size cap and the
/// way its bytes are text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Java `.properties` file. Read and written as
    /// `java.util.Properties.load(InputStream)` reads it: ISO-8859-1, one
    /// byte per character, so every byte outside the edited keys stays as
    /// it was (UTF-8 sequences included, which Java reads as two Latin-1
    /// characters anyway); the values the agent writes are ASCII with
    /// `\uXXXX` escapes.
    Properties,
    /// An XML file (`jee-container.xml`): UTF-8, as its declaration says.
    Xml,
    /// `/etc/hosts`: bytes, whatever their encoding (names are ASCII;
    /// anything else on other lines is kept byte for byte).
    Hosts,
}

impl Kind {
    fn cap(self) -> Cap {
        match self {
            Kind::Properties => Cap::PROPERTIES,
            Kind::Xml => Cap::XML,
            Kind::Hosts => Cap::CONFIG,
        }
    }

    /// The file's bytes as text.
    fn decode(self, bytes: Vec<u8>, path: &Path) -> Result<String> {
        match self {
            Kind::Xml => String::from_utf8(bytes)
                .with_context(|| format!("reading {}: not UTF-8 text", path.display())),
            // ISO-8859-1: byte n is U+00nn.
            Kind::Properties | Kind::Hosts => Ok(bytes.into_iter().map(char::from).collect()),
        }
    }

    /// Text back to the file's bytes.
    fn encode(self, text: String, path: &Path) -> Result<Vec<u8>> {
        match self {
            Kind::Xml => Ok(text.into_bytes()),
            Kind::Properties | Kind::Hosts => text
                .chars()
                .map(u8::try_from)
                .collect::<std::result::Result<Vec<u8>, _>>()
                .map_err(|_| {
                    anyhow::anyhow!(
                        "writing {}: a character outside ISO-8859-1 (a bug: values are written escaped)",
                        path.display()
                    )
                }),
        }
    }
}

pub fn read_text(host: &Host, p: &Path, kind: Kind) -> Result<String> {
    match host.read_capped(p, kind.cap())? {
        Some(bytes) => kind.decode(bytes, p),
        None => bail!("reading {}: no such file", p.display()),
    }
}

/// A file as it is now: its text, and owner and mode (None when absent).
pub struct Current {
    pub path: PathBuf,
    pub text: String,
    pub meta: Option<FileMeta>,
    pub kind: Kind,
}

/// Reads a file once for both its content and its metadata.
pub fn load(host: &Host, path: &Path, kind: Kind) -> Result<Current> {
    // A symlinked file is changed where it lives; the link stays.
    let resolved = host.resolve_links(path)?;
    let path = resolved.as_path();
    let (text, meta) = match host.read_with_meta(path, kind.cap())? {
        Some((bytes, meta)) => (kind.decode(bytes, path)?, Some(meta)),
        None => (String::new(), None),
    };
    Ok(Current {
        path: path.to_path_buf(),
        text,
        meta,
        kind,
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
pub fn load_existing(host: &Host, path: &Path, kind: Kind) -> Result<Current> {
    let cur = load(host, path, kind)?;
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
pub fn change(cur: Current, new: String, secret: Secret) -> Result<FileChange> {
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
    let before = match cur.meta {
        Some(_) => Some(cur.kind.encode(cur.text, &cur.path)?),
        None => None,
    };
    Ok(FileChange {
        after: Some(cur.kind.encode(new, &cur.path)?),
        path: cur.path,
        before,
        meta_before: cur.meta,
        meta,
        internal: false,
    })
}
