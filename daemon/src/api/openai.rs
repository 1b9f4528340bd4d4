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
    ChoiceLogprobs, ChunkChoice, Completion, CompletionChoice, CompletionPrompt, CompletionRequest,
    Delta, ModelEntry, ModelList, Timings, Usage,
};
use serde_json::Value;

use super::answer::{self, Encoder, Out};
use super::error::{self, ApiError, Body, Shape};
use super::http::AppState;
use super::to_wire::{finish_reason, timings, usage};
use crate::chat::{self, Channel, Message, Piece, ReasoningFormat};
use crate::engine::{EngineError, Finished, PromptInput, Sampling, TokenLogprob};

/// The OpenAI routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
}

/// An error in OpenAI's shape.
pub(super) fn fail(e: impl Into<ApiError>) -> Response {
    e.into().respond(Shape::OpenAi)
}

pub(super) fn invalid(param: Option<&str>, message: String) -> Response {
    fail(ApiError::invalid(param, message))
}

/// A request body, parsed by the one parser; its errors in OpenAI's shape.
pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &Body) -> Result<T, Response> {
    error::parse(body).map_err(fail)
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn new_id(prefix: &str) -> String {
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

/// The most choices one chat request may ask for (`n`): each is an answer generated beside the
/// others (one sequence each), and waits in the queue like a request of its own.
pub const MAX_CHOICES: u32 = 16;

/// Request fields common to both routes, checked.
pub(super) struct Common {
    pub(super) sampling: Sampling,
    pub(super) include_usage: bool,
}

/// The sampling fields both routes share, as the client sent them.
pub(super) struct Knobs<'a> {
    pub(super) model: Option<&'a str>,
    pub(super) n: Option<u32>,
    pub(super) max_tokens: Option<u32>,
    pub(super) temperature: Option<f32>,
    pub(super) top_p: Option<f32>,
    pub(super) top_k: Option<i32>,
    pub(super) min_p: Option<f32>,
    pub(super) seed: Option<i64>,
    pub(super) stop: Option<wire::Stop>,
    pub(super) stream_options: Option<&'a wire::StreamOptions>,
    /// `stream` of the request: `stream_options` without it is refused, as OpenAI refuses it.
    pub(super) stream: bool,
    pub(super) presence_penalty: Option<f32>,
    pub(super) frequency_penalty: Option<f32>,
    pub(super) logit_bias: Option<&'a std::collections::BTreeMap<String, f32>>,
    /// Log probabilities asked for: `Some(top)` (the route's fields already checked).
    pub(super) logprobs: Option<u32>,
}

pub(super) async fn common(state: &AppState, k: Knobs<'_>) -> Result<Common, Response> {
    if let Err(message) = answer::check_model(&state.control, k.model).await {
        return Err(fail(ApiError::model_not_found(message)));
    }
    if k.stream_options.is_some() && !k.stream {
        return Err(invalid(
            Some("stream_options"),
            "stream_options is only allowed when stream is true".into(),
        ));
    }
    match k.n {
        Some(0) => return Err(invalid(Some("n"), "n must be at least 1".into())),
        Some(n) if n > MAX_CHOICES => {
            return Err(invalid(
                Some("n"),
                format!("n = {n} is more than the {MAX_CHOICES} choices r1d generates per request"),
            ))
        }
        _ => {}
    }
    let mut logit_bias = Vec::new();
    for (key, bias) in k.logit_bias.into_iter().flatten() {
        let Ok(id) = key.trim().parse::<i32>() else {
            return Err(invalid(
                Some("logit_bias"),
                format!("logit_bias key {key:?} is not a token id"),
            ));
        };
        logit_bias.push((id, *bias));
    }
    let sampling = Sampling {
        max_tokens: k.max_tokens,
        temperature: k.temperature,
        top_p: k.top_p,
        top_k: k.top_k,
        min_p: k.min_p,
        // OpenAI seeds are 64-bit; llama.cpp's are 32-bit: keep the low bits.
        seed: k.seed.map(|s| s as u32),
        stop: k.stop.map(wire::Stop::into_vec).unwrap_or_default(),
        presence_penalty: k.presence_penalty,
        frequency_penalty: k.frequency_penalty,
        repeat_penalty: None,
        // OpenAI's penalties count every token generated so far.
        repeat_last_n: (k.presence_penalty.is_some() || k.frequency_penalty.is_some())
            .then_some(-1),
        logit_bias,
        json_schema: None,
        json_wrap: None,
        logprobs: k.logprobs,
        context_limit: None,
    };
    answer::validate_sampling(&sampling, answer::Ranges::OpenAi)
        .map_err(|(param, message)| invalid(Some(param), message))?;
    Ok(Common {
        sampling,
        include_usage: k.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// Refuses what `/v1/chat/completions` does not implement, naming the field and why; values that
/// mean "off" (`logprobs: false`, `tools: []`, `tool_choice: "none"`) are accepted.
fn refuse_unimplemented_chat(req: &ChatCompletionRequest) -> Result<(), Response> {
    chat_logprobs(req)?;
    if req.functions.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(invalid(
            Some("functions"),
            "functions (deprecated by OpenAI): use tools".into(),
        ));
    }
    match req.function_call.as_ref().map(|c| c.as_str()) {
        None | Some(Some("none")) | Some(Some("auto")) => {}
        Some(_) => {
            return Err(invalid(
                Some("function_call"),
                "function_call (deprecated by OpenAI): use tools and tool_choice".into(),
            ))
        }
    }
    if let Some(m) = req.modalities.iter().flatten().find(|m| *m != "text") {
        return Err(invalid(
            Some("modalities"),
            format!("modality {m:?} is not supported: r1d serves text-only models"),
        ));
    }
    if req.audio.as_ref().is_some_and(|a| !a.is_null()) {
        return Err(invalid(
            Some("audio"),
            "audio output is not supported: r1d serves text-only models".into(),
        ));
    }
    for (i, m) in req.messages.iter().enumerate() {
        if let Some(kind) = m.non_text_part() {
            return Err(invalid(
                Some(&format!("messages[{i}].content")),
                format!(
                    "messages[{i}].content has a {kind:?} part: r1d serves text-only models, \
                     which cannot read it"
                ),
            ));
        }
    }
    Ok(())
}

/// The most `logprobs` a text completion may ask for (OpenAI's legacy Completions reference:
/// "the maximum value for logprobs is 5").
const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// The chat request's log-probability fields ([`answer::logprobs_asked`]).
///
/// # Errors
/// A 400 naming the field.
fn chat_logprobs(req: &ChatCompletionRequest) -> Result<Option<u32>, Response> {
    answer::logprobs_asked(req.logprobs, req.top_logprobs)
        .map_err(|(param, message)| invalid(Some(param), message))
}

/// The text around a tool call in templates of the Hermes/Qwen kind, which a forced call is
/// constrained to.
const TOOL_CALL_WRAP: (&str, &str) = ("<tool_call>\n", "\n</tool_call>");

/// `tool_choice` `"required"` or a named function as a constraint: the JSON Schema of one call
/// (`{"name": …, "arguments": …}`, the name fixed, the arguments the function's `parameters`),
/// any of the tools' for `"required"`. `None` for `"auto"`, `"none"` or no `tool_choice`.
///
/// # Errors
/// A 400 naming `tool_choice` for a shape OpenAI does not define, a function not among
/// `tools`, a forced call without tools, with `response_format`, or with a template whose calls
/// are not `<tool_call>` blocks (the only format r1d constrains to).
fn forced_call(
    req: &ChatCompletionRequest,
    template: Option<&str>,
) -> Result<Option<String>, Response> {
    let refuse = |why: String| Err(invalid(Some("tool_choice"), why));
    let wanted: Option<&str> = match req.tool_choice.as_ref() {
        None => return Ok(None),
        Some(Value::String(c)) if c == "none" || c == "auto" => return Ok(None),
        Some(Value::String(c)) if c == "required" => None,
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => Some(name),
            _ => {
                return refuse(format!(
                    "tool_choice {v} is not \"none\", \"auto\", \"required\" or \
                     {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"
                ))
            }
        },
    };
    let tools = req.tools.as_deref().unwrap_or_default();
    if tools.is_empty() {
        return refuse("tool_choice forces a tool call, but tools is empty".into());
    }
    if req
        .response_format
        .as_ref()
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t != "text")
    {
        return refuse("tool_choice forcing a call cannot be combined with response_format".into());
    }
    if !template.is_some_and(|t| t.contains(TOOL_CALL_WRAP.0.trim_end())) {
        return refuse(
            "tool_choice forcing a call is implemented for chat templates whose calls are \
             <tool_call> blocks; this model's template writes them otherwise"
                .into(),
        );
    }
    let mut calls = Vec::new();
    for tool in tools {
        let Some(name) = tool.pointer("/function/name").and_then(Value::as_str) else {
            continue;
        };
        if wanted.is_some_and(|w| w != name) {
            continue;
        }
        let parameters = tool
            .pointer("/function/parameters")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object"}));
        calls.push(serde_json::json!({
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": false,
        }));
    }
    match (calls.len(), wanted) {
        (0, Some(name)) => refuse(format!(
            "tool_choice names {name:?}, which is not among tools"
        )),
        (0, None) => {
            refuse("tool_choice \"required\" but no tool in tools has a function name".into())
        }
        (1, _) => Ok(Some(calls.remove(0).to_string())),
        _ => Ok(Some(serde_json::json!({ "anyOf": calls }).to_string())),
    }
}

/// Whether the model is given tools: a non-empty `tools` and a `tool_choice` other than "none".
fn tools_offered(req: &ChatCompletionRequest) -> bool {
    req.tools.as_ref().is_some_and(|t| !t.is_empty())
        && req.tool_choice.as_ref().and_then(Value::as_str) != Some("none")
}

/// The OpenAI `tool_calls` of an answer: each parsed call with an id and `type: "function"`;
/// only the first when `parallel_tool_calls` is false.
fn wire_tool_calls(calls: Vec<chat::ToolCall>, parallel: bool) -> Vec<Value> {
    let take = if parallel { calls.len() } else { 1 };
    calls
        .into_iter()
        .take(take)
        .map(|c| {
            serde_json::json!({
                "id": new_id("call"),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })
        })
        .collect()
}

/// Refuses what `/v1/completions` does not implement, naming the field and why.
/// The checks of `/v1/chat/completions` (`completion` false) and `/v1/completions` that need no
/// engine, as the handlers make them: the body parses (unknown fields refused by name) and what
/// r1d does not implement is refused, as is a malformed `response_format`. For the fuzz target
/// `request_body`, through `api::fuzzing`: every refusal must be a 4xx.
#[cfg(any(feature = "fuzzing", test))]
pub(super) fn check_body(completion: bool, body: &Body) -> Result<(), Response> {
    if completion {
        let req: CompletionRequest = parse(body)?;
        completion_prompts(&req)?;
        refuse_unimplemented_completion(&req)?;
    } else {
        let req: ChatCompletionRequest = parse(body)?;
        refuse_unimplemented_chat(&req)?;
        if let Some((i, m)) = req
            .messages
            .iter()
            .enumerate()
            .find(|(_, m)| !answer::ROLES.contains(&m.role.as_str()))
        {
            return Err(invalid(
                Some(&format!("messages[{i}].role")),
                format!(
                    "messages[{i}].role {:?} is not one of {}",
                    m.role,
                    answer::ROLES.join(", ")
                ),
            ));
        }
        if let Some(Err((param, message))) = req
            .response_format
            .as_ref()
            .map(answer::openai_response_format)
        {
            return Err(invalid(Some(&param), message));
        }
    }
    Ok(())
}

fn refuse_unimplemented_completion(req: &CompletionRequest) -> Result<(), Response> {
    if let Some(n) = req.logprobs.filter(|&n| n > MAX_COMPLETION_LOGPROBS) {
        return Err(invalid(
            Some("logprobs"),
            format!("logprobs = {n} is above {MAX_COMPLETION_LOGPROBS}, OpenAI's limit"),
        ));
    }
    if req.echo == Some(true) {
        return Err(invalid(
            Some("echo"),
            "echo is not supported: the answer holds only the completion".into(),
        ));
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(invalid(
            Some("best_of"),
            "best_of other than 1 is not supported: r1d generates one completion per request"
                .into(),
        ));
    }
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(invalid(
            Some("suffix"),
            "suffix is not supported: r1d does not fill in the middle".into(),
        ));
    }
    Ok(())
}

/// The name answers carry: the one `/v1/models` lists, else the engine's.
pub(super) async fn listed_or(state: &AppState, engine_name: String) -> String {
    state
        .control
        .resident_names()
        .await
        .map_or(engine_name, |n| n.listed)
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
    if let Err(r) = refuse_unimplemented_chat(&req) {
        return r;
    }
    let json_schema = match req
        .response_format
        .as_ref()
        .map(answer::openai_response_format)
    {
        None => None,
        Some(Ok(schema)) => schema,
        Some(Err((param, message))) => return invalid(Some(&param), message),
    };
    let mut common = match common(
        &state,
        Knobs {
            model: req.model.as_deref(),
            n: req.n,
            max_tokens: req.max_completion_tokens.or(req.max_tokens),
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            min_p: req.min_p,
            seed: req.seed,
            stop: req.stop.clone(),
            stream_options: req.stream_options.as_ref(),
            stream: req.stream,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            logit_bias: req.logit_bias.as_ref(),
            logprobs: chat_logprobs(&req).unwrap_or_default(),
        },
    )
    .await
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    common.sampling.json_schema = json_schema;
    if req.tool_choice.is_some() {
        let template = state
            .engine
            .snapshot()
            .model
            .and_then(|(info, _)| info.chat_template);
        match forced_call(&req, template.as_deref()) {
            Ok(Some(schema)) => {
                common.sampling.json_schema = Some(schema);
                common.sampling.json_wrap =
                    Some((TOOL_CALL_WRAP.0.to_owned(), TOOL_CALL_WRAP.1.to_owned()));
            }
            Ok(None) => {}
            Err(r) => return r,
        }
    }
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
            tool_calls: m
                .tool_calls
                .clone()
                .filter(|t| !t.is_empty())
                .map(Value::from),
            tool_call_id: m.tool_call_id.clone(),
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
    let with_tools = tools_offered(&req);
    let choices = req.n.unwrap_or(1);
    if choices > 1 && common.sampling.json_wrap.is_some() {
        return invalid(
            Some("n"),
            "n > 1 with a forced tool_choice is not supported: ask for one choice".into(),
        );
    }
    let input = match req.tools.clone().filter(|_| with_tools) {
        Some(tools) => PromptInput::ChatWithTools {
            messages,
            tools: Value::from(tools),
        },
        None => PromptInput::Chat(messages),
    };
    let id = new_id("chatcmpl");
    let created = unix_now();
    if req.stream {
        // Choice i streams beside the others, its seed (when set) moved by i; every chunk
        // names its choice's index.
        let jobs = (0..choices)
            .map(|i| {
                let mut sampling = common.sampling.clone();
                sampling.seed = sampling.seed.map(|seed| seed.wrapping_add(i));
                (input.clone(), sampling)
            })
            .collect();
        let admitted = match admit_all(&state, jobs, format).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let model = listed_or(&state, admitted[0].model.clone()).await;
        let encoder = |index: usize, include_usage: bool| ChatEncoder {
            id: id.clone(),
            created,
            model: model.clone(),
            include_usage,
            tools: with_tools.then_some(req.parallel_tool_calls != Some(false)),
            held: String::new(),
            index: index as u32,
            logprobs: Vec::new(),
        };
        if admitted.len() == 1 {
            let a = admitted.into_iter().next().expect("one answer");
            return sse(answer::encode(a.rx, encoder(0, common.include_usage)));
        }
        let usage_chunk = json(&encoder(0, true).chunk(Delta::default(), None));
        let streams = admitted
            .into_iter()
            .enumerate()
            .map(|(i, a)| answer::encode(a.rx, encoder(i, false)).boxed())
            .collect();
        return sse(merged(
            streams,
            choices,
            common.include_usage.then_some(usage_chunk),
        ));
    }
    // Choice i > 0 is another answer to the same prompt, generated beside the others (its own
    // sequence; each is read as it comes, so none waits on an unread one); its seed, when one is
    // set, is moved by i so that sampled choices differ, as OpenAI's do.
    let engine = &state.engine;
    let answers = (0..choices).map(|i| {
        let mut sampling = common.sampling.clone();
        sampling.seed = sampling.seed.map(|seed| seed.wrapping_add(i));
        let input = input.clone();
        async move {
            let admitted = answer::admit(engine, input, sampling, format).await?;
            let model = admitted.model;
            answer::collect(admitted.rx).await.map(|c| (model, c))
        }
    });
    let mut all = Vec::with_capacity(choices as usize);
    let mut model = String::new();
    for result in futures_util::future::join_all(answers).await {
        match result {
            Ok((name, c)) => {
                model = name;
                all.push(c);
            }
            Err(e) => return fail(e),
        }
    }
    let model = listed_or(&state, model).await;
    let parallel_calls = req.parallel_tool_calls != Some(false);
    let first = &all[0].finished.result;
    // The prompt is counted once (OpenAI's usage for n choices); the completions add up.
    let mut total = usage(first);
    total.completion_tokens = all
        .iter()
        .map(|c| c.finished.result.completion_tokens)
        .sum();
    total.completion_tokens_details = all
        .iter()
        .map(|c| c.finished.result.reasoning_tokens)
        .sum::<Option<u32>>()
        .map(|reasoning_tokens| wire::CompletionTokensDetails { reasoning_tokens });
    total.total_tokens = total.prompt_tokens + total.completion_tokens;
    let timings = timings(first);
    let with_logprobs = common.sampling.logprobs.is_some();
    let choices = all
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let logprobs = with_logprobs.then(|| chat_logprobs_wire(&c.logprobs));
            let (content, calls) = if with_tools {
                chat::parse_tool_calls(&c.content)
            } else {
                (c.content, Vec::new())
            };
            let tool_calls = (!calls.is_empty()).then(|| wire_tool_calls(calls, parallel_calls));
            let finish = if tool_calls.is_some() {
                "tool_calls"
            } else {
                finish_reason(c.finished.finish_reason)
            };
            Choice {
                index: index as u32,
                message: AssistantMessage {
                    role: "assistant".into(),
                    content,
                    reasoning_content: (!c.reasoning.is_empty()).then_some(c.reasoning),
                    tool_calls,
                },
                finish_reason: finish.into(),
                logprobs,
            }
        })
        .collect();
    Json(ChatCompletion {
        id,
        object: "chat.completion".into(),
        created,
        model,
        choices,
        usage: total,
        timings: Some(timings),
    })
    .into_response()
}

/// Chat chunks: a first chunk with the role, one chunk per piece (content or reasoning, never
/// both), a finishing chunk with `finish_reason`, `usage` and `timings`, and with
/// `stream_options.include_usage` one more chunk with `choices: []` and `usage`.
///
/// With tools offered, the answer's text is held back until the end, where tool calls are parsed
/// out of it: then one content chunk (the text outside the calls, if any), one chunk per call
/// (`delta.tool_calls` with its index, id, name and whole arguments) and the finishing chunk
/// with `finish_reason: "tool_calls"`. Reasoning still streams as it comes.
struct ChatEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Tools offered: `Some(parallel_tool_calls)`, and the held-back answer.
    tools: Option<bool>,
    held: String,
    /// The choice's `index` (`n`).
    index: u32,
    /// Log probabilities waiting for the next chunk (that of their tokens' text).
    logprobs: Vec<TokenLogprob>,
}

impl ChatEncoder {
    /// A chunk that carries the log probabilities waiting, if any.
    fn chunk_with_logprobs(&mut self, delta: Delta, finish: Option<&str>) -> ChatCompletionChunk {
        let mut chunk = self.chunk(delta, finish);
        if !self.logprobs.is_empty() {
            chunk.choices[0].logprobs =
                Some(chat_logprobs_wire(&std::mem::take(&mut self.logprobs)));
        }
        chunk
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: self.index,
                delta,
                finish_reason: finish.map(str::to_owned),
                logprobs: None,
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
            ..Default::default()
        };
        vec![json(&self.chunk(delta, None))]
    }

    fn piece(&mut self, piece: Piece) -> Vec<Value> {
        if self.tools.is_some() && piece.channel == Channel::Content {
            self.held.push_str(&piece.text);
            return Vec::new();
        }
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
        vec![json(&self.chunk_with_logprobs(delta, None))]
    }

    fn logprobs(&mut self, entries: Vec<TokenLogprob>) -> Vec<Value> {
        self.logprobs.extend(entries);
        Vec::new()
    }

    fn done(&mut self, finished: &Finished) -> Vec<Value> {
        let mut out = Vec::new();
        let mut finish = finish_reason(finished.finish_reason);
        if let Some(parallel) = self.tools {
            let (text, calls) = chat::parse_tool_calls(&std::mem::take(&mut self.held));
            if !text.is_empty() {
                let delta = Delta {
                    content: Some(text),
                    ..Default::default()
                };
                // The held answer's tokens ride with its text.
                out.push(json(&self.chunk_with_logprobs(delta, None)));
            }
            if !calls.is_empty() {
                finish = "tool_calls";
            }
            for (index, mut call) in wire_tool_calls(calls, parallel).into_iter().enumerate() {
                call["index"] = index.into();
                let delta = Delta {
                    tool_calls: Some(vec![call]),
                    ..Default::default()
                };
                out.push(json(&self.chunk(delta, None)));
            }
        }
        out.extend(finishing(
            self.chunk_with_logprobs(Delta::default(), Some(finish)),
            self.include_usage
                .then(|| self.chunk(Delta::default(), None)),
            finished,
        ));
        out
    }

    fn error(&mut self, error: EngineError) -> Value {
        ApiError::from(error).body(Shape::OpenAi)
    }
}

/// One prompt of a text completion: the engine's input and, for token ids, the field they came
/// from (`prompt`, `prompt[1]`) with the ids as sent.
type TextPrompt = (PromptInput, Option<(String, Vec<i64>)>);

/// The prompts of a text completion, as engine inputs in order: text is tokenized as it is (no
/// template), token ids go to the model as they are. With the token arrays and the field each
/// came from (`prompt`, `prompt[1]`), for the vocabulary check.
///
/// # Errors
/// A 400 naming `prompt` for an empty list, an empty prompt of token ids, or more prompts than
/// [`MAX_CHOICES`].
fn completion_prompts(req: &CompletionRequest) -> Result<Vec<TextPrompt>, Response> {
    let prompts: Vec<TextPrompt> = match req.prompt.clone() {
        CompletionPrompt::One(p) => vec![(PromptInput::Raw(p), None)],
        CompletionPrompt::Many(v) => v.into_iter().map(|p| (PromptInput::Raw(p), None)).collect(),
        CompletionPrompt::Tokens(ids) => vec![token_prompt("prompt".into(), ids)?],
        CompletionPrompt::ManyTokens(v) => v
            .into_iter()
            .enumerate()
            .map(|(i, ids)| token_prompt(format!("prompt[{i}]"), ids))
            .collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() {
        return Err(invalid(
            Some("prompt"),
            "prompt is an empty list: give at least one prompt".into(),
        ));
    }
    if prompts.len() > MAX_CHOICES as usize {
        return Err(invalid(
            Some("prompt"),
            format!(
                "{} prompts are more than the {MAX_CHOICES} r1d answers per request",
                prompts.len()
            ),
        ));
    }
    Ok(prompts)
}

/// One prompt of token ids; ids that do not fit a token id (32-bit, llama.cpp's `llama_token`)
/// are left for [`answer::check_token_ids`] to refuse by name.
fn token_prompt(field: String, ids: Vec<i64>) -> Result<TextPrompt, Response> {
    if ids.is_empty() {
        return Err(invalid(
            Some(&field),
            format!("{field} is an empty list of token ids"),
        ));
    }
    let tokens = ids
        .iter()
        .map(|&id| i32::try_from(id).unwrap_or(-1))
        .collect();
    Ok((PromptInput::Tokens(tokens), Some((field, ids))))
}

async fn completions(State(state): State<AppState>, body: Body) -> Response {
    let req: CompletionRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let prompts = match completion_prompts(&req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Err(r) = refuse_unimplemented_completion(&req) {
        return r;
    }
    for (field, ids) in prompts.iter().filter_map(|(_, t)| t.as_ref()) {
        if let Err((param, message)) = answer::check_token_ids(&state.engine, field, ids) {
            return invalid(Some(&param), message);
        }
    }
    let n = req.n.unwrap_or(1).max(1);
    let total = prompts.len() as u32 * n;
    if total > MAX_CHOICES {
        return invalid(
            Some("n"),
            format!(
                "{} prompt(s) × n = {n} are {total} choices, more than the {MAX_CHOICES} r1d \
                 generates per request",
                prompts.len()
            ),
        );
    }
    let common = match common(
        &state,
        Knobs {
            model: req.model.as_deref(),
            n: req.n,
            // OpenAI's default for this route.
            max_tokens: Some(req.max_tokens.unwrap_or(16)),
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            min_p: req.min_p,
            seed: req.seed,
            stop: req.stop.clone(),
            stream_options: req.stream_options.as_ref(),
            stream: req.stream,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            logit_bias: req.logit_bias.as_ref(),
            logprobs: req.logprobs,
        },
    )
    .await
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    // Choice index = prompt × n + j (OpenAI's order); choice j of a prompt has its seed, when
    // one is set, moved by j, so that sampled choices differ.
    let jobs: Vec<(PromptInput, Sampling)> = prompts
        .into_iter()
        .flat_map(|(input, _)| {
            let sampling = common.sampling.clone();
            (0..n).map(move |j| {
                let mut sampling = sampling.clone();
                sampling.seed = sampling.seed.map(|seed| seed.wrapping_add(j));
                (input.clone(), sampling)
            })
        })
        .collect();
    let id = new_id("cmpl");
    let created = unix_now();
    let admitted = match admit_all(&state, jobs, ReasoningFormat::None).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let model = listed_or(&state, admitted[0].model.clone()).await;
    let encoder = |index: usize, include_usage: bool| CompletionEncoder {
        id: id.clone(),
        created,
        model: model.clone(),
        include_usage,
        index: index as u32,
        logprobs: Vec::new(),
        offset: 0,
    };
    if req.stream {
        if admitted.len() == 1 {
            let a = admitted.into_iter().next().expect("one answer");
            return sse(answer::encode(a.rx, encoder(0, common.include_usage)));
        }
        let streams = admitted
            .into_iter()
            .enumerate()
            .map(|(i, a)| answer::encode(a.rx, encoder(i, false)).boxed())
            .collect();
        let usage_chunk = json(&encoder(0, true).message(String::new(), None));
        return sse(merged(
            streams,
            n,
            common.include_usage.then_some(usage_chunk),
        ));
    }
    let all = match collect_all(admitted).await {
        Ok(all) => all,
        Err(e) => return fail(e),
    };
    let mut body = encoder(0, false).message(String::new(), None);
    body.choices = all
        .iter()
        .enumerate()
        .map(|(index, c)| CompletionChoice {
            text: c.content.clone(),
            index: index as u32,
            logprobs: req
                .logprobs
                .map(|_| completion_logprobs_wire(&c.logprobs, &mut 0)),
            finish_reason: Some(finish_reason(c.finished.finish_reason).into()),
        })
        .collect();
    body.usage = Some(summed_usage(
        all.iter().map(|c| usage(&c.finished.result)),
        n,
    ));
    body.timings = Some(timings(&all[0].finished.result));
    Json(body).into_response()
}

/// Admits every job (several prompts, `n` choices), side by side: each is its own sequence and
/// waits in the queue like a request of its own. The first is admitted as a single request is
/// (its refusal — no model, a prompt over the context, a load under way — is the response's
/// status); the others are queued at once and not waited for, because they may need the
/// sequences the first ones hold: with more jobs than `[server] parallel`, waiting for all of
/// them before reading any would leave the running ones unread until the stall timeout cancels
/// them. Their events, a refusal included, come on their receivers, which the caller reads
/// together.
///
/// # Errors
/// The first job's refusal, or the queue's for another (a full queue), in the OpenAI shape (the
/// answers already queued are cancelled when their receivers drop).
async fn admit_all(
    state: &AppState,
    jobs: Vec<(PromptInput, Sampling)>,
    format: ReasoningFormat,
) -> Result<Vec<answer::Admitted>, Response> {
    let engine = &state.engine;
    let mut jobs = jobs.into_iter();
    let Some((input, sampling)) = jobs.next() else {
        return Ok(Vec::new());
    };
    let first = answer::admit(engine, input, sampling, format)
        .await
        .map_err(fail)?;
    let model = first.model.clone();
    let mut admitted = vec![first];
    for (input, sampling) in jobs {
        let rx = engine.chat(input, sampling, format).map_err(fail)?;
        admitted.push(answer::Admitted {
            model: model.clone(),
            rx,
        });
    }
    Ok(admitted)
}

/// Reads every admitted answer to its end, all at once (none waits on an unread one).
async fn collect_all(
    admitted: Vec<answer::Admitted>,
) -> Result<Vec<answer::Collected>, EngineError> {
    futures_util::future::join_all(admitted.into_iter().map(|a| answer::collect(a.rx)))
        .await
        .into_iter()
        .collect()
}

/// The usage of several choices: the completions add up; each prompt is counted once (choices
/// `k·n` to `k·n + n − 1` share prompt `k`), as OpenAI counts `n` choices.
fn summed_usage(usages: impl Iterator<Item = Usage>, n: u32) -> Usage {
    let mut total = Usage::default();
    for (i, u) in usages.enumerate() {
        if i % n.max(1) as usize == 0 {
            total.prompt_tokens += u.prompt_tokens;
            if let Some(d) = u.prompt_tokens_details {
                let t = total
                    .prompt_tokens_details
                    .get_or_insert_with(Default::default);
                t.cached_tokens += d.cached_tokens;
            }
        }
        total.completion_tokens += u.completion_tokens;
        // Counted where every choice counts them.
        total.completion_tokens_details = match (
            i,
            total.completion_tokens_details,
            u.completion_tokens_details,
        ) {
            (0, _, d) => d,
            (_, Some(t), Some(d)) => Some(wire::CompletionTokensDetails {
                reasoning_tokens: t.reasoning_tokens + d.reasoning_tokens,
            }),
            _ => None,
        };
    }
    total.total_tokens = total.prompt_tokens + total.completion_tokens;
    total
}

/// Several streamed answers as one SSE stream: their chunks as they come (each carries its
/// choice's `index`), the usage taken off each finishing chunk and, when the client asked for it
/// (`stream_options.include_usage`), summed into one usage-only chunk (`usage_chunk`, its
/// `usage` replaced) before the one `[DONE]`. An answer that fails sends its error object and
/// the stream ends without `[DONE]`.
fn merged(
    streams: Vec<futures_util::stream::BoxStream<'static, Out>>,
    n: u32,
    usage_chunk: Option<Value>,
) -> impl futures_util::Stream<Item = Out> {
    struct State {
        all: futures_util::stream::SelectAll<futures_util::stream::BoxStream<'static, Out>>,
        expected: usize,
        ended: usize,
        usages: Vec<(u32, Usage)>,
        usage_chunk: Option<Value>,
        n: u32,
        finished: bool,
    }
    let state = State {
        expected: streams.len(),
        all: futures_util::stream::select_all(streams),
        ended: 0,
        usages: Vec::new(),
        usage_chunk,
        n,
        finished: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let out = match st.all.next().await {
            Some(Out::End) => {
                st.ended += 1;
                Vec::new()
            }
            Some(Out::Json(mut v)) => {
                if let Some(u) = v.as_object_mut().and_then(|o| o.remove("usage")) {
                    let index = v["choices"][0]["index"].as_u64().unwrap_or(0) as u32;
                    if let Ok(u) = serde_json::from_value::<Usage>(u) {
                        st.usages.push((index, u));
                    }
                }
                vec![Out::Json(v)]
            }
            None => {
                st.finished = true;
                if st.ended < st.expected {
                    // One failed: its error object was the last message; no [DONE].
                    return None;
                }
                let mut out = Vec::new();
                if let Some(mut chunk) = st.usage_chunk.take() {
                    st.usages.sort_by_key(|(i, _)| *i);
                    let total = summed_usage(st.usages.drain(..).map(|(_, u)| u), st.n);
                    chunk["choices"] = Value::Array(Vec::new());
                    chunk["usage"] = json(&total);
                    out.push(Out::Json(chunk));
                }
                out.push(Out::End);
                out
            }
        };
        Some((out, st))
    })
    .flat_map(futures_util::stream::iter)
}

/// Text-completion messages: one per piece, then a finishing one with `usage` and `timings`.
struct CompletionEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// The choice's `index`: prompt × n + choice.
    index: u32,
    /// Log probabilities waiting for the next message, and the byte offset of the next token
    /// in the choice's text (`text_offset`).
    logprobs: Vec<TokenLogprob>,
    offset: usize,
}

impl CompletionEncoder {
    /// A message that carries the log probabilities waiting, if any.
    fn message_with_logprobs(&mut self, text: String, finish: Option<&str>) -> Completion {
        let mut message = self.message(text, finish);
        if !self.logprobs.is_empty() {
            let entries = std::mem::take(&mut self.logprobs);
            message.choices[0].logprobs =
                Some(completion_logprobs_wire(&entries, &mut self.offset));
        }
        message
    }

    fn message(&self, text: String, finish: Option<&str>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![CompletionChoice {
                text,
                index: self.index,
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
    /// Removes `usage` (it goes in the usage-only chunk instead).
    fn drop_usage(&mut self);
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
    fn drop_usage(&mut self) {
        self.usage = None;
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
    fn drop_usage(&mut self) {
        self.usage = None;
    }
}

/// The last messages of a stream: `last` (the finish reason) with llama-server's timings, then,
/// when the client asked for it (`stream_options.include_usage`), `usage_only` as a chunk with no
/// choices and only the usage. Usage is in that extra chunk only, where OpenAI's reference puts
/// it, so a client that sums the usage of every chunk counts it once; without `include_usage` it
/// rides on the finishing chunk, as llama-server sends it.
fn finishing<C: StreamChunk>(
    mut last: C,
    usage_only: Option<C>,
    finished: &Finished,
) -> Vec<Value> {
    last.finish(usage(&finished.result), timings(&finished.result));
    if usage_only.is_some() {
        last.drop_usage();
    }
    let mut out = vec![json(&last)];
    if let Some(mut u) = usage_only {
        u.usage_only(usage(&finished.result));
        out.push(json(&u));
    }
    out
}

impl Encoder for CompletionEncoder {
    fn piece(&mut self, piece: Piece) -> Vec<Value> {
        vec![json(&self.message_with_logprobs(piece.text, None))]
    }

    fn logprobs(&mut self, entries: Vec<TokenLogprob>) -> Vec<Value> {
        self.logprobs.extend(entries);
        Vec::new()
    }

    fn done(&mut self, finished: &Finished) -> Vec<Value> {
        finishing(
            self.message_with_logprobs(String::new(), Some(finish_reason(finished.finish_reason))),
            self.include_usage
                .then(|| self.message(String::new(), None)),
            finished,
        )
    }

    fn error(&mut self, error: EngineError) -> Value {
        ApiError::from(error).body(Shape::OpenAi)
    }
}

/// Chat's `logprobs` object (`{"content": [...]}`) for `entries`.
fn chat_logprobs_wire(entries: &[TokenLogprob]) -> ChoiceLogprobs {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    ChoiceLogprobs {
        content: entries
            .iter()
            .map(|e| wire::TokenLogprob {
                token: text(&e.bytes),
                logprob: e.logprob,
                bytes: e.bytes.clone(),
                top_logprobs: e
                    .top
                    .iter()
                    .map(|(bytes, logprob)| wire::TopLogprob {
                        token: text(bytes),
                        logprob: *logprob,
                        bytes: bytes.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The legacy Completions `logprobs` object for `entries`: parallel arrays `tokens`,
/// `token_logprobs`, `top_logprobs` (one `{token: logprob}` map per position; tokens with the
/// same text keep the likelier) and `text_offset`, counted in bytes from `offset`, which moves
/// past the entries.
fn completion_logprobs_wire(entries: &[TokenLogprob], offset: &mut usize) -> Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut text_offset = Vec::new();
    for e in entries {
        tokens.push(text(&e.bytes));
        token_logprobs.push(e.logprob);
        let mut map = serde_json::Map::new();
        for (bytes, logprob) in &e.top {
            map.entry(text(bytes)).or_insert_with(|| (*logprob).into());
        }
        top.push(Value::Object(map));
        text_offset.push(*offset);
        *offset += e.bytes.len();
    }
    serde_json::json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

/// `GET /v1/models/{id}` (OpenAI's "retrieve model"): the resident model's entry when `id` is
/// any name r1d accepts for it (as `model` in a request; ids may hold `/`); otherwise a 404 in
/// the OpenAI shape saying what is served, or that nothing is.
async fn model(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let Json(list) = models(State(state.clone())).await;
    let Some(entry) = list.data.into_iter().next() else {
        return fail(ApiError::model_not_found(format!(
            "model {id:?} is not served here: no model is resident"
        )));
    };
    match answer::check_model(&state.control, Some(&id)).await {
        Ok(()) => Json(entry).into_response(),
        Err(message) => fail(ApiError::model_not_found(message)),
    }
}

/// `GET /v1/models`: the resident model, by the name `/api/tags` and `r1ctl models` list it
/// under (a name every route accepts; never the GGUF's free-text `general.name`).
async fn models(State(state): State<AppState>) -> Json<ModelList> {
    // While the first model loads (the request that socket activation started r1d for), the
    // answer waits for it, as a chat request would.
    state.engine.settled(state.engine.queue_deadline()).await;
    let snap = state.engine.snapshot();
    let listed = state.control.resident_names().await.map(|n| n.listed);
    let data = snap
        .model
        .as_ref()
        .map(|(info, _)| ModelEntry {
            id: listed.clone().unwrap_or_else(|| info.path.clone()),
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
