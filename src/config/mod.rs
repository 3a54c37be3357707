//! The agent's own configuration: `/etc/ams-agent/agent.toml` (never holds a
//! secret, mode 0644) and the MongoDB password file
//! `/etc/ams-agent/mongo-password` (mode 0600, always present, empty when
//! there is no password, because the unit loads it with `LoadCredential=`).
//!
//! Both are written by `join`; `run`, `status` and `leave` read them. The
//! order of precedence at run time is: `agent.toml`, then the credentials
//! file, then the environment, then flags.
//!
//! This module is `agent.toml`; [`secrets`] is the password file and how
//! passwords are read, [`records`] the state the agent keeps under
//! `/var/lib/ams-agent` (the join record, the last error).

pub mod records;
pub mod secrets;

pub use crate::human::show_duration;
pub use crate::node::Role;
pub use records::*;
pub use secrets::*;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::ams::layout::DEFAULT_AMS_HOME;
use crate::ams::mode::Mode;
use crate::bail_usage;
use crate::host::Host;

pub const CONFIG_DIR: &str = "/etc/ams-agent";
pub const CONFIG_FILE: &str = "/etc/ams-agent/agent.toml";

pub const DEFAULT_DATABASE: &str = "ams_agent";
pub const DEFAULT_COLLECTION: &str = "nodes";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest TTL accepted.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// The longest TTL MongoDB accepts (`expireAfterSeconds` is a 32-bit int).
pub const MAX_TTL: Duration = Duration::from_secs(i32::MAX as u64);
pub const DEFAULT_CPU_SAMPLES: u32 = 5;
pub const DEFAULT_CPU_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub mongo: MongoSection,
    pub node: NodeSection,
    #[serde(default)]
    pub reporter: ReporterSection,
    /// Graceful scale-in (optional; `docs/scale-in.md`).
    #[serde(default, skip_serializing_if = "DrainSection::is_default")]
    pub drain: DrainSection,
}

/// `[drain]`: how the node drains before it goes away.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainSection {
    /// The Auto Scaling group and its termination lifecycle hook (else
    /// found with DescribeAutoScalingInstances / DescribeLifecycleHooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_hook: Option<String>,
    /// The budget of a lifecycle-hook drain (default 15m).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub lifecycle_deadline: Option<Duration>,
    /// The default `--deadline` of `ams-agent drain` (default 10m).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub deadline: Option<Duration>,
}

impl DrainSection {
    pub fn is_default(&self) -> bool {
        *self == DrainSection::default()
    }
}

/// An optional humantime duration.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| D::Error::custom(format!("`{text}`: {e} (examples: 10m, 1h)")))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSection {
    /// The connection URI without its password (the user is kept).
    pub uri: String,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default = "default_collection")]
    pub collection: String,
    /// Node documents whose `lastSeen` is older than this are removed by the
    /// server (TTL index).
    #[serde(default = "default_ttl", with = "humantime_serde_compat")]
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's id as `join` registered it (the EC2 instance id, else
    /// /etc/machine-id); `run` and `leave` use it, so a metadata blip never
    /// turns the node into another document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub role: Role,
    /// The private IPv4 given to `join --ip`: reported as `privateIp`
    /// (else the instance metadata's, else the default route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<Ipv4Addr>,
    #[serde(default = "default_ams_home")]
    pub ams_home: PathBuf,
    /// AMS's mode and node group as `join` left them; the reporter re-reads
    /// AMS's files when it may, and falls back to these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ams_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_group: Option<String>,
    /// The cloud, as `join --cloud` chose it (`none`: no metadata probe;
    /// absent: detected at every start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<crate::cloud::CloudChoice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReporterSection {
    #[serde(default = "default_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(default = "default_cpu_samples")]
    pub cpu_samples: u32,
    #[serde(
        default = "default_cpu_sample_interval",
        with = "humantime_serde_compat"
    )]
    pub cpu_sample_interval: Duration,
}

impl Default for ReporterSection {
    fn default() -> Self {
        ReporterSection {
            interval: DEFAULT_INTERVAL,
            cpu_samples: DEFAULT_CPU_SAMPLES,
            cpu_sample_interval: DEFAULT_CPU_SAMPLE_INTERVAL,
        }
    }
}

fn default_database() -> String {
    DEFAULT_DATABASE.into()
}
fn default_collection() -> String {
    DEFAULT_COLLECTION.into()
}
fn default_ttl() -> Duration {
    DEFAULT_TTL
}
fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}
fn default_cpu_samples() -> u32 {
    DEFAULT_CPU_SAMPLES
}
fn default_cpu_sample_interval() -> Duration {
    DEFAULT_CPU_SAMPLE_INTERVAL
}
fn default_ams_home() -> PathBuf {
    PathBuf::from(DEFAULT_AMS_HOME)
}

/// Durations as humantime strings (`"5s"`, `"7days"`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| D::Error::custom(format!("`{text}`: {e} (examples: 5s, 1m, 7days)")))
    }
}

impl AgentConfig {
    /// Loads `path` (a host path, root-prefixed). `Ok(None)` when the file
    /// does not exist; a malformed file is bad input naming the file.
    pub fn load(host: &Host, path: &Path) -> Result<Option<AgentConfig>> {
        let Some(bytes) = host.read_capped(path, crate::host::fs::Cap::CONFIG)? else {
            return Ok(None);
        };
        let Ok(text) = String::from_utf8(bytes) else {
            bail_usage!("{}: not UTF-8 text", path.display());
        };
        let cfg: AgentConfig = match toml::from_str(&text) {
            Ok(c) => c,
            // Not the error's Display: it quotes the source line, which may
            // hold a URI with a password.
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| format!(" at line {}", text[..s.start].matches('\n').count() + 1))
                    .unwrap_or_default();
                bail_usage!(
                    "{}{line}: {}",
                    path.display(),
                    crate::secret::redact_uris(&e.message().lines().collect::<Vec<_>>().join(" "))
                )
            }
        };
        cfg.validate().map_err(|e| {
            anyhow::anyhow!(crate::error::UsageError::new(format!(
                "{}: {e:#}",
                path.display()
            )))
        })?;
        Ok(Some(cfg))
    }

    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("the configuration serialises");
        format!(
            "# ams-agent configuration, written by `ams-agent join`.\n\
             # No secret here: the MongoDB password is in {PASSWORD_FILE} (mode 0600).\n\n{body}"
        )
    }

    pub fn validate(&self) -> Result<()> {
        let uri = &self.mongo.uri;
        let shown = crate::secret::redact_loose(uri);
        // Loosely, like redact_loose: a ':' before the last '@' (a password
        // with an unescaped '/' or '?' included).
        let userinfo = uri
            .split_once("://")
            .map_or(uri.as_str(), |(_, rest)| rest)
            .rsplit_once('@')
            .map(|(userinfo, _)| userinfo)
            // An '@' in the query string is no user information.
            .filter(|u| !u.contains('?') || !u.contains('/'));
        if userinfo.is_some_and(|u| u.contains(':')) || crate::uri::has_password(uri) {
            anyhow::bail!("[mongo] uri holds a password; keep it in {PASSWORD_FILE}");
        }
        let lower = uri.to_ascii_lowercase();
        if !lower.starts_with("mongodb://") && !lower.starts_with("mongodb+srv://") {
            anyhow::bail!(
                "[mongo] uri `{}` is not a mongodb:// or mongodb+srv:// URI",
                shown.escape_debug()
            );
        }
        if uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
            anyhow::bail!("[mongo] uri contains white space or a control character");
        }
        // The driver's own parser, no network: a URI that can never work is
        // bad input now, not an endless retry in the reporter.
        if let Err(e) = mongodb::options::ConnectionString::parse(uri) {
            let why = match e.kind.as_ref() {
                mongodb::error::ErrorKind::InvalidArgument { message, .. } => message.clone(),
                other => other.to_string(),
            };
            anyhow::bail!("[mongo] uri `{shown}` is not a valid MongoDB URI: {why}");
        }
        validate_names(&self.mongo.database, &self.mongo.collection)?;
        validate_interval(self.reporter.interval, "[reporter] interval")?;
        if self.reporter.cpu_samples == 0 || self.reporter.cpu_samples > 600 {
            anyhow::bail!("[reporter] cpu_samples must be between 1 and 600");
        }
        if self.reporter.cpu_sample_interval < Duration::from_millis(200) {
            anyhow::bail!("[reporter] cpu_sample_interval must be at least 200ms");
        }
        validate_ttl(self.mongo.ttl, "[mongo] ttl")?;
        for (key, v) in [
            ("[drain] autoscaling_group", &self.drain.autoscaling_group),
            ("[drain] lifecycle_hook", &self.drain.lifecycle_hook),
        ] {
            if let Some(v) = v {
                if !valid_aws_name(v) {
                    anyhow::bail!(
                        "{key} `{}` is not an Auto Scaling name (1-255 letters, digits and -_./@:)",
                        v.escape_debug()
                    );
                }
            }
        }
        for (key, d) in [
            ("[drain] lifecycle_deadline", self.drain.lifecycle_deadline),
            ("[drain] deadline", self.drain.deadline),
        ] {
            if let Some(d) = d {
                validate_drain_deadline(d, key)?;
            }
        }
        if let Some(id) = &self.node.id {
            if !valid_node_id(id) {
                anyhow::bail!(
                    "[node] id `{}` is not a node id (letters, digits, `-` and `.`, at most 160)",
                    id.escape_debug()
                );
            }
        }
        Ok(())
    }

    pub fn ams_mode(&self) -> Option<Mode> {
        match self.node.ams_mode.as_deref() {
            Some("cluster") => Some(Mode::Cluster),
            Some("standalone") => Some(Mode::Standalone),
            _ => None,
        }
    }
}

/// Checks a MongoDB database and collection name (the server's own rules).
pub fn validate_names(database: &str, collection: &str) -> Result<()> {
    if database.is_empty() || database.len() > 63 {
        anyhow::bail!("database name `{database}` must be 1-63 characters");
    }
    if let Some(c) = database.chars().find(|c| {
        matches!(
            c,
            '/' | '\\' | '.' | ' ' | '"' | '$' | '*' | '<' | '>' | ':' | '|' | '?'
        ) || c.is_control()
    }) {
        anyhow::bail!(
            "database name `{}` contains `{}`",
            database.escape_debug(),
            c.escape_debug()
        );
    }
    if collection.is_empty() || collection.len() > 120 {
        anyhow::bail!("collection name `{collection}` must be 1-120 characters");
    }
    if collection.starts_with("system.")
        || collection.contains('$')
        || collection.chars().any(char::is_control)
    {
        anyhow::bail!(
            "collection name `{}` is not allowed (no `$`, no control characters, not system.*)",
            collection.escape_debug()
        );
    }
    Ok(())
}

/// An Auto Scaling group or lifecycle hook name as the agent accepts it.
pub fn valid_aws_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@:".contains(c))
}

/// A drain's budget: 10s to 48h (Auto Scaling's longest lifecycle wait).
pub fn validate_drain_deadline(d: Duration, what: &str) -> Result<()> {
    if d < Duration::from_secs(10) || d > Duration::from_secs(48 * 3600) {
        anyhow::bail!("{what} {} is out of range (10s to 48h)", show_duration(d));
    }
    Ok(())
}

/// A node id as the registry uses it: a cloud's instance id (`i-…`,
/// `gcp-…`, an Azure vmId, an Oracle OCID with its dots) or a machine id:
/// letters, digits, `-` and `.`, at most 160 (a balancer uses it as a
/// server name and a cookie value).
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 160
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
}

/// The TTL of node documents: MongoDB takes 1 s to 2^31-1 s; below a
/// minute a node would vanish between two slow heartbeats.
pub fn validate_ttl(d: Duration, what: &str) -> Result<()> {
    if d < MIN_TTL || d > MAX_TTL {
        anyhow::bail!(
            "{what} {} is out of range (1m to {}s, about 68 years; MongoDB's expireAfterSeconds limit)",
            show_duration(d),
            MAX_TTL.as_secs()
        );
    }
    Ok(())
}

pub fn validate_interval(d: Duration, what: &str) -> Result<()> {
    if d < Duration::from_millis(500) || d > Duration::from_secs(3600) {
        anyhow::bail!("{what} {} is out of range (500ms to 1h)", show_duration(d));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fs::{CrashPoints, private_meta};

    fn sample() -> AgentConfig {
        AgentConfig {
            mongo: MongoSection {
                uri: "mongodb://ams@10.0.1.5:27017".into(),
                database: DEFAULT_DATABASE.into(),
                collection: DEFAULT_COLLECTION.into(),
                ttl: DEFAULT_TTL,
            },
            node: NodeSection {
                id: Some("i-0abc".into()),
                role: Role::Origin,
                private_ip: Some("10.0.1.20".parse().unwrap()),
                ams_home: DEFAULT_AMS_HOME.into(),
                ams_mode: Some("cluster".into()),
                node_group: Some("default".into()),
                cloud: None,
            },
            reporter: ReporterSection::default(),
            drain: DrainSection::default(),
        }
    }

    #[test]
    fn round_trips_with_the_documented_key_names() {
        let text = sample().to_toml();
        for needle in [
            "[mongo]",
            "uri = \"mongodb://ams@10.0.1.5:27017\"",
            "database = \"ams_agent\"",
            "collection = \"nodes\"",
            "[node]",
            "role = \"origin\"",
            "ams_home = \"/usr/local/antmedia\"",
            "[reporter]",
            "interval = \"5s\"",
            "cpu_samples = 5",
            "cpu_sample_interval = \"1s\"",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        let back: AgentConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn the_documented_minimal_file_loads() {
        let text = "[mongo]\nuri = \"mongodb://ams@10.0.1.5:27017\"\ndatabase = \"ams_agent\"\ncollection = \"nodes\"\n[node]\nrole = \"edge\"\nams_home = \"/usr/local/antmedia\"\n[reporter]\ninterval = \"5s\"\ncpu_samples = 5\ncpu_sample_interval = \"1s\"\n";
        let c: AgentConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.node.role, Role::Edge);
        assert_eq!(c.mongo.ttl, DEFAULT_TTL);
    }

    #[test]
    fn the_password_file_is_read_like_the_flag_reads_it() {
        // The variables are passed in: whatever the test process's
        // environment holds, this test runs.
        let runtime_password = |h: &Host| runtime_password_from(h, None, None);
        let dir = tempfile::tempdir().unwrap();
        let h = Host::new(dir.path(), CrashPoints::default());
        h.create_dir_all(Path::new(CONFIG_DIR), 0o700).unwrap();
        let file = h.path(Path::new(PASSWORD_FILE));
        std::fs::write(&file, "TopSecret\r\n").unwrap();
        assert_eq!(runtime_password(&h).unwrap().as_deref(), Some("TopSecret"));
        std::fs::write(&file, "Top\0Secret\n").unwrap();
        let err = format!("{:#}", runtime_password(&h).unwrap_err());
        assert!(err.contains("NUL"), "{err}");
    }

    #[test]
    fn bad_files_are_usage_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let h = Host::new(dir.path(), CrashPoints::default());
        h.create_dir_all(Path::new(CONFIG_DIR), 0o755).unwrap();
        let p = Path::new(CONFIG_FILE);
        assert!(AgentConfig::load(&h, p).unwrap().is_none());
        for bad in [
            "nonsense",
            "[mongo]\nuri = \"mongodb://u:pw@h\"\n[node]\nrole = \"origin\"\n",
            "[mongo]\nuri = \"mongodb://h\"\n[node]\nrole = \"relay\"\n",
            "[mongo]\nuri = \"mongodb://h\"\n[node]\nrole = \"origin\"\n[reporter]\ninterval = \"1ms\"\n",
            "[mongo]\nuri = \"mongodb://h\"\ndatabase = \"a.b\"\n[node]\nrole = \"origin\"\n",
            "[mongo]\nuri = \"mongodb://h\"\nttl = \"1000000000000d\"\n[node]\nrole = \"origin\"\n",
            "[mongo]\nuri = \"mongodb://h\"\n[node]\nid = \"i-1/../x\"\nrole = \"origin\"\n",
            "[mongo]\nuri = \"mongodb://h\"\n[node]\nrole = \"origin\"\nprivate_ip = \"10.0.1\"\n",
        ] {
            h.write_atomic(p, bad.as_bytes(), private_meta(0o644))
                .unwrap();
            let e = AgentConfig::load(&h, p).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), 2, "{bad}");
            let msg = format!("{e:#}");
            assert!(msg.contains(CONFIG_FILE), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
            assert!(!msg.contains("pw"), "no password: {msg}");
        }
    }

    #[test]
    fn durations_are_shown_rounded_and_the_ttl_fits_mongodb() {
        assert_eq!(show_duration(Duration::from_nanos(6_999_991_564)), "7s");
        assert_eq!(show_duration(Duration::from_micros(1_999_600)), "2s");
        assert_eq!(show_duration(Duration::from_micros(250_400)), "250ms");
        assert_eq!(show_duration(Duration::from_secs(600)), "10m");
        assert!(validate_ttl(Duration::from_secs(7 * 86400), "--ttl").is_ok());
        assert!(validate_ttl(MAX_TTL, "--ttl").is_ok());
        let e = validate_ttl(MAX_TTL + Duration::from_secs(1), "--ttl").unwrap_err();
        assert!(format!("{e}").contains("2147483647"), "{e}");
        assert!(validate_ttl(Duration::from_secs(59), "--ttl").is_err());
    }

    #[test]
    fn password_file_round_trip_keeps_odd_passwords() {
        let runtime_password = |h: &Host| runtime_password_from(h, None, None);
        let dir = tempfile::tempdir().unwrap();
        let h = Host::new(dir.path(), CrashPoints::default());
        h.create_dir_all(Path::new(CONFIG_DIR), 0o755).unwrap();
        for pw in ["p@ss:w/rd?#%\\", "line1\nline2", "ends-with-newline\n", "ü"] {
            h.write_atomic(
                Path::new(PASSWORD_FILE),
                &password_file_content(Some(pw)),
                private_meta(0o600),
            )
            .unwrap();
            assert_eq!(runtime_password(&h).unwrap().as_deref(), Some(pw));
        }
        h.write_atomic(
            Path::new(PASSWORD_FILE),
            &password_file_content(None),
            private_meta(0o600),
        )
        .unwrap();
        assert_eq!(runtime_password(&h).unwrap(), None);
    }
}
