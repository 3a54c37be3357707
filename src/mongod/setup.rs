//! The `setup mongo` plan, in two parts: installing mongodb-org (key,
//! repository, apt), then configuring it (limits, huge pages, mongod.conf,
//! the service, the admin user, authorization). The second part is planned
//! again after the first is applied, from the files the package installed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::admin::{AdminLogin, Created, LocalMongod};
use super::conf::{self, MONGOD_CONF, PACKAGED_CONF, Wanted};
use super::os::Distro;
use super::repo::RepoSource;
use super::tuning;
use crate::bail_usage;
use crate::host::systemd::ServiceAction;
use crate::host::{CommandRunner, CommandSpec, Host};
use crate::plan::{Action, ApplyCtx, FileChange, Plan, Step};

pub const PACKAGE: &str = "mongodb-org";
pub const SERVICE: &str = "mongod";
/// Where a generated admin password is kept (0600, root).
pub const ADMIN_PASSWORD_FILE: &str = "/etc/ams-agent/mongo-admin-password";
/// The generated password while mongod has not confirmed the user yet.
pub const ADMIN_PASSWORD_PENDING: &str = "/etc/ams-agent/.mongo-admin-password.pending";

/// How long apt may wait for another apt (unattended-upgrades at first
/// boot) to release the dpkg lock.
const APT_LOCK_WAIT_SECS: u32 = 300;

#[derive(Debug, Clone)]
pub struct Request {
    pub distro: Distro,
    pub source: RepoSource,
    pub bind_ip: Vec<String>,
    pub login: AdminLogin,
    /// Write the (generated) password to [`ADMIN_PASSWORD_FILE`] first.
    pub save_password: bool,
    /// How long to wait for mongod to answer after a (re)start.
    pub wait: Duration,
    /// How long fetching the signing key may take.
    pub key_timeout: Duration,
}

impl Request {
    pub fn series(&self) -> &str {
        &self.source.series
    }
}

/// mongodb-org as dpkg knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Package {
    Missing,
    Installed { version: String },
}

pub fn package_state(runner: &dyn CommandRunner) -> Result<Package> {
    let spec = CommandSpec::new("dpkg-query", &["-W", "-f=${Status}\\t${Version}", PACKAGE])
        .timeout(Duration::from_secs(30));
    let out = runner
        .run(&spec)
        .context("asking dpkg whether mongodb-org is installed")?;
    if !out.success() {
        return Ok(Package::Missing);
    }
    let (status, version) = out.stdout.trim().split_once('\t').unwrap_or(("", ""));
    if status.ends_with(" installed") && !version.is_empty() {
        Ok(Package::Installed {
            version: version.to_string(),
        })
    } else {
        Ok(Package::Missing)
    }
}

fn apt(args: &[&str], timeout: Duration) -> CommandSpec {
    let lock = format!("DPkg::Lock::Timeout={APT_LOCK_WAIT_SECS}");
    let mut all = vec!["-o", lock.as_str()];
    all.extend_from_slice(args);
    CommandSpec::new("apt-get", &all)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .timeout(timeout)
}

/// Part one: the keyring, the sources line, `apt-get update`, `apt-get
/// install`. The key is fetched when the plan is applied, so a dry run
/// needs no network.
pub fn plan_install(host: &Host, req: &Request, package: &Package) -> Result<Plan> {
    let mut plan = Plan::new(format!("install MongoDB {}", req.series()));
    if let Package::Installed { version } = package {
        if !version.starts_with(&format!("{}.", req.series())) {
            bail_usage!(
                "mongodb-org {version} is installed; ams-agent does not upgrade across series (it needs featureCompatibilityVersion steps); pass --mongodb-version {} to configure the installed one",
                version.split('.').take(2).collect::<Vec<_>>().join(".")
            );
        }
    }
    let list_path = req.source.list_path();
    let keyring_path = req.source.keyring_path();
    let list = req.source.list_file(&req.distro).into_bytes();
    let list_same = host.read_optional(&list_path)?.as_deref() == Some(list.as_slice());
    let keyring_present = host
        .read_optional(&keyring_path)?
        .is_some_and(|k| super::repo::to_keyring(&k).is_ok());
    // An installed package needs no repository work: a host set up by
    // hand (another list file) or offline stays as it is.
    let repo_changed = *package == Package::Missing && !(list_same && keyring_present);
    if repo_changed {
        // The keyring first: apt never sees the line without its key.
        plan.push(Step::Action(Arc::new(InstallKeyring {
            url: req.source.key_url.clone(),
            path: keyring_path,
            timeout: req.key_timeout,
        })));
        plan.files(
            format!("add MongoDB {}'s apt repository", req.series()),
            vec![FileChange::write(host, &list_path, list, 0o644)?],
        );
    }
    if repo_changed || *package == Package::Missing {
        plan.push(Step::Command {
            what: "refreshing the package lists".into(),
            spec: apt(&["update", "-q"], Duration::from_secs(600)),
        });
    }
    if *package == Package::Missing {
        plan.push(Step::Command {
            what: format!("installing {PACKAGE}"),
            spec: apt(
                &[
                    "install",
                    "-y",
                    "-q",
                    "-o",
                    "Dpkg::Options::=--force-confdef",
                    "-o",
                    "Dpkg::Options::=--force-confold",
                    PACKAGE,
                ],
                Duration::from_secs(1200),
            ),
        });
    }
    Ok(plan)
}

fn unit_state(runner: &dyn CommandRunner, verb: &str, unit: &str) -> bool {
    let spec =
        CommandSpec::new("systemctl", &[verb, "--quiet", unit]).timeout(Duration::from_secs(30));
    runner.run(&spec).is_ok_and(|o| o.success())
}

/// Part two: limits, huge pages, mongod.conf, the service, the admin user,
/// authorization. `installed` says whether the package is there (before it
/// is, mongod.conf is shown as the package ships it).
pub fn plan_configure(
    host: &Host,
    runner: &dyn CommandRunner,
    req: &Request,
    installed: bool,
) -> Result<Plan> {
    let mut plan = Plan::new(format!("configure mongod {}", req.series()));

    let units_before = plan.steps.len();
    plan.files(
        "raise mongod's limits",
        vec![
            FileChange::write(
                host,
                Path::new(tuning::LIMITS_DROP_IN),
                tuning::limits_drop_in().into_bytes(),
                0o644,
            )?,
            FileChange::write(
                host,
                Path::new(tuning::LIMITS_D),
                tuning::limits_d().into_bytes(),
                0o644,
            )?,
        ],
    );
    let limits_changed = plan.steps.len() > units_before;
    let thp_before = plan.steps.len();
    plan.files(
        format!(
            "transparent huge pages as MongoDB {} recommends",
            req.series()
        ),
        vec![FileChange::write(
            host,
            Path::new(tuning::THP_UNIT),
            tuning::thp_unit(req.series()).into_bytes(),
            0o644,
        )?],
    );
    let thp_changed = plan.steps.len() > thp_before;
    if limits_changed || thp_changed {
        plan.push(Step::Command {
            what: "reloading systemd units".into(),
            spec: CommandSpec::new("systemctl", &["daemon-reload"])
                .timeout(Duration::from_secs(60)),
        });
    }
    // Only when the unit is new or changed: a kernel that refuses the
    // setting (read-only sysfs in a container) must not make every later
    // run fail or plan again.
    if thp_changed {
        plan.push(Step::Action(Arc::new(ThpNow {
            in_effect: tuning::thp_in_effect(host, req.series()),
        })));
    }

    let conf_path = Path::new(MONGOD_CONF);
    let (conf_text, meta) = match host.read_with_meta(conf_path, crate::host::fs::Cap::CONFIG)? {
        Some((bytes, meta)) => (
            String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("{MONGOD_CONF} is not UTF-8 text"))?,
            Some(meta),
        ),
        None if !installed => (PACKAGED_CONF.to_string(), None),
        None => anyhow::bail!(
            "{MONGOD_CONF} is missing although {PACKAGE} is installed; reinstall it with `apt-get install --reinstall -o Dpkg::Options::=--force-confmiss mongodb-org-server`"
        ),
    };
    let want = Wanted {
        bind_ip: req.bind_ip.clone(),
        authorization: true,
    };
    let edited = conf::edit(&conf_text, &want).with_context(|| format!("editing {MONGOD_CONF}"))?;
    let conf_changed = edited != conf_text;
    if conf_changed {
        let before = Some(conf_text.clone().into_bytes());
        plan.files(
            format!(
                "{MONGOD_CONF}: bindIp {}, authorization enabled",
                req.bind_ip.join(",")
            ),
            vec![FileChange {
                path: conf_path.to_path_buf(),
                before,
                after: Some(edited.clone().into_bytes()),
                meta_before: meta,
                meta: meta.unwrap_or(crate::host::fs::private_meta(0o644)),
                internal: false,
            }],
        );
    }
    let port = conf::current(&edited)?.port;
    let mongod = LocalMongod::new(port);

    let enabled = installed && unit_state(runner, "is-enabled", SERVICE);
    let active = installed && unit_state(runner, "is-active", SERVICE);
    let service = |action| Step::Service {
        unit: SERVICE.into(),
        action,
    };
    let started = if !active {
        plan.push(service(if enabled {
            ServiceAction::Start
        } else {
            ServiceAction::EnableNow
        }));
        true
    } else {
        if !enabled {
            plan.push(service(ServiceAction::Enable));
        }
        if conf_changed || limits_changed {
            plan.push(service(ServiceAction::Restart));
        }
        conf_changed || limits_changed
    };
    let admin_ready = !started && admin_in_place(&mongod, &req.login, req.wait);
    if started {
        plan.push(Step::Action(Arc::new(WaitMongod {
            mongod: mongod.clone(),
            timeout: req.wait,
        })));
    }
    if !admin_ready {
        plan.push(Step::Action(Arc::new(EnsureAdmin {
            mongod: mongod.clone(),
            login: req.login.clone(),
            save: req.save_password,
        })));
        plan.push(Step::Action(Arc::new(VerifyAuth {
            mongod,
            login: req.login.clone(),
        })));
    }
    Ok(plan)
}

/// Whether the running mongod already refuses anonymous commands and lets
/// the admin in as root: then there is nothing to do. A dry run asks too
/// (over loopback, reading only), so that it shows the plan the real run
/// makes; the question is announced and bounded by `wait` (--mongo-wait).
fn admin_in_place(mongod: &LocalMongod, login: &AdminLogin, wait: Duration) -> bool {
    let at = format!("{}:{}", mongod.host, mongod.port);
    let wait_shown = crate::human::show_duration(wait);
    tracing::info!(
        "asking the running mongod at {at} whether the admin user `{}` is in place and anonymous commands are refused (up to {wait_shown}, --mongo-wait)",
        login.user
    );
    let Ok(rt) = crate::host::runtime() else {
        return false;
    };
    let start = std::time::Instant::now();
    let left = || {
        wait.saturating_sub(start.elapsed())
            .max(Duration::from_millis(100))
    };
    let asked = rt.block_on(async {
        // A little grace so a command's own deadline reports first.
        tokio::time::timeout(wait + Duration::from_millis(500), async {
            if !mongod.refuses_anonymous(left()).await? {
                return Ok(Some("it answers anonymous commands"));
            }
            if !mongod.admin_is_root(login, left()).await? {
                return Ok(Some("the admin user lacks the root role"));
            }
            Ok::<_, crate::mongo::error::RegistryError>(None)
        })
        .await
    });
    let why = match asked {
        Ok(Ok(None)) => {
            tracing::info!("mongod at {at}: the admin user is in place");
            return true;
        }
        Ok(Ok(Some(why))) => why.to_string(),
        Ok(Err(e)) if e.failure != crate::mongo::error::Failure::Timeout => e.to_string(),
        _ => format!("mongod at {at} did not answer within {wait_shown}"),
    };
    tracing::info!("the admin user is not in place yet ({why}): its steps are planned");
    false
}

#[derive(Debug)]
struct InstallKeyring {
    url: String,
    path: std::path::PathBuf,
    timeout: Duration,
}

impl Action for InstallKeyring {
    fn summary(&self) -> String {
        format!(
            "fetch MongoDB's signing key from {} into {}",
            self.url,
            self.path.display()
        )
    }

    fn apply(&self, ctx: &ApplyCtx) -> Result<()> {
        let key = crate::host::runtime()?
            .block_on(super::repo::fetch_keyring(&self.url, self.timeout))?;
        if let Some(dir) = self.path.parent() {
            ctx.host.create_dir_all(dir, 0o755)?;
        }
        ctx.host
            .write_atomic(&self.path, &key, crate::host::fs::private_meta(0o644))
    }
}

/// How long one admin command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(20);

/// Enables the huge-page unit for every boot and, when the kernel's values
/// differ, runs it now. Best effort: a kernel that refuses (read-only
/// sysfs in a container) gets a warning, not a failed setup.
#[derive(Debug)]
struct ThpNow {
    in_effect: bool,
}

impl Action for ThpNow {
    fn summary(&self) -> String {
        let unit = tuning::THP_UNIT_NAME;
        if self.in_effect {
            format!("enable {unit} (the kernel already has its values)")
        } else {
            format!("enable and run {unit}")
        }
    }

    fn apply(&self, ctx: &ApplyCtx) -> Result<()> {
        let unit = tuning::THP_UNIT_NAME;
        let mut actions = vec![ServiceAction::Enable];
        if !self.in_effect {
            actions.push(ServiceAction::Restart);
        }
        for action in actions {
            if let Err(e) = crate::host::systemd::act(ctx.runner, unit, action) {
                tracing::warn!(
                    "transparent huge pages: {e:#}; mongod works, but not as MongoDB recommends until the kernel takes the setting"
                );
                break;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct WaitMongod {
    mongod: LocalMongod,
    timeout: Duration,
}

impl Action for WaitMongod {
    fn summary(&self) -> String {
        format!(
            "wait up to {} for mongod to answer on {}:{}",
            humantime::format_duration(self.timeout),
            self.mongod.host,
            self.mongod.port
        )
    }

    fn apply(&self, _: &ApplyCtx) -> Result<()> {
        crate::host::runtime()?.block_on(self.mongod.wait_ready(self.timeout))
    }
}

#[derive(Debug)]
struct EnsureAdmin {
    mongod: LocalMongod,
    login: AdminLogin,
    /// Keep the (generated) password in [`ADMIN_PASSWORD_FILE`].
    save: bool,
}

impl Action for EnsureAdmin {
    fn summary(&self) -> String {
        format!(
            "create the admin user {} (role root, SCRAM-SHA-256) unless it exists{}",
            self.login.user,
            if self.save {
                format!("; keep its generated password 0600 in {ADMIN_PASSWORD_FILE}")
            } else {
                String::new()
            }
        )
    }

    fn apply(&self, ctx: &ApplyCtx) -> Result<()> {
        // A generated password is kept only once mongod took it: first as a
        // pending file (a crash right after createUser must not lose it),
        // renamed into place when the user exists.
        let pending = Path::new(ADMIN_PASSWORD_PENDING);
        if self.save {
            ctx.host
                .create_dir_all(Path::new(crate::config::CONFIG_DIR), 0o755)?;
            ctx.host.write_atomic(
                pending,
                format!("{}\n", self.login.password.expose()).as_bytes(),
                crate::host::fs::private_meta(0o600),
            )?;
        }
        let created = crate::host::runtime()?
            .block_on(self.mongod.ensure_admin(&self.login, COMMAND_DEADLINE));
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                if self.save {
                    let _ = ctx.host.remove(pending);
                }
                return Err(e);
            }
        };
        if self.save {
            ctx.host
                .rename(pending, Path::new(ADMIN_PASSWORD_FILE))
                .with_context(|| {
                    format!("keeping the generated password in {ADMIN_PASSWORD_FILE}")
                })?;
        }
        match created {
            Created::Now => tracing::info!("created the admin user {}", self.login.user),
            Created::AlreadyThere => {
                tracing::info!("the admin user {} already exists", self.login.user)
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct VerifyAuth {
    mongod: LocalMongod,
    login: AdminLogin,
}

impl Action for VerifyAuth {
    fn summary(&self) -> String {
        format!(
            "verify authorization: anonymous commands refused, {} logs in",
            self.login.user
        )
    }

    fn apply(&self, _: &ApplyCtx) -> Result<()> {
        crate::host::runtime()?.block_on(self.mongod.verify(&self.login, COMMAND_DEADLINE))
    }
}
