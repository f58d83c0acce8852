//! Stops 200 connections — connected, mid-dial and mid-handshake, by `close()` and by drop —
//! and checks that no task, no socket and no client is left behind, and that sessions never
//! cost a database thread or file of their own.
//!
//! Alone in its test binary, so nothing else runs in the process while it counts.

mod support;

use std::time::Duration;

use support::*;
use tokio::sync::mpsc;
use warden_core::{DisconnectReason, LifecycleEvent, LifecycleSink, Link, OpenOptions, Token};
use warden_fakewa::{ListenerMode, Script, ServerEvent};

const SESSIONS: usize = 20;
const ROUNDS: usize = 10;

fn sink() -> (LifecycleSink, mpsc::UnboundedReceiver<LifecycleEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        LifecycleSink::new(move |e| {
            let _ = tx.send(e);
        }),
        rx,
    )
}

async fn until(
    rx: &mut mpsc::UnboundedReceiver<LifecycleEvent>,
    pred: impl Fn(&LifecycleEvent) -> bool,
) -> LifecycleEvent {
    tokio::time::timeout(LIMIT, async {
        loop {
            let e = rx.recv().await.expect("connection still reporting");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event in time")
}

fn sockets() -> usize {
    fds(|target| target.starts_with("socket:"))
}

fn db_fds() -> usize {
    fds(|target| target.contains("warden.db"))
}

fn fds(pred: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| pred(&t.to_string_lossy()))
        .count()
}

fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// Waits (bounded) until `measure` gives `expected`; returns the last value.
async fn settles(expected: usize, measure: impl Fn() -> usize) -> usize {
    settles_to(|n| n == expected, measure).await
}

/// Waits (bounded) until `measure` gives a value that `ok` accepts; returns the last value.
async fn settles_to(ok: impl Fn(usize) -> bool, measure: impl Fn() -> usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = measure();
        if ok(now) || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_stopped_connections_leave_nothing_behind() {
    let registration = pairing_any();
    let server = server_with(Script::default().with_registration(registration)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = warden_store::Db::open_in(dir.path()).unwrap();
    let mut config = wa_config(&server.url());
    config.connect_timeout = Duration::from_secs(5);
    let link = link(config, &db);
    let before = steady(tasks).await;
    let tokens: Vec<Token> = (0..SESSIONS)
        .map(|n| Token::parse(&format!("s{n}")).unwrap())
        .collect();

    // Pair every session: QR, pairing, 515 (RestartRequired), then a login.
    let pairing = tokens.iter().map(|token| {
        let link = link.clone();
        let token = token.clone();
        async move {
            let (s, mut rx) = sink();
            let _first = link.open(&token, OpenOptions::default(), s).await.unwrap();
            let end = until(&mut rx, |e| {
                matches!(e, LifecycleEvent::Disconnected { .. })
            })
            .await;
            assert_eq!(
                end,
                LifecycleEvent::Disconnected {
                    reason: DisconnectReason::RestartRequired
                }
            );
            let (s, mut rx) = sink();
            let mut conn = link.open(&token, OpenOptions::default(), s).await.unwrap();
            until(&mut rx, |e| matches!(e, LifecycleEvent::Connected { .. })).await;
            conn.close().await;
        }
    });
    futures_util::future::join_all(pairing).await;
    let rec = server.recorder();
    rec.wait_until(LIMIT, |s| s.open_connections() == 0)
        .await
        .unwrap();
    let base_sockets = sockets();

    // 200 connections, stopped in every phase and both ways.
    let mut silent_seen = 0;
    for round in 0..ROUNDS {
        let mode = match round {
            0..4 => ListenerMode::Normal,
            4..7 => ListenerMode::SilentTcp,
            _ => ListenerMode::SilentWebSocket,
        };
        server.set_mode(mode).await;
        let mut conns = Vec::new();
        let mut receivers = Vec::new();
        for token in &tokens {
            let (s, rx) = sink();
            conns.push(link.open(token, OpenOptions::default(), s).await.unwrap());
            receivers.push(rx);
        }
        match mode {
            ListenerMode::Normal => {
                for rx in &mut receivers {
                    until(rx, |e| matches!(e, LifecycleEvent::Connected { .. })).await;
                }
            }
            _ => {
                silent_seen += SESSIONS;
                rec.wait_until(LIMIT, |s| {
                    s.count(|r| matches!(r.event, ServerEvent::Silent { .. })) >= silent_seen
                })
                .await
                .unwrap();
            }
        }
        // Half are closed gracefully, half just dropped.
        for (n, mut conn) in conns.into_iter().enumerate() {
            if (n + round) % 2 == 0 {
                conn.close().await;
            }
        }
        for rx in &mut receivers {
            until(rx, |e| matches!(e, LifecycleEvent::Disconnected { .. })).await;
        }
    }
    server.set_mode(ListenerMode::Normal).await;
    rec.wait_until(LIMIT, |s| s.open_connections() == 0)
        .await
        .expect("the server saw every socket closed");
    assert_eq!(
        settles(base_sockets, sockets).await,
        base_sockets,
        "leaked sockets"
    );
    // The link's own tasks (drivers, runs, socket readers, pings) are all gone.
    assert_eq!(
        settles(0, warden_whatsapp::tasks::alive).await,
        0,
        "leaked link tasks"
    );
    // No session is held once its connection is over: no client, no store handle.
    assert!(
        settles_to(|n| n == 0, || link.held().len()).await == 0,
        "sessions still held: {:?}",
        link.held()
    );
    // What may stay in the runtime for a few seconds: wa-rs's post-login task of a session
    // that stopped while logging in (its queries fail when the connection ends, through the
    // patched wa-rs, then it waits up to 5 s for the offline sync). A leak per connection
    // would show 200 more.
    let bound = before + 2 * SESSIONS;
    let left = settles_to(|n| n <= bound, tasks).await;
    assert!(
        left <= bound,
        "{left} tasks alive, {before} before the sessions existed"
    );

    // The database is one file for everyone: its handle and its WAL, whatever the number of
    // sessions, and one thread.
    assert_eq!(db_fds(), 2, "warden.db and its WAL, nothing per session");
    assert_eq!(threads_named("warden-db"), 1);
    assert_eq!(threads_named("r2d2"), 0, "no per-session pool");
    for token in &tokens {
        link.forget(token).await.unwrap();
        assert_eq!(db.rows_of(token.as_str()).await.unwrap(), 0);
    }
    assert!(link.held().is_empty());
}
