//! The cluster key: 256 random bits the servers hold beside the CA key,
//! never in the Raft log. Secrets are sealed with it (ChaCha20-Poly1305,
//! ring's AEAD, already built for TLS) before they are proposed, so the
//! log, its snapshots and every follower's disk hold only ciphertext.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::SecurityError;

#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

fn sealing(reason: &str) -> SecurityError {
    SecurityError::Sealing(reason.to_owned())
}

impl ClusterKey {
    pub fn generate() -> Result<Self, SecurityError> {
        Ok(ClusterKey(crate::random::bytes::<32>()?))
    }

    pub fn from_hex(text: &str) -> Result<Self, SecurityError> {
        let bytes = crate::hex::decode(text.trim()).and_then(|b| <[u8; 32]>::try_from(b).ok());
        bytes.map(ClusterKey).ok_or_else(|| sealing("the cluster key must be 64 hex digits"))
    }

    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    fn key(&self) -> Result<LessSafeKey, SecurityError> {
        UnboundKey::new(&CHACHA20_POLY1305, &self.0).map(LessSafeKey::new).map_err(|_| sealing("bad key"))
    }

    /// Seals `value` bound to `name` (the additional data: a sealed value
    /// moved under another name does not open). Hex of nonce and ciphertext.
    pub fn seal(&self, name: &str, value: &[u8]) -> Result<String, SecurityError> {
        let nonce = crate::random::bytes::<NONCE_LEN>()?;
        let mut sealed = value.to_vec();
        self.key()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| sealing("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(crate::hex::encode(&out))
    }

    pub fn open(&self, name: &str, sealed: &str) -> Result<Vec<u8>, SecurityError> {
        let bytes = crate::hex::decode(sealed).ok_or_else(|| sealing("a sealed value is hex"))?;
        if bytes.len() < NONCE_LEN {
            return Err(sealing("a sealed value is too short"));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| sealing("bad nonce"))?;
        let mut buffer = ciphertext.to_vec();
        let opened =
            self.key()?.open_in_place(nonce, Aad::from(name.as_bytes()), &mut buffer).map_err(|_| {
                sealing("the value does not open with this cluster key (another cluster's, or altered)")
            })?;
        Ok(opened.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_key_and_the_name() {
        let key = ClusterKey::generate().expect("key");
        let sealed = key.seal("db-password", b"hunter2").expect("seal");
        assert!(!sealed.contains(&crate::hex::encode(b"hunter2")), "no plaintext in the sealed value");
        assert_ne!(sealed, key.seal("db-password", b"hunter2").expect("seal"), "a fresh nonce each time");
        assert_eq!(key.open("db-password", &sealed).expect("open"), b"hunter2");
        assert!(key.open("other-name", &sealed).is_err(), "bound to its name");
        assert!(ClusterKey::generate().expect("key").open("db-password", &sealed).is_err(), "another key");
        let reloaded = ClusterKey::from_hex(&key.to_hex()).expect("hex");
        assert_eq!(reloaded.open("db-password", &sealed).expect("open"), b"hunter2");
        assert!(!format!("{key:?}").contains(&key.to_hex()));
    }
}
