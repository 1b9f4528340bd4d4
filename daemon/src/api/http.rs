//! HTTP on a Unix socket (axum): the router, and the native routes `/r1/*` and `/health`.
//! The OpenAI routes are in [`super::openai`], the Ollama routes in [`super::ollama`].
//!
//! **Architecture invariant**: the `api` modules are the only ones that know HTTP and the JSON wire
//! shapes (`r1d_client::wire`). Errors are mapped once per route family: OpenAI routes answer with
//! the OpenAI error object, Ollama and native routes with `{"error": "..."}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use r1d_client::wire::{self, BackendEntry, BackendList, Health, ModelStatus};

use crate::backend::PluginHost;
use crate::engine::{Engine, EngineState, Snapshot};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// The plugin host (for `/r1/backends`).
    pub host: Arc<PluginHost>,
    /// The model store (`/r1/models`, `/r1/pull`, `/r1/use`, `/api/tags`).
    pub store: Arc<crate::store::Store>,
    /// The supervisor (`/r1/reload`, `/r1/events`, pins of `/r1/use`, `watch` in `/r1/status`).
    pub supervisor: crate::supervisor::Supervisor,
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(super::openai::routes())
        .merge(super::ollama::routes())
        .route("/health", get(health))
        .route("/r1/status", get(status))
        .route("/r1/backends", get(backends))
        .route("/r1/load", axum::routing::post(load))
        .route("/r1/unload", axum::routing::post(unload))
        .route("/r1/models", get(models))
        .route("/r1/pull", axum::routing::post(pull))
        .route("/r1/use", axum::routing::post(use_model))
        .route("/r1/reload", axum::routing::post(reload))
        .route("/r1/events", get(events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// `/health`: 200 while a model is served (also `degraded`), 503 otherwise.
async fn health(State(state): State<AppState>) -> Response {
    let snap = state.engine.snapshot();
    let code = if snap.state == EngineState::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: super::supervisor_wire::state(state.supervisor.reported_state(&snap)),
        error: snap.error.clone(),
        progress: snap.progress,
    };
    (code, Json(body)).into_response()
}

fn model_status(snap: &Snapshot) -> Option<ModelStatus> {
    snap.model.as_ref().map(|(info, backend)| ModelStatus {
        name: info.name.clone().unwrap_or_else(|| info.path.clone()),
        path: info.path.clone(),
        backend: backend.clone(),
        architecture: info.architecture.clone(),
        quantization: info.file_type.clone(),
        parameters: info.parameters,
        context_length: info.context_length,
        layers: info.layers,
        gpu_layers: info.gpu_layers,
        weights_bytes: info.memory.weights_bytes,
        kv_cache_bytes: info.memory.kv_cache_bytes,
    })
}

async fn status(State(state): State<AppState>) -> Json<wire::Status> {
    let snap = state.engine.snapshot();
    Json(wire::Status {
        version: env!("CARGO_PKG_VERSION").into(),
        state: super::supervisor_wire::state(state.supervisor.reported_state(&snap)),
        model: model_status(&snap),
        loading: snap.loading.as_ref().map(|p| p.display().to_string()),
        progress: snap.progress,
        error: snap.error.clone(),
        uptime_s: state.engine.uptime_s(),
        requests_served: state.engine.requests_served(),
        active_requests: state.engine.active_requests(),
        selection: state.supervisor.selection(),
        upgrades: upgrades_to_wire(&state.supervisor.upgrades()),
        more_memory: state.supervisor.more_memory(),
        watch: Some(super::supervisor_wire::watch_status(
            &state.supervisor.view(),
        )),
    })
}

async fn backends(State(state): State<AppState>) -> Json<BackendList> {
    let backends = state
        .host
        .records()
        .iter()
        .map(|r| BackendEntry {
            path: r.path.display().to_string(),
            name: r.name.clone(),
            version: r.version.clone(),
            available: r.error.is_none(),
            formats: r
                .probe
                .as_ref()
                .map(|p| p.formats.clone())
                .unwrap_or_default(),
            score: r.probe.as_ref().map(|p| p.score).unwrap_or(0),
            devices: r
                .probe
                .as_ref()
                .map(|p| p.devices.iter().map(|d| d.name.clone()).collect())
                .unwrap_or_default(),
            error: r.error.clone(),
        })
        .collect();
    Json(BackendList {
        plugin_dir: state.host.dir().display().to_string(),
        backends,
    })
}

fn native_error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `POST /r1/load`: replaces the resident model (the old one is unloaded first) and answers when
/// the new one is resident (200 with `/r1/status`'s body) or failed to load (422 naming why; the
/// previous model serves again). The file stays pinned through re-plans until `r1ctl use auto`
/// or a config edit of the model.
async fn load(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let mut de = serde_json::Deserializer::from_slice(&body);
    let req: wire::LoadRequest = match serde_path_to_error::deserialize(&mut de) {
        Ok(r) => r,
        Err(e) => {
            return native_error(
                StatusCode::BAD_REQUEST,
                format!("invalid request body: {e}"),
            )
        }
    };
    let spec = crate::engine::LoadSpec {
        params: r1_plugin_abi::json::LoadParams {
            path: req.path,
            context_length: req.context_length,
            gpu_layers: req.gpu_layers,
            threads: req.threads,
            ..Default::default()
        },
        backend: req.backend,
    };
    match state.supervisor.load(spec).await {
        Ok(_) => status(State(state)).await.into_response(),
        Err(e) => supervisor_error(e),
    }
}

/// `POST /r1/unload`: unloads the resident model; answers with `/r1/status`'s body.
async fn unload(State(state): State<AppState>) -> Response {
    match state.supervisor.unload().await {
        Ok(()) => status(State(state)).await.into_response(),
        Err(e) => supervisor_error(e),
    }
}

/// Unknown routes: the OpenAI error shape under `/v1`, `{"error": "…"}` elsewhere.
async fn not_found(method: Method, uri: Uri) -> Response {
    let message = format!("no route for {method} {}", uri.path());
    if uri.path().starts_with("/v1/") {
        return super::openai::not_found(message);
    }
    native_error(StatusCode::NOT_FOUND, message)
}

/// A known route called with the wrong method: 405, in the route family's error shape.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message = format!("{method} is not allowed on {}", uri.path());
    if uri.path().starts_with("/v1/") {
        return super::openai::method_not_allowed(message);
    }
    native_error(StatusCode::METHOD_NOT_ALLOWED, message)
}

// ---- Hardware and plan: `GET /r1/hardware`, `GET /r1/plan` ----

/// State of the hardware and plan routes: how to probe and the planner's policy.
#[derive(Debug, Clone)]
pub struct PlannerState {
    /// The probes (this machine).
    pub probe: crate::hardware::Probe,
    /// The `[planner]` policy.
    pub policy: crate::config::PlannerConfig,
}

/// `GET /r1/hardware` and `GET /r1/plan`, merged into [`router`]'s by `main.rs`.
pub fn planner_routes(state: PlannerState) -> Router {
    Router::new()
        .route("/r1/hardware", get(hardware))
        .route("/r1/plan", get(plan))
        .with_state(Arc::new(state))
}

/// Probes on a blocking thread (file reads, NVML, perhaps the bandwidth measurement).
async fn probe_now(state: &PlannerState) -> Result<crate::hardware::Hardware, Response> {
    let probe = state.probe.clone();
    let internal = |message: String| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": message })),
        )
            .into_response()
    };
    match tokio::task::spawn_blocking(move || probe.run()).await {
        Ok(Ok(hw)) => Ok(hw),
        Ok(Err(e)) => Err(internal(format!("failed to probe the hardware: {e}"))),
        Err(e) => Err(internal(format!("the hardware probe failed: {e}"))),
    }
}

async fn hardware(State(state): State<Arc<PlannerState>>) -> Response {
    match probe_now(&state).await {
        Ok(hw) => Json(hardware_to_wire(&hw)).into_response(),
        Err(r) => r,
    }
}

async fn plan(State(state): State<Arc<PlannerState>>) -> Response {
    match probe_now(&state).await {
        Ok(hw) => {
            let plan = crate::planner::plan(&hw, &[], &state.policy);
            Json(plan_to_wire(&plan)).into_response()
        }
        Err(r) => r,
    }
}

/// A probed machine as the wire's hardware profile.
pub fn hardware_to_wire(hw: &crate::hardware::Hardware) -> wire::HardwareProfile {
    wire::HardwareProfile {
        cpu: wire::CpuProfile {
            model: hw.cpu.model.clone(),
            cores: hw.cpu.cores,
            threads: Some(hw.cpu.threads),
            features: hw.cpu.features.clone(),
        },
        memory: wire::MemoryProfile {
            total_bytes: hw.memory.total_bytes,
            available_bytes: hw.memory.available_bytes,
            bandwidth_bytes_per_s: hw.memory.bandwidth_bytes_per_s,
            cgroup_limit_bytes: hw.memory.cgroup_limit_bytes,
        },
        disk: hw.disk.as_ref().map(|d| wire::DiskProfile {
            free_bytes: d.free_bytes,
            path: Some(d.path.display().to_string()),
        }),
        gpus: hw
            .gpus
            .iter()
            .map(|g| wire::GpuProfile {
                vendor: g.vendor.name().to_owned(),
                name: g.name.clone(),
                vram_total_bytes: g.vram_total_bytes,
                vram_free_bytes: g.vram_free_bytes,
                bandwidth_bytes_per_s: g.bandwidth_bytes_per_s,
                compute_capability: g.compute_capability.clone(),
                driver: g.driver.clone(),
            })
            .collect(),
    }
}

/// A hardware profile (from `r1d plan --hardware FILE`) as the planner's input. An unknown
/// vendor is planned like an AMD GPU: VRAM and bandwidth are what count.
pub fn hardware_from_wire(p: &wire::HardwareProfile) -> crate::hardware::Hardware {
    use crate::hardware::{Cpu, Disk, Gpu, GpuVendor, Hardware, Memory};
    Hardware {
        cpu: Cpu {
            model: p.cpu.model.clone(),
            cores: p.cpu.cores,
            threads: p.cpu.threads.unwrap_or(p.cpu.cores),
            features: p.cpu.features.clone(),
        },
        memory: Memory {
            total_bytes: p.memory.total_bytes,
            available_bytes: p.memory.available_bytes.min(p.memory.total_bytes),
            cgroup_limit_bytes: p.memory.cgroup_limit_bytes,
            bandwidth_bytes_per_s: p.memory.bandwidth_bytes_per_s,
        },
        disk: p.disk.as_ref().map(|d| Disk {
            path: d.path.clone().unwrap_or_default().into(),
            free_bytes: d.free_bytes,
        }),
        gpus: p
            .gpus
            .iter()
            .map(|g| Gpu {
                vendor: if g.vendor.eq_ignore_ascii_case("nvidia") {
                    GpuVendor::Nvidia
                } else {
                    GpuVendor::Amd
                },
                name: g.name.clone(),
                vram_total_bytes: g.vram_total_bytes,
                vram_free_bytes: g.vram_free_bytes.min(g.vram_total_bytes),
                bandwidth_bytes_per_s: g.bandwidth_bytes_per_s,
                compute_capability: g.compute_capability.clone(),
                driver: g.driver.clone(),
            })
            .collect(),
    }
}

/// One candidate of a plan in its wire form.
fn candidate_to_wire(c: &crate::planner::Candidate) -> wire::PlanCandidate {
    wire::PlanCandidate {
        variant: c.variant.id.to_owned(),
        quantization: c.quantization.name.to_owned(),
        backend: c.backend.to_owned(),
        gpu_layers: c.gpu_layers,
        total_layers: c.total_layers,
        ram_bytes: c.ram_bytes,
        vram_bytes: c.vram_bytes.clone(),
        est_generation_tokens_per_s: (c.tokens_per_s * 10.0).round() / 10.0,
        fits: c.fits,
        reason: c.reason.clone(),
        context_length: c.context_length,
        file_bytes: c.quantization.file_bytes,
        present: c.present,
        source: Some(format!(
            "hf://{}/{}",
            c.quantization.repo, c.quantization.file
        )),
        published_requirements: c.variant.rule_of_thumb.map(|r| {
            if r.gpus == 0 {
                format!("{} cores, {} GB RAM, no GPU", r.cores, r.ram_gb)
            } else {
                format!(
                    "{} cores, {} GB RAM, {} × {} GB GPU",
                    r.cores, r.ram_gb, r.gpus, r.vram_gb_per_gpu
                )
            }
        }),
    }
}

/// A plan's upgrades ([`crate::planner::Plan::upgrades`]) in their wire form.
pub fn upgrades_to_wire(upgrades: &[crate::planner::Upgrade]) -> Vec<wire::PlanUpgrade> {
    use crate::planner::Resource;
    upgrades
        .iter()
        .map(|u| wire::PlanUpgrade {
            resource: match u.resource {
                Resource::Ram => "ram",
                Resource::Vram { .. } => "vram",
            }
            .to_owned(),
            gpu: match u.resource {
                Resource::Vram { gpu } => u32::try_from(gpu).ok(),
                Resource::Ram => None,
            },
            more_bytes: u.more_bytes,
            candidate: candidate_to_wire(&u.candidate),
        })
        .collect()
}

/// A plan in its wire form.
pub fn plan_to_wire(plan: &crate::planner::Plan) -> wire::Plan {
    let candidate = candidate_to_wire;
    wire::Plan {
        chosen: plan.chosen().map(candidate),
        candidates: plan.candidates.iter().map(candidate).collect(),
        reason: plan.reason.clone(),
        upgrades: upgrades_to_wire(&plan.upgrades),
        more_memory: plan.more_memory.clone(),
    }
}

// ---- The model store: `GET /r1/models`, `POST /r1/pull`, `POST /r1/use` ----

/// A store entry in its wire form; `resident` compares with the engine's model path.
pub fn store_model_to_wire(
    e: &crate::store::ModelEntry,
    resident: Option<&str>,
) -> wire::StoreModel {
    use crate::store::Health;
    let id = e.identity.as_ref();
    wire::StoreModel {
        name: e.name.clone(),
        path: e.path.display().to_string(),
        source: e.source.kind().to_owned(),
        format: e.format.name().to_owned(),
        size_bytes: e.size_bytes,
        status: match e.health {
            Health::Ok => "ok",
            Health::Truncated { .. } => "truncated",
            Health::Unreadable(_) => "unreadable",
        }
        .to_owned(),
        expected_bytes: match e.health {
            Health::Truncated { expected_bytes, .. } => Some(expected_bytes),
            _ => None,
        },
        detail: match &e.health {
            Health::Ok => id.and_then(|i| i.mismatch.clone()),
            Health::Truncated { .. } => Some(format!(
                "{}; never chosen (delete it or pull it again)",
                e.status_text()
            )),
            Health::Unreadable(why) => Some(why.clone()),
        },
        variant: e.variant().map(|v| v.id.to_owned()),
        quantization: id.and_then(|i| i.quantization.clone()),
        architecture: id.and_then(|i| i.architecture.clone()),
        model_name: id.and_then(|i| i.name.clone()),
        parameters: id.map(|i| i.parameters),
        modified: e.modified,
        selectable: e.is_usable() && id.is_some_and(|i| i.catalog_quantization.is_some()),
        resident: resident.is_some_and(|p| std::path::Path::new(p) == e.path),
    }
}

/// Scans the store on a blocking thread (it reads GGUF headers).
pub async fn scan_store(store: &Arc<crate::store::Store>) -> Vec<crate::store::ModelEntry> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.scan())
        .await
        .unwrap_or_default()
}

async fn models(State(state): State<AppState>) -> Json<wire::StoreModelList> {
    let resident = state.engine.snapshot().model.map(|(info, _)| info.path);
    let entries = scan_store(&state.store).await;
    Json(wire::StoreModelList {
        dir: state.store.dir.display().to_string(),
        searched: state.store.searched(),
        models: entries
            .iter()
            .map(|e| store_model_to_wire(e, resident.as_deref()))
            .collect(),
    })
}

// The error is the response itself (as in `openai` and `ollama`).
#[allow(clippy::result_large_err)]
fn parse_model_request(body: &[u8]) -> Result<wire::ModelRequest, Response> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        native_error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

fn store_error(e: crate::store::StoreError) -> Response {
    use crate::store::StoreError;
    let code = match e {
        StoreError::Unknown(_) | StoreError::NotPresent { .. } => StatusCode::NOT_FOUND,
        StoreError::Probe(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    native_error(code, e.to_string())
}

/// A supervisor error in the native shape: the store's errors as [`store_error`] maps them, a
/// failed load 422 with the engine's reason, anything else 503.
fn supervisor_error(e: crate::supervisor::SupervisorError) -> Response {
    use crate::supervisor::{ErrorKind, SupervisorError};
    match (e.kind(), e) {
        (_, SupervisorError::Store(e)) => store_error(e),
        (ErrorKind::LoadFailed, e) => native_error(StatusCode::UNPROCESSABLE_ENTITY, e.reason()),
        (_, e) => native_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

fn pull_event(label: &str, s: &crate::store::PullState) -> wire::PullEvent {
    use crate::store::PullState;
    let mut ev = wire::PullEvent {
        model: label.to_owned(),
        ..Default::default()
    };
    match s {
        PullState::Resolving => ev.kind = "resolving".into(),
        PullState::Downloading {
            completed,
            total,
            resumed_from,
        } => {
            ev.kind = "progress".into();
            ev.completed = Some(*completed);
            ev.total = *total;
            ev.resumed_from = Some(*resumed_from).filter(|&r| r > 0);
        }
        PullState::Verifying => ev.kind = "verifying".into(),
        PullState::Done {
            path,
            sha256,
            bytes,
            already_present,
        } => {
            ev.kind = "done".into();
            ev.path = Some(path.display().to_string());
            ev.sha256 = sha256.clone();
            ev.completed = Some(*bytes);
            ev.total = Some(*bytes);
            ev.already_present = *already_present;
        }
        PullState::Failed(e) => {
            ev.kind = "error".into();
            ev.error = Some(e.clone());
        }
    }
    ev
}

/// `POST /r1/pull`: resolves the name (a catalog variant gets the best quantization for this
/// machine), starts or joins the download, and streams its progress: NDJSON lines by default,
/// SSE `data:` events when the client accepts `text/event-stream`. The pull goes on when the
/// client goes away.
async fn pull(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req = match parse_model_request(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let store = state.store.clone();
    let name = req.model.clone();
    let spec = match tokio::task::spawn_blocking(move || store.resolve_pull(&name)).await {
        Ok(Ok(spec)) => spec,
        Ok(Err(e)) => return store_error(e),
        Err(e) => return native_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let label = spec.label.clone();
    let rx = state.store.pull(spec);
    let sse = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let events =
        futures_util::stream::unfold((rx, false, true), move |(mut rx, finished, first)| {
            let label = label.clone();
            async move {
                if finished {
                    return None;
                }
                if !first && rx.changed().await.is_err() {
                    // The pull task ended; its last state is still readable.
                    let last = rx.borrow().clone();
                    return Some((pull_event(&label, &last), (rx, true, false)));
                }
                let now = rx.borrow_and_update().clone();
                let done = now.is_final();
                Some((pull_event(&label, &now), (rx, done, false)))
            }
        });
    let lines = futures_util::StreamExt::map(events, move |ev| {
        let json = serde_json::to_string(&ev).unwrap_or_default();
        Ok::<_, std::convert::Infallible>(if sse {
            format!("data: {json}\n\n")
        } else {
            format!("{json}\n")
        })
    });
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// `POST /r1/use`: `auto` (the planner's choice among present models, and no pin), a catalog
/// variant (pinned: its best present quantization, kept through re-plans), or any listed model by
/// name; loads it and answers with `/r1/status`'s body. A model that fails to load leaves the
/// previous one serving (422 naming both).
async fn use_model(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let req = match parse_model_request(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match state.supervisor.use_model(&req.model).await {
        Ok(_) => status(State(state)).await.into_response(),
        Err(e) => supervisor_error(e),
    }
}

/// `POST /r1/reload`: re-reads the config as SIGHUP does and answers with what changed, the
/// rejection (200 too: r1d keeps running on the old config; `error` says why), and what happened
/// to the model.
async fn reload(State(state): State<AppState>) -> Json<wire::ReloadOutcome> {
    Json(super::supervisor_wire::reload_outcome(
        state.supervisor.reload("POST /r1/reload").await,
    ))
}

/// `GET /r1/events`: server-sent events, one per change (`event:` the kind, `data:` a
/// [`wire::Event`]), starting with the current state; a comment every 15 s keeps idle
/// connections open. A reader too slow for 256 events gets a `lagged` event saying how many it
/// missed.
async fn events(State(state): State<AppState>) -> Response {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use futures_util::StreamExt as _;
    let rx = state.supervisor.subscribe();
    let snap = state.engine.snapshot();
    let first = wire::Event {
        kind: "state".into(),
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        message: crate::systemd::status_line(&snap, None),
        state: Some(super::supervisor_wire::state(
            state.supervisor.reported_state(&snap),
        )),
        model: snap
            .model
            .as_ref()
            .map(|(i, _)| crate::engine::model_name(i)),
        changes: Vec::new(),
        error: snap.error.clone(),
    };
    let to_sse = |e: &wire::Event| {
        SseEvent::default()
            .event(e.kind.clone())
            .json_data(e)
            .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"))
    };
    let head = futures_util::stream::once({
        let e = to_sse(&first);
        async move { Ok::<_, std::convert::Infallible>(e) }
    });
    let rest = tokio_stream::wrappers::BroadcastStream::new(rx).map(move |item| {
        Ok(match item {
            Ok(e) => to_sse(&super::supervisor_wire::event(&e)),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                SseEvent::default()
                    .event("lagged")
                    .data(format!("{n} events were dropped: this reader was too slow"))
            }
        })
    });
    // At shutdown the stream ends with a last event, so a watcher learns why and r1d's graceful
    // shutdown does not wait for it.
    let stopping = state.supervisor.stopping();
    let last = futures_util::stream::once(async {
        Ok(SseEvent::default()
            .event("state")
            .json_data(wire::Event {
                kind: "state".into(),
                time: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
                message: "r1d is stopping".into(),
                state: None,
                model: None,
                changes: Vec::new(),
                error: None,
            })
            .unwrap_or_else(|_| SseEvent::default().comment("stopping")))
    });
    let rest = rest.take_until(stopping.cancelled_owned()).chain(last);
    Sse::new(head.chain(rest))
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}
