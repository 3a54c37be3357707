//! OpenStack (Nova's metadata service): the instance's uuid, name and
//! availability zone from `GET /openstack/latest/meta_data.json`, and its
//! addresses and flavor from the EC2-compatible tree
//! (`GET /latest/meta-data/local-ipv4`, …; Nova serves it without
//! IMDSv2's token). Nova has no region key and no spot instances in its
//! metadata.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::facts::{CloudFacts, Sourced, instance_id, ipv4, token};
use super::http::{MetaClient, refused};

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Unset: the EC2 endpoint's (`AMS_AGENT_IMDS_ENDPOINT`), since both
/// trees live on the same server.
pub const ENDPOINT_ENV: &str = "AMS_AGENT_OPENSTACK_METADATA_ENDPOINT";
pub const META_DATA_PATH: &str = "/openstack/latest/meta_data.json";

pub async fn read(client: &MetaClient, endpoint: &str) -> Result<CloudFacts> {
    let url = format!("{endpoint}{META_DATA_PATH}");
    let reply = client.get_ok(&url, &[]).await?;
    let mut f = parse(&reply.body).with_context(|| format!("reading {url}"))?;
    // The EC2-compatible tree: best effort, item by item.
    for (item, what) in [
        ("local-ipv4", "private IPv4"),
        ("public-ipv4", "public IPv4"),
        ("instance-type", "flavor"),
    ] {
        let url = format!("{endpoint}/latest/meta-data/{item}");
        let source = format!("openstack metadata latest/meta-data/{item}");
        let value = match client.get(&url, &[]).await {
            Ok(r) if r.status.is_success() => Some(r.body),
            Ok(r) if r.status == reqwest::StatusCode::NOT_FOUND => None,
            Ok(r) => {
                f.notes.push(format!("{:#}", refused(&url, &r)));
                None
            }
            Err(e) => {
                f.notes.push(format!("{e:#}"));
                None
            }
        };
        match item {
            "local-ipv4" => CloudFacts::put(
                &mut f.private_ipv4,
                &mut f.notes,
                what,
                value.as_deref(),
                &source,
                ipv4,
            ),
            "public-ipv4" => CloudFacts::put(
                &mut f.public_ipv4,
                &mut f.notes,
                what,
                value.as_deref(),
                &source,
                ipv4,
            ),
            _ => CloudFacts::put(
                &mut f.instance_type,
                &mut f.notes,
                what,
                value.as_deref(),
                &source,
                token,
            ),
        }
    }
    if f.public_ipv4.is_none() {
        f.notes.push("no public IPv4 (no floating IP)".into());
    }
    Ok(f)
}

/// `meta_data.json`.
pub fn parse(body: &str) -> Result<CloudFacts> {
    let doc: Value = serde_json::from_str(body).context("not JSON")?;
    let Some(uuid) = doc.get("uuid").and_then(Value::as_str) else {
        bail!("the document has no uuid");
    };
    let uuid = instance_id(&uuid.to_ascii_lowercase()).context("uuid is not a plausible id")?;
    let src = |k: &str| format!("openstack metadata openstack/latest/meta_data.json {k}");
    let mut f = CloudFacts {
        instance_id: Some(Sourced::new(uuid, src("uuid"))),
        ..CloudFacts::default()
    };
    let zone = doc.get("availability_zone").and_then(Value::as_str);
    CloudFacts::put(
        &mut f.zone,
        &mut f.notes,
        "availability_zone",
        zone,
        &src("availability_zone"),
        token,
    );
    let name = doc.get("name").and_then(Value::as_str);
    CloudFacts::put(
        &mut f.vm_name,
        &mut f.notes,
        "name",
        name,
        &src("name"),
        token,
    );
    Ok(f)
}
