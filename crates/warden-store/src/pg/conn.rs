//! The PostgreSQL connection the owner thread holds: made on first use and again after it
//! broke (the jobs of the batch it broke in fail, and none of them was acknowledged), with
//! deadlines on both sides so that a cut-off server cannot hold the thread.

use std::collections::HashMap;
use std::time::Duration;

use postgres::{Client, NoTls, Statement};

use crate::engine::Backend;
use crate::error::DbError;

/// How the connection is made, and its deadlines.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Every statement's deadline, held by the server (`statement_timeout`; `lock_timeout` is
    /// half of it, `idle_in_transaction_session_timeout` twice it) and, through TCP's
    /// user timeout and keepalives, by this side.
    pub statement_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How many connections (each on its owner thread) the store keeps, whatever the number
    /// of sessions.
    pub connections: usize,
    /// How long a caller waits for its operation's answer (each `PgDb` call but `connect` and
    /// `close`, whole). Past it, the caller gets [`DbError::Unconfirmed`] (a read:
    /// [`DbError::Postgres`]). This is the deadline a frozen server (stopped, or cut off while
    /// the kernels still answer TCP) cannot hold up: the server's own deadlines do not run
    /// while it is stopped, and the client library has no read deadline of its own. The owner
    /// thread stays blocked until the server answers or the connection breaks; jobs queued
    /// behind it get the same error at their deadline.
    pub answer_timeout: Duration,
    /// TLS to the server (`None`: plain connections). With it, a server without TLS is
    /// refused.
    pub tls: Option<warden_cluster::PgTls>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            statement_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            connections: 4,
            answer_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// The owner thread's connection and its prepared statements.
pub(crate) struct PgConn {
    config: postgres::Config,
    tls: Option<warden_cluster::PgTls>,
    client: Option<Client>,
    statements: HashMap<&'static str, Statement>,
    /// How long callers wait for an answer ([`PgOptions::answer_timeout`]).
    answer_timeout: Duration,
    /// The transaction in progress holds the journal's lock (`pg::journal`): it is not asked
    /// for again. Cleared at every `BEGIN` and every rollback (to a savepoint too, which may
    /// give the lock back), so it errs only towards asking again.
    pub(crate) journal_locked: bool,
}

impl PgConn {
    /// A connection to `url` (made on first use), with `options`' deadlines.
    pub(crate) fn new(url: &str, options: &PgOptions) -> Result<Self, DbError> {
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            DbError::Postgres(format!("the database URL is not valid: {e}"))
        })?;
        let ms = options.statement_timeout.as_millis();
        config
            .options(&format!(
                "-c statement_timeout={ms} -c lock_timeout={} \
                 -c idle_in_transaction_session_timeout={}",
                ms / 2,
                ms * 2
            ))
            .application_name("warden-store")
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(1))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            .tcp_user_timeout(options.statement_timeout * 2);
        if options.tls.is_some() {
            config.ssl_mode(postgres::config::SslMode::Require);
        }
        Ok(Self {
            config,
            tls: options.tls.clone(),
            client: None,
            statements: HashMap::new(),
            answer_timeout: options.answer_timeout,
            journal_locked: false,
        })
    }

    /// How long callers wait for an answer.
    pub(crate) fn answer_timeout(&self) -> Duration {
        self.answer_timeout
    }

    /// Lets every lock wait for the rest of the transaction in progress last up to `limit`
    /// (`SET LOCAL lock_timeout`). Never connects, as [`PgConn::prepared`].
    pub(crate) fn lock_timeout_for_rest(&mut self, limit: Duration) -> Result<(), DbError> {
        let client = self
            .client
            .as_mut()
            .filter(|c| !c.is_closed())
            .ok_or_else(|| DbError::Postgres("the connection broke".into()))?;
        client
            .batch_execute(&format!(
                "SET LOCAL lock_timeout = {}",
                limit.as_millis().max(1)
            ))
            .map_err(pg_error)
    }

    /// The connection, made now if there is none or it broke.
    pub(crate) fn client(&mut self) -> Result<&mut Client, DbError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.statements.clear();
            self.client = None;
            let client = match &self.tls {
                None => self.config.connect(NoTls),
                Some(tls) => self.config.connect(tls.clone()),
            };
            self.client = Some(client.map_err(pg_error)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// `sql` prepared once per connection. Never connects: a statement runs inside the
    /// transaction its batch began, so a connection that broke fails it (only `BEGIN` makes a
    /// new connection, `Backend::batch`).
    pub(crate) fn prepared(
        &mut self,
        sql: &'static str,
    ) -> Result<(&mut Client, Statement), DbError> {
        let cached = self.statements.get(sql).cloned();
        let client = self
            .client
            .as_mut()
            .filter(|c| !c.is_closed())
            .ok_or_else(|| DbError::Postgres("the connection broke".into()))?;
        let statement = match cached {
            Some(statement) => statement,
            None => {
                let statement = client.prepare(sql).map_err(pg_error)?;
                self.statements.insert(sql, statement.clone());
                statement
            }
        };
        Ok((self.client.as_mut().expect("connected above"), statement))
    }
}

impl Backend for PgConn {
    const BEGIN: &'static str = "BEGIN";
    const BEGIN_READ: &'static str = "BEGIN READ ONLY";
    const AFTER_READ: &'static str = "";

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        if sql.starts_with("BEGIN") || sql.starts_with("ROLLBACK") {
            self.journal_locked = false;
        }
        if sql.starts_with("BEGIN") {
            // Nothing is in the transaction yet: a connection found broken here (the server
            // restarted, or ended it while it was idle) is made again, and the batch goes on.
            match self.client()?.batch_execute(sql) {
                Err(e) if connection_lost(&e) => {
                    tracing::warn!(error = %e, "the PostgreSQL connection broke; connecting again");
                    self.client = None;
                    return self.client()?.batch_execute(sql).map_err(pg_error);
                }
                result => return result.map_err(pg_error),
            }
        }
        // In a transaction's middle, a broken connection fails every statement up to its end:
        // nothing of the batch is acknowledged. A `COMMIT` sent whose answer was lost (the
        // connection broke under it, or the server ended the session with it: SQLSTATE 08 or
        // 57, which it may send after committing) may have been carried out: its callers are
        // told it is unconfirmed, not that it was not kept. A `COMMIT` never sent (the
        // connection had broken before) is a plain failure.
        let client = self
            .client
            .as_mut()
            .filter(|c| !c.is_closed())
            .ok_or_else(|| DbError::Postgres("the connection broke".into()))?;
        match client.batch_execute(sql) {
            Err(e) if sql == "COMMIT" && connection_lost(&e) => Err(DbError::Unconfirmed(format!(
                "the connection ended during COMMIT: {e}"
            ))),
            result => result.map_err(pg_error),
        }
    }
}

/// Whether `e` says the connection itself is gone: an I/O error, or the server ending it
/// (SQLSTATE class 08, connection exception; 57, operator intervention: terminated by an
/// administrator, shutting down).
fn connection_lost(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => matches!(&db.code().code()[..2], "08" | "57"),
    }
}

/// What PostgreSQL said, as the store's error.
pub(crate) fn pg_error(e: postgres::Error) -> DbError {
    DbError::Postgres(match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        // With its causes: "error performing TLS handshake" alone does not say why.
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    })
}
