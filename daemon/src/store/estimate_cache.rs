//! Backend memory estimates kept on disk between runs, so a plan does not ask the backend again
//! for a file it has already estimated.
//!
//! An estimate (the plugin ABI's `estimate`; for llama.cpp a no-allocation dry run that reads the
//! file's header and vocabulary) takes about 0.7–2 s per file; `r1d plan` over the 43 stand-ins of
//! `scripts/make-r1-standins` took 85–92 s, every time, on the shared 2-vCPU build machine.
//! The answer only depends on the file and the load asked, so it is cached by:
//!
//! - the file's identity: device, inode, length and modification time (nanoseconds) — a file
//!   replaced, rewritten or truncated is a new key (the same fields as the engine's check that a
//!   model file did not change under a load); the path is not part of it, so a hard link or a
//!   rename shares the entry;
//! - the load's parameters the estimate depends on: context length, GPU layers, main GPU,
//!   sequences, threads, batch size, KV cache type, mmap, the backend asked for;
//! - the plugins: every plugin file of the plugin directory with its name, version, length and
//!   modification time (a rebuilt or upgraded plugin estimates again), and r1d's own version,
//!   executable (length, modification time) and [`FORMAT`] (how an ABI estimate becomes a
//!   [`BackendEstimate`]).
//!
//! The file is JSON, `{"format": FORMAT, "entries": [{"key": …, "estimate": …}]}`, at
//! [`crate::paths::estimate_cache`]: `/var/cache/r1d/memory-estimates.json` (system, systemd's
//! `CacheDirectory=r1d`) or `$XDG_CACHE_HOME/r1d/memory-estimates.json`. At most
//! [`MAX_ENTRIES`] entries are kept, the most recently stored last. It is written whole to a
//! temporary file and renamed over the old one, so a reader never sees half a file; two r1d
//! processes writing at once lose one's new entries, never the file. A file that cannot be read
//! or parsed is treated as empty, and one that cannot be written is logged at debug level: the
//! cache only saves time.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::engine::LoadSpec;
use crate::planner::BackendEstimate;

/// Version of the cache's layout and of the conversion from the ABI's estimate; a file of
/// another format is ignored (and replaced at the next store).
pub const FORMAT: u32 = 1;

/// Entries kept; the oldest stored go first. 43 stand-ins at one load each fit many times over.
pub const MAX_ENTRIES: usize = 512;

/// Largest cache file read (bytes); a bigger one is ignored.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// What an estimate depends on; equal keys, equal estimates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// `st_dev` of the model file.
    pub dev: u64,
    /// `st_ino` of the model file.
    pub ino: u64,
    /// Length of the model file, bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the epoch (negative before it).
    pub mtime_ns: i128,
    /// The load parameters other than the path, as `Debug` text of each (stable enough: a
    /// change of their spelling only costs one new estimate per file).
    pub params: String,
    /// The backend asked for, if any.
    pub backend: Option<String>,
    /// The plugins and r1d itself (see [`plugins_fingerprint`]).
    pub plugins: String,
}

impl Key {
    /// The key for estimating `spec` with the plugins `plugins` (from [`plugins_fingerprint`]);
    /// `None` when the model is not a regular file that can be examined (an ONNX directory, a
    /// missing file): such estimates are not cached.
    pub fn of(spec: &LoadSpec, plugins: &str) -> Option<Key> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(&spec.params.path)
            .ok()
            .filter(|m| m.is_file())?;
        let p = &spec.params;
        Some(Key {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            params: format!(
                "context_length={:?} gpu_layers={:?} main_gpu={:?} threads={:?} \
                 threads_batch={:?} batch_size={:?} kv_cache_type={:?} use_mmap={:?} \
                 vocab_only={} parallel={:?}",
                p.context_length,
                p.gpu_layers,
                p.main_gpu,
                p.threads,
                p.threads_batch,
                p.batch_size,
                p.kv_cache_type,
                p.use_mmap,
                p.vocab_only,
                p.parallel
            ),
            backend: spec.backend.clone(),
            plugins: plugins.to_owned(),
        })
    }
}

/// The plugins an estimate may come from, as one string: r1d's version, [`FORMAT`], the length
/// and modification time of r1d's executable, and per
/// plugin file (`(path, name, version)` as the plugin host recorded them) its name, version,
/// length and modification time. A plugin file that cannot be examined counts with no length.
pub fn plugins_fingerprint<'a>(
    plugins: impl IntoIterator<Item = (&'a Path, Option<&'a str>, Option<&'a str>)>,
) -> String {
    use std::fmt::Write as _;
    use std::os::unix::fs::MetadataExt as _;
    // r1d's own executable too: a rebuilt r1d may turn an ABI estimate into other figures.
    let exe = std::env::current_exe()
        .and_then(std::fs::metadata)
        .ok()
        .map(|m| (m.len(), m.mtime(), m.mtime_nsec()));
    let mut out = format!(
        "r1d {} format {FORMAT} exe {exe:?}",
        env!("CARGO_PKG_VERSION")
    );
    for (path, name, version) in plugins {
        let m = std::fs::metadata(path).ok();
        let _ = write!(
            out,
            "; {} {} {} {:?} {:?}",
            path.display(),
            name.unwrap_or("?"),
            version.unwrap_or("?"),
            m.as_ref().map(std::fs::Metadata::len),
            m.as_ref().map(|m| (m.mtime(), m.mtime_nsec())),
        );
    }
    out
}

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    entries: Vec<Entry>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Entry {
    key: Key,
    estimate: BackendEstimate,
}

/// The on-disk cache of backend estimates (see the module's documentation).
pub struct EstimateCache {
    path: PathBuf,
    /// The entries as last read or written, oldest first.
    entries: Mutex<Vec<Entry>>,
}

impl EstimateCache {
    /// The cache at `path`, read now (a missing, unreadable or foreign file is an empty cache).
    pub fn open(path: PathBuf) -> EstimateCache {
        let entries = read(&path);
        EstimateCache {
            path,
            entries: Mutex::new(entries),
        }
    }

    /// Where the cache lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The estimate stored for `key`, if any.
    pub fn get(&self, key: &Key) -> Option<BackendEstimate> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|e| &e.key == key)
            .map(|e| e.estimate.clone())
    }

    /// Stores `estimate` for `key` and writes the file: the entries now on disk (another r1d
    /// may have added some) with this one last, at most [`MAX_ENTRIES`].
    pub fn put(&self, key: Key, estimate: BackendEstimate) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut merged = read(&self.path);
        merged.retain(|e| e.key != key);
        merged.push(Entry { key, estimate });
        if merged.len() > MAX_ENTRIES {
            merged.drain(..merged.len() - MAX_ENTRIES);
        }
        if let Err(e) = write(&self.path, &merged) {
            tracing::debug!(
                "failed to cache memory estimates in {}: {e}",
                self.path.display()
            );
        }
        *entries = merged;
    }
}

fn read(path: &Path) -> Vec<Entry> {
    let Ok(text) = crate::files::read_text_bounded(path, MAX_FILE_BYTES) else {
        return Vec::new();
    };
    match serde_json::from_str::<File>(&text) {
        Ok(f) if f.format == FORMAT => f.entries,
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::debug!("ignoring the memory estimate cache {}: {e}", path.display());
            Vec::new()
        }
    }
}

fn write(path: &Path, entries: &[Entry]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file = File {
        format: FORMAT,
        entries: entries.to_vec(),
    };
    let mut text = serde_json::to_vec(&file)?;
    text.push(b'\n');
    // A name of this process's own beside the cache, renamed over it once complete.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&text))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LoadParams;

    fn spec(path: &Path, context: u32) -> LoadSpec {
        LoadSpec {
            params: LoadParams {
                path: path.to_string_lossy().into_owned(),
                context_length: Some(context),
                gpu_layers: Some(0),
                parallel: Some(1),
                ..Default::default()
            },
            backend: None,
        }
    }

    fn estimate(kv: u64) -> BackendEstimate {
        BackendEstimate {
            context_length: 4096,
            weights_mapped_bytes: 1_000_000,
            weights_copied_bytes: 2_000,
            kv_cache_bytes: kv,
            compute_bytes: 30_000,
            source: "test".into(),
        }
    }

    /// A stored estimate is found again by a new reader of the file (another run of r1d), under
    /// a hard link's name too; another context, another plugin set, or a changed file misses.
    #[test]
    fn an_estimate_survives_a_restart_and_misses_when_its_inputs_change() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF model bytes").unwrap();
        let cache_path = dir.path().join("cache/memory-estimates.json");
        let plugins = "r1d test; llamacpp 1";

        let cache = EstimateCache::open(cache_path.clone());
        let key = Key::of(&spec(&model, 4096), plugins).unwrap();
        assert_eq!(cache.get(&key), None);
        cache.put(key.clone(), estimate(77));

        let again = EstimateCache::open(cache_path.clone());
        assert_eq!(again.get(&key), Some(estimate(77)));
        let link = dir.path().join("link.gguf");
        std::fs::hard_link(&model, &link).unwrap();
        assert_eq!(
            again.get(&Key::of(&spec(&link, 4096), plugins).unwrap()),
            Some(estimate(77))
        );
        assert_eq!(
            again.get(&Key::of(&spec(&model, 8192), plugins).unwrap()),
            None
        );
        assert_eq!(
            again.get(&Key::of(&spec(&model, 4096), "r1d test; llamacpp 2").unwrap()),
            None
        );
        // Written again (another length): another file as far as the cache is concerned.
        std::fs::write(&model, b"GGUF other model bytes").unwrap();
        assert_eq!(
            again.get(&Key::of(&spec(&model, 4096), plugins).unwrap()),
            None
        );
    }

    /// A directory (an ONNX model) or a missing file has no key; a corrupt or foreign cache file
    /// reads as empty and is replaced by the next store.
    #[test]
    fn no_key_without_a_file_and_a_bad_cache_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Key::of(&spec(dir.path(), 4096), "p").is_none());
        assert!(Key::of(&spec(&dir.path().join("missing"), 4096), "p").is_none());

        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF").unwrap();
        let key = Key::of(&spec(&model, 4096), "p").unwrap();
        let cache_path = dir.path().join("memory-estimates.json");
        for bad in ["not json", "{\"format\": 999, \"entries\": []}"] {
            std::fs::write(&cache_path, bad).unwrap();
            let cache = EstimateCache::open(cache_path.clone());
            assert_eq!(cache.get(&key), None);
            cache.put(key.clone(), estimate(1));
            assert_eq!(
                EstimateCache::open(cache_path.clone()).get(&key),
                Some(estimate(1))
            );
        }
    }

    /// A plugin rebuilt (another length or modification time) or of another version is another
    /// fingerprint, so its estimates are asked again.
    #[test]
    fn a_changed_plugin_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let so = dir.path().join("libr1_plugin_x.so");
        std::fs::write(&so, b"plugin").unwrap();
        let print = |version| plugins_fingerprint([(so.as_path(), Some("x"), Some(version))]);
        let before = print("1");
        assert_eq!(print("1"), before);
        assert_ne!(print("2"), before);
        std::fs::write(&so, b"plugin, rebuilt").unwrap();
        assert_ne!(print("1"), before);
    }

    /// The file keeps the most recent [`MAX_ENTRIES`].
    #[test]
    fn the_oldest_entries_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF").unwrap();
        let cache_path = dir.path().join("memory-estimates.json");
        let cache = EstimateCache::open(cache_path.clone());
        let key = |i: usize| Key::of(&spec(&model, 1000 + i as u32), "p").unwrap();
        for i in 0..MAX_ENTRIES + 3 {
            cache.put(key(i), estimate(i as u64));
        }
        let again = EstimateCache::open(cache_path);
        assert_eq!(again.get(&key(0)), None);
        assert_eq!(again.get(&key(2)), None);
        assert_eq!(again.get(&key(3)), Some(estimate(3)));
        assert_eq!(
            again.get(&key(MAX_ENTRIES + 2)),
            Some(estimate((MAX_ENTRIES + 2) as u64))
        );
    }
}
