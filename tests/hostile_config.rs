//! Hostile `agent.toml`, `--mongo` and `--ip` values: exit 2 with one line,
//! no password printed, nothing changed and nothing stopped.

mod fixture;

use fixture::{Tree, error_line, stderr};

const SECRET: &str = "S3cretPW";

fn write_config(t: &Tree, body: &str) {
    let dir = t.path("etc/ams-agent");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("agent.toml"), body).unwrap();
}

fn refused(t: &Tree, args: &[&str], needle: &str) {
    let before = t.snapshot();
    let out = t.run(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    let line = error_line(&out);
    assert_eq!(line.lines().count(), 1, "{args:?}: {}", stderr(&out));
    assert!(line.contains(needle), "{args:?}: {line}");
    assert!(!stderr(&out).contains(SECRET), "{args:?} leaked: {line}");
    assert_eq!(t.snapshot(), before, "{args:?} changed the host");
    assert!(t.systemctl_calls().is_empty(), "{args:?} ran systemctl");
}

#[test]
fn a_config_that_does_not_parse_is_reported_without_its_lines() {
    let t = Tree::new();
    write_config(
        &t,
        &format!(
            "[mongo]\nuri = \"mongodb://ams:{SECRET}@10.0.1.5\" junk\n[node]\nrole = \"origin\"\n"
        ),
    );
    for cmd in ["status", "leave", "run"] {
        refused(&t, &[cmd], "agent.toml at line 2");
    }
}

#[test]
fn a_config_uri_that_can_never_work_is_bad_input() {
    let t = Tree::new();
    for (uri, needle) in [
        (
            format!("mongodb://ams:S3c/{SECRET}@127.0.0.1:1"),
            "holds a password",
        ),
        (format!("ams:{SECRET}@127.0.0.1:1"), "holds a password"),
        (String::new(), "is not a mongodb://"),
        ("redis://h:6379".into(), "is not a mongodb://"),
        ("/etc/passwd".into(), "is not a mongodb://"),
        (
            "mongodb://10.0.1.5/?authMechanism=BOGUS".into(),
            "is not a valid MongoDB URI",
        ),
    ] {
        write_config(
            &t,
            &format!("[mongo]\nuri = \"{uri}\"\n[node]\nrole = \"origin\"\n"),
        );
        for cmd in ["status", "leave", "run"] {
            refused(&t, &[cmd], needle);
        }
    }
}

#[test]
fn credentials_without_a_scheme_are_refused_masked() {
    let t = Tree::new();
    let input = format!("ams:{SECRET}@127.0.0.1:1");
    refused(&t, &["status", "--mongo", &input], "ams:****@127.0.0.1:1");
    refused(
        &t,
        &["mode", "cluster", &input, "--no-restart", "--skip-db-check"],
        "holds credentials without a scheme",
    );
    refused(&t, &["join", "--mongo", &input], "ams:****@");
}

#[test]
fn an_ip_no_other_node_can_reach_is_refused() {
    let t = Tree::new();
    for ip in [
        "0.0.0.0",
        "127.0.0.1",
        "255.255.255.255",
        "224.0.0.1",
        "10.0.1",
    ] {
        refused(
            &t,
            &[
                "mode",
                "cluster",
                "10.0.1.5",
                "--ip",
                ip,
                "--no-restart",
                "--skip-db-check",
            ],
            "--ip",
        );
        refused(&t, &["join", "--mongo", "10.0.1.5", "--ip", ip], "--ip");
    }
}

/// `--ams-url` / `AMS_AGENT_AMS_URL` is checked once, by every command that
/// takes it, `run` included: exit 2, nothing started.
#[test]
fn a_bad_ams_url_is_refused_by_every_command() {
    let t = Tree::new();
    for args in [
        vec!["mode", "cluster", "10.0.1.5", "--skip-db-check"],
        vec!["join", "--mongo", "10.0.1.5"],
        vec!["run", "--mongo", "10.0.1.5", "--role", "edge"],
        vec!["cert", "deploy", "--lineage", "/nowhere"],
    ] {
        let out = t
            .command(&args)
            .env("AMS_AGENT_AMS_URL", "ftp://127.0.0.1:5080/")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            error_line(&out).contains("http://"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(t.systemctl_calls().is_empty(), "{args:?} ran systemctl");
    }
}
