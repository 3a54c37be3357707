//! MongoDB: the node registry (register, heartbeat, leave, list) with
//! clear errors. Connection URIs are parsed in [`crate::uri`], below both
//! this module and [`crate::ams`].

pub mod alive;
pub mod error;
pub mod registry;
