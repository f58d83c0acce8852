//! The session actor: lives for exactly one connection of one token.
//!
//! It waits for the token's connection slot (so the previous connection is really gone), opens
//! the link, forwards the lifecycle to the supervisor, and stops when the connection ends,
//! carrying the disconnect reason in its final state. It never decides about reconnects: the
//! supervisor does.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::lifecycle::{DisconnectReason, LifecycleEvent};
use crate::link::{
    Connection, INBOUND_CAPACITY, LifecycleSink, Link, LinkError, OpenOptions, Outgoing,
    SendOutcome,
};
use crate::outbox::{self, MessageEvent, Outbox};
use crate::supervisor::messages::SupervisorMsg;
use crate::token::Token;

/// Messages a session actor handles.
pub(crate) enum SessionMsg {
    /// A lifecycle message from the connection.
    Lifecycle(LifecycleEvent),
    /// Send one message over the connection (from the session's outbox drain).
    Send {
        message: Outgoing,
        reply: RpcReplyPort<Result<SendOutcome, LinkError>>,
    },
}

/// A task that is aborted when this is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The session actor (stateless; everything is in [`SessionState`]).
pub(crate) struct SessionActor;

/// What a session actor is started with.
pub(crate) struct SessionArgs {
    pub token: Token,
    /// Which connection of this token this is; lets the supervisor ignore stale messages.
    pub generation: u64,
    pub link: Arc<dyn Link>,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// The token's single connection slot: held for as long as a connection exists.
    pub slot: Arc<Semaphore>,
    pub options: OpenOptions,
    /// The bound on a graceful close.
    pub close_timeout: Duration,
    /// Where the session's messages wait to be sent, and receipts are recorded.
    pub outbox: Outbox,
}

/// The session actor's state. Dropping it (even after a panic, where `post_stop` is skipped)
/// drops the connection, which aborts its work, and then frees the slot.
pub(crate) struct SessionState {
    token: Token,
    generation: u64,
    supervisor: ActorRef<SupervisorMsg>,
    /// The live connection. Declared before `slot_permit`, so it is dropped first.
    connection: Option<Box<dyn Connection>>,
    /// Proof that no other connection of this token exists.
    slot_permit: Option<OwnedSemaphorePermit>,
    /// Why the connection ended; read by the supervisor from the final state.
    pub(crate) outcome: Option<DisconnectReason>,
    // Only needed until the connection is opened.
    pending_open: Option<(Arc<dyn Link>, Arc<Semaphore>, OpenOptions)>,
    close_timeout: Duration,
    outbox: Outbox,
    /// The outbox drain, while the connection is logged in.
    drain: Option<AbortOnDrop>,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        // Cheap on purpose: a failure here produces no supervision event.
        Ok(SessionState {
            token: args.token,
            generation: args.generation,
            supervisor: args.supervisor,
            connection: None,
            slot_permit: None,
            outcome: None,
            pending_open: Some((args.link, args.slot, args.options)),
            close_timeout: args.close_timeout,
            outbox: args.outbox,
            drain: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((link, slot, options)) = state.pending_open.take() else {
            return Ok(());
        };
        // Wait until the previous connection of this token has really been dropped.
        let permit = slot.acquire_owned().await?;
        state.slot_permit = Some(permit);
        let me = myself.clone();
        // Messages and receipts take their own bounded path to a task of this connection,
        // which ends once the connection's sinks are gone and the queue is empty.
        let (inbound, inbound_rx) = tokio::sync::mpsc::channel(INBOUND_CAPACITY);
        tokio::spawn(outbox::consume(
            state.outbox.clone(),
            state.token.clone(),
            inbound_rx,
        ));
        let sink = LifecycleSink::with_inbound(
            move |event| {
                let _ = me.cast(SessionMsg::Lifecycle(event));
            },
            Some(inbound),
        );
        match link.open(&state.token, options, sink).await {
            Ok(connection) => state.connection = Some(connection),
            Err(err) => {
                state.outcome = Some(DisconnectReason::ConnectFailed(err.to_string()));
                myself.stop(None);
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        message: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMsg::Lifecycle(LifecycleEvent::Disconnected { reason }) => {
                if state.outcome.is_none() {
                    state.outcome = Some(reason);
                }
                myself.stop(None);
            }
            SessionMsg::Lifecycle(event) => {
                if matches!(event, LifecycleEvent::Connected { .. }) && state.drain.is_none() {
                    state.drain = Some(AbortOnDrop(tokio::spawn(outbox::drain(
                        state.outbox.clone(),
                        state.token.clone(),
                        myself.clone(),
                    ))));
                }
                let _ = state.supervisor.cast(SupervisorMsg::Lifecycle {
                    token: state.token.clone(),
                    generation: state.generation,
                    event,
                });
            }
            SessionMsg::Send { message, reply } => match &state.connection {
                Some(connection) => {
                    let sending = connection.send(message);
                    tokio::spawn(async move {
                        let _ = reply.send(sending.await);
                    });
                }
                None => {
                    let _ = reply.send(Err(LinkError::NotConnected));
                }
            },
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // The drain goes first: nothing is sent on a connection being closed.
        let drained = state.drain.take().is_some();
        if drained {
            state.outbox.set_in_flight(&state.token, None);
            state.outbox.drop_waker(&state.token);
        }
        if let Some(mut connection) = state.connection.take()
            && tokio::time::timeout(state.close_timeout, connection.close())
                .await
                .is_err()
        {
            tracing::warn!(token = %state.token, "connection did not close in time; dropped");
        }
        if drained && state.outbox.config().ttl.is_zero() {
            // `ttl = 0`: messages live only while the session is connected.
            let (outbox, token) = (state.outbox.clone(), state.token.clone());
            tokio::spawn(async move {
                let reason = "expired: the session disconnected ([outbox] ttl = 0)";
                if let Err(e) = outbox
                    .fail_queued(&token, MessageEvent::Expired, reason)
                    .await
                {
                    tracing::warn!(token = %token, error = %e, "queued messages not failed");
                }
            });
        }
        state.slot_permit = None;
        Ok(())
    }
}
