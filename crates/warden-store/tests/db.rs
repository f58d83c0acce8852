//! The session database through its public API: commit before answer, one daemon, deletion
//! that cannot be undone by a late writer, jobs isolated from each other's failures.

use warden_store::{Db, DbError, RecordChange};

fn open() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_in(dir.path()).unwrap();
    (dir, db)
}

fn put(token: &str, text: &str) -> RecordChange {
    RecordChange::Put {
        token: token.into(),
        text: text.into(),
    }
}

#[tokio::test]
async fn records_are_written_replaced_removed_and_read_back_after_reopening() {
    let (dir, db) = open();
    db.write_records(vec![put("b", "two"), put("a", "one"), put("a", "uno")])
        .await
        .unwrap();
    db.write_records(vec![
        put("c", "three"),
        RecordChange::Remove { token: "b".into() },
    ])
    .await
    .unwrap();
    // The owner thread closes the file once the last handle is gone.
    db.close().await;
    let db = Db::open_in(dir.path()).unwrap();
    assert_eq!(
        db.load_records().await.unwrap(),
        vec![("a".into(), "uno".into()), ("c".into(), "three".into())]
    );
    assert!(
        !db.import_record("a", "other").await.unwrap(),
        "an import never overwrites"
    );
    assert!(db.import_record("d", "four").await.unwrap());
    db.integrity_check().await.unwrap();
}

#[tokio::test]
async fn a_second_opener_is_refused_while_the_first_holds_the_database() {
    let (dir, db) = open();
    let second = Db::open_in(dir.path());
    assert!(matches!(second, Err(DbError::InUse { .. })), "{second:?}");
    let message = second.unwrap_err().to_string();
    assert!(message.contains("in use by another process"), "{message}");
    db.sync().await.unwrap();
    // Closing waits for every handle: a clone that is still alive keeps the file held.
    let clone = db.clone();
    let closing = tokio::spawn(db.close());
    clone.sync().await.unwrap();
    assert!(!closing.is_finished(), "closed while a clone was alive");
    assert!(matches!(
        Db::open_in(dir.path()),
        Err(DbError::InUse { .. })
    ));
    drop(clone);
    closing.await.unwrap();
    Db::open_in(dir.path()).expect("released once closed");
}

#[tokio::test]
async fn deleting_a_device_removes_every_row_and_refuses_late_writes() {
    let (_dir, db) = open();
    db.write_records(vec![put("shop1", "record")])
        .await
        .unwrap();
    let device = db.open_device("shop1").await.unwrap();
    assert_eq!(
        db.open_device("shop1").await.unwrap(),
        device,
        "one device per token"
    );
    db.kv(device, |kv| {
        kv.set_device_blob(b"credentials")?;
        kv.put(1, b"alice", b"identity")?;
        kv.put(2, b"alice.1", b"session")?;
        kv.put(2, b"alice.2", b"session")?;
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(db.rows_of("shop1").await.unwrap(), 1 + 1 + 3);

    assert!(db.delete_device("shop1").await.unwrap());
    assert_eq!(
        db.rows_of("shop1").await.unwrap(),
        1,
        "the record stays on logout"
    );
    // A client still running with the old id cannot write keys back.
    let late = db.kv(device, |kv| kv.put(1, b"alice", b"again")).await;
    assert_eq!(late, Err(DbError::Closed));
    let late = db.kv(device, |kv| kv.set_device_blob(b"again")).await;
    assert_eq!(late, Err(DbError::Closed));
    assert_eq!(db.kv(device, |kv| kv.device_blob()).await.unwrap(), None);
    assert_eq!(db.orphan_rows().await.unwrap(), 0);

    // A new set of credentials gets a new id, never the old one.
    let fresh = db.open_device("shop1").await.unwrap();
    assert!(fresh.0 > device.0);
    db.write_records(vec![RecordChange::Remove {
        token: "shop1".into(),
    }])
    .await
    .unwrap();
    assert_eq!(
        db.rows_of("shop1").await.unwrap(),
        0,
        "delete leaves no rows"
    );
}

#[tokio::test]
async fn keys_are_listed_and_deleted_by_prefix() {
    let (_dir, db) = open();
    let device = db.open_device("t").await.unwrap();
    let listed = db
        .kv(device, |kv| {
            for key in [&b"g1\0a"[..], b"g1\0b", b"g2\0a"] {
                kv.put(7, key, b"x")?;
            }
            kv.put(8, b"g1\0c", b"other namespace")?;
            let listed = kv.list_prefix(7, b"g1\0")?;
            let removed = kv.delete_prefix(7, b"g1\0")?;
            Ok((listed.len(), removed, kv.list(7)?.len(), kv.list(8)?.len()))
        })
        .await
        .unwrap();
    assert_eq!(listed, (2, 2, 1, 1));
}

#[tokio::test]
async fn a_failing_job_is_rolled_back_alone_and_others_in_its_batch_commit() {
    let (_dir, db) = open();
    let device = db.open_device("t").await.unwrap();
    let mut calls = Vec::new();
    for i in 0..200u32 {
        let db = db.clone();
        calls.push(tokio::spawn(async move {
            db.kv(device, move |kv| {
                kv.put(1, &i.to_be_bytes(), b"v")?;
                if i % 10 == 0 {
                    return Err(DbError::Corrupt(format!("job {i} fails")));
                }
                if i % 10 == 5 {
                    panic!("job {i} panics");
                }
                Ok(())
            })
            .await
        }));
    }
    let mut failed = 0;
    for call in calls {
        if call.await.unwrap().is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 40);
    let kept = db.kv(device, |kv| kv.list(1)).await.unwrap();
    assert_eq!(kept.len(), 160, "only the failed jobs' writes were undone");
    assert!(kept.iter().all(|(k, _)| {
        let i = u32::from_be_bytes(k[..4].try_into().unwrap());
        i % 10 != 0 && i % 10 != 5
    }));
}

#[tokio::test]
async fn many_concurrent_callers_are_all_answered_and_kept() {
    let (dir, db) = open();
    let mut calls = Vec::new();
    for i in 0..5000u32 {
        let db = db.clone();
        calls.push(tokio::spawn(async move {
            db.write_records(vec![put(&format!("s{i}"), "r")]).await
        }));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    db.close().await;
    let db = Db::open_in(dir.path()).unwrap();
    assert_eq!(db.load_records().await.unwrap().len(), 5000);
}

/// The mode of a file, or `None` when it does not exist.
fn mode(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

#[tokio::test]
async fn the_database_and_its_wal_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, db) = open();
    db.write_records(vec![put("a", "proxy = \"socks5://u:secret@h:1\"")])
        .await
        .unwrap();
    let file = dir.path().join(warden_store::DB_FILE);
    let wal = dir.path().join(format!("{}-wal", warden_store::DB_FILE));
    assert_eq!(mode(&file), Some(0o600));
    assert_eq!(mode(&wal), Some(0o600), "the WAL holds the same secrets");
    db.close().await;
    // A database an earlier release left world-readable is narrowed when it is opened.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = Db::open_in(dir.path()).unwrap();
    assert_eq!(mode(&file), Some(0o600));
    db.close().await;
}
