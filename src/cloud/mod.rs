//! The cloud this host runs in, and what its instance metadata says.
//!
//! Detection works as cloud-init's `ds-identify` does, without network
//! first ([`detect`]): an explicit choice (`--cloud NAME`, `[node] cloud`
//! of agent.toml) wins; else the DMI fingerprint the hypervisor exposes
//! under `/sys/class/dmi/id` ([`dmi`]); then ONE targeted probe of that
//! provider's metadata service, with a short timeout and few retries; an
//! EC2-compatible probe only when nothing matched; else the host's own
//! facts ([`local`]: the source address of the route to MongoDB,
//! `/etc/machine-id`). A metadata failure never blocks a join: the
//! discovery says what it fell back to.
//!
//! Each provider's client ([`ec2`], [`gcp`], [`azure`], [`digitalocean`],
//! [`hetzner`], [`openstack`], [`oracle`]) normalizes its answer to
//! [`facts::CloudFacts`]: every value with the metadata path it came from.
//! [`events`] reads the termination notices of clouds other than EC2
//! (Azure Scheduled Events, GCP preemption and maintenance); [`aws`]
//! calls AWS APIs with the instance role (SSM Parameter Store, Auto
//! Scaling lifecycle hooks), signed with SigV4.

pub mod aws;
pub mod azure;
pub mod detect;
pub mod digitalocean;
pub mod dmi;
pub mod ec2;
pub mod events;
pub mod facts;
pub mod gcp;
pub mod hetzner;
pub mod http;
pub mod local;
pub mod openstack;
pub mod oracle;

pub use ec2::Budget;
pub use facts::{CloudFacts, Sourced};

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A cloud whose metadata the agent reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Provider {
    Ec2,
    Gcp,
    Azure,
    DigitalOcean,
    Hetzner,
    OpenStack,
    Oracle,
}

impl Provider {
    pub const ALL: [Provider; 7] = [
        Provider::Ec2,
        Provider::Gcp,
        Provider::Azure,
        Provider::DigitalOcean,
        Provider::Hetzner,
        Provider::OpenStack,
        Provider::Oracle,
    ];

    /// The name in flags, agent.toml, the registry and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Ec2 => "ec2",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
            Provider::DigitalOcean => "digitalocean",
            Provider::Hetzner => "hetzner",
            Provider::OpenStack => "openstack",
            Provider::Oracle => "oracle",
        }
    }

    /// The name a person knows.
    pub fn title(self) -> &'static str {
        match self {
            Provider::Ec2 => "Amazon EC2",
            Provider::Gcp => "Google Compute Engine",
            Provider::Azure => "Microsoft Azure",
            Provider::DigitalOcean => "DigitalOcean",
            Provider::Hetzner => "Hetzner Cloud",
            Provider::OpenStack => "OpenStack",
            Provider::Oracle => "Oracle Cloud Infrastructure",
        }
    }

    /// Other names accepted on input (`--cloud aws`).
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Provider::Ec2 => &["aws"],
            Provider::Gcp => &["gce", "google"],
            Provider::Azure => &[],
            Provider::DigitalOcean => &["do"],
            Provider::Hetzner => &["hcloud"],
            Provider::OpenStack => &[],
            Provider::Oracle => &["oci"],
        }
    }

    /// The node id of an instance of this cloud. Ids that are bare
    /// numbers (GCP, DigitalOcean, Hetzner) get the provider's name in
    /// front, so two clouds' instance 42 never share one registry
    /// document; the others (`i-…`, Azure's vmId, OpenStack's uuid,
    /// Oracle's OCID) say what they are already.
    pub fn node_id(self, instance_id: &str) -> String {
        match self {
            Provider::Gcp | Provider::DigitalOcean | Provider::Hetzner => {
                format!("{}-{instance_id}", self.name())
            }
            _ => instance_id.to_string(),
        }
    }
}

impl Serialize for Provider {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the operator chose: `auto` (detect), `none` (no cloud: no probe
/// at all, the host's own facts), or one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CloudChoice {
    #[default]
    Auto,
    None,
    Provider(Provider),
}

impl CloudChoice {
    pub fn name(self) -> &'static str {
        match self {
            CloudChoice::Auto => "auto",
            CloudChoice::None => "none",
            CloudChoice::Provider(p) => p.name(),
        }
    }

    /// Every name `--cloud` accepts, for `--help` and completions.
    pub fn names() -> Vec<&'static str> {
        let mut v = vec!["auto", "none"];
        v.extend(Provider::ALL.iter().map(|p| p.name()));
        v
    }
}

impl fmt::Display for CloudChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CloudChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "auto" => return Ok(CloudChoice::Auto),
            "none" => return Ok(CloudChoice::None),
            _ => {}
        }
        for p in Provider::ALL {
            if p.name() == lower || p.aliases().contains(&lower.as_str()) {
                return Ok(CloudChoice::Provider(p));
            }
        }
        Err(format!(
            "`{}` is not a cloud this agent knows; use one of: {}",
            s.escape_debug(),
            CloudChoice::names().join(", ")
        ))
    }
}

impl Serialize for CloudChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for CloudChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The `--cloud` value parser: the names in `--help` and completions,
/// aliases (`aws`, `gce`, `oci`, `do`) accepted as well.
pub fn parse_cloud_arg(s: &str) -> Result<CloudChoice, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_parse_and_round_trip() {
        for p in Provider::ALL {
            assert_eq!(p.name().parse(), Ok(CloudChoice::Provider(p)));
            for a in p.aliases() {
                assert_eq!(a.parse(), Ok(CloudChoice::Provider(p)));
            }
        }
        assert_eq!("AWS".parse(), Ok(CloudChoice::Provider(Provider::Ec2)));
        assert_eq!("none".parse(), Ok(CloudChoice::None));
        let e = "azur\n".parse::<CloudChoice>().unwrap_err();
        assert!(e.contains("azur\\n") && e.contains("digitalocean"), "{e}");
    }

    #[test]
    fn numeric_ids_get_the_provider_in_front() {
        assert_eq!(
            Provider::Gcp.node_id("4520031799277581759"),
            "gcp-4520031799277581759"
        );
        assert_eq!(Provider::Hetzner.node_id("42"), "hetzner-42");
        assert_eq!(Provider::Ec2.node_id("i-0abc"), "i-0abc");
    }
}
