//! Persistence across supervisor restarts, unreadable entries, and storms of concurrent
//! operations that must never leave two live connections for one token.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, config, mins, secs};
use warden_core::scripted::{Script, ScriptedLink};
use warden_core::{DisconnectReason, Error, SessionState, Supervisor};

const JID: &str = "15551234567@s.whatsapp.net";

fn lost() -> Script {
    Script::new().disconnect(DisconnectReason::ConnectionLost)
}

#[tokio::test(start_paused = true)]
async fn a_new_supervisor_on_the_same_folder_restores_every_session() {
    let mut h = Harness::new(Script::new()).await;
    h.run("up", [Script::login(JID)]).await;
    h.supervisor
        .create(Some("Idle one".into()), Some("idle"))
        .await
        .unwrap();
    h.run(
        "gone",
        [Script::login(JID)
            .wait(secs(1))
            .disconnect(DisconnectReason::LoggedOut)],
    )
    .await;
    h.run("flaky", [lost(), lost(), Script::new()]).await;
    h.run(
        "banned",
        [
            Script::new().disconnect(DisconnectReason::TemporarilyBanned {
                expires_in: secs(3600),
                code: None,
            }),
        ],
    )
    .await;
    h.wait_state("up", SessionState::Connected).await;
    h.wait("gone", |i| {
        i.state == SessionState::LoggedOut
            && i.reason
                .as_deref()
                .is_some_and(|r| r.contains("credentials deleted"))
    })
    .await;
    h.wait("flaky", |i| {
        i.state == SessionState::Connecting && i.attempts == 2
    })
    .await;
    h.wait_state("banned", SessionState::Banned).await;
    h.supervisor.shutdown().await.unwrap();
    assert!(!h.supervisor.is_running());
    assert_eq!(h.link.live_total(), 0, "shutdown closes every connection");

    // A new supervisor, a new link (a new process), the same database.
    let link = ScriptedLink::new(Script::login(JID));
    let restarted = config(h.dir.path()).with_db(h.db.clone());
    let (supervisor, report) = Supervisor::start(restarted, Arc::new(link.clone()))
        .await
        .unwrap();
    assert_eq!(report.loaded, 5);
    assert!(report.problems.is_empty());
    let mut events = common::events_of(&supervisor);
    events
        .wait_status(&supervisor, "up", |i| i.state == SessionState::Connected)
        .await;
    let flaky = events
        .wait_status(&supervisor, "flaky", |i| i.state == SessionState::Connected)
        .await;
    assert_eq!(flaky.attempts, 2, "attempts survive a restart");

    let up = supervisor.status("up").unwrap();
    assert_eq!(up.jid.as_deref(), Some(JID));
    let idle = supervisor.status("idle").unwrap();
    assert_eq!(
        (idle.state, idle.name.as_str()),
        (SessionState::Stopped, "Idle one")
    );
    assert_eq!(
        supervisor.status("gone").unwrap().state,
        SessionState::LoggedOut
    );
    assert_eq!(
        supervisor.status("banned").unwrap().state,
        SessionState::Banned
    );
    assert_eq!(link.stats("idle").opens.len(), 0);
    assert_eq!(
        link.stats("gone").opens.len(),
        0,
        "a logged-out session stays down"
    );
    assert_eq!(
        link.stats("banned").opens.len(),
        0,
        "the ban outlives the restart"
    );

    // The ban still ends on time.
    events
        .wait("banned", |i| i.state == SessionState::Connected)
        .await;
    tokio::time::sleep(mins(60)).await;
    assert_eq!(link.stats("gone").opens.len(), 0);
    supervisor.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_record_is_reported_and_skipped_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let db = warden_store::Db::in_memory().unwrap();
    {
        let link = ScriptedLink::new(Script::login(JID));
        let (supervisor, _) =
            Supervisor::start(config(dir.path()).with_db(db.clone()), Arc::new(link))
                .await
                .unwrap();
        supervisor.create(None, Some("good")).await.unwrap();
        supervisor.shutdown().await.unwrap();
    }
    // A record of an earlier release that cannot be read, and one whose credentials were not
    // imported: both are reported, neither is touched.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("session.toml"),
        "name = \"x\"\ncreated_at = 12\n[[oops",
    )
    .unwrap();
    let kept = dir.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    let record = "name = \"k\"\ncreated_at = \"2026-01-01T00:00:00Z\"\ndesired = \"stopped\"\nstate = \"stopped\"\n";
    std::fs::write(kept.join("session.toml"), record).unwrap();
    std::fs::write(kept.join("session.db"), b"credentials").unwrap();

    let link = ScriptedLink::new(Script::login(JID));
    let (supervisor, report) = Supervisor::start(config(dir.path()).with_db(db), Arc::new(link))
        .await
        .unwrap();
    assert_eq!(report.loaded, 1);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("bad/session.toml") && p.contains("line")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("kept/session.db") && p.contains("not imported")),
        "{problems:?}"
    );
    assert!(bad.join("session.toml").exists());
    assert!(kept.join("session.toml").exists());
    assert!(kept.join("session.db").exists());
    assert!(supervisor.status("good").is_ok());
    assert!(matches!(supervisor.status("bad"), Err(Error::NotFound(_))));
    assert!(matches!(supervisor.status("kept"), Err(Error::NotFound(_))));
    supervisor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storms_of_operations_never_leave_two_live_connections_for_one_token() {
    let default = Script::new()
        .wait(Duration::from_millis(1))
        .connected(JID)
        .wait(Duration::from_millis(3))
        .disconnect(DisconnectReason::ConnectionLost);
    let h = Harness::with_config(default, |dir| {
        let mut config = config(dir);
        config.policy.backoff_base = Duration::from_millis(5);
        config.policy.backoff_cap = Duration::from_millis(20);
        config.policy.max_attempts = 1000;
        config.policy.restart_cooldown = Duration::ZERO;
        config
    })
    .await;
    let tokens: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    for token in &tokens {
        h.supervisor.create(None, Some(token)).await.unwrap();
    }
    let mut storm = tokio::task::JoinSet::new();
    for round in 0..40 {
        for (i, token) in tokens.iter().enumerate() {
            let supervisor = h.supervisor.clone();
            let token = token.clone();
            storm.spawn(async move {
                // Spread the storm over ~100 ms so connections open and close inside it.
                tokio::time::sleep(Duration::from_millis(round as u64 * 2)).await;
                let result = match (round + i) % 5 {
                    0 | 3 => supervisor.start_session(&token, Default::default()).await,
                    1 => supervisor.restart(&token, true).await,
                    2 => supervisor.force_cleanup(&token).await,
                    _ => supervisor.restart(&token, false).await,
                };
                match result {
                    Ok(_) | Err(Error::Cooldown { .. }) => {}
                    Err(e) => panic!("{token}: {e}"),
                }
            });
        }
    }
    while let Some(done) = storm.join_next().await {
        done.unwrap();
    }
    assert_eq!(
        h.link.max_live_any(),
        1,
        "never two live connections for one token"
    );
    // Everything still answers, and can be brought to a stable end.
    for token in &tokens {
        h.supervisor.force_cleanup(token).await.unwrap();
        assert_eq!(h.link.stats(token).live, 0, "{token}");
    }
    assert!(h.supervisor.is_running());
    assert_eq!(h.link.max_live_any(), 1);
    let opened: usize = tokens.iter().map(|t| h.link.stats(t).opens.len()).sum();
    assert!(
        opened > 50,
        "the storm really opened connections ({opened})"
    );
}
