//! Secret routes: put a value (sealed with the cluster key before it is
//! proposed), list names and versions, delete. No route returns a value:
//! only a node's own agent receives the values its replicas need, with
//! its allocations.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use flotilla_api::spec::validate_secret_name;
use flotilla_api::{MAX_SECRET_BYTES, SecretInfo, SecretValue, WorkloadSpec, now_ms};

use super::error::ApiError;
use super::idempotency::idempotency;
use super::{AppState, read_barrier};
use crate::server_tls::ServerTls;
use crate::state::{ClusterState, Command, CommandOutput};

fn cluster_key(app: &AppState) -> Result<&ServerTls, ApiError> {
    app.tls.as_deref().ok_or_else(|| {
        ApiError::BadRequest(
            "this server runs --insecure: it holds no cluster key to seal secrets with".into(),
        )
    })
}

fn expect_secret(output: CommandOutput) -> Result<SecretInfo, ApiError> {
    match output {
        CommandOutput::Secret(info) => Ok(info),
        other => Err(ApiError::Internal(format!("unexpected command output {other:?}"))),
    }
}

pub async fn put(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SecretInfo>, ApiError> {
    let tls = cluster_key(&app)?;
    validate_secret_name(&name).map_err(|reason| ApiError::BadRequest(format!("secret name: {reason}")))?;
    let value = axum::body::to_bytes(body, MAX_SECRET_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(MAX_SECRET_BYTES))?;
    if value.is_empty() {
        return Err(ApiError::BadRequest("the secret's value is empty".into()));
    }
    let sealed = tls.cluster_key.seal(&name, &value).map_err(|e| ApiError::Internal(e.to_string()))?;
    // The key's fingerprint holds the name and size only: a hash of a
    // short password in the log could be guessed from.
    let once = idempotency(&headers, &("secret", &name, value.len()))?;
    let command = Command::PutSecret { name, sealed, size: value.len() as u64, now_ms: now_ms() };
    let info = expect_secret(app.raft.propose_once(command, once).await?)?;
    tracing::info!(secret = %info.name, version = info.version, "secret put");
    Ok(Json(info))
}

pub async fn list(State(app): State<AppState>) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    read_barrier(&app, false).await?;
    Ok(Json(app.raft.state().secrets().cloned().collect()))
}

pub async fn delete(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SecretInfo>, ApiError> {
    let info = expect_secret(app.raft.propose(Command::DeleteSecret { name }).await?)?;
    tracing::info!(secret = %info.name, "secret deleted");
    Ok(Json(info))
}

/// The values of the secrets `workloads` name, opened for their node's
/// agent. One that does not open is left out (and logged by name): the
/// replica then fails to start saying which secret it lacks.
pub fn values_for<'a>(
    app: &AppState,
    state: &ClusterState,
    workloads: impl Iterator<Item = &'a WorkloadSpec>,
) -> std::collections::BTreeMap<String, SecretValue> {
    let Some(tls) = app.tls.as_deref() else {
        return Default::default();
    };
    let mut values = std::collections::BTreeMap::new();
    for spec in workloads {
        for name in spec.secret_names() {
            if values.contains_key(name) {
                continue;
            }
            let Some(stored) = state.secret(name) else { continue };
            match tls.cluster_key.open(name, &stored.sealed) {
                Ok(value) => {
                    values.insert(name.to_owned(), SecretValue::new(&value));
                }
                Err(error) => tracing::error!(secret = %name, %error, "a stored secret does not open"),
            }
        }
    }
    values
}
