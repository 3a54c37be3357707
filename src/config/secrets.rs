//! Secrets: the MongoDB password file `/etc/ams-agent/mongo-password`
//! (0600, always present, empty without a password, because the unit loads
//! it with `LoadCredential=`), the environment variable, and the one way a
//! password is read from a file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::host::Host;

pub const PASSWORD_FILE: &str = "/etc/ams-agent/mongo-password";
/// Name of the credential in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
pub const CREDENTIAL_NAME: &str = "mongo-password";
/// The MongoDB password from the environment (never from an argument).
pub const PASSWORD_ENV: &str = "AMS_AGENT_MONGO_PASSWORD";
/// The MongoDB admin password from the environment (`setup mongo`, `doctor`).
pub const ADMIN_PASSWORD_ENV: &str = "AMS_AGENT_MONGO_ADMIN_PASSWORD";

/// The password file's content for `password`: the password and one
/// newline, or nothing at all.
pub fn password_file_content(password: Option<&str>) -> Vec<u8> {
    match password {
        Some(p) if !p.is_empty() => format!("{p}\n").into_bytes(),
        _ => Vec::new(),
    }
}

/// Where the password comes from at run time: `$CREDENTIALS_DIRECTORY/mongo-password`
/// when systemd passed credentials, else `/etc/ams-agent/mongo-password`
/// under the root; `AMS_AGENT_MONGO_PASSWORD` overrides both. A missing or
/// empty file means "no password". Exactly one trailing newline is dropped.
pub fn runtime_password(host: &Host) -> Result<Option<String>> {
    if let Some(p) = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()) {
        return Ok(Some(p));
    }
    let (real, shown) = match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) => {
            let p = Path::new(&dir).join(CREDENTIAL_NAME);
            (p.clone(), p)
        }
        None => (
            host.path(Path::new(PASSWORD_FILE)),
            PathBuf::from(PASSWORD_FILE),
        ),
    };
    if let Ok(m) = std::fs::metadata(&real) {
        use std::os::unix::fs::MetadataExt as _;
        if m.mode() & 0o077 != 0 {
            tracing::warn!(
                "{} is readable by other users (mode {:o}); run `chmod 600` on it, or run `ams-agent join` again",
                shown.display(),
                m.mode() & 0o7777
            );
        }
    }
    let bytes = match std::fs::read(&real) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "reading the MongoDB password from {} (run as root, or set {})",
                    shown.display(),
                    PASSWORD_ENV
                )
            });
        }
    };
    password_from_bytes(bytes).map_err(|why| anyhow::anyhow!("reading {}: {why}", shown.display()))
}

/// A password as a file holds it: UTF-8 text with exactly one trailing
/// newline (LF or CRLF) dropped; a NUL is refused. `None` when empty. The
/// one way every password file is read (`--mongo-password-file`,
/// `--admin-password-file`, the files the agent writes).
pub fn password_from_bytes(bytes: Vec<u8>) -> std::result::Result<Option<String>, &'static str> {
    let Ok(mut text) = String::from_utf8(bytes) else {
        return Err("the password is not UTF-8 text");
    };
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.contains('\0') {
        return Err("the password contains a NUL character");
    }
    Ok((!text.is_empty()).then_some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_dropped() {
        let read = |b: &[u8]| password_from_bytes(b.to_vec());
        assert_eq!(read(b"pw\n").unwrap().as_deref(), Some("pw"));
        assert_eq!(read(b"pw\r\n").unwrap().as_deref(), Some("pw"));
        assert_eq!(read(b"pw\n\n").unwrap().as_deref(), Some("pw\n"));
        assert_eq!(read(b" pw ").unwrap().as_deref(), Some(" pw "));
        assert_eq!(read(b"\n").unwrap(), None);
        assert!(read(b"p\0w").is_err());
        assert!(read(b"\xff").is_err());
    }
}
