//! `http`: raw HTTP/1.1 requests (method, path, query, headers, body and framing as the
//! mutator leaves them) to the real gateway over TCP, one connection each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use warden_core::Supervisor;
use warden_http::{HttpConfig, Metrics, ServeOptions};

use super::{Outcome, Target, panics};

/// How long one exchange may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// A gateway in front of a supervisor on the scripted link.
pub struct Http {
    addr: SocketAddr,
    supervisor: Supervisor,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Http {
    /// Starts a supervisor (every connection logs in at once) and the gateway on a free
    /// loopback port, with sessions `shop1` and `t`.
    pub async fn start() -> std::io::Result<Self> {
        let (supervisor, dir) = super::scripted_supervisor().await?;
        for token in ["shop1", "t"] {
            let _ = supervisor.create(None, Some(token)).await;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let http = HttpConfig {
            enabled: true,
            bind: addr,
            ..HttpConfig::default()
        };
        let options = ServeOptions {
            start_wait: Duration::from_millis(500),
            health_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(1),
            // Event streams whose client is gone are noticed at the next keep-alive; the
            // mutator drops many of them, and each holds one of the gateway's connections.
            keep_alive: Duration::from_millis(500),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(warden_http::serve_with(
            listener,
            supervisor.clone(),
            http,
            Arc::new(Metrics::new()),
            options,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            addr,
            supervisor,
            stop: Some(stop),
            _dir: dir,
        })
    }

    /// Sends `request` on a new connection, half-closes, and reads the response (up to its
    /// headers for a stream).
    async fn exchange(&self, request: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(self.addr).await?;
        // Closed with a reset: a million connections leave no TIME_WAIT behind.
        stream.set_zero_linger()?;
        // The gateway may answer (and close) before it read everything: that is fine.
        let _ = stream.write_all(request).await;
        let _ = stream.shutdown().await;
        let mut response = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            if is_stream(&response) {
                break;
            }
        }
        Ok(response)
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Whether the response so far is an event stream's head (it never ends on its own).
fn is_stream(response: &[u8]) -> bool {
    let Some(end) = find(response, b"\r\n\r\n") else {
        return false;
    };
    String::from_utf8_lossy(&response[..end])
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks one response (to a `HEAD` request when `head_request`: no body); its outcome.
fn check(response: &[u8], head_request: bool) -> Result<Outcome, String> {
    if response.is_empty() {
        // The request was not complete when the connection ended: nothing to answer.
        return Ok(Outcome::refused("closed", ""));
    }
    let Some(end) = find(response, b"\r\n\r\n") else {
        return Err(format!(
            "a response without complete headers: {:?}",
            String::from_utf8_lossy(response)
        ));
    };
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.x status line: {head:?}"))?;
    if status >= 500 && status != 503 {
        return Err(format!("an internal error: {head}"));
    }
    // Only this response's body: a pipelined second response may follow it.
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let body = &response[end + 4..];
    let length = if head_request { Some(0) } else { length };
    let body = &body[..length.unwrap_or(body.len()).min(body.len())];
    let json = head
        .to_ascii_lowercase()
        .contains("content-type: application/json");
    if status >= 400 {
        if json && !body.is_empty() {
            let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "an error body that is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(body)
                )
            })?;
            let message = value["message"].as_str().unwrap_or_default();
            if message.trim().is_empty() {
                return Err(format!("an error without a message: {value}"));
            }
            let code = value["code"].as_str().unwrap_or("?");
            return Ok(Outcome::refused(&format!("{status}:{code}"), message));
        }
        // hyper's own refusals of a malformed request (400, 413, 431) have no body.
        return Ok(Outcome::refused(&status.to_string(), ""));
    }
    Ok(Outcome::accepted(status.to_string()))
}

#[async_trait::async_trait]
impl Target for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"GET ",
            b"POST ",
            b"DELETE ",
            b"PUT ",
            b"HEAD ",
            b"OPTIONS ",
            b" HTTP/1.1\r\n",
            b" HTTP/1.0\r\n",
            b"\r\n",
            b"\r\n\r\n",
            b"/session/start/shop1",
            b"/session/status/t",
            b"/session/stop/t",
            b"/session/proxy/t",
            b"/session/logout/t",
            b"/session/t",
            b"/session",
            b"/sessions",
            b"/healthz",
            b"/metrics",
            b"/openapi.json",
            b"/session/shop1/qr.png",
            b"/messages/t",
            b"/../../etc/passwd",
            b"%2e%2e%2f",
            b"?limit=",
            b"&wait=",
            b"Host: 127.0.0.1\r\n",
            b"Host: evil.example\r\n",
            b"Origin: http://evil.example\r\n",
            b"Authorization: Bearer x\r\n",
            b"Content-Type: application/json\r\n",
            b"Content-Length: 2\r\n",
            b"Content-Length: 99999999999\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Expect: 100-continue\r\n",
            b"Connection: keep-alive\r\n",
            b"{\"token\":\"x\",\"proxy\":\"socks5://u:S3cretPw@h:1\"}",
            b"{\"to\":\"15551234567\",\"text\":\"hi\"}",
            b"0\r\n\r\n",
        ]
    }

    async fn run(&mut self, input: &[u8]) -> Result<Outcome, String> {
        let before = panics();
        let response = tokio::time::timeout(PATIENCE, self.exchange(input))
            .await
            .map_err(|_| format!("no answer within {PATIENCE:?}"))?
            .map_err(|e| format!("the exchange failed: {e}"))?;
        if panics() != before {
            return Err("the gateway panicked".into());
        }
        check(&response, input.starts_with(b"HEAD "))
    }

    async fn finish(&mut self) -> Result<(), String> {
        // Streams the run left open may hold every connection for a keep-alive's time.
        let mut response = Vec::new();
        for _ in 0..40 {
            response = self
                .exchange(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            if !response.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if !response.starts_with(b"HTTP/1.1 200") {
            return Err(format!(
                "health failed after the run: {:?}",
                String::from_utf8_lossy(&response)
            ));
        }
        self.supervisor
            .ping()
            .await
            .map_err(|e| format!("the supervisor does not answer: {e}"))
    }
}
