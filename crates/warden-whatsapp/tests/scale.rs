//! 600 sessions — more than tokio's 512 blocking threads — are created and started at once
//! through the real supervisor and the real `WaLink`, with admission control wide open, against
//! the fake server. Every one of them pairs and connects (nothing deadlocks: before the shared
//! session database, each session's store was opened with `spawn_blocking(block_on(..))`, and
//! 512 of them at once exhausted the blocking pool and hung the process for good), no account
//! ever has two live connections at once, and the database is sound afterwards (`PRAGMA
//! integrity_check` is ok, no key row without its device).
//!
//! Alone in its test binary, so nothing else competes for the runtime or the blocking pool.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use support::*;
use tokio::sync::broadcast::error::RecvError;
use warden_core::{SessionEvent, SessionState};
use warden_fakewa::{PairSpec, Plan, QrSpec, Scenario, Script, Step};

/// More than tokio's default `max_blocking_threads` (512).
const SESSIONS: usize = 600;
/// Generous: the test normally takes a fraction of it.
const ALL_CONNECTED_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_sessions_start_at_once_and_all_connect_one_connection_each() {
    // Two descriptors per session (the client's socket and the fake server's), and then some.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // Every registration "scans" its QR code quickly and pairs a new account: each one takes
    // the next phone number from the server's pool, so every session has its own account.
    let registration = Plan::always(Scenario::new([
        Step::Qr(QrSpec::new(
            1,
            Duration::from_secs(50),
            Duration::from_secs(50),
        )),
        Step::wait(Duration::from_millis(50)),
        Step::Pair(PairSpec {
            restart_after: Duration::from_millis(20),
            ..PairSpec::default()
        }),
    ]));
    let script = Script::default()
        .with_registration(registration)
        .with_login(Plan::always(Scenario::login()));
    let server = server_with(script).await;
    // 600 handshakes at once on two cores: loopback timeouts would only add retries.
    let h = Harness::new(server, |c| {
        c.connect_timeout = Duration::from_secs(30);
        c.liveness_timeout = Duration::from_secs(60);
    })
    .await;
    let mut events = h.supervisor.subscribe();
    let tokens: Vec<String> = (1..=SESSIONS).map(|n| format!("scale{n:03}")).collect();

    let started = Instant::now();
    let supervisor = &h.supervisor;
    let results = join_all(tokens.iter().map(|token| async move {
        supervisor.create(None, Some(token)).await?;
        supervisor.start_session(token, Default::default()).await
    }))
    .await;
    let refused: Vec<_> = tokens
        .iter()
        .zip(&results)
        .filter_map(|(t, r)| r.as_ref().err().map(|e| format!("{t}: {e}")))
        .collect();
    assert!(refused.is_empty(), "create or start failed: {refused:?}");
    let all_started = started.elapsed();

    // Every session that reached `connected` at least once, from the event stream.
    let mut connected: HashSet<String> = HashSet::new();
    let waiting = async {
        while connected.len() < SESSIONS {
            match events.recv().await {
                Ok(SessionEvent::Updated(info)) if info.state == SessionState::Connected => {
                    connected.insert(info.token.to_string());
                }
                Ok(_) => {}
                // Fell behind the stream: the snapshot says who is connected now.
                Err(RecvError::Lagged(_)) => {
                    for info in h.supervisor.list().sessions {
                        if info.state == SessionState::Connected {
                            connected.insert(info.token.to_string());
                        }
                    }
                }
                Err(RecvError::Closed) => panic!("the supervisor's event stream closed"),
            }
        }
    };
    if tokio::time::timeout(ALL_CONNECTED_WITHIN, waiting)
        .await
        .is_err()
    {
        let counts = h.supervisor.list().counts;
        panic!(
            "only {} of {SESSIONS} sessions connected within {ALL_CONNECTED_WITHIN:?}; \
             states now: {counts:?}",
            connected.len()
        );
    }
    let took = started.elapsed();
    eprintln!(
        "{SESSIONS} sessions: created and started in {all_started:.2?}, all connected after \
         {took:.2?}"
    );

    h.assert_one_at_a_time();
    let paired = h
        .recorder()
        .inspect(|s| s.count(|r| matches!(r.event, warden_fakewa::ServerEvent::Paired { .. })));
    assert_eq!(paired, SESSIONS, "one pairing per session");
    for token in &tokens {
        assert!(h.has_credentials(token).await, "{token} has no credentials");
    }
    h.db.integrity_check()
        .await
        .expect("PRAGMA integrity_check");
    assert_eq!(h.db.orphan_rows().await.expect("database"), 0);
}
