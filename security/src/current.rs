//! A party's certificate as TLS presents it: one slot that renewal swaps,
//! read by every new handshake, server or client side. A renewed
//! certificate takes effect without rebuilding a configuration, a listener
//! or an HTTP client.

use std::sync::{Arc, RwLock};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{Credentials, SecurityError};

#[derive(Debug)]
pub struct CurrentCertificate {
    key: RwLock<Arc<CertifiedKey>>,
}

fn certified(credentials: &Credentials) -> Result<Arc<CertifiedKey>, SecurityError> {
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(credentials.chain()?, credentials.key()?, &provider)
        .map(Arc::new)
        .map_err(|e| SecurityError::Tls(format!("the certificate and its key: {e}")))
}

impl CurrentCertificate {
    pub fn new(credentials: &Credentials) -> Result<Arc<Self>, SecurityError> {
        Ok(Arc::new(CurrentCertificate { key: RwLock::new(certified(credentials)?) }))
    }

    /// Presents `credentials` from the next handshake on.
    pub fn replace(&self, credentials: &Credentials) -> Result<(), SecurityError> {
        let key = certified(credentials)?;
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.key.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
