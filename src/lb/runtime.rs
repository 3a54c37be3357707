//! HAProxy's Runtime API over its admin socket (`stats socket … level
//! admin`, a unix socket): one connection per request, each with a
//! deadline, answers read to the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::haproxy::{LiveServer, parse_state};
use crate::human::escape;

/// The longest answer read (`show servers state` of 10,000 servers is
/// about 1 MB).
const MAX_ANSWER: usize = 16 << 20;
/// Commands per connection (HAProxy reads one line of at most its buffer
/// size, 16 kB by default).
const BATCH_BYTES: usize = 8 << 10;

#[derive(Debug, Clone)]
pub struct AdminSocket {
    /// The socket as named (shown in messages).
    pub shown: PathBuf,
    /// Its real path (under the host root).
    pub path: PathBuf,
    pub timeout: Duration,
}

/// What `show info` says about the process serving the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub pid: u32,
    pub uptime_sec: u64,
    pub version: String,
}

/// Connects to a unix socket within `timeout`; None when it did not
/// accept in time. A unix socket's connect does not go "in progress" the
/// way TCP's does (non-blocking, a full backlog is `EAGAIN`, nothing to poll
/// for); a blocking connect waits for room in the backlog for at most the
/// socket's send timeout, so that is the deadline.
fn connect(path: &Path, timeout: Duration) -> std::io::Result<Option<UnixStream>> {
    use nix::errno::Errno;
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
    use nix::sys::time::TimeVal;
    use std::os::fd::AsRawFd;
    let addr = UnixAddr::new(path).map_err(std::io::Error::from)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    // A zero send timeout is none at all.
    let wait = timeout.max(Duration::from_millis(1));
    let tv = TimeVal::new(wait.as_secs() as _, wait.subsec_micros() as _);
    socket::setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(std::io::Error::from)?;
    match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Ok(Some(UnixStream::from(fd))),
        Err(Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl AdminSocket {
    pub fn new(shown: &Path, real: PathBuf, timeout: Duration) -> Self {
        AdminSocket {
            shown: shown.to_path_buf(),
            path: real,
            timeout,
        }
    }

    /// Sends one line (commands separated by `;`) and reads the answer,
    /// all within the deadline.
    pub fn send(&self, line: &str) -> Result<String> {
        let what = line.split(';').next().unwrap_or(line).trim();
        let deadline = Instant::now() + self.timeout;
        let io = || -> std::io::Result<Option<Vec<u8>>> {
            let Some(mut s) = connect(&self.path, self.timeout)? else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "it accepted no connection within {} (its backlog is full: is HAProxy stuck?)",
                        crate::human::show_duration(self.timeout)
                    ),
                ));
            };
            s.set_write_timeout(Some(self.timeout))?;
            s.write_all(line.as_bytes())?;
            s.write_all(b"\n")?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 << 10];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                s.set_read_timeout(Some(left))?;
                match s.read(&mut chunk) {
                    Ok(0) => return Ok(Some(buf)),
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.len() > MAX_ANSWER {
                            return Err(std::io::Error::other(format!(
                                "the answer is larger than {} MB",
                                MAX_ANSWER >> 20
                            )));
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Ok(None);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        };
        match io() {
            Ok(Some(buf)) => Ok(String::from_utf8_lossy(&buf).into_owned()),
            Ok(None) => bail!(
                "HAProxy's admin socket {} did not answer `{what}` within {}",
                self.shown.display(),
                crate::human::show_duration(self.timeout)
            ),
            Err(e) => Err(anyhow!(e)).with_context(|| {
                format!(
                    "asking HAProxy's admin socket {} (`{what}`)",
                    self.shown.display()
                )
            }),
        }
    }

    pub fn info(&self) -> Result<Info> {
        let text = self.send("show info")?;
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(": ")))
                .map(str::trim)
        };
        let pid = field("Pid").and_then(|p| p.parse().ok()).ok_or_else(|| {
            anyhow!(
                "HAProxy's `show info` on {} has no Pid: {}",
                self.shown.display(),
                escape(text.lines().next().unwrap_or(""))
            )
        })?;
        Ok(Info {
            pid,
            uptime_sec: field("Uptime_sec")
                .and_then(|u| u.parse().ok())
                .unwrap_or(0),
            version: field("Version").unwrap_or("").to_string(),
        })
    }

    /// `show servers state`, raw (for the state file) and parsed.
    pub fn servers(&self) -> Result<(String, Vec<LiveServer>)> {
        let raw = self.send("show servers state")?;
        let parsed =
            parse_state(&raw).map_err(|e| anyhow!("{e} (from {})", self.shown.display()))?;
        Ok((raw, parsed))
    }

    /// Sends the commands in batches; returns whatever HAProxy answered
    /// (informational lines and errors alike: the caller checks the result
    /// by reading the state back).
    pub fn apply(&self, cmds: &[String]) -> Result<Vec<String>> {
        let mut answers = Vec::new();
        let mut batch = String::new();
        for (i, c) in cmds.iter().enumerate() {
            if !batch.is_empty() {
                batch.push_str("; ");
            }
            batch.push_str(c);
            if batch.len() >= BATCH_BYTES || i + 1 == cmds.len() {
                let answer = self.send(&batch)?;
                answers.extend(
                    answer
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(|l| escape(l).into_owned()),
                );
                batch.clear();
            }
        }
        Ok(answers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_whose_backlog_is_full_fails_within_the_deadline() {
        let dir = std::env::temp_dir().join(format!("ams-agent-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // A backlog of 0 holds one connection: the second one must wait.
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
        let _first = UnixStream::connect(&path).unwrap();
        let sock = AdminSocket::new(
            Path::new("/run/haproxy/admin.sock"),
            path.clone(),
            Duration::from_millis(300),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(sock.send("show info").map_err(|e| format!("{e:#}")));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("connecting to a full backlog must not hang");
        let err = got.expect_err("nothing answered");
        assert!(
            err.contains("/run/haproxy/admin.sock")
                && err.contains("300ms")
                && err.contains("backlog"),
            "{err}"
        );
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
