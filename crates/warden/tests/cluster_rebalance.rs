//! Rebalancing at the daemon level: one `warden serve` node runs every session of the cluster
//! (over a real PostgreSQL started by the test, skipped where none is installed, and the fake
//! WhatsApp server); a second node joins.
//!
//! What it proves: the first node hands the second the sessions placement prefers there, one
//! at a time, until the two are balanced; each moved session logs in on the new node from the
//! credentials on PostgreSQL (no registration, no pairing), and no account ever has two live
//! connections. An event stream of a moving session, opened on the first node, follows it to
//! the second.

#[path = "common/cluster.rs"]
mod cluster_support;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use warden_cluster::placement::preferred;

use cluster_support::{
    LIMIT, Postgres, add_sessions, held, links_after, phone_of, start_node, until_online,
    until_online_after,
};
use common::{fake_whatsapp_with, pair_any};

/// Sessions in the cluster.
const SESSIONS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_gets_the_sessions_placement_prefers_there() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let whatsapp = fake_whatsapp_with(pair_any(Duration::from_millis(200))).await;
    let recorder = whatsapp.recorder();
    let (url, whatsapp_url) = (server.url(), whatsapp.url());
    let scale = [("WARDEN_CLUSTER_TIMING_SCALE", "0.2")];
    let start = |name: &'static str| start_node(&whatsapp_url, &url, name, &scale);
    let (a, _a_dir) = start("a").await;
    let tokens = add_sessions(&server, SESSIONS).await;
    let mut daemons = vec![a];
    until_online(recorder, SESSIONS, LIMIT, &mut daemons).await;
    let on_a = held(&daemons[0]).await;
    assert_eq!(on_a.len(), SESSIONS, "{on_a:?}");

    // What must move: the sessions placement prefers on b, in token order, until a holds no
    // more than the mean.
    let live = vec!["a".to_owned(), "b".to_owned()];
    let prefer_b: Vec<&String> = tokens
        .iter()
        .filter(|t| preferred(t, &live) == Some("b"))
        .collect();
    let moving: Vec<&String> = prefer_b.into_iter().take(SESSIONS / 2).collect();
    let phones: BTreeSet<String> = moving
        .iter()
        .map(|t| phone_of(on_a[*t].as_deref().expect("linked")).to_owned())
        .collect();

    // A moving session's event stream, opened on a while it runs there, follows it to b.
    let followed = moving[0].clone();
    let mut stream =
        common::event_stream(daemons[0].http, &format!("/events?token={followed}"), "")
            .await
            .unwrap_or_else(|(code, body)| panic!("{code}: {body}"));

    let boundary = recorder.inspect(|s| s.connections().len()) as u64;
    let (b, _b_dir) = start("b").await;
    daemons.push(b);
    until_online_after(recorder, boundary, &phones, "the moved").await;
    let on_b: BTreeSet<String> = held(&daemons[1]).await.into_keys().collect();
    let expected: BTreeSet<String> = moving.iter().map(|t| (*t).clone()).collect();
    assert_eq!(on_b, expected, "b runs what placement prefers there");
    let on_a: BTreeSet<String> = held(&daemons[0]).await.into_keys().collect();
    assert_eq!(on_a.len() + on_b.len(), SESSIONS, "{on_a:?} {on_b:?}");
    assert!(on_a.is_disjoint(&on_b));

    stream
        .until(LIMIT, |name, data| {
            let session = &data["session"];
            (name == "session" && session["node"] == "b" && session["state"] == "connected")
                .then_some(())
        })
        .await;

    let (registrations, pairings) = links_after(recorder, boundary);
    assert_eq!(
        (registrations, pairings),
        (0, 0),
        "moved with their credentials"
    );
    assert_eq!(
        recorder.inspect(|s| s.max_concurrent_any()),
        1,
        "never two live connections of one account"
    );
    let handed = daemons[0]
        .log_line("session handed to the node placement prefers")
        .await;
    assert!(handed.contains("token="), "{handed}");
}
