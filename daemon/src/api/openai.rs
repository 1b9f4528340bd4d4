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

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use r1d_client::wire::{
    self, AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
    ChunkChoice, Completion, CompletionChoice, CompletionPrompt, CompletionRequest, Delta,
    ModelEntry, ModelList, Timings, Usage,
};
use serde_json::Value;

use super::answer::{self, Encoder, Out};
use super::error::{self, ApiError, Body, Shape};
use super::http::AppState;
use super::to_wire::{finish_reason, timings, usage};
use crate::chat::{Channel, Message, Piece, ReasoningFormat};
use crate::engine::{EngineError, Finished, PromptInput, Sampling};

/// The OpenAI routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
}

/// An error in OpenAI's shape.
fn fail(e: impl Into<ApiError>) -> Response {
    e.into().respond(Shape::OpenAi)
}

fn invalid(param: Option<&str>, message: String) -> Response {
    fail(ApiError::invalid(param, message))
}

/// A request body, parsed by the one parser; its errors in OpenAI's shape.
fn parse<T: serde::de::DeserializeOwned>(body: &Body) -> Result<T, Response> {
    error::parse(body).map_err(fail)
}

fn unix_now() -> u64 {
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
        return Err(fail(ApiError::model_not_found(message)));
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
        Err(e) => return fail(e),
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
                finish_reason: finish_reason(c.finished.finish_reason).into(),
            }],
            usage: usage(&c.finished.result),
            timings: Some(timings(&c.finished.result)),
        })
        .into_response(),
        Err(e) => fail(e),
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
                Some(finish_reason(finished.finish_reason)),
            ),
            self.include_usage
                .then(|| self.chunk(Delta::default(), None)),
            finished,
        )
    }

    fn error(&mut self, error: EngineError) -> Value {
        ApiError::from(error).body(Shape::OpenAi)
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
        Err(e) => return fail(e),
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
            let mut body =
                encoder.message(c.content, Some(finish_reason(c.finished.finish_reason)));
            body.usage = Some(usage(&c.finished.result));
            body.timings = Some(timings(&c.finished.result));
            Json(body).into_response()
        }
        Err(e) => fail(e),
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
            self.message(String::new(), Some(finish_reason(finished.finish_reason))),
            self.include_usage
                .then(|| self.message(String::new(), None)),
            finished,
        )
    }

    fn error(&mut self, error: EngineError) -> Value {
        ApiError::from(error).body(Shape::OpenAi)
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
