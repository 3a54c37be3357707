//! TLS certificates for AMS: reading certbot's Let's Encrypt lineages and
//! turning them into the PKCS#12 keystore and truststore AMS loads.

pub mod certbot;
pub mod deploy;
pub mod inspect;
pub mod key;
pub mod keystore;
#[cfg(any(test, feature = "test-hooks"))]
pub mod testpki;
