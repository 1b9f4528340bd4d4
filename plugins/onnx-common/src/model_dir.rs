//! A model directory in the Hugging Face / Optimum or onnxruntime-genai layout: what is read from
//! it besides the graph (shapes, tokenizer, chat template, special tokens).
//!
//! The model is a directory, or the path of one `.onnx` graph file whose configs are beside it
//! or one level up (transformers.js exports keep `onnx/model_q4f16.onnx` etc. under the
//! configs). Files:
//! - `model.onnx` (required in a directory; else the `decoder.filename` of `genai_config.json`;
//!   its external data, e.g. `model.onnx.data`, beside it);
//! - `config.json` (required unless `genai_config.json` is there; onnxruntime-genai folders ship
//!   only that): `model_type`, `num_hidden_layers`, `hidden_size`,
//!   `num_attention_heads`, `num_key_value_heads`, `head_dim`, `max_position_embeddings`,
//!   `vocab_size`, `bos_token_id`, `eos_token_id`;
//! - `tokenizer.json` (required), read by the `tokenizers` crate;
//! - `tokenizer_config.json` (optional): `bos_token`, `eos_token`, `add_bos_token`,
//!   `chat_template`;
//! - `chat_template.jinja` (optional; transformers 5 writes the template there instead of into
//!   `tokenizer_config.json`, and it wins when both exist);
//! - `generation_config.json` (optional): `bos_token_id`, `eos_token_id` (one id or a list).

use std::path::{Path, PathBuf};

use r1_plugin_sdk::{PluginError, SpecialToken};
use serde::Deserialize;
use serde_json::Value;
use tokenizers::Tokenizer;

/// The shapes `config.json` gives (Hugging Face `PretrainedConfig` keys).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HfConfig {
    /// Architecture, e.g. `"llama"`, `"qwen2"`.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Transformer blocks.
    #[serde(default)]
    pub num_hidden_layers: Option<u32>,
    /// Embedding width.
    #[serde(default)]
    pub hidden_size: Option<u32>,
    /// Query heads.
    #[serde(default)]
    pub num_attention_heads: Option<u32>,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<u32>,
    /// Width of one head; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<u32>,
    /// Trained context length in tokens.
    #[serde(default)]
    pub max_position_embeddings: Option<u32>,
    /// Vocabulary size of the output head.
    #[serde(default)]
    pub vocab_size: Option<u32>,
    /// Width of the feed-forward layer.
    #[serde(default)]
    pub intermediate_size: Option<u32>,
    /// Whether the output head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<Value>,
    /// End-of-sequence id or ids.
    #[serde(default)]
    pub eos_token_id: Option<Value>,
}

impl HfConfig {
    /// Key/value heads: `num_key_value_heads`, else `num_attention_heads`.
    pub fn kv_heads(&self) -> Option<u32> {
        self.num_key_value_heads.or(self.num_attention_heads)
    }

    /// Parameters of a dense decoder of these shapes (Llama/Qwen2 layout: embedding, per layer
    /// Q/K/V/O projections, a gated MLP of three matrices and two norms, a final norm, and the
    /// output head unless tied); `None` when a shape is missing. An estimate from the config,
    /// not a count of the graph's weights (biases and MoE are not counted).
    pub fn parameters(&self) -> Option<u64> {
        let hidden = u64::from(self.hidden_size?);
        let vocab = u64::from(self.vocab_size?);
        let layers = u64::from(self.num_hidden_layers?);
        let heads = u64::from(self.num_attention_heads?);
        let kv = u64::from(self.kv_heads()?);
        let head_dim = u64::from(self.head_dim()?);
        let ffn = u64::from(self.intermediate_size?);
        let attention = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim;
        let layer = attention + 3 * hidden * ffn + 2 * hidden;
        let head = if self.tie_word_embeddings.unwrap_or(false) {
            0
        } else {
            vocab * hidden
        };
        Some(vocab * hidden + layers * layer + hidden + head)
    }

    /// The same shapes from an onnxruntime-genai `genai_config.json` (its `model` object:
    /// `type`, `context_length`, `vocab_size`, `bos_token_id`, `eos_token_id` and
    /// `decoder.{num_hidden_layers, hidden_size, num_attention_heads, num_key_value_heads,
    /// head_size}`), for genai folders that ship no `config.json`.
    pub fn from_genai(genai: &Value) -> HfConfig {
        let model = genai.get("model").cloned().unwrap_or_default();
        let uint = |v: Option<&Value>| v.and_then(Value::as_u64).map(|n| n as u32);
        let decoder = |key: &str| uint(model.pointer(&format!("/decoder/{key}")));
        HfConfig {
            model_type: model.get("type").and_then(Value::as_str).map(str::to_owned),
            num_hidden_layers: decoder("num_hidden_layers"),
            hidden_size: decoder("hidden_size"),
            num_attention_heads: decoder("num_attention_heads"),
            num_key_value_heads: decoder("num_key_value_heads"),
            head_dim: decoder("head_size"),
            max_position_embeddings: uint(model.get("context_length")),
            vocab_size: uint(model.get("vocab_size")),
            intermediate_size: None,
            tie_word_embeddings: None,
            bos_token_id: model.get("bos_token_id").cloned(),
            eos_token_id: model.get("eos_token_id").cloned(),
        }
    }

    /// Head width: `head_dim`, else `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> Option<u32> {
        self.head_dim.or_else(|| {
            let heads = self.num_attention_heads.filter(|h| *h > 0)?;
            Some(self.hidden_size? / heads)
        })
    }
}

/// What a model directory holds besides the graph.
pub struct ModelDir {
    /// The directory.
    pub dir: PathBuf,
    /// `dir/model.onnx`.
    pub graph: PathBuf,
    /// `config.json`.
    pub config: HfConfig,
    /// The tokenizer from `tokenizer.json`; added special tokens in the text are parsed as such.
    pub tokenizer: Tokenizer,
    /// The same tokenizer with special-token parsing off: `<|im_end|>` in the text is plain text
    /// (for `tokenize` with `parse_special == false`).
    pub tokenizer_literal: Tokenizer,
    /// The Jinja chat template, if the directory has one.
    pub chat_template: Option<String>,
    /// Beginning-of-sequence token.
    pub bos: Option<SpecialToken>,
    /// End-of-sequence token.
    pub eos: Option<SpecialToken>,
    /// Every end-of-generation id named by the configs, ascending, no duplicates.
    pub eog_ids: Vec<i32>,
    /// `add_bos_token` of `tokenizer_config.json` (default false).
    pub add_bos_token: bool,
    /// Bytes of `model.onnx` plus its external data files in the directory.
    pub weights_bytes: u64,
}

impl std::fmt::Debug for ModelDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDir")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog_ids", &self.eog_ids)
            .finish_non_exhaustive()
    }
}

fn load_failed(message: String) -> PluginError {
    PluginError::load_failed(message)
}

fn read_json(path: &Path) -> Result<Option<Value>, PluginError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| load_failed(format!("failed to parse {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(load_failed(format!(
            "failed to read {}: {e}",
            path.display()
        ))),
    }
}

/// Token text from a `tokenizer_config.json` entry: a string or `{"content": "…"}`.
fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// Ids from a config entry: one number or a list of numbers.
fn ids(value: Option<&Value>) -> Vec<i32> {
    match value {
        Some(Value::Number(n)) => n.as_i64().map(|i| i as i32).into_iter().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_i64().map(|i| i as i32))
            .collect(),
        _ => Vec::new(),
    }
}

/// The chat template from `tokenizer_config.json`: a string, or a list of `{name, template}`
/// of which the one named `default` (else the first) is taken.
fn template_from_config(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let pick = list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())?;
            pick.get("template")?.as_str().map(str::to_owned)
        }
        _ => None,
    }
}

impl ModelDir {
    /// Reads the directory `path`.
    ///
    /// # Errors
    /// [`PluginError::load_failed`] naming the file: `path` is not a directory, `model.onnx`,
    /// `config.json` or `tokenizer.json` is missing, a JSON file does not parse, the tokenizer
    /// is invalid.
    pub fn open(model: &Path) -> Result<ModelDir, PluginError> {
        let meta = std::fs::metadata(model)
            .map_err(|e| load_failed(format!("failed to open model {}: {e}", model.display())))?;
        let genai_in = |dir: &Path| read_json(&dir.join("genai_config.json"));
        // The graph, and the directory holding the configs and tokenizer.
        let (graph, path, genai) = if meta.is_dir() {
            let genai = genai_in(model)?;
            let named = genai
                .as_ref()
                .and_then(|g| g.pointer("/model/decoder/filename"))
                .and_then(Value::as_str)
                .map(|f| model.join(f));
            let graph = std::iter::once(model.join("model.onnx"))
                .chain(named)
                .find(|g| g.is_file())
                .ok_or_else(|| {
                    let others = onnx_files(model);
                    load_failed(if others.is_empty() {
                        format!("model directory {} has no model.onnx", model.display())
                    } else {
                        format!(
                            "model directory {} has no model.onnx; it has {}: give the path of \
                             the one to load",
                            model.display(),
                            others.join(", ")
                        )
                    })
                })?;
            (graph, model.to_owned(), genai)
        } else if model.extension().is_some_and(|e| e == "onnx") {
            // A graph file: its configs are beside it, or one level up (transformers.js keeps
            // its graphs in onnx/ under the configs).
            let parent = model.parent().unwrap_or(Path::new("."));
            let path = [parent, parent.parent().unwrap_or(parent)]
                .into_iter()
                .find(|d| d.join("tokenizer.json").is_file())
                .unwrap_or(parent)
                .to_owned();
            let genai = genai_in(&path)?;
            (model.to_owned(), path, genai)
        } else {
            return Err(load_failed(format!(
                "model {} is neither a directory nor an .onnx file; an ONNX model is a directory \
                 with model.onnx, config.json and tokenizer.json",
                model.display()
            )));
        };
        let path = path.as_path();
        let config_path = path.join("config.json");
        let config: HfConfig = match (read_json(&config_path)?, &genai) {
            (Some(value), _) => serde_json::from_value(value).map_err(|e| {
                load_failed(format!("failed to read {}: {e}", config_path.display()))
            })?,
            (None, Some(genai)) => HfConfig::from_genai(genai),
            (None, None) => {
                return Err(load_failed(format!(
                    "model directory {} has no config.json (nor genai_config.json)",
                    path.display()
                )))
            }
        };
        let tokenizer_path = path.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(load_failed(format!(
                "model directory {} has no tokenizer.json",
                path.display()
            )));
        }
        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            load_failed(format!(
                "failed to read the tokenizer {}: {e}",
                tokenizer_path.display()
            ))
        })?;
        let mut tokenizer_literal = tokenizer.clone();
        tokenizer_literal.set_encode_special_tokens(true);

        let tokenizer_config = read_json(&path.join("tokenizer_config.json"))?.unwrap_or_default();
        let generation_config =
            read_json(&path.join("generation_config.json"))?.unwrap_or_default();

        let template_file = path.join("chat_template.jinja");
        let chat_template = match std::fs::read_to_string(&template_file) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                template_from_config(tokenizer_config.get("chat_template"))
            }
            Err(e) => {
                return Err(load_failed(format!(
                    "failed to read {}: {e}",
                    template_file.display()
                )))
            }
        };

        let special = |text: Option<String>, id_sources: &[Option<&Value>]| {
            let by_text = text.as_deref().and_then(|t| {
                tokenizer.token_to_id(t).map(|id| SpecialToken {
                    id: id as i32,
                    text: t.to_owned(),
                })
            });
            by_text.or_else(|| {
                let id = id_sources.iter().flat_map(|v| ids(*v)).next()?;
                let text = tokenizer.id_to_token(id as u32)?;
                Some(SpecialToken { id, text })
            })
        };
        let bos = special(
            token_text(tokenizer_config.get("bos_token")),
            &[
                generation_config.get("bos_token_id"),
                config.bos_token_id.as_ref(),
            ],
        );
        let eos = special(
            token_text(tokenizer_config.get("eos_token")),
            &[
                generation_config.get("eos_token_id"),
                config.eos_token_id.as_ref(),
            ],
        );
        let mut eog_ids: Vec<i32> = ids(generation_config.get("eos_token_id"))
            .into_iter()
            .chain(ids(config.eos_token_id.as_ref()))
            .chain(eos.as_ref().map(|t| t.id))
            .collect();
        eog_ids.sort_unstable();
        eog_ids.dedup();

        let add_bos_token = tokenizer_config
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);

        Ok(ModelDir {
            dir: path.to_owned(),
            weights_bytes: weights_bytes(&graph),
            graph,
            config,
            tokenizer,
            tokenizer_literal,
            chat_template,
            bos,
            eos,
            eog_ids,
            add_bos_token,
        })
    }
}

/// The `.onnx` files in `dir` and `dir/onnx`, relative to `dir`, sorted.
fn onnx_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["", "onnx"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".onnx") {
                out.push(if sub.is_empty() {
                    name
                } else {
                    format!("{sub}/{name}")
                });
            }
        }
    }
    out.sort();
    out
}

/// The graph file plus the files beside it whose names start with its name (external data:
/// `model.onnx.data`, `model.onnx_data`, `model_q4f16.onnx_data`), in bytes.
fn weights_bytes(graph: &Path) -> u64 {
    let (Some(dir), Some(name)) = (graph.parent(), graph.file_name()) else {
        return 0;
    };
    let name = name.to_string_lossy();
    let stem = name.strip_suffix(".onnx").unwrap_or(&name);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(stem))
        // Following links: the Hugging Face cache links snapshot files to blobs.
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer.json small enough to write inline.
    const TOKENIZER: &str = r#"{
      "version": "1.0",
      "added_tokens": [
        {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
      ],
      "normalizer": null,
      "pre_tokenizer": {"type": "Whitespace"},
      "post_processor": null,
      "decoder": null,
      "model": {"type": "WordLevel", "vocab": {"<s>": 0, "</s>": 1, "hello": 2, "world": 3, "[UNK]": 4}, "unk_token": "[UNK]"}
    }"#;

    fn write_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn reads_tokens_and_template_from_the_configs() {
        let dir = write_dir(&[
            ("model.onnx", "x"),
            (
                "config.json",
                r#"{"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "eos_token_id": 1}"#,
            ),
            ("tokenizer.json", TOKENIZER),
            (
                "tokenizer_config.json",
                r#"{"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
            ),
            ("generation_config.json", r#"{"eos_token_id": [1, 3]}"#),
        ]);
        let m = ModelDir::open(dir.path()).unwrap();
        assert_eq!(
            m.bos,
            Some(SpecialToken {
                id: 0,
                text: "<s>".into()
            })
        );
        assert_eq!(
            m.eos,
            Some(SpecialToken {
                id: 1,
                text: "</s>".into()
            })
        );
        assert_eq!(m.eog_ids, vec![1, 3]);
        assert_eq!(m.chat_template.as_deref(), Some("D"));
        assert_eq!(m.config.head_dim(), Some(4));
        assert_eq!(m.config.kv_heads(), Some(2));
        // No intermediate_size or vocab_size: no estimate.
        assert_eq!(m.config.parameters(), None);
        assert!(!m.add_bos_token);
    }

    #[test]
    fn chat_template_jinja_wins_over_tokenizer_config() {
        let dir = write_dir(&[
            ("model.onnx", "x"),
            ("config.json", "{}"),
            ("tokenizer.json", TOKENIZER),
            ("tokenizer_config.json", r#"{"chat_template": "old"}"#),
            ("chat_template.jinja", "new"),
        ]);
        assert_eq!(
            ModelDir::open(dir.path()).unwrap().chat_template.as_deref(),
            Some("new")
        );
    }

    #[test]
    fn missing_files_are_named() {
        let dir = write_dir(&[("config.json", "{}"), ("tokenizer.json", TOKENIZER)]);
        let err = ModelDir::open(dir.path()).unwrap_err();
        assert!(err.message.contains("has no model.onnx"), "{}", err.message);

        std::fs::write(dir.path().join("model.onnx"), "x").unwrap();
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        let err = ModelDir::open(dir.path()).unwrap_err();
        assert!(
            err.message.contains("has no tokenizer.json"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_bad_tokenizer_json_is_named() {
        let dir = write_dir(&[
            ("model.onnx", "x"),
            ("config.json", "{}"),
            (
                "tokenizer.json",
                r#"{"version": "1.0", "model": {"type": "Nonsense"}}"#,
            ),
        ]);
        let err = ModelDir::open(dir.path()).unwrap_err();
        assert!(
            err.message.contains("failed to read the tokenizer"),
            "{}",
            err.message
        );
        assert!(err.message.contains("tokenizer.json"), "{}", err.message);
    }
}
