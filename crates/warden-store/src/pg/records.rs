//! Session records on PostgreSQL: the same rows as SQLite's (`crate::records`), shared by every
//! node, with every session's changes made under its writer's lease.
//!
//! - [`PgDb::create_session`] adds a session to the cluster: its record and its unowned lease
//!   row in one commit, announced to the nodes (the cluster's `RELEASED` channel) so one
//!   claims it.
//! - [`PgDb::commit`] is SQLite's `Db::commit` with a [`Fence`] per session: every session
//!   whose records or journal it changes must still be held under its fence, or nothing of
//!   the commit is kept ([`DbError::StaleFence`] names the session).

use std::collections::{BTreeSet, HashMap};

use super::conn::{PgConn, pg_error};
use super::{Fence, PgDb, delete_device_rows, execute_each, find, kv};
use crate::error::DbError;
use crate::journal::JournalChange;
use crate::records::RecordChange;

/// The channel that tells the cluster's nodes a session may be claimed (`warden_cluster`'s
/// `RELEASED`; a test checks that they match).
pub const RELEASED_CHANNEL: &str = "warden_released";

impl PgDb {
    /// Every stored record of the cluster, ordered by token.
    pub async fn load_records(&self) -> Result<Vec<(String, String)>, DbError> {
        self.answered(
            false,
            self.of_writes().read(|conn| {
                let (client, statement) =
                    conn.prepared("SELECT token, record FROM warden_record ORDER BY token")?;
                let rows = client.query(&statement, &[]).map_err(pg_error)?;
                Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
            }),
        )
        .await
    }

    /// The stored record of `token`, if it has one.
    pub async fn load_record(&self, token: &str) -> Result<Option<String>, DbError> {
        let token = token.to_owned();
        self.answered(
            false,
            self.of_writes().read(move |conn| {
                let (client, statement) =
                    conn.prepared("SELECT record FROM warden_record WHERE token = $1")?;
                let rows = client.query(&statement, &[&token]).map_err(pg_error)?;
                Ok(rows.first().map(|r| r.get(0)))
            }),
        )
        .await
    }

    /// Adds session `token` with its record `text`, and its lease row (unowned, so any node
    /// may claim it), in one commit. Returns false, and keeps the record there, when the
    /// session has one already (created by another caller, on any node); its lease row is
    /// made again if it was missing.
    pub async fn create_session(&self, token: &str, text: &str) -> Result<bool, DbError> {
        let (token, text) = (token.to_owned(), text.to_owned());
        self.answered(
            true,
            self.of_writes().call(move |conn| {
                let (client, statement) = conn.prepared(
                    "INSERT INTO warden_record (token, record) VALUES ($1, $2) \
                     ON CONFLICT (token) DO NOTHING",
                )?;
                let created = client
                    .execute(&statement, &[&token, &text])
                    .map_err(pg_error)?
                    == 1;
                // The lease row, whether the record is new or not: a session whose row went
                // (removed by the cluster's own tools) can be claimed again.
                let (client, statement) = conn.prepared(
                    "WITH added AS (INSERT INTO warden_session (token) VALUES ($1) \
                     ON CONFLICT DO NOTHING RETURNING 1) \
                     SELECT pg_notify($2, '') FROM added",
                )?;
                client
                    .query(&statement, &[&token, &RELEASED_CHANNEL])
                    .map_err(pg_error)?;
                Ok(created)
            }),
        )
        .await
    }

    /// Applies the record changes, then the journal changes, in one transaction: all are
    /// kept, or none. Returns the number of the last journal entry appended.
    ///
    /// Every session the changes touch (a record put or removed, an entry appended) must be
    /// in `fences`, and still held under its fence: the session's lease row is held shared
    /// until the commit, so a claim waits for it. Otherwise nothing is kept:
    /// [`DbError::StaleFence`] (another node owns it now, or it was removed) or
    /// [`DbError::NotHeld`] (the caller gave no fence for it). Removing a session takes its record,
    /// credentials, keys, outbox, journal and lease row; its removal's own entries, appended in
    /// the same commit, stay (a later commit cannot write of it: its lease row is gone). A prune of the journal needs no fence.
    pub async fn commit(
        &self,
        fences: HashMap<String, Fence>,
        changes: Vec<RecordChange>,
        journal: Vec<JournalChange>,
    ) -> Result<Option<i64>, DbError> {
        self.answered(
            true,
            self.of_writes().call(move |conn| {
                for token in touched(&changes, &journal) {
                    let fence = fences
                        .get(token)
                        .ok_or_else(|| DbError::NotHeld(token.to_owned()))?;
                    kv::check_fence(conn, token, fence)?;
                }
                for change in &changes {
                    apply(conn, change)?;
                }
                let mut last = None;
                for change in &journal {
                    last = super::journal::apply(conn, change)?.or(last);
                }
                Ok(last)
            }),
        )
        .await
    }
}

/// Every session `changes` and `journal` write, each once, in a fixed order (so that two
/// commits lock the same rows in the same order).
fn touched<'a>(changes: &'a [RecordChange], journal: &'a [JournalChange]) -> BTreeSet<&'a str> {
    let records = changes.iter().map(RecordChange::token);
    records
        .chain(journal.iter().filter_map(JournalChange::token))
        .collect()
}

fn apply(conn: &mut PgConn, change: &RecordChange) -> Result<(), DbError> {
    match change {
        RecordChange::Put { token, text } => {
            let (client, statement) = conn.prepared(
                "INSERT INTO warden_record (token, record) VALUES ($1, $2) \
                 ON CONFLICT (token) DO UPDATE SET record = excluded.record",
            )?;
            client
                .execute(&statement, &[token, text])
                .map_err(pg_error)?;
        }
        RecordChange::Remove { token } => {
            // The lease row first: its exclusive lock waits for every key write in flight
            // (each holds it shared until its commit) and refuses every later one, so the keys
            // deleted next are all there will ever be.
            execute_each(
                conn,
                &[
                    "DELETE FROM warden_session WHERE token = $1",
                    "DELETE FROM warden_record WHERE token = $1",
                ],
                token,
            )?;
            if let Some(device) = find(conn, token)? {
                delete_device_rows(conn, device)?;
            }
            super::journal::delete_session_rows(conn, token)?;
            super::outbox::delete_session_rows(conn, token)?;
        }
    }
    Ok(())
}
