//! [`WaLink`]: warden-core's [`Link`] over wa-rs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use wa_rs_core::net::HttpClient;
use warden_core::{Connection, LifecycleSink, Link, LinkError, OpenOptions, Token};

use crate::client::{Session, delete_db_files};
use crate::config::{ConfigError, WaConfig};
use crate::connection::{DriveConfig, WaConnection};
use crate::lock::{LOCK_FILE, SessionLock};
use crate::watchdog::Watchdog;

/// Bound on letting go of a session before its files are deleted.
const RELEASE_BOUND: Duration = Duration::from_secs(5);

type Cell = Arc<OnceCell<Arc<Session>>>;

/// Opens WhatsApp Web connections with wa-rs, one client per session token; see the crate
/// docs. Cheap to share: wrap it in an `Arc` and hand it to the supervisor.
pub struct WaLink {
    config: WaConfig,
    sessions_dir: PathBuf,
    http: Arc<dyn HttpClient>,
    sessions: Mutex<HashMap<Token, Cell>>,
}

impl std::fmt::Debug for WaLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaLink")
            .field("config", &self.config)
            .field("sessions_dir", &self.sessions_dir)
            .field("sessions", &self.sessions().len())
            .finish()
    }
}

impl WaLink {
    /// A link with `config`, keeping each session's files in `<sessions_dir>/<token>/`.
    /// HTTP (version lookups when `version` is empty, media) goes through wa-rs's ureq client.
    pub fn new(config: WaConfig, sessions_dir: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            sessions_dir: sessions_dir.into(),
            http: Arc::new(wa_rs::transport::UreqHttpClient::new()),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the HTTP client (for embedding, or a test that must never reach the network).
    pub fn with_http_client(mut self, http: Arc<dyn HttpClient>) -> Self {
        self.http = http;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &WaConfig {
        &self.config
    }

    /// The folder of `token`'s files.
    pub fn session_dir(&self, token: &Token) -> PathBuf {
        self.sessions_dir.join(token.as_str())
    }

    /// Tokens whose client this link currently holds.
    pub fn held(&self) -> Vec<Token> {
        let mut tokens: Vec<Token> = self
            .sessions()
            .iter()
            .filter(|(_, cell)| cell.initialized())
            .map(|(t, _)| t.clone())
            .collect();
        tokens.sort();
        tokens
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Token, Cell>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session of `token`, opened on first use.
    async fn session(&self, token: &Token) -> Result<Arc<Session>, LinkError> {
        let cell = self.sessions().entry(token.clone()).or_default().clone();
        let session = cell
            .get_or_try_init(|| async {
                let dir = self.session_dir(token);
                Session::open(token, &dir, &self.config, self.http.clone())
                    .await
                    .map(Arc::new)
            })
            .await?;
        Ok(session.clone())
    }

    /// Lets go of everything held for `token` and deletes its database files; `and_lock` also
    /// removes the lock file.
    async fn release(&self, token: &Token, and_lock: bool) -> Result<(), LinkError> {
        let dir = self.session_dir(token);
        let cell = self.sessions().remove(token);
        let held = cell.and_then(|c| c.get().cloned());
        // Whichever holds the folder lock (the session, or a lock taken here) is kept until
        // the files are gone.
        let (session, guard) = match held {
            Some(session) => {
                session.release(RELEASE_BOUND).await?;
                (Some(session), None)
            }
            None if dir.exists() => {
                let lock =
                    SessionLock::acquire(&dir).map_err(|e| LinkError::Storage(e.to_string()))?;
                (None, Some(lock))
            }
            None => return Ok(()),
        };
        delete_db_files(&dir)?;
        if and_lock {
            remove_if_present(&dir.join(LOCK_FILE))?;
        }
        drop(session);
        drop(guard);
        Ok(())
    }
}

fn remove_if_present(path: &Path) -> Result<(), LinkError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LinkError::Storage(format!(
            "removing {}: {e}",
            path.display()
        ))),
    }
}

#[async_trait::async_trait]
impl Link for WaLink {
    async fn open(
        &self,
        token: &Token,
        options: OpenOptions,
        sink: LifecycleSink,
    ) -> Result<Box<dyn Connection>, LinkError> {
        let session = self.session(token).await?;
        let config = DriveConfig {
            watchdog: Watchdog::new(self.config.liveness_timeout),
            connect_timeout: self.config.connect_timeout,
        };
        Ok(Box::new(WaConnection::start(
            session, options, sink, config,
        )))
    }

    async fn delete_credentials(&self, token: &Token) -> Result<(), LinkError> {
        self.release(token, false).await?;
        tracing::info!(token = %token, "session database deleted");
        Ok(())
    }

    async fn forget(&self, token: &Token) -> Result<(), LinkError> {
        self.release(token, true).await
    }
}
