//! Many clients at once: answers generated side by side (`[server] parallel`), each exactly its
//! own, a bounded queue behind them, and one client's cancellation or stall not felt by others.
//! The echo backend runs any number of sequences; SmolLM2 runs through the llama.cpp plugin's
//! continuous batching.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use r1d_client::wire::{ChatCompletionRequest, ChatMessage, State};
use r1d_tests::{echo_model, fixture, Daemon, DaemonOptions, SMOLLM2};

use crate::ask;
use crate::watch::until;

fn echo_daemon(config: &str) -> (Daemon, tempfile::TempDir) {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(
        models.path(),
        r#"{"name": "echo-many", "context_length": 4096}"#,
    );
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        config: Some(config),
        ..Default::default()
    });
    (daemon, models)
}

/// A slow echo request (50 ms a token) whose answer is `words` upper-cased, repeated up to
/// `max_tokens` tokens.
fn slow(words: &str, max_tokens: u32) -> ChatCompletionRequest {
    ChatCompletionRequest {
        messages: vec![ChatMessage::new("user", format!("{words} [[slow]]"))],
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

/// Streams `request` to its end and returns the content.
async fn streamed(client: &r1d_client::Client, request: &ChatCompletionRequest) -> String {
    let mut stream = client.chat_stream(request).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        for c in &chunk.unwrap().choices {
            text.push_str(c.delta.content.as_deref().unwrap_or(""));
        }
    }
    text
}

#[tokio::test]
async fn many_answers_run_at_once_and_each_is_exactly_its_own() {
    let (daemon, _m) = echo_daemon("[server]\nparallel = 8\n");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    let status = client.status().await.unwrap();
    assert_eq!(status.parallel, 8, "{status:?}");
    // What each request gives alone.
    let requests: Vec<ChatCompletionRequest> = (0..12)
        .map(|i| slow(&format!("client{i} asks w{i}x"), 8))
        .collect();
    let alone = streamed(&client, &requests[0]).await;
    assert!(alone.starts_with("CLIENT0 ASKS W0X"), "{alone}");

    // Twelve at once (8 run, 4 wait): each gets exactly its own answer, no word of another.
    let watcher = {
        let client = daemon.client();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..100 {
                let s = client.status().await.unwrap();
                most = most.max(s.running_requests);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        })
    };
    let answers = futures_util::future::join_all(requests.iter().map(|r| {
        let client = daemon.client();
        async move { streamed(&client, r).await }
    }))
    .await;
    for (i, answer) in answers.iter().enumerate() {
        let own = alone
            .replace("CLIENT0", &format!("CLIENT{i}"))
            .replace("W0X", &format!("W{i}X"));
        assert_eq!(answer, &own, "request {i}");
    }
    let most = watcher.await.unwrap();
    assert!(
        (2..=8).contains(&most),
        "at most {most} answers ran at once; expected several and never more than 8"
    );
}

#[tokio::test]
async fn a_full_queue_is_refused_with_503_and_retry_after() {
    let (daemon, _m) = echo_daemon("[server]\nparallel = 1\nqueue_depth = 1\n");
    assert_eq!(daemon.settled().await.status, State::Ready);
    // One runs (2 s), one waits: the queue is full.
    let running = {
        let client = daemon.client();
        tokio::spawn(async move { streamed(&client, &slow("first", 40)).await })
    };
    let client = daemon.client();
    let status = || async { client.status().await.ok() };
    until(&daemon, 10, "the first answer to run", || async {
        status().await.filter(|s| s.running_requests > 0)
    })
    .await;
    let waiting = {
        let client = daemon.client();
        tokio::spawn(async move { streamed(&client, &slow("second", 2)).await })
    };
    until(&daemon, 10, "the second answer to wait", || async {
        status().await.filter(|s| s.queued_requests > 0)
    })
    .await;
    let status = client.status().await.unwrap();
    assert_eq!((status.running_requests, status.queued_requests), (1, 1));
    let response = client
        .request(
            r1d_client::Method::POST,
            "/v1/chat/completions",
            Some(serde_json::to_vec(&ask("third")).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let bytes = {
        use http_body_util::BodyExt;
        response.into_body().collect().await.unwrap().to_bytes()
    };
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("queue"), "{body}");
    // The two admitted ones are answered in full.
    assert!(running.await.unwrap().starts_with("FIRST"));
    assert!(waiting.await.unwrap().starts_with("SECOND"));
}

#[tokio::test]
async fn cancelling_one_stream_leaves_the_others_whole() {
    let (daemon, _m) = echo_daemon("[server]\nparallel = 4\n");
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    let alone = streamed(&client, &slow("keep going", 12)).await;
    let keepers: Vec<_> = (0..2)
        .map(|_| {
            let client = daemon.client();
            tokio::spawn(async move { streamed(&client, &slow("keep going", 12)).await })
        })
        .collect();
    let mut quitter = client.chat_stream(&slow("quit early", 40)).await.unwrap();
    for _ in 0..3 {
        quitter.next().await.unwrap().unwrap();
    }
    drop(quitter);
    for keeper in keepers {
        assert_eq!(keeper.await.unwrap(), alone);
    }
    // The quitter's sequence was freed: nothing runs any more.
    until(&daemon, 10, "every answer to end", || async {
        client
            .status()
            .await
            .ok()
            .filter(|s| s.active_requests == 0)
    })
    .await;
}

#[tokio::test]
async fn three_smollm2_streams_make_progress_at_once() {
    let _one = crate::llama::ONE_MODEL_AT_A_TIME.lock().await;
    let Some(model) = fixture(SMOLLM2) else {
        return;
    };
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        args: vec![
            "--context-length".into(),
            "1024".into(),
            "--parallel".into(),
            "3".into(),
        ],
        ..Default::default()
    });
    assert_eq!(daemon.settled().await.status, State::Ready);
    assert_eq!(daemon.client().status().await.unwrap().parallel, 3);
    let start = Instant::now();
    let runs = [
        "Count from one to twenty.",
        "Name ten animals.",
        "List ten cities.",
    ]
    .map(|q| {
        let client = daemon.client();
        tokio::spawn(async move {
            let request = ChatCompletionRequest {
                messages: vec![ChatMessage::new("user", q)],
                max_tokens: Some(48),
                temperature: Some(0.0),
                ..Default::default()
            };
            let mut stream = client.chat_stream(&request).await.unwrap();
            let mut first_token = None;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.unwrap();
                let has_text = chunk
                    .choices
                    .iter()
                    .any(|c| c.delta.content.as_deref().is_some_and(|t| !t.is_empty()));
                if has_text {
                    first_token.get_or_insert_with(|| start.elapsed());
                }
            }
            (first_token.expect("a token"), start.elapsed())
        })
    });
    let mut times = Vec::new();
    for run in runs {
        times.push(run.await.unwrap());
    }
    let first_end = times.iter().map(|t| t.1).min().unwrap();
    for (i, (first_token, _)) in times.iter().enumerate() {
        assert!(
            *first_token < first_end,
            "stream {i} got its first token at {first_token:?}, after another ended at \
             {first_end:?}: answers were not generated together\n{}",
            daemon.log()
        );
    }
}

#[tokio::test]
async fn a_swap_waits_for_every_running_answer_then_serves_the_new_model() {
    let models = tempfile::tempdir().unwrap();
    let (first, second) = (
        models.path().join("first.echo"),
        models.path().join("second.echo"),
    );
    std::fs::write(&first, r#"{"name": "first"}"#).unwrap();
    std::fs::write(&second, r#"{"name": "second"}"#).unwrap();
    let config = |model: &std::path::Path| {
        format!(
            "{}[server]\nparallel = 4\n[watch]\nhardware_interval_s = 0\n",
            r1d_tests::echo_config(model)
        )
    };
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&config(&first)),
        ..Default::default()
    });
    assert_eq!(daemon.settled().await.status, State::Ready);
    let client = daemon.client();
    let alone = streamed(&client, &slow("still here", 20)).await;
    // Three answers of a second each are running when the config names another model.
    let running: Vec<_> = (0..3)
        .map(|_| {
            let client = daemon.client();
            tokio::spawn(async move {
                let mut stream = client.chat_stream(&slow("still here", 20)).await.unwrap();
                let (mut text, mut model) = (String::new(), String::new());
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.unwrap();
                    model = chunk.model.clone();
                    for c in &chunk.choices {
                        text.push_str(c.delta.content.as_deref().unwrap_or(""));
                    }
                }
                (text, model)
            })
        })
        .collect();
    until(&daemon, 10, "three answers to run", || async {
        client
            .status()
            .await
            .ok()
            .filter(|s| s.running_requests >= 3)
    })
    .await;
    daemon.edit_config(&config(&second));
    // Every answer in flight finishes whole, on the model it started with.
    for run in running {
        let (text, model) = run.await.unwrap();
        assert_eq!(text, alone);
        assert_eq!(model, "first");
    }
    // Then the new model serves.
    until(&daemon, 20, "the new model to serve", || async {
        client.status().await.ok().filter(|s| {
            s.state == State::Ready && s.model.as_ref().is_some_and(|m| m.name == "second")
        })
    })
    .await;
    assert_eq!(client.chat(&ask("new")).await.unwrap().model, "second");
}

/// More choices (or prompts) in one request than `[server] parallel` runs: the first answers
/// stream while the others wait for their sequences, and every choice ends whole — none is left
/// unread until the stall timeout cancels it (which also held the sequences other clients need).
#[tokio::test]
async fn more_choices_than_parallel_sequences_all_finish() {
    let (daemon, _m) = echo_daemon("[server]\nparallel = 2\nstall_timeout_s = 5\n");
    daemon.settled().await;
    let client = daemon.client();
    // 150 tokens each (the echo says its prompt back): far more events than one answer's
    // buffer holds unread.
    let words: Vec<String> = (0..150).map(|i| format!("w{i}")).collect();
    let mut request = ask(&words.join(" "));
    request.n = Some(5);
    let alone = {
        let mut one = request.clone();
        one.n = None;
        let answer = client.chat(&one).await.unwrap();
        assert!(answer.usage.completion_tokens >= 150, "{answer:?}");
        answer.choices[0].message.content.clone()
    };
    let mut stream = client.chat_stream(&request).await.unwrap();
    let mut texts = vec![String::new(); 5];
    let mut finished = vec![None; 5];
    while let Some(chunk) = stream.next().await {
        for c in &chunk.unwrap().choices {
            let i = c.index as usize;
            texts[i].push_str(c.delta.content.as_deref().unwrap_or(""));
            finished[i] = finished[i].take().or(c.finish_reason.clone());
        }
    }
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(text, &alone, "choice {i}");
        assert_eq!(finished[i].as_deref(), Some("stop"), "choice {i}");
    }
    // Several prompts, not streamed: each its whole answer.
    let (status, body) = crate::compat::raw(
        &daemon,
        r1d_client::Method::POST,
        "/v1/completions",
        serde_json::json!({"prompt": vec![words.join(" "); 5], "max_tokens": 400}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 5, "{v}");
    for c in choices {
        assert_eq!(
            c["text"].as_str().unwrap().split_whitespace().count(),
            150,
            "{c}"
        );
    }
    assert!(
        !daemon.log().contains("stopped reading"),
        "{}",
        daemon.log()
    );
}
