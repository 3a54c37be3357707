//! Every systemd unit in `units/` passes `systemd-analyze verify` with no
//! output at all, and every `ams-agent` command line in it is one the binary
//! accepts.
//!
//! `systemd-analyze verify` checks that the `ExecStart=` binary exists and
//! runs `man` for each `Documentation=man:` page. Before the package is
//! installed neither is in place, so the test verifies a copy of each unit
//! whose `/usr/bin/ams-agent` is the binary cargo just built, with `MANPATH`
//! pointing at man pages that binary generated (`generate man`): the unit's
//! text is otherwise unchanged. `packaging/ci-deb.sh` verifies the installed
//! units themselves, against the installed binary and man pages.
//!
//! Needs `systemd-analyze` (Debian package `systemd`) and `man` (`man-db`).

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ams-agent");
const INSTALLED_BIN: &str = "/usr/bin/ams-agent";

fn unit_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("units");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("listing units/").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no unit files in {}", dir.display());
    files
}

/// The `Exec*=` lines of a unit that run ams-agent, as argument lists
/// (without the binary).
fn ams_agent_command_lines(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Exec"))
        .filter_map(|l| l.split_once('='))
        .map(|(_, cmd)| cmd.trim_start_matches(['-', '@', ':', '+', '!']))
        .filter(|cmd| cmd.starts_with(INSTALLED_BIN))
        .map(|cmd| cmd.split_whitespace().skip(1).map(String::from).collect())
        .collect()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let man = tmp.path().join("man");
    let status = Command::new(BIN)
        .args(["generate", "man"])
        .arg(man.join("man1"))
        .status()
        .expect("running ams-agent generate man");
    assert!(status.success(), "ams-agent generate man failed");

    let units = tmp.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let mut copies = Vec::new();
    for unit in unit_files() {
        let text = std::fs::read_to_string(&unit).unwrap();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("Exec"))
        {
            assert!(
                !line.contains("ams-agent") || line.contains(INSTALLED_BIN),
                "{}: `{line}` must run {INSTALLED_BIN}",
                unit.display()
            );
        }
        let copy = units.join(unit.file_name().unwrap());
        std::fs::write(&copy, text.replace(INSTALLED_BIN, BIN)).unwrap();
        copies.push(copy);
    }

    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .args(&copies)
        .env("MANPATH", &man)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("systemd-analyze: {e} (install the Debian package `systemd`)"),
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "systemd-analyze verify {} ({}):\n{report}",
        copies
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        out.status
    );
}

#[test]
fn unit_command_lines_are_real_commands() {
    for unit in unit_files() {
        let text = std::fs::read_to_string(&unit).unwrap();
        for args in ams_agent_command_lines(&text) {
            // clap parses the whole line, then --help stops before running.
            let out = Command::new(BIN)
                .args(&args)
                .arg("--help")
                .output()
                .expect("running ams-agent");
            assert!(
                out.status.success(),
                "{}: `ams-agent {}` is not a valid command line:\n{}",
                unit.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn reporter_unit_keeps_its_contract() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("units/ams-agent.service"),
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for wanted in [
        "ExecStart=/usr/bin/ams-agent run",
        "Restart=on-failure",
        "After=network-online.target",
        "Wants=network-online.target",
        "LoadCredential=mongo-password:/etc/ams-agent/mongo-password",
        "StateDirectory=ams-agent",
        "ReadWritePaths=/var/lib/ams-agent",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
    ] {
        assert!(
            lines.contains(&wanted),
            "units/ams-agent.service lacks the line `{wanted}`"
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("User=") || l.starts_with("DynamicUser=")),
        "the reporter runs as root (with no capabilities): no User=/DynamicUser="
    );
}
