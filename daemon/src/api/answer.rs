//! What every answering route shares, whatever its wire shape: admitting a request to the engine,
//! checking the model name and sampling values, collecting a whole answer, and turning the event
//! stream into encoded messages (SSE for OpenAI, NDJSON for Ollama).

use futures_util::stream::{self, Stream, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::chat::{Channel, Piece, ReasoningFormat};
use crate::control::{Control, NameMatch};
use crate::engine::{
    ChatEvent, Engine, EngineError, EngineState, Finished, PromptInput, Sampling, TokenLogprob,
};

/// The `Retry-After` of a request that waited out the queue deadline during a load or swap
/// (seconds): a guess, loads of the variants r1d plans take from seconds to minutes.
pub const RETRY_AFTER_S: u64 = 10;

/// A request the engine accepted: its prompt fits and generation is under way.
pub struct Admitted {
    /// Name of the model answering.
    pub model: String,
    /// The rest of the events.
    pub rx: mpsc::Receiver<ChatEvent>,
}

/// Queues a request and waits until the engine accepted it (`Started`) or refused it. A refusal
/// (no model, prompt over the context, template error) arrives here, before any byte of an answer
/// is sent, so routes can answer with a proper status code.
///
/// # Errors
/// The engine's refusal.
pub async fn admit(
    engine: &Engine,
    input: PromptInput,
    sampling: Sampling,
    format: ReasoningFormat,
) -> Result<Admitted, EngineError> {
    let mut rx = engine.chat(input, sampling, format)?;
    // While a model is being loaded or swapped (or a swap waits behind running answers), a
    // request waits up to the queue deadline; then
    // it leaves the queue (dropping `rx` cancels it) with 503 and Retry-After. Behind a running
    // answer on a resident model it waits as long as it takes.
    let first = loop {
        // At least 100 ms a round, so a deadline of 0 does not spin behind a running answer.
        let round = engine
            .queue_deadline()
            .max(std::time::Duration::from_millis(100));
        match tokio::time::timeout(round, rx.recv()).await {
            Ok(event) => break event,
            Err(_) => {
                let snap = engine.snapshot();
                let what = match snap.state {
                    EngineState::Loading => "loaded",
                    EngineState::Swapping => "swapped",
                    // A swap waits behind the running answers: this request waits for it.
                    _ if snap.queued_load.is_some() => "swapped",
                    _ => continue,
                };
                return Err(EngineError::Unavailable {
                    what,
                    retry_after_s: RETRY_AFTER_S,
                });
            }
        }
    };
    match first {
        Some(ChatEvent::Started { model, .. }) => Ok(Admitted { model, rx }),
        Some(ChatEvent::Failed(e)) => Err(e),
        _ => Err(EngineError::Backend(
            "the engine ended the request without an answer".into(),
        )),
    }
}

/// A whole answer.
pub struct Collected {
    /// The answer text.
    pub content: String,
    /// The reasoning text (empty when there was none).
    pub reasoning: String,
    /// Log probabilities of the tokens, when asked for ([`Sampling::logprobs`]); else empty.
    pub logprobs: Vec<TokenLogprob>,
    /// How it ended, with usage and timings.
    pub finished: Finished,
}

/// Reads an admitted answer to its end.
///
/// # Errors
/// A failure during generation (backend error, shutdown).
pub async fn collect(mut rx: mpsc::Receiver<ChatEvent>) -> Result<Collected, EngineError> {
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut logprobs = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            ChatEvent::Logprobs(entries) => logprobs.extend(entries),
            ChatEvent::Piece(p) => match p.channel {
                Channel::Content => content.push_str(&p.text),
                Channel::Reasoning => reasoning.push_str(&p.text),
            },
            ChatEvent::Done(finished) => {
                return Ok(Collected {
                    content,
                    reasoning,
                    logprobs,
                    finished,
                })
            }
            ChatEvent::Failed(e) => return Err(e),
            ChatEvent::Started { .. } => {}
        }
    }
    Err(EngineError::Backend(
        "the generation ended without a result".into(),
    ))
}

/// Turns the events of one answer into a wire format's messages.
pub trait Encoder: Send + 'static {
    /// Messages before the first piece (e.g. OpenAI's role chunk).
    fn start(&mut self) -> Vec<Value> {
        Vec::new()
    }
    /// One piece of text.
    fn piece(&mut self, piece: Piece) -> Vec<Value>;
    /// Log probabilities of the tokens whose text comes next (they precede the pieces holding
    /// it): an encoder that reports them keeps them for its next message. Only sent when the
    /// route asked for them; the default drops them.
    fn logprobs(&mut self, entries: Vec<TokenLogprob>) -> Vec<Value> {
        let _ = entries;
        Vec::new()
    }
    /// The end: finish reason, usage, timings.
    fn done(&mut self, finished: &Finished) -> Vec<Value>;
    /// A failure mid-answer (the last message), in the route family's error shape.
    fn error(&mut self, error: EngineError) -> Value;
}

/// One encoded message of a streamed answer.
pub enum Out {
    /// A JSON message.
    Json(Value),
    /// The answer ended normally (OpenAI then sends `data: [DONE]`); not sent after an error.
    End,
}

/// The encoded stream of an admitted answer. The encoder's first messages (OpenAI's role chunk)
/// go out together with the first piece (or the end), not before: benchmark clients take the
/// first chunk for the first token, and the prompt may still be processing. Dropping the stream
/// drops the receiver, which stops the generation at its next token.
pub fn encode<E: Encoder>(rx: mpsc::Receiver<ChatEvent>, encoder: E) -> impl Stream<Item = Out> {
    enum Phase {
        First,
        Streaming,
        Finished,
    }
    fn handle<E: Encoder>(enc: &mut E, event: Option<ChatEvent>) -> (Vec<Out>, Phase) {
        match event {
            Some(ChatEvent::Piece(p)) => (
                enc.piece(p).into_iter().map(Out::Json).collect(),
                Phase::Streaming,
            ),
            Some(ChatEvent::Started { .. }) => (Vec::new(), Phase::Streaming),
            Some(ChatEvent::Logprobs(entries)) => (
                enc.logprobs(entries).into_iter().map(Out::Json).collect(),
                Phase::Streaming,
            ),
            Some(ChatEvent::Done(finished)) => {
                let mut out: Vec<Out> = enc.done(&finished).into_iter().map(Out::Json).collect();
                out.push(Out::End);
                (out, Phase::Finished)
            }
            Some(ChatEvent::Failed(e)) => {
                tracing::warn!("request failed mid-stream: {e}");
                (vec![Out::Json(enc.error(e))], Phase::Finished)
            }
            None => {
                let e = EngineError::Backend("the generation ended without a result".into());
                (vec![Out::Json(enc.error(e))], Phase::Finished)
            }
        }
    }
    stream::unfold(
        (rx, encoder, Phase::First),
        |(mut rx, mut enc, phase)| async move {
            let (out, next) = match phase {
                Phase::First => {
                    let event = rx.recv().await;
                    let mut out: Vec<Out> = enc.start().into_iter().map(Out::Json).collect();
                    let (rest, next) = handle(&mut enc, event);
                    out.extend(rest);
                    (out, next)
                }
                Phase::Streaming => handle(&mut enc, rx.recv().await),
                Phase::Finished => return None,
            };
            Some((out, (rx, enc, next)))
        },
    )
    .flat_map(stream::iter)
}

/// Checks that a requested model name names the resident model: any name r1d lists it by
/// (`/api/tags`, `/v1/models`, `r1ctl models`), its catalog variant (`deepseek-r1:7b`), its GGUF
/// `general.name`, file name, stem or path, with or without `:latest`, case-insensitively. An
/// absent or empty name means "the resident model". With no model resident the engine answers
/// instead (503 with the reason). A model on disk that is not resident is not loaded on the way:
/// the message says how to make it resident.
///
/// # Errors
/// A message naming the requested and the served model, and what to do.
pub async fn check_model(control: &Control, requested: Option<&str>) -> Result<(), String> {
    let served = || async {
        control
            .resident_names()
            .await
            .map(|n| n.listed)
            .unwrap_or_default()
    };
    match control.match_name(requested).await {
        NameMatch::Resident => Ok(()),
        NameMatch::NotResident { name } => Err(format!(
            "model {:?} is {} but not loaded; r1d serves {:?}. Make it resident with \
             `r1ctl use {name}` (POST /r1/use, D-Bus Use), or omit \"model\"",
            requested.unwrap_or_default(),
            if name.starts_with(crate::backend::remote::PATH_PREFIX) {
                "a configured [[remote]]"
            } else {
                "on disk"
            },
            served().await
        )),
        NameMatch::Unknown => Err(format!(
            "model {:?} is not served here; r1d serves {:?} (or omit \"model\"); `r1ctl models` \
             lists the models on disk",
            requested.unwrap_or_default(),
            served().await
        )),
    }
}

/// Token ids a client sent (a token-array prompt, Ollama's `context`) against the resident
/// model's vocabulary, so that the refusal names the field (`prompt[2]`, `context[0]`); the
/// engine checks them again against the model that answers. `field` is the field's name.
///
/// # Errors
/// `(param, message)` for the first id below 0 or at or past the vocabulary size.
pub fn check_token_ids(
    engine: &crate::engine::Engine,
    field: &str,
    ids: &[i64],
) -> Result<(), (String, String)> {
    let vocab = engine
        .snapshot()
        .model
        .map_or(u32::MAX, |(info, _)| info.vocab_size);
    match ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id < 0 || id >= i64::from(vocab) || id > i64::from(i32::MAX))
    {
        None => Ok(()),
        Some((i, id)) => Err((
            format!("{field}[{i}]"),
            format!("{field}[{i}]: {id} is not a token id in the vocabulary of {vocab} tokens"),
        )),
    }
}

/// Whose documented ranges a route checks sampling values against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranges {
    /// OpenAI's API reference (Chat Completions / Completions): temperature 0–2, top_p 0–1,
    /// presence and frequency penalty −2 to 2, logit_bias −100 to 100.
    OpenAi,
    /// Ollama's API and Modelfile docs, which give no upper bounds: temperature ≥ 0, top_p 0–1,
    /// repeat_penalty > 0 (llama.cpp divides by it), repeat_last_n ≥ −1.
    Ollama,
}

/// Checks sampling values against the documented ranges (docs/api-fields.md has the table).
///
/// # Errors
/// The parameter's name and what is wrong with it.
pub fn validate_sampling(s: &Sampling, ranges: Ranges) -> Result<(), (&'static str, String)> {
    let openai = ranges == Ranges::OpenAi;
    if let Some(t) = s.temperature {
        if openai {
            if !(0.0..=2.0).contains(&t) {
                return Err(("temperature", format!("temperature {t} is outside 0 to 2")));
            }
        } else if t < 0.0 || !t.is_finite() {
            return Err((
                "temperature",
                format!("temperature {t} must not be negative"),
            ));
        }
    }
    // OpenAI documents top_p in [0, 1]; 0 keeps only the most likely token.
    if let Some(p) = s.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(("top_p", format!("top_p {p} is outside 0 to 1")));
        }
    }
    if let Some(p) = s.min_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(("min_p", format!("min_p {p} is outside 0 to 1")));
        }
    }
    if s.top_k.is_some_and(|k| k < 0) {
        return Err(("top_k", "top_k must not be negative".into()));
    }
    if s.max_tokens == Some(0) {
        return Err(("max_tokens", "max_tokens must be at least 1".into()));
    }
    for (name, value) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        let Some(v) = value else { continue };
        if openai && !(-2.0..=2.0).contains(&v) {
            return Err((name, format!("{name} {v} is outside -2 to 2")));
        }
        if !v.is_finite() {
            return Err((name, format!("{name} must be a finite number")));
        }
    }
    if let Some(r) = s.repeat_penalty {
        if !(r > 0.0 && r.is_finite()) {
            return Err((
                "repeat_penalty",
                format!("repeat_penalty {r} must be greater than 0 (1 = off)"),
            ));
        }
    }
    if let Some(n) = s.repeat_last_n {
        if n < -1 {
            return Err((
                "repeat_last_n",
                format!("repeat_last_n {n} must be -1 (the context), 0 (off) or more"),
            ));
        }
    }
    if let Some((id, b)) = s
        .logit_bias
        .iter()
        .find(|(_, b)| !(-100.0..=100.0).contains(b))
    {
        return Err((
            "logit_bias",
            format!("logit_bias for token {id} is {b}, outside -100 to 100"),
        ));
    }
    Ok(())
}

/// Roles the templates understand.
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];

/// The JSON Schema of "any JSON object": OpenAI's `response_format: {"type": "json_object"}` and
/// Ollama's `format: "json"` (Ollama constrains that to an object too).
pub const ANY_JSON_OBJECT: &str = r#"{"type":"object"}"#;

/// OpenAI's `response_format` as the JSON Schema (JSON text) the answer must follow: `text` →
/// none; `json_object` → any object; `json_schema` → `json_schema.schema` (any JSON value when
/// it has none). `strict` is accepted either way: the answer is always constrained to the schema,
/// which is what `strict: true` asks for and more than `strict: false` promises.
///
/// # Errors
/// The field to name (`response_format…`) and why, for a 400.
pub fn openai_response_format(format: &Value) -> Result<Option<String>, (String, String)> {
    let bad = |param: &str, why: String| Err((param.to_owned(), why));
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ANY_JSON_OBJECT.to_owned())),
        Some("json_schema") => {
            let Some(spec) = format.get("json_schema").filter(|s| s.is_object()) else {
                return bad(
                    "response_format.json_schema",
                    "response_format of type \"json_schema\" needs a json_schema object \
                     ({\"name\": …, \"schema\": {…}})"
                        .into(),
                );
            };
            if let Some(strict) = spec
                .get("strict")
                .filter(|s| !s.is_null() && !s.is_boolean())
            {
                return bad(
                    "response_format.json_schema.strict",
                    format!("response_format.json_schema.strict must be a boolean, got {strict}"),
                );
            }
            match spec.get("schema") {
                None | Some(Value::Null) => Ok(Some("{}".to_owned())),
                Some(schema @ (Value::Object(_) | Value::Bool(true))) => {
                    Ok(Some(schema.to_string()))
                }
                Some(other) => bad(
                    "response_format.json_schema.schema",
                    format!("response_format.json_schema.schema must be a JSON Schema object, got {other}"),
                ),
            }
        }
        Some(other) => bad(
            "response_format",
            format!("response_format type {other:?} is not one of text, json_object, json_schema"),
        ),
        None => bad(
            "response_format",
            format!("response_format {format} has no type (text, json_object or json_schema)"),
        ),
    }
}

/// Ollama's `format` as the JSON Schema (JSON text) the answer must follow: absent, `null` or
/// `""` → none; `"json"` → any object; an object → that schema.
///
/// # Errors
/// Why the value is refused, for a 400 naming `format`.
pub fn ollama_format(format: Option<&Value>) -> Result<Option<String>, String> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(ANY_JSON_OBJECT.to_owned())),
        Some(schema @ Value::Object(_)) => Ok(Some(schema.to_string())),
        Some(other) => Err(format!(
            "format {other} is not \"json\" or a JSON Schema object"
        )),
    }
}

/// The most `top_logprobs` a request may ask for: OpenAI's chat reference (0 to 20), which
/// Ollama's `api/types.go` follows.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// A request's `logprobs` / `top_logprobs` (chat on OpenAI's and Ollama's routes) as
/// [`Sampling::logprobs`]: `Some(top_logprobs)` with `logprobs: true`, `None` without.
///
/// # Errors
/// `(param, message)` naming `top_logprobs` above 20, or set above 0 without `logprobs: true`
/// (OpenAI: "logprobs must be set to true if this parameter is used").
pub fn logprobs_asked(
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
) -> Result<Option<u32>, (&'static str, String)> {
    let top = top_logprobs.unwrap_or(0);
    if top > MAX_TOP_LOGPROBS {
        return Err((
            "top_logprobs",
            format!("top_logprobs = {top} is above {MAX_TOP_LOGPROBS}, OpenAI's limit"),
        ));
    }
    match logprobs {
        Some(true) => Ok(Some(top)),
        _ if top > 0 => Err(("top_logprobs", "top_logprobs needs logprobs: true".into())),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod structured_output_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_response_formats_become_schemas_or_are_refused_by_name() {
        let ok = |v: Value| openai_response_format(&v).unwrap();
        let refused = |v: Value| openai_response_format(&v).unwrap_err().0;
        assert_eq!(ok(json!({"type": "text"})), None);
        assert_eq!(
            ok(json!({"type": "json_object"})).as_deref(),
            Some(ANY_JSON_OBJECT)
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            ok(
                json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": schema}})
            ),
            Some(schema.to_string())
        );
        assert_eq!(refused(json!({"type": "yaml"})), "response_format");
        assert_eq!(
            refused(json!({"type": "json_schema"})),
            "response_format.json_schema"
        );
        assert_eq!(
            refused(json!({"type": "json_schema", "json_schema": {"schema": 3}})),
            "response_format.json_schema.schema"
        );
        assert_eq!(
            refused(json!({"type": "json_schema", "json_schema": {"strict": "yes"}})),
            "response_format.json_schema.strict"
        );
    }

    #[test]
    fn ollama_formats_become_schemas_or_are_refused() {
        assert_eq!(ollama_format(None).unwrap(), None);
        assert_eq!(ollama_format(Some(&json!(""))).unwrap(), None);
        assert_eq!(
            ollama_format(Some(&json!("json"))).unwrap().as_deref(),
            Some(ANY_JSON_OBJECT)
        );
        assert_eq!(
            ollama_format(Some(&json!({"type": "array"})))
                .unwrap()
                .as_deref(),
            Some(r#"{"type":"array"}"#)
        );
        assert!(ollama_format(Some(&json!("yaml"))).is_err());
        assert!(ollama_format(Some(&json!(5))).is_err());
    }
}
