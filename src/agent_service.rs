//! The reporter's systemd service (`ams-agent.service`) as `join` and `mode`
//! leave it: the drop-in that lets it read the AMS install, and what the
//! running reporter is owed when its files change.
//!
//! * The unit runs as root with an empty capability set (no
//!   `CAP_DAC_OVERRIDE`), so the AMS files a password switch leaves `0640`
//!   `antmedia` are closed to it. `join` writes [`GROUP_DROP_IN`] with
//!   `SupplementaryGroups=` of the group owning the AMS install (and the AMS
//!   account's group): not in the shipped unit, which would fail with
//!   216/GROUP on a host without that group.
//! * systemd reads a unit's files at `daemon-reload`, and `LoadCredential=`
//!   copies the password only at start: a changed `agent.toml`, password
//!   file or drop-in reaches a running reporter only through a
//!   `daemon-reload` (for the drop-in) and a restart. Both are steps of the
//!   plan that changes the files, and a marker committed with the files
//!   ([`restart_marker`]) keeps them owed until they happened, across a
//!   failure or a crash in between.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::ams::AmsLayout;
use crate::ams::layout;
use crate::host::fs::{STATE_DIR, private_meta};
use crate::host::systemd::ServiceAction;
use crate::host::{CommandSpec, Host};
use crate::plan::{FileChange, Step};

/// The reporter's unit.
pub const UNIT: &str = "ams-agent.service";

/// The drop-in `join` writes (or removes when no group is needed). Its name
/// sorts before `override.conf` (`systemctl edit`), so an operator's
/// override still wins.
pub const GROUP_DROP_IN: &str = "/etc/systemd/system/ams-agent.service.d/10-ams-group.conf";

/// Set while a changed configuration, credential or drop-in waits for the
/// reporter's restart (and, with `daemon-reload` in it, systemd's reload).
pub fn restart_marker() -> PathBuf {
    Path::new(STATE_DIR).join("reporter-restart-pending")
}

/// A group name systemd takes as it is (anything else is written as its
/// number).
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('-')
}

/// The name of a group in the host's /etc/group; its number when it has
/// none (or one systemd could misread).
fn group_name(host: &Host, gid: u32) -> Result<String> {
    let table = host
        .read_optional(Path::new("/etc/group"))?
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&table);
    let name = text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(gid)).then(|| f[0].to_string())
    });
    Ok(name
        .filter(|n| plain_name(n))
        .unwrap_or_else(|| gid.to_string()))
}

/// The groups through which the reporter reads the AMS install: the group
/// owning the install folder, and the AMS account's own group (the one a
/// password switch gives the files it makes `0640`). Root's group is left
/// out: the reporter has it already.
pub fn ams_groups(host: &Host, layout: &AmsLayout) -> Result<Vec<String>> {
    let mut gids = Vec::new();
    if let Some(meta) = host.meta(&layout.home)? {
        gids.push(meta.gid);
    }
    if let Some((_, gid)) = layout::service_account(host)? {
        gids.push(gid);
    }
    let mut names = Vec::new();
    for gid in gids.into_iter().filter(|g| *g != 0) {
        let name = group_name(host, gid)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// The drop-in's content for these groups; None when there is none.
pub fn group_drop_in(groups: &[String]) -> Option<String> {
    if groups.is_empty() {
        return None;
    }
    Some(format!(
        "# Written by `ams-agent join` (rewritten or removed by the next one).\n\
         # The reporter runs as root without capabilities (no CAP_DAC_OVERRIDE):\n\
         # it reads the AMS files that hold the MongoDB password (mode 0640)\n\
         # through the group of the AMS install.\n\
         [Service]\n\
         SupplementaryGroups={}\n",
        groups.join(" ")
    ))
}

/// The drop-in as the AMS install at `layout` needs it: written, or
/// removed when no group is needed.
pub fn drop_in_change(host: &Host, layout: &AmsLayout) -> Result<FileChange> {
    let path = Path::new(GROUP_DROP_IN);
    let content = group_drop_in(&ams_groups(host, layout)?);
    Ok(match content {
        Some(text) => FileChange::write(host, path, text.into_bytes(), 0o644)?,
        None => FileChange {
            path: path.to_path_buf(),
            before: host.read_optional(path)?,
            after: None,
            meta_before: host.meta(path)?,
            meta: private_meta(0o644),
            internal: false,
        },
    })
}

/// What a running reporter is owed once its files changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owed {
    /// A restart: it may run with the old configuration or credential.
    pub restart: bool,
    /// `systemctl daemon-reload` first: a unit file (the drop-in) changed.
    pub daemon_reload: bool,
}

/// What the reporter is owed when `config` (agent.toml, the password file)
/// and `unit` (the drop-in) change this way, with what an earlier run still
/// owes (the marker); and the marker change to commit with the files. A
/// reporter can only run with old settings when some of its files existed
/// before: on a first join it is simply started.
pub fn owed(
    host: &Host,
    config: &[&FileChange],
    unit: &[&FileChange],
) -> (Owed, Option<FileChange>) {
    let marker = restart_marker();
    let pending = host.read_optional(&marker).ok().flatten();
    let was = pending.as_ref().map(|text| Owed {
        restart: true,
        daemon_reload: String::from_utf8_lossy(text).contains("daemon-reload"),
    });
    let changed = |c: &[&FileChange]| c.iter().any(|c| !c.is_noop());
    let existed = config.iter().chain(unit).any(|c| c.before.is_some());
    let now = Owed {
        restart: existed && (changed(config) || changed(unit)),
        daemon_reload: changed(unit),
    };
    let owed = Owed {
        restart: now.restart || was.is_some_and(|w| w.restart),
        daemon_reload: now.daemon_reload || was.is_some_and(|w| w.daemon_reload),
    };
    if !owed.restart {
        return (owed, None);
    }
    let text = if owed.daemon_reload {
        "the reporter's files changed: systemctl daemon-reload and a restart are owed\n"
    } else {
        "the reporter's files changed: a restart is owed\n"
    };
    let change = FileChange {
        meta_before: host.meta(&marker).ok().flatten(),
        path: marker,
        before: pending,
        after: Some(text.as_bytes().to_vec()),
        meta: private_meta(0o600),
        internal: true,
    };
    (owed, Some(change))
}

/// How the reporter is to be left running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Enabled and running afterwards (`join`).
    Always,
    /// Restarted only if it runs (`mode`: a stopped reporter stays stopped).
    IfRunning,
}

/// The service steps after the files: `daemon-reload` when a unit file
/// changed; then, when a restart is owed, `enable` + `restart` (join) or
/// `try-restart` (mode), and the marker removed; else `enable --now` (join)
/// or nothing (mode).
pub fn steps(owed: Owed, start: Start) -> Vec<Step> {
    let mut steps = Vec::new();
    if owed.daemon_reload {
        steps.push(Step::Command {
            what: "reloading systemd units (the reporter's drop-in changed)".into(),
            spec: CommandSpec::new("systemctl", &["daemon-reload"])
                .timeout(Duration::from_secs(60)),
        });
    }
    let service = |action| Step::Service {
        unit: UNIT.into(),
        action,
    };
    match (owed.restart, start) {
        (true, Start::Always) => {
            steps.push(service(ServiceAction::Enable));
            steps.push(service(ServiceAction::Restart));
        }
        (true, Start::IfRunning) => steps.push(service(ServiceAction::TryRestart)),
        (false, Start::Always) => steps.push(service(ServiceAction::EnableNow)),
        (false, Start::IfRunning) => {}
    }
    if owed.restart {
        steps.push(Step::Files {
            label: "record that the reporter runs the new configuration".into(),
            changes: vec![FileChange::remove_marker(restart_marker())],
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fs::CrashPoints;

    #[test]
    fn the_drop_in_names_the_install_group_and_only_plain_names() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), CrashPoints::default());
        host.create_dir_all(Path::new("/etc"), 0o755).unwrap();
        host.create_dir_all(Path::new("/opt/ams"), 0o755).unwrap();
        let layout = AmsLayout::new("/opt/ams");
        std::fs::write(
            host.path(Path::new("/etc/group")),
            "root:x:0:\nantmedia:x:1001:\nweird name:x:1002:\n",
        )
        .unwrap();
        // Owned by root, no account: no group, no drop-in.
        assert!(ams_groups(&host, &layout).unwrap().is_empty());
        assert_eq!(group_drop_in(&[]), None);
        std::fs::write(
            host.path(Path::new("/etc/passwd")),
            "antmedia:x:1001:1001::/opt/ams:/usr/sbin/nologin\n",
        )
        .unwrap();
        assert_eq!(ams_groups(&host, &layout).unwrap(), ["antmedia"]);
        nix::unistd::chown(
            &host.path(Path::new("/opt/ams")),
            None,
            Some(nix::unistd::Gid::from_raw(1002)),
        )
        .ok();
        if host.meta(Path::new("/opt/ams")).unwrap().unwrap().gid == 1002 {
            assert_eq!(ams_groups(&host, &layout).unwrap(), ["1002", "antmedia"]);
        }
        let text = group_drop_in(&["antmedia".into()]).unwrap();
        assert!(
            text.contains("\n[Service]\nSupplementaryGroups=antmedia\n"),
            "{text}"
        );
    }

    #[test]
    fn a_first_join_starts_and_a_changed_file_owes_a_restart_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), CrashPoints::default());
        let new = FileChange {
            path: "/etc/ams-agent/agent.toml".into(),
            before: None,
            after: Some(b"x".to_vec()),
            meta_before: None,
            meta: private_meta(0o644),
            internal: false,
        };
        let (o, marker) = owed(&host, &[&new], &[]);
        assert_eq!(o, Owed::default());
        assert!(marker.is_none());
        let changed = FileChange {
            before: Some(b"old".to_vec()),
            meta_before: Some(private_meta(0o644)),
            ..new.clone()
        };
        let (o, marker) = owed(&host, &[&changed], &[]);
        assert!(o.restart && !o.daemon_reload);
        let marker = marker.unwrap();
        // The marker committed, the restart not done: still owed.
        host.create_dir_all(Path::new(STATE_DIR), 0o700).unwrap();
        std::fs::write(host.path(&marker.path), marker.after.unwrap()).unwrap();
        let same = FileChange {
            before: Some(b"x".to_vec()),
            ..changed.clone()
        };
        let (o, _) = owed(&host, &[&same], &[]);
        assert!(o.restart);
        let names: Vec<String> = steps(o, Start::Always)
            .iter()
            .map(|s| format!("{s:?}"))
            .collect();
        assert!(
            names[0].contains("Enable") && names[1].contains("Restart"),
            "{names:?}"
        );
        assert_eq!(steps(Owed::default(), Start::IfRunning).len(), 0);
    }
}
