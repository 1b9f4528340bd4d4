//! The API key on TCP listeners (see [`crate::listen`]): a request without `Authorization:
//! Bearer KEY`, or with another key, gets 401 in its route family's error shape and never
//! reaches a handler. The Unix socket's router has no such layer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

use super::error::ApiError;
use crate::listen::ApiKey;

/// `router`, asking every request for `key`.
pub fn require_key(router: Router, key: ApiKey) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        Arc::new(key),
        check_key,
    ))
}

async fn check_key(State(key): State<Arc<ApiKey>>, request: Request, next: Next) -> Response {
    let presented = request.headers().get(header::AUTHORIZATION);
    // Ollama clients check `GET /` ("Ollama is running") before anything else, without a key:
    // it says nothing but that the server runs.
    let liveness = request.uri().path() == "/"
        && matches!(
            *request.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        );
    if liveness || presented.is_some_and(|v| key.accepts(v.as_bytes())) {
        return next.run(request).await;
    }
    let message = if presented.is_some() {
        "invalid API key (send the key of [server] api_key_file as `Authorization: Bearer KEY`)"
    } else {
        "this listener needs an API key: send `Authorization: Bearer KEY`"
    };
    let mut response =
        ApiError::unauthorized(message).respond(super::http::shape_of(request.uri()));
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    // Refused before the observing layer: counted and logged here (the path and the client's
    // address, never what it presented).
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "-".to_owned(), |c| c.0.to_string());
    metrics::counter!(crate::telemetry::HTTP_REQUESTS, "route" => "unauthorized", "status" => "401")
        .increment(1);
    tracing::warn!(
        target: "r1d::request",
        path = request.uri().path(),
        status = 401,
        client = %format_args!("addr={client}"),
        "refused: {}",
        if presented.is_some() { "wrong API key" } else { "no API key" }
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt as _;

    async fn call(path: &str, auth: Option<&str>) -> (StatusCode, serde_json::Value) {
        let router = Router::new()
            .route("/v1/models", axum::routing::get(|| async { "ok" }))
            .route("/api/tags", axum::routing::get(|| async { "ok" }))
            .route("/health", axum::routing::get(|| async { "ok" }))
            .route("/", axum::routing::get(|| async { "Ollama is running" }));
        let router = require_key(router, ApiKey::new("k1").unwrap());
        let mut request = Request::builder().uri(path);
        if let Some(a) = auth {
            request = request.header(header::AUTHORIZATION, a);
        }
        let response = router
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn ollamas_liveness_check_needs_no_key_and_nothing_else_is_open() {
        assert_eq!(call("/", None).await.0, StatusCode::OK);
        assert_eq!(call("/", Some("Bearer wrong")).await.0, StatusCode::OK);
        assert_eq!(call("/api/tags", None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call("/health", None).await.0, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_wrong_or_missing_key_is_401_in_the_family_shape() {
        assert_eq!(
            call("/v1/models", Some("Bearer k1")).await.0,
            StatusCode::OK
        );
        let (status, body) = call("/v1/models", Some("Bearer k2")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert!(!body.to_string().contains("k1"));
        let (status, body) = call("/api/tags", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"].is_string());
        let (_, body) = call("/health", None).await;
        assert_eq!(body["code"], "invalid_api_key");
    }
}
