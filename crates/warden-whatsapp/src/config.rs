//! [`WaConfig`]: the `[whatsapp]` table of `daemon.toml`.

use std::time::Duration;

use serde::Deserialize;
use warden_core::ProxyUrl;

/// WhatsApp Web's WebSocket endpoint.
pub const WHATSAPP_WS_URL: &str = "wss://web.whatsapp.com/ws/chat";

/// How warden talks to WhatsApp (`[whatsapp]` in `daemon.toml`). The sessions folder is
/// passed separately (it is the supervisor's).
///
/// ```toml
/// [whatsapp]
/// url = "wss://web.whatsapp.com/ws/chat"
/// version = "2.3000.1027868167"   # empty: wa-rs looks it up over HTTPS
/// connect_timeout = "20s"
/// liveness_timeout = "90s"
/// proxy = "socks5h://user:password@10.0.0.2:1080"   # optional: sessions without their own
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WaConfig {
    /// The WebSocket URL (`wss://` with TLS, `ws://` in the clear, for tests).
    pub url: String,
    /// The WhatsApp Web version to announce, `"2.3000.N"`. Empty lets wa-rs fetch the current
    /// one from web.whatsapp.com (over HTTPS, once a day).
    pub version: String,
    /// Bound on establishing a connection: TCP, TLS, WebSocket upgrade and the server's first
    /// handshake reply, together.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A connection that receives nothing for this long (pings included) is closed and reported
    /// as timed out. Pings go out after a third of it without traffic.
    #[serde(with = "humantime_serde")]
    pub liveness_timeout: Duration,
    /// How long the server may take to acknowledge a sent message; past it the send counts
    /// as failed and the message is sent again later under the same id.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// The proxy of every session that sets none of its own (`socks5://`, `socks5h://` or
    /// `http://`, with optional `user:password@`). None by default.
    pub proxy: Option<ProxyUrl>,
}

impl Default for WaConfig {
    fn default() -> Self {
        Self {
            url: WHATSAPP_WS_URL.into(),
            version: String::new(),
            connect_timeout: Duration::from_secs(20),
            liveness_timeout: Duration::from_secs(90),
            ack_timeout: Duration::from_secs(30),
            proxy: None,
        }
    }
}

/// A configuration value that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The URL is not a `ws://` or `wss://` URL with a host.
    #[error("[whatsapp] url {0:?}: expected ws://host[:port]/path or wss://…")]
    Url(String),
    /// The version is not `2.3000.N`.
    #[error("[whatsapp] version {0:?}: expected three numbers like \"2.3000.1027868167\"")]
    Version(String),
    /// A timeout is zero.
    #[error("[whatsapp] {0} must be more than 0s")]
    ZeroTimeout(&'static str),
}

impl WaConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.uri()?;
        self.version_triple()?;
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout("connect_timeout"));
        }
        if self.liveness_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout("liveness_timeout"));
        }
        Ok(())
    }

    /// The URL, parsed.
    pub fn uri(&self) -> Result<http::Uri, ConfigError> {
        let bad = || ConfigError::Url(self.url.clone());
        let uri: http::Uri = self.url.parse().map_err(|_| bad())?;
        match (uri.scheme_str(), uri.host()) {
            (Some("ws" | "wss"), Some(host)) if !host.is_empty() => Ok(uri),
            _ => Err(bad()),
        }
    }

    /// The pinned version as wa-rs wants it; `None` when it should be looked up.
    pub fn version_triple(&self) -> Result<Option<(u32, u32, u32)>, ConfigError> {
        let text = self.version.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || ConfigError::Version(self.version.clone());
        let mut parts = text.split('.').map(|p| p.parse::<u32>().map_err(|_| bad()));
        let triple = (
            parts.next().ok_or_else(bad)??,
            parts.next().ok_or_else(bad)??,
            parts.next().ok_or_else(bad)??,
        );
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Some(triple))
    }

    /// How long a connection may stay silent before the watchdog pings it.
    pub fn ping_after(&self) -> Duration {
        self.liveness_timeout / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_whatsapps() {
        let c = WaConfig::default();
        assert_eq!(c.url, "wss://web.whatsapp.com/ws/chat");
        assert_eq!(c.version_triple(), Ok(None));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn reads_the_whatsapp_table() {
        let c: WaConfig = toml::from_str(
            r#"
            url = "ws://127.0.0.1:9/ws/chat"
            version = "2.3000.1027868167"
            connect_timeout = "250ms"
            liveness_timeout = "1m 30s"
            "#,
        )
        .unwrap();
        assert_eq!(c.version_triple(), Ok(Some((2, 3000, 1027868167))));
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.liveness_timeout, Duration::from_secs(90));
        assert_eq!(c.ping_after(), Duration::from_secs(30));
        assert!(c.validate().is_ok());
        let partial: WaConfig = toml::from_str("version = \"2.3000.5\"").unwrap();
        assert_eq!(partial.url, WHATSAPP_WS_URL);
    }

    #[test]
    fn rejects_typos_and_nonsense() {
        assert!(toml::from_str::<WaConfig>("conect_timeout = \"1s\"").is_err());
        for version in ["2.3000", "2.3000.x", "2.3000.1.4", "v2"] {
            let c = WaConfig {
                version: version.into(),
                ..WaConfig::default()
            };
            assert_eq!(c.validate(), Err(ConfigError::Version(version.into())));
        }
        for url in ["http://web.whatsapp.com/ws", "ws:///x", "nope"] {
            let c = WaConfig {
                url: url.into(),
                ..WaConfig::default()
            };
            assert_eq!(c.validate(), Err(ConfigError::Url(url.into())));
        }
        let c = WaConfig {
            connect_timeout: Duration::ZERO,
            ..WaConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroTimeout("connect_timeout"))
        );
    }
}
