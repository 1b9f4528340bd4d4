//! The CPU-variants build of the llama.cpp plugin (`libr1_plugin_llamacpp_cpu_variants.so` with
//! its `llamacpp-cpu-variants/` directory, made by `scripts/build-gpu-plugins cpu-variants`):
//! ggml's CPU backend in one module per x86 level, the best for this CPU loaded at run time.
//! Beside the CPU build, the host picks it by score where its variant goes beyond the CPU build's
//! AVX2, `/r1/backends` names the variant, SmolLM2 answers correctly through it, and the plugin
//! installed without its directory (or with one that is incomplete or belongs to another user) is
//! refused with a reason naming the problem while the CPU build serves.
//!
//! The plugin is not part of the default build: without it each test says why and passes,
//! unless `R1D_REQUIRE_CPU_VARIANTS=1` asks for a failure instead (`scripts/test` builds it and
//! sets that).

use std::path::{Path, PathBuf};

use r1d_client::wire::{BackendEntry, BackendList, State};
use r1d_tests::{bin_dir, binary, fixture, Daemon, DaemonOptions, SMOLLM2};

use crate::llama::{capital_of_france, ONE_MODEL_AT_A_TIME};

const PLUGIN: &str = "libr1_plugin_llamacpp_cpu_variants.so";
const MODULES: &str = "llamacpp-cpu-variants";

/// The built plugin, or `None` after saying why.
fn variants_plugin() -> Option<PathBuf> {
    let so = bin_dir().join(PLUGIN);
    if so.exists() && bin_dir().join(MODULES).is_dir() {
        return Some(so);
    }
    let why = format!(
        "{} (with {MODULES}/) is not built (scripts/build-gpu-plugins cpu-variants)",
        so.display()
    );
    if std::env::var("R1D_REQUIRE_CPU_VARIANTS").as_deref() == Ok("1") {
        panic!("{why} (R1D_REQUIRE_CPU_VARIANTS=1)");
    }
    eprintln!("\n!!!!! SKIPPED: {why} !!!!!\n");
    None
}

/// What of the plugin's directory [`both_plugins`] copies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Modules {
    All,
    /// llama.cpp's libraries, no `libggml-cpu-*.so`.
    LibrariesOnly,
    /// No directory.
    None,
    /// The libraries and one CPU module, `haswell`: the CPU build's own instruction sets, as on
    /// an AVX2 machine.
    HaswellOnly,
    /// Everything, one CPU module belonging to another user (uid 65534): refused, since its
    /// owner could replace it. Needs root to set up.
    ForeignModule,
}

/// A plugin directory with the CPU build and the CPU-variants build, with what `modules` says of
/// its directory.
fn both_plugins(so: &Path, modules: Modules) -> tempfile::TempDir {
    let dir = r1d_tests::plugin_dir(&["llamacpp"]);
    std::fs::copy(so, dir.path().join(PLUGIN)).unwrap();
    if modules != Modules::None {
        let to = dir.path().join(MODULES);
        std::fs::create_dir(&to).unwrap();
        for entry in std::fs::read_dir(bin_dir().join(MODULES)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if modules == Modules::LibrariesOnly && name.starts_with("libggml-cpu-") {
                continue;
            }
            if modules == Modules::HaswellOnly
                && name.starts_with("libggml-cpu-")
                && name != "libggml-cpu-haswell.so"
            {
                continue;
            }
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
            if modules == Modules::ForeignModule && name == "libggml-cpu-x64.so" {
                std::os::unix::fs::chown(to.join(&name), Some(65534), None).unwrap();
            }
        }
    }
    dir
}

/// This CPU's flags, from `/proc/cpuinfo`.
fn cpu_flags() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn entry<'a>(list: &'a BackendList, file: &str) -> &'a BackendEntry {
    list.backends
        .iter()
        .find(|b| b.path.ends_with(&format!("/{file}")))
        .unwrap_or_else(|| panic!("{file} not listed: {list:#?}"))
}

/// SmolLM2's greedy answer to [`capital_of_france`], 24 tokens at most.
async fn capital_of_france_answer(daemon: &Daemon) -> String {
    let answer = daemon.client().chat(&capital_of_france(24)).await.unwrap();
    answer.choices[0].message.content.clone()
}

/// r1d serving `model` with the plugins of `plugins`, once it is ready.
async fn ready(model: &Path, plugins: &Path) -> Daemon {
    let daemon = Daemon::start(DaemonOptions {
        model: Some(model),
        plugin_dir: Some(plugins),
        args: vec![
            "--context-length".into(),
            "1024".into(),
            "--parallel".into(),
            "1".into(),
        ],
        ..Default::default()
    });
    assert_eq!(
        daemon.settled().await.status,
        State::Ready,
        "{}",
        daemon.log()
    );
    daemon
}

#[tokio::test]
async fn the_best_cpu_variant_is_chosen_named_and_answers_and_a_missing_directory_is_refused() {
    let _one = ONE_MODEL_AT_A_TIME.lock().await;
    let Some(so) = variants_plugin() else {
        return;
    };
    let Some(model) = fixture(SMOLLM2) else {
        return;
    };
    let flags = cpu_flags();
    let has = |f: &str| flags.iter().any(|x| x == f);

    // Both builds: the variants plugin names the module ggml chose, one of the directory's.
    let plugins = both_plugins(&so, Modules::All);
    let daemon = ready(&model, plugins.path()).await;
    let list = daemon.backends().await;
    let variants = entry(&list, PLUGIN);
    let cpu = entry(&list, "libr1_plugin_llamacpp.so");
    assert!(variants.available && cpu.available, "{list:#?}");
    assert_eq!(cpu.score, 100, "{cpu:?}");
    // Its CPU device names the variant: "CPU (zen4 variant)".
    let variant = variants
        .devices
        .iter()
        .find_map(|d| d.strip_prefix("CPU (")?.strip_suffix(" variant)"))
        .unwrap_or_else(|| panic!("no variant named in {variants:?}"));
    let module = plugins
        .path()
        .join(MODULES)
        .join(format!("libggml-cpu-{variant}.so"));
    assert!(module.is_file(), "{variant} is not a module of {MODULES}");
    // The log says why, with the variant's instruction sets and its file.
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("ggml CPU variant {variant} chosen")))
        .unwrap_or_else(|| panic!("the log does not name the variant:\n{log}"));
    // Where the CPU has AVX-512 the chosen variant has it, goes beyond the CPU build and wins;
    // on an AVX2-only CPU without AVX-VNNI it is the CPU build's own level and the CPU build wins.
    if has("avx512f") {
        assert!(line.contains("AVX512"), "{line}");
        assert_eq!(variants.score, 105, "{variants:?}");
    } else if has("avx2") && !has("avx_vnni") {
        assert_eq!(variant, "haswell", "{line}");
        assert_eq!(variants.score, 95, "{variants:?}");
    }
    // `r1d hardware` lists the plugins with what they make of this machine: the variant too.
    let out = std::process::Command::new(binary("r1d"))
        .arg("--plugin-dir")
        .arg(plugins.path())
        .arg("hardware")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines().any(
            |l| l.contains(&format!("{PLUGIN}: score {}", variants.score))
                && l.contains(&format!("CPU ({variant} variant)"))
        ),
        "{text}"
    );
    let serving_variants = variants.score > cpu.score;
    // `/r1/status` names the file that serves: both files are the backend `llamacpp`.
    let status = daemon.client().status().await.unwrap();
    let resident = status.model.unwrap();
    assert_eq!(resident.backend, "llamacpp");
    let serving = if variants.score > cpu.score {
        PLUGIN
    } else {
        "libr1_plugin_llamacpp.so"
    };
    assert_eq!(
        resident.backend_file.as_deref(),
        Some(plugins.path().join(serving).to_str().unwrap()),
        "{resident:?}"
    );
    // The chosen variant is information, not a warning.
    assert!(
        line.contains(" INFO "),
        "the variant is logged at another level: {line}"
    );
    let answer = capital_of_france_answer(&daemon).await;
    assert!(answer.contains("Paris"), "{answer}");
    drop(daemon);

    // The CPU build alone answers the same question the same way (the variant's kernels may round
    // differently; on this short greedy answer they agree).
    let cpu_only = r1d_tests::plugin_dir(&["llamacpp"]);
    let daemon = ready(&model, cpu_only.path()).await;
    let reference = capital_of_france_answer(&daemon).await;
    drop(daemon);
    assert_eq!(
        answer,
        reference,
        "the {} answered otherwise than the CPU build",
        if serving_variants {
            format!("{variant} variant")
        } else {
            "CPU build (the variant did not serve)".to_owned()
        }
    );

    // With only the CPU build's own level to choose from (what an AVX2 machine gets), the
    // variants build says so, scores below the CPU build, and the CPU build serves.
    let haswell = both_plugins(&so, Modules::HaswellOnly);
    let daemon = ready(&model, haswell.path()).await;
    let list = daemon.backends().await;
    let variants = entry(&list, PLUGIN);
    assert!(variants.available, "{variants:?}");
    assert_eq!(variants.score, 95, "{variants:?}");
    assert!(
        variants
            .devices
            .iter()
            .any(|d| d == "CPU (haswell variant)"),
        "{variants:?}"
    );
    let resident = daemon.client().status().await.unwrap().model.unwrap();
    assert_eq!(
        resident.backend_file.as_deref(),
        Some(
            haswell
                .path()
                .join("libr1_plugin_llamacpp.so")
                .to_str()
                .unwrap()
        )
    );
    drop(daemon);

    // Installed without its directory, the plugin cannot be opened (the loader names the library
    // it lacks); with llama.cpp's libraries but no CPU module, it says the directory holds none.
    // Either way it is refused and the CPU build serves.
    let libraries: Vec<String> = std::fs::read_dir(bin_dir().join(MODULES))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".so.0"))
        .collect();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let broken_installs = if root {
        vec![
            Modules::None,
            Modules::LibrariesOnly,
            Modules::ForeignModule,
        ]
    } else {
        eprintln!("!!!!! SKIPPED the foreign-owner case: changing a file's owner needs root !!!!!");
        vec![Modules::None, Modules::LibrariesOnly]
    };
    for modules in broken_installs {
        let broken = both_plugins(&so, modules);
        let daemon = ready(&model, broken.path()).await;
        let list = daemon.backends().await;
        let variants = entry(&list, PLUGIN);
        assert!(!variants.available, "{variants:?}");
        let why = variants.error.as_deref().unwrap_or_default();
        let named = match modules {
            // The loader names a library of the directory it did not find.
            Modules::None => libraries
                .iter()
                .any(|l| why.contains(&format!("{l}: cannot open"))),
            Modules::ForeignModule => {
                why.contains("libggml-cpu-x64.so") && why.contains("belongs to uid 65534")
            }
            _ => why.contains(MODULES) && why.contains("libggml-cpu-"),
        };
        assert!(named, "{modules:?}: {why}");
        let answer = capital_of_france_answer(&daemon).await;
        assert!(answer.contains("Paris"), "{answer}");
    }
}
