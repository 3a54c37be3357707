//! DigitalOcean: the whole droplet in one JSON document,
//! `GET /metadata/v1.json` (no header needed). It names no zone and no
//! size; DigitalOcean has no spot droplets.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::facts::{CloudFacts, Sourced, instance_id, ipv4, token};
use super::http::MetaClient;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
pub const ENDPOINT_ENV: &str = "AMS_AGENT_DIGITALOCEAN_METADATA_ENDPOINT";
pub const DOCUMENT_PATH: &str = "/metadata/v1.json";

fn src(key: &str) -> String {
    format!("digitalocean metadata v1.json {key}")
}

pub async fn read(client: &MetaClient, endpoint: &str) -> Result<CloudFacts> {
    let url = format!("{endpoint}{DOCUMENT_PATH}");
    let reply = client.get_ok(&url, &[]).await?;
    parse(&reply.body).with_context(|| format!("reading the droplet document of {url}"))
}

pub fn parse(body: &str) -> Result<CloudFacts> {
    let doc: Value = serde_json::from_str(body).context("not JSON")?;
    let id = match doc.get("droplet_id") {
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        _ => bail!("the document has no droplet_id"),
    };
    let id = instance_id(&id).context("droplet_id is not a plausible id")?;
    let mut f = CloudFacts {
        instance_id: Some(Sourced::new(id, src("droplet_id"))),
        spot: Some(Sourced::new(
            false,
            "digitalocean (DigitalOcean has no spot droplets)",
        )),
        ..CloudFacts::default()
    };
    let addr = |kind: &str| {
        doc.pointer(&format!("/interfaces/{kind}/0/ipv4/ip_address"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let private = addr("private");
    CloudFacts::put(
        &mut f.private_ipv4,
        &mut f.notes,
        "private IPv4",
        private.as_deref(),
        &src("interfaces.private[0].ipv4.ip_address"),
        ipv4,
    );
    if f.private_ipv4.is_none() {
        f.notes
            .push("no private interface (droplet without a VPC address)".into());
    }
    let public = addr("public");
    CloudFacts::put(
        &mut f.public_ipv4,
        &mut f.notes,
        "public IPv4",
        public.as_deref(),
        &src("interfaces.public[0].ipv4.ip_address"),
        ipv4,
    );
    let region = doc.get("region").and_then(Value::as_str);
    CloudFacts::put(
        &mut f.region,
        &mut f.notes,
        "region",
        region,
        &src("region"),
        token,
    );
    let name = doc.get("hostname").and_then(Value::as_str);
    CloudFacts::put(
        &mut f.vm_name,
        &mut f.notes,
        "hostname",
        name,
        &src("hostname"),
        token,
    );
    Ok(f)
}
