//! What every provider's metadata is normalized to: each value with the
//! place it came from, so `ams-agent metadata` can say why the agent
//! believes it. Values are checked on the way in (a metadata service is
//! another program's words): an implausible one is dropped with a note,
//! never passed on.

use std::net::Ipv4Addr;

use serde::Serialize;

/// A value and where it came from (`gcp metadata instance/zone`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sourced<T> {
    pub value: T,
    pub source: String,
}

impl<T> Sourced<T> {
    pub fn new(value: T, source: impl Into<String>) -> Self {
        Sourced {
            value,
            source: source.into(),
        }
    }
}

/// The instance as its cloud describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudFacts {
    pub instance_id: Option<Sourced<String>>,
    pub private_ipv4: Option<Sourced<Ipv4Addr>>,
    pub public_ipv4: Option<Sourced<Ipv4Addr>>,
    pub region: Option<Sourced<String>>,
    pub zone: Option<Sourced<String>>,
    pub instance_type: Option<Sourced<String>>,
    /// Spot / preemptible (the cloud may take the instance back).
    pub spot: Option<Sourced<bool>>,
    /// The VM's name where the cloud's notices name it (Azure's Scheduled
    /// Events list resources by VM name).
    pub vm_name: Option<Sourced<String>>,
    /// What was missing or refused while reading ("public IPv4: none
    /// assigned"), in the order met.
    pub notes: Vec<String>,
}

impl CloudFacts {
    /// Sets `slot` from `raw` when it passes `check`, else notes why not.
    pub fn put<T>(
        slot: &mut Option<Sourced<T>>,
        notes: &mut Vec<String>,
        what: &str,
        raw: Option<&str>,
        source: &str,
        check: impl Fn(&str) -> Option<T>,
    ) {
        let Some(raw) = raw.map(str::trim) else {
            return;
        };
        if raw.is_empty() {
            return;
        }
        match check(raw) {
            Some(v) => *slot = Some(Sourced::new(v, source)),
            None => notes.push(format!(
                "{what} `{}` from {source} is not plausible; ignored",
                crate::human::escape(&raw.chars().take(80).collect::<String>())
            )),
        }
    }
}

/// An instance id as clouds write them: letters, digits, `-` and `.`, 1
/// to 128 characters (an Oracle OCID is about 90), so that it is a node id
/// ([`crate::config::valid_node_id`]) also with the provider's name in front.
pub fn instance_id(v: &str) -> Option<String> {
    (!v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')))
    .then(|| v.to_string())
}

/// A short name (region, zone, instance type): printable ASCII without
/// blanks, quotes or backslashes, at most 128 characters.
pub fn token(v: &str) -> Option<String> {
    (!v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | '`')))
    .then(|| v.to_string())
}

/// A unicast IPv4 another host could use (not 0.0.0.0, loopback,
/// broadcast, multicast or link-local).
pub fn ipv4(v: &str) -> Option<Ipv4Addr> {
    let ip: Ipv4Addr = v.parse().ok()?;
    (!ip.is_unspecified()
        && !ip.is_loopback()
        && !ip.is_broadcast()
        && !ip.is_multicast()
        && !ip.is_link_local())
    .then_some(ip)
}

/// `TRUE`/`FALSE`, `true`/`false` (any case).
pub fn boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The last segment of a path-like value (`projects/1/zones/europe-west1-b`
/// → `europe-west1-b`).
pub fn last_segment(v: &str) -> &str {
    v.rsplit('/').next().unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_dropped_with_a_note() {
        let mut f = CloudFacts::default();
        CloudFacts::put(
            &mut f.zone,
            &mut f.notes,
            "zone",
            Some("eu-1a\nX-Evil: 1"),
            "test",
            token,
        );
        assert!(f.zone.is_none());
        assert!(f.notes[0].contains("\\n"), "{:?}", f.notes);
        CloudFacts::put(
            &mut f.private_ipv4,
            &mut f.notes,
            "private IPv4",
            Some("127.0.0.1"),
            "test",
            ipv4,
        );
        assert!(f.private_ipv4.is_none());
        CloudFacts::put(
            &mut f.zone,
            &mut f.notes,
            "zone",
            Some(" eu-1a "),
            "z",
            token,
        );
        assert_eq!(f.zone, Some(Sourced::new("eu-1a".to_string(), "z")));
        assert!(instance_id("ocid1.instance.oc1.phx.abcd").is_some());
        assert!(instance_id("i-0/../x").is_none());
        assert_eq!(ipv4("169.254.1.1"), None);
        assert_eq!(last_segment("projects/1/machineTypes/e2-micro"), "e2-micro");
    }
}
