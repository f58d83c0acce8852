//! The router: every route, the auth and metrics layers, and the routes that are not legacy
//! (QR images, sending, health, metrics, the OpenAPI document, the dashboard).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use warden_control::protocol::HealthView;

use crate::error::ApiError;
use crate::extract::{QueryOf, TokenPath};
use crate::state::AppState;
use crate::{auth, dashboard, events, legacy, messages, openapi, origin, qr};

/// One route of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The HTTP method.
    pub method: &'static str,
    /// The path template (`{token}` is the session token).
    pub path: &'static str,
    /// Whether the API key is checked (when one is configured).
    pub auth: bool,
    /// What it does, in one line.
    pub summary: &'static str,
}

const fn route(method: &'static str, path: &'static str, summary: &'static str) -> Route {
    Route {
        method,
        path,
        auth: true,
        summary,
    }
}

const fn public(method: &'static str, path: &'static str, summary: &'static str) -> Route {
    Route {
        method,
        path,
        auth: false,
        summary,
    }
}

/// Every route the gateway serves. The OpenAPI document is built from this table, and the
/// tests check that the router serves exactly these.
pub const ROUTES: [Route; 34] = [
    public("GET", "/", "The dashboard page"),
    public("GET", "/dashboard/app.js", "The dashboard's script"),
    public("GET", "/dashboard/style.css", "The dashboard's style sheet"),
    public(
        "GET",
        "/healthz",
        "Whether the supervisor answers, with counts per state",
    ),
    route("GET", "/metrics", "Prometheus metrics"),
    route("GET", "/openapi.json", "This API, as an OpenAPI 3 document"),
    route(
        "GET",
        "/events",
        "Server-sent events: current state first, then changes",
    ),
    route("POST", "/session", "Create a session (legacy)"),
    route("GET", "/sessions", "Every session (legacy)"),
    route(
        "GET",
        "/session/status/{token}",
        "One session's status (legacy)",
    ),
    route(
        "POST",
        "/session/start/{token}",
        "Start a session; answers with its QR code (legacy)",
    ),
    route(
        "POST",
        "/session/stop/{token}",
        "Stop a session, keeping its credentials",
    ),
    route(
        "POST",
        "/session/restart/{token}",
        "Restart a session, keeping its credentials (legacy)",
    ),
    route(
        "POST",
        "/session/refresh/{token}",
        "Ask for a new QR code (legacy)",
    ),
    route(
        "POST",
        "/session/logout/{token}",
        "Log out and delete the credentials",
    ),
    route(
        "DELETE",
        "/session/{token}",
        "Delete a session and its folder (legacy)",
    ),
    route(
        "POST",
        "/session/force-cleanup/{token}",
        "Close whatever is there, leave it stopped (legacy)",
    ),
    route(
        "POST",
        "/session/reset-reconnect/{token}",
        "Set the reconnect attempts to 0 (legacy)",
    ),
    route(
        "POST",
        "/session/proxy/{token}",
        "Set or clear a session's proxy (used from its next connection)",
    ),
    route(
        "GET",
        "/session/qr/{token}",
        "The QR code on show, as SVG, PNG or text",
    ),
    route(
        "POST",
        "/session/send/{token}",
        "Queue a text message (with an optional idempotency key)",
    ),
    route(
        "GET",
        "/session/message/{token}/{id}",
        "One outgoing message, by id or idempotency key",
    ),
    route(
        "POST",
        "/session/message/{token}/{id}/retry",
        "Queue a failed message again",
    ),
    route(
        "POST",
        "/session/message/{token}/{id}/cancel",
        "Cancel a queued or failed message",
    ),
    route(
        "GET",
        "/session/outbox/{token}",
        "A session's queued and failed messages",
    ),
    route(
        "GET",
        "/session/history/{token}",
        "A session's history (journal); ?follow=true streams new entries",
    ),
    route("GET", "/webhooks", "Every webhook with its counters"),
    route(
        "GET",
        "/webhooks/dead",
        "Events webhooks gave up on (?hook= for one)",
    ),
    route(
        "POST",
        "/webhooks/{hook}/redeliver",
        "Send a webhook's dead letters again (?seq= for one)",
    ),
    route(
        "POST",
        "/webhooks/{hook}/replay",
        "Send a webhook every event again from ?from=SEQ on",
    ),
    route(
        "POST",
        "/webhooks/{hook}/test",
        "Send a webhook.test event now",
    ),
    route(
        "DELETE",
        "/webhooks/{hook}",
        "Remove a session's own webhook",
    ),
    route(
        "POST",
        "/session/webhook/{token}",
        "Set a webhook for one session (body: a [[webhooks]] entry as JSON)",
    ),
    route(
        "POST",
        "/reap",
        "Reap stuck sessions now (what the janitor does)",
    ),
];

/// The route template a path matched, as a `'static` label for metrics.
fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    matched
        .and_then(|m| ROUTES.iter().find(|r| r.path == m.as_str()))
        .map_or("unmatched", |r| r.path)
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: counts every request in `/metrics` and logs it at debug level, by route
/// template (never the raw URI, whose query may hold the API key).
async fn track(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = route_label(request.extensions().get::<MatchedPath>());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let took = started.elapsed();
    app.metrics.record_http(method, route, status, took);
    tracing::debug!(
        method,
        route,
        status,
        took_us = took.as_micros() as u64,
        "http request"
    );
    response
}

/// Builds the router over `app`.
pub fn router(app: Arc<AppState>) -> Router {
    let protected = protected_routes()
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            crate::elsewhere::carry,
        ))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_key,
        ));
    Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/style.css", get(dashboard::style))
        .route("/healthz", get(healthz))
        .merge(protected)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), origin::guard))
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// The routes that answer requests other nodes carry here ([`crate::elsewhere`]): those that
/// need the key, without the check (the node that received the request did it).
pub(crate) fn local_router(app: Arc<AppState>) -> Router {
    protected_routes()
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// Every route that needs the API key.
fn protected_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/events", get(events::events))
        .route("/session", post(legacy::create))
        .route("/sessions", get(legacy::list))
        .route("/session/status/{token}", get(legacy::status))
        .route("/session/start/{token}", post(legacy::start))
        .route("/session/proxy/{token}", post(legacy::set_proxy))
        .route("/session/stop/{token}", post(legacy::stop))
        .route("/session/restart/{token}", post(legacy::restart))
        .route("/session/refresh/{token}", post(legacy::refresh))
        .route("/session/logout/{token}", post(legacy::logout))
        .route("/session/{token}", delete(legacy::delete))
        .route(
            "/session/force-cleanup/{token}",
            post(legacy::force_cleanup),
        )
        .route(
            "/session/reset-reconnect/{token}",
            post(legacy::reset_reconnect),
        )
        .route("/session/qr/{token}", get(qr_image))
        .route("/session/send/{token}", post(messages::send))
        .route("/session/message/{token}/{id}", get(messages::status))
        .route("/session/message/{token}/{id}/retry", post(messages::retry))
        .route(
            "/session/message/{token}/{id}/cancel",
            post(messages::cancel),
        )
        .route("/session/outbox/{token}", get(messages::outbox))
        .route("/session/history/{token}", get(crate::history::history))
        .route("/webhooks", get(crate::webhooks::list))
        .route("/webhooks/dead", get(crate::webhooks::dead))
        .route(
            "/webhooks/{hook}/redeliver",
            post(crate::webhooks::redeliver),
        )
        .route("/webhooks/{hook}/replay", post(crate::webhooks::replay))
        .route("/webhooks/{hook}/test", post(crate::webhooks::test))
        .route("/webhooks/{hook}", delete(crate::webhooks::remove))
        .route("/session/webhook/{token}", post(crate::webhooks::set))
        .route("/reap", post(reap))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

/// `GET /healthz`: 200 while the supervisor answers a ping in time, 503 otherwise.
async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    let ping = tokio::time::timeout(app.options.health_timeout, app.supervisor.ping()).await;
    let by_state = app.supervisor.counts();
    let (status, word) = match ping {
        Ok(Ok(())) => (StatusCode::OK, "ok"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let body = HealthView {
        status: word.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: app.started.elapsed().as_secs(),
        sessions: by_state.values().sum(),
        counts: by_state
            .iter()
            .map(|(state, n)| (state.as_str().to_owned(), *n))
            .collect(),
        nodes: Default::default(),
        incomplete: None,
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /metrics`.
async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let mut text = app.metrics.render(&app.supervisor.counts());
    crate::metrics::render_journal(&mut text, app.supervisor.journal_dropped());
    crate::metrics::render_timers(&mut text, app.supervisor.timers_queued());
    if let Some(webhooks) = &app.webhooks {
        webhooks.render_metrics(&mut text);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// `GET /openapi.json`.
async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

/// The query of `GET /session/qr/{token}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct QrQuery {
    /// `svg` (the default), `png` or `text`.
    pub format: Option<String>,
    /// The API key, for `<img src>` (checked by the auth layer).
    pub api_key: Option<String>,
}

/// `GET /session/qr/{token}`: the QR code on show.
async fn qr_image(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
    QueryOf(query): QueryOf<QrQuery>,
) -> Result<Response, ApiError> {
    let info = app.supervisor.status(&token)?;
    let Some(code) = info.qr.map(|qr| qr.code) else {
        let hint = match info.state {
            warden_core::SessionState::Connected => "it is connected, so it needs no QR code",
            _ => {
                "start it (POST /session/start/{token}) or ask for a new one (POST /session/refresh/{token})"
            }
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_qr",
            format!("session {token} shows no QR code ({}): {hint}", info.state),
        ));
    };
    let internal = |e: qr::QrError| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    };
    let (content_type, body) = match query.format.as_deref().unwrap_or("svg") {
        "svg" => (
            "image/svg+xml",
            qr::svg(&code).map_err(internal)?.into_bytes(),
        ),
        "png" => ("image/png", qr::png(&code).map_err(internal)?),
        "text" | "raw" => ("text/plain; charset=utf-8", code.into_bytes()),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown format {other:?}: use svg, png or text"
            )));
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}

/// `POST /reap`: reaps stuck sessions now.
async fn reap(State(app): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let reaped = app.supervisor.reap_now().await?;
    let reaped: Vec<_> = reaped
        .iter()
        .map(warden_control::protocol::ReapedView::from)
        .collect();
    Ok(Json(serde_json::json!({"success": true, "reaped": reaped})))
}
