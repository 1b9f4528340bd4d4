//! `tensorrt`: the r1d backend plugin for decoder-only ONNX models on NVIDIA GPUs, through ONNX
//! Runtime's TensorRT execution provider, falling back to its CUDA execution provider.
//!
//! The generation loop, the model directory and the session are
//! [`r1_onnx_common::OnnxModel`], shared with the `onnxruntime` (CPU) plugin; this plugin only
//! probes the machine and asks for other execution providers.
//!
//! - `probe`: available when all of these hold, otherwise unavailable with every missing piece
//!   named: an NVIDIA driver (NVML, `libnvidia-ml.so.1`, loads), at least one NVIDIA GPU, an ONNX
//!   Runtime library (see [`r1_onnx_common::runtime`]) that is a GPU build (has the
//!   `TensorrtExecutionProvider` or `CUDAExecutionProvider`). Devices: the GPUs with their
//!   memory; score [`SCORE_GPU`], above the CPU plugin's, so an ONNX model goes to the GPU when
//!   one can take it.
//! - `load`: TensorRT first (engines cached, see [`engine_cache_dir`]), the CUDA provider as the
//!   fallback for what TensorRT does not take or when TensorRT's libraries are missing. If the
//!   CUDA provider cannot be registered either, the load fails (it does not quietly run on the
//!   CPU). `LoadParams.main_gpu` picks the device (default 0); `extra.tensorrt_fp16` (bool,
//!   default false) lets TensorRT build fp16 engines; [`PROVIDERS_ENV`] set to `cuda` skips
//!   TensorRT.

use std::path::PathBuf;

use nvml_wrapper::Nvml;
use r1_onnx_common::ort::ep::{self, ExecutionProvider};
use r1_onnx_common::runtime;
use r1_onnx_common::{OnnxModel, SessionOptions};
use r1_plugin_sdk::{Device, LoadParams, Plugin, PluginError, ProbeReport};

/// Probe score when available (the CPU plugin scores 100 for the same format).
pub const SCORE_GPU: i32 = 300;

/// Environment variable naming the directory for TensorRT's engine and timing caches.
pub const ENGINE_CACHE_ENV: &str = "R1D_TENSORRT_CACHE_DIR";

/// Environment variable choosing the execution providers: `tensorrt,cuda` (the default:
/// TensorRT, falling back to CUDA) or `cuda` (CUDA only, e.g. to compare the two).
pub const PROVIDERS_ENV: &str = "R1D_TENSORRT_PROVIDERS";

/// Where TensorRT engines are cached, so that the second load of a model skips the engine build
/// (minutes for a large model). First of:
/// 1. `LoadParams.extra.tensorrt_engine_cache_dir`;
/// 2. `$R1D_TENSORRT_CACHE_DIR`;
/// 3. `$STATE_DIRECTORY/tensorrt` — systemd sets `STATE_DIRECTORY` to `/var/lib/r1d` for the
///    system service (`StateDirectory=r1d` in `r1d.service`);
/// 4. `$XDG_STATE_HOME/r1d/tensorrt`, else `$HOME/.local/state/r1d/tensorrt` (user mode).
///
/// `None` when none of these can be formed (no `HOME`); then engines are not cached.
pub fn engine_cache_dir(params: &LoadParams) -> Option<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = params
        .extra
        .get("tensorrt_engine_cache_dir")
        .and_then(|v| v.as_str())
    {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = env(ENGINE_CACHE_ENV) {
        return Some(dir);
    }
    if let Some(state) = env("STATE_DIRECTORY") {
        // systemd may pass several directories separated by ':'; the first is r1d's.
        let first = state
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        return Some(PathBuf::from(first).join("tensorrt"));
    }
    if let Some(state) = env("XDG_STATE_HOME") {
        return Some(state.join("r1d/tensorrt"));
    }
    env("HOME").map(|home| home.join(".local/state/r1d/tensorrt"))
}

/// What the probe found about the NVIDIA side.
#[derive(Debug, Default)]
struct NvidiaState {
    driver: Option<String>,
    gpus: Vec<Device>,
    problem: Option<String>,
}

fn probe_nvidia() -> NvidiaState {
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => {
            return NvidiaState {
                problem: Some(format!("no NVIDIA driver (NVML failed to load: {e})")),
                ..NvidiaState::default()
            }
        }
    };
    let driver = nvml.sys_driver_version().ok();
    let count = match nvml.device_count() {
        Ok(count) => count,
        Err(e) => {
            return NvidiaState {
                driver,
                problem: Some(format!("NVML cannot count the GPUs: {e}")),
                ..NvidiaState::default()
            }
        }
    };
    let gpus: Vec<Device> = (0..count)
        .filter_map(|i| nvml.device_by_index(i).ok())
        .map(|d| {
            let memory = d.memory_info().ok();
            Device {
                name: d.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                kind: "gpu".into(),
                memory_total_bytes: memory.as_ref().map(|m| m.total),
                memory_free_bytes: memory.as_ref().map(|m| m.free),
            }
        })
        .collect();
    let problem = gpus.is_empty().then(|| {
        format!(
            "no NVIDIA GPU (driver {})",
            driver.as_deref().unwrap_or("?")
        )
    });
    NvidiaState {
        driver,
        gpus,
        problem,
    }
}

/// The ONNX Runtime's GPU providers, or why there are none.
fn probe_runtime() -> Result<(String, Vec<String>), String> {
    let rt = runtime::runtime(None)?;
    let gpu: Vec<String> = rt
        .providers
        .iter()
        .filter(|p| *p == ep::TensorRT::NAME || *p == ep::CUDA::NAME)
        .cloned()
        .collect();
    let described = format!("ONNX Runtime {} from {}", rt.version, rt.library.display());
    if gpu.is_empty() {
        Err(format!(
            "{described} is not a GPU build (its providers: {}); install onnxruntime-gpu's \
             library and point {} at it",
            rt.providers.join(", "),
            runtime::LIBRARY_ENV
        ))
    } else {
        Ok((described, gpu))
    }
}

/// What a GPU provider library of ONNX Runtime (`libonnxruntime_providers_cuda.so`,
/// `…_tensorrt.so`, shipped beside `libonnxruntime.so` by `onnxruntime-gpu`) lacks on this
/// machine: it is opened (and stays loaded, as ONNX Runtime would load it for a session) and the
/// first dependency the dynamic loader cannot find is named — cuDNN, cuBLAS, cuFFT, TensorRT's
/// `libnvinfer`. `None` when it loads, or when it is not there (a CPU build, reported elsewhere).
fn provider_problem(runtime_library: &std::path::Path, provider: &str) -> Option<String> {
    let file = format!("libonnxruntime_providers_{provider}.so");
    let path = runtime_library.parent()?.join(&file);
    if !path.exists() {
        return None;
    }
    // SAFETY: loading runs the library's initialisers; it is ONNX Runtime's own provider, which
    // ONNX Runtime itself loads the same way when a session asks for the provider.
    match unsafe { libloading::Library::new(&path) } {
        Ok(lib) => {
            std::mem::forget(lib);
            None
        }
        Err(e) => {
            let text = r1_onnx_common::runtime::loader_words(&e);
            Some(match missing_library(&text) {
                Some(missing) => format!(
                    "{file} needs {missing}, which is not installed or not on the library path"
                ),
                None => format!("{file} cannot be loaded: {text}"),
            })
        }
    }
}

/// The library a `dlopen` error says is missing: "libcudnn.so.9: cannot open shared object file:
/// No such file or directory" → `libcudnn.so.9`. Pure.
fn missing_library(dlerror: &str) -> Option<&str> {
    let (before, _) = dlerror.split_once(": cannot open shared object file")?;
    // libloading prefixes its own words; the library name is the last word before the colon.
    before
        .rsplit([' ', '('])
        .next()
        .filter(|n| n.contains(".so"))
}

/// The TensorRT/CUDA backend.
#[derive(Debug, Default)]
pub struct TensorRtPlugin;

impl Plugin for TensorRtPlugin {
    type Model = OnnxModel;

    fn probe(&self) -> Result<ProbeReport, PluginError> {
        let nvidia = probe_nvidia();
        let runtime = probe_runtime();
        let mut missing = Vec::new();
        if let Some(problem) = &nvidia.problem {
            missing.push(problem.clone());
        }
        match &runtime {
            Err(problem) => missing.push(problem.clone()),
            Ok(_) => {
                if let Ok(rt) = runtime::runtime(None) {
                    for provider in ["cuda", "tensorrt"] {
                        missing.extend(provider_problem(&rt.library, provider));
                    }
                }
            }
        }
        let formats = vec!["onnx".to_owned()];
        let mut devices = nvidia.gpus;
        if let (Some(driver), Some(first)) = (&nvidia.driver, devices.first_mut()) {
            first.name = format!("{} (driver {driver})", first.name);
        }
        Ok(if missing.is_empty() {
            let (described, providers) = runtime.expect("checked above");
            ProbeReport {
                available: true,
                score: SCORE_GPU,
                formats,
                devices,
                reason: Some(format!("{described}; providers {}", providers.join(", "))),
            }
        } else {
            ProbeReport {
                available: false,
                score: 0,
                formats,
                devices,
                reason: Some(missing.join("; ")),
            }
        })
    }

    fn load(
        &self,
        params: LoadParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<OnnxModel, PluginError> {
        let device = params.main_gpu.unwrap_or(0);
        let fp16 = params
            .extra
            .get("tensorrt_fp16")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let mut tensorrt = ep::TensorRT::default()
            .with_device_id(device)
            .with_fp16(fp16);
        if let Some(dir) = engine_cache_dir(&params) {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::warn!(
                    "cannot create the TensorRT engine cache {}: {e}",
                    dir.display()
                );
            } else {
                let dir = dir.to_string_lossy().into_owned();
                tensorrt = tensorrt
                    .with_engine_cache(true)
                    .with_engine_cache_path(&dir)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&dir);
            }
        }
        let use_tensorrt = match std::env::var(PROVIDERS_ENV).ok().as_deref() {
            None | Some("") | Some("tensorrt,cuda") => true,
            Some("cuda") => false,
            Some(other) => {
                return Err(PluginError::invalid_argument(format!(
                    "{PROVIDERS_ENV}={other:?} is not one of \"tensorrt,cuda\" or \"cuda\""
                )))
            }
        };
        let mut providers = Vec::with_capacity(2);
        if use_tensorrt {
            // TensorRT failing to register (its libraries missing) falls back to CUDA.
            providers.push(tensorrt.build().fail_silently());
        }
        // CUDA failing to register fails the load: this backend never runs on the CPU.
        providers.push(
            ep::CUDA::default()
                .with_device_id(device)
                .build()
                .error_on_failure(),
        );
        let options = SessionOptions {
            providers,
            on_gpu: true,
        };
        OnnxModel::load(&params, options, progress)
    }
}

r1_plugin_sdk::export_plugin! {
    plugin: TensorRtPlugin,
    init: TensorRtPlugin,
    name: "tensorrt",
    version: env!("CARGO_PKG_VERSION"),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_library_is_named_from_the_loaders_error() {
        assert_eq!(
            missing_library(
                "/x/libonnxruntime_providers_cuda.so: libcudnn.so.9: cannot open shared object \
                 file: No such file or directory"
            ),
            Some("libcudnn.so.9")
        );
        assert_eq!(
            missing_library("libnvinfer.so.10: cannot open shared object file: No such file"),
            Some("libnvinfer.so.10")
        );
        assert_eq!(missing_library("undefined symbol: foo"), None);
    }

    #[test]
    fn the_load_parameter_wins_for_the_engine_cache() {
        let params = LoadParams {
            extra: serde_json::json!({"tensorrt_engine_cache_dir": "/x/engines"}),
            ..LoadParams::default()
        };
        assert_eq!(engine_cache_dir(&params), Some(PathBuf::from("/x/engines")));
    }
}
