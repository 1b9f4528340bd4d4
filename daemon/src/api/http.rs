//! HTTP on a Unix socket (axum): the router and the state its handlers share. The routes are in
//! [`super::openai`] (`/v1/*`), [`super::ollama`] (`/api/*`) and [`super::native`] (`/r1/*`,
//! `/health`).
//!
//! **Architecture invariant**: the `api` modules are the only ones that know HTTP and the JSON wire
//! shapes (`r1d_client::wire`). Errors are mapped once, in [`super::error`]; each route family
//! only chooses its body shape: the OpenAI error object under `/v1`, `{"error": "..."}` under
//! `/api`, `{"error": "...", "code": "..."}` elsewhere (unknown routes too).

use axum::http::{Method, Uri};
use axum::response::Response;
use axum::Router;

use super::error::{ApiError, Shape};
use crate::control::Control;
use crate::engine::Engine;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The engine (the answering routes queue requests on it).
    pub engine: Engine,
    /// The control plane (status, models, load/use/unload, reload, pull, hardware, plan).
    pub control: Control,
}

impl AppState {
    /// The state of every route, over `control` and its engine.
    pub fn new(control: Control) -> AppState {
        AppState {
            engine: control.engine().clone(),
            control,
        }
    }
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(super::openai::routes())
        .merge(super::responses::routes())
        .merge(super::ollama::routes())
        .merge(super::native::routes())
        .merge(super::observe::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(super::observe::observe))
        .with_state(state)
}

/// The error shape of the route family `uri` belongs to.
pub(crate) fn shape_of(uri: &Uri) -> Shape {
    let path = uri.path();
    if path.starts_with("/v1/") {
        Shape::OpenAi
    } else if path.starts_with("/api/") {
        Shape::Ollama
    } else {
        Shape::Native
    }
}

/// Unknown routes: 404 in the route family's error shape.
async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::unknown_route(format!("no route for {method} {}", uri.path())).respond(shape_of(&uri))
}

/// A known route called with the wrong method: 405, in the route family's error shape.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::method_not_allowed(format!("{method} is not allowed on {}", uri.path()))
        .respond(shape_of(&uri))
}
