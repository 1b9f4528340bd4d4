//! Hardware polling: every `[watch] hardware_interval_s` the probes run again (through
//! `Store::hardware`, which counts the resident model's memory as free) and the decider runs on
//! the re-plan; between polls, the `idle` policy's check. Reports changes that matter
//! ([`differs`]) and `degraded` (GPUs the NVIDIA driver lists but NVML does not see).

use std::time::{Duration, Instant};

use crate::engine::ModelInfo;
use tokio_util::sync::CancellationToken;

use super::decide::{self, Decision, Facts, Policy};
use super::events::{Event, EventKind};
use super::Supervisor;
use crate::engine::{model_name, EngineState, LoadSpec};
use crate::hardware::{Hardware, Probe};

/// How often the idle check runs while an idle swap can come due.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// The longest the poller sleeps: a reloaded `hardware_interval_s` or `swap_policy` takes effect
/// within this.
const LONGEST_SLEEP: Duration = Duration::from_secs(5);

/// How long the hardware poller sleeps: until the next re-probe is due (`interval_s` seconds
/// after the last, `since_probe` ago; none when `interval_s <= 0`), at most [`IDLE_CHECK`] when
/// an idle swap can come due (`idle_swap_possible`: policy `idle` and a better fit reported),
/// and at most [`LONGEST_SLEEP`].
fn poll_wait(interval_s: f64, since_probe: Duration, idle_swap_possible: bool) -> Duration {
    let mut wait = LONGEST_SLEEP;
    if interval_s > 0.0 {
        wait = wait.min(super::seconds(interval_s).saturating_sub(since_probe));
    }
    if idle_swap_possible {
        wait = wait.min(IDLE_CHECK);
    }
    wait
}

impl Supervisor {
    /// A re-plan every `hardware_interval_s` (0 = never); between them, the idle check while
    /// an idle swap can come due. Sleeps as long as nothing can change (see [`poll_wait`]), so an
    /// idle r1d does not wake for nothing.
    pub(super) async fn watch_hardware(self, shutdown: CancellationToken) {
        let mut last_probe = Instant::now();
        loop {
            let config = self.config();
            let wait = poll_wait(
                config.watch.hardware_interval_s,
                last_probe.elapsed(),
                config.watch.swap_policy == crate::config::SwapPolicy::Idle
                    && self.view_better().is_some(),
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            let interval = self.config().watch.hardware_interval_s;
            if interval <= 0.0 {
                continue;
            }
            let due = last_probe.elapsed().as_secs_f64() >= interval;
            if due {
                last_probe = Instant::now();
                self.tick().await;
            } else {
                self.idle_check().await;
            }
        }
    }

    /// One hardware re-probe and re-plan, decided by [`decide::decide`].
    async fn tick(&self) {
        let acting = self.inner.acting.lock().await;
        let engine = &self.inner.engine;
        let snap = engine.snapshot();
        let busy = snap.queued_load.is_some()
            || matches!(
                snap.state,
                EngineState::Loading | EngineState::Swapping | EngineState::Starting
            );
        if busy {
            return;
        }
        let probe = self.inner.probe.clone();
        let store = self.inner.store.clone();
        let Ok(Ok(hw)) = tokio::task::spawn_blocking(move || store.hardware()).await else {
            return;
        };
        self.note_hardware(&probe, &hw);
        let config = self.config();
        let wanted = match self.wanted().await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!("re-plan: {e}");
                return;
            }
        };
        let policy = Policy {
            swap: config.watch.swap_policy,
            settle_s: config.watch.settle_s,
            idle_s: config.watch.idle_s,
        };
        let forced = snap
            .model
            .as_ref()
            .and_then(|(info, _)| resident_no_longer_fits(&hw, info));
        let wanted_modified = wanted.spec.as_ref().and_then(modified);
        let decision = {
            let mut st = self.state();
            let facts = Facts {
                now: Instant::now(),
                busy,
                serving: snap.model.is_some(),
                resident: snap.spec.as_ref(),
                wanted: &wanted,
                last_failed: snap.last_failed.as_ref().map(|(s, t)| (s, *t)),
                wanted_modified,
                forced,
                idle_for: engine.idle_for(),
                policy,
            };
            decide::decide(&mut st.hysteresis, &facts)
        };
        let announce = |first: &Option<String>, target: &str| {
            if let Some(message) = first {
                tracing::info!("{message}");
                let mut e = Event::new(EventKind::Plan, message.clone());
                e.model = Some(target.to_owned());
                self.emit(e);
                self.update_view(|v| v.pending = Some(message.clone()));
            }
        };
        let target = wanted
            .spec
            .as_ref()
            .map(|s| decide::file_name(&s.params.path))
            .unwrap_or_default();
        match decision {
            Decision::Ignore(_) => {}
            Decision::Keep { dropped } => {
                if let Some((spec, held)) = dropped {
                    let message = decide::dropped_message(&spec, held, policy.settle_s);
                    tracing::info!("{message}");
                    self.emit(Event::new(EventKind::Plan, message));
                }
                self.update_view(|v| {
                    v.pending = None;
                    v.better = None;
                });
            }
            Decision::Wait { first, .. } => announce(&first, &target),
            Decision::Act {
                spec,
                reason,
                forced,
                why,
                first,
            } => {
                announce(&first, &target);
                let wanted = decide::Wanted {
                    spec: Some(spec),
                    reason,
                };
                let _ = self.apply(acting, wanted, forced, why).await;
            }
            Decision::Report { message, first } => {
                announce(&first, &target);
                let unchanged = self.view_better().as_deref() == Some(message.as_str());
                if !unchanged {
                    tracing::info!("{message}");
                    let mut e = Event::new(EventKind::Plan, message.clone());
                    e.model = Some(target);
                    self.emit(e);
                    self.update_view(|v| {
                        v.better = Some(message);
                        v.pending = None;
                    });
                }
            }
        }
    }

    /// Under `idle`: swaps to a settled better fit once r1d has been idle long enough.
    async fn idle_check(&self) {
        let config = self.config();
        if !decide::idle_swap_due(
            config.watch.swap_policy,
            self.inner.engine.snapshot().queued_load.is_some(),
            self.view_better().is_some(),
            self.inner.engine.idle_for(),
            config.watch.idle_s,
        ) {
            return;
        }
        let acting = self.inner.acting.lock().await;
        if let Ok(wanted) = self.wanted().await {
            let _ = self
                .apply(acting, wanted, None, "r1d is idle and the machine changed")
                .await;
        }
    }

    /// Logs and emits a `hardware` event when the machine's summary changed; keeps `degraded`.
    fn note_hardware(&self, probe: &Probe, hw: &Hardware) {
        let summary = summary(hw);
        let degraded = crate::hardware::nvidia::degraded_reason(probe, hw);
        let (changed, degraded_changed) = {
            let mut st = self.state();
            let changed = st.hardware.as_ref().is_none_or(|last| differs(last, hw));
            if changed {
                st.hardware = Some(hw.clone());
            }
            let degraded_changed = st.degraded != degraded;
            st.degraded = degraded.clone();
            (changed, degraded_changed)
        };
        if changed {
            tracing::debug!("hardware: {summary}");
            self.emit(Event::new(EventKind::Hardware, summary));
        }
        if degraded_changed {
            match &degraded {
                Some(why) => tracing::warn!("degraded: {why}"),
                None => tracing::info!("no longer degraded: every GPU the driver lists answers"),
            }
            self.update_view(|v| v.degraded = degraded.clone());
            let snap = self.inner.engine.snapshot();
            let mut e = Event::new(
                EventKind::State,
                degraded
                    .clone()
                    .map(|d| format!("degraded: {d}"))
                    .unwrap_or_else(|| "no longer degraded".into()),
            );
            e.state = Some(self.reported_state(&snap));
            self.emit(e);
        }
    }
}

/// One line about the machine: RAM, the cgroup limit, each GPU's free VRAM.
pub fn summary(hw: &Hardware) -> String {
    let gb = |b: u64| format!("{:.1} GB", b as f64 / 1e9);
    let mut summary = format!(
        "RAM {} available of {}",
        gb(hw.memory.available_bytes),
        gb(hw.memory.total_bytes)
    );
    if let Some(limit) = hw.memory.cgroup_limit_bytes {
        summary += &format!(" (cgroup limit {})", gb(limit));
    }
    if hw.gpus.is_empty() {
        summary += ", no GPU";
    }
    for g in &hw.gpus {
        summary += &format!(
            ", {} {} {} free of {}",
            g.vendor.name(),
            g.name,
            gb(g.vram_free_bytes),
            gb(g.vram_total_bytes)
        );
    }
    summary
}

/// When the resident model's own memory is no longer there (the probe, with its footprint
/// counted as free, has less RAM than the part of the model in RAM), why: the swap is forced.
pub fn resident_no_longer_fits(hw: &Hardware, info: &ModelInfo) -> Option<String> {
    let m = &info.memory;
    let ram_need = (m.weights_bytes + m.kv_cache_bytes).saturating_sub(m.gpu_bytes);
    (ram_need > 0 && hw.memory.available_bytes < ram_need).then(|| {
        format!(
            "memory is running out: {:.1} GB available, {} needs {:.1} GB",
            hw.memory.available_bytes as f64 / 1e9,
            model_name(info),
            ram_need as f64 / 1e9
        )
    })
}

/// Modification time of a load spec's file (or directory).
fn modified(spec: &LoadSpec) -> Option<std::time::SystemTime> {
    std::fs::metadata(&spec.params.path)
        .and_then(|m| m.modified())
        .ok()
}

/// Whether `now` differs from `last` enough to report: the total, the cgroup limit or the GPUs
/// changed, free RAM or a GPU's free VRAM moved by 5 % of its total (at least 0.5 GB), or the
/// RPC workers that answer are others (a measured round trip that wobbles is no change).
pub fn differs(last: &Hardware, now: &Hardware) -> bool {
    let moved = |a: u64, b: u64, total: u64| a.abs_diff(b) >= (total / 20).max(500_000_000);
    last.memory.total_bytes != now.memory.total_bytes
        || last.memory.cgroup_limit_bytes != now.memory.cgroup_limit_bytes
        || moved(
            last.memory.available_bytes,
            now.memory.available_bytes,
            now.memory.total_bytes,
        )
        || last.gpus.len() != now.gpus.len()
        || last.gpus.iter().zip(&now.gpus).any(|(a, b)| {
            a.name != b.name
                || a.vram_total_bytes != b.vram_total_bytes
                || moved(a.vram_free_bytes, b.vram_free_bytes, b.vram_total_bytes)
        })
        // An RPC worker that went away or came back changes what a split can hold.
        || last.rpc_workers.iter().map(|w| &w.endpoint).ne(now.rpc_workers.iter().map(|w| &w.endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ModelMemory as MemoryBreakdown;
    use crate::hardware::Memory;

    const GB: u64 = 1_000_000_000;

    fn machine(available: u64) -> Hardware {
        Hardware {
            memory: Memory {
                total_bytes: 32 * GB,
                available_bytes: available,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_poller_sleeps_until_something_can_be_due() {
        let s = Duration::from_secs;
        // Nothing to do: the longest sleep (a reload is seen within it).
        assert_eq!(poll_wait(0.0, s(100), false), LONGEST_SLEEP);
        assert_eq!(poll_wait(30.0, s(0), false), LONGEST_SLEEP);
        // A re-probe due in 1.5 s, or already due.
        assert_eq!(
            poll_wait(30.0, Duration::from_millis(28_500), false),
            Duration::from_millis(1500)
        );
        assert_eq!(poll_wait(30.0, s(31), false), Duration::ZERO);
        assert_eq!(poll_wait(0.25, s(0), false), Duration::from_millis(250));
        // An idle swap that can come due: checked every 250 ms.
        assert_eq!(poll_wait(30.0, s(0), true), IDLE_CHECK);
        assert_eq!(poll_wait(0.0, s(0), true), IDLE_CHECK);
    }

    #[test]
    fn an_rpc_worker_going_or_coming_is_a_change_its_round_trip_is_not() {
        let worker = |e: &str, rtt: f64| crate::hardware::RpcHost {
            endpoint: e.into(),
            devices_free_bytes: vec![32 * GB],
            bandwidth_bytes_per_s: None,
            link: crate::hardware::Link {
                round_trip_s: rtt,
                ..Default::default()
            },
        };
        let mut two = machine(10 * GB);
        two.rpc_workers = vec![worker("a:1", 0.0001), worker("b:2", 0.0001)];
        let mut jitter = two.clone();
        jitter.rpc_workers[1].link.round_trip_s = 0.0003;
        assert!(!differs(&two, &jitter));
        let mut one = two.clone();
        one.rpc_workers.pop();
        assert!(differs(&two, &one));
        assert!(differs(&one, &two));
    }

    #[test]
    fn small_moves_are_not_reported_and_the_resident_model_is_forced_out_when_its_ram_is_gone() {
        assert!(!differs(&machine(10 * GB), &machine(10 * GB + GB / 2)));
        assert!(differs(&machine(10 * GB), &machine(12 * GB)));
        let info = ModelInfo {
            path: "/m/7b.gguf".into(),
            memory: MemoryBreakdown {
                weights_bytes: 6 * GB,
                kv_cache_bytes: 0,
                compute_bytes: None,
                gpu_bytes: 0,
            },
            ..Default::default()
        };
        assert_eq!(resident_no_longer_fits(&machine(7 * GB), &info), None);
        let why = resident_no_longer_fits(&machine(4 * GB), &info).unwrap();
        assert!(
            why.starts_with("memory is running out: 4.0 GB available"),
            "{why}"
        );
    }
}
