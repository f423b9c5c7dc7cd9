//! Certificates and keys as they travel and rest: PEM text, parsed into
//! rustls's types only where a TLS configuration is built.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::SecurityError;

/// Every certificate in `pem`, at least one.
fn certificates_in(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SecurityError::Pem { what, reason: e.to_string() })?;
    if certificates.is_empty() {
        return Err(SecurityError::Pem { what, reason: "no certificate in it".into() });
    }
    Ok(certificates)
}

/// The CA certificates a party trusts: usually one, two while the CA rotates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    /// Concatenated PEM certificates.
    pub pem: String,
}

impl Trust {
    pub fn new(pem: impl Into<String>) -> Self {
        Trust { pem: pem.into() }
    }

    /// The CAs of several PEM texts, each ending its line.
    pub fn joined<'a>(pems: impl IntoIterator<Item = &'a str>) -> Self {
        let mut pem = String::new();
        for text in pems {
            pem.push_str(text.trim_end());
            pem.push('\n');
        }
        Trust { pem }
    }

    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
        certificates_in(&self.pem, "the CA certificate")
    }
}

/// A party's own certificate (PEM, leaf first) and private key (PKCS#8 PEM).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub certificate_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("certificate_pem", &self.certificate_pem).finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
        certificates_in(&self.certificate_pem, "the certificate")
    }

    pub fn key(&self) -> Result<PrivateKeyDer<'static>, SecurityError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| SecurityError::Pem { what: "the private key", reason: e.to_string() })
    }
}
