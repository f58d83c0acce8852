//! The seam to WhatsApp: a [`Link`] opens [`Connection`]s that report [`LifecycleEvent`]s.
//!
//! warden-core knows nothing about WhatsApp; `warden-whatsapp` implements [`Link`] with wa-rs,
//! and the `scripted-link` feature provides a test double that plays a lifecycle per attempt.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::lifecycle::{DisconnectReason, Inbound, LifecycleEvent};
use crate::token::Token;

/// How many incoming messages and receipts one connection may have waiting for the session
/// to take them; past it, new ones are dropped (see [`LifecycleSink::inbound`]).
pub const INBOUND_CAPACITY: usize = 1024;

/// A boxed, sendable future that owns everything it needs.
pub type SendFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Errors a link reports.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinkError {
    /// The connection could not be opened.
    #[error("could not open the connection: {0}")]
    Open(String),
    /// The session is not connected, so it cannot send.
    #[error("the session is not connected")]
    NotConnected,
    /// Sending a message failed.
    #[error("sending failed: {0}")]
    Send(String),
    /// The recipient is not a phone number or a JID.
    #[error("invalid recipient {0:?}: expected a phone number or a JID")]
    InvalidRecipient(String),
    /// Files of the session could not be read, written or removed.
    #[error("session storage: {0}")]
    Storage(String),
}

/// How a connection should be opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Link by pairing code to this phone number (digits with country code) instead of by QR.
    pub pair_phone: Option<String>,
    /// The proxy to connect through: the session's own, set by the supervisor from its record
    /// at every connection (`None`: the link's default, if it has one).
    pub proxy: Option<crate::proxy::ProxyUrl>,
}

/// Opens connections for sessions. One `Link` serves every session of a supervisor.
#[async_trait::async_trait]
pub trait Link: Send + Sync + 'static {
    /// Opens one connection for `token`.
    ///
    /// The connection reports its lifecycle through `sink`, and must end by emitting
    /// [`LifecycleEvent::Disconnected`] (dropping every clone of the sink without it counts as
    /// [`DisconnectReason::ConnectionLost`]). Opening should return quickly: the work of
    /// connecting happens in the connection's own task, which must stop when the returned
    /// [`Connection`] is dropped.
    async fn open(
        &self,
        token: &Token,
        options: OpenOptions,
        sink: LifecycleSink,
    ) -> Result<Box<dyn Connection>, LinkError>;

    /// Deletes the session's credentials (after a logout). Called only while no connection of
    /// this token is alive.
    async fn delete_credentials(&self, token: &Token) -> Result<(), LinkError>;

    /// Releases everything the link holds for `token` before its folder is removed. Called
    /// only while no connection of this token is alive. By default, deletes the credentials.
    async fn forget(&self, token: &Token) -> Result<(), LinkError> {
        self.delete_credentials(token).await
    }
}

/// One live connection. Dropping it must stop its work at once (abort-on-drop), so that a
/// connection can never outlive the session actor that owns it.
#[async_trait::async_trait]
pub trait Connection: Send + 'static {
    /// Closes the connection gracefully. The caller bounds the time it may take.
    async fn close(&mut self);

    /// Sends one message under its id and resolves once the server answered: accepted, or
    /// refused with a code. A second send of the same id must be safe (recipients drop a copy
    /// with an id they have).
    ///
    /// The returned future owns what it needs, so the session actor need not wait for it.
    fn send(&self, message: Outgoing) -> SendFuture<Result<SendOutcome, LinkError>>;
}

/// A message for the link to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its WhatsApp message id.
    pub id: String,
    /// The recipient JID (already checked: `digits@s.whatsapp.net`, `…@lid` or `…@g.us`).
    pub to: String,
    /// The text.
    pub text: String,
}

/// What the server said to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// It acknowledged it.
    Accepted,
    /// It refused it.
    Refused {
        /// Its error code (463: the reach-out timelock).
        code: u16,
        /// When the refusal's lock ends, when the server said.
        until: Option<SystemTime>,
    },
}

/// Where a connection reports its lifecycle. Cheap to clone.
///
/// When the last clone is dropped and no [`LifecycleEvent::Disconnected`] was emitted, a
/// `Disconnected { reason: ConnectionLost }` is emitted on the connection's behalf, so a
/// session can never be left waiting for an end that will not come.
#[derive(Clone)]
pub struct LifecycleSink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    /// Delivers events to the session actor.
    deliver: Box<dyn Fn(LifecycleEvent) + Send + Sync>,
    /// Set once a `Disconnected` went out; later events are dropped.
    ended: AtomicBool,
    /// The bounded path of incoming messages and receipts, apart from the lifecycle.
    inbound: Option<mpsc::Sender<Inbound>>,
    /// How many of them were dropped because the path was full.
    dropped: AtomicU64,
}

impl LifecycleSink {
    /// A sink that calls `deliver` for every event, and drops incoming messages.
    pub fn new(deliver: impl Fn(LifecycleEvent) + Send + Sync + 'static) -> Self {
        Self::with_inbound(deliver, None)
    }

    /// A sink that calls `deliver` for every lifecycle event, and queues incoming messages
    /// and receipts on `inbound` (bounded).
    pub fn with_inbound(
        deliver: impl Fn(LifecycleEvent) + Send + Sync + 'static,
        inbound: Option<mpsc::Sender<Inbound>>,
    ) -> Self {
        Self {
            inner: Arc::new(SinkInner {
                deliver: Box::new(deliver),
                ended: AtomicBool::new(false),
                inbound,
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Queues an incoming message or receipt for the session, apart from its lifecycle, so a
    /// chatty account never delays a control operation or a connection's end. The queue is
    /// bounded ([`INBOUND_CAPACITY`]): when it is full the item is dropped, counted and
    /// logged, and `false` is returned. The server has had its ack (wa-rs acks on receipt), so
    /// a dropped message is not delivered again: subscribers miss it.
    pub fn inbound(&self, item: Inbound) -> bool {
        let Some(tx) = &self.inner.inbound else {
            return false;
        };
        match tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let n = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::warn!(
                        dropped = n,
                        "incoming messages arrive faster than they are published: dropped"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// How many incoming messages and receipts were dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Reports one event. Events after the first `Disconnected` are ignored.
    pub fn emit(&self, event: LifecycleEvent) {
        if self.inner.ended.load(Ordering::Acquire) {
            return;
        }
        if matches!(event, LifecycleEvent::Disconnected { .. })
            && self.inner.ended.swap(true, Ordering::AcqRel)
        {
            return;
        }
        (self.inner.deliver)(event);
    }

    /// Reports the end of the connection.
    pub fn disconnected(&self, reason: DisconnectReason) {
        self.emit(LifecycleEvent::Disconnected { reason });
    }

    /// Whether the connection already reported its end.
    pub fn has_ended(&self) -> bool {
        self.inner.ended.load(Ordering::Acquire)
    }
}

impl Drop for SinkInner {
    fn drop(&mut self) {
        if !self.ended.load(Ordering::Acquire) {
            (self.deliver)(LifecycleEvent::Disconnected {
                reason: DisconnectReason::ConnectionLost,
            });
        }
    }
}

impl std::fmt::Debug for LifecycleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleSink")
            .field("ended", &self.has_ended())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recording_sink() -> (LifecycleSink, Arc<Mutex<Vec<LifecycleEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let sink = LifecycleSink::new(move |e| seen2.lock().unwrap().push(e));
        (sink, seen)
    }

    #[test]
    fn only_the_first_disconnect_is_delivered() {
        let (sink, seen) = recording_sink();
        sink.disconnected(DisconnectReason::Replaced);
        sink.disconnected(DisconnectReason::ConnectionLost);
        sink.emit(LifecycleEvent::PairCode { code: "x".into() });
        drop(sink);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![LifecycleEvent::Disconnected {
                reason: DisconnectReason::Replaced
            }]
        );
    }

    #[test]
    fn the_inbound_path_is_bounded_and_counts_what_it_drops() {
        let (tx, mut rx) = mpsc::channel(2);
        let sink = LifecycleSink::with_inbound(|_| {}, Some(tx));
        let receipt = |n: u32| {
            Inbound::Receipt(Box::new(crate::lifecycle::Receipt {
                chat: "c".into(),
                ids: vec![n.to_string()],
                kind: crate::outbox::ReceiptKind::Delivered,
            }))
        };
        assert!(sink.inbound(receipt(1)));
        assert!(sink.inbound(receipt(2)));
        assert!(!sink.inbound(receipt(3)), "full: dropped");
        assert_eq!(sink.dropped(), 1);
        assert_eq!(rx.try_recv().unwrap(), receipt(1));
        assert!(sink.inbound(receipt(4)), "room again");
        assert_eq!(rx.try_recv().unwrap(), receipt(2));
        assert_eq!(rx.try_recv().unwrap(), receipt(4));
        // A sink without an inbound path takes nothing.
        assert!(!LifecycleSink::new(|_| {}).inbound(receipt(5)));
    }

    #[test]
    fn dropping_the_last_clone_without_an_end_reports_connection_lost() {
        let (sink, seen) = recording_sink();
        let clone = sink.clone();
        drop(sink);
        assert!(seen.lock().unwrap().is_empty());
        drop(clone);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![LifecycleEvent::Disconnected {
                reason: DisconnectReason::ConnectionLost
            }]
        );
    }
}
