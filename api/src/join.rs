//! Joining a secure cluster: the one exchange made before the joiner
//! trusts anything. The connection is accepted only if the server's chain
//! holds the CA the token pins; then the token's secret and the joiner's
//! public key go out, and a certificate comes back. The private key never
//! leaves the joiner.

use std::time::Duration;

use flotilla_security::{JoinToken, new_key, pinned_client_config};

use crate::client::ClientError;
use crate::model::ApiErrorBody;
use crate::token::{JoinAnswer, JoinRequest, Joiner};

/// A joiner's new credentials: what the cluster answered, and the private
/// key made for them.
#[derive(Debug)]
pub struct Joined {
    pub answer: JoinAnswer,
    pub key_pem: String,
}

/// Asks the server at `seed` (`host:port`) to admit `joiner` with `token`.
pub async fn join(
    seed: &str,
    token: &JoinToken,
    joiner: Joiner,
    addresses: Vec<String>,
) -> Result<Joined, ClientError> {
    let tls = pinned_client_config(&token.ca_digest).map_err(|e| ClientError::Tls(e.to_string()))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let (key_pem, public_key) = new_key().map_err(|e| ClientError::Tls(e.to_string()))?;
    let request = JoinRequest { token: token.reveal(), joiner, public_key, addresses };
    let response =
        http.post(format!("https://{seed}/v1/join")).json(&request).send().await.map_err(|error| {
            ClientError::Unreachable {
                tried: seed.to_owned(),
                last: crate::client::describe_send_error(&error),
            }
        })?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ClientError::Protocol { address: seed.to_owned(), reason: e.to_string() })?;
    if !status.is_success() {
        let body: ApiErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ApiErrorBody {
            code: "http".into(),
            message: format!("{status}: {}", String::from_utf8_lossy(&bytes)),
            spec: None,
        });
        return Err(ClientError::Api { status: status.as_u16(), body });
    }
    let answer: JoinAnswer = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Protocol { address: seed.to_owned(), reason: e.to_string() })?;
    Ok(Joined { answer, key_pem })
}
