//! The operator's operations, and the restore at start-up.

use crate::start_rule::{self, StartDecision, StartFacts};
use crate::state::{Desired, SessionState};

use super::builder::Builder;
use super::types::{
    CleanupKind, Closing, Context, Effect, Phase, Reason, Refusal, Step, Then, View,
};

pub(super) fn start(mut b: Builder, view: &View, ctx: &Context) -> Step {
    // A ban holds until its expiry; past it (or with none known), a start goes ahead.
    if view.ban_holds() {
        return b.refuse(Refusal::BannedStart {
            retry_scheduled: view.retry_scheduled,
        });
    }
    let at_rest = matches!(b.phase, Phase::Idle | Phase::Cleaning { .. });
    if at_rest {
        if let Some(limit) = ctx.full {
            return b.refuse(Refusal::Capacity(limit));
        }
        let facts = StartFacts {
            state: view.state,
            retry_scheduled: view.retry_scheduled,
            last_unpark: view.last_unpark,
            now: ctx.now,
            cooldown: ctx.cooldown,
        };
        match start_rule::decide(facts) {
            StartDecision::KeepSchedule => {
                b.push(Effect::Reply);
                return b.done();
            }
            StartDecision::TooSoon(after) => return b.refuse(Refusal::Cooldown(after)),
            StartDecision::Connect { unparks } => {
                if unparks {
                    b.push(Effect::MarkUnpark);
                }
            }
        }
    }
    let mut b = match defer_connect(b, view) {
        Ok(step) => return step,
        Err(b) => b,
    };
    b.push(Effect::SetDesired(Desired::Running));
    b.push(Effect::UseOptions);
    match &b.phase {
        Phase::Live {
            admitted,
            closing: Some(closing),
        } => {
            // Being stopped: start again once it is gone.
            if matches!(closing, Closing::Stop { .. } | Closing::Reap { .. }) {
                b.phase = Phase::Live {
                    admitted: *admitted,
                    closing: Some(Closing::Reconnect),
                };
            }
            b.push(Effect::Wait);
        }
        Phase::Live { closing: None, .. } | Phase::Queued => b.push(Effect::Reply),
        Phase::Idle | Phase::Cleaning { .. } => {
            if view.state.is_parked() {
                // An operator start is the way out of a parked state (a ban only once it
                // expired).
                b.push(Effect::ResetAttempts);
                b.push(Effect::ClearBan);
            }
            b.push(Effect::CancelRetry);
            b.connect(ctx, false);
            b.push(Effect::Reply);
        }
    }
    b.done()
}

/// A connecting operation that must wait for (or cannot follow) a logout or a delete: the
/// finished step, or the builder back when it can go on.
fn defer_connect(mut b: Builder, view: &View) -> Result<Step, Builder> {
    if b.phase.closing_for_delete() {
        return Ok(b.refuse(Refusal::BeingDeleted));
    }
    // Credentials must be gone before a new link is made: finish (or redo) the deletion, then
    // connect for a new QR code.
    let waiting = match &b.phase {
        Phase::Live {
            admitted,
            closing: Some(Closing::Logout { .. }),
        } => Phase::Live {
            admitted: *admitted,
            closing: Some(Closing::Logout {
                then: Then::Connect,
            }),
        },
        Phase::Cleaning {
            kind: CleanupKind::Credentials,
            ..
        } => Phase::Cleaning {
            kind: CleanupKind::Credentials,
            then: Then::Connect,
        },
        Phase::Idle if view.state == SessionState::LoggedOut => {
            // Deleting is idempotent: a deletion that failed or was cut short is finished
            // before any login.
            b.push(Effect::SetDesired(Desired::Running));
            b.push(Effect::ResetAttempts);
            b.push(Effect::CancelRetry);
            b.push(Effect::Wait);
            b.begin_logout(None, Then::Connect);
            return Ok(b.done());
        }
        _ => return Err(b),
    };
    b.push(Effect::SetDesired(Desired::Running));
    b.push(Effect::ResetAttempts);
    b.push(Effect::Wait);
    b.phase = waiting;
    Ok(b.done())
}

pub(super) fn stop(mut b: Builder, view: &View, reason: String) -> Step {
    b.push(Effect::SetDesired(Desired::Stopped));
    b.cancel_pending();
    match &b.phase {
        Phase::Live { admitted, closing } => {
            let closing = match closing {
                Some(Closing::Delete) => Closing::Delete,
                Some(Closing::Logout { .. }) => Closing::Logout { then: Then::Rest },
                _ => Closing::Stop { reason },
            };
            b.phase = Phase::Live {
                admitted: *admitted,
                closing: Some(closing),
            };
            b.push(Effect::Close);
            b.push(Effect::Wait);
        }
        Phase::Cleaning { kind, .. } => {
            // The credentials go in any case; nothing follows them.
            b.phase = Phase::Cleaning {
                kind: *kind,
                then: Then::Rest,
            };
            b.push(Effect::Reply);
        }
        Phase::Idle | Phase::Queued => {
            // A logged-out session stays logged out: its credentials are gone either way.
            if view.state != SessionState::LoggedOut {
                b.push(Effect::SetState(
                    SessionState::Stopped,
                    Reason::Text(reason),
                ));
                b.push(Effect::ClearBan);
            }
            b.push(Effect::Reply);
        }
    }
    b.done()
}

/// Ends the live connection (if any) and starts a new one.
pub(super) fn reconnect(b: Builder, view: &View, ctx: &Context) -> Step {
    let mut b = match defer_connect(b, view) {
        Ok(step) => return step,
        Err(b) => b,
    };
    // A new connection links by QR code again unless a start asks for a pairing code.
    b.push(Effect::DefaultOptions);
    b.cancel_pending();
    match &b.phase {
        Phase::Live { admitted, .. } => {
            b.phase = Phase::Live {
                admitted: *admitted,
                closing: Some(Closing::Reconnect),
            };
            b.push(Effect::Close);
            b.push(Effect::Wait);
        }
        _ => {
            b.connect(ctx, false);
            b.push(Effect::Reply);
        }
    }
    b.done()
}

pub(super) fn logout(mut b: Builder) -> Step {
    b.push(Effect::SetDesired(Desired::Stopped));
    b.push(Effect::Wait);
    b.cancel_pending();
    match b.phase.clone() {
        Phase::Live { admitted, closing } => {
            let closing = match closing {
                Some(Closing::Delete) => Closing::Delete,
                _ => Closing::Logout { then: Then::Rest },
            };
            b.phase = Phase::Live {
                admitted,
                closing: Some(closing),
            };
            b.push(Effect::Close);
        }
        Phase::Cleaning { kind, .. } => {
            // Already under way; the caller is answered when it is done.
            b.push(Effect::SetState(
                SessionState::LoggedOut,
                Reason::Text("logged out by request".into()),
            ));
            b.push(Effect::ClearAccount);
            b.push(Effect::ResetAttempts);
            b.phase = Phase::Cleaning {
                kind,
                then: Then::Rest,
            };
        }
        Phase::Idle | Phase::Queued => {
            b.begin_logout(Some("logged out by request".into()), Then::Rest);
        }
    }
    b.done()
}

pub(super) fn delete(mut b: Builder) -> Step {
    b.push(Effect::Wait);
    b.cancel_pending();
    match &b.phase {
        Phase::Live { admitted, .. } => {
            b.phase = Phase::Live {
                admitted: *admitted,
                closing: Some(Closing::Delete),
            };
            b.push(Effect::Close);
        }
        Phase::Cleaning { kind, .. } => {
            b.phase = Phase::Cleaning {
                kind: *kind,
                then: Then::Delete,
            };
        }
        Phase::Idle | Phase::Queued => b.begin_delete(),
    }
    b.done()
}

pub(super) fn restore(mut b: Builder, view: &View, ctx: &Context) -> Step {
    if b.phase != Phase::Idle {
        return b.done();
    }
    if view.desired != Desired::Running {
        if view.state != SessionState::Stopped && !view.state.is_parked() {
            b.push(Effect::SetState(SessionState::Stopped, Reason::Keep));
        }
        return b.done();
    }
    match view.state {
        SessionState::Banned => {
            b.push(Effect::ScheduleRetry(view.ban_left.unwrap_or_default()));
        }
        SessionState::Failed => {
            if let Some(after) = ctx.retry_failed_after {
                b.push(Effect::ScheduleRetry(after));
            }
        }
        state if state.is_parked() => {}
        _ => b.connect(ctx, false),
    }
    b.done()
}
