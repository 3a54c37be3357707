//! The reporter (`ams-agent run`, `ams-agent.service`): heartbeats the
//! node's health and AMS state to MongoDB every interval, survives MongoDB
//! outages (backs off, one log line when the link is lost, one when the
//! cause changes and one when it is back), and marks the node `left` on
//! SIGTERM/SIGINT. `join` uses its
//! [`Gatherer`] for the first reports.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};

use crate::ams::AmsLayout;
use crate::ams::layout::SERVICE;
use crate::config::{self, ReporterSection, Role};
use crate::drain::Phase;
use crate::drain::driver::{DrainSettings, Driver, Shared};
use crate::host::{CommandRunner, Host};
use crate::mongo::registry::{Deadlines, NodeReport, NodeState, Registry, Target};
use crate::node::health::{self, AmsConfig, AmsState, CpuSampler, Fallback};
use crate::node::identity::{self, NodeIdentity};

/// Everything the reporter needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct ReporterSettings {
    pub target: Target,
    pub role: Role,
    pub reporter: ReporterSection,
    pub layout: AmsLayout,
    pub fallback_mode: Option<String>,
    pub fallback_group: Option<String>,
    pub ams_url: String,
    pub imds_endpoint: String,
    /// `[node] cloud` of agent.toml (`auto` when absent), and where it came from.
    pub cloud: crate::cloud::CloudChoice,
    pub cloud_origin: crate::cloud::detect::Origin,
    /// Lifetime of a silent node's document (TTL index on `lastSeen`).
    pub ttl: Duration,
    /// The node id `join` stored (`[node] id`), kept whatever the metadata
    /// service says.
    pub node_id: Option<String>,
    /// `join --ip` (`[node] private_ip`): wins over the metadata's address.
    pub private_ip: Option<Ipv4Addr>,
    /// Graceful scale-in (notices, AMS's REST API, the lifecycle hook).
    pub drain: DrainSettings,
}

impl ReporterSettings {
    /// How the reporter identifies the node: agent.toml's cloud, the
    /// endpoints of the environment (EC2's from `--imds-endpoint`), the
    /// route to the registry, `[node] private_ip`.
    pub fn lookup(&self) -> identity::Lookup {
        identity::Lookup {
            choice: self.cloud,
            origin: self.cloud_origin.clone(),
            endpoints: crate::cloud::detect::Endpoints::from_env().with_ec2(&self.imds_endpoint),
            mongo_uri: Some(self.target.uri.clone()),
            pinned_ip: self
                .private_ip
                .map(|ip| (ip, "[node] private_ip of agent.toml")),
            announce: true,
        }
    }
}

/// Deadlines for the reporter: an attempt never outlives about two
/// intervals, so a stalled server cannot freeze the loop.
pub fn reporter_deadlines(interval: Duration) -> Deadlines {
    let select = interval.clamp(Duration::from_secs(1), Duration::from_secs(10));
    Deadlines {
        connect: Duration::from_secs(3).min(select * 3),
        select,
        op: (interval * 2).clamp(Duration::from_secs(2), Duration::from_secs(30)),
    }
}

/// Gathers what a heartbeat reports; AMS's files and `systemctl` are read
/// only now and then (they rarely change, and spawning costs CPU).
pub struct Gatherer<'a> {
    host: &'a Host,
    runner: &'a dyn CommandRunner,
    settings: &'a ReporterSettings,
    cpu: CpuSampler,
    memory: sysinfo::System,
    /// AMS's files as last read: when, their stamp, what they said.
    ams_config: Option<(Instant, Stamp, AmsConfig)>,
    service: Option<(Instant, String)>,
    /// Since when values come from agent.toml (None: from AMS's files).
    fallback_since: Option<SystemTime>,
}

type Stamp = Vec<Option<[i64; 6]>>;

const SLOW_REFRESH: Duration = Duration::from_secs(60);
const SERVICE_REFRESH: Duration = Duration::from_secs(30);

impl<'a> Gatherer<'a> {
    pub fn new(
        host: &'a Host,
        runner: &'a dyn CommandRunner,
        settings: &'a ReporterSettings,
        cpu: CpuSampler,
    ) -> Self {
        Gatherer {
            host,
            runner,
            settings,
            cpu,
            memory: sysinfo::System::new(),
            ams_config: None,
            service: None,
            fallback_since: None,
        }
    }

    /// Forgets what was read of AMS (after `join` switched its mode).
    pub fn refresh(&mut self) {
        self.ams_config = None;
        self.service = None;
    }

    pub async fn report(
        &mut self,
        identity: &NodeIdentity,
        state: Option<NodeState>,
    ) -> NodeReport {
        let http_status = health::probe_http(&self.settings.ams_url, Duration::from_secs(1)).await;
        // A unit that answers HTTP is active; only ask systemd when it does not.
        let service = if http_status.is_some() {
            self.service = None;
            "active".to_string()
        } else {
            match &self.service {
                Some((at, s)) if at.elapsed() < SERVICE_REFRESH => s.clone(),
                _ => {
                    let s = health::service_state(self.runner, SERVICE);
                    self.service = Some((Instant::now(), s.clone()));
                    s
                }
            }
        };
        let ams = self.ams_state(service, http_status);
        let health = health::snapshot(
            &self.cpu,
            &mut self.memory,
            &self.host.path(&self.settings.layout.home),
        );
        let state = state.unwrap_or(if ams.answers() {
            NodeState::Ready
        } else {
            NodeState::Degraded
        });
        NodeReport {
            identity: identity.clone(),
            role: self.settings.role,
            state,
            ams,
            health,
            interval: self.settings.reporter.interval,
            drain: None,
            notices: Vec::new(),
        }
    }
}

impl Gatherer<'_> {
    /// AMS's mode and node group: from its files (re-read every minute, and
    /// at once when one of them changed), else what agent.toml recorded,
    /// marked as such. Falling back is warned about once, and its end said
    /// once.
    fn ams_state(&mut self, service: String, http_status: Option<u16>) -> AmsState {
        let layout = &self.settings.layout;
        let stamp = health::ams_config_stamp(self.host, layout);
        let fresh = matches!(&self.ams_config, Some((at, s, _)) if at.elapsed() < SLOW_REFRESH && *s == stamp);
        if !fresh {
            let c = health::ams_config(self.host, layout);
            self.ams_config = Some((Instant::now(), stamp, c));
        }
        let AmsConfig { mode, node_group } = &self.ams_config.as_ref().expect("read above").2;
        let mut values = Vec::new();
        let mut errors: Vec<&str> = Vec::new();
        let mode = match mode {
            Ok(m) => Some(m.clone()),
            Err(e) => {
                values.push("mode");
                errors.push(e);
                self.settings.fallback_mode.clone()
            }
        };
        let node_group = match node_group {
            Ok(g) => g.clone(),
            Err(e) => {
                values.push("nodeGroup");
                if !errors.contains(&e.as_str()) {
                    errors.push(e);
                }
                self.settings.fallback_group.clone()
            }
        };
        let fallback = if values.is_empty() {
            if self.fallback_since.take().is_some() {
                tracing::info!(
                    "AMS's configuration is readable again: its mode and node group are reported from its files"
                );
            }
            None
        } else {
            let error = errors.join("; ");
            let since = *self.fallback_since.get_or_insert_with(|| {
                tracing::warn!(
                    "cannot read AMS's configuration ({error}); reporting {} as agent.toml recorded it (marked `ams.fallback` in the node document) until it can be read; the reporter reads the AMS files through the group that `ams-agent join` names in {}",
                    values.join(" and "),
                    crate::agent_service::GROUP_DROP_IN
                );
                SystemTime::now()
            });
            Some(Fallback {
                values,
                error,
                since,
            })
        };
        AmsState {
            service,
            http_status,
            mode,
            node_group,
            fallback,
        }
    }
}

/// A small, dependency-free jitter source (time and pid mixed).
pub fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = nanos ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let ms = max.as_millis().max(1) as u64;
    Duration::from_millis(x % ms)
}

/// Why a heartbeat failed, as far as the log and the backoff care: a change
/// is a new log line (the outage's first line may no longer be true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Nothing answers, or not in time.
    Network,
    Dns,
    Authentication,
    Tls,
    /// The server answered with an error.
    Server,
    Configuration,
}

impl Cause {
    fn of(e: &crate::mongo::error::RegistryError) -> Cause {
        use crate::mongo::error::Failure;
        match e.failure {
            Failure::Unreachable | Failure::Timeout | Failure::Other => Cause::Network,
            Failure::Dns => Cause::Dns,
            Failure::Auth => Cause::Authentication,
            Failure::Tls => Cause::Tls,
            Failure::Server => Cause::Server,
            Failure::Config => Cause::Configuration,
        }
    }
}

/// The pause before the next attempt after a failure (before jitter:
/// the attempt comes between half of it and all of it). Exponential in
/// both cases. A failure waiting can fix (nothing answers yet) starts at
/// 250 ms and is capped at half an interval, so the node is back in MongoDB
/// within about an interval of the server's return. One waiting cannot fix
/// (the credentials or TLS refused) starts at 1 s and is capped at 30 s
/// (or the interval, if longer): a server that refuses logins is not asked
/// several times a second, and a fix on the server is still noticed within
/// half a minute (a new `join` restarts the reporter at once).
pub fn next_backoff(previous: Duration, transient: bool, interval: Duration) -> Duration {
    let (first, cap) = if transient {
        (
            Duration::from_millis(250),
            (interval / 2).max(Duration::from_millis(250)),
        )
    } else {
        (
            Duration::from_secs(1),
            interval.max(Duration::from_secs(30)),
        )
    };
    if previous.is_zero() {
        first.min(cap)
    } else {
        (previous * 2).min(cap)
    }
}

/// The reporter loop, until SIGTERM/SIGINT.
pub async fn reporter_loop(
    host: &Host,
    runner: &dyn CommandRunner,
    s: &ReporterSettings,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let interval = s.reporter.interval;
    let deadlines = reporter_deadlines(interval);
    let shown = s.target.shown();

    let lookup = s.lookup();
    let identity = tokio::select! {
        id = identity::resolve_stored(host, &lookup, s.node_id.as_deref()) => {
            // `join --ip`, else the metadata's address, else the route's.
            id.context("identifying this node")?
        }
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    let cpu = CpuSampler::start(s.reporter.cpu_samples, s.reporter.cpu_sample_interval);
    let mut gather = Gatherer::new(host, runner, s, cpu);
    tracing::info!(
        "reporting node {} ({}) to {} {}.{} every {}",
        identity.id,
        s.role.name(),
        shown,
        s.target.database,
        s.target.collection,
        config::show_duration(interval)
    );

    let mut registry: Option<Registry> = None;
    let shared = Shared::default();
    let mut settings_drain = s.drain.clone();
    // EC2's notices only where there is EC2 metadata.
    settings_drain.watch_metadata &=
        identity.source == identity::IdSource::Cloud(crate::cloud::Provider::Ec2);
    let mut driver = Driver::new(
        host,
        runner,
        &settings_drain,
        &s.target,
        deadlines,
        &identity,
        &shared,
    )?;
    let heartbeats = heartbeat_loop(s, &identity, &mut gather, &mut registry, &shared);
    tokio::select! {
        _ = heartbeats => {}
        _ = driver.run() => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }

    match shared.phase() {
        Some(Phase::Left | Phase::Draining) => {
            driver.on_sigterm().await;
            return Ok(());
        }
        None => {}
    }
    // SIGTERM/SIGINT: mark the node left, bounded by a short deadline.
    tracing::info!("stopping: marking node {} as left", identity.id);
    let limit = Duration::from_secs(3);
    let leave = async {
        let reg = match registry {
            Some(r) => r,
            None => Registry::open(&s.target, reporter_deadlines(interval)).await?,
        };
        let r = reg.set_state(&identity.id, NodeState::Left, limit).await;
        reg.close().await;
        r
    };
    match tokio::time::timeout(limit + Duration::from_secs(1), leave).await {
        Ok(Ok(())) => tracing::info!("node {} is marked left", identity.id),
        Ok(Err(e)) => tracing::warn!("could not mark the node left: {e}"),
        Err(_) => tracing::warn!(
            "could not mark the node left: MongoDB at {shown} did not answer within {}",
            config::show_duration(limit)
        ),
    }
    Ok(())
}

/// The heartbeats, every interval, until the caller stops awaiting it.
async fn heartbeat_loop(
    s: &ReporterSettings,
    identity: &NodeIdentity,
    gather: &mut Gatherer<'_>,
    registry: &mut Option<Registry>,
    shared: &Shared,
) {
    let interval = s.reporter.interval;
    let deadlines = reporter_deadlines(interval);
    let shown = s.target.shown();
    let mut indexes_done = false;
    // None: not yet connected; Some(true): up; Some(false): down since `down_since`.
    let mut link: Option<bool> = None;
    let mut down_since = Instant::now();
    let mut backoff = Duration::ZERO;
    // Why the last attempt failed, as logged: a new cause is a new line.
    let mut cause: Option<Cause> = None;
    let mut next = tokio::time::Instant::now();
    let ttl = s.ttl;

    loop {
        tokio::time::sleep_until(next).await;
        let started = tokio::time::Instant::now();
        let drain = shared.phase();
        if drain == Some(Phase::Left) {
            // Drained and left: nothing is reported any more.
            next = started + interval;
            continue;
        }
        let mut report = gather
            .report(
                identity,
                (drain == Some(Phase::Draining)).then_some(NodeState::Draining),
            )
            .await;
        report.drain = shared.fields();
        report.notices = shared.notices();
        let attempt = async {
            if registry.is_none() {
                *registry = Some(Registry::open(&s.target, deadlines).await?);
            }
            let reg = registry.as_ref().expect("opened above");
            {
                let _w = shared.write.lock().await;
                // A drain that ended meanwhile wrote `left`: not undone.
                if shared.phase() != Some(Phase::Left) {
                    reg.heartbeat(&report, false).await?;
                }
            }
            if !indexes_done {
                match reg.ensure_indexes(ttl).await {
                    Ok(()) => indexes_done = true,
                    Err(e) if !e.transient() => {
                        // Not worth a retry every tick (e.g. no privilege).
                        tracing::warn!("{e}");
                        indexes_done = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok::<(), crate::mongo::error::RegistryError>(())
        };
        let result = attempt.await;
        match result {
            Ok(()) => {
                match link {
                    Some(false) => tracing::info!(
                        "MongoDB at {shown} is back after {}; heartbeats resumed",
                        config::show_duration(down_since.elapsed())
                    ),
                    None => tracing::info!(
                        "connected to MongoDB at {shown}; node {} is {}",
                        identity.id,
                        report.state.name()
                    ),
                    Some(true) => {}
                }
                link = Some(true);
                backoff = Duration::ZERO;
                cause = None;
                next = started + interval;
            }
            Err(e) => {
                let now_cause = Cause::of(&e);
                if link != Some(false) {
                    tracing::warn!(
                        "{} MongoDB: {e}; retrying with backoff (quiet until it is back or the cause changes)",
                        if link.is_none() {
                            "no connection yet to"
                        } else {
                            "lost the connection to"
                        }
                    );
                    // From the start of the first failed heartbeat, not
                    // from when its deadline ran out.
                    down_since = Instant::now() - started.elapsed();
                } else if cause != Some(now_cause) {
                    tracing::warn!(
                        "MongoDB is still unavailable, for another reason now: {e}; retrying with backoff"
                    );
                } else {
                    tracing::debug!("MongoDB still unavailable: {e}");
                }
                if cause != Some(now_cause) {
                    backoff = Duration::ZERO;
                }
                cause = Some(now_cause);
                link = Some(false);
                if e.failure == crate::mongo::error::Failure::Config {
                    *registry = None;
                }
                backoff = next_backoff(backoff, e.transient(), interval);
                next = tokio::time::Instant::now() + backoff / 2 + jitter(backoff / 2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attempts the backoff allows in `span` of failures (each attempt
    /// at the shortest jittered pause, half the backoff).
    fn attempts_in(span: Duration, transient: bool, interval: Duration) -> u32 {
        let (mut at, mut backoff, mut n) = (Duration::ZERO, Duration::ZERO, 0);
        while at < span {
            n += 1;
            backoff = next_backoff(backoff, transient, interval);
            at += backoff / 2;
        }
        n
    }

    #[test]
    fn refused_logins_are_paced_and_unreachable_servers_retried_quickly() {
        let second = Duration::from_secs(1);
        // Credentials refused at a 1 s interval: at most 10 attempts in the
        // first minute, then one every 15 to 30 s.
        assert!(attempts_in(60 * second, false, second) <= 10);
        assert_eq!(
            next_backoff(Duration::from_secs(30), false, second),
            Duration::from_secs(30)
        );
        // Nothing answers: retried within half an interval, to be back
        // within about an interval of the server's return.
        assert_eq!(
            next_backoff(Duration::from_secs(10), true, 2 * second),
            second
        );
        assert!(attempts_in(10 * second, true, 2 * second) >= 10);
        // A long interval keeps its own pace.
        assert_eq!(
            next_backoff(Duration::from_secs(60), false, Duration::from_secs(300)),
            Duration::from_secs(120)
        );
    }
}
