//! The plugin host: finds backend plugins, checks their ABI, and wraps them in [`Backend`] /
//! [`LoadedModel`].
//!
//! **Architecture invariant**: nothing outside this module touches the raw plugin ABI. A plugin's
//! panic is caught inside the plugin (the SDK's `catch_unwind`) and arrives here as
//! `R1_ERR_PANIC`; an error status becomes a [`BackendError`]; neither takes the daemon down.
//! Plugins are loaded once and never unloaded (their code may still be referenced by callbacks).
//!
//! The traits are what the engine sees. By default (`[plugins] isolation = "process"`) a model
//! is loaded and run in a worker process ([`worker`], [`worker_child`]), so a crash inside a
//! backend ends that process, not r1d; plugins are still probed in r1d's process at discovery.

use std::ffi::c_void;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

pub mod remote;
pub mod worker;
pub mod worker_child;

pub use worker::WorkerCommand;

use r1_plugin_abi::json::{
    Estimate, GenerateRequest, GenerateResult, LoadParams, ModelInfo, ProbeReport,
};
use r1_plugin_abi::{
    self as abi, R1Model, R1OwnedStr, R1PluginApi, R1PluginEntryFn, R1Status, R1Str,
    R1_PLUGIN_ABI_VERSION,
};

/// Errors of the plugin host and of plugin calls.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The plugin directory or a plugin file is writable by others than its owner and root.
    #[error("refusing plugins in {path}: it is writable by users other than its owner and root (mode {mode:o})")]
    InsecurePath {
        /// The offending path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The plugin directory or a plugin file belongs to a user other than root and r1d's own:
    /// that user could replace it with any code.
    #[error("refusing plugins in {path}: it belongs to uid {owner}, neither root nor the user r1d runs as (uid {own}), and its owner could replace it")]
    InsecureOwner {
        /// The offending path.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// r1d's effective uid.
        own: u32,
    },
    /// `dlopen` or `dlsym` failed.
    #[error("failed to load plugin {path}: {}", loader_words(source))]
    Open {
        /// The plugin file.
        path: PathBuf,
        /// The loader's error.
        source: libloading::Error,
    },
    /// The library does not export `r1_plugin_entry`.
    #[error("failed to load plugin {path}: it does not export r1_plugin_entry, so it is not an r1d plugin ({})", loader_words(source))]
    NoEntry {
        /// The plugin file.
        path: PathBuf,
        /// The loader's error.
        source: libloading::Error,
    },
    /// The plugin returned NULL from its entry point.
    #[error("plugin {path} refused host ABI version {host}")]
    Refused {
        /// The plugin file.
        path: PathBuf,
        /// Our ABI version.
        host: u32,
    },
    /// The plugin implements another ABI version.
    #[error("plugin {name} ({path}) implements plugin ABI version {plugin}, but this r1d speaks version {host}; rebuild the plugin against r1d's plugins/abi")]
    AbiMismatch {
        /// Backend name the plugin reports.
        name: String,
        /// The plugin file.
        path: PathBuf,
        /// The plugin's ABI version.
        plugin: u32,
        /// Ours.
        host: u32,
    },
    /// The plugin's table is smaller than ABI version 1 requires (its first published fields).
    #[error("plugin {path} has a function table of {size} bytes, smaller than the {needed} bytes ABI version 1 requires")]
    TableTooSmall {
        /// The plugin file.
        path: PathBuf,
        /// Its `struct_size`.
        size: u32,
        /// What we need.
        needed: usize,
    },
    /// No plugin reads this model's format.
    #[error(
        "no backend plugin can load {path} (format {format}); available backends: {available}"
    )]
    NoBackend {
        /// The model path.
        path: PathBuf,
        /// Detected format.
        format: String,
        /// Names of usable backends.
        available: String,
    },
    /// The plugin directory or a plugin file cannot be read (missing, a dangling link).
    #[error("plugin path {path} cannot be read: {source}")]
    PluginPath {
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model path is missing or unreadable.
    #[error("failed to open model {path}: {source}")]
    ModelFile {
        /// The model path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A plugin call returned an error status.
    #[error("{message}")]
    Call {
        /// The backend.
        backend: String,
        /// The ABI status.
        status: R1Status,
        /// The plugin's message.
        message: String,
    },
    /// An upstream server (a `[[remote]]`) failed to answer: no connection, an HTTP error, a
    /// broken stream (`timeout: false`, a gateway's 502), or no answer within a time limit
    /// (`timeout: true`, a gateway's 504). `message` names the remote and the cause.
    #[error("{message}")]
    Upstream {
        /// The upstream did not answer in time.
        timeout: bool,
        /// The remote (name and URL) and what went wrong.
        message: String,
    },
    /// The worker process that ran the model died or was killed as hung; `reason` says how
    /// (signal or exit status) and its last log line.
    #[error("{reason}")]
    WorkerDied {
        /// The backend.
        backend: String,
        /// How it ended.
        reason: String,
    },
    /// Opening or probing the plugin in a worker process failed: `reason` is the error the
    /// worker met (the same text as in process) or how the worker ended (a crash, a hang).
    #[error("{reason}")]
    ProbeFailed {
        /// The plugin file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A plugin returned JSON we could not read.
    #[error("plugin {backend} returned malformed {what}: {source}")]
    BadJson {
        /// The backend.
        backend: String,
        /// Which document.
        what: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// What the dynamic loader said: libloading 0.9's message is "dlopen failed", its source the
/// loader's own words (`libcuda.so.1: cannot open shared object file: …`, `invalid ELF header`).
fn loader_words(e: &libloading::Error) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string())
}

impl BackendError {
    /// The ABI status of a failed plugin call, if this is one.
    pub fn status(&self) -> Option<R1Status> {
        match self {
            BackendError::Call { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A backend as the engine sees it.
pub trait Backend: Send + Sync {
    /// Backend name, e.g. `llamacpp`.
    fn name(&self) -> &str;
    /// What `probe` reported at discovery.
    fn probe_report(&self) -> &ProbeReport;
    /// The plugin's own version string (its table's `version`).
    fn version(&self) -> &str;
    /// The plugin file it was opened from; `None` for backends built into r1d (`remote`).
    fn file(&self) -> Option<&Path> {
        None
    }
    /// Loads a model; `progress(fraction)` returns false to abort.
    ///
    /// # Errors
    /// [`BackendError::Call`] with the plugin's message (which names the file and the reason).
    fn load(
        &self,
        params: &LoadParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Box<dyn LoadedModel>, BackendError>;

    /// What loading with `params` would allocate, by the backend's own accounting, without
    /// loading the weights (the ABI's `estimate`). `Ok(None)` when the backend has no estimate:
    /// a plugin from before the call was appended, or one that answers "unsupported".
    ///
    /// # Errors
    /// [`BackendError::Call`] when the plugin fails (e.g. it cannot read the file),
    /// [`BackendError::BadJson`] for an answer that is not an estimate.
    fn estimate(&self, params: &LoadParams) -> Result<Option<Estimate>, BackendError> {
        let _ = params;
        Ok(None)
    }

    /// Whether its loads get RPC workers (`extra.rpc_workers`, [`PluginHost::with_load_extra`]):
    /// offloaded layers may then leave this machine, so its RAM holds only the rest.
    fn offloads_to_rpc(&self) -> bool {
        false
    }
}

/// A resident model. Owned by one thread at a time (the engine's); not shared.
pub trait LoadedModel: Send + Sync {
    /// What was loaded.
    fn info(&self) -> &ModelInfo;
    /// The backend serving it.
    fn backend_name(&self) -> &str;
    /// How many generations the model runs at once (at least 1; the plugin's
    /// `parallel_sequences`).
    fn parallel_sequences(&self) -> u32 {
        self.info().parallel_sequences.max(1)
    }
    /// Tokenizes text (see `tokenize` in `r1_plugin.h`).
    ///
    /// # Errors
    /// [`BackendError::Call`] when the plugin fails.
    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<i32>, BackendError>;
    /// Generates, handing each piece to `on_token`; returning false stops the generation. Up to
    /// [`LoadedModel::parallel_sequences`] calls may run at once from different threads (more
    /// wait for each other).
    ///
    /// # Errors
    /// [`BackendError::Call`] when the plugin fails (including a caught panic, status
    /// `R1_ERR_PANIC`).
    fn generate(
        &self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(&[u8], i32) -> bool,
    ) -> Result<GenerateResult, BackendError>;
    /// Why the model can serve no more (its worker process died or was killed as hung), once
    /// that happened; `None` while it serves. An in-process model never fails this way.
    fn failure(&self) -> Option<String> {
        None
    }
    /// Runs `hook` once, on another thread, when the model fails as [`LoadedModel::failure`]
    /// says (at once if it already has); never for an unload. In-process models never call it.
    fn on_failure(&self, hook: Box<dyn FnOnce(String) + Send>) {
        drop(hook);
    }
    /// The worker process holding the model, when it runs in one.
    fn worker_pid(&self) -> Option<u32> {
        None
    }
    /// Ends the model's worker process at once (r1d stops): every call waiting on it fails now
    /// instead of when the plugin next reports. Not a failure ([`LoadedModel::on_failure`] is not
    /// called). In-process models cannot be stopped this way and ignore it.
    fn abort(&self) {}
    /// A model that takes the conversation itself instead of a rendered prompt (the `remote`
    /// backend: its server applies its own template); `None` for plugin models.
    fn conversation(&self) -> Option<&dyn remote::ConversationModel> {
        None
    }
}

/// A plugin file found in the plugin directory, usable or not.
#[derive(Debug, Clone)]
pub struct PluginRecord {
    /// The file.
    pub path: PathBuf,
    /// Backend name, when the table could be read.
    pub name: Option<String>,
    /// Backend version.
    pub version: Option<String>,
    /// The probe report, when probed.
    pub probe: Option<ProbeReport>,
    /// Why it is not usable.
    pub error: Option<String>,
}

/// A backend whose loads get extra backend-specific parameters from r1d's config
/// ([`PluginHost::with_load_extra`]).
struct LoadExtra {
    inner: std::sync::Arc<dyn Backend>,
    extra: serde_json::Value,
}

impl Backend for LoadExtra {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> &str {
        self.inner.version()
    }

    fn probe_report(&self) -> &ProbeReport {
        self.inner.probe_report()
    }

    fn file(&self) -> Option<&Path> {
        self.inner.file()
    }

    fn load(
        &self,
        params: &LoadParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Box<dyn LoadedModel>, BackendError> {
        let mut params = params.clone();
        if !params.extra.is_object() {
            params.extra = serde_json::Value::Object(Default::default());
        }
        if let (Some(into), Some(from)) = (params.extra.as_object_mut(), self.extra.as_object()) {
            for (k, v) in from {
                into.insert(k.clone(), v.clone());
            }
        }
        self.inner.load(&params, progress)
    }

    fn estimate(&self, params: &LoadParams) -> Result<Option<Estimate>, BackendError> {
        self.inner.estimate(params)
    }

    fn offloads_to_rpc(&self) -> bool {
        self.extra
            .get("rpc_workers")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|w| !w.is_empty())
            || self.inner.offloads_to_rpc()
    }
}

/// The longest probe `reason` r1d logs and lists, in bytes; a longer one is cut.
const MAX_REASON_BYTES: usize = 1024;

/// All plugins of one directory.
pub struct PluginHost {
    dir: PathBuf,
    backends: Vec<std::sync::Arc<dyn Backend>>,
    records: Vec<PluginRecord>,
    /// Backends built into r1d (the `remote` backend): chosen only when a load names them, and
    /// listed neither as plugins nor as backends.
    internal: Vec<std::sync::Arc<dyn Backend>>,
}

impl PluginHost {
    /// Scans `dir` for `libr1_plugin_*.so`, loads each, checks its ABI and probes it. A plugin
    /// that fails any step is recorded with its error (and logged) and skipped; the others load.
    ///
    /// # Errors
    /// [`BackendError::InsecurePath`] when `dir` itself is writable by others (nothing is loaded
    /// from it); [`BackendError::PluginPath`] when it cannot be read.
    pub fn discover(dir: &Path) -> Result<PluginHost, BackendError> {
        PluginHost::discover_with(dir, None)
    }

    /// As [`PluginHost::discover`]; with `worker`, each plugin is opened and probed in a worker
    /// process started by that command, which ends after the probe (at most
    /// [`worker::PROBE_TIMEOUT`] or the command's hang timeout, the shorter), and each backend
    /// loads its models and answers estimates in workers too (see [`worker`]). r1d itself then
    /// never opens a plugin: a plugin that crashes or hangs while opened or probed is recorded
    /// with why and skipped, like one whose ABI does not match.
    ///
    /// # Errors
    /// As [`PluginHost::discover`].
    pub fn discover_with(
        dir: &Path,
        worker: Option<WorkerCommand>,
    ) -> Result<PluginHost, BackendError> {
        check_permissions(dir)?;
        let entries = std::fs::read_dir(dir).map_err(|source| BackendError::PluginPath {
            path: dir.to_owned(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libr1_plugin_") && n.ends_with(".so"))
            })
            .collect();
        paths.sort();
        let mut host = PluginHost {
            dir: dir.to_owned(),
            backends: Vec::new(),
            records: Vec::new(),
            internal: Vec::new(),
        };
        // Each plugin is opened and probed in a short-lived worker when models run in workers:
        // a plugin's initialisers and probe are backend code too (a GPU runtime's, say) and must
        // not take r1d down. The probes run at once, one thread each, so start-up waits for the
        // slowest, not for their sum.
        let opened: Vec<Result<std::sync::Arc<dyn Backend>, BackendError>> = match &worker {
            Some(command) => std::thread::scope(|scope| {
                let probes: Vec<_> = paths
                    .iter()
                    .map(|path| scope.spawn(|| worker::probe_in_worker(command, path)))
                    .collect();
                probes
                    .into_iter()
                    .map(|probe| {
                        probe.join().unwrap_or_else(|_| {
                            Err(BackendError::ProbeFailed {
                                path: PathBuf::new(),
                                reason: "the thread probing a plugin panicked".into(),
                            })
                        })
                    })
                    .collect()
            }),
            None => paths
                .iter()
                .map(|path| {
                    DylibBackend::open(path)
                        .map(|b| std::sync::Arc::new(b) as std::sync::Arc<dyn Backend>)
                })
                .collect(),
        };
        for (path, opened) in paths.into_iter().zip(opened) {
            match opened {
                Ok(backend) => {
                    let mut report = backend.probe_report().clone();
                    // A plugin's reason is one line of the log and of `/r1/backends`, not a dump.
                    if let Some(reason) = report.reason.as_mut() {
                        if reason.len() > MAX_REASON_BYTES {
                            let mut cut = MAX_REASON_BYTES;
                            while !reason.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            reason.truncate(cut);
                            reason.push_str(" … (cut by r1d)");
                        }
                    }
                    tracing::info!(
                        plugin = backend.name(),
                        version = backend.version(),
                        available = report.available,
                        formats = ?report.formats,
                        "found backend plugin {}",
                        path.display()
                    );
                    // Why it is unusable is a warning; what a usable plugin says of itself
                    // ("CPU only", the CPU variant it chose) is information.
                    match &report.reason {
                        Some(reason) if report.available => {
                            tracing::info!(plugin = backend.name(), "{reason}")
                        }
                        Some(reason) => tracing::warn!(plugin = backend.name(), "{reason}"),
                        None => {}
                    }
                    host.records.push(PluginRecord {
                        path: path.clone(),
                        name: Some(backend.name().to_owned()),
                        version: Some(backend.version().to_owned()),
                        probe: Some(report.clone()),
                        error: if report.available {
                            None
                        } else {
                            report.reason.clone()
                        },
                    });
                    if report.available {
                        host.backends.push(backend);
                    }
                }
                Err(e) => {
                    tracing::error!("{e}");
                    let name = match &e {
                        BackendError::AbiMismatch { name, .. } => Some(name.clone()),
                        _ => None,
                    };
                    host.records.push(PluginRecord {
                        path,
                        name,
                        version: None,
                        probe: None,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        Ok(host)
    }

    /// Adds `extra` to the [`LoadParams::extra`] of every load on the backend named `backend`
    /// (keys of `extra` win over the request's), e.g. `{"rpc_workers": [...]}` for llama.cpp.
    /// Estimates are left as they are: they plan the local share.
    pub fn with_load_extra(mut self, backend: &str, extra: serde_json::Value) -> PluginHost {
        for b in &mut self.backends {
            if b.name() == backend {
                *b = std::sync::Arc::new(LoadExtra {
                    inner: b.clone(),
                    extra: extra.clone(),
                });
            }
        }
        self
    }

    /// A host with no plugins (the directory was refused or missing), remembering why.
    pub fn empty(dir: &Path, error: String) -> PluginHost {
        PluginHost {
            dir: dir.to_owned(),
            backends: Vec::new(),
            records: vec![PluginRecord {
                path: dir.to_owned(),
                name: None,
                version: None,
                probe: None,
                error: Some(error),
            }],
            internal: Vec::new(),
        }
    }

    /// Adds a backend built into r1d (the `remote` backend), chosen only when a load names it.
    pub fn with_internal(mut self, backend: std::sync::Arc<dyn Backend>) -> PluginHost {
        self.internal.push(backend);
        self
    }

    /// The directory scanned.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every plugin file found, with its state.
    pub fn records(&self) -> &[PluginRecord] {
        &self.records
    }

    /// Usable backends.
    pub fn backends(&self) -> &[std::sync::Arc<dyn Backend>] {
        &self.backends
    }

    /// Picks the backend for a model: the one named, or the highest-scoring backend that reads
    /// the model's format (detected from the file: GGUF magic, `.echo`, an ONNX directory).
    ///
    /// # Errors
    /// [`BackendError::ModelFile`] when the model cannot be read, [`BackendError::NoBackend`] when
    /// no usable backend fits.
    pub fn select(
        &self,
        model: &Path,
        wanted: Option<&str>,
    ) -> Result<std::sync::Arc<dyn Backend>, BackendError> {
        if let Some(internal) = self.internal.iter().find(|b| Some(b.name()) == wanted) {
            return Ok(internal.clone());
        }
        if wanted == Some(remote::BACKEND) {
            return Err(BackendError::NoBackend {
                path: model.to_owned(),
                format: "remote".into(),
                available: "no [[remote]] is configured".into(),
            });
        }
        let format = detect_format(model)?;
        let available = self
            .backends
            .iter()
            .map(|b| b.name().to_owned())
            .collect::<Vec<_>>()
            .join(", ");
        self.backends
            .iter()
            .filter(|b| match wanted {
                Some(name) => b.name() == name,
                None => b.probe_report().formats.iter().any(|f| f == &format),
            })
            .max_by_key(|b| b.probe_report().score)
            .cloned()
            .ok_or_else(|| BackendError::NoBackend {
                path: model.to_owned(),
                format: match wanted {
                    Some(name) => format!("{format}, backend {name} requested"),
                    None => format,
                },
                available: if available.is_empty() {
                    "none".into()
                } else {
                    available
                },
            })
    }
}

/// Detects a model's format: `gguf` (magic `GGUF`), `onnx` (a directory with `model.onnx` or a
/// `.onnx` file), `echo` (extension `.echo`), else `unknown`.
///
/// # Errors
/// [`BackendError::ModelFile`] when the path cannot be opened.
pub fn detect_format(path: &Path) -> Result<String, BackendError> {
    use std::io::Read;
    let err = |source| BackendError::ModelFile {
        path: path.to_owned(),
        source,
    };
    // A FIFO, socket or device is refused here, before anything opens it: opening a FIFO
    // would block the engine thread until a writer came.
    let meta = crate::files::check_model_path(path).map_err(|e| match e {
        crate::files::FileError::Io { source, .. } => err(source),
        crate::files::FileError::NotRegular { kind, .. } => err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {kind}, not a regular file or a directory"),
        )),
        other => err(std::io::Error::other(other.to_string())),
    })?;
    if meta.is_dir() {
        return Ok(if path.join("model.onnx").exists() {
            "onnx"
        } else {
            "unknown"
        }
        .into());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "echo" {
        return Ok("echo".into());
    }
    if ext == "onnx" {
        return Ok("onnx".into());
    }
    let mut magic = [0u8; 4];
    let mut file = crate::files::open_regular(path).map_err(|e| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            e.to_string(),
        ))
    })?;
    let n = file.read(&mut magic).map_err(err)?;
    Ok(if n == 4 && &magic == b"GGUF" {
        "gguf"
    } else {
        "unknown"
    }
    .into())
}

/// Refuses a path that users other than its owner and root can write to (group-writable by a
/// non-root group, or world-writable), or that belongs to another user than root and the one
/// r1d runs as: loading a library from there is running their code. A symlink is judged by what
/// it points to.
fn check_permissions(path: &Path) -> Result<(), BackendError> {
    let meta = std::fs::metadata(path).map_err(|source| BackendError::PluginPath {
        path: path.to_owned(),
        source,
    })?;
    let own = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != own {
        return Err(BackendError::InsecureOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            own,
        });
    }
    let mode = meta.mode() & 0o7777;
    let world_writable = mode & 0o002 != 0;
    let group_writable = mode & 0o020 != 0 && meta.gid() != 0;
    if world_writable || group_writable {
        return Err(BackendError::InsecurePath {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// A plugin loaded into this process with libloading.
struct DylibBackend {
    api: &'static R1PluginApi,
    /// The plugin file.
    path: PathBuf,
    name: String,
    version: String,
    probe: ProbeReport,
}

/// Opens one plugin file in this process: checks its permissions and ABI, and probes it. The
/// worker process opens the plugin it serves with this.
///
/// # Errors
/// As [`PluginHost::discover`] records them per plugin: [`BackendError::InsecurePath`],
/// [`BackendError::Open`], [`BackendError::NoEntry`], [`BackendError::Refused`],
/// [`BackendError::AbiMismatch`], [`BackendError::TableTooSmall`], or the probe's error.
pub fn open_plugin(path: &Path) -> Result<std::sync::Arc<dyn Backend>, BackendError> {
    Ok(std::sync::Arc::new(DylibBackend::open(path)?))
}

/// Routes plugin log lines into the host's `tracing`, under target `r1d::plugin`.
unsafe extern "C" fn log_sink(user_data: *mut c_void, level: i32, target: R1Str, message: R1Str) {
    // SAFETY: `user_data` is the leaked `String` with the plugin name set in `DylibBackend::open`,
    // valid for the rest of the process; the strings are borrowed for this call (ABI contract).
    let (plugin, target, message) = unsafe {
        (
            &*(user_data as *const String),
            String::from_utf8_lossy(target.as_bytes()),
            String::from_utf8_lossy(message.as_bytes()),
        )
    };
    emit_plugin_log(plugin, level, &target, &message);
}

/// Logs a plugin's line at its level (`R1_LOG_*`), under target `r1d::plugin`, with the plugin's
/// name and the line's own target as fields.
pub(crate) fn emit_plugin_log(plugin: &str, level: i32, target: &str, message: &str) {
    match level {
        abi::R1_LOG_ERROR => {
            tracing::error!(target: "r1d::plugin", %plugin, source = %target, "{message}")
        }
        abi::R1_LOG_WARN => {
            tracing::warn!(target: "r1d::plugin", %plugin, source = %target, "{message}")
        }
        abi::R1_LOG_INFO => {
            tracing::info!(target: "r1d::plugin", %plugin, source = %target, "{message}")
        }
        abi::R1_LOG_DEBUG => {
            tracing::debug!(target: "r1d::plugin", %plugin, source = %target, "{message}")
        }
        _ => tracing::trace!(target: "r1d::plugin", %plugin, source = %target, "{message}"),
    }
}

/// Takes ownership of a plugin-allocated string: copies it and frees the original.
fn take_string(api: &R1PluginApi, s: R1OwnedStr) -> String {
    if s.ptr.is_null() {
        return String::new();
    }
    // SAFETY: a non-null owned string from this plugin points to `len` initialised bytes until we
    // free it, which we do right after copying.
    let text =
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(s.ptr, s.len) }).into_owned();
    // SAFETY: the string was allocated by this plugin and is freed exactly once.
    unsafe { (api.free_string)(s) };
    text
}

/// Turns a status and error string into a result.
fn check(
    api: &R1PluginApi,
    backend: &str,
    status: R1Status,
    error: R1OwnedStr,
) -> Result<(), BackendError> {
    let message = take_string(api, error);
    if status == abi::R1_OK {
        return Ok(());
    }
    let message = if message.is_empty() {
        format!("plugin {backend} failed: {}", abi::status_name(status))
    } else {
        message
    };
    Err(BackendError::Call {
        backend: backend.to_owned(),
        status,
        message,
    })
}

fn parse<T: serde::de::DeserializeOwned>(
    backend: &str,
    what: &'static str,
    json: &str,
) -> Result<T, BackendError> {
    serde_json::from_str(json).map_err(|source| BackendError::BadJson {
        backend: backend.to_owned(),
        what,
        source,
    })
}

impl DylibBackend {
    fn open(path: &Path) -> Result<DylibBackend, BackendError> {
        check_permissions(path)?;
        let open_err = |source| BackendError::Open {
            path: path.to_owned(),
            source,
        };
        // SAFETY: loading a library runs its initialisers. The directory and file passed the
        // permission check (only their owner and root can write them), which is the trust
        // boundary docs/architecture.md sets for plugins ("The plugin ABI").
        let library = unsafe { libloading::Library::new(path) }.map_err(open_err)?;
        // Plugins are never unloaded: their code may be referenced by callbacks and statics.
        let library: &'static libloading::Library = Box::leak(Box::new(library));
        // SAFETY: the symbol's type is fixed by the ABI (`R1PluginEntryFn`).
        let entry: libloading::Symbol<'static, R1PluginEntryFn> =
            unsafe { library.get(abi::ENTRY_SYMBOL) }.map_err(|source| BackendError::NoEntry {
                path: path.to_owned(),
                source,
            })?;
        // SAFETY: calling the entry point with our version is the documented handshake.
        let api_ptr = unsafe { entry(R1_PLUGIN_ABI_VERSION) };
        if api_ptr.is_null() {
            return Err(BackendError::Refused {
                path: path.to_owned(),
                host: R1_PLUGIN_ABI_VERSION,
            });
        }
        // SAFETY: a non-null table lives for the process (ABI contract). We read only the leading
        // `abi_version`, present in every version, before checking it; `read_table` checks the size.
        let plugin_version = unsafe { (*api_ptr).abi_version };
        let name_of = || {
            // SAFETY: `name` is part of every version's prefix; it is a static string.
            String::from_utf8_lossy(unsafe { (*api_ptr).name.as_bytes() }).into_owned()
        };
        if plugin_version != R1_PLUGIN_ABI_VERSION {
            return Err(BackendError::AbiMismatch {
                name: name_of(),
                path: path.to_owned(),
                plugin: plugin_version,
                host: R1_PLUGIN_ABI_VERSION,
            });
        }
        // SAFETY: a non-null table of our version lives for the process (ABI contract), and
        // `read_table` reads no more than its `struct_size` bytes.
        let api: &'static R1PluginApi = Box::leak(Box::new(unsafe { read_table(api_ptr, path)? }));
        let name = name_of();
        // SAFETY: static string of the table.
        let version = String::from_utf8_lossy(unsafe { api.version.as_bytes() }).into_owned();
        let user_data: &'static String = Box::leak(Box::new(name.clone()));
        // SAFETY: `log_sink` matches `R1LogFn`; `user_data` is leaked, so valid forever.
        unsafe { (api.set_logger)(Some(log_sink), user_data as *const String as *mut c_void) };

        let mut out = R1OwnedStr::null();
        let mut err = R1OwnedStr::null();
        // SAFETY: valid out-pointers for the call.
        let status = unsafe { (api.probe)(&mut out, &mut err) };
        let json = take_string(api, out);
        check(api, &name, status, err)?;
        let probe: ProbeReport = parse(&name, "probe report", &json)?;
        Ok(DylibBackend {
            api,
            path: path.to_owned(),
            name,
            version,
            probe,
        })
    }
}

/// Copies a plugin's function table: the fields its `struct_size` covers, the appended fields
/// beyond it left absent (`None`). The host never reads past the plugin's table, so a plugin
/// built before a field was appended keeps working (it just lacks that call).
///
/// # Errors
/// [`BackendError::TableTooSmall`] when the table is smaller than ABI v1's first published
/// fields ([`abi::R1_PLUGIN_API_V1_BASE_SIZE`]).
///
/// # Safety
/// `api_ptr` must point to a live table whose first `struct_size` bytes are readable and, up to
/// that size, laid out as [`R1PluginApi`] (with non-NULL function pointers in the base part).
unsafe fn read_table(
    api_ptr: *const R1PluginApi,
    path: &Path,
) -> Result<R1PluginApi, BackendError> {
    // SAFETY: `struct_size` is in every table's prefix (caller's guarantee).
    let size = unsafe { (*api_ptr).struct_size } as usize;
    if size < abi::R1_PLUGIN_API_V1_BASE_SIZE {
        return Err(BackendError::TableTooSmall {
            path: path.to_owned(),
            size: size as u32,
            needed: abi::R1_PLUGIN_API_V1_BASE_SIZE,
        });
    }
    let copied = size.min(std::mem::size_of::<R1PluginApi>());
    let mut table = std::mem::MaybeUninit::<R1PluginApi>::zeroed();
    // SAFETY: the source has `copied` readable bytes (caller's guarantee) and the destination is
    // a whole table; they do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            api_ptr.cast::<u8>(),
            table.as_mut_ptr().cast::<u8>(),
            copied,
        )
    };
    // SAFETY: the base fields (all non-NULL function pointers and plain data) were copied from a
    // valid table; every field after them is an `Option` of a function pointer, for which the
    // zeroed bytes of a field the plugin's table lacks are `None`.
    Ok(unsafe { table.assume_init() })
}

/// Carries the progress closure through the C callback.
unsafe extern "C" fn progress_trampoline(user_data: *mut c_void, progress: f32) -> bool {
    // SAFETY: `user_data` points to the `&mut dyn FnMut` on `DylibBackend::load`'s stack, alive for
    // the whole `load` call during which the plugin invokes this.
    let f = unsafe { &mut *(user_data as *mut &mut dyn FnMut(f32) -> bool) };
    // A panic must not unwind into the plugin's C frames.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(progress))).unwrap_or(false)
}

/// Carries the token closure through the C callback.
unsafe extern "C" fn token_trampoline(
    user_data: *mut c_void,
    piece: *const u8,
    len: usize,
    id: i32,
) -> bool {
    // SAFETY: `user_data` points to the `&mut dyn FnMut` on `PluginModel::generate`'s stack, alive
    // for the whole `generate` call; `piece` is `len` bytes borrowed for this callback.
    let (f, bytes) = unsafe {
        (
            &mut *(user_data as *mut &mut dyn FnMut(&[u8], i32) -> bool),
            R1Str { ptr: piece, len }.as_bytes(),
        )
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(bytes, id))).unwrap_or(false)
}

impl Backend for DylibBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn file(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn probe_report(&self) -> &ProbeReport {
        &self.probe
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn load(
        &self,
        params: &LoadParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Box<dyn LoadedModel>, BackendError> {
        let json = serde_json::to_string(params).expect("load params serialise");
        let mut model: *mut R1Model = std::ptr::null_mut();
        let mut err = R1OwnedStr::null();
        let mut progress = progress;
        // The threads the plugin starts while it loads are its compute threads: they keep the
        // kernel's default scheduler slice, longer than r1d's own (see crate::scheduling).
        // SAFETY: the params string and the progress closure outlive the call; out-pointers valid.
        let status = crate::scheduling::with_default_slice(|| unsafe {
            (self.api.load)(
                R1Str::from_str(&json),
                Some(progress_trampoline),
                &mut progress as *mut &mut dyn FnMut(f32) -> bool as *mut c_void,
                &mut model,
                &mut err,
            )
        });
        check(self.api, &self.name, status, err)?;
        let handle = NonNull::new(model).ok_or_else(|| BackendError::Call {
            backend: self.name.clone(),
            status: abi::R1_ERR_LOAD_FAILED,
            message: format!("plugin {} returned no model for {}", self.name, params.path),
        })?;
        let mut model = PluginModel {
            api: self.api,
            backend: self.name.clone(),
            handle,
            info: ModelInfo::default(),
            serial: None,
        };
        let mut out = R1OwnedStr::null();
        let mut err = R1OwnedStr::null();
        // SAFETY: live handle, valid out-pointers.
        let status = unsafe { (self.api.info)(handle.as_ptr(), &mut out, &mut err) };
        let json = take_string(self.api, out);
        check(self.api, &self.name, status, err)?;
        model.info = parse(&self.name, "model info", &json)?;
        if model.info.parallel_sequences <= 1 {
            // One call at a time on this handle, as ABI v1 requires of such a model.
            model.serial = Some(std::sync::Mutex::new(()));
        }
        Ok(Box::new(model))
    }

    fn estimate(&self, params: &LoadParams) -> Result<Option<Estimate>, BackendError> {
        let Some(estimate) = self.api.estimate else {
            return Ok(None);
        };
        let json = serde_json::to_string(params).expect("load params serialise");
        let mut out = R1OwnedStr::null();
        let mut err = R1OwnedStr::null();
        // SAFETY: the params string outlives the call; out-pointers valid.
        let status = unsafe { estimate(R1Str::from_str(&json), &mut out, &mut err) };
        let json = take_string(self.api, out);
        if status == abi::R1_ERR_UNSUPPORTED {
            take_string(self.api, err);
            return Ok(None);
        }
        check(self.api, &self.name, status, err)?;
        parse(&self.name, "estimate", &json).map(Some)
    }
}

/// A model handle of a dylib plugin.
struct PluginModel {
    api: &'static R1PluginApi,
    backend: String,
    handle: NonNull<R1Model>,
    info: ModelInfo,
    /// Held around every call when the model runs one sequence (`parallel_sequences` ≤ 1): the
    /// ABI then allows one call at a time per handle. `None` when the plugin said it runs several
    /// `generate` calls at once (and `info`/`tokenize` meanwhile).
    serial: Option<std::sync::Mutex<()>>,
}

impl PluginModel {
    /// The lock a call must hold (none for a model that takes concurrent calls).
    fn turn(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.serial
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

// SAFETY: the ABI allows a model handle to be used from any thread; calls are serialised by
// `serial` unless the plugin said the handle takes concurrent calls (`parallel_sequences` > 1).
// `unload` (in `Drop`) runs when no call holds `&self`.
unsafe impl Send for PluginModel {}
// SAFETY: see `Send`.
unsafe impl Sync for PluginModel {}

impl LoadedModel for PluginModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn backend_name(&self) -> &str {
        &self.backend
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<i32>, BackendError> {
        let _turn = self.turn();
        let mut capacity = text.len() + 16;
        loop {
            let mut tokens = vec![0i32; capacity];
            let mut len = 0usize;
            let mut err = R1OwnedStr::null();
            // SAFETY: live handle; `tokens` has `capacity` writable slots; out-pointers valid.
            let status = unsafe {
                (self.api.tokenize)(
                    self.handle.as_ptr(),
                    R1Str::from_str(text),
                    add_special,
                    parse_special,
                    tokens.as_mut_ptr(),
                    capacity,
                    &mut len,
                    &mut err,
                )
            };
            if status == abi::R1_ERR_BUFFER_TOO_SMALL && len > capacity {
                take_string(self.api, err);
                capacity = len;
                continue;
            }
            check(self.api, &self.backend, status, err)?;
            tokens.truncate(len);
            return Ok(tokens);
        }
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(&[u8], i32) -> bool,
    ) -> Result<GenerateResult, BackendError> {
        let _turn = self.turn();
        let json = serde_json::to_string(request).expect("generate request serialises");
        let mut on_token = on_token;
        let mut out = R1OwnedStr::null();
        let mut err = R1OwnedStr::null();
        // SAFETY: live handle, used by this call only or concurrently as the plugin allows (see
        // `serial`); the request and the closure outlive the call; out-pointers valid.
        let status = unsafe {
            (self.api.generate)(
                self.handle.as_ptr(),
                R1Str::from_str(&json),
                Some(token_trampoline),
                &mut on_token as *mut &mut dyn FnMut(&[u8], i32) -> bool as *mut c_void,
                &mut out,
                &mut err,
            )
        };
        let json = take_string(self.api, out);
        check(self.api, &self.backend, status, err)?;
        parse(&self.backend, "generate result", &json)
    }
}

impl Drop for PluginModel {
    fn drop(&mut self) {
        // SAFETY: the handle came from this plugin's `load` and is released exactly once.
        unsafe { (self.api.unload)(self.handle.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn free_string(_: R1OwnedStr) {}
    unsafe extern "C" fn set_logger(_: abi::R1LogFn, _: *mut c_void) {}
    unsafe extern "C" fn probe(_: *mut R1OwnedStr, _: *mut R1OwnedStr) -> R1Status {
        abi::R1_OK
    }
    unsafe extern "C" fn load(
        _: R1Str,
        _: abi::R1ProgressFn,
        _: *mut c_void,
        _: *mut *mut R1Model,
        _: *mut R1OwnedStr,
    ) -> R1Status {
        abi::R1_ERR_LOAD_FAILED
    }
    unsafe extern "C" fn info(
        _: *const R1Model,
        _: *mut R1OwnedStr,
        _: *mut R1OwnedStr,
    ) -> R1Status {
        abi::R1_ERR_BACKEND
    }
    #[allow(clippy::too_many_arguments)]
    unsafe extern "C" fn tokenize(
        _: *const R1Model,
        _: R1Str,
        _: bool,
        _: bool,
        _: *mut i32,
        _: usize,
        _: *mut usize,
        _: *mut R1OwnedStr,
    ) -> R1Status {
        abi::R1_ERR_BACKEND
    }
    unsafe extern "C" fn generate(
        _: *mut R1Model,
        _: R1Str,
        _: abi::R1TokenFn,
        _: *mut c_void,
        _: *mut R1OwnedStr,
        _: *mut R1OwnedStr,
    ) -> R1Status {
        abi::R1_ERR_BACKEND
    }
    unsafe extern "C" fn unload(_: *mut R1Model) {}
    unsafe extern "C" fn estimate(_: R1Str, _: *mut R1OwnedStr, _: *mut R1OwnedStr) -> R1Status {
        abi::R1_ERR_UNSUPPORTED
    }

    fn table(struct_size: usize) -> R1PluginApi {
        R1PluginApi {
            abi_version: R1_PLUGIN_ABI_VERSION,
            struct_size: struct_size as u32,
            name: R1Str::from_str("fake"),
            version: R1Str::from_str("0"),
            free_string,
            set_logger,
            probe,
            load,
            info,
            tokenize,
            generate,
            unload,
            estimate: Some(estimate),
        }
    }

    /// A plugin built before `estimate` was appended says a smaller `struct_size`: it is accepted,
    /// and the host reads nothing beyond it (the call is absent, not whatever bytes follow).
    #[test]
    fn a_table_from_before_estimate_loads_without_it() {
        let old = table(abi::R1_PLUGIN_API_V1_BASE_SIZE);
        // SAFETY: a live table; the host reads only `struct_size` bytes of it.
        let copy = unsafe { read_table(&old, Path::new("old.so")) }.unwrap();
        assert!(copy.estimate.is_none());
        assert_eq!(copy.struct_size as usize, abi::R1_PLUGIN_API_V1_BASE_SIZE);

        let new = table(std::mem::size_of::<R1PluginApi>());
        // SAFETY: as above.
        let copy = unsafe { read_table(&new, Path::new("new.so")) }.unwrap();
        assert!(copy.estimate.is_some());
    }

    #[test]
    fn a_table_smaller_than_v1_is_refused_naming_the_sizes() {
        let tiny = table(abi::R1_PLUGIN_API_V1_BASE_SIZE - 8);
        // SAFETY: a live table.
        let Err(err) = (unsafe { read_table(&tiny, Path::new("tiny.so")) }) else {
            panic!("a table smaller than v1 was accepted");
        };
        let message = err.to_string();
        assert!(message.contains("tiny.so"), "{message}");
        assert!(
            message.contains(&abi::R1_PLUGIN_API_V1_BASE_SIZE.to_string()),
            "{message}"
        );
    }

    /// "unsupported" from a plugin is "no estimate", not an error.
    #[test]
    fn an_unsupported_estimate_is_none() {
        let api: &'static R1PluginApi =
            Box::leak(Box::new(table(std::mem::size_of::<R1PluginApi>())));
        let backend = DylibBackend {
            api,
            path: PathBuf::from("/fake.so"),
            name: "fake".into(),
            version: "0".into(),
            probe: ProbeReport::default(),
        };
        let params = LoadParams {
            path: "/x.gguf".into(),
            ..LoadParams::default()
        };
        assert!(backend.estimate(&params).unwrap().is_none());
    }
}
