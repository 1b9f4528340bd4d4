//! The TensorRT plugin's probe on the machine the tests run on.
//!
//! With the fixture's ONNX Runtime (`$R1D_TEST_MODELS/libonnxruntime.so`, the CPU build from
//! PyPI) the plugin must be unavailable and say why: the CPU build lacks the GPU providers, and
//! on a machine without an NVIDIA driver (the build machine) that is named too.

use std::path::PathBuf;

use r1_onnx_common::runtime;
use r1_plugin_sdk::Plugin;
use r1_plugin_tensorrt::TensorRtPlugin;

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
        "\n!!!!!!!! SKIPPED: test fixture {} is missing; run scripts/fetch-test-models or set \
         R1D_TEST_MODELS !!!!!!!!\n",
        path.display()
    );
    None
}

#[test]
fn with_a_cpu_onnx_runtime_the_plugin_is_unavailable_and_says_what_is_missing() {
    let Some(lib) = fixture("libonnxruntime.so") else {
        return;
    };
    runtime::runtime(Some(&lib)).expect("the fixture's ONNX Runtime loads");
    let report = TensorRtPlugin.probe().expect("probe answers");
    assert!(!report.available, "{report:?}");
    assert_eq!(report.score, 0);
    assert_eq!(report.formats, vec!["onnx"]);
    let reason = report.reason.expect("a reason");
    assert!(
        reason.contains("is not a GPU build (its providers: CPUExecutionProvider"),
        "{reason}"
    );
    let driver = std::path::Path::new("/proc/driver/nvidia/version").exists();
    if !driver {
        // This machine: no NVIDIA kernel driver, no NVML library.
        assert!(reason.contains("no NVIDIA driver"), "{reason}");
        assert!(report.devices.is_empty(), "{:?}", report.devices);
    }
}
