//! Test harness: a real wa-rs client (pinned version, no HTTP, no auto-reconnect,
//! own WebSocket transport, SQLite store in a temp dir) whose lifecycle events
//! are collected in dispatch order.

pub mod transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wa_rs::Client;
use wa_rs::bot::Bot;
use wa_rs::store::SqliteStore;
use wa_rs_core::net::{HttpClient, HttpRequest, HttpResponse};
use wa_rs_core::types::events::{ConnectFailureReason, Event, EventHandler, TempBanReason};

/// A version recent enough that wa-rs never fetches one over HTTP.
pub const WA_VERSION: (u32, u32, u32) = (2, 3000, 1027868167);
/// Upper bound for anything a test awaits; nothing normally comes close.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Refuses every request: the tests must never need HTTP.
struct NoHttp;

#[async_trait]
impl HttpClient for NoHttp {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        anyhow::bail!("unexpected HTTP request to {}", request.url)
    }
}

/// The lifecycle events the tests assert on, in comparable form.
#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
    Qr { timeout_secs: u64 },
    PairingCode(String),
    PairSuccess(String),
    PairError(String),
    OfflineSyncCompleted(i32),
    Connected,
    Disconnected,
    LoggedOut { on_connect: bool, reason: String },
    TemporaryBan { code: String, expire_secs: i64 },
    ClientOutdated,
    ConnectFailure(String),
    StreamReplaced,
    StreamError(String),
}

impl Ev {
    fn from_event(e: &Event) -> Option<Self> {
        Some(match e {
            Event::PairingQrCode { timeout, .. } => Ev::Qr {
                timeout_secs: timeout.as_secs(),
            },
            Event::PairingCode { code, .. } => Ev::PairingCode(code.clone()),
            Event::PairSuccess(p) => Ev::PairSuccess(p.id.to_string()),
            Event::PairError(p) => Ev::PairError(p.error.clone()),
            Event::OfflineSyncCompleted(o) => Ev::OfflineSyncCompleted(o.count),
            Event::Connected(_) => Ev::Connected,
            Event::Disconnected(_) => Ev::Disconnected,
            Event::LoggedOut(l) => Ev::LoggedOut {
                on_connect: l.on_connect,
                reason: format!("{:?}", l.reason),
            },
            Event::TemporaryBan(b) => Ev::TemporaryBan {
                code: format!("{:?}", b.code),
                expire_secs: b.expire.num_seconds(),
            },
            Event::ClientOutdated(_) => Ev::ClientOutdated,
            Event::ConnectFailure(c) => Ev::ConnectFailure(format!("{:?}", c.reason)),
            Event::StreamReplaced(_) => Ev::StreamReplaced,
            Event::StreamError(s) => Ev::StreamError(s.code.clone()),
            _ => return None,
        })
    }

    /// `LoggedOut` with a reason.
    pub fn logged_out(on_connect: bool, reason: ConnectFailureReason) -> Self {
        Ev::LoggedOut {
            on_connect,
            reason: format!("{reason:?}"),
        }
    }

    /// `ConnectFailure` with a reason.
    pub fn connect_failure(reason: ConnectFailureReason) -> Self {
        Ev::ConnectFailure(format!("{reason:?}"))
    }

    /// `TemporaryBan`.
    pub fn temporary_ban(code: TempBanReason, expire_secs: i64) -> Self {
        Ev::TemporaryBan {
            code: format!("{code:?}"),
            expire_secs,
        }
    }
}

/// Ordered, synchronous handler: wa-rs dispatches events inline, so order is kept.
struct Tap(mpsc::UnboundedSender<Ev>);

impl EventHandler for Tap {
    fn handle_event(&self, e: &Event) {
        if let Some(ev) = Ev::from_event(e) {
            let _ = self.0.send(ev);
        }
    }
}

/// One wa-rs client driven by hand, one `run()` at a time.
pub struct TestClient {
    pub client: Arc<Client>,
    events: mpsc::UnboundedReceiver<Ev>,
    run: Option<JoinHandle<()>>,
    db: PathBuf,
    _bot: Bot,
    _dir: Option<tempfile::TempDir>,
}

impl TestClient {
    /// A fresh, unpaired client pointed at `url`.
    pub async fn new(url: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("session.db");
        let mut c = Self::open(url, &db, Duration::from_secs(5)).await;
        c._dir = Some(dir);
        c
    }

    /// A client on an existing database file (its stored credentials), with a
    /// WebSocket connect timeout.
    pub async fn open(url: &str, db: &Path, connect_timeout: Duration) -> Self {
        let backend = Arc::new(
            SqliteStore::new(db.to_str().expect("utf-8 path"))
                .await
                .expect("sqlite store"),
        );
        let bot = Bot::builder()
            .with_backend(backend)
            .with_transport_factory(transport::WsFactory::new(url, connect_timeout))
            .with_http_client(NoHttp)
            .with_version(WA_VERSION)
            .skip_history_sync()
            .build()
            .await
            .expect("bot");
        let client = bot.client();
        client.enable_auto_reconnect.store(false, Ordering::SeqCst);
        let (tx, events) = mpsc::unbounded_channel();
        client.register_handler(Arc::new(Tap(tx)));
        Self {
            client,
            events,
            run: None,
            db: db.to_path_buf(),
            _bot: bot,
            _dir: None,
        }
    }

    /// The database file.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// Starts one `run()` (one connection attempt: auto-reconnect is off).
    pub fn start(&mut self) {
        assert!(self.run.is_none(), "run() already active");
        let c = self.client.clone();
        self.run = Some(tokio::spawn(async move { c.run().await }));
    }

    /// Whether the current `run()` is still going.
    pub fn running(&self) -> bool {
        self.run.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// The next lifecycle event.
    pub async fn next(&mut self) -> Ev {
        tokio::time::timeout(LIMIT, self.events.recv())
            .await
            .expect("timed out waiting for an event")
            .expect("event channel closed")
    }

    /// Events until (and including) the first one matching `pred`.
    pub async fn until(&mut self, pred: impl Fn(&Ev) -> bool) -> Vec<Ev> {
        let mut out = Vec::new();
        loop {
            let ev = self.next().await;
            let done = pred(&ev);
            out.push(ev);
            if done {
                return out;
            }
        }
    }

    /// Waits for the current `run()` to return by itself, then returns the events
    /// dispatched so far (dispatch is synchronous, so they are all queued by then).
    pub async fn finish(&mut self) -> Vec<Ev> {
        let run = self.run.take().expect("no run() active");
        tokio::time::timeout(LIMIT, run)
            .await
            .expect("run() did not return")
            .expect("run() panicked");
        self.drain()
    }

    /// Starts a `run()` and waits for it to end by itself.
    pub async fn run_to_end(&mut self) -> Vec<Ev> {
        self.start();
        self.finish().await
    }

    /// Events already dispatched and not yet read.
    pub fn drain(&mut self) -> Vec<Ev> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }

    /// Stops the client as a supervisor would: `disconnect()`, then abort a `run()`
    /// that is stuck in `connect()` (which `disconnect()` cannot interrupt).
    pub async fn stop(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.client.disconnect()).await;
        if let Some(mut run) = self.run.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut run)
                .await
                .is_err()
        {
            run.abort();
        }
    }
}

/// Waits until the device row in `db` has a phone number, i.e. the pairing is on disk.
/// wa-rs saves device state in a background task and offers no flush, so this polls.
pub async fn wait_saved(db: &Path) {
    let store = SqliteStore::new(db.to_str().expect("utf-8 path"))
        .await
        .expect("sqlite store");
    for _ in 0..200 {
        if let Ok(Some(d)) = store.load_device_data_for_device(1).await
            && d.pn.is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pairing never reached {}", db.display());
}
