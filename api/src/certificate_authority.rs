//! The cluster CA on the wire: what it trusts and issues from, and a CA
//! rotation's progress (`flotilla ca status`, `flotilla ca rotate`); what
//! an agent reports of its own TLS with each heartbeat, and what the
//! servers tell it to trust in answer.

use serde::{Deserialize, Serialize};

/// A daemon's own TLS, as CA digests (SHA-256 of the CA certificate, hex).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsReport {
    /// The CAs it trusts.
    pub trusted: Vec<String>,
    /// The CA its certificate is from; `None`: none of those it trusts.
    #[serde(default)]
    pub issuer: Option<String>,
}

/// Whether two lists of CA digests name the same CAs, in any order.
pub fn same_cas(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|digest| b.contains(digest))
}

/// What the servers tell an agent whose TLS differs from the cluster's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustAdvice {
    /// The CA certificates to trust, PEM: exactly these.
    pub trust_pem: String,
    /// The CA certificates are issued from now: an agent whose certificate
    /// is from another renews it at once.
    pub issuing: String,
}

/// Where a CA rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaRotationPhase {
    /// Every server and agent is learning to trust the new CA; the old one
    /// still issues.
    Trusting,
    /// The new CA issues; every server and agent gets a certificate from
    /// it; both are trusted.
    Reissuing,
}

impl std::fmt::Display for CaRotationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaRotationPhase::Trusting => "trusting the new CA",
            CaRotationPhase::Reissuing => "reissuing certificates from the new CA",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotationStatus {
    /// The CA being replaced.
    pub from: String,
    /// The CA replacing it.
    pub to: String,
    pub phase: CaRotationPhase,
    pub started_ms: u64,
    /// Who the phase still waits for ("server 2: does not trust the new
    /// CA yet", "node web-1: no report yet"), as the leader last saw it.
    #[serde(default)]
    pub waiting_for: Vec<String>,
}

/// `GET /v1/ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaStatus {
    /// The CAs the cluster trusts, by digest: two during a rotation.
    pub trusted: Vec<String>,
    /// The CA certificates are issued from now.
    pub issuing: String,
    /// The trusted CA certificates, PEM: what a client's CA file holds.
    pub trust_pem: String,
    #[serde(default)]
    pub rotation: Option<CaRotationStatus>,
    /// Rotations completed in the cluster's life.
    #[serde(default)]
    pub rotations: u64,
}

/// `POST /v1/ca/rotate`: rotate away from the CA the caller saw issuing,
/// so two operators (or a retried command) cannot rotate twice unawares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateCaRequest {
    /// The digest of the CA that issues now (`ca status`'s `issuing`).
    pub from: String,
}
