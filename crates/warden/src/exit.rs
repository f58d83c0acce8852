//! Exit codes of the client commands, so scripts can tell failures apart.

use std::process::ExitCode;

use warden_control::{ClientError, ErrorCode};

/// The command did what was asked.
pub const OK: u8 = 0;
/// Something else went wrong (an internal error, an unexpected answer).
pub const FAILED: u8 = 1;
/// No such session.
pub const NOT_FOUND: u8 = 3;
/// The daemon refused: a bad request, an invalid token, a conflict or a cooldown.
pub const REFUSED: u8 = 4;
/// The daemon is not running (or not answering).
pub const NOT_RUNNING: u8 = 5;
/// `start` waited, and the session ended in a state that needs attention instead of connecting.
pub const NOT_CONNECTED: u8 = 6;
/// The daemon is at capacity: it already runs as many live sessions as it may (its
/// file-descriptor limit, or `[daemon] max_sessions`); nothing was started.
pub const AT_CAPACITY: u8 = 7;

/// The exit code for a failed request.
pub fn for_error(error: &ClientError) -> ExitCode {
    ExitCode::from(match error {
        ClientError::NotRunning { .. } => NOT_RUNNING,
        ClientError::Refused(body) => match body.code {
            ErrorCode::NotFound => NOT_FOUND,
            ErrorCode::BadRequest
            | ErrorCode::InvalidToken
            | ErrorCode::Conflict
            | ErrorCode::Cooldown => REFUSED,
            ErrorCode::Capacity => AT_CAPACITY,
            ErrorCode::Unavailable => NOT_RUNNING,
            ErrorCode::Internal => FAILED,
        },
        ClientError::Io(_) | ClientError::Closed | ClientError::Protocol(_) => FAILED,
    })
}
