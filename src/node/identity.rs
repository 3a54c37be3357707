//! Who this node is: `_id` = the EC2 instance id, else `/etc/machine-id`.
//! Addresses come from the instance metadata, else from the host (the
//! default route's IPv4), so a node outside EC2 still works.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};

use super::imds::{Budget, Imds, InstanceMetadata};
use crate::ams::layout;
use crate::host::{Host, net};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdSource {
    Ec2,
    MachineId,
}

impl IdSource {
    pub fn name(self) -> &'static str {
        match self {
            IdSource::Ec2 => "ec2",
            IdSource::MachineId => "machine-id",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub id: String,
    pub source: IdSource,
    pub hostname: String,
    pub private_ip: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
    pub instance_type: Option<String>,
    pub availability_zone: Option<String>,
}

/// Reads `/etc/machine-id` (under the root): 32 lowercase hex digits.
pub fn machine_id(host: &Host) -> Result<Option<String>> {
    let Some(bytes) = host.read_optional(Path::new("/etc/machine-id"))? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    if text.len() == 32 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(Some(text.to_ascii_lowercase()))
    } else {
        Ok(None)
    }
}

/// Builds the identity from metadata when there is some, else from the host.
pub fn from_parts(host: &Host, meta: Option<InstanceMetadata>) -> Result<NodeIdentity> {
    let hostname = layout::node_hostname(host)?;
    if let Some(m) = meta {
        return Ok(NodeIdentity {
            id: m.instance_id,
            source: IdSource::Ec2,
            hostname,
            private_ip: m.local_ipv4.or_else(|| net::default_route_ipv4(host).ok()),
            public_ip: m.public_ipv4,
            instance_type: m.instance_type,
            availability_zone: m.availability_zone,
        });
    }
    let Some(id) = machine_id(host)? else {
        bail!(
            "cannot identify this node: no EC2 instance metadata and no valid /etc/machine-id (run systemd-machine-id-setup)"
        );
    };
    Ok(NodeIdentity {
        id,
        source: IdSource::MachineId,
        hostname,
        private_ip: net::default_route_ipv4(host).ok(),
        public_ip: None,
        instance_type: None,
        availability_zone: None,
    })
}

/// Asks the metadata service at `endpoint` (briefly); `None` when there is
/// none (outside EC2, or it failed to give an instance id).
async fn metadata(endpoint: &str) -> Option<InstanceMetadata> {
    let start = Instant::now();
    match Imds::new(endpoint, Budget::default()) {
        Ok(imds) => match imds.instance().await {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::info!(
                    "no EC2 instance id from the metadata service at {endpoint} ({e:#}) after {}; using the host name and /etc/machine-id",
                    crate::human::show_duration(start.elapsed())
                );
                None
            }
        },
        Err(e) => {
            tracing::info!("{e:#}");
            None
        }
    }
}

/// Asks the metadata service at `endpoint` (briefly), then falls back to
/// the host's own facts.
pub async fn resolve(host: &Host, endpoint: &str) -> Result<NodeIdentity> {
    from_parts(host, metadata(endpoint).await)
}

/// The identity of a node that already has an id (`[node] id` of
/// agent.toml, written by `join`): that id is kept whatever the metadata
/// service says now, so a blip cannot make the node a second document.
/// The one exception is the metadata service naming *another* instance:
/// the files come from an image of a joined node, and this instance is a
/// new one. Without a stored id, as [`resolve`].
pub async fn resolve_stored(
    host: &Host,
    endpoint: &str,
    stored: Option<&str>,
) -> Result<NodeIdentity> {
    let meta = metadata(endpoint).await;
    let Some(stored) = stored else {
        return from_parts(host, meta);
    };
    if let Some(m) = &meta {
        if m.instance_id != stored {
            tracing::warn!(
                "this is EC2 instance {}, but the agent's configuration names node {stored} (an image of a joined node?); reporting as {}",
                m.instance_id,
                m.instance_id
            );
            return from_parts(host, meta);
        }
    }
    if meta.is_none() && !stored.starts_with("i-") {
        if let Some(current) = machine_id(host)? {
            if current != stored {
                tracing::warn!(
                    "/etc/machine-id is {current}, but the agent's configuration names node {stored} (an image of a joined node?); reporting as {current}"
                );
                return from_parts(host, None);
            }
        }
    }
    let source = if meta.is_some() || stored.starts_with("i-") {
        IdSource::Ec2
    } else {
        IdSource::MachineId
    };
    let hostname = layout::node_hostname(host)?;
    let fallback_ip = || net::default_route_ipv4(host).ok();
    Ok(match meta {
        Some(m) => NodeIdentity {
            id: stored.to_string(),
            source,
            hostname,
            private_ip: m.local_ipv4.or_else(fallback_ip),
            public_ip: m.public_ipv4,
            instance_type: m.instance_type,
            availability_zone: m.availability_zone,
        },
        None => NodeIdentity {
            id: stored.to_string(),
            source,
            hostname,
            private_ip: fallback_ip(),
            public_ip: None,
            instance_type: None,
            availability_zone: None,
        },
    })
}
