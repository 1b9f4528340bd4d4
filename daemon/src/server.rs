//! Binding the Unix socket and serving HTTP on it until shutdown.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// Errors binding the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process already serves on this socket.
    #[error("another process (another r1d?) is already listening on {0}")]
    InUse(PathBuf),
    /// The path exists and is not a socket: r1d does not delete other files.
    #[error("{0} exists and is not a socket; choose another --socket path or remove it")]
    NotASocket(PathBuf),
    /// Creating the directory or binding failed.
    #[error("failed to bind {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Binds `path`: creates its directory (mode 0755 for the system socket's `/run/r1d`, 0700
/// otherwise), removes a stale socket file left by a crashed r1d (but refuses when a live one
/// answers), binds, and sets the socket's mode (0660 system, 0600 user).
///
/// # Errors
/// [`ServerError::InUse`] when a live server answers on the path; [`ServerError::NotASocket`] when
/// the path is another kind of file; [`ServerError::Bind`] otherwise.
pub async fn bind(path: &Path, system: bool) -> Result<UnixListener, ServerError> {
    let bind_err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
            let mode = if system { 0o755 } else { 0o700 };
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(bind_err)?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(path.to_owned()));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let mode = if system { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets running requests end.
///
/// # Errors
/// I/O errors of the accept loop.
pub async fn serve(
    listener: UnixListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // The peer's uid goes into each request's log line (`api::observe`).
    let service = router.into_make_service_with_connect_info::<crate::api::observe::UnixPeer>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
