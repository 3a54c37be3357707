//! Where things are in an AMS install (`/usr/local/antmedia` by default).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::bail_usage;
use crate::host::Host;

pub const DEFAULT_AMS_HOME: &str = "/usr/local/antmedia";
pub const SERVICE: &str = "antmedia";
pub const DEFAULT_HTTP_URL: &str = "http://127.0.0.1:5080/";

#[derive(Debug, Clone)]
pub struct AmsLayout {
    pub home: PathBuf,
}

impl AmsLayout {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        AmsLayout { home: home.into() }
    }

    pub fn red5_properties(&self) -> PathBuf {
        self.home.join("conf/red5.properties")
    }

    pub fn jee_container(&self) -> PathBuf {
        self.home.join("conf/jee-container.xml")
    }

    pub fn webapps(&self) -> PathBuf {
        self.home.join("webapps")
    }

    pub fn webapp_properties(&self, app: &str) -> PathBuf {
        self.webapps().join(app).join("WEB-INF/red5-web.properties")
    }

    /// Checks this really is an AMS install, so a wrong `--ams-home` is bad
    /// input reported before anything is touched. A file that cannot be
    /// examined (no permission, a dangling symlink) is an error naming it,
    /// not "missing".
    pub fn check(&self, host: &Host) -> Result<()> {
        for (what, p) in [
            ("conf/red5.properties", self.red5_properties()),
            ("conf/jee-container.xml", self.jee_container()),
        ] {
            if !host.file_present(&p)? {
                bail_usage!(
                    "no Ant Media Server at {}: {what} is missing; pass the install folder with --ams-home",
                    self.home.display()
                );
            }
        }
        if !host.probe(&self.webapps())?.is_some_and(|m| m.is_dir()) {
            bail_usage!(
                "no Ant Media Server at {}: webapps/ is missing; pass the install folder with --ams-home",
                self.home.display()
            );
        }
        Ok(())
    }

    /// Every application (folder under webapps/ with a
    /// WEB-INF/red5-web.properties), `root` included, sorted by name. Only a
    /// clean "not found" means "no application": a folder or file that
    /// cannot be examined (no permission, a symlink loop, a dangling
    /// symlink) is an error naming it, so a switch never skips an
    /// application it could not see.
    pub fn applications(&self, host: &Host) -> Result<Vec<String>> {
        let webapps = self.webapps();
        let listing = |e: std::io::Error| {
            anyhow::Error::new(e).context(format!("listing {}", webapps.display()))
        };
        let mut apps = Vec::new();
        for entry in std::fs::read_dir(host.path(&webapps)).map_err(listing)? {
            let entry = entry.map_err(listing)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let folder = webapps.join(&name);
            let is_dir = match entry.file_type().map_err(listing)? {
                t if t.is_symlink() => host
                    .probe(&folder)
                    .and_then(|m| {
                        m.map(|m| m.is_dir()).ok_or_else(|| {
                            anyhow::anyhow!("{} is a symlink that leads nowhere", folder.display())
                        })
                    })
                    .with_context(|| unexaminable(&name))?,
                t => t.is_dir(),
            };
            if is_dir
                && host
                    .file_present(&self.webapp_properties(&name))
                    .with_context(|| unexaminable(&name))?
            {
                apps.push(name);
            }
        }
        apps.sort();
        Ok(apps)
    }
}

fn unexaminable(app: &str) -> String {
    format!(
        "cannot tell whether webapps/{app} is an application (fix or remove it; nothing was changed)"
    )
}

/// The account AMS runs as (`User=antmedia` in its unit).
pub const SERVICE_USER: &str = "antmedia";

/// uid and primary gid of the AMS service account, from the host's
/// /etc/passwd (root-prefixed, so tests bring their own); None when absent.
pub fn service_account(host: &Host) -> Result<Option<(u32, u32)>> {
    let Some(bytes) = host.read_optional(Path::new("/etc/passwd"))? else {
        return Ok(None);
    };
    Ok(String::from_utf8_lossy(&bytes).lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == SERVICE_USER {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    }))
}

/// The host name AMS resolves: /etc/hostname, else the kernel's.
pub fn node_hostname(host: &Host) -> Result<String> {
    let from_file = host
        .read_optional(Path::new("/etc/hostname"))?
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty());
    let name = match from_file {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .map_err(anyhow::Error::from)?
            .to_string_lossy()
            .into_owned(),
    };
    Ok(name)
}
