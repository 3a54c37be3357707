//! The follower: one cycle reads the registry, applies the membership
//! rules, renders the balancer's section, checks the candidate file with
//! the balancer's own checker, installs it (atomic, the last good file
//! kept) and brings the running balancer to it: HAProxy through its
//! Runtime API when only membership changed, a reload otherwise; Nginx by
//! a reload, debounced. `--watch` repeats the cycle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use super::blocks;
use super::haproxy::{self, Layout};
use super::membership::{self, Decision, RegistryView, Rules, Tracker};
use super::model::{Kind, Membership, Settings, Tls};
use super::nginx;
use super::record::{Event, Held, Record};
use super::runtime::AdminSocket;
use crate::bail_usage;
use crate::host::fs::{FileMeta, STATE_DIR, private_meta};
use crate::host::lock::HostLock;
use crate::host::systemd::{self, ServiceAction};
use crate::host::{CommandRunner, CommandSpec, Host};
use crate::human::{escape, show_duration};
use crate::mongo::registry::{Deadlines, Registry, Target};
use crate::node::Role;
use crate::plan::{Action, ApplyCtx, FileChange, Plan, Step};

/// The largest balancer file read.
const MAX_FILE: u64 = 16 << 20;

/// Everything a follower needs, resolved from flags.
#[derive(Debug, Clone)]
pub struct LbConfig {
    pub kind: Kind,
    /// The balancer's file (host path).
    pub file: PathBuf,
    /// Listeners, ports, timeouts; `tls` is found again every cycle, and
    /// every path in it is a real path (what the balancer reads).
    pub settings: Settings,
    pub rules: Rules,
    /// The folder of PEMs `cert --for haproxy` installs (host path).
    pub certs: PathBuf,
    /// Nginx: the PEM to serve (host path); else the only one in `certs`.
    pub cert: Option<PathBuf>,
    /// HAProxy's admin socket (host path).
    pub socket: PathBuf,
    /// HAProxy: membership changes through the Runtime API (else reloads).
    pub runtime: bool,
    /// Nginx's pid file (host path).
    pub pid_file: PathBuf,
    /// The unit reloaded (`systemctl reload <service>`).
    pub service: String,
    pub poll: Duration,
    pub quiet: Duration,
    pub max_wait: Duration,
    /// The deadline of one registry read.
    pub timeout: Duration,
    /// How long a reload may take to show (a new worker).
    pub reload_wait: Duration,
    pub target: Target,
    /// The AMS node group this balancer serves (`--group`); None: every
    /// node of the registry.
    pub node_group: Option<String>,
}

/// A marker that a reload is owed: the file changed, the reload did not
/// happen (crash, failure); the next run reloads.
fn pending_marker(kind: Kind) -> PathBuf {
    Path::new(STATE_DIR).join(format!("lb-{}-reload-pending", kind.name()))
}

/// Where the file as it was before the last install is kept.
pub fn last_good(file: &Path) -> PathBuf {
    let rel = file.strip_prefix("/").unwrap_or(file);
    Path::new(STATE_DIR).join("lb-last-good").join(rel)
}

/// The balancer's file as it is now.
#[derive(Debug, Clone)]
pub struct Current {
    /// The file changed (symlinks followed).
    pub file: PathBuf,
    pub text: Vec<u8>,
    pub meta: FileMeta,
    pub members: Membership,
    pub region: Option<std::ops::Range<usize>>,
    pub layout: Option<Layout>,
}

/// Reads `--file`: a regular file of at most 16 MB (never a FIFO or a
/// device), with markers that make sense. Problems are bad input (exit 2).
pub fn read_current(host: &Host, cfg: &LbConfig) -> Result<Current> {
    read_file(host, cfg.kind, &cfg.file)
}

/// [`read_current`] for a kind and a file.
pub fn read_file(host: &Host, kind: Kind, path: &Path) -> Result<Current> {
    let flag = "--file";
    let shown = path.display();
    let file = match host.resolve_links(path) {
        Ok(f) => f,
        Err(e) => bail_usage!("{flag} {shown}: {e:#}"),
    };
    let real = host.path(&file);
    let md = match std::fs::metadata(&real) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail_usage!(
            "{flag} {shown} does not exist: is {} installed here? (--file names its configuration)",
            kind.name()
        ),
        Err(e) => bail_usage!("{flag} {shown}: {e}"),
    };
    if !md.is_file() {
        bail_usage!("{flag} {shown} is not a regular file");
    }
    if md.len() > MAX_FILE {
        bail_usage!("{flag} {shown} is larger than {} MB", MAX_FILE >> 20);
    }
    let cap = crate::host::fs::Cap {
        bytes: MAX_FILE,
        what: "a balancer configuration",
    };
    let Some((text, meta)) = host.read_with_meta(&file, cap)? else {
        bail_usage!("{flag} {shown} does not exist");
    };
    if text.len() as u64 > MAX_FILE {
        bail_usage!("{flag} {shown} is larger than {} MB", MAX_FILE >> 20);
    }
    let (members, region, layout) = match kind {
        Kind::Haproxy => {
            let region = match blocks::find(&text, haproxy::MARKERS) {
                Ok(r) => r,
                Err(e) => bail_usage!("{flag} {shown}: {e}; fix or remove the markers"),
            };
            let layout = match &region {
                Some(r) if !empty_section(&text, r.clone()) => Some(
                    std::str::from_utf8(&text[r.clone()])
                        .ok()
                        .and_then(haproxy::parse)
                        .ok_or_else(|| unreadable_section(host, path))?,
                ),
                _ => None,
            };
            let members = layout.as_ref().map(haproxy::membership).unwrap_or_default();
            (members, region, layout)
        }
        Kind::Nginx => {
            let mut http = None;
            for (m, is_http) in [(nginx::MAIN, false), (nginx::HTTP, true)] {
                match blocks::find(&text, m) {
                    Ok(r) if is_http => http = r,
                    Ok(_) => {}
                    Err(e) => bail_usage!("{flag} {shown}: {e}; fix or remove the markers"),
                }
            }
            let members = match http {
                Some(r) if !empty_section(&text, r.clone()) => {
                    nginx::members(&text).ok_or_else(|| unreadable_section(host, path))?
                }
                _ => Membership::default(),
            };
            (members, None, None)
        }
    };
    Ok(Current {
        file,
        text,
        meta,
        members,
        region,
        layout,
    })
}

/// True when a section holds nothing between its markers.
fn empty_section(text: &[u8], r: std::ops::Range<usize>) -> bool {
    blocks::inner(text, r).is_some_and(|b| b.trim().is_empty())
}

/// The agent's own section is there but cannot be read back: who is in
/// rotation is unknown, so the guards could hold no one. Bad input, with
/// the way out.
fn unreadable_section(host: &Host, file: &Path) -> anyhow::Error {
    crate::error::UsageError::new(format!(
        "--file {}: the ams-agent section (between its `# BEGIN ams-agent lb` and `# END ams-agent lb` markers) cannot be read back (edited by hand, or written by another version of ams-agent), so who is in rotation is unknown and the guards could keep no one; restore the file from {} or delete the section, markers included, to have it written afresh from the registry",
        file.display(),
        host.path(&last_good(file)).display()
    ))
    .into()
}

/// Everything about the balancer's side that is bad input, found before
/// the registry is asked anything: the file, its markers, where the
/// sections would go, the certificates.
pub fn precheck(host: &Host, cfg: &LbConfig) -> Result<()> {
    let current = read_current(host, cfg)?;
    let tls = resolve_tls(host, cfg)?;
    if cfg.kind == Kind::Nginx {
        let mut s = cfg.settings.clone();
        s.tls = tls;
        let empty = Membership::default();
        if let Err(e) = nginx::install(
            &current.text,
            &nginx::render_main(&s, &empty),
            &nginx::render_http(&s, &empty),
        ) {
            bail_usage!("--file {}: {e}", cfg.file.display());
        }
    }
    Ok(())
}

/// The `*.pem` files of the certificate folder, sorted. Only a missing
/// folder means no certificate: one that cannot be listed is a failure
/// (serving without TLS is not what the folder asked for).
fn list_pems(host: &Host, dir: &Path) -> Result<Vec<PathBuf>> {
    let shown = dir.display();
    let rd = match std::fs::read_dir(host.path(dir)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail_usage!("--certs {shown} is not a folder")
        }
        Err(e) => bail!(
            "cannot list the certificate folder {shown} (--certs): {e}; nothing was installed (the TLS listeners would be dropped)"
        ),
    };
    let mut v = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("listing the certificate folder {shown} (--certs)"))?;
        let is_file = e
            .file_type()
            .with_context(|| format!("listing the certificate folder {shown} (--certs)"))?
            .is_file();
        let p = dir.join(e.file_name());
        if is_file && p.extension().is_some_and(|x| x == "pem") {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// The TLS material, when a certificate is installed: HAProxy serves every
/// PEM of `certs`; Nginx serves `--cert`, else the only PEM there.
pub fn resolve_tls(host: &Host, cfg: &LbConfig) -> Result<Option<Tls>> {
    // Nginx serves `--cert` alone; HAProxy every PEM of the folder.
    let found = match (&cfg.cert, cfg.kind) {
        (Some(_), Kind::Nginx) => Vec::new(),
        _ => list_pems(host, &cfg.certs)?,
    };
    let pem = match (&cfg.cert, cfg.kind) {
        (Some(c), _) => {
            if !host.path(c).is_file() {
                bail_usage!("--cert {}: no such file", c.display());
            }
            c.clone()
        }
        (None, _) if found.is_empty() => return Ok(None),
        (None, Kind::Haproxy) => found[0].clone(),
        (None, Kind::Nginx) if found.len() == 1 => found[0].clone(),
        (None, Kind::Nginx) => bail_usage!(
            "--certs {} holds {} certificates ({}): name the one Nginx serves with --cert",
            cfg.certs.display(),
            found.len(),
            found
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| escape(&n.to_string_lossy()).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let digest = match cfg.kind {
        Kind::Haproxy => String::new(),
        Kind::Nginx => {
            let bytes = host
                .read_capped(&pem, crate::host::fs::Cap::PEM)
                .with_context(|| format!("reading the certificate {}", pem.display()))?
                .ok_or_else(|| anyhow!("the certificate {} disappeared", pem.display()))?;
            let info = crate::cert::inspect::CertInfo::from_pem(&bytes)
                .with_context(|| format!("reading the certificate {}", pem.display()))?;
            format!(
                "{}, valid from {} to {}",
                info.domains.join(" "),
                info.not_before,
                info.not_after
            )
        }
    };
    Ok(Some(Tls {
        dir: host.path(&cfg.certs),
        pem: host.path(&pem),
        digest,
    }))
}

/// Where a cycle's time went (logged at debug level; `bench/lb.sh` reads
/// it): the agent's own work apart from waiting on others.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// The registry's answer on the wire.
    pub registry: Duration,
    /// Checking the documents.
    pub view: Duration,
    /// Reading and parsing the balancer's file, finding the certificate.
    pub file: Duration,
    /// Hysteresis and guards.
    pub decide: Duration,
    /// Asking the running balancer (admin socket, pid file, systemctl).
    pub balancer: Duration,
    /// Rendering, splicing, the Runtime API diff.
    pub render: Duration,
    /// The balancer's own checker on the candidate.
    pub check: Duration,
}

impl Timing {
    /// The agent's own part: everything but the registry, the running
    /// balancer and the checker.
    pub fn own(&self) -> Duration {
        self.view + self.file + self.decide + self.render
    }

    pub fn line(&self) -> String {
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        format!(
            "timing: own {} (documents {}, file {}, decisions {}, render {}); registry {}, running balancer {}, checker {}",
            ms(self.own()),
            ms(self.view),
            ms(self.file),
            ms(self.decide),
            ms(self.render),
            ms(self.registry),
            ms(self.balancer),
            ms(self.check)
        )
    }
}

/// What one cycle would do.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub timing: Timing,
    pub view: RegistryView,
    pub decision: Decision,
    pub current: Current,
    pub new_text: Vec<u8>,
    /// Why a reload is needed (None: none is).
    pub reload: Option<String>,
    /// HAProxy Runtime API commands.
    pub runtime: Vec<String>,
    pub layout: Option<Layout>,
    /// Whether the balancer runs (else nothing is reloaded: it reads the
    /// file when it starts).
    pub running: bool,
    /// Why a changed file would be installed without being applied although
    /// the balancer may run (whether it runs cannot be told): the reload is
    /// owed (the marker is written).
    pub owe: Option<String>,
    pub notes: Vec<String>,
    pub settings: Settings,
}

impl Proposal {
    pub fn file_changes(&self) -> bool {
        self.new_text != self.current.text
    }

    pub fn is_noop(&self) -> bool {
        !self.file_changes() && self.reload.is_none() && self.runtime.is_empty()
    }

    /// One line per membership change, `+ id joins origin`, `- …`, `~ …`.
    pub fn changes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for role in [Role::Origin, Role::Edge] {
            let (cur, new) = (
                self.current.members.group(role),
                self.decision.desired.group(role),
            );
            for m in new {
                match cur.iter().find(|c| c.id == m.id) {
                    None => out.push(format!(
                        "+ {} joins the {}s at {}",
                        m.id,
                        role.name(),
                        m.addr
                    )),
                    Some(c) if c.state != m.state || c.addr != m.addr => out.push(format!(
                        "~ {} ({}) is now {} at {}",
                        m.id,
                        role.name(),
                        m.state.name(),
                        m.addr
                    )),
                    Some(_) => {}
                }
            }
            for c in cur {
                if !new.iter().any(|m| m.id == c.id) {
                    let why = self
                        .view
                        .get(&c.id)
                        .map_or("not in the registry".to_string(), |x| {
                            format!("{}", escape(&x.state))
                        });
                    out.push(format!("- {} leaves the {}s ({why})", c.id, role.name()));
                }
            }
        }
        out
    }
}

fn reload_reason_for_nginx(p: &Current, new_text: &[u8]) -> Option<String> {
    (new_text != p.text).then(|| {
        if blocks::find(&p.text, nginx::HTTP).ok().flatten().is_none() {
            "the section is new".to_string()
        } else {
            "the section changed".to_string()
        }
    })
}

/// Computes what one cycle would do from a registry answer. Reads the
/// balancer's file and (HAProxy) its running state; changes nothing.
pub fn propose(
    host: &Host,
    runner: &dyn CommandRunner,
    cfg: &LbConfig,
    view: RegistryView,
    tracker: &mut Tracker,
) -> Result<Proposal> {
    let mut timing = Timing::default();
    let t = Instant::now();
    let current = read_current(host, cfg)?;
    let mut settings = cfg.settings.clone();
    settings.tls = resolve_tls(host, cfg)?;
    timing.file = t.elapsed();
    let t = Instant::now();
    tracker.observe(&view, &current.members);
    let decision = membership::decide(&view, &current.members, tracker, &cfg.rules);
    timing.decide = t.elapsed();
    let t_render = Instant::now();
    let owed = host.exists(&pending_marker(cfg.kind));
    let mut notes = Vec::new();
    let mut owe: Option<String> = None;
    let (new_text, mut reload, runtime, layout, running) = match cfg.kind {
        Kind::Haproxy => {
            let sock = admin_socket(host, cfg);
            let t = Instant::now();
            let live = sock.servers();
            let running = match &live {
                Ok(_) => true,
                Err(e) => match service_active(runner, &cfg.service) {
                    Ok(true) => {
                        notes.push(format!(
                            "{e:#}: changes are applied by a reload, and the reload cannot be verified"
                        ));
                        true
                    }
                    Ok(false) => {
                        notes.push(format!(
                            "HAProxy ({}) is not running: the file is written, and used when it starts",
                            cfg.service
                        ));
                        false
                    }
                    Err(why) => {
                        owe = Some(format!(
                            "whether HAProxy ({}) runs cannot be told ({e:#}; {why})",
                            cfg.service
                        ));
                        false
                    }
                },
            };
            timing.balancer = t.elapsed();
            let prev_block = current
                .region
                .clone()
                .map(|r| String::from_utf8_lossy(&current.text[r]).into_owned());
            let updated = current
                .layout
                .as_ref()
                .and_then(|l| haproxy::update(l, &decision.desired));
            let mut why = match (&current.layout, &updated, &prev_block) {
                (_, Some(l), Some(block))
                    if haproxy::skeleton(&haproxy::render(&settings, l))
                        == haproxy::skeleton(block) =>
                {
                    None
                }
                (_, Some(_), _) => Some("the frontends or settings changed".to_string()),
                (None, _, None) => Some("the section is new".to_string()),
                // Empty markers (one that cannot be read back is refused
                // by read_file).
                (None, _, Some(_)) => Some("the section is new".to_string()),
                (Some(_), None, _) => Some("a backend has no free slot left".to_string()),
            };
            if why.is_none() && owed {
                if live.is_ok() {
                    why = Some("a reload is owed by an earlier run".into());
                } else if running {
                    // Reloading again unverified would only repeat itself
                    // every cycle.
                    notes.push(
                        "a reload is owed by an earlier run (it could not be verified): it happens once the admin socket answers".into(),
                    );
                }
            }
            let mut cmds = Vec::new();
            let mut layout = updated.clone().unwrap_or_default();
            if why.is_none() {
                match (&live, cfg.runtime) {
                    (Ok((_, servers)), true) => {
                        match haproxy::runtime_commands(&layout, servers, &settings.ports) {
                            Ok(c) => cmds = c,
                            Err(drift) => why = Some(drift),
                        }
                    }
                    _ => {
                        let text = haproxy::render(&settings, &layout);
                        if Some(&text) != prev_block.as_ref() {
                            why = Some(if cfg.runtime {
                                "the admin socket does not answer".into()
                            } else {
                                "--no-runtime".into()
                            });
                        }
                    }
                }
            }
            if why.is_some() {
                layout = haproxy::fresh(&decision.desired, settings.spare_slots);
            }
            let block = haproxy::render(&settings, &layout);
            let text = match &current.region {
                Some(r) => blocks::splice(&current.text, r.clone(), &block),
                None => blocks::append(&current.text, &block),
            };
            (text, why, cmds, Some(layout), running)
        }
        Kind::Nginx => {
            let main = nginx::render_main(&settings, &decision.desired);
            let http = nginx::render_http(&settings, &decision.desired);
            let text = match nginx::install(&current.text, &main, &http) {
                Ok(t) => t,
                Err(e) => bail_usage!("--file {}: {e}", cfg.file.display()),
            };
            let mut why = reload_reason_for_nginx(&current, &text);
            if why.is_none() && owed {
                why = Some("a reload is owed by an earlier run".into());
            }
            let t = Instant::now();
            let master = nginx_master(host, cfg);
            timing.balancer = t.elapsed();
            let running = matches!(master, Ok(Some(_)));
            match master {
                Ok(Some(_)) => {}
                Ok(None) => notes.push(format!(
                    "Nginx is not running (no process in {}): the file is written, and used when it starts",
                    cfg.pid_file.display()
                )),
                Err(why) => owe = Some(format!("whether Nginx runs cannot be told ({why})")),
            }
            (text, why, Vec::new(), None, running)
        }
    };
    if !running {
        reload = None;
    }
    if new_text == current.text {
        owe = None;
    }
    if let Some(why) = &owe {
        notes.push(format!(
            "{why}: the file is written but not applied, and a reload is owed (the next run reloads)"
        ));
    }
    timing.render = t_render.elapsed().saturating_sub(timing.balancer);
    Ok(Proposal {
        timing,
        view,
        decision,
        current,
        new_text,
        reload,
        runtime,
        layout,
        running,
        owe,
        notes,
        settings,
    })
}

fn admin_socket(host: &Host, cfg: &LbConfig) -> AdminSocket {
    AdminSocket::new(&cfg.socket, host.path(&cfg.socket), Duration::from_secs(5))
}

/// Nginx's master process, from the pid file and /proc: None when it does
/// not run (no pid file, or its process is gone), an error when that cannot
/// be told (a pid file that cannot be read or holds no pid).
fn nginx_master(host: &Host, cfg: &LbConfig) -> std::result::Result<Option<u32>, String> {
    let shown = cfg.pid_file.display();
    let cap = crate::host::fs::Cap {
        bytes: 64,
        what: "a pid file",
    };
    let text = match host.read_capped(&cfg.pid_file, cap) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("{e:#}")),
    };
    let Some(pid) = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|p| *p > 0)
    else {
        return Err(format!(
            "the pid file {shown} holds no pid: `{}`",
            escape(&String::from_utf8_lossy(&text))
        ));
    };
    Ok(Path::new(&format!("/proc/{pid}")).exists().then_some(pid))
}

/// `systemctl is-active`: true when active, false when not (exit 3, as
/// systemctl says for inactive, failed and unknown units), an error when
/// that cannot be told (systemctl missing, no system bus, a timeout).
fn service_active(runner: &dyn CommandRunner, unit: &str) -> std::result::Result<bool, String> {
    let spec = CommandSpec::new("systemctl", &["is-active", "--quiet", unit])
        .timeout(Duration::from_secs(10));
    match runner.run(&spec) {
        Ok(o) if o.success() => Ok(true),
        Ok(o) if matches!(o.code, Some(3) | Some(4)) => Ok(false),
        Ok(o) => Err(format!(
            "`systemctl is-active {unit}` exited {}: {}",
            o.code.map_or("on a signal".to_string(), |c| c.to_string()),
            escape(o.stderr.trim())
        )),
        Err(e) => Err(format!("`systemctl is-active {unit}`: {e:#}")),
    }
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

/// Checks a candidate file with the balancer's own checker, beside the
/// live one (so relative includes resolve the same) or, in a dry run, in a
/// private temp folder. Never installs anything.
fn check_candidate(
    host: &Host,
    runner: &dyn CommandRunner,
    kind: Kind,
    live: &Path,
    text: &[u8],
    in_temp: bool,
) -> Result<()> {
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "balancer.conf".into());
    let tmp_dir;
    let candidate = if in_temp {
        tmp_dir = tempdir()?;
        tmp_dir.0.join(&name)
    } else {
        host.path(&live.with_file_name(format!(".{name}.ams-agent-check")))
    };
    write_private(&candidate, text)
        .with_context(|| format!("writing the candidate {}", candidate.display()))?;
    let c = candidate.display().to_string();
    let spec = match kind {
        Kind::Haproxy => CommandSpec::new("haproxy", &["-c", "-f", &c]),
        Kind::Nginx => CommandSpec::new("nginx", &["-t", "-c", &c]),
    }
    .timeout(Duration::from_secs(60));
    let out = runner.run(&spec);
    let _ = std::fs::remove_file(&candidate);
    let out = out.with_context(|| format!("checking the new {}", live.display()))?;
    if out.success() {
        return Ok(());
    }
    // Both checkers put their reasons on stderr or stdout, by version.
    let both = format!("{}\n{}", out.stderr, out.stdout).replace(&c, &live.display().to_string());
    let lines: Vec<String> = both
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && (l.contains("ALERT")
                    || l.contains("[emerg]")
                    || l.contains("error")
                    || l.contains("failed"))
        })
        .map(|l| escape(l).into_owned())
        .collect();
    let message = if lines.is_empty() {
        escape(both.trim()).into_owned()
    } else {
        lines.join(" / ")
    };
    let hint = match kind {
        Kind::Nginx => nginx::hint(&message).map(|h| format!(" ({h})")),
        Kind::Haproxy => None,
    }
    .unwrap_or_default();
    bail!(
        "`{} {}` refused the new {}; nothing was installed: {message}{hint}",
        spec.program,
        match kind {
            Kind::Haproxy => "-c",
            Kind::Nginx => "-t",
        },
        live.display()
    )
}

fn write_private(path: &Path, text: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(text)?;
    Ok(())
}

/// A private temp folder removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for n in 0..100u32 {
        let p = base.join(format!(
            "ams-agent-lb-{}-{}-{n}",
            std::process::id(),
            crate::config::unix_now()
        ));
        if std::fs::DirBuilder::new().mode(0o700).create(&p).is_ok() {
            return Ok(TempDir(p));
        }
    }
    bail!("creating a temp folder in {}", base.display())
}

#[derive(Debug)]
struct Check {
    kind: Kind,
    file: PathBuf,
    text: Vec<u8>,
}

impl Action for Check {
    fn summary(&self) -> String {
        format!(
            "check the new {} with `{}`",
            self.file.display(),
            match self.kind {
                Kind::Haproxy => "haproxy -c -f",
                Kind::Nginx => "nginx -t -c",
            }
        )
    }

    fn apply(&self, ctx: &ApplyCtx) -> Result<()> {
        check_candidate(
            ctx.host, ctx.runner, self.kind, &self.file, &self.text, false,
        )
    }
}

/// Applies Runtime API commands, then reads the state back: every server
/// of the agent's backends must be as the file says.
#[derive(Debug)]
struct Runtime {
    socket: AdminSocket,
    cmds: Vec<String>,
    layout: Layout,
    settings: Settings,
}

impl Action for Runtime {
    fn summary(&self) -> String {
        let mut s = format!(
            "apply {} change{} through HAProxy's admin socket {} (no reload):",
            self.cmds.len(),
            if self.cmds.len() == 1 { "" } else { "s" },
            self.socket.shown.display()
        );
        for c in &self.cmds {
            s.push_str("\n      ");
            s.push_str(c);
        }
        s
    }

    fn apply(&self, _ctx: &ApplyCtx) -> Result<()> {
        apply_verified(&self.socket, &self.cmds, &self.layout, &self.settings)
    }
}

/// Sends Runtime API commands, then reads the servers back: every server
/// of the agent's backends must be as `layout` says, else the first
/// command still needed is named with HAProxy's answers.
fn apply_verified(
    socket: &AdminSocket,
    cmds: &[String],
    layout: &Layout,
    settings: &Settings,
) -> Result<()> {
    let answers = socket.apply(cmds)?;
    let (_, live) = socket.servers()?;
    match haproxy::runtime_commands(layout, &live, &settings.ports) {
        Ok(left) if left.is_empty() => Ok(()),
        Ok(left) => bail!(
            "HAProxy did not apply {} of the {} change{} (`{}` refused); it answered: {}",
            left.len(),
            cmds.len(),
            if cmds.len() == 1 { "" } else { "s" },
            left[0],
            if answers.is_empty() {
                "nothing".into()
            } else {
                answers.join(" / ")
            }
        ),
        Err(e) => bail!("HAProxy's servers changed meanwhile: {e}"),
    }
}

fn write_state_file(socket: &AdminSocket, layout: &Layout, settings: &Settings) -> Result<()> {
    let real = &settings.state_file;
    // The running process's state; without one, the file as it is (so a
    // slot emptied meanwhile never comes back up from an old line).
    let dump = socket.servers().ok().map(|(raw, _)| raw).or_else(|| {
        let shown = real.display().to_string();
        crate::host::fs::read_capped_real(real, &shown, crate::host::fs::Cap::FILE)
            .ok()
            .flatten()
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
    });
    let text = haproxy::state_file(dump.as_deref(), layout, &settings.ports);
    if let Some(dir) = real.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The state file's path is real (HAProxy reads it): write it as such.
    let root_host = Host::new("/", Default::default());
    root_host
        .write_atomic(real, text.as_bytes(), private_meta(0o644))
        .with_context(|| format!("writing HAProxy's server-state file {}", real.display()))
}

#[derive(Debug)]
struct StateFile {
    socket: AdminSocket,
    layout: Layout,
    settings: Settings,
}

impl Action for StateFile {
    fn summary(&self) -> String {
        format!(
            "write HAProxy's server-state file {} (so a reload or restart comes up the same)",
            self.settings.state_file.display()
        )
    }

    fn apply(&self, _ctx: &ApplyCtx) -> Result<()> {
        write_state_file(&self.socket, &self.layout, &self.settings)
    }
}

#[derive(Debug)]
struct Reload {
    kind: Kind,
    /// The balancer's file (as named).
    file: PathBuf,
    why: String,
    service: String,
    wait: Duration,
    socket: Option<AdminSocket>,
    layout: Option<Layout>,
    settings: Settings,
    pid_file: PathBuf,
    /// The owed-reload marker: removed once the reload is verified, kept
    /// (the next run reloads) when it cannot be.
    marker: PathBuf,
    /// What the reload did, for the report.
    done: std::sync::Mutex<Option<String>>,
}

impl Reload {
    /// A reload seen to take effect: nothing is owed any more.
    fn verified(&self, ctx: &ApplyCtx, done: String) {
        if let Err(e) = ctx.host.remove(&self.marker) {
            tracing::warn!(
                "could not remove the owed-reload marker (the next run reloads once more): {e:#}"
            );
        }
        *self.done.lock().unwrap() = Some(done);
    }

    /// A reload run but not seen to take effect: it stays owed.
    fn unverified(&self, ctx: &ApplyCtx, why: &str) -> Result<()> {
        if !ctx.host.exists(&self.marker) {
            if let Some(dir) = self.marker.parent() {
                ctx.host.create_dir_all(dir, 0o700)?;
            }
            ctx.host
                .write_atomic(
                    &self.marker,
                    format!("{} reload owed\n", self.kind.name()).as_bytes(),
                    private_meta(0o600),
                )
                .context("recording that the reload is owed")?;
        }
        *self.done.lock().unwrap() = Some(format!(
            "reloaded {} (not verified: {why}; the reload stays owed, and the next run reloads again once it can verify)",
            self.service
        ));
        Ok(())
    }
}

impl Action for Reload {
    fn summary(&self) -> String {
        let before = match self.kind {
            Kind::Haproxy => "write the server-state file from `show servers state`, then ",
            Kind::Nginx => "",
        };
        format!(
            "{before}reload {} (systemctl reload {}): {}",
            self.kind.name(),
            self.service,
            self.why
        )
    }

    fn apply(&self, ctx: &ApplyCtx) -> Result<()> {
        let started = Instant::now();
        match self.kind {
            Kind::Haproxy => {
                let sock = self.socket.as_ref().expect("HAProxy has a socket");
                let layout = self.layout.as_ref().expect("HAProxy has a layout");
                let old = sock.info().ok().map(|i| i.pid);
                write_state_file(sock, layout, &self.settings)?;
                systemd::act(ctx.runner, &self.service, ServiceAction::Reload)?;
                let Some(old) = old else {
                    return self.unverified(ctx, "the admin socket does not answer");
                };
                let new = loop {
                    match sock.info() {
                        Ok(i) if i.pid != old => break i.pid,
                        _ if started.elapsed() > self.wait => bail!(
                            "HAProxy kept its old configuration after `systemctl reload {}`: its worker is still pid {old} after {} (see `journalctl -u {}`)",
                            self.service,
                            show_duration(self.wait),
                            self.service
                        ),
                        _ => std::thread::sleep(Duration::from_millis(50)),
                    }
                };
                // The new worker must run the file's servers; anything the
                // state file restored differently is brought in line.
                let (_, live) = sock.servers()?;
                let cmds = haproxy::runtime_commands(layout, &live, &self.settings.ports).map_err(
                    |e| {
                        anyhow!(
                            "after the reload, {e}: does `{}` load {}? (--file, --service)",
                            self.service,
                            self.file.display()
                        )
                    },
                )?;
                if !cmds.is_empty() {
                    apply_verified(sock, &cmds, layout, &self.settings).with_context(|| {
                        format!(
                            "after `systemctl reload {}`, bringing the new worker's servers to the file",
                            self.service
                        )
                    })?;
                }
                self.verified(
                    ctx,
                    format!("reloaded {} (worker pid {old} → {new})", self.service),
                );
                Ok(())
            }
            Kind::Nginx => {
                let master = std::fs::read_to_string(ctx.host.path(&self.pid_file))
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok());
                let before = master.map(children).unwrap_or_default();
                systemd::act(ctx.runner, &self.service, ServiceAction::Reload)?;
                let Some(master) = master else {
                    return self.unverified(ctx, "no pid file to read the master from");
                };
                loop {
                    let now = children(master);
                    if now.iter().any(|p| !before.contains(p)) {
                        break;
                    }
                    if started.elapsed() > self.wait {
                        bail!(
                            "Nginx started no new worker within {} of `systemctl reload {}`: it kept its old configuration (see its error log)",
                            show_duration(self.wait),
                            self.service
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                self.verified(
                    ctx,
                    format!("reloaded {} (new workers started)", self.service),
                );
                Ok(())
            }
        }
    }
}

/// The plan of a proposal: check, install, runtime changes or reload.
fn plan_of(host: &Host, cfg: &LbConfig, p: &Proposal) -> Result<(Plan, Option<Arc<Reload>>)> {
    let mut plan = Plan::new(format!(
        "{} follows the registry ({} origin{}, {} edge{} in rotation)",
        cfg.kind.name(),
        p.decision.desired.origin.len(),
        if p.decision.desired.origin.len() == 1 {
            ""
        } else {
            "s"
        },
        p.decision.desired.edge.len(),
        if p.decision.desired.edge.len() == 1 {
            ""
        } else {
            "s"
        },
    ));
    let marker = pending_marker(cfg.kind);
    let socket = (cfg.kind == Kind::Haproxy).then(|| admin_socket(host, cfg));
    if p.file_changes() {
        plan.push(Step::Action(Arc::new(Check {
            kind: cfg.kind,
            file: p.current.file.clone(),
            text: p.new_text.clone(),
        })));
        let lg = last_good(&p.current.file);
        let mut changes = vec![
            FileChange {
                path: p.current.file.clone(),
                before: Some(p.current.text.clone()),
                after: Some(p.new_text.clone()),
                meta_before: Some(p.current.meta),
                meta: p.current.meta,
                internal: false,
            },
            FileChange {
                path: lg.clone(),
                before: host.read_optional(&lg)?,
                after: Some(p.current.text.clone()),
                meta_before: host.meta(&lg)?,
                meta: private_meta(0o600),
                internal: true,
            },
        ];
        if (p.reload.is_some() || p.owe.is_some()) && !host.exists(&marker) {
            changes.push(FileChange {
                path: marker.clone(),
                before: None,
                after: Some(format!("{} reload owed\n", cfg.kind.name()).into_bytes()),
                meta_before: None,
                meta: private_meta(0o600),
                internal: true,
            });
        }
        plan.files(
            format!("{}: the ams-agent section", p.current.file.display()),
            changes,
        );
    }
    if !p.runtime.is_empty() {
        plan.push(Step::Action(Arc::new(Runtime {
            socket: socket.clone().expect("HAProxy"),
            cmds: p.runtime.clone(),
            layout: p.layout.clone().expect("HAProxy"),
            settings: p.settings.clone(),
        })));
    }
    if cfg.kind == Kind::Haproxy
        && p.reload.is_none()
        && (p.file_changes() || !p.runtime.is_empty())
    {
        plan.push(Step::Action(Arc::new(StateFile {
            socket: socket.clone().expect("HAProxy"),
            layout: p.layout.clone().expect("HAProxy"),
            settings: p.settings.clone(),
        })));
    }
    let mut reload = None;
    if let Some(why) = &p.reload {
        let r = Arc::new(Reload {
            kind: cfg.kind,
            file: cfg.file.clone(),
            why: why.clone(),
            service: cfg.service.clone(),
            wait: cfg.reload_wait,
            socket,
            layout: p.layout.clone(),
            settings: p.settings.clone(),
            pid_file: cfg.pid_file.clone(),
            marker: marker.clone(),
            done: Default::default(),
        });
        plan.push(Step::Action(r.clone()));
        reload = Some(r);
    }
    Ok((plan, reload))
}

/// How a cycle ended, for the report and the record.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub lines: Vec<String>,
    pub reloaded: Option<String>,
    pub runtime: usize,
}

/// Applies a proposal under the host lock (the caller takes it).
pub fn apply(
    host: &Host,
    runner: &dyn CommandRunner,
    cfg: &LbConfig,
    p: &Proposal,
    progress: bool,
) -> Result<Applied> {
    let mut out = Applied::default();
    if p.is_noop() {
        return Ok(out);
    }
    let (plan, reload) = plan_of(host, cfg, p)?;
    if p.file_changes() {
        if let Some(dir) = last_good(&p.current.file).parent() {
            host.create_dir_all(dir, 0o700)?;
        }
    }
    plan.apply(&ApplyCtx {
        host,
        runner,
        progress,
    })?;
    if p.file_changes() {
        out.lines.push(format!(
            "installed the new {} (checked; the previous one is kept as {})",
            p.current.file.display(),
            host.path(&last_good(&p.current.file)).display()
        ));
    }
    if !p.runtime.is_empty() {
        out.runtime = p.runtime.len();
        out.lines.push(format!(
            "applied {} change{} through HAProxy's Runtime API; no reload",
            p.runtime.len(),
            if p.runtime.len() == 1 { "" } else { "s" }
        ));
    }
    if let Some(r) = reload {
        let done = r.done.lock().unwrap().clone().unwrap_or_default();
        out.lines.push(format!("{done}: {}", r.why));
        out.reloaded = Some(r.why.clone());
    } else if p.file_changes() && p.runtime.is_empty() && p.running {
        out.lines
            .push("nothing to reload: the running balancer already matches".into());
    }
    Ok(out)
}

/// The dry run of a proposal: the plan, checked but not applied.
/// Returns the text and the time the checker took.
pub fn dry_run(
    host: &Host,
    runner: &dyn CommandRunner,
    cfg: &LbConfig,
    p: &Proposal,
) -> Result<(String, Duration)> {
    let (plan, _) = plan_of(host, cfg, p)?;
    let t = Instant::now();
    if p.file_changes() {
        check_candidate(host, runner, cfg.kind, &p.current.file, &p.new_text, true)
            .context("the dry run checked the new file")?;
    }
    let checked = t.elapsed();
    let mut text = plan.render();
    // The plan shows no diff of a file that is not UTF-8 (a Latin-1
    // comment outside the markers): show the changed lines here.
    if p.file_changes() && std::str::from_utf8(&p.current.text).is_err() {
        let (old, new) = (
            String::from_utf8_lossy(&p.current.text),
            String::from_utf8_lossy(&p.new_text),
        );
        let name = p.current.file.display().to_string();
        text.push_str("   (not UTF-8; its changed lines, other bytes shown as \u{fffd}:)\n");
        let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
        for line in diff
            .unified_diff()
            .context_radius(1)
            .header(&name, &name)
            .to_string()
            .lines()
        {
            text.push_str("   ");
            text.push_str(&escape(line));
            text.push('\n');
        }
    }
    Ok((text, checked))
}

/// Human lines about the decision: changes, holds, waiting, refused.
pub fn decision_lines(p: &Proposal) -> Vec<String> {
    let mut out = p.changes();
    for d in &p.decision.displaced {
        out.push(format!(
            "address reused: {} ({}) leaves at once: {} is now node {}'s, in rotation by the registry",
            escape(d.id.as_str()),
            d.role.name(),
            d.addr,
            escape(d.by.as_str())
        ));
    }
    for h in &p.decision.holds {
        out.push(format!(
            "held by a guard: {}; kept: {}",
            h.reason,
            h.kept_list()
        ));
    }
    for w in &p.decision.waiting {
        out.push(format!(
            "waiting: {} {} the {}s in {} ({}; --settle)",
            w.id,
            if w.joins { "joins" } else { "leaves" },
            w.role.name(),
            show_duration(Duration::from_millis(w.remaining_ms)),
            escape(&w.why)
        ));
    }
    for r in &p.view.refused {
        out.push(format!("refused: node {}: {}", r.id, r.why));
    }
    out.extend(p.notes.iter().cloned());
    out
}

/// Reads the registry once (fresh client each time in one-shot mode),
/// only the nodes of AMS node group `node_group` when given.
pub async fn read_registry(
    reg: &Registry,
    node_group: Option<&str>,
) -> Result<(RegistryView, Timing), crate::mongo::error::RegistryError> {
    let t = Instant::now();
    let (mut docs, now) = reg.list().await?;
    if let Some(g) = node_group {
        docs.retain(|d| membership::in_node_group(d, g));
    }
    let mut timing = Timing {
        registry: t.elapsed(),
        ..Default::default()
    };
    let now = now.unwrap_or_else(mongodb::bson::DateTime::now);
    let t = Instant::now();
    let view = membership::view(&docs, now);
    timing.view = t.elapsed();
    Ok((view, timing))
}

/// The follower's memory between cycles.
pub struct Follower<'a> {
    pub host: &'a Host,
    pub runner: &'a dyn CommandRunner,
    pub cfg: LbConfig,
    pub record: Record,
    pub lock: &'a dyn Fn() -> Result<Option<HostLock>>,
    pub progress: bool,
}

/// Debounce state of a reload waiting for its burst to end.
struct Pending {
    first: Instant,
    last: Instant,
    text: Vec<u8>,
}

impl Follower<'_> {
    fn update_record(&mut self, p: &Proposal, applied: Option<&Applied>) -> Record {
        let mut r = self.record.clone();
        r.kind = Some(self.cfg.kind);
        r.file = self.cfg.file.clone();
        r.socket = (self.cfg.kind == Kind::Haproxy).then(|| self.cfg.socket.clone());
        r.service = self.cfg.service.clone();
        r.registry = self.cfg.target.shown();
        r.node_group = self.cfg.node_group.clone();
        r.registry_down_since = None;
        let now = crate::config::unix_now();
        r.holds = p
            .decision
            .holds
            .iter()
            .map(|h| Held {
                since: self
                    .record
                    .holds
                    .iter()
                    .find(|o| o.hold.role == h.role)
                    .map_or(now, |o| o.since),
                hold: h.clone(),
            })
            .collect();
        r.waiting = p.decision.waiting.clone();
        r.refused = p.view.refused.clone();
        if let Some(a) = applied {
            r.applied = p.decision.desired.clone();
            if let Some(why) = &a.reloaded {
                r.last_reload = Some(Event::now(why.clone()));
            }
            if a.runtime > 0 {
                r.last_runtime = Some(Event::now(format!(
                    "{} command{}",
                    a.runtime,
                    if a.runtime == 1 { "" } else { "s" }
                )));
            }
            r.last_error = None;
        }
        r
    }

    fn save(&mut self, r: Record, force: bool) {
        if !force && r.same_as(&self.record) {
            self.record = r;
            return;
        }
        let res = (self.lock)().and_then(|_lock| r.save(self.host));
        if let Err(e) = res {
            tracing::warn!("could not write the status record: {e:#}");
        }
        self.record = r;
    }

    /// Logs guard changes: one line when a guard starts holding, one when
    /// it lets go.
    fn log_guards(&self, p: &Proposal) {
        for h in &p.decision.holds {
            if !self.record.holds.iter().any(|o| o.hold.role == h.role) {
                tracing::warn!(
                    "guard: {}; keeping the last good {}s in rotation ({}) and retrying",
                    h.reason,
                    h.role.name(),
                    h.kept_list()
                );
            }
        }
        for o in &self.record.holds {
            if !p.decision.holds.iter().any(|h| h.role == o.hold.role) {
                tracing::info!(
                    "guard released: the {}s follow the registry again (held for {})",
                    o.hold.role.name(),
                    show_duration(Duration::from_secs(
                        crate::config::unix_now().saturating_sub(o.since)
                    ))
                );
            }
        }
    }

    /// One-shot: one cycle, its report printed. Returns the lines.
    pub fn once(&mut self, dry_run: bool) -> Result<Vec<String>> {
        let rt = crate::host::runtime()?;
        let target = self.cfg.target.clone();
        let deadlines = Deadlines::within(self.cfg.timeout);
        let (view, read_timing) = rt
            .block_on(async {
                let reg = Registry::open(&target, deadlines).await?;
                let v = read_registry(&reg, self.cfg.node_group.as_deref()).await;
                reg.close().await;
                v
            })
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "reading the node registry {}.{}; the balancer was left as it was",
                    target.database, target.collection
                )
            })?;
        let mut tracker = self.record.tracker.clone();
        let mut p = propose(self.host, self.runner, &self.cfg, view, &mut tracker)?;
        p.timing.registry = read_timing.registry;
        p.timing.view = read_timing.view;
        let mut lines = decision_lines(&p);
        if dry_run {
            let (text, checked) = dry_run_text(self.host, self.runner, &self.cfg, &p)?;
            p.timing.check = checked;
            tracing::debug!("{}", p.timing.line());
            lines.push(text);
            return Ok(lines);
        }
        tracing::debug!("{}", p.timing.line());
        let lock = (self.lock)()?;
        // The file may have changed while waiting for the lock.
        let p = if lock.is_some() {
            let mut t = self.record.tracker.clone();
            let p2 = propose(self.host, self.runner, &self.cfg, p.view.clone(), &mut t)?;
            tracker = t;
            p2
        } else {
            p
        };
        let result = apply(self.host, self.runner, &self.cfg, &p, self.progress);
        let mut r = match &result {
            Ok(a) => self.update_record(&p, Some(a)),
            Err(e) => {
                let mut r = self.update_record(&p, None);
                r.last_error = Some(Event::now(format!("{e:#}")));
                r
            }
        };
        r.tracker = tracker;
        if let Err(e) = r.save(self.host) {
            tracing::warn!("could not write the status record: {e:#}");
        }
        drop(lock);
        self.record = r;
        let a = result?;
        if p.is_noop() {
            lines.push(if p.decision.holds.is_empty() {
                "nothing to change: the balancer already follows the registry".into()
            } else {
                "nothing changed: the balancer keeps its last good configuration where a guard holds (see above)".into()
            });
        }
        lines.extend(a.lines);
        Ok(lines)
    }

    /// `--watch`: cycles every poll until SIGTERM/SIGINT.
    pub fn watch(&mut self) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = crate::host::runtime()?;
        let (mut term, mut int) = rt
            .block_on(async {
                Ok::<_, std::io::Error>((
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::interrupt())?,
                ))
            })
            .context("listening for SIGTERM")?;
        let target = self.cfg.target.clone();
        let deadlines = Deadlines::within(self.cfg.timeout);
        let mut registry: Option<Registry> = None;
        let mut tracker = self.record.tracker.clone();
        let mut down_since: Option<Instant> = None;
        let mut pending: Option<Pending> = None;
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Duration::ZERO;
        let mut last_error = String::new();
        let mut first = true;
        tracing::info!(
            "following the registry {} {}.{}{} into {} ({}) every {}",
            target.shown(),
            target.database,
            target.collection,
            self.cfg
                .node_group
                .as_deref()
                .map(|g| format!(" (node group {} only)", escape(g)))
                .unwrap_or_default(),
            self.cfg.kind.name(),
            self.cfg.file.display(),
            show_duration(self.cfg.poll)
        );
        loop {
            let started = Instant::now();
            let read = rt.block_on(async {
                tokio::select! {
                    r = async {
                        if registry.is_none() {
                            registry = Some(Registry::open(&target, deadlines).await?);
                        }
                        read_registry(
                            registry.as_ref().expect("opened"),
                            self.cfg.node_group.as_deref(),
                        )
                        .await
                    } => Some(r),
                    _ = term.recv() => None,
                    _ = int.recv() => None,
                }
            });
            let Some(read) = read else { break };
            match read {
                Err(e) => {
                    if down_since.is_none() {
                        tracing::warn!(
                            "the registry does not answer ({e}); keeping the last good configuration and retrying every {}",
                            show_duration(self.cfg.poll)
                        );
                        down_since = Some(Instant::now());
                        let mut r = self.record.clone();
                        r.registry_down_since = Some(crate::config::unix_now());
                        self.save(r, true);
                    }
                    if e.failure == crate::mongo::error::Failure::Config {
                        registry = None;
                    }
                }
                Ok((view, _)) => {
                    if let Some(since) = down_since.take() {
                        tracing::info!(
                            "the registry answers again after {}; following it",
                            show_duration(since.elapsed())
                        );
                    }
                    let outcome =
                        self.watch_cycle(view, &mut tracker, &mut pending, first, &mut retry_at);
                    first = false;
                    match outcome {
                        Ok(()) => {
                            backoff = Duration::ZERO;
                            last_error.clear();
                        }
                        Err(e) => {
                            let msg = format!("{e:#}");
                            backoff = if backoff.is_zero() {
                                Duration::from_secs(5)
                            } else {
                                (backoff * 2).min(Duration::from_secs(300))
                            };
                            retry_at = Some(Instant::now() + backoff);
                            if msg != last_error {
                                tracing::error!("{msg}; retrying in {}", show_duration(backoff));
                                last_error = msg;
                            } else {
                                tracing::debug!("still failing: {msg}");
                            }
                        }
                    }
                }
            }
            let wait = self.cfg.poll.saturating_sub(started.elapsed());
            let stop = rt.block_on(async {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => false,
                    _ = term.recv() => true,
                    _ = int.recv() => true,
                }
            });
            if stop {
                break;
            }
        }
        if let Some(reg) = registry {
            rt.block_on(reg.close());
        }
        tracing::info!("stopped following the registry");
        Ok(())
    }

    fn watch_cycle(
        &mut self,
        view: RegistryView,
        tracker: &mut Tracker,
        pending: &mut Option<Pending>,
        first: bool,
        retry_at: &mut Option<Instant>,
    ) -> Result<()> {
        let p = propose(self.host, self.runner, &self.cfg, view, tracker)?;
        self.log_guards(&p);
        let record_now = {
            let mut r = self.update_record(&p, None);
            r.tracker = tracker.clone();
            r
        };
        if p.is_noop() {
            *pending = None;
            self.save(record_now, false);
            return Ok(());
        }
        if let Some(at) = *retry_at {
            if Instant::now() < at {
                self.save(record_now, false);
                return Ok(());
            }
        }
        // A reload waits for the burst of changes to end: a quiet period
        // without a new change, or the longest wait since the first.
        if p.reload.is_some() && !first {
            let now = Instant::now();
            let pend = pending.get_or_insert_with(|| Pending {
                first: now,
                last: now,
                text: p.new_text.clone(),
            });
            if pend.text != p.new_text {
                pend.text = p.new_text.clone();
                pend.last = now;
            }
            if now.duration_since(pend.last) < self.cfg.quiet
                && now.duration_since(pend.first) < self.cfg.max_wait
            {
                tracing::debug!("a reload waits for the changes to settle");
                self.save(record_now, false);
                return Ok(());
            }
        }
        for l in decision_lines(&p) {
            tracing::info!("{l}");
        }
        let lock = (self.lock)()?;
        let p = propose(self.host, self.runner, &self.cfg, p.view.clone(), tracker)?;
        let result = apply(self.host, self.runner, &self.cfg, &p, false);
        drop(lock);
        *pending = None;
        match result {
            Ok(a) => {
                *retry_at = None;
                for l in &a.lines {
                    tracing::info!("{l}");
                }
                let mut r = self.update_record(&p, Some(&a));
                r.tracker = tracker.clone();
                self.save(r, true);
                Ok(())
            }
            Err(e) => {
                let mut r = self.update_record(&p, None);
                r.tracker = tracker.clone();
                r.last_error = Some(Event::now(format!("{e:#}")));
                self.save(r, false);
                Err(e)
            }
        }
    }
}

fn dry_run_text(
    host: &Host,
    runner: &dyn CommandRunner,
    cfg: &LbConfig,
    p: &Proposal,
) -> Result<(String, Duration)> {
    let (mut text, checked) = dry_run(host, runner, cfg, p)?;
    if p.is_noop() {
        text = "nothing to change: the balancer already follows the registry (dry run)\n".into();
    }
    Ok((text.trim_end().to_string(), checked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::model::{Member, MemberState, NodeId};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// An admin socket that reports `layout` with every slot in maint at
    /// the placeholder, a new pid after the first `show info`, and refuses
    /// every `set` command.
    fn stubborn_haproxy(path: &Path, layout: &Layout) -> std::thread::JoinHandle<()> {
        let mut dump = String::from(
            "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n",
        );
        for (b, slots) in layout {
            for (i, slot) in slots.iter().enumerate() {
                dump.push_str(&format!(
                    "4 {} {} {} 127.0.0.1 0 1 1 1 5 15 3 2 6 0 0 0 - 1 - 0 0 - - 0\n",
                    b.name(),
                    i + 1,
                    slot.name
                ));
            }
        }
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let mut infos = 0;
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    return;
                }
                let answer = if line.starts_with("show info") {
                    infos += 1;
                    format!(
                        "Name: HAProxy\nPid: {}\n",
                        if infos == 1 { 100 } else { 200 }
                    )
                } else if line.starts_with("show servers state") {
                    dump.clone()
                } else if line.starts_with("quit") {
                    return;
                } else {
                    "No such server.\n".into()
                };
                let _ = conn.write_all(answer.as_bytes());
            }
        })
    }

    #[test]
    fn an_own_section_that_cannot_be_read_back_is_refused_not_taken_for_empty() {
        let dir = std::env::temp_dir().join(format!("ams-agent-section-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        let host = Host::new(&dir, Default::default());
        let file = Path::new("/etc/lb.cfg");
        let cases: [(Kind, &str, bool); 6] = [
            (Kind::Haproxy, "global\n", true),
            (
                Kind::Haproxy,
                "global\n# BEGIN ams-agent lb\n# END ams-agent lb\n",
                true,
            ),
            (
                Kind::Haproxy,
                "global\n# BEGIN ams-agent lb\nbackend ams_origin\n    server i-o1 10.0.1.5:5080 check # hand-made\n# END ams-agent lb\n",
                false,
            ),
            (Kind::Nginx, "http {\n}\n", true),
            (
                Kind::Nginx,
                "http {\n# BEGIN ams-agent lb (http)\n\n# END ams-agent lb (http)\n}\n",
                true,
            ),
            (
                Kind::Nginx,
                "http {\n# BEGIN ams-agent lb (http)\nupstream ams_origin {\n    server 10.0.1.5:5080; # someone's\n}\n# END ams-agent lb (http)\n}\n",
                false,
            ),
        ];
        for (kind, text, ok) in cases {
            std::fs::write(dir.join("etc/lb.cfg"), text).unwrap();
            match read_file(&host, kind, file) {
                Ok(c) => {
                    assert!(ok, "{kind:?} {text}: read as {:?}", c.members);
                    assert_eq!(c.members, Membership::default());
                }
                Err(e) => {
                    assert!(!ok, "{kind:?} {text}: {e:#}");
                    let msg = format!("{e:#}");
                    assert!(
                        msg.contains("--file /etc/lb.cfg") && msg.contains("delete the section"),
                        "{msg}"
                    );
                    assert_eq!(crate::error::exit_code(&e), 2);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn commands_refused_after_a_reload_fail_the_reload_naming_them() {
        let dir = std::env::temp_dir().join(format!("ams-agent-follow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock_path = dir.join("admin.sock");
        let desired = Membership {
            origin: vec![Member {
                id: NodeId::parse("i-o1").unwrap(),
                addr: "10.0.1.5".parse().unwrap(),
                state: MemberState::Ready,
            }],
            edge: vec![],
        };
        let layout = haproxy::fresh(&desired, 1);
        let server = stubborn_haproxy(&sock_path, &layout);
        let mut settings = crate::lb::model::test_settings();
        settings.state_file = dir.join("server-state");
        let socket = AdminSocket::new(
            Path::new("/run/haproxy/admin.sock"),
            sock_path.clone(),
            Duration::from_secs(2),
        );
        let reload = Reload {
            kind: Kind::Haproxy,
            file: "/etc/haproxy/haproxy.cfg".into(),
            why: "the section changed".into(),
            service: "haproxy".into(),
            wait: Duration::from_secs(2),
            socket: Some(socket.clone()),
            layout: Some(layout),
            settings,
            pid_file: "/run/nginx.pid".into(),
            marker: pending_marker(Kind::Haproxy),
            done: Default::default(),
        };
        let host = Host::new(&dir, Default::default());
        let runner = crate::host::runner::RecordingRunner::new();
        let err = reload
            .apply(&ApplyCtx {
                host: &host,
                runner: &runner,
                progress: false,
            })
            .expect_err("HAProxy refused every command");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("set server ams_origin/") && msg.contains("No such server"),
            "{msg}"
        );
        assert!(reload.done.lock().unwrap().is_none());
        let _ = socket.send("quit");
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
