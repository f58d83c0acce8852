//! A panic inside one session's actor is that session's business: with 1,000 sessions
//! connected, one whose connection drops and whose next open panics (in its session actor) is
//! handled by the restart policy as `session_crashed` and comes back, while the other 999 see
//! no state change and no event of theirs is dropped. Paused clock: the schedule is exact.

mod common;

use std::collections::HashSet;

use common::{Harness, secs};
use tokio::sync::broadcast::error::TryRecvError;
use warden_core::scripted::{Script, Step};
use warden_core::{DisconnectReason, SessionEvent, SessionState};

const CALM: usize = 999;

#[tokio::test(start_paused = true)]
async fn one_panicking_session_among_a_thousand_disturbs_no_other() {
    let mut h = Harness::new(Script::login("ok@s.whatsapp.net")).await;
    let calm: Vec<String> = (0..CALM).map(|i| format!("calm{i}")).collect();
    let mut connected = HashSet::new();
    let mut watch = h.supervisor.subscribe();
    for token in &calm {
        h.supervisor.create(None, Some(token)).await.unwrap();
        h.supervisor
            .start_session(token, Default::default())
            .await
            .unwrap();
    }
    while connected.len() < CALM {
        if let SessionEvent::Updated(info) = watch.recv().await.unwrap()
            && info.state == SessionState::Connected
        {
            connected.insert(info.token.to_string());
        }
    }

    // From here on, every event is recorded; none may be about a calm session.
    let mut events = h.supervisor.subscribe();
    h.run(
        "crashy",
        [
            // Up for a minute, then dropped; the reconnect panics inside its session actor;
            // the one after that logs in.
            Script::login("c@s.whatsapp.net")
                .wait(secs(60))
                .disconnect(DisconnectReason::ConnectionLost),
            Script::new().then(Step::PanicOnOpen),
            Script::login("c@s.whatsapp.net"),
        ],
    )
    .await;
    let mut crashed = false;
    let mut back = false;
    let mut seen = 0usize;
    while !back {
        match events.recv().await {
            Ok(event) => {
                seen += 1;
                assert_eq!(
                    event.token().as_str(),
                    "crashy",
                    "a calm session was touched: {event:?}"
                );
                if let SessionEvent::Updated(info) = event {
                    crashed |= info
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.contains("session_crashed"));
                    back = crashed && info.state == SessionState::Connected;
                }
            }
            Err(e) => panic!("an event was dropped: {e}"),
        }
    }
    assert!(crashed, "the panic was handled as session_crashed");
    assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));
    assert!(seen > 0);
    for token in &calm {
        let stats = h.link.stats(token);
        assert_eq!((stats.opens.len(), stats.live), (1, 1), "{token}");
        assert_eq!(
            h.supervisor.status(token).unwrap().state,
            SessionState::Connected,
            "{token}"
        );
    }
    assert_eq!(h.link.stats("crashy").opens.len(), 3);
    assert!(h.supervisor.is_running());
    assert_eq!(h.link.max_live_any(), 1);
}
