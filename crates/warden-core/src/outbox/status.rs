//! The life of one outgoing message, as a pure function: [`next`] says which status follows
//! a status and an event, or that the event changes nothing. No I/O, no clock.
//!
//! ```text
//! queued ──ack──▶ sent ──delivered──▶ delivered ──read──▶ read
//!   │  ╲                                          ▲
//!   │   ╲──refused / expired / gone / out of attempts──▶ failed ──retry──▶ queued
//!   └──cancel──▶ cancelled          (failed ──cancel──▶ cancelled)
//! ```
//! A receipt or an ack is the truth about what the recipient or the server has, so it moves a
//! message forward from any status that is behind it (a late ack after a failure included);
//! nothing moves a message back, except an operator's retry of a failed one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where an outgoing message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Stored, waiting to be sent (its session is connecting, backing off, paced, or busy).
    Queued,
    /// The server acknowledged it.
    Sent,
    /// The recipient's phone has it.
    Delivered,
    /// The recipient read it.
    Read,
    /// It will not be sent (see its reason); a retry queues it again.
    Failed,
    /// The operator cancelled it; it will never be sent.
    Cancelled,
}

impl MessageStatus {
    /// Every status, in the order a message moves through them.
    pub const ALL: [MessageStatus; 6] = [
        Self::Queued,
        Self::Sent,
        Self::Delivered,
        Self::Read,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// How far along the way to the recipient it is (for acks and receipts).
    fn progress(self) -> u8 {
        match self {
            Self::Queued | Self::Failed | Self::Cancelled => 0,
            Self::Sent => 1,
            Self::Delivered => 2,
            Self::Read => 3,
        }
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown message status {s:?}"))
    }
}

/// What a recipient's receipt says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// Its phone has the message.
    Delivered,
    /// It read the message.
    Read,
}

/// Something that happened to an outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEvent {
    /// The server acknowledged it.
    Acked,
    /// The server refused it with an error code (e.g. 463).
    Refused,
    /// A receipt from the recipient.
    Receipt(ReceiptKind),
    /// A try to send it failed; `last` when it was the last try allowed.
    SendFailed {
        /// No try is left.
        last: bool,
    },
    /// It is malformed for the server (the recipient is not a user); trying again is useless.
    Rejected,
    /// Its time to live passed while it was queued.
    Expired,
    /// Its session was logged out or deleted.
    SessionGone,
    /// The operator asked to send a failed message again.
    Retry,
    /// The operator cancelled it.
    Cancel,
}

/// The status that follows `status` when `event` happens; `None`: nothing changes.
pub fn next(status: MessageStatus, event: MessageEvent) -> Option<MessageStatus> {
    use MessageEvent as E;
    use MessageStatus as S;
    let forward =
        |to: S| (to.progress() > status.progress() && status != S::Cancelled).then_some(to);
    match (status, event) {
        (_, E::Acked) => forward(S::Sent),
        (_, E::Receipt(ReceiptKind::Delivered)) => forward(S::Delivered),
        (_, E::Receipt(ReceiptKind::Read)) => forward(S::Read),
        (S::Queued, E::Refused | E::Rejected | E::Expired | E::SessionGone) => Some(S::Failed),
        (S::Queued, E::SendFailed { last: true }) => Some(S::Failed),
        (S::Queued, E::SendFailed { last: false }) => None,
        (S::Queued | S::Failed, E::Cancel) => Some(S::Cancelled),
        (S::Failed, E::Retry) => Some(S::Queued),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MessageEvent as E;
    use MessageStatus as S;

    const EVENTS: [MessageEvent; 11] = [
        E::Acked,
        E::Refused,
        E::Receipt(ReceiptKind::Delivered),
        E::Receipt(ReceiptKind::Read),
        E::SendFailed { last: false },
        E::SendFailed { last: true },
        E::Rejected,
        E::Expired,
        E::SessionGone,
        E::Retry,
        E::Cancel,
    ];

    /// Every status × every event, written out: `-` is "no change".
    #[test]
    fn every_status_and_event() {
        // Columns follow EVENTS.
        let table: [(S, [Option<S>; 11]); 6] = [
            (
                S::Queued,
                [
                    Some(S::Sent),
                    Some(S::Failed),
                    Some(S::Delivered),
                    Some(S::Read),
                    None,
                    Some(S::Failed),
                    Some(S::Failed),
                    Some(S::Failed),
                    Some(S::Failed),
                    None,
                    Some(S::Cancelled),
                ],
            ),
            (
                S::Sent,
                [
                    None,
                    None,
                    Some(S::Delivered),
                    Some(S::Read),
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                ],
            ),
            (
                S::Delivered,
                [
                    None,
                    None,
                    None,
                    Some(S::Read),
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                ],
            ),
            (S::Read, [None; 11]),
            (
                S::Failed,
                [
                    Some(S::Sent),
                    None,
                    Some(S::Delivered),
                    Some(S::Read),
                    None,
                    None,
                    None,
                    None,
                    None,
                    Some(S::Queued),
                    Some(S::Cancelled),
                ],
            ),
            (S::Cancelled, [None; 11]),
        ];
        for (status, row) in table {
            for (event, want) in EVENTS.into_iter().zip(row) {
                assert_eq!(next(status, event), want, "{status} + {event:?}");
            }
        }
    }

    #[test]
    fn no_event_moves_a_message_back_except_a_retry() {
        for status in S::ALL {
            for event in EVENTS {
                if let Some(to) = next(status, event)
                    && event != E::Retry
                    && to.progress() < status.progress()
                {
                    panic!("{status} + {event:?} went back to {to}");
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for status in S::ALL {
            assert_eq!(status.as_str().parse::<S>(), Ok(status));
        }
        assert!("sending".parse::<S>().is_err());
    }
}
