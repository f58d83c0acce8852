//! A wa-rs client is freed once its connection is over, whatever the order its tasks run in.
//!
//! **A client disconnected before its own tasks first ran.**
//! wa-rs 0.2 started, in every `Client::new`, a task that held the client until the client's
//! shutdown notification. `notify_waiters` wakes only the waiters that exist at that moment,
//! so a client disconnected before that task was first polled (a short connection on a busy
//! runtime: a 503 at the door, say) was held by it for ever. The soak found them: 697 clients
//! more than sessions after 1,000 × 40 cycles, and the memory with them. The patched wa-rs no
//! longer starts that task (`crates/patches/README.md`).
//!
//! **A message whose processing reaches its chat's queue after the connection ended.** wa-rs
//! handles each incoming message in a task of its own, which makes the chat's queue and its
//! worker; the worker holds the client. The link releases the workers when the connection is
//! over (`release_chat_workers`), but a message that arrived just before a drop can make its
//! queue after that, and its worker then held the client for the queue's five-minute time to
//! live: the last leftover clients of the 1,000-session soak (docs/reliability.md). Such a
//! worker now ends once its queue is empty.
//!
//! On a current-thread runtime no spawned task runs until the test yields, so the order is
//! deterministic: build, disconnect (and, in the second case, release the workers and hand the
//! message handler a message), drop, then let the client's tasks run.

mod support;

use std::sync::{Arc, Weak};
use std::time::Duration;

use support::*;
use wa_rs::handlers::message::MessageHandler;
use wa_rs::handlers::traits::StanzaHandler;
use wa_rs::store::persistence_manager::PersistenceManager;
use wa_rs::{Client, NodeBuilder};
use wa_rs_core::net::{HttpClient, TransportFactory};
use warden_store::Db;
use warden_whatsapp::proxy::ProxySetting;
use warden_whatsapp::store::SessionStore;
use warden_whatsapp::transport::WsFactory;

/// A client that never dials: nothing listens at its address.
async fn idle_client() -> Arc<Client> {
    let db = Db::in_memory().expect("database");
    let device = db.open_device("s1").await.expect("device");
    let store = Arc::new(SessionStore::new(db, device));
    let persistence = Arc::new(PersistenceManager::new(store).await.expect("device loads"));
    let factory: Arc<dyn TransportFactory> = Arc::new(WsFactory::new(
        "ws://127.0.0.1:9/ws/chat".parse().expect("uri"),
        Duration::from_secs(1),
        Duration::from_secs(1),
        Arc::new(ProxySetting::default()),
    ));
    let http: Arc<dyn HttpClient> = Arc::new(NoHttp);
    let (client, _sync) = Client::new(persistence, factory, http, Some((2, 3000, 1))).await;
    client
}

/// Lets the client's tasks run until none holds it; fails after `LIMIT`.
async fn assert_freed(weak: Weak<Client>, what: &str) {
    let freed = tokio::time::timeout(LIMIT, async {
        while weak.strong_count() > 0 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        freed.is_ok(),
        "the client is still held {LIMIT:?} after {what} ({} references)",
        weak.strong_count()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_disconnected_before_its_tasks_ran_is_freed() {
    let client = idle_client().await;
    client.disconnect().await;
    let weak = Arc::downgrade(&client);
    drop(client);
    assert_freed(weak, "its disconnect").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_chat_worker_made_after_the_release_ends_with_its_queue() {
    let client = idle_client().await;
    client.disconnect().await;
    // What the link does when the connection is over.
    client.release_chat_workers();
    // Then the task that processes a message received just before the drop reaches the
    // message handler: it makes the chat's queue and worker, and queues the message.
    let message = NodeBuilder::new("message")
        .attr("from", "15550001111@s.whatsapp.net")
        .attr("id", "3EB0LATE")
        .attr("type", "text")
        .attr("t", "1700000000")
        .build();
    let handled = MessageHandler
        .handle(client.clone(), Arc::new(message), &mut false)
        .await;
    assert!(handled, "the handler takes the message");
    let weak = Arc::downgrade(&client);
    drop(client);
    // The worker processes the message (it cannot be decrypted; that is not the point) and
    // ends: before the patch, its queue's sender stayed cached for five minutes.
    assert_freed(weak, "a late message's worker was made").await;
}
