//! Who may call a route. Every route of the API has exactly one `Access`
//! (the server's table); a caller is a server (by certificate), an agent
//! (by certificate, for its own node), or a user (by API token and role).

use serde::{Deserialize, Serialize};

use crate::TokenRole;

/// An API role; each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Read,
    Deploy,
    Admin,
}

impl Role {
    pub fn from_token(role: TokenRole) -> Option<Role> {
        match role {
            TokenRole::Read => Some(Role::Read),
            TokenRole::Deploy => Some(Role::Deploy),
            TokenRole::Admin => Some(Role::Admin),
            TokenRole::Agent | TokenRole::Server => None,
        }
    }

    pub fn includes(self, needed: Role) -> bool {
        self >= needed
    }
}

/// What a route asks of its caller. Servers, the cluster's own members,
/// may call every route (they relay agents' heartbeats and users' reads
/// to the leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential: joining (the secret travels in the body), and `acl
    /// bootstrap`, which works once.
    Public,
    /// An API token with at least this role.
    Role(Role),
    /// Server certificates only: Raft traffic.
    Members,
    /// The agent of the node named in the path, by its certificate.
    OwnNode,
    /// Any agent by its certificate, or an API token with this role.
    AnyNodeOrRole(Role),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_lesser_ones() {
        assert!(Role::Admin.includes(Role::Deploy) && Role::Admin.includes(Role::Read));
        assert!(Role::Deploy.includes(Role::Read) && !Role::Deploy.includes(Role::Admin));
        assert!(!Role::Read.includes(Role::Deploy));
        assert_eq!(Role::from_token(TokenRole::Agent), None);
    }
}
