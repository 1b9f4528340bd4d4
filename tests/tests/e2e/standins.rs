//! r1d choosing and serving an R1 by itself, with the zero-weight R1 stand-ins of
//! `scripts/make-r1-standins` (docs/standins.md): the real R1 tokenizer, template and tensor
//! shapes, so the planner, the backend's memory estimate, the load and the routes see a real R1
//! file. Stand-ins answer meaningless text: no assertion here looks at it, only at its shape.
//!
//! Opt in: `R1D_STANDINS=DIR` (the directory the script writes, default of the script
//! `~/.cache/r1d-standins`) — it loads the 1.5B (≈ 2.5 GB of RAM). Without it the test skips
//! loudly.

use std::path::PathBuf;
use std::process::Command;

use r1d_client::wire::{Plan, State};
use r1d_tests::{binary, link_into, Daemon, DaemonOptions};

use crate::ask;
use crate::llama::ONE_MODEL_AT_A_TIME;

const SMALL: &str = "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.standin.gguf";
const LARGE: &str = "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.standin.gguf";

fn standins() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("R1D_STANDINS").map(PathBuf::from) else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: R1D_STANDINS is not set; run scripts/make-r1-standins \
             --variants 1.5b,7b --quants Q4_K_M and set R1D_STANDINS to its directory !!!!!!!!\n"
        );
        return None;
    };
    for name in [SMALL, LARGE] {
        assert!(
            dir.join(name).is_file(),
            "R1D_STANDINS={} lacks {name}",
            dir.display()
        );
    }
    Some(dir)
}

/// A models directory with the 1.5B and 7B stand-ins and no `--model`: r1d plans with the
/// backend's own estimate of each file, loads the best present candidate, answers over OpenAI
/// with R1's reasoning split, and `r1ctl status` shows the variant, the planned and the actual
/// memory — and r1d holds no more than it planned.
#[tokio::test]
async fn r1d_chooses_a_present_standin_by_the_plan_and_serves_it() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(dir) = standins() else { return };
    // Hard links next to the stand-ins (same file system: a copy of a sparse file would write
    // its gigabytes of zeros).
    let models = tempfile::Builder::new()
        .prefix(".e2e-models-")
        .tempdir_in(&dir)
        .unwrap();
    for name in [SMALL, LARGE] {
        link_into(&dir.join(name), &models.path().join(name));
    }
    let config = format!(
        "[store]\ndir = {:?}\nscan_huggingface = false\nscan_ollama = false\n",
        models.path().display().to_string()
    );
    let daemon = Daemon::start(DaemonOptions {
        config: Some(&config),
        ..Default::default()
    });
    let health = daemon.settled().await;
    assert_eq!(health.status, State::Ready, "{}", daemon.log());
    let client = daemon.client();

    // The plan, with both files present: their RAM comes from llama.cpp's dry run.
    let plan: Plan = client.get_json("/r1/plan", false).await.unwrap();
    let present: Vec<_> = plan.candidates.iter().filter(|c| c.present).collect();
    assert_eq!(present.len(), 2, "{present:?}");
    for c in &present {
        assert_eq!(c.memory_source.as_deref(), Some("backend"), "{c:?}");
        assert!(c.formula_ram_bytes.is_some());
    }
    let status = client.status().await.unwrap();
    let m = status.model.clone().expect("a model is served");
    let served = present
        .iter()
        .find(|c| Some(c.variant.as_str()) == m.variant.as_deref())
        .unwrap_or_else(|| panic!("r1d serves {:?}, not a present stand-in", m.variant));
    assert!(served.fits, "{served:?}");
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
}
