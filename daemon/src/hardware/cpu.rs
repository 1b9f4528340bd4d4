//! CPU: model, physical cores, threads and features from `/proc/cpuinfo`.
//!
//! x86 lists `flags` per processor; ARM lists `Features` (`asimd` is NEON). Physical cores are
//! the distinct (`physical id`, `core id`) pairs; kernels that give neither (most ARM, some VMs)
//! count every processor as a core.

use std::collections::BTreeSet;

use super::{read_required, Cpu, HardwareError, Probe};

/// Kernel flag names → the feature names r1d reports (llama.cpp's spelling).
const FEATURES: &[(&str, &str)] = &[
    ("avx", "avx"),
    ("avx2", "avx2"),
    ("fma", "fma"),
    ("f16c", "f16c"),
    ("avx512f", "avx512f"),
    ("avx512_vnni", "avx512_vnni"),
    ("avx512_bf16", "avx512_bf16"),
    ("avx_vnni", "avx_vnni"),
    ("amx_tile", "amx_tile"),
    ("amx_int8", "amx_int8"),
    ("amx_bf16", "amx_bf16"),
    ("asimd", "neon"),
    ("asimddp", "dotprod"),
    ("i8mm", "i8mm"),
    ("sve", "sve"),
];

/// Reads `<root>/proc/cpuinfo`.
///
/// # Errors
/// When the file cannot be read or lists no processor.
pub fn probe(probe: &Probe) -> Result<Cpu, HardwareError> {
    let path = probe.path("/proc/cpuinfo");
    let text = read_required(&path)?;
    parse(&text).ok_or_else(|| HardwareError::Parse {
        path,
        message: "no `processor` entry".into(),
    })
}

/// Parses the text of `/proc/cpuinfo`; `None` when it lists no processor.
pub fn parse(text: &str) -> Option<Cpu> {
    let mut threads = 0u32;
    let mut model = None;
    let mut cores = BTreeSet::new();
    let mut flags = BTreeSet::new();
    let (mut physical_id, mut core_id) = (None, None);
    for line in text.lines().chain(std::iter::once("")) {
        let Some((key, value)) = line.split_once(':') else {
            // A blank line ends one processor's block.
            if let (Some(p), Some(c)) = (physical_id.take(), core_id.take()) {
                cores.insert((p, c));
            }
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => threads += 1,
            "model name" | "Model" if model.is_none() && !value.is_empty() => {
                model = Some(value.to_owned())
            }
            "physical id" => physical_id = Some(value.to_owned()),
            "core id" => core_id = Some(value.to_owned()),
            "flags" | "Features" => flags.extend(value.split_whitespace().map(str::to_owned)),
            _ => {}
        }
    }
    if threads == 0 {
        return None;
    }
    let features = FEATURES
        .iter()
        .filter(|(flag, _)| flags.contains(*flag))
        .map(|(_, name)| (*name).to_owned())
        .collect();
    let cores = if cores.is_empty() {
        threads
    } else {
        cores.len() as u32
    };
    Some(Cpu {
        model,
        cores,
        threads,
        features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smt_x86_counts_physical_cores_and_maps_flags() {
        let block = |proc: u32, core: u32| {
            format!(
                "processor\t: {proc}\nmodel name\t: Intel(R) Xeon(R) Gold 6430\nphysical id\t: 0\ncore id\t\t: {core}\nflags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512_bf16 amx_tile amx_int8\n\n"
            )
        };
        let text: String = (0..4).map(|i| block(i, i % 2)).collect();
        let cpu = parse(&text).unwrap();
        assert_eq!(cpu.model.as_deref(), Some("Intel(R) Xeon(R) Gold 6430"));
        assert_eq!((cpu.cores, cpu.threads), (2, 4));
        assert_eq!(
            cpu.features,
            [
                "avx",
                "avx2",
                "fma",
                "f16c",
                "avx512f",
                "avx512_bf16",
                "amx_tile",
                "amx_int8"
            ]
        );
    }

    #[test]
    fn arm_without_core_ids_counts_processors_and_finds_neon() {
        let text = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n\nprocessor\t: 1\nFeatures\t: fp asimd asimddp i8mm\n";
        let cpu = parse(text).unwrap();
        assert_eq!(cpu.model, None);
        assert_eq!((cpu.cores, cpu.threads), (2, 2));
        assert_eq!(cpu.features, ["neon", "dotprod", "i8mm"]);
    }

    #[test]
    fn empty_cpuinfo_is_none() {
        assert_eq!(parse(""), None);
    }
}
