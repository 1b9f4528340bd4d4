//! HTTP on a Unix socket (axum): the router, and the native routes `/r1/*` and `/health`.
//! The OpenAI routes are in [`super::openai`], the Ollama routes in [`super::ollama`].
//!
//! **Architecture invariant**: the `api` modules are the only ones that know HTTP and the JSON wire
//! shapes (`r1d_client::wire`). Errors are mapped once per route family: OpenAI routes answer with
//! the OpenAI error object, Ollama and native routes with `{"error": "..."}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use r1d_client::wire::{self, BackendEntry, BackendList, Health, ModelStatus};

use crate::backend::PluginHost;
use crate::engine::{Engine, EngineState, Snapshot};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// The plugin host (for `/r1/backends`).
    pub host: Arc<PluginHost>,
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(super::openai::routes())
        .merge(super::ollama::routes())
        .route("/health", get(health))
        .route("/r1/status", get(status))
        .route("/r1/backends", get(backends))
        .fallback(not_found)
        .with_state(state)
}

fn wire_state(s: EngineState) -> wire::State {
    match s {
        EngineState::Starting => wire::State::Starting,
        EngineState::Loading => wire::State::Loading,
        EngineState::Ready => wire::State::Ready,
        EngineState::NoModel => wire::State::NoModel,
    }
}

async fn health(State(state): State<AppState>) -> Response {
    let snap = state.engine.snapshot();
    let code = if snap.state == EngineState::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: wire_state(snap.state),
        error: snap.error.clone(),
        progress: snap.progress,
    };
    (code, Json(body)).into_response()
}

fn model_status(snap: &Snapshot) -> Option<ModelStatus> {
    snap.model.as_ref().map(|(info, backend)| ModelStatus {
        name: info.name.clone().unwrap_or_else(|| info.path.clone()),
        path: info.path.clone(),
        backend: backend.clone(),
        architecture: info.architecture.clone(),
        quantization: info.file_type.clone(),
        parameters: info.parameters,
        context_length: info.context_length,
        layers: info.layers,
        gpu_layers: info.gpu_layers,
        weights_bytes: info.memory.weights_bytes,
        kv_cache_bytes: info.memory.kv_cache_bytes,
    })
}

async fn status(State(state): State<AppState>) -> Json<wire::Status> {
    let snap = state.engine.snapshot();
    Json(wire::Status {
        version: env!("CARGO_PKG_VERSION").into(),
        state: wire_state(snap.state),
        model: model_status(&snap),
        loading: snap.loading.as_ref().map(|p| p.display().to_string()),
        progress: snap.progress,
        error: snap.error.clone(),
        uptime_s: state.engine.uptime_s(),
        requests_served: state.engine.requests_served(),
        active_requests: state.engine.active_requests(),
    })
}

async fn backends(State(state): State<AppState>) -> Json<BackendList> {
    let backends = state
        .host
        .records()
        .iter()
        .map(|r| BackendEntry {
            path: r.path.display().to_string(),
            name: r.name.clone(),
            version: r.version.clone(),
            available: r.error.is_none(),
            formats: r
                .probe
                .as_ref()
                .map(|p| p.formats.clone())
                .unwrap_or_default(),
            score: r.probe.as_ref().map(|p| p.score).unwrap_or(0),
            devices: r
                .probe
                .as_ref()
                .map(|p| p.devices.iter().map(|d| d.name.clone()).collect())
                .unwrap_or_default(),
            error: r.error.clone(),
        })
        .collect();
    Json(BackendList {
        plugin_dir: state.host.dir().display().to_string(),
        backends,
    })
}

async fn not_found(method: Method, uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": format!("no route for {method} {uri}") })),
    )
        .into_response()
}
