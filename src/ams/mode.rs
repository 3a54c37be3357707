//! The standalone/cluster mode switch: `change_server_mode.sh`, as a plan.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::etc_hosts;
use super::files::{Kind, Secret, change, load, load_existing, read_text, refuse_mount_point};
use super::jee;
use super::layout::{self, AmsLayout};
use super::properties::Properties;
use crate::ams::db::{DbKind, DbUrl};
use crate::bail_usage;
use crate::host::fs::{STATE_DIR, private_meta, temp_path_for};
use crate::host::systemd::ServiceAction;
use crate::host::txn;
use crate::host::{Host, net};
use crate::plan::{FileChange, Plan, Step};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Standalone,
    Cluster,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Cluster => "cluster",
        }
    }
}

/// What to restart and wait for after the files are switched.
#[derive(Debug, Clone)]
pub struct Restart {
    pub unit: String,
    pub url: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ModeSwitch {
    pub mode: Mode,
    pub db: DbUrl,
    pub layout: AmsLayout,
    /// The node's private IPv4 for /etc/hosts; None = the default route's.
    pub ip: Option<Ipv4Addr>,
    pub restart: Option<Restart>,
}

/// Set while switched files wait for their AMS restart, so a run that was
/// interrupted between the two still restarts AMS next time.
pub fn restart_marker() -> PathBuf {
    Path::new(STATE_DIR).join("restart-pending")
}

/// The mode the AMS install is in now, read from its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentMode {
    pub mode: Mode,
    /// `db.type` of the `root` application (the console), else the first.
    pub db_type: Option<String>,
    pub cluster_db: Option<String>,
    pub node_group: Option<String>,
}

pub fn current(host: &Host, layout: &AmsLayout) -> Result<CurrentMode> {
    layout.check(host)?;
    let xml = read_text(host, &layout.jee_container(), Kind::Xml)?;
    let mode = match jee::state(&xml)? {
        jee::BlockState::Enabled => Mode::Cluster,
        _ => Mode::Standalone,
    };
    let red5 = Properties::parse(&read_text(
        host,
        &layout.red5_properties(),
        Kind::Properties,
    )?);
    let apps = layout.applications(host)?;
    let console = apps.iter().find(|a| *a == "root").or(apps.first());
    let db_type = match console {
        Some(app) => Properties::parse(&read_text(
            host,
            &layout.webapp_properties(app),
            Kind::Properties,
        )?)
        .get("db.type"),
        None => None,
    };
    Ok(CurrentMode {
        mode,
        db_type,
        cluster_db: red5.get("clusterdb.host").map(|h| crate::uri::redact(&h)),
        node_group: red5.get("nodeGroup"),
    })
}

/// The mode AMS is in, from `conf/jee-container.xml` alone (what the
/// reporter reads every minute, or when the file changes).
pub fn read_mode(host: &Host, layout: &AmsLayout) -> Result<Mode> {
    let xml = read_text(host, &layout.jee_container(), Kind::Xml)?;
    Ok(match jee::state(&xml)? {
        jee::BlockState::Enabled => Mode::Cluster,
        _ => Mode::Standalone,
    })
}

/// `nodeGroup` of `conf/red5.properties` (None when it has none).
pub fn read_node_group(host: &Host, layout: &AmsLayout) -> Result<Option<String>> {
    Ok(Properties::parse(&read_text(
        host,
        &layout.red5_properties(),
        Kind::Properties,
    )?)
    .get("nodeGroup"))
}

/// Computes the plan of a mode switch. Reads only; changes nothing.
pub fn plan(host: &Host, sw: &ModeSwitch) -> Result<Plan> {
    plan_with(host, sw, Vec::new())
}

/// [`plan`], with files of the caller's that land in the same transaction
/// as AMS's (`mode` keeps agent.toml's recorded mode in step); they never
/// cause an AMS restart.
pub fn plan_with(host: &Host, sw: &ModeSwitch, also: Vec<FileChange>) -> Result<Plan> {
    plan_extra(
        host,
        sw,
        Extras {
            also,
            node_group: None,
        },
    )
}

/// What a caller adds to a mode switch, in the same transaction.
#[derive(Debug, Default)]
pub struct Extras {
    /// Files of the caller's (they never cause an AMS restart).
    pub also: Vec<FileChange>,
    /// AMS's node group: `nodeGroup` of conf/red5.properties (AMS's
    /// `ServerSettings`, default `default`), set with the cluster keys.
    pub node_group: Option<String>,
}

/// AMS's node group when red5.properties names none (its
/// `ServerSettings.DEFAULT_NODE_GROUP`).
pub const DEFAULT_NODE_GROUP: &str = "default";

/// A node group AMS can carry: 1 to 64 letters, digits, `-`, `_` or `.`,
/// starting with a letter or digit (it lands in red5.properties and in
/// every balancer's configuration as it is).
pub fn valid_node_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 64
        && g.starts_with(|c: char| c.is_ascii_alphanumeric())
        && g.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// [`plan_with`], with a node group as well.
pub fn plan_extra(host: &Host, sw: &ModeSwitch, extras: Extras) -> Result<Plan> {
    let Extras { also, node_group } = extras;
    if let Some(g) = &node_group {
        if !valid_node_group(g) {
            bail_usage!(
                "node group `{}` must be 1-64 letters, digits, `-`, `_` or `.`, starting with a letter or digit",
                g.escape_debug()
            );
        }
    }
    if sw.mode == Mode::Cluster && sw.db.kind == DbKind::MapDb {
        bail_usage!("cluster mode needs a MongoDB or Redis database");
    }
    let layout = &sw.layout;
    layout.check(host)?;
    let apps = layout.applications(host)?;
    if apps.is_empty() {
        bail_usage!(
            "no application under {} has WEB-INF/red5-web.properties; is --ams-home right?",
            layout.webapps().display()
        );
    }
    let secret = if sw.db.has_password() {
        let account = layout::service_account(host)?;
        if account.is_none() {
            tracing::warn!(
                "no `{}` account in /etc/passwd: the AMS configuration files keep their modes, so the MongoDB password in them stays readable by every local user",
                layout::SERVICE_USER
            );
        }
        Secret::ReadableBy(account)
    } else {
        Secret::No
    };
    let mut changes = Vec::new();

    // conf/red5.properties: the cluster database, and never the global IP.
    let red5_path = layout.red5_properties();
    refuse_mount_point(host, &red5_path)?;
    let red5_now = load_existing(host, &red5_path, Kind::Properties)?;
    let mut red5 = Properties::parse(&red5_now.text);
    // Credentials live in the URI (percent-encoded); the separate keys are
    // what made mongodb+srv:// fail, so they are cleared.
    red5.set_all(&[
        ("clusterdb.host", &sw.db.url),
        ("clusterdb.user", ""),
        ("clusterdb.password", ""),
        ("useGlobalIp", "false"),
    ])?;
    if let Some(g) = &node_group {
        red5.set_all(&[("nodeGroup", g)])?;
    }
    changes.push(change(red5_now, red5.to_text(), secret)?);

    // conf/jee-container.xml: the cluster blocks.
    let jee_path = layout.jee_container();
    refuse_mount_point(host, &jee_path)?;
    let jee_now = load_existing(host, &jee_path, Kind::Xml)?;
    let new_xml = jee::set_cluster(&jee_now.text, sw.mode == Mode::Cluster)
        .with_context(|| format!("switching {}", jee_path.display()))?;
    changes.push(change(jee_now, new_xml, Secret::No)?);

    // Every application, the console (`root`) included.
    let mounts = host.mounted_paths();
    for app in &apps {
        let p = layout.webapp_properties(app);
        if mounts.contains(&host.path(&p)) {
            bail!(
                "{} is a mount point of its own (a bind-mounted file?), which cannot be replaced atomically; mount its folder instead; nothing was changed",
                p.display()
            );
        }
        let now = load_existing(host, &p, Kind::Properties)?;
        let mut props = Properties::parse(&now.text);
        props.set_all(&[
            ("db.type", sw.db.kind.db_type()),
            ("db.host", &sw.db.url),
            ("db.user", ""),
            ("db.password", ""),
        ])?;
        changes.push(change(now, props.to_text(), secret)?);
    }

    // /etc/hosts: this node's name resolves to its private address.
    let hostname = layout::node_hostname(host)?;
    if !etc_hosts::valid_hostname(&hostname) || hostname.eq_ignore_ascii_case("localhost") {
        bail!(
            "this host's name `{hostname}` cannot be pinned in /etc/hosts; give the host a proper name first (hostnamectl set-hostname)"
        );
    }
    let ip = match sw.ip {
        Some(ip) => ip,
        None => net::default_route_ipv4(host)?,
    };
    let hosts_path = Path::new("/etc/hosts");
    if host.is_mount_point(hosts_path) {
        // A container: the runtime owns /etc/hosts (a bind mount that no
        // rename can replace); pin the name with its --add-host instead.
        tracing::warn!(
            "/etc/hosts is a mount (a container?): not pinning {hostname} to {ip}; let the container runtime map it (e.g. docker run --add-host {hostname}:{ip})"
        );
    } else {
        let hosts_now = load(host, hosts_path, Kind::Hosts)?;
        let pinned = etc_hosts::pin_hostname(&hosts_now.text, &hostname, ip);
        changes.push(change(hosts_now, pinned, Secret::No)?);
    }

    let mut plan = Plan::new(format!(
        "switch Ant Media Server at {} to {} mode ({} {})",
        layout.home.display(),
        sw.mode.name(),
        sw.db.kind.db_type(),
        sw.db.redacted()
    ));
    let files_change = changes.iter().any(|c| !c.is_noop());
    // Temp files left by a run that crashed before its commit point (they
    // may hold a password): removed with this change.
    if !txn::pending(host) {
        let strays: Vec<FileChange> = changes
            .iter()
            .map(|c| temp_path_for(&c.path))
            .filter(|t| host.exists(t))
            .map(FileChange::remove_marker)
            .collect();
        changes.extend(strays);
    }
    let marker_set = host.exists(&restart_marker());
    changes.extend(also);
    if let Some(restart) = &sw.restart {
        if files_change && !marker_set {
            changes.push(FileChange {
                path: restart_marker(),
                before: None,
                after: Some(b"switched files wait for an AMS restart\n".to_vec()),
                meta_before: None,
                meta: private_meta(0o600),
                internal: true,
            });
        }
        plan.files("switch the AMS configuration files together", changes);
        if files_change || marker_set {
            plan.push(Step::Service {
                unit: restart.unit.clone(),
                action: ServiceAction::Restart,
            });
            plan.push(Step::WaitHttp {
                what: "Ant Media Server".into(),
                url: restart.url.clone(),
                timeout: restart.timeout,
            });
            plan.files(
                "record that AMS runs the new configuration",
                vec![FileChange::remove_marker(restart_marker())],
            );
        }
    } else {
        plan.files("switch the AMS configuration files together", changes);
    }
    Ok(plan)
}

pub fn default_restart(timeout: Duration) -> Restart {
    Restart {
        unit: layout::SERVICE.into(),
        url: layout::DEFAULT_HTTP_URL.into(),
        timeout,
    }
}
