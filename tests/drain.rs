//! Graceful scale-in, end to end: the real reporter (`ams-agent run`)
//! against the MockupDB registry, the IMDS peer and a fake AMS REST API
//! whose streams and viewers fall to zero; `ams-agent drain` reaching it;
//! a second trigger during a drain; a budget that runs out; SIGTERM during
//! a drain; the metadata down for a minute; the lifecycle hook completed
//! against moto (behind our shim); the balancer draining the node.

mod common;
mod fixture;
mod lbkit;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Imds, MongoPeer, PeerOptions, free_port, wait_for};
use fixture::Tree;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const NODE: &str = "i-0d7a1b2c3d4e5f601";
const IP: &str = "10.0.1.20";

/// What the fake AMS serves, per application.
#[derive(Default, Clone)]
struct App {
    hls: i64,
    webrtc: i64,
    dash: i64,
    broadcasts: Vec<Value>,
}

#[derive(Clone, Default)]
struct FakeAms {
    apps: Arc<Mutex<HashMap<String, App>>>,
    refuse: Arc<Mutex<HashSet<String>>>,
    url: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A live broadcast published on `origin`.
fn live(id: &str, origin: &str) -> Value {
    json!({ "streamId": id, "status": "broadcasting", "originAdress": origin, "updateTime": now_ms() })
}

impl FakeAms {
    fn start() -> FakeAms {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ams = FakeAms {
            url: format!("http://127.0.0.1:{}/", l.local_addr().unwrap().port()),
            ..FakeAms::default()
        };
        let me = ams.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let me = me.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (status, body) = me.answer(&path);
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        ams.apps.lock().unwrap().clear();
        ams.url = ams.url.clone();
        ams
    }

    fn answer(&self, path: &str) -> (u16, String) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if parts.len() < 5 || parts[1] != "rest" || parts[2] != "v2" || parts[3] != "broadcasts" {
            return (200, "ok".into());
        }
        let app = parts[0];
        if self.refuse.lock().unwrap().contains(app) {
            return (403, "Not allowed IP".into());
        }
        let apps = self.apps.lock().unwrap();
        let a = apps.get(app).cloned().unwrap_or_default();
        match parts[4] {
            "total-broadcast-statistics" => (
                200,
                json!({ "totalRTMPWatchersCount": -1, "totalHLSWatchersCount": a.hls,
                         "totalWebRTCWatchersCount": a.webrtc, "totalDASHWatchersCount": a.dash,
                         "activeLiveStreamCount": a.broadcasts.len() })
                .to_string(),
            ),
            "active-live-stream-count" => {
                (200, json!({ "number": a.broadcasts.len() }).to_string())
            }
            "list" if parts.len() == 7 => {
                let offset: usize = parts[5].parse().unwrap_or(0);
                let size: usize = parts[6].parse().unwrap_or(50);
                let page: Vec<Value> = a
                    .broadcasts
                    .iter()
                    .skip(offset)
                    .take(size)
                    .cloned()
                    .collect();
                (200, Value::Array(page).to_string())
            }
            _ => (404, "{}".into()),
        }
    }

    fn set(&self, app: &str, f: impl FnOnce(&mut App)) {
        f(self.apps.lock().unwrap().entry(app.into()).or_default());
    }
}

/// A `systemctl` that logs its arguments and answers `is-system-running`
/// with the content of `system-state` (default `running`).
fn systemctl(t: &Tree) {
    let log = t.dir.path().join("systemctl.log");
    let state = t.dir.path().join("system-state");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\nif [ \"$1\" = is-system-running ]; then cat '{}' 2>/dev/null || echo running; fi\nexit 0\n",
        log.display(),
        state.display()
    );
    let p = t.bin.join("systemctl");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn agent_toml(t: &Tree, peer: &MongoPeer, extra: &str) {
    agent_toml_for(t, peer, NODE, extra)
}

fn agent_toml_for(t: &Tree, peer: &MongoPeer, id: &str, extra: &str) {
    std::fs::create_dir_all(t.path("etc/ams-agent")).unwrap();
    std::fs::write(
        t.path("etc/ams-agent/agent.toml"),
        format!(
            "[mongo]\nuri = \"{}\"\n[node]\nid = \"{id}\"\nrole = \"edge\"\nprivate_ip = \"{IP}\"\nams_home = \"/usr/local/antmedia\"\n[reporter]\ninterval = \"1s\"\n{extra}",
            peer.uri()
        ),
    )
    .unwrap();
}

struct Reporter {
    child: Child,
    log: std::path::PathBuf,
}

impl Reporter {
    fn start(t: &Tree, imds: &str, ams: &str, envs: &[(&str, &str)]) -> Reporter {
        let log = t.dir.path().join(format!("run-{}.log", free_port()));
        let mut cmd = t.command(&["run"]);
        cmd.env("AMS_AGENT_IMDS_ENDPOINT", imds)
            .env("AMS_AGENT_AMS_URL", ams)
            .env("AMS_AGENT_AWS_ENDPOINT", "http://127.0.0.1:1")
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
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), start.elapsed());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the reporter did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `$set` of every update of this node's document, in order.
fn sets(peer: &MongoPeer) -> Vec<Value> {
    sets_of(peer, NODE)
}

fn sets_of(peer: &MongoPeer, id: &str) -> Vec<Value> {
    peer.updates()
        .into_iter()
        .filter(|(q, _, _)| q["_id"] == id)
        .map(|(_, u, _)| u["$set"].clone())
        .collect()
}

fn heartbeats(peer: &MongoPeer) -> usize {
    heartbeats_of(peer, NODE)
}

fn heartbeats_of(peer: &MongoPeer, id: &str) -> usize {
    peer.updates()
        .into_iter()
        .filter(|(q, u, _)| q["_id"] == id && u.get("$inc").is_some())
        .count()
}

fn states(peer: &MongoPeer) -> Vec<String> {
    states_of(peer, NODE)
}

fn states_of(peer: &MongoPeer, id: &str) -> Vec<String> {
    sets_of(peer, id)
        .iter()
        .filter_map(|s| s["state"].as_str().map(str::to_string))
        .collect()
}

fn drain_state(t: &Tree) -> Value {
    serde_json::from_str(&t.read("var/lib/ams-agent/drain.json")).unwrap()
}

fn seed_clusternodes(peer: &mut MongoPeer) {
    for (id, ip) in [
        ("n-own", IP),
        ("n-prefix", "10.0.1.201"),
        ("n-other", "10.0.1.2"),
    ] {
        peer.control(&format!(
            "insert clusterdb clusternode {}",
            json!({ "_id": id, "ip": ip, "lastUpdateTime": 1 })
        ));
    }
}

fn setup() -> (Tree, MongoPeer, Imds, FakeAms) {
    let t = Tree::new();
    systemctl(&t);
    let mut peer = MongoPeer::start(PeerOptions::default());
    seed_clusternodes(&mut peer);
    agent_toml(&t, &peer, "");
    let imds = Imds::start(NODE, IP);
    let ams = FakeAms::start();
    (t, peer, imds, ams)
}

#[test]
fn a_drain_by_hand_waits_for_the_node_to_empty_then_leaves() {
    let (t, mut peer, imds, ams) = setup();
    ams.set("LiveApp", |a| {
        a.broadcasts = vec![live("s1", IP), live("elsewhere", "10.0.1.99")];
        a.hls = 2;
    });
    ams.set("WebRTCAppEE", |a| a.webrtc = 3);
    let mut r = Reporter::start(&t, &imds.url, &ams.url, &[]);
    wait_for("a ready heartbeat", Duration::from_secs(15), || {
        states(&peer).iter().any(|s| s == "ready")
    });

    // Bad input: one line, exit 2, nothing asked.
    let out = t.run(&["drain", "--reason", "a\nb"]);
    assert_eq!(out.status.code(), Some(2), "{}", fixture::stderr(&out));
    let out = t.run(&["drain", "--deadline", "1s"]);
    assert_eq!(out.status.code(), Some(2), "{}", fixture::stderr(&out));
    assert!(!t.path("var/lib/ams-agent/drain-request.json").exists());

    let asked = Instant::now();
    let out = t.run(&["drain", "--deadline", "2m", "--reason", "kernel upgrade"]);
    assert!(out.status.success(), "{}", fixture::stderr(&out));
    let text = fixture::stdout(&out);
    assert!(
        text.contains(&format!("node {NODE} is draining (manual: kernel upgrade)")),
        "{text}"
    );
    // `draining` is in the registry at once, with trigger, reason, deadline.
    wait_for("draining in the registry", Duration::from_secs(5), || {
        states(&peer).iter().any(|s| s == "draining")
    });
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "{:?}",
        asked.elapsed()
    );
    let first = sets(&peer)
        .into_iter()
        .find(|s| s["state"] == "draining")
        .unwrap();
    assert_eq!(first["drain"]["trigger"], "manual");
    assert_eq!(first["drain"]["reason"], "kernel upgrade");
    assert!(first["drain"]["deadline"].is_object(), "{first}");
    // The heartbeats keep saying draining (they used to write `ready`).
    let n = heartbeats(&peer);
    wait_for("two more heartbeats", Duration::from_secs(10), || {
        heartbeats(&peer) >= n + 2
    });
    let last = sets(&peer)
        .into_iter()
        .rev()
        .find(|s| s.get("health").is_some())
        .unwrap();
    assert_eq!(last["state"], "draining");
    assert_eq!(last["drain"]["trigger"], "manual");
    // Only this node's live stream counts, and every viewer.
    wait_for("the load in the log", Duration::from_secs(10), || {
        r.log()
            .contains("1 live stream(s), 5 viewer(s) on this node")
    });

    // A second trigger: a Spot interruption, with a shorter budget.
    let at =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(100));
    imds.set(
        "spot/instance-action",
        &json!({ "action": "terminate", "time": at.to_string() }).to_string(),
    );
    wait_for("the spot notice joins", Duration::from_secs(10), || {
        drain_state(&t)["trigger"] == "spot-interruption"
    });
    let s = drain_state(&t);
    assert!(
        s["deadline"].as_u64().unwrap() <= s["since"].as_u64().unwrap() + 100,
        "{s}"
    );
    // It cannot be cancelled any more.
    let out = t.run(&["drain", "--cancel"]);
    assert_eq!(out.status.code(), Some(1), "{}", fixture::stderr(&out));
    assert!(
        fixture::error_line(&out).contains("cancelling cannot stop that"),
        "{}",
        fixture::stderr(&out)
    );
    // The same notice again and again: one line.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(r.log().matches("another trigger").count(), 1, "{}", r.log());

    // `status` shows the drain with its reason, trigger and time left.
    let st = fixture::stdout(&t.run(&["status"]));
    assert!(
        st.contains(&format!(
            "draining {NODE}: spot-interruption (EC2 Spot interruption: terminate at"
        )),
        "{st}"
    );
    assert!(st.contains(" left"), "{st}");

    // The viewers leave, then the stream ends: the node leaves.
    ams.set("WebRTCAppEE", |a| a.webrtc = 0);
    ams.set("LiveApp", |a| a.hls = 0);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        drain_state(&t)["phase"],
        "draining",
        "one stream is still live"
    );
    ams.set("LiveApp", |a| {
        a.broadcasts.retain(|b| b["originAdress"] != IP)
    });
    wait_for("left", Duration::from_secs(10), || {
        drain_state(&t)["phase"] == "left"
    });
    let s = drain_state(&t);
    assert_eq!(s["outcome"], "empty");
    assert!(
        t.systemctl_calls().iter().any(|c| c == "stop antmedia"),
        "{:?}",
        t.systemctl_calls()
    );
    wait_for("left in the registry", Duration::from_secs(5), || {
        states(&peer).last().map(String::as_str) == Some("left")
    });
    let left = sets(&peer).last().unwrap().clone();
    assert_eq!(left["drain"]["outcome"], "empty");
    // Only this node's own clusternode row is gone.
    let rows = peer.dump("clusterdb", "clusternode");
    let ids: Vec<&str> = rows.iter().map(|r| r["_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["n-prefix", "n-other"], "{rows:?}");
    // No heartbeat after `left`.
    let n = heartbeats(&peer);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(heartbeats(&peer), n);
    assert_eq!(states(&peer).last().map(String::as_str), Some("left"));
    let log = r.log();
    assert!(log.contains("drain of node"), "{log}");
    // SIGTERM now: exits, writes nothing more.
    let updates = peer.updates().len();
    let (code, _) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0), "{}", r.log());
    assert_eq!(peer.updates().len(), updates);
}

#[test]
fn a_budget_that_runs_out_leaves_anyway_and_says_so() {
    let (t, peer, imds, ams) = setup();
    ams.set("LiveApp", |a| a.hls = 4);
    ams.refuse.lock().unwrap().insert("WebRTCAppEE".into());
    let mut r = Reporter::start(&t, &imds.url, &ams.url, &[]);
    wait_for("a heartbeat", Duration::from_secs(15), || {
        heartbeats(&peer) > 0
    });
    let out = t.run(&["drain", "--deadline", "10s"]);
    assert!(out.status.success(), "{}", fixture::stderr(&out));
    // Again: the same drain, by hand; the operator's latest word.
    let out = t.run(&["drain", "--deadline", "12s"]);
    assert!(out.status.success(), "{}", fixture::stderr(&out));
    wait_for("left", Duration::from_secs(25), || {
        t.path("var/lib/ams-agent/drain.json").exists() && drain_state(&t)["phase"] == "left"
    });
    assert_eq!(drain_state(&t)["outcome"], "deadline-passed");
    let log = r.log();
    assert!(
        log.contains("the deadline passed with 0 live stream(s), 4 viewer(s) on this node (LiveApp: 0/4); WebRTCAppEE: unknown (HTTP 403: AMS refuses 127.0.0.1"),
        "{log}"
    );
    assert!(log.contains("leaving anyway"), "{log}");
    // drain.json says left first, the registry right after.
    wait_for("left in the registry", Duration::from_secs(5), || {
        states(&peer).last().map(String::as_str) == Some("left")
    });
    r.signal(Signal::SIGTERM);
}

#[test]
fn sigterm_during_a_drain_keeps_it_unless_the_machine_shuts_down() {
    let (t, mut peer, imds, ams) = setup();
    ams.set("LiveApp", |a| a.webrtc = 1);
    let mut r = Reporter::start(&t, &imds.url, &ams.url, &[]);
    wait_for("a heartbeat", Duration::from_secs(15), || {
        heartbeats(&peer) > 0
    });
    assert!(t.run(&["drain"]).status.success());
    wait_for("draining", Duration::from_secs(5), || {
        states(&peer).iter().any(|s| s == "draining")
    });
    // The reporter alone is stopped (a package upgrade): the drain stays.
    let (code, took) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        !states(&peer).iter().any(|s| s == "left"),
        "{:?}",
        states(&peer)
    );
    assert!(
        r.log().contains("the reporter stops, the drain does not"),
        "{}",
        r.log()
    );
    assert_eq!(drain_state(&t)["phase"], "draining");
    // Started again: the drain goes on, the heartbeats say draining.
    let mut r = Reporter::start(&t, &imds.url, &ams.url, &[]);
    let n = heartbeats(&peer);
    wait_for("a heartbeat", Duration::from_secs(15), || {
        heartbeats(&peer) > n
    });
    assert_eq!(sets(&peer).last().unwrap()["state"], "draining");
    assert!(r.log().contains("resuming the drain"), "{}", r.log());
    // Now the machine shuts down: leave at once, AMS left to systemd.
    std::fs::write(t.dir.path().join("system-state"), "stopping\n").unwrap();
    let (code, took) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0), "{}", r.log());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(states(&peer).last().map(String::as_str), Some("left"));
    assert_eq!(sets(&peer).last().unwrap()["drain"]["outcome"], "shutdown");
    assert!(!t.systemctl_calls().iter().any(|c| c == "stop antmedia"));
    let ids: Vec<String> = peer
        .dump("clusterdb", "clusternode")
        .iter()
        .map(|r| r["_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["n-prefix", "n-other"]);
}

#[test]
fn metadata_down_for_a_minute_is_no_drain_and_notices_count_once_it_is_back() {
    let (t, peer, imds, ams) = setup();
    let mut r = Reporter::start(&t, &imds.url, &ams.url, &[]);
    wait_for("a heartbeat", Duration::from_secs(15), || {
        heartbeats(&peer) > 0
    });
    imds.fail_all(Some(503));
    std::thread::sleep(Duration::from_secs(60));
    assert!(
        !states(&peer).iter().any(|s| s == "draining"),
        "{:?}",
        states(&peer)
    );
    assert!(!t.path("var/lib/ams-agent/drain.json").exists());
    let log = r.log();
    assert_eq!(
        log.matches("termination notices unavailable").count(),
        1,
        "{log}"
    );
    imds.fail_all(None);
    // Advisory notices: logged, in the heartbeat, never a drain.
    imds.set(
        "events/recommendations/rebalance",
        r#"{"noticeTime": "2026-05-01T12:00:00Z"}"#,
    );
    wait_for("back", Duration::from_secs(20), || {
        r.log().contains("answers again")
    });
    wait_for(
        "the advisory in a heartbeat",
        Duration::from_secs(10),
        || {
            sets(&peer)
                .last()
                .is_some_and(|s| s["notices"].as_array().is_some_and(|n| !n.is_empty()))
        },
    );
    let st = fixture::stdout(&t.run(&["status"]));
    assert!(
        st.contains(&format!("notice {NODE}: rebalance recommendation")),
        "{st}"
    );
    assert!(!states(&peer).iter().any(|s| s == "draining"));
    // The token expired meanwhile: renewed; a lifecycle notice drains.
    imds.expire_tokens();
    imds.set("autoscaling/target-lifecycle-state", "Terminated");
    wait_for("draining", Duration::from_secs(8), || {
        states(&peer).iter().any(|s| s == "draining")
    });
    assert_eq!(drain_state(&t)["trigger"], "lifecycle-hook");
    r.signal(Signal::SIGTERM);
}

/// A lifecycle-hook drain against moto (behind our shim), the instance
/// role from the IMDS peer: heartbeats while the node empties, then
/// `CompleteLifecycleAction CONTINUE`; without the permission, one warning
/// each and the drain still ends, before the hook's own timeout.
#[test]
fn a_lifecycle_hook_drain_sends_heartbeats_then_completes_with_continue() {
    use common::aws::{AwsPeer, give_role};
    let Some(aws) = AwsPeer::start() else { return };
    let lifecycle = [
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeLifecycleHooks",
        "autoscaling:RecordLifecycleActionHeartbeat",
        "autoscaling:CompleteLifecycleAction",
    ];
    let setup = aws.setup(json!({
        "roles": {
            "ams-node": lifecycle,
            "describe-only": &lifecycle[..2],
        },
        "group": { "name": "ams-edge", "hook": "ams-drain", "heartbeatTimeout": 30, "defaultResult": "ABANDON" },
    }));
    let instance = setup["instance"].as_str().unwrap().to_string();
    aws.enforce_iam();

    let t = Tree::new();
    systemctl(&t);
    let peer = MongoPeer::start(PeerOptions::default());
    agent_toml_for(&t, &peer, &instance, "");
    let imds = Imds::start(&instance, IP);
    give_role(&imds, &setup, "ams-node", &instance);
    let ams = FakeAms::start();
    ams.set("LiveApp", |a| a.webrtc = 2);
    let aws_url = aws.url();
    let mut r = Reporter::start(
        &t,
        &imds.url,
        &ams.url,
        &[("AMS_AGENT_AWS_ENDPOINT", &aws_url)],
    );
    wait_for("a heartbeat", Duration::from_secs(15), || {
        heartbeats_of(&peer, &instance) > 0
    });
    // The group scales the instance in: its hook waits, the metadata says so.
    aws.terminate(&instance);
    imds.set("autoscaling/target-lifecycle-state", "Terminated");
    wait_for("draining", Duration::from_secs(8), || {
        states_of(&peer, &instance).iter().any(|s| s == "draining")
    });
    let d = sets_of(&peer, &instance)
        .into_iter()
        .find(|s| s["state"] == "draining")
        .unwrap();
    assert_eq!(d["drain"]["trigger"], "lifecycle-hook");
    wait_for("a lifecycle heartbeat", Duration::from_secs(10), || {
        aws.actions()["actions"][0]["heartbeats"].as_u64() >= Some(1)
    });
    assert!(r.log().contains("heartbeat timeout 30s"), "{}", r.log());
    ams.set("LiveApp", |a| a.webrtc = 0);
    wait_for("the action completed", Duration::from_secs(10), || {
        aws.actions()["actions"][0]["state"] == "Terminating:Proceed"
    });
    let a = aws.actions()["actions"][0].clone();
    assert_eq!(
        (a["result"].as_str(), a["timedOut"].as_bool()),
        (Some("CONTINUE"), Some(false)),
        "{a}"
    );
    assert_eq!(
        states_of(&peer, &instance).last().map(String::as_str),
        Some("left")
    );
    let log = r.log();
    assert!(
        log.contains("CompleteLifecycleAction CONTINUE sent"),
        "{log}"
    );
    assert!(!log.contains("may not call"), "{log}");
    r.signal(Signal::SIGTERM);

    // The same, with a role that may not send heartbeats nor complete.
    let t = Tree::new();
    systemctl(&t);
    let peer = MongoPeer::start(PeerOptions::default());
    agent_toml_for(&t, &peer, &instance, "");
    give_role(&imds, &setup, "describe-only", &instance);
    imds.unset("autoscaling/target-lifecycle-state");
    ams.set("LiveApp", |a| a.webrtc = 2);
    let mut r = Reporter::start(
        &t,
        &imds.url,
        &ams.url,
        &[("AMS_AGENT_AWS_ENDPOINT", &aws_url)],
    );
    wait_for("a heartbeat", Duration::from_secs(15), || {
        heartbeats_of(&peer, &instance) > 0
    });
    aws.terminate(&instance);
    imds.set("autoscaling/target-lifecycle-state", "Terminated");
    let start = Instant::now();
    wait_for("left", Duration::from_secs(30), || {
        states_of(&peer, &instance).last().map(String::as_str) == Some("left")
    });
    // The hook times out after 30s: the drain ended before it.
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "{:?}",
        start.elapsed()
    );
    let log = r.log();
    assert_eq!(
        log.matches("may not call autoscaling:RecordLifecycleActionHeartbeat")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("may not call autoscaling:CompleteLifecycleAction")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("the hook runs to its timeout (30s)"), "{log}");
    // Refused: the state says so (it is not taken as completed).
    wait_for("the last steps", Duration::from_secs(10), || {
        drain_state(&t).get("unfinished").is_none()
    });
    assert_eq!(drain_state(&t)["lifecycle"]["completed"], false);
    assert!(log.contains("was not completed"), "{log}");
    let calls = aws.actions()["calls"].as_array().unwrap().clone();
    assert!(
        calls.iter().any(|c| c["refused"] == "AccessDenied"),
        "{calls:?}"
    );
    r.signal(Signal::SIGTERM);
}

/// The balancer's side: once the reporter wrote `draining`, `lb haproxy`
/// drains the node through HAProxy's Runtime API (admin state DRAIN, no
/// reload), and new clients go to the other edge.
#[test]
fn after_draining_lb_haproxy_drains_the_node_through_the_runtime_api() {
    use lbkit::*;
    let t = Tree::new();
    systemctl(&t);
    let ports = Ports::new();
    let _b = Backends::start(ports.node, &[("127.0.0.71", "e1"), ("127.0.0.72", "e2")]);
    let mut peer = MongoPeer::start(PeerOptions::default());
    std::fs::create_dir_all(t.path("etc/ams-agent")).unwrap();
    std::fs::write(
        t.path("etc/ams-agent/agent.toml"),
        format!(
            "[mongo]\nuri = \"{}\"\n[node]\nid = \"{NODE}\"\nrole = \"edge\"\nprivate_ip = \"127.0.0.71\"\nams_home = \"/usr/local/antmedia\"\n[reporter]\ninterval = \"1s\"\n",
            peer.uri()
        ),
    )
    .unwrap();
    put_node(&mut peer, "i-e2", "edge", "127.0.0.72", "ready", 1);
    let imds = Imds::start(NODE, "127.0.0.71");
    let ams = FakeAms::start();
    ams.set("LiveApp", |a| a.webrtc = 1);
    let mut r = Reporter::start(&t, &imds.url, &ams.url, &[]);
    wait_for("a heartbeat", Duration::from_secs(15), || {
        heartbeats(&peer) > 0
    });
    let _h = Haproxy::start(&t);
    let lb = |extra: &[&str]| {
        run_lb(
            &t,
            "haproxy",
            &peer,
            &ports,
            &["--state-file", "/var/lib/haproxy/state"],
            extra,
        )
    };
    ok(&lb(&["--settle", "0s"]));
    eventually("both edges in rotation", Duration::from_secs(10), || {
        let mut seen = spread(ports.play, "/", 8);
        seen.sort();
        seen.dedup();
        seen == ["e1", "e2"]
    });
    let worker = Haproxy::worker(&t);

    assert!(
        t.run(&["drain", "--reason", "scale-in test"])
            .status
            .success()
    );
    wait_for("draining", Duration::from_secs(5), || {
        states(&peer).iter().any(|s| s == "draining")
    });
    let out = ok(&lb(&[]));
    assert!(
        out.contains(&format!("~ {NODE} (edge) is now draining")),
        "{out}"
    );
    assert!(out.contains("Runtime API"), "{out}");
    let servers = admin(&t, "show servers state ams_edge");
    let row = servers
        .lines()
        .find(|l| l.contains("127.0.0.71"))
        .unwrap_or_else(|| panic!("{servers}"));
    let admin_state: u32 = row.split(' ').nth(6).unwrap().parse().unwrap();
    assert_eq!(
        admin_state & 0x08,
        0x08,
        "DRAIN (SRV_ADMF_FDRAIN) in: {row}"
    );
    assert!(spread(ports.play, "/", 6).iter().all(|n| n == "e2"));
    assert_eq!(Haproxy::worker(&t), worker, "no reload");
    r.signal(Signal::SIGTERM);
}

/// `t` as an HTTP date (RFC 1123), as Azure's `NotBefore` is written.
fn http_date(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let days = secs / 86_400;
    let rfc = humantime::format_rfc3339_seconds(t).to_string();
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months[rfc[5..7].parse::<usize>().unwrap() - 1];
    format!(
        "{weekday}, {} {month} {} {} GMT",
        &rfc[8..10],
        &rfc[0..4],
        &rfc[11..19]
    )
}

// The vmId of tests/fixtures/cloud/azure-instance.json, as the agent writes it.
const AZURE_VM: &str = "e94f3f7f-6b23-4395-be46-ea363c549f71";
const AZURE_EVENTS: &str = "/metadata/scheduledevents?api-version=2020-07-01";
const EVENT: &str = "602d9444-d2cd-49c7-8624-8643e7171297";

#[test]
fn an_azure_preempt_drains_the_node_and_is_acknowledged_once_it_left() {
    let t = Tree::new();
    systemctl(&t);
    common::cloud::plant_dmi(&t.root(), "azure");
    let mut peer = MongoPeer::start(PeerOptions::default());
    seed_clusternodes(&mut peer);
    agent_toml_for(&t, &peer, AZURE_VM, "");
    let azure = common::cloud::CloudPeer::azure();
    let ams = FakeAms::start();
    ams.set("LiveApp", |a| {
        a.broadcasts = vec![live("s1", IP)];
        a.webrtc = 1;
    });
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut r = Reporter::start(
        &t,
        &closed,
        &ams.url,
        &[("AMS_AGENT_AZURE_IMDS_ENDPOINT", azure.url.as_str())],
    );
    let start = Instant::now();
    while !states_of(&peer, AZURE_VM).iter().any(|s| s == "ready") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no ready heartbeat: {}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        r.log()
            .contains("watching Microsoft Azure's termination notices"),
        "{}",
        r.log()
    );
    // A sibling's event and an advisory Reboot of this VM: no drain.
    let later = std::time::SystemTime::now() + Duration::from_secs(600);
    let events = |list: Vec<Value>| json!({ "DocumentIncarnation": 2, "Events": list }).to_string();
    let event = |id: &str, kind: &str, vm: &str, at: &str| {
        json!({ "EventId": id, "EventStatus": "Scheduled", "EventType": kind,
                "ResourceType": "VirtualMachine", "Resources": [vm], "NotBefore": at,
                "Description": "", "EventSource": "Platform", "DurationInSeconds": -1 })
    };
    azure.route(
        "GET",
        AZURE_EVENTS,
        200,
        &events(vec![
            event(
                "11111111-2222-4333-8444-555555555555",
                "Preempt",
                "ams-edge-2",
                &http_date(later),
            ),
            event(
                "66666666-2222-4333-8444-555555555555",
                "Reboot",
                "ams-edge-1",
                &http_date(later),
            ),
        ]),
    );
    wait_for("the advisory in the log", Duration::from_secs(15), || {
        r.log()
            .contains("advisory notice: Azure Scheduled Event Reboot")
    });
    assert!(
        !t.path("var/lib/ams-agent/drain.json").exists(),
        "{}",
        r.log()
    );

    // This VM is preempted: draining at once, with the cloud's reason.
    let at = std::time::SystemTime::now() + Duration::from_secs(90);
    azure.route(
        "GET",
        AZURE_EVENTS,
        200,
        &events(vec![event(EVENT, "Preempt", "ams-edge-1", &http_date(at))]),
    );
    wait_for("draining in the registry", Duration::from_secs(10), || {
        states_of(&peer, AZURE_VM).iter().any(|s| s == "draining")
    });
    let s = drain_state(&t);
    assert_eq!(s["trigger"], "preemption", "{s}");
    assert!(s["reason"].as_str().unwrap().contains(EVENT), "{s}");
    assert_eq!(s["acks"], json!([EVENT]), "{s}");
    // The drain ends the margin before the cloud acts.
    let deadline = s["deadline"].as_u64().unwrap();
    let at_s = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(deadline <= at_s - 15 && deadline + 20 >= at_s - 15, "{s}");
    let posts = || {
        azure
            .seen()
            .into_iter()
            .filter(|q| q.method == "POST")
            .collect::<Vec<_>>()
    };
    assert!(posts().is_empty(), "acknowledged before the node was empty");
    let st = fixture::stdout(&t.run(&["status"]));
    assert!(
        st.contains(&format!(
            "draining {AZURE_VM}: preemption (Azure Scheduled Event Preempt"
        )),
        "{st}"
    );

    // The node empties: it leaves, then the event is approved.
    ams.set("LiveApp", |a| {
        a.broadcasts.clear();
        a.webrtc = 0;
    });
    wait_for("left", Duration::from_secs(15), || {
        drain_state(&t)["phase"] == "left"
    });
    wait_for("the acknowledgement", Duration::from_secs(10), || {
        !posts().is_empty()
    });
    let p = posts();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        p[0].headers.get("metadata").map(String::as_str),
        Some("true")
    );
    let body: Value = serde_json::from_str(&p[0].body).unwrap();
    assert_eq!(body, json!({ "StartRequests": [{ "EventId": EVENT }] }));
    assert_eq!(
        states_of(&peer, AZURE_VM).last().map(String::as_str),
        Some("left")
    );
    let log = r.log();
    assert!(
        log.contains(&format!("acknowledged Scheduled Event {EVENT}")),
        "{log}"
    );
    let (code, _) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0), "{}", r.log());
}

#[test]
fn a_gcp_preemption_drains_the_node_within_its_30_seconds() {
    let t = Tree::new();
    systemctl(&t);
    common::cloud::plant_dmi(&t.root(), "gcp");
    let peer = MongoPeer::start(PeerOptions::default());
    let gcp = common::cloud::CloudPeer::gcp();
    // The instance id of tests/fixtures/cloud/gcp-instance.json.
    let id = "gcp-4520031799277581759".to_string();
    agent_toml_for(&t, &peer, &id, "");
    let ams = FakeAms::start();
    // A viewer who never leaves: the short budget runs out.
    ams.set("LiveApp", |a| a.hls = 1);
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut r = Reporter::start(
        &t,
        &closed,
        &ams.url,
        &[("AMS_AGENT_GCP_METADATA_ENDPOINT", gcp.url.as_str())],
    );
    wait_for("a ready heartbeat", Duration::from_secs(15), || {
        states_of(&peer, &id).iter().any(|s| s == "ready")
    });
    gcp.route("GET", "/computeMetadata/v1/instance/preempted", 200, "TRUE");
    let seen = Instant::now();
    wait_for("draining in the registry", Duration::from_secs(10), || {
        states_of(&peer, &id).iter().any(|s| s == "draining")
    });
    let s = drain_state(&t);
    assert_eq!(s["trigger"], "preemption", "{s}");
    assert!(
        s.get("acks").is_none(),
        "GCP has nothing to acknowledge: {s}"
    );
    let budget = s["deadline"].as_u64().unwrap() - s["since"].as_u64().unwrap();
    assert!(budget <= 16, "GCP's 30 s less the margin: {s}");
    wait_for("left", Duration::from_secs(30), || {
        drain_state(&t)["phase"] == "left"
    });
    assert!(
        seen.elapsed() < Duration::from_secs(30),
        "{:?}",
        seen.elapsed()
    );
    assert_eq!(drain_state(&t)["outcome"], "deadline-passed");
    assert!(r.log().contains("the deadline passed with"), "{}", r.log());
    let (code, _) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0), "{}", r.log());
}

#[test]
fn a_reporter_stopped_between_left_and_the_last_steps_runs_them_when_it_starts() {
    let (t, mut peer, imds, ams) = setup();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::create_dir_all(t.path("var/lib/ams-agent")).unwrap();
    std::fs::write(
        t.path("var/lib/ams-agent/drain.json"),
        json!({ "phase": "left", "node": NODE, "trigger": "manual", "reason": "upgrade",
                "since": now - 60, "deadline": now + 60, "seen": ["manual:r1"],
                "outcome": "empty", "leftAt": now - 1, "unfinished": true })
        .to_string(),
    )
    .unwrap();
    let mut r = Reporter::start(&t, &imds.url, &ams.url, &[]);
    wait_for("left in the registry", Duration::from_secs(10), || {
        states(&peer).last().map(String::as_str) == Some("left")
    });
    wait_for("the last steps done", Duration::from_secs(10), || {
        drain_state(&t).get("unfinished").is_none()
    });
    let rows = peer.dump("clusterdb", "clusternode");
    let ids: Vec<&str> = rows.iter().map(|r| r["_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["n-prefix", "n-other"], "{rows:?}");
    assert!(r.log().contains("running them now"), "{}", r.log());
    // And nothing more: no heartbeat from a node that left.
    assert_eq!(heartbeats(&peer), 0);
    let (code, _) = r.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0), "{}", r.log());
}

#[test]
fn an_unreadable_spot_notice_does_not_hide_the_lifecycle_notice_beside_it() {
    let (t, peer, imds, ams) = setup();
    ams.set("LiveApp", |a| a.hls = 1);
    let mut r = Reporter::start(&t, &imds.url, &ams.url, &[]);
    wait_for("a ready heartbeat", Duration::from_secs(15), || {
        states(&peer).iter().any(|s| s == "ready")
    });
    imds.set("spot/instance-action", "<html>not json</html>");
    imds.set("autoscaling/target-lifecycle-state", "Terminated");
    wait_for("draining in the registry", Duration::from_secs(15), || {
        states(&peer).iter().any(|s| s == "draining")
    });
    assert_eq!(drain_state(&t)["trigger"], "lifecycle-hook");
    wait_for(
        "the unreadable notice said",
        Duration::from_secs(10),
        || r.log().contains("not read as a Spot interruption"),
    );
    let log = r.log();
    assert!(!log.contains("does not answer"), "{log}");
    r.signal(Signal::SIGTERM);
}
