//! Graceful scale-in: one state machine, `ready → draining → left`, fed by
//! every trigger — EC2's termination notices in the instance metadata
//! (Auto Scaling's target lifecycle state, a Spot interruption), `ams-agent
//! drain` by hand, SIGTERM during a drain — run inside the reporter
//! (`ams-agent run`), the one process that writes the node's state:
//!
//! 1. `draining` is written to the registry at once, with the trigger, the
//!    reason and the deadline (the balancer drains the node: HAProxy
//!    `drain`, out of Nginx), and every heartbeat keeps it;
//! 2. the node's own streams and viewers are counted from AMS's REST API
//!    ([`ams`]) until none is left or the budget runs out;
//! 3. AMS is stopped, the node is marked `left`, its own `clusternode` row
//!    is deleted, and an Auto Scaling lifecycle action is completed
//!    (`CONTINUE`; heartbeats kept it waiting meanwhile: [`lifecycle`]).
//!
//! [`state`] is the machine and its files, [`notices`] the EC2 metadata
//! polling, [`driver`] the loop inside the reporter.

pub mod ams;
pub mod driver;
pub mod lifecycle;
pub mod notices;
pub mod state;

pub use state::{DrainState, Phase, Trigger};

/// AMS's cluster database and the collection of its node rows (AMS's
/// `ClusterNode` entity: `_id`, `ip`, `lastUpdateTime`, …).
pub const CLUSTER_DB: &str = "clusterdb";
pub const CLUSTERNODE: &str = "clusternode";
