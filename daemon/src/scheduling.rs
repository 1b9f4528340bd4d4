//! The CPU scheduler's time slice r1d asks Linux for.
//!
//! While a model generates, its compute threads keep every core busy between decode steps. Each
//! token then crosses a few threads on its way to the client (the batch thread, the worker's call
//! thread and pipe, r1d's reader, the answer thread, the HTTP task). Under Linux's EEVDF
//! scheduler a thread that wakes on a busy core waits until the running thread's slice ends
//! (`RUN_TO_PARITY`) — with the default slice, usually the next timer tick, up to 4 ms at
//! `HZ=250` per hop. Measured here (2 cores, SmolLM2, `perf sched timehist`): 2–3 ms at each of
//! two hops before the first token reached the client.
//!
//! Since Linux 6.12 a fair-class thread may ask for a shorter slice: `sched_attr::sched_runtime`
//! (`sched_setattr(2)`; clamped by the kernel to 0.1–100 ms, `kernel/sched/syscalls.c`), and a
//! thread with a shorter slice than the running one preempts it on wakeup (`PREEMPT_SHORT`,
//! "sched/eevdf: Allow shorter slices to wakeup-preempt"). r1d asks for the shortest, 0.1 ms, in
//! `main` before any other thread exists, so every thread of r1d and of its model workers
//! inherits it. A shorter slice changes *when* a thread runs, not *how much*: its share of the
//! CPU (its weight, from its nice value) stays, so this takes nothing from other programs.
//! Older kernels ignore `sched_runtime` for the fair class, and r1d then runs as before.
//!
//! The policy, nice value and flags already set (`Nice=`, `CPUSchedulingPolicy=` in a unit) are
//! read first and kept; a thread outside the fair class (real-time, idle, deadline) is left as
//! it is.

/// The slice r1d asks for, nanoseconds: the kernel's minimum for a custom slice (0.1 ms).
pub const SLICE_NS: u64 = 100_000;

/// What [`ask_for_short_slices`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceOutcome {
    /// The kernel reports the slice asked for ([`SLICE_NS`]).
    Set,
    /// The kernel took the request but reports another slice, nanoseconds (0: a kernel older
    /// than 6.12, which has no custom slice for the fair class).
    NotHonoured(u64),
    /// The thread is not in the fair class (`SCHED_FIFO`, `SCHED_RR`, `SCHED_IDLE`,
    /// `SCHED_DEADLINE`); its policy number is left unchanged.
    OtherPolicy(u32),
    /// `sched_getattr`/`sched_setattr` failed (errno text), e.g. refused by a seccomp filter.
    Failed(String),
}

impl std::fmt::Display for SliceOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SliceOutcome::Set => write!(
                f,
                "threads run with {:.1} ms scheduler slices (a token reaches its client without \
                 waiting for the compute threads' slice to end)",
                SLICE_NS as f64 / 1e6
            ),
            SliceOutcome::NotHonoured(0) => write!(
                f,
                "this kernel has no custom scheduler slice (Linux 6.12 or later); the default \
                 slice stays"
            ),
            SliceOutcome::NotHonoured(ns) => write!(
                f,
                "asked for a {:.1} ms scheduler slice; the kernel kept {:.2} ms",
                SLICE_NS as f64 / 1e6,
                *ns as f64 / 1e6
            ),
            SliceOutcome::OtherPolicy(p) => write!(
                f,
                "scheduling policy {p} is not the fair class; left as it is"
            ),
            SliceOutcome::Failed(e) => write!(f, "could not set the scheduler slice: {e}"),
        }
    }
}

/// Reads the calling thread's scheduling attributes (`sched_getattr(2)`).
///
/// # Errors
/// The errno of the call.
pub fn current() -> std::io::Result<libc::sched_attr> {
    of_thread(0)
}

/// Reads the scheduling attributes of thread `tid` (0: the calling thread) with
/// `sched_getattr(2)`; `sched_runtime` is its slice in ns on Linux 6.12 and later.
///
/// # Errors
/// The errno of the call (`ESRCH` once the thread has ended).
pub fn of_thread(tid: libc::pid_t) -> std::io::Result<libc::sched_attr> {
    let mut attr = empty();
    // SAFETY: `attr` is a writable `sched_attr` of the size passed; `tid` is only read by the
    // kernel.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut attr as *mut libc::sched_attr,
            std::mem::size_of::<libc::sched_attr>() as libc::c_uint,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr)
}

/// Asks for [`SLICE_NS`] slices for the calling thread, keeping its policy, nice value and
/// flags; threads it creates afterwards inherit the slice. Call it first in `main`.
pub fn ask_for_short_slices() -> SliceOutcome {
    let attr = match current() {
        Ok(a) => a,
        Err(e) => return SliceOutcome::Failed(format!("sched_getattr: {e}")),
    };
    if !is_fair(attr.sched_policy) {
        return SliceOutcome::OtherPolicy(attr.sched_policy);
    }
    if !set_runtime(attr, SLICE_NS) {
        return SliceOutcome::Failed(format!(
            "sched_setattr: {}",
            std::io::Error::last_os_error()
        ));
    }
    match current() {
        Ok(a) if a.sched_runtime == SLICE_NS => SliceOutcome::Set,
        Ok(a) => SliceOutcome::NotHonoured(a.sched_runtime),
        Err(e) => SliceOutcome::Failed(format!("sched_getattr: {e}")),
    }
}

/// Runs `f` with the calling thread at the kernel's default slice, then asks for [`SLICE_NS`]
/// again. Threads `f` makes keep the default: r1d calls a plugin's `load` this way, so the
/// compute threads a backend starts there (llama.cpp's batch thread and its OpenMP team, ONNX
/// Runtime's pools) have a longer slice than r1d's own threads, and EEVDF, which runs the
/// earliest virtual deadline (vruntime + slice), runs a waking relay thread before them. With
/// equal slices the pick fell to vruntime, and a woken answer thread was seen waiting 2.4 ms
/// behind an OpenMP thread. Where the short slice was not set (an older kernel, another policy),
/// `f` just runs.
pub fn with_default_slice<T>(f: impl FnOnce() -> T) -> T {
    let short = current()
        .ok()
        .filter(|a| a.sched_runtime == SLICE_NS && is_fair(a.sched_policy));
    let Some(attr) = short else {
        return f();
    };
    set_runtime(attr, 0);
    let out = f();
    set_runtime(attr, SLICE_NS);
    out
}

fn is_fair(policy: u32) -> bool {
    policy == libc::SCHED_OTHER as u32 || policy == libc::SCHED_BATCH as u32
}

/// `sched_setattr` of the calling thread with `attr`'s policy, nice value and fork flag and a
/// slice of `runtime` ns (0: the kernel's default). Returns whether the call succeeded.
fn set_runtime(mut attr: libc::sched_attr, runtime: u64) -> bool {
    attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
    attr.sched_runtime = runtime;
    // Utilization clamps are not part of this struct's size; only keep what it carries.
    attr.sched_flags &= libc::SCHED_FLAG_RESET_ON_FORK as u64;
    // SAFETY: `attr` is a valid `sched_attr` whose `size` is its own; pid 0 is this thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    rc == 0
}

fn empty() -> libc::sched_attr {
    libc::sched_attr {
        size: 0,
        sched_policy: 0,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: 0,
        sched_deadline: 0,
        sched_period: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_slice_keeps_the_threads_nice_value_and_load_threads_get_the_default() {
        // On a thread of its own: the test harness's threads keep their slice.
        std::thread::spawn(|| {
            // SAFETY: gettid has no arguments and cannot fail.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
            let before = current().unwrap();
            // Raise this thread's nice value by 2 (always allowed) so the test sees it kept.
            // SAFETY: setpriority takes plain integers; on Linux, PRIO_PROCESS with a thread id
            // acts on that thread alone.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, before.sched_nice + 2) };
            let nice = current().unwrap().sched_nice;
            let outcome = ask_for_short_slices();
            let after = current().unwrap();
            assert_eq!(after.sched_nice, nice, "nice value kept");
            assert_eq!(after.sched_policy, before.sched_policy, "policy kept");
            match outcome {
                SliceOutcome::Set => assert_eq!(after.sched_runtime, SLICE_NS),
                SliceOutcome::NotHonoured(ns) => assert_eq!(after.sched_runtime, ns),
                other => panic!("unexpected outcome on a fair-class thread: {other}"),
            }
            // A thread made now inherits the slice.
            let child = std::thread::spawn(|| current().unwrap().sched_runtime)
                .join()
                .unwrap();
            assert_eq!(child, after.sched_runtime);
            if outcome == SliceOutcome::Set {
                // One made inside `with_default_slice` has the kernel's default; this thread
                // has the short slice again afterwards, nice value kept.
                let (inside, made) = with_default_slice(|| {
                    let made = std::thread::spawn(|| current().unwrap().sched_runtime)
                        .join()
                        .unwrap();
                    (current().unwrap().sched_runtime, made)
                });
                assert_ne!(inside, SLICE_NS);
                assert_eq!(made, inside);
                let again = current().unwrap();
                assert_eq!((again.sched_runtime, again.sched_nice), (SLICE_NS, nice));
            }
        })
        .join()
        .unwrap();
    }
}
