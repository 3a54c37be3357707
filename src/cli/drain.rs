//! `ams-agent drain [--deadline 10m] [--reason …]` and `drain --cancel`:
//! asks the running reporter (`ams-agent.service`, the one process that
//! drains) through `/var/lib/ams-agent/drain-request.json`, which it reads
//! every second, and prints its answer (`drain-answer.json`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;

use super::Context;
use super::run::RegistryArgs;
use crate::bail_usage;
use crate::config::{self, AgentConfig};
use crate::drain::driver::{ANSWER_FILE, Answer};
use crate::drain::state::{self, REQUEST_FILE, Request, RequestAction};
use crate::host::fs::Cap;

/// The default `--deadline`.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);

/// Take this node out of rotation, wait for it to empty, then leave
#[derive(Debug, Args)]
#[command(
    long_about = "Take this node out of rotation, wait for it to empty, then leave.\n\n\
    The running reporter (ams-agent.service) writes `draining` to the registry at once \
    (the balancer stops sending new viewers and publishers), waits until AMS serves no \
    stream and no viewer on this node or the deadline passes, stops AMS, marks the node \
    `left` and removes its row from AMS's clusternode collection. The same happens on \
    an Auto Scaling scale-in or a Spot interruption notice, without this command. \
    --cancel puts a drain started by hand back into rotation. Details: docs/scale-in.md."
)]
pub struct DrainArgs {
    /// Leave by then whatever is still on the node (default: [drain]
    /// deadline of agent.toml, else 10m)
    #[arg(long, value_name = "DURATION", value_parser = super::parse_wait, conflicts_with = "cancel")]
    pub deadline: Option<Duration>,

    /// Why, as the registry and `status` show it
    #[arg(long, value_name = "TEXT", conflicts_with = "cancel")]
    pub reason: Option<String>,

    /// Cancel a drain started by hand (not one the cloud started)
    #[arg(long)]
    pub cancel: bool,

    /// How long to wait for the reporter to take the request
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = super::parse_wait)]
    pub timeout: Duration,

    /// The agent's configuration file (written by `join`)
    #[arg(long, value_name = "FILE", env = "AMS_AGENT_CONFIG", default_value = config::CONFIG_FILE)]
    pub config: std::path::PathBuf,
}

fn request_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("r{nanos:x}-{}", std::process::id())
}

pub fn run(ctx: &Context, args: DrainArgs) -> Result<()> {
    super::run::validate_timeout(args.timeout, "--timeout")?;
    let cfg = RegistryArgs {
        config: args.config.clone(),
        mongo: None,
        auth: super::MongoAuthArgs {
            mongo_user: None,
            mongo_password_file: None,
        },
        database: None,
        collection: None,
    }
    .load_config(&ctx.host)?;
    let Some(cfg): Option<AgentConfig> = cfg else {
        bail_usage!(
            "{} does not exist: this node never joined (run `ams-agent join` first)",
            args.config.display()
        );
    };
    let reason = args
        .reason
        .clone()
        .unwrap_or_else(|| "by hand (ams-agent drain)".into());
    if reason.trim().is_empty() || reason.chars().count() > 200 {
        bail_usage!("--reason must be 1-200 characters");
    }
    if reason.chars().any(char::is_control) {
        bail_usage!("--reason contains a newline or control character");
    }
    let deadline = args
        .deadline
        .or(cfg.drain.deadline)
        .unwrap_or(DEFAULT_DEADLINE);
    if let Err(e) = config::validate_drain_deadline(deadline, "--deadline") {
        bail_usage!("{e:#}");
    }
    let action = if args.cancel {
        RequestAction::Cancel
    } else {
        RequestAction::Drain {
            deadline: deadline.as_secs(),
            reason: reason.clone(),
        }
    };
    if ctx.dry_run {
        match &action {
            RequestAction::Cancel => {
                println!("would ask the reporter to cancel the drain (dry run: nothing sent)")
            }
            RequestAction::Drain { .. } => println!(
                "would ask the reporter to drain node {} (deadline {}, reason: {}) (dry run: nothing sent)",
                cfg.node.id.as_deref().unwrap_or("(this node)"),
                config::show_duration(deadline),
                crate::human::escape(&reason)
            ),
        }
        return Ok(());
    }
    // One request at a time: a second `drain` waits for no one and
    // overwrites nothing (it fails naming the lock's holder).
    let _lock = ctx.mutate()?;
    let req = Request {
        id: request_id(),
        action,
    };
    state::put_request(&ctx.host, &req)?;
    let answered = |answer: Answer| -> Result<()> {
        let text = crate::human::escape(&answer.message).into_owned();
        if answer.ok {
            println!("{text}");
            return Ok(());
        }
        anyhow::bail!("{text}");
    };
    let start = Instant::now();
    loop {
        if let Some(answer) = read_answer(ctx, &req.id) {
            return answered(answer);
        }
        if start.elapsed() >= args.timeout {
            // Not taken: withdraw it, so a reporter started hours later does
            // not act on it.
            if read_request_id(ctx).as_deref() == Some(req.id.as_str()) {
                ctx.host
                    .remove(Path::new(REQUEST_FILE))
                    .with_context(|| format!("withdrawing the request {REQUEST_FILE}"))?;
            }
            // Taken in between: its answer is the truth.
            std::thread::sleep(Duration::from_millis(1200));
            if let Some(answer) = read_answer(ctx, &req.id) {
                return answered(answer);
            }
            anyhow::bail!(
                "the reporter did not take the request within {}: is ams-agent.service running? (systemctl status ams-agent; it drains the node)",
                config::show_duration(args.timeout)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_answer(ctx: &Context, id: &str) -> Option<Answer> {
    let bytes = ctx
        .host
        .read_capped(Path::new(ANSWER_FILE), Cap::CONFIG)
        .ok()??;
    serde_json::from_slice::<Answer>(&bytes)
        .ok()
        .filter(|a| a.id == id)
}

fn read_request_id(ctx: &Context) -> Option<String> {
    let bytes = ctx
        .host
        .read_capped(Path::new(REQUEST_FILE), Cap::CONFIG)
        .ok()??;
    serde_json::from_slice::<Request>(&bytes).ok().map(|r| r.id)
}
