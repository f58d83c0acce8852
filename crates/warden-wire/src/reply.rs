//! [`Reply`]: one reply line, a result or an [`ErrorBody`] with its [`ErrorCode`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One reply line: `ok` with a `result`, or not `ok` with an `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's id.
    pub id: Value,
    /// Whether the operation succeeded.
    pub ok: bool,
    /// What it returned (`ok` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// What went wrong (not `ok` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    /// A success carrying `result`.
    pub fn ok(id: Value, result: impl Serialize) -> Self {
        match serde_json::to_value(result) {
            Ok(result) => Self {
                id,
                ok: true,
                result: Some(result),
                error: None,
            },
            Err(e) => Self::err(
                id,
                ErrorBody::new(ErrorCode::Internal, format!("cannot encode the reply: {e}")),
            ),
        }
    }

    /// A failure.
    pub fn err(id: Value, error: ErrorBody) -> Self {
        Self {
            id,
            ok: false,
            result: None,
            error: Some(error),
        }
    }
}

/// Machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, unknown op, missing or mistyped fields, a line too long.
    BadRequest,
    /// The token is not `[A-Za-z0-9_-]{1,64}`.
    InvalidToken,
    /// No such session.
    NotFound,
    /// The operation does not fit the session's state (or the token is taken).
    Conflict,
    /// A restart too soon after the last start; see `retry_after_secs`.
    Cooldown,
    /// A start refused because the daemon already runs as many live sessions as its capacity
    /// (derived from its file-descriptor limit, or `[daemon] max_sessions`); nothing was
    /// opened. Stop a session, or raise the limit.
    Capacity,
    /// The supervisor is shutting down or did not answer.
    Unavailable,
    /// Something broke inside the daemon.
    Internal,
}

/// An error reply's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of error.
    pub code: ErrorCode,
    /// What happened and what to do, for people.
    pub message: String,
    /// With `cooldown`: the seconds to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl ErrorBody {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize)]
    struct DeletedView {
        deleted: String,
    }

    #[test]
    fn replies_have_the_documented_shape() {
        let ok = serde_json::to_value(Reply::ok(
            json!(7),
            DeletedView {
                deleted: "t".into(),
            },
        ))
        .unwrap();
        assert_eq!(ok, json!({"id": 7, "ok": true, "result": {"deleted": "t"}}));
        let mut body = ErrorBody::new(ErrorCode::Cooldown, "wait");
        body.retry_after_secs = Some(24);
        let err = serde_json::to_value(Reply::err(json!(8), body)).unwrap();
        assert_eq!(
            err,
            json!({"id": 8, "ok": false, "error": {"code": "cooldown", "message": "wait", "retry_after_secs": 24}})
        );
    }
}
