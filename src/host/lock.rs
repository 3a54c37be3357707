//! One mutating ams-agent at a time per host (boot-time `join` and an
//! operator's `mode` must not interleave their transactions).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::fs::{Host, STATE_DIR};

/// Held for the life of the value; released by the kernel even on a crash.
pub struct HostLock {
    _lock: Flock<File>,
}

impl HostLock {
    /// Takes the host lock, waiting up to `deadline` for another run.
    pub fn acquire(host: &Host, deadline: Duration) -> Result<HostLock> {
        host.create_dir_all(Path::new(STATE_DIR), 0o700)?;
        let path = host.path(&Path::new(STATE_DIR).join("lock"));
        let start = Instant::now();
        let mut announced = false;
        loop {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(HostLock { _lock: lock }),
                Err((_, Errno::EWOULDBLOCK)) => {}
                Err((_, e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
            if start.elapsed() >= deadline {
                bail!(
                    "another ams-agent run is changing this host (it holds {}); waited {}",
                    path.display(),
                    humantime::format_duration(deadline)
                );
            }
            if !announced {
                tracing::info!("waiting for another ams-agent run to finish");
                announced = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
