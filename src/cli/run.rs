//! `ams-agent run`: the reporter daemon (`ams-agent.service`; the loop
//! itself is [`crate::reporter`]), and where every registry command finds
//! the registry ([`RegistryArgs`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::{Context, MongoAuthArgs, parse_duration};
use crate::ams::AmsLayout;
use crate::ams::db::{self, DbKind};
use crate::ams::layout::DEFAULT_HTTP_URL;
use crate::bail_usage;
use crate::cloud::ec2 as imds;
use crate::config::{self, AgentConfig, CONFIG_FILE, DEFAULT_COLLECTION, DEFAULT_DATABASE, Role};
use crate::host::Host;
use crate::mongo::registry::Target;
use crate::reporter::{ReporterSettings, reporter_loop};

/// Where the registry is: `agent.toml`, overridden by flags and environment.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// The agent's configuration file (written by `join`)
    #[arg(long, value_name = "FILE", env = "AMS_AGENT_CONFIG", default_value = CONFIG_FILE)]
    pub config: PathBuf,

    /// MongoDB address or URI; overrides [mongo] uri of the configuration
    #[arg(long, value_name = "DB", env = "AMS_AGENT_MONGO")]
    pub mongo: Option<String>,

    #[command(flatten)]
    pub auth: MongoAuthArgs,

    /// Database of the node registry (default: [mongo] database, else ams_agent)
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,

    /// Collection of the node registry (default: [mongo] collection, else nodes)
    #[arg(long, value_name = "NAME")]
    pub collection: Option<String>,
}

/// The registry target and the configuration file it came from, if any.
pub struct Resolved {
    pub target: Target,
    pub config: Option<AgentConfig>,
}

impl RegistryArgs {
    /// The configuration file: absent is fine, anything unreadable (a
    /// folder, no permission) or malformed is bad input naming `--config`.
    pub fn load_config(&self, host: &Host) -> Result<Option<AgentConfig>> {
        match AgentConfig::load(host, &self.config) {
            Ok(c) => Ok(c),
            // A folder, a FIFO or a huge file in its place: name the flag.
            Err(e) if crate::error::exit_code(&e) == 2 => {
                Err(e.context(format!("--config {}", self.config.display())))
            }
            Err(e) => {
                let cause = e.root_cause().to_string();
                bail_usage!(
                    "--config {}: cannot read it ({cause}); name the agent's configuration file (default {CONFIG_FILE})",
                    self.config.display()
                )
            }
        }
    }

    /// Precedence: `agent.toml`, the credentials file, the environment,
    /// flags. Bad input is a usage error naming the flag or file.
    pub fn resolve(&self, host: &Host) -> Result<Resolved> {
        let config = self.load_config(host)?;
        let creds = self.auth.credentials()?;
        let (uri, password) = match &self.mongo {
            Some(input) => {
                let db = db::classify(input, &creds, host, "--mongo")?;
                if db.kind != DbKind::MongoDb {
                    bail_usage!(
                        "--mongo `{}`: the node registry needs MongoDB, not {}",
                        db.redacted(),
                        db.kind.db_type()
                    );
                }
                let db = self
                    .auth
                    .ask_missing_password(&creds, db, input, host, "--mongo")?;
                let (uri, password) = crate::uri::split_password(&db.url);
                if password.is_none() {
                    if let Some(user) = user_needing_password(&uri) {
                        bail_usage!(
                            "--mongo names the user `{user}` without a password: pass --mongo-password-file <FILE> or set {}",
                            config::PASSWORD_ENV
                        );
                    }
                }
                (uri, password)
            }
            None => {
                let Some(cfg) = &config else {
                    bail_usage!(
                        "no MongoDB to talk to: {} does not exist (run `ams-agent join` first) and --mongo is not given",
                        self.config.display()
                    );
                };
                if creds.user.is_some() {
                    bail_usage!("--mongo-user needs --mongo (the configured URI names its user)");
                }
                let password = match creds.password {
                    Some(p) => Some(p),
                    None => config::runtime_password(host)?,
                };
                if password.is_none() {
                    if let Some(user) = user_needing_password(&cfg.mongo.uri) {
                        bail_usage!(
                            "[mongo] uri of {} names the user `{user}`, but there is no password: {} is missing or empty; run `ams-agent join` again with --mongo-password-file, or set {}",
                            self.config.display(),
                            password_source(),
                            config::PASSWORD_ENV
                        );
                    }
                }
                (cfg.mongo.uri.clone(), password)
            }
        };
        let database = self
            .database
            .clone()
            .or_else(|| config.as_ref().map(|c| c.mongo.database.clone()))
            .unwrap_or_else(|| DEFAULT_DATABASE.into());
        let collection = self
            .collection
            .clone()
            .or_else(|| config.as_ref().map(|c| c.mongo.collection.clone()))
            .unwrap_or_else(|| DEFAULT_COLLECTION.into());
        if let Err(e) = config::validate_names(&database, &collection) {
            bail_usage!("--database/--collection: {e:#}");
        }
        Ok(Resolved {
            target: Target {
                uri,
                password: password.map(crate::secret::Secret::new),
                database,
                collection,
            },
            config,
        })
    }
}

/// The user a URI names when its mechanism needs a password (SCRAM, PLAIN),
/// for the check that one is there before anything is stopped or sent.
fn user_needing_password(uri: &str) -> Option<String> {
    let user = crate::uri::MongoUri::parse(uri)?.user()?.to_string();
    (!user.is_empty() && !crate::uri::mechanism_without_password(uri))
        .then(|| crate::human::escape(&user).into_owned())
}

/// Where the reporter's password comes from, as a message names it.
fn password_source() -> String {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) => format!(
            "{} (systemd's copy of {})",
            std::path::Path::new(&dir)
                .join(config::CREDENTIAL_NAME)
                .display(),
            config::PASSWORD_FILE
        ),
        None => config::PASSWORD_FILE.to_string(),
    }
}

/// A `--timeout`-like flag: a deadline of nothing fails at once with a
/// confusing driver message, so it is refused as bad input.
pub fn validate_timeout(d: Duration, flag: &str) -> Result<()> {
    if d < Duration::from_millis(100) {
        bail_usage!(
            "{flag} {} is too short: it must be greater than 0 (at least 100ms; e.g. 10s)",
            config::show_duration(d)
        );
    }
    Ok(())
}

/// Run the reporter daemon: heartbeat this node to MongoDB until stopped
#[derive(Debug, Args)]
#[command(
    long_about = "Run the reporter daemon (what ams-agent.service runs): every interval, \
    upsert this node's document (health, AMS state) into the registry. MongoDB outages \
    never stop it: it backs off and logs one line when the connection is lost, one when \
    the cause changes (unreachable, credentials refused, …) and one when it is back. \
    On SIGTERM/SIGINT it marks the node `left` and exits 0.\n\n\
    Settings come from /etc/ams-agent/agent.toml, the password from \
    $CREDENTIALS_DIRECTORY/mongo-password or /etc/ams-agent/mongo-password, then the \
    environment, then flags."
)]
pub struct RunArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Heartbeat interval (default: [reporter] interval, else 5s)
    #[arg(long, value_name = "DURATION", env = "AMS_AGENT_INTERVAL", value_parser = parse_duration)]
    pub interval: Option<Duration>,

    /// This node's role (default: [node] role)
    #[arg(long, value_enum)]
    pub role: Option<Role>,

    /// URL that answers while AMS is up
    #[arg(long, hide = true, env = "AMS_AGENT_AMS_URL", default_value = DEFAULT_HTTP_URL, value_parser = super::parse_ams_url)]
    pub ams_url: String,

    /// Instance-metadata endpoint
    #[arg(long, hide = true, env = imds::ENDPOINT_ENV, default_value = imds::DEFAULT_ENDPOINT)]
    pub imds_endpoint: String,

    /// On the load balancer's host: follow the registry into HAProxy or
    /// Nginx (`lb KIND --watch`, settings from AMS_AGENT_LB_*) instead of
    /// reporting a node
    #[arg(long, value_name = "KIND", value_parser = ["haproxy", "nginx"])]
    pub lb: Option<String>,

    /// The Auto Scaling group whose termination lifecycle hook a drain
    /// completes (default: [drain] autoscaling_group, else the instance's)
    #[arg(long, value_name = "NAME", env = "AMS_AGENT_AUTOSCALING_GROUP")]
    pub autoscaling_group: Option<String>,

    /// That lifecycle hook (default: [drain] lifecycle_hook, else the
    /// group's hook for EC2_INSTANCE_TERMINATING)
    #[arg(long, value_name = "NAME", env = "AMS_AGENT_LIFECYCLE_HOOK")]
    pub lifecycle_hook: Option<String>,
}

pub fn run(ctx: &Context, args: RunArgs) -> Result<()> {
    if let Some(kind) = args.lb.as_deref() {
        let kind = if kind == "nginx" {
            crate::lb::Kind::Nginx
        } else {
            crate::lb::Kind::Haproxy
        };
        return super::lb::run_follower(ctx, kind, args.registry);
    }
    let Resolved { target, config } = args.registry.resolve(&ctx.host)?;
    let Some(role) = args.role.or(config.as_ref().map(|c| c.node.role)) else {
        bail_usage!(
            "--role is required when {} does not exist",
            args.registry.config.display()
        );
    };
    let mut reporter = config
        .as_ref()
        .map(|c| c.reporter.clone())
        .unwrap_or_default();
    if let Some(i) = args.interval {
        if let Err(e) = config::validate_interval(i, "--interval") {
            bail_usage!("{e:#}");
        }
        reporter.interval = i;
    }
    for (flag, v) in [
        ("--autoscaling-group", &args.autoscaling_group),
        ("--lifecycle-hook", &args.lifecycle_hook),
    ] {
        if let Some(v) = v {
            if !config::valid_aws_name(v) {
                bail_usage!(
                    "{flag} `{}` is not an Auto Scaling name (1-255 letters, digits and -_./@:)",
                    crate::human::escape(v)
                );
            }
        }
    }
    let layout = AmsLayout::new(config.as_ref().map_or_else(
        || crate::ams::layout::DEFAULT_AMS_HOME.into(),
        |c| c.node.ams_home.clone(),
    ));
    let mut drain = crate::drain::driver::DrainSettings::new(
        &args.ams_url,
        layout.clone(),
        &args.imds_endpoint,
        config.as_ref().map(|c| &c.drain),
    );
    drain.hook.group = args.autoscaling_group.clone().or(drain.hook.group);
    drain.hook.hook = args.lifecycle_hook.clone().or(drain.hook.hook);
    let settings = ReporterSettings {
        target,
        role,
        reporter,
        layout,
        fallback_mode: config.as_ref().and_then(|c| c.node.ams_mode.clone()),
        fallback_group: config.as_ref().and_then(|c| c.node.node_group.clone()),
        ams_url: args.ams_url,
        imds_endpoint: args.imds_endpoint,
        cloud: config
            .as_ref()
            .and_then(|c| c.node.cloud)
            .unwrap_or_default(),
        cloud_origin: match config.as_ref().and_then(|c| c.node.cloud) {
            Some(_) => crate::cloud::detect::Origin::Config(args.registry.config.clone()),
            None => crate::cloud::detect::Origin::Default,
        },
        ttl: config.as_ref().map_or(config::DEFAULT_TTL, |c| c.mongo.ttl),
        node_id: config.as_ref().and_then(|c| c.node.id.clone()),
        private_ip: config.as_ref().and_then(|c| c.node.private_ip),
        drain,
    };
    if ctx.dry_run {
        println!(
            "would report node ({}) to {} {}.{} every {} (dry run: nothing sent)",
            settings.role.name(),
            settings.target.shown(),
            settings.target.database,
            settings.target.collection,
            config::show_duration(settings.reporter.interval)
        );
        return Ok(());
    }
    let rt = crate::host::runtime()?;
    rt.block_on(reporter_loop(&ctx.host, ctx.runner.as_ref(), &settings))
}
