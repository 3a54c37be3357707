//! `ams-agent status [--json]`: the cluster as the registry sees it. Every
//! node with role, state, alive/dead (alive = `lastSeen` within 4 of its
//! heartbeat intervals, AMS's rule), CPU, memory, the age of its last
//! heartbeat, its AMS node group and its cloud, plus a per-role summary
//! and, when the cluster has node groups, one per group: what an
//! autoscaling decision needs.
//!
//! The documents are other nodes' words: every text value is printed
//! escaped ([`crate::human::escape`]), a `lastSeen` ahead of the server's
//! clock is clock skew (not alive), and impossible numbers (a CPU of 1e30,
//! a negative memory use, an interval of 1e30 s) are flagged and ignored,
//! so one node cannot forge the table or move the per-role average.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use mongodb::bson::{Bson, DateTime, Document};
use serde::Serialize;

use super::Context;
use super::run::{RegistryArgs, Resolved};
use crate::host::runtime;
use crate::mongo::alive::{number as num, shown};
use crate::mongo::registry::{Deadlines, Registry};

pub use crate::mongo::alive::ALIVE_INTERVALS;

/// Show every node of the cluster and a per-role summary
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Machine-readable output
    #[arg(long)]
    pub json: bool,

    /// How long to wait for MongoDB
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::parse_wait)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub id: String,
    pub role: String,
    pub state: String,
    pub alive: bool,
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    /// Seconds since the last heartbeat (server clock).
    pub age_seconds: Option<f64>,
    pub hostname: Option<String>,
    pub private_ip: Option<String>,
    pub node_group: Option<String>,
    /// The cloud whose metadata the node was read from (`ec2`, `gcp`, …).
    pub provider: Option<String>,
    pub last_error: Option<String>,
    /// Values of the document that cannot be true (a `lastSeen` in the
    /// future, a CPU above 100 %), each ignored as said.
    pub warnings: Vec<String>,
    /// A draining (or drained) node's drain: trigger, reason, time left.
    pub drain: Option<DrainRow>,
    /// Advisory cloud notices (rebalance recommendation, maintenance).
    pub notices: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DrainRow {
    pub trigger: String,
    pub reason: String,
    /// Seconds until the deadline, by the server's clock (0 once passed).
    pub seconds_left: Option<f64>,
    /// How it ended (`empty`, `deadline-passed`, ...), once it did.
    pub outcome: Option<String>,
}

fn drain_row(d: &Document, now: DateTime) -> DrainRow {
    let left = match d.get("deadline") {
        Some(Bson::DateTime(t)) => {
            Some(((t.timestamp_millis() - now.timestamp_millis()).max(0) as f64 / 1000.0).round())
        }
        _ => None,
    };
    DrainRow {
        trigger: text(d, "trigger").unwrap_or_else(|| "unknown".into()),
        reason: text(d, "reason").unwrap_or_default(),
        seconds_left: left,
        outcome: text(d, "outcome"),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RoleSummary {
    pub nodes: usize,
    pub alive: usize,
    /// Average CPU % over the alive nodes that reported one.
    pub average_cpu: Option<f64>,
}

/// The nodes of one AMS node group, per role.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct GroupSummary {
    pub nodes: usize,
    pub alive: usize,
    pub roles: BTreeMap<String, RoleSummary>,
}

/// The group of nodes that report none (AMS's own default is `default`).
pub const NO_GROUP: &str = "(none)";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusView {
    pub nodes: Vec<NodeRow>,
    pub roles: BTreeMap<String, RoleSummary>,
    /// Per AMS node group (`nodeGroup` of red5.properties); nodes without
    /// one are under `(none)`.
    pub groups: BTreeMap<String, GroupSummary>,
}

fn text(doc: &Document, key: &str) -> Option<String> {
    match doc.get(key)? {
        Bson::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A percentage of the document: None (with a warning) unless it is a
/// finite number from 0 to 100.
fn percent(v: Option<f64>, what: &str, warnings: &mut Vec<String>) -> Option<f64> {
    let v = v?;
    if v.is_finite() && (0.0..=100.0).contains(&v) {
        return Some(v);
    }
    warnings.push(format!(
        "{what} {} is not a percentage (0-100): ignored",
        shown(v)
    ));
    None
}

/// Builds the view from the node documents and the server's clock.
pub fn view(docs: &[Document], now: DateTime) -> StatusView {
    let mut nodes = Vec::with_capacity(docs.len());
    for d in docs {
        let id = match d.get("_id") {
            Some(Bson::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => continue,
        };
        let health = d.get_document("health").ok();
        let live = crate::mongo::alive::liveness(d, now);
        let mut warnings = live.warnings;
        let age = live.age_seconds;
        let alive = live.alive;
        let state = text(d, "state").unwrap_or_else(|| "unknown".into());
        let cpu = percent(health.and_then(|h| num(h, "cpu")), "cpu", &mut warnings);
        let memory = percent(
            health.and_then(|h| num(h, "memoryUsed")),
            "memoryUsed",
            &mut warnings,
        );
        nodes.push(NodeRow {
            id,
            role: text(d, "role").unwrap_or_else(|| "unknown".into()),
            state,
            alive,
            cpu,
            memory,
            age_seconds: age.map(|a| (a * 10.0).round() / 10.0),
            hostname: text(d, "hostname"),
            private_ip: text(d, "privateIp"),
            node_group: text(d, "nodeGroup"),
            provider: text(d, "provider"),
            last_error: d.get_document("lastError").ok().map(|e| {
                format!(
                    "{}: {}",
                    text(e, "step").unwrap_or_default(),
                    text(e, "message").unwrap_or_default()
                )
            }),
            warnings,
            drain: d.get_document("drain").ok().map(|dr| drain_row(dr, now)),
            notices: d
                .get_array("notices")
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .take(20)
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    // By group (nodes without one first), then role and id.
    nodes.sort_by(|a, b| (&a.node_group, &a.role, &a.id).cmp(&(&b.node_group, &b.role, &b.id)));
    let mut roles: BTreeMap<String, RoleSummary> = BTreeMap::new();
    let mut cpu_sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for n in &nodes {
        let r = roles.entry(n.role.clone()).or_default();
        r.nodes += 1;
        if n.alive {
            r.alive += 1;
            if let Some(c) = n.cpu {
                let e = cpu_sums.entry(n.role.clone()).or_default();
                e.0 += c;
                e.1 += 1;
            }
        }
    }
    for (role, (sum, count)) in cpu_sums {
        if let Some(r) = roles.get_mut(&role) {
            r.average_cpu = Some(((sum / count as f64) * 10.0).round() / 10.0);
        }
    }
    let mut groups: BTreeMap<String, GroupSummary> = BTreeMap::new();
    let mut group_cpu: BTreeMap<(String, String), (f64, usize)> = BTreeMap::new();
    for n in &nodes {
        let key = n.node_group.clone().unwrap_or_else(|| NO_GROUP.into());
        let g = groups.entry(key.clone()).or_default();
        g.nodes += 1;
        let r = g.roles.entry(n.role.clone()).or_default();
        r.nodes += 1;
        if n.alive {
            g.alive += 1;
            r.alive += 1;
            if let Some(c) = n.cpu {
                let e = group_cpu.entry((key, n.role.clone())).or_default();
                e.0 += c;
                e.1 += 1;
            }
        }
    }
    for ((group, role), (sum, count)) in group_cpu {
        if let Some(r) = groups.get_mut(&group).and_then(|g| g.roles.get_mut(&role)) {
            r.average_cpu = Some(((sum / count as f64) * 10.0).round() / 10.0);
        }
    }
    StatusView {
        nodes,
        roles,
        groups,
    }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}{unit}"))
}

fn age(v: Option<f64>) -> String {
    match v {
        None => "never".into(),
        Some(s) if s < 0.0 => "in the future".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s ago"),
        Some(s) if s < 7200.0 => format!("{:.0}m ago", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.0}h ago", s / 3600.0),
        Some(s) => format!("{:.0}d ago", s / 86400.0),
    }
}

/// The table a person reads. Every value from a document is escaped.
pub fn render(v: &StatusView) -> String {
    use crate::human::escape;
    let mut out = String::new();
    if v.nodes.is_empty() {
        out.push_str("no nodes registered\n");
        return out;
    }
    let shown = |o: &Option<String>| {
        o.as_deref()
            .map_or_else(|| "-".into(), |s| escape(s).into_owned())
    };
    let rows: Vec<[String; 10]> = v
        .nodes
        .iter()
        .map(|n| {
            [
                escape(&n.id).into_owned(),
                escape(&n.role).into_owned(),
                escape(&n.state).into_owned(),
                if n.alive { "alive" } else { "dead" }.into(),
                opt(n.cpu, "%"),
                opt(n.memory, "%"),
                age(n.age_seconds),
                shown(&n.private_ip),
                shown(&n.node_group),
                shown(&n.provider),
            ]
        })
        .collect();
    let head = [
        "NODE",
        "ROLE",
        "STATE",
        "ALIVE",
        "CPU",
        "MEM",
        "LAST SEEN",
        "PRIVATE IP",
        "GROUP",
        "CLOUD",
    ];
    out.push_str(&crate::human::table(&head, &rows));
    let notes: Vec<String> = v
        .nodes
        .iter()
        .flat_map(|n| {
            n.warnings
                .iter()
                .map(move |w| format!("warning: node {}: {w}", escape(&n.id)))
        })
        .collect();
    let mut drains = Vec::new();
    for n in &v.nodes {
        if let Some(d) = &n.drain {
            let when = match (&d.outcome, d.seconds_left) {
                (Some(o), _) => format!("ended: {}", escape(o)),
                (None, Some(s)) => format!(
                    "{} left",
                    crate::human::show_duration(Duration::from_secs_f64(s.max(0.0)))
                ),
                (None, None) => "no deadline".into(),
            };
            drains.push(format!(
                "{} {}: {} ({}), {when}",
                escape(&n.state),
                escape(&n.id),
                escape(&d.trigger),
                escape(&d.reason)
            ));
        }
        for notice in &n.notices {
            drains.push(format!("notice {}: {}", escape(&n.id), escape(notice)));
        }
    }
    if !drains.is_empty() {
        out.push('\n');
        for line in drains {
            let _ = writeln!(out, "{line}");
        }
    }
    if !notes.is_empty() {
        out.push('\n');
        for note in notes {
            let _ = writeln!(out, "{note}");
        }
    }
    out.push('\n');
    // One line per node group, when the cluster has any.
    if v.groups.keys().any(|g| g != NO_GROUP) {
        for (group, g) in &v.groups {
            let per_role: Vec<String> = g
                .roles
                .iter()
                .map(|(role, r)| {
                    format!(
                        "{} {} alive of {}{}",
                        escape(role),
                        r.alive,
                        r.nodes,
                        r.average_cpu
                            .map_or(String::new(), |c| format!(" (CPU {c:.1}%)"))
                    )
                })
                .collect();
            let _ = writeln!(out, "group {}: {}", escape(group), per_role.join(", "));
        }
    }
    for (role, s) in &v.roles {
        let _ = writeln!(
            out,
            "{}: {} alive of {}, average CPU {}",
            escape(role),
            s.alive,
            s.nodes,
            s.average_cpu.map_or("-".into(), |c| format!("{c:.1}%"))
        );
    }
    out
}

pub fn run(ctx: &Context, args: StatusArgs) -> Result<()> {
    super::run::validate_timeout(args.timeout, "--timeout")?;
    let Resolved { target, .. } = args.registry.resolve(&ctx.host)?;
    let rt = runtime()?;
    let (docs, now) = rt
        .block_on(async {
            let deadlines = Deadlines::within(args.timeout);
            let reg = Registry::open(&target, deadlines).await?;
            let r = reg.list().await;
            reg.close().await;
            r
        })
        .with_context(|| {
            format!(
                "reading the node registry {}.{}",
                target.database, target.collection
            )
        })?;
    let now = now.unwrap_or_else(DateTime::now);
    let v = view(&docs, now);
    super::print_view(args.json, &v, render)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn nan_infinite_and_negative_values_are_flagged_and_not_averaged() {
        let now = DateTime::from_millis(1_000_000_000);
        let recent = DateTime::from_millis(1_000_000_000 - 1000);
        let docs = vec![
            doc! { "_id": "a", "role": "edge", "state": "ready", "lastSeen": recent, "health": { "cpu": f64::NAN } },
            doc! { "_id": "b", "role": "edge", "state": "ready", "lastSeen": recent, "health": { "cpu": f64::INFINITY } },
            doc! { "_id": "c", "role": "edge", "state": "ready", "lastSeen": recent, "intervalSeconds": f64::NAN, "health": { "cpu": -1.0 } },
            doc! { "_id": "d", "role": "edge", "state": "ready", "lastSeen": DateTime::from_millis(1_000_001_500), "health": { "cpu": 30.0 } },
        ];
        let v = view(&docs, now);
        assert!(v.nodes.iter().take(3).all(|n| n.cpu.is_none() && n.alive));
        assert_eq!(v.nodes[2].warnings.len(), 2, "{:?}", v.nodes[2]);
        // 1.5 s ahead: within the tolerance, alive and not flagged.
        assert!(v.nodes[3].alive && v.nodes[3].warnings.is_empty());
        assert_eq!(v.roles["edge"].average_cpu, Some(30.0));
        assert!(render(&v).contains("warning: node a: cpu NaN is not a percentage"));
    }

    #[test]
    fn nodes_are_grouped_by_node_group_with_a_line_per_group() {
        let now = DateTime::from_millis(1_000_000_000);
        let recent = DateTime::from_millis(1_000_000_000 - 1000);
        let docs = vec![
            doc! { "_id": "b", "role": "edge", "state": "ready", "lastSeen": recent, "nodeGroup": "us-east", "provider": "gcp", "health": { "cpu": 10.0 } },
            doc! { "_id": "a", "role": "origin", "state": "ready", "lastSeen": recent, "nodeGroup": "eu-west", "provider": "azure", "health": { "cpu": 50.0 } },
            doc! { "_id": "c", "role": "edge", "state": "ready", "lastSeen": recent, "nodeGroup": "eu-west\u{1b}[2J" },
            doc! { "_id": "d", "role": "edge", "state": "left", "lastSeen": recent },
        ];
        let v = view(&docs, now);
        let order: Vec<&str> = v.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(order, ["d", "a", "c", "b"]);
        assert_eq!(v.groups["eu-west"].roles["origin"].average_cpu, Some(50.0));
        assert_eq!(v.groups[NO_GROUP].alive, 0);
        let text = render(&v);
        assert!(
            text.contains("group eu-west: origin 1 alive of 1 (CPU 50.0%)"),
            "{text}"
        );
        assert!(
            text.contains("group us-east: edge 1 alive of 1 (CPU 10.0%)"),
            "{text}"
        );
        assert!(text.contains("group (none): edge 0 alive of 1"), "{text}");
        assert!(text.contains("eu-west\\u{1b}[2J"), "escaped: {text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        // Without any group, no group lines.
        let docs = vec![doc! { "_id": "x", "role": "edge", "state": "ready", "lastSeen": recent }];
        assert!(!render(&view(&docs, now)).contains("group "));
    }

    #[test]
    fn alive_is_four_intervals_and_roles_average_alive_cpu() {
        let now = DateTime::from_millis(1_000_000_000);
        let ago = |s: i64| DateTime::from_millis(1_000_000_000 - s * 1000);
        let docs = vec![
            doc! { "_id": "a", "role": "origin", "state": "ready", "lastSeen": ago(19), "intervalSeconds": 5.0, "health": { "cpu": 80.0, "memoryUsed": 50.0 } },
            doc! { "_id": "b", "role": "origin", "state": "ready", "lastSeen": ago(21), "intervalSeconds": 5.0, "health": { "cpu": 10.0 } },
            doc! { "_id": "c", "role": "edge", "state": "ready", "lastSeen": ago(3), "intervalSeconds": 1.0, "health": { "cpu": 20.0 } },
            doc! { "_id": "d", "role": "edge", "state": "ready", "lastSeen": ago(5), "intervalSeconds": 1.0, "health": { "cpu": 99.0 } },
            doc! { "_id": "e", "role": "edge", "state": "left", "lastSeen": ago(0), "health": { "cpu": 99.0 } },
            doc! { "_id": "f", "role": "edge", "state": "ready", "lastSeen": ago(1), "health": { "cpu": 40 } },
        ];
        let v = view(&docs, now);
        let alive: Vec<(&str, bool)> = v.nodes.iter().map(|n| (n.id.as_str(), n.alive)).collect();
        assert_eq!(
            alive,
            [
                ("c", true),
                ("d", false),
                ("e", false),
                ("f", true),
                ("a", true),
                ("b", false)
            ]
        );
        assert_eq!(
            v.roles["origin"],
            RoleSummary {
                nodes: 2,
                alive: 1,
                average_cpu: Some(80.0)
            }
        );
        assert_eq!(
            v.roles["edge"],
            RoleSummary {
                nodes: 4,
                alive: 2,
                average_cpu: Some(30.0)
            }
        );
        let table = render(&v);
        assert!(
            table.contains("origin: 1 alive of 2, average CPU 80.0%"),
            "{table}"
        );
        assert!(table.lines().next().unwrap().starts_with("NODE"), "{table}");
    }
}
