//! A MongoDB connection URI, parsed once: scheme, user (as written), the
//! password as a [`Secret`] (percent-decoded), hosts and the rest
//! (`/db?options`) as written. It prints itself with the password masked;
//! the full text exists only where the driver needs it.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::secret::Secret;

/// Characters kept as they are in userinfo; everything else is %-encoded.
pub const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Clone, PartialEq, Eq)]
pub struct MongoUri {
    /// `mongodb://`, `mongodb+srv://` (or another scheme's, as written).
    scheme: String,
    /// The user as written (percent-encoded).
    user: Option<String>,
    password: Option<Secret>,
    /// Hosts and everything after them, as written.
    rest: String,
}

impl MongoUri {
    /// Splits `scheme://[user[:password]@]hosts[/db][?options]`; None
    /// without a scheme. The userinfo ends at the last `@` before the
    /// first `/` or `?` after the scheme.
    pub fn parse(uri: &str) -> Option<Self> {
        let scheme_end = uri.find("://")? + 3;
        let after = &uri[scheme_end..];
        let authority_end = after.find(['/', '?']).unwrap_or(after.len());
        let (user, password, rest) = match after[..authority_end].rfind('@') {
            None => (None, None, after),
            Some(at) => {
                let userinfo = &after[..at];
                let (user, password) = match userinfo.split_once(':') {
                    Some((u, p)) => {
                        let p = percent_decode_str(p).decode_utf8_lossy().into_owned();
                        (u, (!p.is_empty()).then(|| Secret::new(p)))
                    }
                    None => (userinfo, None),
                };
                (Some(user.to_string()), password, &after[at..])
            }
        };
        Some(MongoUri {
            scheme: uri[..scheme_end].to_string(),
            user,
            password,
            rest: rest.to_string(),
        })
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The same URI holding `password` (percent-encoded on output).
    pub fn with_password(mut self, password: Secret) -> Self {
        self.password = Some(password);
        self
    }

    /// The same URI without its password (the user stays).
    pub fn without_password(mut self) -> Self {
        self.password = None;
        self
    }

    fn render(&self, password: impl Fn(&Secret) -> String) -> String {
        let userinfo = match (&self.user, &self.password) {
            (Some(u), Some(p)) => format!("{u}:{}", password(p)),
            (Some(u), None) => u.clone(),
            (None, _) => String::new(),
        };
        format!("{}{userinfo}{}", self.scheme, self.rest)
    }

    /// The whole URI, password included: only for the driver.
    pub fn expose(&self) -> String {
        self.render(|p| utf8_percent_encode(p.expose(), USERINFO).to_string())
    }
}

/// Masked: `mongodb://user:****@hosts/…`.
impl fmt::Display for MongoUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(|_| "****".into()))
    }
}

impl fmt::Debug for MongoUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MongoUri({self})")
    }
}

/// Masks the password of any `scheme://user:password@host…` URL (MongoDB
/// or Redis): the URI as [`MongoUri`] prints it.
pub fn redact(url: &str) -> String {
    MongoUri::parse(url).map_or_else(|| url.to_string(), |u| u.to_string())
}

/// Every form of a password that could be printed: as given, and
/// percent-encoded as in a URI.
pub fn password_forms(p: &str) -> Vec<String> {
    let encoded = utf8_percent_encode(p, USERINFO).to_string();
    let mut forms = vec![p.to_string(), encoded];
    forms.retain(|s| !s.is_empty());
    forms.dedup();
    forms
}

/// Whether a MongoDB URI asks for an authentication mechanism that takes no
/// password (X.509 certificates, Kerberos, AWS or OIDC identities).
pub fn mechanism_without_password(url: &str) -> bool {
    let Some(query) = url.split_once('?').map(|(_, q)| q) else {
        return false;
    };
    query.split('&').any(|pair| {
        pair.split_once('=').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("authMechanism")
                && ["MONGODB-X509", "GSSAPI", "MONGODB-AWS", "MONGODB-OIDC"]
                    .iter()
                    .any(|m| v.eq_ignore_ascii_case(m))
        })
    })
}

/// Splits a URI into the URI without its password (the user is kept) and
/// the password, percent-decoded. For `agent.toml` and the password file.
pub fn split_password(uri: &str) -> (String, Option<String>) {
    match MongoUri::parse(uri) {
        Some(u) => {
            let password = u.password().map(|p| p.expose().to_string());
            (u.without_password().expose(), password)
        }
        None => (uri.to_string(), None),
    }
}

/// The inverse of [`split_password`]: the password put back after the
/// user, percent-encoded. None when the URI names no user (or already holds
/// a password).
pub fn join_password(uri: &str, password: &str) -> Option<String> {
    let u = MongoUri::parse(uri)?;
    if u.user().is_none() || u.password().is_some() {
        return None;
    }
    Some(u.with_password(Secret::new(password)).expose())
}

/// Whether a URI holds a password.
pub fn has_password(uri: &str) -> bool {
    MongoUri::parse(uri).is_some_and(|u| u.password().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_once_printed_masked() {
        let u = MongoUri::parse("mongodb+srv://ams:p%40ss%3A%2F@cluster0.example.net/admin?x=@")
            .unwrap();
        assert_eq!(u.user(), Some("ams"));
        assert_eq!(u.password().unwrap().expose(), "p@ss:/");
        assert_eq!(
            u.to_string(),
            "mongodb+srv://ams:****@cluster0.example.net/admin?x=@"
        );
        assert_eq!(
            format!("{u:?}"),
            "MongoUri(mongodb+srv://ams:****@cluster0.example.net/admin?x=@)"
        );
        assert_eq!(
            u.expose(),
            "mongodb+srv://ams:p%40ss%3A%2F@cluster0.example.net/admin?x=@"
        );
        assert_eq!(
            u.without_password().expose(),
            "mongodb+srv://ams@cluster0.example.net/admin?x=@"
        );
        let bare = MongoUri::parse("mongodb://h1,h2:27018").unwrap();
        assert_eq!(bare.user(), None);
        assert_eq!(bare.to_string(), "mongodb://h1,h2:27018");
        assert!(MongoUri::parse("h:27017").is_none());
    }

    #[test]
    fn split_and_join_are_inverse() {
        let full = "mongodb://u:p%40ss%0A@h1,h2/admin?x=@";
        let (bare, pw) = split_password(full);
        assert_eq!(bare, "mongodb://u@h1,h2/admin?x=@");
        assert_eq!(pw.as_deref(), Some("p@ss\n"));
        assert_eq!(join_password(&bare, &pw.unwrap()).as_deref(), Some(full));
        assert_eq!(join_password("mongodb://h/", "pw"), None);
        assert_eq!(join_password(full, "pw"), None);
        assert_eq!(
            split_password("mongodb://u:@h"),
            ("mongodb://u@h".into(), None)
        );
        assert!(has_password(full) && !has_password("mongodb://u@h"));
    }
}
