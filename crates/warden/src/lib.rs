//! The daemon's configuration (`daemon.toml` with environment overrides), as a library: the
//! `warden` binary reads it through this, and the fuzzer (`crates/warden-fuzz`) drives
//! [`config::parse`] with arbitrary text. [`cluster`] joins a cluster node to the supervisor,
//! the store and the link; [`peers`] carries operations between the nodes; [`rebalance`]
//! hands sessions to a node that joins.

pub mod cluster;
pub mod config;
pub mod peers;
pub mod rebalance;
