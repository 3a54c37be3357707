//! `ams-agent cert` end to end: real certbot against real Pebble on
//! loopback, the certificate installed into a test AMS tree (built from the
//! real AMS files) and a HAProxy folder, checked by real `keytool` and
//! real `haproxy -c`; renewals by `certbot renew` running the deploy hook
//! certbot stored. systemctl and iptables are fakes on PATH that log.

mod common;
mod fixture;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::acme::{self, Pebble};
use fixture::{AMS, Tree, error_line, fake_ams_http, stderr, stdout};

const DOMAIN: &str = "live.example.test";
const WWW: &str = "www.live.example.test";

struct CertHost {
    tree: Tree,
    pebble: Pebble,
    ams_url: String,
}

impl CertHost {
    fn new() -> Self {
        let pebble = Pebble::start();
        let tree = Tree::new();
        let haproxy_port = common::free_port();
        let h = CertHost {
            tree,
            pebble,
            ams_url: fake_ams_http(),
        };
        fs::create_dir_all(h.root().join("etc/haproxy")).unwrap();
        let pem = h.root().join(format!("etc/haproxy/certs/{DOMAIN}.pem"));
        fs::write(
            h.root().join("etc/haproxy/haproxy.cfg"),
            acme::haproxy_ssl_config(haproxy_port, &pem.display().to_string()),
        )
        .unwrap();
        h.fake_iptables(false);
        h
    }

    fn root(&self) -> PathBuf {
        self.tree.root()
    }

    fn live(&self, name: &str) -> PathBuf {
        self.root().join("etc/letsencrypt/live").join(name)
    }

    /// A fake `iptables` keeping AMS's redirect rule as a file.
    fn fake_iptables(&self, rule_present: bool) {
        let dir = self.tree.dir.path();
        let rule = dir.join("redirect-rule");
        if rule_present {
            fs::write(&rule, "").unwrap();
        }
        let log = dir.join("iptables.log");
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> {log}\ncase \"$3\" in\n-C) [ -e {rule} ]; exit $?;;\n-D) rm {rule};;\n-A) touch {rule};;\nesac\nexit 0\n",
            log = log.display(),
            rule = rule.display()
        );
        let p = self.tree.bin.join("iptables");
        fs::write(&p, script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn iptables_calls(&self) -> Vec<String> {
        fs::read_to_string(self.tree.dir.path().join("iptables.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.tree.command(args);
        cmd.env("AMS_AGENT_AMS_URL", &self.ams_url)
            .env("REQUESTS_CA_BUNDLE", self.pebble.ca_bundle())
            .env("XDG_CONFIG_HOME", self.tree.dir.path().join("xdg"))
            .env("NO_PROXY", "127.0.0.1,localhost");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        acme::run_bounded(&mut cmd, Duration::from_secs(180), "ams-agent cert")
    }

    /// `ams-agent cert --domain … --for both` against Pebble.
    fn issue(&self, domains: &[&str], extra: &[&str]) -> Output {
        let server = self.pebble.directory_url();
        let port = common::free_port().to_string();
        let mut args = vec!["cert"];
        for d in domains {
            args.extend(["--domain", d]);
        }
        if !extra.contains(&"--for") {
            args.extend(["--for", "both"]);
        }
        args.extend(["--acme-server", &server, "--http-01-port", &port]);
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// certbot's own renewal, as its timer runs it (same folders).
    fn renew(&self) -> Output {
        let mut cmd = Command::new("certbot");
        cmd.args([
            "renew",
            "--force-renewal",
            "--no-random-sleep-on-renew",
            "--non-interactive",
        ]);
        cmd.arg("--config-dir")
            .arg(self.root().join("etc/letsencrypt"));
        cmd.arg("--work-dir")
            .arg(self.root().join("var/lib/letsencrypt"));
        cmd.arg("--logs-dir")
            .arg(self.root().join("var/log/letsencrypt"));
        cmd.arg("--http-01-port")
            .arg(common::free_port().to_string());
        cmd.env("AMS_AGENT_ROOT", self.root())
            .env("AMS_AGENT_AMS_URL", &self.ams_url)
            .env("REQUESTS_CA_BUNDLE", self.pebble.ca_bundle())
            .env("XDG_CONFIG_HOME", self.tree.dir.path().join("xdg"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.tree.bin.display(),
                    std::env::var("PATH").unwrap()
                ),
            );
        acme::run_bounded(&mut cmd, Duration::from_secs(180), "certbot renew")
    }

    fn conf(&self, name: &str) -> Vec<u8> {
        fs::read(self.tree.path(&format!("{AMS}/conf/{name}"))).unwrap()
    }

    fn haproxy_pem(&self) -> Vec<u8> {
        fs::read(self.root().join(format!("etc/haproxy/certs/{DOMAIN}.pem"))).unwrap()
    }

    fn store_password(&self) -> String {
        let props = self.tree.read(&format!("{AMS}/conf/red5.properties"));
        props
            .lines()
            .find_map(|l| l.strip_prefix("rtmps.keystorepass="))
            .unwrap()
            .to_string()
    }

    /// `keytool -list -v` of a store, the password from a file.
    fn keytool_list(&self, store: &str) -> String {
        let pw = self.tree.dir.path().join("storepass");
        fs::write(&pw, self.store_password()).unwrap();
        let out = Command::new("keytool")
            .args(["-list", "-v", "-storetype", "PKCS12", "-keystore"])
            .arg(self.tree.path(&format!("{AMS}/conf/{store}")))
            .arg("-storepass:file")
            .arg(&pw)
            .output()
            .expect("running keytool (apt install default-jdk-headless)");
        assert!(out.status.success(), "keytool: {}", stderr(&out));
        stdout(&out)
    }
}

/// A lineage in certbot's layout, from the test PKI made at run time.
fn fixture_lineage() -> String {
    ams_agent::cert::testpki::lineage("live.example.test")
        .display()
        .to_string()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_certificate_is_issued_and_installed_into_ams_and_haproxy() {
    let h = CertHost::new();
    let out = h.issue(&[DOMAIN, WWW], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let live = h.live(DOMAIN);
    // AMS: the files certbot wrote, the key private.
    assert_eq!(
        h.conf("fullchain.pem"),
        fs::read(live.join("fullchain.pem")).unwrap()
    );
    assert_eq!(
        h.conf("chain.pem"),
        fs::read(live.join("chain.pem")).unwrap()
    );
    assert_eq!(
        h.conf("privkey.pem"),
        fs::read(live.join("privkey.pem")).unwrap()
    );
    let conf = h.tree.path(&format!("{AMS}/conf"));
    assert_eq!(mode(&conf.join("privkey.pem")), 0o600);
    assert_eq!(mode(&conf.join("keystore.jks")), 0o600);
    let props = h.tree.read(&format!("{AMS}/conf/red5.properties"));
    let pw = h.store_password();
    assert!(pw.len() >= 32 && pw != DOMAIN && pw != "password", "{pw}");
    assert!(props.contains(&format!("\nrtmps.truststorepass={pw}\n")));
    assert!(props.contains(&format!("\nserver.name={DOMAIN}\n")));
    let xml = h.tree.read(&format!("{AMS}/conf/jee-container.xml"));
    assert!(xml.contains("<!-- https start -->") && xml.contains("<!-- https end -->"));
    assert!(!stdout(&out).contains(&pw) && !stderr(&out).contains(&pw));

    // Java opens both stores: the key with the whole chain, the CAs trusted.
    let ks = h.keytool_list("keystore.jks");
    assert!(
        ks.contains("Alias name: tomcat") && ks.contains("Entry type: PrivateKeyEntry"),
        "{ks}"
    );
    let chain_len = acme::pem_certs(&String::from_utf8_lossy(&h.conf("fullchain.pem"))).len();
    assert!(
        ks.contains(&format!("Certificate chain length: {chain_len}")),
        "{ks}"
    );
    let ts = h.keytool_list("truststore.jks");
    assert!(ts.contains("Entry type: trustedCertEntry"), "{ts}");

    // HAProxy: chain then key, private, accepted by haproxy -c.
    let mut want = fs::read(live.join("fullchain.pem")).unwrap();
    want.extend(fs::read(live.join("privkey.pem")).unwrap());
    assert_eq!(h.haproxy_pem(), want);
    let certs = h.root().join("etc/haproxy/certs");
    assert_eq!(mode(&certs), 0o700);
    assert_eq!(mode(&certs.join(format!("{DOMAIN}.pem"))), 0o600);
    let check = acme::haproxy_check_file(&h.root().join("etc/haproxy/haproxy.cfg"));
    assert!(check.status.success(), "{}", acme::text(&check));

    // certbot keeps the hook for its timer; AMS restarted, HAProxy reloaded.
    let renewal = fs::read_to_string(
        h.root()
            .join(format!("etc/letsencrypt/renewal/{DOMAIN}.conf")),
    )
    .unwrap();
    assert!(renewal.contains("cert deploy --for both"), "{renewal}");
    let calls = h.tree.systemctl_calls();
    assert_eq!(calls, ["restart antmedia", "reload haproxy"]);

    // cert status.
    let st = h.run(&["cert", "status", "--json"]);
    assert!(st.status.success(), "{}", stderr(&st));
    let v: serde_json::Value = serde_json::from_str(&stdout(&st)).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[0]["for"], "ams");
    assert_eq!(list[1]["for"], "haproxy");
    let domains: Vec<&str> = list[0]["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        domains.contains(&DOMAIN) && domains.contains(&WWW),
        "{domains:?}"
    );
    assert!(
        list[0]["issuer"].as_str().unwrap().contains("Pebble"),
        "{v}"
    );
    assert!(list[0]["daysLeft"].as_i64().unwrap() > 300, "{v}");
    let table = h.run(&["cert", "status"]);
    assert!(stdout(&table).contains(DOMAIN), "{}", stdout(&table));

    // Asked again: certbot has nothing to do, nothing changes.
    let before = h.tree.snapshot();
    let again = h.issue(&[DOMAIN, WWW], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        h.tree
            .snapshot()
            .into_iter()
            .filter(|(k, _)| !k.contains("letsencrypt"))
            .collect::<Vec<_>>(),
        before
            .into_iter()
            .filter(|(k, _)| !k.contains("letsencrypt"))
            .collect::<Vec<_>>()
    );
    assert_eq!(h.tree.systemctl_calls().len(), 2, "restarted again");
}

#[test]
fn renewal_by_certbot_runs_the_hook_and_the_served_files_change() {
    let h = CertHost::new();
    // 90s is "1m 30s" to humantime: the stored hook must stay one word.
    let out = h.issue(&[DOMAIN], &["--ams-wait", "90s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (ams_before, haproxy_before, pw) =
        (h.conf("fullchain.pem"), h.haproxy_pem(), h.store_password());
    let renewed = h.renew();
    assert!(renewed.status.success(), "{}", acme::text(&renewed));
    assert!(
        !acme::text(&renewed).contains("reported error"),
        "{}",
        acme::text(&renewed)
    );
    // A successful hook writes nothing on stderr, which certbot would log
    // as a warning ("ran with error output") in its timer's journal.
    let log = fs::read_to_string(h.root().join("var/log/letsencrypt/letsencrypt.log")).unwrap();
    for text in [acme::text(&renewed), log] {
        assert!(!text.contains("ran with error output"), "{text}");
    }
    let live = h.live(DOMAIN);
    assert_ne!(
        h.conf("fullchain.pem"),
        ams_before,
        "AMS still serves the old certificate"
    );
    assert_eq!(
        h.conf("fullchain.pem"),
        fs::read(live.join("fullchain.pem")).unwrap()
    );
    assert_ne!(h.haproxy_pem(), haproxy_before);
    // The store password stays; the stores hold the new key.
    assert_eq!(h.store_password(), pw);
    assert_eq!(
        h.tree.systemctl_calls(),
        [
            "restart antmedia",
            "reload haproxy",
            "restart antmedia",
            "reload haproxy"
        ]
    );
}

#[test]
fn a_0001_lineage_is_the_one_deployed() {
    let h = CertHost::new();
    let first = h.issue(&[DOMAIN, "old.example.test"], &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    // Neither a subset nor a superset: certbot makes live.example.test-0001.
    let second = h.issue(&[DOMAIN, WWW], &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    let lineage = h.live(&format!("{DOMAIN}-0001"));
    assert!(lineage.is_dir(), "no -0001 lineage");
    assert_eq!(
        h.conf("fullchain.pem"),
        fs::read(lineage.join("fullchain.pem")).unwrap()
    );
    assert_ne!(
        h.conf("fullchain.pem"),
        fs::read(h.live(DOMAIN).join("fullchain.pem")).unwrap()
    );
}

/// A `<domain>-0001` duplicate of the same names (certbot made it, e.g.
/// with --duplicate): a later `cert` for these names chooses the newest
/// valid lineage, says which, and installs it.
#[test]
fn a_duplicate_lineage_is_chosen_and_named() {
    let h = CertHost::new();
    let first = h.issue(&[DOMAIN], &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let mut dup = Command::new("certbot");
    dup.args([
        "certonly",
        "--duplicate",
        "--non-interactive",
        "--agree-tos",
        "--register-unsafely-without-email",
        "--standalone",
        "--http-01-port",
    ])
    .arg(common::free_port().to_string())
    .arg("--server")
    .arg(h.pebble.directory_url())
    .args(["-d", DOMAIN])
    .arg("--config-dir")
    .arg(h.root().join("etc/letsencrypt"))
    .arg("--work-dir")
    .arg(h.root().join("var/lib/letsencrypt"))
    .arg("--logs-dir")
    .arg(h.root().join("var/log/letsencrypt"))
    .env("REQUESTS_CA_BUNDLE", h.pebble.ca_bundle());
    let made = acme::run_bounded(&mut dup, Duration::from_secs(180), "certbot --duplicate");
    assert!(made.status.success(), "{}", acme::text(&made));
    let dup_dir = h.live(&format!("{DOMAIN}-0001"));
    assert!(dup_dir.is_dir(), "no -0001 lineage");

    let again = h.issue(&[DOMAIN], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    let said = stdout(&again);
    assert!(
        said.contains("certbot lists 2 certificates")
            && said.contains(&format!("installing {}", dup_dir.display())),
        "{said}"
    );
    assert_eq!(
        h.conf("fullchain.pem"),
        fs::read(dup_dir.join("fullchain.pem")).unwrap()
    );
}

#[test]
fn a_busy_port_80_is_named_before_certbot_runs() {
    let h = CertHost::new();
    let (port, child) = acme::busy_port();
    let server = h.pebble.directory_url();
    let port_s = port.to_string();
    let out = h.run(&[
        "cert",
        "--domain",
        DOMAIN,
        "--acme-server",
        &server,
        "--http-01-port",
        &port_s,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "port {port} is in use by python3 (pid {})",
            child.id()
        )),
        "{line}"
    );
    assert!(line.contains("--webroot"), "{line}");
    assert!(
        !h.root().join("etc/letsencrypt/live").exists(),
        "certbot ran"
    );
}

#[test]
fn the_iptables_redirect_is_lifted_and_restored_even_when_certbot_fails() {
    let h = CertHost::new();
    h.fake_iptables(true);
    let out = h.issue(&[DOMAIN], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        h.iptables_calls(),
        ["-t nat -C", "-t nat -D", "-t nat -C", "-t nat -A"]
    );
    assert!(h.tree.dir.path().join("redirect-rule").exists());

    // certbot fails (no ACME server there): the rule comes back all the same.
    let dead = format!("https://127.0.0.1:{}/dir", common::free_port());
    let port = common::free_port().to_string();
    let out = h.run(&[
        "cert",
        "--domain",
        "x.example.test",
        "--acme-server",
        &dead,
        "--http-01-port",
        &port,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("getting the certificate"),
        "{}",
        error_line(&out)
    );
    assert!(
        h.tree.dir.path().join("redirect-rule").exists(),
        "the redirect was not restored"
    );
    assert!(
        !h.root()
            .join("var/lib/ams-agent/iptables-redirect-lifted")
            .exists()
    );
}

#[test]
fn a_failing_haproxy_check_keeps_the_old_pem() {
    let h = CertHost::new();
    let out = h.issue(&[DOMAIN], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let old = h.haproxy_pem();
    let renewed = h.renew();
    assert!(renewed.status.success());
    let new_lineage = h.live(DOMAIN);
    // Break HAProxy's configuration, then install the (renewed) lineage by hand.
    let cfg = h.root().join("etc/haproxy/haproxy.cfg");
    fs::write(
        &cfg,
        fs::read_to_string(&cfg).unwrap() + "    no-such-keyword here\n",
    )
    .unwrap();
    fs::write(
        h.root().join(format!("etc/haproxy/certs/{DOMAIN}.pem")),
        &old,
    )
    .unwrap();
    let calls = h.tree.systemctl_calls().len();
    let out = h.run(&[
        "cert",
        "deploy",
        "--for",
        "haproxy",
        "--lineage",
        new_lineage.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("haproxy -c refused"),
        "{}",
        error_line(&out)
    );
    assert_eq!(h.haproxy_pem(), old, "the old pem was not kept");
    assert_eq!(
        h.tree.systemctl_calls().len(),
        calls,
        "HAProxy was reloaded"
    );
}

#[test]
fn a_crash_midway_leaves_ams_with_the_old_or_the_new_certificate() {
    let h = CertHost::new();
    let out = h.issue(&[DOMAIN], &["--no-restart"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let renewed = h.renew();
    assert!(renewed.status.success());
    let lineage = h.live(DOMAIN);
    // The renewal's hook installed the new files; put the old ones back by
    // deploying the previous version kept in archive/.
    let names = [
        "fullchain.pem",
        "chain.pem",
        "privkey.pem",
        "keystore.jks",
        "truststore.jks",
        "red5.properties",
    ];
    let old_dir = h.tree.dir.path().join("old-lineage");
    fs::create_dir_all(&old_dir).unwrap();
    let archive = h.root().join(format!("etc/letsencrypt/archive/{DOMAIN}"));
    for f in ["fullchain", "chain", "privkey", "cert"] {
        fs::copy(
            archive.join(format!("{f}1.pem")),
            old_dir.join(format!("{f}.pem")),
        )
        .unwrap();
    }
    let deploy = |dir: &Path, crash: Option<u32>| {
        let mut cmd = h.command(&[
            "cert",
            "deploy",
            "--for",
            "ams",
            "--no-restart",
            "--lineage",
            dir.to_str().unwrap(),
        ]);
        if let Some(n) = crash {
            cmd.env("AMS_AGENT_CRASH_AT", n.to_string());
        }
        acme::run_bounded(&mut cmd, Duration::from_secs(60), "cert deploy")
    };
    let snapshot = || -> Vec<Vec<u8>> { names.iter().map(|n| h.conf(n)).collect() };
    assert!(deploy(&old_dir, None).status.success());
    let old = snapshot();
    assert!(deploy(&lineage, None).status.success());
    let new = snapshot();
    assert!(deploy(&old_dir, None).status.success());
    assert_ne!(old[0], new[0]);
    for n in [1, 3, 6, 10, 14, 20] {
        let out = deploy(&lineage, Some(n));
        let now = snapshot();
        // Killed: some files may be new only once the next run recovers.
        let fresh = deploy(&lineage, None);
        assert!(fresh.status.success(), "{}", stderr(&fresh));
        assert_eq!(
            snapshot()[..3],
            new[..3],
            "after a crash at {n} and a rerun"
        );
        if out.status.success() {
            assert_eq!(now[..3], new[..3]);
        } else {
            assert!(
                now[..3] == old[..3] || now[..3] == new[..3],
                "crash at {n}: a mix of old and new files"
            );
        }
        assert!(deploy(&old_dir, None).status.success());
    }
}

#[test]
fn dry_runs_change_nothing_and_never_show_the_key() {
    let h = CertHost::new();
    let before = h.tree.snapshot();
    let out = h.issue(&[DOMAIN], &["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("certbot certonly --non-interactive"),
        "{}",
        stdout(&out)
    );
    assert_eq!(h.tree.snapshot(), before);
    assert!(!h.root().join("etc/letsencrypt").exists());

    let fixture = fixture_lineage();
    let out = h.run(&[
        "--dry-run",
        "cert",
        "deploy",
        "--for",
        "both",
        "--lineage",
        &fixture,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("keystore.jks: new content"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    assert_eq!(h.tree.snapshot(), before);
    assert!(h.tree.systemctl_calls().is_empty());
}

#[test]
fn a_failing_deploy_under_certbot_fails_the_command() {
    let h = CertHost::new();
    // certbot issues, then the deploy hook fails (AMS does not restart):
    // certbot exits 0 all the same, `cert` must not.
    h.tree.fake_systemctl(1, "Job for antmedia.service failed");
    let out = h.issue(&[DOMAIN], &["--for", "ams"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("certbot got the certificate") && line.contains("installing it failed"),
        "{line}"
    );
}

#[test]
fn bad_input_is_refused_before_certbot() {
    let h = CertHost::new();
    for (args, expect) in [
        (vec!["cert", "--domain", "*.example.test"], "wildcard"),
        (vec!["cert", "--domain", "a b.example.test"], "--domain"),
        (vec!["cert", "--domain", "10.0.0.1"], "--domain"),
        (
            vec!["cert", "--domain", DOMAIN, "--email", "not-an-address"],
            "--email",
        ),
        (
            vec![
                "cert",
                "--domain",
                DOMAIN,
                "--acme-server",
                "http://127.0.0.1/dir",
            ],
            "--acme-server",
        ),
        (
            vec!["cert", "--domain", DOMAIN, "--ams-home", "/opt/a b"],
            "--ams-home",
        ),
        (
            vec!["cert", "--domain", DOMAIN, "--webroot", "/nowhere"],
            "--webroot",
        ),
        (vec!["cert", "deploy"], "--lineage"),
        (vec!["cert", "deploy", "--lineage", "/nowhere"], "--lineage"),
        (
            vec!["cert", "--domain", DOMAIN, "--email=-x@example.test"],
            "--email",
        ),
        (
            vec!["cert", "--domain", DOMAIN, "--http-01-port", "0"],
            "--http-01-port",
        ),
        (
            vec!["cert", "--domain", DOMAIN, "--ams-home", "/opt/nothing"],
            "/opt/nothing",
        ),
        (
            vec![
                "cert",
                "--domain",
                DOMAIN,
                "--for",
                "haproxy",
                "--haproxy-config",
                "/etc/none.cfg",
            ],
            "--haproxy-config",
        ),
    ] {
        let before = h.tree.snapshot();
        let out = h.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            error_line(&out).contains(expect),
            "{args:?}: {}",
            error_line(&out)
        );
        assert_eq!(h.tree.snapshot(), before);
    }
}

#[test]
fn a_later_cert_run_updates_the_hook_certbot_keeps() {
    let h = CertHost::new();
    assert!(h.issue(&[DOMAIN], &["--for", "ams"]).status.success());
    let conf = h
        .root()
        .join(format!("etc/letsencrypt/renewal/{DOMAIN}.conf"));
    assert!(
        fs::read_to_string(&conf)
            .unwrap()
            .contains("cert deploy --for ams")
    );
    // Not due for renewal: certbot keeps its file, the agent updates the hook.
    let out = h.issue(&[DOMAIN], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = fs::read_to_string(&conf).unwrap();
    assert!(text.contains("cert deploy --for both"), "{text}");
    assert_eq!(text.matches("renew_hook").count(), 1, "{text}");
    // And certbot's renewal then installs into HAProxy too.
    fs::remove_file(h.root().join(format!("etc/haproxy/certs/{DOMAIN}.pem"))).unwrap();
    let renewed = h.renew();
    assert!(
        renewed.status.success() && !acme::text(&renewed).contains("reported error"),
        "{}",
        acme::text(&renewed)
    );
    assert!(
        h.root()
            .join(format!("etc/haproxy/certs/{DOMAIN}.pem"))
            .exists()
    );
}

#[test]
fn a_restart_that_failed_is_owed_to_the_next_run() {
    let h = CertHost::new();
    let fixture = fixture_lineage();
    let lineage = &fixture;
    h.tree.fake_systemctl(1, "Job for antmedia.service failed");
    let out = h.run(&["cert", "deploy", "--lineage", lineage]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    h.tree.fake_systemctl(0, "");
    let out = h.run(&["cert", "deploy", "--lineage", lineage]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        h.tree.systemctl_calls(),
        ["restart antmedia", "restart antmedia"],
        "the owed restart did not happen"
    );
    // Paid: a third run has nothing to do.
    let out = h.run(&["cert", "deploy", "--lineage", lineage]);
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
    assert_eq!(h.tree.systemctl_calls().len(), 2);
}

#[test]
fn an_unchecked_haproxy_pem_does_not_stay() {
    let h = CertHost::new();
    let fixture = fixture_lineage();
    // haproxy missing from PATH: the check cannot run, the file goes back.
    let mut cmd = h.command(&["cert", "deploy", "--for", "haproxy", "--lineage", &fixture]);
    cmd.env(
        "PATH",
        format!("{}:/usr/local/bin:/bin", h.tree.bin.display()),
    );
    let out = acme::run_bounded(&mut cmd, Duration::from_secs(60), "cert deploy");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        !h.root()
            .join(format!("etc/haproxy/certs/{DOMAIN}.pem"))
            .exists()
    );
    // With haproxy back, the next run installs, checks and reloads.
    let out = h.run(&["cert", "deploy", "--for", "haproxy", "--lineage", &fixture]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(h.tree.systemctl_calls(), ["reload haproxy"]);
}

#[test]
fn status_lists_what_it_can_read_and_names_what_it_cannot() {
    let h = CertHost::new();
    let fixture = fixture_lineage();
    let out = h.run(&["cert", "deploy", "--for", "both", "--lineage", &fixture]);
    assert!(out.status.success(), "{}", stderr(&out));
    fs::write(h.root().join("etc/haproxy/certs/zzz.pem"), "garbage").unwrap();
    let out = h.run(&["cert", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 3, "{v}");
    assert!(list[1]["daysLeft"].as_i64().unwrap() > 1000, "{v}");
    assert!(
        list[2]["error"].as_str().unwrap().contains("zzz.pem")
            || list[2]["path"].as_str().unwrap().ends_with("zzz.pem"),
        "{v}"
    );
    let table = h.run(&["cert", "status"]);
    assert_eq!(table.status.code(), Some(1));
    assert!(
        stdout(&table).contains(DOMAIN) && stdout(&table).contains("zzz.pem"),
        "{}",
        stdout(&table)
    );
}

/// With a web server keeping port 80, certbot writes the challenge under
/// its folder instead (`--webroot`); nothing binds the port.
#[test]
fn webroot_leaves_port_80_to_the_web_server() {
    let h = CertHost::new();
    let webroot = h.root().join("var/www/html");
    fs::create_dir_all(&webroot).unwrap();
    let out = h.issue(&[DOMAIN], &["--webroot", "/var/www/html", "--for", "ams"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        h.conf("fullchain.pem"),
        fs::read(h.live(DOMAIN).join("fullchain.pem")).unwrap()
    );
    let renewal = fs::read_to_string(
        h.root()
            .join(format!("etc/letsencrypt/renewal/{DOMAIN}.conf")),
    )
    .unwrap();
    assert!(renewal.contains("authenticator = webroot"), "{renewal}");
}

/// Without certbot nothing is touched (AMS's redirect stays in place).
#[test]
fn a_missing_certbot_is_named_before_anything_changes() {
    let h = CertHost::new();
    h.fake_iptables(true);
    let mut cmd = h.command(&["cert", "--domain", DOMAIN]);
    // Only the fakes on PATH: no certbot.
    cmd.env("PATH", &h.tree.bin);
    let out = acme::run_bounded(&mut cmd, Duration::from_secs(30), "ams-agent cert");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("certbot is not installed"),
        "{}",
        error_line(&out)
    );
    assert!(h.iptables_calls().is_empty(), "{:?}", h.iptables_calls());
}

/// `--no-restart` is for this run only: certbot's stored hook has no
/// `--no-restart`, so its later renewals restart AMS and reload HAProxy
/// (else the old certificate is served until it expires).
#[test]
fn no_restart_applies_to_this_run_and_renewals_restart() {
    let h = CertHost::new();
    let out = h.issue(&[DOMAIN], &["--no-restart"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        h.tree.systemctl_calls(),
        Vec::<String>::new(),
        "this run restarted or reloaded"
    );
    let conf = fs::read_to_string(
        h.root()
            .join(format!("etc/letsencrypt/renewal/{DOMAIN}.conf")),
    )
    .unwrap();
    let hook = conf
        .lines()
        .find(|l| l.starts_with("renew_hook"))
        .expect("a stored hook");
    assert!(hook.contains("cert deploy --for both"), "{hook}");
    assert!(!hook.contains("no-restart"), "{hook}");

    let renewed = h.renew();
    assert!(
        renewed.status.success() && !acme::text(&renewed).contains("reported error"),
        "{}",
        acme::text(&renewed)
    );
    assert_eq!(
        h.tree.systemctl_calls(),
        ["restart antmedia", "reload haproxy"],
        "the renewal did not restart AMS and reload HAProxy"
    );
    assert_eq!(
        h.conf("fullchain.pem"),
        fs::read(h.live(DOMAIN).join("fullchain.pem")).unwrap()
    );
}
