//! The model store: model files on disk, what each one is, pulls, and which one to serve.
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
//! - [`select`]: the best present DeepSeek-R1 by the planner's ranking.
//!
//! **Architecture invariants**: other tools' stores are never written; knows neither HTTP nor
//! JSON wire shapes (the `api` modules convert).

pub mod gguf;
pub mod onnx;
pub mod pull;
pub mod scan;
pub mod select;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gguf_header::HeaderCheck;
use crate::engine::LoadParams;
use tokio::sync::watch;

use crate::catalog::{self, Variant};
use crate::config::{Config, Mode, ModelConfig, PlannerConfig};
use crate::engine::LoadSpec;
use crate::hardware::Probe;
use crate::planner::{self, Plan, Present};

pub use gguf::Identity;
pub use pull::{PullSpec, PullState};

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
    /// Memory the resident model holds, added back to what the probe finds free when planning
    /// (RAM bytes, VRAM bytes of the first GPU), so that the model does not crowd itself out.
    credit: Mutex<(u64, u64)>,
    /// The last selection (shown in `/r1/status`).
    selection: Mutex<Selection>,
    /// What more memory would bring, from the plan behind the reason `choose` or `resolve_use`
    /// gave last; [`Store::set_selection`] takes it over when it records that reason.
    pending: Mutex<Option<(String, MoreMemory)>>,
}

/// What the planner said more memory would bring, for `/r1/status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoreMemory {
    /// [`Plan::upgrades`].
    pub upgrades: Vec<planner::Upgrade>,
    /// [`Plan::more_memory`].
    pub text: String,
}

impl MoreMemory {
    fn of(plan: &Plan) -> MoreMemory {
        MoreMemory {
            upgrades: plan.upgrades.clone(),
            text: plan.more_memory.clone(),
        }
    }
}

/// Why the resident model is what it is.
#[derive(Debug, Clone, Default)]
struct Selection {
    reason: Option<String>,
    more: Option<MoreMemory>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The store's settings that follow config reloads.
#[derive(Debug, Clone)]
struct Settings {
    policy: PlannerConfig,
    model: ModelConfig,
    auto_pull: bool,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/".into())
}

/// The Hugging Face hub cache `huggingface_hub` uses: `$HF_HUB_CACHE`, `$HF_HOME/hub`,
/// `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`.
pub fn default_hf_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return p.into();
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache"))
        .join("huggingface/hub")
}

/// Ollama's models directory: `$OLLAMA_MODELS`, else `~/.ollama/models`.
pub fn default_ollama_dir() -> PathBuf {
    std::env::var_os("OLLAMA_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".ollama/models"))
}

impl Store {
    /// The store of `config` in `mode`; `probe` measures this machine for planning.
    pub fn new(config: &Config, mode: Mode, probe: Probe) -> Arc<Store> {
        let s = &config.store;
        let dir = s
            .dir
            .clone()
            .unwrap_or_else(|| crate::hardware::disk::default_models_dir(mode));
        Arc::new(Store {
            puller: Arc::new(pull::Puller::from_env(dir.clone(), s.reserve_disk_bytes)),
            dir,
            hf_cache: s
                .scan_huggingface
                .then(|| s.huggingface_cache.clone().unwrap_or_else(default_hf_cache)),
            ollama: s
                .scan_ollama
                .then(|| s.ollama_models.clone().unwrap_or_else(default_ollama_dir)),
            probe,
            settings: Mutex::new(Settings {
                policy: config.planner.clone(),
                model: config.model.clone(),
                auto_pull: s.auto_pull,
            }),
            credit: Mutex::new((0, 0)),
            selection: Mutex::new(Selection::default()),
            pending: Mutex::new(None),
        })
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
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = Settings {
            policy: config.planner.clone(),
            model: config.model.clone(),
            auto_pull: config.store.auto_pull,
        };
    }

    /// Sets the memory the resident model holds (RAM bytes, VRAM bytes), which planning adds
    /// back to the free memory the probe finds.
    pub fn set_credit(&self, ram_bytes: u64, vram_bytes: u64) {
        *self.credit.lock().unwrap_or_else(|e| e.into_inner()) = (ram_bytes, vram_bytes);
    }

    /// This machine as the planner should see it: the probe, plus the resident model's memory
    /// counted as free (it would be freed for a swap). Blocking.
    ///
    /// # Errors
    /// [`StoreError::Probe`].
    pub fn hardware(&self) -> Result<crate::hardware::Hardware, StoreError> {
        let mut hw = self
            .probe
            .run()
            .map_err(|e| StoreError::Probe(e.to_string()))?;
        let (ram, vram) = *self.credit.lock().unwrap_or_else(|e| e.into_inner());
        hw.memory.available_bytes = (hw.memory.available_bytes + ram).min(hw.memory.total_bytes);
        if let Some(gpu) = hw.gpus.first_mut() {
            gpu.vram_free_bytes = (gpu.vram_free_bytes + vram).min(gpu.vram_total_bytes);
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
        self.choose_with(&self.settings().policy)
    }

    fn choose_with(
        &self,
        policy: &PlannerConfig,
    ) -> Result<(Vec<ModelEntry>, Plan, select::Choice), StoreError> {
        let entries = self.scan();
        let hw = self.hardware()?;
        let plan = planner::plan(&hw, &present(&entries), policy);
        let choice = select::choose(&plan, &entries, policy.min_tokens_per_s, &self.searched());
        self.remember(&choice.reason, &plan);
        Ok((entries, plan, choice))
    }

    /// What to load at start when no model path is configured: the best present R1, with the
    /// reason; when none, `None` and a reason that names the command that fixes it. With
    /// `auto_pull`, also the pull of the planner's choice when it is not present. Blocking.
    pub fn startup(&self) -> (Option<LoadSpec>, String, Option<PullSpec>) {
        match self.choose() {
            Ok((entries, plan, choice)) => {
                let load = choice
                    .entry
                    .zip(choice.candidate)
                    .map(|(e, c)| self.load_spec(&entries[e], Some(&plan.candidates[c])));
                let pull = choice
                    .missing
                    .filter(|_| self.auto_pull())
                    .and_then(|ci| catalog_spec(&plan.candidates[ci]).ok());
                self.record(&choice.reason, Some(MoreMemory::of(&plan)));
                (load, choice.reason, pull)
            }
            Err(e) => {
                let reason = format!("{e}; run `r1ctl use NAME` to serve a model by name");
                self.set_selection(&reason);
                (None, reason, None)
            }
        }
    }

    /// The last selection's reason.
    pub fn selection(&self) -> Option<String> {
        locked(&self.selection).reason.clone()
    }

    /// What the planner said more memory would bring when it chose the resident model (empty
    /// when the model was named rather than chosen).
    pub fn upgrades(&self) -> Vec<planner::Upgrade> {
        locked(&self.selection)
            .more
            .as_ref()
            .map(|m| m.upgrades.clone())
            .unwrap_or_default()
    }

    /// [`Plan::more_memory`] of the plan that chose the resident model.
    pub fn more_memory(&self) -> Option<String> {
        locked(&self.selection)
            .more
            .as_ref()
            .map(|m| m.text.clone())
    }

    /// Records why the resident model is what it is; with a reason that [`Store::choose`] or
    /// [`Store::resolve_use`] gave last (or the one recorded already), also what its plan said
    /// more memory would bring; with any other reason (a model named by path), nothing about it.
    pub fn set_selection(&self, reason: &str) {
        let planned = locked(&self.pending)
            .as_ref()
            .filter(|(r, _)| r == reason)
            .map(|(_, m)| m.clone());
        let mut selection = locked(&self.selection);
        let more = planned.or_else(|| {
            (selection.reason.as_deref() == Some(reason))
                .then(|| selection.more.clone())
                .flatten()
        });
        *selection = Selection {
            reason: Some(reason.to_owned()),
            more,
        };
    }

    fn record(&self, reason: &str, more: Option<MoreMemory>) {
        *locked(&self.selection) = Selection {
            reason: Some(reason.to_owned()),
            more,
        };
    }

    /// Keeps what `plan` says about more memory for when a caller records `reason`.
    fn remember(&self, reason: &str, plan: &Plan) {
        *locked(&self.pending) = Some((reason.to_owned(), MoreMemory::of(plan)));
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
    pub fn resolve_use(&self, name: &str) -> Result<(LoadSpec, String), StoreError> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("auto") {
            let (entries, plan, choice) = self.choose()?;
            return match choice.entry.zip(choice.candidate) {
                Some((e, c)) => {
                    self.remember(&choice.reason, &plan);
                    Ok((
                        self.load_spec(&entries[e], Some(&plan.candidates[c])),
                        choice.reason,
                    ))
                }
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
            let (entries, plan, choice) = self.choose_with(&policy)?;
            return match choice.entry.zip(choice.candidate) {
                Some((e, c)) => {
                    let reason = format!("pinned to {}: {}", v.id, choice.reason);
                    self.remember(&reason, &plan);
                    Ok((
                        self.load_spec(&entries[e], Some(&plan.candidates[c])),
                        reason,
                    ))
                }
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
        let entries = self.scan();
        let Some(entry) = entries
            .iter()
            .filter(|e| e.matches(name))
            .max_by_key(|e| e.is_usable())
        else {
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
        Ok((
            self.load_spec(entry, None),
            format!(
                "{} ({}): asked for by name",
                entry.name,
                entry.path.display()
            ),
        ))
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
        let plan = planner::plan(&hw, &present(&self.scan()), &policy);
        match plan.chosen() {
            Some(c) => catalog_spec(c),
            None => Err(StoreError::DoesNotFit {
                variant: v.id.to_owned(),
                reason: plan.reason.clone(),
            }),
        }
    }

    /// At start: a configured model (`load`) wins; otherwise the selection from the store. The
    /// second value is the reason for serving nothing (with `config_error` first), the third the
    /// pull `auto_pull` asks for.
    pub async fn at_start(
        self: &Arc<Self>,
        load: Option<LoadSpec>,
        config_error: Option<String>,
    ) -> (Option<LoadSpec>, Option<String>, Option<PullSpec>) {
        if let Some(load) = load {
            self.set_selection("the model configured with [model] path or --model");
            return (Some(load), config_error, None);
        }
        let this = self.clone();
        let (load, reason, pull) = tokio::task::spawn_blocking(move || this.startup())
            .await
            .unwrap_or_else(|e| (None, format!("failed to scan the model store: {e}"), None));
        tracing::info!("model selection: {reason}");
        let reason = match config_error {
            Some(c) => format!("{c}; {reason}"),
            None => reason,
        };
        (load, Some(reason), pull)
    }

    /// `auto_pull`: pulls `spec` in the background and, when it is in place, loads the selection
    /// again (the best present model is served meanwhile). The selection's reason (`/r1/status`)
    /// says that the pull runs, and then how it ended: the model it brought is served, or why
    /// the pulled file cannot be, or why the pull failed.
    pub fn spawn_auto_pull(self: &Arc<Self>, spec: PullSpec, then: AfterPull) {
        let this = self.clone();
        let label = spec.label.clone();
        tracing::info!("auto_pull: pulling {label}");
        let before = self.selection().unwrap_or_default();
        let amend = move |store: &Store, what: String| {
            let reason = if before.is_empty() {
                what
            } else {
                format!("{before}; {what}")
            };
            let mut selection = locked(&store.selection);
            selection.reason = Some(reason);
        };
        amend(self, format!("auto_pull: pulling {label}"));
        let mut rx = self.pull(spec);
        tokio::spawn(async move {
            while !rx.borrow_and_update().is_final() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
            let end = rx.borrow().clone();
            let (path, sha256) = match end {
                PullState::Done { path, sha256, .. } => (path, sha256),
                PullState::Failed(why) => {
                    tracing::warn!("auto_pull of {label} failed: {why}");
                    amend(&this, format!("auto_pull of {label} failed: {why}"));
                    return;
                }
                _ => {
                    amend(
                        &this,
                        format!("auto_pull of {label} ended without a result"),
                    );
                    return;
                }
            };
            let pulled = format!(
                "auto_pull: {label} is in {}{}",
                path.display(),
                sha256
                    .map(|s| format!(" (sha256 {s} verified)"))
                    .unwrap_or_default()
            );
            let store = this.clone();
            let unusable = tokio::task::spawn_blocking(move || {
                let entry = store.scan().into_iter().find(|e| e.path == path);
                match entry {
                    Some(e) if !e.is_usable() => {
                        Some(format!("it cannot be served: {}", e.status_text()))
                    }
                    _ => None,
                }
            })
            .await
            .unwrap_or_else(|e| Some(format!("the store scan failed: {e}")));
            if let Some(why) = unusable {
                tracing::warn!("{pulled}, but {why}");
                amend(&this, format!("{pulled}, but {why}"));
                return;
            }
            // The selection again, through whoever decides (a pin still wins).
            if let Err(e) = then().await {
                amend(&this, format!("{pulled}, but loading it failed: {e}"));
            }
        });
    }

    /// Starts (or joins) a pull.
    pub fn pull(&self, spec: PullSpec) -> watch::Receiver<PullState> {
        self.puller.start(spec)
    }
}

/// What `auto_pull` does once the pulled file is in place and usable: choose again and load
/// (`Supervisor::replan_now`, so a run-time pin still wins); `Err` says why loading failed.
pub type AfterPull = Box<
    dyn FnOnce() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<String, String>> + Send>,
        > + Send,
>;

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

fn catalog_spec(c: &planner::Candidate) -> Result<PullSpec, StoreError> {
    spec_of(c.variant, c.quantization)
}

/// The planner's "present" list: usable files of catalog variants.
pub fn present(entries: &[ModelEntry]) -> Vec<Present> {
    entries
        .iter()
        .filter(|e| e.is_usable())
        .filter_map(|e| {
            let id = e.identity.as_ref()?;
            Some(Present {
                variant: id.variant?.id.to_owned(),
                quantization: id.catalog_quantization?.name.to_owned(),
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
mod tests {
    use super::*;
    use gguf_header::write::{gguf, Meta};

    fn r1_7b(data: u64) -> Vec<u8> {
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

    /// A store of `models` on the fake "workstation" machine (AMD GPU), other stores off.
    fn workstation_store(models: &std::path::Path) -> Arc<Store> {
        let mut config = Config::default();
        config.store.dir = Some(models.to_owned());
        config.store.scan_huggingface = false;
        config.store.scan_ollama = false;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hardware/workstation");
        Store::new(
            &config,
            Mode::User,
            Probe::fake_root(root, models.to_owned()),
        )
    }

    #[test]
    fn status_keeps_what_more_memory_would_bring_only_for_the_selection_it_was_planned_for() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf"),
            r1_7b(576),
        )
        .unwrap();
        let store = workstation_store(dir.path());
        let (_, plan, _) = store.choose().unwrap();
        assert!(!plan.upgrades.is_empty(), "{}", plan.more_memory);
        // `r1ctl use auto`: the plan behind the reason travels with it.
        let (_, reason) = store.resolve_use("auto").unwrap();
        assert!(reason.starts_with("deepseek-r1:7b Q4_K_M"), "{reason}");
        store.set_selection(&reason);
        assert_eq!(store.selection().as_deref(), Some(reason.as_str()));
        assert_eq!(store.upgrades(), plan.upgrades);
        assert_eq!(store.more_memory(), Some(plan.more_memory.clone()));
        // The same selection again (a re-plan that keeps the model) keeps it.
        store.set_selection(&reason);
        assert_eq!(store.upgrades(), plan.upgrades);
        // `choose` (the supervisor's re-plan) gives a reason that carries its plan too.
        let (_, again, choice) = store.choose().unwrap();
        store.set_selection("something else");
        store.set_selection(&choice.reason);
        assert_eq!(store.upgrades(), again.upgrades);
        // A model named by path or name was not planned: nothing is said about more memory.
        store.set_selection("the model configured with [model] path or --model");
        assert!(store.upgrades().is_empty());
        assert_eq!(store.more_memory(), None);
        // At start, the selection records its plan's upgrades.
        let (_, reason, _) = store.startup();
        assert_eq!(store.selection(), Some(reason));
        assert_eq!(store.upgrades(), plan.upgrades);
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
                quantization: "Q4_K_M".into()
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
