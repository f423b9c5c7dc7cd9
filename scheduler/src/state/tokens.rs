//! Tokens in the replicated state: API tokens with their roles and join
//! tokens, each stored as the SHA-256 of its secret. Every server applies
//! a revocation when it commits, so a revoked token stops working
//! everywhere within a heartbeat of the log.

use flotilla_api::TokenInfo;
use flotilla_security::{TokenRole, secrets_match};
use serde::{Deserialize, Serialize};

use super::cluster_state::ClusterState;
use super::command::{CommandOutput, Rejection};

/// A token as the state holds it: its public description and the hash of
/// its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub info: TokenInfo,
    pub hash: String,
}

impl ClusterState {
    pub(super) fn create_token(&mut self, token: StoredToken) -> Result<CommandOutput, Rejection> {
        if self.tokens.contains_key(&token.info.id) {
            return Err(Rejection::TokenExists(token.info.id));
        }
        let info = token.info.clone();
        self.tokens.insert(token.info.id.clone(), token);
        Ok(CommandOutput::Token(info))
    }

    pub(super) fn revoke_token(&mut self, id: &str) -> Result<CommandOutput, Rejection> {
        match self.tokens.remove(id) {
            Some(token) => Ok(CommandOutput::Token(token.info)),
            None => Err(Rejection::TokenNotFound(id.to_owned())),
        }
    }

    /// The management token, once in the cluster's life.
    pub(super) fn bootstrap_acl(&mut self, token: StoredToken) -> Result<CommandOutput, Rejection> {
        if self.acl_bootstrapped {
            return Err(Rejection::AclAlreadyBootstrapped);
        }
        let output = self.create_token(token)?;
        self.acl_bootstrapped = true;
        Ok(output)
    }

    /// The live token whose secret hashes to `hash` and whose role is one
    /// of `roles`. Every candidate is compared in constant time.
    pub fn find_token(&self, hash: &str, roles: &[TokenRole], now_ms: u64) -> Option<&TokenInfo> {
        let mut found = None;
        for token in self.tokens.values() {
            if secrets_match(&token.hash, hash) {
                found = Some(&token.info);
            }
        }
        found.filter(|info| roles.contains(&info.role) && !info.expired(now_ms))
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenInfo> {
        self.tokens.values().map(|t| &t.info)
    }

    pub fn acl_bootstrapped(&self) -> bool {
        self.acl_bootstrapped
    }
}

#[cfg(test)]
mod tests {
    use flotilla_security::Secret;

    use super::*;
    use crate::state::Command;

    fn token(role: TokenRole, expires_ms: Option<u64>) -> (Secret, StoredToken) {
        let secret = Secret::generate().expect("secret");
        let hash = secret.hash();
        let info = TokenInfo {
            id: hash[..16].to_owned(),
            role,
            description: String::new(),
            created_ms: 0,
            expires_ms,
        };
        (secret, StoredToken { info, hash })
    }

    #[test]
    fn tokens_are_found_by_hash_role_and_expiry_and_gone_once_revoked() {
        let mut state = ClusterState::default();
        let (deploy, stored) = token(TokenRole::Deploy, None);
        let id = stored.info.id.clone();
        state.apply(1, Command::CreateToken { token: stored }).expect("create");
        let (short, stored_short) = token(TokenRole::Agent, Some(1_000));
        state.apply(2, Command::CreateToken { token: stored_short }).expect("create");

        assert_eq!(
            state.find_token(&deploy.hash(), &[TokenRole::Deploy], 5).map(|t| t.role),
            Some(TokenRole::Deploy)
        );
        assert!(state.find_token(&deploy.hash(), &[TokenRole::Agent], 5).is_none(), "wrong role");
        assert!(state.find_token(&short.hash(), &[TokenRole::Agent], 999).is_some());
        assert!(state.find_token(&short.hash(), &[TokenRole::Agent], 1_000).is_none(), "expired");
        assert!(state.find_token(&Secret::generate().expect("s").hash(), &[TokenRole::Deploy], 5).is_none());

        state.apply(3, Command::RevokeToken { id: id.clone() }).expect("revoke");
        assert!(state.find_token(&deploy.hash(), &[TokenRole::Deploy], 5).is_none(), "revoked");
        let before = state.clone();
        assert_eq!(
            state.apply(4, Command::RevokeToken { id: id.clone() }),
            Err(Rejection::TokenNotFound(id))
        );
        assert_eq!(state, before, "a rejected revocation changes nothing");
    }

    #[test]
    fn the_acl_is_bootstrapped_once() {
        let mut state = ClusterState::default();
        let (_, first) = token(TokenRole::Admin, None);
        state.apply(1, Command::BootstrapAcl { token: first }).expect("bootstrap");
        assert!(state.acl_bootstrapped());
        let before = state.clone();
        let (_, second) = token(TokenRole::Admin, None);
        assert_eq!(
            state.apply(2, Command::BootstrapAcl { token: second }),
            Err(Rejection::AclAlreadyBootstrapped)
        );
        assert_eq!(state, before);
        assert_eq!(state.tokens().count(), 1);
    }
}
