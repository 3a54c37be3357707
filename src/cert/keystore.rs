//! The two PKCS#12 stores AMS reads from `conf/` (named `.jks`, PKCS#12
//! inside, as Java 9+ writes by default), written without keytool or openssl:
//!
//! - `keystore.jks`: one PrivateKeyEntry, alias `tomcat`: the private key and
//!   the whole chain of fullchain.pem (leaf, then intermediates), which
//!   Tomcat's HTTPS connector and RTMPS serve to clients.
//! - `truststore.jks`: one trustedCertEntry per CA certificate of the lineage
//!   (chain.pem: the intermediates, and whatever else certbot put after the
//!   leaf). AMS only hands it to its TLS server as trust anchors, used when a
//!   peer presents a certificate (client authentication); the certificates
//!   of our own CA are the meaningful anchors for that, and the leaf is not
//!   (Java never needs to trust the server's own certificate). Java refuses
//!   an empty truststore ("the trustAnchors parameter must be non-empty"), so
//!   a lineage without a CA certificate (self-signed leaf) trusts its leaf.
//!
//! Both are encrypted with one password: PBES2 (PBKDF2-HMAC-SHA256,
//! AES-256-CBC) for the keys and certificates, an HMAC-SHA256 integrity MAC;
//! Java's own defaults since 8u301/11.0.12/17. Trusted entries carry
//! Oracle's trusted-key-usage attribute (2.16.840.1.113894.746875.1.1 =
//! anyExtendedKeyUsage), without which Java ignores a certificate-only entry.

use anyhow::{Context, Result, anyhow, ensure};
use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, Pkcs12ImportPolicy,
    PrivateKey, PrivateKeyChain,
};

use crate::cert::inspect::Lineage;

/// The alias Tomcat and AMS look the key up by.
pub const KEY_ALIAS: &str = "tomcat";
/// PBKDF2 and MAC iterations: Java's defaults (keystore.pkcs12.*IterationCount).
const ITERATIONS: u32 = 10_000;

/// `conf/keystore.jks`: the key and the whole chain under alias `tomcat`.
pub fn keystore_p12(lineage: &Lineage, password: &str) -> Result<Vec<u8>> {
    check_password(password)?;
    let key = PrivateKey::from_der(lineage.private_key_pkcs8())
        .map_err(|e| anyhow!("{e}"))
        .context("reading the private key")?;
    let certs = lineage
        .fullchain()
        .iter()
        .enumerate()
        .map(|(i, der)| {
            Certificate::from_der(der)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("reading certificate {} of the chain", i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    // Java names the localKeyId "Time <millis>"; any value linking key and leaf works.
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let chain = PrivateKeyChain::new(format!("Time {millis}"), key, certs);
    let mut store = KeyStore::new();
    store.add_entry(KEY_ALIAS, KeyStoreEntry::PrivateKeyChain(chain));
    write(&store, password).context("writing the keystore")
}

/// `conf/truststore.jks`: the lineage's CA certificates as trusted entries
/// (see the module documentation for why these).
pub fn truststore_p12(lineage: &Lineage, password: &str) -> Result<Vec<u8>> {
    check_password(password)?;
    let mut store = KeyStore::new();
    for (alias, der) in trusted_certs(lineage) {
        let cert = Certificate::from_der(der)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("reading the certificate for {alias}"))?;
        store.add_entry(&alias, KeyStoreEntry::Certificate(cert));
    }
    write(&store, password).context("writing the truststore")
}

/// What the truststore holds: (alias, DER) for each certificate of chain.pem,
/// or the leaf when the chain is empty. Aliases are the lowercased CNs
/// (`e5`, `r11` for Let's Encrypt's intermediates), made unique.
pub fn trusted_certs(lineage: &Lineage) -> Vec<(String, &[u8])> {
    let certs: Vec<&[u8]> = if lineage.chain().is_empty() {
        vec![lineage.leaf()]
    } else {
        lineage.chain().iter().map(Vec::as_slice).collect()
    };
    let mut out: Vec<(String, &[u8])> = Vec::with_capacity(certs.len());
    for der in certs {
        let base = alias_for(der);
        let mut alias = base.clone();
        let mut n = 2;
        while out.iter().any(|(a, _)| *a == alias) {
            alias = format!("{base}-{n}");
            n += 1;
        }
        out.push((alias, der));
    }
    out
}

fn alias_for(der: &[u8]) -> String {
    let cn = x509_parser::parse_x509_certificate(der)
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let mut alias = String::new();
    for c in cn.chars() {
        if c.is_ascii_alphanumeric() {
            alias.push(c.to_ascii_lowercase());
        } else if !alias.is_empty() && !alias.ends_with('-') {
            alias.push('-');
        }
    }
    let alias = alias.trim_end_matches('-');
    if alias.is_empty() {
        "ca".to_string()
    } else {
        alias.to_string()
    }
}

fn check_password(password: &str) -> Result<()> {
    ensure!(!password.is_empty(), "refusing an empty store password");
    // PKCS#12 and Java disagree on how non-ASCII passwords become bytes.
    ensure!(
        password.bytes().all(|b| b.is_ascii_graphic()),
        "the store password must be printable ASCII without spaces"
    );
    Ok(())
}

fn write(store: &KeyStore, password: &str) -> Result<Vec<u8>> {
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(ITERATIONS)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .mac_iterations(ITERATIONS)
        .write()
        .map_err(|e| anyhow!("{e}"))
}

/// A random store password (see [`crate::secret::random_password`]).
pub fn random_store_password() -> Result<String> {
    crate::secret::random_password()
}

fn open(existing: &[u8], password: &str, policy: Pkcs12ImportPolicy) -> Option<KeyStore> {
    KeyStore::from_pkcs12(existing, password, policy).ok()
}

/// True when `existing` opens with `password` and holds exactly what
/// [`keystore_p12`] would write for `lineage`: one entry, alias `tomcat`, this
/// private key (same PKCS#8) and this chain in order. PKCS#12 output is salted,
/// so this is the way to make a re-deploy a no-op. Any doubt is `false`.
pub fn store_matches(existing: &[u8], password: &str, lineage: &Lineage) -> bool {
    let Some(store) = open(existing, password, Pkcs12ImportPolicy::Relaxed) else {
        return false;
    };
    if store.entries_len() != 1 {
        return false;
    }
    let Some(KeyStoreEntry::PrivateKeyChain(chain)) = store.entry(KEY_ALIAS) else {
        return false;
    };
    chain.key().as_der() == lineage.private_key_pkcs8()
        && chain.certs().len() == lineage.fullchain().len()
        && chain
            .certs()
            .iter()
            .zip(lineage.fullchain())
            .all(|(c, der)| c.as_der() == der.as_slice())
}

/// True when `existing` opens with `password` and holds exactly the trusted
/// certificates [`truststore_p12`] would write for `lineage` (and nothing else).
pub fn truststore_matches(existing: &[u8], password: &str, lineage: &Lineage) -> bool {
    let Some(store) = open(existing, password, Pkcs12ImportPolicy::Relaxed) else {
        return false;
    };
    let mut held = Vec::new();
    for (_, entry) in store.entries() {
        match entry {
            KeyStoreEntry::Certificate(c) => held.push(c.as_der()),
            _ => return false,
        }
    }
    let mut wanted: Vec<&[u8]> = trusted_certs(lineage)
        .into_iter()
        .map(|(_, der)| der)
        .collect();
    held.sort();
    wanted.sort();
    held == wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::inspect::CertInfo;
    use anyhow::{anyhow, bail};

    /// The leaf of a PKCS#12 store's key entry: alias `tomcat`, else the only
    /// private key entry.
    fn from_pkcs12(store: &[u8], password: &str) -> anyhow::Result<CertInfo> {
        use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
        let store = KeyStore::from_pkcs12(store, password, Pkcs12ImportPolicy::Strict)
            .map_err(|e| anyhow!("{e} (wrong password or not a PKCS#12 store?)"))
            .context("opening the PKCS#12 store")?;
        let chain = match store.entry(KEY_ALIAS) {
            Some(KeyStoreEntry::PrivateKeyChain(chain)) => chain,
            _ => {
                let keys: Vec<_> = store
                    .entries()
                    .filter_map(|(_, e)| match e {
                        KeyStoreEntry::PrivateKeyChain(c) => Some(c),
                        _ => None,
                    })
                    .collect();
                match keys.as_slice() {
                    [chain] => *chain,
                    [] => bail!("the store holds no private key entry"),
                    _ => bail!(
                        "the store holds {} private key entries and none is named tomcat",
                        keys.len()
                    ),
                }
            }
        };
        let leaf = chain
            .certs()
            .first()
            .ok_or_else(|| anyhow!("the store's private key entry has no certificate"))?;
        CertInfo::from_der(leaf.as_der()).context("reading the store's leaf certificate")
    }

    fn lineage(name: &str) -> Lineage {
        Lineage::load(&crate::cert::testpki::lineage(name)).unwrap()
    }

    const PW: &str = "s3cretS3cretS3cretS3cretS3cret12";

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn keystore_round_trips_with_the_whole_chain() {
        for name in ["live.example.test", "rsa.example.test", "p384.example.test"] {
            let l = lineage(name);
            let bytes = keystore_p12(&l, PW).unwrap();
            let store = KeyStore::from_pkcs12(&bytes, PW, Pkcs12ImportPolicy::Strict).unwrap();
            assert_eq!(store.entries_len(), 1, "{name}");
            let Some(KeyStoreEntry::PrivateKeyChain(chain)) = store.entry("tomcat") else {
                panic!("no tomcat key entry in {name}");
            };
            assert_eq!(chain.key().as_der(), l.private_key_pkcs8());
            let certs: Vec<&[u8]> = chain.certs().iter().map(|c| c.as_der()).collect();
            let want: Vec<&[u8]> = l.fullchain().iter().map(Vec::as_slice).collect();
            assert_eq!(certs, want, "{name}");
            assert!(store_matches(&bytes, PW, &l));
            let info = from_pkcs12(&bytes, PW).unwrap();
            assert_eq!(info, l.leaf_info().unwrap());
        }
    }

    #[test]
    fn stores_use_pbes2_aes256_and_an_hmac_sha256_mac() {
        let l = lineage("live.example.test");
        for bytes in [
            keystore_p12(&l, PW).unwrap(),
            truststore_p12(&l, PW).unwrap(),
        ] {
            // The algorithm identifiers sit in the clear around the encrypted parts.
            let pbes2 = [
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d,
            ];
            let aes256_cbc = [
                0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a,
            ];
            let hmac_sha256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x09];
            let sha256 = [
                0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
            ];
            let pkcs12_pbe = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01];
            for oid in [&pbes2[..], &aes256_cbc, &hmac_sha256, &sha256] {
                assert!(contains(&bytes, oid), "{oid:02x?}");
            }
            assert!(
                !contains(&bytes, &pkcs12_pbe),
                "a legacy PKCS#12 PBE scheme is used"
            );
        }
    }

    #[test]
    fn truststore_holds_the_ca_certificates_as_trusted_entries() {
        let l = lineage("rsa.example.test");
        let bytes = truststore_p12(&l, PW).unwrap();
        // Strict import only keeps certificates carrying the trusted-key-usage attribute.
        let store = KeyStore::from_pkcs12(&bytes, PW, Pkcs12ImportPolicy::Strict).unwrap();
        let mut entries: Vec<(String, Vec<u8>)> = store
            .entries()
            .map(|(alias, e)| match e {
                KeyStoreEntry::Certificate(c) => (alias.clone(), c.as_der().to_vec()),
                other => panic!("unexpected entry {other:?}"),
            })
            .collect();
        entries.sort();
        let mut want: Vec<(String, Vec<u8>)> = l
            .chain()
            .iter()
            .map(|c| (alias_for(c), c.clone()))
            .collect();
        want.sort();
        assert_eq!(entries, want);
        let aliases: Vec<&str> = entries.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(aliases, ["ams-agent-test-r1", "ams-agent-test-root-x"]);
        assert!(!entries.iter().any(|(_, der)| der.as_slice() == l.leaf()));
        assert!(truststore_matches(&bytes, PW, &l));
        assert!(!truststore_matches(
            &bytes,
            PW,
            &lineage("live.example.test")
        ));
        assert!(!truststore_matches(&bytes, "wrong", &l));
        assert!(!truststore_matches(&keystore_p12(&l, PW).unwrap(), PW, &l));
        // A truststore is not a keystore.
        assert!(!store_matches(&bytes, PW, &l));
        assert!(from_pkcs12(&bytes, PW).is_err());
    }

    #[test]
    fn aliases_are_unique_and_tidy() {
        let l = lineage("live.example.test");
        let t = trusted_certs(&l);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, "ams-agent-test-e1");
        assert_eq!(t[0].1, l.chain()[0].as_slice());
    }

    #[test]
    fn store_matches_only_the_same_key_and_chain() {
        let ecdsa = lineage("live.example.test");
        let rsa = lineage("rsa.example.test");
        let bytes = keystore_p12(&ecdsa, PW).unwrap();
        assert!(store_matches(&bytes, PW, &ecdsa));
        assert!(!store_matches(&bytes, "wrong-password", &ecdsa));
        assert!(!store_matches(&bytes, PW, &rsa));
        assert!(!store_matches(b"not a store", PW, &ecdsa));
        assert!(!store_matches(&[], PW, &ecdsa));
        // Same key, another chain (the leaf only).
        let dir = crate::cert::testpki::lineage("live.example.test");
        let cert = std::fs::read(dir.join("cert.pem")).unwrap();
        let key = std::fs::read(dir.join("privkey.pem")).unwrap();
        let leaf_only = Lineage::from_pem(&cert, None, None, &key).unwrap();
        assert!(!store_matches(&bytes, PW, &leaf_only));
        assert!(store_matches(
            &keystore_p12(&leaf_only, PW).unwrap(),
            PW,
            &leaf_only
        ));
        // Salted: two writes differ byte for byte but both match.
        let again = keystore_p12(&ecdsa, PW).unwrap();
        assert_ne!(bytes, again);
        assert!(store_matches(&again, PW, &ecdsa));
    }

    #[test]
    fn leaf_only_lineage_trusts_its_leaf() {
        let dir = crate::cert::testpki::lineage("live.example.test");
        let cert = std::fs::read(dir.join("cert.pem")).unwrap();
        let key = std::fs::read(dir.join("privkey.pem")).unwrap();
        let l = Lineage::from_pem(&cert, None, None, &key).unwrap();
        let t = trusted_certs(&l);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].1, l.leaf());
        assert_eq!(t[0].0, "live-example-test");
    }

    #[test]
    fn wrong_passwords_and_bad_passwords() {
        let l = lineage("live.example.test");
        let bytes = keystore_p12(&l, PW).unwrap();
        let e = format!("{:#}", from_pkcs12(&bytes, "nope").unwrap_err());
        assert!(e.contains("opening the PKCS#12 store"), "{e}");
        let e = format!("{:#}", keystore_p12(&l, "").unwrap_err());
        assert!(e.contains("empty store password"), "{e}");
        let e = format!("{:#}", truststore_p12(&l, "pässword").unwrap_err());
        assert!(e.contains("printable ASCII"), "{e}");
    }

    #[test]
    fn random_passwords_are_32_alphanumerics() {
        let a = random_store_password().unwrap();
        let b = random_store_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
        // All 62 characters show up over enough samples (the mapping is not lopsided).
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            seen.extend(random_store_password().unwrap().bytes());
        }
        assert_eq!(seen.len(), 62);
    }
}
