//! `ams-agent doctor`: read-only checks that say whether this host — an
//! AMS node, the MongoDB host, the load balancer — is healthy, and how to
//! fix what is not.
//!
//! - [`checks`]: the registry of every check (stable id, role, category,
//!   what it reads, its deadline) and the function that runs it;
//! - [`env`]: what the checks read, each read once per run and shared
//!   (AMS's files, agent.toml, `systemctl show`, the MongoDB sessions);
//! - [`node`], [`db`], [`lb`]: the checks of each role; [`group`]: AMS's
//!   node group against the registry and agent.toml; [`firewall`]: the
//!   netfilter rules (`iptables-save`, `nft -j list ruleset`) evaluated for
//!   a packet;
//! - [`detect`]: which roles this host plays;
//! - [`render`]: text (a spinner on a terminal, plain lines otherwise) and
//!   JSON (`"schema": 1`).
//!
//! Nothing here writes: no lock, no marker, no backup, no journal. Every
//! check runs on a thread of its own and is given up at its deadline, so a
//! hung peer costs at most that check's deadline.

pub mod checks;
pub mod db;
pub mod detect;
pub mod env;
pub mod firewall;
pub mod group;
pub mod lb;
pub mod node;
pub mod render;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use checks::{CHECKS, Check};
pub use env::{Env, Settings};

/// The JSON schema version of `doctor --json`.
pub const SCHEMA: u32 = 1;

/// What a host plays in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An AMS node (origin or edge).
    Node,
    /// The MongoDB host.
    Db,
    /// The load balancer (HAProxy or Nginx with an `ams-agent lb` section).
    Lb,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Db => "db",
            Role::Lb => "lb",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// The check does not apply here (the reason says why); never a failure.
    Skip,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// One line.
    pub result: String,
    /// For warn and fail: the exact fix (a command, or the flag to use).
    pub fix: Option<String>,
    /// Further lines (mongod's startup warnings, the files that differ),
    /// already escaped.
    pub details: Vec<String>,
}

impl Outcome {
    pub fn ok(result: impl Into<String>) -> Self {
        Self::new(Status::Ok, result.into(), None)
    }

    pub fn warn(result: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(Status::Warn, result.into(), Some(fix.into()))
    }

    pub fn fail(result: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(Status::Fail, result.into(), Some(fix.into()))
    }

    pub fn skip(reason: impl Into<String>) -> Self {
        Self::new(Status::Skip, reason.into(), None)
    }

    fn new(status: Status, result: String, fix: Option<String>) -> Self {
        Outcome {
            status,
            result: one_line(&result),
            fix: fix.map(|f| one_line(&f)),
            details: Vec::new(),
        }
    }

    /// Adds further lines (each made one safe line).
    pub fn with_details(mut self, lines: impl IntoIterator<Item = String>) -> Self {
        self.details.extend(lines.into_iter().map(|l| one_line(&l)));
        self
    }
}

/// Text made one printable line: control characters escaped (a result may
/// quote a file, a document or a program's output).
fn one_line(s: &str) -> String {
    crate::human::escape(s).into_owned()
}

/// One check's line of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub id: &'static str,
    pub role: Role,
    pub category: &'static str,
    pub status: Status,
    pub result: String,
    pub fix: Option<String>,
    pub details: Vec<String>,
    /// How long the check took (its deadline when it was given up).
    pub duration_ms: u64,
    pub deadline_ms: u64,
}

/// Counts per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

impl Summary {
    pub fn of(findings: &[Finding]) -> Self {
        let mut s = Summary::default();
        for f in findings {
            match f.status {
                Status::Ok => s.ok += 1,
                Status::Warn => s.warn += 1,
                Status::Fail => s.fail += 1,
                Status::Skip => s.skip += 1,
            }
        }
        s
    }

    /// 0 all ok, 1 any failure, 2 warnings only; `strict`: warnings fail.
    pub fn exit_code(&self, strict: bool) -> u8 {
        if self.fail > 0 || (strict && self.warn > 0) {
            1
        } else if self.warn > 0 {
            2
        } else {
            0
        }
    }
}

/// Runs `selected` (every check on a thread of its own) and calls
/// `on_done` with each finding as it completes (index into `selected`).
/// A check still running at its deadline is reported as failed, naming
/// what it was waiting for, and left behind: the run never waits longer.
/// Returns the findings in the order of `selected`.
pub fn run(
    env: Arc<Env>,
    selected: &[&'static Check],
    mut on_done: impl FnMut(usize, &Finding),
) -> Vec<Finding> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<(usize, Outcome, Duration)>();
    for (i, check) in selected.iter().enumerate() {
        let (tx, failed) = (tx.clone(), tx.clone());
        let env = env.clone();
        let check: &'static Check = check;
        let spawned = std::thread::Builder::new()
            .name(format!("doctor {}", check.id))
            .spawn(move || {
                let t0 = Instant::now();
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (check.run)(&env)))
                        .unwrap_or_else(|_| {
                            Outcome::fail(
                                format!("the check {} crashed (a bug in ams-agent)", check.id),
                                "report it with the output of `ams-agent doctor -v`",
                            )
                        });
                let _ = tx.send((i, outcome, t0.elapsed()));
            });
        if let Err(e) = spawned {
            let _ = failed.send((
                i,
                Outcome::fail(
                    format!("could not start the check: {e}"),
                    "free some memory or processes and run it again",
                ),
                Duration::ZERO,
            ));
        }
    }
    drop(tx);
    let mut found: Vec<Option<Finding>> = vec![None; selected.len()];
    let finding = |i: usize, o: Outcome, took: Duration| {
        let c = selected[i];
        Finding {
            id: c.id,
            role: c.role,
            category: c.category,
            status: o.status,
            result: o.result,
            fix: o.fix,
            details: o.details,
            duration_ms: took.as_millis() as u64,
            deadline_ms: c.deadline.as_millis() as u64,
        }
    };
    loop {
        let pending: Vec<usize> = (0..selected.len())
            .filter(|&i| found[i].is_none())
            .collect();
        let Some(next) = pending.iter().map(|&i| selected[i].deadline).min() else {
            break;
        };
        let wait = next.saturating_sub(start.elapsed());
        match rx.recv_timeout(wait) {
            Ok((i, outcome, took)) => {
                if found[i].is_none() {
                    let f = finding(i, outcome, took);
                    on_done(i, &f);
                    found[i] = Some(f);
                }
            }
            Err(e) => {
                // Disconnected: every thread is gone, nothing more comes.
                let gone = e == mpsc::RecvTimeoutError::Disconnected;
                for i in pending {
                    let c = selected[i];
                    if found[i].is_none() && (gone || start.elapsed() >= c.deadline) {
                        let o = Outcome::fail(
                            format!(
                                "did not finish within its deadline of {} (it reads {})",
                                crate::human::show_duration(c.deadline),
                                c.reads
                            ),
                            c.fix_hung,
                        );
                        let f = finding(i, o, c.deadline);
                        on_done(i, &f);
                        found[i] = Some(f);
                    }
                }
            }
        }
    }
    found
        .into_iter()
        .map(|f| f.expect("every check reported"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::runner::RecordingRunner;

    fn quick(_: &Env) -> Outcome {
        Outcome::ok("fine")
    }

    fn hangs(_: &Env) -> Outcome {
        std::thread::sleep(Duration::from_secs(30));
        Outcome::ok("never seen")
    }

    fn warns(_: &Env) -> Outcome {
        Outcome::warn("line\nbreak \u{1b}[2J", "do\nthis")
    }

    fn crashes(_: &Env) -> Outcome {
        panic!("a bug")
    }

    fn check(id: &'static str, deadline_ms: u64, run: fn(&Env) -> Outcome) -> Check {
        Check {
            id,
            role: Role::Node,
            category: "test",
            reads: "nothing",
            deadline: Duration::from_millis(deadline_ms),
            fix_hung: "wait less",
            run,
        }
    }

    fn env() -> Arc<Env> {
        let dir = tempfile::tempdir().unwrap();
        let settings = super::env::test_settings();
        Arc::new(Env::new(
            dir.path(),
            Arc::new(RecordingRunner::new()),
            settings,
        ))
    }

    #[test]
    fn a_hung_check_costs_its_deadline_and_says_what_it_reads() {
        let checks: &'static [Check] = Box::leak(Box::new([
            check("t.hangs", 700, hangs),
            check("t.quick", 5000, quick),
            check("t.warns", 5000, warns),
            check("t.crashes", 5000, crashes),
        ]));
        let selected: Vec<&'static Check> = checks.iter().collect();
        let start = Instant::now();
        let mut order = Vec::new();
        let found = run(env(), &selected, |i, _| order.push(i));
        let took = start.elapsed();
        assert!(took < Duration::from_millis(1500), "{took:?}");
        assert!(took >= Duration::from_millis(700), "{took:?}");
        // In registry order; the hung one reported last.
        let ids: Vec<&str> = found.iter().map(|f| f.id).collect();
        assert_eq!(ids, ["t.hangs", "t.quick", "t.warns", "t.crashes"]);
        assert_eq!(*order.last().unwrap(), 0);
        assert_eq!(found[0].status, Status::Fail);
        assert_eq!(
            found[0].result,
            "did not finish within its deadline of 700ms (it reads nothing)"
        );
        assert_eq!(found[0].fix.as_deref(), Some("wait less"));
        assert_eq!(found[0].duration_ms, 700);
        assert_eq!(found[1].status, Status::Ok);
        // One line each, controls escaped.
        assert_eq!(found[2].result, "line\\nbreak \\u{1b}[2J");
        assert_eq!(found[2].fix.as_deref(), Some("do\\nthis"));
        assert_eq!(found[3].status, Status::Fail);
        assert!(found[3].result.contains("crashed"), "{}", found[3].result);
        let s = Summary::of(&found);
        assert_eq!((s.ok, s.warn, s.fail, s.skip), (1, 1, 2, 0));
    }

    #[test]
    fn exit_codes() {
        let s = |ok, warn, fail, skip| Summary {
            ok,
            warn,
            fail,
            skip,
        };
        assert_eq!(s(3, 0, 0, 2).exit_code(false), 0);
        assert_eq!(s(3, 1, 0, 0).exit_code(false), 2);
        assert_eq!(s(3, 1, 0, 0).exit_code(true), 1);
        assert_eq!(s(3, 1, 1, 0).exit_code(false), 1);
        assert_eq!(s(0, 0, 0, 5).exit_code(true), 0);
    }
}
