//! A fake WhatsApp Web server for testing WhatsApp clients offline.
//!
//! It listens on `ws://127.0.0.1:<port>`, completes the real Noise handshake
//! with the client (wa-rs 0.2.0 does not verify the server certificate's
//! signatures, so a self-made one passes), decodes the client payload
//! (registration or login, and which account), answers the client's IQs, and
//! plays a scripted [`Scenario`] on each connection: QR references, pairing,
//! login, drops, clean closes, stalls, `<failure>`s, stream errors, ignored
//! keepalive pings. The listener itself can refuse connections or stay silent.
//!
//! Pairing needs no phone: a `pair` step signs a device identity over the
//! identity key the client sent in its registration payload, so a real wa-rs
//! client goes QR → `PairSuccess` → 515 → login → `Connected` on its own. Paired
//! devices are remembered in a [`Registry`].
//!
//! Everything clients do is kept by a [`Recorder`] (connections per account,
//! the most open at once, pings, IQs, steps), which tests can query and await.
//!
//! ```no_run
//! use std::time::Duration;
//! use warden_fakewa::{FakeServer, Plan, QrSpec, Scenario, Script, ServerConfig, Step, ServerEvent};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let script = Script::default()
//!     .with_registration(Plan::always(Scenario::new([Step::qr(), Step::wait(Duration::from_secs(1)), Step::Pair(Default::default())])))
//!     .with_account("15551234567", Plan::attempts([Scenario::new([Step::failure(503)])], Scenario::login()));
//! let server = FakeServer::start(ServerConfig::with_script(script)).await?;
//! println!("point the client at {}", server.url());
//! server.recorder().wait_for(Duration::from_secs(30), |r| r.event == ServerEvent::Online).await?;
//! assert_eq!(server.recorder().snapshot().max_concurrent_any(), 1);
//! # Ok(()) }
//! ```
//!
//! Modules: [`frame`] (wire framing), [`noise`] (handshake and ciphers),
//! [`nodes`] (stanza builders), [`scenario`] (steps, plans, scripts),
//! [`config`] (settings and the TOML file), [`record`] (what happened),
//! [`registry`] (paired devices), [`server`] (the listener).

pub mod chat;
pub mod client;
pub mod config;
mod conn;
pub mod frame;
pub mod nodes;
pub mod noise;
mod player;
pub mod record;
pub mod registry;
pub mod scenario;
pub mod server;
pub mod signal;

pub use chat::Receipts;
pub use client::{ClientInfo, ClientKind};
pub use config::{ConfigError, ListenerPhase, ServerConfig};
pub use record::{
    CloseKind, ConnId, Connection, Record, Recorder, ServerEvent, Snapshot, WaitTimeout,
};
pub use registry::{PairedDevice, Registry};
pub use scenario::{
    FailureSpec, MessageKind, MessageSpec, PairSpec, Plan, QrSpec, RefuseSpec, Scenario, Script,
    Step, StreamErrorSpec,
};
pub use server::{Error, FakeServer, ListenerMode};
pub use signal::{DeviceAddress, Plaintext, SignalKeys};
