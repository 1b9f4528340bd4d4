//! Prompts and streamed text: the model's own chat template (Jinja, rendered with minijinja), and
//! the assembler that turns raw token bytes into UTF-8 text, splits R1's reasoning from its answer
//! and applies stop strings.
//!
//! **Architecture invariant**: knows neither HTTP nor the plugin ABI; pure functions over strings.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

/// Errors rendering a prompt.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The model's template does not compile or fails to render (it may raise on purpose, e.g.
    /// "Conversation roles must alternate").
    #[error("failed to render the model's chat template: {0}")]
    Template(String),
    /// Tools were given but the model's template never renders a tool list.
    #[error(
        "tools: the chat template of this model has no tool support (it never renders `tools`); \
         leave tools out"
    )]
    NoToolSupport,
}

/// One message given to the template.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// Text content.
    pub content: String,
    /// An assistant turn's tool calls, in OpenAI's shape (`[{"id", "type": "function",
    /// "function": {"name", "arguments"}}]`), as templates expect them. Left out of the template's
    /// view when absent, so `message.tool_calls is defined` means what it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` turn's answer to the call with this id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// One tool call parsed from a model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as JSON text (OpenAI's `function.arguments` is a string).
    pub arguments: String,
}

/// Whether `template` renders a tool list: it reads the `tools` variable (static analysis with
/// minijinja; a template that never looks at `tools` would drop them silently).
pub fn supports_tools(template: &str) -> bool {
    let env = Environment::new();
    env.template_from_str(template)
        .is_ok_and(|t| t.undeclared_variables(false).contains("tools"))
}

/// Splits tool calls off a model's answer, in the two formats the templates r1d serves teach:
/// Hermes/Qwen's `<tool_call>{"name": …, "arguments": {…}}</tool_call>` and DeepSeek's
/// `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>`.
/// Returns the text outside the calls (trimmed) and the calls in order; a block that does not
/// parse stays in the text.
pub fn parse_tool_calls(answer: &str) -> (String, Vec<ToolCall>) {
    let mut calls = Vec::new();
    let mut text = String::new();
    let mut rest = answer;
    const HERMES: (&str, &str) = ("<tool_call>", "</tool_call>");
    const DEEPSEEK: (&str, &str) = ("<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>");
    loop {
        let next = [HERMES, DEEPSEEK]
            .into_iter()
            .filter_map(|(open, close)| rest.find(open).map(|at| (at, open, close)))
            .min_by_key(|(at, _, _)| *at);
        let Some((at, open, close)) = next else { break };
        let body_start = at + open.len();
        let Some(len) = rest[body_start..].find(close) else {
            break;
        };
        let body = &rest[body_start..body_start + len];
        let call = if open == HERMES.0 {
            hermes_call(body)
        } else {
            deepseek_call(body)
        };
        match call {
            Some(call) => {
                text.push_str(&rest[..at]);
                calls.push(call);
            }
            None => text.push_str(&rest[..body_start + len + close.len()]),
        }
        rest = &rest[body_start + len + close.len()..];
    }
    text.push_str(rest);
    let text = text
        .replace("<｜tool▁calls▁begin｜>", "")
        .replace("<｜tool▁calls▁end｜>", "");
    (text.trim().to_owned(), calls)
}

fn hermes_call(body: &str) -> Option<ToolCall> {
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_owned();
    let arguments = match v.get("arguments") {
        None => "{}".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some(ToolCall { name, arguments })
}

fn deepseek_call(body: &str) -> Option<ToolCall> {
    let (_kind, rest) = body.split_once("<｜tool▁sep｜>")?;
    let (name, args) = rest.split_once('\n')?;
    let args = args
        .trim()
        .trim_start_matches("```json")
        .trim_end_matches("```");
    let v: serde_json::Value = serde_json::from_str(args.trim()).ok()?;
    Some(ToolCall {
        name: name.trim().to_owned(),
        arguments: v.to_string(),
    })
}

/// ChatML, used when a model carries no template of its own (the format of Qwen and SmolLM).
pub const FALLBACK_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A rendered prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The text to tokenize (with special tokens as text).
    pub text: String,
    /// True when the text already starts with the BOS token's text, so the tokenizer must not add
    /// another one (BOS appears exactly once).
    pub has_bos: bool,
    /// True when the prompt ends inside an opened `<think>` block (R1's template opens the
    /// reasoning itself), so the generation starts in the reasoning channel.
    pub opens_reasoning: bool,
    /// True when the conversation ends with an assistant message that the generation continues
    /// (a prefill): the prompt ends with that message's text, with no new generation prompt.
    pub continues: bool,
}

/// Renders `messages` with `template` as Hugging Face's `apply_chat_template` does: Jinja with
/// `trim_blocks` and `lstrip_blocks` (transformers `chat_template_utils.py`), Python string methods
/// (minijinja-contrib `pycompat`: R1's template calls `.split`), `raise_exception`, and the
/// variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`.
///
/// # Errors
/// [`ChatError::Template`] when the template does not compile or raises.
pub fn render(
    template: &str,
    messages: &[Message],
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<Prompt, ChatError> {
    render_with_tools(template, messages, None, bos_token, eos_token)
}

/// [`render`] with OpenAI's `tools` (function definitions) given to the template as `tools`, as
/// transformers' `apply_chat_template(tools=…)` does.
///
/// # Errors
/// [`ChatError::NoToolSupport`] when `tools` is given and the template never reads it;
/// [`ChatError::Template`] as [`render`].
pub fn render_with_tools(
    template: &str,
    messages: &[Message],
    tools: Option<&serde_json::Value>,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<Prompt, ChatError> {
    if tools.is_some() && !supports_tools(template) {
        return Err(ChatError::NoToolSupport);
    }
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("default delimiters are valid"),
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |format: String| -> String {
        // Templates use it for "today's date"; r1d does not leak the clock into prompts
        // differently per format, so only the common ISO form is honoured.
        let _ = format;
        String::new()
    });
    let tmpl = env
        .template_from_str(template)
        .map_err(|e| ChatError::Template(e.to_string()))?;
    // A final assistant message is a prefill: the answer continues it (Ollama does this for a
    // trailing assistant message; vLLM calls it `continue_final_message`). The template renders
    // it as a finished turn without a generation prompt; the text is cut after the message's own
    // content (after its reasoning, which R1's template leaves out of earlier turns).
    let prefill = messages
        .last()
        .filter(|m| m.role == "assistant")
        .map(|m| {
            m.content
                .rsplit("</think>")
                .next()
                .unwrap_or("")
                .trim_end()
                .to_owned()
        })
        .filter(|tail| !tail.is_empty());
    let mut text = tmpl
        .render(context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => prefill.is_none(),
            tools => tools.map(|t| minijinja::Value::from(minijinja::value::Serde(t))),
            bos_token => bos_token.unwrap_or(""),
            eos_token => eos_token.unwrap_or(""),
        })
        .map_err(|e| ChatError::Template(e.to_string()))?;
    if let Some(tail) = &prefill {
        let Some(at) = text.rfind(tail.as_str()) else {
            return Err(ChatError::Template(
                "the final assistant message cannot be continued: the chat template does not \
                 render its text as it is"
                    .into(),
            ));
        };
        text.truncate(at + tail.len());
    }
    let has_bos = bos_token.is_some_and(|b| !b.is_empty() && text.starts_with(b));
    let trimmed = text.trim_end();
    let opens_reasoning = prefill.is_none() && trimmed.ends_with("<think>");
    Ok(Prompt {
        text,
        has_bos,
        opens_reasoning,
        continues: prefill.is_some(),
    })
}

/// How a model is talked to: whether it reasons in `<think>` blocks, whether it is a DeepSeek-R1
/// variant (whose recommendations then apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelProfile {
    /// A DeepSeek-R1 variant, recognised by its GGUF `general.name`/basename ("DeepSeek R1 Distill
    /// Qwen 7B", "DeepSeek-R1-0528-Qwen3-8B", …).
    pub deepseek_r1: bool,
    /// Emits reasoning in `<think>…</think>` (R1, or a template that handles `</think>`).
    pub reasoning: bool,
}

/// Sampling used when a request sets none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingDefaults {
    /// Temperature.
    pub temperature: f32,
    /// Nucleus threshold.
    pub top_p: f32,
    /// Top-k (0 = off).
    pub top_k: i32,
    /// Min-p (0 = off).
    pub min_p: f32,
}

impl ModelProfile {
    /// The profile of a loaded model, from its name and chat template.
    pub fn of(info: &crate::engine::ModelInfo) -> ModelProfile {
        let name = info.name.as_deref().unwrap_or(&info.path).to_lowercase();
        let deepseek_r1 = name.contains("deepseek") && name.contains("r1");
        let template_reasons = info
            .chat_template
            .as_deref()
            .is_some_and(|t| t.contains("</think>"));
        ModelProfile {
            deepseek_r1,
            reasoning: deepseek_r1 || template_reasons,
        }
    }

    /// DeepSeek's recommended sampling for R1 (model cards of the DeepSeek-R1 distills, "Usage
    /// Recommendations": temperature 0.5–0.7, 0.6 recommended; top-p 0.95); llama.cpp's defaults
    /// for other models (`common/common.h`, `common_params_sampling`: temperature 0.8, top-k 40,
    /// top-p 0.95, min-p 0.05).
    pub fn sampling_defaults(&self) -> SamplingDefaults {
        if self.deepseek_r1 {
            SamplingDefaults {
                temperature: 0.6,
                top_p: 0.95,
                top_k: 0,
                min_p: 0.0,
            }
        } else {
            SamplingDefaults {
                temperature: 0.8,
                top_p: 0.95,
                top_k: 40,
                min_p: 0.05,
            }
        }
    }

    /// For R1, makes the prompt end with `<think>\n`: DeepSeek recommends "enforcing the model to
    /// initiate its response with `<think>\n`" (R1 model cards, "Usage Recommendations"), and
    /// R1's later templates end that way; the original template ends with the assistant tag alone.
    pub fn open_reasoning(&self, prompt: &mut Prompt) {
        if self.deepseek_r1 && !prompt.opens_reasoning && !prompt.continues {
            prompt.text.push_str("<think>\n");
            prompt.opens_reasoning = true;
        }
    }

    /// For `think: false`: a reasoning model's prompt ends with an empty, closed `<think>` block
    /// (closing the one the template opened, if it did), so the model answers without reasoning.
    pub fn skip_reasoning(&self, prompt: &mut Prompt) {
        if prompt.continues || !self.reasoning {
            return;
        }
        if prompt.opens_reasoning {
            let open = prompt.text.trim_end().len();
            prompt.text.truncate(open);
            prompt.text.push_str("\n\n</think>\n\n");
        } else {
            prompt.text.push_str("<think>\n\n</think>\n\n");
        }
        prompt.opens_reasoning = false;
    }
}

/// How reasoning is returned (llama-server's `reasoning_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReasoningFormat {
    /// Split: reasoning in its own channel, answer in content, no tags in either.
    #[default]
    DeepSeek,
    /// Raw text in content, with the opening `<think>` restored when the prompt opened it, so the
    /// tags always pair.
    None,
    /// No reasoning (Ollama's `think: false`): R1's prompt ends with an empty, closed
    /// `<think>` block so the model answers at once, and any reasoning it emits anyway is dropped.
    Off,
}

/// Which channel a piece of text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The answer (`content`).
    Content,
    /// R1's reasoning (`reasoning_content`).
    Reasoning,
}

/// A piece of decoded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Where it goes.
    pub channel: Channel,
    /// The text (never empty).
    pub text: String,
}

/// Length of the start of a UTF-8 character at the end of `bytes` that more bytes could still
/// complete (0 when the bytes end on a character boundary or in invalid bytes).
fn incomplete_tail(bytes: &[u8]) -> usize {
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(_) => return 0,
            Err(e) => match e.error_len() {
                Some(bad) => rest = &rest[e.valid_up_to() + bad..],
                None => return rest.len() - e.valid_up_to(),
            },
        }
    }
}

/// The tag that opens R1's reasoning.
pub const THINK_OPEN: &str = "<think>";
/// The tag that ends R1's reasoning (the answer follows it).
pub const THINK_CLOSE: &str = "</think>";

/// Turns raw token bytes into text pieces.
///
/// - UTF-8: bytes of a character split across tokens are held until the character is complete.
/// - Reasoning: in the reasoning channel until `</think>`; the tags themselves are never emitted,
///   and the newlines R1 puts after `</think>` are dropped. A `<think>` at the very start of the
///   answer (templates that do not open it) also enters the reasoning channel.
/// - Stop strings: text that could be the beginning of a stop string is held back; when a stop
///   string completes, the text before it is emitted, the rest is dropped and [`Assembler::stopped`]
///   turns true. No emitted piece ever contains the beginning of a stop string that then matched.
#[derive(Debug)]
pub struct Assembler {
    bytes: Vec<u8>,
    pending: String,
    channel: Channel,
    content_started: bool,
    trim_next: bool,
    stops: Vec<String>,
    stopped: bool,
    /// Bytes pushed so far.
    pushed: usize,
    /// Where in the pushed bytes the stop string that matched begins.
    stop_at: Option<usize>,
}

impl Assembler {
    /// A new assembler; `opens_reasoning` from [`Prompt::opens_reasoning`].
    pub fn new(opens_reasoning: bool, stops: Vec<String>, format: ReasoningFormat) -> Self {
        let raw = format == ReasoningFormat::None;
        Assembler {
            bytes: Vec::new(),
            // Raw: the opening tag the prompt consumed is given back, so the tags pair.
            pending: if raw && opens_reasoning {
                "<think>\n".into()
            } else {
                String::new()
            },
            channel: if opens_reasoning && !raw {
                Channel::Reasoning
            } else {
                Channel::Content
            },
            content_started: raw,
            trim_next: false,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            stopped: false,
            pushed: 0,
            stop_at: None,
        }
    }

    /// How many of the pushed bytes are settled: emitted, or consumed as a tag, and no longer
    /// held back (at most up to the start of the stop string that matched). A token whose bytes
    /// end at or before it is part of what the client received. (Invalid UTF-8 counts as the
    /// 3 bytes of its U+FFFD, so after one this may lag a little.)
    pub fn settled_bytes(&self) -> usize {
        self.stop_at.unwrap_or_else(|| {
            self.pushed
                .saturating_sub(self.bytes.len() + self.pending.len())
        })
    }

    /// True while the text pushed is R1's reasoning (split off; never with the raw format).
    pub fn in_reasoning(&self) -> bool {
        self.channel == Channel::Reasoning
    }

    /// True once a stop string matched; feed no more.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds the bytes of one token and returns the pieces that are now certain.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Piece> {
        if self.stopped {
            return Vec::new();
        }
        self.pushed += bytes.len();
        self.bytes.extend_from_slice(bytes);
        // Invalid bytes (not just incomplete) become U+FFFD, as `String::from_utf8_lossy` decodes
        // the whole text; a character still incomplete at the end is held for the next token.
        let complete = self.bytes.len() - incomplete_tail(&self.bytes);
        let text = String::from_utf8_lossy(&self.bytes[..complete]).into_owned();
        self.bytes.drain(..complete);
        self.pending.push_str(&text);
        self.drain(false)
    }

    /// Flushes what is held back at the end of the generation (nothing once a stop string
    /// matched: the bytes still held then came after it). The bytes still held are the start of
    /// a character the generation never completed (cut by `max_tokens` mid-character): they are
    /// dropped, as llama-server's `validate_utf8` drops them, rather than sent as a U+FFFD the
    /// model never produced.
    pub fn finish(&mut self) -> Vec<Piece> {
        self.bytes.clear();
        if self.stopped {
            return Vec::new();
        }
        self.drain(true)
    }

    fn emit(&mut self, out: &mut Vec<Piece>, mut text: String) {
        if self.trim_next {
            let trimmed = text.trim_start_matches(['\n', '\r']);
            if trimmed.is_empty() {
                return;
            }
            text = trimmed.to_owned();
            self.trim_next = false;
        }
        if text.is_empty() {
            return;
        }
        if self.channel == Channel::Content {
            self.content_started = true;
        }
        match out.last_mut() {
            Some(last) if last.channel == self.channel => last.text.push_str(&text),
            _ => out.push(Piece {
                channel: self.channel,
                text,
            }),
        }
    }

    fn drain(&mut self, at_end: bool) -> Vec<Piece> {
        let mut out = Vec::new();
        // A stop string anywhere in what is pending ends everything: keep only the text before it.
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            // `pending` may start with text that was never pushed (the raw format's restored
            // `<think>\n`), which the signed sum cancels; a U+FFFD standing for fewer invalid
            // bytes can still put it a little late, hence the clamp.
            let at =
                self.pushed as i64 - (self.bytes.len() + self.pending.len()) as i64 + pos as i64;
            self.stop_at = Some(at.clamp(0, self.pushed as i64) as usize);
            self.pending.truncate(pos);
            self.stopped = true;
        }
        while self.consume_tag(&mut out) {}
        // Emit all but a held-back tail that could start a stop string or a tag.
        let hold = if at_end || self.stopped {
            0
        } else {
            self.holdback()
        };
        let cut = self.pending.len() - hold;
        if cut > 0 {
            let text: String = self.pending.drain(..cut).collect();
            self.emit(&mut out, text);
        }
        out
    }

    /// Consumes one reasoning tag in `pending`, emitting the text before it; false when none.
    fn consume_tag(&mut self, out: &mut Vec<Piece>) -> bool {
        match self.channel {
            Channel::Reasoning => {
                let Some(pos) = self.pending.find(THINK_CLOSE) else {
                    return false;
                };
                let before: String = self.pending[..pos].to_owned();
                self.pending.drain(..pos + THINK_CLOSE.len());
                self.emit(out, before);
                self.channel = Channel::Content;
                self.trim_next = true;
                true
            }
            Channel::Content => {
                let lead = self.pending.trim_start();
                if self.content_started || !lead.starts_with(THINK_OPEN) {
                    return false;
                }
                let skip = self.pending.len() - lead.len() + THINK_OPEN.len();
                self.pending.drain(..skip);
                self.channel = Channel::Reasoning;
                self.trim_next = true;
                true
            }
        }
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of a stop string
    /// or of the tag that could come next.
    fn holdback(&self) -> usize {
        let mut patterns: Vec<&str> = self.stops.iter().map(String::as_str).collect();
        match self.channel {
            Channel::Reasoning => patterns.push(THINK_CLOSE),
            Channel::Content if !self.content_started => {
                // Hold everything while the answer could still open with `<think>`.
                let lead = self.pending.trim_start();
                if THINK_OPEN.starts_with(lead) {
                    return self.pending.len();
                }
            }
            Channel::Content => {}
        }
        let mut best = 0;
        for pattern in patterns {
            for (i, _) in self.pending.char_indices() {
                let suffix = &self.pending[i..];
                if suffix.len() < pattern.len() && pattern.starts_with(suffix) {
                    best = best.max(suffix.len());
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(opens: bool, stops: &[&str], tokens: &[&[u8]]) -> (Vec<Piece>, bool) {
        let mut a = Assembler::new(
            opens,
            stops.iter().map(|s| s.to_string()).collect(),
            ReasoningFormat::DeepSeek,
        );
        let mut out = Vec::new();
        for t in tokens {
            out.extend(a.push(t));
            if a.stopped() {
                break;
            }
        }
        out.extend(a.finish());
        (out, a.stopped())
    }

    fn text(pieces: &[Piece], channel: Channel) -> String {
        pieces
            .iter()
            .filter(|p| p.channel == channel)
            .map(|p| p.text.as_str())
            .collect()
    }

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            ..Default::default()
        }
    }

    fn r1() -> ModelProfile {
        ModelProfile {
            deepseek_r1: true,
            reasoning: true,
        }
    }

    /// R1's published template, reduced to what prefill depends on: earlier assistant turns lose
    /// their reasoning, each turn ends with the end-of-sentence token.
    const R1_LIKE: &str = "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}<｜User｜>{{ m.content }}{% elif m.role == 'assistant' %}<｜Assistant｜>{{ m.content.split('</think>')[-1] }}<｜end▁of▁sentence｜>{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜>{% endif %}";

    #[test]
    fn a_final_assistant_message_is_continued_not_closed() {
        let messages = [msg("user", "Count to five."), msg("assistant", "One, two,")];
        let mut p = render(FALLBACK_TEMPLATE, &messages, None, None).unwrap();
        assert_eq!(
            p.text,
            "<|im_start|>user\nCount to five.<|im_end|>\n<|im_start|>assistant\nOne, two,"
        );
        assert!(p.continues && !p.opens_reasoning);
        // R1 continues the answer, not a new reasoning block.
        r1().open_reasoning(&mut p);
        assert!(p.text.ends_with("One, two,"));
        let p = render(R1_LIKE, &messages, Some("<s>"), None).unwrap();
        assert_eq!(
            p.text,
            "<s><｜User｜>Count to five.<｜Assistant｜>One, two,"
        );
        // An assistant turn that is not last is closed as before.
        let p = render(
            R1_LIKE,
            &[msg("assistant", "Hi"), msg("user", "Go")],
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            p.text,
            "<｜Assistant｜>Hi<｜end▁of▁sentence｜><｜User｜>Go<｜Assistant｜>"
        );
        assert!(!p.continues);
        // An empty final assistant message asks for a new answer.
        let p = render(
            R1_LIKE,
            &[msg("user", "Go"), msg("assistant", "")],
            None,
            None,
        )
        .unwrap();
        assert!(
            p.text.ends_with("<｜end▁of▁sentence｜><｜Assistant｜>"),
            "{}",
            p.text
        );
        assert!(!p.continues);
    }

    #[test]
    fn think_off_ends_r1s_prompt_with_an_empty_closed_think_block() {
        let mut p = render(R1_LIKE, &[msg("user", "Hi")], None, None).unwrap();
        r1().skip_reasoning(&mut p);
        assert_eq!(p.text, "<｜User｜>Hi<｜Assistant｜><think>\n\n</think>\n\n");
        assert!(!p.opens_reasoning);
        // A template that opens the block itself gets it closed.
        let opening = format!("{R1_LIKE}<think>\n");
        let mut p = render(&opening, &[msg("user", "Hi")], None, None).unwrap();
        assert!(p.opens_reasoning);
        r1().skip_reasoning(&mut p);
        assert!(p.text.ends_with("<think>\n\n</think>\n\n"), "{}", p.text);
        assert!(!p.opens_reasoning);
        // A model that does not reason is left alone.
        let mut p = render(FALLBACK_TEMPLATE, &[msg("user", "Hi")], None, None).unwrap();
        let before = p.text.clone();
        ModelProfile {
            deepseek_r1: false,
            reasoning: false,
        }
        .skip_reasoning(&mut p);
        assert_eq!(p.text, before);
    }

    #[test]
    fn utf8_split_across_tokens_is_joined() {
        let euro = "€".as_bytes();
        let (out, _) = run(false, &[], &[b"a", &euro[..1], &euro[1..], b"b"]);
        assert_eq!(text(&out, Channel::Content), "a€b");
        assert!(out.iter().all(|p| !p.text.contains('\u{fffd}')));
    }

    #[test]
    fn reasoning_then_content_with_tag_inside_one_piece() {
        let (out, _) = run(true, &[], &[b"I think", b" so.</think>\n\nThe", b" answer"]);
        assert_eq!(text(&out, Channel::Reasoning), "I think so.");
        assert_eq!(text(&out, Channel::Content), "The answer");
    }

    #[test]
    fn close_tag_split_across_tokens() {
        let (out, _) = run(true, &[], &[b"x</th", b"ink>", b"y"]);
        assert_eq!(text(&out, Channel::Reasoning), "x");
        assert_eq!(text(&out, Channel::Content), "y");
    }

    #[test]
    fn answer_opening_with_think_goes_to_reasoning() {
        let (out, _) = run(false, &[], &[b"<think>", b"\nhmm", b"</think>", b"ok"]);
        assert_eq!(text(&out, Channel::Reasoning), "hmm");
        assert_eq!(text(&out, Channel::Content), "ok");
    }

    #[test]
    fn raw_format_restores_the_opening_tag_and_keeps_everything_in_content() {
        let mut a = Assembler::new(true, vec![], ReasoningFormat::None);
        let mut out = Vec::new();
        for t in ["hmm", "</think>", "\n\nok"] {
            out.extend(a.push(t.as_bytes()));
        }
        out.extend(a.finish());
        assert!(out.iter().all(|p| p.channel == Channel::Content));
        assert_eq!(text(&out, Channel::Content), "<think>\nhmm</think>\n\nok");
    }

    #[test]
    fn unclosed_reasoning_stays_reasoning_and_is_flushed() {
        let (out, _) = run(true, &[], &[b"still", b" thinking</th"]);
        assert_eq!(text(&out, Channel::Reasoning), "still thinking</th");
        assert_eq!(text(&out, Channel::Content), "");
    }

    /// Found by the `assembler` fuzz target: the first byte of a multi-byte character held back
    /// when a stop string matched came out of `finish` as U+FFFD, after the stop.
    #[test]
    fn nothing_after_a_stop_string_comes_out_of_finish_not_even_a_held_back_byte() {
        let mut a = Assembler::new(true, vec!["k".into()], ReasoningFormat::None);
        let mut out = a.push(&[0xF2]);
        assert!(a.stopped());
        out.extend(a.finish());
        assert_eq!(text(&out, Channel::Content), "<thin");
        let (out, stopped) = run(false, &["STOP"], &[b"ok STOP\xE2\x82"]);
        assert!(stopped);
        assert_eq!(text(&out, Channel::Content), "ok ");
    }

    /// Found by a user: an answer cut by `max_tokens` in the middle of an emoji ended with a
    /// U+FFFD the model never produced; the incomplete character is dropped.
    #[test]
    fn a_character_the_generation_never_completed_is_dropped_not_replaced() {
        let star = "🌟".as_bytes();
        let (out, _) = run(false, &[], &[star, &star[..2]]);
        assert_eq!(text(&out, Channel::Content), "🌟");
        // An invalid byte in the middle is still shown as U+FFFD.
        let (out, _) = run(false, &[], &[&[0xFF], b"ok"]);
        assert_eq!(text(&out, Channel::Content), "\u{FFFD}ok");
    }

    /// Found by the `assembler` fuzz target: an invalid byte before the first byte of a split
    /// character made the whole held buffer decode lossily, so the character, completed by the
    /// next token, came out as two U+FFFD instead of itself.
    #[test]
    fn a_character_split_after_an_invalid_byte_is_still_joined() {
        let (out, _) = run(false, &[], &[&[0xFF, 0xC5], &[0x82]]);
        assert_eq!(text(&out, Channel::Content), "\u{FFFD}ł");
        let (out, _) = run(false, &[], &[b"a\xE2", &[0x82, 0xFF, 0xE2, 0x82], &[0xAC]]);
        assert_eq!(text(&out, Channel::Content), "a\u{FFFD}\u{FFFD}€");
        assert_eq!(incomplete_tail(b"ok\xF0\x9F"), 2);
        assert_eq!(incomplete_tail(b"ok\xFF"), 0);
        assert_eq!(incomplete_tail("é".as_bytes()), 0);
    }

    #[test]
    fn plain_answer_stays_content() {
        let (out, stopped) = run(false, &[], &[b"Hello", b" world"]);
        // One piece per token: nothing is held back when no stop string or tag can start.
        assert_eq!(
            out,
            vec![
                Piece {
                    channel: Channel::Content,
                    text: "Hello".into()
                },
                Piece {
                    channel: Channel::Content,
                    text: " world".into()
                }
            ]
        );
        assert!(!stopped);
    }

    #[test]
    fn multi_token_stop_string_stops_and_is_never_shown() {
        let mut a = Assembler::new(false, vec!["END HERE".into()], ReasoningFormat::DeepSeek);
        let mut shown = String::new();
        for t in ["one ", "END", " HE", "RE more"] {
            for p in a.push(t.as_bytes()) {
                shown.push_str(&p.text);
            }
            if a.stopped() {
                break;
            }
        }
        assert!(a.stopped());
        assert_eq!(shown, "one ");
    }

    #[test]
    fn partial_stop_prefix_is_released_when_it_does_not_match() {
        let (out, stopped) = run(false, &["STOP"], &[b"ST", b"ART"]);
        assert_eq!(text(&out, Channel::Content), "START");
        assert!(!stopped);
    }

    #[test]
    fn r1_template_renders_one_bos_and_opens_reasoning() {
        // A reduced form of DeepSeek-R1's template: BOS, roles, drops reasoning of old turns,
        // ends with `<think>\n`.
        let t = "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}<｜User｜>{{ m.content }}{% else %}{% set c = m.content %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}<｜Assistant｜>{{ c }}<｜end▁of▁sentence｜>{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}";
        let msgs = vec![
            Message {
                role: "user".into(),
                content: "Hi".into(),
                ..Default::default()
            },
            Message {
                role: "assistant".into(),
                content: "<think>\nnotes-42\n</think>\n\nHello!".into(),
                ..Default::default()
            },
            Message {
                role: "user".into(),
                content: "And now?".into(),
                ..Default::default()
            },
        ];
        let p = render(t, &msgs, Some("<｜begin▁of▁sentence｜>"), None).unwrap();
        assert!(p.has_bos);
        assert_eq!(p.text.matches("<｜begin▁of▁sentence｜>").count(), 1);
        assert!(!p.text.contains("notes-42"));
        assert!(p.text.ends_with("<｜Assistant｜><think>\n"));
        assert!(p.opens_reasoning);
    }

    #[test]
    fn raise_exception_becomes_a_template_error() {
        let err = render(
            "{{ raise_exception('roles must alternate') }}",
            &[],
            None,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    #[test]
    fn tool_calls_are_parsed_in_hermes_and_deepseek_formats() {
        let (text, calls) = parse_tool_calls(
            "ok <tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>\
             <tool_call>{\"name\": \"g\"}</tool_call>",
        );
        assert_eq!(text, "ok");
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("f", "{\"a\":1}")
        );
        assert_eq!(
            (calls[1].name.as_str(), calls[1].arguments.as_str()),
            ("g", "{}")
        );
        let (text, calls) = parse_tool_calls(
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>h\n```json\n{\"b\": 2}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        );
        assert_eq!(text, "");
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("h", "{\"b\":2}")
        );
        // A block that is not a call stays text.
        let (text, calls) = parse_tool_calls("<tool_call>not json</tool_call>");
        assert_eq!(text, "<tool_call>not json</tool_call>");
        assert!(calls.is_empty());
    }

    #[test]
    fn tool_support_is_whether_the_template_reads_tools() {
        assert!(supports_tools(
            "{% if tools %}{{ tools | tojson }}{% endif %}"
        ));
        assert!(!supports_tools(FALLBACK_TEMPLATE));
        let err = render_with_tools(
            FALLBACK_TEMPLATE,
            &[msg("user", "hi")],
            Some(&serde_json::json!([])),
            None,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, ChatError::NoToolSupport));
    }

    #[test]
    fn settled_bytes_trail_what_is_held_back_and_stop_at_the_stop_string() {
        let mut a = Assembler::new(true, vec!["STOP".into()], ReasoningFormat::DeepSeek);
        a.push(b"think ");
        // "</thi" could be the start of the closing tag: held.
        a.push(b"</thi");
        assert_eq!(a.settled_bytes(), 6);
        a.push(b"nk>\n\nAns");
        assert_eq!(a.settled_bytes(), 6 + 5 + 8);
        // "ST" could start the stop string: held.
        a.push(b"wer ST");
        assert_eq!(a.settled_bytes(), 6 + 5 + 8 + 4);
        a.push(b"OP more");
        assert!(a.stopped());
        // Settled up to where the stop string starts, whatever came after it.
        assert_eq!(a.settled_bytes(), 6 + 5 + 8 + 4);
        let mut b = Assembler::new(false, Vec::new(), ReasoningFormat::DeepSeek);
        b.push(&"é".as_bytes()[..1]);
        assert_eq!(b.settled_bytes(), 0);
        b.finish();
        assert_eq!(b.settled_bytes(), 1);
    }
}
