//! The outbox: messages a session was asked to send, one row each, kept from the moment the
//! request is accepted until they are read, fail or their session is deleted.
//!
//! The store knows rows, not rules: which status may follow which is decided by the caller
//! (warden-core's pure outbox state machine), inside [`Db::outbox_apply`]'s transaction, so a
//! change is read, decided and written atomically.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::Db;
use crate::error::DbError;

/// One stored outgoing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Its place in the session's send order.
    pub seq: i64,
    /// The session that sends it.
    pub token: String,
    /// Its WhatsApp message id, chosen when it was accepted (sending again reuses it).
    pub id: String,
    /// The caller's idempotency key (or one made for it).
    pub key: String,
    /// The recipient, as a JID.
    pub to: String,
    /// The text.
    pub text: String,
    /// Its status, as the caller names it.
    pub status: String,
    /// Why it failed (or what the server said), when it did.
    pub reason: Option<String>,
    /// The server's error code, when it refused it.
    pub code: Option<i64>,
    /// How many times sending it was tried.
    pub attempts: u32,
    /// When it was accepted (Unix milliseconds).
    pub created_at: i64,
    /// When its status last changed (Unix milliseconds).
    pub updated_at: i64,
    /// When it expires if still unsent (Unix milliseconds); `None`: never.
    pub expires_at: Option<i64>,
}

/// A message to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxMessage {
    /// The session.
    pub token: String,
    /// Its WhatsApp message id.
    pub id: String,
    /// The idempotency key.
    pub key: String,
    /// The recipient JID.
    pub to: String,
    /// The text.
    pub text: String,
    /// Its first status.
    pub status: String,
    /// Now (Unix milliseconds).
    pub created_at: i64,
    /// When it expires if still unsent.
    pub expires_at: Option<i64>,
}

/// What to write to a row, as decided from its current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxChange {
    /// The new status.
    pub status: String,
    /// The new reason (replaces the old one).
    pub reason: Option<String>,
    /// The new error code (replaces the old one).
    pub code: Option<i64>,
    /// The new attempt count.
    pub attempts: u32,
    /// Now (Unix milliseconds).
    pub at: i64,
    /// When it expires if still unsent.
    pub expires_at: Option<i64>,
}

const COLUMNS: &str = "seq, token, id, key, recipient, body, status, reason, code, attempts, \
                       created_at, updated_at, expires_at";

fn row(r: &Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        seq: r.get(0)?,
        token: r.get(1)?,
        id: r.get(2)?,
        key: r.get(3)?,
        to: r.get(4)?,
        text: r.get(5)?,
        status: r.get(6)?,
        reason: r.get(7)?,
        code: r.get(8)?,
        attempts: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        expires_at: r.get(12)?,
    })
}

fn by_key(conn: &Connection, token: &str, key: &str) -> rusqlite::Result<Option<OutboxRow>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM outbox WHERE token = ?1 AND key = ?2"
    ))?
    .query_row(params![token, key], row)
    .optional()
}

fn by_id(conn: &Connection, token: &str, id: &str) -> rusqlite::Result<Option<OutboxRow>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM outbox WHERE token = ?1 AND id = ?2"
    ))?
    .query_row(params![token, id], row)
    .optional()
}

impl Db {
    /// Accepts `message` unless its session already has one with the same key. Returns the
    /// stored row (the earlier one, for a repeated key) and whether it is new. Answers after
    /// the commit. A session without a record (deleted, or never written) gets
    /// [`DbError::Closed`]: no row outlives its session.
    pub async fn outbox_insert(
        &self,
        message: NewOutboxMessage,
    ) -> Result<(OutboxRow, bool), DbError> {
        self.queue
            .call(move |conn| {
                if let Some(existing) = by_key(conn, &message.token, &message.key)? {
                    return Ok((existing, false));
                }
                let has_record = conn
                    .prepare_cached("SELECT 1 FROM session_records WHERE token = ?1")?
                    .exists([&message.token])?;
                if !has_record {
                    return Err(DbError::Closed);
                }
                conn.prepare_cached(
                    "INSERT INTO outbox (token, id, key, recipient, body, status, attempts,
                                         created_at, updated_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7, ?8)",
                )?
                .execute(params![
                    message.token,
                    message.id,
                    message.key,
                    message.to,
                    message.text,
                    message.status,
                    message.created_at,
                    message.expires_at,
                ])?;
                let stored = by_id(conn, &message.token, &message.id)?
                    .ok_or_else(|| DbError::Corrupt("an inserted outbox row is missing".into()))?;
                Ok((stored, true))
            })
            .await
    }

    /// The message of `token` whose id, or else whose key, is `id_or_key`.
    pub async fn outbox_get(
        &self,
        token: &str,
        id_or_key: &str,
    ) -> Result<Option<OutboxRow>, DbError> {
        let (token, wanted) = (token.to_owned(), id_or_key.to_owned());
        self.queue
            .call(move |conn| match by_id(conn, &token, &wanted)? {
                Some(found) => Ok(Some(found)),
                None => Ok(by_key(conn, &token, &wanted)?),
            })
            .await
    }

    /// The message of `token` stored under idempotency key `key`.
    pub async fn outbox_by_key(
        &self,
        token: &str,
        key: &str,
    ) -> Result<Option<OutboxRow>, DbError> {
        let (token, key) = (token.to_owned(), key.to_owned());
        self.queue
            .call(move |conn| Ok(by_key(conn, &token, &key)?))
            .await
    }

    /// `token`'s messages whose status is one of `statuses`, in send order, at most `limit`.
    pub async fn outbox_list(
        &self,
        token: &str,
        statuses: &[&str],
        limit: usize,
    ) -> Result<Vec<OutboxRow>, DbError> {
        let token = token.to_owned();
        let statuses: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
        self.queue
            .call(move |conn| {
                let mut statement = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM outbox WHERE token = ?1 AND status = ?2
                     ORDER BY seq LIMIT ?3"
                ))?;
                let mut rows = Vec::new();
                for status in &statuses {
                    let found = statement.query_map(params![token, status, limit as i64], row)?;
                    for r in found {
                        rows.push(r?);
                    }
                }
                rows.sort_by_key(|r| r.seq);
                rows.truncate(limit);
                Ok(rows)
            })
            .await
    }

    /// Every session's messages in `status` that expire at or before `now`, oldest first.
    pub async fn outbox_expiring(&self, status: &str, now: i64) -> Result<Vec<OutboxRow>, DbError> {
        let status = status.to_owned();
        self.queue
            .call(move |conn| {
                let mut statement = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM outbox
                     WHERE status = ?1 AND expires_at IS NOT NULL AND expires_at <= ?2
                     ORDER BY seq"
                ))?;
                let rows = statement.query_map(params![status, now], row)?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Whether `token` has a message to `to` in one of `statuses` (a chat it already has).
    pub async fn outbox_has_chat(
        &self,
        token: &str,
        to: &str,
        statuses: &[&str],
    ) -> Result<bool, DbError> {
        let (token, to) = (token.to_owned(), to.to_owned());
        let statuses: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
        self.queue
            .call(move |conn| {
                let mut statement = conn.prepare_cached(
                    "SELECT 1 FROM outbox WHERE token = ?1 AND recipient = ?2 AND status = ?3
                     LIMIT 1",
                )?;
                for status in &statuses {
                    if statement.exists(params![token, to, status])? {
                        return Ok(true);
                    }
                }
                Ok(false)
            })
            .await
    }

    /// Reads the message `id` of `token`, lets `decide` choose what to write, writes it, all
    /// in one transaction. Returns the row as it is afterwards and whether it changed; `None`
    /// when there is no such message.
    pub async fn outbox_apply<F>(
        &self,
        token: &str,
        id: &str,
        decide: F,
    ) -> Result<Option<(OutboxRow, bool)>, DbError>
    where
        F: FnOnce(&OutboxRow) -> Option<OutboxChange> + Send + 'static,
    {
        let (token, id) = (token.to_owned(), id.to_owned());
        self.queue
            .call(move |conn| {
                let Some(current) = by_id(conn, &token, &id)? else {
                    return Ok(None);
                };
                let Some(change) = decide(&current) else {
                    return Ok(Some((current, false)));
                };
                conn.prepare_cached(
                    "UPDATE outbox SET status = ?1, reason = ?2, code = ?3, attempts = ?4,
                                       updated_at = ?5, expires_at = ?6
                     WHERE token = ?7 AND id = ?8",
                )?
                .execute(params![
                    change.status,
                    change.reason,
                    change.code,
                    change.attempts,
                    change.at,
                    change.expires_at,
                    token,
                    id
                ])?;
                let after = by_id(conn, &token, &id)?
                    .ok_or_else(|| DbError::Corrupt("an updated outbox row is missing".into()))?;
                Ok(Some((after, true)))
            })
            .await
    }

    /// Removes every message whose status is not `keep_status` and that last changed before
    /// `before` (Unix milliseconds); returns how many.
    pub async fn outbox_prune(&self, keep_status: &str, before: i64) -> Result<u64, DbError> {
        let keep = keep_status.to_owned();
        self.queue
            .call(move |conn| {
                let n = conn
                    .prepare_cached("DELETE FROM outbox WHERE status <> ?1 AND updated_at < ?2")?
                    .execute(params![keep, before])?;
                Ok(n as u64)
            })
            .await
    }

    /// Removes every message of `token`; returns how many there were.
    pub async fn outbox_remove_session(&self, token: &str) -> Result<u64, DbError> {
        let token = token.to_owned();
        self.queue
            .call(move |conn| Ok(delete_session_rows(conn, &token)? as u64))
            .await
    }
}

/// Deletes `token`'s outbox rows inside the caller's transaction.
pub(crate) fn delete_session_rows(conn: &Connection, token: &str) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM outbox WHERE token = ?1", [token])
}
