//! End to end: the real `warden` binary on temp dirs, a fake WhatsApp server on loopback, driven
//! only through the control socket and the CLI.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::sync::mpsc;
use warden_fakewa::{ClientKind, FakeServer, ServerEvent};

use common::{BIN, Daemon, PHONE, curl, curl_with, fake_whatsapp, workspace};

fn registrations(server: &FakeServer) -> usize {
    server.recorder().snapshot().count(|r| {
        matches!(&r.event, ServerEvent::Handshake { client, .. } if matches!(client.kind, ClientKind::Registration { .. }))
    })
}

fn logins(server: &FakeServer) -> usize {
    server.recorder().snapshot().count(|r| {
        matches!(&r.event, ServerEvent::Handshake { client, .. } if matches!(client.kind, ClientKind::Login { .. }))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_a_phone_operate_it_and_survive_a_kill() {
    let whatsapp = fake_whatsapp().await;
    let dir = workspace(&whatsapp.url());
    let mut daemon = Daemon::start(dir.path()).await;

    let created = daemon
        .json(&["create", "--token", "shop1", "--name", "Shop"])
        .await;
    assert_eq!(created["state"], json!("stopped"));

    // `warden start` draws the QR code, and returns once the phone has linked it.
    let (code, out, err) = daemon.cli(&["start", "shop1"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Scan with WhatsApp"), "{out}");
    assert!(
        out.contains('█') || out.contains('▀'),
        "a QR code is drawn: {out}"
    );
    assert!(out.contains("shop1 is connected as"), "{out}");
    let status = daemon.json(&["status", "shop1"]).await;
    assert_eq!(status["state"], json!("connected"));
    assert!(status["jid"].as_str().unwrap().starts_with(PHONE));
    let list = daemon.json(&["sessions"]).await;
    assert_eq!(list["counts"], json!({"connected": 1}));
    daemon.log_line("Session connected successfully").await;

    // The legacy operations.
    let (code, _, err) = daemon.cli(&["restart", "shop1"]).await;
    assert_eq!(code, 4, "a restart inside the cooldown is refused");
    assert!(err.contains("cooling down"), "{err}");
    let (code, _, err) = daemon.cli(&["restart", "shop1", "--force"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = daemon.cli(&["start", "shop1"]).await;
    assert_eq!(code, 0, "{out}");
    let reset = daemon.json(&["reset-reconnect", "shop1"]).await;
    assert_eq!(reset["attempts"], json!(0));
    let cleaned = daemon.json(&["force-cleanup", "shop1"]).await;
    assert_eq!(cleaned["state"], json!("stopped"));
    let (code, out, _) = daemon.cli(&["start", "shop1"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("Scan with WhatsApp"),
        "stored credentials need no QR: {out}"
    );
    assert_eq!(registrations(&whatsapp), 1);

    // kill -9, then start again: the session is back, without a new QR.
    let logins_before = logins(&whatsapp);
    daemon.child.start_kill().unwrap();
    daemon.child.wait().await.unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let (code, out, _) = daemon.cli(&["start", "shop1"]).await;
    assert_eq!(code, 0, "{out}");
    let status = daemon.json(&["status", "shop1"]).await;
    assert_eq!(status["state"], json!("connected"));
    assert_eq!(registrations(&whatsapp), 1, "no new QR after a restart");
    assert!(logins(&whatsapp) > logins_before);
    assert_eq!(
        whatsapp.recorder().snapshot().max_concurrent(PHONE),
        1,
        "never two connections for one account"
    );

    // SIGTERM: a graceful shutdown within the bound, the socket removed.
    let pid = daemon.child.id().unwrap();
    let mut child = daemon.child;
    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(term.success());
    let status = tokio::time::timeout(Duration::from_secs(12), child.wait())
        .await
        .expect("stopped within the shutdown bound")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!daemon.socket.exists());
    // The desired state was kept: the next daemon restores the session.
    let daemon = Daemon::start(dir.path()).await;
    let status = daemon.json(&["status", "shop1"]).await;
    assert_eq!(status["desired"], json!("running"), "{status}");
}

/// Waits until the fake contact's phone has decrypted a message with `text`; returns its id.
async fn decrypted_by_contact(whatsapp: &FakeServer, contact: &str, text: &str) -> String {
    let device = format!("{contact}@s.whatsapp.net");
    let record = whatsapp
        .recorder()
        .wait_for(Duration::from_secs(20), |r| {
            matches!(&r.event, ServerEvent::ClientMessage { device: d, plaintext: Ok(p), .. }
                if *d == device && p.text.as_deref() == Some(text))
        })
        .await
        .unwrap_or_else(|_| panic!("{contact} reads {text:?}"));
    match record.event {
        ServerEvent::ClientMessage { id, .. } => id,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_sent_through_the_cli_the_socket_and_http_reaches_the_contact() {
    const CONTACT: &str = "15557654321";
    let whatsapp = fake_whatsapp().await;
    let dir = workspace(&whatsapp.url());
    let daemon = Daemon::start(dir.path()).await;
    daemon.json(&["create", "--token", "shop1"]).await;
    let (code, out, err) = daemon.cli(&["start", "shop1"]).await;
    assert_eq!(code, 0, "{out}\n{err}");

    // The CLI, as README shows it.
    let sent = daemon
        .json(&[
            "send",
            "shop1",
            "--to",
            "+1 555 765 4321",
            "--text",
            "from the cli",
        ])
        .await;
    let id = decrypted_by_contact(&whatsapp, CONTACT, "from the cli").await;
    assert_eq!(sent["message_id"], json!(id), "{sent}");

    // The socket, one JSON line.
    let (read, mut write) = UnixStream::connect(&daemon.socket)
        .await
        .unwrap()
        .into_split();
    let request =
        json!({"op": "send_text", "token": "shop1", "to": CONTACT, "text": "from the socket"});
    write
        .write_all(format!("{request}\n").as_bytes())
        .await
        .unwrap();
    let line = BufReader::new(read)
        .lines()
        .next_line()
        .await
        .unwrap()
        .expect("a reply");
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["ok"], json!(true), "{reply}");
    let id = decrypted_by_contact(&whatsapp, CONTACT, "from the socket").await;
    assert_eq!(reply["result"]["message_id"], json!(id), "{reply}");

    // HTTP, the gateway's send route.
    let body = format!(r#"{{"to":"{CONTACT}","text":"from http"}}"#);
    let (status, sent) = curl(daemon.http, "POST", "/session/send/shop1", Some(&body)).await;
    assert_eq!(status, 200, "{sent}");
    let id = decrypted_by_contact(&whatsapp, CONTACT, "from http").await;
    assert_eq!(sent["messageId"], json!(id), "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_errors_and_change_nothing() {
    let whatsapp = fake_whatsapp().await;
    let dir = workspace(&whatsapp.url());
    let daemon = Daemon::start(dir.path()).await;
    let meta = std::fs::symlink_metadata(&daemon.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "the socket is not world-writable"
    );

    let mut requests: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        b"}".to_vec(),
        b"null".to_vec(),
        b"\"list\"".to_vec(),
        b"[{\"op\":\"list\"}]".to_vec(),
        br#"{"op":null}"#.to_vec(),
        br#"{"op":"LIST"}"#.to_vec(),
        br#"{"op":"shutdown"}"#.to_vec(),
        br#"{"op":"exec","cmd":"rm -rf /"}"#.to_vec(),
        br#"{"op":"status","token":true}"#.to_vec(),
        br#"{"op":"restart","token":"x","force":"yes"}"#.to_vec(),
        br#"{"op":"create","name":5}"#.to_vec(),
        br#"{"op":"send_text","token":"x","to":1,"text":"y"}"#.to_vec(),
        br#"{"id":[],"op":"list"}"#.to_vec(),
        vec![b'A'; 200_000],
        vec![0xff, 0xfe, 0x00],
    ];
    for bad in [
        "../x",
        "../../etc/passwd",
        "/etc",
        "a/b",
        "..",
        ".",
        "",
        "a b",
        "ä",
        "x\u{0}y",
        "%2e%2e",
        "C:\\x",
        "~root",
        "$(id)",
        "`id`",
        "a;b",
        "a|b",
        "*",
        "?",
        "a\nb",
    ] {
        for op in ["create", "start", "delete"] {
            requests.push(serde_json::to_vec(&json!({"op": op, "token": bad})).unwrap());
        }
    }
    requests.truncate(60);
    assert!(requests.len() >= 50);

    let (read, mut write) = UnixStream::connect(&daemon.socket)
        .await
        .unwrap()
        .into_split();
    let mut replies = BufReader::new(read).lines();
    for request in &requests {
        write.write_all(request).await.unwrap();
        write.write_all(b"\n").await.unwrap();
        let line = replies.next_line().await.unwrap().expect("a reply");
        let reply: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            reply["ok"],
            json!(false),
            "{}: {reply}",
            String::from_utf8_lossy(request)
        );
        let code = reply["error"]["code"].as_str().unwrap();
        assert!(
            ["bad_request", "invalid_token", "not_found"].contains(&code),
            "{code}: {reply}"
        );
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
    }
    // The daemon is still up and answers on the same connection.
    write
        .write_all(b"{\"id\":1,\"op\":\"health\"}\n")
        .await
        .unwrap();
    let health: Value = serde_json::from_str(&replies.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(health["result"]["status"], json!("ok"));
    // Nothing was written outside sessions/ (and the daemon's own run/ and logs/).
    let mut top: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["daemon.toml", "logs", "run", "sessions"]);
    let sessions: Vec<String> = std::fs::read_dir(dir.path().join("sessions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".warden.lock" && !name.starts_with("warden.db"))
        .collect();
    assert!(
        sessions.is_empty(),
        "nothing but the lock and the database: {sessions:?}"
    );
    assert!(!Path::new("/etc/x").exists());

    // A second daemon on the same socket refuses to start, and the first carries on.
    let second = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("daemon.toml"))
        .output()
        .await
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(daemon.json(&["health"]).await["status"], json!("ok"));
}

#[tokio::test]
async fn a_bad_configuration_exits_78_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("daemon.toml");
    std::fs::write(
        &path,
        "[daemon]\nsocket = \"x.sock\"\n\n[policy]\nmax_attempts = \"three\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("daemon.toml") && err.contains("line 5") && err.contains("expected u32"),
        "{err}"
    );
    std::fs::write(&path, "[deamon]\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `deamon`"));
    // The CLI says plainly when no daemon is running.
    let out = Command::new(BIN)
        .args(["--socket"])
        .arg(dir.path().join("none.sock"))
        .arg("sessions")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notifications_reload_and_log_files() {
    let whatsapp = fake_whatsapp().await;
    let dir = workspace(&whatsapp.url());
    let notify_path = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("daemon.toml"))
        .env_remove("RUST_LOG")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, mut log) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    let mut buf = vec![0u8; 4096];
    let mut next_message = async || {
        let n = tokio::time::timeout(Duration::from_secs(20), notify.recv(&mut buf))
            .await
            .expect("a notification")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        seen.push(next_message().await);
    }
    let ready = seen.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(ready.contains("STATUS=0 sessions"), "{ready}");
    // The watchdog is petted (every 200 ms here) while the supervisor answers.
    while !next_message().await.contains("WATCHDOG=1") {}

    // SIGHUP with a changed policy: applied; with a broken file: refused, still running.
    let config = dir.path().join("daemon.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("jitter = 0.0", "jitter = 0.1")).unwrap();
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    let wait_log = async |log: &mut mpsc::UnboundedReceiver<String>, needle: &str| {
        let found = async {
            while let Some(line) = log.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("the daemon's stderr closed");
        };
        tokio::time::timeout(Duration::from_secs(20), found)
            .await
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
    };
    wait_log(&mut log, "SIGHUP: configuration reloaded").await;
    std::fs::write(&config, "[policy]\njitter = 7\n").unwrap();
    Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    let refused = wait_log(&mut log, "SIGHUP: configuration not reloaded").await;
    assert!(refused.contains("jitter"), "{refused}");

    // SIGTERM: STOPPING=1, a clean exit, and the log file has the whole story.
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    while !next_message().await.contains("STOPPING=1") {}
    let status = tokio::time::timeout(Duration::from_secs(12), child.wait())
        .await
        .expect("stopped within the bound")
        .unwrap();
    assert!(status.success());
    let logs: Vec<_> = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let file = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(file.contains("warden is ready"));
    assert!(
        file.contains("warden stopped"),
        "the last line is flushed at exit"
    );
    assert!(!file.contains("\u{1b}["), "no colours in files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_guides_curl_commands_work_against_the_daemon() {
    let whatsapp = fake_whatsapp().await;
    let dir = workspace(&whatsapp.url());
    let daemon = Daemon::start(dir.path()).await;
    let http = daemon.http;

    let (status, created) = curl(http, "POST", "/session", Some(r#"{"name":"Toko"}"#)).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["success"], json!(true));
    let token = created["token"].as_str().unwrap().to_owned();

    let (status, started) = curl(http, "POST", &format!("/session/start/{token}"), None).await;
    assert_eq!(status, 200, "{started}");
    assert!(
        ["qr_generated", "connected", "connecting"].contains(&started["status"].as_str().unwrap()),
        "{started}"
    );
    // The fake phone scans the QR: the daemon reports it connected.
    let (code, out, _) = daemon.cli(&["start", &token]).await;
    assert_eq!(code, 0, "{out}");

    // The guide's commands, as printed there.
    let (status, one) = curl(http, "GET", &format!("/session/status/{token}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (one["success"].clone(), one["isReady"].clone()),
        (json!(true), json!(true))
    );
    let (status, all) = curl(http, "GET", "/sessions", None).await;
    assert_eq!(status, 200, "{all}");
    assert!(all.to_string().contains(&token));
    let (status, restarted) = curl(http, "POST", &format!("/session/restart/{token}"), None).await;
    assert_eq!(status, 429, "inside the cooldown: {restarted}");
    let (status, reset) = curl(
        http,
        "POST",
        &format!("/session/reset-reconnect/{token}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{reset}");
    let (status, cleaned) = curl(
        http,
        "POST",
        &format!("/session/force-cleanup/{token}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{cleaned}");
    let status_after = daemon.json(&["status", &token]).await;
    assert_eq!(status_after["state"], json!("stopped"));

    let (status, missing) = curl(http, "GET", "/session/status/nobody", None).await;
    assert_eq!(
        (status, missing["error"].clone()),
        (404, json!("Session not found"))
    );
    let (status, _) = curl(http, "GET", "/session/status/..%2F..%2Fetc", None).await;
    assert_eq!(status, 400);
    let (status, health) = curl(http, "GET", "/healthz", None).await;
    assert_eq!(status, 200, "{health}");
    // Control-socket requests show in the metrics beside HTTP ones.
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut metrics = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut metrics)
        .await
        .unwrap();
    assert!(metrics.contains("warden_sessions"), "{metrics}");
    assert!(metrics.contains("socket"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_api_key_every_route_but_healthz_requires_it() {
    let whatsapp = fake_whatsapp().await;
    let dir = workspace(&whatsapp.url());
    let key = "a-long-enough-test-key-0123";
    let daemon = Daemon::start_with(dir.path(), &[("WARDEN_HTTP_API_KEY", key)]).await;
    let http = daemon.http;
    let bearer = format!("Authorization: Bearer {key}\r\n");
    let x_api_key = format!("X-Api-Key: {key}\r\n");
    for (method, path) in [
        ("GET", "/sessions"),
        ("GET", "/session/status/shop1"),
        ("POST", "/session/force-cleanup/shop1"),
        ("GET", "/metrics"),
    ] {
        let (status, body) = curl(http, method, path, None).await;
        assert_eq!(status, 401, "{method} {path} without the key: {body}");
        let (status, _) = curl_with(
            http,
            method,
            path,
            None,
            "Authorization: Bearer wrong-key-wrong-key\r\n",
        )
        .await;
        assert_eq!(status, 401, "{method} {path} with a wrong key");
    }
    let (status, _) = curl(http, "GET", "/healthz", None).await;
    assert_eq!(status, 200, "health needs no key");
    let (status, created) =
        curl_with(http, "POST", "/session", Some(r#"{"name":"Key"}"#), &bearer).await;
    assert_eq!(status, 200, "{created}");
    let token = created["token"].as_str().unwrap();
    let (status, one) = curl_with(
        http,
        "GET",
        &format!("/session/status/{token}"),
        None,
        &x_api_key,
    )
    .await;
    assert_eq!((status, one["success"].clone()), (200, json!(true)));
    // The key never reaches the log.
    let logs = std::fs::read_dir(dir.path().join("logs")).unwrap();
    for file in logs {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        assert!(!text.contains(key));
    }
}
