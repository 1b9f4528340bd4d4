//! TCP beside the Unix socket (`--listen`, `[server] listen`, TCP sockets from systemd): the
//! policy at start (a non-loopback address needs a key), 401s, socket activation, and a client in
//! a network namespace of its own reaching r1d over a veth pair. The `openai`/`ollama` Python
//! clients over loopback TCP are in `clients`.
//!
//! Traffic goes to loopback and to the test's own namespace's addresses only.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use r1d_tests::{binary, echo_model, plugin_dir, Daemon, DaemonOptions};

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request over TCP; returns the status line's code and the whole response.
fn http(addr: &str, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, response)
}

/// Starts r1d with `args` and `config` and waits for it to exit (within 10 s).
fn start_and_exit(args: &[&str], config: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r1d.toml"), config).unwrap();
    let out = Command::new(binary("r1d"))
        .args(["--user", "--dbus", "off", "--socket"])
        .arg(dir.path().join("r1d.sock"))
        .arg("--config")
        .arg(dir.path().join("r1d.toml"))
        .args(args)
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_non_loopback_address_without_a_key_is_refused_at_start() {
    let port = free_port();
    for addr in [format!("0.0.0.0:{port}"), format!("[::]:{port}")] {
        let (status, log) = start_and_exit(&["--listen", &addr], "");
        assert!(!status.success(), "{log}");
        assert!(
            log.contains(&format!("refusing to listen on {addr} without an API key"))
                && log.contains("api_key_file"),
            "{log}"
        );
    }
    // The same from the config file; and an unreadable key file is named.
    let (status, log) = start_and_exit(&[], &format!("[server]\nlisten = [\"0.0.0.0:{port}\"]\n"));
    assert!(
        !status.success() && log.contains("refusing to listen"),
        "{log}"
    );
    let (status, log) = start_and_exit(
        &["--listen", &format!("127.0.0.1:{port}")],
        "[server]\napi_key_file = \"/nonexistent/r1d-key\"\n",
    );
    assert!(
        !status.success() && log.contains("/nonexistent/r1d-key"),
        "{log}"
    );
    // Its OS error once, not once per link of the error chain.
    let error = log
        .lines()
        .find(|l| l.contains("/nonexistent/r1d-key"))
        .unwrap_or_default();
    assert_eq!(
        error.matches("No such file or directory").count(),
        1,
        "{error}"
    );
    // A listen address without a port is named.
    let (status, log) = start_and_exit(&["--listen", "localhost"], "");
    assert!(
        !status.success() && log.contains("invalid listen address \"localhost\""),
        "{log}"
    );
}

#[test]
fn a_host_name_listens_on_each_address_it_resolves_to() {
    let dir = tempfile::tempdir().unwrap();
    let model = echo_model(dir.path(), r#"{"name": "echo-tcp"}"#);
    let port = free_port();
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        args: vec!["--listen".into(), format!("localhost:{port}")],
        ..Default::default()
    });
    use std::net::ToSocketAddrs as _;
    let resolved: Vec<std::net::SocketAddr> = format!("localhost:{port}")
        .to_socket_addrs()
        .unwrap()
        .collect();
    assert!(!resolved.is_empty());
    for addr in resolved {
        let (code, body) = http(&addr.to_string(), "GET", "/api/version", None);
        assert_eq!(code, 200, "{addr}: {body}\n{}", daemon.log());
    }
}

#[test]
fn loopback_tcp_serves_every_route_family_and_a_key_is_asked_for_once_set() {
    let dir = tempfile::tempdir().unwrap();
    let model = echo_model(dir.path(), r#"{"name": "echo-tcp"}"#);
    let (p4, p6) = (free_port(), free_port());
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "k-93af\n").unwrap();
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        args: vec![
            "--listen".into(),
            format!("127.0.0.1:{p4}"),
            "--listen".into(),
            format!("[::1]:{p6}"),
        ],
        config: Some(&format!("[server]\napi_key_file = {key_file:?}\n")),
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Loaded, so that `/v1/models` lists it.
    rt.block_on(daemon.settled());
    let v4 = format!("127.0.0.1:{p4}");
    let (code, body) = http(&v4, "GET", "/v1/models", Some("Bearer k-93af"));
    assert_eq!(code, 200, "{body}");
    // `/v1/models` lists the model by the name r1d accepts for it: the file's stem.
    assert!(body.contains(r#""id":"test""#), "{body}");
    // Missing or wrong key: 401 in each family's shape.
    let (code, body) = http(&v4, "GET", "/v1/models", None);
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains(r#""code":"invalid_api_key""#)
            && body.contains(r#""type":"invalid_request_error""#),
        "{body}"
    );
    // Ollama clients' liveness check needs no key (it tells nothing but that r1d runs).
    let (code, response) = http(&v4, "GET", "/", None);
    assert_eq!(code, 200, "{response}");
    assert!(response.contains("\r\nOllama is running\r\n"), "{response}");
    let (code, _) = http(&v4, "HEAD", "/", None);
    assert_eq!(code, 200);
    let (code, body) = http(&v4, "GET", "/api/tags", Some("Bearer nope"));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains(r#"{"error":"invalid API key"#), "{body}");
    let (code, body) = http(&v4, "GET", "/r1/status", Some("Basic k-93af"));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains(r#""code":"invalid_api_key""#), "{body}");
    // IPv6 loopback too (where the machine has IPv6).
    if std::net::TcpStream::connect(format!("[::1]:{p6}")).is_ok() {
        let (code, body) = http(
            &format!("[::1]:{p6}"),
            "GET",
            "/health",
            Some("Bearer k-93af"),
        );
        assert_eq!(code, 200, "{body}");
    }
    // The Unix socket asks for no key.
    let client = daemon.client();
    rt.block_on(client.health()).unwrap();
    let log = daemon.log();
    assert!(!log.contains("k-93af"), "the key is in the log:\n{log}");
    assert!(
        log.contains("refused: no API key") && log.contains("refused: wrong API key"),
        "{log}"
    );
    assert!(
        !log.contains("nope"),
        "what a client presented is in the log:\n{log}"
    );
    assert!(
        log.contains(&format!("listening on {v4} (TCP, API key required)")),
        "{log}"
    );
}

#[test]
fn tcp_sockets_passed_by_systemd_are_served() {
    let Some(activate) = which("systemd-socket-activate") else {
        skip("systemd-socket-activate is not installed (package systemd)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r1d.toml"), "").unwrap();
    let model = echo_model(dir.path(), r#"{"name": "echo-tcp-activated"}"#);
    let plugins = plugin_dir(&["echo"]);
    let addr = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("r1d.log");
    // Only a TCP socket is passed: r1d binds its own Unix socket beside it.
    let socket = dir.path().join("own.sock");
    let mut activator = Command::new(activate)
        .args(["--listen", &addr, "--"])
        .arg(binary("r1d"))
        .args(["--user", "--dbus", "off", "--socket"])
        .arg(&socket)
        .arg("--config")
        .arg(dir.path().join("r1d.toml"))
        .arg("--plugin-dir")
        .arg(plugins.path())
        .arg("--model")
        .arg(&model)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "no TCP socket:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first connection starts r1d, which answers it.
    let (code, body) = http(&addr, "GET", "/v1/models", None);
    let _ = Command::new("kill")
        .arg(activator.id().to_string())
        .status();
    let _ = activator.wait();
    assert_eq!(code, 200, "{body}\n{}", read_log());
    assert!(body.contains(r#""id":"test""#), "{body}");
    let text = read_log();
    assert!(
        text.contains(&format!(
            "listening on {addr} (TCP (socket activation), no API key)"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("listening on {}", socket.display())),
        "{text}"
    );
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn skip(message: &str) {
    if ci() {
        panic!("{message}");
    }
    eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
}

/// A network namespace with a veth pair into it; removed on drop. The host end has `host_ip`,
/// the namespace end `ns_ip` (a /30 of the benchmarking range 198.18.0.0/15, so no real network
/// is shadowed).
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn create() -> Result<Netns, String> {
        let id = std::process::id();
        let net = (id % 16_000) as u16; // 198.18.0.0/15 holds 32768 /30s.
        let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + u32::from(net) * 4;
        let host_ip = std::net::Ipv4Addr::from(base + 1).to_string();
        let ns_ip = std::net::Ipv4Addr::from(base + 2).to_string();
        let ns = Netns {
            name: format!("r1d-test-{id}"),
            host_if: format!("r1dh{id}"),
            host_ip,
        };
        let ns_if = format!("r1dn{id}");
        Netns::ip(&["netns", "add", &ns.name])?;
        // From here on, drop removes what was made.
        Netns::ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
            "netns",
            &ns.name,
        ])?;
        Netns::ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ])?;
        Netns::ip(&["link", "set", &ns.host_if, "up"])?;
        Netns::ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ])?;
        Netns::ip(&["-n", &ns.name, "link", "set", &ns_if, "up"])?;
        Netns::ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the pair.
        let _ = Netns::ip(&["netns", "del", &self.name]);
        let _ = Netns::ip(&["link", "del", &self.host_if]);
    }
}

#[test]
fn a_client_in_another_network_namespace_reaches_r1d_with_the_key() {
    // It should work as root with iproute2; elsewhere it is skipped (loudly).
    let should_work = which("ip").is_some() && rustix_is_root();
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            let message = format!("no network namespace for the test ({e})");
            if should_work && ci() {
                panic!("{message}");
            }
            eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
            return;
        }
    };
    let Some(python) = std::env::var_os("R1D_TEST_PYTHON").map(PathBuf::from) else {
        skip("R1D_TEST_PYTHON is not set; run scripts/install-test-clients (scripts/test does)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = echo_model(
        dir.path(),
        r#"{"name": "DeepSeek-R1 echo", "transform": "identity"}"#,
    );
    let key = "sk-netns-5b1e";
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, key).unwrap();
    let addr = format!("{}:{}", ns.host_ip, free_port());
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        args: vec!["--listen".into(), addr.clone()],
        config: Some(&format!("[server]\napi_key_file = {key_file:?}\n")),
        ..Default::default()
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/openai_client.py");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&python)
        .arg(&script)
        .arg(format!("http://{addr}"))
        .arg(key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\n--- r1d log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    assert!(!daemon.log().contains(key));
}

fn rustix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn the_tcp_example_socket_and_drop_in_pass_systemd_analyze_verify() {
    let Some(analyze) = which("systemd-analyze") else {
        skip("systemd-analyze is not installed (package systemd)");
        return;
    };
    let systemd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let service = std::fs::read_to_string(systemd.join("r1d.service")).unwrap();
    std::fs::write(
        d.join("r1d.service"),
        service.replace("/usr/bin/r1d", binary("r1d").to_str().unwrap()),
    )
    .unwrap();
    for unit in ["r1d.socket", "r1d-tcp.socket"] {
        std::fs::copy(systemd.join(unit), d.join(unit)).unwrap();
    }
    // The drop-in as the r1d-tcp.socket instructions say: with its Sockets= line uncommented.
    let drop_in = std::fs::read_to_string(systemd.join("r1d.service.d/tcp.conf.example")).unwrap();
    assert!(drop_in.contains("#Sockets=r1d.socket r1d-tcp.socket"));
    std::fs::create_dir(d.join("r1d.service.d")).unwrap();
    std::fs::write(
        d.join("r1d.service.d/tcp.conf"),
        drop_in.replace("#Sockets=", "Sockets="),
    )
    .unwrap();
    let out = Command::new(analyze)
        .args([
            "verify",
            "--man=no",
            "./r1d.service",
            "./r1d.socket",
            "./r1d-tcp.socket",
        ])
        .current_dir(d)
        .env("XDG_RUNTIME_DIR", d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    // Without the drop-in the hardened unit keeps TCP out, as the docs say.
    assert!(service.contains("\nRestrictAddressFamilies=AF_UNIX AF_NETLINK\n"));
    assert!(drop_in.contains("\nRestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6\n"));
}
