//! The session's end of the bounded inbound path: incoming messages are published to
//! subscribers, receipts move the outbox's messages forward. One task per connection; it ends
//! when the connection's last sink is gone and the queue is empty.

use tokio::sync::mpsc;

use super::{Detail, MessageEvent, Outbox};
use crate::lifecycle::Inbound;
use crate::token::Token;

/// Takes what `rx` brings until every sender is gone.
pub(crate) async fn consume(outbox: Outbox, token: Token, mut rx: mpsc::Receiver<Inbound>) {
    while let Some(item) = rx.recv().await {
        match item {
            Inbound::Message(message) => outbox.publish_incoming(&token, *message),
            Inbound::Receipt(receipt) => {
                let kind = receipt.kind;
                for id in receipt.ids {
                    // A receipt for a message sent by another client of the account is not
                    // in the outbox: nothing to do.
                    // Boxed: the task idles far more than it applies.
                    if let Err(e) = Box::pin(outbox.apply(
                        &token,
                        &id,
                        MessageEvent::Receipt(kind),
                        Detail::default(),
                    ))
                    .await
                    {
                        tracing::warn!(token = %token, id = %id, error = %e, "receipt not recorded");
                    }
                }
            }
        }
    }
}
