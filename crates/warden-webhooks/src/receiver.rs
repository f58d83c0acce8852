//! A real HTTP receiver on loopback, for tests (feature `receiver`): it answers each request
//! as its script says (a status, maybe after a delay), records every request, and can be
//! stopped and started again on the same port. [`verify`] checks a signature with the
//! specification's recipe, apart from [`crate::sign`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`, if any.
    pub signature: Option<String>,
    /// The body, parsed.
    pub body: serde_json::Value,
    /// The body as sent.
    pub raw: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

/// How to answer one request.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// How long to wait before answering.
    pub delay: Duration,
}

/// An answer with `code`, at once.
pub fn status(code: u16) -> Answer {
    Answer {
        status: code,
        delay: Duration::ZERO,
    }
}

#[derive(Default)]
struct Script {
    answers: VecDeque<Answer>,
    /// Per session token: answers for that session's events first.
    by_token: Vec<(String, Answer)>,
}

/// The receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    got: mpsc::UnboundedReceiver<Received>,
    sender: mpsc::UnboundedSender<Received>,
    task: Option<tokio::task::JoinHandle<()>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    /// A receiver on a free loopback port that answers 200 unless scripted.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sender, got) = mpsc::unbounded_channel();
        let mut receiver = Self {
            addr,
            script: Arc::default(),
            got,
            sender,
            task: None,
            accepted: Arc::default(),
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&mut self, listener: TcpListener) {
        let script = self.script.clone();
        let sender = self.sender.clone();
        let accepted = self.accepted.clone();
        self.task = Some(tokio::spawn(async move {
            // Connections live in this set: stopping the receiver closes them too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                while connections.try_join_next().is_some() {}
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let script = script.clone();
                let sender = sender.clone();
                connections.spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let script = script.clone();
                            let sender = sender.clone();
                            async move {
                                let header = |name: &str| {
                                    request
                                        .headers()
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_owned)
                                };
                                let id = header("webhook-id").unwrap_or_default();
                                let timestamp = header("webhook-timestamp").unwrap_or_default();
                                let signature = header("webhook-signature");
                                let raw = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .unwrap()
                                    .to_bytes()
                                    .to_vec();
                                let body: serde_json::Value =
                                    serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
                                let token = body["data"]["token"].as_str().unwrap_or("").to_owned();
                                let answer = {
                                    let mut s = script.lock().unwrap();
                                    if let Some(i) =
                                        s.by_token.iter().position(|(t, _)| *t == token)
                                    {
                                        s.by_token.remove(i).1
                                    } else {
                                        s.answers.pop_front().unwrap_or(status(200))
                                    }
                                };
                                // Recorded on arrival: a sender that gives up before the answer
                                // drops the connection, and this task with it.
                                let _ = sender.send(Received {
                                    id,
                                    timestamp,
                                    signature,
                                    body,
                                    raw,
                                    status: answer.status,
                                });
                                tokio::time::sleep(answer.delay).await;
                                let mut response =
                                    hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                                *response.status_mut() =
                                    hyper::StatusCode::from_u16(answer.status).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    /// How many connections it accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers the next requests as `answers` say, in order (then 200).
    pub fn answer(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().answers.extend(answers);
    }

    /// Answers the next request about `token` with `answer`.
    pub fn answer_for(&self, token: &str, answer: Answer) {
        self.script
            .lock()
            .unwrap()
            .by_token
            .push((token.into(), answer));
    }

    /// The next request (panics after a minute without one).
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(60), self.got.recv())
            .await
            .expect("a request within a minute")
            .expect("receiver open")
    }

    /// Requests until `n` of them were answered 2xx.
    pub async fn until_delivered(&mut self, n: usize) -> Vec<Received> {
        let mut all = Vec::new();
        let mut ok = 0;
        while ok < n {
            let r = self.next().await;
            if (200..300).contains(&r.status) {
                ok += 1;
            }
            all.push(r);
        }
        all
    }

    /// Whatever arrived already, without waiting.
    pub fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(r) = self.got.try_recv() {
            out.push(r);
        }
        out
    }

    /// Stops listening and closes every open connection (new ones are refused).
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        self.serve(listener);
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Verifies a Standard Webhooks signature here, apart from the code that signs: the HMAC is
/// computed from the raw request with the spec's recipe.
pub fn verify(secret: &str, r: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", r.id, r.timestamp).as_bytes());
    mac.update(&r.raw);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    r.signature
        .as_deref()
        .is_some_and(|s| s.split(' ').any(|one| one == expected))
}
