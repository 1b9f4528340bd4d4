//! systemd integration with systemd's own tools — this machine has no systemd as PID 1, so
//! nothing here boots it: a datagram socket of the test stands in for `NOTIFY_SOCKET`,
//! `systemd-socket-activate` passes the listening socket, `systemd-analyze` checks the units, and
//! the `.deb` (`make deb`, cargo-deb) is unpacked with `dpkg-deb`.
//!
//! A test whose tool is missing says so loudly and skips; under `CI=true` it fails
//! (`scripts/test` installs the tools).

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use r1d_client::wire::State;
use r1d_client::Client;
use r1d_tests::{
    bin_dir, binary, echo_config, echo_model, plugin_dir, swap_pair, Daemon, DaemonOptions,
};

use crate::ask;

/// The tool on PATH, or `None` after a loud skip message (a failure under `CI=true`).
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let message = format!(
            "{name} is not installed (scripts/test installs it: package systemd, or cargo install \
             cargo-deb --locked)"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
    }
    found
}

/// The test's own `NOTIFY_SOCKET`: collects what r1d sends.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
    /// Every message received so far, in order.
    received: Vec<String>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            _dir: dir,
            received: Vec::new(),
        }
    }

    /// Receives until a message satisfies `want` (returning it) or `timeout` passes.
    fn wait_for(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        if let Some(m) = self.received.iter().find(|m| want(m)) {
            return Some(m.clone());
        }
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.received.push(message.clone());
                if want(&message) {
                    return Some(message);
                }
            }
        }
        None
    }

    /// Receives for `duration` and counts the messages that satisfy `want` (counting those
    /// already received too).
    fn count_for(&mut self, duration: Duration, want: impl Fn(&str) -> bool) -> usize {
        let _ = self.wait_for(duration, |_| false);
        self.received.iter().filter(|m| want(m)).count()
    }
}

fn has_line(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

fn status_of(message: &str) -> Option<&str> {
    message.lines().find_map(|l| l.strip_prefix("STATUS="))
}

#[tokio::test]
async fn notify_socket_sees_loading_ready_watchdog_and_stopping() {
    let mut notify = NotifySocket::new();
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), r#"{"name": "echo-systemd"}"#);
    let plugins = plugin_dir(&["echo"]);
    let mut daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        plugin_dir: Some(plugins.path()),
        env: vec![
            ("NOTIFY_SOCKET", notify.path.to_string_lossy().into_owned()),
            // 0.4 s: a ping every 0.2 s.
            ("WATCHDOG_USEC", "400000".into()),
        ],
        ..Default::default()
    });

    let ready = notify
        .wait_for(Duration::from_secs(30), |m| has_line(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; got {:?}\n{}", notify.received, daemon.log()));
    // The model is resident when READY=1 comes, and the status says what is served.
    assert_eq!(
        status_of(&ready),
        Some("serving echo-systemd echo on echo (GPU 0/1 layers)"),
        "{:?}",
        notify.received
    );
    let health = daemon.client().health().await.unwrap();
    assert_eq!(health.status, State::Ready);
    // Before it: the load, named.
    let ready_at = notify.received.iter().position(|m| *m == ready).unwrap();
    assert!(
        notify.received[..ready_at]
            .iter()
            .filter_map(|m| status_of(m))
            .any(|s| s.starts_with("loading test.echo")),
        "no STATUS=loading before READY=1: {:?}",
        notify.received
    );
    assert_eq!(
        notify
            .received
            .iter()
            .filter(|m| has_line(m, "READY=1"))
            .count(),
        1
    );

    // Watchdog pings every 0.2 s while the engine is alive: at least 4 in 1.5 s.
    let pings = notify.count_for(Duration::from_millis(1500), |m| has_line(m, "WATCHDOG=1"));
    assert!(pings >= 4, "{pings} pings: {:?}", notify.received);

    daemon.terminate();
    let stopping = notify.wait_for(Duration::from_secs(10), |m| has_line(m, "STOPPING=1"));
    assert!(
        stopping.is_some(),
        "no STOPPING=1: {:?}\n{}",
        notify.received,
        daemon.log()
    );
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("r1d exit");
    assert!(status.success(), "{status}\n{}", daemon.log());
}

#[tokio::test]
async fn notify_without_a_model_is_ready_and_says_why_and_no_watchdog_unless_asked() {
    let mut notify = NotifySocket::new();
    let plugins = plugin_dir(&["echo"]);
    let daemon = Daemon::start(DaemonOptions {
        plugin_dir: Some(plugins.path()),
        env: vec![("NOTIFY_SOCKET", notify.path.to_string_lossy().into_owned())],
        ..Default::default()
    });
    let ready = notify
        .wait_for(Duration::from_secs(30), |m| has_line(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; got {:?}\n{}", notify.received, daemon.log()));
    // The same reason /health gives, on one line.
    let health = daemon.client().health().await.unwrap();
    assert_eq!(health.status, State::NoModel);
    let reason = health.error.expect("a reason");
    assert_eq!(
        status_of(&ready),
        Some(
            format!(
                "no model: {}",
                reason.split_whitespace().collect::<Vec<_>>().join(" ")
            )
            .as_str()
        )
    );
    let pings = notify.count_for(Duration::from_millis(800), |m| m.contains("WATCHDOG"));
    assert_eq!(pings, 0, "{:?}", notify.received);
}

/// Spawns r1d directly (for tests that need its pid or its stderr).
fn spawn_r1d(dir: &Path, config: &Path, env: &[(&str, String)]) -> std::process::Child {
    r1d_command(Command::new(binary("r1d")), dir, config, env)
        .spawn()
        .expect("failed to start r1d")
}

/// `cmd` (r1d, or a wrapper that runs it with the arguments that follow) with r1d's arguments:
/// user mode, the socket `r1d.sock` and the log `r1d.log` in `dir`, `config`, the built plugins.
fn r1d_command(mut cmd: Command, dir: &Path, config: &Path, env: &[(&str, String)]) -> Command {
    let plugins = bin_dir();
    cmd.arg("--user")
        .arg("--socket")
        .arg(dir.join("r1d.sock"))
        .arg("--config")
        .arg(config)
        .arg("--plugin-dir")
        .arg(plugins)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("r1d.log")).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn signal(child: &std::process::Child, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn sighup_reloads_the_config_between_reloading_and_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::new();
    let config = dir.path().join("r1d.toml");
    std::fs::write(&config, "").unwrap();
    let model = echo_model(dir.path(), r#"{"name": "echo-reloaded"}"#);
    let mut child = spawn_r1d(
        dir.path(),
        &config,
        &[("NOTIFY_SOCKET", notify.path.to_string_lossy().into_owned())],
    );
    let log = || std::fs::read_to_string(dir.path().join("r1d.log")).unwrap_or_default();
    assert!(
        notify
            .wait_for(Duration::from_secs(30), |m| has_line(m, "READY=1"))
            .is_some(),
        "{}",
        log()
    );

    // The config now names a model: SIGHUP loads it.
    std::fs::write(
        &config,
        format!("[model]\npath = {:?}\n", model.to_str().unwrap()),
    )
    .unwrap();
    let before = notify.received.len();
    signal(&child, "HUP");
    let reloading = notify
        .wait_for(Duration::from_secs(10), |m| has_line(m, "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1: {:?}\n{}", notify.received, log()));
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(usec.is_some_and(|u| u > 0), "{reloading:?}");
    let ready = notify
        .wait_for(Duration::from_secs(30), |m| {
            has_line(m, "READY=1") && m.contains("serving")
        })
        .unwrap_or_else(|| panic!("no READY=1 after reload: {:?}\n{}", notify.received, log()));
    assert_eq!(
        status_of(&ready),
        Some("serving echo-reloaded echo on echo (GPU 0/1 layers)")
    );
    assert!(notify.received.len() > before);
    let answer = Client::new(dir.path().join("r1d.sock"))
        .chat(&ask("reloaded fine"))
        .await
        .unwrap();
    assert_eq!(answer.choices[0].message.content, "RELOADED FINE");

    // An invalid config keeps the running model.
    std::fs::write(&config, "[model]\nnot_a_key = 1\n").unwrap();
    notify.received.clear();
    signal(&child, "HUP");
    let ready = notify
        .wait_for(Duration::from_secs(10), |m| has_line(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1: {:?}\n{}", notify.received, log()));
    assert_eq!(
        status_of(&ready),
        Some("serving echo-reloaded echo on echo (GPU 0/1 layers)")
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn journal_stderr_lines_carry_syslog_priorities() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("r1d.toml");
    std::fs::write(&config, "").unwrap();
    // JOURNAL_STREAM names r1d's stderr (device:inode), as systemd sets it.
    let log = dir.path().join("r1d.log");
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let mut cmd = Command::new(binary("r1d"));
    cmd.args(["--user", "--socket"])
        .arg(dir.path().join("r1d.sock"))
        .arg("--config")
        .arg(&config)
        .arg("--plugin-dir")
        .arg(bin_dir())
        .env("RUST_LOG", "info")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    // No model: a warning ("serving no model") after the info lines.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("serving no model") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("<6> INFO")), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4> WARN") && l.contains("serving no model")),
        "{text}"
    );
    // journald adds the time: none in the line.
    assert!(!lines.iter().any(|l| l.contains("Z  INFO")), "{text}");
}

/// The fields of one journald native-protocol datagram (`NAME=value\n`, or `NAME\n`, a 64-bit
/// little-endian length, the value and `\n` for values that may hold newlines).
fn journal_fields(mut d: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while let Some(end) = d.iter().position(|&b| b == b'\n' || b == b'=') {
        let name = String::from_utf8_lossy(&d[..end]).into_owned();
        if d[end] == b'=' {
            let rest = &d[end + 1..];
            let stop = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            fields.push((name, String::from_utf8_lossy(&rest[..stop]).into_owned()));
            d = rest.get(stop + 1..).unwrap_or_default();
        } else {
            let len = u64::from_le_bytes(d[end + 1..end + 9].try_into().unwrap()) as usize;
            let value = &d[end + 9..end + 9 + len];
            fields.push((name, String::from_utf8_lossy(value).into_owned()));
            d = d.get(end + 10 + len..).unwrap_or_default();
        }
    }
    fields
}

/// Under systemd with journald answering, each request is one journal entry whose fields are
/// journal fields. journald itself cannot run here: r1d runs in a mount namespace of its own
/// where the test's datagram socket is `/run/systemd/journal/socket`.
#[tokio::test]
async fn under_journald_the_request_line_is_an_entry_with_its_fields() {
    use std::os::unix::fs::MetadataExt as _;
    let Some(unshare) = tool("unshare") else {
        return;
    };
    if r1d_client::euid() != 0 {
        let message = "not running as root: a mount namespace needs it";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(run.join("systemd/journal")).unwrap();
    let journald = UnixDatagram::bind(run.join("systemd/journal/socket")).unwrap();
    // Read as journald does, all the time: a full socket queue would block r1d's logging.
    let (entries, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n) = journald.recv(&mut buf) {
            if entries.send(journal_fields(&buf[..n])).is_err() {
                break;
            }
        }
    });
    let model = echo_model(dir.path(), r#"{"name": "echo-journal"}"#);
    let config = dir.path().join("r1d.toml");
    std::fs::write(&config, echo_config(&model)).unwrap();
    // JOURNAL_STREAM names r1d's stderr (device:inode), as systemd sets it.
    let log = dir.path().join("r1d.log");
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let mut wrapper = Command::new(unshare);
    wrapper
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /run && exec "$@""#)
        .arg(&run)
        .arg(binary("r1d"));
    let mut cmd = r1d_command(
        wrapper,
        dir.path(),
        &config,
        &[("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))],
    );
    cmd.args(["--dbus", "off"])
        .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let client = Client::new(dir.path().join("r1d.sock"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .health()
        .await
        .map_or(true, |h| h.status != State::Ready)
    {
        assert!(
            Instant::now() < deadline,
            "r1d did not serve: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    client.chat(&ask("hello zanzibar")).await.unwrap();
    let mut entry = None;
    while entry.is_none() && Instant::now() < deadline {
        let Ok(fields) = received.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("TARGET").as_deref() == Some("r1d::request")
            && get("ROUTE").as_deref() == Some("/v1/chat/completions")
        {
            entry = Some(fields);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap();
    let fields = entry.unwrap_or_else(|| {
        panic!("no request entry reached the journal socket; stderr:\n{stderr}")
    });
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("MESSAGE"), Some("request"), "{fields:?}");
    assert_eq!(get("PRIORITY"), Some("6"), "{fields:?}");
    assert_eq!(get("SYSLOG_IDENTIFIER"), Some("r1d"), "{fields:?}");
    assert_eq!(get("STATUS"), Some("200"), "{fields:?}");
    assert_eq!(get("METHOD"), Some("POST"), "{fields:?}");
    assert!(
        get("MODEL").is_some_and(|m| m.contains("echo")),
        "{fields:?}"
    );
    assert_eq!(
        get("PROMPT_TOKENS").map(|t| t.parse::<u64>().is_ok()),
        Some(true),
        "{fields:?}"
    );
    assert_eq!(get("GENERATED_TOKENS"), Some("2"), "{fields:?}");
    assert!(
        get("DURATION_MS").is_some_and(|d| d.parse::<f64>().is_ok()),
        "{fields:?}"
    );
    // The words of the prompt are in no field, and nothing went to stderr instead.
    assert!(
        !fields.iter().any(|(_, v)| v.contains("zanzibar")),
        "{fields:?}"
    );
    assert!(!stderr.contains("request"), "{stderr}");
}

#[tokio::test]
async fn socket_activation_starts_r1d_on_the_first_connection_and_answers_it() {
    let Some(activate) = tool("systemd-socket-activate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let config = dir.path().join("r1d.toml");
    std::fs::write(&config, "").unwrap();
    let model = echo_model(dir.path(), r#"{"name": "echo-activated"}"#);
    let log = dir.path().join("r1d.log");
    let plugins = plugin_dir(&["echo"]);
    // r1d is only started when the first client connects.
    let mut activator = Command::new(activate)
        .arg("--listen")
        .arg(&socket)
        .arg("--")
        .arg(binary("r1d"))
        .args(["--user", "--socket"])
        // Not this one: the socket systemd passes wins.
        .arg(dir.path().join("configured.sock"))
        .arg("--config")
        .arg(&config)
        .arg("--plugin-dir")
        .arg(plugins.path())
        .arg("--model")
        .arg(&model)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("failed to run systemd-socket-activate");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !read_log().contains("r1d"),
        "r1d started before a client came:\n{}",
        read_log()
    );

    // The first request (sent while r1d starts and loads) is answered.
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        Client::new(&socket).chat(&ask("first one in")),
    )
    .await
    .expect("no answer within 60 s")
    .unwrap_or_else(|e| panic!("{e}\n{}", read_log()));
    assert_eq!(answer.choices[0].message.content, "FIRST ONE IN");
    let text = read_log();
    assert!(
        text.contains(&format!(
            "listening on {} (socket activation)",
            socket.display()
        )),
        "{text}"
    );
    assert!(!dir.path().join("configured.sock").exists());

    // systemd-socket-activate exec'd r1d: SIGTERM stops it, and it leaves the socket file,
    // which belongs to systemd.
    signal(&activator, "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while activator.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "r1d did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(socket.exists(), "r1d removed systemd's socket");
}

/// The units with ExecStart= pointing at the built binary, in a scratch directory.
fn scratch_units(dir: &Path) -> Vec<PathBuf> {
    let systemd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let r1d = binary("r1d");
    let mut units = Vec::new();
    for (src, sub) in [
        ("r1d.service", "system"),
        ("r1d.socket", "system"),
        ("user/r1d.service", "user"),
        ("user/r1d.socket", "user"),
    ] {
        let text = std::fs::read_to_string(systemd.join(src)).unwrap();
        assert!(text.contains("ExecStart=/usr/bin/r1d") || src.ends_with(".socket"));
        let text = text.replace("/usr/bin/r1d", r1d.to_str().unwrap());
        let out_dir = dir.join(sub);
        std::fs::create_dir_all(&out_dir).unwrap();
        let name = Path::new(src).file_name().unwrap();
        std::fs::write(out_dir.join(name), text).unwrap();
        units.push(out_dir.join(name));
    }
    units
}

#[test]
fn units_pass_systemd_analyze_verify_and_security_exposure_is_at_most_2() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    scratch_units(dir.path());
    let runtime = dir.path().join("xdg-runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    for (scope, sub) in [(None, "system"), (Some("--user"), "user")] {
        let out = Command::new(&analyze)
            .args(scope)
            .args(["verify", "--man=no", "./r1d.service", "./r1d.socket"])
            .current_dir(dir.path().join(sub))
            // A user manager needs a runtime directory, even to verify.
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify ({sub}) failed:\n{stderr}"
        );
    }

    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager", "./r1d.service"])
        .current_dir(dir.path().join("system"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for r1d.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    println!("systemd-analyze security --offline=true r1d.service: exposure {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");

    // The user unit: only what a user manager applies everywhere (see the unit's notes); the
    // sandbox drop-in for machines with unprivileged user namespaces brings it under 2.5.
    let systemd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let user = dir.path().join("user");
    let user_score = exposure(&analyze, &user, true, &runtime);
    println!("systemd-analyze security --user --offline=true r1d.service: exposure {user_score}");
    assert!(user_score <= 6.3, "user unit exposure {user_score} > 6.3");
    std::fs::create_dir(user.join("r1d.service.d")).unwrap();
    std::fs::copy(
        systemd.join("user/r1d.service.d/sandbox.conf.example"),
        user.join("r1d.service.d/sandbox.conf"),
    )
    .unwrap();
    verify(&analyze, &user, true, &runtime);
    let sandboxed = exposure(&analyze, &user, true, &runtime);
    println!("… with the user-sandbox.conf drop-in: exposure {sandboxed}");
    assert!(sandboxed <= 2.5, "user unit + sandbox drop-in: {sandboxed}");

    // The system unit with the network drop-in (for pulls) verifies and stays at most 2.0.
    let system = dir.path().join("system");
    std::fs::create_dir(system.join("r1d.service.d")).unwrap();
    std::fs::copy(
        systemd.join("r1d.service.d/network.conf.example"),
        system.join("r1d.service.d/network.conf"),
    )
    .unwrap();
    verify(&analyze, &system, false, &runtime);
    let with_network = exposure(&analyze, &system, false, &runtime);
    println!("… r1d.service with the network.conf drop-in: exposure {with_network}");
    assert!(with_network > score, "the drop-in did not apply");
    assert!(with_network <= 2.0, "with network: {with_network}");
}

/// `systemd-analyze [--user] verify` of `dir`'s r1d.service and r1d.socket (and drop-ins): no
/// complaint.
fn verify(analyze: &Path, dir: &Path, user: bool, runtime: &Path) {
    let out = Command::new(analyze)
        .args(user.then_some("--user"))
        .args(["verify", "--man=no", "./r1d.service", "./r1d.socket"])
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify ({}) failed:\n{stderr}",
        dir.display()
    );
}

/// The overall exposure `systemd-analyze [--user] security --offline=true` gives `dir`'s
/// r1d.service (with its drop-ins).
fn exposure(analyze: &Path, dir: &Path, user: bool, runtime: &Path) -> f64 {
    let out = Command::new(analyze)
        .args(user.then_some("--user"))
        .args(["security", "--offline=true", "--no-pager", "./r1d.service"])
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split_once("Overall exposure level for r1d.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[test]
fn deb_holds_every_file_with_its_mode() {
    let cargo = std::env::var_os("CARGO").map(PathBuf::from);
    let has_cargo_deb = cargo.as_ref().is_some_and(|c| {
        Command::new(c)
            .args(["deb", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !has_cargo_deb && tool("cargo-deb").is_none() {
        return;
    }
    let (Some(_), Some(_)) = (tool("make"), tool("dpkg-deb")) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scratch = tempfile::tempdir().unwrap();
    let deb = scratch.path().join("r1d.deb");
    // `make deb` packs what `cargo build --release --workspace` built; it builds nothing.
    let out = Command::new("make")
        .arg("-C")
        .arg(&root)
        .arg("deb")
        .arg(format!("CARGO_DEB_FLAGS=--output {}", deb.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make deb failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let unpacked = scratch.path().join("root");
    let ok = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .unwrap()
        .success();
    assert!(ok);

    let mut expected: Vec<(&str, u32)> = vec![
        ("usr/bin/r1d", 0o755),
        ("usr/bin/r1ctl", 0o755),
        ("usr/lib/r1d/plugins/libr1_plugin_llamacpp.so", 0o644),
        ("usr/lib/r1d/plugins/libr1_plugin_onnxruntime.so", 0o644),
        ("usr/lib/r1d/plugins/libr1_plugin_tensorrt.so", 0o644),
        ("usr/lib/systemd/system/r1d.service", 0o644),
        ("usr/lib/systemd/system/r1d.socket", 0o644),
        ("usr/lib/systemd/user/r1d.service", 0o644),
        ("usr/lib/systemd/user/r1d.socket", 0o644),
        ("usr/lib/sysusers.d/r1d.conf", 0o644),
        ("usr/lib/tmpfiles.d/r1d.conf", 0o644),
        ("etc/r1d/r1d.toml", 0o644),
        ("usr/share/man/man1/r1d.1", 0o644),
        ("usr/share/man/man1/r1d-plan.1", 0o644),
        ("usr/share/man/man1/r1ctl.1", 0o644),
        ("usr/share/man/man1/r1ctl-ask.1", 0o644),
        ("usr/share/bash-completion/completions/r1d", 0o644),
        ("usr/share/bash-completion/completions/r1ctl", 0o644),
        ("usr/share/zsh/vendor-completions/_r1d", 0o644),
        ("usr/share/zsh/vendor-completions/_r1ctl", 0o644),
        ("usr/share/fish/vendor_completions.d/r1d.fish", 0o644),
        ("usr/share/fish/vendor_completions.d/r1ctl.fish", 0o644),
        ("usr/share/doc/r1d/copyright", 0o644),
        ("usr/share/doc/r1d/examples/network.conf", 0o644),
        ("usr/share/doc/r1d/examples/user-sandbox.conf", 0o644),
        ("usr/share/doc/r1d/examples/tcp.conf", 0o644),
        ("usr/share/doc/r1d/examples/r1d-tcp.socket", 0o644),
        ("usr/share/dbus-1/services/org.r1d.R1.service", 0o644),
    ];
    // The D-Bus and polkit files, when the tree has them.
    for (src, dest) in [
        (
            "org.r1d.R1.conf",
            "usr/share/dbus-1/system.d/org.r1d.R1.conf",
        ),
        (
            "org.r1d.R1.service",
            "usr/share/dbus-1/system-services/org.r1d.R1.service",
        ),
        (
            "org.r1d.R1.policy",
            "usr/share/polkit-1/actions/org.r1d.R1.policy",
        ),
    ] {
        if root.join("systemd").join(src).exists() {
            expected.push((dest, 0o644));
        }
    }
    // The CPU-variants plugin, with its libraries and ggml's modules, when it was built.
    let variants = root.join("target/release/llamacpp-cpu-variants");
    let mut variant_files = Vec::new();
    if variants.is_dir() {
        expected.push((
            "usr/lib/r1d/plugins/libr1_plugin_llamacpp_cpu_variants.so",
            0o644,
        ));
        for entry in std::fs::read_dir(&variants).unwrap() {
            variant_files.push(format!(
                "usr/lib/r1d/plugins/llamacpp-cpu-variants/{}",
                entry.unwrap().file_name().to_string_lossy()
            ));
        }
        assert!(
            variant_files.iter().any(|f| f.contains("libggml-cpu-")),
            "{variant_files:?}"
        );
    }
    expected.extend(variant_files.iter().map(|f| (f.as_str(), 0o644)));
    for (path, mode) in &expected {
        let meta = std::fs::metadata(unpacked.join(path))
            .unwrap_or_else(|e| panic!("{path} is not in the package: {e}"));
        assert_eq!(meta.permissions().mode() & 0o7777, *mode, "mode of {path}");
    }
    // The test backend is not shipped.
    assert!(!unpacked
        .join("usr/lib/r1d/plugins/libr1_plugin_echo.so")
        .exists());
    // The unit starts the packaged binary; the config is a conffile.
    let unit =
        std::fs::read_to_string(unpacked.join("usr/lib/systemd/system/r1d.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/bin/r1d --system\n"));
    // User mode: the session bus starts the user unit (or r1d --user without systemd).
    let session =
        std::fs::read_to_string(unpacked.join("usr/share/dbus-1/services/org.r1d.R1.service"))
            .unwrap();
    for line in [
        "\n[D-BUS Service]\n",
        "\nName=org.r1d.R1\n",
        "\nSystemdService=r1d.service\n",
        "\nExec=/usr/bin/r1d --user --dbus session\n",
    ] {
        assert!(session.contains(line), "{line:?} missing:\n{session}");
    }
    // Every man page and completion the binaries generate is packaged.
    let assets = scratch.path().join("assets");
    for bin in ["r1d", "r1ctl"] {
        let ok = Command::new(unpacked.join("usr/bin").join(bin))
            .arg("--generate-assets")
            .arg(&assets)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{bin} --generate-assets");
    }
    for page in std::fs::read_dir(assets.join("man")).unwrap() {
        let name = page.unwrap().file_name();
        let packaged = unpacked.join("usr/share/man/man1").join(&name);
        assert!(packaged.is_file(), "{name:?} is not packaged");
    }
    let control = scratch.path().join("control");
    assert!(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&control)
        .status()
        .unwrap()
        .success());
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/r1d/r1d.toml");
    for script in ["postinst", "prerm", "postrm"] {
        let mode = std::fs::metadata(control.join(script))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{script}");
    }
    // The packaged binary runs, and its default config parses.
    let out = Command::new(unpacked.join("usr/bin/r1d"))
        .arg("--config")
        .arg(unpacked.join("etc/r1d/r1d.toml"))
        .args(["--user", "plan", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The session-bus activation file of user mode (`systemd/user/org.r1d.R1.service`): a private
/// session `dbus-daemon` that reads it from its service directory starts r1d on the first call
/// to `org.r1d.R1`, and that call is answered. A bus without systemd runs the file's `Exec=`
/// (here pointed at the built binary, with a private socket and config); where the bus is
/// systemd-activated, `SystemdService=r1d.service` starts the user unit instead — that path needs
/// a user manager, which this machine does not run.
#[test]
fn session_bus_activation_file_starts_r1d_on_the_first_call() {
    let (Some(_), Some(gdbus)) = (tool("dbus-daemon"), tool("gdbus")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services");
    std::fs::create_dir(&services).unwrap();
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/user/org.r1d.R1.service"),
    )
    .unwrap();
    assert!(
        shipped.contains("\nSystemdService=r1d.service\n"),
        "{shipped}"
    );
    let config = dir.path().join("r1d.toml");
    std::fs::write(&config, "").unwrap();
    let socket = dir.path().join("r1d.sock");
    let exec = format!(
        "{} --user --config {} --socket {}",
        binary("r1d").display(),
        config.display(),
        socket.display()
    );
    std::fs::write(
        services.join("org.r1d.R1.service"),
        shipped.replace("/usr/bin/r1d --user", &exec),
    )
    .unwrap();
    let bus_config = dir.path().join("session.conf");
    std::fs::write(
        &bus_config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={dir}/bus</listen>
  <servicedir>{services}</servicedir>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            dir = dir.path().display(),
            services = services.display()
        ),
    )
    .unwrap();
    // The activated r1d inherits the bus's environment: private stores, quiet OpenMP.
    let mut bus = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", bus_config.display()))
        .args(["--nofork", "--print-address=1"])
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .env("HF_HUB_CACHE", dir.path().join("hf"))
        .env("OLLAMA_MODELS", dir.path().join("ollama"))
        .env("OMP_WAIT_POLICY", "passive")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("dbus-daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let mut address = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(bus.stdout.take().unwrap()),
        &mut address,
    )
    .unwrap();
    let address = address.trim().to_owned();
    let call = |args: &[&str]| {
        Command::new(&gdbus)
            .args(["call", "--session", "--timeout", "60"])
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .output()
            .unwrap()
    };
    let out = call(&[
        "--dest",
        "org.r1d.R1",
        "--object-path",
        "/org/r1d/R1",
        "--method",
        "org.freedesktop.DBus.Properties.Get",
        "org.r1d.R1.Manager1",
        "Version",
    ]);
    // r1d serves HTTP beside the bus: its socket is there while it runs.
    let socket_served = socket.exists();
    // Whatever happens, stop the r1d the bus started.
    let pid = call(&[
        "--dest",
        "org.freedesktop.DBus",
        "--object-path",
        "/org/freedesktop/DBus",
        "--method",
        "org.freedesktop.DBus.GetConnectionUnixProcessID",
        "org.r1d.R1",
    ]);
    let pid: Option<i32> = String::from_utf8_lossy(&pid.stdout)
        .trim()
        .trim_start_matches("(uint32 ")
        .trim_end_matches(",)")
        .parse()
        .ok();
    if let Some(pid) = pid {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    let _ = bus.kill();
    let _ = bus.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the call was not answered: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.path().join("dbus-daemon.log")).unwrap_or_default()
    );
    assert_eq!(
        stdout.trim(),
        format!("(<'{}'>,)", env!("CARGO_PKG_VERSION")),
        "{stdout}"
    );
    assert!(pid.is_some(), "no process owned org.r1d.R1");
    assert!(socket_served, "the activated r1d did not serve its socket");
}

#[tokio::test]
async fn notify_status_follows_a_swap_after_a_config_edit() {
    let mut notify = NotifySocket::new();
    let models = tempfile::tempdir().unwrap();
    let (first, slow) = swap_pair(models.path(), 1000);
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&echo_config(&first)),
        env: vec![("NOTIFY_SOCKET", notify.path.to_string_lossy().into_owned())],
        ..Default::default()
    });
    notify
        .wait_for(Duration::from_secs(30), |m| has_line(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; got {:?}\n{}", notify.received, daemon.log()));
    daemon.edit_config(&echo_config(&slow));
    let swapping = notify.wait_for(Duration::from_secs(10), |m| {
        status_of(m).is_some_and(|s| s.starts_with("swapping first for slow.echo"))
    });
    assert!(
        swapping.is_some(),
        "{:?}\n{}",
        notify.received,
        daemon.log()
    );
    let serving = notify.wait_for(Duration::from_secs(10), |m| {
        status_of(m).is_some_and(|s| s.starts_with("serving slow"))
    });
    assert!(serving.is_some(), "{:?}\n{}", notify.received, daemon.log());
}

/// A client that opens a stream and then stops reading (without closing) must not stall
/// everyone: the next client is answered meanwhile, the stalled request is cancelled after
/// `[server] stall_timeout_s`, and the watchdog keeps beating throughout (the answer's thread
/// waits on that client in short steps, alive, instead of blocking on its full buffer).
#[tokio::test]
async fn stalled_reader_is_cancelled_after_the_stall_timeout_and_the_watchdog_keeps_beating() {
    use tokio::io::AsyncWriteExt;

    let mut notify = NotifySocket::new();
    let models = tempfile::tempdir().unwrap();
    // A context large enough for an answer that outgrows every buffer on the way.
    let model = echo_model(
        models.path(),
        r#"{"name": "echo-stall", "context_length": 2000000}"#,
    );
    let plugins = plugin_dir(&["echo"]);
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        plugin_dir: Some(plugins.path()),
        config: Some("[server]\nstall_timeout_s = 3\n"),
        env: vec![
            ("NOTIFY_SOCKET", notify.path.to_string_lossy().into_owned()),
            // 0.4 s: a ping every 0.2 s while the engine shows progress.
            ("WATCHDOG_USEC", "400000".into()),
        ],
        ..Default::default()
    });
    notify
        .wait_for(Duration::from_secs(30), |m| has_line(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; got {:?}\n{}", notify.received, daemon.log()));
    let client = daemon.client();

    // The stalled reader: a raw connection that sends its request and never reads.
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "flood flood flood [[flood]]"}],
        "stream": true,
        "max_tokens": 1_900_000,
    })
    .to_string();
    let mut stalled = tokio::net::UnixStream::connect(&daemon.socket)
        .await
        .unwrap();
    stalled
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: r1d\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let start = Instant::now();
    while client.status().await.unwrap().active_requests == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pings_before = notify.count_for(Duration::ZERO, |m| has_line(m, "WATCHDOG=1"));

    // Another client is answered, and right: the stalled request was cancelled, not finished
    // (its 1.9 million tokens would take far longer than the test allows).
    let answer = tokio::time::timeout(Duration::from_secs(60), client.chat(&ask("next")))
        .await
        .unwrap_or_else(|_| panic!("the next client was never answered\n{}", daemon.log()))
        .unwrap();
    assert_eq!(answer.choices[0].message.content, "NEXT");
    // The next client ran beside the stalled one (answers run in parallel); the stalled one is
    // cancelled once its buffer has been full for the stall timeout.
    let start = Instant::now();
    while !daemon
        .log()
        .contains("a client stopped reading its answer for 3 s")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the stalled request was never cancelled\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = daemon.log();
    assert!(!log.contains("has shown no progress"), "{log}");
    // Pings went on while the engine waited for the stalled client (≥ 3 s at one per 0.2 s).
    let pings_after = notify.count_for(Duration::from_millis(300), |m| has_line(m, "WATCHDOG=1"));
    assert!(
        pings_after >= pings_before + 8,
        "watchdog pings: {pings_before} before the stall, {pings_after} after\n{log}"
    );
    drop(stalled);
}
