//! Driver errors turned into one clear line: what failed (unreachable
//! server, DNS, authentication, TLS, timeout, an error reply), with the URI
//! printed password-masked, and whether waiting could help.

use std::fmt;

use mongodb::error::{ErrorKind, WriteFailure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing accepts connections, or the connection was closed.
    Unreachable,
    Dns,
    Auth,
    Tls,
    Timeout,
    /// The server answered with an error.
    Server,
    /// The URI or options are wrong.
    Config,
    Other,
}

#[derive(Debug, Clone)]
pub struct RegistryError {
    pub failure: Failure,
    /// The server's error code, for error replies.
    pub code: Option<i32>,
    pub message: String,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RegistryError {}

/// Server codes that mean "not ready yet, ask again": shutting down,
/// starting up, not primary (yet).
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436, 262,
];

/// `code 59 CommandNotFound`, or `code 59` when the server sends no name.
fn code_label(code: i32, name: &str) -> String {
    if name.is_empty() {
        format!("code {code}")
    } else {
        format!("code {code} {name}")
    }
}

impl RegistryError {
    pub fn new(failure: Failure, message: impl Into<String>) -> Self {
        RegistryError {
            failure,
            code: None,
            message: one_line(&message.into()),
        }
    }

    /// Whether waiting and trying again can help (MongoDB still booting,
    /// network blip), as opposed to wrong credentials or TLS settings.
    pub fn transient(&self) -> bool {
        match self.failure {
            Failure::Unreachable | Failure::Dns | Failure::Timeout | Failure::Other => true,
            Failure::Server => self.code.is_some_and(|c| TRANSIENT_CODES.contains(&c)),
            Failure::Auth | Failure::Tls | Failure::Config => false,
        }
    }

    /// Classifies a driver error. `shown` is the password-masked URI.
    pub fn from_driver(e: &mongodb::error::Error, shown: &str, what: &str) -> Self {
        let text = e.to_string();
        let (failure, code, detail) = match e.kind.as_ref() {
            ErrorKind::Authentication { message, .. } => (Failure::Auth, None, message.clone()),
            ErrorKind::Command(c) if c.code == 18 || c.code == 13 => (
                Failure::Auth,
                Some(c.code),
                format!("{} ({})", c.message, code_label(c.code, &c.code_name)),
            ),
            ErrorKind::Command(c) => (
                Failure::Server,
                Some(c.code),
                format!("{} ({})", c.message, code_label(c.code, &c.code_name)),
            ),
            ErrorKind::Write(WriteFailure::WriteError(w)) => (
                Failure::Server,
                Some(w.code),
                format!("{} (code {})", w.message, w.code),
            ),
            ErrorKind::Write(WriteFailure::WriteConcernError(w)) => (
                Failure::Server,
                Some(w.code),
                format!("{} (code {})", w.message, w.code),
            ),
            ErrorKind::DnsResolve { message, .. } => (Failure::Dns, None, message.clone()),
            ErrorKind::InvalidTlsConfig { message, .. } => (Failure::Tls, None, message.clone()),
            ErrorKind::InvalidArgument { message, .. } => (Failure::Config, None, message.clone()),
            _ => (classify_text(&text), None, text.clone()),
        };
        let detail = summarize(&detail);
        let message = match failure {
            Failure::Unreachable => format!(
                "{what}: cannot reach MongoDB at {shown}: {detail}; is mongod running and is its port open to this node (bindIp, security group)?"
            ),
            Failure::Dns => format!(
                "{what}: cannot resolve the MongoDB host of {shown} (DNS failure: {detail}); check the host name"
            ),
            Failure::Auth => format!(
                "{what}: MongoDB at {shown} refused the credentials (authentication failed: {detail}); check the user, the password and authSource"
            ),
            Failure::Tls => format!(
                "{what}: TLS with MongoDB at {shown} failed ({detail}); check tls= in the URI and the server's certificate"
            ),
            Failure::Timeout => {
                format!("{what}: MongoDB at {shown} did not answer in time ({detail})")
            }
            Failure::Server => {
                format!("{what}: MongoDB at {shown} answered with an error: {detail}")
            }
            Failure::Config => format!("{what}: the MongoDB URI {shown} is not usable: {detail}"),
            Failure::Other => format!("{what}: MongoDB at {shown}: {detail}"),
        };
        RegistryError {
            failure,
            code,
            message: one_line(&message),
        }
    }
}

/// Guesses the failure from the driver's text (server selection errors
/// carry the last network error of each server as text).
pub fn classify_text(text: &str) -> Failure {
    let t = text.to_ascii_lowercase();
    if t.contains("authentication") || t.contains("auth error") || t.contains("scram") {
        Failure::Auth
    } else if t.contains("failed to lookup address")
        || t.contains("name or service not known")
        || t.contains("temporary failure in name resolution")
        || t.contains("no record found")
        || t.contains("nxdomain")
        || t.contains("no such host")
        || t.contains("dns")
    {
        Failure::Dns
    } else if t.contains("tls")
        || t.contains("ssl")
        || t.contains("certificate")
        || t.contains("corrupt message")
        || t.contains("invalidcontenttype")
        || t.contains("handshakefailure")
        || t.contains("peer is incompatible")
    {
        Failure::Tls
    } else if t.contains("connection refused")
        || t.contains("network is unreachable")
        || t.contains("no route to host")
        || t.contains("connection reset")
        || t.contains("broken pipe")
        || t.contains("unexpected end of file")
        || t.contains("early eof")
        || t.contains("connection closed")
        || t.contains("pool cleared")
    {
        Failure::Unreachable
    } else if t.contains("timed out") || t.contains("timeout") || t.contains("deadline") {
        Failure::Timeout
    } else {
        Failure::Other
    }
}

/// The useful part of a driver message: the innermost server error of a
/// server selection failure, without the topology dump.
fn summarize(text: &str) -> String {
    // "... Servers: [ { Address: h:1, Type: Unknown, Error: Kind: I/O error:
    //  Connection refused (os error 111), labels: {} } ] }, labels: {}"
    let cleaned = if let Some(i) = text.find("Error: Kind: ") {
        let rest = &text[i + "Error: Kind: ".len()..];
        let end = rest.find(", labels:").unwrap_or(rest.len());
        rest[..end].to_string()
    } else if let Some(stripped) = text.strip_prefix("Kind: ") {
        let end = stripped.find(", labels:").unwrap_or(stripped.len());
        stripped[..end].to_string()
    } else {
        text.to_string()
    };
    let cleaned = cleaned.trim().trim_end_matches('.').to_string();
    if cleaned.chars().count() > 300 {
        let cut: String = cleaned.chars().take(300).collect();
        format!("{cut}…")
    } else {
        cleaned
    }
}

fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_without_a_name_has_no_stray_space() {
        assert_eq!(code_label(59, ""), "code 59");
        assert_eq!(code_label(59, "CommandNotFound"), "code 59 CommandNotFound");
    }

    #[test]
    fn texts_are_classified() {
        for (text, want) in [
            (
                "Kind: Server selection timeout: No available servers. Topology: { Type: Unknown, Servers: [ { Address: 127.0.0.1:1, Type: Unknown, Error: Kind: I/O error: Connection refused (os error 111), labels: {} } ] }, labels: {}",
                Failure::Unreachable,
            ),
            (
                "Kind: I/O error: failed to lookup address information: Name or service not known",
                Failure::Dns,
            ),
            (
                "Kind: I/O error: received corrupt message of type InvalidContentType",
                Failure::Tls,
            ),
            (
                "Kind: I/O error: invalid peer certificate: UnknownIssuer",
                Failure::Tls,
            ),
            ("Kind: I/O error: connection timed out", Failure::Timeout),
            (
                "Kind: I/O error: unexpected end of file",
                Failure::Unreachable,
            ),
            ("something else", Failure::Other),
        ] {
            assert_eq!(classify_text(text), want, "{text}");
        }
    }

    #[test]
    fn summaries_drop_the_topology_dump() {
        let s = summarize(
            "Server selection timeout: No available servers. Topology: { Type: Unknown, Servers: [ { Address: 127.0.0.1:1, Type: Unknown, Error: Kind: I/O error: Connection refused (os error 111), labels: {} } ] }, labels: {}",
        );
        assert_eq!(s, "I/O error: Connection refused (os error 111)");
    }

    #[test]
    fn transient_or_not() {
        assert!(RegistryError::new(Failure::Unreachable, "x").transient());
        assert!(!RegistryError::new(Failure::Auth, "x").transient());
        let mut e = RegistryError::new(Failure::Server, "x");
        e.code = Some(91);
        assert!(e.transient());
        e.code = Some(2);
        assert!(!e.transient());
    }
}
