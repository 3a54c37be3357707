//! ams-agent: bootstraps the nodes of an Ant Media Server cluster and keeps
//! them visible. `main.rs` is a thin shell around [`cli::run`].
//!
//! The picture: a command in [`cli`] reads the host through [`host`] (files
//! under a root prefix, programs through a runner), asks a domain module
//! ([`ams`], [`mongo`]) for a [`plan::Plan`], prints it (`--dry-run`) or
//! applies it.

pub mod agent_service;
pub mod ams;
pub mod cert;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod doctor;
pub mod error;
pub mod host;
pub mod human;
pub mod lb;
pub mod logging;
pub mod mongo;
pub mod mongod;
pub mod node;
pub mod plan;
pub mod properties;
pub mod reporter;
pub mod secret;
pub mod uri;
