//! IMDSv2 against an in-test HTTP server: the token flow is required and
//! followed, an expired token is renewed, and without an endpoint the node
//! falls back to its own facts fast.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ams_agent::cloud::Provider;
use ams_agent::cloud::ec2::{Budget, Imds};
use ams_agent::host::Host;
use ams_agent::host::fs::CrashPoints;
use ams_agent::node::identity::{self, IdSource, Lookup, NodeIdentity};
use common::{Imds as ImdsServer, free_port};

/// The identity with EC2's endpoint at `endpoint` (nothing in DMI).
async fn resolve_at(
    host: &Host,
    endpoint: &str,
    stored: Option<&str>,
) -> anyhow::Result<NodeIdentity> {
    identity::resolve_stored(host, &Lookup::ec2(endpoint), stored).await
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_token_flow_is_used_for_every_read() {
    let server = ImdsServer::start("i-0123456789abcdef0", "10.0.1.20");
    server.set("public-ipv4", "54.1.2.3");
    let client = Imds::new(&server.url, Budget::default()).unwrap();
    let meta = rt().block_on(client.instance()).unwrap();
    assert_eq!(meta.instance_id, "i-0123456789abcdef0");
    assert_eq!(meta.local_ipv4, Some("10.0.1.20".parse().unwrap()));
    assert_eq!(meta.public_ipv4, Some("54.1.2.3".parse().unwrap()));
    assert_eq!(meta.instance_type.as_deref(), Some("c5.xlarge"));
    assert_eq!(meta.availability_zone.as_deref(), Some("eu-west-1a"));
    // One token for all five reads, and no read without it.
    assert_eq!(server.state.token_puts.load(Ordering::SeqCst), 1);
    assert_eq!(server.state.gets.load(Ordering::SeqCst), 5);
    assert_eq!(server.state.unauthorized.load(Ordering::SeqCst), 0);
}

#[test]
fn a_missing_item_is_none_not_an_error() {
    let server = ImdsServer::start("i-0aaaaaaaaaaaaaaaa", "10.0.1.21");
    let client = Imds::new(&server.url, Budget::default()).unwrap();
    let meta = rt().block_on(client.instance()).unwrap();
    assert_eq!(
        meta.public_ipv4, None,
        "a private instance has no public-ipv4 (404)"
    );
}

#[test]
fn an_expired_token_is_renewed_once() {
    let server = ImdsServer::start("i-0bbbbbbbbbbbbbbbb", "10.0.1.22");
    let client = Imds::new(&server.url, Budget::default()).unwrap();
    let rt = rt();
    assert_eq!(
        rt.block_on(client.get("instance-id")).unwrap().as_deref(),
        Some("i-0bbbbbbbbbbbbbbbb")
    );
    server.expire_tokens();
    assert_eq!(
        rt.block_on(client.get("local-ipv4")).unwrap().as_deref(),
        Some("10.0.1.22")
    );
    assert_eq!(server.state.unauthorized.load(Ordering::SeqCst), 1);
    assert_eq!(server.state.token_puts.load(Ordering::SeqCst), 2);
}

fn host_with_machine_id() -> (tempfile::TempDir, Host) {
    common::cloud::host_root(None)
}

#[test]
fn without_an_endpoint_the_fallback_is_fast() {
    let (_d, host) = host_with_machine_id();
    let rt = rt();
    // Nothing listens: connection refused, three quick attempts.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let start = Instant::now();
    let id = rt.block_on(resolve_at(&host, &dead, None)).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(id.source, IdSource::MachineId);
    assert_eq!(id.id, "0123456789abcdef0123456789abcdef");
    assert_eq!(id.hostname, "node-7");

    // A listener that accepts but never answers (like a filtered
    // link-local metadata address): the request deadline bounds every attempt.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!("http://{}", l.local_addr().unwrap());
    let start = Instant::now();
    let id = rt.block_on(resolve_at(&host, &silent, None)).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(id.source, IdSource::MachineId);
    drop(l);
}

#[test]
fn ec2_identity_wins_over_machine_id() {
    let (_d, host) = host_with_machine_id();
    let server = ImdsServer::start("i-0ccccccccccccccccc", "10.0.1.23");
    let id = rt().block_on(resolve_at(&host, &server.url, None)).unwrap();
    assert_eq!(id.source, IdSource::Cloud(Provider::Ec2));
    assert_eq!(id.id, "i-0ccccccccccccccccc");
    assert_eq!(id.private_ip, Some("10.0.1.23".parse().unwrap()));
}

#[test]
fn no_metadata_and_no_machine_id_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(dir.path(), CrashPoints::default());
    let dead = format!("http://127.0.0.1:{}", free_port());
    let err = rt().block_on(resolve_at(&host, &dead, None)).unwrap_err();
    assert!(format!("{err:#}").contains("/etc/machine-id"), "{err:#}");
}

#[test]
fn a_bogus_instance_id_is_refused() {
    let server = ImdsServer::start("i-0123\nX-Injected: 1", "10.0.1.24");
    let client = Imds::new(&server.url, Budget::default()).unwrap();
    assert!(rt().block_on(client.instance()).is_err());
}

#[test]
fn a_failing_optional_item_keeps_the_ec2_identity() {
    let (_d, host) = host_with_machine_id();
    let server = ImdsServer::start("i-0ddddddddddddddddd", "10.0.1.25");
    // IMDS throttling one item, and a server error on another.
    server.fail("placement/availability-zone", 429);
    server.fail("public-ipv4", 500);
    let client = Imds::new(&server.url, Budget::default()).unwrap();
    let rt = rt();
    let meta = rt.block_on(client.instance()).unwrap();
    assert_eq!(meta.instance_id, "i-0ddddddddddddddddd");
    assert_eq!(meta.availability_zone, None);
    assert_eq!(meta.public_ipv4, None);
    assert_eq!(meta.local_ipv4, Some("10.0.1.25".parse().unwrap()));
    assert_eq!(meta.instance_type.as_deref(), Some("c5.xlarge"));
    let id = rt.block_on(resolve_at(&host, &server.url, None)).unwrap();
    assert_eq!(
        id.source,
        IdSource::Cloud(Provider::Ec2),
        "not the machine-id fallback"
    );
    assert_eq!(id.id, "i-0ddddddddddddddddd");

    // The instance id itself failing is still "no metadata".
    server.fail("instance-id", 429);
    let id = rt.block_on(resolve_at(&host, &server.url, None)).unwrap();
    assert_eq!(id.source, IdSource::MachineId);
}

#[test]
fn a_stored_id_survives_a_metadata_outage_but_not_another_instance() {
    let (_d, host) = host_with_machine_id();
    let rt = rt();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let id = rt
        .block_on(resolve_at(&host, &dead, Some("i-0eeeeeeeeeeeeeeeee")))
        .unwrap();
    assert_eq!(id.id, "i-0eeeeeeeeeeeeeeeee", "not /etc/machine-id");
    assert_eq!(id.source, IdSource::Cloud(Provider::Ec2));
    assert_eq!(id.hostname, "node-7");

    // The same instance answering: its metadata, the stored id.
    let same = ImdsServer::start("i-0eeeeeeeeeeeeeeeee", "10.0.1.26");
    same.fail("placement/availability-zone", 429);
    let id = rt
        .block_on(resolve_at(&host, &same.url, Some("i-0eeeeeeeeeeeeeeeee")))
        .unwrap();
    assert_eq!(id.id, "i-0eeeeeeeeeeeeeeeee");
    assert_eq!(id.private_ip, Some("10.0.1.26".parse().unwrap()));

    // Another instance (an image of a joined node): the new instance's id.
    let other = ImdsServer::start("i-0fffffffffffffffff", "10.0.1.27");
    let id = rt
        .block_on(resolve_at(&host, &other.url, Some("i-0eeeeeeeeeeeeeeeee")))
        .unwrap();
    assert_eq!(id.id, "i-0fffffffffffffffff");

    // A stored machine id of another machine (a cloned disk): this one's.
    let id = rt
        .block_on(resolve_at(
            &host,
            &dead,
            Some("ffffffffffffffffffffffffffffffff"),
        ))
        .unwrap();
    assert_eq!(id.id, "0123456789abcdef0123456789abcdef");
    assert_eq!(id.source, IdSource::MachineId);
}

/// The termination notices the drain reads, through the same client: the
/// lifecycle state and a Spot action drain, rebalance and maintenance are
/// advisory, an expired token is renewed, and a failing service (503, 429)
/// is an error, never a notice.
#[test]
fn termination_notices_are_read_and_a_failing_service_is_never_one() {
    use ams_agent::drain::notices::{self, Budgets};
    use ams_agent::drain::state::{Event, Trigger};
    let server = ImdsServer::start("i-0notice000000001", "10.0.1.40");
    let client = Imds::new(&server.url, Budget::default()).unwrap();
    let rt = rt();
    let budgets = Budgets {
        lifecycle: Duration::from_secs(900),
    };
    let now = std::time::SystemTime::now();
    let poll = |c: &Imds| rt.block_on(notices::poll(c, budgets, now));
    // Nothing: no notice (404 everywhere).
    let f = poll(&client).unwrap();
    assert!(f.events.is_empty() && f.advisories.is_empty(), "{f:?}");
    server.set("autoscaling/target-lifecycle-state", "InService");
    assert!(poll(&client).unwrap().events.is_empty());

    server.set("autoscaling/target-lifecycle-state", "Terminated");
    server.set(
        "spot/instance-action",
        r#"{"action": "terminate", "time": "2030-01-01T00:02:00Z"}"#,
    );
    server.set(
        "events/recommendations/rebalance",
        r#"{"noticeTime": "2030-01-01T00:00:00Z"}"#,
    );
    server.set(
        "events/maintenance/scheduled",
        r#"[{"Code": "system-reboot", "Description": "scheduled reboot\nX", "EventId": "instance-event-1", "NotBefore": "21 Jan 2030 09:00:43 GMT", "State": "active"}, {"Code": "system-reboot", "EventId": "old", "State": "Completed"}]"#,
    );
    server.expire_tokens();
    let f = poll(&client).unwrap();
    let triggers: Vec<Trigger> = f
        .events
        .iter()
        .map(|e| match e {
            Event::Trigger { trigger, .. } => *trigger,
            Event::Cancel => panic!(),
        })
        .collect();
    assert_eq!(
        triggers,
        [Trigger::LifecycleHook, Trigger::SpotInterruption]
    );
    assert_eq!(f.advisories.len(), 2, "{:?}", f.advisories);
    assert!(f.advisories[1].contains("system-reboot (instance-event-1): scheduled reboot\\nX"));
    assert!(
        server.state.unauthorized.load(Ordering::SeqCst) >= 1,
        "the token was renewed"
    );

    // The service fails: an error, not "terminate".
    server.fail("spot/instance-action", 429);
    assert!(poll(&client).is_err());
    server.fail_all(Some(503));
    assert!(poll(&client).is_err());
    server.fail_all(None);
    server.state.failures.lock().unwrap().clear();
    assert_eq!(poll(&client).unwrap().events.len(), 2);
}

#[test]
fn an_oversized_metadata_item_is_refused_not_held_whole() {
    let server = ImdsServer::start("i-0123456789abcdef0", "10.0.1.20");
    server.set("tags/instance/huge", &"x".repeat(3 << 20));
    let client = Imds::new(&server.url, Budget::default()).unwrap();
    let err = rt().block_on(client.get("tags/instance/huge")).unwrap_err();
    assert!(
        format!("{err:#}").contains("answered more than 1048576 bytes"),
        "{err:#}"
    );
    // The ordinary items still read.
    assert_eq!(
        rt().block_on(client.get("instance-id")).unwrap().as_deref(),
        Some("i-0123456789abcdef0")
    );
}
