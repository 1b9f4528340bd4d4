//! The CPU's memory read bandwidth: measured once (≈ 1 s), then cached.
//!
//! The measurement sums a 256 MiB buffer of `u64` with one thread per hardware thread, a
//! read-only, streaming access pattern like a matrix–vector product over the weights, which is
//! what bounds token generation on a CPU. It is what the machine reaches, not the data-sheet peak
//! (dual-channel DDR5-5600 is 89.6 GB/s on paper and reads at roughly 60–70 GB/s).
//!
//! One pass is noisy on a machine that does other work (one probe per start gave anything from
//! 20.9 to 47.1 GB/s over a day on the shared build machine), so [`RUNS`] passes are timed and
//! the *median* is the figure, with the spread of the runs beside it ([`Bandwidth::spread`],
//! shown by `r1d hardware`); a round whose passes spread more than [`DISTURBED_SPREAD`] is
//! measured again (up to [`ROUNDS`] rounds, the least disturbed kept). The planner's choice is also made robust to the rest of the wobble
//! (see `planner::SPEED_KEEP` / `planner::SPEED_UPGRADE`).
//!
//! The cache is one line, `r1d-bandwidth-v2 <median> <slowest> <fastest> <total RAM bytes>
//! <threads> <cpu model>` (bytes/s), and is measured again when the RAM size, thread count or
//! CPU model differ, or when it is a v1 line (one pass). Fallbacks, in order: the cache, a new
//! measurement, and — for a profile without a figure — the planner's
//! [`crate::planner::DEFAULT_CPU_BANDWIDTH`].

use std::path::Path;
use std::time::Instant;

use super::Cpu;

/// Bytes read per pass.
const BUFFER_BYTES: usize = 256 << 20;

/// Timed passes per measurement; the median is the figure. Odd, so the median is one pass.
pub const RUNS: usize = 7;

/// A round of [`RUNS`] passes whose spread is above this was disturbed by other work (seen on
/// the shared build machine: one round 14.9 GB/s with a 109 % spread, the next, a second later,
/// 32.2 GB/s with 9 %); it is measured again, up to [`ROUNDS`] rounds, and the round with the
/// smallest spread is kept: the planner wants what the memory delivers, not what was left over
/// at one busy moment.
pub const DISTURBED_SPREAD: f64 = 0.25;

/// Most rounds of [`RUNS`] passes per measurement.
pub const ROUNDS: usize = 3;

/// A measured read bandwidth, bytes/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// Median of the [`RUNS`] passes.
    pub median: u64,
    /// Slowest pass.
    pub min: u64,
    /// Fastest pass.
    pub max: u64,
}

impl Bandwidth {
    /// The median, slowest and fastest of per-pass figures (bytes/s); `None` for no passes.
    pub fn of(mut passes: Vec<u64>) -> Option<Bandwidth> {
        passes.sort_unstable();
        Some(Bandwidth {
            median: *passes.get(passes.len() / 2)?,
            min: *passes.first()?,
            max: *passes.last()?,
        })
    }

    /// (fastest − slowest) / median: 0.1 means the passes spread over 10 % of the figure.
    pub fn spread(&self) -> f64 {
        if self.median == 0 {
            return 0.0;
        }
        (self.max - self.min) as f64 / self.median as f64
    }
}

fn cache_key(cpu: &Cpu, total_bytes: u64) -> String {
    format!(
        "{total_bytes} {} {}",
        cpu.threads,
        cpu.model.as_deref().unwrap_or("unknown")
    )
}

/// The cached figure when it was measured on this CPU and RAM size, else a new measurement
/// (written to the cache; a cache that cannot be written is only logged).
pub fn cached_or_measure(cache: Option<&Path>, cpu: &Cpu, total_bytes: u64) -> Option<Bandwidth> {
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
        "memory read bandwidth: {:.1} GB/s (median of {RUNS} runs, {:.1} to {:.1} GB/s)",
        measured.median as f64 / 1e9,
        measured.min as f64 / 1e9,
        measured.max as f64 / 1e9,
    );
    if let Some(path) = cache {
        let write = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::write(
                    path,
                    format!(
                        "r1d-bandwidth-v2 {} {} {} {key}\n",
                        measured.median, measured.min, measured.max
                    ),
                )
            });
        if let Err(e) = write {
            tracing::debug!("failed to cache the bandwidth in {}: {e}", path.display());
        }
    }
    Some(measured)
}

fn parse_cache(text: &str, key: &str) -> Option<Bandwidth> {
    let rest = text.trim_end().strip_prefix("r1d-bandwidth-v2 ")?;
    let mut parts = rest.splitn(4, ' ');
    let mut number = || parts.next()?.parse::<u64>().ok();
    let (median, min, max) = (number()?, number()?, number()?);
    (parts.next()? == key && min <= median && median <= max).then_some(Bandwidth {
        median,
        min,
        max,
    })
}

/// Measures the read bandwidth with `threads` threads: rounds of [`RUNS`] timed passes over the
/// buffer until one spreads at most [`DISTURBED_SPREAD`] (at most [`ROUNDS`]); the round with
/// the smallest spread. `None` if the buffer cannot be allocated.
pub fn measure(threads: usize) -> Option<Bandwidth> {
    let words = BUFFER_BYTES / 8;
    let mut buffer: Vec<u64> = Vec::new();
    buffer.try_reserve_exact(words).ok()?;
    // Writing every word also faults every page in before timing.
    buffer.extend((0..words as u64).map(|i| i.wrapping_mul(0x9e37_79b9)));
    let chunk = words.div_ceil(threads.max(1));
    let mut best: Option<Bandwidth> = None;
    for _ in 0..ROUNDS {
        let round = Bandwidth::of(passes(&buffer, chunk))?;
        if best.is_none_or(|b| round.spread() < b.spread()) {
            best = Some(round);
        }
        if round.spread() <= DISTURBED_SPREAD {
            break;
        }
    }
    best
}

/// [`RUNS`] timed passes summing `buffer` in chunks of `chunk` words, one thread each; bytes/s.
fn passes(buffer: &[u64], chunk: usize) -> Vec<u64> {
    let mut passes = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
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
        let seconds = start.elapsed().as_secs_f64();
        if seconds > 0.0 {
            passes.push((BUFFER_BYTES as f64 / seconds) as u64);
        }
    }
    passes
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
        std::fs::write(
            &path,
            "r1d-bandwidth-v2 12345 12000 13000 1000 2 Test CPU\n",
        )
        .unwrap();
        assert_eq!(
            cached_or_measure(Some(&path), &cpu(), 1000).map(|b| b.median),
            Some(12345)
        );
        assert_eq!(
            parse_cache(
                "r1d-bandwidth-v2 12345 12000 13000 1000 2 Test CPU",
                "2000 2 Test CPU"
            ),
            None
        );
        // A v1 line (one pass, no spread) is measured again.
        assert_eq!(
            parse_cache("r1d-bandwidth-v1 12345 1000 2 Test CPU", "1000 2 Test CPU"),
            None
        );
    }

    /// On this machine: a real measurement lands between 1 GB/s and 2 TB/s and is cached.
    #[test]
    fn measurement_on_this_machine_is_plausible_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/bw");
        let bw = cached_or_measure(Some(&path), &cpu(), 1000).unwrap();
        assert!(
            (1_000_000_000..2_000_000_000_000).contains(&bw.median),
            "{bw:?}"
        );
        assert!(bw.min <= bw.median && bw.median <= bw.max, "{bw:?}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse_cache(&text, "1000 2 Test CPU"), Some(bw));
    }

    /// The median ignores one pass disturbed by other work, where a mean or the best would not.
    #[test]
    fn the_median_is_robust_to_an_outlier_and_the_spread_says_it() {
        let gb = 1_000_000_000;
        let b = Bandwidth::of(vec![
            26 * gb,
            25 * gb,
            9 * gb,
            27 * gb,
            26 * gb,
            47 * gb,
            25 * gb,
        ])
        .unwrap();
        assert_eq!(b.median, 26 * gb);
        assert_eq!((b.min, b.max), (9 * gb, 47 * gb));
        assert!((b.spread() - 38.0 / 26.0).abs() < 1e-9);
        assert_eq!(Bandwidth::of(Vec::new()), None);
    }
}
