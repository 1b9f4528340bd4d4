//! The DeepSeek-R1 variants and their quantizations (data, compiled in), and the memory math.
//!
//! Every number has its source beside it. Three kinds of source:
//! - **config.json**: the model's `config.json` on Hugging Face
//!   (`https://huggingface.co/deepseek-ai/<repo>/blob/main/config.json`), and the parameter count
//!   from the model page. These are the published architecture values of the base models
//!   (Qwen2.5-Math-1.5B/7B, Qwen2.5-14B/32B, Llama-3.1-8B, Llama-3.3-70B-Instruct, Qwen3-8B,
//!   DeepSeek-V3); they were written from those files, and the layer/KV-head/head-dim columns of
//!   the 8B and 32B rows were checked against fitmyllm.com's model pages. The search tool could
//!   not open the config files themselves, so a typo would go unnoticed until a GGUF header
//!   disagrees — `store` compares them when it identifies a file.
//! - **a verified file size**: an exact byte count from a Git LFS pointer, or the size a
//!   Hugging Face file listing or Ollama's library page shows (3 significant digits).
//! - **unverified**: sizes from bartowski's model-card tables that could not be re-checked here;
//!   they are marked `// unverified` and are good to about ±1 %. F16 sizes are *derived* as
//!   parameters × 2 bytes (GGUF F16 keeps norms in F32, a few MB more) and marked `// derived`.
//!
//! ONNX builds: onnx-community's transformers.js export of the 1.5B is listed (format
//! [`Format::Onnx`], run by the `onnxruntime` plugin); its size is unverified. r1d cannot pull
//! an ONNX folder yet, so the planner only chooses an ONNX quantization that is already present.

/// Model architecture, as llama.cpp names it in `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Qwen2 (the Qwen2.5-based distills).
    Qwen2,
    /// Llama (Llama-3.1-8B and Llama-3.3-70B based distills).
    Llama,
    /// Qwen3 (DeepSeek-R1-0528-Qwen3-8B).
    Qwen3,
    /// DeepSeek-V3 / R1: mixture of experts with multi-head latent attention (`deepseek2` in
    /// llama.cpp).
    DeepSeek2,
}

impl Architecture {
    /// llama.cpp's name.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "qwen2",
            Architecture::Llama => "llama",
            Architecture::Qwen3 => "qwen3",
            Architecture::DeepSeek2 => "deepseek2",
        }
    }
}

/// How the attention cache is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// Grouped-query attention: K and V of `kv_heads × head_dim` per layer and token.
    Gqa {
        /// Attention (query) heads.
        heads: u32,
        /// Key/value heads.
        kv_heads: u32,
        /// Dimension of one head.
        head_dim: u32,
    },
    /// Multi-head latent attention: one compressed latent (`kv_lora_rank`) plus the decoupled
    /// RoPE key (`rope_dim`) per layer and token. llama.cpp (since its MLA support, 2025) caches
    /// exactly these `kv_lora_rank + rope_dim` values.
    Mla {
        /// Attention heads.
        heads: u32,
        /// Latent size (`kv_lora_rank`).
        kv_lora_rank: u32,
        /// RoPE key size (`qk_rope_head_dim`).
        rope_dim: u32,
    },
}

impl Attention {
    /// Attention heads.
    pub fn heads(self) -> u32 {
        match self {
            Attention::Gqa { heads, .. } | Attention::Mla { heads, .. } => heads,
        }
    }

    /// Cached values per layer and token (K and V together for GQA).
    pub fn kv_values_per_token_layer(self) -> u64 {
        match self {
            Attention::Gqa {
                kv_heads, head_dim, ..
            } => 2 * kv_heads as u64 * head_dim as u64,
            Attention::Mla {
                kv_lora_rank,
                rope_dim,
                ..
            } => kv_lora_rank as u64 + rope_dim as u64,
        }
    }
}

/// File format of a quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One GGUF file (or a split set), run by the llama.cpp backend.
    Gguf,
    /// A model directory (`model.onnx` + external data, `config.json`, tokenizer files), run by
    /// the ONNX Runtime backends.
    Onnx,
}

impl Format {
    /// `gguf` or `onnx`, as plugins' probe reports spell formats.
    pub fn name(self) -> &'static str {
        match self {
            Format::Gguf => "gguf",
            Format::Onnx => "onnx",
        }
    }

    /// The backend plugin the planner assigns: `llamacpp` or `onnxruntime` (at load, the host
    /// takes the best available plugin of the format, e.g. `tensorrt` where it is available).
    pub fn backend(self) -> &'static str {
        match self {
            Format::Gguf => "llamacpp",
            Format::Onnx => "onnxruntime",
        }
    }
}

/// One downloadable quantization of a variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantization {
    /// Name as llama.cpp / the file names spell it: `Q4_K_M`, `UD-IQ1_S`, …
    pub name: &'static str,
    /// Average bits per weight (nominal; for Unsloth's dynamic quants the figure they publish).
    pub bits_per_weight: f32,
    /// Rank among this variant's quantizations: higher is closer to the original weights.
    pub quality: u32,
    /// File format.
    pub format: Format,
    /// Size of the file(s) (bytes).
    pub file_bytes: u64,
    /// Hugging Face repository to download from.
    pub repo: &'static str,
    /// File (or folder of split files) in that repository.
    pub file: &'static str,
    /// SHA-256 of the file, where a single-file LFS pointer publishes it.
    pub sha256: Option<&'static str>,
}

impl Quantization {
    /// Below 3 bits per weight: only chosen when the policy allows extreme quantization.
    pub fn is_extreme(&self) -> bool {
        self.bits_per_weight < 3.0
    }
}

/// The published rule-of-thumb requirements of a size class (shown beside the planner's own
/// numbers, never used instead of them). Source: the requirement table circulated with the R1
/// release (1.5B: 4 cores, 8 GB RAM; 7B: 8 cores, 16 GB, 8 GB VRAM; … 671B: 64 cores, 512 GB,
/// 8 × 80 GB), written out in `docs/architecture.md`, "The DeepSeek-R1 variants".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleOfThumb {
    /// CPU cores.
    pub cores: u32,
    /// RAM (GB).
    pub ram_gb: u32,
    /// GPUs (0 = none needed).
    pub gpus: u32,
    /// VRAM per GPU (GB).
    pub vram_gb_per_gpu: u32,
}

/// A DeepSeek-R1 variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Variant {
    /// The name users type (Ollama's tags): `deepseek-r1:7b`, `deepseek-r1-0528:8b`, …
    pub id: &'static str,
    /// DeepSeek's Hugging Face repository of the original weights.
    pub hf_repo: &'static str,
    /// Architecture.
    pub architecture: Architecture,
    /// Transformer blocks (`num_hidden_layers`).
    pub layers: u32,
    /// Hidden size (`hidden_size`).
    pub hidden_size: u32,
    /// Attention shape.
    pub attention: Attention,
    /// Vocabulary size (`vocab_size`).
    pub vocab_size: u32,
    /// Input embedding and output head share weights (`tie_word_embeddings`).
    pub tied_embeddings: bool,
    /// Trained context (`max_position_embeddings`, tokens).
    pub trained_context: u32,
    /// Parameters.
    pub parameters: u64,
    /// Parameters used per token (= `parameters` for dense models).
    pub active_parameters: u64,
    /// Rank among variants: higher answers better. Size order, and each 0528 release just above
    /// its predecessor of the same size class.
    pub quality: u32,
    /// The published rule of thumb for this size class, where there is one.
    pub rule_of_thumb: Option<RuleOfThumb>,
    /// Quantizations, lowest quality first.
    pub quantizations: &'static [Quantization],
}

const fn gguf(
    name: &'static str,
    bits_per_weight: f32,
    quality: u32,
    file_bytes: u64,
    repo: &'static str,
    file: &'static str,
) -> Quantization {
    Quantization {
        name,
        bits_per_weight,
        quality,
        format: Format::Gguf,
        file_bytes,
        repo,
        file,
        sha256: None,
    }
}

// Quality ranks of the quantizations (higher = closer to the original weights).
const IQ1_S: u32 = 1;
const IQ1_M: u32 = 2;
const IQ2_XXS: u32 = 3;
const Q2_K_XL: u32 = 4;
// 4-bit weights with fp16 activations (ONNX Runtime's MatMulNBits): ranked below Q4_K_M, which
// llama.cpp runs faster on CPUs and which keeps more precision in its K-quant mixes.
const ONNX_Q4F16: u32 = 5;
const Q4_K_M: u32 = 10;
const Q5_K_M: u32 = 11;
const Q6_K: u32 = 12;
const Q8_0: u32 = 13;
const F16: u32 = 14;

// Nominal bits per weight of llama.cpp's mixes (llama.cpp `tools/quantize` help: Q4_K_M 4.89,
// Q5_K_M 5.70, Q6_K 6.56, Q8_0 8.50 bpw on Llama-3-8B).
const BPW_Q4_K_M: f32 = 4.89;
const BPW_Q5_K_M: f32 = 5.70;
const BPW_Q6_K: f32 = 6.56;
const BPW_Q8_0: f32 = 8.50;

const GB: u64 = 1_000_000_000;
const MB: u64 = 1_000_000;

/// Every variant, smallest first.
pub static VARIANTS: &[Variant] = &[
    Variant {
        id: "deepseek-r1:1.5b",
        hf_repo: "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        architecture: Architecture::Qwen2,
        layers: 28,        // (source: config.json num_hidden_layers)
        hidden_size: 1536, // (source: config.json hidden_size)
        attention: Attention::Gqa {
            heads: 12,     // (source: config.json num_attention_heads)
            kv_heads: 2,   // (source: config.json num_key_value_heads)
            head_dim: 128, // hidden_size / heads
        },
        vocab_size: 151_936,       // (source: config.json vocab_size)
        tied_embeddings: false,    // (source: config.json tie_word_embeddings)
        trained_context: 131_072,  // (source: config.json max_position_embeddings)
        parameters: 1_780_000_000, // (source: model page "1.78B params")
        active_parameters: 1_780_000_000,
        quality: 1,
        rule_of_thumb: Some(RuleOfThumb {
            cores: 4,
            ram_gb: 8,
            gpus: 0,
            vram_gb_per_gpu: 0,
        }),
        quantizations: &[
            // unverified (onnx-community/DeepSeek-R1-Distill-Qwen-1.5B-ONNX, onnx/model_q4f16.onnx:
            // ≈ 1.28 GB as transformers.js demos download it; int4 blocks, fp16 embeddings, so
            // the bits per weight are the file's, not the name's)
            Quantization {
                name: "ONNX-Q4F16",
                bits_per_weight: 5.75,
                quality: ONNX_Q4F16,
                format: Format::Onnx,
                file_bytes: 1_280 * MB,
                repo: "onnx-community/DeepSeek-R1-Distill-Qwen-1.5B-ONNX",
                file: "onnx/model_q4f16.onnx",
                sha256: None,
            },
            // (source: Hugging Face listing of DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf, 1.12 GB;
            // Ollama deepseek-r1:1.5b shows 1.1GB)
            gguf(
                "Q4_K_M",
                BPW_Q4_K_M,
                Q4_K_M,
                1_120 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-1.5B-GGUF",
                "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf",
            ),
            // unverified (bartowski model card: 1.29 GB)
            gguf(
                "Q5_K_M",
                BPW_Q5_K_M,
                Q5_K_M,
                1_290 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-1.5B-GGUF",
                "DeepSeek-R1-Distill-Qwen-1.5B-Q5_K_M.gguf",
            ),
            // unverified (bartowski model card: 1.46 GB)
            gguf(
                "Q6_K",
                BPW_Q6_K,
                Q6_K,
                1_460 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-1.5B-GGUF",
                "DeepSeek-R1-Distill-Qwen-1.5B-Q6_K.gguf",
            ),
            Quantization {
                // (source: LFS pointer of QuantFactory/DeepSeek-R1-Distill-Qwen-1.5B-GGUF
                // DeepSeek-R1-Distill-Qwen-1.5B.Q8_0.gguf, size 1894531872)
                sha256: Some("f222ffca07009725e693ceac1b13db1feb42d08386a3c63975e640081f502d89"),
                ..gguf(
                    "Q8_0",
                    BPW_Q8_0,
                    Q8_0,
                    1_894_531_872,
                    "QuantFactory/DeepSeek-R1-Distill-Qwen-1.5B-GGUF",
                    "DeepSeek-R1-Distill-Qwen-1.5B.Q8_0.gguf",
                )
            },
            // (source: Hugging Face listing of DeepSeek-R1-Distill-Qwen-1.5B-F16.gguf, 3.56 GB)
            gguf(
                "F16",
                16.0,
                F16,
                3_560 * MB,
                "hdnh2006/DeepSeek-R1-Distill-Qwen-1.5B-GGUF",
                "DeepSeek-R1-Distill-Qwen-1.5B-F16.gguf",
            ),
        ],
    },
    Variant {
        id: "deepseek-r1:7b",
        hf_repo: "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        architecture: Architecture::Qwen2,
        layers: 28,        // (source: config.json num_hidden_layers)
        hidden_size: 3584, // (source: config.json hidden_size)
        attention: Attention::Gqa {
            heads: 28,     // (source: config.json num_attention_heads)
            kv_heads: 4,   // (source: config.json num_key_value_heads)
            head_dim: 128, // hidden_size / heads
        },
        vocab_size: 152_064,       // (source: config.json vocab_size)
        tied_embeddings: false,    // (source: config.json tie_word_embeddings)
        trained_context: 131_072,  // (source: config.json max_position_embeddings)
        parameters: 7_620_000_000, // (source: model page "7.62B params")
        active_parameters: 7_620_000_000,
        quality: 2,
        rule_of_thumb: Some(RuleOfThumb {
            cores: 8,
            ram_gb: 16,
            gpus: 1,
            vram_gb_per_gpu: 8,
        }),
        quantizations: &[
            // (source: the full size recorded in the GGUF test fixture's notes, 4,683,073,248
            // bytes; the Hugging Face listing of bartowski's upload shows 4.68 GB)
            gguf(
                "Q4_K_M",
                BPW_Q4_K_M,
                Q4_K_M,
                4_683_073_248,
                "bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF",
                "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf",
            ),
            // unverified (bartowski model card: 5.44 GB)
            gguf(
                "Q5_K_M",
                BPW_Q5_K_M,
                Q5_K_M,
                5_440 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF",
                "DeepSeek-R1-Distill-Qwen-7B-Q5_K_M.gguf",
            ),
            // unverified (bartowski model card: 6.25 GB)
            gguf(
                "Q6_K",
                BPW_Q6_K,
                Q6_K,
                6_250 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF",
                "DeepSeek-R1-Distill-Qwen-7B-Q6_K.gguf",
            ),
            // unverified (bartowski model card: 8.10 GB)
            gguf(
                "Q8_0",
                BPW_Q8_0,
                Q8_0,
                8_100 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF",
                "DeepSeek-R1-Distill-Qwen-7B-Q8_0.gguf",
            ),
            // derived: 7.62e9 parameters × 2 bytes
            gguf(
                "F16",
                16.0,
                F16,
                15_240 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF",
                "DeepSeek-R1-Distill-Qwen-7B-f16.gguf",
            ),
        ],
    },
    Variant {
        id: "deepseek-r1:8b",
        hf_repo: "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        architecture: Architecture::Llama,
        layers: 32, // (source: config.json num_hidden_layers; fitmyllm.com: 32 layers)
        hidden_size: 4096, // (source: config.json hidden_size)
        attention: Attention::Gqa {
            heads: 32,     // (source: config.json num_attention_heads)
            kv_heads: 8,   // (source: config.json num_key_value_heads; fitmyllm.com: 8 KV heads)
            head_dim: 128, // (fitmyllm.com: head dim 128)
        },
        vocab_size: 128_256, // (source: config.json vocab_size; llmrun.dev: 128,256)
        tied_embeddings: false, // (source: config.json tie_word_embeddings)
        trained_context: 131_072, // (source: config.json max_position_embeddings; llmrun.dev: 131,072)
        parameters: 8_030_000_000, // (source: model page "8.03B params")
        active_parameters: 8_030_000_000,
        quality: 3,
        // The published table has no 8B row.
        rule_of_thumb: None,
        quantizations: &[
            // (source: Ollama deepseek-r1:8b before the 0528 update, 4.9GB); unverified to 3
            // digits (bartowski model card: 4.92 GB)
            gguf(
                "Q4_K_M",
                BPW_Q4_K_M,
                Q4_K_M,
                4_920 * MB,
                "bartowski/DeepSeek-R1-Distill-Llama-8B-GGUF",
                "DeepSeek-R1-Distill-Llama-8B-Q4_K_M.gguf",
            ),
            // unverified (bartowski model card: 5.73 GB)
            gguf(
                "Q5_K_M",
                BPW_Q5_K_M,
                Q5_K_M,
                5_730 * MB,
                "bartowski/DeepSeek-R1-Distill-Llama-8B-GGUF",
                "DeepSeek-R1-Distill-Llama-8B-Q5_K_M.gguf",
            ),
            // unverified (bartowski model card: 6.60 GB)
            gguf(
                "Q6_K",
                BPW_Q6_K,
                Q6_K,
                6_600 * MB,
                "bartowski/DeepSeek-R1-Distill-Llama-8B-GGUF",
                "DeepSeek-R1-Distill-Llama-8B-Q6_K.gguf",
            ),
            // unverified (bartowski model card: 8.54 GB)
            gguf(
                "Q8_0",
                BPW_Q8_0,
                Q8_0,
                8_540 * MB,
                "bartowski/DeepSeek-R1-Distill-Llama-8B-GGUF",
                "DeepSeek-R1-Distill-Llama-8B-Q8_0.gguf",
            ),
            // derived: 8.03e9 parameters × 2 bytes
            gguf(
                "F16",
                16.0,
                F16,
                16_060 * MB,
                "bartowski/DeepSeek-R1-Distill-Llama-8B-GGUF",
                "DeepSeek-R1-Distill-Llama-8B-f16.gguf",
            ),
        ],
    },
    Variant {
        id: "deepseek-r1-0528:8b",
        hf_repo: "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
        architecture: Architecture::Qwen3,
        layers: 36,        // (source: config.json num_hidden_layers)
        hidden_size: 4096, // (source: config.json hidden_size)
        attention: Attention::Gqa {
            heads: 32,     // (source: config.json num_attention_heads)
            kv_heads: 8,   // (source: config.json num_key_value_heads)
            head_dim: 128, // (source: config.json head_dim)
        },
        vocab_size: 151_936,       // (source: config.json vocab_size)
        tied_embeddings: false,    // (source: config.json tie_word_embeddings)
        trained_context: 131_072,  // (source: config.json max_position_embeddings)
        parameters: 8_190_000_000, // (source: model page "8.19B params")
        active_parameters: 8_190_000_000,
        quality: 4,
        rule_of_thumb: None,
        quantizations: &[
            // unverified (bartowski model card of deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-GGUF: 5.03 GB)
            gguf(
                "Q4_K_M",
                BPW_Q4_K_M,
                Q4_K_M,
                5_030 * MB,
                "bartowski/deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-GGUF",
                "deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-Q4_K_M.gguf",
            ),
            // unverified (same card: 5.85 GB)
            gguf(
                "Q5_K_M",
                BPW_Q5_K_M,
                Q5_K_M,
                5_850 * MB,
                "bartowski/deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-GGUF",
                "deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-Q5_K_M.gguf",
            ),
            // unverified (same card: 6.73 GB)
            gguf(
                "Q6_K",
                BPW_Q6_K,
                Q6_K,
                6_730 * MB,
                "bartowski/deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-GGUF",
                "deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-Q6_K.gguf",
            ),
            // unverified (same card: 8.71 GB)
            gguf(
                "Q8_0",
                BPW_Q8_0,
                Q8_0,
                8_710 * MB,
                "bartowski/deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-GGUF",
                "deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-Q8_0.gguf",
            ),
            // derived: 8.19e9 parameters × 2 bytes
            gguf(
                "F16",
                16.0,
                F16,
                16_380 * MB,
                "bartowski/deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-GGUF",
                "deepseek-ai_DeepSeek-R1-0528-Qwen3-8B-bf16.gguf",
            ),
        ],
    },
    Variant {
        id: "deepseek-r1:14b",
        hf_repo: "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
        architecture: Architecture::Qwen2,
        layers: 48,        // (source: config.json num_hidden_layers)
        hidden_size: 5120, // (source: config.json hidden_size)
        attention: Attention::Gqa {
            heads: 40,     // (source: config.json num_attention_heads)
            kv_heads: 8,   // (source: config.json num_key_value_heads)
            head_dim: 128, // hidden_size / heads
        },
        vocab_size: 152_064,        // (source: config.json vocab_size)
        tied_embeddings: false,     // (source: config.json tie_word_embeddings)
        trained_context: 131_072,   // (source: config.json max_position_embeddings)
        parameters: 14_800_000_000, // (source: model page "14.8B params")
        active_parameters: 14_800_000_000,
        quality: 5,
        rule_of_thumb: Some(RuleOfThumb {
            cores: 12,
            ram_gb: 32,
            gpus: 1,
            vram_gb_per_gpu: 16,
        }),
        quantizations: &[
            // (source: Ollama deepseek-r1:14b, 9.0GB); unverified to 3 digits (bartowski: 8.99 GB)
            gguf(
                "Q4_K_M",
                BPW_Q4_K_M,
                Q4_K_M,
                8_990 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-14B-GGUF",
                "DeepSeek-R1-Distill-Qwen-14B-Q4_K_M.gguf",
            ),
            // unverified (bartowski model card: 10.51 GB)
            gguf(
                "Q5_K_M",
                BPW_Q5_K_M,
                Q5_K_M,
                10_510 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-14B-GGUF",
                "DeepSeek-R1-Distill-Qwen-14B-Q5_K_M.gguf",
            ),
            // unverified (bartowski model card: 12.12 GB)
            gguf(
                "Q6_K",
                BPW_Q6_K,
                Q6_K,
                12_120 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-14B-GGUF",
                "DeepSeek-R1-Distill-Qwen-14B-Q6_K.gguf",
            ),
            // unverified (bartowski model card: 15.70 GB)
            gguf(
                "Q8_0",
                BPW_Q8_0,
                Q8_0,
                15_700 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-14B-GGUF",
                "DeepSeek-R1-Distill-Qwen-14B-Q8_0.gguf",
            ),
            // derived: 14.8e9 parameters × 2 bytes
            gguf(
                "F16",
                16.0,
                F16,
                29_600 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-14B-GGUF",
                "DeepSeek-R1-Distill-Qwen-14B-f16.gguf",
            ),
        ],
    },
    Variant {
        id: "deepseek-r1:32b",
        hf_repo: "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        architecture: Architecture::Qwen2,
        layers: 64, // (source: config.json num_hidden_layers; fitmyllm.com: 64 layers)
        hidden_size: 5120, // (source: config.json hidden_size)
        attention: Attention::Gqa {
            heads: 40,     // (source: config.json num_attention_heads)
            kv_heads: 8,   // (source: config.json num_key_value_heads; fitmyllm.com: 8)
            head_dim: 128, // (fitmyllm.com: head dim 128)
        },
        vocab_size: 152_064,        // (source: config.json vocab_size)
        tied_embeddings: false,     // (source: config.json tie_word_embeddings)
        trained_context: 131_072,   // (source: config.json max_position_embeddings)
        parameters: 32_800_000_000, // (source: model page "32.8B params"; fitmyllm.com: 32.8B)
        active_parameters: 32_800_000_000,
        quality: 6,
        rule_of_thumb: Some(RuleOfThumb {
            cores: 16,
            ram_gb: 64,
            gpus: 1,
            vram_gb_per_gpu: 24,
        }),
        quantizations: &[
            // (source: Hugging Face listing of lmstudio-community/DeepSeek-R1-Distill-Qwen-32B-GGUF
            // Q4_K_M, 19.9 GB; Ollama deepseek-r1:32b, 20GB)
            gguf(
                "Q4_K_M",
                BPW_Q4_K_M,
                Q4_K_M,
                19_900 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-32B-GGUF",
                "DeepSeek-R1-Distill-Qwen-32B-Q4_K_M.gguf",
            ),
            // unverified (bartowski model card: 23.26 GB)
            gguf(
                "Q5_K_M",
                BPW_Q5_K_M,
                Q5_K_M,
                23_260 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-32B-GGUF",
                "DeepSeek-R1-Distill-Qwen-32B-Q5_K_M.gguf",
            ),
            // (source: Hugging Face listing of lmstudio-community's Q6_K, 26.9 GB)
            gguf(
                "Q6_K",
                BPW_Q6_K,
                Q6_K,
                26_900 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-32B-GGUF",
                "DeepSeek-R1-Distill-Qwen-32B-Q6_K.gguf",
            ),
            // (source: Hugging Face listing of bartowski's Q8_0, 34.8 GB)
            gguf(
                "Q8_0",
                BPW_Q8_0,
                Q8_0,
                34_800 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-32B-GGUF",
                "DeepSeek-R1-Distill-Qwen-32B-Q8_0.gguf",
            ),
            // derived: 32.8e9 parameters × 2 bytes
            gguf(
                "F16",
                16.0,
                F16,
                65_600 * MB,
                "bartowski/DeepSeek-R1-Distill-Qwen-32B-GGUF",
                "DeepSeek-R1-Distill-Qwen-32B-f16",
            ),
        ],
    },
    Variant {
        id: "deepseek-r1:70b",
        hf_repo: "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
        architecture: Architecture::Llama,
        layers: 80,        // (source: config.json num_hidden_layers)
        hidden_size: 8192, // (source: config.json hidden_size)
        attention: Attention::Gqa {
            heads: 64,     // (source: config.json num_attention_heads)
            kv_heads: 8,   // (source: config.json num_key_value_heads)
            head_dim: 128, // hidden_size / heads
        },
        vocab_size: 128_256,        // (source: config.json vocab_size)
        tied_embeddings: false,     // (source: config.json tie_word_embeddings)
        trained_context: 131_072,   // (source: config.json max_position_embeddings)
        parameters: 70_600_000_000, // (source: model page "70.6B params")
        active_parameters: 70_600_000_000,
        quality: 7,
        rule_of_thumb: Some(RuleOfThumb {
            cores: 32,
            ram_gb: 128,
            gpus: 2,
            vram_gb_per_gpu: 80,
        }),
        quantizations: &[
            Quantization {
                // (source: LFS pointer of bartowski's DeepSeek-R1-Distill-Llama-70B-Q4_K_M.gguf,
                // size 42520395936)
                sha256: Some("181a82a1d6d2fa24fe4db83a68eee030384986bdbdd4773ba76424e3a6eb9fd8"),
                ..gguf(
                    "Q4_K_M",
                    BPW_Q4_K_M,
                    Q4_K_M,
                    42_520_395_936,
                    "bartowski/DeepSeek-R1-Distill-Llama-70B-GGUF",
                    "DeepSeek-R1-Distill-Llama-70B-Q4_K_M.gguf",
                )
            },
            // (source: Hugging Face listing of mradermacher's Q5_K_M, 49.9 GB)
            gguf(
                "Q5_K_M",
                BPW_Q5_K_M,
                Q5_K_M,
                49_900 * MB,
                "bartowski/DeepSeek-R1-Distill-Llama-70B-GGUF",
                "DeepSeek-R1-Distill-Llama-70B-Q5_K_M",
            ),
            // (source: Hugging Face listing of mradermacher's Q6_K parts, 29 GB + 28.9 GB)
            gguf(
                "Q6_K",
                BPW_Q6_K,
                Q6_K,
                57_900 * MB,
                "bartowski/DeepSeek-R1-Distill-Llama-70B-GGUF",
                "DeepSeek-R1-Distill-Llama-70B-Q6_K",
            ),
            // unverified (bartowski model card: 74.98 GB)
            gguf(
                "Q8_0",
                BPW_Q8_0,
                Q8_0,
                74_980 * MB,
                "bartowski/DeepSeek-R1-Distill-Llama-70B-GGUF",
                "DeepSeek-R1-Distill-Llama-70B-Q8_0",
            ),
            // derived: 70.6e9 parameters × 2 bytes
            gguf(
                "F16",
                16.0,
                F16,
                141_200 * MB,
                "bartowski/DeepSeek-R1-Distill-Llama-70B-GGUF",
                "DeepSeek-R1-Distill-Llama-70B-f16",
            ),
        ],
    },
    Variant {
        id: "deepseek-r1:671b",
        hf_repo: "deepseek-ai/DeepSeek-R1",
        architecture: Architecture::DeepSeek2,
        layers: 61,        // (source: config.json num_hidden_layers)
        hidden_size: 7168, // (source: config.json hidden_size)
        attention: Attention::Mla {
            heads: 128,        // (source: config.json num_attention_heads)
            kv_lora_rank: 512, // (source: config.json kv_lora_rank)
            rope_dim: 64,      // (source: config.json qk_rope_head_dim)
        },
        vocab_size: 129_280,               // (source: config.json vocab_size)
        tied_embeddings: false,            // (source: config.json tie_word_embeddings)
        trained_context: 163_840,          // (source: config.json max_position_embeddings)
        parameters: 671_000_000_000, // (source: model card "671B total", without the 14B MTP module)
        active_parameters: 37_000_000_000, // (source: model card "37B activated")
        quality: 8,
        rule_of_thumb: Some(RuleOfThumb {
            cores: 64,
            ram_gb: 512,
            gpus: 8,
            vram_gb_per_gpu: 80,
        }),
        quantizations: &[
            // (source: Unsloth, "Run DeepSeek R1 Dynamic 1.58-bit", unsloth.ai/blog/deepseekr1-dynamic:
            // 1.58-bit IQ1_S 131GB, 1.73-bit IQ1_M 158GB, 2.22-bit IQ2_XXS 183GB, 2.51-bit Q2_K_XL 212GB)
            gguf(
                "UD-IQ1_S",
                1.58,
                IQ1_S,
                131 * GB,
                "unsloth/DeepSeek-R1-GGUF",
                "DeepSeek-R1-UD-IQ1_S",
            ),
            gguf(
                "UD-IQ1_M",
                1.73,
                IQ1_M,
                158 * GB,
                "unsloth/DeepSeek-R1-GGUF",
                "DeepSeek-R1-UD-IQ1_M",
            ),
            gguf(
                "UD-IQ2_XXS",
                2.22,
                IQ2_XXS,
                183 * GB,
                "unsloth/DeepSeek-R1-GGUF",
                "DeepSeek-R1-UD-IQ2_XXS",
            ),
            gguf(
                "UD-Q2_K_XL",
                2.51,
                Q2_K_XL,
                212 * GB,
                "unsloth/DeepSeek-R1-GGUF",
                "DeepSeek-R1-UD-Q2_K_XL",
            ),
            // (source: bartowski's table for deepseek-ai_DeepSeek-V3-0324-GGUF — the same
            // architecture and tensor shapes as R1, so the same sizes up to metadata: Q4_K_M
            // 404.43GB, Q5_K_M 475.40GB, Q6_K 550.80GB, Q8_0 713.29GB; Ollama deepseek-r1:671b
            // shows 404GB)
            gguf(
                "Q4_K_M",
                BPW_Q4_K_M,
                Q4_K_M,
                404_430 * MB,
                "unsloth/DeepSeek-R1-GGUF",
                "DeepSeek-R1-Q4_K_M",
            ),
            gguf(
                "Q5_K_M",
                BPW_Q5_K_M,
                Q5_K_M,
                475_400 * MB,
                "unsloth/DeepSeek-R1-GGUF",
                "DeepSeek-R1-Q5_K_M",
            ),
            gguf(
                "Q6_K",
                BPW_Q6_K,
                Q6_K,
                550_800 * MB,
                "unsloth/DeepSeek-R1-GGUF",
                "DeepSeek-R1-Q6_K",
            ),
            gguf(
                "Q8_0",
                BPW_Q8_0,
                Q8_0,
                713_290 * MB,
                "unsloth/DeepSeek-R1-GGUF",
                "DeepSeek-R1-Q8_0",
            ),
        ],
    },
    Variant {
        id: "deepseek-r1-0528:671b",
        hf_repo: "deepseek-ai/DeepSeek-R1-0528",
        architecture: Architecture::DeepSeek2,
        layers: 61,        // (source: config.json num_hidden_layers; same as DeepSeek-R1)
        hidden_size: 7168, // (source: config.json hidden_size)
        attention: Attention::Mla {
            heads: 128,        // (source: config.json num_attention_heads)
            kv_lora_rank: 512, // (source: config.json kv_lora_rank)
            rope_dim: 64,      // (source: config.json qk_rope_head_dim)
        },
        vocab_size: 129_280,               // (source: config.json vocab_size)
        tied_embeddings: false,            // (source: config.json tie_word_embeddings)
        trained_context: 163_840,          // (source: config.json max_position_embeddings)
        parameters: 671_000_000_000,       // (source: model card, as DeepSeek-R1)
        active_parameters: 37_000_000_000, // (source: model card, as DeepSeek-R1)
        quality: 9,
        rule_of_thumb: Some(RuleOfThumb {
            cores: 64,
            ram_gb: 512,
            gpus: 8,
            vram_gb_per_gpu: 80,
        }),
        // Unsloth's dynamic quants of R1-0528 have other sizes than those of R1 and could not be
        // verified here: they are left out rather than guessed.
        quantizations: &[
            // Same architecture and tensor shapes as R1 (see above): the same sizes.
            gguf(
                "Q4_K_M",
                BPW_Q4_K_M,
                Q4_K_M,
                404_430 * MB,
                "unsloth/DeepSeek-R1-0528-GGUF",
                "Q4_K_M",
            ),
            gguf(
                "Q5_K_M",
                BPW_Q5_K_M,
                Q5_K_M,
                475_400 * MB,
                "unsloth/DeepSeek-R1-0528-GGUF",
                "Q5_K_M",
            ),
            gguf(
                "Q6_K",
                BPW_Q6_K,
                Q6_K,
                550_800 * MB,
                "unsloth/DeepSeek-R1-0528-GGUF",
                "Q6_K",
            ),
            gguf(
                "Q8_0",
                BPW_Q8_0,
                Q8_0,
                713_290 * MB,
                "unsloth/DeepSeek-R1-0528-GGUF",
                "Q8_0",
            ),
        ],
    },
];

/// A variant by the name users type (`deepseek-r1:7b`); `deepseek-r1` alone is not a variant.
pub fn variant(id: &str) -> Option<&'static Variant> {
    VARIANTS.iter().find(|v| v.id.eq_ignore_ascii_case(id))
}

/// llama.cpp's default micro-batch (`n_ubatch`, tokens): the activation buffers are sized for it.
pub const MICRO_BATCH: u64 = 512;

/// Bytes per cached value: llama.cpp's default KV cache type is F16.
pub const KV_BYTES_PER_VALUE: u64 = 2;

/// Memory a quantized variant needs at a context length, split into its parts (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Token embedding (stays in RAM: llama.cpp looks rows up on the CPU).
    pub token_embedding: u64,
    /// Output head (absent when tied to the embedding).
    pub output: u64,
    /// One transformer block's weights.
    pub layer_weights: u64,
    /// One block's KV cache at the context length.
    pub layer_kv: u64,
    /// Compute (activation) buffer of the device that runs the graph.
    pub compute: u64,
    /// One block's weights that llama.cpp's CPU backend repacks into a second, anonymous copy
    /// when the block runs on a CPU with the repacking kernels (see [`cpu_repack_share`]); the
    /// mapped file stays mapped beside it, so both count.
    pub layer_repack: u64,
}

/// The share of a quantization's block weights that llama.cpp's CPU backend keeps a repacked
/// copy of ("extra buffer types" of ggml-cpu, `GGML_CPU_REPACK`, on by default: Q4_0, Q4_K and
/// IQ4_NL matrices are re-laid for the AVX2 / ARM i8mm kernels at load, in anonymous memory, while
/// the file stays mapped). For Q4_K_M, llama.cpp's quantize type rule makes 79–81 % of the block
/// bytes Q4_K in every R1 variant (measured on stand-ins built with that rule —
/// `scripts/make-r1-standins` — and the real 7B header); the rest is Q6_K, which is not repacked.
/// Measured with `bench/plan-accuracy`: the 7B Q4_K_M's process held 3.7 GB anonymous + 4.6 GB
/// of its mapped file after one answer.
pub fn cpu_repack_share(quantization: &str) -> f64 {
    match quantization {
        "Q4_K_M" => 0.80,
        "Q4_K_S" | "Q4_0" => 1.0,
        _ => 0.0,
    }
}

impl Footprint {
    /// Weights + KV cache + compute, all in one place.
    pub fn total(&self, layers: u32) -> u64 {
        self.token_embedding
            + self.output
            + layers as u64 * (self.layer_weights + self.layer_kv)
            + self.compute
    }
}

impl Variant {
    /// KV cache bytes per token over all layers, at llama.cpp's default F16 cache.
    pub fn kv_bytes_per_token(&self) -> u64 {
        self.layers as u64 * self.attention.kv_values_per_token_layer() * KV_BYTES_PER_VALUE
    }

    /// The memory math for `q` at `context` tokens.
    ///
    /// - Weights: the file size, split into token embedding and output head
    ///   (`vocab × hidden` parameters each, at the file's average bytes per parameter) and the
    ///   rest evenly over the blocks — exact for the dense distills up to the quantization mix;
    ///   for the MoE the first 3 dense blocks are lighter than the rest (an over-estimate for
    ///   them, an under-estimate for the others; fine for placing dozens of layers).
    /// - KV cache: `layers × kv values × 2 bytes × context` ([`Attention`]).
    /// - Compute buffer: llama.cpp's graph for one micro-batch of 512 tokens: F32 logits
    ///   (`vocab × 512 × 4`) plus activations, taken as `16 × hidden × 512 × 4`. For the 7B at
    ///   4096 tokens this gives 429 MB against the ≈ 300–350 MiB llama.cpp logs ("compute buffer
    ///   size") — an estimate on the safe side, not a measurement of each model.
    pub fn footprint(&self, q: &Quantization, context: u32) -> Footprint {
        let bytes_per_param = q.file_bytes as f64 / self.parameters as f64;
        let embedding_params = self.vocab_size as f64 * self.hidden_size as f64;
        let token_embedding = (embedding_params * bytes_per_param) as u64;
        let output = if self.tied_embeddings {
            0
        } else {
            token_embedding
        };
        let blocks = q.file_bytes.saturating_sub(token_embedding + output);
        Footprint {
            token_embedding,
            output,
            layer_weights: blocks / self.layers as u64,
            layer_kv: self.attention.kv_values_per_token_layer()
                * KV_BYTES_PER_VALUE
                * context as u64,
            compute: MICRO_BATCH * 4 * (self.vocab_size as u64 + 16 * self.hidden_size as u64),
            layer_repack: ((blocks / self.layers as u64) as f64 * cpu_repack_share(q.name)) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_consistent() {
        for v in VARIANTS {
            assert!(v.layers > 0 && v.hidden_size > 0, "{}", v.id);
            assert!(v.active_parameters <= v.parameters, "{}", v.id);
            assert!(!v.quantizations.is_empty(), "{}", v.id);
            if let Attention::Gqa {
                heads, kv_heads, ..
            } = v.attention
            {
                assert_eq!(
                    heads % kv_heads,
                    0,
                    "{}: query heads group over KV heads",
                    v.id
                );
            }
            // Quality rises with size within a variant and a format.
            let gguf: Vec<&Quantization> = v
                .quantizations
                .iter()
                .filter(|q| q.format == Format::Gguf)
                .collect();
            for pair in gguf.windows(2) {
                assert!(
                    pair[0].quality < pair[1].quality,
                    "{} {}",
                    v.id,
                    pair[1].name
                );
                assert!(
                    pair[0].file_bytes < pair[1].file_bytes,
                    "{} {}",
                    v.id,
                    pair[1].name
                );
            }
            // The file size implies a plausible bits-per-weight (the name's class ± slack).
            for q in v.quantizations {
                let bpw = q.file_bytes as f64 * 8.0 / v.parameters as f64;
                assert!(
                    (bpw - q.bits_per_weight as f64).abs() < 1.0,
                    "{} {}: {bpw:.2} bits per weight from the size",
                    v.id,
                    q.name
                );
            }
        }
        for pair in VARIANTS.windows(2) {
            assert!(pair[0].quality < pair[1].quality);
        }
        // Quantizations are listed lowest quality first, whatever their format.
        for v in VARIANTS {
            for pair in v.quantizations.windows(2) {
                assert!(
                    pair[0].quality < pair[1].quality,
                    "{} {}",
                    v.id,
                    pair[1].name
                );
            }
        }
    }

    #[test]
    fn kv_cache_per_token_matches_the_published_shapes() {
        // 7B: 28 layers × 2 × 4 KV heads × 128 × 2 bytes = 57,344 bytes/token (56 KiB).
        assert_eq!(
            variant("deepseek-r1:7b").unwrap().kv_bytes_per_token(),
            57_344
        );
        // 70B: 80 × 2 × 8 × 128 × 2 = 327,680 bytes/token (320 KiB).
        assert_eq!(
            variant("deepseek-r1:70b").unwrap().kv_bytes_per_token(),
            327_680
        );
        // 671B with MLA: 61 × (512 + 64) × 2 = 70,272 bytes/token — less than the 70B.
        assert_eq!(
            variant("deepseek-r1:671b").unwrap().kv_bytes_per_token(),
            70_272
        );
    }

    #[test]
    fn footprint_splits_the_file_and_adds_kv_and_compute() {
        let v = variant("deepseek-r1:7b").unwrap();
        let q = &v.quantizations[0];
        let f = v.footprint(q, 4096);
        assert_eq!(f.layer_kv * v.layers as u64, 57_344 * 4096);
        let weights = f.token_embedding + f.output + f.layer_weights * v.layers as u64;
        assert!(q.file_bytes - weights < v.layers as u64, "rounding only");
        assert_eq!(f.compute, 512 * 4 * (152_064 + 16 * 3584));
        assert_eq!(f.total(v.layers), weights + 57_344 * 4096 + f.compute);
    }

    #[test]
    fn names_resolve_case_insensitively() {
        assert_eq!(variant("DeepSeek-R1:14B").unwrap().layers, 48);
        assert!(variant("deepseek-r1").is_none());
    }
}
