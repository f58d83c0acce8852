//! A query in flight when its connection ends does not keep the client alive.
//!
//! wa-rs waits up to 75 s for the answer to each query it sends, and the task that waits
//! holds the client. Under reconnect storms that kept finished clients alive by the thousand
//! (found by the soak, docs/reliability.md). The patched wa-rs drops the waiters when a
//! connection is over, so such a query fails at once (`crates/patches/README.md`).
//!
//! Here the server leaves every IQ of the second login unanswered (`hold_iqs`): the client's
//! setup queries are in flight when the session is stopped, and the client must be gone long
//! before their 75 s timeout.
//!
//! Alone in its test binary, so nothing else runs in the process while it counts clients.

mod support;

use std::time::Instant;

use support::*;
use warden_core::SessionState;
use warden_fakewa::{Plan, Scenario, ServerEvent, Step};

const PHONE: &str = "15550009999";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_queries_were_in_flight_goes_with_its_connection() {
    // The login after pairing is a plain one; every later one holds its queries.
    let login = Plan::attempts(
        [Scenario::login()],
        Scenario::new([Step::HoldIqs, Step::Login]),
    );
    let mut h = Harness::new(server(PHONE, login).await, |_| {}).await;
    h.paired("s1", PHONE).await;
    assert_eq!(
        h.supervisor.stop("s1").await.expect("stop").state,
        SessionState::Stopped
    );
    // The pairing run's client may be held by wa-rs's QR rotation task for up to 60 s.
    assert_eq!(
        settles_within(CLIENT_LINGER, 0, warden_whatsapp::clients_alive).await,
        0,
        "the pairing's client outlived its session"
    );

    h.supervisor
        .start_session("s1", Default::default())
        .await
        .expect("start");
    // The client's first setup query (the pre-key count, sent by a wa-rs task of its own
    // after `<success>`, which waits for the answer before the next one) reached the server
    // and got no answer.
    h.recorder()
        .wait_until(LIMIT, |s| {
            s.count(|r| {
                matches!(&r.event, ServerEvent::Iq { kind, answered: false, .. }
                    if kind == "get" || kind == "set")
            }) >= 1
        })
        .await
        .expect("a query of the login arrived, unanswered");
    assert!(warden_whatsapp::clients_alive() >= 1);

    h.supervisor.stop("s1").await.expect("stop");
    let stopped = Instant::now();
    // Without the patch the client lives until the queries' 75 s timeout.
    let alive = settles_within(SETTLE, 0, warden_whatsapp::clients_alive).await;
    eprintln!(
        "{alive} client(s) alive {:?} after the stop",
        stopped.elapsed()
    );
    assert_eq!(
        alive, 0,
        "a client outlived its connection: the queries in flight hold it until they time out"
    );
}
