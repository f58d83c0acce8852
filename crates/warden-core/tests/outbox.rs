//! The outbox through the supervisor's API, on tokio's paused clock, with the scripted link:
//! stored before acknowledged, sent in order and paced, idempotent across a restart,
//! followed to read, refused, retried, cancelled, expired, failed by a logout; bad input
//! refused with nothing stored.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, config, secs};
use tokio::sync::broadcast;
use warden_core::scripted::{Script, ScriptedLink};
use warden_core::{
    DisconnectReason, Error, LinkError, MessageStatus, OutgoingMessage, ReceiptKind, SendOutcome,
    SendRequest, SessionEvent, SessionState, Supervisor,
};

const JID: &str = "15551234567:1@s.whatsapp.net";
const TO: &str = "15550001111@s.whatsapp.net";

fn request(to: &str, text: &str, key: Option<&str>) -> SendRequest {
    SendRequest {
        to: to.into(),
        text: text.into(),
        key: key.map(str::to_owned),
    }
}

/// Waits (on the paused clock) until message `id` reaches `status`; returns it.
async fn until(
    events: &mut broadcast::Receiver<SessionEvent>,
    id: &str,
    status: MessageStatus,
) -> OutgoingMessage {
    tokio::time::timeout(Duration::from_secs(24 * 3600), async {
        loop {
            if let SessionEvent::MessageStatus(m) = events.recv().await.expect("events")
                && m.id == id
                && m.status == status
            {
                return *m;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} never became {status}"))
}

/// A harness whose sessions log in, with its config adjusted by `adjust`.
async fn harness(adjust: impl FnOnce(&mut warden_core::SupervisorConfig)) -> Harness {
    Harness::with_config(Script::login(JID), |dir| {
        let mut c = config(dir);
        adjust(&mut c);
        c
    })
    .await
}

/// Starts session `s` with `scripts` and waits until it is in `state`; returns the events
/// from before it started.
async fn session_in(
    h: &mut Harness,
    scripts: Vec<Script>,
    state: SessionState,
) -> broadcast::Receiver<SessionEvent> {
    let events = h.supervisor.subscribe();
    h.run("s", scripts).await;
    h.wait_state("s", state).await;
    events
}

/// A session whose first connection drops: it is backing off.
fn dropped() -> Vec<Script> {
    vec![Script::fail(secs(1), DisconnectReason::ConnectionLost)]
}

#[tokio::test(start_paused = true)]
async fn messages_go_in_order_paced_and_are_followed_to_read() {
    let mut h = harness(|c| {
        c.outbox.per_minute = 2; // one every 30 s
    })
    .await;
    h.link.send_receipts(Some(ReceiptKind::Read));
    let mut events = session_in(&mut h, vec![], SessionState::Connected).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let m = h
            .supervisor
            .send("s", request(TO, &format!("text {n}"), None))
            .await
            .unwrap();
        assert_eq!(m.status, MessageStatus::Queued, "answered once stored");
        ids.push(m.id);
    }
    for id in &ids {
        let read = until(&mut events, id, MessageStatus::Read).await;
        assert_eq!(read.reason, None);
    }
    let stats = h.link.stats("s");
    assert_eq!(
        stats.sent.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        ids,
        "in the order accepted, each once"
    );
    let gaps: Vec<u64> = stats
        .sent_at
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    assert_eq!(gaps, [30, 30], "paced at per_minute = 2");
    assert!(h.supervisor.outbox("s", 10).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_message_sent_while_backing_off_goes_once_the_session_is_back() {
    let mut h = Harness::new(Script::login(JID)).await;
    let mut events = session_in(&mut h, dropped(), SessionState::BackingOff).await;
    let m = h
        .supervisor
        .send("s", request(TO, "while away", None))
        .await
        .unwrap();
    assert_eq!(m.status, MessageStatus::Queued);
    assert!(h.link.stats("s").sent.is_empty());
    until(&mut events, &m.id, MessageStatus::Sent).await;
    assert_eq!(h.link.stats("s").sent.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_key_names_one_message_even_across_a_restart() {
    let mut h = Harness::new(Script::login(JID)).await;
    let mut events = session_in(&mut h, vec![], SessionState::Connected).await;
    let first = h
        .supervisor
        .send("s", request(TO, "once", Some("order-42")))
        .await
        .unwrap();
    until(&mut events, &first.id, MessageStatus::Sent).await;
    let again = h
        .supervisor
        .send("s", request(TO, "once, again", Some("order-42")))
        .await
        .unwrap();
    assert_eq!(
        (again.id.as_str(), again.status),
        (first.id.as_str(), MessageStatus::Sent)
    );
    assert_eq!(
        again.text, "once",
        "the first message, not the second request"
    );

    h.supervisor.shutdown().await.unwrap();
    let link = ScriptedLink::new(Script::login(JID));
    let (supervisor, _) = Supervisor::start(
        config(h.dir.path()).with_db(h.db.clone()),
        Arc::new(link.clone()),
    )
    .await
    .unwrap();
    let after = supervisor
        .send("s", request(TO, "once", Some("order-42")))
        .await
        .unwrap();
    assert_eq!(after.id, first.id);
    assert_eq!(
        supervisor
            .message_status("s", "order-42")
            .await
            .unwrap()
            .status,
        MessageStatus::Sent
    );
    assert!(link.stats("s").sent.is_empty(), "nothing sent twice");
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let mut h = Harness::new(Script::login(JID)).await;
    session_in(&mut h, vec![], SessionState::Connected).await;
    let cases = [
        request("not a number", "hi", None),
        request("1555@example.com", "hi", None),
        request(TO, "", None),
        request(TO, " \n ", None),
        request(TO, &"x".repeat(65_537), None),
        request(TO, "hi", Some(&"k".repeat(129))),
        request(TO, "hi", Some("")),
    ];
    for case in cases {
        match h.supervisor.send("s", case.clone()).await {
            Err(Error::InvalidRequest(why)) => assert!(!why.is_empty()),
            other => panic!("{case:?}: {other:?}"),
        }
    }
    assert!(matches!(
        h.supervisor.send("nobody", request(TO, "hi", None)).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        h.supervisor.send("../x", request(TO, "hi", None)).await,
        Err(Error::InvalidToken(_))
    ));
    assert!(matches!(
        h.supervisor.message_status("s", "nope").await,
        Err(Error::MessageNotFound { .. })
    ));
    assert!(h.supervisor.outbox("s", 100).await.unwrap().is_empty());
    assert!(h.link.stats("s").sent.is_empty());
}

#[tokio::test(start_paused = true)]
async fn failing_sends_are_retried_then_fail_and_an_operator_can_retry_or_cancel() {
    let mut h = harness(|c| {
        c.outbox.max_attempts = 3;
    })
    .await;
    h.link
        .answer_sends((0..3).map(|n| Err(LinkError::Send(format!("no pre-keys ({n})")))));
    let mut events = session_in(&mut h, vec![], SessionState::Connected).await;
    let m = h
        .supervisor
        .send("s", request(TO, "hi", None))
        .await
        .unwrap();
    let failed = until(&mut events, &m.id, MessageStatus::Failed).await;
    assert_eq!(failed.attempts, 3);
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap()
            .contains("no pre-keys (2)"),
        "{failed:?}"
    );
    assert_eq!(
        h.link.stats("s").sent.len(),
        3,
        "three tries, each under the same id"
    );
    assert!(h.link.stats("s").sent.iter().all(|s| s.id == m.id));

    // Failed: listed, and retried on request (the link answers again now).
    let outbox = h.supervisor.outbox("s", 10).await.unwrap();
    assert_eq!(outbox.len(), 1);
    let retried = h.supervisor.retry_message("s", &m.id).await.unwrap();
    assert_eq!(
        (retried.status, retried.attempts),
        (MessageStatus::Queued, 0)
    );
    until(&mut events, &m.id, MessageStatus::Sent).await;
    assert!(
        matches!(
            h.supervisor.cancel_message("s", &m.id).await,
            Err(Error::InvalidRequest(_))
        ),
        "a sent message cannot be cancelled"
    );
    assert!(matches!(
        h.supervisor.retry_message("s", &m.id).await,
        Err(Error::InvalidRequest(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_fails_the_message_and_463_pauses_only_new_chats() {
    const OTHER: &str = "15550002222@s.whatsapp.net";
    let mut h = Harness::new(Script::login(JID)).await;
    let mut events = session_in(&mut h, vec![], SessionState::Connected).await;
    let known = h
        .supervisor
        .send("s", request(TO, "first", None))
        .await
        .unwrap();
    until(&mut events, &known.id, MessageStatus::Sent).await;
    h.link.answer_sends([Ok(SendOutcome::Refused {
        code: 463,
        until: None,
    })]);
    let refused = h
        .supervisor
        .send("s", request(OTHER, "new chat", None))
        .await
        .unwrap();
    let failed = until(&mut events, &refused.id, MessageStatus::Failed).await;
    assert_eq!(failed.code, Some(463));
    let until_at = h.supervisor.new_chats_paused_until("s").expect("paused");
    let left = until_at
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(23 * 3600),
        "24 h when the server names no end"
    );

    let waiting = h
        .supervisor
        .send("s", request(OTHER, "still new", None))
        .await
        .unwrap();
    let goes = h
        .supervisor
        .send("s", request(TO, "known chat", None))
        .await
        .unwrap();
    until(&mut events, &goes.id, MessageStatus::Sent).await;
    assert_eq!(
        h.supervisor
            .message_status("s", &waiting.id)
            .await
            .unwrap()
            .status,
        MessageStatus::Queued
    );
    // Cancelling the waiting one: it never goes.
    let cancelled = h.supervisor.cancel_message("s", &waiting.id).await.unwrap();
    assert_eq!(cancelled.status, MessageStatus::Cancelled);
    let pending = h.supervisor.outbox("s", 10).await.unwrap();
    assert_eq!(
        pending.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        [refused.id.as_str()],
        "a cancelled message is not pending"
    );
}

#[tokio::test(start_paused = true)]
async fn queued_messages_expire_and_a_logout_fails_the_rest() {
    let mut h = harness(|c| {
        c.outbox.ttl = Duration::from_secs(600);
        c.outbox.expiry_check = Duration::from_secs(60);
        c.policy.backoff_base = Duration::from_secs(3600);
        c.policy.backoff_cap = Duration::from_secs(3600);
    })
    .await;
    let mut events = session_in(&mut h, dropped(), SessionState::BackingOff).await;
    let old = h
        .supervisor
        .send("s", request(TO, "old", None))
        .await
        .unwrap();
    let expired = until(&mut events, &old.id, MessageStatus::Failed).await;
    assert!(
        expired.reason.as_deref().unwrap().contains("expired"),
        "{expired:?}"
    );
    let expired_after = expired.updated_at.duration_since(old.created_at).unwrap();
    assert!(
        expired_after >= Duration::from_secs(600) && expired_after <= Duration::from_secs(720),
        "{expired_after:?}"
    );

    let pending = h
        .supervisor
        .send("s", request(TO, "pending", None))
        .await
        .unwrap();
    h.supervisor.logout("s").await.unwrap();
    let gone = until(&mut events, &pending.id, MessageStatus::Failed).await;
    assert!(
        gone.reason.as_deref().unwrap().contains("logged out"),
        "{gone:?}"
    );
    assert!(matches!(
        h.supervisor.send("s", request(TO, "after", None)).await,
        Err(Error::NotConnected { .. })
    ));
    assert!(h.link.stats("s").sent.is_empty());
}

#[tokio::test(start_paused = true)]
async fn with_a_zero_ttl_messages_live_only_while_connected() {
    let mut h = harness(|c| {
        c.outbox.ttl = Duration::ZERO;
        c.outbox.per_minute = 1;
    })
    .await;
    let mut events = session_in(&mut h, vec![], SessionState::Connected).await;
    let first = h
        .supervisor
        .send("s", request(TO, "one", None))
        .await
        .unwrap();
    let second = h
        .supervisor
        .send("s", request(TO, "two", None))
        .await
        .unwrap();
    until(&mut events, &first.id, MessageStatus::Sent).await;
    // The second waits for its pace; the session stops first.
    h.supervisor.stop("s").await.unwrap();
    let dropped = until(&mut events, &second.id, MessageStatus::Failed).await;
    assert!(
        dropped.reason.as_deref().unwrap().contains("ttl = 0"),
        "{dropped:?}"
    );
    assert!(matches!(
        h.supervisor.send("s", request(TO, "three", None)).await,
        Err(Error::NotConnected { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn messages_to_new_chats_go_when_the_463_pause_ends() {
    const NEW: &str = "15550003333@s.whatsapp.net";
    let mut h = Harness::new(Script::login(JID)).await;
    let mut events = session_in(&mut h, vec![], SessionState::Connected).await;
    h.link.answer_sends([Ok(SendOutcome::Refused {
        code: 463,
        until: Some(std::time::SystemTime::now() + Duration::from_secs(600)),
    })]);
    let refused = h
        .supervisor
        .send("s", request(NEW, "one", None))
        .await
        .unwrap();
    until(&mut events, &refused.id, MessageStatus::Failed).await;
    let paused_at = tokio::time::Instant::now();
    let waiting = h
        .supervisor
        .send("s", request(NEW, "two", None))
        .await
        .unwrap();
    until(&mut events, &waiting.id, MessageStatus::Sent).await;
    let waited = paused_at.elapsed();
    assert!(
        waited >= Duration::from_secs(595) && waited <= Duration::from_secs(610),
        "sent when the pause ended, not before and not at the next send: {waited:?}"
    );
    assert!(h.supervisor.new_chats_paused_until("s").is_none());
}

#[tokio::test(start_paused = true)]
async fn messages_out_of_the_queue_are_deleted_after_the_retention() {
    let mut h = harness(|c| {
        c.outbox.retention = Duration::from_secs(3600);
        c.outbox.expiry_check = Duration::from_secs(60);
    })
    .await;
    let mut events = session_in(&mut h, vec![], SessionState::Connected).await;
    let m = h
        .supervisor
        .send("s", request(TO, "short-lived", Some("k-old")))
        .await
        .unwrap();
    until(&mut events, &m.id, MessageStatus::Sent).await;
    tokio::time::sleep(Duration::from_secs(3500)).await;
    assert!(
        h.supervisor.message_status("s", "k-old").await.is_ok(),
        "kept within it"
    );
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert!(matches!(
        h.supervisor.message_status("s", "k-old").await,
        Err(Error::MessageNotFound { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn the_pace_holds_across_a_reconnect() {
    let mut h = harness(|c| c.outbox.per_minute = 2).await;
    let flap = Script::login(JID)
        .wait(secs(5))
        .disconnect(DisconnectReason::ConnectionLost);
    let mut events = session_in(&mut h, vec![flap], SessionState::Connected).await;
    let first = h
        .supervisor
        .send("s", request(TO, "one", None))
        .await
        .unwrap();
    until(&mut events, &first.id, MessageStatus::Sent).await;
    let second = h
        .supervisor
        .send("s", request(TO, "two", None))
        .await
        .unwrap();
    until(&mut events, &second.id, MessageStatus::Sent).await;
    let stats = h.link.stats("s");
    assert_eq!(
        stats.opens.len(),
        2,
        "the second went on the next connection"
    );
    assert_eq!(
        (stats.sent_at[1] - stats.sent_at[0]).as_secs(),
        30,
        "30 s apart, not at the reconnect (3 s after the drop)"
    );
}
