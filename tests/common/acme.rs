//! The ACME peers for `ams-agent cert`: Let's Encrypt's test server
//! [`Pebble`] (Debian `pebble` 2.4, `/usr/bin/pebble`) on loopback, the real
//! [`Certbot`] (Debian `certbot` 2.1, `/usr/bin/certbot`) pointed at it with
//! every directory under a test folder, the real `haproxy -c` (Debian
//! `haproxy` 2.6, [`haproxy_check`]) and [`busy_port`], a `python3` that holds
//! a TCP port as a web server would hold port 80. Needs the Debian packages
//! `certbot pebble haproxy openssl python3`.
//!
//! Every wait is bounded: Pebble's start ([`PEBBLE_START_TIMEOUT`]), every
//! certbot run ([`CERTBOT_TIMEOUT`], then its whole process group is killed
//! and the test panics with its output), every `openssl`/`haproxy` run.
//!
//! # Pebble
//!
//! Started with `-strict=false` (Go's flag package takes `-strict false` as
//! `-strict` plus a stray argument, so the `=` matters) and a JSON config with
//! `listenAddress`/`managementListenAddress` on `127.0.0.1:<free port>`, a
//! throwaway TLS pair (a tiny CA, [`Pebble::ca_bundle`], and a leaf for
//! `IP:127.0.0.1,DNS:localhost` that it signed; made by `openssl` at start)
//! and these variables: `PEBBLE_VA_ALWAYS_VALID=1` (no validation request is
//! made: certbot's standalone server still binds its `--http-01-port`),
//! `PEBBLE_VA_NOSLEEP=1`, `PEBBLE_WFE_NONCEREJECT=0` (no `badNonce` retries)
//! and `PEBBLE_AUTHZREUSE=0` (every order needs a fresh challenge, as a real
//! renewal 60 days later does; [`Pebble::start_with`] can change any of them).
//! Certbot sleeps 1 s before polling the authorizations and 1 s before
//! polling the finalized order, and its standalone server takes 0.5 s to
//! stop: a fresh order takes about 3 s. With `("PEBBLE_AUTHZREUSE", "100")`
//! a new order of the same account for names it already validated reuses the
//! valid authorizations: no challenge, certbot's standalone server does not
//! bind at all, about 1.5 s per run (renewals, `--duplicate`).
//! Pebble makes a new root and intermediate on every start (5-year leaves),
//! served by the management interface as PEM: [`Pebble::root_pem`]
//! (`/roots/0`) and [`Pebble::intermediate_pem`] (`/intermediates/0`), one
//! certificate each (`PEBBLE_CHAIN_LENGTH` is 1 by default).
//!
//! # Certbot 2.1, observed against Pebble 2.4
//!
//! * Names: Pebble accepts any syntactically valid name when validation is
//!   off (`live.example.test`, `example.com`, `ams.local`, `localhost`, even
//!   a dotless `node1`); uppercase is lowercased by certbot. The tests use
//!   names under `example.test` (RFC 2606; Let's Encrypt itself would refuse
//!   them). Certbot itself refuses an IP address (`Requested name 127.0.0.1
//!   is an IP address. The Let's Encrypt certificate authority will not issue
//!   certificates for a bare IP address.`, exit 1) and, with `--standalone`, a
//!   wildcard (`Client with the currently selected authenticator does not
//!   support any combination of challenges that will satisfy the CA. You may
//!   need to use an authenticator plugin that can do challenges over DNS.`,
//!   exit 1). A name with `_` fails with `AttributeError: can't set
//!   attribute` (exit 1).
//! * `--deploy-hook CMD` at `certonly` is stored in `renewal/<name>.conf`
//!   under `[renewalparams]` as `renew_hook = CMD` and **is run at the first
//!   issuance too**, by `certonly` itself, with `RENEWED_LINEAGE=<config
//!   dir>/live/<name>` and `RENEWED_DOMAINS` the names separated by spaces.
//!   `certbot renew --force-renewal` runs the stored hook once per renewed
//!   lineage with the same variables. The hook is a shell command (`sh -c`).
//! * **A failing hook does not change certbot's exit code**: `certonly` and
//!   `renew` both exit 0, the certificate is issued/renewed all the same, and
//!   stderr says `Hook 'deploy-hook' reported error code 3` then `Hook
//!   'deploy-hook' ran with error output:` and the hook's stderr indented by
//!   one space (the name is `deploy-hook` at `renew` too). So `ams-agent`
//!   must not rely on certbot's exit code to learn that a deploy failed.
//! * `<name>-0001`: `certonly` for a domain set that is neither a subset nor
//!   a superset of an existing lineage's (e.g. `{live, www}` after
//!   `{live, old}`), without `--cert-name`, makes a new lineage named after
//!   the first domain with `-0001` (then `-0002`, …); `--duplicate` does the
//!   same for the very same set. A strict superset without `--expand` fails
//!   in `--non-interactive` mode (exit 1, `You have an existing certificate
//!   that contains a portion of the domains you requested` … `(You can set
//!   this with the --expand flag)`). `renew` then runs the hook with
//!   `RENEWED_LINEAGE=<config dir>/live/<first domain>-0001`; it processes the
//!   renewal files in name order, so `live.example.test-0001.conf` comes
//!   before `live.example.test.conf`.
//! * Random sleep: `certbot renew` sleeps 1 to 480 s (`random.uniform(1,
//!   60 * 8)`, logged as `Non-interactive renewal: random delay of N
//!   seconds`) before the first due renewal whenever its stdin is not a
//!   terminal, unless `--no-random-sleep-on-renew` is given. Every command
//!   built by [`Certbot::command`] has that flag (harmless at `certonly`,
//!   where it is not stored in the renewal file).
//! * A busy `--http-01-port` fails the order (exit 1): `Could not bind TCP
//!   port N because it is already in use by another process on this system
//!   (such as a web server). Please stop the program in question and then try
//!   again.` Certbot names neither the process nor its pid. At `renew` (when
//!   a challenge is needed) the same text follows `Failed to renew
//!   certificate <name> with error: `, then `All renewals failed.` … and
//!   `1 renew failure(s), 0 parse failure(s)`, exit 1, nothing renewed.
//! * `renew --dry-run` orders against the same server but skips deploy hooks.
//! * Certbot always reads Debian's `/etc/letsencrypt/cli.ini`
//!   (`max-log-backups = 0`, `preconfigured-renewal = True`, so it says
//!   `Certbot has set up a scheduled task`) and `$XDG_CONFIG_HOME/letsencrypt/cli.ini`;
//!   the helper points `XDG_CONFIG_HOME` into the test folder.
//! * Lineage files: `live/<name>/{cert,chain,fullchain,privkey}.pem`
//!   (symlinks into `archive/<name>/<file>N.pem`), `fullchain.pem` is
//!   `cert.pem` followed by `chain.pem`, which is Pebble's intermediate.
//!   Keys are ECDSA (`key_type = ecdsa`, certbot 2's default).
//!
//! # HAProxy 2.6 `haproxy -c`, observed
//!
//! Exit 0 and `Configuration file is valid` on stdout for a PEM with the
//! certificate(s) and the matching key, for a directory of such files, and
//! also for the leaf and key **without** the intermediate (`-c` does not
//! check chain completeness). Exit 1 with `[ALERT]` lines on stderr, e.g.
//! `config : parsing [haproxy.cfg:9] : 'bind 127.0.0.1:PORT' in section
//! 'frontend' : ` followed by:
//!
//! * a key of another certificate: `inconsistencies between private key and
//!   certificate loaded '<pem>'.`
//! * the certificate only: `No Private Key found in '<pem>.key'.` (HAProxy
//!   looks for the key in a sibling `<pem>.key`; with that file present the
//!   certificate-only PEM passes);
//! * the key only, an empty or a garbage file: `unable to load certificate
//!   from file '<pem>'.`
//! * a missing file: `unable to stat SSL certificate from file '<pem>' : No
//!   such file or directory.`
//! * a directory holding another file (e.g. a README): `unable to load
//!   certificate from file '<dir>/README'.`
//! * an empty directory: `Proxy 'https': no SSL certificate specified for bind
//!   '127.0.0.1:PORT' at [haproxy.cfg:9] (use 'crt').`
//!
//! and then `Error(s) found in configuration file : haproxy.cfg` and `Fatal
//! errors found in configuration.`

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{PYTHON, free_port};

pub const PEBBLE: &str = "/usr/bin/pebble";
pub const CERTBOT: &str = "/usr/bin/certbot";
pub const HAPROXY: &str = "/usr/sbin/haproxy";
pub const OPENSSL: &str = "/usr/bin/openssl";

/// How long Pebble may take to listen on both ports.
pub const PEBBLE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one certbot run may take (a few seconds against Pebble).
pub const CERTBOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one `openssl`, `haproxy -c` or HTTPS request may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// The environment Pebble runs with unless [`Pebble::start_with`] overrides it.
pub const PEBBLE_ENV: &[(&str, &str)] = &[
    ("PEBBLE_VA_ALWAYS_VALID", "1"),
    ("PEBBLE_VA_NOSLEEP", "1"),
    ("PEBBLE_WFE_NONCEREJECT", "0"),
    ("PEBBLE_AUTHZREUSE", "0"),
];

fn need(binary: &str, package: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: apt-get install -y --no-install-recommends {package}"
    );
}

fn spawn_reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Kills `child`'s whole process group (it must have been started with
/// `process_group(0)`, as [`run_bounded`] does), e.g. a certbot and its hook.
pub fn kill_group(child: &Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Runs `cmd` (stdin from /dev/null, in its own process group) and returns
/// its output; if it has not exited within `limit`, kills its process group
/// and panics with `what` and everything it printed.
pub fn run_bounded(cmd: &mut Command, limit: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what} ({cmd:?}): {e}"));
    let out = spawn_reader(child.stdout.take().unwrap());
    let err = spawn_reader(child.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            kill_group(&child);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A grandchild still holding the pipes (a hook left in the background)
    // must not hang the test either.
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| {
            kill_group(&child);
            rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
        })
    };
    let stdout = collect(out);
    let stderr = collect(err);
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} did not finish within {limit:?}; killed its process group\n\
             --- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// stdout followed by stderr, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics with the output unless the run exited 0.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
}

fn openssl(args: &[&str], dir: &Path) -> Output {
    need(OPENSSL, "openssl");
    let out = run_bounded(
        Command::new(OPENSSL).args(args).current_dir(dir),
        TOOL_TIMEOUT,
        &format!("openssl {}", args.join(" ")),
    );
    assert_ok(&out, &format!("openssl {}", args.join(" ")));
    out
}

/// Makes a tiny CA (`ca.pem`) and a leaf it signed (`tls-cert.pem`,
/// `tls-key.pem`) for `IP:127.0.0.1,DNS:localhost` in `dir`: rustls and Go
/// refuse a self-signed CA certificate used as the server's own.
pub fn make_tls_pair(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ams-agent test Pebble TLS CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca, dir);
    let mut csr = vec!["req", "-new", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "tls-key.pem",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&csr, dir);
    std::fs::write(
        dir.join("tls-ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let serial = format!(
        "0x{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            "tls-ext.cnf",
            "-out",
            "tls-cert.pem",
        ],
        dir,
    );
    (
        dir.join("ca.pem"),
        dir.join("tls-cert.pem"),
        dir.join("tls-key.pem"),
    )
}

/// A running Pebble; killed (and its folder removed) on drop.
pub struct Pebble {
    child: Child,
    /// The ACME port (`listenAddress`).
    pub port: u16,
    /// The management port (`managementListenAddress`).
    pub management_port: u16,
    ca: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts Pebble with [`PEBBLE_ENV`] on free loopback ports and waits
    /// (at most [`PEBBLE_START_TIMEOUT`]) until both ports accept connections.
    pub fn start() -> Pebble {
        Pebble::start_with(&[])
    }

    /// As [`start`](Self::start), with `env` set over [`PEBBLE_ENV`] (e.g.
    /// `("PEBBLE_AUTHZREUSE", "100")`).
    pub fn start_with(env: &[(&str, &str)]) -> Pebble {
        need(PEBBLE, "pebble");
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = make_tls_pair(dir.path());
        // A free port can be taken by someone else before Pebble binds it:
        // try again with new ports then.
        for attempt in 1..=3 {
            let port = free_port();
            let management_port = free_port();
            let config = serde_json::json!({
                "pebble": {
                    "listenAddress": format!("127.0.0.1:{port}"),
                    "managementListenAddress": format!("127.0.0.1:{management_port}"),
                    "certificate": cert,
                    "privateKey": key,
                    "httpPort": free_port(),
                    "tlsPort": free_port(),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": false,
                }
            });
            let config_path = dir.path().join("pebble-config.json");
            std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
            let log = dir.path().join(format!("pebble-{attempt}.log"));
            let log_file = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(PEBBLE);
            cmd.arg("-config")
                .arg(&config_path)
                .arg("-strict=false")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file);
            for (k, v) in PEBBLE_ENV {
                cmd.env(k, v);
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("starting /usr/bin/pebble");
            let start = Instant::now();
            let up = |p: u16| TcpStream::connect(("127.0.0.1", p)).is_ok();
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("address already in use") && attempt < 3 {
                        break;
                    }
                    panic!("pebble exited ({status}) while starting:\n{text}");
                }
                if up(port) && up(management_port) {
                    return Pebble {
                        child,
                        port,
                        management_port,
                        ca,
                        log,
                        dir,
                    };
                }
                if start.elapsed() > PEBBLE_START_TIMEOUT {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "timed out after {PEBBLE_START_TIMEOUT:?} waiting for pebble to listen on \
                         127.0.0.1:{port} (ACME) and 127.0.0.1:{management_port} (management):\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unreachable!("pebble start attempts")
    }

    /// `https://127.0.0.1:<port>/dir`, for certbot's `--server`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// `https://127.0.0.1:<management port>`.
    pub fn management_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.management_port)
    }

    /// The CA of Pebble's own TLS certificate (PEM), for `REQUESTS_CA_BUNDLE`
    /// or `SSL_CERT_FILE`. It is not the CA that issues ACME certificates.
    pub fn ca_bundle(&self) -> &Path {
        &self.ca
    }

    /// Pebble's folder (config, TLS pair, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything Pebble logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET over HTTPS with rustls (reqwest), trusting only [`ca_bundle`](Self::ca_bundle);
    /// panics unless the answer is a 2xx within [`TOOL_TIMEOUT`].
    pub fn https_get(&self, url: &str) -> String {
        let ca = std::fs::read(&self.ca).unwrap();
        let url = url.to_string();
        // Its own thread: the caller may be inside a tokio runtime.
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = reqwest::Client::builder()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                    .timeout(TOOL_TIMEOUT)
                    .build()
                    .unwrap();
                let resp = client
                    .get(&url)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
                let status = resp.status();
                let body = resp.text().await.unwrap();
                assert!(status.is_success(), "GET {url}: {status}\n{body}");
                body
            })
        });
        handle
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// The root that issues ACME certificates (`/roots/0`), as PEM.
    pub fn root_pem(&self) -> String {
        self.https_get(&format!("{}/roots/0", self.management_url()))
    }

    /// The intermediate that signs leaves (`/intermediates/0`), as PEM.
    pub fn intermediate_pem(&self) -> String {
        self.https_get(&format!("{}/intermediates/0", self.management_url()))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real certbot, hermetic: its config, work and logs directories under
/// one folder, Pebble as `--server`, Pebble's TLS CA as `REQUESTS_CA_BUNDLE`.
pub struct Certbot {
    dir: PathBuf,
    server: String,
    ca_bundle: PathBuf,
    /// `--http-01-port` of certbot's standalone server (a free port by
    /// default; set it to a busy one to see certbot fail).
    pub http_port: u16,
    /// The bound of every run.
    pub timeout: Duration,
}

impl Certbot {
    /// Certbot for `pebble`, everything under `dir` (created if needed).
    pub fn new(pebble: &Pebble, dir: &Path) -> Certbot {
        need(CERTBOT, "certbot");
        std::fs::create_dir_all(dir).unwrap();
        Certbot {
            dir: dir.to_path_buf(),
            server: pebble.directory_url(),
            ca_bundle: pebble.ca_bundle().to_path_buf(),
            http_port: free_port(),
            timeout: CERTBOT_TIMEOUT,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// certbot's debug log (`<logs>/letsencrypt.log`, the latest run).
    pub fn debug_log(&self) -> String {
        std::fs::read_to_string(self.logs_dir().join("letsencrypt.log")).unwrap_or_default()
    }

    /// The arguments that keep certbot off `/etc/letsencrypt` and on Pebble:
    /// `--non-interactive --config-dir --work-dir --logs-dir --server
    /// --agree-tos --register-unsafely-without-email --standalone
    /// --preferred-challenges http --http-01-port`.
    pub fn hermetic_args(&self) -> Vec<String> {
        let p = |p: PathBuf| p.to_string_lossy().into_owned();
        vec![
            "--non-interactive".into(),
            "--config-dir".into(),
            p(self.config_dir()),
            "--work-dir".into(),
            p(self.work_dir()),
            "--logs-dir".into(),
            p(self.logs_dir()),
            "--server".into(),
            self.server.clone(),
            "--agree-tos".into(),
            "--register-unsafely-without-email".into(),
            "--standalone".into(),
            "--preferred-challenges".into(),
            "http".into(),
            "--http-01-port".into(),
            self.http_port.to_string(),
        ]
    }

    /// The environment certbot needs for Pebble: `REQUESTS_CA_BUNDLE`, no
    /// proxy for loopback, `XDG_CONFIG_HOME` under the folder.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "REQUESTS_CA_BUNDLE".into(),
                self.ca_bundle.to_string_lossy().into_owned(),
            ),
            ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
            ("no_proxy".into(), "127.0.0.1,localhost".into()),
            (
                "XDG_CONFIG_HOME".into(),
                self.dir.join("xdg").to_string_lossy().into_owned(),
            ),
        ]
    }

    /// `certbot <subcommand>` with [`hermetic_args`](Self::hermetic_args)
    /// and [`env`](Self::env), but without `--no-random-sleep-on-renew`.
    pub fn base_command(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(CERTBOT);
        cmd.arg(subcommand).args(self.hermetic_args());
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
            "CURL_CA_BUNDLE",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.env());
        cmd.current_dir(&self.dir);
        cmd
    }

    /// [`base_command`](Self::base_command) plus `--no-random-sleep-on-renew`.
    pub fn command(&self, subcommand: &str) -> Command {
        let mut cmd = self.base_command(subcommand);
        cmd.arg("--no-random-sleep-on-renew");
        cmd
    }

    /// Runs `cmd` bounded by [`timeout`](Self::timeout).
    pub fn run(&self, mut cmd: Command, what: &str) -> Output {
        run_bounded(&mut cmd, self.timeout, what)
    }

    /// `certbot certonly -d <domain>... [--cert-name <name>] <extra>`; does
    /// not check the exit status (see [`assert_ok`]).
    pub fn certonly(&self, domains: &[&str], cert_name: Option<&str>, extra: &[&str]) -> Output {
        let mut cmd = self.command("certonly");
        for d in domains {
            cmd.arg("-d").arg(d);
        }
        if let Some(name) = cert_name {
            cmd.arg("--cert-name").arg(name);
        }
        cmd.args(extra);
        self.run(
            cmd,
            &format!("certbot certonly -d {}", domains.join(" -d ")),
        )
    }

    /// `certbot renew --force-renewal <extra>` (every lineage, or `extra`'s
    /// `--cert-name`); does not check the exit status.
    pub fn renew_force(&self, extra: &[&str]) -> Output {
        let mut cmd = self.command("renew");
        cmd.arg("--force-renewal").args(extra);
        self.run(cmd, "certbot renew --force-renewal")
    }

    /// The lineage `name`; panics when `live/<name>` is missing.
    pub fn lineage(&self, name: &str) -> Lineage {
        let config = self.config_dir();
        let lineage = Lineage {
            name: name.to_string(),
            live: config.join("live").join(name),
            archive: config.join("archive").join(name),
            renewal_conf: config.join("renewal").join(format!("{name}.conf")),
        };
        assert!(
            lineage.live.is_dir(),
            "no lineage {name}: {} is missing (lineages: {:?})",
            lineage.live.display(),
            self.lineage_names()
        );
        lineage
    }

    /// The names under `live/`, sorted.
    pub fn lineage_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.config_dir().join("live"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// One certbot lineage.
#[derive(Debug, Clone)]
pub struct Lineage {
    pub name: String,
    /// `<config>/live/<name>` (what `RENEWED_LINEAGE` names).
    pub live: PathBuf,
    /// `<config>/archive/<name>`.
    pub archive: PathBuf,
    /// `<config>/renewal/<name>.conf`.
    pub renewal_conf: PathBuf,
}

impl Lineage {
    pub fn cert(&self) -> PathBuf {
        self.live.join("cert.pem")
    }

    pub fn chain(&self) -> PathBuf {
        self.live.join("chain.pem")
    }

    pub fn fullchain(&self) -> PathBuf {
        self.live.join("fullchain.pem")
    }

    pub fn privkey(&self) -> PathBuf {
        self.live.join("privkey.pem")
    }

    /// `live/<name>/<file>` as text, e.g. `read("fullchain.pem")`.
    pub fn read(&self, file: &str) -> String {
        let path = self.live.join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// How many versions `archive/<name>` holds (`cert1.pem`, `cert2.pem`, …).
    pub fn versions(&self) -> usize {
        std::fs::read_dir(&self.archive)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.starts_with("cert") && n.ends_with(".pem")
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// `renewal/<name>.conf`, parsed: the top-level keys under `""`, the
    /// others under their section (e.g. `"renewalparams"`).
    pub fn renewal_conf(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let text = std::fs::read_to_string(&self.renewal_conf)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.renewal_conf.display()));
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                out.entry(section.clone())
                    .or_default()
                    .insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        out
    }

    /// A key of `[renewalparams]`, e.g. `renew_hook`.
    pub fn renewal_param(&self, key: &str) -> Option<String> {
        self.renewal_conf()
            .get("renewalparams")
            .and_then(|s| s.get(key).cloned())
    }
}

/// Writes an executable shell hook `dir/<name>` that appends the line
/// `$RENEWED_LINEAGE|$RENEWED_DOMAINS` to `record`, prints a line on stderr
/// and exits with `exit_code`; returns the command for `--deploy-hook`.
pub fn recording_hook(dir: &Path, name: &str, record: &Path, exit_code: i32) -> String {
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\nprintf '%s|%s\\n' \"$RENEWED_LINEAGE\" \"$RENEWED_DOMAINS\" >> '{}'\n\
         echo 'hook {name} exits {exit_code}' >&2\nexit {exit_code}\n",
        record.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// The `(RENEWED_LINEAGE, RENEWED_DOMAINS)` pairs a [`recording_hook`]
/// recorded, in order.
pub fn hook_records(record: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (lineage, domains) = l.split_once('|').unwrap_or((l, ""));
            (lineage.to_string(), domains.to_string())
        })
        .collect()
}

/// The certificates of a PEM text, each as its own PEM block.
pub fn pem_certs(text: &str) -> Vec<String> {
    pem::parse_many(text)
        .unwrap_or_else(|e| panic!("not PEM: {e}"))
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| pem::encode(&p))
        .collect()
}

/// What the tests check of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub dns_names: Vec<String>,
    pub is_ca: bool,
}

/// Parses the first certificate of `pem_text`.
pub fn cert_info(pem_text: &str) -> CertInfo {
    let block = pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .expect("a CERTIFICATE block");
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).unwrap();
    let dns_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        dns_names,
        is_ca: cert.is_ca(),
    }
}

/// `openssl verify -CAfile <root> [-untrusted <untrusted>] <leaf>`: exit 0
/// and `<leaf>: OK` when the chain is complete.
pub fn openssl_verify(root: &Path, untrusted: Option<&Path>, leaf: &Path) -> Output {
    need(OPENSSL, "openssl");
    let mut cmd = Command::new(OPENSSL);
    cmd.arg("verify").arg("-CAfile").arg(root);
    if let Some(u) = untrusted {
        cmd.arg("-untrusted").arg(u);
    }
    cmd.arg(leaf);
    run_bounded(&mut cmd, TOOL_TIMEOUT, "openssl verify")
}

/// A minimal HAProxy config with `bind 127.0.0.1:<port> ssl crt <crt>` on
/// line 9 (`crt` a PEM file or a directory of them).
pub fn haproxy_ssl_config(port: u16, crt: &str) -> String {
    format!(
        "global\n\
         \x20   log stdout format raw local0\n\
         defaults\n\
         \x20   mode http\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 5s\n\
         \x20   timeout server 5s\n\
         frontend https\n\
         \x20   bind 127.0.0.1:{port} ssl crt {crt}\n\
         \x20   default_backend none\n\
         backend none\n\
         \x20   server s1 127.0.0.1:1\n"
    )
}

/// `haproxy -c -f <file name>` on an existing file, run in its folder.
pub fn haproxy_check_file(cfg: &Path) -> Output {
    need(HAPROXY, "haproxy");
    let mut cmd = Command::new(HAPROXY);
    // Run in the file's folder with the bare file name, so alerts say
    // `parsing [haproxy.cfg:9]` and relative `crt` paths resolve there.
    match (cfg.parent(), cfg.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            cmd.arg("-c").arg("-f").arg(name).current_dir(parent)
        }
        _ => cmd.arg("-c").arg("-f").arg(cfg),
    };
    run_bounded(&mut cmd, TOOL_TIMEOUT, "haproxy -c")
}

/// Writes `files` (`(relative path, contents)`; folders are made) and
/// `haproxy.cfg` = `cfg_text` (with `@DIR@` replaced by the folder) into a
/// new temporary folder and runs `haproxy -c -f haproxy.cfg` there, so
/// relative `crt` paths resolve in it. Exit 0 and `Configuration file is
/// valid` when accepted.
pub fn haproxy_check(cfg_text: &str, files: &[(&str, &[u8])]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    for (rel, contents) in files {
        let path = dir.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, contents).unwrap();
    }
    let cfg = dir.path().join("haproxy.cfg");
    let dir_text = dir.path().to_string_lossy().into_owned();
    std::fs::write(&cfg, cfg_text.replace("@DIR@", &dir_text)).unwrap();
    haproxy_check_file(&cfg)
}

/// The `[ALERT]` lines of a `haproxy -c` run.
pub fn haproxy_alerts(out: &Output) -> Vec<String> {
    text(out)
        .lines()
        .filter(|l| l.starts_with("[ALERT]"))
        .map(str::to_string)
        .collect()
}

const HOLD_PORT_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("PORT", s.getsockname()[1], flush=True)
sys.stdin.read()
"#;

/// A `/usr/bin/python3` listening on `0.0.0.0:<port>` (a kernel-chosen free
/// port), as a web server holds port 80: returns the port and the process
/// (`child.id()` is its pid, `/proc/<pid>/comm` is `python3`). It exits when
/// its stdin closes, i.e. when the `Child` is dropped or killed, or the test
/// process ends.
pub fn busy_port() -> (u16, Child) {
    hold_port(0)
}

/// As [`busy_port`], on `0.0.0.0:<port>` (0: any free port).
pub fn hold_port(port: u16) -> (u16, Child) {
    let mut child = Command::new(PYTHON)
        .arg("-c")
        .arg(HOLD_PORT_PY)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting /usr/bin/python3");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(TOOL_TIMEOUT).unwrap_or_default();
    let bound = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok());
    match bound {
        Some(p) => (p, child),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!(
                "python3 did not listen on 0.0.0.0:{port} within {TOOL_TIMEOUT:?}: {line:?}\n{err}"
            );
        }
    }
}
