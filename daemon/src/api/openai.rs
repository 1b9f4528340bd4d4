//! OpenAI-compatible routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`.
//!
//! Shapes follow OpenAI's API reference; `reasoning_content` is DeepSeek's field for R1's
//! reasoning, `timings` is llama-server's. Every error is the OpenAI error object
//! `{"error": {"message", "type", "param", "code"}}`.

// Request checks return the finished error `Response` to send; it is built once per refused
// request, so the size of the `Err` variant costs nothing worth boxing.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use crate::engine::{FinishReason, GenerateResult};
use r1d_client::wire::{
    self, AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
    ChunkChoice, Completion, CompletionChoice, CompletionPrompt, CompletionRequest, Delta,
    ModelEntry, ModelList, OpenAiError, OpenAiErrorBody, Timings, Usage,
};
use serde_json::Value;

use super::answer::{self, Encoder, Out};
use super::http::AppState;
use crate::chat::{Channel, Message, Piece, ReasoningFormat};
use crate::engine::{EngineError, Finished, PromptInput, Sampling};

/// The OpenAI routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
}

/// The answer to an unknown `/v1/…` route or method, in OpenAI's shape.
pub(super) fn not_found(what: String) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        what,
        None,
        Some("unknown_url"),
    )
}

/// The answer to a known `/v1/…` route called with the wrong method, in OpenAI's shape.
pub(super) fn method_not_allowed(what: String) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        what,
        None,
        Some("method_not_allowed"),
    )
}

/// An OpenAI-shaped error response.
fn error(
    status: StatusCode,
    kind: &str,
    message: String,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = OpenAiErrorBody {
        error: OpenAiError {
            message,
            kind: kind.to_owned(),
            param: param.map(str::to_owned),
            code: code.map(str::to_owned),
        },
    };
    (status, Json(body)).into_response()
}

fn invalid(param: Option<&str>, message: String) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        param,
        None,
    )
}

/// The one mapping from engine errors to OpenAI responses.
fn engine_error(e: EngineError) -> Response {
    let message = e.to_string();
    match &e {
        EngineError::NoModel { .. } => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            message,
            None,
            Some("model_not_loaded"),
        ),
        EngineError::ContextExceeded { .. } => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message,
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        EngineError::InvalidRequest(_) => invalid(None, message),
        EngineError::Busy(_) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                message,
                None,
                Some("busy"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        EngineError::ShuttingDown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            message,
            None,
            None,
        ),
        EngineError::Preempted { .. } => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            message,
            None,
            Some("model_swapped"),
        ),
        EngineError::Unavailable { retry_after_s, .. } => {
            let retry = retry_after_s.to_string();
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                message,
                None,
                Some("model_loading"),
            );
            if let Ok(v) = header::HeaderValue::from_str(&retry) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        EngineError::LoadFailed { .. } => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            message,
            Some("model"),
            Some("model_load_failed"),
        ),
        EngineError::Backend(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            message,
            None,
            Some("backend_error"),
        ),
    }
}

fn error_value(e: &EngineError) -> Value {
    serde_json::to_value(OpenAiErrorBody {
        error: OpenAiError {
            message: e.to_string(),
            kind: "server_error".into(),
            param: None,
            code: None,
        },
    })
    .unwrap_or(Value::Null)
}

/// A request body as axum read it: too large or unreadable bodies become OpenAI errors too.
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// Parses a JSON body, naming the offending field in the error (serde_path_to_error).
fn parse<T: serde::de::DeserializeOwned>(body: &Body) -> Result<T, Response> {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            return Err(error(
                rejection.status(),
                "invalid_request_error",
                rejection.body_text(),
                None,
                None,
            ))
        }
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        invalid(param.as_deref(), format!("invalid request body: {e}"))
    })
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}{:08x}",
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

/// Token counts; reasoning tokens are completion tokens.
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

/// Request fields common to both routes, checked.
struct Common {
    sampling: Sampling,
    include_usage: bool,
}

#[allow(clippy::too_many_arguments)]
fn common(
    state: &AppState,
    model: Option<&str>,
    n: Option<u32>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    min_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<wire::Stop>,
    stream_options: Option<&wire::StreamOptions>,
) -> Result<Common, Response> {
    if let Err(message) = answer::check_model(&state.engine.snapshot(), model) {
        return Err(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            message,
            Some("model"),
            Some("model_not_found"),
        ));
    }
    if n.is_some_and(|n| n != 1) {
        return Err(invalid(Some("n"), "only n = 1 is supported".into()));
    }
    let sampling = Sampling {
        max_tokens,
        temperature,
        top_p,
        top_k,
        min_p,
        // OpenAI seeds are 64-bit; llama.cpp's are 32-bit: keep the low bits.
        seed: seed.map(|s| s as u32),
        stop: stop.map(wire::Stop::into_vec).unwrap_or_default(),
    };
    answer::validate_sampling(&sampling)
        .map_err(|(param, message)| invalid(Some(param), message))?;
    Ok(Common {
        sampling,
        include_usage: stream_options.is_some_and(|o| o.include_usage),
    })
}

fn sse(stream: impl futures_util::Stream<Item = Out> + Send + 'static) -> Response {
    let events = stream.map(|out| {
        Ok::<_, Infallible>(match out {
            Out::Json(v) => Event::default().data(v.to_string()),
            Out::End => Event::default().data("[DONE]"),
        })
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn chat_completions(State(state): State<AppState>, body: Body) -> Response {
    let req: ChatCompletionRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let common = match common(
        &state,
        req.model.as_deref(),
        req.n,
        req.max_completion_tokens.or(req.max_tokens),
        req.temperature,
        req.top_p,
        req.top_k,
        req.min_p,
        req.seed,
        req.stop.clone(),
        req.stream_options.as_ref(),
    ) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if req.messages.is_empty() {
        return invalid(
            Some("messages"),
            "messages must hold at least one message".into(),
        );
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        if !answer::ROLES.contains(&m.role.as_str()) {
            return invalid(
                Some(&format!("messages[{i}].role")),
                format!(
                    "messages[{i}].role {:?} is not one of {}",
                    m.role,
                    answer::ROLES.join(", ")
                ),
            );
        }
        // OpenAI's "developer" is the system prompt of older models.
        let role = if m.role == "developer" {
            "system"
        } else {
            m.role.as_str()
        };
        messages.push(Message {
            role: role.to_owned(),
            content: m.text(),
        });
    }
    let format = match req.reasoning_format.as_deref() {
        None | Some("deepseek") | Some("auto") => ReasoningFormat::DeepSeek,
        Some("none") => ReasoningFormat::None,
        Some(other) => {
            return invalid(
                Some("reasoning_format"),
                format!("reasoning_format {other:?} is not one of deepseek, auto, none"),
            )
        }
    };
    let admitted = match answer::admit(
        &state.engine,
        PromptInput::Chat(messages),
        common.sampling,
        format,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return engine_error(e),
    };
    let id = new_id("chatcmpl");
    let created = unix_now();
    if req.stream {
        let encoder = ChatEncoder {
            id,
            created,
            model: admitted.model,
            include_usage: common.include_usage,
        };
        return sse(answer::encode(admitted.rx, encoder));
    }
    match answer::collect(admitted.rx).await {
        Ok(c) => Json(ChatCompletion {
            id,
            object: "chat.completion".into(),
            created,
            model: admitted.model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: c.content,
                    reasoning_content: (!c.reasoning.is_empty()).then_some(c.reasoning),
                },
                finish_reason: finish_reason_name(c.finished.finish_reason).into(),
            }],
            usage: usage(&c.finished.result),
            timings: Some(timings(&c.finished.result)),
        })
        .into_response(),
        Err(e) => engine_error(e),
    }
}

/// Chat chunks: a first chunk with the role, one chunk per piece (content or reasoning, never
/// both), a finishing chunk with `finish_reason`, `usage` and `timings`, and with
/// `stream_options.include_usage` one more chunk with `choices: []` and `usage`.
struct ChatEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChatEncoder {
    fn chunk(&self, delta: Delta, finish: Option<&str>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish.map(str::to_owned),
            }],
            usage: None,
            timings: None,
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Encoder for ChatEncoder {
    fn start(&mut self) -> Vec<Value> {
        let delta = Delta {
            role: Some("assistant".into()),
            content: Some(String::new()),
            reasoning_content: None,
        };
        vec![json(&self.chunk(delta, None))]
    }

    fn piece(&mut self, piece: Piece) -> Vec<Value> {
        let delta = match piece.channel {
            Channel::Content => Delta {
                content: Some(piece.text),
                ..Default::default()
            },
            Channel::Reasoning => Delta {
                reasoning_content: Some(piece.text),
                ..Default::default()
            },
        };
        vec![json(&self.chunk(delta, None))]
    }

    fn done(&mut self, finished: &Finished) -> Vec<Value> {
        finishing(
            self.chunk(
                Delta::default(),
                Some(finish_reason_name(finished.finish_reason)),
            ),
            self.include_usage
                .then(|| self.chunk(Delta::default(), None)),
            finished,
        )
    }

    fn error(&mut self, error: &EngineError) -> Value {
        error_value(error)
    }
}

async fn completions(State(state): State<AppState>, body: Body) -> Response {
    let req: CompletionRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let prompt = match req.prompt.clone() {
        CompletionPrompt::One(p) => p,
        CompletionPrompt::Many(mut v) if v.len() == 1 => v.remove(0),
        CompletionPrompt::Many(_) => {
            return invalid(
                Some("prompt"),
                "only one prompt per request is supported".into(),
            )
        }
    };
    let common = match common(
        &state,
        req.model.as_deref(),
        req.n,
        // OpenAI's default for this route.
        Some(req.max_tokens.unwrap_or(16)),
        req.temperature,
        req.top_p,
        req.top_k,
        req.min_p,
        req.seed,
        req.stop.clone(),
        req.stream_options.as_ref(),
    ) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let admitted = match answer::admit(
        &state.engine,
        PromptInput::Raw(prompt),
        common.sampling,
        ReasoningFormat::None,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return engine_error(e),
    };
    let encoder = CompletionEncoder {
        id: new_id("cmpl"),
        created: unix_now(),
        model: admitted.model,
        include_usage: common.include_usage,
    };
    if req.stream {
        return sse(answer::encode(admitted.rx, encoder));
    }
    match answer::collect(admitted.rx).await {
        Ok(c) => {
            let mut body = encoder.message(
                c.content,
                Some(finish_reason_name(c.finished.finish_reason)),
            );
            body.usage = Some(usage(&c.finished.result));
            body.timings = Some(timings(&c.finished.result));
            Json(body).into_response()
        }
        Err(e) => engine_error(e),
    }
}

/// Text-completion messages: one per piece, then a finishing one with `usage` and `timings`.
struct CompletionEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl CompletionEncoder {
    fn message(&self, text: String, finish: Option<&str>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![CompletionChoice {
                text,
                index: 0,
                logprobs: None,
                finish_reason: finish.map(str::to_owned),
            }],
            usage: None,
            timings: None,
        }
    }
}

/// A streamed chunk of either OpenAI route, for [`finishing`].
trait StreamChunk: serde::Serialize {
    /// Sets `usage` and llama-server's `timings`.
    fn finish(&mut self, usage: Usage, timings: Timings);
    /// Makes it OpenAI's usage-only chunk: no choices, only `usage`.
    fn usage_only(&mut self, usage: Usage);
}

impl StreamChunk for ChatCompletionChunk {
    fn finish(&mut self, usage: Usage, timings: Timings) {
        self.usage = Some(usage);
        self.timings = Some(timings);
    }
    fn usage_only(&mut self, usage: Usage) {
        self.choices.clear();
        self.usage = Some(usage);
    }
}

impl StreamChunk for Completion {
    fn finish(&mut self, usage: Usage, timings: Timings) {
        self.usage = Some(usage);
        self.timings = Some(timings);
    }
    fn usage_only(&mut self, usage: Usage) {
        self.choices.clear();
        self.usage = Some(usage);
    }
}

/// The last messages of a stream: `last` (the finish reason) with usage and timings, then, when
/// the client asked for it (`stream_options.include_usage`), `usage_only` as a chunk with no
/// choices and only the usage.
fn finishing<C: StreamChunk>(
    mut last: C,
    usage_only: Option<C>,
    finished: &Finished,
) -> Vec<Value> {
    last.finish(usage(&finished.result), timings(&finished.result));
    let mut out = vec![json(&last)];
    if let Some(mut u) = usage_only {
        u.usage_only(usage(&finished.result));
        out.push(json(&u));
    }
    out
}

impl Encoder for CompletionEncoder {
    fn piece(&mut self, piece: Piece) -> Vec<Value> {
        vec![json(&self.message(piece.text, None))]
    }

    fn done(&mut self, finished: &Finished) -> Vec<Value> {
        finishing(
            self.message(
                String::new(),
                Some(finish_reason_name(finished.finish_reason)),
            ),
            self.include_usage
                .then(|| self.message(String::new(), None)),
            finished,
        )
    }

    fn error(&mut self, error: &EngineError) -> Value {
        error_value(error)
    }
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
