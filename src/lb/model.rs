//! The typed model both renderers work from: which nodes are in rotation
//! (per group, with their state), where the balancer listens, and the
//! settings of the section the agent owns. Nothing here is text: the
//! renderers turn it into `haproxy.cfg` / `nginx.conf` blocks.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::node::Role;

/// The balancer the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Haproxy,
    Nginx,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
        }
    }

    /// The systemd unit that runs it (Debian's).
    pub fn unit(self) -> &'static str {
        self.name()
    }
}

/// A node's id as the balancer uses it: a server name and a cookie value,
/// so only letters, digits, `-` and `.` (what `join` registers: cloud instance
/// ids such as `i-…`, `gcp-…` or an Oracle OCID, machine ids), starting
/// with a letter or digit, at most 160. Anything
/// else is refused, never rendered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    pub fn parse(id: &str) -> Option<NodeId> {
        let first_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        (first_ok && crate::config::valid_node_id(id)).then(|| NodeId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        NodeId::parse(&s).ok_or_else(|| format!("`{}` is not a node id", s.escape_debug()))
    }
}

impl From<NodeId> for String {
    fn from(n: NodeId) -> String {
        n.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node's address as the registry gave it, checked: an IP literal that a
/// balancer can connect to (not unspecified, multicast or broadcast).
/// Loopback is allowed (tests, and a node on the balancer's own host).
pub fn parse_node_addr(s: &str) -> Option<IpAddr> {
    let ip: IpAddr = s.trim().parse().ok()?;
    if s.trim() != s {
        return None;
    }
    let ok = match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    };
    ok.then_some(ip)
}

/// `ip:port` as both balancers write it (`[v6]:port`).
pub fn socket(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// What a member does in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Takes new connections.
    Ready,
    /// Keeps the connections (and sticky clients) it has, takes no new
    /// ones (HAProxy `drain`; Nginx has no such state: the node is out).
    Draining,
}

impl MemberState {
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Ready => "ready",
            MemberState::Draining => "draining",
        }
    }
}

/// One node in rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub addr: IpAddr,
    pub state: MemberState,
}

/// The nodes in rotation, per role, each list sorted by node id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub origin: Vec<Member>,
    pub edge: Vec<Member>,
}

impl Membership {
    pub fn group(&self, role: Role) -> &Vec<Member> {
        match role {
            Role::Origin => &self.origin,
            Role::Edge => &self.edge,
        }
    }

    pub fn group_mut(&mut self, role: Role) -> &mut Vec<Member> {
        match role {
            Role::Origin => &mut self.origin,
            Role::Edge => &mut self.edge,
        }
    }

    pub fn sort(&mut self) {
        self.origin.sort_by(|a, b| a.id.cmp(&b.id));
        self.edge.sort_by(|a, b| a.id.cmp(&b.id));
    }

    pub fn is_empty(&self) -> bool {
        self.origin.is_empty() && self.edge.is_empty()
    }

    /// Every member with its role, origins first.
    pub fn all(&self) -> impl Iterator<Item = (Role, &Member)> {
        self.origin
            .iter()
            .map(|m| (Role::Origin, m))
            .chain(self.edge.iter().map(|m| (Role::Edge, m)))
    }

    pub fn find(&self, id: &NodeId) -> Option<(Role, &Member)> {
        self.all().find(|(_, m)| &m.id == id)
    }
}

/// The listeners the balancer offers, as AMS's guides lay them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Listener {
    /// 80: publishing (origins), HTTP and WebSocket.
    Publish,
    /// 443: the same over TLS (with a certificate).
    PublishTls,
    /// 5080: playing (edges).
    Play,
    /// 5443: the same over TLS.
    PlayTls,
    /// 4444: the dashboard, every node (TLS when there is a certificate).
    Dashboard,
    /// 1935/tcp: RTMP to the origins.
    Rtmp,
    /// 4200/udp: SRT to the origins (Nginx only: HAProxy has no UDP).
    Srt,
}

impl Listener {
    pub const ALL: [Listener; 7] = [
        Listener::Publish,
        Listener::PublishTls,
        Listener::Play,
        Listener::PlayTls,
        Listener::Dashboard,
        Listener::Rtmp,
        Listener::Srt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Listener::Publish => "publish",
            Listener::PublishTls => "publish-tls",
            Listener::Play => "play",
            Listener::PlayTls => "play-tls",
            Listener::Dashboard => "dashboard",
            Listener::Rtmp => "rtmp",
            Listener::Srt => "srt",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Listener::Publish => 80,
            Listener::PublishTls => 443,
            Listener::Play => 5080,
            Listener::PlayTls => 5443,
            Listener::Dashboard => 4444,
            Listener::Rtmp => 1935,
            Listener::Srt => 4200,
        }
    }

    pub fn from_name(s: &str) -> Option<Listener> {
        Listener::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// Where one listener binds: an address (None: every address) and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub addr: Option<IpAddr>,
    pub port: u16,
}

/// `--listen NAME=[ADDR:]PORT` or `NAME=off`.
pub fn parse_listen(s: &str) -> Result<(Listener, Option<Bind>), String> {
    let names = Listener::ALL.map(Listener::name).join(", ");
    let Some((name, value)) = s.split_once('=') else {
        return Err(format!(
            "expected NAME=[ADDR:]PORT or NAME=off (NAME one of {names})"
        ));
    };
    let Some(listener) = Listener::from_name(name) else {
        return Err(format!(
            "`{}` is no listener (one of {names})",
            name.escape_debug()
        ));
    };
    if value == "off" {
        return Ok((listener, None));
    }
    let bad = || {
        format!(
            "`{}`: expected a port, ADDR:PORT, [IPv6]:PORT or off",
            value.escape_debug()
        )
    };
    let port_of = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    let bind = if let Some(port) = port_of(value) {
        Bind { addr: None, port }
    } else if let Ok(sa) = value.parse::<std::net::SocketAddr>() {
        if sa.port() == 0 {
            return Err(bad());
        }
        Bind {
            addr: Some(sa.ip()),
            port: sa.port(),
        }
    } else {
        return Err(bad());
    };
    Ok((listener, Some(bind)))
}

/// The ports AMS listens on, on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePorts {
    pub http: u16,
    pub rtmp: u16,
    pub srt: u16,
}

impl Default for NodePorts {
    fn default() -> Self {
        NodePorts {
            http: 5080,
            rtmp: 1935,
            srt: 4200,
        }
    }
}

/// The TLS material, when a certificate is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// HAProxy: the folder of PEMs (`crt <dir>`, every `*.pem` in it).
    pub dir: PathBuf,
    /// Nginx: the one PEM (chain and key) it serves.
    pub pem: PathBuf,
    /// A digest of the PEM's content: a renewed certificate changes the
    /// rendered file, so the balancer reloads it.
    pub digest: String,
}

/// Everything the rendered section depends on besides the members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: BTreeMap<Listener, Option<Bind>>,
    pub ports: NodePorts,
    pub tls: Option<Tls>,
    /// HAProxy `hard-stop-after` / Nginx `worker_shutdown_timeout`: how long
    /// an old worker keeps its connections after a reload.
    pub hard_stop_after: Duration,
    /// HAProxy `timeout tunnel` / Nginx proxy timeouts for WebSocket.
    pub tunnel_timeout: Duration,
    /// HAProxy: the server-state file the agent writes before a reload.
    pub state_file: PathBuf,
    /// HAProxy: the least number of spare slots per backend.
    pub spare_slots: usize,
}

impl Settings {
    /// The bind of a listener, None when turned off (or a TLS listener
    /// without a certificate).
    pub fn bind(&self, l: Listener) -> Option<Bind> {
        if matches!(l, Listener::PublishTls | Listener::PlayTls) && self.tls.is_none() {
            return None;
        }
        match self.listen.get(&l) {
            Some(b) => *b,
            None => Some(Bind {
                addr: None,
                port: l.default_port(),
            }),
        }
    }
}

/// Seconds as both balancers take them (`3600s`).
pub fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// Settings for the renderers' unit tests: every default.
#[cfg(test)]
pub fn test_settings() -> Settings {
    Settings {
        listen: BTreeMap::new(),
        ports: NodePorts::default(),
        tls: None,
        hard_stop_after: Duration::from_secs(3600),
        tunnel_timeout: Duration::from_secs(3600),
        state_file: PathBuf::from("/var/lib/haproxy/ams-agent-server-state"),
        spare_slots: 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_and_addresses_are_checked() {
        assert!(NodeId::parse("i-0abc123").is_some());
        assert!(NodeId::parse("0123456789abcdef0123456789abcdef").is_some());
        // Other clouds' ids (issue 17): an Oracle OCID, a prefixed number.
        assert!(
            NodeId::parse(
                "ocid1.instance.oc1.phx.anyhqljtexampleuniqueid0123456789abcdefghijklmnopqrstuv"
            )
            .is_some()
        );
        assert!(NodeId::parse("gcp-4520031799277581759").is_some());
        for bad in [
            "",
            "-x",
            "a b",
            "a;b",
            "a\nb",
            "ünï",
            "x}",
            "a#b",
            "a_b",
            &"a".repeat(161),
        ] {
            assert!(NodeId::parse(bad).is_none(), "{bad:?}");
        }
        assert!(parse_node_addr("10.0.1.5").is_some());
        assert!(parse_node_addr("fd00::5").is_some());
        assert!(parse_node_addr("127.0.0.2").is_some());
        for bad in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "10.0.1.5:80",
            " 10.0.1.5",
            "10.0.1.5\n",
            "host",
            "10.0.1.5; server evil",
        ] {
            assert!(parse_node_addr(bad).is_none(), "{bad:?}");
        }
        assert_eq!(socket("fd00::5".parse().unwrap(), 80), "[fd00::5]:80");
    }

    #[test]
    fn listen_flags_parse() {
        assert_eq!(
            parse_listen("play=127.0.0.1:18080").unwrap(),
            (
                Listener::Play,
                Some(Bind {
                    addr: Some("127.0.0.1".parse().unwrap()),
                    port: 18080
                })
            )
        );
        assert_eq!(
            parse_listen("rtmp=1936").unwrap().1.unwrap().addr,
            None::<IpAddr>
        );
        assert_eq!(parse_listen("srt=off").unwrap(), (Listener::Srt, None));
        assert_eq!(
            parse_listen("dashboard=[::1]:4445")
                .unwrap()
                .1
                .unwrap()
                .port,
            4445
        );
        for bad in ["x=80", "play", "play=0", "play=host:80", "play=80;"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }
}
