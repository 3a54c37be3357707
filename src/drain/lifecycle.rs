//! The Auto Scaling lifecycle hook of a scale-in: which one (flags or
//! agent.toml, else `DescribeAutoScalingInstances` and
//! `DescribeLifecycleHooks` for the instance's group),
//! `RecordLifecycleActionHeartbeat` while the node empties (so the hook's
//! heartbeat timeout never cuts the drain short), `CompleteLifecycleAction`
//! with `CONTINUE` once it left. A missing IAM permission is one warning
//! saying what it costs, never a failure of the drain.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::cloud::aws::{Aws, AwsError, ErrorKind, TERMINATING};
use crate::cloud::ec2::Imds;

/// How the hook is found.
#[derive(Debug, Clone, Default)]
pub struct HookSettings {
    pub group: Option<String>,
    pub hook: Option<String>,
    /// `AMS_AGENT_AWS_ENDPOINT`: every AWS service at one URL (tests).
    pub endpoint: Option<String>,
}

/// An AWS failure of `action`, with what it costs.
fn aws_message(action: &str, e: &AwsError, cost: &str) -> String {
    match e.kind {
        ErrorKind::Denied => format!(
            "the instance role may not call autoscaling:{action} ({e}); {cost} (docs/scale-in.md lists the IAM policy)"
        ),
        _ => format!("autoscaling:{action} failed ({e}); {cost}"),
    }
}

/// What `CompleteLifecycleAction` came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Sent and accepted.
    Done,
    /// Nothing waited: no hook, or no active action (completed already, or
    /// timed out).
    Nothing,
    /// Not completed; `retry` when trying again may help.
    Failed { retry: bool },
}

pub struct Lifecycle {
    imds: Arc<Imds>,
    settings: HookSettings,
    instance: String,
    aws: Option<Aws>,
    pub group: Option<String>,
    pub hook: Option<String>,
    heartbeat_timeout: Option<Duration>,
    next_heartbeat: Option<Instant>,
    heartbeats_denied: bool,
    resolved: bool,
    warned: HashSet<String>,
}

impl Lifecycle {
    pub fn new(imds: Arc<Imds>, settings: HookSettings, instance: &str) -> Self {
        Lifecycle {
            imds,
            group: settings.group.clone(),
            hook: settings.hook.clone(),
            settings,
            instance: instance.to_string(),
            aws: None,
            heartbeat_timeout: None,
            next_heartbeat: None,
            heartbeats_denied: false,
            resolved: false,
            warned: HashSet::new(),
        }
    }

    /// One warning per kind of trouble, then quiet.
    fn warn_once(&mut self, key: &str, message: String) {
        if self.warned.insert(key.to_string()) {
            tracing::warn!("{message}");
        } else {
            tracing::debug!("{message}");
        }
    }

    fn warn_aws(&mut self, action: &str, e: &AwsError, cost: &str) {
        self.warn_once(action, aws_message(action, e, cost));
    }

    async fn client(&mut self) -> Option<&Aws> {
        if self.aws.is_none() {
            match Aws::new(self.imds.clone(), self.settings.endpoint.clone()).await {
                Ok(a) => self.aws = Some(a),
                Err(e) => {
                    self.warn_once(
                        "aws",
                        format!("cannot call AWS with the instance role ({e}); the lifecycle hook runs to its timeout"),
                    );
                    return None;
                }
            }
        }
        self.aws.as_ref()
    }

    /// Finds the group and the hook (once).
    pub async fn resolve(&mut self) {
        if self.resolved {
            return;
        }
        let instance = self.instance.clone();
        if self.client().await.is_none() {
            return;
        }
        let mut group = self.group.clone();
        if group.is_none() {
            let aws = self.aws.as_ref().expect("built above");
            match aws.autoscaling_group_of(&instance).await {
                Ok(g) => group = g,
                Err(e) => {
                    self.warn_aws(
                        "DescribeAutoScalingInstances",
                        &e,
                        "the group is unknown, so the hook cannot be completed: set [drain] autoscaling_group and lifecycle_hook in agent.toml",
                    );
                    if !e.transient() {
                        self.resolved = true;
                    }
                    return;
                }
            }
        }
        let Some(group_name) = group.clone() else {
            self.warn_once(
                "group",
                format!(
                    "instance {instance} is in no Auto Scaling group; no lifecycle hook to complete"
                ),
            );
            self.resolved = true;
            return;
        };
        self.group = Some(group_name.clone());
        let aws = self.aws.as_ref().expect("built above");
        match aws.lifecycle_hooks(&group_name).await {
            Ok(hooks) => {
                let wanted = self.hook.clone();
                let found = hooks.iter().find(|h| match &wanted {
                    Some(name) => &h.name == name,
                    None => h.transition == TERMINATING,
                });
                match found {
                    Some(h) => {
                        self.hook = Some(h.name.clone());
                        self.heartbeat_timeout = h.heartbeat_timeout;
                        tracing::info!(
                            "lifecycle hook {} of group {}: heartbeat timeout {}, default result {}",
                            crate::human::escape(&h.name),
                            crate::human::escape(&group_name),
                            h.heartbeat_timeout
                                .map_or("unknown".into(), crate::human::show_duration),
                            crate::human::escape(h.default_result.as_deref().unwrap_or("unknown"))
                        );
                    }
                    None if wanted.is_some() => self.warn_once(
                        "hook",
                        format!(
                            "group {group_name} has no lifecycle hook {}; completing it anyway at the end",
                            wanted.unwrap_or_default()
                        ),
                    ),
                    None => self.warn_once(
                        "hook",
                        format!("group {group_name} has no lifecycle hook for {TERMINATING}: the instance does not wait for the drain"),
                    ),
                }
                self.resolved = true;
            }
            Err(e) => {
                let transient = e.transient();
                self.warn_aws(
                    "DescribeLifecycleHooks",
                    &e,
                    "the hook's timeout is unknown (heartbeats every 15s); name it with [drain] lifecycle_hook",
                );
                if !transient {
                    self.resolved = true;
                }
            }
        }
    }

    /// How often a heartbeat is sent: a third of the hook's timeout.
    fn heartbeat_every(&self) -> Duration {
        self.heartbeat_timeout
            .map_or(Duration::from_secs(15), |t| t / 3)
            .clamp(Duration::from_secs(10), Duration::from_secs(600))
    }

    /// The latest the drain may end when heartbeats are refused: before
    /// the hook's own timeout (counted from `since`).
    pub fn cap(&self, since: SystemTime) -> Option<SystemTime> {
        if !self.heartbeats_denied {
            return None;
        }
        self.heartbeat_timeout
            .map(|t| since + t.saturating_sub(super::notices::SPOT_MARGIN))
    }

    /// Sends a heartbeat when one is due.
    pub async fn tick(&mut self) {
        self.resolve().await;
        let (Some(group), Some(hook)) = (self.group.clone(), self.hook.clone()) else {
            return;
        };
        if self.heartbeats_denied {
            return;
        }
        if self.next_heartbeat.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let instance = self.instance.clone();
        let every = self.heartbeat_every();
        let Some(aws) = self.client().await else {
            return;
        };
        match aws.lifecycle_heartbeat(&group, &hook, &instance).await {
            Ok(()) => {
                tracing::info!(
                    "lifecycle hook {hook}: heartbeat sent (the next in {})",
                    crate::human::show_duration(every)
                );
                self.next_heartbeat = Some(Instant::now() + every);
            }
            Err(e) => {
                if e.kind == ErrorKind::Denied {
                    self.heartbeats_denied = true;
                }
                let cost = format!(
                    "the hook runs to its timeout ({}) and the drain ends before it",
                    self.heartbeat_timeout
                        .map_or("unknown".into(), crate::human::show_duration)
                );
                self.warn_aws("RecordLifecycleActionHeartbeat", &e, &cost);
                self.next_heartbeat = Some(Instant::now() + every);
            }
        }
    }

    /// `CompleteLifecycleAction CONTINUE`.
    pub async fn complete(&mut self) -> Completion {
        self.resolve().await;
        let (Some(group), Some(hook)) = (self.group.clone(), self.hook.clone()) else {
            if self.resolved {
                // No group, no hook: nothing waits for this instance.
                return Completion::Nothing;
            }
            tracing::warn!(
                "the lifecycle hook of {} is still unknown (AWS did not answer)",
                self.instance
            );
            return Completion::Failed { retry: true };
        };
        let instance = self.instance.clone();
        if self.client().await.is_none() {
            tracing::warn!(
                "cannot call AWS with the instance role to complete the lifecycle action of {instance}"
            );
            return Completion::Failed { retry: true };
        }
        let aws = self.aws.as_ref().expect("built above");
        match aws
            .complete_lifecycle_action(&group, &hook, &instance, "CONTINUE")
            .await
        {
            Ok(()) => {
                tracing::info!(
                    "CompleteLifecycleAction CONTINUE sent for {instance} (group {}, hook {}): the instance terminates now",
                    crate::human::escape(&group),
                    crate::human::escape(&hook)
                );
                Completion::Done
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                tracing::info!(
                    "no active lifecycle action for {instance} in hook {} (already completed, or it timed out)",
                    crate::human::escape(&hook)
                );
                Completion::Nothing
            }
            Err(e) => {
                let retry = e.transient();
                // Every time: this is the step that ends the instance's wait.
                tracing::warn!(
                    "{}",
                    aws_message(
                        "CompleteLifecycleAction",
                        &e,
                        "the instance waits for the hook's timeout before it terminates"
                    )
                );
                Completion::Failed { retry }
            }
        }
    }
}
