//! The llama.cpp plugin with a real model (SmolLM2-135M-Instruct Q4_1) and the real truncated
//! DeepSeek-R1 download, through the real socket.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use r1d_client::wire::{ChatMessage, State};
use r1d_tests::{fixture, Daemon, DaemonOptions, R1_TRUNCATED, SMOLLM2};

use crate::ask;

/// One real model at a time: two daemons generating at once on two cores make each other's
/// timings (the one-second disconnect bound) meaningless.
pub(crate) static ONE_MODEL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn smollm_daemon() -> Option<Daemon> {
    let model = fixture(SMOLLM2)?;
    Some(Daemon::start(DaemonOptions {
        model: Some(&model),
        args: vec!["--context-length".into(), "2048".into()],
        ..Default::default()
    }))
}

/// [`smollm_daemon`], checked to serve SmolLM2 (`Ready`; the log on failure).
pub(crate) async fn ready_smollm_daemon() -> Option<Daemon> {
    let daemon = smollm_daemon()?;
    assert_eq!(
        daemon.settled().await.status,
        State::Ready,
        "{}",
        daemon.log()
    );
    Some(daemon)
}

/// "What is the capital of France?" at temperature 0, at most `max_tokens` tokens, with a plain
/// system prompt: SmolLM2's template adds its own system prompt when none is given, with which
/// this 135M model answers in French nonsense; with a plain one it answers correctly.
pub(crate) fn capital_of_france(max_tokens: u32) -> r1d_client::wire::ChatCompletionRequest {
    let mut request = ask("What is the capital of France?");
    request.messages.insert(
        0,
        ChatMessage::new("system", "You are a helpful assistant."),
    );
    request.temperature = Some(0.0);
    request.max_tokens = Some(max_tokens);
    request
}

#[tokio::test]
async fn greedy_answer_is_correct_and_streamed_equals_non_streamed() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = ready_smollm_daemon().await else {
        return;
    };
    let client = daemon.client();
    let request = capital_of_france(48);
    let answer = client.chat(&request).await.unwrap();
    let text = answer.choices[0].message.content.clone();
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(answer.choices[0].finish_reason, "stop");
    // The name r1d lists the model by (loaded from outside the store: the file stem), which
    // every route accepts; not the GGUF's free-text general.name.
    assert_eq!(answer.model, "SmolLM2-135M-Instruct.Q4_1", "{answer:?}");
    let models = client
        .get_json::<r1d_client::wire::ModelList>("/v1/models", false)
        .await
        .unwrap();
    assert_eq!(models.data[0].id, answer.model);
    assert!(answer.usage.prompt_tokens > 10);
    assert_eq!(
        answer.usage.total_tokens,
        answer.usage.prompt_tokens + answer.usage.completion_tokens
    );
    let timings = answer.timings.clone().unwrap();
    assert_eq!(timings.predicted_n, answer.usage.completion_tokens);
    assert!(timings.predicted_per_second > 0.0 && timings.prompt_per_second > 0.0);

    let mut stream = client.chat_stream(&request).await.unwrap();
    let mut pieces = Vec::new();
    let mut usage = None;
    let mut finish = None;
    let mut first_role = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if first_role.is_none() {
            first_role = chunk.choices[0].delta.role.clone();
        }
        for c in &chunk.choices {
            if let Some(t) = c.delta.content.as_deref().filter(|t| !t.is_empty()) {
                pieces.push(t.to_owned());
            }
            finish = finish.or(c.finish_reason.clone());
        }
        usage = usage.or(chunk.usage.clone());
    }
    assert_eq!(first_role.as_deref(), Some("assistant"));
    assert_eq!(
        pieces.concat(),
        text,
        "streamed and non-streamed greedy answers differ"
    );
    let usage = usage.expect("the finishing chunk carries usage");
    assert_eq!(
        usage.completion_tokens as usize,
        pieces.len(),
        "one streamed piece per token"
    );
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (
            answer.usage.prompt_tokens,
            answer.usage.completion_tokens,
            answer.usage.total_tokens
        )
    );
    // The streamed request came second: all of its prompt but the last token was cached.
    assert_eq!(
        usage.prompt_tokens_details.map(|d| d.cached_tokens),
        Some(usage.prompt_tokens - 1)
    );
    assert_eq!(finish, Some(answer.choices[0].finish_reason.clone()));
}

#[tokio::test]
async fn max_tokens_ends_with_finish_reason_length() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = smollm_daemon() else {
        return;
    };
    daemon.settled().await;
    let mut request = ask("Write a long poem about the sea.");
    request.max_tokens = Some(5);
    request.temperature = Some(0.0);
    let answer = daemon.client().chat(&request).await.unwrap();
    assert_eq!(answer.choices[0].finish_reason, "length");
    assert_eq!(answer.usage.completion_tokens, 5);
}

#[tokio::test]
async fn disconnect_mid_stream_ends_generation_within_a_second() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = smollm_daemon() else {
        return;
    };
    daemon.settled().await;
    let client = daemon.client();
    let mut request = ask("Write a very long story about a dragon, with many chapters.");
    request.max_tokens = Some(1500);
    let mut stream = client.chat_stream(&request).await.unwrap();
    for _ in 0..4 {
        stream.next().await.unwrap().unwrap();
    }
    assert_eq!(client.status().await.unwrap().active_requests, 1);
    drop(stream);
    let start = Instant::now();
    while client.status().await.unwrap().active_requests != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "generation still running 1 s after the client went away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.status().await.unwrap().requests_served, 1);
}

#[tokio::test]
async fn seeded_sampling_is_reproducible() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = smollm_daemon() else {
        return;
    };
    daemon.settled().await;
    let mut request = ask("Tell me a fun fact about cats.");
    request.temperature = Some(1.0);
    request.seed = Some(1234);
    request.max_tokens = Some(24);
    let a = daemon.client().chat(&request).await.unwrap();
    let b = daemon.client().chat(&request).await.unwrap();
    assert_eq!(a.choices[0].message.content, b.choices[0].message.content);
}

#[tokio::test]
async fn truncated_r1_download_is_named_as_incomplete_and_the_daemon_stays_up() {
    let Some(model) = fixture(R1_TRUNCATED) else {
        return;
    };
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    let health = daemon.settled().await;
    assert_eq!(health.status, State::NoModel);
    let error = health.error.expect("health says why");
    assert!(error.contains(model.to_str().unwrap()), "{error}");
    assert!(error.contains("incomplete"), "{error}");
    // llama.cpp's own reason reached us instead of a bare failure.
    assert!(error.contains("not within the file bounds"), "{error}");
    let status = daemon.client().status().await.unwrap();
    assert_eq!(status.state, State::NoModel);
    assert_eq!(status.error.as_deref(), Some(error.as_str()));
    let output = std::process::Command::new(r1d_tests::binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(text.contains("no model loaded"), "{text}");
    assert!(text.contains("incomplete"), "{text}");
}

/// Issue 17: what llama.cpp's sampler chain does is honoured, not dropped: a logit bias of +100
/// makes greedy decoding pick that token every time; -100 on the greedy answer's first token
/// changes the answer; a presence penalty changes a repetitive greedy answer; a seeded draw
/// with penalties repeats.
#[tokio::test]
async fn logit_bias_and_penalties_change_the_greedy_answer_and_seeds_repeat() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = ready_smollm_daemon().await else {
        return;
    };
    let greedy = |prompt: &str, extra: serde_json::Value| {
        let mut body = serde_json::json!({
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": prompt}
            ],
            "temperature": 0, "max_tokens": 12
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let request: r1d_client::wire::ChatCompletionRequest =
            serde_json::from_value(body).unwrap();
        let client = daemon.client();
        async move { client.chat(&request).await.unwrap() }
    };
    let plain = greedy("What is the capital of France?", serde_json::json!({})).await;
    let plain_text = plain.choices[0].message.content.clone();
    assert!(
        plain_text.starts_with("The capital of France"),
        "{plain_text}"
    );

    // +100 on one token: greedy picks it at every position.
    let forced = greedy(
        "What is the capital of France?",
        serde_json::json!({"logit_bias": {"1000": 100}, "max_tokens": 4}),
    )
    .await;
    let forced_text = &forced.choices[0].message.content;
    assert_eq!(forced.usage.completion_tokens, 4);
    let piece = &forced_text[..forced_text.len() / 4];
    assert!(!piece.is_empty());
    assert_eq!(*forced_text, piece.repeat(4), "{forced_text:?}");

    // -100 on the token greedy starts with: the answer starts otherwise. "The" is id 504 in
    // SmolLM2's vocabulary (its tokenizer.json, `model.vocab["The"]`, the GGUF's too).
    let no_the = greedy(
        "What is the capital of France?",
        serde_json::json!({"logit_bias": {"504": -100}}),
    )
    .await;
    let no_the_text = &no_the.choices[0].message.content;
    assert!(!no_the_text.starts_with("The"), "{no_the_text}");
    assert_ne!(*no_the_text, plain_text);

    // A repetitive greedy continuation changes under OpenAI's presence and frequency
    // penalties (they count every generated token) and under Ollama's repeat_penalty.
    let raw_completion = |route: &'static str, extra: serde_json::Value| {
        let mut body = match route {
            "/v1/completions" => serde_json::json!({"prompt": "hello hello hello hello hello",
                "temperature": 0, "max_tokens": 12}),
            _ => serde_json::json!({"model": "", "prompt": "hello hello hello hello hello",
                "raw": true, "stream": false,
                "options": {"temperature": 0, "num_predict": 12}}),
        };
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let client = daemon.client();
        async move {
            let v: serde_json::Value = client.post_json(route, &body).await.unwrap();
            v["choices"][0]["text"]
                .as_str()
                .or(v["response"].as_str())
                .unwrap()
                .to_owned()
        }
    };
    let repeated = raw_completion("/v1/completions", serde_json::json!({})).await;
    // SmolLM2 continues with a list ("\n\n#11\n\n#12\n\n"): tokens repeat, which is what the
    // penalties act on.
    let repeats = |t: &str| {
        let chars: Vec<char> = t.chars().collect();
        let windows: Vec<String> = chars.windows(2).map(|w| w.iter().collect()).collect();
        windows
            .iter()
            .enumerate()
            .any(|(i, w)| windows[i + 2..].contains(w))
    };
    assert!(
        repeats(&repeated),
        "the unpenalized continuation repeats: {repeated:?}"
    );
    let penalized = raw_completion(
        "/v1/completions",
        serde_json::json!({"presence_penalty": 2.0, "frequency_penalty": 2.0}),
    )
    .await;
    assert_ne!(penalized, repeated);
    let ollama_plain = raw_completion("/api/generate", serde_json::json!({})).await;
    assert_eq!(
        ollama_plain, repeated,
        "the same greedy continuation on both routes"
    );
    let ollama_penalized = raw_completion(
        "/api/generate",
        serde_json::json!({"options": {"temperature": 0, "num_predict": 12,
            "repeat_penalty": 3.0, "repeat_last_n": 64}}),
    )
    .await;
    assert_ne!(ollama_penalized, repeated);
    // repeat_last_n 0 turns the penalties off: the greedy continuation is back.
    let off = raw_completion(
        "/api/generate",
        serde_json::json!({"options": {"temperature": 0, "num_predict": 12,
            "repeat_penalty": 3.0, "repeat_last_n": 0}}),
    )
    .await;
    assert_eq!(off, repeated);

    // Seeded sampling with penalties and a bias repeats.
    let seeded = serde_json::json!({"temperature": 1.0, "seed": 77, "frequency_penalty": 0.5,
        "logit_bias": {"1000": 3}});
    let a = greedy("Tell me a fun fact about cats.", seeded.clone()).await;
    let b = greedy("Tell me a fun fact about cats.", seeded).await;
    assert_eq!(a.choices[0].message.content, b.choices[0].message.content);
}

/// The trained context SmolLM2's own GGUF header states.
fn trained_context(model: &std::path::Path) -> u64 {
    gguf_header::read(model)
        .unwrap()
        .arch_uint("context_length")
        .expect("SmolLM2's header states its trained context")
}

#[tokio::test]
async fn load_with_a_context_beyond_the_trained_one_is_refused_before_the_resident_model_is_unloaded(
) {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = smollm_daemon() else {
        return;
    };
    let model = fixture(SMOLLM2).unwrap();
    let trained = trained_context(&model);
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    let before = client.status().await.unwrap().model.unwrap();
    for asked in [1_000_000_000u64, trained + 1] {
        let err = client
            .post_json::<_, serde_json::Value>(
                "/r1/load",
                &serde_json::json!({"path": model, "context_length": asked}),
            )
            .await
            .unwrap_err();
        let r1d_client::ClientError::Status {
            status, message, ..
        } = err
        else {
            panic!("expected a refusal, got {err:?}")
        };
        assert_eq!(status.as_u16(), 400, "{message}");
        assert!(
            message.contains(&format!("context_length {asked}"))
                && message.contains(&format!("{trained} tokens")),
            "{message}"
        );
    }
    // Nothing was unloaded for it: the same model answers, never reloaded.
    assert_eq!(client.health().await.unwrap().status, State::Ready);
    let after = client.status().await.unwrap().model.unwrap();
    // What the process holds moves between two looks; the model itself must not.
    let settled = |m: r1d_client::wire::ModelStatus| r1d_client::wire::ModelStatus {
        resident_bytes: None,
        resident_anon_bytes: None,
        resident_file_bytes: None,
        ..m
    };
    assert_eq!(settled(after), settled(before));
    let answer = client.chat(&ask("Say hi.")).await.unwrap();
    assert!(!answer.choices[0].message.content.is_empty());
    assert!(
        !daemon.log().contains("swapping"),
        "the resident model was touched:\n{}",
        daemon.log()
    );
}

#[tokio::test]
async fn a_context_beyond_the_trained_one_at_start_is_refused_naming_both_numbers() {
    let Some(model) = fixture(SMOLLM2) else {
        return;
    };
    let trained = trained_context(&model);
    let asked = trained * 4;
    let config = format!(
        "[model]\npath = {:?}\ncontext_length = {asked}\n",
        model.display().to_string()
    );
    let by_flag = Daemon::start(DaemonOptions {
        model: Some(&model),
        args: vec!["--context-length".into(), asked.to_string()],
        ..Default::default()
    });
    let by_config = Daemon::start(DaemonOptions {
        config: Some(&config),
        ..Default::default()
    });
    for daemon in [by_flag, by_config] {
        let health = daemon.settled().await;
        assert_eq!(health.status, State::NoModel, "{health:?}");
        let why = health.error.unwrap_or_default();
        assert!(
            why.contains(&format!("context_length {asked}"))
                && why.contains(&format!("{trained} tokens")),
            "{why}"
        );
        assert!(
            daemon.log().contains(&format!(
                "context_length {asked} is more than the {trained} tokens"
            )),
            "not logged:\n{}",
            daemon.log()
        );
        // It keeps serving: a model that fits can be loaded at once.
        let status: r1d_client::wire::Status = daemon
            .client()
            .post_json(
                "/r1/load",
                &serde_json::json!({"path": model, "context_length": 512}),
            )
            .await
            .unwrap();
        assert_eq!(status.state, State::Ready);
    }
}

#[tokio::test]
async fn a_model_path_that_is_a_directory_is_named_as_such_at_start_and_on_load() {
    let Some(model) = fixture(SMOLLM2) else {
        return;
    };
    let not_a_model = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(DaemonOptions {
        model: Some(not_a_model.path()),
        ..Default::default()
    });
    let health = daemon.settled().await;
    assert_eq!(health.status, State::NoModel);
    let why = health.error.unwrap_or_default();
    let dir = not_a_model.path().display().to_string();
    assert!(
        why.contains(&format!(
            "model path {dir} is a directory without model.onnx"
        )),
        "{why}"
    );
    assert!(!why.contains("unknown"), "{why}");
    assert!(
        daemon
            .log()
            .contains(&format!("model path {dir} is a directory")),
        "not logged at start:\n{}",
        daemon.log()
    );
    let client = daemon.client();
    let _: r1d_client::wire::Status = client
        .post_json("/r1/load", &serde_json::json!({"path": model}))
        .await
        .unwrap();
    let err = client
        .post_json::<_, serde_json::Value>("/r1/load", &serde_json::json!({"path": dir}))
        .await
        .unwrap_err();
    let r1d_client::ClientError::Status {
        status, message, ..
    } = err
    else {
        panic!("expected a refusal, got {err:?}")
    };
    assert_eq!(status.as_u16(), 400, "{message}");
    assert!(
        message.contains("is a directory without model.onnx"),
        "{message}"
    );
    assert_eq!(client.health().await.unwrap().status, State::Ready);
}

/// Issue 17: `usage.prompt_tokens_details.cached_tokens` says how much of the prompt r1d reused
/// from the KV cache — none for a first request, all but the last token (which is evaluated for
/// its logits) when the same conversation comes again — and agrees with `timings.cache_n`.
#[tokio::test]
async fn usage_reports_cached_prompt_tokens_of_a_repeated_prompt() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = ready_smollm_daemon().await else {
        return;
    };
    let client = daemon.client();
    let mut request = ask("Name a colour.");
    request.temperature = Some(0.0);
    request.max_tokens = Some(4);
    let first = client.chat(&request).await.unwrap();
    let details = first.usage.prompt_tokens_details.clone().unwrap();
    assert_eq!(details.cached_tokens, 0, "{:?}", first.usage);
    let second = client.chat(&request).await.unwrap();
    let details = second.usage.prompt_tokens_details.clone().unwrap();
    assert_eq!(
        details.cached_tokens,
        second.usage.prompt_tokens - 1,
        "{:?}",
        second.usage
    );
    assert_eq!(details.cached_tokens, second.timings.unwrap().cache_n);
}

/// A schema no answer can meet (`minLength` above `maxLength`) is a 400 naming
/// `response_format`, before llama.cpp sees it: given to llama.cpp's grammar parser it allocated
/// gigabytes a second and the request never ended.
#[tokio::test]
async fn an_unsatisfiable_schema_is_refused_before_it_reaches_llama_cpp() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = ready_smollm_daemon().await else {
        return;
    };
    let client = daemon.client();
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
        "response_format": {"type": "json_schema", "json_schema": {"name": "p",
            "schema": {"type": "string", "minLength": 5, "maxLength": 2}}},
    });
    let err = client
        .post_json::<_, serde_json::Value>("/v1/chat/completions", &body)
        .await
        .unwrap_err();
    let r1d_client::ClientError::Status {
        status, message, ..
    } = err
    else {
        panic!("expected a refusal, got {err:?}")
    };
    assert_eq!(status.as_u16(), 400, "{message}");
    assert!(
        message.contains("response_format") && message.contains("minLength 5 above maxLength 2"),
        "{message}"
    );
    // Nothing is left running (the refused answer's thread ends right after its reply), and the
    // next answer comes.
    crate::watch::until(&daemon, 10, "no answer running", || async {
        (client.status().await.ok()?.running_requests == 0).then_some(())
    })
    .await;
    assert!(!client.chat(&ask("Say hi.")).await.unwrap().choices[0]
        .message
        .content
        .is_empty());
}

/// Issue 17, with a real tokenizer: a text completion whose prompt is token ids answers as the
/// same prompt written as text (greedy), the ids being the ones `/api/generate`'s `context`
/// reports for that text; and a context sent back continues the conversation (the model's answer
/// is the same as with the whole text prompt).
#[tokio::test]
async fn token_id_prompts_and_ollama_context_answer_as_their_text() {
    use serde_json::{json, Value};
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = ready_smollm_daemon().await else {
        return;
    };
    let post = |path: &'static str, body: Value| {
        let daemon = &daemon;
        async move {
            let (status, answer) =
                crate::compat::raw(daemon, r1d_client::Method::POST, path, body).await;
            assert_eq!(status, 200, "{answer}");
            serde_json::from_str::<Value>(&answer).unwrap()
        }
    };
    let text = "The capital of France is";
    let g = post(
        "/api/generate",
        json!({"prompt": text, "raw": true, "stream": false,
               "options": {"temperature": 0, "num_predict": 6}}),
    )
    .await;
    let n_prompt = g["prompt_eval_count"].as_u64().unwrap() as usize;
    let context: Vec<i64> = g["context"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(context.len(), n_prompt + 6, "{g}");
    let by_text = post(
        "/v1/completions",
        json!({"prompt": text, "temperature": 0, "max_tokens": 6}),
    )
    .await;
    let by_ids = post(
        "/v1/completions",
        json!({"prompt": &context[..n_prompt], "temperature": 0, "max_tokens": 6}),
    )
    .await;
    assert_eq!(by_ids["choices"][0]["text"], by_text["choices"][0]["text"]);
    assert_eq!(by_ids["choices"][0]["text"], g["response"]);
    assert_eq!(by_ids["usage"]["prompt_tokens"], n_prompt);
    // Continuing from the context: the same as the text of prompt and answer, then more.
    let more = " It is";
    let continued = post(
        "/api/generate",
        json!({"prompt": more, "raw": true, "stream": false, "context": context,
               "options": {"temperature": 0, "num_predict": 6}}),
    )
    .await;
    let whole = format!("{text}{}{more}", g["response"].as_str().unwrap());
    let at_once = post(
        "/v1/completions",
        json!({"prompt": whole, "temperature": 0, "max_tokens": 6}),
    )
    .await;
    assert_eq!(
        continued["response"], at_once["choices"][0]["text"],
        "{continued} vs {at_once}"
    );
}

/// Issue 17: `logprobs` / `top_logprobs` with SmolLM2. The entries are the model's own: at
/// temperature 0 each chosen token is the most likely one with its log probability; they cover
/// the answer token by token (their bytes joined are the content); streamed they are the
/// non-streamed ones; a token's log probability is the same when the token is the next one
/// after a prompt of ids (teacher forcing through the token-id prompt of `/v1/completions`);
/// and a stop string cuts them where it cuts the text.
#[tokio::test]
async fn logprobs_are_the_models_own_and_cover_the_answer_token_by_token() {
    use serde_json::{json, Value};
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = ready_smollm_daemon().await else {
        return;
    };
    let client = daemon.client();
    let mut request = capital_of_france(24);
    request.logprobs = Some(true);
    request.top_logprobs = Some(5);
    let answer = client.chat(&request).await.unwrap();
    let choice = &answer.choices[0];
    let entries = &choice
        .logprobs
        .as_ref()
        .expect("logprobs were asked for")
        .content;
    assert_eq!(
        entries.len() as u32,
        answer.usage.completion_tokens,
        "{answer:?}"
    );
    let joined: Vec<u8> = entries.iter().flat_map(|e| e.bytes.clone()).collect();
    assert_eq!(String::from_utf8(joined).unwrap(), choice.message.content);
    for e in entries {
        assert_eq!(e.token, String::from_utf8_lossy(&e.bytes));
        assert_eq!(e.top_logprobs.len(), 5, "{e:?}");
        // Greedy: the chosen token is the most likely, with the same log probability.
        assert_eq!(e.top_logprobs[0].bytes, e.bytes, "{e:?}");
        assert_eq!(e.top_logprobs[0].logprob, e.logprob, "{e:?}");
        assert!(e.logprob <= 0.0 && e.logprob.is_finite(), "{e:?}");
        for w in e.top_logprobs.windows(2) {
            assert!(w[0].logprob >= w[1].logprob, "{e:?}");
        }
        let mass: f64 = e
            .top_logprobs
            .iter()
            .map(|t| f64::from(t.logprob).exp())
            .sum();
        assert!(mass <= 1.0 + 1e-4 && mass > 0.0, "{mass} {e:?}");
    }
    // "Paris" follows "is" with most of the probability (a 135M model, but a sure fact).
    let paris = entries.iter().find(|e| e.token.contains("Paris")).unwrap();
    assert!(paris.logprob > (0.5f32).ln(), "{paris:?}");

    // Streamed: the same entries, spread over the chunks that carry their text.
    let mut stream = client.chat_stream(&request).await.unwrap();
    let mut streamed = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for c in &chunk.choices {
            text.push_str(c.delta.content.as_deref().unwrap_or_default());
            if let Some(l) = &c.logprobs {
                streamed.extend(l.content.clone());
            }
        }
    }
    assert_eq!(text, choice.message.content);
    assert_eq!(streamed.len(), entries.len());
    for (s, e) in streamed.iter().zip(entries) {
        assert_eq!(s.bytes, e.bytes);
        assert!((s.logprob - e.logprob).abs() < 1e-3, "{s:?} vs {e:?}");
    }

    // A stop string: the entries end with the token in which it starts.
    let mut stopped = request.clone();
    stopped.stop = Some(r1d_client::wire::Stop::One("Paris".into()));
    let cut = client.chat(&stopped).await.unwrap();
    let content = &cut.choices[0].message.content;
    let cut_entries = &cut.choices[0].logprobs.as_ref().unwrap().content;
    let joined = cut_entries
        .iter()
        .flat_map(|e| e.bytes.clone())
        .collect::<Vec<u8>>();
    let joined = String::from_utf8(joined).unwrap();
    let last = cut_entries.last().unwrap();
    assert!(
        joined.starts_with(content.as_str()),
        "{joined:?} vs {content:?}"
    );
    assert!(
        joined.len() < content.len() + last.bytes.len(),
        "{joined:?} vs {content:?}"
    );
    assert!(last.token.contains("Paris"), "{last:?}");

    // Teacher forcing: prompt ids, then the same ids and the first answer token. The second
    // request's first entry is the first request's second one.
    let post = |path: &'static str, body: Value| {
        let daemon = &daemon;
        async move {
            let (status, answer) =
                crate::compat::raw(daemon, r1d_client::Method::POST, path, body).await;
            assert_eq!(status, 200, "{answer}");
            serde_json::from_str::<Value>(&answer).unwrap()
        }
    };
    let g = post(
        "/api/generate",
        json!({"prompt": "The capital of France is", "raw": true, "stream": false,
               "options": {"temperature": 0, "num_predict": 3}}),
    )
    .await;
    let n_prompt = g["prompt_eval_count"].as_u64().unwrap() as usize;
    let ids: Vec<i64> = g["context"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let whole = post(
        "/v1/completions",
        json!({"prompt": &ids[..n_prompt], "temperature": 0, "max_tokens": 3, "logprobs": 3}),
    )
    .await;
    let forced = post(
        "/v1/completions",
        json!({"prompt": &ids[..n_prompt + 1], "temperature": 0, "max_tokens": 1, "logprobs": 3}),
    )
    .await;
    let w = &whole["choices"][0]["logprobs"];
    let f = &forced["choices"][0]["logprobs"];
    let tokens = w["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 3, "{whole}");
    assert_eq!(
        tokens
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<String>(),
        whole["choices"][0]["text"].as_str().unwrap()
    );
    // text_offset: bytes of the choice's text before each token.
    let offsets: Vec<u64> = w["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert_eq!(offsets[1], tokens[0].as_str().unwrap().len() as u64);
    assert_eq!(f["tokens"][0], w["tokens"][1], "{forced} vs {whole}");
    let (a, b) = (
        f["token_logprobs"][0].as_f64().unwrap(),
        w["token_logprobs"][1].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 2e-3, "{a} vs {b}");
    // Greedy again: each position's top map holds the chosen token with its log probability.
    for (i, top) in w["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(top.len() <= 3 && !top.is_empty(), "{top:?}");
        let token = tokens[i].as_str().unwrap();
        assert_eq!(top[token], w["token_logprobs"][i], "{top:?}");
    }
}

/// The resident model's memory credit (what r1d counts as free when it re-plans) does not count
/// the weights twice: llama.cpp uses SmolLM2's weights in place from the memory-mapped file, and
/// those pages are page cache that the kernel's `MemAvailable` counts as available already. The
/// credit names them as mapped (credited only under a cgroup), and its anonymous rest holds at
/// least the KV cache. Checked with the model in its worker process and in r1d's own.
#[tokio::test]
async fn the_memory_credit_names_the_mapped_weights_apart_from_the_kv_cache() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(model) = fixture(SMOLLM2) else {
        return;
    };
    let file_bytes = std::fs::metadata(&model).unwrap().len();
    for isolation in ["process", "in-process"] {
        let config = format!("[plugins]\nisolation = \"{isolation}\"\n");
        let daemon = Daemon::start(DaemonOptions {
            model: Some(&model),
            config: Some(&config),
            args: vec!["--context-length".into(), "2048".into()],
            ..Default::default()
        });
        assert_eq!(
            daemon.settled().await.status,
            State::Ready,
            "{}",
            daemon.log()
        );
        // The supervisor takes the credit as it sees the engine's change, just after Ready.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (m, credit) = loop {
            let status = daemon.client().status().await.unwrap();
            let credit = status.watch.and_then(|w| w.memory_credit);
            if let (Some(m), Some(credit)) = (status.model, credit) {
                break (m, credit);
            }
            assert!(
                Instant::now() < deadline,
                "no memory credit: {}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(credit.gpu_bytes, 0, "{isolation}: {credit:?}");
        // The weights are mapped: at least 90 % of what llama.cpp reports, at most the file.
        assert!(
            credit.ram_mapped_bytes >= m.weights_bytes / 10 * 9
                && credit.ram_mapped_bytes <= file_bytes,
            "{isolation}: {credit:?}, weights {} of a {file_bytes}-byte file",
            m.weights_bytes
        );
        // The anonymous rest, added to MemAvailable, holds the KV cache.
        let anon = credit.ram_bytes - credit.ram_mapped_bytes;
        assert!(
            m.kv_cache_bytes > 0 && anon >= m.kv_cache_bytes,
            "{isolation}: {credit:?}, KV cache {}",
            m.kv_cache_bytes
        );
    }
}

/// A random draw (temperature above 0, no seed) takes its last prompt token in the same decode
/// step as the rest of its prompt, one step sooner to its first token; a greedy request takes it
/// in a step of its own (module docs of the plugin's `generate.rs`). Both must read the logits
/// of the prompt's last position: the first token's top log probabilities (computed before any
/// sampler, so the draw does not change them) agree, token for token, within what a batch of
/// another size changes in the last bits. Logits from any other position would name other
/// tokens.
#[tokio::test]
async fn a_random_draw_reads_the_logits_of_its_prompts_last_token_as_greedy_does() {
    use serde_json::{json, Value};
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(daemon) = ready_smollm_daemon().await else {
        return;
    };
    let first_token = |temperature: f64| {
        let daemon = &daemon;
        async move {
            let body = json!({"prompt": "The capital of France is", "max_tokens": 1,
                              "temperature": temperature, "logprobs": 5});
            let (status, answer) =
                crate::compat::raw(daemon, r1d_client::Method::POST, "/v1/completions", body).await;
            assert_eq!(status, 200, "{answer}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            let top = v["choices"][0]["logprobs"]["top_logprobs"][0]
                .as_object()
                .unwrap_or_else(|| panic!("no top_logprobs: {answer}"))
                .clone();
            let mut top: Vec<(String, f64)> = top
                .into_iter()
                .map(|(t, l)| (t, l.as_f64().unwrap()))
                .collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            (top, v["timings"]["cache_n"].as_u64())
        }
    };
    // The random draw first, on a fresh cache: its whole prompt in one step.
    let (drawn, drawn_cached) = first_token(0.8).await;
    // Greedy on the same prompt: all but the last token from the cache, the last alone.
    let (greedy, greedy_cached) = first_token(0.0).await;
    assert_eq!(
        drawn_cached,
        Some(0),
        "the draw's prompt was evaluated from scratch"
    );
    assert!(
        greedy_cached.is_some_and(|n| n > 0),
        "greedy reused the cache: {greedy_cached:?}"
    );
    assert_eq!(drawn.len(), 5, "{drawn:?}");
    // Token for token (the fifth may trade places with a nearly tied sixth).
    for (token, l1) in &drawn[..4] {
        let l2 = greedy
            .iter()
            .find(|(t, _)| t == token)
            .unwrap_or_else(|| panic!("{token:?} of {drawn:?} not in {greedy:?}"))
            .1;
        assert!((l1 - l2).abs() < 2e-3, "{token:?}: {l1} vs {l2}");
    }
}
