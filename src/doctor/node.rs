//! The checks of an AMS node.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document};

use super::env::{Env, Session};
use super::firewall::{self, Probe, Proto, Verdict};
use super::{Outcome, Status};
use crate::ams::jee::{self, BlockState};
use crate::human::{escape, show_duration};
use crate::mongo::alive::{self, ALIVE_INTERVALS};

/// AMS's default WebRTC UDP range since 2.4.3 (5000-65000 before).
pub const WEBRTC_PORTS: (u16, u16) = (50000, 60000);
/// The TCP port AMS nodes talk to each other on.
pub const CLUSTER_PORT: u16 = 5000;
/// AMS's own database of the cluster, and its node rows.
pub const CLUSTER_DB: &str = "clusterdb";
pub const CLUSTERNODE: &str = "clusternode";
/// AMS updates its row every 5 s and counts a node dead after 4 periods.
pub const CLUSTERNODE_PERIOD_SECONDS: f64 = 5.0;
/// What AMS's docs ask for LimitNOFILE.
pub const AMS_NOFILE: u64 = 65535;

/// A clock further off MongoDB's than this is a warning; beyond
/// [`SKEW_FAIL_SECONDS`] a failure.
pub const SKEW_WARN_SECONDS: f64 = alive::CLOCK_TOLERANCE_SECONDS;
pub const SKEW_FAIL_SECONDS: f64 = 10.0;

/// Free space on the AMS volume below these is a failure / a warning.
pub const DISK_FAIL_PERCENT: f64 = 5.0;
pub const DISK_FAIL_BYTES: u64 = 1 << 30;
pub const DISK_WARN_PERCENT: f64 = 15.0;

/// A stand-in WebRTC client on the internet (TEST-NET-3).
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// A measured time: tenths of a millisecond below 10 ms (`0.4ms`), else
/// as messages show durations.
pub fn took(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.1}ms", d.as_secs_f64() * 1000.0)
    } else {
        show_duration(d)
    }
}

fn shown_uri(uri: &str) -> String {
    escape(&crate::uri::redact(uri)).into_owned()
}

/// The session, or the outcome that says why a check cannot use it: a
/// skip when `mongo.reach` is part of the run and reports the cause, a
/// failure naming it otherwise (a skip would hide it).
fn session(env: &Env) -> Result<&Arc<Session>, Outcome> {
    match env.session() {
        Ok(s) => Ok(s),
        Err(e) if e.stage == "none" => Err(Outcome::skip(
            "no MongoDB is configured: this node has not joined a cluster (see agent.config)",
        )),
        Err(_) if env.runs("mongo.reach") => Err(Outcome::skip(
            "needs MongoDB, which is not reachable (see mongo.reach)",
        )),
        Err(e) => Err(Outcome::fail(e.message.clone(), e.fix.clone())),
    }
}

pub(super) fn unit_or_outcome(env: &Env, unit: &str) -> Result<super::env::UnitProps, Outcome> {
    env.unit(unit).map_err(|e| {
        Outcome::warn(
            format!("cannot ask systemd about {unit}: {e}"),
            "run doctor on the host itself, where systemd is PID 1",
        )
    })
}

pub(super) fn get<'a>(props: &'a super::env::UnitProps, key: &str) -> &'a str {
    props.get(key).map_or("", String::as_str)
}

/// A unit that must be installed and active: its properties, or the
/// outcome saying it is not (`install` and `start` are the fixes; `idle`
/// follows the state when it is not active).
pub(super) fn active_unit(
    env: &Env,
    unit: &str,
    install: &str,
    start: &str,
    idle: &str,
) -> Result<super::env::UnitProps, Outcome> {
    let props = unit_or_outcome(env, unit)?;
    if get(&props, "LoadState") == "not-found" {
        return Err(Outcome::fail(
            format!("{unit}.service is not installed"),
            install,
        ));
    }
    let (active, sub) = (get(&props, "ActiveState"), get(&props, "SubState"));
    if active != "active" {
        return Err(Outcome::fail(
            format!("{unit}.service is {active} ({sub}){idle}"),
            start,
        ));
    }
    Ok(props)
}

/// A unit whose settings a check reads: its properties; skipped when it
/// is not installed (`see` names the check that reports that).
pub(super) fn installed_unit(
    env: &Env,
    unit: &str,
    see: &str,
) -> Result<super::env::UnitProps, Outcome> {
    let props = unit_or_outcome(env, unit)?;
    if get(&props, "LoadState") == "not-found" {
        return Err(Outcome::skip(format!(
            "{unit}.service is not installed (see {see})"
        )));
    }
    Ok(props)
}

/// A limit as `systemctl show` prints it (a number or `infinity`).
pub fn limit(v: &str) -> Option<u64> {
    if v == "infinity" {
        Some(u64::MAX)
    } else {
        v.parse().ok()
    }
}

fn show_limit(v: u64) -> String {
    if v == u64::MAX {
        "infinity".into()
    } else {
        v.to_string()
    }
}

/// The soft limit the process gets (`LimitNOFILESoft`, else `LimitNOFILE`).
pub fn soft_limit(props: &super::env::UnitProps, name: &str) -> Option<u64> {
    props
        .get(&format!("{name}Soft"))
        .or_else(|| props.get(name))
        .and_then(|v| limit(v))
}

fn not_joined(env: &Env) -> Option<Outcome> {
    match env.config() {
        Ok(None) => Some(Outcome::skip(format!(
            "this node has not joined a cluster ({} does not exist)",
            env.settings.config.display()
        ))),
        _ => None,
    }
}

// ------------------------------------------------------------ agent.config

pub fn agent_config(env: &Env) -> Outcome {
    let path = env.settings.config.display();
    let mut out = match env.config() {
        Ok(Some(c)) => Outcome::ok(format!(
            "{path}: node {}, role {}, registry {}.{} at {}",
            c.node.id.as_deref().map_or("(id not recorded)", |s| s),
            c.node.role.name(),
            escape(&c.mongo.database),
            escape(&c.mongo.collection),
            shown_uri(&c.mongo.uri)
        )),
        Ok(None) => Outcome::warn(
            format!("{path} does not exist: this node has not joined a cluster"),
            "sudo ams-agent join --mongo <MongoDB address> --role origin|edge",
        ),
        Err(e) => Outcome::fail(
            e.clone(),
            format!("fix {path}, or run `sudo ams-agent join` again (it rewrites it)"),
        ),
    };
    // A change a crash interrupted: the files may be half switched.
    if crate::host::txn::pending(&env.host) && out.status != Status::Fail {
        out = Outcome::fail(
            "an interrupted change is pending (/var/lib/ams-agent/journal.json): AMS's files may be half switched",
            "run the command that was interrupted again (e.g. `sudo ams-agent mode …`): it completes the change first",
        );
    }
    out
}

// ------------------------------------------------------------ ams.service

pub fn ams_service(env: &Env) -> Outcome {
    let unit = crate::ams::layout::SERVICE;
    let props = match active_unit(
        env,
        unit,
        "install Ant Media Server (its installer creates antmedia.service)",
        "sudo systemctl start antmedia; see `journalctl -u antmedia` and /usr/local/antmedia/log/antmedia-error.log",
        "",
    ) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let (active, sub) = (get(&props, "ActiveState"), get(&props, "SubState"));
    if env.host.exists(&crate::ams::mode::restart_marker()) {
        return Outcome::warn(
            format!(
                "{unit}.service is {active} ({sub}), but a configuration change waits for its restart"
            ),
            format!("sudo systemctl restart {unit}"),
        );
    }
    Outcome::ok(format!("{unit}.service is {active} ({sub})"))
}

// ------------------------------------------------------------ ams.http

pub fn ams_http(env: &Env) -> Outcome {
    let url = &env.settings.ams_url;
    let parsed = match crate::host::http::HttpUrl::parse(url) {
        Ok(u) => u,
        Err(e) => {
            return Outcome::fail(
                format!("{e:#}"),
                "set AMS_AGENT_AMS_URL to http://host:port/",
            );
        }
    };
    let t0 = Instant::now();
    match crate::host::http::get_status(&parsed, Duration::from_secs(3)) {
        Ok(code) if code >= 500 => Outcome::warn(
            format!(
                "AMS answers on {url} with HTTP {code} (in {})",
                took(t0.elapsed())
            ),
            "AMS is up but failing: see /usr/local/antmedia/log/ant-media-server.log",
        ),
        Ok(code) => Outcome::ok(format!(
            "AMS answers HTTP on {url} ({code}, in {})",
            took(t0.elapsed())
        )),
        Err(e) => Outcome::fail(
            format!("AMS does not answer HTTP on {url}: {e:#}"),
            "sudo systemctl restart antmedia; see /usr/local/antmedia/log/antmedia-error.log",
        ),
    }
}

// ------------------------------------------------------------ ams.ports

/// Local TCP ports in LISTEN state, from `/proc/net/tcp` and `tcp6`.
fn listening(env: &Env) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match env.host.read_optional(Path::new(table)) {
            Ok(Some(bytes)) => {
                read_any = true;
                for line in String::from_utf8_lossy(&bytes).lines().skip(1) {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() > 3 && f[3] == "0A" {
                        if let Some(p) = f[1]
                            .rsplit(':')
                            .next()
                            .and_then(|p| u16::from_str_radix(p, 16).ok())
                        {
                            ports.push(p);
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => return Err(format!("{e:#}")),
        }
    }
    if !read_any {
        return Err("neither /proc/net/tcp nor /proc/net/tcp6 can be read".into());
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

pub fn ams_ports(env: &Env) -> Outcome {
    let mut wanted: Vec<(u16, &str)> = Vec::new();
    let mut note = String::new();
    match env.ams() {
        Ok(files) => {
            let port = |key: &str, default: u16| {
                files
                    .red5
                    .get(key)
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(default)
            };
            wanted.push((port("http.port", 5080), "http.port"));
            if jee::https_enabled(&files.jee) {
                wanted.push((port("https.port", 5443), "https.port"));
            } else {
                note = " (5443 not expected: the https connector is off)".into();
            }
            wanted.push((port("rtmp.port", 1935), "rtmp.port"));
        }
        Err(e) => {
            return Outcome::fail(
                format!("cannot tell AMS's ports: {e}"),
                "pass the AMS install folder with --ams-home",
            );
        }
    }
    let ports = match listening(env) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::warn(
                format!("cannot list the listening ports: {e}"),
                "run doctor on the host itself (it reads /proc/net/tcp)",
            );
        }
    };
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(p, _)| !ports.contains(p))
        .map(|(p, k)| format!("{p} ({k})"))
        .collect();
    let all: Vec<String> = wanted.iter().map(|(p, _)| p.to_string()).collect();
    if missing.is_empty() {
        Outcome::ok(format!("listening on {}{note}", all.join(", ")))
    } else {
        Outcome::fail(
            format!("nothing listens on {}{note}", missing.join(", ")),
            "AMS may still be starting, or another process holds the port: `sudo ss -ltnp`; see /usr/local/antmedia/log/ant-media-server.log",
        )
    }
}

// ------------------------------------------------------------ ams.mode

/// `mongodb://…` with its password, if any, taken out (agent.toml's form).
fn without_password(uri: &str) -> String {
    crate::uri::split_password(uri).0
}

pub fn ams_mode(env: &Env) -> Outcome {
    let files = match env.ams() {
        Ok(f) => f,
        Err(e) => {
            return Outcome::fail(e.clone(), "pass the AMS install folder with --ams-home");
        }
    };
    let config = env.config().as_ref().ok().and_then(|c| c.as_ref());
    let blocks = match jee::state(&files.jee) {
        Ok(s) => s,
        Err(e) => {
            return Outcome::fail(
                format!("{e:#}"),
                "restore conf/jee-container.xml from the AMS package",
            );
        }
    };
    let cluster_db = files
        .red5
        .get("clusterdb.host")
        .filter(|h| !h.trim().is_empty());
    // What the node should be: what agent.toml recorded, else what the
    // cluster blocks say.
    let expected = match config.and_then(|c| c.ams_mode()) {
        Some(m) => m,
        None if config.is_some() => crate::ams::mode::Mode::Cluster,
        None => match blocks {
            BlockState::Enabled | BlockState::Mixed => crate::ams::mode::Mode::Cluster,
            BlockState::Disabled => crate::ams::mode::Mode::Standalone,
        },
    };
    let cluster = expected == crate::ams::mode::Mode::Cluster;
    let mut problems = Vec::new();
    match (blocks, cluster) {
        (BlockState::Mixed, _) => {
            problems.push("conf/jee-container.xml: some cluster blocks are on, others off".into())
        }
        (BlockState::Disabled, true) => {
            problems.push("conf/jee-container.xml: the cluster blocks are off (standalone)".into())
        }
        (BlockState::Enabled, false) => {
            problems.push("conf/jee-container.xml: the cluster blocks are on (cluster)".into())
        }
        _ => {}
    }
    if cluster {
        match &cluster_db {
            None => problems.push("conf/red5.properties: clusterdb.host is empty".into()),
            Some(h) => {
                if let Some(c) = config {
                    if without_password(h) != c.mongo.uri {
                        problems.push(format!(
                            "conf/red5.properties: clusterdb.host is {}, but agent.toml's database is {}",
                            shown_uri(h),
                            shown_uri(&c.mongo.uri)
                        ));
                    }
                }
            }
        }
        for (app, props) in &files.apps {
            let db_type = props.get("db.type").unwrap_or_default();
            let db_host = props.get("db.host").unwrap_or_default();
            if !matches!(db_type.as_str(), "mongodb" | "redisdb") {
                problems.push(format!(
                    "webapps/{}: db.type={} (standalone)",
                    escape(app),
                    escape(&db_type)
                ));
            } else if let Some(h) = &cluster_db {
                if db_host != *h {
                    problems.push(format!(
                        "webapps/{}: db.host is {}, not clusterdb.host {}",
                        escape(app),
                        shown_uri(&db_host),
                        shown_uri(h)
                    ));
                }
            }
        }
    }
    let apps = files.apps.len();
    if problems.is_empty() {
        let with = match (cluster, config, &cluster_db) {
            (true, Some(_), Some(h)) => format!(", with agent.toml's database {}", shown_uri(h)),
            (true, None, Some(h)) => format!(", database {}", shown_uri(h)),
            _ => String::new(),
        };
        return Outcome::ok(format!(
            "{} mode in red5.properties, jee-container.xml and all {apps} applications{with}",
            expected.name()
        ));
    }
    let fix = if cluster {
        match (config, &cluster_db) {
            (Some(c), _) => mode_command(env, &c.mongo.uri),
            (None, Some(h)) => format!("sudo ams-agent mode cluster '{}'", shown_uri(h)),
            (None, None) => "sudo ams-agent mode cluster <MongoDB address>".into(),
        }
    } else {
        "sudo ams-agent mode standalone".into()
    };
    let first = problems[0].clone();
    let n = problems.len();
    Outcome::fail(
        format!(
            "{n} {} with {} mode: {first}",
            if n == 1 {
                "file disagrees"
            } else {
                "files disagree"
            },
            expected.name()
        ),
        fix,
    )
    .with_details(problems)
}

/// The `mode cluster` line that puts AMS back on agent.toml's database: the
/// user as --mongo-user and the password from its file (never in the line).
fn mode_command(env: &Env, uri: &str) -> String {
    let pw = crate::config::PASSWORD_FILE;
    let scheme_end = uri.find("://").map_or(0, |i| i + 3);
    let authority_end = uri[scheme_end..]
        .find(['/', '?'])
        .map_or(uri.len(), |i| scheme_end + i);
    let (bare, user) = match uri[scheme_end..authority_end].rfind('@') {
        Some(at) => {
            let user = &uri[scheme_end..scheme_end + at];
            let user = percent_encoding::percent_decode_str(user)
                .decode_utf8_lossy()
                .into_owned();
            (
                format!("{}{}", &uri[..scheme_end], &uri[scheme_end + at + 1..]),
                Some(user),
            )
        }
        None => (uri.to_string(), None),
    };
    let mut line = format!("sudo ams-agent mode cluster '{}'", escape(&bare));
    if let Some(u) = user {
        line.push_str(&format!(" --mongo-user '{}'", escape(&u)));
        if env.host.exists(Path::new(pw)) {
            line.push_str(&format!(" --mongo-password-file {pw}"));
        }
    }
    line
}

// ------------------------------------------------------------ ams.limits

pub fn ams_limits(env: &Env) -> Outcome {
    let unit = crate::ams::layout::SERVICE;
    let props = match installed_unit(env, unit, "ams.service") {
        Ok(p) => p,
        Err(o) => return o,
    };
    match soft_limit(&props, "LimitNOFILE") {
        Some(n) if n >= AMS_NOFILE => Outcome::ok(format!(
            "LimitNOFILE of {unit}.service is {} (AMS wants at least {AMS_NOFILE})",
            show_limit(n)
        )),
        Some(n) => Outcome::warn(
            format!(
                "LimitNOFILE of {unit}.service is {n}; AMS wants at least {AMS_NOFILE} (streams fail with \"Too many open files\" under load)"
            ),
            format!(
                "sudo systemctl edit {unit}: add `[Service]` and `LimitNOFILE={AMS_NOFILE}`, then sudo systemctl restart {unit}"
            ),
        ),
        None => Outcome::warn(
            format!("systemd reports no LimitNOFILE for {unit}.service"),
            format!("sudo systemctl show {unit} -p LimitNOFILE"),
        ),
    }
}

// ------------------------------------------------------------ disk.ams

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

pub fn disk_ams(env: &Env) -> Outcome {
    let (home, _) = env.ams_home();
    let real = env.host.path(&home);
    let st = match nix::sys::statvfs::statvfs(&real) {
        Ok(s) => s,
        Err(e) => {
            return Outcome::fail(
                format!("cannot measure the volume of {}: {e}", home.display()),
                "pass the AMS install folder with --ams-home",
            );
        }
    };
    let frag = st.fragment_size();
    let total = st.blocks() * frag;
    let free = st.blocks_free() * frag;
    let avail = st.blocks_available() * frag;
    let used = total.saturating_sub(free);
    let denom = used + avail;
    let free_pct = if denom == 0 {
        0.0
    } else {
        avail as f64 * 100.0 / denom as f64
    };
    let text = format!(
        "{} free of {} ({free_pct:.0}%) on the volume of {}",
        gib(avail),
        gib(denom),
        home.display()
    );
    let fix = format!(
        "free space on that volume: old recordings under {}/webapps/*/streams, logs under {}/log",
        home.display(),
        home.display()
    );
    if free_pct < DISK_FAIL_PERCENT || avail < DISK_FAIL_BYTES {
        Outcome::fail(text, fix)
    } else if free_pct < DISK_WARN_PERCENT {
        Outcome::warn(text, fix)
    } else {
        Outcome::ok(text)
    }
}

// ------------------------------------------------------------ mongo.reach

pub fn mongo_reach(env: &Env) -> Outcome {
    let s = match env.session() {
        Ok(s) => s,
        Err(e) if e.stage == "none" => return Outcome::skip(e.message.clone()),
        Err(e) => return Outcome::fail(e.message.clone(), e.fix.clone()),
    };
    let tcp = match &s.tcp {
        Some(hosts) => hosts
            .iter()
            .map(|(a, d)| format!("TCP {} {}", escape(a), took(*d)))
            .collect::<Vec<_>>()
            .join(", "),
        None => "TCP through the SRV records".into(),
    };
    let login = match &s.user {
        Some(u) => format!("logged in as {u}"),
        None => "no login".into(),
    };
    Outcome::ok(format!(
        "{} ({}): {tcp}, {login} in {}, ping {}",
        escape(s.registry.shown_uri()),
        s.source,
        took(s.connect),
        took(s.rtt)
    ))
}

// ------------------------------------------------------------ clock.skew

pub fn clock_skew(env: &Env) -> Outcome {
    let s = match session(env) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let skew = s.skew_seconds();
    let over = format!("measured over a {} round trip", took(s.hello_rtt));
    let text = if (skew * 10.0).round() == 0.0 {
        format!("this host's clock agrees with MongoDB's to 0.1s ({over})")
    } else {
        let how = if skew > 0.0 { "ahead of" } else { "behind" };
        format!(
            "this host's clock is {:.1}s {how} MongoDB's ({over})",
            skew.abs()
        )
    };
    let fix = "synchronize the clocks: sudo timedatectl set-ntp true (or chrony); on EC2, the Amazon Time Sync Service at 169.254.169.123";
    if skew.abs() > SKEW_FAIL_SECONDS {
        Outcome::fail(
            format!(
                "{text}: other nodes may count this one dead (AMS stamps its row with this clock)"
            ),
            fix,
        )
    } else if skew.abs() > SKEW_WARN_SECONDS {
        Outcome::warn(text, fix)
    } else {
        Outcome::ok(text)
    }
}

// ------------------------------------------------------------ registry.node

fn doc_str<'a>(d: &'a Document, key: &str) -> Option<&'a str> {
    d.get_str(key).ok()
}

/// The node id, the session and its document, or the outcome that says
/// why there is none.
/// This node's id, the session and its registry document (ams.nodegroup
/// shares it).
pub(super) fn this_node(env: &Env) -> Result<(String, &Arc<Session>, Option<Document>), Outcome> {
    if let Some(o) = not_joined(env) {
        return Err(o);
    }
    let Some((id, _)) = env.node_id() else {
        return Err(Outcome::fail(
            "this node has no id: agent.toml has no [node] id and /etc/machine-id is missing",
            "sudo ams-agent join … (it records the id)",
        ));
    };
    let s = session(env)?;
    match env.node_doc(&id) {
        Ok(d) => Ok((id, s, d.clone())),
        Err(e) => Err(Outcome::fail(
            e.clone(),
            "check the agent's MongoDB user may read the registry collection",
        )),
    }
}

fn age_text(age: f64) -> String {
    if age < 120.0 {
        format!("{age:.0}s ago")
    } else if age < 7200.0 {
        format!("{:.0}m ago", age / 60.0)
    } else {
        format!("{:.0}h ago", age / 3600.0)
    }
}

pub fn registry_node(env: &Env) -> Outcome {
    let (id, s, doc) = match this_node(env) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let where_ = format!("{}.{}", escape(&s.database), escape(&s.collection));
    let Some(doc) = doc else {
        return Outcome::fail(
            format!("node {id} has no document in {where_}"),
            "sudo ams-agent join … again (it registers the node), and check ams-agent.service",
        );
    };
    let live = alive::liveness(&doc, s.server_now());
    let state = doc_str(&doc, "state").unwrap_or("unknown");
    let limit = live.interval_seconds * ALIVE_INTERVALS as f64;
    let seen = match live.age_seconds {
        Some(a) if a < 0.0 => format!("last heartbeat {:.0}s in the future", -a),
        Some(a) => format!("last heartbeat {}", age_text(a)),
        None => "never heartbeated".into(),
    };
    let rule = format!(
        "alive while under {}: {ALIVE_INTERVALS} × {}",
        show_duration(Duration::from_secs_f64(limit)),
        show_duration(Duration::from_secs_f64(live.interval_seconds))
    );
    let details = live.warnings.iter().map(|w| escape(w).into_owned());
    let restart = "sudo systemctl restart ams-agent; see `journalctl -u ams-agent`";
    if !live.alive {
        return Outcome::fail(
            format!("node {id} is {}: {seen}, {rule}", escape(state)),
            if state == "left" {
                "sudo ams-agent join … again to bring the node back"
            } else {
                restart
            },
        )
        .with_details(details);
    }
    let last_error = doc.get_document("lastError").ok().map(|e| {
        format!(
            "{}: {}",
            e.get_str("step").unwrap_or(""),
            e.get_str("message").unwrap_or("")
        )
    });
    match state {
        "ready" => {
            Outcome::ok(format!("node {id} is ready, {seen} ({rule})")).with_details(details)
        }
        "draining" | "leaving" => Outcome::warn(
            format!("node {id} is {state} ({seen}): it is being taken out of the cluster"),
            "if that is not meant: sudo ams-agent join … again",
        ),
        other => Outcome::warn(
            format!(
                "node {id} is {} ({seen}){}",
                escape(other),
                last_error.map_or(String::new(), |e| format!("; last error: {}", escape(&e)))
            ),
            restart,
        )
        .with_details(details),
    }
}

// ------------------------------------------------------------ ams.clusternode

fn millis(d: &Document, key: &str) -> Option<i64> {
    match d.get(key)? {
        Bson::Int64(v) => Some(*v),
        Bson::Int32(v) => Some(*v as i64),
        Bson::Double(v) if v.is_finite() => Some(*v as i64),
        Bson::DateTime(t) => Some(t.timestamp_millis()),
        _ => None,
    }
}

pub fn ams_clusternode(env: &Env) -> Outcome {
    match env.ams() {
        Ok(f) => {
            if !matches!(jee::state(&f.jee), Ok(BlockState::Enabled)) {
                return Outcome::skip(
                    "AMS is not in cluster mode: it writes no clusternode row (see ams.mode)",
                );
            }
        }
        Err(e) => return Outcome::skip(format!("AMS's files cannot be read (see ams.mode): {e}")),
    }
    let s = match session(env) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let id = env.node_id().map(|(id, _)| id);
    let doc = id
        .as_deref()
        .and_then(|id| env.node_doc(id).as_ref().ok().cloned().flatten());
    let Some((ip, from)) = env.private_ip(doc.as_ref()) else {
        return Outcome::fail(
            "this node's private IPv4 is unknown (no [node] private_ip, no registry document, no default route)",
            "sudo ams-agent join --ip <private IPv4> …",
        );
    };
    let rows = env.block_on(s.registry.find_in(
        CLUSTER_DB,
        CLUSTERNODE,
        mongodb::bson::doc! { "ip": ip.to_string() },
        20,
    ));
    let rows = match rows {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if e.code == Some(13) => {
            return Outcome::warn(
                format!(
                    "the agent's MongoDB user may not read {CLUSTER_DB}.{CLUSTERNODE}: {}",
                    e.message
                ),
                "grant it read on clusterdb, or look at the AMS console's cluster page (:5080/#/cluster)",
            );
        }
        Ok(Err(e)) => {
            return Outcome::fail(e.message, "check that MongoDB answers (see mongo.reach)");
        }
        Err(e) => return Outcome::fail(e, "run it again"),
    };
    let Some(newest) = rows
        .iter()
        .filter_map(|r| millis(r, "lastUpdateTime"))
        .max()
    else {
        return Outcome::fail(
            format!(
                "AMS has no row for {ip} ({from}) in {CLUSTER_DB}.{CLUSTERNODE}: the other nodes do not see this one"
            ),
            "check AMS's log (/usr/local/antmedia/log/ant-media-server.log) for MongoDB errors, and that red5.properties' clusterdb.host is right (see ams.mode)",
        );
    };
    let now = s.server_now().timestamp_millis();
    let age = (now - newest) as f64 / 1000.0;
    let limit = CLUSTERNODE_PERIOD_SECONDS * ALIVE_INTERVALS as f64;
    let rule = format!(
        "AMS counts a node dead after {} ({ALIVE_INTERVALS} × {})",
        show_duration(Duration::from_secs_f64(limit)),
        show_duration(Duration::from_secs_f64(CLUSTERNODE_PERIOD_SECONDS))
    );
    let by = "by MongoDB's clock; AMS writes it with this node's";
    if age < -alive::CLOCK_TOLERANCE_SECONDS {
        return Outcome::fail(
            format!(
                "AMS's row for {ip} is {:.0}s in the future ({by}): this node's clock runs ahead (see clock.skew)",
                -age
            ),
            "synchronize the clock: sudo timedatectl set-ntp true",
        );
    }
    if age >= limit {
        return Outcome::fail(
            format!(
                "AMS's row for {ip} was last updated {} ({by}); {rule}",
                age_text(age)
            ),
            "AMS is not updating its row: see its log (/usr/local/antmedia/log/ant-media-server.log) for MongoDB errors, the clock (clock.skew), then sudo systemctl restart antmedia",
        );
    }
    Outcome::ok(format!(
        "AMS's row for {ip} was updated {} ({rule})",
        age_text(age.max(0.0))
    ))
}

// ------------------------------------------------------------ agent.service

pub fn agent_service(env: &Env) -> Outcome {
    if let Some(o) = not_joined(env) {
        return o;
    }
    let props = match active_unit(
        env,
        "ams-agent",
        "install the ams-agent package (apt install ./ams-agent_<version>_amd64.deb)",
        "sudo systemctl enable --now ams-agent; see `journalctl -u ams-agent`",
        ": nothing heartbeats this node",
    ) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let (active, sub) = (get(&props, "ActiveState"), get(&props, "SubState"));
    let enabled = get(&props, "UnitFileState");
    let boot = if enabled == "enabled" {
        String::new()
    } else {
        format!(
            ", {} at boot",
            if enabled.is_empty() {
                "unknown"
            } else {
                enabled
            }
        )
    };
    // Heartbeats: the document's age, when MongoDB can be asked.
    let beat = match this_node(env) {
        Ok((_, s, Some(doc))) => {
            let live = alive::liveness(&doc, s.server_now());
            let count = match doc.get("heartbeats") {
                Some(Bson::Int64(n)) => format!(" (#{n})"),
                Some(Bson::Int32(n)) => format!(" (#{n})"),
                _ => String::new(),
            };
            match live.age_seconds {
                Some(a) if live.alive => Ok(format!("last heartbeat {}{count}", age_text(a))),
                Some(a) => Err(format!(
                    "ams-agent.service is {active} ({sub}) but its last heartbeat is {} old",
                    show_duration(Duration::from_secs_f64(a.max(0.0)))
                )),
                None => Err(format!(
                    "ams-agent.service is {active} ({sub}) but it never heartbeated"
                )),
            }
        }
        Ok((_, _, None)) => Err(format!(
            "ams-agent.service is {active} ({sub}) but the registry has no document for this node"
        )),
        Err(o) if o.status == Status::Skip => Ok(format!("heartbeats not checked: {}", o.result)),
        Err(o) => Ok(format!("heartbeats not checked: {}", o.result)),
    };
    match beat {
        Ok(b) => {
            let text = format!("ams-agent.service is {active} ({sub}){boot}; {b}");
            if enabled == "enabled" || enabled.is_empty() {
                Outcome::ok(text)
            } else {
                Outcome::warn(text, "sudo systemctl enable ams-agent")
            }
        }
        Err(e) => Outcome::fail(
            e,
            "sudo systemctl restart ams-agent; see `journalctl -u ams-agent` (MongoDB errors, credentials)",
        ),
    }
}

// ------------------------------------------------------------ secrets.files

pub fn secrets_files(env: &Env) -> Outcome {
    use std::os::unix::fs::MetadataExt;
    let mut checked = Vec::new();
    let mut open = Vec::new();
    let mut fixes = Vec::new();
    let mut errors = Vec::new();
    // The agent's own password files: 0600 (or stricter).
    for f in [
        crate::config::PASSWORD_FILE,
        crate::mongod::setup::ADMIN_PASSWORD_FILE,
    ] {
        match std::fs::metadata(env.host.path(Path::new(f))) {
            Ok(m) => {
                let mode = m.mode() & 0o7777;
                checked.push(f.to_string());
                if mode & 0o077 != 0 {
                    open.push(format!("{f} is {mode:04o} (readable by others; want 0600)"));
                    fixes.push(format!("sudo chmod 600 {f}"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{f}: {e}")),
        }
    }
    // AMS's files that hold a password (a MongoDB URI with one, the
    // keystore password): never world-readable (AMS reads them as owner or
    // through its group).
    let ams = match env.ams() {
        Ok(files) => Some(files),
        Err(e) => {
            // Their passwords cannot be looked for: never "none stored".
            errors.push(format!("AMS's files ({e})"));
            None
        }
    };
    if let Some(files) = ams {
        let layout = &files.layout;
        let holds = |p: &crate::properties::Properties, keys: &[&str]| {
            keys.iter().any(|k| {
                p.get(k).is_some_and(|v| {
                    crate::uri::has_password(&v)
                        || (k.ends_with("pass") && !v.is_empty() && v != "password")
                })
            })
        };
        let mut candidates: Vec<PathBuf> = Vec::new();
        if holds(
            &files.red5,
            &[
                "clusterdb.host",
                "rtmps.keystorepass",
                "rtmps.truststorepass",
            ],
        ) {
            candidates.push(layout.red5_properties());
        }
        for (app, props) in &files.apps {
            if holds(props, &["db.host"]) {
                candidates.push(layout.webapp_properties(app));
            }
        }
        for p in candidates {
            match std::fs::metadata(env.host.path(&p)) {
                Ok(m) => {
                    let mode = m.mode() & 0o7777;
                    checked.push(p.display().to_string());
                    if mode & 0o004 != 0 {
                        open.push(format!(
                            "{} holds a password and is {mode:04o} (readable by every local user)",
                            p.display()
                        ));
                        fixes.push(format!("sudo chmod o-r {}", p.display()));
                    }
                }
                Err(e) => errors.push(format!("{}: {e}", p.display())),
            }
        }
    }
    if !open.is_empty() {
        let first = open[0].clone();
        return Outcome::fail(
            if open.len() == 1 {
                first
            } else {
                format!(
                    "{} files holding a password are readable by others: {first}",
                    open.len()
                )
            },
            fixes.join("; "),
        )
        .with_details(open);
    }
    if !errors.is_empty() {
        return Outcome::warn(
            format!("cannot examine {}", errors.join("; ")),
            if ams.is_none() {
                "run doctor as root; for AMS's files see ams.mode (is AMS installed under --ams-home?)"
            } else {
                "run doctor as root"
            },
        );
    }
    if checked.is_empty() {
        return Outcome::ok("no password is stored on this host");
    }
    Outcome::ok(format!("private: {}", checked.join(", ")))
}

// ------------------------------------------------------------ firewall

/// This node's private IPv4 (agent.toml, its registry document when
/// MongoDB can be asked, the default route).
fn my_ip(env: &Env) -> Option<Ipv4Addr> {
    let doc = match (env.session(), env.node_id()) {
        (Ok(_), Some((id, _))) => env.node_doc(&id).as_ref().ok().cloned().flatten(),
        _ => None,
    };
    env.private_ip(doc.as_ref()).map(|(ip, _)| ip)
}

fn default_iface(env: &Env) -> Option<String> {
    let table = env
        .host
        .read_optional(Path::new("/proc/net/route"))
        .ok()??;
    crate::host::net::default_route_interface(&String::from_utf8_lossy(&table))
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accepted".into(),
        Verdict::Drop { by } => format!("dropped by {}", escape(by)),
        Verdict::Unclear { rule, why } => format!(
            "unclear: it depends on `{}` ({})",
            escape(rule),
            escape(why)
        ),
    }
}

/// The applications' WebRTC UDP range: each one's
/// `settings.webrtc.portRange{Min,Max}`, else AMS's default.
fn webrtc_range(env: &Env) -> ((u16, u16), String) {
    let mut lo = u16::MAX;
    let mut hi = 0;
    let mut set = false;
    if let Ok(files) = env.ams() {
        for (_, p) in &files.apps {
            let get = |k: &str| {
                p.get(k)
                    .and_then(|v| v.trim().parse::<u16>().ok())
                    .filter(|v| *v > 0)
            };
            if let (Some(a), Some(b)) = (
                get("settings.webrtc.portRangeMin"),
                get("settings.webrtc.portRangeMax"),
            ) {
                lo = lo.min(a.min(b));
                hi = hi.max(a.max(b));
                set = true;
            }
        }
    }
    if set {
        (
            (lo, hi),
            "the applications' settings.webrtc.portRange".into(),
        )
    } else {
        (
            WEBRTC_PORTS,
            "AMS's default since 2.4.3; older AMS used 5000-65000".into(),
        )
    }
}

fn firewall_fix(proto: Proto, lo: u16, hi: u16, v: &Verdict) -> String {
    let by = match v {
        Verdict::Drop { by } | Verdict::Unclear { rule: by, .. } => by.as_str(),
        Verdict::Accept => "",
    };
    let range_ipt = if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}:{hi}")
    };
    let range_nft = if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    };
    if by.starts_with("nft") || by.contains("nft chain") {
        format!(
            "allow it in nftables, e.g. sudo nft insert rule inet filter input {} dport {range_nft} accept (and keep it in /etc/nftables.conf)",
            proto.name()
        )
    } else {
        format!(
            "sudo iptables -I INPUT -p {} --dport {range_ipt} -j ACCEPT (and persist it: sudo netfilter-persistent save)",
            proto.name()
        )
    }
}

pub fn firewall_webrtc(env: &Env) -> Outcome {
    let rules = env.firewall();
    if rules.none() {
        return Outcome::ok("no local firewall: neither iptables-save nor nft is installed");
    }
    let ((lo, hi), why_range) = webrtc_range(env);
    let dst = my_ip(env);
    let probe = Probe {
        proto: Proto::Udp,
        dport: lo,
        src: CLIENT,
        dst,
        iface: default_iface(env),
    };
    let runs = match firewall::over_range(rules, &probe, lo, hi) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::warn(
                format!("cannot read the firewall rules: {}", escape(&e)),
                "run doctor as root (iptables-save and nft need it)",
            );
        }
    };
    judge(
        Proto::Udp,
        lo,
        hi,
        &runs,
        &format!("from a client ({CLIENT})"),
        &why_range,
    )
}

fn judge(
    proto: Proto,
    lo: u16,
    hi: u16,
    runs: &[(u16, u16, Verdict)],
    from: &str,
    why_range: &str,
) -> Outcome {
    let span = |a: u16, b: u16| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        }
    };
    let what = format!(
        "{} {} ({why_range})",
        proto.name().to_uppercase(),
        span(lo, hi)
    );
    let blocked: Vec<&(u16, u16, Verdict)> = runs
        .iter()
        .filter(|r| matches!(r.2, Verdict::Drop { .. }))
        .collect();
    let unclear: Vec<&(u16, u16, Verdict)> = runs
        .iter()
        .filter(|r| matches!(r.2, Verdict::Unclear { .. }))
        .collect();
    let details: Vec<String> = runs
        .iter()
        .map(|(a, b, v)| format!("{} {}: {}", proto.name(), span(*a, *b), verdict_text(v)))
        .collect();
    if let Some((a, b, v)) = blocked.first() {
        return Outcome::fail(
            format!(
                "the local firewall drops {what} {from}: {} {}",
                span(*a, *b),
                verdict_text(v)
            ),
            firewall_fix(proto, *a, *b, v),
        )
        .with_details(details);
    }
    if let Some((a, b, v)) = unclear.first() {
        return Outcome::warn(
            format!(
                "cannot tell whether the local firewall lets {what} through {from}: {} {}",
                span(*a, *b),
                verdict_text(v)
            ),
            firewall_fix(proto, *a, *b, v),
        )
        .with_details(details);
    }
    Outcome::ok(format!("the local firewall lets {what} through {from}"))
}

pub fn firewall_cluster(env: &Env) -> Outcome {
    let rules = env.firewall();
    if rules.none() {
        return Outcome::ok("no local firewall: neither iptables-save nor nft is installed");
    }
    let mine = my_ip(env);
    // The other nodes' addresses, from the registry when it can be asked;
    // else this node's own (a node of the same network) as a stand-in.
    let mut sources: Vec<Ipv4Addr> = Vec::new();
    if let Ok(s) = env.session() {
        if let Ok(Ok((docs, _))) = env.block_on(s.registry.list()) {
            for d in docs {
                if let Some(ip) = d.get_str("privateIp").ok().and_then(|s| s.parse().ok()) {
                    if Some(ip) != mine && !sources.contains(&ip) && sources.len() < 32 {
                        sources.push(ip);
                    }
                }
            }
        }
    }
    let (sources, from) = if sources.is_empty() {
        match mine {
            Some(ip) => (
                vec![ip],
                format!("from this node's network ({ip}; no other node is registered)"),
            ),
            None => (
                vec![Ipv4Addr::new(10, 0, 0, 2)],
                "from a private address (10.0.0.2; this node's is unknown)".into(),
            ),
        }
    } else {
        let n = sources.len();
        let nodes = if n == 1 { "node" } else { "nodes" };
        (sources, format!("from the {n} other registered {nodes}"))
    };
    let iface = default_iface(env);
    let mut worst: Option<(Ipv4Addr, Verdict)> = None;
    for src in &sources {
        let v = match rules.verdict(&Probe {
            proto: Proto::Tcp,
            dport: CLUSTER_PORT,
            src: *src,
            dst: mine,
            iface: iface.clone(),
        }) {
            Ok(v) => v,
            Err(e) => {
                return Outcome::warn(
                    format!("cannot read the firewall rules: {}", escape(&e)),
                    "run doctor as root (iptables-save and nft need it)",
                );
            }
        };
        let rank = |v: &Verdict| match v {
            Verdict::Drop { .. } => 2,
            Verdict::Unclear { .. } => 1,
            Verdict::Accept => 0,
        };
        if worst.as_ref().is_none_or(|(_, w)| rank(&v) > rank(w)) {
            worst = Some((*src, v));
        }
    }
    let Some((src, v)) = worst else {
        return Outcome::ok("no source to test");
    };
    let what = format!("TCP {CLUSTER_PORT} (AMS nodes talk to each other on it)");
    match &v {
        Verdict::Accept => Outcome::ok(format!("the local firewall lets {what} through {from}")),
        Verdict::Drop { .. } => Outcome::fail(
            format!(
                "the local firewall drops {what} from {src}: {}",
                verdict_text(&v)
            ),
            firewall_fix(Proto::Tcp, CLUSTER_PORT, CLUSTER_PORT, &v),
        ),
        Verdict::Unclear { .. } => Outcome::warn(
            format!(
                "cannot tell whether the local firewall lets {what} through from {src}: {}",
                verdict_text(&v)
            ),
            firewall_fix(Proto::Tcp, CLUSTER_PORT, CLUSTER_PORT, &v),
        ),
    }
}

// ------------------------------------------------------------ cert.*

/// The certificate AMS serves: red5.properties' http.ssl_certificate_file
/// (relative to the install), when the https connector is on or the file
/// is there.
struct Served {
    path: PathBuf,
    pem: Vec<u8>,
    info: crate::cert::inspect::CertInfo,
    leaf: Vec<u8>,
}

fn served(env: &Env) -> Result<Served, Outcome> {
    let files = env
        .ams()
        .as_ref()
        .map_err(|e| Outcome::skip(format!("AMS's files cannot be read (see ams.mode): {e}")))?;
    let rel = files
        .red5
        .get("http.ssl_certificate_file")
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "conf/fullchain.pem".into());
    let path = if Path::new(&rel).is_absolute() {
        PathBuf::from(&rel)
    } else {
        files.layout.home.join(&rel)
    };
    let https = jee::https_enabled(&files.jee);
    let pem = match env.host.read_optional(&path) {
        Ok(Some(b)) => b,
        Ok(None) if !https => {
            return Err(Outcome::skip(
                "AMS serves no certificate (the https connector is off and there is none installed)",
            ));
        }
        Ok(None) => {
            return Err(Outcome::fail(
                format!(
                    "the https connector is on, but {} does not exist",
                    path.display()
                ),
                "sudo ams-agent cert --domain <name> (installs one)",
            ));
        }
        Err(e) => {
            return Err(Outcome::fail(format!("{e:#}"), "run doctor as root"));
        }
    };
    let certs = crate::cert::inspect::parse_certificates(&pem).map_err(|e| {
        Outcome::fail(
            format!("{}: {e:#}", path.display()),
            "sudo ams-agent cert deploy --lineage /etc/letsencrypt/live/<name> (reinstalls it)",
        )
    })?;
    let info = crate::cert::inspect::CertInfo::from_der(&certs[0]).map_err(|e| {
        Outcome::fail(
            format!("{}: {e:#}", path.display()),
            "reinstall the certificate",
        )
    })?;
    Ok(Served {
        path,
        leaf: certs[0].clone(),
        pem,
        info,
    })
}

fn unix_now() -> i64 {
    crate::config::unix_now() as i64
}

fn date(secs: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64),
    )
    .to_string()
}

/// Days left of a certificate as a check outcome (shared with the lb).
pub fn expiry_outcome(what: &str, info: &crate::cert::inspect::CertInfo, fix: &str) -> Outcome {
    let days = info.days_left(unix_now());
    let names = escape(&info.domains.join(", ")).into_owned();
    if days < 0 {
        Outcome::fail(
            format!(
                "{what} ({names}) expired {} days ago, on {}",
                // Whole days since it expired (floor of the elapsed time,
                // not of the negative remainder: 3 days and a second ago
                // is "3 days ago").
                (unix_now() - info.not_after).div_euclid(86_400),
                date(info.not_after)
            ),
            fix,
        )
    } else if days < 14 {
        Outcome::fail(
            format!(
                "{what} ({names}) expires in {days} days, on {}",
                date(info.not_after)
            ),
            fix,
        )
    } else if days < 30 {
        Outcome::warn(
            format!(
                "{what} ({names}) expires in {days} days, on {} (certbot renews at 30 days left: renewal is not happening)",
                date(info.not_after)
            ),
            fix,
        )
    } else {
        Outcome::ok(format!(
            "{what} ({names}) is valid for {days} more days, until {}",
            date(info.not_after)
        ))
    }
}

pub fn cert_expiry(env: &Env) -> Outcome {
    let s = match served(env) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let _ = &s.pem;
    expiry_outcome(
        &format!("the certificate AMS serves from {}", s.path.display()),
        &s.info,
        "sudo certbot renew (its deploy hook installs it into AMS), then `ams-agent cert status`",
    )
}

/// Whether a certificate name covers `host` (`*.example.com` covers one label).
pub fn name_covers(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    let h = h.trim_end_matches('.');
    match p.strip_prefix("*.") {
        Some(rest) => h
            .split_once('.')
            .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
        None => p == h,
    }
}

pub fn cert_names(env: &Env) -> Outcome {
    let s = match served(env) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let Ok(files) = env.ams() else {
        return Outcome::skip("AMS's files cannot be read (see ams.mode)");
    };
    let names = escape(&s.info.domains.join(", ")).into_owned();
    let server = files.red5.get("server.name").unwrap_or_default();
    if server.trim().is_empty() {
        return Outcome::warn(
            format!("server.name in red5.properties is empty; the certificate names {names}"),
            "sudo ams-agent cert --domain <name> (sets server.name with the certificate)",
        );
    }
    if s.info.domains.iter().any(|d| name_covers(d, &server)) {
        Outcome::ok(format!(
            "the certificate covers server.name {} ({names})",
            escape(&server)
        ))
    } else {
        Outcome::fail(
            format!(
                "server.name is {}, but the certificate AMS serves names {names}: browsers refuse it",
                escape(&server)
            ),
            format!("sudo ams-agent cert --domain {}", escape(&server)),
        )
    }
}

/// A certbot lineage: its name, its leaf (DER) and what that says, and
/// the text of its renewal configuration.
type Lineage = (
    String,
    Option<Vec<u8>>,
    Option<crate::cert::inspect::CertInfo>,
    String,
);

/// certbot's lineages under the root.
fn lineages(env: &Env) -> Vec<Lineage> {
    let dir = Path::new(crate::cert::certbot::CONFIG_DIR).join("renewal");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(env.host.path(&dir)) else {
        return out;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| n.strip_suffix(".conf").map(str::to_string))
        .collect();
    names.sort();
    for name in names {
        let conf = env
            .host
            .read_optional(&dir.join(format!("{name}.conf")))
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let cert = Path::new(crate::cert::certbot::CONFIG_DIR)
            .join("live")
            .join(&name)
            .join("cert.pem");
        let der = env
            .host
            .read_optional(&cert)
            .ok()
            .flatten()
            .and_then(|b| crate::cert::inspect::parse_certificates(&b).ok())
            .and_then(|c| c.into_iter().next());
        let info = der
            .as_ref()
            .and_then(|d| crate::cert::inspect::CertInfo::from_der(d).ok());
        out.push((name, der, info, conf));
    }
    out
}

/// Whether a unit is active per `systemctl show`.
fn active(env: &Env, unit: &str) -> Result<bool, String> {
    env.unit(unit).map(|p| get(&p, "ActiveState") == "active")
}

/// certbot's timer (Debian's package, or the snap's) is active.
pub fn renewal_timer(env: &Env) -> Result<Option<&'static str>, String> {
    let mut last_err = None;
    for t in ["certbot.timer", "snap.certbot.renew.timer"] {
        match active(env, t) {
            Ok(true) => return Ok(Some(t)),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

pub fn cert_renewal(env: &Env) -> Outcome {
    let s = match served(env) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let all = lineages(env);
    let mine = all
        .iter()
        .find(|(_, der, _, _)| der.as_deref() == Some(s.leaf.as_slice()));
    let Some((name, _, _, conf)) = mine else {
        // A lineage for the same names that holds another (newer)
        // certificate: a renewal that never reached AMS.
        let newer = all.iter().find(|(_, _, info, _)| {
            info.as_ref().is_some_and(|i| {
                i.not_after > s.info.not_after
                    && s.info.domains.iter().any(|d| i.domains.contains(d))
            })
        });
        return match newer {
            Some((name, _, info, _)) => Outcome::fail(
                format!(
                    "certbot renewed {} (valid until {}), but AMS still serves the older certificate (until {}): the renewal never reached AMS",
                    escape(name),
                    date(info.as_ref().map_or(0, |i| i.not_after)),
                    date(s.info.not_after)
                ),
                format!(
                    "sudo ams-agent cert deploy --lineage /etc/letsencrypt/live/{}",
                    escape(name)
                ),
            ),
            None => Outcome::warn(
                format!(
                    "no certbot lineage under /etc/letsencrypt holds the certificate AMS serves ({}): nothing renews it",
                    s.path.display()
                ),
                "sudo ams-agent cert --domain <name> (certbot then renews it and its deploy hook installs it)",
            ),
        };
    };
    let hook = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("renew_hook"))
        .filter_map(|r| r.trim_start().strip_prefix('='))
        .map(str::trim)
        .next();
    let hook_ok = hook.is_some_and(|h| h.contains("ams-agent") && h.contains("cert deploy"));
    let timer = renewal_timer(env);
    let name = escape(name).into_owned();
    match (timer, hook_ok) {
        (Ok(Some(t)), true) => Outcome::ok(format!(
            "{t} is active and certbot's renewal of {name} runs `{}`",
            escape(hook.unwrap_or(""))
        )),
        (Ok(None), _) => Outcome::fail(
            "certbot.timer is not active: nothing renews the certificate",
            "sudo systemctl enable --now certbot.timer",
        ),
        (Err(e), _) => Outcome::warn(
            format!("cannot ask systemd about certbot.timer: {e}"),
            "run doctor on the host itself, where systemd is PID 1",
        ),
        (Ok(Some(_)), false) => Outcome::fail(
            format!(
                "certbot's renewal of {name} runs {}: renewals will not reach AMS",
                hook.map_or("no deploy hook".to_string(), |h| format!(
                    "`{}`, not ams-agent cert deploy",
                    escape(h)
                ))
            ),
            format!(
                "sudo ams-agent cert --domain {} (stores the deploy hook)",
                escape(s.info.domains.first().map_or("<name>", |d| d.as_str()))
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_files_never_says_none_stored_when_ams_files_cannot_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let settings = super::super::env::test_settings();
        let env = Env::new(
            dir.path(),
            Arc::new(crate::host::runner::RecordingRunner::new()),
            settings,
        );
        assert!(env.ams().is_err(), "no AMS in an empty tree");
        let o = secrets_files(&env);
        assert_eq!(o.status, Status::Warn, "{}", o.result);
        assert!(
            o.result.contains("cannot examine AMS's files"),
            "{}",
            o.result
        );
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("*.example.com", "live.example.com"));
        assert!(!name_covers("*.example.com", "a.live.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(name_covers("Live.Example.com", "live.example.com."));
    }

    #[test]
    fn limits_read_like_systemctl_prints_them() {
        assert_eq!(limit("infinity"), Some(u64::MAX));
        assert_eq!(limit("65536"), Some(65536));
        let mut p = super::super::env::UnitProps::new();
        p.insert("LimitNOFILE".into(), "524288".into());
        p.insert("LimitNOFILESoft".into(), "1024".into());
        assert_eq!(soft_limit(&p, "LimitNOFILE"), Some(1024));
        p.remove("LimitNOFILESoft");
        assert_eq!(soft_limit(&p, "LimitNOFILE"), Some(524288));
    }
}
