//! Checks the test proxies of `common::proxies` against a local echo server: the SOCKS5 server
//! written for the tests and the real tinyproxy.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use common::proxies::{Socks5Conn, Socks5Proxy, Tinyproxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const WITHIN: Duration = Duration::from_secs(5);

/// A TCP echo server on 127.0.0.1 that reports each client's address.
struct Echo {
    addr: SocketAddr,
    peers: mpsc::UnboundedReceiver<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    async fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, peers) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, peer)) = listener.accept().await {
                let _ = tx.send(peer);
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Self { addr, peers, task }
    }

    /// The address of the next client it accepted.
    async fn next_peer(&mut self) -> SocketAddr {
        tokio::time::timeout(WITHIN, self.peers.recv())
            .await
            .expect("the echo server got a client")
            .unwrap()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends a line through `stream` and expects it back.
async fn round_trip(stream: &mut TcpStream) {
    stream.write_all(b"ping through the proxy\n").await.unwrap();
    let mut back = [0u8; 23];
    tokio::time::timeout(WITHIN, stream.read_exact(&mut back))
        .await
        .expect("the echo came back")
        .unwrap();
    assert_eq!(&back, b"ping through the proxy\n");
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// SOCKS5 client

enum Dst<'a> {
    Ip(Ipv4Addr),
    Name(&'a str),
}

/// How a SOCKS5 handshake ended.
#[derive(Debug, PartialEq, Eq)]
enum Socks5Outcome {
    /// The proxy chose no acceptable method (0xFF).
    NoMethod,
    /// The RFC 1929 status was not 0.
    AuthRefused(u8),
    /// The request's reply code was not 0.
    Reply(u8),
}

/// Negotiates (offering `methods`), authenticates when `auth` is given, and sends `cmd` for
/// `dst:port`; returns the tunnel and the BND address.
async fn socks5(
    proxy: SocketAddr,
    methods: &[u8],
    auth: Option<(&str, &str)>,
    cmd: u8,
    dst: Dst<'_>,
    port: u16,
) -> Result<(TcpStream, SocketAddr), Socks5Outcome> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut hello = vec![5, methods.len() as u8];
    hello.extend_from_slice(methods);
    s.write_all(&hello).await.unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice[0], 5);
    match choice[1] {
        0xFF => return Err(Socks5Outcome::NoMethod),
        0x02 => {
            let (user, pass) = auth.expect("the proxy asked for a username and password");
            let mut msg = vec![1, user.len() as u8];
            msg.extend_from_slice(user.as_bytes());
            msg.push(pass.len() as u8);
            msg.extend_from_slice(pass.as_bytes());
            s.write_all(&msg).await.unwrap();
            let mut status = [0u8; 2];
            s.read_exact(&mut status).await.unwrap();
            assert_eq!(status[0], 1);
            if status[1] != 0 {
                // The proxy closes after refusing.
                assert_eq!(s.read(&mut [0u8; 1]).await.unwrap(), 0);
                return Err(Socks5Outcome::AuthRefused(status[1]));
            }
        }
        0x00 => {}
        other => panic!("unexpected method {other}"),
    }
    let mut req = vec![5, cmd, 0];
    match dst {
        Dst::Ip(ip) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        Dst::Name(name) => {
            req.push(3);
            req.push(name.len() as u8);
            req.extend_from_slice(name.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!((reply[0], reply[3]), (5, 1), "reply {reply:?}");
    if reply[1] != 0 {
        return Err(Socks5Outcome::Reply(reply[1]));
    }
    let ip = Ipv4Addr::new(reply[4], reply[5], reply[6], reply[7]);
    let bound = SocketAddr::from((ip, u16::from_be_bytes([reply[8], reply[9]])));
    Ok((s, bound))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_without_authentication() {
    let mut echo = Echo::start().await;
    let outbound = Ipv4Addr::new(127, 0, 0, 2);
    let proxy = Socks5Proxy::start(None, outbound).await;
    assert_eq!(proxy.url(), format!("socks5://{}", proxy.addr()));

    // By IPv4 address.
    let (mut tunnel, bound) = socks5(
        proxy.addr(),
        &[0],
        None,
        1,
        Dst::Ip(Ipv4Addr::LOCALHOST),
        echo.addr.port(),
    )
    .await
    .unwrap();
    round_trip(&mut tunnel).await;
    let peer = echo.next_peer().await;
    assert_eq!(peer.ip(), outbound);
    assert_eq!(bound, peer, "BND.ADDR is the outbound socket");

    // By name, resolved by the proxy; a client offering more methods gets "no authentication".
    let (mut tunnel, _) = socks5(
        proxy.addr(),
        &[2, 0],
        None,
        1,
        Dst::Name("localhost"),
        echo.addr.port(),
    )
    .await
    .unwrap();
    round_trip(&mut tunnel).await;
    let peer2 = echo.next_peer().await;
    assert_eq!(peer2.ip(), outbound);

    let conns = proxy.await_connections(2, WITHIN).await;
    assert_eq!(
        conns,
        vec![
            Socks5Conn {
                target: format!("127.0.0.1:{}", echo.addr.port()),
                domain: false,
                outbound: peer,
                user: None,
            },
            Socks5Conn {
                target: format!("localhost:{}", echo.addr.port()),
                domain: true,
                outbound: peer2,
                user: None,
            },
        ]
    );

    // Refusals: only username/password offered, BIND, a closed port.
    let only_auth = socks5(proxy.addr(), &[2], None, 1, Dst::Name("localhost"), 1).await;
    assert_eq!(only_auth.err(), Some(Socks5Outcome::NoMethod));
    let bind = socks5(proxy.addr(), &[0], None, 2, Dst::Ip(Ipv4Addr::LOCALHOST), 1).await;
    assert_eq!(bind.err(), Some(Socks5Outcome::Reply(0x07)));
    let port = closed_port().await;
    let refused = socks5(
        proxy.addr(),
        &[0],
        None,
        1,
        Dst::Ip(Ipv4Addr::LOCALHOST),
        port,
    )
    .await;
    assert_eq!(refused.err(), Some(Socks5Outcome::Reply(0x05)));
    assert_eq!(proxy.connections().len(), 2);
    assert_eq!(proxy.auth_failures(), 0);

    // Dropping the proxy cuts the tunnels it carries.
    drop(proxy);
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WITHIN, tunnel.read(&mut buf))
        .await
        .expect("the tunnel closed with the proxy");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_with_authentication() {
    let mut echo = Echo::start().await;
    let outbound = Ipv4Addr::new(127, 0, 0, 3);
    let proxy = Socks5Proxy::start(Some(("alice", "s3cret")), outbound).await;
    assert_eq!(
        proxy.url_with("socks5h", Some(("alice", "s3cret"))),
        format!("socks5h://alice:s3cret@{}", proxy.addr())
    );
    let port = echo.addr.port();

    let wrong = socks5(
        proxy.addr(),
        &[0, 2],
        Some(("alice", "nope")),
        1,
        Dst::Ip(Ipv4Addr::LOCALHOST),
        port,
    )
    .await;
    assert_eq!(wrong.err(), Some(Socks5Outcome::AuthRefused(1)));
    proxy.await_auth_failures(1, WITHIN).await;
    let no_auth = socks5(
        proxy.addr(),
        &[0],
        None,
        1,
        Dst::Ip(Ipv4Addr::LOCALHOST),
        port,
    )
    .await;
    assert_eq!(no_auth.err(), Some(Socks5Outcome::NoMethod));

    let (mut tunnel, _) = socks5(
        proxy.addr(),
        &[2],
        Some(("alice", "s3cret")),
        1,
        Dst::Name("localhost"),
        port,
    )
    .await
    .unwrap();
    round_trip(&mut tunnel).await;
    let peer = echo.next_peer().await;
    assert_eq!(peer.ip(), outbound);
    let conns = proxy.await_connections(1, WITHIN).await;
    assert_eq!(
        conns,
        vec![Socks5Conn {
            target: format!("localhost:{port}"),
            domain: true,
            outbound: peer,
            user: Some("alice".into()),
        }]
    );
    assert_eq!(proxy.auth_failures(), 1);
}

// ---------------------------------------------------------------------------------------------
// tinyproxy

/// Sends `CONNECT 127.0.0.1:port` (with Basic credentials when given) and returns the status
/// code and the stream, positioned after the response head.
async fn http_connect(
    proxy: SocketAddr,
    port: u16,
    auth: Option<(&str, &str)>,
) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut req = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    if let Some((user, pass)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // Byte by byte, so nothing of the tunnel is read with the head.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(WITHIN, s.read_u8())
            .await
            .expect("the proxy answered")
            .unwrap();
        head.push(byte);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tinyproxy_without_authentication() {
    if !Tinyproxy::installed() {
        return;
    }
    let mut echo = Echo::start().await;
    let bind = Ipv4Addr::new(127, 0, 0, 4);
    let proxy = Tinyproxy::start(None, bind).await;
    assert_eq!(proxy.url(), format!("http://{}", proxy.addr()));
    assert_eq!(proxy.connects(), 0);

    let (status, mut tunnel) = http_connect(proxy.addr(), echo.addr.port(), None).await;
    assert_eq!(status, 200, "{}", proxy.log());
    round_trip(&mut tunnel).await;
    assert_eq!(echo.next_peer().await.ip(), bind);
    proxy.await_connects(1, WITHIN).await;
    assert_eq!(
        proxy.connect_requests(),
        vec![format!("127.0.0.1:{}", echo.addr.port())]
    );

    // A closed target: a request, but no connection established.
    let port = closed_port().await;
    let (status, _) = http_connect(proxy.addr(), port, None).await;
    assert_ne!(status, 200);
    assert_eq!(proxy.connect_requests().len(), 2);
    assert_eq!(proxy.connects(), 1, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tinyproxy_with_authentication() {
    if !Tinyproxy::installed() {
        return;
    }
    let mut echo = Echo::start().await;
    let bind = Ipv4Addr::new(127, 0, 0, 5);
    let proxy = Tinyproxy::start(Some(("bob", "hunter2")), bind).await;
    let port = echo.addr.port();

    let (status, _) = http_connect(proxy.addr(), port, None).await;
    assert_eq!(status, 407, "no credentials");
    // tinyproxy 1.11.1 answers wrong credentials with 401 (fixed upstream to 407 by
    // tinyproxy/tinyproxy#549); either is a refusal.
    let (status, _) = http_connect(proxy.addr(), port, Some(("bob", "wrong"))).await;
    assert!(
        status == 401 || status == 407,
        "wrong credentials: {status}"
    );

    let (status, mut tunnel) = http_connect(proxy.addr(), port, Some(("bob", "hunter2"))).await;
    assert_eq!(status, 200, "{}", proxy.log());
    round_trip(&mut tunnel).await;
    assert_eq!(echo.next_peer().await.ip(), bind);
    proxy.await_connects(1, WITHIN).await;
    assert_eq!(
        proxy.connects(),
        1,
        "only the authenticated CONNECT: {}",
        proxy.log()
    );
    assert_eq!(proxy.connect_requests().len(), 3);
}
