//! certbot, run non-interactively through the command runner: the
//! `certonly` command line with the deploy hook certbot stores for its own
//! renewal timer, the port-80 check before the standalone authenticator
//! binds it, and AMS's iptables 80→5080 redirect, lifted for the duration
//! and restored even when certbot fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::host::{CommandRunner, CommandSpec, Host};

/// certbot's folders on the host (its defaults).
pub const CONFIG_DIR: &str = "/etc/letsencrypt";
pub const WORK_DIR: &str = "/var/lib/letsencrypt";
pub const LOGS_DIR: &str = "/var/log/letsencrypt";
pub const STAGING_SERVER: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How certbot proves control of the domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticator {
    /// certbot's own web server on the HTTP-01 port (80 unless told).
    Standalone { port: u16 },
    /// Files under a folder an existing web server serves.
    Webroot(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub authenticator: Authenticator,
    /// `--server`; None: Let's Encrypt (or its staging with `staging`).
    pub server: Option<String>,
    pub staging: bool,
    /// The command certbot runs after every issuance and renewal.
    pub deploy_hook: String,
}

/// certbot's folders as real paths (under the root prefix in tests).
pub fn dirs(host: &Host) -> [(String, PathBuf); 3] {
    [
        ("--config-dir".into(), host.path(Path::new(CONFIG_DIR))),
        ("--work-dir".into(), host.path(Path::new(WORK_DIR))),
        ("--logs-dir".into(), host.path(Path::new(LOGS_DIR))),
    ]
}

fn base(host: &Host, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if !host.is_real_root() {
        for (flag, dir) in dirs(host) {
            all.push(flag);
            all.push(dir.display().to_string());
        }
    }
    all
}

/// `certbot certonly …`: never a question, never a random sleep.
pub fn certonly(host: &Host, req: &Request) -> CommandSpec {
    let mut args = base(
        host,
        &[
            "certonly",
            "--non-interactive",
            "--agree-tos",
            "--keep-until-expiring",
        ],
    );
    match &req.email {
        Some(e) => args.extend(["--email".into(), e.clone()]),
        None => args.push("--register-unsafely-without-email".into()),
    }
    match &req.authenticator {
        Authenticator::Standalone { port } => args.extend([
            "--standalone".into(),
            "--http-01-port".into(),
            port.to_string(),
        ]),
        Authenticator::Webroot(dir) => {
            args.extend(["--webroot".into(), "-w".into(), dir.display().to_string()])
        }
    }
    if let Some(server) = &req.server {
        args.extend(["--server".into(), server.clone()]);
    } else if req.staging {
        args.extend(["--server".into(), STAGING_SERVER.into()]);
    }
    for d in &req.domains {
        args.extend(["-d".into(), d.clone()]);
    }
    args.extend(["--deploy-hook".into(), req.deploy_hook.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let spec = CommandSpec::new("certbot", &args).timeout(Duration::from_secs(600));
    // The deploy hook runs under certbot: it must see the same host.
    if host.is_real_root() {
        spec
    } else {
        spec.env("AMS_AGENT_ROOT", &host.root().display().to_string())
    }
}

/// The lineage folders certbot lists for exactly these domains
/// (`certbot certificates -d …`): certbot says where its certificate is,
/// nothing is guessed from the domain name.
pub fn certificates_for(
    host: &Host,
    runner: &dyn CommandRunner,
    domains: &[String],
) -> Result<Vec<Listed>> {
    let mut args = base(host, &["certificates"]);
    for d in domains {
        args.extend(["-d".into(), d.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let spec = CommandSpec::new("certbot", &args).timeout(Duration::from_secs(60));
    let out = runner
        .run(&spec)
        .context("listing certbot's certificates")?;
    if !out.success() {
        bail!(
            "listing certbot's certificates: `{}` failed: {}",
            spec.display(),
            out.stderr.trim()
        );
    }
    Ok(listed(&out.stdout))
}

/// One certificate of `certbot certificates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub dir: PathBuf,
    pub domains: Vec<String>,
    /// As certbot prints it (`2026-03-01 11:22:33+00:00`): sorts in time.
    pub expiry: String,
    /// certbot's `(VALID: n days)`.
    pub valid: bool,
}

/// The certificates of `certbot certificates` output, in its order.
pub fn listed(stdout: &str) -> Vec<Listed> {
    let mut out: Vec<Listed> = Vec::new();
    let mut cur: Option<Listed> = None;
    for line in stdout.lines().map(str::trim) {
        if line.starts_with("Certificate Name:") {
            cur = Some(Listed {
                dir: PathBuf::new(),
                domains: Vec::new(),
                expiry: String::new(),
                valid: false,
            });
        } else if let (Some(c), Some(d)) = (cur.as_mut(), line.strip_prefix("Domains:")) {
            c.domains = d.split_whitespace().map(str::to_ascii_lowercase).collect();
        } else if let (Some(c), Some(e)) = (cur.as_mut(), line.strip_prefix("Expiry Date:")) {
            let e = e.trim();
            c.expiry = e.split(" (").next().unwrap_or(e).to_string();
            c.valid = e.contains("(VALID");
        } else if let Some(p) = line.strip_prefix("Certificate Path:") {
            let dir = Path::new(p.trim()).parent().map(Path::to_path_buf);
            if let (Some(mut c), Some(dir)) = (cur.take(), dir) {
                c.dir = dir;
                out.push(c);
            }
        }
    }
    out
}

/// The lineage to install for `domains` when certbot lists several (a
/// `<domain>-0001` duplicate): the one whose names are exactly these (the
/// lineage certbot's `--keep-until-expiring` renews for them), else any
/// that holds them; among those the newest valid one (latest expiry).
/// Returns it with the reason, for the message.
pub fn choose_lineage<'a>(
    listed: &'a [Listed],
    domains: &[String],
) -> Option<(&'a Listed, &'static str)> {
    let mut wanted: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    wanted.sort();
    wanted.dedup();
    let exact = |l: &&Listed| {
        let mut names = l.domains.clone();
        names.sort();
        names.dedup();
        names == wanted
    };
    let newest = |set: Vec<&'a Listed>| {
        set.into_iter()
            .filter(|l| l.valid)
            .max_by(|a, b| a.expiry.cmp(&b.expiry))
    };
    let exact_set: Vec<&Listed> = listed.iter().filter(exact).collect();
    let n_exact = exact_set.len();
    if let Some(l) = newest(exact_set) {
        return Some((
            l,
            if n_exact == 1 {
                "its names are exactly these"
            } else {
                "its names are exactly these and it is the newest valid one"
            },
        ));
    }
    newest(listed.iter().collect()).map(|l| (l, "it is the newest valid one holding these names"))
}

/// Fails with what to install when certbot is not on PATH, before anything
/// (the iptables redirect) is touched.
pub fn require_installed() -> Result<()> {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join("certbot"))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    });
    if !found {
        bail!(
            "certbot is not installed (not found on PATH): `apt-get install -y certbot`, then run this again; nothing was changed"
        );
    }
    Ok(())
}

/// Makes the deploy hook certbot keeps for a lineage the one this run
/// asks for: certbot stores the hook only when it issues, so a later `cert`
/// with other options (`--for`, folders) would leave renewals installing
/// the old way. `lineage` is the real `…/live/<name>` folder.
pub fn keep_hook(host: &Host, lineage: &Path, hook: &str) -> Result<()> {
    let Some(name) = lineage.file_name() else {
        return Ok(());
    };
    let Some(config) = lineage.parent().and_then(Path::parent) else {
        return Ok(());
    };
    let conf = config
        .join("renewal")
        .join(format!("{}.conf", name.to_string_lossy()));
    let text = match std::fs::read_to_string(&conf) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", conf.display())),
    };
    let want = format!("renew_hook = {hook}");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match lines
        .iter()
        .position(|l| l.trim_start().starts_with("renew_hook"))
    {
        Some(i) if lines[i] == want => return Ok(()),
        Some(i) => lines[i] = want,
        None => match lines.iter().position(|l| l.trim() == "[renewalparams]") {
            Some(i) => lines.insert(i + 1, want),
            None => lines.extend(["[renewalparams]".to_string(), want]),
        },
    }
    let mut out = lines.join("\n");
    out.push('\n');
    // The file is certbot's: written in place of itself, atomically, with
    // its own mode.
    let meta = std::fs::metadata(&conf).with_context(|| format!("reading {}", conf.display()))?;
    use std::os::unix::fs::MetadataExt;
    let file_meta = crate::host::fs::FileMeta {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    };
    let host_path = match conf.strip_prefix(host.root()) {
        Ok(rel) if !host.is_real_root() => Path::new("/").join(rel),
        _ => conf.clone(),
    };
    host.write_atomic(&host_path, out.as_bytes(), file_meta)
        .with_context(|| format!("updating the deploy hook in {}", conf.display()))?;
    tracing::info!(
        "certbot's renewals of {} now run: {hook}",
        name.to_string_lossy()
    );
    Ok(())
}

/// The owner of a TCP port in LISTEN state: `(pid, command name)`, read
/// from `/proc/net/tcp{,6}` and the processes' sockets.
pub fn port_owner(port: u16) -> Option<(u32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if inodes.iter().any(|i| Path::new(i) == target) {
                let comm = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Some((pid, comm));
            }
        }
    }
    None
}

/// Fails with what to do when something already listens on the HTTP-01
/// port, before certbot runs (it would fail late, after the ACME order).
pub fn check_port_free(port: u16) -> Result<()> {
    let in_use = |addr: &str| {
        matches!(
            std::net::TcpListener::bind((addr, port)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
        )
    };
    if !(in_use("0.0.0.0") || in_use("::")) {
        return Ok(());
    }
    let who = match port_owner(port) {
        Some((pid, comm)) => format!("{comm} (pid {pid})"),
        None => "another process".to_string(),
    };
    bail!(
        "port {port} is in use by {who}, and certbot's standalone server needs it to answer the HTTP-01 challenge: stop it for the request (e.g. `systemctl stop {}`), or pass --webroot DIR with the folder it serves for /.well-known/acme-challenge/; nothing was changed",
        who.split(' ').next().unwrap_or("it")
    )
}

/// AMS's `iptables -t nat … --dport 80 -j REDIRECT --to-port 5080` rule,
/// which would send the ACME challenge to AMS instead of certbot.
const REDIRECT_RULE: &[&str] = &[
    "PREROUTING",
    "-p",
    "tcp",
    "--dport",
    "80",
    "-j",
    "REDIRECT",
    "--to-port",
    "5080",
];
/// Written before the rule is lifted: a crash leaves a note that the next
/// `cert` run acts on.
pub const REDIRECT_MARKER: &str = "/var/lib/ams-agent/iptables-redirect-lifted";

fn iptables(op: &str) -> CommandSpec {
    let mut args = vec!["-t", "nat", op];
    args.extend_from_slice(REDIRECT_RULE);
    CommandSpec::new("iptables", &args).timeout(Duration::from_secs(30))
}

/// The lifted redirect; [`LiftedRedirect::restore`] puts it back, and so
/// does dropping it (when certbot failed).
pub struct LiftedRedirect<'a> {
    host: &'a Host,
    runner: &'a dyn CommandRunner,
    restored: bool,
}

impl LiftedRedirect<'_> {
    pub fn restore(mut self) -> Result<()> {
        self.restored = true;
        restore_redirect(self.host, self.runner)
    }
}

impl Drop for LiftedRedirect<'_> {
    fn drop(&mut self) {
        if !self.restored {
            if let Err(e) = restore_redirect(self.host, self.runner) {
                tracing::error!("{e:#}");
            }
        }
    }
}

/// Puts the redirect back (once: `-C` checks first) and clears the note.
pub fn restore_redirect(host: &Host, runner: &dyn CommandRunner) -> Result<()> {
    let present = runner.run(&iptables("-C")).is_ok_and(|o| o.success());
    if !present {
        let out = runner
            .run(&iptables("-A"))
            .context("restoring the iptables redirect")?;
        if !out.success() {
            bail!(
                "restoring AMS's port 80 → 5080 redirect failed ({}); run `iptables -t nat -A {}` by hand",
                out.stderr.trim(),
                REDIRECT_RULE.join(" ")
            );
        }
        tracing::info!("restored the iptables redirect of port 80 to AMS's 5080");
    }
    host.remove(Path::new(REDIRECT_MARKER))
}

/// Lifts the redirect when it is there (and iptables exists); None when
/// there was nothing to lift.
pub fn lift_redirect<'a>(
    host: &'a Host,
    runner: &'a dyn CommandRunner,
) -> Result<Option<LiftedRedirect<'a>>> {
    let present = match runner.run(&iptables("-C")) {
        Ok(out) => out.success(),
        // No iptables on this host: no redirect either.
        Err(_) => false,
    };
    if !present {
        return Ok(None);
    }
    host.create_dir_all(Path::new(crate::host::fs::STATE_DIR), 0o700)?;
    host.write_atomic(
        Path::new(REDIRECT_MARKER),
        b"AMS's iptables redirect 80 -> 5080 was lifted for certbot\n",
        crate::host::fs::private_meta(0o600),
    )?;
    let out = runner
        .run(&iptables("-D"))
        .context("lifting the iptables redirect")?;
    if !out.success() {
        host.remove(Path::new(REDIRECT_MARKER))?;
        bail!(
            "lifting AMS's port 80 → 5080 redirect for certbot failed: {}",
            out.stderr.trim()
        );
    }
    tracing::info!("lifted the iptables redirect of port 80 to AMS's 5080 while certbot runs");
    Ok(Some(LiftedRedirect {
        host,
        runner,
        restored: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::runner::{Output, RecordingRunner};

    fn req(auth: Authenticator) -> Request {
        Request {
            domains: vec!["live.example.com".into(), "www.live.example.com".into()],
            email: None,
            authenticator: auth,
            server: None,
            staging: true,
            deploy_hook: "/usr/bin/ams-agent cert deploy --for both".into(),
        }
    }

    #[test]
    fn certonly_never_asks_and_registers_the_hook() {
        let host = Host::new("/", Default::default());
        let spec = certonly(&host, &req(Authenticator::Standalone { port: 80 }));
        assert_eq!(
            spec.display(),
            "certbot certonly --non-interactive --agree-tos --keep-until-expiring --register-unsafely-without-email --standalone --http-01-port 80 --server https://acme-staging-v02.api.letsencrypt.org/directory -d live.example.com -d www.live.example.com --deploy-hook /usr/bin/ams-agent cert deploy --for both"
        );
        let spec = certonly(&host, &req(Authenticator::Webroot("/var/www/html".into())));
        assert!(spec.display().contains(" --webroot -w /var/www/html "));
    }

    #[test]
    fn the_redirect_is_restored_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), Default::default());
        let runner = RecordingRunner::new();
        runner.reply("iptables -t nat -C", Output::ok(""));
        {
            let lifted = lift_redirect(&host, &runner).unwrap();
            assert!(lifted.is_some());
            assert!(host.exists(Path::new(REDIRECT_MARKER)));
            runner.reply("iptables -t nat -C", Output::failed(1, "no rule"));
        }
        let lines = runner.lines();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("iptables -t nat -D PREROUTING")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("iptables -t nat -A PREROUTING")),
            "{lines:?}"
        );
        assert!(!host.exists(Path::new(REDIRECT_MARKER)));
    }

    #[test]
    fn a_busy_port_names_its_process() {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let err = check_port_free(port).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("--webroot"), "{err}");
    }
}
