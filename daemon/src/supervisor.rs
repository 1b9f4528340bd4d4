//! The supervisor: keeps the best-fitting model resident while the config and the machine change
//! under r1d.
//!
//! - **Config**: the config file's directory is watched with `notify` (editors replace files by
//!   rename, so the directory, not the file, is watched; other files in it — editors' temp and
//!   backup files — are ignored); SIGHUP, `POST /r1/reload`, D-Bus `Reload` and `r1ctl reload`
//!   re-read it too. A file that does not parse or validate is rejected with its file, line and
//!   key, and the running config stays in force. Every reload logs what changed.
//! - **Hardware**: every `[watch] hardware_interval_s` the probes run again (memory, cgroup limit,
//!   GPUs) and the planner runs on the result, with the resident model's own memory counted as
//!   free (it would be freed by a swap). A different choice must last `[watch] settle_s` before
//!   r1d acts on it (hysteresis), so a burst of memory use by another program is ignored.
//! - **Acting**: config edits and `r1ctl use` act at once; a re-plan acts by `[watch]
//!   swap_policy`: `auto` (swap now), `idle` (once no request has run for `idle_s`), `manual`
//!   (report the better fit). The engine swaps without failing requests: answers in flight
//!   finish, new ones wait (up to `queue_deadline_s`, then 503 with `Retry-After`); when the
//!   resident model itself no longer fits (memory is disappearing) the swap is forced and running
//!   answers end with an error event. A model that fails to load leaves the previous one serving.
//! - **Events**: every change goes to an event stream (`GET /r1/events`, `r1ctl events`), to
//!   `/r1/status` `watch`, to D-Bus and to systemd `STATUS=`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use r1d_client::wire;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, SwapPolicy};
use crate::engine::{model_name, Engine, EngineError, EngineState, LoadSpec, Snapshot};
use crate::hardware::Probe;
use crate::store::Store;

/// Reads the config file again: `Ok(config)` or the error naming file, line and key.
pub type ReadConfig = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// The model the config (and the command line over it) names, if any: `--model` / `[model] path`.
pub type ConfiguredModel = Box<dyn Fn(&Config) -> Option<LoadSpec> + Send + Sync>;

/// What the supervisor needs.
pub struct Setup {
    /// The engine.
    pub engine: Engine,
    /// The model store (selection, pins).
    pub store: Arc<Store>,
    /// The config in force at start.
    pub config: Config,
    /// The config file (watched when it exists); `None` = none.
    pub config_path: Option<PathBuf>,
    /// How to read it again.
    pub read_config: ReadConfig,
    /// The model the config names.
    pub configured_model: ConfiguredModel,
    /// Why the service is degraded at start (a GPU that did not answer), if it is.
    pub degraded: Option<String>,
    /// How the hardware is probed (for the degraded check).
    pub probe: Probe,
}

/// Handle to the supervisor; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    store: Arc<Store>,
    config_path: Option<PathBuf>,
    read_config: ReadConfig,
    configured_model: ConfiguredModel,
    probe: Probe,
    shutdown: CancellationToken,
    events: broadcast::Sender<wire::Event>,
    view: watch::Sender<wire::WatchStatus>,
    state: Mutex<State>,
    /// Serializes deciding and acting (reload, tick, use), held across the swap.
    acting: tokio::sync::Mutex<()>,
}

/// What a person chose at run time; it wins over the config and the planner until `r1ctl use
/// auto`, or until a config edit changes the model the config names.
#[derive(Debug, Clone, PartialEq)]
enum Pin {
    /// `r1ctl use NAME`: resolved again at each re-plan (the best present quantization of a
    /// pinned variant that fits may change with the machine).
    Name(String),
    /// `POST /r1/load` / D-Bus `Load`: this file with these settings.
    Spec(LoadSpec),
    /// `POST /r1/unload` / D-Bus `Unload`: serve nothing.
    Unloaded,
}

struct State {
    config: Config,
    pinned: Option<Pin>,
    /// A different choice and since when it holds.
    pending: Option<(LoadSpec, String, Instant)>,
    /// The hardware as last reported (to report changes that matter, not every 0.1 GB).
    hardware: Option<crate::hardware::Hardware>,
    /// NVIDIA GPUs the kernel driver lists but the probe did not find.
    degraded: Option<String>,
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An event of `kind` with `message`.
fn event(kind: &str, message: impl Into<String>) -> wire::Event {
    wire::Event {
        kind: kind.to_owned(),
        time: now_s(),
        message: message.into(),
        state: None,
        model: None,
        changes: Vec::new(),
        error: None,
    }
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_owned())
}

/// The engine state as the wire says it.
pub fn wire_state(s: EngineState) -> wire::State {
    match s {
        EngineState::Starting => wire::State::Starting,
        EngineState::Loading => wire::State::Loading,
        EngineState::Ready => wire::State::Ready,
        EngineState::NoModel => wire::State::NoModel,
        EngineState::Swapping => wire::State::Swapping,
    }
}

/// What a re-plan wants loaded, and why.
struct Wanted {
    spec: Option<LoadSpec>,
    reason: String,
}

/// Whether two load specs load the same thing (the same file with the same settings).
fn same(a: &LoadSpec, b: &LoadSpec) -> bool {
    a == b
}

/// NVIDIA GPUs the kernel driver lists (`/proc/driver/nvidia/gpus/*`) below `probe`'s root.
pub fn nvidia_gpus_listed(probe: &Probe) -> usize {
    std::fs::read_dir(probe.path("/proc/driver/nvidia/gpus"))
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0)
}

/// Why the probe result is degraded: the driver lists NVIDIA GPUs the probe (NVML) did not find.
pub fn degraded_reason(probe: &Probe, hw: &crate::hardware::Hardware) -> Option<String> {
    let listed = nvidia_gpus_listed(probe);
    let found = hw
        .gpus
        .iter()
        .filter(|g| g.vendor == crate::hardware::GpuVendor::Nvidia)
        .count();
    (listed > found).then(|| {
        format!(
            "the NVIDIA driver lists {listed} GPU(s) but {found} answered (NVML); planning without \
             them until they do"
        )
    })
}

/// At start: waits up to `wait` for GPUs the NVIDIA driver lists but NVML does not see yet (a
/// boot-time race with the driver), probing once a second. Returns why r1d is degraded when
/// they did not show up. Returns at once on a machine without such GPUs. Blocking.
pub fn wait_for_gpus(probe: &Probe, wait: Duration) -> Option<String> {
    let deadline = Instant::now().checked_add(wait);
    let mut logged = false;
    loop {
        let hw = probe.run().ok()?;
        let reason = degraded_reason(probe, &hw)?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!("degraded: {reason}");
            return Some(reason);
        }
        if !logged {
            tracing::info!("waiting up to {} s for the GPUs: {reason}", wait.as_secs());
            logged = true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

impl Supervisor {
    /// Starts the supervisor: the config watcher, the hardware watcher and the event feed of
    /// engine states. Ends with `shutdown`.
    pub fn start(setup: Setup, shutdown: CancellationToken) -> Supervisor {
        let (events, _) = broadcast::channel(256);
        let watch_cfg = setup.config.watch.clone();
        setup
            .engine
            .set_queue_deadline(seconds(watch_cfg.queue_deadline_s));
        let (view, _) = watch::channel(wire::WatchStatus {
            config_path: setup.config_path.as_ref().map(|p| p.display().to_string()),
            swap_policy: policy_name(watch_cfg.swap_policy).into(),
            degraded: setup.degraded.clone(),
            ..Default::default()
        });
        let supervisor = Supervisor {
            inner: Arc::new(Inner {
                engine: setup.engine,
                store: setup.store,
                config_path: setup.config_path,
                read_config: setup.read_config,
                configured_model: setup.configured_model,
                probe: setup.probe,
                shutdown: shutdown.clone(),
                events,
                view,
                state: Mutex::new(State {
                    config: setup.config,
                    pinned: None,
                    pending: None,
                    hardware: None,
                    degraded: setup.degraded,
                }),
                acting: tokio::sync::Mutex::new(()),
            }),
        };
        tokio::spawn(supervisor.clone().follow_engine(shutdown.clone()));
        if watch_cfg.config {
            supervisor.clone().watch_config(shutdown.clone());
        }
        tokio::spawn(supervisor.clone().watch_hardware(shutdown));
        supervisor
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn config(&self) -> Config {
        self.state().config.clone()
    }

    /// Sends an event to every listener (and nowhere when none listens).
    pub fn emit(&self, e: wire::Event) {
        let _ = self.inner.events.send(e);
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<wire::Event> {
        self.inner.events.subscribe()
    }

    /// What `/r1/status` shows under `watch`.
    pub fn view(&self) -> wire::WatchStatus {
        let mut v = self.inner.view.borrow().clone();
        let snap = self.inner.engine.snapshot();
        v.last_load_error = snap.last_load_error;
        if let Some(path) = snap.queued_load {
            v.pending = Some(format!(
                "swapping to {} once the answers before it finish ({} queued or running)",
                path.display(),
                self.inner.engine.active_requests()
            ));
        }
        v
    }

    /// Cancelled when r1d shuts down (event streams end then).
    pub fn stopping(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Reads the config file and says whether it would be accepted, without applying it (for
    /// D-Bus `Reload`, which answers before the reload has finished).
    ///
    /// # Errors
    /// The file's error (file, line, key).
    pub fn check_config(&self) -> Result<(), String> {
        (self.inner.read_config)().map(|_| ())
    }

    /// A receiver that sees every change of [`Supervisor::view`] (for D-Bus).
    pub fn subscribe_view(&self) -> watch::Receiver<wire::WatchStatus> {
        self.inner.view.subscribe()
    }

    /// Whether the service is degraded, and why.
    pub fn degraded(&self) -> Option<String> {
        self.state().degraded.clone()
    }

    /// The state to report: the engine's, but `degraded` while serving without a GPU that should
    /// be there.
    pub fn reported_state(&self, snapshot: &Snapshot) -> wire::State {
        match (snapshot.state, self.degraded()) {
            (EngineState::Ready, Some(_)) => wire::State::Degraded,
            (s, _) => wire_state(s),
        }
    }

    fn update_view(&self, f: impl FnOnce(&mut wire::WatchStatus)) {
        self.inner.view.send_modify(f);
    }

    /// Emits `state` events for the engine's state changes (and load progress in 10 % steps),
    /// and keeps the store's memory credit equal to the resident model's footprint.
    async fn follow_engine(self, shutdown: CancellationToken) {
        let mut rx = self.inner.engine.changes();
        let mut last: Option<(EngineState, Option<String>, Option<String>, u32)> = None;
        let mut next = Some(self.inner.engine.snapshot());
        loop {
            let snap = match next.take() {
                Some(s) => s,
                None => tokio::select! {
                    got = rx.recv() => match got {
                        Ok(s) => s,
                        Err(broadcast::error::RecvError::Lagged(_)) => self.inner.engine.snapshot(),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    () = shutdown.cancelled() => return,
                },
            };
            let model = snap.model.as_ref().map(|(i, _)| model_name(i));
            let loading = snap.loading.as_ref().map(|p| p.display().to_string());
            let decile = (snap.progress.unwrap_or(0.0) * 10.0).floor() as u32;
            let key = (snap.state, model.clone(), loading.clone(), decile);
            if last.as_ref() != Some(&key) {
                if let Some((_, m, _, _)) = &last {
                    if *m != model {
                        self.update_credit(&snap);
                    }
                } else {
                    self.update_credit(&snap);
                }
                let message = crate::systemd::status_line(&snap, None);
                let mut e = event("state", message);
                e.state = Some(self.reported_state(&snap));
                e.model = model.or(loading.map(|l| file_name(&l)));
                e.error = snap.error.clone();
                self.emit(e);
                last = Some(key);
            }
        }
    }

    fn update_credit(&self, snap: &Snapshot) {
        let (ram, vram) = match &snap.model {
            Some((info, _)) => {
                let m = &info.memory;
                let total = m.weights_bytes + m.kv_cache_bytes + m.compute_bytes.unwrap_or(0);
                (total.saturating_sub(m.gpu_bytes), m.gpu_bytes)
            }
            None => (0, 0),
        };
        self.inner.store.set_credit(ram, vram);
    }

    // ---- Config ----

    /// Watches the config file's directory (and, for a symlinked config, its target's); a change
    /// of the file (written in place, or replaced by rename) reloads it after 300 ms of quiet.
    /// When the directory does not exist yet (a first config not written yet), it is looked for
    /// every 2 s and watched once it appears. `[watch] config = false` (also set by a reload)
    /// ignores the changes; SIGHUP and `r1ctl reload` still reload.
    fn watch_config(self, shutdown: CancellationToken) {
        let Some(path) = self.inner.config_path.clone() else {
            return;
        };
        tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let mut watcher = None;
            let mut said_missing = false;
            loop {
                if watcher.is_none() {
                    match watch_dirs(&path, tx.clone()) {
                        Ok(w) => {
                            tracing::info!("watching {} for changes", path.display());
                            watcher = Some(w);
                            if said_missing {
                                // The directory (and maybe the file) appeared: read it.
                                self.reload("the file appeared").await;
                            }
                        }
                        Err(e) if !said_missing => {
                            tracing::info!(
                                "not watching {} yet ({e}); looking again every 2 s; SIGHUP and `r1ctl reload` reload it",
                                path.display()
                            );
                            said_missing = true;
                        }
                        Err(_) => {}
                    }
                }
                let wait = if watcher.is_some() {
                    Duration::from_secs(3600)
                } else {
                    Duration::from_secs(2)
                };
                tokio::select! {
                    got = tokio::time::timeout(wait, rx.recv()) => match got {
                        Ok(Some(())) => {}
                        Ok(None) => return,
                        Err(_) => continue,
                    },
                    () = shutdown.cancelled() => return,
                }
                // Quiet period: an editor's write, rename and chmod come as several events.
                loop {
                    tokio::select! {
                        got = tokio::time::timeout(Duration::from_millis(300), rx.recv()) => match got {
                            Ok(Some(())) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        },
                        () = shutdown.cancelled() => return,
                    }
                }
                if !self.config().watch.config {
                    tracing::info!(
                        "{} changed; not reloading ([watch] config = false)",
                        path.display()
                    );
                    continue;
                }
                // In a task of its own: a reload may wait for a slow load, and a newer edit
                // must be read meanwhile (it supersedes that load).
                let this = self.clone();
                tokio::spawn(async move { this.reload("the file changed").await });
            }
        });
    }

    /// Reads the config again and applies it: `[model]`, `[planner]`, `[store] auto_pull` and
    /// `[watch]` take effect now (a different model is loaded at once; answers in flight finish
    /// first); keys that need a restart are named in the log. A file that does not parse or
    /// validate is rejected and the running config stays in force. `origin` says what asked
    /// (`SIGHUP`, `r1ctl reload`, …), for the log.
    pub async fn reload(&self, origin: &str) -> wire::ReloadOutcome {
        let acting = self.inner.acting.lock().await;
        let config_path = self
            .inner
            .config_path
            .as_ref()
            .map(|p| p.display().to_string());
        let read = (self.inner.read_config)();
        let new = match read {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(
                    "config reload ({origin}) rejected, the running config stays in force: {error}"
                );
                // TOML errors come with a quoted line and a caret: one line for status and events.
                let line = one_line(&error);
                self.update_view(|v| v.config_error = Some(line.clone()));
                let mut e = event(
                    "config",
                    format!("rejected, the running config stays in force: {line}"),
                );
                e.error = Some(line);
                self.emit(e);
                return wire::ReloadOutcome {
                    config_path,
                    changes: Vec::new(),
                    error: Some(error),
                    model: self.model_line(),
                };
            }
        };
        let old = self.config();
        // Keys read once at start: said so beside the change, not pretended applied.
        const AT_RESTART: [&str; 9] = [
            "[server] socket",
            "[server] queue_depth",
            "[plugins] dir",
            "[store] dir",
            "[store] scan_huggingface",
            "[store] huggingface_cache",
            "[store] scan_ollama",
            "[store] ollama_models",
            "[model] default_max_tokens",
        ];
        let changes: Vec<String> = config::diff(&old, &new)
            .into_iter()
            .map(|line| {
                if AT_RESTART
                    .iter()
                    .any(|k| line.starts_with(&format!("{k}:")))
                {
                    format!("{line} (takes effect when r1d restarts)")
                } else {
                    line
                }
            })
            .collect();
        if changes.is_empty() {
            tracing::info!("config reload ({origin}): nothing changed");
        }
        for line in &changes {
            tracing::info!("config reload ({origin}): {line}");
        }
        if (self.inner.configured_model)(&old) != (self.inner.configured_model)(&new)
            || old.planner.variant != new.planner.variant
        {
            // The person edited which model to serve: that beats a run-time pin.
            self.set_pin(None);
        }
        self.inner.store.reconfigure(&new);
        self.inner
            .engine
            .set_queue_deadline(seconds(new.watch.queue_deadline_s));
        self.state().config = new.clone();
        self.update_view(|v| {
            v.config_error = None;
            v.swap_policy = policy_name(new.watch.swap_policy).into();
        });
        let mut e = event(
            "config",
            if changes.is_empty() {
                format!("reloaded ({origin}): nothing changed")
            } else {
                format!("reloaded ({origin}): {}", changes.join("; "))
            },
        );
        e.changes = changes.clone();
        self.emit(e);
        // A config edit is the person's intent: it acts now, whatever the swap policy.
        let model = match self.wanted().await {
            Ok(wanted) => self
                .apply(acting, wanted, None, "the config changed")
                .await
                .unwrap_or_else(|e| e),
            Err(e) => format!("kept the resident model: {e}"),
        };
        wire::ReloadOutcome {
            config_path,
            changes,
            error: None,
            model,
        }
    }

    fn model_line(&self) -> String {
        match &self.inner.engine.snapshot().model {
            Some((info, _)) => format!("kept {}", model_name(info)),
            None => "no model is resident".into(),
        }
    }

    // ---- Deciding ----

    /// What should be resident now: the run-time pin, else the configured model, else the
    /// planner's best present choice.
    async fn wanted(&self) -> Result<Wanted, String> {
        let config = self.config();
        let pinned = self.state().pinned.clone();
        match &pinned {
            Some(Pin::Spec(spec)) => {
                return Ok(Wanted {
                    spec: Some(spec.clone()),
                    reason: format!("{} was loaded on request", spec.params.path),
                })
            }
            Some(Pin::Unloaded) => {
                return Ok(Wanted {
                    spec: None,
                    reason: "the model was unloaded on request".into(),
                })
            }
            Some(Pin::Name(_)) => {}
            None => {
                if let Some(spec) = (self.inner.configured_model)(&config) {
                    return Ok(Wanted {
                        spec: Some(spec),
                        reason: "the model configured with [model] path or --model".into(),
                    });
                }
            }
        }
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || match pinned {
            Some(Pin::Name(name)) => store
                .resolve_use(&name)
                .map(|(spec, reason)| Wanted {
                    spec: Some(spec),
                    reason,
                })
                .map_err(|e| e.to_string()),
            _ => {
                let (entries, plan, choice) = store.choose().map_err(|e| e.to_string())?;
                let spec = choice
                    .entry
                    .zip(choice.candidate)
                    .map(|(e, c)| store.load_spec(&entries[e], Some(&plan.candidates[c])));
                Ok(Wanted {
                    spec,
                    reason: choice.reason,
                })
            }
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Loads `wanted` when it differs from the resident model. `forced`: the resident model no
    /// longer fits, running answers end. Returns one line saying what happened.
    /// `Err` is the load error (the previous model serves again when it could be loaded).
    /// `acting` is released once the load is queued, so a newer decision (another config
    /// edit) can supersede a slow load instead of waiting for it.
    async fn apply(
        &self,
        acting: tokio::sync::MutexGuard<'_, ()>,
        wanted: Wanted,
        forced: Option<String>,
        why: &str,
    ) -> Result<String, String> {
        let engine = &self.inner.engine;
        let snap = engine.snapshot();
        let Some(spec) = wanted.spec else {
            // Nothing present fits: keep what is served rather than serving nothing.
            return Ok(match &snap.model {
                Some((info, _)) => format!(
                    "kept {} (nothing better is present: {})",
                    model_name(info),
                    wanted.reason
                ),
                None => format!("no model: {}", wanted.reason),
            });
        };
        if snap.state == EngineState::Ready
            && snap.queued_load.is_none()
            && snap.spec.as_ref().is_some_and(|s| same(s, &spec))
        {
            self.inner.store.set_selection(&wanted.reason);
            return Ok(self.model_line());
        }
        let from = snap.model.as_ref().map(|(i, _)| model_name(i));
        let to = file_name(&spec.params.path);
        let message = match &from {
            Some(from) => format!("swapping {from} for {to}: {why}"),
            None => format!("loading {to}: {why}"),
        };
        tracing::info!("{message}");
        let mut e = event("swap", message);
        e.model = Some(to.clone());
        self.emit(e);
        self.update_view(|v| {
            v.better = None;
            v.pending = None;
        });
        self.state().pending = None;
        if let Some(reason) = &forced {
            engine.preempt(reason);
        }
        let started = engine.start_load(spec).await;
        drop(acting);
        let result = match started {
            Ok(outcome) => outcome.await.unwrap_or(Err(EngineError::ShuttingDown)),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.inner.store.set_selection(&wanted.reason);
                let now = engine.snapshot();
                let name = now.model.as_ref().map(|(i, _)| model_name(i)).unwrap_or(to);
                let mut e = event("swap", format!("serving {name}"));
                e.model = Some(name.clone());
                self.emit(e);
                Ok(format!("serving {name}"))
            }
            Err(err) => {
                let text = err.to_string();
                tracing::error!("{text}");
                if let Some((info, _)) = &engine.snapshot().model {
                    self.inner.store.set_selection(&format!(
                        "{} kept serving: {to} failed to load ({})",
                        model_name(info),
                        one_line(&text)
                    ));
                }
                let mut e = event("swap", format!("failed: {text}"));
                e.error = Some(text.clone());
                self.emit(e);
                Err(text)
            }
        }
    }

    /// `r1ctl use NAME`: pins a variant or model and loads it; `auto` drops the pin and loads
    /// what the config or the planner wants. Returns why it was chosen.
    ///
    /// # Errors
    /// The store's error (unknown, not present, does not fit) or the engine's (load failed: the
    /// previous model serves again).
    pub async fn use_model(
        &self,
        name: &str,
    ) -> Result<String, Result<crate::store::StoreError, EngineError>> {
        let acting = self.inner.acting.lock().await;
        let name = name.trim();
        if name.starts_with('/') {
            // A file by its path, as D-Bus `Use` takes it: the same as `POST /r1/load`.
            let spec = LoadSpec {
                params: crate::engine::LoadParams {
                    path: name.to_owned(),
                    ..Default::default()
                },
                backend: None,
            };
            let pin = Pin::Spec(spec.clone());
            let reason = format!("{name} was loaded on request");
            return self
                .pinned_load(acting, pin, spec, reason)
                .await
                .map_err(Err);
        }
        if name.eq_ignore_ascii_case("auto") {
            self.set_pin(None);
            let wanted = self
                .wanted()
                .await
                .map_err(|e| Err(EngineError::Backend(e)))?;
            let Some(spec) = wanted.spec else {
                return Err(Ok(crate::store::StoreError::Unusable {
                    name: "auto".into(),
                    reason: wanted.reason,
                }));
            };
            return self
                .load_now(acting, spec, wanted.reason)
                .await
                .map_err(Err);
        }
        let store = self.inner.store.clone();
        let query = name.to_owned();
        let (spec, reason) = tokio::task::spawn_blocking(move || store.resolve_use(&query))
            .await
            .map_err(|e| Err(EngineError::Backend(e.to_string())))?
            .map_err(Ok)?;
        let pin = Pin::Name(name.to_owned());
        self.pinned_load(acting, pin, spec, reason)
            .await
            .map_err(Err)
    }

    /// Chooses again now and loads the choice when it differs from the resident model (after
    /// `auto_pull` brought a file): the pin, the configured model or the planner's best present
    /// one. Returns one line saying what happened.
    ///
    /// # Errors
    /// Why the choice could not be made, or the load error.
    pub async fn replan_now(&self, why: &str) -> Result<String, String> {
        let acting = self.inner.acting.lock().await;
        let wanted = self.wanted().await?;
        self.apply(acting, wanted, None, why).await
    }

    /// `POST /r1/load` / D-Bus `Load`: loads `spec` and keeps it through re-plans (until `r1ctl
    /// use auto` or a config edit of the model).
    ///
    /// # Errors
    /// The engine's: the load failed (the previous model serves again).
    pub async fn load(&self, spec: LoadSpec) -> Result<String, EngineError> {
        let acting = self.inner.acting.lock().await;
        let reason = format!("{} was loaded on request", spec.params.path);
        self.pinned_load(acting, Pin::Spec(spec.clone()), spec, reason)
            .await
    }

    /// `POST /r1/unload` / D-Bus `Unload`: unloads the model and serves nothing until `r1ctl use`
    /// or a config edit of the model.
    ///
    /// # Errors
    /// [`EngineError::ShuttingDown`].
    pub async fn unload(&self) -> Result<(), EngineError> {
        let _acting = self.inner.acting.lock().await;
        self.set_pin(Some(Pin::Unloaded));
        self.inner.engine.unload().await
    }

    /// Pins `pin` and loads `spec`; when the load fails, the pin before it comes back (unless
    /// a newer decision pinned something else meanwhile).
    async fn pinned_load(
        &self,
        acting: tokio::sync::MutexGuard<'_, ()>,
        pin: Pin,
        spec: LoadSpec,
        reason: String,
    ) -> Result<String, EngineError> {
        let before = self.set_pin(Some(pin.clone()));
        let result = self.load_now(acting, spec, reason).await;
        if result.is_err() && self.state().pinned.as_ref() == Some(&pin) {
            self.set_pin(before);
        }
        result
    }

    /// Sets the pin; returns the one before.
    fn set_pin(&self, pin: Option<Pin>) -> Option<Pin> {
        let shown = match &pin {
            Some(Pin::Name(n)) => Some(n.clone()),
            Some(Pin::Spec(s)) => Some(s.params.path.clone()),
            Some(Pin::Unloaded) => Some("nothing (unloaded on request)".into()),
            None => None,
        };
        let before = {
            let mut st = self.state();
            st.pending = None;
            std::mem::replace(&mut st.pinned, pin)
        };
        self.update_view(|v| {
            v.pinned = shown;
            v.better = None;
            v.pending = None;
        });
        before
    }

    /// Loads `spec` now (through the engine's queue), records why and says so in events.
    async fn load_now(
        &self,
        acting: tokio::sync::MutexGuard<'_, ()>,
        spec: LoadSpec,
        reason: String,
    ) -> Result<String, EngineError> {
        let to = file_name(&spec.params.path);
        let mut e = event("swap", format!("loading {to}: asked for ({reason})"));
        e.model = Some(to.clone());
        self.emit(e);
        let started = self.inner.engine.start_load(spec).await;
        drop(acting);
        let result = match started {
            Ok(outcome) => outcome.await.unwrap_or(Err(EngineError::ShuttingDown)),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.inner.store.set_selection(&reason);
                let name = self
                    .inner
                    .engine
                    .snapshot()
                    .model
                    .map(|(i, _)| model_name(&i))
                    .unwrap_or(to);
                let mut e = event("swap", format!("serving {name}"));
                e.model = Some(name);
                self.emit(e);
                Ok(reason)
            }
            Err(err) => {
                let mut e = event("swap", format!("failed: {}", one_line(&err.to_string())));
                e.error = Some(err.to_string());
                self.emit(e);
                Err(err)
            }
        }
    }

    // ---- Hardware ----

    async fn watch_hardware(self, shutdown: CancellationToken) {
        let mut last_probe = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = shutdown.cancelled() => return,
            }
            let interval = self.config().watch.hardware_interval_s;
            if interval <= 0.0 {
                continue;
            }
            let due = last_probe.elapsed().as_secs_f64() >= interval;
            if due {
                last_probe = Instant::now();
                self.tick().await;
            } else {
                self.idle_check().await;
            }
        }
    }

    /// One hardware re-probe and re-plan, with hysteresis.
    async fn tick(&self) {
        let acting = self.inner.acting.lock().await;
        let engine = &self.inner.engine;
        let snap = engine.snapshot();
        // Not while a load runs or waits in the queue: it would supersede the load someone asked
        // for, and compare against a model that is about to go.
        if snap.queued_load.is_some()
            || matches!(
                snap.state,
                EngineState::Loading | EngineState::Swapping | EngineState::Starting
            )
        {
            return;
        }
        let probe = self.inner.probe.clone();
        let store = self.inner.store.clone();
        let Ok(Ok(hw)) = tokio::task::spawn_blocking(move || store.hardware()).await else {
            return;
        };
        self.note_hardware(&probe, &hw);
        let config = self.config();
        let wanted = match self.wanted().await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!("re-plan: {e}");
                return;
            }
        };
        let current = snap.spec.clone();
        let differs = match (&wanted.spec, &current) {
            (Some(w), Some(c)) => !same(w, c),
            (Some(_), None) => true,
            // Nothing better is present: keep serving what is served.
            (None, _) => false,
        };
        if !differs {
            let had = self.state().pending.take();
            if let Some((spec, _, since)) = had {
                let message = format!(
                    "{} would have fitted better for {:.0} s, less than the settle time ({} s): ignored",
                    file_name(&spec.params.path),
                    since.elapsed().as_secs_f64(),
                    config.watch.settle_s
                );
                tracing::info!("{message}");
                self.emit(event("plan", message));
            }
            self.update_view(|v| {
                v.pending = None;
                v.better = None;
            });
            return;
        }
        let Some(spec) = wanted.spec.clone() else {
            return;
        };
        let failed_before = snap
            .last_failed
            .as_ref()
            .is_some_and(|(f, mtime)| same(f, &spec) && *mtime == modified(&spec));
        if failed_before {
            // Tried and failed, and the file has not changed since: no retry every settle_s
            // (a config edit or `r1ctl use` still tries it).
            return;
        }
        let target = file_name(&spec.params.path);
        let forced = self.resident_no_longer_fits(&hw, &snap);
        // Hysteresis: the same different choice must hold for settle_s.
        let since = {
            let mut st = self.state();
            match &st.pending {
                Some((p, _, since)) if same(p, &spec) => *since,
                _ => {
                    st.pending = Some((spec.clone(), wanted.reason.clone(), Instant::now()));
                    drop(st);
                    let message = format!(
                        "{target} fits better now ({}); acting if that lasts {} s",
                        wanted.reason, config.watch.settle_s
                    );
                    tracing::info!("{message}");
                    let mut e = event("plan", message.clone());
                    e.model = Some(target.clone());
                    self.emit(e);
                    self.update_view(|v| v.pending = Some(message));
                    Instant::now()
                }
            }
        };
        // With nothing served there is nothing to flap between: serve at once.
        if snap.model.is_some() && since.elapsed().as_secs_f64() < config.watch.settle_s {
            return;
        }
        self.act_on_plan(acting, wanted, forced, &config).await;
    }

    /// Acts on a settled re-plan by the swap policy.
    async fn act_on_plan(
        &self,
        acting: tokio::sync::MutexGuard<'_, ()>,
        wanted: Wanted,
        forced: Option<String>,
        config: &Config,
    ) {
        let Some(spec) = &wanted.spec else { return };
        let target = file_name(&spec.params.path);
        let policy = config.watch.swap_policy;
        let idle = self.inner.engine.idle_for().as_secs_f64();
        let go = forced.is_some() && policy != SwapPolicy::Manual
            || policy == SwapPolicy::Auto
            || policy == SwapPolicy::Idle && idle >= config.watch.idle_s;
        if go {
            let why = if self.inner.engine.snapshot().model.is_some() {
                "the machine changed"
            } else {
                "nothing is served and this can be"
            };
            let _ = self.apply(acting, wanted, forced, why).await;
            return;
        }
        let message = match policy {
            SwapPolicy::Manual => format!(
                "{target} fits better ({}); swap_policy is manual: run `r1ctl use auto` to swap",
                wanted.reason
            ),
            _ => format!(
                "{target} fits better ({}); swapping after {} s without requests",
                wanted.reason, config.watch.idle_s
            ),
        };
        let unchanged = self.inner.view.borrow().better.as_deref() == Some(message.as_str());
        if !unchanged {
            tracing::info!("{message}");
            let mut e = event("plan", message.clone());
            e.model = Some(target);
            self.emit(e);
            self.update_view(|v| {
                v.better = Some(message);
                v.pending = None;
            });
        }
    }

    /// Under `idle`: swaps to a settled better fit once r1d has been idle long enough.
    async fn idle_check(&self) {
        let config = self.config();
        if config.watch.swap_policy != SwapPolicy::Idle
            || self.inner.engine.snapshot().queued_load.is_some()
            || self.inner.view.borrow().better.is_none()
            || self.inner.engine.idle_for().as_secs_f64() < config.watch.idle_s
        {
            return;
        }
        let acting = self.inner.acting.lock().await;
        if let Ok(wanted) = self.wanted().await {
            let _ = self
                .apply(acting, wanted, None, "r1d is idle and the machine changed")
                .await;
        }
    }

    /// When the resident model's own memory is no longer there (the probe, with its footprint
    /// counted as free, has less than the footprint), why.
    fn resident_no_longer_fits(
        &self,
        hw: &crate::hardware::Hardware,
        snap: &Snapshot,
    ) -> Option<String> {
        let (info, _) = snap.model.as_ref()?;
        let m = &info.memory;
        let ram_need = (m.weights_bytes + m.kv_cache_bytes).saturating_sub(m.gpu_bytes);
        (ram_need > 0 && hw.memory.available_bytes < ram_need).then(|| {
            format!(
                "memory is running out: {:.1} GB available, {} needs {:.1} GB",
                hw.memory.available_bytes as f64 / 1e9,
                model_name(info),
                ram_need as f64 / 1e9
            )
        })
    }

    /// Logs and emits a `hardware` event when the machine's summary changed; keeps `degraded`.
    fn note_hardware(&self, probe: &Probe, hw: &crate::hardware::Hardware) {
        let gb = |b: u64| format!("{:.1} GB", b as f64 / 1e9);
        let mut summary = format!(
            "RAM {} available of {}",
            gb(hw.memory.available_bytes),
            gb(hw.memory.total_bytes)
        );
        if let Some(limit) = hw.memory.cgroup_limit_bytes {
            summary += &format!(" (cgroup limit {})", gb(limit));
        }
        if hw.gpus.is_empty() {
            summary += ", no GPU";
        }
        for g in &hw.gpus {
            summary += &format!(
                ", {} {} {} free of {}",
                g.vendor.name(),
                g.name,
                gb(g.vram_free_bytes),
                gb(g.vram_total_bytes)
            );
        }
        let degraded = degraded_reason(probe, hw);
        let (changed, degraded_changed) = {
            let mut st = self.state();
            let changed = st.hardware.as_ref().is_none_or(|last| differs(last, hw));
            if changed {
                st.hardware = Some(hw.clone());
            }
            let degraded_changed = st.degraded != degraded;
            st.degraded = degraded.clone();
            (changed, degraded_changed)
        };
        if changed {
            tracing::debug!("hardware: {summary}");
            self.emit(event("hardware", summary));
        }
        if degraded_changed {
            match &degraded {
                Some(why) => tracing::warn!("degraded: {why}"),
                None => tracing::info!("no longer degraded: every GPU the driver lists answers"),
            }
            self.update_view(|v| v.degraded = degraded.clone());
            let snap = self.inner.engine.snapshot();
            let mut e = event(
                "state",
                degraded
                    .clone()
                    .map(|d| format!("degraded: {d}"))
                    .unwrap_or_else(|| "no longer degraded".into()),
            );
            e.state = Some(self.reported_state(&snap));
            self.emit(e);
        }
    }
}

/// Modification time of a load spec's file (or directory).
fn modified(spec: &LoadSpec) -> Option<std::time::SystemTime> {
    std::fs::metadata(&spec.params.path)
        .and_then(|m| m.modified())
        .ok()
}

/// Watches the directory of `path` and, when `path` is a symlink, its target's directory;
/// sends on `tx` when a file named like the config or its target changes there.
fn watch_dirs(
    path: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut places: Vec<(PathBuf, std::ffi::OsString)> = Vec::new();
    for p in [Some(path.to_owned()), std::fs::canonicalize(path).ok()]
        .into_iter()
        .flatten()
    {
        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
            continue;
        };
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_owned()
        };
        if !places.iter().any(|(d, n)| *d == dir && n == name) {
            places.push((dir, name.to_owned()));
        }
    }
    let names: Vec<std::ffi::OsString> = places.iter().map(|(_, n)| n.clone()).collect();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        // Only the config file itself: an editor's swap, temp and backup files in the same
        // directory are not the config.
        if ev
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|f| names.iter().any(|n| n == f)))
        {
            let _ = tx.send(());
        }
    })?;
    for (dir, _) in &places {
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// Whether `now` differs from `last` enough to report: the total, the cgroup limit or the GPUs
/// changed, or free RAM or a GPU's free VRAM moved by 5 % of its total (at least 0.5 GB).
fn differs(last: &crate::hardware::Hardware, now: &crate::hardware::Hardware) -> bool {
    let moved = |a: u64, b: u64, total: u64| a.abs_diff(b) >= (total / 20).max(500_000_000);
    last.memory.total_bytes != now.memory.total_bytes
        || last.memory.cgroup_limit_bytes != now.memory.cgroup_limit_bytes
        || moved(
            last.memory.available_bytes,
            now.memory.available_bytes,
            now.memory.total_bytes,
        )
        || last.gpus.len() != now.gpus.len()
        || last.gpus.iter().zip(&now.gpus).any(|(a, b)| {
            a.name != b.name
                || a.vram_total_bytes != b.vram_total_bytes
                || moved(a.vram_free_bytes, b.vram_free_bytes, b.vram_total_bytes)
        })
}

/// `s` seconds as a duration; beyond what a duration holds (a config may say 1e20): the most.
pub fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
}

/// `text` on one line (runs of whitespace, newlines included, become one space).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn policy_name(p: SwapPolicy) -> &'static str {
    match p {
        SwapPolicy::Auto => "auto",
        SwapPolicy::Idle => "idle",
        SwapPolicy::Manual => "manual",
    }
}
