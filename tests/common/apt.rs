//! The apt peer for `ams-agent setup mongo`: a locally signed apt repository
//! over HTTP and its armored key over HTTPS (`tests/peers/apt_peer.py`, run
//! with Debian's `/usr/bin/python3`; needs the Debian packages `gnupg` and
//! `openssl`), and [`apt_get_update`], the real `apt-get update` run in a
//! sandbox against one sources file.
//!
//! # What tests should assert
//!
//! * Accepted: [`assert_update_ok`] — exit status 0 **and** no `W:`/`E:` line
//!   (a Suite/Codename mismatch, for one, is only a `W: Conflicting
//!   distribution` with exit 0), and [`AptSandbox::lists`] holds the
//!   `..._binary-<arch>_Packages` file.
//! * Refused for its key: [`assert_signature_rejected`] — exit status not 0
//!   **and** [`signature_rejected`] (the output names `NO_PUBKEY <key id>`, or
//!   says the repository "is not signed" / a signature "couldn't be
//!   verified"). The sandbox passes `-o APT::Update::Error-Mode=any`: without
//!   it, `apt-get update` exits 0 with only warnings when it still has lists
//!   from an earlier good run (a reused [`AptSandbox`]) or when the server
//!   cannot be reached. A fresh sandbox with a wrong key exits 100 with
//!   `W: GPG error: ... NO_PUBKEY <id>` and `E: The repository '...' is not
//!   signed.` (apt 2.6). A missing keyring file, an empty one, or an armored
//!   key in a file named `.gpg` all fail the same way (`NO_PUBKEY`); an
//!   armored key in a file named `.asc` is accepted.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::PYTHON;

/// How long the peer may take to make its keys, repository and certificate.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one `apt-get update` may take (it talks to loopback only).
const APT_TIMEOUT: Duration = Duration::from_secs(120);

/// The running peer; killed (and its folder removed) on drop.
pub struct AptPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    pub http_port: u16,
    pub https_port: u16,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

impl AptPeer {
    /// Starts the peer with one signed dist per `(dist, component)`, e.g.
    /// `&[("jammy/mongodb-org/8.0", "multiverse"), ("bookworm/mongodb-org/8.0", "main")]`,
    /// each with `binary-amd64` and `binary-arm64` indexes.
    ///
    /// The repository is served at [`repo_url`](Self::repo_url) and, as on
    /// repo.mongodb.org, also under `<repo_url>/apt/ubuntu` and
    /// `<repo_url>/apt/debian` (the same tree).
    pub fn start(dists: &[(&str, &str)]) -> AptPeer {
        let ((dist, component), rest) = dists.split_first().expect("at least one dist");
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/apt_peer.py");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(script).arg("--dir").arg(dir.path()).args([
            "--dist",
            dist,
            "--component",
            component,
        ]);
        for (d, c) in rest {
            cmd.arg("--also-dist").arg(format!("{d}:{c}"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting /usr/bin/python3 tests/peers/apt_peer.py (apt install python3 gnupg openssl)");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        // Read READY on a thread, so a stuck start-up cannot hang the test.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the apt peer did not start within {START_TIMEOUT:?}");
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_string)
        };
        let (Some(http), Some(https), Some(ca)) = (field("http="), field("https="), field("ca="))
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the apt peer did not start: {line:?}");
        };
        AptPeer {
            child,
            stdin,
            http_port: http.parse().unwrap(),
            https_port: https.parse().unwrap(),
            ca: PathBuf::from(ca),
            dir,
        }
    }

    /// `http://127.0.0.1:<port>`: the repository root (holds `dists/`).
    pub fn repo_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `https://127.0.0.1:<port>/key.asc`: the armored signing key.
    pub fn key_url(&self) -> String {
        self.url("/key.asc")
    }

    /// A URL on the HTTPS key server: `/key.asc`, `/other.asc`, `/key.gpg`,
    /// `/missing.asc` (404), `/notakey.asc` (HTML), `/empty.asc`,
    /// `/truncated.asc`, `/redirect.asc` (302 to /key.asc), `/slow.asc`
    /// (never answers), `/slow-body.asc` (stalls after half the body).
    pub fn url(&self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        format!("https://127.0.0.1:{}/{path}", self.https_port)
    }

    /// The test CA's certificate: give it to clients as `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// The peer's folder (see the script for its layout).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The armored public key that signs the repository (= `key_url()`).
    pub fn key_asc(&self) -> PathBuf {
        self.dir().join("key.asc")
    }

    /// `gpg --dearmor` of [`key_asc`](Self::key_asc): what a correct
    /// `signed-by` keyring holds.
    pub fn key_gpg(&self) -> PathBuf {
        self.dir().join("key.gpg")
    }

    /// An unrelated key, armored.
    pub fn other_asc(&self) -> PathBuf {
        self.dir().join("other.asc")
    }

    /// The unrelated key, binary.
    pub fn other_gpg(&self) -> PathBuf {
        self.dir().join("other.gpg")
    }

    /// The signing key's fingerprint (40 hex digits, upper case).
    pub fn fingerprint(&self) -> String {
        self.fpr("key")
    }

    /// The unrelated key's fingerprint.
    pub fn other_fingerprint(&self) -> String {
        self.fpr("other")
    }

    fn fpr(&self, which: &str) -> String {
        std::fs::read_to_string(self.dir().join("fingerprints"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(which)?.strip_prefix(' ').map(str::to_string))
            .unwrap()
    }

    /// Requests served over HTTPS so far, as `"GET /key.asc 200"`.
    pub fn https_requests(&self) -> Vec<String> {
        read_lines(&self.dir().join("https.log"))
    }

    /// Requests served over HTTP (the repository) so far.
    pub fn http_requests(&self) -> Vec<String> {
        read_lines(&self.dir().join("http.log"))
    }
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

impl Drop for AptPeer {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private apt state (lists, cache, config) for `apt-get update`; nothing
/// of the machine's apt configuration, keyrings, lists or locks is read or
/// written. Reuse one to see what a second `update` does with earlier lists.
pub struct AptSandbox {
    dir: tempfile::TempDir,
}

impl Default for AptSandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl AptSandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in [
            "etc/apt.conf.d",
            "etc/sources.list.d",
            "etc/trusted.gpg.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
            "sources",
        ] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        std::fs::write(p.join("status"), "").unwrap();
        // Read by apt before anything else (APT_CONFIG): it moves the config
        // folder, so /etc/apt/apt.conf.d (proxies, extra index targets,
        // hooks) and /etc/apt/trusted.gpg* are never read.
        let etc = p.join("etc");
        std::fs::write(
            p.join("apt.conf"),
            format!(
                "Dir::Etc \"{e}/\";\nDir::Etc::Parts \"{e}/apt.conf.d/\";\nDir::Etc::Main \"{e}/apt.conf\";\n",
                e = etc.display()
            ),
        )
        .unwrap();
        AptSandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// apt's lists folder (`Dir::State::Lists`).
    pub fn lists_dir(&self) -> PathBuf {
        self.path().join("state/lists")
    }

    /// The file names in the lists folder, e.g.
    /// `127.0.0.1:PORT_dists_jammy_mongodb-org_8.0_multiverse_binary-amd64_Packages`.
    pub fn lists(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.lists_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock")
            .collect();
        v.sort();
        v
    }

    /// Runs the real `apt-get update` with `sources_list` as its only
    /// sources (a `.list` file, or deb822 when it ends in `.sources`).
    ///
    /// `keyring_rewrite: Some((written, actual))` runs on a copy of the file
    /// (same file name) in which `signed-by=<written>` (one-line form) and
    /// `Signed-By: <written>` (deb822) point to `actual` instead, e.g.
    /// `("/usr/share/keyrings/mongodb-server-8.0.gpg", &root.join("usr/share/keyrings/mongodb-server-8.0.gpg"))`.
    /// Panics if `written` is not there, or if apt runs past its timeout.
    pub fn update(&self, sources_list: &Path, keyring_rewrite: Option<(&str, &Path)>) -> Output {
        let sources = match keyring_rewrite {
            None => sources_list.to_path_buf(),
            Some((written, actual)) => {
                let text = std::fs::read_to_string(sources_list)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", sources_list.display()));
                let new = rewrite_signed_by(&text, written, &actual.display().to_string());
                assert_ne!(
                    new,
                    text,
                    "no signed-by={written} in {}:\n{text}",
                    sources_list.display()
                );
                let copy = self
                    .path()
                    .join("sources")
                    .join(sources_list.file_name().expect("a sources file name"));
                std::fs::write(&copy, new).unwrap();
                copy
            }
        };
        let p = self.path();
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        let mut cmd = Command::new("apt-get");
        cmd.arg("update")
            .arg("-o")
            .arg(opt("Dir::Etc::SourceList", &sources))
            .arg("-o")
            .arg(opt("Dir::Etc::SourceParts", &p.join("etc/sources.list.d")))
            .arg("-o")
            .arg(opt("Dir::State", &p.join("state")))
            .arg("-o")
            .arg(opt("Dir::State::Lists", &p.join("state/lists")))
            .arg("-o")
            .arg(opt("Dir::State::status", &p.join("status")))
            .arg("-o")
            .arg(opt("Dir::Cache", &p.join("cache")))
            .arg("-o")
            .arg(opt("Dir::Log", &p.join("log")));
        for o in [
            "APT::Sandbox::User=root",
            "Debug::NoLocking=1",
            "Acquire::Languages=none",
            // Fail (exit 100) on any fetch or signature problem, even when
            // old lists could be used.
            "APT::Update::Error-Mode=any",
            "Acquire::Retries=0",
            "Acquire::http::Timeout=10",
            "Acquire::https::Timeout=10",
            "Acquire::http::Proxy=DIRECT",
            "Acquire::https::Proxy=DIRECT",
        ] {
            cmd.arg("-o").arg(o);
        }
        cmd.env("APT_CONFIG", p.join("apt.conf"))
            .env("LC_ALL", "C")
            .env("LANGUAGE", "C")
            .env("DEBIAN_FRONTEND", "noninteractive");
        for v in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
        ] {
            cmd.env_remove(v);
        }
        run_with_timeout(cmd, APT_TIMEOUT, &p.join("log"))
    }
}

/// `apt-get update` in a fresh [`AptSandbox`] (see [`AptSandbox::update`]).
pub fn apt_get_update(sources_list: &Path, keyring_rewrite: Option<(&str, &Path)>) -> Output {
    AptSandbox::new().update(sources_list, keyring_rewrite)
}

/// `signed-by=<written>` (followed by a space, `]` or the end of the line)
/// and the deb822 field `Signed-By: <written>` become `actual`; comments are
/// left alone.
fn rewrite_signed_by(text: &str, written: &str, actual: &str) -> String {
    let option = format!("signed-by={written}");
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        let field = t
            .get(..10)
            .filter(|k| k.eq_ignore_ascii_case("signed-by:"))
            .map(|_| t[10..].trim());
        if t.starts_with('#') {
            out.push_str(line);
        } else if field == Some(written) {
            out.push_str(&format!("Signed-By: {actual}"));
        } else {
            let mut rest = line;
            while let Some(i) = rest.find(&option) {
                let after = &rest[i + option.len()..];
                let ends = after.is_empty() || after.starts_with([' ', '\t', ']']);
                out.push_str(&rest[..i]);
                if ends {
                    out.push_str(&format!("signed-by={actual}"));
                } else {
                    out.push_str(&option);
                }
                rest = after;
            }
            out.push_str(rest);
        }
        out.push('\n');
    }
    out
}

fn run_with_timeout(mut cmd: Command, limit: Duration, logs: &Path) -> Output {
    let out_path = logs.join("apt-get.stdout");
    let err_path = logs.join("apt-get.stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("running apt-get");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "apt-get update still running after {limit:?}:\n{}{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// stdout then stderr, as text.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether apt's output says a signature could not be verified (gpgv's
/// `NO_PUBKEY`/`BADSIG`/`EXPKEYSIG`, "couldn't be verified", "is not
/// signed", or sqv's "Missing key" on newer apt). Pair it with a non-zero
/// exit status: see [`assert_signature_rejected`].
pub fn signature_rejected(out: &Output) -> bool {
    let t = output_text(out);
    [
        "NO_PUBKEY",
        "BADSIG",
        "EXPKEYSIG",
        "couldn't be verified",
        "is not signed",
        "Missing key",
    ]
    .iter()
    .any(|s| t.contains(s))
}

/// apt refused the repository because of its signature: exit status not 0
/// and the output says why.
pub fn assert_signature_rejected(out: &Output) {
    assert!(
        !out.status.success() && signature_rejected(out),
        "expected apt-get update to refuse the signature, got {}:\n{}",
        out.status,
        output_text(out)
    );
}

/// apt accepted everything: exit status 0 and not one warning or error.
pub fn assert_update_ok(out: &Output) {
    let text = output_text(out);
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("W:") || l.starts_with("E:") || l.starts_with("Err:"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "expected a clean apt-get update, got {}:\n{text}",
        out.status
    );
}
