//! `ams-agent lb haproxy` against a real HAProxy 2.6 on loopback, in
//! front of HTTP/WebSocket backends, the registry served by MockupDB.

mod common;
mod fixture;
mod lbkit;

use std::time::Duration;

use common::{MongoPeer, PeerOptions};
use fixture::{Tree, error_line, stderr};
use lbkit::*;

fn lb(t: &Tree, peer: &MongoPeer, ports: &Ports, extra: &[&str]) -> std::process::Output {
    run_lb(
        t,
        "haproxy",
        peer,
        ports,
        &["--state-file", "/var/lib/haproxy/state"],
        extra,
    )
}

/// The operator's part of the file: everything outside the markers.
fn outside(text: &str) -> String {
    match (
        text.find("# BEGIN ams-agent lb"),
        text.find("# END ams-agent lb"),
    ) {
        (Some(b), Some(e)) => {
            let end = text[e..].find('\n').map_or(text.len(), |i| e + i + 1);
            format!("{}{}", &text[..b], &text[end..])
        }
        _ => text.to_string(),
    }
}

#[test]
fn haproxy_follows_joins_drains_stale_nodes_and_leaves_without_reloading() {
    let t = Tree::new();
    let ports = Ports::new();
    let _b = Backends::start(
        ports.node,
        &[
            ("127.0.0.11", "o1"),
            ("127.0.0.12", "e1"),
            ("127.0.0.13", "e2"),
        ],
    );
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-o1", "origin", "127.0.0.11", "ready", 1);
    put_node(&mut peer, "i-e1", "edge", "127.0.0.12", "ready", 1);
    let _h = Haproxy::start(&t);
    let original = t.read(HAPROXY_CFG);

    // First run: the section is new, so HAProxy is reloaded once.
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(out.contains("reloaded haproxy (worker pid"), "{out}");
    assert_eq!(reloads(&t, "haproxy"), 1);
    let first_worker = Haproxy::worker(&t);
    eventually(
        "publishing reaches the origin",
        Duration::from_secs(10),
        || get(ports.publish, "/", None).1 == "o1",
    );
    assert_eq!(get(ports.play, "/", None).1, "e1");
    assert_eq!(get(ports.play, "/?target=origin", None).1, "o1");
    assert_eq!(get(ports.publish, "/LiveApp/?target=edge", None).1, "e1");
    let (_, _, head) = get(ports.publish, "/", None);
    assert!(head.contains("AMS_ORIGIN=i-o1"), "{head}");
    let dash: Vec<String> = spread(ports.dashboard, "/", 6);
    assert!(dash.iter().all(|n| n == "o1" || n == "e1"), "{dash:?}");
    assert_eq!(outside(&t.read(HAPROXY_CFG)), original);

    // Two viewers' signalling WebSockets on e1.
    let mut ws = WsClients::open(
        &format!("ws://127.0.0.1:{}/WebRTCAppEE/websocket", ports.play),
        2,
    );
    assert_eq!(ws.nodes, ["e1", "e1"]);

    // A node joins: through the Runtime API, no reload.
    put_node(&mut peer, "i-e2", "edge", "127.0.0.13", "ready", 1);
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(out.contains("waiting: i-e2 joins the edges in"), "{out}");
    let out = ok(&lb(&t, &peer, &ports, &["--settle", "0s"]));
    assert!(out.contains("+ i-e2 joins the edges"), "{out}");
    assert!(
        out.contains("through HAProxy's Runtime API; no reload"),
        "{out}"
    );
    // leastconn: e1 holds two WebSockets, so new clients go to e2.
    eventually("e2 takes new clients", Duration::from_secs(5), || {
        spread(ports.play, "/", 4).iter().all(|n| n == "e2")
    });

    // e1 drains: new clients avoid it, its WebSockets and sticky clients stay.
    put_node(&mut peer, "i-e1", "edge", "127.0.0.12", "draining", 1);
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(out.contains("~ i-e1 (edge) is now draining"), "{out}");
    assert!(spread(ports.play, "/", 6).iter().all(|n| n == "e2"));
    assert_eq!(get(ports.play, "/", Some("AMS_EDGE=i-e1")).1, "e1");
    assert_eq!(
        ws.check(),
        (2, 0),
        "the WebSockets on e1 survive the join and the drain"
    );

    // No reload happened for any of it.
    assert_eq!(Haproxy::worker(&t), first_worker);
    assert_eq!(reloads(&t, "haproxy"), 1);

    // e2 goes stale: out once it stayed stale for --settle (1 of 2 edges).
    put_node(&mut peer, "i-e2", "edge", "127.0.0.13", "ready", 60);
    let out = ok(&lb(&t, &peer, &ports, &["--settle", "0s"]));
    assert!(out.contains("- i-e2 leaves the edges"), "{out}");
    // Only e1 remains, draining: no new client is taken.
    assert_eq!(get(ports.play, "/", None).0, 503);
    // e1 leaves: out at once; its WebSockets were its own to close.
    put_node(&mut peer, "i-e1", "edge", "127.0.0.12", "left", 0);
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(out.contains("- i-e1 leaves the edges"), "{out}");
    assert_eq!(get(ports.play, "/", None).0, 503);
    assert_eq!(get(ports.play, "/?target=origin", None).1, "o1");
    assert_eq!(Haproxy::worker(&t), first_worker);

    // e2 comes back into a spare slot (its first one), answering with a
    // dynamic cookie until a reload renders it under its own name.
    put_node(&mut peer, "i-e2", "edge", "127.0.0.13", "ready", 1);
    ok(&lb(&t, &peer, &ports, &["--settle", "0s"]));
    assert_eq!(get(ports.play, "/", None).1, "e2");
    let text = t.read(HAPROXY_CFG);
    assert!(
        text.contains(&format!(
            "server _slot1 127.0.0.13:{} # node i-e2",
            ports.node
        )),
        "{text}"
    );
    assert!(
        text.contains("server i-e1 127.0.0.1:1 cookie i-e1 disabled # empty"),
        "{text}"
    );
    assert_eq!(outside(&text), original);

    // Unchanged registry: nothing written, nothing sent.
    let before = t.read(HAPROXY_CFG);
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(t.read(HAPROXY_CFG), before);

    // `lb status`: the registry's view against the balancer's.
    let st = t.run(&["lb", "status", "--mongo", &peer.uri(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&st)).unwrap();
    let rows = v["haproxy"]["rows"].as_array().unwrap();
    let row = |id: &str| rows.iter().find(|r| r["node"] == id).unwrap().clone();
    assert_eq!(row("i-e2")["balancer"], "ready, up");
    assert_eq!(row("i-e1")["registry"], "left");
    assert_eq!(row("i-e1")["balancer"], "out");
    assert_eq!(
        v["haproxy"]["rotation"]["ams_origin"],
        serde_json::json!(["i-o1"])
    );
    assert!(v["haproxy"]["lastRuntime"].is_object());
    let text = ok(&t.run(&["lb", "status", "--mongo", &peer.uri()]));
    assert!(text.contains("ams_edge: 1 in rotation: i-e2"), "{text}");

    // A structural change (a listener turned off) is a reload; it
    // compacts the slots under the nodes' own names.
    let worker = Haproxy::worker(&t);
    let out = ok(&lb(&t, &peer, &ports, &["--listen", "dashboard=off"]));
    assert!(out.contains("reloaded haproxy"), "{out}");
    assert!(out.contains("the frontends or settings changed"), "{out}");
    assert_ne!(Haproxy::worker(&t), worker);
    assert_eq!(reloads(&t, "haproxy"), 2);
    // The old worker keeps the open WebSockets (until hard-stop-after).
    assert_eq!(ws.check(), (2, 0));
    assert_eq!(get(ports.play, "/", None).1, "e2");
    let text = t.read(HAPROXY_CFG);
    assert!(!text.contains("frontend ams_dashboard"), "{text}");
    assert!(
        text.contains(&format!(
            "server i-e2 127.0.0.13:{} cookie i-e2 # node i-e2",
            ports.node
        )),
        "{text}"
    );
    assert_eq!(outside(&text), original);
}

#[test]
fn guards_keep_the_last_good_configuration_and_recovery_re_renders() {
    let t = Tree::new();
    let ports = Ports::new();
    let nodes: Vec<(String, String)> = (0..4)
        .map(|i| (format!("127.0.0.{}", 21 + i), format!("e{i}")))
        .chain([("127.0.0.20".to_string(), "o1".to_string())])
        .collect();
    let refs: Vec<(&str, &str)> = nodes
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let _b = Backends::start(ports.node, &refs);
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-o1", "origin", "127.0.0.20", "ready", 1);
    for i in 0..4 {
        put_node(
            &mut peer,
            &format!("i-e{i}"),
            "edge",
            &format!("127.0.0.{}", 21 + i),
            "ready",
            1,
        );
    }
    let _h = Haproxy::start(&t);
    ok(&lb(&t, &peer, &ports, &[]));
    eventually("four edges", Duration::from_secs(10), || {
        let mut seen = spread(ports.play, "/", 12);
        seen.sort();
        seen.dedup();
        seen.len() == 4
    });
    let good = t.read(HAPROXY_CFG);

    // The registry does not answer: nothing changes, traffic flows.
    peer.control("stop");
    let out = lb(&t, &peer, &ports, &["--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("the balancer was left as it was"),
        "{}",
        stderr(&out)
    );
    assert_eq!(t.read(HAPROXY_CFG), good);
    assert_eq!(get(ports.play, "/", None).0, 200);
    peer.control("start");

    // It answers no node at all (lost state): held, traffic flows.
    for i in 0..4 {
        remove_node(&mut peer, &format!("i-e{i}"));
    }
    remove_node(&mut peer, "i-o1");
    let out = ok(&lb(&t, &peer, &ports, &["--settle", "0s"]));
    assert!(
        out.contains("held by a guard: the registry would leave no edge in rotation"),
        "{out}"
    );
    assert!(
        out.contains("held by a guard: the registry would leave no origin in rotation"),
        "{out}"
    );
    assert_eq!(t.read(HAPROXY_CFG), good);
    assert_eq!(get(ports.play, "/", None).0, 200);
    assert_eq!(get(ports.publish, "/", None).1, "o1");

    // Three of four edges go stale at once: more than half, held.
    put_node(&mut peer, "i-o1", "origin", "127.0.0.20", "ready", 1);
    put_node(&mut peer, "i-e0", "edge", "127.0.0.21", "ready", 1);
    for i in 1..4 {
        put_node(
            &mut peer,
            &format!("i-e{i}"),
            "edge",
            &format!("127.0.0.{}", 21 + i),
            "ready",
            90,
        );
    }
    let out = ok(&lb(&t, &peer, &ports, &["--settle", "0s"]));
    assert!(out.contains("would take 3 of 4 edges out at once"), "{out}");
    assert_eq!(t.read(HAPROXY_CFG), good);
    let st = ok(&t.run(&["lb", "status", "--mongo", &peer.uri()]));
    assert!(st.contains("held by a guard"), "{st}");
    // With a looser --max-removal the same answer goes through.
    let out = ok(&lb(
        &t,
        &peer,
        &ports,
        &["--settle", "0s", "--max-removal", "75%"],
    ));
    assert!(out.contains("- i-e1 leaves the edges"), "{out}");
    assert!(spread(ports.play, "/", 4).iter().all(|n| n == "e0"));

    // Recovery: the nodes report again and come back in.
    for i in 1..4 {
        put_node(
            &mut peer,
            &format!("i-e{i}"),
            "edge",
            &format!("127.0.0.{}", 21 + i),
            "ready",
            1,
        );
    }
    let out = ok(&lb(&t, &peer, &ports, &["--settle", "0s"]));
    assert!(out.contains("+ i-e3 joins the edges"), "{out}");
    eventually("four edges again", Duration::from_secs(10), || {
        let mut seen = spread(ports.play, "/", 12);
        seen.sort();
        seen.dedup();
        seen.len() == 4
    });
}

#[test]
fn a_file_haproxy_refuses_is_never_installed_and_its_message_is_shown() {
    let t = Tree::new();
    let ports = Ports::new();
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-o1", "origin", "127.0.0.31", "ready", 1);
    std::fs::create_dir_all(t.path("etc/haproxy")).unwrap();
    std::fs::create_dir_all(t.path("run/haproxy")).unwrap();
    let broken = format!("{}\nbackend mine\n\tbogus-keyword on\n", haproxy_base(&t));
    std::fs::write(t.path(HAPROXY_CFG), &broken).unwrap();
    let out = lb(&t, &peer, &ports, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(
            "`haproxy -c` refused the new /etc/haproxy/haproxy.cfg; nothing was installed"
        ),
        "{line}"
    );
    assert!(line.contains("bogus-keyword"), "{line}");
    // HAProxy's message names the live file, never the agent's temp copy.
    assert!(!line.contains("ams-agent-check"), "{line}");
    assert_eq!(t.read(HAPROXY_CFG), broken);
    assert!(!t.path("etc/haproxy/.haproxy.cfg.ams-agent-check").exists());
    assert!(t.systemctl_calls().iter().all(|c| !c.starts_with("reload")));
}

#[test]
fn hostile_registry_documents_never_reach_the_file() {
    let t = Tree::new();
    let ports = Ports::new();
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-o1", "origin", "127.0.0.41", "ready", 1);
    for (id, ip) in [
        ("i-x\nbackend evil", "127.0.0.42"),
        ("i-y", "127.0.0.43\n    server evil 6.6.6.6:80"),
        ("i-z }", "127.0.0.44"),
        ("i-\u{1b}[2J", "127.0.0.45"),
    ] {
        let doc = serde_json::json!({"_id": id, "role": "origin", "privateIp": ip, "state": "ready", "lastSeenAgo": 1});
        peer.control(&format!("put {doc}"));
    }
    let _h = Haproxy::start(&t);
    let out = lb(&t, &peer, &ports, &[]);
    let text = ok(&out);
    let cfg = t.read(HAPROXY_CFG);
    assert!(cfg.contains("server i-o1 127.0.0.41"), "{cfg}");
    for bad in ["evil", "6.6.6.6", "i-z", "\u{1b}"] {
        assert!(!cfg.contains(bad), "{bad:?} in\n{cfg}");
    }
    assert_eq!(text.matches("refused: node").count(), 4, "{text}");
    assert!(text.contains("refused: node i-x\\nbackend evil"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let t = Tree::new();
    let ports = Ports::new();
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-o1", "origin", "127.0.0.51", "ready", 1);
    let _h = Haproxy::start(&t);
    let before = t.read(HAPROXY_CFG);
    let out = t.run(&[
        "--dry-run",
        "lb",
        "haproxy",
        "--mongo",
        &peer.uri(),
        &format!("--listen=publish=127.0.0.1:{}", ports.publish),
    ]);
    let text = ok(&out);
    assert!(
        text.contains("Plan: haproxy follows the registry (1 origin, 0 edges in rotation)"),
        "{text}"
    );
    assert!(
        text.contains("+    server i-o1 127.0.0.51:5080 cookie i-o1 # node i-o1"),
        "{text}"
    );
    assert!(
        text.contains("reload haproxy (systemctl reload haproxy): the section is new"),
        "{text}"
    );
    assert_eq!(t.read(HAPROXY_CFG), before);
    assert!(std::fs::read_dir(t.path("etc/haproxy")).unwrap().count() == 1);
    assert!(!t.path("var/lib/haproxy/state").exists());
    assert!(t.systemctl_calls().iter().all(|c| !c.starts_with("reload")));
    assert!(!t.path("var/lib/ams-agent").exists());
    // --watch makes no sense with it.
    let out = t.run(&[
        "--dry-run",
        "lb",
        "haproxy",
        "--mongo",
        &peer.uri(),
        "--watch",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_unverified_reload_stays_owed_until_one_is_verified() {
    let t = Tree::new();
    let ports = Ports::new();
    let _b = Backends::start(ports.node, &[("127.0.0.97", "e1")]);
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-e1", "edge", "127.0.0.97", "ready", 1);
    let _h = Haproxy::start(&t);
    let marker = "var/lib/ams-agent/lb-haproxy-reload-pending";
    // The unit is active, but the admin socket named does not answer.
    let deaf = ["--socket", "/run/haproxy/elsewhere.sock"];
    let out = ok(&lb(&t, &peer, &ports, &deaf));
    assert!(out.contains("not verified"), "{out}");
    assert!(out.contains("the reload stays owed"), "{out}");
    assert!(t.path(marker).exists(), "{out}");
    assert_eq!(reloads(&t, "haproxy"), 1);
    // Unchanged and still unverifiable: owed, not reloaded every run.
    let out = ok(&lb(&t, &peer, &ports, &deaf));
    assert!(out.contains("once the admin socket answers"), "{out}");
    assert_eq!(reloads(&t, "haproxy"), 1);
    assert!(t.path(marker).exists());
    // The socket answers: the owed reload happens, verified, and is done.
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(
        out.contains("a reload is owed by an earlier run") && out.contains("worker pid"),
        "{out}"
    );
    assert_eq!(reloads(&t, "haproxy"), 2);
    assert!(!t.path(marker).exists());
}

#[test]
fn an_unreadable_status_record_is_named_not_taken_for_no_balancer() {
    let t = Tree::new();
    let out = t.run(&["lb", "status", "--mongo", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("has not configured a balancer"));
    std::fs::create_dir_all(t.path("var/lib/ams-agent")).unwrap();
    std::fs::write(
        t.path("var/lib/ams-agent/lb-haproxy.json"),
        "{\"kind\": tru",
    )
    .unwrap();
    let out = t.run(&["lb", "status", "--mongo", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = error_line(&out);
    assert!(
        err.contains("reading the balancer's status record /var/lib/ams-agent/lb-haproxy.json"),
        "{err}"
    );
    assert!(!err.contains("has not configured"), "{err}");
}

#[test]
fn a_certificate_folder_that_cannot_be_listed_is_no_silent_plain_http() {
    let t = Tree::new();
    let peer = MongoPeer::start(PeerOptions::default());
    std::fs::create_dir_all(t.path("etc/haproxy")).unwrap();
    std::fs::write(t.path(HAPROXY_CFG), "global\n").unwrap();
    std::fs::write(t.path("etc/haproxy/certs"), "not a folder\n").unwrap();
    let before = t.snapshot();
    let out = t.run(&["lb", "haproxy", "--mongo", &peer.uri()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--certs /etc/haproxy/certs is not a folder"),
        "{}",
        stderr(&out)
    );
    assert_eq!(t.snapshot(), before);
}

#[test]
fn bad_input_is_one_line_exit_2_and_nothing_touched() {
    let t = Tree::new();
    let peer = MongoPeer::start(PeerOptions::default());
    std::fs::create_dir_all(t.path("etc/haproxy")).unwrap();
    std::fs::write(t.path(HAPROXY_CFG), "global\n# BEGIN ams-agent lb\n").unwrap();
    let before = t.snapshot();
    // (made after the snapshot: reading a FIFO would block it)
    nix::unistd::mkfifo(&t.path("etc/fifo.cfg"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    for (args, needle) in [
        (
            vec!["lb", "haproxy", "--mongo", &peer.uri()],
            "without `# END ams-agent lb` after it",
        ),
        (
            vec![
                "lb",
                "haproxy",
                "--mongo",
                &peer.uri(),
                "--file",
                "/etc/fifo.cfg",
            ],
            "is not a regular file",
        ),
        (
            vec![
                "lb",
                "haproxy",
                "--mongo",
                &peer.uri(),
                "--file",
                "/etc/nope.cfg",
            ],
            "does not exist",
        ),
        (
            vec![
                "lb",
                "haproxy",
                "--mongo",
                &peer.uri(),
                "--listen",
                "play=host:80",
            ],
            "--listen",
        ),
        (
            vec![
                "lb",
                "haproxy",
                "--mongo",
                &peer.uri(),
                "--listen",
                "srt=4200",
            ],
            "HAProxy has no UDP",
        ),
        (
            vec![
                "lb",
                "haproxy",
                "--mongo",
                &peer.uri(),
                "--listen",
                "play=80",
            ],
            "both use port 80",
        ),
        (
            vec![
                "lb",
                "haproxy",
                "--mongo",
                &peer.uri(),
                "--max-removal",
                "150%",
            ],
            "--max-removal",
        ),
        (
            vec!["lb", "haproxy", "--mongo", &peer.uri(), "--poll", "0s"],
            "--poll",
        ),
        (vec!["lb", "haproxy"], "--mongo is not given"),
    ] {
        let out = t.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    std::fs::remove_file(t.path("etc/fifo.cfg")).unwrap();
    assert_eq!(t.snapshot(), before);
    assert!(
        peer.named("find").is_empty(),
        "the registry was asked before the input was checked"
    );
}

#[test]
fn watch_follows_changes_until_stopped() {
    let t = Tree::new();
    let ports = Ports::new();
    let _b = Backends::start(ports.node, &[("127.0.0.61", "o1"), ("127.0.0.62", "o2")]);
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-o1", "origin", "127.0.0.61", "ready", 1);
    let _h = Haproxy::start(&t);
    let child = spawn_watch(
        &t,
        "haproxy",
        &peer,
        &ports,
        &["--poll", "200ms", "--settle", "0s", "--timeout", "1s"],
    );
    eventually("o1 in rotation", Duration::from_secs(15), || {
        get(ports.publish, "/", None).1 == "o1"
    });
    let worker = Haproxy::worker(&t);
    put_node(&mut peer, "i-o2", "origin", "127.0.0.62", "ready", 1);
    put_node(&mut peer, "i-o1", "origin", "127.0.0.61", "draining", 1);
    eventually("traffic shifted to o2", Duration::from_secs(5), || {
        spread(ports.publish, "/", 3).iter().all(|n| n == "o2")
    });
    assert_eq!(
        Haproxy::worker(&t),
        worker,
        "no reload for a join and a drain"
    );
    // The registry goes away: the follower keeps the last good file.
    peer.control("stop");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(get(ports.publish, "/", None).1, "o2");
    peer.control("start");
    std::thread::sleep(Duration::from_secs(3));
    let out = stop(child);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert_eq!(
        log.matches("the registry does not answer").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("the registry answers again").count(),
        1,
        "{log}"
    );
}

#[test]
fn an_emptied_slot_never_comes_back_up_from_an_old_server_state() {
    let t = Tree::new();
    let ports = Ports::new();
    let _b = Backends::start(ports.node, &[("127.0.0.96", "e1"), ("127.0.0.1", "e2")]);
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-e1", "edge", "127.0.0.96", "ready", 1);
    let h = Haproxy::start(&t);
    ok(&lb(&t, &peer, &ports, &[]));
    // e2 joins at run time: a spare slot carries it, in the state file too.
    put_node(&mut peer, "i-e2", "edge", "127.0.0.1", "ready", 1);
    let out = ok(&lb(&t, &peer, &ports, &["--settle", "0s"]));
    assert!(out.contains("Runtime API"), "{out}");
    let state = t.read("var/lib/haproxy/state");
    // (e2 on 127.0.0.1, the placeholder's own address: the case where
    // HAProxy would restore the slot's port from an old line)
    assert!(state.contains(" _slot1 127.0.0.1 2 0 1 1 "), "{state}");
    assert!(state.contains(&format!(" {} ", ports.node)), "{state}");
    // HAProxy stops; e2 leaves meanwhile.
    drop(h);
    put_node(&mut peer, "i-e2", "edge", "127.0.0.1", "left", 0);
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(out.contains("HAProxy (haproxy) is not running"), "{out}");
    assert!(!t.read("var/lib/haproxy/state").contains("_slot1"));
    // HAProxy starts again: the slot is empty and stays down.
    let _h = Haproxy::start(&t);
    let servers = admin(&t, "show servers state ams_edge");
    let slot = servers
        .lines()
        .find(|l| l.split(' ').nth(3) == Some("_slot1"))
        .unwrap_or_else(|| panic!("{servers}"));
    let f: Vec<&str> = slot.split(' ').collect();
    assert_eq!((f[4], f[18]), ("127.0.0.1", "1"), "{slot}");
    assert_eq!(
        f[6].parse::<u32>().unwrap() & 1,
        1,
        "_slot1 is in maintenance: {slot}"
    );
    eventually("e1 answers", Duration::from_secs(10), || {
        get(ports.play, "/", None).1 == "e1"
    });
    assert!(spread(ports.play, "/", 6).iter().all(|n| n == "e1"));
}

#[test]
fn run_lb_is_the_watching_follower_with_settings_from_the_environment() {
    let t = Tree::new();
    let ports = Ports::new();
    let _b = Backends::start(ports.node, &[("127.0.0.99", "o1")]);
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-o1", "origin", "127.0.0.99", "ready", 1);
    let _h = Haproxy::start(&t);
    let listen = format!(
        "publish=127.0.0.1:{},play=127.0.0.1:{},dashboard=off,rtmp=off",
        ports.publish, ports.play
    );
    let child = t
        .command(&["run", "--lb", "haproxy", "--mongo", &peer.uri()])
        .env("AMS_AGENT_LB_LISTEN", &listen)
        .env("AMS_AGENT_LB_POLL", "200ms")
        .env("AMS_AGENT_LB_STATE_FILE", "/var/lib/haproxy/state")
        .env("AMS_AGENT_LB_HTTP_PORT", ports.node.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("o1 in rotation", Duration::from_secs(15), || {
        get(ports.publish, "/", None).1 == "o1"
    });
    let out = stop(child);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.read(HAPROXY_CFG).contains("frontend ams_publish"));
    assert!(!t.read(HAPROXY_CFG).contains("frontend ams_dashboard"));
}
