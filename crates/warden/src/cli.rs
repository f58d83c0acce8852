//! The command line: `warden serve` runs the daemon; every other command talks to it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// warden keeps many WhatsApp Web sessions alive and lets you control them.
///
/// Run the daemon with `warden serve`; then, from another terminal in the same folder:
/// `warden create --token shop1`, `warden start shop1` (shows the QR code to scan),
/// `warden sessions`.
#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about,
    long_about,
    after_long_help = "Exit codes: 0 done; 1 failed; 2 bad usage; 3 no such session; \
4 refused (bad request, invalid token, conflict, cooldown); 5 the daemon is not running; \
6 `start` ended without connecting; 7 the daemon is at capacity (no more live sessions); \
78 invalid configuration.\n\n\
Docs: docs/operations.md, docs/control-protocol.md, docs/configuration.md."
)]
pub struct Cli {
    /// The daemon's control socket. Default: [daemon].socket from the configuration file.
    #[arg(long, global = true, env = "WARDEN_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The configuration file (for `serve`, and for finding the socket).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (reads ./daemon.toml unless --config is given).
    Serve {
        /// Log level or filter (overrides RUST_LOG and [daemon].log_level), e.g. `debug`.
        #[arg(long, value_name = "LEVEL")]
        log_level: Option<String>,
    },
    /// Create a session (it starts stopped).
    Create {
        /// A human name for it.
        #[arg(long)]
        name: Option<String>,
        /// The token to use (letters, digits, '_' and '-'); a random one by default.
        #[arg(long)]
        token: Option<String>,
        /// Connect it through this proxy: socks5://, socks5h:// (DNS at the proxy) or
        /// http:// (CONNECT), with optional user:password@. `-` reads it from stdin (keeps
        /// the password out of the process list).
        #[arg(long, value_name = "URL")]
        proxy: Option<String>,
    },
    /// Set a session's proxy (used from its next connection), or clear it with --clear.
    SetProxy {
        /// The session's token.
        token: String,
        /// socks5://, socks5h:// or http://, with optional user:password@; `-` reads it from
        /// stdin.
        #[arg(value_name = "URL", required_unless_present = "clear")]
        proxy: Option<String>,
        /// Remove the session's proxy (the [whatsapp] proxy default applies).
        #[arg(long, conflicts_with = "proxy")]
        clear: bool,
        /// Reconnect a running session now, through the new proxy (refused within the
        /// restart cooldown, and then nothing changes).
        #[arg(long)]
        reconnect: bool,
    },
    /// Start a session: shows each QR code to scan and waits until it is connected.
    Start {
        /// The session's token.
        token: String,
        /// Link by pairing code to this phone number (with country code) instead of a QR code.
        #[arg(long, value_name = "NUMBER")]
        phone: Option<String>,
        /// Return as soon as the daemon accepted the start.
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop a session; its credentials are kept.
    Stop {
        /// The session's token.
        token: String,
    },
    /// Close the connection and open a fresh one (refused within 30 s of the last start).
    Restart {
        /// The session's token.
        token: String,
        /// Restart even within the cooldown.
        #[arg(long)]
        force: bool,
    },
    /// Show a new QR code (while one is shown, or after they expired).
    RefreshQr {
        /// The session's token.
        token: String,
    },
    /// Log out and delete the credentials; linking again needs a new QR scan.
    Logout {
        /// The session's token.
        token: String,
    },
    /// Delete a session and its folder.
    Delete {
        /// The session's token.
        token: String,
    },
    /// Close whatever the session has and cancel any pending reconnect.
    ForceCleanup {
        /// The session's token.
        token: String,
    },
    /// Set the session's reconnect attempts back to 0.
    ResetReconnect {
        /// The session's token.
        token: String,
    },
    /// One session's status, or every session's.
    Status {
        /// The session's token; all sessions when absent.
        token: Option<String>,
    },
    /// List every session with counts per state.
    Sessions,
    /// Queue a text message of a session that is connected or on its way back; it is sent
    /// in order, paced. Prints its id; follow it with `warden message`.
    Send {
        /// The session's token.
        token: String,
        /// A phone number (with country code) or a JID.
        #[arg(long)]
        to: String,
        /// The text to send.
        #[arg(long)]
        text: String,
        /// An idempotency key (at most 128 bytes): sending again with the same key answers
        /// with the first message and sends nothing.
        #[arg(long)]
        key: Option<String>,
    },
    /// One outgoing message's status, by id or idempotency key.
    Message {
        /// The session's token.
        token: String,
        /// The message's id or key.
        id: String,
    },
    /// A session's queued and failed messages.
    Outbox {
        /// The session's token.
        token: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Queue a failed message again.
    RetryMessage {
        /// The session's token.
        token: String,
        /// The message's id or key.
        id: String,
    },
    /// Cancel a queued or failed message.
    CancelMessage {
        /// The session's token.
        token: String,
        /// The message's id or key.
        id: String,
    },
    /// A session's history: state changes with their reasons, QR codes issued, messages.
    History {
        /// The session's token.
        token: String,
        /// Only entries after this number (the first column).
        #[arg(long)]
        since: Option<i64>,
        /// At most this many (the newest, without --since).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Keep printing new entries as they happen.
        #[arg(long)]
        follow: bool,
    },
    /// Webhooks: list them, their dead letters, redeliver, replay, test.
    Webhooks {
        /// What to do (default: list them).
        #[command(subcommand)]
        action: Option<WebhookAction>,
    },
    /// Follow events (state changes, QR codes, messages) as they happen.
    Watch {
        /// Only this session.
        token: Option<String>,
    },
    /// Reap sessions stuck connecting or showing a QR code too long, now.
    Cleanup,
    /// Check that the daemon answers.
    Health,
}

/// What `warden webhooks` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum WebhookAction {
    /// Every webhook with its counters.
    List,
    /// Events webhooks gave up on.
    Dead {
        /// Only this webhook's.
        hook: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send a webhook's dead letters again, once each.
    Redeliver {
        /// The webhook.
        hook: String,
        /// Only this journal entry's.
        #[arg(long)]
        seq: Option<i64>,
    },
    /// Send a webhook every event again from a journal entry on.
    Replay {
        /// The webhook.
        hook: String,
        /// The first journal entry to send again.
        #[arg(long)]
        from: i64,
    },
    /// Send a webhook.test event now.
    Test {
        /// The webhook.
        hook: String,
    },
    /// Set a webhook for one session (it goes with the session).
    Set {
        /// The session's token.
        token: String,
        /// Where events are POSTed.
        url: String,
        /// The secret (`whsec_...`); `-` reads it from stdin (out of the process list).
        #[arg(long)]
        secret: Option<String>,
        /// Send without a signature.
        #[arg(long)]
        unsigned: bool,
        /// Event types, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Allow loopback and private addresses.
        #[arg(long)]
        allow_private: bool,
        /// Its name within the session (default: the URL without its query).
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a session's webhook (its name as `warden webhooks` lists it).
    Remove {
        /// The webhook.
        hook: String,
    },
}
