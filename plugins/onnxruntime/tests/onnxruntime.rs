//! Tests of the ONNX Runtime plugin against the real ONNX fixture.
//!
//! Fixtures live in `$R1D_TEST_MODELS` (default `~/.cache/r1d-test-models`), made by
//! `scripts/make-onnx-fixture`:
//! - `SmolLM2-135M-Instruct-onnx/`: SmolLM2-135M-Instruct exported to ONNX (fp32) from the
//!   packaged GGUF, with `reference.json`: a prompt's ids and 48 greedy ids computed by
//!   transformers on the same weights (end of sequence ignored);
//! - `libonnxruntime.so`: the ONNX Runtime library of the PyPI `onnxruntime` wheel.
//!
//! A missing fixture skips its test loudly, except under `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use r1_onnx_common::{runtime, OnnxModel};
use r1_plugin_onnxruntime::OnnxRuntimePlugin;
use r1_plugin_sdk::abi;
use r1_plugin_sdk::{FinishReason, GenerateRequest, GenerateResult, LoadParams, Model, Plugin};
use serde_json::Value;

const MODEL_DIR: &str = "SmolLM2-135M-Instruct-onnx";
const LIBRARY: &str = "libonnxruntime.so";

fn fixture(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("R1D_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/r1d-test-models")
        });
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("test fixture {} is missing (CI=true)", path.display());
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: test fixture {} is missing; run scripts/fetch-test-models (it calls \
         scripts/make-onnx-fixture) or set R1D_TEST_MODELS !!!!!!!!\n",
        path.display()
    );
    None
}

/// Loads the fixture's ONNX Runtime (before anything else in this process can pick another) and
/// installs the SDK's log forwarding, once.
fn init() -> Option<()> {
    static ONCE: OnceLock<Option<()>> = OnceLock::new();
    *ONCE.get_or_init(|| {
        let lib = fixture(LIBRARY)?;
        let rt = runtime::runtime(Some(&lib)).expect("the fixture's ONNX Runtime loads");
        assert_eq!(rt.library, lib);
        let api = r1_plugin_onnxruntime::r1_plugin_entry(abi::R1_PLUGIN_ABI_VERSION);
        assert!(!api.is_null());
        Some(())
    })
}

fn params(path: &Path) -> LoadParams {
    LoadParams {
        path: path.to_str().expect("UTF-8 fixture path").to_owned(),
        ..LoadParams::default()
    }
}

/// The fixture model, loaded once and shared (tests lock it in turn).
fn smollm2() -> Option<MutexGuard<'static, OnnxModel>> {
    static MODEL: OnceLock<Option<Mutex<OnnxModel>>> = OnceLock::new();
    let model = MODEL.get_or_init(|| {
        init()?;
        let dir = fixture(MODEL_DIR)?;
        Some(Mutex::new(
            OnnxRuntimePlugin
                .load(params(&dir), &mut |_| true)
                .expect("the ONNX fixture loads"),
        ))
    });
    Some(
        model
            .as_ref()?
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

struct Reference {
    prompt: String,
    prompt_ids: Vec<i32>,
    greedy_ids: Vec<i32>,
}

fn reference() -> Option<Reference> {
    let path = fixture(MODEL_DIR)?.join("reference.json");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("reference.json parses");
    let ids = |key: &str| -> Vec<i32> {
        json[key]
            .as_array()
            .unwrap_or_else(|| panic!("reference.json has no {key}"))
            .iter()
            .map(|v| v.as_i64().expect("an id") as i32)
            .collect()
    };
    Some(Reference {
        prompt: json["prompt"].as_str().expect("a prompt").to_owned(),
        prompt_ids: ids("prompt_ids"),
        greedy_ids: ids("greedy_ids"),
    })
}

fn greedy(prompt: Vec<i32>, max_tokens: u32, ignore_eos: bool) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens: prompt,
        max_tokens,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        min_p: 0.0,
        seed: Some(1),
        stop_tokens: vec![],
        ignore_eos,
        ..Default::default()
    }
}

fn run(model: &mut OnnxModel, request: GenerateRequest) -> (Vec<i32>, String, GenerateResult) {
    let mut ids = Vec::new();
    let mut text = Vec::new();
    let result = model
        .generate(request, &mut |piece, id| {
            if id != abi::R1_TOKEN_PROMPT_PROGRESS {
                ids.push(id);
                text.extend_from_slice(piece);
            }
            true
        })
        .expect("generation succeeds");
    (ids, String::from_utf8(text).expect("UTF-8 pieces"), result)
}

#[test]
fn the_tokenizer_matches_transformers_on_the_rendered_prompt() {
    let (Some(model), Some(reference)) = (smollm2(), reference()) else {
        return;
    };
    let ids = model
        .tokenize(&reference.prompt, false, true)
        .expect("tokenize");
    assert_eq!(ids, reference.prompt_ids);
    // Without special-token parsing, "<|im_start|>" is text, not id 1.
    let literal = model.tokenize("<|im_start|>", false, false).unwrap();
    assert!(!literal.contains(&1) && literal.len() > 1, "{literal:?}");
}

#[test]
fn greedy_ids_match_the_transformers_reference_for_48_tokens() {
    let (Some(mut model), Some(reference)) = (smollm2(), reference()) else {
        return;
    };
    assert!(reference.greedy_ids.len() >= 32);
    let n = reference.greedy_ids.len() as u32;
    let (ids, text, result) = run(&mut model, greedy(reference.prompt_ids.clone(), n, true));
    assert_eq!(
        ids, reference.greedy_ids,
        "greedy ids differ from transformers'"
    );
    assert_eq!(result.finish_reason, FinishReason::Length);
    assert_eq!(result.completion_tokens, n);
    assert!(
        text.starts_with("The capital of France is Paris."),
        "{text:?}"
    );
}

#[test]
fn generation_stops_at_the_end_of_sequence_token() {
    let (Some(mut model), Some(reference)) = (smollm2(), reference()) else {
        return;
    };
    let (ids, text, result) = run(&mut model, greedy(reference.prompt_ids.clone(), 64, false));
    let eos = reference
        .greedy_ids
        .iter()
        .position(|id| *id == 2)
        .expect("EOS in reference");
    assert_eq!(ids, reference.greedy_ids[..eos]);
    assert_eq!(result.finish_reason, FinishReason::Stop);
    assert_eq!(text, "The capital of France is Paris.");
}

#[test]
fn a_longer_prompt_reuses_the_cache_and_continues_the_same() {
    let (Some(mut model), Some(reference)) = (smollm2(), reference()) else {
        return;
    };
    // First request: the prompt and 8 tokens; the cache then holds prompt + 7 of them.
    let (first, _, _) = run(&mut model, greedy(reference.prompt_ids.clone(), 8, true));
    assert_eq!(first, reference.greedy_ids[..8]);
    let mut longer = reference.prompt_ids.clone();
    longer.extend_from_slice(&first);
    let (rest, _, result) = run(&mut model, greedy(longer.clone(), 16, true));
    assert_eq!(result.cached_prompt_tokens as usize, longer.len() - 1);
    assert_eq!(rest, reference.greedy_ids[8..24]);
}

#[test]
fn info_has_the_template_and_special_tokens() {
    let Some(model) = smollm2() else {
        return;
    };
    let info = model.info().unwrap();
    assert_eq!(info.layers, 30);
    assert_eq!(info.architecture.as_deref(), Some("llama"));
    assert_eq!(info.eos_token.as_ref().map(|t| t.id), Some(2));
    assert_eq!(
        info.bos_token.as_ref().map(|t| t.text.as_str()),
        Some("<|im_start|>")
    );
    assert!(info.eog_token_ids.contains(&2));
    assert!(!info.add_bos_token);
    let template = info.chat_template.expect("a chat template");
    assert!(template.contains("<|im_start|>"), "{template}");
    // 30 layers × K and V × 3 heads × 64 × 4 bytes (f32) per token.
    assert_eq!(
        info.memory.kv_cache_bytes,
        u64::from(info.context_length) * 30 * 2 * 3 * 64 * 4
    );
    assert!(info.memory.weights_bytes > 500_000_000);
    // SmolLM2-135M: 134.5 M parameters from its config's shapes (tied output head).
    assert_eq!(info.parameters, 134_515_008);
}

#[test]
fn seeded_sampling_repeats_and_the_seed_matters() {
    let (Some(mut model), Some(reference)) = (smollm2(), reference()) else {
        return;
    };
    let sample = |model: &mut OnnxModel, seed| {
        let request = GenerateRequest {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            seed: Some(seed),
            ..greedy(reference.prompt_ids.clone(), 24, true)
        };
        run(model, request).0
    };
    let a = sample(&mut model, 42);
    assert_eq!(a, sample(&mut model, 42));
    assert_eq!(a.len(), 24);
    let others: Vec<Vec<i32>> = (43..46).map(|seed| sample(&mut model, seed)).collect();
    assert!(
        others.iter().any(|o| *o != a),
        "four seeds gave the same 24 tokens"
    );
}

/// A prompt evaluated in chunks of 8 tokens (the cache growing between runs of several tokens)
/// gives the same greedy ids, and the host hears of the progress between chunks.
#[test]
fn a_prompt_in_small_batches_gives_the_same_ids_and_reports_progress() {
    let Some(reference) = reference() else {
        return;
    };
    if init().is_none() {
        return;
    }
    let Some(dir) = fixture(MODEL_DIR) else {
        return;
    };
    let model = OnnxRuntimePlugin
        .load(
            LoadParams {
                batch_size: Some(8),
                ..params(&dir)
            },
            &mut |_| true,
        )
        .expect("loads");
    let mut progress = 0;
    let mut ids = Vec::new();
    model
        .generate(
            greedy(reference.prompt_ids.clone(), 32, true),
            &mut |_, id| {
                if id == abi::R1_TOKEN_PROMPT_PROGRESS {
                    progress += 1;
                } else {
                    ids.push(id);
                }
                true
            },
        )
        .unwrap();
    assert_eq!(ids, reference.greedy_ids[..32]);
    // 27 prompt tokens in chunks of 8: progress after the first three chunks.
    assert_eq!(progress, reference.prompt_ids.len().div_ceil(8) - 1);
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let Some(model) = smollm2() else {
        return;
    };
    let err = model
        .generate(greedy(vec![], 4, false), &mut |_, _| true)
        .unwrap_err();
    assert!(
        err.message.contains("the prompt is empty"),
        "{}",
        err.message
    );
    let err = model
        .generate(greedy(vec![1, 999_999], 4, false), &mut |_, _| true)
        .unwrap_err();
    assert!(
        err.message.contains("outside the vocabulary"),
        "{}",
        err.message
    );
}

#[test]
fn the_token_callback_cancels() {
    let (Some(model), Some(reference)) = (smollm2(), reference()) else {
        return;
    };
    let mut seen = 0;
    let result = model
        .generate(
            greedy(reference.prompt_ids.clone(), 32, true),
            &mut |_, _| {
                seen += 1;
                seen < 3
            },
        )
        .unwrap();
    assert_eq!(result.finish_reason, FinishReason::Cancelled);
    assert_eq!(seen, 3);
}

#[test]
fn a_directory_without_model_onnx_is_a_load_error_naming_it() {
    if init().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("r1d-onnx-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    let err = OnnxRuntimePlugin
        .load(params(&dir), &mut |_| true)
        .err()
        .expect("no model.onnx: error");
    assert_eq!(err.status, abi::R1_ERR_LOAD_FAILED);
    assert!(err.message.contains("has no model.onnx"), "{}", err.message);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn probe_reports_the_loaded_runtime() {
    if init().is_none() {
        return;
    }
    let report = OnnxRuntimePlugin.probe().unwrap();
    assert!(report.available, "{report:?}");
    assert_eq!(report.formats, vec!["onnx"]);
    assert!(
        report.devices[0].name.contains("ONNX Runtime 1."),
        "{report:?}"
    );
}

/// Links `names` of the fixture directory into `dir` (created).
fn link_fixture(fixture_dir: &Path, dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for name in names {
        std::os::unix::fs::symlink(fixture_dir.join(name), dir.join(name)).unwrap();
    }
}

fn greedy_ids_of(params: LoadParams, reference: &Reference) -> Vec<i32> {
    let mut model = OnnxRuntimePlugin
        .load(params, &mut |_| true)
        .expect("loads");
    run(&mut model, greedy(reference.prompt_ids.clone(), 32, true)).0
}

/// onnxruntime-genai folders ship genai_config.json and no config.json: the shapes and special
/// tokens come from it.
#[test]
fn a_genai_folder_without_config_json_loads_from_genai_config() {
    let (Some(reference), Some(fixture_dir)) = (reference(), fixture(MODEL_DIR)) else {
        return;
    };
    if init().is_none() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("genai");
    link_fixture(
        &fixture_dir,
        &dir,
        &[
            "model.onnx",
            "model.onnx.data",
            "genai_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
        ],
    );
    let model = OnnxRuntimePlugin
        .load(params(&dir), &mut |_| true)
        .expect("loads");
    let info = model.info().unwrap();
    assert_eq!(info.layers, 30);
    assert_eq!(info.architecture.as_deref(), Some("llama"));
    assert_eq!(info.trained_context_length, 8192);
    assert!(info.eog_token_ids.contains(&2));
    drop(model);
    assert_eq!(
        greedy_ids_of(params(&dir), &reference),
        reference.greedy_ids[..32]
    );
}

/// transformers.js exports keep several graphs in onnx/ under the configs: the path of one
/// graph file loads it; the directory alone names the graphs it has.
#[test]
fn a_graph_file_in_onnx_subdirectory_loads_with_the_configs_above() {
    let (Some(reference), Some(fixture_dir)) = (reference(), fixture(MODEL_DIR)) else {
        return;
    };
    if init().is_none() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("SmolLM2-ONNX");
    link_fixture(
        &fixture_dir,
        &root,
        &[
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
        ],
    );
    link_fixture(
        &fixture_dir,
        &root.join("onnx"),
        &["model.onnx", "model.onnx.data"],
    );
    let err = OnnxRuntimePlugin
        .load(params(&root), &mut |_| true)
        .err()
        .expect("no model.onnx at the top");
    assert!(
        err.message
            .contains("has no model.onnx; it has onnx/model.onnx"),
        "{}",
        err.message
    );
    let graph = root.join("onnx/model.onnx");
    let model = OnnxRuntimePlugin
        .load(params(&graph), &mut |_| true)
        .expect("loads");
    assert_eq!(
        model.info().unwrap().name.as_deref(),
        Some("SmolLM2-ONNX/model.onnx")
    );
    assert!(model.info().unwrap().memory.weights_bytes > 500_000_000);
    drop(model);
    assert_eq!(
        greedy_ids_of(params(&graph), &reference),
        reference.greedy_ids[..32]
    );
}

/// The Optimum layout (with `position_ids`, float32 cache [1, heads, past, head_dim]) through a
/// toy graph whose greedy choice is (sum of cached ids + last position + 1000 × (mask length −
/// cache length)) mod 49152 (`scripts/make_toy_decoder.py`): the output is the predicted one only
/// if the cache is carried, positions count from the cache length and the mask covers past +
/// new tokens — over prompt chunks of 2 and single-token steps.
#[test]
fn the_optimum_layout_gets_positions_mask_and_cache_right() {
    if init().is_none() {
        return;
    }
    let Some(dir) = fixture("toy-optimum-decoder") else {
        return;
    };
    let mut model = OnnxRuntimePlugin
        .load(
            LoadParams {
                batch_size: Some(2),
                ..params(&dir)
            },
            &mut |_| true,
        )
        .expect("the toy graph loads");
    let prompt = vec![5, 7, 11, 13, 17];
    let mut expected: Vec<i64> = prompt.iter().map(|t| i64::from(*t)).collect();
    for _ in 0..8 {
        let next = (expected.iter().sum::<i64>() + expected.len() as i64 - 1) % 49152;
        expected.push(next);
    }
    let expected: Vec<i32> = expected[prompt.len()..].iter().map(|t| *t as i32).collect();
    let (ids, _, result) = run(&mut model, greedy(prompt.clone(), 8, true));
    assert_eq!(ids, expected);
    assert_eq!(result.prompt_tokens, 5);
    // Again, continuing from the cache (prompt + 7 generated are cached).
    let mut longer = prompt.clone();
    longer.extend_from_slice(&ids);
    let (more, _, result) = run(&mut model, greedy(longer.clone(), 1, true));
    assert_eq!(result.cached_prompt_tokens as usize, longer.len() - 1);
    let sum: i64 = longer.iter().map(|t| i64::from(*t)).sum();
    assert_eq!(i64::from(more[0]), (sum + longer.len() as i64 - 1) % 49152);
}
