//! A loaded GGUF model: loading, `info` and `tokenize`. Generation is in `generate.rs`.

use std::num::NonZeroU32;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::LlamaModelLoadError;
use r1_plugin_sdk::{LoadParams, MemoryBreakdown, ModelInfo, PluginError, SpecialToken};

use crate::generate::Batcher;
use crate::{backend, ftype};

/// Context length used when the load parameters give none: the trained context, capped here so a
/// 128k-context model does not reserve gigabytes of KV cache nobody asked for.
pub const DEFAULT_CONTEXT_CAP: u32 = 4096;

/// Logical batch size in tokens when the load parameters give none.
pub const DEFAULT_BATCH_SIZE: u32 = 512;

/// Most sequences one model may run at once (`LoadParams::parallel`). llama.cpp allows 256
/// (`LLAMA_MAX_SEQ` in `llama-cparams.h`); beyond a few dozen a CPU or a single GPU gains nothing
/// and each sequence reserves a full context of KV cache.
pub const MAX_PARALLEL: u32 = 64;

/// Element type of the KV cache (`LoadParams::kv_cache_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    /// 16-bit floats, 2 bytes per element (the default).
    F16,
    /// 32-bit floats, 4 bytes per element.
    F32,
    /// 8-bit blocks: 34 bytes per 32 elements.
    Q8_0,
    /// 4-bit blocks: 18 bytes per 32 elements.
    Q4_0,
}

impl KvType {
    /// Parses `"f16"`, `"f32"`, `"q8_0"`, `"q4_0"` (any case); `None` = `F16`.
    ///
    /// # Errors
    /// [`PluginError::invalid_argument`] naming the unknown value and the accepted ones.
    pub fn parse(value: Option<&str>) -> Result<Self, PluginError> {
        match value.map(str::to_ascii_lowercase).as_deref() {
            None | Some("f16") => Ok(KvType::F16),
            Some("f32") => Ok(KvType::F32),
            Some("q8_0") => Ok(KvType::Q8_0),
            Some("q4_0") => Ok(KvType::Q4_0),
            Some(other) => Err(PluginError::invalid_argument(format!(
                "unknown kv_cache_type \"{other}\" (expected f16, q8_0, q4_0 or f32)"
            ))),
        }
    }

    /// Bytes for `elements` elements (rounded up to whole blocks for the quantized types).
    pub fn bytes(self, elements: u64) -> u64 {
        let (block_elements, block_bytes) = match self {
            KvType::F16 => (1, 2),
            KvType::F32 => (1, 4),
            KvType::Q8_0 => (32, 34),
            KvType::Q4_0 => (32, 18),
        };
        elements.div_ceil(block_elements) * block_bytes
    }

    pub(crate) fn llama_type(self) -> KvCacheType {
        match self {
            KvType::F16 => KvCacheType::F16,
            KvType::F32 => KvCacheType::F32,
            KvType::Q8_0 => KvCacheType::Q8_0,
            KvType::Q4_0 => KvCacheType::Q4_0,
        }
    }
}

/// A handle that stops generations from another thread: every generation in progress (or, if none
/// is, the next one to start) ends with `FinishReason::Cancelled` at the next decode step. The r1d
/// ABI has no such call (the token callback cancels one generation); this is the hook for it.
#[derive(Debug, Clone)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A GGUF model loaded by llama.cpp, with its context unless it was loaded vocab-only.
///
/// `LlamaContext` borrows `LlamaModel`, so the two cannot simply be fields of one struct. The model
/// is boxed and leaked at load (`model`, the only pointer to it), the context borrows it as
/// `'static`, and `Drop` frees the context before reclaiming the box. The model never moves and
/// lives exactly as long as this struct, which makes the `'static` borrow sound as long as no
/// reference to the model escapes the struct (none does: every accessor borrows `self`).
pub struct LlamaCppModel {
    /// The thread that owns the llama.cpp context and runs every generation in one batch; `None`
    /// when loaded vocab-only. Dropped (its thread joined) before `model` (see `Drop`).
    pub(crate) batcher: Option<Batcher>,
    /// The leaked `Box<LlamaModel>`; reclaimed in `Drop`.
    model: NonNull<LlamaModel>,
    pub(crate) path: String,
    pub(crate) vocab_only: bool,
    /// Layers llama.cpp was asked to offload (`n_gpu_layers`), before capping at the layer count.
    requested_gpu_layers: u32,
    /// Whether this llama.cpp build can offload to a GPU at all.
    gpu_offload: bool,
    kv_type: KvType,
    /// All end-of-generation token ids, ascending.
    pub(crate) eog_ids: Vec<i32>,
    pub(crate) cancel: Arc<AtomicBool>,
}

// SAFETY: `model` is the only owning pointer to a heap `LlamaModel`, which is `Send + Sync`; the
// batcher's thread borrows it (shared) until the batcher is dropped, which `Drop` does first. The
// other fields are owned and `Send + Sync` (the batcher holds only a channel sender, a join handle
// and numbers). Shared use from several threads only reads the model (metadata, vocabulary) and
// sends to the batcher, both thread-safe.
unsafe impl Send for LlamaCppModel {}
// SAFETY: see `Send` above.
unsafe impl Sync for LlamaCppModel {}

impl Drop for LlamaCppModel {
    fn drop(&mut self) {
        // The batcher's context borrows the model: stop its thread and free the context first.
        self.batcher = None;
        // SAFETY: `model` came from `Box::leak` in `load` and is reclaimed only here, once; the
        // context that borrowed it is gone and no other reference to it outlives `&mut self`.
        drop(unsafe { Box::from_raw(self.model.as_ptr()) });
    }
}

impl LlamaCppModel {
    /// The loaded model, borrowed for as long as `self`.
    pub(crate) fn model(&self) -> &LlamaModel {
        // SAFETY: `model` points to a live `LlamaModel` until `Drop` (see the struct docs); the
        // shared borrow is tied to `&self`, so it cannot outlive it.
        unsafe { self.model.as_ref() }
    }

    /// A handle that cancels generations of this model from another thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(Arc::clone(&self.cancel))
    }

    /// Loads `params.path`; see [`crate::LlamaCppPlugin`] for the parameters and defaults.
    pub(crate) fn load(
        params: LoadParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Self, PluginError> {
        let backend = backend::backend()?;
        let path = params.path.clone();
        let kv_type = KvType::parse(params.kv_cache_type.as_deref())?;
        if params.batch_size == Some(0) {
            return Err(PluginError::invalid_argument(
                "batch_size must be at least 1",
            ));
        }
        check_readable(&path)?;
        let workers = crate::rpc::workers_from_extra(&params.extra)?;
        if !workers.is_empty() && !params.vocab_only {
            let attached = crate::rpc::attach(&workers)?;
            if attached.used.is_empty() {
                tracing::warn!(
                    "no rpc worker answered ({}); loading {path} on the local devices only",
                    attached
                        .missing
                        .iter()
                        .map(|(w, why)| format!("{w}: {why}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
        }

        // Not `supports_gpu_offload`: llama.cpp says yes to that whenever the RPC backend is
        // compiled in, GPU or not.
        let gpu_offload = crate::rpc::offload_device_present();
        let requested_gpu_layers =
            params
                .gpu_layers
                .unwrap_or(if gpu_offload { u32::MAX } else { 0 });
        if gpu_offload && requested_gpu_layers > 0 && !params.vocab_only {
            // A header that cannot be read is llama.cpp's to report, in its own words.
            if let Ok(header) = gguf_header::read(Path::new(&path)) {
                crate::devices::check_device_memory(
                    &path,
                    &header,
                    requested_gpu_layers,
                    params.main_gpu,
                    &crate::devices::gpus(),
                )?;
            }
        }
        let mut model_params = LlamaModelParams::default()
            .with_use_mmap(params.use_mmap.unwrap_or(true))
            .with_vocab_only(params.vocab_only)
            .with_n_gpu_layers(requested_gpu_layers);
        if let Some(main_gpu) = params.main_gpu {
            model_params = model_params
                .with_split_mode(LlamaSplitMode::None)
                .with_main_gpu(main_gpu);
        }

        let cancelled = Arc::new(AtomicBool::new(false));
        let progress_ptr: *mut (dyn FnMut(f32) -> bool + '_) = progress;
        // SAFETY: only the lifetime bound of the trait object changes (same fat pointer). The
        // pointer is used only by the progress callback below, which llama.cpp calls only inside
        // `load_from_file`; `model_params`, which owns the callback, is dropped right after that
        // call and before `progress`'s borrow ends.
        let progress_ptr: *mut (dyn FnMut(f32) -> bool + 'static) =
            unsafe { std::mem::transmute(progress_ptr) };
        let cancelled_flag = Arc::clone(&cancelled);
        let model_params = model_params.with_progress_callback(move |fraction| {
            let go_on = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: see the transmute above: the closure is alive for the whole load, which
                // is the only time this runs, and nothing else uses it meanwhile.
                unsafe { (*progress_ptr)(fraction) }
            }))
            .unwrap_or(false);
            if !go_on {
                cancelled_flag.store(true, Ordering::SeqCst);
            }
            go_on
        });

        backend::clear_error_lines();
        r1_plugin_sdk::clear_last_error_line();
        let loaded = LlamaModel::load_from_file(backend, &path, &model_params);
        drop(model_params);
        let model = match loaded {
            Ok(model) => model,
            Err(_) if cancelled.load(Ordering::SeqCst) => {
                return Err(PluginError::cancelled(format!(
                    "loading model {path} was cancelled"
                )))
            }
            Err(LlamaModelLoadError::NullResult) => {
                return Err(PluginError::load_failed(load_failure_message(&path)))
            }
            Err(e) => {
                return Err(PluginError::invalid_argument(format!(
                    "failed to load model {path}: {e}"
                )))
            }
        };

        // llama.cpp's own placement of the layers, per device (RPC devices are named
        // `RPCn[HOST:PORT]`): what r1d's plan of the split is checked against.
        let placed = backend::take_layer_devices();
        if !params.vocab_only && placed.iter().any(|(d, _)| d.starts_with("RPC")) {
            tracing::info!(
                path = path.as_str(),
                "llama.cpp placed the layers: {}",
                placed
                    .iter()
                    .map(|(d, n)| match crate::rpc::device_endpoint(d) {
                        Some(endpoint) => format!("{d} ({endpoint}) {n}"),
                        None => format!("{d} {n}"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let eog_ids = {
            let vocab = model.vocab();
            vocab
                .tokens()
                .filter(|t| vocab.is_eog(*t))
                .map(|t| t.0)
                .collect()
        };
        let mut loaded = LlamaCppModel {
            batcher: None,
            model: NonNull::from(Box::leak(Box::new(model))),
            path,
            vocab_only: params.vocab_only,
            requested_gpu_layers,
            gpu_offload,
            kv_type,
            eog_ids,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        if !params.vocab_only {
            loaded.batcher = Some(loaded.new_batcher(&params, kv_type)?);
        }
        tracing::info!(
            path = loaded.path.as_str(),
            vocab_only = loaded.vocab_only,
            n_ctx = loaded.batcher.as_ref().map(|b| b.n_ctx_seq),
            parallel = loaded.batcher.as_ref().map(|b| b.n_seq),
            "loaded model"
        );
        Ok(loaded)
    }

    /// Creates the llama.cpp context for `params.parallel` sequences of `params.context_length`
    /// tokens each — one unified KV cache of `parallel × context_length` cells (llama.cpp's
    /// `kv_unified`, as `llama-server --kv-unified -np N` uses) — and starts its batcher thread.
    fn new_batcher(&self, params: &LoadParams, kv_type: KvType) -> Result<Batcher, PluginError> {
        let backend = backend::backend()?;
        // SAFETY: the model lives, unmoved, until `Drop` of the `LlamaCppModel` that will own this
        // batcher, and `Drop` stops the batcher first (see the struct docs), so the context never
        // outlives the model it borrows.
        let model: &'static LlamaModel = unsafe { self.model.as_ref() };
        let ContextPlan {
            n_ctx_seq,
            n_seq,
            n_ctx,
            n_batch,
            n_ubatch,
            threads,
            threads_batch,
        } = ContextPlan::new(params, model.n_ctx_train())?;
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_ubatch)
            .with_n_threads(i32::try_from(threads).unwrap_or(i32::MAX))
            .with_n_threads_batch(i32::try_from(threads_batch).unwrap_or(i32::MAX))
            .with_type_k(kv_type.llama_type())
            .with_type_v(kv_type.llama_type())
            .with_n_seq_max(n_seq)
            .with_kv_unified(true)
            .with_no_perf(false);

        backend::clear_error_lines();
        r1_plugin_sdk::clear_last_error_line();
        let ctx = model.new_context(backend, ctx_params).map_err(|_| {
            let reason = backend::failure_reason(&backend::take_error_lines())
                .unwrap_or_else(|| "llama.cpp gave no reason".to_owned());
            PluginError::load_failed(format!(
                "failed to create a context of {n_ctx} tokens for {}: {reason}",
                self.path
            ))
        })?;
        // llama.cpp rounds the context up (to a multiple of 256); each sequence gets its share.
        let n_ctx_seq = (ctx.n_ctx() / n_seq).max(n_ctx_seq.min(ctx.n_ctx()));
        Batcher::start(
            ctx,
            model,
            self.path.clone(),
            n_seq,
            n_ctx_seq,
            Arc::clone(&self.cancel),
        )
    }

    /// Reads a scalar GGUF metadata value as text (arrays are not available this way).
    fn meta(&self, key: &str) -> Option<String> {
        self.model().meta_val_str(key).ok()
    }

    fn meta_u64(&self, key: &str) -> Option<u64> {
        self.meta(key)?.trim().parse().ok()
    }

    /// Text of a token id, `None` for ids outside the vocabulary (llama.cpp's "none" is -1).
    fn token_text(&self, id: i32) -> Option<SpecialToken> {
        let vocab = self.model().vocab();
        if id < 0 || id >= vocab.n_tokens() {
            return None;
        }
        let text = vocab.text(LlamaToken(id))?.to_string_lossy().into_owned();
        Some(SpecialToken { id, text })
    }

    /// See [`crate::LlamaCppPlugin`] and `ModelInfo` for the fields.
    pub(crate) fn info(&self) -> ModelInfo {
        let model = self.model();
        let vocab = model.vocab();
        let architecture = self.meta("general.architecture");
        let arch = architecture.as_deref().unwrap_or("");
        let arch_u32 = |key: &str| {
            self.meta_u64(&format!("{arch}.{key}"))
                .and_then(|v| u32::try_from(v).ok())
        };
        // A vocab-only model has no hyperparameters in llama.cpp (and `n_head()` would abort the
        // process), so read them from the metadata instead.
        let (layers, embedding, trained_ctx, n_head, n_head_kv) = if self.vocab_only {
            let n_head = arch_u32("attention.head_count").unwrap_or(0);
            (
                arch_u32("block_count").unwrap_or(0),
                arch_u32("embedding_length").unwrap_or(0),
                arch_u32("context_length").unwrap_or(0),
                n_head,
                arch_u32("attention.head_count_kv").unwrap_or(n_head),
            )
        } else {
            (
                model.n_layer(),
                u32::try_from(model.n_embd()).unwrap_or(0),
                model.n_ctx_train(),
                model.n_head(),
                model.n_head_kv(),
            )
        };
        let head_dim = embedding.checked_div(n_head).unwrap_or(0);
        let head_dim_k = arch_u32("attention.key_length").unwrap_or(head_dim);
        let head_dim_v = arch_u32("attention.value_length").unwrap_or(head_dim);

        let context_length = self.batcher.as_ref().map_or(0, |b| b.n_ctx_seq);
        let parallel_sequences = self.batcher.as_ref().map_or(0, |b| b.n_seq);
        let kv_elements = u64::from(context_length)
            * u64::from(parallel_sequences.max(1))
            * u64::from(layers)
            * u64::from(n_head_kv)
            * u64::from(head_dim_k + head_dim_v);
        let kv_cache_bytes = self.kv_type.bytes(kv_elements);
        let weights_bytes = model.size();
        let gpu_layers = if self.gpu_offload && !self.vocab_only {
            self.requested_gpu_layers.min(layers)
        } else {
            0
        };
        // An estimate: offloaded layers carry their share of the weights and of the KV cache.
        let gpu_bytes = if layers == 0 {
            0
        } else {
            (u128::from(weights_bytes + kv_cache_bytes) * u128::from(gpu_layers)
                / u128::from(layers)) as u64
        };

        let name = self.meta("general.name").or_else(|| {
            Path::new(&self.path)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        });
        let file_type = self
            .meta_u64("general.file_type")
            .and_then(|v| u32::try_from(v).ok())
            .and_then(ftype::name)
            .map(str::to_owned);

        ModelInfo {
            path: self.path.clone(),
            name,
            architecture,
            parameters: model.n_params(),
            layers,
            gpu_layers,
            trained_context_length: trained_ctx,
            context_length,
            embedding_length: embedding,
            vocab_size: u32::try_from(vocab.n_tokens()).unwrap_or(0),
            file_type,
            memory: MemoryBreakdown {
                weights_bytes,
                kv_cache_bytes,
                compute_bytes: None,
                gpu_bytes,
            },
            chat_template: self.meta("tokenizer.chat_template"),
            bos_token: self.token_text(vocab.bos().0),
            eos_token: self.token_text(vocab.eos().0),
            eog_token_ids: self.eog_ids.clone(),
            add_bos_token: vocab.should_add_bos(),
            vocab_only: self.vocab_only,
            parallel_sequences,
            logprobs: !self.vocab_only,
        }
    }

    /// Tokenizes `text`; see `Model::tokenize`.
    pub(crate) fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<i32>, PluginError> {
        // llama.cpp counts in `int32_t`; the worst case is one token per byte plus BOS/EOS.
        if text.len() > (i32::MAX as usize) / 2 {
            return Err(PluginError::invalid_argument(format!(
                "text of {} bytes is too long to tokenize",
                text.len()
            )));
        }
        let tokens = self
            .model()
            .vocab()
            .tokenize(text.as_bytes(), add_special, parse_special);
        Ok(tokens.into_iter().map(|t| t.0).collect())
    }
}

/// The llama.cpp context a [`LoadParams`] asks for: the same numbers for `load` and `estimate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ContextPlan {
    /// Context length per sequence, in tokens (before llama.cpp's rounding).
    pub n_ctx_seq: u32,
    /// Sequences in the unified KV cache.
    pub n_seq: u32,
    /// Cells of the KV cache: `n_ctx_seq × n_seq`.
    pub n_ctx: u32,
    /// Logical batch, tokens.
    pub n_batch: u32,
    /// Physical batch, tokens: the smaller of `n_batch` and [`DEFAULT_BATCH_SIZE`].
    pub n_ubatch: u32,
    /// Generation threads.
    pub threads: u32,
    /// Prompt-processing threads.
    pub threads_batch: u32,
}

impl ContextPlan {
    /// Applies the defaults of [`crate::LlamaCppPlugin`] to `params`; `n_ctx_train` is the
    /// model's trained context (the default context, capped at [`DEFAULT_CONTEXT_CAP`]).
    ///
    /// # Errors
    /// [`PluginError::invalid_argument`] for a `parallel` outside 1..=[`MAX_PARALLEL`], a context
    /// that overflows, or a batch smaller than `parallel`.
    pub(crate) fn new(params: &LoadParams, n_ctx_train: u32) -> Result<Self, PluginError> {
        let n_ctx_seq = match params.context_length {
            Some(n) if n > 0 => n,
            _ => n_ctx_train.clamp(1, DEFAULT_CONTEXT_CAP),
        };
        let n_seq = params.parallel.unwrap_or(1);
        if n_seq == 0 || n_seq > MAX_PARALLEL {
            return Err(PluginError::invalid_argument(format!(
                "parallel must be 1 to {MAX_PARALLEL} sequences, got {n_seq}"
            )));
        }
        let n_ctx = n_ctx_seq.checked_mul(n_seq).ok_or_else(|| {
            PluginError::invalid_argument(format!(
                "{n_seq} sequences of {n_ctx_seq} tokens exceed llama.cpp's context limit"
            ))
        })?;
        let threads = match params.threads {
            Some(n) if n > 0 => n,
            _ => std::thread::available_parallelism().map_or(4, |n| n.get() as u32),
        };
        let threads_batch = params.threads_batch.filter(|n| *n > 0).unwrap_or(threads);
        let n_batch = params.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if n_batch == 0 {
            return Err(PluginError::invalid_argument(
                "batch_size must be at least 1",
            ));
        }
        if n_batch < n_seq {
            return Err(PluginError::invalid_argument(format!(
                "batch_size {n_batch} is smaller than parallel {n_seq}: each decode step carries \
                 one token of every running sequence"
            )));
        }
        Ok(ContextPlan {
            n_ctx_seq,
            n_seq,
            n_ctx,
            n_batch,
            n_ubatch: n_batch.min(DEFAULT_BATCH_SIZE),
            threads,
            threads_batch,
        })
    }
}

/// Fails with `load_failed` naming the path when it is missing, not a regular file or unreadable.
fn check_readable(path: &str) -> Result<(), PluginError> {
    if path.is_empty() {
        return Err(PluginError::invalid_argument("the model path is empty"));
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| PluginError::load_failed(format!("failed to load model {path}: {e}")))?;
    if meta.is_dir() {
        return Err(PluginError::load_failed(format!(
            "failed to load model {path}: it is a directory, not a GGUF file"
        )));
    }
    // Opening a FIFO or device could block or read forever.
    if !meta.is_file() {
        return Err(PluginError::load_failed(format!(
            "failed to load model {path}: it is not a regular file"
        )));
    }
    std::fs::File::open(path)
        .map_err(|e| PluginError::load_failed(format!("failed to load model {path}: {e}")))?;
    Ok(())
}

/// "failed to load model PATH: REASON", where the reason comes from the file's GGUF header when it
/// shows the file is truncated (or not GGUF) and otherwise from llama.cpp's log.
fn load_failure_message(path: &str) -> String {
    let llama_reason = backend::failure_reason(&backend::take_error_lines());
    let header = gguf_header::check(Path::new(path)).explanation();
    let reason = match (header, llama_reason) {
        (Some(header), Some(llama)) => format!("{header} (llama.cpp: {llama})"),
        (Some(header), None) => header,
        (None, Some(llama)) => llama,
        (None, None) => "llama.cpp gave no reason (see its log)".to_owned(),
    };
    format!("failed to load model {path}: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_type_parses_the_documented_names() {
        assert_eq!(KvType::parse(None).unwrap(), KvType::F16);
        assert_eq!(KvType::parse(Some("Q8_0")).unwrap(), KvType::Q8_0);
        assert_eq!(KvType::parse(Some("q4_0")).unwrap(), KvType::Q4_0);
        assert_eq!(KvType::parse(Some("f32")).unwrap(), KvType::F32);
        let err = KvType::parse(Some("q5_1")).unwrap_err();
        assert_eq!(err.status, r1_plugin_sdk::abi::R1_ERR_INVALID_ARGUMENT);
        assert!(err.message.contains("q5_1"), "{}", err.message);
    }

    #[test]
    fn kv_type_bytes_per_element() {
        assert_eq!(KvType::F16.bytes(64), 128);
        assert_eq!(KvType::F32.bytes(64), 256);
        assert_eq!(KvType::Q8_0.bytes(64), 68);
        assert_eq!(KvType::Q4_0.bytes(64), 36);
    }

    #[test]
    fn missing_file_fails_naming_the_path() {
        let err = check_readable("/nonexistent/dir/model.gguf").unwrap_err();
        assert_eq!(err.status, r1_plugin_sdk::abi::R1_ERR_LOAD_FAILED);
        assert!(
            err.message.contains("/nonexistent/dir/model.gguf"),
            "{}",
            err.message
        );
    }
}
