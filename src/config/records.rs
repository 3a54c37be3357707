//! The state the agent keeps under `/var/lib/ams-agent`: the record that
//! this instance joined, and the last failure of `join`/`leave`.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::node::Role;

/// Where `join` records that this instance joined (per instance: a new
/// instance booted from the same image has another id and joins afresh).
pub const JOIN_RECORD: &str = "/var/lib/ams-agent/joined.json";
/// The last failure of `join`/`leave`, kept locally (no secret in it).
pub const LAST_ERROR: &str = "/var/lib/ams-agent/last-error.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRecord {
    pub node_id: String,
    /// The registry URI, without password.
    pub mongo: String,
    pub database: String,
    pub collection: String,
    pub role: Role,
    /// Seconds since the Unix epoch.
    pub joined_at: u64,
}

impl JoinRecord {
    pub fn load(host: &Host) -> Option<JoinRecord> {
        let bytes = host.read_optional(Path::new(JOIN_RECORD)).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("the record serialises");
        v.push(b'\n');
        v
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastErrorRecord {
    pub command: String,
    pub step: String,
    pub message: String,
    pub node_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes `last-error.json` (best effort: a failure to record a failure is
/// only logged).
pub fn record_last_error(host: &Host, rec: &LastErrorRecord) {
    let write = || -> Result<()> {
        host.create_dir_all(Path::new(crate::host::fs::STATE_DIR), 0o700)?;
        let mut v = serde_json::to_vec_pretty(rec)?;
        v.push(b'\n');
        host.write_atomic(
            Path::new(LAST_ERROR),
            &v,
            crate::host::fs::private_meta(0o644),
        )
    };
    if let Err(e) = write() {
        tracing::warn!("could not record the error in {LAST_ERROR}: {e:#}");
    }
}
