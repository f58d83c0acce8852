//! The one error shape every route answers with, in the legacy gateway's field names.
//!
//! ```json
//! {"success": false, "error": "Session not found", "code": "not_found", "message": "no session shop1"}
//! ```
//!
//! `error` is what the legacy frontend shows; `code` is for programs (the control protocol's
//! codes plus `unauthorized`, `forbidden_host`, `cross_origin`, `no_route`,
//! `method_not_allowed`, `no_qr`, `too_large`); `message` says what happened and what to do next.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use warden_control::protocol::{ErrorBody, ErrorCode};
use warden_core::Error;

/// A failed request: its status, and the JSON body that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: ErrorJson,
}

/// The JSON body of every error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorJson {
    /// Always `false`.
    pub success: bool,
    /// The legacy gateway's short error text (`"Session not found"` for an unknown token).
    pub error: String,
    /// A machine-readable code.
    pub code: String,
    /// What happened and what to do next.
    pub message: String,
    /// With `cooldown`: the seconds to wait (also in the `Retry-After` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error whose legacy `error` text is its message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            status,
            body: ErrorJson {
                success: false,
                error: message.clone(),
                code: code.to_owned(),
                message,
                retry_after_secs: None,
            },
        }
    }

    /// A control-protocol error, such as another node's answer: its status, code and
    /// message.
    pub fn from_body(body: &ErrorBody) -> Self {
        Self::new(
            status_of(body.code),
            &code_name(body.code),
            body.message.clone(),
        )
    }

    /// A malformed request: 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A missing or wrong API key: 401.
    pub fn unauthorized() -> Self {
        let mut error = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: send `Authorization: Bearer KEY` or `X-Api-Key: KEY`",
        );
        error.body.error = "Unauthorized".into();
        error
    }

    /// No route has this path: 404.
    pub fn no_route(method: &str, path: &str) -> Self {
        let mut error = Self::new(
            StatusCode::NOT_FOUND,
            "no_route",
            format!("no route {method} {path}; see GET /openapi.json for every route"),
        );
        error.body.error = "Not found".into();
        error
    }

    /// The path exists with other methods: 405.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} does not take {method}; see GET /openapi.json for every route"),
        )
    }
}

/// A control-protocol error code as it is written (`not_found`).
fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "internal".into())
}

/// The status a control-protocol error code maps to.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::InvalidToken => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Cooldown => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable | ErrorCode::Capacity => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let body = ErrorBody::from(&error);
        let code = code_name(body.code);
        // The core speaks the CLI's words; over HTTP the override is a query parameter.
        let message = body
            .message
            .replace("pass --force", "add ?force=true")
            .replace("restart --force", "restart with ?force=true");
        let legacy = match error {
            Error::NotFound(_) => "Session not found".to_owned(),
            Error::InvalidToken(_) => "Invalid session token".to_owned(),
            _ => message.clone(),
        };
        Self {
            status: status_of(body.code),
            body: ErrorJson {
                success: false,
                error: legacy,
                code,
                message,
                retry_after_secs: body.retry_after_secs,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.body.retry_after_secs;
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = (self.status, axum::Json(self.body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"warden\""),
            );
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use warden_core::Token;

    use super::*;

    fn check(error: Error, status: u16, code: &str, legacy: &str) {
        let api = ApiError::from(error);
        assert_eq!(api.status.as_u16(), status, "{api:?}");
        assert_eq!(api.body.code, code, "{api:?}");
        assert!(api.body.error.contains(legacy), "{api:?}");
        assert!(!api.body.success);
    }

    #[test]
    fn core_errors_map_to_statuses_and_legacy_text() {
        let token = Token::parse("shop1").unwrap();
        check(
            Error::NotFound(token.clone()),
            404,
            "not_found",
            "Session not found",
        );
        check(
            Token::parse("bad token!").map(|_| ()).unwrap_err().into(),
            400,
            "invalid_token",
            "Invalid session token",
        );
        check(
            Error::AlreadyExists(token.clone()),
            409,
            "conflict",
            "already exists",
        );
        check(
            Error::Cooldown {
                token: token.clone(),
                retry_after: Duration::from_millis(2500),
            },
            429,
            "cooldown",
            "add ?force=true",
        );
        check(
            Error::Unavailable("x".into()),
            503,
            "unavailable",
            "unavailable",
        );
        check(
            Error::Config("x".into()),
            400,
            "bad_request",
            "invalid configuration",
        );
    }

    #[test]
    fn cooldown_sets_retry_after() {
        let response = ApiError::from(Error::Cooldown {
            token: Token::parse("t").unwrap(),
            retry_after: Duration::from_secs(24),
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "24");
    }
}
