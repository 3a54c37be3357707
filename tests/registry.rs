//! The registry against a real wire peer (MockupDB): the exact commands and
//! documents the agent sends, idempotent indexes, and a clear message for
//! every failure (unreachable, DNS, authentication, TLS, timeout, error
//! reply, closed connection). The Mongo-facing scenarios run again against a
//! real mongod when AMS_AGENT_TEST_MONGO_URI is set.

mod common;

use std::time::{Duration, Instant};

use ams_agent::cloud::Provider;
use ams_agent::config::Role;
use ams_agent::mongo::error::Failure;
use ams_agent::mongo::registry::{Deadlines, NodeReport, NodeState, Registry, TTL_INDEX, Target};
use ams_agent::node::health::{AmsState, Health};
use ams_agent::node::identity::{IdSource, NodeIdentity};
use common::{MongoPeer, PeerOptions, free_port, real_mongo_uri, unique_db};
use serde_json::json;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn target(uri: &str) -> Target {
    Target {
        uri: uri.into(),
        password: None,
        database: "ams_agent".into(),
        collection: "nodes".into(),
    }
}

fn quick() -> Deadlines {
    Deadlines {
        connect: Duration::from_secs(1),
        select: Duration::from_millis(800),
        op: Duration::from_secs(2),
    }
}

fn report(id: &str, state: NodeState) -> NodeReport {
    NodeReport {
        identity: NodeIdentity {
            id: id.into(),
            source: IdSource::Cloud(Provider::Ec2),
            hostname: "ip-10-0-1-20".into(),
            private_ip: Some("10.0.1.20".parse().unwrap()),
            private_ip_source: Some("ec2 metadata latest/meta-data/local-ipv4".into()),
            public_ip: None,
            instance_type: Some("c5.xlarge".into()),
            availability_zone: Some("eu-west-1a".into()),
            provider: Some(Provider::Ec2),
            region: Some("eu-west-1".into()),
            spot: Some(false),
            vm_name: None,
        },
        role: Role::Edge,
        state,
        ams: AmsState {
            service: "active".into(),
            http_status: Some(200),
            mode: Some("cluster".into()),
            node_group: Some("default".into()),
            fallback: None,
        },
        health: Health {
            cpu: Some(42.5),
            cpu_count: 4,
            load: [0.5, 0.25, 0.125],
            memory_used: Some(61.0),
            disk_used: Some(33.3),
            uptime_seconds: 1234,
        },
        interval: Duration::from_secs(5),
        drain: None,
        notices: Vec::new(),
    }
}

#[test]
fn heartbeat_is_one_upsert_by_node_id_with_server_time_and_a_counter() {
    let peer = MongoPeer::start(PeerOptions::default());
    let rt = rt();
    rt.block_on(async {
        let reg = Registry::open(&target(&peer.uri()), quick()).await.unwrap();
        reg.heartbeat(&report("i-0abc", NodeState::Joining), true)
            .await
            .unwrap();
        reg.heartbeat(&report("i-0abc", NodeState::Ready), false)
            .await
            .unwrap();
    });
    let updates = peer.updates();
    assert_eq!(updates.len(), 2, "{updates:?}");
    let (q, u, upsert) = &updates[0];
    assert_eq!(q, &json!({ "_id": "i-0abc" }));
    assert_eq!(upsert, &json!(true));
    assert_eq!(
        u["$set"],
        json!({
            "hostname": "ip-10-0-1-20",
            "privateIp": "10.0.1.20",
            "publicIp": null,
            "instanceType": "c5.xlarge",
            "availabilityZone": "eu-west-1a",
            "idSource": "ec2",
            "provider": "ec2",
            "region": "eu-west-1",
            "spot": false,
            "role": "edge",
            "nodeGroup": "default",
            "ams": { "mode": "cluster", "service": "active", "http": true, "httpStatus": 200, "fallback": null },
            "health": {
                "cpu": 42.5, "cpuCount": 4, "load1": 0.5, "load5": 0.25, "load15": 0.125,
                "memoryUsed": 61.0, "diskUsed": 33.3, "uptime": 1234
            },
            "state": "joining",
            "drain": null,
            "notices": [],
            "intervalSeconds": 5.0,
            "agentVersion": env!("CARGO_PKG_VERSION"),
        })
    );
    assert_eq!(
        u["$currentDate"],
        json!({ "lastSeen": true, "joinedAt": true })
    );
    assert_eq!(u["$inc"], json!({ "heartbeats": 1 }));
    assert_eq!(u["$unset"], json!({ "lastError": "" }));
    let (_, u2, _) = &updates[1];
    assert_eq!(u2["$set"]["state"], "ready");
    assert_eq!(u2["$currentDate"], json!({ "lastSeen": true }));
    assert!(u2.get("$unset").is_none());
    // The command went to the configured database and collection.
    let cmd = &peer.named("update")[0];
    assert_eq!(cmd["db"], "ams_agent");
    assert_eq!(cmd["doc"]["update"], "nodes");
}

#[test]
fn indexes_are_created_idempotently_and_a_new_ttl_is_applied_with_collmod() {
    let peer = MongoPeer::start(PeerOptions::default());
    let week = Duration::from_secs(7 * 86400);
    rt().block_on(async {
        let reg = Registry::open(&target(&peer.uri()), quick()).await.unwrap();
        reg.ensure_indexes(week).await.unwrap();
        reg.ensure_indexes(week).await.unwrap();
        reg.ensure_indexes(Duration::from_secs(86400))
            .await
            .unwrap();
    });
    let created = peer.named("createIndexes");
    assert_eq!(created.len(), 3);
    let specs = &created[0]["doc"]["indexes"];
    assert_eq!(
        specs,
        &json!([
            { "key": { "lastSeen": 1 }, "name": TTL_INDEX, "expireAfterSeconds": 604800 },
            { "key": { "role": 1, "state": 1 }, "name": "role_state" },
        ])
    );
    let collmod = peer.named("collMod");
    assert_eq!(collmod.len(), 1, "only the changed TTL needs collMod");
    assert_eq!(
        collmod[0]["doc"]["index"],
        json!({ "name": TTL_INDEX, "expireAfterSeconds": 86400 })
    );
}

#[test]
fn set_state_and_record_error_touch_only_their_fields() {
    let peer = MongoPeer::start(PeerOptions::default());
    rt().block_on(async {
        let reg = Registry::open(&target(&peer.uri()), quick()).await.unwrap();
        reg.set_state("i-1", NodeState::Left, Duration::from_secs(2))
            .await
            .unwrap();
        let le = ams_agent::mongo::registry::LastError {
            step: "switch AMS to cluster mode".into(),
            message: "boom".into(),
        };
        reg.record_error("i-1", &le, Duration::from_secs(2))
            .await
            .unwrap();
    });
    let u = peer.updates();
    assert_eq!(
        u[0].1,
        json!({ "$set": { "state": "left" }, "$currentDate": { "lastSeen": true } })
    );
    // Dotted fields: `$set: {lastError: {…}}` beside `$currentDate:
    // {"lastError.at": …}` is a path conflict a real mongod refuses (code 40).
    assert_eq!(
        u[1].1,
        json!({
            "$set": { "lastError.step": "switch AMS to cluster mode", "lastError.message": "boom" },
            "$currentDate": { "lastError.at": true }
        })
    );
}

#[test]
fn every_update_the_agent_sends_is_free_of_path_conflicts() {
    // The peer refuses overlapping paths with code 40, as mongod does.
    let peer = MongoPeer::start(PeerOptions::default());
    let rt = rt();
    let (docs, refused) = rt.block_on(async {
        let reg = Registry::open(&target(&peer.uri()), quick()).await.unwrap();
        let le = ams_agent::mongo::registry::LastError {
            step: "register the node".into(),
            message: "boom".into(),
        };
        reg.record_error("i-3", &le, Duration::from_secs(2))
            .await
            .unwrap();
        reg.heartbeat(&report("i-3", NodeState::Joining), true)
            .await
            .unwrap();
        reg.record_error("i-3", &le, Duration::from_secs(2))
            .await
            .unwrap();
        reg.heartbeat(&report("i-3", NodeState::Ready), false)
            .await
            .unwrap();
        reg.set_state("i-3", NodeState::Left, Duration::from_secs(2))
            .await
            .unwrap();
        let (docs, _) = reg.list().await.unwrap();
        // The shape the agent used to send, for contrast.
        let client = mongodb::Client::with_uri_str(peer.uri()).await.unwrap();
        let refused = client
            .database("ams_agent")
            .collection::<mongodb::bson::Document>("nodes")
            .update_one(
                mongodb::bson::doc! { "_id": "i-3" },
                mongodb::bson::doc! {
                    "$set": { "lastError": { "step": "s", "message": "m" } },
                    "$currentDate": { "lastError.at": true },
                },
            )
            .await
            .unwrap_err();
        (docs, refused)
    });
    assert!(refused.to_string().contains("conflict"), "{refused}");
    assert_eq!(docs.len(), 1);
    let le = docs[0].get_document("lastError").unwrap();
    assert_eq!(le.get_str("step").unwrap(), "register the node");
    assert_eq!(le.get_str("message").unwrap(), "boom");
    assert!(le.get_datetime("at").is_ok(), "{le}");
    assert_eq!(docs[0].get_str("state").unwrap(), "left");
}

fn err_of(
    t: Target,
    d: Deadlines,
    what: impl FnOnce(
        &Registry,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<(), ams_agent::mongo::error::RegistryError>>
                + '_,
        >,
    >,
) -> ams_agent::mongo::error::RegistryError {
    rt().block_on(async {
        let reg = match Registry::open(&t, d).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        what(&reg).await.unwrap_err()
    })
}

#[test]
fn unreachable_server_is_named_with_the_password_masked() {
    let mut t = target(&format!("mongodb://ams@127.0.0.1:{}", free_port()));
    t.password = Some("s3cr:et@pw".into());
    let start = Instant::now();
    let e = err_of(t, quick(), |r| Box::pin(r.ping()));
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(e.failure, Failure::Unreachable, "{e}");
    assert!(e.transient());
    let msg = e.to_string();
    assert!(
        msg.contains("cannot reach MongoDB at mongodb://ams:****@127.0.0.1:"),
        "{msg}"
    );
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(!msg.contains("s3cr"), "{msg}");
    assert!(!msg.contains('\n'));
}

#[test]
fn dns_failure_is_named() {
    let e = err_of(
        target("mongodb://no-such-host.invalid:27017"),
        Deadlines {
            connect: Duration::from_secs(2),
            select: Duration::from_secs(2),
            op: Duration::from_secs(5),
        },
        |r| Box::pin(r.ping()),
    );
    assert_eq!(e.failure, Failure::Dns, "{e}");
    assert!(
        e.to_string().contains("cannot resolve the MongoDB host"),
        "{e}"
    );
}

#[test]
fn authentication_failure_is_named_and_not_retried() {
    let peer = MongoPeer::start(PeerOptions {
        auth_fail: true,
        ..Default::default()
    });
    let mut t = target(&format!(
        "mongodb://ams@127.0.0.1:{}/?authSource=admin",
        peer.port
    ));
    t.password = Some("wrong-password".into());
    let e = err_of(t, quick(), |r| Box::pin(r.ping()));
    assert_eq!(e.failure, Failure::Auth, "{e}");
    assert!(!e.transient());
    let msg = e.to_string();
    assert!(
        msg.contains("refused the credentials (authentication failed"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-password"), "{msg}");
    // The driver really tried to log in as `ams`.
    let sasl = peer.named("saslStart");
    assert!(!sasl.is_empty(), "no saslStart recorded");
}

#[test]
fn tls_failure_is_named() {
    // A server that is not speaking TLS (answers plaintext at once): the
    // handshake fails.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            use std::io::{Read, Write};
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
        }
    });
    let e = err_of(
        target(&format!("mongodb://127.0.0.1:{port}/?tls=true")),
        Deadlines {
            connect: Duration::from_secs(1),
            select: Duration::from_secs(2),
            op: Duration::from_secs(3),
        },
        |r| Box::pin(r.ping()),
    );
    assert_eq!(e.failure, Failure::Tls, "{e}");
    assert!(!e.transient());
    assert!(e.to_string().contains("TLS with MongoDB at"), "{e}");
}

#[test]
fn error_replies_stalls_and_hangups_are_bounded_and_clear() {
    let mut peer = MongoPeer::start(PeerOptions::default());
    let t = target(&peer.uri());
    let rt = rt();
    let reg = rt.block_on(Registry::open(&t, quick())).unwrap();
    let hb = report("i-2", NodeState::Ready);

    peer.control("fault-once update error:91:The server is in quiesce mode and will shut down");
    let e = rt.block_on(reg.heartbeat(&hb, false)).unwrap_err();
    assert_eq!((e.failure, e.code), (Failure::Server, Some(91)), "{e}");
    assert!(e.transient());
    assert!(e.to_string().contains("answered with an error"), "{e}");

    peer.control("fault-once update error:2:bad value");
    let e = rt.block_on(reg.heartbeat(&hb, false)).unwrap_err();
    assert!(!e.transient(), "{e}");

    peer.control("fault-once update stall");
    let start = Instant::now();
    let e = rt.block_on(reg.heartbeat(&hb, false)).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.failure, Failure::Timeout, "{e}");
    assert!(e.to_string().contains("did not answer within 2s"), "{e}");

    peer.control("fault-once update close");
    let e = rt.block_on(reg.heartbeat(&hb, false)).unwrap_err();
    assert_eq!(e.failure, Failure::Unreachable, "{e}");

    // And the next heartbeat goes through on a fresh connection.
    rt.block_on(reg.heartbeat(&hb, false)).unwrap();
}

#[test]
fn list_reads_every_node_and_the_server_clock() {
    let peer = MongoPeer::start(PeerOptions {
        seed: 20,
        ..Default::default()
    });
    let (docs, now) = rt().block_on(async {
        let reg = Registry::open(&target(&peer.uri()), quick()).await.unwrap();
        reg.list().await.unwrap()
    });
    assert_eq!(docs.len(), 20);
    assert!(now.is_some(), "hello carries localTime");
    let find = &peer.named("find")[0]["doc"];
    assert_eq!(find["find"], "nodes");
    assert_eq!(find["filter"], json!({}));
}

/// The same scenarios against a real mongod.
#[test]
#[ignore = "needs a real mongod: set AMS_AGENT_TEST_MONGO_URI and run `cargo test -- --ignored`"]
fn real_mongod_heartbeats_indexes_and_list() {
    let uri = real_mongo_uri().expect("AMS_AGENT_TEST_MONGO_URI is not set");
    let (base, password) = ams_agent::uri::split_password(&uri);
    let db = unique_db("registry");
    let t = Target {
        uri: base,
        password: password.map(Into::into),
        database: db.clone(),
        collection: "nodes".into(),
    };
    rt().block_on(async {
        let reg = Registry::open(&t, Deadlines::default()).await.unwrap();
        reg.ping().await.unwrap();
        reg.ensure_indexes(Duration::from_secs(7 * 86400))
            .await
            .unwrap();
        reg.ensure_indexes(Duration::from_secs(7 * 86400))
            .await
            .unwrap();
        reg.ensure_indexes(Duration::from_secs(86400))
            .await
            .unwrap();
        reg.heartbeat(&report("i-real", NodeState::Joining), true)
            .await
            .unwrap();
        reg.heartbeat(&report("i-real", NodeState::Ready), false)
            .await
            .unwrap();
        let (docs, now) = reg.list().await.unwrap();
        assert!(now.is_some());
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        assert_eq!(d.get_str("state").unwrap(), "ready");
        assert!(
            d.get_datetime("lastSeen").is_ok(),
            "lastSeen is a server date"
        );
        // Clean up.
        let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
        let idx = client
            .database(&db)
            .run_command(mongodb::bson::doc! { "listIndexes": "nodes" })
            .await
            .unwrap();
        let batch = idx
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap();
        let ttl = batch
            .iter()
            .filter_map(|b| b.as_document())
            .find(|d| d.get_str("name") == Ok(TTL_INDEX))
            .expect("the TTL index exists");
        assert_eq!(
            ttl.get("expireAfterSeconds")
                .and_then(|v| v.as_i64().or(v.as_i32().map(i64::from))),
            Some(86400)
        );
        let beats = client
            .database(&db)
            .collection::<mongodb::bson::Document>("nodes")
            .find_one(mongodb::bson::doc! { "_id": "i-real" })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            beats
                .get_i64("heartbeats")
                .ok()
                .or(beats.get_i32("heartbeats").ok().map(i64::from)),
            Some(2)
        );
        client.database(&db).drop().await.unwrap();
    });
}
