//! In a cluster, a request about a session that another node runs is carried to that node
//! whole (method, path, query, body and content headers) and its response comes back whole:
//! every route with a `{token}` works against any node. The node that receives a request
//! checks its API key; the node that runs the session answers it with [`LocalHttp`] (the same
//! routes, without the key check, which was done).
//!
//! What carries it is the daemon's ([`Elsewhere`], over the cluster's database); a single
//! daemon has none, and answers every request itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use warden_core::Supervisor;
use warden_webhooks::Webhooks;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::{AppState, ServeOptions};

/// The request headers carried along: what the routes read. Never the API key.
const CARRIED: [HeaderName; 2] = [header::CONTENT_TYPE, header::ACCEPT];

/// An HTTP request carried to another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpAsk {
    /// The method.
    pub method: String,
    /// The path and query.
    pub uri: String,
    /// The carried headers ([`CARRIED`]).
    pub headers: Vec<(String, String)>,
    /// The body, base64.
    pub body: String,
}

/// The response to an [`HttpAsk`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: Vec<(String, String)>,
    /// The body, base64.
    pub body: String,
}

/// A boxed future, as [`Elsewhere`] returns.
pub type Carried<'a> =
    Pin<Box<dyn Future<Output = Option<Result<HttpAnswer, String>>> + Send + 'a>>;

/// Each other live node's answer to one request (`Err`: why it gave none), by node name; or
/// why no node could be asked.
pub type NodeAnswers = Result<Vec<(String, Result<HttpAnswer, String>)>, String>;

/// A boxed future of [`NodeAnswers`], as [`Elsewhere::on_every_node`] returns.
pub type FromEveryNode<'a> = Pin<Box<dyn Future<Output = NodeAnswers> + Send + 'a>>;

/// Carries requests to the node that runs a session, or to every node.
pub trait Elsewhere: Send + Sync {
    /// This node's name.
    fn me(&self) -> &str;

    /// Carries `ask`, about `token` (which this node does not run), to the node that runs it
    /// and returns its response. `None` when the cluster has no such session (this node's
    /// answer stands); `Err` with a message when no answer can come (saying whether the
    /// request may have been carried out).
    fn on_session<'a>(&'a self, token: &'a str, ask: HttpAsk) -> Carried<'a>;

    /// Asks every other live node `ask` (a read, such as `GET /sessions`), each answering
    /// for itself.
    fn on_every_node(&self, ask: HttpAsk) -> FromEveryNode<'_>;

    /// The same nodes as the control socket reaches them: what `GET /events` follows the
    /// other nodes' sessions with.
    fn as_peers(&self) -> Arc<dyn warden_control::Peers>;
}

impl HttpAsk {
    /// A `GET` of `uri`, with nothing else.
    pub fn get(uri: &str) -> Self {
        Self {
            method: "GET".into(),
            uri: uri.into(),
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

impl HttpAnswer {
    /// The body as JSON, when the answer is a success.
    pub fn json(&self) -> Option<serde_json::Value> {
        if !(200..300).contains(&self.status) {
            return None;
        }
        let body = STANDARD.decode(&self.body).ok()?;
        serde_json::from_slice(&body).ok()
    }
}

/// Routes with a `{token}` that any node answers itself: they read and write the shared
/// database (and a followed history streams for as long as the client listens).
const ANSWERED_HERE: [&str; 2] = ["/session/history/{token}", "/session/webhook/{token}"];

/// The token in `path`, if the route it matched (`template`) has one and must be answered by
/// the node that runs the session.
fn token_of<'a>(template: &str, path: &'a str) -> Option<&'a str> {
    if ANSWERED_HERE.contains(&template) {
        return None;
    }
    let at = template.split('/').position(|part| part == "{token}")?;
    path.split('/').nth(at).filter(|t| !t.is_empty())
}

/// A query name as the server reads it: `+` is a space, `%XX` a byte.
fn decoded(name: &str) -> String {
    let bytes = name.as_bytes();
    let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path and query to carry: the query without `api_key` (the key is checked where the
/// request arrived, and is never written anywhere).
fn carried_uri(path: &str, query: Option<&str>) -> String {
    let kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| decoded(pair.split('=').next().unwrap_or_default()) != "api_key")
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Middleware: a request about a session this node does not run goes to the node that runs
/// it, when there is one.
pub(crate) async fn carry(
    State(app): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(elsewhere) = app.elsewhere.clone() else {
        return next.run(request).await;
    };
    let token = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| token_of(m.as_str(), request.uri().path()))
        .map(str::to_owned);
    let Some(token) = token.filter(|t| app.supervisor.status(t).is_err()) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, app.max_body_bytes).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {} bytes", app.max_body_bytes),
        )
        .into_response();
    };
    let ask = HttpAsk {
        method: parts.method.to_string(),
        uri: carried_uri(parts.uri.path(), parts.uri.query()),
        headers: CARRIED
            .iter()
            .filter_map(|name| {
                let value = parts.headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect(),
        body: STANDARD.encode(&bytes),
    };
    match elsewhere.on_session(&token, ask).await {
        None => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Some(Ok(answer)) => response_of(answer),
        Some(Err(message)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).into_response()
        }
    }
}

fn response_of(answer: HttpAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let Ok(body) = STANDARD.decode(answer.body) else {
        return ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "the other node's answer did not decode; the request may have been carried out",
        )
        .into_response();
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.clear();
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.append(name, value);
        }
    }
    response
}

/// Answers the requests other nodes carry here, with this node's routes (no key check: the
/// node that received the request did it).
#[derive(Clone)]
pub struct LocalHttp {
    router: Router,
    max_body_bytes: usize,
    within: Duration,
}

impl LocalHttp {
    /// The routes over `supervisor` (and `webhooks`), counting into `metrics`; an answer that
    /// takes longer than `within` is given up (a gateway timeout).
    pub fn new(
        supervisor: Supervisor,
        webhooks: Option<Arc<Webhooks>>,
        metrics: Arc<Metrics>,
        max_body_bytes: usize,
        within: Duration,
    ) -> Self {
        let app = Arc::new(AppState {
            supervisor: supervisor.via("http"),
            webhooks,
            api_key: None,
            metrics,
            options: ServeOptions::default(),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            elsewhere: None,
            max_body_bytes,
        });
        Self {
            router: crate::routes::local_router(app),
            max_body_bytes,
            within,
        }
    }

    /// Answers `ask` here.
    pub async fn answer(&self, ask: HttpAsk) -> HttpAnswer {
        let failed = |status: StatusCode, message: String| HttpAnswer {
            status: status.as_u16(),
            headers: vec![("content-type".into(), "text/plain".into())],
            body: STANDARD.encode(message),
        };
        let Ok(method) = Method::from_bytes(ask.method.as_bytes()) else {
            return failed(
                StatusCode::BAD_REQUEST,
                "a method that did not parse".into(),
            );
        };
        let body = STANDARD.decode(ask.body).unwrap_or_default();
        let mut builder = Request::builder().method(method).uri(ask.uri);
        for (name, value) in &ask.headers {
            builder = builder.header(name, value);
        }
        let Ok(request) = builder.body(Body::from(body)) else {
            return failed(
                StatusCode::BAD_REQUEST,
                "a request that did not parse".into(),
            );
        };
        let mut router = self.router.clone();
        // Bounded: a response that does not end in time (none should) frees its slot.
        let answered = async {
            let Ok(response) = router.call(request).await;
            let (parts, body) = response.into_parts();
            (
                parts,
                to_bytes(body, self.max_body_bytes.max(16 << 20)).await,
            )
        };
        let Ok((parts, body)) = tokio::time::timeout(self.within, answered).await else {
            return failed(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the node that runs the session did not finish within {} s; the request \
                     may have been carried out",
                    self.within.as_secs()
                ),
            );
        };
        let Ok(bytes) = body else {
            return failed(
                StatusCode::BAD_GATEWAY,
                "the response was too large to carry".into(),
            );
        };
        HttpAnswer {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect(),
            body: STANDARD.encode(bytes),
        }
    }
}

/// `GET /sessions` across the cluster: this node's list (`mine`) and every other node's
/// answer, each session with its `node` (at the top and in `session`), ordered by token, the
/// totals recounted; `unanswered` names the nodes that did not answer (and why), and
/// `incomplete` says why the list is only this node's when no other could be asked.
pub(crate) fn merge_session_lists(
    me: &str,
    mine: serde_json::Value,
    gathered: NodeAnswers,
) -> serde_json::Value {
    use serde_json::{Value, json};
    let mark = |mut session: Value, node: &str| {
        session["node"] = json!(node);
        if session.get("session").is_some() {
            session["session"]["node"] = json!(node);
        }
        session
    };
    let sessions_of = |list: &Value| list["sessions"].as_array().cloned().unwrap_or_default();
    let mut sessions: Vec<Value> = sessions_of(&mine)
        .into_iter()
        .map(|s| mark(s, me))
        .collect();
    let mut unanswered = serde_json::Map::new();
    let mut incomplete = None;
    match gathered {
        Ok(answers) => {
            for (node, answer) in answers {
                match answer.map(|a| a.json()) {
                    Ok(Some(list)) => {
                        sessions.extend(sessions_of(&list).into_iter().map(|s| mark(s, &node)))
                    }
                    Ok(None) => {
                        unanswered.insert(node, json!("an answer that is not a list"));
                    }
                    Err(why) => {
                        unanswered.insert(node, json!(why));
                    }
                }
            }
        }
        Err(why) => incomplete = Some(format!("{why}: only this node's sessions")),
    }
    // Stable: a session seen twice (it moved while the lists were gathered) keeps one entry,
    // this node's first.
    sessions.sort_by(|a, b| a["token"].as_str().cmp(&b["token"].as_str()));
    sessions.dedup_by(|later, first| later["token"] == first["token"]);
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for s in &sessions {
        let state = s["connectionStatus"].as_str().unwrap_or("unknown");
        *counts.entry(state.to_owned()).or_default() += 1;
    }
    let mut merged = json!({
        "success": true,
        "total": sessions.len(),
        "counts": counts,
        "sessions": sessions,
    });
    if !unanswered.is_empty() {
        merged["unanswered"] = Value::Object(unanswered);
    }
    if let Some(why) = incomplete {
        merged["incomplete"] = json!(why);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_path_segment_where_the_route_has_it() {
        let cases = [
            (
                "/session/status/{token}",
                "/session/status/shop1",
                Some("shop1"),
            ),
            ("/session/{token}", "/session/shop1", Some("shop1")),
            (
                "/session/message/{token}/{id}/retry",
                "/session/message/shop1/m1/retry",
                Some("shop1"),
            ),
            ("/sessions", "/sessions", None),
            ("/webhooks/{hook}", "/webhooks/h1", None),
            // The shared database answers these anywhere.
            ("/session/history/{token}", "/session/history/shop1", None),
            ("/session/webhook/{token}", "/session/webhook/shop1", None),
        ];
        for (template, path, token) in cases {
            assert_eq!(token_of(template, path), token, "{template} {path}");
        }
    }

    #[test]
    fn the_api_key_is_never_carried() {
        let cases = [
            ("/session/qr/s1", None, "/session/qr/s1"),
            ("/session/qr/s1", Some("api_key=k3y"), "/session/qr/s1"),
            (
                "/session/qr/s1",
                Some("format=png&api_key=k3y"),
                "/session/qr/s1?format=png",
            ),
            (
                "/session/qr/s1",
                Some("api_key=k3y&format=svg"),
                "/session/qr/s1?format=svg",
            ),
            (
                "/session/outbox/s1",
                Some("limit=5"),
                "/session/outbox/s1?limit=5",
            ),
            ("/session/qr/s1", Some("api_key"), "/session/qr/s1"),
            // Encoded, as the server decodes it.
            (
                "/session/qr/s1",
                Some("api%5Fkey=k3y&format=png"),
                "/session/qr/s1?format=png",
            ),
            ("/session/qr/s1", Some("api%5fkey=k3y"), "/session/qr/s1"),
            ("/session/qr/s1", Some("%61pi_key=k3y"), "/session/qr/s1"),
            (
                "/session/qr/s1",
                Some("bad%zz=1"),
                "/session/qr/s1?bad%zz=1",
            ),
        ];
        for (path, query, carried) in cases {
            assert_eq!(carried_uri(path, query), carried, "{path} {query:?}");
        }
    }

    #[test]
    fn a_cluster_list_has_every_node_s_sessions_each_with_its_node() {
        use serde_json::json;
        let list = |tokens: &[(&str, &str)]| {
            json!({
                "success": true,
                "total": tokens.len(),
                "counts": {},
                "sessions": tokens.iter().map(|(t, state)| json!({
                    "token": t, "connectionStatus": state, "session": {"token": t}
                })).collect::<Vec<_>>(),
            })
        };
        let answer = |value: serde_json::Value| HttpAnswer {
            status: 200,
            headers: Vec::new(),
            body: STANDARD.encode(value.to_string()),
        };
        let merged = merge_session_lists(
            "a",
            list(&[("s3", "connected")]),
            Ok(vec![
                (
                    "b".into(),
                    Ok(answer(list(&[("s1", "connected"), ("s2", "stopped")]))),
                ),
                ("c".into(), Err("node c did not answer".into())),
            ]),
        );
        let seen: Vec<(&str, &str, &str)> = merged["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["token"].as_str().unwrap(),
                    s["node"].as_str().unwrap(),
                    s["session"]["node"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(seen, [("s1", "b", "b"), ("s2", "b", "b"), ("s3", "a", "a")]);
        assert_eq!(merged["total"], 3);
        assert_eq!(merged["counts"]["connected"], 2);
        assert_eq!(merged["unanswered"]["c"], "node c did not answer");
        assert!(merged.get("incomplete").is_none());

        let alone = merge_session_lists("a", list(&[("s3", "connected")]), Err("down".into()));
        assert_eq!(alone["total"], 1);
        assert_eq!(alone["incomplete"], "down: only this node's sessions");
    }
}
