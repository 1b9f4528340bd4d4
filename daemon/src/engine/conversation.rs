//! Answers from a model that takes the conversation itself (the `remote` backend): no template,
//! no tokenizer here. The remote's deltas are put back into R1's raw text — reasoning inside
//! `<think>…</think>`, then the answer — and go through the same `Assembler` as a local model's
//! tokens, so the reasoning split, `reasoning_format`, `think: false` and stop strings behave
//! the same whichever way the remote returned the reasoning (`reasoning_content`, `reasoning`
//! or `<think>` text).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{
    deliver, Answer, ChatEvent, ChatJob, EngineError, FinishReason, Finished, GenerateResult,
    PromptInput, Undelivered,
};
use crate::backend::remote::{ConversationModel, ConversationRequest, Delta, Flow};
use crate::chat::{self, Assembler, ReasoningFormat};

/// The [`Assembler`] of a remote answer, made at its first text: only then is it known whether
/// the answer starts inside R1's reasoning. A remote that splits the reasoning sends it first
/// (`reasoning_content`, put back inside `<think>` here); one that leaves it in the text either
/// opens with `<think>` (its template did not) or, for R1 (`r1`), starts inside the reasoning
/// its template opened, `reasoning…</think>answer` — the same as a local R1 answer after a
/// prompt that ends with `<think>\n` ([`chat::ModelProfile::open_reasoning`]).
struct Lazy {
    r1: bool,
    stops: Vec<String>,
    format: ReasoningFormat,
    /// The first answer text, while it may still be the start of `<think>`.
    held: String,
    assembler: Option<Assembler>,
}

impl Lazy {
    /// The pieces of `text` (`reasoning`: it came as the remote's reasoning).
    fn push(&mut self, reasoning: bool, text: &str) -> Vec<chat::Piece> {
        if let Some(a) = self.assembler.as_mut() {
            return a.push(text.as_bytes());
        }
        self.held.push_str(text);
        let lead = self.held.trim_start();
        let opens = if reasoning || lead.starts_with(chat::THINK_OPEN) {
            false
        } else if chat::THINK_OPEN.starts_with(lead) {
            return Vec::new();
        } else {
            self.r1
        };
        let held = std::mem::take(&mut self.held);
        self.assembler
            .insert(Assembler::new(opens, self.stops.clone(), self.format))
            .push(held.as_bytes())
    }

    /// The pieces still held at the end.
    fn finish(&mut self) -> Vec<chat::Piece> {
        let held = std::mem::take(&mut self.held);
        let a = self
            .assembler
            .get_or_insert_with(|| Assembler::new(false, self.stops.clone(), self.format));
        let mut out = a.push(held.as_bytes());
        out.extend(a.finish());
        out
    }

    /// A stop string matched.
    fn stopped(&self) -> bool {
        self.assembler.as_ref().is_some_and(Assembler::stopped)
    }
}

impl Answer {
    /// Runs `job` on `remote`; the events are those of a local answer (`Started` once the
    /// remote accepted the request, so its refusals get their status code).
    pub(super) fn run_conversation(
        &self,
        remote: &dyn ConversationModel,
        name: String,
        opens_reasoning: bool,
        job: ChatJob,
    ) -> Result<(), EngineError> {
        let messages =
            match &job.input {
                PromptInput::Chat(messages) => messages,
                PromptInput::ChatWithTools { .. } => return Err(EngineError::InvalidRequest(
                    "tools: r1d does not pass tool definitions to a remote model yet; send the \
                     request without tools, or serve a local model"
                        .into(),
                )),
                PromptInput::Tokens(_) => {
                    return Err(EngineError::InvalidRequest(
                        "prompt: token ids cannot be sent to a remote model, whose tokenizer r1d \
                         does not know; send text"
                            .into(),
                    ))
                }
                PromptInput::After { .. } => {
                    return Err(EngineError::InvalidRequest(
                        "context: Ollama's context ids cannot be sent to a remote model, whose \
                         tokenizer r1d does not know; send the conversation with /api/chat"
                            .into(),
                    ))
                }
                PromptInput::Raw(_) => {
                    return Err(EngineError::InvalidRequest(
                        "a raw prompt (/v1/completions, /api/generate with raw or without a chat \
                     template) cannot be sent to a remote model, which applies its own template; \
                     use /v1/chat/completions or /api/chat"
                            .into(),
                    ))
                }
            };
        let request = ConversationRequest {
            messages,
            sampling: &job.sampling,
            max_tokens: job.sampling.max_tokens.or(self.config.default_max_tokens),
        };
        let stall = self.config.stall_timeout;
        let shared = self.shared.clone();
        let reply = job.reply.clone();
        let drop_reasoning = job.reasoning_format == ReasoningFormat::Off;
        let mut assembler = Lazy {
            r1: opens_reasoning,
            stops: job.sampling.stop.clone(),
            format: job.reasoning_format,
            held: String::new(),
            assembler: None,
        };
        let mut in_reasoning = false;
        let mut first_token_at: Option<Instant> = None;
        let mut client_gone = false;
        let mut stalled = false;
        let send = |piece: chat::Piece, client_gone: &mut bool, stalled: &mut bool| {
            if drop_reasoning && piece.channel == chat::Channel::Reasoning {
                return true;
            }
            match deliver(&shared, &reply, ChatEvent::Piece(piece), stall) {
                Ok(()) => true,
                Err(why) => {
                    *client_gone = true;
                    *stalled = why == Undelivered::Stalled;
                    false
                }
            }
        };
        let flow = |go: bool| if go { Flow::More } else { Flow::Stop };
        let result = remote.chat(&request, &mut |delta| {
            self.shared.beat();
            if self.shared.shutting_down.load(Ordering::SeqCst)
                || self.shared.preempting.load(Ordering::SeqCst)
            {
                return Flow::Stop;
            }
            let reasoning = matches!(delta, Some(Delta::Reasoning(_)));
            let text = match delta {
                None => {
                    client_gone = job.reply.is_closed();
                    return flow(!client_gone);
                }
                Some(Delta::Accepted) => {
                    let started = ChatEvent::Started {
                        model: name.clone(),
                        prompt_tokens: 0,
                    };
                    if deliver(&self.shared, &job.reply, started, stall).is_err() {
                        client_gone = true;
                        return Flow::Stop;
                    }
                    return Flow::More;
                }
                Some(Delta::Reasoning(t)) if !in_reasoning => {
                    in_reasoning = true;
                    format!("<think>{t}")
                }
                Some(Delta::Reasoning(t)) => t,
                Some(Delta::Content(t)) if in_reasoning => {
                    in_reasoning = false;
                    format!("{}{t}", chat::THINK_CLOSE)
                }
                Some(Delta::Content(t)) => t,
            };
            first_token_at.get_or_insert_with(Instant::now);
            for piece in assembler.push(reasoning, &text) {
                if !send(piece, &mut client_gone, &mut stalled) {
                    return Flow::Stop;
                }
            }
            if job.reply.is_closed() {
                client_gone = true;
                return Flow::Stop;
            }
            // A stop string matched here: no more text, but the remote's usage still counts.
            if assembler.stopped() {
                Flow::Drain
            } else {
                Flow::More
            }
        });
        let result: GenerateResult = result.map_err(|e| self.generation_error(e))?.into();
        self.interrupted()?;
        if stalled {
            tracing::warn!(
                "a client stopped reading its answer for {:.0} s ([server] stall_timeout_s); \
                 its request to the remote was cancelled",
                stall.as_secs_f64()
            );
            return Ok(());
        }
        if client_gone {
            tracing::debug!("client went away; the request to the remote was closed");
            return Ok(());
        }
        metrics::counter!(crate::telemetry::PROMPT_TOKENS)
            .increment(u64::from(result.prompt_tokens));
        metrics::counter!(crate::telemetry::GENERATED_TOKENS)
            .increment(u64::from(result.completion_tokens));
        let ttft = first_token_at.map(|t| t.duration_since(job.admitted));
        if let Some(ttft) = ttft {
            metrics::histogram!(crate::telemetry::TTFT).record(ttft.as_secs_f64());
        }
        crate::telemetry::update(job.stats.as_ref(), |s| {
            s.model = Some(name.clone());
            s.prompt_tokens = Some(result.prompt_tokens);
            s.generated_tokens = Some(result.completion_tokens);
            s.ttft = ttft;
        });
        for piece in assembler.finish() {
            if !send(piece, &mut client_gone, &mut stalled) {
                return Ok(());
            }
        }
        let finish_reason = if assembler.stopped() {
            FinishReason::Stop
        } else {
            match result.finish_reason {
                FinishReason::Cancelled => FinishReason::Stop,
                other => other,
            }
        };
        let mut result = result;
        result.time_to_first_token_ms = ttft.map(|t| t.as_secs_f64() * 1e3);
        let done = ChatEvent::Done(Finished {
            finish_reason,
            result,
            // A remote's token ids are its own and not sent back: no Ollama `context`.
            tokens: Vec::new(),
        });
        let _ = deliver(&self.shared, &job.reply, done, stall);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(r1: bool, deltas: &[(bool, &str)]) -> (String, String) {
        let mut lazy = Lazy {
            r1,
            stops: Vec::new(),
            format: ReasoningFormat::DeepSeek,
            held: String::new(),
            assembler: None,
        };
        let mut pieces = Vec::new();
        for (reasoning, text) in deltas {
            pieces.extend(lazy.push(*reasoning, text));
        }
        pieces.extend(lazy.finish());
        let of = |c: chat::Channel| {
            pieces
                .iter()
                .filter(|p| p.channel == c)
                .map(|p| p.text.as_str())
                .collect::<String>()
        };
        (of(chat::Channel::Reasoning), of(chat::Channel::Content))
    }

    #[test]
    fn an_r1_answer_that_starts_inside_its_reasoning_is_split_at_the_closing_tag() {
        // vLLM without a reasoning parser, after a template that opened `<think>`.
        assert_eq!(
            split(
                true,
                &[(false, "so"), (false, " then</think>"), (false, "\n\nyes")]
            ),
            ("so then".into(), "yes".into())
        );
        // The same text from a model that is not R1 stays the answer.
        assert_eq!(
            split(false, &[(false, "so</think>yes")]),
            (String::new(), "so</think>yes".into())
        );
        // An answer that opens `<think>` itself, even split across deltas.
        assert_eq!(
            split(true, &[(false, "<th"), (false, "ink>so</think>yes")]),
            ("so".into(), "yes".into())
        );
        // A remote that splits the reasoning sends it first (`<think>` put back by the caller).
        assert_eq!(
            split(true, &[(true, "<think>so"), (false, "</think>yes")]),
            ("so".into(), "yes".into())
        );
    }
}
