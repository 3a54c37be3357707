//! `ams-agent setup mongo` end to end: the real binary on a host tree with
//! fake `apt-get`, `dpkg-query` and `systemctl` on PATH (they log and keep
//! state: an install drops the packaged mongod.conf, as mongodb-org does),
//! the signing key over real HTTPS from the apt peer, and the user/auth
//! steps against the wire peer speaking real SCRAM-SHA-256 with
//! authorization enforced.

mod common;
mod fixture;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::apt::AptPeer;
use common::pty::OnTerminal;
use common::{MongoPeer, PeerOptions};
use fixture::{error_line, stderr, stdout};

const BIN: &str = env!("CARGO_BIN_EXE_ams-agent");
const PACKAGED_CONF: &str = include_str!("../examples/host/etc/mongod.conf");

pub const UBUNTU_NOBLE: &str = "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nVERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n";

fn os_release(id: &str, version: &str) -> String {
    format!("NAME=\"{id}\"\nID={id}\nVERSION_ID=\"{version}\"\nPRETTY_NAME=\"{id} {version}\"\n")
}

/// A database host: a root with os-release, fakes on PATH, a state folder.
struct DbHost {
    dir: tempfile::TempDir,
}

impl DbHost {
    fn new(os_release: &str) -> Self {
        let h = DbHost {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(h.root().join("etc")).unwrap();
        fs::create_dir_all(h.bin()).unwrap();
        fs::create_dir_all(h.state()).unwrap();
        fs::write(h.root().join("etc/os-release"), os_release).unwrap();
        h.fakes(27017);
        h
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The fakes; an install writes mongod.conf with `port` (the peer's).
    fn fakes(&self, port: u16) {
        let state = self.state();
        let conf_dir = self.dir.path().join("package");
        fs::create_dir_all(&conf_dir).unwrap();
        fs::write(
            conf_dir.join("mongod.conf"),
            PACKAGED_CONF.replace("port: 27017", &format!("port: {port}")),
        )
        .unwrap();
        let s = state.display();
        let root = self.root();
        let r = root.display();
        let c = conf_dir.display();
        self.script(
            "apt-get",
            &format!(
                "echo \"DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*\" >> {s}/apt.log\n\
                 case \" $* \" in *\" install \"*) touch {s}/installed; [ -e {r}/etc/mongod.conf ] || cp {c}/mongod.conf {r}/etc/mongod.conf;; esac\n\
                 [ -e {s}/apt-fail ] && {{ echo 'E: Unable to locate package mongodb-org' >&2; exit 100; }}\n\
                 exit 0\n"
            ),
        );
        self.script(
            "dpkg-query",
            &format!(
                "if [ -e {s}/installed ]; then printf 'install ok installed\\t8.0.4'; exit 0; fi\n\
                 echo 'dpkg-query: no packages found matching mongodb-org' >&2; exit 1\n"
            ),
        );
        self.script(
            "systemctl",
            &format!(
                "echo \"$*\" >> {s}/systemctl.log\n\
                 unit=$(echo \"$*\" | awk '{{print $NF}}')\n\
                 case \"$1\" in\n\
                 is-active) [ -e {s}/active-$unit ]; exit $?;;\n\
                 is-enabled) [ -e {s}/enabled-$unit ]; exit $?;;\n\
                 enable) touch {s}/enabled-$unit; [ \"$2\" = --now ] && touch {s}/active-$unit;;\n\
                 start|restart) [ -e {s}/fail-$unit ] && {{ echo \"Job for $unit failed\" >&2; exit 1; }}; touch {s}/active-$unit;;\n\
                 esac\n\
                 exit 0\n"
            ),
        );
    }

    fn script(&self, name: &str, body: &str) {
        let p = self.bin().join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn log(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.state().join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("AMS_AGENT_ROOT", self.root())
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.bin().display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .env_remove("AMS_AGENT_MONGO_ADMIN_PASSWORD")
            .env_remove("AMS_AGENT_MONGO_PASSWORD")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    fn mode(&self, rel: &str) -> u32 {
        fs::metadata(self.root().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    fn write_password(&self, pw: &str) -> PathBuf {
        let p = self.dir.path().join("admin-pw");
        fs::write(&p, format!("{pw}\n")).unwrap();
        p
    }

    fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        walk(&self.root(), &self.root(), &mut out);
        out.sort();
        out
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        // The agent's own lock and journal are not the host's files.
        if p.ends_with("var/lib/ams-agent") {
            continue;
        }
        if p.is_dir() {
            walk(base, &p, out);
        } else {
            out.push((
                p.strip_prefix(base).unwrap().display().to_string(),
                fs::read(&p).unwrap(),
            ));
        }
    }
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/setup-mongo")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&path, actual).unwrap();
    }
    let want = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e} (UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    });
    assert_eq!(
        actual, want,
        "golden {name} differs (UPDATE_GOLDEN=1 rewrites it)"
    );
}

#[test]
fn the_whole_plan_per_supported_release() {
    let cases = [
        ("ubuntu", "20.04", "8.0", "focal"),
        ("ubuntu", "22.04", "8.0", "jammy"),
        ("ubuntu", "24.04", "8.0", "noble"),
        ("debian", "11", "7.0", "bullseye"),
        ("debian", "12", "8.0", "bookworm"),
    ];
    for (id, version, series, codename) in cases {
        let h = DbHost::new(&os_release(id, version));
        let before = h.snapshot();
        let out = h.run(&[
            "--dry-run",
            "setup",
            "mongo",
            "--mongodb-version",
            series,
            "--bind-ip",
            "10.0.1.5",
            "--yes",
        ]);
        assert!(out.status.success(), "{codename}: {}", stderr(&out));
        golden(&format!("{codename}.plan"), &stdout(&out));
        assert_eq!(h.snapshot(), before, "--dry-run changed files");
        assert!(h.log("apt.log").is_empty(), "--dry-run ran apt-get");
        let calls = h.log("systemctl.log");
        assert!(
            calls.iter().all(|c| c.starts_with("is-")),
            "--dry-run changed a service: {calls:?}"
        );
    }
}

/// Runs `args` and expects bad input: exit 2, one `error:` line naming
/// `expect`, nothing on the host changed, no program run but queries.
fn refused(h: &DbHost, args: &[&str], expect: &str) {
    let before = h.snapshot();
    let out = h.run(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    let line = error_line(&out);
    assert_eq!(line.lines().count(), 1, "{args:?}: {}", stderr(&out));
    assert!(line.contains(expect), "{args:?}: {line}");
    assert_eq!(h.snapshot(), before, "{args:?} changed files");
    assert!(h.log("apt.log").is_empty(), "{args:?} ran apt-get");
}

#[test]
fn unsupported_hosts_and_bad_input_are_refused_and_change_nothing() {
    let centos = DbHost::new(&os_release("centos", "9"));
    refused(
        &centos,
        &["setup", "mongo", "--yes"],
        "Ubuntu 24.04 (noble)",
    );
    let old = DbHost::new(&os_release("ubuntu", "18.04"));
    refused(
        &old,
        &["setup", "mongo", "--yes"],
        "ubuntu 18.04 is not supported",
    );
    let bullseye = DbHost::new(&os_release("debian", "11"));
    refused(
        &bullseye,
        &["setup", "mongo", "--yes"],
        "--mongodb-version 6.0 or 7.0",
    );
    let gone = DbHost::new("");
    fs::remove_file(gone.root().join("etc/os-release")).unwrap();
    refused(
        &gone,
        &["setup", "mongo", "--yes"],
        "/etc/os-release is missing",
    );

    let h = DbHost::new(UBUNTU_NOBLE);
    let b = ["setup", "mongo", "--yes"];
    let with =
        |extra: &[&str]| -> Vec<String> { b.iter().chain(extra).map(|s| s.to_string()).collect() };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&["--bind-ip", "10.0.1.5 # open"]), "--bind-ip"),
        (with(&["--bind-ip", "10.0.1.5\nsecurity: {}"]), "--bind-ip"),
        (with(&["--bind-ip", "fe80::1%eth0"]), "--bind-ip"),
        (with(&["--bind-ip", "\"quoted\""]), "--bind-ip"),
        (with(&["--bind-ip", ""]), "--bind-ip"),
        (
            with(&["--key-url", "http://127.0.0.1/key.asc"]),
            "--key-url",
        ),
        (
            with(&["--repo-url", "https://mirror/apt\n] deb http://evil/"]),
            "--repo-url",
        ),
        (
            with(&["--repo-url", "https://user:pw@mirror/apt"]),
            "--repo-url",
        ),
        (with(&["--admin-user", "ad min"]), "--admin-user"),
        (with(&["--admin-user", "a@b"]), "--admin-user"),
        (
            with(&["--admin-password-file", "/nonexistent/pw"]),
            "--admin-password-file",
        ),
        (with(&["--mongodb-version", "5.0"]), "5.0"),
        (with(&["--wait", "0s"]), "--mongo-wait"),
    ];
    for (args, expect) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&h, &args, expect);
    }
    let empty = h.dir.path().join("empty");
    fs::write(&empty, "").unwrap();
    refused(
        &h,
        &[
            "setup",
            "mongo",
            "--admin-password-file",
            empty.to_str().unwrap(),
        ],
        "is empty",
    );
    let newline = h.dir.path().join("newline");
    fs::write(&newline, "first line\nsecond line\n").unwrap();
    refused(
        &h,
        &[
            "setup",
            "mongo",
            "--admin-password-file",
            newline.to_str().unwrap(),
        ],
        "SASLprep",
    );
    // A dry run refuses what the real run refuses.
    refused(
        &h,
        &["--dry-run", "setup", "mongo", "--bind-ip", "10.0.1.5"],
        "--admin-password-file",
    );
    // No terminal, no --yes, no password: never a question.
    refused(
        &h,
        &["setup", "mongo", "--bind-ip", "10.0.1.5"],
        "--admin-password-file",
    );
}

/// A fresh host, the wire peer as mongod (authorization on, as the
/// written mongod.conf says), the key from the apt peer over HTTPS.
struct Setup {
    host: DbHost,
    peer: MongoPeer,
    apt: AptPeer,
}

impl Setup {
    fn new(auth: bool) -> Self {
        let peer = MongoPeer::start(PeerOptions {
            auth,
            ..Default::default()
        });
        let host = DbHost::new(UBUNTU_NOBLE);
        host.fakes(peer.port);
        let apt = AptPeer::start(&[("noble/mongodb-org/8.0", "multiverse")]);
        Setup { host, peer, apt }
    }

    fn run(&self, extra: &[&str]) -> Output {
        self.run_waiting("20s", extra)
    }

    /// [`Setup::run`] with `--mongo-wait wait`.
    fn run_waiting(&self, wait: &str, extra: &[&str]) -> Output {
        let key_url = self.apt.key_url();
        let repo_url = format!("{}/apt/ubuntu", self.apt.repo_url());
        let mut args = vec![
            "setup",
            "mongo",
            "--bind-ip",
            "10.0.1.5",
            "--key-url",
            &key_url,
            "--repo-url",
            &repo_url,
            "--mongo-wait",
            wait,
        ];
        args.extend_from_slice(extra);
        self.host
            .command(&args)
            .env("SSL_CERT_FILE", self.apt.ca_file())
            .output()
            .unwrap()
    }
}

#[test]
fn fresh_host_is_installed_configured_and_secured_and_a_second_run_does_nothing() {
    let s = Setup::new(true);
    let pw = "p@ss:/?#%\\ wörd \"x\"";
    let pw_file = s.host.write_password(pw);
    let out = s.run(&["--admin-password-file", pw_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(
        !o.contains(pw) && !e.contains(pw),
        "the password was printed:\n{o}\n{e}"
    );

    // The keyring is what `gpg --dearmor` makes of the served key.
    let keyring = fs::read(
        s.host
            .root()
            .join("usr/share/keyrings/mongodb-server-8.0.gpg"),
    )
    .unwrap();
    assert_eq!(keyring, fs::read(s.apt.dir().join("key.gpg")).unwrap());
    assert!(s
        .host
        .read("etc/apt/sources.list.d/mongodb-org-8.0.list")
        .contains(&format!(
            "deb [ arch=amd64,arm64 signed-by=/usr/share/keyrings/mongodb-server-8.0.gpg ] {}/apt/ubuntu noble/mongodb-org/8.0 multiverse\n",
            s.apt.repo_url()
        )));
    assert_eq!(
        s.host.log("apt.log"),
        [
            "DEBIAN_FRONTEND=noninteractive -o DPkg::Lock::Timeout=300 update -q",
            "DEBIAN_FRONTEND=noninteractive -o DPkg::Lock::Timeout=300 install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold mongodb-org",
        ]
    );
    let changes: Vec<String> = s
        .host
        .log("systemctl.log")
        .into_iter()
        .filter(|c| !c.starts_with("is-"))
        .collect();
    assert_eq!(
        changes,
        [
            "daemon-reload",
            "enable ams-agent-mongod-thp.service",
            "enable --now mongod",
        ]
    );
    let conf = s.host.read("etc/mongod.conf");
    assert!(conf.contains("  bindIp: 127.0.0.1,10.0.1.5\n"), "{conf}");
    assert!(
        conf.contains("\nsecurity:\n  authorization: enabled\n"),
        "{conf}"
    );
    assert!(
        s.host
            .read("etc/systemd/system/mongod.service.d/ams-agent-limits.conf")
            .contains("LimitNOFILE=64000")
    );
    assert!(
        s.host
            .read("etc/security/limits.d/99-ams-agent-mongodb.conf")
            .contains("mongodb hard nofile 64000")
    );
    assert!(
        !s.host
            .root()
            .join("etc/ams-agent/mongo-admin-password")
            .exists(),
        "a given password is not copied"
    );

    // The user was created through the localhost exception, then the
    // agent logged in with SCRAM-SHA-256.
    let created = s.peer.named("createUser");
    assert_eq!(created.len(), 1, "{created:?}");
    let doc = &created[0]["doc"];
    assert_eq!(doc["createUser"], "admin");
    assert_eq!(doc["roles"][0]["role"], "root");
    assert_eq!(doc["mechanisms"][0], "SCRAM-SHA-256");
    assert!(
        s.peer
            .named("saslStart")
            .iter()
            .any(|c| c["doc"]["mechanism"] == "SCRAM-SHA-256")
    );
    let port = s.peer.port;
    assert!(
        o.contains(&format!(
            "mongodb://admin:****@10.0.1.5:{port}/?authSource=admin"
        )),
        "{o}"
    );
    assert!(
        o.contains(&format!(
            "ams-agent join --mongo 10.0.1.5:{port} --mongo-user admin --mongo-password-file"
        )),
        "{o}"
    );

    // Again: nothing to do, no service touched, no user created.
    let calls = s.host.log("systemctl.log").len();
    let again = s.run(&["--admin-password-file", pw_file.to_str().unwrap()]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("nothing to do, already done"),
        "{}",
        stdout(&again)
    );
    assert_eq!(s.host.log("apt.log").len(), 2, "apt ran again");
    assert!(
        s.host.log("systemctl.log")[calls..]
            .iter()
            .all(|c| c.starts_with("is-"))
    );
    assert_eq!(s.peer.named("createUser").len(), 1);
}

#[test]
fn yes_generates_a_password_kept_private_and_reused() {
    let s = Setup::new(true);
    let out = s.run(&["--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let saved = s.host.read("etc/ams-agent/mongo-admin-password");
    let pw = saved.trim_end();
    assert_eq!(pw.len(), 32);
    assert_eq!(s.host.mode("etc/ams-agent/mongo-admin-password"), 0o600);
    // Not a terminal: the password is not shown.
    assert!(!stdout(&out).contains(pw) && !stderr(&out).contains(pw));
    assert_eq!(s.peer.named("createUser")[0]["doc"]["pwd"], pw);
    // A second run, still without a terminal or flags, logs in with it.
    let again = s.run(&[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("nothing to do"),
        "{}",
        stdout(&again)
    );
}

#[test]
fn authorization_that_is_not_enforced_fails_the_run() {
    let s = Setup::new(false);
    let out = s.run(&["--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("still answers unauthenticated commands"),
        "{line}"
    );
}

#[test]
fn an_existing_admin_with_another_password_is_reported() {
    let mut s = Setup::new(true);
    s.peer.add_user("admin", "the-real-one", &["SCRAM-SHA-256"]);
    let pw_file = s.host.write_password("a-wrong-one");
    let out = s.run(&["--admin-password-file", pw_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("--admin-password-file"), "{line}");
    assert!(line.contains("localhost exception is closed"), "{line}");
    // --yes generates a password mongod then refuses: it is not kept, so a
    // later run cannot pick up a password that logs in nowhere.
    let out = s.run(&["--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        !s.host
            .root()
            .join("etc/ams-agent/mongo-admin-password")
            .exists()
    );
    assert!(
        !s.host
            .root()
            .join("etc/ams-agent/.mongo-admin-password.pending")
            .exists()
    );
}

#[test]
fn every_interface_is_bound_alone() {
    let h = DbHost::new(UBUNTU_NOBLE);
    for (bind, want) in [
        ("0.0.0.0", "bindIp: 0.0.0.0\n"),
        ("::", "bindIp: \"::,0.0.0.0\"\n"),
    ] {
        let out = h.run(&[
            "--dry-run",
            "setup",
            "mongo",
            "--yes",
            "--bind-ip",
            &format!("10.0.1.5,{bind}"),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("+  {want}")),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn key_download_failures_name_the_url_and_change_nothing_else() {
    let s = Setup::new(true);
    for (path, expect) in [
        ("missing.asc", "404"),
        ("notakey.asc", "not an OpenPGP key"),
        ("slow.asc", "no complete answer within 2s"),
    ] {
        let url = s.apt.url(path);
        let start = std::time::Instant::now();
        let out = s
            .host
            .command(&[
                "setup",
                "mongo",
                "--yes",
                "--bind-ip",
                "10.0.1.5",
                "--key-url",
                &url,
                "--key-timeout",
                "2s",
            ])
            .env("SSL_CERT_FILE", s.apt.ca_file())
            .output()
            .unwrap();
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{path} hung"
        );
        assert_eq!(out.status.code(), Some(1), "{path}: {}", stderr(&out));
        let line = error_line(&out);
        assert!(
            line.contains(&url) && line.contains(expect),
            "{path}: {line}"
        );
        assert!(
            !s.host
                .root()
                .join("etc/apt/sources.list.d/mongodb-org-8.0.list")
                .exists()
        );
        assert!(s.host.log("apt.log").is_empty());
    }
    // Without the test CA the certificate is refused.
    let out = s
        .host
        .command(&[
            "setup",
            "mongo",
            "--yes",
            "--bind-ip",
            "10.0.1.5",
            "--key-url",
            &s.apt.key_url(),
        ])
        .env_remove("SSL_CERT_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        error_line(&out).to_lowercase().contains("certificate"),
        "{}",
        error_line(&out)
    );
}

#[test]
fn real_apt_get_update_trusts_the_keyring_the_agent_wrote() {
    let s = Setup::new(true);
    let out = s.run(&["--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = s
        .host
        .root()
        .join("etc/apt/sources.list.d/mongodb-org-8.0.list");
    let keyring = s
        .host
        .root()
        .join("usr/share/keyrings/mongodb-server-8.0.gpg");
    let update = common::apt::apt_get_update(
        &list,
        Some(("/usr/share/keyrings/mongodb-server-8.0.gpg", &keyring)),
    );
    common::apt::assert_update_ok(&update);

    // The same with the key of somebody else: apt refuses the repository.
    let other = DbHost::new(UBUNTU_NOBLE);
    other.fakes(s.peer.port);
    let wrong = s.apt.url("other.asc");
    let repo = format!("{}/apt/ubuntu", s.apt.repo_url());
    // The same mongod (the peer) and its admin: only the key differs.
    let saved = s.host.root().join("etc/ams-agent/mongo-admin-password");
    let out = other
        .command(&[
            "setup",
            "mongo",
            "--bind-ip",
            "10.0.1.5",
            "--key-url",
            &wrong,
            "--repo-url",
            &repo,
            "--wait",
            "20s",
            "--admin-password-file",
            saved.to_str().unwrap(),
        ])
        .env("SSL_CERT_FILE", s.apt.ca_file())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let update = common::apt::apt_get_update(
        &other
            .root()
            .join("etc/apt/sources.list.d/mongodb-org-8.0.list"),
        Some((
            "/usr/share/keyrings/mongodb-server-8.0.gpg",
            &other
                .root()
                .join("usr/share/keyrings/mongodb-server-8.0.gpg"),
        )),
    );
    common::apt::assert_signature_rejected(&update);
}

#[test]
fn the_packaged_mongod_conf_keeps_every_comment() {
    let s = Setup::new(true);
    let out = s.run(&["--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let conf = s.host.read("etc/mongod.conf");
    golden(
        "mongod.conf",
        &conf.replace(&format!("port: {}", s.peer.port), "port: 27017"),
    );
}

#[test]
fn on_a_terminal_the_wizard_asks_only_for_what_is_missing() {
    let s = Setup::new(true);
    let key_url = s.apt.key_url();
    let mut cmd = s
        .host
        .command(&["setup", "mongo", "--key-url", &key_url, "--wait", "20s"]);
    cmd.env("SSL_CERT_FILE", s.apt.ca_file());
    let mut term = OnTerminal::start(cmd);
    // The detected private IPv4 is offered; Enter takes it.
    term.wait_for_text("Addresses mongod listens on (comma-separated) [127.0.0.1");
    term.type_text("127.0.0.1, 10.0.9.9\n");
    term.wait_for_text("Admin user [admin]: ");
    term.type_text("ops\n");
    term.wait_for_text("Password for ops (empty: generate one): ");
    assert!(
        !term.echo_is_on(),
        "echo is on while asking for the password"
    );
    term.type_text("first-try\n");
    term.wait_for_text("Again: ");
    term.type_text("typo\n");
    term.wait_for_text("The passwords differ; try again.");
    term.wait_for_nth("Password for ops (empty: generate one): ", 2);
    term.type_text("s3cret:/@pw\n");
    term.wait_for_nth("Again: ", 2);
    term.type_text("s3cret:/@pw\n");
    let status = term.wait_within(std::time::Duration::from_secs(60));
    let screen = term.screen();
    assert!(status.success(), "{screen}");
    assert!(term.echo_is_on(), "echo not restored");
    assert!(
        !screen.contains("s3cret"),
        "password on the screen: {screen}"
    );
    // The step list, then each step with its result.
    assert!(
        screen.contains("ams-agent will:\r\n  1. fetch MongoDB's signing key"),
        "{screen}"
    );
    assert!(
        screen.contains(
            "create the admin user ops (role root, SCRAM-SHA-256) unless it exists ... done"
        ),
        "{screen}"
    );
    assert!(
        screen.contains("ams-agent join --mongo 10.0.9.9:"),
        "{screen}"
    );
    assert!(
        s.host
            .read("etc/mongod.conf")
            .contains("  bindIp: 127.0.0.1,10.0.9.9\n")
    );
    let created = s.peer.named("createUser");
    assert_eq!(created[0]["doc"]["createUser"], "ops");
    assert_eq!(created[0]["doc"]["pwd"], "s3cret:/@pw");
}

#[test]
fn on_a_terminal_an_empty_password_is_generated_and_shown_once() {
    let s = Setup::new(true);
    let key_url = s.apt.key_url();
    let mut cmd = s.host.command(&[
        "setup",
        "mongo",
        "--bind-ip",
        "10.0.1.5",
        "--admin-user",
        "admin",
        "--key-url",
        &key_url,
        "--wait",
        "20s",
    ]);
    cmd.env("SSL_CERT_FILE", s.apt.ca_file());
    let mut term = OnTerminal::start(cmd);
    term.wait_for_text("Password for admin (empty: generate one): ");
    assert!(
        !term.screen().contains("Addresses mongod listens on"),
        "asked for a given flag"
    );
    term.type_text("\n");
    let status = term.wait_within(std::time::Duration::from_secs(60));
    let screen = term.screen();
    assert!(status.success(), "{screen}");
    let saved = s.host.read("etc/ams-agent/mongo-admin-password");
    let pw = saved.trim_end();
    assert_eq!(screen.matches(pw).count(), 1, "shown once: {screen}");
}

/// The drop-in and the huge-page unit pass `systemd-analyze verify` with no
/// output at all (an unknown key or a bad value would be printed). The
/// drop-in is verified on a stand-in for mongodb-org's `mongod.service`
/// whose `ExecStart=` exists here.
#[test]
fn the_units_it_writes_pass_systemd_analyze_verify() {
    let s = Setup::new(true);
    let out = s.run(&["--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path();
    fs::create_dir_all(units.join("mongod.service.d")).unwrap();
    fs::write(
        units.join("mongod.service"),
        "[Unit]\nDescription=MongoDB Database Server\nAfter=network-online.target\n\n[Service]\nUser=root\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    fs::copy(
        s.host
            .root()
            .join("etc/systemd/system/mongod.service.d/ams-agent-limits.conf"),
        units.join("mongod.service.d/ams-agent-limits.conf"),
    )
    .unwrap();
    fs::copy(
        s.host
            .root()
            .join("etc/systemd/system/ams-agent-mongod-thp.service"),
        units.join("ams-agent-mongod-thp.service"),
    )
    .unwrap();
    let verify = |extra: &str| {
        if !extra.is_empty() {
            fs::write(units.join("mongod.service.d/zz-extra.conf"), extra).unwrap();
        }
        Command::new("systemd-analyze")
            .args(["verify", "mongod.service", "ams-agent-mongod-thp.service"])
            .current_dir(units)
            .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))
            .output()
            .expect("running systemd-analyze (apt install systemd)")
    };
    let out = verify("");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
    // The check can fail: a drop-in with a wrong key is reported.
    let bad = verify("[Service]\nLimitNOFILES=1\n");
    assert!(stderr(&bad).contains("LimitNOFILES"), "{}", stderr(&bad));
}

#[test]
fn a_mongod_conf_it_cannot_edit_safely_stops_the_run_before_any_change() {
    let h = DbHost::new(UBUNTU_NOBLE);
    fs::write(h.state().join("installed"), "").unwrap();
    fs::write(
        h.root().join("etc/mongod.conf"),
        "storage:\n  dbPath: /var/lib/mongodb\nnet: {port: 27017, bindIp: 127.0.0.1}\n",
    )
    .unwrap();
    let before = h.snapshot();
    let out = h.run(&["setup", "mongo", "--yes", "--bind-ip", "10.0.1.5"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("editing /etc/mongod.conf") && line.contains("`net:` is written on one line"),
        "{line}"
    );
    assert_eq!(h.snapshot(), before);
    assert!(h.log("apt.log").is_empty());
}

/// A kernel that refuses the huge-page setting (read-only sysfs in a
/// container) gets a warning; the setup goes on, and a second run plans
/// nothing.
#[test]
fn huge_pages_are_best_effort() {
    let s = Setup::new(true);
    let thp = s.host.root().join("sys/kernel/mm/transparent_hugepage");
    fs::create_dir_all(thp.join("khugepaged")).unwrap();
    fs::write(thp.join("enabled"), "always [madvise] never\n").unwrap();
    fs::write(thp.join("defrag"), "[madvise] never\n").unwrap();
    fs::write(thp.join("khugepaged/max_ptes_none"), "511\n").unwrap();
    fs::write(s.host.state().join("fail-ams-agent-mongod-thp.service"), "").unwrap();
    let out = s.run(&["--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("transparent huge pages"),
        "{}",
        stderr(&out)
    );
    assert!(
        s.host
            .log("systemctl.log")
            .iter()
            .any(|c| c == "restart ams-agent-mongod-thp.service")
    );
    let again = s.run(&[]);
    assert!(
        stdout(&again).contains("nothing to do"),
        "{}",
        stdout(&again)
    );
}

/// A dry run on a host whose mongod runs asks that mongod (over loopback)
/// whether the admin user is in place, to show the plan the real run would
/// make: the check is announced, and bounded by --mongo-wait (a mongod that
/// stalls does not hold the dry run for a fixed 5 s, or more); nothing is
/// written to it.
#[test]
fn a_dry_run_asks_the_running_mongod_within_mongo_wait_and_says_so() {
    let mut s = Setup::new(true);
    let pw_file = s.host.write_password("Adm1n-pw");
    let pw = pw_file.to_str().unwrap().to_string();
    let out = s.run(&["--admin-password-file", &pw]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dry = |s: &Setup, wait: &str| {
        let start = Instant::now();
        let out = s.run_waiting(wait, &["--dry-run", "--admin-password-file", &pw]);
        (out, start.elapsed())
    };
    let port = s.peer.port;

    // mongod answers: the check is announced and finds nothing to do.
    let (out, _) = dry(&s, "10s");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("asking the running mongod at 127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));

    // mongod stalls: the dry run ends within --mongo-wait and says why it
    // plans the admin steps.
    s.peer.control("fault listDatabases stall");
    s.peer.control("fault usersInfo stall");
    let (out, took) = dry(&s, "2s");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(took < Duration::from_millis(4500), "took {took:?}");
    assert!(stderr(&out).contains("up to 2s"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not answer within 2s"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("admin"), "{}", stdout(&out));
    assert_eq!(s.peer.named("createUser").len(), 1, "the dry run wrote");
}

/// `--admin-password-ssm`: the admin password from SSM Parameter Store (a
/// SecureString, decrypted) with the instance role, against moto with IAM
/// enforced: the admin is created with it, it is never printed; a
/// parameter that does not exist is bad input, nothing touched.
#[test]
fn the_admin_password_can_come_from_ssm() {
    use common::aws::{AwsPeer, give_role};
    let Some(aws) = AwsPeer::start() else { return };
    let pw = "Ssm-Admin:p@ss/wörd";
    let setup = aws.setup(serde_json::json!({
        "roles": { "db": ["ssm:GetParameter"] },
        "parameters": { "/ams/mongo-password": pw },
    }));
    aws.enforce_iam();
    let imds = common::Imds::start("i-0db00000000000001", "10.0.1.5");
    give_role(&imds, &setup, "db", "i-0db00000000000001");
    let s = Setup::new(true);
    let before = s.host.snapshot();
    let out = s
        .host
        .command(&[
            "setup",
            "mongo",
            "--bind-ip",
            "10.0.1.5",
            "--admin-password-ssm",
            "/ams/nope",
        ])
        .env("AMS_AGENT_IMDS_ENDPOINT", &imds.url)
        .env("AMS_AGENT_AWS_ENDPOINT", aws.url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("--admin-password-ssm /ams/nope"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.host.snapshot(), before);

    let key_url = s.apt.key_url();
    let repo_url = format!("{}/apt/ubuntu", s.apt.repo_url());
    let out = s
        .host
        .command(&[
            "setup",
            "mongo",
            "--bind-ip",
            "10.0.1.5",
            "--key-url",
            &key_url,
            "--repo-url",
            &repo_url,
            "--mongo-wait",
            "20s",
            "--admin-password-ssm",
            "/ams/mongo-password",
        ])
        .env("SSL_CERT_FILE", s.apt.ca_file())
        .env("AMS_AGENT_IMDS_ENDPOINT", &imds.url)
        .env("AMS_AGENT_AWS_ENDPOINT", aws.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("wörd") && !stderr(&out).contains("wörd"));
    let created = s.peer.named("createUser");
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["doc"]["pwd"], pw);
}
