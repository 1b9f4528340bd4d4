//! `estimate`: what a load would allocate, from llama.cpp's own dry run.
//!
//! The model is opened with `no_alloc` (metadata, vocabulary and tensor infos; no weight is read
//! and no buffer allocated) and a context is created with the same parameters `load` would use
//! ([`ContextPlan`]); llama.cpp then knows every buffer it would allocate — weights per buffer
//! type (CPU, the CPU's repacked layout `CPU_REPACK`, each GPU), KV cache and compute buffers —
//! and `llama_get_memory_breakdown` (a C++ API, hence `cpp/estimate.cpp`) reports them. This is
//! the mechanism behind llama.cpp's own `llama_params_fit` / `llama-fit-params`.
//!
//! How buffer types become [`DeviceEstimate`] fields: host-memory weights in a buffer type named
//! `CPU` are used in place from the memory-mapped file (`weights_mapped_bytes`) when `use_mmap`
//! (the default), else copied; weights in `CPU_REPACK` are a copy in anonymous memory
//! (`weights_bytes`, `repacked_bytes`) *and* their file pages are read to make it and stay mapped,
//! so they count in `weights_mapped_bytes` too (measured with the R1 stand-ins: a 7B Q4_K_M holds
//! the whole 4.7 GB file plus a 3.6 GB repacked copy; `docs/standins.md`).

use std::ffi::{c_char, CString};

use llama_cpp_sys_2 as sys;
use r1_plugin_sdk::{BufferEstimate, DeviceEstimate, Estimate, LoadParams, PluginError};

use crate::backend;
use crate::model::{ContextPlan, KvType};

/// One buffer type's share, as `cpp/estimate.cpp` writes it (same layout).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawBuffer {
    name: [c_char; 64],
    device: [c_char; 64],
    /// 0 host memory, 1 GPU, 2 other accelerator.
    device_kind: i32,
    model: u64,
    context: u64,
    compute: u64,
}

extern "C" {
    /// `cpp/estimate.cpp`: dry-runs a load of `path` with `mparams` (no_alloc forced) and a
    /// context with `cparams`; writes up to `cap` entries to `out`, their count to `n_out` and
    /// llama.cpp's context length to `n_ctx_out`. Returns 0 on success, 1 when the model failed
    /// to open, 2 when the context failed, 3 when llama.cpp threw. Borrows every pointer for the
    /// call only; allocates nothing that outlives it.
    fn r1_llama_estimate(
        path: *const c_char,
        mparams: *const sys::llama_model_params,
        cparams: *const sys::llama_context_params,
        out: *mut RawBuffer,
        cap: usize,
        n_out: *mut usize,
        n_ctx_out: *mut u32,
    ) -> i32;
}

/// Most buffer types one estimate reports (a CPU, its repack and extra types, and a few GPUs
/// with their host buffers stay far below).
const MAX_BUFFERS: usize = 64;

fn text(raw: &[c_char; 64]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs the dry run for `params` (see the module docs).
///
/// # Errors
/// `invalid_argument` for parameters `load` would refuse; `load_failed` naming the file and
/// llama.cpp's reason when it cannot open the model or create the context.
pub(crate) fn estimate(params: &LoadParams) -> Result<Estimate, PluginError> {
    // Initialises llama.cpp (and its logging) once per process.
    backend::backend()?;
    let path = params.path.clone();
    let kv_type = KvType::parse(params.kv_cache_type.as_deref())?;
    let header = gguf_header::read(std::path::Path::new(&path))
        .map_err(|e| PluginError::load_failed(format!("failed to read GGUF {path}: {e}")))?;
    let n_ctx_train = header
        .arch_uint("context_length")
        .map_or(u32::MAX, |c| u32::try_from(c).unwrap_or(u32::MAX));
    let plan = ContextPlan::new(params, n_ctx_train)?;
    let gpu_offload = crate::rpc::offload_device_present();
    let gpu_layers = params
        .gpu_layers
        .unwrap_or(if gpu_offload { u32::MAX } else { 0 });
    let use_mmap = params.use_mmap.unwrap_or(true);

    // SAFETY: plain constructors returning structs by value.
    let (mut mparams, mut cparams) = unsafe {
        (
            sys::llama_model_default_params(),
            sys::llama_context_default_params(),
        )
    };
    mparams.n_gpu_layers = i32::try_from(gpu_layers).unwrap_or(i32::MAX);
    if let Some(main_gpu) = params.main_gpu {
        mparams.split_mode = sys::LLAMA_SPLIT_MODE_NONE;
        mparams.main_gpu = main_gpu;
    }
    mparams.no_alloc = true;
    cparams.n_ctx = plan.n_ctx;
    cparams.n_batch = plan.n_batch;
    cparams.n_ubatch = plan.n_ubatch;
    cparams.n_seq_max = plan.n_seq;
    cparams.n_threads = i32::try_from(plan.threads).unwrap_or(i32::MAX);
    cparams.n_threads_batch = i32::try_from(plan.threads_batch).unwrap_or(i32::MAX);
    cparams.type_k = kv_type.llama_type().into();
    cparams.type_v = kv_type.llama_type().into();
    cparams.kv_unified = true;

    let c_path = CString::new(path.clone()).map_err(|_| {
        PluginError::invalid_argument(format!("model path {path:?} contains a NUL byte"))
    })?;
    let empty = RawBuffer {
        name: [0; 64],
        device: [0; 64],
        device_kind: 0,
        model: 0,
        context: 0,
        compute: 0,
    };
    let mut raw = vec![empty; MAX_BUFFERS];
    let mut n = 0usize;
    let mut n_ctx = 0u32;
    backend::clear_error_lines();
    r1_plugin_sdk::clear_last_error_line();
    // SAFETY: `c_path` is NUL-terminated; the two parameter structs are initialised by llama.cpp's
    // own default constructors and outlive the call (their pointer fields are NULL, the
    // defaults); `raw` has `MAX_BUFFERS` writable entries of the layout the shim declares; the
    // shim borrows everything for the call only.
    let status = unsafe {
        r1_llama_estimate(
            c_path.as_ptr(),
            &mparams,
            &cparams,
            raw.as_mut_ptr(),
            raw.len(),
            &mut n,
            &mut n_ctx,
        )
    };
    if status != 0 {
        let reason = backend::failure_reason(&backend::take_error_lines())
            .unwrap_or_else(|| "llama.cpp gave no reason".to_owned());
        let what = match status {
            1 => "open",
            2 => "create a context for",
            _ => "dry-run",
        };
        return Err(PluginError::load_failed(format!(
            "failed to {what} {path} without allocating (llama.cpp no_alloc): {reason}"
        )));
    }
    raw.truncate(n.min(MAX_BUFFERS));
    let buffers: Vec<BufferEstimate> = raw
        .iter()
        .map(|b| BufferEstimate {
            name: text(&b.name),
            // The CPU's own buffer type names no device.
            device: match text(&b.device) {
                d if d.is_empty() && b.device_kind == 0 => "CPU".to_owned(),
                d => d,
            },
            model_bytes: b.model,
            context_bytes: b.context,
            compute_bytes: b.compute,
        })
        .collect();
    let kinds: Vec<i32> = raw.iter().map(|b| b.device_kind).collect();
    let devices = group(&buffers, &kinds, use_mmap);
    let layers = header.arch_uint("block_count").unwrap_or(0);
    Ok(Estimate {
        devices,
        buffers,
        context_length: n_ctx / plan.n_seq.max(1),
        parallel: plan.n_seq,
        gpu_layers: if gpu_offload {
            u32::try_from(u64::from(gpu_layers).min(layers)).unwrap_or(u32::MAX)
        } else {
            0
        },
        source: "llama.cpp no_alloc dry run (llama_get_memory_breakdown)".to_owned(),
    })
}

/// Sums buffers into devices: every host-memory buffer into one `"cpu"` entry named `CPU`, the
/// others by device name. See the module docs for the mapped / copied split.
fn group(buffers: &[BufferEstimate], kinds: &[i32], use_mmap: bool) -> Vec<DeviceEstimate> {
    let mut devices: Vec<DeviceEstimate> = Vec::new();
    for (b, kind) in buffers.iter().zip(kinds) {
        let (name, kind) = match kind {
            0 => ("CPU".to_owned(), "cpu"),
            1 => (b.device.clone(), "gpu"),
            _ => (b.device.clone(), "accelerator"),
        };
        let i = match devices.iter().position(|d| d.name == name) {
            Some(i) => i,
            None => {
                devices.push(DeviceEstimate {
                    name,
                    kind: kind.to_owned(),
                    ..DeviceEstimate::default()
                });
                devices.len() - 1
            }
        };
        let d = &mut devices[i];
        let repacked = kind == "cpu" && b.name.ends_with("_REPACK");
        if kind == "cpu" && use_mmap {
            d.weights_mapped_bytes += b.model_bytes;
            if repacked {
                d.weights_bytes += b.model_bytes;
                d.repacked_bytes += b.model_bytes;
            }
        } else {
            d.weights_bytes += b.model_bytes;
            if repacked {
                d.repacked_bytes += b.model_bytes;
            }
        }
        d.kv_cache_bytes += b.context_bytes;
        d.compute_bytes += b.compute_bytes;
    }
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(name: &str, device: &str, model: u64, context: u64, compute: u64) -> BufferEstimate {
        BufferEstimate {
            name: name.into(),
            device: device.into(),
            model_bytes: model,
            context_bytes: context,
            compute_bytes: compute,
        }
    }

    #[test]
    fn repacked_weights_count_as_mapped_pages_and_as_a_copy() {
        let buffers = [
            buffer("CPU", "CPU", 1000, 200, 50),
            buffer("CPU_REPACK", "CPU", 3000, 0, 0),
        ];
        let devices = group(&buffers, &[0, 0], true);
        assert_eq!(devices.len(), 1);
        let cpu = &devices[0];
        assert_eq!(cpu.weights_mapped_bytes, 4000);
        assert_eq!(cpu.weights_bytes, 3000);
        assert_eq!(cpu.repacked_bytes, 3000);
        assert_eq!(cpu.total_bytes(), 4000 + 3000 + 200 + 50);
    }

    #[test]
    fn without_mmap_host_weights_are_copies_and_gpus_stay_apart() {
        let buffers = [
            buffer("CPU", "CPU", 1000, 0, 10),
            buffer("CUDA0", "CUDA0", 5000, 700, 300),
            buffer("CUDA_Host", "CUDA0", 0, 0, 20),
        ];
        let devices = group(&buffers, &[0, 1, 0], false);
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].name, "CPU");
        assert_eq!(devices[0].weights_mapped_bytes, 0);
        assert_eq!(devices[0].weights_bytes, 1000);
        assert_eq!(devices[0].compute_bytes, 30);
        assert_eq!(devices[1].kind, "gpu");
        assert_eq!(devices[1].total_bytes(), 6000);
    }
}
