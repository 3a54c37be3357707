//! `ams-agent doctor`: read-only checks of this host with a fix for each
//! problem (the checks themselves are [`crate::doctor`]).

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::ams::layout::DEFAULT_HTTP_URL;
use crate::bail_usage;
use crate::cert::deploy::HAPROXY_CONFIG;
use crate::config::{ADMIN_PASSWORD_ENV, CONFIG_FILE};
use crate::doctor::render::{self, Report, RoleEntry};
use crate::doctor::{self, CHECKS, Check, Env, Role, Settings};
use crate::host::SystemRunner;
use crate::mongod::conf::MONGOD_CONF;
use crate::secret::Secret;

pub const NGINX_CONFIG: &str = "/etc/nginx/nginx.conf";

/// Check this host (AMS node, MongoDB host, load balancer) and say how to fix what is not right
#[derive(Debug, Args)]
#[command(
    long_about = "Check this host and say how to fix what is not right: an AMS node (AMS's \
    service, HTTP, ports, cluster mode in every file, MongoDB with the configured credentials, \
    the node's registry document and AMS's own clusternode row, the clock against MongoDB's, \
    limits, disk, the reporter, password files, the local firewall, the certificate), the \
    MongoDB host (version, bindIp against authorization, transparent huge pages, limits, \
    mongod's startup warnings, NTP, the filesystem of dbPath) or the load balancer (its \
    configuration checked by haproxy -c / nginx -t, its servers against the registry's alive \
    nodes, certificates).\n\n\
    The roles are detected from what is installed (--role overrides). It changes nothing: no \
    lock, no marker, no backup. Every check has a deadline; a peer that hangs costs at most \
    that. On a terminal results show as they complete; otherwise one plain line per check, \
    in order. The last line is a summary.\n\n\
    Exit code: 0 all ok (skipped checks do not count), 1 any failure, 2 warnings only \
    (--strict: warnings fail, exit 1). Bad input is exit 2 too, with an `error:` line and no \
    report. --json prints one document, \"schema\": 1 (docs/doctor.md lists every field)."
)]
pub struct DoctorArgs {
    /// The roles to check (repeat or comma-separate); default: detected
    #[arg(long, value_enum, value_delimiter = ',', value_name = "ROLE")]
    pub role: Vec<Role>,

    /// One JSON document instead of text
    #[arg(long)]
    pub json: bool,

    /// Run only these checks: ids (mongo.reach), groups (firewall) or categories (cert)
    #[arg(long, value_name = "ID", num_args = 1.., value_delimiter = ',')]
    pub only: Vec<String>,

    /// Leave out these checks: ids, groups or categories
    #[arg(long, value_name = "ID", num_args = 1.., value_delimiter = ',')]
    pub skip: Vec<String>,

    /// Warnings fail too (exit 1)
    #[arg(long)]
    pub strict: bool,

    /// The agent's configuration file (written by `join`)
    #[arg(long, value_name = "FILE", env = "AMS_AGENT_CONFIG", default_value = CONFIG_FILE)]
    pub config: PathBuf,

    /// Ant Media Server install folder (default: agent.toml's, else /usr/local/antmedia)
    #[arg(long, value_name = "DIR")]
    pub ams_home: Option<PathBuf>,

    /// URL that answers while AMS is up
    #[arg(long, hide = true, env = "AMS_AGENT_AMS_URL", default_value = DEFAULT_HTTP_URL, value_parser = super::parse_ams_url)]
    pub ams_url: String,

    /// mongod's configuration (db role)
    #[arg(long, value_name = "FILE", default_value = MONGOD_CONF)]
    pub mongod_conf: PathBuf,

    /// The MongoDB admin user, for what mongod shows only to an admin (db role)
    #[arg(long, value_name = "USER", default_value = "admin")]
    pub admin_user: String,

    /// File holding the admin password (default: /etc/ams-agent/mongo-admin-password
    /// when present); or set AMS_AGENT_MONGO_ADMIN_PASSWORD
    #[arg(long, value_name = "FILE")]
    pub admin_password_file: Option<PathBuf>,

    /// The registry's MongoDB (address or URI), over agent.toml's; on the
    /// balancer's host, what its follower is given
    #[arg(long, value_name = "DB", env = "AMS_AGENT_MONGO")]
    pub mongo: Option<String>,

    #[command(flatten)]
    pub auth: super::MongoAuthArgs,

    /// HAProxy's configuration (lb role)
    #[arg(long, value_name = "FILE", default_value = HAPROXY_CONFIG)]
    pub haproxy_config: PathBuf,

    /// Nginx's configuration holding the agent's sections (lb role)
    #[arg(long, value_name = "FILE", default_value = NGINX_CONFIG)]
    pub nginx_config: PathBuf,
}

/// Every id and category, for messages.
fn known() -> String {
    let mut cats: BTreeSet<&str> = BTreeSet::new();
    for c in CHECKS {
        cats.insert(c.category);
    }
    format!(
        "checks: {}; categories: {}",
        CHECKS.iter().map(|c| c.id).collect::<Vec<_>>().join(", "),
        cats.into_iter().collect::<Vec<_>>().join(", ")
    )
}

/// Whether `w` names `c`: its id, its category, or the start of its id
/// (`firewall` for firewall.webrtc and firewall.cluster).
fn names_one(c: &Check, w: &str) -> bool {
    w == c.id || w == c.category || c.id.strip_prefix(w).is_some_and(|r| r.starts_with('.'))
}

fn names(c: &Check, wanted: &[String]) -> bool {
    wanted.iter().any(|w| names_one(c, w))
}

fn check_names(flag: &str, wanted: &[String]) -> Result<()> {
    for w in wanted {
        if !CHECKS.iter().any(|c| names_one(c, w)) {
            bail_usage!(
                "{flag} {}: no such check or category ({})",
                crate::human::escape(w),
                known()
            );
        }
    }
    Ok(())
}

fn admin_password(ctx: &Context, args: &DoctorArgs) -> Result<Option<(Secret, String)>> {
    if let Some(file) = &args.admin_password_file {
        let pw = super::read_password_file(file, "--admin-password-file")?;
        return Ok(Some((Secret::new(pw), format!("{}", file.display()))));
    }
    if let Some(pw) = std::env::var(ADMIN_PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty())
    {
        return Ok(Some((Secret::new(pw), ADMIN_PASSWORD_ENV.into())));
    }
    // What `setup mongo --yes` kept; unreadable (not root) counts as none.
    let saved = std::path::Path::new(crate::mongod::setup::ADMIN_PASSWORD_FILE);
    let shown = saved.display().to_string();
    Ok(ctx
        .host
        .read_capped(saved, crate::host::fs::Cap::PASSWORD)
        .ok()
        .flatten()
        .and_then(|b| crate::config::password_from_bytes(b, &shown).ok().flatten())
        .map(|pw| (Secret::new(pw), shown)))
}

pub fn run(ctx: &Context, args: DoctorArgs) -> Result<()> {
    check_names("--only", &args.only)?;
    check_names("--skip", &args.skip)?;
    if args.admin_user.is_empty() || args.admin_user.chars().any(char::is_control) {
        bail_usage!("--admin-user must be a user name");
    }
    let registry = match &args.mongo {
        Some(m) => {
            let r = super::run::RegistryArgs {
                config: args.config.clone(),
                mongo: Some(m.clone()),
                auth: args.auth.clone(),
                database: None,
                collection: None,
            };
            Some(r.resolve(&ctx.host)?.target)
        }
        None if args.auth.mongo_user.is_some() || args.auth.mongo_password_file.is_some() => {
            bail_usage!("--mongo-user and --mongo-password-file need --mongo")
        }
        None => None,
    };
    let settings = Settings {
        registry,
        config: args.config.clone(),
        ams_home: args.ams_home.clone(),
        ams_url: args.ams_url.clone(),
        mongod_conf: args.mongod_conf.clone(),
        admin_user: args.admin_user.clone(),
        admin_password: admin_password(ctx, &args)?,
        haproxy_config: args.haproxy_config.clone(),
        nginx_config: args.nginx_config.clone(),
    };
    // The checks run on threads of their own, which outlive a hung one:
    // they share a runner of their own (the real one, as ctx's is).
    let mut env = Env::new(ctx.host.root(), Arc::new(SystemRunner), settings);
    let roles: Vec<RoleEntry> = if args.role.is_empty() {
        let found = doctor::detect::detect(&env);
        if found.is_empty() {
            bail_usage!(
                "nothing to check on this host: no Ant Media Server at {}, no {}, no HAProxy or Nginx with an ams-agent lb section; pass --role node, db or lb",
                env.ams_home().0.display(),
                args.mongod_conf.display()
            );
        }
        found
            .into_iter()
            .map(|(role, why)| RoleEntry {
                role,
                source: "detected",
                evidence: Some(why),
            })
            .collect()
    } else {
        let mut seen = BTreeSet::new();
        args.role
            .iter()
            .filter(|r| seen.insert(**r))
            .map(|r| RoleEntry {
                role: *r,
                source: "flag",
                evidence: None,
            })
            .collect()
    };
    let role_set: Vec<Role> = roles.iter().map(|r| r.role).collect();
    // --only naming a check of a role that is not checked is a mistake.
    for w in &args.only {
        if let Some(c) = CHECKS.iter().find(|c| c.id == w) {
            if !role_set.contains(&c.role) {
                bail_usage!(
                    "--only {}: it is a check of the {} role, which is not checked here; add --role {}",
                    c.id,
                    c.role.name(),
                    c.role.name()
                );
            }
        }
    }
    let selected: Vec<&'static Check> = CHECKS
        .iter()
        .filter(|c| role_set.contains(&c.role))
        .filter(|c| args.only.is_empty() || names(c, &args.only))
        .filter(|c| !names(c, &args.skip))
        .collect();
    if selected.is_empty() {
        bail_usage!("--only/--skip leave no check to run ({})", known());
    }
    env.plan(role_set, &selected);
    let env = Arc::new(env);
    let start = Instant::now();
    let width = render::id_width(&selected);
    let terminal = !args.json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let mut stdout = std::io::stdout();
    if !args.json {
        let head: Vec<String> = roles
            .iter()
            .map(|r| match &r.evidence {
                Some(e) => format!("{}: {}", r.role.name(), crate::human::escape(e)),
                None => format!("{}: --role", r.role.name()),
            })
            .collect();
        let _ = writeln!(stdout, "ams-agent doctor ({})", head.join("; "));
    }
    let findings = if terminal {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(Duration::from_millis(80));
        let mut pending: Vec<&str> = selected.iter().map(|c| c.id).collect();
        pb.set_message(format!("checking {}", pending.join(", ")));
        let found = doctor::run(env.clone(), &selected, |i, f| {
            pending.retain(|id| *id != selected[i].id);
            pb.suspend(|| {
                let _ = write!(std::io::stdout(), "{}", render::lines(f, width));
                let _ = std::io::stdout().flush();
            });
            pb.set_message(format!("checking {}", pending.join(", ")));
        });
        pb.finish_and_clear();
        found
    } else if args.json {
        doctor::run(env.clone(), &selected, |_, _| {})
    } else {
        // In order, each line as soon as it and every one before it are done.
        let mut done: Vec<Option<String>> = vec![None; selected.len()];
        let mut next = 0;
        doctor::run(env.clone(), &selected, |i, f| {
            done[i] = Some(render::lines(f, width));
            while next < done.len() {
                let Some(text) = done[next].take() else { break };
                let _ = write!(std::io::stdout(), "{text}");
                let _ = std::io::stdout().flush();
                next += 1;
            }
        })
    };
    let summary = doctor::Summary::of(&findings);
    let code = summary.exit_code(args.strict);
    if args.json {
        let hostname = crate::ams::layout::node_hostname(&env.host)
            .ok()
            .map(|h| crate::human::escape(&h).into_owned());
        let report = Report::new(
            &roles,
            &findings,
            args.strict,
            env.started,
            start.elapsed(),
            hostname,
        );
        let _ = write!(stdout, "{}", report.to_json());
    } else {
        let _ = write!(stdout, "{}", render::summary(&summary, args.strict));
    }
    let _ = stdout.flush();
    // Checks given up at their deadline may still hold a thread: leave
    // without waiting for them.
    std::process::exit(code as i32)
}
