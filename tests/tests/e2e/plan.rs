//! `r1d plan` / `r1d hardware` without a daemon, and `GET /r1/plan`, `GET /r1/hardware`,
//! `r1ctl plan` on a running one.

use std::path::{Path, PathBuf};
use std::process::Command;

use r1d_client::wire::{HardwareProfile, Plan};
use r1d_tests::{binary, Daemon, DaemonOptions};

fn profile(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../daemon/tests/fixtures/profiles")
        .join(name)
}

/// Runs `r1d ARGS` with an empty config (so a config on this machine cannot change the policy).
fn r1d(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("r1d.toml");
    std::fs::write(&config, "").unwrap();
    Command::new(binary("r1d"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .expect("failed to run r1d")
}

#[test]
fn plan_for_an_rtx_4060_profile_picks_the_qwen3_8b_entirely_on_the_gpu() {
    let path = profile("rtx4060-desktop.json");
    let out = r1d(&["plan", "--hardware", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Plan = serde_json::from_slice(&out.stdout).unwrap();
    let chosen = plan.chosen.as_ref().expect(&plan.reason);
    assert_eq!(chosen.variant, "deepseek-r1-0528:8b");
    assert_eq!(chosen.quantization, "Q5_K_M");
    assert_eq!(chosen.backend, "llamacpp");
    assert_eq!((chosen.gpu_layers, chosen.total_layers), (37, 37));
    assert!(
        chosen.vram_bytes[0] <= 8_053_063_680,
        "{:?}",
        chosen.vram_bytes
    );
    assert!(chosen.est_generation_tokens_per_s >= 10.0);
    // 7 distills × 5 + the 1.5B's ONNX q4f16 + R1 671B × 8 + R1-0528 671B × 4.
    assert_eq!(plan.candidates.len(), 48);
    assert!(plan.candidates.iter().all(|c| !c.reason.is_empty()));

    // The human form: the choice on top, a row per variant with the published rule of thumb.
    let out = r1d(&["plan", "--hardware", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        words(&text)
            .starts_with("chosen: deepseek-r1-0528:8b Q5_K_M on llamacpp (37/37 layers on GPU"),
        "{text}"
    );
    assert!(
        text.contains("published rule of thumb: 8 cores, 16 GB RAM, 1 × 8 GB GPU"),
        "{text}"
    );
}

/// `text` with every run of white space (line breaks of wrapped cells too) as one space.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The candidate rows of `r1d plan`'s table: a mark column (`*` for the choice), then the
/// variant.
fn candidate_rows(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            (l.starts_with(" *  ") || l.starts_with("    ")) && l[4..].starts_with("deepseek-r1")
        })
        .collect()
}

#[test]
fn plan_fits_100_columns_with_a_row_per_variant_and_all_shows_every_candidate() {
    let path = profile("rtx4060-desktop.json");
    let out = r1d(&["plan", "--hardware", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // Not a terminal: 100 columns, the reasons wrapped below their rows.
    for line in text.lines() {
        assert!(
            line.chars().count() <= 100,
            "{} columns: {line}\n{text}",
            line.chars().count()
        );
    }
    let rows = candidate_rows(&text);
    // One per variant: 7 distills, R1 671B and R1-0528 671B.
    assert_eq!(rows.len(), 9, "{text}");
    let chosen: Vec<&&str> = rows.iter().filter(|r| r.starts_with(" *  ")).collect();
    assert_eq!(chosen.len(), 1, "{text}");
    assert!(
        chosen[0].contains("deepseek-r1-0528:8b") && chosen[0].contains("Q5_K_M"),
        "{text}"
    );
    assert!(words(&text).contains("39 more with --all"), "{text}");

    let out = r1d(&["plan", "--hardware", path.to_str().unwrap(), "--all"]);
    let all = String::from_utf8_lossy(&out.stdout);
    assert_eq!(candidate_rows(&all).len(), 48, "{all}");
    assert!(all.lines().all(|l| l.chars().count() <= 100), "{all}");
    assert!(!all.contains("more with --all"), "{all}");
}

#[test]
fn plan_for_a_machine_too_small_has_a_null_choice_and_says_what_is_short() {
    let path = profile("too-small.json");
    let out = r1d(&["plan", "--hardware", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["chosen"].is_null(), "{json}");
    let reason = json["reason"].as_str().unwrap();
    assert!(
        reason.contains("deepseek-r1:1.5b Q4_K_M") && reason.contains("short"),
        "{reason}"
    );
}

#[test]
fn plan_with_an_unreadable_profile_exits_1_naming_it() {
    let out = r1d(&["plan", "--hardware", "/nonexistent/profile.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/profile.json"));
}

#[test]
fn hardware_json_of_this_machine_is_a_profile_plan_reads_back() {
    let out = r1d(&["hardware", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let profile: HardwareProfile = serde_json::from_slice(&out.stdout).unwrap();
    assert!(profile.cpu.cores >= 1);
    assert!(profile.memory.available_bytes <= profile.memory.total_bytes);
    assert!(profile.memory.bandwidth_bytes_per_s.unwrap() > 1_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("here.json");
    std::fs::write(&path, &out.stdout).unwrap();
    let out = r1d(&["plan", "--hardware", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Plan = serde_json::from_slice(&out.stdout).unwrap();
    if let Some(c) = &plan.chosen {
        assert!(c.ram_bytes <= profile.memory.available_bytes);
    }
}

#[tokio::test]
async fn running_daemon_serves_hardware_and_plan_and_r1ctl_prints_it() {
    let daemon = Daemon::start(DaemonOptions::default());
    let client = daemon.client();
    let hw: HardwareProfile = client.get_json("/r1/hardware", false).await.unwrap();
    assert!(hw.cpu.cores >= 1);
    let plan: Plan = client.get_json("/r1/plan", false).await.unwrap();
    assert_eq!(plan.candidates.len(), 48);
    if let Some(c) = &plan.chosen {
        assert!(c.fits);
        assert!(c.ram_bytes <= hw.memory.available_bytes, "{c:?}");
        for (need, gpu) in c.vram_bytes.iter().zip(&hw.gpus) {
            assert!(*need <= gpu.vram_free_bytes);
        }
    } else {
        assert!(plan.reason.starts_with("nothing fits"), "{}", plan.reason);
    }

    let out = Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("plan")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("chosen:"), "{text}");
    assert!(text.contains("deepseek-r1:1.5b"), "{text}");
    let all = Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["plan", "--all"])
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&all.stdout);
    assert_eq!(candidate_rows(&all).len(), plan.candidates.len(), "{all}");
    assert!(
        candidate_rows(&text).len() < plan.candidates.len(),
        "{text}"
    );
}

const MIB: u64 = 1 << 20;

/// `profile` with `more` bytes of free VRAM on GPU 0 (and as much more installed).
fn with_more_vram(profile: &HardwareProfile, more: u64) -> HardwareProfile {
    let mut p = profile.clone();
    p.gpus[0].vram_free_bytes += more;
    p.gpus[0].vram_total_bytes += more;
    p
}

/// `profile` with `more` bytes of RAM available (and as much more installed).
fn with_more_ram(profile: &HardwareProfile, more: u64) -> HardwareProfile {
    let mut p = profile.clone();
    p.memory.available_bytes += more;
    p.memory.total_bytes += more;
    p
}

/// `r1d plan --json` for `profile`.
fn plan_of(profile: &HardwareProfile) -> Plan {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile.json");
    std::fs::write(&path, serde_json::to_vec(profile).unwrap()).unwrap();
    let out = r1d(&["plan", "--hardware", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn choice(plan: &Plan) -> Option<(String, String)> {
    plan.chosen
        .as_ref()
        .map(|c| (c.variant.clone(), c.quantization.clone()))
}

#[test]
fn plan_for_an_rtx_4060_says_how_much_more_vram_brings_the_next_quantization() {
    let path = profile("rtx4060-desktop.json");
    let hw: HardwareProfile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let plan = plan_of(&hw);
    // More RAM brings nothing better (what spills to the CPU is under 10 tokens/s); 340 MiB more
    // free VRAM holds Q6_K of the same variant entirely on the GPU.
    let [u] = plan.upgrades.as_slice() else {
        panic!("{:?}", plan.upgrades)
    };
    assert_eq!(
        (
            u.resource.as_str(),
            u.gpu,
            u.more_bytes,
            u.candidate.variant.as_str(),
            u.candidate.quantization.as_str(),
            u.candidate.gpu_layers,
            u.candidate.total_layers
        ),
        (
            "vram",
            Some(0),
            340 * MIB,
            "deepseek-r1-0528:8b",
            "Q6_K",
            37,
            37
        )
    );
    // Q6_K's VRAM on the grown GPU is exactly what is free there, to the MiB.
    let free = hw.gpus[0].vram_free_bytes + u.more_bytes;
    assert!(u.candidate.vram_bytes[0] <= free && free - u.candidate.vram_bytes[0] < MIB);
    // 272 GB/s × 0.7 for the bytes of a token, plus 37 offloaded layers × 52 µs (the planner's
    // GPU model, docs/gpu.md).
    assert_eq!(
        plan.more_memory,
        "with 357 MB more free VRAM on GPU 0: deepseek-r1-0528:8b Q6_K (37/37 layers on GPU, ≈ 26.5 tokens/s)"
    );
    // The same r1d, asked about the grown machine, chooses it; a MiB less does not.
    let then = plan_of(&with_more_vram(&hw, u.more_bytes));
    assert_eq!(
        choice(&then),
        Some(("deepseek-r1-0528:8b".into(), "Q6_K".into()))
    );
    let less = plan_of(&with_more_vram(&hw, u.more_bytes - MIB));
    assert_eq!(
        choice(&less),
        Some(("deepseek-r1-0528:8b".into(), "Q5_K_M".into()))
    );
    // The human form says it under the reason.
    let out = r1d(&["plan", "--hardware", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        words(&text).contains(&format!(" more memory: {} ", plan.more_memory)),
        "{text}"
    );
}

#[test]
fn plan_for_a_machine_too_small_says_how_much_more_ram_makes_the_smallest_fit() {
    let path = profile("too-small.json");
    let hw: HardwareProfile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let plan = plan_of(&hw);
    assert!(plan.chosen.is_none());
    let [u] = plan.upgrades.as_slice() else {
        panic!("{:?}", plan.upgrades)
    };
    assert_eq!(
        (
            u.resource.as_str(),
            u.gpu,
            u.candidate.variant.as_str(),
            u.candidate.quantization.as_str()
        ),
        ("ram", None, "deepseek-r1:1.5b", "Q4_K_M")
    );
    // On the CPU the RAM a candidate needs does not depend on the RAM there is: its need plus
    // the default 1 GiB reserve, less what is available, rounded up to a MiB.
    let small = plan
        .candidates
        .iter()
        .find(|c| c.variant == "deepseek-r1:1.5b" && c.quantization == "Q4_K_M")
        .unwrap();
    let short = small.ram_bytes + (1 << 30) - hw.memory.available_bytes;
    assert_eq!(u.more_bytes, short.div_ceil(MIB) * MIB);
    assert_eq!(u.more_bytes, 2149 * MIB);
    assert!(
        plan.more_memory
            .starts_with("with 2.3 GB more RAM: deepseek-r1:1.5b Q4_K_M (0/29 layers on GPU"),
        "{}",
        plan.more_memory
    );
    assert_eq!(
        choice(&plan_of(&with_more_ram(&hw, u.more_bytes - MIB))),
        None
    );
    assert_eq!(
        choice(&plan_of(&with_more_ram(&hw, u.more_bytes))),
        Some(("deepseek-r1:1.5b".into(), "Q4_K_M".into()))
    );
}

/// A daemon on a fake machine (`--hardware-root`: the cgroup v2 fixture, a service limited to
/// a few GB) with no model present: `/r1/status` and `r1ctl status` say why nothing is served and
/// what more memory would bring, as `/r1/plan` computes it.
#[tokio::test]
async fn status_on_a_fake_machine_says_what_more_memory_would_bring() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../daemon/tests/fixtures/hardware/cgroup-v2-slice");
    let daemon = Daemon::start(DaemonOptions {
        args: vec!["--hardware-root".into(), root.display().to_string()],
        ..Default::default()
    });
    daemon.settled().await;
    let client = daemon.client();
    let hw: HardwareProfile = client.get_json("/r1/hardware", false).await.unwrap();
    let plan: Plan = client.get_json("/r1/plan", false).await.unwrap();
    let status: r1d_client::wire::Status = client.status().await.unwrap();

    assert_eq!(
        choice(&plan),
        Some(("deepseek-r1:1.5b".into(), "Q4_K_M".into()))
    );
    let [u] = plan.upgrades.as_slice() else {
        panic!("{:?}", plan.upgrades)
    };
    assert_eq!(
        (
            u.resource.as_str(),
            u.candidate.variant.as_str(),
            u.candidate.quantization.as_str()
        ),
        ("ram", "deepseek-r1:1.5b", "Q5_K_M")
    );
    let next = plan
        .candidates
        .iter()
        .find(|c| c.variant == "deepseek-r1:1.5b" && c.quantization == "Q5_K_M")
        .unwrap();
    let short = next.ram_bytes + (1 << 30) - hw.memory.available_bytes;
    assert_eq!(u.more_bytes, short.div_ceil(MIB) * MIB);

    // Status carries the plan's upgrade, with the reason nothing is served.
    assert_eq!(status.upgrades, plan.upgrades);
    assert_eq!(
        status.more_memory.as_deref(),
        Some(plan.more_memory.as_str())
    );
    let selection = status.selection.clone().unwrap();
    assert!(
        selection.starts_with("no usable DeepSeek-R1 model is present")
            && selection.contains("`r1ctl pull deepseek-r1:1.5b`"),
        "{selection}"
    );

    let out = Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("more memory   {}\n", plan.more_memory)),
        "{text}"
    );
    assert!(
        text.contains("why           no usable DeepSeek-R1"),
        "{text}"
    );
    let out = Command::new(binary("r1ctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["--json", "status"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["upgrades"][0]["resource"], "ram");
    assert_eq!(json["upgrades"][0]["more_bytes"], u.more_bytes);
    assert_eq!(json["upgrades"][0]["candidate"]["quantization"], "Q5_K_M");
}

/// A profile whose counts are written as floats (`4e10`, `8053063680.0`), as tools and people
/// write JSON numbers, plans exactly as the same profile written with integers.
#[test]
fn plan_hardware_accepts_every_json_spelling_of_a_count() {
    let path = profile("rtx4060-desktop.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    fn floats(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Number(n) if n.is_u64() => {
                // 8053063680 → "8.05306368e9": the same count as a float.
                let f = n.as_u64().unwrap() as f64;
                *v = serde_json::Value::Number(serde_json::Number::from_f64(f).unwrap());
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(floats),
            serde_json::Value::Object(o) => o.values_mut().for_each(floats),
            _ => {}
        }
    }
    floats(&mut value);
    let dir = tempfile::tempdir().unwrap();
    let floated = dir.path().join("floats.json");
    std::fs::write(&floated, serde_json::to_string(&value).unwrap()).unwrap();
    assert!(std::fs::read_to_string(&floated).unwrap().contains(".0"));
    let plan_of = |p: &Path| {
        let out = r1d(&["plan", "--hardware", p.to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Plan>(&out.stdout).unwrap()
    };
    let (a, b) = (plan_of(&path), plan_of(&floated));
    assert_eq!(a.chosen, b.chosen);
    assert_eq!(a.candidates.len(), b.candidates.len());
}

/// Runs `r1d ARGS` with `config` as its config file.
fn r1d_with(config: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r1d.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(binary("r1d"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .expect("failed to run r1d")
}

/// "What would r1d run on this 24 GB machine plus two 32 GB workers": the 70B, which does not
/// fit the host alone, split across the host and both workers, per host, with the network's
/// share of each token.
#[test]
fn plan_for_a_24_gb_host_and_two_32_gb_workers_splits_the_70b_across_them() {
    const PIN_70B: &str = "[planner]\nvariant = \"deepseek-r1:70b\"\nmin_tokens_per_s = 0\n";
    let path = profile("24gb-host-two-32gb-workers.json");
    let out = r1d_with(
        PIN_70B,
        &["plan", "--hardware", path.to_str().unwrap(), "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Plan = serde_json::from_slice(&out.stdout).unwrap();
    let workers = ["10.8.0.2:50052", "10.8.0.3:50052"];
    let reserve = 1u64 << 30; // [planner] reserve_ram_bytes' default
    let q4 = plan
        .candidates
        .iter()
        .find(|c| c.variant == "deepseek-r1:70b" && c.quantization == "Q4_K_M")
        .unwrap();
    let chosen = plan.chosen.as_ref().expect(&plan.reason);
    assert_eq!(chosen.variant, "deepseek-r1:70b");
    for c in [q4, chosen] {
        assert!(c.fits, "{}", c.reason);
        let hosts: Vec<&str> = c.hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts, ["cpu", workers[0], workers[1]], "{:?}", c.hosts);
        assert_eq!(
            c.hosts.iter().map(|h| h.layers).sum::<u32>(),
            c.total_layers,
            "{:?}",
            c.hosts
        );
        assert_eq!(c.hosts[0].layers, c.total_layers - c.gpu_layers);
        assert_eq!(c.hosts[0].bytes, c.ram_bytes);
        assert!(c.ram_bytes + reserve <= 22_000_000_000, "{}", c.ram_bytes);
        for h in &c.hosts[1..] {
            assert!(h.bytes + reserve <= 32_000_000_000, "{h:?}");
            assert!(h.layers > 0, "{h:?}");
        }
        // Two runs of layers on workers, 0.5 ms each way and back, plus the activations
        // (8192 × 4 bytes in and out of the first, in to the second) and the logits (128 256 ×
        // 4 bytes) at 117 MB/s.
        let expected_ms = 2.0 * 0.5 + (3.0 * 4.0 * 8192.0 + 4.0 * 128_256.0) / 117e6 * 1e3;
        assert!(
            (c.network_ms_per_token - expected_ms).abs() < 0.002,
            "{} ms/token on the network, expected {expected_ms}",
            c.network_ms_per_token
        );
    }

    // The same host without its workers: the 70B Q4_K_M does not fit.
    let mut alone: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    alone.as_object_mut().unwrap().remove("rpc_workers");
    let dir = tempfile::tempdir().unwrap();
    let alone_path = dir.path().join("alone.json");
    std::fs::write(&alone_path, alone.to_string()).unwrap();
    let out = r1d_with(
        PIN_70B,
        &["plan", "--hardware", alone_path.to_str().unwrap(), "--json"],
    );
    let plan: Plan = serde_json::from_slice(&out.stdout).unwrap();
    let q4 = plan
        .candidates
        .iter()
        .find(|c| c.variant == "deepseek-r1:70b" && c.quantization == "Q4_K_M")
        .unwrap();
    assert!(!q4.fits && q4.reason.contains("short"), "{}", q4.reason);
    assert!(plan.chosen.is_none(), "{:?}", plan.chosen);

    // The human form names the split per host.
    let out = r1d_with(PIN_70B, &["plan", "--hardware", path.to_str().unwrap()]);
    let text = words(&String::from_utf8_lossy(&out.stdout));
    assert!(text.contains("split: cpu: "), "{text}");
    for w in workers {
        assert!(text.contains(&format!("{w}: ")), "{text}");
    }
    assert!(text.contains("ms/token on the network"), "{text}");
}
