//! The supervisor's one error type, and a transport-neutral classification of it.

use crate::engine::EngineError;
use crate::store::StoreError;

/// Why a supervisor operation (`use`, `load`, `unload`, a re-plan, a config check) failed.
///
/// Transports pick their status from [`SupervisorError::kind`] (HTTP: `NotFound` → 404,
/// `Unusable` and `LoadFailed` → 422, `InvalidInput` → 400, `Unavailable` → 503, `Internal` →
/// 500), or match the wrapped [`StoreError`] / [`EngineError`] for finer answers.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The model store refused the name (unknown, not present, truncated, does not fit).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine refused or failed the load (the previous model serves again), or is shutting
    /// down.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Choosing what to serve failed: the store could not scan or the hardware probe failed. The
    /// message is the store's own (`failed to probe the hardware: …`).
    #[error("{0}")]
    Choose(StoreError),
    /// The config file would be rejected; the message names the file, line and key (`invalid
    /// config PATH: …`, `failed to read config PATH: …`).
    #[error("{0}")]
    Config(String),
    /// A blocking task of the supervisor (a store scan) did not finish (it panicked or r1d is
    /// stopping).
    #[error("failed to run the model store's scan: {0}")]
    Task(String),
}

/// What kind of failure a [`SupervisorError`] is, without any transport's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named model is not known or not on disk.
    NotFound,
    /// The model is known but cannot be served here (truncated, does not fit, split files, an
    /// ONNX folder to pull).
    Unusable,
    /// The model was tried and failed to load; the previous one serves again.
    LoadFailed,
    /// The request (a config file) is invalid.
    InvalidInput,
    /// r1d cannot do it now (busy, shutting down, a probe that failed); retrying may work.
    Unavailable,
    /// A bug or an unexpected failure inside r1d.
    Internal,
}

impl SupervisorError {
    /// The classification transports map to their status codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SupervisorError::Store(
                StoreError::Unknown(_)
                | StoreError::UnknownRemote { .. }
                | StoreError::NotPresent { .. },
            ) => ErrorKind::NotFound,
            SupervisorError::Store(StoreError::Probe(_)) => ErrorKind::Internal,
            SupervisorError::Store(_) => ErrorKind::Unusable,
            SupervisorError::Engine(
                EngineError::NoModel { .. } | EngineError::LoadFailed { .. },
            ) => ErrorKind::LoadFailed,
            SupervisorError::Engine(EngineError::InvalidRequest(_)) => ErrorKind::InvalidInput,
            SupervisorError::Engine(_) | SupervisorError::Choose(_) => ErrorKind::Unavailable,
            SupervisorError::Config(_) => ErrorKind::InvalidInput,
            SupervisorError::Task(_) => ErrorKind::Internal,
        }
    }

    /// For [`ErrorKind::LoadFailed`]: the engine's reason alone (which file failed, why, and what
    /// serves now), without the `no model is loaded:` prefix; otherwise the whole message.
    pub fn reason(&self) -> String {
        match self {
            SupervisorError::Engine(
                EngineError::NoModel { reason } | EngineError::LoadFailed { reason },
            ) => reason.clone(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let cases: Vec<(SupervisorError, ErrorKind, &str)> = vec![
            (
                StoreError::Unknown("x".into()).into(),
                ErrorKind::NotFound,
                "no model named \"x\"",
            ),
            (
                StoreError::NotPresent {
                    name: "deepseek-r1:7b".into(),
                }
                .into(),
                ErrorKind::NotFound,
                "deepseek-r1:7b is not present",
            ),
            (
                StoreError::Probe("no /proc".into()).into(),
                ErrorKind::Internal,
                "failed to probe the hardware: no /proc",
            ),
            (
                StoreError::Unusable {
                    name: "auto".into(),
                    reason: "none".into(),
                }
                .into(),
                ErrorKind::Unusable,
                "auto cannot be served: none",
            ),
            (
                EngineError::LoadFailed {
                    reason: "b failed".into(),
                }
                .into(),
                ErrorKind::LoadFailed,
                "b failed",
            ),
            (
                EngineError::ShuttingDown.into(),
                ErrorKind::Unavailable,
                "r1d is shutting down",
            ),
            (
                SupervisorError::Choose(StoreError::Probe("gone".into())),
                ErrorKind::Unavailable,
                "failed to probe the hardware: gone",
            ),
            (
                SupervisorError::Config("invalid config /x.toml: bad key".into()),
                ErrorKind::InvalidInput,
                "invalid config /x.toml: bad key",
            ),
        ];
        for (e, kind, message) in cases {
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.to_string().starts_with(message), "{e}");
        }
        let e: SupervisorError = EngineError::NoModel {
            reason: "why".into(),
        }
        .into();
        assert_eq!(e.reason(), "why");
    }
}
