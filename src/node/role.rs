//! The role a node plays in the cluster.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Origin,
    Edge,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Origin => "origin",
            Role::Edge => "edge",
        }
    }
}
