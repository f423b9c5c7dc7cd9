//! The CA certificates a daemon trusts, as TLS verifies with them: one slot
//! that a CA rotation swaps (old and new trusted during the switch, the
//! new alone after it), read by every new handshake, server or client
//! side, without rebuilding a configuration, a listener or an HTTP client.

use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{DistinguishedName, RootCertStore};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::{SecurityError, Trust};

/// The verifiers built from one set of CA certificates.
#[derive(Debug)]
pub(crate) struct Verifiers {
    pub(crate) trust: Trust,
    /// The SHA-256 digests of the trusted CAs, in the order of `trust`.
    pub(crate) digests: Vec<String>,
    pub(crate) servers: Arc<WebPkiServerVerifier>,
    pub(crate) clients: Arc<dyn ClientCertVerifier>,
}

#[derive(Debug)]
pub struct CurrentTrust {
    verifiers: RwLock<Arc<Verifiers>>,
    provider: Arc<CryptoProvider>,
}

fn tls_error(error: impl std::fmt::Display) -> SecurityError {
    SecurityError::Tls(error.to_string())
}

fn build(trust: &Trust, provider: &Arc<CryptoProvider>) -> Result<Arc<Verifiers>, SecurityError> {
    let certificates = trust.certificates()?;
    let digests = certificates.iter().map(crate::ca::digest).collect();
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(tls_error)?;
    }
    let roots = Arc::new(roots);
    let servers = WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider))
        .build()
        .map_err(tls_error)?;
    let clients = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(provider))
        .allow_unauthenticated()
        .build()
        .map_err(tls_error)?;
    Ok(Arc::new(Verifiers { trust: trust.clone(), digests, servers, clients }))
}

impl CurrentTrust {
    pub fn new(trust: &Trust) -> Result<Arc<Self>, SecurityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(Arc::new(CurrentTrust { verifiers: RwLock::new(build(trust, &provider)?), provider }))
    }

    /// Trusts exactly the CAs in `trust` from the next handshake on.
    pub fn replace(&self, trust: &Trust) -> Result<(), SecurityError> {
        let verifiers = build(trust, &self.provider)?;
        *self.verifiers.write().unwrap_or_else(|p| p.into_inner()) = verifiers;
        Ok(())
    }

    pub(crate) fn verifiers(&self) -> Arc<Verifiers> {
        Arc::clone(&self.verifiers.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The trusted CA certificates, PEM.
    pub fn trust(&self) -> Trust {
        self.verifiers().trust.clone()
    }

    /// The SHA-256 digests of the trusted CAs.
    pub fn digests(&self) -> Vec<String> {
        self.verifiers().digests.clone()
    }
}

/// The digest of the CA in `trust` that signed `leaf`, if one did: which
/// CA a party's certificate is from, for a rotation to know who still
/// holds one from the old CA.
pub fn issuer_digest(trust: &Trust, leaf: &CertificateDer<'_>) -> Result<Option<String>, SecurityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    for ca in trust.certificates()? {
        let digest = crate::ca::digest(&ca);
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(tls_error)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(tls_error)?;
        if verifier.verify_client_cert(leaf, &[], UnixTime::now()).is_ok() {
            return Ok(Some(digest));
        }
    }
    Ok(None)
}

/// Verifies client certificates against the current trust. It names no
/// CA in its certificate request (the list would change under a borrowed
/// slice); flotilla's clients present their one certificate regardless.
#[derive(Debug)]
pub(crate) struct CurrentClientVerifier(pub(crate) Arc<CurrentTrust>);

impl ClientCertVerifier for CurrentClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.0.verifiers().clients.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verifiers().clients.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verifiers().clients.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.verifiers().clients.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CERTIFICATE_LIFETIME, ClusterCa, Identity};

    fn accepts(trust: &CurrentTrust, leaf: &CertificateDer<'_>) -> bool {
        trust.verifiers().clients.verify_client_cert(leaf, &[], UnixTime::now()).is_ok()
    }

    #[test]
    fn a_replaced_trust_takes_effect_for_the_next_verification() {
        let (old, new) = (ClusterCa::create().expect("old"), ClusterCa::create().expect("new"));
        let leaf_of = |ca: &ClusterCa| {
            let (credentials, _) = ca
                .issue_with_new_key(&Identity::Node("web-1".into()), &[], CERTIFICATE_LIFETIME)
                .expect("issue");
            credentials.chain().expect("chain").remove(0)
        };
        let (old_leaf, new_leaf) = (leaf_of(&old), leaf_of(&new));
        let trust = CurrentTrust::new(&Trust::new(old.certificate_pem())).expect("trust");
        assert!(accepts(&trust, &old_leaf) && !accepts(&trust, &new_leaf));
        let both = Trust::new(format!("{}{}", old.certificate_pem(), new.certificate_pem()));
        trust.replace(&both).expect("both");
        assert!(accepts(&trust, &old_leaf) && accepts(&trust, &new_leaf), "both trusted during the switch");
        assert_eq!(trust.digests(), vec![old.digest(), new.digest()]);
        trust.replace(&Trust::new(new.certificate_pem())).expect("new");
        assert!(!accepts(&trust, &old_leaf) && accepts(&trust, &new_leaf), "the old CA retired");
        assert_eq!(issuer_digest(&both, &old_leaf).expect("issuer"), Some(old.digest()));
        assert_eq!(issuer_digest(&both, &new_leaf).expect("issuer"), Some(new.digest()));
        assert_eq!(issuer_digest(&Trust::new(new.certificate_pem()), &old_leaf).expect("issuer"), None);
    }
}
