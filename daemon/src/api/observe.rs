//! Observability over HTTP: `GET /metrics` (Prometheus text format, from [`crate::telemetry`]),
//! and the layer every request passes: it counts the request by route and status, measures it to
//! the last byte of its body, and writes one log line at info when the body ends (route, status,
//! model, prompt and generated tokens, time to first token, duration, and the client: its uid on
//! the Unix socket, its address on TCP). Never the prompt or the answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt as _;

use super::error::ApiError;
use super::http::AppState;
use crate::engine::EngineState;
use crate::telemetry::{self, RequestStats, StatsSlot};

/// The client of a Unix-socket connection: its uid from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy)]
pub struct UnixPeer {
    /// The peer's uid, when the kernel said.
    pub uid: Option<u32>,
}

impl Connected<axum::serve::IncomingStream<'_, tokio::net::UnixListener>> for UnixPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        UnixPeer {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// `GET /metrics`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> Response {
    refresh_gauges(&state);
    match telemetry::render() {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_off",
            "metrics are not recorded in this process",
        )
        .respond(super::error::Shape::Native),
    }
}

/// The resident model's labels last published, so a swap sets the old series to 0.
static RESIDENT: Mutex<Option<[String; 3]>> = Mutex::new(None);

/// Gauges read from the engine at scrape time: queue depth, active requests, state, resident
/// model.
fn refresh_gauges(state: &AppState) {
    let engine = &state.engine;
    metrics::gauge!(telemetry::QUEUE_DEPTH).set(engine.queued() as f64);
    metrics::gauge!(telemetry::ACTIVE).set(engine.active_requests() as f64);
    let snap = engine.snapshot();
    for (s, name) in [
        (EngineState::Starting, "starting"),
        (EngineState::Loading, "loading"),
        (EngineState::Ready, "ready"),
        (EngineState::Swapping, "swapping"),
        (EngineState::NoModel, "no_model"),
    ] {
        let on = if snap.state == s { 1.0 } else { 0.0 };
        metrics::gauge!(telemetry::MODEL_STATE, "state" => name).set(on);
    }
    let now = snap.model.as_ref().map(|(info, backend)| {
        [
            info.name.clone().unwrap_or_else(|| info.path.clone()),
            backend.clone(),
            info.file_type.clone().unwrap_or_default(),
        ]
    });
    let mut last = RESIDENT.lock().unwrap_or_else(|e| e.into_inner());
    if *last != now {
        if let Some([m, b, q]) = last.take() {
            metrics::gauge!(telemetry::MODEL_RESIDENT, "model" => m, "backend" => b, "quantization" => q)
                .set(0.0);
        }
    }
    if let Some([m, b, q]) = &now {
        metrics::gauge!(telemetry::MODEL_RESIDENT, "model" => m.clone(), "backend" => b.clone(), "quantization" => q.clone())
            .set(1.0);
    }
    *last = now;
}

/// Counts, measures and logs each request (see the module doc).
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let client = if let Some(ConnectInfo(peer)) =
        request.extensions().get::<ConnectInfo<UnixPeer>>()
    {
        peer.uid
            .map_or_else(|| "uid=?".to_owned(), |uid| format!("uid={uid}"))
    } else if let Some(ConnectInfo(addr)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        format!("addr={addr}")
    } else {
        "-".to_owned()
    };
    let slot: StatsSlot = Arc::default();
    let response = telemetry::with_request(slot.clone(), next.run(request)).await;
    let done = Done {
        route,
        method,
        status: response.status().as_u16(),
        client,
        slot,
        started,
    };
    let (parts, body) = response.into_parts();
    // The line is written when the body ends (or the client goes away): a streamed answer's
    // tokens and duration are known only then.
    let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _ = &done;
        chunk
    }));
    Response::from_parts(parts, body)
}

/// A request whose body is being sent; dropped when it ends.
struct Done {
    route: String,
    method: String,
    status: u16,
    client: String,
    slot: StatsSlot,
    started: Instant,
}

impl Drop for Done {
    fn drop(&mut self) {
        let duration = self.started.elapsed();
        let status = self.status.to_string();
        metrics::counter!(telemetry::HTTP_REQUESTS, "route" => self.route.clone(), "status" => status)
            .increment(1);
        metrics::histogram!(telemetry::HTTP_DURATION, "route" => self.route.clone())
            .record(duration.as_secs_f64());
        let stats: RequestStats = self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let opt = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        tracing::info!(
            target: "r1d::request",
            route = %self.route,
            method = %self.method,
            status = self.status,
            model = stats.model.as_deref().unwrap_or("-"),
            prompt_tokens = %opt(stats.prompt_tokens),
            generated_tokens = %opt(stats.generated_tokens),
            ttft_ms = %stats.ttft.map_or_else(|| "-".to_owned(), |t| format!("{:.1}", t.as_secs_f64() * 1e3)),
            duration_ms = format_args!("{:.1}", duration.as_secs_f64() * 1e3),
            client = %self.client,
            "request"
        );
    }
}
