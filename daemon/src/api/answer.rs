//! What every answering route shares, whatever its wire shape: admitting a request to the engine,
//! checking the model name and sampling values, collecting a whole answer, and turning the event
//! stream into encoded messages (SSE for OpenAI, NDJSON for Ollama).

use futures_util::stream::{self, Stream, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::chat::{Channel, Piece, ReasoningFormat};
use crate::engine::{
    ChatEvent, Engine, EngineError, EngineState, Finished, PromptInput, Sampling, Snapshot,
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
    while let Some(event) = rx.recv().await {
        match event {
            ChatEvent::Piece(p) => match p.channel {
                Channel::Content => content.push_str(&p.text),
                Channel::Reasoning => reasoning.push_str(&p.text),
            },
            ChatEvent::Done(finished) => {
                return Ok(Collected {
                    content,
                    reasoning,
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

/// The encoded stream of an admitted answer. Dropping it drops the receiver, which stops the
/// generation at its next token.
pub fn encode<E: Encoder>(rx: mpsc::Receiver<ChatEvent>, encoder: E) -> impl Stream<Item = Out> {
    enum Phase {
        First,
        Streaming,
        Finished,
    }
    stream::unfold(
        (rx, encoder, Phase::First),
        |(mut rx, mut enc, phase)| async move {
            let (out, next) = match phase {
                Phase::First => (
                    enc.start().into_iter().map(Out::Json).collect(),
                    Phase::Streaming,
                ),
                Phase::Streaming => match rx.recv().await {
                    Some(ChatEvent::Piece(p)) => (
                        enc.piece(p).into_iter().map(Out::Json).collect(),
                        Phase::Streaming,
                    ),
                    Some(ChatEvent::Started { .. }) => (Vec::new(), Phase::Streaming),
                    Some(ChatEvent::Done(finished)) => {
                        let mut out: Vec<Out> =
                            enc.done(&finished).into_iter().map(Out::Json).collect();
                        out.push(Out::End);
                        (out, Phase::Finished)
                    }
                    Some(ChatEvent::Failed(e)) => {
                        tracing::warn!("request failed mid-stream: {e}");
                        (vec![Out::Json(enc.error(e))], Phase::Finished)
                    }
                    None => {
                        let e =
                            EngineError::Backend("the generation ended without a result".into());
                        (vec![Out::Json(enc.error(e))], Phase::Finished)
                    }
                },
                Phase::Finished => return None,
            };
            Some((out, (rx, enc, next)))
        },
    )
    .flat_map(stream::iter)
}

/// Checks that a requested model name is the resident model (its name, file name, file stem or
/// path, case-insensitively); an absent or empty name means "the resident model". With no model
/// resident the engine answers instead (503 with the reason).
///
/// # Errors
/// A message naming the requested and the served model.
pub fn check_model(snapshot: &Snapshot, requested: Option<&str>) -> Result<(), String> {
    let Some(requested) = requested.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let Some((info, _)) = &snapshot.model else {
        return Ok(());
    };
    let path = std::path::Path::new(&info.path);
    let mut names: Vec<String> = vec![info.path.clone()];
    names.extend(info.name.clone());
    names.extend(path.file_name().map(|n| n.to_string_lossy().into_owned()));
    names.extend(path.file_stem().map(|n| n.to_string_lossy().into_owned()));
    if names.iter().any(|n| n.eq_ignore_ascii_case(requested)) {
        return Ok(());
    }
    Err(format!(
        "model {requested:?} is not served here; r1d serves {:?} (or omit \"model\")",
        info.name.as_deref().unwrap_or(&info.path)
    ))
}

/// Checks sampling values against their ranges (OpenAI's: temperature 0–2, top-p in (0, 1]).
///
/// # Errors
/// The parameter's name and what is wrong with it.
pub fn validate_sampling(s: &Sampling) -> Result<(), (&'static str, String)> {
    if let Some(t) = s.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(("temperature", format!("temperature {t} is outside 0 to 2")));
        }
    }
    if let Some(p) = s.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(("top_p", format!("top_p {p} is outside (0, 1]")));
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
    Ok(())
}

/// Roles the templates understand.
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];
