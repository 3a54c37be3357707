//! The rendered balancer files, checked against golden files (Debian 12's
//! stock haproxy.cfg and nginx.conf with the agent's sections in them),
//! and every golden file checked by the real `haproxy -c -f` and
//! `nginx -t -c`. `UPDATE_GOLDEN=1` rewrites the golden files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ams_agent::lb::blocks;
use ams_agent::lb::haproxy;
use ams_agent::lb::model::{Member, MemberState, Membership, NodeId, NodePorts, Settings, Tls};
use ams_agent::lb::nginx;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/lb")
}

fn golden(name: &str, actual: &[u8]) {
    let path = dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        want == actual,
        "{name} differs from tests/golden/lb/{name} (UPDATE_GOLDEN=1 rewrites it):\n{}",
        String::from_utf8_lossy(actual)
    );
}

fn member(id: &str, ip: &str, state: MemberState) -> Member {
    Member {
        id: NodeId::parse(id).unwrap(),
        addr: ip.parse().unwrap(),
        state,
    }
}

fn membership() -> Membership {
    Membership {
        origin: vec![
            member("i-0aaaaaaaaaaaaaaa1", "10.0.1.5", MemberState::Ready),
            member("i-0aaaaaaaaaaaaaaa2", "10.0.1.6", MemberState::Draining),
        ],
        edge: vec![
            member("i-0bbbbbbbbbbbbbbb1", "10.0.2.7", MemberState::Ready),
            member("i-0bbbbbbbbbbbbbbb2", "fd00::8", MemberState::Ready),
        ],
    }
}

const CERTS: &str = "/etc/haproxy/certs";
const PEM: &str = "/etc/haproxy/certs/lb.example.test.pem";

fn settings(tls: bool) -> Settings {
    Settings {
        listen: BTreeMap::new(),
        ports: NodePorts::default(),
        tls: tls.then(|| Tls {
            dir: CERTS.into(),
            pem: PEM.into(),
            digest: "lb.example.test, valid from 1767225600 to 1775001600".into(),
        }),
        hard_stop_after: Duration::from_secs(3600),
        tunnel_timeout: Duration::from_secs(3600),
        state_file: "/var/lib/haproxy/ams-agent-server-state".into(),
        spare_slots: 8,
    }
}

fn stock(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap()
}

fn haproxy_file(tls: bool) -> Vec<u8> {
    let s = settings(tls);
    blocks::append(
        &stock("debian-haproxy.cfg"),
        &haproxy::render(&s, &haproxy::fresh(&membership(), s.spare_slots)),
    )
}

fn nginx_file(tls: bool) -> Vec<u8> {
    let s = settings(tls);
    nginx::install(
        &stock("debian-nginx.conf"),
        &nginx::render_main(&s, &membership()),
        &nginx::render_http(&s, &membership()),
    )
    .unwrap()
}

/// A PEM (chain then key) made at run time, in a temp folder.
fn test_pem(tmp: &Path) -> PathBuf {
    let lineage = ams_agent::cert::testpki::lineage("live.example.test");
    let mut pem = std::fs::read(lineage.join("fullchain.pem")).unwrap();
    pem.extend(std::fs::read(lineage.join("privkey.pem")).unwrap());
    let certs = tmp.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let p = certs.join("lb.example.test.pem");
    std::fs::write(&p, pem).unwrap();
    p
}

fn check(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} refused the golden file:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn haproxy_goldens_match_and_haproxy_accepts_them() {
    for (tls, name) in [(false, "haproxy.cfg"), (true, "haproxy-tls.cfg")] {
        let text = haproxy_file(tls);
        golden(name, &text);
        // Outside the markers: Debian's file, byte for byte.
        let r = blocks::find(&text, haproxy::MARKERS).unwrap().unwrap();
        assert_eq!(&text[..r.start], stock("debian-haproxy.cfg").as_slice());
        assert_eq!(r.end, text.len());
        // Rendering again changes nothing, and the section reads back.
        let again = blocks::splice(
            &text,
            r.clone(),
            &haproxy::render(
                &settings(tls),
                &haproxy::parse(&String::from_utf8_lossy(&text[r])).unwrap(),
            ),
        );
        assert_eq!(again, text);
        // haproxy -c, with the certificate folder made real.
        let tmp = tempfile::tempdir().unwrap();
        let pem = test_pem(tmp.path());
        let cfg = tmp.path().join(name);
        let body = String::from_utf8(text).unwrap().replace(
            &format!("{CERTS}/"),
            &format!("{}/", pem.parent().unwrap().display()),
        );
        std::fs::write(&cfg, body).unwrap();
        check(
            Command::new("haproxy").arg("-c").arg("-f").arg(&cfg),
            &format!("haproxy -c -f {name}"),
        );
    }
}

#[test]
fn nginx_goldens_match_and_nginx_accepts_them() {
    for (tls, name) in [(false, "nginx.conf"), (true, "nginx-tls.conf")] {
        let text = nginx_file(tls);
        golden(name, &text);
        let s = String::from_utf8(text.clone()).unwrap();
        // Outside the sections: Debian's file, byte for byte.
        let mut outside = text.clone();
        for m in [nginx::HTTP, nginx::MAIN] {
            let r = blocks::find(&outside, m).unwrap().unwrap();
            outside.drain(r);
        }
        assert_eq!(outside, stock("debian-nginx.conf"));
        assert_eq!(
            nginx::install(
                &text,
                &nginx::render_main(&settings(tls), &membership()),
                &nginx::render_http(&settings(tls), &membership())
            )
            .unwrap(),
            text
        );
        // nginx -t -c, with the host's pid file, logs, default site and
        // certificate swapped for the test's own (the default site would
        // collide with the balancer on port 80).
        let tmp = tempfile::tempdir().unwrap();
        let pem = test_pem(tmp.path());
        // Debian's modules-enabled/*.conf load modules relative to the prefix.
        std::os::unix::fs::symlink("/usr/share/nginx/modules", tmp.path().join("modules")).unwrap();
        let sites = tmp.path().join("sites");
        std::fs::create_dir_all(&sites).unwrap();
        let t = tmp.path().display();
        let body = s
            .replace("pid /run/nginx.pid;", &format!("pid {t}/nginx.pid;"))
            .replace("/var/log/nginx/", &format!("{t}/"))
            .replace(
                "/etc/nginx/sites-enabled/*",
                &format!("{}/*", sites.display()),
            )
            .replace(PEM, &pem.display().to_string());
        let conf = tmp.path().join(name);
        std::fs::write(&conf, body).unwrap();
        check(
            Command::new("nginx")
                .arg("-t")
                .arg("-p")
                .arg(tmp.path())
                .arg("-c")
                .arg(&conf),
            &format!("nginx -t -c {name}"),
        );
    }
}
