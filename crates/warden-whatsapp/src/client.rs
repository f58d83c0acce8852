//! [`Session`]: what one token needs while it has a connection — its handle on the shared
//! session database, wa-rs's `PersistenceManager`, the transport factory and the wa-rs
//! `Client` with its ordered event tap.
//!
//! A session lives only as long as a connection uses it (the link keeps a `Weak`): a session
//! that is not connecting or connected holds no client, no task and no file descriptor, only
//! its rows in the database. A connection that starts while the previous one is still letting
//! go reuses the same session (and waits for its slot). Within a session, the client is reused
//! across attempts, except after a run that was not a login from stored credentials (one that
//! showed QR codes or paired): a QR rotation task of that run may still be alive and would
//! later call `disconnect()` on that client (wa-rs-notes §0.3), so the next attempt gets a
//! fresh `Client`.
//!
//! wa-rs's background saver (a task that never ends) is not started: the device state
//! (credentials, pairing, push name, routing info) is saved by the connection when it matters
//! — right after a pairing, once connected, and when the connection ends — and each save is
//! committed before the connection reports what it saved.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use wa_rs::Client;
use wa_rs::store::persistence_manager::PersistenceManager;
use wa_rs_core::net::{HttpClient, TransportFactory};
use wa_rs_core::store::traits::{Backend, DeviceStore};
use wa_rs_core::types::events::{Event, EventHandler};
use warden_core::{LinkError, Token};

use warden_store::CredentialsDb;

use crate::classify::{self, Seen};
use crate::config::WaConfig;
use crate::http::SessionHttp;
use crate::proxy::ProxySetting;
use crate::store::SessionStore;
use crate::transport::WsFactory;
/// Bound on one `disconnect()` of a wa-rs client.
pub(crate) const DISCONNECT_BOUND: Duration = Duration::from_secs(2);

static CLIENTS: AtomicUsize = AtomicUsize::new(0);

/// How many wa-rs clients exist in the process (those whose last `Arc` has not been dropped),
/// for metrics and leak tests. Counted through the event tap, which the client owns and
/// drops only when it is itself dropped.
pub fn clients_alive() -> usize {
    CLIENTS.load(Ordering::Relaxed)
}

/// A synchronous handler on wa-rs's event bus: keeps dispatch order, and holds no
/// `Arc<Client>` (which would keep the client alive for ever).
struct Tap(mpsc::UnboundedSender<Seen>);

impl Tap {
    fn new(events: mpsc::UnboundedSender<Seen>) -> Self {
        CLIENTS.fetch_add(1, Ordering::Relaxed);
        Self(events)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        CLIENTS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EventHandler for Tap {
    fn handle_event(&self, event: &Event) {
        if let Some(seen) = classify::tap(event) {
            let _ = self.0.send(seen);
        }
    }
}

/// One wa-rs client and the receiving end of its tap.
pub(crate) struct Incarnation {
    pub client: Arc<Client>,
    pub events: mpsc::UnboundedReceiver<Seen>,
    /// The last run was not a login from stored credentials, so a QR rotation task of this
    /// client may still be running: build a new one next time.
    pub stale: bool,
}

impl Incarnation {
    /// Stops the client for good: `disconnect()` lets wa-rs's own tasks go (§2.4).
    pub async fn retire(self) {
        let _ = tokio::time::timeout(DISCONNECT_BOUND, self.client.disconnect()).await;
    }
}

/// Everything kept for one token while it has a connection; see the module docs.
pub(crate) struct Session {
    pub token: Token,
    pub factory: Arc<WsFactory>,
    /// The proxy of the current connection, read by the transport and the HTTP client.
    pub proxy: Arc<ProxySetting>,
    /// The fence every write of this session carries (`None`: the local database).
    pub fence: Option<warden_store::Fence>,
    store: Arc<SessionStore>,
    persistence: Arc<PersistenceManager>,
    http: Arc<dyn HttpClient>,
    version: Option<(u32, u32, u32)>,
    /// Held by the connection driving the client; holds the client between attempts.
    pub slot: Arc<tokio::sync::Mutex<Option<Incarnation>>>,
}

impl Session {
    /// Finds (or makes) the token's credentials in the database and loads the device.
    pub async fn open(
        token: &Token,
        db: CredentialsDb,
        config: &WaConfig,
        http: Arc<dyn HttpClient>,
    ) -> Result<Self, LinkError> {
        let uri = config.uri().map_err(|e| LinkError::Open(e.to_string()))?;
        let version = config
            .version_triple()
            .map_err(|e| LinkError::Open(e.to_string()))?;
        let device = db
            .open_device(token.as_str())
            .await
            .map_err(|e| LinkError::Storage(format!("opening the session's credentials: {e}")))?;
        let fence = db.fence().cloned();
        let store = Arc::new(SessionStore::new(db, device));
        let backend: Arc<dyn Backend> = store.clone();
        let persistence = Arc::new(
            PersistenceManager::new(backend)
                .await
                .map_err(|e| LinkError::Storage(format!("loading the device: {e}")))?,
        );
        let proxy = Arc::new(ProxySetting::default());
        let factory = Arc::new(WsFactory::new(
            uri,
            config.connect_timeout,
            config.liveness_timeout,
            proxy.clone(),
        ));
        let http: Arc<dyn HttpClient> = Arc::new(SessionHttp::new(
            http,
            proxy.clone(),
            config.connect_timeout,
        ));
        Ok(Self {
            token: token.clone(),
            factory,
            proxy,
            fence,
            store,
            persistence,
            http,
            version,
            slot: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// The client to drive, built if there is none (or the last one is stale).
    pub async fn incarnation<'a>(&self, slot: &'a mut Option<Incarnation>) -> &'a mut Incarnation {
        if slot.as_ref().is_some_and(|i| i.stale)
            && let Some(old) = slot.take()
        {
            old.retire().await;
        }
        if slot.is_none() {
            let factory: Arc<dyn TransportFactory> = self.factory.clone();
            let (client, sync_tasks) = Client::new(
                self.persistence.clone(),
                factory,
                self.http.clone(),
                self.version,
            )
            .await;
            // History sync is skipped, so nothing is queued for a sync worker.
            drop(sync_tasks);
            client.set_skip_history_sync(true);
            // One `run()` is one attempt: only the supervisor reconnects.
            client.enable_auto_reconnect.store(false, Ordering::SeqCst);
            let (tx, events) = mpsc::unbounded_channel();
            client.register_handler(Arc::new(Tap::new(tx)));
            *slot = Some(Incarnation {
                client,
                events,
                stale: false,
            });
        }
        slot.as_mut().expect("just filled")
    }

    /// Whether the device is paired (has an account).
    pub async fn is_paired(&self) -> bool {
        self.persistence.get_device_snapshot().await.pn.is_some()
    }

    /// Saves the device state (keys, pairing) now; resolves once it is committed. After a
    /// logout the save is refused (the credentials stay deleted).
    pub async fn flush(&self) {
        let device = self
            .persistence
            .get_device_snapshot()
            .await
            .to_serializable();
        if let Err(e) = self.store.save(&device).await {
            tracing::warn!(token = %self.token, error = %e, "could not save the device state");
        }
    }

    /// Lets go of the client (bounded): its connection must be over first.
    pub async fn release(&self, within: Duration) -> Result<(), LinkError> {
        let mut slot = tokio::time::timeout(within, self.slot.lock())
            .await
            .map_err(|_| LinkError::Storage("the session is still connected".into()))?;
        if let Some(incarnation) = slot.take() {
            incarnation.retire().await;
        }
        Ok(())
    }
}
