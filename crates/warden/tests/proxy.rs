//! A proxy per session, end to end: the real `warden` binary, the fake WhatsApp server on
//! 127.0.0.1, and real proxies on loopback (the tests' SOCKS5 server and Debian's tinyproxy).
//! Each proxy dials out from its own loopback address (127.0.0.2, .3, .4), so the peer
//! address the fake server records for a connection names the proxy it came through.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use warden_fakewa::{FakeServer, Plan, Scenario, Script, ServerConfig, Step};

use common::proxies::{Socks5Proxy, Tinyproxy};
use common::{BIN, Daemon, until, workspace};

const WITHIN: Duration = Duration::from_secs(30);
const USER: &str = "gw";
const PASSWORD: &str = "s3cret-Pa55";

const DIRECT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const VIA_HTTP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const VIA_SOCKS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const VIA_SOCKS_AUTH: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// Registrations pair as the next phone of the server's pool; each account's first login is
/// dropped after 300 ms (no close frame), the later ones stay.
async fn fake_whatsapp() -> FakeServer {
    let registration = common::pair_any(Duration::from_millis(20));
    let login = Plan::attempts(
        [Scenario::new([
            Step::Login,
            Step::wait(Duration::from_millis(300)),
            Step::Drop,
        ])],
        Scenario::login(),
    );
    let script = Script::default()
        .with_registration(registration)
        .with_login(login);
    FakeServer::start(ServerConfig::with_script(script))
        .await
        .unwrap()
}

/// The fake server's connections, by account, as the peer addresses they came from.
fn peers_by_account(whatsapp: &FakeServer) -> BTreeMap<String, Vec<IpAddr>> {
    let mut peers: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for connection in whatsapp.recorder().snapshot().connections() {
        if let Some(account) = &connection.account {
            peers
                .entry(account.clone())
                .or_default()
                .push(connection.peer.ip());
        }
    }
    peers
}

/// Every regular file under `dir`, read as text (lossy).
fn all_text_under(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            text += &all_text_under(&path);
        } else if path.is_file() {
            text += &String::from_utf8_lossy(&std::fs::read(&path).unwrap());
        }
    }
    text
}

/// The CLI with `stdin` written to its standard input.
async fn cli_with_stdin(daemon: &Daemon, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn http_post(daemon: &Daemon, path: &str, body: Value) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "-H", "Content-Type: application/json"])
        .arg("--data")
        .arg(body.to_string())
        .arg(format!("http://{}{path}", daemon.http))
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_of_a_session_goes_through_its_own_proxy() {
    if !Tinyproxy::installed() {
        return;
    }
    let whatsapp = fake_whatsapp().await;
    let socks = Socks5Proxy::start(None, VIA_SOCKS).await;
    let socks_auth = Socks5Proxy::start(Some((USER, PASSWORD)), VIA_SOCKS_AUTH).await;
    let tinyproxy = Tinyproxy::start(Some((USER, PASSWORD)), VIA_HTTP).await;
    let dir = workspace(&whatsapp.url());
    let mut daemon = Daemon::start(dir.path()).await;

    // Four sessions, their proxies set on every surface.
    let created = daemon
        .json(&[
            "create",
            "--token",
            "socks",
            "--proxy",
            &socks.url_with("socks5h", None),
        ])
        .await;
    assert_eq!(
        created["proxy"],
        json!(socks.url_with("socks5h", None)),
        "{created}"
    );
    let created = http_post(
        &daemon,
        "/session",
        json!({"token": "socksauth", "proxy": socks_auth.url_with("socks5", Some((USER, PASSWORD)))}),
    )
    .await;
    let masked = format!("socks5://{USER}:***@{}", socks_auth.addr());
    assert_eq!(created["session"]["proxy"], json!(masked), "{created}");
    daemon.json(&["create", "--token", "http"]).await;
    daemon.json(&["create", "--token", "direct"]).await;
    // The password goes through stdin: never in the process list.
    let (code, out, err) = cli_with_stdin(
        &daemon,
        &["--json", "set-proxy", "http", "-"],
        &format!("{}\n", tinyproxy.url_with(Some((USER, PASSWORD)))),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let set: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        set["proxy"],
        json!(format!("http://{USER}:***@{}", tinyproxy.addr()))
    );
    let shown = daemon.json(&["status", "socksauth"]).await;
    assert_eq!(shown["proxy"], json!(masked));
    assert_eq!(
        daemon.json(&["status", "direct"]).await["proxy"],
        json!(null)
    );
    let (_, human, _) = daemon.cli(&["status", "http"]).await;
    assert!(
        human.contains(&format!("proxy:     http://{USER}:***@")),
        "{human}"
    );

    // Link each one, let the server drop its first login, and wait for the reconnect.
    let tokens = ["socks", "socksauth", "http", "direct"];
    let mut accounts = BTreeMap::new();
    for token in tokens {
        let (code, out, err) = daemon.cli(&["start", token]).await;
        assert_eq!(code, 0, "{token}: {out}{err}");
        let status = daemon.json(&["status", token]).await;
        let jid = status["jid"].as_str().unwrap().to_owned();
        let phone = jid.split([':', '@']).next().unwrap().to_owned();
        accounts.insert(token, phone);
    }
    let connections = |account: &str, n: usize| {
        let account = account.to_owned();
        move |s: &warden_fakewa::Snapshot| {
            s.connections_for(&account)
                .iter()
                .filter(|c| c.client.is_some())
                .count()
                >= n
        }
    };
    // The registration, the login the server dropped, and the login after it.
    for phone in accounts.values() {
        whatsapp
            .recorder()
            .wait_until(WITHIN, connections(phone, 3))
            .await
            .unwrap_or_else(|_| panic!("{phone}: {:?}", peers_by_account(&whatsapp)));
    }
    for token in tokens {
        until(&daemon.socket, token, |s| s.state == "connected").await;
    }

    // kill -9 and a new daemon: the proxies are in the session records, and used again.
    daemon.child.start_kill().unwrap();
    daemon.child.wait().await.unwrap();
    let daemon = Daemon::start(dir.path()).await;
    for phone in accounts.values() {
        whatsapp
            .recorder()
            .wait_until(WITHIN, connections(phone, 4))
            .await
            .unwrap_or_else(|_| panic!("{phone}: {:?}", peers_by_account(&whatsapp)));
    }
    for token in tokens {
        until(&daemon.socket, token, |s| s.state == "connected").await;
    }
    assert_eq!(
        daemon.json(&["status", "socksauth"]).await["proxy"],
        json!(masked),
        "the proxy survived the restart"
    );

    // Every connection of each account came from its own proxy; the direct one from none.
    let peers = peers_by_account(&whatsapp);
    for (token, ip) in [
        ("socks", VIA_SOCKS),
        ("socksauth", VIA_SOCKS_AUTH),
        ("http", VIA_HTTP),
        ("direct", DIRECT),
    ] {
        let seen = &peers[&accounts[token]];
        assert!(seen.len() >= 4, "{token}: {seen:?}");
        assert!(
            seen.iter().all(|peer| *peer == IpAddr::V4(ip)),
            "{token} connected from {seen:?}, not only {ip}"
        );
    }
    // And each proxy carried exactly its session's connections, to the fake server.
    let target = whatsapp.addr().to_string();
    for (proxy, token, user) in [
        (&socks, "socks", None),
        (&socks_auth, "socksauth", Some(USER.to_owned())),
    ] {
        let carried = proxy.connections();
        assert_eq!(carried.len(), peers[&accounts[token]].len(), "{carried:?}");
        assert!(
            carried.iter().all(|c| c.target == target && c.user == user),
            "{carried:?}"
        );
    }
    assert_eq!(tinyproxy.connects(), peers[&accounts["http"]].len());
    assert!(
        tinyproxy
            .connect_requests()
            .iter()
            .all(|request| *request == target),
        "{:?}",
        tinyproxy.connect_requests()
    );

    // The password is in no log and no answer; the database holding it is mode 0600.
    for place in ["logs", "run"] {
        let text = all_text_under(&dir.path().join(place));
        assert!(!text.contains(PASSWORD), "the password is in {place}/");
    }
    let list = daemon.json(&["sessions"]).await;
    assert!(!list.to_string().contains(PASSWORD), "{list}");
    let db = dir.path().join("sessions/warden.db");
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", db.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_a_dead_proxy_fails_the_attempt_with_its_reason() {
    if !Tinyproxy::installed() {
        return;
    }
    let whatsapp = fake_whatsapp().await;
    let socks = Socks5Proxy::start(Some((USER, PASSWORD)), VIA_SOCKS).await;
    let tinyproxy = Tinyproxy::start(Some((USER, PASSWORD)), VIA_HTTP).await;
    // A dead proxy: nothing listens on its port.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_addr = refused.local_addr().unwrap();
    drop(refused);
    // A silent one: it accepts, then never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let silent_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let dir = workspace(&whatsapp.url());
    let mut daemon = Daemon::start(dir.path()).await;

    let wrong = "wrong-Pa55";
    let cases = [
        (
            "socks_wrong",
            socks.url_with("socks5", Some((USER, wrong))),
            "proxy_auth_failed",
        ),
        (
            "socks_none",
            socks.url_with("socks5", None),
            "proxy_auth_failed",
        ),
        (
            "http_wrong",
            tinyproxy.url_with(Some((USER, wrong))),
            "proxy_auth_failed",
        ),
        (
            "refused",
            format!("socks5://{refused_addr}"),
            "proxy_unreachable",
        ),
        (
            "silent",
            format!("http://{silent_addr}"),
            "proxy_unreachable",
        ),
    ];
    for (token, proxy, _) in &cases {
        daemon
            .json(&["create", "--token", token, "--proxy", proxy])
            .await;
        daemon.json(&["start", token, "--no-wait"]).await;
    }
    for (token, _, code) in &cases {
        let failed = until(&daemon.socket, token, |s| {
            s.reason
                .as_deref()
                .is_some_and(|r| r.starts_with(code) || r.contains(&format!("last: {code}")))
        })
        .await;
        let reason = failed.reason.unwrap();
        assert!(!reason.contains(wrong), "{token}: {reason}");
        // A connect failure for the restart policy: retried with backoff, then parked.
        assert!(
            ["backing_off", "connecting", "queued", "failed"].contains(&failed.state.as_str()),
            "{token}: {reason}"
        );
        match *token {
            "refused" => assert!(reason.contains("cannot connect"), "{reason}"),
            // Given up at the connect timeout (3 s here), not waited on for ever.
            "silent" => assert!(reason.contains("no tunnel within 3s"), "{reason}"),
            "socks_none" => assert!(reason.contains("none is set"), "{reason}"),
            _ => assert!(reason.contains("refused the user or password"), "{reason}"),
        }
    }
    assert!(
        socks.auth_failures() >= 1,
        "the SOCKS5 proxy saw the wrong password"
    );
    assert!(
        whatsapp.recorder().snapshot().connections().is_empty(),
        "nothing reached WhatsApp: {:?}",
        whatsapp.recorder().snapshot().connections()
    );

    // Reconnecting at once is refused within the restart cooldown (30 s here, counted from
    // the policy's last attempt), and then nothing is saved.
    let elsewhere = "socks5://127.0.0.9:1080";
    let (code, _, err) = daemon
        .cli(&["set-proxy", "socks_wrong", elsewhere, "--reconnect"])
        .await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("cooling down"), "{err}");
    let kept = daemon.json(&["status", "socks_wrong"]).await;
    assert_eq!(
        kept["proxy"],
        json!(format!("socks5://{USER}:***@{}", socks.addr()))
    );

    // Fixed, and started again: it connects through the proxy.
    daemon.json(&["stop", "socks_wrong"]).await;
    let fixed = daemon
        .json(&[
            "set-proxy",
            "socks_wrong",
            &socks.url_with("socks5", Some((USER, PASSWORD))),
        ])
        .await;
    assert_eq!(fixed["state"], json!("stopped"));
    let (code, out, err) = daemon.cli(&["start", "socks_wrong"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let peers = peers_by_account(&whatsapp);
    assert!(!peers.is_empty());
    assert!(
        peers
            .values()
            .flatten()
            .all(|peer| *peer == IpAddr::V4(VIA_SOCKS)),
        "{peers:?}"
    );
    daemon.log_line("Session connected successfully").await;
    silent_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_proxy_is_refused_and_nothing_is_saved() {
    let whatsapp = fake_whatsapp().await;
    let dir = workspace(&whatsapp.url());
    let daemon = Daemon::start(dir.path()).await;
    daemon.json(&["create", "--token", "kept"]).await;

    for bad in [
        "socks4://127.0.0.1:1080",
        "https://proxy:443",
        "socks5://127.0.0.1:99999",
        "http://user:pw@proxy:80/path",
        "127.0.0.1:1080",
    ] {
        // On create: no session is made.
        let (code, _, err) = daemon
            .cli(&["create", "--token", "bad", "--proxy", bad])
            .await;
        assert_eq!(code, 4, "{bad}: {err}");
        assert!(err.contains("invalid request"), "{bad}: {err}");
        assert!(!err.contains("pw"), "{err}");
        let (code, _, _) = daemon.cli(&["status", "bad"]).await;
        assert_eq!(code, 3, "{bad}: no session was created");
        // On set-proxy: the session keeps what it had.
        let (code, _, err) = daemon.cli(&["set-proxy", "kept", bad]).await;
        assert_eq!(code, 4, "{bad}: {err}");
        // Over HTTP: 400, nothing changed.
        let answer = http_post(&daemon, "/session/proxy/kept", json!({"proxy": bad})).await;
        assert_eq!(answer["code"], json!("bad_request"), "{answer}");
    }
    assert_eq!(daemon.json(&["status", "kept"]).await["proxy"], json!(null));
    let answer = http_post(
        &daemon,
        "/session/proxy/kept",
        json!({"proxy": "socks5h://10.1.2.3:1080", "proxi": 1}),
    )
    .await;
    assert_eq!(
        answer["code"],
        json!("bad_request"),
        "unknown fields: {answer}"
    );

    // Set, shown, then cleared; each answer comes after the change is committed.
    let set = http_post(
        &daemon,
        "/session/proxy/kept",
        json!({"proxy": "socks5h://10.1.2.3:1080"}),
    )
    .await;
    assert_eq!(set["session"]["proxy"], json!("socks5h://10.1.2.3:1080"));
    let cleared = daemon.json(&["set-proxy", "kept", "--clear"]).await;
    assert_eq!(cleared["proxy"], json!(null));
    let (code, _, err) = daemon.cli(&["set-proxy", "nobody", "--clear"]).await;
    assert_eq!(code, 3, "an unknown session: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_without_a_proxy_of_their_own_use_the_configured_default() {
    let whatsapp = fake_whatsapp().await;
    let default = Socks5Proxy::start(Some((USER, PASSWORD)), VIA_SOCKS_AUTH).await;
    let own = Socks5Proxy::start(None, VIA_SOCKS).await;
    let dir = workspace(&whatsapp.url());
    // `[whatsapp]` is the last table of the test configuration.
    let config = dir.path().join("daemon.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += &format!(
        "proxy = \"{}\"\n",
        default.url_with("socks5", Some((USER, PASSWORD)))
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(dir.path()).await;
    assert!(
        !daemon.startup.join("\n").contains(PASSWORD),
        "the startup log shows no password"
    );

    daemon.json(&["create", "--token", "plain"]).await;
    daemon
        .json(&["create", "--token", "own", "--proxy", &own.url()])
        .await;
    // The session's own setting is what status shows: none for `plain`.
    assert_eq!(
        daemon.json(&["status", "plain"]).await["proxy"],
        json!(null)
    );
    let mut accounts = BTreeMap::new();
    for token in ["plain", "own"] {
        let (code, out, err) = daemon.cli(&["start", token]).await;
        assert_eq!(code, 0, "{token}: {out}{err}");
        let jid = daemon.json(&["status", token]).await["jid"]
            .as_str()
            .unwrap()
            .to_owned();
        accounts.insert(token, jid.split([':', '@']).next().unwrap().to_owned());
    }
    let peers = peers_by_account(&whatsapp);
    for (token, ip) in [("plain", VIA_SOCKS_AUTH), ("own", VIA_SOCKS)] {
        let seen = &peers[&accounts[token]];
        assert!(
            !seen.is_empty() && seen.iter().all(|peer| *peer == IpAddr::V4(ip)),
            "{token}: {seen:?}"
        );
    }
    assert!(
        default
            .connections()
            .iter()
            .all(|c| c.user.as_deref() == Some(USER))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_version_looked_up_the_lookup_goes_through_the_proxy_and_gives_up_too() {
    let whatsapp = fake_whatsapp().await;
    // A silent HTTP proxy that reports the first line each client sent, and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let silent_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            let lines_tx = lines_tx.clone();
            held.push(tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(socket);
                let mut line = String::new();
                use tokio::io::AsyncBufReadExt;
                if reader.read_line(&mut line).await.is_ok() {
                    let _ = lines_tx.send(line.trim().to_owned());
                }
                std::future::pending::<()>().await;
            }));
        }
    });
    let dir = workspace(&whatsapp.url());
    // No pinned version: wa-rs looks it up over HTTPS as it connects, through the proxy.
    let daemon = Daemon::start_with(dir.path(), &[("WARDEN_WHATSAPP_VERSION", "")]).await;
    daemon
        .json(&[
            "create",
            "--token",
            "s",
            "--proxy",
            &format!("http://{silent_addr}"),
        ])
        .await;
    daemon.json(&["start", "s", "--no-wait"]).await;
    let failed = until(&daemon.socket, "s", |s| {
        s.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("proxy_unreachable"))
    })
    .await;
    assert!(
        failed.reason.unwrap().contains("no tunnel within 3s"),
        "the attempt ended at the connect timeout"
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = tokio::time::timeout(WITHIN, lines.recv())
            .await
            .expect("both connections reached the proxy")
            .unwrap();
        seen.push(line);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            format!("CONNECT {} HTTP/1.1", whatsapp.addr()),
            "CONNECT web.whatsapp.com:443 HTTP/1.1".to_owned(),
        ],
        "the WebSocket and the version lookup both went to the session's proxy"
    );
    assert!(whatsapp.recorder().snapshot().connections().is_empty());
    silent_task.abort();
}
