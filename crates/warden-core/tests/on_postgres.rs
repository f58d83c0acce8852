//! The supervisor on a cluster's store (PostgreSQL, a real server started by the test; skipped
//! where none is installed): it runs the sessions this node holds, every write under the
//! session's fence; an operation whose change the database refuses (the lease moved on) is
//! answered with the refusal while the other sessions' writes go on; a relinquished session
//! closes here and is forgotten without a write, and can be held again later.

#[path = "../../warden-store/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use support::{Cluster, Postgres, store};
use warden_core::scripted::{EventWaiter, Script, ScriptedLink};
use warden_core::store::SessionRecord;
use warden_core::{
    AdmissionConfig, Desired, Error, SessionState, StoreError, Supervisor, SupervisorConfig,
};
use warden_store::{Fence, Leases, PgDb, RecordChange, Shared, Store};

/// The leases this node holds, as the test hands them out.
#[derive(Default)]
struct Held(Mutex<HashMap<String, Fence>>);

impl Held {
    fn hold(&self, token: &str, fence: Fence) {
        self.0.lock().unwrap().insert(token.to_owned(), fence);
    }

    fn drop_lease(&self, token: &str) {
        self.0.lock().unwrap().remove(token);
    }
}

impl Leases for Held {
    fn fence(&self, token: &str) -> Option<Fence> {
        self.0.lock().unwrap().get(token).cloned()
    }
}

/// How long any step may take, even on a slow machine.
const PATIENT: Duration = Duration::from_secs(30);

fn config(dir: &std::path::Path, store: Store) -> SupervisorConfig {
    let mut config = SupervisorConfig::new(dir).with_db(store);
    config.admission = AdmissionConfig {
        max_in_flight: 100,
        per_second: 1_000.0,
        burst: 100,
    };
    config
}

/// Adds `token` to the cluster, meant to run.
async fn add_running(db: &PgDb, token: &str) {
    let mut record = SessionRecord::new(token.into(), SystemTime::now());
    record.desired = Desired::Running;
    assert!(
        db.create_session(token, &record.encode().unwrap())
            .await
            .unwrap()
    );
}

/// `token`'s stored record.
async fn stored(db: &PgDb, token: &str) -> SessionRecord {
    let text = db.load_record(token).await.unwrap().expect("a record");
    SessionRecord::decode(token, &text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_on_postgres_runs_what_it_holds_and_writes_nothing_of_what_it_lost() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let cluster = Cluster::start(&server).await;
    let a = cluster.node("a", 1).await;
    let b = cluster.node("b", 1).await;
    let db = store(&server).await;
    let held = Arc::new(Held::default());
    let shared = Store::Shared(Shared {
        db: db.clone(),
        leases: held.clone(),
    });
    let mut fences = HashMap::new();
    for token in ["s1", "s2"] {
        add_running(&db, token).await;
        let fence = cluster.claim(&a, token).await;
        held.hold(token, fence.clone());
        fences.insert(token, fence);
    }
    let link = ScriptedLink::new(Script::login("1@s.whatsapp.net"));
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, report) =
        Supervisor::start(config(dir.path(), shared), Arc::new(link.clone()))
            .await
            .unwrap();
    assert_eq!(report.loaded, 0, "a node starts holding nothing");
    let mut events = EventWaiter::new(&supervisor, PATIENT);

    // Held: run from the stored record.
    for token in ["s1", "s2"] {
        supervisor.adopt(token).await.unwrap();
        events.state(token, SessionState::Connected).await;
    }
    supervisor.stop("s2").await.unwrap();
    let record = stored(&db, "s2").await;
    assert_eq!(
        (record.desired, record.state),
        (Desired::Stopped, SessionState::Stopped),
        "an answer comes after its commit, under the fence"
    );

    // s1's lease moves to b, and b writes it, before this node hears of it.
    cluster.release(&fences["s1"], "s1").await;
    let on_b = cluster.claim(&b, "s1").await;
    let mut by_b = stored(&db, "s1").await;
    by_b.name = "written by b".into();
    db.commit(
        HashMap::from([("s1".to_owned(), on_b)]),
        vec![RecordChange::Put {
            token: "s1".into(),
            text: by_b.encode().unwrap(),
        }],
        vec![],
    )
    .await
    .unwrap();
    let refused = supervisor.stop("s1").await;
    assert!(
        matches!(&refused, Err(Error::Store(StoreError::NotSaved(why))) if why.contains("stale")),
        "{refused:?}"
    );
    assert_eq!(stored(&db, "s1").await, by_b, "nothing of a's was kept");
    // The other session's writes go on.
    supervisor
        .start_session("s2", Default::default())
        .await
        .unwrap();
    assert_eq!(stored(&db, "s2").await.desired, Desired::Running);
    events.state("s2", SessionState::Connected).await;

    // A live session let go of while its lease still holds (a graceful hand-over: close,
    // then release): its connection is closed before the answer, and nothing of its close is
    // written, so the next holder finds it as this node last ran it.
    supervisor.flush().await.unwrap();
    let before = stored(&db, "s2").await;
    assert_eq!(before.state, SessionState::Connected);
    assert!(supervisor.relinquish("s2").await.unwrap());
    held.drop_lease("s2");
    assert_eq!(link.stats("s2").live, 0, "closed before the answer");
    assert!(matches!(supervisor.status("s2"), Err(Error::NotFound(_))));
    supervisor.flush().await.unwrap();
    assert_eq!(stored(&db, "s2").await, before, "its close was not written");

    // Told, this node lets go: the connection closes, the session is gone here, and nothing
    // of its close is written.
    held.drop_lease("s1");
    assert!(supervisor.relinquish("s1").await.unwrap());
    assert_eq!(link.stats("s1").live, 0, "closed before the answer");
    let left = supervisor.status("s1");
    assert!(matches!(left, Err(Error::NotFound(_))), "{left:?}");
    assert!(
        !supervisor.relinquish("s1").await.unwrap(),
        "not here any more"
    );
    assert_eq!(stored(&db, "s1").await, by_b);

    // Held again later: it runs from the record as b left it.
    let on_b = Fence {
        node: b.node.clone(),
        incarnation: b.incarnation,
        fence: by_b_fence(&cluster, "s1").await,
    };
    cluster.release(&on_b, "s1").await;
    held.hold("s1", cluster.claim(&a, "s1").await);
    let back = supervisor.adopt("s1").await.unwrap();
    assert_eq!(back.name, "written by b");
    events.state("s1", SessionState::Connected).await;
    assert_eq!(
        link.max_live_any(),
        1,
        "never two connections of one session"
    );
    supervisor.shutdown().await.unwrap();
}

/// The fence `token` is held under now.
async fn by_b_fence(cluster: &Cluster, token: &str) -> i64 {
    cluster
        .pg
        .owners()
        .await
        .unwrap()
        .into_iter()
        .find(|owner| owner.token == token)
        .expect("owned")
        .fence
}
