//! The registry's alive rule, in one place for every reader (`status`,
//! `doctor`): a node is alive while its `lastSeen` is younger than
//! [`ALIVE_INTERVALS`] of its own heartbeat intervals (AMS's rule for its
//! `clusternode` rows: 4 × 5 s), both times by the server's clock (`now`
//! from `hello.localTime`, `lastSeen` from `$currentDate`), so a node's own
//! clock cannot fake liveness. A `lastSeen` ahead of the server's clock is
//! clock skew or a forged document: not alive. An impossible interval is
//! flagged and the default used.

use mongodb::bson::{Bson, DateTime, Document};

/// A node is alive while its last heartbeat is younger than this many intervals.
pub const ALIVE_INTERVALS: u32 = 4;
/// The interval assumed for a document that does not say its own.
pub const DEFAULT_INTERVAL_SECONDS: f64 = 5.0;
/// How far a `lastSeen` may be ahead of the server's clock before it is
/// clock skew (members of a replica set may differ a little).
pub const CLOCK_TOLERANCE_SECONDS: f64 = 2.0;

/// What the rule says about one node document.
#[derive(Debug, Clone, PartialEq)]
pub struct Liveness {
    /// Seconds since `lastSeen` by the server's clock (negative only when
    /// it is ahead by more than the tolerance); None when never seen.
    pub age_seconds: Option<f64>,
    /// The interval the rule used (the document's, else the default).
    pub interval_seconds: f64,
    pub alive: bool,
    /// Values that cannot be true, each ignored as said.
    pub warnings: Vec<String>,
}

pub fn number(doc: &Document, key: &str) -> Option<f64> {
    match doc.get(key)? {
        Bson::Double(v) => Some(*v),
        Bson::Int32(v) => Some(*v as f64),
        Bson::Int64(v) => Some(*v as f64),
        _ => None,
    }
}

/// A number as a message shows it (`1e30`, not thirty zeros).
pub fn shown(v: f64) -> String {
    if v.is_finite() && v.abs() < 1e6 {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// The rule applied to `doc` at the server's time `now`.
pub fn liveness(doc: &Document, now: DateTime) -> Liveness {
    let mut warnings = Vec::new();
    let age = doc
        .get_datetime("lastSeen")
        .ok()
        .map(|t| (now.timestamp_millis() - t.timestamp_millis()) as f64 / 1000.0);
    let skewed = age.is_some_and(|a| a < -CLOCK_TOLERANCE_SECONDS);
    if let Some(a) = age.filter(|_| skewed) {
        warnings.push(format!(
            "lastSeen is {}s ahead of the server's clock (clock skew?): not counted alive",
            shown((-a).round())
        ));
    }
    let age = age.map(|a| if skewed { a } else { a.max(0.0) });
    let interval = match number(doc, "intervalSeconds") {
        // The reporter's own range (500ms to 1h).
        Some(v) if v.is_finite() && (0.5..=3600.0).contains(&v) => v,
        Some(v) => {
            warnings.push(format!(
                "intervalSeconds {} is out of range (0.5-3600): liveness uses {DEFAULT_INTERVAL_SECONDS}s",
                shown(v)
            ));
            DEFAULT_INTERVAL_SECONDS
        }
        None => DEFAULT_INTERVAL_SECONDS,
    };
    let left = matches!(doc.get("state"), Some(Bson::String(s)) if s == "left");
    let alive = !left && !skewed && age.is_some_and(|a| a < interval * ALIVE_INTERVALS as f64);
    Liveness {
        age_seconds: age,
        interval_seconds: interval,
        alive,
        warnings,
    }
}
