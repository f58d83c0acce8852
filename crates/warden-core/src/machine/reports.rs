//! What the world reports: the connection's progress and end, and a cleanup's result.

use crate::lifecycle::DisconnectReason;
use crate::policy::{Decision, Outcome, Parked};
use crate::state::{Desired, SessionState};

use super::builder::Builder;
use super::types::{
    CleanupKind, Closing, Context, Effect, Note, Phase, Progress, Reason, Step, Then, View,
};

pub(super) fn on_progress(mut b: Builder, progress: Progress) -> Step {
    let Phase::Live {
        admitted,
        closing: None,
    } = b.phase
    else {
        return b.done(); // from a connection that is going
    };
    let (state, handshake_over) = match progress {
        Progress::Qr | Progress::PairCode => (SessionState::WaitingForScan, true),
        Progress::Paired => (SessionState::Pairing, false),
        Progress::Connected => (SessionState::Connected, true),
    };
    b.push(Effect::SetState(state, Reason::None));
    b.push(Effect::RecordProgress);
    if progress == Progress::Connected {
        b.push(Effect::StartStableTimer);
    }
    if handshake_over && admitted {
        // The handshake is over: the admission slot goes to the next in line.
        b.push(Effect::ReleaseAdmission);
        b.phase = Phase::Live {
            admitted: false,
            closing: None,
        };
    }
    b.done()
}

pub(super) fn on_end(
    mut b: Builder,
    view: &View,
    ctx: &Context,
    reason: DisconnectReason,
    policy: Outcome,
) -> Step {
    let Phase::Live { admitted, closing } = b.phase.clone() else {
        return b.done(); // not live: stale
    };
    if admitted {
        b.push(Effect::ReleaseAdmission);
    }
    b.push(Effect::ConnectionGone);
    b.phase = Phase::Idle;
    let mut closing = closing;
    if reason == DisconnectReason::LoggedOut
        && matches!(closing, Some(Closing::Stop { .. } | Closing::Reap { .. }))
    {
        // The phone logged the session out before our close: that is what happened, and the
        // credentials must go. The operator's stop is answered once they have.
        closing = Some(Closing::Logout { then: Then::Rest });
        b.push(Effect::SetDesired(Desired::Stopped));
    }
    match closing {
        Some(Closing::Stop { reason: why }) => {
            b.push(Effect::Log(Note::ShouldReconnect(false)));
            if let DisconnectReason::TemporarilyBanned { expires_in, .. } = &reason {
                // Stopped as asked, but the ban is remembered: a start before its end is
                // refused, and one after it goes ahead.
                b.push(Effect::BanFor(*expires_in));
                b.push(Effect::SetState(SessionState::Banned, Reason::Text(why)));
            } else if view.state != SessionState::LoggedOut {
                b.push(Effect::SetState(SessionState::Stopped, Reason::Text(why)));
                b.push(Effect::ClearBan);
            }
            b.push(Effect::AnswerWaiters);
        }
        Some(Closing::Reconnect) => {
            b.connect(ctx, false);
            b.push(Effect::AnswerWaiters);
        }
        Some(Closing::Reap { state, reason: why }) => {
            b.push(Effect::Log(Note::ShouldReconnect(false)));
            b.push(Effect::SetState(state, Reason::Text(why)));
            if state == SessionState::Failed
                && let Some(after) = ctx.retry_failed_after
            {
                b.push(Effect::ScheduleRetry(after));
            }
            b.push(Effect::AnswerWaiters);
        }
        Some(Closing::Logout { then }) => {
            let why = match reason {
                DisconnectReason::LoggedOut => reason.to_string(),
                _ => "logged out by request".into(),
            };
            b.begin_logout(Some(why), then);
        }
        Some(Closing::Delete) => b.begin_delete(),
        Some(Closing::Relinquish) => b.push(Effect::Release),
        None => apply_policy(&mut b, ctx, reason, policy),
    }
    b.done()
}

fn apply_policy(b: &mut Builder, ctx: &Context, reason: DisconnectReason, policy: Outcome) {
    if b.desired == Desired::Stopped {
        b.push(Effect::SetState(
            SessionState::Stopped,
            Reason::Text(reason.to_string()),
        ));
        return;
    }
    b.push(Effect::SetAttempts(policy.attempts));
    let should = !matches!(policy.decision, Decision::Park(_));
    b.push(Effect::Log(Note::ShouldReconnect(should)));
    let why = || Reason::Text(reason.to_string());
    match policy.decision {
        Decision::RestartNow => {
            b.push(Effect::CountRestart);
            b.connect(ctx, true);
        }
        Decision::RetryAfter { delay, attempt } => {
            b.push(Effect::Log(Note::RetryIn { attempt, delay }));
            b.push(Effect::CountRestart);
            b.push(Effect::SetState(SessionState::BackingOff, why()));
            b.push(Effect::ScheduleRetry(delay));
        }
        Decision::Park(Parked::Failed(text)) => {
            b.push(Effect::Log(Note::Failed(text.clone())));
            b.push(Effect::SetState(SessionState::Failed, Reason::Text(text)));
            if let Some(after) = ctx.retry_failed_after {
                b.push(Effect::ScheduleRetry(after));
            }
        }
        Decision::Park(Parked::LoggedOut) => {
            b.push(Effect::Log(Note::LoggedOut));
            b.begin_logout(Some(reason.to_string()), Then::Rest);
        }
        Decision::Park(Parked::Replaced) => {
            b.push(Effect::Log(Note::Replaced));
            b.push(Effect::SetState(SessionState::Replaced, why()));
        }
        Decision::Park(Parked::Banned { expires_in }) => {
            b.push(Effect::Log(Note::Banned(expires_in)));
            b.push(Effect::BanFor(expires_in));
            b.push(Effect::SetState(SessionState::Banned, why()));
            b.push(Effect::ScheduleRetry(expires_in));
        }
        Decision::Park(Parked::QrExpired) => {
            b.push(Effect::SetState(SessionState::QrExpired, why()));
        }
        Decision::Park(Parked::Stopped) => {
            b.push(Effect::SetState(SessionState::Stopped, why()));
        }
    }
}

/// This node no longer holds the session: a live connection is closed (the session is
/// forgotten once it is gone), anything else is forgotten now. Nothing is written or deleted:
/// the node that holds the session carries on from its record.
pub(super) fn relinquish(mut b: Builder) -> Step {
    match b.phase.clone() {
        Phase::Live { admitted, closing } => {
            if closing.is_none() {
                b.push(Effect::Close);
            }
            b.phase = Phase::Live {
                admitted,
                closing: Some(Closing::Relinquish),
            };
        }
        Phase::Queued => {
            b.push(Effect::Dequeue);
            b.push(Effect::Release);
            b.phase = Phase::Idle;
        }
        Phase::Idle => {
            b.push(Effect::CancelRetry);
            b.push(Effect::Release);
        }
        // The deletion runs on (it may hold the connection slot): forgotten once it is over,
        // so that nothing of it runs beside a later adoption of the session here.
        Phase::Cleaning { kind, .. } => {
            b.phase = Phase::Cleaning {
                kind,
                then: Then::Release,
            };
        }
    }
    b.done()
}

pub(super) fn on_cleanup(mut b: Builder, view: &View, ctx: &Context, ok: bool) -> Step {
    let Phase::Cleaning { kind, then } = b.phase else {
        return b.done(); // no cleanup runs: stale
    };
    b.phase = Phase::Idle;
    if then == Then::Release {
        // Another node holds it now: a completed deletion is final (forgotten as deleted),
        // anything else is let go of without a word written.
        if kind == CleanupKind::Everything && ok {
            b.push(Effect::AnswerWaiters);
            b.push(Effect::Forget);
        } else {
            b.push(Effect::Release);
        }
        return b.done();
    }
    match (kind, ok) {
        (CleanupKind::Credentials, true) => {
            b.push(Effect::SetReason(Reason::CredentialsDeleted));
            match then {
                Then::Delete => b.begin_delete(),
                // Connect only if that is still what the operator wants.
                Then::Connect if b.desired == Desired::Running => b.connect(ctx, false),
                Then::Connect | Then::Rest => {}
                Then::Release => unreachable!("handled above"),
            }
            b.push(Effect::AnswerInfoWaiters);
        }
        (CleanupKind::Credentials, false) => {
            b.push(Effect::SetReason(Reason::CleanupFailed(kind)));
            // A delete waiting behind this logout goes on (it removes the credentials with
            // everything else) and answers for itself.
            b.push(Effect::FailInfoWaiters);
            if then == Then::Delete {
                b.begin_delete();
            }
        }
        (CleanupKind::Everything, true) => {
            b.push(Effect::AnswerWaiters);
            b.push(Effect::Forget);
        }
        (CleanupKind::Everything, false) => {
            // The session stays, stopped: what is left would come back at the next start
            // anyway. The caller is told, and can delete again.
            b.push(Effect::SetDesired(Desired::Stopped));
            if view.state.is_parked() || view.state == SessionState::Stopped {
                b.push(Effect::SetReason(Reason::CleanupFailed(kind)));
            } else {
                b.push(Effect::SetState(
                    SessionState::Stopped,
                    Reason::CleanupFailed(kind),
                ));
            }
            b.push(Effect::FailWaiters);
        }
    }
    b.done()
}
