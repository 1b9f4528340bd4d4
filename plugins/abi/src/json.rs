//! The JSON documents that cross the ABI (parameters in, reports out).
//!
//! Both sides ignore unknown fields, and every field added later has a default, so a host and a
//! plugin of different minor versions understand each other within one ABI version.

use serde::{Deserialize, Serialize};

/// Result of `probe`: whether the backend can run on this machine, and how well.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProbeReport {
    /// True when the backend can load models here.
    pub available: bool,
    /// Preference among available backends for the same format: higher is better (a GPU backend
    /// scores above a CPU one). 0 when unavailable.
    #[serde(default)]
    pub score: i32,
    /// Model formats the backend reads, lowercase: `"gguf"`, `"onnx"`, `"echo"`.
    #[serde(default)]
    pub formats: Vec<String>,
    /// Compute devices found (CPU, GPUs).
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Why the backend is unavailable or degraded, e.g. "libcuda.so.1 not found".
    #[serde(default)]
    pub reason: Option<String>,
}

/// A compute device a backend can use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Device {
    /// Device name as the backend reports it, e.g. "CPU", "NVIDIA GeForce RTX 4060".
    pub name: String,
    /// `"cpu"`, `"gpu"` or `"accelerator"`.
    pub kind: String,
    /// Total device memory in bytes, when known.
    #[serde(default)]
    pub memory_total_bytes: Option<u64>,
    /// Free device memory in bytes, when known.
    #[serde(default)]
    pub memory_free_bytes: Option<u64>,
}

/// Parameters of `load`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadParams {
    /// Path of the model file (GGUF) or directory (ONNX), UTF-8.
    pub path: String,
    /// Context length in tokens for the KV cache; `None` = the model's trained context, capped by
    /// the backend at a sensible default.
    #[serde(default)]
    pub context_length: Option<u32>,
    /// Layers to offload to the GPU; `None` = backend default (all that fit), 0 = CPU only.
    /// Passed through even when the backend finds no GPU.
    #[serde(default)]
    pub gpu_layers: Option<u32>,
    /// Index of the main GPU for single-GPU placement.
    #[serde(default)]
    pub main_gpu: Option<i32>,
    /// Threads for generation; `None` = the backend's default (llamacpp: the CPUs available to
    /// the process).
    #[serde(default)]
    pub threads: Option<u32>,
    /// Threads for prompt processing; `None` = same as `threads`.
    #[serde(default)]
    pub threads_batch: Option<u32>,
    /// Logical batch size in tokens for prompt processing; `None` = backend default.
    #[serde(default)]
    pub batch_size: Option<u32>,
    /// KV cache element type: `"f16"` (default), `"q8_0"`, `"q4_0"`, `"f32"`.
    #[serde(default)]
    pub kv_cache_type: Option<String>,
    /// Memory-map the weights (default true).
    #[serde(default)]
    pub use_mmap: Option<bool>,
    /// Load only the vocabulary (tokenizer and metadata); no generation possible.
    #[serde(default)]
    pub vocab_only: bool,
    /// Sequences (requests) the model should be able to generate at once, each with its own
    /// `context_length` tokens of KV cache; `None` = 1. A backend that can run fewer reports what
    /// it runs in [`ModelInfo::parallel_sequences`]; it may refuse a number it cannot hold
    /// (`invalid_argument`). Appended to ABI v1: older plugins ignore it and run one sequence.
    #[serde(default)]
    pub parallel: Option<u32>,
    /// Backend-specific options, passed through untouched.
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A special token: its id and its text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpecialToken {
    /// Token id.
    pub id: i32,
    /// Token text, e.g. `"<｜begin▁of▁sentence｜>"`.
    pub text: String,
}

/// Memory a loaded model holds, in bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryBreakdown {
    /// Weights (the mapped tensor data).
    pub weights_bytes: u64,
    /// KV cache for the configured context length.
    pub kv_cache_bytes: u64,
    /// Compute buffers (scratch for one batch), when the backend knows them.
    #[serde(default)]
    pub compute_bytes: Option<u64>,
    /// Of the above, the part placed on GPUs.
    #[serde(default)]
    pub gpu_bytes: u64,
}

/// Result of `estimate`: what a `load` with the same [`LoadParams`] would allocate, by the
/// backend's own accounting (llama.cpp: a dry run with `no_alloc`, the mechanism behind its
/// `llama_params_fit`), without loading the weights. All sizes in bytes.
///
/// Host RAM a load holds is `ram_bytes()`: on the host device the mapped file's weights (resident
/// once read: file-backed pages), the weights copied into anonymous memory (repacked into a CPU
/// kernel's layout, or read without mmap), KV cache and compute buffers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Estimate {
    /// One entry per device that would hold something; the host (CPU/RAM) is `kind` `"cpu"`.
    #[serde(default)]
    pub devices: Vec<DeviceEstimate>,
    /// The backend's buffers as it names them (llama.cpp's buffer types: `CPU`, `CPU_REPACK`,
    /// `CUDA0` …), for reports; the totals are in `devices`.
    #[serde(default)]
    pub buffers: Vec<BufferEstimate>,
    /// Context length per sequence the estimate is for, in tokens (after the backend's rounding).
    #[serde(default)]
    pub context_length: u32,
    /// Sequences the estimate is for.
    #[serde(default)]
    pub parallel: u32,
    /// Layers on GPUs.
    #[serde(default)]
    pub gpu_layers: u32,
    /// How the figures were obtained, e.g. "llama.cpp no_alloc dry run".
    #[serde(default)]
    pub source: String,
}

impl Estimate {
    /// Bytes on the host (every `"cpu"` device): mapped and copied weights, KV cache, compute.
    pub fn ram_bytes(&self) -> u64 {
        self.devices
            .iter()
            .filter(|d| d.kind == "cpu")
            .map(DeviceEstimate::total_bytes)
            .sum()
    }

    /// Bytes on each GPU (every device that is not `"cpu"`), in `devices` order.
    pub fn vram_bytes(&self) -> Vec<u64> {
        self.devices
            .iter()
            .filter(|d| d.kind != "cpu")
            .map(DeviceEstimate::total_bytes)
            .collect()
    }
}

/// What one device would hold, in bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeviceEstimate {
    /// Device name as the backend reports it (`"CPU"`, `"CUDA0"`).
    pub name: String,
    /// `"cpu"` (host memory), `"gpu"` or `"accelerator"`.
    pub kind: String,
    /// Weights used in place from the memory-mapped model file (file-backed pages of the page
    /// cache; only on the host, only with mmap).
    #[serde(default)]
    pub weights_mapped_bytes: u64,
    /// Weights copied into memory of their own: on a GPU all its weights; on the host weights
    /// repacked for the CPU's kernels (anonymous memory *beside* the mapped file, whose pages are
    /// read once to make the copy) or, without mmap, all of them.
    #[serde(default)]
    pub weights_bytes: u64,
    /// Of `weights_bytes`, the repacked copies (llama.cpp's `CPU_REPACK` buffers).
    #[serde(default)]
    pub repacked_bytes: u64,
    /// KV cache for `parallel` × `context_length` tokens.
    #[serde(default)]
    pub kv_cache_bytes: u64,
    /// Compute (scratch) buffers for one batch.
    #[serde(default)]
    pub compute_bytes: u64,
}

impl DeviceEstimate {
    /// Everything the device would hold.
    pub fn total_bytes(&self) -> u64 {
        self.weights_mapped_bytes + self.weights_bytes + self.kv_cache_bytes + self.compute_bytes
    }
}

/// One backend buffer (type) of an [`Estimate`], in bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BufferEstimate {
    /// The backend's name for it (llama.cpp: the buffer type, e.g. `CPU_REPACK`).
    pub name: String,
    /// The device it lives on.
    pub device: String,
    /// Model weights in it.
    #[serde(default)]
    pub model_bytes: u64,
    /// Context state (KV cache) in it.
    #[serde(default)]
    pub context_bytes: u64,
    /// Compute buffers in it.
    #[serde(default)]
    pub compute_bytes: u64,
}

/// Result of `info`: what was loaded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    /// Model path as loaded.
    pub path: String,
    /// `general.name` or the file stem.
    #[serde(default)]
    pub name: Option<String>,
    /// Architecture, e.g. `"qwen2"`, `"llama"` (GGUF `general.architecture`).
    #[serde(default)]
    pub architecture: Option<String>,
    /// Parameter count.
    #[serde(default)]
    pub parameters: u64,
    /// Transformer layers (blocks).
    #[serde(default)]
    pub layers: u32,
    /// Layers offloaded to a GPU.
    #[serde(default)]
    pub gpu_layers: u32,
    /// Context length the model was trained with, in tokens.
    #[serde(default)]
    pub trained_context_length: u32,
    /// Context length of this instance's KV cache, in tokens.
    #[serde(default)]
    pub context_length: u32,
    /// Embedding (hidden) size.
    #[serde(default)]
    pub embedding_length: u32,
    /// Vocabulary size in tokens.
    #[serde(default)]
    pub vocab_size: u32,
    /// Quantization / file type as a name, e.g. `"Q4_K_M"`, `"Q4_1"`, `"F16"`.
    #[serde(default)]
    pub file_type: Option<String>,
    /// Memory held.
    #[serde(default)]
    pub memory: MemoryBreakdown,
    /// The model's own Jinja chat template (GGUF `tokenizer.chat_template`).
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Beginning-of-sequence token.
    #[serde(default)]
    pub bos_token: Option<SpecialToken>,
    /// End-of-sequence token.
    #[serde(default)]
    pub eos_token: Option<SpecialToken>,
    /// All end-of-generation token ids (EOS, EOT, …).
    #[serde(default)]
    pub eog_token_ids: Vec<i32>,
    /// Whether the tokenizer adds BOS itself when asked to add special tokens.
    #[serde(default)]
    pub add_bos_token: bool,
    /// True when only the vocabulary was loaded.
    #[serde(default)]
    pub vocab_only: bool,
    /// How many `generate` calls this model runs at once (continuous batching: each call is one
    /// sequence of a shared batch). 0 (absent: an older plugin) and 1 both mean one call at a
    /// time. `context_length` is per sequence; `memory.kv_cache_bytes` covers all of them.
    #[serde(default)]
    pub parallel_sequences: u32,
    /// Whether `generate` honours [`GenerateRequest::logprobs`] (appended; absent: an older
    /// plugin, which does not). A host refuses a request for log probabilities to a model
    /// without it.
    #[serde(default)]
    pub logprobs: bool,
}

/// Parameters of `generate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerateRequest {
    /// Prompt token ids (from `tokenize`, after the host rendered the chat template).
    pub prompt_tokens: Vec<i32>,
    /// Most tokens to generate; the generation ends with `finish_reason: "length"` there.
    pub max_tokens: u32,
    /// Sampling temperature; 0 = greedy (argmax).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Nucleus sampling threshold in (0, 1]; 1 disables it.
    #[serde(default = "one")]
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables it.
    #[serde(default)]
    pub top_k: i32,
    /// Minimum probability relative to the top token; 0 disables it.
    #[serde(default)]
    pub min_p: f32,
    /// Sampling seed; `None` = random.
    #[serde(default)]
    pub seed: Option<u32>,
    /// Token ids that end the generation besides the model's end-of-generation tokens.
    #[serde(default)]
    pub stop_tokens: Vec<i32>,
    /// Keep going past end-of-generation tokens (for benchmarks and reference tests).
    #[serde(default)]
    pub ignore_eos: bool,
    // Appended fields (ABI v1 stays v1: each has a default meaning "off", so a host that does not
    // send them and a plugin that does not read them keep today's behaviour). A plugin that cannot
    // honour a value other than the default refuses the request with `R1_ERR_INVALID_ARGUMENT`
    // naming the field; it never ignores it.
    /// OpenAI's `presence_penalty` (−2 to 2): subtracted from the logit of every token that
    /// occurs among the last `penalty_last_n` tokens; 0 disables it.
    #[serde(default)]
    pub presence_penalty: f32,
    /// OpenAI's `frequency_penalty` (−2 to 2): subtracted once per occurrence among the last
    /// `penalty_last_n` tokens; 0 disables it.
    #[serde(default)]
    pub frequency_penalty: f32,
    /// Ollama's `repeat_penalty` (llama.cpp's): the logit of a token among the last
    /// `penalty_last_n` is divided by it (multiplied when negative); 1 disables it.
    #[serde(default = "one")]
    pub repeat_penalty: f32,
    /// How many of the last tokens the three penalties look at (Ollama's `repeat_last_n`);
    /// 0 disables them, −1 means the whole context.
    #[serde(default = "default_penalty_last_n")]
    pub penalty_last_n: i32,
    /// `[token id, bias]` pairs added to those tokens' logits before sampling (OpenAI's
    /// `logit_bias`, −100 to 100); empty disables it.
    #[serde(default)]
    pub logit_bias: Vec<(i32, f32)>,
    /// Structured output: the answer must be JSON valid against this JSON Schema, given as JSON
    /// text (OpenAI's `response_format` `json_schema`, Ollama's `format: {schema}`;
    /// `{"type": "object"}` for `json_object` / `format: "json"`). `None` = free text. A plugin without constrained
    /// decoding refuses it with `R1_ERR_INVALID_ARGUMENT` naming `response_format`.
    #[serde(default)]
    pub json_schema: Option<String>,
    /// Text after which the `json_schema` constraint starts (R1's `</think>`: the reasoning stays
    /// free, the answer is constrained); the trigger text itself is kept. `None` = constrained
    /// from the first generated token.
    #[serde(default)]
    pub constrain_after: Option<String>,
    /// Literal text the constrained answer has before and after the JSON value (a forced tool
    /// call: `<tool_call>\n` and `\n</tool_call>`); `None` = the JSON value alone. Only with
    /// `json_schema`.
    #[serde(default)]
    pub json_wrap: Option<(String, String)>,
    /// Log probabilities: `Some(n)` asks for a [`TokenLogprobs`] call (token id
    /// [`crate::R1_TOKEN_LOGPROBS`]) before each generated token, with the token's own log
    /// probability and the `n` most likely tokens at its position (OpenAI's `top_logprobs`,
    /// 0–20). `None` = none. Only for a model whose [`ModelInfo::logprobs`] is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
}

/// The log probabilities of one generated token, the piece of an [`crate::R1_TOKEN_LOGPROBS`]
/// call. Natural logarithms of the model's probabilities at that position: the log-softmax of
/// the raw logits, before any sampling step (temperature, penalties, top-k/p, grammar), as
/// vLLM returns them by default and OpenAI documents `logprob` ("the log probability of this
/// token").
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TokenLogprobs {
    /// Log probability of the token that was generated (≤ 0).
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first (as many as asked for).
    #[serde(default)]
    pub top: Vec<TopLogprob>,
}

/// One of the most likely tokens at a position.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TopLogprob {
    /// Token id.
    pub id: i32,
    /// The token's piece, raw bytes (may be part of a UTF-8 character).
    pub bytes: Vec<u8>,
    /// Its log probability (≤ 0).
    pub logprob: f32,
}

/// An empty prompt, no tokens to generate, and every sampling option at the value a missing JSON
/// field takes (for struct literals: `GenerateRequest { prompt_tokens, max_tokens, ..Default::default() }`).
impl Default for GenerateRequest {
    fn default() -> Self {
        GenerateRequest {
            prompt_tokens: Vec::new(),
            max_tokens: 0,
            temperature: default_temperature(),
            top_p: one(),
            top_k: 0,
            min_p: 0.0,
            seed: None,
            stop_tokens: Vec::new(),
            ignore_eos: false,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repeat_penalty: one(),
            penalty_last_n: default_penalty_last_n(),
            logit_bias: Vec::new(),
            json_schema: None,
            constrain_after: None,
            json_wrap: None,
            logprobs: None,
        }
    }
}

impl GenerateRequest {
    /// Whether any penalty differs from its "off" value.
    pub fn has_penalties(&self) -> bool {
        self.penalty_last_n != 0
            && (self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0
                || self.repeat_penalty != 1.0)
    }
}

/// Ollama's default `repeat_last_n`.
fn default_penalty_last_n() -> i32 {
    64
}

fn default_temperature() -> f32 {
    0.8
}

fn one() -> f32 {
    1.0
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation or stop token was sampled (it is not streamed).
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The host's token callback returned false.
    Cancelled,
}

/// Result of `generate`: usage and timings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerateResult {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Prompt tokens evaluated (including any reused from a cache).
    pub prompt_tokens: u32,
    /// Prompt tokens taken from the KV cache of an earlier request instead of evaluated.
    #[serde(default)]
    pub cached_prompt_tokens: u32,
    /// Tokens generated and passed to the callback (the final stop token is not counted).
    pub completion_tokens: u32,
    /// Prompt processing time in milliseconds.
    pub prompt_ms: f64,
    /// Generation time in milliseconds (from the first sampled token to the end).
    pub generation_ms: f64,
    /// Time from the call to the first token handed to the callback, in milliseconds.
    #[serde(default)]
    pub time_to_first_token_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host from before the penalties were appended sends none of them: the request means what
    /// it meant then (every penalty and bias off).
    #[test]
    fn generate_request_without_appended_fields_has_them_off() {
        let r: GenerateRequest =
            serde_json::from_str(r#"{"prompt_tokens": [1, 2], "max_tokens": 4}"#).unwrap();
        assert_eq!(r.presence_penalty, 0.0);
        assert_eq!(r.frequency_penalty, 0.0);
        assert_eq!(r.repeat_penalty, 1.0);
        assert_eq!(r.penalty_last_n, 64);
        assert!(r.logit_bias.is_empty());
        assert!(r.json_schema.is_none() && r.constrain_after.is_none());
        assert!(!r.has_penalties());
        assert_eq!(
            r,
            GenerateRequest {
                prompt_tokens: vec![1, 2],
                max_tokens: 4,
                ..Default::default()
            }
        );
    }

    #[test]
    fn logit_bias_crosses_as_pairs() {
        let r: GenerateRequest = serde_json::from_str(
            r#"{"prompt_tokens": [1], "max_tokens": 1, "logit_bias": [[15, -100.0]]}"#,
        )
        .unwrap();
        assert_eq!(r.logit_bias, vec![(15, -100.0)]);
    }
}
