//! systemd integration: readiness, status, watchdog and reload through `sd_notify`, socket
//! activation, and log lines that journald files under the right priority.
//!
//! Everything here does nothing outside systemd: without `NOTIFY_SOCKET` no notification is
//! sent, without `WATCHDOG_USEC` there are no pings, without `LISTEN_FDS`/`LISTEN_PID` r1d binds
//! its own socket, and without a `JOURNAL_STREAM` that names stderr log lines are plain.
//!
//! What systemd sees (`systemctl status r1d`):
//! - `STATUS=loading <file>, 43 %` while the model loads (with `EXTEND_TIMEOUT_USEC`, so a
//!   large model that keeps making progress is not killed by `TimeoutStartSec=`);
//! - `READY=1` once r1d can answer: the socket is bound and the model is resident, or r1d has
//!   settled on serving no model, with `STATUS=no model: <reason>`;
//! - `STATUS=serving <name> <quantization> on <backend> (GPU n/m layers)`;
//! - `WATCHDOG=1` every half `WATCHDOG_USEC` while [`Engine::is_alive`] says the engine thread
//!   makes progress — a hung engine stops the pings and systemd restarts the service;
//! - `RELOADING=1` + `MONOTONIC_USEC` on SIGHUP, then the config is read again and the model it
//!   names is loaded when it differs from the resident one, then `READY=1`;
//! - `STOPPING=1` when shutdown begins.
//!
//! **API boundary**: only this module knows the `sd_notify` protocol and systemd's environment
//! variables; the engine knows nothing of systemd.

use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineState, LoadSpec, Snapshot};
use crate::server::ServerError;

/// How long systemd's start (or reload) timeout is extended at each sign of load progress.
const LOAD_PROGRESS_EXTEND: Duration = Duration::from_secs(90);

/// Errors taking or binding the listening sockets.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// `LISTEN_FDS` / `LISTEN_PID` are malformed.
    #[error("failed to read the sockets passed by systemd (LISTEN_FDS): {0}")]
    ListenFds(std::io::Error),
    /// systemd passed more than one Unix socket.
    #[error(
        "systemd passed {0} Unix sockets; r1d serves one (one ListenStream= path in r1d.socket) \
         beside any number of TCP sockets"
    )]
    UnixCount(usize),
    /// A passed descriptor is neither a Unix nor a TCP stream socket.
    #[error(
        "the socket systemd passed as fd {fd} is neither a Unix nor a TCP stream socket: {source}"
    )]
    Unusable {
        /// The descriptor.
        fd: i32,
        /// Why it was refused.
        source: std::io::Error,
    },
    /// Binding our own socket failed.
    #[error(transparent)]
    Bind(#[from] ServerError),
}

/// The sockets r1d serves on.
#[derive(Debug)]
pub struct Listening {
    /// The Unix socket's listener, ready for [`crate::server::serve`].
    pub listener: UnixListener,
    /// Its path.
    pub path: PathBuf,
    /// True when systemd passed it (socket activation). Then the socket file belongs to systemd
    /// (`r1d.socket`) and outlives r1d: it must not be removed at exit.
    pub activated: bool,
    /// TCP sockets systemd passed (e.g. `r1d-tcp.socket`), served like `[server] listen` ones
    /// (see [`crate::listen`]).
    pub tcp: Vec<std::net::TcpListener>,
}

impl Listening {
    /// The socket file r1d created and removes at exit; `None` when systemd owns it.
    pub fn owned_socket_file(&self) -> Option<PathBuf> {
        (!self.activated).then(|| self.path.clone())
    }
}

/// A socket systemd passed.
enum Passed {
    Unix(std::os::unix::net::UnixListener, PathBuf, i32),
    Tcp(std::net::TcpListener),
}

/// Tells a passed descriptor's kind by its address family: a Unix socket has a Unix address, a
/// TCP one an IP address.
fn classify(fd: i32) -> Result<Passed, SystemdError> {
    let unusable = |source| SystemdError::Unusable { fd, source };
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID matched) and nothing
    // else in r1d takes it: ownership moves here exactly once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let unix = std::os::unix::net::UnixListener::from(owned);
    if let Ok(addr) = unix.local_addr() {
        unix.set_nonblocking(true).map_err(unusable)?;
        let path = addr
            .as_pathname()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("(unnamed socket)"));
        return Ok(Passed::Unix(unix, path, fd));
    }
    let tcp = std::net::TcpListener::from(OwnedFd::from(unix));
    tcp.local_addr().map_err(unusable)?;
    tcp.set_nonblocking(true).map_err(unusable)?;
    Ok(Passed::Tcp(tcp))
}

/// Takes the sockets systemd passed (socket activation, `LISTEN_FDS` with `LISTEN_PID` = this
/// process): at most one Unix socket and any number of TCP ones. Without a passed Unix socket it
/// binds `configured` with [`crate::server::bind`].
///
/// # Errors
/// [`SystemdError`] when a passed socket is unusable or binding fails.
pub async fn listen(
    configured: &Path,
    kind: crate::server::SocketKind,
) -> Result<Listening, SystemdError> {
    let fds = sd_notify::listen_fds().map_err(SystemdError::ListenFds)?;
    let mut unix = Vec::new();
    let mut tcp = Vec::new();
    for fd in fds {
        match classify(fd)? {
            Passed::Unix(listener, path, fd) => unix.push((listener, path, fd)),
            Passed::Tcp(listener) => tcp.push(listener),
        }
    }
    if unix.len() > 1 {
        return Err(SystemdError::UnixCount(unix.len()));
    }
    match unix.pop() {
        None => {
            let listener = crate::server::bind(configured, kind).await?;
            tracing::info!("listening on {}", configured.display());
            Ok(Listening {
                listener,
                path: configured.to_owned(),
                activated: false,
                tcp,
            })
        }
        Some((std_listener, path, fd)) => {
            let listener = UnixListener::from_std(std_listener)
                .map_err(|source| SystemdError::Unusable { fd, source })?;
            if path != configured {
                tracing::info!(
                    "serving on the socket systemd passed, {}, instead of {}",
                    path.display(),
                    configured.display()
                );
            }
            tracing::info!("listening on {} (socket activation)", path.display());
            Ok(Listening {
                listener,
                path,
                activated: true,
                tcp,
            })
        }
    }
}

/// Re-reads the configuration on SIGHUP and applies it (the supervisor's reload); resolves to one
/// line saying what happened to the model, or why the file was rejected.
pub type Reload = Box<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> + Send + Sync,
>;

/// Talks to systemd's notification socket. Create it before the engine starts (it says what is
/// being loaded), then [`Notifier::spawn`] it.
#[derive(Debug)]
pub struct Notifier {
    /// What the engine was started with.
    initial: Option<LoadSpec>,
    /// Whether `STOPPING=1` has been sent.
    stopping: Arc<AtomicBool>,
}

/// Keeps the notifier's tasks; when dropped (r1d exits) it makes sure systemd heard
/// `STOPPING=1`.
#[derive(Debug)]
pub struct NotifierGuard {
    stopping: Arc<AtomicBool>,
}

impl Drop for NotifierGuard {
    fn drop(&mut self) {
        send_stopping(&self.stopping);
    }
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("failed to notify systemd (NOTIFY_SOCKET): {e}");
    }
}

fn send_stopping(sent: &AtomicBool) {
    if !sent.swap(true, Ordering::SeqCst) {
        notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

impl Notifier {
    /// Sends the first `STATUS=` ("loading <file>" or "starting").
    pub fn new(initial: Option<&LoadSpec>) -> Notifier {
        let notifier = Notifier {
            initial: initial.cloned(),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        let status = starting_status(notifier.initial.as_ref());
        notify(&[NotifyState::Status(&status)]);
        notifier
    }

    /// Starts the tasks that follow the engine: `STATUS=` on every state change, `READY=1`
    /// once it settles, watchdog pings when systemd asked for them, reload on SIGHUP (when
    /// `reload` is given), `STOPPING=1` when `shutdown` is cancelled. Keep the returned guard
    /// alive until r1d exits.
    pub fn spawn(
        self,
        engine: Engine,
        shutdown: CancellationToken,
        reload: Option<Reload>,
    ) -> NotifierGuard {
        // SIGHUP is handled from before the first task runs: READY=1 (sent by a task) must never
        // come before the handler, or a `systemctl reload` right after start would kill r1d
        // (SIGHUP's default action).
        let hup = match reload
            .is_some()
            .then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()))
        {
            Some(Ok(hup)) => Some(hup),
            Some(Err(e)) => {
                tracing::error!("failed to handle SIGHUP, reload is not available: {e}");
                None
            }
            None => None,
        };
        let guard = NotifierGuard {
            stopping: self.stopping.clone(),
        };
        tokio::spawn(follow_state(
            engine.clone(),
            self.initial.clone(),
            shutdown.clone(),
            self.stopping.clone(),
        ));
        match sd_notify::watchdog_enabled() {
            Some(timeout) if !timeout.is_zero() => {
                tracing::info!(
                    "systemd watchdog: {} (pinging every {})",
                    humantime::format_duration(timeout),
                    humantime::format_duration(timeout / 2)
                );
                tokio::spawn(watchdog(engine.clone(), timeout, shutdown.clone()));
            }
            _ => {}
        }
        if let (Some(reload), Some(hup)) = (reload, hup) {
            tokio::spawn(reload_on_sighup(
                engine,
                self.initial,
                reload,
                hup,
                shutdown,
            ));
        }
        guard
    }
}

/// `STATUS=` and `READY=1` from the engine's state; `STOPPING=1` at shutdown.
async fn follow_state(
    engine: Engine,
    initial: Option<LoadSpec>,
    shutdown: CancellationToken,
    stopping: Arc<AtomicBool>,
) {
    let mut rx = engine.subscribe();
    let mut ready_sent = false;
    let mut last_status = String::new();
    loop {
        let snapshot = rx.borrow_and_update().clone();
        let status = status_line(&snapshot, initial.as_ref());
        let settled = matches!(snapshot.state, EngineState::Ready | EngineState::NoModel);
        let mut states = Vec::new();
        if status != last_status {
            states.push(NotifyState::Status(&status));
            if snapshot.state == EngineState::Loading {
                states.push(NotifyState::ExtendTimeoutUsec(
                    LOAD_PROGRESS_EXTEND.as_micros() as u32,
                ));
            }
        }
        if settled && !ready_sent {
            ready_sent = true;
            states.push(NotifyState::Ready);
        }
        if !states.is_empty() {
            notify(&states);
        }
        last_status = status;
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
    if shutdown.is_cancelled() {
        send_stopping(&stopping);
    }
}

/// `WATCHDOG=1` every `timeout / 2` while the engine thread makes progress. A hung engine gets
/// no ping, and systemd (`WatchdogSec=`) restarts the service.
async fn watchdog(engine: Engine, timeout: Duration, shutdown: CancellationToken) {
    let period = timeout / 2;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_alive = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let alive = engine.is_alive(period).await;
        if alive {
            notify(&[NotifyState::Watchdog]);
        } else if was_alive {
            tracing::error!(
                "the engine thread has shown no progress for {}; not pinging the systemd watchdog",
                humantime::format_duration(period)
            );
        }
        was_alive = alive;
    }
}

/// SIGHUP: `RELOADING=1`, read the config again, load what it names when that differs from what
/// is resident (or retry when nothing is), `READY=1`.
async fn reload_on_sighup(
    engine: Engine,
    current: Option<LoadSpec>,
    reload: Reload,
    mut hup: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            received = hup.recv() => if received.is_none() { return },
            () = shutdown.cancelled() => return,
        }
        tracing::info!("SIGHUP: reloading the configuration");
        let mut states = vec![
            NotifyState::Reloading,
            NotifyState::Status("reloading the configuration"),
        ];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        notify(&states);
        let outcome = reload().await;
        tracing::info!("SIGHUP reload: {outcome}");
        let status = status_line(&engine.snapshot(), current.as_ref());
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

fn starting_status(initial: Option<&LoadSpec>) -> String {
    match initial {
        Some(spec) => format!("loading {}", file_name(Path::new(&spec.params.path))),
        None => "starting".into(),
    }
}

/// The line `systemctl status` shows for a state: one line, for a person.
pub fn status_line(snapshot: &Snapshot, initial: Option<&LoadSpec>) -> String {
    let line = match snapshot.state {
        EngineState::Starting => starting_status(initial),
        EngineState::Loading | EngineState::Swapping => {
            let what = snapshot
                .loading
                .as_deref()
                .map(file_name)
                .unwrap_or_else(|| "the model".into());
            let verb = match &snapshot.swapping_from {
                Some(from) => format!("swapping {from} for"),
                None => "loading".to_owned(),
            };
            match snapshot.progress {
                Some(p) => format!("{verb} {what}, {:.0} %", (p * 100.0).clamp(0.0, 100.0)),
                None => format!("{verb} {what}"),
            }
        }
        EngineState::Ready => match &snapshot.model {
            Some((info, backend)) => {
                let mut s = format!(
                    "serving {}",
                    info.name
                        .clone()
                        .unwrap_or_else(|| file_name(Path::new(&info.path)))
                );
                if let Some(quant) = &info.file_type {
                    s += &format!(" {quant}");
                }
                s += &format!(" on {backend}");
                if info.layers > 0 {
                    s += &format!(" (GPU {}/{} layers)", info.gpu_layers, info.layers);
                }
                if let Some(crash) = &snapshot.last_crash {
                    s += &format!("; restarted after: {crash}");
                }
                s
            }
            None => "serving".into(),
        },
        EngineState::NoModel => format!(
            "no model: {}",
            snapshot.error.as_deref().unwrap_or("none is configured")
        ),
    };
    // One line: a multi-line load error would otherwise be cut by systemctl.
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// True when stderr is the journal: `JOURNAL_STREAM` (`DEVICE:INODE`, set by systemd for
/// `StandardError=journal`) names the file stderr is. A child that inherited the variable but
/// writes elsewhere gets plain lines.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Formats each event as `F` does, prefixed with its syslog priority (`<3>` error, `<4>` warn,
/// `<6>` info, `<7>` debug and trace), which journald reads from a service's stderr
/// (`SyslogLevelPrefix=yes`, the default) — see sd-daemon(3).
#[derive(Debug, Clone)]
pub struct SyslogPriority<F>(pub F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for SyslogPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{LoadParams, ModelInfo};

    fn snapshot(state: EngineState) -> Snapshot {
        Snapshot {
            state,
            model: None,
            loading: None,
            progress: None,
            error: None,
            loaded_at: None,
            spec: None,
            swapping_from: None,
            last_load_error: None,
            last_failed: None,
            queued_load: None,
            last_crash: None,
        }
    }

    #[test]
    fn loading_status_names_the_file_and_the_percentage() {
        let mut s = snapshot(EngineState::Loading);
        s.loading = Some("/var/lib/r1d/models/DeepSeek-R1-Distill-Qwen-14B-Q4_K_M.gguf".into());
        s.progress = Some(0.434);
        assert_eq!(
            status_line(&s, None),
            "loading DeepSeek-R1-Distill-Qwen-14B-Q4_K_M.gguf, 43 %"
        );
    }

    #[test]
    fn starting_status_names_what_will_be_loaded() {
        let spec = LoadSpec {
            params: LoadParams {
                path: "/m/x.gguf".into(),
                ..Default::default()
            },
            backend: None,
        };
        assert_eq!(
            status_line(&snapshot(EngineState::Starting), Some(&spec)),
            "loading x.gguf"
        );
        assert_eq!(
            status_line(&snapshot(EngineState::Starting), None),
            "starting"
        );
    }

    #[test]
    fn serving_status_names_model_quantization_backend_and_offload() {
        let mut s = snapshot(EngineState::Ready);
        let info = ModelInfo {
            path: "/m/r1.gguf".into(),
            name: Some("DeepSeek-R1-Distill-Qwen-14B".into()),
            file_type: Some("Q4_K_M".into()),
            layers: 48,
            gpu_layers: 30,
            ..Default::default()
        };
        s.model = Some((info, "llamacpp".into()));
        assert_eq!(
            status_line(&s, None),
            "serving DeepSeek-R1-Distill-Qwen-14B Q4_K_M on llamacpp (GPU 30/48 layers)"
        );
    }

    #[test]
    fn no_model_status_is_one_line_with_the_reason() {
        let mut s = snapshot(EngineState::NoModel);
        s.error = Some("failed to load /m/x.gguf:\n  truncated".into());
        assert_eq!(
            status_line(&s, None),
            "no model: failed to load /m/x.gguf: truncated"
        );
    }
}
