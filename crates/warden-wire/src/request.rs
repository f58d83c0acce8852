//! [`Request`]: one request line, parsed with an error that says what is wrong; and
//! [`RequestLine`], the request as a client writes it.

use serde::Serialize;
use serde_json::Value;

use crate::op::{OPS, Op};
use crate::reply::ErrorBody;

/// A parsed request line.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed back in the reply (`null` when absent).
    pub id: Value,
    /// What to do.
    pub op: Op,
}

impl Request {
    /// Parses one request line. On failure, returns the id (if one could be read) and the
    /// error to send back.
    pub fn parse(line: &str) -> Result<Self, (Value, ErrorBody)> {
        let value: Value = serde_json::from_str(line).map_err(|e| {
            (
                Value::Null,
                ErrorBody::bad_request(format!("malformed JSON: {e}")),
            )
        })?;
        let Value::Object(mut object) = value else {
            return Err((
                Value::Null,
                ErrorBody::bad_request("a request is a JSON object, like {\"op\":\"list\"}"),
            ));
        };
        let id = object.remove("id").unwrap_or(Value::Null);
        if !(id.is_null() || id.is_number() || id.is_string()) {
            return Err((
                Value::Null,
                ErrorBody::bad_request("\"id\" must be a number or a string"),
            ));
        }
        let op_name = match object.get("op") {
            Some(Value::String(name)) => name.clone(),
            Some(_) => return Err((id, ErrorBody::bad_request("\"op\" must be a string"))),
            None => {
                return Err((
                    id,
                    ErrorBody::bad_request(format!("missing \"op\"; one of: {}", OPS.join(", "))),
                ));
            }
        };
        if !OPS.contains(&op_name.as_str()) {
            return Err((
                id,
                ErrorBody::bad_request(format!(
                    "unknown op {op_name:?}; one of: {}",
                    OPS.join(", ")
                )),
            ));
        }
        match serde_json::from_value::<Op>(Value::Object(object)) {
            Ok(op) => Ok(Self { id, op }),
            Err(e) => Err((
                id,
                ErrorBody::bad_request(format!("invalid {op_name} request: {e}")),
            )),
        }
    }
}

/// The request as a client writes it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestLine<'a> {
    /// Echoed back in the reply.
    pub id: u64,
    /// The operation, flattened beside `id`.
    #[serde(flatten)]
    pub op: &'a Op,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::ErrorCode;
    use serde_json::json;

    fn check(line: &str, expected: Result<(Value, Op), (Value, ErrorCode, &str)>) {
        match (Request::parse(line), expected) {
            (Ok(request), Ok((id, op))) => {
                assert_eq!((request.id, request.op), (id, op), "{line}");
            }
            (Err((id, body)), Err((want_id, code, fragment))) => {
                assert_eq!((id, body.code), (want_id, code), "{line}: {}", body.message);
                assert!(
                    body.message.contains(fragment),
                    "{line}: {:?} lacks {fragment:?}",
                    body.message
                );
            }
            (got, want) => panic!("{line}: got {got:?}, wanted {want:?}"),
        }
    }

    #[test]
    fn requests_parse_or_explain_why_not() {
        check(
            r#"{"id":7,"op":"status","token":"shop1"}"#,
            Ok((
                json!(7),
                Op::Status {
                    token: "shop1".into(),
                },
            )),
        );
        check(r#"{"op":"list"}"#, Ok((Value::Null, Op::List {})));
        check(
            r#"{"id":"a","op":"restart","token":"t"}"#,
            Ok((
                json!("a"),
                Op::Restart {
                    token: "t".into(),
                    force: false,
                },
            )),
        );
        check(
            r#"{"id":1,"op":"start","token":"t","phone":"155"}"#,
            Ok((
                json!(1),
                Op::Start {
                    token: "t".into(),
                    phone: Some("155".into()),
                },
            )),
        );
        check(
            r#"{"op":"watch"}"#,
            Ok((Value::Null, Op::Watch { token: None })),
        );
        check(
            "{nope",
            Err((Value::Null, ErrorCode::BadRequest, "malformed JSON")),
        );
        check(
            "[1,2]",
            Err((Value::Null, ErrorCode::BadRequest, "JSON object")),
        );
        check(
            r#"{"id":{"x":1},"op":"list"}"#,
            Err((Value::Null, ErrorCode::BadRequest, "\"id\" must be")),
        );
        check(
            r#"{"id":3,"op":"explode"}"#,
            Err((json!(3), ErrorCode::BadRequest, "unknown op \"explode\"")),
        );
        check(
            r#"{"id":4}"#,
            Err((json!(4), ErrorCode::BadRequest, "missing \"op\"")),
        );
        check(
            r#"{"id":5,"op":"status"}"#,
            Err((json!(5), ErrorCode::BadRequest, "missing field `token`")),
        );
        check(
            r#"{"id":6,"op":"status","token":12}"#,
            Err((json!(6), ErrorCode::BadRequest, "invalid status request")),
        );
        check(
            r#"{"id":8,"op":"restart","token":"t","force":"yes"}"#,
            Err((json!(8), ErrorCode::BadRequest, "invalid restart request")),
        );
        check(
            r#"{"id":9,"op":"list","extra":1}"#,
            Err((json!(9), ErrorCode::BadRequest, "unknown field `extra`")),
        );
        check(
            r#"{"id":10,"op":7}"#,
            Err((json!(10), ErrorCode::BadRequest, "\"op\" must be a string")),
        );
    }

    #[test]
    fn every_op_name_is_known() {
        let t = || "t".to_string();
        let ops = [
            Op::Create {
                name: None,
                token: None,
                proxy: None,
            },
            Op::SetProxy {
                token: t(),
                proxy: None,
                reconnect: false,
            },
            Op::Start {
                token: t(),
                phone: None,
            },
            Op::Stop { token: t() },
            Op::Restart {
                token: t(),
                force: false,
            },
            Op::Logout { token: t() },
            Op::Delete { token: t() },
            Op::SendText {
                token: t(),
                to: t(),
                text: t(),
                key: None,
            },
            Op::List {},
            Op::Reap {},
            Op::Health {},
            Op::Watch { token: None },
            Op::Status { token: "t".into() },
            Op::RefreshQr { token: "t".into() },
            Op::ForceCleanup { token: "t".into() },
            Op::ResetReconnect { token: "t".into() },
            Op::Outbox {
                token: "t".into(),
                limit: None,
            },
            Op::MessageStatus {
                token: "t".into(),
                message: "k".into(),
            },
            Op::RetryMessage {
                token: "t".into(),
                message: "k".into(),
            },
            Op::CancelMessage {
                token: "t".into(),
                message: "k".into(),
            },
            Op::History {
                token: "t".into(),
                since: Some(3),
                limit: None,
                follow: true,
            },
            Op::Webhooks {},
            Op::WebhookDead {
                hook: None,
                limit: Some(5),
            },
            Op::WebhookRedeliver {
                hook: "h".into(),
                seq: None,
            },
            Op::WebhookReplay {
                hook: "h".into(),
                from: 1,
            },
            Op::WebhookTest { hook: "h".into() },
            Op::WebhookSet {
                token: "t".into(),
                url: "https://example.com/h".into(),
                secret: None,
                unsigned: true,
                events: None,
                allow_private: false,
                name: None,
            },
            Op::WebhookRemove { hook: "t:h".into() },
        ];
        let mut names: Vec<&str> = Vec::new();
        for op in ops {
            assert!(OPS.contains(&op.name()), "{}", op.name());
            let line = serde_json::to_value(&op).unwrap();
            assert_eq!(line["op"], op.name());
            names.push(op.name());
        }
        // Every op is listed once, and every listed name is an op.
        names.sort_unstable();
        let mut listed = OPS.to_vec();
        listed.sort_unstable();
        assert_eq!(names, listed);
    }

    #[test]
    fn request_lines_round_trip() {
        for key in [None, Some("order-42".to_string())] {
            let op = Op::SendText {
                token: "t".into(),
                to: "155".into(),
                text: "hi".into(),
                key,
            };
            let line = serde_json::to_string(&RequestLine { id: 3, op: &op }).unwrap();
            assert_eq!(Request::parse(&line).unwrap().op, op);
        }
        // An op's own fields never collide with the request's `id`.
        let op = Op::MessageStatus {
            token: "t".into(),
            message: "order-42".into(),
        };
        let line = serde_json::to_string(&RequestLine { id: 9, op: &op }).unwrap();
        let parsed = Request::parse(&line).unwrap();
        assert_eq!((parsed.id, parsed.op), (json!(9), op));
    }
}
