//! r1d choosing and serving an R1 by itself, with the zero-weight R1 stand-ins of
//! `scripts/make-r1-standins` (docs/standins.md): the real R1 tokenizer, template and tensor
//! shapes, so the planner, the backend's memory estimate, the load and the routes see a real R1
//! file. Stand-ins answer meaningless text: no assertion here looks at it, only at its shape.
//!
//! Opt in: `R1D_STANDINS=DIR` (the directory the script writes, default of the script
//! `~/.cache/r1d-standins`) — it loads the 1.5B and the 7B (≈ 2.5 and 6 GB of RAM, one at a time)
//! and never the 32B Q8_0 beside them. Without it the test skips loudly.

use std::path::PathBuf;
use std::process::Command;

use r1d_client::wire::{Plan, State};
use r1d_tests::{binary, link_into, Daemon, DaemonOptions};

use crate::ask;
use crate::llama::ONE_MODEL_AT_A_TIME;

const SMALL: &str = "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.standin.gguf";
const LARGE: &str = "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.standin.gguf";
/// 34.8 GB of weights: more than this machine's RAM (the test asserts it does not fit).
const TOO_BIG: &str = "DeepSeek-R1-Distill-Qwen-32B-Q8_0.standin.gguf";

fn standins() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("R1D_STANDINS").map(PathBuf::from) else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: R1D_STANDINS is not set; run scripts/make-r1-standins \
             --variants 1.5b,7b,32b --quants Q4_K_M,Q8_0 and set R1D_STANDINS to its directory \
             !!!!!!!!\n"
        );
        return None;
    };
    for name in [SMALL, LARGE, TOO_BIG] {
        assert!(
            dir.join(name).is_file(),
            "R1D_STANDINS={} lacks {name}",
            dir.display()
        );
    }
    Some(dir)
}

/// A models directory with the 1.5B and 7B Q4_K_M and the 32B Q8_0 stand-ins and no `--model`:
/// r1d plans them with the backend's own estimate of each file, loads the best present candidate
/// that fits, answers over OpenAI (R1's reasoning apart), Ollama `/api/chat` (a `thinking`
/// field) and D-Bus (`org.r1d.R1.Chat1.Ask` on a private session bus), `r1ctl status` shows the
/// variant, quantization, planned and actual memory — r1d holds no more than it planned — and
/// the 32B Q8_0 is listed, never loaded, with the RAM it lacks as its reason.
#[tokio::test]
async fn r1d_chooses_a_present_standin_by_the_plan_and_serves_it() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(dir) = standins() else { return };
    if !crate::dbus::tools_present(&["dbus-daemon"]) {
        return;
    }
    // Hard links next to the stand-ins (same file system: a copy of a sparse file would write
    // its gigabytes of zeros; a symlink out of the models directory is refused by the scan).
    let models = tempfile::Builder::new()
        .prefix(".e2e-models-")
        .tempdir_in(&dir)
        .unwrap();
    for name in [SMALL, LARGE, TOO_BIG] {
        link_into(&dir.join(name), &models.path().join(name));
    }
    let config = format!(
        "[store]\ndir = {:?}\nscan_huggingface = false\nscan_ollama = false\n",
        models.path().display().to_string()
    );
    let bus = crate::dbus::Bus::session();
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&config),
        args: vec!["--dbus".into(), "session".into()],
        env: vec![("DBUS_SESSION_BUS_ADDRESS", bus.address.clone())],
        ..Default::default()
    });
    let health = daemon.settled().await;
    assert_eq!(health.status, State::Ready, "{}", daemon.log());
    let client = daemon.client();

    // The plan, with the three files present: their RAM comes from llama.cpp's dry run.
    let plan: Plan = client.get_json("/r1/plan", false).await.unwrap();
    let present: Vec<_> = plan.candidates.iter().filter(|c| c.present).collect();
    assert_eq!(present.len(), 3, "{present:?}");
    for c in &present {
        assert_eq!(c.memory_source.as_deref(), Some("backend"), "{c:?}");
        assert!(c.formula_ram_bytes.is_some());
    }
    let too_big = present
        .iter()
        .find(|c| c.variant == "deepseek-r1:32b" && c.quantization == "Q8_0")
        .expect("the 32B Q8_0 stand-in is planned");
    assert!(!too_big.fits, "{too_big:?}");
    assert!(
        too_big.reason.contains("RAM") && too_big.reason.contains("short"),
        "the 32B Q8_0's reason does not name the RAM it lacks: {}",
        too_big.reason
    );
    let status = client.status().await.unwrap();
    let m = status.model.clone().expect("a model is served");
    assert_ne!(m.variant.as_deref(), Some("deepseek-r1:32b"));
    let served = present
        .iter()
        .find(|c| Some(c.variant.as_str()) == m.variant.as_deref())
        .unwrap_or_else(|| panic!("r1d serves {:?}, not a present stand-in", m.variant));
    assert!(served.fits, "{served:?}");
    eprintln!(
        "serving {} {:?}: {}\n32B Q8_0: {}",
        served.variant, m.quantization, served.reason, too_big.reason
    );
    // The planner's ranking: no present stand-in that fits and is fast enough is better.
    let fast = |c: &r1d_client::wire::PlanCandidate| c.fits && !c.reason.contains("under the");
    if fast(served) {
        assert!(
            !present
                .iter()
                .any(|c| fast(c) && c.variant == "deepseek-r1:7b" && served.variant != c.variant),
            "the 7B is fast enough here but r1d serves the {}",
            served.variant
        );
    }
    // The 32B Q8_0 is among the models r1d lists, and is not the one loaded.
    let listed: serde_json::Value = client.get_json("/api/tags", false).await.unwrap();
    let names: Vec<&str> = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{listed}");
    assert!(!m.path.ends_with(TOO_BIG), "{m:?}");

    assert_eq!(m.quantization.as_deref(), Some("Q4_K_M"));
    assert_eq!(m.planned_memory_source.as_deref(), Some("backend"));
    let planned = m.planned_ram_bytes.expect("planned memory");
    let held = m.resident_bytes.expect("resident memory");
    assert!(
        held <= planned,
        "r1d holds {held} bytes, more than the {planned} it planned"
    );

    // OpenAI: R1's template opens <think>, so what the model generates is reasoning.
    let mut request = ask("Why is the sky blue?");
    request.max_tokens = Some(8);
    request.temperature = Some(0.0);
    let answer = client.chat(&request).await.unwrap();
    let message = &answer.choices[0].message;
    assert!(message.reasoning_content.is_some(), "{answer:?}");
    assert_eq!(answer.usage.completion_tokens, 8);

    // Ollama: with `think`, the reasoning is a field of its own (its text is a stand-in's).
    let body = serde_json::json!({
        "model": m.name,
        "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        "think": true,
        "stream": false,
        "options": {"num_predict": 8, "temperature": 0},
    });
    let v: serde_json::Value = client.post_json("/api/chat", &body).await.unwrap();
    assert!(v["message"]["thinking"].is_string(), "{v}");
    assert_eq!(v["eval_count"], 8, "{v}");
    assert_eq!(v["done"], true, "{v}");

    // D-Bus: the same model answers Ask on the bus.
    let conn = bus.wait_for_r1d(&daemon).await;
    let manager = r1d_client::dbus::Manager1Proxy::new(&conn).await.unwrap();
    assert_eq!(manager.state().await.unwrap(), "ready");
    assert_eq!(manager.active_model().await.unwrap(), m.name);
    let chat = r1d_client::dbus::Chat1Proxy::new(&conn).await.unwrap();
    let mut options = std::collections::HashMap::new();
    options.insert("max_tokens", zbus::zvariant::Value::from(8u32));
    let (_content, _reasoning, usage) = chat.ask("Why is the sky blue?", options).await.unwrap();
    assert_eq!(u32::try_from(&usage["completion_tokens"]).unwrap(), 8);

    let out = Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in ["variant", "quantization", "planned", "actual"] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "no {line} line in r1ctl status:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("quantization") && l.contains("Q4_K_M")),
        "{text}"
    );
}

/// `r1d plan` keeps each file's backend estimate in `$XDG_CACHE_HOME/r1d/memory-estimates.json`:
/// the second plan takes it from there (its debug log says so) with the same figures, and a file
/// whose modification time changed is estimated again.
#[tokio::test]
async fn plan_takes_a_files_estimate_from_the_cache_until_the_file_changes() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(dir) = standins() else { return };
    let models = tempfile::Builder::new()
        .prefix(".e2e-models-")
        .tempdir_in(&dir)
        .unwrap();
    let file = models.path().join(SMALL);
    link_into(&dir.join(SMALL), &file);
    let cfg = models.path().join("plan.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\ndir = {:?}\nscan_huggingface = false\nscan_ollama = false\n",
            models.path().display().to_string()
        ),
    )
    .unwrap();
    let cache = models.path().join("cache");
    let plan = || {
        let out = Command::new(binary("r1d"))
            .args(["--user", "--config"])
            .arg(&cfg)
            .arg("--plugin-dir")
            .arg(r1d_tests::bin_dir())
            .args(["plan", "--json"])
            .env("XDG_DATA_HOME", models.path().join("data"))
            .env("XDG_CACHE_HOME", &cache)
            .env("RUST_LOG", "r1d=debug")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{log}");
        let plan: Plan = serde_json::from_slice(&out.stdout).unwrap();
        let c = plan.candidates.into_iter().find(|c| c.present).unwrap();
        assert_eq!(c.memory_source.as_deref(), Some("backend"), "{c:?}");
        (c.ram_bytes, log.contains("from the cache"))
    };
    let (first, cached) = plan();
    assert!(!cached, "the first plan found a cache");
    let entries = |path: &std::path::Path| -> usize {
        let text = std::fs::read_to_string(path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["entries"].as_array().unwrap().len()
    };
    let cache_file = cache.join("r1d/memory-estimates.json");
    assert_eq!(entries(&cache_file), 1);
    let (second, cached) = plan();
    assert!(cached, "the second plan did not use the cache");
    assert_eq!(first, second);

    // Another modification time: another file as far as the cache is concerned. (A hard link:
    // the stand-in's own time changes, and is put back.)
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_modified(modified + std::time::Duration::from_secs(1))
        .unwrap();
    let (third, cached) = plan();
    f.set_modified(modified).unwrap();
    assert!(!cached, "a changed file's estimate came from the cache");
    assert_eq!(third, first);
    assert_eq!(entries(&cache_file), 2);
}

/// The memory cgroup this test process is in, as a directory a child can be made in, and the
/// file a limit goes to: `(dir, limit file)` — v1 `memory.limit_in_bytes` or v2 `memory.max`.
fn own_memory_cgroup() -> Result<(PathBuf, &'static str), String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let v1 = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_owned())
    });
    if let Some(path) = v1 {
        let dir = PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
        if dir.is_dir() {
            return Ok((dir, "memory.limit_in_bytes"));
        }
    }
    let v2 = text
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned));
    if let Some(path) = v2 {
        let dir = PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        if dir.join("memory.max").is_file() || dir.join("cgroup.subtree_control").is_file() {
            return Ok((dir, "memory.max"));
        }
    }
    Err("no memory cgroup controller is mounted where this process is".into())
}

/// A child memory cgroup with a limit, removed on drop (it must be empty by then).
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(limit: u64) -> Result<Cgroup, String> {
        let (parent, limit_file) = own_memory_cgroup()?;
        let dir = parent.join(format!("r1d-e2e-{}-{limit}", std::process::id()));
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot create a cgroup in {}: {e}", parent.display()))?;
        let cgroup = Cgroup(dir);
        std::fs::write(cgroup.0.join(limit_file), limit.to_string())
            .map_err(|e| format!("cannot set {limit_file} in {}: {e}", cgroup.0.display()))?;
        // Swap would let a load past the limit without the OOM killer: none (v1 needs the
        // memsw file, which exists only with swap accounting).
        let _ = std::fs::write(cgroup.0.join("memory.swap.max"), "0");
        Ok(cgroup)
    }

    /// Processes the kernel's OOM killer killed in this cgroup: `oom_kill` of v2
    /// `memory.events` or of v1 `memory.oom_control`.
    fn oom_kills(&self) -> u64 {
        ["memory.events", "memory.oom_control"]
            .iter()
            .find_map(|f| std::fs::read_to_string(self.0.join(f)).ok())
            .and_then(|text| {
                text.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse().ok())
                })
            })
            .expect("the cgroup reports no oom_kill count")
    }

    /// The most memory the cgroup held (v2 `memory.peak`, v1 `memory.max_usage_in_bytes`),
    /// when the kernel reports it.
    fn peak(&self) -> Option<u64> {
        ["memory.peak", "memory.max_usage_in_bytes"]
            .iter()
            .find_map(|f| std::fs::read_to_string(self.0.join(f)).ok())
            .and_then(|t| t.trim().parse().ok())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The model's worker process ends a moment after r1d (its parent-death signal): the
        // cgroup is busy until then.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("could not remove the cgroup {}", self.0.display());
    }
}

/// r1d started inside `cgroup` (a shell puts itself in it, then execs r1d); killed on drop.
struct Confined {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Confined {
    fn start(cgroup: &Cgroup, config: &str) -> Confined {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r1d.toml"), config).unwrap();
        let script = "echo $$ > \"$1/cgroup.procs\" && shift && exec \"$@\"";
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&cgroup.0)
            .arg(binary("r1d"))
            .args(["--user", "--dbus", "off", "--socket"])
            .arg(dir.path().join("r1d.sock"))
            .arg("--config")
            .arg(dir.path().join("r1d.toml"))
            .arg("--plugin-dir")
            .arg(r1d_tests::bin_dir())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .env("HF_HUB_CACHE", dir.path().join("hf"))
            .env("OLLAMA_MODELS", dir.path().join("ollama"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("r1d.log")).unwrap())
            .spawn()
            .expect("failed to start sh");
        Confined { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("r1d.log")).unwrap_or_default()
    }

    /// `/r1/status` once r1d has settled (ready, or nothing to serve), up to 120 s.
    async fn settled(&mut self) -> r1d_client::wire::Status {
        let client = r1d_client::Client::new(self.dir.path().join("r1d.sock"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("r1d exited with {status}:\n{}", self.log());
            }
            if let Ok(s) = client.status().await {
                if !matches!(s.state, State::Loading | State::Starting) {
                    return s;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "r1d did not settle in 120 s:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Under a memory cgroup limit equal to the plan for the 1.5B stand-in, then the 7B (RAM + the
/// reserve, and r1d's own memory before it plans), r1d loads it and answers, and the OOM killer
/// never runs; with 10 % less than plan + reserve, it loads nothing and says the RAM is short.
/// Skips, saying why, where no memory cgroup can be made (cgroup v1 or v2).
/// `bench/cgroup-fit` is the same check as a script.
#[tokio::test]
async fn under_a_cgroup_limit_r1d_loads_what_fits_and_refuses_what_does_not() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(dir) = standins() else { return };
    for name in [SMALL, LARGE] {
        if !fits_its_plan_under_a_cgroup(&dir, name).await {
            return;
        }
    }
}

/// Drops `path`'s pages from the page cache (`posix_fadvise` `POSIX_FADV_DONTNEED`; pages another
/// process maps stay).
fn drop_page_cache(path: &std::path::Path) {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a valid descriptor; the call only advises the kernel.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise failed: {rc}");
}

/// The check of [`under_a_cgroup_limit_r1d_loads_what_fits_and_refuses_what_does_not`] for
/// one stand-in, alone in a models directory; false when no cgroup can be made here.
async fn fits_its_plan_under_a_cgroup(dir: &std::path::Path, name: &str) -> bool {
    let models = tempfile::Builder::new()
        .prefix(".e2e-models-")
        .tempdir_in(dir)
        .unwrap();
    link_into(&dir.join(name), &models.path().join(name));
    const RESERVE: u64 = 256 << 20;
    let config = format!(
        "[store]\ndir = {:?}\nscan_huggingface = false\nscan_ollama = false\n\
         [server]\nparallel = 1\n[planner]\nreserve_ram_bytes = {RESERVE}\n",
        models.path().display().to_string()
    );
    // The plan outside the cgroup: the stand-in's RAM by llama.cpp's estimate.
    let cfg = models.path().join("plan.toml");
    std::fs::write(&cfg, &config).unwrap();
    let out = Command::new(binary("r1d"))
        .args(["--user", "--config"])
        .arg(&cfg)
        .arg("--plugin-dir")
        .arg(r1d_tests::bin_dir())
        .args(["plan", "--json"])
        .env("XDG_DATA_HOME", models.path().join("data"))
        .env("XDG_CACHE_HOME", models.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Plan = serde_json::from_slice(&out.stdout).unwrap();
    let c = plan
        .candidates
        .iter()
        .find(|c| c.present)
        .unwrap_or_else(|| panic!("{name} is present"));
    assert_eq!(c.memory_source.as_deref(), Some("backend"));
    // r1d's own memory before it plans (binary, plugins, tokenizer) is not in the plan.
    const SLACK: u64 = 192 << 20;
    let enough = c.ram_bytes + RESERVE + SLACK;

    let cgroup = match Cgroup::new(enough) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
            return false;
        }
    };
    {
        // A page is charged to the cgroup that first reads it: pages of the stand-in cached by
        // an earlier run would be held by r1d without counting against its limit.
        drop_page_cache(&models.path().join(name));
        let mut r1d = Confined::start(&cgroup, &config);
        let status = r1d.settled().await;
        assert_eq!(status.state, State::Ready, "{status:?}\n{}", r1d.log());
        let client = r1d_client::Client::new(r1d.dir.path().join("r1d.sock"));
        let mut request = ask("Hello?");
        request.max_tokens = Some(4);
        let answer = client.chat(&request).await.unwrap();
        assert_eq!(answer.usage.completion_tokens, 4);
        assert!(
            r1d.child.try_wait().unwrap().is_none(),
            "r1d died:\n{}",
            r1d.log()
        );
        assert_eq!(cgroup.oom_kills(), 0, "the OOM killer ran:\n{}", r1d.log());
        eprintln!(
            "{name}: limit {enough} bytes (planned {} + reserve {RESERVE} + {SLACK} for r1d \
             itself), the cgroup's peak {:?}",
            c.ram_bytes,
            cgroup.peak()
        );
    }
    drop(cgroup);

    let tight = (c.ram_bytes + RESERVE) * 9 / 10;
    let cgroup = Cgroup::new(tight).expect("a second cgroup");
    let mut r1d = Confined::start(&cgroup, &config);
    let status = r1d.settled().await;
    assert_ne!(status.state, State::Ready, "{status:?}");
    assert!(status.model.is_none());
    let why = format!(
        "{} {}",
        status.error.clone().unwrap_or_default(),
        status.selection.clone().unwrap_or_default()
    );
    eprintln!(
        "{name}: limit {tight} bytes (planned {} + reserve {RESERVE}, less 10 %): {why}",
        c.ram_bytes
    );
    assert!(
        why.contains("RAM") && why.contains("short"),
        "no memory reason in: {why}"
    );
    assert_eq!(cgroup.oom_kills(), 0, "the OOM killer ran:\n{}", r1d.log());
    drop(r1d);
    drop(cgroup);
    true
}
