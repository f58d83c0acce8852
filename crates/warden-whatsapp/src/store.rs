//! [`SessionStore`]: a session's SQLite store behind a switch, so the link can let go of it.
//!
//! wa-rs's `PersistenceManager` starts a background saver task that never ends and keeps its
//! storage backend alive (wa-rs-notes §0.6): without this wrapper, every session ever built
//! would keep its SQLite pool (3 OS threads, 2 connections, 4 file descriptors) until the
//! process exits. [`SessionStore::detach`] drops the pool; later calls fail with
//! [`StoreError::Connection`]. All other calls go straight to the [`SqliteStore`].

use std::path::Path;
use std::sync::{Arc, RwLock, Weak};

use async_trait::async_trait;
use wa_rs::Jid;
use wa_rs::store::SqliteStore;
use wa_rs_core::appstate::hash::HashState;
use wa_rs_core::appstate::processor::AppStateMutationMAC;
use wa_rs_core::store::error::{Result, StoreError};
use wa_rs_core::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceListRecord, DeviceStore, LidPnMappingEntry, ProtocolStore,
    SignalStore, TcTokenEntry,
};

/// A session's store; see the module docs.
pub struct SessionStore {
    inner: RwLock<Option<Arc<SqliteStore>>>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("attached", &self.is_attached())
            .finish()
    }
}

impl SessionStore {
    /// Opens (or creates) the SQLite database at `path`. `SqliteStore::new` builds its pool
    /// synchronously (waiting up to r2d2's 30 s for connections), so it runs on a blocking
    /// thread rather than on an async worker.
    pub async fn open(path: &Path) -> Result<Self> {
        let url = path
            .to_str()
            .ok_or_else(|| StoreError::Connection(format!("not UTF-8: {}", path.display())))?
            .to_owned();
        let runtime = tokio::runtime::Handle::current();
        let store = tokio::task::spawn_blocking(move || runtime.block_on(SqliteStore::new(&url)))
            .await
            .map_err(|e| StoreError::Connection(format!("opening the store: {e}")))??;
        Ok(Self {
            inner: RwLock::new(Some(Arc::new(store))),
        })
    }

    fn get(&self) -> Result<Arc<SqliteStore>> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Connection("the session store was closed".into()))
    }

    /// Whether the database is still attached.
    pub fn is_attached(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Lets go of the database. Returns a handle that tells when the last call in flight has
    /// finished with it (then its pool, threads and files are closed).
    pub fn detach(&self) -> Weak<SqliteStore> {
        let store = self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
        store.as_ref().map(Arc::downgrade).unwrap_or_default()
    }
}

impl Drop for SessionStore {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Implements a storage trait by forwarding every method to the attached store.
macro_rules! forward {
    ($trait:ident { $( fn $name:ident(&self $(, $arg:ident : $ty:ty)* ) -> $ret:ty; )* }) => {
        #[async_trait]
        impl $trait for SessionStore {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    self.get()?.$name($($arg),*).await
                }
            )*
        }
    };
}

forward! {
    SignalStore {
        fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()>;
        fn load_identity(&self, address: &str) -> Result<Option<Vec<u8>>>;
        fn delete_identity(&self, address: &str) -> Result<()>;
        fn get_session(&self, address: &str) -> Result<Option<Vec<u8>>>;
        fn put_session(&self, address: &str, session: &[u8]) -> Result<()>;
        fn delete_session(&self, address: &str) -> Result<()>;
        fn has_session(&self, address: &str) -> Result<bool>;
        fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()>;
        fn load_prekey(&self, id: u32) -> Result<Option<Vec<u8>>>;
        fn remove_prekey(&self, id: u32) -> Result<()>;
        fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()>;
        fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>>;
        fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>>;
        fn remove_signed_prekey(&self, id: u32) -> Result<()>;
        fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()>;
        fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>>;
        fn delete_sender_key(&self, address: &str) -> Result<()>;
    }
}

forward! {
    AppSyncStore {
        fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>>;
        fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()>;
        fn get_version(&self, name: &str) -> Result<HashState>;
        fn set_version(&self, name: &str, state: HashState) -> Result<()>;
        fn put_mutation_macs(&self, name: &str, version: u64, mutations: &[AppStateMutationMAC]) -> Result<()>;
        fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>>;
        fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()>;
    }
}

forward! {
    ProtocolStore {
        fn get_skdm_recipients(&self, group_jid: &str) -> Result<Vec<Jid>>;
        fn add_skdm_recipients(&self, group_jid: &str, device_jids: &[Jid]) -> Result<()>;
        fn clear_skdm_recipients(&self, group_jid: &str) -> Result<()>;
        fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>>;
        fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>>;
        fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()>;
        fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>>;
        fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()>;
        fn has_same_base_key(&self, address: &str, message_id: &str, current_base_key: &[u8]) -> Result<bool>;
        fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()>;
        fn update_device_list(&self, record: DeviceListRecord) -> Result<()>;
        fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>>;
        fn mark_forget_sender_key(&self, group_jid: &str, participant: &str) -> Result<()>;
        fn consume_forget_marks(&self, group_jid: &str) -> Result<Vec<String>>;
        fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>>;
        fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()>;
        fn delete_tc_token(&self, jid: &str) -> Result<()>;
        fn get_all_tc_token_jids(&self) -> Result<Vec<String>>;
        fn delete_expired_tc_tokens(&self, cutoff_timestamp: i64) -> Result<u32>;
    }
}

forward! {
    DeviceStore {
        fn save(&self, device: &wa_rs_core::store::Device) -> Result<()>;
        fn load(&self) -> Result<Option<wa_rs_core::store::Device>>;
        fn exists(&self) -> Result<bool>;
        fn create(&self) -> Result<i32>;
        fn snapshot_db(&self, name: &str, extra_content: Option<&[u8]>) -> Result<()>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detaching_closes_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("session.db"))
            .await
            .unwrap();
        assert!(!store.exists().await.unwrap());
        store.create().await.unwrap();
        assert!(store.exists().await.unwrap());
        let weak = store.detach();
        assert!(weak.upgrade().is_none(), "no call in flight keeps it");
        assert!(matches!(
            store.exists().await,
            Err(StoreError::Connection(_))
        ));
        assert!(!store.is_attached());
    }
}
