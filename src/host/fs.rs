//! Root-prefixed host file access with atomic, durable writes.
//!
//! Every host path (`/etc/hosts`, `/usr/local/antmedia/conf/red5.properties`)
//! is resolved under [`Host::root`], so a whole host can be a temp dir in tests.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// Directory where the agent keeps its own state (backups, journal, markers).
pub const STATE_DIR: &str = "/var/lib/ams-agent";

/// The most the agent reads of one kind of file. Every read is bounded:
/// a file over its cap, or one that is not a regular file (a FIFO, a
/// device such as `/dev/zero`, a socket, a folder), is refused without
/// reading it (and without waiting for a FIFO's writer) as bad input
/// (exit 2), naming the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub bytes: u64,
    /// What such a file is, for the message ("a password file").
    pub what: &'static str,
}

impl Cap {
    /// A password or a secret: far more than any real password.
    pub const PASSWORD: Cap = Cap {
        bytes: 4 << 10,
        what: "a password file",
    };
    /// AMS's `.properties` files (a few KB in a real install).
    pub const PROPERTIES: Cap = Cap {
        bytes: 1 << 20,
        what: "a properties file",
    };
    /// `jee-container.xml` and other XML (about 20 KB in a real install).
    pub const XML: Cap = Cap {
        bytes: 4 << 20,
        what: "an XML file",
    };
    /// A PEM certificate bundle or key (a few KB).
    pub const PEM: Cap = Cap {
        bytes: 1 << 20,
        what: "a certificate or key file",
    };
    /// Small configuration files: agent.toml, mongod.conf, /etc/hosts, a
    /// Redis YAML, os-release, the agent's records.
    pub const CONFIG: Cap = Cap {
        bytes: 1 << 20,
        what: "a configuration file",
    };
    /// Anything else the agent reads (keystores, keyrings, backups).
    pub const FILE: Cap = Cap {
        bytes: 64 << 20,
        what: "a file the agent reads",
    };
}

/// Reads a file of the real filesystem (a path as the operator gave it, or
/// one already under the root), bounded by `cap` (see [`Cap`]): opened
/// without blocking (a FIFO never hangs the read), refused unless it is a
/// regular file of at most `cap.bytes`. `Ok(None)` when it does not exist.
/// `shown` names the file in messages (the host path, or the flag and path).
pub fn read_capped_real(
    real: &Path,
    shown: &str,
    cap: Cap,
) -> Result<Option<(Vec<u8>, std::fs::Metadata)>> {
    Ok(open_capped(real, shown, cap)?.map(|(_, bytes, m)| (bytes, m)))
}

/// What a file that is not a regular one is, for messages.
fn file_type_name(kind: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a folder"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// [`read_capped_real`], keeping the open file.
fn open_capped(
    real: &Path,
    shown: &str,
    cap: Cap,
) -> Result<Option<(File, Vec<u8>, fs::Metadata)>> {
    use std::io::Read;
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(real)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {shown}")),
    };
    let m = f.metadata().with_context(|| format!("reading {shown}"))?;
    if !m.file_type().is_file() {
        return Err(crate::error::UsageError::new(format!(
            "{shown} is {}, not a regular file; {} must be a regular file; nothing was changed",
            file_type_name(m.file_type()),
            cap.what
        ))
        .into());
    }
    let too_big = || {
        anyhow::Error::new(crate::error::UsageError::new(format!(
            "{shown} is larger than {} bytes, the most {} may hold; nothing was changed",
            cap.bytes, cap.what
        )))
    };
    if m.len() > cap.bytes {
        return Err(too_big());
    }
    // The size can grow while we read (or be 0, as in /proc): never read
    // more than the cap.
    let mut bytes = Vec::with_capacity(m.len() as usize + 1);
    (&mut f)
        .take(cap.bytes + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {shown}"))?;
    if bytes.len() as u64 > cap.bytes {
        return Err(too_big());
    }
    Ok(Some((f, bytes, m)))
}

/// The host as seen by the agent: a root prefix plus a fault-injection hook.
#[derive(Debug)]
pub struct Host {
    root: PathBuf,
    crash: CrashPoints,
}

/// Durability points counted during a run. When `AMS_AGENT_CRASH_AT=n` is set
/// (tests only) the process kills itself with SIGKILL at the n-th point, which
/// is how the "crash at any moment" guarantee is proven.
#[derive(Debug, Default)]
pub struct CrashPoints {
    crash_at: Option<u64>,
    seen: AtomicU64,
}

impl CrashPoints {
    pub fn at(n: Option<u64>) -> Self {
        CrashPoints {
            crash_at: n,
            seen: AtomicU64::new(0),
        }
    }

    /// Called after every step that changes durable state.
    pub fn point(&self) {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.crash_at == Some(n) {
            // SIGKILL: no destructors, no flushing, exactly like a power cut
            // for everything that was not fsynced.
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Owner and permission bits of a file, kept across rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>, crash: CrashPoints) -> Self {
        Host {
            root: root.into(),
            crash,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_real_root(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The real path of a host path: `/etc/hosts` → `<root>/etc/hosts`.
    pub fn path(&self, host_path: &Path) -> PathBuf {
        // `..` never climbs above the root.
        let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
        for c in host_path.components() {
            match c {
                Component::Normal(p) => parts.push(p),
                Component::ParentDir => {
                    parts.pop();
                }
                _ => {}
            }
        }
        let mut out = self.root.clone();
        out.extend(parts);
        out
    }

    pub fn crash_point(&self) {
        self.crash.point();
    }

    /// Reads a host file (bounded by [`Cap::FILE`]); `Ok(None)` when it
    /// does not exist.
    pub fn read_optional(&self, host_path: &Path) -> Result<Option<Vec<u8>>> {
        self.read_capped(host_path, Cap::FILE)
    }

    pub fn read(&self, host_path: &Path) -> Result<Vec<u8>> {
        self.read_optional(host_path)?
            .ok_or_else(|| anyhow::anyhow!("reading {}: no such file", host_path.display()))
    }

    /// Reads a host file bounded by `cap` (see [`Cap`]); `Ok(None)` when it
    /// does not exist.
    pub fn read_capped(&self, host_path: &Path, cap: Cap) -> Result<Option<Vec<u8>>> {
        let shown = host_path.display().to_string();
        Ok(read_capped_real(&self.path(host_path), &shown, cap)?.map(|(b, _)| b))
    }

    pub fn exists(&self, host_path: &Path) -> bool {
        self.path(host_path).exists()
    }

    /// What is at a host path (links followed), telling a clean absence
    /// from "cannot tell": `Ok(None)` when nothing is there and no symlink
    /// on the way leads nowhere; an error naming the path for anything else
    /// (no permission, a symlink loop, a dangling symlink the operator put
    /// there). [`Host::exists`] maps all of those to "absent".
    pub fn probe(&self, host_path: &Path) -> Result<Option<fs::Metadata>> {
        match fs::metadata(self.path(host_path)) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.dangling_link_on(host_path)?;
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("examining {}", host_path.display())),
        }
    }

    /// [`Host::probe`] for a regular file: `Ok(true)` when it is one.
    pub fn file_present(&self, host_path: &Path) -> Result<bool> {
        match self.probe(host_path)? {
            Some(m) if m.is_file() => Ok(true),
            Some(m) => Err(crate::error::UsageError::new(format!(
                "{} is {}, not a regular file; nothing was changed",
                host_path.display(),
                file_type_name(m.file_type())
            ))
            .into()),
            None => Ok(false),
        }
    }

    /// After a "not found": fails when the deepest entry that exists on the
    /// way to `host_path` is a symlink whose target is missing.
    fn dangling_link_on(&self, host_path: &Path) -> Result<()> {
        for ancestor in host_path.ancestors() {
            let real = self.path(ancestor);
            if real == self.root {
                return Ok(());
            }
            match fs::symlink_metadata(&real) {
                Ok(m) if m.file_type().is_symlink() => {
                    return match fs::metadata(&real) {
                        Ok(_) => Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            let target = fs::read_link(&real)
                                .map(|t| t.display().to_string())
                                .unwrap_or_else(|_| "?".into());
                            anyhow::bail!(
                                "{} is a symlink to {target}, which does not exist",
                                ancestor.display()
                            )
                        }
                        Err(e) => {
                            Err(e).with_context(|| format!("examining {}", ancestor.display()))
                        }
                    };
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("examining {}", ancestor.display()));
                }
            }
        }
        Ok(())
    }

    /// Follows symlinks so a change lands in the file the link points to,
    /// never replacing the link itself. A link leading outside the root is
    /// refused (only possible under a test root).
    pub fn resolve_links(&self, host_path: &Path) -> Result<PathBuf> {
        let real = self.path(host_path);
        match fs::symlink_metadata(&real) {
            Ok(m) if m.file_type().is_symlink() => {}
            _ => return Ok(host_path.to_path_buf()),
        }
        let target = fs::canonicalize(&real)
            .with_context(|| format!("following the symlink {}", host_path.display()))?;
        let root = fs::canonicalize(&self.root)
            .with_context(|| format!("resolving {}", self.root.display()))?;
        match target.strip_prefix(&root) {
            Ok(rel) => Ok(Path::new("/").join(rel)),
            Err(_) => anyhow::bail!(
                "{} is a symlink to {}, outside {}",
                host_path.display(),
                target.display(),
                self.root.display()
            ),
        }
    }

    /// True when the file is mounted on its own (Docker's /etc/hosts, a
    /// bind-mounted config file), which `rename` cannot replace.
    pub fn is_mount_point(&self, host_path: &Path) -> bool {
        let real = self.path(host_path);
        let (Ok(file), Some(Ok(dir))) =
            (fs::symlink_metadata(&real), real.parent().map(fs::metadata))
        else {
            return false;
        };
        if file.dev() != dir.dev() {
            return true;
        }
        // A bind mount from the same filesystem keeps the device: ask the
        // kernel's mount table.
        let canonical = fs::canonicalize(&real).unwrap_or(real);
        self.mounted_paths().contains(&canonical)
    }

    /// Every mount point of this process's mount namespace (real paths).
    pub fn mounted_paths(&self) -> std::collections::HashSet<PathBuf> {
        fs::read_to_string("/proc/self/mountinfo")
            .map(|table| {
                table
                    .lines()
                    .filter_map(|l| l.split(' ').nth(4))
                    .map(|m| PathBuf::from(unescape_mountinfo(m)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn is_dir(&self, host_path: &Path) -> bool {
        self.path(host_path).is_dir()
    }

    pub fn meta(&self, host_path: &Path) -> Result<Option<FileMeta>> {
        match fs::metadata(self.path(host_path)) {
            Ok(m) => Ok(Some(FileMeta {
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("reading metadata of {}", host_path.display()))
            }
        }
    }

    /// Creates a host directory (and parents) with the given mode for the
    /// directories it creates.
    pub fn create_dir_all(&self, host_path: &Path, mode: u32) -> Result<()> {
        let real = self.path(host_path);
        if real.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&real)
            .with_context(|| format!("creating directory {}", host_path.display()))
    }

    /// Writes a host file atomically and durably: temp file in the same
    /// folder, fsync, rename, fsync the folder. The file ends up with `meta`
    /// (mode, and owner where it differs from ours).
    pub fn write_atomic(&self, host_path: &Path, contents: &[u8], meta: FileMeta) -> Result<()> {
        let tmp = temp_path_for(host_path);
        self.write_temp(&tmp, contents, meta)
            .with_context(|| format!("writing {}", host_path.display()))?;
        self.rename(&tmp, host_path)
            .with_context(|| format!("writing {}", host_path.display()))
    }

    /// First half of an atomic write: a complete, fsynced temp file.
    pub fn write_temp(&self, tmp_host_path: &Path, contents: &[u8], meta: FileMeta) -> Result<()> {
        let (f, _) = self.create_temp(tmp_host_path, contents, meta)?;
        f.sync_all()
            .with_context(|| format!("syncing {}", self.path(tmp_host_path).display()))?;
        self.crash_point();
        Ok(())
    }

    /// A complete temp file, not yet flushed: the caller flushes the whole
    /// filesystem once for many files (see `txn`).
    /// Returns the device the file is on, for that flush.
    pub fn write_temp_unsynced(
        &self,
        tmp_host_path: &Path,
        contents: &[u8],
        meta: FileMeta,
    ) -> Result<u64> {
        let (_, dev) = self.create_temp(tmp_host_path, contents, meta)?;
        self.crash_point();
        Ok(dev)
    }

    fn create_temp(
        &self,
        tmp_host_path: &Path,
        contents: &[u8],
        meta: FileMeta,
    ) -> Result<(File, u64)> {
        let real = self.path(tmp_host_path);
        // A leftover from a crashed run is truncated and reused; never
        // followed if it is a symlink.
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&real)
            .with_context(|| format!("creating {}", real.display()))?;
        f.write_all(contents)
            .with_context(|| format!("writing {}", real.display()))?;
        let dev = set_owner_and_mode(&f, &real, meta)?;
        Ok((f, dev))
    }

    /// Reads a host file that is about to be replaced, with its owner and
    /// mode in one open, bounded by `cap`; `Ok(None)` when it does not
    /// exist. A file that cannot be replaced (immutable) is refused.
    pub fn read_with_meta(
        &self,
        host_path: &Path,
        cap: Cap,
    ) -> Result<Option<(Vec<u8>, FileMeta)>> {
        let shown = host_path.display().to_string();
        let Some((f, bytes, m)) = open_capped(&self.path(host_path), &shown, cap)? else {
            return Ok(None);
        };
        if let Some(flag) = replace_blocker(&f) {
            anyhow::bail!(
                "{} is {flag}, so it cannot be replaced; remove the flag (chattr -i -a) and run again; nothing was changed",
                host_path.display()
            );
        }
        Ok(Some((
            bytes,
            FileMeta {
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            },
        )))
    }

    /// Second half: rename into place and fsync the folder.
    pub fn rename(&self, from_host: &Path, to_host: &Path) -> Result<()> {
        let from = self.path(from_host);
        let to = self.path(to_host);
        fs::rename(&from, &to)
            .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
        sync_parent(&to)?;
        self.crash_point();
        Ok(())
    }

    /// A rename whose durability the caller provides (a later flush).
    pub fn rename_unsynced(&self, from_host: &Path, to_host: &Path) -> Result<()> {
        let from = self.path(from_host);
        let to = self.path(to_host);
        fs::rename(&from, &to)
            .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
        self.crash_point();
        Ok(())
    }

    /// Removes a host file (if present) durably.
    pub fn remove(&self, host_path: &Path) -> Result<()> {
        let real = self.path(host_path);
        match fs::remove_file(&real) {
            Ok(()) => {
                sync_parent(&real)?;
                self.crash_point();
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", host_path.display())),
        }
    }
}

/// An inode flag that makes a file impossible to replace (rename over it
/// fails with EPERM), found before any change rather than after the commit
/// point. Filesystems without inode flags (tmpfs) have none.
fn replace_blocker(f: &File) -> Option<&'static str> {
    use std::os::fd::AsRawFd;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long through the pointer.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if rc != 0 {
        return None;
    }
    const IMMUTABLE: libc::c_long = 0x10; // FS_IMMUTABLE_FL
    const APPEND_ONLY: libc::c_long = 0x20; // FS_APPEND_FL
    if flags & IMMUTABLE != 0 {
        Some("immutable (chattr +i)")
    } else if flags & APPEND_ONLY != 0 {
        Some("append-only (chattr +a)")
    } else {
        None
    }
}

/// Mount points in /proc/self/mountinfo escape space, tab, newline and
/// backslash as octal (`\040`).
pub fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The temp file used for an atomic write of `path`: same folder, hidden,
/// with a fixed name so a crashed run's leftover is overwritten next time.
pub fn temp_path_for(host_path: &Path) -> PathBuf {
    let name = host_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    host_path.with_file_name(format!(".{name}.ams-agent-tmp"))
}

/// Returns the device of the file.
fn set_owner_and_mode(f: &File, real: &Path, meta: FileMeta) -> Result<u64> {
    let current = f
        .metadata()
        .with_context(|| format!("reading metadata of {}", real.display()))?;
    if current.uid() != meta.uid || current.gid() != meta.gid {
        nix::unistd::fchown(
            f,
            Some(nix::unistd::Uid::from_raw(meta.uid)),
            Some(nix::unistd::Gid::from_raw(meta.gid)),
        )
        .with_context(|| {
            format!(
                "setting owner {}:{} on {} (run as root to keep the original owner)",
                meta.uid,
                meta.gid,
                real.display()
            )
        })?;
    }
    f.set_permissions(fs::Permissions::from_mode(meta.mode))
        .with_context(|| format!("setting mode {:o} on {}", meta.mode, real.display()))?;
    Ok(current.dev())
}

/// fsync the folder holding `path`, so a rename or removal in it is durable.
pub fn sync_parent(path: &Path) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let dir = File::open(parent).with_context(|| format!("opening {}", parent.display()))?;
    dir.sync_all()
        .with_context(|| format!("syncing folder {}", parent.display()))
}

/// The owner and mode for a file the agent creates: root-only, or ours in
/// tests where we are not root.
pub fn private_meta(mode: u32) -> FileMeta {
    FileMeta {
        mode,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\"), "/x\\");
    }

    #[test]
    fn paths_stay_under_root() {
        let h = Host::new("/tmp/r", CrashPoints::default());
        assert_eq!(
            h.path(Path::new("/etc/hosts")),
            Path::new("/tmp/r/etc/hosts")
        );
        assert_eq!(h.path(Path::new("/../../etc/x")), Path::new("/tmp/r/etc/x"));
    }

    #[test]
    fn atomic_write_keeps_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let h = Host::new(dir.path(), CrashPoints::default());
        let p = Path::new("/a/file");
        h.create_dir_all(Path::new("/a"), 0o755).unwrap();
        h.write_atomic(p, b"one", private_meta(0o640)).unwrap();
        h.write_atomic(p, b"two", private_meta(0o640)).unwrap();
        assert_eq!(h.read(p).unwrap(), b"two");
        assert_eq!(h.meta(p).unwrap().unwrap().mode, 0o640);
        assert!(!h.exists(&temp_path_for(p)));
    }
}
