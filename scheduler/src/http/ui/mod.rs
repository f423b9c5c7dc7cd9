//! The dashboard at `/ui/`: pages rendered on the server from its applied
//! state, a small script that keeps them current from
//! `/v1/events/stream`, and a stylesheet, both embedded in the binary. No
//! build step, no separate process: every server serves it.
//!
//! It sits behind the API's access rules: a browser brings its API token as
//! a session cookie (set by the token prompt, read for GET requests only,
//! so a cross-site form cannot act with it), and actions (drain, promote,
//! undo) are API calls the script makes with the token as a bearer.

mod cluster_page;
mod events_page;
mod markup;
mod nodes_page;
mod workload_page;
mod workloads_page;

use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use flotilla_api::{Member, ServerStatus};
use flotilla_security::Role;
use futures_util::future::join_all;

use self::cluster_page::MemberReport;
use self::markup::{Frame, Tab, layout};
use super::{AppState, Caller};

pub use markup::login;

/// The script and the stylesheet, compiled in.
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// How long the cluster page waits for another server to describe itself.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

fn may(caller: &Caller, needed: Role) -> bool {
    match caller {
        Caller::Unchecked | Caller::Server => true,
        Caller::User(role) => role.includes(needed),
        Caller::Node(_) | Caller::Anonymous => false,
    }
}

fn frame(app: &AppState, title: &str, tab: Tab) -> Frame {
    let role = if app.raft.is_leader() { "leader" } else { "follower" };
    Frame {
        title: title.to_owned(),
        tab,
        index: *app.raft.applied_watch().borrow(),
        server: format!("server {} · {role}", app.raft.id()),
    }
}

fn page(frame: &Frame, body: &str) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(layout(frame, body))).into_response()
}

pub async fn root() -> Redirect {
    Redirect::permanent("/ui/")
}

pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// What `member` says of itself: this server's own status is `here`,
/// others are asked over HTTP.
async fn report(app: &AppState, here: &ServerStatus, member: Member) -> MemberReport {
    let status: Result<ServerStatus, String> = if member.id == here.id {
        Ok(here.clone())
    } else {
        let url = app.http.url(&member.address, "/v1/cluster/status");
        async {
            let response = app.http.client.get(&url).timeout(MEMBER_STATUS_TIMEOUT).send().await?;
            response.error_for_status()?.json::<ServerStatus>().await
        }
        .await
        .map_err(|e| e.to_string())
    };
    MemberReport { member, status }
}

pub async fn cluster(State(app): State<AppState>) -> Response {
    let here = match app.raft.status().await {
        Ok(status) => status,
        Err(error) => return (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    };
    let members: Vec<Member> = app.raft.state().members().cloned().collect();
    let reports = join_all(members.into_iter().map(|m| report(&app, &here, m))).await;
    let frame = frame(&app, "Cluster", Tab::Cluster);
    let body = cluster_page::render(&reports, &here, &app.raft.state());
    page(&frame, &body)
}

pub async fn nodes(State(app): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    let usage = app.liveness.usage(Duration::from_secs(3));
    let frame = frame(&app, "Nodes", Tab::Nodes);
    let body = nodes_page::render(&app.raft.state(), &usage, may(&caller, Role::Admin));
    page(&frame, &body)
}

pub async fn workloads(State(app): State<AppState>) -> Response {
    let frame = frame(&app, "Workloads", Tab::Workloads);
    let body = workloads_page::render(&app.raft.state());
    page(&frame, &body)
}

pub async fn workload(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    let frame = frame(&app, &name, Tab::Workloads);
    let body = {
        let state = app.raft.state();
        match state.workload(&name) {
            Some(workload) => {
                workload_page::render(&state, workload, flotilla_api::now_ms(), may(&caller, Role::Deploy))
            }
            None => {
                let body = format!(
                    "<h1>Not found</h1><p>workload `{}` does not exist (here, at index {}).</p>",
                    markup::escape(&name),
                    frame.index
                );
                return (StatusCode::NOT_FOUND, page(&frame, &body)).into_response();
            }
        }
    };
    page(&frame, &body)
}

pub async fn events(State(app): State<AppState>) -> Response {
    let frame = frame(&app, "Events", Tab::Events);
    let body = events_page::render(&app.raft.state(), flotilla_api::now_ms());
    page(&frame, &body)
}
