//! One PostgreSQL device's keys, in the owner thread's transaction. The first write of a
//! transaction checks that the device still exists and that the writer still holds its
//! session under its fence, holding the session's row shared until the commit.

use postgres::types::ToSql;

use super::Fence;
use super::conn::{PgConn, pg_error};
use crate::devices::DeviceId;
use crate::error::DbError;
use crate::kv::{Entries, KvOps};

/// [`KvOps`] on PostgreSQL.
pub(crate) struct PgKv<'c> {
    pub(crate) conn: &'c mut PgConn,
    pub(crate) device: DeviceId,
    pub(crate) fence: Fence,
    /// The checks passed in this transaction (writes may proceed).
    pub(crate) checked: bool,
}

impl PgKv<'_> {
    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, DbError> {
        let (client, statement) = self.conn.prepared(sql)?;
        client.query(&statement, params).map_err(pg_error)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DbError> {
        let (client, statement) = self.conn.prepared(sql)?;
        client.execute(&statement, params).map_err(pg_error)
    }

    fn check_writable(&mut self) -> Result<(), DbError> {
        if self.checked {
            return Ok(());
        }
        let device = self.device.0;
        let fence = &self.fence;
        // The common case in one round trip: the device exists and its session is the
        // writer's under this fence (the session's row held shared until the commit).
        let (client, statement) = self.conn.prepared(
            "SELECT 1 FROM warden_device d JOIN warden_session s ON s.token = d.token \
             WHERE d.id = $1 AND s.fence = $2 AND s.owner_node = $3 AND s.owner_inc = $4 \
             FOR SHARE OF s",
        )?;
        let held = client
            .query(
                &statement,
                &[&device, &fence.fence, &fence.node, &fence.incarnation],
            )
            .map_err(pg_error)?;
        if held.is_empty() {
            // Refused: say why.
            let rows = self.query("SELECT token FROM warden_device WHERE id = $1", &[&device])?;
            return Err(match rows.first() {
                None => DbError::Closed,
                Some(row) => DbError::StaleFence {
                    token: row.get(0),
                    fence: self.fence.fence,
                },
            });
        }
        self.checked = true;
        Ok(())
    }

    fn entries(rows: Vec<postgres::Row>) -> Entries {
        rows.into_iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}

/// Checks, in the transaction in progress, that `fence`'s writer still holds `token` under
/// it, and holds the session's row shared until the commit: a claim by another node waits for
/// this write, and every write under the old fence after it is refused
/// ([`DbError::StaleFence`]). The same check as `warden_cluster::check_fence`.
pub(crate) fn check_fence(conn: &mut PgConn, token: &str, fence: &Fence) -> Result<(), DbError> {
    let (client, statement) = conn.prepared(
        "SELECT 1 FROM warden_session WHERE token = $1 AND fence = $2 \
         AND owner_node = $3 AND owner_inc = $4 FOR SHARE",
    )?;
    let rows = client
        .query(
            &statement,
            &[&token, &fence.fence, &fence.node, &fence.incarnation],
        )
        .map_err(pg_error)?;
    if rows.is_empty() {
        return Err(DbError::StaleFence {
            token: token.to_owned(),
            fence: fence.fence,
        });
    }
    Ok(())
}

impl KvOps for PgKv<'_> {
    fn device_blob(&mut self) -> Result<Option<Vec<u8>>, DbError> {
        let device = self.device.0;
        let rows = self.query("SELECT device FROM warden_device WHERE id = $1", &[&device])?;
        Ok(rows.first().and_then(|r| r.get(0)))
    }

    fn set_device_blob(&mut self, blob: &[u8]) -> Result<(), DbError> {
        let device = self.device.0;
        self.check_writable()?;
        self.execute(
            "UPDATE warden_device SET device = $2 WHERE id = $1",
            &[&device, &blob],
        )?;
        Ok(())
    }

    fn get(&mut self, ns: u16, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        let device = self.device.0;
        let rows = self.query(
            "SELECT v FROM warden_kv WHERE device_id = $1 AND ns = $2 AND k = $3",
            &[&device, &i32::from(ns), &key],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn contains(&mut self, ns: u16, key: &[u8]) -> Result<bool, DbError> {
        let device = self.device.0;
        let rows = self.query(
            "SELECT 1 FROM warden_kv WHERE device_id = $1 AND ns = $2 AND k = $3",
            &[&device, &i32::from(ns), &key],
        )?;
        Ok(!rows.is_empty())
    }

    fn put(&mut self, ns: u16, key: &[u8], value: &[u8]) -> Result<(), DbError> {
        let device = self.device.0;
        self.check_writable()?;
        self.execute(
            "INSERT INTO warden_kv (device_id, ns, k, v) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (device_id, ns, k) DO UPDATE SET v = excluded.v",
            &[&device, &i32::from(ns), &key, &value],
        )?;
        Ok(())
    }

    fn delete(&mut self, ns: u16, key: &[u8]) -> Result<bool, DbError> {
        let device = self.device.0;
        self.check_writable()?;
        let n = self.execute(
            "DELETE FROM warden_kv WHERE device_id = $1 AND ns = $2 AND k = $3",
            &[&device, &i32::from(ns), &key],
        )?;
        Ok(n > 0)
    }

    fn list(&mut self, ns: u16) -> Result<Entries, DbError> {
        let device = self.device.0;
        let rows = self.query(
            "SELECT k, v FROM warden_kv WHERE device_id = $1 AND ns = $2 ORDER BY k",
            &[&device, &i32::from(ns)],
        )?;
        Ok(Self::entries(rows))
    }

    fn list_range(&mut self, ns: u16, from: &[u8], to: Option<&[u8]>) -> Result<Entries, DbError> {
        let device = self.device.0;
        let rows = self.query(
            "SELECT k, v FROM warden_kv WHERE device_id = $1 AND ns = $2 AND k >= $3 \
             AND ($4::bytea IS NULL OR k < $4) ORDER BY k",
            &[&device, &i32::from(ns), &from, &to],
        )?;
        Ok(Self::entries(rows))
    }

    fn delete_range(&mut self, ns: u16, from: &[u8], to: Option<&[u8]>) -> Result<usize, DbError> {
        let device = self.device.0;
        self.check_writable()?;
        let n = self.execute(
            "DELETE FROM warden_kv WHERE device_id = $1 AND ns = $2 AND k >= $3 \
             AND ($4::bytea IS NULL OR k < $4)",
            &[&device, &i32::from(ns), &from, &to],
        )?;
        Ok(n as usize)
    }
}
