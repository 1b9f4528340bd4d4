//! `llamacpp`: the r1d backend plugin for GGUF models, through llama.cpp (the `llama-cpp-2`
//! crate, llama.cpp vendored and linked statically).
//!
//! Built as a `cdylib` (`libr1_plugin_llamacpp.so`, exporting `r1_plugin_entry`) and as an `rlib`
//! so tests can use [`LlamaCppPlugin`] and [`LlamaCppModel`] directly.
//!
//! - `probe`: always available; lists the devices llama.cpp sees; score 100 for the CPU build,
//!   200 when this build can offload to a GPU and one is present, 90 for a GPU build (features
//!   `cuda`, `vulkan`: [`BUILD`]) that sees none — so with the CPU and GPU builds installed side by
//!   side the host takes the GPU build exactly when there is a GPU. The CPU build is refused
//!   (unavailable, naming what is missing) on a CPU without the instruction sets it is compiled
//!   for ([`CPU_BUILD_FEATURES`]). The CPU-variants build (feature `dynamic-backends`,
//!   `variants.rs`) loads ggml's best CPU module for this CPU and scores 105 when that goes beyond
//!   the CPU build's instruction sets (or the CPU build cannot run here), 95 otherwise; its CPU
//!   device is named with the variant ("CPU (zen4 variant)").
//! - `load`: refuses, before llama.cpp allocates anything, `gpu_layers` whose weights alone exceed
//!   the GPUs' memory ([`devices::check_device_memory`]).
//! - `load`: see [`LlamaCppPlugin`] for how [`LoadParams`] map to llama.cpp and their defaults.
//!   A failed load names the file and llama.cpp's reason; a file shorter than its GGUF header
//!   implies is reported as "truncated or incomplete".
//! - `estimate`: llama.cpp's own no-allocation dry run of the same load (see `estimate.rs`): weights
//!   per buffer type (mapped file, repacked copies, GPUs), KV cache and compute buffers, without
//!   reading the weights.
//! - `generate`: `parallel` sequences per model (`LoadParams::parallel`, default 1), batched
//!   together by one thread per model (continuous batching, see `generate.rs`); up to that many
//!   `generate` calls may run at once. A request takes the free sequence whose KV cache shares the
//!   longest token prefix with its prompt. Cancellation (token callback returning false, or
//!   [`CancelHandle`]) takes effect at the next decode step, not inside one llama.cpp `decode`.
//!
//! llama.cpp's log goes to `tracing` (target `llama.cpp`), which the SDK forwards to the host.

mod backend;
pub mod devices;
mod estimate;
/// GGUF `general.file_type` names: shared with the daemon's model store.
pub use gguf_header::ftype;
mod generate;
mod grammar;
mod model;
pub mod rpc;
#[cfg(feature = "dynamic-backends")]
pub mod variants;

use std::sync::OnceLock;

use llama_cpp_2::{list_llama_ggml_backend_devices, LlamaBackendDeviceType};
use r1_plugin_sdk::{
    Device, Estimate, GenerateRequest, GenerateResult, LoadParams, Model, ModelInfo, Plugin,
    PluginError, ProbeReport,
};

pub use model::{
    CancelHandle, KvType, LlamaCppModel, DEFAULT_BATCH_SIZE, DEFAULT_CONTEXT_CAP, MAX_PARALLEL,
};

/// Probe score when llama.cpp runs on the CPU only.
pub const SCORE_CPU: i32 = 100;
/// Probe score when this build can offload to a GPU and llama.cpp sees one.
pub const SCORE_GPU: i32 = 200;
/// Probe score of a GPU build (`cuda`, `vulkan`) that sees no GPU: below [`SCORE_CPU`], so the
/// CPU build installed beside it serves (same CPU code; the host picks the highest score), yet
/// the plugin still serves on the CPU when it is the only one.
pub const SCORE_GPU_BUILD_WITHOUT_GPU: i32 = 90;

/// Probe score of the CPU-variants build (`dynamic-backends`, `variants.rs`) when ggml chose a
/// variant beyond what the CPU build is compiled for (AVX-512, AVX-VNNI, AMX), or when this CPU
/// cannot run the CPU build at all: above [`SCORE_CPU`], so it serves.
pub const SCORE_CPU_VARIANT_BETTER: i32 = 105;
/// Probe score of the CPU-variants build when its variant is no better than the CPU build's
/// instruction set (the `haswell` variant on an AVX2 CPU): below [`SCORE_CPU`], so the CPU build
/// installed beside it serves (the same code, fewer files).
pub const SCORE_CPU_VARIANT_SAME: i32 = 95;

/// The instruction sets the CPU build (no `dynamic-backends`) is compiled for, as ggml names
/// them: llama-cpp-sys-2 builds ggml for x86-64 with `GGML_AVX`, `GGML_AVX2`, `GGML_FMA`,
/// `GGML_F16C`, `GGML_BMI2` and `GGML_SSE42` on (its `CMakeCache.txt`), ggml's `haswell`
/// variant.
pub const CPU_BUILD_FEATURES: [&str; 6] = ["SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"];

/// The same instruction sets as the CPU backend's `ggml_backend_get_features` lists them for
/// the CPU build (ggml-cpu.cpp: SSE4.2 implies `SSE3` and `SSSE3`, and has no entry of its own):
/// a CPU variant whose list has anything else (`AVX512`, `AVX_VNNI`, `AMX_INT8` …) goes beyond
/// the CPU build.
pub const CPU_BUILD_GGML_FEATURES: [&str; 7] =
    ["SSE3", "SSSE3", "AVX", "F16C", "FMA", "AVX2", "BMI2"];

/// Whether a CPU variant with ggml's `features` has an instruction set the CPU build lacks.
pub fn goes_beyond_the_cpu_build(features: &[String]) -> bool {
    features
        .iter()
        .any(|f| !CPU_BUILD_GGML_FEATURES.contains(&f.as_str()))
}

/// What of [`CPU_BUILD_FEATURES`] this CPU lacks (the CPU build would stop on an illegal
/// instruction), by the CPU's own report (`cpuid`); empty on other architectures.
pub fn missing_cpu_build_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let has = [
            std::arch::is_x86_feature_detected!("sse4.2"),
            std::arch::is_x86_feature_detected!("avx"),
            std::arch::is_x86_feature_detected!("f16c"),
            std::arch::is_x86_feature_detected!("fma"),
            std::arch::is_x86_feature_detected!("avx2"),
            std::arch::is_x86_feature_detected!("bmi2"),
        ];
        CPU_BUILD_FEATURES
            .iter()
            .zip(has)
            .filter(|(_, has)| !has)
            .map(|(f, _)| *f)
            .collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The GPU API this build offloads with: `"cuda"`, `"vulkan"`, or `"cpu"` (none). The same name
/// is in the plugin's version string and in the file name `scripts/build-gpu-plugins` gives it
/// (`libr1_plugin_llamacpp_vulkan.so`).
pub const BUILD: &str = if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "vulkan") {
    "vulkan"
} else {
    "cpu"
};

/// The llama.cpp backend.
///
/// How [`LoadParams`] are applied:
/// - `path`: a GGUF file; missing, not a regular file or unreadable → `load_failed` naming it.
/// - `use_mmap` (default true), `vocab_only` (tokenizer and metadata only; `info` and `tokenize`
///   work, `generate` is `unsupported`).
/// - `gpu_layers` → llama.cpp `n_gpu_layers`, passed through; default all layers when this build
///   supports GPU offload, else 0. `main_gpu` selects single-GPU placement on that device.
/// - `context_length` → `n_ctx` in tokens; default the trained context capped at
///   [`DEFAULT_CONTEXT_CAP`]. llama.cpp rounds it up to a multiple of 256; `info` reports the
///   length actually allocated. `batch_size` → `n_batch` (default [`DEFAULT_BATCH_SIZE`];
///   `n_ubatch` is the smaller of it and 512). `threads` (default: the available parallelism) and
///   `threads_batch` (default: `threads`). `kv_cache_type`: see [`KvType`]. `parallel`: sequences
///   run at once (1 to [`MAX_PARALLEL`], default 1, at most `batch_size`), each with its own
///   `context_length` tokens in one unified KV cache; `info` reports it as `parallel_sequences`.
///
/// Errors: `invalid_argument` for bad parameters, `load_failed` for a file llama.cpp refuses
/// ("failed to load model PATH: REASON") or a context it cannot create (out of memory),
/// `cancelled` when the progress callback returned false.
#[derive(Debug, Default)]
pub struct LlamaCppPlugin;

impl Plugin for LlamaCppPlugin {
    type Model = LlamaCppModel;

    fn probe(&self) -> Result<ProbeReport, PluginError> {
        let missing = missing_cpu_build_features();
        if !cfg!(feature = "dynamic-backends")
            && cfg!(target_arch = "x86_64")
            && !missing.is_empty()
        {
            // Checked before llama.cpp runs a single instruction of this build.
            return Ok(ProbeReport {
                available: false,
                formats: vec!["gguf".to_owned()],
                reason: Some(format!(
                    "this build of llama.cpp needs {} and this CPU lacks {} (the CPU-variants \
                     build, libr1_plugin_llamacpp_cpu_variants.so, runs on it)",
                    CPU_BUILD_FEATURES.join(", "),
                    missing.join(", ")
                )),
                ..ProbeReport::default()
            });
        }
        if let Err(e) = backend::backend() {
            return Ok(ProbeReport {
                available: false,
                formats: vec!["gguf".to_owned()],
                reason: Some(e.message),
                ..ProbeReport::default()
            });
        }
        let devices: Vec<Device> = list_llama_ggml_backend_devices()
            .into_iter()
            .map(|d| {
                let kind = match d.device_type {
                    LlamaBackendDeviceType::Cpu => "cpu",
                    LlamaBackendDeviceType::Gpu | LlamaBackendDeviceType::IntegratedGpu => "gpu",
                    LlamaBackendDeviceType::Accelerator | LlamaBackendDeviceType::Unknown => {
                        "accelerator"
                    }
                };
                let name = if kind == "cpu" || d.description.is_empty() {
                    d.name
                } else {
                    d.description
                };
                // The CPU-variants build names the variant on its CPU device ("CPU (zen4
                // variant)"): what `/r1/backends` lists.
                #[cfg(feature = "dynamic-backends")]
                let name = match backend::CPU_VARIANT.get() {
                    Some(c) if kind == "cpu" => format!("{name} ({} variant)", c.variant),
                    _ => name,
                };
                let bytes = |b: usize| (b > 0).then_some(b as u64);
                Device {
                    name,
                    kind: kind.to_owned(),
                    memory_total_bytes: bytes(d.memory_total),
                    memory_free_bytes: bytes(d.memory_free),
                }
            })
            .collect();
        let gpu_offload = rpc::offload_device_present();
        let has_gpu = devices.iter().any(|d| d.kind == "gpu");
        let (score, reason) = match (BUILD, gpu_offload && has_gpu) {
            #[cfg(feature = "dynamic-backends")]
            ("cpu", _) => {
                let chosen = backend::CPU_VARIANT.get();
                let beyond = chosen.is_some_and(|c| goes_beyond_the_cpu_build(&c.features));
                let score = if beyond || !missing.is_empty() {
                    SCORE_CPU_VARIANT_BETTER
                } else {
                    SCORE_CPU_VARIANT_SAME
                };
                let variant = chosen.map_or_else(|| "no CPU variant".to_owned(), |c| c.describe());
                (
                    score,
                    Some(format!(
                        "CPU only; {variant}{}",
                        if score == SCORE_CPU_VARIANT_SAME {
                            "; no more than the CPU build's instruction set, which is preferred"
                        } else {
                            ""
                        }
                    )),
                )
            }
            #[cfg(not(feature = "dynamic-backends"))]
            ("cpu", _) => (
                SCORE_CPU,
                Some("this build of llama.cpp has no GPU offload; CPU only".to_owned()),
            ),
            (_, true) => (SCORE_GPU, None),
            (build, false) => (
                SCORE_GPU_BUILD_WITHOUT_GPU,
                Some(format!(
                    "this {build} build of llama.cpp sees no GPU{}; CPU only (a CPU build \
                     installed beside it is preferred)",
                    if build == "vulkan" {
                        " (CPU Vulkan devices such as lavapipe count only when \
                         GGML_VK_VISIBLE_DEVICES names them)"
                    } else {
                        ""
                    }
                )),
            ),
        };
        Ok(ProbeReport {
            available: true,
            score,
            formats: vec!["gguf".to_owned()],
            devices,
            reason,
        })
    }

    fn load(
        &self,
        params: LoadParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<LlamaCppModel, PluginError> {
        LlamaCppModel::load(params, progress)
    }

    /// See `estimate.rs`. Errors: `invalid_argument` for parameters `load` refuses, `load_failed`
    /// when llama.cpp cannot open the file or create the context (its reason in the message).
    fn estimate(&self, params: LoadParams) -> Result<Estimate, PluginError> {
        estimate::estimate(&params)
    }
}

impl Model for LlamaCppModel {
    /// Metadata from the GGUF header (`general.*`, `<arch>.*`, `tokenizer.chat_template`) and
    /// llama.cpp. `memory.kv_cache_bytes` = n_ctx × layers × KV heads × (key + value head dim) ×
    /// bytes per element of the cache type; `memory.gpu_bytes` estimates the offloaded layers'
    /// share of weights and KV cache; `compute_bytes` is not known.
    fn info(&self) -> Result<ModelInfo, PluginError> {
        Ok(LlamaCppModel::info(self))
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<i32>, PluginError> {
        LlamaCppModel::tokenize(self, text, add_special, parse_special)
    }

    /// Errors: `invalid_argument` (empty prompt, id outside the vocabulary, non-finite sampling
    /// numbers), `context_exceeded` (prompt not shorter than the context), `unsupported`
    /// (vocab-only model), `backend` (llama.cpp failed to decode). End-of-generation ids stop the
    /// generation unless `ignore_eos`; `stop_tokens` always do; neither is streamed or counted.
    /// Prompt + completion never exceed the context length (then `finish_reason` is `length`).
    fn generate(
        &self,
        request: GenerateRequest,
        on_token: &mut dyn FnMut(&[u8], i32) -> bool,
    ) -> Result<GenerateResult, PluginError> {
        LlamaCppModel::generate(self, request, on_token)
    }
}

/// "0.1.0 (llama.cpp VERSION, llama-cpp-2 0.1.160, BUILD)" (", CPU variants" after BUILD in the
/// `dynamic-backends` build), computed once.
fn plugin_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        // SAFETY: `llama_version` returns a pointer to a static NUL-terminated string.
        let llama = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_version()) };
        format!(
            "{} (llama.cpp {}, llama-cpp-2 0.1.160, {BUILD}{})",
            env!("CARGO_PKG_VERSION"),
            llama.to_string_lossy(),
            if cfg!(feature = "dynamic-backends") {
                ", CPU variants"
            } else {
                ""
            }
        )
    })
}

r1_plugin_sdk::export_plugin! {
    plugin: LlamaCppPlugin,
    init: LlamaCppPlugin,
    name: "llamacpp",
    version: plugin_version(),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(features: &[&str]) -> Vec<String> {
        features.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn only_instruction_sets_beyond_the_cpu_builds_make_a_variant_better() {
        // ggml's feature lists (ggml-cpu.cpp's names) of its haswell variant — the CPU build's
        // own level —, of the older sse42 and of alderlake (AVX-VNNI) and zen4 (AVX-512), as a
        // Zen 4 logs them.
        let haswell = ["SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"];
        assert!(!goes_beyond_the_cpu_build(&list(&haswell)));
        assert!(!goes_beyond_the_cpu_build(&list(&["SSE3", "SSSE3"])));
        let alderlake = [
            "SSE3", "SSSE3", "AVX", "AVX_VNNI", "AVX2", "F16C", "FMA", "BMI2",
        ];
        assert!(goes_beyond_the_cpu_build(&list(&alderlake)));
        let zen4 = [
            "SSE3",
            "SSSE3",
            "AVX",
            "AVX2",
            "F16C",
            "FMA",
            "BMI2",
            "AVX512",
            "AVX512_VBMI",
            "AVX512_VNNI",
            "AVX512_BF16",
        ];
        assert!(goes_beyond_the_cpu_build(&list(&zen4)));
    }
}
