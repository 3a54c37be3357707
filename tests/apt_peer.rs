//! Proves the apt peer (`tests/peers/apt_peer.py`, `tests/common/apt.rs`)
//! with the real `apt-get update`: the repository verifies with the key it
//! publishes, is refused with any other, and the key server speaks HTTPS
//! with the test CA. The `setup mongo` tests build on this.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::PYTHON;
use common::apt::{
    AptPeer, AptSandbox, apt_get_update, assert_signature_rejected, assert_update_ok, output_text,
};

const UBUNTU: (&str, &str) = ("jammy/mongodb-org/8.0", "multiverse");
const DEBIAN: (&str, &str) = ("bookworm/mongodb-org/8.0", "main");
/// Where `setup mongo` writes the keyring on a real host.
const KEYRING: &str = "/usr/share/keyrings/mongodb-server-8.0.gpg";

/// A test root as the agent leaves it: the sources file names the keyring by
/// its host path, the keyring itself sits under the root.
struct Root {
    _dir: tempfile::TempDir,
    list: PathBuf,
    keyring: PathBuf,
}

fn root_with(line: &str, name: &str, keyring_bytes: &[u8]) -> Root {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("etc/apt/sources.list.d").join(name);
    let keyring = dir.path().join(KEYRING.trim_start_matches('/'));
    for p in [&list, &keyring] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    }
    std::fs::write(&list, format!("{line}\n")).unwrap();
    std::fs::write(&keyring, keyring_bytes).unwrap();
    Root {
        _dir: dir,
        list,
        keyring,
    }
}

fn ubuntu_line(peer: &AptPeer, signed_by: &str) -> String {
    format!(
        "deb [ arch=amd64 signed-by={signed_by} ] {} jammy/mongodb-org/8.0 multiverse",
        peer.repo_url()
    )
}

fn write_list(dir: &Path, line: &str) -> PathBuf {
    let p = dir.join("mongodb-org-8.0.list");
    std::fs::write(&p, format!("{line}\n")).unwrap();
    p
}

fn packages_list(sandbox: &AptSandbox, dist_part: &str) -> Option<String> {
    sandbox
        .lists()
        .into_iter()
        .find(|n| n.contains(dist_part) && n.ends_with("_Packages"))
}

/// The key id gpgv prints in `NO_PUBKEY <id>`: the fingerprint's last 16.
fn long_id(fpr: &str) -> &str {
    &fpr[fpr.len() - 16..]
}

#[test]
fn the_dearmored_key_lets_apt_update() {
    let peer = AptPeer::start(&[UBUNTU]);
    let key = std::fs::read(peer.key_gpg()).unwrap();
    let root = root_with(&ubuntu_line(&peer, KEYRING), "mongodb-org-8.0.list", &key);
    let sandbox = AptSandbox::new();
    let out = sandbox.update(&root.list, Some((KEYRING, &root.keyring)));
    assert_update_ok(&out);
    let text = output_text(&out);
    assert!(text.contains("jammy/mongodb-org/8.0 InRelease"), "{text}");
    let packages = packages_list(
        &sandbox,
        "_dists_jammy_mongodb-org_8.0_multiverse_binary-amd64",
    )
    .unwrap_or_else(|| panic!("no Packages in {:?}", sandbox.lists()));
    let body = std::fs::read_to_string(sandbox.lists_dir().join(packages)).unwrap();
    assert!(body.contains("Package: mongodb-org"), "{body}");
    assert!(
        sandbox.lists().iter().any(|n| n.ends_with("_InRelease")),
        "{:?}",
        sandbox.lists()
    );
    assert!(
        peer.http_requests()
            .contains(&"GET /dists/jammy/mongodb-org/8.0/InRelease 200".to_string()),
        "{:?}",
        peer.http_requests()
    );
}

#[test]
fn an_unrelated_key_is_refused_with_no_pubkey() {
    let peer = AptPeer::start(&[UBUNTU]);
    let other = std::fs::read(peer.other_gpg()).unwrap();
    let root = root_with(&ubuntu_line(&peer, KEYRING), "mongodb-org-8.0.list", &other);
    let sandbox = AptSandbox::new();
    let out = sandbox.update(&root.list, Some((KEYRING, &root.keyring)));
    assert_signature_rejected(&out);
    let text = output_text(&out);
    let fpr = peer.fingerprint();
    assert!(
        text.contains(&format!("NO_PUBKEY {}", long_id(&fpr))),
        "{text}"
    );
    assert!(text.contains("is not signed"), "{text}");
    assert_eq!(out.status.code(), Some(100), "{text}");
    assert_eq!(
        packages_list(&sandbox, "binary-amd64"),
        None,
        "{:?}",
        sandbox.lists()
    );
}

/// Without `APT::Update::Error-Mode=any`, apt exits 0 here (it keeps the
/// earlier lists and only warns); the sandbox makes it fail.
#[test]
fn a_wrong_key_fails_even_with_earlier_good_lists() {
    let peer = AptPeer::start(&[UBUNTU]);
    let dir = tempfile::tempdir().unwrap();
    let sandbox = AptSandbox::new();
    let good = write_list(
        dir.path(),
        &ubuntu_line(&peer, &peer.key_gpg().display().to_string()),
    );
    assert_update_ok(&sandbox.update(&good, None));
    let bad = write_list(
        dir.path(),
        &ubuntu_line(&peer, &peer.other_gpg().display().to_string()),
    );
    let out = sandbox.update(&bad, None);
    assert_signature_rejected(&out);
    let text = output_text(&out);
    assert!(
        text.contains(&format!("NO_PUBKEY {}", long_id(&peer.fingerprint()))),
        "{text}"
    );
}

/// apt (2.6) reads an armored keyring when, and only when, its file name ends
/// in `.asc`: armored bytes in a `.gpg` file are refused like a wrong key.
#[test]
fn armored_keyrings_need_the_asc_name() {
    let peer = AptPeer::start(&[UBUNTU]);
    let dir = tempfile::tempdir().unwrap();

    let asc = write_list(
        dir.path(),
        &ubuntu_line(&peer, &peer.key_asc().display().to_string()),
    );
    assert_update_ok(&apt_get_update(&asc, None));

    let armored = std::fs::read(peer.key_asc()).unwrap();
    let root = root_with(
        &ubuntu_line(&peer, KEYRING),
        "mongodb-org-8.0.list",
        &armored,
    );
    let out = apt_get_update(&root.list, Some((KEYRING, &root.keyring)));
    assert_signature_rejected(&out);

    let empty = root_with(&ubuntu_line(&peer, KEYRING), "mongodb-org-8.0.list", b"");
    assert_signature_rejected(&apt_get_update(
        &empty.list,
        Some((KEYRING, &empty.keyring)),
    ));

    let missing = write_list(
        dir.path(),
        &ubuntu_line(&peer, &dir.path().join("nothing.gpg").display().to_string()),
    );
    assert_signature_rejected(&apt_get_update(&missing, None));
}

#[test]
fn debian_and_deb822_lines_with_a_second_dist() {
    let peer = AptPeer::start(&[UBUNTU, DEBIAN]);
    let key = std::fs::read(peer.key_gpg()).unwrap();

    let debian = format!(
        "deb [ signed-by={KEYRING} ] {}/apt/debian bookworm/mongodb-org/8.0 main",
        peer.repo_url()
    );
    let root = root_with(&debian, "mongodb-org-8.0.list", &key);
    let sandbox = AptSandbox::new();
    assert_update_ok(&sandbox.update(&root.list, Some((KEYRING, &root.keyring))));
    assert!(
        packages_list(
            &sandbox,
            "_apt_debian_dists_bookworm_mongodb-org_8.0_main_binary-"
        )
        .is_some(),
        "{:?}",
        sandbox.lists()
    );

    // deb822 (`.sources`), under /apt/ubuntu as on repo.mongodb.org.
    let deb822 = format!(
        "Types: deb\nURIs: {}/apt/ubuntu\nSuites: jammy/mongodb-org/8.0\nComponents: multiverse\nArchitectures: amd64\nSigned-By: {KEYRING}",
        peer.repo_url()
    );
    let root = root_with(&deb822, "mongodb-org-8.0.sources", &key);
    let sandbox = AptSandbox::new();
    assert_update_ok(&sandbox.update(&root.list, Some((KEYRING, &root.keyring))));
    assert!(
        packages_list(
            &sandbox,
            "_apt_ubuntu_dists_jammy_mongodb-org_8.0_multiverse_binary-amd64"
        )
        .is_some(),
        "{:?}",
        sandbox.lists()
    );

    // A dist the repository does not have: apt fails, not for the key.
    let absent = format!(
        "deb [ signed-by={} ] {}/apt/debian bookworm/mongodb-org/7.0 main",
        peer.key_gpg().display(),
        peer.repo_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = apt_get_update(&write_list(dir.path(), &absent), None);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("does not have a Release file"),
        "{}",
        output_text(&out)
    );
}

/// Fetches `url` with Python's TLS client trusting only `ca` (none: the
/// system's roots): `Ok((status, body))` or `Err(reason)`.
fn fetch(url: &str, ca: Option<&Path>, timeout_s: u32) -> Result<(u16, Vec<u8>), String> {
    const CLIENT: &str = r#"
import ssl, sys, urllib.error, urllib.request
url, ca, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca or None)
try:
    r = urllib.request.urlopen(url, context=ctx, timeout=timeout)
    status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except Exception as e:
    sys.stdout.write("ERR %s: %s\n" % (type(e).__name__, e))
    sys.exit(0)
sys.stdout.buffer.write(b"%d\n" % status + body)
"#;
    let out = Command::new(PYTHON)
        .args(["-c", CLIENT, url])
        .arg(ca.map(|c| c.as_os_str()).unwrap_or_default())
        .arg(timeout_s.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let nl = out.stdout.iter().position(|&b| b == b'\n').unwrap();
    let head = String::from_utf8_lossy(&out.stdout[..nl]).into_owned();
    match head.parse() {
        Ok(status) => Ok((status, out.stdout[nl + 1..].to_vec())),
        Err(_) => Err(head),
    }
}

#[test]
fn the_key_server_speaks_https_with_the_test_ca() {
    let peer = AptPeer::start(&[UBUNTU]);
    let ca = peer.ca_file();
    let asc = std::fs::read(peer.key_asc()).unwrap();
    assert!(asc.starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"));
    assert_eq!(peer.key_url(), peer.url("/key.asc"));

    assert_eq!(fetch(&peer.key_url(), Some(ca), 10), Ok((200, asc.clone())));
    let by_name = peer.key_url().replace("127.0.0.1", "localhost");
    assert_eq!(fetch(&by_name, Some(ca), 10), Ok((200, asc.clone())));
    let err = fetch(&peer.key_url(), None, 10).unwrap_err();
    assert!(err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");

    assert_eq!(
        fetch(&peer.url("/missing.asc"), Some(ca), 10).unwrap().0,
        404
    );
    let (status, html) = fetch(&peer.url("/notakey.asc"), Some(ca), 10).unwrap();
    assert_eq!(status, 200);
    assert!(html.starts_with(b"<!DOCTYPE html>"));
    assert_eq!(
        fetch(&peer.url("/redirect.asc"), Some(ca), 10),
        Ok((200, asc.clone()))
    );
    assert_eq!(
        fetch(&peer.url("/empty.asc"), Some(ca), 10),
        Ok((200, vec![]))
    );
    let (_, half) = fetch(&peer.url("/truncated.asc"), Some(ca), 10).unwrap();
    assert!(!half.is_empty() && asc.starts_with(&half) && half.len() < asc.len());
    let gpg = std::fs::read(peer.key_gpg()).unwrap();
    assert_eq!(fetch(&peer.url("/key.gpg"), Some(ca), 10), Ok((200, gpg)));

    for stall in ["/slow.asc", "/slow-body.asc"] {
        let start = Instant::now();
        let err = fetch(&peer.url(stall), Some(ca), 2).unwrap_err();
        assert!(err.contains("timed out"), "{stall}: {err}");
        assert!(start.elapsed() < Duration::from_secs(20), "{stall}");
    }

    // curl, when the machine has it, agrees.
    if let Ok(out) = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(peer.key_url())
        .output()
    {
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, asc);
    }

    let log = peer.https_requests();
    assert!(log.contains(&"GET /key.asc 200".to_string()), "{log:?}");
    assert!(log.contains(&"GET /missing.asc 404".to_string()), "{log:?}");
}

#[test]
fn the_peer_goes_away_on_drop() {
    let peer = AptPeer::start(&[UBUNTU]);
    let (http, https, dir) = (peer.http_port, peer.https_port, peer.dir().to_path_buf());
    assert!(dir.join("key.asc").is_file());
    drop(peer);
    for port in [http, https] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still open"
        );
    }
    assert!(!dir.exists());
}
