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

#[test]
fn no_daemon_is_one_line_naming_the_socket_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let out = r1ctl(&socket, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("r1d is not running"), "{err}");
    assert!(err.contains(socket.to_str().unwrap()), "{err}");
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
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), r#"{"name": "echo-cli"}"#);
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    daemon.settled().await;
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
