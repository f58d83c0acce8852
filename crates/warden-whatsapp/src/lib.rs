//! # warden-whatsapp: warden's link to WhatsApp Web
//!
//! [`WaLink`] implements warden-core's [`Link`](warden_core::Link) with
//! [wa-rs](https://crates.io/crates/wa-rs) 0.2, so every session the supervisor runs is a real
//! WhatsApp Web client (a linked device).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use warden_core::{Supervisor, SupervisorConfig};
//! use warden_whatsapp::{WaConfig, WaLink};
//!
//! // One database for every session, shared by the link and the supervisor.
//! let db = warden_store::Db::open_in(std::path::Path::new("sessions"))?;
//! let link = WaLink::new(WaConfig::default(), db.clone())?;
//! let config = SupervisorConfig::new("sessions").with_db(db);
//! let (supervisor, _) = Supervisor::start(config, Arc::new(link)).await?;
//! # Ok(()) }
//! ```
//!
//! ## How a session is driven
//! - **One database for every session**: each token's credentials and Signal state are rows
//!   of the shared [`warden_store::Db`] (one SQLite file, one owner thread), reached through a
//!   small per-session [`store::SessionStore`] that implements wa-rs's `Backend`. A session
//!   exists only while a connection uses it: a stopped session holds no client, task or file
//!   descriptor ([`clients_alive`] counts the wa-rs clients in the process).
//! - **One client per connection run of a logged-in session**, reused across attempts; a
//!   fresh `Client` (same rows) replaces it after any run that showed QR codes or paired,
//!   because a QR rotation task of that run could later disconnect it.
//! - **Only the supervisor reconnects**: wa-rs's auto-reconnect is off, so one `run()` is one
//!   connection attempt. `Bot::run` is not used (it leaks the client); the link drives
//!   `client.run()` itself, one at a time, and always calls `disconnect()` before aborting it.
//! - **Ordered events**: a synchronous handler on wa-rs's event bus (holding no client) taps
//!   each event into a channel; [`classify`] maps them. After `PairSuccess` the connection
//!   reports `Paired` and ends with `RestartRequired` only once `run()` has returned (the 515),
//!   which avoids wa-rs's post-pairing race; the supervisor restarts it at once. wa-rs
//!   dispatches `PairSuccess` from a task after the signature is sent while the 515 is handled
//!   inline, so a run that newly paired the device waits (up to 2 s) for that event before it
//!   is classified; if it never comes, the stored credentials still tell `classify` that the
//!   run paired the device, and it ends with `RestartRequired` (never `QrExpired`). A
//!   `Connected` is reported only while the client is logged in (a late one from an earlier
//!   run's post-login task is ignored). Messages left in the channel between connections are
//!   still delivered; other leftover events are dropped.
//! - **Transport** ([`transport`]): its own WebSocket (rustls + webpki roots for `wss`), one
//!   `connect_timeout` for dial, TLS, upgrade and the server's first handshake reply, and a read
//!   task and socket that are always released.
//! - **Liveness** ([`watchdog`]): after a third of `liveness_timeout` without traffic the link
//!   pings; after `liveness_timeout` of silence it closes the connection (`TimedOut`).
//! - **Stopping** is bounded: `disconnect()` within 2 s, then the run is aborted; dropping a
//!   [`WaConnection`] closes its socket and aborts its run at once.
//! - **One live connection per token**: the link keeps one session per token while a
//!   connection uses it, and a connection takes the session's slot before it drives the
//!   client. Across processes, the daemon's exclusive hold on the database keeps a second
//!   daemon out (`warden_store::DbError::InUse`).
//! - **Logout** (`delete_credentials`) and `forget` let go of the client, then delete every row
//!   of the session in one transaction; a write from a wa-rs task that still runs is refused
//!   after that (the credentials stay deleted).
//!
//! ## Why a connection ended
//! [`classify::classify`] decides from the events of the run (the last decisive one wins) and
//! facts wa-rs does not report:
//!
//! | what happened | `DisconnectReason` |
//! |---|---|
//! | the link stopped it (close, drop) | `Stopped` |
//! | nothing received for `liveness_timeout` | `TimedOut` |
//! | `LoggedOut` (`<failure>` 401, 403, 406; stream error `device_removed` or 516) | `LoggedOut` |
//! | `StreamReplaced` (`conflict type=replaced`) | `Replaced` |
//! | `TemporaryBan` (402) | `TemporarilyBanned { expires_in, code: "101"… }` |
//! | `ClientOutdated` (405), `ConnectFailure` 409 bad user agent | `ClientOutdated` |
//! | `ConnectFailure` 413, 414, 415, 418 (auth token expired or invalid, not found, client unknown) | `BadCredentials` |
//! | `ConnectFailure` 500, 503 | `ServerUnavailable` |
//! | `ConnectFailure` 400, 501 or any other code | `ConnectFailed("failure N: …")` |
//! | `StreamError { code }` (unknown stream error) | `StreamError(code)` |
//! | `PairError` | `ConnectFailed("pairing failed: …")` |
//! | `PairSuccess` (then 515), or credentials stored by this run without a `PairSuccess` yet | `RestartRequired` |
//! | `Disconnected` after a close frame / otherwise | `ConnectionClosed` / `ConnectionLost` |
//! | no event; dial (DNS, TCP, TLS, upgrade) failed / timed out | `ConnectFailed(error)` / `TimedOut` |
//! | no event; the session's proxy refused, closed, did not speak its protocol, or gave no tunnel within `connect_timeout` | `ProxyUnreachable(…)` |
//! | no event; the session's proxy refused the user and password (or wants some) | `ProxyAuthFailed(…)` |
//! | no event; the proxy is up but could not reach WhatsApp's host | `ConnectFailed("proxy … could not reach …")` |
//! | no event; no handshake reply within `connect_timeout` | `TimedOut` |
//! | no event; QR codes shown, none scanned | `QrExpired` |
//! | no event after `Connected` (515 or `<xmlstreamend/>` while logged in) | `ConnectionClosed` |
//! | no event; the server closed before any reply / wa-rs rejected the handshake | `ConnectFailed(…)` |
//! | no event; socket closed by the server / dropped, before login | `ConnectionClosed` / `ConnectionLost` |
//!
//! ## What outlives a connection, and a session
//! None of the link's own tasks ([`tasks::alive`]) and no socket survive a connection. wa-rs
//! keeps, for a bounded time, a task per query in flight at the stop (it does not fail pending
//! queries on disconnect; they end at its 75 s query timeout), a post-login task that waits up
//! to 5 s for app-state keys, and a QR rotation task that missed the pairing's cancel (until
//! its 60 s code expires); each holds its client until then. wa-rs's device saver task is not
//! started: the device state is saved when it matters (after a pairing, once connected, when
//! the connection ends), and a logout or delete closes the session's rows to any later write.
//!
//! ## Secrets
//! QR codes, pair codes and keys are never logged by this crate (tracing always carries the
//! token as a field). wa-rs itself logs the pair code through the `log` crate at info level
//! (target `Client/PairCode`): a daemon that forwards `log` records must filter that target.
//!
//! ## Modules
//! [`config`] (the `[whatsapp]` table), [`transport`] (WebSocket), [`classify`] (events to
//! lifecycle, pure), [`watchdog`] (liveness rule), [`store`] (wa-rs's `Backend` over the shared
//! database), [`legacy`] (import of an earlier release's per-session folders), [`lock`] (the
//! folder lock that import takes), [`tasks`] (a count of the link's own tasks); the session,
//! its client and the connection driver are private.

pub mod classify;
mod client;
pub mod config;
mod connection;
mod credentials;
mod http;
pub mod legacy;
mod link;
pub mod lock;
pub mod proxy;
pub mod store;
pub mod tasks;
pub mod transport;
pub mod watchdog;

pub use client::clients_alive;
pub use config::{ConfigError, WHATSAPP_WS_URL, WaConfig};
pub use connection::{WaConnection, parse_recipient};
pub use credentials::Credentials;
pub use legacy::{ImportReport, import_legacy};
pub use link::WaLink;
