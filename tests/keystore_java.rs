//! Proves with real Java that the stores `cert::keystore` writes work for
//! AMS: `keytool` (from default-jdk-headless, which `.ci/run` installs) lists
//! the `tomcat` PrivateKeyEntry with the whole chain and the truststore's
//! trustedCertEntry entries, and refuses a wrong password; a small Java
//! program (run from source) loads the stores with `KeyStore.getInstance
//! ("PKCS12")`, signs with the key and verifies with the leaf, and completes
//! a TLS handshake as Tomcat would (server: the keystore; client: trusts the
//! truststore, checks the host name). The password always travels in a file.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ams_agent::cert::inspect::{Lineage, parse_certificates};
use ams_agent::cert::keystore::{keystore_p12, random_store_password, truststore_p12};

const CHECK_JAVA: &str = r#"
import java.io.*;
import java.net.*;
import java.nio.file.*;
import java.security.*;
import java.security.cert.Certificate;
import java.security.cert.X509Certificate;
import java.util.*;
import javax.net.ssl.*;

public class Check {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    static KeyStore load(String path, char[] pw) throws Exception {
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (InputStream in = Files.newInputStream(Path.of(path))) {
            ks.load(in, pw);
        }
        return ks;
    }

    // args: keystore truststore passwordFile chainLength trustedCount hostName
    public static void main(String[] args) throws Exception {
        char[] pw = Files.readString(Path.of(args[2])).strip().toCharArray();
        int chainLength = Integer.parseInt(args[3]);
        int trustedCount = Integer.parseInt(args[4]);
        String host = args[5];

        KeyStore ks = load(args[0], pw);
        check(ks.size() == 1, "keystore entries: " + Collections.list(ks.aliases()));
        check(ks.isKeyEntry("tomcat"), "tomcat is not a key entry");
        PrivateKey key = (PrivateKey) ks.getKey("tomcat", pw);
        Certificate[] chain = ks.getCertificateChain("tomcat");
        check(chain.length == chainLength, "chain length " + chain.length + ", expected " + chainLength);
        X509Certificate leaf = (X509Certificate) chain[0];
        for (int i = 0; i + 1 < chain.length; i++) {
            chain[i].verify(chain[i + 1].getPublicKey());
        }

        String alg = key.getAlgorithm().equals("EC") ? "SHA256withECDSA" : "SHA256withRSA";
        byte[] data = new byte[256];
        new SecureRandom().nextBytes(data);
        Signature signer = Signature.getInstance(alg);
        signer.initSign(key);
        signer.update(data);
        byte[] sig = signer.sign();
        Signature verifier = Signature.getInstance(alg);
        verifier.initVerify(leaf.getPublicKey());
        verifier.update(data);
        check(verifier.verify(sig), "the tomcat key does not sign for the leaf certificate");
        System.out.println("KEY " + key.getAlgorithm() + " signs for " + leaf.getSubjectX500Principal().getName());

        KeyStore ts = load(args[1], pw);
        for (String alias : Collections.list(ts.aliases())) {
            check(ts.isCertificateEntry(alias), alias + " is not a trusted certificate entry");
        }
        check(ts.size() == trustedCount, "truststore entries: " + Collections.list(ts.aliases()));

        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(ks, pw);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(ts);
        SSLContext serverCtx = SSLContext.getInstance("TLS");
        serverCtx.init(kmf.getKeyManagers(), null, null);
        SSLContext clientCtx = SSLContext.getInstance("TLS");
        clientCtx.init(null, tmf.getTrustManagers(), null);

        InetAddress lo = InetAddress.getLoopbackAddress();
        try (SSLServerSocket server = (SSLServerSocket) serverCtx.getServerSocketFactory().createServerSocket(0, 1, lo)) {
            server.setSoTimeout(20000);
            Thread t = new Thread(() -> {
                try (SSLSocket s = (SSLSocket) server.accept()) {
                    s.startHandshake();
                    s.getOutputStream().write(42);
                    s.getOutputStream().flush();
                    s.getInputStream().read();
                } catch (Exception e) {
                    e.printStackTrace();
                }
            });
            t.start();
            try (SSLSocket c = (SSLSocket) clientCtx.getSocketFactory().createSocket(lo, server.getLocalPort())) {
                c.setSoTimeout(20000);
                SSLParameters p = c.getSSLParameters();
                p.setEndpointIdentificationAlgorithm("HTTPS");
                p.setServerNames(List.of(new SNIHostName(host)));
                c.setSSLParameters(p);
                c.startHandshake();
                check(c.getInputStream().read() == 42, "no data over TLS");
                c.getOutputStream().write(1);
                c.getOutputStream().flush();
                Certificate[] served = c.getSession().getPeerCertificates();
                check(served.length == chainLength, "the server sent " + served.length + " certificates");
                check(Arrays.equals(served[0].getEncoded(), leaf.getEncoded()), "the server sent another leaf");
                System.out.println("TLS " + c.getSession().getProtocol() + " " + c.getSession().getCipherSuite()
                    + " to " + host + ", chain " + served.length);
            }
            t.join(20000);
        }
    }
}
"#;

fn fixture(name: &str) -> PathBuf {
    ams_agent::cert::testpki::lineage(name)
}

/// A lineage's two stores and their password file in a temp dir.
struct Stores {
    dir: tempfile::TempDir,
    lineage: Lineage,
    keystore: PathBuf,
    truststore: PathBuf,
    password_file: PathBuf,
}

impl Stores {
    fn new(name: &str) -> Self {
        let lineage = Lineage::load(&fixture(name)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let password = random_store_password().unwrap();
        let password_file = dir.path().join("store.pass");
        fs::write(&password_file, format!("{password}\n")).unwrap();
        fs::set_permissions(&password_file, fs::Permissions::from_mode(0o600)).unwrap();
        let keystore = dir.path().join("keystore.jks");
        let truststore = dir.path().join("truststore.jks");
        fs::write(&keystore, keystore_p12(&lineage, &password).unwrap()).unwrap();
        fs::write(&truststore, truststore_p12(&lineage, &password).unwrap()).unwrap();
        Stores {
            dir,
            lineage,
            keystore,
            truststore,
            password_file,
        }
    }

    fn keytool(&self, store: &Path, extra: &[&str]) -> Output {
        self.keytool_with(store, &self.password_file, extra)
    }

    fn keytool_with(&self, store: &Path, password_file: &Path, extra: &[&str]) -> Output {
        let mut cmd = Command::new("keytool");
        cmd.args(["-J-Duser.language=en", "-list", "-keystore"])
            .arg(store)
            .args(["-storetype", "PKCS12", "-storepass:file"])
            .arg(password_file)
            .args(extra);
        run(cmd, "keytool")
    }
}

fn run(mut cmd: Command, tool: &str) -> Output {
    cmd.env("LC_ALL", "C");
    cmd.output().unwrap_or_else(|e| {
        panic!("running {tool}: {e} (install default-jdk-headless and openssl, as .ci/run does)")
    })
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn keytool_lists_the_key_entry_with_the_whole_chain(name: &str) {
    let s = Stores::new(name);
    let n = s.lineage.fullchain().len();

    let out = s.keytool(&s.keystore, &["-v"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Keystore type: PKCS12"), "{all}");
    assert!(stdout.contains("Your keystore contains 1 entry"), "{all}");
    assert!(stdout.contains("Alias name: tomcat\n"), "{all}");
    assert!(stdout.contains("Entry type: PrivateKeyEntry\n"), "{all}");
    assert!(
        stdout.contains(&format!("Certificate chain length: {n}\n")),
        "{all}"
    );
    assert!(!stdout.contains("trustedCertEntry"), "{all}");
    assert!(!all.contains("Warning"), "keytool warns: {all}");
    eprintln!("{stdout}");

    // The chain Java reads, in order, is fullchain.pem; its leaf is cert.pem.
    let out = s.keytool(&s.keystore, &["-rfc", "-alias", "tomcat"]);
    assert!(out.status.success(), "{}", text(&out));
    let in_store = parse_certificates(&out.stdout).unwrap();
    assert_eq!(in_store, s.lineage.fullchain(), "{}", text(&out));
    let cert_pem = parse_certificates(&fs::read(fixture(name).join("cert.pem")).unwrap()).unwrap();
    assert_eq!(in_store[0], cert_pem[0]);
    let full_pem =
        parse_certificates(&fs::read(fixture(name).join("fullchain.pem")).unwrap()).unwrap();
    assert_eq!(in_store, full_pem);
}

fn keytool_lists_the_truststore_as_trusted_entries(name: &str) {
    let s = Stores::new(name);
    let chain = s.lineage.chain();
    let out = s.keytool(&s.truststore, &["-v"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("Entry type: trustedCertEntry\n").count(),
        chain.len(),
        "{all}"
    );
    assert!(
        stdout.contains(&format!("Your keystore contains {} entr", chain.len())),
        "{all}"
    );
    assert!(!stdout.contains("PrivateKeyEntry"), "{all}");
    assert!(!all.contains("Warning"), "keytool warns: {all}");
    eprintln!("{stdout}");

    let out = s.keytool(&s.truststore, &["-rfc"]);
    let mut held = parse_certificates(&out.stdout).unwrap();
    let mut want = chain.to_vec();
    held.sort();
    want.sort();
    assert_eq!(held, want, "{}", text(&out));
    assert!(!held.iter().any(|c| c.as_slice() == s.lineage.leaf()));
}

fn java_uses_the_key_and_the_chain(name: &str, host: &str) {
    let s = Stores::new(name);
    let src = s.dir.path().join("Check.java");
    fs::write(&src, CHECK_JAVA).unwrap();
    let mut cmd = Command::new("java");
    cmd.arg("-Duser.language=en")
        .arg(&src)
        .arg(&s.keystore)
        .arg(&s.truststore)
        .arg(&s.password_file)
        .arg(s.lineage.fullchain().len().to_string())
        .arg(s.lineage.chain().len().to_string())
        .arg(host);
    let out = run(cmd, "java");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("signs for CN={name}")), "{all}");
    assert!(
        stdout.contains(&format!("to {host}, chain {}", s.lineage.fullchain().len())),
        "{all}"
    );
    eprintln!("{stdout}");
}

#[test]
fn ecdsa_keystore_in_keytool() {
    keytool_lists_the_key_entry_with_the_whole_chain("live.example.test");
}

#[test]
fn rsa_keystore_in_keytool() {
    keytool_lists_the_key_entry_with_the_whole_chain("rsa.example.test");
}

#[test]
fn ecdsa_truststore_in_keytool() {
    keytool_lists_the_truststore_as_trusted_entries("live.example.test");
}

#[test]
fn rsa_truststore_in_keytool() {
    keytool_lists_the_truststore_as_trusted_entries("rsa.example.test");
}

#[test]
fn ecdsa_stores_in_java() {
    java_uses_the_key_and_the_chain("live.example.test", "www.live.example.test");
}

#[test]
fn rsa_stores_in_java() {
    java_uses_the_key_and_the_chain("rsa.example.test", "rsa.example.test");
}

#[test]
fn p384_stores_in_java() {
    java_uses_the_key_and_the_chain("p384.example.test", "p384.example.test");
}

#[test]
fn keytool_refuses_a_wrong_password() {
    let s = Stores::new("live.example.test");
    let wrong = s.dir.path().join("wrong.pass");
    fs::write(&wrong, "not-the-password\n").unwrap();
    for store in [&s.keystore, &s.truststore] {
        let out = s.keytool_with(store, &wrong, &[]);
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(all.contains("password was incorrect"), "{all}");
        // The right one still works.
        assert!(s.keytool(store, &[]).status.success());
    }
}

/// An independent reader (OpenSSL) sees the modern scheme: PBES2 with
/// PBKDF2-HMAC-SHA256 and AES-256-CBC, and an HMAC-SHA256 MAC.
#[test]
fn openssl_sees_aes256_and_hmac_sha256() {
    let s = Stores::new("live.example.test");
    for store in [&s.keystore, &s.truststore] {
        let mut cmd = Command::new("openssl");
        cmd.args(["pkcs12", "-info", "-noout", "-in"])
            .arg(store)
            .arg("-passin")
            .arg(format!("file:{}", s.password_file.display()));
        let out = run(cmd, "openssl");
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(all.contains("MAC: sha256, Iteration 10000"), "{all}");
        assert!(
            all.contains("PBES2, PBKDF2, AES-256-CBC, Iteration 10000, PRF hmacWithSHA256"),
            "{all}"
        );
        assert!(!all.contains("3DES") && !all.contains("RC2"), "{all}");
    }
}
