//! Ollama-compatible JSON shapes (`/api/*`), as Ollama's `docs/api.md` describes them: durations
//! in nanoseconds, times in RFC 3339, streamed answers as newline-delimited JSON objects.

use serde::{Deserialize, Serialize};

/// A chat message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// The text.
    #[serde(default)]
    pub content: String,
    /// Reasoning (`think: true`): in answers; accepted and not re-sent in requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
    /// Images (base64): refused when any is given (r1d serves text-only models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    /// Tool calls: of an earlier assistant turn in requests (given to the template), parsed from
    /// the answer in responses (`[{"function": {"name", "arguments": {…}}}]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` message: the name of the tool whose result it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

/// Ollama's `think`: a switch, or an effort level (`"low"`, `"medium"`, `"high"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged, expecting = "true, false, \"low\", \"medium\" or \"high\"")]
pub enum Think {
    /// On or off.
    Switch(bool),
    /// An effort level (R1 has none: any level means on).
    Level(String),
}

/// Body of `POST /api/chat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChatRequest {
    /// Model name.
    #[serde(default)]
    pub model: String,
    /// The conversation; empty = just load the model.
    #[serde(default)]
    pub messages: Vec<Message>,
    /// Stream (default true, as in Ollama).
    #[serde(default)]
    pub stream: Option<bool>,
    /// `true` (or a level): reasoning in `message.thinking`; `false`: no reasoning; absent:
    /// inline in `content` with its tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think: Option<Think>,
    /// Structured output (`"json"` or a JSON schema): refused (not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<serde_json::Value>,
    /// Tools the model may call: refused unless empty (not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<serde_json::Value>>,
    /// Return each generated token's log probability (Ollama ≥ 0.12.11: `logprobs` in every
    /// object, beside the text it covers); refused by backends without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Most likely tokens per position to return with each (0–20; needs `logprobs`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::wire::count::opt"
    )]
    pub top_logprobs: Option<u32>,
    /// Sampling options (`temperature`, `top_p`, `top_k`, `min_p`, `seed`, `num_predict`, `stop`,
    /// …); unknown keys are ignored, as Ollama does.
    #[serde(default)]
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
    /// Accepted and ignored (the model stays resident).
    #[serde(default)]
    pub keep_alive: Option<serde_json::Value>,
}

/// Body of `POST /api/generate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GenerateRequest {
    /// Model name.
    #[serde(default)]
    pub model: String,
    /// The prompt; empty = just load the model.
    #[serde(default)]
    pub prompt: String,
    /// A system prompt.
    #[serde(default)]
    pub system: Option<String>,
    /// Send the prompt as it is, without the chat template.
    #[serde(default)]
    pub raw: bool,
    /// Stream (default true).
    #[serde(default)]
    pub stream: Option<bool>,
    /// Reasoning in `thinking` (true or a level), none (false), or inline in `response`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think: Option<Think>,
    /// Structured output (`"json"` or a JSON schema): refused (not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<serde_json::Value>,
    /// Images (base64): refused when any is given (r1d serves text-only models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    /// Return each generated token's log probability (Ollama ≥ 0.12.11: `logprobs` in every
    /// object, beside the text it covers); refused by backends without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Most likely tokens per position to return with each (0–20; needs `logprobs`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::wire::count::opt"
    )]
    pub top_logprobs: Option<u32>,
    /// Text after the answer (fill in the middle): refused unless empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// A template overriding the model's: refused unless empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The `context` of an earlier answer (its final object's token ids): the conversation goes
    /// on from there — the ids are placed before this prompt, which gets no second BOS. Ids
    /// outside the model's vocabulary are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<i64>>,
    /// Sampling options, as for chat.
    #[serde(default)]
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
    /// Accepted and ignored.
    #[serde(default)]
    pub keep_alive: Option<serde_json::Value>,
}

/// Counts and durations of a finished answer (all durations in nanoseconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Why it ended: `stop`, `length` (or `load` for a load-only request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<String>,
    /// Whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_duration: Option<u64>,
    /// Loading the model (0: it was resident).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_duration: Option<u64>,
    /// Prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_eval_count: Option<u32>,
    /// Prompt processing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_eval_duration: Option<u64>,
    /// Generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_count: Option<u32>,
    /// Generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_duration: Option<u64>,
}

/// One object of a `/api/chat` answer (each streamed line, or the whole answer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatResponse {
    /// Model name.
    pub model: String,
    /// RFC 3339 time.
    pub created_at: String,
    /// The (piece of the) answer.
    pub message: Message,
    /// Log probabilities of the tokens whose text this object carries (with `logprobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<Logprob>>,
    /// True in the last object.
    pub done: bool,
    /// Counts and durations, in the last object.
    #[serde(flatten)]
    pub stats: Stats,
}

/// One object of a `/api/generate` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerateResponse {
    /// Model name.
    pub model: String,
    /// RFC 3339 time.
    pub created_at: String,
    /// The (piece of the) answer.
    pub response: String,
    /// The (piece of the) reasoning, with `think: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
    /// Log probabilities of the tokens whose text this object carries (with `logprobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<Logprob>>,
    /// True in the last object.
    pub done: bool,
    /// In the last object: the token ids of the prompt and the answer, to send back as the next
    /// request's `context` (Ollama's `docs/api.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<i64>>,
    /// Counts and durations, in the last object.
    #[serde(flatten)]
    pub stats: Stats,
}

/// One generated token's log probability, Ollama's `logprobs[]` entry (its `api/types.go`
/// `Logprob`: the token, its log probability, its bytes, and the most likely tokens).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Logprob {
    /// The token's text (lossy where it holds part of a UTF-8 character).
    pub token: String,
    /// Natural log of its probability, before sampling.
    pub logprob: f32,
    /// Its bytes.
    #[serde(default)]
    pub bytes: Vec<u8>,
    /// The most likely tokens at its position, most likely first (`top_logprobs` of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<TopLogprob>,
}

/// One of the most likely tokens at a position (Ollama's `TokenLogprob`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TopLogprob {
    /// Its text.
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f32,
    /// Its bytes.
    #[serde(default)]
    pub bytes: Vec<u8>,
}

/// Model details, as `/api/tags`, `/api/show` and `/api/ps` give them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Details {
    /// Always empty.
    pub parent_model: String,
    /// `gguf`.
    pub format: String,
    /// Architecture, e.g. `qwen2`.
    pub family: String,
    /// The same, as a list.
    pub families: Vec<String>,
    /// e.g. `7.6B`, `135M`.
    pub parameter_size: String,
    /// e.g. `Q4_K_M`.
    pub quantization_level: String,
}

/// One model of `/api/tags`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TagModel {
    /// Name.
    pub name: String,
    /// Name again (Ollama sends both).
    pub model: String,
    /// RFC 3339 modification time of the file.
    pub modified_at: String,
    /// File size, bytes.
    pub size: u64,
    /// Content digest; empty (r1d does not hash files it did not download).
    pub digest: String,
    /// Details.
    pub details: Details,
}

/// `GET /api/tags`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tags {
    /// Models.
    pub models: Vec<TagModel>,
}

/// One model of `/api/ps`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunningModel {
    /// Name.
    pub name: String,
    /// Name again.
    pub model: String,
    /// Bytes held (weights + KV cache).
    pub size: u64,
    /// Content digest (empty).
    pub digest: String,
    /// Details.
    pub details: Details,
    /// RFC 3339; far in the future (r1d keeps the model resident).
    pub expires_at: String,
    /// Bytes on GPUs.
    pub size_vram: u64,
    /// Context length, tokens.
    pub context_length: u32,
}

/// `GET /api/ps`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Running {
    /// The resident model, if any.
    pub models: Vec<RunningModel>,
}

/// Body of `POST /api/show`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShowRequest {
    /// Model name.
    #[serde(default)]
    pub model: String,
    /// Older clients send `name`.
    #[serde(default)]
    pub name: String,
}

/// Body of `DELETE /api/delete`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeleteRequest {
    /// Model name.
    #[serde(default)]
    pub model: String,
    /// Older clients send `name`.
    #[serde(default)]
    pub name: String,
}

/// `POST /api/show`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Show {
    /// Empty (r1d has no Modelfiles).
    pub modelfile: String,
    /// Default sampling, one `key value` per line.
    pub parameters: String,
    /// The model's chat template (Jinja).
    pub template: String,
    /// Details.
    pub details: Details,
    /// GGUF-style keys: `general.architecture`, `general.parameter_count`,
    /// `<arch>.context_length`, `<arch>.block_count`, `<arch>.embedding_length`.
    pub model_info: serde_json::Map<String, serde_json::Value>,
    /// `completion`, and `thinking` for reasoning models.
    pub capabilities: Vec<String>,
    /// RFC 3339.
    pub modified_at: String,
}

/// `GET /api/version`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Version {
    /// r1d's version.
    pub version: String,
}
