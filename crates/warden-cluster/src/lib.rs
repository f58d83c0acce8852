//! warden across machines: N daemons over one PostgreSQL, each session owned by exactly one
//! of them at a time.
//!
//! - **Membership.** Each process start registers a new *incarnation* and bumps its heartbeat
//!   every R ([`Timing`]). It fences itself ([`Lease`]) D after the *send* time of its last
//!   successful renewal, on its own clock, even while a renewal hangs.
//! - **Death.** A peer declares an incarnation dead only after seeing its heartbeat unchanged
//!   for T on the peer's own clock ([`Reaper`]), by a compare-and-swap that loses to any renewal.
//!   T − D − P is the safety margin (4 s by default).
//! - **Ownership.** A session is claimed only from a released or dead owner, by a
//!   compare-and-swap on its fence ([`Pg::claim`]); placement prefers a node by rendezvous
//!   hashing, under a per-node cap ([`placement`]).
//! - **Fenced writes.** Every write of a session's data checks its fence in the same
//!   transaction ([`check_fence`]): a deposed node cannot write.
//!
//! - **Requests.** An operation on a session another node runs reaches that node through
//!   the database ([`requests`]).
//!
//! [`Node`] runs all of it for one daemon with two connections. The design and its
//! measurements: `docs/cluster.md`.

mod error;
mod lease;
mod node;
mod pg;
pub mod placement;
mod reaper;
pub mod requests;
mod timing;
mod tls;

pub use error::ClusterError;
pub use lease::{Lease, Verdict};
pub use node::{
    EVENTS, FenceReason, Gate, LeaseView, Node, NodeConfig, NodeEvent, Ownership, Releaser,
};
pub use pg::{Notice, Pg, RELEASED, SessionOwner, check_fence};
pub use reaper::{NodeKey, NodeRow, Reaper};
pub use timing::Timing;
pub use tls::{PgTls, PgTlsConnect, PgTlsStream};
