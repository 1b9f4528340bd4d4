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

pub(crate) async fn raw(daemon: &Daemon, method: Method, path: &str, body: Value) -> (u16, String) {
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
    // Reasoning tokens are completion tokens: 5 pieces were generated, the first four ("hmm",
    // " let", " me", " see</think>The") while the answer was still in its reasoning.
    assert_eq!(answer.usage.completion_tokens, 5);
    let details = answer.usage.completion_tokens_details.clone();
    assert_eq!(details.map(|d| d.reasoning_tokens), Some(4), "{answer:?}");
    // n choices: each choice's reasoning counts.
    let mut three = ask(THINKER);
    three.n = Some(3);
    let answers = daemon.client().chat(&three).await.unwrap();
    let details = answers.usage.completion_tokens_details.clone();
    assert_eq!(details.map(|d| d.reasoning_tokens), Some(12), "{answers:?}");
    // Raw (`reasoning_format: "none"`): not split, so not counted.
    let mut raw_request = ask(THINKER);
    raw_request.reasoning_format = Some("none".into());
    let raw_answer = daemon.client().chat(&raw_request).await.unwrap();
    assert_eq!(raw_answer.usage.completion_tokens_details, None);
    // The Responses API reports them as OpenAI does.
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/v1/responses",
        serde_json::json!({"input": THINKER}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["usage"]["output_tokens_details"]["reasoning_tokens"], 4,
        "{v}"
    );
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
    assert_eq!(said, "temperature=0.6 top_p=0.95 top_k=0 min_p=0 seed=none presence_penalty=0 frequency_penalty=0 repeat_penalty=1 penalty_last_n=64 logit_bias=");
    assert_eq!(answer.choices[0].message.content, "");
    let mut request = ask("x [[params]]");
    request.temperature = Some(0.2);
    request.top_k = Some(7);
    let said = daemon.client().chat(&request).await.unwrap().choices[0]
        .message
        .reasoning_content
        .clone()
        .unwrap();
    assert_eq!(said, "temperature=0.2 top_p=0.95 top_k=7 min_p=0 seed=none presence_penalty=0 frequency_penalty=0 repeat_penalty=1 penalty_last_n=64 logit_bias=");
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
        "temperature=0.8 top_p=0.95 top_k=40 min_p=0.05 seed=none presence_penalty=0 frequency_penalty=0 repeat_penalty=1 penalty_last_n=64 logit_bias="
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
            json!({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}),
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
            json!({"messages": [{"role": "user", "content": "hi"}], "n": 17}),
            400,
            "n",
            "more than the 16 choices",
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
    // The resident model loaded from outside the store is listed by its file stem (no spaces).
    assert_eq!(tags["models"][0]["name"], "test");
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

/// The `[[params]]` answer of a request with these extra fields (`None`: refused; the body).
async fn params_of(daemon: &Daemon, path: &str, extra: Value) -> (u16, Value) {
    let mut body = match path {
        "/api/chat" => json!({"model": "DeepSeek-R1 echo", "stream": false, "think": true,
            "messages": [{"role": "user", "content": "x [[params]]"}]}),
        _ => json!({"messages": [{"role": "user", "content": "x [[params]]"}]}),
    };
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, answer) = raw(daemon, Method::POST, path, body).await;
    (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
}

/// One `key=value` of the echo's `[[params]]` answer.
fn param<'a>(said: &'a str, key: &str) -> &'a str {
    said.split(' ')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("{key} not in {said:?}"))
}

/// Issue 17: every field an OpenAI client sends is honoured (it reaches the backend, as the
/// echo's `[[params]]` shows) or refused with a 400 naming it; nothing is dropped silently.
#[tokio::test]
async fn openai_fields_are_honoured_or_refused_by_name() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    // Honoured: (extra fields, the params the backend must see).
    let honoured: Vec<(Value, Vec<(&str, &str)>)> = vec![
        (json!({"top_p": 0}), vec![("top_p", "0")]),
        (
            json!({"presence_penalty": 1.5, "frequency_penalty": -2}),
            vec![
                ("presence_penalty", "1.5"),
                ("frequency_penalty", "-2"),
                // OpenAI's penalties count every token so far.
                ("penalty_last_n", "-1"),
            ],
        ),
        (
            json!({"logit_bias": {"0": -100}}),
            vec![("logit_bias", "0:-100")],
        ),
        (json!({"seed": 42}), vec![("seed", "42")]),
        (
            json!({"seed": 42, "temperature": 0}),
            vec![("temperature", "0")],
        ),
        // Accepted because they mean "off" or do not change the answer.
        (
            json!({"response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
                   "logprobs": false, "top_logprobs": 0, "n": 1, "parallel_tool_calls": false,
                   "user": "u1", "metadata": {"a": "b"}, "store": false, "modalities": ["text"]}),
            vec![("presence_penalty", "0"), ("logit_bias", "")],
        ),
    ];
    for (extra, want) in honoured {
        let (status, v) = params_of(&daemon, "/v1/chat/completions", extra.clone()).await;
        assert_eq!(status, 200, "{extra} → {v}");
        let said = v["choices"][0]["message"]["reasoning_content"]
            .as_str()
            .unwrap_or_else(|| panic!("{extra} → {v}"));
        for (key, value) in want {
            assert_eq!(param(said, key), value, "{extra} → {said}");
        }
    }
    // Refused: (extra fields, param, words of the message).
    let image = json!([{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]);
    let refused: Vec<(Value, &str, &str)> = vec![
        // Structured output of a shape OpenAI does not define (the echo backend's own refusal of
        // well-formed structured output is checked below).
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format",
            "not one of text, json_object, json_schema",
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
            "needs a json_schema object",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}}),
            "response_format.json_schema.schema",
            "must be a JSON Schema object",
        ),
        // Tools themselves: `tools_are_rendered_by_the_template_and_calls_parsed_or_refused`.
        (
            json!({"tool_choice": "required"}),
            "tool_choice",
            "but tools is empty",
        ),
        (
            json!({"functions": [{"name": "f"}]}),
            "functions",
            "use tools",
        ),
        // The echo backend has no log probabilities (llama.cpp's: `llama::logprobs_…`).
        (
            json!({"logprobs": true}),
            "logprobs",
            "the echo backend does not return token log probabilities",
        ),
        (
            json!({"top_logprobs": 3}),
            "top_logprobs",
            "needs logprobs: true",
        ),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
            "above 20",
        ),
        (json!({"n": 17}), "n", "more than the 16 choices"),
        (json!({"n": 0}), "n", "at least 1"),
        (
            json!({"presence_penalty": 5}),
            "presence_penalty",
            "outside -2 to 2",
        ),
        (
            json!({"frequency_penalty": -2.5}),
            "frequency_penalty",
            "outside -2 to 2",
        ),
        (
            json!({"logit_bias": {"0": 101}}),
            "logit_bias",
            "outside -100 to 100",
        ),
        (
            json!({"logit_bias": {"hello": 1}}),
            "logit_bias",
            "not a token id",
        ),
        (json!({"top_p": 1.01}), "top_p", "outside 0 to 1"),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
            "only allowed when stream is true",
        ),
        (
            json!({"temperature": -0.1}),
            "temperature",
            "outside 0 to 2",
        ),
        (
            json!({"modalities": ["text", "audio"]}),
            "modalities",
            "text-only",
        ),
        (
            json!({"audio": {"voice": "alloy", "format": "wav"}}),
            "audio",
            "text-only",
        ),
        (
            json!({"messages": image}),
            "messages[0].content",
            "\"image_url\" part",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}),
            "messages[0].content",
            "text-only",
        ),
    ];
    // `stream: null` is the default (not streamed), as OpenAI takes it, on both routes.
    let (status, v) = params_of(&daemon, "/v1/chat/completions", json!({"stream": null})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion", "{v}");
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": 4, "stream": null}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"text_completion\""), "{body}");
    for (extra, want_param, text) in refused {
        let (status, v) = params_of(&daemon, "/v1/chat/completions", extra.clone()).await;
        assert_eq!(status, 400, "{extra} → {v}");
        assert_eq!(v["error"]["param"], want_param, "{extra} → {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{extra} → {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(text), "{extra} → {message}");
    }
    // Structured output on a backend without constrained decoding (echo): a 400 from the backend
    // that names response_format, not free text.
    for format in [
        json!({"type": "json_object"}),
        json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true,
               "schema": {"type": "object"}}}),
    ] {
        let extra = json!({ "response_format": format });
        let (status, v) = params_of(&daemon, "/v1/chat/completions", extra.clone()).await;
        assert_eq!(status, 400, "{extra} → {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{extra} → {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("response_format") && message.contains("supported by the echo"),
            "{extra} → {message}"
        );
    }
    // A token the vocabulary does not have: refused by the engine before the answer starts.
    let (status, v) = params_of(
        &daemon,
        "/v1/chat/completions",
        json!({"logit_bias": {"99999999": 5}}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not in the vocabulary"),
        "{v}"
    );

    // Text parts are joined; stop as a string and as an array; max_completion_tokens wins.
    let parts = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "one two "}, {"type": "text", "text": "three four"}]}],
        "max_tokens": 1, "max_completion_tokens": 3});
    let (status, answer) = raw(&daemon, Method::POST, "/v1/chat/completions", parts).await;
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["reasoning_content"],
        "one two three"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    for stop in [json!("three"), json!(["nine", "three"])] {
        let body =
            json!({"messages": [{"role": "user", "content": "one two three four"}], "stop": stop});
        let (_, answer) = raw(&daemon, Method::POST, "/v1/chat/completions", body).await;
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["reasoning_content"], "one two ",
            "{stop}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    // The text completion route: the same sampling fields, its own refusals.
    let (status, answer) = raw(
        &daemon,
        Method::POST,
        "/v1/completions",
        json!({"prompt": "<|user|>x [[params]]", "presence_penalty": -1, "top_p": 0, "max_tokens": 200}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    let said = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(param(said, "presence_penalty"), "-1");
    assert_eq!(param(said, "top_p"), "0");
    for (extra, want_param) in [
        (json!({"logprobs": 2}), "logprobs"),
        (json!({"logprobs": 6}), "logprobs"),
        (json!({"echo": true}), "echo"),
        (json!({"best_of": 3}), "best_of"),
        (json!({"suffix": "end"}), "suffix"),
        (json!({"presence_penalty": 2.5}), "presence_penalty"),
    ] {
        let mut body = json!({"prompt": "hi"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = raw(&daemon, Method::POST, "/v1/completions", body).await;
        assert_eq!(status, 400, "{extra} → {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["error"]["param"], want_param, "{extra} → {answer}");
    }
}

/// Issue 17: with `stream_options.include_usage`, usage is in the extra chunk only, so a client
/// that sums the usage of every chunk counts it once; without it, the finishing chunk carries it
/// (as llama-server sends it).
#[tokio::test]
async fn include_usage_puts_usage_in_the_extra_chunk_only() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    for include in [true, false] {
        let mut request = ask(THINKER);
        request.stream_options = Some(StreamOptions {
            include_usage: include,
        });
        let mut stream = daemon.client().chat_stream(&request).await.unwrap();
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.next().await {
            chunks.push(chunk.unwrap());
        }
        let with_usage: Vec<_> = chunks.iter().filter(|c| c.usage.is_some()).collect();
        assert_eq!(with_usage.len(), 1, "include_usage {include}: {chunks:?}");
        assert_eq!(with_usage[0].usage.as_ref().unwrap().completion_tokens, 5);
        assert_eq!(with_usage[0].choices.is_empty(), include);
    }
}

/// Issue 17: Ollama's fields on `/api/chat` and `/api/generate`, honoured or refused in Ollama's
/// `{"error"}` shape; `think: false` leaves no reasoning; `GET /` is Ollama's liveness answer.
#[tokio::test]
async fn ollama_fields_are_honoured_or_refused_by_name() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let honoured: Vec<(Value, Vec<(&str, &str)>)> = vec![
        (
            json!({"options": {"repeat_penalty": 1.3, "repeat_last_n": 32, "presence_penalty": 0.5,
                               "frequency_penalty": 0.25, "seed": 7, "top_p": 0}}),
            vec![
                ("repeat_penalty", "1.3"),
                ("penalty_last_n", "32"),
                ("presence_penalty", "0.5"),
                ("frequency_penalty", "0.25"),
                ("seed", "7"),
                ("top_p", "0"),
            ],
        ),
        // Ollama documents no upper bound on temperature.
        (
            json!({"options": {"temperature": 3}}),
            vec![("temperature", "3")],
        ),
        // "Off" values of samplers r1d does not run, load-time options and empty lists.
        (
            json!({"options": {"mirostat": 0, "typical_p": 1, "tfs_z": 1, "num_ctx": 1024,
                               "num_gpu": -1, "use_mmap": true},
                   "format": "", "tools": [], "keep_alive": "5m"}),
            vec![("repeat_penalty", "1")],
        ),
        (json!({"think": "high"}), vec![("top_k", "0")]),
    ];
    for (extra, want) in honoured {
        let (status, v) = params_of(&daemon, "/api/chat", extra.clone()).await;
        assert_eq!(status, 200, "{extra} → {v}");
        let said = v["message"]["thinking"]
            .as_str()
            .unwrap_or_else(|| panic!("{extra} → {v}"));
        for (key, value) in want {
            assert_eq!(param(said, key), value, "{extra} → {said}");
        }
    }
    let refused: Vec<(Value, &str)> = vec![
        // The echo backend has no constrained decoding: it refuses structured output by name.
        (
            json!({"format": "json"}),
            "structured output is not supported by the echo backend",
        ),
        (
            json!({"format": {"type": "object"}}),
            "structured output is not supported by the echo backend",
        ),
        (json!({"format": "yaml"}), "format \"yaml\" is not \"json\""),
        // The echo's default template never reads tools.
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools: the chat template of this model has no tool support",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi", "images": ["AAAA"]}]}),
            "messages[0].images",
        ),
        (json!({"options": {"mirostat": 2}}), "mirostat"),
        (json!({"options": {"typical_p": 0.5}}), "typical_p"),
        (json!({"options": {"repeat_penalty": 0}}), "repeat_penalty"),
        (json!({"options": {"repeat_last_n": -2}}), "repeat_last_n"),
        (json!({"options": {"top_p": 2}}), "top_p"),
        // A misspelt option would be lost: refused by name.
        (
            json!({"options": {"num_predikt": 2}}),
            "unknown option \"num_predikt\"",
        ),
        (json!({"options": {"temprature": 0}}), "temprature"),
        (json!({"options": {"num_thread": -7}}), "num_thread: -7"),
        (json!({"options": {"num_gpu": -99}}), "num_gpu: -99"),
        (json!({"options": {"num_predict": 0}}), "num_predict: 0"),
        (json!({"options": {"num_predict": -5}}), "num_predict: -5"),
        (json!({"think": "very"}), "think"),
    ];
    for (extra, text) in refused {
        let (status, v) = params_of(&daemon, "/api/chat", extra.clone()).await;
        assert_eq!(status, 400, "{extra} → {v}");
        let error = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{extra} → {v}"));
        assert!(error.contains(text), "{extra} → {error}");
    }
    for (extra, text) in [
        (json!({"images": ["AAAA"]}), "images"),
        (json!({"suffix": "x"}), "suffix"),
        (json!({"template": "{{ .Prompt }}"}), "template"),
        (json!({"format": "json"}), "format"),
    ] {
        let mut body = json!({"model": "DeepSeek-R1 echo", "prompt": "hi", "stream": false});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = raw(&daemon, Method::POST, "/api/generate", body).await;
        assert_eq!(status, 400, "{extra} → {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(text),
            "{extra} → {answer}"
        );
    }

    // think: false: reasoning the model emits anyway (the echo's `<think>…</think>`) is dropped,
    // the answer stays.
    let body = json!({"model": "DeepSeek-R1 echo", "stream": false, "think": false,
        "messages": [{"role": "user", "content": format!("<think>{THINKER}")}]});
    let (status, answer) = raw(&daemon, Method::POST, "/api/chat", body).await;
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["message"]["content"], "The answer");
    assert!(v["message"].get("thinking").is_none(), "{answer}");

    // Ollama's liveness check.
    for method in [Method::GET, Method::HEAD] {
        let (status, body) = raw(&daemon, method.clone(), "/", Value::Null).await;
        assert_eq!(status, 200, "{method}");
        if method == Method::GET {
            assert_eq!(body, "Ollama is running");
        }
    }
}

/// Issue 17: `think` on a model that does not reason is refused, as Ollama refuses it.
#[tokio::test]
async fn ollama_think_on_a_model_that_cannot_reason_is_refused() {
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
    for think in [json!(true), json!("low")] {
        let body = json!({"model": "plain echo", "stream": false, "think": think,
            "messages": [{"role": "user", "content": "hi"}]});
        let (status, answer) = raw(&daemon, Method::POST, "/api/chat", body).await;
        assert_eq!(status, 400, "{think} → {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            v["error"], "\"plain echo\" does not support thinking",
            "{think}"
        );
    }
    // Absent or `false` (which clients send always, and Ollama accepts): answered as it is.
    for think in [None, Some(json!(false))] {
        let mut body = json!({"model": "plain echo", "stream": false,
            "messages": [{"role": "user", "content": "hi"}]});
        if let Some(t) = think {
            body["think"] = t;
        }
        let (status, answer) = raw(&daemon, Method::POST, "/api/chat", body).await;
        assert_eq!(status, 200, "{answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["message"]["content"], "hi", "{v}");
    }
}

/// A field r1d does not know — a typo such as `max_token` — is a 400 naming it on every
/// answering route, never a 200 that drops it (an answer without the limit the client meant runs
/// to the end of the context); bookkeeping fields that do not change the answer are accepted.
#[tokio::test]
async fn an_unknown_field_is_refused_by_name_and_bookkeeping_fields_are_accepted() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"messages": messages, "max_token": 3}),
        ),
        ("/v1/completions", json!({"prompt": "hi", "max_token": 3})),
        (
            "/api/chat",
            json!({"messages": messages, "stream": false, "max_token": 3}),
        ),
        (
            "/api/generate",
            json!({"prompt": "hi", "stream": false, "max_token": 3}),
        ),
    ] {
        let (code, text) = raw(&daemon, Method::POST, path, body).await;
        assert_eq!(code, 400, "{path}: {text}");
        assert!(text.contains("unknown field `max_token`"), "{path}: {text}");
    }
    let (code, text) = raw(
        &daemon,
        Method::POST,
        "/v1/chat/completions",
        json!({"messages": messages, "user": "u-1", "metadata": {"k": "v"}, "store": false}),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let (code, text) = raw(
        &daemon,
        Method::POST,
        "/api/chat",
        json!({"messages": messages, "stream": false, "keep_alive": "5m"}),
    )
    .await;
    assert_eq!(code, 200, "{text}");
}

/// Issue 17, tools: rendered through the model's own template, tool calls parsed from the answer
/// into `tool_calls`, streamed and not (a scripted echo model answers with a `<tool_call>` block),
/// results sent back as `role: "tool"`; a template without tool support refused.
#[tokio::test]
async fn tools_are_rendered_by_the_template_and_calls_parsed_or_refused() {
    let models = tempfile::tempdir().unwrap();
    let file = serde_json::json!({"name": "tool echo", "transform": "identity",
        "chat_template": r1d_tests::TOOL_TEMPLATE});
    let model = echo_model(models.path(), &file.to_string());
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    daemon.settled().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let call = r#"Let me look.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>"#;
    let body = |extra: Value| {
        let mut b = json!({"model": "tool echo", "tools": tools,
            "messages": [{"role": "user", "content": call}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for choice in [
        json!({}),
        json!({"tool_choice": "auto", "parallel_tool_calls": true}),
    ] {
        let (status, answer) =
            raw(&daemon, Method::POST, "/v1/chat/completions", body(choice)).await;
        assert_eq!(status, 200, "{answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
        assert_eq!(choice["message"]["content"], "Let me look.", "{v}");
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1, "{v}");
        assert_eq!(calls[0]["type"], "function");
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call-"), "{v}");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
    }
    // tool_choice "none": no tools reach the model and its text stays text.
    let (status, answer) = raw(
        &daemon,
        Method::POST,
        "/v1/chat/completions",
        body(json!({"tool_choice": "none"})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], call, "{v}");
    assert!(
        v["choices"][0]["message"].get("tool_calls").is_none(),
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // The round trip: the assistant's call and the tool's result are rendered; the next answer
    // (the echo of the user turn, which now asks nothing of tools) is plain text.
    let (status, answer) = raw(
        &daemon,
        Method::POST,
        "/v1/chat/completions",
        json!({"model": "tool echo", "tools": tools, "messages": [
            {"role": "user", "content": "weather in Paris"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call-1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call-1", "content": "sunny"}]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"], "weather in Paris",
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Streamed: the text outside the call as content, the call as a `delta.tool_calls` chunk with
    // its index, id, name and arguments, then finish_reason "tool_calls".
    let (status, answer) = raw(
        &daemon,
        Method::POST,
        "/v1/chat/completions",
        body(json!({"stream": true})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let chunks: Vec<Value> = answer
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
    let content: String = deltas
        .iter()
        .filter_map(|d| d["content"].as_str())
        .collect();
    assert_eq!(content, "Let me look.", "{answer}");
    let calls: Vec<&Value> = deltas
        .iter()
        .filter_map(|d| d["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{answer}");
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls",
        "{answer}"
    );
    assert!(answer.trim_end().ends_with("data: [DONE]"), "{answer}");

    // Ollama's /api/chat: the same call as message.tool_calls with an arguments object, streamed
    // (a line with the calls before the done line) and not; /api/show lists the capability.
    let ollama = |stream: bool| {
        json!({"model": "tool echo", "stream": stream, "tools": tools,
            "messages": [{"role": "user", "content": call}]})
    };
    let (status, answer) = raw(&daemon, Method::POST, "/api/chat", ollama(false)).await;
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["message"]["content"], "Let me look.", "{v}");
    assert_eq!(
        v["message"]["tool_calls"],
        json!([{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]),
        "{v}"
    );
    assert_eq!(v["done"], true);
    let (status, answer) = raw(&daemon, Method::POST, "/api/chat", ollama(true)).await;
    assert_eq!(status, 200, "{answer}");
    let lines: Vec<Value> = answer
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let with_calls: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"]["tool_calls"].is_array())
        .collect();
    assert_eq!(with_calls.len(), 1, "{answer}");
    assert_eq!(
        with_calls[0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(lines.last().unwrap()["done"], true, "{answer}");
    let (status, answer) = raw(
        &daemon,
        Method::POST,
        "/api/show",
        json!({"model": "tool echo"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["capabilities"], json!(["completion", "tools"]), "{v}");

    // Forced calls: refused by name where they cannot work — this template does not write
    // <tool_call> blocks, a named function must be among tools — and on a template that does,
    // the constraint reaches the backend, which refuses it (echo has no constrained decoding;
    // the llama.cpp plugin's test `json_schema_between_wrap_texts_forces_a_tool_call` runs it).
    for (choice, text) in [
        (json!("required"), "whose calls are <tool_call> blocks"),
        (
            json!({"type": "function", "function": {"name": "get_weather"}}),
            "whose calls are <tool_call> blocks",
        ),
        (
            json!({"type": "function"}),
            "is not \"none\", \"auto\", \"required\"",
        ),
    ] {
        let (status, answer) = raw(
            &daemon,
            Method::POST,
            "/v1/chat/completions",
            body(json!({ "tool_choice": choice })),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["error"]["param"], "tool_choice", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(text),
            "{v}"
        );
    }
    let hermes = tempfile::tempdir().unwrap();
    let file = serde_json::json!({"name": "hermes echo", "transform": "identity",
        "chat_template": format!("{{# calls are <tool_call> blocks #}}{}", r1d_tests::TOOL_TEMPLATE)});
    let model = echo_model(hermes.path(), &file.to_string());
    let hermes_daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    hermes_daemon.settled().await;
    let (status, answer) = raw(
        &hermes_daemon,
        Method::POST,
        "/v1/chat/completions",
        body(json!({"model": "hermes echo", "tool_choice": {"type": "function", "function": {"name": "nope"}}})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["error"]["param"], "tool_choice", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"nope\", which is not among tools"),
        "{v}"
    );
    let (status, answer) = raw(
        &hermes_daemon,
        Method::POST,
        "/v1/chat/completions",
        body(json!({"model": "hermes echo", "tool_choice": "required"})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("forced tool_choice"), "{answer}");

    // The default echo template never renders tools: refused naming tools, not dropped, and
    // /api/show does not claim them.
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let (status, answer) = raw(
        &daemon,
        Method::POST,
        "/v1/chat/completions",
        json!({"model": "DeepSeek-R1 echo", "tools": tools,
            "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("tools") && message.contains("no tool support"),
        "{message}"
    );
    let (_, answer) = raw(
        &daemon,
        Method::POST,
        "/api/show",
        json!({"model": "DeepSeek-R1 echo"}),
    )
    .await;
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["capabilities"], json!(["completion", "thinking"]), "{v}");
}

#[tokio::test]
async fn n_choices_are_generated_side_by_side_and_counted_once_for_the_prompt() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let one = daemon.client().chat(&ask(THINKER)).await.unwrap();
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": THINKER}], "n": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let three: r1d_client::wire::ChatCompletion = serde_json::from_str(&body).unwrap();
    assert_eq!(three.choices.len(), 3, "{body}");
    for (i, choice) in three.choices.iter().enumerate() {
        assert_eq!(choice.index as usize, i);
        assert_eq!(choice.message.content, "The answer");
        assert_eq!(
            choice.message.reasoning_content.as_deref(),
            Some("hmm let me see")
        );
    }
    assert_eq!(three.usage.prompt_tokens, one.usage.prompt_tokens);
    assert_eq!(
        three.usage.completion_tokens,
        3 * one.usage.completion_tokens
    );
    assert_eq!(
        three.usage.total_tokens,
        three.usage.prompt_tokens + three.usage.completion_tokens
    );
    // Streamed: the choices' chunks interleave, each naming its index; each choice's text
    // arrives whole with one finishing chunk; one usage chunk (the prompt counted once) and one
    // [DONE].
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": THINKER}], "n": 3, "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events = sse_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (usage, rest) = chunks.split_last().unwrap();
    assert!(usage["choices"].as_array().unwrap().is_empty(), "{body}");
    assert_eq!(usage["usage"]["prompt_tokens"], one.usage.prompt_tokens);
    assert_eq!(
        usage["usage"]["completion_tokens"],
        3 * one.usage.completion_tokens
    );
    let mut content = vec![String::new(); 3];
    let mut reasoning = vec![String::new(); 3];
    let mut finished = [0; 3];
    for c in rest {
        assert!(
            c.get("usage").is_none(),
            "usage only in the last chunk: {c}"
        );
        let choice = &c["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        content[i].push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        reasoning[i].push_str(choice["delta"]["reasoning_content"].as_str().unwrap_or(""));
        if choice["finish_reason"] == "stop" {
            finished[i] += 1;
        }
    }
    assert_eq!(content, ["The answer"; 3], "{body}");
    assert_eq!(reasoning, ["hmm let me see"; 3], "{body}");
    assert_eq!(finished, [1; 3], "{body}");
    // More than 16 choices is refused naming n.
    let (status, answer) = raw(
        &daemon,
        Method::POST,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "n": 17, "stream": true}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["error"]["param"], "n", "{answer}");
}

/// Issue 17: a count (tokens, choices, a seed, top-k) takes every JSON spelling of a whole number
/// (`2.0`, `4.2e1`), on every route, as JSON has one number type; a fraction is refused naming
/// the field.
#[tokio::test]
async fn counts_take_every_json_spelling_of_a_whole_number_and_fractions_are_refused() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let chat = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": THINKER}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    // max_tokens / max_completion_tokens as floats: the answer stops there.
    for extra in [
        json!({"max_tokens": 2.0}),
        json!({"max_completion_tokens": 2e0}),
    ] {
        let (status, body) = raw(
            &daemon,
            Method::POST,
            "/v1/chat/completions",
            chat(extra.clone()),
        )
        .await;
        assert_eq!(status, 200, "{extra}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 2, "{extra}: {body}");
        assert_eq!(
            v["choices"][0]["finish_reason"], "length",
            "{extra}: {body}"
        );
    }
    // n as a float: that many choices.
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/v1/chat/completions",
        chat(json!({"n": 2.0})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2, "{body}");
    // seed and top_k as floats reach the backend as the whole numbers.
    let (status, v) = params_of(
        &daemon,
        "/v1/chat/completions",
        json!({"seed": 4.2e1, "top_k": 7.0}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let said = v["choices"][0]["message"]["reasoning_content"]
        .as_str()
        .unwrap();
    assert_eq!(param(said, "seed"), "42", "{said}");
    assert_eq!(param(said, "top_k"), "7", "{said}");
    // Text completions.
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/v1/completions",
        json!({"prompt": "one two three four", "max_tokens": 3.0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3, "{body}");
    // Ollama options, load-time counts included.
    let (status, v) = params_of(
        &daemon,
        "/api/chat",
        json!({"options": {"seed": 7.0, "top_k": 5e0, "repeat_last_n": 3.2e1, "num_ctx": 1024.0,
                           "num_thread": 4e0}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let said = v["message"]["thinking"].as_str().unwrap();
    assert_eq!(param(said, "seed"), "7", "{said}");
    assert_eq!(param(said, "top_k"), "5", "{said}");
    assert_eq!(param(said, "penalty_last_n"), "32", "{said}");
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/api/generate",
        json!({"model": "DeepSeek-R1 echo", "prompt": "one two three four", "raw": true,
               "stream": false, "options": {"num_predict": 2.0}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["eval_count"], 2, "{body}");
    assert_eq!(v["done_reason"], "length", "{body}");

    // A fraction, a negative count or a string is refused naming the field.
    for (path, body, param, text) in [
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 1.5})),
            "max_tokens",
            "1.5 is not a whole number from 0 to 4294967295",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"n": 2.5})),
            "n",
            "2.5 is not a whole number",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_completion_tokens": -1})),
            "max_completion_tokens",
            "-1 is out of range",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "seed": "42"}),
            "seed",
            "expected a whole number",
        ),
    ] {
        let (status, answer) = raw(&daemon, Method::POST, path, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["error"]["param"], param, "{answer}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(text),
            "{answer}"
        );
    }
    for (options, key) in [
        (json!({"num_predict": 1.5}), "num_predict"),
        (json!({"seed": 0.5}), "seed"),
        (json!({"num_ctx": 1024.5}), "num_ctx"),
    ] {
        let (status, v) = params_of(&daemon, "/api/chat", json!({ "options": options })).await;
        assert_eq!(status, 400, "{options}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("invalid option {key}"))
                && error.contains("not a whole number"),
            "{options}: {error}"
        );
    }
    // The native load request's counts are read the same way.
    let (status, answer) = raw(
        &daemon,
        Method::POST,
        "/r1/load",
        json!({"path": "/nonexistent.gguf", "context_length": 512.5}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("context_length"), "{answer}");
    // The daemon still serves.
    let answer = daemon.client().chat(&ask(THINKER)).await.unwrap();
    assert_eq!(answer.choices[0].message.content, "The answer");
}

/// Issue 17: `/api/generate` returns `context` (the token ids of the prompt and the answer) in
/// its final object, streamed or not, raw or templated, and a request that sends it back goes on
/// from there: the ids come before the new prompt, which gets no second BOS.
#[tokio::test]
async fn ollama_generate_returns_context_and_continues_from_it() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let daemon = &daemon;
    let generate = |extra: Value| {
        let mut body = json!({"model": "DeepSeek-R1 echo", "stream": false});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        async move {
            let (status, answer) = raw(daemon, Method::POST, "/api/generate", body).await;
            assert_eq!(status, 200, "{answer}");
            serde_json::from_str::<Value>(&answer).unwrap()
        }
    };
    let ids = |v: &Value| -> Vec<i64> {
        v["context"]
            .as_array()
            .unwrap_or_else(|| panic!("no context in {v}"))
            .iter()
            .map(|id| id.as_i64().unwrap())
            .collect()
    };
    // Templated: the context holds the prompt's tokens, then the answer's.
    let first = generate(json!({"prompt": "alpha beta"})).await;
    // R1 without `think`: the reasoning inline, its tag opened by the prompt.
    assert_eq!(first["response"], "<think>\nalpha beta", "{first}");
    let context = ids(&first);
    let (prompt_n, eval_n) = (
        first["prompt_eval_count"].as_u64().unwrap() as usize,
        first["eval_count"].as_u64().unwrap() as usize,
    );
    assert_eq!(eval_n, 2, "{first}");
    assert_eq!(context.len(), prompt_n + eval_n, "{first}");
    // The same prompt alone, to count its tokens (BOS included).
    let alone = generate(json!({"prompt": "gamma"})).await;
    let alone_n = alone["prompt_eval_count"].as_u64().unwrap() as usize;
    assert_eq!(ids(&alone).len(), alone_n + 1, "{alone}");
    // Sent back: the prompt is the context, then the new turn without a second BOS.
    let next = generate(json!({"prompt": "gamma", "context": context})).await;
    assert_eq!(next["response"], "<think>\ngamma", "{next}");
    assert_eq!(
        next["prompt_eval_count"].as_u64().unwrap() as usize,
        context.len() + alone_n - 1,
        "{next}"
    );
    let next_context = ids(&next);
    assert_eq!(&next_context[..context.len()], &context[..], "{next}");

    // Raw: the echo answers the first line of its whole prompt, so the answer shows the context
    // is there, in order, before the new text.
    let first = generate(json!({"prompt": "one two", "raw": true})).await;
    // The echo answers the first line of its prompt: the tokenizer's BOS, then the text.
    assert_eq!(first["response"], "<|bos|>one two", "{first}");
    let next = generate(json!({"prompt": " three", "raw": true, "context": ids(&first)})).await;
    let text = next["response"].as_str().unwrap();
    assert_eq!(text, "<|bos|>one two<|bos|>one two three", "{next}");

    // Streamed: only the final line carries it.
    let (status, body) = raw(
        daemon,
        Method::POST,
        "/api/generate",
        json!({"model": "DeepSeek-R1 echo", "prompt": "alpha beta"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (last, rest) = lines.split_last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(ids(last), context, "{body}");
    assert!(rest.iter().all(|l| l.get("context").is_none()), "{body}");

    // Ids that are not token ids, or not in the vocabulary, are refused naming the field; the
    // daemon serves on.
    for (context, text) in [
        (json!([1, -1]), "context[1]"),
        (json!([1, 5000000000i64]), "context[1]"),
        (
            json!([1_048_576]),
            "context[0]: 1048576 is not a token id in the vocabulary",
        ),
    ] {
        let (status, answer) = raw(
            daemon,
            Method::POST,
            "/api/generate",
            json!({"model": "DeepSeek-R1 echo", "prompt": "hi", "stream": false,
                   "context": context}),
        )
        .await;
        assert_eq!(status, 400, "{context}: {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert!(v["error"].as_str().unwrap().contains(text), "{answer}");
    }
    let again = generate(json!({"prompt": "alpha beta"})).await;
    assert_eq!(again["response"], "<think>\nalpha beta");
}

/// The SSE `data:` payloads of a streamed answer, `[DONE]` last when it ended well.
fn sse_events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Issue 17: `/v1/completions` takes every prompt shape OpenAI's reference gives — several
/// prompts (one choice each, `index` in order, streamed too), token ids, several token arrays —
/// and `n` choices per prompt; an empty prompt list or an id outside the vocabulary is refused
/// naming the field.
#[tokio::test]
async fn text_completion_takes_several_prompts_and_token_ids() {
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
    let complete = |body: Value| async {
        let (status, answer) = raw(&daemon, Method::POST, "/v1/completions", body).await;
        assert_eq!(status, 200, "{answer}");
        serde_json::from_str::<Value>(&answer).unwrap()
    };
    // Several prompts: one choice per prompt, in order; usage adds up.
    let one = complete(json!({"prompt": "<|user|>alpha beta"})).await;
    let v = complete(
        json!({"prompt": ["<|user|>alpha beta", "<|user|>gamma", "<|user|>delta epsilon zeta"]}),
    )
    .await;
    let texts: Vec<(u64, &str)> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["index"].as_u64().unwrap(), c["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        texts,
        vec![(0, "alpha beta"), (1, "gamma"), (2, "delta epsilon zeta")],
        "{v}"
    );
    assert_eq!(v["usage"]["completion_tokens"], 2 + 1 + 3, "{v}");
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap()
            > one["usage"]["prompt_tokens"].as_u64().unwrap(),
        "{v}"
    );
    // Several prompts × n: index = prompt × n + choice.
    let v = complete(json!({"prompt": ["<|user|>a", "<|user|>b"], "n": 2})).await;
    let texts: Vec<&str> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["a", "a", "b", "b"], "{v}");

    // Streamed: every chunk names its choice; each choice's text arrives whole; one usage chunk
    // (include_usage) and one [DONE].
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/v1/completions",
        json!({"prompt": ["<|user|>alpha beta", "<|user|>gamma delta"], "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events = sse_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (usage, pieces) = chunks.split_last().unwrap();
    assert!(usage["choices"].as_array().unwrap().is_empty(), "{body}");
    assert_eq!(usage["usage"]["completion_tokens"], 4, "{body}");
    let mut text = [String::new(), String::new()];
    let mut finished = [0, 0];
    for c in pieces {
        assert!(
            c.get("usage").is_none(),
            "usage only in the last chunk: {c}"
        );
        let choice = &c["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        text[i].push_str(choice["text"].as_str().unwrap());
        if choice["finish_reason"] == "stop" {
            finished[i] += 1;
        }
    }
    assert_eq!(text, ["alpha beta", "gamma delta"], "{body}");
    assert_eq!(finished, [1, 1], "{body}");

    // Token ids: the ids of a prompt (Ollama's context of a raw generate gives them) answer as
    // the text does; several arrays too.
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/api/generate",
        json!({"model": "echo", "prompt": "<|user|>one two", "raw": true, "stream": false,
               "options": {"num_predict": 1}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let g: Value = serde_json::from_str(&body).unwrap();
    let n_prompt = g["prompt_eval_count"].as_u64().unwrap() as usize;
    let ids: Vec<i64> = g["context"].as_array().unwrap()[..n_prompt]
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let v = complete(json!({"prompt": ids})).await;
    assert_eq!(v["choices"][0]["text"], "one two", "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], n_prompt, "{v}");
    let v = complete(json!({"prompt": [ids, ids]})).await;
    assert_eq!(v["choices"][1]["text"], "one two", "{v}");
    assert_eq!(v["choices"][1]["index"], 1, "{v}");

    // Refused naming the field.
    for (prompt, param, text) in [
        (json!([]), "prompt", "empty list"),
        (json!([[1], []]), "prompt[1]", "empty list of token ids"),
        (json!([1, -4]), "prompt[1]", "-4 is not a token id"),
        (
            json!([[1], [1_048_576]]),
            "prompt[1][0]",
            "1048576 is not a token id in the vocabulary",
        ),
        (json!([1, "a"]), "prompt", "a string, an array of strings"),
        (
            Value::from(vec!["x"; 17]),
            "prompt",
            "17 prompts are more than the 16",
        ),
    ] {
        let (status, answer) = raw(
            &daemon,
            Method::POST,
            "/v1/completions",
            json!({ "prompt": prompt }),
        )
        .await;
        assert_eq!(status, 400, "{prompt}: {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["error"]["param"], param, "{prompt}: {answer}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(text),
            "{prompt}: {answer}"
        );
    }
}

/// Issue 17: `POST /v1/responses` streams SSE events named by their `type` (what OpenAI's
/// clients dispatch on), with no `[DONE]`, and refuses what it cannot honour by name (the
/// official client's view: `clients::openai_python_client_responses_api_works_unchanged`).
#[tokio::test]
async fn responses_stream_named_events_and_refuse_by_name() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let (status, body) = raw(
        &daemon,
        Method::POST,
        "/v1/responses",
        json!({"input": THINKER, "stream": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    let data = sse_events(&body);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{body}");
    assert_eq!(names.len(), data.len(), "{body}");
    for (name, d) in names.iter().zip(&data) {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["type"], *name, "{d}");
    }
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_text.delta",
            "response.reasoning_text.delta",
            "response.reasoning_text.delta",
            "response.reasoning_text.delta",
            "response.reasoning_text.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ],
        "{body}"
    );
    for (extra, param) in [
        (json!({"input": 3}), "input"),
        (json!({"input": []}), "input"),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            "input[0].content[0]",
        ),
        (
            json!({"input": [{"role": "robot", "content": "x"}]}),
            "input[0].role",
        ),
        (json!({"conversation": "conv_1"}), "conversation"),
        (json!({"background": true}), "background"),
        (
            json!({"include": ["reasoning.encrypted_content"]}),
            "include",
        ),
        (json!({"truncation": "auto"}), "truncation"),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"max_output_tokens": 1.5}), "max_output_tokens"),
        (json!({"temperature": 3}), "temperature"),
        (json!({"max_tokens": 3}), "max_tokens"),
    ] {
        let mut body = json!({"input": "hi"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = raw(&daemon, Method::POST, "/v1/responses", body).await;
        assert_eq!(status, 400, "{extra}: {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["error"]["param"], param, "{extra}: {answer}");
    }
    // Accepted because they mean "off" or do not change the answer.
    let (status, answer) = raw(
        &daemon,
        Method::POST,
        "/v1/responses",
        json!({"input": THINKER, "store": false, "metadata": {"a": "b"}, "tools": [],
               "tool_choice": "auto", "text": {"format": {"type": "text"}}, "reasoning": {},
               "truncation": "disabled", "parallel_tool_calls": true, "user": "u"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        v["output"][1]["content"][0]["text"], "The answer",
        "{answer}"
    );
}

/// Issue 17: Ollama's `num_ctx` is the request's context length: at most the loaded one (the
/// shared model's context is set at load time, so more is refused naming it), and below it the
/// prompt and the answer together stay within it.
#[tokio::test]
async fn ollama_num_ctx_limits_the_request_and_more_than_the_loaded_context_is_refused() {
    let (daemon, _m) = r1_echo();
    daemon.settled().await;
    let loaded = daemon.client().status().await.unwrap();
    let context = loaded.model.as_ref().unwrap().context_length;
    let generate = |options: Value| {
        let daemon = &daemon;
        async move {
            let (status, body) = raw(
                daemon,
                Method::POST,
                "/api/generate",
                json!({"prompt": "a b c d e f g h", "raw": true, "stream": false,
                       "options": options}),
            )
            .await;
            (status, serde_json::from_str::<Value>(&body).unwrap())
        }
    };
    let (status, v) = generate(json!({"num_ctx": context + 1})).await;
    assert_eq!(status, 400, "{v}");
    // Ollama's error shape is a message: it names the option, the loaded context and the key.
    let message = v["error"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("num_ctx: {}", context + 1))
            && message.contains(&format!("({context} tokens)"))
            && message.contains("context_length"),
        "{message}"
    );
    // Below it: the prompt (BOS and 8 words) and the answer together fill 12 tokens at most.
    let (status, v) = generate(json!({"num_ctx": 12, "num_predict": -1})).await;
    assert_eq!(status, 200, "{v}");
    let prompt = v["prompt_eval_count"].as_u64().unwrap();
    assert_eq!(prompt + v["eval_count"].as_u64().unwrap(), 12, "{v}");
    assert_eq!(v["done_reason"], "length", "{v}");
    // A prompt that leaves no room for an answer in it is refused, naming num_ctx.
    let (status, v) = generate(json!({"num_ctx": prompt})).await;
    assert_eq!(status, 400, "{v}");
    let message = v["error"].as_str().unwrap();
    let want =
        format!("num_ctx: the prompt is {prompt} tokens, and num_ctx = {prompt} leaves no room");
    assert!(message.starts_with(&want), "{message}");
    let (status, v) = generate(json!({"num_ctx": 0})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("num_ctx"), "{v}");
}
