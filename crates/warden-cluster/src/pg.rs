//! The lease protocol's statements on PostgreSQL: about a dozen, each with its own deadline.
//!
//! Three tables (created by [`Pg::migrate`]):
//! - `warden_node`: one row per process start (`node_id`, `incarnation`), its heartbeat `beat`,
//!   and `dead`, which is set once and never cleared;
//! - `warden_session`: one row per session, its owner (`owner_node`, `owner_inc`, NULL when
//!   released) and its `fence`, raised by one at every claim;
//! - `warden_request`: operations on the way to the node that runs a session, and their
//!   answers (the control plane across nodes, [`crate::requests`]).
//!
//! Why ownership is exclusive: a session is claimed only from a released or dead owner, by a
//! compare-and-swap on its fence; `dead` is set only by a compare-and-swap on the beat, which
//! loses to any renewal; and every write of a session's data goes through
//! [`check_fence`], which holds the session's row shared until the write commits, so a claim
//! waits for it and every later write under the old fence is refused.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, Transaction};

use crate::error::ClusterError;
use crate::reaper::{NodeKey, NodeRow};
use crate::tls::PgTls;

/// The schema, created once under an advisory lock so that nodes starting together do not
/// race on it.
const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7716290311);
CREATE TABLE IF NOT EXISTS warden_node (
  node_id     text    NOT NULL,
  incarnation bigint  NOT NULL,
  beat        bigint  NOT NULL DEFAULT 0,
  dead        boolean NOT NULL DEFAULT false,
  addr        text,
  started_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (node_id, incarnation));
CREATE TABLE IF NOT EXISTS warden_session (
  token      text PRIMARY KEY,
  owner_node text,
  owner_inc  bigint,
  fence      bigint NOT NULL DEFAULT 0,
  FOREIGN KEY (owner_node, owner_inc) REFERENCES warden_node);
CREATE INDEX IF NOT EXISTS warden_session_owner ON warden_session (owner_node, owner_inc);
CREATE TABLE IF NOT EXISTS warden_request (
  id       bigserial PRIMARY KEY,
  token    text,
  node     text,
  op       text NOT NULL,
  taken_by text,
  reply    text,
  asked_at timestamptz NOT NULL DEFAULT now(),
  expires  timestamptz NOT NULL,
  CHECK ((token IS NULL) <> (node IS NULL)));
ALTER TABLE warden_request ADD COLUMN IF NOT EXISTS expires timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS warden_request_untaken ON warden_request (id) WHERE taken_by IS NULL;
COMMIT;";

/// The notification channel that says sessions became claimable.
pub const RELEASED: &str = "warden_released";

/// Who owns a session, as the database says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOwner {
    /// The session.
    pub token: String,
    /// Its owner, if any (released sessions have none).
    pub owner: Option<NodeKey>,
    /// Whether that owner was declared dead.
    pub owner_dead: bool,
    /// Its fence.
    pub fence: i64,
}

/// One connection to the cluster's database. Every statement fails with
/// [`ClusterError::Timeout`] if it has not answered within the deadline; the connection is
/// then [`broken`](Pg::is_broken) and should be dropped.
pub struct Pg {
    client: Client,
    driver: JoinHandle<()>,
    wake: Arc<Notify>,
    notices: broadcast::Sender<Notice>,
    timeout: Duration,
    broken: AtomicBool,
}

/// A notification this connection received: its channel and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The channel.
    pub channel: String,
    /// The payload (empty when none).
    pub payload: String,
}

/// How many notifications a slow listener may fall behind before it misses some (it is told
/// it lagged, and must look at the tables itself).
const NOTICES_BUFFERED: usize = 256;

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the connection string: it may carry a password.
        f.debug_struct("Pg")
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Pg {
    /// Connects to `url` (a `postgres://` URL or a key=value string), within `timeout`.
    ///
    /// The deadline holds on the server too: every statement of this session is cancelled by
    /// the server after `timeout` (`statement_timeout`), waits at most half of it for a row
    /// lock (`lock_timeout`), and a transaction left open (a node cut off in the middle of a
    /// write) is ended after twice it (`idle_in_transaction_session_timeout`), releasing its
    /// locks. TCP keepalives find a dead peer within seconds on both sides.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, ClusterError> {
        Self::connect_with(url, timeout, None).await
    }

    /// [`Pg::connect`], over TLS when `tls` is given (a server without TLS is then refused).
    pub async fn connect_with(
        url: &str,
        timeout: Duration,
        tls: Option<&PgTls>,
    ) -> Result<Self, ClusterError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| ClusterError::Database(e.to_string()))?;
        config
            .application_name("warden-cluster")
            .connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        let wake = Arc::new(Notify::new());
        let (notices, _) = broadcast::channel(NOTICES_BUFFERED);
        let late = || ClusterError::Timeout(timeout);
        let (client, driver) = match tls {
            None => {
                let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
                    .await
                    .map_err(|_| late())??;
                (client, drive(connection, wake.clone(), notices.clone()))
            }
            Some(tls) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, connection) =
                    tokio::time::timeout(timeout, config.connect(tls.clone()))
                        .await
                        .map_err(|_| late())??;
                (client, drive(connection, wake.clone(), notices.clone()))
            }
        };
        let pg = Self {
            client,
            driver,
            wake,
            notices,
            timeout,
            broken: AtomicBool::new(false),
        };
        let ms = |d: Duration| d.as_millis().max(1);
        let session = format!(
            "SET statement_timeout = {}; SET lock_timeout = {}; \
             SET idle_in_transaction_session_timeout = {}; SET tcp_keepalives_idle = 5; \
             SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3;",
            ms(timeout),
            ms(timeout / 2),
            ms(timeout * 2)
        );
        pg.within(pg.client.batch_execute(&session)).await?;
        Ok(pg)
    }

    /// Notified whenever a notification arrives on a channel this connection listens to
    /// ([`Pg::listen_for_releases`]).
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Every notification from now on, with its channel and payload (the channels are those
    /// this connection listens to: [`Pg::listen`]).
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Listens to `channel` (a fixed identifier of this crate's, never user input).
    pub async fn listen(&self, channel: &str) -> Result<(), ClusterError> {
        self.within(self.client.batch_execute(&format!("LISTEN {channel}")))
            .await
    }

    /// Listens for [`RELEASED`]: sent when sessions are added, released, or left behind by a
    /// node leaving, so that the others claim at once instead of at their next poll.
    pub async fn listen_for_releases(&self) -> Result<(), ClusterError> {
        self.within(self.client.batch_execute(&format!("LISTEN {RELEASED}")))
            .await
    }

    /// Whether a statement timed out or the connection closed: drop it and connect again.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed) || self.client.is_closed()
    }

    /// The connection, for the caller's own statements.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The connection, for a transaction of the caller's (see [`check_fence`]).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The deadline every statement gets.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `statement` within the deadline; a timeout or a lost connection breaks `self`.
    pub async fn within<T, F>(&self, statement: F) -> Result<T, ClusterError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        match tokio::time::timeout(self.timeout, statement).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if e.as_db_error().is_none() {
                    self.broken.store(true, Ordering::Relaxed);
                }
                Err(e.into())
            }
            Err(_) => {
                self.broken.store(true, Ordering::Relaxed);
                Err(ClusterError::Timeout(self.timeout))
            }
        }
    }

    /// Creates the tables if they are missing.
    pub async fn migrate(&self) -> Result<(), ClusterError> {
        self.within(self.client.batch_execute(SCHEMA)).await
    }

    /// Registers a new incarnation, and forgets dead ones that own nothing.
    pub async fn register(&self, me: &NodeKey, addr: Option<&str>) -> Result<(), ClusterError> {
        self.within(self.client.execute(
            "INSERT INTO warden_node (node_id, incarnation, addr) VALUES ($1, $2, $3)",
            &[&me.node, &me.incarnation, &addr],
        ))
        .await?;
        // Housekeeping: a failure here must not make the caller register again.
        let cleanup = self.client.execute(
            "DELETE FROM warden_node n WHERE n.dead AND NOT EXISTS (SELECT 1 FROM warden_session s \
             WHERE s.owner_node = n.node_id AND s.owner_inc = n.incarnation)",
            &[],
        );
        if let Err(e) = self.within(cleanup).await {
            tracing::debug!(error = %e, "forgetting dead nodes failed");
        }
        Ok(())
    }

    /// Bumps this incarnation's heartbeat. [`ClusterError::Reaped`] if it was declared dead.
    pub async fn renew(&self, me: &NodeKey) -> Result<i64, ClusterError> {
        let rows = self
            .within(self.client.query(
                "UPDATE warden_node SET beat = beat + 1 \
                 WHERE node_id = $1 AND incarnation = $2 AND NOT dead RETURNING beat",
                &[&me.node, &me.incarnation],
            ))
            .await?;
        rows.first().map(|r| r.get(0)).ok_or(ClusterError::Reaped)
    }

    /// Every incarnation in the membership table.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, ClusterError> {
        let rows = self
            .within(self.client.query(
                "SELECT node_id, incarnation, beat, dead, addr FROM warden_node",
                &[],
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|r| NodeRow {
                key: NodeKey {
                    node: r.get(0),
                    incarnation: r.get(1),
                },
                beat: r.get(2),
                dead: r.get(3),
                addr: r.get(4),
            })
            .collect())
    }

    /// Declares `peer` dead if its beat is still `seen`; false if it renewed meanwhile (or
    /// was already dead).
    pub async fn reap(&self, peer: &NodeKey, seen: i64) -> Result<bool, ClusterError> {
        let n = self
            .within(self.client.execute(
                "UPDATE warden_node SET dead = true \
                 WHERE node_id = $1 AND incarnation = $2 AND beat = $3 AND NOT dead",
                &[&peer.node, &peer.incarnation, &seen],
            ))
            .await?;
        Ok(n == 1)
    }

    /// Adds a session, unowned; false if it was there.
    pub async fn add_session(&self, token: &str) -> Result<bool, ClusterError> {
        // One statement: the notification goes out with the row's commit, or not at all.
        let rows = self
            .within(self.client.query(
                "WITH added AS (INSERT INTO warden_session (token) VALUES ($1) \
                 ON CONFLICT DO NOTHING RETURNING 1) \
                 SELECT pg_notify($2, '') FROM added",
                &[&token, &RELEASED],
            ))
            .await?;
        Ok(rows.len() == 1)
    }

    /// Removes a session its owner holds under `fence`; false if the fence is stale.
    pub async fn remove_session(
        &self,
        me: &NodeKey,
        token: &str,
        fence: i64,
    ) -> Result<bool, ClusterError> {
        let n = self
            .within(self.client.execute(
                "DELETE FROM warden_session \
                 WHERE token = $1 AND fence = $2 AND owner_node = $3 AND owner_inc = $4",
                &[&token, &fence, &me.node, &me.incarnation],
            ))
            .await?;
        Ok(n == 1)
    }

    /// The sessions that may be claimed: released, or owned by a dead incarnation, with the
    /// fence a claim must compare against.
    pub async fn claimable(&self) -> Result<Vec<(String, i64)>, ClusterError> {
        let rows = self
            .within(self.client.query(
                "SELECT s.token, s.fence FROM warden_session s LEFT JOIN warden_node n \
                 ON n.node_id = s.owner_node AND n.incarnation = s.owner_inc \
                 WHERE s.owner_node IS NULL OR n.dead ORDER BY s.token",
                &[],
            ))
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Claims `token` for `me` if its fence is still `seen` and its owner is released or dead,
    /// and `me` is alive: the new fence, or `None` if another node got there first.
    pub async fn claim(
        &self,
        me: &NodeKey,
        token: &str,
        seen: i64,
    ) -> Result<Option<i64>, ClusterError> {
        let rows = self
            .within(self.client.query(
                "UPDATE warden_session s SET owner_node = $1, owner_inc = $2, fence = s.fence + 1 \
                 WHERE s.token = $3 AND s.fence = $4 \
                   AND (s.owner_node IS NULL OR EXISTS (SELECT 1 FROM warden_node n \
                        WHERE n.node_id = s.owner_node AND n.incarnation = s.owner_inc AND n.dead)) \
                   AND EXISTS (SELECT 1 FROM warden_node m \
                        WHERE m.node_id = $1 AND m.incarnation = $2 AND NOT m.dead) \
                 RETURNING s.fence",
                &[&me.node, &me.incarnation, &token, &seen],
            ))
            .await;
        match rows {
            Ok(rows) => Ok(rows.first().map(|r| r.get(0))),
            // Its row is locked by a write in flight past `lock_timeout`: not now.
            Err(ClusterError::Busy(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What `me` owns, with each fence.
    pub async fn owned(&self, me: &NodeKey) -> Result<Vec<(String, i64)>, ClusterError> {
        let rows = self
            .within(self.client.query(
                "SELECT token, fence FROM warden_session \
                 WHERE owner_node = $1 AND owner_inc = $2 ORDER BY token",
                &[&me.node, &me.incarnation],
            ))
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every session and its owner: the whole cluster's view, from any node.
    pub async fn owners(&self) -> Result<Vec<SessionOwner>, ClusterError> {
        let rows = self
            .within(self.client.query(
                "SELECT s.token, s.owner_node, s.owner_inc, coalesce(n.dead, false), s.fence \
                 FROM warden_session s LEFT JOIN warden_node n \
                 ON n.node_id = s.owner_node AND n.incarnation = s.owner_inc ORDER BY s.token",
                &[],
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let node: Option<String> = r.get(1);
                let incarnation: Option<i64> = r.get(2);
                SessionOwner {
                    token: r.get(0),
                    owner: node
                        .zip(incarnation)
                        .map(|(node, incarnation)| NodeKey { node, incarnation }),
                    owner_dead: r.get(3),
                    fence: r.get(4),
                }
            })
            .collect())
    }

    /// How many sessions each live node owns (live nodes owning none count 0).
    pub async fn counts(&self) -> Result<HashMap<String, usize>, ClusterError> {
        let rows = self
            .within(self.client.query(
                "SELECT n.node_id, count(s.token) FROM warden_node n LEFT JOIN warden_session s \
                 ON s.owner_node = n.node_id AND s.owner_inc = n.incarnation \
                 WHERE NOT n.dead GROUP BY n.node_id",
                &[],
            ))
            .await?;
        let mut counts = HashMap::new();
        for r in rows {
            let n: i64 = r.get(1);
            *counts.entry(r.get(0)).or_default() += usize::try_from(n).unwrap_or(0);
        }
        Ok(counts)
    }

    /// Hands `token` back (its socket must be closed first); false if the fence is stale.
    pub async fn release(
        &self,
        me: &NodeKey,
        token: &str,
        fence: i64,
    ) -> Result<bool, ClusterError> {
        let rows = self
            .within(self.client.query(
                "WITH released AS (UPDATE warden_session SET owner_node = NULL, owner_inc = NULL \
                 WHERE token = $1 AND fence = $2 AND owner_node = $3 AND owner_inc = $4 \
                 RETURNING 1) SELECT pg_notify($5, '') FROM released",
                &[&token, &fence, &me.node, &me.incarnation, &RELEASED],
            ))
            .await?;
        Ok(rows.len() == 1)
    }

    /// Leaves the cluster (every socket must be closed first): releases everything `me` owns
    /// and marks it dead, in one transaction. Returns how many sessions were released.
    pub async fn leave(&mut self, me: &NodeKey) -> Result<u64, ClusterError> {
        let timeout = self.timeout;
        let work = async {
            let tx = self.client.transaction().await?;
            let released = tx
                .execute(
                    "UPDATE warden_session SET owner_node = NULL, owner_inc = NULL \
                     WHERE owner_node = $1 AND owner_inc = $2",
                    &[&me.node, &me.incarnation],
                )
                .await?;
            tx.execute(
                "UPDATE warden_node SET dead = true WHERE node_id = $1 AND incarnation = $2",
                &[&me.node, &me.incarnation],
            )
            .await?;
            // Delivered at the commit.
            tx.batch_execute(&format!("NOTIFY {RELEASED}")).await?;
            tx.commit().await?;
            Ok::<u64, tokio_postgres::Error>(released)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result.map_err(ClusterError::from),
            Err(_) => {
                self.broken.store(true, Ordering::Relaxed);
                Err(ClusterError::Timeout(timeout))
            }
        }
    }
}

/// Drives `connection` until it ends, passing its notifications on (`wake`, `notices`).
fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    wake: Arc<Notify>,
    notices: broadcast::Sender<Notice>,
) -> JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    wake.notify_one();
                    // Nobody listening is fine: the notice is for whoever subscribed.
                    let _ = notices.send(Notice {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "cluster database connection ended");
                    return;
                }
                None => return,
            }
        }
    })
}

/// Checks, inside the caller's transaction, that `me` still holds `token` under `fence`, and
/// holds its row shared until the transaction ends: a claim by another node waits for this
/// write to commit, and every write under the old fence after it is refused. Every write of a
/// session's data starts with this.
pub async fn check_fence(
    tx: &Transaction<'_>,
    me: &NodeKey,
    token: &str,
    fence: i64,
) -> Result<(), ClusterError> {
    let rows = tx
        .query(
            "SELECT 1 FROM warden_session WHERE token = $1 AND fence = $2 \
             AND owner_node = $3 AND owner_inc = $4 FOR SHARE",
            &[&token, &fence, &me.node, &me.incarnation],
        )
        .await?;
    if rows.is_empty() {
        return Err(ClusterError::StaleFence {
            token: token.to_owned(),
            fence,
        });
    }
    Ok(())
}
