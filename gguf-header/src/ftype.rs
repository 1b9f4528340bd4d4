//! GGUF `general.file_type` numbers as quantization names.

/// Bit llama.cpp sets on a file type it guessed from the tensor types (`LLAMA_FTYPE_GUESSED`).
const FTYPE_GUESSED: u32 = 1024;

/// The name of a `general.file_type` value, per llama.h's `enum llama_ftype` (llama.cpp as vendored
/// by llama-cpp-sys-2 0.1.161), in the spelling used in GGUF file names: `3` → `"Q4_1"`,
/// `15` → `"Q4_K_M"`. `None` for numbers llama.h does not define (including removed ones).
pub fn name(file_type: u32) -> Option<&'static str> {
    Some(match file_type & !FTYPE_GUESSED {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        39 => "NVFP4",
        40 => "Q1_0",
        41 => "Q2_0",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::name;

    #[test]
    fn names_follow_llama_h() {
        let table = [
            (0, Some("F32")),
            (1, Some("F16")),
            (3, Some("Q4_1")),
            (7, Some("Q8_0")),
            (15, Some("Q4_K_M")),
            (17, Some("Q5_K_M")),
            (32, Some("BF16")),
            (15 | 1024, Some("Q4_K_M")),
            (4, None),
            (33, None),
            (9999, None),
        ];
        for (number, expected) in table {
            assert_eq!(name(number), expected, "file_type {number}");
        }
    }
}
