//! The drop-ins that turn `ams-agent.service` into the load balancer's
//! follower (`packaging/examples/ams-agent-lb-*.conf`) pass `systemd-analyze
//! verify` on top of the shipped unit, with no output, and their command
//! lines are ones the binary accepts.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ams-agent");

#[test]
fn the_lb_drop_ins_verify_and_run_real_commands() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(repo.join("units/ams-agent.service")).unwrap();
    for kind in ["haproxy", "nginx"] {
        let tmp = tempfile::tempdir().unwrap();
        let man = tmp.path().join("man/man1");
        assert!(
            Command::new(BIN)
                .args(["generate", "man"])
                .arg(&man)
                .status()
                .unwrap()
                .success()
        );
        let units = tmp.path().join("units");
        std::fs::create_dir_all(units.join("ams-agent.service.d")).unwrap();
        std::fs::write(
            units.join("ams-agent.service"),
            unit.replace("/usr/bin/ams-agent", BIN),
        )
        .unwrap();
        let dropin = std::fs::read_to_string(
            repo.join(format!("packaging/examples/ams-agent-lb-{kind}.conf")),
        )
        .unwrap();
        std::fs::write(
            units.join("ams-agent.service.d/lb.conf"),
            dropin.replace("/usr/bin/ams-agent", BIN),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(units.join("ams-agent.service"))
            .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))
            .env("MANPATH", tmp.path().join("man"))
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .expect("systemd-analyze (install the Debian package `systemd`)");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "{kind}: {report}"
        );
        let exec = dropin
            .lines()
            .find(|l| l.starts_with("ExecStart=/usr/bin/ams-agent"))
            .unwrap();
        let args: Vec<String> = exec["ExecStart=/usr/bin/ams-agent".len()..]
            .split_whitespace()
            .map(|a| a.replace("%d", "/run/credentials/ams-agent.service"))
            .collect();
        assert_eq!(&args[..3], ["run", "--lb", kind]);
        let help = Command::new(BIN)
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            help.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&help.stderr)
        );
    }
}
