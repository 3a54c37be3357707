//! `ams-agent cert`: Let's Encrypt certificates for AMS and HAProxy through
//! certbot, `cert deploy` (certbot's deploy hook, also by hand) and
//! `cert status`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use super::Context;
use crate::ams::AmsLayout;
use crate::ams::layout::{DEFAULT_AMS_HOME, DEFAULT_HTTP_URL};
use crate::bail_usage;
use crate::cert::certbot::{self, Authenticator};
use crate::cert::deploy::Material;
use crate::cert::deploy::{self, AmsTarget, HAPROXY_CERTS, HAPROXY_CONFIG, HaproxyTarget};
use crate::cert::inspect;
use crate::host::fs::{STATE_DIR, private_meta};
use crate::plan::{ApplyCtx, Plan};

/// Let's Encrypt certificates for AMS and HAProxy, renewed by certbot's timer
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    long_about = "Get a Let's Encrypt certificate with certbot (non-interactively) and install it \
    into Ant Media Server (conf/*.pem, keystore.jks and truststore.jks as PKCS#12 with a random \
    password, server.name, the https connector; AMS restarted and waited for) and/or HAProxy \
    (/etc/haproxy/certs/<domain>.pem, checked by haproxy -c before the reload).\n\n\
    certbot stores `ams-agent cert deploy` as the certificate's deploy hook, so certbot's own \
    timer renews it and installs the lineage it renewed: no crontab. --no-restart applies to \
    this run only: the stored hook restarts AMS and reloads HAProxy on every renewal. Before the standalone \
    server binds port 80, a process already on it is named; AMS's iptables redirect 80 → 5080 \
    is lifted while certbot runs and restored afterwards, also when certbot fails."
)]
pub struct CertArgs {
    #[command(subcommand)]
    pub command: Option<CertCommand>,
    #[command(flatten)]
    pub issue: IssueArgs,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    Deploy(DeployArgs),
    Status(StatusArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Ams,
    Haproxy,
    Both,
}

impl Target {
    fn ams(self) -> bool {
        matches!(self, Target::Ams | Target::Both)
    }
    fn haproxy(self) -> bool {
        matches!(self, Target::Haproxy | Target::Both)
    }
    fn name(self) -> &'static str {
        match self {
            Target::Ams => "ams",
            Target::Haproxy => "haproxy",
            Target::Both => "both",
        }
    }
}

/// Where certificates are installed (shared by `cert` and `cert deploy`).
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Install into Ant Media Server, HAProxy, or both
    #[arg(long = "for", value_enum, default_value = "ams", value_name = "TARGET")]
    pub target: Target,

    /// Ant Media Server install folder
    #[arg(long, value_name = "DIR", default_value = DEFAULT_AMS_HOME)]
    pub ams_home: PathBuf,

    /// Folder of HAProxy's certificates
    #[arg(long, value_name = "DIR", default_value = HAPROXY_CERTS)]
    pub haproxy_certs: PathBuf,

    /// HAProxy's configuration, checked with `haproxy -c` before the reload
    #[arg(long, value_name = "FILE", default_value = HAPROXY_CONFIG)]
    pub haproxy_config: PathBuf,

    /// Install the files only: no AMS restart, no HAProxy reload. For this
    /// run only: certbot's renewals still restart and reload
    #[arg(long)]
    pub no_restart: bool,

    /// How long to wait for AMS to answer after the restart
    #[arg(long, alias = "wait", value_name = "DURATION", default_value = "3m", value_parser = super::parse_wait)]
    pub ams_wait: Duration,

    /// URL that answers once AMS is up
    #[arg(long, hide = true, env = "AMS_AGENT_AMS_URL", default_value = DEFAULT_HTTP_URL, value_parser = super::parse_ams_url)]
    pub ams_url: String,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Domain of the certificate (repeat for more names; the first names it)
    #[arg(long = "domain", short = 'd', value_name = "DOMAIN", required = true)]
    pub domains: Vec<String>,

    /// Address Let's Encrypt writes to about expiry (default: none)
    #[arg(long, value_name = "EMAIL")]
    pub email: Option<String>,

    /// Prove the domain through files in this folder, served by the web
    /// server already on port 80, instead of certbot's own server
    #[arg(long, value_name = "DIR")]
    pub webroot: Option<PathBuf>,

    /// The ACME server's directory URL (default: Let's Encrypt)
    #[arg(long, value_name = "URL", conflicts_with = "staging")]
    pub acme_server: Option<String>,

    /// Use Let's Encrypt's staging server (untrusted certificates, for trials)
    #[arg(long)]
    pub staging: bool,

    /// The port certbot's own server answers the HTTP-01 challenge on
    #[arg(long, value_name = "PORT", default_value = "80")]
    pub http_01_port: u16,

    #[command(flatten)]
    pub install: InstallArgs,
}

/// Install the certificate certbot issued or renewed (certbot's deploy hook)
#[derive(Debug, Args)]
#[command(
    long_about = "Install a certbot lineage into AMS and/or HAProxy. Under certbot \
    (the deploy hook `ams-agent cert` registers) the lineage is the one certbot names in \
    RENEWED_LINEAGE, never a path guessed from the domain; by hand, pass --lineage.\n\n\
    AMS is restarted and HAProxy reloaded unless --no-restart is given, or \
    AMS_AGENT_CERT_NO_RESTART=1 is set (what `ams-agent cert --no-restart` passes to the \
    hook certbot runs during that run; the hook certbot stores for renewals never skips \
    the restart)."
)]
pub struct DeployArgs {
    /// The lineage folder (holding fullchain.pem, chain.pem, privkey.pem);
    /// default: RENEWED_LINEAGE, set by certbot
    #[arg(long, value_name = "DIR", env = "RENEWED_LINEAGE")]
    pub lineage: Option<PathBuf>,

    #[command(flatten)]
    pub install: InstallArgs,
}

/// Installed certificates: domains, issuer, days left
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// JSON instead of a table
    #[arg(long)]
    pub json: bool,

    /// Ant Media Server install folder
    #[arg(long, value_name = "DIR", default_value = DEFAULT_AMS_HOME)]
    pub ams_home: PathBuf,

    /// Folder of HAProxy's certificates
    #[arg(long, value_name = "DIR", default_value = HAPROXY_CERTS)]
    pub haproxy_certs: PathBuf,
}

impl CertArgs {
    pub fn is_deploy(&self) -> bool {
        matches!(self.command, Some(CertCommand::Deploy(_)))
    }
}

pub fn run(ctx: &Context, args: CertArgs) -> Result<()> {
    match args.command {
        Some(CertCommand::Deploy(d)) => deploy_cmd(ctx, d),
        Some(CertCommand::Status(s)) => status(ctx, s),
        None => issue(ctx, args.issue),
    }
}

/// Set (to `1`) by `cert --no-restart` in certbot's environment, which
/// certbot hands to the deploy hook it runs during this run only: the hook
/// it stores for its renewals has no `--no-restart`, so renewals restart
/// AMS and reload HAProxy.
pub const NO_RESTART_ENV: &str = "AMS_AGENT_CERT_NO_RESTART";

/// The outcome of the last deploy, written by the deploy hook so that
/// `cert` learns what happened inside certbot.
pub const DEPLOY_RECORD: &str = "/var/lib/ams-agent/cert-deploy.json";

#[derive(Debug, Serialize, Deserialize)]
struct DeployRecord {
    lineage: PathBuf,
    target: Target,
    /// Unix time in milliseconds.
    at_ms: u64,
    error: Option<String>,
}

fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl InstallArgs {
    /// Bad input is found before certbot asks for a certificate (a wrong
    /// target found only afterwards costs a Let's Encrypt rate limit and
    /// leaves a broken hook in certbot's renewal file).
    fn check(&self, host: &crate::host::Host) -> Result<()> {
        if self.ams_wait.is_zero() {
            bail_usage!("--ams-wait must be longer than 0s");
        }
        for (flag, p) in [
            ("--ams-home", &self.ams_home),
            ("--haproxy-certs", &self.haproxy_certs),
            ("--haproxy-config", &self.haproxy_config),
        ] {
            check_hook_path(flag, p)?;
        }
        if self.target.ams() {
            AmsLayout::new(&self.ams_home).check(host)?;
        }
        if self.target.haproxy() && !host.exists(&self.haproxy_config) {
            bail_usage!(
                "--for {}: {} does not exist; is HAProxy installed here? (--haproxy-config names another file)",
                self.target.name(),
                self.haproxy_config.display()
            );
        }
        Ok(())
    }

    fn plans(&self, ctx: &Context, lineage: &Material) -> Result<Vec<Plan>> {
        let mut plans = Vec::new();
        if self.target.ams() {
            let target = AmsTarget {
                layout: AmsLayout::new(&self.ams_home),
                restart: (!self.no_restart).then(|| (self.ams_url.clone(), self.ams_wait)),
            };
            plans.push(deploy::plan_ams(&ctx.host, lineage, &target)?);
        }
        if self.target.haproxy() {
            let target = HaproxyTarget {
                certs_dir: self.haproxy_certs.clone(),
                config: self.haproxy_config.clone(),
                reload: !self.no_restart,
            };
            plans.push(deploy::plan_haproxy(&ctx.host, lineage, &target)?);
        }
        Ok(plans)
    }

    /// The arguments `cert deploy` needs to install the same way, as
    /// certbot stores them for every later renewal: never `--no-restart`,
    /// which is for one run (see [`NO_RESTART_ENV`]).
    fn hook_args(&self) -> String {
        let mut s = format!("cert deploy --for {}", self.target.name());
        if self.ams_home != Path::new(DEFAULT_AMS_HOME) {
            s.push_str(&format!(" --ams-home {}", self.ams_home.display()));
        }
        if self.haproxy_certs != Path::new(HAPROXY_CERTS) {
            s.push_str(&format!(
                " --haproxy-certs {}",
                self.haproxy_certs.display()
            ));
        }
        if self.haproxy_config != Path::new(HAPROXY_CONFIG) {
            s.push_str(&format!(
                " --haproxy-config {}",
                self.haproxy_config.display()
            ));
        }
        if self.ams_wait != Duration::from_secs(180) {
            // Whole seconds, one word: certbot runs the hook through a shell.
            s.push_str(&format!(" --ams-wait {}s", self.ams_wait.as_secs().max(1)));
        }
        s
    }
}

/// Paths land in the hook command certbot runs through a shell: only
/// plain characters.
fn check_hook_path(flag: &str, p: &Path) -> Result<()> {
    let s = p.to_string_lossy();
    if !p.is_absolute()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'))
    {
        bail_usage!("{flag} {s:?}: use an absolute path of letters, digits and / . _ - +");
    }
    Ok(())
}

/// A domain certbot can get with HTTP-01: a DNS name, no wildcard.
fn check_domain(d: &str) -> Result<String> {
    let shown = crate::human::escape(d);
    let d = shown.as_ref();
    let lower = d.trim_end_matches('.').to_ascii_lowercase();
    if lower.starts_with("*.") {
        bail_usage!(
            "--domain {d}: wildcard certificates need a DNS-01 challenge, which `ams-agent cert` does not do; name each host"
        );
    }
    // At least two labels: Let's Encrypt issues for public names only.
    // ... and a top-level domain of letters (`example.123` is no name).
    let ok = lower.contains('.')
        && crate::host::net::is_dns_name(&lower)
        && !lower
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()));
    if !ok {
        bail_usage!("--domain {d:?} is not a DNS name like live.example.com");
    }
    Ok(lower)
}

/// `--acme-server`: an https:// directory URL without credentials (an ACME
/// account is a key pair certbot keeps, never a password in the URL).
fn check_acme_server(url: &str) -> Result<()> {
    let shown = crate::human::escape(url);
    let shown = crate::secret::redact_loose(&shown);
    if let Ok(parsed) = reqwest::Url::parse(url) {
        if !parsed.username().is_empty() || parsed.password().is_some() {
            bail_usage!(
                "--acme-server {shown}: credentials in the URL are not accepted (an ACME server knows the account by its key, which certbot keeps); give the directory URL alone"
            );
        }
    }
    crate::mongod::repo::check_url(url, "--acme-server", true).map_err(|_| {
        crate::error::UsageError::new(format!(
            "--acme-server {shown} is not an https:// URL of an ACME directory (e.g. https://acme-v02.api.letsencrypt.org/directory)"
        ))
    })?;
    Ok(())
}

fn check_email(e: &str) -> Result<()> {
    // A leading '-' would be read by certbot as an option.
    let ok = e.len() <= 254
        && !e.starts_with('-')
        && e.matches('@').count() == 1
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
        && e.split_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'));
    if !ok {
        bail_usage!(
            "--email {:?} is not an email address",
            crate::human::escape(e)
        );
    }
    Ok(())
}

fn issue(ctx: &Context, args: IssueArgs) -> Result<()> {
    let mut domains = Vec::new();
    for d in &args.domains {
        let d = check_domain(d)?;
        if !domains.contains(&d) {
            domains.push(d);
        }
    }
    if let Some(e) = &args.email {
        check_email(e)?;
    }
    if let Some(url) = &args.acme_server {
        check_acme_server(url)?;
    }
    args.install.check(&ctx.host)?;
    if args.http_01_port == 0 {
        bail_usage!("--http-01-port 0 is not a port; give the port the ACME server reaches (80)");
    }
    certbot::require_installed()?;
    let authenticator = match &args.webroot {
        Some(dir) => {
            check_hook_path("--webroot", dir)?;
            if !ctx.host.is_dir(dir) {
                bail_usage!("--webroot {}: no such folder", dir.display());
            }
            Authenticator::Webroot(ctx.host.path(dir))
        }
        None => Authenticator::Standalone {
            port: args.http_01_port,
        },
    };
    let exe =
        std::env::current_exe().context("finding the ams-agent binary for the deploy hook")?;
    check_hook_path("the ams-agent binary's path", &exe)?;
    if !exe.starts_with("/usr/bin") && !exe.starts_with("/usr/local/bin") {
        tracing::warn!(
            "certbot's renewals will run {}; install the package (/usr/bin/ams-agent) so they keep working when this copy goes",
            exe.display()
        );
    }
    let req = certbot::Request {
        domains: domains.clone(),
        email: args.email.clone(),
        authenticator: authenticator.clone(),
        server: args.acme_server.clone(),
        staging: args.staging,
        deploy_hook: format!("{} {}", exe.display(), args.install.hook_args()),
    };
    let mut spec = certbot::certonly(&ctx.host, &req);
    if args.install.no_restart {
        // This run's hook only; the stored hook restarts on renewal.
        spec = spec.env(NO_RESTART_ENV, "1");
    }
    if ctx.dry_run {
        println!("Plan: a certificate for {}", domains.join(", "));
        if let Authenticator::Standalone { port } = authenticator {
            println!(
                "1. check that port {port} is free; lift AMS's iptables redirect 80 -> 5080 while certbot runs, if present"
            );
        }
        println!("2. {}", spec.display());
        println!(
            "3. certbot runs the deploy hook: ams-agent {} (installs the lineage certbot names in RENEWED_LINEAGE){}",
            args.install.hook_args(),
            if args.install.no_restart {
                "; this time without restart or reload (--no-restart); certbot's renewals run the hook as stored, with them"
            } else {
                ""
            }
        );
        return Ok(());
    }
    // Every host write happens under the host lock; certbot itself runs
    // without it, because its deploy hook (`cert deploy`) takes it.
    let lock = ctx.mutate()?;
    // An earlier run that died with the redirect lifted: put it back.
    if ctx.host.exists(Path::new(certbot::REDIRECT_MARKER)) {
        certbot::restore_redirect(&ctx.host, ctx.runner.as_ref())?;
    }
    if let Authenticator::Standalone { port } = authenticator {
        certbot::check_port_free(port)?;
    }
    let started = unix_now_ms();
    let lifted = match authenticator {
        Authenticator::Standalone { .. } => certbot::lift_redirect(&ctx.host, ctx.runner.as_ref())?,
        Authenticator::Webroot(_) => None,
    };
    drop(lock);
    tracing::info!(
        "asking for a certificate for {}: {}",
        domains.join(", "),
        spec.display()
    );
    let result = crate::plan::run_checked(ctx.runner.as_ref(), "getting the certificate", &spec);
    // The redirect comes back even when the lock cannot be had.
    let lock = ctx.mutate();
    if let Some(lifted) = lifted {
        lifted.restore()?;
    }
    let _lock = lock?;
    result?;

    // Inside certbot, the hook installed what certbot issued; when certbot
    // had nothing to do (not yet due), the lineage certbot lists for these
    // domains is installed here.
    if let Some(rec) = read_record(&ctx.host).filter(|r| r.at_ms >= started) {
        certbot::keep_hook(&ctx.host, &rec.lineage, &req.deploy_hook)?;
        return match rec.error {
            None => {
                println!(
                    "Installed {} for {}.",
                    rec.lineage.display(),
                    domains.join(", ")
                );
                Ok(())
            }
            Some(e) => bail!(
                "certbot got the certificate ({}), but installing it failed: {e}",
                rec.lineage.display()
            ),
        };
    }
    let listed = certbot::certificates_for(&ctx.host, ctx.runner.as_ref(), &domains)?;
    let lineage = match listed.as_slice() {
        [one] => one.dir.clone(),
        [] => bail!(
            "certbot succeeded but lists no certificate for {}; see `certbot certificates`",
            domains.join(", ")
        ),
        many => {
            let all = many
                .iter()
                .map(|l| l.dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let Some((chosen, why)) = certbot::choose_lineage(many, &domains) else {
                bail!(
                    "certbot lists {} certificates for {}, none of them valid: {all}; see `certbot certificates`",
                    many.len(),
                    domains.join(", ")
                );
            };
            println!(
                "certbot lists {} certificates for {} ({all}); installing {}: {why}.",
                many.len(),
                domains.join(", "),
                chosen.dir.display()
            );
            chosen.dir.clone()
        }
    };
    tracing::info!(
        "certbot had nothing to renew; installing its lineage {}",
        lineage.display()
    );
    // Renewals must install the way this run asks (target, folders).
    certbot::keep_hook(&ctx.host, &lineage, &req.deploy_hook)?;
    deploy_lineage(ctx, &lineage, &args.install)
}

fn read_record(host: &crate::host::Host) -> Option<DeployRecord> {
    let bytes = host.read_optional(Path::new(DEPLOY_RECORD)).ok()??;
    serde_json::from_slice(&bytes).ok()
}

fn deploy_cmd(ctx: &Context, mut args: DeployArgs) -> Result<()> {
    // Under certbot, during a `cert --no-restart` run only.
    if std::env::var_os(NO_RESTART_ENV).is_some_and(|v| v == "1") {
        args.install.no_restart = true;
    }
    let Some(lineage) = args.lineage.clone() else {
        bail_usage!(
            "no certificate to install: pass --lineage DIR (certbot sets RENEWED_LINEAGE when it runs this as its deploy hook)"
        );
    };
    if !lineage.is_dir() {
        bail_usage!(
            "--lineage {}: not a certbot lineage folder (it must hold fullchain.pem, chain.pem and privkey.pem)",
            lineage.display()
        );
    }
    args.install.check(&ctx.host)?;
    // The install and its record, under the host lock.
    let _lock = ctx.mutate()?;
    let result = deploy_lineage(ctx, &lineage, &args.install);
    if !ctx.dry_run {
        let record = DeployRecord {
            lineage: lineage.clone(),
            target: args.install.target,
            at_ms: unix_now_ms(),
            error: result.as_ref().err().map(|e| format!("{e:#}")),
        };
        let written = ctx
            .host
            .create_dir_all(Path::new(STATE_DIR), 0o700)
            .and_then(|()| {
                ctx.host.write_atomic(
                    Path::new(DEPLOY_RECORD),
                    &serde_json::to_vec_pretty(&record).unwrap_or_default(),
                    private_meta(0o600),
                )
            });
        if let Err(e) = written {
            tracing::warn!("recording the deploy: {e:#}");
        }
    }
    result
}

/// Reads and checks the lineage, then plans and applies (or prints) the
/// install. The caller holds the host lock (`ctx.mutate()`).
fn deploy_lineage(ctx: &Context, dir: &Path, install: &InstallArgs) -> Result<()> {
    let lineage = Material::load(dir)
        .with_context(|| format!("reading the certbot lineage {}", dir.display()))?;
    let plans = install.plans(ctx, &lineage)?;
    for plan in &plans {
        if ctx.dry_run || plan.is_empty() {
            print!("{}", plan.render());
            continue;
        }
        plan.apply(&ApplyCtx {
            host: &ctx.host,
            runner: ctx.runner.as_ref(),
            progress: false,
        })?;
        println!("{}: done.", plan.title);
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct Installed {
    #[serde(rename = "for")]
    target: &'static str,
    path: PathBuf,
    domains: Vec<String>,
    issuer: String,
    #[serde(rename = "notAfter")]
    not_after: String,
    #[serde(rename = "daysLeft")]
    days_left: Option<i64>,
    /// Why this file could not be read (the others are still listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// One installed certificate file, or why it cannot be read.
fn installed(host: &crate::host::Host, target: &'static str, path: PathBuf) -> Option<Installed> {
    let bytes = match host.read_optional(&path) {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => return Some(unreadable(target, path, format!("{e:#}"))),
    };
    // HAProxy's file holds the key after the chain: the first certificate
    // is the one served.
    let info = inspect::parse_pem(&bytes).and_then(|blocks| {
        let leaf = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .context("no certificate in it")?;
        inspect::CertInfo::from_der(leaf.contents())
    });
    Some(match info {
        Ok(info) => Installed {
            target,
            path,
            days_left: Some(info.days_left(unix_now() as i64)),
            not_after: humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(info.not_after.max(0) as u64),
            )
            .to_string(),
            domains: info.domains,
            issuer: info.issuer,
            error: None,
        },
        Err(e) => unreadable(target, path, format!("{e:#}")),
    })
}

fn unreadable(target: &'static str, path: PathBuf, error: String) -> Installed {
    Installed {
        target,
        path,
        domains: Vec::new(),
        issuer: String::new(),
        not_after: String::new(),
        days_left: None,
        error: Some(error),
    }
}

fn status(ctx: &Context, args: StatusArgs) -> Result<()> {
    let mut found: Vec<Installed> = Vec::new();
    let ams_pem = AmsLayout::new(&args.ams_home)
        .home
        .join("conf/fullchain.pem");
    found.extend(installed(&ctx.host, "ams", ams_pem));
    let dir = ctx.host.path(&args.haproxy_certs);
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".pem"))
                .collect();
            names.sort();
            for n in names {
                found.extend(installed(&ctx.host, "haproxy", args.haproxy_certs.join(n)));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!(
            "reading {}: {e} (HAProxy's certificates are root-only: run as root)",
            args.haproxy_certs.display()
        ),
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    if found.is_empty() {
        println!(
            "No certificate installed (AMS: {}/conf/fullchain.pem, HAProxy: {}/*.pem).",
            args.ams_home.display(),
            args.haproxy_certs.display()
        );
        return Ok(());
    }
    println!(
        "{:<8} {:<10} {:<20} {:<24} PATH",
        "FOR", "DAYS LEFT", "EXPIRES", "ISSUER"
    );
    for c in &found {
        match &c.error {
            None => println!(
                "{:<8} {:<10} {:<20} {:<24} {}\n         domains: {}",
                c.target,
                c.days_left.unwrap_or_default(),
                c.not_after,
                c.issuer,
                c.path.display(),
                c.domains.join(", ")
            ),
            Some(e) => println!("{:<8} {:<10} {}: {e}", c.target, "?", c.path.display()),
        }
    }
    if found.iter().any(|c| c.error.is_some()) {
        bail!("some installed certificate files cannot be read (listed above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_dns_names() {
        assert_eq!(
            check_domain("Live.Example.com.").unwrap(),
            "live.example.com"
        );
        for bad in [
            "*.example.com",
            "localhost",
            "a b.com",
            "x..com",
            "-a.com",
            "10.0.0.1",
            "example.123",
            "a.com;rm",
            "ü.com",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hook_paths_are_plain() {
        assert!(check_hook_path("--ams-home", Path::new("/usr/local/antmedia")).is_ok());
        assert!(check_hook_path("--ams-home", Path::new("/a b")).is_err());
        assert!(check_hook_path("--ams-home", Path::new("rel/x")).is_err());
        assert!(check_hook_path("--ams-home", Path::new("/x;reboot")).is_err());
    }
}
