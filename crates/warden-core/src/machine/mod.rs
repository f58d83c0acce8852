//! The life of one session as a pure state machine: [`next`] takes the session's [`Phase`],
//! what is known of it ([`View`]), the settings and the clock reading ([`Context`]), and an
//! [`Event`]; it returns the next phase and the [`Effect`]s to carry out, in order.
//!
//! No I/O and no clock: the supervisor actor gathers the facts, calls [`next`], and carries the
//! effects out (spawning, closing, timers, the store, replies). Every decision about what
//! follows what lives here, tested with a table (`tests.rs`: every phase × event) and with
//! random walks (`walk.rs`: never two live connections, never a connection the operator does
//! not want, never a session with no way forward).
//!
//! | phase | meaning | left by |
//! |---|---|---|
//! | `Idle` | nothing runs: stopped, parked, or waiting for a retry timer | an operation, a retry |
//! | `Queued` | waiting for admission control | admission, stop, logout, delete |
//! | `Live` | a session actor holds (or is opening) the connection; `closing` says why the supervisor asked it to end | its end |
//! | `Cleaning` | credentials (logout) or everything (delete) being deleted; `then` says what follows | the cleanup's result |
//!
//! In a cluster, a session whose lease this node lost is relinquished from any phase: what
//! runs here ends (a live connection is closed, whatever close was under way), and the
//! session is forgotten here without anything deleted or written (`Release`).
//!
//! The restart policy ([`crate::policy`]) decides what follows a connection that ended on its
//! own; [`crate::start_rule`] decides what an operator's `start` does to a session at rest.

mod builder;
mod operations;
mod reports;
#[cfg(test)]
mod tests;
mod types;
#[cfg(test)]
mod walk;

pub use types::{
    CleanupKind, Closing, Context, Effect, Event, Note, Phase, Progress, Reason, Refusal, Step,
    Then, View,
};

use crate::state::{Desired, SessionState};

use builder::Builder;
use operations::{delete, logout, reconnect, restore, start, stop};
use reports::{on_cleanup, on_end, on_progress, relinquish};

/// What follows `event` for a session in `phase`; see the module docs.
pub fn next(phase: &Phase, view: &View, ctx: &Context, event: Event) -> Step {
    let mut b = Builder {
        phase: phase.clone(),
        desired: view.desired,
        effects: Vec::new(),
    };
    let is_operation = event.is_operation();
    if is_operation && phase.deleting() {
        return b.refuse(Refusal::NotFound);
    }
    if is_operation && phase.relinquishing() {
        return b.refuse(Refusal::NotHeld);
    }
    match event {
        Event::Start => start(b, view, ctx),
        Event::Stop { reason } => stop(b, view, reason),
        Event::Restart { force } => {
            if !force {
                if let Some(last) = view.last_start {
                    let elapsed = ctx.now.saturating_duration_since(last);
                    if elapsed < ctx.cooldown {
                        return b.refuse(Refusal::Cooldown(ctx.cooldown - elapsed));
                    }
                }
                if view.state == SessionState::Banned {
                    return b.refuse(Refusal::BannedRestart);
                }
            }
            b.push(Effect::SetDesired(Desired::Running));
            b.push(Effect::ResetAttempts);
            b.push(Effect::ClearBan);
            reconnect(b, view, ctx)
        }
        Event::RefreshQr => {
            let fits = match view.state {
                SessionState::WaitingForScan
                | SessionState::QrExpired
                | SessionState::LoggedOut => true,
                SessionState::Stopped | SessionState::Failed => !view.paired,
                _ => false,
            };
            if !fits {
                return b.refuse(Refusal::NoQrNow {
                    paired: view.paired,
                });
            }
            b.push(Effect::SetDesired(Desired::Running));
            b.push(Effect::ResetAttempts);
            reconnect(b, view, ctx)
        }
        Event::Logout => logout(b),
        Event::Delete => delete(b),
        Event::Reap { state, reason } => {
            if let Phase::Live {
                admitted,
                closing: None,
            } = b.phase
            {
                b.push(Effect::Close);
                b.phase = Phase::Live {
                    admitted,
                    closing: Some(Closing::Reap { state, reason }),
                };
            }
            b.done()
        }
        Event::Restore => restore(b, view, ctx),
        Event::Admitted => {
            if b.phase == Phase::Queued {
                b.push(Effect::SetState(SessionState::Connecting, Reason::None));
                b.push(Effect::Spawn);
                b.phase = Phase::Live {
                    admitted: true,
                    closing: None,
                };
            } else {
                b.push(Effect::ReleaseAdmission);
            }
            b.done()
        }
        Event::Progress(progress) => on_progress(b, progress),
        Event::Stable => {
            let live = matches!(b.phase, Phase::Live { closing: None, .. });
            if live && view.state == SessionState::Connected && view.attempts > 0 {
                b.push(Effect::ResetAttempts);
                b.push(Effect::Log(Note::Stable));
            }
            b.done()
        }
        Event::Ended { reason, policy } => on_end(b, view, ctx, reason, policy),
        Event::RetryDue => {
            if b.phase != Phase::Idle || view.desired != Desired::Running {
                return b.done();
            }
            match view.state {
                SessionState::Failed => {
                    b.push(Effect::Log(Note::QuarantineOver));
                    b.push(Effect::ResetAttempts);
                }
                SessionState::Banned => {
                    b.push(Effect::Log(Note::BanExpired));
                    b.push(Effect::ClearBan);
                }
                SessionState::BackingOff => {}
                _ => return b.done(),
            }
            b.connect(ctx, false);
            b.done()
        }
        Event::CleanupDone { ok } => on_cleanup(b, view, ctx, ok),
        Event::Relinquish => relinquish(b),
    }
}
