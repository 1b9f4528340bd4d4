//! `onnxruntime`: the r1d backend plugin for decoder-only ONNX models on the CPU, through ONNX
//! Runtime loaded at run time (see [`r1_onnx_common::runtime`] for where the library is looked
//! for).
//!
//! Built as a `cdylib` (`libr1_plugin_onnxruntime.so`, exporting `r1_plugin_entry`) and as an
//! `rlib` so tests can use [`OnnxRuntimePlugin`] directly.
//!
//! - `probe`: available when an ONNX Runtime library loads (score [`SCORE_CPU`], format `onnx`,
//!   the CPU as its device); otherwise unavailable, with the libraries tried and why each failed.
//! - `load`, `info`, `tokenize`, `generate`: [`r1_onnx_common::OnnxModel`] with ONNX Runtime's
//!   CPU execution provider.

use r1_onnx_common::runtime;
use r1_onnx_common::{OnnxModel, SessionOptions};
use r1_plugin_sdk::{Device, LoadParams, Plugin, PluginError, ProbeReport};

/// Probe score when available (the TensorRT plugin scores higher for the same format).
pub const SCORE_CPU: i32 = 100;

/// The ONNX Runtime CPU backend.
#[derive(Debug, Default)]
pub struct OnnxRuntimePlugin;

impl Plugin for OnnxRuntimePlugin {
    type Model = OnnxModel;

    fn probe(&self) -> Result<ProbeReport, PluginError> {
        let formats = vec!["onnx".to_owned()];
        Ok(match runtime::runtime(None) {
            Ok(rt) => ProbeReport {
                available: true,
                score: SCORE_CPU,
                formats,
                devices: vec![Device {
                    name: format!(
                        "CPU (ONNX Runtime {} from {})",
                        rt.version,
                        rt.library.display()
                    ),
                    kind: "cpu".into(),
                    memory_total_bytes: None,
                    memory_free_bytes: None,
                }],
                reason: None,
            },
            Err(reason) => ProbeReport {
                available: false,
                score: 0,
                formats,
                devices: Vec::new(),
                reason: Some(reason),
            },
        })
    }

    fn load(
        &self,
        params: LoadParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<OnnxModel, PluginError> {
        let options = SessionOptions {
            providers: Vec::new(),
            on_gpu: false,
        };
        OnnxModel::load(&params, options, progress)
    }
}

r1_plugin_sdk::export_plugin! {
    plugin: OnnxRuntimePlugin,
    init: OnnxRuntimePlugin,
    name: "onnxruntime",
    version: env!("CARGO_PKG_VERSION"),
}
