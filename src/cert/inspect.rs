//! Reading a certbot lineage (`/etc/letsencrypt/live/<name>/`): the PEM
//! bundles, the private key ([`super::key`]), the checks that the files
//! belong together, and [`CertInfo`] for status.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::key::parse_private_key;
pub use super::key::{PrivateKey, PublicKey, public_key_of_certificate, public_key_of_private};
use crate::host::fs::{Cap, read_capped_real};

/// certbot's file names in a lineage folder.
pub const FULLCHAIN: &str = "fullchain.pem";
pub const CHAIN: &str = "chain.pem";
pub const CERT: &str = "cert.pem";
pub const PRIVKEY: &str = "privkey.pem";

// ---------------------------------------------------------------- PEM

/// Every PEM block of `text`. Refuses an empty file, a file without any PEM
/// block (binary DER, garbage) and truncated or corrupt blocks. Text between
/// blocks (e.g. openssl's "Bag Attributes" lines) is ignored.
pub fn parse_pem(text: &[u8]) -> Result<Vec<pem::Pem>> {
    if text.iter().all(u8::is_ascii_whitespace) {
        bail!("the file is empty");
    }
    let blocks = pem::parse_many(text).map_err(|e| anyhow!("corrupt PEM block: {e}"))?;
    if blocks.is_empty() {
        if text.first() == Some(&0x30) {
            bail!(
                "not PEM: this looks like binary DER, expected text with -----BEGIN ...----- blocks"
            );
        }
        bail!("not PEM: no -----BEGIN ...----- block found");
    }
    let begins = text.windows(11).filter(|w| w == b"-----BEGIN ").count();
    ensure!(
        begins == blocks.len(),
        "found {begins} -----BEGIN lines but {} complete PEM blocks: the file is truncated or corrupt",
        blocks.len()
    );
    Ok(blocks)
}

/// The certificates (DER) of a PEM bundle, in file order. Every block must be a
/// CERTIFICATE that parses as X.509.
pub fn parse_certificates(text: &[u8]) -> Result<Vec<Vec<u8>>> {
    let blocks = parse_pem(text)?;
    let mut certs = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        ensure!(
            block.tag() == "CERTIFICATE",
            "PEM block {} is a {:?} where a CERTIFICATE was expected",
            i + 1,
            block.tag()
        );
        parse_x509(block.contents()).with_context(|| format!("parsing certificate {}", i + 1))?;
        certs.push(block.contents().to_vec());
    }
    Ok(certs)
}

pub(crate) fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("not a valid X.509 certificate: {e}"))?;
    ensure!(
        rest.is_empty(),
        "{} bytes of trailing data after the certificate",
        rest.len()
    );
    Ok(cert)
}

// ---------------------------------------------------------------- certificate info

/// What status reporting shows about a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// SAN DNS names in certificate order; the subject CN if there is no SAN.
    pub domains: Vec<String>,
    /// The issuer's CN, or its whole DN if it has none.
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let cert = parse_x509(der)?;
        let mut domains = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| anyhow!("invalid subjectAltName extension: {e}"))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    domains.push(dns.to_string());
                }
            }
        }
        if domains.is_empty() {
            if let Some(cn) = common_name(cert.subject()) {
                domains.push(cn);
            }
        }
        let issuer = common_name(cert.issuer()).unwrap_or_else(|| cert.issuer().to_string());
        Ok(CertInfo {
            domains,
            issuer,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// The first certificate of a PEM bundle (the leaf in cert.pem and fullchain.pem).
    pub fn from_pem(text: &[u8]) -> Result<Self> {
        let certs = parse_certificates(text)?;
        Self::from_der(&certs[0])
    }

    /// Whole days until `not_after`, rounded down; negative once expired.
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

fn common_name(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

// ---------------------------------------------------------------- lineage

/// A certbot lineage whose files were checked to belong together: the private
/// key matches the leaf, fullchain.pem starts with the leaf and each
/// certificate is issued by the next, cert.pem and chain.pem (when present)
/// are fullchain.pem's leaf and rest.
#[derive(Clone)]
pub struct Lineage {
    dir: Option<PathBuf>,
    fullchain: Vec<Vec<u8>>,
    key: Vec<u8>,
}

impl fmt::Debug for Lineage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lineage")
            .field("dir", &self.dir)
            .field("certificates", &self.fullchain.len())
            .field("key", &"<PKCS#8>")
            .finish()
    }
}

impl Lineage {
    /// Reads fullchain.pem and privkey.pem (required), cert.pem and chain.pem
    /// (checked when present; certbot always writes them) from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str, required: bool| -> Result<Option<Vec<u8>>> {
            let path = dir.join(name);
            let shown = path.display().to_string();
            match read_capped_real(&path, &shown, Cap::PEM)? {
                Some((bytes, _)) => Ok(Some(bytes)),
                None if !required => Ok(None),
                None => bail!("reading {shown}: no such file"),
            }
        };
        let fullchain = read(FULLCHAIN, true)?.unwrap_or_default();
        let privkey = read(PRIVKEY, true)?.unwrap_or_default();
        let cert = read(CERT, false)?;
        let chain = read(CHAIN, false)?;
        let mut lineage = Self::from_pem(&fullchain, chain.as_deref(), cert.as_deref(), &privkey)
            .with_context(|| {
            format!("checking the certificate lineage in {}", dir.display())
        })?;
        lineage.dir = Some(dir.to_path_buf());
        Ok(lineage)
    }

    /// The same checks as [`Lineage::load`] on the files' contents.
    pub fn from_pem(
        fullchain: &[u8],
        chain: Option<&[u8]>,
        cert: Option<&[u8]>,
        privkey: &[u8],
    ) -> Result<Self> {
        let full = parse_certificates(fullchain).with_context(|| format!("parsing {FULLCHAIN}"))?;
        let key = parse_private_key(privkey).with_context(|| format!("parsing {PRIVKEY}"))?;

        let key = match key.matching(&full[0]) {
            Ok(pkcs8) => pkcs8,
            Err(mismatch) => {
                if let Some(i) = full.iter().skip(1).position(|c| key.matching(c).is_ok()) {
                    bail!(
                        "{FULLCHAIN} does not start with the leaf: {PRIVKEY} belongs to its certificate {}",
                        i + 2
                    );
                }
                return Err(mismatch)
                    .with_context(|| format!("matching {PRIVKEY} with the leaf of {FULLCHAIN}"));
            }
        };
        check_chain_order(&full).with_context(|| format!("checking the order of {FULLCHAIN}"))?;

        if let Some(cert) = cert {
            let certs = parse_certificates(cert).with_context(|| format!("parsing {CERT}"))?;
            ensure!(
                certs.len() == 1 && certs[0] == full[0],
                "{CERT} is not the first certificate of {FULLCHAIN} (a lineage caught mid-renewal?)"
            );
        }
        if let Some(chain) = chain {
            let chain = parse_certificates(chain).with_context(|| format!("parsing {CHAIN}"))?;
            ensure!(
                chain.as_slice() == &full[1..],
                "{CHAIN} is not {FULLCHAIN} without its first certificate (a lineage caught mid-renewal?)"
            );
        }
        Ok(Lineage {
            dir: None,
            fullchain: full,
            key,
        })
    }

    /// The folder it was loaded from, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Leaf first, then the intermediates, as in fullchain.pem (DER).
    pub fn fullchain(&self) -> &[Vec<u8>] {
        &self.fullchain
    }

    /// The leaf certificate (DER).
    pub fn leaf(&self) -> &[u8] {
        &self.fullchain[0]
    }

    /// fullchain minus the leaf: the CA certificates (DER), as in chain.pem.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.fullchain[1..]
    }

    /// The private key, PKCS#8 DER.
    pub fn private_key_pkcs8(&self) -> &[u8] {
        &self.key
    }

    pub fn leaf_info(&self) -> Result<CertInfo> {
        CertInfo::from_der(self.leaf())
    }
}

/// Each certificate must be issued (by name) by the next one.
fn check_chain_order(certs: &[Vec<u8>]) -> Result<()> {
    let parsed = certs
        .iter()
        .map(|c| parse_x509(c))
        .collect::<Result<Vec<_>>>()?;
    for (i, pair) in parsed.windows(2).enumerate() {
        let (cert, next) = (&pair[0], &pair[1]);
        ensure!(
            cert.issuer().as_raw() == next.subject().as_raw(),
            "certificate {} ({}) is issued by {}, but certificate {} is {}: the chain is out of order or incomplete",
            i + 1,
            cert.subject(),
            cert.issuer(),
            i + 2,
            next.subject()
        );
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fixture(rel: &str) -> PathBuf {
        crate::cert::testpki::dir().join(rel)
    }

    pub(crate) fn read(rel: &str) -> Vec<u8> {
        std::fs::read(fixture(rel)).unwrap()
    }

    pub(crate) const ECDSA: &str = "live/live.example.test";
    pub(crate) const RSA: &str = "live/rsa.example.test";
    pub(crate) const P384: &str = "live/p384.example.test";

    pub(crate) fn files(dir: &str) -> [Vec<u8>; 4] {
        ["fullchain.pem", "chain.pem", "cert.pem", "privkey.pem"]
            .map(|f| read(&format!("{dir}/{f}")))
    }

    pub(crate) fn err_text(e: anyhow::Error) -> String {
        format!("{e:#}")
    }

    #[test]
    fn loads_the_ecdsa_lineage() {
        let lineage = Lineage::load(&fixture(ECDSA)).unwrap();
        assert_eq!(lineage.fullchain().len(), 2);
        assert_eq!(lineage.chain().len(), 1);
        assert_eq!(
            lineage.leaf(),
            parse_certificates(&read(&format!("{ECDSA}/cert.pem"))).unwrap()[0]
        );
        assert_eq!(
            lineage.chain(),
            parse_certificates(&read(&format!("{ECDSA}/chain.pem"))).unwrap()
        );
        assert_eq!(lineage.dir(), Some(fixture(ECDSA).as_path()));
        // The key file is PKCS#8 already and is kept byte for byte.
        let pem = pem::parse(read(&format!("{ECDSA}/privkey.pem"))).unwrap();
        assert_eq!(lineage.private_key_pkcs8(), pem.contents());
        let info = lineage.leaf_info().unwrap();
        assert_eq!(info.domains, ["live.example.test", "www.live.example.test"]);
        assert_eq!(info.issuer, "AMS Agent Test E1");
        assert!(info.not_after > 4_000_000_000, "{info:?}");
        assert!(info.not_before < info.not_after);
        assert!(
            !format!("{lineage:?}").contains(&format!("{:?}", &lineage.private_key_pkcs8()[..8]))
        );
    }

    #[test]
    fn loads_the_rsa_lineage_with_its_long_chain() {
        let lineage = Lineage::load(&fixture(RSA)).unwrap();
        assert_eq!(lineage.fullchain().len(), 3);
        assert_eq!(lineage.chain().len(), 2);
        assert!(matches!(
            public_key_of_private(lineage.private_key_pkcs8()).unwrap(),
            PublicKey::Rsa { .. }
        ));
        assert_eq!(
            public_key_of_private(lineage.private_key_pkcs8())
                .unwrap()
                .to_string(),
            "RSA 2048"
        );
        assert_eq!(
            lineage.leaf_info().unwrap().domains,
            ["rsa.example.test", "www.rsa.example.test"]
        );
    }

    #[test]
    fn accepts_missing_cert_and_chain_files() {
        let [full, _, _, key] = files(RSA);
        let lineage = Lineage::from_pem(&full, None, None, &key).unwrap();
        assert_eq!(lineage.chain().len(), 2);
    }

    #[test]
    fn refuses_a_fullchain_not_starting_with_the_leaf() {
        let [full, _, _, key] = files(ECDSA);
        let mut certs = pem::parse_many(&full).unwrap();
        certs.reverse();
        let reversed = pem::encode_many(&certs);
        let e = err_text(Lineage::from_pem(reversed.as_bytes(), None, None, &key).unwrap_err());
        assert!(e.contains("fullchain.pem does not start with the leaf: privkey.pem belongs to its certificate 2"), "{e}");
    }

    #[test]
    fn refuses_a_chain_out_of_order() {
        let [full, _, _, key] = files(RSA);
        let mut certs = pem::parse_many(&full).unwrap();
        certs.swap(1, 2);
        let swapped = pem::encode_many(&certs);
        let e = err_text(Lineage::from_pem(swapped.as_bytes(), None, None, &key).unwrap_err());
        assert!(e.contains("checking the order of fullchain.pem"), "{e}");
        assert!(e.contains("out of order or incomplete"), "{e}");
    }

    #[test]
    fn refuses_cert_and_chain_files_of_another_lineage() {
        let [full, chain, cert, key] = files(ECDSA);
        let [_, rsa_chain, rsa_cert, _] = files(RSA);
        let e =
            err_text(Lineage::from_pem(&full, Some(&chain), Some(&rsa_cert), &key).unwrap_err());
        assert!(
            e.contains("cert.pem is not the first certificate of fullchain.pem"),
            "{e}"
        );
        let e =
            err_text(Lineage::from_pem(&full, Some(&rsa_chain), Some(&cert), &key).unwrap_err());
        assert!(
            e.contains("chain.pem is not fullchain.pem without its first certificate"),
            "{e}"
        );
        // cert.pem holding the whole chain is not cert.pem either.
        let e = err_text(Lineage::from_pem(&full, Some(&chain), Some(&full), &key).unwrap_err());
        assert!(e.contains("cert.pem is not the first certificate"), "{e}");
    }

    #[test]
    fn refuses_non_pem_input() {
        let cases: [(&[u8], &str); 6] = [
            (b"", "the file is empty"),
            (b"  \n\t\n", "the file is empty"),
            (
                b"hello, I am not a certificate\n",
                "no -----BEGIN ...----- block found",
            ),
            (&[0x30, 0x82, 0x01, 0x0a, 0x02], "looks like binary DER"),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
                "corrupt PEM block",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "parsing certificate 1: not a valid X.509 certificate",
            ),
        ];
        for (input, expected) in cases {
            let e = err_text(parse_certificates(input).unwrap_err());
            assert!(e.contains(expected), "{input:?}: {e}");
        }
        // A truncated second certificate.
        let full = read(&format!("{ECDSA}/fullchain.pem"));
        let text = String::from_utf8(full).unwrap();
        let cut = &text[..text.rfind("-----END").unwrap()];
        let e = err_text(parse_certificates(cut.as_bytes()).unwrap_err());
        assert!(e.contains("truncated or corrupt"), "{e}");
        // A private key where certificates were expected.
        let e = err_text(parse_certificates(&read(&format!("{ECDSA}/privkey.pem"))).unwrap_err());
        assert!(
            e.contains("PEM block 1 is a \"PRIVATE KEY\" where a CERTIFICATE was expected"),
            "{e}"
        );
    }

    #[test]
    fn load_names_the_file_and_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let e = err_text(Lineage::load(dir.path()).unwrap_err());
        assert!(
            e.contains(&format!("reading {}/fullchain.pem", dir.path().display())),
            "{e}"
        );
        for f in ["fullchain.pem", "privkey.pem"] {
            std::fs::copy(fixture(&format!("{ECDSA}/{f}")), dir.path().join(f)).unwrap();
        }
        std::fs::write(dir.path().join("chain.pem"), "garbage").unwrap();
        let e = err_text(Lineage::load(dir.path()).unwrap_err());
        assert!(
            e.contains(&format!(
                "checking the certificate lineage in {}",
                dir.path().display()
            )),
            "{e}"
        );
        assert!(e.contains("parsing chain.pem: not PEM"), "{e}");
        std::fs::remove_file(dir.path().join("chain.pem")).unwrap();
        Lineage::load(dir.path()).unwrap();
    }

    #[test]
    fn cert_info_falls_back_to_the_cn_and_counts_days() {
        let info = CertInfo::from_pem(&read("ca/root.pem")).unwrap();
        assert_eq!(info.domains, ["AMS Agent Test Root X"]);
        assert_eq!(info.issuer, "AMS Agent Test Root X");
        let cert = CertInfo::from_pem(&read(&format!("{ECDSA}/fullchain.pem"))).unwrap();
        assert_eq!(cert.domains[0], "live.example.test");
        assert_eq!(cert.days_left(cert.not_after - 10 * 86_400), 10);
        assert_eq!(cert.days_left(cert.not_after - 10 * 86_400 + 1), 9);
        assert_eq!(cert.days_left(cert.not_after), 0);
        assert_eq!(cert.days_left(cert.not_after + 1), -1);
        let json = serde_json::to_value(&cert).unwrap();
        assert_eq!(json["issuer"], "AMS Agent Test E1");
    }
}
