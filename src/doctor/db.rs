//! The checks of the MongoDB host: the local mongod over loopback (its port
//! from /etc/mongod.conf), its configuration, the kernel settings it wants.

use std::path::Path;

use mongodb::bson::{Bson, Document, doc};

use super::Outcome;
use super::env::{Env, MONGO_BUDGET, QUERY_BUDGET};
use super::node::{active_unit, get, installed_unit, soft_limit};
use crate::human::escape;
use crate::mongo::error::RegistryError;
use crate::mongod::admin::{AdminLogin, LocalMongod};
use crate::mongod::conf;
use crate::mongod::tuning;

/// What the local mongod and its configuration say, read once.
pub struct Mongod {
    /// /etc/mongod.conf's settings.
    pub conf: Result<conf::Current, String>,
    pub local: Option<LocalMongod>,
    /// `buildInfo` (needs no login): the version.
    pub version: Result<String, RegistryError>,
    /// Whether an anonymous `listDatabases` is answered (authorization off).
    pub answers_anonymous: Result<bool, RegistryError>,
}

impl Mongod {
    fn at(&self) -> String {
        self.local
            .as_ref()
            .map_or("?".into(), |l| format!("{}:{}", l.host, l.port))
    }
}

fn mongod(env: &Env) -> &Mongod {
    env.mongod.get_or_init(|| {
        let path = &env.settings.mongod_conf;
        let conf = match env.host.read_optional(path) {
            Ok(Some(b)) => match String::from_utf8(b) {
                Ok(text) => conf::current(&text).map_err(|e| format!("{}: {e:#}", path.display())),
                Err(_) => Err(format!("{}: not UTF-8 text", path.display())),
            },
            Ok(None) => Err(format!("{} does not exist", path.display())),
            Err(e) => Err(format!("{e:#}")),
        };
        let port = conf.as_ref().map_or(conf::DEFAULT_PORT, |c| c.port);
        let local = LocalMongod::new(port);
        let l = local.clone();
        let asked = env.block_on(async move {
            // A refused port fails at once (the driver would retry until
            // its own deadline).
            let addr = (l.host.clone(), l.port);
            match tokio::time::timeout(MONGO_BUDGET, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let e = RegistryError::new(
                        crate::mongo::error::Failure::Unreachable,
                        format!("cannot connect to {}:{}: {e}", l.host, l.port),
                    );
                    return (Err(e.clone()), Err(e));
                }
                Err(_) => {
                    let e = RegistryError::new(
                        crate::mongo::error::Failure::Timeout,
                        format!(
                            "{}:{} did not accept a connection within {}",
                            l.host,
                            l.port,
                            crate::human::show_duration(MONGO_BUDGET)
                        ),
                    );
                    return (Err(e.clone()), Err(e));
                }
            }
            let version = async {
                let info = l
                    .command(
                        None,
                        doc! {"buildInfo": 1},
                        "asking the version",
                        MONGO_BUDGET,
                    )
                    .await?;
                Ok::<String, RegistryError>(info.get_str("version").unwrap_or("?").to_string())
            };
            let anonymous = async {
                l.refuses_anonymous(MONGO_BUDGET)
                    .await
                    .map(|refused| !refused)
            };
            tokio::join!(version, anonymous)
        });
        let (version, answers_anonymous) = match asked {
            Ok(pair) => pair,
            Err(e) => (
                Err(RegistryError::new(
                    crate::mongo::error::Failure::Other,
                    e.clone(),
                )),
                Err(RegistryError::new(crate::mongo::error::Failure::Other, e)),
            ),
        };
        Mongod {
            conf,
            local: Some(local),
            version,
            answers_anonymous,
        }
    })
}

/// `major.minor` of a version (`8.0.4` → `8.0`).
pub fn series(version: &str) -> Option<String> {
    let mut it = version.split('.');
    let (a, b) = (it.next()?, it.next()?);
    (a.chars().all(|c| c.is_ascii_digit())
        && !a.is_empty()
        && b.chars().take_while(|c| c.is_ascii_digit()).count() > 0)
        .then(|| {
            format!(
                "{a}.{}",
                b.chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
            )
        })
}

/// The series: the running mongod's, else the installed package's.
fn installed_series(env: &Env) -> Result<(String, &'static str), String> {
    let m = mongod(env);
    if let Ok(v) = &m.version {
        if let Some(s) = series(v) {
            return Ok((s, "the running mongod"));
        }
    }
    match crate::mongod::setup::package_state(env.runner.as_ref()) {
        Ok(crate::mongod::setup::Package::Installed { version }) => series(&version)
            .map(|s| (s, "the mongodb-org package"))
            .ok_or_else(|| format!("mongodb-org {version} has no major.minor version")),
        Ok(crate::mongod::setup::Package::Missing) => {
            Err("mongod does not answer and mongodb-org is not installed".into())
        }
        Err(e) => Err(format!("{e:#}")),
    }
}

pub fn mongod_service(env: &Env) -> Outcome {
    let props = match active_unit(
        env,
        "mongod",
        "sudo ams-agent setup mongo (installs and configures mongodb-org)",
        "sudo systemctl start mongod; see `journalctl -u mongod`",
        "",
    ) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let (active, sub) = (get(&props, "ActiveState"), get(&props, "SubState"));
    let enabled = get(&props, "UnitFileState");
    if !enabled.is_empty() && enabled != "enabled" {
        return Outcome::warn(
            format!("mongod.service is {active} ({sub}) but {enabled}: it will not start at boot"),
            "sudo systemctl enable mongod",
        );
    }
    Outcome::ok(format!("mongod.service is {active} ({sub})"))
}

pub fn mongod_version(env: &Env) -> Outcome {
    let m = mongod(env);
    match &m.version {
        Ok(v) => {
            let s = series(v).unwrap_or_default();
            if crate::mongod::os::MONGODB_VERSIONS.contains(&s.as_str()) {
                Outcome::ok(format!(
                    "MongoDB {} (series {s}) answers on {}",
                    escape(v),
                    m.at()
                ))
            } else {
                Outcome::warn(
                    format!(
                        "MongoDB {} answers on {}; series {} is not one ams-agent supports ({})",
                        escape(v),
                        m.at(),
                        escape(&s),
                        crate::mongod::os::MONGODB_VERSIONS.join(", ")
                    ),
                    "upgrade MongoDB along its featureCompatibilityVersion steps to a supported series",
                )
            }
        }
        Err(e) => Outcome::fail(
            format!("mongod does not answer on {}: {}", m.at(), e.message),
            "sudo systemctl start mongod; see `journalctl -u mongod` (the port comes from net.port of /etc/mongod.conf)",
        ),
    }
}

fn loopback(addr: &str) -> bool {
    let a = addr.trim();
    a == "localhost" || a.starts_with("127.") || a == "::1" || a.starts_with('/')
}

pub fn mongod_auth(env: &Env) -> Outcome {
    let m = mongod(env);
    let c = match &m.conf {
        Ok(c) => c,
        Err(e) => {
            return Outcome::fail(
                e.clone(),
                "sudo ams-agent setup mongo (writes bindIp and authorization into /etc/mongod.conf)",
            );
        }
    };
    let binds: Vec<&str> = c
        .bind_ip
        .as_deref()
        .unwrap_or("127.0.0.1")
        .split(',')
        .map(str::trim)
        .collect();
    let network = c.bind_ip_all || binds.iter().any(|b| !loopback(b));
    let listen = if c.bind_ip_all {
        "every interface (bindIpAll)".to_string()
    } else {
        escape(&binds.join(",")).into_owned()
    };
    let fix = "sudo ams-agent setup mongo (creates the admin user and turns authorization on, before bindIp opens the port)";
    match &m.answers_anonymous {
        Ok(true) if network => Outcome::fail(
            format!(
                "mongod at {} answers unauthenticated commands and listens on {listen}: anyone who reaches the port reads and changes the cluster's data",
                m.at()
            ),
            if c.authorization {
                "mongod.conf enables authorization but the running mongod does not enforce it: sudo systemctl restart mongod"
            } else {
                fix
            },
        ),
        Ok(true) => Outcome::warn(
            format!(
                "mongod answers unauthenticated commands (authorization is off; it listens on {listen} only)"
            ),
            fix,
        ),
        Ok(false) if c.authorization => Outcome::ok(format!(
            "authorization is enforced (an anonymous command is refused); bindIp {listen}"
        )),
        Ok(false) => Outcome::warn(
            format!(
                "mongod refuses anonymous commands, but /etc/mongod.conf does not enable authorization: it runs with another configuration (bindIp {listen})"
            ),
            "check how mongod is started (`systemctl cat mongod`), and security.authorization in /etc/mongod.conf",
        ),
        Err(e) => {
            let asked = format!("the running mongod could not be asked: {}", e.message);
            if network && !c.authorization {
                Outcome::fail(
                    format!("/etc/mongod.conf listens on {listen} without authorization ({asked})"),
                    fix,
                )
            } else {
                Outcome::warn(
                    format!(
                        "/etc/mongod.conf: authorization {}, bindIp {listen}; {asked}",
                        if c.authorization { "enabled" } else { "off" }
                    ),
                    "sudo systemctl start mongod; see `journalctl -u mongod`",
                )
            }
        }
    }
}

pub fn mongod_thp(env: &Env) -> Outcome {
    let dir = Path::new(tuning::THP_DIR);
    if !env.host.is_dir(dir) {
        return Outcome::skip(format!(
            "this kernel has no transparent huge pages ({} is missing; a container?)",
            dir.display()
        ));
    }
    let (series, from) = match installed_series(env) {
        Ok(s) => s,
        Err(e) => {
            return Outcome::warn(
                format!("cannot tell which MongoDB series to check for: {e}"),
                "start mongod (see mongod.version)",
            );
        }
    };
    let mut wrong = Vec::new();
    let mut right = Vec::new();
    let mut fixes = Vec::new();
    for (file, want) in tuning::thp_settings(&series) {
        match tuning::thp_value(&env.host, file) {
            Some(now) if now == *want => right.push(format!("{file}={now}")),
            Some(now) => {
                wrong.push(format!("{file} is {} (wants {want})", escape(&now)));
                fixes.push(format!("echo {want} | sudo tee {}/{file}", tuning::THP_DIR));
            }
            None => {}
        }
    }
    if wrong.is_empty() {
        return Outcome::ok(format!(
            "transparent huge pages as MongoDB {series} wants ({}; series from {from})",
            right.join(", ")
        ));
    }
    fixes.push(format!(
        "to keep them across reboots: sudo ams-agent setup mongo --mongodb-version {series} (installs {})",
        tuning::THP_UNIT_NAME
    ));
    Outcome::warn(
        format!(
            "transparent huge pages are wrong for MongoDB {series} ({from}): {}",
            wrong.join(", ")
        ),
        fixes.join("; "),
    )
}

pub fn mongod_limits(env: &Env) -> Outcome {
    let props = match installed_unit(env, "mongod", "mongod.service") {
        Ok(p) => p,
        Err(o) => return o,
    };
    let want = tuning::LIMIT as u64;
    let mut low = Vec::new();
    let mut shown = Vec::new();
    for name in ["LimitNOFILE", "LimitNPROC"] {
        match soft_limit(&props, name) {
            Some(n) if n >= want => shown.push(format!(
                "{name}={}",
                if n == u64::MAX {
                    "infinity".into()
                } else {
                    n.to_string()
                }
            )),
            Some(n) => low.push(format!("{name} is {n}")),
            None => low.push(format!("{name} is not reported")),
        }
    }
    if low.is_empty() {
        Outcome::ok(format!(
            "mongod.service: {} (MongoDB wants at least {want})",
            shown.join(", ")
        ))
    } else {
        Outcome::warn(
            format!(
                "mongod.service: {}; MongoDB wants at least {want}",
                low.join(", ")
            ),
            format!(
                "sudo ams-agent setup mongo (writes {}), then sudo systemctl daemon-reload && sudo systemctl restart mongod",
                tuning::LIMITS_DROP_IN
            ),
        )
    }
}

/// The message of a structured (4.4+) log line, or the line itself.
fn log_message(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| line.to_string())
}

pub fn mongod_warnings(env: &Env) -> Outcome {
    let m = mongod(env);
    if m.version.is_err() {
        return Outcome::skip("mongod does not answer (see mongod.version)");
    }
    let Some(local) = &m.local else {
        return Outcome::skip("mongod's address is unknown (see mongod.version)");
    };
    let get_log = doc! {"getLog": "startupWarnings"};
    let what = "reading mongod's startup warnings";
    let login = env
        .settings
        .admin_password
        .as_ref()
        .map(|(pw, _)| AdminLogin {
            user: env.settings.admin_user.clone(),
            password: pw.clone(),
        });
    let answer = env.block_on(async {
        match local
            .command(None, get_log.clone(), what, QUERY_BUDGET)
            .await
        {
            Err(e) if e.code == Some(13) => match &login {
                Some(l) => local
                    .command(Some(l), get_log, what, QUERY_BUDGET)
                    .await
                    .map(Some),
                None => Ok(None),
            },
            other => other.map(Some),
        }
    });
    let reply: Document = match answer {
        Ok(Ok(Some(d))) => d,
        Ok(Ok(None)) => {
            return Outcome::warn(
                "mongod shows its startup warnings only to an admin, and no admin password was given",
                format!(
                    "pass --admin-password-file FILE (and --admin-user, default admin), or set {}",
                    crate::config::ADMIN_PASSWORD_ENV
                ),
            );
        }
        Ok(Err(e)) => {
            return Outcome::warn(
                e.message,
                "check --admin-user and the password file (the admin `ams-agent setup mongo` created)",
            );
        }
        Err(e) => return Outcome::fail(e, "run it again"),
    };
    let lines: Vec<String> = reply
        .get_array("log")
        .map(|a| {
            a.iter()
                .map(|l| match l {
                    Bson::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if lines.is_empty() {
        return Outcome::ok("mongod logged no startup warnings");
    }
    let first = log_message(&lines[0]);
    let n = lines.len();
    Outcome::warn(
        format!(
            "mongod logged {n} startup warning{}: {}{}",
            if n == 1 { "" } else { "s" },
            first,
            if n > 1 { " …" } else { "" }
        ),
        "each warning names what to change (MongoDB's production notes); the lines below are mongod's own",
    )
    .with_details(lines)
}

pub fn time_ntp(env: &Env) -> Outcome {
    let fix = "sudo timedatectl set-ntp true (systemd-timesyncd), or install chrony";
    let timedatectl = env.command("timedatectl", &["show"]);
    let td_err = match &timedatectl {
        Ok(out) if out.success() => {
            let props: std::collections::HashMap<&str, &str> = out
                .stdout
                .lines()
                .filter_map(|l| l.split_once('='))
                .collect();
            match props.get("NTPSynchronized").copied() {
                Some("yes") => {
                    return Outcome::ok(
                        "the clock is synchronized (timedatectl: NTPSynchronized=yes)",
                    );
                }
                Some(v) => {
                    let ntp = props.get("NTP").copied().unwrap_or("?");
                    return Outcome::warn(
                        format!(
                            "the clock is not synchronized (timedatectl: NTPSynchronized={}, NTP={}): nodes and MongoDB drift apart",
                            escape(v),
                            escape(ntp)
                        ),
                        fix,
                    );
                }
                None => "timedatectl show printed no NTPSynchronized".to_string(),
            }
        }
        Ok(out) => format!(
            "timedatectl: {}",
            super::env::nonempty(&out.tail(1), "failed")
        ),
        Err(e) => format!("timedatectl: {e}"),
    };
    match env.command("chronyc", &["-n", "tracking"]) {
        Ok(out) if out.success() => {
            let leap = out
                .stdout
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Leap status")
                        .map(|r| r.trim_start_matches([' ', ':']).trim().to_string())
                })
                .unwrap_or_default();
            let offset = out
                .stdout
                .lines()
                .find_map(|l| {
                    l.strip_prefix("System time")
                        .map(|r| r.trim_start_matches([' ', ':']).trim().to_string())
                })
                .unwrap_or_default();
            if leap == "Normal" {
                Outcome::ok(format!(
                    "the clock is synchronized (chronyc: leap status Normal, {})",
                    escape(&offset)
                ))
            } else {
                Outcome::warn(
                    format!(
                        "the clock is not synchronized (chronyc: leap status {})",
                        escape(if leap.is_empty() { "unknown" } else { &leap })
                    ),
                    "check chrony's sources: chronyc sources -v",
                )
            }
        }
        other => {
            let ch = match other {
                Ok(out) => format!("chronyc: {}", super::env::nonempty(&out.tail(1), "failed")),
                Err(e) => format!("chronyc: {e}"),
            };
            Outcome::warn(
                format!(
                    "cannot tell whether the clock is synchronized ({}; {})",
                    escape(&td_err),
                    escape(&ch)
                ),
                fix,
            )
        }
    }
}

/// The filesystem type of the mount holding `path` (a host path), from
/// the root's `/proc/self/mountinfo`: the longest mount point above it.
pub fn fs_type(env: &Env, path: &Path) -> Result<(String, String), String> {
    let table = env
        .host
        .read_optional(Path::new("/proc/self/mountinfo"))
        .map_err(|e| format!("{e:#}"))?
        .ok_or("/proc/self/mountinfo cannot be read")?;
    let text = String::from_utf8_lossy(&table);
    let mut best: Option<(usize, String, String)> = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let (Some(mount), Some(fstype)) = (f.get(4), f.get(dash + 1)) else {
            continue;
        };
        let mount = crate::host::fs::unescape_mountinfo(mount);
        let under = path.starts_with(&mount);
        if under && best.as_ref().is_none_or(|(len, _, _)| mount.len() >= *len) {
            best = Some((mount.len(), mount.clone(), fstype.to_string()));
        }
    }
    best.map(|(_, m, t)| (t, m))
        .ok_or_else(|| format!("no mount holds {}", path.display()))
}

pub fn mongod_fs(env: &Env) -> Outcome {
    let m = mongod(env);
    let c = match &m.conf {
        Ok(c) => c,
        Err(e) => return Outcome::fail(e.clone(), "sudo ams-agent setup mongo"),
    };
    let db_path = Path::new(&c.db_path);
    match env.host.probe(db_path) {
        Ok(Some(meta)) if meta.is_dir() => {}
        Ok(Some(_)) => {
            return Outcome::fail(
                format!("storage.dbPath {} is not a folder", escape(&c.db_path)),
                "point storage.dbPath of /etc/mongod.conf at mongod's data folder",
            );
        }
        Ok(None) => {
            return Outcome::fail(
                format!("storage.dbPath {} does not exist", escape(&c.db_path)),
                "create it (owned by mongodb) or fix storage.dbPath in /etc/mongod.conf",
            );
        }
        Err(e) => return Outcome::warn(format!("{e:#}"), "run doctor as root"),
    }
    match fs_type(env, db_path) {
        Ok((t, mount)) if t == "xfs" => Outcome::ok(format!(
            "storage.dbPath {} is on XFS ({})",
            escape(&c.db_path),
            escape(&mount)
        )),
        Ok((t, mount)) => Outcome::warn(
            format!(
                "storage.dbPath {} is on {} ({}); MongoDB recommends XFS for WiredTiger",
                escape(&c.db_path),
                escape(&t),
                escape(&mount)
            ),
            "move the data to an XFS volume (mkfs.xfs, mount it, point storage.dbPath at it) at the next maintenance",
        ),
        Err(e) => Outcome::warn(
            format!("cannot tell the filesystem of {}: {e}", escape(&c.db_path)),
            "run doctor on the host itself (it reads /proc/self/mountinfo)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_versions() {
        assert_eq!(series("8.0.4").as_deref(), Some("8.0"));
        assert_eq!(series("7.0.14-rc1").as_deref(), Some("7.0"));
        assert_eq!(series("1:8.0.4").as_deref(), None);
        assert_eq!(series("x"), None);
    }

    #[test]
    fn structured_log_lines_give_their_message() {
        assert_eq!(
            log_message(
                r#"{"t":{"$date":"2026-01-01T00:00:00Z"},"s":"W","msg":"Access control is not enabled"}"#
            ),
            "Access control is not enabled"
        );
        assert_eq!(log_message("plain"), "plain");
    }
}
