//! AWS on loopback: moto in server mode behind our lifecycle shim
//! (`tests/peers/aws_peer.py`), run with the python of the virtual
//! environment `.ci/run` creates (`AMS_AGENT_TEST_MOTO_PYTHON`); the
//! account set up with boto3 (`tests/peers/aws_setup.py`) before IAM is
//! enforced with moto's `POST /moto-api/reset-auth`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const MOTO_PYTHON_ENV: &str = "AMS_AGENT_TEST_MOTO_PYTHON";
pub const REGION: &str = "eu-west-1";

/// The venv's python, or None (the test is skipped; under CI a failure).
pub fn moto_python() -> Option<PathBuf> {
    let p = std::env::var_os(MOTO_PYTHON_ENV).map(PathBuf::from);
    match p {
        Some(p) if p.exists() => Some(p),
        _ => {
            let why = format!(
                "{MOTO_PYTHON_ENV} does not name the python of a virtual environment with moto[server]==5.2.5 (.ci/run creates one)"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{why}, and under CI every test must run");
            }
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

pub struct AwsPeer {
    child: Child,
    python: PathBuf,
    pub port: u16,
}

impl AwsPeer {
    pub fn start() -> Option<AwsPeer> {
        let python = moto_python()?;
        let mut child = Command::new(&python)
            .arg(script("aws_peer.py"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tests/peers/aws_peer.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("the AWS peer did not start: {line:?}"))
            .parse()
            .unwrap();
        Some(AwsPeer {
            child,
            python,
            port,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `aws_setup.py` with `spec` (see the script); its answer.
    pub fn setup(&self, spec: Value) -> Value {
        let out = Command::new(&self.python)
            .arg(script("aws_setup.py"))
            .arg(self.url())
            .arg(REGION)
            .arg(spec.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "aws_setup.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// From now on every request is signed, checked and authorized.
    pub fn enforce_iam(&self) {
        let (status, body) = self.http("POST", "/moto-api/reset-auth", "0");
        assert_eq!(status, 200, "{body}");
    }

    /// The group scales `instance` in: its hook waits (Terminating:Wait).
    pub fn terminate(&self, instance: &str) -> Value {
        let (status, body) = self.http(
            "POST",
            "/__shim/terminate",
            &serde_json::json!({ "instance": instance, "region": REGION }).to_string(),
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Every lifecycle action and call the shim saw.
    pub fn actions(&self) -> Value {
        let (status, body) = self.http("GET", "/__shim/actions", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }
}

impl Drop for AwsPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hands the role `role`'s credentials (from [`AwsPeer::setup`]) out
/// through the IMDS peer, with the identity document of `instance`.
pub fn give_role(imds: &super::Imds, setup: &Value, role: &str, instance: &str) {
    let c = &setup["credentials"][role];
    imds.set_role(
        role,
        c["AccessKeyId"].as_str().unwrap(),
        c["SecretAccessKey"].as_str().unwrap(),
        c["SessionToken"].as_str().unwrap(),
        3600,
    );
    imds.set_dynamic(
        "instance-identity/document",
        &serde_json::json!({ "region": REGION, "instanceId": instance, "accountId": "123456789012" })
            .to_string(),
    );
}
