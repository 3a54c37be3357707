//! Provider detection and metadata (issue 17, items 1-3), against
//! loopback peers shaped as each provider documents its service: the DMI
//! fingerprint of every provider planted under a test root, one targeted
//! probe, the services' refusals and faults, the fallback of a host with
//! no cloud, the EC2-compatible probe of an unknown host, and the notices
//! of Azure and GCP.

mod common;
mod fixture;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ams_agent::cloud::detect::{self, DetectedBy, Discovery, Endpoints, Origin};
use ams_agent::cloud::events::{NoticeKind, Watcher};
use ams_agent::cloud::{CloudChoice, Provider};
use ams_agent::host::Host;
use common::cloud::{CloudPeer, host_root, plant_dmi};
use common::{Imds, free_port};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn root(dmi: Option<&str>) -> (tempfile::TempDir, Host) {
    host_root(dmi)
}

/// A peer for every provider; each sees what is asked of it. The ones
/// not set up answer 404 to everything.
struct Clouds {
    peers: Vec<(Provider, CloudPeer)>,
    ec2: Option<Imds>,
}

impl Clouds {
    fn with(p: Provider, peer: CloudPeer) -> Self {
        let mut peers: Vec<(Provider, CloudPeer)> = Provider::ALL
            .into_iter()
            .filter(|q| *q != p && *q != Provider::Ec2)
            .map(|q| (q, CloudPeer::start()))
            .collect();
        if p != Provider::Ec2 {
            peers.push((p, peer));
        }
        Clouds { peers, ec2: None }
    }

    fn endpoints(&self) -> Endpoints {
        let of = |p: Provider| {
            self.peers
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, peer)| peer.url.clone())
        };
        let ec2 = match &self.ec2 {
            Some(i) => i.url.clone(),
            None => format!("http://127.0.0.1:{}", free_port()),
        };
        Endpoints {
            gcp: of(Provider::Gcp).unwrap(),
            azure: of(Provider::Azure).unwrap(),
            digitalocean: of(Provider::DigitalOcean).unwrap(),
            hetzner: of(Provider::Hetzner).unwrap(),
            openstack: of(Provider::OpenStack).unwrap(),
            oracle: of(Provider::Oracle).unwrap(),
            ec2,
        }
    }

    fn asked(&self, p: Provider) -> usize {
        self.peers
            .iter()
            .find(|(q, _)| *q == p)
            .map_or(0, |(_, peer)| peer.seen().len())
    }
}

fn discover(host: &Host, choice: CloudChoice, endpoints: &Endpoints) -> Discovery {
    rt().block_on(detect::discover(host, choice, &Origin::Default, endpoints))
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn each_provider_is_found_by_its_dmi_and_read_with_one_probe() {
    struct Case {
        dmi: &'static str,
        provider: Provider,
        peer: fn() -> CloudPeer,
        id: &'static str,
        id_source: &'static str,
        private: &'static str,
        public: Option<&'static str>,
        region: Option<&'static str>,
        zone: Option<&'static str>,
        kind: Option<&'static str>,
        spot: Option<bool>,
        by: (&'static str, &'static str),
    }
    let cases = [
        Case {
            dmi: "gcp",
            provider: Provider::Gcp,
            peer: CloudPeer::gcp,
            id: "4520031799277581759",
            id_source: "gcp metadata instance/id",
            private: "10.132.0.2",
            public: Some("34.76.10.20"),
            region: Some("europe-west1"),
            zone: Some("europe-west1-b"),
            kind: Some("c2-standard-8"),
            spot: Some(true),
            by: ("product_name", "Google Compute Engine"),
        },
        Case {
            dmi: "azure",
            provider: Provider::Azure,
            peer: CloudPeer::azure,
            id: "e94f3f7f-6b23-4395-be46-ea363c549f71",
            id_source: "azure metadata compute.vmId",
            private: "10.1.0.4",
            public: Some("20.61.1.2"),
            region: Some("westeurope"),
            zone: Some("2"),
            kind: Some("Standard_F8s_v2"),
            spot: Some(true),
            by: ("chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77"),
        },
        Case {
            dmi: "digitalocean",
            provider: Provider::DigitalOcean,
            peer: CloudPeer::digitalocean,
            id: "2756294",
            id_source: "digitalocean metadata v1.json droplet_id",
            private: "10.133.0.2",
            public: Some("188.166.10.20"),
            region: Some("ams3"),
            zone: None,
            kind: None,
            spot: Some(false),
            by: ("sys_vendor", "DigitalOcean"),
        },
        Case {
            dmi: "hetzner",
            provider: Provider::Hetzner,
            peer: CloudPeer::hetzner,
            id: "42424242",
            id_source: "hetzner metadata instance-id",
            private: "10.0.0.3",
            public: Some("116.203.10.20"),
            region: Some("eu-central"),
            zone: Some("fsn1-dc14"),
            kind: None,
            spot: Some(false),
            by: ("sys_vendor", "Hetzner"),
        },
        Case {
            dmi: "openstack",
            provider: Provider::OpenStack,
            peer: CloudPeer::openstack,
            id: "99dcf33b-6eb5-4acf-9abb-d81723e0c949",
            id_source: "openstack metadata openstack/latest/meta_data.json uuid",
            private: "192.168.10.12",
            public: Some("203.0.113.12"),
            region: None,
            zone: Some("nova"),
            kind: Some("m1.xlarge"),
            spot: None,
            by: ("product_name", "OpenStack Nova"),
        },
        Case {
            dmi: "oracle",
            provider: Provider::Oracle,
            peer: CloudPeer::oracle,
            id: "ocid1.instance.oc1.phx.anyhqljtexampleuniqueid0123456789abcdefghijklmnopqrstuv",
            id_source: "oracle metadata opc/v2/instance/id",
            private: "10.0.2.15",
            public: None,
            region: Some("us-phoenix-1"),
            zone: Some("Uocm:PHX-AD-1"),
            kind: Some("VM.Standard.E4.Flex"),
            spot: None,
            by: ("chassis_asset_tag", "OracleCloud.com"),
        },
    ];
    for c in cases {
        let (_d, host) = root(Some(c.dmi));
        let clouds = Clouds::with(c.provider, (c.peer)());
        let d = discover(&host, CloudChoice::Auto, &clouds.endpoints());
        let what = c.dmi;
        assert_eq!(d.provider, Some(c.provider), "{what}: {:?}", d.fallback);
        assert_eq!(
            d.by,
            DetectedBy::Dmi {
                file: format!("/sys/class/dmi/id/{}", c.by.0),
                value: c.by.1.into()
            },
            "{what}"
        );
        let f = d.facts.as_ref().unwrap();
        let id = f.instance_id.as_ref().unwrap();
        assert_eq!(
            (id.value.as_str(), id.source.as_str()),
            (c.id, c.id_source),
            "{what}"
        );
        assert_eq!(
            f.private_ipv4.as_ref().map(|s| s.value),
            Some(ip(c.private)),
            "{what}"
        );
        assert!(
            f.private_ipv4
                .as_ref()
                .unwrap()
                .source
                .starts_with(c.provider.name()),
            "{what}"
        );
        assert_eq!(
            f.public_ipv4.as_ref().map(|s| s.value),
            c.public.map(ip),
            "{what}"
        );
        assert_eq!(
            f.region.as_ref().map(|s| s.value.as_str()),
            c.region,
            "{what}"
        );
        assert_eq!(f.zone.as_ref().map(|s| s.value.as_str()), c.zone, "{what}");
        assert_eq!(
            f.instance_type.as_ref().map(|s| s.value.as_str()),
            c.kind,
            "{what}"
        );
        assert_eq!(f.spot.as_ref().map(|s| s.value), c.spot, "{what}");
        // One targeted probe: no other provider was asked.
        for p in Provider::ALL {
            if p != c.provider {
                assert_eq!(clouds.asked(p), 0, "{what}: {p} was asked");
            }
        }
    }
}

#[test]
fn ec2_by_its_dmi_reads_imdsv2() {
    let (_d, host) = root(Some("ec2"));
    let mut clouds = Clouds::with(Provider::Ec2, CloudPeer::start());
    let imds = Imds::start("i-0123456789abcdef0", "10.0.1.20");
    imds.set("placement/region", "eu-west-1");
    imds.set("instance-life-cycle", "spot");
    clouds.ec2 = Some(imds);
    let d = discover(&host, CloudChoice::Auto, &clouds.endpoints());
    assert_eq!(d.provider, Some(Provider::Ec2));
    assert!(matches!(&d.by, DetectedBy::Dmi { file, .. } if file.ends_with("sys_vendor")));
    let f = d.facts.unwrap();
    assert_eq!(
        f.instance_id.unwrap().source,
        "ec2 metadata latest/meta-data/instance-id"
    );
    assert_eq!(f.region.unwrap().value, "eu-west-1");
    let spot = f.spot.unwrap();
    assert!(spot.value);
    assert_eq!(
        spot.source,
        "ec2 metadata latest/meta-data/instance-life-cycle"
    );
    for p in Provider::ALL.into_iter().filter(|p| *p != Provider::Ec2) {
        assert_eq!(clouds.asked(p), 0, "{p}");
    }
}

/// The peers hold to what the real services refuse, so a client that
/// forgot a header fails here as it would on the cloud.
#[test]
fn the_peers_refuse_as_the_real_services_refuse() {
    let rt = rt();
    let status = |url: String, headers: &[(&str, &str)]| {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut r = c.get(url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        rt.block_on(r.send()).unwrap().status().as_u16()
    };
    let gcp = CloudPeer::gcp();
    let gurl = format!("{}/computeMetadata/v1/instance/?recursive=true", gcp.url);
    assert_eq!(status(gurl.clone(), &[]), 403);
    assert_eq!(status(gurl.clone(), &[("Metadata-Flavor", "google")]), 403);
    assert_eq!(status(gurl.clone(), &[("Metadata-Flavor", "Google")]), 200);
    assert_eq!(
        status(
            gurl,
            &[
                ("Metadata-Flavor", "Google"),
                ("X-Forwarded-For", "10.0.0.9")
            ]
        ),
        400
    );
    let az = CloudPeer::azure();
    assert_eq!(
        status(
            format!("{}/metadata/instance?api-version=2021-02-01", az.url),
            &[]
        ),
        400
    );
    assert_eq!(
        status(
            format!("{}/metadata/instance", az.url),
            &[("Metadata", "true")]
        ),
        400
    );
    assert_eq!(
        status(
            format!("{}/metadata/instance?api-version=2021-02-01", az.url),
            &[("Metadata", "true")]
        ),
        200
    );
    let oci = CloudPeer::oracle();
    assert_eq!(status(format!("{}/opc/v2/instance/", oci.url), &[]), 401);
    assert_eq!(
        status(
            format!("{}/opc/v2/instance/", oci.url),
            &[("Authorization", "Bearer Oracle")]
        ),
        200
    );
    // And the agent sends exactly what they want.
    for (p, peer, header) in [
        (
            Provider::Gcp,
            CloudPeer::gcp(),
            ("metadata-flavor", "Google"),
        ),
        (Provider::Azure, CloudPeer::azure(), ("metadata", "true")),
        (
            Provider::Oracle,
            CloudPeer::oracle(),
            ("authorization", "Bearer Oracle"),
        ),
    ] {
        let (_d, host) = root(None);
        let clouds = Clouds::with(p, peer);
        let d = discover(&host, CloudChoice::Provider(p), &clouds.endpoints());
        assert_eq!(d.provider, Some(p), "{:?}", d.fallback);
        let seen = &clouds.peers.iter().find(|(q, _)| *q == p).unwrap().1.seen();
        assert!(!seen.is_empty());
        for s in seen.iter() {
            assert_eq!(
                s.headers.get(header.0).map(String::as_str),
                Some(header.1),
                "{p}: {s:?}"
            );
            assert!(!s.headers.contains_key("x-forwarded-for"));
        }
    }
}

#[test]
fn a_server_without_googles_answer_header_is_not_gce() {
    let (_d, host) = root(Some("gcp"));
    let peer = CloudPeer::gcp();
    peer.unmark();
    let clouds = Clouds::with(Provider::Gcp, peer);
    let d = discover(&host, CloudChoice::Auto, &clouds.endpoints());
    assert_eq!(d.provider, None);
    assert_eq!(d.detected, Some(Provider::Gcp));
    assert!(d.degraded);
    let why = d.fallback.unwrap();
    assert!(why.contains("not a GCE metadata server"), "{why}");
    assert!(why.contains("using the host's own facts"), "{why}");
}

#[test]
fn faults_fall_back_naming_the_endpoint_and_the_cause_within_the_budget() {
    // A service that accepts and never answers.
    let (_d, host) = root(Some("azure"));
    let peer = CloudPeer::azure();
    peer.stall("/metadata/instance?api-version=2021-02-01");
    let clouds = Clouds::with(Provider::Azure, peer);
    let start = Instant::now();
    let d = discover(&host, CloudChoice::Auto, &clouds.endpoints());
    let took = start.elapsed();
    // 3 attempts of 1 s each (the deadline is kept), then it gives up;
    // bench/cloud.sh measures the real figures.
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    let why = d.fallback.unwrap();
    assert!(
        why.contains("Microsoft Azure") && why.contains(&clouds.endpoints().azure),
        "{why}"
    );
    assert!(
        why.to_lowercase().contains("timed out") || why.contains("timeout"),
        "{why}"
    );

    // 404: the path is not there; 500: retried, then named.
    let (_d, host) = root(Some("digitalocean"));
    let peer = CloudPeer::digitalocean();
    peer.fail("/metadata/v1.json", 404);
    let clouds = Clouds::with(Provider::DigitalOcean, peer);
    let why = discover(&host, CloudChoice::Auto, &clouds.endpoints())
        .fallback
        .unwrap();
    assert!(why.contains("HTTP 404"), "{why}");
    assert_eq!(
        clouds.asked(Provider::DigitalOcean),
        1,
        "a 404 is not retried"
    );

    let (_d, host) = root(Some("hetzner"));
    let peer = CloudPeer::hetzner();
    peer.fail("/hetzner/v1/metadata", 500);
    let clouds = Clouds::with(Provider::Hetzner, peer);
    let why = discover(&host, CloudChoice::Auto, &clouds.endpoints())
        .fallback
        .unwrap();
    assert!(why.contains("HTTP 500"), "{why}");
    assert_eq!(clouds.asked(Provider::Hetzner), 3, "a 500 is retried twice");

    // A document that is no instance.
    let (_d, host) = root(Some("oracle"));
    let peer = CloudPeer::oracle();
    peer.route(
        "GET",
        "/opc/v2/instance/",
        200,
        r#"{"id": "../../etc/passwd"}"#,
    );
    let clouds = Clouds::with(Provider::Oracle, peer);
    let why = discover(&host, CloudChoice::Auto, &clouds.endpoints())
        .fallback
        .unwrap();
    assert!(why.contains("not an OCID"), "{why}");
}

#[test]
fn a_missing_optional_item_keeps_the_instance() {
    let (_d, host) = root(Some("hetzner"));
    let peer = CloudPeer::hetzner();
    peer.fail("/hetzner/v1/metadata/private-networks", 404);
    let clouds = Clouds::with(Provider::Hetzner, peer);
    let d = discover(&host, CloudChoice::Auto, &clouds.endpoints());
    let f = d.facts.unwrap();
    assert_eq!(f.instance_id.unwrap().value, "42424242");
    assert!(f.private_ipv4.is_none());
    assert!(
        f.notes.iter().any(|n| n.contains("HTTP 404")),
        "{:?}",
        f.notes
    );
}

#[test]
fn a_host_with_no_cloud_falls_back_fast_and_says_so() {
    for dmi in [Some("none"), None] {
        let (_d, host) = root(dmi);
        let clouds = Clouds::with(Provider::Ec2, CloudPeer::start());
        let endpoints = clouds.endpoints();
        let start = Instant::now();
        let d = discover(&host, CloudChoice::Auto, &endpoints);
        // Bounded (bench/cloud.sh measures it: about 30 ms).
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!((d.provider, d.detected, d.degraded), (None, None, false));
        let why = d.fallback.unwrap();
        assert!(
            why.starts_with("no cloud found: no DMI fingerprint"),
            "{why}"
        );
        assert!(why.contains(&endpoints.ec2), "{why}");
        // Only the EC2-compatible probe: nobody else was asked.
        for p in Provider::ALL {
            assert_eq!(clouds.asked(p), 0, "{p}");
        }
    }
    // An address that accepts and never answers: bounded by the quick
    // budget (2 x 250 ms), far below the targeted one (3 x 1 s).
    let (_d, host) = root(None);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut e = Clouds::with(Provider::Ec2, CloudPeer::start()).endpoints();
    e.ec2 = format!("http://{}", l.local_addr().unwrap());
    let start = Instant::now();
    let d = discover(&host, CloudChoice::Auto, &e);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(d.fallback.is_some());
}

#[test]
fn an_unknown_host_is_probed_as_ec2_then_as_openstack() {
    // IMDSv2 answers: EC2, found by the probe.
    let (_d, host) = root(Some("none"));
    let mut clouds = Clouds::with(Provider::Ec2, CloudPeer::start());
    clouds.ec2 = Some(Imds::start("i-0aaaaaaaaaaaaaaa1", "10.0.1.21"));
    let d = discover(&host, CloudChoice::Auto, &clouds.endpoints());
    assert_eq!(d.provider, Some(Provider::Ec2));
    assert!(matches!(d.by, DetectedBy::Probe { .. }), "{:?}", d.by);

    // Nova on the EC2 address (token refused with 405): OpenStack.
    let nova = CloudPeer::openstack();
    let mut e = Clouds::with(Provider::Ec2, CloudPeer::start()).endpoints();
    e.ec2 = nova.url.clone();
    e.openstack = nova.url.clone();
    let d = discover(&host, CloudChoice::Auto, &e);
    assert_eq!(d.provider, Some(Provider::OpenStack), "{:?}", d.fallback);
    assert_eq!(
        d.facts.unwrap().instance_id.unwrap().value,
        "99dcf33b-6eb5-4acf-9abb-d81723e0c949"
    );
}

#[test]
fn an_explicit_choice_wins_over_the_dmi_and_none_probes_nothing() {
    let (_d, host) = root(Some("azure"));
    let clouds = Clouds::with(Provider::Gcp, CloudPeer::gcp());
    let d = rt().block_on(detect::discover(
        &host,
        CloudChoice::Provider(Provider::Gcp),
        &Origin::Flag,
        &clouds.endpoints(),
    ));
    assert_eq!(
        (d.provider, d.by.clone()),
        (Some(Provider::Gcp), DetectedBy::Flag)
    );
    assert_eq!(clouds.asked(Provider::Azure), 0);
    let asked: Vec<usize> = Provider::ALL.iter().map(|p| clouds.asked(*p)).collect();

    let d = rt().block_on(detect::discover(
        &host,
        CloudChoice::None,
        &Origin::Config("/etc/ams-agent/agent.toml".into()),
        &clouds.endpoints(),
    ));
    assert_eq!(d.provider, None);
    assert!(
        d.fallback
            .unwrap()
            .contains("[node] cloud of /etc/ams-agent/agent.toml")
    );
    let now: Vec<usize> = Provider::ALL.iter().map(|p| clouds.asked(*p)).collect();
    assert_eq!(asked, now, "`none` asked nobody");
}

#[test]
fn a_dmi_fifo_hangs_nothing_and_is_noted() {
    let (d, host) = root(Some("none"));
    let f = d.path().join("sys/class/dmi/id/sys_vendor");
    std::fs::remove_file(&f).unwrap();
    nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let clouds = Clouds::with(Provider::Ec2, CloudPeer::start());
    let d = discover(&host, CloudChoice::Auto, &clouds.endpoints());
    assert!(
        d.dmi_unreadable
            .iter()
            .any(|(file, why)| file.ends_with("sys_vendor") && why.contains("FIFO")),
        "{:?}",
        d.dmi_unreadable
    );
}

#[test]
fn azure_scheduled_events_are_this_vms_and_are_acknowledged() {
    let peer = CloudPeer::azure();
    peer.route(
        "GET",
        "/metadata/scheduledevents?api-version=2020-07-01",
        200,
        &common::cloud::fixture("azure-scheduledevents.json"),
    );
    let clouds = Clouds::with(Provider::Azure, peer);
    let w = Watcher::new(
        Provider::Azure,
        &clouds.endpoints(),
        Some("ams-edge-1".into()),
    )
    .unwrap()
    .unwrap();
    let rt = rt();
    let notices = rt.block_on(w.poll()).unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let n = &notices[0];
    assert_eq!(
        (n.kind, n.trigger),
        (NoticeKind::Preempt, "azure-scheduled-event")
    );
    assert!(n.drains());
    rt.block_on(w.acknowledge(n)).unwrap();
    let peer = &clouds
        .peers
        .iter()
        .find(|(p, _)| *p == Provider::Azure)
        .unwrap()
        .1;
    let post = peer
        .seen()
        .into_iter()
        .find(|s| s.method == "POST")
        .unwrap();
    assert_eq!(
        post.headers.get("metadata").map(String::as_str),
        Some("true")
    );
    let body: serde_json::Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"StartRequests": [{"EventId": "602d9444-d2cd-49c7-8624-8643e7171297"}]})
    );
    // The service down is no notice.
    peer.fail("/metadata/scheduledevents?api-version=2020-07-01", 503);
    assert!(rt.block_on(w.poll()).is_err());
}

#[test]
fn gcp_preemption_and_maintenance_are_notices() {
    let peer = CloudPeer::gcp();
    let clouds = Clouds::with(Provider::Gcp, peer);
    let w = Watcher::new(Provider::Gcp, &clouds.endpoints(), None)
        .unwrap()
        .unwrap();
    let rt = rt();
    assert!(rt.block_on(w.poll()).unwrap().is_empty());
    let peer = &clouds
        .peers
        .iter()
        .find(|(p, _)| *p == Provider::Gcp)
        .unwrap()
        .1;
    peer.route("GET", "/computeMetadata/v1/instance/preempted", 200, "TRUE");
    peer.route(
        "GET",
        "/computeMetadata/v1/instance/maintenance-event",
        200,
        "MIGRATE_ON_HOST_MAINTENANCE",
    );
    let n = rt.block_on(w.poll()).unwrap();
    assert_eq!(n.len(), 2);
    assert_eq!(
        (n[0].kind, n[0].trigger),
        (NoticeKind::Preempt, "gcp-preempted")
    );
    assert!(!n[1].drains(), "a live migration is advisory");
    assert!(
        peer.seen()
            .iter()
            .all(|s| s.headers.get("metadata-flavor").map(String::as_str) == Some("Google"))
    );
}

// ---- the binary --------------------------------------------------------

fn metadata_cmd(t: &fixture::Tree, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut c = t.command(&[&["metadata"], args].concat());
    c.env(
        "AMS_AGENT_IMDS_ENDPOINT",
        format!("http://127.0.0.1:{}", free_port()),
    );
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn metadata_shows_each_value_with_its_source() {
    let t = fixture::Tree::new();
    plant_dmi(&t.root(), "gcp");
    let gcp = CloudPeer::gcp();
    let out = metadata_cmd(
        &t,
        &[("AMS_AGENT_GCP_METADATA_ENDPOINT", &gcp.url)],
        &["--json"],
    );
    assert!(out.status.success(), "{}", fixture::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["provider"], "gcp");
    assert_eq!(v["detectedBy"]["by"], "dmi");
    assert_eq!(v["node"]["id"]["value"], "gcp-4520031799277581759");
    assert_eq!(v["metadata"]["privateIpv4"]["value"], "10.132.0.2");
    assert_eq!(
        v["metadata"]["privateIpv4"]["source"],
        "gcp metadata instance/network-interfaces/0/ip"
    );
    assert_eq!(v["metadata"]["spot"]["value"], true);
    assert_eq!(v["node"]["privateIpv4"]["value"], "10.132.0.2");
    assert!(v["fallback"].is_null());

    let out = metadata_cmd(&t, &[("AMS_AGENT_GCP_METADATA_ENDPOINT", &gcp.url)], &[]);
    let text = fixture::stdout(&out);
    for line in [
        "Google Compute Engine (gcp)",
        "DMI /sys/class/dmi/id/product_name = \"Google Compute Engine\"",
        "gcp-4520031799277581759",
        "europe-west1-b",
        "gcp metadata instance/zone",
    ] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
}

#[test]
fn metadata_on_a_host_without_cloud_names_the_fallback() {
    let t = fixture::Tree::new();
    let out = metadata_cmd(&t, &[], &[]);
    // No machine id either: said, not a failure.
    assert!(out.status.success(), "{}", fixture::stderr(&out));
    assert!(
        fixture::stdout(&out).contains("cannot identify this node"),
        "{}",
        fixture::stdout(&out)
    );
    std::fs::write(
        t.path("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let out = metadata_cmd(&t, &[], &[]);
    assert!(out.status.success(), "{}", fixture::stderr(&out));
    let text = fixture::stdout(&out);
    assert!(text.contains("none found"), "{text}");
    assert!(text.contains("fallback: no cloud found"), "{text}");
    assert!(text.contains("/etc/machine-id"), "{text}");
    // Printed once, not logged again.
    assert!(
        !fixture::stderr(&out).contains("no cloud found"),
        "{}",
        fixture::stderr(&out)
    );
}

#[test]
fn bad_cloud_names_are_usage_errors() {
    let t = fixture::Tree::new();
    let before = t.snapshot();
    for args in [
        &["--cloud", "azur"][..],
        &["--cloud", "gcp\nX"],
        &["--mongo", "mongodb://a b"],
    ] {
        let out = metadata_cmd(&t, &[], args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            fixture::stderr(&out)
        );
        let err = fixture::stderr(&out);
        assert!(err.contains("--cloud") || err.contains("--mongo"), "{err}");
    }
    let out = t.run(&[
        "join",
        "--mongo",
        "10.0.1.5",
        "--cloud",
        "aws2",
        "--no-restart",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        fixture::stderr(&out).contains("--cloud"),
        "{}",
        fixture::stderr(&out)
    );
    assert_eq!(t.snapshot(), before);
}

/// Moves this test thread (and all it starts) into a network namespace of
/// its own, with loopback up and `198.18.0.2` (a benchmarking address,
/// RFC 2544) on it: the "route to MongoDB" leaves from there, not from
/// loopback, and nothing outside the namespace is reachable.
fn private_network_with(addr: &str) {
    // SAFETY: a plain syscall on this thread's own namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", &format!("{addr}/32"), "dev", "lo"],
    ] {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .expect("ip (iproute2)");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_natted_host_keeps_the_metadata_address_and_is_warned() {
    if !fixture::needs_root("a network namespace of its own") {
        return;
    }
    private_network_with("198.18.0.2");
    let t = fixture::Tree::new();
    plant_dmi(&t.root(), "gcp");
    let gcp = CloudPeer::gcp();
    let env = [("AMS_AGENT_GCP_METADATA_ENDPOINT", gcp.url.as_str())];
    let out = metadata_cmd(&t, &env, &["--json", "--mongo", "198.18.0.2"]);
    assert!(out.status.success(), "{}", fixture::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["route"]["to"], "198.18.0.2:27017");
    assert_eq!(v["route"]["source"], "198.18.0.2");
    // The documented choice: the metadata's address, with a warning.
    assert_eq!(v["node"]["privateIpv4"]["value"], "10.132.0.2");
    let w = v["warnings"][0].as_str().unwrap();
    for part in [
        "10.132.0.2",
        "198.18.0.2",
        "--ip 198.18.0.2",
        "using 10.132.0.2",
    ] {
        assert!(w.contains(part), "{part}: {w}");
    }

    // join pins the same address in /etc/hosts, and says why.
    let out = t
        .command(&["--dry-run", "join", "--mongo", "198.18.0.2", "--no-restart"])
        .env(
            "AMS_AGENT_IMDS_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("AMS_AGENT_GCP_METADATA_ENDPOINT", &gcp.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", fixture::stderr(&out));
    let plan = fixture::stdout(&out);
    assert!(plan.contains("+10.132.0.2"), "{plan}");
    assert!(
        fixture::stderr(&out).contains("pass --ip 198.18.0.2"),
        "{}",
        fixture::stderr(&out)
    );

    // No metadata at all: the route's source address is the node's.
    let bare = fixture::Tree::new();
    std::fs::write(
        bare.path("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let out = metadata_cmd(&bare, &[], &["--json", "--mongo", "198.18.0.2:27018"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node"]["privateIpv4"]["value"], "198.18.0.2");
    assert_eq!(
        v["node"]["privateIpv4"]["source"],
        "the source address of the route to MongoDB 198.18.0.2:27018"
    );
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn the_test_fixture_closes_every_providers_endpoint() {
    let vars: Vec<&str> = detect::ENV.iter().map(|(_, v, _)| *v).collect();
    assert_eq!(vars, fixture::CLOUD_ENDPOINT_VARS);
}

#[test]
fn an_oversized_document_is_refused_not_read_whole() {
    let (_d, host) = root(Some("digitalocean"));
    let peer = CloudPeer::digitalocean();
    let huge = format!(
        "{{\"droplet_id\": 1, \"pad\": \"{}\"}}",
        "x".repeat(2 << 20)
    );
    peer.route("GET", "/metadata/v1.json", 200, &huge);
    let clouds = Clouds::with(Provider::DigitalOcean, peer);
    let why = discover(&host, CloudChoice::Auto, &clouds.endpoints())
        .fallback
        .unwrap();
    assert!(why.contains("more than 1048576 bytes"), "{why}");
}

#[test]
fn join_cloud_none_asks_no_metadata_service_and_is_stored() {
    let t = fixture::Tree::new();
    std::fs::write(
        t.path("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let imds = Imds::start("i-0aaaaaaaaaaaaaaa1", "10.0.1.21");
    let peer = common::MongoPeer::start(common::PeerOptions::default());
    let ams = fixture::fake_ams_http();
    let uri = peer.uri();
    let join = |extra: &[&str]| {
        let mut args = vec!["join", "--mongo", &uri, "--ip", "10.0.1.30"];
        args.extend_from_slice(extra);
        t.command(&args)
            .env("AMS_AGENT_IMDS_ENDPOINT", &imds.url)
            .env("AMS_AGENT_AMS_URL", &ams)
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .unwrap()
    };
    let out = join(&["--cloud", "none"]);
    assert!(out.status.success(), "{}", fixture::stderr(&out));
    let asked = |i: &Imds| {
        i.state.token_puts.load(std::sync::atomic::Ordering::SeqCst)
            + i.state.gets.load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(asked(&imds), 0, "--cloud none probes nothing");
    let cfg = t.read("etc/ams-agent/agent.toml");
    assert!(cfg.contains("cloud = \"none\""), "{cfg}");
    assert!(
        cfg.contains("id = \"0123456789abcdef0123456789abcdef\""),
        "{cfg}"
    );
    // A later join without --cloud keeps the stored choice: still nothing asked.
    let out = join(&[]);
    assert!(out.status.success(), "{}", fixture::stderr(&out));
    assert_eq!(asked(&imds), 0);
    // --cloud auto removes it: the EC2-compatible probe finds the instance.
    let out = join(&["--cloud", "auto"]);
    assert!(out.status.success(), "{}", fixture::stderr(&out));
    assert!(asked(&imds) > 0);
    assert!(!t.read("etc/ams-agent/agent.toml").contains("cloud ="));
}

#[test]
fn an_azure_nodes_identity_gives_the_watcher_of_its_own_events() {
    let (_d, host) = root(Some("azure"));
    let peer = CloudPeer::azure();
    peer.route(
        "GET",
        "/metadata/scheduledevents?api-version=2020-07-01",
        200,
        &common::cloud::fixture("azure-scheduledevents.json"),
    );
    let clouds = Clouds::with(Provider::Azure, peer);
    let lookup = ams_agent::node::identity::Lookup {
        endpoints: clouds.endpoints(),
        ..ams_agent::node::identity::Lookup::auto()
    };
    let rt = rt();
    let id = rt
        .block_on(ams_agent::node::identity::resolve_stored(
            &host, &lookup, None,
        ))
        .unwrap();
    assert_eq!(id.vm_name.as_deref(), Some("ams-edge-1"));
    let w = id.notice_watcher(&clouds.endpoints()).unwrap().unwrap();
    let n = rt.block_on(w.poll()).unwrap();
    // Only the Preempt of ams-edge-1, not ams-edge-2's Freeze.
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].kind, NoticeKind::Preempt);
    // EC2 and the clouds without notices: no watcher.
    let ec2 = ams_agent::node::identity::NodeIdentity {
        provider: Some(Provider::Ec2),
        ..Default::default()
    };
    assert!(ec2.notice_watcher(&clouds.endpoints()).is_none());
    // Azure's metadata failed when the reporter started (no provider
    // answered), but the DMI named Azure: its notices are still watched.
    let blip = ams_agent::node::identity::NodeIdentity {
        provider: None,
        source: ams_agent::node::identity::IdSource::Cloud(Provider::Azure),
        ..Default::default()
    };
    let w = blip.notice_watcher(&clouds.endpoints()).unwrap().unwrap();
    assert_eq!(w.provider(), Provider::Azure);
    let machine = ams_agent::node::identity::NodeIdentity::default();
    assert!(machine.notice_watcher(&clouds.endpoints()).is_none());
}
