//! The `extern "C"` side of the SDK: generic entry points that [`export_plugin!`](crate::export_plugin)
//! puts into the function table. Every function here wraps its body in `catch_unwind`.

use std::any::Any;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use r1_plugin_abi as abi;
use r1_plugin_abi::{R1Model, R1OwnedStr, R1PluginApi, R1Status, R1Str};

use crate::{Instance, Model, PluginError};

/// Builds the function table for plugin type `P`. `name` and `version` must be `'static` because
/// the table lives for the whole process.
pub fn api_table<P: Instance>(
    name: &'static str,
    version: &'static str,
    abi_version: u32,
) -> R1PluginApi {
    crate::logging::install();
    R1PluginApi {
        abi_version,
        struct_size: std::mem::size_of::<R1PluginApi>() as u32,
        name: R1Str::from_str(name),
        version: R1Str::from_str(version),
        free_string,
        set_logger,
        probe: probe::<P>,
        load: load::<P>,
        info: info::<P>,
        tokenize: tokenize::<P>,
        generate: generate::<P>,
        unload: unload::<P>,
        estimate: Some(estimate::<P>),
    }
}

/// Moves a Rust string into an owned ABI string (freed by [`free_string`]).
pub fn owned_string(s: String) -> R1OwnedStr {
    let mut bytes = std::mem::ManuallyDrop::new(s.into_bytes());
    R1OwnedStr {
        ptr: bytes.as_mut_ptr(),
        len: bytes.len(),
        cap: bytes.capacity(),
    }
}

unsafe extern "C" fn free_string(s: R1OwnedStr) {
    if s.ptr.is_null() {
        return;
    }
    let _ = catch_unwind(|| {
        // SAFETY: non-null owned strings are only made by `owned_string` from a `Vec<u8>` of this
        // very plugin, with its pointer, length and capacity unchanged; the host frees each once.
        drop(unsafe { Vec::from_raw_parts(s.ptr, s.len, s.cap) });
    });
}

unsafe extern "C" fn set_logger(log: abi::R1LogFn, user_data: *mut c_void) {
    let _ = catch_unwind(|| crate::logging::set_host_logger(log, user_data));
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let detail = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    };
    format!("plugin panicked: {detail}")
}

/// Runs `body`, catching panics, and writes an error message to `out_error` on failure.
///
/// # Safety
/// `out_error` must be NULL or valid for a write of one `R1OwnedStr`.
unsafe fn guarded(
    out_error: *mut R1OwnedStr,
    body: impl FnOnce() -> Result<(), PluginError>,
) -> R1Status {
    let result = catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|p| Err(PluginError::new(abi::R1_ERR_PANIC, panic_message(p))));
    match result {
        Ok(()) => abi::R1_OK,
        Err(e) => {
            if !out_error.is_null() {
                // SAFETY: checked non-null; the caller guarantees it is writable.
                unsafe { out_error.write(owned_string(e.message)) };
            }
            e.status
        }
    }
}

/// # Safety
/// `out` must be NULL or writable.
unsafe fn write_json<T: serde::Serialize>(
    out: *mut R1OwnedStr,
    value: &T,
) -> Result<(), PluginError> {
    if out.is_null() {
        return Err(PluginError::invalid_argument("output pointer is NULL"));
    }
    let json = serde_json::to_string(value)
        .map_err(|e| PluginError::backend(format!("failed to serialize result: {e}")))?;
    // SAFETY: checked non-null; the caller guarantees it is writable.
    unsafe { out.write(owned_string(json)) };
    Ok(())
}

/// # Safety
/// `s` must satisfy [`R1Str::as_bytes`].
unsafe fn parse_json<'a, T: serde::Deserialize<'a>>(
    s: R1Str,
    what: &str,
) -> Result<T, PluginError> {
    // SAFETY: forwarded to the caller.
    let bytes = unsafe { s.as_bytes() };
    serde_json::from_slice(bytes)
        .map_err(|e| PluginError::invalid_argument(format!("failed to parse {what} JSON: {e}")))
}

unsafe extern "C" fn probe<P: Instance>(
    out_json: *mut R1OwnedStr,
    out_error: *mut R1OwnedStr,
) -> R1Status {
    // SAFETY: the host passes writable out-pointers, as the ABI requires.
    unsafe {
        guarded(out_error, || {
            let report = P::instance().probe()?;
            write_json(out_json, &report)
        })
    }
}

/// Carries the host's progress callback into the plugin's closure.
struct Progress {
    callback: abi::R1ProgressFn,
    user_data: *mut c_void,
}

impl Progress {
    fn report(&self, fraction: f32) -> bool {
        match self.callback {
            // SAFETY: the host guarantees the callback and its user data are valid for the call
            // to `load`, and progress is only reported during it.
            Some(f) => unsafe { f(self.user_data, fraction) },
            None => true,
        }
    }
}

unsafe extern "C" fn load<P: Instance>(
    params_json: R1Str,
    progress: abi::R1ProgressFn,
    progress_user_data: *mut c_void,
    out_model: *mut *mut R1Model,
    out_error: *mut R1OwnedStr,
) -> R1Status {
    let progress = Progress {
        callback: progress,
        user_data: progress_user_data,
    };
    // SAFETY: the ABI requires `params_json` to be readable and the out-pointers writable.
    unsafe {
        guarded(out_error, || {
            if out_model.is_null() {
                return Err(PluginError::invalid_argument("out_model is NULL"));
            }
            let params = parse_json(params_json, "load parameters")?;
            let model = P::instance().load(params, &mut |f| progress.report(f))?;
            let boxed: Box<P::Model> = Box::new(model);
            out_model.write(Box::into_raw(boxed).cast::<R1Model>());
            Ok(())
        })
    }
}

/// # Safety
/// `model` must be a live handle from `load::<P>`.
unsafe fn model_ref<'a, P: Instance>(model: *const R1Model) -> Result<&'a P::Model, PluginError> {
    if model.is_null() {
        return Err(PluginError::invalid_argument("model handle is NULL"));
    }
    // SAFETY: handles are `Box<P::Model>` pointers made by `load::<P>`, alive until `unload`.
    Ok(unsafe { &*model.cast::<P::Model>() })
}

unsafe extern "C" fn info<P: Instance>(
    model: *const R1Model,
    out_json: *mut R1OwnedStr,
    out_error: *mut R1OwnedStr,
) -> R1Status {
    // SAFETY: the host passes a live handle and writable out-pointers, as the ABI requires.
    unsafe {
        guarded(out_error, || {
            let info = model_ref::<P>(model)?.info()?;
            write_json(out_json, &info)
        })
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn tokenize<P: Instance>(
    model: *const R1Model,
    text: R1Str,
    add_special: bool,
    parse_special: bool,
    out_tokens: *mut i32,
    capacity: usize,
    out_len: *mut usize,
    out_error: *mut R1OwnedStr,
) -> R1Status {
    let mut too_small = false;
    // SAFETY: the host passes a live handle, readable text and writable buffers, as the ABI requires.
    let status = unsafe {
        guarded(out_error, || {
            let text = std::str::from_utf8(text.as_bytes())
                .map_err(|e| PluginError::invalid_argument(format!("text is not UTF-8: {e}")))?;
            let tokens = model_ref::<P>(model)?.tokenize(text, add_special, parse_special)?;
            if out_len.is_null() {
                return Err(PluginError::invalid_argument("out_len is NULL"));
            }
            out_len.write(tokens.len());
            if tokens.len() > capacity {
                too_small = true;
                return Ok(());
            }
            if !tokens.is_empty() {
                if out_tokens.is_null() {
                    return Err(PluginError::invalid_argument("out_tokens is NULL"));
                }
                std::ptr::copy_nonoverlapping(tokens.as_ptr(), out_tokens, tokens.len());
            }
            Ok(())
        })
    };
    if status == abi::R1_OK && too_small {
        abi::R1_ERR_BUFFER_TOO_SMALL
    } else {
        status
    }
}

unsafe extern "C" fn generate<P: Instance>(
    model: *mut R1Model,
    request_json: R1Str,
    on_token: abi::R1TokenFn,
    token_user_data: *mut c_void,
    out_json: *mut R1OwnedStr,
    out_error: *mut R1OwnedStr,
) -> R1Status {
    // SAFETY: the host passes a live handle (shared with other `generate` calls only when the model
    // said it runs several at once; `Model` is `Sync` and takes `&self`), a readable request and
    // writable out-pointers; the callback and user data are valid for this call.
    unsafe {
        guarded(out_error, || {
            if model.is_null() {
                return Err(PluginError::invalid_argument("model handle is NULL"));
            }
            let model = &*model.cast::<P::Model>();
            let request = parse_json(request_json, "generate request")?;
            let mut sink = |piece: &[u8], id: i32| match on_token {
                Some(f) => f(token_user_data, piece.as_ptr(), piece.len(), id),
                None => true,
            };
            let result = model.generate(request, &mut sink)?;
            write_json(out_json, &result)
        })
    }
}

unsafe extern "C" fn estimate<P: Instance>(
    params_json: R1Str,
    out_json: *mut R1OwnedStr,
    out_error: *mut R1OwnedStr,
) -> R1Status {
    // SAFETY: the ABI requires `params_json` to be readable and the out-pointers writable.
    unsafe {
        guarded(out_error, || {
            let params = parse_json(params_json, "estimate parameters")?;
            let estimate = P::instance().estimate(params)?;
            write_json(out_json, &estimate)
        })
    }
}

unsafe extern "C" fn unload<P: Instance>(model: *mut R1Model) {
    if model.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the handle was made by `Box::into_raw` in `load::<P>` and the host unloads it once.
        drop(unsafe { Box::from_raw(model.cast::<P::Model>()) });
    }));
}
