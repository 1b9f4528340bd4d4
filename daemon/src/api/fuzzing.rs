//! Entry points for the fuzz targets in `fuzz/` (compiled with the `fuzzing` feature, and for the
//! unit tests; not part of r1d's API otherwise): the checks each route makes on a request body
//! before it needs the engine, so a hostile body can be tried millions of times without a model.

use axum::body::Bytes;
use axum::http::StatusCode;

/// A route whose request body [`check_request`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /api/chat`.
    OllamaChat,
    /// `POST /api/generate`.
    OllamaGenerate,
    /// `POST /r1/load` (its body only; the options are checked by the control core).
    Load,
    /// `POST /r1/use` and `POST /r1/pull` (the same body).
    Model,
}

/// Every [`Route`], for a fuzz target to pick one by an input byte.
pub const ROUTES: [Route; 6] = [
    Route::ChatCompletions,
    Route::Completions,
    Route::OllamaChat,
    Route::OllamaGenerate,
    Route::Load,
    Route::Model,
];

/// Parses `body` as `route` does and runs its checks that need no engine (unimplemented fields,
/// sampling ranges, roles, options); `Err` with the status of the refusal.
pub fn check_request(route: Route, body: &[u8]) -> Result<(), StatusCode> {
    let body: super::error::Body = Ok(Bytes::copy_from_slice(body));
    let status = |r: axum::response::Response| r.status();
    match route {
        Route::ChatCompletions => super::openai::check_body(false, &body).map_err(status),
        Route::Completions => super::openai::check_body(true, &body).map_err(status),
        Route::OllamaChat => super::ollama::check_body(false, &body).map_err(status),
        Route::OllamaGenerate => super::ollama::check_body(true, &body).map_err(status),
        Route::Load => super::error::parse::<r1d_client::wire::LoadRequest>(&body)
            .map(drop)
            .map_err(|e| e.status),
        Route::Model => super::error::parse::<r1d_client::wire::ModelRequest>(&body)
            .map(drop)
            .map_err(|e| e.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_body_passes_and_a_hostile_one_is_a_400_on_every_route() {
        let valid: [(Route, &str); 6] = [
            (
                Route::ChatCompletions,
                r#"{"model":"r1","messages":[{"role":"user","content":"hi"}],"temperature":0.6}"#,
            ),
            (Route::Completions, r#"{"prompt":"hi","max_tokens":4}"#),
            (
                Route::OllamaChat,
                r#"{"model":"r1","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":4}}"#,
            ),
            (
                Route::OllamaGenerate,
                r#"{"model":"r1","prompt":"hi","think":"high"}"#,
            ),
            (Route::Load, r#"{"path":"/m.gguf","context_length":2048}"#),
            (Route::Model, r#"{"model":"auto"}"#),
        ];
        for (route, body) in valid {
            assert_eq!(check_request(route, body.as_bytes()), Ok(()), "{route:?}");
        }
        let hostile: [(Route, &str); 6] = [
            (
                Route::ChatCompletions,
                r#"{"messages":[{"role":"root","content":"hi"}]}"#,
            ),
            (Route::Completions, r#"{"prompt":[]}"#),
            (
                Route::OllamaChat,
                r#"{"model":"r1","messages":[],"options":{"stop":7}}"#,
            ),
            (Route::OllamaGenerate, r#"{"model":"r1","think":"max"}"#),
            (Route::Load, r#"{"path":7}"#),
            (Route::Model, "\u{0}"),
        ];
        for (route, body) in hostile {
            assert_eq!(
                check_request(route, body.as_bytes()),
                Err(StatusCode::BAD_REQUEST),
                "{route:?} {body}"
            );
        }
    }
}
