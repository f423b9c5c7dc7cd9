//! The cluster's certificate authority: made once by the first server,
//! signing every server's and agent's certificate. Its key never enters the
//! Raft log; servers hold it in their data dirs and hand it only to a server
//! that joins with a server token.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::random::hex;
use crate::{Credentials, Identity, SecurityError, Trust};

/// How long a server's or agent's certificate lasts unless told otherwise:
/// short, so a stolen one soon stops working; renewed well before.
pub const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// The CA itself lasts ten years; `ca rotate` replaces it sooner.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start an hour in the past so a peer whose clock is a little
/// behind still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// SHA-256 of a certificate's DER, hex.
pub fn digest(certificate: &CertificateDer<'_>) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, certificate.as_ref()).as_ref())
}

pub struct ClusterCa {
    certificate_pem: String,
    /// SHA-256 of the certificate, computed once: servers compare it on
    /// every heartbeat they answer.
    digest: String,
    key: KeyPair,
    /// The CA's subject; rebuilt from its key so only the key and the
    /// certificate need storing.
    params: CertificateParams,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").field("digest", &self.digest()).finish_non_exhaustive()
    }
}

/// A public key a joining party sent: the raw ECDSA P-256 point. The party
/// keeps its private key; only the certificate travels back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// Hex of the uncompressed P-256 point (65 bytes).
    pub p256_hex: String,
}

struct RawPublicKey(Vec<u8>);

impl rcgen::PublicKeyData for RawPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl PublicKey {
    fn raw(&self) -> Result<RawPublicKey, SecurityError> {
        let bytes = crate::hex::decode(&self.p256_hex).filter(|b| b.len() == 65).ok_or_else(|| {
            SecurityError::Certificate(
                "public_key: expected the 65-byte uncompressed P-256 point as 130 hex digits".into(),
            )
        })?;
        if bytes.first() != Some(&4) {
            return Err(SecurityError::Certificate("public_key: not an uncompressed P-256 point".into()));
        }
        Ok(RawPublicKey(bytes))
    }
}

/// A certificate the CA signed, with when it stops being valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// The leaf, PEM.
    pub certificate_pem: String,
    /// Seconds since the Unix epoch after which peers refuse it.
    pub not_after_unix: u64,
}

/// A new private key (PKCS#8 PEM) for a party that asks for a
/// certificate: the key stays with it, the public half goes to the CA.
pub fn new_key() -> Result<(String, PublicKey), SecurityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(certificate_error)?;
    let public = PublicKey { p256_hex: hex(key.public_key_raw()) };
    Ok((key.serialize_pem(), public))
}

fn certificate_error(error: rcgen::Error) -> SecurityError {
    SecurityError::Certificate(error.to_string())
}

fn ca_params(key: &KeyPair) -> CertificateParams {
    let fingerprint = hex(&ring::digest::digest(&ring::digest::SHA256, key.public_key_raw()).as_ref()[..6]);
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "flotilla");
    name.push(DnType::CommonName, format!("flotilla cluster CA {fingerprint}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

impl ClusterCa {
    /// A new CA with a new key.
    pub fn create() -> Result<Self, SecurityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(certificate_error)?;
        let mut params = ca_params(&key);
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + CA_LIFETIME).into();
        let certificate = params.self_signed(&key).map_err(certificate_error)?;
        Ok(ClusterCa { certificate_pem: certificate.pem(), digest: digest(certificate.der()), key, params })
    }

    /// The CA as stored: its certificate and its key, both PEM.
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<Self, SecurityError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| SecurityError::Pem { what: "the CA key", reason: e.to_string() })?;
        let trust = Trust::new(certificate_pem);
        let certificate = trust.certificates()?.remove(0);
        Ok(ClusterCa {
            certificate_pem: certificate_pem.to_owned(),
            digest: digest(&certificate),
            params: ca_params(&key),
            key,
        })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate: what a join token pins.
    pub fn digest(&self) -> String {
        self.digest.clone()
    }

    /// Signs a certificate for `identity` over `public_key`, valid for
    /// `lifetime`. `addresses` are extra names (IPs, host names) the party
    /// is reached at, so tools such as curl can check it by address too.
    pub fn issue(
        &self,
        identity: &Identity,
        public_key: &PublicKey,
        addresses: &[String],
        lifetime: Duration,
    ) -> Result<IssuedCertificate, SecurityError> {
        if let Identity::Node(name) = identity {
            crate::validate_node_name(name)?;
        }
        let mut names = vec![
            SanType::DnsName(identity.dns_name().try_into().map_err(certificate_error)?),
            SanType::DnsName(identity.role_name().try_into().map_err(certificate_error)?),
        ];
        for address in addresses {
            let address = address.trim();
            if address.is_empty() {
                continue;
            }
            names.push(match address.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(address.to_owned().try_into().map_err(certificate_error)?),
            });
        }
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "flotilla");
        subject.push(DnType::CommonName, identity.to_string());
        params.distinguished_name = subject;
        params.subject_alt_names = names;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = now + lifetime;
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let certificate = params.signed_by(&public_key.raw()?, &issuer).map_err(certificate_error)?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            not_after_unix: not_after.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        })
    }

    /// A certificate and a new key for a party the CA's holder makes itself
    /// (a server issuing its own).
    pub fn issue_with_new_key(
        &self,
        identity: &Identity,
        addresses: &[String],
        lifetime: Duration,
    ) -> Result<(Credentials, u64), SecurityError> {
        let (key_pem, public) = new_key()?;
        let issued = self.issue(identity, &public, addresses, lifetime)?;
        Ok((Credentials { certificate_pem: issued.certificate_pem, key_pem }, issued.not_after_unix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_ca_signs_certificates_that_chain_to_it() {
        let ca = ClusterCa::create().expect("ca");
        let stored = ClusterCa::from_pem(ca.certificate_pem(), &ca.key_pem()).expect("load");
        assert_eq!(stored.digest(), ca.digest());
        let (credentials, not_after) = stored
            .issue_with_new_key(&Identity::Node("web-1".into()), &["127.0.0.1".into()], CERTIFICATE_LIFETIME)
            .expect("issue");
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs();
        assert!(not_after > now + 29 * 24 * 3600 && not_after <= now + 30 * 24 * 3600 + 5);
        let leaf = credentials.chain().expect("chain").remove(0);
        let trust = Trust::new(ca.certificate_pem());
        assert!(crate::tls::chains_to(&trust, &leaf).expect("verify"));
        assert!(crate::peer_vouches_for(&leaf, "web-1.node.flotilla"));
        assert!(crate::peer_vouches_for(&leaf, "node.flotilla"));
        assert!(!crate::peer_vouches_for(&leaf, "web-2.node.flotilla"));
        assert!(!crate::peer_vouches_for(&leaf, "server.flotilla"));
        let other = ClusterCa::create().expect("other");
        assert!(!crate::tls::chains_to(&Trust::new(other.certificate_pem()), &leaf).expect("verify"));
    }

    #[test]
    fn a_malformed_public_key_is_refused_with_the_field_named() {
        let ca = ClusterCa::create().expect("ca");
        for bad in ["", "zz", &"0".repeat(130), &format!("04{}", "g".repeat(128))] {
            let error = ca
                .issue(&Identity::Server(1), &PublicKey { p256_hex: bad.into() }, &[], CERTIFICATE_LIFETIME)
                .expect_err(bad)
                .to_string();
            assert!(error.contains("public_key"), "{error}");
        }
    }

    #[test]
    fn a_node_name_that_is_not_a_dns_label_gets_no_certificate() {
        let ca = ClusterCa::create().expect("ca");
        let error = ca
            .issue_with_new_key(&Identity::Node("Web_1".into()), &[], CERTIFICATE_LIFETIME)
            .expect_err("refused")
            .to_string();
        assert!(error.contains("Web_1"), "{error}");
    }
}
