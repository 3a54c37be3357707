//! The drain's state machine (`ready → draining → left`) and where it is
//! kept: `/var/lib/ams-agent/drain.json`, written only by the reporter (the
//! one process that drains), read by `ams-agent drain` and `status`. The
//! CLI asks through `/var/lib/ams-agent/drain-request.json`, which the
//! reporter looks at every second, applies, acknowledges in `drain.json`
//! (`request`) and removes.
//!
//! [`apply`] is the whole machine, pure: every trigger goes through it, so
//! the same notice seen on every poll, a second trigger, a repeated
//! `ams-agent drain` are decided in one place.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::host::fs::{Cap, private_meta};

pub const STATE_FILE: &str = "/var/lib/ams-agent/drain.json";
pub const REQUEST_FILE: &str = "/var/lib/ams-agent/drain-request.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Draining,
    Left,
}

/// What started (or joined) a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// The Auto Scaling group moves the instance to `Terminated`
    /// (`autoscaling/target-lifecycle-state`).
    LifecycleHook,
    /// EC2 takes a Spot instance back (`spot/instance-action`).
    SpotInterruption,
    /// `ams-agent drain`.
    Manual,
    /// Another cloud takes a Spot/preemptible VM back (Azure Scheduled
    /// Event `Preempt`, GCP `instance/preempted`).
    Preemption,
    /// Another cloud will stop or delete the VM (Azure Scheduled Event
    /// `Terminate`, GCP `TERMINATE_ON_HOST_MAINTENANCE`).
    ScheduledTermination,
}

impl Trigger {
    /// As the registry, the logs and `status` name it.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::LifecycleHook => "lifecycle-hook",
            Trigger::SpotInterruption => "spot-interruption",
            Trigger::Manual => "manual",
            Trigger::Preemption => "preemption",
            Trigger::ScheduledTermination => "scheduled-termination",
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// No stream and no viewer was left.
    Empty,
    /// The budget ran out first: left anyway.
    DeadlinePassed,
    /// AMS did not answer: nothing could be counted, nothing served.
    AmsDown,
    /// The machine shut down during the drain.
    Shutdown,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Empty => "empty",
            Outcome::DeadlinePassed => "deadline-passed",
            Outcome::AmsDown => "ams-down",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// The Auto Scaling lifecycle action to complete when the drain ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LifecycleRef {
    /// Known once found (flags, agent.toml, or DescribeLifecycleHooks).
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub hook: Option<String>,
    /// Sent `CompleteLifecycleAction` (or found none active).
    #[serde(default)]
    pub completed: bool,
}

/// `drain.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainState {
    pub phase: Phase,
    /// The node this drain belongs to (an image of a drained node is not).
    pub node: String,
    /// The first trigger; the others are in `seen`.
    pub trigger: Trigger,
    pub reason: String,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds: leave by then whatever is left on the node.
    pub deadline: u64,
    /// De-duplication keys of every trigger applied (`spot:terminate:<time>`, ...).
    pub seen: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleRef>,
    /// The last CLI request applied (its id): the CLI's acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// What the last CLI request got, for the CLI to print.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_at: Option<u64>,
    /// Azure Scheduled Events to acknowledge once the node left (so Azure
    /// proceeds at once instead of waiting for `NotBefore`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acks: Vec<String>,
    /// Left, but the steps after it (the registry, the `clusternode` row,
    /// the lifecycle action, the cloud's events) have not all run yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unfinished: bool,
}

impl DrainState {
    pub fn deadline_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.deadline)
    }

    pub fn since_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.since)
    }

    /// What is left of the budget at `now`.
    pub fn left(&self, now: SystemTime) -> Duration {
        self.deadline_time().duration_since(now).unwrap_or_default()
    }

    /// Only `ams-agent drain` started or joined it (so it may be cancelled).
    pub fn manual_only(&self) -> bool {
        self.seen.iter().all(|k| k.starts_with("manual:"))
    }
}

/// A CLI request (`drain-request.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub id: String,
    #[serde(flatten)]
    pub action: RequestAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum RequestAction {
    Drain {
        /// Seconds.
        deadline: u64,
        reason: String,
    },
    Cancel,
}

/// An input of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Trigger {
        trigger: Trigger,
        /// De-duplication key: the same notice seen again is the same key.
        key: String,
        reason: String,
        deadline: SystemTime,
        /// A lifecycle hook to complete at the end.
        lifecycle: bool,
    },
    Cancel,
}

/// What [`apply`] decided, for the log and the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A drain began.
    Started,
    /// Another trigger joined the running drain; `shortened` when its
    /// budget is shorter (the drain now ends by the earlier deadline).
    Joined { shortened: bool },
    /// Nothing new: the same trigger again, or the node already left.
    Unchanged,
    /// The drain was cancelled: the node is `ready` again.
    Cancelled,
    /// Refused, with the reason.
    Refused(String),
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The machine: the state after `event` at `now`, and the decision.
pub fn apply(
    current: Option<&DrainState>,
    event: Event,
    node: &str,
    now: SystemTime,
) -> (Option<DrainState>, Decision) {
    match (current, event) {
        (Some(s), _) if s.phase == Phase::Left => (Some(s.clone()), Decision::Unchanged),
        (None, Event::Cancel) => (None, Decision::Refused("no drain is running".into())),
        (Some(s), Event::Cancel) => {
            if s.manual_only() {
                (None, Decision::Cancelled)
            } else {
                (
                    Some(s.clone()),
                    Decision::Refused(format!(
                        "the drain was started by {} ({}): the instance is being taken away, cancelling cannot stop that",
                        s.trigger.name(),
                        s.reason
                    )),
                )
            }
        }
        (
            None,
            Event::Trigger {
                trigger,
                key,
                reason,
                deadline,
                lifecycle,
            },
        ) => (
            Some(DrainState {
                phase: Phase::Draining,
                node: node.to_string(),
                trigger,
                reason,
                since: unix(now),
                deadline: unix(deadline).max(unix(now)),
                seen: vec![key],
                lifecycle: lifecycle.then(LifecycleRef::default),
                request: None,
                answer: None,
                outcome: None,
                left_at: None,
                acks: Vec::new(),
                unfinished: false,
            }),
            Decision::Started,
        ),
        (
            Some(s),
            Event::Trigger {
                trigger,
                key,
                reason,
                deadline,
                lifecycle,
            },
        ) => {
            if s.seen.contains(&key) {
                return (Some(s.clone()), Decision::Unchanged);
            }
            let mut next = s.clone();
            let new_deadline = unix(deadline).max(unix(now));
            // By hand over by hand: the operator's latest word. Otherwise
            // the earlier deadline wins (the instance goes away by then).
            let shortened = if trigger == Trigger::Manual && s.manual_only() {
                next.deadline = new_deadline;
                new_deadline < s.deadline
            } else {
                next.deadline = s.deadline.min(new_deadline);
                next.deadline < s.deadline
            };
            if trigger != Trigger::Manual && s.trigger == Trigger::Manual {
                // The cloud's reason is the one that matters now.
                next.trigger = trigger;
                next.reason = reason;
            }
            if lifecycle && next.lifecycle.is_none() {
                next.lifecycle = Some(LifecycleRef::default());
            }
            next.seen.push(key);
            (Some(next), Decision::Joined { shortened })
        }
    }
}

/// `drain.json`, when there is one for `node`. A file of another node (an
/// image of a drained node) or one that cannot be read is no drain, with a
/// warning: it is never a reason to drain.
pub fn load(host: &Host, node: &str) -> Option<DrainState> {
    let bytes = match host.read_capped(Path::new(STATE_FILE), Cap::CONFIG) {
        Ok(b) => b?,
        Err(e) => {
            tracing::warn!("cannot read {STATE_FILE} ({e:#}); taking the node as not draining");
            return None;
        }
    };
    match serde_json::from_slice::<DrainState>(&bytes) {
        Ok(s) if s.node == node => Some(s),
        Ok(s) => {
            tracing::info!(
                "{STATE_FILE} belongs to node {} (an image of a drained node?), not to {node}: ignored",
                crate::human::escape(&s.node)
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                "{STATE_FILE} is not a drain state ({e}); taking the node as not draining"
            );
            None
        }
    }
}

/// Reads `drain.json` whoever it belongs to (for the CLI).
pub fn load_any(host: &Host) -> Result<Option<DrainState>> {
    let Some(bytes) = host.read_capped(Path::new(STATE_FILE), Cap::CONFIG)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("reading {STATE_FILE}"))
}

/// Writes (or, for `None`, removes) `drain.json`, atomically.
pub fn save(host: &Host, state: Option<&DrainState>) -> Result<()> {
    let path = Path::new(STATE_FILE);
    match state {
        Some(s) => {
            host.create_dir_all(Path::new(crate::host::fs::STATE_DIR), 0o700)?;
            let mut v = serde_json::to_vec_pretty(s).expect("the state serialises");
            v.push(b'\n');
            host.write_atomic(path, &v, private_meta(0o644))
                .with_context(|| format!("writing {STATE_FILE}"))
        }
        None if host.exists(path) => host
            .remove(path)
            .with_context(|| format!("removing {STATE_FILE}")),
        None => Ok(()),
    }
}

/// The pending CLI request, if any (a file that is not one is removed with
/// a warning, so it cannot be re-read every second).
pub fn take_request(host: &Host) -> Option<Request> {
    let path = Path::new(REQUEST_FILE);
    let bytes = match host.read_capped(path, Cap::CONFIG) {
        Ok(b) => b?,
        Err(e) => {
            tracing::warn!("cannot read {REQUEST_FILE}: {e:#}");
            let _ = host.remove(path);
            return None;
        }
    };
    let _ = host.remove(path);
    match serde_json::from_slice::<Request>(&bytes) {
        Ok(r)
            if r.id.len() <= 64 && r.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            Some(r)
        }
        _ => {
            tracing::warn!("{REQUEST_FILE} is not a drain request: removed");
            None
        }
    }
}

/// Writes the CLI request for the reporter.
pub fn put_request(host: &Host, req: &Request) -> Result<()> {
    host.create_dir_all(Path::new(crate::host::fs::STATE_DIR), 0o700)?;
    let v = serde_json::to_vec(req).expect("the request serialises");
    host.write_atomic(Path::new(REQUEST_FILE), &v, private_meta(0o600))
        .with_context(|| format!("writing {REQUEST_FILE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn trig(t: Trigger, key: &str, deadline: u64) -> Event {
        Event::Trigger {
            trigger: t,
            key: key.into(),
            reason: key.into(),
            deadline: at(deadline),
            lifecycle: t == Trigger::LifecycleHook,
        }
    }

    #[test]
    fn one_machine_for_every_trigger() {
        let (s, d) = apply(
            None,
            trig(Trigger::Manual, "manual:a", 1600),
            "i-1",
            at(1000),
        );
        assert_eq!(d, Decision::Started);
        let s = s.unwrap();
        assert_eq!(
            (s.phase, s.deadline, s.since),
            (Phase::Draining, 1600, 1000)
        );
        // The same notice again, a second time: nothing new.
        let (s2, d) = apply(
            Some(&s),
            trig(Trigger::Manual, "manual:a", 1900),
            "i-1",
            at(1010),
        );
        assert_eq!((s2.as_ref(), d), (Some(&s), Decision::Unchanged));
        // A spot notice joins, with a shorter budget: it wins.
        let (s3, d) = apply(
            Some(&s),
            trig(Trigger::SpotInterruption, "spot:terminate:t", 1100),
            "i-1",
            at(1010),
        );
        let s3 = s3.unwrap();
        assert_eq!(d, Decision::Joined { shortened: true });
        assert_eq!((s3.deadline, s3.trigger), (1100, Trigger::SpotInterruption));
        // ... and then it cannot be cancelled.
        let (s4, d) = apply(Some(&s3), Event::Cancel, "i-1", at(1020));
        assert!(matches!(d, Decision::Refused(_)));
        assert_eq!(s4.as_ref(), Some(&s3));
        // A later manual drain never extends it.
        let (s5, _) = apply(
            Some(&s3),
            trig(Trigger::Manual, "manual:b", 5000),
            "i-1",
            at(1020),
        );
        assert_eq!(s5.unwrap().deadline, 1100);
        // A lifecycle hook joining a manual drain is completed at the end.
        let (s6, _) = apply(
            Some(&s),
            trig(Trigger::LifecycleHook, "lifecycle:Terminated", 1900),
            "i-1",
            at(1020),
        );
        let s6 = s6.unwrap();
        assert!(s6.lifecycle.is_some());
        assert_eq!(s6.deadline, 1600);
        // Manual only: cancelled.
        assert_eq!(
            apply(Some(&s), Event::Cancel, "i-1", at(1020)).1,
            Decision::Cancelled
        );
        assert!(matches!(
            apply(None, Event::Cancel, "i-1", at(1)).1,
            Decision::Refused(_)
        ));
        // Left stays left.
        let mut left = s.clone();
        left.phase = Phase::Left;
        assert_eq!(
            apply(
                Some(&left),
                trig(Trigger::Manual, "manual:c", 9),
                "i-1",
                at(1)
            )
            .1,
            Decision::Unchanged
        );
    }

    #[test]
    fn the_state_round_trips_and_other_nodes_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let h = Host::new(dir.path(), crate::host::fs::CrashPoints::default());
        let (s, _) = apply(
            None,
            trig(Trigger::Manual, "manual:a", 1600),
            "i-1",
            at(1000),
        );
        save(&h, s.as_ref()).unwrap();
        assert_eq!(load(&h, "i-1"), s);
        assert_eq!(load(&h, "i-2"), None);
        save(&h, None).unwrap();
        assert_eq!(load(&h, "i-1"), None);
        std::fs::create_dir_all(dir.path().join("var/lib/ams-agent")).unwrap();
        std::fs::write(dir.path().join("var/lib/ams-agent/drain.json"), "garbage").unwrap();
        assert_eq!(load(&h, "i-1"), None);
        let r = Request {
            id: "r-1".into(),
            action: RequestAction::Drain {
                deadline: 600,
                reason: "x".into(),
            },
        };
        put_request(&h, &r).unwrap();
        assert_eq!(take_request(&h), Some(r));
        assert_eq!(take_request(&h), None, "taken once");
    }
}
