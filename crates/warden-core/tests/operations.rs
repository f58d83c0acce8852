//! The supervisor's operations: start, stop, restart, refresh, logout, delete, cleanup, send.

mod common;

use common::{Harness, mins, secs};
use warden_core::scripted::Script;
use warden_core::{DisconnectReason, Error, MessageStatus, SessionEvent, SessionState, TokenError};

const JID: &str = "15551234567@s.whatsapp.net";

#[tokio::test(start_paused = true)]
async fn start_is_idempotent_for_a_connected_session() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Connected).await;
    let again = h
        .supervisor
        .start_session("s1", Default::default())
        .await
        .unwrap();
    assert_eq!(again.state, SessionState::Connected);
    assert_eq!(h.link.stats("s1").opens.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn restart_is_refused_within_the_cooldown_unless_forced() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Connected).await;
    tokio::time::sleep(secs(6)).await;
    match h.supervisor.restart("s1", false).await {
        Err(Error::Cooldown { retry_after, .. }) => assert_eq!(retry_after, secs(24)),
        other => panic!("expected a cooldown, got {other:?}"),
    }
    let message = h
        .supervisor
        .restart("s1", false)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "session s1 is cooling down: retry in 24 s, or pass --force"
    );
    // Forced: goes through; the old connection is gone before the new one opens.
    h.supervisor.restart("s1", true).await.unwrap();
    h.wait_state("s1", SessionState::Connected).await;
    assert_eq!(h.link.stats("s1").opens.len(), 2);
    // After the cooldown, a plain restart goes through too.
    tokio::time::sleep(secs(31)).await;
    h.supervisor.restart("s1", false).await.unwrap();
    h.wait_state("s1", SessionState::Connected).await;
    let stats = h.link.stats("s1");
    assert_eq!(stats.opens.len(), 3);
    assert_eq!(stats.max_live, 1);
}

#[tokio::test(start_paused = true)]
async fn force_cleanup_cancels_a_pending_restart() {
    let mut h = Harness::new(Script::new().disconnect(DisconnectReason::ConnectionLost)).await;
    h.run("s1", []).await;
    let info = h.wait_state("s1", SessionState::BackingOff).await;
    assert!(info.next_retry_at.is_some());
    let info = h.supervisor.force_cleanup("s1").await.unwrap();
    assert_eq!(info.state, SessionState::Stopped);
    assert_eq!(info.reason.as_deref(), Some("force cleanup"));
    assert_eq!(info.next_retry_at, None);
    tokio::time::sleep(mins(60)).await;
    assert_eq!(h.link.stats("s1").opens.len(), 1);
    assert_eq!(
        h.supervisor.status("s1").unwrap().state,
        SessionState::Stopped
    );
}

#[tokio::test(start_paused = true)]
async fn force_cleanup_closes_a_live_connection_and_answers_once_it_is_gone() {
    let mut h = Harness::new(Script::new()).await;
    h.run("s1", [Script::new().qr("ref", secs(60))]).await;
    h.wait_state("s1", SessionState::WaitingForScan).await;
    let info = h.supervisor.force_cleanup("s1").await.unwrap();
    assert_eq!(info.state, SessionState::Stopped);
    assert_eq!(info.qr, None);
    assert_eq!(h.link.stats("s1").live, 0);
}

#[tokio::test(start_paused = true)]
async fn reset_reconnect_sets_attempts_to_zero() {
    let mut h = Harness::new(Script::new().disconnect(DisconnectReason::TimedOut)).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Failed).await;
    let info = h.supervisor.reset_reconnect("s1").await.unwrap();
    assert_eq!(info.attempts, 0);
    // A start from `failed` gets the full budget again: three more retries.
    h.supervisor
        .start_session("s1", Default::default())
        .await
        .unwrap();
    h.wait("s1", |i| i.state == SessionState::Failed && i.attempts == 3)
        .await;
    assert_eq!(h.link.stats("s1").opens.len(), 8);
}

#[tokio::test(start_paused = true)]
async fn stop_keeps_the_session_and_start_brings_it_back() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Connected).await;
    let info = h.supervisor.stop("s1").await.unwrap();
    assert_eq!(info.state, SessionState::Stopped);
    assert_eq!(info.jid.as_deref(), Some(JID));
    assert_eq!(h.link.stats("s1").credentials_deleted, 0);
    h.supervisor
        .start_session("s1", Default::default())
        .await
        .unwrap();
    h.wait_state("s1", SessionState::Connected).await;
    assert_eq!(h.link.stats("s1").opens.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn logout_closes_and_deletes_credentials() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Connected).await;
    let info = h.supervisor.logout("s1").await.unwrap();
    assert_eq!(info.state, SessionState::LoggedOut);
    assert_eq!(info.jid, None);
    let stats = h.link.stats("s1");
    assert_eq!(stats.credentials_deleted, 1);
    assert_eq!(stats.live, 0);
    tokio::time::sleep(mins(60)).await;
    assert_eq!(h.link.stats("s1").opens.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn delete_removes_the_session_and_every_row() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Connected).await;
    assert_eq!(
        h.db.rows_of("s1").await.unwrap(),
        1,
        "its record is committed"
    );
    h.supervisor.delete("s1").await.unwrap();
    assert_eq!(h.db.rows_of("s1").await.unwrap(), 0, "no row is left");
    assert_eq!(h.link.stats("s1").forgotten, 1);
    assert_eq!(h.link.stats("s1").live, 0);
    assert!(matches!(h.supervisor.status("s1"), Err(Error::NotFound(_))));
    assert!(matches!(
        h.supervisor.delete("s1").await,
        Err(Error::NotFound(_))
    ));
    // The token can be used again.
    h.supervisor.create(None, Some("s1")).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn refresh_qr_only_fits_a_session_that_shows_or_showed_one() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.run("linked", []).await;
    h.wait_state("linked", SessionState::Connected).await;
    let err = h.supervisor.refresh_qr("linked").await.unwrap_err();
    assert!(err.to_string().contains("log out first"), "{err}");

    h.run(
        "new",
        [
            Script::new().qr("a", secs(60)),
            Script::new().qr("b", secs(60)),
        ],
    )
    .await;
    h.wait("new", |i| i.qr.as_ref().is_some_and(|q| q.code == "a"))
        .await;
    h.supervisor.refresh_qr("new").await.unwrap();
    h.wait("new", |i| i.qr.as_ref().is_some_and(|q| q.code == "b"))
        .await;
    assert_eq!(h.link.stats("new").max_live, 1);
}

#[tokio::test(start_paused = true)]
async fn send_text_needs_a_session_that_is_connected_or_on_its_way_back() {
    let mut h = Harness::new(Script::new()).await;
    h.run("s1", [Script::new().qr("a", secs(60))]).await;
    h.wait_state("s1", SessionState::WaitingForScan).await;
    let err = h
        .supervisor
        .send_text("s1", "15550001111", "hi")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotConnected { .. }), "{err}");
    assert!(h.supervisor.outbox("s1", 10).await.unwrap().is_empty());

    let mut events = h.supervisor.subscribe();
    h.run("s2", [Script::login(JID)]).await;
    h.wait_state("s2", SessionState::Connected).await;
    let id = h
        .supervisor
        .send_text("s2", "15550001111", "hello")
        .await
        .unwrap();
    loop {
        if let SessionEvent::MessageStatus(m) = events.recv().await.unwrap()
            && m.id == id
            && m.status == MessageStatus::Sent
        {
            break;
        }
    }
    let sent = h.link.stats("s2").sent;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (
            sent[0].id.as_str(),
            sent[0].to.as_str(),
            sent[0].text.as_str()
        ),
        (id.as_str(), "15550001111@s.whatsapp.net", "hello")
    );
}

#[tokio::test(start_paused = true)]
async fn create_chooses_or_checks_tokens() {
    let h = Harness::new(Script::new()).await;
    let made = h
        .supervisor
        .create(Some("Shop".into()), None)
        .await
        .unwrap();
    assert_eq!(made.name, "Shop");
    assert_eq!(made.state, SessionState::Stopped);
    assert_eq!(made.token.as_str().len(), 24);
    let named = h.supervisor.create(None, Some("shop1")).await.unwrap();
    assert_eq!(named.name, "shop1");
    assert!(matches!(
        h.supervisor.create(None, Some("shop1")).await,
        Err(Error::AlreadyExists(_))
    ));
    let list = h.supervisor.list();
    assert_eq!(list.sessions.len(), 2);
    assert_eq!(list.counts.get(&SessionState::Stopped), Some(&2));
}

#[tokio::test(start_paused = true)]
async fn invalid_tokens_are_refused_before_touching_anything() {
    let h = Harness::new(Script::new()).await;
    let outside = h.dir.path().parent().unwrap().join("x");
    let existed_before = outside.exists();
    for bad in ["../x", "a/b", "", "..", "x y", &"a".repeat(65)] {
        let err = h.supervisor.create(None, Some(bad)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidToken(_)), "{bad:?}: {err}");
        assert!(matches!(
            h.supervisor.start_session(bad, Default::default()).await,
            Err(Error::InvalidToken(_))
        ));
        assert!(matches!(
            h.supervisor.status(bad),
            Err(Error::InvalidToken(_))
        ));
        assert!(matches!(
            h.supervisor.delete(bad).await,
            Err(Error::InvalidToken(_))
        ));
    }
    assert_eq!(
        h.supervisor.create(None, Some("../x")).await.unwrap_err(),
        Error::InvalidToken(TokenError::BadCharacter('.'))
    );
    // Nothing was written anywhere.
    assert_eq!(std::fs::read_dir(h.dir.path()).unwrap().count(), 0);
    assert_eq!(
        outside.exists(),
        existed_before,
        "nothing made beside sessions/"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_tokens_are_not_found() {
    let h = Harness::new(Script::new()).await;
    assert_eq!(
        h.supervisor.stop("ghost").await.unwrap_err().to_string(),
        "no session ghost"
    );
    assert!(matches!(
        h.supervisor.restart("ghost", true).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        h.supervisor.logout("ghost").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        h.supervisor.reset_reconnect("ghost").await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn reap_now_reports_what_it_cleaned() {
    let mut h = Harness::new(Script::new()).await;
    h.run("stuck", []).await;
    h.wait_state("stuck", SessionState::Connecting).await;
    assert!(h.supervisor.reap_now().await.unwrap().is_empty());
    tokio::time::sleep(mins(11)).await;
    let reaped = h.supervisor.reap_now().await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].token.as_str(), "stuck");
    assert_eq!(reaped[0].was, SessionState::Connecting);
    assert_eq!(reaped[0].now, SessionState::Failed);
    h.wait_state("stuck", SessionState::Failed).await;
}

#[tokio::test(start_paused = true)]
async fn admission_control_limits_attempts_in_flight_and_per_second() {
    // At most 2 in flight: sessions stuck connecting hold their slots.
    let mut h = Harness::with_config(Script::new(), |dir| {
        let mut config = common::config(dir);
        config.admission.max_in_flight = 2;
        config
    })
    .await;
    for i in 0..5 {
        h.run(&format!("s{i}"), []).await;
    }
    let opened: usize = (0..5)
        .map(|i| h.link.stats(&format!("s{i}")).opens.len())
        .sum();
    assert_eq!(opened, 2);
    assert_eq!(
        h.supervisor.list().counts.get(&SessionState::Queued),
        Some(&3)
    );

    // 5 per second with a burst of 1: logins are spread 200 ms apart.
    let mut h = Harness::with_config(Script::login(JID), |dir| {
        let mut config = common::config(dir);
        config.admission.per_second = 5.0;
        config.admission.burst = 1;
        config
    })
    .await;
    for i in 0..5 {
        h.run(&format!("r{i}"), []).await;
    }
    h.wait_state("r4", SessionState::Connected).await;
    let first = h.link.stats("r0").opens[0];
    for i in 1..5 {
        let at = h.link.stats(&format!("r{i}")).opens[0] - first;
        assert_eq!(at.as_millis(), 200 * i as u128, "r{i}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_start_after_a_logout_deletes_the_credentials_again_before_linking() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Connected).await;
    h.supervisor.logout("s1").await.unwrap();
    assert_eq!(h.link.stats("s1").credentials_deleted, 1);
    // Starting again: the deletion is confirmed first, then a fresh link (a QR in real life).
    h.link.script("s1", [Script::new().qr("fresh", secs(60))]);
    h.supervisor
        .start_session("s1", Default::default())
        .await
        .unwrap();
    let info = h.wait_state("s1", SessionState::WaitingForScan).await;
    assert_eq!(info.qr.unwrap().code, "fresh");
    let stats = h.link.stats("s1");
    assert_eq!(stats.credentials_deleted, 2);
    assert_eq!(stats.opens.len(), 2);
    assert_eq!(stats.max_live, 1);
}

#[tokio::test(start_paused = true)]
async fn a_start_during_a_delete_is_refused_and_a_start_during_a_logout_waits_for_it() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Connected).await;
    let (logout, start) = tokio::join!(
        h.supervisor.logout("s1"),
        h.supervisor.start_session("s1", Default::default())
    );
    // Both are answered once the credentials are gone; the start then links afresh.
    logout.unwrap();
    start.unwrap();
    h.wait_state("s1", SessionState::Connected).await;
    let stats = h.link.stats("s1");
    assert_eq!(stats.credentials_deleted, 1);
    assert_eq!(stats.max_live, 1);

    let (deleted, start) = tokio::join!(
        h.supervisor.delete("s1"),
        h.supervisor.start_session("s1", Default::default())
    );
    deleted.unwrap();
    let err = start.unwrap_err();
    assert!(err.to_string().contains("being deleted"), "{err}");
    assert!(matches!(h.supervisor.status("s1"), Err(Error::NotFound(_))));
}

/// A `start` that arrives while a logout deletes the credentials asks to connect once they
/// are gone; a `stop` (or a second logout) after it must win: the session stays logged out and
/// nothing connects, whatever came before.
#[tokio::test(start_paused = true)]
async fn a_stop_or_logout_during_a_credentials_deletion_is_not_overridden() {
    for second in ["stop", "logout"] {
        let mut h = Harness::new(Script::login(JID)).await;
        h.run("s1", []).await;
        h.wait_state("s1", SessionState::Connected).await;
        let hold = h.link.hold_deletions();
        let supervisor = h.supervisor.clone();
        let logout = tokio::spawn(async move { supervisor.logout("s1").await });
        // The connection is gone; the deletion is under way (held).
        h.wait_state("s1", SessionState::LoggedOut).await;
        let (start, then, ()) = tokio::join!(
            h.supervisor.start_session("s1", Default::default()),
            async {
                match second {
                    "stop" => h.supervisor.stop("s1").await,
                    _ => h.supervisor.logout("s1").await,
                }
            },
            async {
                // Both were sent before this; once it is answered, they were handled.
                h.supervisor.ping().await.unwrap();
                drop(hold);
            },
        );
        logout.await.unwrap().unwrap();
        start.unwrap();
        assert_eq!(then.unwrap().state, SessionState::LoggedOut, "{second}");
        tokio::time::sleep(mins(10)).await;
        let stats = h.link.stats("s1");
        assert_eq!(stats.opens.len(), 1, "nothing connected after a {second}");
        assert!(stats.credentials_deleted >= 1);
        let info = h.supervisor.status("s1").unwrap();
        assert_eq!(info.state, SessionState::LoggedOut, "{second}");
        assert_eq!(info.desired, warden_core::Desired::Stopped, "{second}");
    }
}

/// A logout whose credentials deletion fails tells its caller; a `delete` that came meanwhile
/// is not failed with it: it goes on and answers for itself.
#[tokio::test(start_paused = true)]
async fn a_failed_credentials_deletion_does_not_fail_a_concurrent_delete() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Connected).await;
    h.link.fail_next_deletion();
    let hold = h.link.hold_deletions();
    let supervisor = h.supervisor.clone();
    let logout = tokio::spawn(async move { supervisor.logout("s1").await });
    h.wait_state("s1", SessionState::LoggedOut).await;
    let (deleted, ()) = tokio::join!(h.supervisor.delete("s1"), async {
        h.supervisor.ping().await.unwrap();
        drop(hold);
    });
    let err = logout.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("scripted deletion failure"),
        "{err}"
    );
    deleted.expect("the delete succeeded, and says so");
    assert!(matches!(h.supervisor.status("s1"), Err(Error::NotFound(_))));
    assert_eq!(h.link.stats("s1").forgotten, 1);
}

#[tokio::test(start_paused = true)]
async fn a_restart_of_a_queued_session_at_full_capacity_keeps_its_place_in_line() {
    // Room for 2; one slot in flight: s0 connects (stuck), s1 waits in the queue.
    let mut h = Harness::with_config(Script::new(), |dir| {
        let mut config = common::config(dir);
        config.admission.max_in_flight = 1;
        config.max_active = Some(2);
        config
    })
    .await;
    h.run("s0", []).await;
    h.run("s1", []).await;
    assert_eq!(
        h.supervisor.status("s1").unwrap().state,
        SessionState::Queued
    );
    // Its own place does not count against it: it is queued again, not sent to wait for
    // room it already has.
    let restarted = h.supervisor.restart("s1", true).await.unwrap();
    assert_eq!(restarted.state, SessionState::Queued, "{restarted:?}");
    assert_eq!(restarted.next_retry_at, None);
    // A third session finds no room.
    h.supervisor.create(None, Some("s2")).await.unwrap();
    let refused = h
        .supervisor
        .start_session("s2", Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::Capacity { limit: 2 }),
        "{refused:?}"
    );
}
