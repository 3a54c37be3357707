//! `ams-agent leave`: stop the reporter and mark this node `left` in the
//! registry. AMS itself is left as it is. A later `join` joins afresh.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;

use super::Context;
use super::run::{RegistryArgs, Resolved};
use crate::host::runtime;
use std::sync::Arc;

use crate::cloud::ec2 as imds;
use crate::config::{self, JOIN_RECORD, JoinRecord, LastErrorRecord};
use crate::host::fs::private_meta;
use crate::host::systemd::{self, ServiceAction};
use crate::mongo::registry::{Deadlines, NodeState, Registry, Target};
use crate::node::identity;
use crate::plan::{Action, ApplyCtx, FileChange, Plan, Step};

pub const AGENT_UNIT: &str = "ams-agent.service";

/// Stop reporting and mark this node `left` in the registry
#[derive(Debug, Args)]
pub struct LeaveArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,

    /// How long to wait for MongoDB
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::parse_wait)]
    pub timeout: Duration,

    /// Instance-metadata endpoint
    #[arg(long, hide = true, env = imds::ENDPOINT_ENV, default_value = imds::DEFAULT_ENDPOINT)]
    pub imds_endpoint: String,
}

/// agent.toml's cloud, the environment's endpoints, the route to the
/// registry: as the reporter identifies the node.
fn lookup(
    args: &LeaveArgs,
    target: &Target,
    config: Option<&config::AgentConfig>,
) -> identity::Lookup {
    use crate::cloud::detect::{Endpoints, Origin};
    let cloud = config.and_then(|c| c.node.cloud);
    identity::Lookup {
        choice: cloud.unwrap_or_default(),
        origin: match cloud {
            Some(_) => Origin::Config(args.registry.config.clone()),
            None => Origin::Default,
        },
        endpoints: Endpoints::from_env().with_ec2(&args.imds_endpoint),
        mongo_uri: Some(target.uri.clone()),
        pinned_ip: config
            .and_then(|c| c.node.private_ip)
            .map(|ip| (ip, "[node] private_ip of agent.toml")),
        announce: true,
    }
}

pub fn run(ctx: &Context, args: LeaveArgs) -> Result<()> {
    super::run::validate_timeout(args.timeout, "--timeout")?;
    let Resolved { target, config } = args.registry.resolve(&ctx.host)?;
    let _lock = ctx.mutate()?;
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
            &lookup(&args, &target, config.as_ref()),
            stored.as_deref(),
        ))
        .context("identifying this node")?;

    let mut plan = Plan::new(format!(
        "node {} leaves the registry at {}",
        node.id,
        target.shown()
    ));
    // 1. The reporter would otherwise report the node alive again.
    plan.push(Step::Action(Arc::new(StopReporter)));
    // 2. The registry.
    plan.push(Step::Action(Arc::new(MarkLeft {
        target: target.clone(),
        node_id: node.id.clone(),
        timeout: args.timeout,
    })));
    // 3. So that `join` on this instance joins again.
    plan.files(
        format!("forget the join record {JOIN_RECORD}"),
        vec![FileChange {
            path: JOIN_RECORD.into(),
            before: ctx.host.read_optional(Path::new(JOIN_RECORD))?,
            after: None,
            meta_before: ctx.host.meta(Path::new(JOIN_RECORD))?,
            meta: private_meta(0o600),
            internal: true,
        }],
    );
    if ctx.dry_run {
        print!("{}", plan.render());
        return Ok(());
    }
    let applied = plan.apply(&ApplyCtx {
        host: &ctx.host,
        runner: ctx.runner.as_ref(),
        progress: false,
    });
    if let Err(e) = applied {
        let message = format!("{e:#}");
        config::record_last_error(
            &ctx.host,
            &LastErrorRecord {
                command: "leave".into(),
                step: "leave".into(),
                message: message.clone(),
                node_id: Some(node.id.clone()),
                at: config::unix_now(),
            },
        );
        anyhow::bail!("leave failed: {message}");
    }
    println!(
        "node {} left the registry at {} ({}.{})",
        node.id,
        target.shown(),
        target.database,
        target.collection
    );
    Ok(())
}

/// `systemctl disable --now ams-agent.service`; a unit that is not
/// installed has nothing to stop.
#[derive(Debug)]
struct StopReporter;

impl Action for StopReporter {
    fn summary(&self) -> String {
        format!(
            "stop the reporter: {}",
            systemd::command(AGENT_UNIT, ServiceAction::DisableNow).display()
        )
    }

    fn apply(&self, ctx: &ApplyCtx) -> Result<()> {
        let stop = systemd::command(AGENT_UNIT, ServiceAction::DisableNow);
        let out = ctx.runner.run(&stop)?;
        if out.success() {
            tracing::info!("stopped and disabled {AGENT_UNIT}");
        } else if out.code == Some(5)
            || out.stderr.contains("not found")
            || out.stderr.contains("does not exist")
        {
            tracing::info!("{AGENT_UNIT} is not installed; nothing to stop");
        } else {
            anyhow::bail!(
                "`{}` failed with exit code {}: {}",
                stop.display(),
                out.code.map_or("none".into(), |c| c.to_string()),
                out.stderr.trim()
            );
        }
        Ok(())
    }
}

/// The node's document marked `left`.
#[derive(Debug)]
struct MarkLeft {
    target: Target,
    node_id: String,
    timeout: Duration,
}

impl Action for MarkLeft {
    fn summary(&self) -> String {
        format!(
            "mark node {} `left` in {}.{}",
            self.node_id, self.target.database, self.target.collection
        )
    }

    fn apply(&self, _: &ApplyCtx) -> Result<()> {
        let deadlines = Deadlines::within(self.timeout);
        runtime()?
            .block_on(async {
                let reg = Registry::open(&self.target, deadlines).await?;
                let r = reg
                    .set_state(&self.node_id, NodeState::Left, self.timeout)
                    .await;
                reg.close().await;
                r
            })
            .map_err(Into::into)
    }
}
