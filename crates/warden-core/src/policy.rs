//! The restart policy: a pure function from a disconnect reason to a decision.
//!
//! Architecture invariant: nothing here does I/O or reads a clock. Time arrives as durations
//! measured by the caller and randomness as a number in `[0, 1)`, so every decision can be
//! checked in a unit test.

use std::time::Duration;

use serde::Deserialize;

use crate::lifecycle::DisconnectReason;

/// The knobs of the restart policy (`[policy]` in `daemon.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// How many retries a session gets after retryable disconnects before it is `failed`.
    pub max_attempts: u32,
    /// The delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Each further retry waits this many times longer.
    pub backoff_factor: f64,
    /// No retry waits longer than this (before jitter).
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Each delay is moved by up to this fraction either way (0.2 = ±20 %).
    pub jitter: f64,
    /// Attempts reset only after a connection stayed up this long.
    #[serde(with = "humantime_serde")]
    pub stable_after: Duration,
    /// When set, a `failed` session is tried again after this long (quarantine, not a dead end).
    #[serde(with = "humantime_serde")]
    pub retry_failed_after: Option<Duration>,
    /// A manual restart this soon after the last start is refused unless forced.
    #[serde(with = "humantime_serde")]
    pub restart_cooldown: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_base: Duration::from_secs(3),
            backoff_factor: 2.0,
            backoff_cap: Duration::from_secs(30),
            jitter: 0.2,
            stable_after: Duration::from_secs(10 * 60),
            retry_failed_after: None,
            restart_cooldown: Duration::from_secs(30),
        }
    }
}

impl PolicyConfig {
    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.backoff_base.is_zero() {
            return Err("backoff_base must be more than 0s".into());
        }
        if self.backoff_cap < self.backoff_base {
            return Err("backoff_cap must be at least backoff_base".into());
        }
        if !(self.backoff_factor >= 1.0 && self.backoff_factor.is_finite()) {
            return Err("backoff_factor must be a number of at least 1.0".into());
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err("jitter must be at least 0.0 and below 1.0".into());
        }
        if self.stable_after.is_zero() {
            return Err("stable_after must be more than 0s".into());
        }
        Ok(())
    }

    /// The delay before retry number `attempt` (1-based), with `unit ∈ [0, 1)` choosing the
    /// jitter: `min(cap, base × factor^(attempt-1)) × (1 ± jitter)`.
    pub fn backoff_delay(&self, attempt: u32, unit: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let raw = self.backoff_base.as_secs_f64() * self.backoff_factor.powi(exponent);
        let capped = raw.min(self.backoff_cap.as_secs_f64());
        let spread = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((capped * spread).max(0.0))
    }
}

/// What to do after a connection ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start the next connection at once; not counted as an attempt (restart after pairing).
    RestartNow,
    /// Start the next connection after `delay`; this is retry number `attempt`.
    RetryAfter {
        /// How long to wait.
        delay: Duration,
        /// The attempt count once this retry starts (1-based).
        attempt: u32,
    },
    /// Do not restart; park the session.
    Park(Parked),
}

/// Where a session is parked, and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Parked {
    /// Out of attempts, or fatal; the text says why.
    Failed(String),
    /// Logged out: the credentials must be deleted; never retried.
    LoggedOut,
    /// Another client took over; not retried automatically.
    Replaced,
    /// Banned: retry no sooner than `expires_in` from now.
    Banned {
        /// How long until the ban ends.
        expires_in: Duration,
    },
    /// No QR code was scanned in time.
    QrExpired,
    /// Closed on request.
    Stopped,
}

/// A decision, with the attempt count to keep afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// What to do.
    pub decision: Decision,
    /// The attempt counter after this decision.
    pub attempts: u32,
}

/// Decides what follows the end of a connection.
///
/// * `attempts`: retries counted so far;
/// * `connected_for`: how long the connection that just ended had been logged in (`None` if it
///   never was); only a connection that stayed up for `stable_after` resets the attempts, so a
///   connect-then-drop flap cannot loop forever, and a QR on show never resets them;
/// * `unit`: a random number in `[0, 1)` for the jitter.
pub fn decide(
    config: &PolicyConfig,
    reason: &DisconnectReason,
    attempts: u32,
    connected_for: Option<Duration>,
    unit: f64,
) -> Outcome {
    let attempts = match connected_for {
        Some(up) if up >= config.stable_after => 0,
        _ => attempts,
    };
    let park = |parked| Outcome {
        decision: Decision::Park(parked),
        attempts,
    };
    match reason {
        DisconnectReason::RestartRequired => Outcome {
            decision: Decision::RestartNow,
            attempts,
        },
        DisconnectReason::LoggedOut => park(Parked::LoggedOut),
        DisconnectReason::Replaced => park(Parked::Replaced),
        // A ban without a usable expiry still waits at least the longest backoff: never a
        // tight reconnect loop against a server that said "banned".
        DisconnectReason::TemporarilyBanned { expires_in, .. } => park(Parked::Banned {
            expires_in: (*expires_in).max(config.backoff_cap),
        }),
        DisconnectReason::ClientOutdated | DisconnectReason::BadCredentials(_) => {
            park(Parked::Failed(reason.to_string()))
        }
        DisconnectReason::QrExpired => park(Parked::QrExpired),
        DisconnectReason::Stopped => park(Parked::Stopped),
        DisconnectReason::ConnectionLost
        | DisconnectReason::ConnectionClosed
        | DisconnectReason::TimedOut
        | DisconnectReason::ConnectFailed(_)
        | DisconnectReason::ProxyUnreachable(_)
        | DisconnectReason::ProxyAuthFailed(_)
        | DisconnectReason::ServerUnavailable
        | DisconnectReason::StreamError(_)
        | DisconnectReason::SessionCrashed(_) => {
            if attempts >= config.max_attempts {
                park(Parked::Failed(format!(
                    "gave up after {attempts} reconnect attempts; last: {reason}"
                )))
            } else {
                let attempt = attempts + 1;
                Outcome {
                    decision: Decision::RetryAfter {
                        delay: config.backoff_delay(attempt, unit),
                        attempt,
                    },
                    attempts: attempt,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MID: f64 = 0.5; // the jitter sample that moves nothing

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn check(reason: DisconnectReason, attempts: u32, up: Option<Duration>, expected: Outcome) {
        let got = decide(&PolicyConfig::default(), &reason, attempts, up, MID);
        assert_eq!(
            got, expected,
            "reason {reason}, attempts {attempts}, up {up:?}"
        );
    }

    fn retry(delay: u64, attempt: u32) -> Outcome {
        Outcome {
            decision: Decision::RetryAfter {
                delay: secs(delay),
                attempt,
            },
            attempts: attempt,
        }
    }

    fn parked(parked: Parked, attempts: u32) -> Outcome {
        Outcome {
            decision: Decision::Park(parked),
            attempts,
        }
    }

    #[test]
    fn retryable_reasons_back_off_3_6_12_then_fail() {
        for reason in [
            DisconnectReason::ConnectionLost,
            DisconnectReason::ConnectionClosed,
            DisconnectReason::TimedOut,
            DisconnectReason::ConnectFailed("refused".into()),
            DisconnectReason::ProxyUnreachable("connection refused".into()),
            DisconnectReason::ProxyAuthFailed("user or password refused".into()),
            DisconnectReason::ServerUnavailable,
            DisconnectReason::StreamError("999".into()),
            DisconnectReason::SessionCrashed("panic".into()),
        ] {
            check(reason.clone(), 0, None, retry(3, 1));
            check(reason.clone(), 1, None, retry(6, 2));
            check(reason.clone(), 2, None, retry(12, 3));
            let out = decide(&PolicyConfig::default(), &reason, 3, None, MID);
            assert!(
                matches!(&out.decision, Decision::Park(Parked::Failed(why)) if why.contains("3 reconnect attempts")),
                "{out:?}"
            );
            assert_eq!(out.attempts, 3);
        }
    }

    #[test]
    fn restart_after_pairing_is_immediate_and_uncounted() {
        check(
            DisconnectReason::RestartRequired,
            2,
            None,
            Outcome {
                decision: Decision::RestartNow,
                attempts: 2,
            },
        );
        check(
            DisconnectReason::RestartRequired,
            3,
            None,
            Outcome {
                decision: Decision::RestartNow,
                attempts: 3,
            },
        );
    }

    #[test]
    fn terminal_reasons_park() {
        check(
            DisconnectReason::LoggedOut,
            0,
            None,
            parked(Parked::LoggedOut, 0),
        );
        check(
            DisconnectReason::Replaced,
            1,
            None,
            parked(Parked::Replaced, 1),
        );
        check(
            DisconnectReason::TemporarilyBanned {
                expires_in: secs(3600),
                code: Some("101".into()),
            },
            0,
            None,
            parked(
                Parked::Banned {
                    expires_in: secs(3600),
                },
                0,
            ),
        );
        check(
            DisconnectReason::ClientOutdated,
            0,
            None,
            parked(Parked::Failed("client_outdated".into()), 0),
        );
        check(
            DisconnectReason::BadCredentials("418".into()),
            0,
            None,
            parked(Parked::Failed("bad_credentials: 418".into()), 0),
        );
        check(
            DisconnectReason::QrExpired,
            0,
            None,
            parked(Parked::QrExpired, 0),
        );
        check(
            DisconnectReason::Stopped,
            2,
            None,
            parked(Parked::Stopped, 2),
        );
    }

    #[test]
    fn a_ban_without_an_expiry_still_waits() {
        check(
            DisconnectReason::TemporarilyBanned {
                expires_in: Duration::ZERO,
                code: None,
            },
            0,
            None,
            parked(
                Parked::Banned {
                    expires_in: secs(30),
                },
                0,
            ),
        );
    }

    #[test]
    fn only_a_stable_connection_resets_attempts() {
        // Up for a minute: the flap still counts.
        check(
            DisconnectReason::ConnectionLost,
            2,
            Some(secs(60)),
            retry(12, 3),
        );
        // Up for the stable window: a fresh start.
        check(
            DisconnectReason::ConnectionLost,
            3,
            Some(secs(600)),
            retry(3, 1),
        );
        // A QR session never logged in: no reset.
        check(
            DisconnectReason::QrExpired,
            2,
            None,
            parked(Parked::QrExpired, 2),
        );
    }

    #[test]
    fn delays_are_capped_and_jittered_within_bounds() {
        let config = PolicyConfig::default();
        assert_eq!(config.backoff_delay(10, MID), secs(30));
        assert_eq!(config.backoff_delay(1000, MID), secs(30));
        let low = config.backoff_delay(1, 0.0);
        let high = config.backoff_delay(1, 0.999_999);
        assert!((low.as_secs_f64() - 2.4).abs() < 1e-6, "{low:?}");
        assert!((high.as_secs_f64() - 3.6).abs() < 1e-3, "{high:?}");
        let no_jitter = PolicyConfig {
            jitter: 0.0,
            ..config
        };
        assert_eq!(no_jitter.backoff_delay(2, 0.0), secs(6));
    }

    #[test]
    fn validation_catches_nonsense() {
        assert!(PolicyConfig::default().validate().is_ok());
        let bad = |c: PolicyConfig| c.validate().unwrap_err();
        assert!(
            bad(PolicyConfig {
                jitter: 1.5,
                ..Default::default()
            })
            .contains("jitter")
        );
        assert!(
            bad(PolicyConfig {
                backoff_cap: secs(1),
                ..Default::default()
            })
            .contains("backoff_cap")
        );
        assert!(
            bad(PolicyConfig {
                backoff_factor: 0.5,
                ..Default::default()
            })
            .contains("backoff_factor")
        );
    }
}
