//! Who a certificate speaks for. The identity is written into the
//! certificate as DNS names under `flotilla` (`3.server.flotilla`,
//! `web-1.node.flotilla`) plus the role's own name (`server.flotilla`), so
//! checking a claim is asking webpki whether the certificate is valid for
//! that name: no X.509 parser of our own, and nothing a peer can forge
//! without the CA's key.

use std::fmt;

use crate::SecurityError;

/// Every server's certificate is valid for this name: what clients check,
/// whatever address they dialled (servers move; the CA vouches, as Swarm's
/// role check does).
pub const SERVER_ROLE_NAME: &str = "server.flotilla";
/// Every agent's certificate is valid for this name.
pub const NODE_ROLE_NAME: &str = "node.flotilla";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A Raft server, by its id.
    Server(u64),
    /// An agent, by the node name it registers.
    Node(String),
}

impl Identity {
    /// The DNS name this identity's certificate carries.
    pub fn dns_name(&self) -> String {
        match self {
            Identity::Server(id) => format!("{id}.{SERVER_ROLE_NAME}"),
            Identity::Node(name) => format!("{name}.{NODE_ROLE_NAME}"),
        }
    }

    /// The name every certificate of this identity's role carries.
    pub fn role_name(&self) -> &'static str {
        match self {
            Identity::Server(_) => SERVER_ROLE_NAME,
            Identity::Node(_) => NODE_ROLE_NAME,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Server(id) => write!(f, "server {id}"),
            Identity::Node(name) => write!(f, "node {name}"),
        }
    }
}

/// A node name goes into a certificate as one DNS label: lowercase letters,
/// digits and `-`, not at either end, at most 63 characters.
pub fn validate_node_name(name: &str) -> Result<(), SecurityError> {
    let refuse =
        |reason: &str| Err(SecurityError::NodeName { name: name.to_owned(), reason: reason.to_owned() });
    if name.is_empty() || name.len() > 63 {
        return refuse("it must be 1 to 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return refuse("it may hold only lowercase letters, digits and `-`");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return refuse("it may not start or end with `-`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_must_be_one_dns_label() {
        for good in ["a", "node-1", "web01", &"x".repeat(63)] {
            assert!(validate_node_name(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "1 to 63"),
            ("Node", "lowercase"),
            ("a.b", "lowercase letters, digits"),
            ("-a", "start or end"),
            ("a-", "start or end"),
            (&"x".repeat(64), "1 to 63"),
        ] {
            let error = validate_node_name(bad).expect_err(bad).to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn identities_have_distinct_names_under_their_role() {
        assert_eq!(Identity::Server(3).dns_name(), "3.server.flotilla");
        assert_eq!(Identity::Node("web-1".into()).dns_name(), "web-1.node.flotilla");
        assert_ne!(Identity::Server(1).role_name(), Identity::Node("1".into()).role_name());
    }
}
