//! # warden-control: the control protocol, its Unix-socket server and client
//!
//! - [`protocol`]: the wire types (requests, replies, watch events), from [`warden_wire`].
//!   They are the only types serialized for the control socket.
//! - [`server`]: [`ControlServer`] binds the socket safely (mode, stale socket, live daemon)
//!   and serves a [`warden_core::Supervisor`], one task per client.
//! - [`peers`]: in a cluster, what carries operations to the node that runs their session.
//! - [`ControlClient`] (from [`warden_wire`]): what the CLI and scripts in Rust use.

mod history;
mod lines;
pub mod peers;
pub mod protocol;
pub mod server;
pub mod watch_elsewhere;
pub mod webhooks;

pub use peers::{Gathered, LocalAnswers, Peers};
pub use protocol::{ErrorBody, ErrorCode, EventLine, Op, Reply, Request};
pub use server::{BindError, ControlServer, RequestObserver, ServerConfig};
pub use warden_wire::{ClientError, ControlClient};
pub use watch_elsewhere::{ElsewhereFeed, Whereabouts, whereabouts};
