//! Tokens and joining: `acl bootstrap` (once), API and join tokens for
//! admins, and the join exchange through which an agent or a server gets
//! its certificate with a join token. Secrets are never logged; they are
//! hashed as soon as they arrive.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use flotilla_api::{
    BootstrapAnswer, CreateTokenRequest, CreatedToken, JoinAnswer, JoinRequest, Joiner, TokenInfo, now_ms,
};
use flotilla_security::{ApiToken, Identity, JoinToken, Secret, TokenRole, validate_node_name};

use super::body::read_json;
use super::error::ApiError;
use super::{AppState, read_barrier};
use crate::server_tls::ServerTls;
use crate::state::{Command, CommandOutput, StoredToken};

pub(super) fn secure(app: &AppState) -> Result<&ServerTls, ApiError> {
    app.tls.as_deref().ok_or_else(|| {
        ApiError::BadRequest("this server runs --insecure: it has no CA, and no tokens are checked".into())
    })
}

/// A new token of `role`: what is stored, and the text shown once.
fn mint(tls: &ServerTls, request: &CreateTokenRequest) -> Result<(StoredToken, String), ApiError> {
    let failed = |e: flotilla_security::SecurityError| ApiError::Internal(e.to_string());
    let (secret, text) = if request.role.is_join() {
        let token = JoinToken::new(&tls.issuing().digest()).map_err(failed)?;
        (token.secret.clone(), token.reveal())
    } else {
        let token = ApiToken::generate().map_err(failed)?;
        (token.secret.clone(), token.reveal())
    };
    let now = now_ms();
    let hash = Secret::hash(&secret);
    let info = TokenInfo {
        id: hash[..16].to_owned(),
        role: request.role,
        description: request.description.clone(),
        created_ms: now,
        expires_ms: request.ttl_secs.map(|ttl| now.saturating_add(ttl.saturating_mul(1000))),
    };
    Ok((StoredToken { info, hash }, text))
}

fn expect_token(output: CommandOutput) -> Result<TokenInfo, ApiError> {
    match output {
        CommandOutput::Token(info) => Ok(info),
        other => Err(ApiError::Internal(format!("unexpected command output {other:?}"))),
    }
}

pub async fn bootstrap(State(app): State<AppState>) -> Result<Json<BootstrapAnswer>, ApiError> {
    let tls = secure(&app)?;
    read_barrier(&app, false).await?;
    if app.raft.state().acl_bootstrapped() {
        return Err(ApiError::Conflict("the ACL is bootstrapped already; ask an admin for a token".into()));
    }
    let request =
        CreateTokenRequest { role: TokenRole::Admin, description: "management".into(), ttl_secs: None };
    let (token, text) = mint(tls, &request)?;
    let info = expect_token(app.raft.propose(Command::BootstrapAcl { token }).await?)?;
    tracing::info!(token = %info.id, "ACL bootstrapped: management token issued");
    Ok(Json(BootstrapAnswer { token: CreatedToken { info, token: text } }))
}

pub async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<CreatedToken>, ApiError> {
    let tls = secure(&app)?;
    let request: CreateTokenRequest = read_json(&headers, body).await?;
    if request.ttl_secs == Some(0) {
        return Err(ApiError::BadRequest(
            "field `ttl_secs`: must be more than 0 (or left out: no expiry)".into(),
        ));
    }
    let (token, text) = mint(tls, &request)?;
    let info = expect_token(app.raft.propose(Command::CreateToken { token }).await?)?;
    tracing::info!(token = %info.id, role = %info.role, "token created");
    Ok(Json(CreatedToken { info, token: text }))
}

pub async fn list(State(app): State<AppState>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    secure(&app)?;
    read_barrier(&app, false).await?;
    Ok(Json(app.raft.state().tokens().cloned().collect()))
}

pub async fn revoke(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    secure(&app)?;
    let info = expect_token(app.raft.propose(Command::RevokeToken { id }).await?)?;
    tracing::info!(token = %info.id, "token revoked");
    Ok(Json(info))
}

pub async fn join(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<JoinAnswer>, ApiError> {
    let tls = secure(&app)?;
    let request: JoinRequest = read_json(&headers, body).await?;
    let token = JoinToken::parse(&request.token).map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let ca = tls.issuing();
    if token.ca_digest != ca.digest() {
        return Err(ApiError::Unauthorized(format!(
            "the join token pins CA {} but this cluster's CA is {} (a token made before a CA rotation pins the old CA: make a new one)",
            token.ca_digest,
            ca.digest()
        )));
    }
    let (identity, role) = match &request.joiner {
        Joiner::Node(name) => {
            validate_node_name(name)
                .map_err(|e| ApiError::BadRequest(format!("field `joiner.node`: {e}")))?;
            (Identity::Node(name.clone()), TokenRole::Agent)
        }
        Joiner::Server(0) => {
            return Err(ApiError::BadRequest("field `joiner.server`: must be more than 0".into()));
        }
        Joiner::Server(id) => (Identity::Server(*id), TokenRole::Server),
    };
    // A token revoked a moment ago must not work here: read what the
    // leader has committed, not what this server happens to hold.
    read_barrier(&app, false).await?;
    if app.raft.state().find_token(&token.secret.hash(), &[role], now_ms()).is_none() {
        return Err(ApiError::Unauthorized(format!(
            "the join token is not a live {role} token of this cluster (revoked, expired, or for the other role)"
        )));
    }
    let certificate = ca
        .issue(&identity, &request.public_key, &request.addresses, tls.lifetime())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    tracing::info!(joiner = %identity, "admitted with a join token");
    let server = matches!(identity, Identity::Server(_));
    Ok(Json(JoinAnswer {
        certificate,
        trust_pem: tls.trust.trust().pem,
        ca_pem: server.then(|| ca.certificate_pem().to_owned()),
        ca_key_pem: server.then(|| ca.key_pem()),
        cluster_key: server.then(|| tls.cluster_key.to_hex()),
    }))
}

pub async fn renew_node_certificate(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<flotilla_security::IssuedCertificate>, ApiError> {
    let tls = secure(&app)?;
    let request: flotilla_api::RenewRequest = read_json(&headers, body).await?;
    let certificate = tls
        .issuing()
        .issue(&Identity::Node(name.clone()), &request.public_key, &[], tls.lifetime())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    tracing::info!(node = %name, "renewed a node's certificate");
    Ok(Json(certificate))
}
