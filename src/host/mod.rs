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
