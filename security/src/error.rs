#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot make a certificate: {0}")]
    Certificate(String),
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("{0}")]
    Token(String),
    #[error("secret sealing: {0}")]
    Sealing(String),
    /// The server's CA is not the one a join token pins.
    #[error("{0}")]
    WrongCluster(String),
    #[error("node name `{name}` cannot be put in a certificate: {reason}")]
    NodeName { name: String, reason: String },
}
