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
        .fallback(not_found)
        .with_state(state)
}

fn wire_state(s: EngineState) -> wire::State {
    match s {
        EngineState::Starting => wire::State::Starting,
        EngineState::Loading => wire::State::Loading,
        EngineState::Ready => wire::State::Ready,
        EngineState::NoModel => wire::State::NoModel,
    }
}

async fn health(State(state): State<AppState>) -> Response {
    let snap = state.engine.snapshot();
    let code = if snap.state == EngineState::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: wire_state(snap.state),
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
        state: wire_state(snap.state),
        model: model_status(&snap),
        loading: snap.loading.as_ref().map(|p| p.display().to_string()),
        progress: snap.progress,
        error: snap.error.clone(),
        uptime_s: state.engine.uptime_s(),
        requests_served: state.engine.requests_served(),
        active_requests: state.engine.active_requests(),
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
/// the new one is resident (200 with `/r1/status`'s body) or failed to load (422 naming why).
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
    match state.engine.load(spec).await {
        Ok(()) => status(State(state)).await.into_response(),
        Err(crate::engine::EngineError::NoModel { reason }) => {
            native_error(StatusCode::UNPROCESSABLE_ENTITY, reason)
        }
        Err(e) => native_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /r1/unload`: unloads the resident model; answers with `/r1/status`'s body.
async fn unload(State(state): State<AppState>) -> Response {
    match state.engine.unload().await {
        Ok(()) => status(State(state)).await.into_response(),
        Err(e) => native_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": format!("no route for {method} {uri}") })),
    )
        .into_response()
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

/// A plan in its wire form.
pub fn plan_to_wire(plan: &crate::planner::Plan) -> wire::Plan {
    let candidate = |c: &crate::planner::Candidate| wire::PlanCandidate {
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
    };
    wire::Plan {
        chosen: plan.chosen().map(candidate),
        candidates: plan.candidates.iter().map(candidate).collect(),
        reason: plan.reason.clone(),
    }
}
