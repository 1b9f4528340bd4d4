//! What the supervisor publishes: events (a `broadcast` of every change), the watch status (a
//! `watch` of the latest), reload outcomes and the reported state. Daemon-owned shapes; the
//! transports convert them (`api::supervisor_wire`).

use tokio::sync::{broadcast, watch};

use crate::config::SwapPolicy;
use crate::engine::EngineState;

/// Events a slow reader may fall behind by before it is told it lagged.
pub const CAPACITY: usize = 256;

/// The state r1d reports: the engine's, or `Degraded` while a model is served without a GPU the
/// driver lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedState {
    /// Plugins are being discovered.
    Starting,
    /// A model is loading.
    Loading,
    /// A model is served.
    Ready,
    /// No model is resident.
    NoModel,
    /// The resident model is being replaced.
    Swapping,
    /// A model is served, but a GPU the driver lists did not answer.
    Degraded,
}

impl ReportedState {
    /// The state to report: the engine's, but `Degraded` while serving without a GPU that
    /// should be there (`degraded`).
    pub fn reported(s: EngineState, degraded: bool) -> ReportedState {
        match (s, degraded) {
            (EngineState::Ready, true) => ReportedState::Degraded,
            (s, _) => ReportedState::of(s),
        }
    }

    /// The engine's state, reported as is.
    pub fn of(s: EngineState) -> ReportedState {
        match s {
            EngineState::Starting => ReportedState::Starting,
            EngineState::Loading => ReportedState::Loading,
            EngineState::Ready => ReportedState::Ready,
            EngineState::NoModel => ReportedState::NoModel,
            EngineState::Swapping => ReportedState::Swapping,
        }
    }
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The engine's state or model changed (or `degraded` did).
    State,
    /// The config was reloaded or rejected.
    Config,
    /// Memory, the cgroup limit or the GPUs changed.
    Hardware,
    /// The best fit changed, is pending, or was ignored.
    Plan,
    /// A swap started, finished or failed.
    Swap,
}

impl EventKind {
    /// `state`, `config`, `hardware`, `plan` or `swap`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Config => "config",
            EventKind::Hardware => "hardware",
            EventKind::Plan => "plan",
            EventKind::Swap => "swap",
        }
    }
}

/// One change, for event streams.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What it is about.
    pub kind: EventKind,
    /// When (Unix time, seconds).
    pub time: f64,
    /// One line for a person.
    pub message: String,
    /// The state after the event (`State` events).
    pub state: Option<ReportedState>,
    /// The model concerned (resident, or the target of a swap).
    pub model: Option<String>,
    /// Changed config keys, one line each (`Config` events).
    pub changes: Vec<String>,
    /// An error (a rejected config, a failed swap).
    pub error: Option<String>,
}

impl Event {
    /// An event of `kind` saying `message`, now.
    pub fn new(kind: EventKind, message: impl Into<String>) -> Event {
        Event {
            kind,
            time: now_s(),
            message: message.into(),
            state: None,
            model: None,
            changes: Vec::new(),
            error: None,
        }
    }
}

/// Unix time now, seconds.
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How the supervisor follows the config and the hardware, and what it found (`/r1/status`
/// `watch`).
#[derive(Debug, Clone, PartialEq)]
pub struct WatchStatus {
    /// The config file r1d reads.
    pub config_path: Option<String>,
    /// The last reload's rejection (file, line, key), on one line.
    pub config_error: Option<String>,
    /// `[watch] swap_policy`.
    pub swap_policy: SwapPolicy,
    /// What `r1ctl use` / `load` / `unload` pinned, as shown (a name, a path, or "nothing").
    pub pinned: Option<String>,
    /// A better fit not swapped to (policy `manual`, or `idle` while busy).
    pub better: Option<String>,
    /// A change of the plan waiting for the settle time, or a swap queued behind answers.
    pub pending: Option<String>,
    /// Why the service is degraded.
    pub degraded: Option<String>,
    /// The last load that failed while another model went on serving.
    pub last_load_error: Option<String>,
    /// The last time the model's worker process died or was killed as hung, and how.
    pub last_crash: Option<String>,
    /// The resident model's memory credit (`None` with nothing resident).
    pub memory_credit: Option<super::credit::Credit>,
}

/// What a config reload did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadOutcome {
    /// The config file read.
    pub config_path: Option<String>,
    /// What changed, one line per key.
    pub changes: Vec<String>,
    /// Why the file was rejected (the running config stays in force).
    pub error: Option<String>,
    /// What happened to the model (`kept …`, `serving …`, a load error).
    pub model: String,
}

/// The event broadcast and the watch status, the supervisor's two outputs.
pub(crate) struct Outputs {
    events: broadcast::Sender<Event>,
    view: watch::Sender<WatchStatus>,
}

impl Outputs {
    /// Outputs starting with the watch status `view`.
    pub(crate) fn new(view: WatchStatus) -> Outputs {
        let (events, _) = broadcast::channel(CAPACITY);
        let (view, _) = watch::channel(view);
        Outputs { events, view }
    }

    /// Sends `e` to every listener (nowhere when none listens).
    pub(crate) fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// A receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The watch status as published.
    pub(crate) fn view(&self) -> WatchStatus {
        self.view.borrow().clone()
    }

    /// A receiver of every change of the watch status.
    pub(crate) fn subscribe_view(&self) -> watch::Receiver<WatchStatus> {
        self.view.subscribe()
    }

    /// Changes the watch status (receivers see it).
    pub(crate) fn update_view(&self, f: impl FnOnce(&mut WatchStatus)) {
        self.view.send_modify(f);
    }
}
