//! External programs, only ever through [`CommandRunner`]: the real one
//! spawns with a deadline, the recording one scripts replies for tests.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A program to run. Secrets go through `stdin`, never through `args`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    /// Extra environment (e.g. `DEBIAN_FRONTEND=noninteractive`).
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

impl CommandSpec {
    pub fn new(program: &str, args: &[&str]) -> Self {
        CommandSpec {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: None,
            env: Vec::new(),
            timeout: Duration::from_secs(120),
        }
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The command line as shown to the operator.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit code; None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn ok(stdout: &str) -> Self {
        Output {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// The last `n` non-empty lines of stderr (of stdout when stderr is
    /// empty), joined by " / ": where programs put their reason.
    pub fn tail(&self, n: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..].join(" / ")
    }

    pub fn failed(code: i32, stderr: &str) -> Self {
        Output {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
}

pub trait CommandRunner: Send + Sync {
    /// Runs a program to completion or its deadline. An `Err` means it could
    /// not be run at all (missing program, deadline passed); a non-zero exit
    /// is an `Ok(Output)` for the caller to judge.
    fn run(&self, spec: &CommandSpec) -> Result<Output>;
}

/// The environment variables that carry the agent's secrets (the MongoDB
/// passwords, systemd's credentials folder). The agent reads them; no child
/// (`systemctl`, `certbot`, `apt-get`, a hook) ever inherits them.
pub const SECRET_ENV: &[&str] = &[
    "AMS_AGENT_MONGO_PASSWORD",
    "AMS_AGENT_MONGO_ADMIN_PASSWORD",
    "CREDENTIALS_DIRECTORY",
];

/// Spawns real processes, without the agent's secret variables
/// ([`SECRET_ENV`]) in their environment.
#[derive(Debug, Default)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, spec: &CommandSpec) -> Result<Output> {
        let mut command = Command::new(&spec.program);
        for key in SECRET_ENV {
            command.env_remove(key);
        }
        let mut child = command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(if spec.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    anyhow::anyhow!("`{}` is not installed (not found on PATH)", spec.program)
                } else {
                    anyhow::Error::new(e).context(format!("running {}", spec.program))
                }
            })?;
        if let Some(input) = &spec.stdin {
            let mut stdin = child.stdin.take().expect("stdin was piped");
            let input = input.clone();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        let stdout = Collected::start(child.stdout.take().expect("stdout was piped"));
        let stderr = Collected::start(child.stderr.take().expect("stderr was piped"));
        let deadline = Instant::now() + spec.timeout;
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for a child")? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "`{}` did not finish within {} and was stopped",
                    spec.display(),
                    humantime::format_duration(spec.timeout)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // A program may leave a background process holding its output
        // (a daemon a postinst started): what it wrote is taken after a
        // short grace, never waited for without end.
        let grace = Instant::now() + Duration::from_secs(1);
        let stdout = stdout.finish(grace);
        let stderr = stderr.finish(grace);
        Ok(Output {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

/// A child's output, read on a thread as it comes.
struct Collected {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Collected {
    fn start(mut pipe: impl Read + Send + 'static) -> Self {
        let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, done) = std::sync::mpsc::channel();
        let sink = std::sync::Arc::clone(&bytes);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("output lock")
                    .extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(());
        });
        Collected { bytes, done }
    }

    /// Everything read by the end of the output, or by `until`.
    fn finish(self, until: Instant) -> Vec<u8> {
        let _ = self
            .done
            .recv_timeout(until.saturating_duration_since(Instant::now()));
        self.bytes.lock().expect("output lock").clone()
    }
}

/// Records every command and answers from a script; for tests (not in the
/// release binary).
#[cfg(any(test, feature = "test-hooks"))]
#[derive(Default)]
pub struct RecordingRunner {
    pub calls: std::sync::Mutex<Vec<CommandSpec>>,
    #[allow(clippy::type_complexity)]
    replies: std::sync::Mutex<Vec<(String, Output)>>,
}

#[cfg(any(test, feature = "test-hooks"))]
impl RecordingRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every command whose display line starts with `prefix` gets `out`.
    pub fn reply(&self, prefix: &str, out: Output) {
        self.replies.lock().unwrap().push((prefix.to_string(), out));
    }

    pub fn lines(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(CommandSpec::display)
            .collect()
    }
}

#[cfg(any(test, feature = "test-hooks"))]
impl CommandRunner for RecordingRunner {
    fn run(&self, spec: &CommandSpec) -> Result<Output> {
        self.calls.lock().unwrap().push(spec.clone());
        let line = spec.display();
        let replies = self.replies.lock().unwrap();
        Ok(replies
            .iter()
            .rev()
            .find(|(prefix, _)| line.starts_with(prefix.as_str()))
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| Output::ok("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_runner_enforces_the_deadline() {
        let spec = CommandSpec::new("sleep", &["5"]).timeout(Duration::from_millis(200));
        let start = Instant::now();
        let err = SystemRunner.run(&spec).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn a_background_process_holding_the_output_does_not_hang_the_run() {
        let spec = CommandSpec::new("sh", &["-c", "echo started; sleep 30 & exit 0"]);
        let start = Instant::now();
        let out = SystemRunner.run(&spec).unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(out.success());
        assert_eq!(out.stdout, "started\n");
    }

    #[test]
    fn a_missing_program_is_named() {
        let err = SystemRunner
            .run(&CommandSpec::new("no-such-program-here", &[]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`no-such-program-here` is not installed (not found on PATH)"
        );
    }

    #[test]
    fn real_runner_passes_stdin_and_reports_exit_code() {
        let mut spec = CommandSpec::new("sh", &["-c", "cat; exit 3"]);
        spec.stdin = Some(b"secret".to_vec());
        let out = SystemRunner.run(&spec).unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "secret");
    }
}
