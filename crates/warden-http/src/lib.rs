//! # warden-http: the HTTP gateway in front of a warden supervisor
//!
//! The daemon mounts it when `[http] enabled` (the default): it binds a [`TcpListener`] on
//! [`HttpConfig::bind`] and calls [`serve`] until shutdown. What it serves:
//!
//! - the legacy Node.js gateway's routes, with its JSON field names, so the legacy guide's curl
//!   commands and an existing frontend keep working ([`legacy`]);
//! - QR codes as SVG, PNG or text, and reaping ([`routes`]);
//! - sending, one message's status, a session's outbox, retry and cancel ([`messages`]);
//! - `GET /events`, server-sent events: current state first, then changes ([`events`]);
//! - `GET /metrics` in the Prometheus text format ([`metrics`]) and `GET /healthz`;
//! - `GET /openapi.json` ([`openapi`]) and a dashboard at `/` (no build step, embedded).
//!
//! With an API key set, every route but `/healthz` and the dashboard's static files needs it
//! ([`auth`]), and any origin may call (CORS); without one, only same-origin requests to a
//! loopback name are served ([`origin`]). Every error answers in one JSON shape ([`error`]).
//! `docs/http-api.md` documents every route with a curl example.
//!
//! ```no_run
//! # async fn demo(supervisor: warden_core::Supervisor) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use warden_http::{HttpConfig, Metrics};
//! let config = HttpConfig::default();
//! config.validate()?;
//! let listener = tokio::net::TcpListener::bind(config.bind).await?;
//! let metrics = Arc::new(Metrics::new()); // also bumped by the control socket
//! warden_http::serve(listener, supervisor, config, metrics, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod config;
mod connections;
mod dashboard;
pub mod elsewhere;
pub mod error;
pub mod events;
mod extract;
pub mod history;
pub mod legacy;
pub mod listener;
pub mod messages;
pub mod metrics;
pub mod openapi;
pub mod origin;
pub mod qr;
pub mod routes;
mod state;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_core::Supervisor;
use warden_webhooks::Webhooks;

pub use config::{ConfigError, HttpConfig};
pub use elsewhere::{Elsewhere, HttpAnswer, HttpAsk, LocalHttp};
pub use error::ApiError;
pub use listener::CappedListener;
pub use metrics::Metrics;
pub use routes::{ROUTES, Route};
pub use state::ServeOptions;

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The `[http]` table is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener failed.
    #[error("the HTTP listener failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the gateway on `listener` until `shutdown` resolves, with the default
/// [`ServeOptions`]. See [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    supervisor: Supervisor,
    config: HttpConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(
        listener,
        supervisor,
        config,
        metrics,
        ServeOptions::default(),
        shutdown,
    )
    .await
}

/// Serves the gateway on `listener` until `shutdown` resolves.
///
/// Checks `config` first ([`HttpConfig::validate`]); `config.enabled` is the caller's to
/// honour (when it is false, do not bind at all). While serving, a task follows the
/// supervisor's events to keep `metrics` current. On shutdown, event streams end with a
/// `closed` event, open requests get [`ServeOptions::shutdown_grace`] to finish, and the
/// function returns; it does not stop the supervisor.
pub async fn serve_with(
    listener: TcpListener,
    supervisor: Supervisor,
    config: HttpConfig,
    metrics: Arc<Metrics>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_all(
        listener, supervisor, None, None, config, metrics, options, shutdown,
    )
    .await
}

/// [`serve`], with the webhook routes (`/webhooks...`) and metrics answered from `webhooks`,
/// and in a cluster the requests about sessions other nodes run carried to them
/// (`elsewhere`, see [`elsewhere`]).
pub async fn serve_with_webhooks(
    listener: TcpListener,
    supervisor: Supervisor,
    webhooks: Option<Arc<Webhooks>>,
    elsewhere: Option<Arc<dyn Elsewhere>>,
    config: HttpConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_all(
        listener,
        supervisor,
        webhooks,
        elsewhere,
        config,
        metrics,
        ServeOptions::default(),
        shutdown,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn serve_all(
    listener: TcpListener,
    supervisor: Supervisor,
    webhooks: Option<Arc<Webhooks>>,
    elsewhere: Option<Arc<dyn Elsewhere>>,
    config: HttpConfig,
    metrics: Arc<Metrics>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    let addr = listener.local_addr()?;
    let stopping = CancellationToken::new();
    let grace = options.shutdown_grace;
    let collector = tokio::spawn(metrics::collect(
        metrics.clone(),
        supervisor.clone(),
        stopping.clone(),
    ));
    let app = Arc::new(state::AppState {
        supervisor: supervisor.via("http"),
        webhooks,
        api_key: config.api_key.clone(),
        metrics,
        options,
        shutdown: stopping.clone(),
        started: Instant::now(),
        elsewhere,
        max_body_bytes: config.max_body_bytes,
    });
    tracing::info!(
        %addr,
        api_key = if config.api_key.is_some() { "required" } else { "none" },
        "HTTP gateway listening"
    );
    let listener = CappedListener::new(listener, config.max_connections, config.idle_timeout);
    let router =
        routes::router(app).layer(axum::extract::DefaultBodyLimit::max(config.max_body_bytes));
    let server = connections::serve(
        listener,
        router,
        config.header_read_timeout,
        stopping.clone(),
    );
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown => {
            stopping.cancel();
            match tokio::time::timeout(grace, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(%addr, "HTTP requests still open after the shutdown grace; dropping them");
                    Ok(())
                }
            }
        }
    };
    stopping.cancel();
    let _ = collector.await;
    tracing::info!(%addr, "HTTP gateway stopped");
    Ok(result?)
}
