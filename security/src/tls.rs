//! The TLS configurations flotilla speaks: TLS 1.3 only, ring's crypto,
//! trust in the cluster CA alone. Servers ask for client certificates but
//! also accept clients without one (the CLI, which brings an API token);
//! which routes need a certificate is the API's decision, from the
//! identity the certificate vouches for.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::current_trust::CurrentClientVerifier;
use crate::{CurrentCertificate, CurrentTrust, SecurityError, Trust};

/// Makes ring the process's TLS crypto for HTTP clients built without a
/// configuration of ours (plain-HTTP clients: health checks, tests), which
/// reqwest builds from the process default. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(error: impl std::fmt::Display) -> SecurityError {
    SecurityError::Tls(error.to_string())
}

/// A server's (or agent's API's) TLS: its own certificate, and client
/// certificates from the CAs it currently trusts, verified when offered.
/// No session is resumed: a resumed session skips verification, so a
/// certificate from a CA retired since could otherwise still get in.
pub fn server_config(
    certificate: Arc<CurrentCertificate>,
    trust: Arc<CurrentTrust>,
) -> Result<ServerConfig, SecurityError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(Arc::new(CurrentClientVerifier(trust)))
        .with_cert_resolver(certificate);
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    // HTTP/2 for clients that offer it (agents and the CLI: one connection
    // carries an agent's long-poll, heartbeats and reports), HTTP/1.1 for
    // the rest (servers among themselves, curl).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Whom a client expects at the other end, whatever address it dialled.
#[derive(Debug, Clone)]
pub enum ExpectedPeer {
    /// Any server of the cluster.
    AnyServer,
    /// Any agent of the cluster.
    AnyNode,
}

impl ExpectedPeer {
    fn name(&self) -> String {
        match self {
            ExpectedPeer::AnyServer => crate::SERVER_ROLE_NAME.to_owned(),
            ExpectedPeer::AnyNode => crate::NODE_ROLE_NAME.to_owned(),
        }
    }
}

/// A client's TLS: trusts the cluster CA, checks the peer's identity
/// rather than the dialled address, and presents `certificate` if given.
pub fn client_config(
    trust: &Trust,
    certificate: Option<Arc<CurrentCertificate>>,
    expected: ExpectedPeer,
) -> Result<ClientConfig, SecurityError> {
    following_client_config(CurrentTrust::new(trust)?, certificate, expected)
}

/// A daemon's client TLS: as `client_config`, trusting whatever `trust`
/// holds at each handshake, so a CA rotation reaches it without a rebuild.
pub fn following_client_config(
    trust: Arc<CurrentTrust>,
    certificate: Option<Arc<CurrentCertificate>>,
    expected: ExpectedPeer,
) -> Result<ClientConfig, SecurityError> {
    let name = ServerName::try_from(expected.name()).map_err(tls_error)?;
    finish_client(Arc::new(ExpectIdentity { trust, name }), certificate)
}

/// A joining party's TLS before it trusts anything: it accepts a server
/// whose chain holds a CA certificate with the token's digest, and whose
/// certificate that CA signed for a server. Nothing is sent before that.
pub fn pinned_client_config(ca_digest: &str) -> Result<ClientConfig, SecurityError> {
    let verifier = PinnedCa { digest: ca_digest.to_ascii_lowercase(), provider: provider() };
    finish_client(Arc::new(verifier), None)
}

/// For clients that speak plain HTTP only (health checks, an `--insecure`
/// cluster): a TLS configuration that trusts nothing, so the HTTP client
/// never looks for the system's CA store (a scratch container has none).
pub fn plain_client_config() -> Result<ClientConfig, SecurityError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    Ok(config)
}

fn finish_client(
    verifier: Arc<dyn ServerCertVerifier>,
    certificate: Option<Arc<CurrentCertificate>>,
) -> Result<ClientConfig, SecurityError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match certificate {
        Some(certificate) => builder.with_client_cert_resolver(certificate),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether a certificate (already verified against the CA by the handshake)
/// is valid for `name`: how an identity claim is checked.
pub fn peer_vouches_for(certificate: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(certificate)
        .is_ok_and(|certificate| certificate.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Whether `leaf` chains to one of `trust`'s CAs.
#[cfg(test)]
pub fn chains_to(trust: &Trust, leaf: &CertificateDer<'_>) -> Result<bool, SecurityError> {
    let verifiers = CurrentTrust::new(trust)?.verifiers();
    Ok(verifiers.clients.verify_client_cert(leaf, &[], UnixTime::now()).is_ok())
}

/// Verifies the chain with webpki, against the CAs trusted at the time,
/// but for the identity's name, not the address the client happened to dial.
#[derive(Debug)]
struct ExpectIdentity {
    trust: Arc<CurrentTrust>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for ExpectIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.trust.verifiers().servers.verify_server_cert(
            end_entity,
            intermediates,
            &self.name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust.verifiers().servers.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust.verifiers().servers.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.verifiers().servers.supported_verify_schemes()
    }
}

/// Trusts the CA certificate in the presented chain whose digest is pinned.
#[derive(Debug)]
struct PinnedCa {
    digest: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    fn refuse(reason: String) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
            SecurityError::WrongCluster(reason),
        ))))
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: Vec<String> = intermediates.iter().map(crate::ca::digest).collect();
        let Some(ca) = intermediates.iter().zip(&presented).find(|(_, d)| **d == self.digest).map(|(c, _)| c)
        else {
            return Err(Self::refuse(format!(
                "the server's CA has digest {} but the join token pins {}: this is not the cluster the token is for",
                presented.first().map_or("(none presented)", String::as_str),
                self.digest
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| Self::refuse(e.to_string()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|e| Self::refuse(e.to_string()))?;
        let name = ServerName::try_from(crate::SERVER_ROLE_NAME).map_err(|e| Self::refuse(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
