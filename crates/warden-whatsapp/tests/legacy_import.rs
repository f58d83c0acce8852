//! Imports the session folders written by the previous release (one SQLite file per session,
//! `tests/fixtures/legacy-sessions/`, see its README) into the shared session database.

use std::path::{Path, PathBuf};

use wa_rs_core::store::traits::{DeviceStore, ProtocolStore};
use warden_store::Db;
use warden_whatsapp::store::{SessionStore, ns};
use warden_whatsapp::{ImportReport, import_legacy};

const OLD_FILES: [&str; 4] = ["session.db", "session.db-wal", "session.db-shm", "lock"];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-sessions")
}

/// Copies the fixture's session folders into `to`; returns the tokens that have a
/// `session.db` (the ones to import), sorted.
fn copy_fixture(to: &Path) -> Vec<String> {
    let mut tokens = Vec::new();
    for entry in std::fs::read_dir(fixture()).expect("the fixture folder") {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_dir() {
            continue;
        }
        let dest = to.join(entry.file_name());
        std::fs::create_dir_all(&dest).unwrap();
        for file in std::fs::read_dir(entry.path()).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), dest.join(file.file_name())).unwrap();
        }
        if dest.join("session.db").exists() {
            tokens.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    tokens.sort();
    tokens
}

/// Rows of `table` in the fixture's `token/session.db`, read from a throwaway copy (with its
/// WAL) so neither the fixture nor the copy under test is touched.
fn old_rows(token: &str, table: &str) -> usize {
    let scratch = tempfile::tempdir().unwrap();
    for file in ["session.db", "session.db-wal"] {
        let from = fixture().join(token).join(file);
        if from.exists() {
            std::fs::copy(from, scratch.path().join(file)).unwrap();
        }
    }
    let conn = rusqlite::Connection::open(scratch.path().join("session.db")).unwrap();
    let n: i64 = conn
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap();
    usize::try_from(n).unwrap()
}

#[tokio::test]
async fn the_previous_release_sessions_are_imported() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    let tokens = copy_fixture(&sessions);
    assert_eq!(
        tokens,
        ["shop1", "shop2"],
        "the fixture's two paired sessions"
    );
    let db = Db::open_in(&sessions).unwrap();

    let report = import_legacy(&db, &sessions).await;
    assert_eq!(report.imported, tokens);
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    for token in &tokens {
        let folder = sessions.join(token);
        for file in OLD_FILES {
            assert!(!folder.join(file).exists(), "{token}/{file} is deleted");
        }
        assert!(
            folder.join("session.toml").exists(),
            "{token}/session.toml is kept"
        );

        let device = db.find_device(token).await.unwrap().expect("a device");
        let store = SessionStore::new(db.clone(), device);
        let loaded = store.load().await.unwrap().expect("the device blob");
        assert!(loaded.pn.is_some(), "{token} is paired");
        assert!(loaded.lid.is_some(), "{token} has its LID");
        assert!(loaded.account.is_some(), "{token} has its signed identity");

        // Every old row is there (the fixture's Signal tables are empty: its README).
        for (namespace, table) in [
            (ns::IDENTITY, "identities"),
            (ns::PREKEY, "prekeys"),
            (ns::SESSION, "sessions"),
            (ns::SIGNED_PREKEY, "signed_prekeys"),
            (ns::LID_MAPPING, "lid_pn_mapping"),
            (ns::PN_INDEX, "lid_pn_mapping"),
        ] {
            let keys = db
                .kv(device, move |kv| Ok(kv.list(namespace)?.len()))
                .await
                .unwrap();
            assert_eq!(
                keys,
                old_rows(token, table),
                "{token}: {table} in namespace {namespace}"
            );
        }
        let mappings = store.get_all_lid_mappings().await.unwrap();
        assert!(
            !mappings.is_empty(),
            "{token}: the LID mapping learned at pairing"
        );
        for m in mappings {
            let by_pn = store
                .get_pn_mapping(&m.phone_number)
                .await
                .unwrap()
                .unwrap();
            assert_eq!((by_pn.lid, by_pn.created_at), (m.lid, m.created_at));
        }
    }
    // A folder without a session.db is not an old session.
    assert!(db.find_device("idle3").await.unwrap().is_none());
    assert!(sessions.join("idle3/session.toml").exists());
    db.integrity_check().await.unwrap();

    assert_eq!(
        import_legacy(&db, &sessions).await,
        ImportReport::default(),
        "a second run does nothing"
    );
}

#[tokio::test]
async fn a_corrupt_file_is_reported_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    let tokens = copy_fixture(&sessions);
    let broken = sessions.join("broken_one");
    std::fs::create_dir_all(&broken).unwrap();
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(broken.join("session.db"), &garbage).unwrap();
    std::fs::write(broken.join("lock"), b"").unwrap();
    let db = Db::open_in(&sessions).unwrap();

    let report = import_legacy(&db, &sessions).await;
    assert_eq!(report.imported, tokens, "the good ones still import");
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    let (token, reason) = &report.failed[0];
    assert_eq!(token, "broken_one");
    assert!(reason.contains("session.db"), "{reason}");
    assert_eq!(std::fs::read(broken.join("session.db")).unwrap(), garbage);
    let mut left: Vec<_> = std::fs::read_dir(&broken)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["lock", "session.db"], "nothing added or removed");
    assert!(db.find_device("broken_one").await.unwrap().is_none());
    db.integrity_check().await.unwrap();
}
