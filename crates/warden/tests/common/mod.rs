//! What the daemon's end-to-end tests share: a fake WhatsApp server on loopback, a workspace
//! with a daemon.toml pointing at it, and the real `warden` binary started on that workspace.
#![allow(dead_code)]

pub mod proxies;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use warden_fakewa::{FakeServer, PairSpec, Plan, QrSpec, Scenario, Script, ServerConfig, Step};

pub const BIN: &str = env!("CARGO_BIN_EXE_warden");
pub const PHONE: &str = "15551234567";

/// The registration the fake server plays by default: two QR codes, "scanned" after half a
/// second.
pub fn pairing() -> Scenario {
    Scenario::new([
        Step::Qr(QrSpec::new(
            2,
            Duration::from_secs(20),
            Duration::from_secs(10),
        )),
        Step::wait(Duration::from_millis(500)),
        Step::Pair(PairSpec::phone(PHONE)),
    ])
}

/// Every registration shows one QR code, is "scanned" `scan_after` later, and pairs the next
/// account of the server's pool (restarting 20 ms after the pairing, as WhatsApp's 515 does).
pub fn pair_any(scan_after: Duration) -> Plan {
    Plan::always(Scenario::new([
        Step::Qr(QrSpec::new(
            1,
            Duration::from_secs(30),
            Duration::from_secs(30),
        )),
        Step::wait(scan_after),
        Step::Pair(PairSpec {
            restart_after: Duration::from_millis(20),
            ..PairSpec::default()
        }),
    ]))
}

/// A fake WhatsApp that registers with `registration` and accepts logins.
pub async fn fake_whatsapp_with(registration: Plan) -> FakeServer {
    let script = Script::default()
        .with_registration(registration)
        .with_login(Plan::always(Scenario::login()));
    FakeServer::start(ServerConfig::with_script(script))
        .await
        .unwrap()
}

/// A fake WhatsApp that shows two QR codes, "scans" after half a second, and accepts logins.
pub async fn fake_whatsapp() -> FakeServer {
    fake_whatsapp_with(Plan::always(pairing())).await
}

/// A folder with a daemon.toml pointing at `whatsapp_url`.
pub fn workspace(whatsapp_url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[daemon]
sessions_dir = "sessions"
socket = "run/warden.sock"
log_dir = "logs"
log_level = "info,warden_whatsapp=debug"
shutdown_timeout = "5s"
close_timeout = "2s"

[policy]
backoff_base = "200ms"
jitter = 0.0
restart_cooldown = "30s"

[admission]
per_second = 100.0
burst = 100

[http]
bind = "127.0.0.1:0"

[whatsapp]
url = "{whatsapp_url}"
version = "2.3000.1027868167"
connect_timeout = "3s"
liveness_timeout = "30s"
"#
    );
    std::fs::write(dir.path().join("daemon.toml"), config).unwrap();
    dir
}

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    /// Where the HTTP gateway listens.
    pub http: std::net::SocketAddr,
    /// The daemon's stderr, line by line, from the first line after it became ready.
    pub log: mpsc::UnboundedReceiver<String>,
    /// Its stderr up to and including the "warden is ready" line.
    pub startup: Vec<String>,
}

impl Daemon {
    /// Starts `warden serve` in `dir` and waits until it says it is ready.
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[]).await
    }

    /// Same, with extra environment variables.
    pub async fn start_with(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_under(dir, &[], env).await
    }

    /// Same, started through `wrapper` (e.g. `["prlimit", "--nofile=400:400", "--"]`), which
    /// must exec the daemon (so the child is the daemon itself).
    pub async fn start_under(dir: &Path, wrapper: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(["serve", "--config"])
            .arg(dir.join("daemon.toml"))
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, mut log) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        let mut startup = Vec::new();
        let ready = async {
            let mut http = None;
            while let Some(line) = log.recv().await {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    http = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                }
                let ready = line.contains("warden is ready");
                startup.push(line);
                if ready {
                    return http;
                }
            }
            None
        };
        let http = tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "the daemon became ready with its HTTP gateway; it said:\n{}",
                    startup.join("\n")
                )
            });
        Self {
            child,
            socket: dir.join("run/warden.sock"),
            http,
            log,
            startup,
        }
    }

    /// The startup line containing `needle`.
    pub fn startup_line(&self, needle: &str) -> &str {
        self.startup
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| {
                panic!(
                    "no startup line with {needle:?} in:\n{}",
                    self.startup.join("\n")
                )
            })
    }

    /// Runs the CLI against this daemon.
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The CLI's JSON answer to `args`.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (code, out, err) = self.cli(&all).await;
        assert_eq!(code, 0, "warden {args:?}: {out} {err}");
        serde_json::from_str(out.trim()).unwrap()
    }

    /// Waits until the daemon's log has a line containing `needle`.
    pub async fn log_line(&mut self, needle: &str) -> String {
        let found = async {
            while let Some(line) = self.log.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(30), found)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no log line with {needle:?}"))
    }
}

/// The session's view once `done` holds: checked now, then on each of its events (up to 60 s).
pub async fn until(
    socket: &Path,
    token: &str,
    done: impl Fn(&warden_control::protocol::SessionView) -> bool,
) -> warden_control::protocol::SessionView {
    watch_until(socket, token, false, done).await
}

/// Same, and a QR code shown for the session meanwhile fails the test.
pub async fn until_without_qr(
    socket: &Path,
    token: &str,
    done: impl Fn(&warden_control::protocol::SessionView) -> bool,
) -> warden_control::protocol::SessionView {
    watch_until(socket, token, true, done).await
}

async fn watch_until(
    socket: &Path,
    token: &str,
    refuse_qr: bool,
    done: impl Fn(&warden_control::protocol::SessionView) -> bool,
) -> warden_control::protocol::SessionView {
    use warden_control::{ControlClient, EventLine, Op};
    let mut watch = ControlClient::connect(socket).await.unwrap();
    let reply = watch
        .request(&Op::Watch {
            token: Some(token.into()),
        })
        .await
        .unwrap();
    assert!(reply.ok, "{reply:?}");
    let mut control = ControlClient::connect(socket).await.unwrap();
    let now: warden_control::protocol::SessionView = control
        .call(&Op::Status {
            token: token.into(),
        })
        .await
        .unwrap();
    if done(&now) {
        return now;
    }
    let wait = async {
        loop {
            match watch.next_event().await.unwrap() {
                Some(EventLine::Session { session }) if done(&session) => return *session,
                Some(EventLine::Qr { .. }) if refuse_qr => {
                    panic!("{token} shows a QR code again")
                }
                Some(_) => continue,
                None => panic!("the daemon hung up"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("{token} never got there; last seen {now:?}"))
}

/// One HTTP/1.1 request the way curl sends it; returns the status and the JSON body.
pub async fn curl(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    curl_with(addr, method, path, body, "").await
}

/// Same, with extra header lines (each ending in `\r\n`).
pub async fn curl_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &str,
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:3000\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nConnection: close\r\n"
    );
    request += headers;
    if let Some(body) = body {
        request += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    } else {
        request += "\r\n";
    }
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text[9..12].parse().unwrap();
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    // Chunked or not, the JSON object is the part between the outer braces.
    let json = body
        .find('{')
        .and_then(|start| body.rfind('}').map(|end| &body[start..=end]))
        .map(|j| serde_json::from_str(j).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    (status, json)
}

/// An HTTP event stream (`GET /events`), read as it comes.
pub struct EventStream {
    lines: tokio::io::Lines<BufReader<tokio::net::TcpStream>>,
}

/// Opens `path` as an event stream with extra header lines (each ending in `\r\n`): its
/// status, and the stream when it is 200 (else the JSON error body).
pub async fn event_stream(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &str,
) -> Result<EventStream, (u16, Value)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // HTTP/1.0: the body is not chunked, it ends with the connection.
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost:3000\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let status_line = lines.next_line().await.unwrap().expect("a status line");
    let status: u16 = status_line[9..12].parse().unwrap();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.is_empty() {
            break;
        }
    }
    if status != 200 {
        let mut body = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            body.push_str(&line);
        }
        return Err((status, serde_json::from_str(&body).unwrap_or(Value::Null)));
    }
    Ok(EventStream { lines })
}

impl EventStream {
    /// The next event's name and data (keep-alives skipped); `None` once the stream ended.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        let mut name = String::from("message");
        let mut data = String::new();
        loop {
            let line = self.lines.next_line().await.unwrap()?;
            if line.is_empty() {
                if !data.is_empty() {
                    let data = serde_json::from_str(&data).expect("event data is JSON");
                    return Some((name, data));
                }
                name = String::from("message");
            } else if let Some(value) = line.strip_prefix("event:") {
                name = value.trim().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            }
        }
    }

    /// The first event that `pick` takes, within `within`; panics with the events skipped when
    /// none came or the stream ended.
    pub async fn until<T>(
        &mut self,
        within: Duration,
        pick: impl Fn(&str, &Value) -> Option<T>,
    ) -> T {
        let mut skipped = Vec::new();
        let wait = async {
            while let Some((name, data)) = self.next().await {
                if let Some(found) = pick(&name, &data) {
                    return Ok(found);
                }
                skipped.push(format!("{name}: {data}"));
            }
            Err("the stream ended")
        };
        match tokio::time::timeout(within, wait).await {
            Ok(Ok(found)) => found,
            Ok(Err(why)) => panic!("{why}; skipped {skipped:?}"),
            Err(_) => panic!("not seen in time; skipped {skipped:?}"),
        }
    }
}
