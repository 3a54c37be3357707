//! kill -9 at every durability point of a mode switch: afterwards every file
//! is entirely old or entirely new, and after the next run (any run), all of
//! them are new — never a node with half its files in cluster mode.

mod fixture;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

use fixture::{Tree, fake_ams_http, stderr};

const SWITCH_WITHOUT_RESTART: &[&str] = &[
    "mode",
    "cluster",
    "10.0.1.5",
    "--ip",
    "10.0.1.20",
    "--no-restart",
    "--skip-db-check",
];

type Snapshot = BTreeMap<String, (Vec<u8>, u32)>;

fn without_temp_files(s: &Snapshot) -> Snapshot {
    s.iter()
        .filter(|(k, _)| !k.ends_with(".ams-agent-tmp"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn journal_exists(t: &Tree) -> bool {
    t.path("var/lib/ams-agent/journal.json").exists()
}

fn run_with_crash(
    t: &Tree,
    args: &[&str],
    url: &str,
    crash_at: Option<u64>,
) -> std::process::Output {
    let mut cmd = t.command(args);
    cmd.env("AMS_AGENT_AMS_URL", url);
    if let Some(k) = crash_at {
        cmd.env("AMS_AGENT_CRASH_AT", k.to_string());
    }
    cmd.output().unwrap()
}

fn crash_everywhere(args: &[&str], expect_restart: bool) {
    crash_everywhere_in(Tree::new, 1, args, expect_restart);
}

/// Kills the switch at crash points 1, 1 + stride, 1 + 2 stride, ... until
/// one is past the last.
fn crash_everywhere_in(tree: fn() -> Tree, stride: usize, args: &[&str], expect_restart: bool) {
    let url = fake_ams_http();
    let old = tree().snapshot();
    let new = {
        let t = tree();
        let out = run_with_crash(&t, args, &url, None);
        assert!(out.status.success(), "{}", stderr(&out));
        t.snapshot()
    };
    let changed: Vec<&String> = new.keys().filter(|k| old.get(*k) != new.get(*k)).collect();
    assert!(
        changed.len() >= 6,
        "the switch should change 6 files: {changed:?}"
    );

    let mut crashes = 0;
    for k in (1..).step_by(stride) {
        let t = tree();
        let out = run_with_crash(&t, args, &url, Some(k));
        if out.status.success() {
            break; // k is past the last durability point
        }
        assert_eq!(
            out.status.signal(),
            Some(9),
            "crash point {k}: {}",
            stderr(&out)
        );
        crashes += 1;

        let now = without_temp_files(&t.snapshot());
        for (rel, content) in &now {
            assert!(
                old.get(rel) == Some(content) || new.get(rel) == Some(content),
                "crash point {k}: {rel} is neither old nor new"
            );
        }
        if !journal_exists(&t) {
            // Before the commit point or after the roll-forward: the set of
            // files is consistent even before any recovery.
            assert!(
                now == old || now == new,
                "crash point {k}: a mix of old and new files without a journal"
            );
        }

        // The next run may itself be killed (inside the recovery), and the
        // one after must still land everything.
        let out = run_with_crash(&t, args, &url, Some(1));
        assert!(
            out.status.success() || out.status.signal() == Some(9),
            "{}",
            stderr(&out)
        );
        let calls_before = t.systemctl_calls().len();
        let out = run_with_crash(&t, args, &url, None);
        assert!(
            out.status.success(),
            "crash point {k}, recovery: {}",
            stderr(&out)
        );
        assert_eq!(
            t.snapshot(),
            new,
            "crash point {k}: not all files are new after recovery"
        );
        assert!(!journal_exists(&t));
        assert!(
            !t.path("var/lib/ams-agent/restart-pending").exists(),
            "crash point {k}"
        );
        if expect_restart {
            // AMS is restarted on the new files, whatever happened before.
            let calls = t.systemctl_calls();
            assert!(
                calls.len() > calls_before
                    || calls.last().map(String::as_str) == Some("restart antmedia"),
                "crash point {k}: AMS never restarted: {calls:?}"
            );
        }
    }
    assert!(
        crashes * stride >= 20,
        "only {crashes} crash points were exercised"
    );
}

#[test]
fn kill_at_every_point_of_a_switch_without_restart() {
    crash_everywhere(SWITCH_WITHOUT_RESTART, false);
}

#[test]
fn kill_at_every_point_of_a_switch_with_restart() {
    crash_everywhere(
        &[
            "mode",
            "cluster",
            "mongo.internal",
            "--ip",
            "10.0.1.20",
            "--skip-db-check",
        ],
        true,
    );
}

#[test]
fn kill_at_every_point_of_a_switch_done_on_several_threads() {
    // 40 applications: temp files are written and renamed by several
    // threads, so crash points fall in a different order on every run.
    // Every 5th point: each one costs four runs on a fresh 40-app tree.
    crash_everywhere_in(|| Tree::with_apps(40), 5, SWITCH_WITHOUT_RESTART, false);
}

/// A switch killed after its commit point, then a hand edit of a file the
/// switch had not replaced yet: the next run refuses to roll the change
/// forward over the edit (exit 1, the file, the backup and the way out
/// named) and writes nothing; once the journal is removed, runs work again.
#[test]
fn an_edit_made_after_the_crash_is_never_overwritten_by_the_roll_forward() {
    let url = fake_ams_http();
    let red5 = "usr/local/antmedia/conf/red5.properties";
    let red5_tmp = "usr/local/antmedia/conf/.red5.properties.ams-agent-tmp";
    let t = (1..200)
        .find_map(|k| {
            let t = Tree::new();
            let out = run_with_crash(&t, SWITCH_WITHOUT_RESTART, &url, Some(k));
            assert!(!out.status.success(), "no crash point after the commit");
            (journal_exists(&t) && t.path(red5_tmp).exists()).then_some(t)
        })
        .expect("a crash point after the commit, before red5.properties is replaced");
    let edited = format!("{}# edited by hand after the crash\n", t.read(red5));
    std::fs::write(t.path(red5), &edited).unwrap();
    let before = t.snapshot();
    let journal = std::fs::read(t.path("var/lib/ams-agent/journal.json")).unwrap();

    let out = run_with_crash(&t, SWITCH_WITHOUT_RESTART, &url, None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = fixture::error_line(&out);
    assert!(
        err.contains("/usr/local/antmedia/conf/red5.properties"),
        "{err}"
    );
    assert!(err.contains("changed since"), "{err}");
    assert!(
        err.contains("var/lib/ams-agent/backup/usr/local/antmedia/conf/red5.properties"),
        "the backup is named: {err}"
    );
    assert!(
        err.contains("remove") && err.contains("var/lib/ams-agent/journal.json"),
        "the way out is named: {err}"
    );
    assert_eq!(t.read(red5), edited, "the edit was overwritten");
    assert_eq!(t.snapshot(), before, "a file was written");
    assert_eq!(
        std::fs::read(t.path("var/lib/ams-agent/journal.json")).unwrap(),
        journal,
        "the journal was touched"
    );

    // The operator abandons the interrupted change: the switch runs again
    // from the files as they are, keeping the edit.
    std::fs::remove_file(t.path("var/lib/ams-agent/journal.json")).unwrap();
    let out = run_with_crash(&t, SWITCH_WITHOUT_RESTART, &url, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.read(red5).contains("# edited by hand after the crash"));
    assert!(t.read(red5).contains("clusterdb.host=mongodb://10.0.1.5"));
}
