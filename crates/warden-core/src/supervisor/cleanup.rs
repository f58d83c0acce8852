//! The deletions that run off the supervisor's loop, once no connection can hold what they
//! delete; each reports back with `CleanupDone`.

use ractor::ActorRef;

use crate::error::Error;
use crate::machine::CleanupKind;
use crate::outbox::{MessageEvent, Outbox};
use crate::token::Token;

use super::SupervisorState;
use super::messages::SupervisorMsg;

impl SupervisorState {
    /// Deletes the credentials off the loop, once no connection can hold them. The record
    /// without its account is committed first: a crash in between must never leave a record
    /// that names an account whose credentials are gone.
    pub(super) fn begin_credentials_deletion(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
    ) {
        let Some(entry) = self.sessions.get(token) else {
            return;
        };
        let slot = entry.slot.clone();
        let link = self.link.clone();
        let store = self.store.clone();
        let outbox = self.outbox.clone();
        let me = myself.clone();
        let t = token.clone();
        tokio::spawn(async move {
            fail_queued(&outbox, &t, "the session was logged out").await;
            let result = match store.flush().await {
                Err(e) => Err(Error::from(e)),
                // The slot proves no connection of this token is alive while files go.
                Ok(()) => match slot.acquire_owned().await {
                    Ok(_permit) => {
                        link.delete_credentials(&t)
                            .await
                            .map_err(|source| Error::Link {
                                token: t.clone(),
                                source,
                            })
                    }
                    Err(_) => Ok(()),
                },
            };
            let _ = me.cast(SupervisorMsg::CleanupDone {
                token: t,
                kind: CleanupKind::Credentials,
                result,
            });
        });
    }

    /// Deletes the session off the loop, once no connection is alive: the link forgets it,
    /// its messages and its record go.
    pub(super) fn begin_deletion(&mut self, myself: &ActorRef<SupervisorMsg>, token: &Token) {
        let Some(entry) = self.sessions.get(token) else {
            return;
        };
        let slot = entry.slot.clone();
        let link = self.link.clone();
        let store = self.store.clone();
        let outbox = self.outbox.clone();
        let me = myself.clone();
        let t = token.clone();
        tokio::spawn(async move {
            let result = match slot.acquire_owned().await {
                Ok(_permit) => {
                    // Subscribers hear that its queued messages will not go; the rows go
                    // with the session's record.
                    fail_queued(&outbox, &t, "the session was deleted").await;
                    outbox.forget(&t);
                    let forgotten = link.forget(&t).await.map_err(|source| Error::Link {
                        token: t.clone(),
                        source,
                    });
                    let removed = store.remove(&t).await.map_err(Error::from);
                    forgotten.and(removed)
                }
                Err(_) => Ok(()),
            };
            let _ = me.cast(SupervisorMsg::CleanupDone {
                token: t,
                kind: CleanupKind::Everything,
                result,
            });
        });
    }
}

/// Fails `token`'s queued messages with `reason`; a failure to do so is logged (the messages
/// then expire).
async fn fail_queued(outbox: &Outbox, token: &Token, reason: &str) {
    match outbox
        .fail_queued(token, MessageEvent::SessionGone, reason)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(token = %token, failed = n, "queued messages failed: {reason}"),
        Err(e) => tracing::warn!(token = %token, error = %e, "queued messages not failed"),
    }
}
