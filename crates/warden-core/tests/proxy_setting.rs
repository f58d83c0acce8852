//! A session's proxy in the supervisor: given at create or by `set_proxy`, stored with the
//! session, handed to the link at every connection, changed at the next one (or now, within
//! the restart cooldown's rules), and refused whole when malformed.

mod common;

use std::sync::Arc;

use common::{Harness, config, secs};
use warden_core::scripted::{Script, ScriptedLink};
use warden_core::{DisconnectReason, Error, ProxyUrl, SessionState, Supervisor};

const JID: &str = "15551234567@s.whatsapp.net";
const FIRST: &str = "socks5h://gw:first-secret@10.0.0.2:1080";
const SECOND: &str = "http://gw:second-secret@10.0.0.3:3128";

fn proxy(url: &str) -> Option<ProxyUrl> {
    Some(ProxyUrl::parse(url).unwrap())
}

#[tokio::test(start_paused = true)]
async fn every_connection_gets_the_sessions_proxy_including_reconnects_and_restarts() {
    // The first connection drops after a minute; the policy's reconnect logs in again.
    let mut h = Harness::new(Script::login(JID)).await;
    h.link.script(
        "s1",
        [Script::login(JID)
            .wait(secs(60))
            .disconnect(DisconnectReason::ConnectionLost)],
    );
    let created = h
        .supervisor
        .create_with_proxy(None, Some("s1"), Some(FIRST))
        .await
        .unwrap();
    assert_eq!(
        created.proxy.as_deref(),
        Some("socks5h://gw:***@10.0.0.2:1080")
    );
    h.supervisor
        .start_session("s1", Default::default())
        .await
        .unwrap();
    h.wait("s1", |i| {
        i.state == SessionState::Connected && i.counters.connects == 2
    })
    .await;
    assert_eq!(h.link.stats("s1").proxies, vec![proxy(FIRST), proxy(FIRST)]);

    // A new supervisor on the same database: the proxy was stored with the session.
    h.supervisor.shutdown().await.unwrap();
    let link = ScriptedLink::new(Script::login(JID));
    let (supervisor, _) = Supervisor::start(
        config(h.dir.path()).with_db(h.db.clone()),
        Arc::new(link.clone()),
    )
    .await
    .unwrap();
    let mut events = common::events_of(&supervisor);
    events
        .wait_status(&supervisor, "s1", |i| i.state == SessionState::Connected)
        .await;
    assert_eq!(link.stats("s1").proxies, vec![proxy(FIRST)]);
    assert_eq!(
        supervisor.status("s1").unwrap().proxy.as_deref(),
        Some("socks5h://gw:***@10.0.0.2:1080")
    );
}

#[tokio::test(start_paused = true)]
async fn a_changed_proxy_is_used_from_the_next_connection_or_now_outside_the_cooldown() {
    let mut h = Harness::new(Script::login(JID)).await;
    h.supervisor
        .create_with_proxy(None, Some("s1"), Some(FIRST))
        .await
        .unwrap();
    h.supervisor
        .start_session("s1", Default::default())
        .await
        .unwrap();
    h.wait_state("s1", SessionState::Connected).await;

    // Without reconnect: saved, shown, and the live connection is left alone.
    let set = h
        .supervisor
        .set_proxy("s1", Some(SECOND), false)
        .await
        .unwrap();
    assert_eq!(set.state, SessionState::Connected);
    assert_eq!(set.proxy.as_deref(), Some("http://gw:***@10.0.0.3:3128"));
    assert_eq!(h.link.stats("s1").opens.len(), 1);

    // With reconnect inside the restart cooldown (30 s): refused, and nothing changes.
    tokio::time::sleep(secs(10)).await;
    match h.supervisor.set_proxy("s1", None, true).await {
        Err(Error::Cooldown { retry_after, .. }) => assert_eq!(retry_after, secs(20)),
        other => panic!("expected a cooldown, got {other:?}"),
    }
    assert_eq!(
        h.supervisor.status("s1").unwrap().proxy.as_deref(),
        Some("http://gw:***@10.0.0.3:3128"),
        "a refused set_proxy saved nothing"
    );

    // Past the cooldown: the connection is replaced by one through the new proxy.
    tokio::time::sleep(secs(21)).await;
    h.supervisor
        .set_proxy("s1", Some(SECOND), true)
        .await
        .unwrap();
    h.wait("s1", |i| {
        i.state == SessionState::Connected && i.counters.connects == 2
    })
    .await;
    let stats = h.link.stats("s1");
    assert_eq!(stats.proxies, vec![proxy(FIRST), proxy(SECOND)]);
    assert_eq!(stats.max_live, 1, "the old connection was gone first");

    // Cleared: the next connection has none (the link's default applies).
    h.supervisor.set_proxy("s1", None, false).await.unwrap();
    h.supervisor.restart("s1", true).await.unwrap();
    h.wait("s1", |i| {
        i.state == SessionState::Connected && i.counters.connects == 3
    })
    .await;
    assert_eq!(h.link.stats("s1").proxies.last(), Some(&None));
    assert_eq!(h.supervisor.status("s1").unwrap().proxy, None);
}

#[tokio::test(start_paused = true)]
async fn reconnect_leaves_a_stopped_session_stopped() {
    let h = Harness::new(Script::login(JID)).await;
    h.supervisor.create(None, Some("idle")).await.unwrap();
    let set = h
        .supervisor
        .set_proxy("idle", Some(FIRST), true)
        .await
        .unwrap();
    assert_eq!(set.state, SessionState::Stopped);
    assert_eq!(h.link.stats("idle").opens.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn malformed_proxies_and_unknown_sessions_are_refused_and_change_nothing() {
    let h = Harness::new(Script::login(JID)).await;
    h.supervisor.create(None, Some("s1")).await.unwrap();
    for bad in [
        "",
        "socks4://10.0.0.2:1080",
        "https://10.0.0.2",
        "socks5://10.0.0.2:0",
        "http://u:p@host/path",
        "10.0.0.2:1080",
    ] {
        match h
            .supervisor
            .create_with_proxy(None, Some("s2"), Some(bad))
            .await
        {
            Err(Error::InvalidRequest(why)) => assert!(!why.is_empty()),
            other => panic!("{bad:?}: expected a refusal, got {other:?}"),
        }
        assert!(
            matches!(h.supervisor.status("s2"), Err(Error::NotFound(_))),
            "{bad:?}: nothing was created"
        );
        assert!(matches!(
            h.supervisor.set_proxy("s1", Some(bad), false).await,
            Err(Error::InvalidRequest(_))
        ));
        assert_eq!(h.supervisor.status("s1").unwrap().proxy, None);
    }
    assert!(matches!(
        h.supervisor.set_proxy("nobody", Some(FIRST), false).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        h.supervisor.set_proxy("../etc", Some(FIRST), false).await,
        Err(Error::InvalidToken(_))
    ));
    assert!(
        h.db.load_records()
            .await
            .unwrap()
            .iter()
            .all(|(_, text)| !text.contains("proxy")),
        "no refused proxy reached the store"
    );
    // A valid one is stored whole (the daemon needs its password after a restart).
    h.supervisor
        .set_proxy("s1", Some(FIRST), false)
        .await
        .unwrap();
    let records = h.db.load_records().await.unwrap();
    assert!(
        records.iter().any(|(_, text)| text.contains(FIRST)),
        "{records:?}"
    );
}
