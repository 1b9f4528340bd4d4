//! Real third-party clients, written by nobody here: the `openai` and `ollama` Python packages,
//! pointed at r1d's socket through an httpx transport (`scripts/install-test-clients` installs
//! them; `R1D_TEST_PYTHON` names the interpreter). The scripts in `tests/clients/` assert.

use std::path::{Path, PathBuf};
use std::process::Command;

use r1d_tests::{echo_model, Daemon, DaemonOptions};

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

fn run_client(script: &str) {
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
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(script);
    // The daemon listens once start() returns; the model (an echo file) is resident at once.
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
    run_client("openai_client.py");
}

#[test]
fn ollama_python_client_works_unchanged() {
    run_client("ollama_client.py");
}
