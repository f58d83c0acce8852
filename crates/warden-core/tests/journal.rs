//! The journal through the supervisor: what a session's history says after a reconnect storm,
//! a pairing, messages and a deletion, and the `why` of a status read.

mod common;

use std::time::SystemTime;

use common::{Harness, config, secs};
use warden_core::scripted::Script;
use warden_core::{DisconnectReason, IncomingMessage, PolicyConfig, SessionState};

const JID: &str = "15550001111@s.whatsapp.net";

#[tokio::test(start_paused = true)]
async fn a_reconnect_storm_stays_a_few_counted_entries_that_say_what_happened() {
    let mut h = Harness::with_config(
        Script::new().disconnect(DisconnectReason::ConnectionLost),
        |dir| {
            let mut c = config(dir);
            c.policy = PolicyConfig {
                max_attempts: 200,
                backoff_base: secs(1),
                backoff_cap: secs(2),
                jitter: 0.0,
                ..PolicyConfig::default()
            };
            c.journal.keep = 50;
            c
        },
    )
    .await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Failed).await;
    h.supervisor.flush().await.unwrap();
    assert!(h.link.stats("s1").opens.len() > 200);

    let history = h.supervisor.history("s1", None, 1000).await.unwrap();
    assert!(
        history.len() <= 10,
        "a storm of 200 reconnects is a handful of rows, not {}: {history:#?}",
        history.len()
    );
    let storm = history
        .iter()
        .find(|e| e.data["from"] == "connecting" && e.data["to"] == "backing_off")
        .expect("the failing connects are in the history");
    assert_eq!(storm.data["reason"], "connection_lost");
    assert!(storm.repeats >= 199, "counted: {}", storm.repeats);
    assert!(storm.first_at < storm.at);
    let last = history.last().unwrap();
    assert_eq!(last.data["to"], "failed");
    assert_eq!(last.data["attempts"], 200);
    assert!(history.windows(2).all(|w| w[0].seq < w[1].seq));

    // The status says why, and what the policy decided.
    let why = h.supervisor.status("s1").unwrap().last_disconnect.unwrap();
    assert_eq!(why.from, SessionState::Connecting);
    assert_eq!(why.decision, SessionState::Failed);
    assert_eq!(
        why.reason.as_deref(),
        Some("gave up after 200 reconnect attempts; last: connection_lost")
    );
}

#[tokio::test(start_paused = true)]
async fn history_shows_pairing_messages_and_leaves_the_qr_code_out() {
    let message = IncomingMessage {
        id: "M1".into(),
        chat: JID.into(),
        sender: JID.into(),
        timestamp: SystemTime::UNIX_EPOCH,
        kind: "text".into(),
        text: Some("hello".into()),
    };
    let mut h = Harness::new(Script::new()).await;
    h.run(
        "s1",
        [Script::new()
            .qr("2@secret-ref", secs(60))
            .paired(JID)
            .connected(JID)
            .message(message)],
    )
    .await;
    h.wait_state("s1", SessionState::Connected).await;
    let since = {
        h.supervisor.flush().await.unwrap();
        let all = h.supervisor.history("s1", None, 100).await.unwrap();
        assert_eq!(all[0].data["from"], serde_json::Value::Null, "created");
        all[0].seq
    };
    // The message arrives after the connection; wait for it in the journal.
    let mut head = h.supervisor.journal_head();
    let entries = loop {
        h.supervisor.flush().await.unwrap();
        let entries = h.supervisor.history("s1", Some(since), 100).await.unwrap();
        if entries.iter().any(|e| e.kind == "message") {
            break entries;
        }
        head.changed().await.unwrap();
    };
    assert!(entries.iter().all(|e| e.seq > since));
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"session.qr"), "{kinds:?}");
    let qr = entries.iter().find(|e| e.kind == "session.qr").unwrap();
    assert!(
        qr.data.get("code").is_none(),
        "the pairing secret is not shown"
    );
    assert!(qr.data.get("expires_at").is_some());
    let message = entries.iter().find(|e| e.kind == "message").unwrap();
    assert_eq!(message.data["text"], "hello");
    let states: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == "session.status")
        .map(|e| e.data["to"].as_str().unwrap())
        .collect();
    assert!(
        states.ends_with(&["connected"]) && states.contains(&"pairing"),
        "{states:?}"
    );

    // After a deletion only the removal is left, and an unknown token is not found.
    h.supervisor.delete("s1").await.unwrap();
    h.supervisor.flush().await.unwrap();
    let left = h.supervisor.history("s1", None, 100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].data["to"], "deleted");
    assert!(matches!(
        h.supervisor.history("nobody", None, 100).await,
        Err(warden_core::Error::NotFound(_))
    ));
    assert!(matches!(
        h.supervisor.history("../etc", None, 100).await,
        Err(warden_core::Error::InvalidToken(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn operations_are_journaled_with_the_interface_that_asked_before_they_answer() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Connected).await;
    let socket = h.supervisor.via("socket");
    socket.stop("s1").await.unwrap();
    socket.stop("s1").await.unwrap();
    // No flush here: the answer came after the entry was committed.
    let entries = h.supervisor.history("s1", None, 100).await.unwrap();
    let asked: Vec<(String, String, u32)> = entries
        .iter()
        .filter(|e| e.kind == "session.operation")
        .map(|e| {
            (
                e.data["op"].as_str().unwrap().to_owned(),
                e.data["by"].as_str().unwrap().to_owned(),
                e.repeats,
            )
        })
        .collect();
    assert_eq!(
        asked,
        [
            ("start".to_string(), "embedded".to_string(), 1),
            ("stop".to_string(), "socket".to_string(), 2)
        ]
    );
    // An unknown session gets no entry.
    assert!(socket.stop("nobody").await.is_err());
    assert!(h.supervisor.history("nobody", None, 10).await.is_err());
}
