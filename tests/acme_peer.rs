//! Proves the ACME harness (`tests/common/acme.rs`) with real runs: Pebble on
//! loopback, the real certbot, the real `haproxy -c`, `openssl verify`.
//! Needs the Debian packages `certbot pebble haproxy openssl python3`.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::acme::*;

const LIVE: &str = "live.example.test";
/// Renewals reuse the valid authorizations: no challenge, about 1.5 s faster
/// per run (the port tests keep Pebble's default, a challenge every order).
const REUSE_AUTHZ: &[(&str, &str)] = &[("PEBBLE_AUTHZREUSE", "100")];

/// `(lineage, domains)` as a recording hook writes them.
fn rec(lineage: &Lineage, domains: &str) -> (String, String) {
    (lineage.live.display().to_string(), domains.to_string())
}

#[test]
fn pebble_serves_its_directory_and_issuing_chain_over_tls() {
    let pebble = Pebble::start();
    // rustls (reqwest) accepts the CA + leaf pair made at start.
    let dir = pebble.https_get(&pebble.directory_url());
    let dir: serde_json::Value = serde_json::from_str(&dir).unwrap();
    assert!(
        dir["newOrder"]
            .as_str()
            .unwrap()
            .starts_with(&format!("https://127.0.0.1:{}/", pebble.port)),
        "{dir}"
    );

    let root = pebble.root_pem();
    let intermediate = pebble.intermediate_pem();
    assert_eq!(pem_certs(&root).len(), 1, "{root}");
    assert_eq!(pem_certs(&intermediate).len(), 1, "{intermediate}");
    let (root_info, inter_info) = (cert_info(&root), cert_info(&intermediate));
    assert!(
        root_info.subject.contains("Pebble Root CA"),
        "{root_info:?}"
    );
    assert!(root_info.is_ca && inter_info.is_ca);
    assert_eq!(inter_info.issuer, root_info.subject);

    let files = tempfile::tempdir().unwrap();
    let (root_file, inter_file) = (
        files.path().join("root.pem"),
        files.path().join("inter.pem"),
    );
    std::fs::write(&root_file, &root).unwrap();
    std::fs::write(&inter_file, &intermediate).unwrap();
    let out = openssl_verify(&root_file, None, &inter_file);
    assert_ok(&out, "openssl verify intermediate");
    // The TLS CA is not the issuing CA.
    let out = openssl_verify(pebble.ca_bundle(), None, &inter_file);
    assert!(!out.status.success(), "{}", describe(&out));
}

#[test]
fn pebble_is_killed_on_drop() {
    let pebble = Pebble::start();
    let (pid, port) = (pebble.pid(), pebble.port);
    assert!(pebble.log().contains("ACME directory available at"));
    drop(pebble);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    TcpListener::bind(("127.0.0.1", port)).expect("the ACME port is free again");
}

#[test]
fn certonly_issues_a_complete_chain_and_runs_the_stored_deploy_hook_on_renew() {
    let pebble = Pebble::start_with(REUSE_AUTHZ);
    let tmp = tempfile::tempdir().unwrap();
    let certbot = Certbot::new(&pebble, &tmp.path().join("certbot"));
    let record = tmp.path().join("hook.log");
    let hook = recording_hook(tmp.path(), "deploy.sh", &record, 0);

    let out = certbot.certonly(&[LIVE, "www.example.test"], None, &["--deploy-hook", &hook]);
    assert_ok(&out, "certonly");
    assert!(
        text(&out).contains("Successfully received certificate."),
        "{}",
        describe(&out)
    );
    assert_eq!(certbot.lineage_names(), vec![LIVE.to_string()]);
    let lineage = certbot.lineage(LIVE);
    assert_eq!(lineage.live, certbot.config_dir().join("live").join(LIVE));

    // The hook is stored as renew_hook, and already ran at the first issuance.
    assert_eq!(lineage.renewal_param("renew_hook"), Some(hook.clone()));
    assert_eq!(
        lineage.renewal_param("server"),
        Some(pebble.directory_url())
    );
    assert_eq!(
        hook_records(&record),
        vec![rec(&lineage, "live.example.test www.example.test")]
    );

    // The chain: fullchain = cert + chain, chain = Pebble's intermediate,
    // complete up to the root from the management interface.
    let (cert, chain, fullchain) = (
        lineage.read("cert.pem"),
        lineage.read("chain.pem"),
        lineage.read("fullchain.pem"),
    );
    assert_eq!(pem_certs(&cert).len(), 1);
    assert_eq!(pem_certs(&chain), pem_certs(&pebble.intermediate_pem()));
    assert_eq!(
        pem_certs(&fullchain),
        [pem_certs(&cert), pem_certs(&chain)].concat()
    );
    assert!(lineage.read("privkey.pem").contains("PRIVATE KEY"));
    let leaf = cert_info(&cert);
    assert_eq!(leaf.dns_names, vec![LIVE, "www.example.test"]);
    assert_eq!(leaf.issuer, cert_info(&chain).subject);
    assert!(!leaf.is_ca);
    let root = tmp.path().join("root.pem");
    std::fs::write(&root, pebble.root_pem()).unwrap();
    let out = openssl_verify(&root, Some(&lineage.chain()), &lineage.cert());
    assert_ok(&out, "openssl verify leaf");
    assert!(text(&out).contains(": OK"), "{}", describe(&out));
    // Without the intermediate the leaf does not verify.
    let out = openssl_verify(&root, None, &lineage.cert());
    assert!(!out.status.success(), "{}", describe(&out));

    // renew --force-renewal: a new certificate, the hook runs again.
    assert_eq!(lineage.versions(), 1);
    let out = certbot.renew_force(&[]);
    assert_ok(&out, "renew");
    assert!(
        text(&out).contains("Congratulations, all renewals succeeded"),
        "{}",
        describe(&out)
    );
    assert_eq!(lineage.versions(), 2);
    assert_ne!(cert_info(&lineage.read("cert.pem")).serial, leaf.serial);
    let expected = rec(&lineage, "live.example.test www.example.test");
    assert_eq!(hook_records(&record), vec![expected.clone(), expected]);
}

#[test]
fn a_failing_deploy_hook_leaves_certbots_exit_code_at_zero() {
    let pebble = Pebble::start_with(REUSE_AUTHZ);
    let tmp = tempfile::tempdir().unwrap();
    let certbot = Certbot::new(&pebble, &tmp.path().join("certbot"));
    let record = tmp.path().join("hook.log");
    let hook = recording_hook(tmp.path(), "fail.sh", &record, 3);

    let out = certbot.certonly(&[LIVE], None, &["--deploy-hook", &hook]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Hook 'deploy-hook' reported error code 3"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Hook 'deploy-hook' ran with error output:\n hook fail.sh exits 3"),
        "{stderr}"
    );
    let lineage = certbot.lineage(LIVE);
    assert_eq!(lineage.versions(), 1);

    let out = certbot.renew_force(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Hook 'deploy-hook' reported error code 3"),
        "{}",
        describe(&out)
    );
    assert_eq!(lineage.versions(), 2, "renewed all the same");
    assert_eq!(hook_records(&record).len(), 2);

    // --dry-run skips deploy hooks.
    let mut cmd = certbot.command("renew");
    cmd.arg("--dry-run");
    let out = certbot.run(cmd, "certbot renew --dry-run");
    assert_ok(&out, "renew --dry-run");
    assert_eq!(hook_records(&record).len(), 2);
}

#[test]
fn a_new_domain_set_makes_a_0001_lineage_whose_renewal_runs_the_hook() {
    let pebble = Pebble::start_with(REUSE_AUTHZ);
    let tmp = tempfile::tempdir().unwrap();
    let certbot = Certbot::new(&pebble, &tmp.path().join("certbot"));
    let record = tmp.path().join("hook.log");
    let hook = recording_hook(tmp.path(), "deploy.sh", &record, 0);
    let deploy = ["--deploy-hook", hook.as_str()];

    assert_ok(
        &certbot.certonly(&[LIVE, "old.example.test"], None, &deploy),
        "certonly live+old",
    );
    // A strict superset needs --expand when non-interactive.
    let out = certbot.certonly(
        &[LIVE, "old.example.test", "www.example.test"],
        None,
        &deploy,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out).contains("(You can set this with the --expand flag)"),
        "{}",
        describe(&out)
    );
    // Neither subset nor superset, no --cert-name: a new lineage.
    let out = certbot.certonly(&[LIVE, "www.example.test"], None, &deploy);
    assert_ok(&out, "certonly live+www");
    let dup = format!("{LIVE}-0001");
    assert!(
        text(&out).contains(&format!("/live/{dup}/fullchain.pem")),
        "{}",
        describe(&out)
    );
    assert_eq!(certbot.lineage_names(), vec![LIVE.to_string(), dup.clone()]);
    let (first, second) = (certbot.lineage(LIVE), certbot.lineage(&dup));
    assert_eq!(second.renewal_param("renew_hook"), Some(hook.clone()));
    assert_eq!(
        cert_info(&second.read("cert.pem")).dns_names,
        vec![LIVE, "www.example.test"]
    );
    assert_eq!(
        hook_records(&record),
        vec![
            rec(&first, "live.example.test old.example.test"),
            rec(&second, "live.example.test www.example.test"),
        ]
    );

    // renew: every lineage, in the renewal files' name order.
    std::fs::remove_file(&record).unwrap();
    assert_ok(&certbot.renew_force(&[]), "renew");
    assert_eq!(
        hook_records(&record),
        vec![
            rec(&second, "live.example.test www.example.test"),
            rec(&first, "live.example.test old.example.test"),
        ]
    );
    assert!(second.live.ends_with(format!("live/{LIVE}-0001")));

    // --cert-name renews that one only.
    std::fs::remove_file(&record).unwrap();
    assert_ok(&certbot.renew_force(&["--cert-name", &dup]), "renew -0001");
    assert_eq!(
        hook_records(&record),
        vec![rec(&second, "live.example.test www.example.test")]
    );

    // --duplicate: the same set again, as -0002.
    let out = certbot.certonly(&[LIVE, "old.example.test"], None, &["--duplicate"]);
    assert_ok(&out, "certonly --duplicate");
    assert_eq!(
        certbot.lineage_names(),
        vec![LIVE.to_string(), dup, format!("{LIVE}-0002")]
    );
}

#[test]
fn certbot_refuses_ip_addresses_and_standalone_wildcards() {
    let pebble = Pebble::start();
    let tmp = tempfile::tempdir().unwrap();
    let certbot = Certbot::new(&pebble, tmp.path());

    let out = certbot.certonly(&["127.0.0.1"], None, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out).contains("Requested name 127.0.0.1 is an IP address."),
        "{}",
        describe(&out)
    );
    let out = certbot.certonly(&["*.example.test"], None, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out).contains("does not support any combination of challenges"),
        "{}",
        describe(&out)
    );
    // Uppercase is lowercased; a dotless name is fine for Pebble.
    assert_ok(
        &certbot.certonly(&["Node1.Example.Test", "node1"], None, &[]),
        "certonly mixed case",
    );
    assert_eq!(certbot.lineage_names(), vec!["node1.example.test"]);
}

#[test]
fn renew_sleeps_randomly_without_no_random_sleep_on_renew() {
    let pebble = Pebble::start();
    let tmp = tempfile::tempdir().unwrap();
    let certbot = Certbot::new(&pebble, tmp.path());
    assert_ok(&certbot.certonly(&[LIVE], None, &[]), "certonly");

    let mut cmd = certbot.base_command("renew");
    cmd.arg("--force-renewal")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let sleeping = || {
        certbot
            .debug_log()
            .contains("Non-interactive renewal: random delay of")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sleeping() && std::time::Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none() || sleeping());
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(&child);
    let _ = child.wait();
    assert!(sleeping(), "{}", certbot.debug_log());
    // Nothing was renewed before the sleep.
    assert_eq!(certbot.lineage(LIVE).versions(), 1);
}

#[test]
fn haproxy_check_accepts_fullchain_and_key_and_names_what_is_wrong() {
    let pebble = Pebble::start();
    let tmp = tempfile::tempdir().unwrap();
    let certbot = Certbot::new(&pebble, tmp.path());
    assert_ok(&certbot.certonly(&[LIVE], None, &[]), "certonly");
    let lineage = certbot.lineage(LIVE);
    let (cert, fullchain, key) = (
        lineage.read("cert.pem"),
        lineage.read("fullchain.pem"),
        lineage.read("privkey.pem"),
    );
    let good = format!("{fullchain}{key}");
    let other_key = run_bounded(
        Command::new(OPENSSL).args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ]),
        TOOL_TIMEOUT,
        "openssl genpkey",
    );
    assert_ok(&other_key, "openssl genpkey");
    let other_key = String::from_utf8(other_key.stdout).unwrap();
    let port = common::free_port();
    let cfg = |crt: &str| haproxy_ssl_config(port, crt);
    let check = |crt: &str, files: &[(&str, &[u8])]| haproxy_check(&cfg(crt), files);
    let valid = |out: &std::process::Output| {
        out.status.success() && text(out).contains("Configuration file is valid")
    };
    let alert = |out: &std::process::Output, needle: &str| {
        assert_eq!(out.status.code(), Some(1), "{}", describe(out));
        let alerts = haproxy_alerts(out);
        assert!(
            alerts.iter().any(|a| a.contains(needle)),
            "no alert with {needle:?}: {}",
            describe(out)
        );
        assert!(
            alerts
                .iter()
                .any(|a| a.contains("Fatal errors found in configuration.")),
            "{}",
            describe(out)
        );
    };

    // Accepted: fullchain + key, as a file (relative or @DIR@) or a folder.
    let out = check("site.pem", &[("site.pem", good.as_bytes())]);
    assert!(valid(&out), "{}", describe(&out));
    let out = check(
        "@DIR@/certs/site.pem",
        &[("certs/site.pem", good.as_bytes())],
    );
    assert!(valid(&out), "{}", describe(&out));
    let out = check("@DIR@/certs/", &[("certs/site.pem", good.as_bytes())]);
    assert!(valid(&out), "{}", describe(&out));
    // The certificate alone, with the key in <pem>.key beside it.
    let out = check(
        "site.pem",
        &[
            ("site.pem", fullchain.as_bytes()),
            ("site.pem.key", key.as_bytes()),
        ],
    );
    assert!(valid(&out), "{}", describe(&out));
    // -c does not check the chain: the leaf without its intermediate passes.
    let leaf_only = format!("{cert}{key}");
    let out = check("site.pem", &[("site.pem", leaf_only.as_bytes())]);
    assert!(valid(&out), "{}", describe(&out));

    // Refused, with these texts.
    let mismatch = format!("{fullchain}{other_key}");
    let out = check("site.pem", &[("site.pem", mismatch.as_bytes())]);
    alert(
        &out,
        "'bind 127.0.0.1:PORT' in section 'frontend' : inconsistencies between private key and certificate loaded 'site.pem'."
            .replace("PORT", &port.to_string())
            .as_str(),
    );
    assert!(
        haproxy_alerts(&out)[0].contains("parsing [haproxy.cfg:9] : "),
        "{}",
        describe(&out)
    );
    let out = check("site.pem", &[("site.pem", fullchain.as_bytes())]);
    alert(&out, "No Private Key found in 'site.pem.key'.");
    let out = check("site.pem", &[("site.pem", key.as_bytes())]);
    alert(&out, "unable to load certificate from file 'site.pem'.");
    let out = check("site.pem", &[("site.pem", b"")]);
    alert(&out, "unable to load certificate from file 'site.pem'.");
    let out = check("missing.pem", &[]);
    alert(
        &out,
        "unable to stat SSL certificate from file 'missing.pem' : No such file or directory.",
    );
    let out = check(
        "certs/",
        &[
            ("certs/site.pem", good.as_bytes()),
            ("certs/README", b"notes\n"),
        ],
    );
    alert(&out, "unable to load certificate from file 'certs/README'.");
    let empty = tempfile::tempdir().unwrap();
    let out = check(&empty.path().display().to_string(), &[]);
    alert(
        &out,
        &format!(
            "Proxy 'https': no SSL certificate specified for bind '127.0.0.1:{port}' at [haproxy.cfg:9] (use 'crt')."
        ),
    );

    // haproxy_check_file checks a config in place, e.g. a deployed one.
    let deployed = tmp.path().join("haproxy");
    std::fs::create_dir_all(deployed.join("certs")).unwrap();
    std::fs::write(deployed.join("certs/live.pem"), &good).unwrap();
    let cfg_path = deployed.join("haproxy.cfg");
    std::fs::write(
        &cfg_path,
        cfg(&deployed.join("certs").display().to_string()),
    )
    .unwrap();
    let out = haproxy_check_file(&cfg_path);
    assert!(valid(&out), "{}", describe(&out));
}

#[test]
fn busy_port_is_held_by_python3_and_certbot_cannot_bind_it() {
    let (port, mut holder) = busy_port();
    let pid = holder.id();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "python3"
    );
    // Held on 0.0.0.0, owned by that pid (as `ss -ltnp` would say).
    assert!(TcpListener::bind(("0.0.0.0", port)).is_err());
    assert_eq!(listener_pids(port), vec![pid]);

    let pebble = Pebble::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut certbot = Certbot::new(&pebble, tmp.path());
    certbot.http_port = port;
    let out = certbot.certonly(&[LIVE], None, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let refused = format!(
        "Could not bind TCP port {port} because it is already in use by another process on this \
         system (such as a web server). Please stop the program in question and then try again."
    );
    assert!(text(&out).contains(&refused), "{}", describe(&out));
    assert!(!text(&out).contains("python3"));
    assert!(certbot.lineage_names().is_empty());

    // Killing the holder frees the port.
    holder.kill().unwrap();
    holder.wait().unwrap();
    common::wait_for("the busy port to be free", Duration::from_secs(10), || {
        TcpListener::bind(("0.0.0.0", port)).is_ok()
    });
    assert_ok(&certbot.certonly(&[LIVE], None, &[]), "certonly, port free");

    // A renewal needs the port too (Pebble's default: a challenge every
    // order, as a real renewal 60 days later): exit 1.
    let (_, holder) = hold_port(port);
    let out = certbot.renew_force(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "Failed to renew certificate {LIVE} with error: {refused}"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 renew failure(s), 0 parse failure(s)"),
        "{stderr}"
    );
    assert_eq!(certbot.lineage(LIVE).versions(), 1);

    // Dropping the holder ends it (its stdin closes).
    drop(holder);
    common::wait_for(
        "python3 to exit when its stdin closes",
        Duration::from_secs(10),
        || listener_pids(port).is_empty(),
    );
}

#[test]
#[should_panic(expected = "did not finish within")]
fn run_bounded_kills_and_panics_instead_of_hanging() {
    run_bounded(
        Command::new("/bin/sh").args(["-c", "echo started; sleep 30"]),
        Duration::from_millis(300),
        "sleep",
    );
}

/// The pids with a socket listening on TCP `port` (from /proc/net/tcp and
/// /proc/<pid>/fd), as a tool naming the holder of port 80 would find them.
fn listener_pids(port: u16) -> Vec<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f[1].rsplit(':').next().unwrap();
            if u16::from_str_radix(local_port, 16) == Ok(port) && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| inodes.contains(&l.to_string_lossy().into_owned()))
        }) {
            pids.push(pid);
        }
    }
    pids
}
