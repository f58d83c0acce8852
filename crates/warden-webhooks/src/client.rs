//! One POST to a webhook: resolve, check every address with the SSRF guard, connect (TLS for
//! https, with the Web PKI roots), send, read the status line and headers, drain the body.
//! The whole request is bounded by the webhook's timeout.
//!
//! Connections are kept for the next request ([`Pool`]: at most the webhook's concurrency,
//! each idle at most [`IDLE`]), so a busy webhook does not pay a TCP and TLS handshake per
//! event. A request that fails on a kept connection the receiver had closed is sent again
//! once on a new one (at least once: a receiver may see it twice, with one id).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Target;
use crate::guard::is_private;
use crate::retry::{Outcome, parse_retry_after};

/// The `User-Agent` sent.
pub const USER_AGENT: &str = concat!("warden-webhooks/", env!("CARGO_PKG_VERSION"));
/// The most of a response body read (and thrown away) before the connection is dropped.
const MAX_DRAIN: usize = 64 * 1024;

/// How long a kept connection may stay idle.
pub const IDLE: Duration = Duration::from_secs(30);

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A webhook's kept connections.
pub struct Pool {
    idle: std::sync::Mutex<Vec<(Sender, tokio::time::Instant)>>,
    max: usize,
}

impl Pool {
    /// A pool keeping at most `max` idle connections.
    pub fn new(max: usize) -> Self {
        Self {
            idle: std::sync::Mutex::new(Vec::new()),
            max,
        }
    }

    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if since.elapsed() < IDLE && !sender.is_closed() && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, sender: Sender) {
        if sender.is_closed() || !sender.is_ready() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(s, since)| since.elapsed() < IDLE && !s.is_closed());
        if idle.len() < self.max {
            idle.push((sender, tokio::time::Instant::now()));
        }
    }
}

/// One request to send.
pub struct Request<'a> {
    /// Where.
    pub target: &'a Target,
    /// Extra headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    pub headers: &'a [(&'static str, String)],
    /// The JSON body.
    pub body: Bytes,
    /// Loopback and private addresses allowed.
    pub allow_private: bool,
    /// The bound on the whole request.
    pub timeout: Duration,
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// Sends `request`, on a kept connection of `pool` when there is one; the outcome says how it
/// went (never an error: a failure is an outcome).
pub async fn post(pool: &Pool, request: Request<'_>) -> Outcome {
    match tokio::time::timeout(request.timeout, send(pool, &request)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed(format!(
            "no answer within {}",
            humantime::format_duration(request.timeout)
        )),
    }
}

async fn resolve(target: &Target, allow_private: bool) -> Result<Vec<SocketAddr>, Outcome> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| Outcome::Failed(format!("cannot resolve {}: {e}", target.host)))?
        .collect();
    if allow_private {
        return Ok(addrs);
    }
    let public: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| !is_private(a.ip()))
        .collect();
    if public.is_empty() {
        let first = addrs
            .first()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        return Err(Outcome::Refused(format!(
            "{} resolves to {first}, a loopback, private or link-local address; set allow_private = true to allow it",
            target.host
        )));
    }
    Ok(public)
}

async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, Outcome> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(format!("cannot connect to {addr}: {e}")),
        }
    }
    Err(Outcome::Failed(
        last.unwrap_or_else(|| "no address to connect to".into()),
    ))
}

async fn send(pool: &Pool, request: &Request<'_>) -> Outcome {
    if let Some(mut sender) = pool.take() {
        match exchange(&mut sender, request).await {
            // The receiver closed the kept connection: a new one below.
            Err(_) => {}
            Ok(outcome) => {
                pool.put(sender);
                return outcome;
            }
        }
    }
    let mut sender = match open(request).await {
        Ok(sender) => sender,
        Err(outcome) => return outcome,
    };
    match exchange(&mut sender, request).await {
        Ok(outcome) => {
            pool.put(sender);
            outcome
        }
        Err(why) => Outcome::Failed(why),
    }
}

/// A new connection to the request's target, through the guard (and TLS for https).
async fn open(request: &Request<'_>) -> Result<Sender, Outcome> {
    let target = request.target;
    let addrs = resolve(target, request.allow_private).await?;
    let stream = connect(&addrs).await?;
    if target.tls {
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| Outcome::Refused(format!("bad TLS name {}: {e}", target.host)))?;
        let connector = tokio_rustls::TlsConnector::from(tls_config());
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| Outcome::Failed(format!("TLS with {}: {e}", target.host)))?;
        handshake(TokioIo::new(tls)).await
    } else {
        handshake(TokioIo::new(stream)).await
    }
}

/// HTTP/1 over `io`; the connection's driver task ends when the sender is dropped.
async fn handshake<T>(io: T) -> Result<Sender, Outcome>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Outcome::Failed(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request on `sender`: its outcome, or why the connection failed before a status.
async fn exchange(sender: &mut Sender, request: &Request<'_>) -> Result<Outcome, String> {
    let target = request.target;
    sender
        .ready()
        .await
        .map_err(|e| format!("connection lost: {e}"))?;
    let host = if target.port == if target.tls { 443 } else { 80 } {
        target.host.clone()
    } else if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let mut builder = hyper::Request::post(target.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, USER_AGENT);
    for (name, value) in request.headers {
        builder = builder.header(*name, value);
    }
    let http_request = match builder.body(Full::new(request.body.clone())) {
        Ok(r) => r,
        Err(e) => return Ok(Outcome::Refused(format!("cannot build the request: {e}"))),
    };
    match sender.send_request(http_request).await {
        Ok(response) => {
            let code = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            // The body is read (and dropped), so the connection can carry the next request;
            // one left unread past MAX_DRAIN leaves it not ready, and `Pool::put` drops it.
            let mut body = response.into_body();
            let mut read = 0;
            while read < MAX_DRAIN {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                    _ => break,
                }
            }
            Ok(Outcome::Status { code, retry_after })
        }
        Err(e) => Err(format!("request failed: {e}")),
    }
}
