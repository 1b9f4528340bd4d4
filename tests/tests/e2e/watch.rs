//! Issue 9: r1d follows its config file and the hardware, re-plans, and swaps the model without
//! failing requests. The real daemon, the echo plugin (for the planner and swaps: small GGUF
//! files carrying catalog variants' metadata, loaded by the echo backend) and the real llama.cpp
//! plugin with SmolLM2; the hardware is a fake `/proc` + cgroup tree (`--hardware-root`) that
//! the test changes while r1d runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gguf_header::write::{gguf, Meta};
use r1d_client::wire::{self, ChatCompletionRequest, ChatMessage, State};
use r1d_tests::{
    binary, echo_config, echo_model, fixture, Daemon, DaemonOptions, R1_TRUNCATED, SMOLLM2,
};

use crate::ask;

const GB: u64 = 1_000_000_000;

/// An echo model file named `name` in `dir`.
fn echo_file(dir: &Path, file: &str, json: &str) -> PathBuf {
    let sub = dir.join(file);
    std::fs::create_dir_all(&sub).unwrap();
    let path = echo_model(&sub, json);
    let dest = dir.join(format!("{file}.echo"));
    std::fs::rename(path, &dest).unwrap();
    dest
}

fn config_with_model(path: &Path) -> String {
    format!("{}\n[watch]\nhardware_interval_s = 0\n", echo_config(path))
}

/// Polls `f` every 50 ms until it returns `Some`, up to `secs`; panics with `what` and the log.
pub(crate) async fn until<T, F, Fut>(daemon: &Daemon, secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {secs} s:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// r1d with `config` (TOML text) and the default plugins.
fn echo_daemon(config: &str) -> Daemon {
    Daemon::start(DaemonOptions {
        config: Some(config),
        ..Default::default()
    })
}

/// Starts a streamed `[[slow]]` answer of `max_tokens` tokens (50 ms each on the echo backend)
/// and returns it once its first chunk arrived (the engine is then busy with it).
async fn slow_answer(daemon: &Daemon, prompt: &str, max_tokens: u32) -> r1d_client::ChunkStream {
    let mut request = ask(prompt);
    request.max_tokens = Some(max_tokens);
    let mut stream = daemon.client().chat_stream(&request).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    stream
}

/// Waits for the first model to be served; panics with `/health`'s reason and the log if not.
async fn ready(daemon: &Daemon) {
    let health = daemon.settled().await;
    assert_eq!(
        health.status,
        State::Ready,
        "{:?}\n{}",
        health.error,
        daemon.log()
    );
}

/// `POST /r1/use` as `r1ctl use NAME` sends it.
async fn use_model(daemon: &Daemon, name: &str) -> wire::Status {
    daemon
        .client()
        .post_json("/r1/use", &wire::ModelRequest { model: name.into() })
        .await
        .unwrap()
}

async fn resident(daemon: &Daemon) -> Option<String> {
    let status = daemon.client().status().await.ok()?;
    (status.state == State::Ready)
        .then_some(status.model)
        .flatten()
        .map(|m| m.name)
}

/// Collects the events r1d sends until `stop` says enough (or `secs` pass). Returns once the
/// stream's first event (the current state) has arrived: r1d is subscribed then, so nothing
/// that happens afterwards is missed.
async fn collect_events(
    daemon: &Daemon,
    secs: u64,
    stop: impl Fn(&wire::Event) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<Vec<wire::Event>> {
    let client = daemon.client();
    let mut stream = client.events().await.expect("GET /r1/events");
    let first = tokio::time::timeout(Duration::from_secs(secs), stream.next())
        .await
        .expect("the event stream's first event")
        .expect("an event")
        .expect("a readable event");
    tokio::spawn(async move {
        let done = stop(&first);
        let mut seen = vec![first];
        if done {
            return seen;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(secs));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                e = stream.next() => match e {
                    Some(Ok(e)) => {
                        let done = stop(&e);
                        seen.push(e);
                        if done { return seen; }
                    }
                    _ => return seen,
                },
                () = &mut deadline => return seen,
            }
        }
    })
}

#[tokio::test]
async fn editing_the_pinned_model_during_a_streamed_answer_lets_it_finish_then_swaps() {
    let models = tempfile::tempdir().unwrap();
    let a = echo_file(models.path(), "a", r#"{"name": "echo-a"}"#);
    let b = echo_file(models.path(), "b", r#"{"name": "echo-b"}"#);
    let config = config_with_model(&a);
    let daemon = echo_daemon(&config);
    ready(&daemon).await;
    let events = collect_events(&daemon, 30, |e| {
        e.kind == "swap" && e.message.starts_with("serving")
    })
    .await;

    // A slow answer: 40 tokens, 50 ms apart.
    let client = daemon.client();
    let mut request = ask("[[slow]] one two three");
    request.max_tokens = Some(40);
    let mut stream = client.chat_stream(&request).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.model, "a");

    // The editor saves the config while the answer streams.
    daemon.edit_config(&config_with_model(&b));
    let mut tokens = 0;
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("the answer in flight must not fail");
        assert_eq!(chunk.model, "a");
        if let Some(c) = chunk.choices.first() {
            if c.delta.content.as_deref().is_some_and(|t| !t.is_empty()) {
                tokens += 1;
            }
            if let Some(f) = &c.finish_reason {
                finish = Some(f.clone());
            }
        }
    }
    assert_eq!(tokens, 40, "the answer in flight ran to its end");
    assert_eq!(finish.as_deref(), Some("length"));

    // The next request is served by the new model (it may wait for the swap in the queue).
    let answer = client.chat(&ask("after the edit")).await.unwrap();
    assert_eq!(answer.model, "b");
    assert_eq!(answer.choices[0].message.content, "AFTER THE EDIT");

    let events = events.await.unwrap();
    let config_event = events
        .iter()
        .find(|e| e.kind == "config")
        .unwrap_or_else(|| panic!("no config event in {events:#?}"));
    assert!(
        config_event
            .changes
            .iter()
            .any(|c| c.starts_with("[model] path:") && c.contains("b.echo")),
        "{config_event:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "swap" && e.message.starts_with("swapping echo-a for b.echo")),
        "{events:#?}"
    );
    assert!(daemon.log().contains("[model] path:"), "{}", daemon.log());
}

#[tokio::test]
async fn a_config_typo_keeps_the_running_config_and_status_names_the_error() {
    let models = tempfile::tempdir().unwrap();
    let a = echo_file(models.path(), "a", r#"{"name": "echo-a"}"#);
    let b = echo_file(models.path(), "b", r#"{"name": "echo-b"}"#);
    let daemon = echo_daemon(&config_with_model(&a));
    ready(&daemon).await;

    // `pth` for `path`, and a new model that must not be loaded from a rejected file.
    let typo = format!(
        "[model]\npth = {:?}\nbackend = \"echo\"\n",
        b.display().to_string()
    );
    daemon.edit_config(&typo);
    let error = until(&daemon, 10, "the rejection", || async {
        daemon.client().status().await.ok()?.watch?.config_error
    })
    .await;
    assert!(error.contains("r1d.toml"), "{error}");
    assert!(error.contains("pth"), "{error}");
    assert!(error.contains("line 2"), "{error}");
    assert_eq!(resident(&daemon).await.as_deref(), Some("echo-a"));
    let answer = daemon.client().chat(&ask("still here")).await.unwrap();
    assert_eq!(answer.model, "a");

    // r1ctl status shows it, and `r1ctl reload` refuses the same file with the same message.
    let out = std::process::Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("rejected, the running config stays in force") && text.contains("pth"),
        "{text}"
    );
    let out = std::process::Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("reload")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pth") && stderr.contains("r1d.toml"),
        "{stderr}"
    );

    // Fixing the file clears the error and applies it.
    daemon.edit_config(&config_with_model(&b));
    until(&daemon, 10, "the swap to echo-b", || async {
        (resident(&daemon).await.as_deref() == Some("echo-b")).then_some(())
    })
    .await;
    let status = daemon.client().status().await.unwrap();
    assert_eq!(status.watch.unwrap().config_error, None);
}

#[tokio::test]
async fn a_new_model_that_fails_to_load_leaves_the_old_one_serving() {
    let models = tempfile::tempdir().unwrap();
    let a = echo_file(models.path(), "a", r#"{"name": "echo-a"}"#);
    let broken = echo_file(
        models.path(),
        "broken",
        r#"{"name": "echo-broken", "fail_load": "the weights are corrupt"}"#,
    );
    // Re-plans every 0.25 s: they must not retry the broken file over and over.
    let replanning = |model: &Path| {
        config_with_model(model).replace(
            "hardware_interval_s = 0\n",
            "hardware_interval_s = 0.25\nsettle_s = 0.25\n",
        )
    };
    let daemon = echo_daemon(&replanning(&a));
    ready(&daemon).await;
    daemon.edit_config(&replanning(&broken));
    let error = until(&daemon, 10, "the failed swap", || async {
        daemon.client().status().await.ok()?.watch?.last_load_error
    })
    .await;
    assert!(error.contains("the weights are corrupt"), "{error}");
    assert!(error.contains("broken.echo"), "{error}");
    assert!(error.contains("serving echo-a again"), "{error}");
    let health = daemon.client().health().await.unwrap();
    assert_eq!(health.status, State::Ready);
    let answer = daemon.client().chat(&ask("still served")).await.unwrap();
    assert_eq!(answer.model, "a");
    assert_eq!(answer.choices[0].message.content, "STILL SERVED");
    // That re-plans do not retry it later is `decide`'s unit test
    // `a_failed_load_is_not_retried_until_its_file_changes`.
    assert_eq!(
        daemon.log().matches("asks to fail").count(),
        1,
        "{}",
        daemon.log()
    );
}

#[tokio::test]
async fn a_request_during_a_slow_swap_gets_503_with_retry_after_past_the_deadline() {
    let models = tempfile::tempdir().unwrap();
    let a = echo_file(models.path(), "a", r#"{"name": "echo-a"}"#);
    let slow = echo_file(
        models.path(),
        "slow",
        r#"{"name": "echo-slow", "load_delay_ms": 4000}"#,
    );
    let with_deadline =
        |model: &Path| format!("{}queue_deadline_s = 0.5\n", config_with_model(model));
    let daemon = echo_daemon(&with_deadline(&a));
    ready(&daemon).await;
    daemon.edit_config(&with_deadline(&slow));
    until(&daemon, 10, "the swap to begin", || async {
        (daemon.client().health().await.ok()?.status == State::Swapping).then_some(())
    })
    .await;
    let response = daemon
        .client()
        .request(
            r1d_client::Method::POST,
            "/v1/chat/completions",
            Some(serde_json::to_vec(&ask("anyone?")).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("10")
    );
    // After the swap the same request is answered by the new model.
    until(&daemon, 15, "the slow model", || async {
        (resident(&daemon).await.as_deref() == Some("echo-slow")).then_some(())
    })
    .await;
    let answer = daemon.client().chat(&ask("anyone?")).await.unwrap();
    assert_eq!(answer.model, "slow");
}

// ---- Hardware changes ----

/// A CPU-only machine below `root`: 8 cores, `total` bytes of RAM of which `available` are
/// free, in the cgroup `r1d.service` limited to `limit` bytes (or unlimited). Each file is
/// replaced atomically, as the kernel's files change between two reads.
pub(crate) fn machine(root: &Path, total: u64, available: u64, limit: Option<u64>) {
    let put = |rel: &str, text: String| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    let cpuinfo: String = (0..8)
        .map(|i| format!("processor\t: {i}\nmodel name\t: Test CPU\nflags\t\t: avx2 fma\n\n"))
        .collect();
    put("proc/cpuinfo", cpuinfo);
    put(
        "proc/meminfo",
        format!(
            "MemTotal:       {} kB\nMemFree:        {} kB\nMemAvailable:   {} kB\n",
            total / 1024,
            available / 1024,
            available / 1024
        ),
    );
    put("proc/self/cgroup", "0::/r1d.service\n".into());
    put(
        "sys/fs/cgroup/r1d.service/memory.max",
        limit.map_or("max".into(), |l| l.to_string()),
    );
    put("sys/fs/cgroup/r1d.service/memory.current", "0\n".into());
    put(
        "sys/fs/cgroup/r1d.service/memory.stat",
        "anon 0\nfile 0\ninactive_file 0\n".into(),
    );
}

/// A small, complete GGUF that the store identifies as the DeepSeek-R1 variant `name` in
/// Q4_K_M (the echo backend loads it; `weights_bytes` is what it reports as its memory).
pub(crate) fn variant_file(
    dir: &Path,
    file: &str,
    name: &str,
    hidden: u32,
    weights_bytes: Option<u64>,
) -> PathBuf {
    // The store matches a file to a catalog variant by name and shape (architecture, blocks,
    // hidden size: 28 blocks for both Qwen distills, 1536 / 3584 wide).
    let mut meta = vec![
        ("general.architecture", Meta::Str("qwen2")),
        ("general.name", Meta::Str(name)),
        ("qwen2.block_count", Meta::U32(28)),
        ("qwen2.embedding_length", Meta::U32(hidden)),
        ("qwen2.context_length", Meta::U32(4096)),
        ("general.file_type", Meta::U32(15)),
    ];
    if let Some(w) = weights_bytes {
        meta.push(("echo.weights_bytes", Meta::U64(w)));
    }
    let bytes = gguf(&meta, &[("token_embd.weight", &[256, 4], 12)], 576);
    let path = dir.join(file);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn planner_config(models: &Path, settle_s: f64, policy: &str) -> String {
    format!(
        "[model]\nbackend = \"echo\"\n\n[store]\ndir = {:?}\nscan_huggingface = false\nscan_ollama = false\n\n\
         [planner]\ncontext_length = 2048\nmin_tokens_per_s = 0\n\n\
         [watch]\nhardware_interval_s = 0.25\nsettle_s = {settle_s}\nswap_policy = \"{policy}\"\n",
        models.display().to_string()
    )
}

struct Machine {
    root: tempfile::TempDir,
    models: tempfile::TempDir,
}

/// The fake machine with 4 GB free, and a 1.5B and a 7B DeepSeek-R1 file (Q4_K_M) in the store.
/// On its AVX2 CPU the planner counts Q4_K_M's repacked copy: the 1.5B needs 2.65 GB + the 1 GiB
/// reserve and fits, the 7B (9 GB) does not.
fn small_machine(weights_7b: Option<u64>) -> Machine {
    let root = tempfile::tempdir().unwrap();
    machine(root.path(), 32 * GB, 4 * GB, None);
    let models = tempfile::tempdir().unwrap();
    variant_file(
        models.path(),
        "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf",
        "DeepSeek R1 Distill Qwen 1.5B",
        1536,
        None,
    );
    variant_file(
        models.path(),
        "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf",
        "DeepSeek R1 Distill Qwen 7B",
        3584,
        weights_7b,
    );
    Machine { root, models }
}

fn planner_daemon(m: &Machine, settle_s: f64, policy: &str) -> Daemon {
    on_machine(m, &planner_config(m.models.path(), settle_s, policy))
}

/// r1d with `config` on the fake machine `m`.
fn on_machine(m: &Machine, config: &str) -> Daemon {
    Daemon::start(DaemonOptions {
        config: Some(config),
        args: vec![
            "--hardware-root".into(),
            m.root.path().display().to_string(),
        ],
        ..Default::default()
    })
}

/// `/r1/plan` while a model is resident counts the model's own memory as free, as the daemon
/// does when it decides (the supervisor's credit): once the 7B took the RAM it was planned with,
/// the plan still chooses the 7B it serves, instead of a smaller model "because the 7B no longer
/// fits". (On a GPU the same made the served model a partial offload of itself in `/r1/plan`.)
#[tokio::test]
async fn the_plan_counts_the_resident_models_memory_as_free_as_the_daemon_does() {
    // The 7B's echo model reports 8 GB of weights; 12 GB free: the 7B (about 10 GB with the
    // reserve) fits.
    let m = small_machine(Some(8 * GB));
    machine(m.root.path(), 32 * GB, 12 * GB, None);
    let daemon = planner_daemon(&m, 60.0, "auto");
    ready(&daemon).await;
    assert_eq!(
        resident(&daemon).await.as_deref(),
        Some("DeepSeek R1 Distill Qwen 7B"),
        "{}",
        daemon.log()
    );
    // The model took its memory: 4 GB are left, less than the 7B needs from scratch.
    machine(m.root.path(), 32 * GB, 4 * GB, None);
    let plan: wire::Plan = daemon.client().get_json("/r1/plan", false).await.unwrap();
    let served = plan
        .candidates
        .iter()
        .find(|c| c.variant == "deepseek-r1:7b" && c.quantization == "Q4_K_M" && c.present)
        .expect("the served 7B is a candidate");
    assert!(
        served.fits,
        "the served 7B does not fit its own memory: {}",
        served.reason
    );
    // The hardware profile itself is the probe's: 4 GB available.
    let hw: wire::HardwareProfile = daemon
        .client()
        .get_json("/r1/hardware", false)
        .await
        .unwrap();
    assert_eq!(hw.memory.available_bytes, 4 * GB);
    // And the daemon agrees: no swap is pending.
    let watch = daemon
        .client()
        .status()
        .await
        .unwrap()
        .watch
        .unwrap_or_default();
    assert!(watch.pending.is_none(), "{watch:?}");
}

#[tokio::test]
async fn more_memory_for_longer_than_the_settle_time_swaps_to_the_bigger_variant_a_burst_does_not()
{
    let m = small_machine(None);
    let daemon = planner_daemon(&m, 2.0, "auto");
    ready(&daemon).await;
    assert_eq!(
        resident(&daemon).await.as_deref(),
        Some("DeepSeek R1 Distill Qwen 1.5B"),
        "4 GB free: the 7B does not fit\n{}",
        daemon.log()
    );
    // r1ctl events follows along, as a person would watch it.
    let mut watcher = std::process::Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["--json", "events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // A burst: 20 GB free for under a second, then back. Shorter than the settle time: ignored.
    machine(m.root.path(), 32 * GB, 20 * GB, None);
    until(&daemon, 10, "the pending change", || async {
        daemon.client().status().await.ok()?.watch?.pending
    })
    .await;
    machine(m.root.path(), 32 * GB, 4 * GB, None);
    until(&daemon, 10, "the burst to be ignored", || async {
        let w = daemon.client().status().await.ok()?.watch?;
        w.pending.is_none().then_some(())
    })
    .await;
    // That a dropped burst never swaps later is `decide`'s unit test
    // `hysteresis_a_choice_must_hold_for_the_settle_time`.
    assert_eq!(
        resident(&daemon).await.as_deref(),
        Some("DeepSeek R1 Distill Qwen 1.5B"),
        "a burst shorter than settle_s must not swap\n{}",
        daemon.log()
    );

    // 20 GB free for good: after the settle time r1d swaps to the 7B.
    let changed = Instant::now();
    machine(m.root.path(), 32 * GB, 20 * GB, None);
    until(&daemon, 20, "the swap to the 7B", || async {
        (resident(&daemon).await.as_deref() == Some("DeepSeek R1 Distill Qwen 7B")).then_some(())
    })
    .await;
    assert!(
        changed.elapsed() >= Duration::from_secs(2),
        "swapped before the settle time"
    );
    let answer = daemon.client().chat(&ask("bigger now")).await.unwrap();
    // Answers carry the name the store lists the model by (issue 17).
    assert_eq!(answer.model, "deepseek-r1:7b-q4_k_m");
    let status = daemon.client().status().await.unwrap();
    let selection = status.selection.unwrap_or_default();
    assert!(selection.contains("deepseek-r1:7b"), "{selection}");

    // What r1ctl events printed: the ignored burst, the pending change, the swap.
    let _ = watcher.kill();
    let out = watcher.wait_with_output().unwrap();
    let events: Vec<wire::Event> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "plan" && e.message.contains("less than the settle time")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "hardware" && e.message.contains("20.0 GB available")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.kind == "swap"
            && e.message
                .starts_with("swapping DeepSeek R1 Distill Qwen 1.5B for DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "state" && e.state == Some(State::Swapping)),
        "{events:#?}"
    );
}

#[tokio::test]
async fn under_manual_a_better_fit_is_only_reported() {
    let m = small_machine(None);
    let daemon = planner_daemon(&m, 0.5, "manual");
    ready(&daemon).await;
    machine(m.root.path(), 32 * GB, 20 * GB, None);
    let better = until(&daemon, 10, "the report", || async {
        daemon.client().status().await.ok()?.watch?.better
    })
    .await;
    assert!(
        better.contains("DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf"),
        "{better}"
    );
    assert!(better.contains("r1ctl use auto"), "{better}");
    // That manual never swaps by itself is `decide`'s unit test `swap_policies`.
    assert_eq!(
        resident(&daemon).await.as_deref(),
        Some("DeepSeek R1 Distill Qwen 1.5B")
    );
    // The person agrees: `use auto` swaps.
    let status = use_model(&daemon, "auto").await;
    assert_eq!(status.model.unwrap().name, "DeepSeek R1 Distill Qwen 7B");
}

#[tokio::test]
async fn a_cgroup_limit_below_the_resident_model_forces_a_swap_that_ends_streams_with_an_error() {
    // The 7B reports 6 GB of weights; the cgroup limit then drops to 4 GB.
    let m = small_machine(Some(6 * GB));
    machine(m.root.path(), 32 * GB, 20 * GB, None);
    let daemon = planner_daemon(&m, 0.5, "auto");
    ready(&daemon).await;
    assert_eq!(
        resident(&daemon).await.as_deref(),
        Some("DeepSeek R1 Distill Qwen 7B")
    );
    let mut stream = slow_answer(&daemon, "[[slow]] a long answer", 400).await;
    machine(m.root.path(), 32 * GB, 20 * GB, Some(4 * GB));
    let mut error = None;
    while let Some(chunk) = stream.next().await {
        if let Err(e) = chunk {
            error = Some(e.to_string());
            break;
        }
    }
    let error = error.expect("the stream ended with an error event, not silently");
    assert!(error.contains("replacing the model"), "{error}");
    assert!(error.contains("memory is running out"), "{error}");
    until(&daemon, 10, "the swap to the 1.5B", || async {
        (resident(&daemon).await.as_deref() == Some("DeepSeek R1 Distill Qwen 1.5B")).then_some(())
    })
    .await;
}

// ---- The real llama.cpp plugin ----

#[tokio::test]
async fn llama_config_edits_swap_echo_for_smollm2_and_a_truncated_file_leaves_smollm2_serving() {
    let _one = crate::llama::ONE_MODEL_AT_A_TIME.lock().await;
    let (Some(smollm), Some(truncated)) = (fixture(SMOLLM2), fixture(R1_TRUNCATED)) else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    let a = echo_file(models.path(), "a", r#"{"name": "echo-a"}"#);
    let daemon = echo_daemon(&config_with_model(&a));
    ready(&daemon).await;
    let llama_config = |path: &Path| {
        format!(
            "[model]\npath = {:?}\nbackend = \"llamacpp\"\ncontext_length = 1024\n\n[watch]\nhardware_interval_s = 0\n",
            path.display().to_string()
        )
    };
    daemon.edit_config(&llama_config(&smollm));
    until(&daemon, 60, "SmolLM2 resident", || async {
        let status = daemon.client().status().await.ok()?;
        (status.state == State::Ready && status.model.as_ref()?.backend == "llamacpp").then_some(())
    })
    .await;
    let request = ChatCompletionRequest {
        messages: vec![
            ChatMessage::new("system", "You are a helpful assistant."),
            ChatMessage::new("user", "What is the capital of France?"),
        ],
        temperature: Some(0.0),
        max_tokens: Some(16),
        ..Default::default()
    };
    let answer = daemon.client().chat(&request).await.unwrap();
    assert!(
        answer.choices[0].message.content.contains("Paris"),
        "{:?}",
        answer.choices[0].message.content
    );

    // The truncated R1 download fails to load; SmolLM2 is loaded again and answers.
    daemon.edit_config(&llama_config(&truncated));
    let error = until(&daemon, 60, "the failed swap", || async {
        let status = daemon.client().status().await.ok()?;
        (status.state == State::Ready)
            .then_some(status.watch?.last_load_error)
            .flatten()
    })
    .await;
    assert!(error.contains("truncated"), "{error}");
    assert!(error.contains("serving"), "{error}");
    let again = daemon.client().chat(&request).await.unwrap();
    assert_eq!(
        again.choices[0].message.content, answer.choices[0].message.content,
        "the same greedy answer from the same model"
    );
}

#[tokio::test]
async fn a_gpu_the_driver_lists_but_that_does_not_answer_is_waited_for_then_reported_degraded() {
    let m = small_machine(None);
    // The NVIDIA driver lists a GPU; NVML (not consulted under a fake root) finds none.
    let listed = m.root.path().join("proc/driver/nvidia/gpus/0000:01:00.0");
    std::fs::create_dir_all(&listed).unwrap();
    let config = format!(
        "{}gpu_wait_s = 1.5\n",
        planner_config(m.models.path(), 0.5, "auto")
    );
    let started = Instant::now();
    let daemon = on_machine(&m, &config);
    let health = daemon.settled().await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "r1d waited for the GPU before planning"
    );
    assert_eq!(health.status, State::Degraded, "{}", daemon.log());
    let status = daemon.client().status().await.unwrap();
    let why = status.watch.unwrap().degraded.unwrap();
    assert!(why.contains("lists 1 GPU(s) but 0 answered"), "{why}");
    // Still serving, on what this machine has.
    assert_eq!(
        daemon
            .client()
            .chat(&ask("on the cpu"))
            .await
            .unwrap()
            .model,
        "deepseek-r1:1.5b-q4_k_m"
    );
    // The driver no longer lists it (or it answers): no longer degraded.
    std::fs::remove_dir(&listed).unwrap();
    until(&daemon, 10, "the end of degraded", || async {
        let h = daemon.client().health().await.ok()?;
        (h.status == State::Ready).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_run_time_pin_survives_re_plans_until_use_auto() {
    let m = small_machine(None);
    machine(m.root.path(), 32 * GB, 20 * GB, None);
    let daemon = planner_daemon(&m, 0.5, "auto");
    ready(&daemon).await;
    assert_eq!(
        resident(&daemon).await.as_deref(),
        Some("DeepSeek R1 Distill Qwen 7B")
    );
    let out = std::process::Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["use", "deepseek-r1:1.5b"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Re-plans (every 0.25 s, settle 0.5 s) would choose the 7B; that the pin wins over them is
    // `decide`'s unit test `pins_win_over_the_config_and_the_plan`.
    assert_eq!(
        resident(&daemon).await.as_deref(),
        Some("DeepSeek R1 Distill Qwen 1.5B")
    );
    let status = daemon.client().status().await.unwrap();
    assert_eq!(
        status.watch.unwrap().pinned.as_deref(),
        Some("deepseek-r1:1.5b")
    );
    let status = use_model(&daemon, "auto").await;
    assert_eq!(status.model.unwrap().name, "DeepSeek R1 Distill Qwen 7B");
    assert_eq!(status.watch.unwrap().pinned, None);
}

#[tokio::test]
async fn a_model_that_failed_to_load_is_not_retried_by_re_plans_until_its_file_changes() {
    let m = small_machine(None);
    let broken = echo_file(
        m.models.path(),
        "broken",
        r#"{"name": "echo-broken", "fail_load": "bad weights"}"#,
    );
    let config = format!(
        "[model]\npath = {:?}\nbackend = \"echo\"\n\n[watch]\nhardware_interval_s = 0.25\nsettle_s = 0.25\n",
        broken.display().to_string()
    );
    let daemon = on_machine(&m, &config);
    assert_eq!(daemon.settled().await.status, State::NoModel);
    // That re-plans leave it alone until the file changes is `decide`'s unit test
    // `a_failed_load_is_not_retried_until_its_file_changes`.
    let attempts = || daemon.log().matches("asks to fail").count();
    assert_eq!(attempts(), 1, "{}", daemon.log());
    // The file is fixed: the next re-plan loads it.
    std::fs::write(&broken, r#"{"name": "echo-fixed"}"#).unwrap();
    until(&daemon, 10, "the fixed model", || async {
        (resident(&daemon).await.as_deref() == Some("echo-fixed")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn event_streams_end_with_a_last_event_when_r1d_stops_and_do_not_hold_it() {
    let models = tempfile::tempdir().unwrap();
    let a = echo_file(models.path(), "a", r#"{"name": "echo-a"}"#);
    let mut daemon = echo_daemon(&config_with_model(&a));
    ready(&daemon).await;
    let events = collect_events(&daemon, 20, |_| false).await;
    daemon.terminate();
    let status = daemon.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "r1d did not stop while an event stream was open\n{}",
            daemon.log()
        )
    });
    assert!(status.success(), "{status}");
    let events = events.await.unwrap();
    assert_eq!(
        events.last().map(|e| e.message.as_str()),
        Some("r1d is stopping"),
        "{events:#?}"
    );
}

#[tokio::test]
async fn a_missing_file_or_unknown_backend_is_refused_before_the_serving_model_is_unloaded() {
    let models = tempfile::tempdir().unwrap();
    let a = echo_file(models.path(), "a", r#"{"name": "echo-a"}"#);
    let daemon = echo_daemon(&config_with_model(&a));
    ready(&daemon).await;
    let events = collect_events(&daemon, 20, |e| e.kind == "swap" && e.error.is_some()).await;
    daemon.edit_config(&config_with_model(&models.path().join("nosuch.echo")));
    let events = events.await.unwrap();
    let failed = events.iter().find(|e| e.error.is_some()).unwrap();
    assert!(
        failed.message.contains("nosuch.echo") && failed.message.contains("nothing was unloaded"),
        "{failed:?}"
    );
    assert!(
        !events.iter().any(|e| e.state == Some(State::Swapping)),
        "the serving model was unloaded: {events:#?}"
    );
    let status = daemon.client().status().await.unwrap();
    assert_eq!(status.model.unwrap().name, "echo-a");
    let selection = status.selection.unwrap();
    assert!(
        selection.starts_with("echo-a kept serving: nosuch.echo failed"),
        "{selection}"
    );
}

#[tokio::test]
async fn a_request_behind_a_queued_swap_gets_503_past_the_deadline_and_status_shows_the_swap() {
    let models = tempfile::tempdir().unwrap();
    let a = echo_file(models.path(), "a", r#"{"name": "echo-a"}"#);
    let b = echo_file(models.path(), "b", r#"{"name": "echo-b"}"#);
    let config = |m: &Path| format!("{}queue_deadline_s = 0.5\n", config_with_model(m));
    let daemon = echo_daemon(&config(&a));
    ready(&daemon).await;
    // A 3-second answer holds the engine; the swap waits behind it.
    let mut stream = slow_answer(&daemon, "[[slow]] long", 60).await;
    daemon.edit_config(&config(&b));
    let pending = until(&daemon, 10, "the queued swap in status", || async {
        daemon.client().status().await.ok()?.watch?.pending
    })
    .await;
    assert!(pending.contains("b.echo"), "{pending}");
    let err = daemon.client().chat(&ask("waiting")).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    // The running answer finishes; then the new model serves.
    while let Some(chunk) = stream.next().await {
        chunk.expect("the running answer finishes");
    }
    let answer = daemon.client().chat(&ask("now")).await.unwrap();
    assert_eq!(answer.model, "b");
}

#[tokio::test]
async fn a_symlinked_config_follows_edits_of_its_target() {
    let models = tempfile::tempdir().unwrap();
    let a = echo_file(models.path(), "a", r#"{"name": "echo-a"}"#);
    let b = echo_file(models.path(), "b", r#"{"name": "echo-b"}"#);
    // /etc/r1d/r1d.toml -> /srv/config/r1d.toml, say.
    let links = tempfile::tempdir().unwrap();
    let targets = tempfile::tempdir().unwrap();
    let target = targets.path().join("real.toml");
    std::fs::write(&target, config_with_model(&a)).unwrap();
    let link = links.path().join("r1d.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let daemon = Daemon::start(DaemonOptions {
        config_file: Some(&link),
        ..Default::default()
    });
    ready(&daemon).await;
    assert_eq!(resident(&daemon).await.as_deref(), Some("echo-a"));
    // The target is edited where it lives (as `sed -i` does: a new file renamed over it); the
    // directory of the link sees nothing.
    let tmp = targets.path().join(".real.toml.tmp");
    std::fs::write(&tmp, config_with_model(&b)).unwrap();
    std::fs::rename(&tmp, &target).unwrap();
    until(
        &daemon,
        10,
        "echo-b after editing the symlink's target",
        || async { (resident(&daemon).await.as_deref() == Some("echo-b")).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn with_nothing_served_a_model_put_in_the_store_is_served_without_waiting_the_settle_time() {
    let root = tempfile::tempdir().unwrap();
    machine(root.path(), 32 * GB, 20 * GB, None);
    let models = tempfile::tempdir().unwrap();
    let m = Machine { root, models };
    // A settle time of a minute: only the nothing-served rule can make this quick.
    let daemon = planner_daemon(&m, 60.0, "auto");
    let health = daemon.settled().await;
    assert_eq!(health.status, State::NoModel);
    assert!(
        health.error.unwrap().contains("r1ctl pull"),
        "says how to get one"
    );
    variant_file(
        m.models.path(),
        "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf",
        "DeepSeek R1 Distill Qwen 1.5B",
        1536,
        None,
    );
    until(&daemon, 10, "the new file served", || async {
        (resident(&daemon).await.as_deref() == Some("DeepSeek R1 Distill Qwen 1.5B")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_second_config_edit_during_a_slow_load_stops_that_load_and_serves_the_newer_choice() {
    let models = tempfile::tempdir().unwrap();
    let a = echo_file(models.path(), "a", r#"{"name": "echo-a"}"#);
    let slow = echo_file(
        models.path(),
        "slow",
        r#"{"name": "echo-slow", "load_delay_ms": 5000}"#,
    );
    let b = echo_file(models.path(), "b", r#"{"name": "echo-b"}"#);
    let daemon = echo_daemon(&config_with_model(&a));
    ready(&daemon).await;
    // Until both the stopped load and the new model are reported, in whichever order.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
    let events = collect_events(&daemon, 30, move |e| {
        use std::sync::atomic::Ordering::SeqCst;
        if e.kind == "swap" && e.message == "serving echo-b" {
            seen.fetch_or(1, SeqCst);
        }
        if e.kind == "swap" && e.message.contains("a newer load was asked for") {
            seen.fetch_or(2, SeqCst);
        }
        seen.load(SeqCst) == 3
    })
    .await;
    daemon.edit_config(&config_with_model(&slow));
    until(&daemon, 10, "the slow load to begin", || async {
        (daemon.client().health().await.ok()?.status == State::Swapping).then_some(())
    })
    .await;
    // The person changes their mind before the slow model is in.
    daemon.edit_config(&config_with_model(&b));
    let events = events.await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == "swap"
            && e.message
                .contains("slow.echo was stopped: a newer load was asked for")),
        "{events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.model.as_deref() == Some("echo-slow") && e.state == Some(State::Ready)),
        "the superseded model was never served: {events:#?}"
    );
    assert_eq!(resident(&daemon).await.as_deref(), Some("echo-b"));
}

#[tokio::test]
async fn an_edit_reverted_while_its_swap_waits_behind_an_answer_leaves_the_first_model() {
    let models = tempfile::tempdir().unwrap();
    let a = echo_file(models.path(), "a", r#"{"name": "echo-a"}"#);
    let b = echo_file(models.path(), "b", r#"{"name": "echo-b"}"#);
    let daemon = echo_daemon(&config_with_model(&a));
    ready(&daemon).await;
    let mut stream = slow_answer(&daemon, "[[slow]] long", 40).await;
    daemon.edit_config(&config_with_model(&b));
    until(&daemon, 10, "the queued swap", || async {
        daemon.client().status().await.ok()?.watch?.pending
    })
    .await;
    // Changed back before the running answer ended: echo-a is what the config names.
    daemon.edit_config(&config_with_model(&a));
    // Read once the queued swap is gone (superseded by loading echo-a again, which the engine
    // skips: `decide`'s unit test `steps_of_edits_and_use`).
    until(&daemon, 10, "the revert to be read", || async {
        let w = daemon.client().status().await.ok()?.watch?;
        w.pending.is_none().then_some(())
    })
    .await;
    while let Some(chunk) = stream.next().await {
        chunk.expect("the running answer finishes");
    }
    let answer = daemon.client().chat(&ask("which")).await.unwrap();
    assert_eq!(answer.model, "a", "{}", daemon.log());
}

/// Issue 17: every name r1d lists for the resident model is accepted by every answering route;
/// a listed model that is on disk but not resident gets a 404 that says how to `use` it; after
/// `use deepseek-r1:1.5b` that name is accepted.
#[tokio::test]
async fn every_listed_name_of_the_resident_model_is_accepted_by_every_route() {
    let m = small_machine(None);
    machine(m.root.path(), 32 * GB, 20 * GB, None);
    let daemon = planner_daemon(&m, 0.5, "manual");
    ready(&daemon).await;
    let client = daemon.client();
    let get = |path: &'static str| {
        let client = daemon.client();
        async move {
            client
                .get_json::<serde_json::Value>(path, false)
                .await
                .unwrap()
        }
    };
    // The names each listing shows.
    let tags = get("/api/tags").await;
    let mut tag_names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    tag_names.sort();
    assert_eq!(
        tag_names,
        ["deepseek-r1:1.5b-q4_k_m", "deepseek-r1:7b-q4_k_m"]
    );
    let ids = get("/v1/models").await;
    assert_eq!(ids["data"][0]["id"], "deepseek-r1:7b-q4_k_m");
    assert_eq!(
        get("/api/ps").await["models"][0]["name"],
        "deepseek-r1:7b-q4_k_m"
    );

    // Every route, every name of the resident 7B.
    let post = |path: &'static str, body: serde_json::Value| {
        let client = daemon.client();
        async move {
            use http_body_util::BodyExt;
            let response = client
                .request(
                    r1d_client::Method::POST,
                    path,
                    Some(body.to_string().into_bytes()),
                )
                .await
                .unwrap();
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    let routes = |name: &str| {
        let msgs = serde_json::json!([{"role": "user", "content": "one two"}]);
        [
            (
                "/v1/chat/completions",
                serde_json::json!({"model": name, "messages": msgs, "max_tokens": 2}),
            ),
            (
                "/v1/completions",
                serde_json::json!({"model": name, "prompt": "<|user|>one two", "max_tokens": 2}),
            ),
            (
                "/api/chat",
                serde_json::json!({"model": name, "messages": msgs, "stream": false}),
            ),
            (
                "/api/generate",
                serde_json::json!({"model": name, "prompt": "one two", "stream": false}),
            ),
            ("/api/show", serde_json::json!({"model": name})),
        ]
    };
    for name in [
        "deepseek-r1:7b-q4_k_m",
        "deepseek-r1:7b",
        "DeepSeek-R1:7B",
        "deepseek-r1:7b-q4_k_m:latest",
        "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf",
        "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M",
        "DeepSeek R1 Distill Qwen 7B",
    ] {
        for (path, body) in routes(name) {
            let (status, answer) = post(path, body).await;
            assert_eq!(status, 200, "{path} {name}: {answer}");
        }
    }
    // The 1.5B is listed but not resident: a 404 in each family's shape that says how to use it.
    for name in ["deepseek-r1:1.5b-q4_k_m", "deepseek-r1:1.5b"] {
        for (path, body) in routes(name) {
            let (status, answer) = post(path, body).await;
            assert_eq!(status, 404, "{path} {name}: {answer}");
            assert!(
                answer.contains("on disk but not loaded")
                    && answer.contains("r1ctl use deepseek-r1:1.5b-q4_k_m"),
                "{path} {name}: {answer}"
            );
        }
    }
    let (status, answer) = post(routes("llama3")[0].0, routes("llama3")[0].1.clone()).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("not served here"), "{answer}");

    // The name `use` was given is accepted right after it (the issue's report).
    let status = use_model(&daemon, "deepseek-r1:1.5b").await;
    assert_eq!(status.model.unwrap().name, "DeepSeek R1 Distill Qwen 1.5B");
    for name in ["deepseek-r1:1.5b", "deepseek-r1:1.5b-q4_k_m"] {
        for (path, body) in routes(name) {
            let (status, answer) = post(path, body).await;
            assert_eq!(status, 200, "{path} {name}: {answer}");
        }
    }
    let ids = client
        .get_json::<serde_json::Value>("/v1/models", false)
        .await
        .unwrap();
    assert_eq!(ids["data"][0]["id"], "deepseek-r1:1.5b-q4_k_m");
}
