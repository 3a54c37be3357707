//! The cluster's edge: a load balancer (HAProxy or Nginx) in front of the
//! AMS nodes that follows the node registry.
//!
//! - [`model`]: the typed model both renderers work from;
//! - [`membership`]: who is in rotation (the registry's alive rule,
//!   hysteresis, guards);
//! - [`haproxy`], [`runtime`]: HAProxy's section, its slots and the
//!   Runtime API on the admin socket (membership without reloads);
//! - [`nginx`]: Nginx's two sections (main and http);
//! - [`blocks`]: the marked sections inside the balancer's file;
//! - [`follow`]: one cycle (read, decide, render, check, install, apply)
//!   and `--watch`; [`record`]: what `lb status` reads back;
//!   [`status`]: the registry's view against the balancer's.
//!
//! Design and measured limits: `docs/lb.md`.

pub mod blocks;
pub mod follow;
pub mod haproxy;
pub mod membership;
pub mod model;
pub mod nginx;
pub mod record;
pub mod runtime;
pub mod status;

pub use model::Kind;
