//! `POST /v1/responses`: OpenAI's Responses API, text in and out
//! (<https://platform.openai.com/docs/api-reference/responses/create>).
//!
//! `input` (a string or a list of messages) and `instructions` become a conversation rendered
//! with the model's own chat template, as `/v1/chat/completions` renders `messages`; the answer
//! is a `response` object whose `output` holds R1's reasoning as a `reasoning` item (its text in
//! `content[].reasoning_text`, as OpenAI documents for models with open reasoning) and the
//! answer as a `message` item with one `output_text` part. Streamed, the events are OpenAI's:
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.reasoning_text.delta`/`.done`, `response.content_part.added`,
//! `response.output_text.delta`/`.done`, `response.content_part.done`,
//! `response.output_item.done`, then `response.completed` (or `response.incomplete` when
//! `max_output_tokens` ended it), each an SSE event named by its `type`, with a
//! `sequence_number`; no `[DONE]`. r1d stores no responses: `previous_response_id`,
//! `conversation` and `background` are refused, as are tools, non-text formats and reasoning
//! options R1 cannot honour — each a 400 naming the field.

// Request checks return the finished error `Response` to send.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::StreamExt;
use r1d_client::wire::ResponsesRequest;
use serde_json::{json, Value};

use super::answer::{self, Encoder, Out};
use super::error::{ApiError, Body};
use super::http::AppState;
use super::openai::{common, fail, invalid, listed_or, new_id, parse, unix_now, Knobs};
use crate::chat::{Channel, Message, Piece, ReasoningFormat};
use crate::engine::{EngineError, FinishReason, Finished, PromptInput};

/// The Responses route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/responses", post(responses))
}

/// Refuses what r1d does not implement of the Responses API, naming the field and why; values
/// that mean "off" (`tools: []`, `tool_choice: "none"`, `text.format.type: "text"`) pass.
fn refuse_unimplemented(req: &ResponsesRequest) -> Result<(), Response> {
    let refuse = |param: &str, why: &str| Err(invalid(Some(param), format!("{param}: {why}")));
    if req.previous_response_id.is_some() {
        return refuse(
            "previous_response_id",
            "r1d stores no responses; send the conversation in input",
        );
    }
    if req.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return refuse(
            "conversation",
            "r1d stores no conversations; send the conversation in input",
        );
    }
    if req.background == Some(true) {
        return refuse(
            "background",
            "r1d does not run responses in the background; stream it instead",
        );
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return refuse(
            "tools",
            "tools are not supported on /v1/responses yet; use /v1/chat/completions with tools",
        );
    }
    match req.tool_choice.as_ref() {
        None | Some(Value::Null) => {}
        Some(Value::String(c)) if c == "auto" || c == "none" => {}
        Some(_) => {
            return refuse(
                "tool_choice",
                "only \"auto\" and \"none\" (there are no tools)",
            )
        }
    }
    if let Some(text) = req.text.as_ref().filter(|t| !t.is_null()) {
        let kind = text.pointer("/format/type").and_then(Value::as_str);
        let only_format = text
            .as_object()
            .is_some_and(|o| o.keys().all(|k| k == "format" || k == "verbosity"));
        if !(only_format && matches!(kind, None | Some("text"))) {
            return refuse(
                "text.format",
                "only {\"type\": \"text\"} is supported on /v1/responses; structured output is \
                 on /v1/chat/completions (response_format)",
            );
        }
        if text
            .get("verbosity")
            .is_some_and(|v| !v.is_null() && v != "medium")
        {
            return refuse(
                "text.verbosity",
                "R1 has no verbosity setting; leave it out or set \"medium\"",
            );
        }
    }
    if let Some(r) = req.reasoning.as_ref().filter(|r| !r.is_null()) {
        let set = r
            .as_object()
            .is_none_or(|o| o.values().any(|v| !v.is_null()));
        if set {
            return refuse(
                "reasoning",
                "R1 always reasons, with no effort levels, and writes no summaries; leave \
                 reasoning out (its reasoning comes as a reasoning output item)",
            );
        }
    }
    if req.include.as_ref().is_some_and(|i| !i.is_empty()) {
        return refuse("include", "r1d includes no extra output");
    }
    if req.truncation.as_deref().is_some_and(|t| t != "disabled") {
        return refuse(
            "truncation",
            "only \"disabled\": a prompt over the context is refused, never cut",
        );
    }
    if req.top_logprobs.is_some_and(|n| n > 0) {
        return refuse(
            "top_logprobs",
            "r1d does not return token log probabilities",
        );
    }
    Ok(())
}

/// The conversation of a Responses request: `instructions` as a system message, then `input`
/// (a string is one user message; a list holds messages — `type` `message` or absent — whose
/// `content` is a string or `input_text`/`output_text` parts). Earlier `reasoning` items are
/// skipped (not re-sent to the model, as `reasoning_content` on the chat route).
///
/// # Errors
/// A 400 naming the item or part at fault (`input[1].content[0]`): another item type, an
/// unknown role, a part that is not text.
fn conversation(req: &ResponsesRequest) -> Result<Vec<Message>, Response> {
    let mut messages = Vec::new();
    if let Some(system) = req.instructions.as_ref().filter(|s| !s.is_empty()) {
        messages.push(Message {
            role: "system".into(),
            content: system.clone(),
            ..Default::default()
        });
    }
    let items = match &req.input {
        Value::String(text) => {
            messages.push(Message {
                role: "user".into(),
                content: text.clone(),
                ..Default::default()
            });
            return Ok(messages);
        }
        Value::Array(items) => items,
        _ => {
            return Err(invalid(
                Some("input"),
                "input must be a string or a list of input items".into(),
            ))
        }
    };
    for (i, item) in items.iter().enumerate() {
        let field = format!("input[{i}]");
        match item.get("type").and_then(Value::as_str) {
            None | Some("message") => {}
            Some("reasoning") => continue,
            Some(other) => {
                return Err(invalid(
                    Some(&field),
                    format!(
                        "{field}: input items of type {other:?} are not supported; send messages \
                         (tools and stored items are not implemented on /v1/responses)"
                    ),
                ))
            }
        }
        let role = item.get("role").and_then(Value::as_str).unwrap_or_default();
        let role = match role {
            "user" | "assistant" | "system" => role,
            "developer" => "system",
            other => {
                return Err(invalid(
                    Some(&format!("{field}.role")),
                    format!(
                        "{field}.role {other:?} is not one of user, assistant, system, developer"
                    ),
                ))
            }
        };
        let content = match item.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match part.get("type").and_then(Value::as_str) {
                        Some("input_text" | "output_text" | "text") => {
                            text.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""))
                        }
                        kind => {
                            let param = format!("{field}.content[{j}]");
                            return Err(invalid(
                                Some(&param),
                                format!(
                                    "{param} is a {:?} part: r1d serves text-only models, which \
                                     cannot read it",
                                    kind.unwrap_or("untyped")
                                ),
                            ));
                        }
                    }
                }
                text
            }
            _ => {
                return Err(invalid(
                    Some(&format!("{field}.content")),
                    format!("{field}.content must be a string or a list of text parts"),
                ))
            }
        };
        messages.push(Message {
            role: role.to_owned(),
            content,
            ..Default::default()
        });
    }
    if !messages.iter().any(|m| m.role != "system") {
        return Err(invalid(
            Some("input"),
            "input holds no message to answer".into(),
        ));
    }
    Ok(messages)
}

async fn responses(State(state): State<AppState>, body: Body) -> Response {
    let req: ResponsesRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = refuse_unimplemented(&req) {
        return r;
    }
    let messages = match conversation(&req) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let common = match common(
        &state,
        Knobs {
            model: req.model.as_deref(),
            n: None,
            max_tokens: req.max_output_tokens,
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: None,
            min_p: None,
            seed: None,
            stop: None,
            stream_options: None,
            stream: req.stream,
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: None,
            // Refused above (`top_logprobs`, `include`): the Responses API's log
            // probabilities are not returned yet.
            logprobs: None,
        },
    )
    .await
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    let admitted = match answer::admit(
        &state.engine,
        PromptInput::Chat(messages),
        common.sampling,
        ReasoningFormat::DeepSeek,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let model = listed_or(&state, admitted.model).await;
    let mut shape = Shape {
        id: new_id("resp"),
        created_at: unix_now(),
        model,
        request: req.clone(),
        reasoning_id: new_id("rs"),
        message_id: new_id("msg"),
    };
    if req.stream {
        let encoder = Events {
            shape,
            sequence: 0,
            reasoning: None,
            message: None,
            output: Vec::new(),
        };
        let events = answer::encode(admitted.rx, encoder).filter_map(|out| {
            std::future::ready(match out {
                Out::Json(v) => {
                    let name = v["type"].as_str().unwrap_or("message").to_owned();
                    Some(Ok::<_, Infallible>(
                        Event::default().event(name).data(v.to_string()),
                    ))
                }
                // The Responses API ends its stream with the last event, no `[DONE]`.
                Out::End => None,
            })
        });
        return Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response();
    }
    match answer::collect(admitted.rx).await {
        Ok(c) => {
            let mut output = Vec::new();
            if !c.reasoning.is_empty() {
                output.push(shape.reasoning_item(&c.reasoning));
            }
            output.push(shape.message_item(&c.content, item_status(&c.finished)));
            shape.request.stream = false;
            Json(shape.response(Some(&c.finished), output)).into_response()
        }
        Err(e) => fail(e),
    }
}

/// The message item's `status`: `incomplete` when `max_output_tokens` cut it, as the response's
/// own (OpenAI marks both).
fn item_status(finished: &Finished) -> &'static str {
    match finished.finish_reason {
        FinishReason::Length => "incomplete",
        _ => "completed",
    }
}

/// What every object of one response repeats: ids, time, model and the request's settings.
struct Shape {
    id: String,
    created_at: u64,
    model: String,
    request: ResponsesRequest,
    reasoning_id: String,
    message_id: String,
}

impl Shape {
    /// The `response` object: `in_progress` without `finished`, else `completed` or
    /// `incomplete` (`max_output_tokens` reached) with `usage`.
    fn response(&self, finished: Option<&Finished>, output: Vec<Value>) -> Value {
        let r = &self.request;
        let (status, incomplete) = match finished.map(|f| f.finish_reason) {
            None => ("in_progress", Value::Null),
            Some(FinishReason::Length) => ("incomplete", json!({"reason": "max_output_tokens"})),
            Some(_) => ("completed", Value::Null),
        };
        let usage = finished.map_or(Value::Null, |f| {
            let u = &f.result;
            let mut usage = json!({
                "input_tokens": u.prompt_tokens,
                "input_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
                "output_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
            });
            // OpenAI's field; absent where r1d does not count them (a remote model).
            if let Some(n) = u.reasoning_tokens {
                usage["output_tokens_details"] = json!({ "reasoning_tokens": n });
            }
            usage
        });
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": r.parallel_tool_calls.unwrap_or(true),
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": false,
            "temperature": r.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": r.tool_choice.clone().unwrap_or_else(|| "auto".into()),
            "tools": [],
            "top_p": r.top_p,
            "truncation": "disabled",
            "usage": usage,
            "metadata": {},
        })
    }

    /// R1's reasoning as an output item (its text whole, or `""` while it streams).
    fn reasoning_item(&self, text: &str) -> Value {
        json!({
            "type": "reasoning",
            "id": self.reasoning_id,
            "summary": [],
            "content": [{"type": "reasoning_text", "text": text}],
        })
    }

    /// The answer as a `message` output item with one `output_text` part.
    fn message_item(&self, text: &str, status: &str) -> Value {
        let content = if status == "in_progress" {
            Vec::new()
        } else {
            vec![Self::text_part(text)]
        };
        json!({
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": content,
        })
    }

    fn text_part(text: &str) -> Value {
        json!({"type": "output_text", "text": text, "annotations": []})
    }
}

/// The streamed events of one response. Output index 0 is the reasoning item when there is
/// reasoning, the message the next; the message is opened at the first piece of the answer (or
/// at the end, empty, when there was none), which closes the reasoning item.
struct Events {
    shape: Shape,
    sequence: u64,
    /// The reasoning so far, while its item is open.
    reasoning: Option<String>,
    /// The answer so far, while its item is open.
    message: Option<String>,
    /// Items done, for the final `response`.
    output: Vec<Value>,
}

impl Events {
    fn event(&mut self, kind: &str, mut fields: Value) -> Value {
        fields["type"] = kind.into();
        fields["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        fields
    }

    fn close_reasoning(&mut self, out: &mut Vec<Value>) {
        if let Some(text) = self.reasoning.take() {
            let index = self.output.len();
            let id = self.shape.reasoning_id.clone();
            out.push(self.event(
                "response.reasoning_text.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
            ));
            let item = self.shape.reasoning_item(&text);
            out.push(self.event(
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            ));
            self.output.push(item);
        }
    }

    fn open_message(&mut self, out: &mut Vec<Value>) {
        if self.message.is_some() {
            return;
        }
        self.close_reasoning(out);
        let index = self.output.len();
        let item = self.shape.message_item("", "in_progress");
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        let id = self.shape.message_id.clone();
        out.push(self.event(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                   "part": Shape::text_part("")}),
        ));
        self.message = Some(String::new());
    }
}

impl Encoder for Events {
    fn start(&mut self) -> Vec<Value> {
        let response = self.shape.response(None, Vec::new());
        vec![
            self.event("response.created", json!({"response": response.clone()})),
            self.event("response.in_progress", json!({"response": response})),
        ]
    }

    fn piece(&mut self, piece: Piece) -> Vec<Value> {
        let mut out = Vec::new();
        match piece.channel {
            Channel::Reasoning if self.message.is_none() => {
                let index = self.output.len();
                if self.reasoning.is_none() {
                    let item = self.shape.reasoning_item("");
                    out.push(self.event(
                        "response.output_item.added",
                        json!({"output_index": index, "item": item}),
                    ));
                    self.reasoning = Some(String::new());
                }
                if let Some(r) = self.reasoning.as_mut() {
                    r.push_str(&piece.text);
                }
                let id = self.shape.reasoning_id.clone();
                out.push(self.event(
                    "response.reasoning_text.delta",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "delta": piece.text}),
                ));
            }
            // Reasoning after the answer began (a model that reasons again) and the answer both
            // go to the message.
            _ => {
                self.open_message(&mut out);
                if let Some(m) = self.message.as_mut() {
                    m.push_str(&piece.text);
                }
                let index = self.output.len();
                let id = self.shape.message_id.clone();
                out.push(self.event(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "delta": piece.text, "logprobs": []}),
                ));
            }
        }
        out
    }

    fn done(&mut self, finished: &Finished) -> Vec<Value> {
        let mut out = Vec::new();
        self.open_message(&mut out);
        let text = self.message.take().unwrap_or_default();
        let index = self.output.len();
        let id = self.shape.message_id.clone();
        out.push(self.event(
            "response.output_text.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "text": text,
                   "logprobs": []}),
        ));
        out.push(self.event(
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                   "part": Shape::text_part(&text)}),
        ));
        let item = self.shape.message_item(&text, item_status(finished));
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        self.output.push(item);
        let response = self
            .shape
            .response(Some(finished), std::mem::take(&mut self.output));
        let kind = if response["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push(self.event(kind, json!({ "response": response })));
        out
    }

    fn error(&mut self, error: EngineError) -> Value {
        let e = ApiError::from(error);
        let body = e.body(super::error::Shape::OpenAi);
        self.event(
            "error",
            json!({"code": body["error"]["code"], "message": body["error"]["message"],
                   "param": body["error"]["param"]}),
        )
    }
}
