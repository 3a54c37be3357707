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
/// empty file means "no password". Read as [`password_from_bytes`] reads.
pub fn runtime_password(host: &Host) -> Result<Option<String>> {
    runtime_password_from(
        host,
        std::env::var(PASSWORD_ENV).ok(),
        std::env::var_os("CREDENTIALS_DIRECTORY"),
    )
}

/// [`runtime_password`] with the two variables passed in (tests pass
/// their own, whatever the test process's environment holds).
pub fn runtime_password_from(
    host: &Host,
    env_password: Option<String>,
    credentials_directory: Option<std::ffi::OsString>,
) -> Result<Option<String>> {
    if let Some(p) = env_password.filter(|p| !p.is_empty()) {
        return Ok(Some(p));
    }
    let (real, shown) = match credentials_directory {
        Some(dir) => {
            let p = Path::new(&dir).join(CREDENTIAL_NAME);
            (p.clone(), p)
        }
        None => (
            host.path(Path::new(PASSWORD_FILE)),
            PathBuf::from(PASSWORD_FILE),
        ),
    };
    let shown = shown.display().to_string();
    let read = crate::host::fs::read_capped_real(&real, &shown, crate::host::fs::Cap::PASSWORD)
        .with_context(|| format!("run as root, or set {PASSWORD_ENV}"));
    let (bytes, meta) = match read {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(None),
        Err(e) => return Err(e),
    };
    {
        use std::os::unix::fs::MetadataExt as _;
        if meta.mode() & 0o077 != 0 {
            tracing::warn!(
                "{shown} is readable by other users (mode {:o}); run `chmod 600` on it, or run `ams-agent join` again",
                meta.mode() & 0o7777
            );
        }
    }
    password_from_bytes(bytes, &shown).map_err(|why| anyhow::anyhow!("reading {shown}: {why}"))
}

/// A password as a file holds it: UTF-8 text with exactly one trailing
/// newline (LF or CRLF) dropped. What editors and other systems add by
/// mistake is removed with a warning naming the file (`shown`): a UTF-8
/// byte-order mark at the start, a lone carriage return at the end. A NUL
/// and a password of only whitespace are refused. `None` when empty. The
/// one way every password file is read (`--mongo-password-file`,
/// `--admin-password-file`, the files the agent writes).
pub fn password_from_bytes(
    bytes: Vec<u8>,
    shown: &str,
) -> std::result::Result<Option<String>, &'static str> {
    let Ok(mut text) = String::from_utf8(bytes) else {
        return Err("the password is not UTF-8 text");
    };
    if let Some(rest) = text.strip_prefix('\u{feff}') {
        tracing::warn!(
            "{}: removed the UTF-8 byte-order mark at the start of the password (an editor added it)",
            crate::human::escape(shown)
        );
        text = rest.to_string();
    }
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    } else if text.ends_with('\r') {
        text.pop();
        tracing::warn!(
            "{}: removed the carriage return at the end of the password (a line ending, not part of it)",
            crate::human::escape(shown)
        );
    }
    if text.contains('\0') {
        return Err("the password contains a NUL character");
    }
    if !text.is_empty() && text.chars().all(char::is_whitespace) {
        return Err("the password is only whitespace (a file written by mistake?)");
    }
    Ok((!text.is_empty()).then_some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_dropped() {
        let read = |b: &[u8]| password_from_bytes(b.to_vec(), "pw");
        assert_eq!(read(b"pw\n").unwrap().as_deref(), Some("pw"));
        assert_eq!(read(b"pw\r\n").unwrap().as_deref(), Some("pw"));
        assert_eq!(read(b"pw\n\n").unwrap().as_deref(), Some("pw\n"));
        assert_eq!(read(b" pw ").unwrap().as_deref(), Some(" pw "));
        assert_eq!(read(b"\n").unwrap(), None);
        assert!(read(b"p\0w").is_err());
        assert!(read(b"\xff").is_err());
    }

    #[test]
    fn what_editors_add_is_removed_and_blank_passwords_refused() {
        let read = |b: &[u8]| password_from_bytes(b.to_vec(), "pw");
        assert_eq!(read(b"\xef\xbb\xbfpw\n").unwrap().as_deref(), Some("pw"));
        assert_eq!(read(b"pw\r").unwrap().as_deref(), Some("pw"));
        assert_eq!(read(b"\xef\xbb\xbfpw\r").unwrap().as_deref(), Some("pw"));
        for blank in [&b" "[..], b"  \n", b"\t\r\n", b"\xef\xbb\xbf \n"] {
            let e = read(blank).unwrap_err();
            assert!(e.contains("only whitespace"), "{blank:?}: {e}");
        }
        assert_eq!(read(b"\xef\xbb\xbf").unwrap(), None);
    }
}
