//! Multi-file transactions: every file of one logical change lands together.
//!
//! Protocol (a redo journal):
//! 1. a one-time backup of each original, and every new content, are written
//!    to temp files beside their targets;
//! 2. the journal (the list of renames and removals) is written to a temp
//!    file, every filesystem involved is flushed once (`syncfs`), and the
//!    journal is renamed into place and its folder fsynced — the commit point;
//! 3. the renames are performed, and the filesystems flushed once more;
//! 4. the journal is removed.
//!
//! A crash before 2 leaves every target untouched (only stray temp files,
//! overwritten next time). A crash after 2 is rolled forward by [`recover`],
//! which every mutating command runs first. So after any crash and the next
//! run, every file of the change is either entirely old or entirely new, and
//! all of them agree. Flushing whole filesystems instead of each file costs
//! a handful of flushes per change whatever the number of files.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
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
    /// Keep a one-time copy of the original under the state dir.
    pub backup: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
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

/// Applies all writes as one transaction (see the module docs).
pub fn commit(host: &Host, writes: &[FileWrite]) -> Result<()> {
    if writes.is_empty() {
        return Ok(());
    }
    // A transaction left by an earlier crash must land before a new one.
    recover(host)?;
    host.create_dir_all(Path::new(STATE_DIR), 0o700)?;

    let mut journal = Journal::default();
    let mut temps: Vec<PathBuf> = Vec::new();
    let journal_tmp = temp_path_for(&journal_path());
    let prepared = prepare(host, writes, &mut journal, &mut temps).and_then(|()| {
        let encoded = serde_json::to_vec_pretty(&journal).context("encoding the journal")?;
        temps.push(journal_tmp.clone());
        host.write_temp_unsynced(&journal_tmp, &encoded, private_meta(0o600))
            .context("writing the transaction journal")?;
        sync_filesystems(host, &temps).context("flushing the new files to disk")?;
        host.rename(&journal_tmp, &journal_path())
            .context("committing the transaction journal")
    });
    if let Err(e) = prepared {
        // Before the commit point: no target was touched. Remove the temp
        // files so the host is exactly as it was.
        for tmp in &temps {
            let _ = std::fs::remove_file(host.path(tmp));
        }
        return Err(e.context("no file was changed"));
    }
    roll_forward(host, &journal)
}

/// Writes the backups and the temp files, unsynced (the caller flushes).
fn prepare(
    host: &Host,
    writes: &[FileWrite],
    journal: &mut Journal,
    temps: &mut Vec<PathBuf>,
) -> Result<()> {
    for w in writes.iter().filter(|w| w.backup) {
        let dest = backup_path(&w.path);
        if host.exists(&dest) {
            continue;
        }
        let Some(original) = host.read_optional(&w.path)? else {
            continue;
        };
        if let Some(parent) = dest.parent() {
            host.create_dir_all(parent, 0o700)?;
        }
        // Backups go straight into place: a backup is never wrong, only
        // perhaps not yet durable, and the flush below makes it so before
        // the commit point.
        let tmp = temp_path_for(&dest);
        temps.push(tmp.clone());
        host.write_temp_unsynced(&tmp, &original, private_meta(0o600))
            .with_context(|| format!("backing up {}", w.path.display()))?;
        host.rename_unsynced(&tmp, &dest)
            .with_context(|| format!("backing up {}", w.path.display()))?;
        temps.pop();
        temps.push(dest);
    }
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
                temps.push(tmp.clone());
                journal.renames.push((tmp.clone(), w.path.clone()));
                host.write_temp_unsynced(&tmp, bytes, w.meta)
                    .with_context(|| format!("writing {}", w.path.display()))?;
            }
            None => journal.removals.push(w.path.clone()),
        }
    }
    Ok(())
}

/// Flushes, once each, every filesystem holding one of these host paths.
fn sync_filesystems(host: &Host, paths: &[PathBuf]) -> Result<()> {
    let mut by_device: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for p in paths {
        let real = host.path(p);
        let probe = if real.exists() {
            real
        } else {
            real.parent().map(Path::to_path_buf).unwrap_or(real)
        };
        let dev = std::fs::metadata(&probe)
            .with_context(|| format!("reading metadata of {}", probe.display()))?
            .dev();
        by_device.entry(dev).or_insert(probe);
    }
    for probe in by_device.values() {
        let f = File::open(probe).with_context(|| format!("opening {}", probe.display()))?;
        nix::unistd::syncfs(&f)
            .with_context(|| format!("flushing the filesystem of {}", probe.display()))?;
    }
    host.crash_point();
    Ok(())
}

/// Whether a transaction interrupted by a crash waits to be completed.
pub fn pending(host: &Host) -> bool {
    host.exists(&journal_path())
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
    let mut touched = Vec::new();
    for (tmp, target) in &journal.renames {
        // Already renamed in an interrupted roll-forward: nothing to do.
        if host.exists(tmp) {
            host.rename_unsynced(tmp, target)
                .with_context(|| format!("replacing {}", target.display()))?;
        }
        touched.push(target.clone());
    }
    for p in &journal.removals {
        host.remove(p)?;
    }
    if !touched.is_empty() {
        sync_filesystems(host, &touched).context("flushing the replaced files to disk")?;
    }
    host.remove(&journal_path())
        .context("removing the transaction journal")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fs::CrashPoints;

    #[test]
    fn commit_writes_all_backs_up_once_and_removes_journal() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), CrashPoints::default());
        host.create_dir_all(Path::new("/a"), 0o755).unwrap();
        std::fs::write(host.path(Path::new("/a/one")), "0").unwrap();
        let write = |one: &str| {
            vec![
                FileWrite {
                    path: "/a/one".into(),
                    contents: Some(one.as_bytes().to_vec()),
                    meta: private_meta(0o644),
                    backup: true,
                },
                FileWrite {
                    path: "/b/two".into(),
                    contents: Some(b"2".to_vec()),
                    meta: private_meta(0o600),
                    backup: true,
                },
            ]
        };
        commit(&host, &write("1")).unwrap();
        commit(&host, &write("3")[..1]).unwrap();
        assert_eq!(host.read(Path::new("/a/one")).unwrap(), b"3");
        assert_eq!(host.read(Path::new("/b/two")).unwrap(), b"2");
        assert_eq!(host.read(&backup_path(Path::new("/a/one"))).unwrap(), b"0");
        assert!(!host.exists(&backup_path(Path::new("/b/two"))));
        assert!(!host.exists(&journal_path()));
        assert!(!recover(&host).unwrap());
    }
}
