//! Installing the lineage certbot issued or renewed: into AMS (PEM files,
//! PKCS#12 key and trust stores, red5.properties, the https connector) and
//! into HAProxy (one PEM of chain and key, checked by `haproxy -c` before
//! the reload). Every file is written atomically; the AMS files of one
//! certificate land together, so a failure midway leaves the old
//! certificate working.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::inspect::Lineage;
use super::keystore;
use crate::ams::files::{Kind, Secret, change, load_existing, refuse_mount_point};
use crate::ams::jee;
use crate::ams::layout::{self, AmsLayout};
use crate::ams::mode::restart_marker;
use crate::ams::properties::Properties;
use crate::host::fs::{Cap, FileMeta, private_meta};
use crate::host::systemd::ServiceAction;
use crate::host::{CommandSpec, Host};
use crate::plan::{Action, ApplyCtx, FileChange, Plan, Step};

pub const HAPROXY_CERTS: &str = "/etc/haproxy/certs";
pub const HAPROXY_CONFIG: &str = "/etc/haproxy/haproxy.cfg";
/// The store password AMS ships with: never kept.
const AMS_DEFAULT_STORE_PASSWORD: &str = "password";

/// Where AMS is and how it is restarted.
#[derive(Debug, Clone)]
pub struct AmsTarget {
    pub layout: AmsLayout,
    /// The URL to wait for after the restart, and for how long; None: no
    /// restart.
    pub restart: Option<(String, Duration)>,
}

#[derive(Debug, Clone)]
pub struct HaproxyTarget {
    pub certs_dir: PathBuf,
    pub config: PathBuf,
    pub reload: bool,
}

/// A certbot lineage: the PEM files exactly as certbot wrote them, and
/// their parsed, cross-checked form (key matches the leaf, chain order).
pub struct Material {
    pub dir: PathBuf,
    pub fullchain: Vec<u8>,
    pub chain: Vec<u8>,
    pub privkey: Vec<u8>,
    pub parsed: Lineage,
}

impl Material {
    pub fn load(dir: &Path) -> Result<Self> {
        let optional = |name: &str| -> Result<Option<Vec<u8>>> {
            let path = dir.join(name);
            let shown = path.display().to_string();
            Ok(crate::host::fs::read_capped_real(&path, &shown, Cap::PEM)?.map(|(b, _)| b))
        };
        let read = |name: &str| -> Result<Vec<u8>> {
            optional(name)?.ok_or_else(|| {
                anyhow::anyhow!("reading {}: no such file", dir.join(name).display())
            })
        };
        // One read: the bytes checked are the bytes installed, even when
        // certbot renews the lineage meanwhile.
        let fullchain = read("fullchain.pem")?;
        let chain = read("chain.pem")?;
        let privkey = read("privkey.pem")?;
        let cert = optional("cert.pem")?;
        let parsed = Lineage::from_pem(&fullchain, Some(&chain), cert.as_deref(), &privkey)
            .with_context(|| format!("checking the certificate lineage in {}", dir.display()))?;
        Ok(Material {
            dir: dir.to_path_buf(),
            fullchain,
            chain,
            privkey,
            parsed,
        })
    }
}

/// The name a certificate is installed under: the subject's common name
/// (certbot's first `-d`), else its first DNS name.
pub fn primary_domain(m: &Material) -> Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(m.parsed.leaf())
        .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let name = match common_name {
        Some(cn) => cn,
        None => m
            .parsed
            .leaf_info()?
            .domains
            .first()
            .cloned()
            .context("the certificate names no domain")?,
    };
    // It becomes a file name and a property value.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*'))
    {
        bail!("the certificate's domain {name:?} is not a plain DNS name");
    }
    Ok(name.replace('*', "_wildcard"))
}

/// Owner and mode of a file AMS reads: its account when the host has one.
fn ams_meta(account: Option<(u32, u32)>, mode: u32) -> FileMeta {
    match account {
        Some((uid, gid)) => FileMeta { mode, uid, gid },
        None => private_meta(mode),
    }
}

/// A file replaced as a whole. A symlink (say, into certbot's live/
/// folder) is replaced by a file, never written through: certbot's own
/// files are not ours to change.
fn file(host: &Host, path: PathBuf, after: Vec<u8>, meta: FileMeta) -> Result<FileChange> {
    refuse_mount_point(host, &path)?;
    let cur = host.read_with_meta(&path, Cap::FILE)?;
    Ok(FileChange {
        path,
        before: cur.as_ref().map(|(b, _)| b.clone()),
        after: Some(after),
        meta_before: cur.map(|(_, m)| m),
        meta,
        internal: false,
    })
}

/// The AMS part: one transaction of seven files, then a restart and a wait.
pub fn plan_ams(host: &Host, m: &Material, target: &AmsTarget) -> Result<Plan> {
    let domain = primary_domain(m)?;
    let lineage = &m.parsed;
    let layout = &target.layout;
    layout.check(host)?;
    let mut plan = Plan::new(format!(
        "install the certificate for {domain} into Ant Media Server"
    ));
    let account = layout::service_account(host)?;
    if account.is_none() {
        tracing::warn!(
            "no `{}` account in /etc/passwd: the key and stores stay root-only (0600), which AMS cannot read unless it runs as root",
            layout::SERVICE_USER
        );
    }
    let conf = layout.home.join("conf");

    let red5_path = layout.red5_properties();
    refuse_mount_point(host, &red5_path)?;
    let red5_now = load_existing(host, &red5_path, Kind::Properties)?;
    let mut red5 = Properties::parse(&red5_now.text);

    // The store password: kept when it is a real one (not AMS's default,
    // not the domain as enable_ssl.sh set it), else a new random one.
    let keystore_path = conf.join("keystore.jks");
    let truststore_path = conf.join("truststore.jks");
    let old_password = red5
        .get("rtmps.keystorepass")
        .filter(|p| p.len() >= 16 && p != AMS_DEFAULT_STORE_PASSWORD && *p != domain)
        .filter(|p| red5.get("rtmps.truststorepass").as_deref() == Some(p.as_str()));
    let password = match &old_password {
        Some(p) => p.clone(),
        None => keystore::random_store_password()?,
    };
    // A store that already holds exactly this key and chain is kept as is
    // (PKCS#12 output is salted, so rebuilding would always differ).
    let keep =
        |path: &Path, matches: fn(&[u8], &str, &Lineage) -> bool| -> Result<Option<Vec<u8>>> {
            let Some(bytes) = host.read_optional(path)? else {
                return Ok(None);
            };
            Ok((old_password.is_some() && matches(&bytes, &password, lineage)).then_some(bytes))
        };
    let keystore_bytes = match keep(&keystore_path, keystore::store_matches)? {
        Some(b) => b,
        None => keystore::keystore_p12(lineage, &password)?,
    };
    let truststore_bytes = match keep(&truststore_path, keystore::truststore_matches)? {
        Some(b) => b,
        None => keystore::truststore_p12(lineage, &password)?,
    };

    red5.set_all(&[
        ("rtmps.keystorepass", &password),
        ("rtmps.truststorepass", &password),
        ("server.name", &domain),
    ])?;
    let jee_path = layout.jee_container();
    refuse_mount_point(host, &jee_path)?;
    let jee_now = load_existing(host, &jee_path, Kind::Xml)?;
    let xml = jee::set_https(&jee_now.text, true)
        .with_context(|| format!("enabling the https connector in {}", jee_path.display()))?;

    let mut changes = Vec::new();
    for (name, bytes, mode) in [
        ("fullchain.pem", m.fullchain.clone(), 0o644),
        ("chain.pem", m.chain.clone(), 0o644),
        ("privkey.pem", m.privkey.clone(), 0o600),
        ("keystore.jks", keystore_bytes, 0o600),
        ("truststore.jks", truststore_bytes, 0o600),
    ] {
        changes.push(file(host, conf.join(name), bytes, ams_meta(account, mode))?);
    }
    changes.extend([
        change(red5_now, red5.to_text(), Secret::ReadableBy(account))?,
        change(jee_now, xml, Secret::No)?,
    ]);
    // A restart that failed (or never came) in an earlier run is still
    // owed: the marker lands with the files and goes once AMS answers.
    let marker = restart_marker();
    let owed = host.exists(&marker);
    let files_change = changes.iter().any(|c| !c.is_noop());
    match &target.restart {
        Some((url, timeout)) => {
            if files_change && !owed {
                changes.push(pending(marker.clone(), "AMS restart"));
            }
            plan.files(format!("install the certificate for {domain}"), changes);
            if files_change || owed {
                plan.push(Step::Service {
                    unit: layout::SERVICE.into(),
                    action: ServiceAction::Restart,
                });
                plan.push(Step::WaitHttp {
                    what: "Ant Media Server".into(),
                    url: url.clone(),
                    timeout: *timeout,
                });
                plan.files(
                    "record that AMS serves the new certificate",
                    vec![done(marker)],
                );
            }
        }
        None => plan.files(format!("install the certificate for {domain}"), changes),
    }
    Ok(plan)
}

/// The internal file that says a restart (or reload) is still owed.
fn pending(path: PathBuf, what: &str) -> FileChange {
    FileChange {
        path,
        before: None,
        after: Some(format!("{what} pending after a certificate install\n").into_bytes()),
        meta_before: None,
        meta: private_meta(0o600),
        internal: true,
    }
}

/// Its removal, once the restart (or reload) happened.
fn done(path: PathBuf) -> FileChange {
    FileChange::remove_marker(path)
}

/// The HAProxy part: `<certs>/<domain>.pem` (chain then key, 0600, folder
/// 0700), `haproxy -c` with it in place (a refusal puts the old file
/// back), then `systemctl reload haproxy`.
pub fn plan_haproxy(host: &Host, m: &Material, target: &HaproxyTarget) -> Result<Plan> {
    let domain = primary_domain(m)?;
    let mut plan = Plan::new(format!("install the certificate for {domain} into HAProxy"));
    if !host.exists(&target.config) {
        bail!(
            "{} does not exist: is HAProxy installed here? (--haproxy-config names another file)",
            target.config.display()
        );
    }
    let mut pem = m.fullchain.clone();
    if !pem.ends_with(b"\n") {
        pem.push(b'\n');
    }
    pem.extend_from_slice(&m.privkey);
    let path = target.certs_dir.join(format!("{domain}.pem"));
    let dir_mode = host.meta(&target.certs_dir)?.map(|m| m.mode);
    if dir_mode != Some(0o700) {
        plan.push(Step::Action(Arc::new(PrivateDir {
            path: target.certs_dir.clone(),
        })));
    }
    let change = file(host, path.clone(), pem, private_meta(0o600))?;
    let old = change.before.clone();
    let pem_changed = !change.is_noop();
    // A check or reload that did not happen in an earlier run is owed.
    let marker = Path::new(crate::host::fs::STATE_DIR).join("haproxy-reload-pending");
    let owed = host.exists(&marker);
    let mut changes = vec![change];
    if pem_changed && !owed {
        changes.push(pending(marker.clone(), "HAProxy check and reload"));
    }
    plan.files(
        format!("{}: chain and key for {domain}", path.display()),
        changes,
    );
    if pem_changed || owed {
        plan.push(Step::Action(Arc::new(HaproxyCheck {
            config: target.config.clone(),
            pem: path,
            old: if pem_changed { old } else { None },
            restore: pem_changed,
        })));
        if target.reload {
            plan.push(Step::Service {
                unit: "haproxy".into(),
                action: ServiceAction::Reload,
            });
        }
        plan.files(
            "record that HAProxy serves the new certificate",
            vec![done(marker)],
        );
    }
    Ok(plan)
}

#[derive(Debug)]
struct PrivateDir {
    path: PathBuf,
}

impl Action for PrivateDir {
    fn summary(&self) -> String {
        format!("make {} a private folder (0700)", self.path.display())
    }

    fn apply(&self, ctx: &ApplyCtx) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        ctx.host.create_dir_all(&self.path, 0o700)?;
        let real = ctx.host.path(&self.path);
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode 0700 on {}", self.path.display()))
    }
}

/// `haproxy -c -f <config>` with the new PEM in place; a refusal puts the
/// previous file back (or removes the new one) before failing.
#[derive(Debug)]
struct HaproxyCheck {
    config: PathBuf,
    pem: PathBuf,
    old: Option<Vec<u8>>,
    /// Whether this run replaced the file (else it is only checked).
    restore: bool,
}

impl Action for HaproxyCheck {
    fn summary(&self) -> String {
        format!(
            "check the HAProxy configuration: haproxy -c -f {}",
            self.config.display()
        )
    }

    fn apply(&self, ctx: &ApplyCtx) -> Result<()> {
        let config = ctx.host.path(&self.config);
        let spec = CommandSpec::new("haproxy", &["-c", "-f", &config.display().to_string()])
            .timeout(Duration::from_secs(60));
        let out = match ctx.runner.run(&spec) {
            Ok(out) if out.success() => return Ok(()),
            Ok(out) => out,
            // haproxy missing or past its deadline: unchecked, so the new
            // file does not stay either.
            Err(e) => crate::host::Output::failed(-1, &format!("{e:#}")),
        };
        if !self.restore {
            bail!("haproxy -c refused the configuration: {}", out.tail(3));
        }
        // haproxy puts its [ALERT] lines on stdout or stderr by version.
        let both = crate::host::Output {
            stderr: format!("{}\n{}", out.stdout, out.stderr),
            ..out
        };
        let reason = both.tail(3);
        let restored = match &self.old {
            Some(old) => ctx.host.write_atomic(&self.pem, old, private_meta(0o600)),
            None => ctx.host.remove(&self.pem),
        };
        match restored {
            Ok(()) => bail!(
                "haproxy -c refused the configuration with the new certificate ({reason}); the previous {} was put back and HAProxy was not reloaded",
                self.pem.display()
            ),
            Err(e) => bail!(
                "haproxy -c refused the configuration with the new certificate ({reason}), and putting the previous {} back failed: {e:#}",
                self.pem.display()
            ),
        }
    }
}
