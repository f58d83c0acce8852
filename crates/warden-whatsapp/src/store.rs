//! [`SessionStore`]: one session's wa-rs storage, kept in the shared session database.
//!
//! It implements wa-rs-core's four storage traits over [`warden_store::Kv`]: each logical
//! table of wa-rs's own SQLite store is a namespace ([`ns`]) of the session's device, and every
//! method is one [`warden_store::Db::kv`] call, so one transaction on the database's owner thread (no
//! thread, connection or file per session). The semantics are wa-rs 0.2's `SqliteStore`'s,
//! method by method. Once the session's credentials are deleted ([`warden_store::Db::delete_device`]),
//! reads find nothing and writes fail ([`DbError::Closed`] becomes [`StoreError::Connection`]).
//! On PostgreSQL ([`CredentialsDb::Leased`]), writes also fail once the session's lease moved
//! to another node ([`DbError::StaleFence`], a [`StoreError::Connection`] too).
//!
//! The encoders are shared with [`crate::legacy`], which imports the previous release's
//! per-session files into the same namespaces.

use async_trait::async_trait;
use wa_rs::Jid;
use wa_rs_core::appstate::hash::HashState;
use wa_rs_core::appstate::processor::AppStateMutationMAC;
use wa_rs_core::store::Device;
use wa_rs_core::store::error::{Result, StoreError};
use wa_rs_core::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceListRecord, DeviceStore, LidPnMappingEntry, ProtocolStore,
    SignalStore, TcTokenEntry,
};
use warden_store::{CredentialsDb, DbError, DeviceId, Kv};

/// The namespaces of a session's keys: one per table of wa-rs's SQLite store.
///
/// In key layouts, `lp(s)` is `s`'s length as a big-endian `u32` followed by its UTF-8 bytes
/// (so a compound key can be listed by its first part), `id` is a big-endian `u32`, and a
/// string alone is its UTF-8 bytes. `bincode` is bincode 2's serde encoding with
/// `config::standard()`, as wa-rs uses it.
pub mod ns {
    /// `address` → the 32-byte identity key.
    pub const IDENTITY: u16 = 1;
    /// `address` → the session record.
    pub const SESSION: u16 = 2;
    /// `id` → `uploaded` (one byte, 0 or 1) followed by the pre-key record.
    pub const PREKEY: u16 = 3;
    /// `id` → the signed pre-key record.
    pub const SIGNED_PREKEY: u16 = 4;
    /// `address` → the sender key record.
    pub const SENDER_KEY: u16 = 5;
    /// key id (bytes) → `bincode(AppStateSyncKey)`.
    pub const SYNC_KEY: u16 = 6;
    /// collection name → `bincode(HashState)`.
    pub const APP_STATE_VERSION: u16 = 7;
    /// `lp(name)` + index MAC → version (big-endian `u64`) followed by the value MAC.
    pub const MUTATION_MAC: u16 = 8;
    /// `lp(group_jid)` + device JID → when it was added (big-endian `i64`, Unix seconds).
    pub const SKDM_RECIPIENT: u16 = 9;
    /// LID user → `bincode(LidPnMappingEntry)`.
    pub const LID_MAPPING: u16 = 10;
    /// `lp(phone)` + LID user → the mapping's `updated_at` (big-endian `i64`): the index of
    /// [`LID_MAPPING`] by phone number, kept in the same transactions.
    pub const PN_INDEX: u16 = 11;
    /// `lp(address)` + message id → the base key.
    pub const BASE_KEY: u16 = 12;
    /// user → `serde_json(DeviceListRecord)`.
    pub const DEVICE_LIST: u16 = 13;
    /// `lp(group_jid)` + participant → when it was marked (big-endian `i64`, Unix seconds).
    pub const FORGET_MARK: u16 = 14;
    /// JID → `bincode(TcTokenEntry)`.
    pub const TC_TOKEN: u16 = 15;
}

/// One session's wa-rs storage in the shared database; see the module docs.
#[derive(Debug, Clone)]
pub struct SessionStore {
    db: CredentialsDb,
    device: DeviceId,
}

impl SessionStore {
    /// The store of `device` (made by [`warden_store::Db::open_device`], or [`warden_store::PgDb`]'s) in
    /// `db`: a [`warden_store::Db`], or PostgreSQL under the session's lease.
    pub fn new(db: impl Into<CredentialsDb>, device: DeviceId) -> Self {
        Self {
            db: db.into(),
            device,
        }
    }

    /// The device whose keys this store holds.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Runs `work` on the device's keys in one transaction.
    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Kv<'_>) -> std::result::Result<T, DbError> + Send + 'static,
    {
        self.db.kv(self.device, work).await.map_err(store_error)
    }
}

/// What wa-rs is told when the database fails.
pub(crate) fn store_error(e: DbError) -> StoreError {
    match e {
        DbError::Corrupt(_) => StoreError::Serialization(e.to_string()),
        DbError::Closed
        | DbError::StaleFence { .. }
        | DbError::NotHeld(_)
        | DbError::Unavailable
        | DbError::Open { .. }
        | DbError::InUse { .. } => StoreError::Connection(e.to_string()),
        DbError::Sqlite(_)
        | DbError::Postgres(_)
        | DbError::Unconfirmed(_)
        | DbError::Panicked(_) => StoreError::Database(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Encodings, shared with the legacy import.

fn bincode_encode<T: serde::Serialize>(value: &T) -> std::result::Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
}

fn bincode_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, DbError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| DbError::Corrupt(e.to_string()))
}

fn serialization(e: String) -> StoreError {
    StoreError::Serialization(e)
}

fn corrupt(what: &str) -> DbError {
    DbError::Corrupt(format!("malformed {what}"))
}

/// `lp(first)` + `rest`; see [`ns`].
fn compound_key(first: &str, rest: &[u8]) -> Vec<u8> {
    let mut key = prefix_key(first);
    key.extend_from_slice(rest);
    key
}

/// `lp(first)`: the prefix of every compound key whose first part is `first`.
fn prefix_key(first: &str) -> Vec<u8> {
    let len = u32::try_from(first.len()).unwrap_or(u32::MAX);
    let mut key = Vec::with_capacity(4 + first.len());
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(first.as_bytes());
    key
}

/// The second part of a compound key listed under `prefix`, as text.
fn suffix_text(key: &[u8], prefix_len: usize) -> std::result::Result<String, DbError> {
    key.get(prefix_len..)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .map(str::to_owned)
        .ok_or_else(|| corrupt("compound key"))
}

fn text(key: Vec<u8>) -> std::result::Result<String, DbError> {
    String::from_utf8(key).map_err(|_| corrupt("text key"))
}

fn i64_value(value: &[u8]) -> std::result::Result<i64, DbError> {
    value
        .try_into()
        .map(i64::from_be_bytes)
        .map_err(|_| corrupt("timestamp"))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// The device blob: `bincode(Device)`.
pub(crate) fn encode_device(device: &Device) -> std::result::Result<Vec<u8>, String> {
    bincode_encode(device)
}

/// Decodes a device blob. Like wa-rs's store, the device properties (not serialized) are
/// wa-rs's defaults.
pub(crate) fn decode_device(blob: &[u8]) -> std::result::Result<Device, DbError> {
    let mut device: Device = bincode_decode(blob)?;
    device.device_props = wa_rs_core::store::device::DEVICE_PROPS.clone();
    Ok(device)
}

/// Stores a pre-key record and its `uploaded` flag.
pub(crate) fn put_prekey(
    kv: &mut Kv<'_>,
    id: u32,
    record: &[u8],
    uploaded: bool,
) -> std::result::Result<(), DbError> {
    let mut value = Vec::with_capacity(1 + record.len());
    value.push(u8::from(uploaded));
    value.extend_from_slice(record);
    kv.put(ns::PREKEY, &id.to_be_bytes(), &value)
}

/// Stores one mutation MAC (insert or replace, like wa-rs's upsert).
pub(crate) fn put_mutation_mac(
    kv: &mut Kv<'_>,
    name: &str,
    version: u64,
    index_mac: &[u8],
    value_mac: &[u8],
) -> std::result::Result<(), DbError> {
    let mut value = Vec::with_capacity(8 + value_mac.len());
    value.extend_from_slice(&version.to_be_bytes());
    value.extend_from_slice(value_mac);
    kv.put(ns::MUTATION_MAC, &compound_key(name, index_mac), &value)
}

/// Records that `device_jid` received the group's SKDM; an existing entry is kept as is.
pub(crate) fn add_skdm_recipient(
    kv: &mut Kv<'_>,
    group_jid: &str,
    device_jid: &str,
    created_at: i64,
) -> std::result::Result<(), DbError> {
    let key = compound_key(group_jid, device_jid.as_bytes());
    if !kv.contains(ns::SKDM_RECIPIENT, &key)? {
        kv.put(ns::SKDM_RECIPIENT, &key, &created_at.to_be_bytes())?;
    }
    Ok(())
}

/// Stores a LID-PN mapping, keeping the first `created_at` of an existing one (wa-rs's
/// upsert), and its phone-number index.
pub(crate) fn put_lid_mapping(
    kv: &mut Kv<'_>,
    entry: &LidPnMappingEntry,
) -> std::result::Result<(), DbError> {
    let lid = entry.lid.as_bytes();
    let mut entry = entry.clone();
    if let Some(old) = kv.get(ns::LID_MAPPING, lid)? {
        let old: LidPnMappingEntry = bincode_decode(&old)?;
        entry.created_at = old.created_at;
        if old.phone_number != entry.phone_number {
            kv.delete(ns::PN_INDEX, &compound_key(&old.phone_number, lid))?;
        }
    }
    let value = bincode_encode(&entry).map_err(DbError::Corrupt)?;
    kv.put(ns::LID_MAPPING, lid, &value)?;
    kv.put(
        ns::PN_INDEX,
        &compound_key(&entry.phone_number, lid),
        &entry.updated_at.to_be_bytes(),
    )
}

/// Stores the base key of `(address, message_id)`.
pub(crate) fn put_base_key(
    kv: &mut Kv<'_>,
    address: &str,
    message_id: &str,
    base_key: &[u8],
) -> std::result::Result<(), DbError> {
    kv.put(
        ns::BASE_KEY,
        &compound_key(address, message_id.as_bytes()),
        base_key,
    )
}

/// Marks `participant`'s sender key in the group for regeneration.
pub(crate) fn put_forget_mark(
    kv: &mut Kv<'_>,
    group_jid: &str,
    participant: &str,
    marked_at: i64,
) -> std::result::Result<(), DbError> {
    kv.put(
        ns::FORGET_MARK,
        &compound_key(group_jid, participant.as_bytes()),
        &marked_at.to_be_bytes(),
    )
}

/// The encoded form of a device list record.
pub(crate) fn encode_device_list(
    record: &DeviceListRecord,
) -> std::result::Result<Vec<u8>, String> {
    serde_json::to_vec(record).map_err(|e| e.to_string())
}

/// The encoded form of a tc token entry.
pub(crate) fn encode_tc_token(entry: &TcTokenEntry) -> std::result::Result<Vec<u8>, String> {
    bincode_encode(entry)
}

// ---------------------------------------------------------------------------------------------

#[async_trait]
impl SignalStore for SessionStore {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        let address = address.to_owned();
        self.run(move |kv| kv.put(ns::IDENTITY, address.as_bytes(), &key))
            .await
    }

    async fn load_identity(&self, address: &str) -> Result<Option<Vec<u8>>> {
        let address = address.to_owned();
        self.run(move |kv| kv.get(ns::IDENTITY, address.as_bytes()))
            .await
    }

    async fn delete_identity(&self, address: &str) -> Result<()> {
        let address = address.to_owned();
        self.run(move |kv| kv.delete(ns::IDENTITY, address.as_bytes()).map(drop))
            .await
    }

    async fn get_session(&self, address: &str) -> Result<Option<Vec<u8>>> {
        let address = address.to_owned();
        self.run(move |kv| kv.get(ns::SESSION, address.as_bytes()))
            .await
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        let (address, session) = (address.to_owned(), session.to_vec());
        self.run(move |kv| kv.put(ns::SESSION, address.as_bytes(), &session))
            .await
    }

    async fn delete_session(&self, address: &str) -> Result<()> {
        let address = address.to_owned();
        self.run(move |kv| kv.delete(ns::SESSION, address.as_bytes()).map(drop))
            .await
    }

    async fn has_session(&self, address: &str) -> Result<bool> {
        let address = address.to_owned();
        self.run(move |kv| kv.contains(ns::SESSION, address.as_bytes()))
            .await
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        let record = record.to_vec();
        self.run(move |kv| put_prekey(kv, id, &record, uploaded))
            .await
    }

    async fn load_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        self.run(move |kv| {
            kv.get(ns::PREKEY, &id.to_be_bytes())?
                .map(|value| match value.split_first() {
                    Some((_uploaded, record)) => Ok(record.to_vec()),
                    None => Err(corrupt("pre-key")),
                })
                .transpose()
        })
        .await
    }

    async fn remove_prekey(&self, id: u32) -> Result<()> {
        self.run(move |kv| kv.delete(ns::PREKEY, &id.to_be_bytes()).map(drop))
            .await
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        let record = record.to_vec();
        self.run(move |kv| kv.put(ns::SIGNED_PREKEY, &id.to_be_bytes(), &record))
            .await
    }

    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        self.run(move |kv| kv.get(ns::SIGNED_PREKEY, &id.to_be_bytes()))
            .await
    }

    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        self.run(|kv| {
            kv.list(ns::SIGNED_PREKEY)?
                .into_iter()
                .map(|(key, record)| {
                    let id: [u8; 4] = key
                        .as_slice()
                        .try_into()
                        .map_err(|_| corrupt("signed pre-key id"))?;
                    Ok((u32::from_be_bytes(id), record))
                })
                .collect()
        })
        .await
    }

    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        self.run(move |kv| kv.delete(ns::SIGNED_PREKEY, &id.to_be_bytes()).map(drop))
            .await
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        let (address, record) = (address.to_owned(), record.to_vec());
        self.run(move |kv| kv.put(ns::SENDER_KEY, address.as_bytes(), &record))
            .await
    }

    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        let address = address.to_owned();
        self.run(move |kv| kv.get(ns::SENDER_KEY, address.as_bytes()))
            .await
    }

    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        let address = address.to_owned();
        self.run(move |kv| kv.delete(ns::SENDER_KEY, address.as_bytes()).map(drop))
            .await
    }
}

#[async_trait]
impl AppSyncStore for SessionStore {
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        let key_id = key_id.to_vec();
        self.run(move |kv| {
            kv.get(ns::SYNC_KEY, &key_id)?
                .map(|value| bincode_decode(&value))
                .transpose()
        })
        .await
    }

    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        let key_id = key_id.to_vec();
        let value = bincode_encode(&key).map_err(serialization)?;
        self.run(move |kv| kv.put(ns::SYNC_KEY, &key_id, &value))
            .await
    }

    async fn get_version(&self, name: &str) -> Result<HashState> {
        let name = name.to_owned();
        self.run(
            move |kv| match kv.get(ns::APP_STATE_VERSION, name.as_bytes())? {
                Some(value) => bincode_decode(&value),
                None => Ok(HashState::default()),
            },
        )
        .await
    }

    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        let name = name.to_owned();
        let value = bincode_encode(&state).map_err(serialization)?;
        self.run(move |kv| kv.put(ns::APP_STATE_VERSION, name.as_bytes(), &value))
            .await
    }

    async fn put_mutation_macs(
        &self,
        name: &str,
        version: u64,
        mutations: &[AppStateMutationMAC],
    ) -> Result<()> {
        if mutations.is_empty() {
            return Ok(());
        }
        let (name, mutations) = (name.to_owned(), mutations.to_vec());
        self.run(move |kv| {
            for m in &mutations {
                put_mutation_mac(kv, &name, version, &m.index_mac, &m.value_mac)?;
            }
            Ok(())
        })
        .await
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = compound_key(name, index_mac);
        self.run(move |kv| {
            kv.get(ns::MUTATION_MAC, &key)?
                .map(|value| {
                    value
                        .get(8..)
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| corrupt("mutation MAC"))
                })
                .transpose()
        })
        .await
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        if index_macs.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = index_macs
            .iter()
            .map(|index_mac| compound_key(name, index_mac))
            .collect();
        self.run(move |kv| {
            for key in &keys {
                kv.delete(ns::MUTATION_MAC, key)?;
            }
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl ProtocolStore for SessionStore {
    async fn get_skdm_recipients(&self, group_jid: &str) -> Result<Vec<Jid>> {
        let prefix = prefix_key(group_jid);
        let recipients = self
            .run(move |kv| {
                kv.list_prefix(ns::SKDM_RECIPIENT, &prefix)?
                    .into_iter()
                    .map(|(key, _)| suffix_text(&key, prefix.len()))
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .await?;
        Ok(recipients
            .iter()
            .filter_map(|s| match s.parse::<Jid>() {
                Ok(jid) => Some(jid),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a stored SKDM recipient that is not a JID");
                    None
                }
            })
            .collect())
    }

    async fn add_skdm_recipients(&self, group_jid: &str, device_jids: &[Jid]) -> Result<()> {
        if device_jids.is_empty() {
            return Ok(());
        }
        let group_jid = group_jid.to_owned();
        let device_jids: Vec<String> = device_jids.iter().map(ToString::to_string).collect();
        let now = now_secs();
        self.run(move |kv| {
            for device_jid in &device_jids {
                add_skdm_recipient(kv, &group_jid, device_jid, now)?;
            }
            Ok(())
        })
        .await
    }

    async fn clear_skdm_recipients(&self, group_jid: &str) -> Result<()> {
        let prefix = prefix_key(group_jid);
        self.run(move |kv| kv.delete_prefix(ns::SKDM_RECIPIENT, &prefix).map(drop))
            .await
    }

    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        let lid = lid.to_owned();
        self.run(move |kv| {
            kv.get(ns::LID_MAPPING, lid.as_bytes())?
                .map(|value| bincode_decode(&value))
                .transpose()
        })
        .await
    }

    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        let prefix = prefix_key(phone);
        self.run(move |kv| {
            // The most recently updated LID for that phone, as wa-rs's `ORDER BY updated_at DESC`.
            let mut newest: Option<(i64, String)> = None;
            for (key, value) in kv.list_prefix(ns::PN_INDEX, &prefix)? {
                let updated_at = i64_value(&value)?;
                if newest.as_ref().is_none_or(|(best, _)| updated_at > *best) {
                    newest = Some((updated_at, suffix_text(&key, prefix.len())?));
                }
            }
            let Some((_, lid)) = newest else {
                return Ok(None);
            };
            kv.get(ns::LID_MAPPING, lid.as_bytes())?
                .map(|value| bincode_decode(&value))
                .transpose()
        })
        .await
    }

    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        let entry = entry.clone();
        self.run(move |kv| put_lid_mapping(kv, &entry)).await
    }

    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        self.run(|kv| {
            kv.list(ns::LID_MAPPING)?
                .iter()
                .map(|(_, value)| bincode_decode(value))
                .collect()
        })
        .await
    }

    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        let (address, message_id, base_key) =
            (address.to_owned(), message_id.to_owned(), base_key.to_vec());
        self.run(move |kv| put_base_key(kv, &address, &message_id, &base_key))
            .await
    }

    async fn has_same_base_key(
        &self,
        address: &str,
        message_id: &str,
        current_base_key: &[u8],
    ) -> Result<bool> {
        let key = compound_key(address, message_id.as_bytes());
        let current = current_base_key.to_vec();
        self.run(move |kv| Ok(kv.get(ns::BASE_KEY, &key)?.as_ref() == Some(&current)))
            .await
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        let key = compound_key(address, message_id.as_bytes());
        self.run(move |kv| kv.delete(ns::BASE_KEY, &key).map(drop))
            .await
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        let value = encode_device_list(&record).map_err(serialization)?;
        self.run(move |kv| kv.put(ns::DEVICE_LIST, record.user.as_bytes(), &value))
            .await
    }

    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        let user = user.to_owned();
        self.run(move |kv| {
            kv.get(ns::DEVICE_LIST, user.as_bytes())?
                .map(|value| {
                    serde_json::from_slice(&value).map_err(|e| DbError::Corrupt(e.to_string()))
                })
                .transpose()
        })
        .await
    }

    async fn mark_forget_sender_key(&self, group_jid: &str, participant: &str) -> Result<()> {
        let (group_jid, participant) = (group_jid.to_owned(), participant.to_owned());
        let now = now_secs();
        self.run(move |kv| put_forget_mark(kv, &group_jid, &participant, now))
            .await
    }

    async fn consume_forget_marks(&self, group_jid: &str) -> Result<Vec<String>> {
        let prefix = prefix_key(group_jid);
        self.run(move |kv| {
            let participants = kv
                .list_prefix(ns::FORGET_MARK, &prefix)?
                .into_iter()
                .map(|(key, _)| suffix_text(&key, prefix.len()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            kv.delete_prefix(ns::FORGET_MARK, &prefix)?;
            Ok(participants)
        })
        .await
    }

    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        let jid = jid.to_owned();
        self.run(move |kv| {
            kv.get(ns::TC_TOKEN, jid.as_bytes())?
                .map(|value| bincode_decode(&value))
                .transpose()
        })
        .await
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        let jid = jid.to_owned();
        let value = encode_tc_token(entry).map_err(serialization)?;
        self.run(move |kv| kv.put(ns::TC_TOKEN, jid.as_bytes(), &value))
            .await
    }

    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        let jid = jid.to_owned();
        self.run(move |kv| kv.delete(ns::TC_TOKEN, jid.as_bytes()).map(drop))
            .await
    }

    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        self.run(|kv| {
            kv.list(ns::TC_TOKEN)?
                .into_iter()
                .map(|(key, _)| text(key))
                .collect()
        })
        .await
    }

    async fn delete_expired_tc_tokens(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.run(move |kv| {
            let mut deleted = 0u32;
            for (jid, value) in kv.list(ns::TC_TOKEN)? {
                let entry: TcTokenEntry = bincode_decode(&value)?;
                if entry.token_timestamp < cutoff_timestamp && kv.delete(ns::TC_TOKEN, &jid)? {
                    deleted = deleted.saturating_add(1);
                }
            }
            Ok(deleted)
        })
        .await
    }
}

#[async_trait]
impl DeviceStore for SessionStore {
    async fn save(&self, device: &Device) -> Result<()> {
        let blob = encode_device(device).map_err(serialization)?;
        self.run(move |kv| kv.set_device_blob(&blob)).await
    }

    async fn load(&self) -> Result<Option<Device>> {
        self.run(|kv| {
            kv.device_blob()?
                .map(|blob| decode_device(&blob))
                .transpose()
        })
        .await
    }

    async fn exists(&self) -> Result<bool> {
        self.run(|kv| Ok(kv.device_blob()?.is_some())).await
    }

    /// The device row was made by [`Db::open_device`]: nothing to create, so no orphan row.
    /// Until the first [`save`](DeviceStore::save), wa-rs keeps the new device in memory.
    async fn create(&self) -> Result<i32> {
        let id = self.run(|kv| Ok(kv.device())).await?;
        i32::try_from(id.0)
            .map_err(|_| StoreError::Database(format!("{id} does not fit wa-rs's i32 device id")))
    }

    async fn snapshot_db(&self, _name: &str, _extra_content: Option<&[u8]>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wa_rs_core::store::device::DEVICE_PROPS;
    use warden_store::Db;

    const TOKEN: &str = "shop1";

    async fn open() -> (tempfile::TempDir, Db, SessionStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("warden.db")).unwrap();
        let device = db.open_device(TOKEN).await.unwrap();
        let store = SessionStore::new(db.clone(), device);
        (dir, db, store)
    }

    /// The byte-valued groups of `SignalStore`, each keyed by text or by id.
    #[derive(Debug, Clone, Copy)]
    enum Group {
        Identity,
        Session,
        SenderKey,
        PreKey,
        SignedPreKey,
    }

    impl Group {
        const ALL: [Self; 5] = [
            Self::Identity,
            Self::Session,
            Self::SenderKey,
            Self::PreKey,
            Self::SignedPreKey,
        ];

        fn keys(self) -> [&'static str; 3] {
            match self {
                Self::PreKey | Self::SignedPreKey => ["1", "7", "4294967295"],
                _ => ["123.0:1", "123.0:12", "1234@lid.0:1"],
            }
        }

        async fn put(self, s: &SessionStore, key: &str, value: &[u8]) -> Result<()> {
            match self {
                Self::Identity => s.put_identity(key, value.try_into().unwrap()).await,
                Self::Session => s.put_session(key, value).await,
                Self::SenderKey => s.put_sender_key(key, value).await,
                Self::PreKey => s.store_prekey(key.parse().unwrap(), value, true).await,
                Self::SignedPreKey => s.store_signed_prekey(key.parse().unwrap(), value).await,
            }
        }

        async fn get(self, s: &SessionStore, key: &str) -> Result<Option<Vec<u8>>> {
            match self {
                Self::Identity => s.load_identity(key).await,
                Self::Session => s.get_session(key).await,
                Self::SenderKey => s.get_sender_key(key).await,
                Self::PreKey => s.load_prekey(key.parse().unwrap()).await,
                Self::SignedPreKey => s.load_signed_prekey(key.parse().unwrap()).await,
            }
        }

        async fn delete(self, s: &SessionStore, key: &str) -> Result<()> {
            match self {
                Self::Identity => s.delete_identity(key).await,
                Self::Session => s.delete_session(key).await,
                Self::SenderKey => s.delete_sender_key(key).await,
                Self::PreKey => s.remove_prekey(key.parse().unwrap()).await,
                Self::SignedPreKey => s.remove_signed_prekey(key.parse().unwrap()).await,
            }
        }
    }

    #[tokio::test]
    async fn signal_store_round_trips() {
        let (_dir, _db, s) = open().await;
        for group in Group::ALL {
            for (i, key) in group.keys().into_iter().enumerate() {
                let value = [u8::try_from(i).unwrap() + 1; 32];
                assert_eq!(group.get(&s, key).await.unwrap(), None, "{group:?} {key}");
                group.put(&s, key, &value).await.unwrap();
                assert_eq!(
                    group.get(&s, key).await.unwrap().as_deref(),
                    Some(&value[..])
                );
                let newer = [0xEE; 32];
                group.put(&s, key, &newer).await.unwrap();
                assert_eq!(
                    group.get(&s, key).await.unwrap().as_deref(),
                    Some(&newer[..])
                );
            }
            let [first, second, _] = group.keys();
            group.delete(&s, first).await.unwrap();
            group.delete(&s, first).await.unwrap(); // deleting nothing is fine
            assert_eq!(group.get(&s, first).await.unwrap(), None, "{group:?}");
            assert!(group.get(&s, second).await.unwrap().is_some(), "{group:?}");
        }
        assert!(s.has_session("123.0:12").await.unwrap());
        assert!(!s.has_session("123.0:1").await.unwrap());
        assert_eq!(
            s.load_all_signed_prekeys().await.unwrap(),
            vec![(7, vec![0xEE; 32]), (u32::MAX, vec![0xEE; 32])]
        );
        // The `uploaded` flag is kept beside the record, not in it.
        s.store_prekey(9, b"record", false).await.unwrap();
        assert_eq!(s.load_prekey(9).await.unwrap().unwrap(), b"record");
    }

    #[tokio::test]
    async fn app_sync_store_round_trips() {
        let (_dir, _db, s) = open().await;
        assert!(s.get_sync_key(b"k1").await.unwrap().is_none());
        let key = AppStateSyncKey {
            key_data: vec![1; 32],
            fingerprint: vec![2, 3],
            timestamp: 1_700_000_000,
        };
        s.set_sync_key(b"k1", key.clone()).await.unwrap();
        let got = s.get_sync_key(b"k1").await.unwrap().unwrap();
        assert_eq!(
            (got.key_data, got.fingerprint, got.timestamp),
            (key.key_data, key.fingerprint, key.timestamp)
        );

        assert_eq!(s.get_version("regular").await.unwrap().version, 0);
        let mut state = HashState {
            version: 42,
            ..HashState::default()
        };
        state.hash[0] = 9;
        state.index_value_map.insert("index".into(), vec![5; 4]);
        s.set_version("regular", state).await.unwrap();
        let got = s.get_version("regular").await.unwrap();
        assert_eq!((got.version, got.hash[0]), (42, 9));
        assert_eq!(got.index_value_map["index"], vec![5; 4]);

        let mac = |i: u8, v: u8| AppStateMutationMAC {
            index_mac: vec![i; 2],
            value_mac: vec![v; 3],
        };
        s.put_mutation_macs("a", 1, &[mac(1, 10), mac(2, 20)])
            .await
            .unwrap();
        s.put_mutation_macs("a", 2, &[mac(1, 11)]).await.unwrap();
        // "a" + [b'b', ..] and "ab" + [..] must not collide.
        s.put_mutation_macs("ab", 1, &[mac(1, 30)]).await.unwrap();
        s.put_mutation_macs("a", 3, &[]).await.unwrap();
        for (name, index, want) in [
            ("a", 1, Some(vec![11; 3])),
            ("a", 2, Some(vec![20; 3])),
            ("ab", 1, Some(vec![30; 3])),
            ("b", 1, None),
        ] {
            assert_eq!(
                s.get_mutation_mac(name, &[index; 2]).await.unwrap(),
                want,
                "{name} {index}"
            );
        }
        s.delete_mutation_macs("a", &[vec![1; 2], vec![9; 2]])
            .await
            .unwrap();
        s.delete_mutation_macs("a", &[]).await.unwrap();
        assert_eq!(s.get_mutation_mac("a", &[1; 2]).await.unwrap(), None);
        assert!(s.get_mutation_mac("ab", &[1; 2]).await.unwrap().is_some());
    }

    fn jid(s: &str) -> Jid {
        s.parse().unwrap()
    }

    fn mapping(lid: &str, phone: &str, created_at: i64, updated_at: i64) -> LidPnMappingEntry {
        LidPnMappingEntry {
            lid: lid.into(),
            phone_number: phone.into(),
            created_at,
            updated_at,
            learning_source: "usync".into(),
        }
    }

    #[tokio::test]
    async fn protocol_store_round_trips() {
        let (_dir, _db, s) = open().await;
        let group = "120363@g.us";

        // SKDM recipients: deduplicated, per group, cleared whole.
        let (a, b) = (jid("123:1@s.whatsapp.net"), jid("456@lid"));
        s.add_skdm_recipients(group, &[a.clone(), b.clone()])
            .await
            .unwrap();
        s.add_skdm_recipients(group, std::slice::from_ref(&a))
            .await
            .unwrap();
        s.add_skdm_recipients("other@g.us", std::slice::from_ref(&a))
            .await
            .unwrap();
        s.add_skdm_recipients(group, &[]).await.unwrap();
        let mut got = s.get_skdm_recipients(group).await.unwrap();
        got.sort_by_key(ToString::to_string);
        assert_eq!(got, vec![a.clone(), b]);
        s.clear_skdm_recipients(group).await.unwrap();
        assert!(s.get_skdm_recipients(group).await.unwrap().is_empty());
        assert_eq!(s.get_skdm_recipients("other@g.us").await.unwrap(), vec![a]);

        // LID-PN mappings: looked up both ways.
        s.put_lid_mapping(&mapping("100", "551", 10, 10))
            .await
            .unwrap();
        s.put_lid_mapping(&mapping("200", "552", 20, 20))
            .await
            .unwrap();
        for (lid, phone) in [("100", "551"), ("200", "552")] {
            let by_lid = s.get_lid_mapping(lid).await.unwrap().unwrap();
            let by_pn = s.get_pn_mapping(phone).await.unwrap().unwrap();
            assert_eq!(
                (by_lid.lid.as_str(), by_lid.phone_number.as_str()),
                (lid, phone)
            );
            assert_eq!(
                (by_pn.lid.as_str(), by_pn.phone_number.as_str()),
                (lid, phone)
            );
        }
        // An update keeps the first `created_at` and moves the phone index.
        s.put_lid_mapping(&mapping("100", "559", 99, 30))
            .await
            .unwrap();
        let moved = s.get_lid_mapping("100").await.unwrap().unwrap();
        assert_eq!(
            (
                moved.phone_number.as_str(),
                moved.created_at,
                moved.updated_at
            ),
            ("559", 10, 30)
        );
        assert!(s.get_pn_mapping("551").await.unwrap().is_none());
        // Two LIDs for one phone: the most recently updated wins.
        s.put_lid_mapping(&mapping("300", "559", 40, 25))
            .await
            .unwrap();
        assert_eq!(s.get_pn_mapping("559").await.unwrap().unwrap().lid, "100");
        s.put_lid_mapping(&mapping("300", "559", 40, 50))
            .await
            .unwrap();
        assert_eq!(s.get_pn_mapping("559").await.unwrap().unwrap().lid, "300");
        let mut all: Vec<String> = s
            .get_all_lid_mappings()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.lid)
            .collect();
        all.sort();
        assert_eq!(all, ["100", "200", "300"]);

        // Base keys: the same bytes, for the same address and message.
        assert!(!s.has_same_base_key("123.0:1", "m1", b"k").await.unwrap());
        s.save_base_key("123.0:1", "m1", b"k").await.unwrap();
        for (address, message, key, same) in [
            ("123.0:1", "m1", &b"k"[..], true),
            ("123.0:1", "m1", b"x", false),
            ("123.0:1", "m2", b"k", false),
            ("123.0:2", "m1", b"k", false),
        ] {
            assert_eq!(
                s.has_same_base_key(address, message, key).await.unwrap(),
                same,
                "{address} {message}"
            );
        }
        s.delete_base_key("123.0:1", "m1").await.unwrap();
        assert!(!s.has_same_base_key("123.0:1", "m1", b"k").await.unwrap());

        // Device lists: replaced whole.
        assert!(s.get_devices("123").await.unwrap().is_none());
        for (timestamp, count) in [(1_000, 1), (2_000, 2)] {
            let devices = (0..count)
                .map(|d| wa_rs_core::store::traits::DeviceInfo {
                    device_id: d,
                    key_index: (d > 0).then_some(d * 10),
                })
                .collect();
            s.update_device_list(DeviceListRecord {
                user: "123".into(),
                devices,
                timestamp,
                phash: Some(format!("2:{timestamp}")),
            })
            .await
            .unwrap();
        }
        let list = s.get_devices("123").await.unwrap().unwrap();
        assert_eq!(
            (list.user.as_str(), list.devices.len(), list.timestamp),
            ("123", 2, 2_000)
        );
        assert_eq!(list.devices[1].key_index, Some(10));
        assert_eq!(list.phash.as_deref(), Some("2:2000"));

        // Forget marks: consumed (read and deleted) per group.
        s.mark_forget_sender_key(group, "u1@s.whatsapp.net")
            .await
            .unwrap();
        s.mark_forget_sender_key(group, "u2@s.whatsapp.net")
            .await
            .unwrap();
        s.mark_forget_sender_key(group, "u1@s.whatsapp.net")
            .await
            .unwrap();
        s.mark_forget_sender_key("other@g.us", "u3@s.whatsapp.net")
            .await
            .unwrap();
        let mut marks = s.consume_forget_marks(group).await.unwrap();
        marks.sort();
        assert_eq!(marks, ["u1@s.whatsapp.net", "u2@s.whatsapp.net"]);
        assert!(s.consume_forget_marks(group).await.unwrap().is_empty());
        assert_eq!(
            s.consume_forget_marks("other@g.us").await.unwrap(),
            ["u3@s.whatsapp.net"]
        );
    }

    #[tokio::test]
    async fn tc_tokens_round_trip_and_expire() {
        let (_dir, _db, s) = open().await;
        let entry = |token: u8, token_timestamp: i64| TcTokenEntry {
            token: vec![token; 3],
            token_timestamp,
            sender_timestamp: token.is_multiple_of(2).then_some(token_timestamp + 1),
        };
        assert!(s.get_tc_token("a@lid").await.unwrap().is_none());
        for (jid, token, ts) in [
            ("a@lid", 1, 1_000),
            ("b@lid", 2, 2_999),
            ("c@lid", 3, 3_000),
            ("d@lid", 4, 5_000),
            ("a@lid", 6, 1_500), // replaces a's first token
        ] {
            s.put_tc_token(jid, &entry(token, ts)).await.unwrap();
        }
        let a = s.get_tc_token("a@lid").await.unwrap().unwrap();
        assert_eq!(
            (a.token, a.token_timestamp, a.sender_timestamp),
            (vec![6; 3], 1_500, Some(1_501))
        );
        let mut jids = s.get_all_tc_token_jids().await.unwrap();
        jids.sort();
        assert_eq!(jids, ["a@lid", "b@lid", "c@lid", "d@lid"]);
        // Strictly older than the cutoff.
        assert_eq!(s.delete_expired_tc_tokens(3_000).await.unwrap(), 2);
        assert_eq!(s.delete_expired_tc_tokens(3_000).await.unwrap(), 0);
        let mut jids = s.get_all_tc_token_jids().await.unwrap();
        jids.sort();
        assert_eq!(jids, ["c@lid", "d@lid"]);
        s.delete_tc_token("c@lid").await.unwrap();
        assert!(s.get_tc_token("c@lid").await.unwrap().is_none());
        assert_eq!(s.get_all_tc_token_jids().await.unwrap(), ["d@lid"]);
    }

    fn paired_device() -> Device {
        let mut device = Device::new();
        device.pn = Some(jid("15551234567:3@s.whatsapp.net"));
        device.lid = Some(jid("100000012345678:3@lid"));
        device.push_name = "shop".into();
        device.account = Some(wa_rs::wa_rs_proto::whatsapp::AdvSignedDeviceIdentity {
            details: Some(vec![1, 2, 3]),
            account_signature_key: Some(vec![4; 32]),
            account_signature: Some(vec![5; 64]),
            device_signature: Some(vec![6; 64]),
        });
        device.edge_routing_info = Some(vec![7, 8]);
        device.props_hash = Some("hash".into());
        device
    }

    #[tokio::test]
    async fn device_is_saved_whole_and_create_makes_no_rows() {
        let (_dir, db, s) = open().await;
        let rows = db.rows_of(TOKEN).await.unwrap();
        assert!(!s.exists().await.unwrap());
        assert!(s.load().await.unwrap().is_none());
        let id = s.create().await.unwrap();
        assert_eq!(i64::from(id), s.device().0);
        assert_eq!(
            db.rows_of(TOKEN).await.unwrap(),
            rows,
            "create() adds no row"
        );
        assert!(!s.exists().await.unwrap(), "nothing is saved until save()");
        s.snapshot_db("crash", Some(b"x")).await.unwrap();

        let device = paired_device();
        s.save(&device).await.unwrap();
        assert!(s.exists().await.unwrap());
        let loaded = s.load().await.unwrap().unwrap();
        assert_eq!(loaded.pn, device.pn);
        assert_eq!(loaded.lid, device.lid);
        assert_eq!(loaded.registration_id, device.registration_id);
        for (got, want) in [
            (&loaded.noise_key, &device.noise_key),
            (&loaded.identity_key, &device.identity_key),
            (&loaded.signed_pre_key, &device.signed_pre_key),
        ] {
            assert_eq!(got.private_key.serialize(), want.private_key.serialize());
            assert_eq!(
                got.public_key.public_key_bytes(),
                want.public_key.public_key_bytes()
            );
        }
        assert_eq!(loaded.signed_pre_key_id, device.signed_pre_key_id);
        assert_eq!(
            loaded.signed_pre_key_signature,
            device.signed_pre_key_signature
        );
        assert_eq!(loaded.adv_secret_key, device.adv_secret_key);
        assert_eq!(loaded.account, device.account);
        assert_eq!(loaded.push_name, "shop");
        assert_eq!(
            (loaded.app_version_primary, loaded.app_version_tertiary),
            (device.app_version_primary, device.app_version_tertiary)
        );
        assert_eq!(loaded.edge_routing_info, device.edge_routing_info);
        assert_eq!(loaded.props_hash, device.props_hash);
        assert_eq!(loaded.device_props, *DEVICE_PROPS);
        // A save replaces the blob, still without a row of its own.
        assert_eq!(db.rows_of(TOKEN).await.unwrap(), rows);
    }

    #[tokio::test]
    async fn writes_after_the_device_is_deleted_fail() {
        let (_dir, db, s) = open().await;
        s.save(&paired_device()).await.unwrap();
        s.put_identity("123.0:1", [1; 32]).await.unwrap();
        assert!(db.delete_device(TOKEN).await.unwrap());
        assert_eq!(db.rows_of(TOKEN).await.unwrap(), 0);

        let closed = |r: Result<()>, what: &str| {
            assert!(
                matches!(r, Err(StoreError::Connection(ref m)) if m.contains("deleted")),
                "{what}: {r:?}"
            );
        };
        closed(s.save(&paired_device()).await, "save");
        closed(s.put_identity("123.0:1", [2; 32]).await, "put_identity");
        closed(s.delete_identity("123.0:1").await, "delete_identity");
        closed(s.put_session("123.0:1", b"s").await, "put_session");
        closed(s.store_prekey(1, b"p", false).await, "store_prekey");
        closed(
            s.set_sync_key(b"k", AppStateSyncKey::default()).await,
            "set_sync_key",
        );
        closed(
            s.put_lid_mapping(&mapping("1", "2", 3, 4)).await,
            "put_lid_mapping",
        );
        closed(
            s.mark_forget_sender_key("g@g.us", "p").await,
            "mark_forget_sender_key",
        );
        closed(
            s.put_tc_token(
                "a@lid",
                &TcTokenEntry {
                    token: vec![1],
                    token_timestamp: 1,
                    sender_timestamp: None,
                },
            )
            .await,
            "put_tc_token",
        );
        // Consuming deletes: a write.
        closed(
            s.consume_forget_marks("g@g.us").await.map(drop),
            "consume_forget_marks",
        );
        // Reads find nothing, and nothing came back.
        assert!(!s.exists().await.unwrap());
        assert!(s.load().await.unwrap().is_none());
        assert!(s.load_identity("123.0:1").await.unwrap().is_none());
        assert_eq!(db.rows_of(TOKEN).await.unwrap(), 0);
        assert_eq!(db.orphan_rows().await.unwrap(), 0);
    }

    #[test]
    fn compound_keys_do_not_collide() {
        assert_ne!(compound_key("a", b"bc"), compound_key("ab", b"c"));
        assert!(compound_key("ab", b"c").starts_with(&prefix_key("ab")));
        assert!(!compound_key("abc", b"").starts_with(&prefix_key("ab")));
    }
}
