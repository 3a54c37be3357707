//! The plan applied in-process through the command-runner seam: the exact
//! service commands, in order, recorded instead of run.

use std::path::Path;
use std::time::Duration;

use ams_agent::ams::AmsLayout;
use ams_agent::ams::db::{Credentials, classify};
use ams_agent::ams::mode::{self, Mode, ModeSwitch, Restart};
use ams_agent::host::Host;
use ams_agent::host::fs::CrashPoints;
use ams_agent::host::runner::{Output, RecordingRunner};
use ams_agent::plan::ApplyCtx;

mod fixture;

#[test]
fn restart_goes_through_the_runner_and_failures_name_the_step() {
    let t = fixture::Tree::new();
    let host = Host::new(t.root(), CrashPoints::default());
    let db = classify("10.0.1.5", &Credentials::default(), &host, "DB").unwrap();
    let switch = ModeSwitch {
        mode: Mode::Cluster,
        db,
        layout: AmsLayout::new("/usr/local/antmedia"),
        ip: Some("10.0.1.20".parse().unwrap()),
        restart: Some(Restart {
            unit: "antmedia".into(),
            url: fixture::fake_ams_http(),
            timeout: Duration::from_secs(5),
        }),
    };
    let plan = mode::plan(&host, &switch).unwrap();
    let runner = RecordingRunner::new();
    runner.reply(
        "systemctl restart",
        Output::failed(1, "Job for antmedia.service failed."),
    );
    let err = plan
        .apply(&ApplyCtx {
            host: &host,
            runner: &runner,
            progress: false,
        })
        .unwrap_err();
    assert_eq!(runner.lines(), ["systemctl restart antmedia"]);
    let msg = format!("{err:#}");
    assert!(msg.contains("step 2/4 (restart antmedia) failed"), "{msg}");
    assert!(msg.contains("Job for antmedia.service failed."), "{msg}");

    // The next plan still restarts (the marker), though no file changes.
    let plan = mode::plan(&host, &switch).unwrap();
    assert!(!plan.changes_files());
    let runner = RecordingRunner::new();
    plan.apply(&ApplyCtx {
        host: &host,
        runner: &runner,
        progress: false,
    })
    .unwrap();
    assert_eq!(runner.lines(), ["systemctl restart antmedia"]);
    assert!(!host.exists(Path::new("/var/lib/ams-agent/restart-pending")));
    assert!(mode::plan(&host, &switch).unwrap().is_empty());
}
