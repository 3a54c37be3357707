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
//! which every mutating command runs first. The journal also records what
//! each target held at the commit point (a SHA-256 of its content): a target
//! that changed since (edited by hand after the crash) is never overwritten;
//! the roll-forward is refused, naming the file and the way out. So after any crash and the next
//! run, every file of the change is either entirely old or entirely new, and
//! all of them agree. Flushing whole filesystems instead of each file costs
//! a handful of flushes per change whatever the number of files.
//!
//! Backups: the original of a file everyone may read (`jee-container.xml`,
//! `/etc/hosts`) is kept once, before the agent's first change. A file not
//! readable by everyone, before or after the change, may hold a secret (the
//! AMS properties with the MongoDB URI or the store password, keys,
//! keystores, password files): its backup lives only while its transaction
//! runs (the recovery instructions point at it) and is removed once the
//! transaction is complete, so no old key or password piles up.

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
    /// What each target held at the commit point: the SHA-256 (hex) of its
    /// content, or None when it did not exist. (Journals of earlier
    /// versions have none: nothing to compare.)
    #[serde(default)]
    held: BTreeMap<PathBuf, Option<String>>,
    /// Backups of files that may hold a secret: removed once complete.
    #[serde(default)]
    transient_backups: Vec<PathBuf>,
}

/// The SHA-256 of a file's content (hex), None for no file.
fn digest(content: Option<&[u8]>) -> Option<String> {
    use sha2::Digest as _;
    content.map(|c| format!("{:x}", sha2::Sha256::digest(c)))
}

/// A file not readable by everyone (now or after the write) may hold a
/// secret; its backup does not outlive the transaction.
fn holds_secret(host: &Host, w: &FileWrite) -> Result<bool> {
    let now = host.meta(&w.path)?;
    Ok(w.meta.mode & 0o004 == 0 || now.is_some_and(|m| m.mode & 0o004 == 0))
}

fn journal_path() -> PathBuf {
    Path::new(STATE_DIR).join("journal.json")
}

/// Where the one-time backup of a host file is kept.
pub fn backup_path(host_path: &Path) -> PathBuf {
    let rel = host_path.strip_prefix("/").unwrap_or(host_path);
    Path::new(STATE_DIR).join("backup").join(rel)
}

/// Filesystems to flush: device → a host path on it.
type Devices = BTreeMap<u64, PathBuf>;

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
    let mut devices = Devices::new();
    let journal_tmp = temp_path_for(&journal_path());
    let prepared = prepare(host, writes, &mut journal, &mut temps, &mut devices).and_then(|()| {
        let encoded = serde_json::to_vec_pretty(&journal).context("encoding the journal")?;
        temps.push(journal_tmp.clone());
        let dev = host
            .write_temp_unsynced(&journal_tmp, &encoded, private_meta(0o600))
            .context("writing the transaction journal")?;
        devices.entry(dev).or_insert_with(|| journal_tmp.clone());
        sync_devices(host, &devices).context("flushing the new files to disk")?;
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
    roll_forward(host, &journal, Some(&devices)).map_err(|e| e.context(stuck_message(host)))
}

/// After the commit point a failure leaves the change half done: say so,
/// and how to get out.
fn stuck_message(host: &Host) -> String {
    format!(
        "the change is committed but could not be completed, so some files are new and some old; fix the cause and run ams-agent again to complete it (or, to abandon it, remove {} — the originals are under {})",
        host.path(&journal_path()).display(),
        host.path(&Path::new(STATE_DIR).join("backup")).display()
    )
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}

/// Writes the backups and the temp files, unsynced (the caller flushes).
fn prepare(
    host: &Host,
    writes: &[FileWrite],
    journal: &mut Journal,
    temps: &mut Vec<PathBuf>,
    devices: &mut Devices,
) -> Result<()> {
    for w in writes.iter().filter(|w| w.backup) {
        if holds_secret(host, w)? {
            journal.transient_backups.push(backup_path(&w.path));
        }
    }
    let backups: Vec<&FileWrite> = writes
        .iter()
        .filter(|w| w.backup && !host.exists(&backup_path(&w.path)))
        .collect();
    // Recorded first so a half-written one is cleaned up; once renamed into
    // place, removing the temp path is a no-op.
    temps.extend(backups.iter().map(|w| temp_path_for(&backup_path(&w.path))));
    for (dev, dest) in in_parallel(&backups, |w| back_up(host, w))?
        .into_iter()
        .flatten()
    {
        devices.entry(dev).or_insert(dest);
    }
    // Every temp is recorded before any is written, so a half-written one
    // is cleaned up whatever fails.
    let contents: Vec<&FileWrite> = writes.iter().filter(|w| w.contents.is_some()).collect();
    for w in &contents {
        let tmp = temp_path_for(&w.path);
        temps.push(tmp.clone());
        journal.renames.push((tmp, w.path.clone()));
    }
    let removals: Vec<&FileWrite> = writes.iter().filter(|w| w.contents.is_none()).collect();
    journal.removals = removals.iter().map(|w| w.path.clone()).collect();
    // Creating a file costs the filesystem more than writing it; files in
    // different folders are created in parallel (each thread also reads
    // what its target holds now, for the journal).
    let written = in_parallel(&contents, |w| {
        Ok((write_temp(host, w)?, held_now(host, &w.path)?))
    })?;
    for ((dev, held), w) in written.into_iter().zip(&contents) {
        devices.entry(dev).or_insert_with(|| temp_path_for(&w.path));
        journal.held.insert(w.path.clone(), held);
    }
    for w in removals {
        journal
            .held
            .insert(w.path.clone(), held_now(host, &w.path)?);
    }
    Ok(())
}

/// The digest of what a target holds now.
fn held_now(host: &Host, path: &Path) -> Result<Option<String>> {
    Ok(digest(host.read_optional(path)?.as_deref()))
}

/// Copies the original of a file to its backup path; returns the device
/// and the backup, or None when there is no original.
fn back_up(host: &Host, w: &FileWrite) -> Result<Option<(u64, PathBuf)>> {
    let dest = backup_path(&w.path);
    let Some(original) = host.read_optional(&w.path)? else {
        return Ok(None);
    };
    if let Some(parent) = dest.parent() {
        host.create_dir_all(parent, 0o700)?;
    }
    // Backups go straight into place: a backup is never wrong, only perhaps
    // not yet durable, and the flush before the commit point makes it so.
    let tmp = temp_path_for(&dest);
    let dev = host
        .write_temp_unsynced(&tmp, &original, private_meta(0o600))
        .with_context(|| format!("backing up {}", w.path.display()))?;
    host.rename_unsynced(&tmp, &dest)
        .with_context(|| format!("backing up {}", w.path.display()))?;
    Ok(Some((dev, dest)))
}

/// Writes the temp file of one new content; returns its device.
fn write_temp(host: &Host, w: &FileWrite) -> Result<u64> {
    let bytes = w.contents.as_deref().unwrap_or_default();
    let tmp = temp_path_for(&w.path);
    match host.write_temp_unsynced(&tmp, bytes, w.meta) {
        Err(e) if is_not_found(&e) && w.path.parent().is_some_and(|p| !host.is_dir(p)) => {
            // A new file in a new folder.
            host.create_dir_all(w.path.parent().expect("checked"), 0o755)?;
            host.write_temp_unsynced(&tmp, bytes, w.meta)
        }
        other => other,
    }
    .with_context(|| format!("writing {}", w.path.display()))
}

/// Runs `f` on every item, on up to 4 threads of at least
/// [`ITEMS_PER_THREAD`] items each; results in the order of the items, or
/// the first error.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let threads = items.len().div_ceil(ITEMS_PER_THREAD).clamp(1, 4);
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Result<Vec<R>>>()))
            .collect();
        let mut all = Vec::with_capacity(items.len());
        for w in workers {
            all.extend(w.join().expect("a file thread panicked")?);
        }
        Ok(all)
    })
}

/// The filesystems holding these host paths (for a recovery, where the
/// devices were not recorded).
fn devices_of(host: &Host, paths: &[PathBuf]) -> Result<Devices> {
    let mut devices = Devices::new();
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
        devices.entry(dev).or_insert_with(|| p.clone());
    }
    Ok(devices)
}

/// Flushes each filesystem once (`syncfs`): data and metadata of every file
/// written and renamed on it so far become durable.
fn sync_devices(host: &Host, devices: &Devices) -> Result<()> {
    for p in devices.values() {
        let real = host.path(p);
        let probe = if real.exists() {
            real
        } else {
            real.parent().map(Path::to_path_buf).unwrap_or(real)
        };
        let f = File::open(&probe).with_context(|| format!("opening {}", probe.display()))?;
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
    refuse_changed_targets(host, &journal)?;
    tracing::warn!("completing a change interrupted in an earlier run");
    roll_forward(host, &journal, None).map_err(|e| e.context(stuck_message(host)))?;
    Ok(true)
}

/// Before a roll-forward: every target still to be replaced or removed
/// must hold what it held at the commit point. One that changed since (a
/// hand edit after the crash) is named with the way out, and nothing is
/// written.
fn refuse_changed_targets(host: &Host, journal: &Journal) -> Result<()> {
    let mut changed = Vec::new();
    let pending = journal
        .renames
        .iter()
        .map(|(tmp, target)| (Some(tmp), target))
        .chain(journal.removals.iter().map(|target| (None, target)));
    for (tmp, target) in pending {
        let Some(held) = journal.held.get(target) else {
            continue;
        };
        if let Some(tmp) = tmp {
            // Renamed already (tmp gone): the new content is in place.
            match std::fs::symlink_metadata(host.path(tmp)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("examining {}", tmp.display()));
                }
                Ok(_) => {}
            }
        }
        let now = held_now(host, target)?;
        if tmp.is_none() && now.is_none() {
            continue; // removed already
        }
        if &now != held {
            changed.push((tmp, target));
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let files = changed
        .iter()
        .map(|(tmp, target)| {
            let backup = backup_path(target);
            let backup = if host.exists(&backup) {
                format!(
                    "its original (from before ams-agent first changed it) is {}",
                    host.path(&backup).display()
                )
            } else {
                "no backup of it was kept".to_string()
            };
            let new = match tmp {
                Some(tmp) => format!(
                    "; the content the change would write is {}",
                    host.path(tmp).display()
                ),
                None => "; the change would remove it".to_string(),
            };
            format!("{}: {backup}{new}", target.display())
        })
        .collect::<Vec<_>>()
        .join("; ");
    bail!(
        "a change interrupted in an earlier run cannot be completed: {} changed since the change was committed (edited after the crash?), and completing it would overwrite that; nothing was written. {files}. Merge by hand if needed, then remove {} to abandon the interrupted change (the next run plans again from the files as they are)",
        changed
            .iter()
            .map(|(_, t)| t.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        host.path(&journal_path()).display()
    )
}

fn rename_one(host: &Host, tmp: &Path, target: &Path) -> Result<()> {
    match std::fs::rename(host.path(tmp), host.path(target)) {
        Ok(()) => {
            host.crash_point();
            Ok(())
        }
        // Already renamed in an interrupted roll-forward: nothing to do.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("replacing {}", target.display())),
    }
}

/// Below this many files, one thread does the work.
const ITEMS_PER_THREAD: usize = 32;

fn roll_forward(host: &Host, journal: &Journal, devices: Option<&Devices>) -> Result<()> {
    // After the commit point the order of the renames does not matter, and
    // renames in different folders proceed in parallel in the filesystem
    // (a 200-application switch spends most of its time here).
    in_parallel(&journal.renames, |(tmp, target)| {
        rename_one(host, tmp, target)
    })?;
    for p in &journal.removals {
        host.remove(p)?;
    }
    let targets: Vec<PathBuf> = journal.renames.iter().map(|(_, t)| t.clone()).collect();
    let devices = match devices {
        Some(d) => d.clone(),
        None => devices_of(host, &targets)?,
    };
    sync_devices(host, &devices).context("flushing the replaced files to disk")?;
    for backup in &journal.transient_backups {
        host.remove(backup)
            .context("removing the backup of a file that may hold a secret")?;
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

    #[test]
    fn a_removal_over_a_changed_file_is_refused_and_an_unchanged_one_done() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), CrashPoints::default());
        host.create_dir_all(Path::new(STATE_DIR), 0o700).unwrap();
        host.create_dir_all(Path::new("/a"), 0o755).unwrap();
        let target = Path::new("/a/gone");
        std::fs::write(host.path(target), "at commit").unwrap();
        let journal = Journal {
            renames: Vec::new(),
            removals: vec![target.to_path_buf()],
            held: [(target.to_path_buf(), digest(Some(b"at commit")))].into(),
            ..Default::default()
        };
        let write_journal = || {
            std::fs::write(
                host.path(&journal_path()),
                serde_json::to_vec(&journal).unwrap(),
            )
            .unwrap()
        };
        write_journal();
        std::fs::write(host.path(target), "edited").unwrap();
        let err = format!("{:#}", recover(&host).unwrap_err());
        assert!(
            err.contains("/a/gone") && err.contains("would remove it"),
            "{err}"
        );
        assert_eq!(host.read(target).unwrap(), b"edited");
        assert!(host.exists(&journal_path()));

        std::fs::write(host.path(target), "at commit").unwrap();
        assert!(recover(&host).unwrap());
        assert!(!host.exists(target));
        assert!(!host.exists(&journal_path()));
    }

    #[test]
    fn backups_of_files_that_may_hold_a_secret_do_not_outlive_the_change() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), CrashPoints::default());
        host.create_dir_all(Path::new("/conf"), 0o755).unwrap();
        let set = |path: &str, text: &str, mode: u32| {
            let real = host.path(Path::new(path));
            std::fs::write(&real, text).unwrap();
            std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        set("/conf/public.xml", "old xml", 0o644);
        set("/conf/red5.properties", "clusterdb.host=", 0o644);
        set("/conf/keystore.jks", "old key", 0o600);
        // A backup an earlier version kept forever.
        let stale = backup_path(Path::new("/conf/keystore.jks"));
        host.create_dir_all(stale.parent().unwrap(), 0o700).unwrap();
        std::fs::write(host.path(&stale), "older key").unwrap();
        let write = |path: &str, text: &str, mode: u32| FileWrite {
            path: path.into(),
            contents: Some(text.as_bytes().to_vec()),
            meta: private_meta(mode),
            backup: true,
        };
        let writes = [
            write("/conf/public.xml", "new xml", 0o644),
            // Gains a password: no longer world-readable.
            write(
                "/conf/red5.properties",
                "clusterdb.host=mongodb://u:pw@h",
                0o640,
            ),
            write("/conf/keystore.jks", "new key", 0o600),
        ];
        // A crash right after the commit point: the recovery removes them too.
        let journal = {
            let mut j = Journal::default();
            let mut temps = Vec::new();
            let mut devices = Devices::new();
            prepare(&host, &writes, &mut j, &mut temps, &mut devices).unwrap();
            j
        };
        assert!(host.exists(&backup_path(Path::new("/conf/red5.properties"))));
        host.write_atomic(
            &journal_path(),
            &serde_json::to_vec(&journal).unwrap(),
            private_meta(0o600),
        )
        .unwrap();
        assert!(recover(&host).unwrap());
        assert_eq!(
            host.read(Path::new("/conf/keystore.jks")).unwrap(),
            b"new key"
        );
        assert_eq!(
            host.read(&backup_path(Path::new("/conf/public.xml")))
                .unwrap(),
            b"old xml"
        );
        for secret in ["/conf/red5.properties", "/conf/keystore.jks"] {
            assert!(!host.exists(&backup_path(Path::new(secret))), "{secret}");
        }
        // And a plain commit.
        commit(&host, &[write("/conf/keystore.jks", "newer key", 0o600)]).unwrap();
        assert!(!host.exists(&backup_path(Path::new("/conf/keystore.jks"))));
        assert!(host.exists(&backup_path(Path::new("/conf/public.xml"))));
    }

    /// Every file below `root`, relative, with its content.
    fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    let rel = p.strip_prefix(root).unwrap().to_path_buf();
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    #[test]
    fn a_failure_on_one_thread_leaves_every_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), CrashPoints::default());
        let mut writes = Vec::new();
        for i in 0..100 {
            let path = PathBuf::from(format!("/apps/a{i:03}/conf"));
            host.create_dir_all(path.parent().unwrap(), 0o755).unwrap();
            std::fs::write(host.path(&path), format!("old {i}")).unwrap();
            writes.push(FileWrite {
                path,
                contents: Some(format!("new {i}").into_bytes()),
                meta: private_meta(0o644),
                backup: false,
            });
        }
        // The 70th file's folder is a file: its temp cannot be created,
        // while other threads write theirs.
        std::fs::remove_dir_all(host.path(Path::new("/apps/a070"))).unwrap();
        std::fs::write(host.path(Path::new("/apps/a070")), "not a folder").unwrap();
        let before = tree(dir.path());

        let err = commit(&host, &writes).unwrap_err();
        assert!(
            format!("{err:#}").contains("no file was changed"),
            "{err:#}"
        );
        let after: BTreeMap<_, _> = tree(dir.path())
            .into_iter()
            .filter(|(p, _)| !p.starts_with("var/lib/ams-agent"))
            .collect();
        assert_eq!(after, before, "a temp file was left or a file changed");
        assert!(!host.exists(&journal_path()));
    }
}
