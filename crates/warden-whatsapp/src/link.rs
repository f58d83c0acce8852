//! [`WaLink`]: warden-core's [`Link`] over wa-rs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use wa_rs_core::net::HttpClient;
use warden_core::{Connection, LifecycleSink, Link, LinkError, OpenOptions, Token};
use warden_store::Db;

use crate::client::Session;
use crate::config::{ConfigError, WaConfig};
use crate::connection::{DriveConfig, WaConnection};
use crate::credentials::Credentials;
use crate::watchdog::Watchdog;

/// Bound on letting go of a session before its credentials are deleted.
const RELEASE_BOUND: Duration = Duration::from_secs(5);

/// Opens WhatsApp Web connections with wa-rs, one client per session token, keeping every
/// session's credentials and keys in the shared session database; see the crate docs. Cheap
/// to share: wrap it in an `Arc` and hand it to the supervisor.
pub struct WaLink {
    config: WaConfig,
    db: Db,
    /// Where each session's credentials are kept: `db` unless replaced
    /// ([`WaLink::with_credentials`]).
    credentials: Arc<dyn Credentials>,
    http: Arc<dyn HttpClient>,
    /// The session of each token that has a connection (or one letting go). Weak: a session
    /// nobody drives is freed at once, with its client.
    /// The supervisor opens at most one connection per token at a time, so a token never
    /// gets two sessions at once.
    sessions: Mutex<HashMap<Token, Weak<Session>>>,
}

impl std::fmt::Debug for WaLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaLink")
            .field("config", &self.config)
            .field("db", &self.db)
            .field("credentials", &self.credentials)
            .field("held", &self.held().len())
            .finish()
    }
}

impl WaLink {
    /// A link with `config`, keeping every session's credentials in `db` (the database the
    /// supervisor uses too). HTTP (version lookups when `version` is empty, media) goes
    /// through a bounded ureq client ([`crate::http`]), or the session's proxy.
    pub fn new(config: WaConfig, db: Db) -> Result<Self, ConfigError> {
        config.validate()?;
        let http = Arc::new(crate::http::BoundedHttp::new(config.connect_timeout));
        Ok(Self {
            config,
            credentials: Arc::new(db.clone()),
            db,
            http,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the HTTP client (for embedding, or a test that must never reach the network).
    pub fn with_http_client(mut self, http: Arc<dyn HttpClient>) -> Self {
        self.http = http;
        self
    }

    /// Keeps the sessions' credentials in `credentials` instead of the session database: on
    /// PostgreSQL under each session's lease, when several daemons share the sessions.
    pub fn with_credentials(mut self, credentials: Arc<dyn Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Where `token`'s credentials are kept, or the error that this process may not use them.
    fn credentials_of(&self, token: &Token) -> Result<warden_store::CredentialsDb, LinkError> {
        self.credentials.for_session(token).ok_or_else(|| {
            LinkError::Open(format!(
                "session {token}: this node does not hold the session's lease"
            ))
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WaConfig {
        &self.config
    }

    /// The session database (the supervisor's; also the credentials' unless replaced).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Tokens whose session (client) is alive now: those with a connection, or one still
    /// letting go.
    pub fn held(&self) -> Vec<Token> {
        let mut sessions = self.sessions();
        sessions.retain(|_, weak| weak.strong_count() > 0);
        let mut tokens: Vec<Token> = sessions.keys().cloned().collect();
        tokens.sort();
        tokens
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Token, Weak<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self, token: &Token) -> Option<Arc<Session>> {
        self.sessions().get(token).and_then(Weak::upgrade)
    }

    /// The session of `token`: the live one, or a new one loaded from the database. The
    /// credentials' source is asked first, every time: a node that lost the session's lease
    /// gets an error, and a live session whose writes carry an older fence (the node lost the
    /// lease and claimed it again) is never handed on, since every write it made would be
    /// refused: the link waits (within a bound) for its connection to end and lets go of its
    /// client, or, while that connection still runs, fails the open and says why.
    async fn session(&self, token: &Token) -> Result<Arc<Session>, LinkError> {
        let credentials = self.credentials_of(token)?;
        if let Some(session) = self.live(token) {
            if session.fence.as_ref() == credentials.fence() {
                return Ok(session);
            }
            session.release(RELEASE_BOUND).await.map_err(|_| {
                LinkError::Open(format!(
                    "session {token}: its connection under an earlier lease is still running"
                ))
            })?;
            tracing::info!(token = %token, "session opened under an earlier lease let go of");
        }
        let session =
            Arc::new(Session::open(token, credentials, &self.config, self.http.clone()).await?);
        let mut sessions = self.sessions();
        sessions.retain(|_, weak| weak.strong_count() > 0);
        sessions.insert(token.clone(), Arc::downgrade(&session));
        Ok(session)
    }

    /// Lets go of the client of `token` (if one is alive) and deletes its credentials and
    /// keys, in one transaction. Writes from a client that still runs are refused after that.
    async fn release(&self, token: &Token) -> Result<(), LinkError> {
        let live = self.live(token);
        if let Some(session) = &live {
            session.release(RELEASE_BOUND).await?;
        }
        self.credentials_of(token)?
            .delete_device(token.as_str())
            .await
            .map_err(|e| LinkError::Storage(format!("deleting the credentials: {e}")))?;
        self.sessions().remove(token);
        Ok(())
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
        // Every connection takes the session's proxy as it is now (or the default).
        session
            .proxy
            .set(options.proxy.clone().or_else(|| self.config.proxy.clone()));
        let config = DriveConfig {
            watchdog: Watchdog::new(self.config.liveness_timeout),
            connect_timeout: self.config.connect_timeout,
            ack_timeout: self.config.ack_timeout,
        };
        Ok(Box::new(WaConnection::start(
            session, options, sink, config,
        )))
    }

    async fn delete_credentials(&self, token: &Token) -> Result<(), LinkError> {
        self.release(token).await?;
        tracing::info!(token = %token, "session credentials deleted");
        Ok(())
    }

    async fn forget(&self, token: &Token) -> Result<(), LinkError> {
        self.release(token).await
    }
}
