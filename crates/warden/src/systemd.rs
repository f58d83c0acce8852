//! systemd integration: readiness, status, watchdog and stopping notifications.
//!
//! Every call does nothing when the daemon does not run under systemd (`$NOTIFY_SOCKET` unset).

use std::time::Duration;

use sd_notify::NotifyState;
use warden_core::{SessionList, SessionState};

/// Tells systemd the daemon is ready (socket bound, sessions restored).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the status line `systemctl status` shows.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Tells systemd the daemon is reloading its configuration, then ready again.
pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

/// Pets the watchdog.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// How often to pet the watchdog: half of `WatchdogSec`, if the unit sets it.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|period| !period.is_zero())
        .map(|period| period / 2)
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "systemd notification failed");
    }
}

/// A status line with the number of sessions in each state, e.g.
/// `12 sessions: 10 connected, 1 backing_off, 1 logged_out`.
pub fn summary(list: &SessionList) -> String {
    let total = list.sessions.len();
    let parts: Vec<String> = SessionState::ALL
        .iter()
        .filter_map(|s| list.counts.get(s).map(|n| format!("{n} {s}")))
        .collect();
    if parts.is_empty() {
        format!("{total} sessions")
    } else {
        format!("{total} sessions: {}", parts.join(", "))
    }
}
