//! [`Builder`]: a step under construction, and the moves several transitions share.

use crate::state::{Desired, SessionState};

use super::types::{CleanupKind, Context, Effect, Note, Phase, Reason, Refusal, Step, Then};

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
pub(super) struct Builder {
    pub(super) phase: Phase,
    pub(super) desired: Desired,
    pub(super) effects: Vec<Effect>,
}

impl Builder {
    pub(super) fn push(&mut self, effect: Effect) {
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

    pub(super) fn done(self) -> Step {
        Step {
            phase: self.phase,
            effects: self.effects,
        }
    }

    /// Refuses the caller; nothing else changes.
    pub(super) fn refuse(mut self, refusal: Refusal) -> Step {
        self.effects = vec![Effect::Refuse(refusal)];
        self.done()
    }

    /// From `Idle`: queue for a connection, or wait for room when capacity is full.
    pub(super) fn connect(&mut self, ctx: &Context, priority: bool) {
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
    pub(super) fn begin_logout(&mut self, why: Option<String>, then: Then) {
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

    pub(super) fn begin_delete(&mut self) {
        self.push(Effect::DeleteEverything);
        self.phase = Phase::Cleaning {
            kind: CleanupKind::Everything,
            then: Then::Rest,
        };
    }

    /// Cancels a pending retry and leaves the admission queue.
    pub(super) fn cancel_pending(&mut self) {
        self.push(Effect::CancelRetry);
        if self.phase == Phase::Queued {
            self.push(Effect::Dequeue);
            self.phase = Phase::Idle;
        }
    }
}
