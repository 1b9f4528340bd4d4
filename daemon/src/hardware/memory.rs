//! RAM: `/proc/meminfo`, bounded by the cgroup r1d runs in.
//!
//! Inside a cgroup v2 limit the usable memory is
//! `available = min(memory.max − (memory.current − inactive_file), MemAvailable)`:
//! page cache that the kernel would drop (`inactive_file` in `memory.stat`) counts as free, as it
//! does in `MemAvailable`. Every ancestor of r1d's cgroup up to the mount point is checked and the
//! tightest limit wins (a slice may limit all its services). Hosts still on cgroup v1 are read
//! the same way from `memory.limit_in_bytes`, `memory.usage_in_bytes` and `total_inactive_file`.

use std::path::{Path, PathBuf};

use super::{read_optional, read_required, HardwareError, Memory, Probe};

/// What a process holds in RAM, from `/proc/PID/smaps_rollup` (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resident {
    /// `Rss`: every resident page.
    pub total_bytes: u64,
    /// `Anonymous`: pages not backed by a file (heap, copied weights, KV cache).
    pub anon_bytes: u64,
    /// The rest: file-backed pages (mapped model files, binaries).
    pub file_bytes: u64,
}

/// This process's [`Resident`] memory; `None` where `/proc/self/smaps_rollup` cannot be read
/// (not Linux, or a kernel before 4.14).
pub fn resident_self() -> Option<Resident> {
    parse_smaps_rollup(&std::fs::read_to_string("/proc/self/smaps_rollup").ok()?)
}

/// Process `pid`'s [`Resident`] memory; `None` where its `smaps_rollup` cannot be read (gone,
/// not Linux).
pub fn resident_of(pid: u32) -> Option<Resident> {
    parse_smaps_rollup(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// What r1d holds with the worker process its model runs in (`worker`, see
/// `backend::worker`): the sum of both processes' [`Resident`] memory. `None` where this
/// process's `smaps_rollup` cannot be read; a worker that is gone counts nothing.
pub fn resident_with(worker: Option<u32>) -> Option<Resident> {
    let mut total = resident_self()?;
    if let Some(pid) = worker {
        if let Some(w) = resident_of(pid) {
            total.total_bytes += w.total_bytes;
            total.anon_bytes += w.anon_bytes;
            total.file_bytes += w.file_bytes;
        }
    }
    Some(total)
}

/// Bytes of `file` that process `pid` (`None`: this process) has memory-mapped, from
/// `/proc/PID/maps` (the sum of its mappings' address ranges; the kernel reports the file by
/// its canonical path). A model backend that maps its file (llama.cpp's `use_mmap`) uses these
/// pages in place: they are page cache, counted in `MemAvailable` as far as they are resident.
/// 0 when the file is not mapped; `None` when the maps cannot be read (no such process, not
/// Linux) or the file's path cannot be resolved.
pub fn mapped_bytes(pid: Option<u32>, file: &Path) -> Option<u64> {
    let file = std::fs::canonicalize(file).ok()?;
    let maps = match pid {
        Some(pid) => std::fs::read_to_string(format!("/proc/{pid}/maps")),
        None => std::fs::read_to_string("/proc/self/maps"),
    }
    .ok()?;
    Some(mapped_in(&maps, &file))
}

/// [`mapped_bytes`] of a `maps` text: lines `START-END PERMS OFFSET DEV INODE PATH`, addresses in
/// hex.
fn mapped_in(maps: &str, file: &Path) -> u64 {
    let wanted = file.as_os_str().to_string_lossy();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, char::is_whitespace);
            let range = fields.next()?;
            let path = fields.nth(4)?.trim_start();
            if path != wanted {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            end.checked_sub(start)
        })
        .sum()
}

/// Parses `smaps_rollup`'s `Rss:` and `Anonymous:` lines (kB).
fn parse_smaps_rollup(text: &str) -> Option<Resident> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    };
    let total_bytes = field("Rss:")?;
    let anon_bytes = field("Anonymous:").unwrap_or(0).min(total_bytes);
    Some(Resident {
        total_bytes,
        anon_bytes,
        file_bytes: total_bytes - anon_bytes,
    })
}

/// Reads meminfo and the cgroup limits below the probe's root.
///
/// # Errors
/// When `/proc/meminfo` cannot be read or lacks `MemTotal`.
pub fn probe(probe: &Probe) -> Result<Memory, HardwareError> {
    let path = probe.path("/proc/meminfo");
    let text = read_required(&path)?;
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kib * 1024)
        })
    };
    let total = field("MemTotal").ok_or_else(|| HardwareError::Parse {
        path: path.clone(),
        message: "no MemTotal".into(),
    })?;
    // Kernels before 3.14 have no MemAvailable: free + cached is the old approximation.
    let host_available = field("MemAvailable")
        .unwrap_or_else(|| field("MemFree").unwrap_or(0) + field("Cached").unwrap_or(0))
        .min(total);
    let cgroup = cgroup_limit(probe)?;
    Ok(match cgroup {
        Some(CgroupMemory { limit, available }) => Memory {
            total_bytes: total.min(limit),
            available_bytes: host_available.min(available),
            cgroup_limit_bytes: Some(limit),
            split: Some(super::AvailableSplit {
                host_bytes: host_available,
                cgroup_bytes: available,
            }),
            bandwidth_bytes_per_s: None,
            bandwidth_spread: None,
        },
        None => Memory {
            total_bytes: total,
            available_bytes: host_available,
            cgroup_limit_bytes: None,
            split: None,
            bandwidth_bytes_per_s: None,
            bandwidth_spread: None,
        },
    })
}

/// The tightest cgroup memory limit on the way from r1d's cgroup to the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupMemory {
    /// The limit (bytes).
    pub limit: u64,
    /// What is left under it (bytes): limit − (usage − inactive page cache).
    pub available: u64,
}

/// Limits at or above this are "no limit" (cgroup v1 writes `PAGE_COUNTER_MAX` × page size,
/// 9223372036854771712 on x86-64).
const UNLIMITED: u64 = 1 << 60;

/// Finds r1d's memory cgroup from `<root>/proc/self/cgroup` and reads its limit.
///
/// # Errors
/// When a cgroup file exists but cannot be read.
pub fn cgroup_limit(probe: &Probe) -> Result<Option<CgroupMemory>, HardwareError> {
    let Some(text) = read_optional(&probe.path("/proc/self/cgroup"))? else {
        return Ok(None);
    };
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_owned());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_owned());
        }
    }
    // A v1 memory controller, when mounted, is the one that limits (hybrid hierarchies keep an
    // empty v2 tree beside it).
    if let Some(path) = v1 {
        let mount = probe.path("/sys/fs/cgroup/memory");
        if mount.is_dir() {
            return tightest(&mount, &path, read_v1);
        }
    }
    if let Some(path) = v2 {
        let mount = probe.path("/sys/fs/cgroup");
        return tightest(&mount, &path, read_v2);
    }
    Ok(None)
}

type LevelReader = fn(&Path) -> Result<Option<CgroupMemory>, HardwareError>;

/// The tightest limit from the cgroup directory up to the mount point. A cgroup namespace shows
/// a path that is not below the mount (the container's root is the mount itself): then the mount
/// alone is read.
fn tightest(
    mount: &Path,
    cgroup: &str,
    read: LevelReader,
) -> Result<Option<CgroupMemory>, HardwareError> {
    let leaf = mount.join(cgroup.trim_start_matches('/'));
    let start = if leaf.is_dir() {
        leaf
    } else {
        mount.to_owned()
    };
    let mut best: Option<CgroupMemory> = None;
    let mut dir: Option<PathBuf> = Some(start);
    while let Some(d) = dir {
        if let Some(level) = read(&d)? {
            best = Some(match best {
                None => level,
                Some(b) => CgroupMemory {
                    limit: b.limit.min(level.limit),
                    available: b.available.min(level.available),
                },
            });
        }
        if d == mount {
            break;
        }
        dir = d
            .parent()
            .filter(|p| p.starts_with(mount))
            .map(Path::to_owned);
    }
    Ok(best)
}

fn number(path: &Path) -> Result<Option<u64>, HardwareError> {
    Ok(read_optional(path)?.and_then(|s| s.trim().parse().ok()))
}

fn stat_field(dir: &Path, names: &[&str]) -> Result<u64, HardwareError> {
    let Some(text) = read_optional(&dir.join("memory.stat"))? else {
        return Ok(0);
    };
    for name in names {
        if let Some(v) = text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == *name).then(|| v.trim().parse().ok()).flatten()
        }) {
            return Ok(v);
        }
    }
    Ok(0)
}

fn level(limit: u64, usage: u64, inactive_file: u64) -> CgroupMemory {
    let used = usage.saturating_sub(inactive_file);
    CgroupMemory {
        limit,
        available: limit.saturating_sub(used),
    }
}

/// cgroup v2: `memory.max` (`max` = none), `memory.current`, `inactive_file` of `memory.stat`.
fn read_v2(dir: &Path) -> Result<Option<CgroupMemory>, HardwareError> {
    let Some(max) = read_optional(&dir.join("memory.max"))? else {
        return Ok(None);
    };
    let Ok(limit) = max.trim().parse::<u64>() else {
        return Ok(None); // "max"
    };
    let usage = number(&dir.join("memory.current"))?.unwrap_or(0);
    let inactive = stat_field(dir, &["inactive_file"])?;
    Ok(Some(level(limit, usage, inactive)))
}

/// cgroup v1: `memory.limit_in_bytes`, `memory.usage_in_bytes`, `total_inactive_file`.
fn read_v1(dir: &Path) -> Result<Option<CgroupMemory>, HardwareError> {
    let Some(limit) = number(&dir.join("memory.limit_in_bytes"))? else {
        return Ok(None);
    };
    if limit >= UNLIMITED {
        return Ok(None);
    }
    let usage = number(&dir.join("memory.usage_in_bytes"))?.unwrap_or(0);
    let inactive = stat_field(dir, &["total_inactive_file", "inactive_file"])?;
    Ok(Some(level(limit, usage, inactive)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::tests::fixture;

    #[test]
    fn smaps_rollup_splits_anonymous_and_file_backed() {
        let text = "55d0c0000000-7ffd00000000 ---p 00000000 00:00 0    [rollup]\n\
                    Rss:             8196000 kB\nPss:             8190000 kB\n\
                    Anonymous:       3640000 kB\nSwap:                  0 kB\n";
        let r = parse_smaps_rollup(text).unwrap();
        assert_eq!(r.total_bytes, 8_196_000 * 1024);
        assert_eq!(r.anon_bytes, 3_640_000 * 1024);
        assert_eq!(r.file_bytes, (8_196_000 - 3_640_000) * 1024);
        assert_eq!(parse_smaps_rollup("Pss: 1 kB\n"), None);
        let me = resident_self().expect("Linux has smaps_rollup");
        assert!(me.total_bytes > 0 && me.anon_bytes <= me.total_bytes);
    }

    fn probe_of(name: &str) -> Memory {
        let p = Probe::fake_root(fixture(name), PathBuf::from("/nonexistent"));
        probe(&p).unwrap()
    }

    #[test]
    fn cgroup_v2_limit_smaller_than_the_host_is_what_counts() {
        // Host: 64 GiB, 60 GiB available. Service: memory.max 8 GiB, 3 GiB charged of which
        // 1 GiB is inactive page cache → 8 − (3 − 1) = 6 GiB available.
        let m = probe_of("cgroup-v2-service");
        assert_eq!(m.total_bytes, 8 << 30);
        assert_eq!(m.cgroup_limit_bytes, Some(8 << 30));
        assert_eq!(m.available_bytes, 6 << 30);
        assert_eq!(
            m.split,
            Some(crate::hardware::AvailableSplit {
                host_bytes: 60 << 30,
                cgroup_bytes: 6 << 30
            })
        );
    }

    #[test]
    fn mapped_bytes_sums_the_files_mappings_and_nothing_else() {
        let maps = "7f0000000000-7f0000400000 r--p 00000000 08:01 4242                       /m/a model.gguf\n\
                    7f0000400000-7f0000401000 rw-p 00000000 00:00 0 \n\
                    7f0000500000-7f0000600000 r--p 00500000 08:01 4242                       /m/a model.gguf\n\
                    7f0000600000-7f0000700000 r--p 00000000 08:01 4243                       /m/a model.gguf.part\n\
                    7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n";
        // Two mappings of the file (4 MiB and 1 MiB); a name that only starts the same is another.
        assert_eq!(mapped_in(maps, Path::new("/m/a model.gguf")), 5 << 20);
        assert_eq!(mapped_in(maps, Path::new("/m/other.gguf")), 0);
        // This test's own executable is mapped (its text and data), a file never opened is not.
        let exe = std::env::current_exe().unwrap();
        assert!(mapped_bytes(None, &exe).unwrap() > 0);
        let tmp = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(mapped_bytes(None, tmp.path()), Some(0));
        assert_eq!(mapped_bytes(None, Path::new("/nonexistent/file")), None);
    }

    #[test]
    fn cgroup_v2_tighter_parent_slice_wins() {
        // The service has no limit of its own; its slice allows 4 GiB with 1 GiB used.
        let m = probe_of("cgroup-v2-slice");
        assert_eq!(m.cgroup_limit_bytes, Some(4 << 30));
        assert_eq!(m.total_bytes, 4 << 30);
        assert_eq!(m.available_bytes, 3 << 30);
    }

    #[test]
    fn cgroup_v1_limit_is_read() {
        let m = probe_of("cgroup-v1");
        assert_eq!(m.cgroup_limit_bytes, Some(2 << 30));
        // usage 1.5 GiB, total_inactive_file 0.5 GiB → 2 − 1 = 1 GiB.
        assert_eq!(m.available_bytes, 1 << 30);
    }

    #[test]
    fn unlimited_cgroup_leaves_host_numbers() {
        let m = probe_of("workstation");
        assert_eq!(m.cgroup_limit_bytes, None);
        assert_eq!(m.total_bytes, 32_768_000 * 1024);
        assert_eq!(m.available_bytes, 28_000_000 * 1024);
    }
}
