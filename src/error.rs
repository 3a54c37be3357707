//! Error kinds a caller branches on. Everything else is `anyhow` with context.

use thiserror::Error;

/// Bad input from the operator: a flag, an argument, a file they named, or an
/// environment variable. Maps to exit code 2, and is always raised before any
/// file on the host is changed.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(msg: impl Into<String>) -> Self {
        UsageError(msg.into())
    }
}

/// Shorthand: `bail_usage!("--ip {} is not an IPv4 address", ip)`.
#[macro_export]
macro_rules! bail_usage {
    ($($arg:tt)*) => {
        return Err($crate::error::UsageError::new(format!($($arg)*)).into())
    };
}

/// Exit code for an error chain: 2 when any cause is a [`UsageError`], else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err
        .chain()
        .any(|c| c.downcast_ref::<UsageError>().is_some())
    {
        2
    } else {
        1
    }
}
