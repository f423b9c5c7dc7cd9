//! Tokens on the wire: what `flotilla token` and `acl bootstrap` send and
//! get back, and the join exchange through which an agent or server gets
//! its certificate. A token's secret appears only in the answer that
//! creates it.

use flotilla_security::{IssuedCertificate, PublicKey, TokenRole};
use serde::{Deserialize, Serialize};

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The first 16 hex digits of the secret's SHA-256: names the token in
    /// `token list` and `token revoke` without revealing it.
    pub id: String,
    pub role: TokenRole,
    #[serde(default)]
    pub description: String,
    pub created_ms: u64,
    /// When it stops working; `None`: until revoked.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

impl TokenInfo {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|expires| now_ms >= expires)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub role: TokenRole,
    #[serde(default)]
    pub description: String,
    /// Lifetime in seconds; none: until revoked.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A new token: its secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub info: TokenInfo,
    /// `flt_...` for an API token, `FLT1-<CA digest>-<secret>` for a join token.
    pub token: String,
}

/// Who is joining: an agent by its node name, or a server by its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Joiner {
    Node(String),
    Server(u64),
}

/// `POST /v1/join`, sent only over a connection whose CA matched the
/// token's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The whole join token.
    pub token: String,
    pub joiner: Joiner,
    /// The joiner's public key; its private key never leaves it.
    pub public_key: PublicKey,
    /// Addresses the joiner is reached at, written into its certificate.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// What a joiner receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub certificate: IssuedCertificate,
    /// The CA certificates to trust (PEM).
    pub trust_pem: String,
    /// For a joining server only: the certificate of the CA that issues
    /// now (PEM), which `trust_pem` holds with any other trusted CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// For a joining server only: the CA's key, so it can issue
    /// certificates too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key_pem: Option<String>,
    /// For a joining server only: the cluster key secrets are sealed with (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_key: Option<String>,
}

/// `POST /v1/acl/bootstrap`'s answer: the management token, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapAnswer {
    pub token: CreatedToken,
}

/// `POST /v1/nodes/{name}/certificate`: an agent renewing its certificate,
/// authenticated by the one it still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub public_key: PublicKey,
}
