//! The real binary on a fresh pseudo-terminal (its controlling terminal, so
//! Ctrl-C reaches it as SIGINT); everything it prints is collected.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::termios::{LocalFlags, tcgetattr};

pub struct OnTerminal {
    child: Child,
    master: std::fs::File,
    slave_probe: OwnedFd,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl OnTerminal {
    pub fn start(mut cmd: Command) -> Self {
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child and every copy of the slave are gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        OnTerminal {
            child,
            master,
            slave_probe: slave,
            screen,
        }
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits until `text` is on the screen `n` times in all.
    pub fn wait_for_nth(&self, text: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.screen().matches(text).count() < n {
            assert!(
                Instant::now() < deadline,
                "no `{text}` (#{n}) on the terminal within 10 s: {:?}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for_text(&self, text: &str) {
        self.wait_for_nth(text, 1);
    }

    pub fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }

    pub fn wait_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.drain();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not finish: {}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After the child exited, what it wrote may still sit in the pty
    /// (the reader thread runs on its own, and never sees EOF while
    /// `slave_probe` is open): wait until the screen stops growing for a
    /// moment (at most 5 s), so a check of the screen sees all of it.
    fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = self.screen.lock().unwrap().len();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(150) {
            std::thread::sleep(Duration::from_millis(10));
            let now = self.screen.lock().unwrap().len();
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.wait_within(Duration::from_secs(20))
    }

    pub fn echo_is_on(&self) -> bool {
        tcgetattr(&self.slave_probe)
            .unwrap()
            .local_flags
            .contains(LocalFlags::ECHO)
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
