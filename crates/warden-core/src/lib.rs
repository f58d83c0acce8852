//! # warden-core: the supervisor of many WhatsApp Web sessions
//!
//! A root [`Supervisor`] spawns one session actor per token. Each session actor lives for one
//! connection: it opens a [`Link`], forwards the connection's lifecycle
//! ([`LifecycleEvent`]) and ends with a [`DisconnectReason`]. The supervisor then asks the pure
//! restart [`policy`] what follows: restart now, retry after a backoff, or park the session
//! (`failed`, `logged_out`, `replaced`, `banned`, `qr_expired`). A janitor actor asks it to
//! reap sessions stuck connecting or showing a QR code; [`admission`] control spreads
//! connection attempts out; the [`store`] keeps `sessions/<token>/session.toml` on disk.
//!
//! This crate knows nothing about WhatsApp: it drives any [`Link`].
//!
//! # Layout
//! - [`token`]: validated session tokens.
//! - [`link`]: the [`Link`] and [`Connection`] traits, the seam to WhatsApp.
//! - [`lifecycle`]: lifecycle events and disconnect reasons.
//! - [`policy`]: the restart policy, a pure function.
//! - [`machine`]: the life of one session, a pure state machine the supervisor carries out.
//! - [`outbox`]: outgoing messages, stored before they are acknowledged and sent in order by
//!   each connected session; [`outbox::status`] is a message's life as a pure function.
//! - [`admission`]: the global limit on connection attempts.
//! - [`store`]: the session records on disk, written atomically.
//! - [`state`], [`events`]: what status reads and subscribers see.
//! - [`journal`]: every session's history, durable; what `history` shows and webhooks send.
//! - `supervisor`, `session`, `janitor`: the actors; [`Supervisor`] is the handle.
//! - `scripted` (feature `scripted-link`): a scripted [`Link`] and an event waiter, for tests
//!   and examples.
//!
//! # Example
//! ```no_run
//! # async fn demo(link: std::sync::Arc<dyn warden_core::Link>) -> Result<(), warden_core::Error> {
//! use warden_core::{OpenOptions, Supervisor, SupervisorConfig};
//! let (supervisor, _report) = Supervisor::start(SupervisorConfig::new("sessions"), link).await?;
//! let session = supervisor.create(Some("shop".into()), Some("shop1")).await?;
//! supervisor.start_session(session.token.as_str(), OpenOptions::default()).await?;
//! println!("{}", supervisor.status("shop1")?.state);
//! supervisor.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod admission;
mod error;
pub mod events;
mod janitor;
pub mod journal;
pub mod lifecycle;
pub mod link;
pub mod machine;
pub mod outbox;
pub mod policy;
pub mod proxy;
#[cfg(feature = "scripted-link")]
pub mod scripted;
mod session;
pub mod start_rule;
pub mod state;
pub mod store;
mod supervisor;
pub mod token;

pub use admission::AdmissionConfig;
pub use error::{Error, StoreError};
pub use events::SessionEvent;
pub use janitor::JanitorConfig;
pub use journal::{HistoryEntry, JournalConfig};
pub use lifecycle::{DisconnectReason, Inbound, IncomingMessage, LifecycleEvent, Receipt};
pub use link::{Connection, LifecycleSink, Link, LinkError, OpenOptions, Outgoing, SendOutcome};
pub use outbox::{MessageStatus, OutboxConfig, OutgoingMessage, ReceiptKind, SendRequest};
pub use policy::PolicyConfig;
pub use proxy::{ProxyError, ProxyScheme, ProxyUrl};
pub use state::{
    Counters, Desired, LastDisconnect, QrCode, SessionInfo, SessionList, SessionState,
};
pub use supervisor::{Reaped, StartReport, Supervisor, SupervisorConfig};
pub use token::{Token, TokenError};
