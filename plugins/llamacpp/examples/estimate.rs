//! Prints llama.cpp's estimate (the plugin's `estimate`, a no-allocation dry run) of loading a
//! GGUF as JSON: `cargo run --release -p r1-plugin-llamacpp --example estimate -- MODEL.gguf
//! [CONTEXT_LENGTH [PARALLEL [GPU_LAYERS]]]`. Used by `bench/plan-accuracy`.

use r1_plugin_sdk::{LoadParams, Plugin};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: estimate MODEL.gguf [CONTEXT_LENGTH [PARALLEL [GPU_LAYERS]]]");
        std::process::exit(2);
    };
    let number = |i: usize| -> Option<u32> {
        args.get(i).map(|a| {
            a.parse().unwrap_or_else(|_| {
                eprintln!("estimate: {a} is not a whole number");
                std::process::exit(2)
            })
        })
    };
    let params = LoadParams {
        path: path.clone(),
        context_length: number(1),
        parallel: number(2),
        gpu_layers: number(3),
        ..LoadParams::default()
    };
    match r1_plugin_llamacpp::LlamaCppPlugin.estimate(params) {
        Ok(estimate) => println!(
            "{}",
            serde_json::to_string(&estimate).expect("an estimate serialises")
        ),
        Err(e) => {
            eprintln!("estimate: {}", e.message);
            std::process::exit(1);
        }
    }
}
