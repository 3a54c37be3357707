//! `ams-agent setup mongo`: install and configure mongod for the cluster,
//! asking on a terminal only for what is missing, never without one.

use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{Context, read_password_file};
use crate::bail_usage;
use crate::host::{net, tty};
use crate::mongod::admin::AdminLogin;
use crate::mongod::conf;
use crate::mongod::os::{self, DEFAULT_MONGODB_VERSION};
use crate::mongod::repo::{self, RepoSource};
use crate::mongod::setup::{self, ADMIN_PASSWORD_FILE, Package, Request};
use crate::plan::{ApplyCtx, Plan};

/// The admin password from the environment (never from an argument).
pub use crate::config::ADMIN_PASSWORD_ENV;
const DEFAULT_ADMIN_USER: &str = "admin";

/// Set up a host of the cluster's infrastructure
#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(subcommand)]
    pub target: SetupTarget,
}

#[derive(Debug, Subcommand)]
pub enum SetupTarget {
    Mongo(MongoArgs),
}

/// Install and configure mongod for the cluster (repository, package,
/// limits, bindIp, admin user, authorization)
#[derive(Debug, Args)]
#[command(
    long_about = "Install and configure mongod for the cluster, in one plan: MongoDB's apt \
    repository (signed-by a keyring fetched over HTTPS), mongodb-org, limits systemd honours \
    (a mongod.service drop-in), transparent huge pages as the MongoDB series recommends, \
    net.bindIp and security.authorization in /etc/mongod.conf (every comment kept), the \
    service started and waited for, the first admin user (role root, SCRAM-SHA-256) through \
    the localhost exception, and a check that authorization is enforced. It prints the \
    `ams-agent join` line for the nodes.\n\n\
    On a terminal it asks for what is missing (addresses, admin user, password twice). \
    Without one it never asks: a missing password is an error naming the flag (exit 2), \
    unless --yes, which generates one and keeps it 0600 in /etc/ams-agent/mongo-admin-password. \
    Running it again on a configured host changes nothing.\n\n\
    --dry-run changes and fetches nothing; when mongod already runs it asks it over \
    127.0.0.1 (announced, reads only, within --mongo-wait) whether the admin user is in \
    place, to plan what the real run would do."
)]
pub struct MongoArgs {
    /// MongoDB release series to install (6.0, 7.0, 8.0)
    #[arg(long, value_name = "SERIES", default_value = DEFAULT_MONGODB_VERSION, value_parser = os::parse_series)]
    pub mongodb_version: String,

    /// Addresses mongod listens on, comma-separated (default: 127.0.0.1
    /// and this host's private IPv4); 127.0.0.1 is always included
    #[arg(long, value_name = "ADDRS", value_delimiter = ',')]
    pub bind_ip: Vec<String>,

    /// Name of the admin user to create (default: admin)
    #[arg(long, value_name = "USER")]
    pub admin_user: Option<String>,

    /// File holding the admin password (one trailing newline ignored); or
    /// set AMS_AGENT_MONGO_ADMIN_PASSWORD
    #[arg(long, value_name = "FILE")]
    pub admin_password_file: Option<PathBuf>,

    /// Read the admin password from this SSM Parameter Store parameter (a
    /// SecureString, decrypted; with the instance role, no aws CLI)
    #[arg(long, value_name = "NAME", conflicts_with = "admin_password_file")]
    pub admin_password_ssm: Option<String>,

    /// Instance-metadata endpoint (the instance role for
    /// --admin-password-ssm)
    #[arg(long, hide = true, env = crate::cloud::ec2::ENDPOINT_ENV, default_value = crate::cloud::ec2::DEFAULT_ENDPOINT)]
    pub imds_endpoint: String,

    /// Ask nothing: take defaults, and generate the admin password if none
    /// is given
    #[arg(short = 'y', long)]
    pub yes: bool,

    /// The apt repository's base URL, for a mirror (default:
    /// https://repo.mongodb.org/apt/<ubuntu|debian>)
    #[arg(long, value_name = "URL")]
    pub repo_url: Option<String>,

    /// The HTTPS URL of the repository's signing key (default: MongoDB's
    /// server-<SERIES>.asc)
    #[arg(long, value_name = "URL")]
    pub key_url: Option<String>,

    /// How long fetching the signing key may take
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = super::parse_wait)]
    pub key_timeout: Duration,

    /// How long to wait for mongod to answer after it is (re)started, and
    /// for a running mongod to say whether the admin user is in place
    #[arg(long, alias = "wait", value_name = "DURATION", default_value = "2m", value_parser = super::parse_wait)]
    pub mongo_wait: Duration,
}

pub fn run(ctx: &Context, args: SetupArgs) -> Result<()> {
    match args.target {
        SetupTarget::Mongo(args) => setup_mongo(ctx, args),
    }
}

/// Where the admin password came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PasswordFrom {
    Given,
    Saved,
    Generated,
}

fn setup_mongo(ctx: &Context, args: MongoArgs) -> Result<()> {
    // Every check of the input first: bad input changes nothing (exit 2).
    if args.mongo_wait.is_zero() {
        bail_usage!("--mongo-wait must be longer than 0s");
    }
    if args.key_timeout.is_zero() {
        bail_usage!("--key-timeout must be longer than 0s");
    }
    let series = args.mongodb_version.clone();
    let distro = os::host_distro(&ctx.host, &series)?;
    let mut source = RepoSource::official(&distro, &series);
    if let Some(url) = &args.repo_url {
        repo::check_url(url, "--repo-url", false).map_err(crate::error::UsageError::new)?;
        source.repo_url = url.clone();
    }
    if let Some(url) = &args.key_url {
        repo::check_url(url, "--key-url", true).map_err(crate::error::UsageError::new)?;
        source.key_url = url.clone();
    }
    let given_binds = if args.bind_ip.is_empty() {
        None
    } else {
        Some(parse_bind_ips(&args.bind_ip).map_err(crate::error::UsageError::new)?)
    };
    if let Some(user) = &args.admin_user {
        check_user(user).map_err(crate::error::UsageError::new)?;
    }
    let mut password = given_password(&args)?;
    let interactive = tty::can_prompt() && !args.yes && !ctx.dry_run;
    if password.is_none() {
        password = saved_password(&ctx.host)?.map(|p| (p, PasswordFrom::Saved));
    }
    // The same in a dry run: it shows what the real run would do.
    if password.is_none() && !args.yes && !tty::can_prompt() {
        bail_usage!(
            "no admin password: pass --admin-password-file <FILE>, set {ADMIN_PASSWORD_ENV}, or --yes to generate one (no terminal to ask on)"
        );
    }
    if let Some(binds) = &given_binds {
        check_bind_ips_are_ours(&ctx.host, binds)?;
    }
    let detected = net::default_route_ipv4(&ctx.host).ok();
    if let (None, Some(ip)) = (&given_binds, detected) {
        if !net::is_private_ipv4(ip) {
            tracing::warn!(
                "the default route's address {ip} is not a private address: mongod will listen on it, reachable beyond this network; pass --bind-ip with the private address the nodes use"
            );
        }
    }

    // A person at a terminal is asked for what is missing.
    let bind_ip = match given_binds {
        Some(b) => b,
        None if interactive => ask_bind_ips(detected)?,
        None => match detected {
            Some(ip) => parse_bind_ips(&[ip.to_string()]).map_err(crate::error::UsageError::new)?,
            None => bail_usage!(
                "this host's private IPv4 is unknown (no default route): pass --bind-ip"
            ),
        },
    };
    let user = match &args.admin_user {
        Some(u) => u.clone(),
        None if interactive => loop {
            let u = tty::ask("Admin user", DEFAULT_ADMIN_USER)?;
            match check_user(&u) {
                Ok(()) => break u,
                Err(e) => eprintln!("{e}"),
            }
        },
        None => DEFAULT_ADMIN_USER.to_string(),
    };
    let (password, from) = match password {
        Some(p) => p,
        None if interactive => ask_password(&user)?,
        None => (crate::secret::random_password()?, PasswordFrom::Generated),
    };
    let req = Request {
        distro,
        source,
        bind_ip,
        login: AdminLogin {
            user,
            password: crate::secret::Secret::new(password),
        },
        save_password: from == PasswordFrom::Generated,
        wait: args.mongo_wait,
        key_timeout: args.key_timeout,
    };

    let _lock = ctx.mutate()?;
    let runner = ctx.runner.as_ref();
    let package = setup::package_state(runner)?;
    let install = setup::plan_install(&ctx.host, &req, &package)?;
    let installed = package != Package::Missing;
    let configure = setup::plan_configure(&ctx.host, runner, &req, installed)?;
    if ctx.dry_run {
        print_plans(&install, &configure);
        return Ok(());
    }
    if install.is_empty() && configure.is_empty() {
        println!("setup mongo: nothing to do, already done.");
    } else {
        let progress = std::io::stderr().is_terminal();
        if progress {
            eprint!("{}", steps_list(&install, &configure));
        }
        let apply = ApplyCtx {
            host: &ctx.host,
            runner,
            progress,
        };
        install.apply(&apply)?;
        // Planned again from the files the package just installed.
        let configure = if install.is_empty() {
            configure
        } else {
            setup::plan_configure(&ctx.host, runner, &req, true)?
        };
        configure.apply(&apply)?;
    }
    print_result(ctx, &req, from, detected)
}

fn print_plans(install: &Plan, configure: &Plan) {
    if install.is_empty() && configure.is_empty() {
        println!("setup mongo: nothing to do, already done.");
        return;
    }
    if !install.is_empty() {
        print!("{}", install.render());
    }
    if !configure.is_empty() {
        if !install.is_empty() {
            println!(
                "(then, planned again once the package is installed; {} as mongodb-org ships it:)",
                conf::MONGOD_CONF
            );
        }
        print!("{}", configure.render());
    }
}

/// The numbered list a person sees before the work starts.
fn steps_list(install: &Plan, configure: &Plan) -> String {
    let mut out = String::from("ams-agent will:\n");
    let all = install.summaries().into_iter().chain(configure.summaries());
    for (i, s) in all.enumerate() {
        out.push_str(&format!("  {}. {s}\n", i + 1));
    }
    out
}

fn print_result(
    ctx: &Context,
    req: &Request,
    from: PasswordFrom,
    detected: Option<Ipv4Addr>,
) -> Result<()> {
    let conf_text = ctx
        .host
        .read_optional(Path::new(conf::MONGOD_CONF))?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let port = conf::current(&conf_text)
        .map(|c| c.port)
        .unwrap_or(conf::DEFAULT_PORT);
    let address = node_address(&req.bind_ip, detected);
    let authority = match &address {
        Some(a) if port == conf::DEFAULT_PORT => a.clone(),
        Some(a) => format!("{a}:{port}"),
        None => format!("<this host's private IP>:{port}"),
    };
    let user = &req.login.user;
    println!(
        "MongoDB {} is ready: mongodb://{user}:****@{authority}/?authSource=admin",
        req.series(),
    );
    println!(
        "On each AMS node (EC2 user-data), with this password in a root-only file:\n  ams-agent join --mongo {authority} --mongo-user {user} --mongo-password-file /root/mongo-admin-password"
    );
    if from == PasswordFrom::Generated {
        if std::io::stderr().is_terminal() {
            eprintln!(
                "The generated admin password (shown once; kept 0600 in {ADMIN_PASSWORD_FILE}): {}",
                req.login.password.expose()
            );
        } else {
            tracing::info!("the generated admin password is kept 0600 in {ADMIN_PASSWORD_FILE}");
        }
    }
    Ok(())
}

/// The address nodes use: the first one that is neither loopback nor
/// "every interface" (then the detected private IPv4).
fn node_address(binds: &[String], detected: Option<Ipv4Addr>) -> Option<String> {
    let usable = binds.iter().find(|b| {
        b.as_str() != "localhost"
            && b.parse::<IpAddr>()
                .map_or(true, |ip| !ip.is_loopback() && !ip.is_unspecified())
    });
    match usable {
        Some(b) if b.contains(':') => Some(format!("[{b}]")),
        Some(b) => Some(b.clone()),
        None => detected.map(|ip| ip.to_string()),
    }
}

fn given_password(args: &MongoArgs) -> Result<Option<(String, PasswordFrom)>> {
    if let Some(name) = &args.admin_password_ssm {
        if std::env::var(ADMIN_PASSWORD_ENV).is_ok_and(|p| !p.is_empty()) {
            bail_usage!(
                "--admin-password-ssm and {ADMIN_PASSWORD_ENV} both give the admin password; keep one"
            );
        }
        let password =
            super::join::ssm_password(&args.imds_endpoint, name, "--admin-password-ssm")?;
        if let Err(why) = scram_usable(password.expose()) {
            bail_usage!("--admin-password-ssm {name}: {why}");
        }
        return Ok(Some((password.expose().to_string(), PasswordFrom::Given)));
    }
    if let Some(file) = &args.admin_password_file {
        let password = read_password_file(file, "--admin-password-file")?;
        if let Err(why) = scram_usable(&password) {
            bail_usage!("--admin-password-file {}: {why}", file.display());
        }
        return Ok(Some((password, PasswordFrom::Given)));
    }
    match std::env::var(ADMIN_PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => {
            if let Err(why) = scram_usable(&p) {
                bail_usage!("{ADMIN_PASSWORD_ENV}: {why}");
            }
            Ok(Some((p, PasswordFrom::Given)))
        }
        _ => Ok(None),
    }
}

/// SCRAM-SHA-256 runs passwords through SASLprep, which forbids control
/// characters: mongod would refuse the user, and the driver the login.
fn scram_usable(password: &str) -> std::result::Result<(), &'static str> {
    if password.chars().any(char::is_control) {
        Err(
            "the password contains a newline or another control character, which SCRAM-SHA-256 (SASLprep) refuses",
        )
    } else {
        Ok(())
    }
}

/// A password an earlier run generated, so a second run logs in with it.
/// (Or the pending one, when a run died right after creating the user.)
fn saved_password(host: &crate::host::Host) -> Result<Option<String>> {
    for file in [ADMIN_PASSWORD_FILE, setup::ADMIN_PASSWORD_PENDING] {
        if let Some(bytes) = host.read_capped(Path::new(file), crate::host::fs::Cap::PASSWORD)? {
            return crate::config::password_from_bytes(bytes, file)
                .map_err(|why| anyhow::anyhow!("reading {file}: {why}"));
        }
    }
    Ok(None)
}

fn ask_bind_ips(detected: Option<Ipv4Addr>) -> Result<Vec<String>> {
    let default = match detected {
        Some(ip) => format!("127.0.0.1,{ip}"),
        None => "127.0.0.1".to_string(),
    };
    loop {
        let answer = tty::ask("Addresses mongod listens on (comma-separated)", &default)?;
        let items: Vec<String> = answer.split(',').map(str::to_string).collect();
        match parse_bind_ips(&items) {
            Ok(b) => return Ok(b),
            Err(e) => eprintln!("{e}"),
        }
    }
}

fn ask_password(user: &str) -> Result<(String, PasswordFrom)> {
    for _ in 0..3 {
        let first = tty::read_secret(&format!("Password for {user} (empty: generate one): "))?;
        if first.is_empty() {
            return Ok((crate::secret::random_password()?, PasswordFrom::Generated));
        }
        if let Err(why) = scram_usable(&first) {
            eprintln!("Not usable: {why}; try again.");
            continue;
        }
        let again = tty::read_secret("Again: ")?;
        if first == again {
            return Ok((first, PasswordFrom::Given));
        }
        eprintln!("The passwords differ; try again.");
    }
    bail_usage!("the admin password was not confirmed; pass --admin-password-file instead")
}

fn check_user(user: &str) -> std::result::Result<(), String> {
    if user.is_empty() || user.len() > 64 {
        return Err("--admin-user must be 1 to 64 characters".into());
    }
    if user.starts_with('-') {
        return Err(format!("--admin-user {user:?} may not start with '-'"));
    }
    if !user
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "--admin-user {:?}: use letters, digits, '.', '_' and '-' only",
            user
        ));
    }
    Ok(())
}

/// Every address literal of `--bind-ip` must be one of this host's (mongod
/// cannot bind another and would not start). Names are resolved by mongod;
/// "every interface" and loopback always work.
fn check_bind_ips_are_ours(host: &crate::host::Host, binds: &[String]) -> Result<()> {
    let Some(local) = net::local_addresses(host)? else {
        tracing::warn!(
            "cannot read this host's addresses (/proc/net/fib_trie): not checking that mongod can bind --bind-ip"
        );
        return Ok(());
    };
    for bind in binds {
        let Ok(ip) = bind.parse::<IpAddr>() else {
            continue;
        };
        if ip.is_unspecified() || ip.is_loopback() || local.contains(&ip) {
            continue;
        }
        let list: Vec<String> = local.iter().map(IpAddr::to_string).collect();
        bail_usage!(
            "--bind-ip {ip} is not an address of this host, so mongod could not listen on it; this host has {}",
            list.join(", ")
        );
    }
    Ok(())
}

/// Checks `--bind-ip` entries (IPv4, IPv6, host names) and puts 127.0.0.1
/// first: the agent and the localhost exception need it. "Every interface"
/// (`0.0.0.0`, `::`) stands alone: mongod binds each address it is given,
/// and 127.0.0.1 next to 0.0.0.0 fails with "address already in use"; `::`
/// is written as `::,0.0.0.0` because mongod's IPv6 sockets are IPv6-only.
pub fn parse_bind_ips(items: &[String]) -> std::result::Result<Vec<String>, String> {
    let mut out = vec!["127.0.0.1".to_string()];
    let mut everywhere: Option<Vec<String>> = None;
    for raw in items {
        let item = raw.trim();
        let item = item
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(item);
        if item.is_empty() {
            return Err("--bind-ip has an empty entry".into());
        }
        let canonical = if let Ok(ip) = item.parse::<IpAddr>() {
            if ip.is_multicast() {
                return Err(format!("--bind-ip {item} is a multicast address"));
            }
            if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
                return Err(format!("--bind-ip {item} is the broadcast address"));
            }
            if ip.is_unspecified() {
                tracing::warn!(
                    "--bind-ip {item}: mongod will listen on every interface (authorization is enabled; keep the port closed to the internet)"
                );
                let all = if ip.is_ipv6() {
                    vec!["::".to_string(), "0.0.0.0".to_string()]
                } else {
                    vec!["0.0.0.0".to_string()]
                };
                if everywhere.as_ref().is_none_or(|e| e.len() < all.len()) {
                    everywhere = Some(all);
                }
                continue;
            }
            ip.to_string()
        } else if net::is_dns_name(item) {
            let name = item.trim_end_matches('.').to_ascii_lowercase();
            // 127.0.0.1 is always there; "localhost" would bind it twice.
            if name == "localhost" {
                continue;
            }
            name
        } else {
            return Err(format!(
                "--bind-ip {:?}: not an IPv4 address, an IPv6 address or a host name",
                crate::human::escape(raw)
            ));
        };
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(everywhere.unwrap_or(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bind_ips_are_checked_and_loopback_comes_first() {
        assert_eq!(
            parse_bind_ips(&strings(&["10.0.1.5"])).unwrap(),
            ["127.0.0.1", "10.0.1.5"]
        );
        assert_eq!(
            parse_bind_ips(&strings(&[
                "[fd00::5]",
                "Mongo.Internal.",
                "mongo.internal",
                "127.0.0.1",
                "localhost"
            ]))
            .unwrap(),
            ["127.0.0.1", "fd00::5", "mongo.internal"]
        );
        assert_eq!(
            parse_bind_ips(&strings(&["10.0.1.5", "0.0.0.0"])).unwrap(),
            ["0.0.0.0"]
        );
        assert_eq!(
            parse_bind_ips(&strings(&["::", "0.0.0.0"])).unwrap(),
            ["::", "0.0.0.0"]
        );
        for bad in [
            "10.0.1.5 # x",
            "a:b",
            "",
            "x\ny",
            "\"q\"",
            "224.0.0.1",
            "-bad-",
            "1.2.3.4.5",
            "fe80::1%eth0",
        ] {
            assert!(
                parse_bind_ips(&strings(&[bad])).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn users_are_plain_names() {
        assert!(check_user("admin").is_ok());
        assert!(check_user("ams-admin.1").is_ok());
        for bad in ["", "a b", "a:b", "a@b", "a\n", "ü", "-admin", "--yes"] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_passwords_are_long_and_plain() {
        let a = crate::secret::random_password().unwrap();
        let b = crate::secret::random_password().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn node_address_skips_loopback() {
        let d = Some(Ipv4Addr::new(10, 0, 1, 5));
        assert_eq!(
            node_address(&strings(&["127.0.0.1", "10.0.1.7"]), d).unwrap(),
            "10.0.1.7"
        );
        assert_eq!(
            node_address(&strings(&["127.0.0.1", "0.0.0.0"]), d).unwrap(),
            "10.0.1.5"
        );
        assert_eq!(
            node_address(&strings(&["127.0.0.1", "fd00::5"]), d).unwrap(),
            "[fd00::5]"
        );
        assert_eq!(node_address(&strings(&["127.0.0.1"]), None), None);
    }
}
