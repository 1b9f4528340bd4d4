//! The planner: hardware × catalog × models present × policy → a [`Plan`].
//!
//! **Architecture invariant**: a pure function — no I/O, no clock, no randomness — so the same
//! inputs give the same plan, and it is tested table-driven with the published hardware rows.
//!
//! For every variant and quantization of the [`catalog`](crate::catalog) it places the model:
//! the output head and as many transformer blocks as fit go to the GPUs (largest free VRAM
//! first, as llama.cpp's default split by free memory does), the rest stays on the CPU when the
//! policy allows partial offload. It then checks RAM (what stays on the CPU + the policy's
//! reserve ≤ available), VRAM (≤ *free* on each GPU), and disk (the download must fit unless the
//! model is present), and estimates generation speed from memory bandwidth.
//!
//! The choice is the highest-quality candidate that fits and reaches the policy's minimum
//! tokens/s: the best variant first; within it a quantization that runs entirely on the GPU
//! before a higher one that spills layers to the CPU; then the highest quantization. When candidates fit but none is fast enough, the
//! fastest of them is chosen and the plan says so: a slow answer beats none. When nothing fits,
//! there is no choice and the reason says what is short, by how much.
//!
//! Speed model: generating one token reads every active weight once plus the KV cache (taken
//! half full on average), so `time per token = Σ bytes on device / bandwidth of device`, with
//! layer-split GPUs working in turn. MoE models read `active / total` of their block weights.

use crate::catalog::{Format, Quantization, Variant, VARIANTS};
use crate::config::{PlannerConfig, DEFAULT_PARALLEL};
use crate::hardware::Hardware;

/// The planner's policy is the `[planner]` config section.
pub type Policy = PlannerConfig;

/// CPU memory bandwidth assumed when a profile has none (bytes/s): 25 GB/s, a conservative
/// figure for a dual-channel DDR4 desktop (DDR4-3200 peaks at 51.2 GB/s; streaming reads reach
/// roughly 60–80 % of it, fewer with few cores).
pub const DEFAULT_CPU_BANDWIDTH: u64 = 25_000_000_000;

/// GPU memory bandwidth assumed when the device gives none (bytes/s): 250 GB/s, the class of an
/// entry-level discrete GPU (RTX 4060: 272 GB/s; RX 7600: 288 GB/s). AMD GPUs found through
/// sysfs always use this.
pub const DEFAULT_GPU_BANDWIDTH: u64 = 250_000_000_000;

/// Share of a GPU's peak bandwidth that llama.cpp's token generation reaches on GPUs up to
/// about 2.6 TB/s (≈ 0.6–0.8 in published llama-bench `tg128` results against data-sheet
/// bandwidth; an estimate: no such GPU has run r1d yet). Above that the reading is capped at
/// [`GPU_EFFECTIVE_BANDWIDTH_CAP`]. See [`gpu_effective_bandwidth`].
pub const GPU_EFFICIENCY: f64 = 0.7;

/// The most bandwidth llama.cpp's CUDA generation was seen to read at (bytes/s): 1.85 TB/s on
/// an H200 (4.81 TB/s peak, HBM3e), llama-cpp-sys-2 0.1.161's llama.cpp built for sm_90 with
/// CUDA 13.0, `llama-bench -ngl 99 -n 128` on the R1 stand-ins: 70B Q6_K 27.9 tokens/s, 7B
/// Q4_K_M 250.5 tokens/s; with [`GPU_LAYER_SECONDS`] both are 1.85 TB/s, 0.38 of the peak
/// (`scripts/gpu-check`, docs/gpu.md). The matrix–vector kernels of one token do not fill HBM;
/// a 0.7 share of such a peak promised twice the speed that was measured.
pub const GPU_EFFECTIVE_BANDWIDTH_CAP: f64 = 1.85e12;

/// Time one offloaded layer adds to a generated token besides reading its bytes (seconds): the
/// kernel launches and synchronisation of a layer's ~10 operations, 52 µs, from the same two
/// H200 measurements as [`GPU_EFFECTIVE_BANDWIDTH_CAP`] (the two unknowns of
/// `t = bytes / bandwidth + layers × this`). It is why a small model on a big GPU is far from
/// its bandwidth figure (the 7B: 4.0 ms per token, 1.5 ms of it this).
pub const GPU_LAYER_SECONDS: f64 = 52e-6;

/// The bandwidth llama.cpp's generation reads at on a GPU of `peak` bytes/s (data-sheet):
/// `min(peak × GPU_EFFICIENCY, GPU_EFFECTIVE_BANDWIDTH_CAP)`.
pub fn gpu_effective_bandwidth(peak: f64) -> f64 {
    (peak * GPU_EFFICIENCY).min(GPU_EFFECTIVE_BANDWIDTH_CAP)
}

/// Share of the measured CPU read bandwidth that llama.cpp's generation reaches; an estimate.
pub const CPU_EFFICIENCY: f64 = 0.8;

/// VRAM a GPU runtime takes before any model tensor (bytes): CUDA/HIP context and the BLAS
/// workspaces, ≈ 300–500 MiB on current drivers; 512 MiB to be safe.
pub const GPU_RUNTIME_OVERHEAD: u64 = 512 << 20;

/// RAM the r1d process and llama.cpp's host buffers take besides the model (bytes).
pub const HOST_OVERHEAD: u64 = 256 << 20;

/// Hysteresis of the speed test, for a re-plan while a model is served: the served model stays
/// "fast enough" down to this share of `min_tokens_per_s` …
///
/// The speed estimate scales with the measured memory bandwidth, and a measurement wobbles with
/// what else the machine does (±10 % between runs of the median-of-7 probe on a busy machine,
/// far more between single passes). Without hysteresis a wobble across the threshold swaps the
/// model (the 1.5B flipped between Q6_K, Q8_0 and F16). With it, a re-plan at up to 10 % less
/// bandwidth keeps what a plan chose (0.85 < 1 / 1.1) …
pub const SPEED_KEEP: f64 = 0.85;

/// … and a better variant or quantization than the served one must reach this multiple of
/// `min_tokens_per_s` to replace it, so a re-plan at up to 10 % more bandwidth does not upgrade
/// to what a plan found too slow (1.15 > 1.1). A first plan (nothing served) uses the minimum
/// itself.
pub const SPEED_UPGRADE: f64 = 1.15;

/// The backend that runs GGUF files.
pub const GGUF_BACKEND: &str = "llamacpp";

/// A model file already on disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Present {
    /// Variant id (`deepseek-r1:7b`).
    pub variant: String,
    /// Quantization name (`Q4_K_M`).
    pub quantization: String,
    /// What its backend says a CPU-only load of this very file allocates, asked by the caller
    /// (the planner does no I/O) at [`planned_context`] for one sequence; `None` when the
    /// backend has no estimate. When given, it replaces the catalog formula's RAM figure for a
    /// placement on the CPU.
    pub estimate: Option<BackendEstimate>,
}

/// A backend's own figures for one load (the plugin ABI's `estimate`), host memory only, in
/// bytes: what llama.cpp's no-allocation dry run reports for a CPU-only load of one sequence.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct BackendEstimate {
    /// Context length per sequence the figures are for (tokens), as the backend rounded it.
    pub context_length: u32,
    /// Weights used in place from the memory-mapped file (resident file pages once read).
    pub weights_mapped_bytes: u64,
    /// Weights copied into anonymous memory (llama.cpp's repacked CPU layout, or all of them
    /// without mmap), on top of the mapped pages.
    pub weights_copied_bytes: u64,
    /// KV cache of one sequence of `context_length` tokens.
    pub kv_cache_bytes: u64,
    /// Compute buffers.
    pub compute_bytes: u64,
    /// Who estimated, e.g. "llamacpp: llama.cpp no_alloc dry run".
    pub source: String,
}

impl BackendEstimate {
    /// Host RAM for `sequences` sequences (each its own KV cache), without r1d's own overhead.
    pub fn ram_bytes(&self, sequences: u32) -> u64 {
        self.weights_mapped_bytes
            + self.weights_copied_bytes
            + self.kv_cache_bytes * u64::from(sequences.max(1))
            + self.compute_bytes
    }
}

/// Where a candidate's memory figures come from.
#[derive(Debug, Clone, PartialEq)]
pub enum MemorySource {
    /// The catalog's formula ([`Variant::footprint`]): the file is not present, its backend has
    /// no estimate, or layers go to a GPU (the estimate is asked for a CPU-only load).
    Formula,
    /// The backend's own estimate of the present file ([`BackendEstimate`]).
    Backend {
        /// Who estimated ([`BackendEstimate::source`]).
        source: String,
        /// What the formula would have planned (bytes of RAM, without the reserve), for
        /// comparison.
        formula_ram_bytes: u64,
    },
}

/// The context length the planner plans `v` with under `policy` (tokens): the policy's, capped at
/// the trained context. Callers ask a backend's estimate at this length.
pub fn planned_context(v: &Variant, policy: &Policy) -> u32 {
    policy.context_length.min(v.trained_context)
}

/// One variant × quantization, placed on this hardware.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The variant.
    pub variant: &'static Variant,
    /// The quantization.
    pub quantization: &'static Quantization,
    /// Backend plugin that would run it.
    pub backend: &'static str,
    /// Layers on GPUs, counted as llama.cpp's `n_gpu_layers` counts them (the output head is
    /// the first offloaded layer).
    pub gpu_layers: u32,
    /// Layers in all: the blocks plus the output head.
    pub total_layers: u32,
    /// Context length planned for (tokens): the policy's, capped at the trained context.
    pub context_length: u32,
    /// Answers generated at once that the plan holds, each with its own `context_length` of KV
    /// cache: `[server] parallel` when set (`Policy::sequences`), else the most up to
    /// [`DEFAULT_PARALLEL`] whose extra KV cache fits beside the one-answer plan without moving
    /// a layer off the GPU. The memory figures hold all of them (what the load allocates).
    pub parallel: u32,
    /// RAM needed (bytes), without the policy's reserve.
    pub ram_bytes: u64,
    /// VRAM needed on each GPU (bytes), in the hardware's GPU order; 0 for unused GPUs.
    pub vram_bytes: Vec<u64>,
    /// Expected generation speed (tokens/s).
    pub tokens_per_s: f64,
    /// Whether it fits in free memory and disk (and the policy allows it).
    pub fits: bool,
    /// Why it was chosen or not, in one line.
    pub reason: String,
    /// The file is already on disk.
    pub present: bool,
    /// Where `ram_bytes` comes from.
    pub memory_source: MemorySource,
    /// Whether `tokens_per_s` passes the policy's minimum — with the hysteresis of
    /// [`SPEED_KEEP`] / [`SPEED_UPGRADE`] when the plan was made while a model is served
    /// ([`plan_serving`]).
    pub fast_enough: bool,
    /// Where the layers go, per host: this machine's CPU first, then its GPUs that hold layers,
    /// then each RPC worker that holds layers. The layers add up to `total_layers`; the bytes
    /// to `ram_bytes` + Σ `vram_bytes` + what the workers hold.
    pub hosts: Vec<HostShare>,
    /// Seconds per generated token spent crossing host boundaries (see [`network_seconds`]);
    /// 0 when every layer stays on this machine. Included in `tokens_per_s`.
    pub network_s_per_token: f64,
}

/// A host (or one of this machine's devices) in a [`Candidate`]'s split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// This machine's CPU and RAM (the token embedding, the blocks not offloaded, r1d's own
    /// overhead).
    Cpu,
    /// One of this machine's GPUs (index in the hardware's GPU order).
    Gpu(usize),
    /// An RPC worker, `HOST:PORT`: all its devices together.
    Worker(String),
}

/// What one host holds of a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostShare {
    /// The host.
    pub host: Host,
    /// Layers on it, counted as llama.cpp's `n_gpu_layers` counts them (blocks, and the output
    /// head as one more layer where it lies).
    pub layers: u32,
    /// Memory it needs for them (bytes): RAM for [`Host::Cpu`] (as `ram_bytes`), VRAM for a GPU
    /// (as `vram_bytes`), device memory for a worker (weights, KV cache, compute buffer).
    pub bytes: u64,
}

/// The plan: every candidate, and the chosen one.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Index of the chosen candidate in `candidates`.
    pub chosen: Option<usize>,
    /// Every variant × quantization, best quality first.
    pub candidates: Vec<Candidate>,
    /// Why this choice (or why none), in one line.
    pub reason: String,
    /// What more memory would bring: at most one [`Upgrade`] with more RAM and one with more
    /// VRAM on the GPU with the most free VRAM. Empty when more memory would not change the
    /// choice for the better ([`Plan::more_memory`] says why).
    pub upgrades: Vec<Upgrade>,
    /// One line a person reads: what the upgrades bring with how much more memory, or why more
    /// memory would not bring a better choice here.
    pub more_memory: String,
}

/// Which memory grows in an [`Upgrade`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// RAM available to r1d (inside its cgroup).
    Ram,
    /// Free VRAM of one GPU.
    Vram {
        /// The GPU's index in the hardware's GPU order.
        gpu: usize,
    },
}

/// A better choice that more memory would bring, everything else about the machine unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Upgrade {
    /// What grows.
    pub resource: Resource,
    /// Bytes needed beyond what is available (RAM) or free (VRAM) now: the least amount, to a
    /// MiB, with which the planner chooses a better variant or quantization (found by
    /// bisection; the choice only improves as memory grows).
    pub more_bytes: u64,
    /// The candidate the planner would choose then, placed on the grown machine.
    pub candidate: Candidate,
}

impl Candidate {
    /// Every layer on this machine's GPUs (none on its CPU, none on an RPC worker).
    pub fn all_on_gpu(&self) -> bool {
        self.gpu_layers == self.total_layers
            && !self.hosts.iter().any(|h| matches!(h.host, Host::Worker(_)))
    }
}

impl Plan {
    /// The chosen candidate.
    pub fn chosen(&self) -> Option<&Candidate> {
        self.chosen.map(|i| &self.candidates[i])
    }
}

/// Where a model's layers go and what that costs.
struct Placement {
    gpu_layers: u32,
    ram_bytes: u64,
    memory_source: MemorySource,
    vram_bytes: Vec<u64>,
    tokens_per_s: f64,
    description: String,
    hosts: Vec<HostShare>,
    network_s_per_token: f64,
}

/// Decimal gigabytes, one digit: how model sizes are quoted.
fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// An amount of memory for a person: decimal GB with one digit, MB below 1 GB.
fn amount(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        gb(bytes)
    } else {
        format!("{} MB", bytes.div_ceil(1_000_000))
    }
}

/// Places `v` at `q` with a KV cache of `sequences` × `ctx` tokens (its memory); the speed
/// estimate is for one answer reading its own `ctx`. `estimate`: the backend's figures for the
/// present file, used instead of the formula's RAM when everything stays on the CPU.
fn place(
    v: &Variant,
    q: &Quantization,
    hw: &Hardware,
    policy: &Policy,
    ctx: u32,
    sequences: u32,
    estimate: Option<&BackendEstimate>,
) -> Placement {
    let f = v.footprint(q, ctx.saturating_mul(sequences.max(1)));
    let read = v.footprint(q, ctx);
    let per_layer = f.layer_weights + f.layer_kv;
    let n = v.layers;
    let gpu_fixed = f.compute + GPU_RUNTIME_OVERHEAD;
    let mut room: Vec<u64> = hw
        .gpus
        .iter()
        .map(|g| g.vram_free_bytes.saturating_sub(gpu_fixed))
        .collect();
    let mut layers = vec![0u32; hw.gpus.len()];
    // The output head is offloaded first (llama.cpp's n_gpu_layers = 1 puts just the output head
    // on the GPU); it goes to the GPU with the most room.
    let mut output_on = (0..room.len())
        .filter(|&i| room[i] >= f.output && room[i] > 0)
        .max_by_key(|&i| (room[i], std::cmp::Reverse(i)));
    if let Some(i) = output_on {
        room[i] -= f.output;
        let mut order: Vec<usize> = (0..room.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(room[i]), i));
        let mut remaining = n;
        for i in order {
            let k = (room[i] / per_layer.max(1)).min(remaining as u64) as u32;
            layers[i] = k;
            remaining -= k;
        }
        if remaining > 0 && !policy.allow_partial_offload {
            layers.iter_mut().for_each(|l| *l = 0);
            output_on = None;
        }
    }
    let on_gpu: u32 = layers.iter().sum();
    let on_cpu = n - on_gpu;
    let vram_bytes: Vec<u64> = (0..hw.gpus.len())
        .map(|i| {
            let output = if output_on == Some(i) { f.output } else { 0 };
            if layers[i] == 0 && output == 0 {
                0
            } else {
                layers[i] as u64 * per_layer + output + gpu_fixed
            }
        })
        .collect();
    let cpu_runs_graph = on_cpu > 0 || output_on.is_none();
    // Blocks on a CPU with llama.cpp's repacking kernels hold their Q4 weights twice.
    let repacks = hw.cpu.features.iter().any(|f| f == "avx2" || f == "i8mm");
    let per_cpu_layer = per_layer + if repacks { f.layer_repack } else { 0 };
    let formula_ram_bytes = f.token_embedding
        + on_cpu as u64 * per_cpu_layer
        + if output_on.is_none() { f.output } else { 0 }
        + if cpu_runs_graph { f.compute } else { 0 }
        + HOST_OVERHEAD;
    let (ram_bytes, memory_source) = match estimate {
        Some(e) if on_gpu == 0 && output_on.is_none() && e.context_length >= ctx => (
            e.ram_bytes(sequences) + HOST_OVERHEAD,
            MemorySource::Backend {
                source: e.source.clone(),
                formula_ram_bytes,
            },
        ),
        _ => (formula_ram_bytes, MemorySource::Formula),
    };

    // Speed: bytes read per token on each device over its effective bandwidth.
    let active = v.active_parameters as f64 / v.parameters as f64;
    let read_per_layer = read.layer_weights as f64 * active + read.layer_kv as f64 / 2.0;
    let cpu_bw = hw
        .memory
        .bandwidth_bytes_per_s
        .unwrap_or(DEFAULT_CPU_BANDWIDTH) as f64
        * CPU_EFFICIENCY;
    let mut seconds = (on_cpu as f64 * read_per_layer
        + if output_on.is_none() {
            f.output as f64
        } else {
            0.0
        })
        / cpu_bw;
    for (i, gpu) in hw.gpus.iter().enumerate() {
        let bytes = layers[i] as f64 * read_per_layer
            + if output_on == Some(i) {
                f.output as f64
            } else {
                0.0
            };
        if bytes > 0.0 {
            let bw = gpu.bandwidth_bytes_per_s.unwrap_or(DEFAULT_GPU_BANDWIDTH) as f64;
            let on_this = layers[i] + u32::from(output_on == Some(i));
            seconds += bytes / gpu_effective_bandwidth(bw) + f64::from(on_this) * GPU_LAYER_SECONDS;
        }
    }
    let tokens_per_s = if seconds > 0.0 { 1.0 / seconds } else { 0.0 };

    let gpu_layers = on_gpu + u32::from(output_on.is_some());
    let used: Vec<usize> = (0..hw.gpus.len()).filter(|&i| vram_bytes[i] > 0).collect();
    let gpus_text = match used.as_slice() {
        [i] => format!("GPU {i}"),
        _ => format!("{} GPUs", used.len()),
    };
    let description = if gpu_layers == 0 {
        "on the CPU".to_owned()
    } else if on_cpu == 0 {
        format!("all {} layers on {gpus_text}", n + 1)
    } else {
        format!(
            "{gpu_layers} of {} layers on {gpus_text}, the rest on the CPU",
            n + 1
        )
    };
    let mut hosts = vec![HostShare {
        host: Host::Cpu,
        layers: n + 1 - gpu_layers,
        bytes: ram_bytes,
    }];
    hosts.extend(used.iter().map(|&i| HostShare {
        host: Host::Gpu(i),
        layers: layers[i] + u32::from(output_on == Some(i)),
        bytes: vram_bytes[i],
    }));
    Placement {
        gpu_layers,
        ram_bytes,
        memory_source,
        vram_bytes,
        tokens_per_s,
        description,
        hosts,
        network_s_per_token: 0.0,
    }
}

/// llama.cpp's layer split (`llama_model::load_tensors` in src/llama-model.cpp, llama-cpp-sys-2
/// 0.1.161): the device each of the `gpu_layers` offloaded layers goes to, first offloaded layer
/// first, the output head last. The offloaded layers are the last `gpu_layers` of the
/// `blocks + 1` (blocks, then the output head); `split` is each device's share in llama.cpp's
/// device order (its default `tensor_split` is each device's free memory, bytes). Computed in
/// `f32` as llama.cpp does (cumulative shares normalized, `upper_bound` of `j / gpu_layers`), so
/// the same inputs give llama.cpp's own assignment. Pure.
pub fn split_layers(blocks: u32, gpu_layers: u32, split: &[u64]) -> Vec<usize> {
    if split.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<f32> = split.iter().map(|&b| b as f32).collect();
    let mut sum = 0.0f32;
    for p in &mut points {
        sum += *p;
        *p = sum;
    }
    for p in &mut points {
        *p /= sum;
    }
    let act = gpu_layers.min(blocks + 1);
    (0..act)
        .map(|j| {
            let x = j as f32 / act as f32;
            points.partition_point(|&p| p <= x).min(points.len() - 1)
        })
        .collect()
}

/// The layers per RPC worker of a load of a model with `blocks` blocks and `gpu_layers`
/// offloaded (llama.cpp's `n_gpu_layers`; `None`: all, the plugin's default with a worker) on
/// `workers` and then this machine's `gpus`: [`split_layers`] over their devices' free memory, as
/// llama.cpp splits them at load. Each worker that gets layers, in order, with its count. Pure.
pub fn worker_layers(
    blocks: u32,
    gpu_layers: Option<u32>,
    workers: &[crate::hardware::RpcHost],
    gpus: &[crate::hardware::Gpu],
) -> Vec<(String, u32)> {
    let mut owners: Vec<Option<&str>> = Vec::new();
    let mut free = Vec::new();
    for w in workers {
        for &f in &w.devices_free_bytes {
            owners.push(Some(&w.endpoint));
            free.push(f);
        }
    }
    for g in gpus {
        owners.push(None);
        free.push(g.vram_free_bytes);
    }
    let mut out: Vec<(String, u32)> = Vec::new();
    for d in split_layers(blocks, gpu_layers.unwrap_or(u32::MAX), &free) {
        let Some(endpoint) = owners[d] else {
            continue;
        };
        match out.iter_mut().find(|(e, _)| e == endpoint) {
            Some((_, n)) => *n += 1,
            None => out.push((endpoint.to_owned(), 1)),
        }
    }
    out
}

/// Seconds per generated token spent on the network for layers split across hosts: each run of
/// consecutive layers on one RPC worker is one graph computation there, so per token one round
/// trip (ggml's RPC client sends the input activations, the compute and the read of the result
/// asynchronously and waits once, `rpc_dispatcher::synchronize` in ggml-rpc.cpp) and the bytes of
/// the activations in (`hidden_size` × 4 bytes, f32) and out (the same, or the logits,
/// `vocab_size` × 4 bytes, when the run ends with the output head). `runs`: for each such run,
/// its link and whether it holds the output head. Pure.
pub fn network_seconds(v: &Variant, runs: &[(crate::hardware::Link, bool)]) -> f64 {
    runs.iter()
        .map(|(link, output)| {
            let into = 4.0 * f64::from(v.hidden_size);
            let out = 4.0 * f64::from(if *output { v.vocab_size } else { v.hidden_size });
            link.round_trip_s + (into + out) / link.bandwidth_bytes_per_s.max(1) as f64
        })
        .sum()
}

/// Places `v` at `q` across this machine and the RPC workers of `hw` when it does not fit this
/// machine alone: `gpu_layers` is the least number of layers whose llama.cpp split
/// ([`split_layers`] over the workers' devices, then this machine's GPUs, by free memory — the
/// split llama.cpp makes at load) fits every device (its free memory less the policy's reserve
/// on a worker) and leaves what stays on this machine within its available RAM. `None` when no
/// such number exists or there are no workers.
fn place_split(
    v: &Variant,
    q: &Quantization,
    hw: &Hardware,
    policy: &Policy,
    ctx: u32,
    sequences: u32,
) -> Option<Placement> {
    if hw.rpc_workers.is_empty() {
        return None;
    }
    let f = v.footprint(q, ctx.saturating_mul(sequences.max(1)));
    let read = v.footprint(q, ctx);
    let per_layer = f.layer_weights + f.layer_kv;
    let n = v.layers;
    // llama.cpp's device list: the RPC devices first (workers in registration order), then the
    // local GPUs; `free` is what llama.cpp splits by, `room` what may be filled.
    struct Dev {
        owner: Host,
        worker: Option<usize>,
        free: u64,
        fixed: u64,
        room: u64,
        bandwidth: f64,
    }
    let mut devs = Vec::new();
    for (w, host) in hw.rpc_workers.iter().enumerate() {
        for &free in &host.devices_free_bytes {
            devs.push(Dev {
                owner: Host::Worker(host.endpoint.clone()),
                worker: Some(w),
                free,
                fixed: f.compute,
                room: free.saturating_sub(policy.reserve_ram_bytes),
                bandwidth: host.bandwidth_bytes_per_s.unwrap_or(DEFAULT_CPU_BANDWIDTH) as f64
                    * CPU_EFFICIENCY,
            });
        }
    }
    for (i, g) in hw.gpus.iter().enumerate() {
        devs.push(Dev {
            owner: Host::Gpu(i),
            worker: None,
            free: g.vram_free_bytes,
            fixed: f.compute + GPU_RUNTIME_OVERHEAD,
            room: g.vram_free_bytes,
            bandwidth: gpu_effective_bandwidth(
                g.bandwidth_bytes_per_s.unwrap_or(DEFAULT_GPU_BANDWIDTH) as f64,
            ),
        });
    }
    let split: Vec<u64> = devs.iter().map(|d| d.free).collect();
    let repacks = hw.cpu.features.iter().any(|f| f == "avx2" || f == "i8mm");
    let per_cpu_layer = per_layer + if repacks { f.layer_repack } else { 0 };
    let available = hw.memory.available_bytes;
    for gpu_layers in 1..=n + 1 {
        let assigned = split_layers(n, gpu_layers, &split);
        let on_cpu = n + 1 - gpu_layers;
        let mut blocks = vec![0u64; devs.len()];
        let output_on = *assigned.last()?;
        for &d in &assigned[..assigned.len() - 1] {
            blocks[d] += 1;
        }
        let bytes: Vec<u64> = (0..devs.len())
            .map(|d| {
                let output = if d == output_on { f.output } else { 0 };
                if blocks[d] == 0 && output == 0 {
                    0
                } else {
                    blocks[d] * per_layer + output + devs[d].fixed
                }
            })
            .collect();
        let ram_bytes = f.token_embedding
            + u64::from(on_cpu) * per_cpu_layer
            + if on_cpu > 0 { f.compute } else { 0 }
            + HOST_OVERHEAD;
        if ram_bytes + policy.reserve_ram_bytes > available
            || (0..devs.len()).any(|d| bytes[d] > devs[d].room)
        {
            continue;
        }
        // Speed: what each device reads per token, and the network between the hosts.
        let active = v.active_parameters as f64 / v.parameters as f64;
        let read_per_layer = read.layer_weights as f64 * active + read.layer_kv as f64 / 2.0;
        let cpu_bw = hw
            .memory
            .bandwidth_bytes_per_s
            .unwrap_or(DEFAULT_CPU_BANDWIDTH) as f64
            * CPU_EFFICIENCY;
        let mut seconds = f64::from(on_cpu) * read_per_layer / cpu_bw;
        for d in 0..devs.len() {
            let output = if d == output_on { f.output as f64 } else { 0.0 };
            seconds += (blocks[d] as f64 * read_per_layer + output) / devs[d].bandwidth;
            if matches!(devs[d].owner, Host::Gpu(_)) {
                let on_this = blocks[d] + u64::from(d == output_on);
                seconds += on_this as f64 * GPU_LAYER_SECONDS;
            }
        }
        // Runs of consecutive layers on one worker (its devices together).
        let mut runs: Vec<(crate::hardware::Link, bool)> = Vec::new();
        let mut last: Option<usize> = None;
        for (j, &d) in assigned.iter().enumerate() {
            let worker = devs[d].worker;
            let output = j + 1 == assigned.len();
            if let Some(w) = worker {
                if last == Some(w) {
                    if let Some(run) = runs.last_mut() {
                        run.1 |= output;
                    }
                } else {
                    runs.push((hw.rpc_workers[w].link, output));
                }
            }
            last = worker;
        }
        let network = network_seconds(v, &runs);
        seconds += network;

        let mut hosts = vec![HostShare {
            host: Host::Cpu,
            layers: on_cpu,
            bytes: ram_bytes,
        }];
        let mut vram_bytes = vec![0u64; hw.gpus.len()];
        for d in 0..devs.len() {
            if bytes[d] == 0 {
                continue;
            }
            let layers = blocks[d] as u32 + u32::from(d == output_on);
            if let Host::Gpu(i) = devs[d].owner {
                vram_bytes[i] += bytes[d];
            }
            match hosts.iter_mut().find(|h| h.host == devs[d].owner) {
                Some(h) => {
                    h.layers += layers;
                    h.bytes += bytes[d];
                }
                None => hosts.push(HostShare {
                    host: devs[d].owner.clone(),
                    layers,
                    bytes: bytes[d],
                }),
            }
        }
        let remote: Vec<String> = hosts
            .iter()
            .filter_map(|h| match &h.host {
                Host::Worker(e) => Some(format!("{} on {e}", h.layers)),
                _ => None,
            })
            .collect();
        let description = format!(
            "{gpu_layers} of {} layers on other devices ({}), {on_cpu} on the CPU, \
             {:.1} ms/token on the network",
            n + 1,
            remote.join(", "),
            network * 1000.0
        );
        return Some(Placement {
            gpu_layers,
            ram_bytes,
            memory_source: MemorySource::Formula,
            vram_bytes,
            tokens_per_s: 1.0 / seconds,
            description,
            hosts,
            network_s_per_token: network,
        });
    }
    None
}

/// [`place`] on this machine, or across the RPC workers ([`place_split`]) when that does not fit
/// its RAM and a split does: a model that fits this machine stays on it (RPC is not for speed).
fn place_any(
    v: &Variant,
    q: &Quantization,
    hw: &Hardware,
    policy: &Policy,
    ctx: u32,
    sequences: u32,
    estimate: Option<&BackendEstimate>,
) -> Placement {
    let local = place(v, q, hw, policy, ctx, sequences, estimate);
    if local.ram_bytes + policy.reserve_ram_bytes <= hw.memory.available_bytes {
        return local;
    }
    place_split(v, q, hw, policy, ctx, sequences).unwrap_or(local)
}

/// Plans every variant × quantization for `hw` under `policy`; `present` lists the model files
/// already on disk (they need no download space). The plan also says what more RAM or VRAM
/// would bring ([`Plan::upgrades`], [`Plan::more_memory`]).
pub fn plan(hw: &Hardware, present: &[Present], policy: &Policy) -> Plan {
    plan_serving(hw, present, policy, None)
}

/// [`plan`] made while `serving` (variant id, quantization name) is the resident model: its speed
/// test has hysteresis ([`SPEED_KEEP`], [`SPEED_UPGRADE`]), so a wobble of the measured bandwidth
/// does not swap the model.
pub fn plan_serving(
    hw: &Hardware,
    present: &[Present],
    policy: &Policy,
    serving: Option<(&str, &str)>,
) -> Plan {
    let mut plan = plan_here(hw, present, policy, serving);
    let current = plan.chosen().map(|c| better_key(c, policy));
    let mut upgrades = Vec::new();
    upgrades.extend(upgrade(hw, present, policy, current, Resource::Ram));
    if let Some(gpu) =
        (0..hw.gpus.len()).max_by_key(|&i| (hw.gpus[i].vram_free_bytes, std::cmp::Reverse(i)))
    {
        upgrades.extend(upgrade(
            hw,
            present,
            policy,
            current,
            Resource::Vram { gpu },
        ));
    }
    plan.more_memory = more_memory_text(&plan, &upgrades, policy);
    plan.upgrades = upgrades;
    plan
}

/// How the upgrade search compares choices: reaching the minimum speed first, then the variant,
/// then the quantization. (Where the layers go is not a better *model*: the same file moved
/// entirely onto the GPU is not reported as an upgrade.)
fn better_key(c: &Candidate, policy: &Policy) -> (bool, u32, u32) {
    (
        c.tokens_per_s >= policy.min_tokens_per_s,
        c.variant.quality,
        c.quantization.quality,
    )
}

/// Granularity of the upgrade search (bytes).
const UPGRADE_STEP: u64 = 1 << 20;

/// The most extra memory the upgrade search considers (bytes): 4 TiB, beyond the largest
/// catalog model at F16.
const UPGRADE_LIMIT: u64 = 4 << 40;

/// `hw` with `extra` bytes more of `resource`.
fn grown(hw: &Hardware, resource: Resource, extra: u64) -> Hardware {
    let mut more = hw.clone();
    match resource {
        Resource::Ram => {
            more.memory.available_bytes = more.memory.available_bytes.saturating_add(extra);
            more.memory.total_bytes = more.memory.total_bytes.saturating_add(extra);
        }
        Resource::Vram { gpu } => {
            let g = &mut more.gpus[gpu];
            g.vram_free_bytes = g.vram_free_bytes.saturating_add(extra);
            g.vram_total_bytes = g.vram_total_bytes.saturating_add(extra);
        }
    }
    more
}

/// The least extra `resource` (to a MiB) with which the choice gets better than `current`
/// (`None`: nothing is chosen now), and the candidate chosen then.
fn upgrade(
    hw: &Hardware,
    present: &[Present],
    policy: &Policy,
    current: Option<(bool, u32, u32)>,
    resource: Resource,
) -> Option<Upgrade> {
    let better = |steps: u64| -> Option<Candidate> {
        let p = plan_here(
            &grown(hw, resource, steps * UPGRADE_STEP),
            present,
            policy,
            None,
        );
        p.chosen()
            .filter(|c| current.is_none_or(|k| better_key(c, policy) > k))
            .cloned()
    };
    // Bisection over MiB steps: `better(hi)` holds, `better(lo)` does not.
    let (mut lo, mut hi) = (0u64, UPGRADE_LIMIT / UPGRADE_STEP);
    let mut found = better(hi)?;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match better(mid) {
            Some(c) => {
                hi = mid;
                found = c;
            }
            None => lo = mid,
        }
    }
    found.reason = found.reason.trim_start_matches("chosen — ").to_owned();
    Some(Upgrade {
        resource,
        more_bytes: hi * UPGRADE_STEP,
        candidate: found,
    })
}

/// [`Plan::more_memory`]: the upgrades in words, or why there are none.
fn more_memory_text(plan: &Plan, upgrades: &[Upgrade], policy: &Policy) -> String {
    if !upgrades.is_empty() {
        let parts: Vec<String> = upgrades
            .iter()
            .map(|u| {
                let c = &u.candidate;
                let what = match u.resource {
                    Resource::Ram => "RAM".to_owned(),
                    Resource::Vram { gpu } => format!("free VRAM on GPU {gpu}"),
                };
                format!(
                    "with {} more {what}: {} {} ({}/{} layers on GPU, ≈ {:.1} tokens/s)",
                    amount(u.more_bytes),
                    c.variant.id,
                    c.quantization.name,
                    c.gpu_layers,
                    c.total_layers,
                    c.tokens_per_s
                )
            })
            .collect();
        return parts.join("; ");
    }
    let Some(chosen) = plan.chosen() else {
        return format!(
            "more memory alone would not make anything fit ({})",
            plan.reason
        );
    };
    // The next better variant or quantization the policy allows, and why it is not chosen.
    let allowed = |c: &&Candidate| {
        !c.reason.starts_with("not the pinned variant")
            && (!c.quantization.is_extreme() || policy.allow_extreme_quantization)
            && (c.quantization.format != Format::Onnx || c.present)
    };
    let quality = |c: &Candidate| (c.variant.quality, c.quantization.quality);
    let next = plan
        .candidates
        .iter()
        .filter(allowed)
        .filter(|c| quality(c) > quality(chosen))
        .min_by_key(|c| quality(c));
    match next {
        None => format!(
            "nothing better: {} {} is the best DeepSeek-R1 the policy allows",
            chosen.variant.id, chosen.quantization.name
        ),
        Some(c) => {
            let slow = if c.fits || c.tokens_per_s >= policy.min_tokens_per_s {
                String::new()
            } else {
                format!(
                    ", and it would run at ≈ {:.1} tokens/s here, under the {} tokens/s minimum",
                    c.tokens_per_s, policy.min_tokens_per_s
                )
            };
            format!(
                "more memory would not bring a better choice here: the next better, {} {}, {}{slow}",
                c.variant.id, c.quantization.name, c.reason
            )
        }
    }
}

/// [`plan_serving`] without the upgrade search.
fn plan_here(
    hw: &Hardware,
    present: &[Present],
    policy: &Policy,
    serving: Option<(&str, &str)>,
) -> Plan {
    let reserve = policy.reserve_ram_bytes;
    let available = hw.memory.available_bytes;
    let mut candidates = Vec::new();
    // (ram shortfall, candidate index) of candidates that only failed for memory or disk.
    let mut shortfalls: Vec<(u64, String)> = Vec::new();
    for v in VARIANTS.iter().rev() {
        for q in v.quantizations.iter().rev() {
            let ctx = planned_context(v, policy);
            let file = present.iter().find(|m| {
                m.variant.eq_ignore_ascii_case(v.id) && m.quantization.eq_ignore_ascii_case(q.name)
            });
            let estimate = file.and_then(|m| m.estimate.as_ref());
            let p = place_any(
                v,
                q,
                hw,
                policy,
                ctx,
                policy.sequences.unwrap_or(1),
                estimate,
            );
            let parallel = policy.sequences.unwrap_or_else(|| {
                (2..=DEFAULT_PARALLEL)
                    .rev()
                    .find(|&n| {
                        let more = place_any(v, q, hw, policy, ctx, n, estimate);
                        more.gpu_layers == p.gpu_layers
                            && more.ram_bytes + policy.reserve_ram_bytes
                                <= hw.memory.available_bytes
                    })
                    .unwrap_or(1)
            });
            // The memory figures are what the load holds: every sequence's KV cache (the extra
            // ones were found to fit beside the one-answer placement, which stays the same).
            let p = if policy.sequences.is_none() && parallel > 1 {
                place_any(v, q, hw, policy, ctx, parallel, estimate)
            } else {
                p
            };
            let is_present = file.is_some();
            let pinned_out = policy
                .variant
                .as_deref()
                .is_some_and(|pin| !pin.eq_ignore_ascii_case(v.id));
            let ram_need = p.ram_bytes + reserve;
            let reason_not = if pinned_out {
                Some(format!(
                    "not the pinned variant ({})",
                    policy.variant.as_deref().unwrap_or_default()
                ))
            } else if q.format == Format::Onnx && !is_present {
                Some("an ONNX folder, which r1d cannot pull yet: chosen only when present".into())
            } else if q.is_extreme() && !policy.allow_extreme_quantization {
                Some(format!(
                    "{:.2} bits per weight: extreme quantization is off (planner.allow_extreme_quantization)",
                    q.bits_per_weight
                ))
            } else if ram_need > available {
                let short = ram_need - available;
                let workers = if hw.rpc_workers.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; no split across the {} RPC worker(s) fits either",
                        hw.rpc_workers.len()
                    )
                };
                let text = format!(
                    "needs {} RAM ({} + {} reserve; {}), {} available: {} short{workers}",
                    gb(ram_need),
                    gb(p.ram_bytes),
                    gb(reserve),
                    p.description,
                    gb(available),
                    gb(short)
                );
                shortfalls.push((short, format!("{} {}: {text}", v.id, q.name)));
                Some(text)
            } else if let Some(disk) = hw
                .disk
                .as_ref()
                .filter(|d| !is_present && d.free_bytes < q.file_bytes)
            {
                let text = format!(
                    "the {} download does not fit the {} free on disk: {} short",
                    gb(q.file_bytes),
                    gb(disk.free_bytes),
                    gb(q.file_bytes - disk.free_bytes)
                );
                shortfalls.push((
                    q.file_bytes - disk.free_bytes,
                    format!("{} {}: {text}", v.id, q.name),
                ));
                Some(text)
            } else {
                None
            };
            let fits = reason_not.is_none();
            let fast_enough = p.tokens_per_s >= policy.min_tokens_per_s;
            let reason = reason_not.unwrap_or_else(|| {
                if !fast_enough {
                    format!(
                        "fits ({}), but {:.1} tokens/s is under the {} tokens/s minimum",
                        p.description, p.tokens_per_s, policy.min_tokens_per_s
                    )
                } else {
                    format!("fits: {}, ≈ {:.1} tokens/s", p.description, p.tokens_per_s)
                }
            });
            candidates.push(Candidate {
                variant: v,
                quantization: q,
                backend: q.format.backend(),
                gpu_layers: p.gpu_layers,
                total_layers: v.layers + 1,
                context_length: ctx,
                parallel,
                ram_bytes: p.ram_bytes,
                vram_bytes: p.vram_bytes,
                tokens_per_s: p.tokens_per_s,
                fits,
                reason,
                present: is_present,
                memory_source: p.memory_source,
                fast_enough,
                hosts: p.hosts,
                network_s_per_token: p.network_s_per_token,
            });
        }
    }

    // Variant first; within a variant, running entirely on the GPU beats a higher quantization
    // that spills layers to the CPU (Q5→Q6 changes little, a spill costs a large share of speed).
    let quality = |c: &Candidate| (c.variant.quality, c.all_on_gpu(), c.quantization.quality);
    // While a model is served, its speed test has hysteresis (see SPEED_KEEP): it stays fast
    // enough down to SPEED_KEEP × the minimum, and a candidate the ranking puts above it must
    // reach SPEED_UPGRADE × the minimum. Placements do not depend on the bandwidth, so neither
    // does this ranking.
    let served = serving.and_then(|(v, q)| {
        candidates.iter().position(|c| {
            c.variant.id.eq_ignore_ascii_case(v) && c.quantization.name.eq_ignore_ascii_case(q)
        })
    });
    if let Some(s) = served {
        let served_quality = quality(&candidates[s]);
        let min = policy.min_tokens_per_s;
        for (i, c) in candidates.iter_mut().enumerate() {
            let needed = if i == s {
                min * SPEED_KEEP
            } else if quality(c) > served_quality {
                min * SPEED_UPGRADE
            } else {
                min
            };
            c.fast_enough = c.tokens_per_s >= needed;
            if c.fits && !c.fast_enough && c.tokens_per_s >= min {
                c.reason = format!(
                    "fits, ≈ {:.1} tokens/s, but a better model than the one served must reach \
                     {SPEED_UPGRADE} × the {min} tokens/s minimum to replace it",
                    c.tokens_per_s
                );
            }
        }
    }
    let fast_enough = |c: &&Candidate| c.fast_enough;
    let best = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.fits && fast_enough(c))
        .max_by_key(|(_, c)| quality(c))
        .map(|(i, _)| i);
    let (chosen, reason) = if let Some(i) = best {
        let c = &candidates[i];
        (
            Some(i),
            format!(
                "{} {}: the highest quality that fits and reaches {} tokens/s",
                c.variant.id, c.quantization.name, policy.min_tokens_per_s
            ),
        )
    } else if let Some(i) = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.fits)
        .max_by(|(_, a), (_, b)| {
            a.tokens_per_s
                .total_cmp(&b.tokens_per_s)
                .then_with(|| quality(a).cmp(&quality(b)))
        })
        .map(|(i, _)| i)
    {
        let c = &candidates[i];
        (
            Some(i),
            format!(
                "nothing reaches {} tokens/s here; {} {} is the fastest that fits (≈ {:.1} tokens/s)",
                policy.min_tokens_per_s, c.variant.id, c.quantization.name, c.tokens_per_s
            ),
        )
    } else {
        let closest = shortfalls
            .iter()
            .min_by_key(|(short, _)| *short)
            .map(|(_, text)| text.clone());
        (
            None,
            match closest {
                Some(text) => format!("nothing fits; the closest is {text}"),
                None => "nothing fits the policy".to_owned(),
            },
        )
    };
    if let Some(i) = chosen {
        let c = &mut candidates[i];
        c.reason = format!("chosen — {}", c.reason);
    }
    Plan {
        chosen,
        candidates,
        reason,
        upgrades: Vec::new(),
        more_memory: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::{Cpu, Disk, Gpu, GpuVendor, Memory};

    const GIB: u64 = 1 << 30;
    const GB: u64 = 1_000_000_000;

    fn gpu(vram_gib: u64, free_gib: f64, bandwidth_gb_s: u64) -> Gpu {
        Gpu {
            vendor: GpuVendor::Nvidia,
            name: format!("{vram_gib} GiB GPU"),
            vram_total_bytes: vram_gib * GIB,
            vram_free_bytes: (free_gib * GIB as f64) as u64,
            bandwidth_bytes_per_s: Some(bandwidth_gb_s * GB),
            compute_capability: Some("8.9".into()),
            driver: None,
        }
    }

    /// A profile as the published table states it: cores, RAM (GiB, of which ~90 % available),
    /// GPUs, and the CPU's bandwidth (GB/s).
    fn machine(cores: u32, ram_gib: u64, cpu_bw_gb_s: u64, gpus: Vec<Gpu>) -> Hardware {
        Hardware {
            cpu: Cpu {
                model: Some("Test CPU".into()),
                cores,
                threads: cores * 2,
                features: vec!["avx2".into()],
            },
            memory: Memory {
                total_bytes: ram_gib * GIB,
                available_bytes: ram_gib * GIB * 9 / 10,
                cgroup_limit_bytes: None,
                split: None,
                bandwidth_bytes_per_s: Some(cpu_bw_gb_s * GB),
                bandwidth_spread: None,
            },
            disk: Some(Disk {
                path: "/var/lib/r1d/models".into(),
                free_bytes: 2000 * GB,
            }),
            gpus,
            vulkan: Vec::new(),
            rpc_workers: Vec::new(),
        }
    }

    fn chosen(hw: &Hardware) -> (&'static str, &'static str, u32, u32) {
        let plan = plan(hw, &[], &Policy::default());
        let c = plan
            .chosen()
            .unwrap_or_else(|| panic!("no choice: {}", plan.reason));
        (
            c.variant.id,
            c.quantization.name,
            c.gpu_layers,
            c.total_layers,
        )
    }

    /// The published rule-of-thumb rows: each profile gets the variant the table names.
    #[test]
    fn published_requirement_rows_choose_the_published_variant() {
        struct Row {
            what: &'static str,
            hw: Hardware,
            variants: &'static [&'static str],
            entirely_on_gpu: bool,
        }
        let rows = [
            Row {
                what: "4 cores / 8 GB / no GPU",
                hw: machine(4, 8, 25, vec![]),
                variants: &["deepseek-r1:1.5b"],
                entirely_on_gpu: false,
            },
            Row {
                what: "8 cores / 16 GB / 8 GB GPU (RTX 4060 class)",
                hw: machine(8, 16, 40, vec![gpu(8, 7.5, 272)]),
                variants: &["deepseek-r1:7b", "deepseek-r1:8b", "deepseek-r1-0528:8b"],
                entirely_on_gpu: true,
            },
            Row {
                what: "12 cores / 32 GB / 16 GB GPU (RTX 4060 Ti 16 GB class)",
                hw: machine(12, 32, 50, vec![gpu(16, 15.5, 288)]),
                variants: &["deepseek-r1:14b"],
                entirely_on_gpu: true,
            },
            Row {
                what: "16 cores / 64 GB / 24 GB GPU (RTX 3090 class)",
                hw: machine(16, 64, 60, vec![gpu(24, 23.5, 936)]),
                variants: &["deepseek-r1:32b"],
                entirely_on_gpu: true,
            },
            Row {
                what: "32 cores / 128 GB / 2 × 80 GB (A100 80GB class)",
                hw: machine(32, 128, 150, vec![gpu(80, 79.0, 2039), gpu(80, 79.0, 2039)]),
                variants: &["deepseek-r1:70b"],
                entirely_on_gpu: true,
            },
            Row {
                what: "64 cores / 512 GB / 8 × 80 GB (H100 SXM class)",
                hw: machine(64, 512, 300, (0..8).map(|_| gpu(80, 79.0, 3350)).collect()),
                variants: &["deepseek-r1:671b", "deepseek-r1-0528:671b"],
                entirely_on_gpu: false,
            },
        ];
        for row in &rows {
            let (variant, quant, gpu_layers, total) = chosen(&row.hw);
            assert!(
                row.variants.contains(&variant),
                "{}: chose {variant} {quant}, expected one of {:?}",
                row.what,
                row.variants
            );
            if row.entirely_on_gpu {
                assert_eq!(
                    gpu_layers, total,
                    "{}: {variant} {quant} not all on the GPU",
                    row.what
                );
            }
        }
    }

    #[test]
    fn parallel_answers_are_planned_for_and_never_cost_the_choice() {
        // A roomy CPU machine: the choice is unchanged and four answers fit beside it.
        let roomy = machine(16, 64, 60, vec![]);
        let one = plan(&roomy, &[], &Policy::default());
        let c = one.chosen().unwrap();
        assert_eq!(c.parallel, DEFAULT_PARALLEL);
        // `[server] parallel = 8` is planned for: the RAM figure holds 8 contexts of KV cache.
        let eight = plan(
            &roomy,
            &[],
            &Policy {
                sequences: Some(8),
                ..Policy::default()
            },
        );
        let same = eight
            .candidates
            .iter()
            .find(|x| x.variant.id == c.variant.id && x.quantization.name == c.quantization.name)
            .unwrap();
        assert_eq!(same.parallel, 8);
        let kv = |n: u32| c.variant.footprint(c.quantization, 8192 * n).layer_kv;
        // The automatic four are in the RAM figure too: it is what the load allocates.
        assert_eq!(
            same.ram_bytes - c.ram_bytes,
            u64::from(c.variant.layers) * (kv(8) - kv(DEFAULT_PARALLEL))
        );
        let one_answer = c.ram_bytes - u64::from(c.variant.layers) * (kv(DEFAULT_PARALLEL) - kv(1));
        // A machine where the chosen model just fits: one answer at a time, same choice.
        let tight_ram = one_answer + Policy::default().reserve_ram_bytes + (64 << 20);
        let mut tight = machine(16, 64, 60, vec![]);
        tight.memory.available_bytes = tight_ram;
        let t = plan(&tight, &[], &Policy::default());
        let tc = t.chosen().unwrap();
        assert_eq!(
            (tc.variant.id, tc.quantization.name),
            (c.variant.id, c.quantization.name)
        );
        assert_eq!(tc.parallel, 1);
    }

    #[test]
    fn the_gpu_speed_model_reproduces_llama_cpp_on_an_h200() {
        // scripts/gpu-check on an H200 (NVML: 150.8 GB, 4.81 TB/s peak), llama-bench tg128 with
        // every layer offloaded: 70B Q6_K 27.9 tokens/s, 7B Q4_K_M 250.5 tokens/s. The two
        // constants were fitted to these two; each estimate must stay within 3 % of them.
        let mut h200 = gpu(140, 139.8, 4810);
        h200.vram_total_bytes = 150_800_000_000;
        let hw = machine(16, 128, 100, vec![h200]);
        let plan = plan(&hw, &[], &Policy::default());
        for (variant, quant, measured) in [
            ("deepseek-r1:70b", "Q6_K", 27.9),
            ("deepseek-r1:7b", "Q4_K_M", 250.5),
        ] {
            let c = plan
                .candidates
                .iter()
                .find(|c| c.variant.id == variant && c.quantization.name == quant)
                .unwrap();
            assert_eq!(
                c.gpu_layers, c.total_layers,
                "{variant} {quant}: {}",
                c.reason
            );
            let off = (c.tokens_per_s - measured).abs() / measured;
            assert!(
                off < 0.03,
                "{variant} {quant}: {} tokens/s planned, {measured} measured",
                c.tokens_per_s
            );
        }
        // The same bandwidth share as before below the cap: a 272 GB/s GPU reads at 0.7 × peak.
        assert_eq!(gpu_effective_bandwidth(272e9), 272e9 * GPU_EFFICIENCY);
        assert_eq!(
            gpu_effective_bandwidth(4.81e12),
            GPU_EFFECTIVE_BANDWIDTH_CAP
        );
    }

    #[test]
    fn rtx_4060_row_runs_the_qwen3_8b_at_q5_entirely_on_the_gpu() {
        let hw = machine(8, 16, 40, vec![gpu(8, 7.5, 272)]);
        let plan = plan(&hw, &[], &Policy::default());
        let c = plan.chosen().unwrap();
        assert_eq!(
            (c.variant.id, c.quantization.name),
            ("deepseek-r1-0528:8b", "Q5_K_M")
        );
        assert_eq!((c.gpu_layers, c.total_layers), (37, 37));
        // 5.85 GB weights + 36 × 8192 × 2 × 8 × 128 × 2 B KV + compute + runtime.
        let kv = 36 * 8192 * 2 * 8 * 128 * 2;
        let compute = 512 * 4 * (151_936 + 16 * 4096);
        let expected = 5_850_000_000 - c.variant.footprint(c.quantization, 8192).token_embedding
            + kv
            + compute
            + GPU_RUNTIME_OVERHEAD;
        assert!(
            c.vram_bytes[0].abs_diff(expected) < 64,
            "{} vs {expected}",
            c.vram_bytes[0]
        );
        assert!(
            c.tokens_per_s > 25.0 && c.tokens_per_s < 45.0,
            "{}",
            c.tokens_per_s
        );
    }

    #[test]
    fn cgroup_limit_smaller_than_the_host_is_what_counts() {
        // 64 GiB host, no GPU, but the service may use 4 GiB.
        let mut hw = machine(16, 64, 60, vec![]);
        let host = plan(&hw, &[], &Policy::default());
        hw.memory.total_bytes = 4 * GIB;
        hw.memory.available_bytes = 4 * GIB;
        hw.memory.cgroup_limit_bytes = Some(4 * GIB);
        let limited = plan(&hw, &[], &Policy::default());
        let (h, l) = (host.chosen().unwrap(), limited.chosen().unwrap());
        assert!(
            h.variant.quality > l.variant.quality,
            "{} vs {}",
            h.variant.id,
            l.variant.id
        );
        assert_eq!(l.variant.id, "deepseek-r1:1.5b");
        assert!(l.ram_bytes + Policy::default().reserve_ram_bytes <= 4 * GIB);
    }

    #[test]
    fn vram_held_by_other_processes_is_not_counted_as_free() {
        // A 24 GiB card of which other processes hold 20 GiB: the 32B must not be planned onto it.
        let busy = machine(16, 64, 60, vec![gpu(24, 4.0, 936)]);
        let plan = plan(&busy, &[], &Policy::default());
        let c = plan.chosen().unwrap();
        assert!(c.vram_bytes[0] <= 4 * GIB, "{}", c.vram_bytes[0]);
        for c in plan.candidates.iter().filter(|c| c.fits) {
            assert!(
                c.vram_bytes[0] <= 4 * GIB,
                "{} {}",
                c.variant.id,
                c.quantization.name
            );
        }
        let idle = machine(16, 64, 60, vec![gpu(24, 23.5, 936)]);
        let idle_choice = super::plan(&idle, &[], &Policy::default());
        assert_eq!(idle_choice.chosen().unwrap().variant.id, "deepseek-r1:32b");
        assert_ne!(c.variant.id, "deepseek-r1:32b");
    }

    /// llama.cpp's CPU backend repacks Q4_K weights for its AVX2 and i8mm kernels into a second,
    /// anonymous copy (measured: the 7B Q4_K_M held 3.7 GB anonymous + 4.6 GB mapped after one
    /// answer): a CPU-resident Q4_K_M block costs its weights and 80 % of them again there, a
    /// block on a GPU or on a CPU without those kernels does not, and other quantizations never.
    #[test]
    fn q4_k_m_blocks_on_a_repacking_cpu_are_counted_twice_over() {
        let v = crate::catalog::variant("deepseek-r1:7b").unwrap();
        let q4 = v.quantizations.iter().find(|q| q.name == "Q4_K_M").unwrap();
        let q8 = v.quantizations.iter().find(|q| q.name == "Q8_0").unwrap();
        let f = v.footprint(q4, 8192);
        let share = f.layer_repack as f64 / f.layer_weights as f64;
        assert!((share - 0.80).abs() < 0.001, "{share}");
        assert_eq!(v.footprint(q8, 8192).layer_repack, 0);

        let policy = Policy::default();
        let avx2 = machine(8, 32, 40, vec![]);
        let mut plain = avx2.clone();
        plain.cpu.features.clear();
        let ram =
            |hw: &Hardware, q: &str| find(&plan(hw, &[], &policy), "deepseek-r1:7b", q).ram_bytes;
        assert_eq!(
            ram(&avx2, "Q4_K_M") - ram(&plain, "Q4_K_M"),
            v.layers as u64 * f.layer_repack
        );
        assert_eq!(ram(&avx2, "Q8_0"), ram(&plain, "Q8_0"));
        // Without the repacking kernels the smallest file is again the closest fit.
        let tiny = {
            let mut hw = machine(1, 1, 10, vec![]);
            hw.cpu.features.clear();
            hw
        };
        assert!(plan(&tiny, &[], &policy)
            .reason
            .starts_with("nothing fits; the closest is deepseek-r1:1.5b Q4_K_M"));
        // All layers on a GPU: nothing is repacked.
        let gpu_box = machine(8, 32, 40, vec![gpu(24, 23.5, 936)]);
        let on_gpu = find(&plan(&gpu_box, &[], &policy), "deepseek-r1:7b", "Q4_K_M").clone();
        let mut gpu_plain = gpu_box.clone();
        gpu_plain.cpu.features.clear();
        assert_eq!(
            on_gpu.ram_bytes,
            find(&plan(&gpu_plain, &[], &policy), "deepseek-r1:7b", "Q4_K_M").ram_bytes
        );
    }

    #[test]
    fn too_small_machine_gets_no_choice_and_a_reason_with_the_shortfall() {
        let hw = machine(1, 1, 10, vec![]);
        let plan = plan(&hw, &[], &Policy::default());
        assert_eq!(plan.chosen, None);
        assert!(plan.candidates.iter().all(|c| !c.fits));
        // The closest is the one that needs the least RAM: on this AVX2 CPU llama.cpp keeps a
        // repacked copy of Q4_K_M's Q4_K weights beside the mapped file, so the 1.5B's Q5_K_M
        // (not repacked) needs less than its Q4_K_M.
        assert!(
            plan.reason
                .starts_with("nothing fits; the closest is deepseek-r1:1.5b Q5_K_M"),
            "{}",
            plan.reason
        );
        assert!(plan.reason.contains("short"), "{}", plan.reason);
    }

    #[test]
    fn slow_machine_gets_the_fastest_fitting_candidate() {
        let hw = machine(2, 24, 5, vec![]);
        let plan = plan(&hw, &[], &Policy::default());
        let c = plan.chosen().unwrap();
        assert_eq!(
            (c.variant.id, c.quantization.name),
            ("deepseek-r1:1.5b", "Q4_K_M")
        );
        assert!(
            plan.reason.starts_with("nothing reaches 10 tokens/s"),
            "{}",
            plan.reason
        );
    }

    #[test]
    fn pinned_variant_and_extreme_quantization_follow_the_policy() {
        let hw = machine(64, 192, 300, vec![gpu(80, 79.0, 3350), gpu(80, 79.0, 3350)]);
        let pinned = Policy {
            variant: Some("deepseek-r1:14b".into()),
            ..Policy::default()
        };
        assert_eq!(
            plan(&hw, &[], &pinned).chosen().unwrap().variant.id,
            "deepseek-r1:14b"
        );
        // 160 GiB VRAM + 192 GiB RAM: no 4-bit 671B fits, the 1.58-bit one does once allowed.
        let default = plan(&hw, &[], &Policy::default());
        assert_eq!(default.chosen().unwrap().variant.id, "deepseek-r1:70b");
        let extreme = Policy {
            allow_extreme_quantization: true,
            ..Policy::default()
        };
        let c = plan(&hw, &[], &extreme);
        assert_eq!(
            c.chosen().unwrap().variant.id,
            "deepseek-r1:671b",
            "{}",
            c.reason
        );
    }

    #[test]
    fn no_partial_offload_keeps_a_model_that_does_not_fit_the_gpu_on_the_cpu() {
        let hw = machine(16, 64, 60, vec![gpu(8, 7.5, 272)]);
        let policy = Policy {
            allow_partial_offload: false,
            ..Policy::default()
        };
        for c in plan(&hw, &[], &policy).candidates {
            assert!(
                c.gpu_layers == 0 || c.gpu_layers == c.total_layers,
                "{}",
                c.reason
            );
        }
    }

    #[test]
    fn a_present_model_needs_no_disk() {
        let mut hw = machine(8, 16, 40, vec![gpu(8, 7.5, 272)]);
        hw.disk.as_mut().unwrap().free_bytes = 0;
        assert_eq!(plan(&hw, &[], &Policy::default()).chosen, None);
        let present = [Present {
            variant: "deepseek-r1:7b".into(),
            quantization: "Q4_K_M".into(),
            estimate: None,
        }];
        let p = plan(&hw, &present, &Policy::default());
        let c = p.chosen().unwrap();
        assert_eq!(
            (c.variant.id, c.quantization.name, c.present),
            ("deepseek-r1:7b", "Q4_K_M", true)
        );
    }

    fn estimate(gb: f64) -> BackendEstimate {
        BackendEstimate {
            context_length: 8192,
            weights_mapped_bytes: (gb * 0.6 * GB as f64) as u64,
            weights_copied_bytes: (gb * 0.3 * GB as f64) as u64,
            kv_cache_bytes: (gb * 0.05 * GB as f64) as u64,
            compute_bytes: (gb * 0.05 * GB as f64) as u64,
            source: "test: dry run".into(),
        }
    }

    fn candidate<'p>(p: &'p Plan, variant: &str, quantization: &str) -> &'p Candidate {
        p.candidates
            .iter()
            .find(|c| c.variant.id == variant && c.quantization.name == quantization)
            .unwrap()
    }

    /// A present file's backend estimate replaces the formula's RAM on a CPU-only placement,
    /// says so, and keeps the formula's figure beside it; files that are not present keep the
    /// formula.
    #[test]
    fn a_present_files_estimate_replaces_the_formula_on_the_cpu() {
        let hw = machine(8, 32, 40, vec![]);
        let e = estimate(7.0);
        let present = [Present {
            variant: "deepseek-r1:7b".into(),
            quantization: "Q4_K_M".into(),
            estimate: Some(e.clone()),
        }];
        let policy = Policy {
            sequences: Some(1),
            ..Policy::default()
        };
        let p = plan(&hw, &present, &policy);
        let c = candidate(&p, "deepseek-r1:7b", "Q4_K_M");
        assert_eq!(c.ram_bytes, e.ram_bytes(1) + HOST_OVERHEAD);
        let formula = plan(&hw, &[], &policy);
        let f = candidate(&formula, "deepseek-r1:7b", "Q4_K_M");
        assert_eq!(
            c.memory_source,
            MemorySource::Backend {
                source: "test: dry run".into(),
                formula_ram_bytes: f.ram_bytes
            }
        );
        assert_eq!(f.memory_source, MemorySource::Formula);
        let other = candidate(&p, "deepseek-r1:7b", "Q8_0");
        assert_eq!(other.memory_source, MemorySource::Formula);

        // Two sequences: the estimate's KV cache twice.
        let two = plan(
            &hw,
            &present,
            &Policy {
                sequences: Some(2),
                ..Policy::default()
            },
        );
        let c2 = candidate(&two, "deepseek-r1:7b", "Q4_K_M");
        assert_eq!(c2.ram_bytes, c.ram_bytes + e.kv_cache_bytes);
    }

    /// An estimate larger than the RAM available rejects the file, naming the shortfall, even
    /// where the formula would have let it fit.
    #[test]
    fn an_estimate_that_does_not_fit_is_refused_before_loading() {
        let hw = machine(8, 16, 40, vec![]);
        let present = [Present {
            variant: "deepseek-r1:7b".into(),
            quantization: "Q4_K_M".into(),
            estimate: Some(estimate(40.0)),
        }];
        let p = plan(&hw, &present, &Policy::default());
        let c = candidate(&p, "deepseek-r1:7b", "Q4_K_M");
        assert!(!c.fits);
        assert!(c.reason.contains("short"), "{}", c.reason);
        assert!(plan(&hw, &[], &Policy::default())
            .candidates
            .iter()
            .any(|c| c.variant.id == "deepseek-r1:7b"
                && c.quantization.name == "Q4_K_M"
                && c.fits));
    }

    /// The estimate is of a CPU-only load: a placement with layers on a GPU keeps the formula.
    #[test]
    fn an_offloaded_placement_keeps_the_formula() {
        let hw = machine(8, 16, 40, vec![gpu(24, 23.5, 900)]);
        let present = [Present {
            variant: "deepseek-r1:7b".into(),
            quantization: "Q4_K_M".into(),
            estimate: Some(estimate(7.0)),
        }];
        let p = plan(&hw, &present, &Policy::default());
        let c = candidate(&p, "deepseek-r1:7b", "Q4_K_M");
        assert!(c.gpu_layers > 0);
        assert_eq!(c.memory_source, MemorySource::Formula);
    }

    fn choice_at(bandwidth: u64, serving: Option<(&str, &str)>) -> (&'static str, &'static str) {
        // A laptop-class machine where the 1.5B is the variant that reaches 10 tokens/s and its
        // quantization depends on the bandwidth.
        let mut hw = machine(4, 16, 0, vec![]);
        hw.memory.bandwidth_bytes_per_s = Some(bandwidth);
        let p = plan_serving(&hw, &[], &Policy::default(), serving);
        let c = p.chosen().expect("something fits 16 GiB");
        (c.variant.id, c.quantization.name)
    }

    /// Property: for every bandwidth from 10 to 80 GB/s (0.25 GB/s steps), re-planning while the
    /// first plan's choice is served, at 90 % to 110 % of that bandwidth (the wobble of the
    /// probe), keeps the choice. Without the hysteresis the same wobble flips it (checked too, so
    /// the property is not vacuous).
    #[test]
    fn a_ten_percent_bandwidth_wobble_does_not_flip_the_choice() {
        let mut flips_without = 0;
        for step in 0..=280u64 {
            let b0 = 10 * GB + step * GB / 4;
            let first = choice_at(b0, None);
            for f in [0.90, 0.93, 0.97, 1.03, 1.07, 1.10] {
                let b = (b0 as f64 * f) as u64;
                assert_eq!(
                    choice_at(b, Some(first)),
                    first,
                    "chosen at {:.2} GB/s, flipped at {:.2} GB/s",
                    b0 as f64 / 1e9,
                    b as f64 / 1e9
                );
                if choice_at(b, None) != first {
                    flips_without += 1;
                }
            }
        }
        assert!(flips_without > 0, "the grid never crosses a threshold");
    }

    /// Hysteresis does not pin a model forever: a clearly faster machine (or a clearly slower
    /// one) still changes the choice.
    #[test]
    fn hysteresis_still_follows_a_large_change() {
        let slow = choice_at(12 * GB, None);
        let fast = choice_at(100 * GB, None);
        assert_ne!(slow, fast);
        assert_eq!(choice_at(100 * GB, Some(slow)), fast);
        assert_eq!(choice_at(12 * GB, Some(fast)), slow);
        // Inside the band a better model waits: at 60 GB/s a first plan takes the 7B (≈ 10.5
        // tokens/s, just over the minimum), but not while the 1.5B is served.
        assert_eq!(choice_at(60 * GB, None).0, "deepseek-r1:7b");
        assert_eq!(choice_at(60 * GB, Some(slow)).0, "deepseek-r1:1.5b");
    }

    #[test]
    fn same_inputs_same_plan() {
        let hw = machine(12, 32, 50, vec![gpu(16, 15.5, 288)]);
        assert_eq!(
            plan(&hw, &[], &Policy::default()),
            plan(&hw, &[], &Policy::default())
        );
    }

    const MIB: u64 = 1 << 20;

    /// The candidate of `plan` for `variant` × `quantization`.
    fn find<'a>(plan: &'a Plan, variant: &str, quantization: &str) -> &'a Candidate {
        plan.candidates
            .iter()
            .find(|c| c.variant.id == variant && c.quantization.name == quantization)
            .unwrap_or_else(|| panic!("no candidate {variant} {quantization}"))
    }

    #[test]
    fn too_small_machine_is_told_the_ram_that_makes_the_smallest_variant_fit() {
        let hw = machine(1, 1, 10, vec![]);
        let policy = Policy::default();
        let p = plan(&hw, &[], &policy);
        assert_eq!(p.chosen, None);
        let [u] = p.upgrades.as_slice() else {
            panic!("{:?}", p.upgrades)
        };
        assert_eq!(u.resource, Resource::Ram);
        assert_eq!(
            (u.candidate.variant.id, u.candidate.quantization.name),
            ("deepseek-r1:1.5b", "Q5_K_M")
        );
        // On the CPU, where the layers go does not depend on the RAM: the shortfall of this plan's
        // own candidate, rounded up to a MiB, is what is missing.
        let here = find(&p, "deepseek-r1:1.5b", "Q5_K_M");
        let short = here.ram_bytes + policy.reserve_ram_bytes - hw.memory.available_bytes;
        assert_eq!(u.more_bytes, short.div_ceil(MIB) * MIB);
        assert_eq!(
            p.more_memory,
            format!(
                "with {} more RAM: deepseek-r1:1.5b Q5_K_M (0/29 layers on GPU, ≈ {:.1} tokens/s)",
                amount(u.more_bytes),
                here.tokens_per_s
            )
        );
    }

    #[test]
    fn cpu_only_machine_is_told_the_ram_the_next_better_choice_needs() {
        // Bandwidth enough for every variant on the CPU: only RAM decides.
        let hw = machine(16, 8, 400, vec![]);
        let policy = Policy::default();
        let p = plan(&hw, &[], &policy);
        let chosen = p.chosen().unwrap();
        let [u] = p.upgrades.as_slice() else {
            panic!("{:?}", p.upgrades)
        };
        assert_eq!(u.resource, Resource::Ram);
        // The upgrade is the candidate, better than the choice, that needs the least RAM more.
        let key = |c: &Candidate| (c.variant.quality, c.quantization.quality);
        let need = |c: &Candidate| {
            (c.ram_bytes + policy.reserve_ram_bytes).saturating_sub(hw.memory.available_bytes)
        };
        let least = p
            .candidates
            .iter()
            .filter(|c| key(c) > key(chosen) && c.tokens_per_s >= policy.min_tokens_per_s)
            .map(need)
            .min()
            .unwrap();
        assert_eq!(u.more_bytes, least.div_ceil(MIB) * MIB);
        let best_then = p
            .candidates
            .iter()
            .filter(|c| key(c) > key(chosen) && need(c) <= u.more_bytes)
            .max_by_key(|c| key(c))
            .unwrap();
        assert_eq!(
            (u.candidate.variant.id, u.candidate.quantization.name),
            (best_then.variant.id, best_then.quantization.name)
        );
        assert!(key(&u.candidate) > key(chosen));
    }

    #[test]
    fn rtx_4060_row_is_told_the_vram_that_brings_the_next_quantization() {
        let hw = machine(8, 16, 40, vec![gpu(8, 7.5, 272)]);
        let p = plan(&hw, &[], &Policy::default());
        assert_eq!(
            p.chosen().map(|c| (c.variant.id, c.quantization.name)),
            Some(("deepseek-r1-0528:8b", "Q5_K_M"))
        );
        // More RAM does not help (what spills to the CPU is too slow); more VRAM does.
        let [u] = p.upgrades.as_slice() else {
            panic!("{:?}", p.upgrades)
        };
        assert_eq!(u.resource, Resource::Vram { gpu: 0 });
        let c = &u.candidate;
        assert_eq!(
            (
                c.variant.id,
                c.quantization.name,
                c.gpu_layers,
                c.total_layers
            ),
            ("deepseek-r1-0528:8b", "Q6_K", 37, 37)
        );
        // Everything on the GPU: all blocks, their KV cache, the output head, the compute buffer
        // and the runtime; minus the free VRAM there is, rounded up to a MiB.
        let f = c.variant.footprint(c.quantization, 8192);
        let need = c.variant.layers as u64 * (f.layer_weights + f.layer_kv)
            + f.output
            + f.compute
            + GPU_RUNTIME_OVERHEAD;
        let free = hw.gpus[0].vram_free_bytes;
        assert_eq!(u.more_bytes, (need - free).div_ceil(MIB) * MIB);
        assert_eq!(c.vram_bytes, vec![need]);
        assert!(p.more_memory.starts_with(&format!(
            "with {} more free VRAM on GPU 0: deepseek-r1-0528:8b Q6_K (37/37 layers on GPU",
            amount(u.more_bytes)
        )));
    }

    #[test]
    fn slow_cpu_is_told_that_more_memory_would_not_bring_a_better_choice() {
        let hw = machine(2, 24, 5, vec![]);
        let p = plan(&hw, &[], &Policy::default());
        assert!(p.upgrades.is_empty(), "{:?}", p.upgrades);
        let next = find(&p, "deepseek-r1:1.5b", "Q5_K_M");
        assert_eq!(
            p.more_memory,
            format!(
                "more memory would not bring a better choice here: the next better, deepseek-r1:1.5b Q5_K_M, {}",
                next.reason
            )
        );
        assert!(next.reason.contains("under the 10 tokens/s minimum"));
    }

    #[test]
    fn best_allowed_choice_is_told_there_is_nothing_better() {
        let hw = machine(16, 64, 60, vec![gpu(24, 23.5, 936)]);
        let policy = Policy {
            variant: Some("deepseek-r1:1.5b".into()),
            ..Policy::default()
        };
        let p = plan(&hw, &[], &policy);
        assert_eq!(p.chosen().unwrap().quantization.name, "F16");
        assert!(p.upgrades.is_empty());
        assert_eq!(
            p.more_memory,
            "nothing better: deepseek-r1:1.5b F16 is the best DeepSeek-R1 the policy allows"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn hardware() -> impl Strategy<Value = Hardware> {
            (
                1u32..128,
                1u64..1024,
                1u64..400,
                prop::collection::vec((4u64..192, 0.0f64..1.0, 100u64..4000), 0..9),
            )
                .prop_map(|(cores, ram, bw, gpus)| {
                    let gpus = gpus
                        .into_iter()
                        .map(|(vram, free, bw)| gpu(vram, vram as f64 * free, bw))
                        .collect();
                    machine(cores, ram, bw, gpus)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// The wobble property on any machine (GPUs included): re-planning while the first
            /// plan's choice is served, with every bandwidth (CPU and GPUs) at 90–110 %, keeps it.
            #[test]
            fn a_bandwidth_wobble_never_swaps_the_served_model(
                hw in hardware(), f in 0.9f64..=1.1
            ) {
                let policy = Policy::default();
                let first = plan(&hw, &[], &policy);
                if let Some(c) = first.chosen() {
                    let mut wobbled = hw.clone();
                    let scale = |b: u64| (b as f64 * f) as u64;
                    wobbled.memory.bandwidth_bytes_per_s =
                        wobbled.memory.bandwidth_bytes_per_s.map(scale);
                    for g in &mut wobbled.gpus {
                        g.bandwidth_bytes_per_s = g.bandwidth_bytes_per_s.map(scale);
                    }
                    let again = plan_serving(
                        &wobbled, &[], &policy, Some((c.variant.id, c.quantization.name)));
                    let a = again.chosen().expect("the served model still fits");
                    prop_assert_eq!(
                        (a.variant.id, a.quantization.name),
                        (c.variant.id, c.quantization.name),
                        "at {}× the bandwidth", f
                    );
                }
            }

            #[test]
            fn more_memory_never_yields_a_smaller_variant(hw in hardware(), extra in 1u64..512) {
                let before = plan(&hw, &[], &Policy::default());
                let mut more = hw.clone();
                more.memory.total_bytes += extra * GIB;
                more.memory.available_bytes += extra * GIB;
                let after = plan(&more, &[], &Policy::default());
                if let Some(b) = before.chosen() {
                    let a = after.chosen().expect("a choice survives more memory");
                    prop_assert!(a.variant.quality >= b.variant.quality,
                        "{} → {} with {} GiB more", b.variant.id, a.variant.id, extra);
                }
            }

            #[test]
            fn each_upgrade_is_what_the_planner_chooses_with_that_much_more_and_not_less(
                hw in hardware()
            ) {
                let policy = Policy::default();
                let p = plan(&hw, &[], &policy);
                let now = p.chosen().map(|c| better_key(c, &policy));
                for u in &p.upgrades {
                    let then = plan_here(&grown(&hw, u.resource, u.more_bytes), &[], &policy, None);
                    let c = then.chosen().expect("a choice with more memory");
                    prop_assert_eq!(
                        (c.variant.id, c.quantization.name, c.gpu_layers),
                        (u.candidate.variant.id, u.candidate.quantization.name, u.candidate.gpu_layers)
                    );
                    prop_assert!(now.is_none_or(|k| better_key(c, &policy) > k));
                    let less = plan_here(&grown(&hw, u.resource, u.more_bytes - MIB), &[], &policy, None);
                    let not_better = match (less.chosen(), now) {
                        (None, _) => true,
                        (Some(c), Some(k)) => better_key(c, &policy) <= k,
                        (Some(_), None) => false,
                    };
                    prop_assert!(not_better, "{:?}: a MiB less already changes the choice", u.resource);
                }
            }

            #[test]
            fn every_chosen_candidate_fits_in_free_memory(hw in hardware()) {
                let policy = Policy::default();
                let p = plan(&hw, &[], &policy);
                if let Some(c) = p.chosen() {
                    prop_assert!(c.fits);
                    prop_assert!(c.ram_bytes + policy.reserve_ram_bytes <= hw.memory.available_bytes);
                    for (need, g) in c.vram_bytes.iter().zip(&hw.gpus) {
                        prop_assert!(*need <= g.vram_free_bytes, "{} > {}", need, g.vram_free_bytes);
                    }
                }
            }
        }
    }

    fn worker(endpoint: &str, free: u64) -> crate::hardware::RpcHost {
        crate::hardware::RpcHost {
            endpoint: endpoint.into(),
            devices_free_bytes: vec![free],
            bandwidth_bytes_per_s: None,
            link: crate::hardware::Link::default(),
        }
    }

    /// A 24 GB host, no GPU, and two workers with 32 GB each.
    fn host_and_two_workers() -> Hardware {
        let mut hw = machine(8, 24, 50, Vec::new());
        hw.memory.total_bytes = 24 * GB;
        hw.memory.available_bytes = 22 * GB;
        hw.rpc_workers = vec![
            worker("10.0.0.2:50052", 32 * GB),
            worker("10.0.0.3:50052", 32 * GB),
        ];
        hw
    }

    fn seventy_b() -> Policy {
        Policy {
            variant: Some("deepseek-r1:70b".into()),
            min_tokens_per_s: 0.0,
            ..Policy::default()
        }
    }

    #[test]
    fn llama_cpps_split_by_free_memory_is_reproduced() {
        // Two equal devices, 21 offloaded layers (20 blocks and the output head): 11 and 10,
        // the output head on the last.
        let d = split_layers(30, 21, &[8 * GB, 8 * GB]);
        assert_eq!(d.len(), 21);
        assert_eq!(d.iter().filter(|&&x| x == 0).count(), 11);
        assert_eq!(*d.last().unwrap(), 1);
        // In proportion to free memory, in order, and never more than the layers there are.
        let d = split_layers(80, 200, &[3 * GB, GB]);
        assert_eq!(d.len(), 81);
        assert_eq!(d.iter().filter(|&&x| x == 0).count(), 61);
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert!(split_layers(10, 5, &[]).is_empty());
    }

    #[test]
    fn a_loads_layers_per_worker_follow_llama_cpps_split() {
        let workers = [worker("a:1", 8 * GB), worker("b:2", 8 * GB)];
        // SmolLM2: 30 blocks, 20 offloaded: 10 and 10 (the second with the output head).
        assert_eq!(
            worker_layers(30, Some(20), &workers, &[]),
            [("a:1".to_owned(), 10), ("b:2".to_owned(), 10)]
        );
        // All (the default with a worker): 31 layers, 16 and 15.
        assert_eq!(
            worker_layers(30, None, &workers, &[]),
            [("a:1".to_owned(), 16), ("b:2".to_owned(), 15)]
        );
        assert!(worker_layers(30, Some(0), &workers, &[]).is_empty());
    }

    #[test]
    fn a_70b_that_does_not_fit_a_24_gb_host_is_split_across_two_32_gb_workers() {
        let hw = host_and_two_workers();
        let plan = plan(&hw, &[], &seventy_b());
        let c = find(&plan, "deepseek-r1:70b", "Q4_K_M");
        assert!(c.fits, "{}", c.reason);
        let local_alone = {
            let mut alone = hw.clone();
            alone.rpc_workers.clear();
            let p = super::plan(&alone, &[], &seventy_b());
            find(&p, "deepseek-r1:70b", "Q4_K_M").fits
        };
        assert!(!local_alone, "the 70B Q4_K_M must not fit the host alone");
        // Per host: the CPU, then both workers; layers add up to all of them, bytes to the RAM
        // plus what each worker holds.
        let names: Vec<&Host> = c.hosts.iter().map(|h| &h.host).collect();
        assert_eq!(
            names,
            [
                &Host::Cpu,
                &Host::Worker("10.0.0.2:50052".into()),
                &Host::Worker("10.0.0.3:50052".into())
            ]
        );
        assert_eq!(
            c.hosts.iter().map(|h| h.layers).sum::<u32>(),
            c.total_layers
        );
        assert_eq!(c.hosts[0].layers, c.total_layers - c.gpu_layers);
        assert_eq!(c.hosts[0].bytes, c.ram_bytes);
        assert!(c.ram_bytes + Policy::default().reserve_ram_bytes <= hw.memory.available_bytes);
        let f = c
            .variant
            .footprint(c.quantization, c.context_length * c.parallel);
        let worker_bytes: u64 = c.hosts[1..].iter().map(|h| h.bytes).sum();
        let on_workers = c.gpu_layers - 1; // blocks; the output head is the last worker's
        assert_eq!(
            worker_bytes,
            u64::from(on_workers) * (f.layer_weights + f.layer_kv) + f.output + 2 * f.compute
        );
        for h in &c.hosts[1..] {
            assert!(
                h.bytes + Policy::default().reserve_ram_bytes <= 32 * GB,
                "{h:?}"
            );
        }
        // The least that fits: one layer fewer on the workers leaves too much on the host.
        let per_cpu_layer = f.layer_weights + f.layer_kv + f.layer_repack;
        assert!(
            c.ram_bytes + per_cpu_layer + Policy::default().reserve_ram_bytes
                > hw.memory.available_bytes
        );
        // The two equal workers split as llama.cpp does.
        assert_eq!([c.hosts[1].layers, c.hosts[2].layers], {
            let d = split_layers(c.variant.layers, c.gpu_layers, &[32 * GB, 32 * GB]);
            [
                d.iter().filter(|&&x| x == 0).count() as u32,
                d.iter().filter(|&&x| x == 1).count() as u32,
            ]
        });
    }

    #[test]
    fn a_model_that_fits_this_machine_stays_on_it_beside_workers() {
        let hw = host_and_two_workers();
        let plan = plan(
            &hw,
            &[],
            &Policy {
                min_tokens_per_s: 0.0,
                ..Policy::default()
            },
        );
        let local = find(&plan, "deepseek-r1:7b", "Q4_K_M");
        assert!(local.fits, "{}", local.reason);
        assert_eq!(local.hosts.len(), 1, "{:?}", local.hosts);
        assert_eq!(local.hosts[0].host, Host::Cpu);
        assert_eq!(local.network_s_per_token, 0.0);
        assert_eq!(local.gpu_layers, 0);
        let mut alone = hw.clone();
        alone.rpc_workers.clear();
        let p = super::plan(
            &alone,
            &[],
            &Policy {
                min_tokens_per_s: 0.0,
                ..Policy::default()
            },
        );
        assert_eq!(find(&p, "deepseek-r1:7b", "Q4_K_M"), local);
    }

    #[test]
    fn a_split_pays_the_network_per_token() {
        let hw = host_and_two_workers();
        let c = find(&plan(&hw, &[], &seventy_b()), "deepseek-r1:70b", "Q4_K_M").clone();
        // Two runs of layers on workers: the first sends activations back, the second (with the
        // output head) the logits; one round trip each.
        let link = crate::hardware::Link::default();
        let expected = 2.0 * link.round_trip_s
            + (4.0 * 8192.0 * 3.0 + 4.0 * 128_256.0) / link.bandwidth_bytes_per_s as f64;
        assert!(
            (c.network_s_per_token - expected).abs() < 1e-12,
            "{}",
            c.network_s_per_token
        );
        // A slower link costs tokens/s by exactly the extra network time.
        let mut slow = hw.clone();
        for w in &mut slow.rpc_workers {
            w.link.round_trip_s = 0.010;
        }
        let s = find(&plan(&slow, &[], &seventy_b()), "deepseek-r1:70b", "Q4_K_M").clone();
        assert_eq!(s.hosts, c.hosts);
        let extra = 2.0 * (0.010 - link.round_trip_s);
        assert!(((1.0 / s.tokens_per_s) - (1.0 / c.tokens_per_s) - extra).abs() < 1e-9);
        assert!(c.reason.contains("ms/token on the network"), "{}", c.reason);
    }

    #[test]
    fn workers_too_small_leave_the_70b_out_saying_so() {
        let mut hw = host_and_two_workers();
        for w in &mut hw.rpc_workers {
            w.devices_free_bytes = vec![8 * GB];
        }
        let plan = plan(&hw, &[], &seventy_b());
        let c = find(&plan, "deepseek-r1:70b", "Q4_K_M");
        assert!(!c.fits);
        assert!(
            c.reason
                .contains("no split across the 2 RPC worker(s) fits"),
            "{}",
            c.reason
        );
        assert!(c.hosts.iter().all(|h| !matches!(h.host, Host::Worker(_))));
    }
}
