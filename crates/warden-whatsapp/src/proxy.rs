//! Tunnels through a session's proxy: SOCKS5 (RFC 1928, with RFC 1929 user/password) and
//! HTTP `CONNECT` (with Basic authentication). [`tunnel`] gives back a TCP stream that reaches
//! the target; TLS and the WebSocket upgrade then run over it as over a direct connection.
//!
//! What failed is kept apart, because the restart policy and the operator need to know:
//! - the proxy itself could not be used (refused, silent, not speaking the protocol):
//!   [`TunnelError::Unreachable`];
//! - it refused the user and password, or asks for some: [`TunnelError::AuthFailed`];
//! - it works but could not reach WhatsApp's host: [`TunnelError::Target`].
//!
//! No message here ever holds the password.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_core::{ProxyScheme, ProxyUrl};

/// The proxy a session uses now, shared by its transport and its HTTP client. The link sets
/// it at every connection, so a change takes effect at the next one.
#[derive(Debug, Default)]
pub struct ProxySetting(std::sync::Mutex<Option<ProxyUrl>>);

impl ProxySetting {
    /// The proxy to use now, if any.
    pub fn get(&self) -> Option<ProxyUrl> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the proxy for what follows.
    pub fn set(&self, proxy: Option<ProxyUrl>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = proxy;
    }
}

/// Longest HTTP response head accepted from a proxy.
const MAX_HEAD: usize = 8 * 1024;

/// Why a tunnel could not be opened; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// The proxy could not be reached or used.
    #[error("proxy {proxy}: {detail}")]
    Unreachable {
        /// The proxy, password masked.
        proxy: String,
        /// What went wrong.
        detail: String,
    },
    /// The proxy refused the credentials, or wants some.
    #[error("proxy {proxy}: {detail}")]
    AuthFailed {
        /// The proxy, password masked.
        proxy: String,
        /// What it said.
        detail: String,
    },
    /// The proxy could not reach the target.
    #[error("proxy {proxy} could not reach {target}: {detail}")]
    Target {
        /// The proxy, password masked.
        proxy: String,
        /// `host:port` asked for.
        target: String,
        /// What it said.
        detail: String,
    },
}

/// What went wrong, before the proxy's name is attached.
enum Failure {
    Unreachable(String),
    AuthFailed(String),
    Target(String),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Self::Unreachable("the proxy closed the connection during its handshake".into())
        } else {
            Self::Unreachable(format!("during its handshake: {e}"))
        }
    }
}

/// Opens a TCP stream to `host:port` through `proxy`. Unbounded in time: the caller bounds
/// it (the link's `connect_timeout`).
pub async fn tunnel(proxy: &ProxyUrl, host: &str, port: u16) -> Result<TcpStream, TunnelError> {
    let result = async {
        let mut stream = TcpStream::connect((proxy.host(), proxy.port()))
            .await
            .map_err(|e| Failure::Unreachable(format!("cannot connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        match proxy.scheme() {
            ProxyScheme::Socks5 | ProxyScheme::Socks5h => {
                socks5(&mut stream, proxy, host, port).await?
            }
            ProxyScheme::Http => connect(&mut stream, proxy, host, port).await?,
        }
        Ok::<_, Failure>(stream)
    }
    .await;
    result.map_err(|failure| {
        let proxy_shown = proxy.masked();
        match failure {
            Failure::Unreachable(detail) => TunnelError::Unreachable {
                proxy: proxy_shown,
                detail,
            },
            Failure::AuthFailed(detail) => TunnelError::AuthFailed {
                proxy: proxy_shown,
                detail,
            },
            Failure::Target(detail) => TunnelError::Target {
                proxy: proxy_shown,
                target: format!("{host}:{port}"),
                detail,
            },
        }
    })
}

/// The SOCKS5 exchange: methods, then user/password if asked, then `CONNECT`.
async fn socks5(
    stream: &mut TcpStream,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
) -> Result<(), Failure> {
    let credentials = proxy.credentials();
    // Offer "no authentication", and user/password when there are credentials.
    let greeting: &[u8] = if credentials.is_some() {
        &[5, 2, 0x00, 0x02]
    } else {
        &[5, 1, 0x00]
    };
    stream.write_all(greeting).await?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await?;
    if choice[0] != 5 {
        return Err(Failure::Unreachable(format!(
            "not a SOCKS5 proxy (it answered with version {})",
            choice[0]
        )));
    }
    match (choice[1], credentials) {
        (0x00, _) => {}
        (0x02, Some((user, password))) => {
            let mut auth = Vec::with_capacity(3 + user.len() + password.len());
            auth.push(1);
            auth.push(user.len() as u8);
            auth.extend_from_slice(user.as_bytes());
            auth.push(password.len() as u8);
            auth.extend_from_slice(password.as_bytes());
            stream.write_all(&auth).await?;
            let mut status = [0u8; 2];
            match stream.read_exact(&mut status).await {
                Ok(_) if status == [1, 0] => {}
                // A proxy may close at once instead of answering a refusal.
                Ok(_) | Err(_) => {
                    return Err(Failure::AuthFailed(
                        "it refused the user or password".into(),
                    ));
                }
            }
        }
        (0xFF, None) => {
            return Err(Failure::AuthFailed(
                "it requires a user and password, and none is set".into(),
            ));
        }
        (0xFF, Some(_)) => {
            return Err(Failure::AuthFailed(
                "it accepts neither no authentication nor user/password".into(),
            ));
        }
        (method, _) => {
            return Err(Failure::Unreachable(format!(
                "it chose authentication method {method}, which was not offered"
            )));
        }
    }
    let mut request = vec![5, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(ip) => push_address(&mut request, ip),
        Err(_) if proxy.scheme() == ProxyScheme::Socks5h => {
            if host.len() > 255 {
                return Err(Failure::Target("the host name is over 255 bytes".into()));
            }
            request.push(3);
            request.push(host.len() as u8);
            request.extend_from_slice(host.as_bytes());
        }
        Err(_) => {
            // socks5:// resolves here; socks5h:// leaves it to the proxy.
            let ip = resolve(host, port).await.map_err(Failure::Target)?;
            push_address(&mut request, ip);
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(Failure::Unreachable(format!(
            "not a SOCKS5 proxy (its reply has version {})",
            head[0]
        )));
    }
    if head[1] != 0 {
        return Err(Failure::Target(socks5_reply(head[1]).into()));
    }
    // The bound address: read and ignored.
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            usize::from(len[0]) + 2
        }
        other => {
            return Err(Failure::Unreachable(format!(
                "its reply has an unknown address type {other}"
            )));
        }
    };
    let mut bound = vec![0u8; rest];
    stream.read_exact(&mut bound).await?;
    Ok(())
}

/// Looks `host` up here, for `socks5://` (an IPv4 address first: the one most proxies reach).
pub async fn resolve(host: &str, port: u16) -> Result<IpAddr, String> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| {
            format!("{host} does not resolve here ({e}); socks5h:// resolves at the proxy")
        })?
        .collect();
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addresses.first())
        .map(SocketAddr::ip)
        .ok_or_else(|| format!("{host} has no address; socks5h:// resolves at the proxy"))
}

fn push_address(request: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            request.push(1);
            request.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            request.push(4);
            request.extend_from_slice(&v6.octets());
        }
    }
}

/// RFC 1928's reply codes, in words.
fn socks5_reply(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown SOCKS5 error",
    }
}

/// The HTTP `CONNECT` exchange. Reads the response head byte by byte, so nothing of the
/// tunnel that follows it is consumed.
async fn connect(
    stream: &mut TcpStream,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
) -> Result<(), Failure> {
    let target = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => SocketAddr::from((v6, port)).to_string(),
        _ => format!("{host}:{port}"),
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, password)) = proxy.credentials() {
        request.push_str("Proxy-Authorization: Basic ");
        request.push_str(&base64(format!("{user}:{password}").as_bytes()));
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(Failure::Unreachable(format!(
                "its answer to CONNECT is over {MAX_HEAD} bytes"
            )));
        }
        stream.read_exact(&mut byte).await?;
        head.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or("").trim();
    let code = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            Failure::Unreachable(format!("not an HTTP proxy (it answered {status_line:?})"))
        })?;
    match code {
        200..=299 => Ok(()),
        // 407 is the standard answer; some proxies (tinyproxy 1.11) answer a wrong password
        // with 401.
        401 | 407 if proxy.credentials().is_some() => Err(Failure::AuthFailed(format!(
            "it refused the user or password ({status_line})"
        ))),
        401 | 407 => Err(Failure::AuthFailed(format!(
            "it requires a user and password, and none is set ({status_line})"
        ))),
        _ => Err(Failure::Target(format!(
            "it answered CONNECT with {status_line}"
        ))),
    }
}

/// Standard base64 with padding (RFC 4648), for the Basic credentials.
fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("user:p@ss", "dXNlcjpwQHNz"),
        ] {
            assert_eq!(base64(input.as_bytes()), output, "{input}");
        }
    }

    /// A one-shot proxy that reads what the client sends first and answers `reply`, then
    /// hands back what it read.
    async fn answering(reply: &'static [u8]) -> (ProxyUrl, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut read = vec![0u8; 512];
            let n = socket.read(&mut read).await.unwrap();
            read.truncate(n);
            socket.write_all(reply).await.unwrap();
            // Hold the socket until the client is done.
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
            read
        });
        let url = ProxyUrl::parse(&format!("http://u:secret@{addr}")).unwrap();
        (url, task)
    }

    #[tokio::test]
    async fn connect_answers_are_sorted_by_what_failed() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                "auth",
            ),
            (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "target"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "unreachable"),
            (
                b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n",
                "ok",
            ),
        ];
        for (reply, expected) in cases {
            let (proxy, task) = answering(reply).await;
            let result = tunnel(&proxy, "web.whatsapp.com", 443).await;
            let got = match &result {
                Ok(_) => "ok",
                Err(TunnelError::AuthFailed { .. }) => "auth",
                Err(TunnelError::Target { .. }) => "target",
                Err(TunnelError::Unreachable { .. }) => "unreachable",
            };
            assert_eq!(got, expected, "{result:?}");
            if let Err(e) = &result {
                assert!(!e.to_string().contains("secret"), "{e}");
            }
            drop(result);
            let sent = String::from_utf8(task.await.unwrap()).unwrap();
            assert!(
                sent.starts_with("CONNECT web.whatsapp.com:443 HTTP/1.1\r\n"),
                "{sent}"
            );
            assert!(sent.contains("Proxy-Authorization: Basic dTpzZWNyZXQ=\r\n"));
        }
    }

    /// A one-shot SOCKS5 proxy without authentication: hands back the CONNECT request it
    /// read (after the greeting), and refuses it with `reply`.
    async fn socks5_seeing(reply: u8) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut greeting = [0u8; 3];
            socket.read_exact(&mut greeting).await.unwrap();
            assert_eq!(
                greeting,
                [5, 1, 0],
                "no credentials: only 'no authentication'"
            );
            socket.write_all(&[5, 0]).await.unwrap();
            let mut request = vec![0u8; 512];
            let n = socket.read(&mut request).await.unwrap();
            request.truncate(n);
            socket
                .write_all(&[5, reply, 0, 1, 0, 0, 0, 0, 0, 0])
                .await
                .unwrap();
            request
        });
        (addr.to_string(), task)
    }

    #[tokio::test]
    async fn socks5h_leaves_names_to_the_proxy_and_socks5_resolves_them_here() {
        let (addr, task) = socks5_seeing(4).await;
        let proxy = ProxyUrl::parse(&format!("socks5h://{addr}")).unwrap();
        let error = tunnel(&proxy, "web.whatsapp.com", 443).await.unwrap_err();
        assert!(
            matches!(&error, TunnelError::Target { detail, .. } if detail == "host unreachable"),
            "{error:?}"
        );
        let mut expected = vec![5, 1, 0, 3, 16];
        expected.extend_from_slice(b"web.whatsapp.com");
        expected.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(task.await.unwrap(), expected);

        let (addr, task) = socks5_seeing(0).await;
        let proxy = ProxyUrl::parse(&format!("socks5://{addr}")).unwrap();
        tunnel(&proxy, "localhost", 8080).await.unwrap();
        let request = task.await.unwrap();
        assert_eq!(
            request,
            [5, 1, 0, 1, 127, 0, 0, 1, 0x1F, 0x90],
            "IPv4 first"
        );
    }

    #[tokio::test]
    async fn a_refused_proxy_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        for scheme in ["socks5", "socks5h", "http"] {
            let proxy = ProxyUrl::parse(&format!("{scheme}://u:secret@{addr}")).unwrap();
            let error = tunnel(&proxy, "web.whatsapp.com", 443).await.unwrap_err();
            assert!(
                matches!(error, TunnelError::Unreachable { .. }),
                "{scheme}: {error:?}"
            );
            assert!(error.to_string().contains("cannot connect"), "{error}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }
}
