//! Termination notices of clouds other than EC2, for the drain (EC2's
//! spot and lifecycle notices are read from its IMDS by the drain itself):
//!
//! - **Azure Scheduled Events**: `GET /metadata/scheduledevents?api-version=2020-07-01`
//!   with `Metadata: true`. `Preempt` (a Spot VM evicted, at least 30 s
//!   ahead) and `Terminate` (scale-in with a termination notification,
//!   5–15 min ahead) drain the node; `Reboot`, `Redeploy` and `Freeze` are
//!   advisory. Only events whose `Resources` name this VM count (every VM
//!   of an availability or scale set sees its siblings' events). Once the
//!   node is drained, the event is acknowledged
//!   (`POST` `{"StartRequests": [{"EventId": …}]}`) so Azure proceeds at
//!   once instead of waiting for `NotBefore`. The first request turns the
//!   service on and may take a while; a failed poll is never a notice.
//! - **GCP**: `GET /computeMetadata/v1/instance/preempted` (`TRUE`: a
//!   Spot/preemptible VM is being stopped, 30 s ahead) and
//!   `instance/maintenance-event` (`TERMINATE_ON_HOST_MAINTENANCE`: the VM
//!   will be stopped for host maintenance, 60 s ahead, so it drains;
//!   `MIGRATE_ON_HOST_MAINTENANCE` is advisory: a live migration). GCP has
//!   nothing to acknowledge.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::detect::Endpoints;
use super::http::{MetaClient, refused};
use super::{Budget, Provider, azure, gcp};

pub const AZURE_EVENTS_PATH: &str = "/metadata/scheduledevents";
pub const AZURE_EVENTS_API_VERSION: &str = "2020-07-01";

/// One poll costs at most this (the drain polls every few seconds).
pub const POLL: Budget = Budget {
    connect_timeout: Duration::from_millis(250),
    request_timeout: Duration::from_secs(2),
    attempts: 1,
    pause: Duration::ZERO,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The cloud takes a Spot/preemptible instance back.
    Preempt,
    /// The instance will be stopped or deleted (scale-in, maintenance).
    Terminate,
    /// Maintenance the node survives (reboot, live migration): advisory.
    Maintenance,
}

/// A notice the drain acts on (or only reports, when advisory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub provider: Provider,
    pub kind: NoticeKind,
    /// Stable per notice, for de-duplication: Azure's EventId, or GCP's
    /// key and value.
    pub id: String,
    /// The trigger's name, as the registry and logs show it.
    pub trigger: &'static str,
    /// What the cloud said, for the log and `status`.
    pub detail: String,
    /// When the cloud acts (Azure's NotBefore; GCP's documented notice
    /// counted from the poll that saw it).
    pub not_before: Option<SystemTime>,
    /// The event to acknowledge after the drain (Azure only).
    pub ack: Option<String>,
}

impl Notice {
    /// True when the node must drain (not only an advisory notice).
    pub fn drains(&self) -> bool {
        matches!(self.kind, NoticeKind::Preempt | NoticeKind::Terminate)
    }
}

/// Polls one cloud's notices.
pub struct Watcher {
    provider: Provider,
    client: MetaClient,
    endpoint: String,
    /// This VM's name (Azure's `Resources` name VMs).
    vm_name: Option<String>,
}

impl Watcher {
    /// A watcher for `provider`, when it has notices this module reads
    /// (Azure and GCP; EC2's come from its IMDS).
    pub fn new(
        provider: Provider,
        endpoints: &Endpoints,
        vm_name: Option<String>,
    ) -> Option<Result<Watcher>> {
        if !matches!(provider, Provider::Azure | Provider::Gcp) {
            return None;
        }
        if provider == Provider::Azure && vm_name.is_none() {
            tracing::warn!(
                "this VM's name is unknown (compute.name of Azure's metadata): every Scheduled Event counts as this VM's, and none is approved (Azure then waits for NotBefore)"
            );
        }
        Some(MetaClient::new(POLL).map(|client| Watcher {
            provider,
            client,
            endpoint: endpoints.of(provider).to_string(),
            vm_name,
        }))
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The current notices. An error (the service down, a refusal) is
    /// never a notice: the caller logs it and polls again.
    pub async fn poll(&self) -> Result<Vec<Notice>> {
        match self.provider {
            Provider::Azure => self.azure().await,
            Provider::Gcp => self.gcp().await,
            _ => Ok(Vec::new()),
        }
    }

    /// Tells the cloud the node is ready (Azure: approves the event so it
    /// starts now). A notice without an acknowledgement succeeds at once.
    pub async fn acknowledge(&self, notice: &Notice) -> Result<()> {
        match &notice.ack {
            Some(event) => self.acknowledge_event(event).await,
            None => Ok(()),
        }
    }

    /// Approves Azure Scheduled Event `event` (`StartRequests`).
    pub async fn acknowledge_event(&self, event: &str) -> Result<()> {
        let url = self.azure_url();
        let body = serde_json::json!({ "StartRequests": [{ "EventId": event }] }).to_string();
        let reply = self
            .client
            .send(&url, |c| {
                c.post(&url)
                    .header(azure::HEADER, "true")
                    .header("Content-Type", "application/json")
                    .body(body.clone())
            })
            .await
            .with_context(|| format!("acknowledging Scheduled Event {event}"))?;
        if !reply.status.is_success() {
            return Err(refused(&url, &reply))
                .with_context(|| format!("acknowledging Scheduled Event {event}"));
        }
        Ok(())
    }

    fn azure_url(&self) -> String {
        format!(
            "{}{AZURE_EVENTS_PATH}?api-version={AZURE_EVENTS_API_VERSION}",
            self.endpoint
        )
    }

    async fn azure(&self) -> Result<Vec<Notice>> {
        let url = self.azure_url();
        let reply = self.client.get(&url, &[(azure::HEADER, "true")]).await?;
        if !reply.status.is_success() {
            return Err(refused(&url, &reply));
        }
        parse_azure(&reply.body, self.vm_name.as_deref()).with_context(|| format!("reading {url}"))
    }

    async fn gcp(&self) -> Result<Vec<Notice>> {
        let mut out = Vec::new();
        let now = SystemTime::now();
        for key in ["preempted", "maintenance-event"] {
            let url = format!("{}/computeMetadata/v1/instance/{key}", self.endpoint);
            let reply = self
                .client
                .get(&url, &[(gcp::FLAVOR_HEADER, gcp::FLAVOR)])
                .await?;
            if !reply.status.is_success() {
                return Err(refused(&url, &reply));
            }
            if reply.header(gcp::FLAVOR_HEADER) != Some(gcp::FLAVOR) {
                bail!(
                    "{url} answered without `{}: {}`",
                    gcp::FLAVOR_HEADER,
                    gcp::FLAVOR
                );
            }
            out.extend(gcp_notice(key, reply.body.trim(), now));
        }
        Ok(out)
    }
}

/// The notice a GCP key's value means, if any.
pub fn gcp_notice(key: &str, value: &str, now: SystemTime) -> Option<Notice> {
    let (kind, trigger, notice) = match (key, value) {
        ("preempted", "TRUE") => (
            NoticeKind::Preempt,
            "gcp-preempted",
            Duration::from_secs(30),
        ),
        ("maintenance-event", "TERMINATE_ON_HOST_MAINTENANCE") => (
            NoticeKind::Terminate,
            "gcp-maintenance-event",
            Duration::from_secs(60),
        ),
        ("maintenance-event", "MIGRATE_ON_HOST_MAINTENANCE") => (
            NoticeKind::Maintenance,
            "gcp-maintenance-event",
            Duration::from_secs(60),
        ),
        _ => return None,
    };
    Some(Notice {
        provider: Provider::Gcp,
        kind,
        id: format!("{key}={value}"),
        trigger,
        detail: format!("GCP instance/{key} = {value}"),
        not_before: Some(now + notice),
        ack: None,
    })
}

/// Azure's RFC 1123 time (`Mon, 19 Sep 2016 18:29:47 GMT`).
fn http_date(text: &str) -> Option<SystemTime> {
    use time::format_description::well_known::Rfc2822;
    time::OffsetDateTime::parse(text, &Rfc2822)
        .ok()
        .map(SystemTime::from)
}

/// The notices of a Scheduled Events document that concern `vm_name`
/// (all of them when the name is unknown).
pub fn parse_azure(body: &str, vm_name: Option<&str>) -> Result<Vec<Notice>> {
    let doc: Value = serde_json::from_str(body).context("not JSON")?;
    let Some(events) = doc.get("Events").and_then(Value::as_array) else {
        bail!("the document has no Events list");
    };
    let mut out = Vec::new();
    for e in events {
        let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
        let id = text("EventId");
        if id.is_empty()
            || id.len() > 128
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            continue;
        }
        if let Some(name) = vm_name {
            let ours = e
                .get("Resources")
                .and_then(Value::as_array)
                .is_some_and(|r| {
                    r.iter()
                        .any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(name)))
                });
            if !ours {
                continue;
            }
        }
        let event_type = text("EventType");
        let kind = match event_type {
            "Preempt" => NoticeKind::Preempt,
            "Terminate" => NoticeKind::Terminate,
            "Reboot" | "Redeploy" | "Freeze" => NoticeKind::Maintenance,
            _ => continue,
        };
        let not_before = http_date(text("NotBefore"));
        out.push(Notice {
            provider: Provider::Azure,
            kind,
            id: id.to_string(),
            trigger: "azure-scheduled-event",
            detail: format!(
                "Azure Scheduled Event {} {} ({}, not before {})",
                crate::human::escape(event_type),
                id,
                crate::human::escape(text("EventStatus")),
                crate::human::escape(if text("NotBefore").is_empty() {
                    "now"
                } else {
                    text("NotBefore")
                })
            ),
            not_before,
            // Approving an event lets Azure act on every VM it names: only
            // when this VM is known to be one of them.
            ack: (kind != NoticeKind::Maintenance && vm_name.is_some()).then(|| id.to_string()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{
        "DocumentIncarnation": 3,
        "Events": [
            {"EventId": "602d9444-d2cd-49c7-8624-8643e7171297", "EventStatus": "Scheduled",
             "EventType": "Preempt", "ResourceType": "VirtualMachine", "Resources": ["ams-edge-1"],
             "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT", "Description": "", "EventSource": "Platform",
             "DurationInSeconds": -1},
            {"EventId": "B7A1C5B2-0000-4C39-9E7A-5A7C8E0D5F01", "EventStatus": "Scheduled",
             "EventType": "Reboot", "ResourceType": "VirtualMachine", "Resources": ["ams-edge-2"],
             "NotBefore": "Mon, 19 Sep 2016 18:40:00 GMT", "EventSource": "Platform"}
        ]
    }"#;

    #[test]
    fn only_this_vms_events_and_the_right_kinds() {
        let n = parse_azure(DOC, Some("ams-edge-1")).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].kind, NoticeKind::Preempt);
        assert!(n[0].drains());
        assert_eq!(
            n[0].ack.as_deref(),
            Some("602d9444-d2cd-49c7-8624-8643e7171297")
        );
        let t = n[0].not_before.unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_474_309_787
        );
        let other = parse_azure(DOC, Some("ams-edge-2")).unwrap();
        assert_eq!(other[0].kind, NoticeKind::Maintenance);
        assert!(!other[0].drains() && other[0].ack.is_none());
        let unknown = parse_azure(DOC, None).unwrap();
        assert_eq!(unknown.len(), 2);
        // Without this VM's name an event may be a sibling's: never approved.
        assert!(unknown.iter().all(|n| n.ack.is_none()));
        assert!(
            parse_azure(r#"{"DocumentIncarnation": 1, "Events": []}"#, None)
                .unwrap()
                .is_empty()
        );
        assert!(parse_azure("{}", None).is_err());
    }

    #[test]
    fn gcp_values() {
        let now = SystemTime::now();
        assert_eq!(
            gcp_notice("preempted", "TRUE", now).unwrap().kind,
            NoticeKind::Preempt
        );
        assert!(gcp_notice("preempted", "FALSE", now).is_none());
        assert!(gcp_notice("maintenance-event", "NONE", now).is_none());
        assert!(
            gcp_notice("maintenance-event", "TERMINATE_ON_HOST_MAINTENANCE", now)
                .unwrap()
                .drains()
        );
        assert!(
            !gcp_notice("maintenance-event", "MIGRATE_ON_HOST_MAINTENANCE", now)
                .unwrap()
                .drains()
        );
    }
}
