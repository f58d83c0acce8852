//! Session records: what the supervisor persists about each session (its name, desired state,
//! last state, counters), as text it encodes itself, one row per token.

use rusqlite::{Connection, OptionalExtension, params};

use crate::Db;
use crate::error::DbError;
use crate::journal::JournalChange;

/// One change to the records, applied with others in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordChange {
    /// Writes (or replaces) the record of `token`.
    Put {
        /// The session.
        token: String,
        /// The encoded record.
        text: String,
    },
    /// Removes the session: its record, its credentials, all its keys, its outbox, its journal
    /// and the webhooks' progress and dead letters for it.
    Remove {
        /// The session.
        token: String,
    },
}

impl RecordChange {
    /// The session it changes.
    pub fn token(&self) -> &str {
        match self {
            RecordChange::Put { token, .. } | RecordChange::Remove { token } => token,
        }
    }
}

impl Db {
    /// Every stored record, ordered by token.
    pub async fn load_records(&self) -> Result<Vec<(String, String)>, DbError> {
        self.queue.call(|conn| read_records(conn)).await
    }

    /// The stored record of `token`, if it has one.
    pub async fn load_record(&self, token: &str) -> Result<Option<String>, DbError> {
        let token = token.to_owned();
        self.queue
            .read(move |conn| {
                Ok(conn
                    .prepare_cached("SELECT record FROM session_records WHERE token = ?1")?
                    .query_row([token], |row| row.get(0))
                    .optional()?)
            })
            .await
    }

    /// Applies `changes` in order, in one transaction: all are kept, or none.
    pub async fn write_records(&self, changes: Vec<RecordChange>) -> Result<(), DbError> {
        self.commit(changes, Vec::new()).await.map(|_| ())
    }

    /// Applies the record changes, then the journal changes, in one transaction: all are
    /// kept, or none. Returns the number of the last journal entry appended.
    pub async fn commit(
        &self,
        changes: Vec<RecordChange>,
        journal: Vec<JournalChange>,
    ) -> Result<Option<i64>, DbError> {
        self.queue
            .call(move |conn| {
                for change in &changes {
                    match change {
                        RecordChange::Put { token, text } => {
                            conn.execute(
                                "INSERT INTO session_records (token, record) VALUES (?1, ?2)
                                 ON CONFLICT (token) DO UPDATE SET record = excluded.record",
                                params![token, text],
                            )?;
                        }
                        RecordChange::Remove { token } => {
                            conn.execute("DELETE FROM session_records WHERE token = ?1", [token])?;
                            crate::devices::delete_device_rows(conn, token)?;
                            crate::outbox::delete_session_rows(conn, token)?;
                            crate::journal::delete_session_rows(conn, token)?;
                        }
                    }
                }
                let mut last = None;
                for change in &journal {
                    last = crate::journal::apply(conn, change)?.or(last);
                }
                Ok(last)
            })
            .await
    }

    /// Stores `text` as `token`'s record unless one is there already (an import never
    /// overwrites what the database holds). Returns whether it was written.
    pub async fn import_record(&self, token: &str, text: &str) -> Result<bool, DbError> {
        let (token, text) = (token.to_owned(), text.to_owned());
        self.queue
            .call(move |conn| {
                let n = conn.execute(
                    "INSERT INTO session_records (token, record) VALUES (?1, ?2)
                     ON CONFLICT (token) DO NOTHING",
                    params![token, text],
                )?;
                Ok(n == 1)
            })
            .await
    }
}

fn read_records(conn: &Connection) -> Result<Vec<(String, String)>, DbError> {
    let mut statement =
        conn.prepare_cached("SELECT token, record FROM session_records ORDER BY token")?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
