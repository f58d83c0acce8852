//! What every client did, for tests to assert on and to await.
//!
//! The [`Recorder`] keeps an ordered log of [`Record`]s and a summary per
//! connection, including how many connections of each account were open at
//! the same time. Waiting is event-driven: [`Recorder::wait_until`] and
//! [`Recorder::wait_for`] wake on every new record, so tests never sleep to
//! synchronise.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::ClientInfo;

/// Identifies one accepted TCP connection (1, 2, 3, … in accept order).
pub type ConnId = u64;

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// The client closed it or went away.
    Client,
    /// The server sent a WebSocket close frame.
    Server,
    /// The server dropped the TCP connection without a close frame.
    Dropped,
    /// The server shut down.
    Shutdown,
    /// A protocol error (bad handshake, undecodable frame) ended it.
    Error,
}

/// Something the server saw or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A TCP connection was accepted.
    Accepted {
        /// The client's address.
        peer: SocketAddr,
    },
    /// The listener was held silent on this connection (no upgrade, or no handshake reply).
    Silent {
        /// Whether the WebSocket upgrade was answered.
        upgraded: bool,
    },
    /// The Noise handshake completed.
    Handshake {
        /// Who the client is.
        client: ClientInfo,
        /// Attempt number of this client (1-based; per phone for logins, per client for registrations).
        attempt: u32,
    },
    /// The handshake failed.
    HandshakeFailed(String),
    /// A scenario step started.
    Step {
        /// Position in the scenario (0-based).
        index: usize,
        /// The step, rendered.
        step: String,
    },
    /// A step did not apply to this client (e.g. `login` on a registration) and was skipped.
    StepSkipped(String),
    /// A QR reference was issued.
    QrRef {
        /// 1-based number of the ref on this connection.
        n: u32,
    },
    /// The last QR reference expired.
    QrExpired,
    /// `pair-success` was sent for this device JID.
    PairSent {
        /// The device JID.
        jid: String,
    },
    /// The client signed the pairing; the device is registered.
    Paired {
        /// The device JID.
        jid: String,
    },
    /// The pairing did not complete.
    PairFailed(String),
    /// `<success>` was sent.
    LoginAccepted,
    /// A login of a device this server never paired was refused (`accept_unknown_devices = false`).
    UnknownDevice,
    /// The client finished its post-login setup (wa-rs has emitted `Connected`).
    Online,
    /// A keepalive ping arrived.
    Ping {
        /// Whether it was answered.
        answered: bool,
    },
    /// Any other IQ arrived from the client.
    Iq {
        /// Its `xmlns`.
        xmlns: String,
        /// Its `type` (`get`, `set`, `result`, `error`).
        kind: String,
        /// Whether the server answered it.
        answered: bool,
    },
    /// A `<failure>` was sent.
    FailureSent {
        /// Its reason.
        reason: u16,
    },
    /// A `<stream:error>` was sent.
    StreamErrorSent(String),
    /// `<xmlstreamend/>` was sent.
    StreamEndSent,
    /// The same device logged in on connection `by`: this (older) connection was sent
    /// `<stream:error><conflict type="replaced"/>` and is being closed
    /// ([`ServerConfig::replace_older_login`](crate::ServerConfig::replace_older_login)).
    Replaced {
        /// The connection of the newer login.
        by: ConnId,
    },
    /// An incoming message was delivered to the client.
    MessageSent {
        /// The stanza's id.
        id: String,
        /// Its sender.
        from: String,
    },
    /// The client acknowledged a stanza (`<ack class=… id=…>`).
    ClientAck {
        /// What it acknowledged: `message`, `receipt`, `notification`, `call`.
        class: String,
        /// The acknowledged stanza's id.
        id: String,
    },
    /// The client sent a receipt (`<receipt type=… id=…>`; `type` is empty for a delivery
    /// receipt, `retry` when it could not decrypt).
    ClientReceipt {
        /// Its `type`.
        kind: String,
        /// The id of the message it is about.
        id: String,
    },
    /// A copy of a message the client sent, for one device, and what that device read in it
    /// (or why it could not).
    ClientMessage {
        /// The message's id.
        id: String,
        /// The chat it was sent to (the stanza's `to`).
        chat: String,
        /// The device this copy was encrypted for.
        device: String,
        /// `pkmsg` (it started a Signal session) or `msg`.
        enc_type: String,
        /// What the device decrypted, or why it could not.
        plaintext: Result<crate::signal::Plaintext, String>,
        /// This device had already read a message with this id from this sender: a resend,
        /// which a real recipient drops.
        duplicate: bool,
    },
    /// The client uploaded `count` one-time pre-keys (and its keys); `kept` when it is a
    /// device paired here, whose keys contacts then use.
    PreKeysUploaded {
        /// How many one-time pre-keys.
        count: usize,
        /// Whether they were kept.
        kept: bool,
    },
    /// A message the client sent was refused (`RefuseNext`), with this code.
    MessageRefused {
        /// The message's id.
        id: String,
        /// The chat.
        chat: String,
        /// The error code sent.
        code: u16,
    },
    /// The connection ended.
    Closed(CloseKind),
}

impl fmt::Display for ServerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerEvent::Handshake { client, attempt } => {
                write!(f, "handshake: {client}, attempt {attempt}")
            }
            ServerEvent::Step { index, step } => write!(f, "step {index}: {step}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Time since the server started.
    pub at: Duration,
    /// The connection.
    pub conn: ConnId,
    /// The connection's account when this was recorded (see [`Connection::account`]).
    pub account: Option<String>,
    /// What happened.
    pub event: ServerEvent,
}

/// Summary of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Its id.
    pub id: ConnId,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client, once the handshake completed.
    pub client: Option<ClientInfo>,
    /// The account: the phone for logins and for registrations that paired (or whose
    /// client was paired before), `unpaired:<client id>` for other registrations.
    pub account: Option<String>,
    /// Attempt number (0 before the handshake).
    pub attempt: u32,
    /// When it was accepted, since the server started.
    pub opened: Duration,
    /// When and how it ended.
    pub closed: Option<(Duration, CloseKind)>,
    /// When the server ended the session on it (a `<failure>`, a stream error other than
    /// 503, or `<xmlstreamend/>`) while the socket was still open.
    pub retired: Option<Duration>,
    /// Steps started, rendered.
    pub steps: Vec<String>,
    /// Keepalive pings received.
    pub pings: u32,
    /// Keepalive pings answered.
    pub pings_answered: u32,
    /// Other IQs received.
    pub iqs: u32,
}

/// Everything recorded so far.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    records: Vec<Record>,
    connections: Vec<Connection>,
    open_per_account: HashMap<String, usize>,
    max_per_account: HashMap<String, usize>,
}

impl Snapshot {
    /// The log, oldest first.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Every connection, in accept order.
    pub fn connections(&self) -> &[Connection] {
        &self.connections
    }

    /// One connection.
    pub fn connection(&self, id: ConnId) -> Option<&Connection> {
        self.connections.iter().find(|c| c.id == id)
    }

    /// Connections made for `account`.
    pub fn connections_for(&self, account: &str) -> Vec<&Connection> {
        self.connections
            .iter()
            .filter(|c| c.account.as_deref() == Some(account))
            .collect()
    }

    /// The most live connections of `account` at once. A connection is live from its
    /// handshake until it closes or the server ends its session (see
    /// [`Connection::retired`]): a client reconnecting right after a 515 while its old
    /// socket is still closing is not counted twice.
    pub fn max_concurrent(&self, account: &str) -> usize {
        self.max_per_account.get(account).copied().unwrap_or(0)
    }

    /// The most connections of any single account that were open at once.
    pub fn max_concurrent_any(&self) -> usize {
        self.max_per_account.values().copied().max().unwrap_or(0)
    }

    /// Connections accepted and not yet closed.
    pub fn open_connections(&self) -> usize {
        self.connections
            .iter()
            .filter(|c| c.closed.is_none())
            .count()
    }

    /// How many messages (distinct ids) the client sent on connection `conn`.
    pub fn messages_sent_on(&self, conn: ConnId) -> usize {
        let mut ids: Vec<&str> = self
            .records
            .iter()
            .filter(|r| r.conn == conn)
            .filter_map(|r| match &r.event {
                ServerEvent::ClientMessage { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    /// Keepalive pings received from `account`, answered or not.
    pub fn pings(&self, account: &str) -> u32 {
        self.connections_for(account).iter().map(|c| c.pings).sum()
    }

    /// The events of one connection, in order.
    pub fn events_of(&self, conn: ConnId) -> Vec<&ServerEvent> {
        self.records
            .iter()
            .filter(|r| r.conn == conn)
            .map(|r| &r.event)
            .collect()
    }

    /// How many records match `pred`.
    pub fn count(&self, pred: impl Fn(&Record) -> bool) -> usize {
        self.records.iter().filter(|r| pred(r)).count()
    }

    /// Whether any record matches `pred`.
    pub fn any(&self, pred: impl Fn(&Record) -> bool) -> bool {
        self.records.iter().any(pred)
    }
}

/// A wait ran out of time.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("condition not met within {0:?}")]
pub struct WaitTimeout(pub Duration);

/// Cheap-to-clone handle on the recorded facts.
#[derive(Debug, Clone)]
pub struct Recorder {
    state: Arc<Mutex<Snapshot>>,
    version: Arc<watch::Sender<u64>>,
    started: Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder; times count from now.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(Snapshot::default())),
            version: Arc::new(watch::Sender::new(0)),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    /// Runs `f` on the current state without copying it.
    pub fn inspect<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(&self.lock())
    }

    /// Waits until `pred` holds on the state; checks now, then after every new record.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> Result<(), WaitTimeout> {
        let mut rx = self.version.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.lock()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(WaitTimeout(timeout));
            }
        }
    }

    /// Waits for the first record (past or future) that matches `pred`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Record) -> bool,
    ) -> Result<Record, WaitTimeout> {
        let mut rx = self.version.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.lock().records.iter().find(|r| pred(r)) {
                return Ok(r.clone());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(WaitTimeout(timeout));
            }
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn push(&self, state: &mut Snapshot, conn: ConnId, event: ServerEvent) {
        let account = state.connection(conn).and_then(|c| c.account.clone());
        tracing::info!(conn, account = account.as_deref().unwrap_or("-"), "{event}");
        state.records.push(Record {
            at: self.now(),
            conn,
            account,
            event,
        });
    }

    /// Records a newly accepted connection.
    pub(crate) fn open(&self, peer: SocketAddr) -> ConnId {
        let mut state = self.lock();
        let id = state.connections.len() as ConnId + 1;
        state.connections.push(Connection {
            id,
            peer,
            client: None,
            account: None,
            attempt: 0,
            opened: self.now(),
            closed: None,
            retired: None,
            steps: Vec::new(),
            pings: 0,
            pings_answered: 0,
            iqs: 0,
        });
        self.push(&mut state, id, ServerEvent::Accepted { peer });
        drop(state);
        self.bump();
        id
    }

    /// Records the handshake and the account the connection counts for.
    pub(crate) fn identify(&self, conn: ConnId, client: ClientInfo, account: String, attempt: u32) {
        let mut state = self.lock();
        if let Some(c) = state.connections.iter_mut().find(|c| c.id == conn) {
            c.client = Some(client.clone());
            c.attempt = attempt;
        }
        Self::move_account(&mut state, conn, Some(account));
        self.push(&mut state, conn, ServerEvent::Handshake { client, attempt });
        drop(state);
        self.bump();
    }

    /// Re-attributes a connection to `account` (a registration that paired).
    pub(crate) fn set_account(&self, conn: ConnId, account: String) {
        let mut state = self.lock();
        Self::move_account(&mut state, conn, Some(account));
        drop(state);
        self.bump();
    }

    fn move_account(state: &mut Snapshot, conn: ConnId, account: Option<String>) {
        let Some(c) = state.connections.iter_mut().find(|c| c.id == conn) else {
            return;
        };
        if c.account == account {
            return;
        }
        let open = c.closed.is_none() && c.retired.is_none();
        let old = std::mem::replace(&mut c.account, account.clone());
        if !open {
            return;
        }
        if let Some(old) = old
            && let Some(n) = state.open_per_account.get_mut(&old)
        {
            *n = n.saturating_sub(1);
        }
        if let Some(new) = account {
            let n = state.open_per_account.entry(new.clone()).or_insert(0);
            *n += 1;
            let n = *n;
            let max = state.max_per_account.entry(new).or_insert(0);
            *max = (*max).max(n);
        }
    }

    /// Records an event on a connection.
    pub(crate) fn event(&self, conn: ConnId, event: ServerEvent) {
        let mut state = self.lock();
        if let Some(c) = state.connections.iter_mut().find(|c| c.id == conn) {
            match &event {
                ServerEvent::Step { step, .. } => c.steps.push(step.clone()),
                ServerEvent::Ping { answered } => {
                    c.pings += 1;
                    c.pings_answered += u32::from(*answered);
                }
                ServerEvent::Iq { .. } => c.iqs += 1,
                _ => {}
            }
        }
        self.push(&mut state, conn, event);
        drop(state);
        self.bump();
    }

    /// Marks the session on a connection as ended by the server; it stops counting as live.
    pub(crate) fn retire(&self, conn: ConnId) {
        let mut state = self.lock();
        let now = self.now();
        let Some(c) = state.connections.iter_mut().find(|c| c.id == conn) else {
            return;
        };
        if c.closed.is_some() || c.retired.is_some() {
            return;
        }
        c.retired = Some(now);
        if let Some(account) = c.account.clone()
            && let Some(n) = state.open_per_account.get_mut(&account)
        {
            *n = n.saturating_sub(1);
        }
        drop(state);
        self.bump();
    }

    /// Records the end of a connection (only the first call counts).
    pub(crate) fn close(&self, conn: ConnId, kind: CloseKind) {
        let mut state = self.lock();
        let now = self.now();
        let Some(c) = state.connections.iter_mut().find(|c| c.id == conn) else {
            return;
        };
        if c.closed.is_some() {
            return;
        }
        c.closed = Some((now, kind));
        if c.retired.is_none()
            && let Some(account) = c.account.clone()
            && let Some(n) = state.open_per_account.get_mut(&account)
        {
            *n = n.saturating_sub(1);
        }
        self.push(&mut state, conn, ServerEvent::Closed(kind));
        drop(state);
        self.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientKind;

    fn client(phone: &str) -> ClientInfo {
        ClientInfo {
            kind: ClientKind::Login {
                phone: phone.into(),
                device: 1,
            },
            noise_key: [0; 32],
            passive: true,
            version: None,
            signal: None,
        }
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[test]
    fn tracks_concurrency_per_account() {
        let r = Recorder::new();
        let a = r.open(peer());
        r.identify(a, client("1"), "1".into(), 1);
        r.close(a, CloseKind::Client);
        let b = r.open(peer());
        r.identify(b, client("1"), "1".into(), 2);
        assert_eq!(r.snapshot().max_concurrent("1"), 1);

        let c = r.open(peer());
        r.identify(c, client("2"), "unpaired:x".into(), 1);
        r.set_account(c, "1".into());
        let s = r.snapshot();
        assert_eq!(s.max_concurrent("1"), 2);
        assert_eq!(s.max_concurrent("unpaired:x"), 1);
        assert_eq!(s.max_concurrent_any(), 2);
        assert_eq!(s.connections_for("1").len(), 3);
        assert_eq!(s.open_connections(), 2);

        // A retired connection no longer counts, even before its socket closes.
        r.retire(b);
        r.retire(c);
        let d = r.open(peer());
        r.identify(d, client("1"), "1".into(), 3);
        r.close(b, CloseKind::Client);
        assert_eq!(r.snapshot().max_concurrent("1"), 2);
        assert_eq!(r.inspect(|s| s.open_per_account.get("1").copied()), Some(1));
    }

    #[test]
    fn counts_pings_and_steps() {
        let r = Recorder::new();
        let a = r.open(peer());
        r.identify(a, client("1"), "1".into(), 1);
        r.event(
            a,
            ServerEvent::Step {
                index: 0,
                step: "login".into(),
            },
        );
        r.event(a, ServerEvent::Ping { answered: true });
        r.event(a, ServerEvent::Ping { answered: false });
        let s = r.snapshot();
        assert_eq!(s.pings("1"), 2);
        let c = s.connection(a).unwrap();
        assert_eq!(
            (c.pings_answered, c.steps.clone()),
            (1, vec!["login".to_string()])
        );
        assert_eq!(s.events_of(a).len(), 5);
    }

    #[tokio::test]
    async fn wait_wakes_on_new_records() {
        let r = Recorder::new();
        let r2 = r.clone();
        let waiter = tokio::spawn(async move {
            r2.wait_for(Duration::from_secs(5), |rec| {
                rec.event == ServerEvent::QrExpired
            })
            .await
        });
        let a = r.open(peer());
        r.event(a, ServerEvent::QrExpired);
        let rec = waiter.await.unwrap().unwrap();
        assert_eq!(rec.conn, a);
        assert_eq!(
            r.wait_until(Duration::from_millis(10), |s| s.open_connections() == 0)
                .await,
            Err(WaitTimeout(Duration::from_millis(10)))
        );
    }
}
