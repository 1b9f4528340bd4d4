//! The engine's own types for what it loads and what it reports: what the rest of the daemon
//! (the supervisor, the store, `api/`, `systemd`) sees of a model and of an answer.
//!
//! The plugin ABI's JSON documents (`r1_plugin_abi::json`) are a wire format between the host
//! and a plugin; they change with the ABI and carry fields that only a plugin needs. They stop at
//! the engine: the conversions below are the only place where the two meet, so a new ABI field
//! reaches the daemon only when it is added here on purpose.
//!
//! **API boundary**: nothing outside `backend` and `engine` names an `r1_plugin_abi` type;
//! `tests/boundaries` in this crate checks it.

use r1_plugin_abi::json as abi;

/// How to load a model: the parameters a load is asked for.
///
/// `None` leaves the choice to the backend, as documented per field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LoadParams {
    /// Path of the model file (GGUF) or directory (ONNX), UTF-8.
    pub path: String,
    /// Context length of the KV cache, in tokens; `None` = the model's trained context, capped
    /// by the backend.
    pub context_length: Option<u32>,
    /// Layers to offload to GPUs; `None` = all that fit, `Some(0)` = CPU only.
    pub gpu_layers: Option<u32>,
    /// Index of the main GPU for single-GPU placement.
    pub main_gpu: Option<i32>,
    /// Threads for generation; `None` = the backend's default.
    pub threads: Option<u32>,
    /// Threads for prompt processing; `None` = same as `threads`.
    pub threads_batch: Option<u32>,
    /// Logical batch size for prompt processing, in tokens; `None` = backend default.
    pub batch_size: Option<u32>,
    /// KV cache element type: `"f16"` (default), `"q8_0"`, `"q4_0"`, `"f32"`.
    pub kv_cache_type: Option<String>,
    /// Memory-map the weights; `None` = yes.
    pub use_mmap: Option<bool>,
    /// Load only the vocabulary (tokenizer and metadata): no generation possible.
    pub vocab_only: bool,
    /// Answers generated at once (sequences of one batch, each with `context_length` tokens of
    /// KV cache); `None` = 1. A backend may run fewer (see [`ModelInfo::parallel_sequences`]).
    pub parallel: Option<u32>,
}

/// A special token: its id and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecialToken {
    /// Token id.
    pub id: i32,
    /// Token text, e.g. `"<｜begin▁of▁sentence｜>"`.
    pub text: String,
}

/// Memory a loaded model holds, in bytes, as its backend reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMemory {
    /// Weights (the mapped tensor data).
    pub weights_bytes: u64,
    /// KV cache for the configured context length.
    pub kv_cache_bytes: u64,
    /// Compute buffers (scratch for one batch), when the backend knows them.
    pub compute_bytes: Option<u64>,
    /// Of the above, the part placed on GPUs.
    pub gpu_bytes: u64,
}

/// What was loaded: the resident model's facts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    /// Model path as loaded.
    pub path: String,
    /// GGUF `general.name` (or the backend's equivalent), when the file has one.
    pub name: Option<String>,
    /// Architecture, e.g. `"qwen2"`, `"llama"` (GGUF `general.architecture`).
    pub architecture: Option<String>,
    /// Parameter count.
    pub parameters: u64,
    /// Transformer layers (blocks).
    pub layers: u32,
    /// Layers offloaded to a GPU.
    pub gpu_layers: u32,
    /// Context length the model was trained with, in tokens.
    pub trained_context_length: u32,
    /// Context length of this instance's KV cache, in tokens.
    pub context_length: u32,
    /// Embedding (hidden) size.
    pub embedding_length: u32,
    /// Vocabulary size, in tokens.
    pub vocab_size: u32,
    /// Quantization / file type, e.g. `"Q4_K_M"`, `"Q4_1"`, `"F16"`.
    pub file_type: Option<String>,
    /// Memory held.
    pub memory: ModelMemory,
    /// The model's own Jinja chat template (GGUF `tokenizer.chat_template`).
    pub chat_template: Option<String>,
    /// Beginning-of-sequence token.
    pub bos_token: Option<SpecialToken>,
    /// End-of-sequence token.
    pub eos_token: Option<SpecialToken>,
    /// All end-of-generation token ids (EOS, EOT, …).
    pub eog_token_ids: Vec<i32>,
    /// Whether the tokenizer adds BOS itself when asked to add special tokens.
    pub add_bos_token: bool,
    /// True when only the vocabulary was loaded.
    pub vocab_only: bool,
    /// Answers the model generates at once (at least 1).
    pub parallel_sequences: u32,
    /// Whether its backend returns token log probabilities.
    pub logprobs: bool,
    /// The plugin file that serves it (the engine sets it; several files may be the same
    /// backend, e.g. the llama.cpp CPU and CPU-variants builds). `None` for internal backends.
    pub backend_file: Option<std::path::PathBuf>,
}

/// The log probability of one generated token and of the most likely tokens at its position
/// (natural logarithms of the model's probabilities before sampling: see the plugin ABI's
/// `TokenLogprobs`). The wire formats (OpenAI's `logprobs.content`, the legacy completion
/// `logprobs`) are made from it in `api/`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's piece, raw bytes (a UTF-8 character may be split across tokens).
    pub bytes: Vec<u8>,
    /// Its log probability (≤ 0).
    pub logprob: f32,
    /// The most likely tokens at its position, most likely first: piece bytes and log
    /// probability.
    pub top: Vec<(Vec<u8>, f32)>,
}

impl TokenLogprob {
    /// The entry of a token with piece `bytes`, from the plugin's document.
    pub fn from_abi(bytes: &[u8], doc: abi::TokenLogprobs) -> TokenLogprob {
        TokenLogprob {
            bytes: bytes.to_vec(),
            logprob: doc.logprob,
            top: doc.top.into_iter().map(|t| (t.bytes, t.logprob)).collect(),
        }
    }
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// The token limit (`max_tokens`) was reached.
    Length,
    /// The request was cancelled (its client went away).
    Cancelled,
}

/// Usage and timings of one answer, as the backend measured them.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateResult {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Prompt tokens, including those reused from the KV cache.
    pub prompt_tokens: u32,
    /// Prompt tokens taken from the KV cache of an earlier request instead of evaluated.
    pub cached_prompt_tokens: u32,
    /// Tokens generated (the final stop token is not counted).
    pub completion_tokens: u32,
    /// Prompt processing time, in milliseconds.
    pub prompt_ms: f64,
    /// Generation time, in milliseconds (from the first sampled token to the end).
    pub generation_ms: f64,
    /// Time from the call to the first token, in milliseconds.
    pub time_to_first_token_ms: Option<f64>,
    /// Of the completion tokens, those generated inside R1's reasoning (`<think>` … `</think>`,
    /// the closing tag's tokens included), counted by the engine as it splits the answer; `None`
    /// where it is not counted (raw reasoning format, a remote model).
    pub reasoning_tokens: Option<u32>,
}

impl From<&LoadParams> for abi::LoadParams {
    fn from(p: &LoadParams) -> abi::LoadParams {
        abi::LoadParams {
            path: p.path.clone(),
            context_length: p.context_length,
            gpu_layers: p.gpu_layers,
            main_gpu: p.main_gpu,
            threads: p.threads,
            threads_batch: p.threads_batch,
            batch_size: p.batch_size,
            kv_cache_type: p.kv_cache_type.clone(),
            use_mmap: p.use_mmap,
            vocab_only: p.vocab_only,
            parallel: p.parallel,
            extra: serde_json::Value::Null,
        }
    }
}

/// A backend's estimate as the planner takes it: the host (`"cpu"`) devices' figures summed.
/// `backend` names who answered.
pub fn backend_estimate(backend: &str, e: &abi::Estimate) -> crate::planner::BackendEstimate {
    let host = e.devices.iter().filter(|d| d.kind == "cpu");
    let sum = |f: fn(&abi::DeviceEstimate) -> u64| host.clone().map(f).sum::<u64>();
    crate::planner::BackendEstimate {
        context_length: e.context_length,
        weights_mapped_bytes: sum(|d| d.weights_mapped_bytes),
        weights_copied_bytes: sum(|d| d.weights_bytes),
        kv_cache_bytes: sum(|d| d.kv_cache_bytes) / u64::from(e.parallel.max(1)),
        compute_bytes: sum(|d| d.compute_bytes),
        source: if e.source.is_empty() {
            backend.to_owned()
        } else {
            format!("{backend}: {}", e.source)
        },
    }
}

impl From<abi::SpecialToken> for SpecialToken {
    fn from(t: abi::SpecialToken) -> SpecialToken {
        SpecialToken {
            id: t.id,
            text: t.text,
        }
    }
}

impl From<abi::MemoryBreakdown> for ModelMemory {
    fn from(m: abi::MemoryBreakdown) -> ModelMemory {
        ModelMemory {
            weights_bytes: m.weights_bytes,
            kv_cache_bytes: m.kv_cache_bytes,
            compute_bytes: m.compute_bytes,
            gpu_bytes: m.gpu_bytes,
        }
    }
}

impl From<abi::ModelInfo> for ModelInfo {
    fn from(i: abi::ModelInfo) -> ModelInfo {
        ModelInfo {
            path: i.path,
            name: i.name,
            architecture: i.architecture,
            parameters: i.parameters,
            layers: i.layers,
            gpu_layers: i.gpu_layers,
            trained_context_length: i.trained_context_length,
            context_length: i.context_length,
            embedding_length: i.embedding_length,
            vocab_size: i.vocab_size,
            file_type: i.file_type,
            memory: i.memory.into(),
            chat_template: i.chat_template,
            bos_token: i.bos_token.map(Into::into),
            eos_token: i.eos_token.map(Into::into),
            eog_token_ids: i.eog_token_ids,
            add_bos_token: i.add_bos_token,
            vocab_only: i.vocab_only,
            parallel_sequences: i.parallel_sequences.max(1),
            logprobs: i.logprobs,
            backend_file: None,
        }
    }
}

impl From<abi::FinishReason> for FinishReason {
    fn from(f: abi::FinishReason) -> FinishReason {
        match f {
            abi::FinishReason::Stop => FinishReason::Stop,
            abi::FinishReason::Length => FinishReason::Length,
            abi::FinishReason::Cancelled => FinishReason::Cancelled,
        }
    }
}

impl From<abi::GenerateResult> for GenerateResult {
    fn from(r: abi::GenerateResult) -> GenerateResult {
        GenerateResult {
            finish_reason: r.finish_reason.into(),
            prompt_tokens: r.prompt_tokens,
            cached_prompt_tokens: r.cached_prompt_tokens,
            completion_tokens: r.completion_tokens,
            prompt_ms: r.prompt_ms,
            generation_ms: r.generation_ms,
            time_to_first_token_ms: r.time_to_first_token_ms,
            reasoning_tokens: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_params_reach_the_abi_unchanged() {
        let p = LoadParams {
            path: "/m/x.gguf".into(),
            context_length: Some(4096),
            gpu_layers: Some(0),
            main_gpu: Some(1),
            threads: Some(2),
            threads_batch: Some(3),
            batch_size: Some(512),
            kv_cache_type: Some("q8_0".into()),
            use_mmap: Some(false),
            vocab_only: true,
            parallel: Some(4),
        };
        let a = abi::LoadParams::from(&p);
        assert_eq!(a.path, "/m/x.gguf");
        assert_eq!(a.context_length, Some(4096));
        assert_eq!(a.gpu_layers, Some(0));
        assert_eq!(a.main_gpu, Some(1));
        assert_eq!(
            (a.threads, a.threads_batch, a.batch_size),
            (Some(2), Some(3), Some(512))
        );
        assert_eq!(a.kv_cache_type.as_deref(), Some("q8_0"));
        assert_eq!(a.use_mmap, Some(false));
        assert!(a.vocab_only);
        assert_eq!(a.parallel, Some(4));
        assert!(a.extra.is_null());
    }

    #[test]
    fn model_info_keeps_every_fact_the_plugin_reported() {
        let a = abi::ModelInfo {
            path: "/m/x.gguf".into(),
            name: Some("X".into()),
            architecture: Some("qwen2".into()),
            parameters: 7_615_616_512,
            layers: 28,
            gpu_layers: 5,
            trained_context_length: 131_072,
            context_length: 4096,
            embedding_length: 3584,
            vocab_size: 152_064,
            file_type: Some("Q4_K_M".into()),
            memory: abi::MemoryBreakdown {
                weights_bytes: 10,
                kv_cache_bytes: 20,
                compute_bytes: Some(30),
                gpu_bytes: 40,
            },
            chat_template: Some("{{ x }}".into()),
            bos_token: Some(abi::SpecialToken {
                id: 1,
                text: "<s>".into(),
            }),
            eos_token: Some(abi::SpecialToken {
                id: 2,
                text: "</s>".into(),
            }),
            eog_token_ids: vec![2, 3],
            add_bos_token: true,
            vocab_only: false,
            parallel_sequences: 3,
            logprobs: true,
        };
        let i = ModelInfo::from(a);
        assert_eq!(i.parallel_sequences, 3);
        assert!(i.logprobs);
        assert_eq!(i.parameters, 7_615_616_512);
        assert_eq!((i.layers, i.gpu_layers, i.context_length), (28, 5, 4096));
        assert_eq!(i.memory.compute_bytes, Some(30));
        assert_eq!(i.memory.gpu_bytes, 40);
        assert_eq!(
            i.bos_token,
            Some(SpecialToken {
                id: 1,
                text: "<s>".into()
            })
        );
        assert_eq!(i.eog_token_ids, vec![2, 3]);
        assert!(i.add_bos_token);
    }
}
