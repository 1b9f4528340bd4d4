//! D-Bus: the real `r1d` on a private `dbus-daemon` started by each test (a session bus, or a
//! system-like bus with the shipped policy `systemd/org.r1d.R1.conf`), called through the Rust
//! proxies of `r1d_client::dbus` and through `busctl`, `gdbus` and `dbus-monitor` as outside
//! clients, with the deterministic echo backend.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use r1d_client::dbus::{Chat1Proxy, Manager1Proxy, StreamEvent, StreamReader, Usage};
use r1d_tests::{echo_config, echo_model, swap_pair, Daemon, DaemonOptions};
use zbus::zvariant::Value;

/// The echo's answer to this is "hmm let me see</think>The answer" (see `compat`).
const THINKER: &str = "hmm let me see</think>The answer";

/// The tools these tests drive; when one is missing the test says so loudly and skips (under
/// `CI=true` it fails). `scripts/install-build-deps --test` installs them.
pub(crate) fn tools_present(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "{} not found; run scripts/install-build-deps --test",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
    false
}

/// A private `dbus-daemon`; killed on drop.
pub(crate) struct Bus {
    child: Child,
    pub(crate) address: String,
    dir: tempfile::TempDir,
}

impl Bus {
    /// A session bus.
    pub(crate) fn session() -> Bus {
        let dir = tempfile::Builder::new()
            .prefix("r1d-bus-")
            .tempdir()
            .unwrap();
        let address = format!("unix:path={}", dir.path().join("bus").display());
        Bus::start(dir, &["--session".into(), format!("--address={address}")])
    }

    /// A system-like bus: the system bus's default policy and the shipped
    /// `systemd/org.r1d.R1.conf`, with group `r1d` replaced by `group` when this machine has
    /// no group r1d. World-readable, so callers under other uids can connect.
    fn system_like(group: &str) -> Bus {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("r1d-sysbus-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/org.r1d.R1.conf");
        let policy = std::fs::read_to_string(&shipped)
            .unwrap()
            .replace("group=\"r1d\"", &format!("group=\"{group}\""));
        std::fs::write(dir.path().join("org.r1d.R1.conf"), policy).unwrap();
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={dir}/system_bus_socket</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <include>{dir}/org.r1d.R1.conf</include>
</busconfig>
"#,
            dir = dir.path().display()
        );
        let path = dir.path().join("system.conf");
        std::fs::write(&path, config).unwrap();
        Bus::start(dir, &[format!("--config-file={}", path.display())])
    }

    fn start(dir: tempfile::TempDir, args: &[String]) -> Bus {
        use std::io::BufRead;
        let mut child = Command::new("dbus-daemon")
            .args(args)
            .arg("--nofork")
            .arg("--print-address=1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("dbus-daemon.log")).unwrap())
            .spawn()
            .expect("failed to start dbus-daemon");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        assert!(
            !address.is_empty(),
            "dbus-daemon printed no address:\n{}",
            std::fs::read_to_string(dir.path().join("dbus-daemon.log")).unwrap_or_default()
        );
        Bus {
            child,
            address,
            dir,
        }
    }

    async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap()
    }

    /// Waits up to 30 s until r1d owns its name.
    pub(crate) async fn wait_for_r1d(&self, daemon: &Daemon) -> zbus::Connection {
        let conn = self.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let name = zbus::names::BusName::try_from("org.r1d.R1").unwrap();
            if dbus.name_has_owner(name).await.unwrap() {
                return conn;
            }
            assert!(
                Instant::now() < deadline,
                "r1d did not own org.r1d.R1 within 30 s:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// r1d with the R1-named echo model on `bus` (`session` or `system`).
fn r1d_on(bus: &Bus, which: &str) -> (Daemon, tempfile::TempDir, PathBuf) {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(
        models.path(),
        r#"{"name": "DeepSeek-R1 echo", "transform": "identity"}"#,
    );
    let variable = if which == "system" {
        "DBUS_SYSTEM_BUS_ADDRESS"
    } else {
        "DBUS_SESSION_BUS_ADDRESS"
    };
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        args: vec!["--dbus".into(), which.into()],
        env: vec![(variable, bus.address.clone())],
        ..Default::default()
    });
    (daemon, models, model)
}

fn no_options() -> HashMap<&'static str, Value<'static>> {
    HashMap::new()
}

/// Runs an outside client with the bus in its environment; returns (success, stdout, stderr).
fn run(bus: &Bus, program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("not a method error: {other}"),
    }
}

#[tokio::test]
async fn dbus_manager_properties_and_methods_through_the_rust_proxy() {
    if !tools_present(&["dbus-daemon"]) {
        return;
    }
    let bus = Bus::session();
    let (daemon, _m, model) = r1d_on(&bus, "session");
    daemon.settled().await;
    let conn = bus.wait_for_r1d(&daemon).await;
    let manager = Manager1Proxy::new(&conn).await.unwrap();
    // The signals of a change may arrive after the reply of the call that made it: read the
    // values after a call uncached.
    let fresh = Manager1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();

    assert_eq!(manager.state().await.unwrap(), "ready");
    assert_eq!(manager.active_model().await.unwrap(), "DeepSeek-R1 echo");
    assert_eq!(manager.backend().await.unwrap(), "echo");
    assert_eq!(manager.error().await.unwrap(), "");
    assert_eq!(manager.version().await.unwrap(), env!("CARGO_PKG_VERSION"));
    let backends = manager.backends().await.unwrap();
    assert!(
        backends
            .iter()
            .any(|(name, _, available)| name == "echo" && *available),
        "{backends:?}"
    );
    let hardware: serde_json::Value =
        serde_json::from_str(&manager.hardware().await.unwrap()).unwrap();
    assert!(
        hardware["cpu"]["cores"].as_u64().unwrap() >= 1,
        "{hardware}"
    );
    let (_variant, _quant, _backend, reason, plan) = manager.get_plan().await.unwrap();
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert!(!plan["candidates"].as_array().unwrap().is_empty());
    assert_eq!(plan["reason"], reason.as_str());

    // The store of this test daemon is its own empty directory: nothing is listed.
    assert_eq!(manager.list_models().await.unwrap(), vec![]);
    // Pull: see dbus_pull_returns_a_job_whose_properties_and_finished_signal_follow_the_download.

    // Unload: the state changes and PropertiesChanged says so.
    let mut states = manager.receive_state_changed().await;
    let _initial = states.next().await;
    manager.unload().await.unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(5), states.next())
        .await
        .expect("no PropertiesChanged for State after Unload")
        .unwrap();
    assert_eq!(changed.get().await.unwrap(), "no-model");
    assert_eq!(fresh.active_model().await.unwrap(), "");
    let chat = Chat1Proxy::new(&conn).await.unwrap();
    let e = chat.ask("hello", no_options()).await.unwrap_err();
    assert_eq!(error_name(&e), "org.r1d.R1.Error.NoModel");

    // Load it again, then refusals with their names.
    let path = model.to_str().unwrap();
    manager.load(path, no_options()).await.unwrap();
    assert_eq!(fresh.state().await.unwrap(), "ready");
    let e = manager
        .load("relative.echo", no_options())
        .await
        .unwrap_err();
    assert_eq!(error_name(&e), "org.r1d.R1.Error.InvalidArgument");
    let mut bad = no_options();
    bad.insert("context_lenght", Value::from(512u32));
    let e = manager.load(path, bad).await.unwrap_err();
    assert_eq!(error_name(&e), "org.r1d.R1.Error.InvalidArgument");
    assert!(e.to_string().contains("context_lenght"), "{e}");
    let e = manager
        .load("/nonexistent/model.echo", no_options())
        .await
        .unwrap_err();
    assert_eq!(error_name(&e), "org.r1d.R1.Error.LoadFailed");
    assert!(e.to_string().contains("/nonexistent/model.echo"), "{e}");
    let e = manager.use_model("deepseek-r1:7b").await.unwrap_err();
    assert_eq!(error_name(&e), "org.r1d.R1.Error.ModelNotFound");
    assert!(e.to_string().contains("r1ctl pull"), "{e}");
    manager.use_model(path).await.unwrap();
    assert_eq!(fresh.state().await.unwrap(), "ready");
}

#[tokio::test]
async fn dbus_streamed_answer_over_the_fd_equals_ask() {
    if !tools_present(&["dbus-daemon"]) {
        return;
    }
    let bus = Bus::session();
    let (daemon, _m, _) = r1d_on(&bus, "session");
    daemon.settled().await;
    let conn = bus.wait_for_r1d(&daemon).await;
    let chat = Chat1Proxy::new(&conn).await.unwrap();

    let (content, reasoning, usage) = chat.ask(THINKER, no_options()).await.unwrap();
    assert_eq!(content, "The answer");
    assert_eq!(reasoning, "hmm let me see");
    let number = |k: &str| u32::try_from(&usage[k]).unwrap();
    assert_eq!(number("completion_tokens"), 5);
    assert_eq!(
        number("total_tokens"),
        number("prompt_tokens") + number("completion_tokens")
    );
    assert_eq!(
        String::try_from(usage["finish_reason"].clone()).unwrap(),
        "stop"
    );

    let fd = chat.ask_stream(THINKER, no_options()).await.unwrap();
    let mut reader = StreamReader::new(fd).unwrap();
    let (mut s_content, mut s_reasoning, mut done) = (String::new(), String::new(), None);
    let mut first = true;
    while let Some(event) = reader.next().await.unwrap() {
        if first {
            assert!(
                matches!(event, StreamEvent::Start { ref model, .. } if model == "DeepSeek-R1 echo"),
                "{event:?}"
            );
            first = false;
            continue;
        }
        match event {
            StreamEvent::Content { text } => s_content.push_str(&text),
            StreamEvent::Reasoning { text } => s_reasoning.push_str(&text),
            StreamEvent::Done {
                finish_reason,
                usage,
            } => done = Some((finish_reason, usage)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(s_content, content);
    assert_eq!(s_reasoning, reasoning);
    let (finish_reason, s_usage) = done.expect("the stream ended without done");
    assert_eq!(finish_reason, "stop");
    assert_eq!(
        s_usage,
        Usage {
            prompt_tokens: number("prompt_tokens"),
            completion_tokens: number("completion_tokens"),
            total_tokens: number("total_tokens"),
        }
    );

    // A conversation, and the options reach the engine.
    let mut options = no_options();
    options.insert("max_tokens", Value::from(2u32));
    let (c, r, u) = chat
        .chat(
            &[("system", "be brief"), ("user", "one two three four")],
            options,
        )
        .await
        .unwrap();
    assert_eq!(u32::try_from(&u["completion_tokens"]).unwrap(), 2);
    assert_eq!(
        String::try_from(u["finish_reason"].clone()).unwrap(),
        "length"
    );
    assert!(c.is_empty() && r == "one two", "{c:?} {r:?}");
    let e = chat
        .ask("hi", HashMap::from([("model", Value::from("gpt-4"))]))
        .await
        .unwrap_err();
    assert_eq!(error_name(&e), "org.r1d.R1.Error.ModelNotFound");
    let e = chat
        .ask("hi", HashMap::from([("temperature", Value::from(9.0))]))
        .await
        .unwrap_err();
    assert_eq!(error_name(&e), "org.r1d.R1.Error.InvalidArgument");
    // Structured output reaches the backend, which refuses it by name (echo has no constrained
    // decoding); a format that is neither "json" nor a schema is refused by Chat1 itself.
    for format in ["json", r#"{"type": "object"}"#, "yaml"] {
        let e = chat
            .ask("hi", HashMap::from([("format", Value::from(format))]))
            .await
            .unwrap_err();
        assert_eq!(
            error_name(&e),
            "org.r1d.R1.Error.InvalidArgument",
            "{format}"
        );
        assert!(e.to_string().contains("format"), "{format}: {e}");
    }
    // Issue 17: Ollama's repeat penalty and window reach the backend; a count sent as a whole
    // double is that count; think: false drops the reasoning.
    let (_, said, _) = chat
        .ask(
            "x [[params]]",
            HashMap::from([
                ("repeat_penalty", Value::from(1.3)),
                ("repeat_last_n", Value::from(32i32)),
                ("seed", Value::from(7.0)),
            ]),
        )
        .await
        .unwrap();
    assert!(
        said.contains("seed=7 ") && said.contains("repeat_penalty=1.3 penalty_last_n=32"),
        "{said}"
    );
    let (content, reasoning, _) = chat
        .ask(
            "<think>hmm</think>The answer",
            HashMap::from([("think", Value::from(false))]),
        )
        .await
        .unwrap();
    assert_eq!((content.as_str(), reasoning.as_str()), ("The answer", ""));
    // What Chat1 does not take is refused naming it, never ignored.
    for (key, value) in [
        ("tools", Value::from("[]")),
        ("logit_bias", Value::from("{}")),
        ("think", Value::from("yes")),
        ("max_tokens", Value::from(1.5)),
        ("no_such_option", Value::from(1u32)),
    ] {
        let e = chat
            .ask("hi", HashMap::from([(key, value)]))
            .await
            .unwrap_err();
        assert_eq!(error_name(&e), "org.r1d.R1.Error.InvalidArgument", "{key}");
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
}

#[tokio::test]
async fn dbus_closing_the_stream_fd_stops_the_generation() {
    if !tools_present(&["dbus-daemon"]) {
        return;
    }
    let bus = Bus::session();
    let (daemon, _m, _) = r1d_on(&bus, "session");
    daemon.settled().await;
    let conn = bus.wait_for_r1d(&daemon).await;
    let chat = Chat1Proxy::new(&conn).await.unwrap();
    let manager = Manager1Proxy::new(&conn).await.unwrap();

    let mut options = no_options();
    options.insert("max_tokens", Value::from(10_000u32));
    let fd = chat.ask_stream("tick [[slow]]", options).await.unwrap();
    let mut reader = StreamReader::new(fd).unwrap();
    let mut pieces = 0;
    while pieces < 3 {
        match reader.next().await.unwrap() {
            Some(StreamEvent::Reasoning { .. } | StreamEvent::Content { .. }) => pieces += 1,
            Some(StreamEvent::Start { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(manager.active_requests().await.unwrap(), 1);
    drop(reader);
    let closed = Instant::now();
    while manager.active_requests().await.unwrap() != 0 {
        assert!(
            closed.elapsed() < Duration::from_secs(1),
            "the generation still runs 1 s after its stream was closed:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = daemon.client().status().await.unwrap();
    assert_eq!(status.active_requests, 0);
}

#[tokio::test]
async fn dbus_busctl_and_gdbus_call_r1d_as_outside_clients() {
    if !tools_present(&["dbus-daemon", "busctl", "gdbus"]) {
        return;
    }
    let bus = Bus::session();
    let (daemon, _m, _) = r1d_on(&bus, "session");
    daemon.settled().await;
    let _conn = bus.wait_for_r1d(&daemon).await;
    let target = ["org.r1d.R1", "/org/r1d/R1"];

    let (ok, out, err) = run(
        &bus,
        "busctl",
        &[
            "--user",
            "get-property",
            target[0],
            target[1],
            "org.r1d.R1.Manager1",
            "State",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "s \"ready\"");
    let (ok, out, err) = run(
        &bus,
        "busctl",
        &[
            "--user",
            "call",
            target[0],
            target[1],
            "org.r1d.R1.Chat1",
            "Ask",
            "sa{sv}",
            THINKER,
            "1",
            "max_tokens",
            "u",
            "50",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.starts_with("ssa{sv} \"The answer\" \"hmm let me see\" 5 "),
        "{out}"
    );
    let (ok, out, err) = run(
        &bus,
        "busctl",
        &["--user", "introspect", target[0], target[1]],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("org.r1d.R1.Chat1") && out.contains(".AskStream"),
        "{out}"
    );

    let gdbus_call = |method: &str, args: &[&str]| {
        let mut all = vec![
            "call",
            "--session",
            "--dest",
            target[0],
            "--object-path",
            target[1],
            "--method",
            method,
        ];
        all.extend_from_slice(args);
        run(&bus, "gdbus", &all)
    };
    let (ok, out, err) = gdbus_call("org.r1d.R1.Chat1.Ask", &[THINKER, "{'temperature': <0.0>}"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("('The answer', 'hmm let me see', {"),
        "{out}"
    );
    let (ok, out, err) = gdbus_call(
        "org.freedesktop.DBus.Properties.Get",
        &["org.r1d.R1.Manager1", "ActiveModel"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "(<'DeepSeek-R1 echo'>,)");
    let (ok, out, err) = gdbus_call("org.r1d.R1.Manager1.ListModels", &[]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "(@a(sssst) [],)");

    // The live introspection has every method and property of the shipped XML.
    let (ok, live, err) = run(
        &bus,
        "gdbus",
        &[
            "introspect",
            "--session",
            "--dest",
            target[0],
            "--object-path",
            target[1],
            "--xml",
        ],
    );
    assert!(ok, "{err}");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/org.r1d.R1.xml"),
    )
    .unwrap();
    let names = |xml: &str| -> Vec<String> {
        xml.lines()
            .map(str::trim)
            .filter(|l| {
                l.starts_with("<method ")
                    || l.starts_with("<property ")
                    || l.starts_with("<interface ")
            })
            .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
            .filter(|n| !n.starts_with("org.freedesktop."))
            .collect()
    };
    let live_names = names(&live);
    for name in names(&shipped) {
        assert!(
            live_names.contains(&name),
            "{name} is in org.r1d.R1.xml but not served:\n{live}"
        );
    }
}

#[tokio::test]
async fn dbus_monitor_watching_signals_sees_no_user_content() {
    if !tools_present(&["dbus-daemon", "dbus-monitor"]) {
        return;
    }
    let bus = Bus::session();
    let (daemon, _m, model) = r1d_on(&bus, "session");
    daemon.settled().await;
    let conn = bus.wait_for_r1d(&daemon).await;
    let log = bus.dir.path().join("monitor.log");
    let mut monitor = Command::new("dbus-monitor")
        .arg("--address")
        .arg(&bus.address)
        .arg("type='signal'")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The monitor is listening once the bus has greeted it (its NameAcquired), not after a guess.
    let wait_for = |needle: &'static str| {
        let log = log.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(needle)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for("NameAcquired").await;

    let secret = "zebra quartz</think>marmalade";
    let chat = Chat1Proxy::new(&conn).await.unwrap();
    let manager = Manager1Proxy::new(&conn).await.unwrap();
    let (content, reasoning, _) = chat.ask(secret, no_options()).await.unwrap();
    assert_eq!(
        (content.as_str(), reasoning.as_str()),
        ("marmalade", "zebra quartz")
    );
    let mut reader =
        StreamReader::new(chat.ask_stream(secret, no_options()).await.unwrap()).unwrap();
    while reader.next().await.unwrap().is_some() {}
    // State changes are signalled (the monitor does see r1d's signals).
    manager.unload().await.unwrap();
    manager
        .load(model.to_str().unwrap(), no_options())
        .await
        .unwrap();
    // PropertiesChanged may follow the method's reply: wait for it (bounded) before stopping.
    wait_for("no-model").await;
    let _ = monitor.kill();
    let _ = monitor.wait();

    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.contains("PropertiesChanged") && seen.contains("no-model"),
        "the monitor saw none of r1d's signals:\n{seen}"
    );
    for word in ["zebra", "quartz", "marmalade"] {
        assert!(
            !seen.contains(word),
            "a signal carried user content ({word}):\n{seen}"
        );
    }
}

/// A group that callers can be put in to stand for group `r1d`: `r1d` itself where it exists,
/// else `users`. Returns (name, gid).
fn member_group() -> Option<(String, u32)> {
    for name in ["r1d", "users"] {
        let out = Command::new("getent")
            .arg("group")
            .arg(name)
            .output()
            .ok()?;
        if out.status.success() {
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            let gid = line.split(':').nth(2)?.trim().parse().ok()?;
            return Some((name.to_owned(), gid));
        }
    }
    None
}

#[tokio::test]
async fn dbus_system_bus_policy_refuses_chat_outside_the_group_and_load_without_privilege() {
    if !tools_present(&["dbus-daemon", "gdbus", "setpriv"]) {
        return;
    }
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if !root {
        eprintln!("\n!!!!! SKIPPED: callers under other uids need root (setpriv) !!!!!\n");
        return;
    }
    let (group, gid) = member_group().expect("no group r1d or users on this machine");
    let bus = Bus::system_like(&group);
    let (daemon, _m, model) = r1d_on(&bus, "system");
    daemon.settled().await;
    let _conn = bus.wait_for_r1d(&daemon).await;

    let gid_arg = format!("--groups={gid}");
    let as_caller = |member: bool, method: &str, args: &[&str]| {
        let mut all: Vec<&str> = vec!["--reuid=65534", "--regid=65534"];
        all.push(if member { &gid_arg } else { "--clear-groups" });
        all.extend_from_slice(&[
            "gdbus",
            "call",
            "--system",
            "--dest",
            "org.r1d.R1",
            "--object-path",
            "/org/r1d/R1",
            "--method",
            method,
        ]);
        all.extend_from_slice(args);
        run(&bus, "setpriv", &all)
    };
    let path = model.to_str().unwrap();

    // Outside the group: no Chat1 (the bus refuses), but the state is readable.
    let (ok, _, err) = as_caller(false, "org.r1d.R1.Chat1.Ask", &["hello", "{}"]);
    assert!(!ok);
    assert!(
        err.contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{err}"
    );
    let (ok, out, err) = as_caller(
        false,
        "org.freedesktop.DBus.Properties.Get",
        &["org.r1d.R1.Manager1", "State"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "(<'ready'>,)");

    // In the group: Chat1 works; changing the model needs root or polkit, and there is no
    // polkit on this bus, so it is root only.
    let (ok, out, err) = as_caller(true, "org.r1d.R1.Chat1.Ask", &[THINKER, "{}"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("('The answer', 'hmm let me see', {"),
        "{out}"
    );
    for (method, args) in [
        ("org.r1d.R1.Manager1.Load", vec![path, "{}"]),
        ("org.r1d.R1.Manager1.Unload", vec![]),
        ("org.r1d.R1.Manager1.Reload", vec![]),
    ] {
        let (ok, _, err) = as_caller(true, method, &args);
        assert!(!ok, "{method} was allowed");
        assert!(
            err.contains("GDBus.Error:org.r1d.R1.Error.PermissionDenied"),
            "{method}: {err}"
        );
        assert!(err.contains("polkit is not available"), "{err}");
    }
    let status = daemon.client().status().await.unwrap();
    assert_eq!(status.model.unwrap().name, "DeepSeek-R1 echo");

    // Root may.
    let (ok, _, err) = run(
        &bus,
        "gdbus",
        &[
            "call",
            "--system",
            "--dest",
            "org.r1d.R1",
            "--object-path",
            "/org/r1d/R1",
            "--method",
            "org.r1d.R1.Manager1.Load",
            path,
            "{}",
        ],
    );
    assert!(ok, "{err}");
}

#[tokio::test]
async fn dbus_without_a_reachable_bus_r1d_warns_and_serves_http() {
    let models = tempfile::tempdir().unwrap();
    let model = echo_model(models.path(), r#"{"name": "DeepSeek-R1 echo"}"#);
    let daemon = Daemon::start(DaemonOptions {
        model: Some(&model),
        args: vec!["--dbus".into(), "session".into()],
        env: vec![(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path={}", models.path().join("no-bus").display()),
        )],
        ..Default::default()
    });
    let health = daemon.settled().await;
    assert_eq!(health.status, r1d_client::wire::State::Ready);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains("D-Bus is not available") {
        assert!(
            Instant::now() < deadline,
            "no warning about the bus:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon
        .client()
        .chat(&crate::ask("still here"))
        .await
        .unwrap();
}

#[tokio::test]
async fn dbus_pull_returns_a_job_whose_properties_and_finished_signal_follow_the_download() {
    use r1d_client::dbus::Job1Proxy;
    if !tools_present(&["dbus-daemon"]) {
        return;
    }
    let Some(smol) = r1d_tests::fixture(r1d_tests::SMOLLM2) else {
        return;
    };
    let server = crate::store::served(std::fs::read(&smol).unwrap(), None, None);
    let endpoint = crate::store::hub(server.clone()).await;
    let bus = Bus::session();
    let root = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(DaemonOptions {
        args: vec!["--dbus".into(), "session".into()],
        env: vec![
            ("DBUS_SESSION_BUS_ADDRESS", bus.address.clone()),
            (
                "XDG_DATA_HOME",
                root.path().join("data").display().to_string(),
            ),
            ("HF_ENDPOINT", endpoint),
        ],
        ..Default::default()
    });
    let conn = bus.wait_for_r1d(&daemon).await;
    let manager = Manager1Proxy::new(&conn).await.unwrap();
    let job_path = manager
        .pull(crate::store::FILE, no_options())
        .await
        .unwrap();
    assert!(
        job_path.as_str().starts_with("/org/r1d/R1/jobs/"),
        "{job_path}"
    );
    let job = Job1Proxy::builder(&conn)
        .path(job_path.clone())
        .unwrap()
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let mut finished = job.receive_finished().await.unwrap();
    // The pull may have ended before the subscription: then the properties already say so.
    let state = job.state().await.unwrap();
    if state != "done" && state != "failed" {
        let signal = tokio::time::timeout(Duration::from_secs(60), finished.next())
            .await
            .expect("no Finished signal within 60 s")
            .unwrap();
        let args = signal.args().unwrap();
        assert!(args.success, "{}\n{}", args.message, daemon.log());
    }
    let dest = crate::store::pulled(
        root.path(),
        "HuggingFaceTB/SmolLM2-GGUF",
        r1d_tests::SMOLLM2,
    );
    assert_eq!(
        job.state().await.unwrap(),
        "done",
        "{}",
        job.error().await.unwrap()
    );
    assert_eq!(job.path().await.unwrap(), dest.to_str().unwrap());
    assert_eq!(job.total_bytes().await.unwrap(), server.size);
    assert_eq!(job.completed_bytes().await.unwrap(), server.size);
    assert_eq!(job.model().await.unwrap(), crate::store::FILE);
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), server.size);
    // ListModels shows it: (name, variant, quantization, path, bytes).
    let models = manager.list_models().await.unwrap();
    assert!(
        models
            .iter()
            .any(|m| m.2 == "Q4_1" && m.3 == dest.to_str().unwrap() && m.4 == server.size),
        "{models:?}"
    );
    // Unknown names and options are refused with their error names.
    let e = manager
        .pull("deepseek-r1:999b", no_options())
        .await
        .unwrap_err();
    assert_eq!(error_name(&e), "org.r1d.R1.Error.ModelNotFound");
    let mut bad = no_options();
    bad.insert("quantisation", Value::from("q8_0"));
    let e = manager.pull(crate::store::FILE, bad).await.unwrap_err();
    assert_eq!(error_name(&e), "org.r1d.R1.Error.InvalidArgument");
    // Remove deletes the pulled file (as `r1ctl rm` does) and says what it freed.
    let (path, freed) = manager.remove(crate::store::FILE).await.unwrap();
    assert_eq!(
        (path.as_str(), freed),
        (dest.to_str().unwrap(), server.size)
    );
    assert!(!dest.exists());
    let e = manager.remove(crate::store::FILE).await.unwrap_err();
    assert_eq!(error_name(&e), "org.r1d.R1.Error.ModelNotFound");
}

#[tokio::test]
async fn dbus_a_swap_after_a_config_edit_is_signalled_through_state_and_active_model() {
    if !tools_present(&["dbus-daemon"]) {
        return;
    }
    let bus = Bus::session();
    let models = tempfile::tempdir().unwrap();
    let (first, slow) = swap_pair(models.path(), 1500);
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&echo_config(&first)),
        args: vec!["--dbus".into(), "session".into()],
        env: vec![("DBUS_SESSION_BUS_ADDRESS", bus.address.clone())],
        ..Default::default()
    });
    daemon.settled().await;
    let conn = bus.wait_for_r1d(&daemon).await;
    let manager = Manager1Proxy::new(&conn).await.unwrap();
    assert_eq!(manager.active_model().await.unwrap(), "first");
    let mut states = manager.receive_state_changed().await;
    let _initial = states.next().await;
    let mut models_changed = manager.receive_active_model_changed().await;
    let _initial = models_changed.next().await;
    daemon.edit_config(&echo_config(&slow));
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("ready") {
        let changed = tokio::time::timeout(Duration::from_secs(10), states.next())
            .await
            .unwrap_or_else(|_| panic!("no PropertiesChanged for State; saw {seen:?}"))
            .unwrap();
        seen.push(changed.get().await.unwrap());
    }
    assert_eq!(seen, vec!["swapping", "ready"]);
    let mut names = Vec::new();
    while names.last().map(String::as_str) != Some("slow") {
        let changed = tokio::time::timeout(Duration::from_secs(5), models_changed.next())
            .await
            .unwrap_or_else(|_| panic!("no PropertiesChanged for ActiveModel; saw {names:?}"))
            .unwrap();
        names.push(changed.get().await.unwrap());
    }
    // The loop above fails unless ActiveModel changed to "slow" (an empty name in between, while
    // no model is resident, may be coalesced by the proxy).
}

#[tokio::test]
async fn dbus_reload_of_a_rejected_config_is_an_error_naming_the_key() {
    if !tools_present(&["dbus-daemon"]) {
        return;
    }
    let bus = Bus::session();
    let models = tempfile::tempdir().unwrap();
    let (first, _slow) = swap_pair(models.path(), 0);
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&format!(
            "{}\n[watch]\nconfig = false\n",
            echo_config(&first)
        )),
        args: vec!["--dbus".into(), "session".into()],
        env: vec![("DBUS_SESSION_BUS_ADDRESS", bus.address.clone())],
        ..Default::default()
    });
    daemon.settled().await;
    let conn = bus.wait_for_r1d(&daemon).await;
    let manager = Manager1Proxy::new(&conn).await.unwrap();
    manager.reload().await.unwrap();
    std::fs::write(
        daemon.config_path(),
        format!("{}bogus = 1\n", echo_config(&first)),
    )
    .unwrap();
    let e = manager.reload().await.unwrap_err();
    assert_eq!(error_name(&e), "org.r1d.R1.Error.InvalidArgument");
    assert!(e.to_string().contains("bogus"), "{e}");
    assert_eq!(manager.active_model().await.unwrap(), "first");
}

#[tokio::test]
async fn dbus_last_crash_says_how_the_models_worker_died() {
    if !tools_present(&["dbus-daemon"]) {
        return;
    }
    let bus = Bus::session();
    let (daemon, _m, _model) = r1d_on(&bus, "session");
    daemon.settled().await;
    let conn = bus.wait_for_r1d(&daemon).await;
    let manager = Manager1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    assert_eq!(manager.last_crash().await.unwrap(), "");
    let _ = daemon
        .client()
        .chat(&crate::ask("[[crash:exit]]"))
        .await
        .unwrap_err();
    // The answer's error event can reach the client before the engine records the crash: wait
    // for both the record and the restart.
    let crash = crate::watch::until(
        &daemon,
        30,
        "the crash recorded and State ready again",
        || async {
            let crash = manager.last_crash().await.ok()?;
            (!crash.is_empty() && manager.state().await.ok()? == "ready").then_some(crash)
        },
    )
    .await;
    assert!(
        crash.contains("exited with status 3") && crash.contains("1 in a row"),
        "{crash}"
    );
}
