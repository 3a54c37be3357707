//! Multi-file transactions: every file of one logical change lands together.
//!
//! Protocol (a classic redo journal):
//! 1. every new content is written to a fsynced temp file beside its target;
//! 2. the journal (the list of renames and removals) is written atomically —
//!    this is the commit point;
//! 3. the renames are performed, each folder fsynced;
//! 4. the journal is removed.
//!
//! A crash before 2 leaves every target untouched (only stray temp files,
//! overwritten next time). A crash after 2 is rolled forward by [`recover`],
//! which every mutating command runs first. So after any crash and the next
//! run, every file of the change is either entirely old or entirely new, and
//! all of them agree.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::fs::{FileMeta, Host, STATE_DIR, private_meta, temp_path_for};

/// One file of a transaction: new content, or removal when `contents` is None.
#[derive(Debug, Clone)]
pub struct FileWrite {
    pub path: PathBuf,
    pub contents: Option<Vec<u8>>,
    pub meta: FileMeta,
}

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    renames: Vec<(PathBuf, PathBuf)>,
    removals: Vec<PathBuf>,
}

fn journal_path() -> PathBuf {
    Path::new(STATE_DIR).join("journal.json")
}

/// Where the one-time backup of a host file is kept.
pub fn backup_path(host_path: &Path) -> PathBuf {
    let rel = host_path.strip_prefix("/").unwrap_or(host_path);
    Path::new(STATE_DIR).join("backup").join(rel)
}

/// Keeps a copy of each original the first time the agent changes it, so an
/// operator can always get back to what the installer shipped.
pub fn backup_originals(host: &Host, paths: &[&Path]) -> Result<()> {
    for &p in paths {
        let dest = backup_path(p);
        if host.exists(&dest) {
            continue;
        }
        let Some(original) = host.read_optional(p)? else {
            continue;
        };
        if let Some(parent) = dest.parent() {
            host.create_dir_all(parent, 0o700)?;
        }
        host.write_atomic(&dest, &original, private_meta(0o600))
            .with_context(|| format!("backing up {}", p.display()))?;
    }
    Ok(())
}

/// Applies all writes as one transaction (see the module docs).
pub fn commit(host: &Host, writes: &[FileWrite]) -> Result<()> {
    if writes.is_empty() {
        return Ok(());
    }
    // A transaction left by an earlier crash must land before a new one.
    recover(host)?;
    host.create_dir_all(Path::new(STATE_DIR), 0o700)?;

    let mut journal = Journal {
        renames: Vec::new(),
        removals: Vec::new(),
    };
    let prepared = prepare(host, writes, &mut journal).and_then(|()| {
        let encoded = serde_json::to_vec_pretty(&journal).context("encoding the journal")?;
        host.write_atomic(&journal_path(), &encoded, private_meta(0o600))
            .context("writing the transaction journal")
    });
    if let Err(e) = prepared {
        // Before the commit point: no target was touched. Remove the temp
        // files so the host is exactly as it was.
        for (tmp, _) in &journal.renames {
            let _ = std::fs::remove_file(host.path(tmp));
        }
        let _ = std::fs::remove_file(host.path(&temp_path_for(&journal_path())));
        return Err(e.context("no file was changed"));
    }
    roll_forward(host, &journal)
}

fn prepare(host: &Host, writes: &[FileWrite], journal: &mut Journal) -> Result<()> {
    for w in writes {
        match &w.contents {
            Some(bytes) => {
                if let Some(parent) = w.path.parent() {
                    if !host.is_dir(parent) {
                        host.create_dir_all(parent, 0o755)?;
                    }
                }
                let tmp = temp_path_for(&w.path);
                // Recorded before writing, so a half-written temp is cleaned.
                journal.renames.push((tmp.clone(), w.path.clone()));
                host.write_temp(&tmp, bytes, w.meta)
                    .with_context(|| format!("writing {}", w.path.display()))?;
            }
            None => journal.removals.push(w.path.clone()),
        }
    }
    Ok(())
}

/// Completes a transaction interrupted by a crash. Returns true when there
/// was one.
pub fn recover(host: &Host) -> Result<bool> {
    let Some(bytes) = host.read_optional(&journal_path())? else {
        return Ok(false);
    };
    let journal: Journal = match serde_json::from_slice(&bytes) {
        Ok(j) => j,
        Err(e) => bail!(
            "the transaction journal {} is unreadable ({e}); inspect it and remove it by hand",
            host.path(&journal_path()).display()
        ),
    };
    tracing::warn!("completing a change interrupted in an earlier run");
    roll_forward(host, &journal)?;
    Ok(true)
}

fn roll_forward(host: &Host, journal: &Journal) -> Result<()> {
    for (tmp, target) in &journal.renames {
        // Already renamed in an interrupted roll-forward: nothing to do.
        if host.exists(tmp) {
            host.rename(tmp, target)
                .with_context(|| format!("replacing {}", target.display()))?;
        }
    }
    for p in &journal.removals {
        host.remove(p)?;
    }
    host.remove(&journal_path())
        .context("removing the transaction journal")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fs::CrashPoints;

    #[test]
    fn commit_writes_all_and_removes_journal() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), CrashPoints::default());
        host.create_dir_all(Path::new("/a"), 0o755).unwrap();
        let writes = vec![
            FileWrite {
                path: "/a/one".into(),
                contents: Some(b"1".to_vec()),
                meta: private_meta(0o644),
            },
            FileWrite {
                path: "/b/two".into(),
                contents: Some(b"2".to_vec()),
                meta: private_meta(0o600),
            },
        ];
        commit(&host, &writes).unwrap();
        assert_eq!(host.read(Path::new("/a/one")).unwrap(), b"1");
        assert_eq!(host.read(Path::new("/b/two")).unwrap(), b"2");
        assert!(!host.exists(&journal_path()));
        assert!(!recover(&host).unwrap());
    }
}
