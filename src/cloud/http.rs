//! One small HTTP client for the metadata services other than EC2's:
//! never through a proxy, a short connect timeout, a deadline per
//! request, a few retries (connection errors, timeouts, 5xx, 429), and a
//! bounded answer (a metadata service that streams forever is cut at
//! [`BODY_CAP`]). Nothing here knows a provider.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::header::HeaderMap;
use reqwest::{Client, RequestBuilder, StatusCode};

use super::Budget;

/// The most of one answer that is read (a full Azure or GCP instance
/// document is a few KB).
pub const BODY_CAP: usize = 1 << 20;

/// An answer: status, headers and the body as text.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The value of header `name`, when it is there and is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct MetaClient {
    client: Client,
    budget: Budget,
}

impl MetaClient {
    pub fn new(budget: Budget) -> Result<Self> {
        let client = Client::builder()
            .connect_timeout(budget.connect_timeout)
            .timeout(budget.request_timeout)
            // Metadata is always local: never through a proxy.
            .no_proxy()
            .build()
            .context("building the instance-metadata HTTP client")?;
        Ok(MetaClient { client, budget })
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends the request `build` makes, retried on connection errors,
    /// timeouts, HTTP 5xx and 429 (throttling) up to the budget's attempts.
    /// A last 5xx/429 is returned as the reply (the caller names it); an
    /// error only when nothing answered.
    pub async fn send(
        &self,
        url: &str,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Reply> {
        let mut last: Option<Result<Reply>> = None;
        for attempt in 0..self.budget.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.budget.pause).await;
            }
            match build(&self.client).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let body = read_body(resp, url).await;
                    match body {
                        Ok(body) => {
                            let reply = Reply {
                                status,
                                headers,
                                body,
                            };
                            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                                last = Some(Ok(reply));
                                continue;
                            }
                            return Ok(reply);
                        }
                        Err(e) => last = Some(Err(e)),
                    }
                }
                Err(e) => {
                    last = Some(Err(
                        anyhow::Error::new(without_url(e)).context(format!("asking {url}"))
                    ));
                }
            }
        }
        last.expect("at least one attempt")
    }

    /// `GET url` with `headers`.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        self.send(url, |c| {
            let mut r = c.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r
        })
        .await
    }

    /// `GET url` with `headers`, the reply when it is a success (2xx),
    /// else an error naming the status ([`refused`]).
    pub async fn get_ok(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let reply = self.get(url, headers).await?;
        if !reply.status.is_success() {
            return Err(refused(url, &reply));
        }
        Ok(reply)
    }

    /// The deadline one request can cost at most, all attempts included.
    pub fn worst_case(&self) -> Duration {
        let b = self.budget;
        (b.request_timeout + b.pause) * b.attempts.max(1)
    }
}

/// reqwest's error without the URL it repeats (the context names it once).
fn without_url(e: reqwest::Error) -> reqwest::Error {
    e.without_url()
}

/// The body, at most [`BODY_CAP`] bytes, as UTF-8 text.
async fn read_body(resp: reqwest::Response, url: &str) -> Result<String> {
    let bytes = read_capped(resp, url, BODY_CAP).await?;
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{url} answered bytes that are not UTF-8 text"))
}

/// The body, at most `cap` bytes (read chunk by chunk: an endless answer
/// is cut off at the cap, never held whole).
pub async fn read_capped(mut resp: reqwest::Response, url: &str, cap: usize) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(without_url)
        .with_context(|| format!("reading the answer of {url}"))?
    {
        if bytes.len() + chunk.len() > cap {
            bail!("{url} answered more than {cap} bytes; not read further");
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A status that is not 200, as a message: `HTTP 404 Not Found`, and the
/// start of the body when it says why (Azure's and GCP's refusals do).
pub fn refused(url: &str, reply: &Reply) -> anyhow::Error {
    let why: String = reply
        .body
        .split(['\r', '\n'])
        .next()
        .unwrap_or("")
        .chars()
        .take(160)
        .collect();
    let why = why.trim();
    if why.is_empty() {
        anyhow::anyhow!("{url} answered HTTP {}", reply.status)
    } else {
        anyhow::anyhow!(
            "{url} answered HTTP {}: {}",
            reply.status,
            crate::human::escape(why)
        )
    }
}
