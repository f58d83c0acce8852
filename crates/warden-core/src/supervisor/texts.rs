//! What the supervisor says about the machine's decisions: reasons, refusals, log lines.

use std::time::SystemTime;

use crate::error::Error;
use crate::machine::{CleanupKind, Note, Reason, Refusal};
use crate::state::SessionState;
use crate::token::Token;

use super::effects::Carry;

/// The text of a reason.
pub(super) fn reason_text(reason: &Reason, current: Option<&str>, carry: &Carry) -> Option<String> {
    let error = || {
        carry
            .error
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    match reason {
        Reason::None => None,
        Reason::Text(text) => Some(text.clone()),
        Reason::Keep => current.map(str::to_string),
        Reason::Capacity(limit) => Some(format!("capacity: {limit} sessions are live")),
        Reason::CredentialsDeleted => {
            let why = current.unwrap_or("logged_out");
            Some(if why.ends_with("credentials deleted") {
                why.to_string()
            } else {
                format!("{why}; credentials deleted")
            })
        }
        Reason::CleanupFailed(CleanupKind::Credentials) => {
            Some(format!("credentials not deleted: {}", error()))
        }
        Reason::CleanupFailed(CleanupKind::Everything) => {
            Some(format!("delete failed: {}", error()))
        }
    }
}

/// The error a caller gets for a refusal.
pub(super) fn refusal_error(
    token: &Token,
    state: SessionState,
    banned_until: Option<SystemTime>,
    refusal: &Refusal,
) -> Error {
    let conflict = |state, message: String| Error::Conflict {
        token: token.clone(),
        state,
        message,
    };
    match refusal {
        Refusal::NotFound => Error::NotFound(token.clone()),
        Refusal::BeingDeleted => conflict(state, "it is being deleted".into()),
        Refusal::BannedStart { retry_scheduled } => {
            let until = banned_until
                .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                .unwrap_or_default();
            // Only a session that is meant to run has its retry scheduled at the expiry.
            let then = if *retry_scheduled {
                "it will be retried then"
            } else {
                "start it again then"
            };
            conflict(
                SessionState::Banned,
                format!("it is banned until {until}; {then} (restart --force overrides)"),
            )
        }
        Refusal::BannedRestart => conflict(
            SessionState::Banned,
            "it is banned; pass --force to try anyway".into(),
        ),
        Refusal::Capacity(limit) => Error::Capacity { limit: *limit },
        Refusal::Cooldown(retry_after) => Error::Cooldown {
            token: token.clone(),
            retry_after: *retry_after,
        },
        Refusal::NotHeld => not_held(token, state),
        Refusal::NoQrNow { paired } => {
            let message = if *paired {
                "it is linked to an account, so it shows no QR code; log out first to link another phone"
            } else {
                "a new QR code can be asked for while one is shown, or after it expired"
            };
            conflict(state, message.into())
        }
    }
}

/// The answer about a session this node no longer holds (in a cluster, another node runs it).
pub(super) fn not_held(token: &Token, state: SessionState) -> Error {
    Error::Conflict {
        token: token.clone(),
        state,
        message: "this node no longer holds it: another node of the cluster runs it now".into(),
    }
}

/// Logs a decision of the machine (the legacy gateway's log lines included).
pub(super) fn log(token: &Token, note: &Note) {
    match note {
        Note::ShouldReconnect(should) => {
            tracing::info!(token = %token, "Should reconnect: {should}")
        }
        Note::RetryIn { attempt, delay } => {
            tracing::info!(token = %token, attempt, delay = ?delay, "Reconnect attempts: {attempt}")
        }
        Note::Failed(why) => tracing::error!(token = %token, reason = %why, "session failed"),
        Note::LoggedOut => {
            tracing::warn!(token = %token, "session logged out; deleting its credentials")
        }
        Note::Replaced => {
            tracing::warn!(token = %token, "another client took over this account; not reconnecting")
        }
        Note::Banned(expires_in) => {
            tracing::warn!(token = %token, expires_in = ?expires_in, "session temporarily banned")
        }
        Note::BanExpired => tracing::info!(token = %token, "ban expired; reconnecting"),
        Note::QuarantineOver => {
            tracing::info!(token = %token, "retrying a failed session after its quarantine")
        }
        Note::Stable => {
            tracing::info!(token = %token, "connection stable; Reconnect attempts: 0")
        }
        Note::WaitingForRoom(limit) => {
            tracing::warn!(token = %token, limit, "at capacity; the session waits for room")
        }
    }
}
