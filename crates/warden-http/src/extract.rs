//! Extractors whose rejections answer in the gateway's JSON error shape, never axum's plain
//! text: a malformed body, path or query is a 400 with `{"success": false, ...}`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The `{token}` segment of the path. Validated by the supervisor, which answers 400 for an
/// invalid token.
#[derive(Debug, Clone)]
pub struct TokenPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for TokenPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(token)| Self(token))
            .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// The query string, deserialized.
#[derive(Debug, Clone)]
pub struct QueryOf<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
    }
}

/// A JSON body. An empty body reads as `{}`, so routes whose fields are all optional work
/// with a bare `curl -X POST`, as the legacy routes did. The content type is not checked:
/// `curl -d '{...}'` without `-H 'Content-Type: application/json'` works too.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            let status = e.status();
            let mut error =
                ApiError::bad_request(format!("cannot read the body: {}", e.body_text()));
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                error.status = status;
                error.body.code = "too_large".into();
            }
            error
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(Self)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}
