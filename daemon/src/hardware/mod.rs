//! Hardware probes: what this machine (or a machine described by a fake root) offers to a model.
//!
//! - [`cpu`]: model, physical cores, threads and SIMD features from `/proc/cpuinfo`.
//! - [`memory`]: total and available RAM from `/proc/meminfo`, bounded by the cgroup's limit
//!   (v2 `memory.max`, `memory.current`, `inactive_file`; v1 `memory.limit_in_bytes` as fallback).
//! - [`disk`]: free space where models are stored.
//! - [`nvidia`]: NVIDIA GPUs through NVML, loaded at run time (no driver = no NVIDIA GPU).
//! - [`amd`]: AMD GPUs through sysfs (`mem_info_vram_total` / `mem_info_vram_used`).
//! - [`vulkan`]: every Vulkan device through the Vulkan loader, loaded at run time: listed in
//!   [`Hardware::vulkan`]; the GPUs NVML and sysfs did not find (Intel, AMD without amdgpu's
//!   sysfs files, …) are planned too, CPU devices (lavapipe) never.
//! - [`bandwidth`]: the CPU's memory bandwidth, measured once and cached.
//!
//! Every file probe reads below [`Probe::root`], so tests point it at a fake tree
//! (`daemon/tests/fixtures/hardware/`) to simulate any machine. The result is a [`Hardware`]
//! value; the planner takes it as input and does no I/O itself.

pub mod amd;
pub mod bandwidth;
pub mod cpu;
pub mod disk;
pub mod memory;
pub mod nvidia;
pub mod rpc;
pub mod vulkan;

use std::path::{Path, PathBuf};

/// Errors of the probes. Only what r1d cannot plan without is an error: a missing GPU driver or
/// an unreadable optional file is not.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    /// A file every Linux system has could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file (below the probe's root).
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file had an unexpected shape.
    #[error("failed to parse {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// The CPU.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cpu {
    /// Model name (`model name` in `/proc/cpuinfo`); `None` where the kernel gives none (many ARM
    /// boards).
    pub model: Option<String>,
    /// Physical cores (distinct `physical id`/`core id` pairs; = threads when those are absent).
    pub cores: u32,
    /// Hardware threads (logical CPUs).
    pub threads: u32,
    /// SIMD features relevant to inference, as llama.cpp names them: `avx`, `avx2`, `fma`, `f16c`,
    /// `avx512f`, `avx512_vnni`, `avx512_bf16`, `amx_tile`, `amx_int8`, `amx_bf16`, `neon`, `sve`,
    /// `dotprod`, `i8mm`.
    pub features: Vec<String>,
}

/// Main memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Memory {
    /// Total RAM r1d may use (bytes): `MemTotal`, or the cgroup limit when smaller.
    pub total_bytes: u64,
    /// RAM available now (bytes): `MemAvailable`, or less inside a cgroup (see [`memory`]).
    pub available_bytes: u64,
    /// The cgroup's memory limit (bytes), when one applies.
    pub cgroup_limit_bytes: Option<u64>,
    /// Under a cgroup limit, the two figures `available_bytes` is the smaller of (bytes):
    /// `MemAvailable` and what is left under the limit. They count a mapped file's pages
    /// differently (`MemAvailable` counts all reclaimable page cache, the cgroup figure only
    /// `inactive_file`), which the resident model's memory credit needs to know
    /// (`supervisor::credit`). `None` without a limit.
    pub split: Option<AvailableSplit>,
    /// Memory read bandwidth (bytes/s), when measured or given: the median of
    /// [`bandwidth::RUNS`] runs; see [`bandwidth`].
    pub bandwidth_bytes_per_s: Option<u64>,
    /// How much those runs differed: (slowest − fastest) / median (0.1 = a 10 % spread);
    /// `None` when not measured here.
    pub bandwidth_spread: Option<f64>,
}

/// [`Memory::split`]: the host's and the cgroup's available RAM, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvailableSplit {
    /// `MemAvailable` of `/proc/meminfo`.
    pub host_bytes: u64,
    /// The tightest cgroup's limit − (usage − `inactive_file`).
    pub cgroup_bytes: u64,
}

/// Free disk space where models are stored.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disk {
    /// The directory whose file system was measured.
    pub path: PathBuf,
    /// Bytes available to an unprivileged writer there.
    pub free_bytes: u64,
}

/// A GPU's vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuVendor {
    /// NVIDIA (found through NVML).
    Nvidia,
    /// AMD (found through sysfs, amdgpu driver, or Vulkan).
    Amd,
    /// Intel (found through Vulkan).
    Intel,
    /// Another vendor's GPU found through Vulkan (PCI vendor id in [`vulkan::VulkanDevice`]).
    Other,
}

impl GpuVendor {
    /// `"nvidia"`, `"amd"`, `"intel"` or `"other"`.
    pub fn name(self) -> &'static str {
        match self {
            GpuVendor::Nvidia => "nvidia",
            GpuVendor::Amd => "amd",
            GpuVendor::Intel => "intel",
            GpuVendor::Other => "other",
        }
    }

    /// The vendor a name stands for: `nvidia`, `amd`, `intel` (any case); anything else is
    /// [`GpuVendor::Other`].
    pub fn from_name(name: &str) -> GpuVendor {
        [GpuVendor::Nvidia, GpuVendor::Amd, GpuVendor::Intel]
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(name))
            .unwrap_or(GpuVendor::Other)
    }
}

/// One GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    /// Vendor.
    pub vendor: GpuVendor,
    /// Marketing name, e.g. `NVIDIA GeForce RTX 4060`.
    pub name: String,
    /// Installed VRAM (bytes).
    pub vram_total_bytes: u64,
    /// VRAM free now (bytes): what other processes hold is not free.
    pub vram_free_bytes: u64,
    /// Peak memory bandwidth (bytes/s) from the device (NVML: memory clock × bus width), when known.
    pub bandwidth_bytes_per_s: Option<u64>,
    /// CUDA compute capability, e.g. `8.9` (NVIDIA only).
    pub compute_capability: Option<String>,
    /// Driver version.
    pub driver: Option<String>,
}

/// Everything the planner needs to know about a machine.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hardware {
    /// The CPU.
    pub cpu: Cpu,
    /// Main memory.
    pub memory: Memory,
    /// Free disk where models go; `None` when unknown (a profile without it).
    pub disk: Option<Disk>,
    /// GPUs the planner may use: NVML's, then amdgpu's, then the Vulkan GPUs neither found.
    pub gpus: Vec<Gpu>,
    /// Every Vulkan device, CPU devices (lavapipe) included: for `r1d hardware` and
    /// `/r1/hardware`; only those in `gpus` are planned.
    pub vulkan: Vec<vulkan::VulkanDevice>,
    /// llama.cpp RPC workers (`[backends.llamacpp] rpc_workers`, docs/rpc.md) that answered, in
    /// config order: the planner may put layers on their devices when a model does not fit this
    /// machine alone. Empty for a machine without workers.
    pub rpc_workers: Vec<RpcHost>,
}

/// One llama.cpp `rpc-server` worker as the planner sees it: its devices' free memory (what
/// llama.cpp splits the offloaded layers by) and the network link to it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RpcHost {
    /// `HOST:PORT`.
    pub endpoint: String,
    /// Free memory of each of its devices (bytes), in ggml's device order (`ggml-rpc-probe`'s
    /// `GET_DEVICE_MEMORY`, or a profile's figure).
    pub devices_free_bytes: Vec<u64>,
    /// Memory read bandwidth of its devices (bytes/s), when known (a profile may say); `None`:
    /// the planner takes [`crate::planner::DEFAULT_CPU_BANDWIDTH`] (an `rpc-server` on a CPU).
    pub bandwidth_bytes_per_s: Option<u64>,
    /// The network link from this machine to it.
    pub link: Link,
}

/// A network link to an RPC worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One request–response round trip (seconds): `[backends.llamacpp] rpc_link_latency_ms`, or
    /// the measured round trip of one `GET_DEVICE_MEMORY` call of the probe.
    pub round_trip_s: f64,
    /// Bytes per second the link carries: `[backends.llamacpp] rpc_link_bandwidth_bytes_per_s`.
    pub bandwidth_bytes_per_s: u64,
}

impl Default for Link {
    /// A switched 1 Gbit/s Ethernet LAN: [`Link::LAN_ROUND_TRIP_S`], [`Link::LAN_BANDWIDTH`].
    fn default() -> Link {
        Link {
            round_trip_s: Link::LAN_ROUND_TRIP_S,
            bandwidth_bytes_per_s: Link::LAN_BANDWIDTH,
        }
    }
}

impl Link {
    /// Round trip of a switched 1 Gbit/s LAN (seconds): 0.2 ms, the order `ping` shows between
    /// two hosts on one switch (0.1–0.3 ms); a loopback round trip is ~0.05 ms.
    pub const LAN_ROUND_TRIP_S: f64 = 0.000_2;
    /// What a 1 Gbit/s link carries (bytes/s): 117 MB/s, 1 Gbit/s less Ethernet, IP and TCP
    /// framing (1448 payload bytes per 1538 on the wire: 125 MB/s × 0.94).
    pub const LAN_BANDWIDTH: u64 = 117_000_000;
}

/// How to probe: where the file trees are and which probes run.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Root of `/proc` and `/sys` (`/` for this machine; a fixture directory in tests).
    pub root: PathBuf,
    /// Directory models are stored in (its file system's free space is reported); taken as is,
    /// not below `root`.
    pub models_dir: PathBuf,
    /// Ask NVML for NVIDIA GPUs (only meaningful for the real machine).
    pub nvml: bool,
    /// Ask the Vulkan loader for devices (only meaningful for the real machine).
    pub vulkan: bool,
    /// Measure the CPU's memory bandwidth (cached in `bandwidth_cache`) when not cached yet.
    pub measure_bandwidth: bool,
    /// Where the measured bandwidth is cached; `None`: measure every time.
    pub bandwidth_cache: Option<PathBuf>,
}

impl Probe {
    /// The probes for this machine: root `/`, NVML and Vulkan on, bandwidth measured and cached.
    pub fn this_machine(models_dir: PathBuf, bandwidth_cache: Option<PathBuf>) -> Probe {
        Probe {
            root: PathBuf::from("/"),
            models_dir,
            nvml: true,
            vulkan: true,
            measure_bandwidth: true,
            bandwidth_cache,
        }
    }

    /// Probes of a fake tree at `root` only: no NVML, no Vulkan, no measurement.
    pub fn fake_root(root: impl Into<PathBuf>, models_dir: PathBuf) -> Probe {
        Probe {
            root: root.into(),
            models_dir,
            nvml: false,
            vulkan: false,
            measure_bandwidth: false,
            bandwidth_cache: None,
        }
    }

    /// `path` (absolute, as on a real system) below the probe's root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Runs every probe.
    ///
    /// # Errors
    /// Only when `/proc/cpuinfo` or `/proc/meminfo` cannot be read or parsed; GPUs, disk and
    /// bandwidth degrade to "none" or "unknown" with a debug log line.
    pub fn run(&self) -> Result<Hardware, HardwareError> {
        let cpu = cpu::probe(self)?;
        let mut memory = memory::probe(self)?;
        if self.measure_bandwidth {
            let measured = bandwidth::cached_or_measure(
                self.bandwidth_cache.as_deref(),
                &cpu,
                memory.total_bytes,
            );
            memory.bandwidth_bytes_per_s = measured.map(|m| m.median);
            memory.bandwidth_spread = measured.map(|m| m.spread());
        }
        let disk = disk::probe(&self.models_dir);
        let mut gpus = Vec::new();
        if self.nvml {
            gpus.extend(nvidia::probe());
        }
        gpus.extend(amd::probe(self));
        let mut vulkan = if self.vulkan {
            vulkan::probe()
        } else {
            Vec::new()
        };
        let more = vulkan::planned_gpus(&mut vulkan, &gpus);
        gpus.extend(more);
        Ok(Hardware {
            cpu,
            memory,
            disk,
            gpus,
            vulkan,
            rpc_workers: Vec::new(),
        })
    }
}

/// Reads a file below the root; `Ok(None)` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, HardwareError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HardwareError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads a file that must exist.
pub(crate) fn read_required(path: &Path) -> Result<String, HardwareError> {
    std::fs::read_to_string(path).map_err(|source| HardwareError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The fixture trees in `daemon/tests/fixtures/hardware/`.
    pub(crate) fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hardware")
            .join(name)
    }

    #[test]
    fn workstation_fixture_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let hw = Probe::fake_root(fixture("workstation"), dir.path().to_owned())
            .run()
            .unwrap();
        assert_eq!(
            hw.cpu.model.as_deref(),
            Some("AMD Ryzen 7 7700X 8-Core Processor")
        );
        assert_eq!((hw.cpu.cores, hw.cpu.threads), (8, 16));
        assert_eq!(hw.memory.total_bytes, 32_768_000 * 1024);
        assert_eq!(hw.memory.available_bytes, 28_000_000 * 1024);
        assert_eq!(hw.memory.cgroup_limit_bytes, None);
        assert_eq!(hw.gpus.len(), 1);
        let gpu = &hw.gpus[0];
        assert_eq!(gpu.vendor, GpuVendor::Amd);
        assert_eq!(gpu.vram_total_bytes, 17_163_091_968);
        // 2 GiB held by the desktop and other processes is not free.
        assert_eq!(gpu.vram_free_bytes, 17_163_091_968 - 2_147_483_648);
        assert!(hw.disk.is_some());
    }

    /// Smoke test on the machine the tests run on: whatever it is, the numbers must be sane.
    #[test]
    fn this_machine_probes_sanely() {
        let dir = tempfile::tempdir().unwrap();
        let mut probe = Probe::this_machine(dir.path().to_owned(), None);
        probe.measure_bandwidth = false;
        let hw = probe.run().unwrap();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        assert!(hw.cpu.threads >= threads, "{hw:?}");
        assert!(
            hw.cpu.cores >= 1 && hw.cpu.cores <= hw.cpu.threads,
            "{hw:?}"
        );
        assert!(hw.memory.total_bytes > 256 << 20, "{hw:?}");
        assert!(hw.memory.available_bytes <= hw.memory.total_bytes, "{hw:?}");
        assert!(hw.memory.available_bytes > 0, "{hw:?}");
        let disk = hw.disk.expect("the temp dir's file system");
        assert!(disk.free_bytes > 0);
        for gpu in &hw.gpus {
            assert!(gpu.vram_free_bytes <= gpu.vram_total_bytes, "{gpu:?}");
        }
    }
}
