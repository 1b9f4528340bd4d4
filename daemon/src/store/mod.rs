//! The model store: an inventory of model files on disk — scan, examine, resolve, pull.
//! Which one to serve, and why, is the supervisor's (`crate::supervisor`).
//!
//! - [`scan`]: r1d's models directory (system `/var/lib/r1d/models`, user
//!   `$XDG_DATA_HOME/r1d/models`, or `[store] dir`) and, read-only, the Hugging Face cache
//!   (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`) and Ollama's store
//!   (`$OLLAMA_MODELS`, `~/.ollama/models`).
//! - [`onnx`]: ONNX model directories (`model.onnx` + `config.json`) are listed as one model of
//!   format `onnx`, identified from `config.json` and the directory name.
//! - [`gguf`]: each file is identified from its own GGUF header (through the shared
//!   `gguf-header` crate) and checked: a file shorter than its tensor infos imply is listed as
//!   truncated with both sizes, and is never chosen.
//! - [`pull`]: downloads with resume and sha256 verification, into a directory per repository
//!   (`MODELS/hf.co/OWNER/REPO/FILE`); files pulled flat into `MODELS/` before that still count.
//! - [`estimate_cache`]: backends' memory estimates of present files, kept on disk between runs
//!   by file identity, load parameters and plugin versions.
//! - [`select`]: the best present DeepSeek-R1 by the planner's ranking (pure; the supervisor
//!   decides whether to load it).
//!
//! **Architecture invariants**: other tools' stores are never written; knows neither HTTP nor
//! JSON wire shapes (the `api` modules convert).

pub mod estimate_cache;
pub mod gguf;
pub mod onnx;
pub mod pull;
pub mod remove;
pub mod scan;
pub mod select;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::hardware::Hardware;

use crate::engine::LoadParams;
use gguf_header::HeaderCheck;
use tokio::sync::watch;

use crate::catalog::{self, Variant};
use crate::config::{Config, Mode, ModelConfig, PlannerConfig};
use crate::engine::LoadSpec;
use crate::hardware::Probe;
use crate::planner::{self, BackendEstimate, Plan, Present};

pub use gguf::Identity;
pub use pull::{PullSpec, PullState};
pub use remove::Removed;

/// Where a file was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// r1d's own models directory.
    Local,
    /// The Hugging Face cache.
    HuggingFace {
        /// `OWNER/REPO`.
        repo: String,
        /// Snapshot (commit hash).
        revision: String,
        /// File in the repository.
        file: String,
    },
    /// Ollama's store.
    Ollama {
        /// `NAME:TAG`.
        name: String,
        /// `sha256:…` of the blob.
        digest: String,
    },
}

impl Source {
    /// `r1d`, `huggingface` or `ollama`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Local => "r1d",
            Source::HuggingFace { .. } => "huggingface",
            Source::Ollama { .. } => "ollama",
        }
    }
}

/// Whether a file can be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Complete per its header.
    Ok,
    /// Shorter than its header implies.
    Truncated {
        /// Bytes the header implies.
        expected_bytes: u64,
        /// Bytes on disk.
        actual_bytes: u64,
    },
    /// Not readable as GGUF; why.
    Unreadable(String),
}

/// One model file.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// The name to ask for it by: `deepseek-r1:7b-q4_k_m` for a catalog variant, else the
    /// source's own name (`smollm2:135m` from Ollama, `hf.co/OWNER/REPO:FILE`, the file stem).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Where it was found.
    pub source: Source,
    /// GGUF file or ONNX directory.
    pub format: catalog::Format,
    /// Bytes on disk (for an ONNX directory, all its files).
    pub size_bytes: u64,
    /// Modification time (Unix seconds).
    pub modified: Option<u64>,
    /// Complete or not.
    pub health: Health,
    /// What the header says, when it could be read.
    pub identity: Option<Identity>,
}

impl ModelEntry {
    /// Complete and readable.
    pub fn is_usable(&self) -> bool {
        self.health == Health::Ok
    }

    /// The catalog variant, when it is one.
    pub fn variant(&self) -> Option<&'static Variant> {
        self.identity.as_ref().and_then(|i| i.variant)
    }

    /// This file is `variant` in `quantization` (a catalog one).
    pub fn is_variant(&self, variant: &str, quantization: &str) -> bool {
        self.identity.as_ref().is_some_and(|i| {
            i.variant.is_some_and(|v| v.id == variant)
                && i.catalog_quantization
                    .is_some_and(|q| q.name.eq_ignore_ascii_case(quantization))
        })
    }

    /// Names this entry answers to: its name, the source's name, the file name and its stem.
    pub fn matches(&self, query: &str) -> bool {
        let q = query.trim();
        let file = self
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = file.strip_suffix(".gguf").unwrap_or(&file).to_owned();
        let source_name = match &self.source {
            Source::Local => {
                pull::pulled_origin(&self.path).map(|(repo, file)| format!("hf.co/{repo}:{file}"))
            }
            Source::HuggingFace { repo, file, .. } => Some(format!("hf.co/{repo}:{file}")),
            Source::Ollama { name, .. } => Some(name.clone()),
        };
        [Some(self.name.clone()), source_name, Some(file), Some(stem)]
            .into_iter()
            .flatten()
            .any(|n| n.eq_ignore_ascii_case(q))
    }

    /// One line about its state, for listings.
    pub fn status_text(&self) -> String {
        match &self.health {
            Health::Ok => "ok".to_owned(),
            Health::Truncated {
                expected_bytes,
                actual_bytes,
            } => format!("truncated: {actual_bytes} of {expected_bytes} bytes"),
            Health::Unreadable(why) => format!("unreadable: {why}"),
        }
    }
}

/// Errors of store operations (not of pulls: see [`pull::PullError`]).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StoreError {
    /// No such model, in the catalog or on disk.
    #[error("no model named {0:?}: not a catalog variant (deepseek-r1:1.5b … deepseek-r1-0528:671b, optionally with a quantization: deepseek-r1:7b-q8_0), not hf.co/OWNER/REPO:FILE, and no file of that name is present (r1ctl models lists them)")]
    Unknown(String),
    /// `remote:NAME` names no `[[remote]]` of the config.
    #[error("no [[remote]] named {name:?} in the config (configured: {configured})")]
    UnknownRemote {
        /// The name asked for, without `remote:`.
        name: String,
        /// The configured remotes' names, comma-separated, or `none`.
        configured: String,
    },
    /// Present, but not usable.
    #[error("{name} cannot be served: {reason}")]
    Unusable {
        /// The model.
        name: String,
        /// Why.
        reason: String,
    },
    /// A catalog variant that is not on disk.
    #[error("{name} is not present; run `r1ctl pull {name}` first")]
    NotPresent {
        /// The model.
        name: String,
    },
    /// Nothing of the variant fits here.
    #[error("{variant} does not fit this machine: {reason}; name a smaller quantization (e.g. {variant}-q4_k_m) to pull it anyway")]
    DoesNotFit {
        /// The variant.
        variant: String,
        /// The planner's reason.
        reason: String,
    },
    /// A catalog entry that is a folder of split files.
    #[error("{0} is published as split files; pulling split GGUFs is not supported yet")]
    Split(String),
    /// A catalog entry that is an ONNX model folder.
    #[error("{0} is an ONNX model folder; r1d cannot pull those yet: download the folder into the models directory (r1ctl models lists it once it has model.onnx and config.json)")]
    OnnxFolder(String),
    /// The hardware probe failed.
    #[error("failed to probe the hardware: {0}")]
    Probe(String),
    /// Nothing on disk is listed by that name (removal).
    #[error("no model named {0:?} is on disk; `r1ctl models` lists them by name")]
    NotFound(String),
    /// The name is only in another tool's store, which r1d never writes.
    #[error("{name} is in {store} ({path}), which r1d only reads; remove it with {how}")]
    ReadOnly {
        /// The name asked for.
        name: String,
        /// Where it is.
        path: String,
        /// Which store: `Ollama's store`, `the Hugging Face cache`.
        store: &'static str,
        /// The other tool's command.
        how: String,
    },
    /// The name fits several of r1d's files.
    #[error("{name:?} names {} files in r1d's models directory: {}; name the one to remove by its path", paths.len(), paths.join(", "))]
    Ambiguous {
        /// The name asked for.
        name: String,
        /// The files it fits.
        paths: Vec<String>,
    },
    /// The model is resident, loading or queued to load.
    #[error("{name} ({path}) is in use by r1d; serve another model first (`r1ctl use NAME`, or `r1ctl stop` to unload it), then remove it")]
    InUse {
        /// The model.
        name: String,
        /// Its file.
        path: String,
    },
    /// The file or directory could not be removed.
    #[error("failed to remove {path}: {reason}")]
    RemoveFailed {
        /// The file or directory.
        path: String,
        /// The OS error.
        reason: String,
    },
}

/// The store: where to look, how to pull, and what was last chosen.
pub struct Store {
    /// r1d's models directory (pulls land here).
    pub dir: PathBuf,
    hf_cache: Option<PathBuf>,
    ollama: Option<PathBuf>,
    puller: Arc<pull::Puller>,
    probe: Probe,
    /// What a config reload may change: `[planner]`, `[model]`, `[store] auto_pull`.
    settings: Mutex<Settings>,
    /// How the probe's result is adjusted before planning (the supervisor adds the resident
    /// model's memory back as free); `None`: as probed.
    adjust: Mutex<Option<HardwareAdjust>>,
    /// Asks the backend of a present file what loading it allocates (see [`Estimator`]).
    estimator: Mutex<Option<Estimator>>,
    /// Estimates already asked for, by file (path, size, mtime) and load.
    estimates: Mutex<std::collections::HashMap<EstimateKey, Option<BackendEstimate>>>,
    /// The `[[remote]]` endpoints and their health (see [`Store::set_remotes`]).
    remotes: Mutex<Option<Arc<crate::backend::remote::Remotes>>>,
    /// The llama.cpp RPC workers, watched (see [`Store::set_rpc_watch`]).
    rpc: Mutex<Option<crate::hardware::rpc::RpcWatch>>,
}

/// Asks a backend what a load would allocate, without loading (the plugin ABI's `estimate`):
/// `None` when the backend has none or fails (the planner then uses the catalog formula). Set by
/// `main.rs` with [`Store::set_estimator`]; the store only knows it as this function.
pub type Estimator = Arc<dyn Fn(&LoadSpec) -> Option<BackendEstimate> + Send + Sync>;

/// A file as it is now and the load estimated: a changed file (size, mtime) is asked again.
type EstimateKey = (PathBuf, u64, Option<u64>, LoadParams);

/// Adjusts a probe result before planning (see [`Store::set_hardware_adjust`]).
pub type HardwareAdjust = Arc<dyn Fn(&mut Hardware) + Send + Sync>;

/// What `r1ctl use NAME` resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The load.
    pub spec: LoadSpec,
    /// Why: one line for `/r1/status` `selection`.
    pub reason: String,
    /// The plan that chose it and the index of its candidate, when a plan chose it (`auto`, a
    /// variant); `None` for a model asked for by name.
    pub planned: Option<(Plan, usize)>,
}

/// The store's settings that follow config reloads.
#[derive(Debug, Clone)]
struct Settings {
    policy: PlannerConfig,
    model: ModelConfig,
    auto_pull: bool,
}

impl Store {
    /// The store of `config` in `mode`; `probe` measures this machine for planning.
    pub fn new(config: &Config, mode: Mode, probe: Probe) -> Arc<Store> {
        let s = &config.store;
        let dir = s
            .dir
            .clone()
            .unwrap_or_else(|| crate::paths::models_dir(mode));
        Arc::new(Store {
            puller: Arc::new(pull::Puller::from_env(dir.clone(), s.reserve_disk_bytes)),
            dir,
            hf_cache: s.scan_huggingface.then(|| {
                s.huggingface_cache
                    .clone()
                    .unwrap_or_else(crate::paths::hf_cache)
            }),
            ollama: s.scan_ollama.then(|| {
                s.ollama_models
                    .clone()
                    .unwrap_or_else(crate::paths::ollama_models)
            }),
            probe,
            settings: Mutex::new(Settings {
                policy: config.planner.clone(),
                model: config.model.clone(),
                auto_pull: s.auto_pull,
            }),
            adjust: Mutex::new(None),
            rpc: Mutex::new(None),
            estimator: Mutex::new(None),
            estimates: Mutex::new(std::collections::HashMap::new()),
            remotes: Mutex::new(None),
        })
    }

    /// Installs the watched llama.cpp RPC workers: from then on [`Store::hardware`] lists those
    /// that answer ([`crate::hardware::rpc::RpcWatch::hosts`]), so the planner may split a
    /// variant that does not fit this machine across them.
    pub fn set_rpc_watch(&self, rpc: crate::hardware::rpc::RpcWatch) {
        *self.rpc.lock().unwrap_or_else(|e| e.into_inner()) = Some(rpc);
    }

    /// Installs the `[[remote]]` endpoints: from then on a choice weighs a healthy remote's
    /// variant against the best local one (`[planner] prefer`, [`select::Choice::remote`]).
    pub fn set_remotes(&self, remotes: Arc<crate::backend::remote::Remotes>) {
        *self.remotes.lock().unwrap_or_else(|e| e.into_inner()) = Some(remotes);
    }

    /// The `[[remote]]` endpoints, when installed.
    pub fn remotes(&self) -> Option<Arc<crate::backend::remote::Remotes>> {
        self.remotes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs the function that asks a present file's backend for its memory estimate; from
    /// then on every plan of this store uses the backend's figures for present GGUF files.
    pub fn set_estimator(&self, estimator: Estimator) {
        *self.estimator.lock().unwrap_or_else(|e| e.into_inner()) = Some(estimator);
    }

    /// The planner's "present" list for `entries` with each GGUF file's backend estimate (a
    /// CPU-only load of one sequence at the planner's context length, `[model]`'s KV cache
    /// type), asked once per file and load and remembered. Blocking: an estimate reads the file's
    /// header and vocabulary (≈ 0.7 s with llama.cpp).
    pub fn present(&self, entries: &[ModelEntry], policy: &PlannerConfig) -> Vec<Present> {
        let estimator = self
            .estimator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let model = self.settings().model;
        let mut out = present(entries);
        let Some(estimator) = estimator else {
            return out;
        };
        let usable = entries.iter().filter(|e| e.is_usable()).filter(|e| {
            e.identity
                .as_ref()
                .is_some_and(|id| id.variant.is_some() && id.catalog_quantization.is_some())
        });
        for (p, entry) in out.iter_mut().zip(usable) {
            let Some(v) = entry.variant() else { continue };
            if entry.format != catalog::Format::Gguf {
                continue;
            }
            let params = LoadParams {
                path: entry.path.to_string_lossy().into_owned(),
                context_length: Some(planner::planned_context(v, policy)),
                gpu_layers: Some(0),
                parallel: Some(1),
                threads: model.threads,
                kv_cache_type: model.kv_cache_type.clone(),
                ..Default::default()
            };
            let key = (
                entry.path.clone(),
                entry.size_bytes,
                entry.modified,
                params.clone(),
            );
            let cached = self
                .estimates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned();
            p.estimate = match cached {
                Some(estimate) => estimate,
                None => {
                    let spec = LoadSpec {
                        params,
                        backend: model.backend.clone(),
                    };
                    let estimate = estimator(&spec);
                    self.estimates
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, estimate.clone());
                    estimate
                }
            };
        }
        out
    }

    fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `[store] auto_pull` of the running config.
    pub fn auto_pull(&self) -> bool {
        self.settings().auto_pull
    }

    /// Takes the `[planner]`, `[model]` and `[store] auto_pull` of a reloaded config (the other
    /// `[store]` keys need a restart).
    pub fn reconfigure(&self, config: &Config) {
        if let Some(remotes) = self.remotes() {
            remotes.set_configs(&config.remote);
        }
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = Settings {
            policy: config.planner.clone(),
            model: config.model.clone(),
            auto_pull: config.store.auto_pull,
        };
    }

    /// Sets how a probe result is adjusted before planning: the supervisor counts the resident
    /// model's memory as free (it would be freed for a swap), on the GPUs the model is on.
    pub fn set_hardware_adjust(&self, adjust: HardwareAdjust) {
        *self.adjust.lock().unwrap_or_else(|e| e.into_inner()) = Some(adjust);
    }

    /// This machine as the planner should see it: the probe, adjusted as
    /// [`Store::set_hardware_adjust`] says. Blocking.
    ///
    /// # Errors
    /// [`StoreError::Probe`].
    pub fn hardware(&self) -> Result<crate::hardware::Hardware, StoreError> {
        let mut hw = self
            .probe
            .run()
            .map_err(|e| StoreError::Probe(e.to_string()))?;
        if let Some(rpc) = &*self.rpc.lock().unwrap_or_else(|e| e.into_inner()) {
            hw.rpc_workers = rpc.hosts();
        }
        let adjust = self
            .adjust
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(adjust) = adjust {
            adjust(&mut hw);
        }
        Ok(hw)
    }

    /// The directories searched, for messages.
    pub fn searched(&self) -> String {
        let mut dirs = vec![self.dir.display().to_string()];
        dirs.extend(self.hf_cache.iter().map(|p| p.display().to_string()));
        dirs.extend(self.ollama.iter().map(|p| p.display().to_string()));
        dirs.join(", ")
    }

    /// Every model file, identified and checked. Blocking (reads headers).
    pub fn scan(&self) -> Vec<ModelEntry> {
        let mut found = scan::models_dir(&self.dir);
        if let Some(hub) = &self.hf_cache {
            found.extend(scan::huggingface_cache(hub));
        }
        if let Some(ollama) = &self.ollama {
            found.extend(scan::ollama(ollama));
        }
        found.into_iter().map(examine).collect()
    }

    /// Scans, probes and plans; the selection. Blocking.
    ///
    /// # Errors
    /// [`StoreError::Probe`].
    pub fn choose(&self) -> Result<(Vec<ModelEntry>, Plan, select::Choice), StoreError> {
        self.choose_serving(None)
    }

    /// [`Store::choose`] while the model at `serving` is resident: the planner keeps it unless
    /// something is clearly better ([`planner::plan_serving`]'s hysteresis), so a wobble of the
    /// measured bandwidth does not swap it. Blocking.
    ///
    /// # Errors
    /// [`StoreError::Probe`].
    pub fn choose_serving(
        &self,
        serving: Option<&std::path::Path>,
    ) -> Result<(Vec<ModelEntry>, Plan, select::Choice), StoreError> {
        self.choose_with(&self.settings().policy, serving)
    }

    fn choose_with(
        &self,
        policy: &PlannerConfig,
        serving: Option<&std::path::Path>,
    ) -> Result<(Vec<ModelEntry>, Plan, select::Choice), StoreError> {
        let entries = self.scan();
        let hw = self.hardware()?;
        let served = serving
            .and_then(|path| entries.iter().find(|e| e.path == path))
            .and_then(|e| {
                let id = e.identity.as_ref()?;
                Some((id.variant?.id, id.catalog_quantization?.name))
            });
        let plan = planner::plan_serving(&hw, &self.present(&entries, policy), policy, served);
        let mut choice = select::choose(&plan, &entries, &self.searched());
        if let Some(remotes) = self.remotes() {
            select::weigh_remotes(&mut choice, &plan, &remotes.views(), policy);
        }
        Ok((entries, plan, choice))
    }

    /// The load of `entry`: the planner's context and GPU layers for a variant, the config's
    /// `[model]` values where set.
    pub fn load_spec(
        &self,
        entry: &ModelEntry,
        candidate: Option<&planner::Candidate>,
    ) -> LoadSpec {
        let model = self.settings().model;
        LoadSpec {
            params: LoadParams {
                path: entry.path.to_string_lossy().into_owned(),
                context_length: model.context_length.or(candidate.map(|c| c.context_length)),
                gpu_layers: model.gpu_layers.or(candidate.map(|c| c.gpu_layers)),
                threads: model.threads,
                kv_cache_type: model.kv_cache_type.clone(),
                parallel: candidate.map(|c| c.parallel),
                ..Default::default()
            },
            backend: model.backend.clone(),
        }
    }

    /// What `r1ctl use NAME` loads: `auto` (the selection), a catalog variant (its best present
    /// quantization that fits), or any present model by name. Blocking.
    ///
    /// # Errors
    /// [`StoreError`]: unknown, not present, truncated.
    pub fn resolve_use(&self, name: &str) -> Result<Resolved, StoreError> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("auto") {
            let (entries, plan, choice) = self.choose()?;
            return match choice.entry.zip(choice.candidate) {
                Some((e, c)) => Ok(Resolved {
                    spec: self.load_spec(&entries[e], Some(&plan.candidates[c])),
                    reason: choice.reason,
                    planned: Some((plan, c)),
                }),
                None => Err(StoreError::Unusable {
                    name: "auto".into(),
                    reason: choice.reason,
                }),
            };
        }
        if let Some(v) = catalog::variant(name) {
            let policy = PlannerConfig {
                variant: Some(v.id.to_owned()),
                ..self.settings().policy
            };
            let (entries, plan, choice) = self.choose_with(&policy, None)?;
            return match choice.entry.zip(choice.candidate) {
                Some((e, c)) => Ok(Resolved {
                    spec: self.load_spec(&entries[e], Some(&plan.candidates[c])),
                    reason: format!("pinned to {}: {}", v.id, choice.reason),
                    planned: Some((plan, c)),
                }),
                None if entries
                    .iter()
                    .any(|e| e.variant().is_some_and(|x| x.id == v.id) && e.is_usable()) =>
                {
                    Err(StoreError::DoesNotFit {
                        variant: v.id.to_owned(),
                        reason: choice.reason,
                    })
                }
                None => Err(StoreError::NotPresent {
                    name: v.id.to_owned(),
                }),
            };
        }
        if let Some(rest) = name.strip_prefix(crate::backend::remote::PATH_PREFIX) {
            return self
                .resolve_remote(rest)
                .ok_or_else(|| StoreError::UnknownRemote {
                    name: rest.to_owned(),
                    configured: self.remote_names(),
                });
        }
        let entries = self.scan();
        let Some(entry) = entries
            .iter()
            .filter(|e| e.matches(name))
            .max_by_key(|e| e.is_usable())
        else {
            // A remote by its bare `name` (a file of that name wins).
            if let Some(remote) = self.resolve_remote(name) {
                return Ok(remote);
            }
            return Err(match parse_variant_quant(name) {
                Some(_) => StoreError::NotPresent {
                    name: name.to_owned(),
                },
                None => StoreError::Unknown(name.to_owned()),
            });
        };
        if !entry.is_usable() {
            return Err(StoreError::Unusable {
                name: entry.name.clone(),
                reason: entry.status_text(),
            });
        }
        Ok(Resolved {
            spec: self.load_spec(entry, None),
            reason: format!(
                "{} ({}): asked for by name",
                entry.name,
                entry.path.display()
            ),
            planned: None,
        })
    }

    /// The load of the `[[remote]]` named `name` (its `name`, case-insensitively), pinned by
    /// name: the backend checks its health when it loads.
    fn resolve_remote(&self, name: &str) -> Option<Resolved> {
        let view = self
            .remotes()?
            .views()
            .into_iter()
            .find(|v| v.config.name().eq_ignore_ascii_case(name.trim()))?;
        let c = &view.config;
        Some(Resolved {
            spec: LoadSpec {
                params: LoadParams {
                    path: c.path(),
                    ..Default::default()
                },
                backend: Some(crate::backend::remote::BACKEND.to_owned()),
            },
            reason: format!(
                "remote {} ({} at {}): asked for by name",
                c.name(),
                c.model,
                c.url
            ),
            planned: None,
        })
    }

    /// The configured remotes' names for messages (`none` without any).
    fn remote_names(&self) -> String {
        let names: Vec<String> = self
            .remotes()
            .map(|r| r.views())
            .unwrap_or_default()
            .iter()
            .map(|v| v.config.path())
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// What `r1ctl pull NAME` downloads: a catalog variant (the best quantization for this
    /// machine unless one is named) or `hf.co/OWNER/REPO:FILE`. Blocking (may probe).
    ///
    /// # Errors
    /// [`StoreError::Unknown`], [`StoreError::DoesNotFit`], [`StoreError::Split`].
    pub fn resolve_pull(&self, name: &str) -> Result<PullSpec, StoreError> {
        let name = name.trim();
        if let Some(rest) = name
            .strip_prefix("hf.co/")
            .or_else(|| name.strip_prefix("huggingface.co/"))
        {
            let (repo, file) = rest
                .split_once(':')
                .filter(|(r, f)| r.split('/').count() == 2 && !f.is_empty())
                .ok_or_else(|| StoreError::Unknown(name.to_owned()))?;
            return Ok(PullSpec {
                repo: repo.to_owned(),
                revision: "main".to_owned(),
                file: file.to_owned(),
                sha256: None,
                label: name.to_owned(),
            });
        }
        if let Some((v, q)) = parse_variant_quant(name) {
            return spec_of(v, q);
        }
        let v = catalog::variant(name).ok_or_else(|| StoreError::Unknown(name.to_owned()))?;
        let hw = self.hardware()?;
        let policy = PlannerConfig {
            variant: Some(v.id.to_owned()),
            ..self.settings().policy
        };
        let plan = planner::plan(&hw, &self.present(&self.scan(), &policy), &policy);
        match plan.chosen() {
            Some(c) => pull_spec_of(c),
            None => Err(StoreError::DoesNotFit {
                variant: v.id.to_owned(),
                reason: plan.reason.clone(),
            }),
        }
    }

    /// Removes the model `name` from r1d's models directory, unless it is one of `busy` (the
    /// resident, loading or queued model); see [`remove::remove`]. Blocking (scans).
    ///
    /// # Errors
    /// As [`remove::remove`].
    pub fn remove(&self, name: &str, busy: &[PathBuf]) -> Result<Removed, StoreError> {
        remove::remove(&self.dir, &self.scan(), name, busy)
    }

    /// Starts (or joins) a pull.
    pub fn pull(&self, spec: PullSpec) -> watch::Receiver<PullState> {
        self.puller.start(spec)
    }
}

/// `deepseek-r1:7b-q8_0` → the variant and its catalog quantization.
pub fn parse_variant_quant(
    name: &str,
) -> Option<(&'static Variant, &'static catalog::Quantization)> {
    catalog::VARIANTS.iter().find_map(|v| {
        let rest = name
            .get(..v.id.len())
            .filter(|p| p.eq_ignore_ascii_case(v.id))
            .and_then(|_| name[v.id.len()..].strip_prefix('-'))?;
        v.quantizations
            .iter()
            .find(|q| q.name.eq_ignore_ascii_case(rest))
            .map(|q| (v, q))
    })
}

fn spec_of(v: &Variant, q: &catalog::Quantization) -> Result<PullSpec, StoreError> {
    let label = format!("{}-{}", v.id, q.name.to_ascii_lowercase());
    if q.format == catalog::Format::Onnx {
        return Err(StoreError::OnnxFolder(label));
    }
    if !q.file.to_ascii_lowercase().ends_with(".gguf") {
        return Err(StoreError::Split(label));
    }
    Ok(PullSpec {
        repo: q.repo.to_owned(),
        revision: "main".to_owned(),
        file: q.file.to_owned(),
        sha256: q.sha256.map(str::to_owned),
        label,
    })
}

/// The pull of a plan candidate (what `auto_pull` fetches when the planner's choice is not
/// present).
///
/// # Errors
/// [`StoreError::Split`], [`StoreError::OnnxFolder`]: r1d cannot pull it.
pub fn pull_spec_of(c: &planner::Candidate) -> Result<PullSpec, StoreError> {
    spec_of(c.variant, c.quantization)
}

/// The planner's "present" list: usable files of catalog variants, without estimates (see
/// [`Store::present`]).
pub fn present(entries: &[ModelEntry]) -> Vec<Present> {
    entries
        .iter()
        .filter(|e| e.is_usable())
        .filter_map(|e| {
            let id = e.identity.as_ref()?;
            Some(Present {
                variant: id.variant?.id.to_owned(),
                quantization: id.catalog_quantization?.name.to_owned(),
                estimate: None,
            })
        })
        .collect()
}

/// Reads and checks one file. Never panics on a bad file: it is listed with why.
pub fn examine(found: scan::Found) -> ModelEntry {
    if found.path.is_dir() {
        return onnx::examine(found);
    }
    let meta = std::fs::metadata(&found.path).ok();
    let size_bytes = meta.as_ref().map_or(0, |m| m.len());
    let modified = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let file_name = match &found.source {
        Source::HuggingFace { file, .. } => file.clone(),
        Source::Ollama { name, .. } => name.clone(),
        Source::Local => found
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let read = gguf_header::read(&found.path);
    let identity = read.as_ref().ok().map(|h| gguf::identify(h, &file_name));
    let health = match HeaderCheck::of(&read) {
        HeaderCheck::Complete if read.as_ref().is_ok_and(|h| h.tensors.is_empty()) => {
            Health::Unreadable("the file has no tensors (a vocab-only GGUF)".to_owned())
        }
        HeaderCheck::Complete => Health::Ok,
        HeaderCheck::Truncated {
            actual_bytes,
            expected_bytes,
        } => Health::Truncated {
            expected_bytes,
            actual_bytes,
        },
        other => Health::Unreadable(other.explanation().unwrap_or_default()),
    };
    let name = match identity
        .as_ref()
        .and_then(|i| i.variant.zip(i.catalog_quantization))
    {
        Some((v, q)) => format!("{}-{}", v.id, q.name.to_ascii_lowercase()),
        None => match &found.source {
            // Pulled into `MODELS/hf.co/OWNER/REPO/FILE`: the name it was pulled by.
            Source::Local => match pull::pulled_origin(&found.path) {
                Some((repo, file)) => format!("hf.co/{repo}:{file}"),
                None => {
                    let stem = file_name.strip_suffix(".gguf").unwrap_or(&file_name);
                    stem.to_owned()
                }
            },
            Source::HuggingFace { repo, file, .. } => format!("hf.co/{repo}:{file}"),
            Source::Ollama { name, .. } => name.clone(),
        },
    };
    ModelEntry {
        name,
        path: found.path,
        source: found.source,
        format: catalog::Format::Gguf,
        size_bytes,
        modified,
        health,
        identity,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gguf_header::write::{gguf, Meta};

    /// A small GGUF whose metadata names DeepSeek-R1-Distill-Qwen-7B Q4_K_M, with `data` bytes of
    /// tensor data (for the store's and the supervisor's tests).
    pub(crate) fn r1_7b(data: u64) -> Vec<u8> {
        gguf(
            &[
                ("general.architecture", Meta::Str("qwen2")),
                ("general.name", Meta::Str("DeepSeek R1 Distill Qwen 7B")),
                ("qwen2.block_count", Meta::U32(28)),
                ("qwen2.embedding_length", Meta::U32(3584)),
                ("general.file_type", Meta::U32(15)),
            ],
            &[("token_embd.weight", &[256, 4], 12)],
            data,
        )
    }

    #[test]
    fn names_parse_to_variant_and_quantization() {
        let (v, q) = parse_variant_quant("deepseek-r1:7b-q8_0").unwrap();
        assert_eq!((v.id, q.name), ("deepseek-r1:7b", "Q8_0"));
        let (v, q) = parse_variant_quant("DeepSeek-R1:1.5B-Q4_K_M").unwrap();
        assert_eq!((v.id, q.name), ("deepseek-r1:1.5b", "Q4_K_M"));
        assert!(parse_variant_quant("deepseek-r1:7b").is_none());
        assert!(parse_variant_quant("deepseek-r1:7b-q3").is_none());
        assert!(parse_variant_quant("deepseek-r1-0528:8b-q4_k_m").is_some());
    }

    /// A present GGUF is estimated at the planner's context, CPU only, one sequence; the answer
    /// is remembered per file and load, so planning again asks the backend nothing.
    #[test]
    fn present_files_are_estimated_once_per_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf"),
            r1_7b(576),
        )
        .unwrap();
        let mut config = Config::default();
        config.store.dir = Some(dir.path().to_owned());
        config.store.scan_huggingface = false;
        config.store.scan_ollama = false;
        let store = Store::new(
            &config,
            Mode::User,
            Probe::fake_root("/nonexistent", dir.path().to_owned()),
        );
        let asked = Arc::new(Mutex::new(Vec::<LoadSpec>::new()));
        store.set_estimator(Arc::new({
            let asked = asked.clone();
            move |spec: &LoadSpec| {
                asked.lock().unwrap().push(spec.clone());
                Some(BackendEstimate {
                    context_length: spec.params.context_length.unwrap_or(0),
                    weights_mapped_bytes: 42,
                    ..BackendEstimate::default()
                })
            }
        }));
        let policy = config.planner.clone();
        let entries = store.scan();
        let present = store.present(&entries, &policy);
        assert_eq!(present.len(), 1);
        assert_eq!(
            present[0].estimate.as_ref().map(|e| e.weights_mapped_bytes),
            Some(42)
        );
        let again = store.present(&entries, &policy);
        assert_eq!(again, present);
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 1, "the second plan asked again");
        let v = catalog::variant("deepseek-r1:7b").unwrap();
        assert_eq!(
            asked[0].params.context_length,
            Some(planner::planned_context(v, &policy))
        );
        assert_eq!(asked[0].params.gpu_layers, Some(0));
        assert_eq!(asked[0].params.parallel, Some(1));
    }

    #[test]
    fn examine_names_checks_and_identifies() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf");
        std::fs::write(&good, r1_7b(576)).unwrap();
        let e = examine(scan::Found {
            path: good.clone(),
            source: Source::Local,
        });
        assert_eq!(e.name, "deepseek-r1:7b-q4_k_m");
        assert_eq!(e.health, Health::Ok);
        assert!(e.matches("DeepSeek-R1-Distill-Qwen-7B-Q4_K_M"));
        assert_eq!(
            present(std::slice::from_ref(&e)),
            vec![Present {
                variant: "deepseek-r1:7b".into(),
                quantization: "Q4_K_M".into(),
                estimate: None,
            }]
        );
        let cut = dir.path().join("cut.gguf");
        let bytes = r1_7b(576);
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
        let e = examine(scan::Found {
            path: cut,
            source: Source::Local,
        });
        assert_eq!(
            e.health,
            Health::Truncated {
                expected_bytes: bytes.len() as u64,
                actual_bytes: bytes.len() as u64 - 100
            }
        );
        assert!(
            present(&[e]).is_empty(),
            "a truncated file is never present"
        );
        let junk = dir.path().join("junk.gguf");
        std::fs::write(&junk, b"GGUF\x03\0\0\0").unwrap();
        let e = examine(scan::Found {
            path: junk,
            source: Source::Local,
        });
        assert!(matches!(e.health, Health::Unreadable(_)), "{e:?}");
        assert_eq!(e.name, "junk");
    }
}
