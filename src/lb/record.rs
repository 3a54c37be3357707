//! What the follower records under `/var/lib/ams-agent` for `lb status`
//! and for the next one-shot run (the hysteresis needs to know since when
//! a node has been eligible): the last reload and runtime update, the
//! guards holding, the changes waiting, the refused documents.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::membership::{Hold, Refused, Tracker, Waiting};
use super::model::{Kind, Membership};
use crate::host::Host;

pub fn path(kind: Kind) -> PathBuf {
    Path::new(crate::host::fs::STATE_DIR).join(format!("lb-{}.json", kind.name()))
}

/// Something that happened, when (Unix seconds) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at: u64,
    pub what: String,
}

impl Event {
    pub fn now(what: impl Into<String>) -> Self {
        Event {
            at: crate::config::unix_now(),
            what: what.into(),
        }
    }
}

/// A guard that is holding, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Held {
    pub since: u64,
    #[serde(flatten)]
    pub hold: Hold,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub kind: Option<Kind>,
    /// The balancer's file (host path) and admin socket (HAProxy).
    pub file: PathBuf,
    pub socket: Option<PathBuf>,
    pub service: String,
    /// The registry it follows, as printed (password masked).
    pub registry: String,
    /// The AMS node group it serves (`--group`); None: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_group: Option<String>,
    pub last_reload: Option<Event>,
    pub last_runtime: Option<Event>,
    pub last_error: Option<Event>,
    /// Since when the registry has not answered (None: it answers).
    pub registry_down_since: Option<u64>,
    pub holds: Vec<Held>,
    pub waiting: Vec<Waiting>,
    pub refused: Vec<Refused>,
    /// What the follower last put in rotation.
    pub applied: Membership,
    pub tracker: Tracker,
}

impl Record {
    /// The record of `kind`: None when there is none (no follower ran on
    /// this host); an error naming the file when it cannot be read or is
    /// not a record (never taken for "no balancer").
    pub fn load(host: &Host, kind: Kind) -> Result<Option<Record>> {
        let p = path(kind);
        let cap = crate::host::fs::Cap {
            bytes: 64 << 20,
            what: "the balancer's status record",
        };
        let Some(bytes) = host
            .read_capped(&p, cap)
            .with_context(|| format!("reading the balancer's status record {}", p.display()))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("reading the balancer's status record {}", p.display()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("the record serialises");
        v.push(b'\n');
        v
    }

    /// The same as `other` but for what changes on every poll (the time
    /// left of a waiting change): no need to write it again.
    pub fn same_as(&self, other: &Record) -> bool {
        let strip = |r: &Record| {
            let mut r = r.clone();
            for w in &mut r.waiting {
                w.remaining_ms = 0;
            }
            r
        };
        strip(self) == strip(other)
    }

    /// Writes the record (0600, atomic). The caller holds the host lock.
    pub fn save(&self, host: &Host) -> Result<()> {
        host.create_dir_all(Path::new(crate::host::fs::STATE_DIR), 0o700)?;
        let p = path(self.kind.unwrap_or(Kind::Haproxy));
        host.write_atomic(&p, &self.to_json(), crate::host::fs::private_meta(0o600))
    }
}
