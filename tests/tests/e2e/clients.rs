//! Real third-party clients, written by nobody here: the `openai` and `ollama` Python packages,
//! pointed at r1d's socket through an httpx transport (`scripts/install-test-clients` installs
//! them; `R1D_TEST_PYTHON` names the interpreter). The scripts in `tests/clients/` assert.

use std::path::{Path, PathBuf};
use std::process::Command;

use r1d_tests::{echo_model, fixture, Daemon, DaemonOptions, SMOLLM2};

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("R1D_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let message =
        "R1D_TEST_PYTHON is not set; run scripts/install-test-clients (scripts/test does)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
    None
}

/// Where the client reaches r1d.
enum Reach {
    /// The Unix socket (through an httpx transport).
    Socket,
    /// A loopback TCP listener (`--listen 127.0.0.1:PORT`), with an API key when given.
    Tcp(Option<&'static str>),
}

/// A free loopback TCP port (bound and released: another process could take it meanwhile, which
/// the test would report as a failed start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_client(script: &str, reach: Reach) {
    let Some(python) = python() else { return };
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(
        models.path(),
        r#"{"name": "DeepSeek-R1 echo", "transform": "identity"}"#,
    );
    let port = free_port();
    let key_file = models.path().join("api-key");
    let (args, config, target, key) = match reach {
        Reach::Socket => (vec![], String::new(), None, None),
        Reach::Tcp(key) => {
            let config = match key {
                Some(key) => {
                    std::fs::write(&key_file, format!("{key}\n")).unwrap();
                    format!("[server]\napi_key_file = {:?}\n", key_file)
                }
                None => String::new(),
            };
            let addr = format!("127.0.0.1:{port}");
            (
                vec!["--listen".to_owned(), addr.clone()],
                config,
                Some(addr),
                key,
            )
        }
    };
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        args,
        config: Some(&config),
        ..Default::default()
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(script);
    // The daemon listens once start() returns; the model (an echo file) is resident at once.
    let mut command = Command::new(&python);
    command.arg(&script);
    match &target {
        None => command.arg(&daemon.socket),
        // The openai client takes a URL, the ollama one OLLAMA_HOST's host:port.
        Some(addr) if script.ends_with("openai_client.py") => command.arg(format!("http://{addr}")),
        Some(addr) => command.arg(addr),
    };
    if let Some(key) = key {
        command.arg(key);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}\n{}\n--- r1d log ---\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
    if let Some(key) = key {
        assert!(
            !daemon.log().contains(key),
            "the key is in the log:\n{}",
            daemon.log()
        );
    }
}

/// Structured output on a real model: `response_format` (`json_object`, `json_schema` with
/// `strict`, streamed and not, greedy and sampled), `chat.completions.parse` with a Pydantic model,
/// an unconvertible schema refused by name, and Ollama's `format` ("json", a schema) — each answer
/// parsed and validated with `jsonschema` by `tests/clients/structured_output.py`. SmolLM2 does not
/// reason, so the grammar constrains from the first token.
#[test]
fn structured_output_validates_against_the_schema_with_the_python_clients() {
    run_with_smollm("structured_output.py");
}

/// Log probabilities through the `openai` and `ollama` packages' typed objects
/// (`tests/clients/logprobs_client.py`): chat (streamed and not), text completions, Ollama's chat
/// and generate, and the refusals by name (`top_logprobs` above 20 or without `logprobs`).
#[test]
fn logprobs_reach_the_openai_and_ollama_python_clients() {
    run_with_smollm("logprobs_client.py");
}

/// Runs `tests/clients/SCRIPT` with r1d's socket and the model's listed name against a daemon
/// serving SmolLM2; the script prints "all checks passed" at its end.
fn run_with_smollm(script: &str) {
    let Some(python) = python() else { return };
    let Some(model) = fixture(SMOLLM2) else {
        return;
    };
    let _one = crate::llama::ONE_MODEL_AT_A_TIME.blocking_lock();
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        args: vec!["--context-length".into(), "2048".into()],
        ..Default::default()
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(script);
    let out = Command::new(&python)
        .arg(&script)
        .arg(&daemon.socket)
        .arg("SmolLM2-135M-Instruct.Q4_1")
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}\n{}\n--- r1d log ---\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}

/// A tool-calling round trip with the `openai` and `ollama` packages (`tests/clients/tools_client.py`)
/// against an echo model whose template renders tools: the call (non-streamed and accumulated from
/// streamed deltas), the result sent back as a tool message, a forced call refused, Ollama's shape
/// and capability.
#[test]
fn tool_calls_round_trip_with_the_python_clients() {
    let Some(python) = python() else { return };
    let models = tempfile::tempdir().unwrap();
    let file = serde_json::json!({"name": "tool echo", "transform": "identity",
        "chat_template": r1d_tests::TOOL_TEMPLATE});
    let model = echo_model(models.path(), &file.to_string());
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join("tools_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&daemon.socket)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}\n{}\n--- r1d log ---\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}

#[test]
fn openai_python_client_works_unchanged() {
    run_client("openai_client.py", Reach::Socket);
}

/// Issue 17: OpenAI's Responses API through the official client (`client.responses.create`,
/// streamed and not, and `client.responses.stream`).
#[test]
fn openai_python_client_responses_api_works_unchanged() {
    run_client("responses_client.py", Reach::Socket);
}

#[test]
fn ollama_python_client_works_unchanged() {
    run_client("ollama_client.py", Reach::Socket);
}

#[test]
fn openai_python_client_over_loopback_tcp_without_a_key() {
    run_client("openai_client.py", Reach::Tcp(None));
}

#[test]
fn openai_python_client_over_tcp_with_a_key() {
    run_client("openai_client.py", Reach::Tcp(Some("sk-r1d-test-4f2a")));
}

#[test]
fn ollama_python_client_over_loopback_tcp_without_a_key() {
    run_client("ollama_client.py", Reach::Tcp(None));
}

#[test]
fn ollama_python_client_over_tcp_with_a_key() {
    run_client("ollama_client.py", Reach::Tcp(Some("sk-r1d-test-77c1")));
}

#[test]
fn metrics_parse_with_prometheus_client_and_each_request_is_logged_without_content() {
    let Some(python) = python() else { return };
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(
        models.path(),
        r#"{"name": "DeepSeek-R1 echo", "transform": "identity"}"#,
    );
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let request: r1d_client::wire::ChatCompletionRequest =
        serde_json::from_value(serde_json::json!({
            "model": "DeepSeek-R1 echo",
            "messages": [{"role": "user", "content": "secretword alpha beta"}],
        }))
        .unwrap();
    let answer = rt.block_on(daemon.client().chat(&request)).unwrap();
    assert_eq!(answer.usage.completion_tokens, 3);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/metrics_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&daemon.socket)
        .arg("SmolLM2-135M-Instruct.Q4_1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\n--- r1d log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    // One line for the chat, with counts and the client's uid; never the words.
    let log = daemon.log();
    let uid = std::fs::metadata(&daemon.socket)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("route=/v1/chat/completions"))
        .unwrap_or_else(|| panic!("no request line:\n{log}"));
    for part in [
        "status=200",
        "model=\"DeepSeek-R1 echo\"",
        "generated_tokens=3",
        "ttft_ms=",
        "duration_ms=",
        &format!("client=uid={uid}"),
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    assert!(
        !log.contains("secretword"),
        "the prompt is in the log:\n{log}"
    );
}
