//! Compiles `cpp/estimate.cpp`, the C++ shim around llama.cpp's memory breakdown (a C++ API), with
//! the headers of the very llama.cpp source `llama-cpp-sys-2` builds and links (it exports no
//! include path, so the source is found beside it in Cargo's registry, or given with
//! `R1D_LLAMA_CPP_SRC=DIR`, the directory holding `include/llama.h`).

use std::path::{Path, PathBuf};

/// The `llama-cpp-sys-2` version this plugin pins in `Cargo.toml` (its headers must match).
const SYS_VERSION: &str = "0.1.161";

fn llama_cpp_source() -> PathBuf {
    println!("cargo:rerun-if-env-changed=R1D_LLAMA_CPP_SRC");
    if let Some(dir) = std::env::var_os("R1D_LLAMA_CPP_SRC") {
        return PathBuf::from(dir);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("neither CARGO_HOME nor HOME is set; set R1D_LLAMA_CPP_SRC");
    let registry = cargo_home.join("registry").join("src");
    let wanted = format!("llama-cpp-sys-2-{SYS_VERSION}");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&registry)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(&wanted).join("llama.cpp"))
        .filter(|p| p.join("src").join("llama-ext.h").is_file())
        .collect();
    candidates.sort();
    candidates.pop().unwrap_or_else(|| {
        panic!(
            "failed to find the llama.cpp source of {wanted} under {}; set R1D_LLAMA_CPP_SRC",
            registry.display()
        )
    })
}

fn main() {
    println!("cargo:rerun-if-changed=cpp/estimate.cpp");
    if std::env::var_os("CARGO_FEATURE_DYNAMIC_BACKENDS").is_some() {
        // llama.cpp's shared libraries travel in a directory beside the plugin (src/variants.rs,
        // MODULES_DIR). DT_RPATH rather than DT_RUNPATH (--disable-new-dtags): it also serves
        // the libraries' own dependencies on each other.
        println!(
            "cargo:rustc-cdylib-link-arg=-Wl,--disable-new-dtags,-rpath,$ORIGIN/llamacpp-cpu-variants"
        );
    }
    let src = llama_cpp_source();
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("cpp/estimate.cpp")
        .include(src.join("include"))
        .include(src.join("ggml").join("include"))
        .include(src.join("src"))
        .warnings(false)
        .compile("r1_llama_estimate");
}
