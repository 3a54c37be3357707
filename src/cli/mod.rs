//! The command line: clap derive, one file per subcommand, each with `run()`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::ams::db::{self, Credentials, DbKind, DbUrl};
use crate::bail_usage;
use crate::host::fs::CrashPoints;
use crate::host::lock::HostLock;
use crate::host::{CommandRunner, Host, SystemRunner, tty, txn};

pub mod cert;
pub mod doctor;
pub mod drain;
pub mod generate;
pub mod join;
pub mod lb;
pub mod leave;
pub mod metadata;
pub mod mode;
pub mod run;
pub mod setup;
pub mod status;

#[derive(Debug, Parser)]
#[command(
    name = "ams-agent",
    version,
    about = "Bootstraps the nodes of an Ant Media Server cluster and keeps them visible",
    long_about = "Bootstraps the nodes of an Ant Media Server cluster and keeps them visible.\n\n\
        Every command that changes the host first computes a plan; --dry-run prints it \
        (files with diffs, services) and changes nothing. Without a terminal nothing is \
        ever asked: a missing value is an error naming the flag to set (exit code 2).",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print what would change (files with diffs, services) and change nothing
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// More log output (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Resolve every host path under this folder instead of / (for tests)
    #[arg(
        long,
        global = true,
        hide = true,
        env = "AMS_AGENT_ROOT",
        default_value = "/"
    )]
    pub root: PathBuf,
}

impl Cli {
    /// `cert deploy` run by certbot as its deploy hook (certbot sets
    /// RENEWED_LINEAGE): progress goes to stdout, since certbot reports
    /// anything on a hook's stderr as "ran with error output".
    pub fn runs_as_certbot_hook(&self) -> bool {
        matches!(&self.command, Command::Cert(c) if c.is_deploy())
            && std::env::var_os("RENEWED_LINEAGE").is_some()
    }
}

impl GlobalArgs {
    pub fn verbosity(&self) -> i8 {
        if self.quiet {
            -1
        } else {
            self.verbose.min(3) as i8
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Mode(mode::ModeArgs),
    Join(join::JoinArgs),
    Run(run::RunArgs),
    Status(status::StatusArgs),
    Leave(leave::LeaveArgs),
    Metadata(metadata::MetadataArgs),
    Setup(setup::SetupArgs),
    Cert(cert::CertArgs),
    Lb(lb::LbArgs),
    Doctor(doctor::DoctorArgs),
    Drain(drain::DrainArgs),
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

/// What every command gets: the host (root prefix), the command runner and
/// the global flags. Built once in [`run`], passed down, never global.
pub struct Context {
    pub host: Host,
    pub runner: Box<dyn CommandRunner>,
    pub dry_run: bool,
}

impl Context {
    pub fn new(root: &Path, dry_run: bool) -> Self {
        // Test hook: kill -9 ourselves at the n-th durability point. Only
        // in builds with the `test-hooks` feature (the tests'), never in
        // the release binary.
        #[cfg(feature = "test-hooks")]
        let crash_at = std::env::var("AMS_AGENT_CRASH_AT")
            .ok()
            .and_then(|v| v.parse().ok());
        #[cfg(not(feature = "test-hooks"))]
        let crash_at = None;
        Context {
            host: Host::new(root, CrashPoints::at(crash_at)),
            runner: Box::new(SystemRunner),
            dry_run,
        }
    }
}

impl Context {
    /// What every command that changes the host does first: take the host
    /// lock (one mutating run at a time; held until the guard is dropped)
    /// and complete a change a crash interrupted. A dry run takes no lock
    /// and only says when such a change is pending.
    pub fn mutate(&self) -> Result<Option<HostLock>> {
        if self.dry_run {
            if txn::pending(&self.host) {
                println!("Note: a change interrupted in an earlier run will be completed first.");
            }
            return Ok(None);
        }
        let lock = HostLock::acquire(&self.host, Duration::from_secs(300))?;
        if txn::recover(&self.host)? {
            tracing::info!("an interrupted change from an earlier run was completed first");
        }
        Ok(Some(lock))
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let ctx = Context::new(&cli.global.root, cli.global.dry_run);
    match cli.command {
        Command::Mode(args) => mode::run(&ctx, args),
        Command::Cert(args) => cert::run(&ctx, args),
        Command::Join(args) => join::run(&ctx, args),
        Command::Run(args) => run::run(&ctx, args),
        Command::Status(args) => status::run(&ctx, args),
        Command::Leave(args) => leave::run(&ctx, args),
        Command::Metadata(args) => metadata::run(&ctx, args),
        Command::Setup(args) => setup::run(&ctx, args),
        Command::Lb(args) => lb::run(&ctx, args),
        Command::Doctor(args) => doctor::run(&ctx, args),
        Command::Drain(args) => drain::run(&ctx, args),
        Command::Generate(args) => generate::run(args),
    }
}

/// MongoDB credentials given apart from the URI. The password never comes
/// from the command line (it would show in `ps`): only from a file or the
/// environment.
#[derive(Debug, Clone, Args)]
pub struct MongoAuthArgs {
    /// MongoDB user; percent-encoded into the connection URI
    #[arg(long, value_name = "USER")]
    pub mongo_user: Option<String>,

    /// File holding the MongoDB password (one trailing newline is ignored;
    /// a byte-order mark or a lone trailing CR is removed with a warning);
    /// or set AMS_AGENT_MONGO_PASSWORD. Without either, it is asked for on
    /// a terminal
    #[arg(long, value_name = "FILE")]
    pub mongo_password_file: Option<PathBuf>,
}

pub use crate::config::PASSWORD_ENV;

impl MongoAuthArgs {
    pub fn credentials(&self) -> Result<Credentials> {
        let from_env = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty());
        let (password, password_from) = match (&self.mongo_password_file, from_env) {
            (Some(file), _) => (
                Some(read_password_file(file, "--mongo-password-file")?),
                "--mongo-password-file",
            ),
            (None, Some(env)) => (Some(env), PASSWORD_ENV),
            (None, None) => (None, ""),
        };
        if let Some(user) = &self.mongo_user {
            if user.is_empty() {
                bail_usage!("--mongo-user is empty");
            }
            if user.chars().any(char::is_control) {
                bail_usage!("--mongo-user contains a newline or control character");
            }
            if user.trim().is_empty() {
                bail_usage!("--mongo-user is only white space; give the MongoDB user's name");
            }
            if user.trim() != user {
                bail_usage!(
                    "--mongo-user `{user}` begins or ends with white space, which would be part of the name; remove it"
                );
            }
        }
        Ok(Credentials {
            user: self.mongo_user.clone(),
            password,
            password_from,
        })
    }
}

impl MongoAuthArgs {
    /// Completes `db` when `--mongo-user` came without a password and the
    /// authentication mechanism needs one: asks for it on a terminal
    /// (without echo), and without a terminal refuses at once instead of
    /// letting MongoDB fail the login later. Called after every other check,
    /// so bad input is reported before anybody is asked anything.
    pub fn ask_missing_password(
        &self,
        creds: &Credentials,
        db: DbUrl,
        input: &str,
        host: &Host,
        flag: &str,
    ) -> Result<DbUrl> {
        let Some(user) = &creds.user else {
            return Ok(db);
        };
        if db.kind != DbKind::MongoDb
            || creds.password.is_some()
            || crate::uri::mechanism_without_password(&db.url)
        {
            return Ok(db);
        }
        if !tty::can_prompt() {
            bail_usage!(
                "--mongo-user {user} has no password: pass --mongo-password-file <FILE> or set {PASSWORD_ENV} (no terminal to ask on)"
            );
        }
        let password = tty::read_secret(&format!("MongoDB password for {user}: "))?;
        if password.is_empty() {
            bail_usage!(
                "no MongoDB password given for --mongo-user {user}; pass --mongo-password-file <FILE> or set {PASSWORD_ENV}"
            );
        }
        if password.contains('\0') {
            bail_usage!("the MongoDB password contains a NUL character");
        }
        let with_password = Credentials {
            password: Some(password),
            password_from: "the terminal",
            ..creds.clone()
        };
        db::classify(input, &with_password, host, flag)
    }
}

/// Reads a secret from a file named by `flag`: one trailing newline is
/// dropped; an empty or unreadable file is bad input.
pub fn read_password_file(file: &Path, flag: &str) -> Result<String> {
    let shown = format!("{flag} {}", crate::human::escape(&file.to_string_lossy()));
    let bytes =
        match crate::host::fs::read_capped_real(file, &shown, crate::host::fs::Cap::PASSWORD) {
            Ok(Some((b, _))) => b,
            Ok(None) => bail_usage!("{shown}: no such file"),
            Err(e) if crate::error::exit_code(&e) == 2 => return Err(e),
            Err(e) => bail_usage!("{}", crate::human::escape(&format!("{e:#}"))),
        };
    match crate::config::password_from_bytes(bytes, &shown) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => bail_usage!("{shown}: the file is empty"),
        Err(why) => bail_usage!("{shown}: {why}"),
    }
}

/// Parses `--ip`: a unicast IPv4 another node can reach (not 0.0.0.0,
/// loopback, broadcast or multicast, which AMS would register uselessly).
pub fn parse_node_ip(s: &str) -> std::result::Result<std::net::Ipv4Addr, String> {
    let ip: std::net::Ipv4Addr = s
        .parse()
        .map_err(|_| "expected an IPv4 address like 10.0.1.20".to_string())?;
    let why = if ip.is_unspecified() {
        "the unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else {
        return Ok(ip);
    };
    Err(format!(
        "{ip} is {why}; give the node's own address that other nodes reach"
    ))
}

/// Parses `--ams-url` / `AMS_AGENT_AMS_URL` once, in every command that
/// takes it (the flag and the variable alike): an `http://host[:port]/path`.
pub fn parse_ams_url(s: &str) -> std::result::Result<String, String> {
    crate::host::http::HttpUrl::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| {
            format!("{e:#}; --ams-url or AMS_AGENT_AMS_URL must be http://host[:port]/path")
        })
}

/// `--cloud NAME`: the names `--help` and completions list (`auto`,
/// `none`, each provider), and their aliases (`aws`, `gce`, `oci`, `do`).
pub fn cloud_parser() -> impl clap::builder::TypedValueParser<Value = crate::cloud::CloudChoice> {
    use clap::builder::{PossibleValue, TypedValueParser};
    let mut values = vec![
        PossibleValue::new("auto").help("detect: DMI, then the provider's metadata"),
        PossibleValue::new("none").help("no cloud: probe nothing"),
    ];
    for p in crate::cloud::Provider::ALL {
        values.push(
            PossibleValue::new(p.name())
                .help(p.title())
                .aliases(p.aliases().iter().copied()),
        );
    }
    clap::builder::PossibleValuesParser::new(values)
        .map(|s| s.parse().expect("every listed name parses"))
}

/// Prints `value` as pretty JSON (`--json`), else the text `render` makes.
pub fn print_view<T: serde::Serialize>(
    json: bool,
    value: &T,
    render: impl FnOnce(&T) -> String,
) -> Result<()> {
    use anyhow::Context as _;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).context("writing JSON")?
        );
    } else {
        print!("{}", render(value));
    }
    Ok(())
}

/// `--node-group NAME`: see [`crate::ams::mode::valid_node_group`].
pub fn parse_node_group(s: &str) -> std::result::Result<String, String> {
    if crate::ams::mode::valid_node_group(s) {
        Ok(s.to_string())
    } else {
        Err("expected 1-64 letters, digits, `-`, `_` or `.`, starting with a letter or digit (e.g. eu-west)".into())
    }
}

/// Parses durations like `90s`, `10m`, `1h30m`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 10m, 1h)"))
}

/// The longest wait any flag accepts (`--mongo-wait`, `--ams-wait`,
/// `--timeout`, ...): a day. Longer is a typo, and would hang a boot.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Parses a wait ([`parse_duration`]), at most [`MAX_WAIT`].
pub fn parse_wait(s: &str) -> std::result::Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_WAIT {
        return Err(format!("{s} is longer than 24h, the longest wait accepted"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
