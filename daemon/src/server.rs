//! Binding the Unix socket and serving HTTP on it until shutdown.
//!
//! The socket's directory is part of its security: the user socket lives only in a directory of
//! its user with mode 0700 (created so, and checked — owner, mode, not a symlink — before use),
//! and the system socket is group `r1d`, mode 0660. Serving is bounded: at most
//! `[server] max_connections` connections at once (more are answered 503 and closed), and a
//! connection that sends no complete request head within `[server] idle_timeout_s` (after it
//! opens, between requests, or while it trickles its headers in) is closed, as is one whose
//! request body stops arriving for as long.

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Errors binding the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process already serves on this socket.
    #[error("another process (another r1d?) is already listening on {0}")]
    InUse(PathBuf),
    /// The path exists and is not a socket: r1d does not delete other files.
    #[error("{0} exists and is not a socket; choose another --socket path or remove it")]
    NotASocket(PathBuf),
    /// The user socket's directory is not private to this user.
    #[error("refusing to serve the user socket: {0}")]
    UnsafeDir(#[from] r1d_client::PrivateDirError),
    /// Creating the directory or binding failed.
    #[error("failed to bind {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where the socket is, which decides how its directory and the socket file are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// The system socket (or any path in system mode): the directory is created with mode 0755,
    /// the socket is mode 0660 and, when r1d runs as root, group `r1d`.
    System,
    /// This user's default socket (`$XDG_RUNTIME_DIR/r1d/r1d.sock` or `/tmp/r1d-$UID/r1d.sock`):
    /// its directory is created with mode 0700 and must be a directory of this user, mode 0700,
    /// not a symlink ([`r1d_client::check_private_dir`]), or r1d refuses to serve.
    UserDefault,
    /// A path given with `--socket` or `[server] socket` in user mode: a missing directory is
    /// created with mode 0700, an existing one is used as it is; the socket is mode 0600.
    UserChosen,
}

/// Binds `path`: makes its directory as [`SocketKind`] says, removes a stale socket file left by
/// a crashed r1d (but refuses when a live one answers), binds, and sets the socket's mode (0660
/// and group `r1d` for the system socket, 0600 otherwise).
///
/// # Errors
/// [`ServerError::UnsafeDir`] when the user socket's directory is not private;
/// [`ServerError::InUse`] when a live server answers on the path; [`ServerError::NotASocket`] when
/// the path is another kind of file; [`ServerError::Bind`] otherwise.
pub async fn bind(path: &Path, kind: SocketKind) -> Result<UnixListener, ServerError> {
    let bind_err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        match kind {
            SocketKind::System => {
                if !dir.exists() {
                    std::fs::create_dir_all(dir).map_err(bind_err)?;
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                        .map_err(bind_err)?;
                }
            }
            SocketKind::UserDefault => {
                // `mkdir` (not `create_dir_all`, not a chmod afterwards): an existing entry of
                // that name — perhaps another user's, perhaps a symlink — is never adopted
                // unchecked.
                if let Some(parent) = dir.parent() {
                    std::fs::create_dir_all(parent).map_err(bind_err)?;
                }
                match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(bind_err(e)),
                }
                r1d_client::check_private_dir(dir)?;
            }
            SocketKind::UserChosen => {
                if !dir.exists() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(bind_err)?;
                }
            }
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(path.to_owned()));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let mode = if kind == SocketKind::System {
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    if kind == SocketKind::System && r1d_client::euid() == 0 {
        match r1d_client::system_group_gid() {
            Some(gid) => {
                let gid = rustix::fs::Gid::from_raw(gid);
                rustix::fs::chown(path, None, Some(gid))
                    .map_err(|e| bind_err(std::io::Error::from(e)))?;
            }
            None => tracing::warn!(
                "there is no group {:?} (systemd-sysusers creates it); {} is root's alone (mode 0660)",
                r1d_client::SYSTEM_USER,
                path.display()
            ),
        }
    }
    Ok(listener)
}

/// Raises this process's soft limit of open files towards `want` (within the hard limit), as
/// the units' `LimitNOFILE=` does under systemd: started by hand, r1d otherwise has the usual
/// soft limit of 1024, which [`Limits::max_connections`] plus the model's files may approach.
/// Returns the soft limit in force afterwards.
pub fn raise_file_limit(want: u64) -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let target = match limit.maximum {
        Some(max) => want.min(max),
        None => want,
    };
    if limit.current.is_some_and(|c| c < target) {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!("failed to raise the open-file limit to {target}: {e}");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Bounds on the connections [`serve`] accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// How long a connection may take to send a complete request head, counted from when it
    /// opens or its previous answer ended, and the longest pause within a request body: idle
    /// and slow connections are closed after it.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
            idle_timeout: crate::config::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// How long running answers get to end after shutdown begins before their connections are
/// dropped (a client that stopped reading must not hold r1d up).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The answer to a connection over [`Limits::max_connections`].
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 80\r\n\r\n{\"error\":{\"message\":\"r1d has too many open connections\",\"type\":\"server_error\"}}\n";

/// Logs at most one line per `every` (a flood of refused connections must not flood the log).
struct Throttle {
    last_ms: AtomicU64,
    start: std::time::Instant,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            last_ms: AtomicU64::new(0),
            start: std::time::Instant::now(),
        }
    }

    fn ready(&self, every: Duration) -> bool {
        let now = self.start.elapsed().as_millis() as u64 + every.as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        now >= last + every.as_millis() as u64
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, within `limits`; then stops
/// accepting, lets running requests end (up to 10 s) and returns.
///
/// Accept errors (such as `EMFILE`, out of file descriptors) are logged and retried after a
/// short pause: they never end the server.
///
/// # Errors
/// None today; the `Result` keeps room for fatal listener errors.
pub async fn serve(
    listener: UnixListener,
    router: axum::Router,
    shutdown: CancellationToken,
    limits: Limits,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let refused_log = Arc::new(Throttle::new());
    let error_log = Throttle::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if error_log.ready(Duration::from_secs(10)) {
                        tracing::error!("failed to accept a connection: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if refused_log.ready(Duration::from_secs(10)) {
                tracing::warn!(
                    "refusing connections: {} are open, the limit ([server] max_connections)",
                    limits.max_connections
                );
            }
            tracker.spawn(refuse(stream));
            continue;
        };
        let router = router.clone();
        let idle = limits.idle_timeout;
        // Who is on the other end, as the kernel says (SO_PEERCRED): the control core decides
        // from it who may manage r1d (crate::access). Read once per connection.
        let caller = stream.peer_cred().ok().map(|c| {
            crate::access::Caller::unix_peer(c.uid(), c.pid().and_then(|p| u32::try_from(p).ok()))
        });
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut router = router.clone();
            let mut request = request.map(|body| axum::body::Body::new(TimedBody::new(body, idle)));
            if let Some(caller) = &caller {
                request.extensions_mut().insert(caller.clone());
            }
            // The peer's uid also goes into each request's log line (`api::observe`).
            request.extensions_mut().insert(axum::extract::ConnectInfo(
                crate::api::observe::UnixPeer {
                    uid: caller.as_ref().map(|c| c.uid),
                },
            ));
            // The router is always ready (axum's own `serve` calls it the same way).
            tower_service::Service::call(&mut router, request)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("connection ended: {e}");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at shutdown were dropped");
    }
    Ok(())
}

/// A request body that fails when no part of it arrives for `timeout` (a client that sends its
/// headers and then trickles, or stops, its body must not hold a connection slot for ever).
struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> TimedBody {
        TimedBody {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// The error of a [`TimedBody`] whose client stopped sending.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no part of the request body for {0:?} ([server] idle_timeout_s)")]
pub struct BodyTimeout(Duration);

impl http_body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.timeout;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(this.timeout).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answers a connection over the limit with 503 (within a second) and closes it.
async fn refuse(mut stream: UnixStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(TOO_MANY).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_well_formed_http_with_the_right_length() {
        let text = std::str::from_utf8(TOO_MANY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{}",
            body.len()
        );
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[tokio::test]
    async fn the_default_user_socket_refuses_a_directory_of_another_mode() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("r1d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind(&dir.join("r1d.sock"), SocketKind::UserDefault)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("0777"), "{err}");
        // Created fresh, it is private and used.
        let fresh = base.path().join("fresh");
        let _l = bind(&fresh.join("r1d.sock"), SocketKind::UserDefault)
            .await
            .unwrap();
        r1d_client::check_private_dir(&fresh).unwrap();
        // A symlink to a private directory is refused all the same.
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let err = bind(&link.join("r1d.sock"), SocketKind::UserDefault)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }
}
