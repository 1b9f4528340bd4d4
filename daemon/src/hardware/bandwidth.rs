//! The CPU's memory read bandwidth: measured once (≈ 0.3 s), then cached.
//!
//! The measurement sums a 256 MiB buffer of `u64` with one thread per hardware thread and keeps
//! the best of three passes: a read-only, streaming access pattern like a matrix–vector product
//! over the weights, which is what bounds token generation on a CPU. It is what the machine
//! reaches, not the data-sheet peak (dual-channel DDR5-5600 is 89.6 GB/s on paper and reads at
//! roughly 60–70 GB/s).
//!
//! The cache is one line, `r1d-bandwidth-v1 <bytes/s> <total RAM bytes> <threads> <cpu model>`,
//! and is measured again when the RAM size, thread count or CPU model differ. Fallbacks, in
//! order: the cache, a new measurement, and — for a profile without a figure — the planner's
//! [`crate::planner::DEFAULT_CPU_BANDWIDTH`].

use std::path::Path;
use std::time::Instant;

use super::Cpu;

/// Bytes read per pass.
const BUFFER_BYTES: usize = 256 << 20;

fn cache_key(cpu: &Cpu, total_bytes: u64) -> String {
    format!(
        "{total_bytes} {} {}",
        cpu.threads,
        cpu.model.as_deref().unwrap_or("unknown")
    )
}

/// The cached figure when it was measured on this CPU and RAM size, else a new measurement
/// (written to the cache; a cache that cannot be written is only logged).
pub fn cached_or_measure(cache: Option<&Path>, cpu: &Cpu, total_bytes: u64) -> Option<u64> {
    let key = cache_key(cpu, total_bytes);
    if let Some(path) = cache {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(v) = parse_cache(&text, &key) {
                return Some(v);
            }
        }
    }
    let measured = measure(cpu.threads.max(1) as usize)?;
    tracing::info!(
        "memory read bandwidth: {:.1} GB/s (measured)",
        measured as f64 / 1e9
    );
    if let Some(path) = cache {
        let write = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, format!("r1d-bandwidth-v1 {measured} {key}\n")));
        if let Err(e) = write {
            tracing::debug!("failed to cache the bandwidth in {}: {e}", path.display());
        }
    }
    Some(measured)
}

fn parse_cache(text: &str, key: &str) -> Option<u64> {
    let rest = text.trim_end().strip_prefix("r1d-bandwidth-v1 ")?;
    let (value, cached_key) = rest.split_once(' ')?;
    (cached_key == key).then(|| value.parse().ok()).flatten()
}

/// Measures the read bandwidth (bytes/s) with `threads` threads; `None` if the buffer cannot be
/// allocated.
pub fn measure(threads: usize) -> Option<u64> {
    let words = BUFFER_BYTES / 8;
    let mut buffer: Vec<u64> = Vec::new();
    buffer.try_reserve_exact(words).ok()?;
    // Writing every word also faults every page in before timing.
    buffer.extend((0..words as u64).map(|i| i.wrapping_mul(0x9e37_79b9)));
    let chunk = words.div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buffer
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().fold(0u64, |a, &w| a.wrapping_add(w))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best > 0.0).then(|| (BUFFER_BYTES as f64 / best) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> Cpu {
        Cpu {
            model: Some("Test CPU".into()),
            cores: 2,
            threads: 2,
            features: vec![],
        }
    }

    #[test]
    fn cache_hit_skips_the_measurement_and_a_changed_machine_misses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bw");
        std::fs::write(&path, "r1d-bandwidth-v1 12345 1000 2 Test CPU\n").unwrap();
        assert_eq!(cached_or_measure(Some(&path), &cpu(), 1000), Some(12345));
        assert_eq!(
            parse_cache("r1d-bandwidth-v1 12345 1000 2 Test CPU", "2000 2 Test CPU"),
            None
        );
    }

    /// On this machine: a real measurement lands between 1 GB/s and 2 TB/s and is cached.
    #[test]
    fn measurement_on_this_machine_is_plausible_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/bw");
        let bw = cached_or_measure(Some(&path), &cpu(), 1000).unwrap();
        assert!((1_000_000_000..2_000_000_000_000).contains(&bw), "{bw}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse_cache(&text, "1000 2 Test CPU"), Some(bw));
    }
}
