//! `remote`: a backend inside r1d that serves through an OpenAI-compatible endpoint — vLLM or
//! SGLang on a GPU cluster, llama-server, or another r1d over TCP (`[[remote]]` in the config).
//!
//! A remote model takes the conversation itself (its server applies its own chat template and
//! reasoning parser), so it is not a plugin and takes no rendered prompt: [`RemoteModel`] is a
//! [`LoadedModel`] whose [`LoadedModel::conversation`] gives the engine a [`ConversationModel`].
//! The engine hands it the request's messages and sampling; it posts them to
//! `{url}/v1/chat/completions` with `stream: true` and hands each SSE delta back as reasoning or
//! answer text ([`Delta`]) — whether the server splits the reasoning into `reasoning_content`
//! (vLLM's and SGLang's reasoning parsers, llama-server, r1d), `reasoning` (vLLM ≥ 0.10,
//! OpenRouter) or leaves R1's `<think>…</think>` in the text (the engine's `Assembler` splits it).
//! No native code runs for it, so it needs no worker process.
//!
//! Health: `GET {url}/v1/models` with the key ([`Remotes::check`]); the model must be listed.
//! The result (with the reason of a failure) is kept per remote, shown by `r1d plan`,
//! `/r1/plan` and `/r1/status`, and used by [`choose`] to decide between a local variant and a
//! remote one.
//!
//! Time limits, per remote: `connect_timeout_s` (TCP and TLS), `first_byte_timeout_s` (until
//! the response's headers — the server's queue and prompt processing), `stall_timeout_s` (the
//! longest pause between two SSE events once the answer streams). A client that goes away or
//! cancels drops the response, which closes the upstream connection: vLLM, SGLang,
//! llama-server and r1d abort the request when their client disconnects.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use r1_plugin_abi::json::{Estimate, ProbeReport};
use r1_plugin_abi::json::{FinishReason, GenerateRequest, GenerateResult, LoadParams, ModelInfo};
use serde::{Deserialize, Serialize};

use super::{Backend, BackendError, LoadedModel};
use crate::chat::Message;

/// The backend's name (`[model] backend`, `LoadSpec::backend`).
pub const BACKEND: &str = "remote";
/// A remote model's path: `remote:NAME` (`NAME` is [`RemoteConfig::name`]).
pub const PATH_PREFIX: &str = "remote:";
/// The most bytes of an error body or `/v1/models` answer r1d reads from a remote.
const MAX_BODY_BYTES: usize = 1 << 20;
/// How often a wait on the remote looks whether the client is still there.
const POLL: Duration = Duration::from_millis(250);

/// `[planner] prefer`: between the best local variant and a remote one.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// The best local variant that reaches `min_tokens_per_s`; a healthy remote only when no
    /// local one does (or none is present).
    #[default]
    Local,
    /// The higher-ranked variant (catalog quality), local or remote; a healthy remote wins a tie
    /// only when the local one is not fast enough.
    Best,
}

/// One `[[remote]]` table: an OpenAI-compatible endpoint and the model to ask it for.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Base URL, `http://` or `https://` (TLS with the webpki roots, rustls); a trailing `/v1`
    /// is allowed: `https://cluster.example:8000` and `https://cluster.example:8000/v1` are
    /// the same.
    pub url: String,
    /// The model id the remote serves it under (its `/v1/models`), e.g.
    /// `deepseek-ai/DeepSeek-R1`.
    pub model: String,
    /// The name r1d lists it under (`remote:NAME`); default: `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// File holding the bearer key (`Authorization: Bearer KEY`); it must not be accessible to
    /// others (mode `o-rwx`), as ssh requires of private keys. Read at each request, so a
    /// rotated key needs no restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Seconds to open the TCP (and TLS) connection; default 5.
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: f64,
    /// Seconds until the response's headers arrive (queue and prompt processing on the
    /// remote); default 300.
    #[serde(default = "default_first_byte_timeout_s")]
    pub first_byte_timeout_s: f64,
    /// Longest pause between two streamed events, in seconds; default 60. Longer, and the
    /// answer ends with an error event.
    #[serde(default = "default_stall_timeout_s")]
    pub stall_timeout_s: f64,
    /// Seconds between health checks (`GET /v1/models`); default 30.
    #[serde(default = "default_health_interval_s")]
    pub health_interval_s: f64,
    /// Generation speed one answer gets from the remote (tokens/s), for the planner; default:
    /// unknown, taken as fast enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Answers r1d sends at once (the remote batches them); default 8.
    #[serde(default = "default_parallel")]
    pub parallel: u32,
}

fn default_connect_timeout_s() -> f64 {
    5.0
}
fn default_first_byte_timeout_s() -> f64 {
    300.0
}
fn default_stall_timeout_s() -> f64 {
    60.0
}
fn default_health_interval_s() -> f64 {
    30.0
}
fn default_parallel() -> u32 {
    8
}

impl RemoteConfig {
    /// The name r1d lists it under: `name`, else `model`.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.model)
    }

    /// The path a `LoadSpec` names it by: `remote:NAME`.
    pub fn path(&self) -> String {
        format!("{PATH_PREFIX}{}", self.name())
    }

    /// The base URL without a trailing `/` or `/v1`.
    fn base(&self) -> &str {
        let url = self.url.trim_end_matches('/');
        url.strip_suffix("/v1").unwrap_or(url)
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.base())
    }

    /// The catalog variant the model id names (its Hugging Face repository, a quantizer's copy
    /// of it such as `unsloth/DeepSeek-R1-GGUF`, or r1d's variant id such as
    /// `deepseek-r1:671b`); `None` for another model.
    pub fn variant(&self) -> Option<&'static crate::catalog::Variant> {
        variant_of(&self.model)
    }
}

/// The catalog variant a model id names, by repository name (owner and a `-GGUF` suffix
/// ignored, case-insensitive) or by r1d's variant id.
pub fn variant_of(model: &str) -> Option<&'static crate::catalog::Variant> {
    let id = model.trim().to_ascii_lowercase();
    let repo = id.rsplit('/').next().unwrap_or(&id);
    let repo = repo.strip_suffix("-gguf").unwrap_or(repo);
    crate::catalog::VARIANTS.iter().find(|v| {
        let theirs = v.hf_repo.to_ascii_lowercase();
        v.id == id || theirs == id || theirs.rsplit('/').next() == Some(repo)
    })
}

/// Checks the `[[remote]]` tables: URLs, names, time limits and the key file's permissions.
///
/// # Errors
/// One line naming the table (`remote[INDEX]`), the key and what is wrong.
pub fn validate(remotes: &[RemoteConfig]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for (i, r) in remotes.iter().enumerate() {
        let at = format!("remote[{i}]");
        match reqwest::Url::parse(&r.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(format!(
                    "{at}.url {:?} is not an http:// or https:// URL",
                    r.url
                ))
            }
        }
        if r.model.trim().is_empty() {
            return Err(format!("{at}.model must name the model the remote serves"));
        }
        // The name is a model name clients send (`remote:NAME`) and r1d lists.
        if r.name().is_empty()
            || r.name()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "{at}.name {:?} must be a model name without spaces (clients send it as \
                 remote:NAME); set `name` to one, e.g. \"cluster\"",
                r.name()
            ));
        }
        if !names.insert(r.name().to_owned()) {
            return Err(format!(
                "{at}: a second remote named {:?}; give one of them another `name`",
                r.name()
            ));
        }
        for (key, v) in [
            ("connect_timeout_s", r.connect_timeout_s),
            ("first_byte_timeout_s", r.first_byte_timeout_s),
            ("stall_timeout_s", r.stall_timeout_s),
            ("health_interval_s", r.health_interval_s),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return Err(format!(
                    "{at}.{key} must be a number of seconds above 0, at most 86400"
                ));
            }
        }
        if let Some(t) = r.tokens_per_s {
            if !(t.is_finite() && t > 0.0) {
                return Err(format!("{at}.tokens_per_s must be a speed above 0"));
            }
        }
        if !(1..=256).contains(&r.parallel) {
            return Err(format!(
                "{at}.parallel must be 1 to 256 answers at once, got {}",
                r.parallel
            ));
        }
        if let Some(file) = &r.api_key_file {
            check_key_file(file).map_err(|e| format!("{at}.api_key_file: {e}"))?;
        }
    }
    Ok(())
}

/// Refuses a key file that others may access (any `o` permission bit), as ssh refuses an
/// unprotected private key; returns its mode.
fn check_key_file(path: &Path) -> Result<u32, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "{} is accessible to other users (mode {mode:04o}), so any user of this machine \
             could read the key; run `chmod o-rwx {}` (ssh refuses such key files too)",
            path.display(),
            path.display()
        ));
    }
    Ok(mode)
}

/// Reads the key (first line, trimmed) after [`check_key_file`].
fn read_key(path: &Path) -> Result<String, String> {
    check_key_file(path)?;
    let text = crate::files::read_text_bounded(path, 64 * 1024).map_err(|e| e.to_string())?;
    let key = text.lines().next().unwrap_or("").trim().to_owned();
    if key.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(key)
}

/// The last health check of a remote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// When it was checked; `None` before the first check.
    pub checked_at: Option<SystemTime>,
    /// The remote answered `/v1/models` and lists the model.
    pub ok: bool,
    /// Why it is not healthy (connection refused, HTTP status, model not listed, key file).
    pub reason: Option<String>,
    /// Model ids the remote lists.
    pub models: Vec<String>,
    /// The model's context length when the remote says (vLLM's `max_model_len`), in tokens.
    pub context_length: Option<u32>,
}

/// What r1d knows of one remote: its config and its last health check.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteView {
    /// The `[[remote]]` table.
    pub config: RemoteConfig,
    /// The last check.
    pub health: Health,
}

struct Entry {
    config: RemoteConfig,
    client: reqwest::Client,
    health: Health,
}

/// The configured remotes, their HTTP clients and health. Shared by the backend, the
/// supervisor's choice and the status routes.
pub struct Remotes {
    handle: tokio::runtime::Handle,
    entries: RwLock<Vec<Entry>>,
}

impl std::fmt::Debug for Remotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remotes").finish_non_exhaustive()
    }
}

fn client_for(config: &RemoteConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs_f64(config.connect_timeout_s))
        // No overall timeout: an answer may stream for minutes; waits are bounded per phase.
        .build()
        .unwrap_or_default()
}

impl Remotes {
    /// The remotes of `configs`, unchecked; `handle` runs their HTTP (the blocking calls of
    /// the backend use `Handle::block_on` from the engine's threads).
    pub fn new(configs: &[RemoteConfig], handle: tokio::runtime::Handle) -> Arc<Remotes> {
        let remotes = Arc::new(Remotes {
            handle,
            entries: RwLock::new(Vec::new()),
        });
        remotes.set_configs(configs);
        remotes
    }

    /// Replaces the configured remotes (a config reload); a remote whose table did not change
    /// keeps its health.
    pub fn set_configs(&self, configs: &[RemoteConfig]) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::take(&mut *entries);
        *entries = configs
            .iter()
            .map(|c| {
                let health = old
                    .iter()
                    .find(|e| &e.config == c)
                    .map(|e| e.health.clone())
                    .unwrap_or_default();
                Entry {
                    config: c.clone(),
                    client: client_for(c),
                    health,
                }
            })
            .collect();
    }

    /// Every remote with its last health check, in config order.
    pub fn views(&self) -> Vec<RemoteView> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| RemoteView {
                config: e.config.clone(),
                health: e.health.clone(),
            })
            .collect()
    }

    fn find(&self, name: &str) -> Option<(RemoteConfig, reqwest::Client)> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|e| e.config.name() == name)
            .map(|e| (e.config.clone(), e.client.clone()))
    }

    fn record(&self, config: &RemoteConfig, health: Health) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        match entries.iter_mut().find(|e| &e.config == config) {
            Some(e) => {
                let flipped = e.health.ok != health.ok || e.health.checked_at.is_none();
                if !health.ok && (flipped || e.health.reason != health.reason) {
                    tracing::warn!(
                        "remote {} ({}) fails its health check: {}",
                        config.name(),
                        config.url,
                        health.reason.as_deref().unwrap_or("?")
                    );
                } else if health.ok && flipped {
                    tracing::info!("remote {} ({}) is healthy", config.name(), config.url);
                }
                e.health = health;
                flipped
            }
            None => false,
        }
    }

    /// Checks every remote now (at once, each within its connect and first-byte limits);
    /// returns true when a remote's verdict changed (healthy ↔ not, or the first check).
    pub async fn check_all(&self) -> bool {
        let list: Vec<(RemoteConfig, reqwest::Client)> = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| (e.config.clone(), e.client.clone()))
            .collect();
        let checks = list.iter().map(|(c, client)| check(c, client));
        let results = futures_util::future::join_all(checks).await;
        let mut changed = false;
        for ((config, _), health) in list.iter().zip(results) {
            changed |= self.record(config, health);
        }
        changed
    }

    /// Checks every remote every `health_interval_s` (the smallest of them) for as long as r1d
    /// runs, calling `on_change` when a verdict changes (the supervisor plans again).
    pub fn watch(self: &Arc<Self>, on_change: impl Fn() + Send + Sync + 'static) {
        let remotes = self.clone();
        self.handle.spawn(async move {
            loop {
                let interval = remotes
                    .views()
                    .iter()
                    .map(|v| v.config.health_interval_s)
                    .fold(f64::INFINITY, f64::min);
                let interval = if interval.is_finite() { interval } else { 30.0 };
                tokio::time::sleep(Duration::from_secs_f64(interval)).await;
                if remotes.check_all().await {
                    on_change();
                }
            }
        });
    }
}

/// One health check: `GET {url}/v1/models` with the key, the model among the listed ids.
async fn check(config: &RemoteConfig, client: &reqwest::Client) -> Health {
    let mut health = Health {
        checked_at: Some(SystemTime::now()),
        ..Health::default()
    };
    let url = config.endpoint("models");
    let mut req = client.get(&url);
    if let Some(file) = &config.api_key_file {
        match read_key(file) {
            Ok(key) => req = req.bearer_auth(key),
            Err(e) => {
                health.reason = Some(format!("api_key_file: {e}"));
                return health;
            }
        }
    }
    let limit = Duration::from_secs_f64(config.first_byte_timeout_s.min(30.0));
    let answer = async {
        let resp = req.send().await.map_err(|e| describe(&e, config))?;
        let status = resp.status();
        let body = read_body(resp).await;
        if !status.is_success() {
            return Err(format!(
                "GET {url} answered HTTP {status}{}",
                error_message(&body).map_or(String::new(), |m| format!(": {m}"))
            ));
        }
        Ok(body)
    };
    let body = match tokio::time::timeout(limit, answer).await {
        Err(_) => {
            health.reason = Some(format!(
                "GET {url} got no answer within {} s",
                limit.as_secs_f64()
            ));
            return health;
        }
        Ok(Err(e)) => {
            health.reason = Some(e);
            return health;
        }
        Ok(Ok(body)) => body,
    };
    match parse_models(&body, &config.model) {
        Ok((models, context_length)) => {
            health.context_length = context_length;
            if models.iter().any(|m| m == &config.model) {
                health.ok = true;
            } else {
                health.reason = Some(format!(
                    "the remote does not serve {:?}; its /v1/models lists {}",
                    config.model,
                    if models.is_empty() {
                        "nothing".to_owned()
                    } else {
                        models.join(", ")
                    }
                ));
            }
            health.models = models;
        }
        Err(e) => health.reason = Some(format!("GET {url}: {e}")),
    }
    health
}

/// The ids of an OpenAI `/v1/models` list, and `max_model_len` (vLLM) of `model`.
fn parse_models(body: &str, model: &str) -> Result<(Vec<String>, Option<u32>), String> {
    #[derive(Deserialize)]
    struct List {
        data: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        id: String,
        #[serde(default)]
        max_model_len: Option<u32>,
    }
    let list: List =
        serde_json::from_str(body).map_err(|e| format!("not an OpenAI model list ({e})"))?;
    let context = list
        .data
        .iter()
        .find(|i| i.id == model)
        .and_then(|i| i.max_model_len);
    Ok((list.data.into_iter().map(|i| i.id).collect(), context))
}

/// An error's cause chain in one line, naming the remote.
fn describe(e: &reqwest::Error, config: &RemoteConfig) -> String {
    let mut text = if e.is_connect() {
        format!("cannot connect to {}", config.base())
    } else if e.is_timeout() {
        format!(
            "no connection to {} within connect_timeout_s = {} s",
            config.base(),
            config.connect_timeout_s
        )
    } else {
        format!("request to {} failed", config.base())
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// The body, at most [`MAX_BODY_BYTES`], as text (empty when it cannot be read).
async fn read_body(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_BODY_BYTES {
            body.truncate(MAX_BODY_BYTES);
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The message of an OpenAI (`{"error": {"message"}}`) or Ollama/llama-server
/// (`{"error": "…"}`) error body; else the text itself when short.
fn error_message(body: &str) -> Option<String> {
    let v: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => {
            let t = body.trim();
            return (!t.is_empty() && t.len() <= 300).then(|| t.to_owned());
        }
    };
    let e = v.get("error").unwrap_or(&v);
    e.get("message")
        .and_then(|m| m.as_str())
        .or_else(|| e.as_str())
        .or_else(|| v.get("detail").and_then(|d| d.as_str()))
        .map(str::to_owned)
}

/// The backend: in r1d itself, never in a plugin file; the plugin host gives it out when a
/// load names backend `remote`.
pub struct RemoteBackend {
    remotes: Arc<Remotes>,
    report: ProbeReport,
}

impl RemoteBackend {
    /// The backend over `remotes`.
    pub fn new(remotes: Arc<Remotes>) -> RemoteBackend {
        RemoteBackend {
            remotes,
            report: ProbeReport {
                available: true,
                score: 0,
                formats: vec![BACKEND.to_owned()],
                devices: Vec::new(),
                reason: None,
            },
        }
    }
}

fn call_error(status: r1_plugin_abi::R1Status, message: String) -> BackendError {
    BackendError::Call {
        backend: BACKEND.to_owned(),
        status,
        message,
    }
}

impl Backend for RemoteBackend {
    fn name(&self) -> &str {
        BACKEND
    }

    /// r1d's own version: the backend is part of it.
    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn probe_report(&self) -> &ProbeReport {
        &self.report
    }

    /// "Loads" `remote:NAME`: checks the remote's health now; a remote that fails it is not
    /// loaded, with the reason.
    fn load(
        &self,
        params: &LoadParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Box<dyn LoadedModel>, BackendError> {
        let name = params
            .path
            .strip_prefix(PATH_PREFIX)
            .unwrap_or(&params.path);
        let known = || {
            self.remotes
                .views()
                .iter()
                .map(|v| v.config.name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((config, client)) = self.remotes.find(name) else {
            return Err(call_error(
                r1_plugin_abi::R1_ERR_LOAD_FAILED,
                format!(
                    "no [[remote]] named {name:?} in the config (configured: {})",
                    if known().is_empty() {
                        "none".into()
                    } else {
                        known()
                    }
                ),
            ));
        };
        if !progress(0.0) {
            return Err(call_error(
                r1_plugin_abi::R1_ERR_CANCELLED,
                "load cancelled".into(),
            ));
        }
        let health = self.remotes.handle.block_on(check(&config, &client));
        self.remotes.record(&config, health.clone());
        if !health.ok {
            return Err(call_error(
                r1_plugin_abi::R1_ERR_LOAD_FAILED,
                format!(
                    "remote {} ({}) fails its health check: {}",
                    config.name(),
                    config.url,
                    health.reason.unwrap_or_default()
                ),
            ));
        }
        progress(1.0);
        let variant = config.variant();
        let info = ModelInfo {
            path: config.path(),
            name: Some(config.model.clone()),
            architecture: variant.map(|v| format!("{:?}", v.architecture).to_ascii_lowercase()),
            parameters: variant.map_or(0, |v| v.parameters),
            layers: variant.map_or(0, |v| v.layers),
            trained_context_length: variant.map_or(0, |v| v.trained_context),
            context_length: health.context_length.unwrap_or(0),
            parallel_sequences: config.parallel,
            ..ModelInfo::default()
        };
        Ok(Box::new(RemoteModel {
            config,
            client,
            handle: self.remotes.handle.clone(),
            info,
            remotes: self.remotes.clone(),
        }))
    }

    fn estimate(&self, _params: &LoadParams) -> Result<Option<Estimate>, BackendError> {
        Ok(None)
    }
}

/// A remote model "resident": the endpoint, checked healthy at load.
pub struct RemoteModel {
    /// The remote's settings when it was loaded (each request takes the current ones from
    /// `remotes`: a reloaded config's `url` or `api_key_file` applies to the next request).
    config: RemoteConfig,
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
    info: ModelInfo,
    remotes: Arc<Remotes>,
}

/// What the engine asks a remote for: the conversation and the client's sampling.
#[derive(Debug, Clone)]
pub struct ConversationRequest<'a> {
    /// The conversation as the client sent it.
    pub messages: &'a [Message],
    /// Sampling as the client set it (`None` fields: the remote's defaults).
    pub sampling: &'a crate::engine::Sampling,
    /// Most tokens to generate (`max_tokens`); `None` = the remote's limit.
    pub max_tokens: Option<u32>,
}

/// One streamed event of a remote answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// The remote accepted the request (HTTP 200, before any text).
    Accepted,
    /// Reasoning text (`reasoning_content` or `reasoning`).
    Reasoning(String),
    /// Answer text (`content`; may hold `<think>` tags when the remote does not split them).
    Content(String),
}

/// What the caller of [`ConversationModel::chat`] wants after each call of its `on_delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// More text.
    More,
    /// No more text (a stop string matched in r1d): the rest of the answer is read only for
    /// the `usage` the remote sends at its end, for at most [`DRAIN_LIMIT`], without handing
    /// on deltas; then the request is closed. Sticky: a later `More` does not undo it.
    Drain,
    /// Nothing more (the client went away or cancelled): close the request now.
    Stop,
}

/// How long r1d reads on after a stop string matched inside r1d, for the remote's `usage`
/// (the remote was sent the same `stop`, so it usually ends at once).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// A model that takes the conversation itself (its server's template and reasoning parser).
pub trait ConversationModel {
    /// Sends the conversation and hands each [`Delta`] to `on_delta`, and `None` about every
    /// 250 ms while waiting, so the caller can look whether its client is still there;
    /// [`Flow::Stop`] ends the answer and closes the upstream request, [`Flow::Drain`] takes no
    /// more text but waits (up to [`DRAIN_LIMIT`]) for the remote's usage. Usage is the
    /// remote's `usage` (counted by its tokenizer); when it sends none, the completion tokens
    /// are the text events it streamed (one per token with vLLM, SGLang, llama-server and
    /// r1d) and the prompt tokens 0.
    ///
    /// # Errors
    /// Each names the remote. [`BackendError::Call`] with `R1_ERR_INVALID_ARGUMENT` when it
    /// refused the request (HTTP 4xx other than 401/403/408/429, or a field r1d cannot pass);
    /// [`BackendError::Upstream`] when the remote failed: `timeout: true` for a time limit
    /// (`connect_timeout_s`, `first_byte_timeout_s`, `stall_timeout_s`, its HTTP 408 or 504),
    /// `false` for the rest (no connection, its key refused, HTTP 429 and 5xx, a stream that
    /// breaks or ends early, an error event in the stream); [`BackendError::Call`] with
    /// `R1_ERR_BACKEND` when r1d cannot read the key file.
    fn chat(
        &self,
        request: &ConversationRequest<'_>,
        on_delta: &mut dyn FnMut(Option<Delta>) -> Flow,
    ) -> Result<GenerateResult, BackendError>;
}

impl LoadedModel for RemoteModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn backend_name(&self) -> &str {
        BACKEND
    }

    fn tokenize(
        &self,
        _text: &str,
        _add_special: bool,
        _parse_special: bool,
    ) -> Result<Vec<i32>, BackendError> {
        Err(call_error(
            r1_plugin_abi::R1_ERR_UNSUPPORTED,
            format!(
                "the remote model {} takes conversations, not token ids",
                self.config.name()
            ),
        ))
    }

    fn generate(
        &self,
        _request: &GenerateRequest,
        _on_token: &mut dyn FnMut(&[u8], i32) -> bool,
    ) -> Result<GenerateResult, BackendError> {
        Err(call_error(
            r1_plugin_abi::R1_ERR_UNSUPPORTED,
            format!(
                "the remote model {} takes conversations, not a rendered prompt",
                self.config.name()
            ),
        ))
    }

    fn conversation(&self) -> Option<&dyn ConversationModel> {
        Some(self)
    }
}

/// The `/v1/chat/completions` body for `request`: what the remote honours is passed through,
/// what r1d cannot pass is refused by name.
///
/// # Errors
/// The field r1d cannot pass to a remote, and why.
pub fn request_body(
    model: &str,
    request: &ConversationRequest<'_>,
) -> Result<serde_json::Value, String> {
    let s = request.sampling;
    if s.repeat_penalty.is_some() || s.repeat_last_n.is_some() {
        return Err(
            "repeat_penalty / repeat_last_n (Ollama's options) cannot be passed to a \
                    remote OpenAI-compatible server; use presence_penalty or frequency_penalty"
                .into(),
        );
    }
    if s.json_wrap.is_some() {
        return Err("tools: a forced tool call cannot be passed to a remote model yet".into());
    }
    let messages: Vec<serde_json::Value> = request
        .messages
        .iter()
        .map(|m| serde_json::to_value(m).unwrap_or_default())
        .collect();
    let mut body = serde_json::json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let obj = body.as_object_mut().expect("an object");
    let mut put = |key: &str, v: serde_json::Value| {
        obj.insert(key.to_owned(), v);
    };
    if let Some(n) = request.max_tokens {
        put("max_tokens", n.into());
    }
    if let Some(t) = s.temperature {
        put("temperature", f64::from(t).into());
    }
    if let Some(p) = s.top_p {
        put("top_p", f64::from(p).into());
    }
    // Not OpenAI's, but vLLM's, SGLang's, llama-server's and r1d's extensions; a remote that
    // does not know them refuses them (its 400 reaches the client).
    if let Some(k) = s.top_k {
        put("top_k", k.into());
    }
    if let Some(p) = s.min_p {
        put("min_p", f64::from(p).into());
    }
    if let Some(seed) = s.seed {
        put("seed", seed.into());
    }
    if !s.stop.is_empty() {
        put("stop", s.stop.clone().into());
    }
    if let Some(p) = s.presence_penalty {
        put("presence_penalty", f64::from(p).into());
    }
    if let Some(p) = s.frequency_penalty {
        put("frequency_penalty", f64::from(p).into());
    }
    if !s.logit_bias.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = s
            .logit_bias
            .iter()
            .map(|(id, b)| (id.to_string(), f64::from(*b).into()))
            .collect();
        put("logit_bias", map.into());
    }
    if let Some(schema) = &s.json_schema {
        let schema: serde_json::Value = serde_json::from_str(schema)
            .map_err(|e| format!("response_format: the JSON schema is not JSON ({e})"))?;
        put(
            "response_format",
            serde_json::json!({"type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": true}}),
        );
    }
    Ok(body)
}

/// What one SSE event of a streamed chat completion says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// Text, in order.
    pub deltas: Vec<Delta>,
    /// `finish_reason` when the choice ended.
    pub finish_reason: Option<String>,
    /// `usage`: prompt and completion tokens.
    pub usage: Option<(u32, u32)>,
}

/// Reads one `data:` payload of a streamed chat completion (OpenAI's chunk, with
/// `reasoning_content` — DeepSeek's API, vLLM, SGLang, llama-server, r1d — or `reasoning` —
/// vLLM ≥ 0.10, OpenRouter — beside `content`).
///
/// # Errors
/// An `error` object in the stream (vLLM and SGLang send one when generation fails), or a
/// payload that is not a chunk.
pub fn parse_chunk(data: &str) -> Result<Chunk, String> {
    let v: serde_json::Value =
        serde_json::from_str(data).map_err(|e| format!("an event that is not JSON ({e})"))?;
    if v.get("error").is_some() {
        return Err(error_message(data).unwrap_or_else(|| data.to_owned()));
    }
    let mut chunk = Chunk::default();
    if let Some(choice) = v
        .get("choices")
        .and_then(|c| c.as_array())
        .and_then(|c| c.first())
    {
        let delta = choice.get("delta").unwrap_or(&serde_json::Value::Null);
        for key in ["reasoning_content", "reasoning"] {
            if let Some(t) = delta.get(key).and_then(|t| t.as_str()) {
                if !t.is_empty() {
                    chunk.deltas.push(Delta::Reasoning(t.to_owned()));
                    break;
                }
            }
        }
        if let Some(t) = delta.get("content").and_then(|t| t.as_str()) {
            if !t.is_empty() {
                chunk.deltas.push(Delta::Content(t.to_owned()));
            }
        }
        if delta.get("tool_calls").is_some_and(|t| !t.is_null()) {
            return Err(
                "the remote answered with tool calls, which r1d does not pass on from \
                        a remote yet"
                    .into(),
            );
        }
        chunk.finish_reason = choice
            .get("finish_reason")
            .and_then(|f| f.as_str())
            .map(str::to_owned);
    } else if v.get("choices").is_none() && v.get("usage").is_none() {
        return Err("an event without choices or usage".into());
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        let n = |k: &str| u.get(k).and_then(|x| x.as_u64()).unwrap_or(0) as u32;
        chunk.usage = Some((n("prompt_tokens"), n("completion_tokens")));
    }
    Ok(chunk)
}

/// Waits for `fut` up to `limit`, handing `None` to `on_delta` every [`POLL`]; `Ok(None)`
/// when `on_delta` said stop.
async fn wait<F: std::future::Future>(
    fut: F,
    limit: Duration,
    on_delta: &mut dyn FnMut(Option<Delta>) -> Flow,
) -> Result<Option<F::Output>, ()> {
    let started = Instant::now();
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Ok(Some(out)),
            () = tokio::time::sleep(POLL) => {
                if on_delta(None) == Flow::Stop {
                    return Ok(None);
                }
                if started.elapsed() >= limit {
                    return Err(());
                }
            }
        }
    }
}

impl RemoteModel {
    fn fail(&self, status: r1_plugin_abi::R1Status, what: String) -> BackendError {
        call_error(
            status,
            format!(
                "remote {} ({}): {what}",
                self.config.name(),
                self.config.url
            ),
        )
    }

    /// The upstream failed (`timeout`: did not answer in time), naming the remote.
    fn upstream(&self, timeout: bool, what: String) -> BackendError {
        BackendError::Upstream {
            timeout,
            message: format!(
                "remote {} ({}): {what}",
                self.config.name(),
                self.config.url
            ),
        }
    }

    async fn stream(
        &self,
        body: serde_json::Value,
        on_delta: &mut dyn FnMut(Option<Delta>) -> Flow,
    ) -> Result<GenerateResult, BackendError> {
        use r1_plugin_abi::{R1_ERR_BACKEND, R1_ERR_INVALID_ARGUMENT};
        let cancelled = || GenerateResult {
            finish_reason: FinishReason::Cancelled,
            prompt_tokens: 0,
            cached_prompt_tokens: 0,
            completion_tokens: 0,
            prompt_ms: 0.0,
            generation_ms: 0.0,
            time_to_first_token_ms: None,
        };
        let started = Instant::now();
        let mut req = self
            .client
            .post(self.config.endpoint("chat/completions"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default());
        if let Some(file) = &self.config.api_key_file {
            let key = read_key(file)
                .map_err(|e| self.fail(R1_ERR_BACKEND, format!("api_key_file: {e}")))?;
            req = req.bearer_auth(key);
        }
        let first_byte = Duration::from_secs_f64(self.config.first_byte_timeout_s);
        let resp = match wait(req.send(), first_byte, on_delta).await {
            Ok(None) => return Ok(cancelled()),
            Err(()) => {
                return Err(self.upstream(
                    true,
                    format!(
                        "no answer within first_byte_timeout_s = {} s",
                        self.config.first_byte_timeout_s
                    ),
                ))
            }
            Ok(Some(Err(e))) => {
                return Err(self.upstream(e.is_timeout(), describe(&e, &self.config)))
            }
            Ok(Some(Ok(resp))) => resp,
        };
        let status = resp.status();
        if !status.is_success() {
            let text = tokio::time::timeout(Duration::from_secs(10), read_body(resp))
                .await
                .unwrap_or_default();
            let message = error_message(&text).unwrap_or_else(|| "no error message".into());
            let code = status.as_u16();
            // The client's request is at fault only when the remote refused it (4xx other
            // than the key, a time limit or its rate limit); the rest is a gateway's failure:
            // 504 when the remote timed out itself, else 502.
            return Err(match code {
                401 | 403 => self.upstream(
                    false,
                    format!("refused r1d's key (HTTP {status}): {message}; check api_key_file"),
                ),
                408 | 504 => self.upstream(true, format!("HTTP {status}: {message}")),
                429 => self.upstream(false, format!("HTTP {status}: {message}")),
                400..=499 => self.fail(
                    R1_ERR_INVALID_ARGUMENT,
                    format!("refused the request (HTTP {status}): {message}"),
                ),
                _ => self.upstream(
                    false,
                    format!("the remote failed (HTTP {status}): {message}"),
                ),
            });
        }
        if on_delta(Some(Delta::Accepted)) == Flow::Stop {
            return Ok(cancelled());
        }
        let mut events = resp.bytes_stream().eventsource();
        let stall = Duration::from_secs_f64(self.config.stall_timeout_s);
        let mut result = cancelled();
        let mut finish: Option<String> = None;
        let mut first: Option<Instant> = None;
        let mut done = false;
        // Since when r1d reads on only for the usage (a stop string matched in r1d).
        let mut draining: Option<Instant> = None;
        let mut text_events = 0u32;
        let mut usage = false;
        loop {
            let limit = match draining {
                Some(since) => stall.min(DRAIN_LIMIT.saturating_sub(since.elapsed())),
                None => stall,
            };
            let event = match wait(events.next(), limit, on_delta).await {
                Ok(None) => return Ok(result),
                // Draining: no usage in time; the request is closed with what was counted.
                Err(()) | Ok(Some(Some(Err(_)))) if draining.is_some() => break,
                Err(()) => {
                    return Err(self.upstream(
                        true,
                        format!(
                            "the answer stalled: nothing for stall_timeout_s = {} s",
                            self.config.stall_timeout_s
                        ),
                    ))
                }
                Ok(Some(None)) => break,
                Ok(Some(Some(Err(e)))) => {
                    return Err(self.upstream(false, format!("the stream broke: {e}")))
                }
                Ok(Some(Some(Ok(event)))) => event,
            };
            let data = event.data.trim();
            if data == "[DONE]" {
                done = true;
                break;
            }
            if data.is_empty() {
                continue;
            }
            let chunk = parse_chunk(data)
                .map_err(|e| self.upstream(false, format!("error in the stream: {e}")))?;
            if let Some((p, c)) = chunk.usage {
                result.prompt_tokens = p;
                result.completion_tokens = c;
                usage = true;
            }
            if chunk.finish_reason.is_some() {
                finish = chunk.finish_reason;
            }
            if draining.is_some() {
                if usage {
                    break;
                }
                continue;
            }
            if !chunk.deltas.is_empty() {
                text_events += 1;
            }
            for delta in chunk.deltas {
                first.get_or_insert_with(Instant::now);
                match on_delta(Some(delta)) {
                    Flow::More => {}
                    Flow::Drain => {
                        draining = Some(Instant::now());
                        break;
                    }
                    Flow::Stop => return Ok(result),
                }
            }
            if draining.is_some() && usage {
                break;
            }
        }
        if !usage {
            result.completion_tokens = text_events;
        }
        // An answer ends with a `finish_reason` (OpenAI's chat completion chunk object); a
        // stream that ends without one was cut, whether or not `[DONE]` came. An answer r1d
        // stopped itself was complete for the client.
        if draining.is_some() {
            finish = Some("stop".into());
        }
        if finish.is_none() {
            return Err(self.upstream(
                false,
                if done {
                    "the stream ended with [DONE] before any finish_reason: the answer was cut"
                        .into()
                } else {
                    "the stream ended before the answer did (no finish_reason, no [DONE]; \
                     is the url an OpenAI-compatible server's?)"
                        .into()
                },
            ));
        }
        result.finish_reason = match finish.as_deref() {
            Some("length") => FinishReason::Length,
            _ => FinishReason::Stop,
        };
        if let Some(first) = first {
            result.prompt_ms = first.duration_since(started).as_secs_f64() * 1e3;
            result.generation_ms = first.elapsed().as_secs_f64() * 1e3;
        }
        Ok(result)
    }
}

impl ConversationModel for RemoteModel {
    fn chat(
        &self,
        request: &ConversationRequest<'_>,
        on_delta: &mut dyn FnMut(Option<Delta>) -> Flow,
    ) -> Result<GenerateResult, BackendError> {
        // The remote as the config says now: a reload that changed its `url`, key file or
        // timeouts applies from the next request on.
        let Some((config, client)) = self.remotes.find(self.config.name()) else {
            return Err(self.fail(
                r1_plugin_abi::R1_ERR_BACKEND,
                "it is no longer in the config (a reload removed it); r1d chooses again".into(),
            ));
        };
        let current = RemoteModel {
            config,
            client,
            handle: self.handle.clone(),
            info: self.info.clone(),
            remotes: self.remotes.clone(),
        };
        let body = request_body(&current.config.model, request)
            .map_err(|e| call_error(r1_plugin_abi::R1_ERR_INVALID_ARGUMENT, e))?;
        // The answer's own thread blocks on the runtime; dropping the future (any return)
        // drops the response, which closes the upstream connection.
        self.handle.block_on(current.stream(body, on_delta))
    }
}

/// A remote as a planning candidate: its variant, health and expected speed.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteCandidate {
    /// Its `[[remote]]` name.
    pub name: String,
    /// `remote:NAME`, the load path.
    pub path: String,
    /// Base URL.
    pub url: String,
    /// The model id on the remote.
    pub model: String,
    /// The catalog variant the model id names.
    pub variant: Option<&'static crate::catalog::Variant>,
    /// Healthy at the last check.
    pub healthy: bool,
    /// Why not healthy, or "not checked yet".
    pub reason: Option<String>,
    /// `tokens_per_s` from the config.
    pub tokens_per_s: Option<f64>,
}

impl From<&RemoteView> for RemoteCandidate {
    fn from(v: &RemoteView) -> RemoteCandidate {
        RemoteCandidate {
            name: v.config.name().to_owned(),
            path: v.config.path(),
            url: v.config.url.clone(),
            model: v.config.model.clone(),
            variant: v.config.variant(),
            healthy: v.health.ok,
            reason: if v.health.checked_at.is_none() {
                Some("not checked yet".into())
            } else {
                v.health.reason.clone()
            },
            tokens_per_s: v.config.tokens_per_s,
        }
    }
}

/// The local side of a choice: the best present local variant, when there is one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalChoice {
    /// Its variant's rank (`Variant::quality`).
    pub quality: u32,
    /// Its variant id.
    pub variant: &'static str,
    /// Whether it reaches `[planner] min_tokens_per_s`.
    pub fast_enough: bool,
}

/// Which remote to serve instead of the local choice, if any, and why (one line). Pure.
///
/// `prefer = local`: a local variant that is fast enough wins; else the best healthy remote
/// (by variant rank; a remote whose model is not a catalog variant ranks lowest). `best`: the
/// best healthy remote when it ranks above the local variant, or equal and the local one is
/// not fast enough. Unhealthy remotes are skipped with their reason; a remote whose
/// `tokens_per_s` is under `min_tokens_per_s` is skipped too.
pub fn choose(
    local: Option<LocalChoice>,
    remotes: &[RemoteCandidate],
    prefer: Prefer,
    min_tokens_per_s: f64,
) -> (Option<usize>, String) {
    let mut skipped = Vec::new();
    let usable: Vec<usize> = remotes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            if !r.healthy {
                skipped.push(format!(
                    "remote {} skipped: {}",
                    r.name,
                    r.reason.as_deref().unwrap_or("unhealthy")
                ));
                return false;
            }
            if let Some(t) = r.tokens_per_s.filter(|&t| t < min_tokens_per_s) {
                skipped.push(format!(
                    "remote {} skipped: {t} tokens/s is under min_tokens_per_s = {min_tokens_per_s}",
                    r.name
                ));
                return false;
            }
            true
        })
        .map(|(i, _)| i)
        .collect();
    let rank = |r: &RemoteCandidate| r.variant.map_or(0, |v| v.quality);
    // The first of the best (config order breaks ties).
    let best = usable
        .iter()
        .copied()
        .rev()
        .max_by_key(|&i| rank(&remotes[i]));
    let skipped = if skipped.is_empty() {
        String::new()
    } else {
        format!(" ({})", skipped.join("; "))
    };
    let describe = |i: usize| {
        let r = &remotes[i];
        format!(
            "remote {} ({} at {}{})",
            r.name,
            r.model,
            r.url,
            r.variant
                .map_or(String::new(), |v| format!(", variant {}", v.id))
        )
    };
    let Some(b) = best else {
        return (None, format!("no healthy remote{skipped}"));
    };
    match (local, prefer) {
        (None, _) => (
            Some(b),
            format!("{}: no local variant is present{skipped}", describe(b)),
        ),
        (Some(l), Prefer::Local) if l.fast_enough => (
            None,
            format!(
                "the local {} reaches min_tokens_per_s ([planner] prefer = \"local\"), so {} \
                 stays a fallback{skipped}",
                l.variant,
                describe(b)
            ),
        ),
        (Some(l), Prefer::Local) => (
            Some(b),
            format!(
                "{}: the local {} is under min_tokens_per_s{skipped}",
                describe(b),
                l.variant
            ),
        ),
        (Some(l), Prefer::Best) => {
            let r = rank(&remotes[b]);
            if r > l.quality || (r == l.quality && !l.fast_enough) {
                (
                    Some(b),
                    format!(
                        "{}: ranks above the local {} ([planner] prefer = \"best\"){skipped}",
                        describe(b),
                        l.variant
                    ),
                )
            } else {
                (
                    None,
                    format!(
                        "the local {} ranks as high as {} ([planner] prefer = \"best\"){skipped}",
                        l.variant,
                        describe(b)
                    ),
                )
            }
        }
    }
}

/// `[planner] prefer`'s value as the config writes it (`local`, `best`).
pub fn prefer_name(prefer: Prefer) -> &'static str {
    match prefer {
        Prefer::Local => "local",
        Prefer::Best => "best",
    }
}

/// Why the remote `i` of `views` is served or not, given the selection's verdict (`pick`,
/// `why`, from [`crate::store::select::remote_verdict`]). Pure.
pub fn verdict_for(
    views: &[RemoteView],
    i: usize,
    pick: Option<usize>,
    why: &str,
    min_tokens_per_s: f64,
) -> String {
    let c = RemoteCandidate::from(&views[i]);
    if pick == Some(i) {
        return format!("served: {why}");
    }
    if !c.healthy {
        return format!("skipped: {}", c.reason.as_deref().unwrap_or("unhealthy"));
    }
    if let Some(t) = c.tokens_per_s.filter(|&t| t < min_tokens_per_s) {
        return format!("skipped: {t} tokens/s is under min_tokens_per_s = {min_tokens_per_s}");
    }
    match pick {
        Some(other) => format!(
            "not served: remote {} is ({why})",
            views[other].config.name()
        ),
        None => format!("not served: {why}"),
    }
}

/// The selection line of a plan with remotes: `With [planner] prefer = "…": serve remote NAME:
/// WHY` or `… serve the local choice: WHY`. Pure.
pub fn selection_line(
    views: &[RemoteView],
    pick: Option<usize>,
    why: &str,
    prefer: Prefer,
) -> String {
    format!(
        "With [planner] prefer = \"{}\": {}: {why}",
        prefer_name(prefer),
        match pick {
            Some(i) => format!("serve remote {}", views[i].config.name()),
            None => "serve the local choice".to_owned(),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(name: &str, model: &str, healthy: bool) -> RemoteCandidate {
        RemoteCandidate {
            name: name.into(),
            path: format!("remote:{name}"),
            url: "http://cluster:8000".into(),
            model: model.into(),
            variant: variant_of(model),
            healthy,
            reason: (!healthy).then(|| "cannot connect to http://cluster:8000".into()),
            tokens_per_s: None,
        }
    }

    fn local(variant: &'static str, fast_enough: bool) -> LocalChoice {
        LocalChoice {
            quality: crate::catalog::variant(variant).unwrap().quality,
            variant,
            fast_enough,
        }
    }

    #[test]
    fn the_plan_says_of_each_remote_why_it_is_served_or_not() {
        let config = |name: &str, model: &str| RemoteConfig {
            url: "http://vllm.example:8000".into(),
            model: model.into(),
            name: Some(name.into()),
            api_key_file: None,
            connect_timeout_s: 5.0,
            first_byte_timeout_s: 300.0,
            stall_timeout_s: 60.0,
            health_interval_s: 30.0,
            tokens_per_s: None,
            parallel: 8,
        };
        let healthy = Health {
            checked_at: Some(SystemTime::now()),
            ok: true,
            reason: None,
            models: vec!["deepseek-ai/DeepSeek-R1".into()],
            context_length: Some(163_840),
        };
        let views = [
            RemoteView {
                config: config("vllm", "deepseek-ai/DeepSeek-R1"),
                health: healthy.clone(),
            },
            RemoteView {
                config: config("down", "deepseek-ai/DeepSeek-R1"),
                health: Health {
                    ok: false,
                    reason: Some("cannot connect to http://vllm.example:8000".into()),
                    ..healthy.clone()
                },
            },
        ];
        let candidates: Vec<RemoteCandidate> = views.iter().map(RemoteCandidate::from).collect();
        let (pick, why) = choose(
            Some(local("deepseek-r1:7b", true)),
            &candidates,
            Prefer::Best,
            10.0,
        );
        assert_eq!(pick, Some(0));
        assert_eq!(
            selection_line(&views, pick, &why, Prefer::Best),
            format!("With [planner] prefer = \"best\": serve remote vllm: {why}")
        );
        assert!(
            verdict_for(&views, 0, pick, &why, 10.0).starts_with("served: remote vllm"),
            "{why}"
        );
        assert_eq!(
            verdict_for(&views, 1, pick, &why, 10.0),
            "skipped: cannot connect to http://vllm.example:8000"
        );
    }

    #[test]
    fn model_ids_name_their_catalog_variant() {
        assert_eq!(
            variant_of("deepseek-ai/DeepSeek-R1").unwrap().id,
            "deepseek-r1:671b"
        );
        assert_eq!(
            variant_of("unsloth/DeepSeek-R1-GGUF").unwrap().id,
            "deepseek-r1:671b"
        );
        assert_eq!(
            variant_of("DeepSeek-R1-Distill-Qwen-7B").unwrap().id,
            "deepseek-r1:7b"
        );
        assert_eq!(variant_of("deepseek-r1:14b").unwrap().id, "deepseek-r1:14b");
        assert!(variant_of("meta-llama/Llama-3.1-8B").is_none());
    }

    #[test]
    fn a_fast_enough_local_variant_wins_unless_prefer_is_best() {
        let remotes = [remote("cluster", "deepseek-ai/DeepSeek-R1", true)];
        let (pick, why) = choose(
            Some(local("deepseek-r1:7b", true)),
            &remotes,
            Prefer::Local,
            10.0,
        );
        assert_eq!(pick, None, "{why}");
        assert!(why.contains("stays a fallback"), "{why}");
        let (pick, why) = choose(
            Some(local("deepseek-r1:7b", false)),
            &remotes,
            Prefer::Local,
            10.0,
        );
        assert_eq!(pick, Some(0), "{why}");
        let (pick, why) = choose(
            Some(local("deepseek-r1:7b", true)),
            &remotes,
            Prefer::Best,
            10.0,
        );
        assert_eq!(pick, Some(0), "{why}");
        assert!(
            why.contains("ranks above the local deepseek-r1:7b"),
            "{why}"
        );
        // Same variant both sides: local while it is fast enough.
        let same = [remote(
            "cluster",
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
            true,
        )];
        assert_eq!(
            choose(
                Some(local("deepseek-r1:7b", true)),
                &same,
                Prefer::Best,
                10.0
            )
            .0,
            None
        );
        assert_eq!(
            choose(
                Some(local("deepseek-r1:7b", false)),
                &same,
                Prefer::Best,
                10.0
            )
            .0,
            Some(0)
        );
    }

    #[test]
    fn an_unhealthy_remote_is_skipped_with_its_reason() {
        let remotes = [
            remote("down", "deepseek-ai/DeepSeek-R1", false),
            remote("up", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", true),
        ];
        let (pick, why) = choose(None, &remotes, Prefer::Local, 10.0);
        assert_eq!(pick, Some(1), "{why}");
        assert!(
            why.contains("remote down skipped: cannot connect to http://cluster:8000"),
            "{why}"
        );
        let (pick, why) = choose(
            Some(local("deepseek-r1:1.5b", false)),
            &remotes[..1],
            Prefer::Best,
            10.0,
        );
        assert_eq!(pick, None);
        assert!(
            why.starts_with("no healthy remote (remote down skipped"),
            "{why}"
        );
    }

    #[test]
    fn a_remote_slower_than_the_minimum_is_skipped() {
        let mut r = remote("slow", "deepseek-ai/DeepSeek-R1", true);
        r.tokens_per_s = Some(4.0);
        let (pick, why) = choose(None, &[r], Prefer::Local, 10.0);
        assert_eq!(pick, None);
        assert!(
            why.contains("4 tokens/s is under min_tokens_per_s = 10"),
            "{why}"
        );
    }

    #[test]
    fn reasoning_comes_from_reasoning_content_or_reasoning() {
        let c = parse_chunk(
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"},"finish_reason":null}]}"#,
        )
        .unwrap();
        assert_eq!(c.deltas, vec![Delta::Reasoning("hmm".into())]);
        let c =
            parse_chunk(r#"{"choices":[{"delta":{"reasoning":"so","content":null}}]}"#).unwrap();
        assert_eq!(c.deltas, vec![Delta::Reasoning("so".into())]);
        let c = parse_chunk(
            r#"{"choices":[{"delta":{"content":"<think>a</think>b"},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert_eq!(c.deltas, vec![Delta::Content("<think>a</think>b".into())]);
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        let c = parse_chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
        )
        .unwrap();
        assert_eq!(c.usage, Some((12, 3)));
    }

    #[test]
    fn an_error_event_in_the_stream_is_an_error_naming_its_message() {
        let e =
            parse_chunk(r#"{"error":{"message":"CUDA out of memory","code":500}}"#).unwrap_err();
        assert_eq!(e, "CUDA out of memory");
        assert!(parse_chunk("not json").is_err());
    }

    #[test]
    fn fields_a_remote_cannot_take_are_refused_by_name() {
        let messages = [Message {
            role: "user".into(),
            content: "hi".into(),
            tool_calls: None,
            tool_call_id: None,
        }];
        let mut sampling = crate::engine::Sampling {
            temperature: Some(0.5),
            stop: vec!["END".into()],
            seed: Some(7),
            ..Default::default()
        };
        let req = ConversationRequest {
            messages: &messages,
            sampling: &sampling,
            max_tokens: Some(9),
        };
        let body = request_body("m", &req).unwrap();
        assert_eq!(body["model"], "m");
        assert_eq!(body["stream"], true);
        assert_eq!(body["max_tokens"], 9);
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["seed"], 7);
        assert_eq!(body["stop"], serde_json::json!(["END"]));
        assert_eq!(body["messages"][0]["content"], "hi");
        assert!(body.get("top_p").is_none());
        sampling.repeat_penalty = Some(1.1);
        let req = ConversationRequest {
            messages: &messages,
            sampling: &sampling,
            max_tokens: None,
        };
        assert!(request_body("m", &req)
            .unwrap_err()
            .contains("repeat_penalty"));
    }

    #[test]
    fn the_config_is_checked_and_the_key_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = RemoteConfig {
            url: "https://cluster.example:8000/v1".into(),
            model: "deepseek-ai/DeepSeek-R1".into(),
            name: None,
            api_key_file: None,
            connect_timeout_s: 5.0,
            first_byte_timeout_s: 300.0,
            stall_timeout_s: 60.0,
            health_interval_s: 30.0,
            tokens_per_s: None,
            parallel: 8,
        };
        assert_eq!(
            base.endpoint("models"),
            "https://cluster.example:8000/v1/models"
        );
        validate(std::slice::from_ref(&base)).unwrap();
        let bad = RemoteConfig {
            url: "ftp://x".into(),
            ..base.clone()
        };
        assert!(validate(&[bad]).unwrap_err().contains("remote[0].url"));
        assert!(validate(&[base.clone(), base.clone()])
            .unwrap_err()
            .contains("a second remote named"));
        let spaced = RemoteConfig {
            name: Some("my cluster".into()),
            ..base.clone()
        };
        assert!(validate(&[spaced])
            .unwrap_err()
            .contains("remote[0].name \"my cluster\" must be a model name without spaces"));
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "sk-123\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let with_key = RemoteConfig {
            api_key_file: Some(key.clone()),
            ..base.clone()
        };
        let e = validate(std::slice::from_ref(&with_key)).unwrap_err();
        assert!(
            e.contains("remote[0].api_key_file") && e.contains("mode 0644"),
            "{e}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        validate(&[with_key]).unwrap();
        assert_eq!(read_key(&key).unwrap(), "sk-123");
    }
}
