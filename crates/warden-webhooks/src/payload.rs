//! What a delivery carries: the event id, the body and the headers.

use serde_json::{Map, Value, json};
use warden_store::JournalEntry;

use crate::secret::Secret;
use crate::sign::signature;

/// The id of the event made from journal entry `seq` of the database `identity`: the same
/// for every attempt and every replay, so receivers can drop duplicates.
pub fn event_id(identity: &str, seq: i64) -> String {
    format!("evt_{identity}_{seq}")
}

/// The time of Unix milliseconds, as RFC 3339.
fn rfc3339(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The body of the event made from `entry`: `{"type", "timestamp", "data"}`, with
/// `data.token` naming the session, `data.seq` the entry, `data.repeats` how many times it
/// happened in a row; `recent` (for `session.status`) the transitions before it.
pub fn body(entry: &JournalEntry, recent: &[JournalEntry]) -> String {
    let mut data = match serde_json::from_str::<Value>(&entry.data) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    data.insert("token".into(), json!(entry.token));
    data.insert("seq".into(), json!(entry.seq));
    data.insert("repeats".into(), json!(entry.repeats));
    if entry.repeats > 1 {
        data.insert("first_at".into(), json!(rfc3339(entry.first_at)));
    }
    if entry.kind == "session.status" {
        let recent: Vec<Value> = recent
            .iter()
            .map(|e| {
                let d: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
                json!({
                    "from": d.get("from"), "to": d.get("to"), "reason": d.get("reason"),
                    "at": rfc3339(e.at), "repeats": e.repeats,
                })
            })
            .collect();
        data.insert("recent".into(), Value::Array(recent));
    }
    json!({ "type": entry.kind, "timestamp": rfc3339(entry.at), "data": data }).to_string()
}

/// The body of a `webhook.test` event.
pub fn test_body(hook: &str, now_ms: i64) -> String {
    json!({
        "type": "webhook.test",
        "timestamp": rfc3339(now_ms),
        "data": { "webhook": hook, "message": "a test event from warden" },
    })
    .to_string()
}

/// The Standard Webhooks headers for one attempt at `timestamp` (Unix seconds).
pub fn headers(
    id: &str,
    timestamp: i64,
    body: &[u8],
    secret: Option<&Secret>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
    ];
    if let Some(secret) = secret {
        headers.push(("webhook-signature", signature(secret, id, timestamp, body)));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, kind: &str, data: &str, repeats: u32) -> JournalEntry {
        JournalEntry {
            seq,
            token: "shop1".into(),
            kind: kind.into(),
            data: data.into(),
            first_at: 1_000,
            at: 61_000,
            repeats,
        }
    }

    #[test]
    fn the_body_names_the_session_and_carries_recent_transitions() {
        let before = [entry(
            3,
            "session.status",
            r#"{"from":"stopped","to":"queued"}"#,
            1,
        )];
        let now = entry(
            7,
            "session.status",
            r#"{"from":"connecting","to":"backing_off","reason":"timed_out"}"#,
            4,
        );
        let body: Value = serde_json::from_str(&body(&now, &before)).unwrap();
        assert_eq!(body["type"], "session.status");
        assert_eq!(body["timestamp"], "1970-01-01T00:01:01.000Z");
        assert_eq!(body["data"]["token"], "shop1");
        assert_eq!(body["data"]["reason"], "timed_out");
        assert_eq!(body["data"]["repeats"], 4);
        assert_eq!(body["data"]["first_at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(body["data"]["recent"][0]["to"], "queued");
        let message = entry(9, "message", r#"{"text":"hi"}"#, 1);
        let sent: Value = serde_json::from_str(&super::body(&message, &[])).unwrap();
        assert_eq!(sent["data"]["text"], "hi");
        assert!(sent["data"].get("recent").is_none());
        assert_eq!(event_id("ab12", 9), "evt_ab12_9");
    }

    #[test]
    fn unsigned_webhooks_get_no_signature_header() {
        let h = headers("evt_x_1", 5, b"{}", None);
        assert_eq!(h.len(), 2);
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let h = headers("evt_x_1", 5, b"{}", Some(&secret));
        assert!(h[2].1.starts_with("v1,"));
    }
}
