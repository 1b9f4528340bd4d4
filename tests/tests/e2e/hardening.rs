//! A service that cannot be taken down from the outside (issue 15): another local user cannot
//! impersonate r1d, idle or slow connections cannot exhaust it, special files where models and
//! configs are expected cannot block it, user strings cannot forge log lines, and it stops
//! cleanly (exit status 0) on SIGTERM whatever it is doing and whatever its stderr is.
//!
//! The two-user tests run as root and use `setpriv` (util-linux) with throwaway uids that need
//! no passwd entry; without root or `setpriv` they say so and skip (and fail under CI).

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use r1d_client::wire::State;
use r1d_tests::{binary, echo_model, fixture, plugin, plugin_dir, Daemon, DaemonOptions, SMOLLM2};

use crate::ask;

/// The uid of the other user who tries to impersonate r1d.
const ATTACKER: u32 = 47011;
/// The uid of the user whose r1d and r1ctl are attacked.
const VICTIM: u32 = 47012;

fn skip_or_fail(why: &str) {
    let message = format!("{why}; this test needs it");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
}

/// Whether this process may run commands as other users (root with `setpriv`).
fn can_switch_users() -> bool {
    if r1d_client::euid() != 0 {
        skip_or_fail("not running as root");
        return false;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip_or_fail("setpriv (util-linux) is missing");
        return false;
    }
    true
}

/// A directory others may enter and read, holding copies of r1d, r1ctl and the echo plugin (the
/// build directory may be closed to other users).
fn public_bin_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("r1d-bin-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for src in [binary("r1d"), binary("r1ctl"), plugin("echo")] {
        let dst = dir.path().join(src.file_name().unwrap());
        std::fs::copy(&src, &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// A home directory owned by `uid` below `base`.
fn home_of(base: &Path, uid: u32) -> PathBuf {
    let home = base.join(format!("home-{uid}"));
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), Some(uid)).unwrap();
    home
}

/// `program args…` as `uid` (and gid `uid`, no supplementary groups), with a minimal
/// environment: no `XDG_RUNTIME_DIR`, no `R1D_SOCKET`.
fn as_user(uid: u32, home: &Path, program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

fn wait_for_socket(path: &Path, child: &mut std::process::Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "r1d exited with {status} before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "r1d did not listen on {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a child on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Without `XDG_RUNTIME_DIR` the user socket is `/tmp/r1d-$UID/r1d.sock`, a name anyone can
/// predict. Another user creates that directory first and serves an r1d there (its socket open
/// to all): the victim's `r1ctl` refuses to send its prompt, naming the uid it found, and the
/// victim's r1d refuses to start, naming the directory and its owner. Once the directory is gone,
/// the victim's r1d makes it itself (0700) and the victim's r1ctl talks to it.
#[test]
fn another_user_cannot_impersonate_r1d_where_xdg_runtime_dir_is_unset() {
    if !can_switch_users() {
        return;
    }
    let bin = public_bin_dir();
    let r1d = bin.path().join("r1d");
    let r1ctl = bin.path().join("r1ctl");
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let trap = PathBuf::from(format!("/tmp/r1d-{VICTIM}"));
    let _ = std::fs::remove_dir_all(&trap);

    // The attacker: the victim's predictable directory, an r1d serving in it, the socket 0666.
    let attacker_home = home_of(base.path(), ATTACKER);
    let made = as_user(
        ATTACKER,
        &attacker_home,
        Path::new("/bin/mkdir"),
        &["-m", "0755", trap.to_str().unwrap()],
    )
    .status()
    .unwrap();
    assert!(made.success());
    let attacker_log = base.path().join("attacker.log");
    let socket = trap.join("r1d.sock");
    let mut attacker = as_user(
        ATTACKER,
        &attacker_home,
        &r1d,
        &[
            "--user",
            "--dbus",
            "off",
            "--socket",
            socket.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&attacker_log).unwrap())
    .spawn()
    .unwrap();
    wait_for_socket(&socket, &mut attacker, &attacker_log);
    let attacker = Killed(attacker);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    // The victim's r1ctl: nothing is sent, and the message names the uid that answered.
    let victim_home = home_of(base.path(), VICTIM);
    let out = as_user(VICTIM, &victim_home, &r1ctl, &["ask", "my secret question"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("uid {ATTACKER}")) && stderr.contains("impersonat"),
        "{stderr}"
    );

    // The victim's own r1d refuses the directory, and says whose it is.
    let out = as_user(VICTIM, &victim_home, &r1d, &["--user", "--dbus", "off"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "r1d started in another user's directory:\n{stderr}"
    );
    assert!(
        stderr.contains(trap.to_str().unwrap()) && stderr.contains(&format!("uid {ATTACKER}")),
        "{stderr}"
    );

    // Without the trap, the victim's r1d makes its directory itself, private, and serves.
    drop(attacker);
    std::fs::remove_dir_all(&trap).unwrap();
    let victim_log = base.path().join("victim.log");
    let mut victim = as_user(VICTIM, &victim_home, &r1d, &["--user", "--dbus", "off"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&victim_log).unwrap())
        .spawn()
        .unwrap();
    wait_for_socket(&socket, &mut victim, &victim_log);
    let _victim = Killed(victim);
    let meta = std::fs::symlink_metadata(&trap).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (VICTIM, 0o700));
    let out = as_user(VICTIM, &victim_home, &r1ctl, &["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(_victim);
    let _ = std::fs::remove_dir_all(&trap);
}

/// The system socket that r1d binds itself as root is group `r1d`, mode 0660 (or, without that
/// group, root's alone, with a warning saying so).
#[test]
fn the_system_socket_r1d_binds_as_root_is_group_r1d_and_0660() {
    if r1d_client::euid() != 0 {
        skip_or_fail("not running as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("r1d.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\ndir = {:?}\n",
            dir.path().join("models").display().to_string()
        ),
    )
    .unwrap();
    let socket = dir.path().join("run/r1d.sock");
    let log = dir.path().join("r1d.log");
    let child = Command::new(binary("r1d"))
        .args(["--system", "--dbus", "off", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .env("XDG_CACHE_HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    wait_for_socket(&socket, &mut child.0, &log);
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    match r1d_client::system_group_gid() {
        Some(gid) => assert_eq!(meta.gid(), gid),
        None => {
            let deadline = Instant::now() + Duration::from_secs(5);
            let logged = || std::fs::read_to_string(&log).unwrap_or_default();
            while !logged().contains("there is no group \"r1d\"") {
                assert!(Instant::now() < deadline, "{}", logged());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn read_all(stream: &mut std::os::unix::net::UnixStream) -> String {
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// Idle connections cannot stop r1d from accepting anyone: over `[server] max_connections` a
/// connection is answered 503 at once, idle ones (never sending a request, or between requests),
/// one trickling its headers in and one whose body stops are closed after
/// `[server] idle_timeout_s`, after which clients are served again.
#[tokio::test]
async fn idle_and_slow_connections_are_bounded_and_closed() {
    let config = "[server]\nmax_connections = 16\nidle_timeout_s = 2\n";
    let daemon = Daemon::start(DaemonOptions {
        config: Some(config),
        ..Default::default()
    });
    daemon.settled().await;
    let socket = daemon.socket.clone();
    let result = tokio::task::spawn_blocking(move || {
        use std::os::unix::net::UnixStream;
        // 300 idle connections: 16 are held (the first ones), the rest answered 503.
        let mut idle: Vec<UnixStream> = (0..300)
            .map(|_| UnixStream::connect(&socket).unwrap())
            .collect();
        let mut over = idle.pop().unwrap();
        over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let refused = read_all(&mut over);
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused:?}");
        let started = Instant::now();
        for s in &mut idle {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        // Every held idle connection is closed after the idle timeout (EOF, not a timeout), every
        // other one was answered 503. Which ones are held is the accept order's business: the
        // connection of the status request before them may still count while r1d sees it close.
        let mut held = 0;
        for s in idle.iter_mut() {
            let answer = read_all(s);
            if answer.is_empty() {
                held += 1;
            } else {
                assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
            }
        }
        assert!((15..=16).contains(&held), "{held} idle connections were held");
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(6), "closed after {waited:?}");
        drop(idle);
        // Served again: one request on a connection kept alive, then idle, then closed.
        let mut alive = UnixStream::connect(&socket).unwrap();
        alive
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        alive
            .write_all(b"GET /health HTTP/1.1\r\nhost: r1d\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = alive.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 "), "{head}");
        let idle_since = Instant::now();
        let rest = read_all(&mut alive);
        assert!(rest.is_empty(), "{rest}");
        let idle_for = idle_since.elapsed();
        assert!(
            idle_for >= Duration::from_millis(1500) && idle_for < Duration::from_secs(6),
            "{idle_for:?}"
        );
        // Headers trickled in a byte at a time never complete in time: closed.
        let mut slow = UnixStream::connect(&socket).unwrap();
        let trickle_start = Instant::now();
        let mut closed = false;
        for b in b"GET /health HTTP/1.1\r\nhost: r1d\r\nx-slow: "
            .iter()
            .cycle()
            .take(200)
        {
            if slow.write_all(&[*b]).is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            closed,
            "a trickling client was kept for {:?}",
            trickle_start.elapsed()
        );
        assert!(trickle_start.elapsed() < Duration::from_secs(8));
        // A body that stops after a few bytes: refused (4xx) and closed after the timeout.
        let mut stalled = UnixStream::connect(&socket).unwrap();
        stalled
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stalled
            .write_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: r1d\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"messa",
            )
            .unwrap();
        let body_start = Instant::now();
        let answer = read_all(&mut stalled);
        let held = body_start.elapsed();
        assert!(
            held >= Duration::from_millis(1500) && held < Duration::from_secs(6),
            "a stalled body held its connection {held:?}: {answer:?}"
        );
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );
    })
    .await;
    if let Err(e) = result {
        panic!("{e}\n{}", daemon.log());
    }
    // And r1d still serves.
    assert!(daemon.client().health().await.is_ok(), "{}", daemon.log());
}

/// The units raise the file limit, so the connection limit (not the descriptor limit) is what
/// a flood of connections meets.
#[test]
fn the_units_raise_the_file_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for unit in ["systemd/r1d.service", "systemd/user/r1d.service"] {
        let text = std::fs::read_to_string(root.join(unit)).unwrap();
        let limit: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("LimitNOFILE="))
            .unwrap_or_else(|| panic!("{unit} sets no LimitNOFILE="))
            .trim()
            .parse()
            .unwrap();
        assert!(limit >= 65536, "{unit}: LimitNOFILE={limit}");
    }
}

fn fifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

/// FIFOs where a config or a model is expected are refused at once, by name — never waited on
/// (a FIFO blocks `open` until a writer comes, which blocked the engine or the whole start).
#[tokio::test]
async fn fifos_where_a_config_or_a_model_is_expected_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A config that is a FIFO: r1d stops at once with the file's name.
    let config = dir.path().join("r1d.toml");
    fifo(&config);
    let started = Instant::now();
    let out = Command::new(binary("r1d"))
        .args(["--user", "--dbus", "off", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stderr.contains("r1d.toml") && stderr.contains("not a regular file"),
        "{stderr}"
    );

    // A config over 1 MiB: refused with its size.
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "#".repeat(2 << 20)).unwrap();
    let out = Command::new(binary("r1d"))
        .args(["--user", "--dbus", "off", "--config"])
        .arg(&big)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("big.toml") && stderr.contains("1048576"),
        "{stderr}"
    );

    // A model that is a FIFO: no model, with the reason; the API answers; and while an echo
    // model is served, loading the FIFO is refused and the echo model goes on answering.
    let model = dir.path().join("model.gguf");
    fifo(&model);
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        ..Default::default()
    });
    let health = tokio::time::timeout(Duration::from_secs(20), daemon.settled())
        .await
        .expect("the engine hangs on a FIFO");
    assert_eq!(health.status, State::NoModel);
    let error = health.error.unwrap_or_default();
    assert!(error.contains("FIFO"), "{error}");
    let echo = echo_model(dir.path(), r#"{"name": "e"}"#);
    let loaded: Result<serde_json::Value, _> = daemon
        .client()
        .post_json(
            "/r1/load",
            &serde_json::json!({"path": echo, "backend": "echo"}),
        )
        .await;
    loaded.unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    let refused: Result<serde_json::Value, _> = tokio::time::timeout(
        Duration::from_secs(20),
        daemon
            .client()
            .post_json("/r1/load", &serde_json::json!({"path": model})),
    )
    .await
    .expect("loading a FIFO hangs");
    let e = refused.unwrap_err().to_string();
    assert!(e.contains("FIFO"), "{e}");
    let answer = daemon.client().chat(&ask("still here")).await.unwrap();
    assert_eq!(answer.choices[0].message.content, "STILL HERE");
    // A FIFO named like a model in the models directory does not block the listing.
    let models = daemon.dir.path().join("data/r1d/models");
    std::fs::create_dir_all(&models).unwrap();
    fifo(&models.join("listed.gguf"));
    let list: r1d_client::wire::StoreModelList = tokio::time::timeout(
        Duration::from_secs(20),
        daemon.client().get_json("/r1/models", false),
    )
    .await
    .expect("the listing hangs on a FIFO")
    .unwrap();
    assert!(
        !serde_json::to_string(&list)
            .unwrap()
            .contains("listed.gguf"),
        "{list:?}"
    );
}

/// The scan of the models directory does not follow a symlink out of it.
#[tokio::test]
async fn the_models_scan_does_not_follow_symlinks_out_of_its_directory() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("elsewhere.gguf"), b"GGUF\x03\0\0\0").unwrap();
    let daemon = Daemon::start(DaemonOptions::default());
    let models = daemon.dir.path().join("data/r1d/models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("inside.gguf"), b"GGUF\x03\0\0\0").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("elsewhere.gguf"),
        models.join("link-out.gguf"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), models.join("dir-out")).unwrap();
    std::os::unix::fs::symlink(models.join("inside.gguf"), models.join("link-in.gguf")).unwrap();
    let list: r1d_client::wire::StoreModelList =
        daemon.client().get_json("/r1/models", false).await.unwrap();
    let text = serde_json::to_string(&list).unwrap();
    assert!(
        text.contains("inside.gguf") && text.contains("link-in.gguf"),
        "{text}"
    );
    assert!(
        !text.contains("elsewhere") && !text.contains("link-out") && !text.contains("dir-out"),
        "{text}"
    );
}

/// A path from a request that carries a newline and a fake log line stays on its own line.
#[tokio::test]
async fn user_strings_cannot_forge_log_lines() {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), r#"{"name": "e"}"#);
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        args: vec!["--backend".into(), "echo".into()],
        ..Default::default()
    });
    daemon.settled().await;
    let forged =
        "/nowhere/x.gguf\n2026-01-01T00:00:00Z  INFO r1d: FORGED serving model evil\u{1b}[2J";
    let _ = daemon
        .client()
        .post_json::<_, serde_json::Value>("/r1/load", &serde_json::json!({"path": forged}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains("FORGED") {
        assert!(
            Instant::now() < deadline,
            "the path was not logged:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = daemon.log();
    for line in log.lines().filter(|l| l.contains("FORGED")) {
        assert!(
            line.contains("/nowhere/x.gguf"),
            "a forged line: {line:?}\n{log}"
        );
        assert!(
            !line.contains('\u{1b}'),
            "an escape sequence reached the log: {line:?}"
        );
    }
}

/// SIGTERM stops r1d with status 0 even when its stderr is a pipe nobody reads any more (each
/// log line then fails with EPIPE).
#[test]
fn sigterm_stops_r1d_when_its_stderr_is_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let model = echo_model(dir.path(), r#"{"name": "e"}"#);
    let socket = dir.path().join("r1d.sock");
    let plugins = plugin_dir(&["echo"]);
    let mut child = Command::new(binary("r1d"))
        .args([
            "--user",
            "--dbus",
            "off",
            "--backend",
            "echo",
            "--config",
            "/dev/null",
        ])
        .arg("--socket")
        .arg(&socket)
        .arg("--plugin-dir")
        .arg(plugins.path())
        .arg("--model")
        .arg(&model)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "r1d did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nobody reads stderr any more.
    drop(child.stderr.take());
    // Something to log (each request is logged at debug level).
    for _ in 0..3 {
        let _ = std::os::unix::net::UnixStream::connect(&socket)
            .and_then(|mut s| s.write_all(b"GET /health HTTP/1.1\r\nhost: r1d\r\n\r\n"));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("r1d ignored SIGTERM with a closed stderr");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((status.code(), status.signal()), (Some(0), None));
}

/// Stops r1d with SIGTERM in the middle of a streamed answer, `rounds` times, and asserts a
/// clean stop every time: exit status 0, no death by signal (a segfault of static destructors
/// running under the engine thread would be SIGSEGV).
async fn stop_mid_answer(
    rounds: usize,
    options: impl Fn() -> DaemonOptions<'static>,
    prompt: &str,
) {
    for round in 0..rounds {
        let mut daemon = Daemon::start(options());
        assert_eq!(
            daemon.settled().await.status,
            State::Ready,
            "{}",
            daemon.log()
        );
        let mut request = ask(prompt);
        request.max_tokens = Some(2000);
        let mut stream = daemon.client().chat_stream(&request).await.unwrap();
        // Wait for the first pieces of the answer: the engine is inside the plugin now.
        let mut pieces = 0;
        while pieces < 3 {
            match stream.next().await {
                Some(Ok(_)) => pieces += 1,
                other => panic!("round {round}: {other:?}\n{}", daemon.log()),
            }
        }
        // Vary the moment a little, so it falls inside a decode in some rounds.
        tokio::time::sleep(Duration::from_millis((round as u64 * 7) % 40)).await;
        daemon.terminate();
        let status = tokio::task::block_in_place(|| daemon.wait_exit(Duration::from_secs(30)))
            .unwrap_or_else(|| panic!("round {round}: r1d did not stop\n{}", daemon.log()));
        assert_eq!(
            (status.code(), status.signal()),
            (Some(0), None),
            "round {round}: {status}\n{}",
            daemon.log()
        );
        drop(stream);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_answer_always_ends_with_status_0_on_echo() {
    let models: &'static tempfile::TempDir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    let model: &'static Path =
        Box::leak(echo_model(models.path(), r#"{"name": "e"}"#).into_boxed_path());
    stop_mid_answer(
        10,
        || DaemonOptions {
            model: Some(model),
            args: vec!["--backend".into(), "echo".into()],
            ..Default::default()
        },
        "count [[slow]] words",
    )
    .await;
}

/// The same with llama.cpp (SmolLM2), where the stop used to end in a segfault about once in
/// 10–30 runs: `main` returned and llama.cpp's static destructors ran under a decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_answer_always_ends_with_status_0_on_llama_cpp() {
    let Some(smol) = fixture(SMOLLM2) else { return };
    if !r1d_tests::bin_dir()
        .join("libr1_plugin_llamacpp.so")
        .exists()
    {
        skip_or_fail("the llama.cpp plugin is not built");
        return;
    }
    let smol: &'static Path = Box::leak(smol.into_boxed_path());
    let plugins: &'static tempfile::TempDir = Box::leak(Box::new(plugin_dir(&["llamacpp"])));
    stop_mid_answer(
        30,
        || DaemonOptions {
            model: Some(smol),
            plugin_dir: Some(plugins.path()),
            args: vec!["--threads".into(), "2".into()],
            ..Default::default()
        },
        "Write a long story about a lighthouse keeper.",
    )
    .await;
}

/// The uid of a member of the socket's audience who is neither root nor r1d's own user.
const MEMBER: u32 = 47013;

/// Management over HTTP follows D-Bus's rule (root, r1d's own uid, else polkit): another user who
/// can reach the socket may ask questions, but loading, unloading, using, reloading and pulling
/// are refused with 403 naming what and the caller's uid — the uid the kernel reports for the
/// connection (SO_PEERCRED), not anything the request says. Root may manage.
#[tokio::test]
async fn http_management_needs_root_or_r1ds_own_uid_while_chat_stays_open() {
    if !can_switch_users() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("r1d-manage-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let model = echo_model(dir.path(), r#"{"name": "echo-manage"}"#);
    std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o644)).unwrap();
    let socket = dir.path().join("r1d.sock");
    let log = dir.path().join("r1d.log");
    let bins = public_bin_dir();
    let child = Command::new(bins.path().join("r1d"))
        .args(["--dbus", "off", "--plugin-dir"])
        .arg(bins.path())
        .arg("--model")
        .arg(&model)
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg("/dev/null")
        .env("XDG_CACHE_HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    wait_for_socket(&socket, &mut child.0, &log);
    // r1d makes its socket 0660; open it to everyone, as a socket whose group the other user is
    // in would be (the group `r1d` of a system install).
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let home = home_of(dir.path(), MEMBER);
    let curl = |uid: u32, method: &str, path: &str, body: &str| -> (u16, String) {
        let out = as_user(
            uid,
            &home,
            Path::new("/usr/bin/curl"),
            &[
                "-s",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
                socket.to_str().unwrap(),
                "-X",
                method,
                "-H",
                "Content-Type: application/json",
                "--data",
                body,
                &format!("http://r1d{path}"),
            ],
        )
        .output()
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    };
    // Wait until the echo model serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(0, "GET", "/health", "").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Chat is open to the other user.
    let (code, body) = curl(
        MEMBER,
        "POST",
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "hello there"}]}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("HELLO THERE"), "{body}");

    // Management is not, on every managing route.
    let path = model.to_str().unwrap();
    for (route, body, what) in [
        ("/r1/unload", "{}".to_owned(), "unloading the model"),
        (
            "/r1/load",
            format!("{{\"path\": {path:?}}}"),
            "loading a model",
        ),
        (
            "/r1/use",
            r#"{"model": "auto"}"#.to_owned(),
            "changing the model",
        ),
        ("/r1/reload", "{}".to_owned(), "reloading the config"),
        (
            "/r1/pull",
            r#"{"model": "deepseek-r1:1.5b"}"#.to_owned(),
            "pulling a model",
        ),
    ] {
        let (code, answer) = curl(MEMBER, "POST", route, &body);
        assert_eq!(code, 403, "{route}: {answer}");
        let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(json["code"], "permission_denied", "{route}: {answer}");
        let message = json["error"].as_str().unwrap();
        assert!(
            message.starts_with(what) && message.contains(&format!("uid {MEMBER}")),
            "{route}: {message}"
        );
    }
    // Still serving: nothing was unloaded.
    let (code, body) = curl(MEMBER, "GET", "/r1/status", "");
    assert_eq!(code, 200);
    assert!(body.contains("echo-manage"), "{body}");

    // Root may.
    let (code, body) = curl(0, "POST", "/r1/unload", "{}");
    assert_eq!(code, 200, "{body}");
    let (_, body) = curl(0, "GET", "/health", "");
    assert!(body.contains("no-model"), "{body}");
}

#[tokio::test]
async fn sequences_times_context_beyond_the_machines_ram_are_refused_naming_the_numbers() {
    // The R1 7B header: 28 layers × 4 KV heads × (128 + 128) F16 elements, 56 KiB a token.
    let Some(r1) = fixture(r1d_tests::R1_VOCAB) else {
        return;
    };
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&r1),
        args: ["--parallel", "64", "--context-length", "131072"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let health = daemon.settled().await;
    assert_eq!(health.status, State::NoModel);
    let error = health.error.unwrap_or_default();
    // 64 × 131,072 tokens × 57,344 bytes = 448 GiB.
    assert!(
        error.contains("64 sequences (parallel) × 131072 tokens (context_length)")
            && error.contains("KV cache of 448.0 GiB")
            && error.contains("GiB of RAM r1d may use"),
        "{error}"
    );
}
