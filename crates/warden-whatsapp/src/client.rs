//! [`Session`]: everything the link keeps for one token between connections — the folder
//! lock, the SQLite store, wa-rs's `PersistenceManager`, the transport factory and the wa-rs
//! `Client` with its ordered event tap.
//!
//! The client is built once and reused for every attempt (wa-rs-notes §2.4), with two
//! exceptions: after a run that did not leave the device paired, a QR rotation task of that run
//! may still be alive and would later call `disconnect()` on that client (§0.3), so the next
//! attempt gets a fresh `Client` on the same store; and after a logout everything goes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use wa_rs::Client;
use wa_rs::store::persistence_manager::PersistenceManager;
use wa_rs_core::net::{HttpClient, TransportFactory};
use wa_rs_core::store::traits::{Backend, DeviceStore};
use wa_rs_core::types::events::{Event, EventHandler};
use warden_core::{LinkError, Token};

use crate::classify::{self, Seen};
use crate::config::WaConfig;
use crate::lock::SessionLock;
use crate::store::SessionStore;
use crate::transport::WsFactory;

/// The session database in `<sessions_dir>/<token>/`.
pub const DB_FILE: &str = "session.db";
/// The files SQLite keeps beside the database.
pub const DB_SIDE_FILES: [&str; 3] = ["session.db-wal", "session.db-shm", "session.db-journal"];

/// How long wa-rs's own saver waits between saves when nothing asks it to save sooner.
const SAVER_INTERVAL: Duration = Duration::from_secs(30);
/// Bound on one `disconnect()` of a wa-rs client.
pub(crate) const DISCONNECT_BOUND: Duration = Duration::from_secs(2);

/// A synchronous handler on wa-rs's event bus: keeps dispatch order, and holds no
/// `Arc<Client>` (which would keep the client alive for ever).
struct Tap(mpsc::UnboundedSender<Seen>);

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
    /// The last run did not leave the device paired, so a QR rotation task of this client may
    /// still be running: build a new one next time.
    pub stale: bool,
}

impl Incarnation {
    /// Stops the client for good: `disconnect()` lets wa-rs's own tasks go (§2.4).
    pub async fn retire(self) {
        let _ = tokio::time::timeout(DISCONNECT_BOUND, self.client.disconnect()).await;
    }
}

/// Everything kept for one token; see the module docs.
pub(crate) struct Session {
    pub token: Token,
    pub factory: Arc<WsFactory>,
    store: Arc<SessionStore>,
    persistence: Arc<PersistenceManager>,
    http: Arc<dyn HttpClient>,
    version: Option<(u32, u32, u32)>,
    /// Held by the connection driving the client; holds the client between connections.
    pub slot: Arc<tokio::sync::Mutex<Option<Incarnation>>>,
    _lock: SessionLock,
}

impl Session {
    /// Locks `dir`, opens its store and loads the device (credentials, if paired).
    pub async fn open(
        token: &Token,
        dir: &Path,
        config: &WaConfig,
        http: Arc<dyn HttpClient>,
    ) -> Result<Self, LinkError> {
        let uri = config.uri().map_err(|e| LinkError::Open(e.to_string()))?;
        let version = config
            .version_triple()
            .map_err(|e| LinkError::Open(e.to_string()))?;
        let lock = SessionLock::acquire(dir).map_err(|e| LinkError::Open(e.to_string()))?;
        let store = Arc::new(
            SessionStore::open(&dir.join(DB_FILE))
                .await
                .map_err(|e| LinkError::Storage(format!("opening the session database: {e}")))?,
        );
        let backend: Arc<dyn Backend> = store.clone();
        let persistence = Arc::new(
            PersistenceManager::new(backend)
                .await
                .map_err(|e| LinkError::Storage(format!("loading the device: {e}")))?,
        );
        persistence.clone().run_background_saver(SAVER_INTERVAL);
        let factory = Arc::new(WsFactory::new(
            uri,
            config.connect_timeout,
            config.liveness_timeout,
        ));
        Ok(Self {
            token: token.clone(),
            factory,
            store,
            persistence,
            http,
            version,
            slot: Arc::new(tokio::sync::Mutex::new(None)),
            _lock: lock,
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
            client.register_handler(Arc::new(Tap(tx)));
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

    /// Writes the device state (keys, pairing) to disk now; wa-rs only saves in the background.
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

    /// Lets go of the client and the database, waiting (bounded) until no call holds the
    /// database any more, so its files can go. The folder lock goes with `self`.
    pub async fn release(&self, within: Duration) -> Result<(), LinkError> {
        let mut slot = tokio::time::timeout(within, self.slot.lock())
            .await
            .map_err(|_| LinkError::Storage("the session is still connected".into()))?;
        if let Some(incarnation) = slot.take() {
            incarnation.retire().await;
        }
        let store = self.store.detach();
        let deadline = tokio::time::Instant::now() + within;
        while store.strong_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(LinkError::Storage(
                    "the session database is still in use".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // wa-rs's saver task outlives everything and holds the store: close the database here.
        self.store.detach();
    }
}

/// Removes the session's database files from `dir` (missing ones are fine).
pub(crate) fn delete_db_files(dir: &Path) -> Result<(), LinkError> {
    for name in std::iter::once(DB_FILE).chain(DB_SIDE_FILES) {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(LinkError::Storage(format!(
                    "removing {}: {e}",
                    dir.join(name).display()
                )));
            }
        }
    }
    Ok(())
}
