//! AMD GPUs through sysfs: `/sys/class/drm/card*/device` with PCI vendor `0x1002` and the amdgpu
//! driver's `mem_info_vram_total` / `mem_info_vram_used` (bytes).
//!
//! sysfs gives no memory bandwidth, so AMD GPUs have none and the planner uses its documented
//! default ([`crate::planner::DEFAULT_GPU_BANDWIDTH`]). The name is `product_name` where the
//! board provides it, else the PCI device id.

use super::{Gpu, GpuVendor, Probe};

/// AMD's PCI vendor id.
const AMD_VENDOR: &str = "0x1002";

/// Every amdgpu device below `<root>/sys/class/drm`; empty when there is none.
pub fn probe(probe: &Probe) -> Vec<Gpu> {
    let drm = probe.path("/sys/class/drm");
    let Ok(entries) = std::fs::read_dir(&drm) else {
        return Vec::new();
    };
    let mut cards: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // card0, card1 — not the connectors (card0-DP-1) nor render nodes.
        .filter(|n| {
            n.strip_prefix("card")
                .is_some_and(|i| i.parse::<u32>().is_ok())
        })
        .collect();
    cards.sort_by_key(|n| n[4..].parse::<u32>().unwrap_or(u32::MAX));
    let read = |card: &str, file: &str| {
        std::fs::read_to_string(drm.join(card).join("device").join(file))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let mut gpus = Vec::new();
    for card in &cards {
        if read(card, "vendor").as_deref() != Some(AMD_VENDOR) {
            continue;
        }
        let number = |file| read(card, file).and_then(|s| s.parse::<u64>().ok());
        let (Some(total), Some(used)) =
            (number("mem_info_vram_total"), number("mem_info_vram_used"))
        else {
            tracing::debug!("{card}: AMD device without amdgpu VRAM information");
            continue;
        };
        let name = read(card, "product_name")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                format!(
                    "AMD GPU {}",
                    read(card, "device").unwrap_or_else(|| card.clone())
                )
            });
        gpus.push(Gpu {
            vendor: GpuVendor::Amd,
            name,
            vram_total_bytes: total,
            vram_free_bytes: total.saturating_sub(used),
            bandwidth_bytes_per_s: None,
            compute_capability: None,
            driver: None,
        });
    }
    gpus
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::tests::fixture;

    #[test]
    fn two_amd_cards_and_an_intel_igpu() {
        let p = Probe::fake_root(fixture("amd-two-cards"), "/nonexistent".into());
        let gpus = probe(&p);
        assert_eq!(gpus.len(), 2, "{gpus:?}");
        assert_eq!(gpus[0].name, "AMD Radeon RX 7900 XTX");
        assert_eq!(gpus[0].vram_total_bytes, 25_753_026_560);
        assert_eq!(gpus[0].vram_free_bytes, 25_753_026_560 - 1_073_741_824);
        // No product_name: the PCI device id names it.
        assert_eq!(gpus[1].name, "AMD GPU 0x73bf");
        assert_eq!(gpus[1].vram_free_bytes, 0, "used > total is clamped");
    }

    #[test]
    fn no_drm_class_means_no_gpu() {
        let p = Probe::fake_root(fixture("cgroup-v1"), "/nonexistent".into());
        assert!(probe(&p).is_empty());
    }
}
