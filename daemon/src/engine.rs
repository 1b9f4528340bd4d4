//! The engine: owns the resident model on one thread, runs requests one at a time from a bounded
//! queue, streams their pieces back, and publishes its state.
//!
//! **Architecture invariants**
//! - One thread (`r1d-engine`) owns the model; requests carry their own reply channel
//!   ([`ChatJob::reply`]). No lock is held across an `.await`.
//! - A request whose reply channel closes (the client went away) stops its generation at the next
//!   token: the token callback returns false.
//! - Knows neither HTTP nor D-Bus: it speaks [`ChatEvent`]s.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use r1_plugin_abi::json::GenerateRequest;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::{BackendError, LoadedModel, PluginHost};
use crate::chat::{self, Assembler, Message, Piece, ReasoningFormat};

mod conversation;
mod types;
pub use types::{
    FinishReason, GenerateResult, LoadParams, ModelInfo, ModelMemory, SpecialToken, TokenLogprob,
};

/// Why a request could not be served.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EngineError {
    /// No model is resident; `reason` says why (none configured, or the load failed and how).
    #[error("no model is loaded: {reason}")]
    NoModel {
        /// Why.
        reason: String,
    },
    /// The prompt does not fit the context length.
    #[error("the prompt is {prompt_tokens} tokens, but the model's context length is {context_length} tokens")]
    ContextExceeded {
        /// Tokens in the rendered prompt.
        prompt_tokens: u32,
        /// The context length of the resident model.
        context_length: u32,
    },
    /// The request is malformed (e.g. the template refused the conversation).
    #[error("{0}")]
    InvalidRequest(String),
    /// The queue is full.
    #[error("r1d is busy: its queue of {0} waiting requests is full; retry later")]
    Busy(usize),
    /// The backend failed while generating (including a caught plugin panic).
    #[error("{0}")]
    Backend(String),
    /// The upstream server of a `[[remote]]` failed (HTTP 502) or did not answer in time
    /// (`timeout`, HTTP 504); `message` names the remote and the cause.
    #[error("{message}")]
    Upstream {
        /// No answer within one of the remote's time limits.
        timeout: bool,
        /// The remote (name and URL) and the cause.
        message: String,
    },
    /// The engine is shutting down.
    #[error("r1d is shutting down")]
    ShuttingDown,
    /// A model failed to load. `reason` names the file and the error, and says which model is
    /// served instead when r1d went back to the previous one.
    #[error("{reason}")]
    LoadFailed {
        /// Why, and what is served now.
        reason: String,
    },
    /// The answer was ended because the model is being replaced at once (memory is
    /// disappearing); `reason` says why. Retrying after the swap works.
    #[error("the answer was stopped because r1d is replacing the model: {reason}")]
    Preempted {
        /// Why the swap could not wait.
        reason: String,
    },
    /// The request waited longer than the deadline for a model that is being loaded or swapped.
    #[error("the model is being {what}; retry in {retry_after_s} s")]
    Unavailable {
        /// `loaded` or `swapped`.
        what: &'static str,
        /// Seconds after which a retry is likely to be served (the `Retry-After` header).
        retry_after_s: u64,
    },
}

/// Sampling and limits of one request as the client set them; `None` takes the model's default
/// (see [`chat::SamplingDefaults`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    /// Most tokens to generate; `None` = the configured default. Always capped by what is left of
    /// the context.
    pub max_tokens: Option<u32>,
    /// Temperature; 0 = greedy.
    pub temperature: Option<f32>,
    /// Nucleus threshold.
    pub top_p: Option<f32>,
    /// Top-k (0 = off).
    pub top_k: Option<i32>,
    /// Min-p (0 = off).
    pub min_p: Option<f32>,
    /// Seed; `None` = random.
    pub seed: Option<u32>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// OpenAI's presence penalty (−2 to 2); `None` = off.
    pub presence_penalty: Option<f32>,
    /// OpenAI's frequency penalty (−2 to 2); `None` = off.
    pub frequency_penalty: Option<f32>,
    /// Ollama's repeat penalty (1 = off); `None` = off.
    pub repeat_penalty: Option<f32>,
    /// Ollama's `repeat_last_n`: how many last tokens the penalties see (0 = none, −1 = the
    /// context); `None` = 64, Ollama's default.
    pub repeat_last_n: Option<i32>,
    /// Bias added to token ids' logits (OpenAI's `logit_bias`, −100 to 100).
    pub logit_bias: Vec<(i32, f32)>,
    /// Structured output: a JSON Schema (as JSON text) the answer must be valid against; for a
    /// model that reasons, the reasoning stays free and the answer after `</think>` is
    /// constrained. `None` = free text.
    pub json_schema: Option<String>,
    /// Literal text before and after the constrained JSON (a forced tool call's
    /// `<tool_call>` block); `None` = the JSON alone.
    pub json_wrap: Option<(String, String)>,
    /// Log probabilities: `Some(n)` returns each generated token's log probability and the `n`
    /// most likely tokens at its position (OpenAI's `top_logprobs`, 0–20) as
    /// [`ChatEvent::Logprobs`]; `None` = none. A backend that cannot is refused
    /// (`EngineError::InvalidRequest` naming `logprobs`).
    pub logprobs: Option<u32>,
    /// A context length for this request below the loaded one (Ollama's `num_ctx`): the prompt
    /// and the answer together stay within it (a longer prompt is refused, generation ends with
    /// `Length` there). `None` = the loaded model's. Above the loaded context it is refused
    /// (`EngineError::InvalidRequest` naming `num_ctx`): the context is set at load time for
    /// every client of the shared model.
    pub context_limit: Option<u32>,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<Message>),
    /// A conversation with OpenAI's tool definitions, given to the template as `tools`; a model
    /// whose template has no tool support refuses it (`EngineError::InvalidRequest`).
    ChatWithTools {
        /// The conversation.
        messages: Vec<Message>,
        /// The `tools` array as the client sent it.
        tools: serde_json::Value,
    },
    /// Raw text, tokenized as it is (BOS added when the tokenizer adds one); no template.
    Raw(String),
    /// Token ids given as they are (OpenAI's `prompt: [1, 2, 3]`): no template, no BOS added;
    /// an id outside the vocabulary is refused (`EngineError::InvalidRequest`).
    Tokens(Vec<i32>),
    /// Ollama's `context`: the token ids of an earlier prompt and answer, followed by `then`
    /// rendered and tokenized as usual but without a second BOS. Ids are checked as for `Tokens`.
    After {
        /// The earlier prompt's and answer's tokens.
        context: Vec<i32>,
        /// What follows them.
        then: Box<PromptInput>,
    },
}

/// What a request receives, in order: `Started`, any number of `Piece`, then `Done` or `Failed`
/// (or only `Failed`).
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// The prompt was accepted.
    Started {
        /// Name of the model answering.
        model: String,
        /// Tokens in the rendered prompt.
        prompt_tokens: u32,
    },
    /// Text of the answer or the reasoning.
    Piece(Piece),
    /// Log probabilities of the next generated tokens, in order (only when asked for with
    /// [`Sampling::logprobs`]). Sent before the pieces that hold their text: an entry comes once
    /// its token's bytes are settled (emitted, or consumed as a reasoning tag), so the entries
    /// are those of the tokens the client receives, reasoning included, up to a stop string:
    /// the tokens with text before the stop string are sent (one in which the stop string starts
    /// after some of its text too), the tokens from the one the stop string starts with are not.
    Logprobs(Vec<TokenLogprob>),
    /// The end.
    Done(Finished),
    /// The request failed.
    Failed(EngineError),
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// `Stop` (end of generation or a stop string) or `Length`.
    pub finish_reason: FinishReason,
    /// Usage and timings from the backend.
    pub result: GenerateResult,
    /// The token ids of the prompt and the answer as generated (stop strings included: what the
    /// model's KV cache holds), Ollama's `context` of `/api/generate`.
    pub tokens: Vec<i32>,
}

/// One chat request.
#[derive(Debug, Clone)]
pub struct ChatJob {
    /// The conversation or raw prompt.
    pub input: PromptInput,
    /// Sampling.
    pub sampling: Sampling,
    /// How reasoning comes back.
    pub reasoning_format: ReasoningFormat,
    /// Where the events go; closing it cancels the request.
    pub reply: mpsc::Sender<ChatEvent>,
    /// When the request was admitted (time to first token counts from here).
    pub admitted: Instant,
    /// Where the transport wants the request's counts for its log line (`telemetry`).
    pub stats: Option<crate::telemetry::StatsSlot>,
}

/// Engine states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineState {
    /// Before the engine thread has started.
    Starting,
    /// Loading a model.
    Loading,
    /// Serving.
    Ready,
    /// Replacing the resident model with another (requests wait in the queue).
    Swapping,
    /// No model resident.
    NoModel,
}

/// A published view of the engine.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Current state.
    pub state: EngineState,
    /// The resident model's description and its backend.
    pub model: Option<(ModelInfo, String)>,
    /// The model being loaded.
    pub loading: Option<PathBuf>,
    /// Load progress 0..=1.
    pub progress: Option<f32>,
    /// Why no model is resident.
    pub error: Option<String>,
    /// When the model became resident (Unix seconds).
    pub loaded_at: Option<u64>,
    /// What the resident model was loaded with (the supervisor compares it with what it wants).
    pub spec: Option<LoadSpec>,
    /// The model being replaced during a swap (its name).
    pub swapping_from: Option<String>,
    /// The last load that failed while another model went on serving (cleared by the next
    /// successful load).
    pub last_load_error: Option<String>,
    /// The last load that failed and its file's modification time then (cleared by the next
    /// successful load): the supervisor does not retry it until the file changes.
    pub last_failed: Option<(LoadSpec, Option<std::time::SystemTime>)>,
    /// A load waiting in the queue behind running answers (its path), until the engine takes it.
    pub queued_load: Option<PathBuf>,
    /// The last time the model's worker process died or was killed as hung: how (signal, exit
    /// status, last log line), when, and how many times in a row. Kept after the restart.
    pub last_crash: Option<String>,
}

/// What to load.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    /// Load parameters (path, context, GPU layers, …).
    pub params: LoadParams,
    /// Backend name, or `None` for the best for the format.
    pub backend: Option<String>,
}

/// What loading `spec` would allocate, by its backend's own accounting (the plugin ABI's
/// `estimate`: for llama.cpp a no-allocation dry run), without loading the weights. Blocking
/// (the backend reads the file's header). `Ok(None)` when the backend has no estimate.
///
/// # Errors
/// [`BackendError`] when no backend reads the file or the backend fails to estimate it.
pub fn estimate(
    host: &PluginHost,
    spec: &LoadSpec,
) -> Result<Option<crate::planner::BackendEstimate>, BackendError> {
    let backend = host.select(
        std::path::Path::new(&spec.params.path),
        spec.backend.as_deref(),
    )?;
    let params: r1_plugin_abi::json::LoadParams = (&spec.params).into();
    Ok(backend
        .estimate(&params)?
        .map(|e| types::backend_estimate(backend.name(), &e)))
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A cap on `max_tokens` for requests that set none (`[model] default_max_tokens`); `None`:
    /// an answer may run to the end of the context (OpenAI's behaviour). R1 reasons for hundreds
    /// to thousands of tokens before it answers, and an answer cut inside its reasoning has no
    /// content at all.
    pub default_max_tokens: Option<u32>,
    /// Requests that may wait behind the running ones.
    pub queue_depth: usize,
    /// Answers generated at once when set explicitly (`--parallel`, `[server] parallel`): asked
    /// of the backend at every load. `None`: what the load asks for (the planner's count of
    /// sequences that fit), else [`crate::config::DEFAULT_PARALLEL`]. The resident model's
    /// `parallel_sequences` (what its backend runs) is how many answers run side by side.
    pub parallel: Option<u32>,
    /// How long the engine waits for a client that stopped reading (its reply buffer is full)
    /// before it cancels that client's request (`[server] stall_timeout_s`, default 30 s).
    pub stall_timeout: std::time::Duration,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            default_max_tokens: None,
            queue_depth: crate::config::DEFAULT_QUEUE_DEPTH,
            parallel: Some(1),
            stall_timeout: crate::config::DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// Why an event could not be handed to a request's reply channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undelivered {
    /// The receiver is gone (the client disconnected).
    Closed,
    /// The buffer stayed full for the stall timeout (the client stopped reading).
    Stalled,
    /// r1d is shutting down or the answer was preempted while waiting.
    Stopped,
}

/// Hands `event` to a request's own bounded reply buffer without ever blocking the engine on a
/// client for long: while the buffer is full it waits in short steps (1–20 ms), beating the
/// heartbeat (the engine is alive, it is waiting on a client), and gives up after `stall` —
/// the caller then cancels that request. Shutdown and preemption end the wait at once.
fn deliver(
    shared: &Shared,
    reply: &mpsc::Sender<ChatEvent>,
    event: ChatEvent,
    stall: std::time::Duration,
) -> Result<(), Undelivered> {
    let mut event = match reply.try_send(event) {
        Ok(()) => return Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(Undelivered::Closed),
        Err(mpsc::error::TrySendError::Full(event)) => event,
    };
    let since = Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        shared.beat();
        if shared.shutting_down.load(Ordering::SeqCst) || shared.preempting.load(Ordering::SeqCst) {
            return Err(Undelivered::Stopped);
        }
        if since.elapsed() >= stall {
            return Err(Undelivered::Stalled);
        }
        std::thread::sleep(pause.min(stall.saturating_sub(since.elapsed())));
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
        event = match reply.try_send(event) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Undelivered::Closed),
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
    }
}

struct Shared {
    state: watch::Sender<Snapshot>,
    /// Every published snapshot, in order (the watch channel keeps only the latest; event
    /// streams must not miss a short `Swapping`).
    changes: tokio::sync::broadcast::Sender<Snapshot>,
    /// Milliseconds since `started` at the engine thread's last sign of progress (a job taken,
    /// a token, a prompt batch, a load progress report).
    heartbeat_ms: AtomicU64,
    shutting_down: AtomicBool,
    /// Set by [`Engine::swap_now`]: the running answer ends with [`EngineError::Preempted`].
    preempt: std::sync::Mutex<Option<String>>,
    preempting: AtomicBool,
    /// The next load of the resident spec loads it again instead of keeping it
    /// ([`Engine::load_again`]).
    load_again: AtomicBool,
    /// Milliseconds since `started` when the last request ended (or started).
    last_request_ms: AtomicU64,
    /// How long a request waits for a model being loaded or swapped (milliseconds).
    queue_deadline_ms: AtomicU64,
    /// Counts the loads asked for; a load whose generation is below it has been superseded by a
    /// newer one and stops (through the plugin's progress callback) or is skipped.
    load_generation: AtomicU64,
    active: AtomicU64,
    /// Answers that ended well: a crash after one of them starts a new count of crashes in a row.
    answers_ok: AtomicU64,
    /// Requests that ended with an error (a `Failed` event) since start.
    failed: AtomicU64,
    /// Requests generating now (the rest of `active` waits in the queue).
    running: AtomicU64,
    served: AtomicU64,
    started: Instant,
    /// The engine thread, joined by [`Engine::stop`].
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The resident model, for [`Engine::shutdown`] to end its worker process at once.
    resident: std::sync::Mutex<Option<std::sync::Weak<dyn LoadedModel>>>,
}

enum Job {
    Chat(ChatJob),
    /// A load, its generation (see [`Shared::load_generation`]) and where the outcome goes.
    Load(LoadSpec, u64, oneshot::Sender<Result<(), EngineError>>),
    /// An unload and why (`None`: on request).
    Unload(Option<String>, oneshot::Sender<()>),
    Ping(oneshot::Sender<()>),
    /// The resident model's worker died (sent by its failure hook): restart it.
    Recover,
    /// A chat whose model worker was found dead by its first call (tokenizing the prompt: it was
    /// dispatched onto a worker that was already dying): served again, once, by the restarted
    /// model.
    Retry(ChatJob),
}

/// Handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    queue_depth: usize,
}

/// Decrements the active-request count when a request ends, however it ends, and counts it as
/// served unless its answer did ([`Answer::conclude`]) or it went back to the queue.
struct ActiveGuard(Arc<Shared>, Arc<AtomicBool>);

impl Shared {
    /// Changes the published state and sends the new snapshot to [`Engine::changes`].
    fn publish(&self, f: impl FnOnce(&mut Snapshot)) {
        self.state.send_modify(f);
        let _ = self.changes.send(self.state.borrow().clone());
    }

    fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// The reason of a pending forced swap, when one is.
    fn preempted(&self) -> Option<String> {
        if !self.preempting.load(Ordering::SeqCst) {
            return None;
        }
        let reason = self.preempt.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            reason
                .clone()
                .unwrap_or_else(|| "memory is running out".into()),
        )
    }
}

/// The answers running at once, counted so the engine thread can wait for a free one (admission)
/// or for none (before a load, an unload or the end).
#[derive(Default)]
struct Slots {
    running: std::sync::Mutex<u32>,
    freed: std::sync::Condvar,
}

impl Slots {
    /// Waits until fewer than `limit` answers run, then counts one more.
    fn acquire(&self, limit: u32) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= limit.max(1) {
            running = self.freed.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
    }

    /// Counts one answer less.
    fn release(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        *running = running.saturating_sub(1);
        self.freed.notify_all();
    }

    /// Waits until no answer runs.
    fn wait_idle(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running > 0 {
            running = self.freed.wait(running).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Releases an answer's slot when its thread ends, however it ends.
struct SlotGuard(Arc<Slots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let ms = self.0.started.elapsed().as_millis() as u64;
        self.0.last_request_ms.store(ms, Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        if !self.1.swap(true, Ordering::SeqCst) {
            self.0.served.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Engine {
    /// Starts the engine thread. With `load`, it loads that model first (requests that arrive
    /// meanwhile wait in the queue); `initial_error` is reported as the reason for having no model
    /// when there is nothing to load (e.g. an invalid config).
    pub fn start(
        host: Arc<PluginHost>,
        load: Option<LoadSpec>,
        initial_error: Option<String>,
        config: EngineConfig,
    ) -> Engine {
        let (state, _) = watch::channel(Snapshot {
            state: EngineState::Starting,
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
        });
        let (changes, _) = tokio::sync::broadcast::channel(256);
        let shared = Arc::new(Shared {
            state,
            changes,
            heartbeat_ms: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            preempt: std::sync::Mutex::new(None),
            preempting: AtomicBool::new(false),
            load_again: AtomicBool::new(false),
            last_request_ms: AtomicU64::new(0),
            queue_deadline_ms: AtomicU64::new(120_000),
            load_generation: AtomicU64::new(0),
            active: AtomicU64::new(0),
            answers_ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            running: AtomicU64::new(0),
            served: AtomicU64::new(0),
            started: Instant::now(),
            thread: std::sync::Mutex::new(None),
            resident: std::sync::Mutex::new(None),
        });
        // The queue holds the waiting requests; the running one has been taken off it.
        let (jobs, rx) = mpsc::channel(config.queue_depth.max(1));
        let worker = Worker {
            jobs: jobs.downgrade(),
            previous: None,
            crashes: None,
            loaded_file: None,
            rejected_file: None,
            shared: shared.clone(),
            host,
            model: None,
            slots: Arc::default(),
            spec: None,
            fallback: None,
            generation: 0,
            no_model_reason: initial_error.unwrap_or_else(|| {
                "no model is configured; set [model] path in the config or start r1d with --model PATH".into()
            }),
            config: config.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("r1d-engine".into())
            .spawn(move || worker.run(rx, load))
            .expect("failed to spawn the engine thread");
        *shared.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Engine {
            jobs,
            shared,
            queue_depth: config.queue_depth,
        }
    }

    /// Begins shutdown: the running generation stops at its next token and ends with
    /// [`EngineError::ShuttingDown`] (an error event, not a silent cut); queued and new requests
    /// get the same error.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        // A worker process is ended now: its answers fail at once (with `ShuttingDown`), even
        // when the plugin is stuck and would never report again.
        let resident = self
            .shared
            .resident
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(std::sync::Weak::upgrade);
        if let Some(model) = resident {
            model.abort();
        }
    }

    /// Shuts down (see [`Engine::shutdown`]) and waits up to `timeout` for the engine thread to
    /// end: it leaves the plugin at the running generation's next token (or load's next progress
    /// report), answers what is queued with [`EngineError::ShuttingDown`], unloads the model and
    /// returns. Call this before `main` returns: the backend's C++ static destructors run at
    /// process exit and must not run while the engine thread is inside the backend. Returns
    /// whether the thread ended (true as well when it had ended before).
    pub async fn stop(&self, timeout: std::time::Duration) -> bool {
        self.shutdown();
        // Wakes an idle engine thread; a full queue means it is busy and sees the flag after the
        // job it runs.
        let (tx, _rx) = oneshot::channel();
        let _ = self.jobs.try_send(Job::Ping(tx));
        let thread = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(thread) = thread else {
            return true;
        };
        let join = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout(timeout, join).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(_))) => {
                tracing::error!("the engine thread panicked");
                true
            }
            Ok(Err(_)) | Err(_) => false,
        }
    }

    /// Replaces the resident model: requests queued before this call finish on the old model,
    /// requests that come after wait in the queue. The old model is unloaded first (its memory
    /// is needed), then `spec` is loaded (state [`EngineState::Swapping`], or `Loading` when
    /// nothing was resident). When `spec` fails to load and a model was resident, that model is
    /// loaded again, so r1d does not end up serving nothing; the error says so and
    /// [`Snapshot::last_load_error`] keeps it.
    ///
    /// # Errors
    /// [`EngineError::LoadFailed`] naming the file, the error and what is served now;
    /// [`EngineError::ShuttingDown`].
    pub async fn load(&self, spec: LoadSpec) -> Result<(), EngineError> {
        let outcome = self.start_load(spec).await?;
        outcome.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// As [`Engine::load`], but `spec` is loaded again even when it is the resident spec: for
    /// what the spec does not show, such as the llama.cpp RPC workers that answer now.
    ///
    /// # Errors
    /// As [`Engine::load`].
    pub async fn load_again(&self, spec: LoadSpec) -> Result<(), EngineError> {
        self.shared.load_again.store(true, Ordering::SeqCst);
        self.load(spec).await
    }

    /// Queues the load of [`Engine::load`] and returns where its outcome will arrive, so the
    /// caller need not hold anything while it runs. A load still running or queued from before
    /// is superseded: it stops at its next progress report (or is skipped) and ends with
    /// [`EngineError::LoadFailed`] saying so.
    ///
    /// # Errors
    /// [`EngineError::ShuttingDown`].
    pub async fn start_load(
        &self,
        spec: LoadSpec,
    ) -> Result<oneshot::Receiver<Result<(), EngineError>>, EngineError> {
        let generation = self.shared.load_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let path = PathBuf::from(&spec.params.path);
        self.shared.publish(|s| s.queued_load = Some(path));
        let (tx, rx) = oneshot::channel();
        self.send(Job::Load(spec, generation, tx)).await?;
        Ok(rx)
    }

    /// Makes the next swap a forced one (see [`Engine::swap_now`]): the running answer and
    /// those queued before the next load end with [`EngineError::Preempted`] carrying `reason`.
    pub fn preempt(&self, reason: &str) {
        *self
            .shared
            .preempt
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
        self.shared.preempting.store(true, Ordering::SeqCst);
    }

    /// Like [`Engine::load`], but the swap cannot wait (memory is disappearing): the running
    /// answer and those queued before the swap end at once with [`EngineError::Preempted`]
    /// carrying `reason` (an error event, never a silent cut).
    ///
    /// # Errors
    /// As [`Engine::load`].
    pub async fn swap_now(&self, spec: LoadSpec, reason: &str) -> Result<(), EngineError> {
        self.preempt(reason);
        self.load(spec).await
    }

    /// Sets how long a request waits for a model that is being loaded or swapped before it gets
    /// [`EngineError::Unavailable`] (`[watch] queue_deadline_s`).
    pub fn set_queue_deadline(&self, deadline: std::time::Duration) {
        let ms = deadline.as_millis().min(u64::MAX as u128) as u64;
        self.shared.queue_deadline_ms.store(ms, Ordering::SeqCst);
    }

    /// See [`Engine::set_queue_deadline`].
    pub fn queue_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.shared.queue_deadline_ms.load(Ordering::SeqCst))
    }

    /// How long no request has been queued or running (zero while one is).
    pub fn idle_for(&self) -> std::time::Duration {
        if self.active_requests() > 0 {
            return std::time::Duration::ZERO;
        }
        let now = self.shared.started.elapsed().as_millis() as u64;
        let last = self.shared.last_request_ms.load(Ordering::SeqCst);
        std::time::Duration::from_millis(now.saturating_sub(last))
    }

    /// Unloads the resident model (after the requests queued before this call).
    ///
    /// # Errors
    /// [`EngineError::ShuttingDown`].
    pub async fn unload(&self) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Unload(None, tx)).await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// Unloads the resident model because it cannot answer any more (a `[[remote]]` that fails
    /// its health checks); `reason` becomes the `no-model` reason that `/health`, `/r1/status`
    /// and the sd-notify status show, and that chat requests are refused with (503).
    ///
    /// # Errors
    /// [`EngineError::ShuttingDown`].
    pub async fn unload_because(&self, reason: String) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Unload(Some(reason), tx)).await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// Whether the engine thread is making progress: when requests are running, that it showed a
    /// sign of life (a token, a prompt batch, load progress) within `within`; when idle, that it
    /// answers a ping within `within`. For the systemd watchdog.
    pub async fn is_alive(&self, within: std::time::Duration) -> bool {
        if self.active_requests() > 0
            || matches!(
                self.snapshot().state,
                EngineState::Loading | EngineState::Swapping
            )
        {
            let now = self.shared.started.elapsed().as_millis() as u64;
            let last = self.shared.heartbeat_ms.load(Ordering::Relaxed);
            return now.saturating_sub(last) <= within.as_millis() as u64;
        }
        let (tx, rx) = oneshot::channel();
        if self.jobs.try_send(Job::Ping(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, rx).await, Ok(Ok(())))
    }

    async fn send(&self, job: Job) -> Result<(), EngineError> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| EngineError::ShuttingDown)
    }

    /// Waits up to `timeout` while the engine starts or loads a model with none resident (the
    /// first load, e.g. after socket activation), so a listing made meanwhile shows the model
    /// that is coming. Returns at once otherwise.
    pub async fn settled(&self, timeout: std::time::Duration) {
        let mut rx = self.subscribe();
        let _ = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| !matches!(s.state, EngineState::Starting | EngineState::Loading)),
        )
        .await;
    }

    /// The process id of the worker the resident model runs in (`[plugins] isolation =
    /// "process"`); `None` in process or without a model.
    pub fn worker_pid(&self) -> Option<u32> {
        self.shared
            .resident
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(std::sync::Weak::upgrade)
            .and_then(|m| m.worker_pid())
    }

    /// The current state.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.state.borrow().clone()
    }

    /// A receiver that sees the latest state (changes in between may be skipped).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.shared.state.subscribe()
    }

    /// A receiver of every published snapshot, in order (up to 256 behind).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Snapshot> {
        self.shared.changes.subscribe()
    }

    /// Requests queued or running.
    pub fn active_requests(&self) -> u64 {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Requests generating now (the others of [`Engine::active_requests`] wait in the queue).
    pub fn running_requests(&self) -> u64 {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// Answers the resident model generates at once (its backend's `parallel_sequences`); 0 with
    /// no model resident.
    pub fn parallel(&self) -> u32 {
        match &self.shared.state.borrow().model {
            Some((info, _)) => info.parallel_sequences.max(1),
            None => 0,
        }
    }

    /// Requests finished since start, whether answered or failed.
    pub fn requests_served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Of [`Engine::requests_served`], those that ended with an error (refused after admission
    /// — a prompt over the context, say —, a backend failure, a shutdown).
    pub fn requests_failed(&self) -> u64 {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Requests admitted but not generating yet: waiting for a free sequence or for a model.
    pub fn queued(&self) -> usize {
        self.active_requests()
            .saturating_sub(self.running_requests()) as usize
    }

    /// Seconds since the engine started.
    pub fn uptime_s(&self) -> f64 {
        self.shared.started.elapsed().as_secs_f64()
    }

    /// Queues a chat request and returns the receiver of its events. The first event is
    /// `Started` or `Failed`. Dropping the receiver cancels the request.
    ///
    /// # Errors
    /// [`EngineError::Busy`] when the queue is full, [`EngineError::ShuttingDown`] after shutdown.
    pub fn chat(
        &self,
        input: PromptInput,
        sampling: Sampling,
        reasoning_format: ReasoningFormat,
    ) -> Result<mpsc::Receiver<ChatEvent>, EngineError> {
        let (reply, rx) = mpsc::channel(64);
        let job = ChatJob {
            input,
            sampling,
            reasoning_format,
            reply,
            admitted: Instant::now(),
            stats: crate::telemetry::current_request(),
        };
        // The queue holds what does not run yet: requests in the channel and the one the engine
        // thread holds while it waits for a free sequence.
        let queued = self
            .shared
            .active
            .load(Ordering::SeqCst)
            .saturating_sub(self.shared.running.load(Ordering::SeqCst));
        if queued >= self.queue_depth.max(1) as u64 {
            return Err(EngineError::Busy(self.queue_depth));
        }
        // Counted from admission; the worker's `ActiveGuard` decrements it when the job ends.
        self.shared.active.fetch_add(1, Ordering::SeqCst);
        let ms = self.shared.started.elapsed().as_millis() as u64;
        self.shared.last_request_ms.store(ms, Ordering::SeqCst);
        self.jobs.try_send(Job::Chat(job)).map_err(|e| {
            self.shared.active.fetch_sub(1, Ordering::SeqCst);
            match e {
                mpsc::error::TrySendError::Full(_) => EngineError::Busy(self.queue_depth),
                mpsc::error::TrySendError::Closed(_) => EngineError::ShuttingDown,
            }
        })?;
        Ok(rx)
    }
}

struct Worker {
    /// The engine's own queue, for the failure hook of a model in a worker process.
    jobs: mpsc::WeakSender<Job>,
    /// What served before the resident model (the choice to go back to when the resident one
    /// keeps crashing).
    previous: Option<LoadSpec>,
    /// The resident model's crashes in a row.
    crashes: Option<Crashes>,
    /// The resident model's file as it was when loaded (see [`FileIdentity`]).
    loaded_file: Option<FileIdentity>,
    /// A file that replaced the resident model's and was refused (not checked again).
    rejected_file: Option<FileIdentity>,
    shared: Arc<Shared>,
    host: Arc<PluginHost>,
    /// The resident model; each running answer holds a clone, and the engine thread waits for
    /// them all to end ([`Slots::wait_idle`]) before it unloads, so the model is always released
    /// here.
    model: Option<Arc<dyn LoadedModel>>,
    slots: Arc<Slots>,
    /// What `model` was loaded with.
    spec: Option<LoadSpec>,
    /// The model that served before a load that was superseded (its spec and name): the one to
    /// go back to when the newer load fails too.
    fallback: Option<(LoadSpec, String)>,
    /// The generation of the load running now (0: the load at start).
    generation: u64,
    no_model_reason: String,
    config: EngineConfig,
}

/// Crashes of one model file in a row: counted while no answer ends well in between and the file
/// does not change.
struct Crashes {
    path: String,
    modified: Option<std::time::SystemTime>,
    answers_ok: u64,
    count: u32,
}

/// What tells a model file's contents apart on disk: device, inode, size and modification time.
/// A backend maps the file; written in place or truncated under the mapping it would read other
/// weights, or fault (SIGBUS), so a change is noticed before each answer.
#[derive(Debug, Clone, PartialEq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileIdentity {
    /// The identity of a regular file; `None` for a directory (an ONNX model) or a missing file.
    fn of(path: &str) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        Some(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// After this many crashes in a row a model is not loaded again until its file changes.
pub const MAX_CRASHES_IN_A_ROW: u32 = 3;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Job>, load: Option<LoadSpec>) {
        match load {
            Some(spec) => {
                let _ = self.load(spec);
            }
            None => self.publish_no_model(),
        }
        // Requests held back while a stopped load's successor is queued (see `Job::Chat`).
        // Each with whether it may still be retried once (see `Job::Retry`).
        let mut deferred: std::collections::VecDeque<(ChatJob, bool)> = Default::default();
        while let Some(job) = rx.blocking_recv() {
            self.shared.beat();
            // A worker that died is restarted before anything else is served on it.
            self.recover_if_failed();
            match job {
                Job::Recover => {}
                Job::Chat(_) | Job::Retry(_) => {
                    let (job, may_retry) = match job {
                        Job::Chat(job) => (job, true),
                        Job::Retry(job) => (job, false),
                        _ => unreachable!("matched above"),
                    };
                    if self.model.is_none()
                        && self.shared.load_generation.load(Ordering::SeqCst) > self.generation
                    {
                        // A load was stopped for a newer one queued behind this request: the
                        // request waits for that model instead of failing on none.
                        deferred.push_back((job, may_retry));
                        continue;
                    }
                    self.dispatch(job, may_retry);
                }
                Job::Load(spec, generation, reply) => {
                    // Answers in flight finish on the old model (or end at once, preempted).
                    self.slots.wait_idle();
                    // The jobs before this one have run: a pending preemption is over.
                    self.shared.preempting.store(false, Ordering::SeqCst);
                    if self.shared.load_generation.load(Ordering::SeqCst) > generation {
                        // A newer load is queued behind this one: skip it, touch nothing.
                        let _ = reply.send(Err(EngineError::LoadFailed {
                            reason: superseded(&spec),
                        }));
                        continue;
                    }
                    self.generation = generation;
                    let _ = reply.send(self.swap(spec));
                    if self.shared.load_generation.load(Ordering::SeqCst) <= self.generation {
                        for (job, may_retry) in deferred.drain(..) {
                            self.dispatch(job, may_retry);
                        }
                    }
                }
                Job::Unload(why, reply) => {
                    self.slots.wait_idle();
                    self.spec = None;
                    self.fallback = None;
                    if self.model.take().is_some() {
                        self.no_model_reason = why
                            .clone()
                            .unwrap_or_else(|| "the model was unloaded on request".into());
                        tracing::info!("model unloaded: {}", self.no_model_reason);
                    }
                    self.publish_no_model();
                    let _ = reply.send(());
                    for (job, may_retry) in deferred.drain(..) {
                        self.dispatch(job, may_retry);
                    }
                }
                Job::Ping(reply) => {
                    let _ = reply.send(());
                }
            }
            if self.shared.shutting_down.load(Ordering::SeqCst) {
                break;
            }
        }
        // Shutting down: nothing new gets in, and what waits is answered at once (each chat with
        // `ShuttingDown`, without touching the plugin).
        rx.close();
        while let Ok(job) = rx.try_recv() {
            match job {
                Job::Chat(job) => deferred.push_back((job, false)),
                Job::Retry(job) => deferred.push_back((job, false)),
                Job::Load(_, _, reply) => {
                    let _ = reply.send(Err(EngineError::ShuttingDown));
                }
                Job::Unload(_, reply) => {
                    let _ = reply.send(());
                }
                Job::Ping(reply) => {
                    let _ = reply.send(());
                }
                Job::Recover => {}
            }
        }
        for (job, _) in deferred.drain(..) {
            self.dispatch(job, false);
        }
        // Unload before the thread ends so the plugin releases its memory in order, and only
        // once no answer runs inside it.
        self.slots.wait_idle();
        self.model = None;
    }

    /// Replaces the resident model with `spec`; on failure loads the previous one again.
    fn swap(&mut self, spec: LoadSpec) -> Result<(), EngineError> {
        self.shared.publish(|s| s.queued_load = None);
        let again = self.shared.load_again.swap(false, Ordering::SeqCst);
        if self.model.is_some() && self.spec.as_ref() == Some(&spec) && !again {
            // Already resident with these settings: nothing to unload or load.
            return Ok(());
        }
        let mtime = |spec: &LoadSpec| {
            std::fs::metadata(&spec.params.path)
                .and_then(|m| m.modified())
                .ok()
        };
        // What can be known without loading (the file is there, a backend takes it, a GGUF is
        // complete) is checked before the serving model is unloaded.
        if let Some(model) = &self.model {
            if let Err(reason) = precheck(&self.host, &spec, self.parallel_for(&spec)) {
                let name = resident_name(model.info());
                let reason = format!("{reason}; {name} goes on serving (nothing was unloaded)");
                tracing::error!("{reason}");
                let modified = mtime(&spec);
                self.shared.publish(|s| {
                    s.last_load_error = Some(reason.clone());
                    s.last_failed = Some((spec.clone(), modified));
                });
                return Err(EngineError::LoadFailed { reason });
            }
        }
        let current = self
            .spec
            .take()
            .zip(self.model.as_ref().map(|m| resident_name(m.info())));
        let (previous, previous_name) = current
            .or_else(|| self.fallback.take())
            .map_or((None, None), |(spec, name)| (Some(spec), Some(name)));
        // Memory for the new model comes from the old one (no answer holds it: see `Job::Load`).
        self.model = None;
        self.shared.publish(|s| {
            if previous_name.is_some() {
                s.state = EngineState::Swapping;
            }
            s.loading = Some(PathBuf::from(&spec.params.path));
            s.model = None;
            s.spec = None;
            s.swapping_from = previous_name.clone();
        });
        let loaded = self.load(spec.clone());
        if loaded.is_err() && self.shared.load_generation.load(Ordering::SeqCst) > self.generation {
            // Stopped for a newer load, which comes next: no going back now, but remember
            // what served, in case the newer one fails too.
            self.fallback = previous.zip(previous_name);
            self.shared.publish(|s| s.swapping_from = None);
            return Err(EngineError::LoadFailed {
                reason: superseded(&spec),
            });
        }
        self.fallback = None;
        let result = match loaded {
            Ok(()) => {
                if previous.as_ref() != Some(&spec) {
                    self.previous = previous;
                }
                Ok(())
            }
            Err(reason) => match (previous, previous_name) {
                (Some(prev), Some(name)) if prev != spec => {
                    tracing::warn!("going back to {name}: {reason}");
                    match self.load(prev) {
                        Ok(()) => {
                            let reason = format!("{reason}; serving {name} again");
                            let modified = std::fs::metadata(&spec.params.path)
                                .and_then(|m| m.modified())
                                .ok();
                            self.shared.publish(|s| {
                                s.last_load_error = Some(reason.clone());
                                s.last_failed = Some((spec.clone(), modified));
                            });
                            Err(EngineError::LoadFailed { reason })
                        }
                        Err(again) => {
                            let modified = mtime(&spec);
                            self.shared
                                .publish(|s| s.last_failed = Some((spec.clone(), modified)));
                            Err(EngineError::LoadFailed {
                                reason: format!(
                                    "{reason}; loading {name} again failed too: {again}"
                                ),
                            })
                        }
                    }
                }
                _ => Err(EngineError::LoadFailed { reason }),
            },
        };
        self.shared.publish(|s| s.swapping_from = None);
        result
    }

    /// Restarts the resident model when its worker process died or was killed as hung: answers
    /// running on it have ended with the reason; requests wait in the queue meanwhile. After
    /// [`MAX_CRASHES_IN_A_ROW`] crashes of the same file (no answer ending well in between) it is
    /// not loaded again until the file changes: the model that served before it is loaded again,
    /// else none, with the reason.
    fn recover_if_failed(&mut self) {
        let Some(reason) = self.model.as_ref().and_then(|m| m.failure()) else {
            return;
        };
        // The answers on the dead worker end at once (their calls fail).
        self.slots.wait_idle();
        self.model = None;
        let Some(spec) = self.spec.take() else {
            return;
        };
        let modified = std::fs::metadata(&spec.params.path)
            .and_then(|m| m.modified())
            .ok();
        let answers_ok = self.shared.answers_ok.load(Ordering::SeqCst);
        let count = match &self.crashes {
            Some(c)
                if c.path == spec.params.path
                    && c.modified == modified
                    && c.answers_ok == answers_ok =>
            {
                c.count + 1
            }
            _ => 1,
        };
        self.crashes = Some(Crashes {
            path: spec.params.path.clone(),
            modified,
            answers_ok,
            count,
        });
        metrics::counter!(crate::telemetry::BACKEND_CRASHES).increment(1);
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let crash = format!("{reason} (at {at}; {count} in a row)");
        self.shared.publish(|s| s.last_crash = Some(crash.clone()));
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            self.no_model_reason = reason;
            self.publish_no_model();
            return;
        }
        if count >= MAX_CRASHES_IN_A_ROW {
            let why = format!(
                "{reason}; its worker died {count} times in a row, so r1d does not load {} again \
                 until the file changes",
                spec.params.path
            );
            tracing::error!("{why}");
            let failed = Some((spec.clone(), modified));
            if let Some(previous) = self.previous.take().filter(|p| p != &spec) {
                tracing::warn!("going back to {}", previous.params.path);
                if self.load(previous).is_ok() {
                    self.shared.publish(|s| {
                        s.last_load_error = Some(why.clone());
                        s.last_failed = failed.clone();
                    });
                    return;
                }
            }
            self.no_model_reason = why.clone();
            self.shared.publish(|s| {
                s.last_load_error = Some(why);
                s.last_failed = failed;
            });
            self.publish_no_model();
            return;
        }
        let backoff = std::time::Duration::from_millis(500 << (count - 1).min(4));
        tracing::warn!(
            "loading {} again in a new worker in {:.1} s (crash {count} of at most {} in a row)",
            spec.params.path,
            backoff.as_secs_f64(),
            MAX_CRASHES_IN_A_ROW
        );
        self.shared.publish(|s| {
            s.state = EngineState::Loading;
            s.model = None;
            s.loading = Some(PathBuf::from(&spec.params.path));
            s.error = Some(reason.clone());
        });
        std::thread::sleep(backoff);
        let _ = self.load(spec);
    }

    /// Loads the resident model again when its file changed on disk since it was loaded: written
    /// in place or truncated (same inode, other size or modification time: the mapped weights
    /// are no longer what was loaded, and pages past a new end fault), or replaced by another file
    /// (a new inode: a new version to serve). A file that only disappeared is left alone: its
    /// mapping stays valid. A reload that fails (a truncated file) leaves no model, with both
    /// reasons.
    fn reload_if_file_changed(&mut self) {
        let (Some(was), Some(spec)) = (&self.loaded_file, &self.spec) else {
            return;
        };
        let Some(now) = FileIdentity::of(&spec.params.path) else {
            return;
        };
        if &now == was || self.rejected_file.as_ref() == Some(&now) {
            return;
        }
        let replaced = (now.dev, now.ino) != (was.dev, was.ino);
        if replaced {
            // The old file's mapping is intact: a new file that cannot be served (truncated, not
            // a model) is refused before the working model is let go.
            if let Err(reason) = precheck(&self.host, spec, self.parallel_for(spec)) {
                let name = self
                    .model
                    .as_ref()
                    .map_or_else(|| spec.params.path.clone(), |m| resident_name(m.info()));
                let why = format!(
                    "the model file {} was replaced by another file, which is refused: {reason}; \
                     {name} goes on serving from the file it loaded",
                    spec.params.path
                );
                tracing::error!("{why}");
                self.shared.publish(|s| s.last_load_error = Some(why));
                self.rejected_file = Some(now);
                return;
            }
        }
        self.rejected_file = None;
        let what = if replaced {
            "was replaced by another file".to_owned()
        } else if now.len != was.len {
            format!("changed size from {} to {} bytes", was.len, now.len)
        } else {
            "was modified".to_owned()
        };
        let spec = spec.clone();
        let why = format!(
            "the model file {} {what} since it was loaded",
            spec.params.path
        );
        tracing::warn!("{why}; loading it again");
        // Answers running on the old mapping end first (or fault in their worker).
        self.slots.wait_idle();
        self.model = None;
        self.spec = None;
        self.loaded_file = None;
        if let Err(reason) = self.load(spec) {
            self.no_model_reason = format!("{why}; {reason}");
            self.publish_no_model();
        }
    }

    /// The sequences a load asks for: `--parallel` / `[server] parallel` when set, else what the
    /// spec says (the planner's count), else [`crate::config::DEFAULT_PARALLEL`].
    fn parallel_for(&self, spec: &LoadSpec) -> u32 {
        self.config
            .parallel
            .or(spec.params.parallel)
            .unwrap_or(crate::config::DEFAULT_PARALLEL)
    }

    fn publish_no_model(&self) {
        tracing::warn!("serving no model: {}", self.no_model_reason);
        self.shared.publish(|s| {
            s.state = EngineState::NoModel;
            s.model = None;
            s.spec = None;
            s.loading = None;
            s.progress = None;
            s.error = Some(self.no_model_reason.clone());
        });
    }

    /// Loads `spec`; on failure no model is resident and the error is returned (and published).
    fn load(&mut self, spec: LoadSpec) -> Result<(), String> {
        let path = PathBuf::from(&spec.params.path);
        let identity = FileIdentity::of(&spec.params.path);
        self.shared.publish(|s| {
            s.state = if s.swapping_from.is_some() {
                EngineState::Swapping
            } else {
                EngineState::Loading
            };
            s.loading = Some(path.clone());
            s.progress = Some(0.0);
            s.error = None;
        });
        let started = Instant::now();
        let mut backend_file = None;
        let result = self
            .host
            .select(&path, spec.backend.as_deref())
            .and_then(|backend| {
                backend_file = backend.file().map(std::path::Path::to_path_buf);
                match &backend_file {
                    Some(file) => tracing::info!(
                        backend = backend.name(),
                        plugin = %file.display(),
                        "loading model {:?}",
                        path
                    ),
                    None => tracing::info!(backend = backend.name(), "loading model {:?}", path),
                }
                let shared = self.shared.clone();
                let generation = self.generation;
                let mut last = -1.0f32;
                let mut params: r1_plugin_abi::json::LoadParams = (&spec.params).into();
                params.parallel = Some(self.parallel_for(&spec));
                let header = gguf_header::has_magic(&path)
                    .then(|| gguf_header::read(&path).ok())
                    .flatten();
                check_memory_bound(
                    backend.name(),
                    header.as_ref(),
                    &spec.params,
                    self.parallel_for(&spec),
                    backend.offloads_to_rpc(),
                )
                .map_err(|message| BackendError::Call {
                    backend: backend.name().to_owned(),
                    status: r1_plugin_abi::R1_ERR_INVALID_ARGUMENT,
                    message,
                })?;
                backend.load(&params, &mut |p| {
                    shared.beat();
                    if shared.load_generation.load(Ordering::SeqCst) > generation
                        || shared.shutting_down.load(Ordering::SeqCst)
                    {
                        // A newer load was asked for, or r1d stops: stop this one.
                        return false;
                    }
                    // Publish at 1 % steps so watchers are not flooded.
                    if p - last >= 0.01 || p >= 1.0 {
                        last = p;
                        shared.publish(|s| s.progress = Some(p));
                    }
                    true
                })
            });
        let kind = if self.shared.state.borrow().swapping_from.is_some() {
            "swap"
        } else {
            "load"
        };
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        metrics::histogram!(crate::telemetry::LOAD_DURATION, "kind" => kind, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(model) => {
                let mut info: ModelInfo = model.info().clone().into();
                info.backend_file = backend_file;
                tracing::info!(
                    backend = model.backend_name(),
                    quantization = info.file_type.as_deref().unwrap_or("?"),
                    context_length = info.context_length,
                    gpu_layers = info.gpu_layers,
                    "model {} is resident after {:.2} s",
                    info.name.as_deref().unwrap_or(&info.path),
                    started.elapsed().as_secs_f64()
                );
                let backend = model.backend_name().to_owned();
                let jobs = self.jobs.clone();
                model.on_failure(Box::new(move |_reason| {
                    if let Some(jobs) = jobs.upgrade() {
                        // A full queue is fine: the engine checks before each job anyway.
                        let _ = jobs.try_send(Job::Recover);
                    }
                }));
                let model: Arc<dyn LoadedModel> = Arc::from(model);
                *self
                    .shared
                    .resident
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(&model));
                if self.shared.shutting_down.load(Ordering::SeqCst) {
                    // Loaded as r1d began to stop: `shutdown` may have looked before it was set.
                    model.abort();
                }
                self.model = Some(model);
                self.spec = Some(spec.clone());
                self.loaded_file = identity;
                self.shared.publish(|s| {
                    s.state = EngineState::Ready;
                    s.model = Some((info, backend));
                    s.loading = None;
                    s.progress = None;
                    s.error = None;
                    s.loaded_at = Some(unix_now());
                    s.spec = Some(spec);
                    s.last_load_error = None;
                    s.last_failed = None;
                });
                Ok(())
            }
            Err(e) => {
                if let BackendError::WorkerDied { reason, .. } = &e {
                    metrics::counter!(crate::telemetry::BACKEND_CRASHES).increment(1);
                    let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                    let crash = format!("{reason} (at {at}, while loading)");
                    self.shared.publish(|s| s.last_crash = Some(crash));
                }
                self.no_model_reason = describe_load_error(&path, &e);
                tracing::error!("{}", self.no_model_reason);
                // A load stopped for a newer one did not fail: nothing to avoid retrying.
                if self.shared.load_generation.load(Ordering::SeqCst) <= self.generation {
                    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                    self.shared
                        .publish(|s| s.last_failed = Some((spec.clone(), modified)));
                }
                self.publish_no_model();
                Err(self.no_model_reason.clone())
            }
        }
    }

    /// Starts `job` on a thread of its own once fewer than the parallel limit of answers run
    /// (the resident model's `parallel_sequences`, capped by `[server] parallel`); until then the
    /// engine thread waits and the queue behind it fills (503 when full).
    /// Runs `job` on a thread of its own once a sequence is free. With `may_retry`, a job whose
    /// worker turns out dead before it delivered anything goes back to the queue once
    /// ([`Job::Retry`]) and waits for the restart, instead of failing.
    fn dispatch(&mut self, job: ChatJob, may_retry: bool) {
        let concluded = Arc::new(AtomicBool::new(false));
        let active = ActiveGuard(self.shared.clone(), concluded.clone());
        if job.reply.is_closed() {
            return;
        }
        loop {
            self.recover_if_failed();
            self.reload_if_file_changed();
            let limit = self.model.as_ref().map_or(1, |m| m.parallel_sequences());
            self.slots.acquire(limit);
            // The model may have died while this job waited for a slot: it waits for the
            // restart instead of failing on the dead one.
            if self.model.as_ref().is_some_and(|m| m.failure().is_some()) {
                self.slots.release();
                continue;
            }
            break;
        }
        let slot = SlotGuard(self.slots.clone());
        self.shared.running.fetch_add(1, Ordering::SeqCst);
        let answer = Answer {
            retry: may_retry.then(|| self.jobs.clone()),
            lost_before_delivery: std::cell::Cell::new(false),
            concluded,
            shared: self.shared.clone(),
            config: self.config.clone(),
            model: self.model.clone(),
            no_model_reason: self.no_model_reason.clone(),
            loaded_file: self
                .spec
                .as_ref()
                .zip(self.loaded_file.clone())
                .map(|(spec, id)| (spec.params.path.clone(), id)),
        };
        let spawned = std::thread::Builder::new()
            .name("r1d-answer".into())
            .spawn(move || {
                let (slot, active) = (slot, active);
                answer.chat(job);
                answer.shared.running.fetch_sub(1, Ordering::SeqCst);
                // The model is released before the slot: the engine thread unloads it only after
                // every slot is free, and must hold the last reference then.
                drop(answer);
                drop(slot);
                drop(active);
            });
        if let Err(e) = spawned {
            // The job went down with the closure: its client sees the stream end.
            self.shared.running.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("failed to start a thread for an answer: {e}");
        }
    }
}

/// What one answer's thread needs: the engine's shared state, its settings and the model.
struct Answer {
    /// Where a job goes back to when its worker died before it delivered anything (`None`: it
    /// was retried already).
    retry: Option<mpsc::WeakSender<Job>>,
    /// Set when the model's worker was found dead by this answer's first call (tokenize).
    lost_before_delivery: std::cell::Cell<bool>,
    /// Set once the request is counted (served, failed) or sent back to the queue: shared with
    /// its `ActiveGuard`, which counts it otherwise.
    concluded: Arc<AtomicBool>,
    shared: Arc<Shared>,
    config: EngineConfig,
    model: Option<Arc<dyn LoadedModel>>,
    no_model_reason: String,
    /// The model's file as loaded: checked every [`FILE_CHECK_INTERVAL`] during the answer.
    loaded_file: Option<(String, FileIdentity)>,
}

/// How often a running answer checks that its model file was not written in place.
const FILE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

impl Answer {
    /// Counts the request as served (and `failed`) before its last event goes out, so that a
    /// client that reads `/r1/status` after its answer finds it counted; once per request.
    fn conclude(&self, failed: bool) {
        if !self.concluded.swap(true, Ordering::SeqCst) {
            self.shared.served.fetch_add(1, Ordering::SeqCst);
            if failed {
                self.shared.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn chat(&self, job: ChatJob) {
        let reply = job.reply.clone();
        if reply.is_closed() {
            return;
        }
        let running = metrics::gauge!(crate::telemetry::RUNNING);
        running.increment(1.0);
        let again = self.retry.is_some().then(|| job.clone());
        let outcome = self.run_chat(job);
        running.decrement(1.0);
        if let (Err(e), Some(job)) = (&outcome, again) {
            if self.lost_before_delivery.get() {
                let queue = self.retry.as_ref().and_then(|q| q.upgrade());
                // Admitted again: this thread's `ActiveGuard` ends the first admission, the
                // dispatch of the retry ends the second.
                self.shared.active.fetch_add(1, Ordering::SeqCst);
                let requeued = queue.is_some_and(|q| q.try_send(Job::Retry(job)).is_ok());
                if !requeued {
                    self.shared.active.fetch_sub(1, Ordering::SeqCst);
                }
                if requeued {
                    // The retry is the same request: it is counted when the retry ends.
                    self.concluded.store(true, Ordering::SeqCst);
                    tracing::info!(
                        "an answer's model worker died before it delivered anything ({e}); \
                         the request waits for the restart and is served again"
                    );
                    return;
                }
            }
        }
        match outcome {
            Ok(()) => {
                self.shared.answers_ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                self.conclude(true);
                let _ = deliver(
                    &self.shared,
                    &reply,
                    ChatEvent::Failed(e),
                    self.config.stall_timeout,
                );
            }
        }
    }

    /// `Err` when the answer must end now: r1d is stopping ([`EngineError::ShuttingDown`]) or a
    /// swap preempted it ([`EngineError::Preempted`]).
    fn interrupted(&self) -> Result<(), EngineError> {
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(EngineError::ShuttingDown);
        }
        match self.shared.preempted() {
            Some(reason) => Err(EngineError::Preempted { reason }),
            None => Ok(()),
        }
    }

    /// The error of a generation the backend failed: a field the plugin cannot honour is
    /// refused by name (the client's mistake, 400), not a failure of the backend; during a stop
    /// it is [`EngineError::ShuttingDown`] (systemd stops the whole service at once: the worker
    /// may die of the same SIGTERM); a dead worker says the answer is lost and the model is
    /// loaded again.
    fn generation_error(&self, e: crate::backend::BackendError) -> EngineError {
        match e {
            crate::backend::BackendError::Call {
                status, message, ..
            } if status == r1_plugin_abi::R1_ERR_INVALID_ARGUMENT => {
                EngineError::InvalidRequest(message)
            }
            _ if self.shared.shutting_down.load(Ordering::SeqCst) => EngineError::ShuttingDown,
            crate::backend::BackendError::Upstream { timeout, message } => {
                EngineError::Upstream { timeout, message }
            }
            e @ crate::backend::BackendError::WorkerDied { .. } => EngineError::Backend(format!(
                "{e}; this answer is lost (retry); r1d loads the model again in a new worker \
                 unless it keeps crashing (see /r1/status)"
            )),
            e => EngineError::Backend(e.to_string()),
        }
    }

    fn run_chat(&self, job: ChatJob) -> Result<(), EngineError> {
        self.interrupted()?;
        let Some(model) = self.model.as_deref() else {
            return Err(EngineError::NoModel {
                reason: self.no_model_reason.clone(),
            });
        };
        let info: ModelInfo = model.info().clone().into();
        if job.sampling.logprobs.is_some() && !info.logprobs {
            return Err(EngineError::InvalidRequest(format!(
                "logprobs: the {} backend does not return token log probabilities",
                model.backend_name()
            )));
        }
        if let Some(limit) = job.sampling.context_limit {
            if model.conversation().is_some() {
                return Err(EngineError::InvalidRequest(format!(
                    "num_ctx: {limit} cannot be applied to a remote model, whose context its \
                     server sets"
                )));
            }
            if limit > info.context_length {
                return Err(EngineError::InvalidRequest(format!(
                    "num_ctx: {limit} tokens is more than the context length the model is \
                     loaded with ({} tokens), which r1d sets for every client of the shared \
                     model; raise [model] context_length in r1d's config, or send a smaller \
                     num_ctx",
                    info.context_length
                )));
            }
        }
        if let Some(remote) = model.conversation() {
            let name = info.name.clone().unwrap_or_else(|| info.path.clone());
            // R1's templates open `<think>` in the prompt, as r1d does for a local R1.
            let opens_reasoning = chat::ModelProfile::of(&info).deepseek_r1;
            return self.run_conversation(remote, name, opens_reasoning, job);
        }
        let profile = chat::ModelProfile::of(&info);
        // Ollama's context: ids that go before the rendered prompt (which then gets no BOS).
        let (context, input) = match &job.input {
            PromptInput::After { context, then } => (context.as_slice(), then.as_ref()),
            input => (&[][..], input),
        };
        let (text, has_bos, opens_reasoning) = match input {
            PromptInput::Tokens(_) | PromptInput::After { .. } => (String::new(), true, false),
            PromptInput::Chat(messages) | PromptInput::ChatWithTools { messages, .. } => {
                let template = info
                    .chat_template
                    .as_deref()
                    .unwrap_or(chat::FALLBACK_TEMPLATE);
                let tools = match input {
                    PromptInput::ChatWithTools { tools, .. } => Some(tools),
                    _ => None,
                };
                let mut prompt = chat::render_with_tools(
                    template,
                    messages,
                    tools,
                    info.bos_token.as_ref().map(|t| t.text.as_str()),
                    info.eos_token.as_ref().map(|t| t.text.as_str()),
                )
                .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
                if job.reasoning_format == ReasoningFormat::Off {
                    profile.skip_reasoning(&mut prompt);
                } else {
                    profile.open_reasoning(&mut prompt);
                }
                (prompt.text, prompt.has_bos, prompt.opens_reasoning)
            }
            PromptInput::Raw(text) => (text.clone(), false, false),
        };
        // BOS exactly once: the template's, or the tokenizer's when the template has none.
        let add_special = info.add_bos_token && !has_bos && context.is_empty();
        // After a context the template's own BOS would be a second one, mid-sequence.
        let text = match (&info.bos_token, context.is_empty()) {
            (Some(bos), false) if has_bos && !bos.text.is_empty() => text
                .strip_prefix(bos.text.as_str())
                .map(str::to_owned)
                .unwrap_or(text),
            _ => text,
        };
        let mut tokens = context.to_vec();
        match input {
            PromptInput::Tokens(ids) => tokens.extend_from_slice(ids),
            _ if !context.is_empty() && text.is_empty() => {}
            _ => tokens.extend(model.tokenize(&text, add_special, true).map_err(|e| {
                if let crate::backend::BackendError::WorkerDied { .. } = e {
                    // Its first call found the worker dead: what killed it was not this
                    // request's generation (the OOM killer, a SIGKILL while idle), so it is
                    // served again by the restarted worker rather than failed. A crash in
                    // `generate` is not retried: the request may be its cause.
                    self.lost_before_delivery.set(true);
                    return EngineError::Backend(format!(
                        "{e}; this request is lost (retry); r1d loads the model again in a new \
                         worker unless it keeps crashing (see /r1/status)"
                    ));
                }
                EngineError::Backend(e.to_string())
            })?),
        }
        // Ids a client sent (a token prompt, a context) are checked before a backend sees them.
        let sent = match input {
            PromptInput::Tokens(ids) => ids.as_slice(),
            _ => &[],
        };
        if let Some(id) = context
            .iter()
            .chain(sent)
            .find(|&&id| id < 0 || id as u32 >= info.vocab_size)
        {
            return Err(EngineError::InvalidRequest(format!(
                "token {id} is not in the vocabulary of {} tokens",
                info.vocab_size
            )));
        }
        if tokens.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        // User content: only at trace level, never at info (docs/architecture.md, cross-cutting: user content).
        tracing::trace!(prompt = %text, ?tokens, "rendered prompt");
        let n_prompt = tokens.len() as u32;
        // Checked above: at most the loaded context.
        let n_ctx = job.sampling.context_limit.unwrap_or(info.context_length);
        if let Some(limit) = job.sampling.context_limit.filter(|&l| n_prompt >= l) {
            return Err(EngineError::InvalidRequest(format!(
                "num_ctx: the prompt is {n_prompt} tokens, and num_ctx = {limit} leaves no room \
                 for an answer (the model is loaded with {} tokens of context)",
                info.context_length
            )));
        }
        if n_prompt >= n_ctx {
            return Err(EngineError::ContextExceeded {
                prompt_tokens: n_prompt,
                context_length: n_ctx,
            });
        }
        // A bias for a token the vocabulary does not have is refused before the answer starts.
        if let Some((id, _)) = job
            .sampling
            .logit_bias
            .iter()
            .find(|(id, _)| *id < 0 || *id as u32 >= info.vocab_size)
        {
            return Err(EngineError::InvalidRequest(format!(
                "logit_bias: token {id} is not in the vocabulary of {} tokens",
                info.vocab_size
            )));
        }
        // Like llama-server: generation stops at the end of the context (finish_reason "length").
        let room = n_ctx - n_prompt;
        let max_tokens = job
            .sampling
            .max_tokens
            .or(self.config.default_max_tokens)
            .unwrap_or(room)
            .min(room);
        let name = info.name.clone().unwrap_or_else(|| info.path.clone());
        crate::telemetry::update(job.stats.as_ref(), |s| {
            s.model = Some(name.clone());
            s.prompt_tokens = Some(n_prompt);
        });
        metrics::counter!(crate::telemetry::PROMPT_TOKENS).increment(u64::from(n_prompt));
        let stall = self.config.stall_timeout;
        let started = ChatEvent::Started {
            model: name,
            prompt_tokens: n_prompt,
        };
        if deliver(&self.shared, &job.reply, started, stall).is_err() {
            return Ok(());
        }
        let defaults = profile.sampling_defaults();
        let sampling = &job.sampling;
        let request = GenerateRequest {
            prompt_tokens: tokens.clone(),
            max_tokens,
            temperature: sampling.temperature.unwrap_or(defaults.temperature),
            top_p: sampling.top_p.unwrap_or(defaults.top_p),
            top_k: sampling.top_k.unwrap_or(defaults.top_k),
            min_p: sampling.min_p.unwrap_or(defaults.min_p),
            seed: sampling.seed,
            stop_tokens: Vec::new(),
            ignore_eos: false,
            presence_penalty: sampling.presence_penalty.unwrap_or(0.0),
            frequency_penalty: sampling.frequency_penalty.unwrap_or(0.0),
            repeat_penalty: sampling.repeat_penalty.unwrap_or(1.0),
            penalty_last_n: sampling.repeat_last_n.unwrap_or(64),
            logit_bias: sampling.logit_bias.clone(),
            json_schema: sampling.json_schema.clone(),
            json_wrap: sampling.json_wrap.clone(),
            // The reasoning stays free: the constraint starts where the answer does.
            constrain_after: opens_reasoning.then(|| chat::THINK_CLOSE.to_owned()),
            logprobs: sampling.logprobs,
        };
        let mut assembler =
            Assembler::new(opens_reasoning, sampling.stop.clone(), job.reasoning_format);
        let reply = job.reply.clone();
        let drop_reasoning = job.reasoning_format == ReasoningFormat::Off;
        let mut first_token_at: Option<Instant> = None;
        let mut generated: Vec<i32> = Vec::new();
        // Log probabilities: the plugin's document for the next token, then each token's entry
        // with where its bytes end among the pushed ones, until the assembler settles them.
        let mut next_logprobs: Option<r1_plugin_abi::json::TokenLogprobs> = None;
        let mut logprobs: std::collections::VecDeque<(usize, usize, TokenLogprob)> =
            Default::default();
        let mut pushed = 0usize;
        let mut reasoning_tokens = 0u32;
        let mut client_gone = false;
        let mut stalled = false;
        let mut file_changed: Option<String> = None;
        let mut file_checked = Instant::now();
        let shared = self.shared.clone();
        let result = model.generate(&request, &mut |bytes, id| {
            shared.beat();
            if let Some((path, loaded)) = &self.loaded_file {
                if file_checked.elapsed() >= FILE_CHECK_INTERVAL {
                    file_checked = Instant::now();
                    // Written in place under the mapping (same inode, other size or time): the
                    // weights are no longer the loaded ones, and what follows would be garbage.
                    if let Some(now) = FileIdentity::of(path) {
                        if (now.dev, now.ino) == (loaded.dev, loaded.ino) && &now != loaded {
                            file_changed = Some(path.clone());
                            return false;
                        }
                    }
                }
            }
            if shared.shutting_down.load(Ordering::SeqCst)
                || shared.preempting.load(Ordering::SeqCst)
            {
                return false;
            }
            if id == r1_plugin_abi::R1_TOKEN_PROMPT_PROGRESS && bytes.is_empty() {
                // Between prompt batches: stop a long prompt when the client has gone.
                client_gone = reply.is_closed();
                return !client_gone;
            }
            if id == r1_plugin_abi::R1_TOKEN_LOGPROBS {
                next_logprobs = serde_json::from_slice(bytes)
                    .map_err(|e| {
                        tracing::warn!("the backend sent log probabilities r1d cannot read: {e}")
                    })
                    .ok();
                return true;
            }
            first_token_at.get_or_insert_with(Instant::now);
            generated.push(id);
            if let Some(doc) = next_logprobs.take() {
                // `think: false` drops the reasoning's text, and so its tokens' entries.
                if !(drop_reasoning && assembler.in_reasoning()) {
                    let entry = TokenLogprob::from_abi(bytes, doc);
                    logprobs.push_back((pushed, pushed + bytes.len(), entry));
                }
            }
            pushed += bytes.len();
            if assembler.in_reasoning() {
                reasoning_tokens += 1;
            }
            let pieces = assembler.push(bytes);
            let settled = settled_logprobs(&mut logprobs, &assembler, false);
            if !settled.is_empty() {
                if let Err(why) = deliver(&shared, &reply, ChatEvent::Logprobs(settled), stall) {
                    client_gone = true;
                    stalled = why == Undelivered::Stalled;
                    return false;
                }
            }
            for piece in pieces {
                if drop_reasoning && piece.channel == chat::Channel::Reasoning {
                    continue;
                }
                match deliver(&shared, &reply, ChatEvent::Piece(piece), stall) {
                    Ok(()) => {}
                    Err(why) => {
                        client_gone = true;
                        stalled = why == Undelivered::Stalled;
                        return false;
                    }
                }
            }
            if reply.is_closed() {
                client_gone = true;
                return false;
            }
            !assembler.stopped()
        });
        if let Some(path) = file_changed {
            return Err(EngineError::Backend(format!(
                "the model file {path} was written in place during this answer, so the weights \
                 it was reading changed; the answer was stopped (retry: r1d loads the file again)"
            )));
        }
        let mut result: GenerateResult = result.map_err(|e| self.generation_error(e))?.into();
        let ttft = first_token_at.map(|t| t.duration_since(job.admitted));
        metrics::counter!(crate::telemetry::GENERATED_TOKENS)
            .increment(u64::from(result.completion_tokens));
        if let Some(ttft) = ttft {
            metrics::histogram!(crate::telemetry::TTFT).record(ttft.as_secs_f64());
        }
        metrics::histogram!(crate::telemetry::GENERATION_DURATION)
            .record(job.admitted.elapsed().as_secs_f64());
        crate::telemetry::update(job.stats.as_ref(), |s| {
            s.generated_tokens = Some(result.completion_tokens);
            s.ttft = ttft;
        });
        self.interrupted()?;
        if stalled {
            tracing::warn!(
                "a client stopped reading its answer for {:.0} s ([server] stall_timeout_s); \
                 its request was cancelled after {} tokens",
                stall.as_secs_f64(),
                result.completion_tokens
            );
            return Ok(());
        }
        if client_gone {
            tracing::debug!(
                "client went away; generation stopped after {} tokens",
                result.completion_tokens
            );
            return Ok(());
        }
        let pieces = assembler.finish();
        let settled = settled_logprobs(&mut logprobs, &assembler, true);
        if !settled.is_empty()
            && deliver(&self.shared, &reply, ChatEvent::Logprobs(settled), stall).is_err()
        {
            return Ok(());
        }
        for piece in pieces {
            if drop_reasoning && piece.channel == chat::Channel::Reasoning {
                continue;
            }
            if deliver(&self.shared, &reply, ChatEvent::Piece(piece), stall).is_err() {
                return Ok(());
            }
        }
        let finish_reason = if assembler.stopped() {
            FinishReason::Stop
        } else {
            match result.finish_reason {
                FinishReason::Cancelled => FinishReason::Stop,
                other => other,
            }
        };
        // Time to first token from the request's admission (queue wait included).
        result.time_to_first_token_ms =
            first_token_at.map(|t| t.duration_since(job.admitted).as_secs_f64() * 1e3);
        result.reasoning_tokens =
            (job.reasoning_format != ReasoningFormat::None).then_some(reasoning_tokens);
        tokens.extend(generated);
        let done = ChatEvent::Done(Finished {
            finish_reason,
            result,
            tokens,
        });
        self.conclude(false);
        let _ = deliver(&self.shared, &reply, done, stall);
        Ok(())
    }
}

/// Takes from `pending` (entries with the start and end of their token's bytes among the pushed
/// ones) those the assembler has settled: tokens whose bytes end at or before its settled
/// position; once a stop string matched, the tokens that start before it (the token that
/// completes the text before the stop string is the client's; the rest are dropped). At the end
/// of a generation that did not stop on a string (`at_end`), all of them.
fn settled_logprobs(
    pending: &mut std::collections::VecDeque<(usize, usize, TokenLogprob)>,
    assembler: &Assembler,
    at_end: bool,
) -> Vec<TokenLogprob> {
    let settled = assembler.settled_bytes();
    let mut out = Vec::new();
    while let Some((start, end, _)) = pending.front() {
        let take = if assembler.stopped() {
            *start < settled
        } else {
            at_end || *end <= settled
        };
        if !take {
            break;
        }
        out.push(pending.pop_front().expect("a front").2);
    }
    if assembler.stopped() {
        pending.clear();
    }
    out
}

fn superseded(spec: &LoadSpec) -> String {
    format!(
        "the load of {} was stopped: a newer load was asked for",
        spec.params.path
    )
}

/// Checks what can be checked of `spec` without loading it: the file exists, a backend takes it,
/// and a GGUF is as long as its header says. Returns the reason it cannot load.
fn precheck(host: &PluginHost, spec: &LoadSpec, parallel: u32) -> Result<(), String> {
    let path = std::path::Path::new(&spec.params.path);
    let backend = host
        .select(path, spec.backend.as_deref())
        .map_err(|e| describe_load_error(path, &e))?;
    if gguf_header::has_magic(path) {
        // One read of the header serves every check.
        let header = gguf_header::read(path);
        if let Some(why) = gguf_header::HeaderCheck::of(&header).explanation() {
            return Err(format!("failed to load model {}: {why}", path.display()));
        }
        if let Ok(header) = &header {
            check_memory_bound(
                backend.name(),
                Some(header),
                &spec.params,
                parallel,
                backend.offloads_to_rpc(),
            )?;
            let gpus = backend
                .probe_report()
                .devices
                .iter()
                .filter(|d| d.kind == "gpu")
                .map(|d| (d.name.clone(), d.memory_total_bytes.unwrap_or(0)))
                .collect::<Vec<_>>();
            device_memory_check(path, header, &spec.params, &gpus)?;
        }
    }
    Ok(())
}

/// Refuses a llama.cpp load whose KV cache — `parallel` sequences of `context_length` tokens, in
/// one unified cache — plus its weights (the file's size) would not fit in the RAM r1d may use at
/// all (`MemTotal`, or the cgroup limit when smaller), naming the numbers: such a load would only
/// end in the OOM killer, or in swapping the machine to a halt. The KV cache per token is
/// `block_count × head_count_kv × (key_length + value_length)` elements of the cache type
/// (F16: 2 bytes; Q8_0: 34 bytes per 32; Q4_0: 18 per 32), from the file's GGUF header
/// (llama.cpp's `llama_kv_cache` layout). Other backends, files without those keys, a load without
/// a context length and DeepSeek's MLA (`deepseek2`, cached in its compressed form) are not
/// checked here: the planner's figures cover them. `header` is the file's, read by the caller
/// (`None`: not a readable GGUF, nothing to check). With RPC workers (`rpc`), only the share of
/// the layers that stays here counts ([`local_share`]): a model split across hosts need not fit
/// this machine's RAM.
///
/// # Errors
/// The reason, naming the sequences, context length, KV bytes and the memory limit.
fn check_memory_bound(
    backend: &str,
    header: Option<&gguf_header::Header>,
    params: &LoadParams,
    parallel: u32,
    rpc: bool,
) -> Result<(), String> {
    if backend != "llamacpp" {
        return Ok(());
    }
    let (Some(context), Some(header)) = (params.context_length, header) else {
        return Ok(());
    };
    let path = std::path::Path::new(&params.path);
    if header.architecture() == Some("deepseek2") {
        return Ok(());
    }
    let (Some(layers), Some(heads), Some(embedding)) = (
        header.arch_uint("block_count"),
        header.arch_uint("attention.head_count"),
        header.arch_uint("embedding_length"),
    ) else {
        return Ok(());
    };
    let kv_heads = header.arch_uint("attention.head_count_kv").unwrap_or(heads);
    let head_dim = embedding / heads.max(1);
    let key = header.arch_uint("attention.key_length").unwrap_or(head_dim);
    let value = header
        .arch_uint("attention.value_length")
        .unwrap_or(head_dim);
    let (num, den) = match params.kv_cache_type.as_deref().unwrap_or("f16") {
        "f32" => (4, 1),
        "q8_0" => (34, 32),
        "q4_0" | "q4_1" | "iq4_nl" | "q5_0" | "q5_1" => (18, 32),
        _ => (2, 1),
    };
    let tokens = u64::from(parallel) * u64::from(context);
    let share = if rpc {
        local_share(layers, params.gpu_layers)
    } else {
        1.0
    };
    let kv = ((layers * kv_heads * (key + value)).saturating_mul(tokens) * num / den) as f64;
    let kv = (kv * share) as u64;
    let weights = (std::fs::metadata(path).map_or(0, |m| m.len()) as f64 * share) as u64;
    let probe = crate::hardware::Probe::this_machine(PathBuf::new(), None);
    let Ok(memory) = crate::hardware::memory::probe(&probe) else {
        return Ok(());
    };
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if kv.saturating_add(weights) > memory.total_bytes {
        return Err(format!(
            "{parallel} sequences (parallel) × {context} tokens (context_length) need a KV cache \
             of {:.1} GiB, and with the weights ({:.1} GiB) more than the {:.1} GiB of RAM r1d \
             may use on this machine{}; ask for fewer sequences (--parallel, [server] parallel) or \
             a shorter context",
            gib(kv),
            gib(weights),
            gib(memory.total_bytes),
            if memory.cgroup_limit_bytes.is_some() {
                " (its cgroup's limit)"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// The share of a model of `blocks` blocks that stays on this machine when `gpu_layers` of its
/// `blocks + 1` layers (llama.cpp's count: the output head is one) go to other devices (`None`:
/// all of them, the llama.cpp plugin's default when a worker is attached). Pure.
fn local_share(blocks: u64, gpu_layers: Option<u32>) -> f64 {
    let all = blocks + 1;
    let away = gpu_layers.map_or(all, |g| u64::from(g).min(all));
    (all - away) as f64 / all as f64
}

/// Refuses GPU layers whose weights alone exceed the memory of the backend's GPUs (`gpus`: name
/// and total bytes, as its probe reports them): the layers asked for (`gpu_layers`, default all
/// when there is a GPU, as the llama.cpp plugin does) on all GPUs, or on `main_gpu` alone. The
/// same rule the llama.cpp plugin applies at load ([`gguf_header::Header::device_memory_shortfall`]),
/// checked here before the resident model is unloaded. Pure.
fn device_memory_check(
    path: &std::path::Path,
    header: &gguf_header::Header,
    params: &crate::engine::types::LoadParams,
    gpus: &[(String, u64)],
) -> Result<(), String> {
    if gpus.is_empty() || params.vocab_only {
        return Ok(());
    }
    let targets: Vec<&(String, u64)> = match params.main_gpu {
        Some(i) => usize::try_from(i)
            .ok()
            .and_then(|i| gpus.get(i))
            .into_iter()
            .collect(),
        None => gpus.iter().collect(),
    };
    let total = targets.iter().map(|g| g.1).sum();
    let layers = params.gpu_layers.unwrap_or(u32::MAX);
    match header.device_memory_shortfall(layers, total) {
        None => Ok(()),
        Some(shortfall) => Err(format!(
            "failed to load model {}: {shortfall} (GPU: {})",
            path.display(),
            targets
                .iter()
                .map(|g| g.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The name a model is shown by: its own name, else its path.
pub fn model_name(info: &ModelInfo) -> String {
    info.name.clone().unwrap_or_else(|| info.path.clone())
}

/// [`model_name`] of a plugin's own report, without converting all of it.
fn resident_name(info: &r1_plugin_abi::json::ModelInfo) -> String {
    info.name.clone().unwrap_or_else(|| info.path.clone())
}

/// The reason a load failed, for `/health`, `r1ctl status` and the log. Names the file; for a
/// GGUF shorter than its header implies, says that it is truncated.
fn describe_load_error(path: &std::path::Path, e: &BackendError) -> String {
    let message = e.to_string();
    let lower = message.to_lowercase();
    let mut text = if message.contains(&path.display().to_string()) {
        message.clone()
    } else {
        format!("failed to load model {}: {message}", path.display())
    };
    if lower.contains("not within the file bounds") && !lower.contains("truncated") {
        text.push_str(" (the file is truncated or incomplete: was the download interrupted?)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 layers of 100 MB (F32), an output layer of 200 MB, an embedding of 400 MB.
    fn header() -> gguf_header::Header {
        use gguf_header::write::{gguf, Meta};
        let names: Vec<String> = (0..10).map(|i| format!("blk.{i}.ffn_up.weight")).collect();
        let mut tensors: Vec<(&str, &[u64], u32)> = vec![("token_embd.weight", &[100_000_000], 0)];
        tensors.extend(names.iter().map(|n| (n.as_str(), &[25_000_000u64][..], 0)));
        tensors.push(("output.weight", &[50_000_000], 0));
        let bytes = gguf(
            &[
                ("general.architecture", Meta::Str("qwen2")),
                ("qwen2.block_count", Meta::U32(10)),
            ],
            &tensors,
            0,
        );
        gguf_header::read_bytes(&bytes, "model").unwrap()
    }

    #[test]
    fn only_the_layers_kept_here_count_against_this_machines_ram_with_rpc_workers() {
        assert_eq!(super::local_share(30, Some(20)), 11.0 / 31.0);
        assert_eq!(super::local_share(30, Some(0)), 1.0);
        assert_eq!(super::local_share(30, Some(99)), 0.0);
        assert_eq!(super::local_share(80, None), 0.0);
    }

    #[test]
    fn gpu_layers_beyond_the_backends_gpu_memory_are_refused_before_loading() {
        let path = std::path::Path::new("/m/big.gguf");
        let h = header();
        let gpus = vec![("llvmpipe".to_owned(), 1_000_000_000)];
        let all = LoadParams::default();
        let e = device_memory_check(path, &h, &all, &gpus).unwrap_err();
        assert_eq!(
            e,
            "failed to load model /m/big.gguf: offloading 11 of its 11 layers needs at least \
             1.20 GB of device memory for the weights alone, but the GPU memory is 1.00 GB; set \
             gpu_layers to 9 or less (GPU: llvmpipe)"
        );
        let nine = LoadParams {
            gpu_layers: Some(9),
            ..LoadParams::default()
        };
        device_memory_check(path, &h, &nine, &gpus).unwrap();
        // No GPU (a CPU backend), or one that reports no memory: nothing to check here.
        device_memory_check(path, &h, &all, &[]).unwrap();
        device_memory_check(path, &h, &all, &[("?".to_owned(), 0)]).unwrap();
        // main_gpu puts every layer on that one GPU.
        let two = vec![("a".to_owned(), 700_000_000), ("b".to_owned(), 700_000_000)];
        device_memory_check(path, &h, &all, &two).unwrap();
        let on_b = LoadParams {
            main_gpu: Some(1),
            ..LoadParams::default()
        };
        assert!(device_memory_check(path, &h, &on_b, &two)
            .unwrap_err()
            .contains("(GPU: b)"));
    }

    #[test]
    fn logprob_entries_follow_the_text_the_client_gets() {
        let entry = |b: &str| TokenLogprob {
            bytes: b.as_bytes().to_vec(),
            logprob: -0.5,
            top: Vec::new(),
        };
        let mut a = Assembler::new(false, vec!["Paris".into()], ReasoningFormat::DeepSeek);
        let mut pending = std::collections::VecDeque::new();
        let mut pushed = 0;
        let mut got = Vec::new();
        for token in ["The", " capital", " is", " P", "aris", "."] {
            pending.push_back((pushed, pushed + token.len(), entry(token)));
            pushed += token.len();
            a.push(token.as_bytes());
            got.extend(settled_logprobs(&mut pending, &a, false));
            let texts: Vec<_> = got
                .iter()
                .map(|e| String::from_utf8_lossy(&e.bytes))
                .collect();
            match token {
                // " P" could start the stop string: its entry waits with its text.
                " P" => assert_eq!(texts, ["The", " capital", " is"]),
                // The stop string starts inside " P": that token is the client's, "aris" not.
                "aris" => assert_eq!(texts, ["The", " capital", " is", " P"]),
                _ => {}
            }
            if a.stopped() {
                break;
            }
        }
        assert!(pending.is_empty());
        assert_eq!(got.len(), 4);
    }
}
