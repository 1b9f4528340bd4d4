//! What r1d counts and measures (Prometheus metrics through the `metrics` crate), and the
//! per-request record the one log line per request is written from.
//!
//! The modules that know an event record it where it happens — the engine (tokens, time to first
//! token, load and swap durations, running requests), the store (pull bytes), the HTTP layer
//! (requests by route and status, durations) — with the names below; [`render`] writes them in
//! Prometheus' text format for `GET /metrics` (`api::observe`). Without [`install`] (unit tests,
//! one-shot commands) recording does nothing.
//!
//! **Architecture invariant**: no metric label and no field of [`RequestStats`] carries user
//! content (prompts, answers); labels are routes, statuses, states and model names.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `r1d_http_requests_total{route, status}`.
pub const HTTP_REQUESTS: &str = "r1d_http_requests_total";
/// `r1d_http_request_duration_seconds{route}` (until the last byte of the body).
pub const HTTP_DURATION: &str = "r1d_http_request_duration_seconds";
/// `r1d_prompt_tokens_total`.
pub const PROMPT_TOKENS: &str = "r1d_prompt_tokens_total";
/// `r1d_generated_tokens_total`.
pub const GENERATED_TOKENS: &str = "r1d_generated_tokens_total";
/// `r1d_time_to_first_token_seconds` (from admission, queue wait included).
pub const TTFT: &str = "r1d_time_to_first_token_seconds";
/// `r1d_generation_duration_seconds` (from admission to the last token).
pub const GENERATION_DURATION: &str = "r1d_generation_duration_seconds";
/// `r1d_queue_depth`: jobs waiting for the engine.
pub const QUEUE_DEPTH: &str = "r1d_queue_depth";
/// `r1d_requests_running`: answers being generated (one sequence at a time today).
pub const RUNNING: &str = "r1d_requests_running";
/// `r1d_requests_active`: answers admitted and not finished (queued or running).
pub const ACTIVE: &str = "r1d_requests_active";
/// `r1d_model_state{state}`: 1 for the engine's state, 0 for the others.
pub const MODEL_STATE: &str = "r1d_model_state";
/// `r1d_model_resident{model, backend, quantization}`: 1 for the resident model.
pub const MODEL_RESIDENT: &str = "r1d_model_resident";
/// `r1d_model_load_duration_seconds{kind="load"|"swap", outcome="ok"|"failed"}`.
pub const LOAD_DURATION: &str = "r1d_model_load_duration_seconds";
/// `r1d_pull_bytes_total`: bytes downloaded by pulls.
pub const PULL_BYTES: &str = "r1d_pull_bytes_total";
/// `r1d_backend_crashes_total`: times a model's worker process died or was killed as hung.
pub const BACKEND_CRASHES: &str = "r1d_backend_crashes_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets when nobody scrapes `/metrics`.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide recorder (once; later calls do nothing). Histograms get buckets
/// that suit their unit: seconds from 10 ms to 30 min.
pub fn install() {
    if HANDLE.get().is_some() {
        return;
    }
    let seconds = [
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        1800.0,
    ];
    let built = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
        .and_then(|b| b.install_recorder());
    match built {
        Ok(handle) => {
            let _ = HANDLE.set(handle);
            describe();
            // The recorder keeps every histogram sample until it is folded into the buckets,
            // which happens at a scrape of /metrics or at an upkeep: without one, a service
            // nobody scrapes grew by every request's samples (+70 MiB over 1.4 million requests
            // in bench/soak).
            let _ = std::thread::Builder::new()
                .name("r1d-metrics".into())
                .spawn(|| loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    if let Some(handle) = HANDLE.get() {
                        handle.run_upkeep();
                    }
                });
        }
        Err(e) => tracing::warn!("metrics are off: {e}"),
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration, to the last byte"
    );
    describe_counter!(PROMPT_TOKENS, "prompt tokens of answered requests");
    describe_counter!(GENERATED_TOKENS, "tokens generated");
    describe_histogram!(
        TTFT,
        Unit::Seconds,
        "time to first token, queue wait included"
    );
    describe_histogram!(
        GENERATION_DURATION,
        Unit::Seconds,
        "admission to last token"
    );
    describe_gauge!(QUEUE_DEPTH, "jobs waiting for the engine");
    describe_gauge!(RUNNING, "answers being generated");
    describe_gauge!(ACTIVE, "answers admitted and not finished");
    describe_gauge!(MODEL_STATE, "1 for the engine's state");
    describe_gauge!(MODEL_RESIDENT, "1 for the resident model");
    describe_histogram!(LOAD_DURATION, Unit::Seconds, "model loads and swaps");
    describe_counter!(PULL_BYTES, Unit::Bytes, "bytes downloaded by pulls");
    describe_counter!(
        BACKEND_CRASHES,
        "times a model's worker process died or was killed as hung"
    );
}

/// Everything recorded so far, in Prometheus' text format; `None` when no recorder is installed.
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}

/// What the engine learned about one request, for its log line: no content, only counts.
#[derive(Debug, Default, Clone)]
pub struct RequestStats {
    /// The model that answered.
    pub model: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: Option<u32>,
    /// Generated tokens.
    pub generated_tokens: Option<u32>,
    /// Time to first token.
    pub ttft: Option<Duration>,
}

/// The slot a request's [`RequestStats`] are written into.
pub type StatsSlot = Arc<Mutex<RequestStats>>;

tokio::task_local! {
    static CURRENT: StatsSlot;
}

/// Runs `f` with `slot` as the current request's (the HTTP layer does, around each handler).
pub async fn with_request<F: std::future::Future>(slot: StatsSlot, f: F) -> F::Output {
    CURRENT.scope(slot, f).await
}

/// The current request's slot, when a transport set one (see [`with_request`]).
pub fn current_request() -> Option<StatsSlot> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Updates `slot`, if any.
pub fn update(slot: Option<&StatsSlot>, f: impl FnOnce(&mut RequestStats)) {
    if let Some(slot) = slot {
        f(&mut slot.lock().unwrap_or_else(|e| e.into_inner()));
    }
}
