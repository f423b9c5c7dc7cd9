//! Certificates and keys as they travel and rest: PEM text, parsed into
//! rustls's types only where a TLS configuration is built.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::SecurityError;

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

    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
        let certificates = CertificateDer::pem_slice_iter(self.pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SecurityError::Pem { what: "the CA certificate", reason: e.to_string() })?;
        if certificates.is_empty() {
            return Err(SecurityError::Pem {
                what: "the CA certificate",
                reason: "no certificate in it".into(),
            });
        }
        Ok(certificates)
    }

    /// SHA-256 of each trusted CA certificate's DER, hex: what join tokens pin.
    pub fn digests(&self) -> Result<Vec<String>, SecurityError> {
        Ok(self.certificates()?.iter().map(|c| crate::ca::digest(c)).collect())
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
        let chain = CertificateDer::pem_slice_iter(self.certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SecurityError::Pem { what: "the certificate", reason: e.to_string() })?;
        if chain.is_empty() {
            return Err(SecurityError::Pem {
                what: "the certificate",
                reason: "no certificate in it".into(),
            });
        }
        Ok(chain)
    }

    pub fn key(&self) -> Result<PrivateKeyDer<'static>, SecurityError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| SecurityError::Pem { what: "the private key", reason: e.to_string() })
    }
}
