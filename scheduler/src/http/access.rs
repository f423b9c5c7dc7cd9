//! Who may call which route. Every route has one entry in `ROUTES`; the
//! middleware refuses a route without one (so a route added without a
//! decision fails its own tests), answers 401 to a caller with no
//! credential or an unknown token and 403 to one whose credential does not
//! allow the route. Servers, by their certificates, may call everything;
//! an agent's certificate opens its own node's routes; users bring API
//! tokens. A server started `--insecure` checks nothing.

use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use flotilla_security::{
    Access, ApiToken, Identity, NODE_ROLE_NAME, Peer, PeerCertificate, Role, SERVER_ROLE_NAME, TokenRole,
};

use super::AppState;
use super::error::ApiError;
use super::heartbeat_relay::RELAY_PATH;
use crate::raft::{PEER_PATH, SENDER_HEADER, SNAPSHOT_PATH};

/// Every route, its method, and what it asks of the caller.
pub const ROUTES: &[(Method, &str, Access)] = &[
    (Method::GET, "/metrics", Access::Role(Role::Read)),
    (Method::GET, "/", Access::Public),
    (Method::GET, "/ui", Access::Public),
    (Method::GET, "/ui/", Access::Role(Role::Read)),
    (Method::GET, "/ui/nodes", Access::Role(Role::Read)),
    (Method::GET, "/ui/workloads", Access::Role(Role::Read)),
    (Method::GET, "/ui/workloads/{name}", Access::Role(Role::Read)),
    (Method::GET, "/ui/events", Access::Role(Role::Read)),
    (Method::GET, "/ui/assets/{file}", Access::Public),
    (Method::GET, "/v1/workloads", Access::Role(Role::Read)),
    (Method::POST, "/v1/workloads", Access::Role(Role::Deploy)),
    (Method::GET, "/v1/workloads/{name}", Access::Role(Role::Read)),
    (Method::DELETE, "/v1/workloads/{name}", Access::Role(Role::Deploy)),
    (Method::POST, "/v1/workloads/{name}/scale", Access::Role(Role::Deploy)),
    (Method::GET, "/v1/workloads/{name}/utilisation", Access::Role(Role::Read)),
    (Method::GET, "/v1/workloads/{name}/deployments", Access::Role(Role::Read)),
    (Method::POST, "/v1/workloads/{name}/rollout/undo", Access::Role(Role::Deploy)),
    (Method::POST, "/v1/workloads/{name}/rollout/{action}", Access::Role(Role::Deploy)),
    (Method::GET, "/v1/services", Access::AnyNodeOrRole(Role::Read)),
    (Method::GET, "/v1/services/{name}", Access::Role(Role::Read)),
    (Method::GET, "/v1/events", Access::Role(Role::Read)),
    (Method::GET, "/v1/events/stream", Access::Role(Role::Read)),
    (Method::GET, "/v1/nodes", Access::Role(Role::Read)),
    (Method::POST, "/v1/nodes", Access::OwnNode),
    (Method::PUT, "/v1/nodes/{name}/status", Access::Role(Role::Admin)),
    (Method::POST, "/v1/nodes/{name}/heartbeat", Access::OwnNode),
    (Method::POST, "/v1/nodes/{name}/events", Access::OwnNode),
    (Method::PUT, "/v1/nodes/{name}/unserved", Access::OwnNode),
    (Method::GET, "/v1/nodes/{name}/allocations", Access::OwnNode),
    (Method::POST, "/v1/nodes/{name}/allocations", Access::OwnNode),
    (Method::POST, "/v1/nodes/{name}/certificate", Access::OwnNode),
    (Method::POST, "/v1/nodes/{name}/volumes/removed", Access::OwnNode),
    (Method::GET, "/v1/volumes", Access::Role(Role::Read)),
    (Method::DELETE, "/v1/volumes/{workload}", Access::Role(Role::Deploy)),
    (Method::GET, "/v1/allocations", Access::Role(Role::Read)),
    (Method::GET, "/v1/allocations/{id}/logs", Access::Role(Role::Deploy)),
    (Method::GET, "/v1/cluster/status", Access::Role(Role::Read)),
    (Method::POST, "/v1/cluster/members", Access::Role(Role::Admin)),
    (Method::DELETE, "/v1/cluster/members/{id}", Access::Role(Role::Admin)),
    (Method::PUT, "/debug/v1/faults", Access::Role(Role::Admin)),
    (Method::GET, "/v1/secrets", Access::Role(Role::Read)),
    (Method::PUT, "/v1/secrets/{name}", Access::Role(Role::Deploy)),
    (Method::DELETE, "/v1/secrets/{name}", Access::Role(Role::Deploy)),
    (Method::POST, "/v1/acl/bootstrap", Access::Public),
    (Method::GET, "/v1/tokens", Access::Role(Role::Admin)),
    (Method::POST, "/v1/tokens", Access::Role(Role::Admin)),
    (Method::DELETE, "/v1/tokens/{id}", Access::Role(Role::Admin)),
    (Method::POST, "/v1/join", Access::Public),
    (Method::GET, "/v1/ca", Access::Role(Role::Read)),
    (Method::POST, "/v1/ca/rotate", Access::Role(Role::Admin)),
    (Method::GET, "/v1/ca/local", Access::Members),
    (Method::POST, PEER_PATH, Access::Members),
    (Method::POST, RELAY_PATH, Access::Members),
    (Method::POST, SNAPSHOT_PATH, Access::Members),
];

/// Who made a request, once checked; handlers that need more than the
/// route's access (registration checks the body's node name) read it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The server runs `--insecure`: nobody is checked.
    Unchecked,
    Server,
    /// An agent, by its certificate.
    Node(Arc<PeerCertificate>),
    User(Role),
    Anonymous,
}

impl Caller {
    /// Whether this caller may act for node `name`.
    pub fn speaks_for_node(&self, name: &str) -> bool {
        match self {
            Caller::Unchecked | Caller::Server => true,
            Caller::Node(certificate) => certificate.vouches_for(&Identity::Node(name.to_owned()).dns_name()),
            Caller::User(_) | Caller::Anonymous => false,
        }
    }
}

fn access_of(method: &Method, path: &str) -> Option<Access> {
    ROUTES.iter().find(|(m, p, _)| m == method && *p == path).map(|(_, _, access)| *access)
}

/// The `{name}` segment of `uri_path` under the route `pattern`.
fn path_param<'a>(pattern: &str, uri_path: &'a str, param: &str) -> Option<&'a str> {
    let wanted = format!("{{{param}}}");
    pattern.split('/').zip(uri_path.split('/')).find(|(p, _)| *p == wanted).map(|(_, value)| value)
}

/// The cookie the dashboard's token prompt sets for the browser's session.
pub const TOKEN_COOKIE: &str = "flotilla_token";

/// The caller's API token: `Authorization: Bearer`, or, for a GET only,
/// the dashboard's session cookie (a browser sends cookies with every
/// request it makes, so a cookie must never be enough to change anything).
fn bearer<'a>(headers: &'a HeaderMap, method: &Method) -> Option<&'a str> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(token) = authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        return Some(token.trim());
    }
    if method != Method::GET {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

async fn caller_of(
    app: &AppState,
    peer: &Peer,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Caller, ApiError> {
    if !peer.secure {
        return Ok(Caller::Unchecked);
    }
    if let Some(text) = bearer(headers, method) {
        let unknown = || {
            ApiError::Unauthorized(
                "the token is not recognised: revoked, expired, mistyped or another cluster's".into(),
            )
        };
        let token = ApiToken::parse(text).map_err(|_| unknown())?;
        let roles = [TokenRole::Read, TokenRole::Deploy, TokenRole::Admin];
        let find = || {
            let state = app.raft.state();
            state.find_token(&token.secret.hash(), &roles, flotilla_api::now_ms()).map(|info| info.role)
        };
        let role = match find() {
            Some(role) => role,
            // A server may not have applied the token yet: a follower that
            // trails (just joined, cut off), or a leader just elected, whose
            // log holds entries its predecessor committed that it has not
            // applied. It catches up with the commit index before it says
            // no, and says it cannot tell when it cannot.
            None => {
                app.raft.read_barrier().await.map_err(|error| ApiError::Unavailable {
                    code: "cannot_check_token",
                    message: format!(
                        "this server cannot tell whether the token is valid until it catches up with the leader ({error}); ask another server"
                    ),
                })?;
                find().ok_or_else(unknown)?
            }
        };
        return Role::from_token(role).map(Caller::User).ok_or_else(unknown);
    }
    Ok(match &peer.certificate {
        Some(certificate) if certificate.vouches_for(SERVER_ROLE_NAME) => Caller::Server,
        Some(certificate) if certificate.vouches_for(NODE_ROLE_NAME) => Caller::Node(Arc::clone(certificate)),
        _ => Caller::Anonymous,
    })
}

/// Whether `caller` may call a route with `access`; `Err` says why not.
fn check(
    access: Access,
    caller: &Caller,
    node_in_path: Option<&str>,
    method: &Method,
    path: &str,
) -> Result<(), ApiError> {
    let refuse = |needs: &str| match caller {
        Caller::Anonymous => ApiError::Unauthorized(format!(
            "{method} {path} needs {needs}; send an API token (FLOTILLA_TOKEN)"
        )),
        Caller::User(role) => ApiError::Forbidden(format!(
            "{method} {path} needs {needs}; this token's role is {}",
            role_name(*role)
        )),
        Caller::Node(_) => ApiError::Forbidden(format!(
            "{method} {path} needs {needs}; an agent's certificate does not allow it"
        )),
        Caller::Unchecked | Caller::Server => ApiError::Forbidden(format!("{method} {path} needs {needs}")),
    };
    match (access, caller) {
        (Access::Public, _) | (_, Caller::Unchecked | Caller::Server) => Ok(()),
        (Access::Role(needed) | Access::AnyNodeOrRole(needed), Caller::User(role))
            if role.includes(needed) =>
        {
            Ok(())
        }
        (Access::AnyNodeOrRole(_), Caller::Node(_)) => Ok(()),
        (Access::OwnNode, Caller::Node(_)) => match node_in_path {
            Some(name) if !caller.speaks_for_node(name) => {
                Err(ApiError::Forbidden(format!("this agent's certificate is not for node `{name}`")))
            }
            _ => Ok(()),
        },
        (Access::Role(needed) | Access::AnyNodeOrRole(needed), _) => {
            Err(refuse(&format!("the {} role", role_name(needed))))
        }
        (Access::OwnNode, _) => Err(refuse("the node's own agent certificate")),
        (Access::Members, _) => Err(refuse("a server certificate of this cluster")),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Read => "read",
        Role::Deploy => "deploy",
        Role::Admin => "admin",
    }
}

/// Raft traffic must come from a member of the cluster, and from the
/// member it says it comes from.
fn check_sender(app: &AppState, peer: &Peer, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(sender) = headers.get(SENDER_HEADER).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let id = sender.split_once('=').and_then(|(id, _)| id.parse::<u64>().ok());
    let vouched = match (id, &peer.certificate) {
        (Some(id), Some(certificate)) => certificate.vouches_for(&Identity::Server(id).dns_name()),
        _ => false,
    };
    if !vouched {
        return Err(ApiError::Forbidden(format!("the certificate is not that of the sender `{sender}`")));
    }
    // A server that is joining holds no state yet, so no members: it takes
    // what servers of this CA send until the leader's snapshot arrives.
    let state = app.raft.state();
    let joining = state.members().next().is_none();
    match id {
        Some(id) if joining || state.member(id).is_some() => Ok(()),
        _ => Err(ApiError::Forbidden(format!("`{sender}` is not a member of this cluster"))),
    }
}

pub async fn authorize(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    matched: MatchedPath,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let pattern = matched.as_str();
    let Some(access) = access_of(&method, pattern) else {
        return ApiError::Internal(format!("{method} {pattern} has no access rule")).into_response();
    };
    let checked = match caller_of(&app, &peer, request.headers(), &method).await {
        Ok(caller) => {
            let node = path_param(pattern, request.uri().path(), "name");
            check(access, &caller, node.filter(|_| access == Access::OwnNode), &method, pattern)
                .map(|()| caller)
        }
        Err(error) => Err(error),
    };
    let caller = match checked {
        Ok(caller) => caller,
        // A browser asking for a dashboard page gets the token prompt, not JSON.
        Err(ApiError::Unauthorized(reason)) if pattern.starts_with("/ui/") => {
            return (StatusCode::UNAUTHORIZED, Html(super::ui::login(&reason))).into_response();
        }
        Err(error) => return error.into_response(),
    };
    if access == Access::Members
        && peer.secure
        && let Err(error) = check_sender(&app, &peer, request.headers())
    {
        return error.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_a_credential_for_reads_only() {
        let mut headers = HeaderMap::new();
        headers
            .insert(header::COOKIE, "theme=dark; flotilla_token=flt_abc ; other=1".parse().expect("header"));
        assert_eq!(bearer(&headers, &Method::GET), Some("flt_abc"));
        assert_eq!(bearer(&headers, &Method::PUT), None, "a browser sends cookies with any request");
        assert_eq!(bearer(&headers, &Method::POST), None);
        headers.insert(header::AUTHORIZATION, "Bearer flt_header".parse().expect("header"));
        assert_eq!(bearer(&headers, &Method::PUT), Some("flt_header"), "the header works for every method");
        assert_eq!(bearer(&headers, &Method::GET), Some("flt_header"), "and wins over the cookie");
    }

    #[test]
    fn path_parameters_are_read_by_their_place_in_the_pattern() {
        assert_eq!(
            path_param("/v1/nodes/{name}/heartbeat", "/v1/nodes/web-1/heartbeat", "name"),
            Some("web-1")
        );
        assert_eq!(path_param("/v1/nodes", "/v1/nodes", "name"), None);
    }

    /// Every `.route(...)` of the router, by its path and methods, read
    /// from the router's source: a route added without a rule here fails.
    fn routes_of_the_router() -> Vec<(String, String)> {
        let source = include_str!("mod.rs");
        let mut routes = Vec::new();
        for call in source.split(".route(").skip(1) {
            let (path, rest) = call.split_once(',').expect("a route has a path and a handler");
            let path = match path.trim() {
                "PEER_PATH" => PEER_PATH.to_owned(),
                "SNAPSHOT_PATH" => SNAPSHOT_PATH.to_owned(),
                "RELAY_PATH" => RELAY_PATH.to_owned(),
                literal => literal.trim_matches('"').to_owned(),
            };
            let handlers = rest.split("\n").next().unwrap_or_default();
            for method in ["get", "post", "put", "delete"] {
                let called =
                    handlers.starts_with(&format!(" {method}(")) || handlers.contains(&format!(".{method}("));
                if called {
                    routes.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        routes
    }

    #[test]
    fn every_route_of_the_router_has_exactly_the_rules_in_the_table() {
        let mut routed = routes_of_the_router();
        routed.sort();
        let mut ruled: Vec<(String, String)> =
            ROUTES.iter().map(|(m, p, _)| (m.as_str().to_owned(), (*p).to_owned())).collect();
        ruled.sort();
        assert!(routed.len() >= 30, "the router's routes were read: {routed:?}");
        assert_eq!(routed, ruled, "the router and the access table must list the same routes");
    }

    #[test]
    fn every_route_has_one_rule() {
        for (i, (method, path, _)) in ROUTES.iter().enumerate() {
            let same = ROUTES.iter().skip(i + 1).filter(|(m, p, _)| m == method && p == path).count();
            assert_eq!(same, 0, "{method} {path} is listed twice");
        }
    }
}
