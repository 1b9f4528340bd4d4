//! Every conversion from daemon types to the API's wire shapes (`r1d_client::wire`), in one place:
//! status, backends, hardware, plans, store entries, pull progress, reload outcomes, and the
//! token counts and timings of an answer. (`hardware_from_wire` is the one conversion back, for
//! `r1d plan --hardware FILE`.) The route modules and `main.rs` call these; nothing else builds
//! wire values from daemon state.

use r1d_client::wire::{self, BackendEntry, BackendList, ModelStatus};

use crate::backend::PluginRecord;
use crate::control;
use crate::engine::{EngineState, FinishReason, GenerateResult, Snapshot};

/// The resident model of a snapshot, as `/r1/status` shows it.
pub fn model_status(snap: &Snapshot) -> Option<ModelStatus> {
    snap.model.as_ref().map(|(info, backend)| ModelStatus {
        name: info.name.clone().unwrap_or_else(|| info.path.clone()),
        path: info.path.clone(),
        backend: backend.clone(),
        backend_file: info.backend_file.as_ref().map(|f| f.display().to_string()),
        architecture: info.architecture.clone(),
        quantization: info.file_type.clone(),
        parameters: info.parameters,
        context_length: info.context_length,
        layers: info.layers,
        gpu_layers: info.gpu_layers,
        weights_bytes: info.memory.weights_bytes,
        kv_cache_bytes: info.memory.kv_cache_bytes,
        variant: None,
        planned_ram_bytes: None,
        planned_memory_source: None,
        resident_bytes: None,
        resident_anon_bytes: None,
        resident_file_bytes: None,
        remote: None,
    })
}

/// The state to report: the engine's, but `degraded` while serving without a GPU that should be
/// there (`degraded` is the supervisor's reason).
pub fn state(s: EngineState, degraded: Option<&str>) -> wire::State {
    super::supervisor_wire::state(crate::supervisor::ReportedState::reported(
        s,
        degraded.is_some(),
    ))
}

/// `/r1/status`'s body; `watch` is the supervisor's view.
pub fn status(s: &control::Status, watch: Option<wire::WatchStatus>) -> wire::Status {
    let snap = &s.snapshot;
    wire::Status {
        version: env!("CARGO_PKG_VERSION").into(),
        state: state(snap.state, s.degraded.as_deref()),
        model: model_status(snap).map(|mut m| {
            m.remote = s.remote.as_ref().map(|v| wire::RemoteModelStatus {
                name: v.config.name().to_owned(),
                url: v.config.url.clone(),
                model: v.config.model.clone(),
                healthy: v.health.ok,
                health_error: v.health.reason.clone(),
            });
            if let Some(p) = &s.planned {
                m.variant = Some(p.variant.clone());
                m.planned_ram_bytes = Some(p.ram_bytes);
                m.planned_memory_source = Some(p.memory_source.to_owned());
            }
            if let Some(r) = s.resident {
                m.resident_bytes = Some(r.total_bytes);
                m.resident_anon_bytes = Some(r.anon_bytes);
                m.resident_file_bytes = Some(r.file_bytes);
            }
            m
        }),
        loading: snap.loading.as_ref().map(|p| p.display().to_string()),
        progress: snap.progress,
        error: snap.error.clone(),
        uptime_s: s.uptime_s,
        requests_served: s.requests_served,
        requests_failed: s.requests_failed,
        active_requests: s.active_requests,
        running_requests: s.running_requests,
        queued_requests: s.active_requests.saturating_sub(s.running_requests),
        parallel: s.parallel,
        selection: s.selection.clone(),
        upgrades: upgrades_to_wire(&s.upgrades),
        more_memory: s.more_memory.clone(),
        watch,
        rpc_workers: s
            .rpc_workers
            .iter()
            .map(|w| {
                let mut out = rpc_worker(w);
                out.layers = s
                    .rpc_layers
                    .iter()
                    .find(|(e, _)| *e == w.endpoint)
                    .map(|(_, n)| *n);
                out
            })
            .collect(),
    }
}

fn rpc_worker(w: &crate::hardware::rpc::RpcWorker) -> wire::RpcWorkerStatus {
    use crate::hardware::rpc::RpcState;
    let (free_bytes, total_bytes) = match w.state {
        RpcState::Up {
            free_bytes,
            total_bytes,
            ..
        } => (Some(free_bytes), Some(total_bytes)),
        _ => (None, None),
    };
    wire::RpcWorkerStatus {
        endpoint: w.endpoint.clone(),
        state: w.state.name().to_owned(),
        free_bytes,
        total_bytes,
        error: match &w.state {
            RpcState::Gone(why) | RpcState::Busy(why) => Some(why.clone()),
            _ => None,
        },
        layers: None,
    }
}

/// `/r1/backends`' body: every plugin file in `dir`, usable or not.
pub fn backends(dir: &std::path::Path, records: &[PluginRecord]) -> BackendList {
    let backends = records
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
    BackendList {
        plugin_dir: dir.display().to_string(),
        backends,
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
            bandwidth_spread: hw.memory.bandwidth_spread,
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
        vulkan_devices: hw
            .vulkan
            .iter()
            .map(|d| wire::VulkanDeviceProfile {
                index: d.index,
                name: d.name.clone(),
                vendor: d.vendor_name(),
                device_type: d.device_type.name().to_owned(),
                api_version: d.api_version.clone(),
                driver: d.driver.clone(),
                memory_total_bytes: d.memory_total_bytes(),
                memory_free_bytes: d.memory_free_bytes(),
                memory_budget: d.has_memory_budget(),
                not_planned: d.not_planned.clone(),
            })
            .collect(),
        rpc_workers: hw
            .rpc_workers
            .iter()
            .map(|w| wire::RpcWorkerProfile {
                endpoint: w.endpoint.clone(),
                devices_free_bytes: w.devices_free_bytes.clone(),
                free_bytes: None,
                bandwidth_bytes_per_s: w.bandwidth_bytes_per_s,
                link_latency_ms: Some(w.link.round_trip_s * 1000.0),
                link_bandwidth_bytes_per_s: Some(w.link.bandwidth_bytes_per_s),
            })
            .collect(),
    }
}

/// A hardware profile (from `r1d plan --hardware FILE`) as the planner's input. An unknown
/// vendor is [`GpuVendor::Other`](crate::hardware::GpuVendor::Other): VRAM and bandwidth are what
/// count. The profile's Vulkan devices are not read back: the planner plans `gpus` only.
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
            // A profile names one available figure: a plan from it credits no resident model.
            split: None,
            bandwidth_bytes_per_s: p.memory.bandwidth_bytes_per_s,
            bandwidth_spread: p.memory.bandwidth_spread,
        },
        disk: p.disk.as_ref().map(|d| Disk {
            path: d.path.clone().unwrap_or_default().into(),
            free_bytes: d.free_bytes,
        }),
        gpus: p
            .gpus
            .iter()
            .map(|g| Gpu {
                vendor: GpuVendor::from_name(&g.vendor),
                name: g.name.clone(),
                vram_total_bytes: g.vram_total_bytes,
                vram_free_bytes: g.vram_free_bytes.min(g.vram_total_bytes),
                bandwidth_bytes_per_s: g.bandwidth_bytes_per_s,
                compute_capability: g.compute_capability.clone(),
                driver: g.driver.clone(),
            })
            .collect(),
        vulkan: Vec::new(),
        rpc_workers: p
            .rpc_workers
            .iter()
            .map(|w| {
                let defaults = crate::hardware::Link::default();
                crate::hardware::RpcHost {
                    endpoint: w.endpoint.clone(),
                    devices_free_bytes: if w.devices_free_bytes.is_empty() {
                        w.free_bytes.into_iter().collect()
                    } else {
                        w.devices_free_bytes.clone()
                    },
                    bandwidth_bytes_per_s: w.bandwidth_bytes_per_s,
                    link: crate::hardware::Link {
                        round_trip_s: w
                            .link_latency_ms
                            .map_or(defaults.round_trip_s, |ms| ms / 1000.0),
                        bandwidth_bytes_per_s: w
                            .link_bandwidth_bytes_per_s
                            .unwrap_or(defaults.bandwidth_bytes_per_s),
                    },
                }
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
        parallel: c.parallel,
        file_bytes: c.quantization.file_bytes,
        present: c.present,
        memory_source: Some(
            match c.memory_source {
                crate::planner::MemorySource::Formula => "formula",
                crate::planner::MemorySource::Backend { .. } => "backend",
            }
            .to_owned(),
        ),
        memory_estimated_by: match &c.memory_source {
            crate::planner::MemorySource::Backend { source, .. } => Some(source.clone()),
            crate::planner::MemorySource::Formula => None,
        },
        formula_ram_bytes: match c.memory_source {
            crate::planner::MemorySource::Backend {
                formula_ram_bytes, ..
            } => Some(formula_ram_bytes),
            crate::planner::MemorySource::Formula => None,
        },
        hosts: c
            .hosts
            .iter()
            .map(|h| wire::PlanHost {
                host: match &h.host {
                    crate::planner::Host::Cpu => "cpu".to_owned(),
                    crate::planner::Host::Gpu(i) => format!("gpu {i}"),
                    crate::planner::Host::Worker(e) => e.clone(),
                },
                layers: h.layers,
                bytes: h.bytes,
            })
            .collect(),
        network_ms_per_token: (c.network_s_per_token * 1e6).round() / 1e3,
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
        remotes: Vec::new(),
        remote_selection: None,
    }
}

/// Adds the `[[remote]]` endpoints to a plan: each with its health and why it is served or
/// not, and the selection line, from the selection's verdict (`pick`, `why`:
/// [`crate::store::select::remote_verdict`]). Nothing without remotes.
pub fn plan_remotes(
    plan: &mut wire::Plan,
    views: &[crate::backend::remote::RemoteView],
    (pick, why): (Option<usize>, String),
    policy: &crate::config::PlannerConfig,
) {
    use crate::backend::remote;
    if views.is_empty() {
        return;
    }
    plan.remotes = views
        .iter()
        .enumerate()
        .map(|(i, v)| wire::PlanRemote {
            name: v.config.name().to_owned(),
            url: v.config.url.clone(),
            model: v.config.model.clone(),
            variant: v.config.variant().map(|x| x.id.to_owned()),
            healthy: v.health.ok,
            health_error: if v.health.checked_at.is_none() {
                Some("not checked yet".into())
            } else {
                v.health.reason.clone()
            },
            tokens_per_s: v.config.tokens_per_s,
            chosen: pick == Some(i),
            reason: remote::verdict_for(views, i, pick, &why, policy.min_tokens_per_s),
        })
        .collect();
    plan.remote_selection = Some(remote::selection_line(views, pick, &why, policy.prefer));
}

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

/// A pull's progress as one event of `/r1/pull`'s stream.
pub fn pull_event(label: &str, s: &crate::store::PullState) -> wire::PullEvent {
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

/// `/r1/models`' body.
/// What `POST /r1/remove` removed.
pub fn removed(r: &crate::store::Removed) -> wire::Removed {
    wire::Removed {
        model: r.name.clone(),
        path: r.path.display().to_string(),
        freed_bytes: r.bytes,
    }
}

/// The models on disk (`GET /r1/models`).
pub fn models(m: &control::Models) -> wire::StoreModelList {
    wire::StoreModelList {
        dir: m.dir.display().to_string(),
        searched: m.searched.clone(),
        models: m
            .entries
            .iter()
            .map(|e| store_model_to_wire(e, m.resident.as_deref()))
            .collect(),
    }
}

/// `/r1/reload`'s body.
pub fn reload_outcome(o: control::ReloadOutcome) -> wire::ReloadOutcome {
    wire::ReloadOutcome {
        config_path: o.config_path,
        changes: o.changes,
        error: o.error,
        model: o.model,
    }
}

/// llama-server's `timings` from a backend result (milliseconds; tokens per second).
pub fn timings(r: &GenerateResult) -> wire::Timings {
    let prompt_n = r.prompt_tokens.saturating_sub(r.cached_prompt_tokens);
    let per = |ms: f64, n: u32| if n > 0 { ms / n as f64 } else { 0.0 };
    let rate = |ms: f64, n: u32| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    wire::Timings {
        cache_n: r.cached_prompt_tokens,
        prompt_n,
        prompt_ms: r.prompt_ms,
        prompt_per_token_ms: per(r.prompt_ms, prompt_n),
        prompt_per_second: rate(r.prompt_ms, prompt_n),
        predicted_n: r.completion_tokens,
        predicted_ms: r.generation_ms,
        predicted_per_token_ms: per(r.generation_ms, r.completion_tokens),
        predicted_per_second: rate(r.generation_ms, r.completion_tokens),
        time_to_first_token_ms: r.time_to_first_token_ms,
    }
}

/// Token counts; reasoning tokens are completion tokens.
pub fn usage(r: &GenerateResult) -> wire::Usage {
    wire::Usage {
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        total_tokens: r.prompt_tokens + r.completion_tokens,
        prompt_tokens_details: Some(wire::PromptTokensDetails {
            cached_tokens: r.cached_prompt_tokens,
        }),
        completion_tokens_details: r
            .reasoning_tokens
            .map(|reasoning_tokens| wire::CompletionTokensDetails { reasoning_tokens }),
    }
}

/// The finish reason's name in every API: `length` at the token limit, `stop` otherwise (a
/// stop string, the end of the answer, or a cancellation).
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}
