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
//! The restart policy ([`crate::policy`]) decides what follows a connection that ended on its
//! own; [`crate::start_rule`] decides what an operator's `start` does to a session at rest.

use std::time::Duration;

use tokio::time::Instant;

use crate::lifecycle::DisconnectReason;
use crate::policy::{Decision, Outcome, Parked};
use crate::start_rule::{self, StartDecision, StartFacts};
use crate::state::{Desired, SessionState};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod walk;

/// Where a session's connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Nothing runs and nothing is pending but (maybe) a timer.
    Idle,
    /// Waiting in the admission queue.
    Queued,
    /// A session actor serves the connection.
    Live {
        /// It holds one of admission's in-flight slots (its handshake is not over).
        admitted: bool,
        /// Set once the supervisor asked it to end: what follows its end.
        closing: Option<Closing>,
    },
    /// A deletion runs off the supervisor's loop; nothing connects until it is over.
    Cleaning {
        /// What is being deleted.
        kind: CleanupKind,
        /// What follows once it is done.
        then: Then,
    },
}

impl Phase {
    /// Whether the session is on its way out: being deleted, or about to be.
    pub fn deleting(&self) -> bool {
        matches!(
            self,
            Phase::Cleaning {
                kind: CleanupKind::Everything,
                ..
            } | Phase::Cleaning {
                then: Then::Delete,
                ..
            }
        )
    }

    /// Whether the connection is closing for a delete (the session is not gone yet).
    pub fn closing_for_delete(&self) -> bool {
        matches!(
            self,
            Phase::Live {
                closing: Some(Closing::Delete),
                ..
            }
        )
    }
}

/// Why the supervisor ended a live connection; decides what follows instead of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    /// Stop (or force-cleanup): leave it `stopped` with this reason.
    Stop {
        /// The reason shown.
        reason: String,
    },
    /// Restart or refresh the QR code: connect again once it is gone.
    Reconnect,
    /// Log out: delete the credentials once it is gone, then `then`.
    Logout {
        /// What follows the deletion (a `start` during a logout connects afterwards).
        then: Then,
    },
    /// Delete: remove everything once it is gone.
    Delete,
    /// The janitor reaped it: leave it in `state` with `reason`.
    Reap {
        /// The state it is left in.
        state: SessionState,
        /// Why.
        reason: String,
    },
}

/// What a cleanup deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupKind {
    /// The credentials (a logout).
    Credentials,
    /// The session: its record, its credentials, its messages (a delete).
    Everything,
}

/// What follows a credentials deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Nothing: the session rests `logged_out`.
    Rest,
    /// Connect for a new QR code, if the operator still wants it running.
    Connect,
    /// Delete the session.
    Delete,
}

/// What the supervisor knows of the session, besides its phase.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The session's state (persisted).
    pub state: SessionState,
    /// What the operator wants.
    pub desired: Desired,
    /// Retries counted.
    pub attempts: u32,
    /// Whether it is linked to an account.
    pub paired: bool,
    /// How long its ban has left (`Some(ZERO)`: it has passed), if a ban is known.
    pub ban_left: Option<Duration>,
    /// Whether a retry (or ban-expiry, or quarantine) timer is pending.
    pub retry_scheduled: bool,
    /// When its last connection was started.
    pub last_start: Option<Instant>,
    /// When a `start` last took it out of a parked state.
    pub last_unpark: Option<Instant>,
}

impl View {
    /// A session at rest in `state`, as the operator wants it (`desired`).
    pub fn new(state: SessionState, desired: Desired) -> Self {
        Self {
            state,
            desired,
            attempts: 0,
            paired: false,
            ban_left: None,
            retry_scheduled: false,
            last_start: None,
            last_unpark: None,
        }
    }

    fn ban_holds(&self) -> bool {
        self.state == SessionState::Banned && self.ban_left.is_some_and(|left| !left.is_zero())
    }
}

/// The settings and facts outside the session.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// Now.
    pub now: Instant,
    /// `Some(limit)` when `limit` sessions are queued or live already: no room for another.
    pub full: Option<usize>,
    /// Minimum time between two operator restarts, and between two starts out of a parked
    /// state.
    pub cooldown: Duration,
    /// How long a session that waits for room waits before trying again.
    pub capacity_wait: Duration,
    /// When a `failed` session is retried on its own (`None`: never).
    pub retry_failed_after: Option<Duration>,
}

/// What a connection reported that changes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A QR code is on show.
    Qr,
    /// A pairing code is on show.
    PairCode,
    /// The phone accepted the pairing; the connection restarts to log in.
    Paired,
    /// Logged in.
    Connected,
}

/// Something that happens to a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The operator's `start`.
    Start,
    /// The operator's `stop` or `force-cleanup`, with the reason to show.
    Stop {
        /// The reason shown.
        reason: String,
    },
    /// The operator's `restart` (also `set_proxy` with `reconnect`); `force` skips the cooldown
    /// and the ban.
    Restart {
        /// Skip the cooldown and the ban.
        force: bool,
    },
    /// The operator asks for a new QR code.
    RefreshQr,
    /// The operator's `logout`.
    Logout,
    /// The operator's `delete`.
    Delete,
    /// The janitor found the live connection stuck: end it and leave the session in `state`.
    Reap {
        /// The state to leave it in.
        state: SessionState,
        /// Why.
        reason: String,
    },
    /// The daemon starts with this session's record.
    Restore,
    /// Admission control lets it connect.
    Admitted,
    /// The live connection made progress.
    Progress(Progress),
    /// The live connection has been logged in for `stable_after`.
    Stable,
    /// The live connection ended with `reason`; `policy` is the restart policy's answer, used
    /// when the supervisor did not end it itself.
    Ended {
        /// Why it ended.
        reason: DisconnectReason,
        /// What the restart policy says.
        policy: Outcome,
    },
    /// The retry timer fired.
    RetryDue,
    /// The running cleanup finished.
    CleanupDone {
        /// Whether it succeeded.
        ok: bool,
    },
}

/// A reason to show with a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No reason.
    None,
    /// This text.
    Text(String),
    /// Keep the reason it has.
    Keep,
    /// Capacity is full: `limit` sessions are queued or live.
    Capacity(usize),
    /// Append that the credentials are deleted.
    CredentialsDeleted,
    /// The cleanup failed (the error is the cleanup's).
    CleanupFailed(CleanupKind),
}

/// Why an operation is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such session (or it is being deleted).
    NotFound,
    /// It is closing for a delete.
    BeingDeleted,
    /// `start` while banned: refused until the ban ends. `retry_scheduled`: it will be retried
    /// then on its own.
    BannedStart {
        /// Whether its retry is scheduled at the expiry.
        retry_scheduled: bool,
    },
    /// `restart` while banned, without `force`.
    BannedRestart,
    /// No room: `limit` sessions are queued or live.
    Capacity(usize),
    /// Too soon after the last start or restart; try again after this long.
    Cooldown(Duration),
    /// A new QR code does not fit the state; `paired` says why.
    NoQrNow {
        /// Whether it is linked to an account.
        paired: bool,
    },
}

/// A line the supervisor logs about a decision (the legacy gateway's log lines included).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// `Should reconnect: …` after a connection ended.
    ShouldReconnect(bool),
    /// `Reconnect attempts: …` with the delay of the retry.
    RetryIn {
        /// The attempt number.
        attempt: u32,
        /// How long until it.
        delay: Duration,
    },
    /// The session failed.
    Failed(String),
    /// Logged out from the phone: the credentials go.
    LoggedOut,
    /// Another client took the account over.
    Replaced,
    /// Temporarily banned.
    Banned(Duration),
    /// A ban expired: reconnecting.
    BanExpired,
    /// A failed session's quarantine ended: retrying.
    QuarantineOver,
    /// The connection has been stable long enough: attempts reset.
    Stable,
    /// No room for another live session: waiting.
    WaitingForRoom(usize),
}

/// Something the supervisor does, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Record what the operator wants.
    SetDesired(Desired),
    /// Move to a state (its clock restarts only on a change).
    SetState(SessionState, Reason),
    /// Change only the reason.
    SetReason(Reason),
    /// Attempts back to 0.
    ResetAttempts,
    /// The policy's attempt count.
    SetAttempts(u32),
    /// Count a restart.
    CountRestart,
    /// Remember a ban ending this long from now.
    BanFor(Duration),
    /// Forget the ban.
    ClearBan,
    /// Forget the account (logged out).
    ClearAccount,
    /// Open the next connection with the operation's options.
    UseOptions,
    /// Open the next connection with the default options (a QR code).
    DefaultOptions,
    /// Remember that a `start` left a parked state now.
    MarkUnpark,
    /// Join the admission queue (`priority`: first in line, not charged to the rate).
    Enqueue {
        /// First in line.
        priority: bool,
    },
    /// Leave the admission queue.
    Dequeue,
    /// Spawn the session actor for a new connection.
    Spawn,
    /// Ask the live session actor to end.
    Close,
    /// Give back the admission slot.
    ReleaseAdmission,
    /// Keep what the connection reported (QR code, pairing code, account).
    RecordProgress,
    /// Start the stability timer.
    StartStableTimer,
    /// The connection is gone: forget what only it had (QR code, stability timer).
    ConnectionGone,
    /// Retry after this long.
    ScheduleRetry(Duration),
    /// Cancel the pending retry.
    CancelRetry,
    /// Delete the credentials (off the loop; reports back).
    DeleteCredentials,
    /// Delete the session (off the loop; reports back).
    DeleteEverything,
    /// Forget the session: it is deleted.
    Forget,
    /// Log a decision.
    Log(Note),
    /// Answer the caller with the session's view.
    Reply,
    /// Refuse the caller.
    Refuse(Refusal),
    /// Answer the caller once the operation has completed.
    Wait,
    /// Answer everyone waiting.
    AnswerWaiters,
    /// Answer those waiting for a session view (those waiting for a delete keep waiting).
    AnswerInfoWaiters,
    /// Fail those waiting for a session view with the cleanup's error.
    FailInfoWaiters,
    /// Fail everyone waiting with the cleanup's error.
    FailWaiters,
}

impl Effect {
    /// Whether it answers a caller (carried out after the session's view is published).
    pub fn is_reply(&self) -> bool {
        matches!(
            self,
            Effect::Reply
                | Effect::Refuse(_)
                | Effect::AnswerWaiters
                | Effect::AnswerInfoWaiters
                | Effect::FailInfoWaiters
                | Effect::FailWaiters
        )
    }
}

/// The result of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The phase after it.
    pub phase: Phase,
    /// What to do, in order.
    pub effects: Vec<Effect>,
}

/// Effects that set the same thing share a group: the last one in a step wins.
fn setting_group(effect: &Effect) -> Option<u8> {
    match effect {
        Effect::SetDesired(_) => Some(0),
        Effect::ResetAttempts | Effect::SetAttempts(_) => Some(1),
        Effect::ClearBan | Effect::BanFor(_) => Some(2),
        Effect::CancelRetry | Effect::ScheduleRetry(_) => Some(3),
        _ => None,
    }
}

/// Builds a step: the phase changes as the transition goes, effects accumulate.
struct Builder {
    phase: Phase,
    desired: Desired,
    effects: Vec<Effect>,
}

impl Builder {
    fn push(&mut self, effect: Effect) {
        if let Effect::SetDesired(desired) = effect {
            self.desired = desired;
        }
        // A setting said again, with nothing in between that changed it, is said once.
        if let Some(group) = setting_group(&effect)
            && self
                .effects
                .iter()
                .rev()
                .find(|e| setting_group(e) == Some(group))
                == Some(&effect)
        {
            return;
        }
        self.effects.push(effect);
    }

    fn done(self) -> Step {
        Step {
            phase: self.phase,
            effects: self.effects,
        }
    }

    /// Refuses the caller; nothing else changes.
    fn refuse(mut self, refusal: Refusal) -> Step {
        self.effects = vec![Effect::Refuse(refusal)];
        self.done()
    }

    /// From `Idle`: queue for a connection, or wait for room when capacity is full.
    fn connect(&mut self, ctx: &Context, priority: bool) {
        match ctx.full {
            Some(limit) => {
                self.push(Effect::Log(Note::WaitingForRoom(limit)));
                self.push(Effect::SetState(
                    SessionState::BackingOff,
                    Reason::Capacity(limit),
                ));
                self.push(Effect::ScheduleRetry(ctx.capacity_wait));
                self.phase = Phase::Idle;
            }
            None => {
                self.push(Effect::SetState(SessionState::Queued, Reason::None));
                self.push(Effect::Enqueue { priority });
                self.phase = Phase::Queued;
            }
        }
    }

    /// Starts deleting the credentials (the state says logged out with `why`, when given).
    fn begin_logout(&mut self, why: Option<String>, then: Then) {
        if let Some(why) = why {
            self.push(Effect::SetState(SessionState::LoggedOut, Reason::Text(why)));
            self.push(Effect::ClearAccount);
            self.push(Effect::ResetAttempts);
        }
        self.push(Effect::DeleteCredentials);
        self.phase = Phase::Cleaning {
            kind: CleanupKind::Credentials,
            then,
        };
    }

    fn begin_delete(&mut self) {
        self.push(Effect::DeleteEverything);
        self.phase = Phase::Cleaning {
            kind: CleanupKind::Everything,
            then: Then::Rest,
        };
    }

    /// Cancels a pending retry and leaves the admission queue.
    fn cancel_pending(&mut self) {
        self.push(Effect::CancelRetry);
        if self.phase == Phase::Queued {
            self.push(Effect::Dequeue);
            self.phase = Phase::Idle;
        }
    }
}

/// What follows `event` for a session in `phase`; see the module docs.
pub fn next(phase: &Phase, view: &View, ctx: &Context, event: Event) -> Step {
    let mut b = Builder {
        phase: phase.clone(),
        desired: view.desired,
        effects: Vec::new(),
    };
    let is_operation = matches!(
        event,
        Event::Start
            | Event::Stop { .. }
            | Event::Restart { .. }
            | Event::RefreshQr
            | Event::Logout
            | Event::Delete
    );
    if is_operation && phase.deleting() {
        return b.refuse(Refusal::NotFound);
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
    }
}

fn start(mut b: Builder, view: &View, ctx: &Context) -> Step {
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

fn stop(mut b: Builder, view: &View, reason: String) -> Step {
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
fn reconnect(b: Builder, view: &View, ctx: &Context) -> Step {
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

fn logout(mut b: Builder) -> Step {
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

fn delete(mut b: Builder) -> Step {
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

fn restore(mut b: Builder, view: &View, ctx: &Context) -> Step {
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

fn on_progress(mut b: Builder, progress: Progress) -> Step {
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

fn on_end(
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

fn on_cleanup(mut b: Builder, view: &View, ctx: &Context, ok: bool) -> Step {
    let Phase::Cleaning { kind, then } = b.phase else {
        return b.done(); // no cleanup runs: stale
    };
    b.phase = Phase::Idle;
    match (kind, ok) {
        (CleanupKind::Credentials, true) => {
            b.push(Effect::SetReason(Reason::CredentialsDeleted));
            match then {
                Then::Delete => b.begin_delete(),
                // Connect only if that is still what the operator wants.
                Then::Connect if b.desired == Desired::Running => b.connect(ctx, false),
                Then::Connect | Then::Rest => {}
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
