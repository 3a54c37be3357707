//! How much still runs on this node, from AMS's own REST API on
//! `http://127.0.0.1:5080` (AMS's IP filter lets 127.0.0.1 call an
//! application's REST API by default: `remoteAllowedCIDR=127.0.0.1`).
//! For every application under `webapps/` but `root` (the console, whose
//! API needs a login):
//!
//! - viewers: `GET /{app}/rest/v2/broadcasts/total-broadcast-statistics`,
//!   whose `totalHLSWatchersCount`, `totalWebRTCWatchersCount` and
//!   `totalDASHWatchersCount` count this node's own viewers (AMS keeps them
//!   in memory per node; `-1` when the application has no such viewers);
//! - publishers: `GET /{app}/rest/v2/broadcasts/active-live-stream-count`
//!   (`{"number": n}`, the whole cluster's in cluster mode: 0 means none
//!   here either), and when it is not 0, the broadcasts of
//!   `GET /{app}/rest/v2/broadcasts/list/{offset}/50` that are
//!   `broadcasting`, updated in the last 20 s (AMS's own freshness rule: 2 ×
//!   its 10 s statistics period) and whose `originAdress` is this node's
//!   address (the one AMS registers, its private IPv4).
//!
//! An application that refuses (its IP filter, or `jwtControlEnabled`) is
//! "unknown", never "empty": the drain then waits for its deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Pages of 50 broadcasts read at most per application and poll.
const MAX_PAGES: usize = 200;
const PAGE: usize = 50;
/// AMS's rule for a live broadcast: updated within 2 × 10 s.
const FRESH_MS: i64 = 20_000;

/// One application's load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLoad {
    pub app: String,
    pub publishers: u64,
    pub viewers: u64,
}

/// What runs on the node now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Load {
    pub apps: Vec<AppLoad>,
    /// Applications whose counts could not be read, with why.
    pub unknown: Vec<(String, String)>,
    /// AMS does not answer at all (not running): nothing is served.
    pub ams_down: bool,
}

impl Load {
    pub fn publishers(&self) -> u64 {
        self.apps.iter().map(|a| a.publishers).sum()
    }

    pub fn viewers(&self) -> u64 {
        self.apps.iter().map(|a| a.viewers).sum()
    }

    /// Empty for sure: every application answered with nothing, or AMS
    /// is not running.
    pub fn empty(&self) -> bool {
        self.ams_down || (self.unknown.is_empty() && self.publishers() == 0 && self.viewers() == 0)
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        if self.ams_down {
            return "AMS does not answer: nothing is served".into();
        }
        let mut s = format!(
            "{} live stream(s), {} viewer(s) on this node",
            self.publishers(),
            self.viewers()
        );
        let busy: Vec<String> = self
            .apps
            .iter()
            .filter(|a| a.publishers + a.viewers > 0)
            .map(|a| format!("{}: {}/{}", a.app, a.publishers, a.viewers))
            .collect();
        if !busy.is_empty() {
            s.push_str(&format!(" ({})", busy.join(", ")));
        }
        for (app, why) in &self.unknown {
            s.push_str(&format!("; {app}: unknown ({why})"));
        }
        s
    }
}

enum Failure {
    /// Nothing listens: AMS is not running.
    Down,
    Other(String),
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, Failure> {
    let resp = client.get(url).send().await.map_err(|e| {
        if e.is_connect() {
            Failure::Down
        } else if e.is_timeout() {
            Failure::Other("no answer within 2s".into())
        } else {
            Failure::Other(e.to_string())
        }
    })?;
    let status = resp.status();
    if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(Failure::Other(format!(
            "HTTP {}: AMS refuses 127.0.0.1 (the application's remoteAllowedCIDR, or jwtControlEnabled)",
            status.as_u16()
        )));
    }
    if !status.is_success() {
        return Err(Failure::Other(format!("HTTP {}", status.as_u16())));
    }
    let bytes = crate::cloud::http::read_capped(resp, "AMS", 8 << 20)
        .await
        .map_err(|e| Failure::Other(format!("reading the answer: {e:#}")))?;
    serde_json::from_slice(&bytes).map_err(|_| Failure::Other("the answer is not JSON".into()))
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_i64().filter(|n| *n > 0).unwrap_or(0) as u64
}

async fn app_load(
    client: &reqwest::Client,
    base: &str,
    app: &str,
    own_ip: Option<&str>,
    now_ms: i64,
) -> Result<AppLoad, Failure> {
    let api = format!("{base}{app}/rest/v2/broadcasts");
    let stats = get_json(client, &format!("{api}/total-broadcast-statistics")).await?;
    let viewers = count(&stats, "totalHLSWatchersCount")
        + count(&stats, "totalWebRTCWatchersCount")
        + count(&stats, "totalDASHWatchersCount");
    let active = get_json(client, &format!("{api}/active-live-stream-count")).await?;
    let mut publishers = 0;
    if count(&active, "number") > 0 {
        let mut complete = false;
        for page in 0..MAX_PAGES {
            let list = get_json(client, &format!("{api}/list/{}/{PAGE}", page * PAGE)).await?;
            let Value::Array(items) = list else {
                return Err(Failure::Other(
                    "the broadcast list is not a JSON list".into(),
                ));
            };
            publishers += items
                .iter()
                .filter(|b| b["status"] == "broadcasting")
                .filter(|b| own_ip.is_none_or(|ip| b["originAdress"] == ip))
                .filter(|b| {
                    b["updateTime"]
                        .as_i64()
                        .is_none_or(|t| now_ms - t <= FRESH_MS)
                })
                .count() as u64;
            if items.len() < PAGE {
                complete = true;
                break;
            }
        }
        if !complete {
            return Err(Failure::Other(format!(
                "more than {} broadcasts: not all read",
                MAX_PAGES * PAGE
            )));
        }
    }
    Ok(AppLoad {
        app: app.to_string(),
        publishers,
        viewers,
    })
}

/// The load of every application in `apps`, AMS at `base`
/// (`http://127.0.0.1:5080/`), this node's address `own_ip`.
pub async fn load(
    client: &reqwest::Client,
    base: &str,
    apps: &[String],
    own_ip: Option<&str>,
) -> Load {
    let base = if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut out = Load::default();
    let mut answered = false;
    let mut down = false;
    for app in apps.iter().filter(|a| a.as_str() != "root") {
        match app_load(client, &base, app, own_ip, now_ms).await {
            Ok(l) => {
                answered = true;
                out.apps.push(l);
            }
            Err(Failure::Down) => down = true,
            Err(Failure::Other(why)) => {
                answered = true;
                out.unknown.push((
                    crate::human::escape(app).into_owned(),
                    crate::human::escape(&why).into_owned(),
                ));
            }
        }
    }
    // Nothing listens for any application: AMS is not running.
    out.ams_down = down && !answered;
    if down && answered {
        out.unknown.push((
            "AMS".into(),
            "the connection was refused for some applications".into(),
        ));
    }
    out
}

/// The client for AMS: local, short deadlines, never a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .expect("a plain HTTP client builds")
}
