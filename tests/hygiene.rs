//! Input, secrets and message hygiene of the real binary (issue 13):
//! bounded reads that never follow a FIFO or a device, one escaped line per
//! refusal, no secret in a child's environment, every host write under the
//! host lock.

mod common;
mod fixture;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use fixture::{AMS, Tree, error_line, fake_ams_http, stderr, stdout};

const NO_RESTART: &[&str] = &["--ip", "10.0.1.20", "--no-restart", "--skip-db-check"];

fn with<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(tail).copied().collect()
}

/// Waits for a child up to `limit`; kills it and fails the test after that.
fn finish(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still ran after {limit:?} (killed): {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(t: &Tree, args: &[&str]) -> Child {
    t.command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn join_help_does_not_mention_the_hidden_wait_alias() {
    let t = Tree::new();
    let out = t.run(&["join", "--help"]);
    assert!(out.status.success());
    let help = stdout(&out)
        .replace("--mongo-wait", "")
        .replace("--ams-wait", "");
    assert!(!help.contains("--wait"), "{}", stdout(&out));
}

#[test]
fn an_endless_password_file_is_refused_at_once() {
    let t = Tree::new();
    let child = spawn(
        &t,
        &with(
            &[
                "--dry-run",
                "mode",
                "cluster",
                "10.0.1.5",
                "--mongo-user",
                "ams",
                "--mongo-password-file",
                "/dev/zero",
            ],
            NO_RESTART,
        ),
    );
    let out = finish(child, Duration::from_secs(5), "reading /dev/zero");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(
        err.contains("--mongo-password-file /dev/zero") && err.contains("not a regular file"),
        "{err}"
    );
}

#[test]
fn a_huge_password_file_is_refused_naming_its_size_limit() {
    let t = Tree::new();
    let pw = t.dir.path().join("pw");
    fs::write(&pw, "x".repeat(1 << 20)).unwrap();
    let before = t.snapshot();
    let out = t.run(&with(
        &[
            "mode",
            "cluster",
            "10.0.1.5",
            "--mongo-user",
            "ams",
            "--mongo-password-file",
            pw.to_str().unwrap(),
        ],
        NO_RESTART,
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(
        err.contains("--mongo-password-file") && err.contains("larger than"),
        "{err}"
    );
    assert_eq!(t.snapshot(), before);
}

#[test]
fn a_fifo_in_place_of_red5_properties_hangs_nothing() {
    for dry_run in [true, false] {
        let t = Tree::new();
        let red5 = t.path(&format!("{AMS}/conf/red5.properties"));
        fs::remove_file(&red5).unwrap();
        nix::unistd::mkfifo(&red5, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let mut args = vec![];
        if dry_run {
            args.push("--dry-run");
        }
        args.extend(["mode", "cluster", "10.0.1.5"]);
        args.extend(NO_RESTART);
        let out = finish(
            spawn(&t, &args),
            Duration::from_secs(10),
            "mode with a FIFO",
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = error_line(&out);
        assert!(
            err.contains("red5.properties") && err.contains("FIFO"),
            "{err}"
        );
    }
}

#[test]
fn children_never_see_the_agents_secret_variables() {
    let t = Tree::new();
    let env_log = t.dir.path().join("systemctl.env");
    let script = format!(
        "#!/bin/sh\nenv >> '{}'\necho \"$*\" >> '{}'\n",
        env_log.display(),
        t.dir.path().join("systemctl.log").display()
    );
    let p = t.bin.join("systemctl");
    fs::write(&p, script).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    let url = fake_ams_http();
    let out = t
        .command(&[
            "mode",
            "cluster",
            "10.0.1.5",
            "--mongo-user",
            "ams",
            "--ip",
            "10.0.1.20",
            "--skip-db-check",
            "--ams-url",
            &url,
        ])
        .env("AMS_AGENT_MONGO_PASSWORD", "Child-Must-Not-See-1")
        .env("AMS_AGENT_MONGO_ADMIN_PASSWORD", "Child-Must-Not-See-2")
        .env("AMS_AGENT_KEEP_ME", "visible")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let env = fs::read_to_string(&env_log).unwrap();
    assert!(env.contains("AMS_AGENT_KEEP_ME=visible"), "{env}");
    assert!(!env.contains("Child-Must-Not-See"), "{env}");
    assert!(!env.contains("AMS_AGENT_MONGO_PASSWORD"), "{env}");
    assert!(!env.contains("AMS_AGENT_MONGO_ADMIN_PASSWORD"), "{env}");
}

/// `cert deploy` records its outcome under the host lock: while another
/// run holds the lock, nothing is written.
#[test]
fn cert_deploy_writes_its_record_under_the_host_lock() {
    use std::os::unix::fs::OpenOptionsExt;
    let t = Tree::new();
    fs::create_dir_all(t.path("etc/haproxy")).unwrap();
    fs::write(t.path("etc/haproxy/haproxy.cfg"), "global\n").unwrap();
    let state = t.path("var/lib/ams-agent");
    fs::create_dir_all(&state).unwrap();
    let lock = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(state.join("lock"))
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    // An empty folder: not a lineage, so the deploy fails and records it.
    let lineage = t.dir.path().join("not-a-lineage");
    fs::create_dir_all(&lineage).unwrap();
    let child = spawn(
        &t,
        &[
            "cert",
            "deploy",
            "--for",
            "haproxy",
            "--lineage",
            lineage.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let record = state.join("cert-deploy.json");
    assert!(
        !record.exists(),
        "the record was written while another run held the lock"
    );
    drop(held);
    let out = finish(child, Duration::from_secs(20), "cert deploy");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = fs::read_to_string(&record).unwrap();
    assert!(text.contains("not-a-lineage"), "{text}");
}

#[test]
fn every_secret_variable_the_agent_reads_is_kept_from_children() {
    use ams_agent::host::runner::SECRET_ENV;
    for var in [
        ams_agent::config::PASSWORD_ENV,
        ams_agent::cli::setup::ADMIN_PASSWORD_ENV,
        "CREDENTIALS_DIRECTORY",
    ] {
        assert!(SECRET_ENV.contains(&var), "{var}");
    }
}

/// `red5.properties` in ISO-8859-1 (what `java.util.Properties.load`
/// reads): switched, every byte outside the edited keys as it was, and Java
/// reads both the edited and the untouched values back.
#[test]
fn latin1_properties_are_edited_byte_for_byte_and_java_reads_them() {
    let t = Tree::new();
    let red5 = t.path(&format!("{AMS}/conf/red5.properties"));
    let mut before = fs::read(&red5).unwrap();
    before.extend_from_slice(b"# R\xe9glages du n\x9cud\nnodeGroup=caf\xe9 \\\n  cr\xe8me\n");
    fs::write(&red5, &before).unwrap();
    let dry = t.run(&with(
        &["--dry-run", "mode", "cluster", "10.0.1.5"],
        NO_RESTART,
    ));
    assert!(dry.status.success(), "{}", stderr(&dry));
    let out = t.run(&with(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    let after = fs::read(&red5).unwrap();
    let edited = [
        "clusterdb.host=",
        "clusterdb.user=",
        "clusterdb.password=",
        "useGlobalIp=",
    ];
    let kept = |b: &[u8]| -> Vec<Vec<u8>> {
        b.split(|&c| c == b'\n')
            .filter(|l| !edited.iter().any(|k| l.starts_with(k.as_bytes())))
            .map(<[u8]>::to_vec)
            .collect()
    };
    assert_eq!(kept(&before), kept(&after));
    let java_src = t.dir.path().join("Read.java");
    fs::write(
        &java_src,
        "import java.io.*; import java.util.*;\n\
         public class Read { public static void main(String[] a) throws Exception {\n\
           Properties p = new Properties(); try (InputStream in = new FileInputStream(a[0])) { p.load(in); }\n\
           StringBuilder s = new StringBuilder();\n\
           for (char c : p.getProperty(a[1]).toCharArray()) s.append((int) c).append(' ');\n\
           System.out.print(s.toString().trim()); } }\n",
    )
    .unwrap();
    let java = |key: &str| {
        let out = std::process::Command::new("java")
            .arg(&java_src)
            .arg(&red5)
            .arg(key)
            .output()
            .expect("java is needed for this test (.ci/run installs default-jdk-headless)");
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .split(' ')
            .map(|n| char::from_u32(n.parse().unwrap()).unwrap())
            .collect::<String>()
    };
    assert_eq!(java("nodeGroup"), "café crème");
    assert!(java("clusterdb.host").starts_with("mongodb://10.0.1.5"));
}

#[test]
fn latin1_etc_hosts_is_edited_byte_for_byte() {
    let t = Tree::new();
    let hosts = t.path("etc/hosts");
    let mut before = fs::read(&hosts).unwrap();
    before.extend_from_slice(b"10.9.9.9 caf\xe9-server # \xe0 garder\n");
    fs::write(&hosts, &before).unwrap();
    let out = t.run(&with(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    let after = fs::read(&hosts).unwrap();
    let line: &[u8] = b"10.9.9.9 caf\xe9-server # \xe0 garder\n";
    assert!(
        after.windows(line.len()).any(|w| w == line),
        "{}",
        String::from_utf8_lossy(&after)
    );
    assert!(String::from_utf8_lossy(&after).contains("10.0.1.20\tip-10-0-1-20"));
}

/// Each bad value: exit 2, one `error:` line that says what is wrong, no
/// file changed.
fn refused(t: &Tree, args: &[&str], expect: &[&str]) {
    let before = t.snapshot();
    let out = t.run(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    let err = error_line(&out);
    assert_eq!(err.lines().count(), 1, "{args:?}: {}", stderr(&out));
    for e in expect {
        assert!(err.contains(e), "{args:?}: expected {e:?} in: {err}");
    }
    assert_eq!(t.snapshot(), before, "{args:?}");
}

#[test]
fn mongodb_hosts_that_cannot_work_are_refused() {
    let t = Tree::new();
    for (db, expect) in [
        ("h:+27017", &["`+27017` is not a port number"][..]),
        ("0.0.0.0", &["0.0.0.0", "unspecified"][..]),
        ("mongodb://[::]:27017", &["unspecified"][..]),
        ("h1,h1", &["h1", "twice"][..]),
        ("h1:27017,h1", &["twice"][..]),
        ("mongodb://a,b:1,A", &["twice"][..]),
        ("[fe80::1%25eth0]", &["zone", "not supported"][..]),
        (
            "mongodb://[fe80::1%25eth0]:27017",
            &["zone", "not supported"][..],
        ),
    ] {
        refused(&t, &with(&["mode", "cluster", db], NO_RESTART), expect);
    }
    for user in [" ", "\t", " ams", "ams "] {
        refused(
            &t,
            &with(
                &["mode", "cluster", "10.0.1.5", "--mongo-user", user],
                NO_RESTART,
            ),
            &["--mongo-user"],
        );
    }
}

#[test]
fn a_redis_file_must_be_a_redis_configuration() {
    let t = Tree::new();
    refused(
        &t,
        &with(&["mode", "cluster", "/etc/passwd"], NO_RESTART),
        &["/etc/passwd", "Redis"],
    );
    fs::write(t.path("etc/not-redis.yaml"), "just: [a, list]\n").unwrap();
    refused(
        &t,
        &with(&["mode", "cluster", "/etc/not-redis.yaml"], NO_RESTART),
        &["/etc/not-redis.yaml", "singleServerConfig"],
    );
    fs::write(
        t.path("etc/redis.yaml"),
        "singleServerConfig:\n  address: \"redis://10.0.1.7:6379\"\n",
    )
    .unwrap();
    let out = t.run(&with(&["mode", "cluster", "/etc/redis.yaml"], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn waits_are_capped() {
    let t = Tree::new();
    // Loopback with a dead port and no database check: even if the flag
    // were taken, nothing would be reached.
    for (flag, cmd) in [
        ("--mongo-wait", &["mode", "cluster", "127.0.0.1:1"][..]),
        ("--ams-wait", &["mode", "cluster", "127.0.0.1:1"][..]),
        ("--mongo-wait", &["join", "--mongo", "127.0.0.1:1"][..]),
    ] {
        let mut args = cmd.to_vec();
        args.extend([flag, "584000000000years", "--ip", "10.0.1.20"]);
        if cmd[0] == "mode" {
            args.extend(["--skip-db-check", "--no-restart"]);
        }
        let out = t.run(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("24h"), "{flag}: {}", stderr(&out));
    }
}

#[test]
fn durations_are_shown_as_given_when_they_are_out_of_range() {
    let t = Tree::new();
    let out = t.run(&[
        "run",
        "--mongo",
        "127.0.0.1:1",
        "--role",
        "edge",
        "--interval",
        "1ns",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(err.contains("1ns") && !err.contains(" 0s "), "{err}");
}

#[test]
fn echoed_values_are_escaped_so_no_line_can_be_forged() {
    let t = Tree::new();
    for args in [
        vec!["cert", "--domain", "*.x\nerror: forged"],
        vec!["cert", "--domain", "a.example.test\nerror: forged"],
        vec![
            "cert",
            "--domain",
            "live.example.test",
            "--email",
            "a@b.c\nerror: forged",
        ],
        vec!["mode", "cluster", "h\nerror: forged"],
        vec!["setup", "mongo", "--yes", "--bind-ip", "x\nerror: forged"],
    ] {
        let out = t.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let text = stderr(&out);
        assert!(
            !text.lines().any(|l| l.starts_with("error: forged")),
            "{args:?}: {text}"
        );
        assert_eq!(error_line(&out).lines().count(), 1, "{args:?}: {text}");
    }
}

#[test]
fn an_acme_server_with_credentials_is_refused_with_its_own_reason() {
    let t = Tree::new();
    let out = t.run(&[
        "cert",
        "--domain",
        "live.example.test",
        "--acme-server",
        "https://u:p4ss@acme.example.test/dir",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(err.contains("--acme-server"), "{err}");
    assert!(!err.contains("apt") && !err.contains("sources"), "{err}");
    assert!(!err.contains("p4ss"), "{err}");
}

/// `setup mongo --bind-ip` takes this host's own addresses only (read from
/// /proc/net under the root), names, loopback and "every interface".
#[test]
fn setup_mongo_refuses_a_bind_address_this_host_does_not_have() {
    let t = Tree::new();
    let net = t.path("proc/net");
    fs::create_dir_all(&net).unwrap();
    fs::write(
        net.join("fib_trie"),
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.0.1.5\n        /32 host LOCAL\nLocal:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.0.1.5\n        /32 host LOCAL\n     |-- 10.0.1.255\n        /32 link BROADCAST\n     |-- 127.0.0.1\n        /32 host LOCAL\n",
    )
    .unwrap();
    fs::write(
        net.join("if_inet6"),
        "00000000000000000000000000000001 01 80 10 80       lo\nfd000000000000000000000000000005 02 40 00 80     eth0\n",
    )
    .unwrap();
    for ip in ["8.8.8.8", "10.0.1.255", "fd00::6"] {
        refused(
            &t,
            &["--dry-run", "setup", "mongo", "--yes", "--bind-ip", ip],
            &["--bind-ip", ip, "not an address of this host"],
        );
    }
    for ip in [
        "10.0.1.5",
        "fd00::5",
        "0.0.0.0",
        "127.0.0.1",
        "mongo.internal",
    ] {
        let out = t.run(&["--dry-run", "setup", "mongo", "--yes", "--bind-ip", ip]);
        assert!(
            !error_line(&out).contains("not an address of this host"),
            "{ip}: {}",
            stderr(&out)
        );
    }
}

/// A one-letter password: a dry run masks the URI's password field and
/// nothing else (masking by substring showed where `p` occurs in words).
#[test]
fn a_dry_run_masks_the_password_field_not_its_letters() {
    let t = Tree::new();
    let pw = t.dir.path().join("pw");
    fs::write(&pw, "p\n").unwrap();
    let out = t.run(&with(
        &[
            "--dry-run",
            "mode",
            "cluster",
            "10.0.1.5",
            "--mongo-user",
            "ams",
            "--mongo-password-file",
            pw.to_str().unwrap(),
        ],
        NO_RESTART,
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("mongodb://ams:****@10.0.1.5:27017"), "{text}");
    for line in text.lines().filter(|l| l.contains("****")) {
        let rest = line.replace("ams:****@", "").replace("=****", "");
        assert!(!rest.contains("****"), "masked by substring: {line}");
    }
    assert!(!text.contains("ams:p@"), "{text}");
}
