//! The drain inside the reporter: a loop that runs next to the heartbeats
//! on the reporter's single thread. Every second it takes a CLI request
//! (`drain-request.json`), every poll (5 s, backing off while the metadata
//! service fails) it reads the cloud's notices (EC2's from its IMDS,
//! Azure's Scheduled Events, GCP's preemption and maintenance keys), and while the node drains it
//! counts what AMS still serves (every 2 s), sends lifecycle heartbeats,
//! and leaves once the node is empty or the budget ran out.
//!
//! [`Shared`] is what the heartbeat reads: the state (a draining node's
//! heartbeat says `draining`, with the `drain` sub-document; a node that
//! left sends none) and the advisory notices. Writes of the node's state
//! hold [`Shared::write`], so a heartbeat in flight never lands after
//! `left`.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use mongodb::bson::doc;
use serde::{Deserialize, Serialize};

use super::ams;
use super::lifecycle::{Completion, HookSettings, Lifecycle};
use super::notices::{self, Budgets};
use super::state::{self, Decision, DrainState, Event, Outcome, Phase, RequestAction, Trigger};
use crate::ams::AmsLayout;
use crate::ams::layout::SERVICE;
use crate::cloud::ec2::{Budget, Imds};
use crate::cloud::events::Watcher;
use crate::host::fs::private_meta;
use crate::host::systemd::{self, ServiceAction};
use crate::host::{CommandRunner, CommandSpec, Host};
use crate::mongo::registry::{Deadlines, DrainFields, NodeState, Registry, Target};
use crate::node::identity::NodeIdentity;

/// Where the reporter answers a CLI request.
pub const ANSWER_FILE: &str = "/var/lib/ams-agent/drain-answer.json";

/// The reporter's answer to a CLI request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub id: String,
    pub ok: bool,
    pub message: String,
}

/// How the drain runs (from flags, agent.toml, the environment).
#[derive(Debug, Clone)]
pub struct DrainSettings {
    /// AMS's HTTP port (its REST API), e.g. `http://127.0.0.1:5080/`.
    pub ams_url: String,
    pub layout: AmsLayout,
    pub imds_endpoint: String,
    pub hook: HookSettings,
    /// The budget of a lifecycle-hook drain.
    pub lifecycle_budget: Duration,
    /// How often the metadata is read for notices.
    pub poll: Duration,
    /// How often AMS is asked what it still serves.
    pub count_every: Duration,
    /// Read EC2's notices (an EC2 node).
    pub watch_metadata: bool,
    /// The metadata endpoints of every cloud (Azure's and GCP's notices).
    pub endpoints: crate::cloud::detect::Endpoints,
}

impl DrainSettings {
    /// The defaults, and `[drain]` of agent.toml when there is one.
    pub fn new(
        ams_url: &str,
        layout: AmsLayout,
        imds_endpoint: &str,
        config: Option<&crate::config::DrainSection>,
    ) -> Self {
        DrainSettings {
            ams_url: ams_url.to_string(),
            layout,
            imds_endpoint: imds_endpoint.to_string(),
            hook: HookSettings {
                group: config.and_then(|c| c.autoscaling_group.clone()),
                hook: config.and_then(|c| c.lifecycle_hook.clone()),
                endpoint: crate::cloud::aws::endpoint_from_env(),
            },
            lifecycle_budget: config
                .and_then(|c| c.lifecycle_deadline)
                .unwrap_or(DEFAULT_LIFECYCLE_BUDGET),
            poll: DEFAULT_POLL,
            count_every: Duration::from_secs(2),
            watch_metadata: true,
            endpoints: crate::cloud::detect::Endpoints::from_env().with_ec2(imds_endpoint),
        }
    }
}

pub const DEFAULT_LIFECYCLE_BUDGET: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(15);

/// What the heartbeat reads.
#[derive(Default)]
pub struct Shared {
    state: RefCell<Option<DrainState>>,
    notices: RefCell<Vec<String>>,
    /// Held by every write of the node's state (heartbeat, draining, left).
    pub write: tokio::sync::Mutex<()>,
}

impl Shared {
    pub fn phase(&self) -> Option<Phase> {
        self.state.borrow().as_ref().map(|s| s.phase)
    }

    pub fn state(&self) -> Option<DrainState> {
        self.state.borrow().clone()
    }

    pub fn notices(&self) -> Vec<String> {
        self.notices.borrow().clone()
    }

    /// The `drain` sub-document of the heartbeat.
    pub fn fields(&self) -> Option<DrainFields> {
        self.state.borrow().as_ref().map(fields)
    }
}

fn fields(s: &DrainState) -> DrainFields {
    DrainFields {
        trigger: s.trigger.name().into(),
        reason: s.reason.clone(),
        since: s.since_time(),
        deadline: s.deadline_time(),
        outcome: s.outcome.map(|o| o.name().to_string()),
    }
}

pub struct Driver<'a> {
    host: &'a Host,
    runner: &'a dyn CommandRunner,
    settings: &'a DrainSettings,
    target: &'a Target,
    deadlines: Deadlines,
    node: &'a NodeIdentity,
    shared: &'a Shared,
    imds: Arc<Imds>,
    /// Azure's or GCP's notices (None elsewhere: EC2's come from `imds`).
    watcher: Option<Watcher>,
    registry: Option<Registry>,
    lifecycle: Option<Lifecycle>,
    ams: reqwest::Client,
    last_load: Option<String>,
    /// Since when the metadata fails (logged once), and the next pause.
    meta_down: Option<Instant>,
    meta_backoff: Duration,
    next_poll: Instant,
    next_count: Instant,
}

impl<'a> Driver<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        host: &'a Host,
        runner: &'a dyn CommandRunner,
        settings: &'a DrainSettings,
        target: &'a Target,
        deadlines: Deadlines,
        node: &'a NodeIdentity,
        shared: &'a Shared,
    ) -> Result<Self> {
        let imds = Arc::new(Imds::new(
            &settings.imds_endpoint,
            Budget {
                attempts: 1,
                ..Budget::default()
            },
        )?);
        let loaded = state::load(host, &node.id);
        match &loaded {
            Some(s) if s.phase == Phase::Draining => tracing::warn!(
                "resuming the drain of node {} ({}: {}); deadline {} ({} left)",
                node.id,
                s.trigger.name(),
                s.reason,
                humantime::format_rfc3339_seconds(s.deadline_time()),
                crate::human::show_duration(s.left(SystemTime::now()))
            ),
            Some(_) => tracing::warn!(
                "node {} was drained and left: no heartbeat is sent (run `ams-agent join` to bring it back)",
                node.id
            ),
            None => {}
        }
        *shared.state.borrow_mut() = loaded;
        let watcher = match node.notice_watcher(&settings.endpoints) {
            Some(Ok(w)) => {
                tracing::info!(
                    "watching {}'s termination notices for node {}",
                    w.provider().title(),
                    node.id
                );
                Some(w)
            }
            Some(Err(e)) => {
                tracing::warn!(
                    "cannot watch this cloud's termination notices ({e:#}): the node is not drained before the cloud takes it"
                );
                None
            }
            None => None,
        };
        let now = Instant::now();
        Ok(Driver {
            host,
            runner,
            settings,
            target,
            deadlines,
            node,
            shared,
            imds,
            watcher,
            registry: None,
            lifecycle: None,
            ams: ams::client(),
            last_load: None,
            meta_down: None,
            meta_backoff: Duration::ZERO,
            next_poll: now,
            next_count: now,
        })
    }

    async fn registry(&mut self) -> Option<&Registry> {
        if self.registry.is_none() {
            match Registry::open(self.target, self.deadlines).await {
                Ok(r) => self.registry = Some(r),
                Err(e) => {
                    tracing::warn!("drain: cannot open the registry: {e}");
                    return None;
                }
            }
        }
        self.registry.as_ref()
    }

    fn lifecycle(&mut self) -> &mut Lifecycle {
        if self.lifecycle.is_none() {
            let mut hook = self.settings.hook.clone();
            if let Some(l) = self.shared.state().and_then(|s| s.lifecycle) {
                hook.group = hook.group.or(l.group);
                hook.hook = hook.hook.or(l.hook);
            }
            self.lifecycle = Some(Lifecycle::new(self.imds.clone(), hook, &self.node.id));
        }
        self.lifecycle.as_mut().expect("made above")
    }

    /// The loop; it never ends by itself (the reporter's select ends it).
    pub async fn run(&mut self) {
        if self.shared.phase() == Some(Phase::Draining) {
            self.write_draining().await;
        }
        if let Some(s) = self.shared.state().filter(|s| s.unfinished) {
            tracing::warn!(
                "node {} left, but the reporter stopped before the last steps ran: running them now",
                self.node.id
            );
            self.finish(s).await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.step().await;
        }
    }

    /// One second's work.
    async fn step(&mut self) {
        if let Some(req) = state::take_request(self.host) {
            self.request(req).await;
        }
        let now = Instant::now();
        if (self.settings.watch_metadata || self.watcher.is_some()) && now >= self.next_poll {
            self.poll().await;
        }
        if self.shared.phase() != Some(Phase::Draining) {
            return;
        }
        let Some(s) = self.shared.state() else { return };
        if s.lifecycle.is_some() {
            self.lifecycle().tick().await;
        }
        let mut deadline = s.deadline_time();
        if let Some(cap) = self.lifecycle.as_ref().and_then(|l| l.cap(s.since_time())) {
            deadline = deadline.min(cap);
        }
        if Instant::now() >= self.next_count {
            self.next_count = Instant::now() + self.settings.count_every;
            let apps = match self.settings.layout.applications(self.host) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(
                        "drain: cannot list AMS's applications ({e:#}); waiting for the deadline"
                    );
                    Vec::new()
                }
            };
            let ip = self.node.private_ip.map(|ip| ip.to_string());
            let load = ams::load(&self.ams, &self.settings.ams_url, &apps, ip.as_deref()).await;
            let summary = load.summary();
            if self.last_load.as_deref() != Some(summary.as_str()) {
                tracing::info!(
                    "drain: {summary}; {} left",
                    crate::human::show_duration(
                        deadline
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                    )
                );
                self.last_load = Some(summary);
            }
            if !apps.is_empty() && load.empty() {
                let outcome = if load.ams_down {
                    Outcome::AmsDown
                } else {
                    Outcome::Empty
                };
                self.leave(outcome, true).await;
                return;
            }
        }
        if SystemTime::now() >= deadline {
            tracing::warn!(
                "drain: the deadline passed with {}; leaving anyway",
                self.last_load
                    .as_deref()
                    .unwrap_or("the node's load unknown")
            );
            self.leave(Outcome::DeadlinePassed, true).await;
        }
    }

    async fn poll(&mut self) {
        let budgets = Budgets {
            lifecycle: self.settings.lifecycle_budget,
        };
        let found = match &self.watcher {
            Some(w) => w
                .poll()
                .await
                .map(|n| notices::from_cloud(n, SystemTime::now())),
            None => notices::poll(&self.imds, budgets, SystemTime::now()).await,
        };
        match found {
            Ok(f) => {
                if let Some(since) = self.meta_down.take() {
                    tracing::info!(
                        "the instance metadata answers again after {}; watching for termination notices",
                        crate::human::show_duration(since.elapsed())
                    );
                }
                self.meta_backoff = Duration::ZERO;
                self.next_poll = Instant::now() + self.settings.poll;
                let changed = *self.shared.notices.borrow() != f.advisories;
                if changed {
                    for a in &f.advisories {
                        tracing::warn!("advisory notice: {a}");
                    }
                    *self.shared.notices.borrow_mut() = f.advisories;
                }
                for e in f.events {
                    self.event(e).await;
                }
                self.keep_acks(f.acks);
            }
            Err(e) => {
                if self.meta_down.is_none() {
                    tracing::warn!(
                        "termination notices unavailable: the instance metadata does not answer ({e:#}); this is no notice: retrying with backoff (quiet until it answers)"
                    );
                    self.meta_down = Some(Instant::now());
                } else {
                    tracing::debug!("instance metadata still unavailable: {e:#}");
                }
                self.meta_backoff = (self.meta_backoff * 2)
                    .max(self.settings.poll)
                    .min(MAX_POLL_BACKOFF);
                self.next_poll = Instant::now() + self.meta_backoff;
            }
        }
    }

    /// Remembers the Azure Scheduled Events of the running drain's triggers,
    /// to acknowledge once the node left (kept in `drain.json`, so a
    /// restarted reporter still acknowledges them).
    fn keep_acks(&mut self, acks: Vec<(String, String)>) {
        let Some(mut s) = self.shared.state() else {
            return;
        };
        if s.phase != Phase::Draining {
            return;
        }
        let mut changed = false;
        for (key, event) in acks {
            if s.seen.contains(&key) && !s.acks.contains(&event) {
                s.acks.push(event);
                changed = true;
            }
        }
        if changed {
            if let Err(e) = state::save(self.host, Some(&s)) {
                tracing::warn!("drain: {e:#} (the drain goes on in memory)");
            }
            *self.shared.state.borrow_mut() = Some(s);
        }
    }

    /// Approves the cloud's events once the node left, so the cloud goes
    /// on at once (Azure: instead of waiting for `NotBefore`).
    async fn acknowledge(&self, s: &DrainState) {
        let Some(w) = &self.watcher else { return };
        for event in &s.acks {
            match w.acknowledge_event(event).await {
                Ok(()) => tracing::info!(
                    "acknowledged Scheduled Event {event}: {} may proceed now",
                    w.provider().title()
                ),
                Err(e) => tracing::warn!(
                    "{e:#}: {} goes on at the event's NotBefore instead",
                    w.provider().title()
                ),
            }
        }
    }

    /// Applies `event`; writes the state file and the registry as needed.
    async fn event(&mut self, event: Event) -> Decision {
        let now = SystemTime::now();
        let current = self.shared.state();
        let (next, decision) = state::apply(current.as_ref(), event, &self.node.id, now);
        match &decision {
            Decision::Started => {
                let s = next.as_ref().expect("started");
                tracing::warn!(
                    "draining node {} ({}: {}): taken out of rotation now; leaving once it is empty, at the latest at {} (in {})",
                    self.node.id,
                    s.trigger.name(),
                    s.reason,
                    humantime::format_rfc3339_seconds(s.deadline_time()),
                    crate::human::show_duration(s.left(now))
                );
            }
            Decision::Joined { shortened } => {
                let s = next.as_ref().expect("joined");
                let key = s.seen.last().cloned().unwrap_or_default();
                tracing::warn!(
                    "drain: another trigger ({}) during the drain{}",
                    crate::human::escape(&key),
                    if *shortened {
                        format!(
                            "; it ends earlier now, at {}",
                            humantime::format_rfc3339_seconds(s.deadline_time())
                        )
                    } else {
                        String::new()
                    }
                );
            }
            Decision::Cancelled => tracing::warn!(
                "drain of node {} cancelled: the node goes back into rotation with its next heartbeat",
                self.node.id
            ),
            Decision::Unchanged | Decision::Refused(_) => return decision,
        }
        if let Err(e) = state::save(self.host, next.as_ref()) {
            tracing::warn!("drain: {e:#} (the drain goes on in memory)");
        }
        *self.shared.state.borrow_mut() = next;
        if !matches!(decision, Decision::Cancelled) {
            self.next_count = Instant::now();
            self.write_draining().await;
        }
        decision
    }

    async fn request(&mut self, req: state::Request) {
        let (event, what) = match &req.action {
            RequestAction::Drain { deadline, reason } => (
                Event::Trigger {
                    trigger: Trigger::Manual,
                    key: format!("manual:{}", req.id),
                    reason: reason.clone(),
                    deadline: SystemTime::now() + Duration::from_secs(*deadline),
                    lifecycle: false,
                },
                "drain",
            ),
            RequestAction::Cancel => (Event::Cancel, "cancel"),
        };
        let decision = self.event(event).await;
        let s = self.shared.state();
        let describe = |s: &DrainState| {
            format!(
                "node {} is draining ({}: {}); it leaves once empty, at the latest at {} ({} left)",
                self.node.id,
                s.trigger.name(),
                s.reason,
                humantime::format_rfc3339_seconds(s.deadline_time()),
                crate::human::show_duration(s.left(SystemTime::now()))
            )
        };
        let (ok, message) = match (&decision, &s) {
            (Decision::Refused(why), _) => (false, why.clone()),
            (Decision::Cancelled, _) => (
                true,
                format!(
                    "drain of node {} cancelled; it goes back into rotation with its next heartbeat",
                    self.node.id
                ),
            ),
            (_, Some(s)) if s.phase == Phase::Left => (
                what == "cancel",
                format!(
                    "node {} already left (drained {})",
                    self.node.id,
                    s.outcome.map_or("", |o| o.name())
                ),
            ),
            (Decision::Unchanged, Some(s)) => (true, format!("already: {}", describe(s))),
            (_, Some(s)) => (true, describe(s)),
            (_, None) => (false, "no drain".into()),
        };
        let answer = Answer {
            id: req.id,
            ok,
            message,
        };
        let mut v = serde_json::to_vec(&answer).expect("serialises");
        v.push(b'\n');
        if let Err(e) = self
            .host
            .write_atomic(Path::new(ANSWER_FILE), &v, private_meta(0o644))
        {
            tracing::warn!("drain: writing {ANSWER_FILE}: {e:#}");
        }
    }

    /// `draining` into the registry now, with the trigger, reason, deadline.
    async fn write_draining(&mut self) {
        let Some(f) = self.shared.fields() else {
            return;
        };
        let id = self.node.id.clone();
        let limit = self.deadlines.op;
        let shared = self.shared;
        let Some(reg) = self.registry().await else {
            return;
        };
        let _w = shared.write.lock().await;
        if shared.phase() != Some(Phase::Draining) {
            return;
        }
        match reg
            .set_drain_state(&id, NodeState::Draining, &f, limit)
            .await
        {
            Ok(()) => tracing::info!("node {id} is draining in the registry"),
            Err(e) => tracing::warn!(
                "drain: could not write `draining` to the registry now ({e}); the next heartbeat carries it"
            ),
        }
    }

    /// The end of a drain: AMS stopped (`stop_ams`), the node `left`, its
    /// `clusternode` row deleted, the lifecycle action completed.
    pub async fn leave(&mut self, outcome: Outcome, stop_ams: bool) {
        let Some(mut s) = self.shared.state() else {
            return;
        };
        tracing::warn!(
            "drain of node {} ends ({}): {}",
            self.node.id,
            outcome.name(),
            match outcome {
                Outcome::Empty => "no stream and no viewer left",
                Outcome::DeadlinePassed => "the budget ran out",
                Outcome::AmsDown => "AMS does not answer",
                Outcome::Shutdown => "the machine is shutting down",
            }
        );
        if stop_ams {
            let stop =
                systemd::command(SERVICE, ServiceAction::Stop).timeout(Duration::from_secs(90));
            match self.runner.run(&stop) {
                Ok(o) if o.success() => tracing::info!("stopped {SERVICE}"),
                Ok(o) => tracing::warn!("`{}` failed: {}", stop.display(), o.tail(2)),
                Err(e) => tracing::warn!("`{}` failed: {e:#}", stop.display()),
            }
        }
        s.phase = Phase::Left;
        s.outcome = Some(outcome);
        s.left_at = Some(crate::config::unix_now());
        s.unfinished = true;
        // From now on no heartbeat: the state is left.
        *self.shared.state.borrow_mut() = Some(s.clone());
        if let Err(e) = state::save(self.host, Some(&s)) {
            tracing::warn!("drain: {e:#}");
        }
        self.finish(s).await;
    }

    /// The steps after `left`: the registry, AMS's `clusternode` row, the
    /// lifecycle action, the cloud's events. `drain.json` says `unfinished`
    /// until they ran, so a reporter stopped in the middle finishes them
    /// when it stops or starts again.
    async fn finish(&mut self, mut s: DrainState) {
        let f = fields(&s);
        let id = self.node.id.clone();
        let limit = self.deadlines.op;
        let shared = self.shared;
        let node = self.node;
        if let Some(reg) = self.registry().await {
            let _w = shared.write.lock().await;
            let mut marked = false;
            for attempt in 0..3 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                match reg.set_drain_state(&id, NodeState::Left, &f, limit).await {
                    Ok(()) => {
                        marked = true;
                        break;
                    }
                    Err(e) => tracing::warn!("drain: marking node {id} left: {e}"),
                }
            }
            if marked {
                tracing::info!("node {id} is marked left");
            }
            match &node.private_ip {
                Some(ip) => {
                    let ip = ip.to_string();
                    match reg
                        .delete_in(super::CLUSTER_DB, super::CLUSTERNODE, doc! { "ip": &ip })
                        .await
                    {
                        Ok(n) => tracing::info!(
                            "deleted {n} row(s) of {ip} from AMS's {}.{}",
                            super::CLUSTER_DB,
                            super::CLUSTERNODE
                        ),
                        Err(e) => tracing::warn!(
                            "drain: could not delete this node's row from {}.{} ({e}); AMS's console shows it until it is removed",
                            super::CLUSTER_DB,
                            super::CLUSTERNODE
                        ),
                    }
                }
                None => tracing::warn!(
                    "drain: this node's private IPv4 is unknown: its {} row is left for AMS's console to show",
                    super::CLUSTERNODE
                ),
            }
        }
        if s.lifecycle.as_ref().is_some_and(|l| !l.completed) {
            let mut done = Completion::Failed { retry: true };
            for attempt in 0..3 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                done = self.lifecycle().complete().await;
                if !matches!(done, Completion::Failed { retry: true }) {
                    break;
                }
            }
            match done {
                Completion::Done | Completion::Nothing => {
                    if let Some(l) = s.lifecycle.as_mut() {
                        l.completed = true;
                    }
                }
                Completion::Failed { .. } => tracing::warn!(
                    "drain: the lifecycle action of node {id} was not completed: the instance waits for the hook's timeout before it terminates"
                ),
            }
        }
        self.acknowledge(&s).await;
        s.unfinished = false;
        *shared.state.borrow_mut() = Some(s.clone());
        if let Err(e) = state::save(self.host, Some(&s)) {
            tracing::warn!("drain: {e:#}");
        }
    }

    /// SIGTERM during a drain: the machine is going down (leave now,
    /// quickly, AMS is stopped by systemd itself), or only the reporter is
    /// stopped (the drain goes on when it starts again).
    pub async fn on_sigterm(&mut self) {
        let Some(s) = self.shared.state() else { return };
        if s.unfinished {
            // Stopped between `left` and the end of the last steps: they
            // run again, within the unit's TimeoutStopSec (15s).
            let limit = Duration::from_secs(12);
            if tokio::time::timeout(limit, self.finish(s)).await.is_err() {
                tracing::warn!(
                    "the drain's last steps took longer than {}: they run again when the reporter starts",
                    crate::human::show_duration(limit)
                );
            }
            return;
        }
        if s.phase != Phase::Draining {
            return;
        }
        if system_stopping(self.runner) {
            tracing::warn!("SIGTERM while draining, and the system is shutting down: leaving now");
            // Within the unit's TimeoutStopSec (15s).
            let limit = Duration::from_secs(12);
            if tokio::time::timeout(limit, self.leave(Outcome::Shutdown, false))
                .await
                .is_err()
            {
                tracing::warn!(
                    "leaving took longer than {}: stopped where it was",
                    crate::human::show_duration(limit)
                );
            }
        } else {
            tracing::warn!(
                "SIGTERM while draining: the reporter stops, the drain does not ({}: {}; deadline {}); it goes on when the reporter starts again, and the node stays `draining` meanwhile",
                s.trigger.name(),
                s.reason,
                humantime::format_rfc3339_seconds(s.deadline_time())
            );
        }
    }
}

/// `systemctl is-system-running` says `stopping`: a shutdown.
fn system_stopping(runner: &dyn CommandRunner) -> bool {
    let spec =
        CommandSpec::new("systemctl", &["is-system-running"]).timeout(Duration::from_secs(2));
    runner
        .run(&spec)
        .is_ok_and(|o| o.stdout.trim() == "stopping")
}
