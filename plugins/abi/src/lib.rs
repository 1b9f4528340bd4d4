//! The r1d plugin C ABI, version 1.
//!
//! A backend plugin is a shared library (`libr1_plugin_<name>.so`) that exports one symbol,
//! [`ENTRY_SYMBOL`] (`r1_plugin_entry`), of type [`R1PluginEntryFn`]. The host calls it with its
//! own ABI version; the plugin returns a pointer to a static [`R1PluginApi`] table, or NULL when it
//! cannot serve that host. The same contract, for C and C++ backends, is in `r1_plugin.h` beside
//! this crate; `tests/header_matches.rs` compiles the header and fails when it drifts from these
//! types (sizes, field offsets, constants).
//!
//! The design follows the hand-written C APIs of llama.h and the ONNX Runtime C API:
//! - the API table starts with `abi_version` and `struct_size`; fields are only ever appended,
//!   so a host reads only the fields that `struct_size` covers;
//! - every fallible function returns an [`R1Status`] and, on failure, fills an error message
//!   ([`R1OwnedStr`]) that the *plugin* allocates and the *host* hands back to `free_string`
//!   ("whoever allocates frees");
//! - strings passed in are UTF-8 [`R1Str`] (pointer + length, not NUL-terminated), borrowed for
//!   the duration of the call only;
//! - structured parameters and results cross the boundary as JSON documents whose shapes are the
//!   serde types in [`json`]; this keeps the C surface small and lets fields be added without a new
//!   ABI version (unknown JSON fields are ignored by both sides).
//!
//! Threading: `probe` and `load` may be called from any thread. Different models may be used from
//! different threads at once. A model handle is used by one call at a time (the host serialises
//! `info`, `tokenize` and `generate` per model), unless the model's
//! [`json::ModelInfo::parallel_sequences`] is N > 1: then `info` and `tokenize` may be called at
//! any time from any thread, and up to N `generate` calls may run at once from different threads,
//! which the plugin batches together (continuous batching). `unload` is only called when no other
//! call on the model runs. Callbacks are invoked on the thread that made the call, before the call
//! returns.

pub mod json;

use std::ffi::c_void;

/// The ABI version this crate describes. Bumped only for incompatible changes; appended fields
/// do not change it (`struct_size` tells them apart).
pub const R1_PLUGIN_ABI_VERSION: u32 = 1;

/// Name of the entry symbol every plugin exports (NUL-terminated, for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"r1_plugin_entry\0";

/// Status code returned by every fallible ABI function.
///
/// A plain `int32_t` rather than a Rust enum: a plugin built against a newer header may return
/// a code this host does not know, and that must not be undefined behaviour.
pub type R1Status = i32;

/// Success.
pub const R1_OK: R1Status = 0;
/// A parameter was malformed (bad JSON, unknown option value, NULL where a pointer is needed).
pub const R1_ERR_INVALID_ARGUMENT: R1Status = 1;
/// The model could not be loaded (missing, truncated or corrupt file, out of memory).
pub const R1_ERR_LOAD_FAILED: R1Status = 2;
/// The operation was cancelled by the host (a progress or token callback returned false).
pub const R1_ERR_CANCELLED: R1Status = 3;
/// The prompt does not fit the model's context length. (A generation that reaches the end of the
/// context is not an error: it ends with `finish_reason` `"length"`.)
pub const R1_ERR_CONTEXT_EXCEEDED: R1Status = 4;
/// The backend failed while running (decode error, device error).
pub const R1_ERR_BACKEND: R1Status = 5;
/// The plugin panicked (or threw); the SDK turned it into this status. The model handle stays
/// valid but the plugin may be in a bad state.
pub const R1_ERR_PANIC: R1Status = 6;
/// The operation is not supported by this backend.
pub const R1_ERR_UNSUPPORTED: R1Status = 7;
/// A caller-provided buffer was too small; the needed length was written to the out-length.
pub const R1_ERR_BUFFER_TOO_SMALL: R1Status = 8;

/// `token_id` of a prompt-progress call of [`R1TokenFn`]: between batches of prompt processing a
/// plugin may call the token callback with an empty piece and this id, so the host can stop a long
/// prompt early (return false). Such calls are not tokens: not streamed, not counted.
pub const R1_TOKEN_PROMPT_PROGRESS: i32 = -1;

/// `token_id` of a log-probability call of [`R1TokenFn`] (appended to ABI v1): when a request
/// asks for log probabilities ([`json::GenerateRequest::logprobs`]) and the model says it can
/// give them ([`json::ModelInfo::logprobs`]), the plugin calls the token callback with this id
/// and a [`json::TokenLogprobs`] JSON document as the piece, just before the call for the token
/// it describes. Such calls are not tokens: not streamed as text, not counted. A plugin never
/// makes them for a request that did not ask.
pub const R1_TOKEN_LOGPROBS: i32 = -2;

/// Log levels passed to [`R1LogFn`], ordered like `tracing`'s.
pub const R1_LOG_ERROR: i32 = 1;
/// Warning.
pub const R1_LOG_WARN: i32 = 2;
/// Informational.
pub const R1_LOG_INFO: i32 = 3;
/// Debug.
pub const R1_LOG_DEBUG: i32 = 4;
/// Trace.
pub const R1_LOG_TRACE: i32 = 5;

/// A borrowed UTF-8 string: `len` bytes at `ptr`, not NUL-terminated. Valid only for the call it
/// is passed to; the receiver copies what it keeps. `ptr` may be NULL when `len` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct R1Str {
    /// First byte, or NULL for the empty string.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl R1Str {
    /// Borrows `s` for the duration of an FFI call (or forever, for a `&'static str`).
    pub const fn from_str(s: &str) -> Self {
        R1Str {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// The empty string.
    pub const fn empty() -> Self {
        R1Str {
            ptr: std::ptr::null(),
            len: 0,
        }
    }

    /// Views the bytes.
    ///
    /// # Safety
    /// `ptr` must be NULL with `len == 0`, or point to `len` readable bytes that stay valid and
    /// unchanged for the returned lifetime.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `ptr` points to `len` readable bytes.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// A string allocated by the plugin and owned by whoever receives it, until it is passed to
/// [`R1PluginApi::free_string`] of the *same* plugin. UTF-8, `len` bytes, not NUL-terminated.
/// The all-zero value (NULL, 0) means "no string" and may be passed to `free_string` harmlessly.
#[repr(C)]
#[derive(Debug)]
pub struct R1OwnedStr {
    /// Plugin-allocated bytes, or NULL.
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: usize,
    /// Allocation capacity in bytes; meaningful only to the allocating plugin.
    pub cap: usize,
}

impl R1OwnedStr {
    /// The "no string" value hosts initialise out-parameters with.
    pub const fn null() -> Self {
        R1OwnedStr {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }
}

/// Opaque model handle created by `load` and destroyed by `unload`.
#[repr(C)]
pub struct R1Model {
    _private: [u8; 0],
}

/// Load progress callback: `progress` in 0.0..=1.0. Return `true` to go on, `false` to abort the
/// load (which then fails with [`R1_ERR_CANCELLED`]). Called on the loading thread.
pub type R1ProgressFn = Option<unsafe extern "C" fn(user_data: *mut c_void, progress: f32) -> bool>;

/// Token callback of `generate`: one decoded piece, `len` bytes at `piece` (raw bytes of the token;
/// a multi-byte UTF-8 character may be split across pieces), and its token id. The bytes are
/// borrowed for the call. Return `true` to go on, `false` to stop generating (the generation then
/// ends with `finish_reason` `"cancelled"` and status [`R1_OK`]). Between prompt batches the plugin
/// may also call it with `len` 0 and `token_id` [`R1_TOKEN_PROMPT_PROGRESS`] (not a token), and,
/// when log probabilities were asked for, with a JSON document and [`R1_TOKEN_LOGPROBS`] before
/// each token.
pub type R1TokenFn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        piece: *const u8,
        len: usize,
        token_id: i32,
    ) -> bool,
>;

/// Log callback the host installs with `set_logger`: a level (`R1_LOG_*`), a target (module or
/// subsystem inside the plugin, e.g. `"llama.cpp"`) and one message line, both borrowed for the
/// call. May be called from any thread, at any time after `set_logger`.
pub type R1LogFn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, level: i32, target: R1Str, message: R1Str)>;

/// The function table a plugin returns from `r1_plugin_entry`. Lives for the whole process (plugins
/// are never unloaded). Every function pointer in version 1 is non-NULL.
#[repr(C)]
pub struct R1PluginApi {
    /// The ABI version the plugin implements; the host refuses a plugin whose version differs from
    /// its own.
    pub abi_version: u32,
    /// `size_of::<R1PluginApi>()` as the plugin was built; fields beyond it are absent.
    pub struct_size: u32,
    /// Short backend name, e.g. `"llamacpp"` (static, UTF-8).
    pub name: R1Str,
    /// Backend version, e.g. `"0.1.0 (llama.cpp b6000)"` (static, UTF-8).
    pub version: R1Str,

    /// Frees a string this plugin allocated (error messages, JSON results). Accepts the null value.
    pub free_string: unsafe extern "C" fn(s: R1OwnedStr),

    /// Installs the host's log sink. Until called, the plugin logs nowhere. `user_data` must stay
    /// valid for the rest of the process.
    pub set_logger: unsafe extern "C" fn(log: R1LogFn, user_data: *mut c_void),

    /// Says whether this backend can run here. On success `*out_json` is a
    /// [`json::ProbeReport`] (owned by the caller, free with `free_string`). An unavailable backend
    /// is a success with `available: false` and a reason, not an error.
    pub probe:
        unsafe extern "C" fn(out_json: *mut R1OwnedStr, out_error: *mut R1OwnedStr) -> R1Status,

    /// Loads a model. `params_json` is a [`json::LoadParams`] (borrowed). `progress` may be NULL.
    /// On success `*out_model` is a new handle owned by the caller (release with `unload`). On
    /// failure `*out_error` holds a message naming the file and the reason.
    pub load: unsafe extern "C" fn(
        params_json: R1Str,
        progress: R1ProgressFn,
        progress_user_data: *mut c_void,
        out_model: *mut *mut R1Model,
        out_error: *mut R1OwnedStr,
    ) -> R1Status,

    /// Describes a loaded model: `*out_json` is a [`json::ModelInfo`] owned by the caller.
    pub info: unsafe extern "C" fn(
        model: *const R1Model,
        out_json: *mut R1OwnedStr,
        out_error: *mut R1OwnedStr,
    ) -> R1Status,

    /// Tokenizes `text`. `add_special`: add BOS/EOS as the model's tokenizer does;
    /// `parse_special`: turn special-token text (e.g. `<|im_start|>`) into its token. Writes at most
    /// `capacity` ids to `out_tokens` (caller-owned) and the full count to `*out_len`; when the
    /// count exceeds `capacity` it returns [`R1_ERR_BUFFER_TOO_SMALL`] and the caller retries with a
    /// larger buffer.
    pub tokenize: unsafe extern "C" fn(
        model: *const R1Model,
        text: R1Str,
        add_special: bool,
        parse_special: bool,
        out_tokens: *mut i32,
        capacity: usize,
        out_len: *mut usize,
        out_error: *mut R1OwnedStr,
    ) -> R1Status,

    /// Generates from a prompt. `request_json` is a [`json::GenerateRequest`] (borrowed). Each
    /// decoded piece goes to `on_token` as soon as it is sampled; returning false stops promptly.
    /// On success `*out_json` is a [`json::GenerateResult`] (usage, timings, finish reason) owned
    /// by the caller. Several calls may run at once only when the model's `parallel_sequences`
    /// allows it (see the crate docs, "Threading").
    pub generate: unsafe extern "C" fn(
        model: *mut R1Model,
        request_json: R1Str,
        on_token: R1TokenFn,
        token_user_data: *mut c_void,
        out_json: *mut R1OwnedStr,
        out_error: *mut R1OwnedStr,
    ) -> R1Status,

    /// Releases a model and everything it holds. The handle is invalid afterwards. NULL is ignored.
    pub unload: unsafe extern "C" fn(model: *mut R1Model),

    // ---- Appended to ABI v1 (a table whose `struct_size` ends before a field lacks it). ----
    /// Says what loading a model with these parameters would allocate, without loading the
    /// weights. `params_json` is the [`json::LoadParams`] a `load` would get (borrowed); on
    /// success `*out_json` is a [`json::Estimate`] owned by the caller. A backend that cannot
    /// estimate returns [`R1_ERR_UNSUPPORTED`]. May be called from any thread, also while models
    /// are loaded. NULL, or absent because the plugin's `struct_size` ends before it, means the
    /// plugin has no estimate (plugins built before it was appended).
    pub estimate: Option<
        unsafe extern "C" fn(
            params_json: R1Str,
            out_json: *mut R1OwnedStr,
            out_error: *mut R1OwnedStr,
        ) -> R1Status,
    >,
}

/// Size in bytes of the ABI v1 table as first published (up to and including `unload`): the
/// smallest `struct_size` a host accepts. Fields after it are appended ones, each optional.
pub const R1_PLUGIN_API_V1_BASE_SIZE: usize = std::mem::offset_of!(R1PluginApi, estimate);

// SAFETY: the table is immutable after construction; its `R1Str` fields point to static,
// immutable strings and its function pointers are plain code addresses, so sharing and sending it
// between threads is sound.
unsafe impl Sync for R1PluginApi {}
// SAFETY: see the `Sync` impl above.
unsafe impl Send for R1PluginApi {}

/// Type of the `r1_plugin_entry` symbol: given the host's ABI version, returns the plugin's static
/// API table, or NULL when the plugin cannot serve a host of that version. The host then reads
/// `abi_version` and `struct_size` before anything else.
pub type R1PluginEntryFn = unsafe extern "C" fn(host_abi_version: u32) -> *const R1PluginApi;

/// Field names of [`R1PluginApi`] in declaration order with their byte offsets, used by the
/// header drift test and by anyone checking a C implementation.
pub fn api_field_offsets() -> Vec<(&'static str, usize)> {
    use std::mem::offset_of;
    vec![
        ("abi_version", offset_of!(R1PluginApi, abi_version)),
        ("struct_size", offset_of!(R1PluginApi, struct_size)),
        ("name", offset_of!(R1PluginApi, name)),
        ("version", offset_of!(R1PluginApi, version)),
        ("free_string", offset_of!(R1PluginApi, free_string)),
        ("set_logger", offset_of!(R1PluginApi, set_logger)),
        ("probe", offset_of!(R1PluginApi, probe)),
        ("load", offset_of!(R1PluginApi, load)),
        ("info", offset_of!(R1PluginApi, info)),
        ("tokenize", offset_of!(R1PluginApi, tokenize)),
        ("generate", offset_of!(R1PluginApi, generate)),
        ("unload", offset_of!(R1PluginApi, unload)),
        ("estimate", offset_of!(R1PluginApi, estimate)),
    ]
}

/// The integer constants of the ABI by their C names, for the header drift test.
pub fn constants() -> Vec<(&'static str, i64)> {
    vec![
        ("R1_PLUGIN_ABI_VERSION", R1_PLUGIN_ABI_VERSION as i64),
        (
            "R1_PLUGIN_API_V1_BASE_SIZE",
            R1_PLUGIN_API_V1_BASE_SIZE as i64,
        ),
        ("R1_OK", R1_OK as i64),
        ("R1_ERR_INVALID_ARGUMENT", R1_ERR_INVALID_ARGUMENT as i64),
        ("R1_ERR_LOAD_FAILED", R1_ERR_LOAD_FAILED as i64),
        ("R1_ERR_CANCELLED", R1_ERR_CANCELLED as i64),
        ("R1_ERR_CONTEXT_EXCEEDED", R1_ERR_CONTEXT_EXCEEDED as i64),
        ("R1_ERR_BACKEND", R1_ERR_BACKEND as i64),
        ("R1_ERR_PANIC", R1_ERR_PANIC as i64),
        ("R1_ERR_UNSUPPORTED", R1_ERR_UNSUPPORTED as i64),
        ("R1_ERR_BUFFER_TOO_SMALL", R1_ERR_BUFFER_TOO_SMALL as i64),
        ("R1_TOKEN_PROMPT_PROGRESS", R1_TOKEN_PROMPT_PROGRESS as i64),
        ("R1_TOKEN_LOGPROBS", R1_TOKEN_LOGPROBS as i64),
        ("R1_LOG_ERROR", R1_LOG_ERROR as i64),
        ("R1_LOG_WARN", R1_LOG_WARN as i64),
        ("R1_LOG_INFO", R1_LOG_INFO as i64),
        ("R1_LOG_DEBUG", R1_LOG_DEBUG as i64),
        ("R1_LOG_TRACE", R1_LOG_TRACE as i64),
    ]
}

/// A readable name for a status code, for error messages.
pub fn status_name(status: R1Status) -> &'static str {
    match status {
        R1_OK => "ok",
        R1_ERR_INVALID_ARGUMENT => "invalid argument",
        R1_ERR_LOAD_FAILED => "load failed",
        R1_ERR_CANCELLED => "cancelled",
        R1_ERR_CONTEXT_EXCEEDED => "context length exceeded",
        R1_ERR_BACKEND => "backend error",
        R1_ERR_PANIC => "plugin panicked",
        R1_ERR_UNSUPPORTED => "unsupported",
        R1_ERR_BUFFER_TOO_SMALL => "buffer too small",
        _ => "unknown status",
    }
}
