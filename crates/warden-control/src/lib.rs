//! # warden-control: the control protocol, its Unix-socket server and client
//!
//! - [`protocol`]: the wire types (requests, replies, watch events). They are the only types
//!   serialized for the control socket.
//! - [`server`]: [`ControlServer`] binds the socket safely (mode, stale socket, live daemon)
//!   and serves a [`warden_core::Supervisor`], one task per client.
//! - [`client`]: [`ControlClient`], what the CLI and scripts in Rust use.

pub mod client;
mod lines;
pub mod protocol;
pub mod server;

pub use client::{ClientError, ControlClient};
pub use protocol::{ErrorBody, ErrorCode, EventLine, Op, Reply, Request};
pub use server::{BindError, ControlServer, RequestObserver, ServerConfig};
