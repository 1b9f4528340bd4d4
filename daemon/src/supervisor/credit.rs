//! The resident model's memory credit: what the model holds is added back to the free memory the
//! probe finds before planning (a swap would free it), so that the model does not crowd itself
//! out — on the GPUs it is actually on.
//!
//! Backends report how much of the model is on GPUs (`MemoryBreakdown::gpu_bytes`), not on which
//! ones. Which GPUs hold it comes from, in order:
//! 1. the plan that chose the file: the candidate's per-GPU VRAM ([`Placement::Planned`]), the
//!    reported GPU bytes split in the same proportions;
//! 2. the load spec's `main_gpu` (single-GPU placement): all on that GPU;
//! 3. otherwise (a file named by path or name, loaded with the backend's default placement,
//!    which for llama.cpp spreads layers over every GPU): split over every GPU in proportion to
//!    its total VRAM. This is an estimate; no GPU is credited beyond its total.
//!
//! In RAM, what a swap gives back is not all "used" to begin with: the weights a backend uses in
//! place from the memory-mapped file (llama.cpp's default) are page cache, which `MemAvailable`
//! already counts as available wherever they are resident. Crediting them again counted them
//! twice (a machine with 25.3 GB showed 25.3 GB available with a model loaded). So the host's
//! figure is credited only the model's anonymous memory (KV cache, compute buffers, copied or
//! repacked weights); the cgroup's figure, which counts only *inactive* page cache as free, is
//! credited the mapped pages too ([`Credit::add_to`]). What is mapped is read from the kernel
//! (`/proc/PID/maps` of the process the model runs in, [`Credit::with_measured`]).

use crate::engine::LoadSpec;
use crate::engine::ModelInfo;
use crate::hardware::Hardware;

/// Which GPUs hold the resident model.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// As planned: bytes per GPU in the hardware's GPU order (0 for GPUs not used).
    Planned(Vec<u64>),
    /// One GPU, by index (`LoadParams::main_gpu`).
    Main(usize),
    /// Not known: every GPU in proportion to its total VRAM.
    Spread,
}

/// What the resident model holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credit {
    /// Bytes in RAM, mapped and anonymous.
    pub ram_bytes: u64,
    /// Of `ram_bytes`, the model file's pages mapped in place (page cache): credited only to
    /// the cgroup's figure, see the module's docs.
    pub ram_mapped_bytes: u64,
    /// The most of `ram_bytes` that can be mapped: the weights (the KV cache and compute
    /// buffers never are).
    mappable_bytes: u64,
    /// Bytes on GPUs, in all.
    pub gpu_bytes: u64,
    /// Where the GPU bytes are (`None` with nothing resident).
    pub placement: Option<Placement>,
}

impl Credit {
    /// The credit of a resident model described by `info`, loaded with `spec`; `planned` is the
    /// per-GPU VRAM of the plan candidate the spec came from, when it came from one.
    pub fn of(info: &ModelInfo, spec: Option<&LoadSpec>, planned: Option<&[u64]>) -> Credit {
        let m = &info.memory;
        let total = m.weights_bytes + m.kv_cache_bytes + m.compute_bytes.unwrap_or(0);
        let placement = match (planned, spec.and_then(|s| s.params.main_gpu)) {
            (Some(p), _) if p.iter().any(|&b| b > 0) => Placement::Planned(p.to_vec()),
            (_, Some(i)) if i >= 0 => Placement::Main(i as usize),
            _ => Placement::Spread,
        };
        let ram_bytes = total.saturating_sub(m.gpu_bytes);
        Credit {
            ram_bytes,
            ram_mapped_bytes: 0,
            mappable_bytes: m.weights_bytes.min(ram_bytes),
            gpu_bytes: m.gpu_bytes,
            placement: Some(placement),
        }
    }

    /// The credit with what the kernel says about the process the model runs in:
    /// `mapped_bytes` of the model file it has memory-mapped ([`crate::hardware::memory::mapped_bytes`])
    /// and, where the model has a worker process of its own, that process's anonymous memory
    /// (`worker_anon_bytes`, all of it given back when the worker ends). The RAM credit becomes
    /// the mapped bytes (at most the weights the backend reported in RAM: a mapping is rounded
    /// up to whole pages) plus the larger of the reported rest and the worker's anonymous memory
    /// (a repacked copy of mapped weights is both: the file stays mapped and the copy is
    /// anonymous).
    pub fn with_measured(mut self, mapped_bytes: u64, worker_anon_bytes: Option<u64>) -> Credit {
        let mapped = mapped_bytes.min(self.mappable_bytes);
        let anon = (self.ram_bytes - mapped).max(worker_anon_bytes.unwrap_or(0));
        self.ram_mapped_bytes = mapped;
        self.ram_bytes = mapped + anon;
        self
    }

    /// The GPU bytes per GPU of `hw` (same order as `hw.gpus`).
    pub fn per_gpu(&self, hw: &Hardware) -> Vec<u64> {
        let n = hw.gpus.len();
        let mut out = vec![0u64; n];
        if self.gpu_bytes == 0 || n == 0 {
            return out;
        }
        let weights: Vec<u64> = match &self.placement {
            Some(Placement::Planned(p)) if p.len() == n && p.iter().any(|&b| b > 0) => p.clone(),
            Some(Placement::Main(i)) if *i < n => {
                out[*i] = self.gpu_bytes;
                return out;
            }
            _ => hw.gpus.iter().map(|g| g.vram_total_bytes).collect(),
        };
        let sum: u128 = weights.iter().map(|&w| w as u128).sum();
        if sum == 0 {
            return out;
        }
        for (o, w) in out.iter_mut().zip(&weights) {
            *o = (self.gpu_bytes as u128 * *w as u128 / sum) as u64;
        }
        out
    }

    /// Adds the credit to `hw`'s free memory (each figure capped at its total): to the host's
    /// available RAM the anonymous part, to a cgroup's all of it (see the module's docs).
    pub fn add_to(&self, hw: &mut Hardware) {
        let mem = &mut hw.memory;
        let anon = self.ram_bytes.saturating_sub(self.ram_mapped_bytes);
        match &mut mem.split {
            Some(split) => {
                split.host_bytes = (split.host_bytes + anon).min(mem.total_bytes);
                split.cgroup_bytes = (split.cgroup_bytes + self.ram_bytes).min(mem.total_bytes);
                mem.available_bytes = split.host_bytes.min(split.cgroup_bytes);
            }
            None => mem.available_bytes = (mem.available_bytes + anon).min(mem.total_bytes),
        }
        let per_gpu = self.per_gpu(hw);
        for (gpu, bytes) in hw.gpus.iter_mut().zip(per_gpu) {
            gpu.vram_free_bytes = (gpu.vram_free_bytes + bytes).min(gpu.vram_total_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{LoadParams, ModelMemory as MemoryBreakdown};
    use crate::hardware::{Cpu, Gpu, GpuVendor, Memory};

    const GB: u64 = 1_000_000_000;

    fn gpu(total: u64, free: u64) -> Gpu {
        Gpu {
            vendor: GpuVendor::Nvidia,
            name: "gpu".into(),
            vram_total_bytes: total,
            vram_free_bytes: free,
            bandwidth_bytes_per_s: None,
            compute_capability: None,
            driver: None,
        }
    }

    fn hw(gpus: Vec<Gpu>) -> Hardware {
        Hardware {
            cpu: Cpu {
                model: None,
                cores: 4,
                threads: 8,
                features: vec![],
            },
            memory: Memory {
                total_bytes: 32 * GB,
                available_bytes: 10 * GB,
                cgroup_limit_bytes: None,
                split: None,
                bandwidth_bytes_per_s: None,
                bandwidth_spread: None,
            },
            disk: None,
            gpus,
            vulkan: Vec::new(),
            rpc_workers: Vec::new(),
        }
    }

    fn info(weights: u64, gpu_bytes: u64) -> ModelInfo {
        ModelInfo {
            memory: MemoryBreakdown {
                weights_bytes: weights,
                kv_cache_bytes: GB,
                compute_bytes: None,
                gpu_bytes,
            },
            ..Default::default()
        }
    }

    fn spec(main_gpu: Option<i32>) -> LoadSpec {
        LoadSpec {
            params: LoadParams {
                path: "/m.gguf".into(),
                main_gpu,
                ..Default::default()
            },
            backend: None,
        }
    }

    #[test]
    fn the_credit_goes_to_the_gpus_the_model_is_on() {
        // Two GPUs; the model holds 8 GB of VRAM (of 9 GB in all) and 1 GB of RAM.
        let two = || hw(vec![gpu(24 * GB, 2 * GB), gpu(16 * GB, 10 * GB)]);
        let table: Vec<(&str, Credit, Vec<u64>)> = vec![
            (
                "planned on the second GPU only",
                Credit::of(&info(8 * GB, 8 * GB), Some(&spec(None)), Some(&[0, 7 * GB])),
                vec![2 * GB, 16 * GB],
            ),
            (
                "planned over both, 3:1",
                Credit::of(
                    &info(8 * GB, 8 * GB),
                    Some(&spec(None)),
                    Some(&[6 * GB, 2 * GB]),
                ),
                vec![8 * GB, 12 * GB],
            ),
            (
                "main_gpu 1",
                Credit::of(&info(8 * GB, 8 * GB), Some(&spec(Some(1))), None),
                vec![2 * GB, 16 * GB],
            ),
            (
                "unknown: spread by total VRAM (24:16)",
                Credit::of(&info(8 * GB, 8 * GB), Some(&spec(None)), None),
                vec![2 * GB + 4_800_000_000, 10 * GB + 3_200_000_000],
            ),
            (
                "on the CPU: no VRAM credit",
                Credit::of(&info(8 * GB, 0), None, Some(&[0, 0])),
                vec![2 * GB, 10 * GB],
            ),
        ];
        for (name, credit, free) in table {
            let mut h = two();
            credit.add_to(&mut h);
            let got: Vec<u64> = h.gpus.iter().map(|g| g.vram_free_bytes).collect();
            assert_eq!(got, free, "{name}");
            assert_eq!(
                h.memory.available_bytes,
                10 * GB + credit.ram_bytes,
                "{name}"
            );
        }
        // Capped at the totals; nothing resident: nothing added.
        let mut h = hw(vec![gpu(4 * GB, 3 * GB)]);
        Credit::of(&info(8 * GB, 8 * GB), None, None).add_to(&mut h);
        assert_eq!(h.gpus[0].vram_free_bytes, 4 * GB);
        let mut h = two();
        Credit::default().add_to(&mut h);
        assert_eq!(h, two());
        // A plan for another GPU list (a GPU vanished): spread instead.
        let c = Credit::of(&info(8 * GB, 8 * GB), None, Some(&[0, 0, 8 * GB]));
        assert_eq!(c.per_gpu(&two()).iter().sum::<u64>(), 8 * GB);
    }

    #[test]
    fn mapped_weights_are_credited_to_a_cgroup_but_not_to_mem_available() {
        // A CPU model: 8 GB of weights, 7 GB of them mapped in place, 1 GB of KV cache.
        let c = Credit::of(&info(8 * GB, 0), None, None).with_measured(7 * GB, None);
        assert_eq!((c.ram_bytes, c.ram_mapped_bytes), (9 * GB, 7 * GB));
        // No cgroup: MemAvailable (10 GB) counts the mapped pages already; 2 GB are added.
        let mut h = hw(vec![]);
        c.add_to(&mut h);
        assert_eq!(h.memory.available_bytes, 12 * GB);
        // Under a cgroup whose figure binds (6 GB left under the limit, the mapped pages active
        // page cache charged to it): all 9 GB come back there; the host's 10 + 2 GB still bind.
        let mut h = hw(vec![]);
        h.memory.split = Some(crate::hardware::AvailableSplit {
            host_bytes: 10 * GB,
            cgroup_bytes: 6 * GB,
        });
        h.memory.available_bytes = 6 * GB;
        c.add_to(&mut h);
        assert_eq!(h.memory.available_bytes, 12 * GB);
        let mut h = hw(vec![]);
        h.memory.split = Some(crate::hardware::AvailableSplit {
            host_bytes: 20 * GB,
            cgroup_bytes: GB,
        });
        c.add_to(&mut h);
        assert_eq!(h.memory.available_bytes, 10 * GB);
        // A worker holding more anonymous memory than reported beside the mapping (a repacked
        // copy): that is credited; more mapped than the weights (whole pages) is capped there.
        let c = Credit::of(&info(8 * GB, 0), None, None).with_measured(8 * GB, Some(5 * GB));
        assert_eq!((c.ram_bytes, c.ram_mapped_bytes), (13 * GB, 8 * GB));
        let c = Credit::of(&info(8 * GB, 0), None, None).with_measured(50 * GB, Some(0));
        assert_eq!((c.ram_bytes, c.ram_mapped_bytes), (9 * GB, 8 * GB));
    }
}
