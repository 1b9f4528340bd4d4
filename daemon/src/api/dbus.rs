//! D-Bus (zbus): `org.r1d.R1` at `/org/r1d/R1` on the system bus (system mode) or the session
//! bus (user mode), with two versioned interfaces:
//!
//! - `org.r1d.R1.Manager1` — properties `State`, `ActiveModel`, `Backend`, `Error`,
//!   `LoadProgress`, `ActiveRequests`, `Hardware`, `Backends`, `Version` (`PropertiesChanged`
//!   follows the engine's state watch); methods `GetPlan`, `ListModels`, `Load`, `Use`, `Unload`,
//!   `Reload`, `Pull`.
//! - `org.r1d.R1.Chat1` — `Ask`/`Chat` (one answer) and `AskStream`/`ChatStream`, which return a
//!   Unix socket descriptor on which the answer arrives as JSON lines
//!   ([`r1d_client::dbus::StreamEvent`]); closing it cancels the generation.
//!
//! **Architecture invariants**
//! - The only module that knows D-Bus. It asks the same [`Engine`] as the HTTP routes, through
//!   [`super::answer`]: there is no second path to the model. `Manager1` is an adapter over
//!   [`Control`], as HTTP's native routes are: no control logic (and no fallback) of its own.
//! - r1d's errors become `org.r1d.R1.Error.*` in one place: the `From` impls of [`Error`].
//! - No signal carries user content: the only signals are `PropertiesChanged` of `Manager1`
//!   (state, model and backend names). Answers go to the caller alone, in the method return or
//!   over its private descriptor.
//! - Changing the resident model, pulling and reloading need root, the uid r1d runs as, or the
//!   polkit action `org.r1d.R1.manage` (system bus only; without polkit: root only). The caller's
//!   uid comes from the bus (`GetConnectionUnixUser`), so the check holds on a session bus too,
//!   which has no policy file. Who may call `Chat1` at all is the bus policy's business
//!   (`systemd/org.r1d.R1.conf`: group `r1d`).
//!
//! `systemd/org.r1d.R1.xml` is the introspection of these interfaces; a test fails when it
//! drifts from the code (`R1D_BLESS=1 cargo test -p r1d dbus` rewrites it).

use std::collections::HashMap;
use std::time::Duration;

use r1d_client::dbus::{StreamEvent, Usage, BUS_NAME, OBJECT_PATH};

use crate::access::{Authority, AuthorityError, Caller, Subject, Verdict, MANAGE_ACTION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use zbus::message::Header;
use zbus::zvariant::{OwnedFd, OwnedObjectPath, OwnedValue, Value};
use zbus::{interface, Connection};

use super::answer::{self, Collected};
use crate::chat::{Channel, Message, ReasoningFormat};
use crate::config::Mode;
use crate::control::{Control, ControlError, LoadOptions};
use crate::engine::{
    ChatEvent, Engine, EngineError, EngineState, GenerateResult, PromptInput, Sampling,
};
use crate::store::StoreError;

/// Which bus r1d serves on (`--dbus`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BusChoice {
    /// The system bus in system mode, the session bus in user mode.
    #[default]
    Auto,
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS` or `/run/dbus/system_bus_socket`).
    System,
    /// The session bus (`DBUS_SESSION_BUS_ADDRESS`).
    Session,
    /// No D-Bus.
    Off,
}

/// What the D-Bus service needs.
pub struct Options {
    /// Which bus.
    pub bus: BusChoice,
    /// System or user mode (chooses the bus for [`BusChoice::Auto`]).
    pub mode: Mode,
    /// The control plane (the same one HTTP's native routes use): `Manager1`'s methods and
    /// properties, and the engine `Chat1` asks.
    pub control: Control,
}

/// The D-Bus errors, `org.r1d.R1.Error.*`, each with a readable message.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.r1d.R1.Error")]
pub enum Error {
    /// A bus error (passed through with its own name).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No model is resident; the message says why.
    NoModel(String),
    /// The prompt does not fit the model's context length.
    ContextLengthExceeded(String),
    /// The queue is full.
    Busy(String),
    /// An argument or option is invalid; the message names it.
    InvalidArgument(String),
    /// The caller may not do this.
    PermissionDenied(String),
    /// Not available (yet); the message says why.
    NotSupported(String),
    /// The requested model is not the one served.
    ModelNotFound(String),
    /// The model failed to load; the message says why.
    LoadFailed(String),
    /// The generation failed.
    Failed(String),
    /// r1d is shutting down.
    ShuttingDown(String),
    /// The model is resident, loading or queued: serve another one first.
    ModelInUse(String),
}

impl Error {
    /// The D-Bus error name, for the `error` line of a stream.
    fn dbus_name(&self) -> String {
        use zbus::DBusError as _;
        self.name().to_string()
    }
}

// The one mapping of r1d's errors to D-Bus errors.

impl From<ControlError> for Error {
    fn from(e: ControlError) -> Self {
        let message = e.to_string();
        match e {
            ControlError::InvalidArgument(_) | ControlError::ConfigRejected(_) => {
                Error::InvalidArgument(message)
            }
            ControlError::LoadFailed(_) => Error::LoadFailed(message),
            ControlError::Engine(e) => e.into(),
            ControlError::Store(e) => e.into(),
            ControlError::NotSupported { .. } => Error::NotSupported(message),
            ControlError::PermissionDenied(_) => Error::PermissionDenied(message),
            ControlError::Probe(_) | ControlError::Internal(_) => Error::Failed(message),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Probe(_) | StoreError::RemoveFailed { .. } => Error::Failed(e.to_string()),
            StoreError::InUse { .. } => Error::ModelInUse(e.to_string()),
            StoreError::ReadOnly { .. } => Error::PermissionDenied(e.to_string()),
            StoreError::Ambiguous { .. } => Error::InvalidArgument(e.to_string()),
            e => Error::ModelNotFound(e.to_string()),
        }
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::NoModel { .. } => Error::NoModel(message),
            EngineError::ContextExceeded { .. } => Error::ContextLengthExceeded(message),
            EngineError::InvalidRequest(_) => Error::InvalidArgument(message),
            EngineError::Busy(_) => Error::Busy(message),
            EngineError::Backend(_) | EngineError::Upstream { .. } => Error::Failed(message),
            EngineError::ShuttingDown => Error::ShuttingDown(message),
            EngineError::LoadFailed { .. } => Error::LoadFailed(message),
            EngineError::Preempted { .. } | EngineError::Unavailable { .. } => Error::Busy(message),
        }
    }
}

/// Connects to the bus, serves the interfaces and owns `org.r1d.R1` in a task of its own; keeps
/// PropertiesChanged in step with the engine. When no bus is reachable or the name is taken, it
/// logs a warning and r1d goes on serving HTTP.
pub fn spawn(options: Options) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let system = match options.bus {
            BusChoice::Off => {
                tracing::info!("D-Bus is off (--dbus off)");
                return;
            }
            BusChoice::Auto => options.mode == Mode::System,
            BusChoice::System => true,
            BusChoice::Session => false,
        };
        let which = if system { "system" } else { "session" };
        let control = options.control.clone();
        let connected = tokio::time::timeout(Duration::from_secs(10), connect(options, system));
        let conn = match connected.await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::warn!("D-Bus is not available: failed to serve {BUS_NAME} on the {which} bus: {e}; serving HTTP only");
                return;
            }
            Err(_) => {
                tracing::warn!("D-Bus is not available: the {which} bus did not answer within 10 s; serving HTTP only");
                return;
            }
        };
        tracing::info!("serving {BUS_NAME} at {OBJECT_PATH} on the {which} bus");
        if let Err(e) = follow_state(&conn, control).await {
            tracing::warn!("D-Bus: failed to signal a property change: {e}");
        }
    })
}

async fn connect(options: Options, system: bool) -> Result<Connection, zbus::Error> {
    let builder = if system {
        zbus::connection::Builder::system()?
    } else {
        zbus::connection::Builder::session()?
    };
    let chat = Chat {
        engine: options.control.engine().clone(),
        control: options.control.clone(),
    };
    let manager = Manager {
        control: options.control.clone(),
        hardware: tokio::sync::OnceCell::new(),
    };
    let policy_control = options.control.clone();
    let conn = builder
        .serve_at(OBJECT_PATH, manager)?
        .serve_at(OBJECT_PATH, chat)?
        .build()
        .await?;
    use zbus::fdo::{RequestNameFlags, RequestNameReply};
    match conn
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DoNotQueue.into())
        .await?
    {
        RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner => {
            if system {
                // polkit answers on the system bus, for D-Bus and Unix-socket callers alike.
                policy_control
                    .policy()
                    .set_authority(std::sync::Arc::new(Polkit { conn: conn.clone() }));
            }
            Ok(conn)
        }
        _ => Err(zbus::Error::NameTaken),
    }
}

/// A pull, as a D-Bus object: `org.r1d.R1.Job1` at `/org/r1d/R1/jobs/N`.
pub struct PullJob {
    model: String,
    state: crate::store::PullState,
}

#[interface(name = "org.r1d.R1.Job1")]
impl PullJob {
    /// The model being pulled, as it was asked for.
    #[zbus(property(emits_changed_signal = "const"))]
    fn model(&self) -> String {
        self.model.clone()
    }

    /// `resolving`, `downloading`, `verifying`, `done` or `failed`.
    #[zbus(property)]
    fn state(&self) -> String {
        use crate::store::PullState as S;
        match &self.state {
            S::Resolving => "resolving",
            S::Downloading { .. } => "downloading",
            S::Verifying => "verifying",
            S::Done { .. } => "done",
            S::Failed(_) => "failed",
        }
        .into()
    }

    /// Bytes on disk so far (including those of an interrupted earlier pull that was resumed).
    #[zbus(property)]
    fn completed_bytes(&self) -> u64 {
        match &self.state {
            crate::store::PullState::Downloading { completed, .. } => *completed,
            crate::store::PullState::Done { bytes, .. } => *bytes,
            _ => 0,
        }
    }

    /// Bytes in all; 0 while unknown.
    #[zbus(property)]
    fn total_bytes(&self) -> u64 {
        match &self.state {
            crate::store::PullState::Downloading { total, .. } => total.unwrap_or(0),
            crate::store::PullState::Done { bytes, .. } => *bytes,
            _ => 0,
        }
    }

    /// Why it failed; empty otherwise.
    #[zbus(property)]
    fn error(&self) -> String {
        match &self.state {
            crate::store::PullState::Failed(why) => why.to_string(),
            _ => String::new(),
        }
    }

    /// Where the model landed; empty until done.
    #[zbus(property)]
    fn path(&self) -> String {
        match &self.state {
            crate::store::PullState::Done { path, .. } => path.display().to_string(),
            _ => String::new(),
        }
    }

    /// The pull ended: `success`, and the final path or the reason it failed.
    #[zbus(signal)]
    async fn finished(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;
}

/// Serves a new job object for a pull and follows it until it ends (the object stays, so a late
/// caller can still read how it ended).
async fn start_pull_job(
    conn: &Connection,
    model: String,
    mut rx: tokio::sync::watch::Receiver<crate::store::PullState>,
) -> Result<OwnedObjectPath, Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let path = format!(
        "{OBJECT_PATH}/jobs/{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let state = rx.borrow_and_update().clone();
    let job = PullJob { model, state };
    conn.object_server()
        .at(path.as_str(), job)
        .await
        .map_err(|e| Error::Failed(format!("failed to serve the pull job: {e}")))?;
    let iface = conn
        .object_server()
        .interface::<_, PullJob>(path.as_str())
        .await
        .map_err(|e| Error::Failed(format!("failed to serve the pull job: {e}")))?;
    tokio::spawn(async move {
        let emitter = iface.signal_emitter().clone();
        loop {
            let ended = rx.changed().await.is_err();
            let now = rx.borrow_and_update().clone();
            let last = now.is_final() || ended;
            {
                let mut job = iface.get_mut().await;
                job.state = now.clone();
                let _ = job.state_changed(&emitter).await;
                let _ = job.completed_bytes_changed(&emitter).await;
                let _ = job.total_bytes_changed(&emitter).await;
                if last {
                    let _ = job.error_changed(&emitter).await;
                    let _ = job.path_changed(&emitter).await;
                }
            }
            if last {
                let (success, message) = match &now {
                    crate::store::PullState::Done { path, .. } => {
                        (true, path.display().to_string())
                    }
                    crate::store::PullState::Failed(why) => (false, why.to_string()),
                    _ => (false, "the pull ended without a result".to_owned()),
                };
                let _ = PullJob::finished(&emitter, success, &message).await;
                return;
            }
        }
    });
    OwnedObjectPath::try_from(path).map_err(|e| Error::Failed(e.to_string()))
}

/// Emits `PropertiesChanged` for what changed, on every state change of the engine (and of the
/// supervisor's `degraded`).
async fn follow_state(conn: &Connection, control: Control) -> Result<(), zbus::Error> {
    let iface = conn
        .object_server()
        .interface::<_, Manager>(OBJECT_PATH)
        .await?;
    let emitter = iface.signal_emitter();
    let mut rx = control.engine().subscribe();
    let mut view = control.running_supervisor().map(|s| s.subscribe_view());
    let mut last = Published::of(&rx.borrow_and_update(), &control);
    loop {
        let changed = match view.as_mut() {
            Some(v) => tokio::select! {
                c = rx.changed() => c.is_ok(),
                c = v.changed() => c.is_ok(),
            },
            None => rx.changed().await.is_ok(),
        };
        if !changed {
            break;
        }
        let now = Published::of(&rx.borrow_and_update(), &control);
        let manager = iface.get().await;
        if now.state != last.state {
            manager.state_changed(emitter).await?;
        }
        if now.model != last.model {
            manager.active_model_changed(emitter).await?;
        }
        if now.backend != last.backend {
            manager.backend_changed(emitter).await?;
        }
        if now.error != last.error {
            manager.error_changed(emitter).await?;
        }
        if now.progress != last.progress {
            manager.load_progress_changed(emitter).await?;
        }
        if now.last_crash != last.last_crash {
            manager.last_crash_changed(emitter).await?;
        }
        last = now;
    }
    Ok(())
}

/// The values of the signalled properties, to see which changed.
#[derive(PartialEq)]
struct Published {
    state: &'static str,
    model: String,
    backend: String,
    error: String,
    progress: u32,
    last_crash: String,
}

impl Published {
    fn of(s: &crate::engine::Snapshot, control: &Control) -> Published {
        let degraded = control.degraded().is_some();
        Published {
            state: if degraded && s.state == EngineState::Ready {
                "degraded"
            } else {
                state_name(s.state)
            },
            model: s
                .model
                .as_ref()
                .map(|(i, _)| i.name.clone().unwrap_or_else(|| i.path.clone()))
                .unwrap_or_default(),
            backend: s.model.as_ref().map(|(_, b)| b.clone()).unwrap_or_default(),
            error: s.error.clone().unwrap_or_default(),
            progress: (s.progress.unwrap_or(0.0) * 100.0).round() as u32,
            last_crash: s.last_crash.clone().unwrap_or_default(),
        }
    }
}

fn state_name(s: EngineState) -> &'static str {
    match s {
        EngineState::Starting => "starting",
        EngineState::Loading => "loading",
        EngineState::Ready => "ready",
        EngineState::NoModel => "no-model",
        EngineState::Swapping => "swapping",
    }
}

/// `org.r1d.R1.Manager1`.
pub struct Manager {
    control: Control,
    /// The hardware profile as JSON, probed once (a constant property).
    hardware: tokio::sync::OnceCell<String>,
}

/// State, hardware, plan, models and control of the resident model.
#[interface(name = "org.r1d.R1.Manager1")]
impl Manager {
    /// starting, loading, ready, swapping, degraded or no-model.
    #[zbus(property)]
    fn state(&self) -> String {
        Published::of(&self.control.engine().snapshot(), &self.control)
            .state
            .into()
    }

    /// Name of the resident model; empty when none.
    #[zbus(property)]
    fn active_model(&self) -> String {
        Published::of(&self.control.engine().snapshot(), &self.control).model
    }

    /// Backend plugin of the resident model; empty when none.
    #[zbus(property)]
    fn backend(&self) -> String {
        Published::of(&self.control.engine().snapshot(), &self.control).backend
    }

    /// Why no model is resident; empty otherwise.
    #[zbus(property)]
    fn error(&self) -> String {
        Published::of(&self.control.engine().snapshot(), &self.control).error
    }

    /// The last time the model's worker process died or was killed as hung: how (signal, exit
    /// status, its last log line), when, and how many times in a row; empty when it never did.
    #[zbus(property)]
    fn last_crash(&self) -> String {
        Published::of(&self.control.engine().snapshot(), &self.control).last_crash
    }

    /// Load progress, 0 to 1, while a model loads.
    #[zbus(property)]
    fn load_progress(&self) -> f64 {
        f64::from(self.control.engine().snapshot().progress.unwrap_or(0.0))
    }

    /// Requests queued or running (not signalled: read it when needed).
    #[zbus(property(emits_changed_signal = "false"))]
    fn active_requests(&self) -> u32 {
        u32::try_from(self.control.engine().active_requests()).unwrap_or(u32::MAX)
    }

    /// This machine's hardware profile, as JSON (the shape of GET /r1/hardware).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn hardware(&self) -> zbus::fdo::Result<String> {
        self.hardware
            .get_or_try_init(|| async {
                let hw = self
                    .control
                    .hardware()
                    .await
                    .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
                serde_json::to_string(&super::to_wire::hardware_to_wire(&hw))
                    .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
            })
            .await
            .cloned()
    }

    /// Backend plugins found: (name, version, available).
    #[zbus(property(emits_changed_signal = "const"))]
    fn backends(&self) -> Vec<(String, String, bool)> {
        self.control
            .backends()
            .iter()
            .map(|r| {
                let name = r.name.clone().unwrap_or_else(|| {
                    r.path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                });
                (
                    name,
                    r.version.clone().unwrap_or_default(),
                    r.error.is_none(),
                )
            })
            .collect()
    }

    /// r1d's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").into()
    }

    /// The plan for this machine: the chosen variant, quantization and backend (empty when
    /// nothing fits), the planner's reason, and the whole plan as JSON (GET /r1/plan).
    #[zbus(out_args("variant", "quantization", "backend", "reason", "plan_json"))]
    async fn get_plan(&self) -> Result<(String, String, String, String, String), Error> {
        let (plan, remotes) = self.control.plan_with_remotes().await?;
        let mut wire = super::to_wire::plan_to_wire(&plan);
        if let Some(r) = remotes {
            super::to_wire::plan_remotes(&mut wire, &r.views, r.verdict, &r.policy);
        }
        let json = serde_json::to_string(&wire).map_err(|e| Error::Failed(e.to_string()))?;
        let (variant, quantization, backend) = wire
            .chosen
            .as_ref()
            .map(|c| (c.variant.clone(), c.quantization.clone(), c.backend.clone()))
            .unwrap_or_default();
        Ok((variant, quantization, backend, wire.reason.clone(), json))
    }

    /// The models on disk: (name, variant, quantization, path, bytes).
    #[zbus(out_args("models"))]
    async fn list_models(&self) -> Result<Vec<(String, String, String, String, u64)>, Error> {
        let models = self.control.models().await?;
        Ok(models
            .entries
            .iter()
            .map(|e| {
                let id = e.identity.as_ref();
                (
                    e.name.clone(),
                    e.variant().map(|v| v.id.to_owned()).unwrap_or_default(),
                    id.and_then(|i| i.quantization.clone()).unwrap_or_default(),
                    e.path.display().to_string(),
                    e.size_bytes,
                )
            })
            .collect())
    }

    /// Replaces the resident model with the model file at an absolute path. Options:
    /// context_length, gpu_layers, threads (u), backend, kv_cache_type (s). Needs root or
    /// org.r1d.R1.manage.
    async fn load(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        path: String,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(), Error> {
        let caller = caller(conn, &header).await?;
        self.control
            .load(Some(&caller), load_options(path, &options)?)
            .await?;
        Ok(())
    }

    /// Replaces the resident model: an absolute path loads that file; a name goes through the model
    /// store as `r1ctl use` does (`auto`, a variant such as `deepseek-r1:7b`, any listed model).
    /// Needs root or org.r1d.R1.manage.
    #[zbus(name = "Use")]
    async fn use_model(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        model: String,
    ) -> Result<(), Error> {
        let caller = caller(conn, &header).await?;
        self.control.use_model(Some(&caller), &model).await?;
        Ok(())
    }

    /// Unloads the resident model. Needs root or org.r1d.R1.manage.
    async fn unload(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        let caller = caller(conn, &header).await?;
        Ok(self.control.unload(Some(&caller)).await?)
    }

    /// Re-reads the config, as `systemctl reload r1d` does (SIGHUP): the model the config names
    /// is loaded when it differs from the resident one. Returns once the reload has begun; the
    /// State property follows it. Needs root or org.r1d.R1.manage.
    async fn reload(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        let caller = caller(conn, &header).await?;
        // A file that would be rejected is an error of this call; the reload itself (maybe a
        // long swap) goes on after the reply, and the State property follows it.
        Ok(self
            .control
            .begin_reload(Some(&caller), "D-Bus Reload")
            .await?)
    }

    /// Removes a model (a name `ListModels` gives, or its absolute path) from r1d's models
    /// directory, as `r1ctl rm` does, and returns the path removed and the bytes freed. The
    /// model that is resident or loading is refused with `org.r1d.R1.Error.ModelInUse` (`Use`
    /// another one or `Unload` first); a model in the Hugging Face cache or Ollama's store with
    /// `PermissionDenied` (r1d only reads those). Needs root or org.r1d.R1.manage.
    #[zbus(out_args("path", "freed_bytes"))]
    async fn remove(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        model: String,
    ) -> Result<(String, u64), Error> {
        let caller = caller(conn, &header).await?;
        let removed = self.control.remove(Some(&caller), &model).await?;
        Ok((removed.path.display().to_string(), removed.bytes))
    }

    /// Starts downloading a model (`deepseek-r1:7b`, `deepseek-r1:7b-q8_0`,
    /// `hf.co/OWNER/REPO:FILE`) into the store, as `r1ctl pull` does, and returns the job object
    /// (`org.r1d.R1.Job1` at /org/r1d/R1/jobs/N): its properties show the progress and its
    /// `Finished` signal says how it ended. No options are defined yet. Needs root or
    /// org.r1d.R1.manage.
    #[zbus(out_args("job"))]
    async fn pull(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        model: String,
        options: HashMap<String, OwnedValue>,
    ) -> Result<OwnedObjectPath, Error> {
        let caller = caller(conn, &header).await?;
        if let Some(key) = options.keys().next() {
            return Err(Error::InvalidArgument(format!(
                "unknown option {key:?} for Pull"
            )));
        }
        let pull = self.control.pull(Some(&caller), &model).await?;
        let rx = pull.progress;
        start_pull_job(conn, model, rx).await
    }
}

/// The caller of a method, as the bus daemon vouches for it: its uid
/// (`GetConnectionUnixUser`), its bus name (polkit's subject) and whether it allows interactive
/// authorization. Whether it may manage r1d is the control core's rule (`crate::access`), the same
/// as for HTTP.
async fn caller(conn: &Connection, header: &Header<'_>) -> Result<Caller, Error> {
    let sender = header
        .sender()
        .ok_or_else(|| Error::PermissionDenied("the call has no sender".into()))?;
    let uid = zbus::fdo::DBusProxy::new(conn)
        .await?
        .get_connection_unix_user(sender.clone().into())
        .await
        .map_err(|e| Error::PermissionDenied(format!("failed to identify the caller: {e}")))?;
    Ok(Caller {
        uid,
        subject: Subject::BusName(sender.to_string()),
        interactive: header
            .primary()
            .flags()
            .contains(zbus::message::Flags::AllowInteractiveAuth),
    })
}

/// polkit on the system bus as the control core's [`Authority`]: it answers for D-Bus callers
/// (by bus name) and for Unix-socket callers (by process) alike.
struct Polkit {
    conn: Connection,
}

impl Authority for Polkit {
    fn check<'a>(&'a self, caller: &'a Caller) -> Verdict<'a> {
        Box::pin(polkit_check(&self.conn, caller))
    }
}

/// polkit's `CheckAuthorization` of [`MANAGE_ACTION`] for `caller`.
async fn polkit_check(conn: &Connection, caller: &Caller) -> Result<bool, AuthorityError> {
    let mut subject: HashMap<&str, Value<'_>> = HashMap::new();
    let kind = match &caller.subject {
        Subject::BusName(name) => {
            subject.insert("name", Value::from(name.as_str()));
            "system-bus-name"
        }
        Subject::Process { pid, start_time } => {
            subject.insert("pid", Value::from(*pid));
            subject.insert("start-time", Value::from(*start_time));
            subject.insert("uid", Value::from(caller.uid as i32));
            "unix-process"
        }
    };
    let details: HashMap<&str, &str> = HashMap::new();
    let flags: u32 = u32::from(caller.interactive);
    let reply = conn
        .call_method(
            Some("org.freedesktop.PolicyKit1"),
            "/org/freedesktop/PolicyKit1/Authority",
            Some("org.freedesktop.PolicyKit1.Authority"),
            "CheckAuthorization",
            &((kind, subject), MANAGE_ACTION, details, flags, ""),
        )
        .await;
    match reply {
        Ok(msg) => {
            let ((authorized, _challenge, _details),): ((bool, bool, HashMap<String, String>),) =
                msg.body()
                    .deserialize()
                    .map_err(|e| AuthorityError::Failed(e.to_string()))?;
            Ok(authorized)
        }
        Err(zbus::Error::MethodError(name, _, _))
            if matches!(
                name.as_str(),
                "org.freedesktop.DBus.Error.ServiceUnknown"
                    | "org.freedesktop.DBus.Error.NameHasNoOwner"
            ) =>
        {
            Err(AuthorityError::Absent)
        }
        Err(e) => Err(AuthorityError::Failed(e.to_string())),
    }
}

/// `org.r1d.R1.Chat1`.
pub struct Chat {
    engine: Engine,
    control: Control,
}

/// Asking the resident model. Options (a{sv}): max_tokens (u), temperature, top_p, min_p,
/// presence_penalty, frequency_penalty (d), top_k (i), seed (u), stop (as), system (s, Ask only),
/// model (s: any name r1d lists the resident model by), reasoning_format ("deepseek": reasoning apart; "none": raw text with its tags).
#[interface(name = "org.r1d.R1.Chat1")]
impl Chat {
    /// One question; returns the answer, the reasoning and usage (prompt_tokens,
    /// completion_tokens, total_tokens, finish_reason, model).
    #[zbus(out_args("content", "reasoning", "usage"))]
    async fn ask(
        &self,
        prompt: String,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(String, String, HashMap<String, OwnedValue>), Error> {
        let (input, request) = ask_input(prompt, &options)?;
        self.answer(input, request).await
    }

    /// One question, streamed: returns a Unix socket on which JSON lines arrive ({"type":
    /// "start"|"reasoning"|"content"|"done"|"error", …}); closing it cancels the generation.
    #[zbus(out_args("stream"))]
    async fn ask_stream(
        &self,
        prompt: String,
        options: HashMap<String, OwnedValue>,
    ) -> Result<OwnedFd, Error> {
        let (input, request) = ask_input(prompt, &options)?;
        self.stream(input, request).await
    }

    /// A conversation of (role, content) messages; returns like Ask.
    #[zbus(out_args("content", "reasoning", "usage"))]
    async fn chat(
        &self,
        messages: Vec<(String, String)>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(String, String, HashMap<String, OwnedValue>), Error> {
        let (input, request) = chat_input(messages, &options)?;
        self.answer(input, request).await
    }

    /// A conversation, streamed like AskStream.
    #[zbus(out_args("stream"))]
    async fn chat_stream(
        &self,
        messages: Vec<(String, String)>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<OwnedFd, Error> {
        let (input, request) = chat_input(messages, &options)?;
        self.stream(input, request).await
    }
}

/// Sampling and checks of one chat call, from its options.
struct Request {
    sampling: Sampling,
    format: ReasoningFormat,
    model: Option<String>,
}

impl Chat {
    async fn admit(&self, input: PromptInput, request: Request) -> Result<answer::Admitted, Error> {
        answer::check_model(&self.control, request.model.as_deref())
            .await
            .map_err(Error::ModelNotFound)?;
        Ok(answer::admit(&self.engine, input, request.sampling, request.format).await?)
    }

    async fn answer(
        &self,
        input: PromptInput,
        request: Request,
    ) -> Result<(String, String, HashMap<String, OwnedValue>), Error> {
        let admitted = self.admit(input, request).await?;
        let model = admitted.model;
        let Collected {
            content,
            reasoning,
            finished,
            ..
        } = answer::collect(admitted.rx).await?;
        let usage = usage_of(&finished.result);
        let mut map: HashMap<String, OwnedValue> = HashMap::new();
        map.insert(
            "prompt_tokens".into(),
            OwnedValue::from(usage.prompt_tokens),
        );
        map.insert(
            "completion_tokens".into(),
            OwnedValue::from(usage.completion_tokens),
        );
        map.insert("total_tokens".into(), OwnedValue::from(usage.total_tokens));
        map.insert(
            "finish_reason".into(),
            owned_str(super::to_wire::finish_reason(finished.finish_reason)),
        );
        map.insert("model".into(), owned_str(&model));
        Ok((content, reasoning, map))
    }

    async fn stream(&self, input: PromptInput, request: Request) -> Result<OwnedFd, Error> {
        // Admitted before the descriptor is handed out, so a refusal is a D-Bus error.
        let admitted = self.admit(input, request).await?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::Failed(format!("failed to create the stream socket: {e}")))?;
        ours.set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(ours))
            .map(|ours| {
                tokio::spawn(pump(admitted.model, admitted.rx, ours));
            })
            .map_err(|e| Error::Failed(format!("failed to set up the stream socket: {e}")))?;
        Ok(OwnedFd::from(std::os::fd::OwnedFd::from(theirs)))
    }
}

/// Writes the events of an answer as JSON lines until the end, or until the caller closes its
/// end, which drops the receiver and so stops the generation at its next token.
async fn pump(model: String, mut rx: mpsc::Receiver<ChatEvent>, socket: tokio::net::UnixStream) {
    let (mut read, mut write) = socket.into_split();
    let mut pending = vec![StreamEvent::Start { model }];
    let mut scratch = [0u8; 256];
    loop {
        for event in pending.drain(..) {
            let mut line = match serde_json::to_vec(&event) {
                Ok(l) => l,
                Err(_) => return,
            };
            line.push(b'\n');
            if write.write_all(&line).await.is_err() {
                tracing::debug!("D-Bus stream closed by the caller");
                return;
            }
            if matches!(event, StreamEvent::Done { .. } | StreamEvent::Error { .. }) {
                return;
            }
        }
        tokio::select! {
            event = rx.recv() => pending.push(match event {
                Some(ChatEvent::Piece(p)) => match p.channel {
                    Channel::Content => StreamEvent::Content { text: p.text },
                    Channel::Reasoning => StreamEvent::Reasoning { text: p.text },
                },
                // D-Bus refuses the `logprobs` option, so none are sent.
                Some(ChatEvent::Started { .. } | ChatEvent::Logprobs(_)) => continue,
                Some(ChatEvent::Done(finished)) => StreamEvent::Done {
                    finish_reason: super::to_wire::finish_reason(finished.finish_reason).into(),
                    usage: usage_of(&finished.result),
                },
                Some(ChatEvent::Failed(e)) => stream_error(e.into()),
                None => stream_error(Error::Failed("the generation ended without a result".into())),
            }),
            n = read.read(&mut scratch) => {
                if matches!(n, Ok(0) | Err(_)) {
                    tracing::debug!("D-Bus stream closed by the caller; cancelling the generation");
                    return;
                }
            }
        }
    }
}

fn stream_error(e: Error) -> StreamEvent {
    let message = match &e {
        Error::ZBus(e) => e.to_string(),
        Error::NoModel(m)
        | Error::ContextLengthExceeded(m)
        | Error::Busy(m)
        | Error::InvalidArgument(m)
        | Error::PermissionDenied(m)
        | Error::NotSupported(m)
        | Error::ModelNotFound(m)
        | Error::LoadFailed(m)
        | Error::Failed(m)
        | Error::ShuttingDown(m)
        | Error::ModelInUse(m) => m.clone(),
    };
    StreamEvent::Error {
        name: e.dbus_name(),
        message,
    }
}

fn usage_of(r: &GenerateResult) -> Usage {
    Usage {
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        total_tokens: r.prompt_tokens + r.completion_tokens,
    }
}

fn owned_str(s: &str) -> OwnedValue {
    OwnedValue::try_from(Value::from(s)).unwrap_or_else(|_| OwnedValue::from(0u32))
}

fn ask_input(
    prompt: String,
    options: &HashMap<String, OwnedValue>,
) -> Result<(PromptInput, Request), Error> {
    let mut messages = Vec::new();
    if let Some(system) = options.get("system") {
        messages.push(Message {
            role: "system".into(),
            content: opt_str("system", system)?,
            ..Default::default()
        });
    }
    messages.push(Message {
        role: "user".into(),
        content: prompt,
        ..Default::default()
    });
    Ok((PromptInput::Chat(messages), request_of(options, true)?))
}

fn chat_input(
    messages: Vec<(String, String)>,
    options: &HashMap<String, OwnedValue>,
) -> Result<(PromptInput, Request), Error> {
    if messages.is_empty() {
        return Err(Error::InvalidArgument("messages must not be empty".into()));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, (role, content)) in messages.into_iter().enumerate() {
        if !answer::ROLES.contains(&role.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "messages[{i}]: role {role:?} is not one of {}",
                answer::ROLES.join(", ")
            )));
        }
        out.push(Message {
            role,
            content,
            ..Default::default()
        });
    }
    Ok((PromptInput::Chat(out), request_of(options, false)?))
}

fn request_of(options: &HashMap<String, OwnedValue>, ask: bool) -> Result<Request, Error> {
    let mut sampling = Sampling::default();
    let mut format = ReasoningFormat::DeepSeek;
    let mut model = None;
    let mut think: Option<bool> = None;
    for (key, value) in options {
        match key.as_str() {
            "max_tokens" => sampling.max_tokens = Some(opt_u32(key, value)?),
            "temperature" => sampling.temperature = Some(opt_f64(key, value)? as f32),
            "top_p" => sampling.top_p = Some(opt_f64(key, value)? as f32),
            "min_p" => sampling.min_p = Some(opt_f64(key, value)? as f32),
            "top_k" => {
                sampling.top_k = Some(i32::try_from(opt_i64(key, value)?).map_err(|_| {
                    Error::InvalidArgument(format!("option {key} is out of range"))
                })?)
            }
            "seed" => sampling.seed = Some(opt_u32(key, value)?),
            "stop" => sampling.stop = opt_strs(key, value)?,
            // OpenAI's penalties (over every generated token), as on /v1/chat/completions.
            "presence_penalty" => {
                sampling.presence_penalty = Some(opt_f64(key, value)? as f32);
                sampling.repeat_last_n = Some(-1);
            }
            "frequency_penalty" => {
                sampling.frequency_penalty = Some(opt_f64(key, value)? as f32);
                sampling.repeat_last_n = Some(-1);
            }
            // Ollama's repeat penalty and the window of all three penalties, as on /api/chat.
            "repeat_penalty" => sampling.repeat_penalty = Some(opt_f64(key, value)? as f32),
            "repeat_last_n" => {
                sampling.repeat_last_n = Some(i32::try_from(opt_i64(key, value)?).map_err(|_| {
                    Error::InvalidArgument(format!("option {key} is out of range"))
                })?)
            }
            // Ollama's think (`b`): on, reasoning apart (the default); off, R1's prompt ends
            // with an empty <think> block and reasoning emitted anyway is dropped.
            "think" => {
                think = Some(match inner(value) {
                    Value::Bool(on) => *on,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "option think must be a boolean, not of type {}",
                            other.value_signature()
                        )))
                    }
                })
            }
            "tools" | "tool_choice" | "logit_bias" | "response_format" | "n" | "logprobs" => {
                return Err(Error::InvalidArgument(format!(
                    "option {key} is not supported by Chat1; use /v1/chat/completions for it"
                )))
            }
            "model" => model = Some(opt_str(key, value)?),
            // Structured output, as Ollama's `format`: "json" (any object) or a JSON Schema as
            // JSON text.
            "format" => sampling.json_schema = format_option(&opt_str(key, value)?)?,
            "system" if ask => {}
            "reasoning_format" => {
                format = match opt_str(key, value)?.as_str() {
                    "deepseek" => ReasoningFormat::DeepSeek,
                    "none" => ReasoningFormat::None,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "option reasoning_format: {other:?} is not \"deepseek\" or \"none\""
                        )))
                    }
                }
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown option {other:?}; known: max_tokens, temperature, top_p, top_k, min_p, seed, stop, presence_penalty, frequency_penalty, repeat_penalty, repeat_last_n, format, think, model, reasoning_format{}",
                    if ask { ", system" } else { "" }
                )))
            }
        }
    }
    answer::validate_sampling(&sampling, answer::Ranges::OpenAi)
        .map_err(|(_, m)| Error::InvalidArgument(m))?;
    match think {
        Some(false) => format = ReasoningFormat::Off,
        Some(true) if format == ReasoningFormat::None => {
            return Err(Error::InvalidArgument(
                "options think: true and reasoning_format: \"none\" contradict each other".into(),
            ))
        }
        _ => {}
    }
    Ok(Request {
        sampling,
        format,
        model,
    })
}

/// `Chat1`'s `format` option (`s`): `""` none, `"json"` any JSON object, else a JSON Schema as
/// JSON text.
fn format_option(text: &str) -> Result<Option<String>, Error> {
    let value = match text.trim() {
        "" | "json" => serde_json::Value::String(text.trim().to_owned()),
        schema => serde_json::from_str(schema).map_err(|e| {
            Error::InvalidArgument(format!(
                "option format: not \"json\" and not a JSON Schema in JSON text ({e})"
            ))
        })?,
    };
    answer::ollama_format(Some(&value)).map_err(|m| Error::InvalidArgument(format!("option {m}")))
}

/// `Load`'s path and options (checked by the control core, as `POST /r1/load`'s are).
fn load_options(path: String, options: &HashMap<String, OwnedValue>) -> Result<LoadOptions, Error> {
    let mut load = LoadOptions {
        path,
        ..Default::default()
    };
    for (key, value) in options {
        match key.as_str() {
            "context_length" => load.context_length = Some(opt_u32(key, value)?),
            "gpu_layers" => load.gpu_layers = Some(opt_u32(key, value)?),
            "threads" => load.threads = Some(opt_u32(key, value)?),
            "backend" => load.backend = Some(opt_str(key, value)?),
            "kv_cache_type" => load.kv_cache_type = Some(opt_str(key, value)?),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown option {other:?}; known: context_length, gpu_layers, threads, backend, kv_cache_type"
                )))
            }
        }
    }
    Ok(load)
}

/// The value inside any nesting of variants.
fn inner<'a>(v: &'a Value<'a>) -> &'a Value<'a> {
    match v {
        Value::Value(v) => inner(v),
        v => v,
    }
}

fn opt_i64(key: &str, v: &Value<'_>) -> Result<i64, Error> {
    Ok(match inner(v) {
        Value::U8(x) => i64::from(*x),
        Value::U16(x) => i64::from(*x),
        Value::I16(x) => i64::from(*x),
        Value::U32(x) => i64::from(*x),
        Value::I32(x) => i64::from(*x),
        Value::I64(x) => *x,
        Value::U64(x) => i64::try_from(*x)
            .map_err(|_| Error::InvalidArgument(format!("option {key} is out of range")))?,
        // A count sent as a double (`128.0`, what a JavaScript or Python client may send) is the
        // same count when it is whole; -2^63 ≤ x < 2^63 converts exactly.
        Value::F64(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.2e18 => *x as i64,
        Value::F64(x) => {
            return Err(Error::InvalidArgument(format!(
                "option {key} must be a whole number, not {x}"
            )))
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "option {key} must be an integer, not of type {}",
                other.value_signature()
            )))
        }
    })
}

fn opt_u32(key: &str, v: &Value<'_>) -> Result<u32, Error> {
    u32::try_from(opt_i64(key, v)?).map_err(|_| {
        Error::InvalidArgument(format!(
            "option {key} must be an integer from 0 to {}",
            u32::MAX
        ))
    })
}

fn opt_f64(key: &str, v: &Value<'_>) -> Result<f64, Error> {
    match inner(v) {
        Value::F64(x) => Ok(*x),
        _ => opt_i64(key, v)
            .map(|x| x as f64)
            .map_err(|_| Error::InvalidArgument(format!("option {key} must be a number"))),
    }
}

fn opt_str(key: &str, v: &Value<'_>) -> Result<String, Error> {
    match inner(v) {
        Value::Str(s) => Ok(s.to_string()),
        other => Err(Error::InvalidArgument(format!(
            "option {key} must be a string, not of type {}",
            other.value_signature()
        ))),
    }
}

fn opt_strs(key: &str, v: &Value<'_>) -> Result<Vec<String>, Error> {
    match inner(v) {
        Value::Str(s) => Ok(vec![s.to_string()]),
        Value::Array(a) => a.iter().map(|v| opt_str(key, v)).collect(),
        other => Err(Error::InvalidArgument(format!(
            "option {key} must be a string or an array of strings, not of type {}",
            other.value_signature()
        ))),
    }
}

/// The introspection XML of the interfaces (what `systemd/org.r1d.R1.xml` ships).
pub fn introspection_xml(manager: &Manager, chat: &Chat) -> String {
    use zbus::object_server::Interface as _;
    let mut xml = String::from(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<!-- r1d's D-Bus interfaces at /org/r1d/R1 on org.r1d.R1. Generated from daemon/src/api/dbus.rs:\n     R1D_BLESS=1 cargo test -p r1d dbus rewrites it; the test fails when it drifts. -->\n<node name=\"/org/r1d/R1\">\n",
    );
    manager.introspect_to_writer(&mut xml, 1);
    chat.introspect_to_writer(&mut xml, 1);
    xml.push_str("</node>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interfaces() -> (Manager, Chat) {
        let control = crate::control::tests::control_without_store_or_supervisor();
        let engine = control.engine().clone();
        let manager = Manager {
            control: control.clone(),
            hardware: tokio::sync::OnceCell::new(),
        };
        (manager, Chat { engine, control })
    }

    #[test]
    fn shipped_introspection_xml_matches_the_code() {
        let (manager, chat) = interfaces();
        let xml = introspection_xml(&manager, &chat);
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/org.r1d.R1.xml");
        if std::env::var_os("R1D_BLESS").is_some() {
            std::fs::write(&path, &xml).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == xml,
            "{} drifted from daemon/src/api/dbus.rs; run `R1D_BLESS=1 cargo test -p r1d dbus` and review the diff.\nThe code's XML:\n{xml}",
            path.display()
        );
    }

    #[test]
    fn options_of_any_integer_type_are_accepted_and_unknown_ones_named() {
        let mut options: HashMap<String, OwnedValue> = HashMap::new();
        options.insert("max_tokens".into(), OwnedValue::from(5i32));
        options.insert("temperature".into(), OwnedValue::from(0.5f64));
        options.insert("seed".into(), OwnedValue::from(7u64));
        let r = request_of(&options, true).unwrap();
        assert_eq!(r.sampling.max_tokens, Some(5));
        assert_eq!(r.sampling.temperature, Some(0.5));
        assert_eq!(r.sampling.seed, Some(7));
        options.insert("max_token".into(), OwnedValue::from(5u32));
        let Err(Error::InvalidArgument(m)) = request_of(&options, true) else {
            panic!("an unknown option must be refused");
        };
        assert!(m.contains("\"max_token\""), "{m}");
    }

    /// Issue 17: structured output as the `format` option: "json", a schema as JSON text, or
    /// refused naming the option.
    #[test]
    fn format_option_is_json_or_a_schema_in_json_text() {
        assert_eq!(format_option("").unwrap(), None);
        assert_eq!(
            format_option("json").unwrap().as_deref(),
            Some(answer::ANY_JSON_OBJECT)
        );
        assert_eq!(
            format_option(r#"{"type": "array"}"#).unwrap().as_deref(),
            Some(r#"{"type":"array"}"#)
        );
        for bad in ["yaml", "[1", "3"] {
            let Err(Error::InvalidArgument(m)) = format_option(bad) else {
                panic!("{bad:?} must be refused");
            };
            assert!(m.contains("format"), "{m}");
        }
    }

    /// Issue 17: Chat1 honours OpenAI's penalties (over every generated token) and refuses
    /// values outside OpenAI's range, naming the option.
    #[test]
    fn penalties_are_options_with_openai_ranges() {
        let mut options: HashMap<String, OwnedValue> = HashMap::new();
        options.insert("presence_penalty".into(), OwnedValue::from(1.5f64));
        options.insert("frequency_penalty".into(), OwnedValue::from(-0.5f64));
        let r = request_of(&options, true).unwrap();
        assert_eq!(r.sampling.presence_penalty, Some(1.5));
        assert_eq!(r.sampling.frequency_penalty, Some(-0.5));
        assert_eq!(r.sampling.repeat_last_n, Some(-1));
        options.insert("presence_penalty".into(), OwnedValue::from(5.0f64));
        assert!(matches!(
            request_of(&options, true),
            Err(Error::InvalidArgument(m)) if m.contains("presence_penalty 5 is outside -2 to 2")
        ));
    }

    #[test]
    fn sampling_out_of_range_is_an_invalid_argument() {
        let mut options: HashMap<String, OwnedValue> = HashMap::new();
        options.insert("temperature".into(), OwnedValue::from(3.0f64));
        assert!(matches!(
            request_of(&options, true),
            Err(Error::InvalidArgument(m)) if m.contains("temperature")
        ));
    }

    #[test]
    fn control_errors_map_to_their_d_bus_names_in_one_place() {
        let name = |e: ControlError| Error::from(e).dbus_name();
        assert_eq!(
            name(ControlError::LoadFailed("x".into())),
            "org.r1d.R1.Error.LoadFailed"
        );
        assert_eq!(
            name(ControlError::ConfigRejected("bogus".into())),
            "org.r1d.R1.Error.InvalidArgument"
        );
        assert_eq!(
            name(ControlError::Store(StoreError::Unknown("x".into()))),
            "org.r1d.R1.Error.ModelNotFound"
        );
        assert_eq!(
            name(ControlError::Engine(EngineError::ShuttingDown)),
            "org.r1d.R1.Error.ShuttingDown"
        );
        assert_eq!(
            name(ControlError::NotSupported {
                what: "x".into(),
                needs: "the supervisor"
            }),
            "org.r1d.R1.Error.NotSupported"
        );
    }

    #[test]
    fn error_names_are_under_org_r1d_r1_error() {
        assert_eq!(
            Error::from(EngineError::Busy(3)).dbus_name(),
            "org.r1d.R1.Error.Busy"
        );
        assert_eq!(
            Error::PermissionDenied(String::new()).dbus_name(),
            "org.r1d.R1.Error.PermissionDenied"
        );
    }
}
