//! The cluster CA's routes: its status and a rotation's progress, starting
//! a rotation, and a server's own TLS as the rotation controller asks each
//! member for it.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use flotilla_api::{CaRotationPhase, CaRotationStatus, CaStatus, RotateCaRequest, TlsReport, now_ms};
use flotilla_security::{ClusterCa, Trust};

use super::body::read_json;
use super::error::ApiError;
use super::idempotency::idempotency;
use super::tokens::secure;
use super::{AppState, read_barrier};
use crate::server_tls::ServerTls;
use crate::state::{CaRotation, Command, StoredCa, sealing_name};

/// The status as the replicated state says (what every server converges
/// to, so a client's CA file written from it is right even before this
/// server has caught up), with what the rotation waits for as the leader's
/// controller last assessed it.
fn ca_status(app: &AppState, tls: &ServerTls) -> CaStatus {
    let ca = app.raft.state().ca().clone();
    let (trusted, trust_pem, issuing) = match (&ca.rotation, &ca.current) {
        (Some(rotation), _) => (
            vec![rotation.from_digest.clone(), rotation.to.digest.clone()],
            Trust::joined([rotation.from_pem.as_str(), &rotation.to.certificate_pem]).pem,
            match rotation.phase {
                CaRotationPhase::Trusting => rotation.from_digest.clone(),
                CaRotationPhase::Reissuing => rotation.to.digest.clone(),
            },
        ),
        (None, Some(current)) => {
            (vec![current.digest.clone()], current.certificate_pem.clone(), current.digest.clone())
        }
        (None, None) => (tls.trust.digests(), tls.trust.trust().pem, tls.issuing().digest()),
    };
    CaStatus {
        trusted,
        issuing,
        trust_pem,
        rotation: ca.rotation.map(|rotation| CaRotationStatus {
            from: rotation.from_digest,
            to: rotation.to.digest,
            phase: rotation.phase,
            started_ms: rotation.started_ms,
            waiting_for: app.ca_rotation.waiting_for(),
        }),
        rotations: ca.rotations,
    }
}

/// `GET /v1/ca`. What a rotation waits for is known to the leader alone,
/// so a follower passes the question on.
pub async fn status(State(app): State<AppState>) -> Result<Json<CaStatus>, ApiError> {
    let tls = secure(&app)?;
    if !app.raft.is_leader() {
        return super::leader::forward::<(), _>(&app, Method::GET, "/v1/ca", None).await.map(Json);
    }
    read_barrier(&app, false).await?;
    Ok(Json(ca_status(&app, tls)))
}

/// `POST /v1/ca/rotate`: makes the new CA here, seals its key with the
/// cluster key and proposes the rotation; the leader's controller takes it
/// from there.
pub async fn rotate(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<CaStatus>, ApiError> {
    let tls = secure(&app)?;
    let request: RotateCaRequest = read_json(&headers, body).await?;
    read_barrier(&app, false).await?;
    let (from_pem, from_digest) = {
        let state = app.raft.state();
        if let Some(rotation) = &state.ca().rotation {
            return Err(ApiError::Conflict(format!(
                "a CA rotation to {} is in progress; `flotilla ca status` shows how far it is",
                rotation.to.digest
            )));
        }
        match &state.ca().current {
            Some(current) => (current.certificate_pem.clone(), current.digest.clone()),
            None => {
                let founding = tls.issuing();
                (founding.certificate_pem().to_owned(), founding.digest())
            }
        }
    };
    if request.from != from_digest {
        return Err(ApiError::Conflict(format!(
            "field `from`: the cluster's CA is {from_digest}, not {}",
            request.from
        )));
    }
    let internal = |e: flotilla_security::SecurityError| ApiError::Internal(e.to_string());
    let next = ClusterCa::create().map_err(internal)?;
    let digest = next.digest();
    let sealed_key =
        tls.cluster_key.seal(&sealing_name(&digest), next.key_pem().as_bytes()).map_err(internal)?;
    let rotation = CaRotation {
        from_pem,
        from_digest,
        to: StoredCa {
            certificate_pem: next.certificate_pem().to_owned(),
            digest: digest.clone(),
            sealed_key,
        },
        phase: CaRotationPhase::Trusting,
        started_ms: now_ms(),
    };
    let once = idempotency(&headers, &("ca-rotate", &request.from))?;
    app.raft.propose_once(Command::StartCaRotation { rotation }, once).await?;
    tracing::info!(to = %digest, from = %request.from, "CA rotation started");
    Ok(Json(ca_status(&app, tls)))
}

/// `GET /v1/ca/local`: this server's own TLS, for the leader's rotation
/// controller.
pub async fn local(State(app): State<AppState>) -> Result<Json<TlsReport>, ApiError> {
    Ok(Json(secure(&app)?.report()))
}
