//! `echo`: a deterministic r1d backend without weights, for tests of the host.
//!
//! A model is a small JSON file with the extension `.echo`:
//! ```json
//! {"name": "echo-test", "context_length": 256, "fail_load": null, "transform": "upper"}
//! ```
//! The chat template renders `<|role|>content` lines; generation takes the text of the last
//! `<|user|>` turn and streams it back upper-cased (`"transform": "identity"`: unchanged), one
//! word per token, then stops (`finish_reason: "stop"`), or ends at `max_tokens` (`"length"`).
//! A prompt that ends in `<think>\n` (added by the host for models named like DeepSeek-R1) is
//! answered the same way, so a user turn such as `hmm</think>The answer` exercises the reasoning
//! split.
//!
//! `"chat_template": "…"` in the model file replaces that template (it must still render user
//! turns as `<|user|>content` lines for the echo to find them); tests of tool calling give one
//! that renders `tools`, and a user turn holding `<tool_call>{…}</tool_call>` is echoed back as
//! the model's tool call (with `"transform": "identity"`).
//!
//! Switches, to exercise the host's error paths:
//! - `"fail_load": "message"` in the model file: `load` fails with that message;
//! - `"load_delay_ms": N` in the model file: `load` takes N ms (for swap and queue tests);
//! - a prompt containing `[[fail]]`: `generate` returns a backend error;
//! - a prompt containing `[[panic]]`: `generate` panics (the SDK turns it into an error status);
//! - a prompt containing `[[crash:segv]]`, `[[crash:abort]]`, `[[crash:exit]]` or
//!   `[[crash:hang]]`: `generate` writes a line to stderr, then dereferences a null pointer
//!   (SIGSEGV), calls `abort()`, calls `exit(3)`, or never returns — the faults no `catch_unwind`
//!   can turn into an error, for tests of the host's worker process; `"crash_load": "segv"` (or
//!   another of these) in the model file does the same in `load`;
//! - a prompt containing `[[busy:N]]` (N seconds, 1–600): `generate` computes for N seconds
//!   before its first token, reporting nothing, as one long prompt batch of a big model on a slow
//!   CPU does (for the host's hang watch, which must tell it from a hang);
//! - a prompt containing `[[slow]]`: 50 ms between tokens, and the words repeat until `max_tokens`
//!   (for cancellation and disconnect tests);
//! - a prompt containing `[[flood]]`: no pause between tokens, and the words repeat until
//!   `max_tokens` (for tests of clients that stop reading: the answer outgrows every buffer);
//! - a prompt containing `[[bytes]]`: one token per byte, so multi-byte characters are split
//!   across tokens (for UTF-8 reassembly tests);
//! - a prompt containing `[[params]]`: the answer is the sampling the host asked for,
//!   `temperature=… top_p=… top_k=… min_p=… seed=… presence_penalty=… frequency_penalty=…
//!   repeat_penalty=… penalty_last_n=… logit_bias=ID:BIAS,…`;
//! - a request with `json_schema` (structured output) is refused with `R1_ERR_INVALID_ARGUMENT`
//!   naming `response_format`: echo has no constrained decoding;
//! - environment `R1_ECHO_ABI_VERSION=N`: the plugin reports ABI version N (the host must refuse it).
//!
//! A `.gguf` file loads too, when the host asks for this backend by name (it does not claim the
//! GGUF format, so it is never chosen for one on its own): its header gives the name
//! (`general.name`), quantization, context length and size, and its weights are ignored — the
//! model echoes like any echo model. Tests of the model store, the planner and model swaps use
//! small GGUF files that carry a catalog variant's metadata this way. Header switches: a string
//! `echo.fail_load` makes the load fail with that message; a u64 `echo.weights_bytes` is
//! reported as the weights' memory instead of the file's tensor bytes (for tests of memory that
//! disappears under a resident model).
//!
//! `estimate` (the ABI's memory estimate before loading): echo allocates nothing a model would,
//! so it answers "unsupported" (the host then plans with the catalog formula, which tests of the
//! planner with small catalog-shaped GGUFs rely on) — unless a GGUF's header has a u64
//! `echo.estimate_bytes`: then that many bytes of mapped weights on the CPU, no KV cache or
//! compute buffers (for tests of plans made from an estimate).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use r1_plugin_sdk::{
    DeviceEstimate, Estimate, FinishReason, GenerateRequest, GenerateResult, LoadParams,
    MemoryBreakdown, Model, ModelInfo, Plugin, PluginError, ProbeReport, SpecialToken,
};
use serde::Deserialize;

/// The chat template every echo model reports (Jinja, rendered by the host).
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}<|{{ message.role }}|>{{ message.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

/// BOS text and id of every echo model.
pub const BOS: &str = "<|bos|>";

/// The echo backend.
pub struct EchoPlugin;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    context_length: Option<u32>,
    #[serde(default)]
    fail_load: Option<String>,
    /// Crash in `load` this way (see `crash`).
    #[serde(default)]
    crash_load: Option<String>,
    #[serde(default)]
    load_delay_ms: Option<u64>,
    #[serde(default)]
    transform: Option<String>,
    #[serde(default)]
    chat_template: Option<String>,
}

/// A loaded echo model: a growing vocabulary of the pieces it has seen.
pub struct EchoModel {
    path: String,
    name: String,
    context_length: u32,
    upper: bool,
    /// The chat template reported (`chat_template` in the model file, else [`CHAT_TEMPLATE`]).
    chat_template: String,
    /// Quantization from a GGUF header (`echo` otherwise).
    file_type: String,
    /// Size of a GGUF file's tensor data (bytes), reported as the weights' memory.
    weights_bytes: u64,
    /// Generations it runs at once (`LoadParams::parallel`, default 1): echo generation keeps no
    /// state between tokens, so any number can run side by side.
    parallel: u32,
    vocab: Mutex<Vec<String>>,
}

/// The vocabulary size echo reports: the most pieces it interns (past it, pieces share the last
/// id). Ids it has not handed out are refused by `generate` (`R1_ERR_INVALID_ARGUMENT`).
const VOCAB_ROOM: u32 = 1 << 20;

impl EchoModel {
    fn intern(&self, piece: &str) -> i32 {
        let mut vocab = self.vocab.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = vocab.iter().position(|p| p == piece) {
            return i as i32;
        }
        if vocab.len() >= VOCAB_ROOM as usize {
            return (VOCAB_ROOM - 1) as i32;
        }
        vocab.push(piece.to_owned());
        (vocab.len() - 1) as i32
    }

    fn detokenize(&self, ids: &[i32]) -> Result<String, PluginError> {
        let vocab = self.vocab.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter()
            .map(|&id| {
                vocab.get(id as usize).cloned().ok_or_else(|| {
                    PluginError::invalid_argument(format!("unknown echo token id {id}"))
                })
            })
            .collect()
    }
}

impl Plugin for EchoPlugin {
    type Model = EchoModel;

    fn probe(&self) -> Result<ProbeReport, PluginError> {
        Ok(ProbeReport {
            available: true,
            score: 1,
            formats: vec!["echo".into()],
            devices: vec![r1_plugin_sdk::Device {
                name: "CPU".into(),
                kind: "cpu".into(),
                ..Default::default()
            }],
            reason: None,
        })
    }

    fn estimate(&self, params: LoadParams) -> Result<Estimate, PluginError> {
        let unsupported = || {
            PluginError::unsupported(format!(
                "echo has no memory estimate for {} (no echo.estimate_bytes)",
                params.path
            ))
        };
        if !params.path.ends_with(".gguf") {
            return Err(unsupported());
        }
        let header = gguf_header::read(std::path::Path::new(&params.path)).map_err(|e| {
            PluginError::load_failed(format!("failed to read GGUF {}: {e}", params.path))
        })?;
        let mapped = header.uint("echo.estimate_bytes").ok_or_else(unsupported)?;
        Ok(Estimate {
            devices: vec![DeviceEstimate {
                name: "CPU".into(),
                kind: "cpu".into(),
                weights_mapped_bytes: mapped,
                ..DeviceEstimate::default()
            }],
            buffers: Vec::new(),
            context_length: params.context_length.unwrap_or(0),
            parallel: params.parallel.unwrap_or(1),
            gpu_layers: 0,
            source: "echo: echo.estimate_bytes".into(),
        })
    }

    fn load(
        &self,
        params: LoadParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<EchoModel, PluginError> {
        if params.path.ends_with(".gguf") {
            return load_gguf(params, progress);
        }
        let text = std::fs::read_to_string(&params.path).map_err(|e| {
            PluginError::load_failed(format!("failed to read echo model {}: {e}", params.path))
        })?;
        let file: EchoFile = serde_json::from_str(&text).map_err(|e| {
            PluginError::load_failed(format!("failed to parse echo model {}: {e}", params.path))
        })?;
        if let Some(kind) = &file.crash_load {
            crash(kind);
        }
        if let Some(message) = file.fail_load {
            tracing::error!("echo model {} asks to fail: {message}", params.path);
            return Err(PluginError::load_failed(format!(
                "failed to load echo model {}: {message}",
                params.path
            )));
        }
        if let Some(ms) = file.load_delay_ms {
            for _ in 0..ms / 50 {
                std::thread::sleep(Duration::from_millis(50));
                if !progress(0.5) {
                    return Err(PluginError::cancelled("load of echo model cancelled"));
                }
            }
        }
        if !progress(0.5) || !progress(1.0) {
            return Err(PluginError::cancelled("load of echo model cancelled"));
        }
        let upper = match file.transform.as_deref() {
            None | Some("upper") => true,
            Some("identity") => false,
            Some(other) => {
                return Err(PluginError::load_failed(format!(
                    "echo model {}: transform {other:?} is not upper or identity",
                    params.path
                )))
            }
        };
        let model = EchoModel {
            upper,
            chat_template: file.chat_template.unwrap_or_else(|| CHAT_TEMPLATE.into()),
            name: file.name.unwrap_or_else(|| "echo".into()),
            path: params.path,
            context_length: params
                .context_length
                .or(file.context_length)
                .unwrap_or(2048),
            vocab: Mutex::new(vec![BOS.to_owned()]),
            file_type: "echo".into(),
            weights_bytes: 0,
            parallel: params.parallel.unwrap_or(1).max(1),
        };
        Ok(model)
    }
}

/// Loads a GGUF file's header as an echo model (see the crate docs).
fn load_gguf(
    params: LoadParams,
    progress: &mut dyn FnMut(f32) -> bool,
) -> Result<EchoModel, PluginError> {
    let path = std::path::Path::new(&params.path);
    let header = gguf_header::read(path).map_err(|e| {
        PluginError::load_failed(format!("failed to read GGUF {}: {e}", params.path))
    })?;
    if let Some(message) = header.str("echo.fail_load") {
        return Err(PluginError::load_failed(format!(
            "failed to load echo model {}: {message}",
            params.path
        )));
    }
    if !progress(0.5) || !progress(1.0) {
        return Err(PluginError::cancelled("load of echo model cancelled"));
    }
    let trained = header
        .arch_uint("context_length")
        .map(|c| c.min(u64::from(u32::MAX)) as u32);
    Ok(EchoModel {
        upper: true,
        chat_template: CHAT_TEMPLATE.into(),
        name: header
            .str("general.name")
            .map(str::to_owned)
            .unwrap_or_else(|| "echo".into()),
        context_length: params.context_length.or(trained).unwrap_or(2048),
        file_type: header.file_type_name().unwrap_or("echo").to_owned(),
        weights_bytes: header
            .uint("echo.weights_bytes")
            .unwrap_or_else(|| header.tensors.iter().filter_map(|t| t.bytes()).sum()),
        parallel: params.parallel.unwrap_or(1).max(1),
        path: params.path,
        vocab: Mutex::new(vec![BOS.to_owned()]),
    })
}

/// Splits text into pieces: special markers `<|…|>` alone, words with their leading whitespace.
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("<|") {
            if let Some(end) = text[i..].find("|>") {
                if i > start {
                    out.push(&text[start..i]);
                }
                out.push(&text[i..i + end + 2]);
                i += end + 2;
                start = i;
                continue;
            }
        }
        let c = text[i..].chars().next().unwrap_or(' ');
        if c.is_whitespace() && i > start && !text[start..i].trim().is_empty() {
            out.push(&text[start..i]);
            start = i;
        }
        i += c.len_utf8();
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

impl Model for EchoModel {
    fn info(&self) -> Result<ModelInfo, PluginError> {
        Ok(ModelInfo {
            path: self.path.clone(),
            name: Some(self.name.clone()),
            architecture: Some("echo".into()),
            parameters: 0,
            layers: 1,
            trained_context_length: self.context_length,
            context_length: self.context_length,
            // The vocabulary grows with the pieces seen; its room is reported, so that ids of
            // pieces interned after the load (an answer's, sent back as Ollama's `context`)
            // are in the vocabulary.
            vocab_size: VOCAB_ROOM,
            file_type: Some(self.file_type.clone()),
            memory: MemoryBreakdown {
                weights_bytes: self.weights_bytes,
                ..Default::default()
            },
            chat_template: Some(self.chat_template.clone()),
            bos_token: Some(SpecialToken {
                id: 0,
                text: BOS.into(),
            }),
            eos_token: None,
            add_bos_token: true,
            parallel_sequences: self.parallel,
            ..Default::default()
        })
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        _parse_special: bool,
    ) -> Result<Vec<i32>, PluginError> {
        let mut ids = Vec::new();
        if add_special {
            ids.push(0);
        }
        ids.extend(pieces(text).into_iter().map(|p| self.intern(p)));
        Ok(ids)
    }

    fn generate(
        &self,
        request: GenerateRequest,
        on_token: &mut dyn FnMut(&[u8], i32) -> bool,
    ) -> Result<GenerateResult, PluginError> {
        let start = Instant::now();
        let prompt = self.detokenize(&request.prompt_tokens)?;
        if prompt.contains("[[panic]]") {
            panic!("echo: panic requested by the prompt");
        }
        for kind in ["segv", "abort", "exit", "hang"] {
            if prompt.contains(&format!("[[crash:{kind}]]")) {
                crash(kind);
            }
        }
        if let Some(seconds) = busy_seconds(&prompt) {
            busy_for(Duration::from_secs(seconds));
        }
        if prompt.contains("[[fail]]") {
            return Err(PluginError::backend(
                "echo: generation failure requested by the prompt",
            ));
        }
        if request.json_schema.is_some() {
            return Err(PluginError::invalid_argument(
                "response_format (Ollama: format; or a forced tool_choice): structured output is not \
                 supported by the echo backend (no constrained decoding)",
            ));
        }
        let slow = prompt.contains("[[slow]]");
        let repeat = slow || prompt.contains("[[flood]]");
        let n_prompt = request.prompt_tokens.len() as u32;
        if n_prompt >= self.context_length {
            return Err(PluginError::context_exceeded(format!(
                "prompt of {n_prompt} tokens does not fit the context length of {} tokens",
                self.context_length
            )));
        }
        let mut user = prompt
            .rsplit("<|user|>")
            .next()
            .and_then(|t| t.split('\n').next())
            .unwrap_or("")
            .to_owned();
        if self.upper {
            user = user.to_uppercase();
        }
        if prompt.contains("[[params]]") {
            user = format!(
                "temperature={} top_p={} top_k={} min_p={} seed={} presence_penalty={} \
                 frequency_penalty={} repeat_penalty={} penalty_last_n={} logit_bias={}",
                request.temperature,
                request.top_p,
                request.top_k,
                request.min_p,
                request.seed.map_or("none".to_owned(), |s| s.to_string()),
                request.presence_penalty,
                request.frequency_penalty,
                request.repeat_penalty,
                request.penalty_last_n,
                request
                    .logit_bias
                    .iter()
                    .map(|(id, b)| format!("{id}:{b}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        let words: Vec<Vec<u8>> = if prompt.contains("[[bytes]]") {
            // One token per byte: pieces that are not valid UTF-8 on their own.
            user.bytes().map(|b| vec![b]).collect()
        } else {
            pieces(&user)
                .into_iter()
                .map(|p| p.as_bytes().to_vec())
                .collect()
        };
        let prompt_ms = start.elapsed().as_secs_f64() * 1e3;
        let gen_start = Instant::now();
        let mut first = None;
        let mut n = 0u32;
        let mut finish = FinishReason::Stop;
        let mut i = 0usize;
        loop {
            if words.is_empty() || (!repeat && i >= words.len()) {
                break;
            }
            if n >= request.max_tokens {
                finish = FinishReason::Length;
                break;
            }
            if slow {
                std::thread::sleep(Duration::from_millis(50));
            }
            let word = &words[i % words.len()];
            let id = self.intern(&String::from_utf8_lossy(word));
            n += 1;
            i += 1;
            first.get_or_insert_with(|| start.elapsed().as_secs_f64() * 1e3);
            if !on_token(word, id) {
                finish = FinishReason::Cancelled;
                break;
            }
        }
        Ok(GenerateResult {
            finish_reason: finish,
            prompt_tokens: n_prompt,
            cached_prompt_tokens: 0,
            completion_tokens: n,
            prompt_ms,
            generation_ms: gen_start.elapsed().as_secs_f64() * 1e3,
            time_to_first_token_ms: first,
        })
    }
}

fn abi_version() -> u32 {
    std::env::var("R1_ECHO_ABI_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(r1_plugin_sdk::abi::R1_PLUGIN_ABI_VERSION)
}

r1_plugin_sdk::export_plugin! {
    plugin: EchoPlugin,
    init: EchoPlugin,
    name: "echo",
    version: env!("CARGO_PKG_VERSION"),
    abi_version: abi_version(),
}

/// The N of a `[[busy:N]]` switch in the prompt (1–600 s).
fn busy_seconds(prompt: &str) -> Option<u64> {
    let (_, rest) = prompt.split_once("[[busy:")?;
    let (n, _) = rest.split_once("]]")?;
    n.parse().ok().filter(|n| (1..=600).contains(n))
}

/// Keeps one core busy for `how_long` without reporting anything.
fn busy_for(how_long: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < how_long {
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
}

/// Ends the process the way a broken native backend does, after saying so on stderr: `segv`
/// (a null pointer written), `abort`, `exit` (status 3), `hang` (never returns). Anything else
/// does nothing.
fn crash(kind: &str) {
    let say = |what: &str| eprintln!("echo: {what}, as the test asked");
    match kind {
        "segv" => {
            say("writing through a null pointer");
            // SAFETY: deliberately not: this write faults (SIGSEGV) and the process dies, which
            // is what the host's worker tests need. Volatile, so it is not optimised away.
            unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
        }
        "abort" => {
            say("aborting");
            std::process::abort();
        }
        "exit" => {
            say("exiting with status 3");
            std::process::exit(3);
        }
        "hang" => {
            say("hanging");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_words_and_markers() {
        assert_eq!(
            pieces("<|bos|><|user|>hello big world\n<|assistant|>"),
            vec![
                "<|bos|>",
                "<|user|>",
                "hello",
                " big",
                " world",
                "\n",
                "<|assistant|>"
            ]
        );
    }

    #[test]
    fn generate_echoes_last_user_turn_upper_cased() {
        let model = EchoPlugin
            .load(
                LoadParams {
                    path: write_model("{}"),
                    ..Default::default()
                },
                &mut |_| true,
            )
            .unwrap();
        let ids = model
            .tokenize(
                "<|user|>one\n<|user|>hello world\n<|assistant|>",
                true,
                true,
            )
            .unwrap();
        let mut out = String::new();
        let result = model
            .generate(
                GenerateRequest {
                    prompt_tokens: ids,
                    max_tokens: 10,
                    temperature: 0.0,
                    top_p: 1.0,
                    top_k: 0,
                    min_p: 0.0,
                    seed: None,
                    stop_tokens: vec![],
                    ignore_eos: false,
                    ..Default::default()
                },
                &mut |piece, _| {
                    out.push_str(std::str::from_utf8(piece).unwrap());
                    true
                },
            )
            .unwrap();
        assert_eq!(out, "HELLO WORLD");
        assert_eq!(result.completion_tokens, 2);
        assert_eq!(result.finish_reason, FinishReason::Stop);
    }

    fn write_model(content: &str) -> String {
        let path = std::env::temp_dir().join(format!("echo-unit-{}.echo", std::process::id()));
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().into_owned()
    }
}
