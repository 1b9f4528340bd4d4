//! Plugins in a supervised worker process: the host side and the protocol.
//!
//! A loaded model lives in a child process (`r1d __plugin-worker`, see [`super::worker_child`]),
//! one per resident model, as rust-analyzer's proc-macro server and Ollama's runner keep crash-prone
//! native code out of the server. The child `dlopen`s the plugin through the same C ABI — plugins
//! do not change — and r1d speaks to it over its stdin/stdout pipes:
//!
//! - **Frames**: a 4-byte little-endian length, then that many bytes of JSON ([`ToWorker`] one way,
//!   [`FromWorker`] the other); at most [`MAX_FRAME`] bytes. One frame per generated piece: about
//!   60 bytes for a token, against the milliseconds a token takes.
//! - **Requests** carry an id (`0` is the load); their replies (`Piece`s, then `Done` or `Failed`)
//!   come back with it, so several generations share the pipe (continuous batching).
//! - **Cancellation**: when the host's token callback returns false it sends `Cancel`; the child's
//!   callback returns false at its next token, as in-process.
//! - **Logs**: the child's `tracing` events (the plugin's log lines among them) come back as `Log`
//!   frames and are logged here under target `r1d::plugin`; what the child writes to stderr
//!   (llama.cpp's `GGML_ASSERT` message before an `abort()`, a Rust panic outside the SDK's
//!   `catch_unwind`) is logged line by line, and the last line is kept.
//! - **Heartbeats**: every [`BEAT_INTERVAL`] the child sends `Beat` with a counter of its progress
//!   (tokens, prompt batches, load progress reports), logged at trace level.
//!
//! When the child dies (a segfault, `abort()`, `exit()`, SIGBUS on a model file truncated under
//! its mapping, the OOM killer) every call waiting on it ends at once with
//! [`BackendError::WorkerDied`], whose message says how it ended (signal or exit code) and its last
//! log line; the model's [`LoadedModel::failure`] says the same, and the hook set with
//! [`LoadedModel::on_failure`] runs once, so the engine can restart it. The end is the child's
//! exit (a thread waits for it), not the end of its pipes, which a process it started may hold;
//! its process group is killed with it. When one request to it (a load, a tokenize, a generation)
//! gets no reply for [`WorkerCommand::hang_timeout`] — each piece, prompt batch and load progress
//! report is one — it is killed with SIGKILL (a hang inside the plugin) and the same happens. A
//! load that fails or is cancelled ends its worker.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use r1_plugin_abi::json::{
    Estimate, GenerateRequest, GenerateResult, LoadParams, ModelInfo, ProbeReport,
};
use serde::{Deserialize, Serialize};

use super::{Backend, BackendError, LoadedModel};

/// The largest frame either side accepts (bytes): a generate request carries the whole prompt and
/// a JSON schema, far below this.
pub const MAX_FRAME: usize = 64 << 20;

/// How often the child sends a heartbeat.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// The request id of the load.
const LOAD_ID: u64 = 0;

/// The argument that makes `r1d` run as a plugin worker (see [`WorkerCommand::this_executable`]).
pub const WORKER_ARG: &str = "__plugin-worker";

/// A message from r1d to its worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToWorker {
    /// Open the plugin file and load a model with it (request id 0). Sent once, first.
    Load {
        /// The plugin library.
        plugin: PathBuf,
        /// The load parameters (the ABI's JSON document).
        params: LoadParams,
    },
    /// Open the plugin file and estimate what a load with these parameters would allocate
    /// (request id 0; see `estimate` in `r1_plugin.h`). A worker asked this does nothing else.
    Estimate {
        /// The plugin library.
        plugin: PathBuf,
        /// The load parameters (the ABI's JSON document).
        params: LoadParams,
    },
    /// Open the plugin file and probe it (request id 0): its name, version and probe report.
    /// A worker asked this does nothing else.
    Probe {
        /// The plugin library.
        plugin: PathBuf,
    },
    /// Tokenize text (see `tokenize` in `r1_plugin.h`).
    Tokenize {
        /// Request id.
        id: u64,
        /// The text.
        text: String,
        /// Add BOS/EOS as the model's tokenizer does.
        add_special: bool,
        /// Parse special tokens in the text.
        parse_special: bool,
    },
    /// Generate (see `generate` in `r1_plugin.h`).
    Generate {
        /// Request id.
        id: u64,
        /// The request (the ABI's JSON document).
        request: GenerateRequest,
    },
    /// Stop the request with this id (0: the load) at its next token or progress report.
    Cancel {
        /// Request id.
        id: u64,
    },
}

/// A message from the worker to r1d.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FromWorker {
    /// A log event of the worker or its plugin.
    Log {
        /// `R1_LOG_ERROR` (1) … `R1_LOG_TRACE` (5).
        level: i32,
        /// Where it came from (the plugin's log target).
        target: String,
        /// The line.
        message: String,
    },
    /// Alive; `progress` counts tokens, prompt batches and load progress reports so far.
    Beat {
        /// Monotonic progress counter.
        progress: u64,
    },
    /// Load progress, 0..=1.
    Progress {
        /// Fraction loaded.
        fraction: f32,
    },
    /// The model is loaded.
    Loaded {
        /// What was loaded (the ABI's JSON document).
        info: Box<ModelInfo>,
    },
    /// The answer to `Estimate`: `None` when the backend has no estimate.
    Estimated {
        /// The estimate (the ABI's JSON document).
        estimate: Option<Box<Estimate>>,
    },
    /// The answer to `Probe`.
    Probed {
        /// The backend's name (its table's `name`).
        name: String,
        /// The plugin's version (its table's `version`).
        version: String,
        /// What its `probe` reported (the ABI's JSON document).
        report: Box<ProbeReport>,
    },
    /// A tokenize request's answer.
    Tokens {
        /// Request id.
        id: u64,
        /// The token ids.
        tokens: Vec<i32>,
    },
    /// A piece of a generation (or, with `token` −1, a prompt-progress report).
    Piece {
        /// Request id.
        id: u64,
        /// The bytes of the piece (may be a partial UTF-8 sequence).
        bytes: Vec<u8>,
        /// The token id, or `R1_TOKEN_PROMPT_PROGRESS`.
        token: i32,
    },
    /// A generation ended.
    Done {
        /// Request id.
        id: u64,
        /// Its result (the ABI's JSON document).
        result: Box<GenerateResult>,
    },
    /// A request failed (id 0: the load), with the plugin's status and message.
    Failed {
        /// Request id.
        id: u64,
        /// ABI status (`R1_ERR_*`).
        status: i32,
        /// The plugin's message.
        message: String,
    },
}

/// Writes one frame: the JSON length as 4 little-endian bytes, then the JSON.
///
/// # Errors
/// The writer's I/O error (a broken pipe when the other side is gone).
pub fn write_frame(w: &mut impl Write, message: &impl Serialize) -> std::io::Result<()> {
    let json = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| {
            std::io::Error::other(format!("a frame of {} bytes is too large", json.len()))
        })?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&json)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of the stream (before a frame starts).
///
/// # Errors
/// An I/O error, a stream that ends inside a frame, a frame over [`MAX_FRAME`] or JSON that is
/// not a `T` (`InvalidData`).
pub fn read_frame<T: serde::de::DeserializeOwned>(r: &mut impl Read) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    let mut json = vec![0u8; len];
    r.read_exact(&mut json)?;
    serde_json::from_slice(&json)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// How r1d starts a plugin worker.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The program: r1d's own executable, as `/proc/self/exe` — the very file this process runs,
    /// even after a package upgrade replaced the one at its path, so r1d and its worker always
    /// speak the same protocol.
    pub program: PathBuf,
    /// What the worker's `argv[0]` says (r1d's path, for `ps`).
    pub arg0: OsString,
    /// Its arguments ([`WORKER_ARG`]).
    pub args: Vec<OsString>,
    /// How long a worker with work to do may show no progress before it is killed as hung
    /// (`[plugins] hang_timeout_s`, default [`crate::config::DEFAULT_HANG_TIMEOUT`]).
    pub hang_timeout: Duration,
    /// How many hang timeouts a silent worker that keeps computing is given (see
    /// [`BUSY_LIMIT`]); 1 gives it none (a probe: r1d's start waits for it).
    pub busy_limit: u32,
}

impl WorkerCommand {
    /// This executable (`/proc/self/exe`) with [`WORKER_ARG`].
    ///
    /// # Errors
    /// When the executable's path cannot be read.
    pub fn this_executable(hang_timeout: Duration) -> std::io::Result<WorkerCommand> {
        let path = std::env::current_exe()?;
        let program = PathBuf::from("/proc/self/exe");
        Ok(WorkerCommand {
            program: if program.exists() {
                program
            } else {
                path.clone()
            },
            arg0: path.into_os_string(),
            args: vec![WORKER_ARG.into()],
            hang_timeout,
            busy_limit: BUSY_LIMIT,
        })
    }
}

/// The longest a plugin may take to be opened and probed in its worker before it is killed as
/// hung (or the command's hang timeout, when shorter). r1d's start waits for its probes, and
/// systemd's default start timeout is 90 s; a GPU runtime's first initialisation takes seconds.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens and probes the plugin at `path` in a worker process of its own (which ends with the
/// answer) and returns the backend it is: models loaded with it run in workers too.
///
/// # Errors
/// [`BackendError::ProbeFailed`] with the error the worker met opening or probing the plugin
/// (the same text as in process: permissions, no entry point, ABI version, the probe's own
/// error), or how the worker ended when the plugin crashed it or hung.
pub(crate) fn probe_in_worker(
    command: &WorkerCommand,
    path: &Path,
) -> Result<Arc<dyn Backend>, BackendError> {
    let failed = |reason: String| BackendError::ProbeFailed {
        path: path.to_owned(),
        reason,
    };
    let label = path
        .file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned();
    let probe_command = WorkerCommand {
        hang_timeout: command.hang_timeout.min(PROBE_TIMEOUT),
        busy_limit: 1,
        ..command.clone()
    };
    let conn = Conn::spawn(&probe_command, &label)?;
    let _guard = CloseOnDrop(Some(conn.clone()));
    let replies = conn.register(LOAD_ID)?;
    conn.send(&ToWorker::Probe {
        plugin: path.to_owned(),
    })?;
    match replies.recv() {
        Ok(Reply::Probed(name, version, report)) => Ok(Arc::new(WorkerBackend {
            name,
            version,
            probe: *report,
            plugin: path.to_owned(),
            command: command.clone(),
        })),
        Ok(Reply::Failed(_, message)) => Err(failed(message)),
        Ok(other) => Err(failed(conn.protocol_error(&other).to_string())),
        Err(_) => Err(failed(format!(
            "opening and probing {} failed: {}",
            path.display(),
            conn.died()
        ))),
    }
}

/// A backend whose plugin was probed, and whose models are loaded and estimates made, in worker
/// processes: r1d never opens the plugin itself.
pub(crate) struct WorkerBackend {
    name: String,
    version: String,
    probe: ProbeReport,
    plugin: PathBuf,
    command: WorkerCommand,
}

impl Backend for WorkerBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn file(&self) -> Option<&Path> {
        Some(&self.plugin)
    }

    fn probe_report(&self) -> &ProbeReport {
        &self.probe
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn estimate(&self, params: &LoadParams) -> Result<Option<Estimate>, BackendError> {
        self.estimate_in_worker(params)
    }

    fn load(
        &self,
        params: &LoadParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Box<dyn LoadedModel>, BackendError> {
        let conn = Conn::spawn(&self.command, self.name())?;
        // Whatever ends this load but success ends the worker too: no process is left behind.
        let guard = CloseOnDrop(Some(conn.clone()));
        let replies = conn.register(LOAD_ID)?;
        conn.send(&ToWorker::Load {
            plugin: self.plugin.clone(),
            params: params.clone(),
        })?;
        let mut last = 0.0;
        let cancelled = || BackendError::Call {
            backend: self.name().to_owned(),
            status: r1_plugin_abi::R1_ERR_CANCELLED,
            message: format!("loading model {} was cancelled", params.path),
        };
        loop {
            // The progress callback is also asked between reports, so a load stopped for a newer
            // one or for shutdown ends at once even while the plugin reports nothing; the worker
            // is then killed, which frees whatever it had loaded.
            match replies.recv_timeout(Duration::from_millis(250)) {
                Ok(Reply::Progress(p)) => {
                    last = p;
                    if !progress(p) {
                        return Err(cancelled());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !progress(last) {
                        return Err(cancelled());
                    }
                }
                Ok(Reply::Loaded(info)) => {
                    conn.forget(LOAD_ID);
                    let mut guard = guard;
                    guard.0 = None;
                    return Ok(Box::new(WorkerModel {
                        backend: self.name().to_owned(),
                        info: *info,
                        conn,
                    }));
                }
                Ok(Reply::Failed(status, message)) => {
                    return Err(failed(self.name(), status, message))
                }
                Ok(other) => return Err(conn.protocol_error(&other)),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(conn.died()),
            }
        }
    }
}

impl WorkerBackend {
    /// The estimate, asked of a worker started for it alone (reading a model file's header is
    /// backend code too: a strange file must not take r1d down), which ends with the answer.
    fn estimate_in_worker(&self, params: &LoadParams) -> Result<Option<Estimate>, BackendError> {
        let conn = Conn::spawn(&self.command, self.name())?;
        let _guard = CloseOnDrop(Some(conn.clone()));
        let replies = conn.register(LOAD_ID)?;
        conn.send(&ToWorker::Estimate {
            plugin: self.plugin.clone(),
            params: params.clone(),
        })?;
        match replies.recv() {
            Ok(Reply::Estimated(estimate)) => Ok(estimate.map(|e| *e)),
            Ok(Reply::Failed(status, message)) => Err(failed(self.name(), status, message)),
            Ok(other) => Err(conn.protocol_error(&other)),
            Err(_) => Err(conn.died()),
        }
    }
}

/// The error of a request the plugin failed (`Failed` frame: its ABI status and message).
fn failed(backend: &str, status: i32, message: String) -> BackendError {
    BackendError::Call {
        backend: backend.to_owned(),
        status,
        message,
    }
}

/// Ends a worker when dropped (a load that did not succeed).
struct CloseOnDrop(Option<Arc<Conn>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.close();
        }
    }
}

/// A reply routed to the call waiting for it.
#[derive(Debug)]
enum Reply {
    Progress(f32),
    Loaded(Box<ModelInfo>),
    Estimated(Option<Box<Estimate>>),
    Probed(String, String, Box<ProbeReport>),
    Tokens(Vec<i32>),
    Piece(Vec<u8>, i32),
    Done(Box<GenerateResult>),
    Failed(i32, String),
}

type DeathHook = Box<dyn FnOnce(String) + Send>;

/// One worker process and the calls waiting on it.
struct Conn {
    backend: String,
    pid: u32,
    writer: Mutex<Option<BufWriter<ChildStdin>>>,
    /// The calls waiting for replies, by request id, with the time of their last reply (or of
    /// the request). Cleared when the worker dies, so every waiting call sees its channel close.
    pending: Mutex<HashMap<u64, (mpsc::Sender<Reply>, Instant)>>,
    /// How many of the worker's two output pipes (stdout: frames, stderr: raw lines) were read
    /// to their end.
    drained: (Mutex<u8>, std::sync::Condvar),
    next_id: AtomicU64,
    /// Why the worker is gone (set before `pending` is cleared).
    dead: Mutex<Option<String>>,
    /// Set when r1d itself ends the worker (unload): its end is no failure.
    closing: AtomicBool,
    /// Why r1d killed it, when it did (a hang).
    killed_for: Mutex<Option<String>>,
    /// The last thing the worker said on stderr or logged as an error.
    last_words: Mutex<Option<String>>,
    on_death: Mutex<Option<DeathHook>>,
    /// When the worker last sent a frame (a heartbeat counts).
    last_frame: Mutex<Instant>,
    /// Set once the worker is reaped: its pid may then belong to another process, so nothing is
    /// signalled any more (held while signalling and while reaping).
    reaped: Mutex<bool>,
}

impl Conn {
    /// Starts a worker: r1d's own executable in a process group of its own (a terminal's Ctrl-C
    /// reaches r1d, which ends its answers cleanly, not the worker), killed with r1d
    /// (`PR_SET_PDEATHSIG`), without the environment systemd gives the service itself.
    fn spawn(command: &WorkerCommand, backend: &str) -> Result<Arc<Conn>, BackendError> {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = Command::new(&command.program);
        cmd.arg0(&command.arg0)
            .args(&command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .process_group(0);
        // SAFETY: between fork and exec only an async-signal-safe system call (prctl) runs.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let mut child: Child = cmd.spawn().map_err(|e| BackendError::Call {
            backend: backend.to_owned(),
            status: r1_plugin_abi::R1_ERR_LOAD_FAILED,
            message: format!(
                "failed to start the {backend} worker process ({}): {e}",
                command.program.display()
            ),
        })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let pid = child.id();
        let conn = Arc::new(Conn {
            backend: backend.to_owned(),
            pid,
            writer: Mutex::new(Some(BufWriter::new(stdin))),
            pending: Mutex::default(),
            drained: (Mutex::new(0), std::sync::Condvar::new()),
            next_id: AtomicU64::new(LOAD_ID + 1),
            dead: Mutex::new(None),
            closing: AtomicBool::new(false),
            killed_for: Mutex::new(None),
            last_words: Mutex::new(None),
            on_death: Mutex::new(None),
            reaped: Mutex::new(false),
            last_frame: Mutex::new(Instant::now()),
        });
        tracing::debug!(backend, pid, "started a plugin worker");
        let _ = std::thread::Builder::new()
            .name("r1d-worker-err".into())
            .spawn({
                let conn = conn.clone();
                move || conn.read_stderr(stderr)
            });
        std::thread::Builder::new()
            .name("r1d-worker-rx".into())
            .spawn({
                let conn = conn.clone();
                move || conn.read_replies(stdout)
            })
            .map_err(|e| conn.spawn_error(e))?;
        // The worker's end is its exit, not the end of its pipes (a process it started may hold
        // them open): this thread waits for it and then ends every call waiting on it.
        std::thread::Builder::new()
            .name("r1d-worker-wait".into())
            .spawn({
                let conn = conn.clone();
                move || conn.ended(child)
            })
            .map_err(|e| conn.spawn_error(e))?;
        std::thread::Builder::new()
            .name("r1d-worker-watch".into())
            .spawn({
                let conn = Arc::downgrade(&conn);
                let (timeout, busy_limit) = (command.hang_timeout, command.busy_limit);
                move || watch(conn, timeout, busy_limit)
            })
            .map_err(|e| conn.spawn_error(e))?;
        Ok(conn)
    }

    fn spawn_error(&self, e: std::io::Error) -> BackendError {
        self.kill();
        BackendError::Call {
            backend: self.backend.clone(),
            status: r1_plugin_abi::R1_ERR_LOAD_FAILED,
            message: format!(
                "failed to start a thread for the {} worker: {e}",
                self.backend
            ),
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a message; a worker that is gone is [`BackendError::WorkerDied`].
    fn send(&self, message: &ToWorker) -> Result<(), BackendError> {
        let mut writer = Self::lock(&self.writer);
        let Some(w) = writer.as_mut() else {
            return Err(self.died());
        };
        write_frame(w, message).map_err(|_| self.died())
    }

    /// Registers a call waiting for replies to `id`.
    fn register(&self, id: u64) -> Result<mpsc::Receiver<Reply>, BackendError> {
        let (tx, rx) = mpsc::channel();
        let mut pending = Self::lock(&self.pending);
        if Self::lock(&self.dead).is_some() {
            return Err(self.died());
        }
        pending.insert(id, (tx, Instant::now()));
        Ok(rx)
    }

    /// A new request id, registered.
    fn submit(&self) -> Result<(u64, mpsc::Receiver<Reply>), BackendError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok((id, self.register(id)?))
    }

    fn forget(&self, id: u64) {
        Self::lock(&self.pending).remove(&id);
    }

    /// The error of a call whose worker is gone.
    fn died(&self) -> BackendError {
        // The reader sets `dead` once the process has been reaped; a call that sees the pipe
        // break first waits for it (briefly: the process is ending).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(reason) = Self::lock(&self.dead).clone() {
                return BackendError::WorkerDied {
                    backend: self.backend.clone(),
                    reason,
                };
            }
            if Instant::now() >= deadline {
                return BackendError::WorkerDied {
                    backend: self.backend.clone(),
                    reason: format!(
                        "the {} worker process (pid {}) stopped answering",
                        self.backend, self.pid
                    ),
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn protocol_error(&self, reply: &Reply) -> BackendError {
        self.kill();
        BackendError::Call {
            backend: self.backend.clone(),
            status: r1_plugin_abi::R1_ERR_BACKEND,
            message: format!(
                "the {} worker process sent an unexpected reply ({reply:?}); it was stopped",
                self.backend
            ),
        }
    }

    /// Kills the worker and every process it started (its process group), unless it was
    /// reaped already (its pid may be another process's by then).
    fn kill(&self) {
        let reaped = Self::lock(&self.reaped);
        if *reaped {
            return;
        }
        let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) else {
            return;
        };
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }

    /// Routes the worker's replies until its stdout closes.
    fn read_replies(self: Arc<Self>, stdout: std::process::ChildStdout) {
        let mut reader = BufReader::new(stdout);
        let mut progress = 0u64;
        loop {
            let message = match read_frame::<FromWorker>(&mut reader) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    if !self.closing.load(Ordering::SeqCst)
                        && e.kind() == std::io::ErrorKind::InvalidData
                    {
                        *Self::lock(&self.killed_for) =
                            Some(format!("it sent a malformed message ({e})"));
                        self.kill();
                    }
                    break;
                }
            };
            *Self::lock(&self.last_frame) = Instant::now();
            let (id, reply) = match message {
                FromWorker::Log {
                    level,
                    target,
                    message,
                } => {
                    if level <= r1_plugin_abi::R1_LOG_ERROR {
                        *Self::lock(&self.last_words) = Some(message.clone());
                    }
                    super::emit_plugin_log(&self.backend, level, &target, &message);
                    continue;
                }
                FromWorker::Beat { progress: p } => {
                    if p != progress {
                        progress = p;
                        tracing::trace!(backend = %self.backend, progress, "worker heartbeat");
                    }
                    continue;
                }
                FromWorker::Progress { fraction } => (LOAD_ID, Reply::Progress(fraction)),
                FromWorker::Loaded { info } => (LOAD_ID, Reply::Loaded(info)),
                FromWorker::Estimated { estimate } => (LOAD_ID, Reply::Estimated(estimate)),
                FromWorker::Probed {
                    name,
                    version,
                    report,
                } => (LOAD_ID, Reply::Probed(name, version, report)),
                FromWorker::Tokens { id, tokens } => (id, Reply::Tokens(tokens)),
                FromWorker::Piece { id, bytes, token } => (id, Reply::Piece(bytes, token)),
                FromWorker::Done { id, result } => (id, Reply::Done(result)),
                FromWorker::Failed {
                    id,
                    status,
                    message,
                } => (id, Reply::Failed(status, message)),
            };
            let last = matches!(
                reply,
                Reply::Loaded(_)
                    | Reply::Estimated(_)
                    | Reply::Probed(..)
                    | Reply::Tokens(_)
                    | Reply::Done(_)
                    | Reply::Failed(..)
            );
            let mut pending = Self::lock(&self.pending);
            let delivered = pending.get_mut(&id).is_some_and(|(tx, at)| {
                *at = Instant::now();
                tx.send(reply).is_ok()
            });
            if last || !delivered {
                pending.remove(&id);
            }
        }
        // A worker that closed its stdout can no longer answer: end it (the waiting thread
        // reports it).
        if Self::lock(&self.dead).is_none() && !self.closing.load(Ordering::SeqCst) {
            self.kill();
        }
        self.drained_one();
    }

    fn drained_one(&self) {
        *Self::lock(&self.drained.0) += 1;
        self.drained.1.notify_all();
    }

    /// Waits for the worker's exit; then, once its last frames are read (or a moment later,
    /// when a process it started still holds its pipe), every call waiting on it ends with how it
    /// ended.
    fn ended(&self, mut child: Child) {
        // Exited, but not reaped yet (`WNOWAIT`): its pid stays reserved while the group it led
        // is killed below.
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            use rustix::process::{WaitId, WaitIdOptions};
            while let Err(e) = rustix::process::waitid(
                WaitId::Pid(pid),
                WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
            ) {
                if e != rustix::io::Errno::INTR {
                    break;
                }
            }
        }
        {
            let drained = Self::lock(&self.drained.0);
            let _ = self
                .drained
                .1
                .wait_timeout_while(drained, Duration::from_millis(500), |d| *d < 2);
        }
        // What it started goes with it.
        self.kill();
        let status = {
            let mut reaped = Self::lock(&self.reaped);
            let status = child.wait();
            *reaped = true;
            status
        };
        let reason = self.describe_end(status);
        let failed = !self.closing.load(Ordering::SeqCst);
        if failed {
            tracing::error!(backend = %self.backend, pid = self.pid, "{reason}");
        }
        *Self::lock(&self.dead) = Some(reason.clone());
        *Self::lock(&self.writer) = None;
        Self::lock(&self.pending).clear();
        let hook = Self::lock(&self.on_death).take();
        if let (true, Some(hook)) = (failed, hook) {
            hook(reason);
        }
    }

    /// Logs what the worker writes to stderr (what llama.cpp prints before it aborts, a panic
    /// message), one line at a time, and keeps the last line.
    fn read_stderr(&self, stderr: std::process::ChildStderr) {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            tracing::warn!(target: "r1d::plugin", plugin = %self.backend, pid = self.pid, "{line}");
            *Self::lock(&self.last_words) = Some(line.to_owned());
        }
        self.drained_one();
    }

    fn describe_end(&self, status: std::io::Result<std::process::ExitStatus>) -> String {
        use std::os::unix::process::ExitStatusExt as _;
        let killed_for = Self::lock(&self.killed_for).clone();
        let how = match (status, &killed_for) {
            (_, Some(why)) => format!("was stopped by r1d (SIGKILL) because {why}"),
            (Ok(s), None) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
                _ => format!("ended ({s})"),
            },
            (Err(e), None) => format!("ended (its status could not be read: {e})"),
        };
        let mut reason = format!(
            "the {} backend's worker process (pid {}) {how}",
            self.backend, self.pid
        );
        if let Some(words) = Self::lock(&self.last_words).clone() {
            reason = format!("{reason}; its last log line: {words}");
        }
        reason
    }

    /// Ends the worker because r1d no longer needs it (no failure is reported).
    fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        Self::lock(&self.on_death).take();
        *Self::lock(&self.writer) = None;
        self.kill();
    }
}

/// How much of one core a silent worker must use, over the last `hang_timeout`, to count as
/// working rather than hung (low, so a worker starved by a busy machine still counts): one
/// `llama_decode` of a long prompt batch on a slow CPU (a 70B on two cores takes minutes for 512
/// tokens) reports nothing until it returns, but computes; a deadlock or a blocked read computes
/// nothing.
const BUSY_SHARE: f64 = 0.05;

/// A silent worker that keeps computing is still killed after this many hang timeouts (an
/// endless loop computes too).
const BUSY_LIMIT: u32 = 10;

/// The CPU time the process `pid` has used, all its threads (`utime` + `stime` of
/// `/proc/PID/stat`, in clock ticks: `proc(5)`); `None` when it cannot be read.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name: state is field 3, utime and stime fields 14 and 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Kills a worker that has work but shows no progress for `timeout`: one request silent for
/// that long while others progress (a stuck answer), or the whole worker silent and not
/// computing (at least [`BUSY_SHARE`] of a core over the last `timeout`); a silent worker that
/// computes is given `busy_limit` × `timeout`. A worker that sends nothing at all, not even its
/// heartbeat, for `timeout` (at least 5 heartbeats) is killed too, idle or not: a stopped or
/// frozen worker is found before the next request waits on it.
fn watch(conn: std::sync::Weak<Conn>, timeout: Duration, busy_limit: u32) {
    // Clock ticks per second: 100 on every Linux ABI r1d is built for (`USER_HZ`).
    const TICKS_PER_S: f64 = 100.0;
    let mut samples: std::collections::VecDeque<(Instant, u64)> = Default::default();
    // Every 250 ms while calls wait; once a heartbeat while none does (an idle r1d should not
    // wake four times a second for nothing), but at least four times per `timeout`, so a call
    // that has just begun has CPU samples over most of `timeout` before it can be judged.
    let mut period = BEAT_INTERVAL;
    loop {
        std::thread::sleep(period.min(timeout / 4));
        let Some(conn) = conn.upgrade() else { return };
        if Conn::lock(&conn.dead).is_some() || conn.closing.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let unheard = Conn::lock(&conn.last_frame).elapsed();
        if unheard > timeout.max(BEAT_INTERVAL * 5) {
            *Conn::lock(&conn.killed_for) = Some(format!(
                "it sent nothing, not even its heartbeat, for {:.0} s (stopped or frozen; \
                 [plugins] hang_timeout_s)",
                unheard.as_secs_f64()
            ));
            conn.kill();
            return;
        }
        // CPU time is read only while requests wait (an idle worker costs no /proc reads).
        if Conn::lock(&conn.pending).is_empty() {
            samples.clear();
            period = BEAT_INTERVAL;
            continue;
        }
        period = Duration::from_millis(250);
        if let Some(ticks) = cpu_ticks(conn.pid) {
            samples.push_back((now, ticks));
        }
        while samples.len() > 1 && now.duration_since(samples[1].0) >= timeout {
            samples.pop_front();
        }
        // The longest any waiting call has gone without a reply, and the shortest (how long
        // the worker as a whole has been silent).
        let (longest, shortest) = {
            let pending = Conn::lock(&conn.pending);
            let ages = pending.values().map(|(_, at)| at.elapsed());
            (ages.clone().max(), ages.min())
        };
        let Some(quiet) = longest.filter(|q| *q > timeout) else {
            continue;
        };
        let computing = match (samples.front(), samples.back()) {
            (Some(&(t0, c0)), Some(&(t1, c1))) if t1.duration_since(t0) >= timeout / 2 => {
                let used = c1.saturating_sub(c0) as f64 / TICKS_PER_S;
                used >= BUSY_SHARE * t1.duration_since(t0).as_secs_f64()
            }
            _ => false,
        };
        let all_silent = shortest.is_some_and(|s| s > timeout);
        if all_silent && computing && quiet < timeout * busy_limit {
            continue;
        }
        let why = if all_silent && computing {
            format!(
                "it made no progress for {:.0} s while computing ({busy_limit} × \
                 [plugins] hang_timeout_s: an endless loop inside the plugin, or one prompt \
                 batch slower than that — raise hang_timeout_s for such a model)",
                quiet.as_secs_f64()
            )
        } else {
            format!(
                "a request to it made no progress for {:.0} s (a hang inside the plugin; \
                 [plugins] hang_timeout_s)",
                quiet.as_secs_f64()
            )
        };
        *Conn::lock(&conn.killed_for) = Some(why);
        conn.kill();
        return;
    }
}

/// The conventional name of a Linux signal number.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL: illegal instruction",
        6 => "SIGABRT: aborted",
        7 => "SIGBUS: bus error, e.g. a mapped model file that was truncated",
        8 => "SIGFPE: arithmetic error",
        9 => "SIGKILL: killed, e.g. by the OOM killer",
        11 => "SIGSEGV: invalid memory reference",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// A model resident in a worker process.
struct WorkerModel {
    backend: String,
    info: ModelInfo,
    conn: Arc<Conn>,
}

impl LoadedModel for WorkerModel {
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
        let (id, replies) = self.conn.submit()?;
        self.conn.send(&ToWorker::Tokenize {
            id,
            text: text.to_owned(),
            add_special,
            parse_special,
        })?;
        match replies.recv() {
            Ok(Reply::Tokens(tokens)) => Ok(tokens),
            Ok(Reply::Failed(status, message)) => Err(failed(&self.backend, status, message)),
            Ok(other) => Err(self.conn.protocol_error(&other)),
            Err(_) => Err(self.conn.died()),
        }
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(&[u8], i32) -> bool,
    ) -> Result<GenerateResult, BackendError> {
        let (id, replies) = self.conn.submit()?;
        self.conn.send(&ToWorker::Generate {
            id,
            request: request.clone(),
        })?;
        let mut cancelled = false;
        loop {
            match replies.recv() {
                Ok(Reply::Piece(bytes, token)) => {
                    if !cancelled && !on_token(&bytes, token) {
                        cancelled = true;
                        self.conn.send(&ToWorker::Cancel { id })?;
                    }
                }
                Ok(Reply::Done(result)) => return Ok(*result),
                Ok(Reply::Failed(status, message)) => {
                    return Err(failed(&self.backend, status, message))
                }
                Ok(other) => return Err(self.conn.protocol_error(&other)),
                Err(_) => return Err(self.conn.died()),
            }
        }
    }

    fn failure(&self) -> Option<String> {
        if self.conn.closing.load(Ordering::SeqCst) {
            return None;
        }
        Conn::lock(&self.conn.dead).clone()
    }

    fn on_failure(&self, hook: Box<dyn FnOnce(String) + Send>) {
        let mut slot = Conn::lock(&self.conn.on_death);
        match self.failure() {
            // Died before the hook was set: call it now.
            Some(reason) => {
                drop(slot);
                hook(reason);
            }
            None => *slot = Some(hook),
        }
    }

    fn worker_pid(&self) -> Option<u32> {
        Some(self.conn.pid)
    }

    fn abort(&self) {
        self.conn.close();
    }
}

impl Drop for WorkerModel {
    fn drop(&mut self) {
        // Unloading is ending the process: the kernel frees its memory (and a GPU driver its
        // allocations) at once, and no plugin code runs for it.
        self.conn.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_clean_end_is_none() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &ToWorker::Cancel { id: 7 }).unwrap();
        write_frame(
            &mut buf,
            &FromWorker::Piece {
                id: 7,
                bytes: vec![0xe4, 0xbd],
                token: 42,
            },
        )
        .unwrap();
        let mut r = &buf[..];
        assert!(matches!(
            read_frame::<ToWorker>(&mut r).unwrap(),
            Some(ToWorker::Cancel { id: 7 })
        ));
        match read_frame::<FromWorker>(&mut r).unwrap() {
            Some(FromWorker::Piece { id, bytes, token }) => {
                assert_eq!((id, bytes, token), (7, vec![0xe4, 0xbd], 42))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(read_frame::<FromWorker>(&mut r).unwrap().is_none());
    }

    #[test]
    fn a_cut_or_oversized_frame_is_an_error_not_a_message() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &ToWorker::Cancel { id: 1 }).unwrap();
        let cut = &buf[..buf.len() - 1];
        assert!(read_frame::<ToWorker>(&mut &cut[..]).is_err());
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        let err = read_frame::<ToWorker>(&mut &huge[..]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let garbage = [2u8, 0, 0, 0, b'{', b'x'];
        let err = read_frame::<ToWorker>(&mut &garbage[..]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
