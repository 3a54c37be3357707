//! `ams-agent join`, end to end: the real binary on a host tree built from
//! the real AMS files, a fake `systemctl`, a loopback HTTP server for AMS,
//! the in-test IMDSv2 server, and the MockupDB wire peer (or a real mongod
//! when AMS_AGENT_TEST_MONGO_URI is set).

mod common;
mod fixture;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Imds, MongoPeer, PeerOptions, free_port, real_mongo_uri, unique_db};
use fixture::{AMS, Tree, error_line, fake_ams_http, stderr, stdout};
use serde_json::json;

const IP: &str = "10.0.1.20";

fn join_cmd(t: &Tree, imds: &Imds, ams_url: &str, args: &[&str]) -> Command {
    let mut c = t.command(&[&["join"], args].concat());
    c.env("AMS_AGENT_IMDS_ENDPOINT", &imds.url)
        .env("AMS_AGENT_AMS_URL", ams_url)
        .env_remove("CREDENTIALS_DIRECTORY");
    c
}

fn run(t: &Tree, imds: &Imds, ams_url: &str, args: &[&str]) -> Output {
    join_cmd(t, imds, ams_url, args).output().unwrap()
}

#[test]
fn join_waits_for_a_mongodb_that_starts_later_then_does_everything() {
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaaa1", IP);
    let ams = fake_ams_http();
    let port = free_port();
    let mongo = format!("127.0.0.1:{port}");
    let child = join_cmd(
        &t,
        &imds,
        &ams,
        &["--mongo", &mongo, "--wait", "60s", "--role", "edge"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // MongoDB is still "booting".
    std::thread::sleep(Duration::from_secs(3));
    let peer = MongoPeer::start(PeerOptions {
        port: Some(port),
        ..Default::default()
    });
    let up_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("waiting up to 10m") || stderr(&out).contains("waiting up to 1m"),
        "{}",
        stderr(&out)
    );

    // Registered first as joining (within a second of MongoDB answering),
    // then ready, both upserts by the EC2 instance id.
    let updates = peer.named("update");
    assert!(updates.len() >= 2, "{updates:?}");
    let first_at = updates[0]["t"].as_f64().unwrap();
    assert!(
        first_at - up_at < 1.5,
        "first heartbeat {:.2}s after MongoDB came up",
        first_at - up_at
    );
    let u = peer.updates();
    assert_eq!(u[0].0, json!({ "_id": "i-0aaaaaaaaaaaaaaa1" }));
    assert_eq!(u[0].1["$set"]["state"], "joining");
    assert_eq!(u[0].1["$set"]["role"], "edge");
    assert_eq!(u[0].1["$set"]["privateIp"], IP);
    assert_eq!(u[0].1["$set"]["instanceType"], "c5.xlarge");
    assert_eq!(
        u[0].1["$currentDate"],
        json!({ "lastSeen": true, "joinedAt": true })
    );
    let last = &u.last().unwrap().1;
    assert_eq!(last["$set"]["state"], "ready");
    assert_eq!(last["$set"]["ams"]["mode"], "cluster");
    assert_eq!(last["$set"]["ams"]["http"], true);
    assert_eq!(peer.named("createIndexes").len(), 1);

    // AMS is in cluster mode with the private IP pinned in /etc/hosts.
    let red5 = t.read(&format!("{AMS}/conf/red5.properties"));
    assert!(
        red5.contains(&format!("clusterdb.host=mongodb://{mongo}")),
        "{red5}"
    );
    let hosts = t.read("etc/hosts");
    assert!(hosts.lines().any(|l| l.starts_with(IP)), "{hosts}");
    let calls = t.systemctl_calls();
    assert!(calls.contains(&"restart antmedia".to_string()), "{calls:?}");
    assert!(
        calls.contains(&"enable --now ams-agent.service".to_string()),
        "{calls:?}"
    );

    // The agent's files: config without secret (0644), password file 0600.
    let cfg = t.read("etc/ams-agent/agent.toml");
    assert!(
        cfg.contains(&format!("uri = \"mongodb://{mongo}\"")),
        "{cfg}"
    );
    assert!(cfg.contains("role = \"edge\""), "{cfg}");
    assert!(cfg.contains("interval = \"5s\""), "{cfg}");
    assert!(cfg.contains("ams_mode = \"cluster\""), "{cfg}");
    let mode = |rel: &str| std::fs::metadata(t.path(rel)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("etc/ams-agent/agent.toml"), 0o644);
    assert_eq!(mode("etc/ams-agent/mongo-password"), 0o600);
    assert_eq!(
        t.read("etc/ams-agent/mongo-password"),
        "",
        "no password: an empty file"
    );
    let summary = stdout(&out);
    assert!(summary.contains("Joined the cluster"), "{summary}");
    assert!(summary.contains("i-0aaaaaaaaaaaaaaa1"), "{summary}");
}

#[test]
fn join_is_idempotent_per_instance_and_a_new_instance_joins_afresh() {
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaaa2", IP);
    let ams = fake_ams_http();
    let peer = MongoPeer::start(PeerOptions::default());
    let args = ["--mongo", &peer.uri(), "--wait", "20s"];
    let out = run(&t, &imds, &ams, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let n = peer.named("update").len();
    let calls = t.systemctl_calls().len();
    let before = t.snapshot();

    let again = run(&t, &imds, &ams, &args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already joined"),
        "{}",
        stdout(&again)
    );
    assert_eq!(
        peer.named("update").len(),
        n,
        "no MongoDB write on a re-run"
    );
    assert_eq!(
        t.systemctl_calls().len(),
        calls,
        "no service touched on a re-run"
    );
    assert_eq!(t.snapshot(), before, "no file touched on a re-run");

    // Someone made the password file readable to all: joining again puts
    // it back to 0600.
    use std::os::unix::fs::PermissionsExt;
    let pw = t.path("etc/ams-agent/mongo-password");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fixed = run(&t, &imds, &ams, &args);
    assert!(fixed.status.success(), "{}", stderr(&fixed));
    assert!(
        !stdout(&fixed).contains("already joined"),
        "{}",
        stdout(&fixed)
    );
    let mode = std::fs::metadata(&pw).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "password file left at {mode:o}");

    // The same image booted as another instance.
    imds.set("instance-id", "i-0bbbbbbbbbbbbbbb3");
    imds.set("local-ipv4", "10.0.1.99");
    let fresh = run(&t, &imds, &ams, &args);
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    let u = peer.updates();
    assert_eq!(u.last().unwrap().0, json!({ "_id": "i-0bbbbbbbbbbbbbbb3" }));
    assert!(
        t.read("etc/hosts")
            .lines()
            .any(|l| l.starts_with("10.0.1.99"))
    );
}

#[test]
fn without_a_terminal_a_missing_value_exits_2_at_once_and_touches_nothing() {
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaaa4", IP);
    let before = t.snapshot();
    let pw = t.dir.path().join("pw");
    std::fs::write(&pw, "x").unwrap();
    let pw = pw.to_str().unwrap().to_string();
    for (args, needle) in [
        (vec![], "--mongo is required"),
        (vec!["--mongo", ""], "--mongo is empty"),
        (vec!["--mongo", "a\nb"], "newline"),
        (vec!["--mongo", "mongodb://u:p@ss@h"], "%40"),
        (vec!["--mongo", "10.0.1"], "expected an IPv4"),
        (vec!["--mongo", "redis://h:6379"], "needs MongoDB"),
        (
            vec!["--mongo", "h", "--mongo-password-file", "/nonexistent/pw"],
            "--mongo-password-file",
        ),
        (
            vec!["--mongo", "h", "--mongo-password-file", &pw],
            "--mongo-user",
        ),
        (vec!["--mongo", "h", "--database", "a.b"], "--database"),
        (
            vec!["--mongo", "h", "--collection", "system.x"],
            "--collection",
        ),
        (vec!["--mongo", "h", "--interval", "1ms"], "--interval"),
        (vec!["--mongo", "h", "--wait", "soon"], "--mongo-wait"),
        (vec!["--mongo", "h", "--ams-timeout", "0s"], "--ams-wait"),
        (vec!["--mongo", "h", "--ttl", "1000000000000d"], "--ttl"),
        (vec!["--mongo", "h", "--ttl", "30s"], "--ttl"),
        (vec!["--mongo", "h", "--ams-home", "/nowhere"], "--ams-home"),
        (vec!["--mongo", "h", "--role", "relay"], "--role"),
    ] {
        let start = Instant::now();
        let out = run(&t, &imds, "http://127.0.0.1:1/", &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            start.elapsed()
        );
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.trim().lines().count() <= 5, "short: {err}");
        assert_eq!(t.snapshot(), before, "{args:?} changed files");
    }
    assert_eq!(
        imds.state.gets.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "bad input is refused before anything else"
    );
}

#[test]
fn dry_run_prints_the_plan_and_sends_nothing() {
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaaa5", IP);
    let peer = MongoPeer::start(PeerOptions::default());
    let before = t.snapshot();
    let out = t
        .command(&["--dry-run", "join", "--mongo", &peer.uri()])
        .env("AMS_AGENT_IMDS_ENDPOINT", &imds.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "join node i-0aaaaaaaaaaaaaaa5",
        "register the node as `joining`",
        "red5.properties",
        "/etc/ams-agent/agent.toml",
        "/etc/ams-agent/mongo-password (mode 0600)",
        "enable and start ams-agent.service",
        "mark the node `ready`",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    assert_eq!(t.snapshot(), before);
    assert!(t.systemctl_calls().is_empty());
    let cmds: Vec<String> = peer
        .commands()
        .iter()
        .map(|c| c["cmd"].as_str().unwrap().to_string())
        .collect();
    assert!(cmds.is_empty(), "dry run talked to MongoDB: {cmds:?}");
}

#[test]
fn authentication_failure_fails_fast_naming_the_step_with_the_password_masked() {
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaaa6", IP);
    let peer = MongoPeer::start(PeerOptions {
        auth_fail: true,
        ..Default::default()
    });
    let pw = t.dir.path().join("pw");
    std::fs::write(&pw, "Sup3r:s3cret@\\pw\n").unwrap();
    let before = t.snapshot();
    let start = Instant::now();
    let out = run(
        &t,
        &imds,
        "http://127.0.0.1:1/",
        &[
            "--mongo",
            &format!("127.0.0.1:{}", peer.port),
            "--mongo-user",
            "ams",
            "--mongo-password-file",
            pw.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "no waiting on wrong credentials"
    );
    let line = error_line(&out);
    assert!(
        line.starts_with("error: join failed at step `wait for MongoDB`"),
        "{line}"
    );
    assert!(line.contains("authentication failed"), "{line}");
    assert!(line.contains("mongodb://ams:****@127.0.0.1:"), "{line}");
    let all = format!("{}{}", stderr(&out), stdout(&out));
    assert!(
        !all.contains("s3cret") && !all.contains("s3cret%40"),
        "password leaked: {all}"
    );
    assert_eq!(t.snapshot(), before, "nothing changed on the host");
    let le: serde_json::Value =
        serde_json::from_str(&t.read("var/lib/ams-agent/last-error.json")).unwrap();
    assert_eq!(le["step"], "wait for MongoDB");
    assert!(!le["message"].as_str().unwrap().contains("s3cret"));
}

#[test]
fn unreachable_mongodb_gives_up_after_wait() {
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaaa7", IP);
    let start = Instant::now();
    let out = run(
        &t,
        &imds,
        "http://127.0.0.1:1/",
        &[
            "--mongo",
            &format!("127.0.0.1:{}", free_port()),
            "--wait",
            "3s",
        ],
    );
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let line = error_line(&out);
    assert!(
        line.contains("join failed at step `wait for MongoDB`"),
        "{line}"
    );
    assert!(
        line.contains("did not become reachable within 3s"),
        "{line}"
    );
    assert!(line.contains("Connection refused"), "{line}");
}

#[test]
fn a_failed_step_is_recorded_in_mongodb_and_locally() {
    let t = Tree::new();
    t.fake_systemctl(1, "Job for antmedia.service failed");
    let imds = Imds::start("i-0aaaaaaaaaaaaaaa8", IP);
    let peer = MongoPeer::start(PeerOptions::default());
    let out = run(&t, &imds, &fake_ams_http(), &["--mongo", &peer.uri()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.starts_with("error: join failed at step `switch AMS to cluster mode`"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1);
    let u = peer.updates();
    let rec = u
        .iter()
        .find(|(_, upd, _)| upd["$set"].get("lastError.step").is_some())
        .expect("lastError recorded in MongoDB");
    assert_eq!(rec.0, json!({ "_id": "i-0aaaaaaaaaaaaaaa8" }));
    assert_eq!(
        rec.1["$set"]["lastError.step"],
        "switch AMS to cluster mode"
    );
    assert_eq!(rec.1["$currentDate"], json!({ "lastError.at": true }));
    // And the peer (which refuses path conflicts as mongod does) kept it.
    let st = t.run(&["status", "--mongo", &peer.uri(), "--json"]);
    assert!(st.status.success(), "{}", stderr(&st));
    let v: serde_json::Value = serde_json::from_str(&stdout(&st)).unwrap();
    let err = v["nodes"][0]["lastError"].as_str().unwrap().to_string();
    assert!(err.starts_with("switch AMS to cluster mode: "), "{err}");
    assert!(
        !stderr(&out).contains("could not record"),
        "{}",
        stderr(&out)
    );
    let le: serde_json::Value =
        serde_json::from_str(&t.read("var/lib/ams-agent/last-error.json")).unwrap();
    assert_eq!(le["command"], "join");
    assert_eq!(le["node_id"], "i-0aaaaaaaaaaaaaaa8");
    assert!(
        !t.path("etc/ams-agent/agent.toml").exists(),
        "no reporter configured after a failure"
    );
}

/// A login that really succeeds (the peer speaks SCRAM-SHA-256 and
/// enforces authorization): the password goes to the 0600 file, never into
/// agent.toml, and the node is registered as ready.
#[test]
fn a_scram_login_joins_and_keeps_the_password_in_the_0600_file() {
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaaab", IP);
    let mut peer = MongoPeer::start(PeerOptions {
        auth: true,
        ..Default::default()
    });
    let password = "p@ss:/?#%\\ wörd";
    peer.add_user("ams", password, &["SCRAM-SHA-256"]);
    let pw_file = t.dir.path().join("pw");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let mongo = format!("127.0.0.1:{}", peer.port);
    let out = run(
        &t,
        &imds,
        &fake_ams_http(),
        &[
            "--mongo",
            &mongo,
            "--mongo-user",
            "ams",
            "--mongo-password-file",
            pw_file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains(password) && !stdout(&out).contains(password));
    let cfg = t.read("etc/ams-agent/agent.toml");
    assert!(!cfg.contains("wörd") && !cfg.contains("p%40ss"), "{cfg}");
    assert_eq!(
        t.read("etc/ams-agent/mongo-password"),
        format!("{password}\n")
    );
    let mode = std::fs::metadata(t.path("etc/ams-agent/mongo-password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        peer.named("saslStart")
            .iter()
            .any(|c| c["doc"]["mechanism"] == "SCRAM-SHA-256")
    );
    let states: Vec<_> = peer
        .updates()
        .into_iter()
        .filter_map(|(_, u, _)| u["$set"]["state"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("ready"),
        "{states:?}"
    );
}

#[test]
#[ignore = "needs a real mongod: set AMS_AGENT_TEST_MONGO_URI and run `cargo test -- --ignored`"]
fn credentials_go_to_the_0600_file_and_never_into_agent_toml() {
    // The same against a real mongod, with the credentials in its URI.
    let uri = real_mongo_uri().expect("AMS_AGENT_TEST_MONGO_URI is not set");
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaaa9", IP);
    let db = unique_db("join");
    let out = run(
        &t,
        &imds,
        &fake_ams_http(),
        &["--mongo", &uri, "--database", &db],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (stripped, password) = ams_agent::uri::split_password(&uri);
    let cfg = t.read("etc/ams-agent/agent.toml");
    assert!(cfg.contains(&format!("uri = \"{stripped}\"")), "{cfg}");
    if let Some(p) = password {
        assert!(!cfg.contains(&p));
        assert_eq!(t.read("etc/ams-agent/mongo-password"), format!("{p}\n"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(&uri).await.unwrap();
        let d = c
            .database(&db)
            .collection::<mongodb::bson::Document>("nodes")
            .find_one(mongodb::bson::doc! { "_id": "i-0aaaaaaaaaaaaaaa9" })
            .await
            .unwrap()
            .expect("the node document");
        assert_eq!(d.get_str("state").unwrap(), "ready");
        c.database(&db).drop().await.unwrap();
    });
}

/// A `systemctl` on PATH that logs its arguments and fails (exit 1) only
/// for `enable`.
fn systemctl_failing_enable(t: &Tree) {
    let log = t.dir.path().join("systemctl.log");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$1\" in enable) echo 'Failed to enable unit: Access denied' >&2; exit 1;; esac\nexit 0\n",
        log.display()
    );
    let p = t.bin.join("systemctl");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_join_that_failed_half_way_is_repaired_by_running_it_again() {
    let t = Tree::new();
    systemctl_failing_enable(&t);
    let imds = Imds::start("i-0aaaaaaaaaaaaaa10", IP);
    let ams = fake_ams_http();
    let peer = MongoPeer::start(PeerOptions::default());
    let args = ["--mongo", &peer.uri(), "--wait", "20s"];
    let out = run(&t, &imds, &ams, &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("join failed at step `configure and start the reporter`"),
        "{line}"
    );
    assert!(
        !t.path("var/lib/ams-agent/joined.json").exists(),
        "a failed join is not recorded as done"
    );
    assert_ne!(peer.updates().last().unwrap().1["$set"]["state"], "ready");

    // The user-data runs again, systemd works now: the join is completed.
    t.fake_systemctl(0, "");
    let again = run(&t, &imds, &ams, &args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        !stdout(&again).contains("already joined"),
        "{}",
        stdout(&again)
    );
    let calls = t.systemctl_calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| *c == "enable --now ams-agent.service")
            .count(),
        2,
        "{calls:?}"
    );
    let last = peer.updates().last().unwrap().clone();
    assert_eq!(last.0, json!({ "_id": "i-0aaaaaaaaaaaaaa10" }));
    assert_eq!(last.1["$set"]["state"], "ready");
    let rec: serde_json::Value =
        serde_json::from_str(&t.read("var/lib/ams-agent/joined.json")).unwrap();
    assert_eq!(rec["node_id"], "i-0aaaaaaaaaaaaaa10");

    // And now it is done.
    let third = run(&t, &imds, &ams, &args);
    assert!(third.status.success(), "{}", stderr(&third));
    assert!(
        stdout(&third).contains("already joined"),
        "{}",
        stdout(&third)
    );
}

#[test]
fn the_ip_given_to_join_is_the_registered_private_ip_and_is_saved() {
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaa11", IP);
    let peer = MongoPeer::start(PeerOptions::default());
    let out = run(
        &t,
        &imds,
        &fake_ams_http(),
        &["--mongo", &peer.uri(), "--ip", "10.0.1.77"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("private IP 10.0.1.77"),
        "{}",
        stdout(&out)
    );
    let u = peer.updates();
    assert!(u.len() >= 2, "{u:?}");
    for (_, upd, _) in &u {
        assert_eq!(upd["$set"]["privateIp"], "10.0.1.77", "{upd}");
    }
    let hosts = t.read("etc/hosts");
    assert!(hosts.lines().any(|l| l.starts_with("10.0.1.77")), "{hosts}");
    // Saved for the reporter, with the node id, so `run` reports the same.
    let cfg = t.read("etc/ams-agent/agent.toml");
    assert!(cfg.contains("private_ip = \"10.0.1.77\""), "{cfg}");
    assert!(cfg.contains("id = \"i-0aaaaaaaaaaaaaa11\""), "{cfg}");
}

#[test]
fn dry_run_on_a_joined_node_says_nothing_to_do() {
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaa12", IP);
    let peer = MongoPeer::start(PeerOptions::default());
    let args = ["--mongo", &peer.uri()];
    let out = run(&t, &imds, &fake_ams_http(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let n = peer.commands().len();
    let dry = t
        .command(&["--dry-run", "join", "--mongo", &peer.uri()])
        .env("AMS_AGENT_IMDS_ENDPOINT", &imds.url)
        .env("AMS_AGENT_AMS_URL", fake_ams_http())
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", stderr(&dry));
    let text = stdout(&dry);
    assert!(
        text.contains("already joined") && text.contains("nothing to do"),
        "{text}"
    );
    assert!(!text.contains("Plan:"), "{text}");
    assert_eq!(peer.commands().len(), n, "dry run talked to MongoDB");
}

#[test]
fn a_plan_that_cannot_be_made_fails_before_anything_reaches_mongodb() {
    let t = Tree::new();
    std::fs::write(t.path("etc/hostname"), "localhost\n").unwrap();
    let imds = Imds::start("i-0aaaaaaaaaaaaaa13", IP);
    let peer = MongoPeer::start(PeerOptions::default());
    let before = t.snapshot();
    let out = run(&t, &imds, &fake_ams_http(), &["--mongo", &peer.uri()]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("localhost"), "{line}");
    assert!(line.contains("switch AMS to cluster mode"), "{line}");
    assert!(
        peer.named("update").is_empty() && peer.named("createIndexes").is_empty(),
        "a stray `joining` document: {:?}",
        peer.updates()
    );
    assert_eq!(t.snapshot(), before, "nothing changed");
    assert!(t.systemctl_calls().is_empty());
}

#[test]
fn an_interrupted_change_is_completed_even_when_already_joined() {
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaa14", IP);
    let peer = MongoPeer::start(PeerOptions::default());
    let args = ["--mongo", &peer.uri()];
    let out = run(&t, &imds, &fake_ams_http(), &args);
    assert!(out.status.success(), "{}", stderr(&out));

    // A change that crashed after its commit point: the journal names a
    // rename still to do.
    let target = format!("/{AMS}/conf/red5.properties");
    let tmp = format!("/{AMS}/conf/.red5.properties.ams-agent-tmp");
    let new = format!("{}# landed by recovery\n", t.read(&target[1..]));
    std::fs::write(t.path(&tmp[1..]), &new).unwrap();
    std::fs::write(
        t.path("var/lib/ams-agent/journal.json"),
        serde_json::to_vec(&json!({ "renames": [[tmp, target]], "removals": [] })).unwrap(),
    )
    .unwrap();

    let again = run(&t, &imds, &fake_ams_http(), &args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already joined"),
        "{}",
        stdout(&again)
    );
    assert_eq!(t.read(&target[1..]), new, "the interrupted change landed");
    assert!(!t.path("var/lib/ams-agent/journal.json").exists());
}

/// True when `text` shows a duration with sub-second noise (`991us`, `564ns`).
fn has_duration_noise(text: &str) -> bool {
    let b = text.as_bytes();
    b.windows(3).any(|w| {
        w[0].is_ascii_digit() && (w[1] == b'u' || w[1] == b'n' || w[1] == b'\xc2') && w[2] == b's'
    })
}

#[test]
fn wait_is_a_deadline_even_when_mongodb_stalls() {
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaaa15", IP);
    let mut peer = MongoPeer::start(PeerOptions::default());
    peer.control("fault ping stall");
    let start = Instant::now();
    let out = run(
        &t,
        &imds,
        "http://127.0.0.1:1/",
        &["--mongo", &peer.uri(), "--wait", "2s"],
    );
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        took < Duration::from_millis(4500),
        "--wait 2s took {took:?}"
    );
    let line = error_line(&out);
    assert!(line.contains("within 2s"), "{line}");
    assert!(!has_duration_noise(&stderr(&out)), "{}", stderr(&out));
    assert!(peer.named("update").is_empty());
}

/// `systemctl` emulating what systemd does with `ams-agent.service`
/// (LoadCredential= at start, no capabilities, drop-ins at daemon-reload).
fn emulated_systemd(t: &Tree) -> common::systemd::Systemd {
    common::systemd::Systemd::install(
        &t.bin,
        &t.root(),
        &t.dir.path().join("systemctl.log"),
        &t.dir.path().join("systemd"),
    )
}

/// A second `join` with a new password (or interval) restarts the running
/// reporter: `LoadCredential=` copies the password only at start, and
/// `enable --now` leaves a running unit alone. Then MongoDB restarts (every
/// connection opened before the rotation is gone) and the reporter logs in
/// with the new password.
#[test]
fn a_new_join_restarts_the_reporter_with_the_new_password() {
    if !fixture::needs_root("running the reporter without capabilities (setpriv)") {
        return;
    }
    let t = Tree::new();
    let sd = emulated_systemd(&t);
    let imds = Imds::start("i-0aaaaaaaaaaaaaa40", IP);
    let ams = fake_ams_http();
    let mut peer = MongoPeer::start(PeerOptions {
        auth: true,
        ..Default::default()
    });
    peer.add_user("ams", "first-Pw", &["SCRAM-SHA-256"]);
    let mongo = format!("127.0.0.1:{}", peer.port);
    let pw = |name: &str, content: &str| {
        let p = t.dir.path().join(name);
        std::fs::write(&p, format!("{content}\n")).unwrap();
        p.display().to_string()
    };
    let (pw1, pw2) = (pw("pw1", "first-Pw"), pw("pw2", "second-Pw"));
    let run_join = |pw: &str, interval: &str| {
        let args = [
            "--mongo",
            &mongo,
            "--mongo-user",
            "ams",
            "--mongo-password-file",
            pw,
            "--interval",
            interval,
        ];
        run(&t, &imds, &ams, &args)
    };
    let join = |pw: &str, interval: &str| {
        let out = run_join(pw, interval);
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    let heartbeats_resume = |peer: &MongoPeer, what: &str| {
        let n = peer.updates().len();
        common::wait_for(what, Duration::from_secs(20), || peer.updates().len() > n);
    };

    join(&pw1, "1s");
    let first = sd.reporter_pid().expect("the reporter runs after join");
    assert_eq!(sd.credential(), "first-Pw\n");
    heartbeats_resume(&peer, "the reporter's heartbeats");

    // The password is rotated on the server, and join runs again with it.
    peer.add_user("ams", "second-Pw", &["SCRAM-SHA-256"]);
    let calls_before = t.systemctl_calls().len();
    let out = join(&pw2, "1s");
    assert!(!stdout(&out).contains("already joined"), "{}", stdout(&out));
    let calls = t.systemctl_calls()[calls_before..].to_vec();
    let second = sd.reporter_pid().expect("the reporter runs");
    assert_ne!(first, second, "the reporter was not restarted: {calls:?}");
    assert_eq!(sd.credential(), "second-Pw\n", "{calls:?}");
    assert!(
        calls.contains(&"restart ams-agent.service".to_string()),
        "{calls:?}"
    );
    assert!(
        !calls.contains(&"daemon-reload".to_string()),
        "no unit file changed: {calls:?}"
    );
    assert!(
        !t.path("var/lib/ams-agent/reporter-restart-pending")
            .exists()
    );
    peer.control("stop");
    peer.control("start");
    heartbeats_resume(&peer, "a heartbeat logged in with the new password");
    assert!(
        sd.reporter_log().contains("i-0aaaaaaaaaaaaaa40"),
        "{}",
        sd.reporter_log()
    );

    // The same settings: nothing is restarted.
    let out = join(&pw2, "1s");
    assert!(stdout(&out).contains("already joined"), "{}", stdout(&out));
    assert_eq!(sd.reporter_pid(), Some(second));

    // Another interval: agent.toml changes, the reporter restarts.
    join(&pw2, "2s");
    let third = sd.reporter_pid().expect("the reporter runs");
    assert_ne!(third, second, "{:?}", sd.events());
    heartbeats_resume(&peer, "heartbeats at the new interval");

    // A restart that fails is owed to the next run, although the files
    // are in place by then.
    sd.fail_restarts(true);
    peer.add_user("ams", "first-Pw", &["SCRAM-SHA-256"]);
    let out = run_join(&pw1, "2s");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("restart ams-agent.service"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        sd.reporter_pid(),
        Some(third),
        "restarted although it failed"
    );
    assert!(
        t.path("var/lib/ams-agent/reporter-restart-pending")
            .exists()
    );
    sd.fail_restarts(false);
    let out = join(&pw1, "2s");
    assert!(!stdout(&out).contains("already joined"), "{}", stdout(&out));
    let fourth = sd.reporter_pid().expect("the reporter runs");
    assert_ne!(
        fourth,
        third,
        "the owed restart did not happen: {:?}",
        sd.events()
    );
    assert_eq!(sd.credential(), "first-Pw\n");
    assert!(
        !t.path("var/lib/ams-agent/reporter-restart-pending")
            .exists()
    );
}

/// The heartbeats (`$set` of every update with `$inc`) recorded so far.
fn heartbeat_sets(peer: &MongoPeer) -> Vec<serde_json::Value> {
    peer.updates()
        .into_iter()
        .filter(|(_, u, _)| u.get("$inc").is_some())
        .map(|(_, u, _)| u["$set"].clone())
        .collect()
}

/// A password join on an install owned by `antmedia` (as AMS's installer
/// leaves it) makes the AMS files 0640: the reporter, root without
/// capabilities, reads them through the group `join` puts in the unit's
/// drop-in. An edited `nodeGroup` and a later `mode standalone` are reported
/// from the files; `mode` also keeps agent.toml's recorded mode in step and
/// restarts the running reporter.
#[test]
fn the_reporter_reads_the_ams_files_a_password_join_protects() {
    if !fixture::needs_root("running the reporter without capabilities (setpriv)") {
        return;
    }
    let t = Tree::new();
    let status = std::process::Command::new("chown")
        .args(["-R", "1001:1001"])
        .arg(t.path(AMS))
        .status()
        .unwrap();
    assert!(status.success());
    let sd = emulated_systemd(&t);
    let imds = Imds::start("i-0aaaaaaaaaaaaaa41", IP);
    let mut peer = MongoPeer::start(PeerOptions {
        auth: true,
        ..Default::default()
    });
    peer.add_user("ams", "Pw-1", &["SCRAM-SHA-256"]);
    let pw = t.dir.path().join("pw");
    std::fs::write(&pw, "Pw-1\n").unwrap();
    let out = run(
        &t,
        &imds,
        &fake_ams_http(),
        &[
            "--mongo",
            &format!("127.0.0.1:{}", peer.port),
            "--mongo-user",
            "ams",
            "--mongo-password-file",
            pw.to_str().unwrap(),
            "--interval",
            "1s",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let red5 = t.path(&format!("{AMS}/conf/red5.properties"));
    let meta = std::fs::metadata(&red5).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.mode() & 0o777, meta.uid(), meta.gid()),
        (0o640, 1001, 1001),
        "the switch protects the password"
    );
    let drop_in = t.read("etc/systemd/system/ams-agent.service.d/10-ams-group.conf");
    assert!(
        drop_in.contains("\n[Service]\nSupplementaryGroups=antmedia\n"),
        "{drop_in}"
    );
    let calls = t.systemctl_calls();
    let reload = calls.iter().position(|c| c == "daemon-reload");
    let start = calls
        .iter()
        .position(|c| c == "enable --now ams-agent.service");
    assert!(
        reload.is_some() && reload < start,
        "daemon-reload before the start: {calls:?}"
    );
    assert!(
        sd.events().iter().any(|e| e.ends_with("groups=1001")),
        "{:?}",
        sd.events()
    );

    // Edited by hand (as antmedia, mode and owner kept): reported.
    let text = std::fs::read_to_string(&red5)
        .unwrap()
        .replace("nodeGroup=default", "nodeGroup=eu-west");
    std::fs::write(&red5, text).unwrap();
    common::wait_for(
        "a heartbeat with the edited nodeGroup",
        Duration::from_secs(15),
        || {
            heartbeat_sets(&peer)
                .iter()
                .any(|s| s["nodeGroup"] == "eu-west")
        },
    );
    let last = heartbeat_sets(&peer).last().unwrap().clone();
    assert_eq!(last["ams"]["mode"], "cluster", "{last}");
    assert_eq!(last["ams"]["fallback"], serde_json::Value::Null, "{last}");
    assert!(
        !sd.reporter_log().contains("cannot read"),
        "{}",
        sd.reporter_log()
    );

    // `mode standalone` later: agent.toml follows, the reporter restarts
    // and reports it.
    let before = sd.reporter_pid().unwrap();
    let out = t
        .command(&["mode", "standalone", "--no-restart", "--ip", IP])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg = t.read("etc/ams-agent/agent.toml");
    assert!(cfg.contains("ams_mode = \"standalone\""), "{cfg}");
    assert!(cfg.contains("node_group = \"eu-west\""), "{cfg}");
    assert!(
        t.systemctl_calls()
            .contains(&"try-restart ams-agent.service".to_string())
    );
    assert_ne!(sd.reporter_pid(), Some(before), "{:?}", sd.events());
    common::wait_for(
        "a heartbeat in standalone mode",
        Duration::from_secs(15),
        || {
            heartbeat_sets(&peer)
                .last()
                .is_some_and(|s| s["ams"]["mode"] == "standalone")
        },
    );
    // Again: nothing to record, nothing to restart.
    let calls = t.systemctl_calls().len();
    let out = t
        .command(&["mode", "standalone", "--no-restart", "--ip", IP])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
    assert_eq!(t.systemctl_calls().len(), calls);
}

/// `--mongo-password-ssm`: the password read from SSM Parameter Store (a
/// SecureString, decrypted) with the instance role the metadata hands out,
/// against moto with IAM enforced; it logs in for real, lands in the 0600
/// file only, and is never in a log line or the output. A parameter that
/// does not exist is bad input naming the flag; a role without
/// ssm:GetParameter is one line saying so.
#[test]
fn mongo_password_ssm_reads_the_password_with_the_instance_role() {
    use common::aws::{AwsPeer, give_role};
    let Some(aws) = AwsPeer::start() else { return };
    let password = "ssm-p@ss:/?#% wörd";
    let setup = aws.setup(json!({
        "roles": { "ams-node": ["ssm:GetParameter"], "nothing": ["ec2:DescribeInstances"] },
        "parameters": { "/ams/mongo-password": password },
    }));
    aws.enforce_iam();
    let t = Tree::new();
    let imds = Imds::start("i-0aaaaaaaaaaaaa55a", IP);
    give_role(&imds, &setup, "ams-node", "i-0aaaaaaaaaaaaa55a");
    let mut peer = MongoPeer::start(PeerOptions {
        auth: true,
        ..Default::default()
    });
    peer.add_user("ams", password, &["SCRAM-SHA-256"]);
    let mongo = format!("127.0.0.1:{}", peer.port);
    let ams = fake_ams_http();
    let join = |name: &str| {
        join_cmd(
            &t,
            &imds,
            &ams,
            &[
                "--mongo",
                &mongo,
                "--mongo-user",
                "ams",
                "--mongo-password-ssm",
                name,
            ],
        )
        .env("AMS_AGENT_AWS_ENDPOINT", aws.url())
        .output()
        .unwrap()
    };
    let out = join("/ams/nope");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("--mongo-password-ssm /ams/nope"),
        "{}",
        stderr(&out)
    );
    assert!(
        error_line(&out).contains("ParameterNotFound"),
        "{}",
        stderr(&out)
    );
    assert!(!t.path("etc/ams-agent/agent.toml").exists());

    give_role(&imds, &setup, "nothing", "i-0aaaaaaaaaaaaa55a");
    let out = join("/ams/mongo-password");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("ssm:GetParameter"),
        "{}",
        stderr(&out)
    );

    give_role(&imds, &setup, "ams-node", "i-0aaaaaaaaaaaaa55a");
    let out = join("/ams/mongo-password");
    assert!(out.status.success(), "{}", stderr(&out));
    for text in [
        stderr(&out),
        stdout(&out),
        t.read("etc/ams-agent/agent.toml"),
    ] {
        assert!(!text.contains("wörd") && !text.contains("ssm-p"), "{text}");
    }
    assert_eq!(
        t.read("etc/ams-agent/mongo-password"),
        format!("{password}\n")
    );
    assert!(
        peer.named("saslStart")
            .iter()
            .any(|c| c["doc"]["mechanism"] == "SCRAM-SHA-256")
    );

    // Both a file and SSM: bad input.
    let pw = t.dir.path().join("pw");
    std::fs::write(&pw, "x\n").unwrap();
    let out = t
        .command(&[
            "join",
            "--mongo",
            &mongo,
            "--mongo-password-file",
            pw.to_str().unwrap(),
            "--mongo-password-ssm",
            "/a",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `drain.json` of node `id` in `phase`, as the reporter writes it.
fn plant_drain(t: &Tree, id: &str, phase: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::create_dir_all(t.path("var/lib/ams-agent")).unwrap();
    std::fs::write(
        t.path("var/lib/ams-agent/drain.json"),
        json!({ "phase": phase, "node": id, "trigger": "spot-interruption",
                "reason": "EC2 Spot interruption: terminate at soon", "since": now,
                "deadline": now + 100, "seen": ["spot:terminate:soon"] })
        .to_string(),
    )
    .unwrap();
}

#[test]
fn a_draining_node_refuses_to_join_again_and_a_drained_one_joins_with_a_restart() {
    let t = Tree::new();
    let id = "i-0aaaaaaaaaaaaaad1";
    let imds = Imds::start(id, IP);
    let ams = fake_ams_http();
    let peer = MongoPeer::start(PeerOptions::default());
    let args = ["--mongo", &peer.uri(), "--wait", "20s"];
    let out = run(&t, &imds, &ams, &args);
    assert!(out.status.success(), "{}", stderr(&out));

    // A re-run of user-data during a Spot drain: refused, nothing touched.
    plant_drain(&t, id, "draining");
    let before = t.snapshot();
    let updates = peer.named("update").len();
    let calls = t.systemctl_calls().len();
    let out = run(&t, &imds, &ams, &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(&format!("node {id} is draining (spot-interruption"))
            && line.contains("join refused"),
        "{}",
        stderr(&out)
    );
    assert_eq!(t.snapshot(), before, "no file touched");
    assert_eq!(peer.named("update").len(), updates, "nothing sent");
    assert_eq!(t.systemctl_calls().len(), calls, "no service touched");

    // Once it left, joining again brings it back, restarting its reporter.
    plant_drain(&t, id, "left");
    let out = run(&t, &imds, &ams, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!t.path("var/lib/ams-agent/drain.json").exists());
    assert!(
        !t.path("var/lib/ams-agent/reporter-restart-pending")
            .exists()
    );
    let calls = t.systemctl_calls();
    assert!(
        calls.iter().any(|c| c == "restart ams-agent.service"),
        "{calls:?}"
    );
}
