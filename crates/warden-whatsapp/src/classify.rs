//! From wa-rs events to warden's lifecycle: pure functions, no I/O, no clock.
//!
//! - [`tap`] keeps what matters of a wa-rs [`Event`] as a small owned [`Seen`]; it runs inside
//!   wa-rs's synchronous dispatch, so the order is the order wa-rs saw things in.
//! - [`lifecycle`] turns a [`Seen`] into the [`LifecycleEvent`] to report while the connection
//!   lives (`Connected` is completed by the link with the account read from the store).
//! - [`classify`] decides, once `run()` has returned, why the connection ended, from the
//!   events seen in this run and the [`RunFacts`] (which wa-rs does not report: whether the
//!   link stopped it, the watchdog, and what the transport saw).
//!
//! The table is in the crate documentation.

use std::fmt;
use std::time::{Duration, SystemTime};

use wa_rs::wa_rs_proto::whatsapp as wa;
use wa_rs_core::proto_helpers::MessageExt;
use wa_rs_core::types::events::Event;
use wa_rs_core::types::presence::ReceiptType;
use warden_core::{DisconnectReason, IncomingMessage, LifecycleEvent, ReceiptKind, SendOutcome};

use crate::transport::{Dial, SocketEnd, TransportFacts};

/// What the link keeps of one wa-rs event. QR and pair codes are secrets: [`fmt::Debug`]
/// hides them.
#[derive(Clone, PartialEq)]
pub enum Seen {
    /// `PairingQrCode`.
    Qr {
        /// The QR text.
        code: String,
        /// How long it is shown.
        expires_in: Duration,
    },
    /// `PairingCode`.
    PairCode {
        /// The code to type on the phone.
        code: String,
    },
    /// `PairSuccess`: the credentials are stored; the server restarts the stream (515).
    PairSuccess {
        /// The new device's JID.
        jid: String,
    },
    /// `PairError`: the pairing could not be completed.
    PairError {
        /// What went wrong.
        error: String,
    },
    /// `Connected`: logged in.
    Connected,
    /// `Disconnected`: the socket ended without wa-rs expecting it.
    Disconnected,
    /// `LoggedOut`: `<failure>` 401/403/406, or a `device_removed`/516 stream error.
    LoggedOut {
        /// The failure code (401 logged out, 403 main device gone, 406 unknown logout).
        code: i32,
        /// Whether it came as the answer to the login (a `<failure>`).
        on_connect: bool,
    },
    /// `StreamReplaced`: another client took over.
    Replaced,
    /// `TemporaryBan` (`<failure reason=402>`).
    TemporaryBan {
        /// The ban reason code (101…106).
        code: i32,
        /// How long it lasts.
        expires_in: Duration,
    },
    /// `ClientOutdated` (`<failure reason=405>`).
    ClientOutdated,
    /// `ConnectFailure`: any other `<failure>`.
    ConnectFailure {
        /// The failure code.
        code: i32,
        /// The server's message, if any.
        message: String,
    },
    /// `StreamError`: an unknown `<stream:error>` code.
    StreamError {
        /// The code.
        code: String,
    },
    /// `Message`.
    Message(IncomingMessage),
    /// `Receipt`: a recipient's delivery or read receipt.
    Receipt {
        /// The chat.
        chat: String,
        /// The messages it is about.
        ids: Vec<String>,
        /// Delivered or read.
        kind: ReceiptKind,
    },
}

impl Seen {
    /// What travels on the session's bounded inbound path, if this does.
    pub fn inbound(&self) -> Option<warden_core::Inbound> {
        match self {
            Self::Message(m) => Some(warden_core::Inbound::Message(Box::new(m.clone()))),
            Self::Receipt { chat, ids, kind } => Some(warden_core::Inbound::Receipt(Box::new(
                warden_core::Receipt {
                    chat: chat.clone(),
                    ids: ids.clone(),
                    kind: *kind,
                },
            ))),
            _ => None,
        }
    }
}

impl fmt::Debug for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Qr { expires_in, .. } => {
                write!(f, "Qr {{ code: <hidden>, expires_in: {expires_in:?} }}")
            }
            Self::PairCode { .. } => f.write_str("PairCode { code: <hidden> }"),
            Self::PairSuccess { jid } => write!(f, "PairSuccess {{ jid: {jid:?} }}"),
            Self::PairError { error } => write!(f, "PairError {{ error: {error:?} }}"),
            Self::Connected => f.write_str("Connected"),
            Self::Disconnected => f.write_str("Disconnected"),
            Self::LoggedOut { code, on_connect } => {
                write!(f, "LoggedOut {{ code: {code}, on_connect: {on_connect} }}")
            }
            Self::Replaced => f.write_str("Replaced"),
            Self::TemporaryBan { code, expires_in } => {
                write!(
                    f,
                    "TemporaryBan {{ code: {code}, expires_in: {expires_in:?} }}"
                )
            }
            Self::ClientOutdated => f.write_str("ClientOutdated"),
            Self::ConnectFailure { code, message } => {
                write!(f, "ConnectFailure {{ code: {code}, message: {message:?} }}")
            }
            Self::StreamError { code } => write!(f, "StreamError {{ code: {code:?} }}"),
            Self::Message(m) => write!(f, "Message {{ id: {:?}, chat: {:?} }}", m.id, m.chat),
            Self::Receipt { ids, kind, .. } => {
                write!(f, "Receipt {{ ids: {ids:?}, kind: {kind:?} }}")
            }
        }
    }
}

impl Seen {
    /// Whether the run's end is decided by this event whatever follows it.
    fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::LoggedOut { .. }
                | Self::Replaced
                | Self::TemporaryBan { .. }
                | Self::ClientOutdated
                | Self::ConnectFailure { .. }
                | Self::StreamError { .. }
                | Self::PairError { .. }
        )
    }

    /// Whether [`classify`] needs to remember it (messages and the like are not kept).
    pub fn matters_for_the_end(&self) -> bool {
        !matches!(self, Self::Message(_) | Self::PairCode { .. })
    }
}

/// Keeps what matters of a wa-rs event; `None` for events warden does not use.
pub fn tap(event: &Event) -> Option<Seen> {
    Some(match event {
        Event::PairingQrCode { code, timeout } => Seen::Qr {
            code: code.clone(),
            expires_in: *timeout,
        },
        Event::PairingCode { code, .. } => Seen::PairCode { code: code.clone() },
        Event::PairSuccess(p) => Seen::PairSuccess {
            jid: p.id.to_string(),
        },
        Event::PairError(p) => Seen::PairError {
            error: p.error.clone(),
        },
        Event::Connected(_) => Seen::Connected,
        Event::Disconnected(_) => Seen::Disconnected,
        Event::LoggedOut(l) => Seen::LoggedOut {
            code: l.reason.code(),
            on_connect: l.on_connect,
        },
        Event::StreamReplaced(_) => Seen::Replaced,
        Event::TemporaryBan(b) => Seen::TemporaryBan {
            code: b.code.code(),
            expires_in: b.expire.to_std().unwrap_or(Duration::ZERO),
        },
        Event::ClientOutdated(_) => Seen::ClientOutdated,
        Event::ConnectFailure(c) => Seen::ConnectFailure {
            code: c.reason.code(),
            message: c.message.clone(),
        },
        Event::StreamError(s) => Seen::StreamError {
            code: s.code.clone(),
        },
        Event::Message(message, info) => {
            let (kind, text) = describe(message);
            Seen::Message(IncomingMessage {
                id: info.id.clone(),
                chat: info.source.chat.to_string(),
                sender: info.source.sender.to_string(),
                timestamp: SystemTime::from(info.timestamp),
                kind: kind.to_owned(),
                text,
            })
        }
        Event::Receipt(receipt) => {
            // A delivery receipt has no `type`; wa-rs 0.2 reads that as "delivery", which it
            // then reports as `Other("delivery")` rather than `Delivered`.
            let kind = match &receipt.r#type {
                ReceiptType::Delivered => ReceiptKind::Delivered,
                ReceiptType::Other(t) if t == "delivery" => ReceiptKind::Delivered,
                ReceiptType::Read | ReceiptType::Played => ReceiptKind::Read,
                _ => return None,
            };
            Seen::Receipt {
                chat: receipt.source.chat.to_string(),
                ids: receipt.message_ids.clone(),
                kind,
            }
        }
        _ => return None,
    })
}

/// What the server's `<ack>` of a sent message says: accepted, or refused with the code in
/// its `error` attribute (0 when it is not a number). A refusal's lock end, when the server gives one, is read from an
/// `expiration` attribute (Unix seconds).
pub fn send_outcome(ack: &wa_rs_binary::node::Node) -> SendOutcome {
    let attr = |k: &str| ack.attrs.get(k).map(|v| v.to_string_value());
    match attr("error").map(|e| e.parse::<u16>().unwrap_or(0)) {
        None => SendOutcome::Accepted,
        Some(code) => SendOutcome::Refused {
            code,
            until: attr("expiration")
                .and_then(|t| t.parse::<u64>().ok())
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
        },
    }
}

/// What kind of message `message` is, and its text: the text of a text message, the caption
/// of media, the emoji of a reaction.
pub fn describe(message: &wa::Message) -> (&'static str, Option<String>) {
    let base = message.get_base_message();
    let text = |t: Option<&str>| t.filter(|t| !t.is_empty()).map(str::to_owned);
    if let Some(t) = message.text_content() {
        return ("text", text(Some(t)));
    }
    let caption = text(message.get_caption());
    if base.image_message.is_some() {
        ("image", caption)
    } else if base.video_message.is_some() {
        ("video", caption)
    } else if base.document_message.is_some() {
        ("document", caption)
    } else if base.audio_message.is_some() {
        ("audio", None)
    } else if base.sticker_message.is_some() {
        ("sticker", None)
    } else if let Some(r) = &base.reaction_message {
        ("reaction", text(r.text.as_deref()))
    } else if base.location_message.is_some() || base.live_location_message.is_some() {
        ("location", None)
    } else if base.contact_message.is_some() || base.contacts_array_message.is_some() {
        ("contact", None)
    } else {
        ("other", None)
    }
}

/// The lifecycle event to report for `seen` while the connection lives. `Connected` is left
/// to the caller, which adds the account; endings are left to [`classify`].
pub fn lifecycle(seen: &Seen) -> Option<LifecycleEvent> {
    Some(match seen {
        Seen::Qr { code, expires_in } => LifecycleEvent::QrIssued {
            code: code.clone(),
            expires_in: *expires_in,
        },
        Seen::PairCode { code } => LifecycleEvent::PairCode { code: code.clone() },
        Seen::PairSuccess { jid } => LifecycleEvent::Paired { jid: jid.clone() },
        _ => return None,
    })
}

/// What the link knows about a run besides wa-rs's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFacts {
    /// The link stopped it (close, drop).
    pub stopped: bool,
    /// The watchdog found the link dead and closed it.
    pub liveness_expired: bool,
    /// The device was not paired when the run began and its credentials are stored now: the
    /// run paired it, whether or not wa-rs got to report `PairSuccess` before the run ended.
    pub newly_paired: bool,
    /// What the transport saw.
    pub transport: TransportFacts,
}

/// Why a run ended, from the events seen in it (in order) and the facts around it.
/// See the crate documentation for the table.
pub fn classify(seen: &[Seen], facts: &RunFacts) -> DisconnectReason {
    if facts.stopped {
        return DisconnectReason::Stopped;
    }
    if facts.liveness_expired {
        return DisconnectReason::TimedOut;
    }
    if let Some(terminal) = seen.iter().rev().find(|s| s.is_terminal()) {
        return terminal_reason(terminal);
    }
    let last_connected = seen.iter().rposition(|s| *s == Seen::Connected);
    let paired_after_login = seen.iter().enumerate().any(|(i, s)| {
        matches!(s, Seen::PairSuccess { .. }) && last_connected.is_none_or(|c| i > c)
    });
    if paired_after_login || facts.newly_paired {
        return DisconnectReason::RestartRequired;
    }
    let end = facts.transport.end.as_ref();
    if seen.contains(&Seen::Disconnected) {
        return match end {
            Some(SocketEnd::ClosedByServer) => DisconnectReason::ConnectionClosed,
            _ => DisconnectReason::ConnectionLost,
        };
    }
    // No event said why: the transport and what was shown tell.
    match &facts.transport.dial {
        None => {
            return DisconnectReason::ConnectFailed("no connection was made".into());
        }
        Some(Dial::Failed(detail)) => return DisconnectReason::ConnectFailed(detail.clone()),
        Some(Dial::TimedOut) => return DisconnectReason::TimedOut,
        Some(Dial::ProxyUnreachable(detail)) => {
            return DisconnectReason::ProxyUnreachable(detail.clone());
        }
        Some(Dial::ProxyAuthFailed(detail)) => {
            return DisconnectReason::ProxyAuthFailed(detail.clone());
        }
        Some(Dial::Open) => {}
    }
    if end == Some(&SocketEnd::HandshakeTimedOut) {
        return DisconnectReason::TimedOut;
    }
    if seen.iter().any(|s| matches!(s, Seen::Qr { .. })) {
        return DisconnectReason::QrExpired;
    }
    if last_connected.is_some() {
        // 515 or <xmlstreamend/> while logged in: the server ended the stream.
        return DisconnectReason::ConnectionClosed;
    }
    match end {
        _ if !facts.transport.received => DisconnectReason::ConnectFailed(
            "the server closed the connection before the handshake".into(),
        ),
        Some(SocketEnd::ClosedByServer) => DisconnectReason::ConnectionClosed,
        Some(SocketEnd::Dropped(_)) => DisconnectReason::ConnectionLost,
        _ => DisconnectReason::ConnectFailed("the WhatsApp handshake failed".into()),
    }
}

fn terminal_reason(seen: &Seen) -> DisconnectReason {
    match seen {
        Seen::LoggedOut { .. } => DisconnectReason::LoggedOut,
        Seen::Replaced => DisconnectReason::Replaced,
        Seen::TemporaryBan { code, expires_in } => DisconnectReason::TemporarilyBanned {
            expires_in: *expires_in,
            code: Some(code.to_string()),
        },
        Seen::ClientOutdated => DisconnectReason::ClientOutdated,
        Seen::ConnectFailure { code, message } => failure_reason(*code, message),
        Seen::StreamError { code } => DisconnectReason::StreamError(code.clone()),
        Seen::PairError { error } => {
            DisconnectReason::ConnectFailed(format!("pairing failed: {error}"))
        }
        _ => DisconnectReason::ConnectionLost,
    }
}

/// A `<failure reason=N>` that wa-rs reported as `ConnectFailure`.
fn failure_reason(code: i32, message: &str) -> DisconnectReason {
    let detail = |what: &str| {
        if message.is_empty() {
            format!("failure {code}: {what}")
        } else {
            format!("failure {code}: {what} ({message})")
        }
    };
    match code {
        401 | 403 | 406 => DisconnectReason::LoggedOut,
        402 => DisconnectReason::TemporarilyBanned {
            expires_in: Duration::ZERO,
            code: None,
        },
        405 | 409 => DisconnectReason::ClientOutdated,
        413 => DisconnectReason::BadCredentials(detail("auth token expired")),
        414 => DisconnectReason::BadCredentials(detail("auth token invalid")),
        415 => DisconnectReason::BadCredentials(detail("account not found")),
        418 => DisconnectReason::BadCredentials(detail("client unknown")),
        500 | 503 => DisconnectReason::ServerUnavailable,
        400 => DisconnectReason::ConnectFailed(detail("bad request")),
        501 => DisconnectReason::ConnectFailed(detail("experimental")),
        _ => DisconnectReason::ConnectFailed(detail("login refused")),
    }
}

#[cfg(test)]
mod tests {
    use wa_rs::Jid;
    use wa_rs_core::types::events::{
        ClientOutdated, ConnectFailure, ConnectFailureReason, Connected, Disconnected, LoggedOut,
        PairError, PairSuccess, StreamError, StreamReplaced, TempBanReason, TemporaryBan,
    };
    use wa_rs_core::types::message::{MessageInfo, MessageSource};

    use super::*;
    use DisconnectReason as R;

    fn open(end: Option<SocketEnd>) -> RunFacts {
        RunFacts {
            transport: TransportFacts {
                dial: Some(Dial::Open),
                received: true,
                end,
            },
            ..RunFacts::default()
        }
    }

    fn pair_success() -> Event {
        Event::PairSuccess(PairSuccess {
            id: "15551234567:1@s.whatsapp.net".parse().unwrap(),
            lid: "100000012345678:1@lid".parse().unwrap(),
            business_name: String::new(),
            platform: "android".into(),
        })
    }

    fn logged_out(reason: ConnectFailureReason, on_connect: bool) -> Event {
        Event::LoggedOut(LoggedOut { on_connect, reason })
    }

    fn failure(reason: ConnectFailureReason) -> Event {
        Event::ConnectFailure(ConnectFailure {
            reason,
            message: String::new(),
            raw: None,
        })
    }

    fn qr() -> Event {
        Event::PairingQrCode {
            code: "2@ref,noise,identity,adv".into(),
            timeout: Duration::from_secs(60),
        }
    }

    /// Taps `events` as the link does and classifies the run.
    fn end_of(events: Vec<Event>, facts: RunFacts) -> DisconnectReason {
        let seen: Vec<Seen> = events.iter().filter_map(tap).collect();
        classify(&seen, &facts)
    }

    /// Every row of wa-rs-notes §2.2, in order.
    #[test]
    fn every_ending_of_a_run() {
        let dropped = || open(Some(SocketEnd::Dropped("reset".into())));
        let rows: Vec<(&str, Vec<Event>, RunFacts, DisconnectReason)> = vec![
            (
                "we called disconnect()",
                vec![Event::Connected(Connected)],
                RunFacts {
                    stopped: true,
                    ..open(Some(SocketEnd::ClosedHere))
                },
                R::Stopped,
            ),
            (
                "PairSuccess, then 515",
                vec![qr(), pair_success()],
                open(Some(SocketEnd::ClosedHere)),
                R::RestartRequired,
            ),
            (
                "Disconnected, dropped",
                vec![
                    Event::Connected(Connected),
                    Event::Disconnected(Disconnected),
                ],
                dropped(),
                R::ConnectionLost,
            ),
            (
                "Disconnected, close frame",
                vec![
                    Event::Connected(Connected),
                    Event::Disconnected(Disconnected),
                ],
                open(Some(SocketEnd::ClosedByServer)),
                R::ConnectionClosed,
            ),
            (
                "401 on connect",
                vec![logged_out(ConnectFailureReason::LoggedOut, true)],
                dropped(),
                R::LoggedOut,
            ),
            (
                "403 main device gone",
                vec![logged_out(ConnectFailureReason::MainDeviceGone, true)],
                dropped(),
                R::LoggedOut,
            ),
            (
                "406 unknown logout",
                vec![logged_out(ConnectFailureReason::UnknownLogout, true)],
                dropped(),
                R::LoggedOut,
            ),
            (
                "device_removed / 516 stream error",
                vec![
                    Event::Connected(Connected),
                    logged_out(ConnectFailureReason::LoggedOut, false),
                ],
                open(Some(SocketEnd::ClosedHere)),
                R::LoggedOut,
            ),
            (
                "418 client unknown",
                vec![failure(ConnectFailureReason::ClientUnknown)],
                dropped(),
                R::BadCredentials("failure 418: client unknown".into()),
            ),
            (
                "414 auth token invalid",
                vec![failure(ConnectFailureReason::CatInvalid)],
                dropped(),
                R::BadCredentials("failure 414: auth token invalid".into()),
            ),
            (
                "413 auth token expired",
                vec![failure(ConnectFailureReason::CatExpired)],
                dropped(),
                R::BadCredentials("failure 413: auth token expired".into()),
            ),
            (
                "415 not found",
                vec![failure(ConnectFailureReason::NotFound)],
                dropped(),
                R::BadCredentials("failure 415: account not found".into()),
            ),
            (
                "replaced",
                vec![
                    Event::Connected(Connected),
                    Event::StreamReplaced(StreamReplaced),
                ],
                open(Some(SocketEnd::ClosedHere)),
                R::Replaced,
            ),
            (
                "temporary ban",
                vec![Event::TemporaryBan(TemporaryBan {
                    code: TempBanReason::SentToTooManyPeople,
                    expire: chrono::Duration::seconds(3600),
                })],
                dropped(),
                R::TemporarilyBanned {
                    expires_in: Duration::from_secs(3600),
                    code: Some("101".into()),
                },
            ),
            (
                "405 client outdated",
                vec![Event::ClientOutdated(ClientOutdated)],
                dropped(),
                R::ClientOutdated,
            ),
            (
                "503 then the server closes",
                vec![
                    failure(ConnectFailureReason::ServiceUnavailable),
                    Event::Disconnected(Disconnected),
                ],
                open(Some(SocketEnd::ClosedByServer)),
                R::ServerUnavailable,
            ),
            (
                "500",
                vec![failure(ConnectFailureReason::InternalServerError)],
                dropped(),
                R::ServerUnavailable,
            ),
            (
                "409 bad user agent",
                vec![failure(ConnectFailureReason::BadUserAgent)],
                dropped(),
                R::ClientOutdated,
            ),
            (
                "400 generic",
                vec![failure(ConnectFailureReason::Generic)],
                dropped(),
                R::ConnectFailed("failure 400: bad request".into()),
            ),
            (
                "unknown failure",
                vec![failure(ConnectFailureReason::Unknown(499))],
                dropped(),
                R::ConnectFailed("failure 499: login refused".into()),
            ),
            (
                "unknown stream error",
                vec![
                    Event::Connected(Connected),
                    Event::StreamError(StreamError {
                        code: "999".into(),
                        raw: None,
                    }),
                ],
                open(Some(SocketEnd::ClosedHere)),
                R::StreamError("999".into()),
            ),
            (
                "QR codes ran out",
                vec![qr(), qr()],
                open(Some(SocketEnd::ClosedHere)),
                R::QrExpired,
            ),
            (
                "paired (credentials stored), 515 before wa-rs reported PairSuccess",
                vec![qr()],
                RunFacts {
                    newly_paired: true,
                    ..open(Some(SocketEnd::ClosedHere))
                },
                R::RestartRequired,
            ),
            (
                "paired, then logged out at once: the logout wins",
                vec![qr(), logged_out(ConnectFailureReason::LoggedOut, false)],
                RunFacts {
                    newly_paired: true,
                    ..open(Some(SocketEnd::ClosedHere))
                },
                R::LoggedOut,
            ),
            (
                "no event: dial failed",
                vec![],
                RunFacts {
                    transport: TransportFacts {
                        dial: Some(Dial::Failed("connection refused".into())),
                        ..TransportFacts::default()
                    },
                    ..RunFacts::default()
                },
                R::ConnectFailed("connection refused".into()),
            ),
            (
                "no event: dial timed out",
                vec![],
                RunFacts {
                    transport: TransportFacts {
                        dial: Some(Dial::TimedOut),
                        ..TransportFacts::default()
                    },
                    ..RunFacts::default()
                },
                R::TimedOut,
            ),
            (
                "no event: the proxy could not be reached",
                vec![],
                RunFacts {
                    transport: TransportFacts {
                        dial: Some(Dial::ProxyUnreachable("refused".into())),
                        ..TransportFacts::default()
                    },
                    ..RunFacts::default()
                },
                R::ProxyUnreachable("refused".into()),
            ),
            (
                "no event: the proxy refused the password",
                vec![],
                RunFacts {
                    transport: TransportFacts {
                        dial: Some(Dial::ProxyAuthFailed("refused".into())),
                        ..TransportFacts::default()
                    },
                    ..RunFacts::default()
                },
                R::ProxyAuthFailed("refused".into()),
            ),
            (
                "no event: silent after the upgrade",
                vec![],
                RunFacts {
                    transport: TransportFacts {
                        dial: Some(Dial::Open),
                        received: false,
                        end: Some(SocketEnd::HandshakeTimedOut),
                    },
                    ..RunFacts::default()
                },
                R::TimedOut,
            ),
            (
                "no event: closed before the handshake",
                vec![],
                RunFacts {
                    transport: TransportFacts {
                        dial: Some(Dial::Open),
                        received: false,
                        end: Some(SocketEnd::ClosedByServer),
                    },
                    ..RunFacts::default()
                },
                R::ConnectFailed("the server closed the connection before the handshake".into()),
            ),
            (
                "no event: handshake rejected",
                vec![],
                open(Some(SocketEnd::ClosedHere)),
                R::ConnectFailed("the WhatsApp handshake failed".into()),
            ),
            (
                "no event: dropped after connect",
                vec![],
                dropped(),
                R::ConnectionLost,
            ),
            (
                "no event after Connected (515 / stream end)",
                vec![Event::Connected(Connected)],
                open(Some(SocketEnd::ClosedHere)),
                R::ConnectionClosed,
            ),
            (
                "dead link caught by the watchdog",
                vec![Event::Connected(Connected)],
                RunFacts {
                    liveness_expired: true,
                    ..open(Some(SocketEnd::ClosedHere))
                },
                R::TimedOut,
            ),
            (
                "pairing failed",
                vec![
                    qr(),
                    Event::PairError(PairError {
                        id: Jid::pn("15551234567"),
                        lid: Jid::pn("1"),
                        business_name: String::new(),
                        platform: String::new(),
                        error: "bad signature".into(),
                    }),
                ],
                open(Some(SocketEnd::ClosedHere)),
                R::ConnectFailed("pairing failed: bad signature".into()),
            ),
        ];
        for (row, events, facts, expected) in rows {
            assert_eq!(end_of(events, facts), expected, "{row}");
        }
    }

    #[test]
    fn a_pairing_before_a_login_no_longer_asks_for_a_restart() {
        let events = vec![
            pair_success(),
            Event::Connected(Connected),
            Event::Disconnected(Disconnected),
        ];
        assert_eq!(
            end_of(events, open(Some(SocketEnd::Dropped("x".into())))),
            R::ConnectionLost
        );
    }

    #[test]
    fn lifecycle_events_while_connected() {
        let seen = tap(&qr()).unwrap();
        assert_eq!(
            lifecycle(&seen),
            Some(LifecycleEvent::QrIssued {
                code: "2@ref,noise,identity,adv".into(),
                expires_in: Duration::from_secs(60)
            })
        );
        assert!(
            !format!("{seen:?}").contains("2@ref"),
            "QR codes are never printed"
        );
        let code = tap(&Event::PairingCode {
            code: "ABCD1234".into(),
            timeout: Duration::from_secs(180),
        })
        .unwrap();
        assert_eq!(
            lifecycle(&code),
            Some(LifecycleEvent::PairCode {
                code: "ABCD1234".into()
            })
        );
        assert!(!format!("{code:?}").contains("ABCD"));
        assert_eq!(
            lifecycle(&tap(&pair_success()).unwrap()),
            Some(LifecycleEvent::Paired {
                jid: "15551234567:1@s.whatsapp.net".into()
            })
        );
        assert_eq!(lifecycle(&tap(&Event::Connected(Connected)).unwrap()), None);
        assert_eq!(
            tap(&Event::Disconnected(Disconnected)),
            Some(Seen::Disconnected)
        );
    }

    #[test]
    fn messages_surface_with_their_text() {
        let info = MessageInfo {
            source: MessageSource {
                chat: Jid::pn("15550001111"),
                sender: Jid::pn("15550001111"),
                ..MessageSource::default()
            },
            id: "3EB0ABC".into(),
            timestamp: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            ..MessageInfo::default()
        };
        let message = wa_rs::wa_rs_proto::whatsapp::Message {
            conversation: Some("hello".into()),
            ..Default::default()
        };
        let seen = tap(&Event::Message(Box::new(message), info)).unwrap();
        assert!(!seen.matters_for_the_end());
        let expected = IncomingMessage {
            id: "3EB0ABC".into(),
            chat: "15550001111@s.whatsapp.net".into(),
            sender: "15550001111@s.whatsapp.net".into(),
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            kind: "text".into(),
            text: Some("hello".into()),
        };
        assert_eq!(lifecycle(&seen), None, "messages are not lifecycle events");
        assert_eq!(
            seen.inbound(),
            Some(warden_core::Inbound::Message(Box::new(expected)))
        );
    }

    #[test]
    fn message_kinds_and_their_text() {
        use wa_rs::wa_rs_proto::whatsapp::{self as wa, message as m};
        let table: Vec<(wa::Message, &str, Option<&str>)> = vec![
            (
                wa::Message {
                    conversation: Some("hi".into()),
                    ..Default::default()
                },
                "text",
                Some("hi"),
            ),
            (
                wa::Message {
                    extended_text_message: Some(Box::new(m::ExtendedTextMessage {
                        text: Some("a link".into()),
                        ..Default::default()
                    })),
                    ..Default::default()
                },
                "text",
                Some("a link"),
            ),
            (
                wa::Message {
                    image_message: Some(Box::new(m::ImageMessage {
                        caption: Some("a cat".into()),
                        ..Default::default()
                    })),
                    ..Default::default()
                },
                "image",
                Some("a cat"),
            ),
            (
                wa::Message {
                    document_message: Some(Box::new(m::DocumentMessage {
                        caption: Some("invoice".into()),
                        ..Default::default()
                    })),
                    ..Default::default()
                },
                "document",
                Some("invoice"),
            ),
            (
                wa::Message {
                    reaction_message: Some(m::ReactionMessage {
                        text: Some("👍".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "reaction",
                Some("👍"),
            ),
            (
                wa::Message {
                    audio_message: Some(Box::new(m::AudioMessage::default())),
                    ..Default::default()
                },
                "audio",
                None,
            ),
            (wa::Message::default(), "other", None),
        ];
        for (message, kind, text) in table {
            assert_eq!(
                describe(&message),
                (kind, text.map(str::to_owned)),
                "{kind}"
            );
        }
    }

    #[test]
    fn an_ack_with_an_error_is_a_refusal() {
        use wa_rs_binary::builder::NodeBuilder;
        let ack = |attrs: &[(&str, &str)]| {
            let mut b = NodeBuilder::new("ack");
            for (k, v) in attrs {
                b = b.attr(*k, *v);
            }
            b.build()
        };
        assert_eq!(
            send_outcome(&ack(&[("id", "x"), ("class", "message")])),
            SendOutcome::Accepted
        );
        assert_eq!(
            send_outcome(&ack(&[("id", "x"), ("error", "463")])),
            SendOutcome::Refused {
                code: 463,
                until: None
            }
        );
        assert_eq!(
            send_outcome(&ack(&[("error", "463"), ("expiration", "1700000000")])),
            SendOutcome::Refused {
                code: 463,
                until: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
            }
        );
    }
}
