//! Who this node is. `_id` is the cloud's instance id when a metadata
//! service answers ([`crate::cloud`]: EC2, GCP, Azure, DigitalOcean,
//! Hetzner, OpenStack, Oracle), else `/etc/machine-id`. Its private IPv4:
//! `--ip`, else the metadata's, else the source address of the route to
//! MongoDB, else the default route's interface ([`choose_private_ip`]).
//!
//! A node whose metadata names a private IPv4 other than the one its route
//! to MongoDB leaves from (NAT, a container's bridge, a second NIC) keeps
//! the metadata's, the address the cloud routes to this instance, and is
//! warned, with the `--ip` that would choose the other.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use anyhow::{Result, bail};

use crate::ams::layout;
use crate::cloud::detect::{self, Discovery, Endpoints, Origin};
use crate::cloud::{CloudChoice, Provider, Sourced, local};
use crate::host::{Host, net};

pub use crate::cloud::local::machine_id;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdSource {
    /// The cloud's instance id.
    Cloud(Provider),
    /// `/etc/machine-id`.
    #[default]
    MachineId,
    /// The id agent.toml recorded, kept while no metadata says otherwise.
    Stored,
}

impl IdSource {
    pub fn name(self) -> &'static str {
        match self {
            IdSource::Cloud(p) => p.name(),
            IdSource::MachineId => "machine-id",
            IdSource::Stored => "stored",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeIdentity {
    pub id: String,
    pub source: IdSource,
    pub hostname: String,
    pub private_ip: Option<Ipv4Addr>,
    /// Where [`Self::private_ip`] came from.
    pub private_ip_source: Option<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub instance_type: Option<String>,
    pub availability_zone: Option<String>,
    /// The cloud whose metadata described this node (None: none answered).
    pub provider: Option<Provider>,
    pub region: Option<String>,
    pub spot: Option<bool>,
    /// The VM's name in its cloud (Azure's Scheduled Events name VMs).
    pub vm_name: Option<String>,
}

impl NodeIdentity {
    /// The watcher of this node's cloud's termination notices (Azure
    /// Scheduled Events filtered by this VM's name, GCP preemption and
    /// maintenance), for the drain; None when its cloud has none that
    /// [`crate::cloud::events`] reads (EC2's come from its IMDS).
    pub fn notice_watcher(
        &self,
        endpoints: &Endpoints,
    ) -> Option<Result<crate::cloud::events::Watcher>> {
        // The cloud that answered; else the one the DMI or the stored id
        // names (its metadata failed at start: its notices still count).
        let provider = self.provider.or(match self.source {
            IdSource::Cloud(p) => Some(p),
            _ => None,
        })?;
        crate::cloud::events::Watcher::new(provider, endpoints, self.vm_name.clone())
    }
}

/// What a lookup needs: the operator's choice, the endpoints, MongoDB
/// (the route to it is the fallback address) and a pinned address.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub choice: CloudChoice,
    pub origin: Origin,
    pub endpoints: Endpoints,
    /// The registry's URI (no password needed, none used).
    pub mongo_uri: Option<String>,
    /// `--ip` or `[node] private_ip`, and which of the two.
    pub pinned_ip: Option<(Ipv4Addr, &'static str)>,
    /// Log what was found (`metadata` prints it instead).
    pub announce: bool,
}

impl Lookup {
    /// Auto-detection with the endpoints of the environment.
    pub fn auto() -> Self {
        Lookup {
            choice: CloudChoice::Auto,
            origin: Origin::Default,
            endpoints: Endpoints::from_env(),
            mongo_uri: None,
            pinned_ip: None,
            announce: true,
        }
    }

    /// Only EC2's endpoint given (the hidden `--imds-endpoint`).
    pub fn ec2(endpoint: &str) -> Self {
        Lookup {
            endpoints: Endpoints::from_env().with_ec2(endpoint),
            ..Lookup::auto()
        }
    }
}

/// The route to MongoDB, as the kernel would take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `host:port`.
    pub to: String,
    pub source: Result<IpAddr, String>,
}

/// Everything the lookup found: the identity, how the cloud was found,
/// the route to MongoDB, and warnings (already logged).
#[derive(Debug, Clone)]
pub struct Resolution {
    pub identity: NodeIdentity,
    /// Why there is no id (no metadata and no /etc/machine-id): the
    /// identity's `id` is empty then.
    pub unidentified: Option<String>,
    pub discovery: Discovery,
    pub route: Option<Route>,
    pub machine_id: Option<String>,
    pub warnings: Vec<String>,
}

/// The route to MongoDB's first seed, when the URI names one.
pub fn route_to_mongo(uri: &str) -> Option<Route> {
    let (host, port) = local::mongo_seed(uri)?;
    let shown = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Some(Route {
        to: shown,
        source: local::route_source(&host, port).map_err(|e| format!("{e:#}")),
    })
}

/// The private IPv4 and where it came from, and a warning when the
/// metadata's address is not the one the route to MongoDB leaves from.
/// `local` is this host's addresses (None when unknown).
pub fn choose_private_ip(
    pinned: Option<(Ipv4Addr, &'static str)>,
    metadata: Option<&Sourced<Ipv4Addr>>,
    route: Option<&Route>,
    default_route: impl FnOnce() -> Option<Ipv4Addr>,
    local: Option<&[IpAddr]>,
) -> (Option<Sourced<Ipv4Addr>>, Option<String>) {
    if let Some((ip, from)) = pinned {
        return (Some(Sourced::new(ip, from)), None);
    }
    // A route source another node could use: IPv4, not loopback (MongoDB
    // on this very host says nothing about the node's address).
    let usable = route.and_then(|r| match r.source {
        Ok(IpAddr::V4(ip)) if !ip.is_loopback() && !ip.is_unspecified() => Some((ip, r)),
        _ => None,
    });
    if let Some(m) = metadata {
        let warning = usable.filter(|(ip, _)| *ip != m.value).map(|(ip, r)| {
            let where_ = match local {
                Some(addrs) if !addrs.contains(&IpAddr::V4(m.value)) => {
                    format!(" ({} is on no interface of this host: NAT, or a container's network)", m.value)
                }
                _ => String::new(),
            };
            format!(
                "the instance metadata gives this node the private IPv4 {} ({}), but the route to MongoDB {} leaves from {ip}{where_}; using {}, the address the cloud routes to this instance; if the other nodes reach this one at {ip} (a VPN or an overlay), pass --ip {ip}",
                m.value, m.source, r.to, m.value
            )
        });
        return (Some(m.clone()), warning);
    }
    if let Some((ip, r)) = usable {
        return (
            Some(Sourced::new(
                ip,
                format!("the source address of the route to MongoDB {}", r.to),
            )),
            None,
        );
    }
    (
        default_route().map(|ip| Sourced::new(ip, "the default route's interface")),
        None,
    )
}

/// A machine id's shape: 32 hex digits.
fn looks_like_machine_id(id: &str) -> bool {
    id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())
}

/// The cloud a stored id names by its form, when it says.
fn provider_of_id(id: &str) -> Option<Provider> {
    if id.starts_with("i-") {
        return Some(Provider::Ec2);
    }
    if id.starts_with("ocid1.") {
        return Some(Provider::Oracle);
    }
    [Provider::Gcp, Provider::DigitalOcean, Provider::Hetzner]
        .into_iter()
        .find(|p| {
            id.strip_prefix(p.name())
                .is_some_and(|r| r.starts_with('-'))
        })
}

/// Identifies this node. `stored` is the id an earlier `join` recorded
/// (`[node] id`): it is kept whatever the metadata service says now, so a
/// blip cannot make the node a second document. The exception is the
/// metadata (or `/etc/machine-id`) naming *another* machine: the files
/// come from an image of a joined node, and this is a new one.
pub async fn resolve(host: &Host, lookup: &Lookup, stored: Option<&str>) -> Result<Resolution> {
    let started = Instant::now();
    let discovery = detect::discover(host, lookup.choice, &lookup.origin, &lookup.endpoints).await;
    let mut warnings = Vec::new();
    let announce = lookup.announce;
    match &discovery.fallback {
        Some(why) if discovery.degraded => {
            if announce {
                tracing::warn!("{why}");
            }
            warnings.push(why.clone());
        }
        Some(why) if announce => tracing::info!("{why}"),
        Some(_) => {}
        None if !announce => {}
        None => tracing::info!(
            "this is {} ({}); its metadata was read in {}",
            discovery.provider.map_or("?", Provider::title),
            discovery.by.describe(),
            crate::human::show_duration(discovery.elapsed)
        ),
    }
    let hostname = layout::node_hostname(host)?;
    let machine = machine_id(host)?;
    let facts = discovery.facts.clone().unwrap_or_default();
    let cloud_id = match (discovery.provider, &facts.instance_id) {
        (Some(p), Some(iid)) => Some((p, p.node_id(&iid.value))),
        _ => None,
    };
    let mut unidentified = None;
    let (id, source) = match (stored, &cloud_id) {
        (None, Some((p, cid))) => (cid.clone(), IdSource::Cloud(*p)),
        (None, None) => match &machine {
            Some(m) => (m.clone(), IdSource::MachineId),
            None => {
                unidentified = Some(format!(
                    "cannot identify this node: {}, and no valid /etc/machine-id (run systemd-machine-id-setup)",
                    discovery
                        .fallback
                        .as_deref()
                        .unwrap_or("no instance id in the metadata")
                ));
                (String::new(), IdSource::MachineId)
            }
        },
        (Some(s), Some((p, cid))) if cid != s => {
            let w = format!(
                "this is {} instance {cid}, but the agent's configuration names node {s} (an image of a joined node?); reporting as {cid}",
                p.title()
            );
            if announce {
                tracing::warn!("{w}");
            }
            warnings.push(w);
            (cid.clone(), IdSource::Cloud(*p))
        }
        (Some(s), Some((p, _))) => (s.to_string(), IdSource::Cloud(*p)),
        (Some(s), None) => match &machine {
            Some(current) if looks_like_machine_id(s) && current != s => {
                let w = format!(
                    "/etc/machine-id is {current}, but the agent's configuration names node {s} (an image of a joined node?); reporting as {current}"
                );
                if announce {
                    tracing::warn!("{w}");
                }
                warnings.push(w);
                (current.clone(), IdSource::MachineId)
            }
            _ if looks_like_machine_id(s) => (s.to_string(), IdSource::MachineId),
            _ => (
                s.to_string(),
                provider_of_id(s)
                    .or(discovery.detected)
                    .map_or(IdSource::Stored, IdSource::Cloud),
            ),
        },
    };
    let route = lookup.mongo_uri.as_deref().and_then(route_to_mongo);
    let local_addrs = net::local_addresses(host).ok().flatten();
    let (private, nat) = choose_private_ip(
        lookup.pinned_ip,
        facts.private_ipv4.as_ref(),
        route.as_ref(),
        || net::default_route_ipv4(host).ok(),
        local_addrs.as_deref(),
    );
    if let Some(w) = nat {
        if announce {
            tracing::warn!("{w}");
        }
        warnings.push(w);
    }
    tracing::debug!(
        "node {id} identified in {}",
        crate::human::show_duration(started.elapsed())
    );
    let value = |s: &Option<Sourced<String>>| s.as_ref().map(|s| s.value.clone());
    let identity = NodeIdentity {
        id,
        source,
        hostname,
        private_ip: private.as_ref().map(|p| p.value),
        private_ip_source: private.map(|p| p.source),
        public_ip: facts.public_ipv4.as_ref().map(|p| p.value),
        instance_type: value(&facts.instance_type),
        availability_zone: value(&facts.zone),
        provider: discovery.provider,
        region: value(&facts.region),
        spot: facts.spot.as_ref().map(|s| s.value),
        vm_name: value(&facts.vm_name),
    };
    Ok(Resolution {
        identity,
        unidentified,
        discovery,
        route,
        machine_id: machine,
        warnings,
    })
}

/// [`resolve`], the identity alone.
pub async fn resolve_stored(
    host: &Host,
    lookup: &Lookup,
    stored: Option<&str>,
) -> Result<NodeIdentity> {
    let r = resolve(host, lookup, stored).await?;
    if let Some(why) = r.unidentified {
        bail!("{why}");
    }
    Ok(r.identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ip: &str) -> Sourced<Ipv4Addr> {
        Sourced::new(
            ip.parse().unwrap(),
            "gcp metadata instance/network-interfaces/0/ip",
        )
    }

    fn route(src: &str) -> Route {
        Route {
            to: "10.0.1.5:27017".into(),
            source: Ok(src.parse().unwrap()),
        }
    }

    #[test]
    fn the_metadata_wins_over_the_route_with_a_warning_naming_both() {
        let local: Vec<IpAddr> = vec!["172.17.0.2".parse().unwrap()];
        let (ip, w) = choose_private_ip(
            None,
            Some(&meta("10.0.1.20")),
            Some(&route("172.17.0.2")),
            || None,
            Some(&local),
        );
        assert_eq!(ip.unwrap().value.to_string(), "10.0.1.20");
        let w = w.unwrap();
        for part in [
            "10.0.1.20",
            "172.17.0.2",
            "10.0.1.5:27017",
            "--ip 172.17.0.2",
            "on no interface",
        ] {
            assert!(w.contains(part), "{part}: {w}");
        }
        // Equal: nothing to say.
        let (_, w) = choose_private_ip(
            None,
            Some(&meta("10.0.1.20")),
            Some(&route("10.0.1.20")),
            || None,
            None,
        );
        assert!(w.is_none());
        // MongoDB on this host: the loopback route says nothing.
        let (_, w) = choose_private_ip(
            None,
            Some(&meta("10.0.1.20")),
            Some(&route("127.0.0.1")),
            || None,
            None,
        );
        assert!(w.is_none());
    }

    #[test]
    fn without_metadata_the_route_then_the_default_route() {
        let (ip, _) = choose_private_ip(
            None,
            None,
            Some(&route("10.0.2.7")),
            || Some("192.0.2.2".parse().unwrap()),
            None,
        );
        let ip = ip.unwrap();
        assert_eq!(ip.value.to_string(), "10.0.2.7");
        assert!(
            ip.source.contains("route to MongoDB 10.0.1.5:27017"),
            "{}",
            ip.source
        );
        let (ip, _) = choose_private_ip(
            None,
            None,
            Some(&route("127.0.0.1")),
            || Some("192.0.2.2".parse().unwrap()),
            None,
        );
        assert_eq!(ip.unwrap().source, "the default route's interface");
        let (ip, w) = choose_private_ip(
            Some(("10.9.9.9".parse().unwrap(), "--ip")),
            Some(&meta("10.0.1.20")),
            None,
            || None,
            None,
        );
        assert_eq!((ip.unwrap().source.as_str(), w), ("--ip", None));
    }

    #[test]
    fn stored_ids_say_their_cloud() {
        assert_eq!(provider_of_id("i-0abc"), Some(Provider::Ec2));
        assert_eq!(provider_of_id("hetzner-42"), Some(Provider::Hetzner));
        assert_eq!(provider_of_id("gcpx-1"), None);
        assert_eq!(provider_of_id("e94f3f7f-6b23-4395-be46-ea363c549f71"), None);
    }
}
