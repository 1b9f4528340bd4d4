//! The process-wide llama.cpp backend and the bridge from llama.cpp's log to `tracing`.
//!
//! llama.cpp reports *why* a load failed only in its log; the C API returns NULL. Worse, the
//! reason ("tensor 'output.weight' data is not within the file bounds …") is followed by a generic
//! "failed to load model" line, so the last error line alone says nothing. This module therefore
//! hooks llama.cpp's logger (ggml's stays with llama-cpp-2's `send_logs_to_tracing`): every line
//! goes to `tracing` (the SDK forwards it to the host), and error lines are also kept per thread
//! so [`take_error_lines`] can name the reason of a failure on the loading thread.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::{send_logs_to_tracing, LogOptions};
use llama_cpp_sys_2 as sys;
use r1_plugin_sdk::PluginError;

/// Target of the `tracing` events this bridge emits; the SDK names the host-side target after the
/// `module` field (`llama.cpp::<function>`).
const LOG_TARGET: &str = "llama.cpp";

/// Most error lines kept per thread between two [`clear_error_lines`] calls.
const MAX_ERROR_LINES: usize = 32;

thread_local! {
    /// A line llama.cpp sent in pieces (`GGML_LOG_LEVEL_CONT`), until its newline arrives.
    static PENDING: RefCell<Option<(sys::ggml_log_level, String)>> = const { RefCell::new(None) };
    /// Error lines logged on this thread since the last [`clear_error_lines`], oldest first.
    static ERRORS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// The device of each layer llama.cpp assigned on this thread since the last
    /// [`clear_error_lines`] (its debug line "layer N assigned to device D"), in layer order.
    static LAYER_DEVICES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// llama.cpp's placement of a model's layers on this thread since [`clear_error_lines`]: each
/// device (llama.cpp's name: `CPU`, `RPC0[HOST:PORT]`, `CUDA0` …) with its layer count, in layer
/// order (the output head is the last layer), read from `load_tensors`' debug lines
/// ("layer %3d assigned to device %s, is_swa = %d", src/llama-model.cpp); empties the record.
pub fn take_layer_devices() -> Vec<(String, u32)> {
    let devices = LAYER_DEVICES.with(|d| std::mem::take(&mut *d.borrow_mut()));
    let mut out: Vec<(String, u32)> = Vec::new();
    for d in devices {
        match out.last_mut() {
            Some((name, n)) if *name == d => *n += 1,
            _ => out.push((d, 1)),
        }
    }
    out
}

/// The device of `load_tensors`' "layer N assigned to device D, is_swa = S" line.
fn layer_device(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("layer ")?;
    let (_, rest) = rest.split_once(" assigned to device ")?;
    Some(rest.split_once(", is_swa").map_or(rest, |(d, _)| d))
}

/// The CPU variant ggml chose ([`crate::variants`]), once [`backend`] loaded the modules.
#[cfg(feature = "dynamic-backends")]
pub static CPU_VARIANT: OnceLock<crate::variants::Chosen> = OnceLock::new();

/// The initialised llama.cpp backend, created on first use and kept for the process (plugins are
/// never unloaded, so `llama_backend_free` never runs).
///
/// # Errors
/// [`PluginError::backend`] when llama.cpp was already initialised by someone else in this
/// process (llama-cpp-2 allows one `LlamaBackend` per process).
pub fn backend() -> Result<&'static LlamaBackend, PluginError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            install_logging();
            #[cfg(feature = "dynamic-backends")]
            {
                let chosen = crate::variants::load_modules()?;
                tracing::info!("{}: {}", chosen.describe(), chosen.path.display());
                let _ = CPU_VARIANT.set(chosen);
            }
            LlamaBackend::init().map_err(|e| format!("failed to initialise llama.cpp: {e}"))
        })
        .as_ref()
        .map_err(|e| PluginError::backend(e.clone()))
}

/// Routes llama.cpp's and ggml's logs to `tracing`, once.
fn install_logging() {
    send_logs_to_tracing(LogOptions::default());
    // `llama_log_set` also replaces ggml's logger, so keep the one llama-cpp-2 just installed for
    // ggml and put it back afterwards.
    let mut ggml_callback: sys::ggml_log_callback = None;
    let mut ggml_user_data: *mut c_void = std::ptr::null_mut();
    // SAFETY: both out-pointers are valid for writes; the logger functions only read and write
    // llama.cpp's global logger state, and the callback installed is a plain `extern "C"` function
    // that needs no user data and lives for the whole process.
    unsafe {
        sys::ggml_log_get(&mut ggml_callback, &mut ggml_user_data);
        sys::llama_log_set(Some(llama_log_bridge), std::ptr::null_mut());
        sys::ggml_log_set(ggml_callback, ggml_user_data);
    }
}

/// Forgets this thread's recorded llama.cpp error lines; call before an operation whose failure
/// you will explain with [`take_error_lines`].
pub fn clear_error_lines() {
    ERRORS.with(|e| e.borrow_mut().clear());
    LAYER_DEVICES.with(|d| d.borrow_mut().clear());
    PENDING.with(|p| *p.borrow_mut() = None);
}

/// The llama.cpp error lines logged on this thread since [`clear_error_lines`], oldest first,
/// without the `function: ` prefix; empties the record.
pub fn take_error_lines() -> Vec<String> {
    ERRORS.with(|e| std::mem::take(&mut *e.borrow_mut()))
}

/// The most telling reason among llama.cpp's error lines of a failed call: the first line that is
/// not the generic "failed to load model" (the root cause comes first), without the "error loading
/// model: " wrapper; falls back to the SDK's last error line of this thread.
pub fn failure_reason(lines: &[String]) -> Option<String> {
    let generic =
        |l: &str| l == "failed to load model" || l.starts_with("failed to create context");
    lines
        .iter()
        .map(|l| l.strip_prefix("error loading model: ").unwrap_or(l))
        .find(|l| !generic(l))
        .map(str::to_owned)
        .or_else(|| lines.first().cloned())
        .or_else(r1_plugin_sdk::last_error_line)
}

/// llama.cpp's log callback: assembles lines (llama.cpp may send one in pieces), records error
/// lines for this thread and emits every line as a `tracing` event.
unsafe extern "C" fn llama_log_bridge(
    level: sys::ggml_log_level,
    text: *const c_char,
    _user_data: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string that stays valid for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    // A panic must not unwind into C; losing one log line is the lesser harm.
    let _ = std::panic::catch_unwind(|| bridge_line(level, &text));
}

fn bridge_line(level: sys::ggml_log_level, text: &str) {
    let complete = PENDING.with(|pending| {
        let Ok(mut pending) = pending.try_borrow_mut() else {
            return None;
        };
        let (level, mut line) = if level == sys::GGML_LOG_LEVEL_CONT {
            pending
                .take()
                .unwrap_or((sys::GGML_LOG_LEVEL_INFO, String::new()))
        } else {
            // A new line while another is pending: the pending one is complete as it is.
            if let Some((l, line)) = pending.take() {
                emit(l, &line);
            }
            (level, String::new())
        };
        line.push_str(text);
        if line.ends_with('\n') {
            Some((level, line))
        } else {
            *pending = Some((level, line));
            None
        }
    });
    if let Some((level, line)) = complete {
        emit(level, &line);
    }
}

/// Splits llama.cpp's `function: message` convention into (module, message).
fn split_function(line: &str) -> (Option<&str>, &str) {
    match line.split_once(": ") {
        Some((function, message))
            if !function.is_empty()
                && function
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
        {
            (Some(function), message)
        }
        _ => (None, line),
    }
}

fn emit(level: sys::ggml_log_level, line: &str) {
    let line = line.trim_end();
    if line.is_empty() {
        return;
    }
    let (function, message) = split_function(line);
    if level == sys::GGML_LOG_LEVEL_ERROR {
        ERRORS.with(|e| {
            if let Ok(mut e) = e.try_borrow_mut() {
                if e.len() == MAX_ERROR_LINES {
                    e.remove(0);
                }
                e.push(message.to_owned());
            }
        });
    }
    if function == Some("load_tensors") {
        if let Some(device) = layer_device(message) {
            LAYER_DEVICES.with(|d| {
                if let Ok(mut d) = d.try_borrow_mut() {
                    d.push(device.to_owned());
                }
            });
        }
    }
    let module = match function {
        Some(f) => format!("{LOG_TARGET}::{f}"),
        None => LOG_TARGET.to_owned(),
    };
    let module = module.as_str();
    // With a unified KV cache for N sequences llama.cpp compares all N contexts' cells with the
    // trained context ("n_ctx_seq (N×C) > n_ctx_train"); the plugin keeps each sequence within
    // its own context C, so the line is misleading at warning level.
    let level = if level == sys::GGML_LOG_LEVEL_WARN && is_unified_kv_overflow_note(message) {
        sys::GGML_LOG_LEVEL_DEBUG
    } else {
        level
    };
    match level {
        sys::GGML_LOG_LEVEL_ERROR => tracing::error!(target: LOG_TARGET, module, "{message}"),
        sys::GGML_LOG_LEVEL_WARN => tracing::warn!(target: LOG_TARGET, module, "{message}"),
        sys::GGML_LOG_LEVEL_DEBUG => tracing::debug!(target: LOG_TARGET, module, "{message}"),
        _ => tracing::info!(target: LOG_TARGET, module, "{message}"),
    }
}

/// llama.cpp's "n_ctx_seq (…) > n_ctx_train (…) -- possible training context overflow" line.
fn is_unified_kv_overflow_note(message: &str) -> bool {
    message.starts_with("n_ctx_seq (") && message.contains("possible training context overflow")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_placement_is_read_from_load_tensors_debug_lines() {
        clear_error_lines();
        for (il, dev) in [
            (0, "CPU"),
            (1, "CPU"),
            (2, "RPC0[127.0.0.1:5]"),
            (3, "RPC1[h:6]"),
        ] {
            bridge_line(
                sys::GGML_LOG_LEVEL_DEBUG,
                &format!("load_tensors: layer {il:3} assigned to device {dev}, is_swa = 0\n"),
            );
        }
        bridge_line(
            sys::GGML_LOG_LEVEL_INFO,
            "load_tensors: offloaded 2/4 layers to GPU\n",
        );
        assert_eq!(
            take_layer_devices(),
            [
                ("CPU".to_owned(), 2),
                ("RPC0[127.0.0.1:5]".to_owned(), 1),
                ("RPC1[h:6]".to_owned(), 1)
            ]
        );
        assert!(take_layer_devices().is_empty());
    }

    #[test]
    fn the_unified_kv_overflow_note_is_recognised() {
        assert!(is_unified_kv_overflow_note(
            "n_ctx_seq (32768) > n_ctx_train (8192) -- possible training context overflow"
        ));
        assert!(!is_unified_kv_overflow_note("failed to allocate buffer"));
    }

    #[test]
    fn split_function_takes_llama_cpp_function_prefix() {
        assert_eq!(
            split_function("llama_model_load: error loading model: tensor 'x'"),
            (Some("llama_model_load"), "error loading model: tensor 'x'")
        );
        assert_eq!(split_function("no prefix here"), (None, "no prefix here"));
        assert_eq!(split_function("Some Thing: x"), (None, "Some Thing: x"));
    }

    #[test]
    fn failure_reason_prefers_root_cause_over_generic_line() {
        let lines = vec![
            "error loading model: tensor 'output.weight' data is not within the file bounds, model is corrupted or incomplete".to_owned(),
            "failed to load model".to_owned(),
        ];
        assert_eq!(
            failure_reason(&lines).as_deref(),
            Some("tensor 'output.weight' data is not within the file bounds, model is corrupted or incomplete")
        );
    }

    #[test]
    fn error_lines_in_pieces_are_assembled_and_recorded() {
        clear_error_lines();
        bridge_line(sys::GGML_LOG_LEVEL_ERROR, "llama_x: first ");
        bridge_line(sys::GGML_LOG_LEVEL_CONT, "half\n");
        bridge_line(sys::GGML_LOG_LEVEL_INFO, "llama_y: not an error\n");
        assert_eq!(take_error_lines(), vec!["first half".to_owned()]);
        assert!(take_error_lines().is_empty());
    }
}
