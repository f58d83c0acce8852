//! The API key check. With a key configured, a request must carry it as
//! `Authorization: Bearer KEY` or `X-Api-Key: KEY`. Browsers cannot put headers on an
//! `EventSource` or an `<img>`, so `GET /events` and `GET /session/qr/{token}` also take
//! `?api_key=KEY`. The comparison takes the same time wherever the keys differ.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Whether two keys are equal, in time that depends only on their lengths.
pub fn keys_match(presented: &[u8], expected: &[u8]) -> bool {
    presented.ct_eq(expected).into()
}

/// The key a request presents, if any: the `Authorization` bearer token, else `X-Api-Key`,
/// else (only where headers cannot be set) the `api_key` query parameter.
fn presented(method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<String> {
    // A bearer token wins; any other Authorization (e.g. a proxy's Basic auth) is not ours,
    // and X-Api-Key may still carry the key.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    if bearer.is_some() {
        return bearer;
    }
    if let Some(value) = headers.get("x-api-key") {
        return value.to_str().ok().map(|v| v.trim().to_owned());
    }
    let path = uri.path();
    let query_allowed =
        *method == Method::GET && (path == "/events" || path.starts_with("/session/qr/"));
    if query_allowed {
        let Query(query) = Query::<HashMap<String, String>>::try_from_uri(uri).ok()?;
        return query.get("api_key").cloned();
    }
    None
}

/// Middleware: lets the request through when no key is configured or when it carries the
/// key; answers 401 otherwise.
pub async fn require_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.api_key else {
        return next.run(request).await;
    };
    let ok = presented(request.method(), request.uri(), request.headers())
        .is_some_and(|key| keys_match(key.as_bytes(), expected.as_bytes()));
    if ok {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn check(method: Method, uri: &str, headers: &[(&str, &str)], expected: Option<&str>) {
        let uri: Uri = uri.parse().unwrap();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        assert_eq!(
            presented(&method, &uri, &map).as_deref(),
            expected,
            "{method} {uri} {headers:?}"
        );
    }

    #[test]
    fn the_key_is_found_where_it_may_be() {
        check(Method::GET, "/sessions", &[], None);
        check(
            Method::GET,
            "/sessions",
            &[("authorization", "Bearer k1")],
            Some("k1"),
        );
        check(
            Method::GET,
            "/sessions",
            &[("authorization", "bearer  k1 ")],
            Some("k1"),
        );
        check(
            Method::GET,
            "/sessions",
            &[("authorization", "Basic k1")],
            None,
        );
        check(
            Method::GET,
            "/sessions",
            &[("authorization", "Basic dXNlcjpwdw=="), ("x-api-key", "k8")],
            Some("k8"),
        );
        check(Method::GET, "/sessions", &[("x-api-key", "k2")], Some("k2"));
        check(Method::GET, "/events?api_key=k%203", &[], Some("k 3"));
        check(Method::GET, "/events?token=a&api_key=k4", &[], Some("k4"));
        check(
            Method::GET,
            "/session/qr/t?api_key=k5&format=png",
            &[],
            Some("k5"),
        );
        check(Method::GET, "/sessions?api_key=k6", &[], None);
        check(Method::POST, "/session/start/t?api_key=k7", &[], None);
    }

    #[test]
    fn keys_compare_exactly() {
        assert!(keys_match(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!keys_match(b"0123456789abcdeF", b"0123456789abcdef"));
        assert!(!keys_match(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!keys_match(b"", b"0123456789abcdef"));
    }
}
