//! A remote cluster as a backend (`[[remote]]`): a second real r1d on loopback TCP plays "the
//! cluster" (the echo plugin, a model named like an R1 distill, so it splits the reasoning and
//! returns `reasoning_content`), behind its own API key. For 5xx answers, an answer that never
//! starts and one that stalls mid-stream, a tiny axum server in this test is the stand-in for a
//! broken upstream (named as such below: nothing real fails on demand like that).
//!
//! Traffic goes to loopback only.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use r1d_client::wire::{self, State};
use r1d_client::ClientError;
use r1d_tests::{Daemon, DaemonOptions};
use serde_json::json;

use crate::ask;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A key file of mode 0600 in `dir`.
fn key_file(dir: &Path, key: &str) -> std::path::PathBuf {
    let path = dir.join("cluster.key");
    std::fs::write(&path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// "The cluster": r1d serving an echo model named `DeepSeek-R1-Distill-Qwen-7B` (identity
/// transform) on 127.0.0.1:PORT, requiring `key`; with its address and the directory of its
/// model and key files.
fn cluster(key: &str) -> (Daemon, String, tempfile::TempDir) {
    let addr = format!("127.0.0.1:{}", free_port());
    let (daemon, dir) = cluster_at(key, &addr);
    (daemon, addr, dir)
}

/// [`cluster`] on `addr` (to start it again where it was).
fn cluster_at(key: &str, addr: &str) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // r1d's /v1/models lists a model by its file's stem.
    let model = dir.path().join("DeepSeek-R1-Distill-Qwen-7B.echo");
    std::fs::write(
        &model,
        r#"{"name": "DeepSeek-R1-Distill-Qwen-7B", "transform": "identity", "context_length": 4096}"#,
    )
    .unwrap();
    let key = key_file(dir.path(), key);
    let config = format!(
        "{}\n[server]\napi_key_file = {:?}\n",
        r1d_tests::echo_config(&model),
        key.display().to_string()
    );
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&config),
        args: vec!["--listen".into(), addr.to_owned()],
        ..Default::default()
    });
    (daemon, dir)
}

/// The `[[remote]]` table for the cluster at `addr`, with the key in `key_path`.
fn remote_table(addr: &str, model: &str, key_path: Option<&Path>, extra: &str) -> String {
    let key = key_path.map_or(String::new(), |k| {
        format!("api_key_file = {:?}\n", k.display().to_string())
    });
    format!(
        "[[remote]]\nname = \"cluster\"\nurl = \"http://{addr}/v1\"\nmodel = \"{model}\"\n{key}\
         health_interval_s = 0.5\n{extra}\n"
    )
}

/// r1d in front of the remote: an empty store, so the remote is its only candidate.
fn front(config: &str) -> Daemon {
    let config = format!("[store]\nscan_huggingface = false\nscan_ollama = false\n\n{config}");
    Daemon::start(DaemonOptions {
        config: Some(&config),
        ..Default::default()
    })
}

async fn ready(daemon: &Daemon) -> wire::Status {
    let health = daemon.settled().await;
    assert_eq!(
        health.status,
        State::Ready,
        "{:?}\n{}",
        health.error,
        daemon.log()
    );
    daemon.client().status().await.unwrap()
}

#[tokio::test]
async fn a_second_r1d_as_the_cluster_answers_with_the_reasoning_split_and_its_usage() {
    let (cluster, addr, _files) = cluster("sk-cluster-1");
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "sk-cluster-1");
    let front = front(&remote_table(
        &addr,
        "DeepSeek-R1-Distill-Qwen-7B",
        Some(&key),
        "",
    ));
    let status = ready(&front).await;
    let model = status.model.expect("a resident model");
    assert_eq!(model.backend, "remote", "{}", front.log());
    assert_eq!(model.path, "remote:cluster");
    assert_eq!(model.name, "DeepSeek-R1-Distill-Qwen-7B");
    let selection = status.selection.unwrap_or_default();
    assert!(
        selection.contains("remote cluster (DeepSeek-R1-Distill-Qwen-7B at http://")
            && selection.contains("variant deepseek-r1:7b")
            && selection.contains("no local variant is present"),
        "{selection}"
    );

    // `r1d plan` lists the remote with its variant and health, and makes the daemon's choice:
    // no model file is present here, so the remote is served (whatever this machine could fit).
    let r1d_plan = |json: bool| {
        let out = std::process::Command::new(r1d_tests::binary("r1d"))
            .args(["--user", "--config"])
            .arg(front.config_path())
            .arg("plan")
            .args(json.then_some("--json"))
            .env("XDG_DATA_HOME", front.dir.path().join("data"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        text
    };
    let text = r1d_plan(false);
    assert!(
        text.contains(&format!(
            "cluster — DeepSeek-R1-Distill-Qwen-7B at http://{addr}/v1 — variant deepseek-r1:7b — healthy — served"
        )) && text.contains(
            "With [planner] prefer = \"local\": serve remote cluster: remote cluster \
             (DeepSeek-R1-Distill-Qwen-7B at http://"
        ) && text.contains("no local variant is present"),
        "{text}"
    );
    // The same in `r1d plan --json` and `/r1/plan`: each remote with its health and verdict.
    let json_plan: serde_json::Value = serde_json::from_str(&r1d_plan(true)).unwrap();
    let served: serde_json::Value = front.client().get_json("/r1/plan", false).await.unwrap();
    for plan in [&json_plan, &served] {
        let remote = &plan["remotes"][0];
        assert_eq!(remote["name"], "cluster", "{plan}");
        assert_eq!(remote["variant"], "deepseek-r1:7b", "{plan}");
        assert_eq!(remote["healthy"], true, "{plan}");
        assert_eq!(remote["chosen"], true, "{plan}");
        assert!(
            remote["reason"]
                .as_str()
                .unwrap()
                .contains("served: remote cluster")
                && plan["remote_selection"]
                    .as_str()
                    .unwrap()
                    .contains("serve remote cluster"),
            "{plan}"
        );
    }

    // Whole answer: reasoning and answer apart, usage as the cluster counted it.
    let request = ask("hmm</think>The answer");
    let answer = front.client().chat(&request).await.unwrap();
    let message = &answer.choices[0].message;
    assert_eq!(message.reasoning_content.as_deref(), Some("hmm"));
    assert_eq!(message.content, "The answer");
    assert_eq!(answer.choices[0].finish_reason, "stop");
    let direct = cluster.client().chat(&request).await.unwrap();
    assert_eq!(answer.usage.prompt_tokens, direct.usage.prompt_tokens);
    assert_eq!(
        answer.usage.completion_tokens,
        direct.usage.completion_tokens
    );
    assert!(answer.usage.prompt_tokens > 0);

    // Streamed: the same split, piece by piece.
    let mut stream = front.client().chat_stream(&request).await.unwrap();
    let (mut reasoning, mut content, mut finish) = (String::new(), String::new(), None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for c in chunk.choices {
            reasoning += c.delta.reasoning_content.as_deref().unwrap_or("");
            content += c.delta.content.as_deref().unwrap_or("");
            finish = finish.or(c.finish_reason);
        }
    }
    assert_eq!(
        (reasoning.as_str(), content.as_str()),
        ("hmm", "The answer")
    );
    assert_eq!(finish.as_deref(), Some("stop"));

    // r1ctl works the same: the answer, and the remote in `status`.
    let r1ctl = |args: &[&str]| {
        std::process::Command::new(r1d_tests::binary("r1ctl"))
            .arg("--socket")
            .arg(&front.socket)
            .args(args)
            .output()
            .unwrap()
    };
    let out = r1ctl(&["ask", "--hide-reasoning", "hmm</think>The answer"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "The answer");
    // `status` says what is known of the remote, never zeros that read as sizes.
    let out = r1ctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("remote:cluster")
            && text.contains(&format!(
                "remote        cluster — DeepSeek-R1-Distill-Qwen-7B at http://{addr}/v1 (healthy)"
            ))
            && text.contains(
                "memory        remote: weights and KV cache are on the remote server, not here"
            ),
        "{text}"
    );
    assert!(
        !text.contains("0.00 B")
            && !text.contains("0.0 B weights")
            && !text.contains("context       0 tokens"),
        "{text}"
    );
    let remote = front.client().status().await.unwrap().model.unwrap().remote;
    assert_eq!(
        remote.map(|r| (r.name, r.url, r.model, r.healthy)),
        Some((
            "cluster".to_owned(),
            format!("http://{addr}/v1"),
            "DeepSeek-R1-Distill-Qwen-7B".to_owned(),
            true
        ))
    );

    // Ollama's route: the reasoning in `thinking`.
    let ollama: serde_json::Value = front
        .client()
        .post_json(
            "/api/chat",
            &json!({"model": "DeepSeek-R1-Distill-Qwen-7B", "stream": false, "think": true,
                    "messages": [{"role": "user", "content": "hmm</think>The answer"}]}),
        )
        .await
        .unwrap();
    assert_eq!(ollama["message"]["thinking"], "hmm", "{ollama}");
    assert_eq!(ollama["message"]["content"], "The answer", "{ollama}");

    // Sampling the cluster honours reaches it (the echo model answers with what it was asked).
    let mut params = ask("[[params]]");
    params.temperature = Some(0.25);
    params.seed = Some(42);
    let answer = front.client().chat(&params).await.unwrap();
    // An R1 answer without `</think>` is all reasoning.
    let text = answer.choices[0]
        .message
        .reasoning_content
        .clone()
        .unwrap_or_default();
    assert!(
        text.contains("temperature=0.25") && text.contains("seed=42"),
        "{text}"
    );

    // What r1d cannot pass to a remote is refused by name, and r1d serves on.
    let refused = front
        .client()
        .post_json::<_, serde_json::Value>(
            "/api/chat",
            &json!({"model": "DeepSeek-R1-Distill-Qwen-7B", "stream": false,
                    "options": {"repeat_penalty": 1.2},
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .unwrap_err();
    match refused {
        ClientError::Status {
            status, message, ..
        } => {
            assert_eq!(status.as_u16(), 400, "{message}");
            assert!(message.contains("repeat_penalty"), "{message}");
        }
        other => panic!("{other}"),
    }
    let raw = front
        .client()
        .post_json::<_, serde_json::Value>(
            "/v1/completions",
            &json!({"prompt": "hello", "max_tokens": 4}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&raw, ClientError::Status { status, message, .. }
            if status.as_u16() == 400 && message.contains("raw prompt")),
        "{raw}"
    );
    assert_eq!(ready(&front).await.state, State::Ready);
}

#[tokio::test]
async fn a_client_that_goes_away_closes_the_request_on_the_cluster() {
    let (cluster, addr, _files) = cluster("sk-cluster-2");
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "sk-cluster-2");
    let front = front(&remote_table(
        &addr,
        "DeepSeek-R1-Distill-Qwen-7B",
        Some(&key),
        "",
    ));
    ready(&front).await;
    // 2000 tokens at 50 ms each: 100 s on the cluster unless the request is closed.
    let mut request = ask("[[slow]] one two three");
    request.max_tokens = Some(2000);
    let mut stream = front.client().chat_stream(&request).await.unwrap();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    assert_eq!(cluster.client().status().await.unwrap().running_requests, 1);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running = cluster.client().status().await.unwrap().running_requests;
        if running == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster still runs the request 20 s after the client left\n{}",
            front.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The front is free again too.
    let deadline = Instant::now() + Duration::from_secs(20);
    while front.client().status().await.unwrap().running_requests != 0 {
        assert!(Instant::now() < deadline, "{}", front.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_wrong_key_or_a_readable_key_file_is_named() {
    let (_cluster, addr, _files) = cluster("sk-right");
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "sk-wrong");
    let front = front(&remote_table(
        &addr,
        "DeepSeek-R1-Distill-Qwen-7B",
        Some(&key),
        "",
    ));
    let health = front.settled().await;
    assert_eq!(health.status, State::NoModel, "{}", front.log());
    let status = front.client().status().await.unwrap();
    let selection = status.selection.unwrap_or_default();
    assert!(
        selection.contains("remote cluster skipped") && selection.contains("HTTP 401"),
        "{selection}"
    );
    // A key file others may read is refused at start, as ssh refuses such keys.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(r1d_tests::binary("r1d"))
        .args(["--user", "--dbus", "off", "--socket"])
        .arg(dir.path().join("r1d.sock"))
        .arg("--config")
        .arg({
            let path = dir.path().join("r1d.toml");
            std::fs::write(
                &path,
                remote_table(&addr, "DeepSeek-R1-Distill-Qwen-7B", Some(&key), ""),
            )
            .unwrap();
            path
        })
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("remote[0].api_key_file") && err.contains("mode 0644"),
        "{err}"
    );
}

/// A whole SSE answer of `chunks` (each a `data:` event), then `[DONE]`.
fn sse_answer(chunks: &[serde_json::Value]) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    body += "data: [DONE]\n\n";
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        body,
    )
        .into_response()
}

/// One streamed chunk with `delta`, and `finish_reason` when given.
fn delta(delta: serde_json::Value, finish: Option<&str>) -> serde_json::Value {
    json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

/// The stand-in for a broken upstream: `/v1/models` lists `deepseek-ai/DeepSeek-R1`; a chat
/// whose last message is `503` gets HTTP 503 with an OpenAI error, `400` gets a 400, `hang`
/// never gets its headers, `stall` gets one reasoning chunk and then nothing; `no parser`
/// answers as vLLM without a reasoning parser after a template that opened `<think>`
/// (`reasoning…</think>answer` in the content), `ignores stop` answers past the stop string
/// `STOP` it was sent, with its usage (11 prompt, 6 completion tokens).
async fn broken_upstream() -> String {
    use axum::response::IntoResponse;
    async fn models() -> axum::Json<serde_json::Value> {
        axum::Json(
            json!({"object": "list", "data": [{"id": "deepseek-ai/DeepSeek-R1", "object": "model"}]}),
        )
    }
    async fn chat(axum::Json(body): axum::Json<serde_json::Value>) -> axum::response::Response {
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_owned();
        match last.as_str() {
            "503" => (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": {"message": "the engine is overloaded", "code": 503}})),
            )
                .into_response(),
            "400" => (
                axum::http::StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"message": "temperature must be at most 2"}})),
            )
                .into_response(),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                axum::http::StatusCode::OK.into_response()
            }
            "no parser" => sse_answer(&[
                delta(
                    json!({"role": "assistant", "content": "reasoning here"}),
                    None,
                ),
                delta(json!({"content": "</think>"}), None),
                delta(json!({"content": "\n\nthe answer"}), None),
                delta(json!({}), Some("stop")),
            ]),
            "ignores stop" => sse_answer(&[
                delta(json!({"reasoning_content": "hmm"}), None),
                delta(json!({"content": "one"}), None),
                delta(json!({"content": " two"}), None),
                delta(json!({"content": "STOP"}), None),
                delta(json!({"content": " three"}), None),
                delta(json!({}), Some("stop")),
                json!({"choices": [], "usage":
                    {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}}),
            ]),
            _ => {
                let first = "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"thinking\"}}]}\n\n";
                let stream = futures_util::stream::once(async move {
                    Ok::<_, std::io::Error>(bytes::Bytes::from(first))
                })
                .chain(futures_util::stream::pending());
                (
                    [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
                    axum::body::Body::from_stream(stream),
                )
                    .into_response()
            }
        }
    }
    let app = axum::Router::new()
        .route("/v1/models", axum::routing::get(models))
        .route("/v1/chat/completions", axum::routing::post(chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_and_time_limits_end_answers_with_clear_errors() {
    let addr = broken_upstream().await;
    let front = front(&remote_table(
        &addr,
        "deepseek-ai/DeepSeek-R1",
        None,
        "first_byte_timeout_s = 1\nstall_timeout_s = 1\n",
    ));
    let status = ready(&front).await;
    assert!(
        status
            .selection
            .unwrap_or_default()
            .contains("variant deepseek-r1:671b"),
        "{}",
        front.log()
    );
    let error = |e: ClientError| match e {
        ClientError::Status {
            status, message, ..
        } => (status.as_u16(), message),
        other => panic!("{other}"),
    };
    // A gateway's statuses: 502 for the upstream's failure, 504 for its silence; each route's
    // own error shape, naming the remote and the cause.
    let (code, message) = error(front.client().chat(&ask("503")).await.unwrap_err());
    assert_eq!(code, 502, "{message}");
    assert!(
        message.contains("remote cluster (http://")
            && message.contains("HTTP 503 Service Unavailable")
            && message.contains("the engine is overloaded"),
        "{message}"
    );
    let refused_body = |e: ClientError| match e {
        ClientError::Status { status, body, .. } => (
            status.as_u16(),
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        ),
        other => panic!("{other}"),
    };
    let (code, body) = refused_body(
        front
            .client()
            .post_json::<_, serde_json::Value>(
                "/api/chat",
                &json!({"stream": false, "messages": [{"role": "user", "content": "503"}]}),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 502, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("remote cluster (http://") && e.contains("HTTP 503")),
        "{body}"
    );
    let (code, body) = refused_body(
        front
            .client()
            .post_json::<_, serde_json::Value>(
                "/v1/chat/completions",
                &json!({"messages": [{"role": "user", "content": "503"}]}),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_error", "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    let (code, message) = error(front.client().chat(&ask("400")).await.unwrap_err());
    assert_eq!(code, 400, "{message}");
    assert!(
        message.contains("temperature must be at most 2"),
        "{message}"
    );
    let (code, message) = error(front.client().chat(&ask("hang")).await.unwrap_err());
    assert_eq!(code, 504, "{message}");
    assert!(message.contains("remote cluster (http://"), "{message}");
    assert!(
        message.contains("no answer within first_byte_timeout_s = 1 s"),
        "{message}"
    );
    // R1's reasoning left in the text after a template that opened `<think>`: split as a local
    // R1 answer is.
    let answer = front.client().chat(&ask("no parser")).await.unwrap();
    let message = &answer.choices[0].message;
    assert_eq!(
        (
            message.reasoning_content.as_deref(),
            message.content.as_str()
        ),
        (Some("reasoning here"), "the answer")
    );
    // A stop string r1d matched itself (this upstream ignores `stop`): the answer ends there,
    // with the upstream's own usage.
    let stopped: serde_json::Value = front
        .client()
        .post_json(
            "/v1/chat/completions",
            &json!({"stop": ["STOP"],
                    "messages": [{"role": "user", "content": "ignores stop"}]}),
        )
        .await
        .unwrap();
    assert_eq!(
        stopped["choices"][0]["message"]["content"], "one two",
        "{stopped}"
    );
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop", "{stopped}");
    assert_eq!(stopped["usage"]["prompt_tokens"], 11, "{stopped}");
    assert_eq!(stopped["usage"]["completion_tokens"], 6, "{stopped}");
    // A stall mid-stream: the reasoning so far, then an error event.
    let mut stream = front.client().chat_stream(&ask("stall")).await.unwrap();
    let mut reasoning = String::new();
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                for c in c.choices {
                    reasoning += c.delta.reasoning_content.as_deref().unwrap_or("");
                }
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    assert_eq!(reasoning, "thinking");
    let failure = failure.expect("an error event");
    assert!(
        failure.contains("the answer stalled: nothing for stall_timeout_s = 1 s"),
        "{failure}"
    );
    assert_eq!(ready(&front).await.state, State::Ready);
}

#[tokio::test]
async fn a_remote_that_fails_its_health_checks_is_skipped_and_the_best_local_variant_serves() {
    // A fake machine with 4 GB free and the 1.5B in the store (the echo backend serves it);
    // the cluster serves the 7B, which `prefer = "best"` ranks above it.
    let root = tempfile::tempdir().unwrap();
    crate::watch::machine(root.path(), 32 * 1_000_000_000, 4 * 1_000_000_000, None);
    let models = tempfile::tempdir().unwrap();
    let local = crate::watch::variant_file(
        models.path(),
        "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf",
        "DeepSeek R1 Distill Qwen 1.5B",
        1536,
        None,
    );
    let (cluster, addr, _files) = cluster("sk-cluster-3");
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "sk-cluster-3");
    let config = format!(
        "[model]\nbackend = \"echo\"\n\n[store]\ndir = {:?}\nscan_huggingface = false\n\
         scan_ollama = false\n\n[planner]\ncontext_length = 2048\nmin_tokens_per_s = 0\n\
         prefer = \"best\"\n\n{}",
        models.path().display().to_string(),
        remote_table(&addr, "DeepSeek-R1-Distill-Qwen-7B", Some(&key), "")
    );
    let front = Daemon::start(DaemonOptions {
        config: Some(&config),
        args: vec!["--hardware-root".into(), root.path().display().to_string()],
        ..Default::default()
    });
    let status = ready(&front).await;
    assert_eq!(
        status.model.as_ref().map(|m| m.path.as_str()),
        Some("remote:cluster"),
        "{}",
        front.log()
    );
    let selection = status.selection.unwrap_or_default();
    assert!(
        selection.contains("ranks above the local deepseek-r1:1.5b"),
        "{selection}"
    );
    let answer = front
        .client()
        .chat(&ask("hmm</think>from the cluster"))
        .await
        .unwrap();
    assert_eq!(answer.choices[0].message.content, "from the cluster");

    // The cluster goes away: the next health check fails, r1d plans again and serves the 1.5B.
    drop(cluster);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = front.client().status().await.unwrap();
        if status.state == State::Ready
            && status.model.as_ref().map(|m| m.path.as_str()) == Some(local.to_str().unwrap())
        {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still not on the local variant 30 s after the cluster stopped: {status:?}\n{}",
            front.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let selection = status.selection.unwrap_or_default();
    assert!(
        selection.contains("deepseek-r1:1.5b")
            && selection.contains("remote cluster skipped: cannot connect to http://"),
        "{selection}"
    );
    // The local echo model answers (upper-cased, its default).
    let answer = front.client().chat(&ask("hello")).await.unwrap();
    let message = &answer.choices[0].message;
    assert_eq!(
        format!(
            "{}{}",
            message.reasoning_content.clone().unwrap_or_default(),
            message.content
        ),
        "HELLO"
    );
}

#[tokio::test]
async fn a_reloaded_remote_url_applies_to_the_next_request() {
    // Two clusters; the front starts on A, then its config is changed to B.
    let (a, addr_a, files_a) = cluster("sk-same");
    let (b, addr_b, _files_b) = cluster("sk-same");
    let key = files_a.path().join("cluster.key");
    let model = "DeepSeek-R1-Distill-Qwen-7B";
    let front = front(&remote_table(&addr_a, model, Some(&key), ""));
    ready(&front).await;
    let client = front.client();
    let hello = ask("hello");
    client.chat(&hello).await.unwrap();
    let served = |d: &Daemon| {
        let c = d.client();
        async move { c.status().await.unwrap().requests_served }
    };
    let (a_before, b_before) = (served(&a).await, served(&b).await);
    assert_eq!(b_before, 0);
    let config = std::fs::read_to_string(front.config_path()).unwrap();
    std::fs::write(front.config_path(), config.replace(&addr_a, &addr_b)).unwrap();
    let outcome = client.reload().await.unwrap();
    assert!(
        format!("{outcome:?}").contains(&addr_b),
        "the reload names the new url: {outcome:?}"
    );
    client.chat(&hello).await.unwrap();
    assert_eq!(
        served(&a).await,
        a_before,
        "nothing more went to the old url"
    );
    assert_eq!(served(&b).await, 1, "the request went to the new url");
}

/// The front's `/health` once it is `state`, within 60 s.
async fn health_until(daemon: &Daemon, state: State) -> wire::Health {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = daemon.client().health().await.unwrap();
        if health.status == state {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "not {state:?} within 60 s: {health:?}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status code and message of a refused request.
fn refusal(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Status {
            status, message, ..
        } => (status.as_u16(), message),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn with_only_a_remote_health_is_no_model_while_it_is_down_and_ready_when_it_is_back() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (cluster, files) = cluster_at("sk-cluster-5", &addr);
    let key = files.path().join("cluster.key");
    let config = remote_table(&addr, "DeepSeek-R1-Distill-Qwen-7B", Some(&key), "");
    let front = front(&config);
    ready(&front).await;

    // The cluster stops: nothing can answer, and /health says so (as it does at start).
    drop(cluster);
    let health = health_until(&front, State::NoModel).await;
    let why = health.error.unwrap_or_default();
    assert!(
        why.contains("remote cluster skipped: cannot connect to http://"),
        "{why}"
    );
    let status = front.client().status().await.unwrap();
    assert!(status.model.is_none(), "{status:?}");
    let (code, message) = refusal(front.client().chat(&ask("hello")).await.unwrap_err());
    assert_eq!(code, 503, "{message}");
    assert!(message.contains("remote cluster skipped"), "{message}");
    // A second r1d started now with the same config says the same.
    let fresh = self::front(&config);
    let at_start = fresh.settled().await;
    assert_eq!(at_start.status, State::NoModel, "{}", fresh.log());
    assert!(
        at_start
            .error
            .unwrap_or_default()
            .contains("remote cluster skipped: cannot connect to http://"),
        "{}",
        fresh.log()
    );

    // The cluster is back where it was: ready again, and it answers.
    let (_cluster, _files) = cluster_at("sk-cluster-5", &addr);
    health_until(&front, State::Ready).await;
    let answer = front
        .client()
        .chat(&ask("hmm</think>back again"))
        .await
        .unwrap();
    assert_eq!(answer.choices[0].message.content, "back again");
}

/// A fake machine with the 1.5B in the store (served by the echo backend) and the cluster at
/// `addr` as a `[[remote]]` (the 7B), by `[planner] prefer`; with the local file and the
/// directories to keep.
fn front_with_local(
    addr: &str,
    key: &Path,
    prefer: &str,
) -> (Daemon, std::path::PathBuf, [tempfile::TempDir; 2]) {
    let root = tempfile::tempdir().unwrap();
    crate::watch::machine(root.path(), 32 * 1_000_000_000, 4 * 1_000_000_000, None);
    let models = tempfile::tempdir().unwrap();
    let local = crate::watch::variant_file(
        models.path(),
        "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf",
        "DeepSeek R1 Distill Qwen 1.5B",
        1536,
        None,
    );
    let config = format!(
        "[model]\nbackend = \"echo\"\n\n[store]\ndir = {:?}\nscan_huggingface = false\n\
         scan_ollama = false\n\n[planner]\ncontext_length = 2048\nmin_tokens_per_s = 0\n\
         prefer = \"{prefer}\"\n\n{}",
        models.path().display().to_string(),
        remote_table(addr, "DeepSeek-R1-Distill-Qwen-7B", Some(key), "")
    );
    let front = Daemon::start(DaemonOptions {
        config: Some(&config),
        args: vec!["--hardware-root".into(), root.path().display().to_string()],
        ..Default::default()
    });
    (front, local, [root, models])
}

#[tokio::test]
async fn a_remote_is_pinned_and_named_by_remote_name_like_any_model() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (cluster, files) = cluster_at("sk-cluster-6", &addr);
    let key = files.path().join("cluster.key");
    let (front, local, _dirs) = front_with_local(&addr, &key, "local");
    let status = ready(&front).await;
    assert_eq!(
        status.model.as_ref().map(|m| m.path.as_str()),
        local.to_str(),
        "the local 1.5B is fast enough: {:?}",
        status.selection
    );
    let client = front.client();

    // Listed among the models, and named by a route while the local model serves: 404 saying
    // how to make it resident.
    let tags: serde_json::Value = client.get_json("/api/tags", false).await.unwrap();
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"remote:cluster"), "{tags}");
    let (code, message) = refusal(
        client
            .post_json::<_, serde_json::Value>(
                "/v1/chat/completions",
                &json!({"model": "remote:cluster",
                        "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404, "{message}");
    assert!(
        message.contains("a configured [[remote]]") && message.contains("r1ctl use remote:cluster"),
        "{message}"
    );

    // `r1ctl use remote:cluster` pins it.
    let r1ctl = |args: &[&str]| {
        std::process::Command::new(r1d_tests::binary("r1ctl"))
            .arg("--socket")
            .arg(&front.socket)
            .args(args)
            .output()
            .unwrap()
    };
    let out = r1ctl(&["use", "remote:cluster"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        front.log()
    );
    let status = ready(&front).await;
    assert_eq!(
        status.model.as_ref().map(|m| m.path.as_str()),
        Some("remote:cluster")
    );
    assert_eq!(
        status.watch.as_ref().and_then(|w| w.pinned.as_deref()),
        Some("remote:cluster")
    );
    // An unknown remote is refused by name (404), and the pin stays.
    let out = r1ctl(&["use", "remote:nowhere"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no [[remote]] named \"nowhere\"") && err.contains("remote:cluster"),
        "{err}"
    );
    let (code, _) = refusal(
        client
            .post_json::<_, serde_json::Value>("/r1/use", &json!({"model": "remote:nowhere"}))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);

    // Listed by that name, and every route takes it (and its bare name).
    let models: serde_json::Value = client.get_json("/v1/models", false).await.unwrap();
    assert_eq!(models["data"][0]["id"], "remote:cluster", "{models}");
    let answer: serde_json::Value = client
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "remote:cluster",
                    "messages": [{"role": "user", "content": "hmm</think>pinned"}]}),
        )
        .await
        .unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"], "pinned",
        "{answer}"
    );
    assert_eq!(answer["model"], "remote:cluster", "{answer}");
    let ollama: serde_json::Value = client
        .post_json(
            "/api/chat",
            &json!({"model": "cluster", "stream": false, "think": true,
                    "messages": [{"role": "user", "content": "hmm</think>pinned"}]}),
        )
        .await
        .unwrap();
    assert_eq!(ollama["message"]["content"], "pinned", "{ollama}");

    // The pinned remote stops: it is unloaded (the pin stays), and served again once it is back.
    drop(cluster);
    let health = health_until(&front, State::NoModel).await;
    let why = health.error.unwrap_or_default();
    assert!(
        why.contains("remote cluster (http://")
            && why.contains("fails its health check: cannot connect to http://")
            && why.contains("it is served again when its health check passes"),
        "{why}"
    );
    let (_cluster, _files) = cluster_at("sk-cluster-6", &addr);
    health_until(&front, State::Ready).await;
    let status = front.client().status().await.unwrap();
    assert_eq!(
        status.model.as_ref().map(|m| m.path.as_str()),
        Some("remote:cluster")
    );

    // `use auto` drops the pin: the local variant again.
    let out = r1ctl(&["use", "auto"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = ready(&front).await;
    assert_eq!(
        status.model.as_ref().map(|m| m.path.as_str()),
        local.to_str()
    );
}
