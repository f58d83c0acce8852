//! The control protocol's wire types, defined in [`warden_wire`] (a crate with no daemon
//! dependencies, for clients) and re-exported here. They are the only types serialized for
//! the control socket.

pub use warden_wire::*;
