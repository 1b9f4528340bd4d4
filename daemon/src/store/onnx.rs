//! ONNX model directories in the store: recognised by `model.onnx` + `config.json` (or
//! `genai_config.json`), identified from that config and the directory's name, and checked for the files a load needs.
//!
//! A directory is listed as one model (format `onnx`); its size is the sum of its files. It is
//! matched to a catalog variant when its name says DeepSeek-R1 and `config.json`'s shape
//! (`model_type`, `num_hidden_layers`, `hidden_size`) is the variant's, and to one of the
//! variant's ONNX quantizations when the name contains the quantization's name without its
//! `ONNX-` prefix (`…-q4f16`).

use std::path::Path;

use super::{gguf::Identity, scan::Found, Health, ModelEntry, Source};
use crate::catalog::{Format, Quantization, Variant, VARIANTS};

/// Whether `dir` is an ONNX model directory: it holds `model.onnx` and `config.json` (or, as
/// onnxruntime-genai folders do, `genai_config.json` instead).
pub fn is_model_dir(dir: &Path) -> bool {
    dir.join("model.onnx").is_file()
        && (dir.join("config.json").is_file() || dir.join("genai_config.json").is_file())
}

/// `config.json`, or the shapes of `genai_config.json` under `config.json`'s key names.
fn read_config(dir: &Path) -> Result<serde_json::Value, String> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("failed to read {name}: {e}"))
            .and_then(|text| {
                serde_json::from_str::<serde_json::Value>(&text)
                    .map_err(|e| format!("{name} is not valid JSON: {e}"))
            })
    };
    if dir.join("config.json").is_file() {
        return read("config.json");
    }
    let genai = read("genai_config.json")?;
    let model = &genai["model"];
    Ok(serde_json::json!({
        "model_type": model["type"],
        "num_hidden_layers": model["decoder"]["num_hidden_layers"],
        "hidden_size": model["decoder"]["hidden_size"],
    }))
}

/// Lowercase, spaces, underscores and dots as dashes (as `gguf` normalises names).
fn normalize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' ' | '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Identifies the directory from `config` (parsed `config.json`) and its `name`.
fn identify(config: &serde_json::Value, name: &str) -> Identity {
    let uint = |key: &str| config.get(key).and_then(serde_json::Value::as_u64);
    let architecture = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let label = normalize(name);
    let mut mismatch = None;
    let variant: Option<&'static Variant> = if label.contains("deepseek-r1") {
        let found = VARIANTS
            .iter()
            .filter(|v| {
                Some(v.architecture.name()) == architecture.as_deref()
                    && Some(u64::from(v.layers)) == uint("num_hidden_layers")
                    && Some(u64::from(v.hidden_size)) == uint("hidden_size")
            })
            .find(|v| v.id.contains("0528") == label.contains("0528"));
        if found.is_none() {
            mismatch = Some(format!(
                "named DeepSeek-R1, but its config.json shape ({} with {} layers, hidden size {}) \
                 matches no catalog variant",
                architecture.as_deref().unwrap_or("unknown model_type"),
                uint("num_hidden_layers").map_or("?".into(), |b| b.to_string()),
                uint("hidden_size").map_or("?".into(), |h| h.to_string()),
            ));
        }
        found
    } else {
        None
    };
    let catalog_quantization: Option<&'static Quantization> = variant.and_then(|v| {
        v.quantizations.iter().find(|q| {
            q.format == Format::Onnx
                && label.contains(&normalize(q.name.trim_start_matches("ONNX-")))
        })
    });
    Identity {
        name: Some(name.to_owned()),
        architecture,
        basename: None,
        size_label: None,
        quantization: catalog_quantization.map(|q| q.name.to_owned()),
        parameters: 0,
        variant,
        catalog_quantization,
        mismatch,
    }
}

/// Reads and checks an ONNX model directory. Never panics on a bad directory: it is listed with
/// why it cannot be served (no `tokenizer.json`, an unreadable `config.json`).
pub fn examine(found: Found) -> ModelEntry {
    let dir = &found.path;
    let files: Vec<std::fs::Metadata> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .filter(|m| m.is_file())
                .collect()
        })
        .unwrap_or_default();
    let size_bytes = files.iter().map(|m| m.len()).sum();
    let modified = files
        .iter()
        .filter_map(|m| m.modified().ok())
        .max()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let config = read_config(dir);
    let (identity, mut health) = match &config {
        Ok(config) => (Some(identify(config, &name)), Health::Ok),
        Err(why) => (None, Health::Unreadable(why.clone())),
    };
    if health == Health::Ok && !dir.join("tokenizer.json").is_file() {
        health = Health::Unreadable("the directory has no tokenizer.json".into());
    }
    let entry_name = match identity
        .as_ref()
        .and_then(|i| i.variant.zip(i.catalog_quantization))
    {
        Some((v, q)) => format!("{}-{}", v.id, q.name.to_ascii_lowercase()),
        None => match &found.source {
            Source::HuggingFace { repo, .. } => format!("hf.co/{repo}"),
            _ => name,
        },
    };
    ModelEntry {
        name: entry_name,
        path: found.path,
        source: found.source,
        format: Format::Onnx,
        size_bytes,
        modified,
        health,
        identity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{self, Present};
    use crate::store::present;

    fn onnx_dir(root: &Path, name: &str, config: &str) -> std::path::PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), b"graph").unwrap();
        std::fs::write(dir.join("model.onnx.data"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
        dir
    }

    const R1_1_5B: &str =
        r#"{"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 1536}"#;

    #[test]
    fn an_r1_onnx_directory_is_its_catalog_variant_and_quantization() {
        let root = tempfile::tempdir().unwrap();
        let dir = onnx_dir(
            root.path(),
            "DeepSeek-R1-Distill-Qwen-1.5B-ONNX-q4f16",
            R1_1_5B,
        );
        let e = examine(Found {
            path: dir,
            source: Source::Local,
        });
        assert_eq!(e.format, Format::Onnx);
        assert_eq!(e.name, "deepseek-r1:1.5b-onnx-q4f16");
        assert_eq!(e.health, Health::Ok);
        assert!(e.size_bytes > 1000);
        assert_eq!(
            present(std::slice::from_ref(&e)),
            vec![Present {
                variant: "deepseek-r1:1.5b".into(),
                quantization: "ONNX-Q4F16".into(),
                estimate: None,
            }]
        );
    }

    #[test]
    fn a_genai_folder_is_identified_from_genai_config() {
        let root = tempfile::tempdir().unwrap();
        let dir = onnx_dir(root.path(), "deepseek-r1-distill-qwen-1.5B-q4f16", R1_1_5B);
        std::fs::remove_file(dir.join("config.json")).unwrap();
        std::fs::write(
            dir.join("genai_config.json"),
            r#"{"model": {"type": "qwen2", "decoder": {"num_hidden_layers": 28, "hidden_size": 1536}}}"#,
        )
        .unwrap();
        assert!(is_model_dir(&dir));
        let e = examine(Found {
            path: dir,
            source: Source::Local,
        });
        assert_eq!(e.name, "deepseek-r1:1.5b-onnx-q4f16");
        assert_eq!(e.health, Health::Ok);
    }

    #[test]
    fn a_wrong_shape_or_missing_tokenizer_is_said() {
        let root = tempfile::tempdir().unwrap();
        let dir = onnx_dir(
            root.path(),
            "DeepSeek-R1-Distill-Qwen-1.5B-ONNX",
            r#"{"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576}"#,
        );
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        let e = examine(Found {
            path: dir,
            source: Source::Local,
        });
        assert_eq!(
            e.health,
            Health::Unreadable("the directory has no tokenizer.json".into())
        );
        let mismatch = e.identity.unwrap().mismatch.unwrap();
        assert!(mismatch.contains("llama with 30 layers"), "{mismatch}");
    }

    /// The planner gives an ONNX quantization to the ONNX backend, and chooses it only when the
    /// directory is present (r1d cannot pull ONNX folders).
    #[test]
    fn the_planner_picks_the_onnx_backend_for_an_onnx_only_model() {
        let hw = crate::hardware::Hardware {
            memory: crate::hardware::Memory {
                total_bytes: 8 << 30,
                available_bytes: 6 << 30,
                ..Default::default()
            },
            ..Default::default()
        };
        let policy = crate::config::PlannerConfig {
            variant: Some("deepseek-r1:1.5b".into()),
            min_tokens_per_s: 0.0,
            ..Default::default()
        };
        let absent = planner::plan(&hw, &[], &policy);
        let onnx = |plan: &planner::Plan| {
            plan.candidates
                .iter()
                .find(|c| c.quantization.format == Format::Onnx)
                .cloned()
                .expect("an ONNX candidate")
        };
        let c = onnx(&absent);
        assert_eq!(c.backend, "onnxruntime");
        assert!(
            !c.fits && c.reason.contains("cannot pull yet"),
            "{}",
            c.reason
        );
        assert_ne!(
            absent.chosen().map(|c| c.quantization.format),
            Some(Format::Onnx)
        );

        let present = [Present {
            variant: "deepseek-r1:1.5b".into(),
            quantization: "ONNX-Q4F16".into(),
            estimate: None,
        }];
        let plan = planner::plan(&hw, &present, &policy);
        assert!(onnx(&plan).fits, "{}", onnx(&plan).reason);
        // With only the ONNX directory on disk, selection serves it, on the ONNX backend.
        let root = tempfile::tempdir().unwrap();
        let dir = onnx_dir(
            root.path(),
            "DeepSeek-R1-Distill-Qwen-1.5B-ONNX-q4f16",
            R1_1_5B,
        );
        let entries = vec![examine(Found {
            path: dir.clone(),
            source: Source::Local,
        })];
        let choice = crate::store::select::choose(&plan, &entries, "test");
        let (e, c) = choice.entry.zip(choice.candidate).expect("a choice");
        assert_eq!(entries[e].path, dir);
        assert_eq!(plan.candidates[c].backend, "onnxruntime");
    }
}
