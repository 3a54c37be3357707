//! `ams-agent lb nginx` against a real Nginx 1.22 (with the stream module)
//! on loopback, in front of HTTP/WebSocket backends and UDP echoes, the
//! registry served by MockupDB.

mod common;
mod fixture;
mod lbkit;

use std::net::UdpSocket;
use std::time::Duration;

use common::{MongoPeer, PeerOptions};
use fixture::{Tree, error_line, stderr};
use lbkit::*;

fn lb(t: &Tree, peer: &MongoPeer, ports: &Ports, extra: &[&str]) -> std::process::Output {
    run_lb(t, "nginx", peer, ports, &["--reload-wait", "10s"], extra)
}

/// The operator's part: everything outside both marked sections.
fn outside(text: &str) -> String {
    let mut out = text.to_string();
    for kind in ["(main)", "(http)"] {
        let b = format!("# BEGIN ams-agent lb {kind}");
        let e = format!("# END ams-agent lb {kind}");
        if let (Some(bi), Some(ei)) = (out.find(&b), out.find(&e)) {
            let start = out[..bi].rfind('\n').map_or(0, |i| i + 1);
            let end = out[ei..].find('\n').map_or(out.len(), |i| ei + i + 1);
            out.replace_range(start..end, "");
        }
    }
    out
}

fn srt(port: u16) -> Option<String> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(b"srt", ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn nginx_follows_the_registry_by_role_target_cookie_and_placeholder() {
    let t = Tree::new();
    let ports = Ports::new();
    let _b = Backends::start(
        ports.node,
        &[
            ("127.0.0.71", "o1"),
            ("127.0.0.72", "e1"),
            ("127.0.0.73", "e2"),
        ],
    );
    udp_echo("127.0.0.71", ports.node, "o1");
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-o1", "origin", "127.0.0.71", "ready", 1);
    let _n = Nginx::start(&t);
    let original = t.read(NGINX_CONF);

    // First run: origins in, no edge yet: a deliberate placeholder.
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(
        out.contains("reloaded nginx (new workers started): the section is new"),
        "{out}"
    );
    eventually(
        "publishing reaches the origin",
        Duration::from_secs(10),
        || get(ports.publish, "/", None).1 == "o1",
    );
    let (status, _, _) = get(ports.play, "/", None);
    assert_eq!(status, 502, "an empty group answers 502");
    assert_eq!(get(ports.play, "/?target=origin", None).1, "o1");
    let (_, _, head) = get(ports.publish, "/", None);
    assert!(
        head.contains("Set-Cookie: AMS_ORIGIN=i-o1; Path=/; HttpOnly"),
        "{head}"
    );
    assert_eq!(
        srt(ports.srt).as_deref(),
        Some("o1:srt"),
        "SRT over UDP to the origin"
    );
    assert_eq!(outside(&t.read(NGINX_CONF)), original);

    // Edges join (an empty group takes them at once), one reload.
    put_node(&mut peer, "i-e1", "edge", "127.0.0.72", "ready", 1);
    put_node(&mut peer, "i-e2", "edge", "127.0.0.73", "ready", 1);
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(out.contains("+ i-e1 joins the edges"), "{out}");
    assert_eq!(reloads(&t, "nginx"), 2);
    eventually("both edges", Duration::from_secs(3), || {
        let mut seen = spread(ports.play, "/", 8);
        seen.sort();
        seen.dedup();
        seen == ["e1", "e2"]
    });
    // The cookie names the node; a client that has it stays there.
    for _ in 0..4 {
        assert_eq!(get(ports.play, "/", Some("AMS_EDGE=i-e2")).1, "e2");
    }
    // A forged cookie or target never picks an address.
    assert_eq!(get(ports.play, "/", Some("AMS_EDGE=127.0.0.1:22")).0, 200);
    assert_eq!(get(ports.publish, "/?target=127.0.0.72:1", None).1, "o1");
    assert_eq!(get(ports.publish, "/?target=edge", None).0, 200);

    // e1 drains: Nginx has no drain, it is out (sticky clients too).
    put_node(&mut peer, "i-e1", "edge", "127.0.0.72", "draining", 1);
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(out.contains("- i-e1 leaves the edges (draining)"), "{out}");
    // (the old workers stop taking connections just after the new start)
    eventually("e1 out", Duration::from_secs(3), || {
        spread(ports.play, "/", 6).iter().all(|n| n == "e2")
    });
    assert_eq!(get(ports.play, "/", Some("AMS_EDGE=i-e1")).1, "e2");

    // e2 goes stale; removal waits for --settle, then goes (1 of 1 would
    // empty the group: held).
    put_node(&mut peer, "i-e2", "edge", "127.0.0.73", "ready", 60);
    let out = ok(&lb(&t, &peer, &ports, &["--settle", "0s"]));
    assert!(
        out.contains("the registry would leave no edge in rotation"),
        "{out}"
    );
    assert_eq!(get(ports.play, "/", None).1, "e2");

    // Unchanged: nothing written, no reload.
    let before = t.read(NGINX_CONF);
    let n = reloads(&t, "nginx");
    ok(&lb(&t, &peer, &ports, &["--settle", "0s"]));
    assert_eq!(t.read(NGINX_CONF), before);
    assert_eq!(reloads(&t, "nginx"), n);

    let st = ok(&t.run(&["lb", "status", "--mongo", &peer.uri()]));
    assert!(st.contains("nginx balancer: /etc/nginx/nginx.conf"), "{st}");
    assert!(st.contains("held by a guard"), "{st}");
}

#[test]
fn an_address_reused_while_a_guard_holds_is_one_server_for_nginx() {
    let t = Tree::new();
    let ports = Ports::new();
    let mut peer = MongoPeer::start(PeerOptions::default());
    for i in 1..=4 {
        put_node(
            &mut peer,
            &format!("i-e{i}"),
            "edge",
            &format!("127.0.0.8{i}"),
            "ready",
            1,
        );
    }
    let _n = Nginx::start(&t);
    ok(&lb(&t, &peer, &ports, &[]));
    // Three of four go stale (the guard holds them); a replacement takes
    // e2's address.
    for i in 2..=4 {
        put_node(
            &mut peer,
            &format!("i-e{i}"),
            "edge",
            &format!("127.0.0.8{i}"),
            "ready",
            99,
        );
    }
    put_node(&mut peer, "i-e5", "edge", "127.0.0.82", "ready", 1);
    let out = ok(&lb(&t, &peer, &ports, &["--settle", "0s"]));
    assert!(out.contains("held by a guard"), "{out}");
    assert!(
        out.contains("address reused: i-e2 (edge) leaves at once: 127.0.0.82 is now node i-e5's"),
        "{out}"
    );
    let conf = t.read(NGINX_CONF);
    assert_eq!(conf.matches("\"127.0.0.82:").count(), 2, "{conf}");
    assert!(conf.contains("i-e5") && !conf.contains("i-e2"), "{conf}");
}

#[test]
fn a_reload_skipped_because_nginx_cannot_be_told_running_is_owed() {
    let t = Tree::new();
    let ports = Ports::new();
    let _b = Backends::start(ports.node, &[("127.0.0.74", "o1")]);
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-o1", "origin", "127.0.0.74", "ready", 1);
    let _n = Nginx::start(&t);
    let marker = "var/lib/ams-agent/lb-nginx-reload-pending";
    let pid = t.read("run/nginx.pid");
    std::fs::write(t.path("run/nginx.pid"), "not a pid\n").unwrap();
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(out.contains("whether Nginx runs cannot be told"), "{out}");
    assert!(out.contains("a reload is owed"), "{out}");
    assert!(t.path(marker).exists(), "{out}");
    assert_eq!(reloads(&t, "nginx"), 0);
    // Once it can be told: the owed reload happens, and is no longer owed.
    std::fs::write(t.path("run/nginx.pid"), pid).unwrap();
    let out = ok(&lb(&t, &peer, &ports, &[]));
    assert!(
        out.contains("reloaded nginx (new workers started): a reload is owed by an earlier run"),
        "{out}"
    );
    assert!(!t.path(marker).exists());
    eventually(
        "publishing reaches the origin",
        Duration::from_secs(10),
        || get(ports.publish, "/", None).1 == "o1",
    );
}

#[test]
fn watch_reloads_once_per_burst_of_changes() {
    let t = Tree::new();
    let ports = Ports::new();
    let _b = Backends::start(
        ports.node,
        &[
            ("127.0.0.81", "o1"),
            ("127.0.0.82", "o2"),
            ("127.0.0.83", "o3"),
        ],
    );
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-o1", "origin", "127.0.0.81", "ready", 1);
    let _n = Nginx::start(&t);
    let child = spawn_watch(
        &t,
        "nginx",
        &peer,
        &ports,
        &[
            "--poll",
            "100ms",
            "--settle",
            "0s",
            "--quiet-period",
            "1s",
            "--max-wait",
            "5s",
        ],
    );
    eventually("o1 in rotation", Duration::from_secs(15), || {
        get(ports.publish, "/", None).1 == "o1"
    });
    assert_eq!(reloads(&t, "nginx"), 1);
    // A burst: three changes 300 ms apart, within the quiet period.
    put_node(&mut peer, "i-o2", "origin", "127.0.0.82", "ready", 1);
    std::thread::sleep(Duration::from_millis(300));
    put_node(&mut peer, "i-o3", "origin", "127.0.0.83", "ready", 1);
    std::thread::sleep(Duration::from_millis(300));
    put_node(&mut peer, "i-o1", "origin", "127.0.0.81", "draining", 1);
    eventually("o2 and o3 only", Duration::from_secs(10), || {
        let mut seen = spread(ports.publish, "/", 6);
        seen.sort();
        seen.dedup();
        seen == ["o2", "o3"]
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(reloads(&t, "nginx"), 2, "one reload for the burst");
    let out = stop(child);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_file_nginx_refuses_is_never_installed_and_its_message_is_shown() {
    let t = Tree::new();
    let ports = Ports::new();
    let mut peer = MongoPeer::start(PeerOptions::default());
    put_node(&mut peer, "i-o1", "origin", "127.0.0.91", "ready", 1);
    let _n = Nginx::start(&t);
    // The operator's own default server on the agent's publish port.
    let broken = nginx_base().replace(
        "\tkeepalive_timeout 65;\n",
        &format!(
            "\tkeepalive_timeout 65;\n\tserver {{ listen 127.0.0.1:{} default_server; }}\n",
            ports.publish
        ),
    );
    std::fs::write(t.path(NGINX_CONF), &broken).unwrap();
    let out = lb(&t, &peer, &ports, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("`nginx -t` refused the new /etc/nginx/nginx.conf; nothing was installed"),
        "{line}"
    );
    assert!(line.contains("duplicate default server"), "{line}");
    assert!(
        line.contains("remove /etc/nginx/sites-enabled/default"),
        "{line}"
    );
    assert!(!line.contains("ams-agent-check"), "{line}");
    assert_eq!(t.read(NGINX_CONF), broken);
    assert_eq!(reloads(&t, "nginx"), 0);
}

#[test]
fn a_config_without_an_http_block_is_bad_input() {
    let t = Tree::new();
    let peer = MongoPeer::start(PeerOptions::default());
    std::fs::create_dir_all(t.path("etc/nginx")).unwrap();
    std::fs::write(t.path(NGINX_CONF), "events {}\n").unwrap();
    let out = t.run(&["lb", "nginx", "--mongo", &peer.uri()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("has no `http {` block"),
        "{}",
        stderr(&out)
    );
    assert_eq!(t.read(NGINX_CONF), "events {}\n");
    assert!(peer.named("find").is_empty());
}
