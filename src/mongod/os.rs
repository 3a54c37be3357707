//! Which MongoDB repository fits this host: the distribution from
//! `/etc/os-release`, and the releases MongoDB publishes packages for.

use std::path::Path;

use anyhow::Result;

use crate::bail_usage;
use crate::host::Host;

pub const OS_RELEASE: &str = "/etc/os-release";

/// MongoDB release series the agent knows the repositories of.
pub const MONGODB_VERSIONS: &[&str] = &["6.0", "7.0", "8.0"];
pub const DEFAULT_MONGODB_VERSION: &str = "8.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ubuntu,
    Debian,
}

/// A supported distribution release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Distro {
    pub family: Family,
    pub version: &'static str,
    pub codename: &'static str,
    /// MongoDB series with packages for this release (MongoDB's platform
    /// support matrix).
    pub mongodb: &'static [&'static str],
}

pub const SUPPORTED: &[Distro] = &[
    Distro {
        family: Family::Ubuntu,
        version: "20.04",
        codename: "focal",
        mongodb: &["6.0", "7.0", "8.0"],
    },
    Distro {
        family: Family::Ubuntu,
        version: "22.04",
        codename: "jammy",
        mongodb: &["6.0", "7.0", "8.0"],
    },
    Distro {
        family: Family::Ubuntu,
        version: "24.04",
        codename: "noble",
        mongodb: &["8.0"],
    },
    Distro {
        family: Family::Debian,
        version: "11",
        codename: "bullseye",
        mongodb: &["6.0", "7.0"],
    },
    Distro {
        family: Family::Debian,
        version: "12",
        codename: "bookworm",
        mongodb: &["7.0", "8.0"],
    },
];

impl Distro {
    pub fn name(&self) -> String {
        match self.family {
            Family::Ubuntu => format!("Ubuntu {} ({})", self.version, self.codename),
            Family::Debian => format!("Debian {} ({})", self.version, self.codename),
        }
    }
}

/// The value of `key` in os-release text (shell-style, optionally quoted).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k == key).then(|| v.trim().trim_matches(['"', '\'']))
    })
}

fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Recognises the distribution in os-release text.
pub fn detect(os_release: &str) -> std::result::Result<Distro, String> {
    let id = field(os_release, "ID").unwrap_or("").to_ascii_lowercase();
    // Ubuntu's derivatives (Mint, Pop!_OS) name the Ubuntu release they
    // are built on, whose packages they use.
    let like_ubuntu =
        field(os_release, "ID_LIKE").is_some_and(|l| l.split_whitespace().any(|w| w == "ubuntu"));
    if id != "ubuntu" && like_ubuntu {
        if let Some(codename) = field(os_release, "UBUNTU_CODENAME") {
            if let Some(d) = SUPPORTED
                .iter()
                .find(|d| d.family == Family::Ubuntu && d.codename == codename)
            {
                return Ok(*d);
            }
        }
    }
    let version = field(os_release, "VERSION_ID").unwrap_or("");
    let family = match id.as_str() {
        "ubuntu" => Family::Ubuntu,
        "debian" => Family::Debian,
        _ => {
            let pretty = field(os_release, "PRETTY_NAME").unwrap_or(&id);
            return Err(format!(
                "{} is not supported by MongoDB's apt repositories through ams-agent; supported: {}",
                if pretty.is_empty() {
                    "this distribution"
                } else {
                    pretty
                },
                supported_list()
            ));
        }
    };
    if version.is_empty() {
        return Err(format!(
            "{OS_RELEASE} names {id} but no VERSION_ID, so the release is unknown; supported: {}",
            supported_list()
        ));
    }
    SUPPORTED
        .iter()
        .find(|d| d.family == family && d.version == version)
        .copied()
        .ok_or_else(|| {
            format!(
                "{id} {version} is not supported; supported: {}",
                supported_list()
            )
        })
}

/// Reads `/etc/os-release` and checks that MongoDB `series` has packages
/// for it. Both failures are bad input (exit 2): nothing can be installed.
pub fn host_distro(host: &Host, series: &str) -> Result<Distro> {
    let text = match host.read_optional(Path::new(OS_RELEASE))? {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => bail_usage!(
            "{OS_RELEASE} is missing, so the distribution is unknown; supported: {}",
            supported_list()
        ),
    };
    let distro = match detect(&text) {
        Ok(d) => d,
        Err(msg) => bail_usage!("{msg}"),
    };
    if !distro.mongodb.contains(&series) {
        bail_usage!(
            "MongoDB {series} has no packages for {}; pass --mongodb-version {}",
            distro.name(),
            distro.mongodb.join(" or ")
        );
    }
    Ok(distro)
}

/// Validates `--mongodb-version`.
pub fn parse_series(s: &str) -> std::result::Result<String, String> {
    let s = s.trim();
    // "8" and "8.0.4" name the 8.0 series.
    let mut parts = s.split('.');
    let major = parts.next().unwrap_or("");
    let minor = parts.next().unwrap_or("0");
    let series = format!("{major}.{minor}");
    if MONGODB_VERSIONS.contains(&series.as_str()) {
        Ok(series)
    } else {
        Err(format!(
            "MongoDB {s} is not one ams-agent installs; choose {}",
            MONGODB_VERSIONS.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_supported_releases() {
        let jammy = "NAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\nID_LIKE=debian\n";
        assert_eq!(detect(jammy).unwrap().codename, "jammy");
        let bookworm =
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n";
        assert_eq!(detect(bookworm).unwrap().codename, "bookworm");
    }

    #[test]
    fn refuses_others_and_lists_what_works() {
        let alma = "NAME=\"AlmaLinux\"\nID=\"almalinux\"\nVERSION_ID=\"9.4\"\nPRETTY_NAME=\"AlmaLinux 9.4\"\n";
        let err = detect(alma).unwrap_err();
        assert!(err.starts_with("AlmaLinux 9.4 is not supported"), "{err}");
        assert!(err.contains("Ubuntu 24.04 (noble)"), "{err}");
        let old = "ID=ubuntu\nVERSION_ID=\"18.04\"\n";
        assert!(
            detect(old)
                .unwrap_err()
                .starts_with("ubuntu 18.04 is not supported")
        );
    }

    #[test]
    fn derivatives_and_odd_files() {
        let mint = "NAME=\"Linux Mint\"\nID=linuxmint\nID_LIKE=\"ubuntu debian\"\nVERSION_ID=\"21.3\"\nUBUNTU_CODENAME=jammy\n";
        assert_eq!(detect(mint).unwrap().codename, "jammy");
        assert_eq!(
            detect("ID=Ubuntu\nVERSION_ID=24.04\n").unwrap().codename,
            "noble"
        );
        let err = detect("ID=debian\n").unwrap_err();
        assert!(err.contains("no VERSION_ID"), "{err}");
    }

    #[test]
    fn series_forms() {
        assert_eq!(parse_series("8.0").unwrap(), "8.0");
        assert_eq!(parse_series("8").unwrap(), "8.0");
        assert_eq!(parse_series("7.0.12").unwrap(), "7.0");
        assert!(parse_series("5.0").is_err());
        assert!(parse_series("8.0; rm -rf /").is_err());
    }
}
