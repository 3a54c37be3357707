//! Plan → apply. Every mutating command first computes a [`Plan`] from the
//! current state of the host; an empty plan means "already done". `--dry-run`
//! prints it, [`Plan::apply`] executes it step by step.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::host::fs::FileMeta;
use crate::host::systemd::{self, ServiceAction};
use crate::host::txn::{self, FileWrite};
use crate::host::{CommandRunner, CommandSpec, Host, http};

/// A step that is neither a file nor a service: talking to a server,
/// waiting for one. Domain modules implement it; the plan only shows and
/// runs it.
pub trait Action: std::fmt::Debug + Send + Sync {
    /// One line for the plan and the logs (never a secret).
    fn summary(&self) -> String;
    fn apply(&self, ctx: &ApplyCtx) -> Result<()>;
}

/// One file of a change: its content before and after (None = absent).
#[derive(Debug, Clone)]
pub struct FileChange {
    pub path: PathBuf,
    pub before: Option<Vec<u8>>,
    pub after: Option<Vec<u8>>,
    pub meta_before: Option<FileMeta>,
    pub meta: FileMeta,
    /// The agent's own bookkeeping (markers): applied, but not shown as a diff.
    pub internal: bool,
}

impl FileChange {
    /// `path` written with `after`, owned by us (root) with `mode`.
    pub fn write(host: &Host, path: &std::path::Path, after: Vec<u8>, mode: u32) -> Result<Self> {
        Ok(FileChange {
            path: path.to_path_buf(),
            before: host.read_optional(path)?,
            after: Some(after),
            meta_before: host.meta(path)?,
            meta: crate::host::fs::private_meta(mode),
            internal: false,
        })
    }

    /// The removal of one of the agent's own files (a marker, a stray temp
    /// file) that may or may not exist by the time the step runs.
    pub fn remove_marker(path: PathBuf) -> Self {
        FileChange {
            path,
            before: Some(Vec::new()),
            after: None,
            meta_before: None,
            meta: crate::host::fs::private_meta(0o600),
            internal: true,
        }
    }

    pub fn is_noop(&self) -> bool {
        self.before == self.after && (self.after.is_none() || self.meta_before == Some(self.meta))
    }
}

#[derive(Debug, Clone)]
pub enum Step {
    /// Files written as one transaction: all land, or (after a crash and the
    /// next run) all land; never a mix.
    Files {
        label: String,
        changes: Vec<FileChange>,
    },
    Service {
        unit: String,
        action: ServiceAction,
    },
    WaitHttp {
        what: String,
        url: String,
        timeout: Duration,
    },
    /// An external program; a non-zero exit fails the step.
    Command {
        what: String,
        spec: CommandSpec,
    },
    Action(Arc<dyn Action>),
}

impl Step {
    fn summary(&self) -> String {
        match self {
            Step::Files { label, changes } => {
                let n = changes.iter().filter(|c| !c.internal).count();
                match n {
                    0 => label.clone(),
                    1 => format!("{label} (1 file)"),
                    n => format!("{label} ({n} files)"),
                }
            }
            Step::Service { unit, action } => format!("{} {unit}", action.verb()),
            Step::WaitHttp { what, url, timeout } => format!(
                "wait up to {} for {what} to answer on {url}",
                humantime::format_duration(*timeout)
            ),
            Step::Command { what, spec } => format!("{what}: {}", spec.display()),
            Step::Action(action) => action.summary(),
        }
    }
}

/// A plan shows no secret, by position, never by looking for the
/// secret's text: a URI's password field, the value of a `.properties` key
/// that names a password (continuation lines included), `key=value` lines
/// whose key names one, and files only their owner may read (password
/// files), keys and binary files are masked or not shown. Step summaries
/// never hold a secret.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub title: String,
    pub steps: Vec<Step>,
}

/// Collaborators the apply step needs, all passed in.
pub struct ApplyCtx<'a> {
    pub host: &'a Host,
    pub runner: &'a dyn CommandRunner,
    /// Show a spinner per step (a person is watching a terminal).
    pub progress: bool,
}

impl Plan {
    pub fn new(title: impl Into<String>) -> Self {
        Plan {
            title: title.into(),
            ..Default::default()
        }
    }

    /// Adds a file step, dropping files that would not change.
    pub fn files(&mut self, label: impl Into<String>, changes: Vec<FileChange>) {
        let changes: Vec<FileChange> = changes.into_iter().filter(|c| !c.is_noop()).collect();
        if !changes.is_empty() {
            self.steps.push(Step::Files {
                label: label.into(),
                changes,
            });
        }
    }

    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// One line per step, for a step list shown before applying.
    pub fn summaries(&self) -> Vec<String> {
        self.steps.iter().map(Step::summary).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether any step writes files the operator would see (not just markers).
    pub fn changes_files(&self) -> bool {
        self.steps.iter().any(|s| match s {
            Step::Files { changes, .. } => changes.iter().any(|c| !c.internal),
            _ => false,
        })
    }

    /// The plan as a person reads it: numbered steps, unified diffs.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.steps.is_empty() {
            let _ = writeln!(out, "{}: nothing to do, already done.", self.title);
            return out;
        }
        let _ = writeln!(out, "Plan: {}", self.title);
        for (i, step) in self.steps.iter().enumerate() {
            let _ = writeln!(out, "{}. {}", i + 1, step.summary());
            if let Step::Files { changes, .. } = step {
                for c in changes.iter().filter(|c| !c.internal) {
                    render_file_change(&mut out, c);
                }
            }
        }
        out
    }

    /// Executes the plan. On failure the error names the step, and says which
    /// steps were completed and which were not.
    pub fn apply(&self, ctx: &ApplyCtx) -> Result<()> {
        self.apply_indexed(ctx).map_err(|(_, e)| e)
    }

    /// [`Plan::apply`], saying which step (by index) failed.
    pub fn apply_indexed(&self, ctx: &ApplyCtx) -> std::result::Result<(), (usize, anyhow::Error)> {
        let total = self.steps.len();
        for (i, step) in self.steps.iter().enumerate() {
            let summary = step.summary();
            let label = format!("[{}/{total}] {summary}", i + 1);
            let spinner = ctx.progress.then(|| spinner(&label));
            if spinner.is_none() {
                tracing::info!("step {}/{total}: {summary}", i + 1);
            }
            let done = match i {
                0 => String::new(),
                1 => "; step 1 was completed".to_string(),
                i => format!("; steps 1-{i} were completed"),
            };
            let started = Instant::now();
            let result = apply_step(ctx, step);
            if let Some(bar) = spinner {
                let mark = if result.is_ok() { "done" } else { "FAILED" };
                bar.finish_with_message(format!(
                    "{label} ... {mark} ({:.1}s)",
                    started.elapsed().as_secs_f32()
                ));
            }
            result
                .with_context(|| format!("step {}/{total} ({summary}) failed{done}", i + 1))
                .map_err(|e| (i, e))?;
        }
        Ok(())
    }
}

/// A spinner on stderr for one step (only used on a terminal).
fn spinner(label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn apply_step(ctx: &ApplyCtx, step: &Step) -> Result<()> {
    match step {
        Step::Files { changes, .. } => {
            check_writable(ctx.host, changes)?;
            let writes: Vec<FileWrite> = changes
                .iter()
                .map(|c| FileWrite {
                    path: c.path.clone(),
                    contents: c.after.clone(),
                    meta: c.meta,
                    backup: !c.internal,
                })
                .collect();
            txn::commit(ctx.host, &writes)
        }
        Step::Service { unit, action } => systemd::act(ctx.runner, unit, *action),
        Step::WaitHttp { what, url, timeout } => {
            http::wait_until_answers(url, *timeout, what).map(|_| ())
        }
        Step::Command { what, spec } => run_checked(ctx.runner, what, spec),
        Step::Action(action) => action.apply(ctx),
    }
}

/// Runs a command; a non-zero exit is an error quoting the end of its
/// output (apt's reason is on its last lines).
pub fn run_checked(runner: &dyn CommandRunner, what: &str, spec: &CommandSpec) -> Result<()> {
    let out = runner.run(spec).with_context(|| what.to_string())?;
    if out.success() {
        return Ok(());
    }
    let tail = out.tail(3);
    anyhow::bail!(
        "{what}: `{}` exited with {}{}",
        spec.display(),
        out.code
            .map_or("a signal".to_string(), |c| format!("code {c}")),
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    )
}

/// Fails before anything is written when a folder of the change cannot be
/// written (read-only mount, permissions), so the host stays as it was.
fn check_writable(host: &Host, changes: &[FileChange]) -> Result<()> {
    use nix::unistd::{AccessFlags, access};
    for c in changes {
        // The nearest existing ancestor: missing folders are created later.
        let mut dir = c.path.parent().map(|p| p.to_path_buf());
        while let Some(d) = dir {
            match access(&host.path(&d), AccessFlags::W_OK) {
                Ok(()) => break,
                Err(nix::errno::Errno::ENOENT) => dir = d.parent().map(|p| p.to_path_buf()),
                Err(errno) => anyhow::bail!(
                    "cannot write {}: folder {} is not writable ({}); nothing was changed",
                    c.path.display(),
                    d.display(),
                    errno.desc()
                ),
            }
        }
    }
    Ok(())
}

/// A diff line `[-+ ]key=value` whose key names a secret (`*password*`,
/// `*pass`, `*secret*`, e.g. the plaintext `clusterdb.password=` the old
/// shell wrote) keeps its key and loses its value.
fn mask_secret_assignment(line: &str) -> String {
    let Some(marker) = line.chars().next().filter(|c| matches!(c, '-' | '+' | ' ')) else {
        return line.to_string();
    };
    let body = &line[1..];
    let Some(eq) = body.find(['=', ':']) else {
        return line.to_string();
    };
    let key = body[..eq].trim().to_ascii_lowercase();
    let value = body[eq + 1..].trim();
    if value.is_empty() || key.starts_with('#') || key.starts_with('!') {
        return line.to_string();
    }
    if key.contains("pass") || key.contains("secret") {
        format!("{marker}{}****", &body[..=eq])
    } else {
        line.to_string()
    }
}

fn render_file_change(out: &mut String, c: &FileChange) {
    let path = c.path.display();
    match (&c.before, &c.after) {
        (None, Some(_)) => {
            let _ = writeln!(out, "   create {path} (mode {:04o})", c.meta.mode);
        }
        (Some(_), None) => {
            let _ = writeln!(out, "   remove {path}");
        }
        _ => {}
    }
    if let (Some(old), Some(new)) = (c.meta_before, Some(c.meta)) {
        if old.mode != new.mode {
            let _ = writeln!(
                out,
                "   mode of {path}: {:04o} -> {:04o}",
                old.mode, new.mode
            );
        }
    }
    // Binary files (key stores) and private keys are named, never shown.
    let unshowable = |b: &Option<Vec<u8>>| {
        b.as_deref().is_some_and(|b| match std::str::from_utf8(b) {
            Ok(text) => text.contains("PRIVATE KEY-----"),
            Err(_) => true,
        })
    };
    if unshowable(&c.before) || unshowable(&c.after) {
        if c.before != c.after {
            let _ = writeln!(
                out,
                "   {path}: new content ({} bytes; a key or binary file, not shown)",
                c.after.as_ref().map_or(0, Vec::len)
            );
        }
        return;
    }
    // A file only its owner may read holds a secret (a password file).
    let private = |m: Option<FileMeta>| m.is_some_and(|m| m.mode & 0o077 == 0);
    if private(c.meta_before) || (c.after.is_some() && private(Some(c.meta))) {
        if c.before != c.after {
            let _ = writeln!(
                out,
                "   {path}: new content ({} bytes; readable by its owner only, not shown)",
                c.after.as_ref().map_or(0, Vec::len)
            );
        }
        return;
    }
    let properties = c.path.extension().is_some_and(|e| e == "properties");
    let shown = |bytes: &Option<Vec<u8>>| -> String {
        let bytes = bytes.as_deref().unwrap_or_default();
        if properties {
            // ISO-8859-1, as Java reads it: one byte, one character. An
            // entry holding a secret is put on one line (its continuation
            // lines joined), so its diff line below masks all of it.
            let text: String = bytes.iter().copied().map(char::from).collect();
            crate::properties::Properties::parse(&text)
                .masked(|key, value| mask_property(key, value).map(|_| value.to_string()))
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        }
    };
    let (before, after) = (shown(&c.before), shown(&c.after));
    if before != after {
        let diff = similar::TextDiff::from_lines(before.as_str(), after.as_str());
        let header_a = format!("{path}");
        let text = diff
            .unified_diff()
            .context_radius(1)
            .header(&header_a, &header_a)
            .to_string();
        for line in text.lines() {
            let header =
                line.starts_with("---") || line.starts_with("+++") || line.starts_with("@@");
            let masked = match line.chars().next() {
                Some(marker @ ('-' | '+' | ' ')) if properties && !header => {
                    let entry = crate::properties::Properties::parse(&line[1..]);
                    format!("{marker}{}", entry.masked(mask_property))
                }
                // Any URI password, old or new, whatever its escaping.
                _ => mask_secret_assignment(&crate::secret::redact_loose(line)),
            };
            let _ = writeln!(out, "   {masked}");
        }
    }
}

/// The shown value of a `.properties` entry: a key that names a secret
/// loses its value, a URI its password field (the value is still escaped:
/// a URI's characters are the same escaped or not).
fn mask_property(key: &str, value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    let key = key.to_ascii_lowercase();
    if key.contains("pass") || key.contains("secret") {
        return Some("****".into());
    }
    let redacted = crate::secret::redact_loose(value);
    (redacted != value).then_some(redacted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fs::private_meta;

    #[test]
    fn unchanged_files_make_an_empty_plan() {
        let mut plan = Plan::new("t");
        let same = Some(b"x".to_vec());
        plan.files(
            "write",
            vec![FileChange {
                path: "/a".into(),
                before: same.clone(),
                after: same,
                meta_before: Some(private_meta(0o644)),
                meta: private_meta(0o644),
                internal: false,
            }],
        );
        assert!(plan.is_empty());
        assert!(plan.render().contains("nothing to do"));
    }

    #[test]
    fn secret_assignments_lose_their_values() {
        assert_eq!(
            mask_secret_assignment("-clusterdb.password=hunter2"),
            "-clusterdb.password=****"
        );
        assert_eq!(
            mask_secret_assignment(" db.password = x"),
            " db.password =****"
        );
        assert_eq!(
            mask_secret_assignment("+server.jwtServerSecretKey=k"),
            "+server.jwtServerSecretKey=****"
        );
        assert_eq!(mask_secret_assignment("+db.password="), "+db.password=");
        assert_eq!(mask_secret_assignment("+db.host=h"), "+db.host=h");
        assert_eq!(mask_secret_assignment("--- /a/b"), "--- /a/b");
    }

    #[test]
    fn keys_and_binary_files_are_not_shown() {
        let mut plan = Plan::new("t");
        // Key-shaped armor around bytes that are no key.
        let key = format!(
            "-----BEGIN {0}-----\nMIGHAgEAMBMGByqGSM49\n-----END {0}-----\n",
            "PRIVATE KEY"
        );
        plan.files(
            "write",
            vec![
                FileChange {
                    path: "/k.pem".into(),
                    before: None,
                    after: Some(key.clone().into_bytes()),
                    meta_before: None,
                    meta: private_meta(0o600),
                    internal: false,
                },
                FileChange {
                    path: "/s.jks".into(),
                    before: None,
                    after: Some(vec![0x30, 0x82, 0xff, 0x00]),
                    meta_before: None,
                    meta: private_meta(0o600),
                    internal: false,
                },
            ],
        );
        let text = plan.render();
        assert!(!text.contains("MIGHAgEA"), "{text}");
        assert!(
            text.contains("/k.pem: new content (") && text.contains("/s.jks: new content (4 bytes"),
            "{text}"
        );
    }

    #[test]
    fn render_masks_secrets() {
        let mut plan = Plan::new("t");
        plan.files(
            "write",
            vec![FileChange {
                path: "/a".into(),
                before: Some(b"p=\nuri=\n".to_vec()),
                after: Some(b"p=\nuri=mongodb://u:hunter2@h\nx.password=hunter2\n".to_vec()),
                meta_before: Some(private_meta(0o644)),
                meta: private_meta(0o640),
                internal: false,
            }],
        );
        let text = plan.render();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("+uri=mongodb://u:****@h"), "{text}");
        assert!(text.contains("+x.password=****"), "{text}");
        assert!(text.contains("0644 -> 0640"), "{text}");
    }

    fn shown(path: &str, before: &str, after: &str, mode: u32) -> String {
        let mut plan = Plan::new("t");
        plan.files(
            "write",
            vec![FileChange {
                path: path.into(),
                before: Some(before.as_bytes().to_vec()),
                after: Some(after.as_bytes().to_vec()),
                meta_before: Some(private_meta(mode)),
                meta: private_meta(mode),
                internal: false,
            }],
        );
        plan.render()
    }

    #[test]
    fn masking_is_by_position_never_by_substring() {
        // The password `p`: only the URI's password field is masked, the
        // letter p elsewhere stays.
        let text = shown(
            "/usr/local/antmedia/conf/red5.properties",
            "# A password cannot be specified twice\nclusterdb.host=\n",
            "# A password cannot be specified twice\nclusterdb.host=mongodb://u:p@h:27017\n",
            0o640,
        );
        assert!(text.contains("A password cannot be specified"), "{text}");
        assert!(
            text.contains("+clusterdb.host=mongodb://u:****@h:27017"),
            "{text}"
        );
        assert!(!text.contains("u:p@"), "{text}");
    }

    #[test]
    fn a_password_split_across_continuation_lines_is_masked_whole() {
        let text = shown(
            "/usr/local/antmedia/conf/red5.properties",
            "a=1\nclusterdb.password=hun\\\n    ter2\nclusterdb.host=mongodb://u:pa\\\n  ss@h\n",
            "a=1\nclusterdb.password=\nclusterdb.host=h\n",
            0o640,
        );
        assert!(!text.contains("ter2") && !text.contains("hun"), "{text}");
        assert!(!text.contains("pa") || !text.contains("ss@"), "{text}");
        assert!(text.contains("-clusterdb.password=****"), "{text}");
        assert!(
            text.contains("-clusterdb.host=mongodb://u:****@h"),
            "{text}"
        );
    }

    #[test]
    fn files_only_their_owner_may_read_are_never_shown() {
        let text = shown("/etc/ams-agent/mongo-password", "", "hunter2\n", 0o600);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("readable by its owner only"), "{text}");
    }
}
