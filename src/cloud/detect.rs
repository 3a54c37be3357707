//! Which cloud, and its metadata, in the order cloud-init's `ds-identify`
//! uses, network last:
//!
//! 1. an explicit choice: `--cloud NAME`, else `[node] cloud` of
//!    agent.toml (`none`: no cloud, nothing is probed);
//! 2. else the DMI fingerprint ([`super::dmi`]);
//! 3. then ONE targeted probe of that provider's metadata service
//!    ([`TARGETED`]: 250 ms to connect, 1 s per request, 3 attempts);
//! 4. an EC2-compatible probe only when nothing matched ([`QUICK`]: 100 ms
//!    to connect, 2 attempts, so a host with no cloud knows within about a
//!    quarter of a second); when a service answers there but refuses the
//!    IMDSv2 token, it is tried as OpenStack's;
//! 5. else nothing: the caller uses the host's own facts
//!    ([`super::local`]). [`Discovery::fallback`] says why.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::facts::CloudFacts;
use super::http::MetaClient;
use super::{
    Budget, CloudChoice, Provider, azure, digitalocean, dmi, ec2, gcp, hetzner, openstack, oracle,
};
use crate::host::Host;

/// The probe of a provider the DMI (or the operator) named.
pub const TARGETED: Budget = Budget {
    connect_timeout: Duration::from_millis(250),
    request_timeout: Duration::from_secs(1),
    attempts: 3,
    pause: Duration::from_millis(100),
};

/// The EC2-compatible probe of a host nothing identified: a metadata
/// service on the link answers in a millisecond; a host with no cloud
/// must not wait (cloud-init #3803 waited 50 s).
pub const QUICK: Budget = Budget {
    connect_timeout: Duration::from_millis(100),
    request_timeout: Duration::from_millis(250),
    attempts: 2,
    pause: Duration::from_millis(25),
};

/// Every provider's metadata endpoint (scheme, host and port; no path),
/// each overridable by its environment variable so tests point it at a
/// loopback peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub ec2: String,
    pub gcp: String,
    pub azure: String,
    pub digitalocean: String,
    pub hetzner: String,
    pub openstack: String,
    pub oracle: String,
}

/// (variable, default) of each provider, for the docs and `--help`.
pub const ENV: [(Provider, &str, &str); 7] = [
    (Provider::Ec2, ec2::ENDPOINT_ENV, ec2::DEFAULT_ENDPOINT),
    (Provider::Gcp, gcp::ENDPOINT_ENV, gcp::DEFAULT_ENDPOINT),
    (
        Provider::Azure,
        azure::ENDPOINT_ENV,
        azure::DEFAULT_ENDPOINT,
    ),
    (
        Provider::DigitalOcean,
        digitalocean::ENDPOINT_ENV,
        digitalocean::DEFAULT_ENDPOINT,
    ),
    (
        Provider::Hetzner,
        hetzner::ENDPOINT_ENV,
        hetzner::DEFAULT_ENDPOINT,
    ),
    (
        Provider::OpenStack,
        openstack::ENDPOINT_ENV,
        openstack::DEFAULT_ENDPOINT,
    ),
    (
        Provider::Oracle,
        oracle::ENDPOINT_ENV,
        oracle::DEFAULT_ENDPOINT,
    ),
];

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().trim_end_matches('/').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

impl Endpoints {
    /// From the environment, else the link-local defaults. OpenStack's
    /// follows EC2's unless set (one server serves both trees).
    pub fn from_env() -> Self {
        let ec2 = env_or(ec2::ENDPOINT_ENV, ec2::DEFAULT_ENDPOINT);
        Endpoints {
            gcp: env_or(gcp::ENDPOINT_ENV, gcp::DEFAULT_ENDPOINT),
            azure: env_or(azure::ENDPOINT_ENV, azure::DEFAULT_ENDPOINT),
            digitalocean: env_or(digitalocean::ENDPOINT_ENV, digitalocean::DEFAULT_ENDPOINT),
            hetzner: env_or(hetzner::ENDPOINT_ENV, hetzner::DEFAULT_ENDPOINT),
            openstack: env_or(openstack::ENDPOINT_ENV, &ec2),
            oracle: env_or(oracle::ENDPOINT_ENV, oracle::DEFAULT_ENDPOINT),
            ec2,
        }
    }

    /// With EC2's endpoint from a flag (`--imds-endpoint`); OpenStack's
    /// follows it unless its own variable is set.
    pub fn with_ec2(mut self, ec2: &str) -> Self {
        let ec2 = ec2.trim().trim_end_matches('/').to_string();
        if std::env::var_os(openstack::ENDPOINT_ENV).is_none_or(|v| v.is_empty()) {
            self.openstack = ec2.clone();
        }
        self.ec2 = ec2;
        self
    }

    pub fn of(&self, p: Provider) -> &str {
        match p {
            Provider::Ec2 => &self.ec2,
            Provider::Gcp => &self.gcp,
            Provider::Azure => &self.azure,
            Provider::DigitalOcean => &self.digitalocean,
            Provider::Hetzner => &self.hetzner,
            Provider::OpenStack => &self.openstack,
            Provider::Oracle => &self.oracle,
        }
    }
}

/// Where the operator's choice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--cloud`.
    Flag,
    /// `[node] cloud` of this agent.toml.
    Config(PathBuf),
    /// Nobody chose: `auto`.
    Default,
}

/// How the provider was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "camelCase")]
pub enum DetectedBy {
    /// `--cloud NAME`.
    Flag,
    /// `[node] cloud` of agent.toml.
    Config { file: String },
    /// The DMI fingerprint.
    Dmi { file: String, value: String },
    /// Nothing in DMI; the EC2-compatible probe answered.
    Probe { endpoint: String },
    /// Nothing in DMI, nothing answered (or `--cloud none`).
    Nothing,
}

impl DetectedBy {
    /// For messages: `DMI /sys/class/dmi/id/sys_vendor = "Hetzner"`.
    pub fn describe(&self) -> String {
        match self {
            DetectedBy::Flag => "--cloud".into(),
            DetectedBy::Config { file } => format!("[node] cloud of {file}"),
            DetectedBy::Dmi { file, value } => {
                format!("DMI {file} = \"{}\"", crate::human::escape(value))
            }
            DetectedBy::Probe { endpoint } => {
                format!("no DMI fingerprint; the metadata service at {endpoint} answered")
            }
            DetectedBy::Nothing => "no DMI fingerprint".into(),
        }
    }
}

/// What detection and the probe found.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The cloud whose metadata was read (None: the host's own facts).
    pub provider: Option<Provider>,
    /// The cloud detection named, even when its metadata failed.
    pub detected: Option<Provider>,
    pub by: DetectedBy,
    /// The metadata endpoint that was asked, if any.
    pub endpoint: Option<String>,
    pub facts: Option<CloudFacts>,
    /// Why the host's own facts are used (None when metadata was read).
    pub fallback: Option<String>,
    /// True when a cloud was named (by the operator or DMI) but its
    /// metadata failed: a warning, not just information.
    pub degraded: bool,
    /// DMI files present but unreadable (file, why).
    pub dmi_unreadable: Vec<(String, String)>,
    pub elapsed: Duration,
}

/// Reads provider `p`'s metadata at its endpoint within `budget`.
pub async fn probe(p: Provider, endpoints: &Endpoints, budget: Budget) -> Result<CloudFacts> {
    let ep = endpoints.of(p);
    if p == Provider::Ec2 {
        let imds = ec2::Imds::new(ep, budget)?;
        return ec2::read(&imds).await;
    }
    let client = MetaClient::new(budget)?;
    match p {
        Provider::Gcp => gcp::read(&client, ep).await,
        Provider::Azure => azure::read(&client, ep).await,
        Provider::DigitalOcean => digitalocean::read(&client, ep).await,
        Provider::Hetzner => hetzner::read(&client, ep).await,
        Provider::OpenStack => openstack::read(&client, ep).await,
        Provider::Oracle => oracle::read(&client, ep).await,
        Provider::Ec2 => unreachable!("handled above"),
    }
}

/// True when the failure came from the network (nothing answered), not
/// from an answer (an HTTP status, a document that is no instance).
fn nothing_answered(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<reqwest::Error>().is_some())
}

/// An error in one line: what was being done, and the root cause
/// (`requesting … token from http://…: Connection refused (os error 111)`),
/// without reqwest's repetitions of the URL.
pub fn brief(e: &anyhow::Error) -> String {
    let first = e.to_string();
    let root = e.root_cause().to_string();
    if first == root || first.contains(&root) {
        first
    } else {
        format!("{first}: {root}")
    }
}

fn show(d: Duration) -> String {
    crate::human::show_duration(d)
}

/// Detects the cloud and reads its metadata. Never fails: what could not
/// be read is in [`Discovery::fallback`].
pub async fn discover(
    host: &Host,
    choice: CloudChoice,
    origin: &Origin,
    endpoints: &Endpoints,
) -> Discovery {
    let start = Instant::now();
    let chosen_by = || match origin {
        Origin::Flag => DetectedBy::Flag,
        Origin::Config(f) => DetectedBy::Config {
            file: f.display().to_string(),
        },
        Origin::Default => DetectedBy::Nothing,
    };
    let mut d = Discovery {
        provider: None,
        detected: None,
        by: DetectedBy::Nothing,
        endpoint: None,
        facts: None,
        fallback: None,
        degraded: false,
        dmi_unreadable: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let named = match choice {
        CloudChoice::None => {
            d.by = chosen_by();
            d.fallback = Some(format!(
                "no cloud ({} says `none`): the host's own facts, nothing probed",
                d.by.describe()
            ));
            d.elapsed = start.elapsed();
            return d;
        }
        CloudChoice::Provider(p) => {
            d.by = chosen_by();
            Some(p)
        }
        CloudChoice::Auto => {
            let dmi = dmi::read(host);
            d.dmi_unreadable = dmi.unreadable.clone();
            dmi::fingerprint(&dmi).map(|f| {
                d.by = DetectedBy::Dmi {
                    file: f.file,
                    value: f.value,
                };
                f.provider
            })
        }
    };
    if let Some(p) = named {
        d.detected = Some(p);
        d.endpoint = Some(endpoints.of(p).to_string());
        match probe(p, endpoints, TARGETED).await {
            Ok(f) => {
                d.provider = Some(p);
                d.facts = Some(f);
            }
            Err(e) => {
                d.degraded = true;
                d.fallback = Some(format!(
                    "{} ({}), but its metadata at {} failed after {}: {}; using the host's own facts",
                    p.title(),
                    d.by.describe(),
                    endpoints.of(p),
                    show(start.elapsed()),
                    brief(&e)
                ));
            }
        }
        d.elapsed = start.elapsed();
        return d;
    }
    // Nothing identified the host: one quick EC2-compatible probe.
    let ep = endpoints.ec2.clone();
    d.endpoint = Some(ep.clone());
    match probe(Provider::Ec2, endpoints, QUICK).await {
        Ok(f) => {
            d.provider = Some(Provider::Ec2);
            d.detected = Some(Provider::Ec2);
            d.by = DetectedBy::Probe { endpoint: ep };
            d.facts = Some(f);
        }
        Err(e) if !nothing_answered(&e) => {
            // Something answered there without IMDSv2: OpenStack's Nova
            // serves the EC2 tree without tokens.
            let os = endpoints.openstack.clone();
            match probe(Provider::OpenStack, endpoints, QUICK).await {
                Ok(f) => {
                    d.provider = Some(Provider::OpenStack);
                    d.detected = Some(Provider::OpenStack);
                    d.by = DetectedBy::Probe {
                        endpoint: os.clone(),
                    };
                    d.endpoint = Some(os);
                    d.facts = Some(f);
                }
                Err(e2) => {
                    d.fallback = Some(format!(
                        "no cloud found: no DMI fingerprint under {}, and the service at {ep} is neither EC2's ({}) nor OpenStack's ({}); using the host's own facts",
                        dmi::DMI_DIR,
                        brief(&e),
                        brief(&e2)
                    ));
                }
            }
        }
        Err(e) => {
            d.fallback = Some(format!(
                "no cloud found: no DMI fingerprint under {}, and no metadata service answered at {ep} within {} ({}); using the host's own facts",
                dmi::DMI_DIR,
                show(start.elapsed()),
                brief(&e)
            ));
        }
    }
    d.elapsed = start.elapsed();
    d
}
