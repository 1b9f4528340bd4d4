//! The plugin worker process (`r1d __plugin-worker`): loads one model with one plugin and serves
//! r1d's requests for it over stdin/stdout (the protocol is in [`super::worker`]).
//!
//! The plugin is opened with the same code r1d uses in process ([`super::open_plugin`]), so the
//! ABI checks and the SDK's panic handling are the same. The protocol's stdout is a duplicate of
//! fd 1 taken at start; fd 1 itself then points at stderr, so text a plugin prints to stdout
//! cannot corrupt a frame. The worker ends when r1d closes its stdin, or with r1d
//! (`PR_SET_PDEATHSIG`); it ends with `_exit`, running no exit handlers or C++ static destructors
//! under a working backend thread.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter};
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::worker::{read_frame, write_frame, FromWorker, ToWorker, BEAT_INTERVAL};
use super::LoadedModel;

extern "C" {
    fn _exit(status: i32) -> !;
}

/// Ends the worker at once (no exit handlers: the plugin's threads may still be working).
fn end(status: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and does not return.
    unsafe { _exit(status) }
}

type Out = Arc<Mutex<BufWriter<std::fs::File>>>;

fn send(out: &Out, message: &FromWorker) {
    let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
    if write_frame(&mut *w, message).is_err() {
        // r1d is gone: nothing left to serve.
        end(0);
    }
}

/// Sends the worker's `tracing` events (the plugin's log lines among them) to r1d as `Log` frames.
struct FrameLayer {
    out: Out,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for FrameLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        #[derive(Default)]
        struct Fields {
            message: String,
            source: Option<String>,
            rest: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.message = format!("{value:?}"),
                    "source" => self.source = Some(format!("{value:?}")),
                    // The host adds the plugin's name itself.
                    "plugin" => {}
                    name => self.rest.push_str(&format!(" {name}={value:?}")),
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                match field.name() {
                    "message" => self.message = value.to_owned(),
                    "source" => self.source = Some(value.to_owned()),
                    "plugin" => {}
                    name => self.rest.push_str(&format!(" {name}={value}")),
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => r1_plugin_abi::R1_LOG_ERROR,
            tracing::Level::WARN => r1_plugin_abi::R1_LOG_WARN,
            tracing::Level::INFO => r1_plugin_abi::R1_LOG_INFO,
            tracing::Level::DEBUG => r1_plugin_abi::R1_LOG_DEBUG,
            tracing::Level::TRACE => r1_plugin_abi::R1_LOG_TRACE,
        };
        send(
            &self.out,
            &FromWorker::Log {
                level,
                target: fields.source.unwrap_or_else(|| meta.target().to_owned()),
                message: format!("{}{}", fields.message, fields.rest),
            },
        );
    }
}

/// The worker's main: never returns.
pub fn run() -> ! {
    // The protocol's output is a duplicate of stdout; stdout itself becomes stderr.
    let out = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("r1d plugin worker: failed to duplicate stdout: {e}");
            end(2);
        }
    };
    if let Err(e) = rustix::stdio::dup2_stdout(std::io::stderr().as_fd()) {
        eprintln!("r1d plugin worker: failed to point stdout at stderr: {e}");
        end(2);
    }
    let out: Out = Arc::new(Mutex::new(BufWriter::new(std::fs::File::from(out))));
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,r1d::plugin=warn"));
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(FrameLayer { out: out.clone() })
            .try_init();
    }
    let state = Arc::new(State {
        out: out.clone(),
        progress: AtomicU64::new(0),
        model: OnceLock::new(),
        cancels: Mutex::default(),
        load_cancel: AtomicBool::new(false),
    });
    std::thread::Builder::new()
        .name("r1d-worker-beat".into())
        .spawn({
            let state = state.clone();
            move || loop {
                std::thread::sleep(BEAT_INTERVAL);
                send(
                    &state.out,
                    &FromWorker::Beat {
                        progress: state.progress.load(Ordering::Relaxed),
                    },
                );
            }
        })
        .unwrap_or_else(|e| {
            eprintln!("r1d plugin worker: failed to start its heartbeat: {e}");
            end(2)
        });
    let mut input = BufReader::new(std::io::stdin().lock());
    loop {
        let message = match read_frame::<ToWorker>(&mut input) {
            Ok(Some(m)) => m,
            // r1d closed the pipe (an unload) or is gone.
            Ok(None) => end(0),
            Err(e) => {
                eprintln!("r1d plugin worker: unreadable request from r1d: {e}");
                end(2);
            }
        };
        match message {
            ToWorker::Cancel { id: 0 } => state.load_cancel.store(true, Ordering::SeqCst),
            ToWorker::Cancel { id } => {
                if let Some(flag) = state.lock_cancels().get(&id) {
                    flag.store(true, Ordering::SeqCst);
                }
            }
            other => {
                let state = state.clone();
                let spawned = std::thread::Builder::new()
                    .name("r1d-worker-call".into())
                    .spawn(move || state.serve(other));
                if let Err(e) = spawned {
                    eprintln!("r1d plugin worker: failed to start a thread: {e}");
                    end(2);
                }
            }
        }
    }
}

struct State {
    out: Out,
    progress: AtomicU64,
    model: OnceLock<Box<dyn LoadedModel>>,
    cancels: Mutex<HashMap<u64, Arc<AtomicBool>>>,
    load_cancel: AtomicBool,
}

impl State {
    fn lock_cancels(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicBool>>> {
        self.cancels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(&self, id: u64, e: &super::BackendError) {
        send(
            &self.out,
            &FromWorker::Failed {
                id,
                status: e.status().unwrap_or(r1_plugin_abi::R1_ERR_BACKEND),
                message: e.to_string(),
            },
        );
    }

    fn no_model(&self, id: u64) {
        send(
            &self.out,
            &FromWorker::Failed {
                id,
                status: r1_plugin_abi::R1_ERR_INVALID_ARGUMENT,
                message: "the worker has no model loaded".into(),
            },
        );
    }

    fn serve(&self, message: ToWorker) {
        match message {
            ToWorker::Load { plugin, params } => {
                if self.model.get().is_some() {
                    return self.no_model(0);
                }
                let loaded = super::open_plugin(&plugin).and_then(|backend| {
                    backend.load(&params, &mut |fraction| {
                        self.progress.fetch_add(1, Ordering::Relaxed);
                        send(&self.out, &FromWorker::Progress { fraction });
                        !self.load_cancel.load(Ordering::SeqCst)
                    })
                });
                match loaded {
                    Ok(model) => {
                        let info = Box::new(model.info().clone());
                        let _ = self.model.set(model);
                        send(&self.out, &FromWorker::Loaded { info });
                    }
                    Err(e) => self.failed(0, &e),
                }
            }
            ToWorker::Estimate { plugin, params } => {
                match super::open_plugin(&plugin).and_then(|backend| backend.estimate(&params)) {
                    Ok(estimate) => send(
                        &self.out,
                        &FromWorker::Estimated {
                            estimate: estimate.map(Box::new),
                        },
                    ),
                    Err(e) => self.failed(0, &e),
                }
            }
            ToWorker::Probe { plugin } => match super::open_plugin(&plugin) {
                Ok(backend) => send(
                    &self.out,
                    &FromWorker::Probed {
                        name: backend.name().to_owned(),
                        version: backend.version().to_owned(),
                        report: Box::new(backend.probe_report().clone()),
                    },
                ),
                Err(e) => self.failed(0, &e),
            },
            ToWorker::Tokenize {
                id,
                text,
                add_special,
                parse_special,
            } => {
                let Some(model) = self.model.get() else {
                    return self.no_model(id);
                };
                match model.tokenize(&text, add_special, parse_special) {
                    Ok(tokens) => send(&self.out, &FromWorker::Tokens { id, tokens }),
                    Err(e) => self.failed(id, &e),
                }
            }
            ToWorker::Generate { id, request } => {
                let Some(model) = self.model.get() else {
                    return self.no_model(id);
                };
                let cancel = Arc::new(AtomicBool::new(false));
                self.lock_cancels().insert(id, cancel.clone());
                let result = model.generate(&request, &mut |bytes, token| {
                    self.progress.fetch_add(1, Ordering::Relaxed);
                    if cancel.load(Ordering::SeqCst) {
                        return false;
                    }
                    send(
                        &self.out,
                        &FromWorker::Piece {
                            id,
                            bytes: bytes.to_vec(),
                            token,
                        },
                    );
                    true
                });
                self.lock_cancels().remove(&id);
                match result {
                    Ok(result) => send(
                        &self.out,
                        &FromWorker::Done {
                            id,
                            result: Box::new(result),
                        },
                    ),
                    Err(e) => self.failed(id, &e),
                }
            }
            ToWorker::Cancel { .. } => {}
        }
    }
}
