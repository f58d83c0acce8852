//! The supervisor applies the restart policy to scripted lifecycles (tokio's paused clock).

mod common;

use std::time::Duration;

use common::{Harness, gaps, mins, secs};
use warden_core::scripted::{Script, Step};
use warden_core::{DisconnectReason, SessionState};

fn lost_at_once() -> Script {
    Script::new().disconnect(DisconnectReason::ConnectionLost)
}

#[tokio::test(start_paused = true)]
async fn three_retries_at_3_6_12_seconds_then_failed() {
    let mut h = Harness::new(lost_at_once()).await;
    h.run("s1", []).await;
    let info = h.wait_state("s1", SessionState::Failed).await;
    assert_eq!(info.attempts, 3);
    assert!(info.reason.unwrap().contains("3 reconnect attempts"));
    let stats = h.link.stats("s1");
    assert_eq!(gaps(&stats.opens), vec![3, 6, 12]);
    // Nothing more happens on its own.
    tokio::time::sleep(mins(60)).await;
    assert_eq!(h.link.stats("s1").opens.len(), 4);
}

/// A QR shown, scanned 5 s later, paired, the 515; then a login.
fn paired_then_logged_in() -> [Script; 2] {
    let pairing = Script::new()
        .qr("ref1", secs(60))
        .wait(secs(5))
        .paired("15551234567@s.whatsapp.net")
        .disconnect(DisconnectReason::RestartRequired);
    [pairing, Script::login("15551234567@s.whatsapp.net")]
}

#[tokio::test(start_paused = true)]
async fn restart_after_pairing_is_immediate_and_not_counted() {
    let mut h = Harness::new(Script::new()).await;
    h.run("s1", paired_then_logged_in()).await;
    h.wait_state("s1", SessionState::WaitingForScan).await;
    h.wait_state("s1", SessionState::Pairing).await;
    let info = h.wait_state("s1", SessionState::Connected).await;
    assert_eq!(info.attempts, 0);
    assert_eq!(info.jid.as_deref(), Some("15551234567@s.whatsapp.net"));
    assert_eq!(info.counters.restarts, 1);
    assert_eq!(gaps(&h.link.stats("s1").opens), vec![5]);
}

#[tokio::test(start_paused = true)]
async fn logged_out_is_never_retried_and_credentials_are_deleted() {
    let mut h = Harness::new(Script::login("x@s.whatsapp.net")).await;
    let dropped = Script::login("1@s.whatsapp.net")
        .wait(secs(30))
        .disconnect(DisconnectReason::LoggedOut);
    h.run("s1", [dropped]).await;
    h.wait_state("s1", SessionState::Connected).await;
    let info = h
        .wait("s1", |i| {
            i.state == SessionState::LoggedOut
                && i.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("credentials deleted"))
        })
        .await;
    assert_eq!(info.jid, None);
    assert_eq!(h.link.stats("s1").credentials_deleted, 1);
    tokio::time::sleep(mins(120)).await;
    assert_eq!(h.link.stats("s1").opens.len(), 1);
    assert_eq!(
        h.supervisor.status("s1").unwrap().state,
        SessionState::LoggedOut
    );
}

#[tokio::test(start_paused = true)]
async fn replaced_is_parked() {
    let mut h = Harness::new(Script::login("x@s.whatsapp.net")).await;
    let replaced = Script::login("1@s.whatsapp.net")
        .wait(secs(1))
        .disconnect(DisconnectReason::Replaced);
    h.run("s1", [replaced]).await;
    let info = h.wait_state("s1", SessionState::Replaced).await;
    assert_eq!(info.reason.as_deref(), Some("replaced"));
    tokio::time::sleep(mins(120)).await;
    assert_eq!(h.link.stats("s1").opens.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_ban_is_held_until_its_expiry() {
    let mut h = Harness::new(Script::new()).await;
    let banned = Script::new().disconnect(DisconnectReason::TemporarilyBanned {
        expires_in: secs(3600),
        code: Some("101".into()),
    });
    h.run("s1", [banned, Script::login("1@s.whatsapp.net")])
        .await;
    let info = h.wait_state("s1", SessionState::Banned).await;
    assert!(info.banned_until.is_some());
    assert!(info.next_retry_at.is_some());
    // A plain start is refused while banned.
    let refused = h
        .supervisor
        .start_session("s1", Default::default())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("banned until"), "{refused}");
    let info = h.wait_state("s1", SessionState::Connected).await;
    assert_eq!(info.banned_until, None);
    assert_eq!(gaps(&h.link.stats("s1").opens), vec![3600]);
}

#[tokio::test(start_paused = true)]
async fn all_qr_codes_expired_parks_until_asked() {
    let mut h = Harness::new(Script::new()).await;
    let qr = Script::new()
        .qr("ref1", secs(60))
        .wait(secs(60))
        .qr("ref2", secs(20))
        .wait(secs(20))
        .disconnect(DisconnectReason::QrExpired);
    h.run("s1", [qr]).await;
    let first = h.wait_state("s1", SessionState::WaitingForScan).await;
    assert!(first.qr.is_some());
    let info = h.wait_state("s1", SessionState::QrExpired).await;
    assert_eq!(info.qr, None);
    assert_eq!(info.attempts, 0);
    tokio::time::sleep(mins(60)).await;
    assert_eq!(h.link.stats("s1").opens.len(), 1);
    // Asking again shows a new QR.
    h.link.script("s1", [Script::new().qr("ref3", secs(60))]);
    h.supervisor.refresh_qr("s1").await.unwrap();
    h.wait_state("s1", SessionState::WaitingForScan).await;
    assert_eq!(h.link.stats("s1").opens.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_janitor_reaps_stuck_connecting_and_stale_qr_sessions() {
    let mut h = Harness::new(Script::new()).await;
    h.run("stuck", [Script::new()]).await; // never gets anywhere
    h.run("stale", [Script::new().qr("ref", secs(60))]).await; // QR never scanned
    h.run("fine", [Script::login("1@s.whatsapp.net")]).await;
    let start = tokio::time::Instant::now();
    let stale = h
        .wait("stale", |i| i.state == SessionState::QrExpired)
        .await;
    let stale_at = start.elapsed();
    let stuck = h.wait("stuck", |i| i.state == SessionState::Failed).await;
    let stuck_at = start.elapsed();
    assert!(stale.reason.unwrap().contains("reaped: QR code shown"));
    assert!(stuck.reason.unwrap().contains("reaped: connecting"));
    // The janitor runs every 5 min: QR > 5 min is caught at 10 min, connecting > 10 min at 15.
    assert_eq!(stale_at, mins(10));
    assert_eq!(stuck_at, mins(15));
    tokio::time::sleep(mins(60)).await;
    assert_eq!(h.link.stats("stuck").opens.len(), 1);
    assert_eq!(h.link.stats("stale").opens.len(), 1);
    assert_eq!(
        h.supervisor.status("fine").unwrap().state,
        SessionState::Connected
    );
    assert_eq!(h.link.live_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_session_is_restarted_while_a_hundred_others_are_undisturbed() {
    let mut h = Harness::new(Script::login("ok@s.whatsapp.net")).await;
    for i in 0..100 {
        let token = format!("calm{i}");
        h.supervisor.create(None, Some(&token)).await.unwrap();
        h.supervisor
            .start_session(&token, Default::default())
            .await
            .unwrap();
    }
    h.run(
        "crashy",
        [
            Script::new().then(Step::PanicOnOpen),
            Script::login("c@s.whatsapp.net"),
        ],
    )
    .await;
    let info = h.wait_state("crashy", SessionState::Connected).await;
    assert_eq!(info.attempts, 1);
    assert_eq!(gaps(&h.link.stats("crashy").opens), vec![3]);
    for i in 0..100 {
        let token = format!("calm{i}");
        let stats = h.link.stats(&token);
        assert_eq!(stats.opens.len(), 1, "{token}");
        assert_eq!(stats.live, 1, "{token}");
        assert_eq!(
            h.supervisor.status(&token).unwrap().state,
            SessionState::Connected
        );
    }
    assert!(h.supervisor.is_running());
    assert_eq!(h.link.max_live_any(), 1);
}

#[tokio::test(start_paused = true)]
async fn reconnects_do_not_reset_attempts_only_a_stable_connection_does() {
    let mut h = Harness::new(Script::new()).await;
    // The legacy loop: connect, drop a minute later, again and again. It must end.
    let flap = || {
        Script::login("1@s.whatsapp.net")
            .wait(secs(60))
            .disconnect(DisconnectReason::ConnectionLost)
    };
    h.run("flappy", [flap(), flap(), flap(), flap(), flap()])
        .await;
    let info = h.wait_state("flappy", SessionState::Failed).await;
    assert_eq!(info.attempts, 3);
    assert_eq!(h.link.stats("flappy").opens.len(), 4);

    // Two flaps, then a connection that stays up past `stable_after` (10 min).
    let long = Script::login("2@s.whatsapp.net")
        .wait(mins(11))
        .disconnect(DisconnectReason::ConnectionLost);
    h.run(
        "steady",
        [flap(), flap(), long, Script::login("2@s.whatsapp.net")],
    )
    .await;
    h.wait("steady", |i| {
        i.state == SessionState::Connected && i.attempts == 2
    })
    .await;
    // While it stays up, the attempts drop to 0 once it has been stable for 10 min.
    h.wait("steady", |i| {
        i.state == SessionState::Connected && i.attempts == 0
    })
    .await;
    // After that drop, the next retry is the first one again: 3 s.
    let info = h
        .wait("steady", |i| i.state == SessionState::BackingOff)
        .await;
    assert_eq!(info.attempts, 1);
    h.wait_state("steady", SessionState::Connected).await;
    let opens = h.link.stats("steady").opens;
    assert_eq!(gaps(&opens), vec![63, 66, 660 + 3]);
}

/// A `start` while a retry is scheduled keeps the schedule: a client polling `start` does not
/// turn the backoff into a connect-reconnect loop (`restart` is the way to connect now).
#[tokio::test(start_paused = true)]
async fn start_on_a_backing_off_session_keeps_its_schedule() {
    let mut h = Harness::new(lost_at_once()).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::BackingOff).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let info = h
            .supervisor
            .start_session("s1", Default::default())
            .await
            .expect("start answers");
        assert_eq!(info.state, SessionState::BackingOff);
    }
    assert_eq!(
        h.link.stats("s1").opens.len(),
        1,
        "no connection before its time"
    );
    h.wait_state("s1", SessionState::Failed).await;
    assert_eq!(gaps(&h.link.stats("s1").opens), vec![3, 6, 12]);
}

/// `start` takes a session out of `failed` with a fresh round of attempts, but at most once
/// per restart cooldown (30 s): polling it costs one round per cooldown, not a loop.
#[tokio::test(start_paused = true)]
async fn starts_out_of_failed_are_limited_to_one_per_cooldown() {
    let mut h = Harness::new(lost_at_once()).await;
    h.run("s1", []).await;
    h.wait_state("s1", SessionState::Failed).await;
    assert_eq!(h.link.stats("s1").opens.len(), 4);

    // The operator's first start: a fresh round (1 + 3 retries, 21 s), failed again.
    let info = h
        .supervisor
        .start_session("s1", Default::default())
        .await
        .expect("start out of failed");
    assert_eq!(info.attempts, 0);
    h.wait_state("s1", SessionState::Failed).await;
    assert_eq!(h.link.stats("s1").opens.len(), 8);

    // 21 s after that start: refused, with the 9 s left.
    match h.supervisor.start_session("s1", Default::default()).await {
        Err(warden_core::Error::Cooldown { retry_after, .. }) => {
            assert_eq!(retry_after.as_secs(), 9)
        }
        other => panic!("expected a cooldown, got {other:?}"),
    }
    assert_eq!(h.link.stats("s1").opens.len(), 8, "nothing connected");
    assert_eq!(
        h.supervisor.status("s1").unwrap().state,
        SessionState::Failed
    );

    tokio::time::sleep(secs(9)).await;
    h.supervisor
        .start_session("s1", Default::default())
        .await
        .expect("allowed once the cooldown is over");
    h.wait_state("s1", SessionState::Failed).await;
    assert_eq!(h.link.stats("s1").opens.len(), 12);
}

/// The restart WhatsApp asks for right after a pairing (515) is immediate even when admission
/// control holds a queue: it goes first and is not charged to the rate limit, so a freshly
/// paired phone does not wait behind a large restore.
#[tokio::test(start_paused = true)]
async fn restart_after_pairing_jumps_the_admission_queue() {
    let mut h = Harness::with_config(Script::login("x@s.whatsapp.net"), |dir| {
        let mut config = common::config(dir);
        config.admission = warden_core::AdmissionConfig {
            max_in_flight: 100,
            per_second: 0.01, // one connection per 100 s
            burst: 1,
        };
        config
    })
    .await;
    h.run("s1", paired_then_logged_in()).await;
    // Two more sessions wait for the rate limit behind it.
    for token in ["s2", "s3"] {
        h.run(token, []).await;
        assert_eq!(
            h.supervisor.status(token).unwrap().state,
            SessionState::Queued
        );
    }
    let info = h.wait_state("s1", SessionState::Connected).await;
    assert_eq!(info.counters.restarts, 1);
    assert_eq!(
        gaps(&h.link.stats("s1").opens),
        vec![5],
        "reconnected at once"
    );
    assert_eq!(
        h.supervisor.status("s2").unwrap().state,
        SessionState::Queued,
        "the queue kept its order for everyone else"
    );
}

/// A ban that lands while a stop is in flight leaves the session banned, stopped, with no
/// retry scheduled (recorded here directly: the race is a matter of mailbox order). The ban is
/// kept (a start before its expiry is refused, and says the truth: nothing retries a stopped
/// session), but it does not park the session for good: past the expiry, a start goes ahead.
#[tokio::test(start_paused = true)]
async fn a_ban_on_a_stopped_session_holds_until_its_expiry_and_no_longer() {
    let jid = "1@s.whatsapp.net";
    let db = warden_store::Db::in_memory().unwrap();
    let now = std::time::SystemTime::now();
    let banned = |until| {
        let mut record = warden_core::store::SessionRecord::new("banned".into(), now);
        record.desired = warden_core::Desired::Stopped;
        record.state = SessionState::Banned;
        record.banned_until = Some(until);
        record.jid = Some(jid.into());
        record.encode().unwrap()
    };
    db.write_records(vec![
        warden_store::RecordChange::Put {
            token: "long".into(),
            text: banned(now + mins(60)),
        },
        warden_store::RecordChange::Put {
            token: "over".into(),
            text: banned(now - secs(1)),
        },
    ])
    .await
    .unwrap();
    let mut h = Harness::with_config(Script::login(jid), |dir| {
        common::config(dir).with_db(db.clone())
    })
    .await;
    assert_eq!(
        h.supervisor.status("long").unwrap().state,
        SessionState::Banned
    );

    let refused = h
        .supervisor
        .start_session("long", Default::default())
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(message.contains("banned until"), "{message}");
    assert!(message.contains("start it again then"), "{message}");
    assert!(!message.contains("will be retried"), "{message}");
    tokio::time::sleep(mins(120)).await;
    assert_eq!(
        h.link.stats("long").opens.len(),
        0,
        "a stopped session is not retried"
    );

    // The other ban is over: a start goes ahead.
    h.supervisor
        .start_session("over", Default::default())
        .await
        .expect("a start after the ban's expiry");
    let info = h.wait_state("over", SessionState::Connected).await;
    assert_eq!(info.banned_until, None);
    assert_eq!(h.link.stats("over").opens.len(), 1);
}
