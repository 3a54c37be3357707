//! This node: who it is (EC2 instance metadata, else host name and
//! `/etc/machine-id`) and how it is doing (health, AMS state).

pub mod health;
pub mod identity;
pub mod role;

/// The EC2 instance-metadata client moved to [`crate::cloud::ec2`]; this
/// name keeps code written against the old path building.
pub use crate::cloud::ec2 as imds;

pub use role::Role;
