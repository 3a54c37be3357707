//! `ams-agent mode cluster <DB>` / `mode standalone [<DB>]`: the
//! `change_server_mode.sh` replacement.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{Context, MongoAuthArgs, parse_node_ip};
use crate::agent_service;
use crate::ams::AmsLayout;
use crate::ams::db::{self, DbKind, DbUrl};
use crate::ams::layout::{DEFAULT_AMS_HOME, DEFAULT_HTTP_URL};
use crate::ams::mode::{self, Mode, ModeSwitch};
use crate::config::{AgentConfig, CONFIG_FILE};
use crate::host::Host;
use crate::mongo::error::RegistryError;
use crate::mongo::registry::{Deadlines, Registry, Target};
use crate::plan::{ApplyCtx, FileChange, Plan, Step};

/// Switch Ant Media Server between standalone and cluster mode
#[derive(Debug, Args)]
#[command(
    long_about = "Switch Ant Media Server between standalone and cluster mode.\n\n\
    Updates conf/red5.properties, the cluster blocks of conf/jee-container.xml, every \
    application's WEB-INF/red5-web.properties and /etc/hosts together (a crash leaves \
    them all old or all new), then restarts AMS and waits until it answers. On a joined \
    node, agent.toml's recorded mode and node group change with them and a running \
    reporter is restarted. Running it again changes nothing.\n\n\
    DB forms: 10.0.1.5, 10.0.1.5:27018, [fd00::5]:27017, mongo.internal, h1,h2:27018, \
    mongodb://…, mongodb+srv://…, redis://…, rediss://…, /path/to/redis.yaml"
)]
pub struct ModeArgs {
    #[command(subcommand)]
    pub target: ModeTarget,
}

#[derive(Debug, Subcommand)]
pub enum ModeTarget {
    /// Cluster mode: every node shares the database DB
    Cluster {
        /// MongoDB address or URI, or a Redis URI or YAML file
        #[arg(value_name = "DB")]
        db: String,
        #[command(flatten)]
        opts: SwitchOpts,
        /// The old `<IP> <USER> <PASS>` form, refused with advice
        #[arg(hide = true, num_args = 0..)]
        legacy: Vec<String>,
    },
    /// Standalone mode: the embedded database, or DB when given
    Standalone {
        /// MongoDB address or URI, or a Redis URI or YAML file (default: embedded MapDB)
        #[arg(value_name = "DB")]
        db: Option<String>,
        #[command(flatten)]
        opts: SwitchOpts,
    },
}

#[derive(Debug, Clone, Args)]
pub struct SwitchOpts {
    /// Ant Media Server install folder
    #[arg(long, value_name = "DIR", default_value = DEFAULT_AMS_HOME)]
    pub ams_home: PathBuf,

    #[command(flatten)]
    pub auth: MongoAuthArgs,

    /// This node's private IPv4 for /etc/hosts (default: the default route's)
    #[arg(long, value_name = "IPV4", value_parser = parse_node_ip)]
    pub ip: Option<Ipv4Addr>,

    /// Switch the files only; do not restart AMS
    #[arg(long)]
    pub no_restart: bool,

    /// How long to wait for the MongoDB server to answer before switching
    /// (AMS stops at start-up when it cannot reach its database)
    #[arg(long, alias = "db-timeout", value_name = "DURATION", default_value = "30s", value_parser = super::parse_wait)]
    pub mongo_wait: Duration,

    /// Switch even if the MongoDB server does not answer now
    #[arg(long)]
    pub skip_db_check: bool,

    /// How long to wait for AMS to answer after the restart
    #[arg(long, alias = "wait", value_name = "DURATION", default_value = "3m", value_parser = super::parse_wait)]
    pub ams_wait: Duration,

    /// URL that answers once AMS is up
    #[arg(long, hide = true, env = "AMS_AGENT_AMS_URL", default_value = DEFAULT_HTTP_URL, value_parser = super::parse_ams_url)]
    pub ams_url: String,
}

impl SwitchOpts {
    /// The switch request these options describe, validated.
    pub fn switch(&self, mode: Mode, db: DbUrl) -> ModeSwitch {
        ModeSwitch {
            mode,
            db,
            layout: AmsLayout::new(&self.ams_home),
            ip: self.ip,
            restart: (!self.no_restart).then(|| mode::Restart {
                url: self.ams_url.clone(),
                ..mode::default_restart(self.ams_wait)
            }),
        }
    }
}

/// agent.toml's recorded mode and node group as the switch leaves AMS, when
/// this node joined (agent.toml names this install): the change to commit
/// with AMS's files, and the reporter steps it owes (a running reporter is
/// restarted so its fallback values are the new ones).
fn agent_record(host: &Host, switch: &ModeSwitch) -> Result<(Vec<FileChange>, Vec<Step>)> {
    let path = Path::new(CONFIG_FILE);
    let config = match AgentConfig::load(host, path) {
        Ok(Some(c)) if c.node.ams_home == switch.layout.home => c,
        Ok(_) => return Ok((Vec::new(), Vec::new())),
        Err(e) => {
            tracing::warn!(
                "not recording the new mode in {CONFIG_FILE}, which cannot be used: {e:#}"
            );
            return Ok((Vec::new(), Vec::new()));
        }
    };
    let mut recorded = config.clone();
    recorded.node.ams_mode = Some(switch.mode.name().to_string());
    recorded.node.node_group = mode::read_node_group(host, &switch.layout)?;
    let mut changes = Vec::new();
    if recorded != config {
        changes.push(FileChange::write(
            host,
            path,
            recorded.to_toml().into_bytes(),
            0o644,
        )?);
    }
    let (owed, marker) = agent_service::owed(host, &changes.iter().collect::<Vec<_>>(), &[]);
    changes.extend(marker);
    Ok((
        changes,
        agent_service::steps(owed, agent_service::Start::IfRunning),
    ))
}

pub fn run(ctx: &Context, args: ModeArgs) -> Result<()> {
    let (mode, db, opts) = match args.target {
        ModeTarget::Cluster { legacy, .. } if !legacy.is_empty() => {
            // Never echo these arguments: the third one is a password.
            crate::bail_usage!(
                "`mode cluster <DB> <USER> <PASSWORD>` is not supported (a password on the command line shows in `ps` and logs); use --mongo-user and --mongo-password-file, or AMS_AGENT_MONGO_PASSWORD"
            )
        }
        ModeTarget::Cluster { db, opts, .. } => (Mode::Cluster, Some(db), opts),
        ModeTarget::Standalone { db, opts } => (Mode::Standalone, db, opts),
    };
    let creds = opts.auth.credentials()?;
    let db_input = db;
    let db = match &db_input {
        Some(db) => db::classify(db, &creds, &ctx.host, "DB")?,
        None => {
            if creds.user.is_some() || creds.password.is_some() {
                crate::bail_usage!(
                    "{} given, but no DB argument to use them with",
                    creds.flags()
                );
            }
            DbUrl::mapdb()
        }
    };
    if opts.ams_wait.is_zero() {
        crate::bail_usage!("--ams-wait must be longer than 0s");
    }
    if opts.mongo_wait.is_zero() {
        crate::bail_usage!("--mongo-wait must be longer than 0s");
    }
    // Bad input (a wrong --ams-home) is reported before the host lock is
    // even created.
    AmsLayout::new(&opts.ams_home).check(&ctx.host)?;
    let db = match &db_input {
        Some(input) => opts
            .auth
            .ask_missing_password(&creds, db, input, &ctx.host, "DB")?,
        None => db,
    };
    let check = db.kind == DbKind::MongoDb && !opts.skip_db_check;
    let timeout = opts.mongo_wait;
    let switch = opts.switch(mode, db);
    // The plan (every local check) first, so bad input is reported at once
    // with exit code 2; the network check only when there is work to do.
    // Held until the switch (restart and wait included) is done.
    let _lock = ctx.mutate()?;
    let (also, reporter) = agent_record(&ctx.host, &switch)?;
    switch_mode_checked(ctx, &switch, (also, reporter), |plan| {
        if check && !plan.is_empty() {
            check_mongodb(&switch.db, timeout)?;
        }
        Ok(())
    })
}

/// Refuses to point AMS at a MongoDB server that does not answer (or does
/// not accept the credentials): the shell switched anyway, and AMS then
/// stopped at start-up.
fn check_mongodb(db: &DbUrl, timeout: Duration) -> Result<()> {
    let (uri, password) = crate::uri::split_password(&db.url);
    let target = Target {
        uri,
        password: password.map(crate::secret::Secret::new),
        database: "admin".into(),
        collection: "unused".into(),
    };
    let deadlines = Deadlines::within(timeout);
    tracing::info!("checking that MongoDB at {} answers", db.redacted());
    let checked: std::result::Result<(), RegistryError> = crate::host::runtime()?.block_on(async {
        let registry = Registry::open(&target, deadlines).await?;
        let pinged = registry.ping().await;
        registry.close().await;
        pinged
    });
    checked.map_err(|e| {
        anyhow::anyhow!(
            "checking MongoDB before switching: {e}; nothing was changed (start MongoDB, fix the address or credentials, or pass --skip-db-check to switch anyway)"
        )
    })
}

/// Plans and applies (or prints) a mode switch; shared with `join`. The
/// caller holds the host lock ([`Context::mutate`]).
pub fn switch_mode(ctx: &Context, switch: &ModeSwitch) -> Result<()> {
    switch_mode_checked(ctx, switch, (Vec::new(), Vec::new()), |_| Ok(()))
}

/// [`switch_mode`], with files that land with AMS's and steps after them
/// (the agent's own, see [`agent_record`]), and `before_apply` run on the
/// plan before anything is changed (not in `--dry-run`).
fn switch_mode_checked(
    ctx: &Context,
    switch: &ModeSwitch,
    (also, after): (Vec<FileChange>, Vec<Step>),
    before_apply: impl FnOnce(&Plan) -> Result<()>,
) -> Result<()> {
    let mut plan = mode::plan_with(&ctx.host, switch, also)?;
    plan.steps.extend(after);
    if !ctx.dry_run {
        before_apply(&plan)?;
    }
    print_or_apply(ctx, &plan)?;
    if !plan.is_empty() && !ctx.dry_run {
        tracing::info!(
            "Ant Media Server is in {} mode ({})",
            switch.mode.name(),
            switch.db.redacted()
        );
    }
    Ok(())
}

/// `--dry-run`: print the plan. Otherwise apply it (an empty plan is
/// reported as already done).
pub fn print_or_apply(ctx: &Context, plan: &Plan) -> Result<()> {
    if ctx.dry_run || plan.is_empty() {
        print!("{}", plan.render());
        return Ok(());
    }
    plan.apply(&ApplyCtx {
        host: &ctx.host,
        runner: ctx.runner.as_ref(),
        progress: false,
    })
}
