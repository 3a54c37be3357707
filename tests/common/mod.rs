//! Test peers for the registry: the MockupDB wire peer
//! (`tests/peers/mongo_peer.py`, run with Debian's `/usr/bin/python3`), an
//! in-test IMDSv2 server, and the optional real mongod
//! (`AMS_AGENT_TEST_MONGO_URI`).
#![allow(dead_code)]
pub mod acme;
pub mod apt;
pub mod aws;
pub mod cloud;
pub mod pty;
pub mod systemd;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PYTHON: &str = "/usr/bin/python3";

/// The real mongod to run the same scenarios against, when set.
pub fn real_mongo_uri() -> Option<String> {
    std::env::var("AMS_AGENT_TEST_MONGO_URI")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A database name nobody else uses, for runs against a real mongod.
pub fn unique_db(tag: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("amsagent_test_{tag}_{}", n % 1_000_000_000)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `f` holds, or panics naming `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Default)]
pub struct PeerOptions {
    pub port: Option<u16>,
    pub auth_fail: bool,
    /// Enforce authorization like mongod's `security.authorization: enabled`
    /// (`--auth`; see the script).
    pub auth: bool,
    pub seed: usize,
}

/// The MockupDB peer: a real socket speaking the wire protocol, recording
/// every command.
pub struct MongoPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub port: u16,
    pub record: PathBuf,
    _dir: tempfile::TempDir,
}

impl MongoPeer {
    pub fn start(opts: PeerOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("commands.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mongo_peer.py");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(script).arg("--record").arg(&record);
        if let Some(p) = opts.port {
            cmd.arg("--port").arg(p.to_string());
        }
        if opts.auth_fail {
            cmd.arg("--auth-fail");
        }
        if opts.auth {
            cmd.arg("--auth");
        }
        if opts.seed > 0 {
            cmd.arg("--seed").arg(opts.seed.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting /usr/bin/python3 tests/peers/mongo_peer.py (apt install python3-mockupdb)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("the peer did not start: {line:?}"))
            .parse()
            .unwrap();
        MongoPeer {
            child,
            stdin,
            stdout,
            port,
            record,
            _dir: dir,
        }
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// Sends a control line (see the script) and waits for its answer.
    pub fn control(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        assert_eq!(answer.trim(), format!("OK {line}"), "peer control");
    }

    /// Enforces authorization (`auth on`) or stops enforcing it (`auth off`).
    pub fn set_auth(&mut self, on: bool) {
        self.control(if on { "auth on" } else { "auth off" });
    }

    /// Adds (or replaces) the user `user` on `admin` with role `root@admin`
    /// and real SCRAM credentials for `pwd` (`adduser <json>`); no
    /// `mechanisms` means the default, `["SCRAM-SHA-256"]`. Panics when the
    /// peer refuses the user, e.g. a password SASLprep refuses (one with a
    /// newline or another control character), as mongod refuses it.
    pub fn add_user(&mut self, user: &str, pwd: &str, mechanisms: &[&str]) {
        let mut spec = serde_json::json!({
            "user": user,
            "pwd": pwd,
            "roles": [{"role": "root", "db": "admin"}],
        });
        if !mechanisms.is_empty() {
            spec["mechanisms"] = serde_json::json!(mechanisms);
        }
        self.control(&format!("adduser {spec}"));
    }

    /// Every recorded command, in order.
    pub fn commands(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The recorded commands named `name` (e.g. "update").
    pub fn named(&self, name: &str) -> Vec<Value> {
        self.commands()
            .into_iter()
            .filter(|c| c["cmd"] == name)
            .collect()
    }

    /// The documents of `db.coll` now (the `dump` control line).
    pub fn dump(&mut self, db: &str, coll: &str) -> Vec<Value> {
        self.control(&format!("dump {db} {coll}"));
        self.commands()
            .into_iter()
            .rev()
            .find(|c| c["cmd"] == "__dump" && c["db"] == db && c["coll"] == coll)
            .and_then(|c| c["docs"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The `u` of every recorded update, with the `q` filter.
    pub fn updates(&self) -> Vec<(Value, Value, Value)> {
        self.named("update")
            .into_iter()
            .flat_map(|c| {
                c["doc"]["updates"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|u| (u["q"].clone(), u["u"].clone(), u["upsert"].clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for MongoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The IMDSv2 endpoint, in-test: `PUT /latest/api/token` hands out tokens,
/// `GET /latest/meta-data/...` needs a valid one (401 otherwise).
pub struct Imds {
    pub url: String,
    pub state: Arc<ImdsState>,
}

pub struct ImdsState {
    pub items: Mutex<HashMap<String, String>>,
    pub tokens: Mutex<Vec<String>>,
    pub token_puts: AtomicUsize,
    pub gets: AtomicUsize,
    pub unauthorized: AtomicUsize,
    /// When set, tokens are handed out but GETs without one get 401 (IMDSv2 only).
    pub stop: AtomicBool,
    /// Items answered with this HTTP status instead of their value (e.g. 429).
    pub failures: Mutex<HashMap<String, u16>>,
    /// Every request (token and items alike) answered with this status
    /// (e.g. 503: the metadata service is down).
    pub all_fail: Mutex<Option<u16>>,
    /// The items read so far (`GET` paths under /latest/, in order).
    pub reads: Mutex<Vec<String>>,
}

impl Imds {
    pub fn start(instance_id: &str, local_ipv4: &str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
        let mut items = HashMap::new();
        items.insert("instance-id".into(), instance_id.into());
        items.insert("local-ipv4".into(), local_ipv4.into());
        items.insert("instance-type".into(), "c5.xlarge".into());
        items.insert("placement/availability-zone".into(), "eu-west-1a".into());
        let state = Arc::new(ImdsState {
            items: Mutex::new(items),
            tokens: Mutex::new(Vec::new()),
            token_puts: AtomicUsize::new(0),
            gets: AtomicUsize::new(0),
            unauthorized: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            failures: Mutex::new(HashMap::new()),
            all_fail: Mutex::new(None),
            reads: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve_imds(s, &st));
            }
        });
        Imds { url, state }
    }

    pub fn set(&self, item: &str, value: &str) {
        self.state
            .items
            .lock()
            .unwrap()
            .insert(item.into(), value.into());
    }

    /// `item` is answered with HTTP `status` from now on (e.g. 429 Too Many
    /// Requests, as IMDS throttles).
    pub fn fail(&self, item: &str, status: u16) {
        self.state
            .failures
            .lock()
            .unwrap()
            .insert(item.into(), status);
    }

    /// An item of `/latest/dynamic/` (e.g. `instance-identity/document`).
    pub fn set_dynamic(&self, item: &str, value: &str) {
        self.set(&format!("dynamic:{item}"), value);
    }

    pub fn unset(&self, item: &str) {
        self.state.items.lock().unwrap().remove(item);
    }

    /// The instance role `role` with these credentials
    /// (`iam/security-credentials/<role>`), valid for `valid_secs`.
    pub fn set_role(&self, role: &str, key: &str, secret: &str, token: &str, valid_secs: u64) {
        let expiration = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + Duration::from_secs(valid_secs),
        );
        self.set("iam/security-credentials/", role);
        self.set(
            &format!("iam/security-credentials/{role}"),
            &serde_json::json!({
                "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": key,
                "SecretAccessKey": secret, "Token": token,
                "Expiration": expiration.to_string(), "LastUpdated": "2026-01-01T00:00:00Z",
            })
            .to_string(),
        );
    }

    /// Every request answered with `status` (None: normal service again).
    pub fn fail_all(&self, status: Option<u16>) {
        *self.state.all_fail.lock().unwrap() = status;
    }

    /// How many times `item` was read.
    pub fn reads_of(&self, item: &str) -> usize {
        self.state
            .reads
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.as_str() == item)
            .count()
    }

    /// Every token handed out so far stops working (as after its TTL).
    pub fn expire_tokens(&self) {
        self.state.tokens.lock().unwrap().clear();
    }
}

fn serve_imds(mut s: TcpStream, st: &ImdsState) {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.lines();
    let request = lines.next().unwrap_or("");
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut parts = request.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let all_fail = *st.all_fail.lock().unwrap();
    let (status, body) = if let Some(status) = all_fail {
        (status, String::new())
    } else if method == "PUT" && path == "/latest/api/token" {
        if headers.contains_key("x-aws-ec2-metadata-token-ttl-seconds") {
            let n = st.token_puts.fetch_add(1, Ordering::SeqCst);
            let token = format!("token-{n}");
            st.tokens.lock().unwrap().push(token.clone());
            (200, token)
        } else {
            (400, "missing TTL header".to_string())
        }
    } else if method == "GET"
        && (path.starts_with("/latest/meta-data/") || path.starts_with("/latest/dynamic/"))
    {
        st.gets.fetch_add(1, Ordering::SeqCst);
        let valid = headers
            .get("x-aws-ec2-metadata-token")
            .is_some_and(|t| st.tokens.lock().unwrap().contains(t));
        if !valid {
            st.unauthorized.fetch_add(1, Ordering::SeqCst);
            (401, String::new())
        } else {
            let item = match path.strip_prefix("/latest/dynamic/") {
                Some(rest) => format!("dynamic:{rest}"),
                None => path["/latest/meta-data/".len()..].to_string(),
            };
            let item = item.as_str();
            st.reads.lock().unwrap().push(item.to_string());
            if let Some(status) = st.failures.lock().unwrap().get(item) {
                (*status, String::new())
            } else {
                match st.items.lock().unwrap().get(item) {
                    Some(v) => (200, v.clone()),
                    None => (404, String::new()),
                }
            }
        }
    } else {
        (404, String::new())
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
