//! Secrets on the wire: their descriptions (never their values) for
//! `secret list`, and the values an agent receives for the replicas it
//! runs, hex-encoded and never shown by `Debug`.

use serde::{Deserialize, Serialize};

/// A secret as listed: its name, version and size, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    /// 1 when created, one more each time it is put again.
    pub version: u64,
    /// The value's length in bytes.
    pub size: u64,
    pub updated_ms: u64,
}

/// A secret's value as an agent receives it (hex). `Debug` shows nothing
/// of it, so a value can never reach a log through a struct's `{:?}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(String);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(..)")
    }
}

impl SecretValue {
    pub fn new(bytes: &[u8]) -> Self {
        SecretValue(flotilla_security::hex::encode(bytes))
    }

    pub fn bytes(&self) -> Option<Vec<u8>> {
        flotilla_security::hex::decode(&self.0)
    }
}

/// Largest secret value: secrets are passwords, keys and certificates.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
