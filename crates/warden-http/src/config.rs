//! The `[http]` table of `daemon.toml`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

/// The shortest API key accepted: long enough that guessing it over the network is hopeless.
pub const MIN_API_KEY_LEN: usize = 16;

/// How the HTTP gateway is served. Read from the `[http]` table of `daemon.toml`; the daemon
/// also reads the key from `WARDEN_HTTP_API_KEY`, which keeps it out of the file.
///
/// ```toml
/// [http]
/// enabled = true              # serve the gateway at all
/// bind = "127.0.0.1:3000"     # loopback by default; anything else needs api_key
/// # api_key = "…"             # or WARDEN_HTTP_API_KEY; every route but /healthz needs it
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Whether the daemon serves HTTP at all.
    pub enabled: bool,
    /// The address to listen on. Loopback unless an API key is set: the gateway can start,
    /// stop and delete sessions, so it is never open to a network without a key.
    pub bind: SocketAddr,
    /// The key every request must carry (`Authorization: Bearer KEY` or `X-Api-Key: KEY`),
    /// except `/healthz` and the dashboard's static files. Never logged.
    pub api_key: Option<String>,
    /// The most HTTP connections open at once; past it a new connection is closed at once.
    /// The daemon's descriptor reserve counts exactly this many.
    pub max_connections: usize,
    /// A client must send a request's whole head (request line and headers) within this,
    /// else its connection is closed: a slow-headers client holds a slot this long at most.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection on which neither side sent a byte for this long is closed (between
    /// requests, or a client that stopped reading). Event streams send a heartbeat well
    /// within it.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The largest request body accepted; a larger one is answered `413 too_large`.
    pub max_body_bytes: usize,
}

/// The default of [`HttpConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 3000)),
            api_key: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_body_bytes: 1024 * 1024,
        }
    }
}

// Hand-written so the key never reaches a log line or a panic message.
impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("enabled", &self.enabled)
            .field("bind", &self.bind)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// A value of the `[http]` table that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A non-loopback address without a key would let anyone on the network control sessions.
    #[error(
        "[http] bind = \"{bind}\" is not a loopback address, so an API key is required: set \
         [http] api_key or WARDEN_HTTP_API_KEY (at least {MIN_API_KEY_LEN} characters), or bind \
         to 127.0.0.1"
    )]
    KeyRequired {
        /// The address asked for.
        bind: SocketAddr,
    },
    /// The key is too short, or has characters that cannot travel in an HTTP header.
    #[error(
        "[http] api_key is unusable: {0}; use at least {MIN_API_KEY_LEN} visible ASCII \
         characters without spaces (for example the output of `openssl rand -hex 32`)"
    )]
    BadKey(&'static str),
    /// `max_connections` is 0: the gateway could answer nobody.
    #[error("[http] max_connections must be at least 1 (set enabled = false to turn HTTP off)")]
    NoConnections,
    /// A timeout is zero, or a limit makes no sense.
    #[error("[http] {0}")]
    Limit(&'static str),
}

impl HttpConfig {
    /// Checks the table: a key, when set, must be usable, and a non-loopback `bind` needs one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(key) = &self.api_key {
            if key.len() < MIN_API_KEY_LEN {
                return Err(ConfigError::BadKey("it is too short"));
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::BadKey(
                    "it has spaces, control or non-ASCII characters",
                ));
            }
        }
        if self.api_key.is_none() && !self.bind.ip().is_loopback() {
            return Err(ConfigError::KeyRequired { bind: self.bind });
        }
        if self.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        if self.header_read_timeout.is_zero() {
            return Err(ConfigError::Limit(
                "header_read_timeout must be more than 0s",
            ));
        }
        // Event streams send a heartbeat every 15 s, and a start may wait 30 s for its QR.
        if self.idle_timeout < Duration::from_secs(45) {
            return Err(ConfigError::Limit(
                "idle_timeout must be at least 45s (longer than a start's wait and the event \
                 stream's heartbeat)",
            ));
        }
        if self.max_body_bytes < 4096 {
            return Err(ConfigError::Limit("max_body_bytes must be at least 4096"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str, expected: Result<(), &str>) {
        let config: HttpConfig = match toml::from_str(toml_text).map_err(|e| e.to_string()) {
            Ok(config) => config,
            Err(e) => {
                let fragment = expected.expect_err(toml_text);
                assert!(
                    e.contains(fragment),
                    "{toml_text}: {e:?} lacks {fragment:?}"
                );
                return;
            }
        };
        match (config.validate(), expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(fragment)) => {
                let message = e.to_string();
                assert!(
                    message.contains(fragment),
                    "{toml_text}: {message:?} lacks {fragment:?}"
                );
                assert!(
                    !message.contains("secret-secret"),
                    "the key leaks: {message}"
                );
            }
            (got, want) => panic!("{toml_text}: got {got:?}, wanted {want:?}"),
        }
    }

    #[test]
    fn the_table_validates_or_says_what_to_do() {
        check("", Ok(()));
        check("enabled = false", Ok(()));
        check(r#"bind = "127.0.0.1:8080""#, Ok(()));
        check(r#"bind = "[::1]:8080""#, Ok(()));
        check(r#"bind = "0.0.0.0:3000""#, Err("an API key is required"));
        check(r#"bind = "0.0.0.0:3000""#, Err("WARDEN_HTTP_API_KEY"));
        check(r#"bind = "[::]:3000""#, Err("not a loopback address"));
        check("max_connections = 1", Ok(()));
        check(
            "max_connections = 0",
            Err("max_connections must be at least 1"),
        );
        check(
            "bind = \"0.0.0.0:3000\"\napi_key = \"secret-secret-secret\"",
            Ok(()),
        );
        check(r#"api_key = "short""#, Err("too short"));
        check(r#"api_key = "secret-secret with space""#, Err("spaces"));
        check("port = 3000", Err("unknown field `port`"));
        check(r#"bind = "localhost:3000""#, Err("invalid socket address"));
        check(
            "header_read_timeout = \"2s\"\nidle_timeout = \"1m\"\nmax_body_bytes = 65536",
            Ok(()),
        );
        check("header_read_timeout = \"0s\"", Err("more than 0s"));
        check("idle_timeout = \"5s\"", Err("at least 45s"));
        check("max_body_bytes = 10", Err("at least 4096"));
    }

    #[test]
    fn defaults_and_debug_hide_the_key() {
        let config = HttpConfig::default();
        assert!(config.enabled);
        assert_eq!(config.bind.to_string(), "127.0.0.1:3000");
        let with_key = HttpConfig {
            api_key: Some("secret-secret-secret".into()),
            ..config
        };
        let shown = format!("{with_key:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
