//! Loopback stand-ins for the metadata services of GCP, Azure,
//! DigitalOcean, Hetzner, OpenStack and Oracle (EC2's IMDSv2 peer is
//! [`super::Imds`]): real HTTP on 127.0.0.1, the documents of
//! `tests/fixtures/cloud/` (shaped as the providers document them), and
//! the services' refusals: GCP answers 403 without `Metadata-Flavor:
//! Google` and marks every answer with that header; Azure answers 400
//! without `Metadata: true` or without an api-version; Oracle's v2 answers
//! 401 without `Authorization: Bearer Oracle`; every one refuses a request
//! that carries `X-Forwarded-For`. Faults: a path can stall (never
//! answer), answer another status, or vanish (404).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cloud")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Plants the DMI files of `tests/fixtures/dmi/<name>` under `root`.
pub fn plant_dmi(root: &Path, name: &str) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dmi")
        .join(name);
    let to = root.join("sys/class/dmi/id");
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A host root with `/etc/machine-id` and `/etc/hostname` (`node-7`), and
/// the DMI files of `tests/fixtures/dmi/<dmi>` when given.
pub fn host_root(dmi: Option<&str>) -> (tempfile::TempDir, ams_agent::host::Host) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("etc/hostname"), "node-7\n").unwrap();
    if let Some(name) = dmi {
        plant_dmi(dir.path(), name);
    }
    let h = ams_agent::host::Host::new(dir.path(), ams_agent::host::fs::CrashPoints::default());
    (dir, h)
}

/// One request as the peer saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

#[derive(Clone)]
struct Refusal {
    header: String,
    value: String,
    status: u16,
    body: String,
}

#[derive(Default)]
pub struct PeerState {
    /// (method, path with query) → (status, body).
    routes: Mutex<HashMap<(String, String), (u16, String)>>,
    refusals: Mutex<Vec<Refusal>>,
    /// Headers on every answer.
    marks: Mutex<Vec<(String, String)>>,
    /// Azure: paths under /metadata need `api-version=`.
    needs_api_version: AtomicBool,
    stalls: Mutex<HashSet<String>>,
    statuses: Mutex<HashMap<String, u16>>,
    pub seen: Mutex<Vec<Seen>>,
}

pub struct CloudPeer {
    pub url: String,
    pub state: Arc<PeerState>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

impl CloudPeer {
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
        let state = Arc::new(PeerState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(s, &st));
            }
        });
        CloudPeer { url, state }
    }

    pub fn route(&self, method: &str, path: &str, status: u16, body: &str) -> &Self {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert((method.into(), path.into()), (status, body.into()));
        self
    }

    fn refuse_without(&self, header: &str, value: &str, status: u16, body: &str) {
        self.state.refusals.lock().unwrap().push(Refusal {
            header: header.to_ascii_lowercase(),
            value: value.into(),
            status,
            body: body.into(),
        });
    }

    /// `path` never answers (a filtered or hung service).
    pub fn stall(&self, path: &str) {
        self.state.stalls.lock().unwrap().insert(path.into());
    }

    /// `path` answers `status` with an empty body.
    pub fn fail(&self, path: &str, status: u16) {
        self.state
            .statuses
            .lock()
            .unwrap()
            .insert(path.into(), status);
    }

    /// Stops marking answers with `header` (a server that is not GCE's).
    pub fn unmark(&self) {
        self.state.marks.lock().unwrap().clear();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// GCE's metadata server.
    pub fn gcp() -> Self {
        let p = CloudPeer::start();
        p.route(
            "GET",
            "/computeMetadata/v1/instance/?recursive=true",
            200,
            &fixture("gcp-instance.json"),
        );
        p.route(
            "GET",
            "/computeMetadata/v1/instance/preempted",
            200,
            "FALSE",
        );
        p.route(
            "GET",
            "/computeMetadata/v1/instance/maintenance-event",
            200,
            "NONE",
        );
        // GCE's own refusal text (HTML in real life; the status is what counts).
        p.refuse_without(
            "Metadata-Flavor",
            "Google",
            403,
            "Your client does not have permission to get URL from this server. Missing Metadata-Flavor:Google header.",
        );
        p.state
            .marks
            .lock()
            .unwrap()
            .push(("Metadata-Flavor".into(), "Google".into()));
        p
    }

    /// Azure's IMDS, with Scheduled Events (GET and the POST that
    /// acknowledges).
    pub fn azure() -> Self {
        let p = CloudPeer::start();
        p.route(
            "GET",
            "/metadata/instance?api-version=2021-02-01",
            200,
            &fixture("azure-instance.json"),
        );
        p.route(
            "GET",
            "/metadata/scheduledevents?api-version=2020-07-01",
            200,
            r#"{"DocumentIncarnation": 1, "Events": []}"#,
        );
        p.route(
            "POST",
            "/metadata/scheduledevents?api-version=2020-07-01",
            200,
            "",
        );
        p.refuse_without(
            "Metadata",
            "true",
            400,
            r#"{"error": "Bad request. Required metadata header not specified"}"#,
        );
        p.state.needs_api_version.store(true, Ordering::SeqCst);
        p
    }

    pub fn digitalocean() -> Self {
        let p = CloudPeer::start();
        p.route(
            "GET",
            "/metadata/v1.json",
            200,
            &fixture("digitalocean-v1.json"),
        );
        p
    }

    pub fn hetzner() -> Self {
        let p = CloudPeer::start();
        p.route(
            "GET",
            "/hetzner/v1/metadata",
            200,
            &fixture("hetzner-metadata.yaml"),
        );
        p.route(
            "GET",
            "/hetzner/v1/metadata/private-networks",
            200,
            &fixture("hetzner-private-networks.yaml"),
        );
        p
    }

    /// Nova's metadata service: the EC2 tree without IMDSv2 (the token
    /// PUT is not a route: 405), and openstack/latest/meta_data.json.
    pub fn openstack() -> Self {
        let p = CloudPeer::start();
        p.route("PUT", "/latest/api/token", 405, "");
        p.route(
            "GET",
            "/openstack/latest/meta_data.json",
            200,
            &fixture("openstack-meta_data.json"),
        );
        p.route("GET", "/latest/meta-data/instance-id", 200, "i-0000002a");
        p.route("GET", "/latest/meta-data/local-ipv4", 200, "192.168.10.12");
        p.route("GET", "/latest/meta-data/public-ipv4", 200, "203.0.113.12");
        p.route("GET", "/latest/meta-data/instance-type", 200, "m1.xlarge");
        p
    }

    /// OCI's IMDS v2.
    pub fn oracle() -> Self {
        let p = CloudPeer::start();
        p.route(
            "GET",
            "/opc/v2/instance/",
            200,
            &fixture("oracle-instance.json"),
        );
        p.route("GET", "/opc/v2/vnics/", 200, &fixture("oracle-vnics.json"));
        p.refuse_without(
            "Authorization",
            "Bearer Oracle",
            401,
            r#"{"code": "NotAuthenticated", "message": "Not authenticated"}"#,
        );
        p
    }
}

fn serve(mut s: TcpStream, st: &PeerState) {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let request = lines.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let mut parts = request.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    st.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    if st.stalls.lock().unwrap().contains(&path) {
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    let (status, text) = answer(st, &method, &path, &headers);
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in st.marks.lock().unwrap().iter() {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    ));
    let _ = s.write_all(out.as_bytes());
}

fn answer(
    st: &PeerState,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
) -> (u16, String) {
    if headers.contains_key("x-forwarded-for") {
        return (400, "forwarded requests are refused".into());
    }
    for r in st.refusals.lock().unwrap().iter() {
        if headers.get(&r.header).map(String::as_str) != Some(r.value.as_str()) {
            return (r.status, r.body.clone());
        }
    }
    if st.needs_api_version.load(Ordering::SeqCst)
        && path.starts_with("/metadata/")
        && !path.contains("api-version=")
    {
        return (
            400,
            r#"{"error": "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds", "newest-versions": ["2021-02-01"]}"#.into(),
        );
    }
    if let Some(status) = st.statuses.lock().unwrap().get(path) {
        return (*status, String::new());
    }
    match st
        .routes
        .lock()
        .unwrap()
        .get(&(method.to_string(), path.to_string()))
    {
        Some((status, body)) => (*status, body.clone()),
        None => (404, "Not Found".into()),
    }
}
