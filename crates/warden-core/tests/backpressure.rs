//! Incoming messages travel on their own bounded path: a flood on one session does not delay
//! a control operation on another. Real time, because the assertion is about latency under
//! load; the bound (100 ms) is far above what the operation takes (a few ms).

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::Harness;
use warden_core::scripted::Script;
use warden_core::{IncomingMessage, SessionEvent, SessionState};

const JID: &str = "15551234567:1@s.whatsapp.net";
const FLOOD: usize = 10_000;

fn message(n: usize) -> IncomingMessage {
    IncomingMessage {
        id: format!("m{n}"),
        chat: "15550001111@s.whatsapp.net".into(),
        sender: "15550001111@s.whatsapp.net".into(),
        timestamp: SystemTime::now(),
        kind: "text".into(),
        text: Some(format!("message {n}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_incoming_messages_does_not_delay_a_stop_of_another_session() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.run("quiet", []).await;
    h.wait_state("quiet", SessionState::Connected).await;
    let mut events = h.supervisor.subscribe();

    // Logs in, then 10,000 messages as fast as the link can emit them.
    let flood = (0..FLOOD).fold(Script::login(JID), |s, n| s.message(message(n)));
    h.run("chatty", [flood]).await;
    // The flood is under way once its first message is published.
    loop {
        if let SessionEvent::Message { token, .. } = events.recv().await.unwrap()
            && token.as_str() == "chatty"
        {
            break;
        }
    }
    let asked = Instant::now();
    let stopped = h.supervisor.stop("quiet").await.unwrap();
    let took = asked.elapsed();
    assert_eq!(stopped.state, SessionState::Stopped);
    assert!(
        took < Duration::from_millis(100),
        "stop took {took:?} during the flood"
    );

    // The flood is published in order; what the bounded queue refused is counted, and the
    // two add up to the flood.
    let mut last = 0usize;
    let mut received = 1usize;
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.recv().await {
                Ok(SessionEvent::Message { token, message }) if token.as_str() == "chatty" => {
                    let n: usize = message.id[1..].parse().unwrap();
                    assert!(n > last, "in order: {n} after {last}");
                    last = n;
                    received += 1;
                    let stats = h.link.stats("chatty");
                    if stats.scripts_finished == 1
                        && received as u64 + stats.inbound_dropped == FLOOD as u64
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("the test's subscriber: {e}"),
            }
        }
    })
    .await
    .expect("every message is published or counted as dropped");
    assert!(
        received >= warden_core::link::INBOUND_CAPACITY,
        "{received}"
    );
}
