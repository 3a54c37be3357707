//! What the checks read, each thing read once per run and shared by the
//! checks that need it: agent.toml, AMS's files, `systemctl show` per unit,
//! the MongoDB session of the node registry, the local mongod. Every
//! reading is a `Result<_, String>`: a check that cannot read what it needs
//! says so (never a silent default).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use mongodb::bson::{DateTime, Document};

use super::Role;
use crate::ams::AmsLayout;
use crate::ams::layout::DEFAULT_AMS_HOME;
use crate::config::{AgentConfig, JoinRecord};
use crate::host::{CommandRunner, CommandSpec, Host};
use crate::mongo::registry::{Deadlines, Registry, Target};
use crate::properties::Properties;
use crate::secret::Secret;

/// How long the node's MongoDB session may take to be ready (TCP,
/// authentication, two pings, the server's clock): the deadline of
/// `mongo.reach`, and what every check that needs the session waits for
/// at most before its own work.
pub const MONGO_BUDGET: Duration = Duration::from_secs(3);
/// What a check may spend on its own queries once the session is there.
pub const QUERY_BUDGET: Duration = Duration::from_secs(2);
/// Programs run by the checks (`systemctl show`, `iptables-save`, …).
pub const COMMAND_BUDGET: Duration = Duration::from_secs(3);

/// What the command line says.
#[derive(Debug, Clone)]
pub struct Settings {
    /// agent.toml (a host path).
    pub config: PathBuf,
    /// `--ams-home`; else agent.toml's `[node] ams_home`, else the default.
    pub ams_home: Option<PathBuf>,
    /// The URL AMS answers on (port 5080).
    pub ams_url: String,
    /// mongod's configuration (a host path).
    pub mongod_conf: PathBuf,
    /// The admin login for what mongod shows only to an admin
    /// (`getLog`): user, and the password with where it came from.
    pub admin_user: String,
    pub admin_password: Option<(Secret, String)>,
    /// HAProxy's configuration, and Nginx's file of the agent's section.
    pub haproxy_config: PathBuf,
    pub nginx_config: PathBuf,
    /// The registry given by flags (`--mongo`), over agent.toml's.
    pub registry: Option<Target>,
}

/// Settings for tests: the default paths, no registry, AMS on a closed
/// loopback port.
#[cfg(test)]
pub fn test_settings() -> Settings {
    Settings {
        config: "/etc/ams-agent/agent.toml".into(),
        ams_home: None,
        ams_url: "http://127.0.0.1:1/".into(),
        mongod_conf: "/etc/mongod.conf".into(),
        admin_user: "admin".into(),
        admin_password: None,
        haproxy_config: "/etc/haproxy/haproxy.cfg".into(),
        nginx_config: "/etc/nginx/nginx.conf".into(),
        registry: None,
    }
}

/// A unit as `systemctl show` describes it.
pub type UnitProps = HashMap<String, String>;

/// One unit's `systemctl show`, asked at most once.
type UnitCell = OnceLock<Result<UnitProps, String>>;

/// The properties asked of every unit.
const UNIT_PROPERTIES: &str = "LoadState,ActiveState,SubState,UnitFileState,LimitNOFILE,LimitNOFILESoft,LimitNPROC,LimitNPROCSoft,ActiveEnterTimestamp";

/// AMS's configuration files as they are now.
pub struct AmsFiles {
    pub layout: AmsLayout,
    pub red5: Properties,
    pub jee: String,
    /// Every application (`root` included) and its red5-web.properties.
    pub apps: Vec<(String, Properties)>,
}

/// An open session with the node registry's MongoDB, and what opening it
/// measured.
pub struct Session {
    pub registry: Registry,
    /// Where the URI came from (`agent.toml`, or AMS's `clusterdb.host`).
    pub source: &'static str,
    /// The user it logged in as, if any (escaped).
    pub user: Option<String>,
    /// TCP connect to each host of the URI (None for `mongodb+srv://`).
    pub tcp: Option<Vec<(String, Duration)>>,
    /// The first ping: connection, handshake and authentication.
    pub connect: Duration,
    /// A second ping on the open connection.
    pub rtt: Duration,
    /// The server's clock (`hello.localTime`) and this host's clock at the
    /// middle of that round trip.
    pub server_time: DateTime,
    pub local_time: SystemTime,
    pub hello_rtt: Duration,
    pub database: String,
    pub collection: String,
}

impl Session {
    /// This host's clock minus MongoDB's, in seconds (positive: ahead).
    pub fn skew_seconds(&self) -> f64 {
        let local = self
            .local_time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        local - self.server_time.timestamp_millis() as f64 / 1000.0
    }

    /// The server's clock now (its clock at the hello, plus the time since).
    pub fn server_now(&self) -> DateTime {
        let since = SystemTime::now()
            .duration_since(self.local_time)
            .unwrap_or_default();
        DateTime::from_millis(self.server_time.timestamp_millis() + since.as_millis() as i64)
    }
}

/// Why the session could not be opened, and at which stage.
#[derive(Debug, Clone)]
pub struct SessionError {
    /// `none` (no MongoDB configured: not joined, AMS standalone),
    /// `config` (a configuration that cannot work), `tcp`, `auth`, `server`.
    pub stage: &'static str,
    pub message: String,
    pub fix: String,
}

pub struct Env {
    pub host: Host,
    pub runner: Arc<dyn CommandRunner>,
    pub settings: Settings,
    /// The checks of this run (a check that another one reports on can
    /// leave the reporting to it).
    pub selected: HashSet<&'static str>,
    pub roles: Vec<Role>,
    pub started: SystemTime,
    rt: OnceLock<Result<tokio::runtime::Runtime, String>>,
    config: OnceLock<Result<Option<AgentConfig>, String>>,
    ams: OnceLock<Result<AmsFiles, String>>,
    units: Mutex<HashMap<String, Arc<UnitCell>>>,
    session: OnceLock<Result<Arc<Session>, SessionError>>,
    node_doc: OnceLock<Result<Option<Document>, String>>,
    firewall: OnceLock<super::firewall::Rulesets>,
    pub(super) mongod: OnceLock<super::db::Mongod>,
}

impl Env {
    /// An environment for `settings`; the roles and the checks of the run
    /// are set once they are known ([`Env::plan`]).
    pub fn new(root: &Path, runner: Arc<dyn CommandRunner>, settings: Settings) -> Self {
        Env {
            host: Host::new(root, Default::default()),
            runner,
            settings,
            selected: HashSet::new(),
            roles: Vec::new(),
            started: SystemTime::now(),
            rt: OnceLock::new(),
            config: OnceLock::new(),
            ams: OnceLock::new(),
            units: Mutex::new(HashMap::new()),
            session: OnceLock::new(),
            node_doc: OnceLock::new(),
            firewall: OnceLock::new(),
            mongod: OnceLock::new(),
        }
    }

    /// The roles and the checks of this run.
    pub fn plan(&mut self, roles: Vec<Role>, checks: &[&'static super::Check]) {
        self.roles = roles;
        self.selected = checks.iter().map(|c| c.id).collect();
    }

    /// Runs a future on the run's runtime (two worker threads, made on
    /// first use), from a check's own thread.
    pub fn block_on<T>(&self, fut: impl std::future::Future<Output = T>) -> Result<T, String> {
        let rt = self.rt.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("starting the async runtime: {e}"))
        });
        match rt {
            Ok(rt) => Ok(rt.block_on(fut)),
            Err(e) => Err(e.clone()),
        }
    }

    /// Runs a read-only program within [`COMMAND_BUDGET`].
    pub fn command(&self, program: &str, args: &[&str]) -> Result<crate::host::Output, String> {
        self.command_within(program, args, COMMAND_BUDGET)
    }

    /// Runs a read-only program within `budget`.
    pub fn command_within(
        &self,
        program: &str,
        args: &[&str],
        budget: Duration,
    ) -> Result<crate::host::Output, String> {
        let spec = CommandSpec::new(program, args).timeout(budget);
        self.runner.run(&spec).map_err(|e| format!("{e:#}"))
    }

    /// agent.toml: None when it does not exist; why it cannot be used.
    pub fn config(&self) -> &Result<Option<AgentConfig>, String> {
        self.config.get_or_init(|| {
            AgentConfig::load(&self.host, &self.settings.config).map_err(|e| format!("{e:#}"))
        })
    }

    /// The AMS install folder and where that came from.
    pub fn ams_home(&self) -> (PathBuf, &'static str) {
        if let Some(h) = &self.settings.ams_home {
            return (h.clone(), "--ams-home");
        }
        match self.config() {
            Ok(Some(c)) => (c.node.ams_home.clone(), "agent.toml"),
            _ => (PathBuf::from(DEFAULT_AMS_HOME), "the default"),
        }
    }

    /// AMS's files, read once.
    pub fn ams(&self) -> &Result<AmsFiles, String> {
        self.ams.get_or_init(|| {
            let layout = AmsLayout::new(self.ams_home().0);
            read_ams(&self.host, layout).map_err(|e| format!("{e:#}"))
        })
    }

    /// `systemctl show <unit>`, asked once per unit per run.
    pub fn unit(&self, unit: &str) -> Result<UnitProps, String> {
        let cell = {
            let mut units = self.units.lock().expect("units lock");
            units.entry(unit.to_string()).or_default().clone()
        };
        cell.get_or_init(|| {
            let prop = format!("--property={UNIT_PROPERTIES}");
            let out = self.command("systemctl", &["show", unit, &prop])?;
            if !out.success() {
                return Err(format!(
                    "`systemctl show {unit}` failed: {}",
                    nonempty(&out.tail(2), "no message")
                ));
            }
            Ok(out
                .stdout
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect())
        })
        .clone()
    }

    /// This node's id: agent.toml's `[node] id`, else the join record's,
    /// else /etc/machine-id; with where it came from.
    pub fn node_id(&self) -> Option<(String, &'static str)> {
        if let Ok(Some(c)) = self.config() {
            if let Some(id) = &c.node.id {
                return Some((id.clone(), "agent.toml"));
            }
        }
        if let Some(r) = JoinRecord::load(&self.host) {
            return Some((r.node_id, crate::config::JOIN_RECORD));
        }
        crate::node::identity::machine_id(&self.host)
            .ok()
            .flatten()
            .map(|id| (id, "/etc/machine-id"))
    }

    /// The session with the node registry's MongoDB: opened once, within
    /// [`MONGO_BUDGET`].
    pub fn session(&self) -> &Result<Arc<Session>, SessionError> {
        self.session.get_or_init(|| {
            let target = self.target()?;
            match self.block_on(open_session(target)) {
                Ok(r) => r.map(Arc::new),
                Err(e) => Err(SessionError {
                    stage: "config",
                    message: e,
                    fix: "run it again".into(),
                }),
            }
        })
    }

    /// Where the node registry is: agent.toml (the password from the
    /// password file or AMS_AGENT_MONGO_PASSWORD), else AMS's own
    /// `clusterdb.host`.
    fn target(&self) -> Result<(Target, &'static str), SessionError> {
        let config_err = |message: String, fix: String| SessionError {
            stage: "config",
            message,
            fix,
        };
        if let Some(t) = &self.settings.registry {
            return Ok((t.clone(), "--mongo"));
        }
        match self.config() {
            Ok(Some(c)) => {
                let password = crate::config::runtime_password(&self.host).map_err(|e| {
                    config_err(
                        format!("{e:#}"),
                        format!("run doctor as root, or set {}", crate::config::PASSWORD_ENV),
                    )
                })?;
                Ok((
                    Target {
                        uri: c.mongo.uri.clone(),
                        password: password.map(Secret::new),
                        database: c.mongo.database.clone(),
                        collection: c.mongo.collection.clone(),
                    },
                    "agent.toml",
                ))
            }
            Ok(None) => {
                let host = match self.ams() {
                    Ok(f) => f.red5.get("clusterdb.host").filter(|h| !h.is_empty()),
                    Err(_) => None,
                };
                let Some(host) = host.filter(|h| h.to_ascii_lowercase().starts_with("mongodb"))
                else {
                    return Err(SessionError {
                        stage: "none",
                        message: format!(
                            "no MongoDB configured: {} does not exist and AMS's red5.properties names no MongoDB URI in clusterdb.host",
                            self.settings.config.display()
                        ),
                        fix: "join the cluster: sudo ams-agent join --mongo <MongoDB address>"
                            .into(),
                    });
                };
                let (uri, password) = crate::uri::split_password(&host);
                Ok((
                    Target {
                        uri,
                        password: password.map(Secret::new),
                        database: crate::config::DEFAULT_DATABASE.into(),
                        collection: crate::config::DEFAULT_COLLECTION.into(),
                    },
                    "red5.properties clusterdb.host",
                ))
            }
            Err(e) => Err(config_err(
                e.clone(),
                format!(
                    "fix {} (or run `ams-agent join` again)",
                    self.settings.config.display()
                ),
            )),
        }
    }

    /// This node's registry document (None when there is none).
    pub fn node_doc(&self, id: &str) -> &Result<Option<Document>, String> {
        self.node_doc.get_or_init(|| {
            let session = self.session().as_ref().map_err(|e| e.message.clone())?;
            self.block_on(session.registry.find_node(id))?
                .map_err(|e| e.message)
        })
    }

    /// This node's private IPv4: agent.toml's, else what its registry
    /// document says, else the default route's; with where it came from.
    pub fn private_ip(&self, doc: Option<&Document>) -> Option<(Ipv4Addr, &'static str)> {
        if let Ok(Some(c)) = self.config() {
            if let Some(ip) = c.node.private_ip {
                return Some((ip, "agent.toml"));
            }
        }
        if let Some(ip) = doc
            .and_then(|d| d.get_str("privateIp").ok())
            .and_then(|s| s.parse().ok())
        {
            return Some((ip, "its registry document"));
        }
        crate::host::net::default_route_ipv4(&self.host)
            .ok()
            .map(|ip| (ip, "the default route"))
    }

    /// The firewall rules, read once (`iptables-save`, `nft -j list ruleset`).
    pub fn firewall(&self) -> &super::firewall::Rulesets {
        self.firewall
            .get_or_init(|| super::firewall::Rulesets::read(self))
    }

    /// Whether `id` is one of this run's checks.
    pub fn runs(&self, id: &str) -> bool {
        self.selected.contains(id)
    }
}

pub fn nonempty(s: &str, otherwise: &str) -> String {
    if s.trim().is_empty() {
        otherwise.to_string()
    } else {
        s.trim().to_string()
    }
}

fn read_ams(host: &Host, layout: AmsLayout) -> anyhow::Result<AmsFiles> {
    use crate::ams::files::{Kind, read_text};
    layout.check(host)?;
    let red5 = Properties::parse(&read_text(
        host,
        &layout.red5_properties(),
        Kind::Properties,
    )?);
    let jee = read_text(host, &layout.jee_container(), Kind::Xml)?;
    let mut apps = Vec::new();
    for app in layout.applications(host)? {
        let props = Properties::parse(&read_text(
            host,
            &layout.webapp_properties(&app),
            Kind::Properties,
        )?);
        apps.push((app, props));
    }
    Ok(AmsFiles {
        layout,
        red5,
        jee,
        apps,
    })
}

/// The hosts of a `mongodb://` URI (`host:port`), None for SRV URIs.
fn uri_hosts(uri: &str) -> Option<Vec<(String, u16)>> {
    let cs = mongodb::options::ConnectionString::parse(uri).ok()?;
    let hosts = match cs.host_info {
        mongodb::options::HostInfo::HostIdentifiers(h) => h,
        _ => return None,
    };
    Some(
        hosts
            .into_iter()
            .filter_map(|a| match a {
                mongodb::options::ServerAddress::Tcp { host, port } => {
                    Some((host, port.unwrap_or(27017)))
                }
                _ => None,
            })
            .collect(),
    )
}

async fn open_session((target, source): (Target, &'static str)) -> Result<Session, SessionError> {
    let start = Instant::now();
    let shown = crate::human::escape(&target.shown()).into_owned();
    let left = || MONGO_BUDGET.saturating_sub(start.elapsed());
    let user = crate::uri::MongoUri::parse(&target.uri)
        .and_then(|u| u.user().map(|s| s.to_string()))
        .map(|u| {
            let decoded = percent_encoding::percent_decode_str(&u)
                .decode_utf8_lossy()
                .into_owned();
            crate::human::escape(&decoded).into_owned()
        });
    // TCP first: a refused port or an unroutable address is said in those
    // words, at once (the driver would retry until its own deadline).
    let tcp = match uri_hosts(&target.uri) {
        Some(hosts) => {
            let budget = left();
            let mut set = tokio::task::JoinSet::new();
            for (i, (h, p)) in hosts.into_iter().enumerate() {
                set.spawn(async move {
                    let addr = format!("{h}:{p}");
                    let t0 = Instant::now();
                    let r = tokio::time::timeout(
                        budget,
                        tokio::net::TcpStream::connect((h.as_str(), p)),
                    )
                    .await;
                    let r = match r {
                        Ok(Ok(_)) => Ok(t0.elapsed()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!(
                            "no answer within {}",
                            crate::human::show_duration(budget)
                        )),
                    };
                    (i, addr, r)
                });
            }
            let mut results: Vec<(usize, String, Result<Duration, String>)> = set.join_all().await;
            results.sort_by_key(|(i, _, _)| *i);
            let results: Vec<(String, Result<Duration, String>)> =
                results.into_iter().map(|(_, a, r)| (a, r)).collect();
            if results.iter().all(|(_, r)| r.is_err()) {
                let why: Vec<String> = results
                    .iter()
                    .map(|(a, r)| {
                        format!(
                            "{}: {}",
                            crate::human::escape(a),
                            r.as_ref().err().map_or("", |e| e.as_str())
                        )
                    })
                    .collect();
                return Err(SessionError {
                    stage: "tcp",
                    message: format!(
                        "cannot open a TCP connection to MongoDB ({source}: {shown}): {}",
                        why.join("; ")
                    ),
                    fix: "is mongod running, and does it listen on that address (net.bindIp) with the port open to this node (security group, firewall)?".into(),
                });
            }
            Some(
                results
                    .into_iter()
                    .filter_map(|(a, r)| r.ok().map(|d| (a, d)))
                    .collect(),
            )
        }
        None => None,
    };
    let deadlines = Deadlines::within(left().max(Duration::from_millis(200)));
    let registry = Registry::open(&target, deadlines)
        .await
        .map_err(|e| SessionError {
            stage: "config",
            message: e.message,
            fix: format!("fix the MongoDB URI in {source}"),
        })?;
    let t0 = Instant::now();
    let driver_err = |e: crate::mongo::error::RegistryError| {
        let (stage, fix) = match e.failure {
            crate::mongo::error::Failure::Auth => (
                "auth",
                "check the user and the password: /etc/ams-agent/mongo-password (run `ams-agent join` again with --mongo-password-file to rotate it)".to_string(),
            ),
            _ => (
                "server",
                "check that mongod answers: `systemctl status mongod` on the MongoDB host".to_string(),
            ),
        };
        SessionError {
            stage,
            message: e.message,
            fix,
        }
    };
    registry.ping().await.map_err(driver_err)?;
    let connect = t0.elapsed();
    let t1 = Instant::now();
    registry.ping().await.map_err(driver_err)?;
    let rtt = t1.elapsed();
    let before = SystemTime::now();
    let t2 = Instant::now();
    let server_time = registry.server_time().await.map_err(driver_err)?;
    let hello_rtt = t2.elapsed();
    let local_time = before + hello_rtt / 2;
    Ok(Session {
        database: target.database.clone(),
        collection: target.collection.clone(),
        registry,
        source,
        user,
        tcp,
        connect,
        rtt,
        server_time,
        local_time,
        hello_rtt,
    })
}
