//! r1d over D-Bus: proxies for `org.r1d.R1.Manager1` and `org.r1d.R1.Chat1` at `/org/r1d/R1`
//! on `org.r1d.R1`, and the JSON lines a streamed answer sends over its file descriptor.
//!
//! ```no_run
//! # async fn f() -> zbus::Result<()> {
//! use r1d_client::dbus::{Chat1Proxy, Options};
//! let bus = zbus::Connection::session().await?;
//! let chat = Chat1Proxy::new(&bus).await?;
//! let (content, reasoning, usage) = chat.ask("why is the sky blue?", Options::new()).await?;
//! # Ok(()) }
//! ```
//!
//! **API boundary**: the daemon's `api::dbus` serves exactly these signatures; the introspection
//! XML in `systemd/org.r1d.R1.xml` is checked against the daemon's code by a test.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use zbus::zvariant::{OwnedFd, OwnedObjectPath, OwnedValue, Value};

/// The bus name r1d owns.
pub const BUS_NAME: &str = "org.r1d.R1";
/// The object that carries the interfaces.
pub const OBJECT_PATH: &str = "/org/r1d/R1";
/// The polkit action that allows changing the resident model, pulling and reloading.
pub const MANAGE_ACTION: &str = "org.r1d.R1.manage";
/// Prefix of r1d's D-Bus error names (`org.r1d.R1.Error.NoModel`, …).
pub const ERROR_PREFIX: &str = "org.r1d.R1.Error";

/// Options of a call (`a{sv}`): `max_tokens`, `temperature`, … for `Chat1`; `context_length`,
/// `backend`, … for `Manager1.Load`.
pub type Options<'a> = HashMap<&'a str, Value<'a>>;

/// `org.r1d.R1.Manager1`: state, hardware, plan, models and control of the resident model.
#[zbus::proxy(
    interface = "org.r1d.R1.Manager1",
    default_service = "org.r1d.R1",
    default_path = "/org/r1d/R1"
)]
pub trait Manager1 {
    /// `starting`, `loading`, `ready`, `swapping`, `degraded` or `no-model`.
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    /// Name of the resident model; empty when none.
    #[zbus(property)]
    fn active_model(&self) -> zbus::Result<String>;
    /// Backend of the resident model; empty when none.
    #[zbus(property)]
    fn backend(&self) -> zbus::Result<String>;
    /// Why no model is resident; empty otherwise.
    #[zbus(property)]
    fn error(&self) -> zbus::Result<String>;
    /// Load progress (0 to 1) while loading.
    #[zbus(property)]
    fn load_progress(&self) -> zbus::Result<f64>;
    /// How and when the model's worker process last died; empty when it never did.
    #[zbus(property)]
    fn last_crash(&self) -> zbus::Result<String>;
    /// Requests queued or running (not signalled, so never cached).
    #[zbus(property(emits_changed_signal = "false"))]
    fn active_requests(&self) -> zbus::Result<u32>;
    /// This machine's hardware profile (JSON, the shape of `GET /r1/hardware`).
    #[zbus(property(emits_changed_signal = "const"))]
    fn hardware(&self) -> zbus::Result<String>;
    /// Backend plugins: (name, version, available).
    #[zbus(property(emits_changed_signal = "const"))]
    fn backends(&self) -> zbus::Result<Vec<(String, String, bool)>>;
    /// r1d's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> zbus::Result<String>;

    /// The plan for this machine: (variant, quantization, backend, reason, the whole plan as
    /// JSON); the first three are empty when nothing fits.
    fn get_plan(&self) -> zbus::Result<(String, String, String, String, String)>;
    /// The models on disk: (name, variant, quantization, path, bytes).
    fn list_models(&self) -> zbus::Result<Vec<(String, String, String, String, u64)>>;
    /// Replaces the resident model with the model file at `path`.
    fn load(&self, path: &str, options: Options<'_>) -> zbus::Result<()>;
    /// Replaces the resident model with a model by name or path.
    #[zbus(name = "Use")]
    fn use_model(&self, model: &str) -> zbus::Result<()>;
    /// Unloads the resident model.
    fn unload(&self) -> zbus::Result<()>;
    /// Re-reads the config.
    fn reload(&self) -> zbus::Result<()>;
    /// Removes a model from r1d's models directory; returns the path removed and the bytes freed.
    fn remove(&self, model: &str) -> zbus::Result<(String, u64)>;
    /// Starts downloading a model (`deepseek-r1:7b`, `hf.co/OWNER/REPO:FILE`); returns the job
    /// object (`org.r1d.R1.Job1`, see [`Job1Proxy`]).
    fn pull(&self, model: &str, options: Options<'_>) -> zbus::Result<OwnedObjectPath>;
}

/// `org.r1d.R1.Job1`: one pull, at `/org/r1d/R1/jobs/N`. Build it with
/// `Job1Proxy::builder(&conn).path(job)?.cache_properties(CacheProperties::No).build()` to read
/// fresh values, or follow `PropertiesChanged`.
#[zbus::proxy(interface = "org.r1d.R1.Job1", default_service = "org.r1d.R1")]
pub trait Job1 {
    /// The model asked for.
    #[zbus(property)]
    fn model(&self) -> zbus::Result<String>;
    /// `resolving`, `downloading`, `verifying`, `done` or `failed`.
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    /// Bytes on disk so far.
    #[zbus(property)]
    fn completed_bytes(&self) -> zbus::Result<u64>;
    /// Bytes in all (0 while unknown).
    #[zbus(property)]
    fn total_bytes(&self) -> zbus::Result<u64>;
    /// Why it failed.
    #[zbus(property)]
    fn error(&self) -> zbus::Result<String>;
    /// Where the model landed.
    #[zbus(property)]
    fn path(&self) -> zbus::Result<String>;
    /// The pull ended: success, and the final path or the reason.
    #[zbus(signal)]
    fn finished(&self, success: bool, message: String) -> zbus::Result<()>;
}

/// `org.r1d.R1.Chat1`: asking the resident model.
#[zbus::proxy(
    interface = "org.r1d.R1.Chat1",
    default_service = "org.r1d.R1",
    default_path = "/org/r1d/R1"
)]
pub trait Chat1 {
    /// One question; returns (content, reasoning, usage).
    fn ask(
        &self,
        prompt: &str,
        options: Options<'_>,
    ) -> zbus::Result<(String, String, HashMap<String, OwnedValue>)>;
    /// One question, streamed: JSON lines ([`StreamEvent`]) on the returned descriptor; closing
    /// it cancels the generation.
    fn ask_stream(&self, prompt: &str, options: Options<'_>) -> zbus::Result<OwnedFd>;
    /// A conversation of (role, content) messages; returns (content, reasoning, usage).
    fn chat(
        &self,
        messages: &[(&str, &str)],
        options: Options<'_>,
    ) -> zbus::Result<(String, String, HashMap<String, OwnedValue>)>;
    /// A conversation, streamed like [`Chat1Proxy::ask_stream`].
    fn chat_stream(&self, messages: &[(&str, &str)], options: Options<'_>)
        -> zbus::Result<OwnedFd>;
}

/// Usage of a finished answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// The sum.
    pub total_tokens: u32,
}

/// One JSON line of a streamed answer (`{"type": "content", "text": "…"}`, …), in order:
/// `start`, any number of `reasoning` and `content`, then `done` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The prompt was accepted.
    Start {
        /// The model answering.
        model: String,
    },
    /// A piece of the reasoning.
    Reasoning {
        /// The text.
        text: String,
    },
    /// A piece of the answer.
    Content {
        /// The text.
        text: String,
    },
    /// The end.
    Done {
        /// `stop` or `length`.
        finish_reason: String,
        /// Usage.
        usage: Usage,
    },
    /// The answer failed midway (the last line).
    Error {
        /// The D-Bus error name (`org.r1d.R1.Error.Failed`, …).
        name: String,
        /// What happened.
        message: String,
    },
}

/// Reads the JSON lines of a streamed answer from the descriptor `AskStream`/`ChatStream`
/// returned. Dropping it closes the descriptor, which cancels the generation.
pub struct StreamReader {
    lines: Lines<BufReader<tokio::net::UnixStream>>,
}

impl StreamReader {
    /// Wraps the descriptor (a Unix socket).
    ///
    /// # Errors
    /// The descriptor cannot be registered with tokio.
    pub fn new(fd: OwnedFd) -> std::io::Result<StreamReader> {
        let fd: std::os::fd::OwnedFd = fd.into();
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        Ok(StreamReader {
            lines: BufReader::new(stream).lines(),
        })
    }

    /// The next event; `None` at the end of the stream.
    ///
    /// # Errors
    /// Reading failed, or a line is not a [`StreamEvent`].
    pub async fn next(&mut self) -> std::io::Result<Option<StreamEvent>> {
        match self.lines.next_line().await? {
            None => Ok(None),
            Some(line) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
    }
}
