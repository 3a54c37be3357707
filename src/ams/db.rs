//! The database argument of `mode` and `join`: classification, validation,
//! credential encoding and redaction.
//!
//! Unlike `change_server_mode.sh`, a host name is a MongoDB host (never a
//! Redis file), nothing is guessed, and anything that is not clearly one of
//! the accepted forms is refused with a message that lists them.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::Result;
use percent_encoding::utf8_percent_encode;

use crate::bail_usage;
use crate::host::Host;

pub const DEFAULT_MONGO_PORT: u16 = 27017;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// AMS's embedded database (standalone without a server).
    MapDb,
    MongoDb,
    Redis,
}

impl DbKind {
    /// The value of `db.type` in red5-web.properties.
    pub fn db_type(self) -> &'static str {
        match self {
            DbKind::MapDb => "mapdb",
            DbKind::MongoDb => "mongodb",
            DbKind::Redis => "redisdb",
        }
    }
}

/// Credentials given apart from the DB argument.
#[derive(Clone, Default)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
    /// Where the password came from (`--mongo-password-file` or
    /// `AMS_AGENT_MONGO_PASSWORD`), for messages.
    pub password_from: &'static str,
}

impl Credentials {
    /// How to name the separate credentials in a message.
    pub fn flags(&self) -> String {
        match (self.user.is_some(), self.password.is_some()) {
            (true, true) => format!("--mongo-user and {}", self.password_source()),
            (true, false) => "--mongo-user".into(),
            (false, true) => self.password_source().into(),
            (false, false) => String::new(),
        }
    }

    fn password_source(&self) -> &'static str {
        if self.password_from.is_empty() {
            "--mongo-password-file"
        } else {
            self.password_from
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("password_from", &self.password_from)
            .finish()
    }
}

/// A classified, validated database URL, ready to be written into AMS.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    pub kind: DbKind,
    /// The full URL as AMS gets it (credentials inside, %-encoded), or the
    /// Redis YAML path, or `localhost` for MapDB (what AMS ships).
    pub url: String,
    /// Every form of the password that could be printed, for masking.
    pub secrets: Vec<String>,
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({:?}, {})", self.kind, self.redacted())
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl DbUrl {
    pub fn mapdb() -> Self {
        DbUrl {
            kind: DbKind::MapDb,
            url: "localhost".into(),
            secrets: Vec::new(),
        }
    }

    pub fn has_password(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// The URL with the password replaced by `****`, safe to print.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

pub use crate::secret::redact_loose;
pub use crate::uri::redact;
use crate::uri::{USERINFO, password_forms};

const FORMS: &str = "expected an IPv4 or [IPv6] address, a host name, host:port, a comma-separated host list, a mongodb:// or mongodb+srv:// URI, a redis:// or rediss:// URI, or the path of an existing Redis YAML file";

/// Classifies the DB argument of `mode cluster`, `mode standalone <db>` and
/// `join --mongo`. `flag` names the argument in messages.
pub fn classify(input: &str, creds: &Credentials, host: &Host, flag: &str) -> Result<DbUrl> {
    if input.is_empty() {
        bail_usage!("{flag} is empty; {FORMS}");
    }
    if input.chars().any(|c| c.is_control()) {
        bail_usage!("{flag} contains a newline or control character; {FORMS}");
    }
    if input.chars().any(char::is_whitespace) {
        bail_usage!(
            "{flag} `{}` contains white space; {FORMS}",
            redact_loose(input)
        );
    }
    if creds.password.is_some() && creds.user.is_none() {
        bail_usage!(
            "a MongoDB password was given ({}) without a user; add --mongo-user",
            creds.password_source()
        );
    }
    let lower = input.to_ascii_lowercase();
    if lower.starts_with("mongodb://") || lower.starts_with("mongodb+srv://") {
        return mongo_uri(input, creds, flag);
    }
    if lower.starts_with("redis://") || lower.starts_with("rediss://") {
        no_separate_creds(creds, "a redis:// URI")?;
        let shown = redact_loose(input);
        let scheme_end = input.find("://").expect("checked above") + 3;
        let rest = &input[scheme_end..];
        let (userinfo, hosts, tail) = split_authority(rest, flag, &shown)?;
        let secrets = match userinfo {
            Some(u) => check_userinfo(u, true, flag, &shown)?,
            None => Vec::new(),
        };
        if hosts.is_empty() {
            bail_usage!("{flag} `{shown}` names no host");
        }
        if let Err(why) = split_host_port(hosts) {
            bail_usage!("{flag} `{shown}`: {why}");
        }
        if tail.contains('#') {
            bail_usage!("{flag} `{shown}`: an unescaped '#'; percent-encode it as %23");
        }
        // AMS tells a Redis URL from a YAML path by its prefix: lowercase.
        let scheme = input[..scheme_end].to_ascii_lowercase();
        return Ok(DbUrl {
            kind: DbKind::Redis,
            url: format!("{scheme}{rest}"),
            secrets,
        });
    }
    if looks_like_path(input) {
        return redis_file(input, creds, host, flag);
    }
    if lower.contains("://") {
        bail_usage!(
            "{flag} `{}` has an unsupported scheme; {FORMS}",
            redact_loose(input)
        );
    }
    if input.contains('@') {
        bail_usage!(
            "{flag} `{}` holds credentials without a scheme; write mongodb://user:password@host with the password percent-encoded, or use --mongo-user and --mongo-password-file",
            redact_loose(input)
        );
    }
    match parse_host_list(input, false) {
        Ok(hosts) => {
            let userinfo = encoded_userinfo(creds);
            let url = format!("mongodb://{userinfo}{}", hosts.join(","));
            Ok(DbUrl {
                kind: DbKind::MongoDb,
                url,
                secrets: secret_forms(creds),
            })
        }
        Err(why) => {
            // A bare name that is no valid host may still be a Redis file in
            // the current folder, as the shell accepted.
            if Path::new(input).is_file() {
                return redis_file(input, creds, host, flag);
            }
            bail_usage!(
                "{flag} `{}` is not valid: {why}; {FORMS}",
                redact_loose(input)
            )
        }
    }
}

fn looks_like_path(s: &str) -> bool {
    s.starts_with('/')
        || s.starts_with("./")
        || s.starts_with("../")
        || s.ends_with(".yaml")
        || s.ends_with(".yml")
}

/// The top-level keys of a Redisson configuration, the YAML AMS reads for
/// Redis (one of them names the servers).
const REDIS_YAML_KEYS: [&str; 5] = [
    "singleServerConfig",
    "clusterServersConfig",
    "sentinelServersConfig",
    "replicatedServersConfig",
    "masterSlaveServersConfig",
];

fn redis_file(input: &str, creds: &Credentials, host: &Host, flag: &str) -> Result<DbUrl> {
    use crate::host::fs::{Cap, read_capped_real};
    no_separate_creds(creds, "a Redis configuration file")?;
    let real = if input.starts_with('/') {
        host.path(Path::new(input))
    } else {
        Path::new(input).to_path_buf()
    };
    let shown = format!("{flag} {input}");
    let Some((bytes, _)) = read_capped_real(&real, &shown, Cap::CONFIG)? else {
        bail_usage!(
            "{flag} `{input}` looks like a Redis configuration file, but there is no such file"
        );
    };
    let forms = REDIS_YAML_KEYS.join(", ");
    let doc = String::from_utf8(bytes)
        .ok()
        .and_then(|text| yaml_rust2::YamlLoader::load_from_str(&text).ok())
        .and_then(|docs| docs.into_iter().next());
    let Some(yaml_rust2::Yaml::Hash(map)) = doc else {
        bail_usage!(
            "{flag} `{input}` is not a Redis configuration (a Redisson YAML file with one of {forms})"
        );
    };
    let names_servers = map.iter().any(|(k, v)| {
        k.as_str().is_some_and(|k| REDIS_YAML_KEYS.contains(&k))
            && matches!(v, yaml_rust2::Yaml::Hash(_))
    });
    if !names_servers {
        bail_usage!(
            "{flag} `{input}` is YAML but not a Redis configuration: it has none of {forms}"
        );
    }
    Ok(DbUrl {
        kind: DbKind::Redis,
        url: input.to_string(),
        secrets: Vec::new(),
    })
}

fn no_separate_creds(creds: &Credentials, what: &str) -> Result<()> {
    if creds.user.is_some() || creds.password.is_some() {
        bail_usage!(
            "{} apply to MongoDB only, not to {what}; put the credentials in the URI",
            creds.flags()
        );
    }
    Ok(())
}

/// Splits `userinfo@hosts/tail` (the part after `scheme://`). Credentials
/// with an unescaped `@`, `/` or `?` are refused here, before anything could
/// mistake part of a password for a host.
fn split_authority<'a>(
    rest: &'a str,
    flag: &str,
    shown: &str,
) -> Result<(Option<&'a str>, &'a str, &'a str)> {
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.matches('@').count() {
        0 if tail.contains('@') => bail_usage!(
            "{flag} `{shown}`: the credentials contain an unescaped '/' or '?'; percent-encode them (%2F, %3F), or pass them with --mongo-user and --mongo-password-file"
        ),
        0 => Ok((None, authority, tail)),
        1 => {
            let (u, h) = authority.split_once('@').expect("one @");
            Ok((Some(u), h, tail))
        }
        _ => bail_usage!(
            "{flag} `{shown}`: the credentials contain an unescaped '@'; percent-encode it as %40, or pass them with --mongo-user and --mongo-password-file"
        ),
    }
}

/// Checks `user[:password]` of a URI; returns the password's forms (as
/// written and decoded) for masking.
fn check_userinfo(u: &str, allow_empty_user: bool, flag: &str, shown: &str) -> Result<Vec<String>> {
    let (user, pass) = match u.split_once(':') {
        Some((user, pass)) => (user, Some(pass)),
        None => (u, None),
    };
    if user.is_empty() && !allow_empty_user {
        bail_usage!("{flag} `{shown}`: the user name before '@' is empty");
    }
    for (part, text) in [("user name", Some(user)), ("password", pass)] {
        let Some(text) = text else { continue };
        if let Some(bad) = text
            .chars()
            .find(|c| matches!(c, ':' | '/' | '?' | '#' | '[' | ']' | '@' | '\\'))
        {
            bail_usage!(
                "{flag} `{shown}`: the {part} contains an unescaped '{bad}'; percent-encode it, or pass the credentials with --mongo-user and --mongo-password-file"
            );
        }
        check_percent_escapes(text).map_err(|why| {
            crate::error::UsageError::new(format!("{flag} `{shown}`: the {part} {why}"))
        })?;
    }
    let mut secrets = Vec::new();
    if let Some(p) = pass.filter(|p| !p.is_empty()) {
        secrets.push(p.to_string());
        let decoded = percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .into_owned();
        if decoded != p {
            secrets.push(decoded);
        }
    }
    Ok(secrets)
}

fn encoded_userinfo(creds: &Credentials) -> String {
    match (&creds.user, &creds.password) {
        (Some(u), Some(p)) => format!(
            "{}:{}@",
            utf8_percent_encode(u, USERINFO),
            utf8_percent_encode(p, USERINFO)
        ),
        (Some(u), None) => format!("{}@", utf8_percent_encode(u, USERINFO)),
        _ => String::new(),
    }
}

fn secret_forms(creds: &Credentials) -> Vec<String> {
    creds
        .password
        .as_deref()
        .map(password_forms)
        .unwrap_or_default()
}

fn mongo_uri(input: &str, creds: &Credentials, flag: &str) -> Result<DbUrl> {
    let scheme_end = input.find("://").expect("checked by caller") + 3;
    let scheme = input[..scheme_end].to_ascii_lowercase();
    let srv = scheme == "mongodb+srv://";
    let rest = &input[scheme_end..];
    let shown = redact_loose(input);
    let (userinfo, hosts, tail) = split_authority(rest, flag, &shown)?;
    let mut secrets = Vec::new();
    if let Some(u) = userinfo {
        if creds.user.is_some() || creds.password.is_some() {
            bail_usage!(
                "{flag} `{shown}` already holds credentials; do not also pass {}",
                creds.flags()
            );
        }
        secrets = check_userinfo(u, false, flag, &shown)?;
    }
    if hosts.is_empty() {
        bail_usage!("{flag} `{shown}` names no host");
    }
    let parsed = match parse_host_list(hosts, srv) {
        Ok(h) => h,
        Err(why) => bail_usage!("{flag} `{shown}`: {why}"),
    };
    if srv && parsed.len() != 1 {
        bail_usage!(
            "{flag} `{shown}`: a mongodb+srv:// URI names exactly one host, without a port"
        );
    }
    if tail.contains('#') {
        bail_usage!("{flag} `{shown}`: an unescaped '#' after the hosts; percent-encode it as %23");
    }
    // AMS's Java driver refuses options without the slash before them.
    if tail.starts_with('?') {
        bail_usage!(
            "{flag} `{shown}`: options need a '/' before the '?' (…{}/?…)",
            hosts.rsplit(',').next().unwrap_or(hosts)
        );
    }
    let ip_literal = hosts.starts_with('[')
        || hosts
            .trim_end_matches('.')
            .parse::<std::net::IpAddr>()
            .is_ok();
    if srv && ip_literal {
        bail_usage!("{flag} `{shown}`: a mongodb+srv:// URI needs a DNS name, not an IP address");
    }
    // The host section is normalised (default ports are not added to a URI
    // the operator wrote); everything after it passes through intact.
    let mut url = scheme;
    match userinfo {
        Some(u) => {
            url.push_str(u);
            url.push('@');
        }
        None => url.push_str(&encoded_userinfo(creds)),
    }
    url.push_str(hosts);
    url.push_str(tail);
    secrets.extend(secret_forms(creds));
    // The driver's own parser (no network) catches unknown or malformed
    // options now, not when AMS or the reporter first connects.
    if let Err(e) = mongodb::options::ConnectionString::parse(&url) {
        let why = match e.kind.as_ref() {
            mongodb::error::ErrorKind::InvalidArgument { message, .. } => message.clone(),
            other => other.to_string(),
        };
        // By position: a URI the message quotes loses its password field.
        let why = crate::secret::redact_uris(&why);
        bail_usage!("{flag} `{shown}` is not a valid MongoDB URI: {why}");
    }
    Ok(DbUrl {
        kind: DbKind::MongoDb,
        url,
        secrets,
    })
}

fn check_percent_escapes(s: &str) -> std::result::Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok = b.len() > i + 2
                && b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err(
                    "has a '%' that is not followed by two hex digits; write a literal % as %25"
                        .into(),
                );
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Parses `h1[:p1],h2[:p2]`. Returns the hosts normalised as `host:port`
/// (for URIs the caller keeps the operator's own text). A server named
/// twice (`h1,h1:27017`) is refused.
fn parse_host_list(list: &str, srv: bool) -> std::result::Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for item in list.split(',') {
        if item.is_empty() {
            return Err("empty entry in the host list".into());
        }
        let (host, port) = split_host_port(item)?;
        if srv && port.is_some() {
            return Err("a mongodb+srv:// URI takes no port".into());
        }
        let (host_text, same) = match host.parse::<Ipv6Addr>() {
            Ok(v6) => (format!("[{host}]"), format!("[{v6}]")),
            Err(_) => (
                host.to_string(),
                host.trim_end_matches('.').to_ascii_lowercase(),
            ),
        };
        let port = port.unwrap_or(DEFAULT_MONGO_PORT);
        let key = format!("{same}:{port}");
        if seen.contains(&key) {
            return Err(format!(
                "`{key}` is named twice in the host list; name each server once"
            ));
        }
        seen.push(key);
        out.push(if srv {
            host_text
        } else {
            format!("{host_text}:{port}")
        });
    }
    Ok(out)
}

fn split_host_port(item: &str) -> std::result::Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(v6) = item.strip_prefix('[') {
        let end = v6.find(']').ok_or("unclosed '[' in an IPv6 address")?;
        let host = &v6[..end];
        if let Some((addr, zone)) = host.split_once('%') {
            if addr.parse::<Ipv6Addr>().is_ok() {
                return Err(format!(
                    "`{host}`: IPv6 zone ids (%{zone}) are not supported; use a global or unique-local (fd00::/8) address of the server"
                ));
            }
        }
        host.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{host}` is not an IPv6 address"))?;
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected `{after}` after an IPv6 address")),
        };
        (host, port)
    } else if item.matches(':').count() > 1 {
        // A bare IPv6 address: without brackets it cannot carry a port.
        item.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{item}` is not an IPv6 address (write [addr]:port)"))?;
        (item, None)
    } else {
        match item.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (item, None),
        }
    };
    let port = match port {
        None => None,
        // Digits only: Rust's parser would take `+27017`, MongoDB's not.
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("`{p}` is not a port number (1-65535)")),
        },
    };
    if host.parse::<Ipv6Addr>().is_err() && !valid_host_name_or_ipv4(host) {
        return Err(format!("`{host}` is not an IP address or host name"));
    }
    let unspecified = host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_unspecified())
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_unspecified());
    if unspecified {
        return Err(format!(
            "`{host}` is the unspecified address (\"every interface\" for a server, no address to connect to); name the MongoDB server's address"
        ));
    }
    Ok((host, port))
}

fn valid_host_name_or_ipv4(host: &str) -> bool {
    host.parse::<Ipv4Addr>().is_ok() || crate::host::net::is_dns_name(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fs::CrashPoints;
    use crate::uri::{join_password, mechanism_without_password, split_password};

    fn host() -> Host {
        Host::new("/nonexistent-root", CrashPoints::default())
    }

    fn ok(input: &str) -> DbUrl {
        classify(input, &Credentials::default(), &host(), "DB").unwrap()
    }

    fn err(input: &str) -> String {
        classify(input, &Credentials::default(), &host(), "DB")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_password_split_off_is_joined_back() {
        let full = "mongodb://ams:p%40ss%3Aw%2Frd@h1,h2/?authMechanism=PLAIN&authSource=$external";
        let (bare, pw) = split_password(full);
        assert_eq!(join_password(&bare, &pw.unwrap()).as_deref(), Some(full));
        assert_eq!(join_password("mongodb://h/", "pw"), None);
    }

    #[test]
    fn a_password_without_a_scheme_is_masked() {
        assert_eq!(
            redact_loose("ams:S3c@ret@10.0.0.1:1"),
            "ams:****@10.0.0.1:1"
        );
        assert_eq!(redact_loose("ams@mongo.internal"), "ams@mongo.internal");
        assert_eq!(redact_loose("[::1]:27017"), "[::1]:27017");
    }

    #[test]
    fn mechanisms_without_a_password_are_recognised() {
        assert!(mechanism_without_password(
            "mongodb://u@h/?tls=true&authMechanism=MONGODB-X509"
        ));
        assert!(mechanism_without_password(
            "mongodb://u@h/?authmechanism=gssapi"
        ));
        assert!(!mechanism_without_password(
            "mongodb://u@h/?authMechanism=SCRAM-SHA-256"
        ));
        assert!(!mechanism_without_password("mongodb://u@h:27017"));
    }

    #[test]
    fn bare_hosts_become_full_mongodb_uris() {
        for (input, url) in [
            ("10.0.1.5", "mongodb://10.0.1.5:27017"),
            ("10.0.1.5:27018", "mongodb://10.0.1.5:27018"),
            ("localhost", "mongodb://localhost:27017"),
            ("mongo", "mongodb://mongo:27017"),
            ("mongo.internal", "mongodb://mongo.internal:27017"),
            (
                "redis-cache.internal",
                "mongodb://redis-cache.internal:27017",
            ),
            ("[::1]:27017", "mongodb://[::1]:27017"),
            ("[fd00::5]", "mongodb://[fd00::5]:27017"),
            ("::1", "mongodb://[::1]:27017"),
            ("a:1,b,10.0.0.3:3", "mongodb://a:1,b:27017,10.0.0.3:3"),
        ] {
            let db = ok(input);
            assert_eq!(db.kind, DbKind::MongoDb, "{input}");
            assert_eq!(db.url, url, "{input}");
        }
    }

    #[test]
    fn uris_pass_through_intact() {
        for uri in [
            "mongodb://u:p%40ss@h1:27017,h2:27018,h3/admin?replicaSet=rs0&readPreference=secondaryPreferred",
            "mongodb+srv://user:pa%2Fss@cluster0.example.net/?retryWrites=true&w=majority",
            "mongodb://h",
            "redis://default:pw@redis:6379",
            "rediss://redis.internal:6380/0",
        ] {
            assert_eq!(ok(uri).url, uri);
        }
        assert_eq!(ok("redis://x:6379").kind, DbKind::Redis);
    }

    #[test]
    fn separate_credentials_are_percent_encoded() {
        let creds = Credentials {
            user: Some("ams admin".into()),
            password: Some("p@ss:w/rd?#%\\\nü".into()),
            ..Default::default()
        };
        let db = classify("10.0.1.5", &creds, &host(), "DB").unwrap();
        assert_eq!(
            db.url,
            "mongodb://ams%20admin:p%40ss%3Aw%2Frd%3F%23%25%5C%0A%C3%BC@10.0.1.5:27017"
        );
        assert!(!db.redacted().contains("p%40ss"));
        assert_eq!(db.redacted(), "mongodb://ams%20admin:****@10.0.1.5:27017");
        let srv = classify("mongodb+srv://c.example.net/?w=1", &creds, &host(), "DB").unwrap();
        assert!(srv.url.starts_with("mongodb+srv://ams%20admin:p%40ss"));
        assert!(srv.url.ends_with("@c.example.net/?w=1"));
    }

    #[test]
    fn bad_inputs_are_refused_with_the_accepted_forms() {
        for bad in [
            "",
            "10.0.1",
            "10.0.1.5:99999",
            "10.0.1.5:0",
            "host name",
            "a\nb",
            "-bad-",
            "bad_host",
            "[::1",
            "[nothex]:1",
            "http://x",
            "a,,b",
            "mongodb://",
            "mongodb+srv://h:27017",
            "mongodb+srv://a,b",
            "mongodb://u:p@ss@h",
            "mongodb://u:p/ss@h",
            "mongodb://u:100%@h",
            "mongodb://u:a#b@h",
            "mongodb://:p@h",
        ] {
            let e = err(bad);
            assert!(!e.is_empty(), "{bad}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        assert!(err("mongodb://u:p@ss@h").contains("%40"));
        assert!(err("10.0.1").contains("expected an IPv4"));
        assert!(
            !err("mongodb://u:sec@ret@h").contains("sec@ret"),
            "no password in errors"
        );
    }

    #[test]
    fn conflicting_credentials_are_refused() {
        let creds = Credentials {
            user: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        };
        assert!(classify("mongodb://a:b@h", &creds, &host(), "DB").is_err());
        assert!(classify("redis://h", &creds, &host(), "DB").is_err());
        let only_pw = Credentials {
            user: None,
            password: Some("p".into()),
            ..Default::default()
        };
        assert!(
            classify("h", &only_pw, &host(), "DB")
                .unwrap_err()
                .to_string()
                .contains("--mongo-user")
        );
    }

    #[test]
    fn redis_yaml_files_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/redis.yaml"),
            "singleServerConfig: {}\n",
        )
        .unwrap();
        let h = Host::new(dir.path(), CrashPoints::default());
        let db = classify("/etc/redis.yaml", &Credentials::default(), &h, "DB").unwrap();
        assert_eq!(
            (db.kind, db.url.as_str()),
            (DbKind::Redis, "/etc/redis.yaml")
        );
        assert!(classify("/etc/missing.yaml", &Credentials::default(), &h, "DB").is_err());
    }

    #[test]
    fn passwords_split_off_decoded() {
        assert_eq!(
            split_password("mongodb://u:p%40ss%0A@h1,h2/admin?x=@"),
            (
                "mongodb://u@h1,h2/admin?x=@".to_string(),
                Some("p@ss\n".to_string())
            )
        );
        assert_eq!(
            split_password("mongodb://u@h"),
            ("mongodb://u@h".into(), None)
        );
        assert_eq!(split_password("mongodb://h"), ("mongodb://h".into(), None));
        assert_eq!(
            split_password("mongodb://u:@h"),
            ("mongodb://u@h".into(), None)
        );
    }

    #[test]
    fn what_ams_java_side_would_refuse_is_refused_here() {
        assert!(err("mongodb://h1?w=1").contains("'/' before the '?'"));
        assert!(err("mongodb+srv://1.2.3.4").contains("DNS name"));
        assert!(err("mongodb+srv://[::1]").contains("DNS name"));
        assert_eq!(ok("mongodb://h1/?w=1").url, "mongodb://h1/?w=1");
        assert_eq!(ok("REDIS://h:6379").url, "redis://h:6379");
        assert!(err("redis://:pw@h1:notaport").contains("port"));
        assert!(err("redis://h/0?x=#y").contains("%23"));
    }

    #[test]
    fn loose_redaction_never_shows_a_malformed_password() {
        assert_eq!(redact_loose("mongodb://u:se/cret@h"), "mongodb://u:****@h");
        assert_eq!(
            redact_loose("mongodb://u:a@b?c@h/x"),
            "mongodb://u:****@h/x"
        );
        assert_eq!(redact_loose("mongodb://token@h"), "mongodb://****@h");
        assert_eq!(
            redact_loose("-db.host=mongodb://u:p@h:1"),
            "-db.host=mongodb://u:****@h:1"
        );
        assert_eq!(redact_loose("mongodb://h:1/?x=1"), "mongodb://h:1/?x=1");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("mongodb://u:p@h/db?x=@"),
            "mongodb://u:****@h/db?x=@"
        );
        assert_eq!(redact("mongodb://h:1"), "mongodb://h:1");
        assert_eq!(redact("redis://:pw@h"), "redis://:****@h");
    }

    #[test]
    fn the_drivers_message_keeps_its_words_whatever_the_password() {
        // The password `p`: the driver's reason is quoted as it is.
        let e = err("mongodb://u:p@h/?authMechanism=MONGODB-X509");
        assert!(e.contains("A password cannot be specified"), "{e}");
        assert!(!e.contains("u:p@"), "{e}");
    }
}
