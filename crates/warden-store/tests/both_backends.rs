//! Session records and the event journal, the same suite on both backends: SQLite's `Db`, and
//! PostgreSQL's `PgDb` (a real server started by the test, skipped where none is installed)
//! with one node holding every session it writes. Then what only the cluster has: sessions
//! created once for every node, commits refused whole under a stale lease, journal numbers
//! made visible in order whichever node appends.

mod support;

use std::collections::HashMap;
use std::sync::Mutex;

use support::{
    Cluster, PATIENT, Postgres, TIMEOUT, store, store_with, until_a_backend_waits_for_a_lock,
};
use warden_cluster::{NodeKey, Pg};
use warden_store::{
    Db, DbError, DeadLetter, Fence, JournalChange, JournalEntry, NewJournalEntry, NewOutboxMessage,
    OutboxChange, OutboxRow, PgDb, PgOptions, RecordChange,
};

/// The same call on whichever store `$store` is (the calls that take no fence).
macro_rules! on_either {
    ($store:expr, $db:ident => $call:expr) => {
        match $store {
            Store::Sqlite { db: $db, .. } => $call,
            Store::Postgres { db: $db, .. } => $call,
        }
    };
}

/// The store under test.
#[allow(clippy::large_enum_variant)] // one or two per test, never moved in a loop
enum Store {
    Sqlite {
        db: Db,
        _dir: tempfile::TempDir,
    },
    Postgres {
        db: PgDb,
        cluster: Cluster,
        me: NodeKey,
        /// The fence of each session this node claimed (claimed on its first write).
        fences: Mutex<HashMap<String, Fence>>,
        _server: Postgres,
    },
}

impl Store {
    /// SQLite's, and PostgreSQL's when a server can be started.
    async fn every() -> Vec<Store> {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = vec![Store::Sqlite {
            db: Db::open_in(dir.path()).unwrap(),
            _dir: dir,
        }];
        if let Some(server) = Postgres::start() {
            let cluster = Cluster::start(&server).await;
            let me = cluster.node("a", 1).await;
            stores.push(Store::Postgres {
                db: store(&server).await,
                cluster,
                me,
                fences: Mutex::new(HashMap::new()),
                _server: server,
            });
        }
        stores
    }

    /// Lets go of the store and opens it again (on PostgreSQL: as a node started afresh,
    /// with the same leases).
    async fn reopen(self) -> Store {
        match self {
            Store::Sqlite { db, _dir } => {
                db.close().await;
                Store::Sqlite {
                    db: Db::open_in(_dir.path()).unwrap(),
                    _dir,
                }
            }
            Store::Postgres {
                db,
                cluster,
                me,
                fences,
                _server,
            } => {
                db.close().await;
                Store::Postgres {
                    db: store(&_server).await,
                    cluster,
                    me,
                    fences,
                    _server,
                }
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Store::Sqlite { .. } => "sqlite",
            Store::Postgres { .. } => "postgres",
        }
    }

    /// Claims, on PostgreSQL, every session `changes` and `journal` write that this node does
    /// not hold yet; returns the fences.
    async fn fences_for(
        &self,
        changes: &[RecordChange],
        journal: &[JournalChange],
    ) -> HashMap<String, Fence> {
        let Store::Postgres {
            cluster,
            me,
            fences,
            ..
        } = self
        else {
            return HashMap::new();
        };
        let tokens = changes
            .iter()
            .map(|c| match c {
                RecordChange::Put { token, .. } | RecordChange::Remove { token } => token.clone(),
            })
            .chain(journal.iter().filter_map(|c| match c {
                JournalChange::Append(new) => Some(new.token.clone()),
                JournalChange::Prune { .. } => None,
            }));
        for token in tokens {
            let held = fences.lock().unwrap().contains_key(&token);
            if !held {
                let fence = cluster.claim(me, &token).await;
                fences.lock().unwrap().insert(token, fence);
            }
        }
        fences.lock().unwrap().clone()
    }

    async fn commit(
        &self,
        changes: Vec<RecordChange>,
        journal: Vec<JournalChange>,
    ) -> Result<Option<i64>, DbError> {
        let fences = self.fences_for(&changes, &journal).await;
        let removed: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                RecordChange::Remove { token } => Some(token.clone()),
                RecordChange::Put { .. } => None,
            })
            .collect();
        let last = match self {
            Store::Sqlite { db, .. } => db.commit(changes, journal).await?,
            Store::Postgres {
                db, fences: held, ..
            } => {
                let last = db.commit(fences, changes, journal).await?;
                let mut held = held.lock().unwrap();
                for token in removed {
                    held.remove(&token);
                }
                last
            }
        };
        Ok(last)
    }

    async fn load_records(&self) -> Vec<(String, String)> {
        on_either!(self, db => db.load_records().await).unwrap()
    }

    async fn read_journal(&self, token: Option<&str>, after: i64) -> Vec<JournalEntry> {
        let token = token.map(str::to_owned);
        on_either!(self, db => db.read_journal(token, after, 100).await).unwrap()
    }

    async fn journal_tail(&self, token: &str, limit: usize) -> Vec<JournalEntry> {
        on_either!(self, db => db.journal_tail(token.into(), limit).await).unwrap()
    }

    async fn journal_before(&self, token: &str, seq: i64, kind: &str) -> Vec<JournalEntry> {
        let (token, kind) = (token.to_owned(), kind.to_owned());
        on_either!(self, db => db.journal_before(token, seq, kind, 100).await).unwrap()
    }

    async fn journal_head(&self) -> i64 {
        on_either!(self, db => db.journal_head().await).unwrap()
    }

    async fn journal_count(&self, token: &str) -> usize {
        on_either!(self, db => db.journal_count(token.into()).await).unwrap()
    }

    /// The fence this node holds `token` under (claimed now if it holds none).
    async fn fence(&self, token: &str) -> Option<Fence> {
        let fences = self.fences_for(&[put_record(token, "")], &[]).await;
        fences.get(token).cloned()
    }

    async fn outbox_insert(&self, message: NewOutboxMessage) -> Result<(OutboxRow, bool), DbError> {
        match self {
            Store::Sqlite { db, .. } => db.outbox_insert(message).await,
            Store::Postgres { db, .. } => {
                let fence = self.fence(&message.token).await.unwrap();
                db.outbox_insert(message, &fence).await
            }
        }
    }

    async fn outbox_apply(
        &self,
        token: &str,
        id: &str,
        decide: impl FnOnce(&OutboxRow) -> Option<OutboxChange> + Send + 'static,
    ) -> Option<(OutboxRow, bool)> {
        match self {
            Store::Sqlite { db, .. } => db.outbox_apply(token, id, decide).await,
            Store::Postgres { db, .. } => {
                let fence = self.fence(token).await.unwrap();
                db.outbox_apply(token, id, &fence, decide).await
            }
        }
        .unwrap()
    }

    async fn outbox_get(&self, token: &str, id_or_key: &str) -> Option<OutboxRow> {
        on_either!(self, db => db.outbox_get(token, id_or_key).await).unwrap()
    }

    async fn outbox_by_key(&self, token: &str, key: &str) -> Option<OutboxRow> {
        on_either!(self, db => db.outbox_by_key(token, key).await).unwrap()
    }

    /// The ids of `token`'s messages in `statuses`, in send order.
    async fn outbox_list(&self, token: &str, statuses: &[&str]) -> Vec<String> {
        on_either!(self, db => db.outbox_list(token, statuses, 10).await)
            .unwrap()
            .into_iter()
            .map(|row| row.id)
            .collect()
    }

    async fn outbox_has_chat(&self, token: &str, to: &str, statuses: &[&str]) -> bool {
        on_either!(self, db => db.outbox_has_chat(token, to, statuses).await).unwrap()
    }

    /// The ids of every session's messages in `status` expiring by `now`, oldest first.
    async fn outbox_expiring(&self, status: &str, now: i64) -> Vec<String> {
        on_either!(self, db => db.outbox_expiring(status, now).await)
            .unwrap()
            .into_iter()
            .map(|row| row.id)
            .collect()
    }

    async fn outbox_prune(&self, keep_status: &str, before: i64) -> u64 {
        on_either!(self, db => db.outbox_prune(keep_status, before).await).unwrap()
    }

    /// Gives `token` credentials and one key.
    async fn put_key(&self, token: &str) {
        let put = |kv: &mut warden_store::Kv<'_>| {
            kv.set_device_blob(b"creds")?;
            kv.put(1, b"k", b"v")
        };
        match self {
            Store::Sqlite { db, .. } => {
                let device = db.open_device(token).await.unwrap();
                db.kv(device, put).await.unwrap();
            }
            Store::Postgres { db, .. } => {
                let fence = self.fences_for(&[put_record(token, "")], &[]).await[token].clone();
                let device = db.open_device(token, &fence).await.unwrap();
                db.kv(device, &fence, put).await.unwrap();
            }
        }
    }

    /// Whether `token` has credentials.
    async fn has_credentials(&self, token: &str) -> bool {
        on_either!(self, db => db.find_device(token).await)
            .unwrap()
            .is_some()
    }
}

fn put_record(token: &str, text: &str) -> RecordChange {
    RecordChange::Put {
        token: token.into(),
        text: text.into(),
    }
}

fn remove(token: &str) -> RecordChange {
    RecordChange::Remove {
        token: token.into(),
    }
}

/// An entry of `token` with `key` (collapsing) at `at`, keeping `keep` entries.
fn entry(token: &str, key: &str, at: i64, keep: u32) -> JournalChange {
    JournalChange::Append(NewJournalEntry {
        token: token.into(),
        kind: "session.status".into(),
        key: key.into(),
        data: format!("{{\"key\":\"{key}\"}}"),
        at,
        keep,
    })
}

#[tokio::test]
async fn records_are_written_replaced_and_removed_in_one_commit_each() {
    for store in Store::every().await {
        let name = store.name();
        store
            .commit(
                vec![
                    put_record("b", "two"),
                    put_record("a", "one"),
                    put_record("a", "uno"),
                ],
                vec![],
            )
            .await
            .unwrap();
        store
            .commit(vec![put_record("c", "three"), remove("b")], vec![])
            .await
            .unwrap();
        assert_eq!(
            store.load_records().await,
            vec![("a".into(), "uno".into()), ("c".into(), "three".into())],
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_loop_of_transitions_collapses_into_one_row_per_transition_with_counts() {
    for store in Store::every().await {
        let name = store.name();
        let mut changes = vec![entry("a", "start", 1, 100)];
        for i in 0..50 {
            for key in ["connecting", "backing_off", "queued"] {
                changes.push(entry("a", key, 10 + i, 100));
            }
        }
        changes.push(entry("a", "", 99, 100));
        changes.push(entry("a", "", 100, 100));
        let last = store.commit(vec![], changes).await.unwrap();
        let rows = store.read_journal(Some("a"), 0).await;
        let counts: Vec<u32> = rows.iter().map(|e| e.repeats).collect();
        assert_eq!(counts, vec![1, 50, 50, 50, 1, 1], "{name}");
        assert!(
            rows[3].data.contains("queued"),
            "{name}: in the order they last happened"
        );
        assert_eq!((rows[1].first_at, rows[1].at), (10, 59), "{name}");
        assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq), "{name}");
        assert_eq!(
            last,
            Some(rows[5].seq),
            "{name}: the commit gives the last number"
        );
    }
}

#[tokio::test]
async fn each_session_keeps_its_newest_entries_and_numbers_are_never_reused() {
    for store in Store::every().await {
        let name = store.name();
        let changes = (0..30).map(|i| entry("a", "", i, 10)).collect();
        store.commit(vec![], changes).await.unwrap();
        store
            .commit(vec![], vec![entry("b", "", 5, 10)])
            .await
            .unwrap();
        let a = store.read_journal(Some("a"), 0).await;
        assert_eq!(a.len(), 10, "{name}");
        assert_eq!(a[0].at, 20, "{name}");
        assert_eq!(store.journal_count("b").await, 1, "{name}");
        assert_eq!(store.journal_head().await, 31, "{name}");
        let everyone = store.read_journal(None, 25).await;
        let seqs: Vec<i64> = everyone.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![26, 27, 28, 29, 30, 31], "{name}");
        store
            .commit(vec![], vec![JournalChange::Prune { before: 25 }])
            .await
            .unwrap();
        assert_eq!(store.journal_count("a").await, 5, "{name}");
        assert_eq!(store.journal_count("b").await, 0, "{name}");
        store
            .commit(vec![], vec![entry("b", "", 50, 10)])
            .await
            .unwrap();
        assert_eq!(store.journal_head().await, 32, "{name}: never reused");
    }
}

#[tokio::test]
async fn the_tail_and_the_entries_before_one_come_oldest_first() {
    for store in Store::every().await {
        let name = store.name();
        let mut changes: Vec<JournalChange> = (0..6).map(|i| entry("a", "", i, 100)).collect();
        changes.push(JournalChange::Append(NewJournalEntry {
            kind: "message".into(),
            ..match entry("a", "", 6, 100) {
                JournalChange::Append(new) => new,
                JournalChange::Prune { .. } => unreachable!(),
            }
        }));
        store.commit(vec![], changes).await.unwrap();
        let ats = |rows: Vec<JournalEntry>| rows.into_iter().map(|e| e.at).collect::<Vec<_>>();
        assert_eq!(
            ats(store.journal_tail("a", 3).await),
            vec![4, 5, 6],
            "{name}"
        );
        let all = store.read_journal(Some("a"), 0).await;
        let before = store
            .journal_before("a", all[4].seq, "session.status")
            .await;
        assert_eq!(ats(before), vec![0, 1, 2, 3], "{name}");
        assert!(store.journal_tail("nobody", 3).await.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn removing_a_session_takes_its_credentials_and_journal_and_keeps_its_last_entry() {
    for store in Store::every().await {
        let name = store.name();
        store
            .commit(vec![put_record("a", "one"), put_record("b", "two")], vec![])
            .await
            .unwrap();
        store.put_key("a").await;
        store.put_key("b").await;
        let entries = (0..3).flat_map(|i| [entry("a", "", i, 100), entry("b", "", i, 100)]);
        store.commit(vec![], entries.collect()).await.unwrap();
        store
            .commit(vec![remove("a")], vec![entry("a", "", 9, 100)])
            .await
            .unwrap();
        assert!(!store.has_credentials("a").await, "{name}");
        assert!(store.has_credentials("b").await, "{name}");
        let left: Vec<i64> = store
            .read_journal(Some("a"), 0)
            .await
            .iter()
            .map(|e| e.at)
            .collect();
        assert_eq!(left, vec![9], "{name}: only the removal's own entry");
        assert_eq!(store.journal_count("b").await, 3, "{name}");
        assert_eq!(
            store.load_records().await,
            vec![("b".into(), "two".into())],
            "{name}"
        );
    }
}

fn message(token: &str, id: &str, key: &str, to: &str) -> NewOutboxMessage {
    NewOutboxMessage {
        token: token.into(),
        id: id.into(),
        key: key.into(),
        to: to.into(),
        text: format!("text of {id}"),
        status: "queued".into(),
        created_at: 1_000,
        expires_at: Some(5_000),
    }
}

/// Marks a message sent at `at`.
fn sent(at: i64) -> impl FnOnce(&OutboxRow) -> Option<OutboxChange> + Send + 'static {
    move |row| {
        assert_eq!(row.status, "queued");
        Some(OutboxChange {
            status: "sent".into(),
            reason: None,
            code: None,
            attempts: row.attempts + 1,
            at,
            expires_at: row.expires_at,
        })
    }
}

#[tokio::test]
async fn the_outbox_keeps_one_message_per_key_in_order_across_a_reopen() {
    for store in Store::every().await {
        let name = store.name();
        // No row outlives its session: a session without a record takes no message.
        assert_eq!(
            store.outbox_insert(message("s", "A0", "k0", "1@x")).await,
            Err(DbError::Closed),
            "{name}"
        );
        store
            .commit(
                vec![put_record("s", "record"), put_record("other", "record")],
                vec![],
            )
            .await
            .unwrap();
        let (first, new) = store
            .outbox_insert(message("s", "A1", "k1", "1@x"))
            .await
            .unwrap();
        assert!(new, "{name}");
        let (again, new) = store
            .outbox_insert(message("s", "A2", "k1", "2@x"))
            .await
            .unwrap();
        assert!(!new, "{name}: a repeated key is not a new message");
        assert_eq!(again, first, "{name}: and answers with the first one");
        store
            .outbox_insert(message("s", "B1", "k2", "1@x"))
            .await
            .unwrap();
        store
            .outbox_insert(message("other", "C1", "k1", "1@x"))
            .await
            .unwrap();

        // A change is decided from the row as it is, in the same transaction.
        let (after, changed) = store.outbox_apply("s", "A1", sent(2_000)).await.unwrap();
        assert!(changed, "{name}");
        assert_eq!(
            (after.status.as_str(), after.attempts, after.updated_at),
            ("sent", 1, 2_000),
            "{name}"
        );
        let (_, changed) = store.outbox_apply("s", "A1", |_| None).await.unwrap();
        assert!(!changed, "{name}");
        assert!(
            store.outbox_apply("s", "nope", |_| None).await.is_none(),
            "{name}"
        );

        let store = store.reopen().await;
        assert_eq!(store.outbox_list("s", &["queued"]).await, ["B1"], "{name}");
        assert_eq!(
            store.outbox_list("s", &["sent", "queued"]).await,
            ["A1", "B1"],
            "{name}: send order"
        );
        assert_eq!(
            store.outbox_get("s", "k2").await.unwrap().id,
            "B1",
            "{name}: by key"
        );
        assert_eq!(
            store.outbox_by_key("s", "k2").await.unwrap().id,
            "B1",
            "{name}"
        );
        assert!(
            store.outbox_by_key("s", "B1").await.is_none(),
            "{name}: an id is not a key"
        );
        assert_eq!(
            store.outbox_get("s", "A1").await.unwrap().key,
            "k1",
            "{name}: by id"
        );
        assert!(store.outbox_has_chat("s", "1@x", &["sent"]).await, "{name}");
        assert!(
            !store.outbox_has_chat("s", "2@x", &["sent"]).await,
            "{name}"
        );
        assert_eq!(
            store.outbox_expiring("queued", 5_000).await,
            ["B1", "C1"],
            "{name}"
        );
        assert!(
            store.outbox_expiring("queued", 4_999).await.is_empty(),
            "{name}"
        );
        assert_eq!(
            store.outbox_prune("queued", 2_001).await,
            1,
            "{name}: A1, sent"
        );
        assert_eq!(
            store.outbox_list("s", &["sent", "queued"]).await,
            ["B1"],
            "{name}"
        );

        // Removing a session removes its outbox, and only its own.
        store.commit(vec![remove("s")], vec![]).await.unwrap();
        assert!(store.outbox_get("s", "B1").await.is_none(), "{name}");
        assert!(store.outbox_get("other", "C1").await.is_some(), "{name}");
    }
}

#[tokio::test]
async fn a_webhook_starts_at_the_head_and_resumes_from_its_cursor_per_session() {
    for store in Store::every().await {
        let name = store.name();
        store
            .commit(vec![], vec![entry("a", "", 1, 100)])
            .await
            .unwrap();
        let register = || async { on_either!(&store, db => db.webhook_register("h".into()).await) };
        assert_eq!(register().await.unwrap(), 1, "{name}");
        assert_eq!(register().await.unwrap(), 1, "{name}: kept");
        let changes = (0..3).flat_map(|i| [entry("a", "", i, 100), entry("b", "", i, 100)]);
        store.commit(vec![], changes.collect()).await.unwrap();
        let pending = || async {
            on_either!(&store, db => db.webhook_pending("h".into(), None, 0, 100).await)
                .unwrap()
                .into_iter()
                .map(|e| (e.token, e.seq))
                .collect::<Vec<_>>()
        };
        assert_eq!(pending().await.len(), 6, "{name}");
        on_either!(&store, db => db.webhook_advance("h".into(), "a".into(), 4, None).await)
            .unwrap();
        let expected: Vec<(String, i64)> = vec![
            ("b".into(), 3),
            ("b".into(), 5),
            ("a".into(), 6),
            ("b".into(), 7),
        ];
        assert_eq!(pending().await, expected, "{name}");
        let only_a = on_either!(&store, db => db.webhook_pending("h".into(), Some("a".into()), 0, 100).await);
        assert_eq!(only_a.unwrap().len(), 1, "{name}");

        let dead = DeadLetter {
            hook: "h".into(),
            seq: 6,
            token: "a".into(),
            kind: "session.status".into(),
            body: "{}".into(),
            reason: "410 Gone".into(),
            attempts: 1,
            failed_at: 9,
        };
        let letter = Some(dead.clone());
        on_either!(&store, db => db.webhook_advance("h".into(), "a".into(), 6, letter).await)
            .unwrap();
        let letters = on_either!(&store, db => db.dead_letters(None, 10).await).unwrap();
        assert_eq!(letters, vec![dead.clone()], "{name}");
        let taken = on_either!(&store, db => db.take_dead_letters("h".into(), Some(6)).await);
        assert_eq!(taken.unwrap(), vec![dead], "{name}");
        let letters = on_either!(&store, db => db.dead_letters(None, 10).await).unwrap();
        assert!(letters.is_empty(), "{name}");

        on_either!(&store, db => db.webhook_skip("h".into(), vec![("b".into(), 7)]).await).unwrap();
        assert!(pending().await.is_empty(), "{name}");
        on_either!(&store, db => db.webhook_rewind("h".into(), 2).await).unwrap();
        assert_eq!(pending().await.len(), 6, "{name}: replayed from entry 2");
        let unknown = on_either!(&store, db => db.webhook_rewind("nope".into(), 2).await);
        assert!(unknown.is_err(), "{name}");
    }
}

#[tokio::test]
async fn a_sessions_own_webhooks_and_the_identity_are_kept_and_go_with_the_session() {
    for store in Store::every().await {
        let name = store.name();
        let identity = |candidate: &str| {
            let candidate = candidate.to_owned();
            async { on_either!(&store, db => db.identity(candidate).await) }
        };
        assert_eq!(identity("first").await.unwrap(), "first", "{name}");
        assert_eq!(
            identity("second").await.unwrap(),
            "first",
            "{name}: made once"
        );

        store
            .commit(vec![put_record("a", "one"), put_record("b", "two")], vec![])
            .await
            .unwrap();
        for (hook, token, config) in [
            ("ha", "a", "url-1"),
            ("hb", "b", "url-2"),
            ("ha", "a", "url-3"),
        ] {
            let (hook, token, config) = (hook.to_owned(), token.to_owned(), config.to_owned());
            on_either!(&store, db => db.put_session_webhook(hook, token, config).await).unwrap();
        }
        let hooks = || async { on_either!(&store, db => db.session_webhooks().await) };
        let expected: Vec<(String, String, String)> = vec![
            ("ha".into(), "a".into(), "url-3".into()),
            ("hb".into(), "b".into(), "url-2".into()),
        ];
        assert_eq!(hooks().await.unwrap(), expected, "{name}");

        // Deleting a session stops its webhooks being started; removing one is final.
        store.commit(vec![remove("a")], vec![]).await.unwrap();
        assert_eq!(hooks().await.unwrap(), expected[1..], "{name}");
        let removed = on_either!(&store, db => db.remove_session_webhook("hb".into()).await);
        assert!(removed.unwrap(), "{name}");
        let again = on_either!(&store, db => db.remove_session_webhook("hb".into()).await);
        assert!(!again.unwrap(), "{name}");
        assert!(hooks().await.unwrap().is_empty(), "{name}");
    }
}

// What only PostgreSQL has: several nodes over one database.

/// A server, the cluster's tables, and a store; `None` where PostgreSQL is not installed.
async fn cluster() -> Option<(Postgres, Cluster, PgDb)> {
    let server = Postgres::start()?;
    let cluster = Cluster::start(&server).await;
    let db = store(&server).await;
    Some((server, cluster, db))
}

/// `fence`, as the map a commit takes.
fn fences(held: &[(&str, &Fence)]) -> HashMap<String, Fence> {
    held.iter()
        .map(|(token, fence)| ((*token).to_owned(), (*fence).clone()))
        .collect()
}

#[tokio::test]
async fn a_session_is_created_once_for_the_whole_cluster_and_announced_to_the_nodes() {
    let Some((server, cluster, db)) = cluster().await else {
        return;
    };
    assert_eq!(warden_store::RELEASED_CHANNEL, warden_cluster::RELEASED);
    let listener = Pg::connect(&server.url(), TIMEOUT).await.unwrap();
    listener.listen_for_releases().await.unwrap();
    let announced = listener.wake();
    let announcement = announced.notified();

    assert!(db.create_session("s1", "first").await.unwrap());
    tokio::time::timeout(TIMEOUT, announcement)
        .await
        .expect("the nodes are told the new session may be claimed");
    let other_node = store(&server).await;
    assert!(
        !other_node.create_session("s1", "second").await.unwrap(),
        "created once"
    );
    assert_eq!(
        db.load_records().await.unwrap(),
        vec![("s1".into(), "first".into())]
    );
    let claimable = cluster.pg.claimable().await.unwrap();
    assert_eq!(claimable, vec![("s1".to_owned(), 0)], "unowned, at fence 0");
}

#[tokio::test]
async fn a_commit_touching_a_session_held_elsewhere_keeps_nothing_of_itself() {
    let Some((_server, cluster, db)) = cluster().await else {
        return;
    };
    let a = cluster.node("a", 1).await;
    let b = cluster.node("b", 1).await;
    let s1 = cluster.claim(&a, "s1").await;
    let s2 = cluster.claim(&a, "s2").await;
    db.commit(
        fences(&[("s1", &s1), ("s2", &s2)]),
        vec![put_record("s1", "a-1"), put_record("s2", "a-1")],
        vec![],
    )
    .await
    .unwrap();
    cluster.release(&s2, "s2").await;
    let s2_on_b = cluster.claim(&b, "s2").await;
    db.commit(
        fences(&[("s2", &s2_on_b)]),
        vec![put_record("s2", "b-1")],
        vec![],
    )
    .await
    .unwrap();

    // a still has its old fence of s2: its commit is refused whole, s1's part too.
    let refused = db
        .commit(
            fences(&[("s1", &s1), ("s2", &s2)]),
            vec![put_record("s1", "a-2"), put_record("s2", "a-2")],
            vec![entry("s1", "", 1, 100)],
        )
        .await;
    assert_eq!(
        refused,
        Err(DbError::StaleFence {
            token: "s2".into(),
            fence: s2.fence
        })
    );
    let unfenced = db
        .commit(fences(&[]), vec![put_record("s1", "a-2")], vec![])
        .await;
    assert_eq!(unfenced, Err(DbError::NotHeld("s1".into())));
    assert_eq!(
        db.load_records().await.unwrap(),
        vec![("s1".into(), "a-1".into()), ("s2".into(), "b-1".into())]
    );
    assert!(db.read_journal(None, 0, 100).await.unwrap().is_empty());

    // Alone, s1's change goes through.
    db.commit(
        fences(&[("s1", &s1)]),
        vec![put_record("s1", "a-2")],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(db.load_records().await.unwrap()[0].1, "a-2");
}

#[tokio::test]
async fn a_removal_keeps_its_own_entries_and_nothing_of_the_session_is_written_after_it() {
    let Some((_server, cluster, db)) = cluster().await else {
        return;
    };
    let a = cluster.node("a", 1).await;
    let s1 = cluster.claim(&a, "s1").await;
    db.commit(
        fences(&[("s1", &s1)]),
        vec![put_record("s1", "a-1")],
        vec![entry("s1", "", 1, 100)],
    )
    .await
    .unwrap();
    // The removal and its own entry, in one commit: the entry stays, the earlier one goes.
    db.commit(
        fences(&[("s1", &s1)]),
        vec![remove("s1")],
        vec![entry("s1", "", 7, 100)],
    )
    .await
    .unwrap();
    let kept: Vec<i64> = db
        .read_journal(Some("s1".into()), 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(kept, [7]);
    // After it, under the fence that went with it (or none): refused, records and entries.
    for (changes, journal) in [
        (vec![put_record("s1", "a-2")], vec![]),
        (vec![], vec![entry("s1", "", 8, 100)]),
    ] {
        let refused = db.commit(fences(&[("s1", &s1)]), changes, journal).await;
        assert_eq!(
            refused,
            Err(DbError::StaleFence {
                token: "s1".into(),
                fence: s1.fence
            })
        );
    }
    let unfenced = db
        .commit(fences(&[]), vec![], vec![entry("s1", "", 9, 100)])
        .await;
    assert_eq!(unfenced, Err(DbError::NotHeld("s1".into())));
    assert_eq!(
        db.read_journal(Some("s1".into()), 0, 100)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_node_that_lost_a_session_can_neither_queue_nor_change_its_messages() {
    let Some((_server, cluster, db)) = cluster().await else {
        return;
    };
    let a = cluster.node("a", 1).await;
    let b = cluster.node("b", 1).await;
    let on_a = cluster.claim(&a, "s1").await;
    db.commit(
        fences(&[("s1", &on_a)]),
        vec![put_record("s1", "one")],
        vec![],
    )
    .await
    .unwrap();
    db.outbox_insert(message("s1", "A1", "k1", "1@x"), &on_a)
        .await
        .unwrap();
    cluster.release(&on_a, "s1").await;
    let on_b = cluster.claim(&b, "s1").await;

    let stale = Err(DbError::StaleFence {
        token: "s1".into(),
        fence: on_a.fence,
    });
    let queued = db
        .outbox_insert(message("s1", "A2", "k2", "1@x"), &on_a)
        .await;
    assert_eq!(queued.map(|_| ()), stale);
    let changed = db.outbox_apply("s1", "A1", &on_a, sent(2_000)).await;
    assert_eq!(changed.map(|_| ()), stale);
    let removed = db.outbox_remove_session("s1", &on_a).await;
    assert_eq!(removed.map(|_| ()), stale);
    let ids: Vec<String> = db
        .outbox_list("s1", &["queued", "sent"], 10)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.id)
        .collect();
    assert_eq!(ids, ["A1"], "nothing of a's was kept");

    // The new owner sends it.
    let (after, changed) = db
        .outbox_apply("s1", "A1", &on_b, sent(3_000))
        .await
        .unwrap()
        .unwrap();
    assert!(changed);
    assert_eq!(after.status, "sent");
    assert_eq!(db.outbox_remove_session("s1", &on_b).await.unwrap(), 1);
}

#[tokio::test]
async fn a_removed_session_leaves_the_cluster_and_its_old_fence_writes_nothing() {
    let Some((_server, cluster, db)) = cluster().await else {
        return;
    };
    let a = cluster.node("a", 1).await;
    let s1 = cluster.claim(&a, "s1").await;
    let held = fences(&[("s1", &s1)]);
    db.commit(held.clone(), vec![put_record("s1", "one")], vec![])
        .await
        .unwrap();
    db.commit(held.clone(), vec![remove("s1")], vec![])
        .await
        .unwrap();
    assert!(
        cluster.pg.owners().await.unwrap().is_empty(),
        "no lease row left"
    );
    let late = db
        .commit(held, vec![put_record("s1", "again")], vec![])
        .await;
    assert!(
        matches!(late, Err(DbError::StaleFence { ref token, .. }) if token == "s1"),
        "{late:?}"
    );
    assert!(db.load_records().await.unwrap().is_empty());
}

/// A removal waits for a key write in flight (it holds the session's lease row shared), then
/// takes every key with it; a key write after it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_waits_for_a_key_write_in_flight_and_leaves_no_key_behind() {
    let Some((server, cluster, db)) = cluster().await else {
        return;
    };
    let a = cluster.node("a", 1).await;
    let s1 = cluster.claim(&a, "s1").await;
    let held = fences(&[("s1", &s1)]);
    db.commit(held.clone(), vec![put_record("s1", "one")], vec![])
        .await
        .unwrap();
    let device = db.open_device("s1", &s1).await.unwrap();
    let (go_on, wait) = std::sync::mpsc::channel::<()>();
    let (started, running) = tokio::sync::oneshot::channel();
    let writing = tokio::spawn({
        let (db, s1) = (db.clone(), s1.clone());
        async move {
            db.kv(device, &s1, move |kv| {
                kv.put(1, b"k1", b"v1")?;
                let _ = started.send(());
                let _ = wait.recv();
                kv.put(1, b"k2", b"v2")
            })
            .await
        }
    });
    running.await.unwrap();
    // Another connection of the store (the records' one), so the key write stays open.
    let removing = tokio::spawn({
        let db = db.clone();
        async move { db.commit(held, vec![remove("s1")], vec![]).await }
    });
    until_a_backend_waits_for_a_lock(&cluster.pg).await;
    go_on.send(()).unwrap();
    writing.await.unwrap().unwrap();
    removing.await.unwrap().unwrap();
    assert_eq!(
        db.find_device("s1").await.unwrap(),
        None,
        "no key left behind"
    );
    let late = db.kv(device, &s1, |kv| kv.put(1, b"k3", b"v3")).await;
    assert!(late.is_err(), "{late:?}");
    drop(server);
}

/// A reader that has seen entry `n` asks for what comes after it: an entry with a lower
/// number must never become visible after it. Another node's append in flight (here, a
/// transaction holding the journal's lock and its number) holds every later append back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_numbers_become_visible_in_the_order_they_were_given_across_nodes() {
    let Some((server, cluster, reader)) = cluster().await else {
        return;
    };
    // The appender waits for the lock longer than the test takes, even on a slow machine.
    let db = store_with(
        &server,
        PgOptions {
            statement_timeout: PATIENT,
            answer_timeout: PATIENT * 2,
            ..PgOptions::default()
        },
    )
    .await;
    let b = cluster.node("b", 1).await;
    let s2 = cluster.claim(&b, "s2").await;
    let mut other_node = Pg::connect(&server.url(), TIMEOUT).await.unwrap();
    let in_flight = other_node.client_mut().transaction().await.unwrap();
    in_flight
        .execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&warden_store::pg::JOURNAL_LOCK],
        )
        .await
        .unwrap();

    let appending = tokio::spawn({
        let db = db.clone();
        async move {
            db.commit(
                fences(&[("s2", &s2)]),
                vec![],
                vec![entry("s2", "", 2, 100)],
            )
            .await
        }
    });
    until_a_backend_waits_for_a_lock(&cluster.pg).await;
    // Only now does the other node take its number: an appender that took its own before
    // waiting for the lock would hold the lower one, and commit it after.
    let first: i64 = in_flight
        .query_one("SELECT nextval('warden_journal_seq')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        reader.read_journal(None, 0, 100).await.unwrap().is_empty(),
        "nothing after the entry in flight is visible before it"
    );
    assert!(!appending.is_finished());
    in_flight
        .execute(
            "INSERT INTO warden_journal (seq, token, kind, key, data, first_at, at, repeats) \
             VALUES ($1, 's1', 'session.status', '', '{}', 1, 1, 1)",
            &[&first],
        )
        .await
        .unwrap();
    in_flight.commit().await.unwrap();
    let second = appending.await.unwrap().unwrap().expect("a number");
    assert!(second > first);
    let seqs: Vec<i64> = reader
        .read_journal(None, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, vec![first, second]);
    assert_eq!(db.journal_head().await.unwrap(), second);
}
