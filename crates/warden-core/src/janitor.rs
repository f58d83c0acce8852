//! The janitor: a small actor that asks the supervisor to reap stuck sessions periodically.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::state::SessionState;
use crate::supervisor::messages::SupervisorMsg;

/// The knobs of the janitor (`[janitor]` in `daemon.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JanitorConfig {
    /// How often to look for stuck sessions.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A session connecting for longer than this is reaped.
    #[serde(with = "humantime_serde")]
    pub max_connecting: Duration,
    /// A session showing a QR code for longer than this is reaped.
    #[serde(with = "humantime_serde")]
    pub max_qr: Duration,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5 * 60),
            max_connecting: Duration::from_secs(10 * 60),
            max_qr: Duration::from_secs(5 * 60),
        }
    }
}

impl JanitorConfig {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("interval", self.interval),
            ("max_connecting", self.max_connecting),
            ("max_qr", self.max_qr),
        ] {
            if value.is_zero() {
                return Err(format!("{name} must be more than 0s"));
            }
        }
        Ok(())
    }
}

/// Whether a live session in `state` for `stuck_for` is stuck: the state to leave it in and
/// why. Connecting (or pairing) too long is a failure; a QR code shown too long expired.
pub(crate) fn verdict(
    state: SessionState,
    stuck_for: Duration,
    config: &JanitorConfig,
) -> Option<(SessionState, String)> {
    match state {
        SessionState::Connecting | SessionState::Pairing if stuck_for > config.max_connecting => {
            Some((
                SessionState::Failed,
                format!(
                    "reaped: connecting for more than {}",
                    humantime::format_duration(config.max_connecting)
                ),
            ))
        }
        SessionState::WaitingForScan if stuck_for > config.max_qr => Some((
            SessionState::QrExpired,
            format!(
                "reaped: QR code shown for more than {}",
                humantime::format_duration(config.max_qr)
            ),
        )),
        _ => None,
    }
}

/// Messages the janitor handles.
pub(crate) enum JanitorMsg {
    /// Time to ask for a reap.
    Tick,
    /// Use a new interval from the next tick on.
    SetInterval(Duration),
}

/// The janitor actor.
pub(crate) struct JanitorActor;

/// The janitor's state: who to ask, how often, and the pending timer.
pub(crate) struct JanitorState {
    supervisor: ActorRef<SupervisorMsg>,
    interval: Duration,
    /// The next tick; aborted when the janitor goes (a timer must not outlive its actor).
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<JanitorMsg>>>>,
}

impl Drop for JanitorState {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl JanitorState {
    fn schedule(&mut self, myself: &ActorRef<JanitorMsg>) {
        if let Some(old) = self.timer.take() {
            old.abort();
        }
        self.timer = Some(myself.send_after(self.interval, || JanitorMsg::Tick));
    }
}

impl Actor for JanitorActor {
    type Msg = JanitorMsg;
    type State = JanitorState;
    type Arguments = (ActorRef<SupervisorMsg>, Duration);

    async fn pre_start(
        &self,
        myself: ActorRef<JanitorMsg>,
        (supervisor, interval): Self::Arguments,
    ) -> Result<JanitorState, ActorProcessingErr> {
        let mut state = JanitorState {
            supervisor,
            interval,
            timer: None,
        };
        state.schedule(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<JanitorMsg>,
        message: JanitorMsg,
        state: &mut JanitorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            JanitorMsg::Tick => {
                let _ = state.supervisor.cast(SupervisorMsg::Reap { reply: None });
            }
            JanitorMsg::SetInterval(interval) => state.interval = interval,
        }
        state.schedule(&myself);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionState::*;

    #[test]
    fn stuck_sessions_by_state_and_time() {
        let config = JanitorConfig::default(); // 10 min connecting, 5 min QR
        let min = |m: u64| Duration::from_secs(m * 60);
        // (state, for how long, left in)
        let table = [
            (Connecting, min(9), None),
            (Connecting, min(11), Some(Failed)),
            (Pairing, min(11), Some(Failed)),
            (WaitingForScan, min(4), None),
            (WaitingForScan, min(6), Some(QrExpired)),
            (Connected, min(600), None),
            (Queued, min(600), None),
            (BackingOff, min(600), None),
        ];
        for (state, stuck_for, expected) in table {
            let got = verdict(state, stuck_for, &config).map(|(s, _)| s);
            assert_eq!(got, expected, "{state} for {stuck_for:?}");
        }
    }
}
