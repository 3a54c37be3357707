//! The report: one line per check (its fix and further lines indented
//! under it), a one-line summary; or one JSON document (`"schema": 1`,
//! every field in docs/doctor.md).

use serde::Serialize;

use super::{Finding, Role, SCHEMA, Status, Summary};

/// The tag of a status in the text report.
pub fn tag(s: Status) -> &'static str {
    match s {
        Status::Ok => "[ok]  ",
        Status::Warn => "[warn]",
        Status::Fail => "[FAIL]",
        Status::Skip => "[skip]",
    }
}

/// The width the id column takes.
pub fn id_width(findings: &[&'static super::Check]) -> usize {
    findings.iter().map(|c| c.id.len()).max().unwrap_or(0)
}

/// A finding as text lines (each ends with a newline).
pub fn lines(f: &Finding, width: usize) -> String {
    let mut out = format!("{} {:<width$}  {}\n", tag(f.status), f.id, f.result);
    let indent = " ".repeat(7 + width + 2);
    if let Some(fix) = &f.fix {
        out.push_str(&format!("{indent}fix: {fix}\n"));
    }
    for d in &f.details {
        out.push_str(&format!("{indent}| {d}\n"));
    }
    out
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The last line: counts, and what the exit code says.
pub fn summary(s: &Summary, strict: bool) -> String {
    let code = s.exit_code(strict);
    let meaning = match code {
        0 => "healthy",
        2 => "warnings only",
        _ if s.fail == 0 => "warnings fail with --strict",
        _ => "failures",
    };
    format!(
        "{}, {}, {}, {} (exit {code}: {meaning})\n",
        plural(s.ok, "ok", "ok"),
        plural(s.warn, "warning", "warnings"),
        plural(s.fail, "failure", "failures"),
        plural(s.skip, "skipped", "skipped"),
    )
}

/// The first line of a role's part.
pub fn header(role: Role, why: &str) -> String {
    format!("== {}: {why}\n", role.name())
}

/// A role of the run and why it is there.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleEntry {
    pub role: Role,
    /// `detected` (from what is installed) or `flag` (`--role`).
    pub source: &'static str,
    /// What gave it away (detected), or None.
    pub evidence: Option<String>,
}

/// `doctor --json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report<'a> {
    pub schema: u32,
    pub agent_version: &'static str,
    pub hostname: Option<String>,
    pub roles: &'a [RoleEntry],
    /// RFC 3339, UTC, whole seconds.
    pub started_at: String,
    pub duration_ms: u64,
    pub strict: bool,
    pub checks: &'a [Finding],
    pub summary: Summary,
    pub exit_code: u8,
}

impl<'a> Report<'a> {
    pub fn new(
        roles: &'a [RoleEntry],
        checks: &'a [Finding],
        strict: bool,
        started: std::time::SystemTime,
        duration: std::time::Duration,
        hostname: Option<String>,
    ) -> Self {
        let summary = Summary::of(checks);
        Report {
            schema: SCHEMA,
            agent_version: env!("CARGO_PKG_VERSION"),
            hostname,
            roles,
            started_at: humantime::format_rfc3339_seconds(started).to_string(),
            duration_ms: duration.as_millis() as u64,
            strict,
            checks,
            summary,
            exit_code: summary.exit_code(strict),
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("the report serialises");
        s.push('\n');
        s
    }
}
