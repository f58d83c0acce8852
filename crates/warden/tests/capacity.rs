//! The daemon at its file-descriptor limit: it raises its soft limit, works out how many
//! sessions fit, refuses starts beyond that with `capacity`, and keeps answering on its socket.
//! The real binary under `prlimit` (util-linux), against the fake WhatsApp server.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use warden_fakewa::{ClientKind, FakeServer, PairSpec, Plan, QrSpec, Scenario, ServerEvent, Step};

use common::{Daemon, fake_whatsapp_with, workspace};

/// The reserve docs/operations.md documents, for `max_clients` control clients and HTTP on:
/// the process (16), the control socket (1 + max_clients), HTTP (1 + 256), a margin (64).
fn reserve(max_clients: u64) -> u64 {
    16 + (1 + max_clients) + (1 + 256) + 64
}

/// `prlimit`, or `None` (the test says so and passes) where util-linux is missing.
fn prlimit() -> Option<&'static str> {
    let found = ["/usr/bin/prlimit", "/bin/prlimit"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "prlimit (util-linux) is required in CI"
        );
        eprintln!("SKIPPED: prlimit (util-linux) is not installed");
    }
    found
}

/// Pairing with a fresh phone number per session: a QR code, "scanned" at once.
async fn fake_whatsapp() -> FakeServer {
    fake_whatsapp_with(Plan::always(Scenario::new([
        Step::Qr(QrSpec::new(
            1,
            Duration::from_secs(20),
            Duration::from_secs(10),
        )),
        Step::wait(Duration::from_millis(100)),
        Step::Pair(PairSpec::default()),
    ])))
    .await
}

fn registrations(server: &FakeServer) -> usize {
    server.recorder().snapshot().count(|r| {
        matches!(&r.event, ServerEvent::Handshake { client, .. } if matches!(client.kind, ClientKind::Registration { .. }))
    })
}

/// A raw JSON-lines connection to the control socket.
struct Socket {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Socket {
    async fn connect(path: &Path) -> Self {
        let (read, writer) = UnixStream::connect(path).await.unwrap().into_split();
        Self {
            lines: BufReader::new(read).lines(),
            writer,
        }
    }

    async fn send(&mut self, request: Value) -> Value {
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await.unwrap();
        self.read().await
    }

    async fn read(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .expect("the daemon keeps the connection open");
        serde_json::from_str(&line).unwrap()
    }

    async fn healthy(&mut self) {
        let health = self.send(json!({"op": "health"})).await;
        assert_eq!(health["result"]["status"], json!("ok"), "{health}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_log_shows_the_raised_limit_and_the_capacity() {
    let Some(prlimit) = prlimit() else { return };
    let whatsapp = fake_whatsapp().await;
    let dir = workspace(&whatsapp.url());
    let daemon = Daemon::start_under(dir.path(), &[prlimit, "--nofile=1000:4000", "--"], &[]).await;

    let raised = daemon.startup_line("file-descriptor limit");
    assert!(raised.contains("soft 1000 -> 4000 (hard 4000)"), "{raised}");
    assert!(raised.contains("INFO"), "at info: {raised}");
    let reserve = reserve(256);
    let capacity = daemon.startup_line("capacity:");
    assert!(
        capacity.contains(&format!(
            "capacity: {} live sessions (fd soft limit 4000, reserve {reserve})",
            4000 - reserve
        )),
        "{capacity}"
    );
    // The daemon really runs at the raised limit.
    let pid = daemon.child.id().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().nth(3),
        Some("4000"),
        "{open_files}"
    );

    // max_sessions, when lower, wins; the line says so.
    let mut child = daemon.child;
    child.kill().await.unwrap();
    let daemon = Daemon::start_under(
        dir.path(),
        &[prlimit, "--nofile=4000:4000", "--"],
        &[("WARDEN_DAEMON_MAX_SESSIONS", "25")],
    )
    .await;
    let capacity = daemon.startup_line("capacity:");
    assert!(
        capacity.contains("capacity: 25 live sessions") && capacity.contains("max_sessions"),
        "{capacity}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_capacity_a_start_is_refused_and_the_socket_still_answers() {
    let Some(prlimit) = prlimit() else { return };
    let whatsapp = fake_whatsapp().await;
    let dir = workspace(&whatsapp.url());
    // A limit that leaves room for exactly 4 sessions after the reserve.
    const CAPACITY: usize = 4;
    let limit = reserve(8) + CAPACITY as u64;
    let nofile = format!("--nofile={limit}:{limit}");
    let daemon = Daemon::start_under(
        dir.path(),
        &[prlimit, &nofile, "--"],
        &[("WARDEN_DAEMON_MAX_CLIENTS", "8")],
    )
    .await;
    let line = daemon.startup_line("capacity:");
    assert!(
        line.contains(&format!("capacity: {CAPACITY} live sessions")),
        "{line}"
    );

    let mut socket = Socket::connect(&daemon.socket).await;
    let tokens: Vec<String> = (0..CAPACITY + 5).map(|i| format!("s{i}")).collect();
    for token in &tokens {
        let created = socket.send(json!({"op": "create", "token": token})).await;
        assert_eq!(created["ok"], json!(true), "{created}");
    }
    let mut watch = Socket::connect(&daemon.socket).await;
    let watching = watch.send(json!({"op": "watch"})).await;
    assert_eq!(watching["ok"], json!(true), "{watching}");

    let (mut started, mut refused) = (Vec::new(), Vec::new());
    for token in &tokens {
        let reply = socket.send(json!({"op": "start", "token": token})).await;
        if reply["ok"] == json!(true) {
            started.push(token.clone());
        } else {
            assert_eq!(reply["error"]["code"], json!("capacity"), "{reply}");
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(message.contains(&CAPACITY.to_string()), "{message}");
            refused.push(token.clone());
        }
        socket.healthy().await;
    }
    assert_eq!(started, tokens[..CAPACITY], "the first {CAPACITY} start");
    assert_eq!(refused.len(), 5);

    // The started ones link and connect; the socket answers all along.
    let mut connected = std::collections::BTreeSet::new();
    while connected.len() < CAPACITY {
        let event = watch.read().await;
        if event["event"] == json!("session") && event["session"]["state"] == json!("connected") {
            let token = event["session"]["token"].as_str().unwrap().to_owned();
            assert!(started.contains(&token), "{event}");
            connected.insert(token);
            socket.healthy().await;
        }
    }
    // Nothing was opened for the refused ones; they are still stopped, and still refused.
    assert_eq!(registrations(&whatsapp), CAPACITY);
    for token in &refused {
        let status = socket.send(json!({"op": "status", "token": token})).await;
        assert_eq!(status["result"]["state"], json!("stopped"), "{status}");
    }
    let again = socket
        .send(json!({"op": "start", "token": refused[0]}))
        .await;
    assert_eq!(again["error"]["code"], json!("capacity"), "{again}");

    // The CLI says so, with its own exit code.
    let (code, out, err) = daemon.cli(&["start", &refused[1], "--no-wait"]).await;
    assert_eq!(code, 7, "{out}\n{err}");
    assert!(err.contains("capacity"), "{err}");

    // A stopped session makes room for another.
    let stopped = socket
        .send(json!({"op": "stop", "token": started[0]}))
        .await;
    assert_eq!(stopped["ok"], json!(true), "{stopped}");
    let now = socket
        .send(json!({"op": "start", "token": refused[2]}))
        .await;
    assert_eq!(now["ok"], json!(true), "{now}");
    socket.healthy().await;
    let list = socket.send(json!({"op": "list"})).await;
    assert_eq!(list["ok"], json!(true), "{list}");
}
