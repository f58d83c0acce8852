//! What every handler shares.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use warden_core::Supervisor;

use crate::metrics::Metrics;

/// Timings of the gateway that are not configuration keys: the defaults suit production;
/// tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// How long `POST /session/start/{token}` and `POST /session/refresh/{token}` wait for a QR
    /// code, a login or a final state before answering `connecting`.
    pub start_wait: Duration,
    /// How long `/healthz` waits for the supervisor to answer a ping.
    pub health_timeout: Duration,
    /// How long open requests may take to finish once shutdown begins; then they are dropped.
    pub shutdown_grace: Duration,
    /// How often an idle event stream sends a keep-alive comment.
    pub keep_alive: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            start_wait: Duration::from_secs(30),
            health_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// The state behind every handler.
pub struct AppState {
    /// The supervisor every route drives.
    pub supervisor: Supervisor,
    /// The webhooks, for `/webhooks...` and `/metrics` (none: no webhook is configured).
    pub webhooks: Option<Arc<warden_webhooks::Webhooks>>,
    /// The key requests must carry; `None`: no check. Never logged.
    pub api_key: Option<String>,
    /// The counters behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Timings.
    pub options: ServeOptions,
    /// Cancelled when shutdown begins: event streams and waits end on it, so a graceful
    /// shutdown never waits for a client that would keep a stream open forever.
    pub shutdown: CancellationToken,
    /// When the gateway started, for `/healthz`'s uptime.
    pub started: Instant,
    /// In a cluster: carries requests about sessions other nodes run to them.
    pub elsewhere: Option<Arc<dyn crate::elsewhere::Elsewhere>>,
    /// The largest request body taken (`[http] max_body_bytes`).
    pub max_body_bytes: usize,
}
