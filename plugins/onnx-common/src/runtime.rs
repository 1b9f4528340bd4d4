//! Finding and loading the ONNX Runtime shared library, once per process.
//!
//! `ort` is built with `load-dynamic`: nothing of ONNX Runtime is linked at build time, and the
//! library is opened here, at the first probe or load. Search order:
//! 1. an explicit path (`LoadParams.extra.onnxruntime_library`; it only counts when nothing was
//!    loaded yet in this process, which in r1d means never: the host probes first);
//! 2. [`LIBRARY_ENV`] (`R1D_ONNXRUNTIME_LIB`), r1d's own setting;
//! 3. `ORT_DYLIB_PATH`, the variable `ort` itself reads;
//! 4. the system library paths: `libonnxruntime.so` and `libonnxruntime.so.1` through the dynamic
//!    loader (`LD_LIBRARY_PATH`, `ld.so.cache`), then `libonnxruntime.so*` in the usual library
//!    directories.
//!
//! The first library that loads wins for the life of the process (ONNX Runtime cannot be
//! unloaded). When none does, [`runtime`] says what was tried and why each failed.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// Environment variable naming the ONNX Runtime library r1d's ONNX plugins load
/// (a path to `libonnxruntime.so*`).
pub const LIBRARY_ENV: &str = "R1D_ONNXRUNTIME_LIB";

/// The oldest ONNX Runtime this build accepts, as `1.MINOR` (the C API version `ort` is built
/// for; newer libraries serve older API versions).
pub const MIN_MINOR_VERSION: u32 = ort::MINOR_VERSION;

/// Directories searched for `libonnxruntime.so*` after the dynamic loader's own search.
const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/opt/onnxruntime/lib",
];

/// The loaded ONNX Runtime.
pub struct Runtime {
    /// The `ort` environment every session of this process is created in.
    pub environment: Environment,
    /// The library file as it was opened (a bare name when the dynamic loader found it).
    pub library: PathBuf,
    /// Where the library came from: `"LoadParams.extra.onnxruntime_library"`,
    /// `"R1D_ONNXRUNTIME_LIB"`, `"ORT_DYLIB_PATH"` or `"system library path"`.
    pub source: &'static str,
    /// ONNX Runtime's version string, e.g. `"1.32.0"`.
    pub version: String,
    /// The execution providers this build of ONNX Runtime was compiled with, e.g.
    /// `["CPUExecutionProvider"]`, `["TensorrtExecutionProvider", "CUDAExecutionProvider", …]`.
    /// Compiled in does not mean usable: the CUDA one still needs the driver and CUDA libraries.
    pub providers: Vec<String>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("source", &self.source)
            .field("version", &self.version)
            .field("providers", &self.providers)
            .finish()
    }
}

/// A library candidate: the path (or bare name) and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// File path or bare library name.
    pub path: PathBuf,
    /// Where it came from (see [`Runtime::source`]).
    pub source: &'static str,
}

/// The libraries to try, in order (see the module docs). `explicit` is the load parameter.
pub fn candidates(explicit: Option<&Path>) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(path) = explicit {
        out.push(Candidate {
            path: path.to_owned(),
            source: "LoadParams.extra.onnxruntime_library",
        });
    }
    for var in [LIBRARY_ENV, "ORT_DYLIB_PATH"] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            out.push(Candidate {
                path: PathBuf::from(value),
                source: if var == LIBRARY_ENV {
                    LIBRARY_ENV
                } else {
                    "ORT_DYLIB_PATH"
                },
            });
        }
    }
    for name in ["libonnxruntime.so", "libonnxruntime.so.1"] {
        out.push(Candidate {
            path: PathBuf::from(name),
            source: "system library path",
        });
    }
    for dir in LIBRARY_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so"))
            })
            .collect();
        found.sort();
        out.extend(found.into_iter().rev().map(|path| Candidate {
            path,
            source: "system library path",
        }));
    }
    out
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The process's ONNX Runtime, loading it on the first call (see the module docs for the search).
///
/// # Errors
/// A message for the user when no candidate loads: which were tried and why each failed (not
/// found, not ONNX Runtime, older than 1.[`MIN_MINOR_VERSION`]), and how to point r1d at one.
/// The outcome of the first call is kept: later calls return the same library or the same error.
pub fn runtime(explicit: Option<&Path>) -> Result<&'static Runtime, String> {
    let result = RUNTIME.get_or_init(|| load(&candidates(explicit)));
    if let (Ok(runtime), Some(path)) = (result, explicit) {
        if runtime.library != path {
            tracing::warn!(
                "ONNX Runtime {} is already loaded from {}; the requested {} is not used",
                runtime.version,
                runtime.library.display(),
                path.display()
            );
        }
    }
    result.as_ref().map_err(Clone::clone)
}

fn load(candidates: &[Candidate]) -> Result<Runtime, String> {
    let mut failures = Vec::new();
    let mut missing_system = true;
    for candidate in candidates {
        match try_load(candidate) {
            Ok(runtime) => {
                tracing::info!(
                    "loaded ONNX Runtime {} from {} ({})",
                    runtime.version,
                    runtime.library.display(),
                    runtime.source
                );
                return Ok(runtime);
            }
            Err(e) => {
                let system = candidate.source == "system library path";
                // A bare name the loader cannot find is the normal "not installed" case; say it
                // once rather than per name.
                if system && !candidate.path.is_absolute() && e.not_found {
                    continue;
                }
                if system {
                    missing_system = false;
                }
                failures.push(format!(
                    "{} ({}): {}",
                    candidate.path.display(),
                    candidate.source,
                    e.message
                ));
            }
        }
    }
    let mut reason = String::from("no usable ONNX Runtime library: ");
    if failures.is_empty() {
        reason.push_str(&format!(
            "{LIBRARY_ENV} and ORT_DYLIB_PATH are not set and libonnxruntime.so is not in the \
             system library paths"
        ));
    } else {
        reason.push_str(&failures.join("; "));
        if missing_system {
            reason.push_str("; libonnxruntime.so is not in the system library paths");
        }
    }
    reason.push_str(&format!(
        "; install ONNX Runtime 1.{MIN_MINOR_VERSION} or newer (e.g. the libonnxruntime.so.* in \
         the PyPI onnxruntime wheel's onnxruntime/capi/) and set {LIBRARY_ENV} to its path"
    ));
    Err(reason)
}

struct LoadFailure {
    message: String,
    not_found: bool,
}

fn try_load(candidate: &Candidate) -> Result<Runtime, LoadFailure> {
    let fail = |message: String| LoadFailure {
        message,
        not_found: false,
    };
    if candidate.path.is_absolute() && !candidate.path.exists() {
        return Err(LoadFailure {
            message: "no such file".into(),
            not_found: true,
        });
    }
    // Read the version ourselves first: a library that is not ONNX Runtime, or too old, gets a
    // plain message instead of whatever `ort` would make of it.
    let version = library_version(&candidate.path)?;
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if minor < MIN_MINOR_VERSION {
        return Err(fail(format!(
            "ONNX Runtime {version} is too old; 1.{MIN_MINOR_VERSION} or newer is needed"
        )));
    }
    let builder = ort::init_from(&candidate.path).map_err(|e| fail(e.to_string()))?;
    let environment = builder.with_name("r1d").build().map_err(|e| {
        fail(format!(
            "failed to create the ONNX Runtime environment: {e}"
        ))
    })?;
    Ok(Runtime {
        environment,
        library: candidate.path.clone(),
        source: candidate.source,
        version,
        providers: available_providers(),
    })
}

/// What the dynamic loader said about `e`: libloading's own message is "dlopen failed", the
/// loader's words (`libcudnn.so.9: cannot open shared object file: …`) are its source.
pub fn loader_words(e: &libloading::Error) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string())
}

/// Opens `path` and asks it for its version through `OrtGetApiBase`.
fn library_version(path: &Path) -> Result<String, LoadFailure> {
    // SAFETY: opening a shared library runs its initialisers. The candidates are ONNX Runtime
    // libraries the administrator named or installed in a system directory; loading them is the
    // purpose of this plugin.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| {
        let message = loader_words(&e);
        LoadFailure {
            not_found: message.contains("No such file") || message.contains("cannot open"),
            message,
        }
    })?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime (onnxruntime_c_api.h).
    let get_api_base =
        unsafe { library.get::<GetApiBase>(b"OrtGetApiBase\0") }.map_err(|_| LoadFailure {
            message: "not an ONNX Runtime library (no OrtGetApiBase symbol)".into(),
            not_found: false,
        })?;
    // SAFETY: `OrtGetApiBase` returns a pointer to a static struct, or NULL (checked).
    let base = unsafe { get_api_base() };
    if base.is_null() {
        return Err(LoadFailure {
            message: "OrtGetApiBase returned NULL".into(),
            not_found: false,
        });
    }
    // SAFETY: `base` is non-null and static; `GetVersionString` returns a static NUL-terminated
    // string.
    let version = unsafe { CStr::from_ptr(((*base).GetVersionString)()) };
    // The library stays loaded: `ort` opens it again (same handle, reference counted) and keeps
    // it; dropping ours only lowers the count.
    Ok(version.to_string_lossy().into_owned())
}

/// The execution providers compiled into the loaded library (`GetAvailableProviders`), found by
/// asking `ort` about each it knows. Unknown names are not listed.
fn available_providers() -> Vec<String> {
    use ort::ep::ExecutionProvider;
    let mut out = Vec::new();
    let mut check = |name: &str, available: ort::Result<bool>| {
        if available.unwrap_or(false) {
            out.push(name.to_owned());
        }
    };
    #[cfg(feature = "tensorrt")]
    check(
        ort::ep::TensorRT::NAME,
        <ort::ep::TensorRT as ExecutionProvider>::is_available(),
    );
    #[cfg(feature = "cuda")]
    check(
        ort::ep::CUDA::NAME,
        <ort::ep::CUDA as ExecutionProvider>::is_available(),
    );
    check(
        ort::ep::CPU::NAME,
        <ort::ep::CPU as ExecutionProvider>::is_available(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_that_is_not_there_is_said_in_the_loaders_words() {
        let Err(e) = library_version(Path::new("/nonexistent/libonnxruntime.so.1")) else {
            panic!("a missing file loaded");
        };
        assert!(e.not_found, "{}", e.message);
        assert!(e.message.contains("No such file"), "{}", e.message);
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("libonnxruntime.so");
        std::fs::write(&garbage, b"not an ELF file").unwrap();
        let Err(e) = library_version(&garbage) else {
            panic!("a text file loaded");
        };
        assert!(!e.not_found, "{}", e.message);
        assert!(
            e.message.contains("invalid ELF header") || e.message.contains("file too short"),
            "{}",
            e.message
        );
    }

    #[test]
    fn explicit_path_comes_first_then_system_names() {
        let c = candidates(Some(Path::new("/opt/x/libonnxruntime.so.1.30.0")));
        assert_eq!(c[0].path, Path::new("/opt/x/libonnxruntime.so.1.30.0"));
        assert_eq!(c[0].source, "LoadParams.extra.onnxruntime_library");
        assert!(
            c.iter()
                .any(|c| c.path == Path::new("libonnxruntime.so")
                    && c.source == "system library path")
        );
    }

    #[test]
    fn a_missing_file_is_named_in_the_reason() {
        let err = load(&[Candidate {
            path: PathBuf::from("/nonexistent/libonnxruntime.so"),
            source: LIBRARY_ENV,
        }])
        .unwrap_err();
        assert!(
            err.contains("/nonexistent/libonnxruntime.so (R1D_ONNXRUNTIME_LIB): no such file"),
            "{err}"
        );
        assert!(err.contains("set R1D_ONNXRUNTIME_LIB"), "{err}");
    }

    #[test]
    fn a_library_that_is_not_onnx_runtime_is_refused_by_name() {
        // libc is on every Linux machine and has no OrtGetApiBase.
        let err = load(&[Candidate {
            path: PathBuf::from("libc.so.6"),
            source: LIBRARY_ENV,
        }])
        .unwrap_err();
        assert!(err.contains("not an ONNX Runtime library"), "{err}");
    }
}
