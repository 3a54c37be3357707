//! Hetzner Cloud: `GET /hetzner/v1/metadata` (a YAML document:
//! `instance-id`, `region`, `availability-zone`, `public-ipv4`, …) and
//! `GET /hetzner/v1/metadata/private-networks` (a YAML list of the
//! attached private networks, `- ip: 10.0.0.2`). No header needed. It
//! names no server type; Hetzner has no spot servers.
//!
//! YAML anchors and aliases are refused before the document is loaded:
//! Hetzner never sends them, and expanding them is how a small document
//! becomes a huge one.

use anyhow::{Context, Result, bail};
use yaml_rust2::Yaml;
use yaml_rust2::parser::{Event, Parser};

use super::facts::{CloudFacts, Sourced, instance_id, ipv4, token};
use super::http::{MetaClient, refused};

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
pub const ENDPOINT_ENV: &str = "AMS_AGENT_HETZNER_METADATA_ENDPOINT";
pub const METADATA_PATH: &str = "/hetzner/v1/metadata";
pub const NETWORKS_PATH: &str = "/hetzner/v1/metadata/private-networks";

fn src(key: &str) -> String {
    format!("hetzner metadata {key}")
}

pub async fn read(client: &MetaClient, endpoint: &str) -> Result<CloudFacts> {
    let url = format!("{endpoint}{METADATA_PATH}");
    let reply = client.get_ok(&url, &[]).await?;
    let mut f = parse(&reply.body).with_context(|| format!("reading {url}"))?;
    let url = format!("{endpoint}{NETWORKS_PATH}");
    match client.get(&url, &[]).await {
        Ok(r) if r.status.is_success() => match private_ip(&r.body) {
            Ok(ip) => CloudFacts::put(
                &mut f.private_ipv4,
                &mut f.notes,
                "private IPv4",
                ip.as_deref(),
                &src("private-networks[0].ip"),
                ipv4,
            ),
            Err(e) => f.notes.push(format!("reading {url}: {e:#}")),
        },
        Ok(r) => f.notes.push(format!("{:#}", refused(&url, &r))),
        Err(e) => f.notes.push(format!("{e:#}")),
    }
    if f.private_ipv4.is_none() {
        f.notes
            .push("no private network attached (private-networks is empty)".into());
    }
    Ok(f)
}

/// Loads one YAML document, refusing anchors and aliases.
fn load(body: &str) -> Result<Yaml> {
    let mut parser = Parser::new_from_str(body);
    loop {
        match parser.next_token().context("not YAML")?.0 {
            Event::StreamEnd => break,
            Event::Alias(_) => bail!("YAML aliases are not accepted in metadata"),
            Event::Scalar(_, _, anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::MappingStart(anchor, _)
                if anchor > 0 =>
            {
                bail!("YAML anchors are not accepted in metadata")
            }
            _ => {}
        }
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(body).context("not YAML")?;
    Ok(docs.into_iter().next().unwrap_or(Yaml::Null))
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        _ => None,
    }
}

/// The metadata document.
pub fn parse(body: &str) -> Result<CloudFacts> {
    let doc = load(body)?;
    if !matches!(doc, Yaml::Hash(_)) {
        bail!("not a YAML mapping");
    }
    let id = match &doc["instance-id"] {
        Yaml::Integer(i) if *i > 0 => i.to_string(),
        _ => bail!("the document has no instance-id"),
    };
    let id = instance_id(&id).context("instance-id is not a plausible id")?;
    let mut f = CloudFacts {
        instance_id: Some(Sourced::new(id, src("instance-id"))),
        spot: Some(Sourced::new(
            false,
            "hetzner (Hetzner Cloud has no spot servers)",
        )),
        ..CloudFacts::default()
    };
    let get = |k: &str| scalar(&doc[k]);
    CloudFacts::put(
        &mut f.public_ipv4,
        &mut f.notes,
        "public IPv4",
        get("public-ipv4").as_deref(),
        &src("public-ipv4"),
        ipv4,
    );
    CloudFacts::put(
        &mut f.region,
        &mut f.notes,
        "region",
        get("region").as_deref(),
        &src("region"),
        token,
    );
    CloudFacts::put(
        &mut f.zone,
        &mut f.notes,
        "availability-zone",
        get("availability-zone").as_deref(),
        &src("availability-zone"),
        token,
    );
    CloudFacts::put(
        &mut f.vm_name,
        &mut f.notes,
        "hostname",
        get("hostname").as_deref(),
        &src("hostname"),
        token,
    );
    Ok(f)
}

/// The first private network's address, from `private-networks`.
pub fn private_ip(body: &str) -> Result<Option<String>> {
    let doc = load(body)?;
    Ok(match &doc {
        Yaml::Array(nets) => nets.first().and_then(|n| scalar(&n["ip"])),
        Yaml::Null => None,
        _ => bail!("not a YAML list"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_refused_and_the_documented_shape_reads() {
        let bomb = "a: &a [x, x]\nb: &b [*a, *a]\ninstance-id: 1\n";
        assert!(format!("{:#}", parse(bomb).unwrap_err()).contains("anchors"));
        let doc = "availability-zone: hel1-dc2\nhostname: my-server\ninstance-id: 42\nlocal-ipv4: ''\npublic-ipv4: 1.2.3.4\nregion: eu-central\npublic-keys: []\nvendor_data: \"#cloud-config\\n\"\n";
        let f = parse(doc).unwrap();
        assert_eq!(f.instance_id.unwrap().value, "42");
        assert_eq!(f.zone.unwrap().value, "hel1-dc2");
        assert_eq!(f.public_ipv4.unwrap().value.to_string(), "1.2.3.4");
        assert_eq!(
            private_ip("- ip: 10.0.0.2\n  network_id: 1\n- ip: 10.128.0.2\n").unwrap(),
            Some("10.0.0.2".into())
        );
        assert_eq!(private_ip("[]").unwrap(), None);
    }
}
