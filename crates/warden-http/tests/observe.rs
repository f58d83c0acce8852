//! What the gateway tells about the daemon, end to end over real TCP: the event stream,
//! `/metrics`, `/healthz` and `/openapi.json`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use warden_core::scripted::Script;
use warden_core::{DisconnectReason, IncomingMessage, SessionState};
use warden_http::ROUTES;

use common::{Gateway, JID, KEY, PATIENCE, Setup, status_only, wait_for, wait_state};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_event_stream_sends_the_current_state_then_changes() {
    let gw = Gateway::start(Setup {
        key: Some(KEY),
        ..Setup::default()
    })
    .await;
    let mut bus = gw.supervisor.subscribe();
    gw.call("POST", "/session", Some(r#"{"token":"a"}"#)).await;
    gw.call("POST", "/session/start/a", None).await;
    wait_state(&mut bus, "a", SessionState::Connected).await;
    gw.call("POST", "/session", Some(r#"{"token":"b"}"#)).await;

    let refused = status_only(&gw, "GET", "/events", None, &[]).await;
    assert_eq!(refused.0, 401);

    let mut all = gw.events("").await;
    let first = all.next().await.unwrap();
    assert_eq!(
        (first.name.as_str(), &first.data),
        ("watching", &json!({"watching": null}))
    );
    let a = all.next().await.unwrap();
    assert_eq!(
        (
            a.name.as_str(),
            &a.data["session"]["token"],
            &a.data["session"]["state"]
        ),
        ("session", &json!("a"), &json!("connected"))
    );
    let b = all.next().await.unwrap();
    assert_eq!(
        (&b.data["session"]["token"], &b.data["session"]["state"]),
        (&json!("b"), &json!("stopped"))
    );

    gw.link.script("b", [Script::new().qr("QR-B", MINUTE)]);
    gw.call("POST", "/session/start/b", None).await;
    let qr = all.until(|e| e.name == "qr").await;
    assert_eq!(
        qr.data,
        json!({"event": "qr", "token": "b", "code": "QR-B", "expires_in_secs": 60})
    );
    let waiting = all.until(|e| e.name == "session").await;
    assert_eq!(waiting.data["session"]["state"], "waiting_for_scan");
    assert_eq!(waiting.data["session"]["qr"]["code"], "QR-B");

    // A filtered stream: only b, starting with its current state and QR code.
    let mut only_b = gw.events("?token=b").await;
    let first = only_b.next().await.unwrap();
    assert_eq!(first.data, json!({"watching": "b"}));
    let current = only_b.next().await.unwrap();
    assert_eq!(current.data["session"]["state"], "waiting_for_scan");
    let current_qr = only_b.next().await.unwrap();
    assert_eq!(
        (current_qr.name.as_str(), &current_qr.data["code"]),
        ("qr", &json!("QR-B"))
    );

    // Messages, removals.
    let message = IncomingMessage {
        id: "m1".into(),
        chat: "15550001111@s.whatsapp.net".into(),
        sender: "15550001111@s.whatsapp.net".into(),
        timestamp: std::time::SystemTime::now(),
        kind: "text".into(),
        text: Some("halo".into()),
    };
    gw.link.script("m", [Script::login(JID).message(message)]);
    gw.call("POST", "/session", Some(r#"{"token":"m"}"#)).await;
    gw.call("POST", "/session/start/m", None).await;
    let got = all.until(|e| e.name == "message").await;
    assert_eq!(
        (
            &got.data["token"],
            &got.data["message"]["text"],
            &got.data["message"]["kind"]
        ),
        (&json!("m"), &json!("halo"), &json!("text"))
    );
    // An outgoing message's every status is an event: queued, then sent.
    let sent = gw
        .call(
            "POST",
            "/session/send/m",
            Some(r#"{"to":"15550001111","text":"hi"}"#),
        )
        .await
        .json();
    let id = sent["messageId"].clone();
    for status in ["queued", "sent"] {
        let event = all
            .until(|e| e.name == "message_status" && e.data["message"]["status"] == status)
            .await;
        assert_eq!(
            (&event.data["token"], &event.data["message"]["message_id"]),
            (&json!("m"), &id)
        );
    }
    gw.call("DELETE", "/session/a", None).await;
    let removed = all.until(|e| e.name == "removed").await;
    assert_eq!(removed.data, json!({"event": "removed", "token": "a"}));

    gw.call("POST", "/session/force-cleanup/b", None).await;
    let next_b = only_b.next().await.unwrap();
    assert_eq!(
        next_b.data["session"]["token"], "b",
        "the filtered stream shows only b"
    );

    // Shutdown ends the streams with `closed`.
    let stopping = tokio::spawn(gw.stop());
    let closed = all.until(|e| e.name == "closed").await;
    assert_eq!(closed.data["reason"], "the daemon is stopping");
    assert!(all.next().await.is_none(), "the stream ends after closed");
    stopping.await.unwrap();
}

/// Checks `text` is well-formed Prometheus text (0.0.4) and answers each sample's value by its
/// name with labels, as written.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            assert!(name_ok(name), "bad family name: {line}");
            match kind {
                "HELP" => assert!(!value.is_empty(), "{line}"),
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&value),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_owned(), value.to_owned()).is_none(),
                        "TYPE twice: {line}"
                    );
                }
                _ => panic!("unknown comment: {line}"),
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "blank line in the exposition");
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = if value == "+Inf" {
            f64::INFINITY
        } else {
            value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"))
        };
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad metric name: {line}");
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .expect(line);
            for pair in inner.split(',') {
                let (label, v) = pair.split_once('=').expect(line);
                assert!(
                    name_ok(label) && v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                    "bad label: {line}"
                );
            }
        }
        let family = types
            .keys()
            .filter(|f| {
                name == f.as_str()
                    || name
                        .strip_prefix(f.as_str())
                        .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
            })
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("a sample without a TYPE: {line}"));
        if types[family] == "counter" {
            assert!(value >= 0.0, "{line}");
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "sample twice: {line}"
        );
    }
    samples
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_the_expected_families() {
    let gw = Gateway::start(Setup {
        adjust: |c| {
            c.janitor.interval = Duration::from_millis(50);
            c.janitor.max_qr = Duration::from_millis(200);
        },
        ..Setup::default()
    })
    .await;
    let mut bus = gw.supervisor.subscribe();
    gw.link.script(
        "flaky",
        [
            Script::login(JID).disconnect(DisconnectReason::ConnectionLost),
            Script::login(JID),
        ],
    );
    gw.link
        .script("stuck", [Script::new().qr("QR-STUCK", MINUTE)]);
    for token in ["flaky", "stuck", "idle"] {
        gw.call(
            "POST",
            "/session",
            Some(&format!(r#"{{"token":"{token}"}}"#)),
        )
        .await;
    }
    gw.call("POST", "/session/start/flaky", None).await;
    wait_for(&mut bus, "flaky", |i| {
        i.state == SessionState::Connected && i.counters.restarts >= 1
    })
    .await;
    gw.call("POST", "/session/start/stuck", None).await;
    let reaped = wait_state(&mut bus, "stuck", SessionState::QrExpired).await;
    assert!(reaped.reason.unwrap().starts_with("reaped"));
    gw.metrics.record_socket_request("list", true);
    gw.metrics.record_socket_request("bogus", false);

    // The counters follow the event bus on their own task: poll until they caught up.
    let wanted = [
        (
            "warden_session_disconnects_total{reason=\"connection_lost\"}",
            1.0,
        ),
        ("warden_session_disconnects_total{reason=\"reaped\"}", 1.0),
        ("warden_janitor_reaps_total", 1.0),
        ("warden_session_restarts_total", 1.0),
        ("warden_session_connects_total", 2.0),
    ];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let samples = loop {
        let reply = gw.call("GET", "/metrics", None).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let samples = parse_prometheus(&reply.text());
        if wanted
            .iter()
            .all(|(k, v)| samples.get(*k).is_some_and(|got| got >= v))
        {
            break samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never caught up: {samples:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for state in SessionState::ALL {
        assert!(
            samples.contains_key(&format!("warden_sessions{{state=\"{state}\"}}")),
            "{state}"
        );
    }
    assert_eq!(samples["warden_sessions{state=\"connected\"}"], 1.0);
    assert_eq!(samples["warden_sessions{state=\"qr_expired\"}"], 1.0);
    assert_eq!(samples["warden_sessions{state=\"stopped\"}"], 1.0);
    assert_eq!(samples["warden_journal_dropped_total"], 0.0);
    // One timer: the connected session's stability timer (the others wait for nothing).
    assert_eq!(samples["warden_supervisor_timers"], 1.0);
    for family in [
        "warden_connect_attempts_in_flight",
        "warden_connect_attempts_queued",
        "warden_event_streams",
        "warden_event_streams_lagged_total",
        "warden_http_request_duration_seconds_count",
        "warden_http_request_duration_seconds_sum",
        "warden_http_request_duration_seconds_bucket{le=\"+Inf\"}",
    ] {
        assert!(samples.contains_key(family), "{family}");
    }
    assert_eq!(
        samples["warden_socket_requests_total{op=\"list\",outcome=\"ok\"}"],
        1.0
    );
    assert_eq!(
        samples["warden_socket_requests_total{op=\"other\",outcome=\"error\"}"],
        1.0
    );
    assert!(
        samples["warden_http_requests_total{method=\"POST\",route=\"/session\",code=\"200\"}"]
            >= 3.0
    );
    assert!(
        samples
            .keys()
            .all(|k| !k.contains("flaky") && !k.contains("stuck")),
        "no per-session labels"
    );
    gw.stop().await;
}

#[tokio::test]
async fn healthz_follows_the_supervisor() {
    let gw = Gateway::start(Setup {
        key: Some(KEY),
        ..Setup::default()
    })
    .await;
    gw.supervisor.create(None, Some("h1")).await.unwrap();
    let ok = status_only(&gw, "GET", "/healthz", None, &[]).await;
    assert_eq!(ok.0, 200, "no key needed");
    assert_eq!(
        (&ok.1["status"], &ok.1["sessions"], &ok.1["counts"]),
        (&json!("ok"), &json!(1), &json!({"stopped": 1}))
    );
    assert!(ok.1["version"].is_string() && ok.1["uptime_secs"].is_u64());

    gw.supervisor.shutdown().await.unwrap();
    let down = status_only(&gw, "GET", "/healthz", None, &[]).await;
    assert_eq!((down.0, &down.1["status"]), (503, &json!("unavailable")));
    gw.stop().await;
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let gw = Gateway::start(Setup::default()).await;
    let reply = gw.call("GET", "/openapi.json", None).await;
    assert_eq!(reply.status, 200);
    let doc = reply.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = 0;
    for (path, item) in paths {
        documented += item.as_object().unwrap().len();
        for (method, op) in item.as_object().unwrap() {
            assert!(
                ROUTES
                    .iter()
                    .any(|r| r.path == path && r.method.eq_ignore_ascii_case(method)),
                "{method} {path} is documented but not in ROUTES"
            );
            assert!(
                op["summary"].is_string() && op["responses"].is_object(),
                "{method} {path}"
            );
        }
    }
    assert_eq!(documented, ROUTES.len());
    for legacy in [
        "/session",
        "/sessions",
        "/session/status/{token}",
        "/session/start/{token}",
        "/session/restart/{token}",
        "/session/refresh/{token}",
        "/session/{token}",
        "/session/force-cleanup/{token}",
        "/session/reset-reconnect/{token}",
    ] {
        assert!(paths.contains_key(legacy), "{legacy}");
    }
    gw.stop().await;
}
