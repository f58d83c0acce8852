//! The control plane across a cluster: two `warden serve` nodes over a real PostgreSQL
//! (Debian's, started by the test; skipped where none is installed) and the fake WhatsApp
//! server, driven only through each node's control socket with the CLI.
//!
//! What it proves:
//! - an operation asked of the node that does not run the session reaches the node that
//!   does, and its reply comes once that node carried it out: `start` of a session just
//!   created (before any node claimed it: the request waits for its owner), `status`, `stop`
//!   (the server sees the connection close), `delete`;
//! - `watch` through the other node follows the session to `connected`, its QR code scanned;
//!   watching everything there shows it (with its node) and then its deletion;
//! - `sessions` (the list) and `health` on either node cover the whole cluster, each session
//!   marked with the node that runs it;
//! - the HTTP routes with a `{token}` work against either node: the legacy status and a stop
//!   through the node that does not run the session answer as the owner would, the legacy
//!   list has every node's sessions, and the node asked checks the API key;
//! - `GET /events` on the node that does not run the session, of that session and of
//!   everything, shows it with its node, sees it stop and sees it deleted (the session's own
//!   stream then ends); of a token the cluster does not have, it is a 404; of a session just
//!   created on the other node (a stream of everything open), it is found at once, on HTTP
//!   and on the socket, then seen connected once the watching node runs it, then deleted;
//! - a deletion's own journal entry is kept (in the removal's commit), read on either node;
//!   a history followed on the node that does not run the session sees the owner's commits;
//! - an unknown token is `not found` at once, not after the wait for an owner.

#[path = "common/cluster.rs"]
mod cluster_support;
mod common;

use std::time::Duration;

use tokio::time::Instant;

use cluster_support::{LIMIT, Postgres, phone_of, said, start_nodes};
use common::{curl, curl_with, fake_whatsapp_with, pair_any, until};
use warden_control::{ControlClient, EventLine, Op};

/// The lease timings, five times faster than the defaults.
const SCALE: &str = "0.2";
/// The HTTP gateways' API key.
const KEY: &str = "cluster-control-test-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_answers_for_every_session_of_the_cluster() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let whatsapp = fake_whatsapp_with(pair_any(Duration::from_millis(200))).await;
    let recorder = whatsapp.recorder();
    let url = server.url();
    let extra = [
        ("WARDEN_CLUSTER_TIMING_SCALE", SCALE),
        ("WARDEN_HTTP_API_KEY", KEY),
    ];
    let (mut daemons, _dirs) = start_nodes(&whatsapp.url(), &url, &["a", "b"], &extra).await;

    // Created through a, started through a at once: whichever node claims it carries the
    // start out, and the reply says so.
    let (code, out, err) = daemons[0].cli(&["create", "--token", "shop1"]).await;
    assert_eq!(code, 0, "{out} {err}");
    let started = daemons[0].json(&["start", "shop1", "--no-wait"]).await;
    assert_eq!(started["desired"], "running", "{started}");

    // Both lists show it once, on the node that runs it.
    let list_a = daemons[0].json(&["sessions"]).await;
    let list_b = daemons[1].json(&["sessions"]).await;
    for list in [&list_a, &list_b] {
        let sessions = list["sessions"].as_array().expect("sessions");
        assert_eq!(sessions.len(), 1, "{list}");
        assert_eq!(sessions[0]["token"], "shop1");
        assert!(list.get("unplaced").is_none(), "{list}");
    }
    let owner = list_a["sessions"][0]["node"]
        .as_str()
        .expect("the node that runs it")
        .to_owned();
    assert_eq!(list_b["sessions"][0]["node"], owner.as_str());
    let (here, there) = if owner == "a" { (0, 1) } else { (1, 0) };
    assert!(
        daemons[there].json(&["status"]).await["sessions"][0]["node"] == owner.as_str(),
        "the other node names the owner"
    );

    // Watched through the node that does not run it: the QR code is scanned, it connects.
    let connected = until(&daemons[there].socket, "shop1", |s| s.state == "connected").await;
    let phone = phone_of(connected.jid.as_deref().expect("linked")).to_owned();

    // Watching everything through the other node shows it too, with its node.
    let mut watch_all = ControlClient::connect(&daemons[there].socket)
        .await
        .unwrap();
    let reply = watch_all.request(&Op::Watch { token: None }).await.unwrap();
    assert!(reply.ok, "{reply:?}");
    let seen = next_of(&mut watch_all, |line| match line {
        EventLine::Session { session } if session.token == "shop1" => Some(session),
        _ => None,
    })
    .await;
    assert_eq!(seen.state, "connected");
    assert_eq!(seen.node.as_deref(), Some(owner.as_str()));

    // Status through the other node: the owner's live view.
    let status = daemons[there].json(&["status", "shop1"]).await;
    assert_eq!(status["state"], "connected", "{status}");
    assert_eq!(status["jid"], connected.jid.as_deref().unwrap());

    // Health through the other node covers both.
    let health = daemons[there].json(&["health"]).await;
    assert_eq!(health["sessions"], 1, "{health}");
    assert_eq!(health["nodes"]["a"]["status"], "ok", "{health}");
    assert_eq!(health["nodes"]["b"]["status"], "ok", "{health}");
    assert_eq!(health["nodes"][owner.as_str()]["sessions"], 1, "{health}");

    // HTTP through the other node: the legacy status as the owner answers it; an unknown
    // token is the local 404.
    let key = format!("X-Api-Key: {KEY}\r\n");
    let (code, refused) = curl(daemons[there].http, "GET", "/session/status/shop1", None).await;
    assert_eq!(code, 401, "the node asked checks the key: {refused}");
    let (code, legacy) = curl_with(
        daemons[there].http,
        "GET",
        "/session/status/shop1",
        None,
        &key,
    )
    .await;
    assert_eq!(code, 200, "{legacy}");
    assert_eq!(legacy["status"], "connected", "{legacy}");
    assert_eq!(legacy["isReady"], true, "{legacy}");
    assert_eq!(legacy["jid"], connected.jid.as_deref().unwrap());
    let (code, missing) = curl_with(
        daemons[there].http,
        "GET",
        "/session/status/nobody",
        None,
        &key,
    )
    .await;
    assert_eq!(code, 404, "{missing}");

    // Its event stream, through the other node: its state as the owner reports it, followed
    // there. The stream of everything there has it too, with its node. An unknown token is
    // the local 404.
    let mut one_stream = common::event_stream(daemons[there].http, "/events?token=shop1", &key)
        .await
        .unwrap_or_else(|(code, body)| panic!("{code}: {body}"));
    let watching = one_stream
        .until(LIMIT, |name, data| {
            (name == "watching").then(|| data.clone())
        })
        .await;
    assert_eq!(watching["watching"], "shop1", "{watching}");
    let first = one_stream.until(LIMIT, session_of("shop1")).await;
    assert_eq!(first["state"], "connected", "{first}");
    assert_eq!(first["node"], owner.as_str(), "{first}");
    let mut all_stream = common::event_stream(daemons[there].http, "/events", &key)
        .await
        .unwrap_or_else(|(code, body)| panic!("{code}: {body}"));
    let seen = all_stream.until(LIMIT, session_of("shop1")).await;
    assert_eq!(seen["state"], "connected", "{seen}");
    assert_eq!(seen["node"], owner.as_str(), "{seen}");
    let missing = common::event_stream(daemons[there].http, "/events?token=nobody", &key).await;
    let Err((code, body)) = missing else {
        panic!("a stream of a session the cluster does not have");
    };
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["code"], "not_found", "{body}");

    // The legacy list through the other node has it, with its node.
    let (code, sessions) = curl_with(daemons[there].http, "GET", "/sessions", None, &key).await;
    assert_eq!(code, 200, "{sessions}");
    assert_eq!(sessions["total"], 1, "{sessions}");
    assert_eq!(sessions["sessions"][0]["token"], "shop1");
    assert_eq!(
        sessions["sessions"][0]["node"],
        owner.as_str(),
        "{sessions}"
    );

    // The session's history, followed on the other node: the owner's commits reach it.
    let mut follow = ControlClient::connect(&daemons[there].socket)
        .await
        .unwrap();
    let reply = follow
        .request(&Op::History {
            token: "shop1".into(),
            since: None,
            limit: Some(1),
            follow: true,
        })
        .await
        .unwrap();
    assert!(reply.ok, "{reply:?}");
    // Quiet for longer than its look every second: the follow goes on (no `closed`).
    let quiet = tokio::time::timeout(Duration::from_millis(2500), follow.next_event()).await;
    assert!(
        quiet.is_err(),
        "nothing new, and the follow still open: {quiet:?}"
    );

    // Stop through the other node (HTTP): answered once the owner stopped it; the server saw
    // its connection close.
    let (code, stopped) = curl_with(
        daemons[there].http,
        "POST",
        "/session/stop/shop1",
        None,
        &key,
    )
    .await;
    assert_eq!(code, 200, "{stopped}");
    assert_eq!(stopped["session"]["desired"], "stopped", "{stopped}");
    recorder
        .wait_until(LIMIT, |s| {
            let conns = s.connections_for(&phone);
            !conns.is_empty() && conns.iter().all(|c| c.closed.is_some())
        })
        .await
        .unwrap_or_else(|_| panic!("the connection closed; {}", said(&mut daemons)));
    next_of(&mut follow, |line| match line {
        EventLine::History { entries, .. } if entries.iter().any(|e| e.data["to"] == "stopped") => {
            Some(())
        }
        EventLine::Closed { reason } => panic!("the follow ended: {reason}"),
        _ => None,
    })
    .await;
    let status = daemons[here].json(&["status", "shop1"]).await;
    assert_eq!(
        status["desired"], "stopped",
        "the owner carried it out: {status}"
    );
    // Both event streams of the other node saw it stop.
    for stream in [&mut one_stream, &mut all_stream] {
        let stopped = stream
            .until(LIMIT, |name, data| {
                let session = session_of("shop1")(name, data)?;
                (session["state"] == "stopped").then_some(session)
            })
            .await;
        assert_eq!(stopped["desired"], "stopped", "{stopped}");
    }

    // Started again through the other node's socket; stopped again there.
    let started = daemons[there].json(&["start", "shop1", "--no-wait"]).await;
    assert_eq!(started["desired"], "running", "{started}");
    until(&daemons[there].socket, "shop1", |s| s.state == "connected").await;
    let stopped = daemons[there].json(&["stop", "shop1"]).await;
    assert_eq!(stopped["desired"], "stopped", "{stopped}");

    // Delete through the other node: gone everywhere.
    let (code, out, err) = daemons[there].cli(&["--json", "delete", "shop1"]).await;
    assert_eq!(code, 0, "{out} {err} {}", said(&mut daemons));
    let deleted: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(deleted["deleted"], "shop1", "{deleted}");
    for daemon in &daemons {
        let (code, out, err) = daemon.cli(&["status", "shop1"]).await;
        assert_ne!(code, 0, "deleted: {out}");
        assert!(
            err.contains("no session") || out.contains("no session"),
            "{out} {err}"
        );
    }

    // Its deletion's own entry is in the cluster's journal, read on either node.
    let history = daemons[there].json(&["history", "shop1"]).await;
    let entries = history["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "the deletion took the rest: {history}");
    assert_eq!(entries[0]["data"]["to"], "deleted", "{history}");

    // The watch of everything on the other node saw it go.
    next_of(&mut watch_all, |line| match line {
        EventLine::Removed { token } if token == "shop1" => Some(()),
        _ => None,
    })
    .await;
    // So did both event streams there; the session's own stream then ends.
    for stream in [&mut one_stream, &mut all_stream] {
        stream
            .until(LIMIT, |name, data| {
                (name == "removed" && data["token"] == "shop1").then_some(())
            })
            .await;
    }
    let closed = one_stream
        .until(LIMIT, |name, data| (name == "closed").then(|| data.clone()))
        .await;
    assert_eq!(closed["reason"], "the session was deleted", "{closed}");
    assert!(one_stream.next().await.is_none(), "the stream ended");

    // A session just created on one node, watched at once on the other (whose watchers share
    // a look at the cluster that may predate it): found, though no node runs it yet. Started,
    // it is claimed by the watching node (placement prefers it there), whose own events then
    // tell: both streams see it connected. Deleted, both see it go.
    let other_name = if there == 0 { "a" } else { "b" };
    let live = ["a".to_owned(), "b".to_owned()];
    let new_token = (2..)
        .map(|n| format!("shop{n}"))
        .find(|t| warden_cluster::placement::preferred(t, &live) == Some(other_name))
        .unwrap();
    let (code, out, err) = daemons[here].cli(&["create", "--token", &new_token]).await;
    assert_eq!(code, 0, "{out} {err}");
    let path = format!("/events?token={new_token}");
    let mut new_stream = common::event_stream(daemons[there].http, &path, &key)
        .await
        .unwrap_or_else(|(code, body)| panic!("a session just created: {code}: {body}"));
    let watching = new_stream
        .until(LIMIT, |name, data| {
            (name == "watching").then(|| data.clone())
        })
        .await;
    assert_eq!(watching["watching"], new_token.as_str(), "{watching}");
    let mut watch_new = ControlClient::connect(&daemons[there].socket)
        .await
        .unwrap();
    let reply = watch_new
        .request(&Op::Watch {
            token: Some(new_token.clone()),
        })
        .await
        .unwrap();
    assert!(reply.ok, "a session just created: {reply:?}");
    let started = daemons[here]
        .json(&["start", &new_token, "--no-wait"])
        .await;
    assert_eq!(started["desired"], "running", "{started}");
    next_of(&mut watch_new, |line| match line {
        EventLine::Session { session } if session.state == "connected" => Some(()),
        _ => None,
    })
    .await;
    new_stream
        .until(LIMIT, |name, data| {
            (name == "session" && data["session"]["state"] == "connected").then_some(())
        })
        .await;
    assert!(
        cluster_support::held(&daemons[there])
            .await
            .contains_key(&new_token),
        "claimed by the watching node"
    );
    let (code, out, err) = daemons[here].cli(&["delete", &new_token]).await;
    assert_eq!(code, 0, "{out} {err}");
    new_stream
        .until(LIMIT, |name, data| {
            (name == "removed" && data["token"] == new_token.as_str()).then_some(())
        })
        .await;
    next_of(&mut watch_new, |line| match line {
        EventLine::Closed { reason } => Some(reason),
        _ => None,
    })
    .await;

    // An unknown token is not found at once.
    let asked = Instant::now();
    let (code, out, err) = daemons[there].cli(&["stop", "nobody"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("no session") || out.contains("no session"),
        "{out} {err}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "not found without waiting for an owner: {:?}",
        asked.elapsed()
    );
}

/// Picks a `session` event of `token`: its session.
fn session_of(token: &str) -> impl Fn(&str, &serde_json::Value) -> Option<serde_json::Value> + '_ {
    move |name, data| {
        (name == "session" && data["session"]["token"] == token).then(|| data["session"].clone())
    }
}

/// The first line of `watch` that `pick` takes.
async fn next_of<T>(watch: &mut ControlClient, pick: impl Fn(EventLine) -> Option<T>) -> T {
    let wait = async {
        loop {
            let line = watch
                .next_event()
                .await
                .unwrap()
                .expect("the stream goes on");
            if let Some(found) = pick(line) {
                return found;
            }
        }
    };
    tokio::time::timeout(LIMIT, wait)
        .await
        .expect("seen on the watch")
}
