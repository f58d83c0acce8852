//! The event journal on PostgreSQL: the same rows and rules as SQLite's (`crate::journal`:
//! storms collapse within [`COLLAPSE_WINDOW`], each session keeps its newest entries, numbers
//! are never reused), written by every node of a cluster at once.
//!
//! **Numbers are committed in order.** A reader that has seen entry `n` asks for what comes
//! after `n`, so an entry must never become visible after a higher-numbered one. A sequence
//! alone does not promise it (two nodes take numbers 7 and 8, and 8 commits first). Each
//! append therefore takes the journal's transaction-level advisory lock before its number
//! and holds it until its commit: appends of the whole cluster commit one transaction at a
//! time, in number order. A transaction holds it from its first append to its `COMMIT`.

use super::conn::{PgConn, pg_error};
use super::schema::JOURNAL_LOCK;
use super::{PgDb, limit_of};
use crate::error::DbError;
use crate::journal::{COLLAPSE_WINDOW, JournalChange, JournalEntry, NewJournalEntry};

/// A select of journal entries, with the columns [`entries`] reads, `WHERE ...`.
macro_rules! entries_where {
    ($where:literal) => {
        concat!(
            "SELECT seq, token, kind, data, first_at, at, repeats FROM warden_journal ",
            $where
        )
    };
}

/// Applies one change inside the caller's transaction; returns the appended entry's number.
pub(crate) fn apply(conn: &mut PgConn, change: &JournalChange) -> Result<Option<i64>, DbError> {
    match change {
        JournalChange::Append(new) => append(conn, new).map(Some),
        JournalChange::Prune { before } => {
            // Under the lock too: a prune racing an append's collapse or trim could deadlock.
            lock(conn)?;
            let (client, statement) = conn.prepared("DELETE FROM warden_journal WHERE at < $1")?;
            client.execute(&statement, &[before]).map_err(pg_error)?;
            Ok(None)
        }
    }
}

/// Takes the journal's lock for the rest of the transaction. It may wait for another node's
/// commit as long as the caller waits for its answer (`PgOptions::answer_timeout`), not just
/// the connection's `lock_timeout`: waiting for an append elsewhere is the rule, not a fault.
/// Asked for once per transaction: the appends after the first in a group commit cost no
/// round trip for it.
fn lock(conn: &mut PgConn) -> Result<(), DbError> {
    if conn.journal_locked {
        return Ok(());
    }
    conn.lock_timeout_for_rest(conn.answer_timeout())?;
    let (client, statement) = conn.prepared("SELECT pg_advisory_xact_lock($1)")?;
    client
        .execute(&statement, &[&JOURNAL_LOCK])
        .map_err(pg_error)?;
    conn.journal_locked = true;
    Ok(())
}

fn append(conn: &mut PgConn, new: &NewJournalEntry) -> Result<i64, DbError> {
    lock(conn)?;
    let mut first_at = new.at;
    let mut repeats = 1_i64;
    if !new.key.is_empty() {
        let (client, statement) = conn.prepared(
            "SELECT seq, first_at, repeats FROM \
               (SELECT seq, key, first_at, repeats FROM warden_journal WHERE token = $1 \
                ORDER BY seq DESC LIMIT $2) newest \
             WHERE key = $3 ORDER BY seq DESC LIMIT 1",
        )?;
        let rows = client
            .query(&statement, &[&new.token, &COLLAPSE_WINDOW, &new.key])
            .map_err(pg_error)?;
        if let Some(row) = rows.first() {
            let seq: i64 = row.get(0);
            first_at = row.get(1);
            repeats = row.get::<_, i64>(2).saturating_add(1);
            let (client, statement) = conn.prepared("DELETE FROM warden_journal WHERE seq = $1")?;
            client.execute(&statement, &[&seq]).map_err(pg_error)?;
        }
    }
    let (client, statement) = conn.prepared(
        "INSERT INTO warden_journal (seq, token, kind, key, data, first_at, at, repeats) \
         VALUES (nextval('warden_journal_seq'), $1, $2, $3, $4, $5, $6, $7) RETURNING seq",
    )?;
    let row = client
        .query_one(
            &statement,
            &[
                &new.token, &new.kind, &new.key, &new.data, &first_at, &new.at, &repeats,
            ],
        )
        .map_err(pg_error)?;
    let seq: i64 = row.get(0);
    let (client, statement) = conn.prepared(
        "DELETE FROM warden_journal WHERE token = $1 AND seq <= \
           (SELECT seq FROM warden_journal WHERE token = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
    )?;
    client
        .execute(&statement, &[&new.token, &i64::from(new.keep.max(1))])
        .map_err(pg_error)?;
    Ok(seq)
}

/// The highest entry number ever committed or given up on (0 when none), in the caller's
/// transaction: it takes the journal's lock, so no append is in progress anywhere once it
/// has it, and holds it until its transaction ends.
pub(crate) fn head(conn: &mut PgConn) -> Result<i64, DbError> {
    lock(conn)?;
    let (client, statement) = conn.prepared(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM warden_journal_seq",
    )?;
    let row = client.query_one(&statement, &[]).map_err(pg_error)?;
    Ok(row.get(0))
}

/// Removes a session's entries and the webhooks' state for it (its removal's own entry,
/// appended after, stays).
pub(crate) fn delete_session_rows(conn: &mut PgConn, token: &str) -> Result<(), DbError> {
    let (client, statement) = conn.prepared("DELETE FROM warden_journal WHERE token = $1")?;
    client.execute(&statement, &[&token]).map_err(pg_error)?;
    super::webhooks::delete_session_rows(conn, token)
}

/// `rows` (columns seq, token, kind, data, first_at, at, repeats) as entries.
pub(crate) fn entries(rows: Vec<postgres::Row>) -> Vec<JournalEntry> {
    rows.into_iter()
        .map(|row| JournalEntry {
            seq: row.get(0),
            token: row.get(1),
            kind: row.get(2),
            data: row.get(3),
            first_at: row.get(4),
            at: row.get(5),
            repeats: u32::try_from(row.get::<_, i64>(6)).unwrap_or(u32::MAX),
        })
        .collect()
}

impl PgDb {
    /// Entries after `after`, oldest first, at most `limit`: one session's, or (`None`)
    /// the whole cluster's. What it returns after `after` is final: no entry with a lower
    /// number can be committed later (see the module docs).
    pub async fn read_journal(
        &self,
        token: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, DbError> {
        let limit = limit_of(limit);
        self.answered(
            false,
            self.of_writes().read(move |conn| {
                // Two statements, not one with `$1 IS NULL OR`: a prepared statement's generic
                // plan would walk everyone's entries for one session's.
                let rows = match &token {
                    Some(token) => {
                        let (client, statement) = conn.prepared(entries_where!(
                            "WHERE token = $1 AND seq > $2 \
                             ORDER BY seq LIMIT $3"
                        ))?;
                        client.query(&statement, &[token, &after, &limit])
                    }
                    None => {
                        let (client, statement) =
                            conn.prepared(entries_where!("WHERE seq > $1 ORDER BY seq LIMIT $2"))?;
                        client.query(&statement, &[&after, &limit])
                    }
                }
                .map_err(pg_error)?;
                Ok(entries(rows))
            }),
        )
        .await
    }

    /// One session's newest `limit` entries, oldest first.
    pub async fn journal_tail(
        &self,
        token: String,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, DbError> {
        let limit = limit_of(limit);
        self.answered(
            false,
            self.of_writes().read(move |conn| {
                let (client, statement) = conn.prepared(entries_where!(
                    "WHERE token = $1 ORDER BY seq DESC LIMIT $2"
                ))?;
                let rows = client
                    .query(&statement, &[&token, &limit])
                    .map_err(pg_error)?;
                let mut rows = entries(rows);
                rows.reverse();
                Ok(rows)
            }),
        )
        .await
    }

    /// Up to `limit` of `token`'s entries of `kind` before entry `seq`, oldest first.
    pub async fn journal_before(
        &self,
        token: String,
        seq: i64,
        kind: String,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, DbError> {
        let limit = limit_of(limit);
        self.answered(
            false,
            self.of_writes().read(move |conn| {
                let (client, statement) = conn.prepared(entries_where!(
                    "WHERE token = $1 AND seq < $2 AND kind = $3 ORDER BY seq DESC LIMIT $4"
                ))?;
                let rows = client
                    .query(&statement, &[&token, &seq, &kind, &limit])
                    .map_err(pg_error)?;
                let mut rows = entries(rows);
                rows.reverse();
                Ok(rows)
            }),
        )
        .await
    }

    /// The highest entry number ever committed or given up on (0 when none): every entry
    /// after it is yet to be committed. It waits for the append in progress, if any, to end.
    pub async fn journal_head(&self) -> Result<i64, DbError> {
        self.answered(false, self.of_writes().read(head)).await
    }

    /// How many entries `token` has.
    pub async fn journal_count(&self, token: String) -> Result<usize, DbError> {
        self.answered(
            false,
            self.of_writes().read(move |conn| {
                let (client, statement) =
                    conn.prepared("SELECT COUNT(*) FROM warden_journal WHERE token = $1")?;
                let row = client.query_one(&statement, &[&token]).map_err(pg_error)?;
                Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
            }),
        )
        .await
    }
}
