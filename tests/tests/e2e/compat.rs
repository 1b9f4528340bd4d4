//! OpenAI and Ollama compatibility: reasoning, streaming details, limits and malformed requests,
//! through the real daemon with the deterministic echo backend (named like an R1 model, so r1d
//! treats it as one: its prompt opens `<think>` and the echo's answer carries `</think>`).

use futures_util::StreamExt;
use r1d_client::wire::{ChatCompletionRequest, ChatMessage, StreamOptions};
use r1d_client::{ClientError, Method};
use r1d_tests::{echo_model, Daemon, DaemonOptions};
use serde_json::{json, Value};

use crate::ask;

/// An echo model r1d takes for DeepSeek-R1; it answers with the user's words unchanged.
fn r1_echo() -> (Daemon, tempfile::TempDir) {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(
        models.path(),
        r#"{"name": "DeepSeek-R1 echo", "transform": "identity"}"#,
    );
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    (daemon, models)
}

/// The echo's answer to this is "hmm let me see</think>The answer": the tag and text on both
/// sides of it arrive in one piece (" see</think>The").
const THINKER: &str = "hmm let me see</think>The answer";

async fn raw(daemon: &Daemon, method: Method, path: &str, body: Value) -> (u16, String) {
    use http_body_util::BodyExt;
    let response = daemon
        .client()
        .request(method, path, Some(body.to_string().into_bytes()))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn reasoning_goes_to_reasoning_content_without_tags() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let answer = daemon.client().chat(&ask(THINKER)).await.unwrap();
    let message = &answer.choices[0].message;
    assert_eq!(message.reasoning_content.as_deref(), Some("hmm let me see"));
    assert_eq!(message.content, "The answer");
    // Reasoning tokens are completion tokens: 5 pieces were generated.
    assert_eq!(answer.usage.completion_tokens, 5);
}

#[tokio::test]
async fn streamed_deltas_carry_one_channel_each_and_nothing_of_the_answer_stays_in_reasoning() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let mut request = ask(THINKER);
    request.stream_options = Some(StreamOptions {
        include_usage: true,
    });
    let mut stream = daemon.client().chat_stream(&request).await.unwrap();
    let (mut reasoning, mut content) = (String::new(), String::new());
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.unwrap());
    }
    let (last, rest) = chunks.split_last().unwrap();
    // include_usage: exactly one usage chunk with no choices, last before [DONE].
    assert!(last.choices.is_empty());
    assert_eq!(last.usage.as_ref().unwrap().completion_tokens, 5);
    assert_eq!(chunks.iter().filter(|c| c.choices.is_empty()).count(), 1);
    let (finishing, pieces) = rest.split_last().unwrap();
    assert_eq!(finishing.choices[0].finish_reason.as_deref(), Some("stop"));
    for chunk in pieces {
        let delta = &chunk.choices[0].delta;
        assert!(
            chunk.choices[0].finish_reason.is_none(),
            "finish_reason is null before the end"
        );
        assert!(
            !(delta.content.as_deref().is_some_and(|c| !c.is_empty())
                && delta.reasoning_content.is_some()),
            "a chunk with both channels: {delta:?}"
        );
        reasoning.push_str(delta.reasoning_content.as_deref().unwrap_or(""));
        content.push_str(delta.content.as_deref().unwrap_or(""));
    }
    assert_eq!(reasoning, "hmm let me see");
    assert_eq!(content, "The answer");
}

#[tokio::test]
async fn reasoning_format_none_returns_raw_text_with_paired_tags() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let mut request = ask(THINKER);
    request.reasoning_format = Some("none".into());
    let answer = daemon.client().chat(&request).await.unwrap();
    assert_eq!(
        answer.choices[0].message.content,
        "<think>\nhmm let me see</think>The answer"
    );
    assert_eq!(answer.choices[0].message.reasoning_content, None);
}

#[tokio::test]
async fn r1_defaults_to_deepseek_sampling_and_requests_override_it() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let answer = daemon.client().chat(&ask("x [[params]]")).await.unwrap();
    // The prompt opened <think>, and the echo's answer has no </think>: an answer that never
    // closes the tag stays reasoning (nothing is invented for content).
    let said = answer.choices[0].message.reasoning_content.clone().unwrap();
    assert_eq!(said, "temperature=0.6 top_p=0.95 top_k=0 min_p=0");
    assert_eq!(answer.choices[0].message.content, "");
    let mut request = ask("x [[params]]");
    request.temperature = Some(0.2);
    request.top_k = Some(7);
    let said = daemon.client().chat(&request).await.unwrap().choices[0]
        .message
        .reasoning_content
        .clone()
        .unwrap();
    assert_eq!(said, "temperature=0.2 top_p=0.95 top_k=7 min_p=0");
}

#[tokio::test]
async fn other_models_default_to_llama_cpp_sampling() {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(
        models.path(),
        r#"{"name": "plain echo", "transform": "identity"}"#,
    );
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    daemon.settled().await;
    let answer = daemon.client().chat(&ask("x [[params]]")).await.unwrap();
    assert_eq!(
        answer.choices[0].message.content,
        "temperature=0.8 top_p=0.95 top_k=40 min_p=0.05"
    );
}

#[tokio::test]
async fn multibyte_characters_split_across_tokens_arrive_whole() {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), r#"{"transform": "identity"}"#);
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    daemon.settled().await;
    let text = "héllo wörld € 🦀 [[bytes]]";
    let whole = daemon.client().chat(&ask(text)).await.unwrap().choices[0]
        .message
        .content
        .clone();
    assert_eq!(whole, text);
    let mut stream = daemon.client().chat_stream(&ask(text)).await.unwrap();
    let mut joined = String::new();
    while let Some(chunk) = stream.next().await {
        for c in chunk.unwrap().choices {
            let piece = c.delta.content.unwrap_or_default();
            assert!(
                !piece.contains('\u{fffd}'),
                "replacement character streamed: {piece:?}"
            );
            joined.push_str(&piece);
        }
    }
    assert_eq!(joined.as_bytes(), whole.as_bytes());
}

#[tokio::test]
async fn max_tokens_is_capped_by_the_context() {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), r#"{"context_length": 16}"#);
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    daemon.settled().await;
    let mut request = ask("tick [[slow]]");
    request.max_tokens = Some(1_000_000);
    let answer = daemon.client().chat(&request).await.unwrap();
    assert_eq!(answer.choices[0].finish_reason, "length");
    // Prompt and answer together never pass the context.
    assert_eq!(answer.usage.total_tokens, 16);
}

#[tokio::test]
async fn malformed_requests_get_openai_errors_naming_the_field_and_the_next_request_is_served() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            400,
            "messages[0].content",
            "a string or an array of content parts",
        ),
        (json!({"messages": []}), 400, "messages", "at least one"),
        (
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            400,
            "messages[0].role",
            "wizard",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}),
            400,
            "temperature",
            "outside",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}),
            400,
            "top_p",
            "outside",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}),
            400,
            "max_tokens",
            "at least 1",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}),
            400,
            "n",
            "n = 1",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "reasoning_format": "xml"}),
            400,
            "reasoning_format",
            "xml",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}),
            404,
            "model",
            "gpt-4o",
        ),
        (json!({"messages": "hi"}), 400, "messages", "invalid type"),
    ];
    for (body, status, param, text) in cases {
        let (got, answer) = raw(&daemon, Method::POST, "/v1/chat/completions", body.clone()).await;
        assert_eq!(got, status, "{body} → {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["error"]["param"], param, "{body} → {answer}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(text),
            "{body} → {answer}"
        );
        assert!(v["error"]["type"].is_string());
    }
    let (got, _) = raw(
        &daemon,
        Method::POST,
        "/v1/chat/completions",
        json!("not an object"),
    )
    .await;
    assert_eq!(got, 400);
    // Wrong method, unknown route: still OpenAI error objects.
    for (method, path, body, status) in [
        (Method::GET, "/v1/chat/completions", Value::Null, 405),
        (Method::POST, "/v1/embeddings", json!({}), 404),
    ] {
        let (got, answer) = raw(&daemon, method.clone(), path, body).await;
        assert_eq!(got, status, "{method} {path} → {answer}");
        let v: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {answer}"));
        assert!(v["error"]["message"].is_string(), "{answer}");
    }
    // An oversized body (over axum's 2 MB default) is a 413 in the same shape. curl, as a client
    // that reads the early answer while still sending, shows what clients see.
    let big = daemon.dir.path().join("big.json");
    let body = json!({"messages": [{"role": "user", "content": "x".repeat(3 << 20)}]});
    std::fs::write(&big, body.to_string()).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&daemon.socket)
        .arg("--data-binary")
        .arg(format!("@{}", big.display()))
        .arg("http://r1d/v1/chat/completions")
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let (answer, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "413", "{text}");
    let v: Value = serde_json::from_str(answer).unwrap_or_else(|_| panic!("not JSON: {answer}"));
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Accepted: the served model's name, and a history with reasoning fields.
    let request: ChatCompletionRequest = serde_json::from_value(json!({
        "model": "DeepSeek-R1 echo",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "reasoning_content": "r1", "reasoning": "r2"},
            {"role": "user", "content": THINKER}
        ]
    }))
    .unwrap();
    let answer = daemon.client().chat(&request).await.unwrap();
    assert_eq!(answer.choices[0].message.content, "The answer");
}

#[tokio::test]
async fn text_completion_uses_the_raw_prompt() {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(
        models.path(),
        r#"{"name": "echo", "transform": "identity"}"#,
    );
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    daemon.settled().await;
    // No template: the echo sees the raw prompt, so "<|user|>" must come from the prompt itself.
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/v1/completions",
        json!({"prompt": "<|user|>one two three", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "one two");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/v1/completions",
        json!({"prompt": "<|user|>one two", "stream": true}),
    )
    .await;
    assert_eq!(status, 200);
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "one two");
}

#[tokio::test]
async fn ollama_chat_puts_reasoning_in_thinking_when_think_is_true() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let body = json!({"model": "DeepSeek-R1 echo", "messages": [{"role": "user", "content": THINKER}], "think": true, "stream": false});
    let (status, answer) = raw(&daemon, Method::POST, "/api/chat", body).await;
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["message"]["thinking"], "hmm let me see");
    assert_eq!(v["message"]["content"], "The answer");
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "stop");
    assert_eq!(v["eval_count"], 5);
    assert!(v["prompt_eval_count"].as_u64().unwrap() > 0);
    assert!(v["total_duration"].as_u64().is_some());
    // Streamed (the default): NDJSON lines, the last with done.
    let body = json!({"model": "DeepSeek-R1 echo", "messages": [{"role": "user", "content": THINKER}], "think": true});
    let (_, answer) = raw(&daemon, Method::POST, "/api/chat", body).await;
    let lines: Vec<Value> = answer
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.last().unwrap()["done"], true);
    let thinking: String = lines
        .iter()
        .filter_map(|l| l["message"]["thinking"].as_str())
        .collect();
    let content: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(thinking, "hmm let me see");
    assert_eq!(content, "The answer");
    // Without think: the raw text with its tags, in content.
    let body = json!({"model": "DeepSeek-R1 echo", "messages": [{"role": "user", "content": THINKER}], "stream": false});
    let (_, answer) = raw(&daemon, Method::POST, "/api/chat", body).await;
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        v["message"]["content"],
        "<think>\nhmm let me see</think>The answer"
    );
    assert!(v["message"].get("thinking").is_none());
}

#[tokio::test]
async fn ollama_generate_tags_show_ps_version_and_errors() {
    let (daemon, m) = r1_echo();
    daemon.settled().await;
    let body = json!({"model": "DeepSeek-R1 echo", "prompt": "one two three", "think": true, "stream": false, "options": {"num_predict": 2}});
    let (status, answer) = raw(&daemon, Method::POST, "/api/generate", body).await;
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["thinking"], "one two");
    assert_eq!(v["response"], "");
    assert_eq!(v["done_reason"], "length");
    // A load-only request.
    let (_, answer) = raw(
        &daemon,
        Method::POST,
        "/api/generate",
        json!({"model": "DeepSeek-R1 echo"}),
    )
    .await;
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["done_reason"], "load");

    let (_, tags) = raw(&daemon, Method::GET, "/api/tags", Value::Null).await;
    let tags: Value = serde_json::from_str(&tags).unwrap();
    assert_eq!(tags["models"][0]["name"], "DeepSeek-R1 echo");
    let size = std::fs::metadata(m.path().join("test.echo")).unwrap().len();
    assert_eq!(tags["models"][0]["size"], size);
    assert_eq!(tags["models"][0]["details"]["quantization_level"], "echo");

    let (status, show) = raw(
        &daemon,
        Method::POST,
        "/api/show",
        json!({"model": "DeepSeek-R1 echo"}),
    )
    .await;
    assert_eq!(status, 200);
    let show: Value = serde_json::from_str(&show).unwrap();
    assert!(show["template"]
        .as_str()
        .unwrap()
        .contains("<|{{ message.role }}|>"));
    assert_eq!(show["capabilities"], json!(["completion", "thinking"]));
    assert!(show["parameters"]
        .as_str()
        .unwrap()
        .contains("temperature 0.6"));

    let (_, ps) = raw(&daemon, Method::GET, "/api/ps", Value::Null).await;
    let ps: Value = serde_json::from_str(&ps).unwrap();
    assert_eq!(ps["models"][0]["context_length"], 2048);
    let (_, version) = raw(&daemon, Method::GET, "/api/version", Value::Null).await;
    let version: Value = serde_json::from_str(&version).unwrap();
    assert!(version["version"].is_string());

    // Errors are {"error": "..."}.
    let cases = [
        (
            "/api/chat",
            json!({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}),
            404,
        ),
        (
            "/api/chat",
            json!({"model": "DeepSeek-R1 echo", "messages": [{"role": "user", "content": "hi"}], "options": {"temperature": "hot"}}),
            400,
        ),
        (
            "/api/generate",
            json!({"model": "DeepSeek-R1 echo", "prompt": 7}),
            400,
        ),
        ("/api/show", json!({"model": "llama3"}), 404),
    ];
    for (path, body, status) in cases {
        let (got, answer) = raw(&daemon, Method::POST, path, body.clone()).await;
        assert_eq!(got, status, "{path} {body} → {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn prompt_over_the_context_is_refused_before_any_byte_of_a_stream() {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), r#"{"context_length": 8}"#);
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    daemon.settled().await;
    let mut request = ask("one two three four five six seven eight nine");
    request.stream = true;
    let err = match daemon.client().chat_stream(&request).await {
        Err(e) => e,
        Ok(_) => panic!("a stream was started for a prompt over the context"),
    };
    let ClientError::Status { status, body, .. } = err else {
        panic!("expected a status")
    };
    assert_eq!(status.as_u16(), 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(v["error"]["message"].as_str().unwrap().contains("8 tokens"));
    let _ = ChatMessage::new("user", "");
}
