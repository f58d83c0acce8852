//! # warden-wire: the control protocol's wire types
//!
//! A client writes one JSON request per line to the daemon's control socket and reads one JSON
//! reply per line:
//!
//! ```text
//! → {"id": 7, "op": "status", "token": "shop1"}
//! ← {"id": 7, "ok": true, "result": {"token": "shop1", "state": "connected", ...}}
//! → {"id": 8, "op": "stop", "token": "nope"}
//! ← {"id": 8, "ok": false, "error": {"code": "not_found", "message": "no session nope"}}
//! ```
//!
//! `id` is optional and echoed back as given (a number or a string). After a `watch` request
//! the connection carries [`EventLine`]s, one per line, starting with the current state of
//! every watched session. Every op is documented, with an example, in
//! `docs/control-protocol.md`.
//!
//! This crate depends on serde and serde_json only, so a client in Rust does not pull in the
//! daemon. Features:
//! - `client`: [`ControlClient`], an async client over the Unix socket (adds tokio);
//! - `core`: the daemon's conversions from warden-core's types (the daemon uses it).
//!
//! ```
//! use warden_wire::{Op, Request, RequestLine};
//! let op = Op::Status { token: "shop1".into() };
//! let line = serde_json::to_string(&RequestLine { id: 7, op: &op }).unwrap();
//! assert_eq!(Request::parse(&line).unwrap().op, op);
//! ```

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "core")]
mod from_core;
mod op;
mod reply;
mod request;
mod views;

#[cfg(feature = "client")]
pub use client::{ClientError, ControlClient};
#[cfg(feature = "core")]
pub use from_core::counts;
pub use op::{OPS, Op};
pub use reply::{ErrorBody, ErrorCode, Reply};
pub use request::{Request, RequestLine};
pub use views::{
    CountersView, DeadLetterView, DeadLettersView, DeletedView, EventLine, FailedAgainView,
    HealthView, HistoryEntryView, HistoryView, ListView, MessageView, NodeHealthView, OutboxView,
    OutgoingView, QrView, ReapView, ReapedView, RedeliveredView, ReplayingView, SessionView,
    UnplacedView, WatchingView, WebhookRemovedView, WebhookTestView, WebhookView, WebhooksView,
    WhyView,
};
