//! The ONNX backends through the real daemon: SmolLM2 exported to ONNX answering over the HTTP
//! API on the `onnxruntime` plugin, the three plugins in `/r1/backends` and `r1ctl status`, the
//! TensorRT plugin unavailable here with its reasons, the store listing an ONNX directory, and
//! bad model directories refused without harm to the daemon.
//!
//! The ONNX Runtime library is the fixture's (`libonnxruntime.so` from the PyPI wheel), given to
//! the daemon as `R1D_ONNXRUNTIME_LIB`, as an administrator would.

use std::path::{Path, PathBuf};
use std::process::Command;

use futures_util::StreamExt;
use r1d_client::wire::{BackendList, ChatMessage, State, StoreModelList};
use r1d_tests::{binary, fixture, Daemon, DaemonOptions, ONNXRUNTIME_LIB, SMOLLM2_ONNX};

use crate::ask;

/// One real model at a time (see `llama.rs`).
static ONE_MODEL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The fixture model directory and library, or `None` (skipped) when missing.
fn fixtures() -> Option<(PathBuf, PathBuf)> {
    Some((fixture(SMOLLM2_ONNX)?, fixture(ONNXRUNTIME_LIB)?))
}

fn library_env(lib: &Path) -> Vec<(&'static str, String)> {
    vec![("R1D_ONNXRUNTIME_LIB", lib.display().to_string())]
}

fn france() -> r1d_client::wire::ChatCompletionRequest {
    // SmolLM2's template adds its own system prompt when none is given; with a plain one this
    // 135M model answers correctly (the same conversation as the fixture's reference.json).
    let mut request = ask("What is the capital of France?");
    request.messages.insert(
        0,
        ChatMessage::new("system", "You are a helpful assistant."),
    );
    request.temperature = Some(0.0);
    request.max_tokens = Some(48);
    request
}

#[tokio::test]
async fn onnx_model_answers_a_chat_through_the_http_api() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some((model, lib)) = fixtures() else {
        return;
    };
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        args: vec![
            "--backend".into(),
            "onnxruntime".into(),
            "--context-length".into(),
            "2048".into(),
        ],
        env: library_env(&lib),
        ..Default::default()
    });
    assert_eq!(
        daemon.settled().await.status,
        State::Ready,
        "{}",
        daemon.log()
    );
    let client = daemon.client();
    let status = client.status().await.unwrap();
    let m = status.model.expect("a model is served");
    assert_eq!(m.backend, "onnxruntime");
    assert_eq!(m.layers, 30);
    assert_eq!(m.context_length, 2048);

    let request = france();
    let answer = client.chat(&request).await.unwrap();
    let text = answer.choices[0].message.content.clone();
    // The template rendered by the daemon, tokenized by the plugin, generated greedily: the
    // same words transformers gives for this conversation.
    assert_eq!(text, "The capital of France is Paris.", "{answer:?}");
    assert_eq!(answer.choices[0].finish_reason, "stop");
    assert_eq!(answer.usage.completion_tokens, 7, "{answer:?}");
    assert!(answer.usage.prompt_tokens > 20, "{answer:?}");

    // Streamed: the same text, piece by piece.
    let mut stream = client.chat_stream(&request).await.unwrap();
    let mut pieces = String::new();
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for c in &chunk.choices {
            if let Some(content) = &c.delta.content {
                pieces.push_str(content);
            }
            if let Some(f) = &c.finish_reason {
                finish = Some(f.clone());
            }
        }
    }
    assert_eq!(pieces, text);
    assert_eq!(finish.as_deref(), Some("stop"));

    // Ollama's route on the same model.
    let reply: serde_json::Value = client
        .post_json(
            "/api/chat",
            &serde_json::json!({
                "model": answer.model,
                "stream": false,
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"}
                ],
                "options": {"temperature": 0}
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        reply["message"]["content"], "The capital of France is Paris.",
        "{reply}"
    );

    // Issue 17: what the ONNX sampler does not implement is refused by name (400 in each
    // family's shape), never ignored; the "off" values are accepted.
    for (route, extra, field) in [
        (
            "/v1/chat/completions",
            serde_json::json!({"presence_penalty": 1.0}),
            "presence_penalty",
        ),
        (
            "/v1/chat/completions",
            serde_json::json!({"logit_bias": {"504": -100}}),
            "logit_bias",
        ),
        (
            "/api/chat",
            serde_json::json!({"options": {"repeat_penalty": 1.2}}),
            "repeat_penalty",
        ),
    ] {
        let mut body = serde_json::json!({
            "model": answer.model, "stream": false,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]
        });
        // Each family's own limit field (Ollama's `max_tokens` would be an unknown field).
        if route.starts_with("/v1/") {
            body["max_tokens"] = 4.into();
        }
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let err = client
            .post_json::<_, serde_json::Value>(route, &body)
            .await
            .expect_err("refused");
        let r1d_client::ClientError::Status { status, body, .. } = err else {
            panic!("{route} {extra}: expected a status, got {err:?}")
        };
        assert_eq!(status.as_u16(), 400, "{route} {extra}: {body}");
        assert!(
            body.contains(&format!("{field} is not supported by the ONNX backends")),
            "{route} {extra}: {body}"
        );
    }
    let off = serde_json::json!({"presence_penalty": 0, "frequency_penalty": 0,
        "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]});
    let _: serde_json::Value = client
        .post_json("/v1/chat/completions", &off)
        .await
        .expect("the off values are accepted");
}

#[tokio::test]
async fn an_onnx_directory_goes_to_the_onnx_backend_without_being_told() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some((model, lib)) = fixtures() else {
        return;
    };
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        env: library_env(&lib),
        ..Default::default()
    });
    assert_eq!(
        daemon.settled().await.status,
        State::Ready,
        "{}",
        daemon.log()
    );
    let status = daemon.client().status().await.unwrap();
    // tensorrt reads ONNX too and scores higher, but is unavailable here: onnxruntime serves it.
    assert_eq!(status.model.unwrap().backend, "onnxruntime");
}

#[tokio::test]
async fn backends_and_r1ctl_status_list_all_three_plugins_with_availability_and_reason() {
    let Some((_, lib)) = fixtures() else {
        return;
    };
    let daemon = Daemon::start(DaemonOptions {
        env: library_env(&lib),
        ..Default::default()
    });
    daemon.settled().await;
    let list: BackendList = daemon.backends().await;
    let entry = |name: &str| {
        list.backends
            .iter()
            .find(|b| b.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} is not listed: {list:#?}"))
    };
    let llama = entry("llamacpp");
    assert!(llama.available, "{llama:?}");
    assert_eq!(llama.formats, vec!["gguf"]);
    let ort = entry("onnxruntime");
    assert!(ort.available, "{ort:?}");
    assert_eq!(ort.formats, vec!["onnx"]);
    assert!(
        ort.devices[0].contains("ONNX Runtime 1.")
            && ort.devices[0].contains(&lib.display().to_string()),
        "{ort:?}"
    );
    let trt = entry("tensorrt");
    assert!(!trt.available, "{trt:?}");
    assert_eq!(trt.formats, vec!["onnx"]);
    let why = trt.error.as_deref().expect("a reason");
    assert!(
        why.contains("is not a GPU build (its providers: CPUExecutionProvider"),
        "{why}"
    );
    if !Path::new("/proc/driver/nvidia/version").exists() {
        assert!(why.contains("no NVIDIA driver"), "{why}");
    }

    let out = Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("status")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().any(|w| w == name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{text}"))
            .to_owned()
    };
    assert!(line("llamacpp").contains(" available"), "{text}");
    assert!(line("onnxruntime").contains(" available"), "{text}");
    let trt_line = line("tensorrt");
    assert!(
        trt_line.contains("unavailable") && trt_line.contains("not a GPU build"),
        "{text}"
    );

    let out = Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["--json", "status"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = json["backends"]
        .as_array()
        .expect("backends in --json status")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    for name in ["llamacpp", "onnxruntime", "tensorrt"] {
        assert!(names.contains(&name), "{json}");
    }
}

#[tokio::test]
async fn without_an_onnx_runtime_the_plugin_says_which_library_it_tried() {
    let daemon = Daemon::start(DaemonOptions {
        env: vec![(
            "R1D_ONNXRUNTIME_LIB",
            "/nonexistent/libonnxruntime.so.1.30.0".into(),
        )],
        ..Default::default()
    });
    daemon.settled().await;
    let list = daemon.backends().await;
    let ort = list
        .backends
        .iter()
        .find(|b| b.name.as_deref() == Some("onnxruntime"))
        .unwrap();
    if ort.available {
        // A system ONNX Runtime was found after the missing one: nothing more to check here.
        assert!(ort.devices[0].contains("system library path"), "{ort:?}");
        return;
    }
    let why = ort.error.as_deref().unwrap();
    assert!(
        why.contains("/nonexistent/libonnxruntime.so.1.30.0 (R1D_ONNXRUNTIME_LIB): no such file"),
        "{why}"
    );
    assert!(why.contains("set R1D_ONNXRUNTIME_LIB"), "{why}");
}

#[tokio::test]
async fn a_bad_onnx_directory_is_a_clear_error_and_the_daemon_keeps_serving() {
    let Some((model, lib)) = fixtures() else {
        return;
    };
    let bad = tempfile::tempdir().unwrap();
    // Everything but the graph: no model.onnx.
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model.join(name), bad.path().join(name)).unwrap();
    }
    let daemon = Daemon::start(DaemonOptions {
        model: Some(bad.path()),
        args: vec!["--backend".into(), "onnxruntime".into()],
        env: library_env(&lib),
        ..Default::default()
    });
    let health = daemon.settled().await;
    assert_eq!(health.status, State::NoModel, "{}", daemon.log());
    let why = health.error.unwrap();
    assert!(why.contains("has no model.onnx"), "{why}");

    // A graph with a broken tokenizer.json: named, and the daemon is still up.
    let broken = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.onnx"] {
        std::fs::copy(model.join(name), broken.path().join(name)).unwrap();
    }
    std::fs::write(broken.path().join("tokenizer.json"), "{ not json").unwrap();
    let load: Result<r1d_client::wire::Status, _> = daemon
        .client()
        .post_json(
            "/r1/load",
            &serde_json::json!({"path": broken.path(), "backend": "onnxruntime"}),
        )
        .await;
    let err = load
        .expect_err("a broken tokenizer fails the load")
        .to_string();
    assert!(
        err.contains("failed to read the tokenizer") && err.contains("tokenizer.json"),
        "{err}"
    );
    assert!(daemon.client().status().await.is_ok(), "{}", daemon.log());
}

#[tokio::test]
async fn the_store_lists_an_onnx_directory_with_its_format_and_serves_it_by_name() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some((model, lib)) = fixtures() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let models = data.path().join("r1d/models");
    std::fs::create_dir_all(&models).unwrap();
    // Hard links: the scan does not follow symlinks out of the models directory.
    r1d_tests::link_into(&model, &models.join(SMOLLM2_ONNX));
    let mut env = library_env(&lib);
    env.push(("XDG_DATA_HOME", data.path().display().to_string()));
    let daemon = Daemon::start(DaemonOptions {
        env,
        ..Default::default()
    });
    daemon.settled().await;
    let list: StoreModelList = daemon.client().get_json("/r1/models", false).await.unwrap();
    let entry = list
        .models
        .iter()
        .find(|m| m.name == SMOLLM2_ONNX)
        .unwrap_or_else(|| panic!("the ONNX directory is not listed: {list:#?}"));
    assert_eq!(entry.format, "onnx", "{entry:?}");
    assert_eq!(entry.status, "ok", "{entry:?}");
    assert_eq!(entry.architecture.as_deref(), Some("llama"), "{entry:?}");
    assert!(entry.size_bytes > 500_000_000, "{entry:?}");

    let status: r1d_client::wire::Status = daemon
        .client()
        .post_json(
            "/r1/use",
            &r1d_client::wire::ModelRequest {
                model: SMOLLM2_ONNX.into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(status.state, State::Ready, "{}", daemon.log());
    assert_eq!(status.model.unwrap().backend, "onnxruntime");
}
