//! NVIDIA GPUs through NVML (`libnvidia-ml.so.1`), loaded at run time by `nvml-wrapper`.
//!
//! A machine without the driver has no NVIDIA GPU: that is an answer, not an error (NVML's
//! `LibloadingError` is logged at debug level). NVML is initialised once per process.
//! Bandwidth is the device's peak: max memory clock (MHz) × 2 (double data rate) × bus width
//! (bits) / 8, which gives the data-sheet figure for GDDR6/6X and HBM2e/3 parts (e.g. H100 SXM:
//! 2619 MHz × 2 × 5120 bit / 8 = 3.35 TB/s).

use std::sync::OnceLock;

use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::Nvml;

use super::{Gpu, GpuVendor};

fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| match Nvml::init() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::debug!("no NVIDIA GPU: NVML is not available: {e}");
            None
        }
    })
    .as_ref()
}

/// Every NVIDIA GPU NVML reports; empty without a driver.
pub fn probe() -> Vec<Gpu> {
    let Some(nvml) = nvml() else {
        return Vec::new();
    };
    let driver = nvml.sys_driver_version().ok();
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("NVML could not count GPUs: {e}");
            return Vec::new();
        }
    };
    let mut gpus = Vec::new();
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("NVML could not open GPU {index}: {e}");
                continue;
            }
        };
        let Ok(memory) = device.memory_info() else {
            tracing::warn!("NVML gives no memory information for GPU {index}");
            continue;
        };
        let bandwidth = match (
            device.max_clock_info(Clock::Memory),
            device.memory_bus_width(),
        ) {
            (Ok(mhz), Ok(bits)) if mhz > 0 && bits > 0 => {
                Some(mhz as u64 * 1_000_000 * 2 * bits as u64 / 8)
            }
            _ => None,
        };
        gpus.push(Gpu {
            vendor: GpuVendor::Nvidia,
            name: device
                .name()
                .unwrap_or_else(|_| format!("NVIDIA GPU {index}")),
            vram_total_bytes: memory.total,
            vram_free_bytes: memory.free,
            bandwidth_bytes_per_s: bandwidth,
            compute_capability: device
                .cuda_compute_capability()
                .ok()
                .map(|c| format!("{}.{}", c.major, c.minor)),
            driver: driver.clone(),
        });
    }
    gpus
}

/// NVIDIA GPUs the kernel driver lists (`/proc/driver/nvidia/gpus/*`) below `probe`'s root.
pub fn gpus_listed(probe: &super::Probe) -> usize {
    std::fs::read_dir(probe.path("/proc/driver/nvidia/gpus"))
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0)
}

/// Why the probe result `hw` is degraded: the driver lists NVIDIA GPUs the probe (NVML) did not
/// find. `None` when every listed GPU answered (or none is listed).
pub fn degraded_reason(probe: &super::Probe, hw: &super::Hardware) -> Option<String> {
    let listed = gpus_listed(probe);
    let found = hw
        .gpus
        .iter()
        .filter(|g| g.vendor == GpuVendor::Nvidia)
        .count();
    (listed > found).then(|| {
        format!(
            "the NVIDIA driver lists {listed} GPU(s) but {found} answered (NVML); planning without \
             them until they do"
        )
    })
}

/// At start: waits up to `wait` for GPUs the NVIDIA driver lists but NVML does not see yet (a
/// boot-time race with the driver), probing once a second. Returns why r1d is degraded when
/// they did not show up; `None` at once on a machine without such GPUs. Blocking.
pub fn wait_for_gpus(probe: &super::Probe, wait: std::time::Duration) -> Option<String> {
    use std::time::{Duration, Instant};
    let deadline = Instant::now().checked_add(wait);
    let mut logged = false;
    loop {
        let hw = probe.run().ok()?;
        let reason = degraded_reason(probe, &hw)?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!("degraded: {reason}");
            return Some(reason);
        }
        if !logged {
            tracing::info!("waiting up to {} s for the GPUs: {reason}", wait.as_secs());
            logged = true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    /// Without a driver (as on the CI machines) the answer is "none", never an error or panic;
    /// with one, every GPU has sane numbers.
    #[test]
    fn nvml_probe_never_fails() {
        for gpu in super::probe() {
            assert!(gpu.vram_free_bytes <= gpu.vram_total_bytes, "{gpu:?}");
            assert!(gpu.vram_total_bytes > 0, "{gpu:?}");
        }
    }
}
