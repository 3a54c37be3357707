//! Limits systemd honours for mongod, and transparent huge pages as the
//! installed MongoDB series recommends.
//!
//! systemd ignores `/etc/security/limits.conf` for services, so the limits
//! that count are a `mongod.service` drop-in; a `limits.d` file (never an
//! edit of limits.conf) covers mongod started by hand as the mongodb user.

use std::path::Path;

use crate::host::Host;

/// MongoDB's recommended minimum for open files and processes.
pub const LIMIT: u32 = 64000;

pub const LIMITS_DROP_IN: &str = "/etc/systemd/system/mongod.service.d/ams-agent-limits.conf";
pub const LIMITS_D: &str = "/etc/security/limits.d/99-ams-agent-mongodb.conf";
pub const THP_UNIT_NAME: &str = "ams-agent-mongod-thp.service";
pub const THP_UNIT: &str = "/etc/systemd/system/ams-agent-mongod-thp.service";
pub const THP_DIR: &str = "/sys/kernel/mm/transparent_hugepage";

pub fn limits_drop_in() -> String {
    format!(
        "# Written by ams-agent setup mongo: the limits MongoDB recommends.\n\
         # systemd ignores /etc/security/limits.conf for services; this is what counts.\n\
         [Service]\n\
         LimitNOFILE={LIMIT}\n\
         LimitNPROC={LIMIT}\n"
    )
}

pub fn limits_d() -> String {
    format!(
        "# Written by ams-agent setup mongo: for mongod started outside systemd\n\
         # (the service's own limits are in {LIMITS_DROP_IN}).\n\
         mongodb soft nofile {LIMIT}\n\
         mongodb hard nofile {LIMIT}\n\
         mongodb soft nproc {LIMIT}\n\
         mongodb hard nproc {LIMIT}\n"
    )
}

/// Transparent huge page settings: `(file under THP_DIR, value)`.
/// MongoDB 8.0 (its new TCMalloc) wants them on, with deferred defrag and
/// no empty-page padding; earlier series want them off.
pub fn thp_settings(series: &str) -> &'static [(&'static str, &'static str)] {
    if series_at_least(series, 8) {
        &[
            ("enabled", "always"),
            ("defrag", "defer+madvise"),
            ("khugepaged/max_ptes_none", "0"),
        ]
    } else {
        &[("enabled", "never"), ("defrag", "never")]
    }
}

fn series_at_least(series: &str, major: u32) -> bool {
    series
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|m| m >= major)
}

/// A oneshot unit that sets THP at every boot, before mongod starts (the
/// kernel forgets sysfs settings on reboot).
pub fn thp_unit(series: &str) -> String {
    let mut exec = String::new();
    for (file, value) in thp_settings(series) {
        exec.push_str(&format!(
            "ExecStart=/bin/sh -c 'echo {value} > {THP_DIR}/{file}'\n"
        ));
    }
    format!(
        "# Written by ams-agent setup mongo.\n\
         [Unit]\n\
         Description=Transparent huge pages as MongoDB {series} recommends\n\
         Documentation=https://www.mongodb.com/docs/manual/administration/production-notes/\n\
         DefaultDependencies=no\n\
         After=sysinit.target local-fs.target\n\
         Before=mongod.service\n\
         ConditionPathIsDirectory={THP_DIR}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         {exec}\
         \n\
         [Install]\n\
         WantedBy=basic.target\n"
    )
}

/// Whether the running kernel already has the recommended settings (a
/// missing THP folder, as in many containers, counts as nothing to do).
pub fn thp_in_effect(host: &Host, series: &str) -> bool {
    let dir = Path::new(THP_DIR);
    if !host.is_dir(dir) {
        return true;
    }
    thp_settings(series).iter().all(|(file, value)| {
        // A file this kernel does not have is nothing to set.
        thp_value(host, file).is_none_or(|now| now == *value)
    })
}

/// The current value of a THP setting (`enabled`, `defrag`,
/// `khugepaged/max_ptes_none`): the bracketed word of `always [madvise]
/// never`, else the file's text; None when the kernel has no such file.
pub fn thp_value(host: &Host, file: &str) -> Option<String> {
    let bytes = host.read_optional(&Path::new(THP_DIR).join(file)).ok()??;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    Some(match (text.find('['), text.find(']')) {
        (Some(a), Some(b)) if a < b => text[a + 1..b].to_string(),
        _ => text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thp_follows_the_series() {
        assert_eq!(thp_settings("8.0")[0], ("enabled", "always"));
        assert_eq!(thp_settings("7.0")[0], ("enabled", "never"));
        assert!(
            thp_unit("8.0")
                .contains("echo defer+madvise > /sys/kernel/mm/transparent_hugepage/defrag")
        );
    }

    #[test]
    fn reads_the_bracketed_value() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), Default::default());
        assert!(thp_in_effect(&host, "8.0"), "no sysfs: nothing to do");
        let thp = dir.path().join("sys/kernel/mm/transparent_hugepage");
        std::fs::create_dir_all(thp.join("khugepaged")).unwrap();
        std::fs::write(thp.join("enabled"), "always [madvise] never\n").unwrap();
        std::fs::write(
            thp.join("defrag"),
            "always defer [defer+madvise] madvise never\n",
        )
        .unwrap();
        std::fs::write(thp.join("khugepaged/max_ptes_none"), "511\n").unwrap();
        assert!(!thp_in_effect(&host, "8.0"));
        std::fs::write(thp.join("enabled"), "[always] madvise never\n").unwrap();
        std::fs::write(thp.join("khugepaged/max_ptes_none"), "0\n").unwrap();
        assert!(thp_in_effect(&host, "8.0"));
        assert!(!thp_in_effect(&host, "7.0"));
    }
}
