//! The decider: what to load, pure.
//!
//! Inputs are plain values — the pin, the model the config names, what the store's plan wants,
//! what the engine has, the hysteresis state, the swap policy and the clock (`now` is passed in,
//! so tests run a fake clock) — and the output is a [`Decision`]. No I/O happens here: the
//! supervisor's task loop (`super`) reads the store, the engine and the file system, calls these
//! functions, and carries out the decision (loads, events, the watch status).

use std::time::{Duration, Instant, SystemTime};

use crate::config::SwapPolicy;
use crate::engine::LoadSpec;

/// What a person chose at run time; it wins over the config and the planner until `r1ctl use
/// auto`, or until a config edit changes the model the config names.
#[derive(Debug, Clone, PartialEq)]
pub enum Pin {
    /// `r1ctl use NAME`: resolved again at each re-plan (the best present quantization of a
    /// pinned variant that fits may change with the machine).
    Name(String),
    /// `POST /r1/load` / D-Bus `Load`: this file with these settings.
    Spec(LoadSpec),
    /// `POST /r1/unload` / D-Bus `Unload`: serve nothing.
    Unloaded,
}

impl Pin {
    /// How `/r1/status` `watch.pinned` shows it.
    pub fn shown(&self) -> String {
        match self {
            Pin::Name(n) => n.clone(),
            Pin::Spec(s) => s.params.path.clone(),
            Pin::Unloaded => "nothing (unloaded on request)".into(),
        }
    }
}

/// What should be resident, and why (one line for `/r1/status` `selection`).
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    /// The load; `None`: nothing (present) can be served.
    pub spec: Option<LoadSpec>,
    /// Why.
    pub reason: String,
}

/// The reason given for a model named in the config or on the command line.
pub const CONFIGURED: &str = "the model configured with [model] path or --model";

/// Where the wanted model comes from, before the store is asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// Known without the store: a pinned file, nothing (unloaded), or the configured model.
    Known(Wanted),
    /// A pinned name: the store resolves it (`Store::resolve_use`).
    Resolve(String),
    /// No pin and no configured model: the planner's best present choice (`Store::choose`).
    Plan,
}

/// What should be resident: the run-time pin, else the configured model, else the planner's.
pub fn want(pin: Option<&Pin>, configured: Option<LoadSpec>) -> Want {
    match pin {
        Some(Pin::Spec(spec)) => Want::Known(Wanted {
            spec: Some(spec.clone()),
            reason: format!("{} was loaded on request", spec.params.path),
        }),
        Some(Pin::Unloaded) => Want::Known(Wanted {
            spec: None,
            reason: "the model was unloaded on request".into(),
        }),
        Some(Pin::Name(name)) => Want::Resolve(name.clone()),
        None => match configured {
            Some(spec) => Want::Known(Wanted {
                spec: Some(spec),
                reason: CONFIGURED.into(),
            }),
            None => Want::Plan,
        },
    }
}

/// Whether a config edit drops the run-time pin: the person edited which model to serve (the
/// model the config names, or `[planner] variant`), which beats a pin.
pub fn edit_unpins(
    old_model: Option<&LoadSpec>,
    new_model: Option<&LoadSpec>,
    old_variant: Option<&str>,
    new_variant: Option<&str>,
) -> bool {
    old_model != new_model || old_variant != new_variant
}

/// What a config edit, `r1ctl use` or a re-plan does with what it wants.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing can be served: keep what is served (never unload to serve nothing).
    Keep,
    /// The wanted model is already resident and no other load is queued: nothing to load.
    AlreadyServed,
    /// Load it (through the engine's queue). This also supersedes a queued load of another
    /// model: an edit reverted while its swap waits loads the resident spec again, which the
    /// engine treats as "skip the queued swap".
    Load(LoadSpec),
}

/// The step for `wanted`, given the engine: `ready` (a model is served and no load runs),
/// `queued` (a load waits behind answers) and `resident` (what the served model was loaded
/// with).
pub fn step(wanted: &Wanted, ready: bool, queued: bool, resident: Option<&LoadSpec>) -> Step {
    match &wanted.spec {
        None => Step::Keep,
        Some(spec) if ready && !queued && resident == Some(spec) => Step::AlreadyServed,
        Some(spec) => Step::Load(spec.clone()),
    }
}

/// A different choice and since when it holds (the hysteresis state).
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The choice.
    pub spec: LoadSpec,
    /// Why it fits better.
    pub reason: String,
    /// Since when (the clock passed to [`decide`]).
    pub since: Instant,
}

/// What [`decide`] remembers between re-plans.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hysteresis {
    /// The different choice waiting for the settle time, if any.
    pub pending: Option<Pending>,
}

/// The `[watch]` settings a re-plan acts by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// `[watch] swap_policy`.
    pub swap: SwapPolicy,
    /// `[watch] settle_s`: how long a different choice must hold, seconds.
    pub settle_s: f64,
    /// `[watch] idle_s`: under `idle`, seconds without requests before swapping.
    pub idle_s: f64,
}

/// What a periodic re-plan sees.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The clock.
    pub now: Instant,
    /// A load runs or waits in the engine's queue (or the engine is starting): a re-plan would
    /// supersede the load someone asked for and compare against a model about to go.
    pub busy: bool,
    /// A model is served.
    pub serving: bool,
    /// What the served model was loaded with.
    pub resident: Option<&'a LoadSpec>,
    /// What the pin, the config or the plan wants now.
    pub wanted: &'a Wanted,
    /// The last load that failed and its file's modification time then.
    pub last_failed: Option<(&'a LoadSpec, Option<SystemTime>)>,
    /// The modification time of the wanted file now.
    pub wanted_modified: Option<SystemTime>,
    /// Why the resident model no longer fits (its own memory is gone), if so: the swap is forced.
    pub forced: Option<String>,
    /// Time since the last request ended (or r1d started).
    pub idle_for: Duration,
    /// The settings.
    pub policy: Policy,
}

/// Why a re-plan did nothing at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// A load runs or is queued.
    Busy,
    /// The wanted model failed to load before and its file has not changed since (a config edit
    /// or `r1ctl use` still tries it).
    FailedBefore,
}

/// The outcome of a re-plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Do nothing, report nothing.
    Ignore(Ignored),
    /// What is served stays (it is what is wanted, or nothing better is present); any better
    /// fit shown is cleared. `dropped`: a different choice that did not last the settle time
    /// (a burst), and for how long it held.
    Keep {
        /// The pending change that ended, and how long it held.
        dropped: Option<(LoadSpec, Duration)>,
    },
    /// A different choice holds, but not for the settle time yet: wait.
    Wait {
        /// When it will have held long enough (`None`: never, the settle time is beyond the
        /// clock's range).
        until: Option<Instant>,
        /// Set when this re-plan saw the choice first: the message announcing it.
        first: Option<String>,
    },
    /// Swap now.
    Act {
        /// What to load.
        spec: LoadSpec,
        /// Why it is wanted (the selection's reason).
        reason: String,
        /// Set when the resident model no longer fits: answers in flight end.
        forced: Option<String>,
        /// Why r1d acts, for the swap event.
        why: &'static str,
        /// Set when this re-plan saw the choice first (nothing served: no settle time).
        first: Option<String>,
    },
    /// A better fit, settled, that the swap policy does not act on now: report it.
    Report {
        /// The line for `watch.better` and the `plan` event.
        message: String,
        /// Set when this re-plan saw the choice first.
        first: Option<String>,
    },
}

/// The file name of a load spec's path (for messages).
pub fn file_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_owned())
}

/// One periodic re-plan: compares what is wanted with what is served, with hysteresis
/// (`settle_s`), the swap policy and the failed-load memory; updates `state`.
pub fn decide(state: &mut Hysteresis, f: &Facts<'_>) -> Decision {
    if f.busy {
        return Decision::Ignore(Ignored::Busy);
    }
    let differs = match (&f.wanted.spec, f.resident) {
        (Some(w), Some(c)) => w != c,
        (Some(_), None) => true,
        // Nothing better is present: keep serving what is served.
        (None, _) => false,
    };
    let Some(spec) = f.wanted.spec.clone().filter(|_| differs) else {
        let dropped = state
            .pending
            .take()
            .map(|p| (p.spec, f.now.saturating_duration_since(p.since)));
        return Decision::Keep { dropped };
    };
    if f.last_failed
        .is_some_and(|(failed, mtime)| *failed == spec && mtime == f.wanted_modified)
    {
        return Decision::Ignore(Ignored::FailedBefore);
    }
    let target = file_name(&spec.params.path);
    let p = f.policy;
    let (since, first) = match &state.pending {
        Some(pending) if pending.spec == spec => (pending.since, None),
        _ => {
            state.pending = Some(Pending {
                spec: spec.clone(),
                reason: f.wanted.reason.clone(),
                since: f.now,
            });
            let message = format!(
                "{target} fits better now ({}); acting if that lasts {} s",
                f.wanted.reason, p.settle_s
            );
            (f.now, Some(message))
        }
    };
    let held = f.now.saturating_duration_since(since).as_secs_f64();
    // With nothing served there is nothing to flap between: serve at once.
    if f.serving && held < p.settle_s {
        return Decision::Wait {
            until: super::seconds_checked(p.settle_s).and_then(|d| since.checked_add(d)),
            first,
        };
    }
    let go = f.forced.is_some() && p.swap != SwapPolicy::Manual
        || p.swap == SwapPolicy::Auto
        || p.swap == SwapPolicy::Idle && f.idle_for.as_secs_f64() >= p.idle_s;
    if go {
        state.pending = None;
        return Decision::Act {
            spec,
            reason: f.wanted.reason.clone(),
            forced: f.forced.clone(),
            why: if f.serving {
                "the machine changed"
            } else {
                "nothing is served, and this model can be"
            },
            first,
        };
    }
    let message = match p.swap {
        SwapPolicy::Manual => format!(
            "{target} fits better ({}); swap_policy is manual: run `r1ctl use auto` to swap",
            f.wanted.reason
        ),
        _ => format!(
            "{target} fits better ({}); swapping after {} s without requests",
            f.wanted.reason, p.idle_s
        ),
    };
    Decision::Report { message, first }
}

/// The message for a pending change that ended before the settle time.
pub fn dropped_message(spec: &LoadSpec, held: Duration, settle_s: f64) -> String {
    format!(
        "{} would have fitted better for {:.0} s, less than the settle time ({} s): ignored",
        file_name(&spec.params.path),
        held.as_secs_f64(),
        settle_s
    )
}

/// Under `idle`: whether a better fit that was reported (`better_reported`) should be swapped to
/// now, between re-plans — no load is queued and r1d has been idle for `idle_s`.
pub fn idle_swap_due(
    policy: SwapPolicy,
    queued: bool,
    better_reported: bool,
    idle_for: Duration,
    idle_s: f64,
) -> bool {
    policy == SwapPolicy::Idle && !queued && better_reported && idle_for.as_secs_f64() >= idle_s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LoadParams;

    fn spec(path: &str) -> LoadSpec {
        LoadSpec {
            params: LoadParams {
                path: format!("/models/{path}"),
                ..Default::default()
            },
            backend: None,
        }
    }

    fn wanted(path: Option<&str>) -> Wanted {
        Wanted {
            spec: path.map(spec),
            reason: "the plan".into(),
        }
    }

    const AUTO: Policy = Policy {
        swap: SwapPolicy::Auto,
        settle_s: 2.0,
        idle_s: 30.0,
    };

    /// What a tick expects, coarsely.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Is {
        Ignore(Ignored),
        Keep,
        /// A burst shorter than the settle time ended.
        Dropped,
        Wait,
        Act,
        Report,
    }

    fn kind(d: &Decision) -> Is {
        match d {
            Decision::Ignore(why) => Is::Ignore(*why),
            Decision::Keep { dropped: None } => Is::Keep,
            Decision::Keep { dropped: Some(_) } => Is::Dropped,
            Decision::Wait { .. } => Is::Wait,
            Decision::Act { .. } => Is::Act,
            Decision::Report { .. } => Is::Report,
        }
    }

    /// One re-plan of a scenario: at `at` seconds on the fake clock, the plan wants `want`.
    struct Tick {
        at: f64,
        want: Option<&'static str>,
        expect: Is,
    }

    fn t(at: f64, want: Option<&'static str>, expect: Is) -> Tick {
        Tick { at, want, expect }
    }

    /// Runs `ticks` against a served `resident` (when `Some`) with `policy`; `tweak` adjusts
    /// the facts of every tick.
    fn run(
        name: &str,
        resident: Option<&str>,
        policy: Policy,
        ticks: &[Tick],
        tweak: impl Fn(&mut Facts<'_>),
    ) -> Vec<Decision> {
        let t0 = Instant::now();
        let resident = resident.map(spec);
        let mut state = Hysteresis::default();
        let mut out = Vec::new();
        for (i, tick) in ticks.iter().enumerate() {
            let w = wanted(tick.want);
            let mut facts = Facts {
                now: t0 + Duration::from_secs_f64(tick.at),
                busy: false,
                serving: resident.is_some(),
                resident: resident.as_ref(),
                wanted: &w,
                last_failed: None,
                wanted_modified: None,
                forced: None,
                idle_for: Duration::ZERO,
                policy,
            };
            tweak(&mut facts);
            let d = decide(&mut state, &facts);
            assert_eq!(
                kind(&d),
                tick.expect,
                "{name}: tick {i} at {} s: {d:?}",
                tick.at
            );
            out.push(d);
        }
        out
    }

    #[test]
    fn hysteresis_a_choice_must_hold_for_the_settle_time() {
        let table: &[(&str, &[Tick])] = &[
            (
                "the resident model is wanted: nothing to do",
                &[t(0.0, Some("a"), Is::Keep), t(5.0, Some("a"), Is::Keep)],
            ),
            (
                "held for the settle time: acts",
                &[
                    t(0.0, Some("b"), Is::Wait),
                    t(1.0, Some("b"), Is::Wait),
                    t(1.99, Some("b"), Is::Wait),
                    t(2.0, Some("b"), Is::Act),
                ],
            ),
            (
                "a burst shorter than the settle time is dropped, and nothing is swapped",
                &[
                    t(0.0, Some("b"), Is::Wait),
                    t(1.0, Some("a"), Is::Dropped),
                    t(2.5, Some("a"), Is::Keep),
                    t(5.0, Some("a"), Is::Keep),
                ],
            ),
            (
                "a burst that comes back starts the settle time again",
                &[
                    t(0.0, Some("b"), Is::Wait),
                    t(1.0, Some("a"), Is::Dropped),
                    t(1.5, Some("b"), Is::Wait),
                    t(2.5, Some("b"), Is::Wait),
                    t(3.5, Some("b"), Is::Act),
                ],
            ),
            (
                "another different choice restarts the settle time",
                &[
                    t(0.0, Some("b"), Is::Wait),
                    t(1.5, Some("c"), Is::Wait),
                    t(2.5, Some("c"), Is::Wait),
                    t(3.5, Some("c"), Is::Act),
                ],
            ),
            (
                "nothing present fits: the resident model stays, never unloaded for nothing",
                &[t(0.0, None, Is::Keep), t(10.0, None, Is::Keep)],
            ),
        ];
        for (name, ticks) in table {
            run(name, Some("a"), AUTO, ticks, |_| {});
        }
    }

    #[test]
    fn the_first_sighting_is_announced_once_and_a_dropped_burst_says_how_long_it_held() {
        let d = run(
            "burst",
            Some("a"),
            AUTO,
            &[
                t(0.0, Some("b"), Is::Wait),
                t(0.5, Some("b"), Is::Wait),
                t(1.0, Some("a"), Is::Dropped),
            ],
            |_| {},
        );
        let Decision::Wait {
            first: Some(first),
            until,
        } = &d[0]
        else {
            panic!("{d:?}")
        };
        assert_eq!(
            first,
            "b fits better now (the plan); acting if that lasts 2 s"
        );
        assert!(until.is_some());
        assert!(matches!(&d[1], Decision::Wait { first: None, .. }), "{d:?}");
        let Decision::Keep {
            dropped: Some((s, held)),
        } = &d[2]
        else {
            panic!("{d:?}")
        };
        assert_eq!(*held, Duration::from_secs(1));
        assert_eq!(
            dropped_message(s, *held, 2.0),
            "b would have fitted better for 1 s, less than the settle time (2 s): ignored"
        );
    }

    #[test]
    fn with_nothing_served_a_choice_is_served_without_the_settle_time() {
        let d = run(
            "nothing served",
            None,
            Policy {
                settle_s: 60.0,
                ..AUTO
            },
            &[t(0.0, Some("a"), Is::Act)],
            |_| {},
        );
        let Decision::Act { why, first, .. } = &d[0] else {
            panic!()
        };
        assert_eq!(*why, "nothing is served, and this model can be");
        assert!(first.is_some(), "announced as well");
        // ...and nothing present: nothing to do.
        run(
            "nothing at all",
            None,
            AUTO,
            &[t(0.0, None, Is::Keep)],
            |_| {},
        );
    }

    #[test]
    fn swap_policies() {
        let manual = Policy {
            swap: SwapPolicy::Manual,
            ..AUTO
        };
        let idle = Policy {
            swap: SwapPolicy::Idle,
            ..AUTO
        };
        let settled = [t(0.0, Some("b"), Is::Wait), t(2.0, Some("b"), Is::Report)];
        // Manual only reports, every re-plan, and never acts, even when forced.
        let d = run("manual", Some("a"), manual, &settled, |_| {});
        let Decision::Report { message, .. } = &d[1] else {
            panic!()
        };
        assert_eq!(
            message,
            "b fits better (the plan); swap_policy is manual: run `r1ctl use auto` to swap"
        );
        run(
            "manual, later",
            Some("a"),
            manual,
            &[
                t(0.0, Some("b"), Is::Wait),
                t(2.0, Some("b"), Is::Report),
                t(60.0, Some("b"), Is::Report),
            ],
            |_| {},
        );
        run("manual, forced", Some("a"), manual, &settled, |f| {
            f.forced = Some("memory is running out".into())
        });
        // Idle: reports while busy, acts once idle long enough.
        let d = run("idle, busy", Some("a"), idle, &settled, |f| {
            f.idle_for = Duration::from_secs(5)
        });
        let Decision::Report { message, .. } = &d[1] else {
            panic!()
        };
        assert_eq!(
            message,
            "b fits better (the plan); swapping after 30 s without requests"
        );
        run(
            "idle, idle",
            Some("a"),
            idle,
            &[t(0.0, Some("b"), Is::Wait), t(2.0, Some("b"), Is::Act)],
            |f| f.idle_for = Duration::from_secs(30),
        );
        // Forced (the resident model's memory is gone): idle does not wait for idleness.
        let d = run("idle, forced", Some("a"), idle, &settled[..1], |f| {
            f.forced = Some("memory is running out".into())
        });
        assert!(
            matches!(d[0], Decision::Wait { .. }),
            "the settle time still holds"
        );
        let d = run(
            "idle, forced, settled",
            Some("a"),
            idle,
            &[t(0.0, Some("b"), Is::Wait), t(2.0, Some("b"), Is::Act)],
            |f| f.forced = Some("memory is running out".into()),
        );
        let Decision::Act { forced, why, .. } = &d[1] else {
            panic!()
        };
        assert_eq!(forced.as_deref(), Some("memory is running out"));
        assert_eq!(*why, "the machine changed");
        // The idle check between re-plans.
        let cases = [
            (SwapPolicy::Idle, false, true, 30, true),
            (SwapPolicy::Idle, false, true, 29, false),
            (SwapPolicy::Idle, true, true, 60, false),
            (SwapPolicy::Idle, false, false, 60, false),
            (SwapPolicy::Auto, false, true, 60, false),
            (SwapPolicy::Manual, false, true, 60, false),
        ];
        for (policy, queued, better, idle_for, due) in cases {
            assert_eq!(
                idle_swap_due(policy, queued, better, Duration::from_secs(idle_for), 30.0),
                due,
                "{policy:?} queued={queued} better={better} idle={idle_for}"
            );
        }
    }

    #[test]
    fn a_failed_load_is_not_retried_until_its_file_changes() {
        // 'static, as the facts of every tick may borrow it.
        let failed: &'static LoadSpec = Box::leak(Box::new(spec("b")));
        let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let later = then + Duration::from_secs(1);
        let ticks = [
            t(0.0, Some("b"), Is::Ignore(Ignored::FailedBefore)),
            t(5.0, Some("b"), Is::Ignore(Ignored::FailedBefore)),
            t(60.0, Some("b"), Is::Ignore(Ignored::FailedBefore)),
        ];
        run("unchanged", Some("a"), AUTO, &ticks, |f| {
            f.last_failed = Some((failed, Some(then)));
            f.wanted_modified = Some(then);
        });
        run("unchanged, nothing served", None, AUTO, &ticks[..1], |f| {
            f.last_failed = Some((failed, Some(then)));
            f.wanted_modified = Some(then);
        });
        // The file changed: tried again (at once with nothing served).
        run("changed", None, AUTO, &[t(0.0, Some("b"), Is::Act)], |f| {
            f.last_failed = Some((failed, Some(then)));
            f.wanted_modified = Some(later);
        });
        // Another file is not held back by b's failure.
        run("another", None, AUTO, &[t(0.0, Some("c"), Is::Act)], |f| {
            f.last_failed = Some((failed, Some(then)));
            f.wanted_modified = Some(then);
        });
    }

    #[test]
    fn no_re_plan_while_a_load_runs_or_waits() {
        run(
            "busy",
            Some("a"),
            AUTO,
            &[
                t(0.0, Some("b"), Is::Ignore(Ignored::Busy)),
                t(10.0, Some("b"), Is::Ignore(Ignored::Busy)),
            ],
            |f| f.busy = true,
        );
    }

    #[test]
    fn pins_win_over_the_config_and_the_plan() {
        let configured = spec("configured");
        let pinned = spec("pinned");
        let table: Vec<(Option<Pin>, Option<LoadSpec>, Want)> = vec![
            (None, None, Want::Plan),
            (
                None,
                Some(configured.clone()),
                Want::Known(Wanted {
                    spec: Some(configured.clone()),
                    reason: CONFIGURED.into(),
                }),
            ),
            (
                Some(Pin::Name("deepseek-r1:1.5b".into())),
                Some(configured.clone()),
                Want::Resolve("deepseek-r1:1.5b".into()),
            ),
            (
                Some(Pin::Spec(pinned.clone())),
                Some(configured.clone()),
                Want::Known(Wanted {
                    spec: Some(pinned.clone()),
                    reason: "/models/pinned was loaded on request".into(),
                }),
            ),
            (
                Some(Pin::Unloaded),
                Some(configured.clone()),
                Want::Known(Wanted {
                    spec: None,
                    reason: "the model was unloaded on request".into(),
                }),
            ),
        ];
        for (pin, configured, expected) in table {
            assert_eq!(want(pin.as_ref(), configured), expected, "{pin:?}");
        }
        // A pinned name re-resolved to the resident file: re-plans keep it, however long.
        run(
            "pinned",
            Some("pinned"),
            AUTO,
            &[
                t(0.0, Some("pinned"), Is::Keep),
                t(30.0, Some("pinned"), Is::Keep),
            ],
            |_| {},
        );
        // Unloaded on request: re-plans never load anything.
        run(
            "unloaded",
            None,
            AUTO,
            &[t(0.0, None, Is::Keep), t(30.0, None, Is::Keep)],
            |_| {},
        );
    }

    #[test]
    fn config_edits_of_the_model_drop_the_pin_other_edits_keep_it() {
        let a = spec("a");
        let b = spec("b");
        let table = [
            (Some(&a), Some(&a), None, None, false),
            (Some(&a), Some(&b), None, None, true),
            (None, Some(&a), None, None, true),
            (Some(&a), None, None, None, true),
            (None, None, None, Some("deepseek-r1:7b"), true),
            (
                None,
                None,
                Some("deepseek-r1:7b"),
                Some("deepseek-r1:7b"),
                false,
            ),
        ];
        for (old, new, ov, nv, unpins) in table {
            assert_eq!(
                edit_unpins(old, new, ov, nv),
                unpins,
                "{old:?} {new:?} {ov:?} {nv:?}"
            );
        }
    }

    #[test]
    fn steps_of_edits_and_use() {
        let a = spec("a");
        let b = spec("b");
        let table = [
            // Nothing wanted: keep what is served.
            (wanted(None), true, false, Some(&a), Step::Keep),
            // The resident one: nothing to do.
            (
                wanted(Some("a")),
                true,
                false,
                Some(&a),
                Step::AlreadyServed,
            ),
            // A config edit to another model: load it.
            (
                wanted(Some("b")),
                true,
                false,
                Some(&a),
                Step::Load(b.clone()),
            ),
            // An edit reverted while the swap to b waits behind an answer: loading a again
            // supersedes the queued swap (the engine skips it and keeps a).
            (
                wanted(Some("a")),
                true,
                true,
                Some(&a),
                Step::Load(a.clone()),
            ),
            // While a load runs, the same spec is loaded again (the newer load wins).
            (
                wanted(Some("a")),
                false,
                false,
                Some(&a),
                Step::Load(a.clone()),
            ),
            // Nothing served.
            (wanted(Some("a")), false, false, None, Step::Load(a.clone())),
        ];
        for (w, ready, queued, resident, expected) in table {
            assert_eq!(
                step(&w, ready, queued, resident),
                expected,
                "{w:?} {ready} {queued}"
            );
        }
    }
}
