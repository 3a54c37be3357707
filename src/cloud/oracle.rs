//! Oracle Cloud Infrastructure, IMDS version 2: `GET /opc/v2/instance/`
//! and `GET /opc/v2/vnics/`, each with `Authorization: Bearer Oracle` (v2
//! refuses a request without it with HTTP 401; v1 is not used). OCI's
//! metadata does not carry the public IPv4.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::facts::{CloudFacts, Sourced, instance_id, ipv4, token};
use super::http::{MetaClient, refused};

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
pub const ENDPOINT_ENV: &str = "AMS_AGENT_ORACLE_METADATA_ENDPOINT";
pub const AUTH_HEADER: &str = "Authorization";
pub const AUTH_VALUE: &str = "Bearer Oracle";
pub const INSTANCE_PATH: &str = "/opc/v2/instance/";
pub const VNICS_PATH: &str = "/opc/v2/vnics/";

fn src(key: &str) -> String {
    format!("oracle metadata opc/v2/{key}")
}

pub async fn read(client: &MetaClient, endpoint: &str) -> Result<CloudFacts> {
    let url = format!("{endpoint}{INSTANCE_PATH}");
    let auth = [(AUTH_HEADER, AUTH_VALUE)];
    let reply = client.get_ok(&url, &auth).await?;
    let mut f = parse(&reply.body).with_context(|| format!("reading {url}"))?;
    let url = format!("{endpoint}{VNICS_PATH}");
    match client.get(&url, &auth).await {
        Ok(r) if r.status.is_success() => {
            let ip = serde_json::from_str::<Value>(&r.body).ok().and_then(|v| {
                v.pointer("/0/privateIp")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            CloudFacts::put(
                &mut f.private_ipv4,
                &mut f.notes,
                "private IPv4",
                ip.as_deref(),
                &src("vnics/[0].privateIp"),
                ipv4,
            );
        }
        Ok(r) => f.notes.push(format!("{:#}", refused(&url, &r))),
        Err(e) => f.notes.push(format!("{e:#}")),
    }
    f.notes
        .push("no public IPv4: OCI's instance metadata does not carry it".into());
    Ok(f)
}

/// `opc/v2/instance/`.
pub fn parse(body: &str) -> Result<CloudFacts> {
    let doc: Value = serde_json::from_str(body).context("not JSON")?;
    let Some(id) = doc.get("id").and_then(Value::as_str) else {
        bail!("the document has no id");
    };
    let id = instance_id(id).context("id is not an OCID")?;
    let mut f = CloudFacts {
        instance_id: Some(Sourced::new(id, src("instance/id"))),
        ..CloudFacts::default()
    };
    let text = |k: &str| doc.get(k).and_then(Value::as_str);
    CloudFacts::put(
        &mut f.region,
        &mut f.notes,
        "canonicalRegionName",
        text("canonicalRegionName").or(text("region")),
        &src(if text("canonicalRegionName").is_some() {
            "instance/canonicalRegionName"
        } else {
            "instance/region"
        }),
        token,
    );
    CloudFacts::put(
        &mut f.zone,
        &mut f.notes,
        "availabilityDomain",
        text("availabilityDomain"),
        &src("instance/availabilityDomain"),
        token,
    );
    CloudFacts::put(
        &mut f.instance_type,
        &mut f.notes,
        "shape",
        text("shape"),
        &src("instance/shape"),
        token,
    );
    CloudFacts::put(
        &mut f.vm_name,
        &mut f.notes,
        "displayName",
        text("displayName"),
        &src("instance/displayName"),
        token,
    );
    // A preemptible instance carries its preemption settings; no key is
    // no answer (older documents), so nothing is claimed then.
    if doc
        .get("preemptibleInstanceConfig")
        .is_some_and(Value::is_object)
    {
        f.spot = Some(Sourced::new(
            true,
            src("instance/preemptibleInstanceConfig"),
        ));
    }
    Ok(f)
}
