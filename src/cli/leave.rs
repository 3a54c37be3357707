//! `ams-agent leave`: stop the reporter and mark this node `left` in the
//! registry. AMS itself is left as it is. A later `join` joins afresh.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;

use super::Context;
use super::run::{RegistryArgs, Resolved, runtime};
use crate::config::{self, JOIN_RECORD, JoinRecord, LastErrorRecord};
use crate::host::{CommandSpec, txn};
use crate::mongo::registry::{Deadlines, NodeState, Registry};
use crate::node::{identity, imds};

pub const AGENT_UNIT: &str = "ams-agent.service";

/// Stop reporting and mark this node `left` in the registry
#[derive(Debug, Args)]
pub struct LeaveArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,

    /// How long to wait for MongoDB
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::parse_duration)]
    pub timeout: Duration,

    /// Instance-metadata endpoint
    #[arg(long, hide = true, env = imds::ENDPOINT_ENV, default_value = imds::DEFAULT_ENDPOINT)]
    pub imds_endpoint: String,
}

pub fn run(ctx: &Context, args: LeaveArgs) -> Result<()> {
    super::run::validate_timeout(args.timeout, "--timeout")?;
    let Resolved { target, config } = args.registry.resolve(&ctx.host)?;
    // Every mutating command first completes a change a crash interrupted.
    if !ctx.dry_run && txn::recover(&ctx.host)? {
        tracing::info!("an interrupted change from an earlier run was completed first");
    }
    let rt = runtime()?;
    // The id `join` registered (agent.toml, else the join record): a
    // metadata blip now must not make `leave` mark another document.
    let stored = config
        .as_ref()
        .and_then(|c| c.node.id.clone())
        .or_else(|| JoinRecord::load(&ctx.host).map(|r| r.node_id))
        .filter(|id| config::valid_node_id(id));
    let node = rt
        .block_on(identity::resolve_stored(
            &ctx.host,
            &args.imds_endpoint,
            stored.as_deref(),
        ))
        .context("identifying this node")?;
    let stop = CommandSpec::new("systemctl", &["disable", "--now", AGENT_UNIT])
        .timeout(Duration::from_secs(60));
    if ctx.dry_run {
        println!(
            "Plan: node {} leaves the registry at {}",
            node.id,
            target.shown()
        );
        println!("1. {}", stop.display());
        println!(
            "2. mark node {} `left` in {}.{}",
            node.id, target.database, target.collection
        );
        println!("3. forget the join record {JOIN_RECORD}");
        return Ok(());
    }
    let fail = |step: &str, e: anyhow::Error| {
        let message = format!("{e:#}");
        config::record_last_error(
            &ctx.host,
            &LastErrorRecord {
                command: "leave".into(),
                step: step.into(),
                message: message.clone(),
                node_id: Some(node.id.clone()),
                at: config::unix_now(),
            },
        );
        anyhow::anyhow!("leave failed at step `{step}`: {message}")
    };

    // 1. The reporter would otherwise report the node alive again.
    match ctx.runner.run(&stop) {
        Ok(out) if out.success() => tracing::info!("stopped and disabled {AGENT_UNIT}"),
        Ok(out)
            if out.code == Some(5)
                || out.stderr.contains("not found")
                || out.stderr.contains("does not exist") =>
        {
            tracing::info!("{AGENT_UNIT} is not installed; nothing to stop")
        }
        Ok(out) => {
            return Err(fail(
                "stop the reporter",
                anyhow::anyhow!(
                    "`{}` failed with exit code {}: {}",
                    stop.display(),
                    out.code.map_or("none".into(), |c| c.to_string()),
                    out.stderr.trim()
                ),
            ));
        }
        Err(e) => return Err(fail("stop the reporter", e)),
    }

    // 2. The registry.
    let deadlines = Deadlines::within(args.timeout);
    rt.block_on(async {
        let reg = Registry::open(&target, deadlines).await?;
        let r = reg.set_state(&node.id, NodeState::Left, args.timeout).await;
        reg.close().await;
        r
    })
    .map_err(|e| fail("mark the node left", e.into()))?;

    // 3. So that `join` on this instance joins again.
    ctx.host
        .remove(Path::new(JOIN_RECORD))
        .map_err(|e| fail("forget the join record", e))?;
    println!(
        "node {} left the registry at {} ({}.{})",
        node.id,
        target.shown(),
        target.database,
        target.collection
    );
    Ok(())
}
