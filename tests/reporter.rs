//! `ams-agent run`, the reporter daemon, against the MockupDB peer: steady
//! heartbeats with the exact update documents, MongoDB outages (server gone,
//! connection closed mid-run, error replies, stalled replies) that never
//! crash it and log one line when lost and one when back, and SIGTERM that
//! marks the node left and exits 0.

mod common;
mod fixture;

use std::fs::File;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{MongoPeer, PeerOptions, free_port, real_mongo_uri, unique_db, wait_for};
use fixture::{Tree, fake_ams_http};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

struct Reporter {
    child: Child,
    log: std::path::PathBuf,
}

impl Reporter {
    fn start(t: &Tree, args: &[&str], envs: &[(&str, &str)]) -> Reporter {
        Reporter::start_wrapped(t, &[], args, envs)
    }

    /// [`Reporter::start`], run through `wrapper` (e.g. setpriv).
    fn start_wrapped(t: &Tree, wrapper: &[&str], args: &[&str], envs: &[(&str, &str)]) -> Reporter {
        std::fs::write(t.path("etc/machine-id"), format!("{MACHINE_ID}\n")).unwrap();
        let log = t.dir.path().join(format!("run-{}.log", free_port()));
        let mut cmd = t.command(&[&["run"], args].concat());
        if let Some((program, wrapper_args)) = wrapper.split_first() {
            let mut wrapped = std::process::Command::new(program);
            wrapped
                .args(wrapper_args)
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => wrapped.env(k, v),
                    None => wrapped.env_remove(k),
                };
            }
            cmd = wrapped;
        }
        cmd.env(
            "AMS_AGENT_IMDS_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("AMS_AGENT_AMS_URL", fake_ams_http())
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("AMS_AGENT_INTERVAL")
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Reporter {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, sig: Signal) -> (Option<i32>, Duration) {
        let start = Instant::now();
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), start.elapsed());
            }
            assert!(Instant::now() < deadline, "the reporter did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn beats(peer: &MongoPeer) -> Vec<serde_json::Value> {
    peer.updates()
        .into_iter()
        .filter(|(_, u, _)| u.get("$inc").is_some())
        .map(|(_, u, _)| u)
        .collect()
}

#[test]
fn heartbeats_every_interval_and_sigterm_marks_left() {
    let t = Tree::new();
    let peer = MongoPeer::start(PeerOptions::default());
    let mut r = Reporter::start(
        &t,
        &["--mongo", &peer.uri(), "--role", "edge", "--interval", "1s"],
        &[],
    );
    wait_for("4 heartbeats", Duration::from_secs(15), || {
        beats(&peer).len() >= 4
    });
    let u = peer.updates();
    assert_eq!(u[0].0, json!({ "_id": MACHINE_ID }));
    assert_eq!(u[0].2, json!(true));
    let b = &beats(&peer)[1];
    assert_eq!(b["$currentDate"], json!({ "lastSeen": true }));
    assert_eq!(b["$inc"], json!({ "heartbeats": 1 }));
    assert_eq!(b["$set"]["role"], "edge");
    assert_eq!(b["$set"]["idSource"], "machine-id");
    assert_eq!(b["$set"]["state"], "ready", "AMS answers HTTP");
    assert_eq!(
        b["$set"]["ams"]["mode"], "standalone",
        "read from the AMS files"
    );
    assert_eq!(b["$set"]["intervalSeconds"], 1.0);
    let h = &b["$set"]["health"];
    for k in ["cpuCount", "load1", "memoryUsed", "diskUsed", "uptime"] {
        assert!(h[k].is_number(), "{k}: {h}");
    }
    // Spacing: about one interval apart.
    let times: Vec<f64> = peer
        .named("update")
        .iter()
        .map(|c| c["t"].as_f64().unwrap())
        .collect();
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| (0.7..1.6).contains(g)), "{gaps:?}");
    assert_eq!(peer.named("createIndexes").len(), 1, "indexes once");

    let (code, took) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0), "{}", r.log());
    assert!(took < Duration::from_secs(4), "{took:?}");
    let last = peer.updates().last().unwrap().clone();
    assert_eq!(last.0, json!({ "_id": MACHINE_ID }));
    assert_eq!(
        last.1,
        json!({ "$set": { "state": "left" }, "$currentDate": { "lastSeen": true } })
    );
}

#[test]
fn an_outage_logs_one_line_each_way_and_state_is_back_within_an_interval() {
    let t = Tree::new();
    let mut peer = MongoPeer::start(PeerOptions::default());
    let mut r = Reporter::start(
        &t,
        &[
            "--mongo",
            &peer.uri(),
            "--role",
            "origin",
            "--interval",
            "2s",
        ],
        &[],
    );
    wait_for("first heartbeat", Duration::from_secs(10), || {
        !beats(&peer).is_empty()
    });
    peer.control("stop");
    std::thread::sleep(Duration::from_secs(7));
    assert!(r.alive(), "the reporter survived the outage: {}", r.log());
    let n = beats(&peer).len();
    peer.control("start");
    let back = Instant::now();
    wait_for(
        "a heartbeat after the outage",
        Duration::from_secs(5),
        || beats(&peer).len() > n,
    );
    let latency = back.elapsed();
    assert!(
        latency <= Duration::from_millis(2500),
        "back after {latency:?} (interval 2s)"
    );
    std::thread::sleep(Duration::from_secs(3));
    let log = r.log();
    assert_eq!(
        log.matches("lost the connection to MongoDB").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("is back after").count(), 1, "{log}");
    let (code, _) = r.signal(Signal::SIGINT);
    assert_eq!(code, Some(0));
}

#[test]
fn closed_connections_error_replies_and_stalls_never_stop_it() {
    let t = Tree::new();
    let mut peer = MongoPeer::start(PeerOptions::default());
    let mut r = Reporter::start(
        &t,
        &["--mongo", &peer.uri(), "--role", "edge", "--interval", "1s"],
        &[],
    );
    wait_for("first heartbeat", Duration::from_secs(10), || {
        beats(&peer).len() >= 2
    });

    for fault in [
        "fault-once update close",
        "fault-once update error:91:The server is in quiesce mode and will shut down",
        "fault-once update error:8000:unexpected",
        "fault-once update stall",
    ] {
        let n = peer.named("update").len();
        peer.control(fault);
        // The faulty attempt, then a good heartbeat again (a stall is cut
        // at the operation deadline: 2 intervals).
        wait_for(
            &format!("recovery after `{fault}`"),
            Duration::from_secs(8),
            || peer.named("update").len() >= n + 2,
        );
        assert!(r.alive(), "{fault}: {}", r.log());
    }
    let log = r.log();
    assert!(log.contains("did not answer within 2s"), "{log}");
    assert!(log.contains("quiesce mode"), "{log}");
    let (code, _) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0));
}

#[test]
fn started_before_mongodb_it_connects_when_it_comes_up() {
    let t = Tree::new();
    let port = free_port();
    let mut r = Reporter::start(
        &t,
        &[
            "--mongo",
            &format!("127.0.0.1:{port}"),
            "--role",
            "edge",
            "--interval",
            "1s",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(r.alive());
    let peer = MongoPeer::start(PeerOptions {
        port: Some(port),
        ..Default::default()
    });
    let up = Instant::now();
    wait_for("first heartbeat", Duration::from_secs(5), || {
        !beats(&peer).is_empty()
    });
    assert!(
        up.elapsed() < Duration::from_millis(2500),
        "{:?}",
        up.elapsed()
    );
    let log = r.log();
    assert_eq!(
        log.matches("no connection yet to MongoDB").count(),
        1,
        "{log}"
    );
    let (code, _) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0));
}

#[test]
fn sigterm_while_mongodb_is_down_still_exits_0_within_the_deadline() {
    let t = Tree::new();
    let mut r = Reporter::start(
        &t,
        &[
            "--mongo",
            &format!("127.0.0.1:{}", free_port()),
            "--role",
            "edge",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_secs(2));
    let (code, took) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0), "{}", r.log());
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert!(
        r.log().contains("could not mark the node left"),
        "{}",
        r.log()
    );
}

#[test]
fn configuration_file_then_credentials_then_env_then_flags() {
    let t = Tree::new();
    let peer = MongoPeer::start(PeerOptions::default());
    std::fs::create_dir_all(t.path("etc/ams-agent")).unwrap();
    std::fs::write(
        t.path("etc/ams-agent/agent.toml"),
        format!(
            "[mongo]\nuri = \"mongodb://reporter@127.0.0.1:{}/?authSource=admin\"\ndatabase = \"fleet\"\ncollection = \"members\"\n[node]\nrole = \"origin\"\nams_home = \"/usr/local/antmedia\"\n[reporter]\ninterval = \"30s\"\ncpu_samples = 5\ncpu_sample_interval = \"1s\"\n",
            peer.port
        ),
    )
    .unwrap();
    // systemd's LoadCredential= directory holds the password.
    let creds = t.dir.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("mongo-password"), "from-credentials\n").unwrap();
    let mut r = Reporter::start(
        &t,
        &[],
        &[
            ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
            ("AMS_AGENT_INTERVAL", "1s"),
        ],
    );
    // The password is used: the driver logs in as `reporter` (the peer
    // refuses every login, so the reporter keeps retrying quietly).
    wait_for("a login attempt", Duration::from_secs(10), || {
        !peer.named("saslStart").is_empty()
    });
    let sasl = serde_json::to_string(&peer.named("saslStart")[0]["doc"]).unwrap();
    assert!(sasl.contains("saslStart"), "{sasl}");
    assert!(r.alive());
    let log = r.log();
    assert!(
        log.contains("fleet.members every 1s"),
        "env overrides the file: {log}"
    );
    assert!(log.contains("authentication failed"), "{log}");
    assert!(
        !log.contains("from-credentials"),
        "password in the log: {log}"
    );
    assert_eq!(
        log.matches("no connection yet to MongoDB").count(),
        1,
        "one line: {log}"
    );
    let (code, _) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0));
}

#[test]
#[ignore = "needs a real mongod: set AMS_AGENT_TEST_MONGO_URI and run `cargo test -- --ignored`"]
fn real_mongod_reporter_round_trip() {
    let uri = real_mongo_uri().expect("AMS_AGENT_TEST_MONGO_URI is not set");
    let t = Tree::new();
    let db = unique_db("run");
    let mut r = Reporter::start(
        &t,
        &[
            "--mongo",
            &uri,
            "--database",
            &db,
            "--role",
            "edge",
            "--interval",
            "1s",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_secs(4));
    let (code, _) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0), "{}", r.log());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(&uri).await.unwrap();
        let d = c
            .database(&db)
            .collection::<mongodb::bson::Document>("nodes")
            .find_one(mongodb::bson::doc! { "_id": MACHINE_ID })
            .await
            .unwrap()
            .expect("the node document");
        assert_eq!(d.get_str("state").unwrap(), "left");
        let n = d
            .get_i64("heartbeats")
            .or(d.get_i32("heartbeats").map(i64::from))
            .unwrap();
        assert!(n >= 3, "{n}");
        c.database(&db).drop().await.unwrap();
    });
}

#[test]
fn the_reporter_keeps_the_node_id_and_private_ip_join_stored() {
    // agent.toml as `join --ip 10.0.1.77` leaves it; the metadata service
    // does not answer (a blip), /etc/machine-id exists: the stored id and
    // the --ip address are reported, not the fallbacks.
    let t = Tree::new();
    let peer = MongoPeer::start(PeerOptions::default());
    std::fs::create_dir_all(t.path("etc/ams-agent")).unwrap();
    std::fs::write(
        t.path("etc/ams-agent/agent.toml"),
        format!(
            "[mongo]\nuri = \"{}\"\n[node]\nid = \"i-0aaaaaaaaaaaaaa21\"\nrole = \"edge\"\nprivate_ip = \"10.0.1.77\"\n[reporter]\ninterval = \"1s\"\n",
            peer.uri()
        ),
    )
    .unwrap();
    let mut r = Reporter::start(&t, &[], &[]);
    wait_for("2 heartbeats", Duration::from_secs(15), || {
        beats(&peer).len() >= 2
    });
    for (q, u, _) in peer.updates() {
        assert_eq!(q, json!({ "_id": "i-0aaaaaaaaaaaaaa21" }), "{}", r.log());
        if u.get("$inc").is_some() {
            assert_eq!(u["$set"]["privateIp"], "10.0.1.77");
            assert_eq!(u["$set"]["idSource"], "ec2");
        }
    }
    let (code, _) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0));
    assert_eq!(
        peer.updates().last().unwrap().0,
        json!({ "_id": "i-0aaaaaaaaaaaaaa21" })
    );
}

/// During an outage the cause can change: nothing listens, then the server
/// is back but refuses the credentials, then it accepts them. Each change of
/// cause is one new log line, and logins against a server that refuses
/// them are paced (backoff), not retried several times a second.
#[test]
fn a_change_of_cause_is_logged_and_refused_logins_are_paced() {
    let t = Tree::new();
    let port = free_port();
    let mut r = Reporter::start(
        &t,
        &[
            "--mongo",
            &format!("127.0.0.1:{port}"),
            "--mongo-user",
            "ams",
            "--role",
            "edge",
            "--interval",
            "1s",
        ],
        &[("AMS_AGENT_MONGO_PASSWORD", "the-new-one")],
    );
    wait_for("the first failure line", Duration::from_secs(10), || {
        r.log().contains("no connection yet to MongoDB")
    });
    // MongoDB comes back, but the user still has the old password.
    let mut peer = MongoPeer::start(PeerOptions {
        port: Some(port),
        auth: true,
        ..Default::default()
    });
    peer.add_user("ams", "the-old-one", &["SCRAM-SHA-256"]);
    wait_for("a refused login", Duration::from_secs(10), || {
        !peer.named("saslStart").is_empty()
    });
    let first = Instant::now();
    let before = peer.named("saslStart").len();
    std::thread::sleep(Duration::from_secs(8));
    let logins = peer.named("saslStart").len() - before;
    let rate = logins as f64 / first.elapsed().as_secs_f64();
    eprintln!(
        "refused logins: {logins} in {:?} ({rate:.2}/s)",
        first.elapsed()
    );
    assert!(
        rate <= 0.8,
        "{logins} logins in 8s ({rate:.2}/s): {}",
        r.log()
    );
    let log = r.log();
    assert!(
        log.lines().any(|l| l.contains("refused the credentials")),
        "the new cause is not logged: {log}"
    );
    assert_eq!(
        log.matches("refused the credentials").count(),
        1,
        "one line per cause: {log}"
    );
    // The password is fixed on the server: the reporter logs in again
    // within the backoff's cap.
    peer.add_user("ams", "the-new-one", &["SCRAM-SHA-256"]);
    let fixed = Instant::now();
    let n = beats(&peer).len();
    wait_for("a heartbeat after the fix", Duration::from_secs(40), || {
        beats(&peer).len() > n
    });
    eprintln!("back {:?} after the fix", fixed.elapsed());
    // The line follows the write it reports on.
    wait_for("the line saying it is back", Duration::from_secs(5), || {
        r.log().contains("is back after")
    });
    let log = r.log();
    assert_eq!(log.matches("is back after").count(), 1, "{log}");
    assert!(r.alive());
    let (code, _) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0));
}

/// A reporter that cannot read an AMS file (root without capabilities, the
/// file 0640 another owner's, no group) reports the value agent.toml
/// recorded, marked as such (which values, why, since when), warns once,
/// and says once when the file is readable again.
#[test]
fn values_from_agent_toml_are_marked_and_an_unreadable_file_warned_once() {
    if !fixture::needs_root("running the reporter without capabilities (setpriv)") {
        return;
    }
    let t = Tree::new();
    let peer = MongoPeer::start(PeerOptions::default());
    std::fs::create_dir_all(t.path("etc/ams-agent")).unwrap();
    std::fs::write(
        t.path("etc/ams-agent/agent.toml"),
        format!(
            "[mongo]\nuri = \"{}\"\n[node]\nid = \"i-0aaaaaaaaaaaaaa42\"\nrole = \"edge\"\nams_mode = \"cluster\"\nnode_group = \"recorded\"\n[reporter]\ninterval = \"1s\"\n",
            peer.uri()
        ),
    )
    .unwrap();
    let red5 = t.path("usr/local/antmedia/conf/red5.properties");
    let status = std::process::Command::new("chown")
        .args(["-R", "1001:1001"])
        .arg(t.path("usr/local/antmedia"))
        .status()
        .unwrap();
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&red5, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut r = Reporter::start_wrapped(
        &t,
        &[
            "setpriv",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--clear-groups",
        ],
        &[],
        &[],
    );
    wait_for("3 heartbeats", Duration::from_secs(15), || {
        beats(&peer).len() >= 3
    });
    let b = beats(&peer).last().unwrap().clone();
    let set = &b["$set"];
    // jee-container.xml is world-readable: the mode comes from AMS's files;
    // red5.properties is not: the node group is agent.toml's, and says so.
    assert_eq!(set["ams"]["mode"], "standalone", "{set}");
    assert_eq!(set["nodeGroup"], "recorded", "{set}");
    let fallback = &set["ams"]["fallback"];
    assert_eq!(fallback["from"], "agent.toml", "{set}");
    assert_eq!(fallback["values"], json!(["nodeGroup"]), "{set}");
    let why = fallback["error"].as_str().unwrap();
    assert!(
        why.contains("/usr/local/antmedia/conf/red5.properties")
            && why.contains("ermission denied"),
        "{why}"
    );
    assert!(
        fallback["since"]["$date"].is_string() || fallback["since"]["$date"].is_object(),
        "{fallback}"
    );
    let log = r.log();
    assert_eq!(log.matches("cannot read").count(), 1, "warned once: {log}");
    assert!(log.contains("red5.properties"), "{log}");

    // Readable again (by everyone): reported from the file, said once.
    std::fs::set_permissions(&red5, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_for("a heartbeat from the file", Duration::from_secs(15), || {
        beats(&peer)
            .last()
            .is_some_and(|b| b["$set"]["nodeGroup"] == "default")
    });
    std::thread::sleep(Duration::from_secs(2));
    let set = beats(&peer).last().unwrap()["$set"].clone();
    assert_eq!(set["ams"]["fallback"], serde_json::Value::Null, "{set}");
    let log = r.log();
    assert_eq!(log.matches("readable again").count(), 1, "{log}");
    assert_eq!(log.matches("cannot read").count(), 1, "{log}");
    let (code, _) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0));
}
