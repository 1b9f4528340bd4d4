//! The one HTTP error mapping, and the one request-body parser.
//!
//! Every error type the routes meet ([`EngineError`], [`StoreError`], [`ControlError`]) becomes an
//! [`ApiError`] here, once: its HTTP status, a machine code, the message, and `Retry-After` when a
//! retry is likely to succeed. Route families only choose the body [`Shape`]: the OpenAI error
//! object, Ollama's `{"error": …}`, or the native `{"error": …, "code": …}`; the status and the
//! `Retry-After` header are the same for all of them.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::control::ControlError;
use crate::engine::EngineError;
use crate::store::StoreError;

/// The `Retry-After` of a full queue (seconds): a queued answer usually frees a place soon.
pub const BUSY_RETRY_AFTER_S: u64 = 1;

/// An error as HTTP answers it, whatever the route family.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A machine-readable code (`model_not_loaded`, `busy`, `invalid_request`, …).
    pub code: &'static str,
    /// The human-readable message (lowercase, naming the file, field or limit).
    pub message: String,
    /// The request field at fault (OpenAI's `param`), e.g. `messages[0].role`.
    pub param: Option<String>,
    /// Seconds after which a retry is likely to be served (the `Retry-After` header).
    pub retry_after: Option<u64>,
}

/// The body shape of a route family's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"error": {"message", "type", "param", "code"}}` (`/v1/*`).
    OpenAi,
    /// `{"error": "…"}` (`/api/*`).
    Ollama,
    /// `{"error": "…", "code": "…"}` (`/r1/*`, `/health`).
    Native,
}

impl ApiError {
    /// An error of `status` with `code` and `message`, no field and no `Retry-After`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// 400: the request (or the field `param`, when known) is invalid.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            param: param.map(str::to_owned),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
        }
    }

    /// 404: the requested model is not the one served (field `model`).
    pub fn model_not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some("model".into()),
            ..ApiError::new(StatusCode::NOT_FOUND, "model_not_found", message)
        }
    }

    /// 401: a TCP listener that needs an API key got none, or another one.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
    }

    /// 404: no route for this path.
    pub fn unknown_route(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "unknown_url", message)
    }

    /// 405: a known route called with the wrong method.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    fn with_param(mut self, param: &str) -> ApiError {
        self.param = Some(param.to_owned());
        self
    }

    fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// The error's body in `shape` (also what a stream ends with when an answer fails midway).
    pub fn body(&self, shape: Shape) -> Value {
        match shape {
            Shape::OpenAi => serde_json::json!({
                "error": {
                    "message": self.message,
                    // OpenAI's two types: the client's fault or the server's.
                    "type": if self.status.is_client_error() {
                        "invalid_request_error"
                    } else {
                        "server_error"
                    },
                    "param": self.param,
                    "code": self.code,
                }
            }),
            Shape::Ollama => serde_json::json!({ "error": self.message }),
            Shape::Native => serde_json::json!({ "error": self.message, "code": self.code }),
        }
    }

    /// The response: the status, `Retry-After` when set, and the body in `shape`.
    pub fn respond(&self, shape: Shape) -> Response {
        let mut response = (self.status, Json(self.body(shape))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let message = e.to_string();
        let unavailable = |code| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, &message);
        match e {
            EngineError::NoModel { .. } => unavailable("model_not_loaded"),
            EngineError::ContextExceeded { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "context_length_exceeded", &message)
                    .with_param("messages")
            }
            EngineError::InvalidRequest(ref m) => {
                // The engine's refusals of one field start with its name ("logprobs: …").
                let param = m.split_once(": ").map(|(p, _)| p).filter(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.[]".contains(c))
                });
                ApiError::invalid(param, message)
            }
            EngineError::Busy(_) => unavailable("busy").with_retry_after(BUSY_RETRY_AFTER_S),
            EngineError::ShuttingDown => unavailable("shutting_down"),
            EngineError::Preempted { .. } => unavailable("model_swapped"),
            EngineError::Unavailable { retry_after_s, .. } => {
                unavailable("model_loading").with_retry_after(retry_after_s)
            }
            EngineError::LoadFailed { .. } => load_failed(message),
            EngineError::Backend(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "backend_error", message)
            }
            // A gateway's statuses (RFC 9110, 15.6.3 and 15.6.5): the upstream answered badly
            // or not at all, or not in time.
            EngineError::Upstream { timeout: false, .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
            }
            EngineError::Upstream { timeout: true, .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", message)
            }
        }
    }
}

fn load_failed(message: String) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "model_load_failed",
        message,
    )
    .with_param("model")
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let (status, code) = match &e {
            StoreError::Unknown(_) | StoreError::UnknownRemote { .. } => {
                (StatusCode::NOT_FOUND, "model_not_found")
            }
            StoreError::NotPresent { .. } => (StatusCode::NOT_FOUND, "model_not_present"),
            StoreError::Unusable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "model_unusable"),
            StoreError::DoesNotFit { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "does_not_fit"),
            StoreError::Split(_) | StoreError::OnnxFolder(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "not_pullable")
            }
            StoreError::Probe(_) => (StatusCode::INTERNAL_SERVER_ERROR, "hardware_probe_failed"),
            StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
            StoreError::ReadOnly { .. } => (StatusCode::FORBIDDEN, "read_only_store"),
            StoreError::Ambiguous { .. } => (StatusCode::BAD_REQUEST, "ambiguous_model"),
            StoreError::InUse { .. } => (StatusCode::CONFLICT, "model_in_use"),
            StoreError::RemoveFailed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "remove_failed"),
        };
        ApiError::new(status, code, e.to_string()).with_param("model")
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        match e {
            ControlError::InvalidArgument(m) => ApiError::invalid(None, m),
            ControlError::LoadFailed(m) => load_failed(m),
            ControlError::ConfigRejected(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "config_rejected", m)
            }
            ControlError::Engine(e) => e.into(),
            ControlError::Store(e) => e.into(),
            e @ ControlError::Probe(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "hardware_probe_failed",
                e.to_string(),
            ),
            e @ ControlError::NotSupported { .. } => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_supported", e.to_string())
            }
            ControlError::PermissionDenied(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", m)
            }
            ControlError::Internal(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", m)
            }
        }
    }
}

/// A request body as axum read it: a body too large or unreadable is an error of the route
/// family's shape too.
pub type Body = Result<Bytes, BytesRejection>;

/// Parses a JSON request body; the error names the field at fault, e.g. `invalid request body:
/// messages[0].role: invalid type: integer `1`, expected a string at line 1 column 30`
/// (with the field as `param`).
///
/// # Errors
/// axum's rejection (its status, e.g. 413), or 400 `invalid_request`.
pub fn parse<T: serde::de::DeserializeOwned>(body: &Body) -> Result<T, ApiError> {
    let bytes = body.as_ref().map_err(|rejection| {
        ApiError::new(rejection.status(), "invalid_body", rejection.body_text())
    })?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // Top-level fields the request type does not know: a typo (`max_token`) or a feature r1d
    // does not have must not be a 200 that silently drops it (OpenAI answers 400 too).
    let mut unknown: Vec<String> = Vec::new();
    let mut track = |path: serde_ignored::Path<'_>| {
        if let serde_ignored::Path::Map { parent, key } = path {
            if matches!(parent, serde_ignored::Path::Root) {
                unknown.push(key.clone());
            }
        }
    };
    let ignored = serde_ignored::Deserializer::new(&mut de, &mut track);
    let value: T = serde_path_to_error::deserialize(ignored).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        ApiError::invalid(param.as_deref(), format!("invalid request body: {e}"))
    })?;
    if let Some(field) = unknown
        .iter()
        .find(|f| !HARMLESS_FIELDS.contains(&f.as_str()))
    {
        return Err(ApiError::invalid(
            Some(field),
            format!("unknown field `{field}`: r1d does not implement it (a misspelt field name?)"),
        ));
    }
    Ok(value)
}

/// Request fields r1d accepts without acting on them because they do not change the answer:
/// bookkeeping for the caller or the provider (OpenAI's `user`, `metadata`, `store`,
/// `service_tier`, `prompt_cache_key`, `safety_identifier`, and `prediction`, which only speeds
/// up an answer it would match; Ollama's `keep_alive`).
pub const HARMLESS_FIELDS: [&str; 8] = [
    "prediction",
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "keep_alive",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_top_level_field_is_refused_by_name_and_bookkeeping_fields_are_not() {
        #[derive(serde::Deserialize, Debug)]
        struct Req {
            #[allow(dead_code)]
            max_tokens: Option<u32>,
        }
        let body = |s: &str| -> Body { Ok(Bytes::from(s.to_owned())) };
        let e = parse::<Req>(&body(r#"{"max_token": 3}"#)).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("max_token"));
        assert!(
            e.message.contains("unknown field `max_token`"),
            "{}",
            e.message
        );
        assert!(parse::<Req>(&body(r#"{"max_tokens": 3, "user": "u", "metadata": {}}"#)).is_ok());
    }

    #[test]
    fn busy_and_loading_get_retry_after_in_every_shape() {
        for shape in [Shape::OpenAi, Shape::Ollama, Shape::Native] {
            let r = ApiError::from(EngineError::Busy(3)).respond(shape);
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()[header::RETRY_AFTER], "1");
            let r = ApiError::from(EngineError::Unavailable {
                what: "loaded",
                retry_after_s: 10,
            })
            .respond(shape);
            assert_eq!(r.headers()[header::RETRY_AFTER], "10");
        }
        let r = ApiError::from(EngineError::ShuttingDown).respond(Shape::Native);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn shapes_carry_the_same_message() {
        let e = ApiError::from(EngineError::ContextExceeded {
            prompt_tokens: 9,
            context_length: 8,
        });
        let openai = e.body(Shape::OpenAi);
        assert_eq!(openai["error"]["code"], "context_length_exceeded");
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        assert_eq!(openai["error"]["param"], "messages");
        assert_eq!(e.body(Shape::Ollama)["error"], openai["error"]["message"]);
        assert_eq!(e.body(Shape::Native)["code"], "context_length_exceeded");
        let e = ApiError::from(EngineError::Backend("boom".into()));
        assert_eq!(e.body(Shape::OpenAi)["error"]["type"], "server_error");
    }

    #[test]
    fn a_load_that_failed_is_422_from_every_source() {
        let engine = ApiError::from(EngineError::LoadFailed {
            reason: "disk on fire".into(),
        });
        let control = ApiError::from(ControlError::LoadFailed("disk on fire".into()));
        assert_eq!(engine, control);
        assert_eq!(engine.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn store_errors_name_missing_models_404() {
        let e = ApiError::from(ControlError::Store(StoreError::Unknown("x".into())));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = ApiError::from(StoreError::Probe("no /proc".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn the_parser_names_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct M {
            role: String,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct R {
            messages: Vec<M>,
        }
        let body: Body = Ok(Bytes::from_static(br#"{"messages": [{"role": 1}]}"#));
        let e = parse::<R>(&body).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        assert!(
            e.message
                .starts_with("invalid request body: messages[0].role: invalid type"),
            "{}",
            e.message
        );
    }
}
