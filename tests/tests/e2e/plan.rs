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

    // The human form: the choice on top, a row per candidate with the published rule of thumb.
    let out = r1d(&["plan", "--hardware", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("chosen: deepseek-r1-0528:8b Q5_K_M on llamacpp (37/37 layers on GPU"),
        "{text}"
    );
    assert!(text.contains("8 cores, 16 GB RAM, 1 × 8 GB GPU"), "{text}");
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
    assert!(text.starts_with("chosen: "), "{text}");
    assert!(text.contains("deepseek-r1:1.5b"), "{text}");
}
