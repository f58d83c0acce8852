//! What follows one delivery attempt: a pure function of its outcome, the attempts made and
//! the webhook's settings, tested with a table.
//!
//! - 2xx: delivered.
//! - 408, 429 and 5xx, a timeout or a network error: retried with exponential backoff and
//!   jitter; a 429's `Retry-After` is honoured (up to [`MAX_RETRY_AFTER`]).
//! - Any other status (other 4xx, 1xx, 3xx: redirects are not followed), or an address the
//!   SSRF guard refuses: no retry; the event goes to the dead letters at once.
//! - After the last attempt: dead letters.

use std::time::Duration;

/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered with this status (and, maybe, a `Retry-After`).
    Status {
        /// The HTTP status.
        code: u16,
        /// Its `Retry-After`, in seconds or as a date, made a delay.
        retry_after: Option<Duration>,
    },
    /// The request failed before a status: timeout, refused connection, TLS, reset.
    Failed(String),
    /// The request was not sent and never will be: the address is refused.
    Refused(String),
}

impl Outcome {
    /// A short text for logs and dead letters.
    pub fn text(&self) -> String {
        match self {
            Self::Status { code, .. } => format!("HTTP {code}"),
            Self::Failed(why) | Self::Refused(why) => why.clone(),
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done.
    Delivered,
    /// Try again after this long.
    Retry(Duration),
    /// Give up: to the dead letters, with this reason.
    Dead(String),
}

/// The retry settings of one webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The attempts allowed in all.
    pub max_attempts: u32,
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
}

/// The delay before attempt `attempts + 1`: `base × 2^(attempts − 1)` up to `cap`, of which
/// the upper half is random (`unit` in `[0, 1)`), so retries of many events spread out.
pub fn delay(backoff: &Backoff, attempts: u32, unit: f64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(30);
    let full = backoff
        .base
        .saturating_mul(1u32 << exponent)
        .min(backoff.cap);
    full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// What follows an attempt that went as `outcome`, `attempts` attempts having been made
/// (this one included).
pub fn verdict(outcome: &Outcome, attempts: u32, backoff: &Backoff, unit: f64) -> Verdict {
    let retryable = match outcome {
        Outcome::Status { code, .. } if (200..300).contains(code) => return Verdict::Delivered,
        Outcome::Status { code, .. } => matches!(code, 408 | 429 | 500..=599),
        Outcome::Failed(_) => true,
        Outcome::Refused(_) => false,
    };
    if !retryable {
        return Verdict::Dead(format!("{} (not retried)", outcome.text()));
    }
    if attempts >= backoff.max_attempts {
        return Verdict::Dead(format!("{} after {attempts} attempts", outcome.text()));
    }
    let mut wait = delay(backoff, attempts, unit);
    if let Outcome::Status {
        code: 429,
        retry_after: Some(after),
    } = outcome
    {
        wait = wait.max((*after).min(MAX_RETRY_AFTER));
    }
    Verdict::Retry(wait)
}

/// A `Retry-After` value: seconds, or an HTTP date (then the time until it, from `now`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = humantime::parse_rfc3339_weak(value)
        .ok()
        .or_else(|| httpdate(value))?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate(value: &str) -> Option<std::time::SystemTime> {
    let mut parts = value.split_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u64 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    if parts.next()? != "GMT" {
        return None;
    }
    let text = format!("{year:04}-{month:02}-{day:02}T{time}Z");
    humantime::parse_rfc3339(&text).ok()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    const B: Backoff = Backoff {
        max_attempts: 5,
        base: Duration::from_secs(1),
        cap: Duration::from_secs(10),
    };

    fn status(code: u16) -> Outcome {
        Outcome::Status {
            code,
            retry_after: None,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn each_outcome_is_delivered_retried_or_dead_letters() {
        let rows: [(Outcome, u32, Verdict); 14] = [
            (status(200), 1, Verdict::Delivered),
            (status(204), 5, Verdict::Delivered),
            (status(500), 1, Verdict::Retry(secs(1))),
            (status(503), 2, Verdict::Retry(secs(2))),
            (status(502), 4, Verdict::Retry(secs(8))),
            (
                status(500),
                5,
                Verdict::Dead("HTTP 500 after 5 attempts".into()),
            ),
            (status(408), 3, Verdict::Retry(secs(4))),
            (status(429), 1, Verdict::Retry(secs(1))),
            (
                Outcome::Status {
                    code: 429,
                    retry_after: Some(secs(30)),
                },
                1,
                Verdict::Retry(secs(30)),
            ),
            (
                status(410),
                1,
                Verdict::Dead("HTTP 410 (not retried)".into()),
            ),
            (
                status(400),
                1,
                Verdict::Dead("HTTP 400 (not retried)".into()),
            ),
            (
                status(301),
                1,
                Verdict::Dead("HTTP 301 (not retried)".into()),
            ),
            (
                Outcome::Failed("timed out after 10s".into()),
                2,
                Verdict::Retry(secs(2)),
            ),
            (
                Outcome::Refused("127.0.0.1 is a private address".into()),
                1,
                Verdict::Dead("127.0.0.1 is a private address (not retried)".into()),
            ),
        ];
        for (i, (outcome, attempts, want)) in rows.into_iter().enumerate() {
            // unit 1.0: the full delay, so the table reads plainly.
            assert_eq!(verdict(&outcome, attempts, &B, 1.0), want, "row {i}");
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_with_the_upper_half_random() {
        let full: Vec<u64> = (1..=6).map(|a| delay(&B, a, 1.0).as_secs()).collect();
        assert_eq!(full, [1, 2, 4, 8, 10, 10]);
        assert_eq!(delay(&B, 3, 0.0), secs(2));
        assert_eq!(delay(&B, 3, 0.5), secs(3));
        assert_eq!(delay(&B, 100, 1.0), secs(10), "no overflow");
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + secs(784_111_777);
        assert_eq!(parse_retry_after("120", now), Some(secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(secs(0))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
