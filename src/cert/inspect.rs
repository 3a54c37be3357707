//! Reading a certbot lineage (`/etc/letsencrypt/live/<name>/`): the PEM
//! bundles, the private key (PKCS#8, or SEC1/PKCS#1 converted to PKCS#8), the
//! checks that the files belong together, and [`CertInfo`] for status.
//!
//! Key/certificate matching needs no crypto library: for RSA the modulus and
//! exponent of the key must equal the certificate's, and the key's private
//! exponent must invert the public one (a round trip on a test value); for
//! ECDSA (P-256, P-384) the public point is computed from the private scalar
//! (d·G, with the `num-bigint` that x509-parser re-exports) and compared with
//! the certificate's point, and with the point the key file carries, if any.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::num_bigint::BigUint;

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

/// The private key of a PEM file as PKCS#8 DER. "PRIVATE KEY" (PKCS#8, what
/// certbot writes) is taken as is; "EC PRIVATE KEY" (SEC1) and "RSA PRIVATE
/// KEY" (PKCS#1) are converted to the PKCS#8 that OpenSSL would write; an
/// "EC PARAMETERS" block next to the key is ignored. Encrypted keys are
/// refused. The key is checked to be a well-formed RSA or ECDSA P-256/P-384 key.
pub fn parse_private_key(text: &[u8]) -> Result<Vec<u8>> {
    let blocks = parse_pem(text)?;
    let keys: Vec<&pem::Pem> = blocks
        .iter()
        .filter(|b| b.tag() != "EC PARAMETERS")
        .collect();
    let [block] = keys.as_slice() else {
        let tags: Vec<&str> = keys.iter().map(|b| b.tag()).collect();
        bail!(
            "expected exactly one private key, found {} PEM blocks ({})",
            keys.len(),
            tags.join(", ")
        );
    };
    let encrypted = block
        .headers()
        .get("Proc-Type")
        .is_some_and(|v| v.contains("ENCRYPTED"));
    let pkcs8 = match block.tag() {
        _ if encrypted => bail!(
            "the private key is encrypted with a passphrase; certbot writes it unencrypted (decrypt it with `openssl pkey`)"
        ),
        "PRIVATE KEY" => block.contents().to_vec(),
        "EC PRIVATE KEY" => sec1_to_pkcs8(block.contents())
            .context("converting the EC PRIVATE KEY (SEC1) to PKCS#8")?,
        "RSA PRIVATE KEY" => rsa_to_pkcs8(block.contents())
            .context("converting the RSA PRIVATE KEY (PKCS#1) to PKCS#8")?,
        "ENCRYPTED PRIVATE KEY" => bail!(
            "the private key is encrypted with a passphrase; certbot writes it unencrypted (decrypt it with `openssl pkey`)"
        ),
        "CERTIFICATE" => bail!("this is a certificate, not a private key"),
        other => bail!("unsupported PEM block {other:?} where a PRIVATE KEY was expected"),
    };
    public_key_of_private(&pkcs8).context("reading the private key")?;
    Ok(pkcs8)
}

fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>> {
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

    /// The leaf of a PKCS#12 store's key entry: alias `tomcat`, else the only
    /// private key entry.
    pub fn from_pkcs12(store: &[u8], password: &str) -> Result<Self> {
        use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
        let store = KeyStore::from_pkcs12(store, password, Pkcs12ImportPolicy::Strict)
            .map_err(|e| anyhow!("{e} (wrong password or not a PKCS#12 store?)"))
            .context("opening the PKCS#12 store")?;
        let chain = match store.entry(crate::cert::keystore::KEY_ALIAS) {
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
        Self::from_der(leaf.as_der()).context("reading the store's leaf certificate")
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
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
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

        if let Err(mismatch) = check_key_matches(&key, &full[0]) {
            if let Some(i) = full
                .iter()
                .skip(1)
                .position(|c| check_key_matches(&key, c).is_ok())
            {
                bail!(
                    "{FULLCHAIN} does not start with the leaf: {PRIVKEY} belongs to its certificate {}",
                    i + 2
                );
            }
            return Err(mismatch)
                .with_context(|| format!("matching {PRIVKEY} with the leaf of {FULLCHAIN}"));
        }
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

// ---------------------------------------------------------------- keys

/// The public half of a key, as compared between a private key and a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Big-endian, without leading zeros.
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    /// `point` is uncompressed: 04 || X || Y.
    Ec { curve: &'static str, point: Vec<u8> },
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKey::Rsa { modulus, .. } => {
                write!(f, "RSA {}", BigUint::from_bytes_be(modulus).bits())
            }
            PublicKey::Ec { curve, .. } => write!(f, "ECDSA {curve}"),
        }
    }
}

/// Fails unless the PKCS#8 private key is the key of the certificate.
pub fn check_key_matches(pkcs8: &[u8], cert_der: &[u8]) -> Result<()> {
    let private = public_key_of_private(pkcs8).context("reading the private key")?;
    let public = public_key_of_certificate(cert_der)?;
    if private != public {
        let subject = parse_x509(cert_der)
            .map(|c| c.subject().to_string())
            .unwrap_or_default();
        bail!("the private key ({private}) is not the key of the certificate {subject} ({public})");
    }
    Ok(())
}

/// The public key of a certificate.
pub fn public_key_of_certificate(der: &[u8]) -> Result<PublicKey> {
    let cert = parse_x509(der)?;
    let spki = cert.public_key().raw;
    let mut outer = Der::new(spki)
        .sequence()
        .context("reading the certificate's public key")?;
    let mut alg = outer.sequence()?;
    let oid = alg.oid()?;
    let bits = outer.bit_string()?;
    match oid {
        oid::RSA_ENCRYPTION => {
            let mut rsa = Der::new(bits).sequence()?;
            let modulus = rsa.uint()?.to_vec();
            let exponent = rsa.uint()?.to_vec();
            Ok(PublicKey::Rsa { modulus, exponent })
        }
        oid::EC_PUBLIC_KEY => {
            let curve = Curve::by_oid(alg.oid()?)?;
            let point = curve.uncompressed(bits)?;
            Ok(PublicKey::Ec {
                curve: curve.name,
                point,
            })
        }
        other => bail!("unsupported certificate key algorithm {}", oid::name(other)),
    }
}

/// The public key of a PKCS#8 private key, derived from its private part.
pub fn public_key_of_private(pkcs8: &[u8]) -> Result<PublicKey> {
    let mut info = Der::new(pkcs8)
        .sequence()
        .context("not a PKCS#8 private key")?;
    info.integer().context("not a PKCS#8 private key")?;
    let mut alg = info.sequence().context("not a PKCS#8 private key")?;
    let oid = alg.oid()?;
    let params = alg.next_tlv()?;
    let inner = info.octet_string().context("not a PKCS#8 private key")?;
    match oid {
        oid::RSA_ENCRYPTION => rsa_public(inner),
        oid::EC_PUBLIC_KEY => {
            let curve_oid = match params {
                Some((TAG_OID, oid)) => Some(oid),
                _ => None,
            };
            let (curve, _, public) = ec_private(inner, curve_oid)?;
            Ok(PublicKey::Ec {
                curve: curve.name,
                point: public,
            })
        }
        other => bail!(
            "unsupported private key algorithm {} (Let's Encrypt issues for RSA and ECDSA P-256/P-384 keys)",
            oid::name(other)
        ),
    }
}

/// PKCS#1 RSAPrivateKey → its public key, after checking that the private
/// exponent inverts the public one.
fn rsa_public(pkcs1: &[u8]) -> Result<PublicKey> {
    let mut key = Der::new(pkcs1)
        .sequence()
        .context("not an RSA private key")?;
    let version = key.integer()?;
    let n = key.uint()?;
    let e = key.uint()?;
    let d = key.uint()?;
    let p = key.uint()?;
    let q = key.uint()?;
    let (bn, be, bd) = (
        BigUint::from_bytes_be(n),
        BigUint::from_bytes_be(e),
        BigUint::from_bytes_be(d),
    );
    if version == [0] {
        ensure!(
            BigUint::from_bytes_be(p) * BigUint::from_bytes_be(q) == bn,
            "the RSA private key is corrupt (p·q is not its modulus)"
        );
    }
    let m = BigUint::from(0x0123_4567_89ab_cdefu64);
    ensure!(bn > m, "the RSA key is too small");
    ensure!(
        m.modpow(&be, &bn).modpow(&bd, &bn) == m,
        "the RSA private key is corrupt (its private exponent does not invert the public one)"
    );
    Ok(PublicKey::Rsa {
        modulus: n.to_vec(),
        exponent: e.to_vec(),
    })
}

/// SEC1 ECPrivateKey → (curve, private scalar bytes, public point d·G). The
/// curve comes from PKCS#8's AlgorithmIdentifier or the key's own [0]; a
/// public key in [1] must be d·G.
fn ec_private<'a>(sec1: &'a [u8], curve_oid: Option<&[u8]>) -> Result<(Curve, &'a [u8], Vec<u8>)> {
    let mut key = Der::new(sec1).sequence().context("not an EC private key")?;
    ensure!(key.integer()? == [1], "unsupported EC private key version");
    let scalar = key.octet_string()?;
    let mut inner_curve = None;
    let mut embedded = None;
    while let Some((tag, content)) = key.next_tlv()? {
        match tag {
            0xa0 => inner_curve = Some(Der::new(content).oid()?),
            0xa1 => embedded = Some(Der::new(content).bit_string()?),
            _ => bail!("unexpected field in the EC private key"),
        }
    }
    let curve_oid = match (curve_oid, inner_curve) {
        (Some(a), Some(b)) if a != b => bail!("the EC private key names two different curves"),
        (Some(oid), _) | (None, Some(oid)) => oid,
        (None, None) => bail!("the EC private key names no curve"),
    };
    let curve = Curve::by_oid(curve_oid)?;
    let d = BigUint::from_bytes_be(scalar);
    ensure!(
        d > BigUint::ZERO && d < curve.n,
        "the EC private key is corrupt (its scalar is out of range)"
    );
    let point = curve
        .mul_base(&d)
        .ok_or_else(|| anyhow!("the EC private key is corrupt"))?;
    let public = curve.encode(&point);
    if let Some(embedded) = embedded {
        ensure!(
            curve.uncompressed(embedded).ok().as_ref() == Some(&public),
            "the EC private key is corrupt (the public key it carries is not the one of its private scalar)"
        );
    }
    Ok((curve, scalar, public))
}

/// SEC1 "EC PRIVATE KEY" → PKCS#8, as `openssl pkcs8 -topk8 -nocrypt` writes
/// it: the curve in the AlgorithmIdentifier, the inner key with its public
/// point (computed if the file lacks it) and without the curve.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>> {
    let (curve, scalar, public) = ec_private(sec1, None)?;
    let mut bits = vec![0u8];
    bits.extend_from_slice(&public);
    let inner = der::seq(&[
        &der::tlv(TAG_INTEGER, &[1]),
        &der::tlv(TAG_OCTET_STRING, scalar),
        &der::tlv(0xa1, &der::tlv(TAG_BIT_STRING, &bits)),
    ]);
    Ok(der::seq(&[
        &der::tlv(TAG_INTEGER, &[0]),
        &der::seq(&[
            &der::tlv(TAG_OID, oid::EC_PUBLIC_KEY),
            &der::tlv(TAG_OID, curve.oid),
        ]),
        &der::tlv(TAG_OCTET_STRING, &inner),
    ]))
}

/// PKCS#1 "RSA PRIVATE KEY" → PKCS#8 (byte for byte what OpenSSL writes).
fn rsa_to_pkcs8(pkcs1: &[u8]) -> Result<Vec<u8>> {
    rsa_public(pkcs1)?;
    Ok(der::seq(&[
        &der::tlv(TAG_INTEGER, &[0]),
        &der::seq(&[
            &der::tlv(TAG_OID, oid::RSA_ENCRYPTION),
            &der::tlv(TAG_NULL, &[]),
        ]),
        &der::tlv(TAG_OCTET_STRING, pkcs1),
    ]))
}

// ---------------------------------------------------------------- elliptic curves

type Point = (BigUint, BigUint);

/// A short Weierstrass curve y² = x³ − 3x + b over GF(p) (the NIST curves).
/// The arithmetic is plain affine double-and-add: not constant-time, which is
/// acceptable for a one-off local check of the host's own key, never for
/// signing.
struct Curve {
    name: &'static str,
    oid: &'static [u8],
    p: BigUint,
    b: BigUint,
    g: Point,
    n: BigUint,
    /// Field element size in bytes.
    size: usize,
}

impl Curve {
    fn by_oid(oid: &[u8]) -> Result<Curve> {
        let hex = |s: &str| BigUint::parse_bytes(s.as_bytes(), 16).expect("curve constant");
        match oid {
            oid::P256 => Ok(Curve {
                name: "P-256",
                oid: oid::P256,
                p: hex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff"),
                b: hex("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b"),
                g: (
                    hex("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"),
                    hex("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"),
                ),
                n: hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551"),
                size: 32,
            }),
            oid::P384 => Ok(Curve {
                name: "P-384",
                oid: oid::P384,
                p: hex(
                    "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
                ),
                b: hex(
                    "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef",
                ),
                g: (
                    hex(
                        "aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7",
                    ),
                    hex(
                        "3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f",
                    ),
                ),
                n: hex(
                    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
                ),
                size: 48,
            }),
            other => bail!(
                "unsupported elliptic curve {} (Let's Encrypt issues for P-256 and P-384)",
                oid::name(other)
            ),
        }
    }

    fn sub(&self, a: &BigUint, b: &BigUint) -> BigUint {
        (a + &self.p - b) % &self.p
    }

    fn div(&self, a: &BigUint, b: &BigUint) -> Option<BigUint> {
        Some(a * b.modinv(&self.p)? % &self.p)
    }

    fn double(&self, pt: &Option<Point>) -> Option<Point> {
        let (x, y) = pt.as_ref()?;
        if *y == BigUint::ZERO {
            return None;
        }
        // λ = (3x² − 3) / 2y
        let num = self.sub(
            &(BigUint::from(3u32) * x * x % &self.p),
            &BigUint::from(3u32),
        );
        let lambda = self.div(&num, &(BigUint::from(2u32) * y % &self.p))?;
        let x3 = self.sub(
            &(&lambda * &lambda % &self.p),
            &(BigUint::from(2u32) * x % &self.p),
        );
        let y3 = self.sub(&(&lambda * self.sub(x, &x3) % &self.p), y);
        Some((x3, y3))
    }

    fn add(&self, a: &Option<Point>, b: &Option<Point>) -> Option<Point> {
        let (Some((x1, y1)), Some((x2, y2))) = (a, b) else {
            return a.clone().or_else(|| b.clone());
        };
        if x1 == x2 {
            return if y1 == y2 { self.double(a) } else { None };
        }
        let lambda = self.div(&self.sub(y2, y1), &self.sub(x2, x1))?;
        let x3 = self.sub(&self.sub(&(&lambda * &lambda % &self.p), x1), x2);
        let y3 = self.sub(&(&lambda * self.sub(x1, &x3) % &self.p), y1);
        Some((x3, y3))
    }

    /// k·G; None is the point at infinity.
    fn mul_base(&self, k: &BigUint) -> Option<Point> {
        let g = Some(self.g.clone());
        let mut acc = None;
        for i in (0..k.bits()).rev() {
            acc = self.double(&acc);
            if k.bit(i) {
                acc = self.add(&acc, &g);
            }
        }
        acc
    }

    fn on_curve(&self, (x, y): &Point) -> bool {
        let rhs = self.sub(
            &((x * x % &self.p) * x % &self.p + &self.b),
            &(BigUint::from(3u32) * x % &self.p),
        );
        x < &self.p && y < &self.p && y * y % &self.p == rhs
    }

    fn encode(&self, (x, y): &Point) -> Vec<u8> {
        let mut out = vec![4u8];
        for v in [x, y] {
            let bytes = v.to_bytes_be();
            out.resize(out.len() + self.size - bytes.len(), 0);
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// An encoded point (uncompressed or compressed) → uncompressed, checked to be on the curve.
    fn uncompressed(&self, data: &[u8]) -> Result<Vec<u8>> {
        let point = match data {
            [4, rest @ ..] if rest.len() == 2 * self.size => (
                BigUint::from_bytes_be(&rest[..self.size]),
                BigUint::from_bytes_be(&rest[self.size..]),
            ),
            [tag @ (2 | 3), rest @ ..] if rest.len() == self.size => {
                let x = BigUint::from_bytes_be(rest);
                let rhs = self.sub(
                    &((&x * &x % &self.p) * &x % &self.p + &self.b),
                    &(BigUint::from(3u32) * &x % &self.p),
                );
                // p ≡ 3 (mod 4) for P-256 and P-384: √a = a^((p+1)/4).
                let mut y = rhs.modpow(&((&self.p + 1u32) >> 2), &self.p);
                if y.bit(0) != (*tag == 3) {
                    y = self.sub(&BigUint::ZERO, &y);
                }
                (x, y)
            }
            _ => bail!("malformed {} public key point", self.name),
        };
        ensure!(
            self.on_curve(&point),
            "the {} public key point is not on the curve",
            self.name
        );
        Ok(self.encode(&point))
    }
}

// ---------------------------------------------------------------- DER

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

mod oid {
    //! OIDs as DER content bytes.
    pub const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    pub const RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
    pub const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    pub const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    pub const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    pub const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
    pub const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    pub const ED448: &[u8] = &[0x2b, 0x65, 0x71];

    /// A readable name for error messages.
    pub fn name(oid: &[u8]) -> String {
        match oid {
            RSA_PSS => "RSASSA-PSS".into(),
            P521 => "P-521".into(),
            ED25519 => "Ed25519".into(),
            ED448 => "Ed448".into(),
            _ => dotted(oid),
        }
    }

    fn dotted(oid: &[u8]) -> String {
        let mut arcs = Vec::new();
        let mut value: u64 = 0;
        for &b in oid {
            value = (value << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                if arcs.is_empty() {
                    let first = (value / 40).min(2);
                    arcs.push(first);
                    arcs.push(value - first * 40);
                } else {
                    arcs.push(value);
                }
                value = 0;
            }
        }
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

mod der {
    //! Encoding the few DER structures the key conversions write.

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|&b| b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(content);
        out
    }

    pub fn seq(items: &[&[u8]]) -> Vec<u8> {
        tlv(super::TAG_SEQUENCE, &items.concat())
    }
}

/// A reader over consecutive DER TLVs (single-byte tags, definite lengths).
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Der { rest: bytes }
    }

    /// The next (tag, content), or None at the end.
    fn next_tlv(&mut self) -> Result<Option<(u8, &'a [u8])>> {
        let input = self.rest;
        let Some((&tag, after)) = input.split_first() else {
            return Ok(None);
        };
        ensure!(tag & 0x1f != 0x1f, "malformed DER (multi-byte tag)");
        let (&first, after) = after
            .split_first()
            .ok_or_else(|| anyhow!("malformed DER (truncated)"))?;
        let (len, after) = if first < 0x80 {
            (usize::from(first), after)
        } else {
            let n = usize::from(first & 0x7f);
            ensure!(
                (1..=4).contains(&n) && after.len() >= n,
                "malformed DER (bad length)"
            );
            let len = after[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &after[n..])
        };
        ensure!(after.len() >= len, "malformed DER (truncated)");
        self.rest = &after[len..];
        Ok(Some((tag, &after[..len])))
    }

    fn expect(&mut self, tag: u8, what: &str) -> Result<&'a [u8]> {
        match self.next_tlv()? {
            Some((t, content)) if t == tag => Ok(content),
            Some((t, _)) => bail!("malformed DER: expected {what}, found tag 0x{t:02x}"),
            None => bail!("malformed DER: expected {what}, found the end"),
        }
    }

    fn sequence(&mut self) -> Result<Der<'a>> {
        self.expect(TAG_SEQUENCE, "a SEQUENCE").map(Der::new)
    }

    fn oid(&mut self) -> Result<&'a [u8]> {
        self.expect(TAG_OID, "an OBJECT IDENTIFIER")
    }

    fn octet_string(&mut self) -> Result<&'a [u8]> {
        self.expect(TAG_OCTET_STRING, "an OCTET STRING")
    }

    fn integer(&mut self) -> Result<&'a [u8]> {
        self.expect(TAG_INTEGER, "an INTEGER")
    }

    /// A non-negative INTEGER without its leading zeros.
    fn uint(&mut self) -> Result<&'a [u8]> {
        let content = self.integer()?;
        ensure!(
            content.first().is_none_or(|b| b & 0x80 == 0),
            "malformed DER: negative integer"
        );
        let start = content
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(content.len());
        Ok(&content[start..])
    }

    /// A BIT STRING's bytes (no unused bits allowed).
    fn bit_string(&mut self) -> Result<&'a [u8]> {
        match self.expect(TAG_BIT_STRING, "a BIT STRING")? {
            [0, bytes @ ..] => Ok(bytes),
            _ => bail!("malformed DER: unexpected BIT STRING padding"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fixture(rel: &str) -> PathBuf {
        crate::cert::testpki::dir().join(rel)
    }

    fn read(rel: &str) -> Vec<u8> {
        std::fs::read(fixture(rel)).unwrap()
    }

    const ECDSA: &str = "live/live.example.test";
    const RSA: &str = "live/rsa.example.test";
    const P384: &str = "live/p384.example.test";

    fn files(dir: &str) -> [Vec<u8>; 4] {
        ["fullchain.pem", "chain.pem", "cert.pem", "privkey.pem"]
            .map(|f| read(&format!("{dir}/{f}")))
    }

    fn err_text(e: anyhow::Error) -> String {
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
    fn loads_a_p384_lineage() {
        let lineage = Lineage::load(&fixture(P384)).unwrap();
        let key = public_key_of_private(lineage.private_key_pkcs8()).unwrap();
        assert_eq!(key.to_string(), "ECDSA P-384");
        assert_eq!(key, public_key_of_certificate(lineage.leaf()).unwrap());
    }

    #[test]
    fn curve_constants_are_consistent() {
        for oid in [oid::P256, oid::P384] {
            let c = Curve::by_oid(oid).unwrap();
            assert!(c.on_curve(&c.g), "{}", c.name);
            assert_eq!(
                c.mul_base(&c.n),
                None,
                "n·G is the point at infinity on {}",
                c.name
            );
            let two_g = c.mul_base(&BigUint::from(2u32)).unwrap();
            assert!(c.on_curve(&two_g));
            assert_eq!(c.add(&Some(c.g.clone()), &Some(c.g.clone())), Some(two_g));
            // compressed encoding round trip
            let enc = c.encode(&c.g);
            let mut compressed = vec![if c.g.1.bit(0) { 3 } else { 2 }];
            compressed.extend_from_slice(&enc[1..=c.size]);
            assert_eq!(c.uncompressed(&compressed).unwrap(), enc);
        }
    }

    #[test]
    fn converts_an_ec_private_key_without_public_key() {
        let [full, chain, cert, _] = files(ECDSA);
        let sec1 = read(&format!("{ECDSA}/privkey-sec1.pem"));
        assert!(String::from_utf8_lossy(&sec1).contains("BEGIN EC PRIVATE KEY"));
        let lineage = Lineage::from_pem(&full, Some(&chain), Some(&cert), &sec1).unwrap();
        // The conversion computes the public point and writes what openssl wrote.
        let pkcs8 = pem::parse(read(&format!("{ECDSA}/privkey.pem"))).unwrap();
        assert_eq!(lineage.private_key_pkcs8(), pkcs8.contents());
    }

    #[test]
    fn converts_an_rsa_private_key() {
        let [full, chain, cert, _] = files(RSA);
        let pkcs1 = read(&format!("{RSA}/privkey-pkcs1.pem"));
        assert!(String::from_utf8_lossy(&pkcs1).contains("BEGIN RSA PRIVATE KEY"));
        let lineage = Lineage::from_pem(&full, Some(&chain), Some(&cert), &pkcs1).unwrap();
        let pkcs8 = pem::parse(read(&format!("{RSA}/privkey.pem"))).unwrap();
        assert_eq!(lineage.private_key_pkcs8(), pkcs8.contents());
    }

    #[test]
    fn accepts_missing_cert_and_chain_files() {
        let [full, _, _, key] = files(RSA);
        let lineage = Lineage::from_pem(&full, None, None, &key).unwrap();
        assert_eq!(lineage.chain().len(), 2);
    }

    #[test]
    fn refuses_a_key_of_another_certificate() {
        let [full, chain, cert, _] = files(ECDSA);
        let other = read("other-key.pem");
        let e = err_text(Lineage::from_pem(&full, Some(&chain), Some(&cert), &other).unwrap_err());
        assert!(
            e.contains("matching privkey.pem with the leaf of fullchain.pem"),
            "{e}"
        );
        assert!(
            e.contains("is not the key of the certificate CN=live.example.test"),
            "{e}"
        );

        let rsa_key = read(&format!("{RSA}/privkey.pem"));
        let e = err_text(Lineage::from_pem(&full, None, None, &rsa_key).unwrap_err());
        assert!(
            e.contains("private key (RSA 2048) is not the key of the certificate"),
            "{e}"
        );
        assert!(e.contains("(ECDSA P-256)"), "{e}");

        let p384_key = read(&format!("{P384}/privkey.pem"));
        let e = err_text(Lineage::from_pem(&full, None, None, &p384_key).unwrap_err());
        assert!(e.contains("(ECDSA P-384) is not the key"), "{e}");
    }

    #[test]
    fn refuses_a_key_whose_public_part_lies() {
        // Flip the last byte of the public point the PKCS#8 file carries.
        let mut der = pem::parse(read(&format!("{ECDSA}/privkey.pem")))
            .unwrap()
            .into_contents();
        *der.last_mut().unwrap() ^= 1;
        let e = err_text(public_key_of_private(&der).unwrap_err());
        assert!(
            e.contains("the public key it carries is not the one of its private scalar"),
            "{e}"
        );
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
    fn refuses_unusable_private_keys() {
        // PEM armor around bytes that are no key (written out here, so no
        // key-shaped text sits in the source).
        let armor = |label: &str, body: &str| {
            format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n").into_bytes()
        };
        let encrypted = armor("ENCRYPTED PRIVATE KEY", "AAAA");
        let e = err_text(parse_private_key(&encrypted).unwrap_err());
        assert!(e.contains("encrypted with a passphrase"), "{e}");
        let legacy = armor(
            "RSA PRIVATE KEY",
            "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA",
        );
        let e = err_text(parse_private_key(&legacy).unwrap_err());
        assert!(e.contains("encrypted with a passphrase"), "{e}");
        let e = err_text(parse_private_key(&read(&format!("{ECDSA}/cert.pem"))).unwrap_err());
        assert!(e.contains("a certificate, not a private key"), "{e}");
        let two = [read("other-key.pem"), read(&format!("{ECDSA}/privkey.pem"))].concat();
        let e = err_text(parse_private_key(&two).unwrap_err());
        assert!(
            e.contains("expected exactly one private key, found 2"),
            "{e}"
        );
        let junk = armor("PRIVATE KEY", "AAAA");
        let e = err_text(parse_private_key(&junk).unwrap_err());
        assert!(
            e.contains("reading the private key: not a PKCS#8 private key"),
            "{e}"
        );
        // Ed25519: well-formed, but not a key Let's Encrypt certifies.
        let ed = read("ed25519-key.pem");
        let e = err_text(parse_private_key(&ed).unwrap_err());
        assert!(
            e.contains("unsupported private key algorithm Ed25519"),
            "{e}"
        );
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
