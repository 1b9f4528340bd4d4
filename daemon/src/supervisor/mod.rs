//! The supervisor: keeps the best-fitting model resident while the config and the machine change
//! under r1d. One control core: every decision about what to load is made by the pure functions
//! of [`decide`]; this module is the handle, its state and the engine-following task; the other
//! jobs have a module each.
//!
//! - [`decide`]: the decider (pin × configured model × plan × hysteresis × swap policy × clock →
//!   [`decide::Decision`]), pure and tested table-driven with a fake clock.
//! - [`config_watch`]: the config file (`notify`, SIGHUP, `POST /r1/reload`, D-Bus `Reload`); a
//!   file that does not parse or validate is rejected with its file, line and key, and the
//!   running config stays in force.
//! - [`hardware_poll`]: every `[watch] hardware_interval_s` the probes run again and the planner
//!   runs on the result, with the resident model's memory counted as free ([`credit`], on the
//!   GPUs it is on). A different choice must last `[watch] settle_s` (hysteresis); then `[watch]
//!   swap_policy` says whether to swap (`auto`), wait for `idle_s` without requests (`idle`) or
//!   report it (`manual`). When the resident model itself no longer fits the swap is forced.
//! - `act`: carrying decisions out — what is wanted (asking the store when the decider says
//!   so), loads through the engine's queue, pins (`r1ctl use`, `load`, `unload`).
//! - [`selection`]: why the resident model is what it is (`/r1/status` `selection`), the
//!   start-up choice ([`selection::Start`]) and `auto_pull`.
//! - [`events`]: what the supervisor publishes (events, the watch status), in daemon-owned
//!   shapes; `api::supervisor_wire` converts them for the transports.
//!
//! Config edits and `r1ctl use` act at once. The engine swaps without failing requests: answers
//! in flight finish, new ones wait (up to `queue_deadline_s`, then 503 with `Retry-After`). A
//! model that fails to load leaves the previous one serving, and is not tried again by re-plans
//! until its file changes.
//!
//! **Architecture invariants**: one decision at a time (`acting`, a tokio mutex released once
//! the load is queued, so a newer config edit can supersede a slow load); it never unloads to
//! serve nothing when something could be served; knows neither HTTP nor D-Bus nor their wire
//! shapes.

mod act;
pub mod config_watch;
pub mod credit;
pub mod decide;
pub mod error;
pub mod events;
pub mod hardware_poll;
pub mod selection;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::{model_name, Engine, EngineState, LoadSpec, Snapshot};
use crate::hardware::Probe;
use crate::planner;
use crate::store::Store;

pub use decide::{Pin, Wanted};
pub use error::{ErrorKind, SupervisorError};
pub use events::{Event, EventKind, ReloadOutcome, ReportedState, WatchStatus};
pub use selection::Start;

use decide::file_name;
use events::Outputs;

/// Reads the config file again: `Ok(config)` or the error naming file, line and key.
pub type ReadConfig = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// The model the config (and the command line over it) names, if any: `--model` / `[model] path`.
pub type ConfiguredModel = Box<dyn Fn(&Config) -> Option<LoadSpec> + Send + Sync>;

/// What the supervisor needs.
pub struct Setup {
    /// The engine.
    pub engine: Engine,
    /// The model store (the inventory it chooses from).
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
    /// The start-up choice ([`Start::choose`]): its selection, and the pull `auto_pull` asks for.
    pub start: Start,
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
    out: Outputs,
    memory: Arc<selection::Memory>,
    state: Mutex<State>,
    /// The resident model's memory credit (see [`credit`]), read by the store's planning.
    credit: Arc<Mutex<credit::Credit>>,
    /// Serializes deciding and acting (reload, tick, use), held until the load is queued.
    acting: tokio::sync::Mutex<()>,
}

struct State {
    config: Config,
    pinned: Option<Pin>,
    hysteresis: decide::Hysteresis,
    /// The hardware as last reported (to report changes that matter, not every 0.1 GB).
    hardware: Option<crate::hardware::Hardware>,
    /// NVIDIA GPUs the kernel driver lists but the probe did not find.
    degraded: Option<String>,
}

impl Supervisor {
    /// Starts the supervisor: the config watcher, the hardware watcher, the event feed of
    /// engine states and, when the start-up choice asks for it, `auto_pull`. Ends with
    /// `shutdown`.
    pub fn start(setup: Setup, shutdown: CancellationToken) -> Supervisor {
        let watch_cfg = setup.config.watch.clone();
        setup
            .engine
            .set_queue_deadline(seconds(watch_cfg.queue_deadline_s));
        let out = Outputs::new(WatchStatus {
            config_path: setup.config_path.as_ref().map(|p| p.display().to_string()),
            config_error: None,
            swap_policy: watch_cfg.swap_policy,
            pinned: None,
            better: None,
            pending: None,
            degraded: setup.degraded.clone(),
            last_load_error: None,
            last_crash: None,
            memory_credit: None,
        });
        let credit = Arc::new(Mutex::new(credit::Credit::default()));
        setup.store.set_hardware_adjust({
            let credit = credit.clone();
            Arc::new(move |hw| locked(&credit).add_to(hw))
        });
        let auto_pull = setup.start.auto_pull;
        let supervisor = Supervisor {
            inner: Arc::new(Inner {
                engine: setup.engine,
                store: setup.store,
                config_path: setup.config_path,
                read_config: setup.read_config,
                configured_model: setup.configured_model,
                probe: setup.probe,
                shutdown: shutdown.clone(),
                out,
                memory: setup.start.memory,
                state: Mutex::new(State {
                    config: setup.config,
                    pinned: None,
                    hysteresis: decide::Hysteresis::default(),
                    hardware: None,
                    degraded: setup.degraded,
                }),
                credit,
                acting: tokio::sync::Mutex::new(()),
            }),
        };
        tokio::spawn(supervisor.clone().follow_engine(shutdown.clone()));
        if watch_cfg.config {
            supervisor.clone().watch_config(shutdown.clone());
        }
        tokio::spawn(supervisor.clone().watch_hardware(shutdown));
        if let Some(spec) = auto_pull {
            supervisor.spawn_auto_pull(spec);
        }
        supervisor
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        locked(&self.inner.state)
    }

    fn config(&self) -> Config {
        self.state().config.clone()
    }

    /// Sends an event to every listener (and nowhere when none listens).
    pub fn emit(&self, e: Event) {
        self.inner.out.emit(e);
    }

    /// A receiver of every event from now on (a reader more than [`events::CAPACITY`] events
    /// behind gets `Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.out.subscribe()
    }

    /// What `/r1/status` shows under `watch`: the published status, with the engine's last load
    /// error and a swap queued behind answers.
    pub fn view(&self) -> WatchStatus {
        let mut v = self.inner.out.view();
        let snap = self.inner.engine.snapshot();
        v.last_load_error = snap.last_load_error;
        v.last_crash = snap.last_crash;
        v.memory_credit =
            Some(locked(&self.inner.credit).clone()).filter(|c| c.placement.is_some());
        if let Some(path) = snap.queued_load {
            v.pending = Some(format!(
                "swapping to {} once the answers before it finish ({} queued or running)",
                path.display(),
                self.inner.engine.active_requests()
            ));
        }
        v
    }

    fn view_better(&self) -> Option<String> {
        self.inner.out.view().better
    }

    fn update_view(&self, f: impl FnOnce(&mut WatchStatus)) {
        self.inner.out.update_view(f);
    }

    /// A receiver that sees every change of the published watch status (for D-Bus).
    pub fn subscribe_view(&self) -> watch::Receiver<WatchStatus> {
        self.inner.out.subscribe_view()
    }

    /// Cancelled when r1d shuts down (event streams end then).
    pub fn stopping(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Reads the config file and says whether it would be accepted, without applying it (for
    /// D-Bus `Reload`, which answers before the reload has finished).
    ///
    /// # Errors
    /// [`SupervisorError::Config`]: the file's error (file, line, key).
    pub fn check_config(&self) -> Result<(), SupervisorError> {
        (self.inner.read_config)()
            .map(|_| ())
            .map_err(SupervisorError::Config)
    }

    /// Whether the service is degraded, and why.
    pub fn degraded(&self) -> Option<String> {
        self.state().degraded.clone()
    }

    /// The state to report: the engine's, but `Degraded` while serving without a GPU that
    /// should be there.
    pub fn reported_state(&self, snapshot: &Snapshot) -> ReportedState {
        ReportedState::reported(snapshot.state, self.degraded().is_some())
    }

    /// Why the resident model is what it is (`/r1/status` `selection`).
    pub fn selection(&self) -> Option<String> {
        self.inner.memory.reason()
    }

    /// What the plan that chose the resident model said more memory would bring (empty when
    /// the model was named rather than chosen).
    pub fn upgrades(&self) -> Vec<planner::Upgrade> {
        self.inner.memory.upgrades()
    }

    /// What the plan that chose the resident model planned for it (`None` when it was named,
    /// not planned).
    pub fn planned(&self) -> Option<selection::Planned> {
        let spec = self.inner.engine.snapshot().spec?;
        self.inner.memory.planned_of(&spec)
    }

    /// [`planner::Plan::more_memory`] of the plan that chose the resident model.
    pub fn more_memory(&self) -> Option<String> {
        self.inner.memory.more_memory()
    }

    /// Emits `state` events for the engine's state changes (and load progress in 10 % steps),
    /// and keeps the memory credit equal to the resident model's footprint.
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
                if last.as_ref().is_none_or(|(_, m, _, _)| *m != model) {
                    self.update_credit(&snap);
                }
                let message = crate::systemd::status_line(&snap, None);
                let mut e = Event::new(EventKind::State, message);
                e.state = Some(self.reported_state(&snap));
                e.model = model.or(loading.map(|l| file_name(&l)));
                e.error = snap.error.clone();
                self.emit(e);
                last = Some(key);
            }
        }
    }

    fn update_credit(&self, snap: &Snapshot) {
        let credit = match &snap.model {
            Some((info, _)) => {
                let planned = snap
                    .spec
                    .as_ref()
                    .and_then(|s| self.inner.memory.placement_of(s));
                // What the kernel says: the model file's mapped bytes in the process the model
                // runs in (its worker, or r1d itself), and the worker's anonymous memory.
                let worker = self.inner.engine.worker_pid();
                let mapped =
                    crate::hardware::memory::mapped_bytes(worker, std::path::Path::new(&info.path))
                        .unwrap_or(0);
                let worker_anon = worker
                    .and_then(crate::hardware::memory::resident_of)
                    .map(|r| r.anon_bytes);
                credit::Credit::of(info, snap.spec.as_ref(), planned.as_deref())
                    .with_measured(mapped, worker_anon)
            }
            None => credit::Credit::default(),
        };
        *locked(&self.inner.credit) = credit;
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `s` seconds as a duration; beyond what a duration holds (a config may say 1e20): the most.
pub fn seconds(s: f64) -> Duration {
    seconds_checked(s).unwrap_or(Duration::MAX)
}

/// `s` seconds as a duration; `None` when negative, not a number or beyond what a duration holds.
pub fn seconds_checked(s: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(s).ok()
}

/// `text` on one line (runs of whitespace, newlines included, become one space).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
