//! A wa-rs client that is disconnected before its own tasks first ran is freed.
//!
//! wa-rs 0.2 started, in every `Client::new`, a task that held the client until the client's
//! shutdown notification. `notify_waiters` wakes only the waiters that exist at that moment,
//! so a client disconnected before that task was first polled (a short connection on a busy
//! runtime: a 503 at the door, say) was held by it for ever. The soak found them: 697 clients
//! more than sessions after 1,000 × 40 cycles, and the memory with them. The patched wa-rs no
//! longer starts that task (`crates/patches/README.md`).
//!
//! On a current-thread runtime no spawned task runs until the test yields, so the order is
//! deterministic: build, disconnect, drop, then let the client's tasks run.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use wa_rs::Client;
use wa_rs::store::persistence_manager::PersistenceManager;
use wa_rs_core::net::{HttpClient, TransportFactory};
use warden_store::Db;
use warden_whatsapp::proxy::ProxySetting;
use warden_whatsapp::store::SessionStore;
use warden_whatsapp::transport::WsFactory;

#[tokio::test(flavor = "current_thread")]
async fn a_client_disconnected_before_its_tasks_ran_is_freed() {
    let db = Db::in_memory().expect("database");
    let device = db.open_device("s1").await.expect("device");
    let store = Arc::new(SessionStore::new(db, device));
    let persistence = Arc::new(PersistenceManager::new(store).await.expect("device loads"));
    // Nothing listens there: the client never dials anyway.
    let factory: Arc<dyn TransportFactory> = Arc::new(WsFactory::new(
        "ws://127.0.0.1:9/ws/chat".parse().expect("uri"),
        Duration::from_secs(1),
        Duration::from_secs(1),
        Arc::new(ProxySetting::default()),
    ));
    let http: Arc<dyn HttpClient> = Arc::new(NoHttp);

    let (client, _sync) = Client::new(persistence, factory, http, Some((2, 3000, 1))).await;
    client.disconnect().await;
    let weak = Arc::downgrade(&client);
    drop(client);

    // Now the client's tasks run; every one of them must end and let go of it.
    let freed = tokio::time::timeout(LIMIT, async {
        while weak.strong_count() > 0 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        freed.is_ok(),
        "the client is still held {LIMIT:?} after its disconnect ({} references)",
        weak.strong_count()
    );
}
