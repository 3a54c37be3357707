//! `ams-agent lb haproxy|nginx [--watch]` and `ams-agent lb status`: the
//! load balancer follows the registry (the work is in [`crate::lb`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use super::run::{RegistryArgs, Resolved, validate_timeout};
use super::{Context, parse_duration};
use crate::bail_usage;
use crate::host::runtime;
use crate::lb::follow::{Follower, LbConfig};
use crate::lb::membership::Rules;
use crate::lb::model::{Bind, Kind, Listener, NodePorts, Settings, parse_listen};
use crate::lb::record::Record;
use crate::lb::runtime::AdminSocket;
use crate::lb::{follow, haproxy, status};
use crate::mongo::registry::{Deadlines, Registry};

/// A load balancer (HAProxy or Nginx) that follows the node registry
#[derive(Debug, Args)]
#[command(
    long_about = "Render the cluster's load balancer from the node registry: origins take \
    publishing (80/443 → :5080, RTMP 1935), edges take playing (5080/5443 → :5080), the \
    dashboard (4444) reaches every node, `?target=origin|edge` overrides the port's choice; \
    SRT 4200/udp with Nginx only. The section the agent owns sits between marker lines: \
    everything outside them stays byte for byte. Every candidate file is checked with the \
    balancer's own checker before it replaces the live one (the last good one is kept).\n\n\
    HAProxy applies nodes joining, draining and leaving through its Runtime API (no reload); \
    Nginx reloads, debounced. Guards keep the last good configuration when the registry does \
    not answer, answers no node for a group, or would take out more than --max-removal of a \
    group at once. See docs/lb.md."
)]
pub struct LbArgs {
    #[command(subcommand)]
    pub command: LbCommand,
}

#[derive(Debug, Subcommand)]
pub enum LbCommand {
    Haproxy(HaproxyArgs),
    Nginx(NginxArgs),
    Status(LbStatusArgs),
}

/// Parses `50%` or `0.5` into a share in 0..=1.
fn parse_share(s: &str) -> std::result::Result<f64, String> {
    let (num, pct) = match s.strip_suffix('%') {
        Some(n) => (n, true),
        None => (s, false),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| "expected a percentage like 50%".to_string())?;
    let v = if pct || v > 1.0 { v / 100.0 } else { v };
    if !(0.0..=1.0).contains(&v) || !v.is_finite() {
        return Err("must be between 0% and 100%".into());
    }
    Ok(v)
}

fn parse_port(s: &str) -> std::result::Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err("expected a port from 1 to 65535".into()),
    }
}

/// What both balancers take.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Keep following the registry until stopped (SIGTERM/SIGINT); without
    /// it, one cycle
    #[arg(long)]
    pub watch: bool,

    /// How often the registry is read with --watch
    #[arg(long, value_name = "DURATION", default_value = "500ms", env = "AMS_AGENT_LB_POLL", value_parser = parse_duration)]
    pub poll: Duration,

    /// A node's change (becoming ready, going stale or unready) takes effect
    /// once it has lasted this long; `draining` and `left` apply at once
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "AMS_AGENT_LB_SETTLE", value_parser = parse_duration)]
    pub settle: Duration,

    /// The largest share of a group that may leave rotation in one step
    /// because its nodes went stale or unready (more is held back)
    #[arg(long, value_name = "PERCENT", default_value = "50%", env = "AMS_AGENT_LB_MAX_REMOVAL", value_parser = parse_share)]
    pub max_removal: f64,

    /// Move or turn off a listener: NAME=[ADDR:]PORT or NAME=off, NAME one
    /// of publish (80), publish-tls (443), play (5080), play-tls (5443),
    /// dashboard (4444), rtmp (1935), srt (4200/udp, Nginx only); repeat it
    #[arg(long, value_name = "NAME=[ADDR:]PORT", env = "AMS_AGENT_LB_LISTEN", value_delimiter = ',', value_parser = parse_listen)]
    pub listen: Vec<(Listener, Option<Bind>)>,

    /// The nodes' AMS HTTP port (and health check)
    #[arg(long, value_name = "PORT", default_value = "5080", env = "AMS_AGENT_LB_HTTP_PORT", value_parser = parse_port)]
    pub http_port: u16,

    /// The nodes' RTMP port
    #[arg(long, value_name = "PORT", default_value = "1935", env = "AMS_AGENT_LB_RTMP_PORT", value_parser = parse_port)]
    pub rtmp_port: u16,

    /// The nodes' SRT port
    #[arg(long, value_name = "PORT", default_value = "4200", env = "AMS_AGENT_LB_SRT_PORT", value_parser = parse_port)]
    pub srt_port: u16,

    /// How long an old worker keeps its connections after a reload
    /// (HAProxy hard-stop-after, Nginx worker_shutdown_timeout)
    #[arg(long, value_name = "DURATION", default_value = "1h", env = "AMS_AGENT_LB_HARD_STOP_AFTER", value_parser = parse_duration)]
    pub hard_stop_after: Duration,

    /// How long an idle WebSocket or RTMP connection stays open
    #[arg(long, value_name = "DURATION", default_value = "1h", env = "AMS_AGENT_LB_TUNNEL_TIMEOUT", value_parser = parse_duration)]
    pub tunnel_timeout: Duration,

    /// The folder of certificates `ams-agent cert --for haproxy` installs:
    /// TLS listeners exist when it holds a *.pem
    #[arg(long, value_name = "DIR", default_value = crate::cert::deploy::HAPROXY_CERTS, env = "AMS_AGENT_LB_CERTS")]
    pub certs: PathBuf,

    /// The systemd unit reloaded (default: haproxy or nginx)
    #[arg(long, value_name = "UNIT", env = "AMS_AGENT_LB_SERVICE")]
    pub service: Option<String>,

    /// With --watch, a reload waits until no change came for this long…
    #[arg(long, value_name = "DURATION", default_value = "2s", env = "AMS_AGENT_LB_QUIET_PERIOD", value_parser = parse_duration)]
    pub quiet_period: Duration,

    /// …or at most this long after the first change
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "AMS_AGENT_LB_MAX_WAIT", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// How long one read of the registry may take
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How long a reload may take to show (a new worker)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub reload_wait: Duration,

    /// Serve one AMS node group only (`nodeGroup` of the nodes'
    /// red5.properties; nodes without one are in `default`): a balancer per
    /// region. Without it, every node of the registry
    #[arg(long = "group", alias = "node-group", value_name = "NODE_GROUP", env = "AMS_AGENT_LB_GROUP", value_parser = super::parse_node_group)]
    pub node_group: Option<String>,
}

/// HAProxy follows the registry (membership through its Runtime API)
#[derive(Debug, Clone, Args)]
pub struct HaproxyArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// HAProxy's configuration file; the agent's section goes between
    /// markers at its end
    #[arg(long, value_name = "FILE", default_value = crate::cert::deploy::HAPROXY_CONFIG, env = "AMS_AGENT_LB_FILE")]
    pub file: PathBuf,

    /// HAProxy's admin socket (`stats socket … level admin`)
    #[arg(
        long,
        value_name = "SOCKET",
        default_value = "/run/haproxy/admin.sock",
        env = "AMS_AGENT_LB_SOCKET"
    )]
    pub socket: PathBuf,

    /// The server-state file the agent writes before a reload
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/haproxy/ams-agent-server-state",
        env = "AMS_AGENT_LB_STATE_FILE"
    )]
    pub state_file: PathBuf,

    /// Spare server slots per backend (more are added at a reload when a
    /// backend runs out)
    #[arg(long, value_name = "N", default_value = "8", env = "AMS_AGENT_LB_SPARE_SLOTS", value_parser = clap::value_parser!(u16).range(0..=10000))]
    pub spare_slots: u16,

    /// Apply every change by a reload, never through the Runtime API
    #[arg(long)]
    pub no_runtime: bool,
}

/// Nginx follows the registry (a debounced reload per change)
#[derive(Debug, Clone, Args)]
pub struct NginxArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Nginx's main configuration file: one section goes at its top level,
    /// one inside `http {}`
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/nginx/nginx.conf",
        env = "AMS_AGENT_LB_FILE"
    )]
    pub file: PathBuf,

    /// The PEM (chain and key) Nginx serves (default: the only *.pem in
    /// --certs)
    #[arg(long, value_name = "FILE", env = "AMS_AGENT_LB_CERT")]
    pub cert: Option<PathBuf>,

    /// Nginx's pid file (to see that a reload took)
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/run/nginx.pid",
        env = "AMS_AGENT_LB_PID_FILE"
    )]
    pub pid_file: PathBuf,
}

/// What is in rotation, the registry's view against the balancer's
#[derive(Debug, Args)]
pub struct LbStatusArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Machine-readable output
    #[arg(long)]
    pub json: bool,

    /// How long to wait for MongoDB
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl CommonArgs {
    fn validate(&self, kind: Kind, dry_run: bool) -> Result<()> {
        validate_timeout(self.poll, "--poll")?;
        validate_timeout(self.timeout, "--timeout")?;
        validate_timeout(self.reload_wait, "--reload-wait")?;
        validate_timeout(self.hard_stop_after, "--hard-stop-after")?;
        validate_timeout(self.tunnel_timeout, "--tunnel-timeout")?;
        if self.quiet_period > self.max_wait {
            bail_usage!(
                "--quiet-period {} is longer than --max-wait {}",
                crate::human::show_duration(self.quiet_period),
                crate::human::show_duration(self.max_wait)
            );
        }
        if dry_run && self.watch {
            bail_usage!("--dry-run prints one plan: drop --watch");
        }
        if kind == Kind::Haproxy {
            if let Some((_, Some(_))) = self.listen.iter().find(|(l, _)| *l == Listener::Srt) {
                bail_usage!(
                    "--listen srt=…: HAProxy has no UDP; balance SRT with `ams-agent lb nginx`"
                );
            }
        }
        let mut seen: BTreeMap<u16, Listener> = BTreeMap::new();
        let listen: BTreeMap<Listener, Option<Bind>> = self.listen.iter().cloned().collect();
        for l in Listener::ALL {
            if kind == Kind::Haproxy && l == Listener::Srt {
                continue;
            }
            let Some(b) = listen.get(&l).copied().unwrap_or(Some(Bind {
                addr: None,
                port: l.default_port(),
            })) else {
                continue;
            };
            // RTMP is TCP and SRT is UDP: the same port number is fine.
            if l == Listener::Srt {
                continue;
            }
            if let Some(other) = seen.insert(b.port, l) {
                bail_usage!(
                    "--listen: {} and {} both use port {}",
                    other.name(),
                    l.name(),
                    b.port
                );
            }
        }
        Ok(())
    }

    fn config(&self, ctx: &Context, kind: Kind, file: PathBuf) -> Result<LbConfig> {
        let Resolved { target, .. } = self.registry.resolve(&ctx.host)?;
        let mut listen: BTreeMap<Listener, Option<Bind>> = self.listen.iter().cloned().collect();
        if kind == Kind::Haproxy {
            listen.insert(Listener::Srt, None);
        }
        Ok(LbConfig {
            kind,
            file,
            settings: Settings {
                listen,
                ports: NodePorts {
                    http: self.http_port,
                    rtmp: self.rtmp_port,
                    srt: self.srt_port,
                },
                tls: None,
                hard_stop_after: self.hard_stop_after,
                tunnel_timeout: self.tunnel_timeout,
                state_file: PathBuf::new(),
                spare_slots: 8,
            },
            rules: Rules {
                settle: self.settle,
                max_removal: self.max_removal,
                drain_in_place: kind == Kind::Haproxy,
            },
            certs: self.certs.clone(),
            cert: None,
            socket: PathBuf::new(),
            runtime: true,
            pid_file: PathBuf::new(),
            service: self
                .service
                .clone()
                .unwrap_or_else(|| kind.unit().to_string()),
            poll: self.poll,
            quiet: self.quiet_period,
            max_wait: self.max_wait,
            timeout: self.timeout,
            reload_wait: self.reload_wait,
            target,
            node_group: self.node_group.clone(),
        })
    }
}

pub fn run(ctx: &Context, args: LbArgs) -> Result<()> {
    match args.command {
        LbCommand::Haproxy(a) => haproxy_cmd(ctx, a),
        LbCommand::Nginx(a) => nginx_cmd(ctx, a),
        LbCommand::Status(a) => status_cmd(ctx, a),
    }
}

fn haproxy_cmd(ctx: &Context, a: HaproxyArgs) -> Result<()> {
    a.common.validate(Kind::Haproxy, ctx.dry_run)?;
    let mut cfg = a.common.config(ctx, Kind::Haproxy, a.file.clone())?;
    cfg.settings.state_file = ctx.host.path(&a.state_file);
    cfg.settings.spare_slots = a.spare_slots as usize;
    cfg.socket = a.socket.clone();
    cfg.runtime = !a.no_runtime;
    follow_cmd(ctx, cfg, a.common.watch)
}

fn nginx_cmd(ctx: &Context, a: NginxArgs) -> Result<()> {
    a.common.validate(Kind::Nginx, ctx.dry_run)?;
    let mut cfg = a.common.config(ctx, Kind::Nginx, a.file.clone())?;
    cfg.cert = a.cert.clone();
    cfg.pid_file = a.pid_file.clone();
    follow_cmd(ctx, cfg, a.common.watch)
}

fn follow_cmd(ctx: &Context, cfg: LbConfig, watch: bool) -> Result<()> {
    // Bad input (the file, its markers, the certificates) is found before
    // the registry is asked anything.
    follow::precheck(&ctx.host, &cfg)?;
    let record = match Record::load(&ctx.host, cfg.kind) {
        Ok(r) => r.unwrap_or_default(),
        Err(e) => {
            // The follower's own memory: rewritten by this run. The
            // hysteresis starts again; said, not hidden.
            tracing::warn!(
                "{e:#}: starting afresh (the --settle periods start again; the file is rewritten by this run)"
            );
            Record::default()
        }
    };
    let mutate = || ctx.mutate();
    let mut f = Follower {
        host: &ctx.host,
        runner: ctx.runner.as_ref(),
        cfg,
        record,
        lock: &mutate,
        progress: false,
    };
    if watch {
        return f.watch();
    }
    for line in f.once(ctx.dry_run)? {
        println!("{line}");
    }
    Ok(())
}

/// `ams-agent run --lb KIND`: `lb KIND --watch` with the registry options
/// `run` was given and every other setting from its `AMS_AGENT_LB_*`
/// variable or default (what a unit sets with `Environment=`).
pub fn run_follower(ctx: &Context, kind: Kind, registry: RegistryArgs) -> Result<()> {
    #[derive(Parser)]
    #[command(name = "ams-agent run --lb")]
    struct H {
        #[command(flatten)]
        a: HaproxyArgs,
    }
    #[derive(Parser)]
    #[command(name = "ams-agent run --lb")]
    struct N {
        #[command(flatten)]
        a: NginxArgs,
    }
    let usage = |e: clap::Error| crate::error::UsageError::new(e.to_string().trim().to_string());
    match kind {
        Kind::Haproxy => {
            let mut a = H::try_parse_from(["ams-agent run --lb"]).map_err(usage)?.a;
            a.common.registry = registry;
            a.common.watch = !ctx.dry_run;
            haproxy_cmd(ctx, a)
        }
        Kind::Nginx => {
            let mut a = N::try_parse_from(["ams-agent run --lb"]).map_err(usage)?.a;
            a.common.registry = registry;
            a.common.watch = !ctx.dry_run;
            nginx_cmd(ctx, a)
        }
    }
}

fn status_cmd(ctx: &Context, a: LbStatusArgs) -> Result<()> {
    validate_timeout(a.timeout, "--timeout")?;
    let mut records: Vec<(Kind, Record)> = Vec::new();
    let mut unreadable: Vec<String> = Vec::new();
    for k in [Kind::Haproxy, Kind::Nginx] {
        match Record::load(&ctx.host, k) {
            Ok(Some(r)) => records.push((k, r)),
            Ok(None) => {}
            Err(e) => unreadable.push(format!("{e:#}")),
        }
    }
    if records.is_empty() && !unreadable.is_empty() {
        anyhow::bail!(
            "{} (run the follower again, `ams-agent lb haproxy` or `ams-agent lb nginx`, to rewrite it)",
            unreadable.join("; ")
        );
    }
    if records.is_empty() {
        anyhow::bail!(
            "ams-agent has not configured a balancer on this host yet ({} and {} do not exist): run `ams-agent lb haproxy` or `ams-agent lb nginx` first",
            crate::lb::record::path(Kind::Haproxy).display(),
            crate::lb::record::path(Kind::Nginx).display()
        );
    }
    let Resolved { target, .. } = a.registry.resolve(&ctx.host)?;
    let rt = runtime()?;
    // Each balancer's view of the registry: its node group's nodes, or all.
    let groups: Vec<Option<String>> = records.iter().map(|(_, r)| r.node_group.clone()).collect();
    let read = rt.block_on(async {
        let reg = Registry::open(&target, Deadlines::within(a.timeout)).await?;
        let mut out = Vec::new();
        for g in &groups {
            let v = follow::read_registry(&reg, g.as_deref()).await;
            out.push(v.map(|(view, _)| view));
        }
        reg.close().await;
        Ok::<_, crate::mongo::error::RegistryError>(out)
    });
    let mut views = BTreeMap::new();
    let mut failed = false;
    for (i, (kind, record)) in records.iter().enumerate() {
        let registry = match &read {
            Ok(views) => views[i].clone().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        failed |= registry.is_err();
        let file = follow::read_file(&ctx.host, *kind, &record.file)
            .map(|c| (c.members, c.layout))
            .map_err(|e| format!("{e:#}"));
        let live = match (kind, &record.socket) {
            (Kind::Haproxy, Some(sock)) => {
                let s = AdminSocket::new(sock, ctx.host.path(sock), Duration::from_secs(5));
                Some(
                    s.servers()
                        .and_then(|(_, servers)| Ok((servers, s.info()?.pid)))
                        .map_err(|e| format!("{e:#}")),
                )
            }
            _ => None,
        };
        let v = status::view(status::Inputs {
            record,
            kind: *kind,
            file,
            live,
            registry,
        });
        failed |= v.balancer_error.is_some();
        views.insert(kind.name(), v);
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&views).context("writing JSON")?
        );
    } else {
        let texts: Vec<String> = views.values().map(status::render).collect();
        print!("{}", texts.join("\n"));
    }
    if !unreadable.is_empty() {
        anyhow::bail!(
            "{} (run the follower again to rewrite it)",
            unreadable.join("; ")
        );
    }
    if failed {
        anyhow::bail!(
            "{}",
            match &read {
                Err(e) => format!("the registry does not answer: {e}"),
                Ok(v) => match v.iter().find_map(|r| r.as_ref().err()) {
                    Some(e) => format!("the registry does not answer: {e}"),
                    None => "the balancer's state could not be read (see above)".into(),
                },
            }
        );
    }
    let _ = haproxy::Backend::ALL;
    Ok(())
}
