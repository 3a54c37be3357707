//! EC2 instance metadata with the IMDSv2 token flow: `PUT /latest/api/token`,
//! then `GET /latest/meta-data/...` with the token header. Built to give up
//! fast outside EC2: a short connect timeout and a couple of retries, so a
//! node elsewhere falls back to its own facts within about a second.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::StatusCode;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
pub const ENDPOINT_ENV: &str = "AMS_AGENT_IMDS_ENDPOINT";
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
pub const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// Six hours, the maximum IMDS accepts.
const TOKEN_TTL_SECONDS: u32 = 21600;

/// How hard to try before deciding there is no metadata service.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Attempts per request (1 + retries).
    pub attempts: u32,
    pub pause: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            connect_timeout: Duration::from_millis(250),
            request_timeout: Duration::from_secs(1),
            attempts: 3,
            pause: Duration::from_millis(100),
        }
    }
}

/// What the agent uses from the instance metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub local_ipv4: Option<Ipv4Addr>,
    pub public_ipv4: Option<Ipv4Addr>,
    pub instance_type: Option<String>,
    pub availability_zone: Option<String>,
}

/// An IMDSv2 client that keeps its session token and renews it when the
/// service says it expired (HTTP 401).
pub struct Imds {
    client: reqwest::Client,
    endpoint: String,
    budget: Budget,
    token: Mutex<Option<String>>,
}

/// The endpoint from `AMS_AGENT_IMDS_ENDPOINT`, else the link-local default.
pub fn endpoint_from_env() -> String {
    std::env::var(ENDPOINT_ENV)
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

impl Imds {
    pub fn new(endpoint: &str, budget: Budget) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(budget.connect_timeout)
            .timeout(budget.request_timeout)
            // Metadata is always local: never through a proxy.
            .no_proxy()
            .build()
            .context("building the instance-metadata HTTP client")?;
        Ok(Imds {
            client,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            budget,
            token: Mutex::new(None),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends one request with retries on connection errors, timeouts and 5xx.
    async fn send(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let mut last = None;
        for attempt in 0..self.budget.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.budget.pause).await;
            }
            match build().send().await {
                Ok(r) if r.status().is_server_error() => {
                    last = Some(anyhow::anyhow!("HTTP {}", r.status()));
                }
                Ok(r) => return Ok(r),
                Err(e) => last = Some(anyhow::Error::new(e)),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    async fn fresh_token(&self) -> Result<String> {
        let url = format!("{}/latest/api/token", self.endpoint);
        let resp = self
            .send(|| {
                self.client
                    .put(&url)
                    .header(TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS.to_string())
            })
            .await
            .with_context(|| format!("requesting an IMDSv2 token from {url}"))?;
        if !resp.status().is_success() {
            bail!(
                "requesting an IMDSv2 token from {url}: HTTP {}",
                resp.status()
            );
        }
        let token = super::http::read_capped(resp, &url, 4096)
            .await
            .context("reading the IMDSv2 token")?;
        let token = String::from_utf8_lossy(&token);
        let token = token.trim().to_string();
        if token.is_empty() || token.contains(['\r', '\n']) {
            bail!("{url} returned an unusable token");
        }
        *self.token.lock().expect("token lock") = Some(token.clone());
        Ok(token)
    }

    async fn token(&self) -> Result<String> {
        let cached = self.token.lock().expect("token lock").clone();
        match cached {
            Some(t) => Ok(t),
            None => self.fresh_token().await,
        }
    }

    /// `GET /latest/meta-data/<path>`; `Ok(None)` when the item does not
    /// exist (404, e.g. `public-ipv4` of a private instance).
    pub async fn get(&self, path: &str) -> Result<Option<String>> {
        self.read(&format!("{}/latest/meta-data/{path}", self.endpoint))
            .await
    }

    /// `GET /latest/dynamic/<path>` (e.g. `instance-identity/document`),
    /// like [`Imds::get`].
    pub async fn get_dynamic(&self, path: &str) -> Result<Option<String>> {
        self.read(&format!("{}/latest/dynamic/{path}", self.endpoint))
            .await
    }

    async fn read(&self, url: &str) -> Result<Option<String>> {
        let mut token = self.token().await?;
        for renewed in [false, true] {
            let resp = self
                .send(|| self.client.get(url).header(TOKEN_HEADER, &token))
                .await
                .with_context(|| format!("reading {url}"))?;
            match resp.status() {
                StatusCode::UNAUTHORIZED if !renewed => {
                    // The token expired: get a new one and ask again.
                    tracing::debug!("IMDSv2 token rejected; renewing it");
                    token = self.fresh_token().await?;
                }
                StatusCode::NOT_FOUND => return Ok(None),
                s if s.is_success() => {
                    let bytes = super::http::read_capped(resp, url, super::http::BODY_CAP)
                        .await
                        .with_context(|| format!("reading {url}"))?;
                    let text = String::from_utf8(bytes).map_err(|_| {
                        anyhow::anyhow!("{url} answered bytes that are not UTF-8 text")
                    })?;
                    return Ok(Some(text.trim().to_string()));
                }
                s => bail!("reading {url}: HTTP {s}"),
            }
        }
        bail!("reading {url}: the metadata service rejected a fresh token (HTTP 401)")
    }

    /// An item the agent can do without: `None` (and a warning) when the
    /// service fails to give it.
    async fn optional(&self, path: &str) -> Option<String> {
        match self.get(path).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(
                    "instance metadata `{path}` is unavailable ({e:#}); leaving it empty"
                );
                None
            }
        }
    }

    /// The instance's identity and addresses.
    pub async fn instance(&self) -> Result<InstanceMetadata> {
        let instance_id = self
            .get("instance-id")
            .await?
            .context("the metadata service has no instance-id")?;
        if instance_id.is_empty()
            || instance_id.len() > 64
            || !instance_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!(
                "the metadata service returned an invalid instance-id `{}`",
                instance_id.escape_debug()
            );
        }
        // Only the id is required; the other items are best effort, so a
        // blip on one of them (HTTP 429, a timeout) never costs the node its
        // EC2 identity.
        let ip = |s: Option<String>| s.and_then(|v| v.parse::<Ipv4Addr>().ok());
        let local_ipv4 = ip(self.optional("local-ipv4").await);
        let public_ipv4 = ip(self.optional("public-ipv4").await);
        let instance_type = self
            .optional("instance-type")
            .await
            .filter(|s| !s.is_empty());
        let availability_zone = self
            .optional("placement/availability-zone")
            .await
            .filter(|s| !s.is_empty());
        Ok(InstanceMetadata {
            instance_id,
            local_ipv4,
            public_ipv4,
            instance_type,
            availability_zone,
        })
    }
}

/// The instance normalized, each value with its metadata path. The id is
/// required (else this is no EC2 instance); the rest is best effort.
pub async fn read(imds: &Imds) -> Result<super::CloudFacts> {
    use super::facts::{CloudFacts, Sourced, token};
    let m = imds.instance().await?;
    let src = |path: &str| format!("ec2 metadata latest/meta-data/{path}");
    let mut f = CloudFacts {
        instance_id: Some(Sourced::new(m.instance_id, src("instance-id"))),
        private_ipv4: m.local_ipv4.map(|ip| Sourced::new(ip, src("local-ipv4"))),
        public_ipv4: m.public_ipv4.map(|ip| Sourced::new(ip, src("public-ipv4"))),
        instance_type: m
            .instance_type
            .and_then(|t| token(&t))
            .map(|t| Sourced::new(t, src("instance-type"))),
        zone: m
            .availability_zone
            .and_then(|z| token(&z))
            .map(|z| Sourced::new(z, src("placement/availability-zone"))),
        ..CloudFacts::default()
    };
    if f.public_ipv4.is_none() {
        f.notes.push("no public IPv4 (public-ipv4 absent)".into());
    }
    let region = imds.optional("placement/region").await;
    CloudFacts::put(
        &mut f.region,
        &mut f.notes,
        "region",
        region.as_deref(),
        &src("placement/region"),
        token,
    );
    if f.region.is_none() {
        // Older instances lack placement/region: the zone without its
        // letter (eu-west-1a → eu-west-1).
        if let Some(z) = &f.zone {
            let r = z.value.trim_end_matches(|c: char| c.is_ascii_lowercase());
            if r.len() < z.value.len() && r.ends_with(|c: char| c.is_ascii_digit()) {
                f.region = Some(Sourced::new(
                    r.to_string(),
                    format!("{} (the zone without its letter)", z.source),
                ));
            }
        }
    }
    let life = imds.optional("instance-life-cycle").await;
    CloudFacts::put(
        &mut f.spot,
        &mut f.notes,
        "instance-life-cycle",
        life.as_deref(),
        &src("instance-life-cycle"),
        |v| match v {
            "spot" => Some(true),
            "on-demand" | "scheduled" | "capacity-block" => Some(false),
            _ => None,
        },
    );
    Ok(f)
}
