//! Tokens: 256 random bits, shown once, stored only as their SHA-256 and
//! compared in constant time. A join token also pins the CA's digest, so a
//! joining party knows the cluster before it hands over the secret.

use std::fmt;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::SecurityError;
use crate::random::{bytes, hex};

/// The prefix of every join token; the digit is the format's version.
const JOIN_PREFIX: &str = "FLT1";
/// The prefix of every API token, so one pasted in the wrong place is recognised.
const API_PREFIX: &str = "flt_";

/// A token's secret part: 64 hex digits. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn generate() -> Result<Self, SecurityError> {
        Ok(Secret(hex(&bytes::<32>()?)))
    }

    fn parse(text: &str, what: &str) -> Result<Self, SecurityError> {
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SecurityError::Token(format!("{what}: the secret must be 64 hex digits")));
        }
        Ok(Secret(text.to_ascii_lowercase()))
    }

    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// What is stored: SHA-256 of the secret, hex.
    pub fn hash(&self) -> String {
        hash_secret(&self.0)
    }
}

/// SHA-256 of a secret, hex.
pub fn hash_secret(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Compares two hashes in constant time.
pub fn secrets_match(stored_hash: &str, presented_hash: &str) -> bool {
    stored_hash.as_bytes().ct_eq(presented_hash.as_bytes()).into()
}

/// What a token lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// API: read only.
    Read,
    /// API: workloads, scale, rollouts, logs, and reading.
    Deploy,
    /// API: everything, membership and tokens included.
    Admin,
    /// Join: an agent may join and receive a node certificate.
    Agent,
    /// Join: a server may join the Raft cluster and receive the CA.
    Server,
}

impl TokenRole {
    pub fn is_join(self) -> bool {
        matches!(self, TokenRole::Agent | TokenRole::Server)
    }
}

impl fmt::Display for TokenRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenRole::Read => "read",
            TokenRole::Deploy => "deploy",
            TokenRole::Admin => "admin",
            TokenRole::Agent => "agent",
            TokenRole::Server => "server",
        })
    }
}

impl std::str::FromStr for TokenRole {
    type Err = SecurityError;
    fn from_str(text: &str) -> Result<Self, SecurityError> {
        Ok(match text {
            "read" => TokenRole::Read,
            "deploy" => TokenRole::Deploy,
            "admin" => TokenRole::Admin,
            "agent" => TokenRole::Agent,
            "server" => TokenRole::Server,
            other => {
                return Err(SecurityError::Token(format!(
                    "role: `{other}` is not one of admin, deploy, read, agent, server"
                )));
            }
        })
    }
}

/// `FLT1-<sha256 of the CA certificate>-<secret>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub secret: Secret,
}

impl JoinToken {
    pub fn new(ca_digest: &str) -> Result<Self, SecurityError> {
        Ok(JoinToken { ca_digest: ca_digest.to_owned(), secret: Secret::generate()? })
    }

    pub fn reveal(&self) -> String {
        format!("{JOIN_PREFIX}-{}-{}", self.ca_digest, self.secret.reveal())
    }

    pub fn parse(text: &str) -> Result<Self, SecurityError> {
        let text = text.trim();
        let mut parts = text.splitn(3, '-');
        let (Some(prefix), Some(digest), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SecurityError::Token(
                "join token: expected FLT1-<CA digest>-<secret> (from `flotilla token create`)".into(),
            ));
        };
        if prefix != JOIN_PREFIX {
            return Err(SecurityError::Token(format!(
                "join token: starts with `{prefix}`, not {JOIN_PREFIX} (an API token is not a join token)"
            )));
        }
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SecurityError::Token("join token: the CA digest must be 64 hex digits".into()));
        }
        Ok(JoinToken { ca_digest: digest.to_ascii_lowercase(), secret: Secret::parse(secret, "join token")? })
    }
}

/// `flt_<secret>`: what a user sends as `Authorization: Bearer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub secret: Secret,
}

impl ApiToken {
    pub fn generate() -> Result<Self, SecurityError> {
        Ok(ApiToken { secret: Secret::generate()? })
    }

    pub fn reveal(&self) -> String {
        format!("{API_PREFIX}{}", self.secret.reveal())
    }

    pub fn parse(text: &str) -> Result<Self, SecurityError> {
        let Some(secret) = text.trim().strip_prefix(API_PREFIX) else {
            return Err(SecurityError::Token(format!("API token: expected {API_PREFIX}<secret>")));
        };
        Ok(ApiToken { secret: Secret::parse(secret, "API token")? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_pin_the_digest() {
        let digest = "ab".repeat(32);
        let token = JoinToken::new(&digest).expect("token");
        let text = token.reveal();
        assert!(text.starts_with(&format!("FLT1-{digest}-")));
        assert_eq!(JoinToken::parse(&text).expect("parse"), token);
        assert!(!format!("{token:?}").contains(token.secret.reveal()));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let secret = "c".repeat(64);
        let digest = "d".repeat(64);
        for (text, reason) in [
            ("nonsense", "expected FLT1-"),
            (&format!("SWMTKN-{digest}-{secret}"), "not FLT1"),
            (&format!("FLT1-abc-{secret}"), "CA digest must be 64"),
            (&format!("FLT1-{digest}-short"), "secret must be 64"),
            (&format!("flt_{secret}"), "expected FLT1-"),
        ] {
            let error = JoinToken::parse(text).expect_err(text).to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
        assert!(ApiToken::parse(&format!("FLT1-{digest}-{secret}")).is_err());
        assert!(ApiToken::parse("flt_xyz").expect_err("short").to_string().contains("64 hex"));
    }

    #[test]
    fn secrets_are_compared_by_hash() {
        let token = ApiToken::generate().expect("token");
        let parsed = ApiToken::parse(&token.reveal()).expect("parse");
        assert!(secrets_match(&token.secret.hash(), &parsed.secret.hash()));
        let other = ApiToken::generate().expect("other");
        assert!(!secrets_match(&token.secret.hash(), &other.secret.hash()));
        assert_ne!(token.secret.hash(), token.secret.reveal());
    }

    #[test]
    fn roles_parse_by_name() {
        for role in
            [TokenRole::Read, TokenRole::Deploy, TokenRole::Admin, TokenRole::Agent, TokenRole::Server]
        {
            assert_eq!(role.to_string().parse::<TokenRole>().expect("parse"), role);
        }
        assert!("root".parse::<TokenRole>().expect_err("root").to_string().contains("role: `root`"));
    }
}
