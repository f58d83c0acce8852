//! Webhooks through the real daemon: kill -9 with 1,000 events pending while the receiver is
//! down, and every one arrives after the restart, each id once per event.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::future::join_all;
use warden_control::{ControlClient, Op};
use warden_webhooks::receiver::{Receiver, verify};

use common::{Daemon, workspace};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Sessions created, one `session.status` event each.
const SESSIONS: usize = 1000;
/// Control connections creating them at once.
const CREATORS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_1000_events_pending_delivers_every_one_after_the_restart() {
    let mut receiver = Receiver::start().await;
    receiver.stop(); // down while the events happen
    let dir = workspace("ws://127.0.0.1:9/ws/chat");
    let hook = format!(
        r#"
[[webhooks]]
url = "{}"
secret = "{SECRET}"
events = ["session.status"]
allow_private = true
name = "crm"
timeout = "2s"
backoff_base = "50ms"
backoff_cap = "200ms"
max_attempts = 100
"#,
        receiver.url("/hooks/whatsapp")
    );
    let config = dir.path().join("daemon.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&hook);
    std::fs::write(&config, text).unwrap();

    let mut daemon = Daemon::start(dir.path()).await;
    let creators = (0..CREATORS).map(|c| {
        let socket = daemon.socket.clone();
        async move {
            let mut client = ControlClient::connect(&socket).await.unwrap();
            let mut created = Vec::new();
            for i in (c..SESSIONS).step_by(CREATORS) {
                let token = format!("s{i:04}");
                let op = Op::Create {
                    name: None,
                    token: Some(token.clone()),
                    proxy: None,
                };
                let reply = client.request(&op).await.unwrap();
                assert!(reply.ok, "{reply:?}");
                created.push(token);
            }
            created
        }
    });
    let created: HashSet<String> = join_all(creators).await.into_iter().flatten().collect();
    assert_eq!(created.len(), SESSIONS);
    // Every create was answered: its event is committed. Kill now, with none delivered.
    daemon.child.start_kill().unwrap();
    daemon.child.wait().await.unwrap();
    assert!(receiver.drain().is_empty());

    receiver.restart().await;
    let _daemon = Daemon::start(dir.path()).await;
    let mut first_of: HashMap<String, String> = HashMap::new(); // id -> token
    let mut deliveries = 0;
    while first_of.len() < SESSIONS {
        let got = tokio::time::timeout(Duration::from_secs(120), receiver.next())
            .await
            .expect("the events keep coming");
        assert!(verify(SECRET, &got), "signature of {}", got.id);
        assert_eq!(got.body["type"], "session.status");
        let token = got.body["data"]["token"].as_str().unwrap().to_owned();
        deliveries += 1;
        if let Some(before) = first_of.insert(got.id.clone(), token.clone()) {
            assert_eq!(before, token, "one id, one event");
        }
    }
    let tokens: HashSet<String> = first_of.values().cloned().collect();
    assert_eq!(tokens, created, "every created session's event arrived");
    println!(
        "{SESSIONS} events pending at the kill: {} distinct ids received in {deliveries} deliveries",
        first_of.len()
    );

    // The socket answers for the webhook: nothing left queued or dead.
    let (code, out, _) = _daemon.cli(&["webhooks", "dead"]).await;
    assert_eq!((code, out.trim()), (0, "no dead letters"));
}

#[tokio::test]
async fn a_webhook_set_through_the_socket_is_checked_kept_and_never_shows_its_secret() {
    let mut receiver = Receiver::start().await;
    let dir = workspace("ws://127.0.0.1:9/ws/chat");
    let daemon = Daemon::start(dir.path()).await;
    let mut client = ControlClient::connect(&daemon.socket).await.unwrap();
    let set = |token: &str, secret: &str| Op::WebhookSet {
        token: token.into(),
        url: receiver.url("/mine"),
        secret: Some(secret.into()),
        unsigned: false,
        events: Some(vec!["session.status".into()]),
        allow_private: true,
        name: Some("crm".into()),
    };
    // Unknown session, bad token, bad secret: clear errors that never quote the secret.
    let reply = client.request(&set("nobody", SECRET)).await.unwrap();
    assert_eq!(
        reply.error.unwrap().code,
        warden_control::ErrorCode::NotFound
    );
    let reply = client.request(&set("../x", SECRET)).await.unwrap();
    assert_eq!(
        reply.error.unwrap().code,
        warden_control::ErrorCode::InvalidToken
    );
    let create = Op::Create {
        name: None,
        token: Some("shop1".into()),
        proxy: None,
    };
    assert!(client.request(&create).await.unwrap().ok);
    let reply = client
        .request(&set("shop1", "whsec_c2hvcnQtYnV0LXNlY3JldA=="))
        .await
        .unwrap();
    let error = reply.error.unwrap();
    assert_eq!(error.code, warden_control::ErrorCode::BadRequest);
    assert!(!error.message.contains("c2hvcnQ"), "{}", error.message);

    let reply = client.request(&set("shop1", SECRET)).await.unwrap();
    assert!(reply.ok, "{reply:?}");
    let listed = daemon.json(&["webhooks"]).await;
    assert_eq!(listed["webhooks"][0]["name"], "shop1:crm");
    assert_eq!(listed["webhooks"][0]["token"], "shop1");
    assert!(
        !listed.to_string().contains("MfKQ9r8G"),
        "no secret in {listed}"
    );

    // It delivers the session's changes, signed with its own secret.
    let stop = Op::Stop {
        token: "shop1".into(),
    };
    let start = Op::Start {
        token: "shop1".into(),
        phone: None,
    };
    assert!(client.request(&start).await.unwrap().ok);
    let got = receiver.next().await;
    assert!(verify(SECRET, &got));
    assert_eq!(got.body["data"]["token"], "shop1");
    assert!(client.request(&stop).await.unwrap().ok);

    // Removed through the CLI; gone from the list.
    let (code, out, err) = daemon.cli(&["webhooks", "remove", "shop1:crm"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        daemon.json(&["webhooks"]).await["webhooks"],
        serde_json::json!([])
    );
}
