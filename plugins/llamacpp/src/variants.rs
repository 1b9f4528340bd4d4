//! ggml's CPU backend in its run-time-selected variants (feature `dynamic-backends`).
//!
//! Built with `dynamic-backends`, llama.cpp is shared libraries (`libllama.so.0`,
//! `libggml.so.0`, `libggml-base.so.0`) and its backends are modules loaded at run time: one
//! `libggml-cpu-VARIANT.so` per x86 level (`GGML_CPU_ALL_VARIANTS`: x64, sse42, sandybridge,
//! ivybridge, piledriver, haswell, skylakex, cannonlake, cascadelake, icelake, cooperlake, zen4,
//! alderlake, sapphirerapids; the list is ggml's, `ggml/src/CMakeLists.txt`) and
//! `libggml-rpc.so`. Each CPU module scores itself against the CPU it runs on (ggml's
//! `ggml_backend_score`: 0 when the CPU lacks an instruction the module was compiled with) and
//! ggml loads the best one (`ggml_backend_load_all_from_path`). So one package runs the
//! AVX-512 code on a Zen 4 and still starts on a CPU without AVX2.
//!
//! `scripts/build-gpu-plugins cpu-variants` installs the plugin as
//! `libr1_plugin_llamacpp_cpu_variants.so` with those libraries in [`MODULES_DIR`] beside it (the
//! plugin's run path, set in `build.rs`, is `$ORIGIN/` that directory).

use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};

use llama_cpp_sys_2 as sys;

/// The directory beside the plugin file that holds llama.cpp's shared libraries and ggml's
/// backend modules.
pub const MODULES_DIR: &str = "llamacpp-cpu-variants";

/// The CPU variant ggml chose for this CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The variant's name, from its module's file name (`libggml-cpu-zen4.so` → `zen4`).
    pub variant: String,
    /// The module file.
    pub path: PathBuf,
    /// The instruction-set features the module was compiled for, as ggml names them
    /// (`AVX2`, `AVX512`, `AVX512_VNNI` …; `ggml_backend_get_features` of the CPU backend).
    pub features: Vec<String>,
    /// How many `libggml-cpu-*.so` files there were to choose from (ggml skips one it cannot
    /// open, logging it at debug level).
    pub candidates: usize,
}

impl Chosen {
    /// One line for the probe report, e.g. "ggml CPU variant zen4 chosen for this CPU (the best
    /// of 14 libggml-cpu-*.so by ggml's score; AVX512 …)".
    pub fn describe(&self) -> String {
        format!(
            "ggml CPU variant {} chosen for this CPU (the best of {} libggml-cpu-*.so by ggml's \
             score; {})",
            self.variant,
            self.candidates,
            if self.features.is_empty() {
                "no SIMD feature".to_owned()
            } else {
                self.features.join(", ")
            }
        )
    }
}

/// Loads ggml's backend modules from [`MODULES_DIR`] beside this plugin's file: the best CPU
/// variant for this CPU and the RPC backend. Call once, before llama.cpp is initialised.
///
/// # Errors
/// A message naming the directory when it is missing, or when no CPU module in it suits this
/// CPU (every one scored 0) or none could be opened.
pub fn load_modules() -> Result<Chosen, String> {
    let dir = own_dir()
        .ok_or("cannot find this plugin's own file (dladdr failed)")?
        .join(MODULES_DIR);
    // ggml opens every module in the directory: one that others can write to would run their
    // code in r1d's worker. The rule is r1d's own for plugin directories and files.
    refuse_if_writable_by_others(&dir)?;
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        format!(
            "cannot read ggml's backend modules in {}: {e} (the plugin is installed without \
             its {MODULES_DIR} directory)",
            dir.display()
        )
    })?;
    let mut candidates = 0;
    for entry in entries.filter_map(Result::ok) {
        refuse_if_writable_by_others(&entry.path())?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("libggml-cpu-") && name.ends_with(".so") {
            candidates += 1;
        }
    }
    if candidates == 0 {
        return Err(format!(
            "no CPU module (libggml-cpu-*.so) in {}: the directory is installed incompletely",
            dir.display()
        ));
    }
    let c = CString::new(dir.to_string_lossy().as_bytes())
        .map_err(|_| format!("{} holds a NUL byte", dir.display()))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; ggml opens each module in it,
    // calls its score function and registers the best of each kind.
    unsafe { sys::ggml_backend_load_all_from_path(c.as_ptr()) };
    chosen_cpu(candidates).ok_or_else(|| {
        format!(
            "none of the {candidates} CPU modules (libggml-cpu-*.so) in {} suits this CPU or \
             could be opened (llama.cpp's debug log names each one it tried)",
            dir.display()
        )
    })
}

/// Refuses `path` when users other than its owner and root can write to it (world-writable, or
/// group-writable by a group other than root's) or when it belongs to another user than root and
/// the one this process runs as, as r1d refuses such plugin directories and files. A symlink is
/// judged by what it points to; a path that does not exist is left to the caller's own error.
fn refuse_if_writable_by_others(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != own {
        return Err(format!(
            "refusing ggml's backend modules in {}: it belongs to uid {}, neither root nor the \
             user this process runs as (uid {own}), and its owner could replace it",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode();
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() != 0) {
        return Err(format!(
            "refusing ggml's backend modules in {}: it is writable by users other than its owner \
             and root (mode {:o})",
            path.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// The CPU backend ggml registered, if any: its module file and features.
fn chosen_cpu(candidates: usize) -> Option<Chosen> {
    // SAFETY: plain registry lookups by a NUL-terminated name; a null result is handled.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"CPU".as_ptr()) };
    if reg.is_null() {
        return None;
    }
    // SAFETY: `reg` is a registered backend; the name is NUL-terminated. The CPU backend
    // returns its `ggml_backend_get_features` function (ggml-cpu.cpp).
    let get = unsafe {
        sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_get_features".as_ptr())
    };
    if get.is_null() {
        return None;
    }
    let path = module_of(get as *const c_void)?;
    let variant = path
        .file_name()?
        .to_string_lossy()
        .strip_prefix("libggml-cpu-")?
        .strip_suffix(".so")?
        .to_owned();
    type GetFeatures =
        unsafe extern "C" fn(sys::ggml_backend_reg_t) -> *const sys::ggml_backend_feature;
    // SAFETY: the CPU backend's `ggml_backend_get_features` has this signature
    // (ggml-backend.h, `ggml_backend_get_features_t`); it returns an array ended by a null name
    // that lives as long as the module.
    let list = unsafe { std::mem::transmute::<*mut c_void, GetFeatures>(get)(reg) };
    let mut features = Vec::new();
    let mut i = 0;
    while !list.is_null() {
        // SAFETY: within the array, up to and including its terminating entry.
        let f = unsafe { &*list.add(i) };
        if f.name.is_null() {
            break;
        }
        // SAFETY: ggml's feature names and values are NUL-terminated static strings.
        let (name, value) = unsafe { (CStr::from_ptr(f.name), CStr::from_ptr(f.value)) };
        let name = name.to_string_lossy();
        // Instruction sets ("1"); the list also names build options, left out.
        let option = matches!(
            &*name,
            "LLAMAFILE" | "ACCELERATE" | "CPU_HBM" | "OPENMP" | "KLEIDIAI" | "REPACK"
        );
        if value.to_bytes() == b"1" && !option {
            features.push(name.into_owned());
        }
        i += 1;
    }
    Some(Chosen {
        variant,
        path,
        features,
        candidates,
    })
}

/// The file of the shared object that holds `addr`.
fn module_of(addr: *const c_void) -> Option<PathBuf> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr fills `info` for an address inside a loaded object and returns 0 otherwise.
    let found = unsafe { libc::dladdr(addr, info.as_mut_ptr()) };
    if found == 0 {
        return None;
    }
    // SAFETY: dladdr succeeded, so `info` is initialised; `dli_fname` is the object's path.
    let info = unsafe { info.assume_init() };
    if info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string owned by the dynamic loader.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(name.to_string_lossy().into_owned()))
}

/// The directory of this plugin's file.
fn own_dir() -> Option<PathBuf> {
    module_of(own_dir as *const c_void)?
        .parent()
        .map(Path::to_path_buf)
}
