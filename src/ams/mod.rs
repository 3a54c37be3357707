//! Ant Media Server: its install layout, its configuration files, and the
//! standalone/cluster mode switch.

pub mod db;
pub mod etc_hosts;
pub mod files;
pub mod jee;
pub mod layout;
pub mod mode;
/// The `.properties` format lives below (the plan masks by it too).
pub use crate::properties;

pub use layout::AmsLayout;
