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

/// Asks the metadata service at `endpoint` (briefly), then falls back to
/// the host's own facts.
pub async fn resolve(host: &Host, endpoint: &str) -> Result<NodeIdentity> {
    let start = Instant::now();
    let meta = match Imds::new(endpoint, Budget::default()) {
        Ok(imds) => match imds.instance().await {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::debug!(
                    "no EC2 instance metadata at {endpoint} ({e:#}) after {:?}; using the host name and /etc/machine-id",
                    start.elapsed()
                );
                None
            }
        },
        Err(e) => {
            tracing::debug!("{e:#}");
            None
        }
    };
    from_parts(host, meta)
}
