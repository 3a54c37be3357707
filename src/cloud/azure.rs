//! Azure Instance Metadata Service: `GET /metadata/instance?api-version=…`
//! with `Metadata: true`. IMDS refuses a request without the header, or
//! without an api-version, with HTTP 400 (and one that carries
//! `X-Forwarded-For`, which this client never sends).

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::facts::{CloudFacts, Sourced, instance_id, ipv4, token};
use super::http::MetaClient;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
pub const ENDPOINT_ENV: &str = "AMS_AGENT_AZURE_IMDS_ENDPOINT";
pub const HEADER: &str = "Metadata";
/// An api-version every current IMDS serves, with every field used here.
pub const API_VERSION: &str = "2021-02-01";
pub const INSTANCE_PATH: &str = "/metadata/instance";

fn src(path: &str) -> String {
    format!("azure metadata {path}")
}

/// Reads the instance from IMDS at `endpoint`.
pub async fn read(client: &MetaClient, endpoint: &str) -> Result<CloudFacts> {
    let url = format!("{endpoint}{INSTANCE_PATH}?api-version={API_VERSION}");
    let reply = client.get_ok(&url, &[(HEADER, "true")]).await?;
    parse(&reply.body).with_context(|| format!("reading the instance document of {url}"))
}

/// The instance from IMDS's instance document (JSON).
pub fn parse(body: &str) -> Result<CloudFacts> {
    let doc: Value = serde_json::from_str(body).context("not JSON")?;
    let compute = doc.get("compute").cloned().unwrap_or(Value::Null);
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let Some(vm_id) = text(&compute, "vmId") else {
        bail!("the document has no compute.vmId");
    };
    // A vmId is a GUID; Azure prints it in lower case.
    let vm_id = instance_id(&vm_id.to_ascii_lowercase()).context("compute.vmId is not a GUID")?;
    let mut f = CloudFacts {
        instance_id: Some(Sourced::new(vm_id, src("compute.vmId"))),
        ..CloudFacts::default()
    };
    let addr = doc
        .pointer("/network/interface/0/ipv4/ipAddress/0")
        .cloned()
        .unwrap_or(Value::Null);
    let path = "network.interface[0].ipv4.ipAddress[0]";
    let private = text(&addr, "privateIpAddress");
    CloudFacts::put(
        &mut f.private_ipv4,
        &mut f.notes,
        "private IPv4",
        private.as_deref(),
        &src(&format!("{path}.privateIpAddress")),
        ipv4,
    );
    let public = text(&addr, "publicIpAddress");
    CloudFacts::put(
        &mut f.public_ipv4,
        &mut f.notes,
        "public IPv4",
        public.as_deref(),
        &src(&format!("{path}.publicIpAddress")),
        ipv4,
    );
    if f.public_ipv4.is_none() {
        // IMDS lists Basic-SKU public IPs only; a Standard-SKU one is not there.
        f.notes.push(
            "no public IPv4 in IMDS (none, or a Standard-SKU address IMDS does not list)".into(),
        );
    }
    let location = text(&compute, "location");
    CloudFacts::put(
        &mut f.region,
        &mut f.notes,
        "location",
        location.as_deref(),
        &src("compute.location"),
        token,
    );
    let zone = text(&compute, "zone");
    CloudFacts::put(
        &mut f.zone,
        &mut f.notes,
        "zone",
        zone.as_deref(),
        &src("compute.zone"),
        token,
    );
    let size = text(&compute, "vmSize");
    CloudFacts::put(
        &mut f.instance_type,
        &mut f.notes,
        "vmSize",
        size.as_deref(),
        &src("compute.vmSize"),
        token,
    );
    let priority = text(&compute, "priority");
    // "Spot" (and the older "Low"); "Regular" or empty otherwise.
    CloudFacts::put(
        &mut f.spot,
        &mut f.notes,
        "priority",
        priority.as_deref(),
        &src("compute.priority"),
        |p| match p.to_ascii_lowercase().as_str() {
            "spot" | "low" => Some(true),
            "regular" => Some(false),
            _ => None,
        },
    );
    if f.spot.is_none() && priority.as_deref().is_some_and(|p| p.trim().is_empty()) {
        f.spot = Some(Sourced::new(
            false,
            src("compute.priority (empty: a regular VM)"),
        ));
    }
    let name = text(&compute, "name");
    CloudFacts::put(
        &mut f.vm_name,
        &mut f.notes,
        "name",
        name.as_deref(),
        &src("compute.name"),
        token,
    );
    Ok(f)
}
