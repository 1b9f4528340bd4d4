//! Forwards the plugin's `tracing` events to the host's log callback.

use std::cell::RefCell;
use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::{Once, RwLock};

use r1_plugin_abi as abi;
use r1_plugin_abi::R1Str;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

struct HostLogger {
    log: abi::R1LogFn,
    user_data: *mut c_void,
}

// SAFETY: the host promises (r1_plugin.h, set_logger) that the callback may be called from any
// thread and that `user_data` stays valid for the rest of the process.
unsafe impl Send for HostLogger {}
// SAFETY: as above; the logger itself is never mutated after being stored.
unsafe impl Sync for HostLogger {}

static HOST: RwLock<Option<HostLogger>> = RwLock::new(None);

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The last error-level log line emitted on this thread (e.g. llama.cpp's
/// "tensor 'output.weight' data is not within the file bounds …"), if any since the last
/// [`clear_last_error_line`].
pub fn last_error_line() -> Option<String> {
    LAST_ERROR.with(|l| l.borrow().clone())
}

/// Forgets this thread's last error line; call before an operation whose failure you will explain.
pub fn clear_last_error_line() {
    LAST_ERROR.with(|l| *l.borrow_mut() = None);
}

pub(crate) fn set_host_logger(log: abi::R1LogFn, user_data: *mut c_void) {
    if let Ok(mut host) = HOST.write() {
        *host = Some(HostLogger { log, user_data });
    }
}

/// Installs the forwarding subscriber as this plugin's global default (once).
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(ForwardLayer);
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

struct ForwardLayer;

#[derive(Default)]
struct MessageVisitor {
    message: String,
    module: Option<String>,
    extra: String,
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            // llama-cpp-2 names the C library a line came from ("llama.cpp", "ggml") in `module`.
            "module" => self.module = Some(value.to_owned()),
            name => {
                let _ = write!(self.extra, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "module" => self.module = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.extra, " {name}={value:?}");
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        let mut message = visitor.message.trim_end().to_owned();
        message.push_str(&visitor.extra);
        let level = match *meta.level() {
            Level::ERROR => abi::R1_LOG_ERROR,
            Level::WARN => abi::R1_LOG_WARN,
            Level::INFO => abi::R1_LOG_INFO,
            Level::DEBUG => abi::R1_LOG_DEBUG,
            Level::TRACE => abi::R1_LOG_TRACE,
        };
        if level == abi::R1_LOG_ERROR {
            LAST_ERROR.with(|l| *l.borrow_mut() = Some(message.clone()));
        }
        let target = visitor.module.unwrap_or_else(|| meta.target().to_owned());
        let Ok(host) = HOST.read() else { return };
        if let Some(HostLogger {
            log: Some(log),
            user_data,
        }) = host.as_ref()
        {
            // SAFETY: the host's callback accepts borrowed strings for the duration of the call
            // and may be called from any thread (set_logger contract).
            unsafe {
                log(
                    *user_data,
                    level,
                    R1Str::from_str(&target),
                    R1Str::from_str(&message),
                )
            };
        }
    }
}
