//! One POST to a webhook: resolve, check every address with the SSRF guard, connect (TLS for
//! https, with the Web PKI roots), send, read the status line and headers, drop the body.
//! One connection per request; the whole request is bounded by the webhook's timeout.

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

/// Sends `request`; the outcome says how it went (never an error: a failure is an outcome).
pub async fn post(request: Request<'_>) -> Outcome {
    match tokio::time::timeout(request.timeout, send(&request)).await {
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

async fn send(request: &Request<'_>) -> Outcome {
    let target = request.target;
    let addrs = match resolve(target, request.allow_private).await {
        Ok(addrs) => addrs,
        Err(outcome) => return outcome,
    };
    let stream = match connect(&addrs).await {
        Ok(stream) => stream,
        Err(outcome) => return outcome,
    };
    if target.tls {
        let name = match rustls::pki_types::ServerName::try_from(target.host.clone()) {
            Ok(name) => name,
            Err(e) => return Outcome::Refused(format!("bad TLS name {}: {e}", target.host)),
        };
        let connector = tokio_rustls::TlsConnector::from(tls_config());
        match connector.connect(name, stream).await {
            Ok(tls) => exchange(TokioIo::new(tls), request).await,
            Err(e) => Outcome::Failed(format!("TLS with {}: {e}", target.host)),
        }
    } else {
        exchange(TokioIo::new(stream), request).await
    }
}

async fn exchange<T>(io: T, request: &Request<'_>) -> Outcome
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let target = request.target;
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(io).await {
        Ok(pair) => pair,
        Err(e) => return Outcome::Failed(format!("HTTP handshake: {e}")),
    };
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
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
        Err(e) => {
            driver.abort();
            return Outcome::Refused(format!("cannot build the request: {e}"));
        }
    };
    let outcome = match sender.send_request(http_request).await {
        Ok(response) => {
            let code = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            // Read a little of the body so a keep-alive receiver is not cut mid-write; the
            // connection is dropped after anyway.
            let mut body = response.into_body();
            let mut read = 0;
            while read < MAX_DRAIN {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                    _ => break,
                }
            }
            Outcome::Status { code, retry_after }
        }
        Err(e) => Outcome::Failed(format!("request failed: {e}")),
    };
    driver.abort();
    outcome
}
