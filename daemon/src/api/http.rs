//! HTTP on a Unix socket (axum): OpenAI `/v1/*`, native `/r1/*`, `/health`.
//!
//! **Architecture invariant**: the only module that knows HTTP and the JSON wire shapes
//! (`r1d_client::wire`). Errors are mapped once: OpenAI routes answer with the OpenAI error object,
//! native routes with `{"error": "..."}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use r1_plugin_abi::json::{FinishReason, GenerateResult};
use r1d_client::wire::{
    self, AssistantMessage, BackendEntry, BackendList, ChatCompletion, ChatCompletionChunk,
    ChatCompletionRequest, Choice, ChunkChoice, Delta, Health, ModelEntry, ModelList, ModelStatus,
    OpenAiError, OpenAiErrorBody, Timings, Usage,
};
use tokio::sync::mpsc;

use crate::backend::PluginHost;
use crate::chat::{Channel, Message};
use crate::engine::{ChatEvent, Engine, EngineError, EngineState, Sampling, Snapshot};

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
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/r1/status", get(status))
        .route("/r1/backends", get(backends))
        .fallback(not_found)
        .with_state(state)
}

/// An OpenAI-shaped error response.
fn openai_error(status: StatusCode, kind: &str, message: String, code: Option<&str>) -> Response {
    let body = OpenAiErrorBody {
        error: OpenAiError {
            message,
            kind: kind.to_owned(),
            param: None,
            code: code.map(str::to_owned),
        },
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for EngineError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match &self {
            EngineError::NoModel { .. } => openai_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                message,
                Some("model_not_loaded"),
            ),
            EngineError::ContextExceeded { .. } => openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                message,
                Some("context_length_exceeded"),
            ),
            EngineError::InvalidRequest(_) => openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                message,
                None,
            ),
            EngineError::Busy(_) => {
                let mut r = openai_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    message,
                    Some("busy"),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                r
            }
            EngineError::ShuttingDown => openai_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                message,
                None,
            ),
            EngineError::Backend(_) => openai_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                message,
                Some("backend_error"),
            ),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn completion_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "chatcmpl-{:x}{:08x}",
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// llama-server's `timings` from a backend result.
fn timings(r: &GenerateResult) -> Timings {
    let prompt_n = r.prompt_tokens.saturating_sub(r.cached_prompt_tokens);
    let per = |ms: f64, n: u32| if n > 0 { ms / n as f64 } else { 0.0 };
    let rate = |ms: f64, n: u32| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    Timings {
        cache_n: r.cached_prompt_tokens,
        prompt_n,
        prompt_ms: r.prompt_ms,
        prompt_per_token_ms: per(r.prompt_ms, prompt_n),
        prompt_per_second: rate(r.prompt_ms, prompt_n),
        predicted_n: r.completion_tokens,
        predicted_ms: r.generation_ms,
        predicted_per_token_ms: per(r.generation_ms, r.completion_tokens),
        predicted_per_second: rate(r.generation_ms, r.completion_tokens),
        time_to_first_token_ms: r.time_to_first_token_ms,
    }
}

fn usage(r: &GenerateResult) -> Usage {
    Usage {
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        total_tokens: r.prompt_tokens + r.completion_tokens,
    }
}

fn finish_reason_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

/// Sampling from an OpenAI request; unset fields take llama.cpp's defaults
/// (`common/common.h`, `common_params_sampling`: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05).
fn sampling(req: &ChatCompletionRequest) -> Sampling {
    Sampling {
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature.unwrap_or(0.8).max(0.0),
        top_p: req.top_p.unwrap_or(0.95),
        top_k: req.top_k.unwrap_or(40),
        min_p: req.min_p.unwrap_or(0.05),
        // OpenAI seeds are 64-bit; llama.cpp's are 32-bit: keep the low bits.
        seed: req.seed.map(|s| s as u32),
        stop: req
            .stop
            .clone()
            .map(wire::Stop::into_vec)
            .unwrap_or_default(),
    }
}

async fn chat_completions(State(state): State<AppState>, body: Bytes) -> Response {
    // serde_path_to_error names the offending field ("messages: invalid type: …").
    let mut de = serde_json::Deserializer::from_slice(&body);
    let req: ChatCompletionRequest = match serde_path_to_error::deserialize(&mut de) {
        Ok(r) => r,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("invalid request body: {e}"),
                None,
            )
        }
    };
    if req.messages.is_empty() {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "messages must hold at least one message".into(),
            Some("messages"),
        );
    }
    let messages: Vec<Message> = req
        .messages
        .iter()
        .map(|m| Message {
            role: m.role.clone(),
            content: m.text(),
        })
        .collect();
    let mut rx = match state.engine.chat(messages, sampling(&req)) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    let model = match rx.recv().await {
        Some(ChatEvent::Started { model, .. }) => model,
        Some(ChatEvent::Failed(e)) => return e.into_response(),
        _ => {
            return EngineError::Backend("the engine ended the request without an answer".into())
                .into_response()
        }
    };
    let id = completion_id();
    let created = unix_now();
    if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        stream_answer(rx, id, created, model, include_usage).into_response()
    } else {
        collect_answer(rx, id, created, model).await
    }
}

async fn collect_answer(
    mut rx: mpsc::Receiver<ChatEvent>,
    id: String,
    created: u64,
    model: String,
) -> Response {
    let mut content = String::new();
    let mut reasoning = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            ChatEvent::Piece(p) => match p.channel {
                Channel::Content => content.push_str(&p.text),
                Channel::Reasoning => reasoning.push_str(&p.text),
            },
            ChatEvent::Done(done) => {
                let body = ChatCompletion {
                    id,
                    object: "chat.completion".into(),
                    created,
                    model,
                    choices: vec![Choice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant".into(),
                            content,
                            reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                        },
                        finish_reason: finish_reason_name(done.finish_reason).into(),
                    }],
                    usage: usage(&done.result),
                    timings: Some(timings(&done.result)),
                };
                return Json(body).into_response();
            }
            ChatEvent::Failed(e) => return e.into_response(),
            ChatEvent::Started { .. } => {}
        }
    }
    EngineError::Backend("the generation ended without a result".into()).into_response()
}

fn chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Delta,
    finish: Option<&str>,
) -> ChatCompletionChunk {
    ChatCompletionChunk {
        id: id.to_owned(),
        object: "chat.completion.chunk".into(),
        created,
        model: model.to_owned(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish.map(str::to_owned),
        }],
        usage: None,
        timings: None,
    }
}

fn sse_json<T: serde::Serialize>(value: &T) -> Event {
    Event::default().data(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

enum Phase {
    First,
    Streaming,
    Finished,
}

/// The SSE answer: a first chunk with the role, one chunk per piece, a finishing chunk with
/// `finish_reason`, `usage` and `timings`, a usage-only chunk when asked, then `data: [DONE]`.
/// A failure mid-stream sends an OpenAI error object as the last event (no `[DONE]`).
fn stream_answer(
    rx: mpsc::Receiver<ChatEvent>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let events = stream::unfold((rx, Phase::First), move |(mut rx, phase)| {
        let (id, model) = (id.clone(), model.clone());
        async move {
            match phase {
                Phase::First => {
                    let delta = Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                        reasoning_content: None,
                    };
                    let first = sse_json(&chunk(&id, created, &model, delta, None));
                    Some((vec![first], (rx, Phase::Streaming)))
                }
                Phase::Streaming => match rx.recv().await {
                    Some(ChatEvent::Piece(p)) => {
                        let delta = match p.channel {
                            Channel::Content => Delta {
                                content: Some(p.text),
                                ..Default::default()
                            },
                            Channel::Reasoning => Delta {
                                reasoning_content: Some(p.text),
                                ..Default::default()
                            },
                        };
                        Some((
                            vec![sse_json(&chunk(&id, created, &model, delta, None))],
                            (rx, Phase::Streaming),
                        ))
                    }
                    Some(ChatEvent::Started { .. }) => Some((vec![], (rx, Phase::Streaming))),
                    Some(ChatEvent::Done(done)) => {
                        let mut last = chunk(
                            &id,
                            created,
                            &model,
                            Delta::default(),
                            Some(finish_reason_name(done.finish_reason)),
                        );
                        last.usage = Some(usage(&done.result));
                        last.timings = Some(timings(&done.result));
                        let mut out = vec![sse_json(&last)];
                        if include_usage {
                            let mut u = chunk(&id, created, &model, Delta::default(), None);
                            u.choices.clear();
                            u.usage = Some(usage(&done.result));
                            out.push(sse_json(&u));
                        }
                        out.push(Event::default().data("[DONE]"));
                        Some((out, (rx, Phase::Finished)))
                    }
                    Some(ChatEvent::Failed(e)) => {
                        Some((vec![error_event(&e)], (rx, Phase::Finished)))
                    }
                    None => Some((
                        vec![error_event(&EngineError::Backend(
                            "the generation ended without a result".into(),
                        ))],
                        (rx, Phase::Finished),
                    )),
                },
                Phase::Finished => None,
            }
        }
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    Sse::new(events).keep_alive(KeepAlive::default())
}

fn error_event(e: &EngineError) -> Event {
    tracing::warn!("request failed mid-stream: {e}");
    sse_json(&OpenAiErrorBody {
        error: OpenAiError {
            message: e.to_string(),
            kind: "server_error".into(),
            param: None,
            code: None,
        },
    })
}

async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let snap = state.engine.snapshot();
    let data = snap
        .model
        .as_ref()
        .map(|(info, _)| ModelEntry {
            id: info.name.clone().unwrap_or_else(|| info.path.clone()),
            object: "model".into(),
            created: snap.loaded_at.unwrap_or(0),
            owned_by: "r1d".into(),
        })
        .into_iter()
        .collect();
    Json(ModelList {
        object: "list".into(),
        data,
    })
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
