//! Everything that touches the host: files under a root prefix, external
//! programs through a runner, systemd, the terminal.

pub mod fs;
pub mod http;
pub mod lock;
pub mod net;
pub mod nss;
pub mod runner;
pub mod systemd;
pub mod tty;
pub mod txn;

pub use fs::Host;
pub use runner::{CommandRunner, CommandSpec, Output, SystemRunner};

/// A single-threaded async runtime for one command's network work.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
