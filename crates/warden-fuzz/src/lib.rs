//! # warden-fuzz: fuzzing on the stable toolchain
//!
//! No nightly toolchain can be installed here, so no libFuzzer: [`engine::Fuzzer`] is a
//! seeded mutator (bit flips, interesting bytes, dictionary words, deletions, duplications,
//! splices, truncations, repetitions) over a corpus kept in the repo
//! (`crates/warden-fuzz/corpus/<target>/`). Its feedback is the target's *outcome*: an input
//! whose outcome (accepted as what, or refused with which error) was not seen before joins
//! the corpus in memory, so the run spreads over the ways an input can be read.
//!
//! The [`targets`]:
//! - `control`: request lines decoded ([`warden_control::protocol::Request::parse`]) and
//!   dispatched by a real control server over its Unix socket, in front of a supervisor on the
//!   scripted link;
//! - `http`: raw HTTP/1.1 requests (method, path, query, headers, body, framing) to the real
//!   gateway over TCP;
//! - `daemon_toml`: [`warden::config::parse`];
//! - `session_toml`: [`warden_core::store::SessionRecord::decode`].
//!
//! Each checks that nothing panics, that every refusal says what is wrong, and its own rules
//! (a reply per request with the request's id, a round trip for what is accepted, no proxy
//! password in an error). A violation stops the run with the input that caused it.
//!
//! `cargo test -p warden-fuzz` runs each target briefly; the full run is
//! `cargo run --release -p warden-fuzz -- all --inputs 1000000` (docs/reliability.md).

pub mod engine;
pub mod targets;

pub use engine::{Fuzzer, Report, run};
