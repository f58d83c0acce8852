//! `control`: request lines, decoded and dispatched by a real control server over its Unix
//! socket, in front of a supervisor on the scripted link.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use warden_control::protocol::{ErrorCode, Op, Reply, Request, RequestLine};
use warden_control::{ControlServer, ServerConfig};
use warden_core::Supervisor;

use super::{Outcome, Target, no_panic, panics};

/// Sessions that exist when the run starts (and are made again now and then).
const TOKENS: [&str; 3] = ["shop1", "t", "a"];

/// How long one reply may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// A daemon's control socket and one client connection to it.
pub struct Control {
    supervisor: Supervisor,
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    stop: Option<oneshot::Sender<()>>,
    served: u64,
    _dir: tempfile::TempDir,
}

impl Control {
    /// Starts a supervisor (every connection logs in at once) and a control server on a
    /// socket in a temporary folder, and connects to it.
    pub async fn start() -> std::io::Result<Self> {
        let (supervisor, dir) = super::scripted_supervisor().await?;
        let path = dir.path().join("warden.sock");
        let server = ControlServer::bind(ServerConfig::new(&path))
            .await
            .map_err(std::io::Error::other)?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.run(supervisor.clone(), async {
            let _ = stopped.await;
        }));
        let (read, writer) = UnixStream::connect(&path).await?.into_split();
        let control = Self {
            supervisor,
            lines: BufReader::new(read).lines(),
            writer,
            stop: Some(stop),
            served: 0,
            _dir: dir,
        };
        control.make_sessions().await;
        Ok(control)
    }

    async fn make_sessions(&self) {
        for token in TOKENS {
            let _ = self.supervisor.create(None, Some(token)).await;
        }
    }

    /// Sends one line and reads its reply line.
    async fn exchange(&mut self, line: &[u8]) -> Result<String, String> {
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .await
            .map_err(|e| format!("the daemon stopped reading: {e}"))?;
        match tokio::time::timeout(PATIENCE, self.lines.next_line()).await {
            Err(_) => Err(format!("no reply within {PATIENCE:?}")),
            Ok(Err(e)) => Err(format!("the connection broke: {e}")),
            Ok(Ok(None)) => Err("the daemon closed the connection".into()),
            Ok(Ok(Some(reply))) => Ok(reply),
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[async_trait::async_trait]
impl Target for Control {
    fn name(&self) -> &'static str {
        "control"
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"\"op\":",
            b"\"id\":",
            b"\"token\":",
            b"\"shop1\"",
            b"\"../etc\"",
            b"\"start\"",
            b"\"stop\"",
            b"\"restart\"",
            b"\"logout\"",
            b"\"delete\"",
            b"\"create\"",
            b"\"status\"",
            b"\"list\"",
            b"\"send_text\"",
            b"\"set_proxy\"",
            b"\"refresh_qr\"",
            b"\"force_cleanup\"",
            b"\"message_status\"",
            b"\"proxy\":\"socks5://u:S3cretPw@h:1\"",
            b"\"force\":true",
            b"\"to\":\"15551234567\"",
            b"\"text\":\"hi\"",
            b"\"key\":\"k1\"",
            b"\"limit\":",
            b"null",
            b"true",
            b"-1",
            b"1e999",
            b"{}",
            b"[]",
            b"\\u0000",
            b"\\ud800",
        ]
    }

    async fn run(&mut self, input: &[u8]) -> Result<Outcome, String> {
        // One request per input: a newline would make it two.
        let line: Vec<u8> = input
            .iter()
            .map(|&b| if b == b'\n' { b' ' } else { b })
            .collect();
        // The server decodes the bytes as they are: invalid UTF-8 is its own refusal.
        let Ok(text) = std::str::from_utf8(&line) else {
            return self.dispatch(&line, None).await;
        };
        let parsed = no_panic("Request::parse", || Request::parse(text))?;
        match &parsed {
            Ok(request) => {
                let again = serde_json::to_string(&RequestLine {
                    id: 1,
                    op: &request.op,
                })
                .map_err(|e| format!("an accepted request cannot be written: {e}"))?;
                let back = Request::parse(&again)
                    .map_err(|(_, e)| format!("a written request cannot be read: {e:?}"))?;
                if back.op != request.op {
                    return Err(format!(
                        "round trip changed {:?} to {:?}",
                        request.op, back.op
                    ));
                }
                if matches!(request.op, Op::Watch { .. }) {
                    // A watch turns the connection into an event stream: decoded only.
                    return Ok(Outcome::accepted("parsed:watch"));
                }
            }
            Err((_, body)) => {
                if body.code != ErrorCode::BadRequest || body.message.trim().is_empty() {
                    return Err(format!("an unclear refusal: {body:?}"));
                }
            }
        }
        if text.trim().is_empty() {
            // The server skips blank lines without a reply.
            return Ok(Outcome::refused("blank", ""));
        }
        self.dispatch(&line, parsed.ok()).await
    }

    async fn finish(&mut self) -> Result<(), String> {
        let reply = self.exchange(br#"{"id":"last","op":"health"}"#).await?;
        let reply: Reply = serde_json::from_str(&reply).map_err(|e| e.to_string())?;
        if !reply.ok {
            return Err(format!("health failed after the run: {:?}", reply.error));
        }
        Ok(())
    }
}

impl Control {
    /// Sends `line` to the server and checks its reply (against `parsed`, what decoding made
    /// of it, when it could be decoded).
    async fn dispatch(&mut self, line: &[u8], parsed: Option<Request>) -> Result<Outcome, String> {
        let before = panics();
        let reply_text = self.exchange(line).await?;
        if panics() != before {
            return Err("the daemon panicked".into());
        }
        let reply: Reply = serde_json::from_str(&reply_text)
            .map_err(|e| format!("a reply that is not a reply ({e}): {reply_text}"))?;
        self.served += 1;
        if self.served.is_multiple_of(500) {
            self.make_sessions().await;
        }
        if let Some(request) = &parsed
            && reply.id != request.id
        {
            return Err(format!(
                "the reply's id {} is not the request's {}",
                reply.id, request.id
            ));
        }
        match (reply.ok, &reply.result, &reply.error) {
            (true, Some(_), None) => {
                let op = parsed.as_ref().map_or("?", |r| r.op.name());
                Ok(Outcome::accepted(format!("ok:{op}")))
            }
            (false, None, Some(error)) if !error.message.trim().is_empty() => Ok(Outcome::refused(
                &format!("{:?}", error.code),
                &error.message,
            )),
            _ => Err(format!("a malformed reply: {reply_text}")),
        }
    }
}
