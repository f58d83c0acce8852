//! The tables, and how the connection is prepared.
//!
//! The SQL is kept portable (plain types, no SQLite-only functions in queries) so a PostgreSQL
//! implementation of the same store can follow; `WITHOUT ROWID` and the pragmas are SQLite's
//! own and live only here.

use rusqlite::Connection;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 1;

/// Every table. Each row belongs to one session: `session_records` by token, `devices` by
/// token (one row per set of credentials, with an id that is never reused), `kv` by device id,
/// `outbox` by token (its messages to send, in `seq` order), `journal` by token (what happened
/// to it, see [`crate::journal`]); `webhooks`, `webhook_cursors` and `webhook_dead` are each
/// webhook's start, progress per session and given-up events; `session_webhooks` the
/// webhooks set for one session through the API. A database of an earlier build
/// gains the tables it lacks when it is opened.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS session_records (
    token TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE,
    device BLOB
);
CREATE TABLE IF NOT EXISTS kv (
    device_id INTEGER NOT NULL,
    ns INTEGER NOT NULL,
    k BLOB NOT NULL,
    v BLOB NOT NULL,
    PRIMARY KEY (device_id, ns, k)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL,
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    code INTEGER,
    attempts INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    UNIQUE (token, key),
    UNIQUE (token, id)
);
CREATE INDEX IF NOT EXISTS outbox_by_status ON outbox (token, status, seq);
CREATE INDEX IF NOT EXISTS outbox_by_expiry ON outbox (status, expires_at);
CREATE INDEX IF NOT EXISTS outbox_by_chat ON outbox (token, recipient, status);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    first_at INTEGER NOT NULL,
    at INTEGER NOT NULL,
    repeats INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_by_session ON journal (token, seq);
CREATE INDEX IF NOT EXISTS journal_by_time ON journal (at);
CREATE TABLE IF NOT EXISTS webhooks (
    hook TEXT PRIMARY KEY,
    start INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS session_webhooks (
    hook TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_cursors (
    hook TEXT NOT NULL,
    token TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (hook, token)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhook_dead (
    hook TEXT NOT NULL,
    seq INTEGER NOT NULL,
    token TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at INTEGER NOT NULL,
    PRIMARY KEY (hook, seq)
);
";

/// Prepares a freshly opened connection: WAL, full fsync at commit (a reply means the change
/// survives a kill -9 and a power loss), private keys overwritten when deleted, exclusive
/// locking (no `-shm` file, and a second process cannot open the database).
pub(crate) fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(200))?;
    conn.execute_batch(
        "PRAGMA locking_mode = EXCLUSIVE;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA secure_delete = ON;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -8192;",
    )?;
    // The exclusive lock is taken by the first write; take it now, so a second daemon is
    // refused at open rather than at its first write.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    conn.execute_batch(TABLES)?;
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('schema_version', ?1)
         ON CONFLICT (name) DO NOTHING",
        [SCHEMA_VERSION.to_string()],
    )?;
    conn.execute_batch("COMMIT")?;
    Ok(())
}
