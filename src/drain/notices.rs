//! EC2's termination notices, read from the instance metadata (IMDSv2,
//! through [`Imds::get`]):
//!
//! - `autoscaling/target-lifecycle-state` = `Terminated`: the Auto Scaling
//!   group scales the instance in (with a lifecycle hook it waits in
//!   `Terminating:Wait` until the hook is completed or times out);
//! - `spot/instance-action`: `{"action": "terminate"|"stop"|"hibernate",
//!   "time": …}`, two minutes ahead;
//! - advisory, logged and shown in `status`, never a drain:
//!   `events/recommendations/rebalance` (`{"noticeTime": …}`) and
//!   `events/maintenance/scheduled` (a JSON list of events).
//!
//! A failed read is never a notice: the caller logs it once and polls
//! again later.
//!
//! Azure's and GCP's notices are read by [`crate::cloud::events`];
//! [`from_cloud`] turns them into the same findings: `Preempt` (Azure) and
//! `instance/preempted` (GCP) drain as a `preemption`, Azure's `Terminate`
//! and GCP's `TERMINATE_ON_HOST_MAINTENANCE` as a `scheduled-termination`,
//! each ending [`SPOT_MARGIN`] before the time the cloud named; the rest is
//! advisory.

use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};
use serde_json::Value;

use super::state::{Event, Trigger};
use crate::cloud::ec2::Imds;
use crate::cloud::events::{self, NoticeKind};

pub const LIFECYCLE_STATE: &str = "autoscaling/target-lifecycle-state";
pub const SPOT_ACTION: &str = "spot/instance-action";
pub const REBALANCE: &str = "events/recommendations/rebalance";
pub const MAINTENANCE: &str = "events/maintenance/scheduled";

/// What the leaving steps need after a Spot notice's deadline is reached:
/// the drain ends this much before the instance is taken.
pub const SPOT_MARGIN: Duration = Duration::from_secs(15);

/// One poll's findings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    pub events: Vec<Event>,
    /// Advisory notices, one line each (escaped).
    pub advisories: Vec<String>,
    /// (an event's de-duplication key, the Azure Scheduled Event to
    /// acknowledge once the node left).
    pub acks: Vec<(String, String)>,
}

/// Budgets the caller gives each trigger.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    pub lifecycle: Duration,
}

fn parse_time(v: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v.as_str()?).ok()
}

/// Reads the notices once. `Err` only when the metadata service itself
/// failed for the two notices that drain (lifecycle, spot).
pub async fn poll(imds: &Imds, budgets: Budgets, now: SystemTime) -> Result<Findings> {
    let (lifecycle, spot, rebalance, maintenance) = tokio::join!(
        imds.get(LIFECYCLE_STATE),
        imds.get(SPOT_ACTION),
        imds.get(REBALANCE),
        imds.get(MAINTENANCE)
    );
    let mut f = Findings::default();
    let lifecycle = lifecycle?;
    let spot = spot?;
    if let Some(state) = lifecycle.as_deref().map(str::trim) {
        if state == "Terminated" {
            f.events.push(Event::Trigger {
                trigger: Trigger::LifecycleHook,
                key: "lifecycle:Terminated".into(),
                reason: "the Auto Scaling group is terminating this instance (target lifecycle state Terminated)".into(),
                deadline: now + budgets.lifecycle,
                lifecycle: true,
            });
        }
    }
    if let Some(text) = spot {
        // A notice the agent cannot read is no reason to drop the others
        // (a lifecycle `Terminated` of the same poll): said, not acted on.
        match spot_event(&text, now) {
            Ok(e) => f.events.push(e),
            Err(e) => f
                .advisories
                .push(format!("{e:#}: not read as a Spot interruption")),
        }
    }
    if let Ok(Some(text)) = rebalance {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let at = v["noticeTime"].as_str().unwrap_or("unknown time");
        f.advisories.push(format!(
            "rebalance recommendation (EC2 {}): this Spot instance is at elevated risk of interruption",
            crate::human::escape(at)
        ));
    }
    if let Ok(Some(text)) = maintenance {
        if let Ok(Value::Array(events)) = serde_json::from_str::<Value>(&text) {
            for e in events.iter().take(10) {
                let state = e["State"].as_str().unwrap_or("");
                if matches!(state, "Completed" | "Canceled") {
                    continue;
                }
                let s = |k: &str| crate::human::escape(e[k].as_str().unwrap_or("?")).into_owned();
                f.advisories.push(format!(
                    "scheduled maintenance {} ({}): {}, not before {}",
                    s("Code"),
                    s("EventId"),
                    s("Description"),
                    s("NotBefore")
                ));
            }
        }
    }
    Ok(f)
}

/// Azure's or GCP's notices as one poll's findings.
pub fn from_cloud(found: Vec<events::Notice>, now: SystemTime) -> Findings {
    let mut f = Findings::default();
    for n in found {
        let trigger = match n.kind {
            NoticeKind::Preempt => Trigger::Preemption,
            NoticeKind::Terminate => Trigger::ScheduledTermination,
            NoticeKind::Maintenance => {
                f.advisories.push(format!("{} ({})", n.detail, n.trigger));
                continue;
            }
        };
        let key = format!("{}:{}", n.provider.name(), n.id);
        // Without a time: the cloud acts now.
        let deadline = n
            .not_before
            .map_or(now, |t| t.checked_sub(SPOT_MARGIN).unwrap_or(t));
        if let Some(event) = n.ack {
            f.acks.push((key.clone(), event));
        }
        f.events.push(Event::Trigger {
            trigger,
            key,
            reason: n.detail,
            deadline,
            lifecycle: false,
        });
    }
    f
}

/// `spot/instance-action` as a drain trigger, its deadline
/// [`SPOT_MARGIN`] before the time EC2 named.
fn spot_event(text: &str, now: SystemTime) -> Result<Event> {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => bail!("{SPOT_ACTION} is not JSON"),
    };
    let action = v["action"].as_str().unwrap_or("terminate");
    if !matches!(action, "terminate" | "stop" | "hibernate") {
        bail!(
            "{SPOT_ACTION} names an unknown action `{}`",
            crate::human::escape(action)
        );
    }
    let time = parse_time(&v["time"]);
    let deadline = time
        .map(|t| t.checked_sub(SPOT_MARGIN).unwrap_or(t))
        // Without a time: the documented two minutes, from now.
        .unwrap_or(now + Duration::from_secs(120) - SPOT_MARGIN);
    Ok(Event::Trigger {
        trigger: Trigger::SpotInterruption,
        key: format!(
            "spot:{action}:{}",
            v["time"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(40)
                .collect::<String>()
        ),
        reason: format!(
            "EC2 Spot interruption: {action} at {}",
            time.map_or("an unknown time".into(), |t| {
                humantime::format_rfc3339_seconds(t).to_string()
            })
        ),
        deadline,
        lifecycle: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_clouds_notices_drain_or_advise() {
        let now = humantime::parse_rfc3339("2026-05-01T12:00:00Z").unwrap();
        let doc = r#"{"DocumentIncarnation": 2, "Events": [
            {"EventId": "602d9444-d2cd-49c7-8624-8643e7171297", "EventStatus": "Scheduled",
             "EventType": "Terminate", "ResourceType": "VirtualMachine", "Resources": ["vm-1"],
             "NotBefore": "Fri, 01 May 2026 12:10:00 GMT"},
            {"EventId": "0b1c2d3e-0000-4c39-9e7a-5a7c8e0d5f01", "EventStatus": "Scheduled",
             "EventType": "Reboot", "ResourceType": "VirtualMachine", "Resources": ["vm-1"],
             "NotBefore": "Fri, 01 May 2026 12:20:00 GMT"}]}"#;
        let f = from_cloud(events::parse_azure(doc, Some("vm-1")).unwrap(), now);
        assert_eq!(f.events.len(), 1);
        let Event::Trigger {
            trigger,
            key,
            deadline,
            lifecycle,
            ..
        } = &f.events[0]
        else {
            panic!()
        };
        assert_eq!(*trigger, Trigger::ScheduledTermination);
        assert_eq!(key, "azure:602d9444-d2cd-49c7-8624-8643e7171297");
        assert_eq!(
            deadline.duration_since(now).unwrap(),
            Duration::from_secs(585)
        );
        assert!(!lifecycle);
        assert_eq!(
            f.acks,
            [(
                key.clone(),
                "602d9444-d2cd-49c7-8624-8643e7171297".to_string()
            )]
        );
        assert_eq!(f.advisories.len(), 1, "{:?}", f.advisories);
        assert!(f.advisories[0].contains("Reboot"), "{:?}", f.advisories);

        let g = from_cloud(
            vec![events::gcp_notice("preempted", "TRUE", now).unwrap()],
            now,
        );
        let Event::Trigger {
            trigger, deadline, ..
        } = &g.events[0]
        else {
            panic!()
        };
        assert_eq!(*trigger, Trigger::Preemption);
        // GCP's 30 s notice, less the margin the leaving steps need.
        assert_eq!(
            deadline.duration_since(now).unwrap(),
            Duration::from_secs(15)
        );
        assert!(g.acks.is_empty());
    }

    #[test]
    fn a_spot_notice_ends_before_the_instance_is_taken() {
        let now = humantime::parse_rfc3339("2026-05-01T12:00:00Z").unwrap();
        let e = spot_event(
            r#"{"action": "terminate", "time": "2026-05-01T12:02:00Z"}"#,
            now,
        )
        .unwrap();
        let Event::Trigger { deadline, key, .. } = e else {
            panic!()
        };
        assert_eq!(
            deadline.duration_since(now).unwrap(),
            Duration::from_secs(105)
        );
        assert_eq!(key, "spot:terminate:2026-05-01T12:02:00Z");
        assert!(spot_event("not json", now).is_err());
        assert!(spot_event(r#"{"action": "explode"}"#, now).is_err());
    }
}
