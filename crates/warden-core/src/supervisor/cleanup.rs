//! The deletions that run off the supervisor's loop, once no connection can hold what they
//! delete; each reports back with `CleanupDone`.

use std::future::Future;
use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::Semaphore;

use crate::error::Error;
use crate::link::Link;
use crate::machine::CleanupKind;
use crate::outbox::{MessageEvent, Outbox};
use crate::store::StoreWriter;
use crate::token::Token;

use super::SupervisorState;
use super::messages::SupervisorMsg;

/// What a cleanup task takes with it.
struct Tools {
    /// The token's connection slot: holding it proves no connection of the token is alive.
    slot: Arc<Semaphore>,
    link: Arc<dyn Link>,
    store: StoreWriter,
    outbox: Outbox,
    token: Token,
}

impl SupervisorState {
    /// Runs `work` off the loop with what it needs, and reports its result as `CleanupDone`.
    fn spawn_cleanup<F, Fut>(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        kind: CleanupKind,
        work: F,
    ) where
        F: FnOnce(Tools) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let Some(entry) = self.sessions.get(token) else {
            return;
        };
        let tools = Tools {
            slot: entry.slot.clone(),
            link: self.link.clone(),
            store: self.store.clone(),
            outbox: self.outbox.clone(),
            token: token.clone(),
        };
        let me = myself.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let result = work(tools).await;
            let _ = me.cast(SupervisorMsg::CleanupDone {
                token,
                kind,
                result,
            });
        });
    }

    /// Deletes the credentials off the loop, once no connection can hold them. The record
    /// without its account is committed first: a crash in between must never leave a record
    /// that names an account whose credentials are gone.
    pub(super) fn begin_credentials_deletion(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
    ) {
        self.spawn_cleanup(myself, token, CleanupKind::Credentials, |t| async move {
            fail_queued(&t.outbox, &t.token, "the session was logged out").await;
            t.store.flush().await?;
            match t.slot.acquire_owned().await {
                Ok(_permit) => {
                    t.link
                        .delete_credentials(&t.token)
                        .await
                        .map_err(|source| Error::Link {
                            token: t.token.clone(),
                            source,
                        })
                }
                Err(_) => Ok(()),
            }
        });
    }

    /// Deletes the session off the loop, once no connection is alive: the link forgets it,
    /// its messages and its record go.
    pub(super) fn begin_deletion(&mut self, myself: &ActorRef<SupervisorMsg>, token: &Token) {
        self.spawn_cleanup(myself, token, CleanupKind::Everything, |t| async move {
            let Ok(_permit) = t.slot.acquire_owned().await else {
                return Ok(());
            };
            // Subscribers hear that its queued messages will not go; the rows go with the
            // session's record.
            fail_queued(&t.outbox, &t.token, "the session was deleted").await;
            t.outbox.forget(&t.token);
            let forgotten = t.link.forget(&t.token).await.map_err(|source| Error::Link {
                token: t.token.clone(),
                source,
            });
            // Its deletion's journal entry goes with the removal, in one commit (none when the
            // link could not forget it: the deletion is then reported failed).
            let gone = crate::SessionEvent::Removed {
                token: t.token.clone(),
            };
            let entry = forgotten
                .is_ok()
                .then(|| crate::journal::entry::event(&gone, std::time::SystemTime::now()))
                .flatten();
            let removed = t.store.remove(&t.token, entry).await.map_err(Error::from);
            forgotten.and(removed)
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
