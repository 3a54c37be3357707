//! `lb status`: the registry's view next to the balancer's, what is in
//! rotation per backend, what a guard or the hysteresis holds back, the
//! last reload and runtime update.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::haproxy::{self, Admin, Backend, Layout, LiveServer};
use super::membership::{RegistryView, Standing};
use super::model::{Kind, Membership};
use super::record::Record;
use crate::human::escape;
use crate::node::Role;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub role: String,
    pub node: String,
    pub address: Option<String>,
    /// What the registry says (`ready`, `draining`, `stale (…)`, …).
    pub registry: String,
    /// What the balancer does with it (`ready, up`, `drain`, `out`, …).
    pub balancer: String,
    pub in_rotation: bool,
    /// Why the two differ, when they do.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub kind: Kind,
    pub file: String,
    pub socket: Option<String>,
    pub service: String,
    pub registry: String,
    /// The AMS node group the balancer serves (`lb --group`); None: all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_group: Option<String>,
    /// The registry's answer failed: why (the balancer's side is shown).
    pub registry_error: Option<String>,
    /// The balancer's running state could not be read: why.
    pub balancer_error: Option<String>,
    pub balancer_pid: Option<u32>,
    /// Per backend, the nodes taking new connections.
    pub rotation: BTreeMap<String, Vec<String>>,
    /// Per backend, the nodes draining.
    pub draining: BTreeMap<String, Vec<String>>,
    pub rows: Vec<Row>,
    pub holds: Vec<super::record::Held>,
    pub waiting: Vec<super::membership::Waiting>,
    pub refused: Vec<super::membership::Refused>,
    pub last_reload: Option<super::record::Event>,
    pub last_runtime: Option<super::record::Event>,
    pub last_error: Option<super::record::Event>,
    pub registry_down_since: Option<u64>,
}

/// What `lb status` gathered.
pub struct Inputs<'a> {
    pub record: &'a Record,
    pub kind: Kind,
    /// The members in the balancer's file, or why it could not be read.
    pub file: Result<(Membership, Option<Layout>), String>,
    /// HAProxy: the running servers and worker pid, or why not.
    pub live: Option<Result<(Vec<LiveServer>, u32), String>>,
    pub registry: Result<RegistryView, String>,
}

fn registry_word(view: &RegistryView, id: &str, role: Role) -> String {
    match view.candidates.iter().find(|c| c.id.as_str() == id) {
        None => "not registered".into(),
        Some(c) if c.role != role => format!("registered as {}", c.role.name()),
        Some(c) => match &c.standing {
            Standing::Eligible => "ready".into(),
            Standing::Draining => "draining".into(),
            Standing::Left => escape(&c.state).into_owned(),
            Standing::Ineligible { why } => why.clone(),
        },
    }
}

pub fn view(i: Inputs) -> StatusView {
    let r = i.record;
    let (members, layout) = match &i.file {
        Ok((m, l)) => (m.clone(), l.clone()),
        Err(_) => (Membership::default(), None),
    };
    let live = i.live.as_ref().and_then(|l| l.as_ref().ok());
    let by = live.map(|(servers, _)| haproxy::live_layout(servers));
    let mut rotation: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut draining: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // What the balancer does with a node in a backend: (word, in rotation).
    let mut balancer_of: BTreeMap<(Backend, String), (String, bool)> = BTreeMap::new();
    match (i.kind, &layout) {
        (Kind::Haproxy, Some(layout)) => {
            for (b, slots) in layout {
                for (n, slot) in slots.iter().enumerate() {
                    let Some(m) = &slot.occupant else { continue };
                    let running = by
                        .as_ref()
                        .and_then(|by| by.get(b))
                        .and_then(|v| v.get(n))
                        .filter(|s| s.name == slot.name);
                    let (word, inr) = match running {
                        Some(s) => {
                            let up = if s.up() { "up" } else { "down" };
                            match s.admin() {
                                Admin::Ready => (format!("ready, {up}"), s.up()),
                                Admin::Drain => (format!("drain, {up}"), false),
                                Admin::Maint => ("maint".to_string(), false),
                            }
                        }
                        None => (format!("{} in the file", m.state.name()), false),
                    };
                    if word.starts_with("ready") {
                        rotation
                            .entry(b.name().into())
                            .or_default()
                            .push(m.id.to_string());
                    } else if word.starts_with("drain") {
                        draining
                            .entry(b.name().into())
                            .or_default()
                            .push(m.id.to_string());
                    }
                    balancer_of.insert((*b, m.id.to_string()), (word, inr));
                }
            }
        }
        (Kind::Nginx, _) => {
            for (name, list) in [("ams_origin", &members.origin), ("ams_edge", &members.edge)] {
                rotation.insert(name.into(), list.iter().map(|m| m.id.to_string()).collect());
            }
        }
        _ => {}
    }
    let mut rows = Vec::new();
    for role in [Role::Origin, Role::Edge] {
        let b = if role == Role::Origin {
            Backend::Origin
        } else {
            Backend::Edge
        };
        let mut ids: Vec<(String, Option<String>)> = members
            .group(role)
            .iter()
            .map(|m| (m.id.to_string(), Some(m.addr.to_string())))
            .collect();
        if let Ok(v) = &i.registry {
            for c in v.candidates.iter().filter(|c| c.role == role) {
                if !ids.iter().any(|(id, _)| id == c.id.as_str()) {
                    ids.push((c.id.to_string(), Some(c.addr.to_string())));
                }
            }
        }
        ids.sort();
        for (id, addr) in ids {
            let registry = match &i.registry {
                Ok(v) => registry_word(v, &id, role),
                Err(_) => "unknown (registry unreachable)".into(),
            };
            let in_file = members.group(role).iter().find(|m| m.id.as_str() == id);
            let (balancer, in_rotation) = match i.kind {
                Kind::Haproxy => balancer_of
                    .get(&(b, id.clone()))
                    .cloned()
                    .unwrap_or(("out".into(), false)),
                Kind::Nginx => match in_file {
                    Some(_) => ("in rotation".into(), true),
                    None => ("out".into(), false),
                },
            };
            let note = r
                .waiting
                .iter()
                .find(|w| w.id.as_str() == id)
                .map(|w| {
                    format!(
                        "{} in {} (--settle)",
                        if w.joins { "joins" } else { "leaves" },
                        crate::human::show_duration(std::time::Duration::from_millis(
                            w.remaining_ms
                        ))
                    )
                })
                .or_else(|| {
                    r.holds
                        .iter()
                        .find(|h| h.hold.kept.iter().any(|k| k.as_str() == id))
                        .map(|h| format!("held by a guard: {}", h.hold.reason))
                });
            rows.push(Row {
                role: role.name().into(),
                node: id,
                address: addr,
                registry,
                balancer,
                in_rotation,
                note,
            });
        }
    }
    StatusView {
        kind: i.kind,
        file: r.file.display().to_string(),
        socket: r.socket.as_ref().map(|s| s.display().to_string()),
        service: r.service.clone(),
        registry: r.registry.clone(),
        node_group: r.node_group.clone(),
        registry_error: i.registry.as_ref().err().cloned(),
        balancer_error: match (&i.file, &i.live) {
            (Err(e), _) => Some(e.clone()),
            (_, Some(Err(e))) => Some(e.clone()),
            _ => None,
        },
        balancer_pid: live.map(|(_, pid)| *pid),
        rotation,
        draining,
        rows,
        holds: r.holds.clone(),
        waiting: r.waiting.clone(),
        refused: match &i.registry {
            Ok(v) => v.refused.clone(),
            Err(_) => r.refused.clone(),
        },
        last_reload: r.last_reload.clone(),
        last_runtime: r.last_runtime.clone(),
        last_error: r.last_error.clone(),
        registry_down_since: r.registry_down_since,
    }
}

fn ago(at: u64) -> String {
    let now = crate::config::unix_now();
    format!(
        "{} ago",
        crate::human::show_duration(std::time::Duration::from_secs(now.saturating_sub(at)))
    )
}

pub fn render(v: &StatusView) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} balancer: {}{} (service {}){}",
        v.kind.name(),
        v.file,
        v.socket
            .as_ref()
            .map(|s| format!(", admin socket {s}"))
            .unwrap_or_default(),
        v.service,
        v.balancer_pid
            .map(|p| format!(", worker pid {p}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "registry: {}{}",
        v.registry,
        v.node_group
            .as_deref()
            .map(|g| format!(", node group {} only", crate::human::escape(g)))
            .unwrap_or_default()
    );
    if let Some(e) = &v.registry_error {
        let _ = writeln!(o, "  the registry does not answer: {e}");
    }
    if let Some(since) = v.registry_down_since {
        let _ = writeln!(
            o,
            "  the follower has not reached the registry for {}: it keeps the last good configuration",
            ago(since).trim_end_matches(" ago")
        );
    }
    if let Some(e) = &v.balancer_error {
        let _ = writeln!(o, "  the balancer's state could not be read: {e}");
    }
    let event = |e: &Option<super::record::Event>| {
        e.as_ref().map_or("never".to_string(), |e| {
            format!("{} ({})", ago(e.at), e.what)
        })
    };
    let _ = writeln!(o, "last reload: {}", event(&v.last_reload));
    if v.kind == Kind::Haproxy {
        let _ = writeln!(o, "last runtime update: {}", event(&v.last_runtime));
    }
    if let Some(e) = &v.last_error {
        let _ = writeln!(o, "last error: {} ({})", e.what, ago(e.at));
    }
    o.push('\n');
    let head = ["ROLE", "NODE", "ADDRESS", "REGISTRY", "BALANCER", "NOTE"];
    let rows: Vec<[String; 6]> = v
        .rows
        .iter()
        .map(|r| {
            [
                r.role.clone(),
                r.node.clone(),
                r.address.clone().unwrap_or_else(|| "-".into()),
                r.registry.clone(),
                r.balancer.clone(),
                r.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if rows.is_empty() {
        o.push_str("no node in the registry or the balancer\n");
    } else {
        o.push_str(&crate::human::table(&head, &rows));
    }
    o.push('\n');
    for (b, ids) in &v.rotation {
        let _ = writeln!(
            o,
            "{b}: {} in rotation{}{}",
            ids.len(),
            if ids.is_empty() { "" } else { ": " },
            ids.join(", ")
        );
    }
    for (b, ids) in &v.draining {
        let _ = writeln!(o, "{b}: {} draining: {}", ids.len(), ids.join(", "));
    }
    for h in &v.holds {
        let _ = writeln!(
            o,
            "held by a guard since {}: {}",
            ago(h.since),
            h.hold.reason
        );
    }
    for r in &v.refused {
        let _ = writeln!(o, "refused: node {}: {}", r.id, r.why);
    }
    o
}
