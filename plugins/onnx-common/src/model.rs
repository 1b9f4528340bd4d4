//! A loaded ONNX model: load, `info`, `tokenize` and the generation loop.

use std::path::Path;
use std::time::Instant;

use ort::ep::ExecutionProviderDispatch;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use r1_plugin_sdk::{
    abi, FinishReason, GenerateRequest, GenerateResult, LoadParams, MemoryBreakdown, Model,
    ModelInfo, PluginError,
};

use crate::decoder::Decoder;
use crate::detokenize::Detokenizer;
use crate::model_dir::ModelDir;
use crate::runtime;
use crate::sampling::Sampler;

/// Context length used when the load parameters give none: the trained context capped here (the
/// same cap as the llama.cpp plugin).
pub const DEFAULT_CONTEXT_CAP: u32 = 4096;

/// Prompt tokens evaluated per run when the load parameters give no `batch_size`; between runs
/// the host gets a prompt-progress call and can cancel.
pub const DEFAULT_BATCH_SIZE: u32 = 512;

/// How a plugin wants its sessions made.
pub struct SessionOptions {
    /// Execution providers in order of preference; empty = ONNX Runtime's CPU provider only.
    pub providers: Vec<ExecutionProviderDispatch>,
    /// Whether model layers count as "on the GPU" in `info` (the TensorRT/CUDA plugin).
    pub on_gpu: bool,
}

/// A decoder-only causal LM loaded from an ONNX model directory.
pub struct OnnxModel {
    dir: ModelDir,
    /// The decoder and its cache: one generation at a time (`parallel_sequences` is 1).
    state: std::sync::Mutex<DecodeState>,
    path: String,
    context_length: u32,
    batch_size: u32,
    info: ModelInfo,
}

/// What a generation changes: the decoder (with its KV cache) and the tokens it holds.
struct DecodeState {
    /// `None` when loaded vocab-only.
    decoder: Option<Decoder>,
    /// Tokens whose keys and values are in the decoder's cache, in position order.
    cached: Vec<i32>,
}

impl OnnxModel {
    /// Loads the model directory `params.path` with `options`.
    ///
    /// Parameters used: `path`; `context_length` (default the trained context capped at
    /// [`DEFAULT_CONTEXT_CAP`]); `threads` (ONNX Runtime intra-op threads; default its own
    /// choice, the physical cores); `batch_size` (prompt tokens per run, default
    /// [`DEFAULT_BATCH_SIZE`]); `extra.onnxruntime_library` (see [`runtime`]). `gpu_layers`,
    /// `kv_cache_type`, `use_mmap` do not apply (the graph decides placement and cache type).
    /// `vocab_only` loads the tokenizer and configs but not the graph (`generate` is then
    /// `unsupported`).
    ///
    /// # Errors
    /// `invalid_argument` for a zero `batch_size`/`context_length`; `load_failed` naming the file
    /// or ONNX Runtime's message (missing or invalid `model.onnx`, `config.json`,
    /// `tokenizer.json`; no ONNX Runtime library; a graph this code cannot drive); `cancelled`
    /// when `progress` returned false.
    pub fn load(
        params: &LoadParams,
        options: SessionOptions,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<OnnxModel, PluginError> {
        if params.batch_size == Some(0) {
            return Err(PluginError::invalid_argument(
                "batch_size must be at least 1",
            ));
        }
        if params.context_length == Some(0) {
            return Err(PluginError::invalid_argument(
                "context_length must be at least 1",
            ));
        }
        let explicit = params
            .extra
            .get("onnxruntime_library")
            .and_then(|v| v.as_str())
            .map(Path::new);
        let runtime = runtime::runtime(explicit).map_err(PluginError::load_failed)?;
        let path = params.path.clone();
        let dir = ModelDir::open(Path::new(&path))?;
        if !progress(0.1) {
            return Err(PluginError::cancelled(format!(
                "loading {path} was cancelled"
            )));
        }
        let trained = dir
            .config
            .max_position_embeddings
            .unwrap_or(DEFAULT_CONTEXT_CAP);
        let context_length = params
            .context_length
            .unwrap_or(trained.min(DEFAULT_CONTEXT_CAP));

        let decoder = if params.vocab_only {
            None
        } else {
            let session = build_session(runtime, &dir, params, options.providers).map_err(|e| {
                PluginError::load_failed(format!("failed to load model {path}: {e}"))
            })?;
            Some(Decoder::new(session, &dir.config, &path)?)
        };
        if !progress(1.0) {
            return Err(PluginError::cancelled(format!(
                "loading {path} was cancelled"
            )));
        }
        let layers = decoder
            .as_ref()
            .map_or(dir.config.num_hidden_layers.unwrap_or(0), |d| {
                d.layers() as u32
            });
        let kv_cache_bytes = decoder.as_ref().map_or(0, |d| {
            u64::from(context_length)
                * d.layers() as u64
                * 2
                * d.kv_heads() as u64
                * d.head_dim() as u64
                * d.kv_element_bytes() as u64
        });
        let info = ModelInfo {
            path: path.clone(),
            // The directory's name; for a graph file, with the file: `repo/model_q4f16.onnx`.
            name: dir.dir.file_name().map(|d| {
                let d = d.to_string_lossy();
                match Path::new(&path)
                    .is_file()
                    .then(|| Path::new(&path).file_name())
                    .flatten()
                {
                    Some(f) => format!("{d}/{}", f.to_string_lossy()),
                    None => d.into_owned(),
                }
            }),
            architecture: dir.config.model_type.clone(),
            parameters: dir.config.parameters().unwrap_or(0),
            layers,
            gpu_layers: if options.on_gpu { layers } else { 0 },
            trained_context_length: trained,
            context_length,
            embedding_length: dir.config.hidden_size.unwrap_or(0),
            vocab_size: dir
                .config
                .vocab_size
                .unwrap_or_else(|| dir.tokenizer.get_vocab_size(true) as u32),
            file_type: None,
            memory: MemoryBreakdown {
                weights_bytes: dir.weights_bytes,
                kv_cache_bytes,
                compute_bytes: None,
                gpu_bytes: if options.on_gpu {
                    dir.weights_bytes + kv_cache_bytes
                } else {
                    0
                },
            },
            chat_template: dir.chat_template.clone(),
            bos_token: dir.bos.clone(),
            eos_token: dir.eos.clone(),
            eog_token_ids: dir.eog_ids.clone(),
            add_bos_token: dir.add_bos_token,
            vocab_only: params.vocab_only,
            // One generation at a time: the decoder keeps one sequence's cache.
            parallel_sequences: 1,
            // Not implemented here: a request for them is refused by the host.
            logprobs: false,
        };
        Ok(OnnxModel {
            dir,
            state: std::sync::Mutex::new(DecodeState {
                decoder,
                cached: Vec::new(),
            }),
            path,
            context_length,
            batch_size: params.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
            info,
        })
    }

    fn validate(&self, request: &GenerateRequest) -> Result<(), PluginError> {
        r1_plugin_sdk::validate_request(request, self.info.vocab_size as i32)?;
        refuse_unsupported(request)?;
        let n_ctx = self.context_length as usize;
        if request.prompt_tokens.len() >= n_ctx {
            return Err(PluginError::context_exceeded(format!(
                "the prompt has {} tokens but the context of model {} holds {n_ctx}; the prompt \
                 must be shorter than the context",
                request.prompt_tokens.len(),
                self.path
            )));
        }
        Ok(())
    }
}

impl DecodeState {
    /// Evaluates `tokens` and records them as cached; `path` names the model in errors.
    fn eval(&mut self, tokens: &[i32], path: &str) -> Result<Vec<f32>, PluginError> {
        let decoder = self
            .decoder
            .as_mut()
            .expect("generate checks for a decoder");
        match decoder.step(tokens) {
            Ok(logits) => {
                self.cached.extend_from_slice(tokens);
                Ok(logits)
            }
            Err(e) => {
                self.cached.clear();
                Err(PluginError::backend(format!(
                    "failed to evaluate tokens with model {path}: {}",
                    e.message
                )))
            }
        }
    }
}

fn build_session(
    runtime: &runtime::Runtime,
    dir: &ModelDir,
    params: &LoadParams,
    providers: Vec<ExecutionProviderDispatch>,
) -> ort::Result<Session> {
    let mut builder = Session::builder(&runtime.environment)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(ort::Error::<()>::from)?;
    if let Some(threads) = params.threads.filter(|t| *t > 0) {
        builder = builder
            .with_intra_threads(threads as usize)
            .map_err(ort::Error::<()>::from)?;
    }
    if !providers.is_empty() {
        builder = builder
            .with_execution_providers(providers)
            .map_err(ort::Error::<()>::from)?;
    }
    builder.commit_from_file(&dir.graph)
}

impl Model for OnnxModel {
    fn info(&self) -> Result<ModelInfo, PluginError> {
        Ok(self.info.clone())
    }

    /// `add_special` applies the tokenizer's post-processor (BOS and the like, as
    /// `tokenizer.json` defines them); `parse_special` makes added special tokens in the text
    /// (`<|im_start|>`) their ids rather than plain text.
    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<i32>, PluginError> {
        let tokenizer = if parse_special {
            &self.dir.tokenizer
        } else {
            &self.dir.tokenizer_literal
        };
        let encoding = tokenizer.encode(text, add_special).map_err(|e| {
            PluginError::backend(format!("failed to tokenize with model {}: {e}", self.path))
        })?;
        Ok(encoding.get_ids().iter().map(|id| *id as i32).collect())
    }

    /// The generation loop shared by the ONNX plugins, with the llama.cpp plugin's semantics:
    /// - the cache is reused when the cached tokens are a prefix of the new prompt (at least one
    ///   prompt token is always evaluated, for its logits); otherwise it starts over;
    /// - the prompt is evaluated `batch_size` tokens per run, with a prompt-progress call
    ///   (`R1_TOKEN_PROMPT_PROGRESS`) between runs so the host can cancel;
    /// - end-of-generation ids stop unless `ignore_eos`; `stop_tokens` always do; neither is
    ///   streamed or counted; prompt + completion never exceed the context (`length`);
    /// - `on_token` returning false ends with `cancelled`.
    ///
    /// Errors: `invalid_argument` (empty prompt, id outside the vocabulary, non-finite sampling
    /// numbers), `context_exceeded`, `backend` (ONNX Runtime failed; the cache is dropped).
    fn generate(
        &self,
        request: GenerateRequest,
        on_token: &mut dyn FnMut(&[u8], i32) -> bool,
    ) -> Result<GenerateResult, PluginError> {
        let start = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        let Some(decoder) = state.decoder.as_mut() else {
            return Err(PluginError::unsupported(format!(
                "model {} was loaded vocab-only; generation needs the weights",
                self.path
            )));
        };
        // Reuse the cache only when it is a prefix of the prompt (the cache cannot be cut).
        let reusable = state.cached.len() < request.prompt_tokens.len()
            && request.prompt_tokens.starts_with(&state.cached);
        if !reusable {
            decoder.reset();
            state.cached.clear();
        }
        self.validate(&request)?;
        let prompt = &request.prompt_tokens;
        let n_ctx = self.context_length as usize;
        let mut sampler = Sampler::new(&request);

        let reused = state.cached.len();
        let mut result = GenerateResult {
            finish_reason: FinishReason::Length,
            prompt_tokens: prompt.len() as u32,
            cached_prompt_tokens: reused as u32,
            completion_tokens: 0,
            prompt_ms: 0.0,
            generation_ms: 0.0,
            time_to_first_token_ms: None,
        };
        let ms = |since: Instant| since.elapsed().as_secs_f64() * 1000.0;

        let prompt_start = Instant::now();
        let batch = self.batch_size as usize;
        let mut logits = Vec::new();
        let mut chunk_start = reused;
        while chunk_start < prompt.len() {
            let chunk_end = (chunk_start + batch).min(prompt.len());
            logits = state.eval(&prompt[chunk_start..chunk_end], &self.path)?;
            chunk_start = chunk_end;
            if chunk_end < prompt.len() && !on_token(&[], abi::R1_TOKEN_PROMPT_PROGRESS) {
                result.finish_reason = FinishReason::Cancelled;
                result.prompt_ms = ms(prompt_start);
                return Ok(result);
            }
        }
        result.prompt_ms = ms(prompt_start);

        let generation_start = Instant::now();
        let mut detokenizer = Detokenizer::new();
        let max_tokens = request.max_tokens as usize;
        result.finish_reason = loop {
            let completion = result.completion_tokens as usize;
            if completion >= max_tokens || prompt.len() + completion >= n_ctx {
                break FinishReason::Length;
            }
            let token = sampler.sample(&logits) as i32;
            let stop = request.stop_tokens.contains(&token)
                || (!request.ignore_eos && self.dir.eog_ids.contains(&token));
            if stop {
                break FinishReason::Stop;
            }
            let piece = detokenizer.push(&self.dir.tokenizer, token as u32)?;
            if result.time_to_first_token_ms.is_none() {
                result.time_to_first_token_ms = Some(ms(start));
            }
            result.completion_tokens += 1;
            if !on_token(piece.as_bytes(), token) {
                break FinishReason::Cancelled;
            }
            let completion = result.completion_tokens as usize;
            if completion >= max_tokens || prompt.len() + completion >= n_ctx {
                break FinishReason::Length;
            }
            logits = state.eval(&[token], &self.path)?;
        };
        result.generation_ms = ms(generation_start);
        Ok(result)
    }
}

/// The request fields this backend's sampler does not implement: a value other than "off" is
/// refused by name rather than ignored.
fn refuse_unsupported(request: &GenerateRequest) -> Result<(), PluginError> {
    let unsupported = [
        ("presence_penalty", request.presence_penalty != 0.0),
        ("frequency_penalty", request.frequency_penalty != 0.0),
        ("repeat_penalty", request.repeat_penalty != 1.0),
        ("logit_bias", !request.logit_bias.is_empty()),
    ];
    match unsupported.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(PluginError::invalid_argument(format!(
            "{name} is not supported by the ONNX backends; leave it out or serve a GGUF model"
        ))),
        None if request.json_schema.is_some() => {
            Err(PluginError::invalid_argument(STRUCTURED_OUTPUT_UNSUPPORTED))
        }
        None => Ok(()),
    }
}

/// The refusal of structured output (`GenerateRequest::json_schema`), naming the request fields
/// that ask for it.
const STRUCTURED_OUTPUT_UNSUPPORTED: &str =
    "response_format (Ollama: format; or a forced tool_choice): structured output is not \
     supported by the ONNX backends (no constrained decoding); leave it out or serve a GGUF model";
