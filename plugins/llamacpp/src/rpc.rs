//! Remote devices: llama.cpp `rpc-server` workers (ggml's RPC backend) as extra devices.
//!
//! `LoadParams::extra.rpc_workers` (`["HOST:PORT", …]`, from r1d's `[backends.llamacpp]
//! rpc_workers`) names the workers. Before a load each is asked for its devices with
//! `ggml-rpc-probe` (timeouts, no ggml): a worker that does not answer is left out with a warning
//! and the load goes on with what is left (r1d's re-plan after a worker vanished reloads the same
//! spec: the vanished worker's layers then land on the local devices). Each worker that answered is
//! handed to ggml (`ggml_backend_rpc_add_server` + `ggml_backend_register`, what llama.cpp's
//! `--rpc` does in common/arg.cpp): its devices become GPU-type devices named `RPCn`, which
//! llama.cpp puts first in its device list and fills with `n_gpu_layers` layers, split in
//! proportion to their free memory.
//!
//! A worker that goes away *after* that ends the process: ggml's RPC client has no error path
//! (`RPC_STATUS_ASSERT` → `GGML_ABORT` "Remote RPC server crashed or returned malformed
//! response"). That is why r1d only allows RPC workers with `[plugins] isolation = "process"`:
//! the plugin's worker process dies, its answers end with an error event, and r1d loads again.

use std::collections::HashSet;
use std::ffi::{c_char, CString};
use std::sync::Mutex;
use std::time::Duration;

use llama_cpp_sys_2 as sys;
use r1_plugin_sdk::PluginError;

/// How long one step of the probe of a worker may take (connect, each read and write).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(not(feature = "dynamic-backends"))]
extern "C" {
    // Declared in llama.cpp's ggml/include/ggml-rpc.h (llama-cpp-sys-2 0.1.161 compiles
    // ggml-rpc with GGML_RPC=ON, set in the workspace's .cargo/config.toml, but its bindings do
    // not include that header).
    fn ggml_backend_rpc_add_server(endpoint: *const c_char) -> sys::ggml_backend_reg_t;
}

/// With dynamic backends the RPC backend is a module (`libggml-rpc.so`) that nothing links:
/// its `ggml_backend_rpc_add_server` is found through its registry entry, as llama.cpp's own
/// `--rpc` does (`ggml_backend_reg_get_proc_address`). A null entry when the module is absent.
///
/// # Safety
/// `endpoint` is a NUL-terminated string; the same contract as the linked function.
#[cfg(feature = "dynamic-backends")]
unsafe fn ggml_backend_rpc_add_server(endpoint: *const c_char) -> sys::ggml_backend_reg_t {
    type AddServer = unsafe extern "C" fn(*const c_char) -> sys::ggml_backend_reg_t;
    // SAFETY: registry lookups by NUL-terminated names; null results are checked.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    if reg.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `reg` is the non-null RPC registry entry; the name is NUL-terminated; a null
    // result is checked.
    let f = unsafe {
        sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_rpc_add_server".as_ptr())
    };
    if f.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: ggml-rpc returns this function under that name (ggml-rpc.cpp,
    // `ggml_backend_rpc_get_proc_address`), with the signature of ggml-rpc.h.
    unsafe { std::mem::transmute::<*mut std::ffi::c_void, AddServer>(f)(endpoint) }
}

/// The workers of `extra.rpc_workers`, or none.
///
/// # Errors
/// [`PluginError::invalid_argument`] when `rpc_workers` is not a list of `HOST:PORT` strings.
pub fn workers_from_extra(extra: &serde_json::Value) -> Result<Vec<String>, PluginError> {
    let Some(list) = extra.get("rpc_workers") else {
        return Ok(Vec::new());
    };
    let bad = || {
        PluginError::invalid_argument(format!(
            "extra.rpc_workers must be a list of \"HOST:PORT\" strings, not {list}"
        ))
    };
    let list = list.as_array().ok_or_else(bad)?;
    let mut out = Vec::new();
    for w in list {
        let w = w.as_str().ok_or_else(bad)?;
        ggml_rpc_probe::check_endpoint(w)
            .map_err(|e| PluginError::invalid_argument(e.to_string()))?;
        if !out.iter().any(|o| o == w) {
            out.push(w.to_owned());
        }
    }
    Ok(out)
}

/// What [`attach`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Workers whose devices are now ggml devices, with their device count.
    pub used: Vec<(String, usize)>,
    /// Workers left out and why.
    pub missing: Vec<(String, String)>,
}

/// Probes every worker at once and registers the devices of those that answer with ggml (once
/// per endpoint per process), in the order given (llama.cpp's device order). Blocking: up to
/// [`PROBE_TIMEOUT`] per step for the slowest worker (not one timeout per silent worker).
///
/// # Errors
/// [`PluginError::load_failed`] when a worker already registered in this process (an earlier
/// load in the same process) no longer answers: ggml would end the process on its devices.
pub fn attach(workers: &[String]) -> Result<Attached, PluginError> {
    static REGISTERED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut out = Attached::default();
    let probed: Vec<Result<ggml_rpc_probe::Worker, ggml_rpc_probe::ProbeError>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = workers
                .iter()
                .map(|e| scope.spawn(move || ggml_rpc_probe::probe(e, PROBE_TIMEOUT)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ggml_rpc_probe::ProbeError::Protocol {
                            endpoint: String::new(),
                            message: "the probe thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
    for (endpoint, probe) in workers.iter().zip(probed) {
        let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        let registered = registered.get_or_insert_with(HashSet::new);
        match probe {
            Ok(worker) if worker.devices.is_empty() => out
                .missing
                .push((endpoint.clone(), "it has no devices".to_owned())),
            Ok(worker) => {
                if !registered.contains(endpoint) {
                    let c = CString::new(endpoint.as_str()).expect("checked HOST:PORT has no NUL");
                    // SAFETY: `c` is a NUL-terminated string that outlives the call (ggml copies
                    // it into a std::string). The worker just answered HELLO, so ggml's connect
                    // and handshake, which abort the process on failure, find it alive (a worker
                    // that dies in between ends this process, as any later RPC failure does).
                    // `ggml_backend_register` takes the registry entry for the process's life.
                    let reg = unsafe { ggml_backend_rpc_add_server(c.as_ptr()) };
                    if reg.is_null() {
                        out.missing
                            .push((endpoint.clone(), "ggml found no devices on it".to_owned()));
                        continue;
                    }
                    // SAFETY: `reg` is the non-null registry entry ggml just created for this
                    // endpoint; registering it once per endpoint (the set above) is what
                    // llama.cpp's own `--rpc` does.
                    unsafe { sys::ggml_backend_register(reg) };
                    registered.insert(endpoint.clone());
                }
                {
                    let mut attached = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
                    if attached.is_empty() {
                        // SAFETY: `on_abort` is a plain function for the process's life.
                        unsafe { sys::ggml_set_abort_callback(Some(on_abort)) };
                    }
                    if !attached.contains(endpoint) {
                        attached.push(endpoint.clone());
                    }
                }
                tracing::info!(
                    worker = endpoint.as_str(),
                    devices = worker.devices.len(),
                    free_bytes = worker.free_bytes(),
                    "using rpc worker {endpoint}: {} device(s), {:.2} GB free",
                    worker.devices.len(),
                    worker.free_bytes() as f64 / 1e9
                );
                out.used.push((endpoint.clone(), worker.devices.len()));
            }
            Err(e) if registered.contains(endpoint) => {
                // Already a ggml device in this process (a second load in the same process):
                // ggml would abort on it, so refuse rather than go on.
                return Err(PluginError::load_failed(format!(
                    "{e}; its devices are already registered in this process, so llama.cpp \
                     cannot load without it (load again in a new worker process)"
                )));
            }
            Err(e) => {
                tracing::warn!(
                    worker = endpoint.as_str(),
                    "leaving rpc worker {endpoint} out of this load: {e}"
                );
                out.missing.push((endpoint.clone(), e.to_string()));
            }
        }
    }
    Ok(out)
}

/// The workers attached in this process, for [`on_abort`].
static ATTACHED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// ggml's abort hook while RPC workers are attached: ggml's default prints the message and then
/// a backtrace through gdb, whose last line ("[Inferior 1 (process N) detached]") is what r1d
/// would report as the worker process's last words. This prints the message and, when the
/// message is the RPC client's, which attached worker no longer accepts connections, as the
/// last line; ggml then calls `abort()`.
unsafe extern "C" fn on_abort(message: *const c_char) {
    // SAFETY: ggml passes its NUL-terminated message buffer, alive for this call.
    let message = unsafe { std::ffi::CStr::from_ptr(message) }.to_string_lossy();
    let mut line = format!("ggml aborted: {message}");
    if message.contains("RPC") {
        // try_lock: an abort while this thread holds the lock must not deadlock.
        let workers = ATTACHED.try_lock().map(|w| w.clone()).unwrap_or_default();
        // A worker that just died may still be closing its listening socket.
        std::thread::sleep(Duration::from_millis(200));
        // Alive workers this process is connected to do not answer a second connection (busy).
        let gone: Vec<String> = workers
            .iter()
            .filter(|w| {
                ggml_rpc_probe::probe(w, Duration::from_millis(500)).is_err_and(|e| !e.is_busy())
            })
            .cloned()
            .collect();
        if !gone.is_empty() {
            line.push_str(&format!(" (rpc worker {} is gone)", gone.join(", ")));
        }
    }
    eprintln!("{line}");
}

/// The endpoint of the RPC device ggml names `name` (`RPC0`, …: ggml-rpc names its devices
/// `RPCn` and describes each with its worker's `HOST:PORT`); `None` for any other device.
pub fn device_endpoint(name: &str) -> Option<String> {
    if !name.starts_with("RPC") {
        return None;
    }
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is NUL-terminated and outlives the calls; ggml's registry is a thread-safe
    // static, and the description it returns lives as long as the device (the process).
    unsafe {
        let dev = sys::ggml_backend_dev_by_name(c.as_ptr());
        if dev.is_null() {
            return None;
        }
        let d = sys::ggml_backend_dev_description(dev);
        (!d.is_null()).then(|| std::ffi::CStr::from_ptr(d).to_string_lossy().into_owned())
    }
}

/// True when layers can be offloaded: an RPC worker is attached in this process, or this is a
/// GPU build ([`crate::BUILD`]) and ggml lists a GPU or integrated GPU. Unlike
/// `llama_supports_gpu_offload`, which is true in every build with the RPC backend compiled in,
/// the CPU build without workers says no, as before RPC: its default stays `gpu_layers` 0.
pub fn offload_device_present() -> bool {
    let attached = !ATTACHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty();
    attached
        || (crate::BUILD != "cpu"
            // SAFETY: plain registry queries; ggml's registry is a thread-safe static.
            && unsafe {
                !sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_GPU).is_null()
                    || !sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_IGPU).is_null()
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_workers_are_read_from_extra_and_checked() {
        assert!(workers_from_extra(&serde_json::Value::Null)
            .unwrap()
            .is_empty());
        let w = workers_from_extra(&serde_json::json!({
            "rpc_workers": ["10.0.0.2:50052", "10.0.0.3:50052", "10.0.0.2:50052"]
        }))
        .unwrap();
        assert_eq!(w, ["10.0.0.2:50052", "10.0.0.3:50052"]);
        let e =
            workers_from_extra(&serde_json::json!({"rpc_workers": "10.0.0.2:50052"})).unwrap_err();
        assert!(e.message.contains("must be a list"), "{}", e.message);
        let e = workers_from_extra(&serde_json::json!({"rpc_workers": ["10.0.0.2"]})).unwrap_err();
        assert!(e.message.contains("not HOST:PORT"), "{}", e.message);
    }

    #[test]
    fn an_unreachable_worker_is_left_out_naming_why() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a = attach(&[format!("127.0.0.1:{port}")]).unwrap();
        assert!(a.used.is_empty());
        assert_eq!(a.missing.len(), 1);
        assert!(a.missing[0].1.contains("unreachable"), "{:?}", a.missing);
    }
}
