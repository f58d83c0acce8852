//! The journal and webhook routes over HTTP: a session's history (JSON and followed as SSE),
//! who asked, and the webhook routes of a gateway without webhooks.

mod common;

use common::{Gateway, JID, Setup, wait_state};
use serde_json::json;
use warden_core::SessionState;
use warden_core::scripted::Script;

#[tokio::test]
async fn history_shows_what_happened_and_who_asked_and_follows_new_entries() {
    let gw = Gateway::start(Setup {
        default: Script::login(JID),
        ..Setup::default()
    })
    .await;
    let mut events = gw.supervisor.subscribe();
    assert_eq!(
        gw.call("POST", "/session", Some(r#"{"token":"s1"}"#))
            .await
            .status,
        200
    );
    assert_eq!(gw.call("POST", "/session/start/s1", None).await.status, 200);
    wait_state(&mut events, "s1", SessionState::Connected).await;
    gw.supervisor.flush().await.unwrap();

    let history = gw.call("GET", "/session/history/s1?limit=100", None).await;
    assert_eq!(history.status, 200);
    let body = history.json();
    assert_eq!(body["token"], "s1");
    let entries = body["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["kind"] == "session.operation"
            && e["data"] == json!({"op": "start", "by": "http"})),
        "{entries:?}"
    );
    let last = entries
        .iter()
        .rev()
        .find(|e| e["kind"] == "session.status")
        .unwrap();
    assert_eq!(last["data"]["to"], "connected");
    let newest = entries.last().unwrap()["seq"].as_i64().unwrap();
    let since = gw
        .call("GET", &format!("/session/history/s1?since={newest}"), None)
        .await
        .json();
    assert_eq!(since["entries"], json!([]));

    // Followed: the entries asked for, then the stop's as they are committed.
    let mut follow = gw
        .sse(&format!("/session/history/s1?follow=true&since={newest}"))
        .await;
    let first = follow.next().await.unwrap();
    assert_eq!(
        (first.name.as_str(), &first.data["entries"]),
        ("history", &json!([]))
    );
    assert_eq!(gw.call("POST", "/session/stop/s1", None).await.status, 200);
    let stopped = follow
        .until(|e| {
            e.data["entries"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["data"]["to"] == "stopped"))
        })
        .await;
    assert_eq!(stopped.data["token"], "s1");

    assert_eq!(
        gw.call("GET", "/session/history/nobody", None).await.status,
        404
    );
    assert_eq!(
        gw.call("GET", "/session/history/a%2Fb", None).await.status,
        400
    );
    gw.stop().await;
}

#[tokio::test]
async fn webhook_routes_answer_clearly_when_there_are_none() {
    let gw = Gateway::start(Setup::default()).await;
    assert_eq!(
        gw.call("GET", "/webhooks", None).await.json(),
        json!({"webhooks": []})
    );
    assert_eq!(
        gw.call("GET", "/webhooks/dead", None).await.json(),
        json!({"dead": []})
    );
    let test = gw.call("POST", "/webhooks/crm/test", None).await;
    assert_eq!(test.status, 404);
    assert!(test.json()["message"].as_str().unwrap().contains("crm"));
    let replay = gw.call("POST", "/webhooks/crm/replay", None).await;
    assert_eq!(replay.status, 400, "replay needs ?from=");
    assert_eq!(
        gw.call("POST", "/session", Some(r#"{"token":"s1"}"#))
            .await
            .status,
        200
    );
    let set = gw
        .call(
            "POST",
            "/session/webhook/s1",
            Some(r#"{"url":"https://example.com/h","unsigned":true}"#),
        )
        .await;
    assert_eq!(set.status, 503, "{}", set.text());
    let unknown_key = gw
        .call(
            "POST",
            "/session/webhook/s1",
            Some(r#"{"url":"https://example.com/h","colour":1}"#),
        )
        .await;
    assert_eq!(unknown_key.status, 400, "{}", unknown_key.text());
    gw.stop().await;
}
