//! [`SessionHttp`]: the HTTP client wa-rs gets for one session. While the session has a proxy,
//! every request (the WhatsApp Web version lookup, media uploads and downloads) goes through
//! it; without one, requests go through the link's shared client, by default
//! [`BoundedHttp`].
//!
//! Both bound every request: connecting (a proxy's handshake included) and the wait for the
//! response head by the link's `connect_timeout`, each read and each write of a body by 30 s
//! at least (a peer that trickles a byte now and then can still keep a body going). wa-rs
//! waits for its version lookup before it reports a connection attempt's end, so an unbounded
//! request (wa-rs's stock client has no timeout) could hold a session in `connecting`, and a
//! blocking thread, for ever.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use wa_rs_core::net::{HttpClient, HttpRequest, HttpResponse, StreamingHttpResponse};
use warden_core::ProxyUrl;

use crate::proxy::ProxySetting;

/// One session's HTTP client; see the module docs.
pub struct SessionHttp {
    direct: Arc<dyn HttpClient>,
    proxy: Arc<ProxySetting>,
    /// Bounds the proxy's connect and handshake, and the wait for the response head.
    connect_timeout: Duration,
    /// The agent of the last proxy used, rebuilt when the proxy changes (boxed: a session
    /// without a proxy pays one pointer).
    agent: Mutex<Option<Box<(ProxyUrl, ureq::Agent)>>>,
}

impl SessionHttp {
    /// A client that follows `proxy`, and uses `direct` while there is none. Through a proxy,
    /// connecting (the proxy's handshake included) and the wait for the response are each
    /// bounded by `connect_timeout`, and each read of a body by 30 s at least: a silent proxy
    /// fails the request, it never holds it (and a blocking thread) for ever.
    pub fn new(
        direct: Arc<dyn HttpClient>,
        proxy: Arc<ProxySetting>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            direct,
            proxy,
            connect_timeout,
            agent: Mutex::new(None),
        }
    }

    /// The agent for `proxy` (ureq speaks SOCKS5, SOCKS5h and HTTP CONNECT itself).
    fn agent(&self, proxy: &ProxyUrl) -> anyhow::Result<ureq::Agent> {
        let mut agent = self.agent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = agent.as_ref()
            && held.0 == *proxy
        {
            return Ok(held.1.clone());
        }
        // The error would echo the URL: it is replaced by the masked one.
        let ureq_proxy = ureq::Proxy::new(&proxy.expose())
            .map_err(|_| anyhow::anyhow!("proxy {proxy}: not usable for HTTP requests"))?;
        let built = bounded_agent(Some(ureq_proxy), self.connect_timeout);
        *agent = Some(Box::new((proxy.clone(), built.clone())));
        Ok(built)
    }
}

/// One request on `agent`.
fn request_on(
    agent: &ureq::Agent,
    request: HttpRequest,
) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
    let response = match request.method.as_str() {
        "GET" => {
            let mut call = agent.get(&request.url);
            for (key, value) in &request.headers {
                call = call.header(key, value);
            }
            call.call()?
        }
        "POST" => {
            let mut call = agent.post(&request.url);
            for (key, value) in &request.headers {
                call = call.header(key, value);
            }
            call.send(request.body.as_deref().unwrap_or(&[]))?
        }
        method => anyhow::bail!("unsupported HTTP method: {method}"),
    };
    Ok(response)
}

/// An agent whose every request is bounded; see the module docs. No idle connection is kept.
fn bounded_agent(proxy: Option<ureq::Proxy>, connect_timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(proxy)
        .timeout_resolve(Some(connect_timeout))
        .timeout_connect(Some(connect_timeout))
        .timeout_recv_response(Some(connect_timeout))
        .timeout_per_read(Some(connect_timeout.max(Duration::from_secs(30))))
        .timeout_per_write(Some(connect_timeout.max(Duration::from_secs(30))))
        .max_idle_connections(0)
        .build()
        .into()
}

/// One request on `agent`, off the runtime's workers (ureq blocks).
async fn execute_on(agent: ureq::Agent, request: HttpRequest) -> anyhow::Result<HttpResponse> {
    tokio::task::spawn_blocking(move || {
        let response = request_on(&agent, request)?;
        let status_code = response.status().as_u16();
        let body = response.into_body().read_to_vec()?;
        Ok(HttpResponse { status_code, body })
    })
    .await?
}

/// One request on `agent`, its body streamed; called from a blocking context.
fn stream_on(agent: &ureq::Agent, request: HttpRequest) -> anyhow::Result<StreamingHttpResponse> {
    let response = request_on(agent, request)?;
    Ok(StreamingHttpResponse {
        status_code: response.status().as_u16(),
        body: Box::new(response.into_body().into_reader()),
    })
}

/// The link's shared HTTP client for sessions without a proxy: ureq, bounded like
/// [`SessionHttp`], honouring the usual proxy environment variables (`HTTPS_PROXY`,
/// `ALL_PROXY`) as wa-rs's stock client does.
pub struct BoundedHttp {
    agent: ureq::Agent,
}

impl BoundedHttp {
    /// A client whose connects and response waits are bounded by `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            agent: bounded_agent(ureq::Proxy::try_from_env(), connect_timeout),
        }
    }
}

#[async_trait]
impl HttpClient for BoundedHttp {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        execute_on(self.agent.clone(), request).await
    }

    fn execute_streaming(&self, request: HttpRequest) -> anyhow::Result<StreamingHttpResponse> {
        stream_on(&self.agent, request)
    }
}

#[async_trait]
impl HttpClient for SessionHttp {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        match self.proxy.get() {
            Some(proxy) => execute_on(self.agent(&proxy)?, request).await,
            None => self.direct.execute(request).await,
        }
    }

    fn execute_streaming(&self, request: HttpRequest) -> anyhow::Result<StreamingHttpResponse> {
        // Called from a blocking context already (wa-rs's streaming download).
        match self.proxy.get() {
            Some(proxy) => stream_on(&self.agent(&proxy)?, request),
            None => self.direct.execute_streaming(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Counts the requests that did not go through a proxy.
    struct Direct(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl HttpClient for Direct {
        async fn execute(&self, _request: HttpRequest) -> anyhow::Result<HttpResponse> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(HttpResponse {
                status_code: 204,
                body: Vec::new(),
            })
        }
    }

    /// Reads one HTTP head (through the blank line).
    async fn read_head(socket: &mut tokio::net::TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// A one-request HTTP CONNECT proxy that is also the target behind it: accepts the
    /// tunnel, answers the request inside it with 200 "via", and hands back both heads.
    async fn one_request_proxy() -> (String, tokio::task::JoinHandle<(String, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let connect = read_head(&mut socket).await;
            socket
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .unwrap();
            let inner = read_head(&mut socket).await;
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nvia")
                .await
                .unwrap();
            (connect, inner)
        });
        (format!("http://gw:secret@{addr}"), task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_follow_the_sessions_proxy() {
        let direct = Arc::new(Direct(Default::default()));
        let setting = Arc::new(ProxySetting::default());
        let http = SessionHttp::new(direct.clone(), setting.clone(), Duration::from_secs(5));

        // No proxy: the shared client.
        let answer = http
            .execute(HttpRequest::get("http://198.51.100.1/sw.js"))
            .await
            .unwrap();
        assert_eq!(answer.status_code, 204);
        assert_eq!(direct.0.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A proxy: the request goes through its tunnel (with its credentials), never
        // straight to the target or through the shared client.
        let (url, proxy) = one_request_proxy().await;
        setting.set(Some(ProxyUrl::parse(&url).unwrap()));
        let answer = http
            .execute(HttpRequest::get("http://198.51.100.1/sw.js"))
            .await
            .unwrap();
        assert_eq!(
            (answer.status_code, answer.body.as_slice()),
            (200, &b"via"[..])
        );
        let (connect, inner) = proxy.await.unwrap();
        assert!(
            connect.starts_with("CONNECT 198.51.100.1:80 HTTP/1.1\r\n"),
            "{connect}"
        );
        assert!(
            connect
                .to_ascii_lowercase()
                .contains("proxy-authorization: basic z3c6c2vjcmv0"),
            "{connect}"
        );
        assert!(inner.starts_with("GET /sw.js HTTP/1.1\r\n"), "{inner}");
        assert_eq!(direct.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A server that accepts, then never answers.
    async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (addr, hold)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_proxy_fails_the_request_instead_of_holding_it() {
        let (addr, hold) = silent_server().await;
        let setting = Arc::new(ProxySetting::default());
        setting.set(Some(ProxyUrl::parse(&format!("socks5h://{addr}")).unwrap()));
        let direct = Arc::new(Direct(Default::default()));
        let http = SessionHttp::new(direct, setting, Duration::from_millis(300));
        let request = http.execute(HttpRequest::get("https://web.whatsapp.com/sw.js"));
        // Bounded here only so that a regression fails instead of hanging the test run.
        let result = tokio::time::timeout(Duration::from_secs(20), request)
            .await
            .expect("the request gave up on its own");
        let error = result.unwrap_err().to_string();
        assert!(!error.is_empty());
        hold.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_proxy_a_silent_server_fails_the_request_too() {
        let (addr, hold) = silent_server().await;
        let http = BoundedHttp::new(Duration::from_millis(300));
        let request = http.execute(HttpRequest::get(format!("http://{addr}/sw.js")));
        // Bounded here only so that a regression fails instead of hanging the test run.
        let result = tokio::time::timeout(Duration::from_secs(20), request)
            .await
            .expect("the request gave up on its own");
        assert!(result.is_err());
        hold.abort();
    }
}
