//! A gateway on 127.0.0.1:0 in front of a real supervisor driven by the scripted link, and a
//! small HTTP client for it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use warden_core::scripted::{Script, ScriptedLink};
use warden_core::{
    AdmissionConfig, SessionEvent, SessionInfo, SessionState, Supervisor, SupervisorConfig,
};
use warden_http::{HttpConfig, Metrics, ServeError, ServeOptions};

/// The key of gateways started with one.
pub const KEY: &str = "test-key-0123456789abcdef";
/// The account the scripts log in as.
pub const JID: &str = "15551234567@s.whatsapp.net";
/// How long a test waits for anything before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How to start a gateway.
pub struct Setup {
    /// What every connection plays unless its token has scripts queued.
    pub default: Script,
    /// The API key, if any.
    pub key: Option<&'static str>,
    /// Adjusts the supervisor's configuration.
    pub adjust: fn(&mut SupervisorConfig),
    /// The gateway's timings.
    pub options: ServeOptions,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            default: Script::login(JID),
            key: None,
            adjust: |_| {},
            options: ServeOptions {
                start_wait: Duration::from_secs(5),
                health_timeout: Duration::from_secs(2),
                shutdown_grace: Duration::from_secs(2),
                keep_alive: Duration::from_secs(15),
            },
        }
    }
}

/// A running gateway.
pub struct Gateway {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The listening address.
    pub addr: std::net::SocketAddr,
    /// The scripted link behind the supervisor.
    pub link: ScriptedLink,
    /// The supervisor.
    pub supervisor: Supervisor,
    /// The gateway's counters.
    pub metrics: Arc<Metrics>,
    /// The key requests carry by default.
    pub key: Option<&'static str>,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A supervisor configuration for tests: no jitter, short timers, admission out of the way.
pub fn supervisor_config(dir: &std::path::Path) -> SupervisorConfig {
    let mut config = SupervisorConfig::new(dir.join("sessions"));
    config.policy.jitter = 0.0;
    config.policy.backoff_base = Duration::from_millis(20);
    config.policy.backoff_cap = Duration::from_millis(100);
    config.admission = AdmissionConfig {
        max_in_flight: 10_000,
        per_second: 1_000_000.0,
        burst: 10_000,
    };
    config.event_capacity = 1 << 14;
    config
}

/// A supervisor on the scripted link (in a temporary folder, kept alive by the returned guard)
/// and a TCP listener on a free loopback port, for tests that serve the gateway themselves.
pub async fn bare_supervisor_and_listener()
-> (Supervisor, tokio::net::TcpListener, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, _) = Supervisor::start(
        supervisor_config(dir.path()),
        Arc::new(ScriptedLink::default()),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (supervisor, listener, dir)
}

impl Gateway {
    /// Starts a supervisor and a gateway in front of it.
    pub async fn start(setup: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let link = ScriptedLink::new(setup.default);
        let mut config = supervisor_config(dir.path());
        (setup.adjust)(&mut config);
        let (supervisor, _) = Supervisor::start(config, Arc::new(link.clone()))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let http = HttpConfig {
            enabled: true,
            bind: addr,
            api_key: setup.key.map(str::to_owned),
            ..HttpConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(warden_http::serve_with(
            listener,
            supervisor.clone(),
            http,
            metrics.clone(),
            setup.options,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            base: format!("http://{addr}"),
            addr,
            link,
            supervisor,
            metrics,
            key: setup.key,
            client: reqwest::Client::builder()
                .timeout(PATIENCE)
                .build()
                .unwrap(),
            stop: Some(stop),
            served: Some(served),
            _dir: dir,
        }
    }

    /// A request carrying the gateway's key (if any) as a Bearer token.
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let auth = self.key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        self.call_with(method, path, body, &headers).await
    }

    /// A request with exactly these headers.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap().to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Opens an event stream (with the gateway's key as `?api_key=` when it has one).
    pub async fn events(&self, query: &str) -> Sse {
        self.sse(&format!("/events{query}")).await
    }

    /// Opens the event stream of `path` (with the gateway's key as `?api_key=`).
    pub async fn sse(&self, path_and_query: &str) -> Sse {
        let mut path = format!("{}{path_and_query}", self.base);
        if let Some(key) = self.key {
            path.push(if path_and_query.contains('?') {
                '&'
            } else {
                '?'
            });
            path.push_str(&format!("api_key={key}"));
        }
        let response = reqwest::Client::new().get(path).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Sse {
            response,
            buffer: String::new(),
        }
    }

    /// Stops the gateway and then the supervisor; the gateway must stop within its grace.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let served = self.served.take().unwrap();
        tokio::time::timeout(PATIENCE, served)
            .await
            .expect("the gateway stops in time")
            .unwrap()
            .unwrap();
        // A test may have stopped the supervisor already.
        let _ = self.supervisor.shutdown().await;
    }
}

/// A server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// Its name.
    pub name: String,
    /// Its data, as JSON.
    pub data: Value,
}

/// An open event stream.
pub struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    /// The next event; `None` once the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data).expect("event data is JSON");
                return Some(SseEvent { name, data });
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("an event in time")
                .expect("the stream reads")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Skips events until one matches.
    pub async fn until(&mut self, pred: impl Fn(&SseEvent) -> bool) -> SseEvent {
        loop {
            let event = self.next().await.expect("the stream goes on");
            if pred(&event) {
                return event;
            }
        }
    }
}

/// Waits (at most [`PATIENCE`]) for an update of `token` that matches `pred`.
pub async fn wait_for(
    events: &mut broadcast::Receiver<SessionEvent>,
    token: &str,
    pred: impl Fn(&SessionInfo) -> bool,
) -> SessionInfo {
    let waiting = async {
        loop {
            match events.recv().await {
                Ok(SessionEvent::Updated(info)) if info.token.as_str() == token && pred(&info) => {
                    return *info;
                }
                Ok(_) => {}
                Err(e) => panic!("event bus: {e}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap_or_else(|_| panic!("{token} never reached the awaited state"))
}

/// Waits for `token` to reach `state`.
pub async fn wait_state(
    events: &mut broadcast::Receiver<SessionEvent>,
    token: &str,
    state: SessionState,
) -> SessionInfo {
    wait_for(events, token, |info| info.state == state).await
}

/// Sends a request and reads the body only when it is not an event stream.
pub async fn status_only(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&'static str, String)],
) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, format!("{}{path}", gw.base));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let is_json = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
    let body = if is_json {
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
    } else {
        Value::Null
    };
    (status, body)
}
