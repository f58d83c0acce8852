//! Three `warden serve` daemons as one cluster over a real PostgreSQL (Debian's, started by the
//! test; skipped where none is installed) and the fake WhatsApp server, driven from outside:
//! the sessions are added to the cluster, each is linked (its QR code "scanned") and logged
//! in on the node that holds it; then the node holding the most is killed with SIGKILL.
//!
//! What it proves:
//! - every session of the killed node logs in again on the others, from the credentials on
//!   PostgreSQL: no QR code, no registration, no second pairing at the server;
//! - the server never sees two live connections of one account, before or after the kill;
//! - a node stopped with SIGTERM closes its sessions, then hands them over: the last node runs
//!   them without declaring it dead;
//! - a session created through a node's socket joins the cluster, and a second create of its
//!   token is refused.

#[path = "common/cluster.rs"]
mod cluster_support;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use cluster_support::{
    LIMIT, Postgres, add_sessions, held, links_after, phone_of, start_nodes, until_online,
    until_online_after,
};
use common::{fake_whatsapp_with, pair_any};

/// Sessions in the cluster.
const SESSIONS: usize = 9;
/// The lease timings, five times faster than the defaults: dead after 3 s.
const SCALE: &str = "0.2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_sessions_log_in_on_the_others_and_no_account_ever_runs_twice() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let whatsapp = fake_whatsapp_with(pair_any(Duration::from_millis(200))).await;
    let recorder = whatsapp.recorder();
    let url = server.url();
    let scale = [("WARDEN_CLUSTER_TIMING_SCALE", SCALE)];
    let (mut daemons, _dirs) = start_nodes(&whatsapp.url(), &url, &["a", "b", "c"], &scale).await;
    assert!(
        !daemons[0].startup.join("\n").contains(&url),
        "the database URL is never logged"
    );
    // Added once the three nodes are up, so that placement spreads them.
    let tokens = add_sessions(&server, SESSIONS).await;

    // Every session is linked and online, each on one node.
    until_online(recorder, SESSIONS, LIMIT, &mut daemons).await;
    let mut shares = Vec::new();
    for daemon in &daemons {
        shares.push(held(daemon).await);
    }
    let all: BTreeSet<&String> = shares.iter().flat_map(|s| s.keys()).collect();
    assert_eq!(all.len(), SESSIONS, "every session runs: {shares:?}");
    assert_eq!(
        shares.iter().map(BTreeMap::len).sum::<usize>(),
        SESSIONS,
        "each on one node: {shares:?}"
    );
    assert_eq!(
        all.into_iter().cloned().collect::<Vec<_>>(),
        tokens,
        "the sessions added"
    );

    assert!(
        shares.iter().filter(|s| !s.is_empty()).count() >= 2,
        "placement spreads the sessions: {shares:?}"
    );

    // SIGKILL to the node holding the most.
    let victim = (0..daemons.len()).max_by_key(|&i| shares[i].len()).unwrap();
    let phones: BTreeSet<String> = shares[victim]
        .values()
        .map(|jid| phone_of(jid.as_deref().expect("linked")).to_owned())
        .collect();
    assert!(!phones.is_empty());
    let boundary = recorder.inspect(|s| s.connections().len()) as u64;
    let killed = Instant::now();
    daemons[victim].child.start_kill().unwrap();
    let _ = daemons[victim].child.wait().await;

    until_online_after(recorder, boundary, &phones, "the killed node's").await;
    let took_over = killed.elapsed();
    let (registrations, pairings) = links_after(recorder, boundary);
    assert_eq!(
        (registrations, pairings),
        (0, 0),
        "logged in from the credentials on PostgreSQL, no new QR code or pairing"
    );
    assert_eq!(
        recorder.inspect(|s| s.max_concurrent_any()),
        1,
        "the server never saw two live connections of one account"
    );
    eprintln!(
        "{} of {SESSIONS} sessions were on the killed node; all online again on the others \
         {took_over:.2?} after the kill",
        phones.len()
    );

    // SIGTERM to a survivor: it closes its sessions, then hands them over; the last node runs
    // them without declaring it dead.
    let leaving = (victim + 1) % daemons.len();
    let last = (victim + 2) % daemons.len();
    let moving: BTreeSet<String> = held(&daemons[leaving])
        .await
        .values()
        .map(|jid| phone_of(jid.as_deref().expect("linked")).to_owned())
        .collect();
    let boundary = recorder.inspect(|s| s.connections().len()) as u64;
    let pid = daemons[leaving].child.id().expect("running");
    let term = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(term.success());
    let handed = daemons[leaving].log_line("left the cluster").await;
    assert!(
        handed.contains(&format!("handed={}", moving.len())),
        "{handed}"
    );
    let _ = daemons[leaving].child.wait().await;
    until_online_after(recorder, boundary, &moving, "the leaving node's").await;
    assert_eq!(held(&daemons[last]).await.len(), SESSIONS);
    let mut last_log = Vec::new();
    while let Ok(line) = daemons[last].log.try_recv() {
        last_log.push(line);
    }
    let leaving_name = ["a", "b", "c"][leaving];
    assert!(
        !last_log
            .iter()
            .any(|l| l.contains("declared a silent node dead")
                && l.contains(&format!("peer={leaving_name}"))),
        "handed over, never declared dead"
    );
    assert_eq!(
        recorder.inspect(|s| s.max_concurrent_any()),
        1,
        "never two live connections of one account, through the hand-over either"
    );

    // A create through a node's socket joins the cluster; another node refuses its token.
    let (code, out, err) = daemons[last].cli(&["create", "--token", "late1"]).await;
    assert_eq!(code, 0, "{out} {err}");
    let (code, out, err) = daemons[last].cli(&["create", "--token", "late1"]).await;
    assert_ne!(code, 0, "a second create of one token is refused: {out}");
    assert!(
        err.contains("already exists") || out.contains("already exists"),
        "{out} {err}"
    );
}
