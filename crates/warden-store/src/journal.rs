//! The event journal: what happened to each session, one row per entry, and the webhooks'
//! delivery state (where each one got to, and what it gave up on).
//!
//! - **Sequence numbers.** `seq` is one counter for the whole database (`AUTOINCREMENT`: a
//!   number is never used twice, even after deletions), so it increases within each session
//!   and names an entry uniquely: webhook event ids are made from it.
//! - **Storms collapse.** An entry with a `key` replaces an entry with the same key among its
//!   session's last [`COLLAPSE_WINDOW`] entries: the old row goes, the new one takes the next
//!   number and carries `repeats` + 1 and the first occurrence's time. A reconnect loop is
//!   then a handful of rows with counts, in the order they last happened.
//! - **Bounded.** Each append keeps its session's newest `keep` entries; [`JournalChange::Prune`]
//!   removes entries older than a cutoff.
//!
//! The store knows rows, not meanings: the caller (warden-core's journal) decides kinds, keys
//! and the JSON in `data`.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::Db;
use crate::error::DbError;

/// How many of a session's newest entries an entry with a key may collapse into.
pub const COLLAPSE_WINDOW: i64 = 8;

/// One entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJournalEntry {
    /// The session.
    pub token: String,
    /// What happened (`session.status`, `message`...).
    pub kind: String,
    /// Entries with the same non-empty key collapse into one (see the module docs); empty:
    /// never collapses.
    pub key: String,
    /// The entry's JSON.
    pub data: String,
    /// When it happened (Unix milliseconds).
    pub at: i64,
    /// How many of the session's newest entries to keep.
    pub keep: u32,
}

/// A change to the journal, applied with the record changes of the same commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalChange {
    /// Appends one entry.
    Append(NewJournalEntry),
    /// Removes every entry older than `before` (Unix milliseconds).
    Prune {
        /// The cutoff.
        before: i64,
    },
}

impl JournalChange {
    /// The session an append writes; `None` for a prune, which writes every session's.
    pub fn token(&self) -> Option<&str> {
        match self {
            JournalChange::Append(new) => Some(&new.token),
            JournalChange::Prune { .. } => None,
        }
    }
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Its number: unique, and increasing within the session.
    pub seq: i64,
    /// The session.
    pub token: String,
    /// What happened.
    pub kind: String,
    /// The entry's JSON.
    pub data: String,
    /// When it first happened (Unix milliseconds).
    pub first_at: i64,
    /// When it last happened (Unix milliseconds).
    pub at: i64,
    /// How many times it happened.
    pub repeats: u32,
}

/// An event a webhook gave up on, with the body it would have sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The webhook.
    pub hook: String,
    /// The journal entry it came from.
    pub seq: i64,
    /// The session.
    pub token: String,
    /// The event's kind.
    pub kind: String,
    /// The body that was sent.
    pub body: String,
    /// Why delivery stopped.
    pub reason: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was given up on (Unix milliseconds).
    pub failed_at: i64,
}

const COLUMNS: &str = "seq, token, kind, data, first_at, at, repeats";

fn entry(row: &Row<'_>) -> rusqlite::Result<JournalEntry> {
    Ok(JournalEntry {
        seq: row.get(0)?,
        token: row.get(1)?,
        kind: row.get(2)?,
        data: row.get(3)?,
        first_at: row.get(4)?,
        at: row.get(5)?,
        repeats: row.get(6)?,
    })
}

/// The entries `sql` selects (its columns are [`COLUMNS`], in that order).
fn select(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<JournalEntry>> {
    conn.prepare_cached(sql)?
        .query_map(params, entry)?
        .collect()
}

/// Applies one change inside the caller's transaction; returns the appended entry's number.
pub(crate) fn apply(conn: &Connection, change: &JournalChange) -> Result<Option<i64>, DbError> {
    match change {
        JournalChange::Append(new) => append(conn, new).map(Some),
        JournalChange::Prune { before } => {
            conn.execute("DELETE FROM journal WHERE at < ?1", [before])?;
            Ok(None)
        }
    }
}

fn append(conn: &Connection, new: &NewJournalEntry) -> Result<i64, DbError> {
    let mut first_at = new.at;
    let mut repeats = 1u32;
    if !new.key.is_empty() {
        let previous = conn
            .prepare_cached(
                "SELECT seq, first_at, repeats FROM
                   (SELECT seq, key, first_at, repeats FROM journal WHERE token = ?1
                    ORDER BY seq DESC LIMIT ?2)
                 WHERE key = ?3 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![new.token, COLLAPSE_WINDOW, new.key], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, u32>(2)?,
                ))
            })
            .optional()?;
        if let Some((seq, first, count)) = previous {
            conn.execute("DELETE FROM journal WHERE seq = ?1", [seq])?;
            first_at = first;
            repeats = count.saturating_add(1);
        }
    }
    conn.prepare_cached(
        "INSERT INTO journal (token, kind, key, data, first_at, at, repeats)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        new.token, new.kind, new.key, new.data, first_at, new.at, repeats
    ])?;
    let seq = conn.last_insert_rowid();
    conn.prepare_cached(
        "DELETE FROM journal WHERE token = ?1 AND seq <=
           (SELECT seq FROM journal WHERE token = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![new.token, new.keep.max(1)])?;
    Ok(seq)
}

/// Removes a session's entries (its removal's own entry, appended after, stays).
pub(crate) fn delete_session_rows(conn: &Connection, token: &str) -> Result<(), DbError> {
    conn.execute("DELETE FROM journal WHERE token = ?1", [token])?;
    conn.execute("DELETE FROM webhook_cursors WHERE token = ?1", [token])?;
    conn.execute("DELETE FROM webhook_dead WHERE token = ?1", [token])?;
    // The session's own webhooks stop being started; each, still running, sends the
    // deletion and then removes the rest of itself (`remove_session_webhook`).
    conn.execute("DELETE FROM session_webhooks WHERE token = ?1", [token])?;
    Ok(())
}

impl Db {
    /// Applies journal changes alone, in one transaction; returns the last appended number.
    pub async fn write_journal(&self, changes: Vec<JournalChange>) -> Result<Option<i64>, DbError> {
        self.queue
            .call(move |conn| {
                let mut last = None;
                for change in &changes {
                    last = apply(conn, change)?.or(last);
                }
                Ok(last)
            })
            .await
    }

    /// Entries after `after`, oldest first, at most `limit`: one session's, or (`None`)
    /// everyone's.
    pub async fn read_journal(
        &self,
        token: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, DbError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.queue
            .read(move |conn| {
                Ok(match &token {
                    Some(token) => select(
                        conn,
                        &format!(
                            "SELECT {COLUMNS} FROM journal WHERE token = ?1 AND seq > ?2
                             ORDER BY seq LIMIT ?3"
                        ),
                        params![token, after, limit],
                    )?,
                    None => select(
                        conn,
                        &format!(
                            "SELECT {COLUMNS} FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                        ),
                        params![after, limit],
                    )?,
                })
            })
            .await
    }

    /// One session's newest `limit` entries, oldest first.
    pub async fn journal_tail(
        &self,
        token: String,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, DbError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.queue
            .read(move |conn| {
                let mut rows = select(
                    conn,
                    &format!(
                        "SELECT {COLUMNS} FROM journal WHERE token = ?1 ORDER BY seq DESC LIMIT ?2"
                    ),
                    params![token, limit],
                )?;
                rows.reverse();
                Ok(rows)
            })
            .await
    }

    /// The highest entry number ever given (0 when none).
    pub async fn journal_head(&self) -> Result<i64, DbError> {
        self.queue.read(|conn| head(conn)).await
    }

    /// Registers webhook `hook` if it is new, starting it at the current head (it sends what
    /// happens from now on), and returns where it starts.
    pub async fn webhook_register(&self, hook: String) -> Result<i64, DbError> {
        self.queue
            .call(move |conn| {
                let now = head(conn)?;
                conn.execute(
                    "INSERT INTO webhooks (hook, start) VALUES (?1, ?2)
                     ON CONFLICT (hook) DO NOTHING",
                    params![hook, now],
                )?;
                Ok(
                    conn.query_row("SELECT start FROM webhooks WHERE hook = ?1", [&hook], |r| {
                        r.get(0)
                    })?,
                )
            })
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.queue
            .read(move |conn| {
                Ok(select(
                    conn,
                    "SELECT j.seq, j.token, j.kind, j.data, j.first_at, j.at, j.repeats
                     FROM journal j
                     JOIN webhooks w ON w.hook = ?1
                     LEFT JOIN webhook_cursors c ON c.hook = ?1 AND c.token = j.token
                     WHERE j.seq > ?2 AND j.seq > w.start AND j.seq > COALESCE(c.seq, 0)
                       AND (?4 IS NULL OR j.token = ?4)
                     ORDER BY j.seq LIMIT ?3",
                    params![hook, after, limit, only],
                )?)
            })
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

    /// [`Db::webhook_advance`] for several sessions' entries at once, in one commit.
    pub async fn webhook_advance_all(
        &self,
        hook: String,
        done: Vec<(String, i64, Option<DeadLetter>)>,
    ) -> Result<(), DbError> {
        self.queue
            .call(move |conn| {
                for (token, seq, dead) in done {
                    conn.prepare_cached(
                        "INSERT INTO webhook_cursors (hook, token, seq) VALUES (?1, ?2, ?3)
                         ON CONFLICT (hook, token) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                    )?
                    .execute(params![hook, token, seq])?;
                    if let Some(dead) = dead {
                        conn.prepare_cached(
                            "INSERT INTO webhook_dead
                               (hook, seq, token, kind, body, reason, attempts, failed_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                             ON CONFLICT (hook, seq) DO UPDATE SET reason = excluded.reason,
                               attempts = excluded.attempts, failed_at = excluded.failed_at",
                        )?
                        .execute(params![
                            dead.hook,
                            dead.seq,
                            dead.token,
                            dead.kind,
                            dead.body,
                            dead.reason,
                            dead.attempts,
                            dead.failed_at
                        ])?;
                    }
                }
                Ok(())
            })
            .await
    }

    /// Moves webhook `hook`'s cursor for every session back to just before `from`: a replay.
    /// Entries still in the journal from `from` on are sent again.
    pub async fn webhook_rewind(&self, hook: String, from: i64) -> Result<(), DbError> {
        self.queue
            .call(move |conn| {
                let known: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM webhooks WHERE hook = ?1",
                    [&hook],
                    |r| r.get(0),
                )?;
                if known == 0 {
                    return Err(DbError::Corrupt(format!("no webhook {hook}")));
                }
                let to = from.saturating_sub(1).max(0);
                conn.execute(
                    "UPDATE webhooks SET start = MIN(start, ?2) WHERE hook = ?1",
                    params![hook, to],
                )?;
                conn.execute(
                    "UPDATE webhook_cursors SET seq = MIN(seq, ?2) WHERE hook = ?1",
                    params![hook, to],
                )?;
                Ok(())
            })
            .await
    }

    /// Webhook `hook`'s dead letters (every webhook's with `None`), oldest first, at most
    /// `limit`.
    pub async fn dead_letters(
        &self,
        hook: Option<String>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DbError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.queue
            .read(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT hook, seq, token, kind, body, reason, attempts, failed_at
                         FROM webhook_dead WHERE ?1 IS NULL OR hook = ?1
                         ORDER BY failed_at, seq LIMIT ?2",
                    )?
                    .query_map(params![hook, limit], |row| {
                        Ok(DeadLetter {
                            hook: row.get(0)?,
                            seq: row.get(1)?,
                            token: row.get(2)?,
                            kind: row.get(3)?,
                            body: row.get(4)?,
                            reason: row.get(5)?,
                            attempts: row.get(6)?,
                            failed_at: row.get(7)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// Removes and returns dead letters of `hook` (all of them, or only entry `seq`): the
    /// caller delivers them again.
    pub async fn take_dead_letters(
        &self,
        hook: String,
        seq: Option<i64>,
    ) -> Result<Vec<DeadLetter>, DbError> {
        let all = self.dead_letters(Some(hook.clone()), usize::MAX).await?;
        let taken: Vec<DeadLetter> = all
            .into_iter()
            .filter(|d| seq.is_none_or(|s| s == d.seq))
            .collect();
        let seqs: Vec<i64> = taken.iter().map(|d| d.seq).collect();
        self.queue
            .call(move |conn| {
                for s in &seqs {
                    conn.execute(
                        "DELETE FROM webhook_dead WHERE hook = ?1 AND seq = ?2",
                        params![hook, s],
                    )?;
                }
                Ok(())
            })
            .await?;
        Ok(taken)
    }

    /// Up to `limit` of `token`'s entries of `kind` before entry `seq`, oldest first.
    pub async fn journal_before(
        &self,
        token: String,
        seq: i64,
        kind: String,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, DbError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.queue
            .read(move |conn| {
                let mut rows = select(
                    conn,
                    &format!(
                        "SELECT {COLUMNS} FROM journal WHERE token = ?1 AND seq < ?2 AND kind = ?3
                         ORDER BY seq DESC LIMIT ?4"
                    ),
                    params![token, seq, kind, limit],
                )?;
                rows.reverse();
                Ok(rows)
            })
            .await
    }

    /// Records that webhook `hook` is done with each session's entries up to its number:
    /// entries it does not want, skipped in one commit.
    pub async fn webhook_skip(
        &self,
        hook: String,
        done: Vec<(String, i64)>,
    ) -> Result<(), DbError> {
        self.queue
            .call(move |conn| {
                let mut statement = conn.prepare_cached(
                    "INSERT INTO webhook_cursors (hook, token, seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT (hook, token) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                )?;
                for (token, seq) in &done {
                    statement.execute(params![hook, token, seq])?;
                }
                Ok(())
            })
            .await
    }

    /// This database's identity: made once (from `candidate`) and kept, so webhook event ids
    /// (`evt_<identity>_<seq>`) never repeat, even for a database made afresh.
    pub async fn identity(&self, candidate: String) -> Result<String, DbError> {
        self.queue
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('identity', ?1)
                     ON CONFLICT (name) DO NOTHING",
                    [&candidate],
                )?;
                Ok(
                    conn.query_row("SELECT value FROM meta WHERE name = 'identity'", [], |r| {
                        r.get(0)
                    })?,
                )
            })
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
        self.queue
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO session_webhooks (hook, token, config) VALUES (?1, ?2, ?3)
                     ON CONFLICT (hook) DO UPDATE SET token = excluded.token, config = excluded.config",
                    params![hook, token, config],
                )?;
                Ok(())
            })
            .await
    }

    /// Removes webhook `hook` of a session, with its progress and dead letters; whether it was
    /// there.
    pub async fn remove_session_webhook(&self, hook: String) -> Result<bool, DbError> {
        self.queue
            .call(move |conn| {
                let n = conn.execute("DELETE FROM session_webhooks WHERE hook = ?1", [&hook])?;
                for table in ["webhooks", "webhook_cursors", "webhook_dead"] {
                    conn.execute(&format!("DELETE FROM {table} WHERE hook = ?1"), [&hook])?;
                }
                Ok(n > 0)
            })
            .await
    }

    /// Every session's webhooks: (hook, token, configuration).
    pub async fn session_webhooks(&self) -> Result<Vec<(String, String, String)>, DbError> {
        self.queue
            .read(|conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT hook, token, config FROM session_webhooks ORDER BY hook",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// How many entries `token` has.
    pub async fn journal_count(&self, token: String) -> Result<usize, DbError> {
        self.queue
            .read(move |conn| {
                let n: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM journal WHERE token = ?1",
                    [token],
                    |r| r.get(0),
                )?;
                Ok(usize::try_from(n).unwrap_or(0))
            })
            .await
    }
}

fn head(conn: &Connection) -> Result<i64, DbError> {
    // The AUTOINCREMENT counter, which survives the deletion of the newest rows.
    Ok(conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'journal'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}
