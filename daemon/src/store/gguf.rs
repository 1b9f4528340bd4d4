//! Identifies a GGUF file from its own metadata and matches it to a catalog variant.
//!
//! A file is a DeepSeek-R1 variant when its name (`general.basename`, `general.name`, or the file
//! name) says DeepSeek-R1 **and** its shape agrees with the catalog: the architecture, the number
//! of blocks and the hidden size. A name alone is not enough (a fine-tune could borrow it), and a
//! shape alone is not either (Qwen2.5-7B has R1-7B's shape). The quantization comes from the file
//! name when it names one of the variant's catalog quantizations (`UD-IQ1_S` has no file type of
//! its own), else from `general.file_type`.

use gguf_header::Header;

use crate::catalog::{Quantization, Variant, VARIANTS};

/// What a GGUF file says it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `general.name`.
    pub name: Option<String>,
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// `general.basename`.
    pub basename: Option<String>,
    /// `general.size_label` (`7B`).
    pub size_label: Option<String>,
    /// Quantization: the catalog's name when matched, else `general.file_type`'s.
    pub quantization: Option<String>,
    /// Parameters (elements of all tensors).
    pub parameters: u64,
    /// The catalog variant, when the file is one.
    pub variant: Option<&'static Variant>,
    /// The catalog quantization of that variant, when it is one of them.
    pub catalog_quantization: Option<&'static Quantization>,
    /// Why a file that names DeepSeek-R1 was not matched to a variant.
    pub mismatch: Option<String>,
}

/// Lowercase, with spaces, underscores and dots as dashes: `DeepSeek R1 Distill` →
/// `deepseek-r1-distill`.
fn normalize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' ' | '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Identifies `header`, read from a file named `file_name`.
pub fn identify(header: &Header, file_name: &str) -> Identity {
    let name = header.str("general.name").map(str::to_owned);
    let basename = header.str("general.basename").map(str::to_owned);
    let architecture = header.architecture().map(str::to_owned);
    let labels: Vec<String> = [name.as_deref(), basename.as_deref(), Some(file_name)]
        .into_iter()
        .flatten()
        .map(normalize)
        .collect();
    let says_r1 = labels.iter().any(|l| l.contains("deepseek-r1"));
    let says_0528 = labels.iter().any(|l| l.contains("0528"));
    let blocks = header.arch_uint("block_count");
    let hidden = header.arch_uint("embedding_length");

    let mut mismatch = None;
    let variant = if says_r1 {
        let shaped: Vec<&'static Variant> = VARIANTS
            .iter()
            .filter(|v| {
                Some(v.architecture.name()) == architecture.as_deref()
                    && Some(v.layers as u64) == blocks
                    && Some(v.hidden_size as u64) == hidden
            })
            .collect();
        let found = shaped
            .iter()
            .find(|v| v.id.contains("0528") == says_0528)
            .or(shaped.first())
            .copied();
        if found.is_none() {
            mismatch = Some(format!(
                "named DeepSeek-R1, but its shape ({} with {} blocks, hidden size {}) matches no \
                 catalog variant",
                architecture.as_deref().unwrap_or("unknown architecture"),
                blocks.map_or("?".into(), |b| b.to_string()),
                hidden.map_or("?".into(), |h| h.to_string()),
            ));
        }
        found
    } else {
        None
    };

    let file_type = header.file_type_name();
    let catalog_quantization = variant.and_then(|v| {
        let file = normalize(file_name);
        let mut by_name: Vec<&'static Quantization> = v
            .quantizations
            .iter()
            .filter(|q| file.contains(&normalize(q.name)))
            .collect();
        // `Q4_K_M` before `Q4_K`, `UD-IQ1_S` before `IQ1_S`.
        by_name.sort_by_key(|q| std::cmp::Reverse(q.name.len()));
        by_name.first().copied().or_else(|| {
            v.quantizations.iter().find(|q| {
                Some(q.name).is_some_and(|n| file_type.is_some_and(|f| f.eq_ignore_ascii_case(n)))
            })
        })
    });
    Identity {
        quantization: catalog_quantization
            .map(|q| q.name.to_owned())
            .or_else(|| file_type.map(str::to_owned)),
        name,
        architecture,
        basename,
        size_label: header.str("general.size_label").map(str::to_owned),
        parameters: header.parameter_count(),
        variant,
        catalog_quantization,
        mismatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gguf_header::write::{gguf, Meta};

    fn header(meta: &[(&str, Meta<'_>)]) -> Header {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, gguf(meta, &[("t", &[32], 0)], 128)).unwrap();
        gguf_header::read(&path).unwrap()
    }

    fn r1_like(arch: &str, name: &str, blocks: u32, hidden: u32, file_type: u32) -> Header {
        header(&[
            ("general.architecture", Meta::Str(arch)),
            ("general.name", Meta::Str(name)),
            (&format!("{arch}.block_count"), Meta::U32(blocks)),
            (&format!("{arch}.embedding_length"), Meta::U32(hidden)),
            ("general.file_type", Meta::U32(file_type)),
        ])
    }

    #[test]
    fn variants_are_matched_by_name_and_shape() {
        let table = [
            // (arch, general.name, blocks, hidden, file_type, file name, variant, quantization)
            (
                "qwen2",
                "DeepSeek R1 Distill Qwen 7B",
                28,
                3584,
                15,
                "x.gguf",
                Some("deepseek-r1:7b"),
                Some("Q4_K_M"),
            ),
            (
                "qwen2",
                "DeepSeek R1 Distill Qwen 1.5B",
                28,
                1536,
                7,
                "x.gguf",
                Some("deepseek-r1:1.5b"),
                Some("Q8_0"),
            ),
            (
                "llama",
                "DeepSeek-R1-Distill-Llama-8B",
                32,
                4096,
                17,
                "x.gguf",
                Some("deepseek-r1:8b"),
                Some("Q5_K_M"),
            ),
            (
                "qwen3",
                "DeepSeek R1 0528 Qwen3 8B",
                36,
                4096,
                15,
                "x.gguf",
                Some("deepseek-r1-0528:8b"),
                Some("Q4_K_M"),
            ),
            // The name says R1 but the shape is another model's.
            (
                "qwen2",
                "DeepSeek R1 Distill Qwen 7B",
                24,
                896,
                15,
                "x.gguf",
                None,
                Some("Q4_K_M"),
            ),
            // R1's shape without R1's name: Qwen2.5-7B is not R1.
            (
                "qwen2",
                "Qwen2.5 7B Instruct",
                28,
                3584,
                15,
                "x.gguf",
                None,
                Some("Q4_K_M"),
            ),
            // The file name names the quantization when the header's file type is another.
            (
                "qwen2",
                "DeepSeek R1 Distill Qwen 7B",
                28,
                3584,
                1,
                "DeepSeek-R1-Distill-Qwen-7B-Q6_K.gguf",
                Some("deepseek-r1:7b"),
                Some("Q6_K"),
            ),
        ];
        for (arch, name, blocks, hidden, ft, file, variant, quant) in table {
            let id = identify(&r1_like(arch, name, blocks, hidden, ft), file);
            assert_eq!(id.variant.map(|v| v.id), variant, "{name} {blocks}");
            assert_eq!(id.quantization.as_deref(), quant, "{name} {file}");
            assert_eq!(
                id.mismatch.is_some(),
                variant.is_none() && name.starts_with("DeepSeek"),
                "{name}"
            );
        }
    }

    #[test]
    fn the_671b_releases_are_told_apart_by_0528() {
        let v = identify(
            &r1_like("deepseek2", "DeepSeek R1", 61, 7168, 15),
            "DeepSeek-R1-Q4_K_M.gguf",
        );
        let w = identify(
            &r1_like("deepseek2", "DeepSeek R1 0528", 61, 7168, 15),
            "x.gguf",
        );
        assert_eq!(v.variant.map(|v| v.id), Some("deepseek-r1:671b"));
        assert_eq!(w.variant.map(|v| v.id), Some("deepseek-r1-0528:671b"));
    }
}
