//! This node: who it is (EC2 instance metadata, else host name and
//! `/etc/machine-id`) and how it is doing (health, AMS state).

pub mod health;
pub mod identity;
pub mod imds;
pub mod role;

pub use role::Role;
