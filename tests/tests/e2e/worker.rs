//! Models in a worker process (`[plugins] isolation = "process"`, the default): a backend that
//! segfaults, aborts, exits or hangs ends its worker, never r1d; the answers running on it end
//! with an error event naming how it died, r1d loads the model again in a new worker and serves
//! on; a model whose worker dies three times in a row is left for the one that served before it.
//! The echo plugin's `[[crash:KIND]]` switches make the faults (a real null-pointer write, a real
//! `abort()`, …), so these tests run the real worker, protocol and restart.

use std::time::Duration;

use futures_util::StreamExt;
use r1d_client::wire::{ChatCompletionRequest, ChatMessage, State};
use r1d_tests::{echo_config, echo_model, fixture, Daemon, DaemonOptions, SMOLLM2};

use crate::ask;
use crate::watch::until;

/// Every process whose command line has `__plugin-worker`, with its parent's pid.
fn plugin_workers() -> Vec<(u32, Option<u32>)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__plugin-worker"))
        })
        .map(|pid| {
            // Field 4 of stat, after the parenthesised command name.
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            (pid, ppid)
        })
        .collect()
}

/// Sends the signal named `name` (`KILL`, `STOP`, …) to `pid` with kill(1).
fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid}");
}

/// The pids of `parent`'s worker processes.
fn workers_of(parent: u32) -> Vec<u32> {
    plugin_workers()
        .into_iter()
        .filter(|&(_, ppid)| ppid == Some(parent))
        .map(|(pid, _)| pid)
        .collect()
}

/// Starts a long, slow echo stream and returns it with its first chunk.
async fn long_stream(
    client: &r1d_client::Client,
) -> (
    r1d_client::ChunkStream,
    r1d_client::wire::ChatCompletionChunk,
) {
    let long = ChatCompletionRequest {
        messages: vec![ChatMessage::new("user", "long answer [[slow]]")],
        max_tokens: Some(400),
        stream: true,
        ..Default::default()
    };
    let mut stream = client.chat_stream(&long).await.unwrap();
    let first = stream.next().await.expect("a first chunk").unwrap();
    (stream, first)
}

/// Reads `stream` to its error event: the error's text (`None` when it ended without one) and
/// how many chunks came before it.
async fn error_event(stream: &mut r1d_client::ChunkStream) -> (Option<String>, usize) {
    let mut chunks = 0;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => chunks += 1,
            Err(e) => return (Some(e.to_string()), chunks),
        }
    }
    (None, chunks)
}

fn echo_daemon(config_extra: &str) -> (Daemon, tempfile::TempDir) {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(
        models.path(),
        r#"{"name": "echo-crashy", "context_length": 4096}"#,
    );
    let config = format!("{}{config_extra}", echo_config(&model));
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&config),
        ..Default::default()
    });
    (daemon, models)
}

/// Waits until a model is served again after a crash.
async fn ready_again(daemon: &Daemon) {
    until(daemon, 30, "the model to be served again", || async {
        daemon
            .client()
            .health()
            .await
            .ok()
            .filter(|h| h.status == State::Ready)
    })
    .await;
}

#[tokio::test]
async fn a_segfault_abort_or_exit_in_a_backend_fails_that_answer_and_r1d_serves_on() {
    let (daemon, _m) = echo_daemon("");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    let first = workers_of(daemon.pid());
    assert_eq!(
        first.len(),
        1,
        "one worker process holds the model: {first:?}"
    );
    for (kind, how, words) in [
        (
            "segv",
            "signal 11 (SIGSEGV",
            "writing through a null pointer",
        ),
        ("abort", "signal 6 (SIGABRT", "aborting"),
        ("exit", "exited with status 3", "exiting with status 3"),
    ] {
        let err = client
            .chat(&ask(&format!("please [[crash:{kind}]]")))
            .await
            .expect_err("the answer whose backend died must fail");
        let message = err.to_string();
        assert!(
            message.contains("worker process") && message.contains(how),
            "{kind}: the error names the worker and how it ended: {message}"
        );
        assert!(
            message.contains(words),
            "{kind}: the error carries the worker's last log line: {message}"
        );
        assert!(
            message.contains("500") || message.contains("Internal"),
            "{kind}: a backend failure is a server error: {message}"
        );
        ready_again(&daemon).await;
        // Served again, by a new worker, and right.
        let answer = client.chat(&ask("still here")).await.unwrap();
        assert_eq!(answer.choices[0].message.content, "STILL HERE");
        let status = client.status().await.unwrap();
        let crash = status
            .watch
            .as_ref()
            .and_then(|w| w.last_crash.clone())
            .unwrap_or_default();
        assert!(
            crash.contains(how) && crash.contains("1 in a row"),
            "{kind}: /r1/status says what happened (an answer in between resets the count): {crash}"
        );
        let health = client.health().await.unwrap();
        assert!(health
            .last_crash
            .as_deref()
            .is_some_and(|c| c.contains(how)));
    }
    let now = workers_of(daemon.pid());
    assert_eq!(now.len(), 1, "one worker again: {now:?}");
    assert_ne!(now, first, "a new worker process");
    assert!(daemon.log().contains("loading") && daemon.log().contains("again in a new worker"));
}

#[tokio::test]
async fn a_stream_running_when_its_worker_dies_ends_with_an_error_event() {
    let (daemon, _m) = echo_daemon("[server]\nparallel = 2\n");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    // It streams…
    let (mut stream, first) = long_stream(&client).await;
    assert!(!first.choices.is_empty());
    // …when another request kills the worker both run in.
    let _ = daemon.client().chat(&ask("[[crash:segv]]")).await;
    let (error, chunks) = error_event(&mut stream).await;
    let error = error.unwrap_or_else(|| {
        panic!("the stream ended after {chunks} more chunks without an error event")
    });
    assert!(
        error.contains("SIGSEGV") && error.contains("retry"),
        "the error event says the backend died and the answer is lost: {error}"
    );
    ready_again(&daemon).await;
    let again = client.chat(&ask("after the crash")).await.unwrap();
    assert_eq!(again.choices[0].message.content, "AFTER THE CRASH");
}

#[tokio::test]
async fn a_hung_backend_is_killed_after_hang_timeout_s_and_the_model_restarted() {
    let (daemon, _m) = echo_daemon("[plugins]\nhang_timeout_s = 2\n");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(30), client.chat(&ask("[[crash:hang]]")))
        .await
        .expect("a hung backend must not hold the answer forever")
        .expect_err("the hung answer fails");
    let message = err.to_string();
    assert!(
        message.contains("no progress") && message.contains("hang_timeout_s"),
        "the error says r1d stopped a hung worker: {message}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the timeout"
    );
    ready_again(&daemon).await;
    let answer = client.chat(&ask("awake")).await.unwrap();
    assert_eq!(answer.choices[0].message.content, "AWAKE");
}

#[tokio::test]
async fn a_worker_that_computes_silently_longer_than_hang_timeout_s_is_not_killed() {
    // One prompt batch of a big model on a slow CPU reports nothing for minutes but computes:
    // here 4 s of computing with nothing reported, against a 1 s hang timeout.
    let (daemon, _m) = echo_daemon("[plugins]\nhang_timeout_s = 1\n");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let pid = workers_of(daemon.pid());
    let answer = daemon
        .client()
        .chat(&ask("thinking hard [[busy:4]]"))
        .await
        .expect("a worker that computes is not hung");
    assert_eq!(
        answer.choices[0].message.content,
        "THINKING HARD [[BUSY:4]]"
    );
    assert_eq!(workers_of(daemon.pid()), pid, "the same worker served it");
    assert!(daemon.client().health().await.unwrap().last_crash.is_none());
}

#[tokio::test]
async fn an_idle_worker_that_is_stopped_is_found_and_restarted_before_the_next_request() {
    // A heartbeat limit of 5 s (five heartbeats; the hang timeout is shorter).
    let (daemon, _m) = echo_daemon("[plugins]\nhang_timeout_s = 1\n");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    assert!(client.health().await.unwrap().last_crash.is_none());
    let [stopped] = workers_of(daemon.pid())[..] else {
        panic!("one worker")
    };
    signal(stopped, "STOP");
    // Nobody asks anything: r1d finds the frozen worker by its missing heartbeat.
    let crash = until(&daemon, 30, "the stopped worker to be reported", || async {
        daemon
            .client()
            .health()
            .await
            .ok()
            .and_then(|h| h.last_crash)
    })
    .await;
    assert!(crash.contains("not even its heartbeat"), "{crash}");
    ready_again(&daemon).await;
    let workers = workers_of(daemon.pid());
    assert!(!workers.contains(&stopped), "the stopped worker was killed");
    let answer = client.chat(&ask("thawed")).await.unwrap();
    assert_eq!(answer.choices[0].message.content, "THAWED");
}

#[tokio::test]
async fn a_request_sent_right_after_the_idle_worker_is_killed_is_served_by_the_new_one() {
    let (daemon, _m) = echo_daemon("");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    for round in 0..3 {
        let [worker] = workers_of(daemon.pid())[..] else {
            panic!("one worker")
        };
        // The OOM killer's way; the request follows at once, before r1d may have seen the end.
        signal(worker, "KILL");
        let answer = client
            .chat(&ask(&format!("round {round}")))
            .await
            .expect("it waits for the restart: it had received nothing yet");
        assert_eq!(answer.choices[0].message.content, format!("ROUND {round}"));
    }
}

#[tokio::test]
async fn a_model_that_crashes_three_times_in_a_row_is_left_for_the_previous_one() {
    let models = tempfile::tempdir().unwrap();
    let good = models.path().join("good.echo");
    std::fs::write(&good, r#"{"name": "good"}"#).unwrap();
    let bad = models.path().join("bad.echo");
    std::fs::write(&bad, r#"{"name": "bad"}"#).unwrap();
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&echo_config(&good)),
        ..Default::default()
    });
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    // Pin the other model, as `r1ctl use` does.
    let used: r1d_client::wire::Status = client
        .post_json(
            "/r1/load",
            &serde_json::json!({"path": bad.display().to_string(), "backend": "echo"}),
        )
        .await
        .unwrap();
    assert_eq!(used.model.as_ref().unwrap().name, "bad", "{used:?}");
    for crash in 1..=3 {
        let err = client.chat(&ask("[[crash:abort]]")).await.unwrap_err();
        assert!(err.to_string().contains("SIGABRT"), "crash {crash}: {err}");
        ready_again(&daemon).await;
    }
    // After the third, `bad` is not loaded again: `good` serves (once the engine has taken the
    // restart job the crash queued), and status says why.
    let status = until(&daemon, 30, "the previous model to serve", || async {
        daemon
            .client()
            .status()
            .await
            .ok()
            .filter(|s| s.model.as_ref().is_some_and(|m| m.name == "good"))
    })
    .await;
    let watch = status.watch.unwrap();
    let why = watch.last_load_error.unwrap_or_default();
    assert!(
        why.contains("3 times in a row") && why.contains("bad.echo"),
        "{why}"
    );
    assert!(watch.last_crash.is_some_and(|c| c.contains("3 in a row")));
    let answer = client.chat(&ask("good one")).await.unwrap();
    assert_eq!(answer.choices[0].message.content, "GOOD ONE");
}

#[tokio::test]
async fn a_crash_while_loading_is_a_failed_load_that_says_how() {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), r#"{"name": "dies", "crash_load": "segv"}"#);
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&echo_config(&model)),
        ..Default::default()
    });
    let health = daemon.settled().await;
    assert_eq!(health.status, State::NoModel);
    let error = health.error.unwrap_or_default();
    assert!(
        error.contains("SIGSEGV") && error.contains("test.echo"),
        "the load error names the file and how its worker died: {error}"
    );
    // r1d itself is fine.
    assert!(daemon.client().status().await.is_ok());
}

#[tokio::test]
async fn in_process_isolation_runs_no_worker() {
    let (daemon, _m) = echo_daemon("[plugins]\nisolation = \"in-process\"\n");
    assert_eq!(daemon.settled().await.status, State::Ready);
    assert!(workers_of(daemon.pid()).is_empty());
    let answer = daemon.client().chat(&ask("inside")).await.unwrap();
    assert_eq!(answer.choices[0].message.content, "INSIDE");
}

#[tokio::test]
async fn a_served_model_file_that_changes_on_disk_is_reloaded_or_refused() {
    let Some(smol) = fixture(SMOLLM2) else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    let path = models.path().join("smol.gguf");
    std::fs::copy(&smol, &path).unwrap();
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&path),
        ..Default::default()
    });
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    let short = |text: &str| ChatCompletionRequest {
        max_tokens: Some(4),
        temperature: Some(0.0),
        ..ask(text)
    };
    client.chat(&short("Hi")).await.unwrap();

    // A new version renamed over it (how downloads land): loaded again, and served.
    let next = models.path().join(".smol.gguf.new");
    std::fs::copy(&smol, &next).unwrap();
    std::fs::rename(&next, &path).unwrap();
    let answer = client.chat(&short("Hi again")).await.unwrap();
    assert!(answer.usage.completion_tokens >= 1, "{answer:?}");
    assert!(
        daemon
            .log()
            .contains("was replaced by another file since it was loaded; loading it again"),
        "{}",
        daemon.log()
    );

    // A truncated file renamed over it: refused, and the file already loaded goes on serving.
    let bad = models.path().join(".smol.gguf.bad");
    std::fs::write(&bad, &std::fs::read(&smol).unwrap()[..4 << 20]).unwrap();
    let loaded_copy = models.path().join("kept.gguf");
    std::fs::hard_link(&path, &loaded_copy).unwrap();
    std::fs::rename(&bad, &path).unwrap();
    client.chat(&short("Still there?")).await.unwrap();
    let status = client.status().await.unwrap();
    let refused = status
        .watch
        .and_then(|w| w.last_load_error)
        .unwrap_or_default();
    assert!(
        refused.contains("which is refused") && refused.contains("goes on serving"),
        "{refused}"
    );
    // The good file back in place (a new inode again): loaded.
    std::fs::rename(&loaded_copy, &path).unwrap();
    client.chat(&short("And now?")).await.unwrap();

    // Truncated in place under the mapping: refused before any answer reads past the end.
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = client.chat(&short("Hi once more")).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("changed size from") && message.contains("truncated"),
        "the refusal says the file changed and is now truncated: {message}"
    );
    let health = client.health().await.unwrap();
    assert_eq!(health.status, State::NoModel);
    assert!(
        health.last_crash.is_none(),
        "noticed before the backend read the missing pages: {health:?}"
    );
}

/// Builds the C test plugin `tests/plugins/crashc.c` against `plugins/abi/r1_plugin.h` into a
/// plugin directory of its own; `None` (skipped, or failed under CI) without a C compiler.
fn crashc_plugin_dir() -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().unwrap();
    build_crashc(&dir.path().join("libr1_plugin_crashc.so"), &[]).then_some(dir)
}

/// Builds `tests/plugins/crashc.c` into `out` with extra `cc` arguments; false (skipped, or a
/// panic under CI) without a C compiler.
fn build_crashc(out: &std::path::Path, extra: &[&str]) -> bool {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-I"])
        .arg(root.join("plugins/abi"))
        .args(extra)
        .arg(root.join("tests/plugins/crashc.c"))
        .arg("-o")
        .arg(out)
        .status();
    match built {
        Ok(s) if s.success() => true,
        other => {
            let why = format!("no C compiler built tests/plugins/crashc.c ({other:?})");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{why}");
            }
            eprintln!("\n!!!!! SKIPPED: {why} !!!!!\n");
            false
        }
    }
}

#[tokio::test]
async fn a_plugin_that_crashes_or_hangs_while_probed_is_recorded_and_the_others_serve() {
    let plugins = r1d_tests::plugin_dir(&["echo"]);
    for mode in ["segv", "hang", "spin"] {
        let out = plugins.path().join(format!("libr1_plugin_probe{mode}.so"));
        if !build_crashc(&out, &[&format!("-DCRASHC_PROBE_FAULT=\"{mode}\"")]) {
            return;
        }
    }
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), r#"{"name": "echo-beside-bad-plugins"}"#);
    // A short hang timeout, so the hung probe is given up after 2 s, not 30.
    let config = format!("{}[plugins]\nhang_timeout_s = 2\n", echo_config(&model));
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&config),
        plugin_dir: Some(plugins.path()),
        ..Default::default()
    });
    assert_eq!(daemon.settled().await.status, State::Ready);
    // r1d opened none of the plugins itself: the bad ones took only their probe workers down.
    let answer = daemon.client().chat(&ask("still here")).await.unwrap();
    assert_eq!(answer.choices[0].message.content, "STILL HERE");
    let list = daemon.backends().await;
    let error_of = |file: &str| {
        let record = list
            .backends
            .iter()
            .find(|b| b.path.ends_with(file))
            .unwrap_or_else(|| panic!("{file} is listed: {list:?}"));
        assert!(record.name.is_none(), "{record:?}");
        record.error.clone().expect("an error")
    };
    let segv = error_of("libr1_plugin_probesegv.so");
    assert!(segv.contains("SIGSEGV"), "{segv}");
    assert!(
        segv.contains("crashc: about to fail with 'segv'"),
        "the plugin's last log line is kept: {segv}"
    );
    assert!(segv.contains("libr1_plugin_probesegv.so"), "{segv}");
    let hang = error_of("libr1_plugin_probehang.so");
    assert!(hang.contains("made no progress"), "{hang}");
    assert!(hang.contains("libr1_plugin_probehang.so"), "{hang}");
    // A probe that computes forever gets no extra time: r1d's start waits for it.
    let spin = error_of("libr1_plugin_probespin.so");
    assert!(
        spin.contains("made no progress for 2 s"),
        "killed at the hang timeout, not at 10 times it: {spin}"
    );
    let echo = list
        .backends
        .iter()
        .find(|b| b.name.as_deref() == Some("echo"))
        .unwrap();
    assert!(echo.error.is_none(), "{echo:?}");
    // The probe workers are gone; only the model's worker is left.
    assert_eq!(workers_of(daemon.pid()).len(), 1);
}

#[tokio::test]
async fn a_c_plugin_that_segfaults_aborts_overflows_its_stack_or_exits_never_takes_r1d_down() {
    let Some(plugins) = crashc_plugin_dir() else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    let model = models.path().join("model.crashc");
    std::fs::write(&model, "ok\n").unwrap();
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        plugin_dir: Some(plugins.path()),
        args: vec!["--backend".into(), "crashc".into()],
        ..Default::default()
    });
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    // The C plugin works through the worker.
    let answer = client.chat(&ask("hello")).await.unwrap();
    assert_eq!(answer.choices[0].message.content, "ok");
    for (mode, how, words) in [
        ("segv", "SIGSEGV", "crashc: about to fail with 'segv'"),
        // A process the plugin started keeps the worker's pipes open: the death is still seen
        // (it is the worker's exit that counts), and that process is killed with it.
        (
            "fork-segv",
            "SIGSEGV",
            "crashc: about to fail with 'fork-segv'",
        ),
        ("abort", "SIGABRT", "crashc: about to fail with 'abort'"),
        // Rust's stack-overflow handler in the worker turns the overflow into an abort.
        ("stack", "SIGABRT", "stack overflow"),
        (
            "exit",
            "exited with status 4",
            "crashc: about to fail with 'exit'",
        ),
    ] {
        // A new model file per mode: `r1ctl load` of it.
        let path = models.path().join(format!("{mode}.crashc"));
        std::fs::write(&path, format!("{mode}\n")).unwrap();
        let _: r1d_client::wire::Status = client
            .post_json(
                "/r1/load",
                &serde_json::json!({"path": path.display().to_string(), "backend": "crashc"}),
            )
            .await
            .unwrap();
        let err = client.chat(&ask("hello")).await.unwrap_err().to_string();
        assert!(
            err.contains(how) && err.contains(words),
            "{mode}: the error names how the worker ended and the plugin's last words: {err}"
        );
        ready_again(&daemon).await;
        assert!(client.status().await.is_ok(), "{mode}: r1d serves on");
        // One worker again (the restarted one), and nothing the dead one started.
        until(
            &daemon,
            20,
            "one worker and no leftover process",
            || async {
                let workers = workers_of(daemon.pid());
                // A forked child of a dead worker is re-parented away from r1d, to init.
                let group_left = plugin_workers()
                    .into_iter()
                    .filter(|&(pid, ppid)| !workers.contains(&pid) && ppid == Some(1))
                    .count();
                (workers.len() == 1 && group_left == 0).then_some(())
            },
        )
        .await;
    }
    // A crash inside `load` is a failed load; the model before it serves again.
    let bad = models.path().join("bad.crashc");
    std::fs::write(&bad, "load-segv\n").unwrap();
    let err = client
        .post_json::<_, r1d_client::wire::Status>(
            "/r1/load",
            &serde_json::json!({"path": bad.display().to_string(), "backend": "crashc"}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SIGSEGV") && err.contains("bad.crashc"),
        "{err}"
    );
    let status = client.status().await.unwrap();
    assert!(
        status.model.is_some(),
        "the previous model serves again: {status:?}"
    );
}

#[tokio::test]
async fn failed_and_cancelled_loads_leave_no_worker_behind() {
    let (daemon, models) = echo_daemon("");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    let fail = models.path().join("fail.echo");
    std::fs::write(&fail, r#"{"fail_load": "nope"}"#).unwrap();
    for _ in 0..5 {
        let err = client
            .post_json::<_, r1d_client::wire::Status>(
                "/r1/load",
                &serde_json::json!({"path": fail.display().to_string(), "backend": "echo"}),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
    ready_again(&daemon).await;
    let workers = workers_of(daemon.pid());
    assert_eq!(
        workers.len(),
        1,
        "only the serving model's worker: {workers:?}"
    );
}

#[tokio::test]
async fn a_request_queued_when_the_worker_dies_waits_for_the_restart() {
    let (daemon, _m) = echo_daemon("[server]\nparallel = 1\n");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    let (mut stream, _) = long_stream(&client).await;
    let queued = {
        let client = daemon.client();
        tokio::spawn(async move { client.chat(&ask("queued one")).await })
    };
    until(&daemon, 10, "the second request to queue", || async {
        client.status().await.ok().filter(|s| s.queued_requests > 0)
    })
    .await;
    for pid in workers_of(daemon.pid()) {
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    }
    let (cut, _) = error_event(&mut stream).await;
    assert!(
        cut.as_deref().is_some_and(|e| e.contains("SIGKILL")),
        "the running answer ends with an error event: {cut:?}"
    );
    let answer = queued
        .await
        .unwrap()
        .expect("the queued request is served after the restart");
    assert_eq!(answer.choices[0].message.content, "QUEUED ONE");
}

#[tokio::test]
async fn an_answer_that_hangs_beside_others_that_progress_is_caught() {
    let (daemon, _m) = echo_daemon("[server]\nparallel = 3\n[plugins]\nhang_timeout_s = 2\n");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    // Steady traffic beside the hung answer.
    let busy = {
        let client = daemon.client();
        tokio::spawn(async move {
            for _ in 0..4 {
                let _ = client
                    .chat(&ChatCompletionRequest {
                        max_tokens: Some(60),
                        ..ask("busy [[slow]]")
                    })
                    .await;
            }
        })
    };
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), client.chat(&ask("[[crash:hang]]")))
        .await
        .expect("the hung answer is caught while others progress")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no progress"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    busy.abort();
}

#[tokio::test]
async fn sigterm_while_the_plugin_hangs_ends_the_answer_with_an_error_and_exits_0() {
    let (mut daemon, _m) = echo_daemon("");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let hung = {
        let client = daemon.client();
        tokio::spawn(async move { client.chat(&ask("[[crash:hang]]")).await })
    };
    until(&daemon, 10, "the hung answer to run", || async {
        daemon
            .client()
            .status()
            .await
            .ok()
            .filter(|s| s.running_requests > 0)
    })
    .await;
    let stopped = std::time::Instant::now();
    daemon.terminate();
    let err = hung.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("shutting down"), "{err}");
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .expect("r1d exits");
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "stopped in {:?}",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn a_model_file_written_in_place_during_an_answer_stops_that_answer() {
    let (daemon, models) = echo_daemon("");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    let (mut stream, _) = long_stream(&client).await;
    // Same inode, new bytes (as `dd conv=notrunc` or a careless editor would).
    let model = models.path().join("test.echo");
    let mut text = std::fs::read_to_string(&model).unwrap();
    text.push_str("\n ");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .unwrap();
    let (error, _) = error_event(&mut stream).await;
    let error = error.expect("the answer ends with an error event, not garbage");
    assert!(
        error.contains("was written in place during this answer"),
        "{error}"
    );
    // The next request loads the file again and is served.
    let again = client.chat(&ask("fresh")).await.unwrap();
    assert_eq!(again.choices[0].message.content, "FRESH");
    assert!(daemon
        .log()
        .contains("since it was loaded; loading it again"));
}

/// `(policy, nice, slice in ns)` of thread `tid` (the slice is `sched_runtime`, which Linux
/// 6.12 and later report for fair-class threads); `None` once the thread has ended.
fn sched_of(tid: u32) -> Option<(u32, i32, u64)> {
    let attr = r1d::scheduling::of_thread(tid as libc::pid_t).ok()?;
    Some((attr.sched_policy, attr.sched_nice, attr.sched_runtime))
}

/// `(thread id, thread name)` of every thread of `pid` (none once it has exited).
fn threads_of(pid: u32) -> Vec<(u32, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|e| {
            let tid = e.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((tid, name.trim().to_owned()))
        })
        .collect()
}

/// Whether this kernel keeps a custom slice for a fair-class thread (Linux 6.12+), tried with
/// r1d's own request on a thread of the test's own.
fn kernel_has_custom_slices() -> bool {
    std::thread::spawn(|| {
        r1d::scheduling::ask_for_short_slices() == r1d::scheduling::SliceOutcome::Set
    })
    .join()
    .unwrap()
}

/// Raises the nice value of the process about to exec r1d to 3 (a unit's `Nice=3`).
fn nice_3() -> std::io::Result<()> {
    // SAFETY: setpriority is async-signal-safe and allocates nothing.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 3) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Every thread of r1d and of its model's worker — including those made per answer, while one
/// streams — asks for the kernel's shortest scheduler slice (0.1 ms, so a token on its way to
/// the client does not wait for the compute threads' slice to end), and keeps the policy and
/// nice value r1d was started with (here `Nice=3`, as a unit could set it); the compute threads
/// a backend starts while it loads keep the default slice.
#[tokio::test]
async fn every_thread_of_r1d_and_its_worker_asks_for_short_slices_and_keeps_its_nice_value() {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(
        models.path(),
        r#"{"name": "echo-slices", "context_length": 4096}"#,
    );
    let config = echo_config(&model);
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&config),
        pre_exec: Some(nice_3),
        ..Default::default()
    });
    let client = daemon.client();
    ready_again(&daemon).await;
    let (_stream, _first) = long_stream(&client).await;
    let workers = workers_of(daemon.pid());
    assert_eq!(workers.len(), 1, "one worker holds the model: {workers:?}");
    let custom = kernel_has_custom_slices();
    let mut seen = Vec::new();
    for (tid, name) in threads_of(daemon.pid())
        .into_iter()
        .chain(threads_of(workers[0]))
    {
        let Some((policy, nice, slice)) = sched_of(tid) else {
            continue; // the thread ended meanwhile
        };
        assert_eq!(policy, libc::SCHED_OTHER as u32, "{name} ({tid})");
        assert_eq!(nice, 3, "{name} ({tid}) keeps the nice value");
        if custom {
            assert_eq!(slice, 100_000, "{name} ({tid}) runs with 0.1 ms slices");
        }
        seen.push(name);
    }
    // The threads that carry a token to its client were among those checked.
    for name in [
        "r1d-answer",
        "r1d-worker-rx",
        "tokio-rt-worker",
        "r1d-worker-call",
    ] {
        assert!(seen.iter().any(|n| n == name), "{name} in {seen:?}");
    }
    if custom {
        assert!(
            daemon.log().contains("0.1 ms scheduler slices"),
            "{}",
            daemon.log()
        );
    }
    drop(daemon);

    // The compute threads a backend starts while it loads (llama.cpp's batch thread and its
    // OpenMP team) keep the kernel's default slice, longer than r1d's: EEVDF runs the earliest
    // virtual deadline, so a relay thread that wakes runs before them.
    let _one = crate::llama::ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = crate::llama::ready_smollm_daemon().await else {
        return;
    };
    let answer = daemon.client().chat(&ask("hello")).await.unwrap();
    assert!(answer.usage.completion_tokens > 0);
    let workers = workers_of(daemon.pid());
    assert_eq!(workers.len(), 1, "{workers:?}");
    let mut compute = 0;
    for (tid, name) in threads_of(daemon.pid())
        .into_iter()
        .chain(threads_of(workers[0]))
    {
        let Some((_, _, slice)) = sched_of(tid) else {
            continue;
        };
        if name == "llamacpp-batch" {
            compute += 1;
            if custom {
                assert_ne!(slice, 100_000, "the compute thread {tid} keeps the default");
            }
        } else if custom {
            assert_eq!(slice, 100_000, "{name} ({tid})");
        }
    }
    assert!(compute >= 1, "the batch thread was among those checked");
}

/// `(thread id, thread name, voluntary context switches)` of every thread of `pid`.
fn wakeups_of(pid: u32) -> Vec<(u32, String, u64)> {
    threads_of(pid)
        .into_iter()
        .filter_map(|(tid, name)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            let n = status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse()
                .ok()?;
            Some((tid, name, n))
        })
        .collect()
}

/// An idle r1d with its model resident in a worker does not wake for nothing: its threads and
/// the worker's sleep until something can be due (the next hardware re-plan, the heartbeat once
/// a second), about 4 wake-ups a second in all. Before, timers every 250 ms made it about 14.
#[tokio::test]
async fn an_idle_r1d_and_its_worker_wake_a_few_times_a_second_at_most() {
    let (daemon, _models) = echo_daemon("");
    ready_again(&daemon).await;
    // The answer's and the load's threads are gone, and the first re-plan is 30 s away.
    let answer = daemon.client().chat(&ask("hello")).await.unwrap();
    assert_eq!(answer.choices[0].message.content, "HELLO");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let workers = workers_of(daemon.pid());
    assert_eq!(workers.len(), 1, "one worker holds the model: {workers:?}");
    let pids = [daemon.pid(), workers[0]];
    let before: Vec<_> = pids.iter().flat_map(|&p| wakeups_of(p)).collect();
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let after: Vec<_> = pids.iter().flat_map(|&p| wakeups_of(p)).collect();
    let mut total = 0;
    let mut per_thread = Vec::new();
    for (tid, name, n) in &after {
        let was = before.iter().find(|(t, _, _)| t == tid).map_or(0, |b| b.2);
        if n > &was {
            per_thread.push(format!("{name} {}", n - was));
            total += n - was;
        }
    }
    // 5 s: the worker's heartbeat and r1d's reader of it (5 each), the hang watch (5), the
    // telemetry upkeep and the hardware poller (a few). 30 leaves room; 14 a second was ~70.
    assert!(
        total <= 30,
        "{total} wake-ups in {window:?}: {per_thread:?}"
    );
    eprintln!("idle wake-ups in {window:?}: {total} ({per_thread:?})");
}
