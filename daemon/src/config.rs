//! The typed TOML config and the paths r1d uses.
//!
//! Every key has a default, so no file is needed. Unknown keys are errors (a typo must not be
//! silently ignored); the error names the file, line and key. The daemon never writes its config.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is not a regular file (a FIFO would block r1d), or the file is larger than
    /// [`MAX_CONFIG_BYTES`].
    #[error("invalid config: {0}")]
    File(crate::files::FileError),
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML error, with line, column and key.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The model to serve.
    pub model: ModelConfig,
    /// Where to listen.
    pub server: ServerConfig,
    /// Where plugins are.
    pub plugins: PluginsConfig,
    /// How the planner picks a variant.
    pub planner: PlannerConfig,
    /// Where model files are, and pulls.
    pub store: StoreConfig,
    /// How r1d follows changes of the config and the hardware.
    pub watch: WatchConfig,
    /// Remote OpenAI-compatible endpoints (`[[remote]]`: vLLM, SGLang, llama-server, another
    /// r1d), served through `backend::remote`; see docs/remote.md.
    pub remote: Vec<crate::backend::remote::RemoteConfig>,
    /// Per-backend settings.
    pub backends: BackendsConfig,
}

/// `[backends]`: settings of one backend each.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackendsConfig {
    /// `[backends.llamacpp]`.
    pub llamacpp: LlamaCppConfig,
}

/// `[backends.llamacpp]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LlamaCppConfig {
    /// llama.cpp `rpc-server` workers (`r1d-rpc-worker`, docs/rpc.md) whose devices the llama.cpp
    /// plugin adds to its own: `"HOST:PORT"` each (ggml's endpoint syntax: no IPv6 literal). The
    /// layers offloaded (`gpu_layers`) are split across them in proportion to their free memory;
    /// a worker that does not answer at load time is left out. The protocol has no
    /// authentication: trusted networks or tunnels only. Needs `[plugins] isolation =
    /// "process"` (ggml ends the process when a worker vanishes). Each endpoint at most once (a
    /// repeated one is refused: one `rpc-server` serves one client). Read at start only.
    pub rpc_workers: Vec<String>,
    /// One network round trip to the workers (milliseconds), for the planner's speed estimate of
    /// a split model; default: measured, the shortest round trip of the watch's probe calls.
    pub rpc_link_latency_ms: Option<f64>,
    /// What the link to the workers carries (bytes/s), for the same estimate; default
    /// 117 000 000, a 1 Gbit/s Ethernet LAN less framing (`hardware::Link::LAN_BANDWIDTH`).
    pub rpc_link_bandwidth_bytes_per_s: Option<u64>,
}

/// What the supervisor does when a re-plan finds that another model fits better than the
/// resident one (see `supervisor`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SwapPolicy {
    /// Swap at once: running answers finish first, new requests wait for the new model.
    #[default]
    Auto,
    /// Swap once no request has run for `[watch] idle_s` seconds.
    Idle,
    /// Only report that a better fit exists (`r1ctl status`, `/r1/events`); swap on
    /// `r1ctl use auto`.
    Manual,
}

/// `[watch]`: following the config file and the hardware, and swapping models.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Re-read the config when its file changes (inotify on its directory); default true.
    /// SIGHUP, `r1ctl reload` and D-Bus `Reload` re-read it whatever this says.
    pub config: bool,
    /// Seconds between hardware re-probes (memory, cgroup limit, GPUs); 0 = never; default 30.
    pub hardware_interval_s: f64,
    /// Seconds a re-plan's different choice must last before r1d acts on it (hysteresis, so a
    /// burst of VRAM or RAM use by another program does not swap the model back and forth);
    /// default 120.
    pub settle_s: f64,
    /// What to do when another model fits better; default `auto`.
    pub swap_policy: SwapPolicy,
    /// Under `swap_policy = "idle"`: seconds without a request before swapping; default 300.
    pub idle_s: f64,
    /// Seconds a request waits for a model that is being loaded or swapped before it gets 503
    /// with `Retry-After`; default 120.
    pub queue_deadline_s: f64,
    /// At start, seconds to wait for a GPU whose driver is present but which does not answer yet
    /// (a boot-time race with the driver); r1d plans without it meanwhile and reports
    /// `degraded`; default 30.
    pub gpu_wait_s: f64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            config: true,
            hardware_interval_s: 30.0,
            settle_s: 120.0,
            swap_policy: SwapPolicy::Auto,
            idle_s: 300.0,
            queue_deadline_s: 120.0,
            gpu_wait_s: 30.0,
        }
    }
}

/// `[store]`: where model files are and how they are fetched (see `store`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// r1d's models directory (pulls land here); default `/var/lib/r1d/models` (system) or
    /// `$XDG_DATA_HOME/r1d/models` (user).
    pub dir: Option<PathBuf>,
    /// Also list the Hugging Face cache's GGUF files (read-only); default true.
    pub scan_huggingface: bool,
    /// The Hugging Face hub cache; default `$HF_HUB_CACHE`, `$HF_HOME/hub`,
    /// `~/.cache/huggingface/hub`.
    pub huggingface_cache: Option<PathBuf>,
    /// Also list Ollama's models (read-only); default true.
    pub scan_ollama: bool,
    /// Ollama's models directory; default `$OLLAMA_MODELS`, `~/.ollama/models`.
    pub ollama_models: Option<PathBuf>,
    /// Pull the planner's choice at start when it is not present (serving the best present
    /// model meanwhile); default false.
    pub auto_pull: bool,
    /// Disk space a pull must leave free (bytes); default 1 GiB.
    pub reserve_disk_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: None,
            scan_huggingface: true,
            huggingface_cache: None,
            scan_ollama: true,
            ollama_models: None,
            auto_pull: false,
            reserve_disk_bytes: 1 << 30,
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model file (GGUF) or directory (ONNX) to load at start.
    pub path: Option<PathBuf>,
    /// Backend to use (`llamacpp`, …); default: the best backend for the model's format.
    pub backend: Option<String>,
    /// KV cache size in tokens; default: `[planner] context_length` (what the plan fits),
    /// capped at a GGUF's trained context (other formats: the backend's default).
    pub context_length: Option<u32>,
    /// Layers to offload to a GPU; default: the backend decides (all, when it has a GPU).
    pub gpu_layers: Option<u32>,
    /// Generation threads; default: the backend decides.
    pub threads: Option<u32>,
    /// KV cache type: `f16`, `q8_0`, `q4_0`, `f32`.
    pub kv_cache_type: Option<String>,
    /// A cap on `max_tokens` for requests that set none (tokens); default none: an answer may
    /// run to the end of the context.
    pub default_max_tokens: Option<u32>,
}

/// The KV cache element types a load may ask for (`[model] kv_cache_type`, `POST /r1/load`,
/// D-Bus `Load`).
pub const KV_CACHE_TYPES: [&str; 4] = ["f16", "q8_0", "q4_0", "f32"];

/// `[server]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Unix socket path; default: system or user socket (see [`crate::paths::socket`]).
    pub socket: Option<PathBuf>,
    /// Requests that may wait in the queue behind the running ones before new ones get 503.
    pub queue_depth: Option<usize>,
    /// Answers generated at once (continuous batching: one sequence each, with its own context
    /// of KV cache); default [`DEFAULT_PARALLEL`], at most [`MAX_PARALLEL`]. A backend that runs
    /// fewer (the ONNX ones run 1) caps it. Read at start only.
    pub parallel: Option<u32>,
    /// Seconds a client may stop reading a streamed answer (its buffer full) before its request
    /// is cancelled, so one stalled reader cannot hold the engine; default 30.
    pub stall_timeout_s: Option<f64>,
    /// Connections served at once; more are answered 503 and closed at once, so a flood of idle
    /// connections cannot use up r1d's file descriptors; default 256.
    pub max_connections: Option<usize>,
    /// Seconds a connection may take to send a complete request head — after it opens, between
    /// requests, or while it trickles its headers in — and the longest pause within a request
    /// body, before the connection is closed; running answers are not affected; default 30.
    pub idle_timeout_s: Option<f64>,
    /// TCP addresses to serve the same routes on besides the Unix socket, `HOST:PORT`
    /// (`"127.0.0.1:11434"`, `"[::1]:11434"`, `"localhost:11434"`: a name stands for every
    /// address it resolves to); default none. An address that is not loopback needs
    /// `api_key_file`. Read at start only.
    pub listen: Vec<String>,
    /// A file holding the API key TCP clients must send as `Authorization: Bearer KEY`
    /// (required on every TCP listener once set; the Unix socket never asks for it).
    pub api_key_file: Option<PathBuf>,
}

/// `[plugins]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Plugin directory; default: see [`crate::paths::plugin_dir`].
    pub dir: Option<PathBuf>,
    /// Where a model runs: `"process"` (default) — in a worker process of its own, so a crash
    /// or a hang inside a backend ends that process, not r1d — or `"in-process"` — inside r1d
    /// (no per-token hop; a backend crash ends r1d). Read at start only.
    pub isolation: Isolation,
    /// How long a worker with work to do may show no progress (no token, prompt batch or load
    /// progress) before r1d kills it as hung and restarts it (seconds; default 120: a prompt
    /// chunk of a large model on a slow CPU takes tens of seconds). Read at start only.
    pub hang_timeout_s: Option<f64>,
}

/// `[plugins] isolation`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Each model in a worker process.
    #[default]
    Process,
    /// Models inside r1d.
    InProcess,
}

/// Default `[plugins] hang_timeout_s`.
pub const DEFAULT_HANG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The most threads a model may be given: 4 per CPU this process may run on
/// (`std::thread::available_parallelism`), at least 4. More only adds contention — 10,000
/// threads on 2 CPUs left r1d unable to answer or to stop in time.
pub fn max_threads() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cpus.saturating_mul(4))
        .unwrap_or(u32::MAX)
        .max(4)
}

/// Default `[server] parallel`: 4 answers at once, as Ollama's `OLLAMA_NUM_PARALLEL` default
/// where memory allows; each sequence reserves its own context of KV cache.
pub const DEFAULT_PARALLEL: u32 = 4;

/// The most `[server] parallel` may be: llama.cpp allows 256 sequences (`LLAMA_MAX_SEQ`); the
/// llama.cpp plugin accepts up to 64, beyond which a CPU or one GPU gains nothing.
pub const MAX_PARALLEL: u32 = 64;

/// Default queue depth (requests waiting behind the running one).
pub const DEFAULT_QUEUE_DEPTH: usize = 64;

/// Default `[server] stall_timeout_s`: how long a client may stop reading a streamed answer.
pub const DEFAULT_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Default `[server] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Default `[server] idle_timeout_s`.
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The largest config file r1d reads (1 MiB); a config is a few hundred bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// `[planner]`: the policy the planner applies (see `planner`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlannerConfig {
    /// Context length to plan the KV cache for (tokens). Default 8192: R1 thinks at length, and
    /// its model cards suggest room for long answers.
    pub context_length: u32,
    /// Slowest acceptable generation speed (tokens/s); default 10.
    pub min_tokens_per_s: f64,
    /// RAM to leave for the rest of the machine (bytes); default 1 GiB.
    pub reserve_ram_bytes: u64,
    /// Only consider this variant (`deepseek-r1:14b`, …); default: all.
    pub variant: Option<String>,
    /// Allow splitting a model between GPU and CPU; default true.
    pub allow_partial_offload: bool,
    /// Allow quantizations under 3 bits per weight (the 671B's dynamic 1.58–2.51-bit quants);
    /// default false.
    pub allow_extreme_quantization: bool,
    /// Answers to plan the KV cache for, each with `context_length` tokens: `[server] parallel`
    /// when set (copied here when the config is read; not a `[planner]` key). `None`: the
    /// planner plans one and says how many up to [`DEFAULT_PARALLEL`] also fit
    /// (`Candidate::parallel`).
    #[serde(skip)]
    pub sequences: Option<u32>,
    /// Between a local variant and a `[[remote]]` one: `local` (default) serves the best local
    /// variant that reaches `min_tokens_per_s` and a healthy remote only when none does;
    /// `best` serves whichever variant ranks higher (a healthy remote's on a tie).
    pub prefer: crate::backend::remote::Prefer,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            context_length: 8192,
            min_tokens_per_s: 10.0,
            reserve_ram_bytes: 1 << 30,
            variant: None,
            allow_partial_offload: true,
            allow_extreme_quantization: false,
            sequences: None,
            prefer: Default::default(),
        }
    }
}

impl Config {
    /// Parses a config from TOML text; `path` only names the source in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] for bad TOML, unknown keys or wrong types;
    /// [`ConfigError::Invalid`] for values out of range.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate(path)?;
        config.resolve_paths(path);
        config.planner.sequences = config.server.parallel;
        Ok(config)
    }

    /// Paths in the file as a person means them: `~/…` is in `$HOME`, and a relative path is
    /// relative to the config file's directory (not to r1d's working directory, which is `/`
    /// under systemd).
    fn resolve_paths(&mut self, file: &Path) {
        let base = file.parent().unwrap_or(Path::new("/"));
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let resolve = |p: &mut Option<PathBuf>| {
            let Some(path) = p.as_mut() else { return };
            if let (Ok(rest), Some(home)) = (path.strip_prefix("~"), &home) {
                *path = home.join(rest);
            } else if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.model.path);
        resolve(&mut self.server.socket);
        resolve(&mut self.server.api_key_file);
        resolve(&mut self.plugins.dir);
        resolve(&mut self.store.dir);
        resolve(&mut self.store.huggingface_cache);
        resolve(&mut self.store.ollama_models);
        for remote in &mut self.remote {
            resolve(&mut remote.api_key_file);
        }
    }

    /// Reads and parses `path`, which must be a regular file of at most [`MAX_CONFIG_BYTES`]
    /// (a FIFO there is refused at once instead of blocking r1d), or `/dev/null` (all defaults).
    ///
    /// # Errors
    /// See [`Config::parse`]; [`ConfigError::Read`] when the file cannot be read;
    /// [`ConfigError::File`] when it is not a regular file or is too large.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        // `--config /dev/null`: no file, all defaults (a device, but one that cannot block).
        if path == Path::new("/dev/null") {
            return Config::parse("", path);
        }
        let text =
            crate::files::read_text_bounded(path, MAX_CONFIG_BYTES).map_err(|e| match e {
                crate::files::FileError::Io { path, source } => ConfigError::Read { path, source },
                other => ConfigError::File(other),
            })?;
        Config::parse(&text, path)
    }

    /// The connection limits of `[server]` for [`crate::server::serve`].
    pub fn server_limits(&self) -> crate::server::Limits {
        crate::server::Limits {
            max_connections: self
                .server
                .max_connections
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            idle_timeout: self
                .server
                .idle_timeout_s
                .map_or(DEFAULT_IDLE_TIMEOUT, std::time::Duration::from_secs_f64),
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if self.model.context_length == Some(0) {
            return Err(invalid(
                "model.context_length must be at least 1 token".into(),
            ));
        }
        if self.model.threads == Some(0) {
            return Err(invalid("model.threads must be at least 1".into()));
        }
        if let Some(t) = self.model.threads.filter(|&t| t > max_threads()) {
            return Err(invalid(format!(
                "model.threads = {t} is more than {} (4 per CPU of this machine)",
                max_threads()
            )));
        }
        if let Some(kv) = &self.model.kv_cache_type {
            if !KV_CACHE_TYPES.contains(&kv.as_str()) {
                return Err(invalid(format!(
                    "model.kv_cache_type {kv:?} is not one of {}",
                    KV_CACHE_TYPES.join(", ")
                )));
            }
        }
        if self.planner.context_length == 0 {
            return Err(invalid(
                "planner.context_length must be at least 1 token".into(),
            ));
        }
        if !(self.planner.min_tokens_per_s.is_finite() && self.planner.min_tokens_per_s >= 0.0) {
            return Err(invalid(
                "planner.min_tokens_per_s must be a number of tokens/s, 0 or more".into(),
            ));
        }
        let w = &self.watch;
        for (key, value) in [
            ("watch.hardware_interval_s", w.hardware_interval_s),
            ("watch.settle_s", w.settle_s),
            ("watch.idle_s", w.idle_s),
            ("watch.queue_deadline_s", w.queue_deadline_s),
            ("watch.gpu_wait_s", w.gpu_wait_s),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(invalid(format!(
                    "{key} must be a number of seconds, 0 or more"
                )));
            }
        }
        if let Some(v) = self.server.stall_timeout_s {
            // Above a day it is no bound at all (and Duration::from_secs_f64 would overflow).
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return Err(invalid(
                    "server.stall_timeout_s must be a number of seconds above 0, at most 86400"
                        .into(),
                ));
            }
        }
        if let Some(v) = self.plugins.hang_timeout_s {
            if !(v.is_finite() && (1.0..=86_400.0).contains(&v)) {
                return Err(invalid(
                    "plugins.hang_timeout_s must be a number of seconds from 1 to 86400".into(),
                ));
            }
        }
        for (i, w) in self.backends.llamacpp.rpc_workers.iter().enumerate() {
            ggml_rpc_probe::check_endpoint(w)
                .map_err(|e| invalid(format!("backends.llamacpp.rpc_workers: {e}")))?;
            if self.backends.llamacpp.rpc_workers[..i].contains(w) {
                return Err(invalid(format!(
                    "backends.llamacpp.rpc_workers names {w} twice: an rpc-server serves one \
                     client, so each worker is listed once"
                )));
            }
        }
        if let Some(ms) = self.backends.llamacpp.rpc_link_latency_ms {
            if !(ms.is_finite() && (0.0..=10_000.0).contains(&ms)) {
                return Err(invalid(format!(
                    "backends.llamacpp.rpc_link_latency_ms must be 0 to 10000 milliseconds, got {ms}"
                )));
            }
        }
        if self.backends.llamacpp.rpc_link_bandwidth_bytes_per_s == Some(0) {
            return Err(invalid(
                "backends.llamacpp.rpc_link_bandwidth_bytes_per_s must be more than 0 bytes/s"
                    .into(),
            ));
        }
        if !self.backends.llamacpp.rpc_workers.is_empty()
            && self.plugins.isolation == Isolation::InProcess
        {
            return Err(invalid(
                "backends.llamacpp.rpc_workers needs plugins.isolation = \"process\": ggml's RPC \
                 client ends the process it runs in when a worker vanishes"
                    .into(),
            ));
        }
        if let Some(n) = self.server.parallel {
            if !(1..=MAX_PARALLEL).contains(&n) {
                return Err(invalid(format!(
                    "server.parallel must be 1 to {MAX_PARALLEL} answers at once, got {n}"
                )));
            }
        }
        if self.server.max_connections == Some(0) {
            return Err(invalid("server.max_connections must be at least 1".into()));
        }
        if let Some(v) = self.server.idle_timeout_s {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return Err(invalid(
                    "server.idle_timeout_s must be a number of seconds above 0, at most 86400"
                        .into(),
                ));
            }
        }
        crate::backend::remote::validate(&self.remote).map_err(invalid)?;
        if let Some(v) = &self.planner.variant {
            if crate::catalog::variant(v).is_none() {
                let known: Vec<&str> = crate::catalog::VARIANTS.iter().map(|v| v.id).collect();
                return Err(invalid(format!(
                    "planner.variant {v:?} is not one of {}",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// What differs between two configs, one line per key (`[model] path: "a" → "b"`), in file
/// order; empty when they are equal. For the reload log and `/r1/events`.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        format!("[{k}]")
                    } else {
                        format!("{prefix} {k}")
                    };
                    if v.is_object() && prefix.is_empty() {
                        flatten(&key, v, out);
                    } else {
                        out.push((key, v.to_string()));
                    }
                }
            }
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let as_pairs = |c: &Config| {
        let mut out = Vec::new();
        flatten("", &serde_json::to_value(c).unwrap_or_default(), &mut out);
        out
    };
    let (a, b) = (as_pairs(old), as_pairs(new));
    let unset = || "(default)".to_owned();
    let mut lines = Vec::new();
    for (key, new_value) in &b {
        let old_value = a.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        if old_value.as_deref() != Some(new_value.as_str()) {
            let show = |v: &str| if v == "null" { unset() } else { v.to_owned() };
            lines.push(format!(
                "{key}: {} → {}",
                show(&old_value.unwrap_or_else(|| "null".into())),
                show(new_value)
            ));
        }
    }
    lines
}

/// Whether r1d runs as the system service (root) or for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// System service: `/etc/r1d`, `/run/r1d`, `/var/lib/r1d`.
    System,
    /// User mode: XDG directories.
    User,
}

impl Mode {
    /// System mode when running as root, user mode otherwise.
    pub fn detect() -> Mode {
        if r1d_client::euid() == 0 {
            Mode::System
        } else {
            Mode::User
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x.toml")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn rpc_workers_are_host_port_and_need_process_isolation() {
        let c = Config::parse(
            "[backends.llamacpp]\nrpc_workers = [\"10.0.0.2:50052\", \"w.lan:50053\"]\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(
            c.backends.llamacpp.rpc_workers,
            ["10.0.0.2:50052", "w.lan:50053"]
        );
        let e = Config::parse(
            "[backends.llamacpp]\nrpc_workers = [\"10.0.0.2\"]\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("backends.llamacpp.rpc_workers")
                && e.contains("`10.0.0.2` is not HOST:PORT"),
            "{e}"
        );
        let e = Config::parse(
            "[plugins]\nisolation = \"in-process\"\n[backends.llamacpp]\nrpc_workers = [\"h:1\"]\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs plugins.isolation = \"process\""), "{e}");
        let e = Config::parse(
            "[backends.llamacpp]\nrpc_workers = [\"h:1\", \"g:2\", \"h:1\"]\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rpc_workers names h:1 twice"), "{e}");
        let e = Config::parse(
            "[backends.llamacpp]\nrpc_workers = [\"127.0.0.1:99999\"]\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("port 99999 is not a TCP port (1 to 65535)") && !e.contains("IPv6"),
            "{e}"
        );
        let c = Config::parse(
            "[backends.llamacpp]\nrpc_workers = [\"h:1\"]\nrpc_link_latency_ms = 0.5\n\
             rpc_link_bandwidth_bytes_per_s = 1250000000\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.backends.llamacpp.rpc_link_latency_ms, Some(0.5));
        assert_eq!(
            c.backends.llamacpp.rpc_link_bandwidth_bytes_per_s,
            Some(1_250_000_000)
        );
        let e = Config::parse(
            "[backends.llamacpp]\nrpc_link_latency_ms = -1\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rpc_link_latency_ms must be 0 to 10000"), "{e}");
        let e = Config::parse("[backends.llamacpp]\nworkers = []\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `workers`"), "{e}");
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            "[model]\npath = \"/m.gguf\"\ncontext_length = 4096\ngpu_layers = 99\n[server]\nsocket = \"/s.sock\"\n[plugins]\ndir = \"/p\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.model.path.as_deref(), Some(Path::new("/m.gguf")));
        assert_eq!(c.model.context_length, Some(4096));
        assert_eq!(c.model.gpu_layers, Some(99));
        assert_eq!(c.server.socket.as_deref(), Some(Path::new("/s.sock")));
        assert_eq!(c.plugins.dir.as_deref(), Some(Path::new("/p")));
    }

    #[test]
    fn typo_in_key_names_file_line_and_key() {
        let err = Config::parse(
            "[model]\npath = \"/m.gguf\"\ncontext_lenght = 4096\n",
            Path::new("/etc/r1d/r1d.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/r1d/r1d.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("context_lenght"), "{err}");
    }

    #[test]
    fn planner_section_parses_and_defaults() {
        let c = Config::parse(
            "[planner]\ncontext_length = 4096\nvariant = \"deepseek-r1:14b\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.planner.context_length, 4096);
        assert_eq!(c.planner.variant.as_deref(), Some("deepseek-r1:14b"));
        assert_eq!(c.planner.min_tokens_per_s, 10.0);
        assert!(c.planner.allow_partial_offload && !c.planner.allow_extreme_quantization);
        for bad in [
            "variant = \"deepseek-r1:13b\"",
            "min_tokens = 5",
            "context_length = 0",
        ] {
            let err = Config::parse(&format!("[planner]\n{bad}\n"), Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("planner") || err.contains("min_tokens"),
                "{err}"
            );
        }
    }

    #[test]
    fn store_section_parses_and_defaults() {
        let c = Config::parse(
            "[store]\ndir = \"/m\"\nauto_pull = true\nscan_ollama = false\nreserve_disk_bytes = 5\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.store.dir.as_deref(), Some(Path::new("/m")));
        assert!(c.store.auto_pull && !c.store.scan_ollama && c.store.scan_huggingface);
        assert_eq!(c.store.reserve_disk_bytes, 5);
        assert_eq!(Config::default().store.reserve_disk_bytes, 1 << 30);
        assert!(Config::parse("[store]\nautopull = true\n", Path::new("c.toml")).is_err());
    }

    #[test]
    fn server_limits_parse_default_and_reject_nonsense() {
        let c = Config::parse(
            "[server]\nmax_connections = 8\nidle_timeout_s = 2.5\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let limits = c.server_limits();
        assert_eq!(limits.max_connections, 8);
        assert_eq!(limits.idle_timeout, std::time::Duration::from_millis(2500));
        let d = Config::default().server_limits();
        assert_eq!(d.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(d.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        for bad in [
            "max_connections = 0",
            "idle_timeout_s = 0",
            "idle_timeout_s = -1",
        ] {
            let e = Config::parse(&format!("[server]\n{bad}\n"), Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("server."), "{e}");
        }
    }

    #[test]
    fn a_config_over_a_mebibyte_or_not_a_regular_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, "#".repeat(MAX_CONFIG_BYTES as usize + 1)).unwrap();
        let e = Config::load(&big).unwrap_err().to_string();
        assert!(e.contains("big.toml") && e.contains("1048576"), "{e}");
        let e = Config::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn bad_kv_cache_type_is_rejected() {
        let err = Config::parse("[model]\nkv_cache_type = \"q3\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kv_cache_type"), "{err}");
    }

    #[test]
    fn diff_names_each_changed_key_with_old_and_new_values() {
        let old = Config::parse("[model]\npath = \"/m/a.gguf\"\n", Path::new("a.toml")).unwrap();
        let new = Config::parse(
            "[model]\npath = \"/m/b.gguf\"\n[watch]\nswap_policy = \"idle\"\n",
            Path::new("b.toml"),
        )
        .unwrap();
        assert_eq!(
            diff(&old, &new),
            vec![
                "[model] path: \"/m/a.gguf\" → \"/m/b.gguf\"".to_owned(),
                "[watch] swap_policy: \"auto\" → \"idle\"".to_owned(),
            ]
        );
        assert!(diff(&new, &new).is_empty());
        let unset = Config::default();
        assert_eq!(
            diff(&old, &unset),
            vec!["[model] path: \"/m/a.gguf\" → (default)".to_owned()]
        );
    }

    #[test]
    fn watch_section_parses_and_rejects_negative_seconds_and_unknown_policies() {
        let c = Config::parse(
            "[watch]\nsettle_s = 5\nhardware_interval_s = 1.5\nswap_policy = \"manual\"\n",
            Path::new("r1d.toml"),
        )
        .unwrap();
        assert_eq!(c.watch.settle_s, 5.0);
        assert_eq!(c.watch.swap_policy, SwapPolicy::Manual);
        assert_eq!(c.watch.idle_s, WatchConfig::default().idle_s);
        let e = Config::parse("[watch]\nsettle_s = -1\n", Path::new("r1d.toml")).unwrap_err();
        assert!(e.to_string().contains("watch.settle_s"), "{e}");
        let e = Config::parse(
            "[watch]\nswap_policy = \"sometimes\"\n",
            Path::new("r1d.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
    }

    #[test]
    fn shipped_config_with_every_key_uncommented_parses() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/r1d.toml");
        let text = std::fs::read_to_string(&shipped).unwrap();
        // `#key = value` lines are the documented keys; `# prose` lines stay comments.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if !rest.starts_with(' ') && rest.contains(" = ") => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::parse(&uncommented, &shipped).unwrap();
        assert_eq!(
            c.watch,
            WatchConfig::default(),
            "documented [watch] values are the defaults"
        );
        assert_eq!(
            c.server.listen,
            vec!["127.0.0.1:11434".to_owned()],
            "the documented listen address is the example"
        );
        assert_eq!(
            c.planner,
            PlannerConfig {
                variant: Some("deepseek-r1:14b".into()),
                // The documented `[server] parallel`, which the planner plans for.
                sequences: Some(DEFAULT_PARALLEL),
                ..PlannerConfig::default()
            },
            "documented [planner] values are the defaults (the variant is an example)"
        );
    }

    #[test]
    fn home_and_relative_paths_resolve_against_home_and_the_config_directory() {
        let home = std::env::var("HOME").unwrap();
        let c = Config::parse(
            "[model]\npath = \"~/models/a.gguf\"\n[store]\ndir = \"models\"\n[plugins]\ndir = \"/abs/plugins\"\n",
            Path::new("/etc/r1d/r1d.toml"),
        )
        .unwrap();
        assert_eq!(
            c.model.path.unwrap(),
            PathBuf::from(home).join("models/a.gguf")
        );
        assert_eq!(c.store.dir.unwrap(), PathBuf::from("/etc/r1d/models"));
        assert_eq!(c.plugins.dir.unwrap(), PathBuf::from("/abs/plugins"));
    }
}
