//! MongoDB: the database argument (URL classification and redaction), and
//! the node registry (register, heartbeat, leave, list) with clear errors.

pub mod error;
pub mod registry;
pub mod url;
