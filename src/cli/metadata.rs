//! `ams-agent metadata [--json]`: what the agent sees about this host,
//! and where each value came from: the cloud (and how it was detected),
//! the instance's id, addresses, region, zone, type and spot flag from its
//! metadata, the node id the registry uses, the route to MongoDB, and what
//! it fell back to when no metadata service answered. Read-only: it
//! changes nothing and sends nothing to MongoDB.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use serde::Serialize;

use super::Context;
use crate::bail_usage;
use crate::cloud::detect::{Endpoints, Origin};
use crate::cloud::{CloudChoice, CloudFacts, Sourced, ec2 as imds, local};
use crate::config::{AgentConfig, CONFIG_FILE};
use crate::host::runtime;
use crate::human::escape;
use crate::node::identity::{self, IdSource, Lookup, Resolution};

/// Show what the agent knows of this host and where each value came from
#[derive(Debug, Args)]
#[command(
    long_about = "Show what the agent knows of this host and where each value came from.\n\n\
    The cloud is chosen by --cloud, else [node] cloud of agent.toml, else detected from the \
    DMI files under /sys/class/dmi/id (as cloud-init's ds-identify does); then that provider's \
    metadata service is asked once (EC2 IMDSv2, GCP, Azure IMDS, DigitalOcean, Hetzner, \
    OpenStack, Oracle IMDSv2). Without a cloud, the node is identified by /etc/machine-id and \
    its address is the source address of the route to MongoDB. Changes nothing; sends \
    nothing to MongoDB. Exit code 0 whether or not a cloud was found."
)]
pub struct MetadataArgs {
    /// Machine-readable output (a versioned schema: "schema": 1)
    #[arg(long)]
    pub json: bool,

    /// The cloud to read (default: [node] cloud of agent.toml, else detected)
    #[arg(long, value_name = "NAME", value_parser = super::cloud_parser())]
    pub cloud: Option<CloudChoice>,

    /// The agent's configuration file ([node] cloud, id and private_ip,
    /// [mongo] uri)
    #[arg(long, value_name = "FILE", env = "AMS_AGENT_CONFIG", default_value = CONFIG_FILE)]
    pub config: PathBuf,

    /// MongoDB (IP, host[:port] or mongodb:// URI) whose route gives the
    /// fallback address (default: [mongo] uri of the configuration)
    #[arg(long, value_name = "DB")]
    pub mongo: Option<String>,

    /// Instance-metadata endpoint
    #[arg(long, hide = true, env = imds::ENDPOINT_ENV, default_value = imds::DEFAULT_ENDPOINT)]
    pub imds_endpoint: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RouteView {
    to: String,
    source: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeView {
    id: Sourced<String>,
    hostname: Sourced<String>,
    private_ipv4: Option<Sourced<Ipv4Addr>>,
    machine_id: Option<Sourced<String>>,
}

/// The JSON document (schema 1; docs/cloud.md lists every field).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct View {
    schema: u32,
    provider: Option<String>,
    detected: Option<String>,
    detected_by: crate::cloud::detect::DetectedBy,
    endpoint: Option<String>,
    elapsed_ms: u64,
    fallback: Option<String>,
    node: NodeView,
    /// Why the node has no id (then `node.id.value` is empty).
    unidentified: Option<String>,
    metadata: Option<CloudFacts>,
    route: Option<RouteView>,
    dmi_unreadable: Vec<String>,
    warnings: Vec<String>,
}

/// `--mongo`'s value as a URI (a bare host or IP gets `mongodb://`).
fn mongo_uri(input: &str) -> Result<String> {
    let uri = if input.contains("://") {
        input.to_string()
    } else {
        format!("mongodb://{input}")
    };
    if uri.to_ascii_lowercase().starts_with("mongodb+srv://") {
        return Ok(uri);
    }
    let plausible = local::mongo_seed(&uri).is_some_and(|(host, _)| {
        host.parse::<std::net::IpAddr>().is_ok() || crate::host::net::is_dns_name(&host)
    });
    if !plausible {
        bail_usage!(
            "--mongo `{}`: not a MongoDB address (IP, host[:port] or mongodb:// URI)",
            escape(input)
        );
    }
    Ok(uri)
}

fn view(r: &Resolution, config: Option<&AgentConfig>) -> View {
    let d = &r.discovery;
    let n = &r.identity;
    let id_source = match n.source {
        IdSource::Cloud(p) => match (&d.facts, d.provider) {
            (Some(f), Some(_)) if f.instance_id.is_some() => {
                let iid = f.instance_id.as_ref().expect("checked");
                if p.node_id(&iid.value) == iid.value {
                    iid.source.clone()
                } else {
                    format!("{}, with `{}-` in front", iid.source, p.name())
                }
            }
            _ => "[node] id of agent.toml (the metadata did not answer now)".to_string(),
        },
        IdSource::MachineId => "/etc/machine-id".into(),
        IdSource::Stored => "[node] id of agent.toml".into(),
    };
    let id_source = if config.and_then(|c| c.node.id.as_deref()) == Some(n.id.as_str())
        && !matches!(n.source, IdSource::Stored)
    {
        format!("{id_source}; as [node] id of agent.toml")
    } else {
        id_source
    };
    View {
        schema: 1,
        provider: d.provider.map(|p| p.name().to_string()),
        detected: d.detected.map(|p| p.name().to_string()),
        detected_by: d.by.clone(),
        endpoint: d.endpoint.clone(),
        elapsed_ms: d.elapsed.as_millis() as u64,
        fallback: d.fallback.clone(),
        unidentified: r.unidentified.clone(),
        node: NodeView {
            id: Sourced::new(n.id.clone(), id_source),
            hostname: Sourced::new(
                n.hostname.clone(),
                "/etc/hostname, else the kernel's host name",
            ),
            private_ipv4: n
                .private_ip
                .map(|ip| Sourced::new(ip, n.private_ip_source.clone().unwrap_or_default())),
            machine_id: r
                .machine_id
                .clone()
                .map(|m| Sourced::new(m, "/etc/machine-id")),
        },
        metadata: d.facts.clone(),
        route: r.route.as_ref().map(|rt| RouteView {
            to: rt.to.clone(),
            source: rt.source.as_ref().ok().map(|ip| ip.to_string()),
            error: rt.source.as_ref().err().cloned(),
        }),
        dmi_unreadable: d
            .dmi_unreadable
            .iter()
            .map(|(f, why)| format!("{f}: {why}"))
            .collect(),
        warnings: r.warnings.clone(),
    }
}

/// The text a person reads. Values from the metadata are escaped.
fn render(v: &View) -> String {
    use std::fmt::Write as _;
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row =
        |k: &str, val: String, src: &str| rows.push((k.to_string(), val, src.to_string()));
    let cloud = match (&v.provider, &v.detected) {
        (Some(p), _) => {
            let p: crate::cloud::CloudChoice = p.parse().expect("a provider's name");
            match p {
                CloudChoice::Provider(p) => format!("{} ({})", p.title(), p.name()),
                other => other.to_string(),
            }
        }
        (None, Some(d)) => format!("{d}, but its metadata failed (see fallback)"),
        (None, None) => "none found".into(),
    };
    row("cloud", cloud, &v.detected_by.describe());
    if let Some(ep) = &v.endpoint {
        let state = if v.provider.is_some() {
            "read from"
        } else {
            "asked"
        };
        row(
            "metadata",
            format!("{state} {ep} in {} ms", v.elapsed_ms),
            "",
        );
    }
    match &v.unidentified {
        None => row("node id", v.node.id.value.clone(), &v.node.id.source),
        Some(why) => row("node id", "-".into(), why),
    }
    if let Some(m) = &v.metadata {
        let s = |o: &Option<Sourced<String>>| {
            o.as_ref()
                .map(|x| (escape(&x.value).into_owned(), x.source.clone()))
        };
        let ip = |o: &Option<Sourced<Ipv4Addr>>| {
            o.as_ref().map(|x| (x.value.to_string(), x.source.clone()))
        };
        for (k, val) in [
            ("instance id", s(&m.instance_id)),
            ("private IPv4", ip(&m.private_ipv4)),
            ("public IPv4", ip(&m.public_ipv4)),
            ("region", s(&m.region)),
            ("zone", s(&m.zone)),
            ("instance type", s(&m.instance_type)),
            (
                "spot",
                m.spot.as_ref().map(|x| {
                    (
                        if x.value { "yes" } else { "no" }.to_string(),
                        x.source.clone(),
                    )
                }),
            ),
            ("vm name", s(&m.vm_name)),
        ] {
            match val {
                Some((value, src)) => row(k, value, &src),
                None => row(k, "-".into(), "not in the metadata"),
            }
        }
    }
    match &v.node.private_ipv4 {
        Some(p) => row("node address", p.value.to_string(), &p.source),
        None => row("node address", "-".into(), "unknown: pass --ip to join"),
    }
    row(
        "hostname",
        escape(&v.node.hostname.value).into_owned(),
        &v.node.hostname.source,
    );
    match &v.node.machine_id {
        Some(m) => row("machine id", m.value.clone(), &m.source),
        None => row(
            "machine id",
            "-".into(),
            "/etc/machine-id is missing or not 32 hex digits",
        ),
    }
    if let Some(r) = &v.route {
        match (&r.source, &r.error) {
            (Some(src), _) => row(
                "route",
                format!("to MongoDB {} leaves from {src}", r.to),
                "the kernel's routing table",
            ),
            (None, Some(e)) => row("route", format!("to MongoDB {}: unknown", r.to), e),
            _ => {}
        }
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let wv = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .min(40);
    let mut out = String::new();
    for (k, val, src) in &rows {
        let line = if src.is_empty() {
            format!("{k:<w$}  {val}")
        } else {
            format!("{k:<w$}  {val:<wv$}  {}", escape(src))
        };
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if let Some(f) = &v.fallback {
        let _ = writeln!(out, "\nfallback: {}", escape(f));
    }
    if let Some(m) = &v.metadata {
        for n in &m.notes {
            let _ = writeln!(out, "note: {}", escape(n));
        }
    }
    for f in &v.dmi_unreadable {
        let _ = writeln!(out, "note: unreadable DMI file {}", escape(f));
    }
    for warning in &v.warnings {
        let _ = writeln!(out, "warning: {}", escape(warning));
    }
    out
}

pub fn run(ctx: &Context, args: MetadataArgs) -> Result<()> {
    let config = match AgentConfig::load(&ctx.host, &args.config) {
        Ok(c) => c,
        Err(e) if crate::error::exit_code(&e) == 2 => {
            return Err(e.context(format!("--config {}", args.config.display())));
        }
        Err(e) => bail_usage!(
            "--config {}: cannot read it ({})",
            args.config.display(),
            e.root_cause()
        ),
    };
    let mongo = match &args.mongo {
        Some(m) => Some(mongo_uri(m)?),
        None => config.as_ref().map(|c| c.mongo.uri.clone()),
    };
    let stored_cloud = config.as_ref().and_then(|c| c.node.cloud);
    let (choice, origin) = match (args.cloud, stored_cloud) {
        (Some(c), _) => (c, Origin::Flag),
        (None, Some(c)) => (c, Origin::Config(args.config.clone())),
        (None, None) => (CloudChoice::Auto, Origin::Default),
    };
    let lookup = Lookup {
        choice,
        origin,
        endpoints: Endpoints::from_env().with_ec2(&args.imds_endpoint),
        mongo_uri: mongo,
        pinned_ip: config
            .as_ref()
            .and_then(|c| c.node.private_ip)
            .map(|ip| (ip, "[node] private_ip of agent.toml")),
        // Printed below instead of logged.
        announce: false,
    };
    let stored = config.as_ref().and_then(|c| c.node.id.clone());
    let rt = runtime()?;
    let resolution = rt
        .block_on(identity::resolve(&ctx.host, &lookup, stored.as_deref()))
        .context("identifying this host")?;
    let v = view(&resolution, config.as_ref());
    super::print_view(args.json, &v, render)
}
