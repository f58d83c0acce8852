//! The drain of one connected session: sends its queued messages one at a time, in order,
//! paced, each under its stored id, and records what the server said. It runs only while the
//! session is connected (its session actor starts it on `Connected` and aborts it when the
//! connection ends); a message whose send was cut short stays queued for the next connection.

use std::time::Duration;

use ractor::ActorRef;
use ractor::rpc::CallResult;
use tokio::time::Instant;

use super::{Detail, MessageEvent, Outbox, OutgoingMessage};
use crate::link::{LinkError, Outgoing, SendOutcome};
use crate::session::SessionMsg;
use crate::token::Token;

/// The longest wait before trying a failed send again.
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// The longest a send may take before the link is deemed stuck (the link bounds the wait for
/// the server's ack itself, by much less).
const LINK_BOUND: Duration = Duration::from_secs(180);
/// How long to wait before looking again when the database failed.
const DB_RETRY: Duration = Duration::from_secs(1);

/// Sends `token`'s queued messages through `session` until the connection ends.
pub(crate) async fn drain(outbox: Outbox, token: Token, session: ActorRef<SessionMsg>) {
    let waker = outbox.waker(&token);
    let pace = outbox.config().pace();
    // The pace holds across reconnects: a quick reconnect does not reset it.
    let mut last_send: Option<Instant> = outbox.last_send(&token);
    loop {
        // The pace is waited out before the next message is read, so what is sent is the
        // message as it is now (not one cancelled or failed during the wait).
        if let Some(last) = last_send {
            tokio::time::sleep_until(last + pace).await;
        }
        // Armed before looking, so a message queued while we look is not missed.
        let woken = waker.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // The heavy futures are boxed, so an idle drain (one per connected session) keeps
        // only its small waiting state, not room for a send.
        let message = match Box::pin(outbox.next_to_send(&token)).await {
            Ok(Some(message)) => message,
            Ok(None) => {
                // Messages to new chats may be waiting for a 463 pause to end.
                match outbox.pause_left(&token) {
                    Some(left) => {
                        tokio::select! {
                            () = &mut woken => {}
                            () = tokio::time::sleep(left) => {}
                        }
                    }
                    None => woken.await,
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(token = %token, error = %e, "cannot read the outbox");
                tokio::time::sleep(DB_RETRY).await;
                continue;
            }
        };
        last_send = Some(outbox.sending_now(&token));
        outbox.set_in_flight(&token, Some(&message.id));
        let sent = Box::pin(send(&outbox, &session, &message)).await;
        outbox.set_in_flight(&token, None);
        match sent {
            Sent::Next => {}
            Sent::Backoff(attempts) => {
                let wait = Duration::from_secs(1u64 << attempts.min(6)).min(BACKOFF_CAP);
                tokio::time::sleep(wait).await;
            }
            Sent::ConnectionOver => return,
        }
    }
}

/// What the drain does after one send.
enum Sent {
    Next,
    Backoff(u32),
    ConnectionOver,
}

async fn send(outbox: &Outbox, session: &ActorRef<SessionMsg>, message: &OutgoingMessage) -> Sent {
    let token = &message.token;
    let outgoing = Outgoing {
        id: message.id.clone(),
        to: message.to.clone(),
        text: message.text.clone(),
    };
    // The link bounds the wait for the server's ack; this bound only guards against a link
    // that never answers.
    let bound = LINK_BOUND;
    let result = session
        .call(
            |reply| SessionMsg::Send {
                message: outgoing,
                reply,
            },
            Some(bound),
        )
        .await;
    let result = match result {
        Ok(CallResult::Success(result)) => result,
        Ok(CallResult::Timeout) => Err(LinkError::Send(format!(
            "the connection gave no answer within {}",
            humantime::format_duration(bound)
        ))),
        // The session actor is gone: so is the connection.
        Ok(CallResult::SenderError) | Err(_) => return Sent::ConnectionOver,
    };
    let (event, detail) = match result {
        Ok(SendOutcome::Accepted) => (MessageEvent::Acked, Detail::default()),
        Ok(SendOutcome::Refused { code, until }) => {
            if code == 463 {
                outbox.pause_new_chats(token, until);
            }
            let reason = match code {
                463 => {
                    "refused by WhatsApp (463, reach-out timelock: too many new chats)".to_owned()
                }
                code => format!("refused by WhatsApp (code {code})"),
            };
            (
                MessageEvent::Refused,
                Detail {
                    reason: Some(reason),
                    code: Some(code),
                },
            )
        }
        Err(LinkError::NotConnected) => return Sent::ConnectionOver,
        Err(LinkError::InvalidRecipient(to)) => (
            MessageEvent::Rejected,
            Detail::reason(format!("invalid recipient {to:?}")),
        ),
        Err(e) => (
            MessageEvent::SendFailed { last: false },
            Detail::reason(e.to_string()),
        ),
    };
    match outbox.apply(token, &message.id, event, detail).await {
        Ok(Some(after))
            if matches!(event, MessageEvent::SendFailed { .. })
                && after.status == super::MessageStatus::Queued =>
        {
            tracing::info!(token = %token, id = %after.id, attempts = after.attempts, "send failed; will try again");
            Sent::Backoff(after.attempts)
        }
        Ok(_) => Sent::Next,
        Err(e) => {
            tracing::warn!(token = %token, id = %message.id, error = %e, "cannot record a send");
            Sent::Backoff(1)
        }
    }
}
