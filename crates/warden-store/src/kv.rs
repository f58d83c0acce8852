//! [`Kv`]: one device's keys inside one transaction, whichever database holds them (SQLite's
//! in `devices.rs`, PostgreSQL's in `pg/kv.rs`). The link's wa-rs store is written on it alone.

use crate::devices::DeviceId;
use crate::error::DbError;

/// Key-value entries of one namespace, ordered by key.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// What a backend does for [`Kv`]. Writes check, once per transaction, that the device may
/// still be written ([`DbError::Closed`] once deleted; in a cluster, [`DbError::StaleFence`]
/// once the session's lease moved on).
pub(crate) trait KvOps {
    fn device_blob(&mut self) -> Result<Option<Vec<u8>>, DbError>;
    fn set_device_blob(&mut self, blob: &[u8]) -> Result<(), DbError>;
    fn get(&mut self, ns: u16, key: &[u8]) -> Result<Option<Vec<u8>>, DbError>;
    fn contains(&mut self, ns: u16, key: &[u8]) -> Result<bool, DbError>;
    fn put(&mut self, ns: u16, key: &[u8], value: &[u8]) -> Result<(), DbError>;
    fn delete(&mut self, ns: u16, key: &[u8]) -> Result<bool, DbError>;
    fn list(&mut self, ns: u16) -> Result<Entries, DbError>;
    /// Entries with `key >= from` and, when given, `key < to`.
    fn list_range(&mut self, ns: u16, from: &[u8], to: Option<&[u8]>) -> Result<Entries, DbError>;
    /// Removes entries with `key >= from` and, when given, `key < to`; returns how many.
    fn delete_range(&mut self, ns: u16, from: &[u8], to: Option<&[u8]>) -> Result<usize, DbError>;
}

/// One device's keys inside a transaction. Reads of a deleted device find nothing; writes to
/// it are refused with [`DbError::Closed`].
pub struct Kv<'c> {
    device: DeviceId,
    ops: Box<dyn KvOps + 'c>,
}

impl<'c> Kv<'c> {
    pub(crate) fn new(device: DeviceId, ops: impl KvOps + 'c) -> Self {
        Self {
            device,
            ops: Box::new(ops),
        }
    }

    /// The device these keys belong to.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The serialized device (credentials), if saved.
    pub fn device_blob(&mut self) -> Result<Option<Vec<u8>>, DbError> {
        self.ops.device_blob()
    }

    /// Saves the serialized device (credentials).
    pub fn set_device_blob(&mut self, blob: &[u8]) -> Result<(), DbError> {
        self.ops.set_device_blob(blob)
    }

    /// The value at `key` in namespace `ns`.
    pub fn get(&mut self, ns: u16, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        self.ops.get(ns, key)
    }

    /// Whether `key` is set in `ns`.
    pub fn contains(&mut self, ns: u16, key: &[u8]) -> Result<bool, DbError> {
        self.ops.contains(ns, key)
    }

    /// Sets `key` in `ns` to `value`.
    pub fn put(&mut self, ns: u16, key: &[u8], value: &[u8]) -> Result<(), DbError> {
        self.ops.put(ns, key, value)
    }

    /// Removes `key` from `ns`; returns whether it was there.
    pub fn delete(&mut self, ns: u16, key: &[u8]) -> Result<bool, DbError> {
        self.ops.delete(ns, key)
    }

    /// Every entry of `ns`, ordered by key.
    pub fn list(&mut self, ns: u16) -> Result<Entries, DbError> {
        self.ops.list(ns)
    }

    /// Every entry of `ns` whose key starts with `prefix`, ordered by key.
    pub fn list_prefix(&mut self, ns: u16, prefix: &[u8]) -> Result<Entries, DbError> {
        let end = prefix_end(prefix);
        self.ops.list_range(ns, prefix, end.as_deref())
    }

    /// Removes every entry of `ns` whose key starts with `prefix`; returns how many.
    pub fn delete_prefix(&mut self, ns: u16, prefix: &[u8]) -> Result<usize, DbError> {
        let end = prefix_end(prefix);
        self.ops.delete_range(ns, prefix, end.as_deref())
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: no such bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_bounds() {
        for (prefix, end) in [
            (&b"ab"[..], Some(b"ac".to_vec())),
            (&b"a\xff"[..], Some(b"b".to_vec())),
            (&b"\xff\xff"[..], None),
            (&b""[..], None),
        ] {
            assert_eq!(prefix_end(prefix), end, "{prefix:?}");
        }
    }
}
