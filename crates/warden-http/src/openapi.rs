//! `GET /openapi.json`: an OpenAPI 3.0 document of every route in [`ROUTES`].

use serde_json::{Map, Value, json};
use warden_core::SessionState;

use crate::routes::{ROUTES, Route};

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema_ref(schema)}}})
}

fn error(description: &str) -> Value {
    json_response(description, "Error")
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn body(schema: &str, required: bool) -> Value {
    json!({"required": required, "content": {"application/json": {"schema": schema_ref(schema)}}})
}

/// The parameters, request body and success responses of one route.
fn details(route: &Route) -> (Vec<Value>, Option<Value>, Vec<(&'static str, Value)>) {
    let session = || vec![("200", json_response("The session", "SessionReply"))];
    match (route.method, route.path) {
        ("GET", "/") => (
            vec![],
            None,
            vec![(
                "200",
                json!({"description": "The dashboard", "content": {"text/html": {}}}),
            )],
        ),
        ("GET", "/dashboard/app.js") => (
            vec![],
            None,
            vec![(
                "200",
                json!({"description": "JavaScript", "content": {"text/javascript": {}}}),
            )],
        ),
        ("GET", "/dashboard/style.css") => (
            vec![],
            None,
            vec![(
                "200",
                json!({"description": "CSS", "content": {"text/css": {}}}),
            )],
        ),
        ("GET", "/healthz") => (
            vec![],
            None,
            vec![
                ("200", json_response("The supervisor answers", "Health")),
                (
                    "503",
                    json_response("The supervisor did not answer in time", "Health"),
                ),
            ],
        ),
        ("GET", "/metrics") => (
            vec![],
            None,
            vec![(
                "200",
                json!({"description": "Prometheus text format 0.0.4", "content": {"text/plain": {}}}),
            )],
        ),
        ("GET", "/openapi.json") => (
            vec![],
            None,
            vec![(
                "200",
                json!({"description": "This document", "content": {"application/json": {}}}),
            )],
        ),
        ("GET", "/events") => (
            vec![
                query(
                    "token",
                    "Only this session's events",
                    json!({"type": "string"}),
                ),
                query(
                    "api_key",
                    "The API key, for EventSource (which cannot send headers)",
                    json!({"type": "string"}),
                ),
            ],
            None,
            vec![
                (
                    "200",
                    json!({"description": "Server-sent events named watching, session, qr, pair_code, message, removed, closed; each data is a JSON EventLine", "content": {"text/event-stream": {"schema": schema_ref("EventLine")}}}),
                ),
                ("400", error("Invalid token")),
                ("404", error("No such session (in a cluster: on no node)")),
                (
                    "503",
                    error("In a cluster: the other nodes cannot be asked where the session is"),
                ),
            ],
        ),
        ("POST", "/session") => (vec![], Some(body("CreateBody", false)), session()),
        ("GET", "/sessions") => (
            vec![],
            None,
            vec![("200", json_response("Every session", "ListReply"))],
        ),
        ("POST", "/session/start/{token}") => (vec![], Some(body("StartBody", false)), session()),
        ("POST", "/session/proxy/{token}") => (vec![], Some(body("ProxyBody", false)), session()),
        ("POST", "/session/restart/{token}") => (
            vec![query(
                "force",
                "Restart even within the cooldown",
                json!({"type": "boolean"}),
            )],
            None,
            session(),
        ),
        ("DELETE", "/session/{token}") => (
            vec![],
            None,
            vec![("200", json_response("Deleted", "DeletedReply"))],
        ),
        ("GET", "/session/qr/{token}") => (
            vec![
                query(
                    "format",
                    "svg (default), png or text",
                    json!({"type": "string", "enum": ["svg", "png", "text"]}),
                ),
                query(
                    "api_key",
                    "The API key, for <img src> (which cannot send headers)",
                    json!({"type": "string"}),
                ),
            ],
            None,
            vec![(
                "200",
                json!({"description": "The QR code", "content": {
                    "image/svg+xml": {}, "image/png": {}, "text/plain": {}
                }}),
            )],
        ),
        ("POST", "/session/send/{token}") => (
            vec![],
            Some(body("SendBody", true)),
            vec![("200", json_response("Sent", "SentReply"))],
        ),
        ("GET", "/session/history/{token}") => (
            vec![
                query(
                    "since",
                    "Only entries after this seq; without it, the newest ones",
                    json!({"type": "integer"}),
                ),
                query(
                    "limit",
                    "At most this many (default 100, at most 1000)",
                    json!({"type": "integer"}),
                ),
                query(
                    "follow",
                    "Stream new entries as server-sent `history` events",
                    json!({"type": "boolean"}),
                ),
            ],
            None,
            vec![("200", json_response("The session's history", "History"))],
        ),
        ("GET", "/webhooks") => (
            vec![],
            None,
            vec![("200", json_response("Every webhook", "Webhooks"))],
        ),
        ("GET", "/webhooks/dead") => (
            vec![
                query("hook", "Only this webhook's", json!({"type": "string"})),
                query(
                    "limit",
                    "At most this many (default 100)",
                    json!({"type": "integer"}),
                ),
            ],
            None,
            vec![(
                "200",
                json_response("Dead letters, oldest first", "DeadLetters"),
            )],
        ),
        ("POST", "/webhooks/{hook}/redeliver") => (
            vec![query(
                "seq",
                "Only this journal entry's",
                json!({"type": "integer"}),
            )],
            None,
            vec![(
                "200",
                json_response("What was delivered and what failed again", "Redelivered"),
            )],
        ),
        ("POST", "/webhooks/{hook}/replay") => (
            vec![query(
                "from",
                "The first journal entry to send again (required)",
                json!({"type": "integer"}),
            )],
            None,
            vec![("200", json_response("The replay started", "Replaying"))],
        ),
        ("DELETE", "/webhooks/{hook}") => (
            vec![],
            None,
            vec![(
                "200",
                json!({"description": "Removed: {\"removed\": hook}", "content": {"application/json": {}}}),
            )],
        ),
        ("POST", "/session/webhook/{token}") => (
            vec![],
            Some(body("WebhookBody", true)),
            vec![(
                "200",
                json!({"description": "The webhook as listed (never its secret)", "content": {"application/json": {}}}),
            )],
        ),
        ("POST", "/webhooks/{hook}/test") => (
            vec![],
            None,
            vec![(
                "200",
                json_response("How the test event went", "WebhookTest"),
            )],
        ),
        ("POST", "/reap") => (
            vec![],
            None,
            vec![(
                "200",
                json!({"description": "What was reaped", "content": {"application/json": {}}}),
            )],
        ),
        _ => (vec![], None, session()),
    }
}

fn operation(route: &Route) -> Value {
    let (mut parameters, request_body, ok) = details(route);
    if route.path.contains("{token}") {
        parameters.insert(
            0,
            json!({"name": "token", "in": "path", "required": true,
                   "description": "The session token ([A-Za-z0-9_-]{1,64})",
                   "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}),
        );
    }
    let mut responses = Map::new();
    for (code, response) in ok {
        responses.insert(code.into(), response);
    }
    if route.auth {
        responses.insert("401".into(), error("Missing or wrong API key"));
    }
    if route.path.contains("{token}") {
        responses.insert("400".into(), error("Invalid token or malformed request"));
        responses.insert("404".into(), error("Session not found"));
        responses.insert(
            "409".into(),
            error("The operation does not fit the session's state"),
        );
        responses.insert("503".into(), error("The supervisor is unavailable"));
    } else if request_body.is_some() {
        responses.insert("400".into(), error("Malformed body"));
    }
    if route.path == "/session/restart/{token}" || route.path == "/session/proxy/{token}" {
        responses.insert(
            "429".into(),
            json!({"description": "Within the restart cooldown; see the Retry-After header",
                   "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}},
                   "content": {"application/json": {"schema": schema_ref("Error")}}}),
        );
    }
    let tag = if route.path.starts_with("/session") {
        "sessions"
    } else {
        "daemon"
    };
    let mut op = json!({
        "summary": route.summary,
        "operationId": operation_id(route),
        "tags": [tag],
        "parameters": parameters,
        "responses": responses,
    });
    if let Some(request_body) = request_body {
        op["requestBody"] = request_body;
    }
    if !route.auth {
        op["security"] = json!([]);
    }
    op
}

fn operation_id(route: &Route) -> String {
    let mut id = route.method.to_ascii_lowercase();
    for part in route.path.split(['/', '-', '.', '{', '}']) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

fn schemas() -> Value {
    let nullable = |t: &str| json!({"type": t, "nullable": true});
    json!({
        "Error": {"type": "object", "required": ["success", "error", "code", "message"], "properties": {
            "success": {"type": "boolean", "enum": [false]},
            "error": {"type": "string", "description": "The legacy gateway's short text, e.g. \"Session not found\""},
            "code": {"type": "string", "enum": ["bad_request", "invalid_token", "not_found", "conflict", "cooldown", "capacity", "unavailable", "internal", "unauthorized", "forbidden_host", "cross_origin", "no_route", "method_not_allowed", "no_qr", "too_large"]},
            "message": {"type": "string", "description": "What happened and what to do next"},
            "retry_after_secs": {"type": "integer", "description": "With cooldown: seconds to wait"}
        }},
        "SessionView": {"type": "object", "description": "warden's full view of a session (as on the control socket)", "properties": {
            "token": {"type": "string"}, "name": {"type": "string"},
            "state": {"type": "string", "enum": SessionState::ALL.map(SessionState::as_str)},
            "reason": nullable("string"), "desired": {"type": "string", "enum": ["running", "stopped"]},
            "attempts": {"type": "integer"}, "jid": nullable("string"), "account_name": nullable("string"),
            "created_at": {"type": "string", "format": "date-time"}, "state_since": {"type": "string", "format": "date-time"},
            "next_retry_at": nullable("string"), "banned_until": nullable("string"),
            "qr": {"type": "object", "nullable": true, "properties": {"code": {"type": "string"}, "expires_at": {"type": "string", "format": "date-time"}}},
            "pair_code": nullable("string"),
            "proxy": {"type": "string", "nullable": true, "description": "The session's own proxy, password masked"},
            "new_chats_paused_until": {"type": "string", "format": "date-time", "description": "Until when sends to new chats are paused after a 463 refusal (status only; absent when not paused)"},
            "counters": {"type": "object", "properties": {"connects": {"type": "integer"}, "disconnects": {"type": "integer"}, "restarts": {"type": "integer"}}},
            "why": {"type": "object", "description": "Why the last connection ended and what followed (absent if it never had one)", "properties": {
                "from": {"type": "string"}, "reason": nullable("string"), "at": {"type": "string", "format": "date-time"},
                "decision": {"type": "string", "description": "The state the session was put in"}, "next_retry_at": nullable("string")
            }}
        }},
        "Webhooks": {"type": "object", "properties": {"webhooks": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "url": {"type": "string"}, "events": {"type": "array", "items": {"type": "string"}},
            "signed": {"type": "boolean"}, "allow_private": {"type": "boolean"}, "delivered": {"type": "integer"},
            "retried": {"type": "integer"}, "dead": {"type": "integer"}, "queued": {"type": "integer"}
        }}}}},
        "DeadLetters": {"type": "object", "properties": {"dead": {"type": "array", "items": {"type": "object", "properties": {
            "hook": {"type": "string"}, "seq": {"type": "integer"}, "token": {"type": "string"}, "kind": {"type": "string"},
            "reason": {"type": "string"}, "attempts": {"type": "integer"}, "failed_at": {"type": "string", "format": "date-time"}
        }}}}},
        "Redelivered": {"type": "object", "properties": {"delivered": {"type": "array", "items": {"type": "integer"}},
            "failed": {"type": "array", "items": {"type": "object", "properties": {"seq": {"type": "integer"}, "reason": {"type": "string"}}}}}},
        "WebhookBody": {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string"}, "secret": {"type": "string", "description": "whsec_ + base64 of the key; required unless unsigned"},
            "unsigned": {"type": "boolean"}, "events": {"type": "array", "items": {"type": "string"}},
            "allow_private": {"type": "boolean"}, "name": {"type": "string"}, "timeout": {"type": "string"},
            "max_attempts": {"type": "integer"}, "backoff_base": {"type": "string"}, "backoff_cap": {"type": "string"},
            "concurrency": {"type": "integer"}
        }},
        "Replaying": {"type": "object", "properties": {"hook": {"type": "string"}, "from": {"type": "integer"}}},
        "WebhookTest": {"type": "object", "properties": {"hook": {"type": "string"}, "delivered": {"type": "boolean"}, "outcome": {"type": "string"}}},
        "History": {"type": "object", "properties": {
            "token": {"type": "string"},
            "entries": {"type": "array", "items": {"type": "object", "properties": {
                "seq": {"type": "integer", "description": "Increasing within the session"},
                "kind": {"type": "string", "enum": ["session.status", "session.qr", "session.pair_code", "message", "message.status"]},
                "data": {"type": "object", "description": "What happened; QR and pairing codes are left out"},
                "first_at": {"type": "string", "format": "date-time"}, "at": {"type": "string", "format": "date-time"},
                "repeats": {"type": "integer", "description": "How many times in a row (a storm, collapsed)"}
            }}}
        }},
        "LegacySession": {"type": "object", "properties": {
            "token": {"type": "string"}, "name": {"type": "string"},
            "status": {"type": "string", "enum": ["qr_generated", "pair_code_generated", "connected", "connecting", "logged_out", "disconnected"]},
            "session_status": {"type": "string", "description": "Same as status"},
            "isReady": {"type": "boolean", "description": "connectionStatus is connected"},
            "jid": nullable("string"), "userName": nullable("string"),
            "connectionStatus": {"type": "string", "description": "warden's state"},
            "qr": {"type": "string", "description": "The QR text, while one is on show"},
            "pairCode": {"type": "string", "description": "The pairing code, while one is on show"},
            "session": schema_ref("SessionView")
        }},
        "SessionReply": {"allOf": [schema_ref("LegacySession"), {"type": "object", "properties": {
            "success": {"type": "boolean"}, "message": {"type": "string"},
            "qrImage": {"type": "string", "description": "data:image/png;base64 URL of the QR (start and refresh)"}
        }}]},
        "ListReply": {"type": "object", "properties": {
            "success": {"type": "boolean"}, "total": {"type": "integer"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "sessions": {"type": "array", "items": schema_ref("LegacySession")}
        }},
        "DeletedReply": {"type": "object", "properties": {"success": {"type": "boolean"}, "message": {"type": "string"}, "token": {"type": "string"}}},
        "CreateBody": {"type": "object", "properties": {"name": {"type": "string"}, "token": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "proxy": {"type": "string", "description": "socks5://, socks5h:// or http:// URL, with optional user:password@"}}},
        "ProxyBody": {"type": "object", "properties": {"proxy": {"type": "string", "nullable": true, "description": "socks5://, socks5h:// or http:// URL, with optional user:password@; null clears it"}, "reconnect": {"type": "boolean", "description": "Restart a running session now through it (refused within the restart cooldown)"}}},
        "StartBody": {"type": "object", "properties": {"phone": {"type": "string", "description": "Link by pairing code to this number (digits with country code)"}}},
        "SendBody": {"type": "object", "required": ["to", "text"], "properties": {"to": {"type": "string", "description": "Phone number or JID"}, "text": {"type": "string"}}},
        "SentReply": {"type": "object", "properties": {"success": {"type": "boolean"}, "message": {"type": "string"}, "token": {"type": "string"}, "messageId": {"type": "string"}}},
        "Health": {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]}, "version": {"type": "string"}, "uptime_secs": {"type": "integer"}, "sessions": {"type": "integer"}, "counts": {"type": "object", "additionalProperties": {"type": "integer"}}}},
        "EventLine": {"type": "object", "required": ["event"], "properties": {
            "event": {"type": "string", "enum": ["session", "qr", "pair_code", "message", "message_status", "new_chats_paused", "removed", "history", "closed"]},
            "session": schema_ref("SessionView"), "token": {"type": "string"}, "code": {"type": "string"},
            "expires_in_secs": {"type": "integer"}, "message": {"type": "object"}, "reason": {"type": "string"}
        }}
    })
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in &ROUTES {
        let item = paths
            .entry(route.path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[route.method.to_ascii_lowercase()] = operation(route);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "warden HTTP gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Many WhatsApp Web sessions, supervised. The legacy gateway's routes answer in its field names; see docs/http-api.md."
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "tags": [{"name": "sessions"}, {"name": "daemon"}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}
            },
            "schemas": schemas()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_every_ref_resolves() {
        let doc = document();
        for route in &ROUTES {
            let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} missing", route.method, route.path);
            assert!(
                op["responses"]["200"].is_object(),
                "{} {}",
                route.method,
                route.path
            );
        }
        let text = doc.to_string();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling $ref {name}"
            );
        }
        assert_eq!(operation_id(&ROUTES[10]), "postSessionStartToken");
    }

    /// A session with every field set, so that every key is serialized.
    fn full_session() -> warden_core::SessionInfo {
        use std::time::{Duration, SystemTime};
        let now = SystemTime::now();
        warden_core::SessionInfo {
            token: warden_core::Token::parse("shop1").unwrap(),
            name: "Shop".into(),
            state: SessionState::WaitingForScan,
            reason: Some("why".into()),
            desired: warden_core::Desired::Running,
            attempts: 1,
            jid: Some("1555@s.whatsapp.net".into()),
            account_name: Some("Shop".into()),
            created_at: now,
            state_since: now,
            next_retry_at: Some(now),
            banned_until: Some(now),
            qr: Some(warden_core::QrCode {
                code: "2@abc".into(),
                expires_at: now + Duration::from_secs(20),
            }),
            pair_code: Some("ABCD-EFGH".into()),
            counters: warden_core::Counters::default(),
            proxy: Some("socks5://u:***@10.0.0.2:1080".into()),
            last_disconnect: Some(warden_core::LastDisconnect {
                from: SessionState::Connected,
                reason: Some("connection_lost".into()),
                at: now,
                decision: SessionState::BackingOff,
                next_retry_at: Some(now),
            }),
        }
    }

    fn keys(value: &Value) -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn the_documented_session_fields_are_the_served_ones() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let info = full_session();
        let view = warden_control::protocol::SessionView::from(&info)
            .with_pause(Some(std::time::SystemTime::now()));
        let served = serde_json::to_value(&view).unwrap();
        assert_eq!(keys(&served), keys(&schemas["SessionView"]["properties"]));
        let legacy = serde_json::to_value(crate::legacy::LegacySession::from(&info)).unwrap();
        assert_eq!(keys(&legacy), keys(&schemas["LegacySession"]["properties"]));
    }
}
