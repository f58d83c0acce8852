//! The webhook ops (`webhooks`, `webhook_dead`, `webhook_redeliver`, `webhook_replay`,
//! `webhook_test`) and the views of what [`warden_webhooks`] answers, shared with the HTTP
//! gateway.

use serde_json::Value;
use warden_core::Supervisor;
use warden_webhooks::{HookInfo, Outcome, Redelivered, WebhookConfig, WebhookError, Webhooks};

use crate::protocol::{
    DeadLetterView, DeadLettersView, ErrorBody, ErrorCode, FailedAgainView, Op, RedeliveredView,
    ReplayingView, Reply, WebhookRemovedView, WebhookTestView, WebhookView, WebhooksView,
};

/// How many dead letters a listing shows when the request says nothing.
pub const DEFAULT_DEAD: usize = 100;

/// The error body of a webhook error.
pub fn error(e: &WebhookError) -> ErrorBody {
    let code = match e {
        WebhookError::Unknown(_) => ErrorCode::NotFound,
        WebhookError::Stopped => ErrorCode::Unavailable,
        WebhookError::Config(_) => ErrorCode::BadRequest,
        WebhookError::Db(_) => ErrorCode::Internal,
    };
    ErrorBody::new(code, e.to_string())
}

/// Every webhook (none when the daemon has none).
pub fn list(webhooks: Option<&Webhooks>) -> WebhooksView {
    WebhooksView {
        webhooks: webhooks
            .map(|w| w.list().into_iter().map(list_one).collect())
            .unwrap_or_default(),
    }
}

fn millis_text(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The dead letters of `hook` (every webhook's with `None`).
pub async fn dead(
    webhooks: Option<&Webhooks>,
    hook: Option<&str>,
    limit: Option<usize>,
) -> Result<DeadLettersView, WebhookError> {
    let Some(webhooks) = webhooks else {
        return match hook {
            Some(hook) => Err(WebhookError::Unknown(hook.to_owned())),
            None => Ok(DeadLettersView { dead: Vec::new() }),
        };
    };
    let letters = webhooks
        .dead_letters(hook, limit.unwrap_or(DEFAULT_DEAD).clamp(1, 10_000))
        .await?;
    Ok(DeadLettersView {
        dead: letters
            .into_iter()
            .map(|d| DeadLetterView {
                hook: d.hook,
                seq: d.seq,
                token: d.token,
                kind: d.kind,
                reason: d.reason,
                attempts: d.attempts,
                failed_at: millis_text(d.failed_at),
            })
            .collect(),
    })
}

fn need<'a>(webhooks: Option<&'a Webhooks>, hook: &str) -> Result<&'a Webhooks, WebhookError> {
    webhooks.ok_or_else(|| WebhookError::Unknown(hook.to_owned()))
}

/// Sends `hook`'s dead letters again (only `seq`'s, if given).
pub async fn redeliver(
    webhooks: Option<&Webhooks>,
    hook: &str,
    seq: Option<i64>,
) -> Result<RedeliveredView, WebhookError> {
    let Redelivered { delivered, failed } = need(webhooks, hook)?.redeliver(hook, seq).await?;
    Ok(RedeliveredView {
        delivered,
        failed: failed
            .into_iter()
            .map(|(seq, reason)| FailedAgainView { seq, reason })
            .collect(),
    })
}

/// Sends `hook` every event from entry `from` on again.
pub async fn replay(
    webhooks: Option<&Webhooks>,
    hook: &str,
    from: i64,
) -> Result<ReplayingView, WebhookError> {
    need(webhooks, hook)?.replay(hook, from).await?;
    Ok(ReplayingView {
        hook: hook.to_owned(),
        from,
    })
}

/// Sends `hook` a test event.
pub async fn test(
    webhooks: Option<&Webhooks>,
    hook: &str,
) -> Result<WebhookTestView, WebhookError> {
    let outcome = need(webhooks, hook)?.test(hook).await?;
    Ok(WebhookTestView {
        hook: hook.to_owned(),
        delivered: matches!(outcome, Outcome::Status { code, .. } if (200..300).contains(&code)),
        outcome: outcome.text(),
    })
}

/// What `webhook_set` asks for.
pub struct SetRequest {
    /// The session.
    pub token: String,
    /// The webhook.
    pub config: WebhookConfig,
}

impl SetRequest {
    /// The request of a `webhook_set` op, if `op` is one.
    pub fn from_op(op: &Op) -> Option<Self> {
        let Op::WebhookSet {
            token,
            url,
            secret,
            unsigned,
            events,
            allow_private,
            name,
        } = op
        else {
            return None;
        };
        let mut config = WebhookConfig::new(url.clone());
        config.secret = secret.clone();
        config.unsigned = *unsigned;
        if let Some(events) = events {
            config.events = events.clone();
        }
        config.allow_private = *allow_private;
        config.name = name.clone();
        Some(Self {
            token: token.clone(),
            config,
        })
    }
}

/// Sets a webhook for one session; the session must exist.
pub async fn set(
    supervisor: &Supervisor,
    webhooks: Option<&Webhooks>,
    request: SetRequest,
) -> Result<WebhookView, ErrorBody> {
    supervisor
        .status(&request.token)
        .map_err(|e| ErrorBody::from(&e))?;
    let webhooks = webhooks
        .ok_or_else(|| ErrorBody::new(ErrorCode::Unavailable, "this daemon runs no webhooks"))?;
    let info = webhooks
        .set_for_session(&request.token, request.config)
        .await
        .map_err(|e| error(&e))?;
    Ok(list_one(info))
}

/// Removes a session's webhook.
pub async fn remove(
    webhooks: Option<&Webhooks>,
    hook: &str,
) -> Result<WebhookRemovedView, WebhookError> {
    need(webhooks, hook)?.remove_for_session(hook).await?;
    Ok(WebhookRemovedView {
        removed: hook.to_owned(),
    })
}

fn list_one(h: HookInfo) -> WebhookView {
    WebhookView {
        name: h.name,
        token: h.token,
        url: h.url,
        events: h.events,
        signed: h.signed,
        allow_private: h.allow_private,
        delivered: h.delivered,
        retried: h.retried,
        dead: h.dead,
        queued: h.queued,
    }
}

/// Answers a webhook op; `None` when `op` is not one.
pub(crate) async fn handle(
    supervisor: &Supervisor,
    webhooks: Option<&Webhooks>,
    id: Value,
    op: &Op,
) -> Option<Reply> {
    fn reply<T: serde::Serialize>(id: Value, result: Result<T, WebhookError>) -> Reply {
        match result {
            Ok(view) => Reply::ok(id, view),
            Err(e) => Reply::err(id, error(&e)),
        }
    }
    Some(match op {
        Op::Webhooks {} => Reply::ok(id, list(webhooks)),
        Op::WebhookDead { hook, limit } => reply(id, dead(webhooks, hook.as_deref(), *limit).await),
        Op::WebhookRedeliver { hook, seq } => reply(id, redeliver(webhooks, hook, *seq).await),
        Op::WebhookReplay { hook, from } => reply(id, replay(webhooks, hook, *from).await),
        Op::WebhookTest { hook } => reply(id, test(webhooks, hook).await),
        Op::WebhookRemove { hook } => reply(id, remove(webhooks, hook).await),
        Op::WebhookSet { .. } => {
            let request = SetRequest::from_op(op).expect("a webhook_set op");
            match set(supervisor, webhooks, request).await {
                Ok(view) => Reply::ok(id, view),
                Err(body) => Reply::err(id, body),
            }
        }
        _ => return None,
    })
}
