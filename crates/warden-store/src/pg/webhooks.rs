//! The webhooks' delivery state on PostgreSQL: the same rows and calls as SQLite's
//! (`crate::journal`): where each webhook starts, how far it got in each session, what it gave
//! up on, the webhooks set for one session through the API, and the database's identity.
//!
//! Progress is not fenced: a cursor says what was delivered, which stays true whoever
//! delivered it, and it only moves forward ([`PgDb::webhook_advance_all`]) except on an
//! explicit replay ([`PgDb::webhook_rewind`]).

use super::conn::{PgConn, pg_error};
use super::journal::{entries, head};
use super::{PgDb, execute_each, limit_of};
use crate::error::DbError;
use crate::journal::{DeadLetter, JournalEntry};

/// What webhook `$1` has not done after entry `$2`, at most `$3`: entries past its start and
/// its cursor for their session, also matching `$cond` (which ends with `AND`, or is empty).
macro_rules! pending_where {
    ($cond:literal) => {
        concat!(
            "SELECT j.seq, j.token, j.kind, j.data, j.first_at, j.at, j.repeats \
             FROM warden_journal j \
             JOIN warden_webhook w ON w.hook = $1 \
             LEFT JOIN warden_webhook_cursor c ON c.hook = $1 AND c.token = j.token \
             WHERE ",
            $cond,
            " j.seq > $2 AND j.seq > w.start AND j.seq > COALESCE(c.seq, 0) \
             ORDER BY j.seq LIMIT $3"
        )
    };
}

/// Moves `hook`'s cursor of `token` forward to `seq` (never back), in the caller's
/// transaction.
fn advance(conn: &mut PgConn, hook: &str, token: &str, seq: i64) -> Result<(), DbError> {
    let (client, statement) = conn.prepared(
        "INSERT INTO warden_webhook_cursor (hook, token, seq) VALUES ($1, $2, $3) \
         ON CONFLICT (hook, token) \
         DO UPDATE SET seq = GREATEST(warden_webhook_cursor.seq, excluded.seq)",
    )?;
    client
        .execute(&statement, &[&hook, &token, &seq])
        .map_err(pg_error)?;
    Ok(())
}

/// Removes a session's delivery state and its own webhooks, in the caller's transaction.
pub(crate) fn delete_session_rows(conn: &mut PgConn, token: &str) -> Result<(), DbError> {
    // The session's own webhooks stop being started; each, still running, sends the
    // deletion and then removes the rest of itself (`remove_session_webhook`).
    execute_each(
        conn,
        &[
            "DELETE FROM warden_webhook_cursor WHERE token = $1",
            "DELETE FROM warden_webhook_dead WHERE token = $1",
            "DELETE FROM warden_session_webhook WHERE token = $1",
        ],
        &token,
    )
}

impl PgDb {
    /// Registers webhook `hook` if it is new, starting it at the journal's head (it sends
    /// what happens from now on), and returns where it starts.
    pub async fn webhook_register(&self, hook: String) -> Result<i64, DbError> {
        self.answered(
            true,
            self.of_writes().call(move |conn| {
                let now = head(conn)?;
                let (client, statement) = conn.prepared(
                    "INSERT INTO warden_webhook (hook, start) VALUES ($1, $2) \
                     ON CONFLICT (hook) DO NOTHING",
                )?;
                client
                    .execute(&statement, &[&hook, &now])
                    .map_err(pg_error)?;
                let (client, statement) =
                    conn.prepared("SELECT start FROM warden_webhook WHERE hook = $1")?;
                let row = client.query_one(&statement, &[&hook]).map_err(pg_error)?;
                Ok(row.get(0))
            }),
        )
        .await
    }

    /// What webhook `hook` has not yet done, in entry order, at most `limit`, after entry
    /// `after` (a reader's own position): entries past the hook's start and past its cursor
    /// for their session; only `only`'s entries, if given.
    pub async fn webhook_pending(
        &self,
        hook: String,
        only: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, DbError> {
        let limit = limit_of(limit);
        self.answered(
            false,
            self.of_writes().read(move |conn| {
                // Two statements, not one with `$4 IS NULL OR`: a generic plan would walk
                // everyone's entries for one session's.
                let rows = match &only {
                    Some(token) => {
                        let (client, statement) =
                            conn.prepared(pending_where!("j.token = $4 AND"))?;
                        client.query(&statement, &[&hook, &after, &limit, token])
                    }
                    None => {
                        let (client, statement) = conn.prepared(pending_where!(""))?;
                        client.query(&statement, &[&hook, &after, &limit])
                    }
                }
                .map_err(pg_error)?;
                Ok(entries(rows))
            }),
        )
        .await
    }

    /// Records that webhook `hook` is done with `token`'s entries up to `seq` (delivered, or
    /// given up on and dead-lettered by the same commit).
    pub async fn webhook_advance(
        &self,
        hook: String,
        token: String,
        seq: i64,
        dead: Option<DeadLetter>,
    ) -> Result<(), DbError> {
        self.webhook_advance_all(hook, vec![(token, seq, dead)])
            .await
    }

    /// [`PgDb::webhook_advance`] for several sessions' entries at once, in one commit.
    pub async fn webhook_advance_all(
        &self,
        hook: String,
        done: Vec<(String, i64, Option<DeadLetter>)>,
    ) -> Result<(), DbError> {
        self.answered(
            true,
            self.of_writes().call(move |conn| {
                for (token, seq, dead) in done {
                    advance(conn, &hook, &token, seq)?;
                    let Some(dead) = dead else { continue };
                    let (client, statement) = conn.prepared(
                        "INSERT INTO warden_webhook_dead \
                           (hook, seq, token, kind, body, reason, attempts, failed_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (hook, seq) DO UPDATE SET reason = excluded.reason, \
                           attempts = excluded.attempts, failed_at = excluded.failed_at",
                    )?;
                    client
                        .execute(
                            &statement,
                            &[
                                &dead.hook,
                                &dead.seq,
                                &dead.token,
                                &dead.kind,
                                &dead.body,
                                &dead.reason,
                                &i64::from(dead.attempts),
                                &dead.failed_at,
                            ],
                        )
                        .map_err(pg_error)?;
                }
                Ok(())
            }),
        )
        .await
    }

    /// Records that webhook `hook` is done with each session's entries up to its number:
    /// entries it does not want, skipped in one commit.
    pub async fn webhook_skip(
        &self,
        hook: String,
        done: Vec<(String, i64)>,
    ) -> Result<(), DbError> {
        self.answered(
            true,
            self.of_writes().call(move |conn| {
                for (token, seq) in &done {
                    advance(conn, &hook, token, *seq)?;
                }
                Ok(())
            }),
        )
        .await
    }

    /// Moves webhook `hook`'s cursor for every session back to just before `from`: a replay.
    /// Entries still in the journal from `from` on are sent again.
    pub async fn webhook_rewind(&self, hook: String, from: i64) -> Result<(), DbError> {
        self.answered(
            true,
            self.of_writes().call(move |conn| {
                let to = from.saturating_sub(1).max(0);
                let (client, statement) = conn.prepared(
                    "UPDATE warden_webhook SET start = LEAST(start, $2) WHERE hook = $1",
                )?;
                if client
                    .execute(&statement, &[&hook, &to])
                    .map_err(pg_error)?
                    == 0
                {
                    return Err(DbError::Corrupt(format!("no webhook {hook}")));
                }
                let (client, statement) = conn.prepared(
                    "UPDATE warden_webhook_cursor SET seq = LEAST(seq, $2) WHERE hook = $1",
                )?;
                client
                    .execute(&statement, &[&hook, &to])
                    .map_err(pg_error)?;
                Ok(())
            }),
        )
        .await
    }

    /// Webhook `hook`'s dead letters (every webhook's with `None`), oldest first, at most
    /// `limit`.
    pub async fn dead_letters(
        &self,
        hook: Option<String>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DbError> {
        let limit = limit_of(limit);
        self.answered(
            false,
            self.of_writes().read(move |conn| {
                let (client, statement) = conn.prepared(
                    "SELECT hook, seq, token, kind, body, reason, attempts, failed_at \
                     FROM warden_webhook_dead WHERE $1::text IS NULL OR hook = $1 \
                     ORDER BY failed_at, seq LIMIT $2",
                )?;
                let rows = client
                    .query(&statement, &[&hook, &limit])
                    .map_err(pg_error)?;
                Ok(rows.iter().map(dead_letter).collect())
            }),
        )
        .await
    }

    /// Removes and returns dead letters of `hook` (all of them, or only entry `seq`), in one
    /// commit: the caller delivers them again. Two nodes taking the same letters at once
    /// get each letter once between them.
    pub async fn take_dead_letters(
        &self,
        hook: String,
        seq: Option<i64>,
    ) -> Result<Vec<DeadLetter>, DbError> {
        self.answered(
            true,
            self.of_writes().call(move |conn| {
                let (client, statement) = conn.prepared(
                    "DELETE FROM warden_webhook_dead \
                     WHERE hook = $1 AND ($2::bigint IS NULL OR seq = $2) \
                     RETURNING hook, seq, token, kind, body, reason, attempts, failed_at",
                )?;
                let rows = client.query(&statement, &[&hook, &seq]).map_err(pg_error)?;
                let mut taken: Vec<DeadLetter> = rows.iter().map(dead_letter).collect();
                taken.sort_by_key(|d| (d.failed_at, d.seq));
                Ok(taken)
            }),
        )
        .await
    }

    /// This database's identity: made once (from `candidate`, by whichever node asks first)
    /// and kept, so webhook event ids (`evt_<identity>_<seq>`) never repeat in the cluster.
    pub async fn identity(&self, candidate: String) -> Result<String, DbError> {
        self.answered(
            true,
            self.of_writes().call(move |conn| {
                let (client, statement) = conn.prepared(
                    "INSERT INTO warden_meta (name, value) VALUES ('identity', $1) \
                     ON CONFLICT (name) DO NOTHING",
                )?;
                client
                    .execute(&statement, &[&candidate])
                    .map_err(pg_error)?;
                let (client, statement) =
                    conn.prepared("SELECT value FROM warden_meta WHERE name = 'identity'")?;
                let row = client.query_one(&statement, &[]).map_err(pg_error)?;
                Ok(row.get(0))
            }),
        )
        .await
    }

    /// Stores (or replaces) webhook `hook` of session `token`, its configuration as the
    /// caller encodes it.
    pub async fn put_session_webhook(
        &self,
        hook: String,
        token: String,
        config: String,
    ) -> Result<(), DbError> {
        self.answered(
            true,
            self.of_writes().call(move |conn| {
                let (client, statement) = conn.prepared(
                    "INSERT INTO warden_session_webhook (hook, token, config) \
                     VALUES ($1, $2, $3) ON CONFLICT (hook) \
                     DO UPDATE SET token = excluded.token, config = excluded.config",
                )?;
                client
                    .execute(&statement, &[&hook, &token, &config])
                    .map_err(pg_error)?;
                Ok(())
            }),
        )
        .await
    }

    /// Removes webhook `hook` of a session, with its progress and dead letters; whether it was
    /// there.
    pub async fn remove_session_webhook(&self, hook: String) -> Result<bool, DbError> {
        self.answered(
            true,
            self.of_writes().call(move |conn| {
                let (client, statement) =
                    conn.prepared("DELETE FROM warden_session_webhook WHERE hook = $1")?;
                let removed = client.execute(&statement, &[&hook]).map_err(pg_error)?;
                execute_each(
                    conn,
                    &[
                        "DELETE FROM warden_webhook WHERE hook = $1",
                        "DELETE FROM warden_webhook_cursor WHERE hook = $1",
                        "DELETE FROM warden_webhook_dead WHERE hook = $1",
                    ],
                    &hook,
                )?;
                Ok(removed > 0)
            }),
        )
        .await
    }

    /// Every session's webhooks: (hook, token, configuration).
    pub async fn session_webhooks(&self) -> Result<Vec<(String, String, String)>, DbError> {
        self.answered(
            false,
            self.of_writes().read(|conn| {
                let (client, statement) = conn.prepared(
                    "SELECT hook, token, config FROM warden_session_webhook ORDER BY hook",
                )?;
                let rows = client.query(&statement, &[]).map_err(pg_error)?;
                Ok(rows
                    .into_iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect())
            }),
        )
        .await
    }
}

fn dead_letter(row: &postgres::Row) -> DeadLetter {
    DeadLetter {
        hook: row.get(0),
        seq: row.get(1),
        token: row.get(2),
        kind: row.get(3),
        body: row.get(4),
        reason: row.get(5),
        attempts: u32::try_from(row.get::<_, i64>(6)).unwrap_or(u32::MAX),
        failed_at: row.get(7),
    }
}
