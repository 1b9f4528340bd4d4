//! Ollama-compatible routes: `POST /api/chat`, `POST /api/generate` (NDJSON streaming by default),
//! `GET /api/tags`, `POST /api/show`, `DELETE /api/delete`, `GET /api/ps`, `GET /api/version`, and
//! `GET /` / `HEAD /`
//! ("Ollama is running", the liveness check Ollama clients use).
//!
//! Shapes follow Ollama's `docs/api.md`. Errors are `{"error": "…"}`. Reasoning goes to
//! `thinking` when the request says `think: true`; otherwise it stays inline in the answer with its
//! `<think>` tags (what Ollama shows for DeepSeek-R1 without `think`).

// Request checks return the finished error `Response` to send; it is built once per refused
// request, so the size of the `Err` variant costs nothing worth boxing.
#![allow(clippy::result_large_err)]

use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use r1d_client::ollama::{
    ChatRequest, ChatResponse, DeleteRequest, Details, GenerateRequest, GenerateResponse,
    Message as OMessage, Running, RunningModel, Show, ShowRequest, Stats, TagModel, Tags, Think,
    Version,
};
use r1d_client::wire;
use serde_json::Value;

use super::answer::{self, Collected, Encoder, Out};
use super::error::{self, ApiError, Body as RequestBody, Shape};
use super::http::AppState;
use crate::chat::{self, Channel, Message, ModelProfile, Piece, ReasoningFormat};
use crate::engine::{EngineError, Finished, ModelInfo, PromptInput, Sampling, TokenLogprob};

/// Ollama `options` that are load-time settings (`docs/modelfile.md`): r1d's config and planner
/// decide them for the resident model, so they are accepted and not acted on — but each must be a
/// whole number. (`num_ctx` is not one of them: it limits the request's context, see
/// [`sampling`].)
const LOAD_TIME_COUNTS: [&str; 5] = ["num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep"];

/// Every key of Ollama's `options` (`api.Options` and `api.Runner` of Ollama's `api/types.go`;
/// docs/modelfile.md lists the common ones); any other is refused by name.
const KNOWN_OPTIONS: [&str; 28] = [
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_last_n",
    "temperature",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "penalize_newline",
    "stop",
    "tfs_z",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "numa",
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "use_mmap",
    "use_mlock",
    "num_thread",
    "vocab_only",
];

/// The Ollama routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/delete", delete(delete_model))
        .route("/api/ps", get(ps))
        .route("/api/version", get(version))
        // Ollama's liveness check (clients probe it before anything else); HEAD comes with GET.
        .route("/", get(|| async { "Ollama is running" }))
}

/// An error in Ollama's shape, `{"error": "…"}`.
fn fail(e: impl Into<ApiError>) -> Response {
    e.into().respond(Shape::Ollama)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// A request body, parsed by the one parser; its errors in Ollama's shape.
fn parse<T: serde::de::DeserializeOwned>(body: &RequestBody) -> Result<T, Response> {
    error::parse(body).map_err(fail)
}

/// What `/api/chat` and `/api/generate` check first: the model name, the options and `format`
/// (structured output); returns the sampling and the name to answer under.
async fn prepare(
    state: &AppState,
    model: &str,
    options: Option<&serde_json::Map<String, Value>>,
    format: Option<&Value>,
) -> Result<(Sampling, String), Response> {
    check_model(state, model).await?;
    let mut sampling = sampling(options)?;
    sampling.json_schema = answer::ollama_format(format)
        .map_err(|why| fail(ApiError::invalid(Some("format"), why)))?;
    // As Ollama does: the answer carries the name it was asked for, else the listed one.
    let name = match model.trim() {
        "" => listed_name(state).await.unwrap_or_default(),
        asked => asked.to_owned(),
    };
    Ok((sampling, name))
}

/// The name `/api/tags` lists the resident model by.
async fn listed_name(state: &AppState) -> Option<String> {
    state.control.resident_names().await.map(|n| n.listed)
}

/// Sampling from Ollama `options`: `temperature`, `top_p`, `top_k`, `min_p`, `seed`,
/// `num_predict` (-1 = no limit but the context), `stop`, `repeat_penalty`, `repeat_last_n`,
/// `presence_penalty`, `frequency_penalty`; `mirostat`, `typical_p`, `tfs_z` only at their "off"
/// values. `num_ctx` is this request's context length, at most the loaded one (the engine
/// refuses more: the shared model's context is set at load time). Load-time settings such as
/// `num_thread`, which r1d's config decides, are accepted and not acted on (a negative count is
/// refused); a key Ollama does not have, or a known key of the wrong type, is an error naming it.
fn sampling(options: Option<&serde_json::Map<String, Value>>) -> Result<Sampling, Response> {
    let mut s = Sampling::default();
    let Some(options) = options else { return Ok(s) };
    let bad = |key: &str, what: &str| {
        fail(ApiError::invalid(
            Some(key),
            format!("invalid option {key}: expected {what}"),
        ))
    };
    let float = |key: &str| -> Result<Option<f32>, Response> {
        match options.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|f| Some(f as f32))
                .ok_or_else(|| bad(key, "a number")),
        }
    };
    // Counts in any JSON spelling of a whole number (`128`, `128.0`, `1.28e2`); a fraction or
    // another type is refused naming the key.
    let int = |key: &str| -> Result<Option<i64>, Response> {
        match options.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => wire::count::value::<i64>(v).map(Some).map_err(|why| {
                fail(ApiError::invalid(
                    Some(key),
                    format!("invalid option {key}: {why}"),
                ))
            }),
        }
    };
    // A key Ollama does not document is a typo (`num_predikt`) whose intent would be lost:
    // refused by name, as an unknown top-level field is.
    if let Some(key) = options
        .keys()
        .find(|k| !KNOWN_OPTIONS.contains(&k.as_str()))
    {
        return Err(fail(ApiError::invalid(
            Some(key),
            format!(
                "unknown option {key:?} (a misspelt option name?); Ollama's options are: {}",
                KNOWN_OPTIONS.join(", ")
            ),
        )));
    }
    // Load-time counts r1d's config and planner decide (accepted and not acted on), still
    // checked to be counts that could mean something, so a malformed value is not taken.
    for key in LOAD_TIME_COUNTS {
        // `num_gpu` −1 is Ollama's "as many layers as fit".
        let least = if key == "num_gpu" { -1 } else { 0 };
        if let Some(n) = int(key)?.filter(|n| *n < least) {
            return Err(fail(ApiError::invalid(
                Some(key),
                format!("invalid option {key}: {n} is below {least}"),
            )));
        }
    }
    // Options Ollama documents whose samplers r1d does not run: the value that means "off" is
    // accepted, any other is refused by name.
    for (key, off) in [("mirostat", 0.0), ("typical_p", 1.0), ("tfs_z", 1.0)] {
        if let Some(v) = float(key)? {
            if f64::from(v) != off {
                return Err(fail(ApiError::invalid(
                    Some(key),
                    format!(
                        "option {key} is not supported by r1d; leave it out or set it to {off}"
                    ),
                )));
            }
        }
    }
    s.context_limit = match int("num_ctx")? {
        None => None,
        Some(n) if n >= 1 => Some(n.min(i64::from(u32::MAX)) as u32),
        Some(n) => {
            return Err(fail(ApiError::invalid(
                Some("num_ctx"),
                format!("invalid option num_ctx: {n} is not a context length of at least 1"),
            )))
        }
    };
    s.presence_penalty = float("presence_penalty")?;
    s.frequency_penalty = float("frequency_penalty")?;
    s.repeat_penalty = float("repeat_penalty")?;
    s.repeat_last_n =
        int("repeat_last_n")?.map(|n| n.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32);
    s.temperature = float("temperature")?;
    s.top_p = float("top_p")?;
    s.min_p = float("min_p")?;
    s.top_k = int("top_k")?.map(|k| k as i32);
    s.seed = int("seed")?.map(|k| k as u32);
    // Ollama: -1 = no limit, -2 = fill the context; both end at the context here.
    s.max_tokens = match int("num_predict")? {
        Some(n) if n > 0 => Some(n.min(u32::MAX as i64) as u32),
        Some(-1 | -2) => Some(u32::MAX),
        Some(n) => {
            return Err(fail(ApiError::invalid(
                Some("num_predict"),
                format!(
                    "invalid option num_predict: {n} is not -1, -2 (to the end of the context) \
                     or a count of at least 1"
                ),
            )))
        }
        None => None,
    };
    s.stop = match options.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("stop", "strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("stop", "a string or a list of strings")),
    };
    answer::validate_sampling(&s, answer::Ranges::Ollama)
        .map_err(|(param, message)| fail(ApiError::invalid(Some(param), message)))?;
    Ok(s)
}

async fn check_model(state: &AppState, model: &str) -> Result<(), Response> {
    answer::check_model(&state.control, Some(model))
        .await
        .map_err(|message| fail(ApiError::model_not_found(message)))
}

/// How reasoning comes back for Ollama's `think`: on (or any level) in `thinking`, off not at
/// all, absent inline with its tags. `think` set on a model that does not reason is refused, as
/// Ollama refuses it.
fn format_of(
    state: &AppState,
    model: &str,
    think: Option<&Think>,
) -> Result<ReasoningFormat, Response> {
    let on = match think {
        None => return Ok(ReasoningFormat::None),
        Some(Think::Switch(on)) => *on,
        Some(Think::Level(level)) => match level.as_str() {
            "low" | "medium" | "high" => true,
            other => {
                return Err(fail(ApiError::invalid(
                    Some("think"),
                    format!(
                        "think {other:?} is not one of true, false, \"low\", \"medium\", \"high\""
                    ),
                )))
            }
        },
    };
    let reasons = state
        .engine
        .snapshot()
        .model
        .is_none_or(|(info, _)| ModelProfile::of(&info).reasoning);
    // As Ollama (`server/routes.go`): only turning thinking on is refused for a model that does
    // not reason; `think: false` asks for what it does anyway (clients send it always).
    if !reasons {
        if !on {
            return Ok(ReasoningFormat::None);
        }
        return Err(fail(ApiError::invalid(
            Some("think"),
            format!("\"{model}\" does not support thinking"),
        )));
    }
    Ok(if on {
        ReasoningFormat::DeepSeek
    } else {
        ReasoningFormat::Off
    })
}

/// Refuses images (r1d serves text-only models), naming the field; an empty list is accepted.
fn refuse_images(images: Option<(String, &Vec<String>)>) -> Result<(), Response> {
    if let Some((field, _)) = images.filter(|(_, i)| !i.is_empty()) {
        return Err(fail(ApiError::invalid(
            Some(&field),
            format!("{field}: r1d serves text-only models, which cannot read images"),
        )));
    }
    Ok(())
}

/// The checks of `/api/chat` (`generate` false) and `/api/generate` that need no engine: the
/// body parses (unknown fields refused by name), images are refused, and the options are valid
/// samplers in Ollama's ranges. For the fuzz target `request_body`, through `api::fuzzing`:
/// every refusal must be a 4xx.
#[cfg(any(feature = "fuzzing", test))]
pub(super) fn check_body(generate: bool, body: &RequestBody) -> Result<(), Response> {
    if generate {
        let req: GenerateRequest = parse(body)?;
        refuse_images(req.images.as_ref().map(|im| ("images".to_owned(), im)))?;
        sampling(req.options.as_ref())?;
        if let Some(Think::Level(level)) = req.think.as_ref() {
            if !["low", "medium", "high"].contains(&level.as_str()) {
                return Err(fail(ApiError::invalid(
                    Some("think"),
                    format!(
                        "think {level:?} is not one of true, false, \"low\", \"medium\", \"high\""
                    ),
                )));
            }
        }
    } else {
        let req: ChatRequest = parse(body)?;
        for (i, m) in req.messages.iter().enumerate() {
            refuse_images(
                m.images
                    .as_ref()
                    .map(|im| (format!("messages[{i}].images"), im)),
            )?;
        }
        sampling(req.options.as_ref())?;
    }
    Ok(())
}

fn ns(ms: f64) -> u64 {
    (ms * 1e6).max(0.0) as u64
}

fn stats(f: &Finished) -> Stats {
    let r = &f.result;
    Stats {
        done_reason: Some(super::to_wire::finish_reason(f.finish_reason).into()),
        total_duration: Some(ns(r.prompt_ms + r.generation_ms)),
        load_duration: Some(0),
        prompt_eval_count: Some(r.prompt_tokens),
        prompt_eval_duration: Some(ns(r.prompt_ms)),
        eval_count: Some(r.completion_tokens),
        eval_duration: Some(ns(r.generation_ms)),
    }
}

fn load_only_stats() -> Stats {
    Stats {
        done_reason: Some("load".into()),
        ..Default::default()
    }
}

fn ndjson(stream: impl futures_util::Stream<Item = Out> + Send + 'static) -> Response {
    let lines = stream.filter_map(|out| {
        std::future::ready(match out {
            Out::Json(v) => Some(Ok::<_, std::convert::Infallible>(Bytes::from(format!(
                "{v}\n"
            )))),
            Out::End => None,
        })
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| {
            fail(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "failed to build the response",
            ))
        })
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

async fn chat(State(state): State<AppState>, body: RequestBody) -> Response {
    let req: ChatRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let (sampling, model) = match prepare(
        &state,
        &req.model,
        req.options.as_ref(),
        req.format.as_ref(),
    )
    .await
    {
        Ok(p) => p,
        Err(r) => return r,
    };
    let format = match format_of(&state, &req.model, req.think.as_ref()) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut sampling = sampling;
    sampling.logprobs = match ollama_logprobs_asked(req.logprobs, req.top_logprobs) {
        Ok(l) => l,
        Err(r) => return r,
    };
    if req.messages.is_empty() {
        // Ollama answers an empty conversation by (loading and) reporting the model.
        return Json(Lines::chat(model).line(String::new(), None, true, load_only_stats()))
            .into_response();
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        if let Err(r) = refuse_images(
            m.images
                .as_ref()
                .map(|im| (format!("messages[{i}].images"), im)),
        ) {
            return r;
        }
        if !answer::ROLES.contains(&m.role.as_str()) {
            return fail(ApiError::invalid(
                Some(&format!("messages[{i}].role")),
                format!(
                    "messages[{i}].role {:?} is not one of {}",
                    m.role,
                    answer::ROLES.join(", ")
                ),
            ));
        }
        messages.push(Message {
            role: if m.role == "developer" {
                "system".into()
            } else {
                m.role.clone()
            },
            content: m.content.clone(),
            tool_calls: m
                .tool_calls
                .clone()
                .filter(|t| !t.is_empty())
                .map(Value::from),
            tool_call_id: None,
        });
    }
    let tools = req.tools.clone().filter(|t| !t.is_empty());
    let with_tools = tools.is_some();
    let input = match tools {
        Some(tools) => PromptInput::ChatWithTools {
            messages,
            tools: Value::from(tools),
        },
        None => PromptInput::Chat(messages),
    };
    let admitted = match answer::admit(&state.engine, input, sampling, format).await {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let mut lines = Lines::chat(model);
    lines.tools = with_tools;
    lines.logprobs = req.logprobs.filter(|&l| l).map(|_| Vec::new());
    respond(admitted, lines, req.stream).await
}

async fn generate(State(state): State<AppState>, body: RequestBody) -> Response {
    let req: GenerateRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = refuse_images(req.images.as_ref().map(|im| ("images".to_owned(), im))) {
        return r;
    }
    for (field, set, why) in [
        (
            "suffix",
            req.suffix.as_ref().is_some_and(|s| !s.is_empty()),
            "r1d does not fill in the middle",
        ),
        (
            "template",
            req.template.as_ref().is_some_and(|t| !t.is_empty()),
            "r1d renders the model's own chat template",
        ),
    ] {
        if set {
            return fail(ApiError::invalid(
                Some(field),
                format!("{field} is not supported: {why}"),
            ));
        }
    }
    let (sampling, model) = match prepare(
        &state,
        &req.model,
        req.options.as_ref(),
        req.format.as_ref(),
    )
    .await
    {
        Ok(p) => p,
        Err(r) => return r,
    };
    let format = match format_of(&state, &req.model, req.think.as_ref()) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut sampling = sampling;
    sampling.logprobs = match ollama_logprobs_asked(req.logprobs, req.top_logprobs) {
        Ok(l) => l,
        Err(r) => return r,
    };
    if req.prompt.is_empty() {
        return Json(Lines::generate(model).line(String::new(), None, true, load_only_stats()))
            .into_response();
    }
    let context = req.context.clone().unwrap_or_default();
    if let Err((param, message)) = answer::check_token_ids(&state.engine, "context", &context) {
        return fail(ApiError::invalid(Some(&param), message));
    }
    // Checked: each id is from 0 to the vocabulary size, below 2^31.
    let context: Vec<i32> = context.into_iter().map(|id| id as i32).collect();
    let input = if req.raw {
        PromptInput::Raw(req.prompt.clone())
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &req.system {
            messages.push(Message {
                role: "system".into(),
                content: system.clone(),
                ..Default::default()
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: req.prompt.clone(),
            ..Default::default()
        });
        PromptInput::Chat(messages)
    };
    let input = if context.is_empty() {
        input
    } else {
        PromptInput::After {
            context,
            then: Box::new(input),
        }
    };
    let admitted = match answer::admit(&state.engine, input, sampling, format).await {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let mut lines = Lines::generate(model);
    lines.logprobs = req.logprobs.filter(|&l| l).map(|_| Vec::new());
    respond(admitted, lines, req.stream).await
}

/// Which route's object shape the lines take.
#[derive(Clone, Copy)]
enum Route {
    /// `/api/chat`: the text in `message.content`, reasoning in `message.thinking`.
    Chat,
    /// `/api/generate`: the text in `response`, reasoning in `thinking`.
    Generate,
}

/// The objects of one answer: one line per piece (text or reasoning), then a `done` line with the
/// stats; not streamed, the whole answer is one `done` object of the same shape.
/// With `tools` (chat only), the answer's text is held to the end, where tool calls are parsed
/// out of it and sent as `message.tool_calls` (Ollama's shape, arguments an object) in one line
/// before the `done` line; reasoning still streams as it comes.
struct Lines {
    model: String,
    route: Route,
    tools: bool,
    held: String,
    /// With `logprobs`: the entries waiting for the next object (that of their text).
    logprobs: Option<Vec<TokenLogprob>>,
}

impl Lines {
    fn chat(model: String) -> Lines {
        Lines {
            model,
            route: Route::Chat,
            tools: false,
            held: String::new(),
            logprobs: None,
        }
    }

    fn generate(model: String) -> Lines {
        Lines {
            model,
            route: Route::Generate,
            tools: false,
            held: String::new(),
            logprobs: None,
        }
    }

    fn line(&self, text: String, thinking: Option<String>, done: bool, stats: Stats) -> Value {
        let model = self.model.clone();
        let created_at = now_rfc3339();
        match self.route {
            Route::Chat => json(&ChatResponse {
                model,
                created_at,
                message: OMessage {
                    role: "assistant".into(),
                    content: text,
                    thinking,
                    images: None,
                    tool_calls: None,
                    tool_name: None,
                },
                logprobs: None,
                done,
                stats,
            }),
            Route::Generate => json(&GenerateResponse {
                model,
                created_at,
                response: text,
                thinking,
                logprobs: None,
                done,
                context: None,
                stats,
            }),
        }
    }
}

impl Lines {
    /// `line` with the log probabilities waiting, when the request asked for them.
    fn line_with_logprobs(
        &mut self,
        text: String,
        thinking: Option<String>,
        done: bool,
        stats: Stats,
    ) -> Value {
        let mut line = self.line(text, thinking, done, stats);
        self.attach_logprobs(&mut line);
        line
    }

    /// Moves the log probabilities waiting into `line` (its `logprobs`), when the request asked
    /// for them.
    fn attach_logprobs(&mut self, line: &mut Value) {
        if let Some(entries) = self.logprobs.as_mut() {
            line["logprobs"] = json(&ollama_logprobs(&std::mem::take(entries)));
        }
    }

    /// The `done` line: the stats, and for `/api/generate` the `context` (the token ids of the
    /// prompt and the answer), as Ollama's final object carries them; absent for a remote model,
    /// whose token ids r1d does not see.
    fn done_line(&mut self, text: String, thinking: Option<String>, finished: &Finished) -> Value {
        let mut line = self.line_with_logprobs(text, thinking, true, stats(finished));
        // A remote model's ids are its own and never come back: no `context` then, rather
        // than an empty one that would lose the conversation silently.
        if matches!(self.route, Route::Generate) && !finished.tokens.is_empty() {
            line["context"] = Value::from(finished.tokens.clone());
        }
        line
    }

    /// The chat line of a whole answer with tools: the text outside the calls and the calls.
    fn tool_line(&self, answer: &str, done: bool, stats: Stats) -> Value {
        let (text, calls) = chat::parse_tool_calls(answer);
        let mut line = self.line(text, None, done, stats);
        if !calls.is_empty() {
            let calls: Vec<Value> = calls
                .into_iter()
                .map(|c| {
                    let arguments: Value =
                        serde_json::from_str(&c.arguments).unwrap_or(Value::String(c.arguments));
                    serde_json::json!({"function": {"name": c.name, "arguments": arguments}})
                })
                .collect();
            line["message"]["tool_calls"] = Value::from(calls);
        }
        line
    }
}

impl Encoder for Lines {
    fn piece(&mut self, piece: Piece) -> Vec<Value> {
        if self.tools && piece.channel == Channel::Content {
            self.held.push_str(&piece.text);
            return Vec::new();
        }
        vec![match piece.channel {
            Channel::Content => self.line_with_logprobs(piece.text, None, false, Stats::default()),
            Channel::Reasoning => {
                self.line_with_logprobs(String::new(), Some(piece.text), false, Stats::default())
            }
        }]
    }

    fn logprobs(&mut self, entries: Vec<TokenLogprob>) -> Vec<Value> {
        if let Some(waiting) = self.logprobs.as_mut() {
            waiting.extend(entries);
        }
        Vec::new()
    }

    fn done(&mut self, finished: &Finished) -> Vec<Value> {
        let mut out = Vec::new();
        if self.tools {
            let held = std::mem::take(&mut self.held);
            let mut line = self.tool_line(&held, false, Stats::default());
            // The held answer's tokens ride with its text.
            self.attach_logprobs(&mut line);
            out.push(line);
        }
        out.push(self.done_line(String::new(), None, finished));
        out
    }

    fn error(&mut self, error: EngineError) -> Value {
        ApiError::from(error).body(Shape::Ollama)
    }
}

/// Streams the answer as NDJSON (Ollama's default) or collects it into one `done` object.
async fn respond(admitted: answer::Admitted, mut lines: Lines, stream: Option<bool>) -> Response {
    if stream.unwrap_or(true) {
        return ndjson(answer::encode(admitted.rx, lines));
    }
    match answer::collect(admitted.rx).await {
        Ok(Collected {
            content,
            reasoning,
            finished,
            logprobs,
        }) => {
            if let Some(waiting) = lines.logprobs.as_mut() {
                *waiting = logprobs;
            }
            let thinking = (!reasoning.is_empty()).then_some(reasoning);
            if !lines.tools {
                return Json(lines.done_line(content, thinking, &finished)).into_response();
            }
            // Tools are a chat field: the thinking goes into the message.
            let mut line = lines.tool_line(&content, true, stats(&finished));
            lines.attach_logprobs(&mut line);
            if let Some(thinking) = thinking {
                line["message"]["thinking"] = Value::from(thinking);
            }
            Json(line).into_response()
        }
        Err(e) => fail(e),
    }
}

/// Ollama's `logprobs` array for `entries`.
fn ollama_logprobs(entries: &[TokenLogprob]) -> Vec<r1d_client::ollama::Logprob> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    entries
        .iter()
        .map(|e| r1d_client::ollama::Logprob {
            token: text(&e.bytes),
            logprob: e.logprob,
            bytes: e.bytes.clone(),
            top_logprobs: e
                .top
                .iter()
                .map(|(bytes, logprob)| r1d_client::ollama::TopLogprob {
                    token: text(bytes),
                    logprob: *logprob,
                    bytes: bytes.clone(),
                })
                .collect(),
        })
        .collect()
}

/// The `logprobs` / `top_logprobs` of an Ollama request ([`answer::logprobs_asked`]).
///
/// # Errors
/// A 400 naming the field.
fn ollama_logprobs_asked(
    logprobs: Option<bool>,
    top: Option<u32>,
) -> Result<Option<u32>, Response> {
    answer::logprobs_asked(logprobs, top)
        .map_err(|(param, message)| fail(ApiError::invalid(Some(param), message)))
}

/// "7.6B", "135M": the parameter count as Ollama prints it.
fn parameter_size(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.1}B", n as f64 / 1e9)
    } else {
        format!("{}M", (n as f64 / 1e6).round())
    }
}

fn details(info: &ModelInfo) -> Details {
    let family = info.architecture.clone().unwrap_or_default();
    Details {
        parent_model: String::new(),
        format: if info.path.starts_with(crate::backend::remote::PATH_PREFIX) {
            crate::backend::remote::BACKEND.into()
        } else {
            "gguf".into()
        },
        families: vec![family.clone()],
        family,
        parameter_size: parameter_size(info.parameters),
        quantization_level: info.file_type.clone().unwrap_or_default(),
    }
}

fn file_times(path: &str) -> (u64, String) {
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let modified = meta
        .and_then(|m| m.modified().ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(now_rfc3339);
    (size, modified)
}

/// `GET /api/tags`: the store's usable models (r1d's own, the Hugging Face cache's, Ollama's),
/// and the resident model when it was loaded from elsewhere.
async fn tags(State(state): State<AppState>) -> Json<Tags> {
    let resident = state.engine.snapshot().model;
    let entries = state
        .control
        .scan("listing the models on disk")
        .await
        .unwrap_or_default();
    let mut models: Vec<TagModel> = entries
        .iter()
        .filter(|e| e.is_usable())
        .map(|e| {
            let id = e.identity.as_ref();
            let family = id.and_then(|i| i.architecture.clone()).unwrap_or_default();
            let modified_at = e
                .modified
                .map(|s| {
                    humantime::format_rfc3339_seconds(
                        SystemTime::UNIX_EPOCH + Duration::from_secs(s),
                    )
                    .to_string()
                })
                .unwrap_or_default();
            TagModel {
                name: e.name.clone(),
                model: e.name.clone(),
                modified_at,
                size: e.size_bytes,
                digest: match &e.source {
                    crate::store::Source::Ollama { digest, .. } => {
                        digest.trim_start_matches("sha256:").to_owned()
                    }
                    _ => String::new(),
                },
                details: r1d_client::ollama::Details {
                    parent_model: String::new(),
                    format: "gguf".into(),
                    families: vec![family.clone()],
                    family,
                    parameter_size: id.and_then(|i| i.size_label.clone()).unwrap_or_default(),
                    quantization_level: id.and_then(|i| i.quantization.clone()).unwrap_or_default(),
                },
            }
        })
        .collect();
    if let Some((info, _)) = resident {
        if !entries
            .iter()
            .any(|e| e.path == std::path::Path::new(&info.path))
        {
            let (size, modified_at) = file_times(&info.path);
            let name = listed_name(&state)
                .await
                .unwrap_or_else(|| info.path.clone());
            models.push(TagModel {
                model: name.clone(),
                name,
                modified_at,
                size,
                digest: String::new(),
                details: details(&info),
            });
        }
    }
    // The configured `[[remote]]` endpoints, by `remote:NAME` (every route and `r1ctl use`
    // take that name); no size or file time: nothing of it is on this machine.
    if let Some(remotes) = state
        .control
        .store("listing the remotes")
        .ok()
        .and_then(|s| s.remotes())
    {
        for v in remotes.views() {
            let name = v.config.path();
            if models.iter().any(|m| m.name == name) {
                continue;
            }
            let variant = v.config.variant();
            let family = variant
                .map(|v| format!("{:?}", v.architecture).to_ascii_lowercase())
                .unwrap_or_default();
            models.push(TagModel {
                model: name.clone(),
                name,
                modified_at: now_rfc3339(),
                size: 0,
                digest: String::new(),
                details: Details {
                    parent_model: String::new(),
                    format: crate::backend::remote::BACKEND.into(),
                    families: vec![family.clone()],
                    family,
                    parameter_size: variant
                        .map(|v| parameter_size(v.parameters))
                        .unwrap_or_default(),
                    quantization_level: String::new(),
                },
            });
        }
    }
    Json(Tags { models })
}

async fn ps(State(state): State<AppState>) -> Json<Running> {
    let listed = listed_name(&state).await;
    let models = state
        .engine
        .snapshot()
        .model
        .map(|(info, _)| {
            let name = listed.clone().unwrap_or_else(|| info.path.clone());
            // Resident until swapped: report an expiry far ahead, as Ollama does for keep_alive -1.
            let expires = SystemTime::now() + Duration::from_secs(10 * 365 * 24 * 3600);
            RunningModel {
                model: name.clone(),
                name,
                size: info.memory.weights_bytes + info.memory.kv_cache_bytes,
                digest: String::new(),
                details: details(&info),
                expires_at: humantime::format_rfc3339_seconds(expires).to_string(),
                size_vram: info.memory.gpu_bytes,
                context_length: info.context_length,
            }
        })
        .into_iter()
        .collect();
    Json(Running { models })
}

/// `DELETE /api/delete` (`{"model": NAME}`, older clients `{"name": NAME}`): removes the model
/// from r1d's models directory, as `r1ctl rm` does; 200 with an empty body, as Ollama answers.
/// The resident model is 409 (serve another one first), another tool's store 403, an unknown
/// name 404.
/// The model a request names: `model`, or older clients' `name` when `model` is empty.
fn model_or_name<'a>(model: &'a str, name: &'a str) -> &'a str {
    if model.is_empty() {
        name
    } else {
        model
    }
}

async fn delete_model(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::access::Caller>>,
    body: RequestBody,
) -> Response {
    let req: DeleteRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let name = model_or_name(&req.model, &req.name);
    if name.trim().is_empty() {
        return fail(ApiError::invalid(Some("model"), "model is required"));
    }
    match state
        .control
        .remove(caller.as_ref().map(|c| &c.0), name)
        .await
    {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => fail(e),
    }
}

async fn show(State(state): State<AppState>, body: RequestBody) -> Response {
    let req: ShowRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let name = model_or_name(&req.model, &req.name);
    let snapshot = state.engine.snapshot();
    let Some((info, _)) = snapshot.model.clone() else {
        let reason = snapshot
            .error
            .unwrap_or_else(|| "no model is loaded".into());
        return fail(ApiError::model_not_found(format!(
            "model {name:?} not found: {reason}"
        )));
    };
    if let Err(r) = check_model(&state, name).await {
        return r;
    }
    let profile = ModelProfile::of(&info);
    let defaults = profile.sampling_defaults();
    let arch = info.architecture.clone().unwrap_or_default();
    let mut model_info = serde_json::Map::new();
    model_info.insert("general.architecture".into(), arch.clone().into());
    model_info.insert("general.parameter_count".into(), info.parameters.into());
    if let Some(n) = &info.name {
        model_info.insert("general.name".into(), n.clone().into());
    }
    model_info.insert(
        format!("{arch}.context_length"),
        info.trained_context_length.into(),
    );
    model_info.insert(format!("{arch}.block_count"), info.layers.into());
    model_info.insert(
        format!("{arch}.embedding_length"),
        info.embedding_length.into(),
    );
    let mut capabilities = vec!["completion".to_owned()];
    if info
        .chat_template
        .as_deref()
        .is_some_and(chat::supports_tools)
    {
        capabilities.push("tools".into());
    }
    if profile.reasoning {
        capabilities.push("thinking".into());
    }
    let (_, modified_at) = file_times(&info.path);
    Json(Show {
        modelfile: String::new(),
        parameters: format!(
            "temperature {}\ntop_p {}\ntop_k {}\nmin_p {}",
            defaults.temperature, defaults.top_p, defaults.top_k, defaults.min_p
        ),
        template: info.chat_template.clone().unwrap_or_default(),
        details: details(&info),
        model_info,
        capabilities,
        modified_at,
    })
    .into_response()
}

async fn version() -> Json<Version> {
    Json(Version {
        version: env!("CARGO_PKG_VERSION").into(),
    })
}
