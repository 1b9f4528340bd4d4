//! The control core: what r1d can be asked to report or do about its model, implemented once for
//! every transport. HTTP's native routes (`api::native`) and D-Bus `Manager1` (`api::dbus`) are
//! thin adapters over [`Control`]: they parse their own arguments into the types here, call one
//! method, and turn the result (or the [`ControlError`]) into their own shapes.
//!
//! **Architecture invariant**: knows neither HTTP nor D-Bus nor the wire shapes
//! (`r1d_client::wire`); returns daemon-owned types. Blocking work (hardware probes, store scans,
//! name resolution) runs on a blocking thread through [`blocking`], the one place that does so for
//! the control plane.

use std::sync::Arc;

use crate::access::{Caller, Policy};
use crate::backend::{PluginHost, PluginRecord};
use crate::engine::{Engine, EngineError, LoadParams, LoadSpec, Snapshot};
use crate::store::{ModelEntry, PullState, Store, StoreError};
use crate::supervisor::{ErrorKind, Supervisor, SupervisorError};

/// How to probe the hardware and the planner's policy (`/r1/hardware`, `/r1/plan`, D-Bus
/// `Hardware` and `GetPlan`).
#[derive(Debug, Clone)]
pub struct PlannerState {
    /// The probes (this machine, or a fake tree given with `--hardware-root`).
    pub probe: crate::hardware::Probe,
    /// The `[planner]` policy.
    pub policy: crate::config::PlannerConfig,
}

/// Why a control request failed. Each transport maps it to its own error once:
/// `api::error` to an HTTP status, machine code and `Retry-After`, `api::dbus` to
/// `org.r1d.R1.Error.*`.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// An argument is invalid; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// The model failed to load; the message says why and which model serves instead.
    #[error("{0}")]
    LoadFailed(String),
    /// The config file would be rejected (file, line, key); the running config stays.
    #[error("{0}")]
    ConfigRejected(String),
    /// The engine refused (queue full, shutting down, …).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The model store refused (unknown name, not present, does not fit, …).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The hardware probe failed.
    #[error("failed to probe the hardware: {0}")]
    Probe(String),
    /// This r1d was started without a part the request needs (only in tests: r1d itself always
    /// has its model store and supervisor).
    #[error("{what} needs {needs}, which this r1d was started without")]
    NotSupported {
        /// What was asked, e.g. `listing the models on disk`.
        what: String,
        /// The missing part, e.g. `the model store`.
        needs: &'static str,
    },
    /// The caller may not manage r1d; the message names what, the caller's uid and what is needed.
    #[error("{0}")]
    PermissionDenied(String),
    /// A blocking task failed (panicked or was cancelled).
    #[error("{0}")]
    Internal(String),
}

/// What to load: the parameters `POST /r1/load` and D-Bus `Load` both accept. [`LoadOptions::spec`]
/// is the one place a request becomes the engine's [`LoadSpec`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOptions {
    /// The model file (GGUF, `.echo`) or directory (ONNX); an absolute path.
    pub path: String,
    /// The backend plugin by name (`llamacpp`, `onnxruntime`, …); `None`: the best for the format.
    pub backend: Option<String>,
    /// KV cache size in tokens, at least 1; `None`: the backend's default.
    pub context_length: Option<u32>,
    /// Layers to offload to the GPU; `None`: the backend decides.
    pub gpu_layers: Option<u32>,
    /// Generation threads, at least 1; `None`: the backend decides.
    pub threads: Option<u32>,
    /// KV cache element type, one of [`crate::config::KV_CACHE_TYPES`]; `None`: the backend's.
    pub kv_cache_type: Option<String>,
}

impl LoadOptions {
    /// Checks the options as the config checks `[model]`.
    ///
    /// # Errors
    /// [`ControlError::InvalidArgument`] naming the option: a relative path, a context length or
    /// thread count of 0, an unknown KV cache type.
    pub fn validate(&self) -> Result<(), ControlError> {
        let invalid = |m: String| Err(ControlError::InvalidArgument(m));
        if !std::path::Path::new(&self.path).is_absolute() {
            return invalid(format!("model path {:?} is not absolute", self.path));
        }
        if self.context_length == Some(0) {
            return invalid("context_length must be at least 1 token".into());
        }
        if self.threads == Some(0) {
            return invalid("threads must be at least 1".into());
        }
        let max = crate::config::max_threads();
        if let Some(t) = self.threads.filter(|&t| t > max) {
            return invalid(format!(
                "threads = {t} is more than {max} (4 per CPU of this machine)"
            ));
        }
        if let Some(kv) = &self.kv_cache_type {
            if !crate::config::KV_CACHE_TYPES.contains(&kv.as_str()) {
                return invalid(format!(
                    "kv_cache_type {kv:?} is not one of {}",
                    crate::config::KV_CACHE_TYPES.join(", ")
                ));
            }
        }
        check_model_file(
            std::path::Path::new(&self.path),
            self.backend.as_deref(),
            self.context_length,
        )
        .map_err(ControlError::InvalidArgument)
    }

    /// The engine's load spec (not validated: the config's paths may be relative).
    pub fn spec(self) -> LoadSpec {
        LoadSpec {
            params: LoadParams {
                path: self.path,
                context_length: self.context_length,
                gpu_layers: self.gpu_layers,
                threads: self.threads,
                kv_cache_type: self.kv_cache_type,
                ..Default::default()
            },
            backend: self.backend,
        }
    }
}

/// What `/r1/status` shows, daemon-side.
#[derive(Debug, Clone)]
pub struct Status {
    /// The engine's state, resident model and load progress.
    pub snapshot: Snapshot,
    /// Why the service is degraded (serving without a GPU that should be there); `None` when not.
    pub degraded: Option<String>,
    /// Seconds since the engine started.
    pub uptime_s: f64,
    /// Requests finished since start, answered or failed.
    pub requests_served: u64,
    /// Of those, requests that ended with an error.
    pub requests_failed: u64,
    /// Requests queued or running.
    pub active_requests: u64,
    /// Of those, requests generating now.
    pub running_requests: u64,
    /// Answers the resident model generates at once (0 with no model).
    pub parallel: u32,
    /// Why the resident model was chosen.
    pub selection: Option<String>,
    /// What more memory would bring, from the plan that chose the resident model.
    pub upgrades: Vec<crate::planner::Upgrade>,
    /// The same in one line.
    pub more_memory: Option<String>,
    /// What the plan planned for the resident model, when a plan chose it.
    pub planned: Option<crate::supervisor::selection::Planned>,
    /// What r1d's process holds now (`None` where it cannot be read).
    pub resident: Option<crate::hardware::memory::Resident>,
    /// The llama.cpp RPC workers of `[backends.llamacpp] rpc_workers` and their state at the
    /// last probe (empty without workers).
    pub rpc_workers: Vec<crate::hardware::rpc::RpcWorker>,
    /// The `[[remote]]` serving the resident model, with its last health check (`None` for a
    /// local model).
    pub remote: Option<crate::backend::remote::RemoteView>,
    /// The layers of the resident llama.cpp model on each worker it serves from, as r1d plans
    /// llama.cpp's split ([`crate::planner::worker_layers`] over the workers' last answered free
    /// memory); empty without such a model.
    pub rpc_layers: Vec<(String, u32)>,
}

/// The `[[remote]]` side of a plan ([`Control::plan_with_remotes`]).
#[derive(Debug, Clone)]
pub struct RemotePlan {
    /// Every remote with its last health check, in config order.
    pub views: Vec<crate::backend::remote::RemoteView>,
    /// The index of the remote served instead of the local choice, if any, and why.
    pub verdict: (Option<usize>, String),
    /// The `[planner]` policy the verdict was made by.
    pub policy: crate::config::PlannerConfig,
}

/// The models on disk (`/r1/models`, D-Bus `ListModels`).
#[derive(Debug, Clone)]
pub struct Models {
    /// r1d's models directory.
    pub dir: std::path::PathBuf,
    /// Every place searched, in one line.
    pub searched: String,
    /// The models found.
    pub entries: Vec<ModelEntry>,
    /// The resident model's path, to mark it.
    pub resident: Option<String>,
}

/// A download under way (`/r1/pull`, D-Bus `Pull`).
pub struct Pull {
    /// What is pulled, as the store names it (`deepseek-r1:7b-q4_k_m`, `hf.co/OWNER/REPO:FILE`).
    pub label: String,
    /// Its progress; the last value is [`PullState::Done`] or [`PullState::Failed`].
    pub progress: tokio::sync::watch::Receiver<PullState>,
}

/// What a config reload did (`POST /r1/reload`, SIGHUP, D-Bus `Reload`): the supervisor's own
/// account, passed through.
pub use crate::supervisor::ReloadOutcome;

/// The control plane over the engine, the plugin host, the model store and the supervisor.
/// Cheap to clone; HTTP and D-Bus share one.
#[derive(Clone)]
pub struct Control {
    engine: Engine,
    host: Arc<PluginHost>,
    planner: Arc<PlannerState>,
    store: Option<Arc<Store>>,
    supervisor: Option<Supervisor>,
    policy: Arc<Policy>,
    /// The names of the resident model, found once per resident file (a store scan reads every
    /// model's header; answering requests must not pay for it each time).
    names: Arc<std::sync::Mutex<Option<ResidentNames>>>,
    /// The llama.cpp RPC workers, watched (none unless configured).
    rpc: crate::hardware::rpc::RpcWatch,
}

/// Every name the resident model is listed under, for one resident file.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidentNames {
    /// The resident file.
    pub path: String,
    /// The name r1d lists it by (`/api/tags`, `/v1/models`, `r1ctl models`): the store's name,
    /// else the file stem. Never holds spaces unless the file name does.
    pub listed: String,
    /// Every name it answers to: the listed one, the store's aliases (source name, file name,
    /// stem), its GGUF `general.name`, the path, and its catalog variant (`deepseek-r1:7b`).
    pub aliases: Vec<String>,
}

impl ResidentNames {
    /// Whether `requested` names this model: one of its aliases, with or without Ollama's
    /// `:latest` tag, case-insensitively.
    pub fn answers_to(&self, requested: &str) -> bool {
        name_forms(requested)
            .iter()
            .any(|q| self.aliases.iter().any(|a| a.eq_ignore_ascii_case(q)))
    }
}

/// The forms a requested name may match in: as given, without a `:latest` tag, and with one
/// (Ollama lists untagged names as `NAME:latest`).
fn name_forms(requested: &str) -> Vec<String> {
    let q = requested.trim();
    let mut forms = vec![q.to_owned()];
    match q.strip_suffix(":latest") {
        Some(bare) => forms.push(bare.to_owned()),
        None if !q.rsplit('/').next().unwrap_or(q).contains(':') => {
            forms.push(format!("{q}:latest"))
        }
        None => {}
    }
    forms
}

/// What a model name in an answering request refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMatch {
    /// The resident model (or no name given, or nothing resident: the engine answers then).
    Resident,
    /// A usable model on disk that is not resident, by its listed name.
    NotResident {
        /// The name to `use` it by.
        name: String,
    },
    /// No model r1d knows by that name.
    Unknown,
}

/// Runs `f` on a blocking thread; `what` names it in the error when the thread fails.
///
/// # Errors
/// [`ControlError::Internal`] when the task panicked or was cancelled.
pub async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Internal(format!("{what} failed: {e}")))
}

impl Control {
    /// The control plane. `store` and `supervisor` are `None` only in tests; requests that need
    /// them then fail with [`ControlError::NotSupported`].
    pub fn new(
        engine: Engine,
        host: Arc<PluginHost>,
        planner: PlannerState,
        store: Option<Arc<Store>>,
        supervisor: Option<Supervisor>,
    ) -> Control {
        Control {
            engine,
            host,
            planner: Arc::new(planner),
            store,
            supervisor,
            policy: Arc::new(Policy::new(rustix::process::geteuid().as_raw())),
            names: Arc::default(),
            rpc: crate::hardware::rpc::RpcWatch::default(),
        }
    }

    /// Whether `caller` may manage r1d ([`crate::access`]: root, r1d's own uid, else polkit's
    /// `org.r1d.R1.manage` where an authority is installed). Every managing method asks it first,
    /// whichever transport called.
    ///
    /// # Errors
    /// [`ControlError::PermissionDenied`] naming `what`, the caller's uid and what is needed.
    pub async fn authorize(&self, caller: Option<&Caller>, what: &str) -> Result<(), ControlError> {
        self.policy
            .authorize(caller, what)
            .await
            .map_err(ControlError::PermissionDenied)
    }

    /// The management policy, to install an [`crate::access::Authority`] (polkit) once the
    /// system bus is up.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The names of the resident model (`None` when nothing is resident).
    pub async fn resident_names(&self) -> Option<ResidentNames> {
        let (info, _) = self.engine.snapshot().model?;
        if let Ok(cache) = self.names.lock() {
            if let Some(names) = cache.as_ref().filter(|n| n.path == info.path) {
                return Some(names.clone());
            }
        }
        // A `[[remote]]` by `remote:NAME` (no file; its name may hold `/`), and also by its
        // bare name and the model id the remote serves it under.
        if let Some(name) = info.path.strip_prefix(crate::backend::remote::PATH_PREFIX) {
            let mut aliases = vec![info.path.clone(), name.to_owned()];
            aliases.extend(info.name.clone());
            aliases.sort();
            aliases.dedup();
            return Some(ResidentNames {
                listed: info.path.clone(),
                path: info.path,
                aliases,
            });
        }
        let path = std::path::PathBuf::from(&info.path);
        // A directory (ONNX) by its name, a file by its stem (`model.gguf` → `model`).
        let stem = if path.is_dir() {
            path.file_name()
        } else {
            path.file_stem()
        }
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| info.path.clone());
        let mut aliases = vec![info.path.clone(), stem.clone()];
        aliases.extend(path.file_name().map(|f| f.to_string_lossy().into_owned()));
        aliases.extend(info.name.clone());
        let mut listed = stem;
        // Without a store (tests) the file's own names are all there is.
        if let Ok(entries) = self.scan("listing the resident model's names").await {
            let mine: Vec<&ModelEntry> = entries.iter().filter(|e| e.path == path).collect();
            if let Some(first) = mine.first() {
                listed = first.name.clone();
            }
            for e in mine {
                aliases.push(e.name.clone());
                if let Some(v) = e.variant() {
                    aliases.push(v.id.to_owned());
                }
                // The source's own names (`hf.co/OWNER/REPO:FILE`, Ollama's `name:tag`).
                aliases.extend(
                    entries
                        .iter()
                        .filter(|o| o.path == e.path)
                        .map(|o| o.name.clone()),
                );
            }
        }
        aliases.push(listed.clone());
        aliases.sort();
        aliases.dedup();
        let names = ResidentNames {
            path: info.path,
            listed,
            aliases,
        };
        if let Ok(mut cache) = self.names.lock() {
            *cache = Some(names.clone());
        }
        Some(names)
    }

    /// What `requested` names: the resident model, another model on disk, or nothing known.
    /// A name of a model on disk that is not resident is not loaded on the way (r1d keeps one
    /// model resident and the supervisor decides which; `use` makes another resident on purpose).
    pub async fn match_name(&self, requested: Option<&str>) -> NameMatch {
        let Some(requested) = requested.map(str::trim).filter(|r| !r.is_empty()) else {
            return NameMatch::Resident;
        };
        let Some(resident) = self.resident_names().await else {
            return NameMatch::Resident;
        };
        if resident.answers_to(requested) {
            return NameMatch::Resident;
        }
        // A configured `[[remote]]` that is not resident: by `remote:NAME` or its bare name.
        if let Some(remote) = self.remote_named(requested) {
            return NameMatch::NotResident { name: remote };
        }
        // The error path: scan again (a model may have been pulled since).
        let Ok(entries) = self.scan("matching a model name").await else {
            return NameMatch::Unknown;
        };
        let forms = name_forms(requested);
        let variant = forms.iter().find_map(|f| crate::catalog::variant(f));
        entries
            .iter()
            .filter(|e| e.is_usable())
            .find(|e| {
                forms.iter().any(|f| e.matches(f))
                    || variant.is_some_and(|v| e.variant().is_some_and(|x| x.id == v.id))
            })
            .map_or(NameMatch::Unknown, |e| NameMatch::NotResident {
                name: e.name.clone(),
            })
    }

    /// The `remote:NAME` of the configured `[[remote]]` that `requested` names (`remote:NAME`
    /// or `NAME`, case-insensitively, with or without Ollama's `:latest`).
    pub fn remote_named(&self, requested: &str) -> Option<String> {
        let remotes = self.store.as_ref()?.remotes()?;
        let forms = name_forms(requested);
        remotes
            .views()
            .into_iter()
            .map(|v| (v.config.name().to_owned(), v.config.path()))
            .find(|(name, path)| {
                forms
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(name) || f.eq_ignore_ascii_case(path))
            })
            .map(|(_, path)| path)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The model store.
    ///
    /// # Errors
    /// [`ControlError::NotSupported`] without one.
    pub fn store(&self, what: &str) -> Result<&Arc<Store>, ControlError> {
        self.store
            .as_ref()
            .ok_or_else(|| ControlError::NotSupported {
                what: what.to_owned(),
                needs: "the model store",
            })
    }

    /// The supervisor.
    ///
    /// # Errors
    /// [`ControlError::NotSupported`] without one.
    pub fn supervisor(&self, what: &str) -> Result<&Supervisor, ControlError> {
        self.supervisor
            .as_ref()
            .ok_or_else(|| ControlError::NotSupported {
                what: what.to_owned(),
                needs: "the supervisor",
            })
    }

    /// The supervisor, when this r1d has one (always, outside tests).
    pub fn running_supervisor(&self) -> Option<&Supervisor> {
        self.supervisor.as_ref()
    }

    /// Why the service is degraded, when it is.
    pub fn degraded(&self) -> Option<String> {
        self.supervisor.as_ref().and_then(Supervisor::degraded)
    }

    /// The engine's state with the supervisor's view of it.
    pub fn status(&self) -> Status {
        let supervisor = self.supervisor.as_ref();
        let snapshot = self.engine.snapshot();
        let remote = snapshot
            .model
            .as_ref()
            .and_then(|(info, _)| info.path.strip_prefix(crate::backend::remote::PATH_PREFIX))
            .and_then(|name| {
                self.store
                    .as_ref()?
                    .remotes()?
                    .views()
                    .into_iter()
                    .find(|v| v.config.name() == name)
            });
        Status {
            snapshot,
            remote,
            degraded: self.degraded(),
            uptime_s: self.engine.uptime_s(),
            requests_served: self.engine.requests_served(),
            requests_failed: self.engine.requests_failed(),
            active_requests: self.engine.active_requests(),
            running_requests: self.engine.running_requests(),
            parallel: self.engine.parallel(),
            selection: supervisor.and_then(|s| s.selection()),
            upgrades: supervisor.map(|s| s.upgrades()).unwrap_or_default(),
            more_memory: supervisor.and_then(|s| s.more_memory()),
            planned: supervisor.and_then(|s| s.planned()),
            resident: crate::hardware::memory::resident_with(self.engine.worker_pid()),
            rpc_workers: self.rpc.workers(),
            rpc_layers: self.rpc_layers(),
        }
    }

    /// [`Status::rpc_layers`].
    fn rpc_layers(&self) -> Vec<(String, u32)> {
        let snap = self.engine.snapshot();
        let (Some((info, backend)), Some(spec)) = (&snap.model, &snap.spec) else {
            return Vec::new();
        };
        if backend != "llamacpp" {
            return Vec::new();
        }
        let serving: Vec<String> = self
            .rpc
            .workers()
            .into_iter()
            .filter(|w| w.state == crate::hardware::rpc::RpcState::Serving)
            .map(|w| w.endpoint)
            .collect();
        let hosts: Vec<crate::hardware::RpcHost> = self
            .rpc
            .hosts()
            .into_iter()
            .filter(|h| serving.contains(&h.endpoint))
            .collect();
        crate::planner::worker_layers(info.layers, spec.params.gpu_layers, &hosts, &[])
    }

    /// Shows `rpc`'s workers in [`Control::status`].
    pub fn with_rpc_watch(mut self, rpc: crate::hardware::rpc::RpcWatch) -> Control {
        self.rpc = rpc;
        self
    }

    /// Every plugin file found, usable or not.
    pub fn backends(&self) -> &[PluginRecord] {
        self.host.records()
    }

    /// The plugin directory.
    pub fn plugin_dir(&self) -> &std::path::Path {
        self.host.dir()
    }

    /// Probes the hardware now (file reads, NVML, perhaps the bandwidth measurement), with the
    /// RPC workers as the watch last found them.
    ///
    /// # Errors
    /// [`ControlError::Probe`], or [`ControlError::Internal`] when the probe thread failed.
    pub async fn hardware(&self) -> Result<crate::hardware::Hardware, ControlError> {
        let probe = self.planner.probe.clone();
        let mut hw = blocking("the hardware probe", move || probe.run())
            .await?
            .map_err(|e| ControlError::Probe(e.to_string()))?;
        hw.rpc_workers = self.rpc.hosts();
        Ok(hw)
    }

    /// The plan for this machine as it is now, by the `[planner]` policy.
    ///
    /// # Errors
    /// As [`Control::hardware`].
    pub async fn plan(&self) -> Result<crate::planner::Plan, ControlError> {
        Ok(self.plan_with_remotes().await?.0)
    }

    /// [`Control::plan`], and with `[[remote]]` endpoints their last health checks and the
    /// selection's verdict on them — the daemon's own decision
    /// ([`crate::store::select::remote_verdict`]: the best model present against the healthy
    /// remotes by `[planner] prefer`), so `/r1/plan` says what the daemon serves.
    ///
    /// # Errors
    /// As [`Control::plan`].
    pub async fn plan_with_remotes(
        &self,
    ) -> Result<(crate::planner::Plan, Option<RemotePlan>), ControlError> {
        // The resident model's memory counts as free, as the supervisor counts it when it plans
        // (`Store::hardware`, the supervisor's credit): otherwise the plan shows the served
        // model crowding itself out — a GPU model that filled the VRAM planned as a partial
        // offload of itself.
        let hw = match &self.store {
            Some(store) => {
                let store = store.clone();
                blocking("the hardware probe", move || store.hardware())
                    .await?
                    .map_err(|e| ControlError::Probe(e.to_string()))?
            }
            None => self.hardware().await?,
        };
        let policy = self.planner.policy.clone();
        // Files on disk need no download, and their backend's own estimate replaces the
        // formula's memory figure.
        let (entries, present, searched) = match &self.store {
            Some(store) => {
                let store = store.clone();
                let policy = policy.clone();
                blocking("the store scan", move || {
                    let entries = store.scan();
                    let present = store.present(&entries, &policy);
                    (entries, present, store.searched())
                })
                .await?
            }
            None => (Vec::new(), Vec::new(), String::new()),
        };
        let plan = crate::planner::plan(&hw, &present, &policy);
        let views = self
            .store
            .as_ref()
            .and_then(|s| s.remotes())
            .map(|r| r.views())
            .unwrap_or_default();
        if views.is_empty() {
            return Ok((plan, None));
        }
        let choice = crate::store::select::choose(&plan, &entries, &searched);
        let verdict = crate::store::select::remote_verdict(&choice, &plan, &views, &policy);
        Ok((
            plan,
            Some(RemotePlan {
                views,
                verdict,
                policy,
            }),
        ))
    }

    /// Scans the store (it reads GGUF headers).
    ///
    /// # Errors
    /// [`ControlError::NotSupported`] without a store; [`ControlError::Internal`] when the scan
    /// thread failed.
    pub async fn scan(&self, what: &str) -> Result<Vec<ModelEntry>, ControlError> {
        let store = self.store(what)?.clone();
        blocking("the store scan", move || store.scan()).await
    }

    /// The models on disk, and which is resident.
    ///
    /// # Errors
    /// As [`Control::scan`].
    pub async fn models(&self) -> Result<Models, ControlError> {
        let what = "listing the models on disk";
        let entries = self.scan(what).await?;
        let store = self.store(what)?;
        Ok(Models {
            dir: store.dir.clone(),
            searched: store.searched(),
            entries,
            resident: self.engine.snapshot().model.map(|(info, _)| info.path),
        })
    }

    /// Replaces the resident model with `options.path` (the old one is unloaded first) and waits
    /// until it is resident; it stays pinned through re-plans until `use auto` or a config edit
    /// of the model. Returns why it is served.
    ///
    /// # Errors
    /// [`ControlError::PermissionDenied`] (see [`crate::access`]);
    /// [`ControlError::InvalidArgument`] (see [`LoadOptions::validate`]);
    /// [`ControlError::LoadFailed`] (the previous model serves again); the engine's refusal.
    pub async fn load(
        &self,
        caller: Option<&Caller>,
        options: LoadOptions,
    ) -> Result<String, ControlError> {
        self.authorize(caller, "loading a model").await?;
        // It may read the model's GGUF header (a few MB).
        let checked = options.clone();
        blocking("checking the load options", move || checked.validate()).await??;
        let supervisor = self.supervisor("loading a model")?;
        Ok(supervisor.load(options.spec()).await?)
    }

    /// Serves a model by name: `auto` (the planner's choice, no pin), a catalog variant (pinned:
    /// its best present quantization), any listed model, or an absolute path (as [`Control::load`]
    /// with no options). Waits until it is resident; returns why it was chosen.
    ///
    /// # Errors
    /// The store's (unknown, not present, does not fit); [`ControlError::LoadFailed`].
    pub async fn use_model(
        &self,
        caller: Option<&Caller>,
        name: &str,
    ) -> Result<String, ControlError> {
        self.authorize(caller, "changing the model").await?;
        let supervisor = self.supervisor("changing the model")?;
        Ok(supervisor.use_model(name).await?)
    }

    /// Unloads the resident model; nothing is served until `use` or a config edit of the model.
    ///
    /// # Errors
    /// [`EngineError::ShuttingDown`].
    pub async fn unload(&self, caller: Option<&Caller>) -> Result<(), ControlError> {
        self.authorize(caller, "unloading the model").await?;
        let supervisor = self.supervisor("unloading the model")?;
        Ok(supervisor.unload().await?)
    }

    /// Re-reads the config and applies it, and waits until that is done (a rejected file is
    /// part of the outcome, not an error). `origin` names the caller in the log.
    ///
    /// # Errors
    /// [`ControlError::NotSupported`] without a supervisor.
    pub async fn reload(
        &self,
        caller: Option<&Caller>,
        origin: &str,
    ) -> Result<ReloadOutcome, ControlError> {
        self.authorize(caller, "reloading the config").await?;
        let supervisor = self.supervisor("reloading the config")?;
        Ok(supervisor.reload(origin).await)
    }

    /// Checks the config file and starts a reload in the background; returns once it has begun
    /// (the reload itself may be a long swap).
    ///
    /// # Errors
    /// [`ControlError::ConfigRejected`] when the file would be rejected (the reload still runs,
    /// and keeps the running config).
    pub async fn begin_reload(
        &self,
        caller: Option<&Caller>,
        origin: &str,
    ) -> Result<(), ControlError> {
        self.authorize(caller, "reloading the config").await?;
        let supervisor = self.supervisor("reloading the config")?.clone();
        let checked = supervisor.check_config();
        let origin = origin.to_owned();
        tokio::spawn(async move { supervisor.reload(&origin).await });
        checked.map_err(|e| ControlError::ConfigRejected(e.to_string()))
    }

    /// Removes the model `name` (as `r1ctl models` lists it, or its absolute path) from r1d's
    /// models directory. The model that is resident, loading or queued to load is refused:
    /// serve another one first (`use`) or unload it. Other tools' stores are never written.
    ///
    /// # Errors
    /// [`ControlError::PermissionDenied`]; the store's: [`StoreError::NotFound`],
    /// [`StoreError::ReadOnly`] (Hugging Face cache, Ollama), [`StoreError::Ambiguous`],
    /// [`StoreError::InUse`], [`StoreError::RemoveFailed`].
    pub async fn remove(
        &self,
        caller: Option<&Caller>,
        name: &str,
    ) -> Result<crate::store::Removed, ControlError> {
        self.authorize(caller, "removing a model").await?;
        let store = self.store(&format!("removing {name}"))?.clone();
        let snap = self.engine.snapshot();
        let busy: Vec<std::path::PathBuf> = snap
            .model
            .map(|(info, _)| std::path::PathBuf::from(info.path))
            .into_iter()
            .chain(snap.loading)
            .chain(snap.queued_load)
            .collect();
        let name = name.to_owned();
        Ok(blocking("removing the model", move || store.remove(&name, &busy)).await??)
    }

    /// Resolves `name` (a catalog variant gets the best quantization for this machine) and
    /// starts the download, or joins the one under way. The pull goes on when nobody follows it.
    ///
    /// # Errors
    /// The store's (unknown name, does not fit, not pullable).
    pub async fn pull(&self, caller: Option<&Caller>, name: &str) -> Result<Pull, ControlError> {
        self.authorize(caller, "pulling a model").await?;
        let store = self.store(&format!("pulling {name}"))?.clone();
        let resolving = store.clone();
        let query = name.to_owned();
        let spec = blocking("resolving the model name", move || {
            resolving.resolve_pull(&query)
        })
        .await??;
        let label = spec.label.clone();
        Ok(Pull {
            label,
            progress: store.pull(spec),
        })
    }
}

// The supervisor's errors, mapped once.

impl From<SupervisorError> for ControlError {
    /// A failed load (or one that left nothing resident) is [`ControlError::LoadFailed`] with the
    /// engine's reason; the store's and the engine's other refusals keep their own mappings.
    fn from(e: SupervisorError) -> ControlError {
        match (e.kind(), e) {
            (ErrorKind::LoadFailed, e) => ControlError::LoadFailed(e.reason()),
            (_, SupervisorError::Store(e) | SupervisorError::Choose(e)) => ControlError::Store(e),
            (_, SupervisorError::Engine(e)) => ControlError::Engine(e),
            (_, SupervisorError::Config(m)) => ControlError::ConfigRejected(m),
            (_, SupervisorError::Task(m)) => ControlError::Internal(m),
        }
    }
}

/// Checks what the model file itself says about a load, before anything is unloaded for it: a
/// directory must be an ONNX model directory (one with `model.onnx`; when a backend is named,
/// its plugin judges the directory and names what is missing), and a context length must
/// not exceed the trained context a GGUF's header states (`{architecture}.context_length`); the
/// message names the path, or both numbers. A path that does not exist, a file of another format
/// or a GGUF whose header cannot be read pass: the engine's own checks name those. Reads at most
/// the GGUF header (blocking).
///
/// # Errors
/// Why the load is refused, as one sentence.
pub fn check_model_file(
    path: &std::path::Path,
    backend: Option<&str>,
    context_length: Option<u32>,
) -> Result<(), String> {
    if path.is_dir() {
        if backend.is_some() || path.join("model.onnx").is_file() {
            return Ok(());
        }
        return Err(format!(
            "model path {} is a directory without model.onnx: give a GGUF or .echo file, or an \
             ONNX model directory (model.onnx with its config.json and tokenizer.json)",
            path.display()
        ));
    }
    let Some(asked) = context_length else {
        return Ok(());
    };
    if !gguf_header::has_magic(path) {
        return Ok(());
    }
    let Ok(header) = gguf_header::read(path) else {
        return Ok(());
    };
    let Some(trained) = header.arch_uint("context_length") else {
        return Ok(());
    };
    if u64::from(asked) > trained {
        return Err(format!(
            "context_length {asked} is more than the {trained} tokens {} was trained for \
             (its GGUF header's {}.context_length); ask for {trained} or less",
            path.display(),
            header.architecture().unwrap_or("?"),
        ));
    }
    Ok(())
}

/// [`check_model_file`] for an engine load spec.
///
/// # Errors
/// See [`check_model_file`].
pub fn check_spec(spec: &LoadSpec) -> Result<(), String> {
    check_model_file(
        std::path::Path::new(&spec.params.path),
        spec.backend.as_deref(),
        spec.params.context_length,
    )
}

/// The context a model named by path (`--model`, `[model] path`) gets when nothing sets one:
/// the planner's `[planner] context_length` (what a planned model is fitted for), capped at the
/// trained context a GGUF's header states; `None` (the backend's default) for other formats or
/// an unreadable header.
pub fn default_context_length(path: &std::path::Path, planner_context: u32) -> Option<u32> {
    let header = gguf_header::read(path).ok()?;
    let trained = header.arch_uint("context_length")?;
    Some(
        planner_context
            .min(u32::try_from(trained).unwrap_or(u32::MAX))
            .max(1),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn a_model_named_by_path_gets_the_planner_context_capped_at_its_trained_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, trained_4096_gguf()).unwrap();
        assert_eq!(default_context_length(&path, 8192), Some(4096));
        assert_eq!(default_context_length(&path, 2048), Some(2048));
        let echo = dir.path().join("m.echo");
        std::fs::write(&echo, "{}").unwrap();
        assert_eq!(default_context_length(&echo, 8192), None);
    }

    /// A GGUF header of a llama model trained for 4096 tokens, without tensors.
    fn trained_4096_gguf() -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        let mut gguf = b"GGUF".to_vec();
        gguf.extend(3u32.to_le_bytes());
        gguf.extend(0u64.to_le_bytes()); // tensors
        gguf.extend(2u64.to_le_bytes()); // key-value pairs
        string(&mut gguf, "general.architecture");
        gguf.extend(8u32.to_le_bytes());
        string(&mut gguf, "llama");
        string(&mut gguf, "llama.context_length");
        gguf.extend(4u32.to_le_bytes());
        gguf.extend(4096u32.to_le_bytes());
        gguf
    }

    #[test]
    fn a_context_beyond_the_trained_one_is_refused_naming_both_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, trained_4096_gguf()).unwrap();
        assert_eq!(check_model_file(&path, None, Some(4096)), Ok(()));
        assert_eq!(check_model_file(&path, None, None), Ok(()));
        let e = check_model_file(&path, None, Some(1_000_000_000)).unwrap_err();
        assert!(
            e.contains("context_length 1000000000") && e.contains("4096 tokens"),
            "{e}"
        );
        let e = LoadOptions {
            context_length: Some(4097),
            ..options(path.to_str().unwrap())
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("4097") && e.contains("4096"), "{e}");
        // Another format, or no file at all: the engine's checks speak for those.
        let echo = dir.path().join("m.echo");
        std::fs::write(&echo, "{}").unwrap();
        assert_eq!(check_model_file(&echo, None, Some(1_000_000_000)), Ok(()));
        assert_eq!(
            check_model_file(&dir.path().join("absent.gguf"), None, Some(9)),
            Ok(())
        );
    }

    #[test]
    fn a_directory_without_model_onnx_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_model_file(dir.path(), None, None).unwrap_err();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("is a directory"),
            "{e}"
        );
        // A named backend judges the directory itself (onnxruntime names the missing graph).
        assert_eq!(
            check_model_file(dir.path(), Some("onnxruntime"), None),
            Ok(())
        );
        std::fs::write(dir.path().join("model.onnx"), b"").unwrap();
        assert_eq!(check_model_file(dir.path(), None, None), Ok(()));
    }

    use super::*;

    fn options(path: &str) -> LoadOptions {
        LoadOptions {
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn load_options_are_checked_like_the_config() {
        assert!(options("/m/a.gguf").validate().is_ok());
        let bad = |o: LoadOptions| match o.validate() {
            Err(ControlError::InvalidArgument(m)) => m,
            other => panic!("expected an invalid argument, got {other:?}"),
        };
        assert!(bad(options("a.gguf")).contains("not absolute"));
        // Threads are bounded by the machine: 4 per CPU.
        let max = crate::config::max_threads();
        let m = bad(LoadOptions {
            threads: Some(max + 1),
            ..options("/m/a.gguf")
        });
        assert!(
            m.contains(&format!("threads = {} is more than {max}", max + 1)),
            "{m}"
        );
        assert!(LoadOptions {
            threads: Some(max),
            ..options("/m/a.gguf")
        }
        .validate()
        .is_ok());
        let m = bad(LoadOptions {
            kv_cache_type: Some("q3".into()),
            ..options("/m/a.gguf")
        });
        assert!(
            m.contains("kv_cache_type \"q3\"") && m.contains("q8_0"),
            "{m}"
        );
        assert!(bad(LoadOptions {
            threads: Some(0),
            ..options("/m/a.gguf")
        })
        .contains("threads"));
        assert!(bad(LoadOptions {
            context_length: Some(0),
            ..options("/m/a.gguf")
        })
        .contains("context_length"));
    }

    #[test]
    fn load_options_become_the_engines_spec() {
        let spec = LoadOptions {
            backend: Some("llamacpp".into()),
            context_length: Some(2048),
            kv_cache_type: Some("q8_0".into()),
            ..options("/m/a.gguf")
        }
        .spec();
        assert_eq!(spec.params.path, "/m/a.gguf");
        assert_eq!(spec.params.context_length, Some(2048));
        assert_eq!(spec.params.kv_cache_type.as_deref(), Some("q8_0"));
        assert_eq!(spec.backend.as_deref(), Some("llamacpp"));
    }

    /// A control core over an engine with no plugins and no model, without a store or a
    /// supervisor (for the transports' unit tests too).
    pub(crate) fn control_without_store_or_supervisor() -> Control {
        let host = Arc::new(PluginHost::empty(
            std::path::Path::new("/nonexistent"),
            "none".into(),
        ));
        let engine = Engine::start(
            host.clone(),
            None,
            None,
            crate::engine::EngineConfig {
                default_max_tokens: Some(16),
                queue_depth: 1,
                ..Default::default()
            },
        );
        let planner = PlannerState {
            probe: crate::hardware::Probe::this_machine("/nonexistent".into(), None),
            policy: Default::default(),
        };
        Control::new(engine, host, planner, None, None)
    }

    #[tokio::test]
    async fn managing_needs_root_or_r1ds_own_uid_on_every_method() {
        let control = control_without_store_or_supervisor();
        let own = rustix::process::geteuid().as_raw();
        // Any uid but root and r1d's own; no polkit authority is installed here.
        let other = Caller::unix_peer(if own == 4242 { 4343 } else { 4242 }, None);
        let other = Some(&other);
        let denied = |r: Result<(), ControlError>, what: &str| match r {
            Err(ControlError::PermissionDenied(m)) => assert!(m.starts_with(what), "{m}"),
            other => panic!("expected PermissionDenied for {what}, got {other:?}"),
        };
        denied(
            control.load(other, options("/m/a.gguf")).await.map(|_| ()),
            "loading a model",
        );
        denied(
            control.use_model(other, "auto").await.map(|_| ()),
            "changing the model",
        );
        denied(control.unload(other).await, "unloading the model");
        denied(
            control.reload(other, "t").await.map(|_| ()),
            "reloading the config",
        );
        denied(
            control.begin_reload(other, "t").await,
            "reloading the config",
        );
        denied(
            control.pull(other, "deepseek-r1:7b").await.map(|_| ()),
            "pulling a model",
        );
        denied(
            control.remove(other, "deepseek-r1:7b").await.map(|_| ()),
            "removing a model",
        );
        // No identity at all (TCP): refused too.
        denied(control.unload(None).await, "unloading the model");
    }

    #[tokio::test]
    async fn without_a_supervisor_control_requests_are_refused_not_done_another_way() {
        let control = control_without_store_or_supervisor();
        let refused = |r: Result<(), ControlError>| match r {
            Err(e @ ControlError::NotSupported { .. }) => e.to_string(),
            other => panic!("expected NotSupported, got {other:?}"),
        };
        let root = Caller::unix_peer(0, None);
        let root = Some(&root);
        let m = refused(control.reload(root, "test").await.map(|_| ()));
        assert!(
            m.contains("reloading the config needs the supervisor"),
            "{m}"
        );
        refused(control.begin_reload(root, "test").await);
        refused(control.use_model(root, "deepseek-r1:7b").await.map(|_| ()));
        refused(control.load(root, options("/m/a.gguf")).await.map(|_| ()));
        refused(control.unload(root).await);
        let m = refused(control.models().await.map(|_| ()));
        assert!(m.contains("needs the model store"), "{m}");
        // Invalid options are refused before anything else.
        assert!(matches!(
            control.load(root, options("a.gguf")).await,
            Err(ControlError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_failed_load_is_load_failed_and_other_refusals_stay_the_engines() {
        let control = |e: SupervisorError| ControlError::from(e);
        assert!(matches!(
            control(EngineError::NoModel { reason: "x".into() }.into()),
            ControlError::LoadFailed(m) if m == "x"
        ));
        assert!(matches!(
            control(EngineError::Busy(2).into()),
            ControlError::Engine(EngineError::Busy(2))
        ));
        assert!(matches!(
            control(StoreError::Unknown("x".into()).into()),
            ControlError::Store(_)
        ));
        assert!(matches!(
            control(SupervisorError::Config("bad key".into())),
            ControlError::ConfigRejected(m) if m == "bad key"
        ));
    }
}
