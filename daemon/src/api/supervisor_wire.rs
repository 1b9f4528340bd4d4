//! The supervisor's daemon-owned shapes as the wire says them (`r1d_client::wire`), for the HTTP
//! routes and D-Bus.

use r1d_client::wire;

use crate::config::SwapPolicy;
use crate::supervisor::{Event, ReloadOutcome, ReportedState, WatchStatus};

/// The reported state as `/r1/status`, `/health` and events say it.
pub fn state(s: ReportedState) -> wire::State {
    match s {
        ReportedState::Starting => wire::State::Starting,
        ReportedState::Loading => wire::State::Loading,
        ReportedState::Ready => wire::State::Ready,
        ReportedState::NoModel => wire::State::NoModel,
        ReportedState::Swapping => wire::State::Swapping,
        ReportedState::Degraded => wire::State::Degraded,
    }
}

/// `auto`, `idle` or `manual`.
pub fn policy_name(p: SwapPolicy) -> &'static str {
    match p {
        SwapPolicy::Auto => "auto",
        SwapPolicy::Idle => "idle",
        SwapPolicy::Manual => "manual",
    }
}

/// One event of `GET /r1/events`.
pub fn event(e: &Event) -> wire::Event {
    wire::Event {
        kind: e.kind.name().to_owned(),
        time: e.time,
        message: e.message.clone(),
        state: e.state.map(state),
        model: e.model.clone(),
        changes: e.changes.clone(),
        error: e.error.clone(),
    }
}

/// `/r1/status` `watch`.
pub fn watch_status(v: &WatchStatus) -> wire::WatchStatus {
    wire::WatchStatus {
        config_path: v.config_path.clone(),
        config_error: v.config_error.clone(),
        swap_policy: policy_name(v.swap_policy).into(),
        pinned: v.pinned.clone(),
        better: v.better.clone(),
        pending: v.pending.clone(),
        degraded: v.degraded.clone(),
        last_load_error: v.last_load_error.clone(),
        last_crash: v.last_crash.clone(),
        memory_credit: v.memory_credit.as_ref().map(|c| wire::MemoryCredit {
            ram_bytes: c.ram_bytes,
            ram_mapped_bytes: c.ram_mapped_bytes,
            gpu_bytes: c.gpu_bytes,
        }),
    }
}

/// The body of the answer to `POST /r1/reload`.
pub fn reload_outcome(o: ReloadOutcome) -> wire::ReloadOutcome {
    wire::ReloadOutcome {
        config_path: o.config_path,
        changes: o.changes,
        error: o.error,
        model: o.model,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::EventKind;

    #[test]
    fn events_and_status_keep_their_wire_names() {
        let mut e = Event::new(EventKind::Swap, "serving echo-b");
        e.state = Some(ReportedState::Degraded);
        e.model = Some("echo-b".into());
        let w = event(&e);
        assert_eq!(w.kind, "swap");
        assert_eq!(w.state, Some(wire::State::Degraded));
        assert_eq!(w.message, "serving echo-b");
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(json["state"], "degraded");
        let kinds = [
            (EventKind::State, "state"),
            (EventKind::Config, "config"),
            (EventKind::Hardware, "hardware"),
            (EventKind::Plan, "plan"),
            (EventKind::Swap, "swap"),
        ];
        for (k, name) in kinds {
            assert_eq!(event(&Event::new(k, "")).kind, name);
        }
        let v = WatchStatus {
            config_path: Some("/etc/r1d/r1d.toml".into()),
            config_error: None,
            swap_policy: SwapPolicy::Manual,
            pinned: Some("deepseek-r1:1.5b".into()),
            better: None,
            pending: None,
            degraded: None,
            last_load_error: None,
            last_crash: None,
            memory_credit: None,
        };
        let w = watch_status(&v);
        assert_eq!(w.swap_policy, "manual");
        assert_eq!(w.pinned.as_deref(), Some("deepseek-r1:1.5b"));
    }
}
