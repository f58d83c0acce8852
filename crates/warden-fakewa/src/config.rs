//! Server settings, in Rust ([`ServerConfig`]) or from a TOML scenario file.
//!
//! The file format (documented with an example in `docs/testing.md`):
//!
//! ```toml
//! [server]                      # optional; these are the defaults
//! listen = "127.0.0.1:0"
//! accept_unknown_devices = true
//! first_phone = 15550000001
//! receipts = "delivered"        # what a contact sends back: "none", "delivered" or "read"
//! replace_older_login = false   # a login ends the device's older live login ("replaced")
//!
//! [[listener]]                  # optional listener timeline
//! mode = "refuse"
//! for = "2s"
//!
//! [registration]                # clients without credentials
//! default = [{ qr = { refs = 3, first = "20s", then = "10s" } }, { wait = "2s" }, { pair = {} }]
//!
//! [login]                       # logins of accounts not listed below
//! default = ["login"]
//!
//! [contacts]                    # devices per contact number (default: [0], its phone)
//! 15557654321 = [0, 3]
//!
//! [accounts.15551234567]        # logins of one account, by attempt
//! attempts = [[{ failure = { reason = 503 } }], ["login", { wait = "30s" }, "drop"]]
//! default = ["login"]
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::chat::Receipts;
use crate::scenario::{Plan, Script};
use crate::server::ListenerMode;

/// A scenario file could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this format.
    #[error("invalid scenario file: {0}")]
    Parse(#[from] toml::de::Error),
    /// The file parses but asks for something the server cannot do.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

/// One phase of the listener timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerPhase {
    /// What the listener does in this phase.
    pub mode: ListenerMode,
    /// How long the phase lasts; `None` for ever. After the last timed phase the
    /// listener is back to normal.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub duration: Option<Duration>,
}

/// Everything the server needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// What each connection plays.
    pub script: Script,
    /// Accept logins of devices this server never paired (true), or refuse them with
    /// `<failure reason=401>` (false: only devices paired here log in).
    pub accept_unknown_devices: bool,
    /// First phone number handed to pairings that do not name one.
    pub first_phone: u64,
    /// Pre-key count reported to the client (5 or more spares it an upload).
    pub prekey_count: u32,
    /// Limit for the WebSocket upgrade and for the Noise handshake, each.
    pub handshake_timeout: Duration,
    /// How long a `login` step waits for the client to come online before the next step.
    pub online_timeout: Duration,
    /// Listener timeline at startup; empty means normal from the start.
    pub listener: Vec<ListenerPhase>,
    /// What a contact sends back once it has decrypted a message.
    pub receipts: Receipts,
    /// The devices of some contact numbers; every other number has one, its phone (0).
    pub contact_devices: BTreeMap<String, Vec<u16>>,
    /// Do as WhatsApp does when a device logs in while an older connection of the same
    /// device (`phone:device`) is still logged in: the older one gets
    /// `<stream:error><conflict type="replaced"/>` and is closed, before the new login is
    /// accepted. Recorded as [`ServerEvent::Replaced`](crate::ServerEvent::Replaced) on the
    /// older connection, which stops counting as live. Off by default: both stay connected
    /// (and [`Snapshot::max_concurrent`](crate::Snapshot::max_concurrent) shows the two).
    pub replace_older_login: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            script: Script::default(),
            accept_unknown_devices: true,
            first_phone: 15550000001,
            prekey_count: 50,
            handshake_timeout: Duration::from_secs(20),
            online_timeout: Duration::from_secs(10),
            listener: Vec::new(),
            receipts: Receipts::default(),
            contact_devices: BTreeMap::new(),
            replace_older_login: false,
        }
    }
}

impl ServerConfig {
    /// The default configuration with `script`.
    pub fn with_script(script: Script) -> Self {
        Self {
            script,
            ..Self::default()
        }
    }

    /// Parses a TOML scenario file's text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: ScenarioFile = toml::from_str(text)?;
        let config = file.into_config();
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML scenario file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Checks the script and timeline.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.script.validate().map_err(ConfigError::Invalid)?;
        if let Some((number, _)) = self.contact_devices.iter().find(|(_, d)| d.is_empty()) {
            return Err(ConfigError::Invalid(format!(
                "contact {number} has no devices"
            )));
        }
        if let Some(i) = self.listener.iter().position(|p| p.duration.is_none())
            && i + 1 != self.listener.len()
        {
            return Err(ConfigError::Invalid(format!(
                "listener phase {} lasts for ever, so the phases after it never start",
                i + 1
            )));
        }
        Ok(())
    }
}

/// The TOML file layout.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    listener: Vec<ListenerPhase>,
    registration: Option<Plan>,
    login: Option<Plan>,
    #[serde(default)]
    accounts: BTreeMap<String, Plan>,
    #[serde(default)]
    contacts: BTreeMap<String, Vec<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ServerSection {
    listen: SocketAddr,
    accept_unknown_devices: bool,
    first_phone: u64,
    prekey_count: u32,
    #[serde(with = "humantime_serde")]
    handshake_timeout: Duration,
    #[serde(with = "humantime_serde")]
    online_timeout: Duration,
    receipts: Receipts,
    replace_older_login: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        let d = ServerConfig::default();
        Self {
            listen: d.listen,
            accept_unknown_devices: d.accept_unknown_devices,
            first_phone: d.first_phone,
            prekey_count: d.prekey_count,
            handshake_timeout: d.handshake_timeout,
            online_timeout: d.online_timeout,
            receipts: d.receipts,
            replace_older_login: d.replace_older_login,
        }
    }
}

impl ScenarioFile {
    fn into_config(self) -> ServerConfig {
        let defaults = Script::default();
        let s = self.server;
        ServerConfig {
            listen: s.listen,
            script: Script {
                registration: self.registration.unwrap_or(defaults.registration),
                login: self.login.unwrap_or(defaults.login),
                accounts: self.accounts,
            },
            accept_unknown_devices: s.accept_unknown_devices,
            first_phone: s.first_phone,
            prekey_count: s.prekey_count,
            handshake_timeout: s.handshake_timeout,
            online_timeout: s.online_timeout,
            listener: self.listener,
            receipts: s.receipts,
            contact_devices: self.contacts,
            replace_older_login: s.replace_older_login,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{FailureSpec, PairSpec, QrSpec, Scenario, Step, StreamErrorSpec};

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            ServerConfig::from_toml("").unwrap(),
            ServerConfig::default()
        );
    }

    #[test]
    fn parses_every_step_kind() {
        let text = r#"
            [server]
            listen = "127.0.0.1:7000"
            accept_unknown_devices = false
            first_phone = 4900000001
            receipts = "read"
            replace_older_login = true

            [contacts]
            4915550001 = [0, 3]

            [[listener]]
            mode = "refuse"
            for = "2s"
            [[listener]]
            mode = "silent_ws"
            for = "1s"

            [registration]
            default = [
              { qr = { refs = 2, first = "500ms", then = "250ms" } },
              { wait = "100ms" },
              { pair = { phone = "4912345", restart_after = "10ms" } },
            ]

            [accounts.4912345]
            attempts = [
              [{ failure = { reason = 402, code = 101, expire = "1h" } }],
              ["login", "ignore_pings", { stream_error = { code = 516 } }, { stream_error = { conflict = "replaced" } }],
            ]
            default = ["login", { wait = "1s" }, { await_sent = 2 }, "drop", "close", "stall", "stream_end"]
        "#;
        let c = ServerConfig::from_toml(text).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert!(!c.accept_unknown_devices);
        assert_eq!(c.first_phone, 4900000001);
        assert_eq!(c.receipts, Receipts::Read);
        assert!(c.replace_older_login);
        assert_eq!(
            c.contact_devices,
            BTreeMap::from([("4915550001".to_string(), vec![0, 3])])
        );
        assert_eq!(
            c.listener[0],
            ListenerPhase {
                mode: ListenerMode::Refuse,
                duration: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(c.listener[1].mode, ListenerMode::SilentWebSocket);
        assert_eq!(
            c.script.registration.default,
            Scenario::new([
                Step::Qr(QrSpec::new(
                    2,
                    Duration::from_millis(500),
                    Duration::from_millis(250)
                )),
                Step::Wait(Duration::from_millis(100)),
                Step::Pair(PairSpec {
                    restart_after: Duration::from_millis(10),
                    ..PairSpec::phone("4912345")
                }),
            ])
        );
        let plan = c.script.login_plan("4912345");
        assert_eq!(
            plan.for_attempt(1).steps(),
            &[Step::Failure(FailureSpec::temp_ban(
                101,
                Duration::from_secs(3600)
            ))]
        );
        assert_eq!(
            plan.for_attempt(2).steps(),
            &[
                Step::Login,
                Step::IgnorePings,
                Step::stream_error(516),
                Step::StreamError(StreamErrorSpec::replaced()),
            ]
        );
        assert_eq!(plan.for_attempt(3).steps().len(), 7);
        assert_eq!(plan.for_attempt(3).steps()[2], Step::AwaitSent(2));
        // Logins of other accounts keep the default plan.
        assert_eq!(c.script.login_plan("1"), &Plan::always(Scenario::login()));
    }

    #[test]
    fn rejects_typos_and_impossible_values() {
        assert!(matches!(
            ServerConfig::from_toml("[contacts]\n1555 = []"),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            ServerConfig::from_toml("[server]\nreceipts = \"sometimes\""),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            ServerConfig::from_toml("[server]\nlisten_on = \"x\""),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            ServerConfig::from_toml("[login]\ndefault = [\"dance\"]"),
            Err(ConfigError::Parse(_))
        ));
        let forever_first = "[[listener]]\nmode = \"refuse\"\n[[listener]]\nmode = \"normal\"";
        assert!(matches!(
            ServerConfig::from_toml(forever_first),
            Err(ConfigError::Invalid(_))
        ));
        let slow_qr =
            "[registration]\ndefault = [{ qr = { refs = 2, first = \"61s\", then = \"1s\" } }]";
        assert!(matches!(
            ServerConfig::from_toml(slow_qr),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn example_file_parses() {
        let c = ServerConfig::from_toml(include_str!("../examples/scenario.toml")).unwrap();
        assert!(!c.script.registration.default.steps().is_empty());
    }
}
