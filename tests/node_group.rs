//! AMS node groups end to end (issue 17, item 5): `join --node-group`
//! sets `nodeGroup` of conf/red5.properties in the mode-switch
//! transaction, records it in agent.toml and the registry, and `status`
//! groups by it; with nodes of two clouds other than EC2 (Azure and GCP,
//! found by their DMI, read from their loopback peers).

mod common;
mod fixture;

use std::process::Output;

use common::cloud::{CloudPeer, plant_dmi};
use common::{MongoPeer, PeerOptions, free_port};
use fixture::{AMS, Tree, fake_ams_http, stderr, stdout};
use serde_json::Value;

fn join(t: &Tree, env: &[(&str, &str)], ams: &str, args: &[&str]) -> Output {
    let mut c = t.command(&[&["join"], args].concat());
    c.env(
        "AMS_AGENT_IMDS_ENDPOINT",
        format!("http://127.0.0.1:{}", free_port()),
    )
    .env("AMS_AGENT_AMS_URL", ams)
    .env_remove("CREDENTIALS_DIRECTORY");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// `join` of the Azure node `a` into group `group`.
fn join_azure(a: &Tree, azure: &CloudPeer, ams: &str, mongo: &str, group: &str) -> Output {
    join(
        a,
        &[("AMS_AGENT_AZURE_IMDS_ENDPOINT", &azure.url)],
        ams,
        &["--mongo", mongo, "--role", "origin", "--node-group", group],
    )
}

fn red5(t: &Tree) -> String {
    t.read(&format!("{AMS}/conf/red5.properties"))
}

#[test]
fn a_node_group_goes_to_ams_the_registry_and_status() {
    let peer = MongoPeer::start(PeerOptions::default());
    let ams = fake_ams_http();
    let azure = CloudPeer::azure();
    let gcp = CloudPeer::gcp();

    // An Azure origin in eu-west.
    let a = Tree::new();
    plant_dmi(&a.root(), "azure");
    let before = red5(&a);
    let out = join_azure(&a, &azure, &ams, &peer.uri(), "eu-west");
    assert!(out.status.success(), "{}", stderr(&out));
    let after = red5(&a);
    assert_eq!(after.matches("nodeGroup=").count(), 1, "{after}");
    assert!(after.contains("nodeGroup=eu-west"), "{after}");
    // Only the keys the switch owns changed.
    let changed: Vec<&str> = after
        .lines()
        .zip(before.lines())
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.split('=').next().unwrap())
        .collect();
    for k in &changed {
        assert!(
            [
                "nodeGroup",
                "clusterdb.host",
                "clusterdb.user",
                "clusterdb.password",
                "useGlobalIp"
            ]
            .contains(k),
            "{k} changed"
        );
    }
    let cfg = a.read("etc/ams-agent/agent.toml");
    assert!(cfg.contains("node_group = \"eu-west\""), "{cfg}");
    assert!(
        cfg.contains("id = \"e94f3f7f-6b23-4395-be46-ea363c549f71\""),
        "{cfg}"
    );
    let summary = stdout(&out);
    assert!(
        summary.contains("Microsoft Azure, westeurope / 2"),
        "{summary}"
    );
    assert!(
        summary.contains("10.1.0.4 (azure metadata network.interface[0]"),
        "{summary}"
    );

    let last = peer.updates().last().unwrap().1.clone();
    let set = &last["$set"];
    assert_eq!(set["state"], "ready");
    assert_eq!(set["nodeGroup"], "eu-west");
    assert_eq!(set["provider"], "azure");
    assert_eq!(set["idSource"], "azure");
    assert_eq!(set["region"], "westeurope");
    assert_eq!(set["spot"], true);
    assert_eq!(set["privateIp"], "10.1.0.4");

    // A GCP edge in us-east.
    let g = Tree::new();
    plant_dmi(&g.root(), "gcp");
    let out = join(
        &g,
        &[("AMS_AGENT_GCP_METADATA_ENDPOINT", &gcp.url)],
        &ams,
        &[
            "--mongo",
            &peer.uri(),
            "--role",
            "edge",
            "--node-group",
            "us-east",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(red5(&g).contains("nodeGroup=us-east"));

    // A node without --node-group keeps the file's (`default` here).
    let d = Tree::new();
    std::fs::write(
        d.path("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let out = join(
        &d,
        &[],
        &ams,
        &[
            "--mongo",
            &peer.uri(),
            "--role",
            "edge",
            "--ip",
            "10.0.1.30",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(red5(&d).contains("nodeGroup=default"));
    assert!(
        d.read("etc/ams-agent/agent.toml")
            .contains("node_group = \"default\"")
    );

    // status groups by it.
    let out = a.run(&["status", "--mongo", &peer.uri(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["groups"]["eu-west"]["roles"]["origin"]["alive"], 1, "{v}");
    assert_eq!(v["groups"]["us-east"]["roles"]["edge"]["nodes"], 1, "{v}");
    assert_eq!(v["groups"]["default"]["nodes"], 1, "{v}");
    let providers: Vec<&Value> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| &n["provider"])
        .collect();
    assert!(providers.contains(&&Value::from("gcp")), "{providers:?}");
    let text = stdout(&a.run(&["status", "--mongo", &peer.uri()]));
    assert!(
        text.contains("group eu-west: origin 1 alive of 1"),
        "{text}"
    );
    assert!(text.contains("group us-east: edge 1 alive of 1"), "{text}");
    assert!(text.lines().next().unwrap().contains("GROUP"), "{text}");

    // Joining again with another group is a change, not "already joined".
    let out = join_azure(&a, &azure, &ams, &peer.uri(), "eu-central");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("nothing to do"), "{}", stdout(&out));
    assert!(red5(&a).contains("nodeGroup=eu-central"));
    assert!(
        a.read("etc/ams-agent/agent.toml")
            .contains("node_group = \"eu-central\"")
    );
    assert_eq!(
        peer.updates().last().unwrap().1["$set"]["nodeGroup"],
        "eu-central"
    );
    // And once more: nothing to do.
    let out = join_azure(&a, &azure, &ams, &peer.uri(), "eu-central");
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
}

#[test]
fn a_bad_node_group_is_refused_and_nothing_changes() {
    let t = Tree::new();
    let before = t.snapshot();
    for bad in [
        "",
        "eu west",
        "-eu",
        "eu\nnodeGroup=x",
        "grüppe",
        &"g".repeat(65),
        "a=b",
    ] {
        let arg = format!("--node-group={bad}");
        let out = join(
            &t,
            &[],
            "http://127.0.0.1:1/",
            &["--mongo", "10.0.1.5", &arg],
        );
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("--node-group"), "{err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{err}"
        );
    }
    assert_eq!(t.snapshot(), before);
}
