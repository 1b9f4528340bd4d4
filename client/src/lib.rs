//! Client side of r1d's Unix-socket HTTP API: the wire types ([`wire`]) and an async [`Client`].
//!
//! This crate is the contract between the daemon and its clients (`r1ctl`, the integration
//! tests, Rust apps): the daemon's HTTP module serialises exactly these types.

pub mod dbus;
pub mod ollama;
pub mod wire;

use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::body::Incoming;
pub use hyper::{Method, StatusCode};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use wire::{ChatCompletion, ChatCompletionChunk, ChatCompletionRequest};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (or it is not accessible).
    #[error("r1d is not running: failed to connect to {socket}: {error}")]
    Connect {
        /// The socket path tried.
        socket: PathBuf,
        /// The OS error (shown in the message, so not chained as a source).
        error: std::io::Error,
    },
    /// The HTTP exchange failed midway.
    #[error("failed to talk to r1d at {socket}: {error}")]
    Http {
        /// The socket path.
        socket: PathBuf,
        /// The hyper error (shown in the message, so not chained as a source).
        error: hyper::Error,
    },
    /// r1d answered with an error status; `message` is its explanation.
    #[error("r1d answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// The error message from the body (OpenAI `error.message`, or the raw body).
        message: String,
        /// The raw body.
        body: String,
    },
    /// The body was not the JSON expected.
    #[error("failed to decode r1d's answer: {0}")]
    Decode(#[from] serde_json::Error),
    /// A streamed answer ended with an error event or was cut.
    #[error("stream from r1d failed: {0}")]
    Stream(String),
    /// The process serving the socket is not who r1d must be (SO_PEERCRED): another user may be
    /// impersonating r1d. Nothing was sent.
    #[error("refusing to talk to {socket}: it is served by a process of uid {uid}, but {expected}; another user may be impersonating r1d (nothing was sent)")]
    Impostor {
        /// The socket path.
        socket: PathBuf,
        /// The uid of the process that serves it.
        uid: u32,
        /// Who may serve it, in words.
        expected: String,
    },
    /// The peer's credentials could not be read.
    #[error("failed to read the credentials of the process serving {socket}: {error}")]
    PeerCredentials {
        /// The socket path.
        socket: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

/// The system service's socket.
pub const SYSTEM_SOCKET: &str = "/run/r1d/r1d.sock";

extern "C" {
    fn geteuid() -> u32;
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() }
}

/// The name of the system user (and group) r1d runs as under systemd (`r1d.sysusers`).
pub const SYSTEM_USER: &str = "r1d";

/// The uid of the `r1d` system user, from `/etc/passwd` (where `systemd-sysusers` puts it);
/// `None` when there is no such user.
pub fn system_user_uid() -> Option<u32> {
    id_from_db(Path::new("/etc/passwd"), SYSTEM_USER)
}

/// The gid of the `r1d` group, from `/etc/group`; `None` when there is no such group.
pub fn system_group_gid() -> Option<u32> {
    id_from_db(Path::new("/etc/group"), SYSTEM_USER)
}

/// The third field (uid or gid) of the line of `name` in a `passwd`- or `group`-format file.
fn id_from_db(db: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(db).ok()?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[0] == name)
        .and_then(|f| f[2].parse().ok())
}

/// The directory of the user socket when `XDG_RUNTIME_DIR` is not set: `/tmp/r1d-$UID`. Its
/// name is predictable, so r1d creates it with mode 0700 and refuses it unless it is a real
/// directory (not a symlink) owned by this user and closed to everyone else
/// ([`check_private_dir`]); `r1ctl` checks who serves the socket before sending anything.
pub fn fallback_runtime_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/r1d-{}", euid()))
}

/// The user-mode socket of this user, where `r1d --user` listens: `$XDG_RUNTIME_DIR/r1d/r1d.sock`,
/// or `/tmp/r1d-$UID/r1d.sock` ([`fallback_runtime_dir`]) when `XDG_RUNTIME_DIR` is not set.
pub fn user_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("r1d/r1d.sock"),
        None => fallback_runtime_dir().join("r1d.sock"),
    }
}

/// Why a directory is not private to this user (see [`check_private_dir`]).
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    /// It could not be examined.
    #[error("failed to examine {path}: {error}")]
    Stat {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// It is a symbolic link (which may point anywhere, into another user's directory).
    #[error("{path} is a symbolic link, not a directory; r1d does not put its socket there (remove it, or set XDG_RUNTIME_DIR)")]
    Symlink {
        /// The directory.
        path: PathBuf,
    },
    /// It is not a directory.
    #[error("{path} is not a directory; r1d does not put its socket there (remove it, or set XDG_RUNTIME_DIR)")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Another user owns it: whoever created it first could serve in r1d's place.
    #[error("{path} belongs to uid {owner}, not to you (uid {uid}); another user may have created it to impersonate r1d. Remove it (as root) or set XDG_RUNTIME_DIR")]
    Owner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        uid: u32,
    },
    /// Others may enter or write it.
    #[error("{path} has mode {mode:04o}; the directory of r1d's user socket must be 0700 (chmod 700 it, or set XDG_RUNTIME_DIR)")]
    Mode {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Checks that `dir` is a directory (not a symlink to one) owned by this process's effective
/// user, with no permission for group or others (mode 0700 or tighter).
///
/// # Errors
/// [`PrivateDirError`] naming what is wrong.
pub fn check_private_dir(dir: &Path) -> Result<(), PrivateDirError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|error| PrivateDirError::Stat {
        path: dir.to_owned(),
        error,
    })?;
    if meta.file_type().is_symlink() {
        return Err(PrivateDirError::Symlink {
            path: dir.to_owned(),
        });
    }
    if !meta.is_dir() {
        return Err(PrivateDirError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    if meta.uid() != euid() {
        return Err(PrivateDirError::Owner {
            path: dir.to_owned(),
            owner: meta.uid(),
            uid: euid(),
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(PrivateDirError::Mode {
            path: dir.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Where a client looks when no socket is given: root tries the system socket first, other users
/// their user socket first; the first of the two that exists wins, else the first.
pub fn default_socket_path() -> PathBuf {
    let user = user_socket_path();
    let system = PathBuf::from(SYSTEM_SOCKET);
    let order = if euid() == 0 {
        [system, user]
    } else {
        [user, system]
    };
    order
        .iter()
        .find(|p| p.exists())
        .unwrap_or(&order[0])
        .clone()
}

/// Who may serve a socket, checked with `SO_PEERCRED` before a request is sent (see
/// [`Client::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The user socket: only this user's own r1d.
    OwnUser,
    /// The system socket: root, or the `r1d` system user.
    System,
    /// Another socket: this user, root, or the `r1d` system user.
    Any,
}

impl Trust {
    /// The trust for `socket`: [`Trust::OwnUser`] for this user's socket
    /// ([`user_socket_path`]), [`Trust::System`] for [`SYSTEM_SOCKET`], [`Trust::Any`] else.
    pub fn for_socket(socket: &Path) -> Trust {
        if socket == user_socket_path() {
            Trust::OwnUser
        } else if socket == Path::new(SYSTEM_SOCKET) {
            Trust::System
        } else {
            Trust::Any
        }
    }

    /// Whether a server of `uid` may be trusted, when this process runs as `me` and the `r1d`
    /// system user is `system_user`; otherwise who was expected, in words.
    pub fn check(&self, uid: u32, me: u32, system_user: Option<u32>) -> Result<(), String> {
        let system = |uid: u32| uid == 0 || Some(uid) == system_user;
        let ok = match self {
            Trust::OwnUser => uid == me,
            Trust::System => system(uid),
            Trust::Any => uid == me || system(uid),
        };
        if ok {
            return Ok(());
        }
        let r1d = match system_user {
            Some(u) => format!("the r1d system user (uid {u})"),
            None => "the r1d system user".to_owned(),
        };
        Err(match self {
            Trust::OwnUser => format!("your own user socket must be served by you (uid {me})"),
            Trust::System => format!("the system socket must be served by root or {r1d}"),
            Trust::Any => format!("it must be served by you (uid {me}), root or {r1d}"),
        })
    }
}

/// A client for one r1d socket. Cheap to clone; every request opens its own connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    trust: Trust,
}

/// A stream of chat chunks (see [`Client::chat_stream`]).
/// The events of `GET /r1/events`.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<wire::Event, ClientError>> + Send>>;

/// The chunks of a streamed chat completion.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatCompletionChunk, ClientError>> + Send>>;

impl Client {
    /// A client for the socket at `socket`. Nothing is connected until a request is made; each
    /// connection is then checked to be served by whom [`Trust::for_socket`] names (this user
    /// for the user socket, root or the `r1d` user for the system socket) before anything is
    /// sent.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        let socket = socket.into();
        let trust = Trust::for_socket(&socket);
        Client { socket, trust }
    }

    /// The same client, trusting servers as `trust` says instead.
    pub fn with_trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the response head and streaming body.
    ///
    /// # Errors
    /// [`ClientError::Connect`] when nothing listens; [`ClientError::Http`] on protocol errors.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|error| ClientError::Connect {
                    socket: self.socket.clone(),
                    error,
                })?;
        self.check_peer(&stream)?;
        let http_err = |error| ClientError::Http {
            socket: self.socket.clone(),
            error,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://r1d{path}"))
            .header("host", "r1d");
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request parts are valid");
        sender.send_request(request).await.map_err(http_err)
    }

    /// Refuses a server whose uid (`SO_PEERCRED`) is not one [`Trust`] allows.
    fn check_peer(&self, stream: &UnixStream) -> Result<(), ClientError> {
        let cred = stream
            .peer_cred()
            .map_err(|error| ClientError::PeerCredentials {
                socket: self.socket.clone(),
                error,
            })?;
        self.trust
            .check(cred.uid(), euid(), system_user_uid())
            .map_err(|expected| ClientError::Impostor {
                socket: self.socket.clone(),
                uid: cred.uid(),
                expected,
            })
    }

    async fn read_body(
        &self,
        response: Response<Incoming>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| ClientError::Http {
                socket: self.socket.clone(),
                error,
            })?
            .to_bytes();
        Ok((status, body))
    }

    /// `GET path`, decoding the JSON body as `T`. A non-2xx status is an error unless
    /// `accept_error_status` (as for `/health`, whose 503 body is still a [`wire::Health`]).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        accept_error_status: bool,
    ) -> Result<T, ClientError> {
        let response = self.request(Method::GET, path, None).await?;
        let (status, body) = self.read_body(response).await?;
        if !status.is_success() && !accept_error_status {
            return Err(status_error(status, &body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// `POST path` with a JSON body, decoding the JSON answer as `T`.
    ///
    /// # Errors
    /// See [`ClientError`]; a non-2xx status is [`ClientError::Status`].
    pub async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let response = self
            .request(Method::POST, path, Some(serde_json::to_vec(body)?))
            .await?;
        let (status, body) = self.read_body(response).await?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// `POST /r1/pull`: starts (or joins) a pull in the daemon and returns its progress events,
    /// one per NDJSON line, ending with `done` or `error`. Dropping the receiver stops watching,
    /// not the pull.
    ///
    /// # Errors
    /// See [`ClientError`]; a refused request (unknown model) is [`ClientError::Status`].
    pub async fn pull(
        &self,
        model: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<wire::PullEvent, ClientError>>, ClientError>
    {
        let body = serde_json::to_vec(&wire::ModelRequest {
            model: model.to_owned(),
        })?;
        let response = self.request(Method::POST, "/r1/pull", Some(body)).await?;
        if !response.status().is_success() {
            let (status, body) = self.read_body(response).await?;
            return Err(status_error(status, &body));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let socket = self.socket.clone();
        tokio::spawn(async move {
            let mut body = response.into_body();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(f) => f,
                    Err(error) => {
                        let _ = tx
                            .send(Err(ClientError::Http {
                                socket: socket.clone(),
                                error,
                            }))
                            .await;
                        return;
                    }
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let event = serde_json::from_slice(&line).map_err(ClientError::from);
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// `GET /r1/status`.
    pub async fn status(&self) -> Result<wire::Status, ClientError> {
        self.get_json("/r1/status", false).await
    }

    /// `POST /r1/reload`: r1d re-reads its config; the outcome says what changed or why the file
    /// was rejected (the running config then stays in force).
    pub async fn reload(&self) -> Result<wire::ReloadOutcome, ClientError> {
        self.post_json("/r1/reload", &serde_json::json!({})).await
    }

    /// `GET /r1/events`: every state change, reload, hardware change, plan change and swap, as
    /// it happens, starting with the current state. Ends when r1d closes the connection.
    ///
    /// # Errors
    /// The call fails when nothing listens; the stream yields [`ClientError::Stream`] for an
    /// event that does not parse.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let response = self.request(Method::GET, "/r1/events", None).await?;
        if !response.status().is_success() {
            let (status, body) = self.read_body(response).await?;
            return Err(status_error(status, &body));
        }
        let events = sse_events(response).map(|item| match item {
            Ok(e) if e.event == "lagged" => Ok(wire::Event {
                kind: "lagged".into(),
                time: 0.0,
                message: e.data,
                state: None,
                model: None,
                changes: Vec::new(),
                error: None,
            }),
            Ok(e) => serde_json::from_str::<wire::Event>(&e.data)
                .map_err(|err| ClientError::Stream(format!("bad event {:?}: {err}", e.data))),
            Err(e) => Err(ClientError::Stream(e.to_string())),
        });
        Ok(Box::pin(events))
    }

    /// `GET /health` (its 503 answers are returned, not errors).
    pub async fn health(&self) -> Result<wire::Health, ClientError> {
        self.get_json("/health", true).await
    }

    /// Non-streamed `POST /v1/chat/completions` (forces `stream: false`).
    pub async fn chat(
        &self,
        request: &ChatCompletionRequest,
    ) -> Result<ChatCompletion, ClientError> {
        let mut request = request.clone();
        request.stream = false;
        self.post_json("/v1/chat/completions", &request).await
    }

    /// Streamed `POST /v1/chat/completions` (forces `stream: true`): yields each chunk as it
    /// arrives and ends at `data: [DONE]`. Dropping the stream closes the connection, which makes
    /// r1d stop generating.
    ///
    /// # Errors
    /// The call fails when the request is refused (no model, prompt over the context, …); the
    /// stream yields [`ClientError::Stream`] when the answer is cut or ends in an error event.
    pub async fn chat_stream(
        &self,
        request: &ChatCompletionRequest,
    ) -> Result<ChunkStream, ClientError> {
        let mut request = request.clone();
        request.stream = true;
        let response = self
            .request(
                Method::POST,
                "/v1/chat/completions",
                Some(serde_json::to_vec(&request)?),
            )
            .await?;
        if !response.status().is_success() {
            let (status, body) = self.read_body(response).await?;
            return Err(status_error(status, &body));
        }
        let events = sse_events(response);
        let stream = sse_chunks(events);
        Ok(Box::pin(stream))
    }
}

/// The server-sent events of a response body (its data frames, parsed by `eventsource-stream`).
fn sse_events(
    response: Response<Incoming>,
) -> eventsource_stream::EventStream<impl Stream<Item = Result<Bytes, hyper::Error>> + Unpin> {
    let body = BodyStream::new(response.into_body()).filter_map(|frame| {
        std::future::ready(match frame {
            Ok(frame) => frame.into_data().ok().map(Ok),
            Err(e) => Some(Err(e)),
        })
    });
    eventsource_stream::EventStream::new(body)
}

fn sse_chunks<S, E>(
    events: eventsource_stream::EventStream<S>,
) -> impl Stream<Item = Result<ChatCompletionChunk, ClientError>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut done = false;
    events
        .take_while(move |event| {
            let keep = !done;
            if let Ok(e) = event {
                if e.data.trim() == "[DONE]" {
                    done = true;
                    return std::future::ready(false);
                }
            }
            std::future::ready(keep)
        })
        .map(|event| match event {
            Ok(event) => {
                if let Ok(err) = serde_json::from_str::<wire::OpenAiErrorBody>(&event.data) {
                    return Err(ClientError::Stream(err.error.message));
                }
                serde_json::from_str::<ChatCompletionChunk>(&event.data).map_err(ClientError::from)
            }
            Err(e) => Err(ClientError::Stream(e.to_string())),
        })
}

/// Turns an error response into [`ClientError::Status`], taking the message from an OpenAI error
/// object, an Ollama/native `{"error": "..."}`, or the raw body.
fn status_error(status: StatusCode, body: &[u8]) -> ClientError {
    let text = String::from_utf8_lossy(body).into_owned();
    let message = serde_json::from_slice::<wire::OpenAiErrorBody>(body)
        .map(|b| b.error.message)
        .or_else(|_| {
            serde_json::from_slice::<serde_json::Value>(body).map(|v| {
                v.get("error")
                    .and_then(|e| e.as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| text.clone())
            })
        })
        .unwrap_or_else(|_| text.clone());
    ClientError::Status {
        status,
        message,
        body: text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_names_who_may_serve_each_socket() {
        let me = 1000;
        let r1d = Some(999);
        assert!(Trust::OwnUser.check(1000, me, r1d).is_ok());
        assert!(Trust::OwnUser.check(0, me, r1d).is_err());
        let e = Trust::OwnUser.check(4242, me, r1d).unwrap_err();
        assert!(e.contains("uid 1000"), "{e}");
        assert!(Trust::System.check(0, me, r1d).is_ok());
        assert!(Trust::System.check(999, me, r1d).is_ok());
        assert!(Trust::System.check(1000, me, r1d).is_err());
        assert!(Trust::System.check(999, me, None).is_err());
        assert!(Trust::Any.check(1000, me, r1d).is_ok());
        assert!(Trust::Any.check(0, me, r1d).is_ok());
        assert!(Trust::Any.check(4242, me, r1d).is_err());
    }

    #[test]
    fn ids_come_from_passwd_format_files() {
        let dir = std::env::temp_dir().join(format!("r1d-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("passwd");
        std::fs::write(
            &db,
            "root:x:0:0::/root:/bin/sh\nr1d:x:994:994::/var/lib/r1d:/usr/sbin/nologin\nbad\n",
        )
        .unwrap();
        assert_eq!(id_from_db(&db, "r1d"), Some(994));
        assert_eq!(id_from_db(&db, "nobody"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_private_dir_must_be_ours_0700_and_no_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("r1d-client-priv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_private_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("0755"), "{e}");
        let link = base.join("l");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            check_private_dir(&link),
            Err(PrivateDirError::Symlink { .. })
        ));
        let file = base.join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            check_private_dir(&file),
            Err(PrivateDirError::NotADirectory { .. })
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
