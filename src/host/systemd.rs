//! systemd service actions through the command runner.

use std::time::Duration;

use anyhow::{Result, bail};

use super::runner::{CommandRunner, CommandSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    Restart,
    /// Restart only if it runs; a unit that is not installed has nothing
    /// to restart.
    TryRestart,
    Reload,
    Start,
    Stop,
    Enable,
    EnableNow,
    DisableNow,
}

impl ServiceAction {
    fn args(self) -> &'static [&'static str] {
        match self {
            ServiceAction::Restart => &["restart"],
            ServiceAction::TryRestart => &["try-restart"],
            ServiceAction::Reload => &["reload"],
            ServiceAction::Start => &["start"],
            ServiceAction::Stop => &["stop"],
            ServiceAction::Enable => &["enable"],
            ServiceAction::EnableNow => &["enable", "--now"],
            ServiceAction::DisableNow => &["disable", "--now"],
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            ServiceAction::Restart => "restart",
            ServiceAction::TryRestart => "restart (if it runs)",
            ServiceAction::Reload => "reload",
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Enable => "enable",
            ServiceAction::EnableNow => "enable and start",
            ServiceAction::DisableNow => "stop and disable",
        }
    }
}

pub fn command(unit: &str, action: ServiceAction) -> CommandSpec {
    let mut args: Vec<&str> = action.args().to_vec();
    args.push(unit);
    CommandSpec::new("systemctl", &args).timeout(Duration::from_secs(180))
}

/// Runs `systemctl <action> <unit>`, turning systemd's answers into clear
/// messages (a unit that does not exist is the common one).
pub fn act(runner: &dyn CommandRunner, unit: &str, action: ServiceAction) -> Result<()> {
    let spec = command(unit, action);
    let out = runner.run(&spec)?;
    if out.success() {
        return Ok(());
    }
    let stderr = out.stderr.trim();
    // systemctl exits 5 with "Unit x.service not found." for unknown units.
    if out.code == Some(5) || stderr.contains("not found") || stderr.contains("not loaded") {
        if action == ServiceAction::TryRestart {
            tracing::info!("{unit} is not installed: nothing to restart");
            return Ok(());
        }
        bail!(
            "service {unit} is not installed on this host (systemctl: {}){}",
            if stderr.is_empty() {
                "unit not found"
            } else {
                stderr
            },
            if unit == "antmedia" {
                "; is Ant Media Server installed here?"
            } else {
                ""
            }
        );
    }
    bail!(
        "`{}` failed with exit code {}: {}",
        spec.display(),
        out.code
            .map_or("none (killed)".to_string(), |c| c.to_string()),
        if stderr.is_empty() {
            "no message"
        } else {
            stderr
        }
    )
}

/// Whether a unit is active (`systemctl is-active`), for status reports.
pub fn is_active(runner: &dyn CommandRunner, unit: &str) -> Result<bool> {
    let spec = CommandSpec::new("systemctl", &["is-active", "--quiet", unit])
        .timeout(Duration::from_secs(10));
    Ok(runner.run(&spec)?.success())
}
