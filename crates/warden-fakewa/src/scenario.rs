//! What the server does on a connection: a [`Scenario`] is a list of [`Step`]s
//! played in order; a [`Plan`] picks the scenario by attempt number; a
//! [`Script`] picks the plan for each client.
//!
//! Steps run one after another while the server keeps answering the client's
//! IQs in the background. When the steps run out the connection stays open and
//! served until the client leaves.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One action of the server on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Start issuing QR references (in the background; the next step starts at once).
    Qr(QrSpec),
    /// Complete pairing: `pair-success`, wait for the client's signature, remember the
    /// device, then (unless `restart` is false) `<stream:error code=515>`.
    Pair(PairSpec),
    /// Accept the login: `<success>`, answer the client's setup IQs, deliver an empty
    /// offline backlog (wa-rs then emits `Connected`). Completes once the client is online.
    Login,
    /// Do nothing for this long (IQs are still answered).
    Wait(#[serde(with = "humantime_serde")] Duration),
    /// Drop the TCP connection without a WebSocket close frame.
    Drop,
    /// Close the WebSocket cleanly (close frame).
    Close,
    /// Stop answering anything, keep the connection open until the client leaves.
    Stall,
    /// From now on, leave keepalive pings (`xmlns="w:p"`) unanswered.
    IgnorePings,
    /// From now on, leave every IQ the client sends unanswered (recorded with
    /// `answered: false`), pings included; everything else goes on. Before [`Step::Login`],
    /// the client's setup queries stay in flight (and the login step ends at the server's
    /// `online_timeout`).
    HoldIqs,
    /// `<failure reason=…>`, then close.
    Failure(FailureSpec),
    /// `<stream:error …>` (the connection stays open; add `close` or `drop` after it if wanted).
    StreamError(StreamErrorSpec),
    /// `<xmlstreamend/>`.
    StreamEnd,
    /// Deliver an incoming message (see [`MessageSpec`]); the client answers with an `<ack>`,
    /// recorded as [`ServerEvent::ClientAck`](crate::ServerEvent::ClientAck).
    Message(MessageSpec),
    /// Refuse the next message the client sends on this connection: an error `<ack>` with
    /// this code (463 is WhatsApp's reach-out timelock), and no copy is delivered.
    RefuseNext(RefuseSpec),
    /// Wait until the client has uploaded pre-keys on this connection (it does when the
    /// server reports fewer than it wants: `prekey_count` below 5).
    AwaitUpload,
    /// Wait until the client has sent this many messages on this connection (counted by id,
    /// as [`ServerEvent::ClientMessage`](crate::ServerEvent::ClientMessage) records them).
    AwaitSent(usize),
}

/// An incoming message stanza, `<message from=… id=… type="text"><enc …/></message>`.
///
/// With `text`, and a client this server paired (it keeps the Signal keys the client announced
/// when it registered), the contact `from` encrypts the text for the client (`pkmsg`): the
/// client decrypts it and reports the message. Otherwise the payload is opaque bytes the client
/// cannot decrypt: enough for what a client does on receipt before decryption (per-chat
/// queueing, the `<ack>`), not for reading anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    /// The sender's JID, e.g. `15550001111@s.whatsapp.net`; it is also the chat.
    pub from: String,
    /// The stanza's id.
    pub id: String,
    /// The text, encrypted for the client; `None` sends an opaque payload. For an image or a
    /// document it is the caption, for a reaction the emoji.
    #[serde(default)]
    pub text: Option<String>,
    /// What the message is.
    #[serde(default)]
    pub kind: MessageKind,
}

/// What kind of message a contact sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A text.
    #[default]
    Text,
    /// An image (no media is downloadable; the caption is the text).
    Image,
    /// A document (likewise).
    Document,
    /// A reaction (the emoji is the text) to the client's message `m0`.
    Reaction,
}

impl MessageSpec {
    /// An opaque message from `from` with id `id`.
    pub fn new(from: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            from: from.into(),
            id: id.into(),
            text: None,
            kind: MessageKind::Text,
        }
    }

    /// A message of `kind` from `from`, with `text` as its caption or emoji.
    pub fn of_kind(
        kind: MessageKind,
        from: impl Into<String>,
        id: impl Into<String>,
        text: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            ..Self::text(from, id, text)
        }
    }

    /// A text message from `from` with id `id`, encrypted for the client.
    pub fn text(from: impl Into<String>, id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            text: Some(text.into()),
            ..Self::new(from, id)
        }
    }
}

/// How a message is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefuseSpec {
    /// The `error` code of the `<ack>`.
    pub code: u16,
    /// When the refusal's lock ends, from now (sent as `expiration`, Unix seconds); none when
    /// absent.
    #[serde(default, with = "humantime_serde")]
    pub expire: Option<Duration>,
}

impl RefuseSpec {
    /// WhatsApp's reach-out timelock (463), ending after `expire`.
    pub fn timelock(expire: Option<Duration>) -> Self {
        Self { code: 463, expire }
    }
}

/// QR reference timings. Defaults are WhatsApp's: 6 refs, the first shown 60 s, then 20 s each.
///
/// With exactly the default timings the refs go out in one `pair-device` stanza, as
/// WhatsApp sends them, and wa-rs rotates and expires them with its own 60 s/20 s timers.
/// With any other timings the server paces them itself: one `pair-device` per ref (wa-rs
/// then reports each with `timeout = 60s`), and when the last one expires an empty
/// `pair-device`, which makes wa-rs run its "all QR codes expired" path (it disconnects
/// with no event). Paced timings must stay under 60 s, the time wa-rs shows each ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QrSpec {
    /// Number of refs.
    pub refs: u32,
    /// How long the first ref lasts.
    #[serde(with = "humantime_serde")]
    pub first: Duration,
    /// How long each further ref lasts.
    #[serde(with = "humantime_serde")]
    pub then: Duration,
}

impl QrSpec {
    /// WhatsApp's first-ref lifetime, also hard-coded in wa-rs.
    pub const WA_FIRST: Duration = Duration::from_secs(60);
    /// WhatsApp's lifetime of every further ref, also hard-coded in wa-rs.
    pub const WA_THEN: Duration = Duration::from_secs(20);

    /// `refs` refs, the first lasting `first`, the others `then`.
    pub fn new(refs: u32, first: Duration, then: Duration) -> Self {
        Self { refs, first, then }
    }

    /// Whether the refs go out in one stanza and the client times them (see the type docs).
    pub fn is_batch(&self) -> bool {
        self.first == Self::WA_FIRST && self.then == Self::WA_THEN
    }

    /// When the last ref expires, from the start of the step.
    pub fn total(&self) -> Duration {
        if self.refs == 0 {
            return Duration::ZERO;
        }
        self.first + self.then * (self.refs - 1)
    }
}

impl Default for QrSpec {
    fn default() -> Self {
        Self {
            refs: 6,
            first: Self::WA_FIRST,
            then: Self::WA_THEN,
        }
    }
}

/// Which account a pairing creates and how it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairSpec {
    /// Phone number of the account; `None` takes the next number from the server's pool.
    pub phone: Option<String>,
    /// Device number; `None` takes the next free one for that phone (from 1).
    pub device: Option<u16>,
    /// Platform reported for the primary phone.
    pub platform: String,
    /// Business name (wa-rs stores it as the push name); empty for none.
    pub business_name: String,
    /// Send `<stream:error code=515>` after the client signed, as WhatsApp does.
    pub restart: bool,
    /// Delay between the client's signature and the 515.
    #[serde(with = "humantime_serde")]
    pub restart_after: Duration,
}

impl Default for PairSpec {
    fn default() -> Self {
        Self {
            phone: None,
            device: None,
            platform: "android".into(),
            business_name: String::new(),
            restart: true,
            restart_after: Duration::from_millis(100),
        }
    }
}

impl PairSpec {
    /// Pair as `phone`, everything else default.
    pub fn phone(phone: impl Into<String>) -> Self {
        Self {
            phone: Some(phone.into()),
            ..Self::default()
        }
    }
}

/// A `<failure>` stanza.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureSpec {
    /// The reason: 401 logged out, 402 temporary ban, 403 main device gone, 405 client
    /// outdated, 406 unknown logout, 409 bad user agent, 500/503 server errors, …
    pub reason: u16,
    /// Ban reason code for 402 (101 = sent to too many people, … 106).
    #[serde(default)]
    pub code: Option<u32>,
    /// Ban duration for 402.
    #[serde(default, with = "humantime_serde")]
    pub expire: Option<Duration>,
    /// Optional `message` attribute.
    #[serde(default)]
    pub message: Option<String>,
}

impl FailureSpec {
    /// `<failure reason=N>`.
    pub fn reason(reason: u16) -> Self {
        Self {
            reason,
            code: None,
            expire: None,
            message: None,
        }
    }

    /// A temporary ban (402) with a reason code and a duration.
    pub fn temp_ban(code: u32, expire: Duration) -> Self {
        Self {
            reason: 402,
            code: Some(code),
            expire: Some(expire),
            message: None,
        }
    }
}

/// A `<stream:error>` stanza.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamErrorSpec {
    /// `<stream:error code=N/>`: 515 restart required, 516 logged out, 503, any other code.
    Code(u16),
    /// `<stream:error><conflict type=T/>`: `replaced`, `device_removed`, …
    Conflict(String),
}

impl StreamErrorSpec {
    /// 515: restart required.
    pub fn restart_required() -> Self {
        Self::Code(515)
    }

    /// `conflict type=replaced`: another client took over the session.
    pub fn replaced() -> Self {
        Self::Conflict("replaced".into())
    }

    /// `conflict type=device_removed`: the device was unlinked.
    pub fn device_removed() -> Self {
        Self::Conflict("device_removed".into())
    }
}

impl Step {
    /// [`Step::Qr`] with WhatsApp's timings.
    pub fn qr() -> Self {
        Self::Qr(QrSpec::default())
    }

    /// [`Step::Wait`].
    pub fn wait(d: Duration) -> Self {
        Self::Wait(d)
    }

    /// [`Step::Failure`] with just a reason.
    pub fn failure(reason: u16) -> Self {
        Self::Failure(FailureSpec::reason(reason))
    }

    /// [`Step::StreamError`] with a code.
    pub fn stream_error(code: u16) -> Self {
        Self::StreamError(StreamErrorSpec::Code(code))
    }

    /// [`Step::StreamError`] with a conflict type.
    pub fn conflict(kind: &str) -> Self {
        Self::StreamError(StreamErrorSpec::Conflict(kind.into()))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Qr(q) => write!(f, "qr({} refs, {:?} then {:?})", q.refs, q.first, q.then),
            Step::Pair(p) => write!(f, "pair({})", p.phone.as_deref().unwrap_or("next phone")),
            Step::Login => f.write_str("login"),
            Step::Wait(d) => write!(f, "wait({d:?})"),
            Step::Drop => f.write_str("drop"),
            Step::Close => f.write_str("close"),
            Step::Stall => f.write_str("stall"),
            Step::IgnorePings => f.write_str("ignore_pings"),
            Step::HoldIqs => f.write_str("hold_iqs"),
            Step::Failure(x) => write!(f, "failure({})", x.reason),
            Step::StreamError(StreamErrorSpec::Code(c)) => write!(f, "stream_error({c})"),
            Step::StreamError(StreamErrorSpec::Conflict(c)) => {
                write!(f, "stream_error(conflict {c})")
            }
            Step::StreamEnd => f.write_str("stream_end"),
            Step::Message(m) => write!(f, "message({} from {})", m.id, m.from),
            Step::AwaitSent(n) => write!(f, "await_sent({n})"),
            Step::AwaitUpload => f.write_str("await_upload"),
            Step::RefuseNext(r) => write!(f, "refuse_next({})", r.code),
        }
    }
}

/// The steps played on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scenario(pub Vec<Step>);

impl Scenario {
    /// A scenario from steps.
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self(steps.into_iter().collect())
    }

    /// Accept the login and keep serving.
    pub fn login() -> Self {
        Self(vec![Step::Login])
    }

    /// Show QR refs (`qr`), then pair after `delay` with `pair`.
    pub fn pair_after(qr: QrSpec, delay: Duration, pair: PairSpec) -> Self {
        Self(vec![Step::Qr(qr), Step::Wait(delay), Step::Pair(pair)])
    }

    /// The steps.
    pub fn steps(&self) -> &[Step] {
        &self.0
    }
}

impl From<Vec<Step>> for Scenario {
    fn from(steps: Vec<Step>) -> Self {
        Self(steps)
    }
}

/// Scenarios by attempt number (1-based) for one client, and a default for the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Plan {
    /// `attempts[0]` plays on attempt 1, `attempts[1]` on attempt 2, …
    pub attempts: Vec<Scenario>,
    /// Plays on every attempt past the list.
    pub default: Scenario,
}

impl Plan {
    /// The same scenario on every attempt.
    pub fn always(scenario: impl Into<Scenario>) -> Self {
        Self {
            attempts: Vec::new(),
            default: scenario.into(),
        }
    }

    /// These scenarios for attempts 1, 2, …, then `default`.
    pub fn attempts(
        attempts: impl IntoIterator<Item = Scenario>,
        default: impl Into<Scenario>,
    ) -> Self {
        Self {
            attempts: attempts.into_iter().collect(),
            default: default.into(),
        }
    }

    /// The scenario for `attempt` (1-based).
    pub fn for_attempt(&self, attempt: u32) -> &Scenario {
        let idx = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.attempts.get(idx).unwrap_or(&self.default)
    }
}

/// Which plan each client gets.
///
/// Logins are matched by phone number in `accounts`, falling back to `login`; attempts
/// count per phone. Registrations (no credentials, so no account yet) use `registration`;
/// attempts count per client (its Noise key, which a wa-rs device store keeps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Script {
    /// Plan for clients that register (QR / pairing).
    pub registration: Plan,
    /// Plan for logins of accounts without their own entry.
    pub login: Plan,
    /// Plans for logins by phone number.
    pub accounts: BTreeMap<String, Plan>,
}

impl Default for Script {
    /// Registration: WhatsApp's QR timings, paired after 3 s; logins accepted.
    fn default() -> Self {
        Self {
            registration: Plan::always(Scenario::pair_after(
                QrSpec::default(),
                Duration::from_secs(3),
                PairSpec::default(),
            )),
            login: Plan::always(Scenario::login()),
            accounts: BTreeMap::new(),
        }
    }
}

impl Script {
    /// Sets the registration plan.
    pub fn with_registration(mut self, plan: Plan) -> Self {
        self.registration = plan;
        self
    }

    /// Sets the default login plan.
    pub fn with_login(mut self, plan: Plan) -> Self {
        self.login = plan;
        self
    }

    /// Sets the plan for logins of `phone`.
    pub fn with_account(mut self, phone: impl Into<String>, plan: Plan) -> Self {
        self.accounts.insert(phone.into(), plan);
        self
    }

    /// The plan for a login of `phone`.
    pub fn login_plan(&self, phone: &str) -> &Plan {
        self.accounts.get(phone).unwrap_or(&self.login)
    }

    /// Checks every step for values the server cannot play.
    pub fn validate(&self) -> Result<(), String> {
        let plans = std::iter::once(("registration".to_string(), &self.registration))
            .chain(std::iter::once(("login".to_string(), &self.login)))
            .chain(
                self.accounts
                    .iter()
                    .map(|(k, p)| (format!("accounts.{k}"), p)),
            );
        for (name, plan) in plans {
            for step in plan
                .attempts
                .iter()
                .chain(std::iter::once(&plan.default))
                .flat_map(|s| s.steps())
            {
                if let Step::Qr(q) = step
                    && !q.is_batch()
                    && (q.first >= QrSpec::WA_FIRST || q.then >= QrSpec::WA_FIRST)
                {
                    return Err(format!(
                        "{name}: paced QR timings must be under 60s, got {step}"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_picks_by_attempt_then_default() {
        let plan = Plan::attempts([Scenario::new([Step::failure(503)])], Scenario::login());
        assert_eq!(plan.for_attempt(1).steps(), &[Step::failure(503)]);
        assert_eq!(plan.for_attempt(2), &Scenario::login());
        assert_eq!(plan.for_attempt(0), &Scenario::new([Step::failure(503)]));
    }

    #[test]
    fn script_matches_accounts_and_validates_qr() {
        let s = Script::default().with_account("1555", Plan::always(Scenario::new([Step::Drop])));
        assert_eq!(s.login_plan("1555").default.steps(), &[Step::Drop]);
        assert_eq!(s.login_plan("1666"), &Plan::always(Scenario::login()));
        assert!(s.validate().is_ok());
        let bad = Script::default().with_login(Plan::always(Scenario::new([Step::Qr(
            QrSpec::new(2, Duration::from_secs(90), Duration::from_secs(1)),
        )])));
        assert!(bad.validate().is_err());
    }

    #[test]
    fn qr_total_and_batch() {
        assert!(QrSpec::default().is_batch());
        assert_eq!(QrSpec::default().total(), Duration::from_secs(160));
        let q = QrSpec::new(3, Duration::from_millis(100), Duration::from_millis(50));
        assert!(!q.is_batch());
        assert_eq!(q.total(), Duration::from_millis(200));
    }
}
