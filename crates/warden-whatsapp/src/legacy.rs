//! [`import_legacy`]: moves the previous release's per-session SQLite files into the shared
//! session database.
//!
//! The previous release kept, per session, `sessions/<token>/session.db` (wa-rs 0.2's own
//! SQLite store, with `-wal`/`-shm` beside it) and a `lock` file. Each such folder is imported
//! on its own, one after another:
//!
//! 1. its token is checked ([`Token::parse`]) and its `lock` taken (if the file is there), so
//!    a process of the previous release still running it is never raced;
//! 2. the file is read on a blocking thread, from a private copy (with its `-wal` and
//!    `-journal`, so SQLite recovers them in the copy): the original is never opened;
//! 3. every table is written to the session's device in **one** transaction
//!    ([`Db::import_device`]), with the same namespaces and encodings as [`SessionStore`];
//! 4. only once that commit returned, `session.db`, `-wal`, `-shm`, `-journal` and `lock` are
//!    deleted. `session.toml` (the supervisor's record) is left alone.
//!
//! A token that already has a device in the database was imported before (the process died
//! before step 4): its files are deleted. A session that fails is left on disk untouched, is
//! reported in [`ImportReport::failed`] and logged (never with key material); the others go on.
//!
//! [`SessionStore`]: crate::store::SessionStore

use std::collections::BTreeSet;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use wa_rs_core::libsignal::protocol::{KeyPair, PrivateKey, PublicKey};
use wa_rs_core::store::Device;
use wa_rs_core::store::traits::{DeviceInfo, DeviceListRecord, LidPnMappingEntry, TcTokenEntry};
use warden_core::Token;
use warden_store::{Db, DbError, Kv};

use crate::lock::{LOCK_FILE, SessionLock};
use crate::store::{self, ns};

/// The previous release's database file in a session folder.
pub const LEGACY_DB_FILE: &str = "session.db";
/// Files beside [`LEGACY_DB_FILE`] that belong to it.
pub const LEGACY_SIDE_FILES: [&str; 3] = ["session.db-wal", "session.db-shm", "session.db-journal"];
/// The private scratch folder (inside `sessions/`) where a file is copied to be read.
const SCRATCH_DIR: &str = ".legacy-import.tmp";

/// What [`import_legacy`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Tokens whose files are now in the database (and whose files were deleted).
    pub imported: Vec<String>,
    /// Folders left as they were, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Imports every `sessions_dir/<token>/session.db` into `db`; see the module docs. Folders
/// without a `session.db` are not looked at. Never fails as a whole: a missing `sessions_dir`
/// is an empty report.
pub async fn import_legacy(db: &Db, sessions_dir: &Path) -> ImportReport {
    let mut report = ImportReport::default();
    let scratch = sessions_dir.join(SCRATCH_DIR);
    let listing = {
        let (dir, scratch) = (sessions_dir.to_owned(), scratch.clone());
        tokio::task::spawn_blocking(move || {
            remove_scratch(&scratch);
            legacy_folders(&dir)
        })
        .await
    };
    let names = match listing {
        Ok(Ok(names)) => names,
        Ok(Err(e)) => {
            tracing::warn!(dir = %sessions_dir.display(), error = %e, "cannot list the sessions folder; nothing imported");
            return report;
        }
        Err(e) => {
            tracing::warn!(error = %e, "listing the sessions folder failed; nothing imported");
            return report;
        }
    };
    for name in names {
        match import_one(db, &sessions_dir.join(&name), &name, &scratch).await {
            Ok(how) => {
                tracing::info!(token = %name, how, "imported the previous release's session store");
                report.imported.push(name);
            }
            Err(reason) => {
                tracing::warn!(token = %name, reason = %reason, "cannot import the previous release's session store; its files are left as they were");
                report.failed.push((name, reason));
            }
        }
    }
    report
}

/// The names of the folders of `dir` that hold a [`LEGACY_DB_FILE`], sorted.
fn legacy_folders(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != SCRATCH_DIR
            && entry.file_type()?.is_dir()
            && entry.path().join(LEGACY_DB_FILE).is_file()
        {
            names.insert(name);
        }
    }
    Ok(names.into_iter().collect())
}

/// Imports one folder; `Ok` says how.
async fn import_one(
    db: &Db,
    dir: &Path,
    name: &str,
    scratch: &Path,
) -> Result<&'static str, String> {
    let token = Token::parse(name).map_err(|e| format!("the folder name is not a token: {e}"))?;
    let token = token.as_str().to_owned();

    let lock = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || lock_if_present(&dir))
            .await
            .map_err(|e| format!("taking the lock failed: {e}"))??
    };

    let already = db
        .find_device(&token)
        .await
        .map_err(|e| format!("the session database failed: {e}"))?
        .is_some();
    let how = if already {
        "already in the database"
    } else {
        let legacy = {
            let (dir, scratch) = (dir.to_owned(), scratch.to_owned());
            tokio::task::spawn_blocking(move || read_legacy(&dir, &scratch))
                .await
                .map_err(|e| format!("reading {LEGACY_DB_FILE} failed: {e}"))??
        };
        let imported = db
            .import_device(&token, move |kv| write_legacy(kv, &legacy))
            .await
            .map_err(|e| format!("writing to the session database failed: {e}"))?;
        match imported {
            Some(()) => "imported",
            None => "already in the database",
        }
    };

    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        remove_legacy_files(&dir, &token);
        drop(lock);
    })
    .await
    .map_err(|e| format!("deleting the old files failed: {e}"))?;
    Ok(how)
}

/// Takes the folder's lock if its lock file exists (the previous release made it whenever it
/// ran the session); a missing one is not created. Held until the returned lock is dropped.
fn lock_if_present(dir: &Path) -> Result<Option<SessionLock>, String> {
    if !dir.join(LOCK_FILE).is_file() {
        return Ok(None);
    }
    SessionLock::acquire(dir)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Deletes the imported files (the database, its side files, then the lock file).
fn remove_legacy_files(dir: &Path, token: &str) {
    for file in std::iter::once(LEGACY_DB_FILE)
        .chain(LEGACY_SIDE_FILES)
        .chain([LOCK_FILE])
    {
        match std::fs::remove_file(dir.join(file)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(token = %token, file, error = %e, "cannot delete an imported file; the next import deletes it");
            }
        }
    }
}

fn remove_scratch(scratch: &Path) {
    match std::fs::remove_dir_all(scratch) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %scratch.display(), error = %e, "cannot remove the import scratch folder");
        }
    }
}

/// Everything read from one old file, already in the shared database's encodings where they
/// differ. Holds key material: it has no `Debug` on purpose.
#[derive(Default)]
struct LegacySession {
    device_blob: Option<Vec<u8>>,
    identities: Vec<(String, Vec<u8>)>,
    sessions: Vec<(String, Vec<u8>)>,
    prekeys: Vec<(u32, Vec<u8>, bool)>,
    signed_prekeys: Vec<(u32, Vec<u8>)>,
    sender_keys: Vec<(String, Vec<u8>)>,
    sync_keys: Vec<(Vec<u8>, Vec<u8>)>,
    app_state_versions: Vec<(String, Vec<u8>)>,
    mutation_macs: Vec<(String, u64, Vec<u8>, Vec<u8>)>,
    skdm_recipients: Vec<(String, String, i64)>,
    lid_mappings: Vec<LidPnMappingEntry>,
    base_keys: Vec<(String, String, Vec<u8>)>,
    device_lists: Vec<(String, Vec<u8>)>,
    forget_marks: Vec<(String, String, i64)>,
    tc_tokens: Vec<(String, Vec<u8>)>,
}

/// Writes an old session into a new device, in the import's transaction.
fn write_legacy(kv: &mut Kv<'_>, legacy: &LegacySession) -> Result<(), DbError> {
    if let Some(blob) = &legacy.device_blob {
        kv.set_device_blob(blob)?;
    }
    for (address, key) in &legacy.identities {
        kv.put(ns::IDENTITY, address.as_bytes(), key)?;
    }
    for (address, record) in &legacy.sessions {
        kv.put(ns::SESSION, address.as_bytes(), record)?;
    }
    for (id, record, uploaded) in &legacy.prekeys {
        store::put_prekey(kv, *id, record, *uploaded)?;
    }
    for (id, record) in &legacy.signed_prekeys {
        kv.put(ns::SIGNED_PREKEY, &id.to_be_bytes(), record)?;
    }
    for (address, record) in &legacy.sender_keys {
        kv.put(ns::SENDER_KEY, address.as_bytes(), record)?;
    }
    // wa-rs stored these as bincode already: the same bytes.
    for (key_id, value) in &legacy.sync_keys {
        kv.put(ns::SYNC_KEY, key_id, value)?;
    }
    for (name, value) in &legacy.app_state_versions {
        kv.put(ns::APP_STATE_VERSION, name.as_bytes(), value)?;
    }
    for (name, version, index_mac, value_mac) in &legacy.mutation_macs {
        store::put_mutation_mac(kv, name, *version, index_mac, value_mac)?;
    }
    for (group, device_jid, created_at) in &legacy.skdm_recipients {
        store::add_skdm_recipient(kv, group, device_jid, *created_at)?;
    }
    for entry in &legacy.lid_mappings {
        store::put_lid_mapping(kv, entry)?;
    }
    for (address, message_id, base_key) in &legacy.base_keys {
        store::put_base_key(kv, address, message_id, base_key)?;
    }
    for (user, value) in &legacy.device_lists {
        kv.put(ns::DEVICE_LIST, user.as_bytes(), value)?;
    }
    for (group, participant, marked_at) in &legacy.forget_marks {
        store::put_forget_mark(kv, group, participant, *marked_at)?;
    }
    for (jid, value) in &legacy.tc_tokens {
        kv.put(ns::TC_TOKEN, jid.as_bytes(), value)?;
    }
    Ok(())
}

/// Reads `dir/session.db` from a private copy in `scratch` (removed afterwards). Blocking.
fn read_legacy(dir: &Path, scratch: &Path) -> Result<LegacySession, String> {
    remove_scratch(scratch);
    make_private_dir(scratch).map_err(|e| format!("cannot make {}: {e}", scratch.display()))?;
    let result = copy_and_read(dir, scratch);
    remove_scratch(scratch);
    result
}

fn copy_and_read(dir: &Path, scratch: &Path) -> Result<LegacySession, String> {
    let copy = scratch.join(LEGACY_DB_FILE);
    std::fs::copy(dir.join(LEGACY_DB_FILE), &copy)
        .map_err(|e| format!("cannot copy {LEGACY_DB_FILE}: {e}"))?;
    // The WAL (committed changes not yet checkpointed) and a hot rollback journal belong to
    // the file; SQLite applies them to the copy when it opens it. The -shm is rebuilt.
    for side in ["session.db-wal", "session.db-journal"] {
        let from = dir.join(side);
        if from.is_file() {
            std::fs::copy(&from, scratch.join(side))
                .map_err(|e| format!("cannot copy {side}: {e}"))?;
        }
    }
    let conn = Connection::open_with_flags(
        &copy,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open {LEGACY_DB_FILE}: {e}"))?;
    read_tables(&conn).map_err(|e| match e {
        ReadError::Sqlite(e) => format!("cannot read {LEGACY_DB_FILE}: {e}"),
        ReadError::Content(reason) => reason,
    })
}

#[cfg(unix)]
fn make_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

#[cfg(not(unix))]
fn make_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir(path)
}

/// A failure while reading the tables: SQLite's, or the content's.
enum ReadError {
    Sqlite(rusqlite::Error),
    Content(String),
}

impl From<rusqlite::Error> for ReadError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

/// wa-rs 0.2's tables (all its migrations). Any other table means a schema this build does
/// not know, whose data would be lost: such a file is not imported.
const KNOWN_TABLES: [&str; 15] = [
    "device",
    "identities",
    "sessions",
    "prekeys",
    "signed_prekeys",
    "sender_keys",
    "app_state_keys",
    "app_state_versions",
    "app_state_mutation_macs",
    "skdm_recipients",
    "lid_pn_mapping",
    "base_keys",
    "device_registry",
    "sender_key_status",
    "tc_tokens",
];
/// Made by the first migration: a file without them is not wa-rs's.
const REQUIRED_TABLES: usize = 9;

fn read_tables(conn: &Connection) -> Result<LegacySession, ReadError> {
    let tables: BTreeSet<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    if let Some(unknown) = tables.iter().find(|t| {
        !KNOWN_TABLES.contains(&t.as_str())
            && !t.starts_with("sqlite_")
            && *t != "__diesel_schema_migrations"
    }) {
        return Err(ReadError::Content(format!(
            "unknown schema: table {unknown:?} is not wa-rs 0.2's"
        )));
    }
    if let Some(missing) = KNOWN_TABLES[..REQUIRED_TABLES]
        .iter()
        .find(|t| !tables.contains(**t))
    {
        return Err(ReadError::Content(format!(
            "unknown schema: no table {missing:?} (not a wa-rs session store)"
        )));
    }
    let has = |t: &str| tables.contains(t);
    let device_columns: BTreeSet<String> = conn
        .prepare("SELECT name FROM pragma_table_info('device')")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    if !device_columns.contains("id") {
        return Err(ReadError::Content(
            "unknown schema: the device table has no id (a wa-rs store older than 0.2)".into(),
        ));
    }
    read_content(conn, &has, &device_columns)
}

fn read_content(
    conn: &Connection,
    has: &dyn Fn(&str) -> bool,
    device_columns: &BTreeSet<String>,
) -> Result<LegacySession, ReadError> {
    let mut s = LegacySession::default();
    let optional = |column: &str| {
        if device_columns.contains(column) {
            column.to_owned()
        } else {
            format!("NULL AS {column}")
        }
    };
    // wa-rs's store works on one device row (id 1); the previous release never made another.
    let device_sql = format!(
        "SELECT id, lid, pn, registration_id, noise_key, identity_key, signed_pre_key,
                signed_pre_key_id, signed_pre_key_signature, adv_secret_key, account, push_name,
                app_version_primary, app_version_secondary, app_version_tertiary,
                app_version_last_fetched_ms, {}, {}
         FROM device ORDER BY id LIMIT 1",
        optional("edge_routing_info"),
        optional("props_hash")
    );
    let row = conn
        .query_row(&device_sql, [], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                DeviceRow {
                    lid: row.get(1)?,
                    pn: row.get(2)?,
                    registration_id: row.get(3)?,
                    noise_key: row.get(4)?,
                    identity_key: row.get(5)?,
                    signed_pre_key: row.get(6)?,
                    signed_pre_key_id: row.get(7)?,
                    signed_pre_key_signature: row.get(8)?,
                    adv_secret_key: row.get(9)?,
                    account: row.get(10)?,
                    push_name: row.get(11)?,
                    app_version_primary: row.get(12)?,
                    app_version_secondary: row.get(13)?,
                    app_version_tertiary: row.get(14)?,
                    app_version_last_fetched_ms: row.get(15)?,
                    edge_routing_info: row.get(16)?,
                    props_hash: row.get(17)?,
                },
            ))
        })
        .optional()?;
    let device_id = match row {
        Some((id, row)) => {
            let device = row.into_device().map_err(ReadError::Content)?;
            s.device_blob = Some(store::encode_device(&device).map_err(ReadError::Content)?);
            id
        }
        None => 1,
    };

    s.identities = rows(
        conn,
        "SELECT address, key FROM identities WHERE device_id = ?1",
        device_id,
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    s.sessions = rows(
        conn,
        "SELECT address, record FROM sessions WHERE device_id = ?1",
        device_id,
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    s.prekeys = rows(
        conn,
        "SELECT id, key, uploaded FROM prekeys WHERE device_id = ?1",
        device_id,
        |r| Ok((r.get::<_, i32>(0)? as u32, r.get(1)?, r.get(2)?)),
    )?;
    s.signed_prekeys = rows(
        conn,
        "SELECT id, record FROM signed_prekeys WHERE device_id = ?1",
        device_id,
        |r| Ok((r.get::<_, i32>(0)? as u32, r.get(1)?)),
    )?;
    s.sender_keys = rows(
        conn,
        "SELECT address, record FROM sender_keys WHERE device_id = ?1",
        device_id,
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    s.sync_keys = rows(
        conn,
        "SELECT key_id, key_data FROM app_state_keys WHERE device_id = ?1",
        device_id,
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    s.app_state_versions = rows(
        conn,
        "SELECT name, state_data FROM app_state_versions WHERE device_id = ?1",
        device_id,
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    s.mutation_macs = rows(
        conn,
        "SELECT name, version, index_mac, value_mac FROM app_state_mutation_macs
         WHERE device_id = ?1",
        device_id,
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?)),
    )?;
    if has("skdm_recipients") {
        s.skdm_recipients = rows(
            conn,
            "SELECT group_jid, device_jid, created_at FROM skdm_recipients WHERE device_id = ?1",
            device_id,
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
    }
    if has("lid_pn_mapping") {
        s.lid_mappings = rows(
            conn,
            "SELECT lid, phone_number, created_at, learning_source, updated_at
             FROM lid_pn_mapping WHERE device_id = ?1",
            device_id,
            |r| {
                Ok(LidPnMappingEntry {
                    lid: r.get(0)?,
                    phone_number: r.get(1)?,
                    created_at: r.get(2)?,
                    learning_source: r.get(3)?,
                    updated_at: r.get(4)?,
                })
            },
        )?;
    }
    if has("base_keys") {
        s.base_keys = rows(
            conn,
            "SELECT address, message_id, base_key FROM base_keys WHERE device_id = ?1",
            device_id,
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
    }
    if has("device_registry") {
        let lists: Vec<(String, String, i64, Option<String>)> = rows(
            conn,
            "SELECT user_id, devices_json, timestamp, phash FROM device_registry
             WHERE device_id = ?1",
            device_id,
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        for (user, devices_json, timestamp, phash) in lists {
            let devices: Vec<DeviceInfo> = serde_json::from_str(&devices_json).map_err(|e| {
                ReadError::Content(format!("a device list (device_registry) is not valid: {e}"))
            })?;
            let record = DeviceListRecord {
                user: user.clone(),
                devices,
                timestamp,
                phash,
            };
            let value = store::encode_device_list(&record).map_err(ReadError::Content)?;
            s.device_lists.push((user, value));
        }
    }
    if has("sender_key_status") {
        s.forget_marks = rows(
            conn,
            "SELECT group_jid, participant, marked_at FROM sender_key_status WHERE device_id = ?1",
            device_id,
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
    }
    if has("tc_tokens") {
        let tokens: Vec<(String, TcTokenEntry)> = rows(
            conn,
            "SELECT jid, token, token_timestamp, sender_timestamp FROM tc_tokens
             WHERE device_id = ?1",
            device_id,
            |r| {
                Ok((
                    r.get(0)?,
                    TcTokenEntry {
                        token: r.get(1)?,
                        token_timestamp: r.get(2)?,
                        sender_timestamp: r.get(3)?,
                    },
                ))
            },
        )?;
        for (jid, entry) in tokens {
            let value = store::encode_tc_token(&entry).map_err(ReadError::Content)?;
            s.tc_tokens.push((jid, value));
        }
    }
    Ok(s)
}

fn rows<T>(
    conn: &Connection,
    sql: &str,
    device_id: i64,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, ReadError> {
    Ok(conn
        .prepare(sql)?
        .query_map([device_id], map)?
        .collect::<Result<_, _>>()?)
}

/// The old `device` row, as wa-rs's store read it.
struct DeviceRow {
    lid: String,
    pn: String,
    registration_id: i32,
    noise_key: Vec<u8>,
    identity_key: Vec<u8>,
    signed_pre_key: Vec<u8>,
    signed_pre_key_id: i32,
    signed_pre_key_signature: Vec<u8>,
    adv_secret_key: Vec<u8>,
    account: Option<Vec<u8>>,
    push_name: String,
    app_version_primary: i32,
    app_version_secondary: i32,
    app_version_tertiary: i64,
    app_version_last_fetched_ms: i64,
    edge_routing_info: Option<Vec<u8>>,
    props_hash: Option<String>,
}

impl DeviceRow {
    /// The device, decoded as wa-rs's `load_device_data_for_device` does (an empty or
    /// unparsable `pn`/`lid` is `None`).
    fn into_device(self) -> Result<Device, String> {
        use prost::Message;
        let jid = |s: &str| if s.is_empty() { None } else { s.parse().ok() };
        let signed_pre_key_signature: [u8; 64] = self
            .signed_pre_key_signature
            .try_into()
            .map_err(|_| "the device's signed pre-key signature is not 64 bytes".to_owned())?;
        let adv_secret_key: [u8; 32] = self
            .adv_secret_key
            .try_into()
            .map_err(|_| "the device's ADV secret key is not 32 bytes".to_owned())?;
        let account = self
            .account
            .map(|data| {
                wa_rs::wa_rs_proto::whatsapp::AdvSignedDeviceIdentity::decode(&data[..])
                    .map_err(|e| format!("the device's account is not valid: {e}"))
            })
            .transpose()?;
        Ok(Device {
            pn: jid(&self.pn),
            lid: jid(&self.lid),
            registration_id: self.registration_id as u32,
            noise_key: key_pair(&self.noise_key, "noise key")?,
            identity_key: key_pair(&self.identity_key, "identity key")?,
            signed_pre_key: key_pair(&self.signed_pre_key, "signed pre-key")?,
            signed_pre_key_id: self.signed_pre_key_id as u32,
            signed_pre_key_signature,
            adv_secret_key,
            account,
            push_name: self.push_name,
            app_version_primary: self.app_version_primary as u32,
            app_version_secondary: self.app_version_secondary as u32,
            app_version_tertiary: self.app_version_tertiary.try_into().unwrap_or(0),
            app_version_last_fetched_ms: self.app_version_last_fetched_ms,
            device_props: wa_rs_core::store::device::DEVICE_PROPS.clone(),
            edge_routing_info: self.edge_routing_info,
            props_hash: self.props_hash,
        })
    }
}

/// wa-rs's key pair column: the 32-byte private key, then the 32-byte public key.
fn key_pair(bytes: &[u8], what: &str) -> Result<KeyPair, String> {
    if bytes.len() != 64 {
        return Err(format!("the device's {what} is not 64 bytes"));
    }
    let private_key = PrivateKey::deserialize(&bytes[..32])
        .map_err(|_| format!("the device's {what} is not valid"))?;
    let public_key = PublicKey::from_djb_public_key_bytes(&bytes[32..])
        .map_err(|_| format!("the device's {what} is not valid"))?;
    Ok(KeyPair::new(public_key, private_key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SessionStore;
    use wa_rs_core::store::traits::{AppSyncStore, DeviceStore, ProtocolStore, SignalStore};

    /// wa-rs 0.2's schema after all its migrations (tables only).
    const OLD_SCHEMA: &str = "
        CREATE TABLE device (id INTEGER PRIMARY KEY AUTOINCREMENT, lid TEXT NOT NULL,
            pn TEXT NOT NULL, registration_id INTEGER NOT NULL, noise_key BLOB NOT NULL,
            identity_key BLOB NOT NULL, signed_pre_key BLOB NOT NULL,
            signed_pre_key_id INTEGER NOT NULL, signed_pre_key_signature BLOB NOT NULL,
            adv_secret_key BLOB NOT NULL, account BLOB, push_name TEXT NOT NULL DEFAULT '',
            app_version_primary INTEGER NOT NULL DEFAULT 0,
            app_version_secondary INTEGER NOT NULL DEFAULT 0,
            app_version_tertiary BIGINT NOT NULL DEFAULT 0,
            app_version_last_fetched_ms BIGINT NOT NULL DEFAULT 0, edge_routing_info BLOB,
            props_hash TEXT);
        CREATE TABLE identities (address TEXT NOT NULL, key BLOB NOT NULL,
            device_id INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (address, device_id));
        CREATE TABLE sessions (address TEXT NOT NULL, record BLOB NOT NULL,
            device_id INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (address, device_id));
        CREATE TABLE prekeys (id INTEGER NOT NULL, key BLOB NOT NULL,
            uploaded BOOLEAN NOT NULL DEFAULT FALSE, device_id INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (id, device_id));
        CREATE TABLE sender_keys (address TEXT NOT NULL, record BLOB NOT NULL,
            device_id INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (address, device_id));
        CREATE TABLE signed_prekeys (id INTEGER NOT NULL, record BLOB NOT NULL,
            device_id INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (id, device_id));
        CREATE TABLE app_state_keys (key_id BLOB NOT NULL, key_data BLOB NOT NULL,
            device_id INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (key_id, device_id));
        CREATE TABLE app_state_versions (name TEXT NOT NULL, state_data BLOB NOT NULL,
            device_id INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (name, device_id));
        CREATE TABLE app_state_mutation_macs (name TEXT NOT NULL, version BIGINT NOT NULL,
            index_mac BLOB NOT NULL, value_mac BLOB NOT NULL, device_id INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (name, index_mac, device_id));
        CREATE TABLE skdm_recipients (group_jid TEXT NOT NULL, device_jid TEXT NOT NULL,
            device_id INTEGER NOT NULL DEFAULT 1,
            created_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),
            PRIMARY KEY (group_jid, device_jid, device_id));
        CREATE TABLE lid_pn_mapping (lid TEXT NOT NULL, phone_number TEXT NOT NULL,
            created_at BIGINT NOT NULL, learning_source TEXT NOT NULL, updated_at BIGINT NOT NULL,
            device_id INTEGER NOT NULL, PRIMARY KEY (lid, device_id));
        CREATE TABLE base_keys (address TEXT NOT NULL, message_id TEXT NOT NULL,
            base_key BLOB NOT NULL, device_id INTEGER NOT NULL DEFAULT 1,
            created_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),
            PRIMARY KEY (address, message_id, device_id));
        CREATE TABLE device_registry (user_id TEXT NOT NULL, devices_json TEXT NOT NULL,
            timestamp INTEGER NOT NULL, phash TEXT, device_id INTEGER NOT NULL DEFAULT 1,
            updated_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),
            PRIMARY KEY (user_id, device_id));
        CREATE TABLE sender_key_status (group_jid TEXT NOT NULL, participant TEXT NOT NULL,
            device_id INTEGER NOT NULL DEFAULT 1,
            marked_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),
            PRIMARY KEY (group_jid, participant, device_id));
        CREATE TABLE tc_tokens (jid TEXT NOT NULL, token BLOB NOT NULL,
            token_timestamp INTEGER NOT NULL, sender_timestamp INTEGER,
            device_id INTEGER NOT NULL DEFAULT 1,
            updated_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),
            PRIMARY KEY (jid, device_id));
        CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL,
            run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
    ";

    fn pair_bytes(pair: &KeyPair) -> Vec<u8> {
        let mut bytes = pair.private_key.serialize().to_vec();
        bytes.extend_from_slice(pair.public_key.public_key_bytes());
        bytes
    }

    /// Writes an old-release session folder with a row in every table, in WAL mode, and
    /// returns the connection (still open, so the WAL is not checkpointed) and the device.
    fn old_session(dir: &Path) -> (Connection, Device) {
        use prost::Message;
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("session.toml"), "name = \"x\"\n").unwrap();
        std::fs::write(dir.join(LOCK_FILE), "").unwrap();
        let conn = Connection::open(dir.join(LEGACY_DB_FILE)).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;")
            .unwrap();
        conn.execute_batch(OLD_SCHEMA).unwrap();
        let mut device = Device::new();
        device.pn = Some("15551234567:2@s.whatsapp.net".parse().unwrap());
        device.lid = Some("100000012345678:2@lid".parse().unwrap());
        device.push_name = "shop".into();
        device.account = Some(wa_rs::wa_rs_proto::whatsapp::AdvSignedDeviceIdentity {
            details: Some(vec![1, 2, 3]),
            ..Default::default()
        });
        conn.execute(
            "INSERT INTO device (lid, pn, registration_id, noise_key, identity_key,
                signed_pre_key, signed_pre_key_id, signed_pre_key_signature, adv_secret_key,
                account, push_name, app_version_primary, app_version_secondary,
                app_version_tertiary, app_version_last_fetched_ms, edge_routing_info, props_hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 2, 3000, 1031424117, 5, ?12, 'h')",
            rusqlite::params![
                device.lid.as_ref().unwrap().to_string(),
                device.pn.as_ref().unwrap().to_string(),
                device.registration_id,
                pair_bytes(&device.noise_key),
                pair_bytes(&device.identity_key),
                pair_bytes(&device.signed_pre_key),
                device.signed_pre_key_id,
                &device.signed_pre_key_signature[..],
                &device.adv_secret_key[..],
                device.account.as_ref().unwrap().encode_to_vec(),
                device.push_name,
                vec![9u8, 9],
            ],
        )
        .unwrap();
        let sync_key = bincode::serde::encode_to_vec(
            wa_rs_core::store::traits::AppStateSyncKey {
                key_data: vec![1; 32],
                fingerprint: vec![2],
                timestamp: 3,
            },
            bincode::config::standard(),
        )
        .unwrap();
        let version = bincode::serde::encode_to_vec(
            wa_rs_core::appstate::hash::HashState {
                version: 7,
                ..Default::default()
            },
            bincode::config::standard(),
        )
        .unwrap();
        conn.execute_batch(
            "INSERT INTO identities VALUES ('123.0:1', zeroblob(32), 1);
             INSERT INTO identities VALUES ('other-device', zeroblob(32), 2);
             INSERT INTO sessions VALUES ('123.0:1', x'5151', 1);
             INSERT INTO prekeys VALUES (5, x'5050', 1, 1), (6, x'6060', 0, 1);
             INSERT INTO signed_prekeys VALUES (1, x'5353', 1);
             INSERT INTO sender_keys VALUES ('g@g.us::123::1', x'5454', 1);
             INSERT INTO app_state_mutation_macs VALUES ('regular', 4, x'01', x'0202', 1);
             INSERT INTO skdm_recipients VALUES ('g@g.us', '123:1@s.whatsapp.net', 1, 11);
             INSERT INTO lid_pn_mapping VALUES ('100', '551', 10, 'usync', 12, 1);
             INSERT INTO base_keys VALUES ('123.0:1', 'm1', x'4242', 1, 13);
             INSERT INTO device_registry VALUES
                 ('123', '[{\"device_id\":0,\"key_index\":null}]', 14, '2:x', 1, 15);
             INSERT INTO sender_key_status VALUES ('g@g.us', 'u1@s.whatsapp.net', 1, 16);
             INSERT INTO tc_tokens VALUES ('a@lid', x'7171', 17, NULL, 1, 18);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO app_state_keys VALUES (x'6b31', ?1, 1)",
            [sync_key],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO app_state_versions VALUES ('regular', ?1, 1)",
            [version],
        )
        .unwrap();
        assert!(
            dir.join("session.db-wal").exists(),
            "the rows are in the WAL"
        );
        (conn, device)
    }

    #[tokio::test]
    async fn every_table_is_imported_from_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = dir.path().join("sessions");
        let (conn, device) = old_session(&sessions.join("shop1"));
        let db = Db::open(&dir.path().join("warden.db")).unwrap();

        let report = import_legacy(&db, &sessions).await;
        drop(conn);
        assert_eq!(report.imported, ["shop1"]);
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let folder = sessions.join("shop1");
        for gone in [
            LEGACY_DB_FILE,
            "session.db-wal",
            "session.db-shm",
            LOCK_FILE,
        ] {
            assert!(!folder.join(gone).exists(), "{gone}");
        }
        assert!(folder.join("session.toml").exists());
        assert!(!sessions.join(SCRATCH_DIR).exists());

        let s = SessionStore::new(db.clone(), db.find_device("shop1").await.unwrap().unwrap());
        let loaded = s.load().await.unwrap().unwrap();
        assert_eq!(loaded.pn, device.pn);
        assert_eq!(loaded.lid, device.lid);
        assert_eq!(loaded.account, device.account);
        assert_eq!(
            loaded.identity_key.private_key.serialize(),
            device.identity_key.private_key.serialize()
        );
        assert_eq!(loaded.edge_routing_info, Some(vec![9, 9]));
        assert_eq!(loaded.props_hash.as_deref(), Some("h"));
        assert_eq!(loaded.app_version_last_fetched_ms, 5);

        assert_eq!(s.load_identity("123.0:1").await.unwrap(), Some(vec![0; 32]));
        assert!(
            s.load_identity("other-device").await.unwrap().is_none(),
            "another device's row"
        );
        assert_eq!(s.get_session("123.0:1").await.unwrap(), Some(vec![0x51; 2]));
        assert_eq!(s.load_prekey(5).await.unwrap(), Some(vec![0x50; 2]));
        assert_eq!(s.load_prekey(6).await.unwrap(), Some(vec![0x60; 2]));
        assert_eq!(
            s.load_all_signed_prekeys().await.unwrap(),
            vec![(1, vec![0x53; 2])]
        );
        assert_eq!(
            s.get_sender_key("g@g.us::123::1").await.unwrap(),
            Some(vec![0x54; 2])
        );
        assert_eq!(
            s.get_sync_key(b"k1").await.unwrap().unwrap().key_data,
            vec![1; 32]
        );
        assert_eq!(s.get_version("regular").await.unwrap().version, 7);
        assert_eq!(
            s.get_mutation_mac("regular", &[1]).await.unwrap(),
            Some(vec![2, 2])
        );
        assert_eq!(
            s.get_skdm_recipients("g@g.us").await.unwrap(),
            vec!["123:1@s.whatsapp.net".parse::<wa_rs::Jid>().unwrap()]
        );
        let by_pn = s.get_pn_mapping("551").await.unwrap().unwrap();
        assert_eq!(
            (by_pn.lid.as_str(), by_pn.created_at, by_pn.updated_at),
            ("100", 10, 12)
        );
        assert!(
            s.has_same_base_key("123.0:1", "m1", &[0x42; 2])
                .await
                .unwrap()
        );
        let list = s.get_devices("123").await.unwrap().unwrap();
        assert_eq!(
            (list.devices.len(), list.timestamp, list.phash.as_deref()),
            (1, 14, Some("2:x"))
        );
        assert_eq!(
            s.consume_forget_marks("g@g.us").await.unwrap(),
            ["u1@s.whatsapp.net"]
        );
        let tc = s.get_tc_token("a@lid").await.unwrap().unwrap();
        assert_eq!(
            (tc.token, tc.token_timestamp, tc.sender_timestamp),
            (vec![0x71; 2], 17, None)
        );
        db.integrity_check().await.unwrap();

        // Nothing left to import.
        assert_eq!(import_legacy(&db, &sessions).await, ImportReport::default());
    }

    #[tokio::test]
    async fn bad_folders_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = dir.path().join("sessions");
        let db = Db::open(&dir.path().join("warden.db")).unwrap();
        // Not a token.
        std::fs::create_dir_all(sessions.join("bad name")).unwrap();
        std::fs::write(sessions.join("bad name").join(LEGACY_DB_FILE), b"x").unwrap();
        // A table wa-rs 0.2 does not have.
        let newer = sessions.join("newer");
        let (conn, _) = old_session(&newer);
        conn.execute_batch("CREATE TABLE future_keys (k BLOB)")
            .unwrap();
        drop(conn);
        // Held by a running process of the previous release.
        let (conn, _) = old_session(&sessions.join("running"));
        drop(conn);
        let held = SessionLock::acquire(&sessions.join("running")).unwrap();
        // No session.db: not a legacy folder.
        std::fs::create_dir_all(sessions.join("fresh")).unwrap();

        let before = std::fs::read(newer.join(LEGACY_DB_FILE)).unwrap();
        let report = import_legacy(&db, &sessions).await;
        assert!(report.imported.is_empty(), "{report:?}");
        let reasons: std::collections::BTreeMap<_, _> = report.failed.into_iter().collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons["bad name"].contains("not a token"), "{reasons:?}");
        assert!(reasons["newer"].contains("future_keys"), "{reasons:?}");
        assert!(reasons["running"].contains("in use"), "{reasons:?}");
        assert_eq!(std::fs::read(newer.join(LEGACY_DB_FILE)).unwrap(), before);
        assert!(newer.join(LOCK_FILE).exists());
        for token in ["newer", "running", "fresh"] {
            assert!(db.find_device(token).await.unwrap().is_none(), "{token}");
        }
        drop(held);
        assert_eq!(import_legacy(&db, &sessions).await.imported, ["running"]);
    }

    #[tokio::test]
    async fn a_token_already_in_the_database_only_loses_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = dir.path().join("sessions");
        let db = Db::open(&dir.path().join("warden.db")).unwrap();
        let (conn, _) = old_session(&sessions.join("shop1"));
        drop(conn);
        let device = db.open_device("shop1").await.unwrap();
        let report = import_legacy(&db, &sessions).await;
        assert_eq!(report.imported, ["shop1"]);
        assert!(!sessions.join("shop1").join(LEGACY_DB_FILE).exists());
        assert_eq!(db.find_device("shop1").await.unwrap(), Some(device));
        let s = SessionStore::new(db, device);
        assert!(
            !s.exists().await.unwrap(),
            "the database's device was kept as it was"
        );
    }
}
