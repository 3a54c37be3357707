//! MongoDB's apt repository: the sources line with `signed-by=` a keyring
//! of its own (never `apt-key`), and the signing key, fetched over HTTPS and
//! turned from ASCII armor into the binary keyring apt reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;

use super::os::{Distro, Family};

/// Where the repository and its key come from; overridable for mirrors and
/// tests (`--repo-url`, `--key-url`).
#[derive(Debug, Clone)]
pub struct RepoSource {
    pub series: String,
    /// Base URL, e.g. `https://repo.mongodb.org/apt/ubuntu`.
    pub repo_url: String,
    pub key_url: String,
}

impl RepoSource {
    pub fn official(distro: &Distro, series: &str) -> Self {
        let flavour = match distro.family {
            Family::Ubuntu => "ubuntu",
            Family::Debian => "debian",
        };
        RepoSource {
            series: series.to_string(),
            repo_url: format!("https://repo.mongodb.org/apt/{flavour}"),
            key_url: format!("https://www.mongodb.org/static/pgp/server-{series}.asc"),
        }
    }

    pub fn keyring_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/usr/share/keyrings/mongodb-server-{}.gpg",
            self.series
        ))
    }

    pub fn list_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/etc/apt/sources.list.d/mongodb-org-{}.list",
            self.series
        ))
    }

    /// The one-line sources file, as MongoDB's install guide writes it.
    pub fn list_file(&self, distro: &Distro) -> String {
        let keyring = self.keyring_path();
        let base = self.repo_url.trim_end_matches('/');
        let (arch, component) = match distro.family {
            Family::Ubuntu => ("arch=amd64,arm64 ", "multiverse"),
            Family::Debian => ("", "main"),
        };
        format!(
            "# MongoDB {series} for {name}, written by ams-agent setup mongo\n\
             deb [ {arch}signed-by={keyring} ] {base} {codename}/mongodb-org/{series} {component}\n",
            series = self.series,
            name = distro.name(),
            keyring = keyring.display(),
            codename = distro.codename,
        )
    }
}

/// Checks `--repo-url` / `--key-url`: an absolute http(s) URL without
/// spaces or control characters (it lands in a sources line). The key must
/// come over HTTPS: it is what every package is checked against.
pub fn check_url(url: &str, flag: &str, https_only: bool) -> std::result::Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{flag} contains a space or control character"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{flag} {url}: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if !https_only => {}
        other => {
            return Err(format!(
                "{flag} {url}: scheme {other}:// is not accepted; use {}",
                if https_only {
                    "https://"
                } else {
                    "https:// or http://"
                }
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{flag} {url}: no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{flag}: credentials in the URL would be written to a world-readable sources file; use apt's auth.conf.d instead"
        ));
    }
    Ok(())
}

/// The system's CA bundle on Debian and Ubuntu (`update-ca-certificates`
/// adds a company's own CA there).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Roots trusted besides the built-in Mozilla set: the system bundle, and
/// `SSL_CERT_FILE` when set (a mirror's private CA; the tests' CA).
fn extra_roots() -> Result<Vec<reqwest::Certificate>> {
    let mut roots = Vec::new();
    if let Ok(pem) = std::fs::read(SYSTEM_BUNDLE) {
        // A bundle with one odd entry is still mostly useful.
        roots.extend(reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default());
    }
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        let shown = format!(
            "SSL_CERT_FILE {}",
            crate::human::escape(&file.to_string_lossy())
        );
        let pem =
            crate::host::fs::read_capped_real(Path::new(&file), &shown, crate::host::fs::Cap::PEM)?
                .map(|(bytes, _)| bytes)
                .with_context(|| format!("reading {shown}: no such file"))?;
        roots.extend(
            reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("reading SSL_CERT_FILE {}", file.to_string_lossy()))?,
        );
    }
    Ok(roots)
}

/// The largest key file accepted (MongoDB's is about 1.6 KiB).
const MAX_KEY_BYTES: usize = 1 << 20;

/// Fetches the signing key over HTTPS within `timeout` (Mozilla's roots,
/// the system bundle, `SSL_CERT_FILE`), and returns it as a binary keyring.
pub async fn fetch_keyring(url: &str, timeout: Duration) -> Result<Vec<u8>> {
    let what = format!("fetching the MongoDB signing key from {url}");
    let fetch = async {
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .connect_timeout(timeout.min(Duration::from_secs(10)));
        for cert in extra_roots()? {
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().context("preparing the HTTPS client")?;
        let mut resp = client.get(url).send().await.map_err(chain)?;
        let status = resp.status();
        if !status.is_success() {
            bail!("the server answered {status}");
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(chain)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_KEY_BYTES {
                bail!("the answer is larger than {MAX_KEY_BYTES} bytes, not a key");
            }
        }
        Ok::<_, anyhow::Error>(body)
    };
    let body = match tokio::time::timeout(timeout, fetch).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            bail!("{what}: {e:#}");
        }
        Err(_) => bail!(
            "{what}: no complete answer within {}",
            humantime::format_duration(timeout)
        ),
    };
    to_keyring(&body).with_context(|| what)
}

/// reqwest's error with its whole chain of causes, as one message.
fn chain(e: reqwest::Error) -> anyhow::Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    anyhow::anyhow!(msg)
}

/// An OpenPGP public key, armored or binary, as the binary keyring apt's
/// `signed-by=` reads (what `gpg --dearmor` makes).
pub fn to_keyring(data: &[u8]) -> Result<Vec<u8>> {
    let text = String::from_utf8_lossy(data);
    let binary = if text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
        dearmor(&text)?
    } else {
        data.to_vec()
    };
    check_public_key(&binary)?;
    Ok(binary)
}

fn dearmor(text: &str) -> Result<Vec<u8>> {
    let mut lines = text
        .lines()
        .map(str::trim_end)
        .skip_while(|l| *l != "-----BEGIN PGP PUBLIC KEY BLOCK-----")
        .skip(1);
    // Armor headers ("Comment: …") end at the first empty line.
    let mut body = String::new();
    let mut in_headers = true;
    let mut checksum = None;
    let mut ended = false;
    for line in lines.by_ref() {
        if line == "-----END PGP PUBLIC KEY BLOCK-----" {
            ended = true;
            break;
        }
        if in_headers {
            if line.is_empty() {
                in_headers = false;
            } else if !line.contains(": ") {
                // No headers at all: this is already data.
                in_headers = false;
                body.push_str(line);
            }
            continue;
        }
        if let Some(crc) = line.strip_prefix('=') {
            checksum = Some(crc.to_string());
        } else {
            body.push_str(line);
        }
    }
    if !ended {
        bail!("the armored key has no END line (truncated download?)");
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .context("decoding the armored key (bad base64)")?;
    if let Some(crc) = checksum {
        let want = base64::engine::general_purpose::STANDARD
            .decode(crc.as_bytes())
            .context("decoding the armor checksum")?;
        let got = crc24(&bytes).to_be_bytes();
        if want.as_slice() != &got[1..] {
            bail!("the armored key fails its checksum (corrupted download)");
        }
    }
    Ok(bytes)
}

/// The CRC-24 of RFC 4880 §6.1.
fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xB704CE;
    for &b in data {
        crc ^= (b as u32) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x1000000 != 0 {
                crc ^= 0x1864CFB;
            }
        }
    }
    crc & 0xFFFFFF
}

/// The first packet must be a public key (tag 6), else this is an HTML
/// error page or something else that apt would reject at update time.
fn check_public_key(binary: &[u8]) -> Result<()> {
    let Some(&first) = binary.first() else {
        bail!("the key is empty");
    };
    if first & 0x80 == 0 {
        bail!("this is not an OpenPGP key (an error page or a wrong --key-url?)");
    }
    let tag = if first & 0x40 != 0 {
        first & 0x3F
    } else {
        (first >> 2) & 0x0F
    };
    if tag != 6 {
        bail!("this OpenPGP data does not start with a public key (packet tag {tag})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mongod::os::SUPPORTED;

    #[test]
    fn lines_for_ubuntu_and_debian() {
        let noble = SUPPORTED.iter().find(|d| d.codename == "noble").unwrap();
        let src = RepoSource::official(noble, "8.0");
        assert!(src.list_file(noble).ends_with(
            "deb [ arch=amd64,arm64 signed-by=/usr/share/keyrings/mongodb-server-8.0.gpg ] https://repo.mongodb.org/apt/ubuntu noble/mongodb-org/8.0 multiverse\n"
        ));
        let bookworm = SUPPORTED.iter().find(|d| d.codename == "bookworm").unwrap();
        let src = RepoSource::official(bookworm, "7.0");
        assert!(src.list_file(bookworm).ends_with(
            "deb [ signed-by=/usr/share/keyrings/mongodb-server-7.0.gpg ] https://repo.mongodb.org/apt/debian bookworm/mongodb-org/7.0 main\n"
        ));
        assert_eq!(
            src.list_path(),
            PathBuf::from("/etc/apt/sources.list.d/mongodb-org-7.0.list")
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://mirror.example/apt/ubuntu", "--repo-url", false).is_ok());
        assert!(check_url("http://10.0.0.2/apt", "--repo-url", false).is_ok());
        assert!(check_url("http://10.0.0.2/k.asc", "--key-url", true).is_err());
        assert!(check_url("https://a b/", "--repo-url", false).is_err());
        assert!(check_url("https://u:p@h/", "--repo-url", false).is_err());
        assert!(check_url("https://h/x\n] deb", "--repo-url", false).is_err());
        assert!(check_url("ftp://h/", "--repo-url", false).is_err());
    }

    #[test]
    fn crc24_matches_rfc4880() {
        // gpg --dearmor of "=twTO" style checksums: CRC-24 of nothing is the init value.
        assert_eq!(crc24(b""), 0xB704CE);
    }

    #[test]
    fn html_is_not_a_key() {
        let err = to_keyring(b"<html>Not found</html>").unwrap_err();
        assert!(err.to_string().contains("not an OpenPGP key"), "{err}");
        assert!(to_keyring(b"").is_err());
        let truncated = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBF\n";
        assert!(
            to_keyring(truncated.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("END")
        );
    }
}
