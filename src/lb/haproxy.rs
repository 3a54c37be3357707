//! HAProxy: the section of `haproxy.cfg` the agent owns, rendered from the
//! model; the server slots that let membership change through the Runtime
//! API without a reload; the commands that bring a running HAProxy to what
//! the file says; the server-state file written before a reload.
//!
//! Measured on HAProxy 2.6 (Debian 12), which this follows:
//! - `set server <b>/<s> addr <ip> port <p>` works on a server declared with
//!   an IP literal; `set server … state ready|drain|maint` moves it; neither
//!   can rename a server or set its cookie. So every backend has spare
//!   slots, and a slot filled at run time answers with a dynamic cookie
//!   (`cookie … dynamic`, a hash of its address) until the next reload
//!   renders it under the node's id.
//! - `server-state-file` restores admin state and port across a reload,
//!   matched by server name, and would bring a placeholder slot back UP:
//!   the agent writes that file itself from `show servers state`, keeping
//!   only servers whose name and address the new file gives them.
//! - a drained server is also written with `weight 0` (still reachable by
//!   its cookie, no new clients), so a restart without the state file
//!   keeps it drained.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::blocks::Markers;
use super::model::{
    Listener, Member, MemberState, Membership, NodeId, NodePorts, Settings, secs, socket,
};
use crate::node::Role;

pub const MARKERS: Markers = Markers {
    begin: "# BEGIN ams-agent lb",
    end: "# END ams-agent lb",
};

/// Where an empty slot points: nothing answers on port 1, so even a slot
/// brought back up by mistake fails its check instead of reaching the
/// balancer's own frontends (a placeholder on :5080 would).
pub const PLACEHOLDER: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::LOCALHOST), 1);

/// The backends of the section, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Origin,
    Edge,
    Dashboard,
    Rtmp,
}

impl Backend {
    pub const ALL: [Backend; 4] = [
        Backend::Origin,
        Backend::Edge,
        Backend::Dashboard,
        Backend::Rtmp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Origin => "ams_origin",
            Backend::Edge => "ams_edge",
            Backend::Dashboard => "ams_dashboard",
            Backend::Rtmp => "ams_rtmp",
        }
    }

    pub fn from_name(s: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == s)
    }

    pub fn roles(self) -> &'static [Role] {
        match self {
            Backend::Origin | Backend::Rtmp => &[Role::Origin],
            Backend::Edge => &[Role::Edge],
            Backend::Dashboard => &[Role::Origin, Role::Edge],
        }
    }

    pub fn port(self, p: &NodePorts) -> u16 {
        match self {
            Backend::Rtmp => p.rtmp,
            _ => p.http,
        }
    }

    /// The persistence cookie (none for RTMP, which is TCP).
    pub fn cookie(self) -> Option<&'static str> {
        match self {
            Backend::Origin => Some("AMS_ORIGIN"),
            Backend::Edge => Some("AMS_EDGE"),
            Backend::Dashboard => Some("AMS_DASHBOARD"),
            Backend::Rtmp => None,
        }
    }
}

/// The members of a backend, sorted by node id.
pub fn members_of(b: Backend, m: &Membership) -> Vec<Member> {
    let mut v: Vec<Member> = b
        .roles()
        .iter()
        .flat_map(|r| m.group(*r).iter().cloned())
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// One `server` line: a name and cookie fixed when the file was last
/// loaded, and the node it serves now (None: an empty slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub cookie: Option<String>,
    pub occupant: Option<Member>,
}

/// Every backend's servers, in file order.
pub type Layout = BTreeMap<Backend, Vec<Slot>>;

/// The members in rotation according to a layout.
pub fn membership(layout: &Layout) -> Membership {
    let mut m = Membership::default();
    for (b, role) in [(Backend::Origin, Role::Origin), (Backend::Edge, Role::Edge)] {
        if let Some(slots) = layout.get(&b) {
            *m.group_mut(role) = slots.iter().filter_map(|s| s.occupant.clone()).collect();
        }
    }
    m.sort();
    m
}

/// How many slots a backend of `n` members gets at a reload.
pub fn capacity(n: usize, spare: usize) -> usize {
    n + spare.max(n.div_ceil(2))
}

/// The layout a reload starts from: members under their own ids (cookie =
/// node id), then spare slots `_slot1`… (`_` never starts a node id).
pub fn fresh(desired: &Membership, spare: usize) -> Layout {
    let mut layout = Layout::new();
    for b in Backend::ALL {
        let members = members_of(b, desired);
        let total = capacity(members.len(), spare);
        let mut slots: Vec<Slot> = members
            .into_iter()
            .map(|m| Slot {
                name: m.id.to_string(),
                cookie: b.cookie().map(|_| m.id.to_string()),
                occupant: Some(m),
            })
            .collect();
        let mut n = 0;
        while slots.len() < total {
            n += 1;
            slots.push(Slot {
                name: format!("_slot{n}"),
                cookie: None,
                occupant: None,
            });
        }
        layout.insert(b, slots);
    }
    layout
}

/// The same servers with `desired` in them, changing only what the
/// Runtime API can change (addresses and states). None when a backend has
/// no free slot left for a new member (a reload, with more slots).
pub fn update(prev: &Layout, desired: &Membership) -> Option<Layout> {
    let mut out = Layout::new();
    for b in Backend::ALL {
        let mut slots = prev.get(&b)?.clone();
        let mut want: BTreeMap<NodeId, Member> = members_of(b, desired)
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        for s in &mut slots {
            s.occupant = s.occupant.take().and_then(|occ| want.remove(&occ.id));
        }
        for (id, m) in want {
            let free: Vec<usize> = (0..slots.len())
                .filter(|&i| slots[i].occupant.is_none())
                .collect();
            // The slot that carried this node before (its name and cookie),
            // else a spare one, else any free slot.
            let pick = free
                .iter()
                .copied()
                .find(|&i| slots[i].name == id.as_str())
                .or_else(|| {
                    free.iter()
                        .copied()
                        .find(|&i| slots[i].name.starts_with("_slot"))
                })
                .or_else(|| free.first().copied())?;
            slots[pick].occupant = Some(m);
        }
        out.insert(b, slots);
    }
    Some(out)
}

fn bind_line(out: &mut String, bind: super::model::Bind, extra: &str) {
    let addr = match bind.addr {
        None => String::new(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
    };
    let _ = writeln!(out, "    bind {addr}:{}{extra}", bind.port);
}

/// The whole marked section.
pub fn render(s: &Settings, layout: &Layout) -> String {
    let mut o = String::with_capacity(256 + 120 * layout.values().map(Vec::len).sum::<usize>());
    o.push_str(MARKERS.begin);
    o.push_str(
        ": rendered by `ams-agent lb haproxy` from the node registry; edits inside are overwritten\n",
    );
    o.push_str("# SRT (4200/udp) is not balanced here: HAProxy has no UDP (`ams-agent lb nginx` balances it).\n");
    let _ = write!(
        o,
        "global\n    hard-stop-after {}\n    server-state-file {}\n\n",
        secs(s.hard_stop_after),
        s.state_file.display()
    );
    let _ = write!(
        o,
        "defaults ams-agent\n    mode http\n    log global\n    option dontlognull\n    \
         timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n    \
         timeout client-fin 30s\n    timeout http-request 10s\n    timeout queue 30s\n    \
         timeout tunnel {}\n\n",
        secs(s.tunnel_timeout)
    );
    let crt = s
        .tls
        .as_ref()
        .map(|t| {
            format!(
                " ssl crt {}/",
                t.dir.display().to_string().trim_end_matches('/')
            )
        })
        .unwrap_or_default();
    let http_frontends = [
        (
            "ams_publish",
            Listener::Publish,
            Listener::PublishTls,
            Backend::Origin,
            Some(("edge", Backend::Edge)),
        ),
        (
            "ams_play",
            Listener::Play,
            Listener::PlayTls,
            Backend::Edge,
            Some(("origin", Backend::Origin)),
        ),
    ];
    for (name, plain, tls, default, other) in http_frontends {
        let (p, t) = (s.bind(plain), s.bind(tls));
        if p.is_none() && t.is_none() {
            continue;
        }
        let _ = writeln!(o, "frontend {name}");
        if let Some(b) = p {
            bind_line(&mut o, b, "");
        }
        if let Some(b) = t {
            bind_line(&mut o, b, &crt);
        }
        o.push_str("    option httplog\n    option forwardfor\n");
        o.push_str("    http-request set-header X-Forwarded-Proto https if { ssl_fc }\n");
        if let Some((target, b)) = other {
            let _ = writeln!(
                o,
                "    use_backend {} if {{ urlp(target) -m str {target} }}",
                b.name()
            );
        }
        let _ = writeln!(o, "    default_backend {}\n", default.name());
    }
    if let Some(b) = s.bind(Listener::Dashboard) {
        o.push_str("frontend ams_dashboard\n");
        bind_line(&mut o, b, &crt);
        o.push_str("    option httplog\n    option forwardfor\n");
        let _ = writeln!(o, "    default_backend {}\n", Backend::Dashboard.name());
    }
    if let Some(b) = s.bind(Listener::Rtmp) {
        o.push_str("frontend ams_rtmp\n    mode tcp\n    option tcplog\n");
        bind_line(&mut o, b, "");
        let _ = writeln!(o, "    default_backend {}\n", Backend::Rtmp.name());
    }
    for b in Backend::ALL {
        let _ = writeln!(o, "backend {}", b.name());
        if b == Backend::Rtmp {
            o.push_str("    mode tcp\n");
        }
        o.push_str("    balance leastconn\n    load-server-state-from-file global\n");
        if let Some(c) = b.cookie() {
            let _ = writeln!(
                o,
                "    cookie {c} insert indirect nocache httponly dynamic\n    dynamic-cookie-key ams-agent-{}",
                b.name()
            );
        }
        // HTTP/1.1 with a Host header: what every HTTP server answers.
        o.push_str(
            "    option httpchk\n    http-check send meth GET uri / ver HTTP/1.1 hdr Host ams-agent\n",
        );
        let check_port = if b == Backend::Rtmp {
            format!(" port {}", s.ports.http)
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "    default-server check{check_port} inter 2s fastinter 1s downinter 2s rise 2 fall 2"
        );
        for slot in layout.get(&b).map(Vec::as_slice).unwrap_or_default() {
            server_line(&mut o, b, slot, &s.ports);
        }
        o.push('\n');
    }
    o.push_str(MARKERS.end);
    o.push('\n');
    o
}

fn server_line(o: &mut String, b: Backend, slot: &Slot, ports: &NodePorts) {
    let cookie = slot
        .cookie
        .as_ref()
        .map(|c| format!(" cookie {c}"))
        .unwrap_or_default();
    match &slot.occupant {
        Some(m) => {
            let (weight, note) = match m.state {
                MemberState::Ready => ("", ""),
                MemberState::Draining => (" weight 0", " draining"),
            };
            let _ = writeln!(
                o,
                "    server {} {}{cookie}{weight} # node {}{note}",
                slot.name,
                socket(m.addr, b.port(ports)),
                m.id
            );
        }
        None => {
            let _ = writeln!(
                o,
                "    server {} {}{cookie} disabled # empty",
                slot.name,
                socket(PLACEHOLDER.0, PLACEHOLDER.1)
            );
        }
    }
}

/// The section without its `server` lines: what a reload is needed for
/// when it changes (frontends, certificate, settings).
pub fn skeleton(block: &str) -> String {
    block
        .lines()
        .filter(|l| !l.trim_start().starts_with("server "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads the servers back from a section this module rendered (its own
/// format only); None for anything else.
pub fn parse(block: &str) -> Option<Layout> {
    let mut layout = Layout::new();
    let mut current: Option<Backend> = None;
    for line in block.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("backend ") {
            current = Backend::from_name(name.trim());
            if let Some(b) = current {
                layout.insert(b, Vec::new());
            }
            continue;
        }
        if ["frontend ", "global", "defaults"]
            .iter()
            .any(|k| t.starts_with(k))
        {
            current = None;
            continue;
        }
        let (Some(b), Some(rest)) = (current, t.strip_prefix("server ")) else {
            continue;
        };
        let (decl, comment) = rest.split_once('#')?;
        let mut words = decl.split_whitespace();
        let name = words.next()?.to_string();
        let addr: SocketAddr = words.next()?.parse().ok()?;
        let (mut cookie, mut disabled, mut weight0) = (None, false, false);
        while let Some(w) = words.next() {
            match w {
                "cookie" => cookie = Some(words.next()?.to_string()),
                "weight" if words.next()? == "0" => weight0 = true,
                "disabled" => disabled = true,
                _ => return None,
            }
        }
        let note: Vec<&str> = comment.split_whitespace().collect();
        let occupant = match note.as_slice() {
            ["empty"] if disabled => None,
            ["node", id, rest @ ..] if !disabled => {
                let state = match rest {
                    [] if !weight0 => MemberState::Ready,
                    ["draining"] if weight0 => MemberState::Draining,
                    _ => return None,
                };
                Some(Member {
                    id: NodeId::parse(id)?,
                    addr: addr.ip(),
                    state,
                })
            }
            _ => return None,
        };
        layout.get_mut(&b)?.push(Slot {
            name,
            cookie,
            occupant,
        });
    }
    (layout.len() == Backend::ALL.len()).then_some(layout)
}

/// A server as the running HAProxy reports it (`show servers state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveServer {
    pub backend: String,
    pub id: u32,
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    pub op_state: u32,
    pub admin_state: u32,
    pub uweight: u32,
}

/// Admin-state bits (HAProxy's `enum srv_admin`).
const ADMF_MAINT: u32 = 0x01 | 0x02 | 0x20 | 0x40;
const ADMF_DRAIN: u32 = 0x08 | 0x10;

/// What a live server does, as the agent compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    Ready,
    Drain,
    Maint,
}

impl LiveServer {
    pub fn admin(&self) -> Admin {
        if self.admin_state & ADMF_MAINT != 0 {
            Admin::Maint
        } else if self.admin_state & ADMF_DRAIN != 0 || self.uweight == 0 {
            Admin::Drain
        } else {
            Admin::Ready
        }
    }

    /// Whether health checks see it up (`srv_op_state` 2, running).
    pub fn up(&self) -> bool {
        self.op_state == 2
    }
}

/// Parses `show servers state` (format version 1).
pub fn parse_state(dump: &str) -> Result<Vec<LiveServer>, String> {
    let mut out = Vec::new();
    let mut lines = dump.lines();
    match lines.next().map(str::trim) {
        Some("1") => {}
        other => {
            return Err(format!(
                "unexpected answer to `show servers state`: {}",
                crate::human::escape(other.unwrap_or("nothing"))
            ));
        }
    }
    for line in lines {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.split(' ').collect();
        let bad = || format!("unexpected server state line: {}", crate::human::escape(l));
        if f.len() < 19 {
            return Err(bad());
        }
        let n = |i: usize| f[i].parse::<u32>().map_err(|_| bad());
        out.push(LiveServer {
            backend: f[1].to_string(),
            id: n(2)?,
            name: f[3].to_string(),
            addr: f[4].parse().map_err(|_| bad())?,
            port: f[18].parse().map_err(|_| bad())?,
            op_state: n(5)?,
            admin_state: n(6)?,
            uweight: n(7)?,
        });
    }
    Ok(out)
}

/// What a slot should be, as (address, port, admin).
fn wanted(b: Backend, slot: &Slot, ports: &NodePorts) -> (IpAddr, u16, Admin) {
    match &slot.occupant {
        None => (PLACEHOLDER.0, PLACEHOLDER.1, Admin::Maint),
        Some(m) => (
            m.addr,
            b.port(ports),
            match m.state {
                MemberState::Ready => Admin::Ready,
                MemberState::Draining => Admin::Drain,
            },
        ),
    }
}

/// The servers of the agent's backends in the running process, by backend.
pub fn live_layout(live: &[LiveServer]) -> BTreeMap<Backend, Vec<&LiveServer>> {
    let mut by: BTreeMap<Backend, Vec<&LiveServer>> = BTreeMap::new();
    for s in live {
        if let Some(b) = Backend::from_name(&s.backend) {
            by.entry(b).or_default().push(s);
        }
    }
    for v in by.values_mut() {
        v.sort_by_key(|s| s.id);
    }
    by
}

/// The Runtime API commands that bring the running servers to `layout`;
/// an error (meaning: only a reload can) when the running process has
/// other servers than the file.
pub fn runtime_commands(
    layout: &Layout,
    live: &[LiveServer],
    ports: &NodePorts,
) -> Result<Vec<String>, String> {
    let by = live_layout(live);
    let mut cmds = Vec::new();
    for b in Backend::ALL {
        let slots = layout.get(&b).map(Vec::as_slice).unwrap_or_default();
        let running = by.get(&b).map(Vec::as_slice).unwrap_or_default();
        let names: Vec<&str> = slots.iter().map(|s| s.name.as_str()).collect();
        let live_names: Vec<&str> = running.iter().map(|s| s.name.as_str()).collect();
        if names != live_names {
            return Err(if running.is_empty() {
                format!("the running HAProxy has no backend {}", b.name())
            } else {
                format!(
                    "the running HAProxy has other servers in {} ({} there, {} in the file)",
                    b.name(),
                    live_names.len(),
                    names.len()
                )
            });
        }
        for (slot, live) in slots.iter().zip(running) {
            let (addr, port, admin) = wanted(b, slot, ports);
            let key = format!("{}/{}", b.name(), slot.name);
            let moved = live.addr != addr || live.port != port;
            let now = live.admin();
            if admin == Admin::Maint {
                if now != Admin::Maint {
                    cmds.push(format!("set server {key} state maint"));
                }
                if moved {
                    cmds.push(format!("set server {key} addr {addr} port {port}"));
                }
                continue;
            }
            if moved && now != Admin::Maint {
                // Another node (or address): out first, so no new client
                // lands on a half-changed server.
                cmds.push(format!("set server {key} state maint"));
            }
            if moved {
                cmds.push(format!("set server {key} addr {addr} port {port}"));
            }
            if admin == Admin::Ready && live.uweight == 0 {
                cmds.push(format!("set weight {key} 1"));
            }
            let target = if admin == Admin::Ready {
                "ready"
            } else {
                "drain"
            };
            let needs = moved
                || match admin {
                    Admin::Ready => live.admin_state & (ADMF_MAINT | ADMF_DRAIN) != 0,
                    _ => now != Admin::Drain || live.admin_state & ADMF_MAINT != 0,
                };
            if needs {
                cmds.push(format!("set server {key} state {target}"));
            }
        }
    }
    Ok(cmds)
}

/// The server-state file for the next start of HAProxy: the live dump
/// with the agent's servers renamed to where the new file puts their
/// address (a reload may rename a slot to its node's id), their admin
/// state and weights set from the model, and every server of the agent's
/// backends the new file does not give that address dropped (so an empty
/// slot never comes back up). Other backends' lines are kept as they are.
pub fn state_file(dump: Option<&str>, layout: &Layout, ports: &NodePorts) -> String {
    const HEADER: &str = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port";
    let mut out = String::from("1\n");
    let mut header = false;
    for line in dump.unwrap_or_default().lines().skip(1) {
        let l = line.trim_end();
        if l.starts_with('#') {
            if !header {
                out.push_str(l);
                out.push('\n');
                header = true;
            }
            continue;
        }
        if l.is_empty() {
            continue;
        }
        let mut f: Vec<String> = l.split(' ').map(String::from).collect();
        if f.len() < 19 {
            continue;
        }
        let Some(b) = Backend::from_name(&f[1]) else {
            out.push_str(l);
            out.push('\n');
            continue;
        };
        let (Ok(addr), Ok(port)) = (f[4].parse::<IpAddr>(), f[18].parse::<u16>()) else {
            continue;
        };
        let slot = layout.get(&b).and_then(|slots| {
            slots.iter().find(|s| {
                s.occupant
                    .as_ref()
                    .is_some_and(|m| m.addr == addr && b.port(ports) == port)
            })
        });
        let Some(slot) = slot else { continue };
        let (_, _, admin) = wanted(b, slot, ports);
        let (adm, w) = match admin {
            Admin::Drain => ("8", "0"),
            _ => ("0", "1"),
        };
        f[3] = slot.name.clone();
        f[6] = adm.into();
        f[7] = w.into();
        f[8] = w.into();
        out.push_str(&f.join(" "));
        out.push('\n');
    }
    if !header {
        out.insert_str(2, &format!("{HEADER}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::model::{Bind, NodeId};

    fn member(id: &str, ip: &str, state: MemberState) -> Member {
        Member {
            id: NodeId::parse(id).unwrap(),
            addr: ip.parse().unwrap(),
            state,
        }
    }

    use crate::lb::model::test_settings as settings;

    fn two() -> Membership {
        Membership {
            origin: vec![member("i-o1", "10.0.1.5", MemberState::Ready)],
            edge: vec![
                member("i-e1", "10.0.1.6", MemberState::Ready),
                member("i-e2", "fd00::7", MemberState::Draining),
            ],
        }
    }

    #[test]
    fn render_parses_back() {
        let layout = fresh(&two(), 2);
        let text = render(&settings(), &layout);
        assert!(
            text.contains(
                "    server i-e2 [fd00::7]:5080 cookie i-e2 weight 0 # node i-e2 draining\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("    server _slot1 127.0.0.1:1 disabled # empty\n"),
            "{text}"
        );
        assert!(
            text.contains("    server i-o1 10.0.1.5:1935 # node i-o1\n"),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap(), layout);
        assert_eq!(membership(&layout), two());
        assert_eq!(layout[&Backend::Edge].len(), 4);
        assert_eq!(layout[&Backend::Dashboard].len(), 5);
    }

    #[test]
    fn membership_changes_fill_and_free_slots() {
        let layout = fresh(&two(), 2);
        let mut m = two();
        m.edge.remove(0);
        m.edge.push(member("i-e3", "10.0.1.8", MemberState::Ready));
        m.edge[0].state = MemberState::Ready;
        let next = update(&layout, &m).unwrap();
        let edge: Vec<(&str, Option<&str>)> = next[&Backend::Edge]
            .iter()
            .map(|s| (s.name.as_str(), s.occupant.as_ref().map(|o| o.id.as_str())))
            .collect();
        assert_eq!(
            edge,
            [
                ("i-e1", None),
                ("i-e2", Some("i-e2")),
                ("_slot1", Some("i-e3")),
                ("_slot2", None)
            ]
        );
        // The same names: the Runtime API can do it. The node that left
        // and comes back takes its own slot again.
        let mut back = m.clone();
        back.edge
            .push(member("i-e1", "10.0.1.6", MemberState::Ready));
        back.sort();
        let again = update(&next, &back).unwrap();
        assert_eq!(
            again[&Backend::Edge][0]
                .occupant
                .as_ref()
                .unwrap()
                .id
                .as_str(),
            "i-e1"
        );
        // Out of slots: a reload.
        let mut many = two();
        for i in 0..5 {
            many.edge.push(member(
                &format!("i-x{i}"),
                &format!("10.0.3.{i}"),
                MemberState::Ready,
            ));
        }
        assert!(update(&layout, &many).is_none());
        // A slot filled at run time is rendered without a cookie (dynamic).
        let text = render(&settings(), &next);
        assert!(
            text.contains("    server _slot1 10.0.1.8:5080 # node i-e3\n"),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap(), next);
    }

    fn live(b: &str, id: u32, name: &str, addr: &str, port: u16, admin: u32, w: u32) -> LiveServer {
        LiveServer {
            backend: b.into(),
            id,
            name: name.into(),
            addr: addr.parse().unwrap(),
            port,
            op_state: 2,
            admin_state: admin,
            uweight: w,
        }
    }

    #[test]
    fn runtime_commands_bring_the_process_to_the_file() {
        let m = Membership {
            origin: vec![],
            edge: vec![member("i-e1", "10.0.1.6", MemberState::Draining)],
        };
        let mut layout = fresh(&Membership::default(), 2);
        layout = update(&layout, &m).unwrap();
        let mut running = Vec::new();
        for b in Backend::ALL {
            for (i, s) in layout[&b].iter().enumerate() {
                running.push(live(b.name(), i as u32 + 1, &s.name, "127.0.0.1", 1, 5, 1));
            }
        }
        let cmds = runtime_commands(&layout, &running, &NodePorts::default()).unwrap();
        assert_eq!(
            cmds,
            [
                "set server ams_edge/_slot1 addr 10.0.1.6 port 5080",
                "set server ams_edge/_slot1 state drain",
                "set server ams_dashboard/_slot1 addr 10.0.1.6 port 5080",
                "set server ams_dashboard/_slot1 state drain",
            ]
        );
        // Once applied, nothing more to do.
        for s in &mut running {
            if s.name == "_slot1" && (s.backend == "ams_edge" || s.backend == "ams_dashboard") {
                s.addr = "10.0.1.6".parse().unwrap();
                s.port = 5080;
                s.admin_state = 4 | 8;
            }
        }
        assert!(
            runtime_commands(&layout, &running, &NodePorts::default())
                .unwrap()
                .is_empty()
        );
        // Other names in the process: only a reload can.
        running[0].name = "other".into();
        assert!(runtime_commands(&layout, &running, &NodePorts::default()).is_err());
    }

    #[test]
    fn the_state_file_follows_renames_and_drops_empty_slots() {
        // Running: _slot1 filled at run time with i-e3 (10.0.1.8), drained;
        // _slot2 once filled, now empty; another backend of the operator.
        let dump = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
            4 ams_edge 1 _slot1 10.0.1.8 2 12 1 1 5 15 3 2 6 0 0 0 - 5080 - 0 0 - - 0\n\
            4 ams_edge 2 _slot2 127.0.0.1 2 4 1 1 5 15 3 2 6 0 0 0 - 1 - 0 0 - - 0\n\
            9 mine 1 web1 10.9.9.9 2 0 1 1 5 15 3 2 6 0 0 0 - 80 - 0 0 - - 0\n\n";
        let m = Membership {
            origin: vec![],
            edge: vec![member("i-e3", "10.0.1.8", MemberState::Draining)],
        };
        let layout = fresh(&m, 2);
        let out = state_file(Some(dump), &layout, &NodePorts::default());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "1");
        assert!(lines[1].starts_with("# be_id"));
        assert_eq!(
            &lines[2..],
            [
                "4 ams_edge 1 i-e3 10.0.1.8 2 8 0 0 5 15 3 2 6 0 0 0 - 5080 - 0 0 - - 0",
                "9 mine 1 web1 10.9.9.9 2 0 1 1 5 15 3 2 6 0 0 0 - 80 - 0 0 - - 0",
            ]
        );
        let none = state_file(None, &layout, &NodePorts::default());
        assert_eq!(none.lines().count(), 2);
        assert_eq!(parse_state(&out).unwrap().len(), 2);
    }

    #[test]
    fn listeners_and_tls_shape_the_frontends() {
        let mut s = settings();
        s.listen.insert(Listener::Dashboard, None);
        s.listen.insert(
            Listener::Play,
            Some(Bind {
                addr: Some("127.0.0.1".parse().unwrap()),
                port: 18080,
            }),
        );
        let text = render(&s, &fresh(&two(), 1));
        assert!(!text.contains("frontend ams_dashboard"), "{text}");
        assert!(text.contains("    bind 127.0.0.1:18080\n"), "{text}");
        assert!(!text.contains(" ssl "), "{text}");
        s.tls = Some(crate::lb::model::Tls {
            dir: "/etc/haproxy/certs".into(),
            pem: "/etc/haproxy/certs/x.pem".into(),
            digest: "d".into(),
        });
        let text = render(&s, &fresh(&two(), 1));
        assert!(
            text.contains("    bind :443 ssl crt /etc/haproxy/certs/\n"),
            "{text}"
        );
        assert!(
            text.contains("    bind :5443 ssl crt /etc/haproxy/certs/\n"),
            "{text}"
        );
    }
}
