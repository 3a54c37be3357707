//! `ams-agent join --mongo <ip|host|URI>`: the EC2 user-data entry point.
//!
//! Waits for MongoDB (it is often still booting), registers the node as
//! `joining`, switches AMS to cluster mode (the `mode` plan, with the
//! instance's private IPv4 in /etc/hosts), restarts AMS and waits for it,
//! writes `/etc/ams-agent/agent.toml` and the 0600 password file, enables
//! the reporter, marks the node `ready`. Idempotent per instance. A failed
//! step is recorded (in MongoDB when reachable, and locally) and reported in
//! one line naming the step; exit 1.

use std::io::{BufRead, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;

use super::{Context, MongoAuthArgs, parse_duration};
use crate::agent_service;
use crate::ams::AmsLayout;
use crate::ams::db::{self, DbKind, DbUrl};
use crate::ams::layout::{DEFAULT_AMS_HOME, DEFAULT_HTTP_URL};
use crate::ams::mode::{self, Mode, ModeSwitch};
use crate::bail_usage;
use crate::cloud::detect::{Endpoints, Origin};
use crate::cloud::{CloudChoice, ec2 as imds};
use crate::config::{
    self, AgentConfig, CONFIG_FILE, DEFAULT_COLLECTION, DEFAULT_DATABASE, JOIN_RECORD, JoinRecord,
    LAST_ERROR, LastErrorRecord, MongoSection, NodeSection, PASSWORD_FILE, ReporterSection, Role,
};
use crate::host::fs::private_meta;
use crate::host::runtime;
use crate::host::{Host, tty};
use crate::mongo::error::{Failure, RegistryError};
use crate::mongo::registry::{Deadlines, LastError, NodeState, Registry, Target};
use crate::node::health::CpuSampler;
use crate::node::identity::{self, Lookup, NodeIdentity};
use crate::plan::{Action, ApplyCtx, FileChange, Plan, Step};
use crate::reporter::{Gatherer, ReporterSettings, jitter};

pub const AGENT_UNIT: &str = crate::agent_service::UNIT;

/// Join this node to the AMS cluster (the user-data entry point)
#[derive(Debug, Args)]
#[command(
    long_about = "Join this node to the AMS cluster: the user-data entry point (EC2, Azure, GCP, \
    DigitalOcean, Hetzner, OpenStack, Oracle, or no cloud).\n\n\
    Identifies the node from its cloud's instance metadata (the cloud from --cloud, else \
    detected from DMI; without metadata /etc/machine-id and the route to MongoDB; see \
    `ams-agent metadata`). \
    Waits for MongoDB (with backoff, up to --mongo-wait), registers the node as `joining`, \
    switches AMS to cluster mode (the instance's private IPv4 goes into /etc/hosts), \
    restarts AMS and waits for it, writes /etc/ams-agent/agent.toml, the 0600 password \
    file and the reporter's drop-in (/etc/systemd/system/ams-agent.service.d/10-ams-group.conf: \
    the AMS install's group, so the reporter reads the files that hold the password), \
    enables and starts ams-agent.service, marks the node `ready`.\n\n\
    Running it again on the same instance changes nothing; with new settings (password, \
    --mongo, user, interval) it restarts the running reporter so they take effect. Without \
    a terminal it never asks: a missing value is an error naming the flag (exit code 2)."
)]
pub struct JoinArgs {
    /// MongoDB: 10.0.1.5, host[:port], h1,h2:27018, mongodb://…, mongodb+srv://…
    #[arg(long, value_name = "DB")]
    pub mongo: Option<String>,

    #[command(flatten)]
    pub auth: MongoAuthArgs,

    /// This node's role in the cluster
    #[arg(long, value_enum, default_value = "origin")]
    pub role: Role,

    /// Ant Media Server install folder
    #[arg(long, value_name = "DIR", default_value = DEFAULT_AMS_HOME)]
    pub ams_home: PathBuf,

    /// How long to wait for MongoDB to accept us (it may still be booting)
    #[arg(long, alias = "wait", value_name = "DURATION", default_value = "10m", value_parser = super::parse_wait)]
    pub mongo_wait: Duration,

    /// How long to wait for AMS to answer after its restart
    #[arg(long, alias = "ams-timeout", value_name = "DURATION", default_value = "3m", value_parser = super::parse_wait)]
    pub ams_wait: Duration,

    /// Switch AMS's files only; do not restart it
    #[arg(long)]
    pub no_restart: bool,

    /// This node's private IPv4 for /etc/hosts (default: from the instance
    /// metadata, else the source address of the route to MongoDB, else the
    /// default route's)
    #[arg(long, value_name = "IPV4", value_parser = super::parse_node_ip)]
    pub ip: Option<Ipv4Addr>,

    /// The cloud whose instance metadata to read (default: [node] cloud of
    /// agent.toml, else detected from DMI); `none` probes nothing. Stored
    /// in agent.toml
    #[arg(long, value_name = "NAME", value_parser = super::cloud_parser())]
    pub cloud: Option<CloudChoice>,

    /// AMS node group of this node (`nodeGroup` of conf/red5.properties,
    /// for clusters that span regions), set with the cluster mode and
    /// recorded in the registry (default: keep the file's)
    #[arg(long, value_name = "NAME", value_parser = super::parse_node_group)]
    pub node_group: Option<String>,

    /// Database of the node registry
    #[arg(long, value_name = "NAME", default_value = DEFAULT_DATABASE)]
    pub database: String,

    /// Collection of the node registry
    #[arg(long, value_name = "NAME", default_value = DEFAULT_COLLECTION)]
    pub collection: String,

    /// Heartbeat interval of the reporter
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Remove a node's document this long after its last heartbeat (TTL index)
    #[arg(long, value_name = "DURATION", default_value = "7days", value_parser = parse_duration)]
    pub ttl: Duration,

    /// URL that answers once AMS is up
    #[arg(long, hide = true, env = "AMS_AGENT_AMS_URL", default_value = DEFAULT_HTTP_URL, value_parser = super::parse_ams_url)]
    pub ams_url: String,

    /// Instance-metadata endpoint
    #[arg(long, hide = true, env = imds::ENDPOINT_ENV, default_value = imds::DEFAULT_ENDPOINT)]
    pub imds_endpoint: String,

    /// Read the MongoDB password from this SSM Parameter Store parameter
    /// (a SecureString, decrypted; with the instance role, no aws CLI)
    #[arg(long, value_name = "NAME", conflicts_with = "mongo_password_file")]
    pub mongo_password_ssm: Option<String>,

    /// The Auto Scaling group whose termination lifecycle hook the drain
    /// completes (default: the instance's, from DescribeAutoScalingInstances);
    /// written to agent.toml
    #[arg(long, value_name = "NAME", value_parser = parse_aws_name)]
    pub autoscaling_group: Option<String>,

    /// That lifecycle hook (default: the group's hook for
    /// EC2_INSTANCE_TERMINATING); written to agent.toml
    #[arg(long, value_name = "NAME", value_parser = parse_aws_name)]
    pub lifecycle_hook: Option<String>,
}

fn parse_aws_name(s: &str) -> std::result::Result<String, String> {
    if config::valid_aws_name(s) {
        Ok(s.to_string())
    } else {
        Err("expected 1-255 letters, digits and -_./@:".into())
    }
}

/// The MongoDB argument: the flag, else a question on a terminal, else a
/// usage error naming the flag (never a prompt without a terminal).
fn mongo_input(args: &JoinArgs) -> Result<String> {
    if let Some(m) = &args.mongo {
        return Ok(m.clone());
    }
    if !tty::can_prompt() {
        bail_usage!(
            "--mongo is required (no terminal to ask on): pass --mongo <ip|host|mongodb://URI>"
        );
    }
    eprint!("MongoDB address (IP, host name or mongodb:// URI): ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the MongoDB address")?;
    let line = line.trim().to_string();
    if line.is_empty() {
        bail_usage!("no MongoDB address given; pass --mongo");
    }
    Ok(line)
}

/// Validated input: everything a join needs, checked before anything is touched.
struct Request {
    db: DbUrl,
    target: Target,
    config: AgentConfig,
    layout: AmsLayout,
}

fn validate(ctx: &Context, args: &JoinArgs) -> Result<Request> {
    let input = mongo_input(args)?;
    let mut creds = args.auth.credentials()?;
    if let Some(name) = &args.mongo_password_ssm {
        if creds.password.is_some() {
            bail_usage!(
                "--mongo-password-ssm and {} both give the MongoDB password; keep one",
                creds.password_from
            );
        }
        creds.password = Some(
            ssm_password(&args.imds_endpoint, name, "--mongo-password-ssm")?
                .expose()
                .to_string(),
        );
        creds.password_from = "--mongo-password-ssm";
    }
    let db = db::classify(&input, &creds, &ctx.host, "--mongo")?;
    if db.kind != DbKind::MongoDb {
        bail_usage!(
            "--mongo `{}`: join needs MongoDB (the node registry lives there), not {}",
            db.redacted(),
            db.kind.db_type()
        );
    }
    if let Err(e) = config::validate_names(&args.database, &args.collection) {
        bail_usage!("--database/--collection: {e:#}");
    }
    if let Err(e) = config::validate_interval(args.interval, "--interval") {
        bail_usage!("{e:#}");
    }
    if let Err(e) = config::validate_ttl(args.ttl, "--ttl") {
        bail_usage!("{e:#}");
    }
    if args.mongo_wait.is_zero() {
        bail_usage!("--mongo-wait must be longer than 0s");
    }
    if args.ams_wait.is_zero() {
        bail_usage!("--ams-wait must be longer than 0s (e.g. 3m)");
    }
    let layout = AmsLayout::new(&args.ams_home);
    layout.check(&ctx.host)?;
    // `--cloud`, else the choice an earlier join stored (a re-join keeps it).
    let cloud = match args.cloud {
        Some(CloudChoice::Auto) => None,
        Some(c) => Some(c),
        None => AgentConfig::load(&ctx.host, Path::new(CONFIG_FILE))
            .ok()
            .flatten()
            .and_then(|c| c.node.cloud),
    };
    let db = args
        .auth
        .ask_missing_password(&creds, db, &input, &ctx.host, "--mongo")?;
    let (uri, password) = crate::uri::split_password(&db.url);
    let config = AgentConfig {
        mongo: MongoSection {
            uri: uri.clone(),
            database: args.database.clone(),
            collection: args.collection.clone(),
            ttl: args.ttl,
        },
        node: NodeSection {
            // Filled in once the node is identified.
            id: None,
            role: args.role,
            private_ip: args.ip,
            ams_home: args.ams_home.clone(),
            ams_mode: None,
            node_group: None,
            cloud,
        },
        reporter: ReporterSection {
            interval: args.interval,
            ..ReporterSection::default()
        },
        drain: config::DrainSection {
            autoscaling_group: args.autoscaling_group.clone(),
            lifecycle_hook: args.lifecycle_hook.clone(),
            ..config::DrainSection::default()
        },
    };
    Ok(Request {
        target: Target {
            uri,
            password: password.map(crate::secret::Secret::new),
            database: args.database.clone(),
            collection: args.collection.clone(),
        },
        db,
        config,
        layout,
    })
}

/// A password from SSM Parameter Store (`flag NAME`), with the instance
/// role. Waits (up to a minute) while the metadata or SSM is unavailable or
/// throttles; a name that is not one, or a parameter that does not exist,
/// is bad input naming the flag.
pub fn ssm_password(imds_endpoint: &str, name: &str, flag: &str) -> Result<crate::secret::Secret> {
    use crate::cloud::aws::{Aws, ErrorKind};
    if !crate::cloud::aws::valid_parameter_name(name) {
        bail_usage!(
            "{flag} `{}` is not an SSM parameter name (1-2048 letters, digits and _.-/, or its ARN)",
            crate::human::escape(name)
        );
    }
    let rt = runtime()?;
    let imds = std::sync::Arc::new(imds::Imds::new(imds_endpoint, imds::Budget::default())?);
    let endpoint = crate::cloud::aws::endpoint_from_env();
    let limit = Duration::from_secs(60);
    let start = Instant::now();
    let mut pause = Duration::from_millis(500);
    rt.block_on(async {
        let mut aws: Option<Aws> = None;
        loop {
            let attempt = async {
                if aws.is_none() {
                    aws = Some(Aws::new(imds.clone(), endpoint.clone()).await?);
                }
                aws.as_ref().expect("made above").ssm_parameter(name).await
            };
            match attempt.await {
                Ok(p) => {
                    tracing::info!("read the password of {flag} from SSM parameter {name}");
                    return Ok(p);
                }
                Err(e) if e.kind == ErrorKind::NotFound => {
                    bail_usage!("{flag} {name}: {e}")
                }
                Err(e) if e.transient() && start.elapsed() + pause < limit => {
                    tracing::debug!("SSM GetParameter {name}: {e}; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(8));
                }
                Err(e) => {
                    let hint = match e.kind {
                        ErrorKind::Denied => "; the instance role needs ssm:GetParameter on it (and kms:Decrypt for a customer key; docs/scale-in.md)",
                        ErrorKind::Credentials => "; check the instance profile",
                        _ => "",
                    };
                    anyhow::bail!("{flag} {name}: reading the SSM parameter: {e}{hint}")
                }
            }
        }
    })
}

/// True when this very instance already joined with these settings. The
/// join record is written last (after the node is marked ready), so a join
/// that failed half-way is never taken for a finished one.
fn already_joined(
    host: &Host,
    node: &NodeIdentity,
    req: &Request,
    restart: bool,
    group: Option<&str>,
) -> bool {
    let Some(rec) = JoinRecord::load(host) else {
        return false;
    };
    // A node group asked for that AMS's file does not hold yet.
    if let Some(g) = group {
        if mode::read_node_group(host, &req.layout)
            .ok()
            .flatten()
            .as_deref()
            != Some(g)
        {
            return false;
        }
    }
    // Switched files still waiting for their AMS restart (a crash).
    if restart && host.exists(&mode::restart_marker()) {
        return false;
    }
    let Ok(Some(mut on_disk)) = AgentConfig::load(host, Path::new(CONFIG_FILE)) else {
        return false;
    };
    on_disk.node.ams_mode = None;
    on_disk.node.node_group = None;
    // Same content and still private: a file someone made readable to
    // others is rewritten 0600 by running join again.
    let password_same = host.read_optional(Path::new(PASSWORD_FILE)).ok().flatten()
        == Some(config::password_file_content(
            req.target.password.as_ref().map(|p| p.expose()),
        ))
        && host
            .meta(Path::new(PASSWORD_FILE))
            .ok()
            .flatten()
            .is_some_and(|m| m.mode & 0o077 == 0);
    // The drop-in as the install needs it, and no restart still owed.
    let unit_same = crate::agent_service::drop_in_change(host, &req.layout)
        .is_ok_and(|c| c.is_noop())
        && !host.exists(&crate::agent_service::restart_marker());
    rec.node_id == node.id
        && unit_same
        && rec.mongo == req.target.uri
        && rec.database == req.target.database
        && rec.collection == req.target.collection
        && rec.role == req.config.node.role
        && on_disk == req.config
        && password_same
        && crate::drain::state::load(host, &node.id).is_none()
}

fn file_change(
    host: &Host,
    path: &str,
    after: Vec<u8>,
    mode: u32,
    internal: bool,
) -> Result<FileChange> {
    Ok(FileChange {
        internal,
        ..FileChange::write(host, Path::new(path), after, mode)?
    })
}

/// The record that this instance joined: written last, once the node is
/// marked ready.
fn join_record(req: &Request, node: &NodeIdentity) -> JoinRecord {
    JoinRecord {
        node_id: node.id.clone(),
        mongo: req.target.uri.clone(),
        database: req.target.database.clone(),
        collection: req.target.collection.clone(),
        role: req.config.node.role,
        joined_at: config::unix_now(),
    }
}

/// The agent's own files and the reporter service, as a plan.
fn agent_plan(host: &Host, req: &Request, node: &NodeIdentity) -> Result<Plan> {
    let mut plan = Plan::new(format!("configure the reporter of node {}", node.id));
    let config = [
        file_change(
            host,
            CONFIG_FILE,
            req.config.to_toml().into_bytes(),
            0o644,
            false,
        )?,
        file_change(
            host,
            PASSWORD_FILE,
            config::password_file_content(req.target.password.as_ref().map(|p| p.expose())),
            0o600,
            false,
        )?,
    ];
    // The group that lets the reporter read the AMS files, and what a
    // reporter already running with the old files is owed: systemd's
    // reload, a restart (LoadCredential= copies the password at start).
    let drop_in = agent_service::drop_in_change(host, &req.layout)?;
    let (owed, marker) = agent_service::owed(host, &config.iter().collect::<Vec<_>>(), &[&drop_in]);
    let mut changes: Vec<FileChange> = config.into_iter().collect();
    changes.push(drop_in);
    changes.extend(marker);
    plan.files("write the agent configuration", changes);
    plan.steps
        .extend(agent_service::steps(owed, agent_service::Start::Always));
    Ok(plan)
}

/// Waits for MongoDB: exponential backoff with jitter between attempts,
/// each attempt a `ping` during which the driver re-checks the server every
/// 500 ms, up to `wait` in all. Fails at once on errors waiting cannot fix
/// (authentication, TLS, a bad URI).
pub async fn wait_for_mongo(target: &Target, wait: Duration) -> Result<Registry, RegistryError> {
    let start = Instant::now();
    let shown = target.shown();
    let mut backoff = Duration::from_millis(100);
    let mut last_reason: Option<String> = None;
    // The last error that named a cause ("Connection refused", a DNS
    // failure). A final attempt cut short by the overall deadline only says
    // "did not answer", which would hide why the server was unreachable.
    let mut last_cause: Option<RegistryError> = None;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        // Every deadline of an attempt is clamped to the time left, so the
        // whole wait never overruns `wait` (a server that stalls on `ping`
        // included).
        let left = wait
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(100));
        // Server selection ends a little before the attempt's own deadline
        // so the driver can report its cause (refused, DNS) first.
        let select = left
            .mul_f32(0.8)
            .clamp(Duration::from_millis(200), Duration::from_secs(2))
            .min(left);
        let deadlines = Deadlines {
            connect: Duration::from_secs(3).min(left),
            select,
            op: (select + Duration::from_secs(5)).min(left),
        };
        let result = match Registry::open(target, deadlines).await {
            Ok(reg) => match reg.ping().await {
                Ok(()) => Ok(reg),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let err = match result {
            Ok(reg) => {
                if last_reason.is_some() {
                    tracing::info!(
                        "MongoDB at {shown} answered after {:.1}s ({attempts} attempts)",
                        start.elapsed().as_secs_f64()
                    );
                }
                return Ok(reg);
            }
            Err(e) => e,
        };
        if !err.transient() {
            return Err(err);
        }
        if err.failure != Failure::Timeout {
            last_cause = Some(err.clone());
        }
        if start.elapsed() >= wait {
            let telling = match (&err.failure, &last_cause) {
                (Failure::Timeout, Some(cause)) => cause,
                _ => &err,
            };
            return Err(RegistryError::new(
                telling.failure,
                format!(
                    "MongoDB did not become reachable within {} ({attempts} attempts); last error: {telling}",
                    config::show_duration(wait)
                ),
            ));
        }
        let reason = format!("{:?}", err.failure);
        if last_reason.as_deref() != Some(reason.as_str()) {
            tracing::info!(
                "waiting up to {} for MongoDB: {err}",
                config::show_duration(wait)
            );
            last_reason = Some(reason);
        } else {
            tracing::debug!("still waiting for MongoDB: {err}");
        }
        // Full jitter in [backoff/2, backoff], capped at 1 s: many nodes
        // booting together do not hit a starting server in lockstep, and a
        // server that comes up is noticed within about a second.
        let pause = backoff / 2 + jitter(backoff / 2);
        tokio::time::sleep(pause.min(wait.saturating_sub(start.elapsed()))).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

pub fn run(ctx: &Context, args: JoinArgs) -> Result<()> {
    let started = Instant::now();
    let mut req = validate(ctx, &args)?;
    // One mutating run at a time, for the whole join; a change a crash
    // interrupted is completed first (also when this node turns out to be
    // joined already).
    let _lock = ctx.mutate()?;
    let rt = runtime()?;
    // The id an earlier join stored: kept through a metadata blip.
    let stored = AgentConfig::load(&ctx.host, Path::new(CONFIG_FILE))
        .ok()
        .flatten()
        .and_then(|c| c.node.id);
    let lookup = Lookup {
        choice: req.config.node.cloud.unwrap_or_default(),
        origin: match (args.cloud, req.config.node.cloud) {
            (Some(_), _) => Origin::Flag,
            (None, Some(_)) => Origin::Config(CONFIG_FILE.into()),
            (None, None) => Origin::Default,
        },
        endpoints: Endpoints::from_env().with_ec2(&args.imds_endpoint),
        mongo_uri: Some(req.target.uri.clone()),
        pinned_ip: args.ip.map(|ip| (ip, "--ip")),
        announce: true,
    };
    let resolved = rt.block_on(identity::resolve_stored(
        &ctx.host,
        &lookup,
        stored.as_deref(),
    ));
    let node = match resolved {
        Ok(n) => n,
        Err(e) => {
            let step = "identify this node";
            let message = format!("{e:#}");
            if !ctx.dry_run {
                config::record_last_error(
                    &ctx.host,
                    &LastErrorRecord {
                        command: "join".into(),
                        step: step.into(),
                        message: message.clone(),
                        node_id: None,
                        at: config::unix_now(),
                    },
                );
            }
            anyhow::bail!("join failed at step `{step}`: {message}");
        }
    };
    // `--ip`, else the metadata's, else the route's to MongoDB, else the
    // default route's: the address pinned in /etc/hosts is the one the
    // registry shows.
    req.config.node.id = Some(node.id.clone());
    let switch = ModeSwitch {
        mode: Mode::Cluster,
        db: req.db.clone(),
        layout: req.layout.clone(),
        ip: node.private_ip,
        restart: (!args.no_restart).then(|| mode::Restart {
            url: args.ams_url.clone(),
            ..mode::default_restart(args.ams_wait)
        }),
    };

    if already_joined(
        &ctx.host,
        &node,
        &req,
        switch.restart.is_some(),
        args.node_group.as_deref(),
    ) {
        println!(
            "node {} already joined {} as {}; nothing to do",
            node.id,
            req.target.shown(),
            req.config.node.role.name()
        );
        return Ok(());
    }

    let settings = ReporterSettings {
        target: req.target.clone(),
        role: req.config.node.role,
        reporter: req.config.reporter.clone(),
        layout: req.layout.clone(),
        fallback_mode: None,
        fallback_group: None,
        ams_url: args.ams_url.clone(),
        imds_endpoint: args.imds_endpoint.clone(),
        cloud: req.config.node.cloud.unwrap_or_default(),
        cloud_origin: lookup.origin.clone(),
        ttl: args.ttl,
        node_id: Some(node.id.clone()),
        private_ip: args.ip,
        drain: crate::drain::driver::DrainSettings::new(
            &args.ams_url,
            req.layout.clone(),
            &args.imds_endpoint,
            Some(&req.config.drain),
        ),
    };
    let session = Arc::new(JoinSession {
        rt,
        settings,
        node: node.clone(),
        mongo_wait: args.mongo_wait,
        ttl: args.ttl,
        state: Mutex::new(SessionState::default()),
    });
    let j = Joiner {
        ctx,
        session: &session,
    };
    // Every local check (the AMS files, the agent's files) is made here,
    // before anything is sent to MongoDB: a plan that cannot be made must
    // not leave a stray `joining` document behind.
    // A node that is draining is being taken away: joining again (a
    // re-run of user-data, an Ansible pass) must not put it back into
    // rotation behind the cloud's back.
    let drained = crate::drain::state::load(&ctx.host, &node.id);
    if let Some(s) = drained
        .as_ref()
        .filter(|s| s.phase == crate::drain::state::Phase::Draining)
    {
        anyhow::bail!(
            "node {} is draining ({}: {}; it leaves at the latest at {}): join refused; wait for it to leave, or cancel a drain by hand with `ams-agent drain --cancel`",
            node.id,
            s.trigger.name(),
            crate::human::escape(&s.reason),
            humantime::format_rfc3339_seconds(s.deadline_time())
        );
    }
    // A node drained earlier joins again: its drain is over, and its
    // reporter (idle since it left) is owed a restart, which the plan
    // reads from the marker. A plan that cannot be made takes the marker
    // back: every file as it was.
    let marker = crate::agent_service::restart_marker();
    let new_marker = !ctx.dry_run && drained.is_some() && !ctx.host.exists(&marker);
    if new_marker {
        ctx.host.write_atomic(
            &marker,
            b"the node was drained: a restart is owed\n",
            private_meta(0o600),
        )?;
    }
    let (plan, stages) = match j.plan(&req, &switch, args.node_group.clone()) {
        Ok(p) => p,
        Err(e) => {
            if new_marker {
                if let Err(r) = ctx.host.remove(&marker) {
                    tracing::warn!("taking back {}: {r:#}", marker.display());
                }
            }
            return Err(e);
        }
    };
    if ctx.dry_run {
        print!("{}", plan.render());
        println!("(dry run: nothing was changed and nothing was sent to MongoDB)");
        return Ok(());
    }
    if drained.is_some() {
        crate::drain::state::save(&ctx.host, None)?;
        tracing::info!("this node was drained earlier; it joins again");
    }
    tracing::info!(
        "joining node {} ({}) to MongoDB at {}",
        node.id,
        req.config.node.role.name(),
        req.target.shown()
    );
    let applied = plan.apply_indexed(&ApplyCtx {
        host: &ctx.host,
        runner: ctx.runner.as_ref(),
        progress: false,
    });
    if let Err((i, e)) = applied {
        return Err(j.fail(stages[i], e));
    }
    if let Some(reg) = j.session.state.lock().expect("join state").registry.take() {
        j.session.rt.block_on(reg.close());
    }
    j.summary(&args, &switch, started);
    Ok(())
}

/// What the join's steps share: the runtime the registry client lives on,
/// the registry once MongoDB answered, the CPU sampler started meanwhile
/// (its average goes into the first heartbeats), AMS's last answer.
struct JoinSession {
    rt: tokio::runtime::Runtime,
    settings: ReporterSettings,
    node: NodeIdentity,
    mongo_wait: Duration,
    ttl: Duration,
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    registry: Option<Registry>,
    cpu: Option<CpuSampler>,
    reachable_at: Option<Instant>,
    ams_status: Option<u16>,
}

impl std::fmt::Debug for JoinSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinSession({})", self.node.id)
    }
}

impl JoinSession {
    /// A heartbeat with the node in `state` (`joining` registers it).
    fn heartbeat(&self, ctx: &ApplyCtx, state: NodeState, first: bool) -> Result<()> {
        let mut st = self.state.lock().expect("join state");
        let cpu = st.cpu.clone().context("the CPU sampler has not started")?;
        let reg = st.registry.as_ref().context("MongoDB was not reached")?;
        let mut gather = Gatherer::new(ctx.host, ctx.runner, &self.settings, cpu);
        let report = self.rt.block_on(async {
            let report = gather.report(&self.node, Some(state)).await;
            reg.heartbeat(&report, first).await.map(|_| report)
        })?;
        st.ams_status = report.ams.http_status;
        Ok(())
    }
}

/// 1. MongoDB, with a deadline (CPU is sampled meanwhile).
#[derive(Debug)]
struct WaitForMongo(Arc<JoinSession>);

impl Action for WaitForMongo {
    fn summary(&self) -> String {
        format!(
            "wait up to {} for MongoDB at {}",
            config::show_duration(self.0.mongo_wait),
            self.0.settings.target.shown()
        )
    }

    fn apply(&self, _: &ApplyCtx) -> Result<()> {
        let s = &self.0;
        let r = &s.settings.reporter;
        let (cpu, reg) = s.rt.block_on(async {
            let cpu = CpuSampler::start(r.cpu_samples, r.cpu_sample_interval);
            (cpu, wait_for_mongo(&s.settings.target, s.mongo_wait).await)
        });
        let mut st = s.state.lock().expect("join state");
        st.cpu = Some(cpu);
        st.registry = Some(reg?);
        st.reachable_at = Some(Instant::now());
        Ok(())
    }
}

/// 2. The node registered as `joining`, then the registry's indexes.
#[derive(Debug)]
struct RegisterJoining(Arc<JoinSession>);

impl Action for RegisterJoining {
    fn summary(&self) -> String {
        format!(
            "register the node as `joining` in {}.{} and create the registry indexes",
            self.0.settings.target.database, self.0.settings.target.collection
        )
    }

    fn apply(&self, ctx: &ApplyCtx) -> Result<()> {
        let s = &self.0;
        s.heartbeat(ctx, NodeState::Joining, true)?;
        let st = s.state.lock().expect("join state");
        if let Some(at) = st.reachable_at {
            tracing::info!(
                "registered as joining {:.0} ms after MongoDB answered",
                at.elapsed().as_secs_f64() * 1000.0
            );
        }
        let reg = st.registry.as_ref().context("MongoDB was not reached")?;
        s.rt.block_on(reg.ensure_indexes(s.ttl))?;
        Ok(())
    }
}

/// 5. The node `ready`, AMS read afresh after the switch.
#[derive(Debug)]
struct MarkReady(Arc<JoinSession>);

impl Action for MarkReady {
    fn summary(&self) -> String {
        "mark the node `ready`".into()
    }

    fn apply(&self, ctx: &ApplyCtx) -> Result<()> {
        self.0.heartbeat(ctx, NodeState::Ready, false)
    }
}

struct Joiner<'a> {
    ctx: &'a Context,
    session: &'a Arc<JoinSession>,
}

impl Joiner<'_> {
    /// The whole join as one plan, with the name of the stage each step
    /// belongs to (failures are reported, and recorded, by stage).
    fn plan(
        &self,
        req: &Request,
        switch: &ModeSwitch,
        node_group: Option<String>,
    ) -> Result<(Plan, Vec<&'static str>)> {
        let host = &self.ctx.host;
        let node = &self.session.node;
        let mut plan = Plan::new(format!(
            "join node {} ({}, {}) to the registry at {} ({}.{})",
            node.id,
            node.source.name(),
            req.config.node.role.name(),
            req.target.shown(),
            req.target.database,
            req.target.collection
        ));
        let mut stages = Vec::new();
        let mut add = |plan: &mut Plan, stage: &'static str, part: Plan| {
            stages.extend(std::iter::repeat_n(stage, part.steps.len()));
            plan.steps.extend(part.steps);
        };
        let single = |step: Step| Plan {
            steps: vec![step],
            ..Plan::default()
        };
        let step = "switch AMS to cluster mode";
        let extras = mode::Extras {
            node_group: node_group.clone(),
            ..mode::Extras::default()
        };
        let switch_plan = mode::plan_extra(host, switch, extras).map_err(|e| self.fail(step, e))?;
        // The reporter's settings as AMS will stand after the switch.
        let mut cfg = req.config.clone();
        cfg.node.ams_mode = Some(Mode::Cluster.name().to_string());
        cfg.node.node_group = node_group.or_else(|| {
            crate::ams::mode::read_node_group(host, &req.layout)
                .ok()
                .flatten()
        });
        let agent_req = Request {
            db: req.db.clone(),
            target: req.target.clone(),
            config: cfg,
            layout: req.layout.clone(),
        };
        let step = "configure and start the reporter";
        let agent = agent_plan(host, &agent_req, node).map_err(|e| self.fail(step, e))?;

        let session = Arc::clone(self.session);
        add(
            &mut plan,
            "wait for MongoDB",
            single(Step::Action(Arc::new(WaitForMongo(session.clone())))),
        );
        add(
            &mut plan,
            "register the node",
            single(Step::Action(Arc::new(RegisterJoining(session.clone())))),
        );
        add(&mut plan, "switch AMS to cluster mode", switch_plan);
        add(&mut plan, "configure and start the reporter", agent);
        add(
            &mut plan,
            "mark the node ready",
            single(Step::Action(Arc::new(MarkReady(session)))),
        );
        // The join record, last: only a join that went all the way is
        // "already joined" to a later run (a failed one is repaired by
        // running it again).
        let mut record = Plan::default();
        record.files(
            "record the join",
            vec![
                FileChange {
                    internal: true,
                    ..FileChange::write(
                        host,
                        Path::new(JOIN_RECORD),
                        join_record(req, node).to_json(),
                        0o644,
                    )?
                },
                FileChange {
                    path: LAST_ERROR.into(),
                    before: host.read_optional(Path::new(LAST_ERROR))?,
                    after: None,
                    meta_before: None,
                    meta: private_meta(0o644),
                    internal: true,
                },
            ],
        );
        add(&mut plan, "record the join", record);
        Ok((plan, stages))
    }

    /// Records a failed step locally and, when reachable, in MongoDB; the
    /// error names the step.
    fn fail(&self, step: &str, err: anyhow::Error) -> anyhow::Error {
        let message = format!("{err:#}");
        let message = message.split(['\n', '\r']).collect::<Vec<_>>().join(" ");
        let node = &self.session.node;
        config::record_last_error(
            &self.ctx.host,
            &LastErrorRecord {
                command: "join".into(),
                step: step.into(),
                message: message.clone(),
                node_id: Some(node.id.clone()),
                at: config::unix_now(),
            },
        );
        let st = self.session.state.lock().expect("join state");
        if let Some(reg) = &st.registry {
            let le = LastError {
                step: step.into(),
                message: message.clone(),
            };
            if let Err(e) =
                self.session
                    .rt
                    .block_on(reg.record_error(&node.id, &le, Duration::from_secs(3)))
            {
                // The error names the URI with its password masked.
                tracing::warn!(
                    "could not record the failed step in the node document of {}: {e}",
                    node.id
                );
            }
        }
        let failed = format!("join failed at step `{step}`: {message}");
        if crate::error::exit_code(&err) == 2 {
            // Bad input stays bad input (exit code 2).
            return crate::error::UsageError::new(failed).into();
        }
        anyhow::anyhow!(failed)
    }

    fn summary(&self, args: &JoinArgs, switch: &ModeSwitch, started: Instant) {
        let s = &self.session.settings;
        let node = &self.session.node;
        let ams_status = self.session.state.lock().expect("join state").ams_status;
        println!("Joined the cluster:");
        println!(
            "  node      {} ({}), {}, host {}, private IP {}",
            node.id,
            node.source.name(),
            s.role.name(),
            node.hostname,
            match (switch.ip, &node.private_ip_source) {
                (Some(ip), Some(from)) => format!("{ip} ({from})"),
                (Some(ip), None) => ip.to_string(),
                (None, _) => "from the default route".into(),
            }
        );
        println!(
            "  cloud     {}",
            match node.provider {
                Some(p) => format!(
                    "{}{}{}",
                    p.title(),
                    node.region
                        .as_deref()
                        .map(|r| format!(", {r}"))
                        .unwrap_or_default(),
                    node.availability_zone
                        .as_deref()
                        .map(|z| format!(" / {z}"))
                        .unwrap_or_default()
                ),
                None => "none found (the host's own facts; `ams-agent metadata` says why)".into(),
            }
        );
        println!(
            "  registry  {} {}.{}",
            s.target.shown(),
            s.target.database,
            s.target.collection
        );
        println!(
            "  AMS       cluster mode, {}",
            match (args.no_restart, ams_status) {
                (true, _) => "not restarted (--no-restart)".to_string(),
                (false, Some(code)) => format!("answering on {} (HTTP {code})", args.ams_url),
                (false, None) => format!("restarted, not answering on {} yet", args.ams_url),
            }
        );
        println!(
            "  reporter  {AGENT_UNIT}, every {}",
            config::show_duration(s.reporter.interval)
        );
        println!("  took      {:.1}s", started.elapsed().as_secs_f64());
    }
}
