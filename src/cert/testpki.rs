//! The tests' certificates, made at run time (no key is committed): a CA,
//! intermediates and lineages in certbot's layout, by
//! `tests/peers/test_pki.sh` with `openssl`, once per test process. Only in
//! builds with the `test-hooks` feature (the tests'), never in the release
//! binary.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The folder holding `ca/`, `live/<name>/` and `other-key.pem` (see the
/// script for what each is).
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = folder();
        let _ = std::fs::remove_dir_all(&out);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/test_pki.sh");
        let run = std::process::Command::new("bash")
            .arg(&script)
            .arg(&out)
            .output()
            .expect("running tests/peers/test_pki.sh (needs bash and openssl)");
        assert!(
            run.status.success(),
            "making the test certificates failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        // Gone when the test process exits.
        // SAFETY: registers a plain function; it only removes a folder.
        unsafe { libc::atexit(remove_at_exit) };
        out
    })
}

extern "C" fn remove_at_exit() {
    let _ = std::fs::remove_dir_all(folder());
}

/// This process's folder.
fn folder() -> PathBuf {
    std::env::temp_dir().join(format!("ams-agent-test-pki-{}", std::process::id()))
}

/// A lineage folder: `live.example.test` (ECDSA P-256), `rsa.example.test`
/// (RSA, a chain of three), `p384.example.test`.
pub fn lineage(name: &str) -> PathBuf {
    dir().join("live").join(name)
}
