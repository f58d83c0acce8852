//! The session store on PostgreSQL (`PgDb`), against a real server started by the test (Debian's
//! binaries, as in `warden-cluster`'s tests): the same keys as on SQLite, writes refused once
//! the writer's lease moved on, every acknowledged write committed, a broken connection made
//! again.

mod support;

use std::time::Duration;

use support::{
    Cluster, PATIENT, Postgres, TIMEOUT, store, store_with, until_a_backend_waits_for_a_lock,
};
use warden_cluster::{NodeKey, Pg};
use warden_store::{Db, DbError, DeviceId, Fence, Kv, PgDb, PgOptions};

/// The cluster's tables, node `a` holding `s1` under the returned fence, and a store.
async fn one_session(server: &Postgres) -> (Cluster, NodeKey, Fence, PgDb) {
    let cluster = Cluster::start(server).await;
    let a = cluster.node("a", 1).await;
    let fence = cluster.claim(&a, "s1").await;
    let pg = store(server).await;
    (cluster, a, fence, pg)
}

/// Writes, then reads and deletes, then reads: what each step saw, to compare backends.
fn write_step(kv: &mut Kv<'_>) -> Result<Vec<String>, DbError> {
    kv.set_device_blob(b"creds-1")?;
    kv.set_device_blob(b"creds-2")?;
    for (ns, key, value) in [
        (1, &b"alice.1"[..], &b"a1"[..]),
        (1, b"alice.2", b"a2"),
        (1, b"bob.1", b"b1"),
        (1, b"alice.1", b"a1-again"),
        (2, b"alice.1", b"other-ns"),
        (2, b"\xff\xff", b"top"),
        (2, b"\xff\xfe", b"below-top"),
    ] {
        kv.put(ns, key, value)?;
    }
    Ok(vec![format!("{:?}", kv.device_blob()?)])
}

fn read_step(kv: &mut Kv<'_>) -> Result<Vec<String>, DbError> {
    Ok(vec![
        format!("{:?}", kv.get(1, b"alice.1")?),
        format!("{:?}", kv.get(1, b"carol")?),
        format!("{:?}", kv.contains(2, b"alice.1")?),
        format!("{:?}", kv.contains(2, b"bob.1")?),
        format!("{:?}", kv.list(1)?),
        format!("{:?}", kv.list_prefix(1, b"alice.")?),
        format!("{:?}", kv.list_prefix(2, b"\xff")?),
        format!("{:?}", kv.list_prefix(2, b"")?),
        format!("{:?}", kv.device_blob()?),
    ])
}

fn delete_step(kv: &mut Kv<'_>) -> Result<Vec<String>, DbError> {
    Ok(vec![
        format!("{:?}", kv.delete(1, b"bob.1")?),
        format!("{:?}", kv.delete(1, b"bob.1")?),
        format!("{:?}", kv.delete_prefix(1, b"alice.")?),
        format!("{:?}", kv.delete_prefix(2, b"\xff")?),
        format!("{:?}", kv.list(1)?),
        format!("{:?}", kv.list(2)?),
    ])
}

#[tokio::test]
async fn keys_behave_the_same_on_postgresql_as_on_sqlite() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let (_cluster, _a, fence, pg) = one_session(&server).await;
    let device = pg.open_device("s1", &fence).await.unwrap();
    let mut on_pg = Vec::new();
    on_pg.extend(pg.kv(device, &fence, write_step).await.unwrap());
    on_pg.extend(pg.kv(device, &fence, read_step).await.unwrap());
    on_pg.extend(pg.kv(device, &fence, delete_step).await.unwrap());
    on_pg.extend(pg.kv(device, &fence, read_step).await.unwrap());

    let dir = tempfile::tempdir().unwrap();
    let sqlite = Db::open_in(dir.path()).unwrap();
    let device = sqlite.open_device("s1").await.unwrap();
    let mut on_sqlite = Vec::new();
    on_sqlite.extend(sqlite.kv(device, write_step).await.unwrap());
    on_sqlite.extend(sqlite.kv(device, read_step).await.unwrap());
    on_sqlite.extend(sqlite.kv(device, delete_step).await.unwrap());
    on_sqlite.extend(sqlite.kv(device, read_step).await.unwrap());

    assert_eq!(on_pg, on_sqlite);
    // The transcript says something: the prefix ending in 0xff and the empty one worked.
    assert!(on_pg.contains(&"2".to_owned()), "{on_pg:?}");
}

#[tokio::test]
async fn a_deposed_writer_is_refused_and_the_new_owners_keys_stay() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let cluster = Cluster::start(&server).await;
    let a = cluster.node("a", 1).await;
    let b = cluster.node("b", 2).await;
    let old = cluster.claim(&a, "s1").await;
    let pg = store(&server).await;
    let device = pg.open_device("s1", &old).await.unwrap();
    pg.kv(device, &old, |kv| kv.put(1, b"k", b"from a"))
        .await
        .unwrap();

    // The lease moves to b.
    cluster.release(&old, "s1").await;
    let new = cluster.claim(&b, "s1").await;
    assert!(new.fence > old.fence);
    pg.kv(device, &new, |kv| kv.put(1, b"k", b"from b"))
        .await
        .unwrap();

    // a, deposed, writes under its old fence: refused, and nothing of the job is kept (its
    // read went through; the write after it took the whole job back).
    let late = pg
        .kv(device, &old, |kv| {
            let seen = kv.get(1, b"k")?;
            kv.put(1, b"other", b"from a")?;
            Ok(seen)
        })
        .await;
    assert_eq!(
        late,
        Err(DbError::StaleFence {
            token: "s1".into(),
            fence: old.fence
        })
    );
    for refused in [
        pg.kv(device, &old, |kv| kv.set_device_blob(b"a's")).await,
        pg.kv(device, &old, |kv| kv.delete_prefix(1, b"").map(|_| ()))
            .await,
        pg.delete_device("s1", &old).await.map(|_| ()),
        pg.open_device("s1", &old).await.map(|_| ()),
    ] {
        assert!(
            matches!(refused, Err(DbError::StaleFence { .. })),
            "{refused:?}"
        );
    }
    let kept = pg.kv(device, &new, |kv| kv.list(1)).await.unwrap();
    assert_eq!(kept, vec![(b"k".to_vec(), b"from b".to_vec())]);
    let message = DbError::StaleFence {
        token: "s1".into(),
        fence: old.fence,
    }
    .to_string();
    assert!(
        message.contains("another node owns the session"),
        "{message}"
    );
}

#[tokio::test]
async fn every_acknowledged_write_is_committed_and_a_failing_one_alone_is_rolled_back() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let cluster = Cluster::start(&server).await;
    let a = cluster.node("a", 1).await;
    let pg = store(&server).await;
    let mut devices: Vec<(DeviceId, Fence)> = Vec::new();
    for n in 0..20 {
        let fence = cluster.claim(&a, &format!("s{n}")).await;
        devices.push((
            pg.open_device(&format!("s{n}"), &fence).await.unwrap(),
            fence,
        ));
    }
    let stale = Fence {
        fence: devices[0].1.fence + 1,
        ..devices[0].1.clone()
    };
    // 400 writers at once, and a stale one among them: they share group commits.
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..400u32 {
        let (device, fence) = devices[i as usize % devices.len()].clone();
        let pg = pg.clone();
        writers.spawn(async move {
            pg.kv(device, &fence, move |kv| {
                kv.put(1, &i.to_be_bytes(), format!("v{i}").as_bytes())
            })
            .await
        });
    }
    let (device, _) = devices[0].clone();
    let refused = pg.kv(device, &stale, |kv| kv.put(1, b"stale", b"x")).await;
    assert!(
        matches!(refused, Err(DbError::StaleFence { .. })),
        "{refused:?}"
    );
    while let Some(done) = writers.join_next().await {
        done.unwrap().unwrap();
    }
    pg.close().await;

    // Read back on a new connection: every acknowledged write is there.
    let pg = store(&server).await;
    let mut total = 0;
    for (device, fence) in &devices {
        let entries = pg.kv(*device, fence, |kv| kv.list(1)).await.unwrap();
        for (key, value) in &entries {
            let i = u32::from_be_bytes(key.as_slice().try_into().unwrap());
            assert_eq!(value, format!("v{i}").as_bytes());
        }
        total += entries.len();
    }
    assert_eq!(total, 400);
}

#[tokio::test]
async fn deleted_credentials_refuse_late_writes_and_their_id_is_never_reused() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let (_cluster, _a, fence, pg) = one_session(&server).await;
    let first = pg.open_device("s1", &fence).await.unwrap();
    pg.kv(first, &fence, |kv| kv.put(1, b"k", b"v"))
        .await
        .unwrap();
    assert!(pg.delete_device("s1", &fence).await.unwrap());
    assert!(!pg.delete_device("s1", &fence).await.unwrap());
    assert_eq!(pg.find_device("s1").await.unwrap(), None);
    let late = pg.kv(first, &fence, |kv| kv.put(1, b"k", b"again")).await;
    assert_eq!(late, Err(DbError::Closed));
    assert_eq!(pg.kv(first, &fence, |kv| kv.get(1, b"k")).await, Ok(None));
    let second = pg.open_device("s1", &fence).await.unwrap();
    assert!(second.0 > first.0, "{second:?} after {first:?}");
    assert_eq!(pg.find_device("s1").await.unwrap(), Some(second));
}

#[tokio::test]
async fn a_connection_the_server_ended_is_made_again_and_the_writes_go_on() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let (cluster, _a, fence, pg) = one_session(&server).await;
    let device = pg.open_device("s1", &fence).await.unwrap();
    pg.kv(device, &fence, |kv| kv.put(1, b"before", b"1"))
        .await
        .unwrap();

    // The server ends the store's connections (an administrator, a failover, a restart).
    let store_connections = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name = 'warden-store'";
    let ended = cluster
        .pg
        .client()
        .query(store_connections, &[])
        .await
        .unwrap();
    assert_eq!(
        ended.len(),
        PgOptions::default().connections,
        "the store holds its pool's connections"
    );
    // Once they are gone on the server's side, the next writes find them broken, connect
    // again, and go on: none fails.
    let gone = async {
        while !cluster
            .pg
            .client()
            .query(
                store_connections
                    .replace("pg_terminate_backend(pid)", "1")
                    .as_str(),
                &[],
            )
            .await
            .unwrap()
            .is_empty()
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(TIMEOUT, gone).await.unwrap();
    for key in [&b"after-1"[..], b"after-2"] {
        pg.kv(device, &fence, move |kv| kv.put(1, key, b"2"))
            .await
            .unwrap();
    }
    let keys = keys_of(&pg, device, &fence).await;
    assert_eq!(
        keys,
        vec![b"after-1".to_vec(), b"after-2".to_vec(), b"before".to_vec()]
    );
}

/// Polls `future` once: `true` if it is still pending (its job is then queued).
async fn queued<T>(future: &mut std::pin::Pin<Box<impl std::future::Future<Output = T>>>) -> bool {
    std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx).is_pending())).await
}

#[tokio::test]
async fn a_job_that_goes_on_after_a_failed_statement_is_undone_alone() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let mut cluster = Cluster::start(&server).await;
    let a = cluster.node("a", 1).await;
    let (f1, f2) = (cluster.claim(&a, "s1").await, cluster.claim(&a, "s2").await);
    // One connection: the two sessions' jobs share its batches.
    let pg = store_with(
        &server,
        PgOptions {
            connections: 1,
            ..PgOptions::default()
        },
    )
    .await;
    let d1 = pg.open_device("s1", &f1).await.unwrap();
    let d2 = pg.open_device("s2", &f2).await.unwrap();

    // A claim by another node holds s1's row: a write to s1 waits, then fails (lock timeout).
    let claim = cluster.pg.client_mut().transaction().await.unwrap();
    claim
        .query(
            "SELECT 1 FROM warden_session WHERE token = 's1' FOR UPDATE",
            &[],
        )
        .await
        .unwrap();

    // The owner thread is held while two jobs queue behind it, so they share one batch.
    let (started, running) = tokio::sync::oneshot::channel();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let holder = tokio::spawn({
        let (pg, f2) = (pg.clone(), f2.clone());
        async move {
            pg.kv(d2, &f2, move |_| {
                let _ = started.send(());
                let _ = held.recv();
                Ok(())
            })
            .await
        }
    });
    running.await.unwrap();
    let mut kept = Box::pin(pg.kv(d2, &f2, |kv| kv.put(1, b"kept", b"yes")));
    assert!(queued(&mut kept).await);
    // This job swallows its write's failure and goes on: PostgreSQL has aborted the
    // transaction under it.
    let mut careless = Box::pin(pg.kv(d1, &f1, |kv| Ok(kv.put(1, b"k", b"v").is_err())));
    assert!(queued(&mut careless).await);
    release.send(()).unwrap();

    holder.await.unwrap().unwrap();
    let careless = careless.await;
    assert!(
        matches!(careless, Err(DbError::Postgres(_))),
        "the job's own failure is its answer: {careless:?}"
    );
    kept.await.unwrap();
    claim.rollback().await.unwrap();
    assert_eq!(
        pg.kv(d2, &f2, |kv| kv.get(1, b"kept")).await.unwrap(),
        Some(b"yes".to_vec()),
        "the other job of the batch was answered ok: it is committed"
    );
    assert_eq!(pg.kv(d1, &f1, |kv| kv.get(1, b"k")).await.unwrap(), None);
}

/// Not a test: the write throughput of many sessions' keys on both stores (a benchmark; run
/// with `cargo test --release -p warden-store --test postgres -- --ignored --nocapture`;
/// `WARDEN_PG_CONNECTIONS` sets the pool's size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on its own, in release"]
async fn throughput_of_many_sessions_writing_keys() {
    const SESSIONS: usize = 1_000;
    const WRITES: usize = 20;
    let Some(server) = Postgres::start() else {
        return;
    };
    let cluster = Cluster::start(&server).await;
    let a = cluster.node("a", 1).await;
    let connections: usize = std::env::var("WARDEN_PG_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PgOptions::default().connections);
    let pg = store_with(
        &server,
        PgOptions {
            connections,
            ..PgOptions::default()
        },
    )
    .await;
    let mut devices = Vec::new();
    for n in 0..SESSIONS {
        let token = format!("s{n}");
        let fence = cluster.claim(&a, &token).await;
        devices.push((pg.open_device(&token, &fence).await.unwrap(), fence));
    }
    let started = std::time::Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for (device, fence) in devices.clone() {
        let pg = pg.clone();
        writers.spawn(async move {
            for i in 0..WRITES as u32 {
                pg.kv(device, &fence, move |kv| {
                    kv.put(1, &i.to_be_bytes(), &[7; 200])
                })
                .await
                .unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let on_pg = started.elapsed();

    let dir = tempfile::tempdir().unwrap();
    let sqlite = Db::open_in(dir.path()).unwrap();
    let mut devices = Vec::new();
    for n in 0..SESSIONS {
        devices.push(sqlite.open_device(&format!("s{n}")).await.unwrap());
    }
    let started = std::time::Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for device in devices {
        let sqlite = sqlite.clone();
        writers.spawn(async move {
            for i in 0..WRITES as u32 {
                sqlite
                    .kv(device, move |kv| kv.put(1, &i.to_be_bytes(), &[7; 200]))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let on_sqlite = started.elapsed();
    let total = (SESSIONS * WRITES) as f64;
    eprintln!(
        "{SESSIONS} sessions x {WRITES} fenced key writes, each acknowledged after its commit: \
         PostgreSQL ({connections} connections) {on_pg:.2?} ({:.0}/s), SQLite {on_sqlite:.2?} \
         ({:.0}/s)",
        total / on_pg.as_secs_f64(),
        total / on_sqlite.as_secs_f64()
    );
}

/// The keys in namespace 1 of `device`, read under `fence`.
async fn keys_of(pg: &PgDb, device: DeviceId, fence: &Fence) -> Vec<Vec<u8>> {
    pg.kv(device, fence, |kv| kv.list(1))
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// A write in flight holds its session's row: a claim by another node waits for it to
/// commit, so the write is kept whole, and every write under the old fence after the claim is
/// refused with `StaleFence`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_waits_for_a_write_in_flight_and_the_old_fence_is_refused_after() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let cluster = Cluster::start(&server).await;
    let a = cluster.node("a", 1).await;
    let b = cluster.node("b", 2).await;
    let fence = cluster.claim(&a, "s1").await;
    // The held write's transaction is ended by the server only after twice this.
    let pg = store_with(
        &server,
        PgOptions {
            statement_timeout: PATIENT,
            ..PgOptions::default()
        },
    )
    .await;
    let device = pg.open_device("s1", &fence).await.unwrap();

    // a's write, held open after its first statement (which checked the fence).
    let (go_on, hold) = std::sync::mpsc::channel::<()>();
    let (wrote, written) = tokio::sync::oneshot::channel::<()>();
    let write = tokio::spawn({
        let (pg, fence) = (pg.clone(), fence.clone());
        async move {
            pg.kv(device, &fence, move |kv| {
                kv.put(1, b"k", b"in flight")?;
                let _ = wrote.send(());
                let _ = hold.recv();
                kv.put(1, b"k2", b"in flight")
            })
            .await
        }
    });
    written.await.unwrap();

    // a is declared dead, and b claims the session: the claim waits for the write.
    let beat = cluster
        .pg
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.key == a)
        .unwrap()
        .beat;
    assert!(cluster.pg.reap(&a, beat).await.unwrap());
    let claim = tokio::spawn({
        // Its lock wait (half its deadline) outlasts a slow machine's steps below.
        let claimer = Pg::connect(&server.url(), PATIENT).await.unwrap();
        let b = b.clone();
        async move { claimer.claim(&b, "s1", fence.fence).await }
    });
    until_a_backend_waits_for_a_lock(&cluster.pg).await;
    assert!(!claim.is_finished(), "the claim waits for the write");

    go_on.send(()).unwrap();
    write.await.unwrap().expect("the write in flight is kept");
    let new = claim
        .await
        .unwrap()
        .unwrap()
        .expect("the claim wins after the write");
    assert_eq!(new, fence.fence + 1);

    // After the claim, a's fence is stale; b, under the new one, sees a's whole write.
    assert_eq!(
        pg.kv(device, &fence, |kv| kv.put(1, b"k3", b"late")).await,
        Err(DbError::StaleFence {
            token: "s1".into(),
            fence: fence.fence
        })
    );
    let new = Fence {
        node: b.node.clone(),
        incarnation: b.incarnation,
        fence: new,
    };
    let keys = keys_of(&pg, device, &new).await;
    assert_eq!(keys, vec![b"k".to_vec(), b"k2".to_vec()]);
}

/// A server that stops answering (its backend frozen with SIGSTOP: TCP still answered by the
/// kernel, and the server's own deadlines stopped with it) cannot hold a caller: the write is
/// answered `Unconfirmed` at the deadline. Once the server goes on, the write in fact commits,
/// which is why the answer is "unconfirmed" and not "not kept"; later writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_answers_unconfirmed_at_the_deadline_not_never() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let cluster = Cluster::start(&server).await;
    let a = cluster.node("a", 1).await;
    let fence = cluster.claim(&a, "s1").await;
    let deadline = Duration::from_millis(500);
    let pg = store_with(
        &server,
        PgOptions {
            connections: 1,
            answer_timeout: deadline,
            ..PgOptions::default()
        },
    )
    .await;
    let device = pg.open_device("s1", &fence).await.unwrap();
    let backend: i32 = cluster
        .pg
        .client()
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'warden-store'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let signal = |name: &str| {
        std::process::Command::new("kill")
            .args([name, &backend.to_string()])
            .status()
            .is_ok_and(|status| status.success())
    };
    /// Resumes the backend however the test ends.
    struct Resume<F: Fn(&str) -> bool>(F);
    impl<F: Fn(&str) -> bool> Drop for Resume<F> {
        fn drop(&mut self) {
            (self.0)("-CONT");
        }
    }

    assert!(signal("-STOP"), "kill -STOP");
    let resume = Resume(signal);
    let frozen = tokio::time::timeout(
        TIMEOUT,
        pg.kv(device, &fence, |kv| kv.put(1, b"while frozen", b"1")),
    )
    .await
    .expect("an answer at the store's deadline, not never");
    drop(resume);
    assert!(
        matches!(&frozen, Err(DbError::Unconfirmed(why)) if why.contains("no answer within")),
        "{frozen:?}"
    );

    // The server goes on: the unconfirmed write was kept after all, and the next one works.
    pg.kv(device, &fence, |kv| kv.put(1, b"after", b"2"))
        .await
        .unwrap();
    let keys = keys_of(&pg, device, &fence).await;
    assert_eq!(keys, vec![b"after".to_vec(), b"while frozen".to_vec()]);
}

#[tokio::test]
async fn the_store_talks_to_postgresql_over_tls_when_asked_to() {
    let Some((server, ca)) = Postgres::start_tls() else {
        return;
    };
    let _cluster = Cluster::start(&server).await; // the cluster's tables
    let tls = warden_cluster::PgTls::new(Some(&ca)).unwrap();
    let db = store_with(
        &server,
        PgOptions {
            connections: 1,
            tls: Some(tls),
            ..PgOptions::default()
        },
    )
    .await;
    assert!(db.create_session("s1", "record").await.unwrap());
    assert_eq!(
        db.load_records().await.unwrap(),
        vec![("s1".to_owned(), "record".to_owned())]
    );
    // The store's connection, as the server sees it.
    let watcher = Pg::connect(&server.url(), TIMEOUT).await.unwrap();
    let row = watcher
        .client()
        .query_one(
            "SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a \
             USING (pid) WHERE a.application_name = 'warden-store'",
            &[],
        )
        .await
        .unwrap();
    let (all_encrypted, connections): (bool, i64) = (row.get(0), row.get(1));
    assert_eq!(connections, 1);
    assert!(all_encrypted, "the store's connection is encrypted");

    // Against the web roots the test CA is unknown: the store cannot open.
    let url = server.url();
    let options = PgOptions {
        tls: Some(warden_cluster::PgTls::new(None).unwrap()),
        ..PgOptions::default()
    };
    let refused = tokio::task::spawn_blocking(move || PgDb::connect(&url, &options))
        .await
        .unwrap()
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
}
