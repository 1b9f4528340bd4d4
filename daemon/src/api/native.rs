//! The native routes: `GET /health`, `GET /r1/status`, `GET /r1/backends`, `GET /r1/hardware`,
//! `GET /r1/plan`, `GET /r1/models`, `POST /r1/load`, `POST /r1/unload`, `POST /r1/use`,
//! `POST /r1/pull`, `POST /r1/remove`, `POST /r1/reload`, `GET /r1/events`.
//!
//! Each handler is a thin adapter over [`crate::control::Control`]: it parses the body with
//! [`super::error::parse`], calls one method, and answers with [`super::to_wire`]'s shape, or the
//! error as `{"error": "…", "code": "…"}` ([`Shape::Native`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use r1d_client::wire;

use super::error::{self, ApiError, Body, Shape};
use super::http::AppState;
use super::to_wire;
use crate::control::LoadOptions;
use crate::engine::EngineState;

/// The caller of a managing route: the Unix socket's peer credentials, which `server` attaches to
/// every request of a connection (absent over a transport without them). The control core decides
/// from it, with the same rule as D-Bus (`crate::access`).
type Peer = Option<axum::Extension<crate::access::Caller>>;

fn who(caller: &Peer) -> Option<&crate::access::Caller> {
    caller.as_ref().map(|c| &c.0)
}

/// The native routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/r1/status", get(status))
        .route("/r1/backends", get(backends))
        .route("/r1/hardware", get(hardware))
        .route("/r1/plan", get(plan))
        .route("/r1/load", post(load))
        .route("/r1/unload", post(unload))
        .route("/r1/models", get(models))
        .route("/r1/pull", post(pull))
        .route("/r1/use", post(use_model))
        .route("/r1/remove", post(remove))
        .route("/r1/reload", post(reload))
        .route("/r1/events", get(events))
}

/// An error in the native shape.
fn fail(e: impl Into<ApiError>) -> Response {
    e.into().respond(Shape::Native)
}

/// `/health`: 200 while a model is served (also `degraded`), 503 otherwise.
async fn health(State(state): State<AppState>) -> Response {
    let snap = state.engine.snapshot();
    let code = if snap.state == EngineState::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = wire::Health {
        status: to_wire::state(snap.state, state.control.degraded().as_deref()),
        error: snap.error.clone(),
        progress: snap.progress,
        last_crash: snap.last_crash.clone(),
    };
    (code, Json(body)).into_response()
}

/// `/r1/status`'s body, also the answer to a load, unload or use.
fn status_now(state: &AppState) -> Json<wire::Status> {
    let watch = state
        .control
        .running_supervisor()
        .map(|s| super::supervisor_wire::watch_status(&s.view()));
    Json(to_wire::status(&state.control.status(), watch))
}

async fn status(State(state): State<AppState>) -> Json<wire::Status> {
    status_now(&state)
}

/// `GET /r1/backends`: every plugin file with availability, formats, devices and why it is
/// unavailable.
async fn backends(State(state): State<AppState>) -> Json<wire::BackendList> {
    Json(to_wire::backends(
        state.control.plugin_dir(),
        state.control.backends(),
    ))
}

/// `GET /r1/hardware`: this machine's hardware profile, probed now.
async fn hardware(State(state): State<AppState>) -> Response {
    match state.control.hardware().await {
        Ok(hw) => Json(to_wire::hardware_to_wire(&hw)).into_response(),
        Err(e) => fail(e),
    }
}

/// `GET /r1/plan`: the plan for this machine as it is now.
async fn plan(State(state): State<AppState>) -> Response {
    match state.control.plan_with_remotes().await {
        Ok((plan, remotes)) => {
            let mut wire = to_wire::plan_to_wire(&plan);
            if let Some(r) = remotes {
                to_wire::plan_remotes(&mut wire, &r.views, r.verdict, &r.policy);
            }
            Json(wire).into_response()
        }
        Err(e) => fail(e),
    }
}

/// `POST /r1/load` ([`wire::LoadRequest`]): replaces the resident model (the old one is unloaded
/// first) and answers when the new one is resident (200 with `/r1/status`'s body) or failed to
/// load (422 naming why; the previous model serves again). Options are checked as D-Bus `Load`
/// checks them (400). The file stays pinned through re-plans until `r1ctl use auto` or a config
/// edit of the model.
async fn load(State(state): State<AppState>, caller: Peer, body: Body) -> Response {
    let req: wire::LoadRequest = match error::parse(&body) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let options = LoadOptions {
        path: req.path,
        backend: req.backend,
        context_length: req.context_length,
        gpu_layers: req.gpu_layers,
        threads: req.threads,
        kv_cache_type: req.kv_cache_type,
    };
    match state.control.load(who(&caller), options).await {
        Ok(_) => status_now(&state).into_response(),
        Err(e) => fail(e),
    }
}

/// `POST /r1/unload`: unloads the resident model; answers with `/r1/status`'s body.
async fn unload(State(state): State<AppState>, caller: Peer) -> Response {
    match state.control.unload(who(&caller)).await {
        Ok(()) => status_now(&state).into_response(),
        Err(e) => fail(e),
    }
}

/// `GET /r1/models`: the models on disk (r1d's own, the Hugging Face cache's, Ollama's).
async fn models(State(state): State<AppState>) -> Response {
    match state.control.models().await {
        Ok(m) => Json(to_wire::models(&m)).into_response(),
        Err(e) => fail(e),
    }
}

/// `POST /r1/use` ([`wire::ModelRequest`]): `auto` (the planner's choice among present models,
/// and no pin), a catalog variant (pinned: its best present quantization, kept through re-plans),
/// or any listed model by name; loads it and answers with `/r1/status`'s body. A model that fails
/// to load leaves the previous one serving (422 naming both); an unknown one is 404.
async fn use_model(State(state): State<AppState>, caller: Peer, body: Body) -> Response {
    let req: wire::ModelRequest = match error::parse(&body) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    match state.control.use_model(who(&caller), &req.model).await {
        Ok(_) => status_now(&state).into_response(),
        Err(e) => fail(e),
    }
}

/// `POST /r1/remove` ([`wire::ModelRequest`]): removes a model from r1d's models directory and
/// answers with what went ([`wire::Removed`]). The model that is resident, loading or queued is
/// 409 `model_in_use` (serve another one first, or unload it); one in the Hugging Face cache or
/// Ollama's store is 403 `read_only_store` (r1d only reads those); an unknown name is 404.
async fn remove(State(state): State<AppState>, caller: Peer, body: Body) -> Response {
    let req: wire::ModelRequest = match error::parse(&body) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    match state.control.remove(who(&caller), &req.model).await {
        Ok(r) => Json(to_wire::removed(&r)).into_response(),
        Err(e) => fail(e),
    }
}

/// `POST /r1/reload`: re-reads the config as SIGHUP does and answers with what changed, the
/// rejection (200 too: r1d keeps running on the old config; `error` says why), and what happened
/// to the model.
async fn reload(State(state): State<AppState>, caller: Peer) -> Response {
    match state.control.reload(who(&caller), "POST /r1/reload").await {
        Ok(outcome) => Json(to_wire::reload_outcome(outcome)).into_response(),
        Err(e) => fail(e),
    }
}

/// `POST /r1/pull` ([`wire::ModelRequest`]): resolves the name (a catalog variant gets the best
/// quantization for this machine), starts or joins the download, and streams its progress
/// ([`wire::PullEvent`]s): NDJSON lines by default, SSE `data:` events when the client accepts
/// `text/event-stream`. The pull goes on when the client goes away.
async fn pull(
    State(state): State<AppState>,
    caller: Peer,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let req: wire::ModelRequest = match error::parse(&body) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let crate::control::Pull {
        label,
        progress: rx,
    } = match state.control.pull(who(&caller), &req.model).await {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let sse = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let events =
        futures_util::stream::unfold((rx, false, true), move |(mut rx, finished, first)| {
            let label = label.clone();
            async move {
                if finished {
                    return None;
                }
                if !first && rx.changed().await.is_err() {
                    // The pull task ended; its last state is still readable.
                    let last = rx.borrow().clone();
                    return Some((to_wire::pull_event(&label, &last), (rx, true, false)));
                }
                let now = rx.borrow_and_update().clone();
                let done = now.is_final();
                Some((to_wire::pull_event(&label, &now), (rx, done, false)))
            }
        });
    let lines = futures_util::StreamExt::map(events, move |ev| {
        let json = serde_json::to_string(&ev).unwrap_or_default();
        Ok::<_, std::convert::Infallible>(if sse {
            format!("data: {json}\n\n")
        } else {
            format!("{json}\n")
        })
    });
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// `GET /r1/events`: server-sent events, one per change (`event:` the kind, `data:` a
/// [`wire::Event`]), starting with the current state; a comment every 15 s keeps idle
/// connections open. A reader too slow for 256 events gets a `lagged` event saying how many it
/// missed.
async fn events(State(state): State<AppState>) -> Response {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use futures_util::StreamExt as _;
    let supervisor = match state.control.supervisor("following events") {
        Ok(s) => s.clone(),
        Err(e) => return fail(e),
    };
    let rx = supervisor.subscribe();
    let snap = state.engine.snapshot();
    let first = wire::Event {
        kind: "state".into(),
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        message: crate::systemd::status_line(&snap, None),
        state: Some(super::supervisor_wire::state(
            supervisor.reported_state(&snap),
        )),
        model: snap
            .model
            .as_ref()
            .map(|(i, _)| crate::engine::model_name(i)),
        changes: Vec::new(),
        error: snap.error.clone(),
    };
    let to_sse = |e: &wire::Event| {
        SseEvent::default()
            .event(e.kind.clone())
            .json_data(e)
            .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"))
    };
    let head = futures_util::stream::once({
        let e = to_sse(&first);
        async move { Ok::<_, std::convert::Infallible>(e) }
    });
    let rest = tokio_stream::wrappers::BroadcastStream::new(rx).map(move |item| {
        Ok(match item {
            Ok(e) => to_sse(&super::supervisor_wire::event(&e)),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                SseEvent::default()
                    .event("lagged")
                    .data(format!("{n} events were dropped: this reader was too slow"))
            }
        })
    });
    // At shutdown the stream ends with a last event, so a watcher learns why and r1d's graceful
    // shutdown does not wait for it.
    let stopping = supervisor.stopping();
    let last = futures_util::stream::once(async {
        Ok(SseEvent::default()
            .event("state")
            .json_data(wire::Event {
                kind: "state".into(),
                time: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
                message: "r1d is stopping".into(),
                state: None,
                model: None,
                changes: Vec::new(),
                error: None,
            })
            .unwrap_or_else(|_| SseEvent::default().comment("stopping")))
    });
    let rest = rest.take_until(stopping.cancelled_owned()).chain(last);
    Sse::new(head.chain(rest))
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}
