//! MongoDB: connection URIs parsed once, and the node registry (register,
//! heartbeat, leave, list) with clear errors.

pub mod error;
pub mod registry;
pub mod uri;
