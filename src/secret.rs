//! Secrets and how they are kept out of sight: a [`Secret`] never prints
//! itself, and text that may hold a URI is printed with its password
//! masked ([`redact_loose`]; a well-formed URI prints itself masked: `MongoUri`).

use std::fmt;

/// A password or key: `Debug` and `Display` print `****`; only
/// [`Secret::expose`] gives the value, where it is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// For input that is not (yet) known to be well formed: everything between
/// the first `:` after `://` and the last `@` is masked (all of it when there
/// is no `:`), so a password with an unescaped `/`, `?` or `@` is never
/// echoed.
pub fn redact_loose(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        // `user:password@host` without a scheme: same rule, but a bare
        // `user@host` holds no password and stays readable.
        return match url.rfind('@') {
            Some(at) => match url[..at].find(':') {
                Some(colon) => format!("{}:****{}", &url[..colon], &url[at..]),
                None => url.to_string(),
            },
            None => url.to_string(),
        };
    };
    let Some(at) = url[start..].rfind('@').map(|at| start + at) else {
        return url.to_string();
    };
    // The user (before the first ':') stays readable; the rest is masked.
    match url[start..at].find(':') {
        Some(colon) => format!("{}:****{}", &url[..start + colon], &url[at..]),
        None => format!("{}****{}", &url[..start], &url[at..]),
    }
}

/// Every URI-like word of a message (one holding an `@`) with its
/// password masked by position ([`redact_loose`]); the rest as it is. For
/// messages from elsewhere (the driver, a parser) that may quote a URI.
pub fn redact_uris(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            if word.contains('@') {
                redact_loose(word)
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// 32 characters of [A-Za-z0-9] from /dev/urandom (190 bits): safe in
/// URIs, files, properties and shells without quoting. Bytes ≥ 248 (= 4 × 62)
/// are skipped, so every character is equally likely.
pub fn random_password() -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::io::Read as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const LEN: usize = 32;
    let mut random = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    let mut out = String::with_capacity(LEN);
    let mut buf = [0u8; 64];
    while out.len() < LEN {
        random
            .read_exact(&mut buf)
            .context("reading /dev/urandom")?;
        for b in buf.into_iter().filter(|b| *b < 248) {
            if out.len() < LEN {
                out.push(char::from(ALPHABET[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_itself() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "**** ****");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn uris_are_printed_without_their_password() {
        assert_eq!(redact_loose("mongodb://u:p/@?x@h"), "mongodb://u:****@h");
        assert_eq!(redact_loose("u:pw@h"), "u:****@h");
        assert_eq!(redact_loose("u@h"), "u@h");
    }

    #[test]
    fn messages_lose_uri_passwords_and_keep_their_words() {
        assert_eq!(
            redact_uris("A password cannot be specified for mongodb://u:p@h/x"),
            "A password cannot be specified for mongodb://u:****@h/x"
        );
    }
}
