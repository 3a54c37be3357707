//! Who is in rotation: the registry's documents turned into checked
//! candidates, the hysteresis that keeps a flapping node from being added
//! and removed on every heartbeat, and the guards that keep the last good
//! configuration when the registry's answer looks wrong.
//!
//! The rule (docs/lb.md):
//! - in rotation: `state` ready and alive by the registry's rule
//!   (`lastSeen` younger than 4 of the node's intervals, server clock);
//! - `draining` goes to HAProxy `drain` (out of Nginx) and `left` (or
//!   `leaving`) goes out, both at once: the node said so itself;
//! - any other change (a node becoming eligible, or stale, unready, or
//!   missing from the registry) takes effect only once it has lasted
//!   `settle` without interruption; a group with no member takes eligible
//!   nodes at once (waiting would only keep answering 503);
//! - guards, per group, on those implicit removals only: a group is never
//!   emptied by them, and at most `max_removal` of its members leave in one
//!   step; otherwise they are held (kept as they are) and the reason shown.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use mongodb::bson::{Bson, DateTime, Document};
use serde::{Deserialize, Serialize};

use super::model::{Member, MemberState, Membership, NodeId, parse_node_addr};
use crate::human::escape;
use crate::node::Role;

/// Where a registered node stands, as the registry says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "is")]
pub enum Standing {
    /// Ready and alive: belongs in rotation.
    Eligible,
    /// Marked `draining` (and alive): HAProxy drains it, Nginx drops it.
    Draining,
    /// Marked `left` or `leaving`: out at once.
    Left,
    /// Stale, or not ready (joining, degraded): out once that lasted.
    Ineligible { why: String },
}

/// A node document that passed the checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub id: NodeId,
    pub role: Role,
    pub addr: IpAddr,
    /// The registry's `state`, as given (escaped when shown).
    pub state: String,
    pub alive: bool,
    pub age_seconds: Option<f64>,
    pub standing: Standing,
}

/// A document that cannot be rendered into a configuration, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refused {
    /// The `_id` as printed (escaped).
    pub id: String,
    pub why: String,
}

/// The registry's answer, checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryView {
    pub candidates: Vec<Candidate>,
    pub refused: Vec<Refused>,
    /// The server's clock (ms since the epoch) when it answered.
    pub now_ms: i64,
}

impl RegistryView {
    pub fn get(&self, id: &NodeId) -> Option<&Candidate> {
        self.candidates.iter().find(|c| &c.id == id)
    }
}

fn text<'a>(d: &'a Document, key: &str) -> Option<&'a str> {
    match d.get(key)? {
        Bson::String(s) => Some(s),
        _ => None,
    }
}

/// True when the document's node is in AMS node group `group`: its
/// `nodeGroup`, or, when it has none (the reporter sends null when
/// red5.properties names no group), AMS's default `default`.
pub fn in_node_group(d: &Document, group: &str) -> bool {
    match d.get("nodeGroup") {
        Some(Bson::String(g)) => g == group,
        None | Some(Bson::Null) => group == crate::ams::mode::DEFAULT_NODE_GROUP,
        Some(_) => false,
    }
}

/// Checks every document: the id must be a safe name, the role origin or
/// edge, the private address an IP literal. What fails is refused (listed,
/// never rendered).
pub fn view(docs: &[Document], now: DateTime) -> RegistryView {
    let now_ms = now.timestamp_millis();
    let mut out = RegistryView {
        now_ms,
        ..Default::default()
    };
    for d in docs {
        let shown = match d.get("_id") {
            Some(Bson::String(s)) => escape(s).into_owned(),
            Some(other) => escape(&other.to_string()).into_owned(),
            None => continue,
        };
        let refuse = |why: String| Refused {
            id: shown.clone(),
            why,
        };
        let Some(id) = text(d, "_id").and_then(NodeId::parse) else {
            out.refused.push(refuse(
                "its id is not a node id (letters, digits, `-` and `.`, at most 160)".into(),
            ));
            continue;
        };
        let role = match text(d, "role") {
            Some("origin") => Role::Origin,
            Some("edge") => Role::Edge,
            other => {
                out.refused.push(refuse(format!(
                    "role `{}` is neither origin nor edge",
                    escape(other.unwrap_or("-"))
                )));
                continue;
            }
        };
        let Some(addr) = text(d, "privateIp").and_then(parse_node_addr) else {
            out.refused.push(refuse(format!(
                "privateIp `{}` is not an address a balancer can use",
                escape(text(d, "privateIp").unwrap_or("-"))
            )));
            continue;
        };
        let state = text(d, "state").unwrap_or("unknown").to_string();
        // The registry's alive rule (`status` uses the same): server clock,
        // clock skew never alive, an impossible interval replaced.
        let live = crate::mongo::alive::liveness(d, now);
        let (age, alive) = (live.age_seconds, live.alive);
        let standing = match state.as_str() {
            "left" | "leaving" => Standing::Left,
            _ if !alive => Standing::Ineligible {
                why: match age {
                    Some(a) if a < 0.0 => {
                        format!("lastSeen {:.0}s ahead of the server's clock", -a)
                    }
                    Some(a) => format!("stale (last seen {a:.0}s ago)"),
                    None => "never seen".into(),
                },
            },
            "ready" => Standing::Eligible,
            "draining" => Standing::Draining,
            other => Standing::Ineligible {
                why: format!("state {}", escape(other)),
            },
        };
        out.candidates.push(Candidate {
            id,
            role,
            addr,
            state,
            alive,
            age_seconds: age.map(|a| (a.max(0.0) * 10.0).round() / 10.0),
            standing,
        });
    }
    out.candidates.sort_by(|a, b| a.id.cmp(&b.id));
    // Two documents cannot share an `_id`; the same address twice would be
    // one server twice (the dashboard has every node): later ids are refused.
    let mut seen: BTreeMap<IpAddr, NodeId> = BTreeMap::new();
    let mut kept = Vec::with_capacity(out.candidates.len());
    for c in std::mem::take(&mut out.candidates) {
        if matches!(c.standing, Standing::Eligible | Standing::Draining) {
            if let Some(first) = seen.get(&c.addr) {
                out.refused.push(Refused {
                    id: c.id.to_string(),
                    why: format!("privateIp {} is already node {first}'s", c.addr),
                });
                continue;
            }
            seen.insert(c.addr, c.id.clone());
        }
        kept.push(c);
    }
    out.candidates = kept;
    out
}

/// What the follower remembers between polls (and between one-shot runs,
/// in the status record): since when each node's eligibility has held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracker {
    pub seen: BTreeMap<NodeId, Observation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    pub eligible: bool,
    /// Server clock, ms since the epoch.
    pub since_ms: i64,
}

impl Tracker {
    /// Records this answer: a node whose eligibility changed (or that is
    /// new) starts a new period now; nodes neither registered nor in
    /// `current` are forgotten.
    pub fn observe(&mut self, view: &RegistryView, current: &Membership) {
        let now = view.now_ms;
        let mut next = BTreeMap::new();
        let ids = view
            .candidates
            .iter()
            .map(|c| (c.id.clone(), c.standing == Standing::Eligible))
            .chain(
                current
                    .all()
                    .filter(|(_, m)| view.get(&m.id).is_none())
                    .map(|(_, m)| (m.id.clone(), false)),
            );
        for (id, eligible) in ids {
            let obs = match self.seen.get(&id) {
                Some(o) if o.eligible == eligible => *o,
                _ => Observation {
                    eligible,
                    since_ms: now,
                },
            };
            next.insert(id, obs);
        }
        self.seen = next;
    }

    /// How long the node's current eligibility has lasted.
    fn held_for(&self, id: &NodeId, now_ms: i64) -> Duration {
        self.seen.get(id).map_or(Duration::ZERO, |o| {
            Duration::from_millis((now_ms - o.since_ms).max(0) as u64)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub settle: Duration,
    /// The largest share of a group (0..=1) implicit removals may take.
    pub max_removal: f64,
    /// HAProxy keeps a draining node in its backend (`drain`); Nginx has no
    /// such state and drops it.
    pub drain_in_place: bool,
}

/// A guard holding a group's removals back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub role: Role,
    pub reason: String,
    /// The members kept although the registry would take them out.
    pub kept: Vec<NodeId>,
}

impl Hold {
    /// The kept members, as listed in messages.
    pub fn kept_list(&self) -> String {
        self.kept
            .iter()
            .map(NodeId::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A change the hysteresis is still waiting on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    pub id: NodeId,
    pub role: Role,
    /// True: joins when the period is over; false: leaves.
    pub joins: bool,
    pub remaining_ms: u64,
    pub why: String,
}

/// A member kept from the balancer's file (settling out, or held by a
/// guard) dropped because a node the registry has in rotation now uses its
/// address: one address is one server, and the balancers refuse it twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Displaced {
    pub id: NodeId,
    pub role: Role,
    pub addr: IpAddr,
    /// The node that has the address now.
    pub by: NodeId,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub desired: Membership,
    pub holds: Vec<Hold>,
    pub waiting: Vec<Waiting>,
    #[serde(default)]
    pub displaced: Vec<Displaced>,
}

/// Applies the rules to one answer of the registry, from what is in
/// rotation now (`current`, as the balancer's file says).
pub fn decide(
    view: &RegistryView,
    current: &Membership,
    tracker: &Tracker,
    rules: &Rules,
) -> Decision {
    let mut out = Decision::default();
    let now = view.now_ms;
    let remaining = |id: &NodeId| {
        rules
            .settle
            .saturating_sub(tracker.held_for(id, now))
            .as_millis() as u64
    };
    for role in [Role::Origin, Role::Edge] {
        let cur = current.group(role);
        let mut next: Vec<Member> = Vec::new();
        let mut implicit: Vec<Member> = Vec::new();
        let mut implicit_why: Vec<String> = Vec::new();
        for m in cur {
            let c = view.get(&m.id).filter(|c| c.role == role);
            let (standing, addr) = match c {
                Some(c) => (c.standing.clone(), c.addr),
                None => (
                    Standing::Ineligible {
                        why: if view.get(&m.id).is_some() {
                            "now registered with another role".into()
                        } else {
                            "not in the registry".into()
                        },
                    },
                    m.addr,
                ),
            };
            match standing {
                Standing::Eligible => next.push(Member {
                    id: m.id.clone(),
                    addr,
                    state: MemberState::Ready,
                }),
                Standing::Draining if rules.drain_in_place => next.push(Member {
                    id: m.id.clone(),
                    addr,
                    state: MemberState::Draining,
                }),
                Standing::Draining | Standing::Left => {}
                Standing::Ineligible { why } => {
                    let left = remaining(&m.id);
                    if left == 0 {
                        implicit.push(m.clone());
                        implicit_why.push(why);
                    } else {
                        out.waiting.push(Waiting {
                            id: m.id.clone(),
                            role,
                            joins: false,
                            remaining_ms: left,
                            why,
                        });
                        next.push(m.clone());
                    }
                }
            }
        }
        let empty_group = cur.is_empty();
        let mut joined = 0usize;
        for c in view
            .candidates
            .iter()
            .filter(|c| c.role == role && c.standing == Standing::Eligible)
        {
            if cur.iter().any(|m| m.id == c.id) {
                continue;
            }
            let left = remaining(&c.id);
            if empty_group || left == 0 {
                joined += 1;
                next.push(Member {
                    id: c.id.clone(),
                    addr: c.addr,
                    state: MemberState::Ready,
                });
            } else {
                out.waiting.push(Waiting {
                    id: c.id.clone(),
                    role,
                    joins: true,
                    remaining_ms: left,
                    why: "ready".into(),
                });
            }
        }
        if !implicit.is_empty() {
            let reason = if next.is_empty() {
                Some(format!(
                    "the registry would leave no {} in rotation ({}: {})",
                    role.name(),
                    plural(implicit.len(), role),
                    summarize(&implicit_why)
                ))
            } else if implicit.len() > joined
                && implicit.len() as f64 > rules.max_removal * cur.len() as f64
            {
                // Removals covered by as many eligible nodes joining (a
                // replacement, a group of one whose node died) are no
                // glitch of the registry's.
                Some(format!(
                    "the registry would take {} of {} out at once ({}), more than --max-removal {:.0}%",
                    implicit.len(),
                    plural(cur.len(), role),
                    summarize(&implicit_why),
                    rules.max_removal * 100.0
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                out.holds.push(Hold {
                    role,
                    reason,
                    kept: implicit.iter().map(|m| m.id.clone()).collect(),
                });
                next.extend(implicit);
            }
        }
        *out.desired.group_mut(role) = next;
    }
    dedupe_addresses(view, &mut out);
    out.desired.sort();
    out
}

/// One address, one server, across both groups (Nginx's cookie maps and
/// HAProxy's state file key servers by address): a member kept from the
/// file whose address a node in rotation by the registry's word now has
/// (an address reused by a replacement) is dropped, the registry's node
/// winning. Between members kept from the file, the first (by role, id)
/// stays.
fn dedupe_addresses(view: &RegistryView, out: &mut Decision) {
    let registry_backed = |role: Role, m: &Member| {
        view.get(&m.id).is_some_and(|c| {
            c.role == role
                && c.addr == m.addr
                && matches!(c.standing, Standing::Eligible | Standing::Draining)
        })
    };
    let mut owner: BTreeMap<IpAddr, NodeId> = BTreeMap::new();
    for role in [Role::Origin, Role::Edge] {
        for m in out.desired.group(role) {
            if registry_backed(role, m) {
                owner.entry(m.addr).or_insert_with(|| m.id.clone());
            }
        }
    }
    let mut dropped: Vec<NodeId> = Vec::new();
    for role in [Role::Origin, Role::Edge] {
        let mut group = std::mem::take(out.desired.group_mut(role));
        group.sort_by(|a, b| a.id.cmp(&b.id));
        group.retain(|m| {
            if registry_backed(role, m) {
                return true;
            }
            match owner.get(&m.addr) {
                Some(by) => {
                    out.displaced.push(Displaced {
                        id: m.id.clone(),
                        role,
                        addr: m.addr,
                        by: by.clone(),
                    });
                    dropped.push(m.id.clone());
                    false
                }
                None => {
                    owner.insert(m.addr, m.id.clone());
                    true
                }
            }
        });
        *out.desired.group_mut(role) = group;
    }
    if dropped.is_empty() {
        return;
    }
    out.waiting.retain(|w| !dropped.contains(&w.id));
    for h in &mut out.holds {
        h.kept.retain(|id| !dropped.contains(id));
    }
    out.holds.retain(|h| !h.kept.is_empty());
}

fn plural(n: usize, role: Role) -> String {
    format!("{n} {}{}", role.name(), if n == 1 { "" } else { "s" })
}

/// "stale (…) ×3, not in the registry" from the reasons of many nodes.
fn summarize(whys: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for w in whys {
        // "stale (last seen 42s ago)" counts as "stale".
        let key = w.split(" (").next().unwrap_or(w);
        *counts.entry(key).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, n)| {
            if n == 1 {
                k.to_string()
            } else {
                format!("{k} ×{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    const NOW: i64 = 1_000_000_000;

    /// `ago`: seconds before the time the view is taken at (`at`).
    fn node(id: &str, role: &str, ip: &str, state: &str, ago: i64) -> Document {
        doc! {
            "_id": id, "role": role, "privateIp": ip, "state": state,
            "intervalSeconds": 5.0, "lastSeenAgo": ago,
        }
    }

    fn at(ms: i64, docs: &[Document]) -> RegistryView {
        let now = NOW + ms;
        let docs: Vec<Document> = docs
            .iter()
            .map(|d| {
                let mut d = d.clone();
                if let Some(ago) = d.remove("lastSeenAgo").and_then(|a| a.as_i64()) {
                    d.insert("lastSeen", DateTime::from_millis(now - ago * 1000));
                }
                d
            })
            .collect();
        view(&docs, DateTime::from_millis(now))
    }

    fn ids(ms: &[Member]) -> Vec<&str> {
        ms.iter().map(|m| m.id.as_str()).collect()
    }

    const RULES: Rules = Rules {
        settle: Duration::from_secs(10),
        max_removal: 0.5,
        drain_in_place: true,
    };

    #[test]
    fn hostile_documents_are_refused_not_rendered() {
        let docs = vec![
            node("i-ok", "origin", "10.0.1.5", "ready", 1),
            node(
                "i-x\nserver evil 1.2.3.4:80",
                "origin",
                "10.0.1.6",
                "ready",
                1,
            ),
            node("i-y", "origin", "10.0.1.7;evil", "ready", 1),
            node("i-z", "boss", "10.0.1.8", "ready", 1),
            node("i-w", "edge", "10.0.1.9", "ready", 1),
            node("i-v", "edge", "10.0.1.9", "ready", 1),
            doc! { "_id": 7, "role": "edge", "privateIp": "10.0.1.9" },
        ];
        let v = at(0, &docs);
        let ok: Vec<&str> = v.candidates.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ok, ["i-ok", "i-v"]);
        let refused: Vec<&str> = v.refused.iter().map(|r| r.id.as_str()).collect();
        assert!(
            refused.contains(&"i-x\\nserver evil 1.2.3.4:80"),
            "{refused:?}"
        );
        assert_eq!(v.refused.len(), 5, "{:?}", v.refused);
        assert!(
            v.refused
                .iter()
                .any(|r| r.id == "i-w" && r.why.contains("i-v"))
        );
    }

    #[test]
    fn a_last_seen_ahead_of_the_servers_clock_is_never_alive() {
        let v = at(
            0,
            &[
                node("a", "edge", "10.0.1.1", "ready", -60),
                node("b", "edge", "10.0.1.2", "ready", -1),
            ],
        );
        assert!(
            matches!(&v.candidates[0].standing, Standing::Ineligible { why } if why.contains("ahead of the server's clock"))
        );
        assert_eq!(
            v.candidates[1].standing,
            Standing::Eligible,
            "within the tolerance"
        );
    }

    #[test]
    fn a_flapping_node_neither_joins_nor_leaves_before_it_settled() {
        let mut t = Tracker::default();
        let ready = |ago| {
            vec![
                node("a", "origin", "10.0.1.1", "ready", 1),
                node("b", "origin", "10.0.1.2", "ready", ago),
            ]
        };
        // An empty group takes eligible nodes at once.
        let v = at(0, &ready(1));
        t.observe(&v, &Membership::default());
        let d = decide(&v, &Membership::default(), &t, &RULES);
        assert_eq!(ids(&d.desired.origin), ["a", "b"]);
        let cur = d.desired.clone();
        // b goes stale: it stays until stale for 10 s.
        let v = at(30_000, &ready(25));
        t.observe(&v, &cur);
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(ids(&d.desired.origin), ["a", "b"]);
        assert_eq!(d.waiting.len(), 1);
        assert!(!d.waiting[0].joins && d.waiting[0].remaining_ms == 10_000);
        // Back after 5 s: the period starts again.
        let v = at(35_000, &ready(1));
        t.observe(&v, &cur);
        assert_eq!(
            ids(&decide(&v, &cur, &t, &RULES).desired.origin),
            ["a", "b"]
        );
        let v = at(40_000, &ready(25));
        t.observe(&v, &cur);
        assert_eq!(
            ids(&decide(&v, &cur, &t, &RULES).desired.origin),
            ["a", "b"]
        );
        // Stale for 10 s without interruption: out (1 of 2 is not more than half).
        let v = at(50_000, &ready(35));
        t.observe(&v, &cur);
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(ids(&d.desired.origin), ["a"]);
        assert!(d.holds.is_empty());
        let cur = d.desired.clone();
        // Ready again: joins only after 10 s (the group is not empty).
        let v = at(51_000, &ready(1));
        t.observe(&v, &cur);
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(ids(&d.desired.origin), ["a"]);
        assert!(d.waiting[0].joins);
        let v = at(61_000, &ready(1));
        t.observe(&v, &cur);
        assert_eq!(
            ids(&decide(&v, &cur, &t, &RULES).desired.origin),
            ["a", "b"]
        );
    }

    #[test]
    fn explicit_states_apply_at_once_and_drain_in_place_or_not() {
        let docs = vec![
            node("a", "edge", "10.0.1.1", "ready", 1),
            node("b", "edge", "10.0.1.2", "draining", 1),
            node("c", "edge", "10.0.1.3", "left", 1),
        ];
        let cur = Membership {
            origin: vec![],
            edge: ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, id)| Member {
                    id: NodeId::parse(id).unwrap(),
                    addr: format!("10.0.1.{}", i + 1).parse().unwrap(),
                    state: MemberState::Ready,
                })
                .collect(),
        };
        let v = at(0, &docs);
        let mut t = Tracker::default();
        t.observe(&v, &cur);
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(ids(&d.desired.edge), ["a", "b"]);
        assert_eq!(d.desired.edge[1].state, MemberState::Draining);
        assert!(d.holds.is_empty() && d.waiting.is_empty());
        let nginx = Rules {
            drain_in_place: false,
            ..RULES
        };
        assert_eq!(ids(&decide(&v, &cur, &t, &nginx).desired.edge), ["a"]);
    }

    #[test]
    fn guards_hold_implicit_removals() {
        let four = |ago: [i64; 4]| {
            (0..4)
                .map(|i| {
                    node(
                        &format!("e{i}"),
                        "edge",
                        &format!("10.0.2.{i}"),
                        "ready",
                        ago[i],
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut t = Tracker::default();
        let v = at(0, &four([1; 4]));
        t.observe(&v, &Membership::default());
        let cur = decide(&v, &Membership::default(), &t, &RULES).desired;
        assert_eq!(cur.edge.len(), 4);
        // Three of four go stale together: held (more than half).
        for ms in [100_000, 111_000] {
            let v = at(ms, &four([1, 99, 99, 99]));
            t.observe(&v, &cur);
            let d = decide(&v, &cur, &t, &RULES);
            assert_eq!(d.desired.edge.len(), 4, "at {ms}");
        }
        let v = at(111_000, &four([1, 99, 99, 99]));
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(d.holds.len(), 1);
        assert!(
            d.holds[0].reason.contains("3 of 4 edges"),
            "{}",
            d.holds[0].reason
        );
        // The registry answers no node at all: never emptied.
        let v = at(200_000, &[]);
        t.observe(&v, &cur);
        let v = at(211_000, &[]);
        t.observe(&v, &cur);
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(d.desired.edge.len(), 4);
        assert!(
            d.holds[0].reason.contains("no edge in rotation"),
            "{:?}",
            d.holds
        );
        // Two of four is not more than half.
        let v = at(300_000, &four([1, 1, 99, 99]));
        t.observe(&v, &cur);
        let v = at(311_000, &four([1, 1, 99, 99]));
        t.observe(&v, &cur);
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(ids(&d.desired.edge), ["e0", "e1"]);
        assert!(d.holds.is_empty());
        // Explicit leaves are no glitch: all may go.
        let mut gone = four([1; 4]);
        for d in &mut gone {
            d.insert("state", "left");
        }
        let v = at(400_000, &gone);
        t.observe(&v, &cur);
        assert!(decide(&v, &cur, &t, &RULES).desired.edge.is_empty());
    }

    /// The same answer at 0 and at 11 s (past the settle time): the
    /// tracker and the last view.
    fn settled(docs: &[Document], cur: &Membership) -> (Tracker, RegistryView) {
        let mut t = Tracker::default();
        t.observe(&at(0, docs), cur);
        let v = at(11_000, docs);
        t.observe(&v, cur);
        (t, v)
    }

    fn member(id: &str, ip: &str) -> Member {
        Member {
            id: NodeId::parse(id).unwrap(),
            addr: ip.parse().unwrap(),
            state: MemberState::Ready,
        }
    }

    #[test]
    fn a_reused_address_is_one_server_the_registrys_node_winning() {
        // a left without a word (settling out); b took its address.
        let cur = Membership {
            origin: vec![member("a", "10.0.1.5"), member("o", "10.0.1.9")],
            edge: vec![member("x", "10.0.1.7")],
        };
        let docs = vec![
            node("b", "origin", "10.0.1.5", "ready", 1),
            node("o", "origin", "10.0.1.9", "ready", 1),
            // x's address is now an origin's (another role).
            node("y", "origin", "10.0.1.7", "ready", 1),
        ];
        // a and x were alive until 5 s; b and y registered at 0.
        let mut before = docs.clone();
        before.push(node("a", "origin", "10.0.1.5", "ready", 1));
        before.push(node("x", "edge", "10.0.1.7", "ready", 1));
        let mut t = Tracker::default();
        // (the view refuses b and y while a and x hold their addresses)
        t.observe(&at(0, &docs), &cur);
        let v = at(0, &before);
        let mut seen = t.clone();
        seen.observe(&v, &cur);
        for (id, o) in seen.seen {
            if matches!(id.as_str(), "a" | "x") {
                t.seen.insert(id, o);
            }
        }
        let v = at(5_000, &docs);
        t.observe(&v, &cur);
        // At 11 s b and y settled, a and x have 6 s of 10 to go.
        let v = at(11_000, &docs);
        t.observe(&v, &cur);
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(ids(&d.desired.origin), ["b", "o", "y"], "{d:?}");
        assert!(d.desired.edge.is_empty(), "{d:?}");
        let shown: Vec<(&str, &str)> = d
            .displaced
            .iter()
            .map(|x| (x.id.as_str(), x.by.as_str()))
            .collect();
        assert_eq!(shown, [("a", "b"), ("x", "y")]);
        assert!(d.waiting.is_empty(), "{d:?}");
        // Held by a guard (the group would be emptied): still one server.
        let cur = Membership {
            origin: vec![member("a", "10.0.1.5")],
            edge: vec![],
        };
        let docs = vec![node("b", "edge", "10.0.1.5", "ready", 1)];
        let (t, v) = settled(&docs, &cur);
        let d = decide(&v, &cur, &t, &RULES);
        assert!(d.desired.origin.is_empty(), "{d:?}");
        assert_eq!(ids(&d.desired.edge), ["b"]);
        assert!(d.holds.is_empty(), "{d:?}");
    }

    #[test]
    fn a_group_of_one_lets_its_dead_node_go_once_a_replacement_joined() {
        let cur = Membership {
            origin: vec![member("a", "10.0.1.5")],
            edge: vec![],
        };
        let dead = node("a", "origin", "10.0.1.5", "ready", 99);
        let docs = vec![dead.clone(), node("b", "origin", "10.0.1.6", "ready", 1)];
        let (t, v) = settled(&docs, &cur);
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(ids(&d.desired.origin), ["b"], "{d:?}");
        assert!(d.holds.is_empty(), "{d:?}");
        // Without a replacement the last one stays (a registry that lost
        // its state never empties a group).
        let v = at(11_000, std::slice::from_ref(&dead));
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(ids(&d.desired.origin), ["a"]);
        assert_eq!(d.holds.len(), 1);
        let v = at(11_000, &[]);
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(ids(&d.desired.origin), ["a"]);
        // Three of four stale with one joining: still more than half, held.
        let cur = Membership {
            origin: vec![],
            edge: (0..4)
                .map(|i| member(&format!("e{i}"), &format!("10.0.2.{i}")))
                .collect(),
        };
        let mut docs: Vec<Document> = (0..4)
            .map(|i| {
                node(
                    &format!("e{i}"),
                    "edge",
                    &format!("10.0.2.{i}"),
                    "ready",
                    if i == 0 { 1 } else { 99 },
                )
            })
            .collect();
        docs.push(node("e9", "edge", "10.0.2.9", "ready", 1));
        let (t, v) = settled(&docs, &cur);
        let d = decide(&v, &cur, &t, &RULES);
        assert_eq!(d.desired.edge.len(), 5, "{d:?}");
        assert_eq!(d.holds.len(), 1);
    }
}
