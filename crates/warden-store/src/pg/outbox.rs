//! The outbox on PostgreSQL: the same rows and calls as SQLite's (`crate::outbox`), each write
//! made under its session's [`Fence`], so that a node that lost a session can neither accept
//! a message for it nor change one of its messages.

use super::conn::{PgConn, pg_error};
use super::{Fence, PgDb, kv};
use crate::error::DbError;
use crate::outbox::{NewOutboxMessage, OutboxChange, OutboxRow};

/// Rows selected by [`select!`], as outbox rows.
fn rows(rows: Vec<postgres::Row>) -> Vec<OutboxRow> {
    rows.into_iter()
        .map(|r| OutboxRow {
            seq: r.get(0),
            token: r.get(1),
            id: r.get(2),
            key: r.get(3),
            to: r.get(4),
            text: r.get(5),
            status: r.get(6),
            reason: r.get(7),
            code: r.get(8),
            attempts: u32::try_from(r.get::<_, i64>(9)).unwrap_or(u32::MAX),
            created_at: r.get(10),
            updated_at: r.get(11),
            expires_at: r.get(12),
        })
        .collect()
}

/// The outbox's columns, in the order [`rows`] reads them, selected `WHERE ...`.
macro_rules! select {
    ($where:literal) => {
        concat!(
            "SELECT seq, token, id, key, recipient, body, status, reason, code, attempts, \
             created_at, updated_at, expires_at FROM warden_outbox ",
            $where
        )
    };
}

fn by_key(conn: &mut PgConn, token: &str, key: &str) -> Result<Option<OutboxRow>, DbError> {
    let (client, statement) = conn.prepared(select!("WHERE token = $1 AND key = $2"))?;
    let found = client
        .query(&statement, &[&token, &key])
        .map_err(pg_error)?;
    Ok(rows(found).pop())
}

fn by_id(conn: &mut PgConn, token: &str, id: &str) -> Result<Option<OutboxRow>, DbError> {
    let (client, statement) = conn.prepared(select!("WHERE token = $1 AND id = $2"))?;
    let found = client.query(&statement, &[&token, &id]).map_err(pg_error)?;
    Ok(rows(found).pop())
}

/// Deletes `token`'s outbox rows inside the caller's transaction; how many there were.
pub(crate) fn delete_session_rows(conn: &mut PgConn, token: &str) -> Result<u64, DbError> {
    let (client, statement) = conn.prepared("DELETE FROM warden_outbox WHERE token = $1")?;
    client.execute(&statement, &[&token]).map_err(pg_error)
}

impl PgDb {
    /// Accepts `message` under `fence` unless its session already has one with the same key
    /// (on any node). Returns the stored row (the earlier one, for a repeated key) and whether
    /// it is new. Answers after the commit. A session with a lease but no record gets
    /// [`DbError::Closed`]; one held elsewhere, or removed (its lease row is gone),
    /// [`DbError::StaleFence`].
    pub async fn outbox_insert(
        &self,
        message: NewOutboxMessage,
        fence: &Fence,
    ) -> Result<(OutboxRow, bool), DbError> {
        let fence = fence.clone();
        self.answered(
            true,
            self.of_token(&message.token).clone().call(move |conn| {
                kv::check_fence(conn, &message.token, &fence)?;
                if let Some(existing) = by_key(conn, &message.token, &message.key)? {
                    return Ok((existing, false));
                }
                let (client, statement) =
                    conn.prepared("SELECT 1 FROM warden_record WHERE token = $1")?;
                if client
                    .query(&statement, &[&message.token])
                    .map_err(pg_error)?
                    .is_empty()
                {
                    return Err(DbError::Closed);
                }
                let (client, statement) = conn.prepared(
                    "INSERT INTO warden_outbox (token, id, key, recipient, body, status, \
                       attempts, created_at, updated_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7, $8) \
                     ON CONFLICT DO NOTHING",
                )?;
                let inserted = client
                    .execute(
                        &statement,
                        &[
                            &message.token,
                            &message.id,
                            &message.key,
                            &message.to,
                            &message.text,
                            &message.status,
                            &message.created_at,
                            &message.expires_at,
                        ],
                    )
                    .map_err(pg_error)?;
                let stored = by_key(conn, &message.token, &message.key)?
                    .ok_or_else(|| DbError::Corrupt("an inserted outbox row is missing".into()))?;
                Ok((stored, inserted == 1))
            }),
        )
        .await
    }

    /// The message of `token` whose id, or else whose key, is `id_or_key`.
    pub async fn outbox_get(
        &self,
        token: &str,
        id_or_key: &str,
    ) -> Result<Option<OutboxRow>, DbError> {
        let (token, wanted) = (token.to_owned(), id_or_key.to_owned());
        self.answered(
            false,
            self.of_token(&token)
                .clone()
                .read(move |conn| match by_id(conn, &token, &wanted)? {
                    Some(found) => Ok(Some(found)),
                    None => by_key(conn, &token, &wanted),
                }),
        )
        .await
    }

    /// The message of `token` stored under idempotency key `key`.
    pub async fn outbox_by_key(
        &self,
        token: &str,
        key: &str,
    ) -> Result<Option<OutboxRow>, DbError> {
        let (token, key) = (token.to_owned(), key.to_owned());
        self.answered(
            false,
            self.of_token(&token)
                .clone()
                .read(move |conn| by_key(conn, &token, &key)),
        )
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.answered(
            false,
            self.of_token(&token).clone().read(move |conn| {
                let (client, statement) = conn.prepared(select!(
                    "WHERE token = $1 AND status = ANY($2) ORDER BY seq LIMIT $3"
                ))?;
                let found = client
                    .query(&statement, &[&token, &statuses, &limit])
                    .map_err(pg_error)?;
                Ok(rows(found))
            }),
        )
        .await
    }

    /// Every session's messages in `status` that expire at or before `now`, oldest first.
    pub async fn outbox_expiring(&self, status: &str, now: i64) -> Result<Vec<OutboxRow>, DbError> {
        let status = status.to_owned();
        self.answered(
            false,
            self.of_writes().read(move |conn| {
                let (client, statement) = conn.prepared(select!(
                    "WHERE status = $1 AND expires_at IS NOT NULL AND expires_at <= $2 \
                     ORDER BY seq"
                ))?;
                let found = client
                    .query(&statement, &[&status, &now])
                    .map_err(pg_error)?;
                Ok(rows(found))
            }),
        )
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
        self.answered(
            false,
            self.of_token(&token).clone().read(move |conn| {
                let (client, statement) = conn.prepared(
                    "SELECT 1 FROM warden_outbox \
                     WHERE token = $1 AND recipient = $2 AND status = ANY($3) LIMIT 1",
                )?;
                let found = client
                    .query(&statement, &[&token, &to, &statuses])
                    .map_err(pg_error)?;
                Ok(!found.is_empty())
            }),
        )
        .await
    }

    /// Reads the message `id` of `token`, lets `decide` choose what to write, writes it under
    /// `fence`, all in one transaction (the row locked from the read to the commit). Returns
    /// the row as it is afterwards and whether it changed; `None` when there is no such
    /// message. A session held elsewhere gets [`DbError::StaleFence`], even when nothing would
    /// change.
    pub async fn outbox_apply<F>(
        &self,
        token: &str,
        id: &str,
        fence: &Fence,
        decide: F,
    ) -> Result<Option<(OutboxRow, bool)>, DbError>
    where
        F: FnOnce(&OutboxRow) -> Option<OutboxChange> + Send + 'static,
    {
        let (token, id, fence) = (token.to_owned(), id.to_owned(), fence.clone());
        self.answered(
            true,
            self.of_token(&token).clone().call(move |conn| {
                kv::check_fence(conn, &token, &fence)?;
                let (client, statement) =
                    conn.prepared(select!("WHERE token = $1 AND id = $2 FOR UPDATE"))?;
                let found = client.query(&statement, &[&token, &id]).map_err(pg_error)?;
                let Some(current) = rows(found).pop() else {
                    return Ok(None);
                };
                let Some(change) = decide(&current) else {
                    return Ok(Some((current, false)));
                };
                let (client, statement) = conn.prepared(
                    "UPDATE warden_outbox SET status = $1, reason = $2, code = $3, \
                       attempts = $4, updated_at = $5, expires_at = $6 \
                     WHERE token = $7 AND id = $8",
                )?;
                client
                    .execute(
                        &statement,
                        &[
                            &change.status,
                            &change.reason,
                            &change.code,
                            &i64::from(change.attempts),
                            &change.at,
                            &change.expires_at,
                            &token,
                            &id,
                        ],
                    )
                    .map_err(pg_error)?;
                let after = by_id(conn, &token, &id)?
                    .ok_or_else(|| DbError::Corrupt("an updated outbox row is missing".into()))?;
                Ok(Some((after, true)))
            }),
        )
        .await
    }

    /// Removes every message, of every session, whose status is not `keep_status` and that
    /// last changed before `before` (Unix milliseconds); returns how many. Housekeeping that
    /// any node may do: it needs no fence.
    pub async fn outbox_prune(&self, keep_status: &str, before: i64) -> Result<u64, DbError> {
        let keep = keep_status.to_owned();
        self.answered(
            true,
            self.of_writes().call(move |conn| {
                let (client, statement) = conn
                    .prepared("DELETE FROM warden_outbox WHERE status <> $1 AND updated_at < $2")?;
                client
                    .execute(&statement, &[&keep, &before])
                    .map_err(pg_error)
            }),
        )
        .await
    }

    /// Removes every message of `token`, under `fence`; returns how many there were.
    pub async fn outbox_remove_session(&self, token: &str, fence: &Fence) -> Result<u64, DbError> {
        let (token, fence) = (token.to_owned(), fence.clone());
        self.answered(
            true,
            self.of_token(&token).clone().call(move |conn| {
                kv::check_fence(conn, &token, &fence)?;
                delete_session_rows(conn, &token)
            }),
        )
        .await
    }
}
