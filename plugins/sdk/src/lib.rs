//! The safe Rust side of the r1d plugin ABI.
//!
//! A backend implements [`Plugin`] (probe and load) and [`Model`] (info, tokenize, generate) and
//! exports them with [`export_plugin!`]. The macro generates the `r1_plugin_entry` symbol and a
//! function table whose every entry point:
//! - runs inside `catch_unwind`, so a panic becomes [`R1_ERR_PANIC`](abi::R1_ERR_PANIC) with the
//!   panic message instead of unwinding into the host (which would be undefined behaviour);
//! - parses and writes the JSON documents of [`abi::json`];
//! - allocates result strings that the host frees through `free_string`.
//!
//! Logging: plugins log with `tracing` as usual. The SDK installs a subscriber inside the plugin
//! (a cdylib has its own copy of `tracing`) that forwards every event to the host's log callback,
//! and remembers the last error line per thread ([`last_error_line`]) so a backend that only
//! learns "it failed" (llama.cpp returns NULL) can say why.

pub mod ffi;
mod logging;

pub use logging::{clear_last_error_line, last_error_line};
pub use r1_plugin_abi as abi;
pub use r1_plugin_abi::json::{
    BufferEstimate, Device, DeviceEstimate, Estimate, FinishReason, GenerateRequest,
    GenerateResult, LoadParams, MemoryBreakdown, ModelInfo, ProbeReport, SpecialToken,
};

use abi::R1Status;

/// An error a plugin returns: an ABI status code and a message for the user.
///
/// Messages follow the house style: lowercase, "failed to …", naming the file or limit.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginError {
    /// One of the `R1_ERR_*` codes.
    pub status: R1Status,
    /// Human-readable message.
    pub message: String,
}

impl PluginError {
    /// An error with an explicit status.
    pub fn new(status: R1Status, message: impl Into<String>) -> Self {
        PluginError {
            status,
            message: message.into(),
        }
    }
    /// [`R1_ERR_INVALID_ARGUMENT`](abi::R1_ERR_INVALID_ARGUMENT).
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(abi::R1_ERR_INVALID_ARGUMENT, message)
    }
    /// [`R1_ERR_LOAD_FAILED`](abi::R1_ERR_LOAD_FAILED).
    pub fn load_failed(message: impl Into<String>) -> Self {
        Self::new(abi::R1_ERR_LOAD_FAILED, message)
    }
    /// [`R1_ERR_CANCELLED`](abi::R1_ERR_CANCELLED).
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(abi::R1_ERR_CANCELLED, message)
    }
    /// [`R1_ERR_CONTEXT_EXCEEDED`](abi::R1_ERR_CONTEXT_EXCEEDED).
    pub fn context_exceeded(message: impl Into<String>) -> Self {
        Self::new(abi::R1_ERR_CONTEXT_EXCEEDED, message)
    }
    /// [`R1_ERR_BACKEND`](abi::R1_ERR_BACKEND).
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(abi::R1_ERR_BACKEND, message)
    }
    /// [`R1_ERR_UNSUPPORTED`](abi::R1_ERR_UNSUPPORTED).
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(abi::R1_ERR_UNSUPPORTED, message)
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

/// A backend: one instance per process, created on the first call of the entry point.
pub trait Plugin: Send + Sync + 'static {
    /// The loaded-model type.
    type Model: Model;

    /// Whether the backend can run here (see [`ProbeReport`]). Unavailability is `Ok` with
    /// `available: false` and a reason; `Err` is for the probe itself failing.
    fn probe(&self) -> Result<ProbeReport, PluginError>;

    /// Loads a model. `progress(fraction)` reports 0.0..=1.0 and returns false when the host wants
    /// the load aborted; the backend then returns a [`PluginError::cancelled`].
    fn load(
        &self,
        params: LoadParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Self::Model, PluginError>;

    /// What [`Plugin::load`] with these parameters would allocate, without loading the weights
    /// (see [`Estimate`]). The default says the backend cannot estimate
    /// ([`PluginError::unsupported`]); the host then uses its own formula.
    fn estimate(&self, params: LoadParams) -> Result<Estimate, PluginError> {
        Err(PluginError::unsupported(format!(
            "this backend cannot estimate the memory of {} before loading it",
            params.path
        )))
    }
}

/// A loaded model. The host calls one method at a time per model, unless [`ModelInfo`] says
/// `parallel_sequences` N > 1: then `info` and `tokenize` may run at any time and up to N
/// `generate` calls at once, from different threads (hence `&self` and `Sync`; a sequential
/// backend keeps its mutable state behind a `Mutex`).
pub trait Model: Send + Sync + 'static {
    /// Describes the model (see [`ModelInfo`]).
    fn info(&self) -> Result<ModelInfo, PluginError>;

    /// Tokenizes UTF-8 text; see `tokenize` in `r1_plugin.h` for the flags.
    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<i32>, PluginError>;

    /// Generates from `request.prompt_tokens`, handing each decoded piece (raw bytes, token id) to
    /// `on_token` as soon as it is sampled. When `on_token` returns false, stop at once and return
    /// `Ok` with [`FinishReason::Cancelled`].
    fn generate(
        &self,
        request: GenerateRequest,
        on_token: &mut dyn FnMut(&[u8], i32) -> bool,
    ) -> Result<GenerateResult, PluginError>;
}

/// Gives the FFI layer the process-wide plugin instance. Implemented by [`export_plugin!`].
pub trait Instance: Plugin {
    /// The instance, created on first use.
    fn instance() -> &'static Self;
}

/// Exports a [`Plugin`] type as an r1d plugin: generates `r1_plugin_entry` and the function table.
///
/// ```ignore
/// r1_plugin_sdk::export_plugin! {
///     plugin: MyBackend,
///     init: MyBackend::new(),
///     name: "mybackend",
///     version: env!("CARGO_PKG_VERSION"),
/// }
/// ```
/// An optional `abi_version: EXPR` (a `u32` evaluated once, at the first entry call) overrides the
/// reported ABI version; only the echo test plugin uses it, to exercise the host's version check.
#[macro_export]
macro_rules! export_plugin {
    (plugin: $ty:ty, init: $init:expr, name: $name:expr, version: $version:expr $(,)?) => {
        $crate::export_plugin! {
            plugin: $ty, init: $init, name: $name, version: $version,
            abi_version: $crate::abi::R1_PLUGIN_ABI_VERSION,
        }
    };
    (plugin: $ty:ty, init: $init:expr, name: $name:expr, version: $version:expr,
     abi_version: $abi:expr $(,)?) => {
        impl $crate::Instance for $ty {
            fn instance() -> &'static Self {
                static INSTANCE: ::std::sync::OnceLock<$ty> = ::std::sync::OnceLock::new();
                INSTANCE.get_or_init(|| $init)
            }
        }

        /// The plugin entry point (see `r1_plugin.h`). Returns the function table; the host
        /// compares its `abi_version` with its own and refuses a mismatch, naming both.
        #[no_mangle]
        pub extern "C" fn r1_plugin_entry(
            host_abi_version: u32,
        ) -> *const $crate::abi::R1PluginApi {
            static API: ::std::sync::OnceLock<$crate::abi::R1PluginApi> =
                ::std::sync::OnceLock::new();
            let _ = host_abi_version;
            // A panic while building the table (e.g. in the version expression) must not unwind
            // into the host: report "incompatible" instead.
            let api = ::std::panic::catch_unwind(|| {
                API.get_or_init(|| $crate::ffi::api_table::<$ty>($name, $version, $abi)) as *const _
            });
            api.unwrap_or(::std::ptr::null())
        }
    };
}

/// The checks every backend makes of a [`GenerateRequest`] before generating: finite
/// temperature, top-p and min-p, a prompt of at least one token, every prompt id inside the
/// vocabulary of `n_vocab` tokens (an id outside it makes llama.cpp throw across its C API, a
/// process abort, and indexes out of an ONNX model's embedding).
///
/// # Errors
/// [`PluginError::invalid_argument`] naming the value, the empty prompt, or the first id outside
/// the vocabulary with its position.
pub fn validate_request(request: &GenerateRequest, n_vocab: i32) -> Result<(), PluginError> {
    for (name, value) in [
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("min_p", request.min_p),
        ("presence_penalty", request.presence_penalty),
        ("frequency_penalty", request.frequency_penalty),
        ("repeat_penalty", request.repeat_penalty),
    ] {
        if !value.is_finite() {
            return Err(PluginError::invalid_argument(format!(
                "{name} must be a finite number, got {value}"
            )));
        }
    }
    if request.prompt_tokens.is_empty() {
        return Err(PluginError::invalid_argument(
            "the prompt is empty; generation needs at least one prompt token",
        ));
    }
    if let Some((i, id)) = request
        .prompt_tokens
        .iter()
        .enumerate()
        .find(|(_, id)| **id < 0 || **id >= n_vocab)
    {
        return Err(PluginError::invalid_argument(format!(
            "prompt token {i} has id {id}, outside the vocabulary of {n_vocab} tokens"
        )));
    }
    if let Some((id, bias)) = request
        .logit_bias
        .iter()
        .find(|(id, bias)| *id < 0 || *id >= n_vocab || !bias.is_finite())
    {
        return Err(PluginError::invalid_argument(format!(
            "logit_bias names token {id} with bias {bias}; token ids are 0 to {} and biases finite",
            n_vocab - 1
        )));
    }
    Ok(())
}
