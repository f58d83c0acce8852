//! The gateway end to end over real TCP on 127.0.0.1, in front of a real supervisor driven by
//! the scripted link.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use warden_core::scripted::Script;
use warden_core::{DisconnectReason, SessionState};
use warden_http::{HttpConfig, Metrics, ROUTES, ServeError};

use common::{Gateway, JID, KEY, Setup, status_only, wait_state};

const MINUTE: Duration = Duration::from_secs(60);

/// The legacy guide's curl commands, exactly as printed.
const GUIDE_COMMANDS: [&str; 5] = [
    "curl -X POST http://localhost:3000/session/force-cleanup/YOUR_SESSION_TOKEN",
    "curl -X POST http://localhost:3000/session/reset-reconnect/YOUR_SESSION_TOKEN",
    "curl -X POST http://localhost:3000/session/restart/YOUR_SESSION_TOKEN",
    "curl http://localhost:3000/session/status/YOUR_SESSION_TOKEN",
    "curl http://localhost:3000/sessions",
];

/// The guide's commands, read from the guide itself when the shared reference is beside the
/// repository: the list above must hold every one of them.
fn guide_commands_in_the_guide() -> Option<Vec<String>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/legacy-troubleshooting-guide.id.md");
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("curl "))
            .map(str::to_owned)
            .collect(),
    )
}

/// Sends what curl sends for `command` over a raw TCP connection; answers (status, JSON).
async fn as_curl_sends(addr: std::net::SocketAddr, command: &str, token: &str) -> (u16, Value) {
    let args: Vec<&str> = command.split_whitespace().collect();
    let (method, url) = match args.as_slice() {
        ["curl", "-X", method, url] => (*method, *url),
        ["curl", url] => ("GET", *url),
        _ => panic!("unexpected command {command}"),
    };
    let path = url
        .strip_prefix("http://localhost:3000")
        .expect("the guide's host")
        .replace("YOUR_SESSION_TOKEN", token);
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:3000\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    );
    let (status, _, body) = raw(addr, &request).await;
    (status, serde_json::from_slice(&body).unwrap())
}

/// Sends `request` as is over TCP; answers the status, the head and the body.
async fn raw(addr: std::net::SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader.read_line(&mut head).await.unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    (status, head, body)
}

/// Runs the printed command with the real curl, pointing `localhost:3000` at the gateway.
async fn with_real_curl(addr: std::net::SocketAddr, command: &str, token: &str) -> Option<Value> {
    let curl = ["/usr/bin/curl", "/bin/curl"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let command = command.replace("YOUR_SESSION_TOKEN", token);
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let output = tokio::process::Command::new(curl)
        .arg("--silent")
        .arg("--show-error")
        .arg("--connect-to")
        .arg(format!("localhost:3000:127.0.0.1:{}", addr.port()))
        .args(&args)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{command}: {output:?}");
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

#[tokio::test]
async fn the_legacy_guides_curl_commands_work_as_printed() {
    if let Some(found) = guide_commands_in_the_guide() {
        for command in &found {
            assert!(
                GUIDE_COMMANDS.contains(&command.as_str()),
                "the guide has a command this test does not cover: {command}"
            );
        }
        assert_eq!(found.len(), GUIDE_COMMANDS.len());
    }
    assert_eq!(HttpConfig::default().bind.to_string(), "127.0.0.1:3000");
    let gw = Gateway::start(Setup {
        adjust: |c| c.policy.restart_cooldown = Duration::ZERO,
        ..Setup::default()
    })
    .await;
    let mut events = gw.supervisor.subscribe();
    gw.call(
        "POST",
        "/session",
        Some(r#"{"name":"Toko","token":"toko1"}"#),
    )
    .await;
    gw.call("POST", "/session/start/toko1", None).await;
    wait_state(&mut events, "toko1", SessionState::Connected).await;

    for command in GUIDE_COMMANDS {
        let (status, body) = as_curl_sends(gw.addr, command, "toko1").await;
        assert_eq!(status, 200, "{command}: {body}");
        assert_eq!(body["success"], true, "{command}: {body}");
        if command.contains("/session/") {
            assert_eq!(body["token"], "toko1", "{command}: {body}");
            for field in [
                "name",
                "status",
                "session_status",
                "isReady",
                "jid",
                "userName",
                "connectionStatus",
            ] {
                assert!(body.get(field).is_some(), "{command}: no {field} in {body}");
            }
        } else {
            assert_eq!(body["sessions"][0]["token"], "toko1", "{body}");
        }
        if command.contains("force-cleanup") {
            assert_eq!(body["connectionStatus"], "stopped", "{body}");
            assert_eq!(body["isReady"], false);
        }
        if command.contains("restart") {
            wait_state(&mut events, "toko1", SessionState::Connected).await;
        }
        if command.contains("status") {
            assert_eq!(body["status"], "connected");
            assert_eq!(body["isReady"], true);
            assert_eq!(body["jid"], JID);
        }
        if let Some(body) = with_real_curl(gw.addr, command, "toko1").await {
            assert_eq!(body["success"], true, "curl {command}: {body}");
            if command.contains("restart") {
                wait_state(&mut events, "toko1", SessionState::Connected).await;
            }
        }
    }
    gw.stop().await;
}

/// The request each route gets in the auth test: (method, path, body).
fn request_for(route: &warden_http::Route, token: &str) -> (String, String, Option<&'static str>) {
    let path = route.path.replace("{token}", token);
    let body = match route.path {
        "/session/send/{token}" => Some(r#"{"to":"15550001111","text":"hi"}"#),
        "/session" => Some("{}"),
        _ => None,
    };
    (route.method.to_owned(), path, body)
}

#[tokio::test]
async fn every_route_but_healthz_and_the_page_needs_the_key() {
    let gw = Gateway::start(Setup {
        key: Some(KEY),
        ..Setup::default()
    })
    .await;
    let bearer = format!("Bearer {KEY}");
    let mut served = BTreeSet::new();
    for (i, route) in ROUTES.iter().enumerate() {
        let token = format!("r{i}");
        gw.supervisor.create(None, Some(&token)).await.unwrap();
        let (method, path, body) = request_for(route, &token);
        let status = |headers: Vec<(&'static str, String)>| {
            let (method, path) = (method.clone(), path.clone());
            let gw = &gw;
            async move { status_only(gw, &method, &path, body, &headers).await }
        };
        let (without, wrong) = (
            status(vec![]).await,
            status(vec![(
                "authorization",
                "Bearer wrong-key-0123456789".into(),
            )])
            .await,
        );
        let expected = if route.auth { 401 } else { 200 };
        assert_eq!(without.0, expected, "{method} {path} without a key");
        assert_eq!(wrong.0, expected, "{method} {path} with a wrong key");
        if route.auth {
            assert_eq!(without.1["success"], false, "{method} {path}");
            assert_eq!(without.1["code"], "unauthorized", "{method} {path}");
        }
        for header in [
            ("authorization", bearer.clone()),
            ("x-api-key", KEY.to_owned()),
        ] {
            let (code, body) = status(vec![header.clone()]).await;
            assert_ne!(code, 401, "{method} {path} with {}", header.0);
            assert!(
                !["no_route", "method_not_allowed"].contains(&body["code"].as_str().unwrap_or("")),
                "{method} {path} is not served: {body}"
            );
            if method != "DELETE" {
                assert!(code < 500, "{method} {path}: {code} {body}");
            }
        }
        served.insert((method, route.path));
    }
    assert_eq!(served.len(), ROUTES.len(), "each route is distinct");

    // ?api_key= only where headers cannot be set.
    let q = |path: &str| format!("{path}?api_key={KEY}");
    assert_eq!(
        status_only(&gw, "GET", &q("/sessions"), None, &[]).await.0,
        401
    );
    assert_eq!(
        status_only(&gw, "GET", &q("/events"), None, &[]).await.0,
        200
    );
    let qr = format!("/session/qr/r0?format=text&api_key={KEY}");
    assert_ne!(status_only(&gw, "GET", &qr, None, &[]).await.0, 401);
    gw.stop().await;
}
#[tokio::test]
async fn a_session_from_creation_to_deletion() {
    let gw = Gateway::start(Setup::default()).await;
    let mut events = gw.supervisor.subscribe();
    gw.link.script(
        "phone",
        [
            Script::new().qr("QR-ONE", MINUTE),
            Script::new().qr("QR-TWO", MINUTE),
            Script::new()
                .paired(JID)
                .disconnect(DisconnectReason::RestartRequired),
            Script::login(JID),
        ],
    );

    let created = gw
        .call(
            "POST",
            "/session",
            Some(r#"{"name":"Front desk","token":"phone"}"#),
        )
        .await;
    assert_eq!(created.status, 200);
    let body = created.json();
    assert_eq!(
        (&body["success"], &body["token"], &body["name"]),
        (&json!(true), &json!("phone"), &json!("Front desk"))
    );
    assert_eq!(
        (&body["status"], &body["connectionStatus"]),
        (&json!("disconnected"), &json!("stopped"))
    );
    assert_eq!(body["isReady"], false);
    assert_eq!(body["session"]["state"], "stopped");

    let anonymous = gw.call("POST", "/session", None).await.json();
    let other = anonymous["token"].as_str().unwrap().to_owned();
    assert_eq!(
        anonymous["name"],
        other.as_str(),
        "the name defaults to the token"
    );

    let started = gw.call("POST", "/session/start/phone", None).await;
    assert_eq!(started.status, 200);
    let body = started.json();
    assert_eq!(body["status"], "qr_generated", "{body}");
    assert_eq!(body["qr"], "QR-ONE");
    assert_eq!(body["connectionStatus"], "waiting_for_scan");
    assert!(
        body["qrImage"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );

    let svg = gw.call("GET", "/session/qr/phone", None).await;
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert_eq!(svg.header("cache-control"), Some("no-store"));
    assert!(svg.text().contains("<svg"));
    let png = gw.call("GET", "/session/qr/phone?format=png", None).await;
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert_eq!(&png.body[..8], b"\x89PNG\r\n\x1a\n");
    let text = gw.call("GET", "/session/qr/phone?format=text", None).await;
    assert_eq!(text.text(), "QR-ONE");

    let status = gw.call("GET", "/session/status/phone", None).await.json();
    assert_eq!(
        (&status["status"], &status["qr"]),
        (&json!("qr_generated"), &json!("QR-ONE"))
    );

    let cooling = gw.call("POST", "/session/restart/phone", None).await;
    assert_eq!(cooling.status, 429, "{}", cooling.text());
    let retry_after: u64 = cooling.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let body = cooling.json();
    assert_eq!(
        (&body["success"], &body["code"]),
        (&json!(false), &json!("cooldown"))
    );
    assert_eq!(body["retry_after_secs"], retry_after);

    let refreshed = gw.call("POST", "/session/refresh/phone", None).await.json();
    assert_eq!(
        (&refreshed["status"], &refreshed["qr"]),
        (&json!("qr_generated"), &json!("QR-TWO")),
        "{refreshed}"
    );

    // The phone scans: the scripted link pairs on the next connection.
    let forced = gw
        .call("POST", "/session/restart/phone?force=true", None)
        .await;
    assert_eq!(forced.status, 200, "{}", forced.text());
    wait_state(&mut events, "phone", SessionState::Connected).await;
    let status = gw.call("GET", "/session/status/phone", None).await.json();
    assert_eq!(
        (
            &status["status"],
            &status["isReady"],
            &status["jid"],
            &status["userName"]
        ),
        (
            &json!("connected"),
            &json!(true),
            &json!(JID),
            &json!("Scripted")
        )
    );
    assert!(status.get("qr").is_none());
    let no_qr = gw.call("GET", "/session/qr/phone", None).await;
    assert_eq!(
        (no_qr.status, no_qr.json()["code"].clone()),
        (409, json!("no_qr"))
    );

    let mut events = gw.supervisor.subscribe();
    let sent = gw
        .call(
            "POST",
            "/session/send/phone",
            Some(r#"{"to":"15550001111","text":"hello","key":"k-1"}"#),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let id = sent.json()["messageId"].as_str().unwrap().to_owned();
    // Stored, then sent by the session's drain: wait for its `sent`.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(warden_core::SessionEvent::MessageStatus(m)) = events.recv().await
                && m.id == id
                && m.status == warden_core::MessageStatus::Sent
            {
                return;
            }
        }
    })
    .await
    .expect("the message is sent");
    let link_sent = gw.link.stats("phone").sent;
    assert_eq!(link_sent.len(), 1);
    assert_eq!(
        (
            link_sent[0].id.as_str(),
            link_sent[0].to.as_str(),
            link_sent[0].text.as_str()
        ),
        (id.as_str(), "15550001111@s.whatsapp.net", "hello")
    );
    // The same key again: the same message, nothing sent twice.
    let again = gw
        .call(
            "POST",
            "/session/send/phone",
            Some(r#"{"to":"15550001111","text":"hello","key":"k-1"}"#),
        )
        .await;
    assert_eq!(again.json()["messageId"], json!(id));
    let status = gw
        .call("GET", &format!("/session/message/phone/{id}"), None)
        .await;
    assert_eq!(status.status, 200, "{}", status.text());
    assert_eq!(status.json()["status"], json!("sent"));
    let bad = gw
        .call(
            "POST",
            "/session/send/phone",
            Some(r#"{"to":"15550001111","text":" "}"#),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("empty"), "{}", bad.text());
    assert_eq!(gw.link.stats("phone").sent.len(), 1);
    let not_connected = gw
        .call(
            "POST",
            &format!("/session/send/{other}"),
            Some(r#"{"to":"15550001111","text":"x"}"#),
        )
        .await;
    assert_eq!(not_connected.status, 409, "{}", not_connected.text());

    let list = gw.call("GET", "/sessions", None).await.json();
    assert_eq!(list["total"], 2);
    assert_eq!(list["counts"], json!({"connected": 1, "stopped": 1}));
    let phone = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["token"] == "phone")
        .unwrap();
    assert_eq!(
        (&phone["isReady"], &phone["session_status"]),
        (&json!(true), &json!("connected"))
    );

    let stopped = gw.call("POST", "/session/stop/phone", None).await.json();
    assert_eq!(
        (&stopped["connectionStatus"], &stopped["status"]),
        (&json!("stopped"), &json!("disconnected"))
    );
    let logged_out = gw.call("POST", "/session/logout/phone", None).await.json();
    assert_eq!(
        (&logged_out["connectionStatus"], &logged_out["status"]),
        (&json!("logged_out"), &json!("logged_out"))
    );
    assert_eq!(gw.link.stats("phone").credentials_deleted, 1);

    let deleted = gw.call("DELETE", "/session/phone", None).await;
    assert_eq!(deleted.status, 200);
    assert_eq!(
        deleted.json(),
        json!({"success": true, "message": "Session deleted", "token": "phone"})
    );
    let gone = gw.call("GET", "/session/status/phone", None).await;
    assert_eq!(gone.status, 404);
    let body = gone.json();
    assert_eq!(
        (&body["success"], &body["error"]),
        (&json!(false), &json!("Session not found"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn bad_requests_answer_json_never_500() {
    let gw = Gateway::start(Setup::default()).await;
    gw.call("POST", "/session", Some(r#"{"token":"t1"}"#)).await;
    let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(3 * 1024 * 1024));
    // (method, path, body, status, code)
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        ("GET", "/session/status/nope", None, 404, "not_found"),
        (
            "POST",
            "/session/force-cleanup/nope",
            None,
            404,
            "not_found",
        ),
        (
            "POST",
            "/session/reset-reconnect/nope",
            None,
            404,
            "not_found",
        ),
        ("POST", "/session/restart/nope", None, 404, "not_found"),
        ("POST", "/session/start/nope", None, 404, "not_found"),
        ("POST", "/session/refresh/nope", None, 404, "not_found"),
        ("DELETE", "/session/nope", None, 404, "not_found"),
        ("GET", "/session/qr/nope", None, 404, "not_found"),
        ("GET", "/events?token=nope", None, 404, "not_found"),
        (
            "GET",
            "/session/status/bad%20token",
            None,
            400,
            "invalid_token",
        ),
        ("POST", "/session/start/bad%21", None, 400, "invalid_token"),
        ("GET", "/session/status/%FF", None, 400, "bad_request"),
        ("POST", "/session", Some("{nope"), 400, "bad_request"),
        ("POST", "/session", Some("[1,2]"), 400, "bad_request"),
        (
            "POST",
            "/session",
            Some(r#"{"name":5}"#),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/session",
            Some(r#"{"token":"bad token"}"#),
            400,
            "invalid_token",
        ),
        (
            "POST",
            "/session",
            Some(r#"{"token":"t1"}"#),
            409,
            "conflict",
        ),
        ("POST", "/session", Some(&huge), 413, "too_large"),
        ("POST", "/session/start/t1", Some("{"), 400, "bad_request"),
        (
            "POST",
            "/session/start/t1",
            Some(r#"{"phone":15551234567}"#),
            400,
            "bad_request",
        ),
        ("POST", "/session/send/t1", None, 400, "bad_request"),
        (
            "POST",
            "/session/send/t1",
            Some(r#"{"to":"1555"}"#),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/session/send/t1",
            Some(r#"{"to":"","text":"x"}"#),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/session/send/t1",
            Some(r#"{"to":"1555","text":"x"}"#),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/session/send/t1",
            Some(r#"{"to":"15550001111","text":"x"}"#),
            409,
            "conflict",
        ),
        (
            "POST",
            "/session/send/t1",
            Some(r#"{"to":"15550001111","text":"x","key":5}"#),
            400,
            "bad_request",
        ),
        ("GET", "/session/message/t1/nope", None, 404, "not_found"),
        (
            "GET",
            "/session/message/t1/..%2F..%2Fetc",
            None,
            404,
            "not_found",
        ),
        (
            "POST",
            "/session/message/t1/nope/retry",
            None,
            404,
            "not_found",
        ),
        (
            "POST",
            "/session/restart/t1?force=maybe",
            None,
            400,
            "bad_request",
        ),
        ("GET", "/session/qr/t1?format=gif", None, 409, "no_qr"),
        ("GET", "/nowhere", None, 404, "no_route"),
        (
            "GET",
            "/session/force-cleanup/t1",
            None,
            405,
            "method_not_allowed",
        ),
        ("PUT", "/sessions", None, 405, "method_not_allowed"),
    ];
    for (method, path, body, status, code) in cases {
        let reply = gw.call(method, path, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{method} {path}"
        );
        let json = reply.json();
        assert_eq!(
            (&json["success"], &json["code"]),
            (&json!(false), &json!(code)),
            "{method} {path}"
        );
        assert!(
            json["error"].is_string() && json["message"].is_string(),
            "{json}"
        );
        if code == "not_found" && !path.starts_with("/session/message/") {
            assert_eq!(json["error"], "Session not found");
        }
    }
    // A body without a JSON content type (curl -d without -H) is read as JSON all the same.
    let lenient = gw
        .call_with(
            "POST",
            "/session",
            Some(r#"{"token":"t2"}"#),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_eq!(lenient.status, 200, "{}", lenient.text());
    // An unknown QR format is refused once a QR is on show.
    gw.link.script("t3", [Script::new().qr("Q3", MINUTE)]);
    gw.call("POST", "/session", Some(r#"{"token":"t3"}"#)).await;
    gw.call("POST", "/session/start/t3", None).await;
    let gif = gw.call("GET", "/session/qr/t3?format=gif", None).await;
    assert_eq!(
        (gif.status, gif.json()["code"].clone()),
        (400, json!("bad_request"))
    );
    gw.stop().await;
}

/// A gateway whose starts wait 300 ms at most for their outcome.
async fn gateway_with_short_starts() -> Gateway {
    Gateway::start(Setup {
        options: warden_http::ServeOptions {
            start_wait: Duration::from_millis(300),
            ..Setup::default().options
        },
        ..Setup::default()
    })
    .await
}

#[tokio::test]
async fn start_answers_with_whatever_comes_first() {
    let gw = gateway_with_short_starts().await;
    gw.link.script("slow", [Script::new()]);
    gw.link.script(
        "gone",
        [Script::fail(Duration::ZERO, DisconnectReason::LoggedOut)],
    );
    gw.link
        .script("code", [Script::new().pair_code("ABCD-1234")]);
    gw.link.script("fast", [Script::login(JID)]);
    for (token, body, status) in [
        ("slow", None, "connecting"),
        ("gone", None, "logged_out"),
        (
            "code",
            Some(r#"{"phone":"15551234567"}"#),
            "pair_code_generated",
        ),
        ("fast", None, "connected"),
    ] {
        gw.supervisor.create(None, Some(token)).await.unwrap();
        let reply = gw
            .call("POST", &format!("/session/start/{token}"), body)
            .await;
        assert_eq!(reply.status, 200, "{token}: {}", reply.text());
        let json = reply.json();
        assert_eq!(json["status"], status, "{token}: {json}");
        if token == "code" {
            assert_eq!(json["pairCode"], "ABCD-1234");
        }
        if token == "fast" {
            assert_eq!(json["isReady"], true);
        }
    }
    // Starting a connected session again answers at once.
    let again = gw.call("POST", "/session/start/fast", None).await.json();
    assert_eq!(again["status"], "connected");
    gw.stop().await;
}

/// What another node carries here is answered by this node's own routes ([`LocalHttp`]); an
/// answer that does not come in time is given up as a gateway timeout that says the request
/// may have been carried out (and here it was: the start began).
#[tokio::test]
async fn a_carried_request_is_answered_here_or_given_up_in_time() {
    use base64::Engine;
    let gw = Gateway::start(Setup::default()).await;
    // Never logs in: a start waits for its QR code far longer than the carrier waits.
    gw.link.script("slow", [Script::new()]);
    gw.supervisor.create(None, Some("slow")).await.unwrap();
    let local = warden_http::LocalHttp::new(
        gw.supervisor.clone(),
        None,
        std::sync::Arc::new(Metrics::new()),
        1 << 20,
        Duration::from_millis(300),
    );
    let status = local
        .answer(warden_http::HttpAsk::get("/session/status/slow"))
        .await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json().unwrap()["status"], "disconnected");

    let start = local
        .answer(warden_http::HttpAsk {
            method: "POST".into(),
            uri: "/session/start/slow".into(),
            headers: Vec::new(),
            body: String::new(),
        })
        .await;
    assert_eq!(start.status, 504);
    let said = base64::engine::general_purpose::STANDARD
        .decode(&start.body)
        .unwrap();
    let said = String::from_utf8(said).unwrap();
    assert!(said.contains("may have been carried out"), "{said}");
    assert_eq!(
        gw.supervisor.status("slow").unwrap().desired.as_str(),
        "running",
        "the start was carried out"
    );
    gw.stop().await;
}

/// A client that shuts its writing side once its request is sent (as `nc -N` does) still
/// gets the answer of a route that takes its time: the gateway does not take that end for a
/// client gone away.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let gw = gateway_with_short_starts().await;
    // Never logs in: the start answers after its whole wait.
    gw.link.script("slow", [Script::new()]);
    gw.supervisor.create(None, Some("slow")).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"POST /session/start/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(common::PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the gateway never closed the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains(r#""status":"connecting""#), "{answer:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_network_bind_without_a_key_is_refused() {
    let (supervisor, listener, _dir) = common::bare_supervisor_and_listener().await;
    let config = HttpConfig {
        bind: "0.0.0.0:3000".parse().unwrap(),
        ..HttpConfig::default()
    };
    let refused = warden_http::serve(
        listener,
        supervisor.clone(),
        config.clone(),
        std::sync::Arc::new(Metrics::new()),
        std::future::pending(),
    )
    .await;
    match refused {
        Err(ServeError::Config(e)) => assert!(e.to_string().contains("WARDEN_HTTP_API_KEY"), "{e}"),
        other => panic!("served without a key on 0.0.0.0: {other:?}"),
    }
    let keyed = HttpConfig {
        api_key: Some(KEY.into()),
        ..config
    };
    assert_eq!(keyed.validate(), Ok(()));
    supervisor.shutdown().await.unwrap();
}

#[tokio::test]
async fn browsers_of_other_origins_are_refused_without_a_key_and_allowed_with_one() {
    let open = Gateway::start(Setup::default()).await;
    let port = open.addr.port();
    // (host, extra headers, status)
    let cases = [
        (format!("localhost:{port}"), String::new(), 200),
        (format!("127.0.0.1:{port}"), String::new(), 200),
        (format!("[::1]:{port}"), String::new(), 200),
        (
            format!("localhost:{port}"),
            format!("Origin: http://localhost:{port}\r\n"),
            200,
        ),
        (format!("evil.example:{port}"), String::new(), 403),
        (
            format!("evil.example:{port}"),
            format!("Origin: http://evil.example:{port}\r\n"),
            403,
        ),
        (
            format!("localhost:{port}"),
            "Origin: http://evil.example\r\n".into(),
            403,
        ),
        (
            format!("localhost:{port}"),
            "Origin: http://localhost:5173\r\n".into(),
            403,
        ),
        (
            format!("localhost:{port}"),
            "Sec-Fetch-Site: cross-site\r\n".into(),
            403,
        ),
    ];
    for (host, extra, status) in &cases {
        let request =
            format!("POST /session HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\n\r\n");
        let (got, head, body) = raw(open.addr, &request).await;
        assert_eq!(got, *status, "{host} {extra:?}: {head}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["success"], *status == 200, "{body}");
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("access-control-allow-origin"),
            "{head}"
        );
    }
    open.stop().await;

    let keyed = Gateway::start(Setup {
        key: Some(KEY),
        ..Setup::default()
    })
    .await;
    let preflight = "OPTIONS /session HTTP/1.1\r\nHost: warden.example\r\nOrigin: http://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n\r\n";
    let (status, head, _) = raw(keyed.addr, preflight).await;
    let head = head.to_ascii_lowercase();
    assert_eq!(status, 204, "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-headers: authorization, x-api-key, content-type"),
        "{head}"
    );
    let call = format!(
        "GET /sessions HTTP/1.1\r\nHost: warden.example\r\nOrigin: http://app.example\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    );
    let (status, head, _) = raw(keyed.addr, &call).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
    let no_key =
        "GET /sessions HTTP/1.1\r\nHost: warden.example\r\nOrigin: http://app.example\r\n\r\n";
    assert_eq!(raw(keyed.addr, no_key).await.0, 401);
    keyed.stop().await;
}

/// `GET /healthz` for the gateway at `host`.
fn healthz_request(host: std::net::SocketAddr) -> Vec<u8> {
    format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// One request on an open keep-alive connection; answers the status line.
async fn status_line_on(stream: &mut tokio::net::TcpStream) -> String {
    let host = stream.peer_addr().unwrap();
    stream.write_all(&healthz_request(host)).await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = stream.read(&mut head).await.unwrap();
    String::from_utf8_lossy(&head[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The gateway keeps at most `[http] max_connections` open: past the cap a new connection is
/// closed before any answer, and once one of the open ones goes, new ones are served again.
#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let (supervisor, listener, _dir) = common::bare_supervisor_and_listener().await;
    let addr = listener.local_addr().unwrap();
    let config = HttpConfig {
        bind: addr,
        max_connections: 2,
        ..HttpConfig::default()
    };
    tokio::spawn(warden_http::serve(
        listener,
        supervisor.clone(),
        config,
        std::sync::Arc::new(Metrics::new()),
        std::future::pending(),
    ));
    let connect = || tokio::net::TcpStream::connect(addr);
    // Two connections, each answered and kept open.
    let mut first = connect().await.unwrap();
    let mut second = connect().await.unwrap();
    let line = status_line_on(&mut first).await;
    assert!(line.contains("200"), "{line:?}");
    assert!(status_line_on(&mut second).await.contains("200"));

    // A third is closed at once: no answer, whatever it sends.
    let mut third = connect().await.unwrap();
    let _ = third.write_all(&healthz_request(addr)).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("closed, not left hanging");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "answered past the cap: {read:?}"
    );
    assert!(
        status_line_on(&mut first).await.contains("200"),
        "the open ones still work"
    );

    // One open connection goes: new connections are served again (the slot is freed once
    // the server has seen the close).
    drop(second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut next = connect().await.unwrap();
        let _ = next.write_all(&healthz_request(addr)).await;
        let mut head = [0u8; 64];
        if let Ok(n) = next.read(&mut head).await
            && n > 0
        {
            assert!(String::from_utf8_lossy(&head[..n]).contains("200"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a freed slot was never reused"
        );
        tokio::task::yield_now().await;
    }
    supervisor.shutdown().await.unwrap();
}
