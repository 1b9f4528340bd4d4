//! JSON shapes of r1d's HTTP API.
//!
//! OpenAI shapes follow the OpenAI Chat Completions API reference (`/v1/chat/completions`,
//! `chat.completion` and `chat.completion.chunk` objects); `reasoning_content` and `timings` are
//! the extensions DeepSeek's API and llama.cpp's `llama-server` use. Native shapes (`/r1/*`,
//! `/health`) are r1d's own. Request fields that change the answer are all named here, so the
//! daemon honours each or refuses it (docs/api-fields.md); unknown fields that do not change the
//! answer (`user`, `metadata`, `store`, …) are ignored. Absent optional fields in responses are
//! omitted.

use serde::{Deserialize, Serialize};

/// A chat message as OpenAI clients send it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or OpenAI content parts (text parts are joined; others are refused).
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// Tool calls of an earlier assistant turn (OpenAI's shape), given to the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` message's answer to the call with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Reasoning of an earlier assistant turn (DeepSeek API field); accepted and not re-sent to
    /// the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The same under the name some clients use (OpenRouter, vLLM); accepted and not re-sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

impl ChatMessage {
    /// A message with plain text content.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.to_owned(),
            content: Some(MessageContent::Text(content.into())),
            tool_calls: None,
            tool_call_id: None,
            reasoning_content: None,
            reasoning: None,
        }
    }

    /// The `type` of the first content part that is not text (an image, audio, a file), if any.
    pub fn non_text_part(&self) -> Option<&str> {
        match &self.content {
            Some(MessageContent::Parts(parts)) => {
                parts.iter().map(|p| p.kind.as_str()).find(|k| *k != "text")
            }
            _ => None,
        }
    }

    /// The text of the message: the string, or the `text` parts joined.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(MessageContent::Text(s)) => s.clone(),
            Some(MessageContent::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join(""),
        }
    }
}

/// OpenAI message content: a string or an array of parts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged, expecting = "a string or an array of content parts")]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": "…"}`); the daemon refuses other parts.
    Parts(Vec<ContentPart>),
}

/// One OpenAI content part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContentPart {
    /// Part type, e.g. `"text"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// `stop` as OpenAI accepts it: one string or several.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Up to a few stop strings.
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `stream_options` of an OpenAI request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and empty `choices`) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletionRequest {
    /// Model name; r1d serves its resident model whatever is named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Stream the answer as server-sent events.
    #[serde(default, deserialize_with = "null_is_false")]
    pub stream: bool,
    /// Streaming options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Most tokens to generate (legacy OpenAI name).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub max_tokens: Option<u32>,
    /// Most tokens to generate (current OpenAI name; wins over `max_tokens`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature, 0 = greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Top-k sampling (llama.cpp extension).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub top_k: Option<i32>,
    /// Min-p sampling (llama.cpp extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Sampling seed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub seed: Option<i64>,
    /// Stop strings: generation ends before the first occurrence, which is not returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Number of choices; only 1 is supported.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub n: Option<u32>,
    /// OpenAI's presence penalty, −2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// OpenAI's frequency penalty, −2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string, as JSON object keys are) → bias, −100 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// Return the log probability of each output token (`choices[].logprobs.content`); backends
    /// without them (ONNX Runtime, a remote) refuse `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Most likely tokens per position to return with each (0–20; needs `logprobs: true`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub top_logprobs: Option<u32>,
    /// `{"type": "text"}`, `json_object` and `json_schema` (the answer constrained to the schema
    /// on the llama.cpp backend; the other backends refuse it by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
    /// Tools the model may call, rendered through the model's own chat template (refused, naming
    /// `tools`, when the template has no tool support).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<serde_json::Value>>,
    /// `"auto"` and `"none"`; `"required"` and a named function where the template writes
    /// `<tool_call>` blocks (the call is then constrained by a grammar), refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    /// `false`: only the first tool call is returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Deprecated form of `tools`: refused unless empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<serde_json::Value>>,
    /// Deprecated form of `tool_choice`: `"none"` is honoured, others refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<serde_json::Value>,
    /// Output modalities: `["text"]` is honoured; audio is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Vec<String>>,
    /// Audio output parameters: refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<serde_json::Value>,
    /// How reasoning comes back (llama-server's option): `"deepseek"` (default; also `"auto"`):
    /// in `reasoning_content`, no tags; `"none"`: raw in `content`, `<think>` tags paired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_format: Option<String>,
}

/// Body of `POST /v1/responses` (OpenAI's Responses API, text in and out). The fields that change
/// the answer are named here, so the daemon honours each or refuses it by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ResponsesRequest {
    /// Model name (see [`ChatCompletionRequest::model`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A string (one user message) or a list of input items: messages (`role`, `content` as a
    /// string or `input_text`/`output_text` parts); earlier `reasoning` items are accepted and
    /// not re-sent to the model; other item types are refused.
    pub input: serde_json::Value,
    /// A system message before the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Most tokens to generate, reasoning included.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature, 0–2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling, 0–1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Stream the answer as server-sent events (`response.*` events).
    #[serde(default, deserialize_with = "null_is_false")]
    pub stream: bool,
    /// Continue a stored response: refused (r1d stores no responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_response_id: Option<String>,
    /// A stored conversation: refused (r1d stores none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<serde_json::Value>,
    /// Tools: refused unless empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<serde_json::Value>>,
    /// `"auto"` or `"none"` accepted (there are no tools); others refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    /// Accepted (there are no tools to call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text"}}` accepted; other formats refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<serde_json::Value>,
    /// Reasoning options (`effort`, `summary`): refused when set (R1 always reasons, with no
    /// effort levels, and writes no summaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<serde_json::Value>,
    /// Extra output to include: refused unless empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,
    /// `"disabled"` accepted; `"auto"` (dropping input to fit) refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation: Option<String>,
    /// Log probabilities per position: refused above 0.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub top_logprobs: Option<u32>,
    /// Run in the background: refused (`true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<bool>,
    /// Stream options (`include_obfuscation`): accepted; r1d adds no obfuscation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<serde_json::Value>,
}

/// Body of `POST /v1/completions` (legacy OpenAI text completion: a raw prompt, no template).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CompletionRequest {
    /// Model name (see [`ChatCompletionRequest::model`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The prompt: a string, strings, token ids or token-id arrays (see [`CompletionPrompt`]).
    pub prompt: CompletionPrompt,
    /// Stream as server-sent events.
    #[serde(default, deserialize_with = "null_is_false")]
    pub stream: bool,
    /// Streaming options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Most tokens to generate (OpenAI's default for this route is 16).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Top-k (llama.cpp extension).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub top_k: Option<i32>,
    /// Min-p (llama.cpp extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Sampling seed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub seed: Option<i64>,
    /// Stop strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Number of choices; only 1 is supported.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub n: Option<u32>,
    /// OpenAI's presence penalty, −2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// OpenAI's frequency penalty, −2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string, as JSON object keys are) → bias, −100 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// Log probabilities of the chosen token and the `logprobs` most likely tokens at each
    /// position (0–5, OpenAI's legacy Completions reference), in `choices[].logprobs`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub logprobs: Option<u32>,
    /// Echo the prompt in the answer: `true` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// Candidates to choose the best from: only 1 is supported.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub best_of: Option<u32>,
    /// Text after the completion (fill in the middle): refused unless empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
}

/// The prompt of a text completion, in the four shapes OpenAI's Completions reference gives:
/// a string, an array of strings (one choice per prompt), an array of token ids, or an array of
/// token-id arrays.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(
    untagged,
    expecting = "a string, an array of strings, an array of token ids or an array of token-id arrays"
)]
pub enum CompletionPrompt {
    /// One prompt.
    One(String),
    /// One prompt as token ids (given to the model as they are: no BOS is added).
    Tokens(Vec<i64>),
    /// Several prompts: one choice each, in order.
    Many(Vec<String>),
    /// Several prompts as token ids.
    ManyTokens(Vec<Vec<i64>>),
}

impl Default for CompletionPrompt {
    fn default() -> Self {
        CompletionPrompt::One(String::new())
    }
}

/// One choice of a text completion (and of its streamed chunks).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompletionChoice {
    /// The text (a piece of it, when streamed).
    pub text: String,
    /// Which prompt (several prompts) or choice (`n`) this is, from 0.
    pub index: u32,
    /// With the request's `logprobs`: `{"tokens", "token_logprobs", "top_logprobs",
    /// "text_offset"}` (OpenAI's legacy shape; `text_offset` counts bytes of this choice's
    /// text, as llama-server does); else null.
    pub logprobs: Option<serde_json::Value>,
    /// `"stop"` or `"length"` in the last message, null before.
    pub finish_reason: Option<String>,
}

/// Response of `POST /v1/completions`, and each streamed chunk (`object: "text_completion"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Completion {
    /// `cmpl-…`.
    pub id: String,
    /// `"text_completion"`.
    pub object: String,
    /// Unix time, seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// One choice (none in a usage-only chunk).
    pub choices: Vec<CompletionChoice>,
    /// Token counts (non-streamed; the last chunk when streamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Speeds (non-streamed; the last chunk when streamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

/// Token counts of one request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated (each streamed piece is one token).
    pub completion_tokens: u32,
    /// Sum of the two.
    pub total_tokens: u32,
    /// OpenAI's breakdown of the prompt tokens: how many came from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// OpenAI's (and DeepSeek's API's) breakdown of the completion tokens: how many were
    /// reasoning. Absent where r1d does not count them (`reasoning_format: "none"`, a remote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

/// OpenAI's `usage.completion_tokens_details`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompletionTokensDetails {
    /// Tokens of R1's reasoning (`<think>` … `</think>`, the closing tag included).
    pub reasoning_tokens: u32,
}

/// OpenAI's `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Prompt tokens reused from the KV cache of an earlier request (a shared prefix) instead of
    /// evaluated again.
    pub cached_tokens: u32,
}

/// Speed of one request, as llama.cpp's `llama-server` reports it in `timings`
/// (`tools/server/server.cpp`, `result_timings`), plus the time to first token.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    /// Prompt tokens taken from the KV cache instead of evaluated.
    pub cache_n: u32,
    /// Prompt tokens evaluated.
    pub prompt_n: u32,
    /// Prompt processing time, milliseconds.
    pub prompt_ms: f64,
    /// Milliseconds per prompt token.
    pub prompt_per_token_ms: f64,
    /// Prompt processing speed, tokens/s.
    pub prompt_per_second: f64,
    /// Tokens generated.
    pub predicted_n: u32,
    /// Generation time, milliseconds.
    pub predicted_ms: f64,
    /// Milliseconds per generated token.
    pub predicted_per_token_ms: f64,
    /// Generation speed, tokens/s.
    pub predicted_per_second: f64,
    /// Time from the request's admission to its first token, milliseconds.
    #[serde(default)]
    pub time_to_first_token_ms: Option<f64>,
}

/// The assistant message of a non-streamed answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AssistantMessage {
    /// Always `"assistant"`.
    pub role: String,
    /// The answer.
    pub content: String,
    /// The model's reasoning (R1's `<think>` part), when there is any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Tool calls parsed from the answer (`[{"id", "type": "function", "function": {"name",
    /// "arguments"}}]`), when the request had `tools` and the model called any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

/// One choice of a non-streamed answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    /// Which choice (`n`) this is, from 0.
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage,
    /// `"stop"` (end of generation or a stop string) or `"length"` (`max_tokens` or the context
    /// length was reached).
    pub finish_reason: String,
    /// Log probabilities of the answer's tokens, when the request had `logprobs: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChoiceLogprobs>,
}

/// OpenAI's `choices[].logprobs` of a chat completion (and of each streamed chunk: the entries
/// of the tokens whose text that chunk carries).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChoiceLogprobs {
    /// One entry per generated token, in order. r1d includes R1's reasoning tokens (and the
    /// `</think>` tag's), as vLLM and llama-server do, so their tokens are the whole generated
    /// text up to a stop string.
    pub content: Vec<TokenLogprob>,
}

/// One generated token's log probability (OpenAI's chat `logprobs.content[]` entry).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TokenLogprob {
    /// The token's text (its bytes decoded lossily: a token holding part of a UTF-8 character
    /// shows U+FFFD here, its `bytes` are exact).
    pub token: String,
    /// Natural log of its probability (≤ 0), before sampling.
    pub logprob: f32,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position (`top_logprobs` of them), most likely first.
    pub top_logprobs: Vec<TopLogprob>,
}

/// One of the most likely tokens at a position.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TopLogprob {
    /// Its text (lossy, as [`TokenLogprob::token`]).
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f32,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Response of `POST /v1/chat/completions` without streaming (`object: "chat.completion"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// `"chat.completion"`.
    pub object: String,
    /// Unix time, seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// One choice.
    pub choices: Vec<Choice>,
    /// Token counts.
    pub usage: Usage,
    /// Speeds.
    #[serde(default)]
    pub timings: Option<Timings>,
}

/// The incremental message of a streamed chunk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Delta {
    /// `"assistant"` in the first chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// A piece of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A piece of the reasoning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Tool calls, OpenAI's streamed shape: `[{"index", "id", "type": "function", "function":
    /// {"name", "arguments"}}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

/// One choice of a streamed chunk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChunkChoice {
    /// Which choice (`n`) the delta belongs to, from 0.
    pub index: u32,
    /// What is new.
    pub delta: Delta,
    /// Set in the last content chunk only.
    pub finish_reason: Option<String>,
    /// Log probabilities of the tokens whose text this chunk carries, with `logprobs: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChoiceLogprobs>,
}

/// One server-sent event of a streamed answer (`object: "chat.completion.chunk"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletionChunk {
    /// Same id for every chunk of one answer.
    pub id: String,
    /// `"chat.completion.chunk"`.
    pub object: String,
    /// Unix time, seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// One choice, or none in the usage-only chunk.
    pub choices: Vec<ChunkChoice>,
    /// In the last chunk (always when `stream_options.include_usage`, and in the finishing chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// In the finishing chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

/// OpenAI error object: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenAiErrorBody {
    /// The error.
    pub error: OpenAiError,
}

/// The inner OpenAI error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenAiError {
    /// What went wrong, for a person.
    pub message: String,
    /// `invalid_request_error`, `server_error`, `unavailable_error`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter, if one.
    #[serde(default)]
    pub param: Option<String>,
    /// A machine-readable code, e.g. `context_length_exceeded`, `model_not_loaded`.
    #[serde(default)]
    pub code: Option<String>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelList {
    /// `"list"`.
    pub object: String,
    /// Served models.
    pub data: Vec<ModelEntry>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelEntry {
    /// Model name.
    pub id: String,
    /// `"model"`.
    pub object: String,
    /// Unix time the model was loaded, seconds.
    pub created: u64,
    /// `"r1d"`.
    pub owned_by: String,
}

/// Service state, as `/r1/status` and `/health` report it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Plugins are being discovered.
    Starting,
    /// A model is loading.
    Loading,
    /// A model is resident and requests are served.
    Ready,
    /// No model is resident (none configured, or its load failed: see `error`).
    NoModel,
    /// The resident model is being replaced by another; requests wait (up to `[watch]
    /// queue_deadline_s`, then 503 with `Retry-After`).
    Swapping,
    /// A model is served, but not as well as this machine allows: a GPU whose driver is present
    /// did not answer (see `degraded` in `/r1/status`).
    Degraded,
}

/// `GET /health`: 200 when `ready`, 503 otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    /// Current state.
    pub status: State,
    /// Why no model is served, when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Load progress 0.0..=1.0 while loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f32>,
    /// The last time the model's worker process died or was killed as hung (see
    /// [`WatchStatus::last_crash`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_crash: Option<String>,
}

/// The resident model, as `/r1/status` describes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelStatus {
    /// Model name (GGUF `general.name` or the file stem).
    pub name: String,
    /// File or directory it was loaded from.
    pub path: String,
    /// Backend plugin serving it.
    pub backend: String,
    /// The plugin file that serves it (several files may be one backend: the llama.cpp CPU,
    /// CPU-variants and GPU builds are all `llamacpp`); absent for a backend built into r1d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_file: Option<String>,
    /// Architecture, e.g. `qwen2`.
    #[serde(default)]
    pub architecture: Option<String>,
    /// Quantization / file type, e.g. `Q4_K_M`.
    #[serde(default)]
    pub quantization: Option<String>,
    /// Parameter count.
    pub parameters: u64,
    /// Context length of the KV cache, tokens.
    pub context_length: u32,
    /// Transformer layers.
    pub layers: u32,
    /// Layers offloaded to a GPU.
    pub gpu_layers: u32,
    /// Bytes of weights.
    pub weights_bytes: u64,
    /// Bytes of KV cache.
    pub kv_cache_bytes: u64,
    /// The catalog variant the plan chose (`deepseek-r1:7b`); absent when the model was named
    /// rather than planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// RAM the plan planned for it (bytes, without the reserve); absent when not planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_ram_bytes: Option<u64>,
    /// Where that figure came from: `"formula"` (the catalog's memory math) or `"backend"` (the
    /// file's backend estimated it before loading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_memory_source: Option<String>,
    /// What r1d's process holds now (bytes, `Rss` of `/proc/self/smaps_rollup`): the model and
    /// everything else of the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<u64>,
    /// Of `resident_bytes`, anonymous memory (copied and repacked weights, KV cache, compute
    /// buffers, the process's own heap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_anon_bytes: Option<u64>,
    /// Of `resident_bytes`, file-backed pages (the memory-mapped model file as far as it is
    /// read, and the binaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_file_bytes: Option<u64>,
    /// The `[[remote]]` that serves it (backend `remote`): its weights and KV cache are on the
    /// remote server, so `weights_bytes`, `kv_cache_bytes`, `layers` and `gpu_layers` are 0
    /// there, and `parameters` / `context_length` are 0 when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteModelStatus>,
}

/// The `[[remote]]` serving the resident model.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RemoteModelStatus {
    /// Its `name` (the model is listed as `remote:NAME`).
    pub name: String,
    /// Its base URL as configured.
    pub url: String,
    /// The model id the remote serves it under.
    pub model: String,
    /// Whether its last health check passed.
    pub healthy: bool,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_error: Option<String>,
}

/// `GET /r1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// r1d's version.
    pub version: String,
    /// Current state.
    pub state: State,
    /// The resident model, if any.
    #[serde(default)]
    pub model: Option<ModelStatus>,
    /// The model being loaded, while loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loading: Option<String>,
    /// Load progress 0.0..=1.0 while loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f32>,
    /// Why no model is served, when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds since the daemon started.
    pub uptime_s: f64,
    /// Requests finished (successfully or not) since start.
    pub requests_served: u64,
    /// Of those, requests that ended with an error (absent from an older r1d: 0).
    #[serde(default)]
    pub requests_failed: u64,
    /// Requests queued or running now.
    pub active_requests: u64,
    /// Of those, requests generating now.
    #[serde(default)]
    pub running_requests: u64,
    /// Of those, requests waiting in the queue for a free sequence (or a model).
    #[serde(default)]
    pub queued_requests: u64,
    /// Answers the resident model generates at once (`[server] parallel`, capped by what its
    /// backend runs); 0 with no model.
    #[serde(default)]
    pub parallel: u32,
    /// Why the resident model was chosen (or why none is), and what a pull would bring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
    /// What the planner would choose with more memory, as planned when the model was selected
    /// (absent when the model was named, not selected).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrades: Vec<PlanUpgrade>,
    /// One line: what more memory would bring, or why it would not bring a better choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more_memory: Option<String>,
    /// What r1d does when the config or the machine changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchStatus>,
    /// The llama.cpp RPC workers (`[backends.llamacpp] rpc_workers`) and their state at the last
    /// probe (every few seconds); absent without workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rpc_workers: Vec<RpcWorkerStatus>,
}

/// `/r1/status` `rpc_workers[]`: one llama.cpp RPC worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RpcWorkerStatus {
    /// `HOST:PORT`.
    pub endpoint: String,
    /// `up` (answered, free), `serving` (the resident model holds a connection to it), `busy`
    /// (accepts without answering while r1d holds no connection: another client has it, or it
    /// is no `rpc-server`; the model does not use it), `gone` (unreachable or not speaking the
    /// protocol) or `unknown` (not probed yet).
    pub state: String,
    /// Free memory of its devices, bytes (when `up`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// Total memory of its devices, bytes (when `up`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Why it is gone or busy (and so not used by the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Layers of the resident model on it, as r1d plans llama.cpp's split (by the devices' free
    /// memory); absent when the model does not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<u32>,
}

/// `/r1/status` `watch`: how r1d follows the config and the hardware, and what it found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WatchStatus {
    /// The config file r1d reads (absent: none, defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_path: Option<String>,
    /// The last reload's rejection (file, line, key); the running config stays in force until
    /// a valid one is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    /// `auto`, `idle` or `manual` (`[watch] swap_policy`).
    pub swap_policy: String,
    /// The variant or model pinned with `r1ctl use NAME` (absent: the planner's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
    /// A better fit that r1d has not swapped to (policy `manual`, or `idle` while busy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub better: Option<String>,
    /// A change of the plan waiting for the settle time (`[watch] settle_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// Why the service is degraded (a GPU whose driver is present does not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// The last load that failed while another model went on serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_load_error: Option<String>,
    /// The last time the model's worker process died or was killed as hung: how (signal, exit
    /// status, its last log line), when, and how many times in a row. r1d restarted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_crash: Option<String>,
    /// The resident model's memory, which r1d counts as free when it plans (a swap would give
    /// it back); absent with no model resident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_credit: Option<MemoryCredit>,
}

/// `/r1/status` `watch.memory_credit`: what the resident model holds, as r1d's planning adds it
/// back to the probe's free memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryCredit {
    /// RAM it holds (bytes), mapped and anonymous.
    pub ram_bytes: u64,
    /// Of `ram_bytes`, the model file's pages used in place from its memory mapping (bytes):
    /// page cache, which the kernel's `MemAvailable` counts as available already; only a
    /// cgroup's figure (which counts inactive page cache alone) is credited them. The rest, the
    /// anonymous memory (KV cache, compute buffers, copied or repacked weights), is added to
    /// both.
    pub ram_mapped_bytes: u64,
    /// VRAM it holds (bytes), over the GPUs it is on.
    pub gpu_bytes: u64,
}

/// One event of `GET /r1/events` (server-sent events, `event:` = `kind`, `data:` = this JSON)
/// and of `r1ctl events --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// `state` (the engine's state or model changed), `config` (reloaded or rejected),
    /// `hardware` (memory, cgroup limit or GPUs changed), `plan` (the best fit changed, is
    /// pending or was ignored), `swap` (started, done, failed).
    pub kind: String,
    /// Unix time, seconds.
    pub time: f64,
    /// One line for a person.
    pub message: String,
    /// The state after the event (`ready`, `swapping`, …) for `state` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// The model concerned (resident, or the target of a swap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Changed config keys (`config` events).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// An error (a rejected config, a failed swap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Body of the answer to `POST /r1/reload`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadOutcome {
    /// The config file read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_path: Option<String>,
    /// What changed, one line per key.
    #[serde(default)]
    pub changes: Vec<String>,
    /// Why the file was rejected (the running config stays in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the reload did to the model (`kept deepseek-r1:7b`, `swapped to …`, a load error).
    pub model: String,
}

/// Body of `POST /r1/load`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// Model file (GGUF) or directory.
    pub path: String,
    /// Backend plugin; default: the best for the format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// KV cache size, tokens.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub context_length: Option<u32>,
    /// Layers to offload to the GPU.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub gpu_layers: Option<u32>,
    /// Generation threads.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub threads: Option<u32>,
    /// KV cache element type: `f16`, `q8_0`, `q4_0` or `f32`; default: the backend's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_type: Option<String>,
}

/// One backend plugin as `GET /r1/backends` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendEntry {
    /// Plugin file.
    pub path: String,
    /// Backend name (`llamacpp`, `echo`, …), when the plugin could be read.
    #[serde(default)]
    pub name: Option<String>,
    /// Backend version.
    #[serde(default)]
    pub version: Option<String>,
    /// Loaded and usable.
    pub available: bool,
    /// Formats it reads.
    #[serde(default)]
    pub formats: Vec<String>,
    /// Preference score among backends of one format.
    #[serde(default)]
    pub score: i32,
    /// Devices it found.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Why it is unavailable or was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /r1/backends`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendList {
    /// The plugin directory searched.
    pub plugin_dir: String,
    /// Every plugin file found, usable or not.
    pub backends: Vec<BackendEntry>,
}

// ---- Hardware profiles and plans (`GET /r1/hardware`, `GET /r1/plan`, `r1d hardware|plan`) ----

/// A machine, as `r1d hardware --json` prints it and `r1d plan --hardware FILE` reads it.
/// Fields may be added; the existing ones keep their names and units. Optional fields may be
/// absent: the planner then uses its documented defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct HardwareProfile {
    /// The CPU.
    pub cpu: CpuProfile,
    /// Main memory.
    pub memory: MemoryProfile,
    /// Free disk where models are stored; absent = not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskProfile>,
    /// GPUs the planner uses, in device order.
    #[serde(default)]
    pub gpus: Vec<GpuProfile>,
    /// Every Vulkan device the loader reports, CPU devices (lavapipe) included; listed, not
    /// planned (the planned ones are also in `gpus`). Absent = none or not probed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vulkan_devices: Vec<VulkanDeviceProfile>,
    /// llama.cpp RPC workers (docs/rpc.md) the planner may put layers on, in llama.cpp's device
    /// order. Absent = none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rpc_workers: Vec<RpcWorkerProfile>,
}

/// One llama.cpp RPC worker of a [`HardwareProfile`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RpcWorkerProfile {
    /// `HOST:PORT`.
    pub endpoint: String,
    /// Free memory of each of its devices (bytes), in ggml's device order; one figure for a
    /// worker with one device (an `rpc-server` on a CPU reports its host's total RAM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices_free_bytes: Vec<u64>,
    /// Free memory of its one device (bytes): shorthand for `devices_free_bytes: [N]`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub free_bytes: Option<u64>,
    /// Memory read bandwidth of its devices (bytes/s); absent = the planner's CPU default
    /// (25 GB/s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub bandwidth_bytes_per_s: Option<u64>,
    /// One round trip to it (milliseconds); absent = a 1 Gbit/s LAN's 0.2 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_latency_ms: Option<f64>,
    /// What the link to it carries (bytes/s); absent = a 1 Gbit/s LAN's 117 MB/s.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub link_bandwidth_bytes_per_s: Option<u64>,
}

/// One Vulkan device of a [`HardwareProfile`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct VulkanDeviceProfile {
    /// Index in the loader's order (the index `GGML_VK_VISIBLE_DEVICES` takes).
    pub index: u32,
    /// `deviceName`.
    pub name: String,
    /// `nvidia`, `amd`, `intel`, `mesa` or the PCI vendor id in hex (`0x13b5`).
    pub vendor: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` or `other`.
    pub device_type: String,
    /// Vulkan version the device supports (`1.3.230`).
    pub api_version: String,
    /// Driver name and version, where the driver says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Device memory as llama.cpp's Vulkan backend counts it (bytes).
    #[serde(deserialize_with = "count::whole")]
    pub memory_total_bytes: u64,
    /// Free device memory (bytes): measured with `VK_EXT_memory_budget`, else the whole heaps.
    #[serde(deserialize_with = "count::whole")]
    pub memory_free_bytes: u64,
    /// Whether `memory_free_bytes` was measured (`VK_EXT_memory_budget`).
    #[serde(default)]
    pub memory_budget: bool,
    /// Why the planner does not use this device (a CPU device, a GPU another probe found);
    /// absent = it is planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_planned: Option<String>,
}

/// The CPU of a [`HardwareProfile`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct CpuProfile {
    /// Model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Physical cores.
    #[serde(deserialize_with = "count::whole")]
    pub cores: u32,
    /// Hardware threads; absent = `cores`.
    #[serde(default, deserialize_with = "count::opt")]
    pub threads: Option<u32>,
    /// SIMD features (`avx2`, `avx512f`, `amx_int8`, `neon`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// The memory of a [`HardwareProfile`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct MemoryProfile {
    /// Total RAM usable (bytes; the cgroup limit when smaller than the machine).
    #[serde(deserialize_with = "count::whole")]
    pub total_bytes: u64,
    /// RAM available now (bytes).
    #[serde(deserialize_with = "count::whole")]
    pub available_bytes: u64,
    /// Memory read bandwidth (bytes/s); absent = the planner's default (25 GB/s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub bandwidth_bytes_per_s: Option<u64>,
    /// How much the bandwidth measurement runs differed: (slowest − fastest) / median, e.g.
    /// 0.12 for ±6 %; absent when not measured here (a saved profile, an older daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_spread: Option<f64>,
    /// The cgroup memory limit (bytes), when one applies.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub cgroup_limit_bytes: Option<u64>,
}

/// The disk of a [`HardwareProfile`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DiskProfile {
    /// Free bytes where models are stored.
    #[serde(deserialize_with = "count::whole")]
    pub free_bytes: u64,
    /// The models directory measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A boolean field that may be `null`, as OpenAI's API takes it: `null` is the default (false).
fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or_default())
}

/// One GPU of a [`HardwareProfile`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct GpuProfile {
    /// `nvidia`, `amd`, `intel` or `other`.
    pub vendor: String,
    /// Name.
    pub name: String,
    /// Installed VRAM (bytes).
    #[serde(deserialize_with = "count::whole")]
    pub vram_total_bytes: u64,
    /// Free VRAM (bytes): what other processes hold is not free.
    #[serde(deserialize_with = "count::whole")]
    pub vram_free_bytes: u64,
    /// Peak memory bandwidth (bytes/s); absent = the planner's default (250 GB/s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::opt"
    )]
    pub bandwidth_bytes_per_s: Option<u64>,
    /// CUDA compute capability (`8.9`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    /// Driver version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// One variant × quantization of a [`Plan`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PlanCandidate {
    /// Variant (`deepseek-r1:14b`).
    pub variant: String,
    /// Quantization (`Q4_K_M`).
    pub quantization: String,
    /// Backend plugin (`llamacpp`).
    pub backend: String,
    /// Layers offloaded to GPUs (llama.cpp's `n_gpu_layers`).
    pub gpu_layers: u32,
    /// Layers in all (blocks + output head).
    pub total_layers: u32,
    /// RAM needed (bytes), without the policy's reserve.
    pub ram_bytes: u64,
    /// VRAM needed per GPU (bytes), in the profile's GPU order.
    pub vram_bytes: Vec<u64>,
    /// Expected generation speed (tokens/s).
    pub est_generation_tokens_per_s: f64,
    /// Fits in free memory and disk under the policy.
    #[serde(default)]
    pub fits: bool,
    /// Why it was chosen or not.
    #[serde(default)]
    pub reason: String,
    /// Context length planned for (tokens).
    #[serde(default)]
    pub context_length: u32,
    /// Answers it would generate at once, each with its own context.
    #[serde(default)]
    pub parallel: u32,
    /// Size of the model file(s) (bytes).
    #[serde(default)]
    pub file_bytes: u64,
    /// The file is already on disk.
    #[serde(default)]
    pub present: bool,
    /// Where to download it: `hf://<repo>/<file>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The published rule of thumb for this size class ("8 cores, 16 GB RAM, 1 × 8 GB GPU").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_requirements: Option<String>,
    /// Where `ram_bytes` comes from: `"formula"` (the catalog's memory math) or `"backend"` (the
    /// present file's backend estimated it: llama.cpp's no-allocation dry run). Absent from
    /// older daemons: the formula.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_source: Option<String>,
    /// Who estimated, when `memory_source` is `"backend"` ("llamacpp: llama.cpp no_alloc dry
    /// run …").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_estimated_by: Option<String>,
    /// What the catalog formula planned (bytes of RAM, without the reserve) when the backend's
    /// estimate replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formula_ram_bytes: Option<u64>,
    /// Where the layers go, per host: `cpu` (this machine's RAM), `gpu N`, or an RPC worker's
    /// `HOST:PORT`, with its layers (llama.cpp's count: the output head is a layer) and bytes.
    /// Absent from older daemons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<PlanHost>,
    /// Milliseconds per generated token spent crossing host boundaries (round trips and
    /// activations); included in `est_generation_tokens_per_s`. 0 when all stays local.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub network_ms_per_token: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl PlanCandidate {
    /// Some layers go to an RPC worker (a host that is neither `cpu` nor `gpu N`).
    pub fn is_split(&self) -> bool {
        self.hosts
            .iter()
            .any(|h| h.host != "cpu" && !h.host.starts_with("gpu "))
    }
}

/// One host's share of a [`PlanCandidate`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PlanHost {
    /// `cpu`, `gpu N` (this machine), or an RPC worker's `HOST:PORT`.
    pub host: String,
    /// Layers on it (blocks; the output head counts as one).
    pub layers: u32,
    /// Memory it needs (bytes): RAM for `cpu`, VRAM for a GPU, device memory on a worker.
    pub bytes: u64,
}

/// `GET /r1/plan`, `r1d plan --json`: every candidate and the chosen one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Plan {
    /// The chosen candidate; `null` when nothing fits.
    pub chosen: Option<PlanCandidate>,
    /// Every candidate, best quality first.
    pub candidates: Vec<PlanCandidate>,
    /// Why this choice, or why none (what is short, by how much).
    #[serde(default)]
    pub reason: String,
    /// What more memory would bring: at most one upgrade with more RAM and one with more VRAM
    /// (on the GPU with the most free VRAM); empty when more memory would not change the choice
    /// for the better.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrades: Vec<PlanUpgrade>,
    /// One line: what the upgrades bring with how much more memory, or why more memory would
    /// not bring a better choice.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub more_memory: String,
    /// The `[[remote]]` endpoints, checked when the plan was made, in config order (empty
    /// without any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<PlanRemote>,
    /// With remotes: what r1d serves, the local choice or a remote, and why, in one line — the
    /// daemon's own selection (the best local model *present* against the healthy remotes by
    /// `[planner] prefer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_selection: Option<String>,
}

/// A `[[remote]]` endpoint in a plan ([`Plan::remotes`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PlanRemote {
    /// Its `name` (listed as `remote:NAME`).
    pub name: String,
    /// Its base URL as configured.
    pub url: String,
    /// The model id the remote serves it under.
    pub model: String,
    /// The catalog variant the model id names (`deepseek-r1:671b`); `null`: not a catalog
    /// variant, ranks below every variant.
    #[serde(default)]
    pub variant: Option<String>,
    /// Its health check (`GET {url}/v1/models`, the model listed) passed.
    pub healthy: bool,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_error: Option<String>,
    /// `tokens_per_s` from the config (tokens/s), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// r1d serves this remote.
    pub chosen: bool,
    /// Why it is served, or why not (skipped and why, or kept as a fallback).
    pub reason: String,
}

/// A better choice that more memory would bring ([`Plan::upgrades`], [`Status::upgrades`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PlanUpgrade {
    /// `ram` or `vram`.
    pub resource: String,
    /// The GPU (index in the hardware profile's order) for `vram`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// Bytes needed beyond what is available (RAM) or free (VRAM) now: the least amount, to a
    /// MiB, with which the planner chooses a better variant or quantization.
    pub more_bytes: u64,
    /// The candidate chosen then, as placed on the grown machine.
    pub candidate: PlanCandidate,
}

/// How [`Plan::to_table`] lays a plan out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableView {
    /// Every candidate (`--all`); otherwise only the relevant ones ([`Plan::relevant`]).
    pub all: bool,
    /// The widest a line may be, in terminal columns (the terminal's width, else
    /// [`TableView::DEFAULT_WIDTH`]).
    pub width: u16,
}

impl TableView {
    /// The width when the output is not a terminal: a common terminal's.
    pub const DEFAULT_WIDTH: u16 = 100;
}

impl Default for TableView {
    fn default() -> TableView {
        TableView {
            all: false,
            width: TableView::DEFAULT_WIDTH,
        }
    }
}

impl Plan {
    /// The candidates worth a row when not all are shown, by index, in the plan's order: per
    /// variant one row — the chosen candidate when it is of that variant, else the best (first)
    /// that fits, else the one that needs the least memory (the nearest to fitting).
    pub fn relevant(&self) -> Vec<usize> {
        let mut rows: Vec<usize> = Vec::new();
        let mut variants: Vec<&str> = Vec::new();
        for c in &self.candidates {
            if !variants.contains(&c.variant.as_str()) {
                variants.push(&c.variant);
            }
        }
        let memory = |c: &PlanCandidate| c.ram_bytes + c.vram_bytes.iter().sum::<u64>();
        for v in variants {
            let of_variant = || {
                self.candidates
                    .iter()
                    .enumerate()
                    .filter(move |(_, c)| c.variant == v)
            };
            let chosen = self.chosen.as_ref().and_then(|ch| {
                of_variant()
                    .find(|(_, c)| c.quantization == ch.quantization && c.variant == ch.variant)
            });
            let pick = chosen
                .or_else(|| of_variant().find(|(_, c)| c.fits))
                .or_else(|| of_variant().min_by_key(|(_, c)| memory(c)));
            rows.extend(pick.map(|(i, _)| i));
        }
        rows
    }

    /// The human form: the choice and why on top, then one row per candidate (`view.all`) or
    /// per [`Plan::relevant`] candidate with the computed needs, each followed by its reason and
    /// the published rule of thumb on lines of their own, wrapped so that no line is wider than
    /// `view.width` columns (unless the numbers alone are wider: a terminal under 80 columns).
    pub fn to_table(&self, view: TableView) -> String {
        use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
        fn gb(bytes: u64) -> String {
            format!("{:.1}", bytes as f64 / 1e9)
        }
        /// A borderless table whose cells wrap to fit `width`, one space between columns.
        fn wrapping(width: u16, columns: usize) -> Table {
            let mut t = Table::new();
            t.load_style(presets::NOTHING)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(width);
            // The columns exist once a row is added; pad them then.
            t.add_row(vec![""; columns]);
            t
        }
        fn lines(mut t: Table, skip_first_row: bool, indent: &str, out: &mut String) {
            for c in t.column_iter_mut() {
                c.set_padding((0, 1));
            }
            for line in t.lines().skip(usize::from(skip_first_row)) {
                out.push_str(indent);
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
        const INDENT: &str = "      ";
        let chosen = match &self.chosen {
            Some(c) => format!(
                "{} {} on {} ({}/{} layers on {}, {} GB RAM{}, ≈ {:.1} tokens/s)",
                c.variant,
                c.quantization,
                c.backend,
                c.gpu_layers,
                c.total_layers,
                if c.is_split() { "other hosts" } else { "GPU" },
                gb(c.ram_bytes),
                if c.vram_bytes.iter().any(|&v| v > 0) {
                    format!(
                        ", {} GB VRAM",
                        c.vram_bytes
                            .iter()
                            .map(|&v| gb(v))
                            .collect::<Vec<_>>()
                            .join(" + ")
                    )
                } else {
                    String::new()
                },
                c.est_generation_tokens_per_s
            ),
            None => "nothing".to_owned(),
        };
        let mut out = String::new();
        let mut head = wrapping(view.width, 2);
        head.add_row(vec!["chosen:".to_owned(), chosen]);
        // A split across hosts: where each share goes.
        if let Some(c) = self.chosen.as_ref().filter(|c| {
            c.hosts
                .iter()
                .any(|h| h.host != "cpu" && !h.host.starts_with("gpu "))
        }) {
            let shares: Vec<String> = c
                .hosts
                .iter()
                .map(|h| format!("{}: {} layers, {} GB", h.host, h.layers, gb(h.bytes)))
                .collect();
            head.add_row(vec![
                "split:".to_owned(),
                format!(
                    "{}; {:.2} ms/token on the network",
                    shares.join("; "),
                    c.network_ms_per_token
                ),
            ]);
        }
        head.add_row(vec!["why:".to_owned(), self.reason.clone()]);
        if !self.more_memory.is_empty() {
            head.add_row(vec!["more memory:".to_owned(), self.more_memory.clone()]);
        }
        lines(head, true, "", &mut out);
        out.push('\n');

        let rows: Vec<usize> = if view.all {
            (0..self.candidates.len()).collect()
        } else {
            self.relevant()
        };
        let mut numbers = Table::new();
        numbers.load_style(presets::NOTHING).set_header(vec![
            "", "VARIANT", "QUANT", "FILE GB", "RAM GB", "VRAM GB", "GPU LY", "TOK/S",
        ]);
        for &i in &rows {
            let c = &self.candidates[i];
            let is_chosen = self
                .chosen
                .as_ref()
                .is_some_and(|ch| ch.variant == c.variant && ch.quantization == c.quantization);
            let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
            numbers.add_row(vec![
                Cell::new(if is_chosen { "*" } else { "" }),
                Cell::new(&c.variant),
                Cell::new(&c.quantization),
                right(gb(c.file_bytes)),
                right(gb(c.ram_bytes)),
                right(gb(c.vram_bytes.iter().sum())),
                right(format!("{}/{}", c.gpu_layers, c.total_layers)),
                right(format!("{:.1}", c.est_generation_tokens_per_s)),
            ]);
        }
        // Without wrapping, each candidate is one line after the header's.
        let mut number_lines = numbers.lines();
        out.push_str(number_lines.next().unwrap_or_default().trim_end());
        out.push('\n');
        let text_width = view.width.saturating_sub(INDENT.len() as u16).max(20);
        for (&i, line) in rows.iter().zip(number_lines) {
            let c = &self.candidates[i];
            out.push_str(line.trim_end());
            out.push('\n');
            let mut text = wrapping(text_width, 1);
            text.add_row(vec![c.reason.clone()]);
            if let (Some(by), Some(formula)) = (&c.memory_estimated_by, c.formula_ram_bytes) {
                text.add_row(vec![format!(
                    "RAM from the file's backend ({by}); the catalog formula says {} GB",
                    gb(formula)
                )]);
            }
            if let Some(published) = &c.published_requirements {
                text.add_row(vec![format!("published rule of thumb: {published}")]);
            }
            lines(text, true, INDENT, &mut out);
        }
        let hidden = self.candidates.len() - rows.len();
        if hidden > 0 {
            let mut note = wrapping(view.width, 1);
            note.add_row(vec![format!(
                "* the choice. One row per variant: the choice, else the best that fits, else \
                 the nearest to fitting; {hidden} more with --all."
            )]);
            out.push('\n');
            lines(note, true, "", &mut out);
        }
        if !self.remotes.is_empty() {
            out.push_str("\nRemote endpoints ([[remote]]):\n");
            for r in &self.remotes {
                out.push_str(&format!(
                    "  {} — {} at {} — variant {} — {}{}{}\n",
                    r.name,
                    r.model,
                    r.url,
                    r.variant.as_deref().unwrap_or("unknown (ranks lowest)"),
                    if r.healthy {
                        "healthy".to_owned()
                    } else {
                        format!(
                            "UNHEALTHY: {}",
                            r.health_error.as_deref().unwrap_or("not checked")
                        )
                    },
                    r.tokens_per_s
                        .map_or(String::new(), |t| format!(" — {t} tokens/s (configured)")),
                    if r.chosen { " — served" } else { "" }
                ));
            }
            if let Some(line) = &self.remote_selection {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

// ---- The model store: `GET /r1/models`, `POST /r1/pull`, `POST /r1/use` ----

/// One model file, as `GET /r1/models` lists it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StoreModel {
    /// The name to ask for it by (`deepseek-r1:7b-q4_k_m`, `smollm2:135m`, a file stem).
    pub name: String,
    /// The file.
    pub path: String,
    /// `r1d`, `huggingface` or `ollama`.
    pub source: String,
    /// `gguf` (a file) or `onnx` (a model directory).
    #[serde(default)]
    pub format: String,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// `ok`, `truncated` or `unreadable`.
    pub status: String,
    /// Bytes its GGUF header implies, when it is truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_bytes: Option<u64>,
    /// Why it cannot be served, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The DeepSeek-R1 catalog variant, when it is one.
    #[serde(default)]
    pub variant: Option<String>,
    /// Quantization (`Q4_K_M`).
    #[serde(default)]
    pub quantization: Option<String>,
    /// `general.architecture`.
    #[serde(default)]
    pub architecture: Option<String>,
    /// `general.name`.
    #[serde(default)]
    pub model_name: Option<String>,
    /// Parameters.
    #[serde(default)]
    pub parameters: Option<u64>,
    /// Modification time (Unix seconds).
    #[serde(default)]
    pub modified: Option<u64>,
    /// Chosen automatically when it is the best that fits (DeepSeek-R1 variants only).
    pub selectable: bool,
    /// Resident now.
    pub resident: bool,
}

/// Body of `GET /r1/models`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StoreModelList {
    /// r1d's models directory (pulls land here).
    pub dir: String,
    /// Every directory searched.
    pub searched: String,
    /// The files.
    pub models: Vec<StoreModel>,
}

/// Body of `POST /r1/pull`, `POST /r1/use` and `POST /r1/remove`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelRequest {
    /// `deepseek-r1:7b`, `deepseek-r1:7b-q8_0`, `hf.co/OWNER/REPO:FILE`; for `use` also `auto`
    /// or any listed name.
    pub model: String,
}

/// The answer to `POST /r1/remove`: what was removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Removed {
    /// The name it was listed by.
    pub model: String,
    /// The file (GGUF) or directory (ONNX) removed.
    pub path: String,
    /// Bytes freed on disk.
    pub freed_bytes: u64,
}

/// One line of `POST /r1/pull`'s NDJSON stream (or one SSE `data:`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PullEvent {
    /// `resolving`, `progress`, `verifying`, `done` or `error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What is pulled (`deepseek-r1:7b-q4_k_m`, `hf.co/…`).
    pub model: String,
    /// Bytes on disk so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
    /// Bytes in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Bytes already on disk from an interrupted pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
    /// The final file (`done`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Its verified sha256 (`done`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Nothing was downloaded: the file was there (`done`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_present: bool,
    /// Why it failed (`error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts and rates (tokens, choices, seeds, bytes, bytes/s, cores) accept every JSON spelling of
/// a whole number: `128`, `128.0`, `1.28e2`; `40000000000`, `40000000000.0`, `4e10`. JSON has one
/// number type (RFC 8259 §6), and JavaScript clients, YAML-to-JSON tools and people write whole
/// numbers as floats; each means the same count. A fraction (`1.5`), a value past the field's type
/// (a negative count, `1e30`) or another JSON type is refused, naming the value and the range;
/// `serde_path_to_error` (the daemon's one request parser) adds the field's name.
///
/// Use as `#[serde(default, deserialize_with = "count::opt")]` on an `Option<u32|u64|i32|i64>`
/// (null and absent are `None`), `deserialize_with = "count::whole"` on a plain one, or
/// [`count::value`] on a `serde_json::Value` (Ollama's free-form `options`).
pub mod count {
    use std::fmt;

    use serde::de::{Deserializer, Error, Visitor};

    /// An integer type a count is read into, with its range.
    pub trait Whole: Sized + TryFrom<i128> {
        /// Smallest value.
        const MIN: i128;
        /// Largest value.
        const MAX: i128;
    }

    macro_rules! whole {
        ($($t:ty),*) => {$(
            impl Whole for $t {
                const MIN: i128 = <$t>::MIN as i128;
                const MAX: i128 = <$t>::MAX as i128;
            }
        )*};
    }
    whole!(u32, u64, i32, i64);

    struct WholeVisitor<T>(std::marker::PhantomData<T>);

    impl<T: Whole> WholeVisitor<T> {
        fn range() -> String {
            format!("a whole number from {} to {}", T::MIN, T::MAX)
        }

        fn fit<E: Error>(v: i128, spelled: impl fmt::Display) -> Result<T, E> {
            if v < T::MIN || v > T::MAX {
                return Err(E::custom(format!(
                    "{spelled} is out of range: expected {}",
                    Self::range()
                )));
            }
            T::try_from(v).map_err(|_| E::custom(format!("{spelled}: expected {}", Self::range())))
        }
    }

    impl<'de, T: Whole> Visitor<'de> for WholeVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(&Self::range())
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
            Self::fit(v.into(), v)
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
            Self::fit(v.into(), v)
        }

        fn visit_f64<E: Error>(self, f: f64) -> Result<T, E> {
            // Every finite float below 2^127 in magnitude converts exactly when it is whole.
            if f.is_finite() && f.fract() == 0.0 && f.abs() < 1.7e38 {
                Self::fit(f as i128, f)
            } else {
                Err(E::custom(format!("{f} is not {}", Self::range())))
            }
        }
    }

    struct OptVisitor<T>(std::marker::PhantomData<T>);

    impl<'de, T: Whole> Visitor<'de> for OptVisitor<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "null or {}", WholeVisitor::<T>::range())
        }

        fn visit_none<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            whole(d).map(Some)
        }
    }

    /// A count in any JSON spelling of a whole number within `T`'s range.
    ///
    /// # Errors
    /// A fraction, a value outside `T`'s range or another JSON type, naming the value.
    pub fn whole<'de, D: Deserializer<'de>, T: Whole>(d: D) -> Result<T, D::Error> {
        d.deserialize_any(WholeVisitor(std::marker::PhantomData))
    }

    /// An optional count: null or absent (with `#[serde(default)]`) is `None`, else as [`whole`].
    ///
    /// # Errors
    /// As [`whole`].
    pub fn opt<'de, D: Deserializer<'de>, T: Whole>(d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_option(OptVisitor(std::marker::PhantomData))
    }

    /// A count held in a JSON value (a key of Ollama's free-form `options`); the error is the
    /// message alone, for the caller to prefix with the key.
    ///
    /// # Errors
    /// As [`whole`].
    pub fn value<T: Whole>(v: &serde_json::Value) -> Result<T, String> {
        whole(v).map_err(|e| e.to_string())
    }

    #[cfg(test)]
    mod tests {
        use crate::wire::MemoryProfile;

        fn memory(total: &str) -> Result<MemoryProfile, serde_json::Error> {
            serde_json::from_str(&format!(
                r#"{{"total_bytes": {total}, "available_bytes": 1, "bandwidth_bytes_per_s": {total}}}"#
            ))
        }

        #[test]
        fn every_spelling_of_a_whole_number_is_that_number() {
            for spelling in ["40000000000", "40000000000.0", "4e10", "4E+10"] {
                let m = memory(spelling).unwrap();
                assert_eq!(m.total_bytes, 40_000_000_000, "{spelling}");
                assert_eq!(m.bandwidth_bytes_per_s, Some(40_000_000_000), "{spelling}");
            }
        }

        #[test]
        fn request_counts_take_every_spelling_and_refuse_fractions() {
            use crate::wire::ChatCompletionRequest;
            let req: ChatCompletionRequest = serde_json::from_str(
                r#"{"messages": [], "max_tokens": 128.0, "max_completion_tokens": null,
                    "n": 2e0, "seed": -5.0, "top_k": 4E1, "top_logprobs": 0}"#,
            )
            .unwrap();
            assert_eq!(req.max_tokens, Some(128));
            assert_eq!(req.max_completion_tokens, None);
            assert_eq!(req.n, Some(2));
            assert_eq!(req.seed, Some(-5));
            assert_eq!(req.top_k, Some(40));
            assert_eq!(req.top_logprobs, Some(0));
            let e = serde_json::from_str::<ChatCompletionRequest>(
                r#"{"messages": [], "max_tokens": 1.5}"#,
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("1.5 is not a whole number from 0 to 4294967295"),
                "{e}"
            );
            let e = serde_json::from_str::<ChatCompletionRequest>(r#"{"messages": [], "n": "2"}"#)
                .unwrap_err()
                .to_string();
            assert!(e.contains("expected a whole number from 0 to"), "{e}");
        }

        #[test]
        fn fractions_negatives_and_overflows_are_refused_naming_the_value() {
            let e = memory("1.5").unwrap_err().to_string();
            assert!(e.contains("1.5 is not a whole number"), "{e}");
            assert!(memory("-3").is_err());
            assert!(memory("1e30").is_err());
            let cores: Result<crate::wire::CpuProfile, _> =
                serde_json::from_str(r#"{"cores": 5000000000}"#);
            assert!(cores.unwrap_err().to_string().contains(
                "5000000000 is out of range: expected a whole number from 0 to 4294967295"
            ));
            let cpu: crate::wire::CpuProfile =
                serde_json::from_str(r#"{"cores": 8.0, "threads": 1.6e1}"#).unwrap();
            assert_eq!((cpu.cores, cpu.threads), (8, Some(16)));
        }
    }
}
