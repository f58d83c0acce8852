//! Which browsers may talk to the gateway.
//!
//! - **Without an API key** (loopback only), any web page the operator opens could otherwise
//!   drive the gateway: a form or a `fetch` can send a POST to `localhost:3000` from another
//!   site, and a DNS-rebinding page can even read the answers. So the gateway answers only to
//!   requests addressed to a loopback name (`Host: localhost`, `127.0.0.1`, `[::1]`), and
//!   refuses browser requests from another origin (an `Origin` that is not the `Host`, or
//!   `Sec-Fetch-Site: cross-site`) with 403. curl and other programs send neither, and the
//!   dashboard is same-origin.
//! - **With an API key**, every request must prove it holds the key, so any origin may call:
//!   the gateway answers CORS preflights and adds `Access-Control-Allow-Origin`, so a frontend
//!   served elsewhere keeps working.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Whether `host` (a `Host` header: name or address, with an optional port) is this machine.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether the request comes from a browser page of another origin.
fn is_cross_origin(headers: &HeaderMap) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        return !authority.eq_ignore_ascii_case(host);
    }
    headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
}

/// Middleware: the policy above. Runs before the key check, so preflights need no key.
pub async fn guard(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if app.api_key.is_some() {
        return cors(request, next).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !is_loopback_host(host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "without an API key this gateway answers only to localhost, 127.0.0.1 or [::1]; \
             set an API key to reach it by another name",
        )
        .into_response();
    }
    if is_cross_origin(request.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "without an API key, browser requests from another origin are refused; open the \
             dashboard from this gateway, or set an API key (which also allows CORS)",
        )
        .into_response();
    }
    next.run(request).await
}

/// With a key: answers preflights and lets any origin read the answers.
async fn cors(request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, x-api-key, content-type"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        response
    } else {
        next.run(request).await
    };
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for (host, ok) in [
            ("localhost:3000", true),
            ("LOCALHOST", true),
            ("app.localhost:3000", true),
            ("127.0.0.1:3000", true),
            ("127.8.9.10", true),
            ("[::1]:3000", true),
            ("[::1]", true),
            ("evil.example:3000", false),
            ("192.168.1.5:3000", false),
            ("[2001:db8::1]:3000", false),
            ("", false),
        ] {
            assert_eq!(is_loopback_host(host), ok, "{host}");
        }
    }

    #[test]
    fn cross_origin_requests() {
        let check = |pairs: &[(&str, &str)], expected: bool| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(
                    axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            assert_eq!(is_cross_origin(&headers), expected, "{pairs:?}");
        };
        check(&[("host", "localhost:3000")], false);
        check(
            &[
                ("host", "localhost:3000"),
                ("origin", "http://localhost:3000"),
            ],
            false,
        );
        check(
            &[
                ("host", "localhost:3000"),
                ("origin", "http://evil.example"),
            ],
            true,
        );
        check(
            &[
                ("host", "localhost:3000"),
                ("origin", "http://localhost:5173"),
            ],
            true,
        );
        check(&[("host", "localhost:3000"), ("origin", "null")], true);
        check(
            &[("host", "localhost:3000"), ("sec-fetch-site", "cross-site")],
            true,
        );
        check(
            &[
                ("host", "localhost:3000"),
                ("sec-fetch-site", "same-origin"),
            ],
            false,
        );
    }
}
