//! Credentials and keys: one `devices` row per set of credentials of a session (its id is
//! never reused), and a key-value table keyed by that id, split into namespaces the link
//! defines (identities, Signal sessions, pre-keys, ...), read and written through [`Kv`].
//!
//! Deleting a device (logout, delete) removes its row and all its keys in one transaction.
//! Every later write through a [`Kv`] of that id is refused with [`DbError::Closed`], because
//! the row it checks is gone and ids are never reused: a client that still runs somewhere
//! cannot bring keys back.

use rusqlite::{Connection, OptionalExtension, params};

use crate::Db;
use crate::error::DbError;
use crate::kv::{Entries, Kv, KvOps};

/// The id of one set of credentials in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub i64);

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {}", self.0)
    }
}

impl Db {
    /// The device of `token`, made if it has none yet.
    pub async fn open_device(&self, token: &str) -> Result<DeviceId, DbError> {
        let token = token.to_owned();
        self.queue
            .call(move |conn| {
                if let Some(id) = find(conn, &token)? {
                    return Ok(id);
                }
                conn.execute("INSERT INTO devices (token) VALUES (?1)", [&token])?;
                Ok(DeviceId(conn.last_insert_rowid()))
            })
            .await
    }

    /// The device of `token`, if it has one.
    pub async fn find_device(&self, token: &str) -> Result<Option<DeviceId>, DbError> {
        let token = token.to_owned();
        self.queue.call(move |conn| find(conn, &token)).await
    }

    /// Deletes `token`'s credentials and every key, in one transaction. Returns whether there
    /// was anything to delete.
    pub async fn delete_device(&self, token: &str) -> Result<bool, DbError> {
        let token = token.to_owned();
        self.queue
            .call(move |conn| delete_device_rows(conn, &token))
            .await
    }

    /// Runs `work` on `device`'s keys, in one transaction with nothing else of its own.
    pub async fn kv<T, F>(&self, device: DeviceId, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Kv<'_>) -> Result<T, DbError> + Send + 'static,
    {
        self.queue
            .call(move |conn| work(&mut SqliteKv::kv(conn, device)))
            .await
    }

    /// Makes a device for `token` and runs `work` on it in the same transaction: used to
    /// import credentials whole. Refused with `Ok(None)` if `token` already has a device.
    pub async fn import_device<T, F>(&self, token: &str, work: F) -> Result<Option<T>, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Kv<'_>) -> Result<T, DbError> + Send + 'static,
    {
        let token = token.to_owned();
        self.queue
            .call(move |conn| {
                if find(conn, &token)?.is_some() {
                    return Ok(None);
                }
                conn.execute("INSERT INTO devices (token) VALUES (?1)", [&token])?;
                let id = DeviceId(conn.last_insert_rowid());
                work(&mut SqliteKv::kv(conn, id)).map(Some)
            })
            .await
    }

    /// How many rows of any table belong to `token` (its record, device and keys).
    pub async fn rows_of(&self, token: &str) -> Result<u64, DbError> {
        let token = token.to_owned();
        self.queue
            .call(move |conn| {
                let n: i64 = conn.query_row(
                    "SELECT (SELECT COUNT(*) FROM session_records WHERE token = ?1)
                          + (SELECT COUNT(*) FROM devices WHERE token = ?1)
                          + (SELECT COUNT(*) FROM kv WHERE device_id IN
                                (SELECT id FROM devices WHERE token = ?1))",
                    [&token],
                    |row| row.get(0),
                )?;
                Ok(n as u64)
            })
            .await
    }

    /// How many key rows exist for devices that no longer exist (should always be 0).
    pub async fn orphan_rows(&self) -> Result<u64, DbError> {
        self.queue
            .call(|conn| {
                let n: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM kv WHERE device_id NOT IN (SELECT id FROM devices)",
                    [],
                    |row| row.get(0),
                )?;
                Ok(n as u64)
            })
            .await
    }
}

fn find(conn: &Connection, token: &str) -> Result<Option<DeviceId>, DbError> {
    Ok(conn
        .prepare_cached("SELECT id FROM devices WHERE token = ?1")?
        .query_row([token], |row| row.get(0))
        .optional()?
        .map(DeviceId))
}

/// Deletes a token's device row and keys; part of the caller's transaction.
pub(crate) fn delete_device_rows(conn: &Connection, token: &str) -> Result<bool, DbError> {
    let Some(id) = find(conn, token)? else {
        return Ok(false);
    };
    conn.execute("DELETE FROM kv WHERE device_id = ?1", [id.0])?;
    conn.execute("DELETE FROM devices WHERE id = ?1", [id.0])?;
    Ok(true)
}

/// One SQLite device's keys, in the owner thread's transaction.
struct SqliteKv<'c> {
    conn: &'c Connection,
    device: DeviceId,
    /// The device row was seen in this transaction (writes may proceed).
    alive: bool,
}

impl<'c> SqliteKv<'c> {
    fn kv(conn: &'c Connection, device: DeviceId) -> Kv<'c> {
        Kv::new(
            device,
            Self {
                conn,
                device,
                alive: false,
            },
        )
    }

    fn check_alive(&mut self) -> Result<(), DbError> {
        if !self.alive {
            let exists = self
                .conn
                .prepare_cached("SELECT 1 FROM devices WHERE id = ?1")?
                .exists([self.device.0])?;
            if !exists {
                return Err(DbError::Closed);
            }
            self.alive = true;
        }
        Ok(())
    }
}

impl KvOps for SqliteKv<'_> {
    fn device_blob(&mut self) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT device FROM devices WHERE id = ?1")?
            .query_row([self.device.0], |row| row.get::<_, Option<Vec<u8>>>(0))
            .optional()?
            .flatten())
    }

    fn set_device_blob(&mut self, blob: &[u8]) -> Result<(), DbError> {
        self.check_alive()?;
        self.conn
            .prepare_cached("UPDATE devices SET device = ?2 WHERE id = ?1")?
            .execute(params![self.device.0, blob])?;
        Ok(())
    }

    fn get(&mut self, ns: u16, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT v FROM kv WHERE device_id = ?1 AND ns = ?2 AND k = ?3")?
            .query_row(params![self.device.0, ns, key], |row| row.get(0))
            .optional()?)
    }

    fn contains(&mut self, ns: u16, key: &[u8]) -> Result<bool, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM kv WHERE device_id = ?1 AND ns = ?2 AND k = ?3")?
            .exists(params![self.device.0, ns, key])?)
    }

    fn put(&mut self, ns: u16, key: &[u8], value: &[u8]) -> Result<(), DbError> {
        self.check_alive()?;
        self.conn
            .prepare_cached(
                "INSERT INTO kv (device_id, ns, k, v) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (device_id, ns, k) DO UPDATE SET v = excluded.v",
            )?
            .execute(params![self.device.0, ns, key, value])?;
        Ok(())
    }

    fn delete(&mut self, ns: u16, key: &[u8]) -> Result<bool, DbError> {
        self.check_alive()?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM kv WHERE device_id = ?1 AND ns = ?2 AND k = ?3")?
            .execute(params![self.device.0, ns, key])?;
        Ok(n > 0)
    }

    fn list(&mut self, ns: u16) -> Result<Entries, DbError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT k, v FROM kv WHERE device_id = ?1 AND ns = ?2 ORDER BY k")?;
        let rows = statement.query_map(params![self.device.0, ns], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn list_range(&mut self, ns: u16, from: &[u8], to: Option<&[u8]>) -> Result<Entries, DbError> {
        let rows = match to {
            Some(end) => {
                let mut statement = self.conn.prepare_cached(
                    "SELECT k, v FROM kv WHERE device_id = ?1 AND ns = ?2 AND k >= ?3 AND k < ?4
                     ORDER BY k",
                )?;
                statement
                    .query_map(params![self.device.0, ns, from, end], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => {
                let mut statement = self.conn.prepare_cached(
                    "SELECT k, v FROM kv WHERE device_id = ?1 AND ns = ?2 AND k >= ?3 ORDER BY k",
                )?;
                statement
                    .query_map(params![self.device.0, ns, from], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(rows)
    }

    fn delete_range(&mut self, ns: u16, from: &[u8], to: Option<&[u8]>) -> Result<usize, DbError> {
        self.check_alive()?;
        let n = match to {
            Some(end) => self
                .conn
                .prepare_cached(
                    "DELETE FROM kv WHERE device_id = ?1 AND ns = ?2 AND k >= ?3 AND k < ?4",
                )?
                .execute(params![self.device.0, ns, from, end])?,
            None => self
                .conn
                .prepare_cached("DELETE FROM kv WHERE device_id = ?1 AND ns = ?2 AND k >= ?3")?
                .execute(params![self.device.0, ns, from])?,
        };
        Ok(n)
    }
}
