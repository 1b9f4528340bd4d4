//! llama.cpp RPC workers (`[backends.llamacpp] rpc_workers`): SmolLM2 split across two real
//! `rpc-server` processes on loopback ports and the local CPU.
//!
//! The worker binary comes from `scripts/build-rpc-worker` (cached; the first run compiles
//! rpc-server from the same llama.cpp and flags as the plugin), or `R1D_RPC_WORKER=PATH`. When it
//! cannot be had, the tests skip loudly, and fail under `CI=true`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use r1d_client::wire::{ChatCompletionRequest, ChatMessage, State};
use r1d_tests::{bin_dir, fixture, Daemon, DaemonOptions, SMOLLM2};

use crate::llama::ONE_MODEL_AT_A_TIME;
use crate::watch::until;

/// Layers `gpu_layers` puts on the workers (of SmolLM2's 30 blocks + output): the other 11 stay
/// on the local CPU, so the answer crosses both workers and this process.
const REMOTE_LAYERS: u32 = 20;

/// The rpc-server binary, or `None` (skipped loudly; a failure under CI).
fn worker_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("R1D_RPC_WORKER") {
        return Some(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/build-rpc-worker"))
        .env("R1D_BIN", bin_dir())
        .stderr(Stdio::inherit())
        .output()
        .expect("failed to run scripts/build-rpc-worker");
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::to_owned);
    match last
        .map(PathBuf::from)
        .filter(|p| out.status.success() && p.is_file())
    {
        Some(p) => Some(p),
        None => {
            let message = format!(
                "scripts/build-rpc-worker did not build the rpc worker ({}); set R1D_RPC_WORKER",
                out.status
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{message}");
            }
            eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
            None
        }
    }
}

/// A running rpc-server on a loopback port; killed on drop.
struct Worker {
    child: Child,
    endpoint: String,
    log: tempfile::NamedTempFile,
}

impl Worker {
    fn start(binary: &PathBuf) -> Worker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Worker::start_on(binary, port)
    }

    fn start_on(binary: &PathBuf, port: u16) -> Worker {
        let endpoint = format!("127.0.0.1:{port}");
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new(binary);
        // As systemd runs it (IgnoreSIGPIPE=yes, its default and r1d-rpc-worker@.service's):
        // rpc-server writes to its client with send() without MSG_NOSIGNAL, so a client that
        // vanishes mid-answer would kill it with SIGPIPE (Rust's Command restores SIGPIPE's
        // default in the child).
        // SAFETY: `signal` is async-signal-safe; nothing is allocated or locked in the hook.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                Ok(())
            });
        }
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string(), "-t", "1"])
            .env("OMP_WAIT_POLICY", "passive")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("failed to start the rpc worker");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match ggml_rpc_probe::probe(&endpoint, Duration::from_secs(2)) {
                Ok(w) => {
                    assert!(!w.devices.is_empty(), "{w:?}");
                    break;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "rpc worker {endpoint} did not answer within 30 s: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Worker {
            child,
            endpoint,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(workers: &[&Worker]) -> String {
    format!(
        "[model]\ngpu_layers = {REMOTE_LAYERS}\n\n{}",
        config_text(workers)
    )
}

/// The `[backends.llamacpp]` section naming `workers`.
fn config_text(workers: &[&Worker]) -> String {
    let list: Vec<String> = workers
        .iter()
        .map(|w| format!("\"{}\"", w.endpoint))
        .collect();
    format!("[backends.llamacpp]\nrpc_workers = [{}]\n", list.join(", "))
}

/// r1d serving SmolLM2 with the CPU build of the llama.cpp plugin alone (the directory is
/// returned to live as long as the daemon). The workers are `rpc-server` built with the same
/// flags, so a split runs the same kernels as a local answer and must give the same greedy text;
/// the CPU-variants build (AVX-512 kernels on such a CPU) beside AVX2 workers rounds differently
/// and can flip a token that two candidates nearly tie for (SmolLM2's first token here: "The"
/// −1.66 against "La" −1.80 locally).
fn smollm(model: &std::path::Path, config: Option<&str>) -> (Daemon, tempfile::TempDir) {
    let plugins = r1d_tests::plugin_dir(&["llamacpp"]);
    let daemon = Daemon::start(DaemonOptions {
        model: Some(model),
        args: vec!["--context-length".into(), "2048".into()],
        config,
        plugin_dir: Some(plugins.path()),
        ..Default::default()
    });
    (daemon, plugins)
}

fn greedy(prompt: &str, max_tokens: u32) -> ChatCompletionRequest {
    ChatCompletionRequest {
        messages: vec![
            ChatMessage::new("system", "You are a helpful assistant."),
            ChatMessage::new("user", prompt),
        ],
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

const PROMPTS: [&str; 2] = [
    "What is the capital of France?",
    "Write a short story about a lighthouse keeper.",
];

async fn answers(daemon: &Daemon) -> Vec<String> {
    let mut out = Vec::new();
    for p in PROMPTS {
        let a = daemon.client().chat(&greedy(p, 64)).await.unwrap();
        out.push(a.choices[0].message.content.clone());
    }
    out
}

#[tokio::test]
async fn a_model_split_across_two_rpc_workers_and_the_cpu_answers_as_the_local_one() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(model) = fixture(SMOLLM2) else {
        return;
    };
    let Some(binary) = worker_binary() else {
        return;
    };
    let local = {
        let (daemon, _plugins) = smollm(&model, None);
        assert_eq!(
            daemon.settled().await.status,
            State::Ready,
            "{}",
            daemon.log()
        );
        answers(&daemon).await
    };
    assert_eq!(local[0], "The capital of France is Paris.");

    let (a, b) = (Worker::start(&binary), Worker::start(&binary));
    let (daemon, _plugins) = smollm(&model, Some(&config(&[&a, &b])));
    assert_eq!(
        daemon.settled().await.status,
        State::Ready,
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    for w in [&a, &b] {
        assert!(
            log.contains(&format!("using rpc worker {}", w.endpoint)),
            "{log}"
        );
        // llama.cpp put weights on each worker's device (its buffer is named after it).
        assert!(
            log.contains(&format!("[{}] model buffer size", w.endpoint))
                || log.contains(&format!("{} model buffer size", w.endpoint)),
            "no weights on {}:\n{log}",
            w.endpoint
        );
        assert!(
            w.log().contains("Accepted client connection"),
            "{}",
            w.log()
        );
    }
    assert!(
        log.contains(&format!("offloaded {REMOTE_LAYERS}/")),
        "llama.cpp says how many layers went to the workers:\n{log}"
    );
    let split = answers(&daemon).await;
    assert_eq!(
        split, local,
        "greedy answers split across two rpc workers and the CPU differ from the local ones"
    );
}

/// Two rpc workers on loopback and r1d serving SmolLM2 split across them and the CPU, settled
/// ready: the worker binary, both workers and the daemon. `None` (skipped, or a failure under
/// CI) without the model or the worker binary.
/// SmolLM2 split across two fresh workers and the CPU; the plugin directory lives as long as
/// the daemon needs it (it loads the model again after a worker vanishes).
async fn split_across_two_workers() -> Option<(PathBuf, Worker, Worker, Daemon, tempfile::TempDir)>
{
    let model = fixture(SMOLLM2)?;
    let binary = worker_binary()?;
    let (a, b) = (Worker::start(&binary), Worker::start(&binary));
    let (daemon, plugins) = smollm(&model, Some(&config(&[&a, &b])));
    assert_eq!(
        daemon.settled().await.status,
        State::Ready,
        "{}",
        daemon.log()
    );
    Some((binary, a, b, daemon, plugins))
}

#[tokio::test]
async fn killing_an_rpc_worker_mid_answer_ends_it_with_an_error_event_and_r1d_serves_on() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some((binary, mut a, b, daemon, _plugins)) = split_across_two_workers().await else {
        return;
    };
    let client = daemon.client();

    let mut long = greedy(PROMPTS[1], 1000);
    long.stream = true;
    let mut stream = client.chat_stream(&long).await.unwrap();
    let mut chunks = 0;
    while chunks < 3 {
        stream.next().await.expect("a chunk").unwrap();
        chunks += 1;
    }
    let killed = a.endpoint.clone();
    a.kill();
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => chunks += 1,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let error = error.unwrap_or_else(|| {
        panic!(
            "the stream ended after {chunks} chunks without an error event:\n{}",
            daemon.log()
        )
    });
    assert!(
        error.contains("Remote RPC server crashed")
            && error.contains(&format!("rpc worker {killed} is gone"))
            && error.contains("retry"),
        "the error event names the vanished worker and says the answer is lost: {error}"
    );

    // The model is loaded again without the vanished worker, and answers as before.
    until(&daemon, 60, "the model to be served again", || async {
        client
            .health()
            .await
            .ok()
            .filter(|h| h.status == State::Ready)
    })
    .await;
    let answer = client
        .chat(&greedy(PROMPTS[0], 64))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    assert_eq!(
        answer.choices[0].message.content,
        "The capital of France is Paris."
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!("leaving rpc worker {killed} out of this load")),
        "{log}"
    );
    assert!(
        log.matches(&format!("using rpc worker {}", b.endpoint))
            .count()
            >= 2,
        "the surviving worker serves the reloaded model too:\n{log}"
    );

    // /r1/status says which worker is gone, and that the other one serves (once the watch,
    // every 2 s, has seen the reloaded model's connection to it: a probe during the reload
    // finds it free, `up`).
    let status = until(
        &daemon,
        30,
        "the status to name the gone worker and the serving one",
        || async {
            let s = client.status().await.ok()?;
            let gone = s.rpc_workers.iter().find(|w| w.endpoint == killed)?;
            let other = s.rpc_workers.iter().find(|w| w.endpoint == b.endpoint)?;
            (gone.state == "gone" && other.state == "serving").then_some(s)
        },
    )
    .await;
    let gone = status
        .rpc_workers
        .iter()
        .find(|w| w.endpoint == killed)
        .unwrap();
    assert!(
        gone.error
            .as_deref()
            .is_some_and(|e| e.contains("unreachable")),
        "{gone:?}"
    );
    let other = status
        .rpc_workers
        .iter()
        .find(|w| w.endpoint == b.endpoint)
        .unwrap();
    assert_eq!(other.state, "serving", "{status:?}");

    // It comes back on the same port: r1d loads the model again with it.
    let port: u16 = killed.rsplit(':').next().unwrap().parse().unwrap();
    let _back = Worker::start_on(&binary, port);
    until(
        &daemon,
        60,
        "the model to be loaded again with the worker that came back",
        || async {
            let log = daemon.log();
            let reloaded = log.matches(&format!("using rpc worker {killed}")).count() >= 2;
            let ready = client
                .health()
                .await
                .ok()
                .is_some_and(|h| h.status == State::Ready);
            (reloaded && ready).then_some(())
        },
    )
    .await;
    assert!(
        daemon
            .log()
            .contains(&format!("rpc worker {killed} is back")),
        "{}",
        daemon.log()
    );
    let answer = client.chat(&greedy(PROMPTS[0], 64)).await.unwrap();
    assert_eq!(
        answer.choices[0].message.content,
        "The capital of France is Paris."
    );
}

#[tokio::test]
async fn a_worker_that_vanishes_while_idle_is_dropped_before_a_request_meets_it() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some((_, mut a, b, daemon, _plugins)) = split_across_two_workers().await else {
        return;
    };
    let client = daemon.client();
    let gone = a.endpoint.clone();
    a.kill();
    // r1d's watch (every 2 s) sees it gone and loads the model again on what is left.
    until(
        &daemon,
        60,
        "the model to be loaded again without the vanished worker",
        || async {
            let log = daemon.log();
            let reloaded = log.contains(&format!("rpc worker {gone} vanished: loading"))
                && log.contains(&format!("leaving rpc worker {gone} out of this load"));
            let ready = client
                .health()
                .await
                .ok()
                .is_some_and(|h| h.status == State::Ready);
            (reloaded && ready).then_some(())
        },
    )
    .await;
    let answer = client.chat(&greedy(PROMPTS[0], 64)).await.unwrap();
    assert_eq!(
        answer.choices[0].message.content,
        "The capital of France is Paris."
    );
    let log = daemon.log();
    assert!(
        !log.contains("SIGABRT") && !log.contains("crash 1 of"),
        "no answer met the broken connection, so no worker process crashed:\n{log}"
    );
    assert!(
        log.matches(&format!("using rpc worker {}", b.endpoint))
            .count()
            >= 2,
        "{log}"
    );
}

/// Each worker's layers as llama.cpp placed them, from the plugin's "llama.cpp placed the
/// layers: CPU 11, RPC0 (HOST:PORT) 10, …" line (llama.cpp's own `load_tensors` assignment): the
/// last such line of `log`, summed per endpoint.
fn placed_by_llama_cpp(log: &str) -> Vec<(String, u32)> {
    let line = log
        .lines()
        .rev()
        .find_map(|l| {
            l.split_once("llama.cpp placed the layers: ")
                .map(|(_, r)| r)
        })
        .unwrap_or_else(|| panic!("no placement line in the log:\n{log}"));
    let mut out: Vec<(String, u32)> = Vec::new();
    for part in line.split(", ") {
        // `RPC0 (HOST:PORT) 10` (the last one followed by the event's fields); `CPU 11` is local.
        let words: Vec<&str> = part.split_whitespace().collect();
        let Some(endpoint) = words
            .get(1)
            .and_then(|w| w.strip_prefix('('))
            .and_then(|w| w.strip_suffix(')'))
        else {
            continue;
        };
        let n: u32 = words
            .get(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{part:?} in {line}"));
        match out.iter_mut().find(|(e, _)| e == endpoint) {
            Some((_, m)) => *m += n,
            None => out.push((endpoint.to_owned(), n)),
        }
    }
    out
}

#[tokio::test]
async fn the_layers_r1d_plans_per_worker_are_the_layers_llama_cpp_placed_there() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some((_, a, b, daemon, _plugins)) = split_across_two_workers().await else {
        return;
    };
    let client = daemon.client();
    // The watch (every 2 s) sees both workers serving the model.
    let status = until(&daemon, 30, "both workers to serve the model", || async {
        let s = client.status().await.ok()?;
        s.rpc_workers
            .iter()
            .all(|w| w.state == "serving" && w.layers.is_some())
            .then_some(s)
    })
    .await;
    let planned: Vec<(String, u32)> = status
        .rpc_workers
        .iter()
        .map(|w| (w.endpoint.clone(), w.layers.unwrap()))
        .collect();
    let placed = placed_by_llama_cpp(&daemon.log());
    assert_eq!(
        planned,
        placed,
        "r1d's planned split (/r1/status) against llama.cpp's own placement:\n{}",
        daemon.log()
    );
    assert_eq!(
        placed.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
        [a.endpoint.as_str(), b.endpoint.as_str()]
    );
    assert_eq!(
        placed.iter().map(|(_, n)| n).sum::<u32>(),
        REMOTE_LAYERS,
        "the workers hold the layers gpu_layers offloads"
    );

    // `/r1/plan` plans with the same workers: the variants too big for this machine alone that
    // fit it plus both workers are split across them, per host.
    let plan: r1d_client::wire::Plan = client.get_json("/r1/plan", false).await.unwrap();
    let split: Vec<&r1d_client::wire::PlanCandidate> =
        plan.candidates.iter().filter(|c| c.is_split()).collect();
    assert!(
        !split.is_empty(),
        "no candidate of /r1/plan is split across the workers: {:?}",
        plan.candidates
            .iter()
            .map(|c| (&c.variant, &c.quantization, &c.reason))
            .collect::<Vec<_>>()
    );
    for c in split {
        let hosts: Vec<&str> = c.hosts.iter().map(|h| h.host.as_str()).collect();
        // This machine first, then the workers in config order (the least layers that fit may
        // leave the first worker none).
        assert_eq!(hosts[0], "cpu", "{c:?}");
        let workers = [a.endpoint.as_str(), b.endpoint.as_str()];
        assert!(hosts[1..] == workers || hosts[1..] == workers[1..], "{c:?}");
        assert_eq!(
            c.hosts.iter().map(|h| h.layers).sum::<u32>(),
            c.total_layers
        );
        assert!(c.network_ms_per_token > 0.0, "{c:?}");
    }
}

/// `r1d plan` with two real workers in the config: they are probed, and a variant that does not
/// fit this machine alone (the 32B, pinned, with a 32K context: its KV cache makes it too big for
/// a machine with less than ~30 GB, while its download fits a small disk) is split across it and
/// both, with the measured round trip in the network term.
#[tokio::test]
async fn r1d_plan_splits_a_variant_too_big_for_this_machine_across_real_workers() {
    // (No model is loaded; the lock keeps the workers' memory readings free of another test's.)
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(binary) = worker_binary() else {
        return;
    };
    let (a, b) = (Worker::start(&binary), Worker::start(&binary));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("r1d.toml");
    let pinned = "[planner]\nvariant = \"deepseek-r1:32b\"\ncontext_length = 32768\n\
                  min_tokens_per_s = 0\n\n";
    std::fs::write(&config, format!("{pinned}{}", config_text(&[&a, &b]))).unwrap();
    let plan = |config: &std::path::Path| {
        let out = Command::new(r1d_tests::binary("r1d"))
            .arg("--config")
            .arg(config)
            .args(["plan", "--json"])
            .env("XDG_CACHE_HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .output()
            .expect("failed to run r1d plan");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<r1d_client::wire::Plan>(&out.stdout).unwrap()
    };
    let with_workers = plan(&config);
    let q4 = |p: &r1d_client::wire::Plan| {
        p.candidates
            .iter()
            .find(|c| c.variant == "deepseek-r1:32b" && c.quantization == "Q4_K_M")
            .cloned()
            .unwrap()
    };
    // This machine alone (the same config without the workers).
    let alone_config = dir.path().join("alone.toml");
    std::fs::write(&alone_config, pinned).unwrap();
    let alone = q4(&plan(&alone_config));
    if alone.fits {
        eprintln!("\n!!!!! SKIPPED: this machine holds the 32B Q4_K_M at 32K alone !!!!!\n");
        return;
    }
    let c = q4(&with_workers);
    assert!(c.fits, "{}", c.reason);
    let hosts: Vec<&str> = c.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(hosts, ["cpu", a.endpoint.as_str(), b.endpoint.as_str()]);
    assert_eq!(
        c.hosts.iter().map(|h| h.layers).sum::<u32>(),
        c.total_layers
    );
    // Measured on loopback: a round trip, well under a LAN's 0.2 ms default, is part of it.
    assert!(c.network_ms_per_token > 0.0, "{c:?}");

    // The link is measured (16 MiB written to each worker's device and timed), not the 1 Gbit/s
    // default, and the workers live on: the timed tensor is one ggml's RPC server accepts (a
    // malformed one ends the worker with GGML_ABORT).
    let out = Command::new(r1d_tests::binary("r1d"))
        .arg("--config")
        .arg(&config)
        .args(["hardware", "--json"])
        .env("XDG_CACHE_HOME", dir.path())
        .env("RUST_LOG", "info")
        .output()
        .expect("failed to run r1d hardware");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let hw: r1d_client::wire::HardwareProfile = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hw.rpc_workers.len(), 2, "{log}");
    for (w, worker) in hw.rpc_workers.iter().zip([&a, &b]) {
        assert_eq!(w.endpoint, worker.endpoint);
        let measured = w.link_bandwidth_bytes_per_s.unwrap();
        assert_ne!(measured, 117_000_000, "not measured: {log}");
        assert!(
            log.contains(&format!("rpc worker {}: link measured at", w.endpoint)),
            "{log}"
        );
        eprintln!(
            "{}: link measured at {:.0} MB/s",
            w.endpoint,
            measured as f64 / 1e6
        );
    }
    let again = plan(&config);
    assert!(
        q4(&again).fits,
        "the workers answer after the measurement: {}",
        q4(&again).reason
    );
    for w in [&a, &b] {
        assert!(!w.log().contains("GGML_ASSERT"), "{}", w.log());
    }
}

/// An endpoint that accepts connections and never answers, and an HTTP server, named as workers:
/// both are left out of the load, and `/r1/status` says so and why, not `serving`.
#[tokio::test]
async fn endpoints_that_are_no_rpc_workers_are_shown_left_out_not_serving() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(model) = fixture(SMOLLM2) else {
        return;
    };
    let Some(binary) = worker_binary() else {
        return;
    };
    let a = Worker::start(&binary);
    // Listening, never accepting: the kernel completes the handshake, nobody answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_endpoint = silent.local_addr().unwrap().to_string();
    // Something else that answers: an HTTP server's 400 to whatever it was sent.
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_endpoint = http.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in http.incoming().flatten() {
            let mut buf = [0u8; 64];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let config = format!(
        "[model]\ngpu_layers = {REMOTE_LAYERS}\n\n[backends.llamacpp]\nrpc_workers = [\"{}\", \"{silent_endpoint}\", \"{http_endpoint}\"]\n",
        a.endpoint
    );
    let (daemon, _plugins) = smollm(&model, Some(&config));
    assert_eq!(
        daemon.settled().await.status,
        State::Ready,
        "{}",
        daemon.log()
    );
    let client = daemon.client();
    let status = until(&daemon, 30, "the status of both endpoints", || async {
        let s = client.status().await.ok()?;
        let real = s.rpc_workers.iter().find(|w| w.endpoint == a.endpoint)?;
        (real.state == "serving").then_some(s)
    })
    .await;
    let silent_status = status
        .rpc_workers
        .iter()
        .find(|w| w.endpoint == silent_endpoint)
        .unwrap();
    assert_eq!(silent_status.state, "busy", "{status:?}");
    assert!(
        silent_status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("did not answer") && e.contains("does not use it")),
        "{silent_status:?}"
    );
    assert_eq!(silent_status.layers, None);
    let http_status = status
        .rpc_workers
        .iter()
        .find(|w| w.endpoint == http_endpoint)
        .unwrap();
    assert_eq!(http_status.state, "gone", "{status:?}");
    assert!(
        http_status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("another protocol version")),
        "{http_status:?}"
    );
    assert!(
        daemon.log().contains(&format!(
            "leaving rpc worker {http_endpoint} out of this load"
        )),
        "{}",
        daemon.log()
    );
    // The real worker holds the layers.
    let real = status
        .rpc_workers
        .iter()
        .find(|w| w.endpoint == a.endpoint)
        .unwrap();
    assert_eq!(real.layers, Some(REMOTE_LAYERS), "{status:?}");
    assert!(
        daemon.log().contains(&format!(
            "leaving rpc worker {silent_endpoint} out of this load"
        )),
        "{}",
        daemon.log()
    );
    drop(silent);
}
