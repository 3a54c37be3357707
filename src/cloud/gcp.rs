//! Google Compute Engine: `GET /computeMetadata/v1/instance/?recursive=true`
//! with `Metadata-Flavor: Google` (the server refuses a request without
//! it with HTTP 403, and answers with the same header, which is how a
//! real GCE metadata server is told from anything else on the address).
//! One request: the recursive document holds every key the agent uses.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::facts::{CloudFacts, Sourced, boolean, instance_id, ipv4, last_segment, token};
use super::http::MetaClient;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
pub const ENDPOINT_ENV: &str = "AMS_AGENT_GCP_METADATA_ENDPOINT";
pub const FLAVOR_HEADER: &str = "Metadata-Flavor";
pub const FLAVOR: &str = "Google";
pub const INSTANCE_PATH: &str = "/computeMetadata/v1/instance/";

fn src(key: &str) -> String {
    format!("gcp metadata instance/{key}")
}

/// Reads the instance from the metadata server at `endpoint`.
pub async fn read(client: &MetaClient, endpoint: &str) -> Result<CloudFacts> {
    let url = format!("{endpoint}{INSTANCE_PATH}?recursive=true");
    let reply = client.get_ok(&url, &[(FLAVOR_HEADER, FLAVOR)]).await?;
    if reply.header(FLAVOR_HEADER) != Some(FLAVOR) {
        bail!("{url} answered without `{FLAVOR_HEADER}: {FLAVOR}`: not a GCE metadata server");
    }
    parse(&reply.body).with_context(|| format!("reading the instance document of {url}"))
}

/// The instance from the recursive document (a JSON object).
pub fn parse(body: &str) -> Result<CloudFacts> {
    let doc: Value = serde_json::from_str(body).context("not JSON")?;
    let mut f = CloudFacts::default();
    // The id is a 64-bit number (beyond what a double holds exactly): kept
    // as the digits serde_json read, never through f64.
    let id = match doc.get("id") {
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => bail!("the document has no instance id"),
    };
    let id = instance_id(&id).context("the instance id is not a plausible id")?;
    f.instance_id = Some(Sourced::new(id, src("id")));
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let nic = doc
        .get("networkInterfaces")
        .and_then(|n| n.get(0))
        .cloned()
        .unwrap_or(Value::Null);
    let ip = text(&nic, "ip");
    CloudFacts::put(
        &mut f.private_ipv4,
        &mut f.notes,
        "private IPv4",
        ip.as_deref(),
        &src("network-interfaces/0/ip"),
        ipv4,
    );
    let external = nic
        .get("accessConfigs")
        .and_then(|a| a.get(0))
        .and_then(|a| text(a, "externalIp"));
    CloudFacts::put(
        &mut f.public_ipv4,
        &mut f.notes,
        "public IPv4",
        external.as_deref(),
        &src("network-interfaces/0/access-configs/0/external-ip"),
        ipv4,
    );
    if f.public_ipv4.is_none() {
        f.notes.push("no external IPv4 (no access config)".into());
    }
    // zone: projects/<number>/zones/europe-west1-b
    let zone = text(&doc, "zone");
    let zone_name = zone.as_deref().map(last_segment);
    CloudFacts::put(
        &mut f.zone,
        &mut f.notes,
        "zone",
        zone_name,
        &src("zone"),
        token,
    );
    if let Some(z) = &f.zone {
        if let Some((region, _)) = z.value.rsplit_once('-') {
            f.region = token(region)
                .map(|r| Sourced::new(r, format!("{} (the zone without its last part)", z.source)));
        }
    }
    let machine = text(&doc, "machineType");
    CloudFacts::put(
        &mut f.instance_type,
        &mut f.notes,
        "machine type",
        machine.as_deref().map(last_segment),
        &src("machine-type"),
        token,
    );
    let scheduling = doc.get("scheduling").cloned().unwrap_or(Value::Null);
    let model = text(&scheduling, "provisioningModel");
    let preemptible = text(&scheduling, "preemptible");
    if model.as_deref() == Some("SPOT") {
        f.spot = Some(Sourced::new(true, src("scheduling/provisioning-model")));
    } else {
        CloudFacts::put(
            &mut f.spot,
            &mut f.notes,
            "scheduling/preemptible",
            preemptible.as_deref(),
            &src("scheduling/preemptible"),
            boolean,
        );
    }
    let name = text(&doc, "name");
    CloudFacts::put(
        &mut f.vm_name,
        &mut f.notes,
        "name",
        name.as_deref(),
        &src("name"),
        token,
    );
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_64_bit_id_keeps_every_digit() {
        let f = parse(r#"{"id": 18446744073709551615, "zone": "projects/1/zones/us-central1-a"}"#)
            .unwrap();
        assert_eq!(f.instance_id.unwrap().value, "18446744073709551615");
        assert_eq!(f.region.unwrap().value, "us-central1");
        assert!(parse(r#"{"id": 1.5}"#).is_err());
        assert!(parse(r#"{"id": "1 2"}"#).is_err());
    }
}
