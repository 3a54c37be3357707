//! The private key of a lineage and its match with the certificate.
//!
//! No cryptography is written here: the key structures are read and written
//! with RustCrypto's `der`/`pkcs8`, the certificate's key with
//! `x509-parser`, and the key is loaded by `ring`, which checks it (RSA: its
//! factors and exponents; ECDSA: that the public point is d·G, in constant
//! time). The public key ring holds is then compared with the certificate's.
//! SEC1 and PKCS#1 keys become the PKCS#8 that OpenSSL writes.

use std::fmt;

use anyhow::{Context, Result, anyhow, bail, ensure};
use pkcs8::der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetStringRef};
use pkcs8::der::{Decode, Encode};
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

use super::inspect::{parse_pem, parse_x509};

/// The private key of a PEM file: "PRIVATE KEY" (PKCS#8, what certbot
/// writes), "EC PRIVATE KEY" (SEC1) or "RSA PRIVATE KEY" (PKCS#1); an "EC
/// PARAMETERS" block next to the key is ignored. Encrypted keys are refused.
/// The key is loaded by ring (a well-formed RSA or ECDSA P-256/P-384 key).
pub fn parse_private_key(text: &[u8]) -> Result<PrivateKey> {
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
    let der = block.contents().to_vec();
    let form = match block.tag() {
        _ if encrypted => bail!(
            "the private key is encrypted with a passphrase; certbot writes it unencrypted (decrypt it with `openssl pkey`)"
        ),
        "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
        "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
        "ENCRYPTED PRIVATE KEY" => bail!(
            "the private key is encrypted with a passphrase; certbot writes it unencrypted (decrypt it with `openssl pkey`)"
        ),
        "CERTIFICATE" => bail!("this is a certificate, not a private key"),
        other => bail!("unsupported PEM block {other:?} where a PRIVATE KEY was expected"),
    };
    PrivateKey::load(&form).context("reading the private key")
}

// ---------------------------------------------------------------- keys

/// The public half of a key, as compared between a private key and a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// `der` is the RSAPublicKey (modulus and exponent).
    Rsa { bits: usize, der: Vec<u8> },
    /// `point` is uncompressed: 04 || X || Y.
    Ec { curve: &'static str, point: Vec<u8> },
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKey::Rsa { bits, .. } => write!(f, "RSA {bits}"),
            PublicKey::Ec { curve, .. } => write!(f, "ECDSA {curve}"),
        }
    }
}

/// The curves Let's Encrypt certifies, as ring signs with them.
struct Curve {
    name: &'static str,
    oid: ObjectIdentifier,
    ring: &'static signature::EcdsaSigningAlgorithm,
    /// Bytes of the private scalar.
    size: usize,
}

const CURVES: [Curve; 2] = [
    Curve {
        name: "P-256",
        oid: ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7"),
        ring: &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        size: 32,
    },
    Curve {
        name: "P-384",
        oid: ObjectIdentifier::new_unwrap("1.3.132.0.34"),
        ring: &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        size: 48,
    },
];

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// A readable name of a key algorithm or curve that is not supported.
fn algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.113549.1.1.10" => "RSASSA-PSS".into(),
        "1.3.132.0.35" => "P-521".into(),
        "1.3.101.112" => "Ed25519".into(),
        "1.3.101.113" => "Ed448".into(),
        other => other.into(),
    }
}

fn curve_by_oid(oid: &ObjectIdentifier) -> Result<&'static Curve> {
    CURVES.iter().find(|c| c.oid == *oid).ok_or_else(|| {
        anyhow!(
            "unsupported elliptic curve {} (Let's Encrypt issues for P-256 and P-384)",
            algorithm_name(&oid.to_string())
        )
    })
}

/// SEC1 ECPrivateKey (RFC 5915).
#[derive(der::Sequence)]
struct EcPrivateKey<'a> {
    version: u8,
    private_key: &'a OctetStringRef,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    parameters: Option<ObjectIdentifier>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    public_key: Option<BitStringRef<'a>>,
}

/// A private key, loaded by ring.
#[derive(Clone)]
pub struct PrivateKey(Loaded);

#[derive(Clone)]
enum Loaded {
    /// ring accepted the key: its PKCS#8 form and the public key ring holds.
    Ready { pkcs8: Vec<u8>, public: PublicKey },
    /// An EC key that does not carry its public point (`openssl ec
    /// -no_public`): ring checks it against the certificate's point.
    EcWithoutPublic {
        curve: &'static Curve,
        scalar: Vec<u8>,
    },
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.describe())
    }
}

impl PrivateKey {
    /// Loads any of the three forms; SEC1 and PKCS#1 become the PKCS#8
    /// OpenSSL writes (`openssl pkcs8 -topk8 -nocrypt`).
    pub fn load(form: &PrivateKeyDer<'_>) -> Result<Self> {
        match form {
            PrivateKeyDer::Pkcs8(der) => Self::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => {
                let pkcs8 = pkcs8_der(RSA_ENCRYPTION, Some(AnyRef::NULL), der.secret_pkcs1_der())
                    .context("converting the RSA PRIVATE KEY (PKCS#1) to PKCS#8")?;
                Self::from_pkcs8(&pkcs8)
            }
            PrivateKeyDer::Sec1(der) => {
                let key = EcPrivateKey::from_der(der.secret_sec1_der())
                    .map_err(|e| anyhow!("not an EC private key: {e}"))?;
                let Some(curve) = key.parameters else {
                    bail!("the EC private key names no curve");
                };
                let curve = curve_by_oid(&curve)?;
                Self::ec(curve, &key).context("converting the EC PRIVATE KEY (SEC1) to PKCS#8")
            }
            _ => bail!("unsupported private key form"),
        }
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let info = pkcs8::PrivateKeyInfoRef::try_from(der)
            .map_err(|e| anyhow!("not a PKCS#8 private key: {e}"))?;
        let oid = info.algorithm.oid;
        if oid == RSA_ENCRYPTION {
            let pair = ring::rsa::KeyPair::from_pkcs8(der)
                .map_err(|e| anyhow!("the RSA private key is unusable: {}", rejected(e)))?;
            return Ok(PrivateKey(Loaded::Ready {
                pkcs8: der.to_vec(),
                public: PublicKey::Rsa {
                    bits: pair.public().modulus_len() * 8,
                    der: pair.public().as_ref().to_vec(),
                },
            }));
        }
        if oid == EC_PUBLIC_KEY {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|_| anyhow!("the EC private key names no curve"))?;
            let curve = curve_by_oid(&curve)?;
            let key = EcPrivateKey::from_der(info.private_key.as_bytes())
                .map_err(|e| anyhow!("not an EC private key: {e}"))?;
            if key.parameters.is_some_and(|inner| inner != curve.oid) {
                bail!("the EC private key names two different curves");
            }
            if key.public_key.is_none() {
                return Self::ec(curve, &key);
            }
            let pair = EcdsaKeyPair::from_pkcs8(curve.ring, der, &ring::rand::SystemRandom::new())
                .map_err(|e| {
                    anyhow!(
                        "the EC private key is corrupt ({}): its scalar is out of range or the public key it carries is not the one of its private scalar",
                        rejected(e)
                    )
                })?;
            return Ok(PrivateKey(Loaded::Ready {
                pkcs8: der.to_vec(),
                public: PublicKey::Ec {
                    curve: curve.name,
                    point: pair.public_key().as_ref().to_vec(),
                },
            }));
        }
        bail!(
            "unsupported private key algorithm {} (Let's Encrypt issues for RSA and ECDSA P-256/P-384 keys)",
            algorithm_name(&oid.to_string())
        )
    }

    /// An EC key as OpenSSL's PKCS#8 (the curve in the AlgorithmIdentifier,
    /// the inner key with its public point and without the curve), loaded;
    /// without a public point, kept for the certificate to supply it.
    fn ec(curve: &'static Curve, key: &EcPrivateKey<'_>) -> Result<Self> {
        ensure!(key.version == 1, "unsupported EC private key version");
        let scalar = key.private_key.as_bytes();
        ensure!(
            scalar.len() == curve.size,
            "the EC private key is corrupt (a {}-byte scalar on {})",
            scalar.len(),
            curve.name
        );
        match key.public_key {
            Some(point) => Self::from_pkcs8(&ec_pkcs8(curve, scalar, point.raw_bytes())?),
            None => Ok(PrivateKey(Loaded::EcWithoutPublic {
                curve,
                scalar: scalar.to_vec(),
            })),
        }
    }

    /// "RSA 2048", "ECDSA P-256".
    pub fn describe(&self) -> String {
        match &self.0 {
            Loaded::Ready { public, .. } => public.to_string(),
            Loaded::EcWithoutPublic { curve, .. } => format!("ECDSA {}", curve.name),
        }
    }

    /// The public key, when the key file carries it (or ring derived it).
    pub fn public_key(&self) -> Option<&PublicKey> {
        match &self.0 {
            Loaded::Ready { public, .. } => Some(public),
            Loaded::EcWithoutPublic { .. } => None,
        }
    }

    /// Fails unless this is the key of the certificate; gives the key as
    /// PKCS#8 DER.
    pub fn matching(&self, cert_der: &[u8]) -> Result<Vec<u8>> {
        let public = public_key_of_certificate(cert_der)?;
        let mismatch = || {
            let subject = parse_x509(cert_der)
                .map(|c| c.subject().to_string())
                .unwrap_or_default();
            anyhow!(
                "the private key ({}) is not the key of the certificate {subject} ({public})",
                self.describe()
            )
        };
        match (&self.0, &public) {
            (Loaded::Ready { pkcs8, public: own }, _) if *own == public => Ok(pkcs8.clone()),
            (Loaded::Ready { .. }, _) => Err(mismatch()),
            (Loaded::EcWithoutPublic { curve, scalar }, PublicKey::Ec { curve: c, point })
                if *c == curve.name =>
            {
                // ring computes d·G and compares it with the certificate's point.
                EcdsaKeyPair::from_private_key_and_public_key(
                    curve.ring,
                    scalar,
                    point,
                    &ring::rand::SystemRandom::new(),
                )
                .map_err(|_| mismatch())?;
                ec_pkcs8(curve, scalar, point)
            }
            (Loaded::EcWithoutPublic { .. }, _) => Err(mismatch()),
        }
    }
}

/// ring's reason for refusing a key, in words.
fn rejected(e: ring::error::KeyRejected) -> String {
    match e.to_string().as_str() {
        "InconsistentComponents" => "its parts do not belong together".into(),
        "InvalidEncoding" => "malformed".into(),
        "TooSmall" => "too small (Let's Encrypt takes 2048 to 4096 bits)".into(),
        "TooLarge" => "too large (Let's Encrypt takes 2048 to 4096 bits)".into(),
        "InvalidComponent" => "a part of it is out of range".into(),
        other => other.into(),
    }
}

/// PrivateKeyInfo (PKCS#8 v1) around a key, DER.
fn pkcs8_der(oid: ObjectIdentifier, parameters: Option<AnyRef<'_>>, key: &[u8]) -> Result<Vec<u8>> {
    let key = <&OctetStringRef>::try_from(key).map_err(|e| anyhow!("{e}"))?;
    let info =
        pkcs8::PrivateKeyInfoRef::new(pkcs8::AlgorithmIdentifierRef { oid, parameters }, key);
    info.to_der().map_err(|e| anyhow!("encoding PKCS#8: {e}"))
}

fn ec_pkcs8(curve: &Curve, scalar: &[u8], point: &[u8]) -> Result<Vec<u8>> {
    let inner = EcPrivateKey {
        version: 1,
        private_key: <&OctetStringRef>::try_from(scalar).map_err(|e| anyhow!("{e}"))?,
        parameters: None,
        public_key: Some(BitStringRef::from_bytes(point).map_err(|e| anyhow!("{e}"))?),
    }
    .to_der()
    .map_err(|e| anyhow!("encoding the EC private key: {e}"))?;
    let params = AnyRef::from(&curve.oid);
    pkcs8_der(EC_PUBLIC_KEY, Some(params), &inner)
}

/// The public key of a certificate.
pub fn public_key_of_certificate(der: &[u8]) -> Result<PublicKey> {
    use x509_parser::public_key::PublicKey as X509Key;
    let cert = parse_x509(der)?;
    let spki = cert.public_key();
    let oid = spki.algorithm.algorithm.to_id_string();
    let parsed = spki
        .parsed()
        .map_err(|e| anyhow!("reading the certificate's public key: {e}"))?;
    match parsed {
        X509Key::RSA(rsa) => {
            let modulus = rsa.modulus.iter().skip_while(|&&b| b == 0).count();
            Ok(PublicKey::Rsa {
                bits: modulus * 8,
                der: spki.subject_public_key.data.to_vec(),
            })
        }
        X509Key::EC(point) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| anyhow!("the certificate's EC key names no curve"))?;
            let curve = ObjectIdentifier::new(&curve.to_id_string())
                .map_err(|e| anyhow!("the certificate's curve: {e}"))?;
            let curve = curve_by_oid(&curve)?;
            ensure!(
                point.data().first() == Some(&4),
                "the certificate's EC point is compressed, which Let's Encrypt never issues"
            );
            Ok(PublicKey::Ec {
                curve: curve.name,
                point: point.data().to_vec(),
            })
        }
        _ => bail!(
            "unsupported certificate key algorithm {}",
            algorithm_name(&oid)
        ),
    }
}

/// The public key of a PKCS#8 private key, as ring holds it (None for an EC
/// key without its public point).
pub fn public_key_of_private(pkcs8: &[u8]) -> Result<PublicKey> {
    let key = PrivateKey::from_pkcs8(pkcs8)?;
    key.public_key()
        .cloned()
        .ok_or_else(|| anyhow!("the EC private key does not carry its public key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::inspect::Lineage;
    use crate::cert::inspect::tests::{ECDSA, P384, RSA, err_text, files, fixture, read};

    #[test]
    fn loads_a_p384_lineage() {
        let lineage = Lineage::load(&fixture(P384)).unwrap();
        let key = public_key_of_private(lineage.private_key_pkcs8()).unwrap();
        assert_eq!(key.to_string(), "ECDSA P-384");
        assert_eq!(key, public_key_of_certificate(lineage.leaf()).unwrap());
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
    fn ring_refuses_a_corrupt_rsa_key() {
        // A flipped byte inside the private exponent: well-formed DER,
        // inconsistent key, which ring finds.
        let mut der = pem::parse(read(&format!("{RSA}/privkey.pem")))
            .unwrap()
            .into_contents();
        let middle = der.len() / 2;
        der[middle] ^= 0x01;
        let e = err_text(public_key_of_private(&der).unwrap_err());
        assert!(e.contains("the RSA private key is unusable"), "{e}");
    }

    #[test]
    fn a_key_without_its_public_point_is_checked_against_the_certificate() {
        let sec1 = read(&format!("{ECDSA}/privkey-sec1.pem"));
        let key = parse_private_key(&sec1).unwrap();
        assert_eq!(key.describe(), "ECDSA P-256");
        assert!(key.public_key().is_none());
        // Another P-256 certificate: ring finds that d·G is not its point.
        let other = pem::parse(read("other-key.pem")).unwrap();
        let other = PrivateKey::load(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            other.into_contents(),
        )))
        .unwrap();
        assert_eq!(other.describe(), "ECDSA P-256");
        let [full, ..] = files(P384);
        let e = err_text(Lineage::from_pem(&full, None, None, &sec1).unwrap_err());
        assert!(e.contains("(ECDSA P-256) is not the key"), "{e}");
        let [ecdsa_full, ..] = files(ECDSA);
        let leaf = crate::cert::inspect::parse_certificates(&ecdsa_full).unwrap();
        assert!(key.matching(&leaf[0]).is_ok());
        // The intermediate (E1, P-256) is not this key's certificate.
        let e = err_text(key.matching(&leaf[1]).unwrap_err());
        assert!(e.contains("is not the key of the certificate"), "{e}");
    }
}
