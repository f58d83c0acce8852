//! [`WsFactory`]: the WebSocket transport wa-rs connects through.
//!
//! Unlike wa-rs's stock transport it
//! - bounds the whole connect (DNS, TCP, TLS, WebSocket upgrade) *and* the wait for the
//!   server's first handshake reply by one `connect_timeout`, so a silent server costs that long,
//!   not wa-rs's fixed 20 s or for ever;
//! - always releases its read task and socket: on `disconnect()`, on drop, when the server
//!   closes, and when the link asks ([`Probe::close_current`]), even if wa-rs still holds the
//!   transport;
//! - tells the link what happened on the wire ([`Probe`]): whether the dial failed or timed
//!   out, when bytes last arrived (for the liveness watchdog), and how the socket ended. wa-rs
//!   itself reports none of this.
//!
//! TLS (for `wss://`) is rustls with the webpki root certificates and the `ring` provider.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_websockets::{ClientBuilder, Connector, MaybeTlsStream, Message, WebSocketStream};
use wa_rs_core::net::{Transport, TransportEvent, TransportFactory};
use warden_core::{ProxyScheme, ProxyUrl};

use crate::proxy::{ProxySetting, TunnelError};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;

/// How the dial of one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dial {
    /// The WebSocket is open.
    Open,
    /// DNS, TCP, TLS or the upgrade failed.
    Failed(String),
    /// It did not finish within `connect_timeout`.
    TimedOut,
    /// The session's proxy could not be reached or used, or did not answer within
    /// `connect_timeout`.
    ProxyUnreachable(String),
    /// The session's proxy refused its credentials (or wants some).
    ProxyAuthFailed(String),
}

/// How the socket of one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEnd {
    /// The server sent a WebSocket close frame.
    ClosedByServer,
    /// The connection broke or hit end-of-file without a close frame.
    Dropped(String),
    /// The server never sent its first handshake reply within `connect_timeout`.
    HandshakeTimedOut,
    /// This side closed it (wa-rs, the link, or a drop).
    ClosedHere,
}

/// What the transport saw during one connection attempt (one `run()`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportFacts {
    /// The dial, once tried.
    pub dial: Option<Dial>,
    /// Whether any data arrived from the server.
    pub received: bool,
    /// How the socket ended, once it did.
    pub end: Option<SocketEnd>,
}

/// The link's window on the transport of one session. Shared by the factory, its sockets and
/// the link; every fact is tagged with the attempt it belongs to, so a late event from an older
/// socket never lands in a newer attempt.
#[derive(Debug, Default)]
pub struct Probe {
    state: Mutex<ProbeState>,
}

#[derive(Debug, Default)]
struct ProbeState {
    attempt: u64,
    facts: TransportFacts,
    last_received: Option<Instant>,
    current: Option<Arc<Socket>>,
}

impl Probe {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProbeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new attempt: forgets the facts of the previous one.
    pub fn begin(&self) {
        let mut s = self.lock();
        s.attempt += 1;
        s.facts = TransportFacts::default();
        s.last_received = None;
        s.current = None;
    }

    /// The facts of the current attempt.
    pub fn facts(&self) -> TransportFacts {
        self.lock().facts.clone()
    }

    /// How long the open socket of this attempt has received nothing (since it opened, or
    /// since its last frame); `None` while no socket is open.
    pub fn silent_for(&self) -> Option<Duration> {
        let s = self.lock();
        if s.facts.end.is_some() {
            return None;
        }
        s.last_received.map(|at| at.elapsed())
    }

    /// Closes the current socket now, whoever holds the transport: the read task stops and
    /// the socket is released.
    pub fn close_current(&self) {
        let current = self.lock().current.take();
        if let Some(socket) = current {
            socket.release();
        }
    }

    fn attempt(&self) -> u64 {
        self.lock().attempt
    }

    fn update(&self, attempt: u64, f: impl FnOnce(&mut ProbeState)) {
        let mut s = self.lock();
        if s.attempt == attempt {
            f(&mut s);
        }
    }
}

/// One socket: the write half (taken out to close) and the read task's stop signal.
#[derive(Debug)]
struct Socket {
    sink: tokio::sync::Mutex<Option<Sink>>,
    stop: Notify,
}

impl Socket {
    /// Stops the read task and drops the write half if it is free (else the read task does).
    fn release(&self) {
        self.stop.notify_one();
        if let Ok(mut sink) = self.sink.try_lock() {
            sink.take();
        }
    }
}

impl std::fmt::Debug for WsFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsFactory")
            .field("uri", &self.uri)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Opens WebSockets to one URL for one session, through the session's proxy when it has one;
/// see the module docs.
pub struct WsFactory {
    uri: http::Uri,
    connect_timeout: Duration,
    send_timeout: Duration,
    probe: Arc<Probe>,
    proxy: Arc<ProxySetting>,
}

/// Why a dial failed.
enum DialError {
    Proxy(TunnelError),
    /// WhatsApp's host name did not resolve here (`socks5://` resolves before the tunnel).
    Resolve(String),
    WebSocket(tokio_websockets::Error),
}

impl WsFactory {
    /// A factory for `uri` (`ws://` or `wss://`). `send_timeout` bounds one write. Every dial
    /// goes through the proxy `proxy` holds at that moment (directly when none).
    pub fn new(
        uri: http::Uri,
        connect_timeout: Duration,
        send_timeout: Duration,
        proxy: Arc<ProxySetting>,
    ) -> Self {
        Self {
            uri,
            connect_timeout,
            send_timeout,
            probe: Arc::new(Probe::default()),
            proxy,
        }
    }

    /// The probe the link reads.
    pub fn probe(&self) -> Arc<Probe> {
        self.probe.clone()
    }

    /// Dials, directly or through the proxy. `at_proxy` is set while the proxy's tunnel is
    /// being made, so a timeout can tell the proxy's silence from a slow local DNS lookup or a
    /// silent server.
    async fn dial(&self, proxy: Option<&ProxyUrl>, at_proxy: &AtomicBool) -> Result<Ws, DialError> {
        let connector = if self.uri.scheme_str() == Some("wss") {
            Connector::Rustls(tokio_rustls::TlsConnector::from(tls_config()))
        } else {
            Connector::Plain
        };
        let builder = ClientBuilder::from_uri(self.uri.clone());
        let Some(proxy) = proxy else {
            let (ws, _response) = builder
                .connector(&connector)
                .connect()
                .await
                .map_err(DialError::WebSocket)?;
            return Ok(ws);
        };
        // The URI was checked at configuration: it has a host.
        let host = self
            .uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if self.uri.scheme_str() == Some("wss") {
                443
            } else {
                80
            });
        // socks5:// resolves here, before the proxy is involved.
        let target = match proxy.scheme() {
            ProxyScheme::Socks5 if host.parse::<std::net::IpAddr>().is_err() => {
                crate::proxy::resolve(host, port)
                    .await
                    .map_err(DialError::Resolve)?
                    .to_string()
            }
            _ => host.to_owned(),
        };
        at_proxy.store(true, Ordering::Relaxed);
        let tcp = crate::proxy::tunnel(proxy, &target, port)
            .await
            .map_err(DialError::Proxy)?;
        at_proxy.store(false, Ordering::Relaxed);
        let stream = connector
            .wrap(host, tcp)
            .await
            .map_err(DialError::WebSocket)?;
        let (ws, _response) = builder
            .connect_on(stream)
            .await
            .map_err(DialError::WebSocket)?;
        Ok(ws)
    }
}

/// One rustls client configuration (webpki roots, `ring`) shared by every connection.
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

#[async_trait]
impl TransportFactory for WsFactory {
    async fn create_transport(
        &self,
    ) -> anyhow::Result<(Arc<dyn Transport>, async_channel::Receiver<TransportEvent>)> {
        let attempt = self.probe.attempt();
        let deadline = Instant::now() + self.connect_timeout;
        let proxy = self.proxy.get();
        let at_proxy = AtomicBool::new(false);
        let dialed = tokio::time::timeout_at(deadline, self.dial(proxy.as_ref(), &at_proxy)).await;
        let ws = match dialed {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                let (dial, detail) = match e {
                    DialError::Proxy(e @ TunnelError::Unreachable { .. }) => {
                        (Dial::ProxyUnreachable(e.to_string()), e.to_string())
                    }
                    DialError::Proxy(e @ TunnelError::AuthFailed { .. }) => {
                        (Dial::ProxyAuthFailed(e.to_string()), e.to_string())
                    }
                    DialError::Proxy(e @ TunnelError::Target { .. }) => {
                        (Dial::Failed(e.to_string()), e.to_string())
                    }
                    DialError::Resolve(e) => (Dial::Failed(e.clone()), e),
                    DialError::WebSocket(e) => (Dial::Failed(e.to_string()), e.to_string()),
                };
                self.probe.update(attempt, |s| s.facts.dial = Some(dial));
                anyhow::bail!("websocket connect failed: {detail}");
            }
            Err(_) => {
                let dial = match &proxy {
                    Some(proxy) if at_proxy.load(Ordering::Relaxed) => {
                        Dial::ProxyUnreachable(format!(
                            "proxy {proxy}: no tunnel within {}",
                            humantime::format_duration(self.connect_timeout)
                        ))
                    }
                    _ => Dial::TimedOut,
                };
                self.probe.update(attempt, |s| s.facts.dial = Some(dial));
                anyhow::bail!(
                    "websocket connect timed out after {:?}",
                    self.connect_timeout
                );
            }
        };
        let (sink, stream) = ws.split();
        let socket = Arc::new(Socket {
            sink: tokio::sync::Mutex::new(Some(sink)),
            stop: Notify::new(),
        });
        let (tx, rx) = async_channel::unbounded();
        let _ = tx.try_send(TransportEvent::Connected);
        self.probe.update(attempt, |s| {
            s.facts.dial = Some(Dial::Open);
            s.last_received = Some(Instant::now());
            s.current = Some(socket.clone());
        });
        crate::tasks::spawn(read_pump(
            socket.clone(),
            stream,
            tx,
            self.probe.clone(),
            attempt,
            deadline,
        ));
        let transport = WsTransport {
            socket,
            send_timeout: self.send_timeout,
        };
        Ok((Arc::new(transport), rx))
    }
}

/// Forwards frames to wa-rs until the socket ends or is stopped, then releases it.
async fn read_pump(
    socket: Arc<Socket>,
    mut stream: SplitStream<Ws>,
    tx: async_channel::Sender<TransportEvent>,
    probe: Arc<Probe>,
    attempt: u64,
    hello_deadline: Instant,
) {
    let mut received = false;
    let end = loop {
        let hello = async {
            if received {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep_until(hello_deadline).await;
            }
        };
        tokio::select! {
            biased;
            () = socket.stop.notified() => break SocketEnd::ClosedHere,
            () = hello => break SocketEnd::HandshakeTimedOut,
            frame = stream.next() => match frame {
                Some(Ok(message)) => {
                    probe.update(attempt, |s| s.last_received = Some(Instant::now()));
                    if message.is_binary() {
                        if !received {
                            received = true;
                            probe.update(attempt, |s| s.facts.received = true);
                        }
                        let data: Bytes = message.into_payload().into();
                        if tx.send(TransportEvent::DataReceived(data)).await.is_err() {
                            break SocketEnd::ClosedHere; // wa-rs let go of the socket
                        }
                    } else if message.is_close() {
                        break SocketEnd::ClosedByServer;
                    }
                }
                Some(Err(e)) => break SocketEnd::Dropped(e.to_string()),
                None => break SocketEnd::Dropped("end of stream".into()),
            },
        }
    };
    probe.update(attempt, |s| {
        s.facts.end.get_or_insert(end);
        s.current = None;
    });
    drop(stream);
    // The write half: free unless a send is stuck; a stuck send gives up at its timeout.
    if let Ok(mut sink) = tokio::time::timeout(Duration::from_secs(1), socket.sink.lock()).await {
        sink.take();
    }
    let _ = tx.try_send(TransportEvent::Disconnected);
}

/// The transport wa-rs holds for one connection.
struct WsTransport {
    socket: Arc<Socket>,
    send_timeout: Duration,
}

impl Drop for WsTransport {
    fn drop(&mut self) {
        self.socket.release();
    }
}

#[async_trait]
impl Transport for WsTransport {
    async fn send(&self, data: Vec<u8>) -> anyhow::Result<()> {
        let mut guard = self.socket.sink.lock().await;
        let sink = guard
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("socket is closed"))?;
        match tokio::time::timeout(self.send_timeout, sink.send(Message::binary(data))).await {
            Ok(result) => result.map_err(|e| anyhow::anyhow!("websocket send: {e}")),
            Err(_) => {
                guard.take();
                self.socket.stop.notify_one();
                anyhow::bail!("websocket send timed out")
            }
        }
    }

    async fn disconnect(&self) {
        let sink = self.socket.sink.lock().await.take();
        if let Some(mut sink) = sink {
            let _ = tokio::time::timeout(Duration::from_millis(500), sink.close()).await;
        }
        self.socket.stop.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_dial_is_recorded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let f = WsFactory::new(
            format!("ws://{addr}/ws/chat").parse().unwrap(),
            Duration::from_secs(2),
            Duration::from_secs(2),
            Arc::default(),
        );
        f.probe().begin();
        assert!(f.create_transport().await.is_err());
        assert!(matches!(f.probe().facts().dial, Some(Dial::Failed(_))));
        assert_eq!(f.probe().silent_for(), None);
    }

    #[tokio::test]
    async fn silent_tcp_hits_the_connect_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let f = WsFactory::new(
            format!("ws://{addr}/").parse().unwrap(),
            Duration::from_millis(150),
            Duration::from_secs(2),
            Arc::default(),
        );
        f.probe().begin();
        let started = std::time::Instant::now();
        assert!(f.create_transport().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(f.probe().facts().dial, Some(Dial::TimedOut));
        hold.abort();
    }

    #[test]
    fn the_tls_config_builds() {
        assert!(!tls_config().alpn_protocols.iter().any(|p| p.is_empty()));
    }
}
