//! flotilla's security: the cluster CA and the certificates it issues, the
//! TLS configurations and the listener every daemon and client speaks, join
//! tokens that pin the CA, and API tokens with roles. Reading and writing
//! files is the daemons' business.

mod ca;
mod cluster_key;
mod current;
mod current_trust;
mod error;
pub mod hex;
mod identity;
mod listener;
mod pem;
mod private_file;
mod random;
mod role;
mod tls;
mod token;

pub use ca::{
    CERTIFICATE_LIFETIME, ClusterCa, IssuedCertificate, PublicKey, digest as certificate_digest, new_key,
};
pub use cluster_key::ClusterKey;
pub use current::CurrentCertificate;
pub use current_trust::{CurrentTrust, issuer_digest};
pub use error::SecurityError;
pub use identity::{Identity, NODE_ROLE_NAME, SERVER_ROLE_NAME, validate_node_name};
pub use listener::{Peer, PeerCertificate, TlsListener};
pub use pem::{Credentials, Trust};
pub use private_file::write_private;
pub use role::{Access, Role};
pub use tls::{
    ExpectedPeer, client_config, following_client_config, install_crypto_provider, peer_vouches_for,
    pinned_client_config, plain_client_config, server_config,
};
pub use token::{ApiToken, JoinToken, Secret, TokenRole, hash_secret, secrets_match};
