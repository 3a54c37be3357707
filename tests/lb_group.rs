//! `ams-agent lb --group NODE_GROUP` (issue 17, item 5): a balancer that
//! serves one AMS node group renders only that group's nodes (nodes
//! without a group are AMS's `default`), `lb status` says which group it
//! follows, and node ids of clouds other than EC2 (an Oracle OCID, with
//! its dots) pass the real `haproxy -c`.

mod common;
mod fixture;
mod lbkit;

use common::{MongoPeer, PeerOptions};
use fixture::Tree;
use lbkit::*;

fn put(peer: &mut MongoPeer, id: &str, role: &str, ip: &str, group: Option<&str>) {
    let mut doc = serde_json::json!({
        "_id": id, "role": role, "privateIp": ip, "state": "ready",
        "intervalSeconds": 5.0, "lastSeenAgo": 1, "hostname": format!("host-{id}"),
    });
    if let Some(g) = group {
        doc["nodeGroup"] = g.into();
    }
    peer.control(&format!("put {doc}"));
}

const OCID: &str = "ocid1.instance.oc1.phx.anyhqljtexampleuniqueid0123456789abcdefghijklmnopqrstuv";

fn plan(t: &Tree, peer: &MongoPeer, ports: &Ports, group: &[&str]) -> String {
    let mut args = vec![
        "--dry-run".to_string(),
        "lb".into(),
        "haproxy".into(),
        "--mongo".into(),
        peer.uri(),
        format!("--listen=publish=127.0.0.1:{}", ports.publish),
    ];
    args.extend(group.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&t.run(&refs))
}

#[test]
fn a_balancer_per_node_group_renders_that_groups_nodes_only() {
    let t = Tree::new();
    let ports = Ports::new();
    let mut peer = MongoPeer::start(PeerOptions::default());
    put(&mut peer, OCID, "origin", "127.0.0.51", Some("eu-west"));
    put(
        &mut peer,
        "gcp-4520031799277581759",
        "edge",
        "127.0.0.52",
        Some("eu-west"),
    );
    put(
        &mut peer,
        "hetzner-42",
        "edge",
        "127.0.0.53",
        Some("us-east"),
    );
    put(&mut peer, "i-0e3", "edge", "127.0.0.54", None);
    let _h = Haproxy::start(&t);

    let eu = plan(&t, &peer, &ports, &["--group", "eu-west"]);
    assert!(eu.contains("(1 origin, 1 edge in rotation)"), "{eu}");
    assert!(
        eu.contains(&format!("server {OCID} 127.0.0.51:5080 cookie {OCID}")),
        "{eu}"
    );
    assert!(
        eu.contains("server gcp-4520031799277581759 127.0.0.52:5080"),
        "{eu}"
    );
    assert!(!eu.contains("hetzner-42") && !eu.contains("i-0e3"), "{eu}");

    // Nodes without a group are in AMS's `default`.
    let def = plan(&t, &peer, &ports, &["--group", "default"]);
    assert!(def.contains("(0 origins, 1 edge in rotation)"), "{def}");
    assert!(def.contains("server i-0e3 127.0.0.54:5080"), "{def}");

    // Without --group, every node.
    let all = plan(&t, &peer, &ports, &[]);
    assert!(all.contains("(1 origin, 3 edges in rotation)"), "{all}");

    // Applied for real (the file passes haproxy -c with the OCID in it),
    // then `lb status` says which group it serves.
    let out = run_lb(
        &t,
        "haproxy",
        &peer,
        &ports,
        &["--state-file", "/var/lib/haproxy/state"],
        &["--group", "eu-west"],
    );
    ok(&out);
    let cfg = t.read(HAPROXY_CFG);
    assert!(cfg.contains(OCID), "{cfg}");
    assert!(!cfg.contains("hetzner-42"), "{cfg}");
    let status = ok(&t.run(&["lb", "status", "--mongo", &peer.uri()]));
    assert!(status.contains("node group eu-west only"), "{status}");
    assert!(
        !status.contains("hetzner-42"),
        "the other group is not this balancer's: {status}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&t.run(&[
        "lb",
        "status",
        "--mongo",
        &peer.uri(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(json["haproxy"]["nodeGroup"], "eu-west");

    // A bad group is bad input.
    let out = t.run(&[
        "lb",
        "haproxy",
        "--mongo",
        &peer.uri(),
        "--group",
        "eu west",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        fixture::stderr(&out).contains("--group"),
        "{}",
        fixture::stderr(&out)
    );
}
