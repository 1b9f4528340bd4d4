//! What r1d's ONNX backends share: the `onnxruntime` (CPU) and `tensorrt` (TensorRT/CUDA)
//! plugins differ only in their probe and in the execution providers they ask for; everything
//! else is here, once.
//!
//! - [`runtime`]: finding and loading the ONNX Runtime shared library (`ort` with
//!   `load-dynamic`; config → `R1D_ONNXRUNTIME_LIB` → `ORT_DYLIB_PATH` → system paths).
//! - [`model_dir`]: the model directory (`model.onnx`, `config.json`, `tokenizer.json`,
//!   `tokenizer_config.json`, `generation_config.json`, `chat_template.jinja`).
//! - [`decoder`]: the session of a decoder-only causal LM, inputs and outputs found by name, the
//!   KV cache carried between steps.
//! - [`sampling`], [`detokenize`]: choosing tokens and turning them into text pieces.
//! - [`OnnxModel`]: load, `info`, `tokenize` and the generation loop, implementing the SDK's
//!   [`Model`](r1_plugin_sdk::Model).

pub mod decoder;
pub mod detokenize;
mod model;
pub mod model_dir;
pub mod runtime;
pub mod sampling;

pub use model::{OnnxModel, SessionOptions, DEFAULT_BATCH_SIZE, DEFAULT_CONTEXT_CAP};
pub use ort;
