//! A webhook receiver that verifies warden's signatures: the Standard Webhooks recipe, written
//! out here on purpose (no warden code), so it can be copied into any receiver.
//!
//! ```text
//! WEBHOOK_SECRET=whsec_... cargo run -p warden-webhooks --example webhook_receiver -- 127.0.0.1:8080
//! ```
//!
//! and in daemon.toml:
//!
//! ```toml
//! [[webhooks]]
//! url = "http://127.0.0.1:8080/hooks/whatsapp"
//! secret = "whsec_..."
//! events = ["*"]
//! allow_private = true   # loopback
//! ```
//!
//! For each request it checks, in order:
//! 1. `webhook-timestamp` is within 5 minutes of now (replayed requests are refused);
//! 2. `webhook-signature` holds `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
//!    the key being the base64-decoded part of the secret after `whsec_` (compared in
//!    constant time);
//! 3. `webhook-id` was not seen before (warden delivers at least once: a retry, a replay or a
//!    restart may send an event again, always with the same id).
//!
//! It answers 204 when all hold (and prints the event), 401 when the signature or the time is
//! wrong, and 200 for a duplicate (so that warden stops sending it).

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

/// How far a timestamp may be from now.
const TOLERANCE_SECS: i64 = 300;
/// How many ids are remembered to drop duplicates.
const REMEMBERED: usize = 100_000;

/// The ids seen, oldest first, bounded.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// Records `id`; false when it was seen already.
    fn first_time(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

/// Whether the request's signature and timestamp are right.
fn verified(key: &[u8], id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if (now - ts).abs() > TOLERANCE_SECS {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    // Several space-separated signatures may come (during a secret rotation): any may match.
    signatures.split(' ').any(|one| {
        one.strip_prefix("v1,")
            .and_then(|b64| STANDARD.decode(b64).ok())
            .is_some_and(|given| mac.clone().verify_slice(&given).is_ok())
    })
}

async fn handle(
    key: Arc<Vec<u8>>,
    seen: Arc<Mutex<Seen>>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(answer(StatusCode::BAD_REQUEST)),
    };
    if !verified(&key, &id, &timestamp, &signature, &body) {
        eprintln!("refused {id:?}: bad signature or timestamp");
        return Ok(answer(StatusCode::UNAUTHORIZED));
    }
    if !seen.lock().unwrap().first_time(&id) {
        return Ok(answer(StatusCode::OK)); // a duplicate: already handled
    }
    println!("{id} {}", String::from_utf8_lossy(&body));
    Ok(answer(StatusCode::NO_CONTENT))
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("WEBHOOK_SECRET").map_err(|_| "set WEBHOOK_SECRET=whsec_...")?;
    let key = STANDARD.decode(
        secret
            .strip_prefix("whsec_")
            .ok_or("the secret starts with whsec_")?,
    )?;
    let key = Arc::new(key);
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on http://{addr}");
    let seen = Arc::new(Mutex::new(Seen::default()));
    loop {
        let (stream, _) = listener.accept().await?;
        let (key, seen) = (key.clone(), seen.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                handle(key.clone(), seen.clone(), request)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
