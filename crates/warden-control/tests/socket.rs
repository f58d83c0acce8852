//! The control socket, end to end over a real Unix socket, in front of a supervisor driven by
//! the scripted link.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use warden_control::protocol::{ListView, OutgoingView, SessionView};
use warden_control::{BindError, ControlClient, ControlServer, EventLine, Op, ServerConfig};
use warden_core::scripted::{Script, ScriptedLink};
use warden_core::{DisconnectReason, Supervisor, SupervisorConfig};

const JID: &str = "15551234567@s.whatsapp.net";

struct Daemon {
    socket: PathBuf,
    link: ScriptedLink,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn daemon(default: Script, event_capacity: usize) -> Daemon {
    daemon_with(default, event_capacity, |_| {}).await
}

async fn daemon_with(
    default: Script,
    event_capacity: usize,
    adjust: impl FnOnce(&mut SupervisorConfig),
) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let link = ScriptedLink::new(default);
    let mut config = SupervisorConfig::new(dir.path().join("sessions"));
    config.event_capacity = event_capacity;
    config.policy.jitter = 0.0;
    config.policy.backoff_base = Duration::from_millis(20);
    adjust(&mut config);
    let (supervisor, _) = Supervisor::start(config, Arc::new(link.clone()))
        .await
        .unwrap();
    let socket = dir.path().join("run").join("warden.sock");
    let mut server_config = ServerConfig::new(&socket);
    server_config.max_line_bytes = 1024;
    server_config.write_timeout = Duration::from_millis(500);
    let server = ControlServer::bind(server_config).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        server
            .run(supervisor.clone(), async {
                let _ = stopped.await;
            })
            .await;
        supervisor.shutdown().await.unwrap();
    });
    Daemon {
        socket,
        link,
        stop: Some(stop),
        served,
        _dir: dir,
    }
}

impl Daemon {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.served).await.unwrap();
        assert!(
            !self.socket.exists(),
            "the socket file is removed on shutdown"
        );
    }
}

/// A raw line-level connection.
struct Raw {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Raw {
    async fn connect(path: &PathBuf) -> Self {
        let (read, writer) = UnixStream::connect(path).await.unwrap().into_split();
        Self {
            lines: BufReader::new(read).lines(),
            writer,
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Value {
        self.writer.write_all(bytes).await.unwrap();
        self.writer.write_all(b"\n").await.unwrap();
        self.read().await
    }

    async fn read(&mut self) -> Value {
        let line = self.lines.next_line().await.unwrap().expect("a reply line");
        serde_json::from_str(&line).unwrap()
    }
}

#[tokio::test]
async fn operations_round_trip_over_the_socket() {
    let d = daemon(Script::login(JID), 1024).await;
    let mut client = ControlClient::connect(&d.socket).await.unwrap();
    let created: SessionView = client
        .call(&Op::Create {
            name: Some("Shop".into()),
            token: Some("shop1".into()),
            proxy: None,
        })
        .await
        .unwrap();
    assert_eq!(
        (created.token.as_str(), created.state.as_str()),
        ("shop1", "stopped")
    );

    // Watch on a second connection while starting on the first.
    let mut watcher = ControlClient::connect(&d.socket).await.unwrap();
    let reply = watcher
        .request(&Op::Watch {
            token: Some("shop1".into()),
        })
        .await
        .unwrap();
    assert_eq!(reply.result, Some(json!({"watching": "shop1"})));
    match watcher.next_event().await.unwrap() {
        Some(EventLine::Session { session }) => assert_eq!(session.state, "stopped"),
        other => panic!("current state first, got {other:?}"),
    }
    let _: SessionView = client
        .call(&Op::Start {
            token: "shop1".into(),
            phone: None,
        })
        .await
        .unwrap();
    loop {
        match watcher.next_event().await.unwrap() {
            Some(EventLine::Session { session }) if session.state == "connected" => {
                assert_eq!(session.jid.as_deref(), Some(JID));
                break;
            }
            Some(_) => {}
            None => panic!("watch ended"),
        }
    }
    let list: ListView = client.call(&Op::List {}).await.unwrap();
    assert_eq!(list.counts.get("connected"), Some(&1));
    let err = client
        .call::<SessionView>(&Op::Restart {
            token: "shop1".into(),
            force: false,
        })
        .await
        .unwrap_err();
    match err {
        warden_control::ClientError::Refused(body) => {
            assert_eq!(body.code, warden_control::ErrorCode::Cooldown);
            assert!(body.retry_after_secs.unwrap() >= 29);
        }
        other => panic!("{other}"),
    }
    let send = Op::SendText {
        token: "shop1".into(),
        to: "15550001111".into(),
        text: "hello".into(),
        key: Some("order-1".into()),
    };
    let sent: OutgoingView = client.call(&send).await.unwrap();
    assert!(sent.message_id.starts_with("3EB0"), "{sent:?}");
    assert_eq!(
        (sent.key.as_str(), sent.to.as_str()),
        ("order-1", "15550001111@s.whatsapp.net")
    );
    let again: OutgoingView = client.call(&send).await.unwrap();
    assert_eq!(
        again.message_id, sent.message_id,
        "the key names the message"
    );
    let status: OutgoingView = client
        .call(&Op::MessageStatus {
            token: "shop1".into(),
            message: "order-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(status.message_id, sent.message_id);
    let missing = client
        .call::<OutgoingView>(&Op::MessageStatus {
            token: "shop1".into(),
            message: "nope".into(),
        })
        .await
        .unwrap_err();
    match missing {
        warden_control::ClientError::Refused(body) => {
            assert_eq!(body.code, warden_control::ErrorCode::NotFound)
        }
        other => panic!("{other}"),
    }
    let health: warden_control::protocol::HealthView = client.call(&Op::Health {}).await.unwrap();
    assert_eq!((health.status.as_str(), health.sessions), ("ok", 1));
    d.stop().await;
}

#[tokio::test]
async fn hostile_input_gets_clear_errors_and_the_connection_stays_usable() {
    let d = daemon(Script::login(JID), 1024).await;
    let mut raw = Raw::connect(&d.socket).await;
    let long = vec![b'x'; 5000];
    let cases: Vec<(&[u8], &str, &str)> = vec![
        (b"{not json", "bad_request", "malformed JSON"),
        (b"[]", "bad_request", "JSON object"),
        (b"42", "bad_request", "JSON object"),
        (b"{\"id\":1}", "bad_request", "missing \"op\""),
        (b"{\"id\":2,\"op\":\"rm -rf\"}", "bad_request", "unknown op"),
        (
            b"{\"id\":3,\"op\":\"status\"}",
            "bad_request",
            "missing field `token`",
        ),
        (
            b"{\"id\":4,\"op\":\"status\",\"token\":[1]}",
            "bad_request",
            "invalid status",
        ),
        (
            b"{\"id\":5,\"op\":\"status\",\"token\":\"../etc\"}",
            "invalid_token",
            "letters, digits",
        ),
        (
            b"{\"id\":6,\"op\":\"create\",\"token\":\"a/b\"}",
            "invalid_token",
            "letters, digits",
        ),
        (
            b"{\"id\":7,\"op\":\"delete\",\"token\":\"..\"}",
            "invalid_token",
            "letters, digits",
        ),
        (
            b"{\"id\":8,\"op\":\"stop\",\"token\":\"ghost\"}",
            "not_found",
            "no session ghost",
        ),
        (&long, "bad_request", "longer than 1024 bytes"),
        (b"\xff\xfe{}", "bad_request", "not UTF-8"),
        (
            b"{\"id\":9,\"op\":\"list\",\"x\":true}",
            "bad_request",
            "unknown field",
        ),
        (
            b"{\"id\":10,\"op\":\"send_text\",\"token\":\"ghost\",\"to\":\"1\"}",
            "bad_request",
            "missing field `text`",
        ),
    ];
    for (input, code, fragment) in cases {
        let reply = raw.send(input).await;
        assert_eq!(reply["ok"], json!(false), "{reply}");
        assert_eq!(reply["error"]["code"], json!(code), "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
    // Still usable, and the id is echoed.
    let reply = raw.send(br#"{"id":"last","op":"list"}"#).await;
    assert_eq!(
        (reply["id"].clone(), reply["ok"].clone()),
        (json!("last"), json!(true))
    );
    // Nothing was written outside the sessions folder.
    let root = d.socket.parent().unwrap().parent().unwrap().to_owned();
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["run", "sessions"]);
    d.stop().await;
}

#[tokio::test]
async fn the_socket_is_not_world_writable_and_one_daemon_owns_it() {
    let d = daemon(Script::new(), 1024).await;
    let meta = std::fs::symlink_metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // A second server on the same path refuses to start.
    match ControlServer::bind(ServerConfig::new(&d.socket)).await {
        Err(BindError::AlreadyRunning(path)) => assert_eq!(path, d.socket),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("two daemons on one socket"),
    }
    // A world-writable mode is refused outright.
    let mut open = ServerConfig::new(d.socket.with_file_name("other.sock"));
    open.mode = 0o666;
    assert!(matches!(
        ControlServer::bind(open).await,
        Err(BindError::WorldWritable(0o666))
    ));
    // Something that is not a socket is never replaced.
    let file = d.socket.with_file_name("file.sock");
    std::fs::write(&file, "keep me").unwrap();
    assert!(matches!(
        ControlServer::bind(ServerConfig::new(&file)).await,
        Err(BindError::NotASocket(_))
    ));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    d.stop().await;
}

#[tokio::test]
async fn a_stale_socket_from_a_dead_daemon_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.sock");
    // A socket nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = ControlServer::bind(ServerConfig::new(&path)).await.unwrap();
    assert!(UnixStream::connect(&path).await.is_ok());
    drop(server);
    assert!(!path.exists());
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_disconnected() {
    // Sessions that flap a hundred times each flood the event stream; a watcher that never
    // reads fills its socket and must be dropped instead of holding the daemon back.
    let flap = Script::new()
        .connected(JID)
        .disconnect(DisconnectReason::ConnectionLost);
    let d = daemon_with(flap, 64, |config| {
        config.policy.max_attempts = 100;
        config.policy.backoff_base = Duration::from_millis(1);
        config.policy.backoff_cap = Duration::from_millis(1);
        config.admission.per_second = 1e9;
        config.admission.burst = 1_000_000;
    })
    .await;
    let mut slow = Raw::connect(&d.socket).await;
    let reply = slow.send(br#"{"id":1,"op":"watch"}"#).await;
    assert_eq!(reply["ok"], json!(true));
    let mut client = ControlClient::connect(&d.socket).await.unwrap();
    for i in 0..20 {
        let token = format!("s{i}");
        let _: SessionView = client
            .call(&Op::Create {
                name: None,
                token: Some(token.clone()),
                proxy: None,
            })
            .await
            .unwrap();
        let _: SessionView = client
            .call(&Op::Start { token, phone: None })
            .await
            .unwrap();
    }
    // The flood ends when every session has used its attempts (polled: no event reaches a
    // client that is not watching, and a watcher would be flooded too).
    let flood_over = async {
        loop {
            let list: ListView = client.call(&Op::List {}).await.unwrap();
            if list.counts.get("failed") == Some(&20) {
                return;
            }

            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), flood_over)
        .await
        .expect("the flood ends");
    // The slow watcher's stream was cut: reading what is buffered ends at EOF instead of
    // waiting forever for more.
    let drained = async {
        let mut lines = 0usize;
        while let Ok(Some(_)) = slow.lines.next_line().await {
            lines += 1;
        }
        lines
    };
    let lines = tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("the daemon hung up on the slow watcher");
    assert!(lines > 0);
    // Everyone else is still served.
    let list: ListView = client.call(&Op::List {}).await.unwrap();
    assert_eq!(list.sessions.len(), 20);
    d.stop().await;
}

#[tokio::test]
async fn many_clients_are_served_at_once() {
    let d = daemon(Script::login(JID), 1024).await;
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..50 {
        let socket = d.socket.clone();
        clients.spawn(async move {
            let mut client = ControlClient::connect(&socket).await.unwrap();
            let token = format!("c{i}");
            let _: SessionView = client
                .call(&Op::Create {
                    name: None,
                    token: Some(token.clone()),
                    proxy: None,
                })
                .await
                .unwrap();
            let status: SessionView = client.call(&Op::Status { token }).await.unwrap();
            status.state
        });
    }
    while let Some(state) = clients.join_next().await {
        assert_eq!(state.unwrap(), "stopped");
    }
    assert_eq!(d.link.live_total(), 0);
    d.stop().await;
}

#[tokio::test]
async fn clients_beyond_max_clients_are_told_and_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let link = ScriptedLink::new(Script::login(JID));
    let config = SupervisorConfig::new(dir.path().join("sessions"));
    let (supervisor, _) = Supervisor::start(config, Arc::new(link)).await.unwrap();
    let socket = dir.path().join("warden.sock");
    let mut server_config = ServerConfig::new(&socket);
    server_config.max_clients = 2;
    let server = ControlServer::bind(server_config).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server.run(supervisor.clone(), async {
        let _ = stopped.await;
    }));
    let mut first = Raw::connect(&socket).await;
    let mut second = Raw::connect(&socket).await;
    assert_eq!(first.send(br#"{"op":"health"}"#).await["ok"], json!(true));
    assert_eq!(second.send(br#"{"op":"health"}"#).await["ok"], json!(true));
    // The third is answered without being read from, and its connection ends.
    let mut third = Raw::connect(&socket).await;
    let refused = third.read().await;
    assert_eq!(refused["error"]["code"], json!("unavailable"), "{refused}");
    assert!(third.lines.next_line().await.unwrap().is_none(), "closed");
    // A freed slot is taken by the next client.
    drop(first);
    let reply = loop {
        // Until the server has seen the first one go, the next is still refused (and closed,
        // so the write may fail): the first line says which.
        let mut next = Raw::connect(&socket).await;
        let _ = next.writer.write_all(b"{\"op\":\"health\"}\n").await;
        let reply = next.read().await;
        if reply["ok"] == json!(true) {
            break reply;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(reply["result"]["status"], json!("ok"));
    assert_eq!(second.send(br#"{"op":"health"}"#).await["ok"], json!(true));
    let _ = stop.send(());
    served.await.unwrap();
    supervisor.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_watch_of_one_session_ends_when_it_is_deleted() {
    let d = daemon(Script::login(JID), 1024).await;
    let mut client = ControlClient::connect(&d.socket).await.unwrap();
    let _: SessionView = client
        .call(&Op::Create {
            name: None,
            token: Some("gone".into()),
            proxy: None,
        })
        .await
        .unwrap();
    let mut watcher = ControlClient::connect(&d.socket).await.unwrap();
    let reply = watcher
        .request(&Op::Watch {
            token: Some("gone".into()),
        })
        .await
        .unwrap();
    assert!(reply.ok);
    let _: warden_control::protocol::DeletedView = client
        .call(&Op::Delete {
            token: "gone".into(),
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(event) = watcher.next_event().await.unwrap() {
        seen.push(event);
    }
    let n = seen.len();
    assert!(n >= 3, "{seen:?}");
    assert_eq!(
        seen[n - 2],
        EventLine::Removed {
            token: "gone".into()
        }
    );
    assert!(matches!(&seen[n - 1], EventLine::Closed { reason } if reason.contains("deleted")));
    d.stop().await;
}

#[tokio::test]
async fn history_is_followed_as_it_is_committed_and_streams_end_when_the_daemon_stops() {
    let d = daemon(Script::login(JID), 1024).await;
    let mut client = ControlClient::connect(&d.socket).await.unwrap();
    let _: SessionView = client
        .call(&Op::Create {
            name: None,
            token: Some("h1".into()),
            proxy: None,
        })
        .await
        .unwrap();
    let mut follower = ControlClient::connect(&d.socket).await.unwrap();
    let reply = follower
        .request(&Op::History {
            token: "h1".into(),
            since: None,
            limit: None,
            follow: true,
        })
        .await
        .unwrap();
    assert!(reply.ok, "{reply:?}");
    let first = reply.result.unwrap();
    assert_eq!(first["entries"][0]["data"]["to"], "stopped", "{first}");
    let mut watcher = ControlClient::connect(&d.socket).await.unwrap();
    assert!(
        watcher
            .request(&Op::Watch { token: None })
            .await
            .unwrap()
            .ok
    );

    let _: SessionView = client
        .call(&Op::Start {
            token: "h1".into(),
            phone: None,
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        match follower.next_event().await.unwrap() {
            Some(EventLine::History { token, entries }) => {
                assert_eq!(token, "h1");
                seen.extend(entries);
                if seen.iter().any(|e| e.data["to"] == "connected") {
                    break;
                }
            }
            other => panic!("history lines until connected, got {other:?}"),
        }
    }
    assert!(
        seen.iter()
            .any(|e| e.kind == "session.operation"
                && e.data == json!({"op": "start", "by": "socket"})),
        "{seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq), "{seen:?}");

    d.stop().await;
    for (name, stream) in [("history", &mut follower), ("watch", &mut watcher)] {
        let mut last = None;
        while let Some(event) = stream.next_event().await.unwrap() {
            last = Some(event);
        }
        assert!(
            matches!(&last, Some(EventLine::Closed { reason }) if reason.contains("stopping")),
            "{name} ended with {last:?}"
        );
    }
}
