//! `r1ctl` against a real daemon (echo backend: deterministic) and without one.

use std::process::Command;

use r1d_tests::{binary, echo_model, Daemon, DaemonOptions};

fn r1ctl(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("failed to run r1ctl")
}

/// An r1d serving an echo model described by `json`, settled; the directory holds the model.
async fn echo_daemon(json: &str) -> (Daemon, tempfile::TempDir) {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), json);
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    daemon.settled().await;
    (daemon, models)
}

#[test]
fn no_daemon_is_one_line_naming_the_socket_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let out = r1ctl(&socket, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "the error, then what to do: {err}");
    assert!(lines[0].contains("r1d is not running"), "{err}");
    assert!(lines[0].contains(socket.to_str().unwrap()), "{err}");
    assert!(
        lines[1].starts_with("hint: start r1d") && lines[1].contains("systemctl --user"),
        "{err}"
    );
}

#[test]
fn usage_error_exits_2() {
    let out = Command::new(binary("r1ctl"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn ask_streams_the_answer_and_json_has_typed_lines() {
    let (daemon, _models) = echo_daemon(r#"{"name": "echo-cli"}"#).await;
    let out = r1ctl(&daemon.socket, &["ask", "--stats", "good morning"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "GOOD MORNING\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("generation: 2 tokens"), "{err}");

    let out = r1ctl(&daemon.socket, &["--json", "ask", "good morning"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "content");
    assert_eq!(lines[0]["text"], "GOOD");
    let done = lines.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"]["completion_tokens"], 2);

    let out = r1ctl(&daemon.socket, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ready") && text.contains("echo-cli") && text.contains("echo"),
        "{text}"
    );
}

#[tokio::test]
async fn ask_failure_exits_1_with_the_reason() {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), "{}");
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    daemon.settled().await;
    let out = r1ctl(&daemon.socket, &["ask", "boom [[fail]]"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("generation failure requested"));
}

#[tokio::test]
async fn r1ctl_finds_a_user_mode_r1d_without_being_told_the_socket() {
    let runtime = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), r#"{"name": "echo-default-socket"}"#);
    let mut r1d = Command::new(binary("r1d"))
        .args(["--user", "--config", "/dev/null", "--model"])
        .arg(&model)
        .arg("--plugin-dir")
        .arg(r1d_tests::bin_dir())
        .env("XDG_RUNTIME_DIR", runtime.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = runtime.path().join("r1d/r1d.sock");
    for _ in 0..500 {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = || {
        Command::new(binary("r1ctl"))
            .arg("status")
            .env("XDG_RUNTIME_DIR", runtime.path())
            // As a non-root user would: r1ctl must not depend on $USER.
            .env("USER", "someone")
            .output()
            .unwrap()
    };
    // The socket answers while the model still loads: ask until it is served (10 s at most).
    let mut out = status();
    for _ in 0..100 {
        if !out.status.success()
            || String::from_utf8_lossy(&out.stdout).contains("echo-default-socket")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        out = status();
    }
    let _ = r1d.kill();
    let _ = r1d.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("echo-default-socket"), "{stdout}");
}

#[test]
fn r1d_refuses_a_broken_config_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("r1d.toml");
    std::fs::write(&config, "[model]\ncontext_lenght = 512\n").unwrap();
    let out = Command::new(binary("r1d"))
        .args(["--user", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(config.to_str().unwrap())
            && err.contains("line 2")
            && err.contains("context_lenght"),
        "{err}"
    );
    assert!(
        !dir.path().join("s.sock").exists(),
        "it did not start serving"
    );
}

#[test]
fn r1d_never_deletes_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "precious").unwrap();
    let out = Command::new(binary("r1d"))
        .args(["--user", "--config", "/dev/null", "--socket"])
        .arg(&notes)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "precious");
}

fn r1ctl_with_stdin(socket: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("failed to run r1ctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn ask_reads_a_piped_question_and_hide_reasoning_shows_only_the_answer() {
    // Named like R1, so r1d opens the reasoning; the echo's answer closes it.
    let (daemon, _models) =
        echo_daemon(r#"{"name": "DeepSeek-R1 echo", "transform": "identity"}"#).await;
    let out = r1ctl_with_stdin(
        &daemon.socket,
        &["ask"],
        "hmm let me see</think>The answer\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "<think>\nhmm let me see\n</think>\n\nThe answer\n"
    );
    let out = r1ctl_with_stdin(
        &daemon.socket,
        &["ask", "--hide-reasoning"],
        "hmm let me see</think>The answer\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "The answer\n");
}

#[tokio::test]
async fn ps_show_stop_and_run_work_like_ollamas() {
    let (daemon, models) = echo_daemon(r#"{"name": "echo-ps", "context_length": 512}"#).await;

    let out = r1ctl(&daemon.socket, &["ps"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("echo-ps") && row.ends_with("0 running"),
        "{text}"
    );

    let out = r1ctl(&daemon.socket, &["show", "echo-ps"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("context       512 tokens"), "{text}");
    assert!(text.contains("capabilities  completion"), "{text}");
    // The echo template, line by line under "template".
    assert!(text.contains("template\n  {{ bos_token }}"), "{text}");
    let out = r1ctl(&daemon.socket, &["show", "no-such-model"]);
    assert_eq!(out.status.code(), Some(1));

    let out = r1ctl(&daemon.socket, &["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = r1ctl(&daemon.socket, &["ps"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("no model is resident"), "{text}");

    // `run` makes a model resident again and answers.
    let other = models.path().join("other.echo");
    std::fs::write(&other, r#"{"name": "echo-other"}"#).unwrap();
    let out = r1ctl(
        &daemon.socket,
        &["run", other.to_str().unwrap(), "good night"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "GOOD NIGHT\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serving echo-other"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn chat_commands_are_never_sent_to_the_model() {
    let (daemon, _models) = echo_daemon(r#"{"name": "echo-chat"}"#).await;
    let out = r1ctl_with_stdin(
        &daemon.socket,
        &["chat"],
        "/help\nhello there\n/clear\n/set think off\n/frobnicate\nagain\n/bye\nnever sent\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    // Two questions reached the model; /bye left before the last line.
    assert!(stdout.contains("HELLO THERE"), "{stdout}");
    assert!(stdout.contains("AGAIN"), "{stdout}");
    assert!(
        !stdout.contains("NEVER SENT") && !stdout.contains("/HELP"),
        "{stdout}"
    );
    assert!(
        err.contains("/bye") && err.contains("/set think on|off"),
        "{err}"
    );
    assert!(err.contains("[the conversation is forgotten]"), "{err}");
    assert!(err.contains("unknown command \"/frobnicate\""), "{err}");
    // Counted when each answer's thread ends, just after its last byte went out.
    let served = crate::watch::until(&daemon, 5, "both answers to be counted", || async {
        let served = daemon.client().status().await.ok()?.requests_served;
        (served >= 2).then_some(served)
    })
    .await;
    assert_eq!(served, 2);
}

#[test]
fn an_answer_cut_inside_its_reasoning_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let model = echo_model(
        dir.path(),
        r#"{"name": "DeepSeek-R1 echo", "transform": "identity"}"#,
    );
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    // R1's prompt opens its reasoning: two tokens of "one two three" are all reasoning.
    let out = r1ctl(
        &daemon.socket,
        &["ask", "--max-tokens", "2", "one two three"],
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cut off inside its reasoning"), "{err}");
    // Without a limit the whole answer comes (no default cap of the daemon's).
    let out = r1ctl(&daemon.socket, &["ask", "one two three</think>done"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("cut off"));
}

#[tokio::test]
async fn an_empty_question_is_refused_not_sent() {
    let (daemon, _models) = echo_daemon(r#"{"name": "echo-empty"}"#).await;
    for out in [
        r1ctl(&daemon.socket, &["ask", ""]),
        r1ctl_with_stdin(&daemon.socket, &["ask"], "  \n"),
    ] {
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the question is empty"), "{err}");
    }
    assert_eq!(daemon.client().status().await.unwrap().requests_served, 0);
}

/// A complete GGUF named `name` (no catalog variant: listed by its file stem) at `path`, which
/// the echo backend loads when asked for by name.
fn small_gguf(path: &std::path::Path, name: &str) {
    use gguf_header::write::{gguf, Meta};
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let bytes = gguf(
        &[
            ("general.architecture", Meta::Str("llama")),
            ("general.name", Meta::Str(name)),
            ("llama.block_count", Meta::U32(2)),
            ("llama.embedding_length", Meta::U32(64)),
            ("llama.context_length", Meta::U32(512)),
        ],
        &[("token_embd.weight", &[64, 4], 0)],
        1024,
    );
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn rm_removes_r1ds_own_files_and_refuses_the_resident_model_and_other_stores() {
    use r1d_client::Method;
    use serde_json::json;
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    let resident = models.join("resident.gguf");
    small_gguf(&resident, "resident");
    let pulled = models.join("hf.co/owner/repo/pulled.gguf");
    small_gguf(&pulled, "pulled");
    let spare = models.join("spare.gguf");
    small_gguf(&spare, "spare");
    // Ollama's store: manifests/registry.ollama.ai/library/NAME/TAG → blobs/sha256-HEX.
    let ollama = root.path().join("ollama");
    let digest = "0f".repeat(32);
    let blob = ollama.join(format!("blobs/sha256-{digest}"));
    small_gguf(&blob, "theirs");
    let manifest = ollama.join("manifests/registry.ollama.ai/library/theirs/1b");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(
        &manifest,
        format!(r#"{{"schemaVersion":2,"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{digest}","size":1}}]}}"#),
    )
    .unwrap();
    let config = format!(
        "[model]\npath = {:?}\nbackend = \"echo\"\n\n[store]\ndir = {:?}\nscan_huggingface = false\n\
         scan_ollama = true\nollama_models = {:?}\n",
        resident, models, ollama
    );
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&config),
        ..Default::default()
    });
    let health = daemon.settled().await;
    assert_eq!(
        health.status,
        r1d_client::wire::State::Ready,
        "{}",
        daemon.log()
    );

    // The resident model: 409 on every route, the file stays, and the message says what to do.
    let out = r1ctl(&daemon.socket, &["rm", "resident"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resident") && err.contains("in use") && err.contains("r1ctl use"),
        "{err}"
    );
    let (status, body) = crate::compat::raw(
        &daemon,
        Method::POST,
        "/r1/remove",
        json!({"model": "resident"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("\"code\":\"model_in_use\""), "{body}");
    let (status, body) = crate::compat::raw(
        &daemon,
        Method::DELETE,
        "/api/delete",
        json!({"model": "resident"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.starts_with("{\"error\":") && body.contains("r1ctl stop"),
        "{body}"
    );
    assert!(resident.exists());

    // Ollama's store is only read: refused with Ollama's own command, the blob stays.
    let out = r1ctl(&daemon.socket, &["rm", "theirs:1b"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`ollama rm theirs:1b`"), "{err}");
    assert!(blob.exists() && manifest.exists());

    // An unknown name.
    let out = r1ctl(&daemon.socket, &["rm", "nothing-here"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no model named \"nothing-here\" is on disk"),
        "{err}"
    );
    let (status, _) = crate::compat::raw(
        &daemon,
        Method::DELETE,
        "/api/delete",
        json!({"name": "nothing-here"}),
    )
    .await;
    assert_eq!(status, 404);

    // A pulled file by the name `r1ctl models` lists: gone, with its empty repository folders.
    let size = std::fs::metadata(&pulled).unwrap().len();
    let out = r1ctl(
        &daemon.socket,
        &["--json", "rm", "hf.co/owner/repo:pulled.gguf"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(removed["model"], "hf.co/owner/repo:pulled.gguf");
    assert_eq!(removed["path"], pulled.to_str().unwrap());
    assert_eq!(removed["freed_bytes"], size);
    assert!(!pulled.exists());
    assert!(!models.join("hf.co").exists(), "empty folders are pruned");

    // Ollama's route, with an older client's `name`: 200 and an empty body, as Ollama answers.
    let (status, body) = crate::compat::raw(
        &daemon,
        Method::DELETE,
        "/api/delete",
        json!({"name": "spare"}),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(!spare.exists());
    let list: r1d_client::wire::StoreModelList =
        daemon.client().get_json("/r1/models", false).await.unwrap();
    let names: Vec<&str> = list.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["resident", "theirs:1b"], "{list:#?}");

    // With --force the resident model is unloaded first (as `r1ctl stop` does), then removed.
    let out = r1ctl(&daemon.socket, &["rm", "--force", "resident"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unloaded 'resident' to remove it"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("deleted 'resident' ({}", resident.display())),
        "{text}"
    );
    assert!(!resident.exists());
    let status = daemon.client().status().await.unwrap();
    assert_eq!(status.state, r1d_client::wire::State::NoModel, "{status:?}");
}
