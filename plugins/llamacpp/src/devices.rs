//! The GPUs llama.cpp sees and whether a load's offloaded layers can fit in them.
//!
//! llama.cpp finds out that the device memory is too small only when an allocation fails, in
//! the middle of a load, with a message about a buffer ("ErrorOutOfDeviceMemory", "unable to
//! allocate Vulkan0 buffer"). [`check_device_memory`] says it before anything is allocated, in
//! the user's terms: how much the requested layers need at least, how much the GPUs have, and how
//! many layers would fit.

use gguf_header::Header;
use llama_cpp_2::{list_llama_ggml_backend_devices, LlamaBackendDeviceType};
use r1_plugin_sdk::PluginError;

/// A GPU as llama.cpp lists it: its description and total memory (bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuMemory {
    /// Description (`NVIDIA H200`, `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// Total device memory (bytes), as the ggml backend reports it (`ggml_backend_dev_memory`).
    pub total_bytes: u64,
}

/// The GPUs (discrete and integrated) llama.cpp's backends list, in its device order.
pub fn gpus() -> Vec<GpuMemory> {
    list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| {
            matches!(
                d.device_type,
                LlamaBackendDeviceType::Gpu | LlamaBackendDeviceType::IntegratedGpu
            )
        })
        .map(|d| GpuMemory {
            name: if d.description.is_empty() {
                d.name
            } else {
                d.description
            },
            total_bytes: d.memory_total as u64,
        })
        .collect()
}

/// Refuses a load whose offloaded weights alone exceed the memory of the GPUs they go to: all of
/// `gpus` (llama.cpp splits layers across them), or only `gpus[main_gpu]` when one is chosen.
/// `n_gpu_layers` is what llama.cpp is asked for (`u32::MAX` = all). The weights come from the
/// GGUF header ([`Header::offloaded_weight_bytes`]): a lower bound, since the KV cache and
/// compute buffers come on top — a refusal is certain, a pass is not a promise. Pure.
///
/// # Errors
/// [`PluginError::load_failed`] naming the model, what the layers need, what the GPUs have and
/// how many layers fit.
pub fn check_device_memory(
    path: &str,
    header: &Header,
    n_gpu_layers: u32,
    main_gpu: Option<i32>,
    gpus: &[GpuMemory],
) -> Result<(), PluginError> {
    let targets: Vec<&GpuMemory> = match main_gpu {
        Some(i) => usize::try_from(i)
            .ok()
            .and_then(|i| gpus.get(i))
            .into_iter()
            .collect(),
        None => gpus.iter().collect(),
    };
    let total: u64 = targets.iter().map(|g| g.total_bytes).sum();
    match header.device_memory_shortfall(n_gpu_layers, total) {
        None => Ok(()),
        Some(shortfall) => {
            let names = targets
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            Err(PluginError::load_failed(format!(
                "failed to load model {path}: {shortfall} (GPU: {names})"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A llama-shaped header: 30 layers of 1 MB (F32), an output layer of 2 MB + 4 KB norm.
    fn model() -> Header {
        use gguf_header::write::{gguf, Meta};
        let names: Vec<String> = (0..30).map(|i| format!("blk.{i}.ffn_up.weight")).collect();
        let mut tensors: Vec<(&str, &[u64], u32)> = vec![("token_embd.weight", &[1_000_000], 0)];
        tensors.extend(names.iter().map(|n| (n.as_str(), &[250_000u64][..], 0)));
        tensors.push(("output_norm.weight", &[1000], 0));
        tensors.push(("output.weight", &[500_000], 0));
        let bytes = gguf(
            &[
                ("general.architecture", Meta::Str("llama")),
                ("llama.block_count", Meta::U32(30)),
            ],
            &tensors,
            40_000_000,
        );
        gguf_header::read_bytes(&bytes, "model").unwrap()
    }

    fn gpu(name: &str, total_bytes: u64) -> GpuMemory {
        GpuMemory {
            name: name.into(),
            total_bytes,
        }
    }

    #[test]
    fn layers_beyond_the_gpus_memory_are_refused_naming_what_fits() {
        let h = model();
        let all = h.offloaded_weight_bytes(u32::MAX).unwrap();
        assert_eq!(all, 30_000_000 + 2_004_000);
        let small = [gpu("tiny GPU", 16_000_000)];
        let e = check_device_memory("m.gguf", &h, u32::MAX, None, &small).unwrap_err();
        assert_eq!(
            e.message,
            "failed to load model m.gguf: offloading 31 of its 31 layers needs at least 0.03 GB \
             of device memory for the weights alone, but the GPU memory is 0.02 GB; set \
             gpu_layers to 14 or less (GPU: tiny GPU)"
        );
        // 14 = the output layer (2.004 MB) + 13 layers of 1 MB.
        let fit = h.gpu_layers_within(16_000_000).unwrap();
        assert_eq!(fit, 14);
        // What fits passes; no GPU, or a GPU without a memory figure, is not this check's call.
        check_device_memory("m.gguf", &h, fit, None, &small).unwrap();
        check_device_memory("m.gguf", &h, u32::MAX, None, &[]).unwrap();
        check_device_memory("m.gguf", &h, u32::MAX, None, &[gpu("?", 0)]).unwrap();
        // Two GPUs share the layers; main_gpu puts them all on one.
        let two = [gpu("a", all / 2), gpu("b", all / 2 + 1)];
        check_device_memory("m.gguf", &h, u32::MAX, None, &two).unwrap();
        assert!(check_device_memory("m.gguf", &h, u32::MAX, Some(1), &two).is_err());
    }
}
