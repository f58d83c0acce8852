//! `[[webhooks]]` in `daemon.toml`: where events go, which ones, signed with what, retried
//! how. The keys `url`, `secret`, `events` and `allow_private` are fixed; the others have
//! defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::{Secret, SecretError};

/// The event types a webhook may ask for (`"*"`: all of them).
pub const EVENT_TYPES: [&str; 6] = [
    "session.status",
    "session.qr",
    "session.pair_code",
    "message",
    "message.status",
    "webhook.test",
];

/// One webhook, as written in `daemon.toml`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed: `https://` (or `http://`).
    pub url: String,
    /// `whsec_` and the base64 of the signing key. Required unless `unsigned = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Sends without a signature; only when explicitly set (there is no default secret).
    #[serde(default)]
    pub unsigned: bool,
    /// The event types to send, or `["*"]`.
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// Lets the URL reach loopback, link-local and private addresses (refused otherwise).
    #[serde(default)]
    pub allow_private: bool,
    /// A name for logs, metrics and the CLI; its identity (where its progress is kept).
    /// Defaults to the URL without its query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The bound on one request, from connecting to the status line.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How many attempts before an event goes to the dead letters.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to `backoff_cap`, with jitter.
    #[serde(default = "default_base", with = "humantime_serde")]
    pub backoff_base: Duration,
    /// The longest delay between attempts (a 429's `Retry-After` is honoured up to 1 h).
    #[serde(default = "default_cap", with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// How many sessions' events are sent at once (each session's in order).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name())
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("unsigned", &self.unsigned)
            .field("events", &self.events)
            .field("allow_private", &self.allow_private)
            .finish_non_exhaustive()
    }
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_attempts() -> u32 {
    10
}
fn default_base() -> Duration {
    Duration::from_secs(1)
}
fn default_cap() -> Duration {
    Duration::from_secs(600)
}
fn default_concurrency() -> usize {
    16
}

/// Why a webhook's configuration was refused. Never quotes the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The URL is not `http(s)://host[:port]/...`.
    #[error("url {0:?} is not an http:// or https:// URL with a host")]
    Url(String),
    /// No secret, and not marked unsigned.
    #[error(
        "webhook {0} has no secret: set secret = \"whsec_...\" (there is no default), or unsigned = true"
    )]
    NoSecret(String),
    /// Both a secret and `unsigned`.
    #[error("webhook {0} has a secret and unsigned = true; choose one")]
    SecretAndUnsigned(String),
    /// The secret is malformed.
    #[error("webhook {name}: secret: {error}")]
    Secret {
        /// The webhook.
        name: String,
        /// What is wrong with it.
        error: SecretError,
    },
    /// An unknown event type.
    #[error("webhook {name}: unknown event {event:?}; known: {known}, or \"*\"", known = EVENT_TYPES.join(", "))]
    Event {
        /// The webhook.
        name: String,
        /// The event named.
        event: String,
    },
    /// A bound out of range.
    #[error("webhook {name}: {message}")]
    Range {
        /// The webhook.
        name: String,
        /// What is out of range.
        message: String,
    },
    /// Two webhooks with one name.
    #[error("two webhooks are named {0}; give one a different name")]
    Duplicate(String),
}

/// A URL split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `true` for https.
    pub tls: bool,
    /// The host name or address (without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The path and query.
    pub path: String,
}

impl Target {
    /// Parses an `http://` or `https://` URL.
    pub fn parse(url: &str) -> Option<Self> {
        let uri: hyper::Uri = url.parse().ok()?;
        let tls = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            return None; // credentials in a webhook URL would end up in logs
        }
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        Some(Self {
            tls,
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map_or("/".into(), |p| p.as_str().to_owned()),
        })
    }
}

impl WebhookConfig {
    /// A webhook to `url` with every default and no secret.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret: None,
            unsigned: false,
            events: all_events(),
            allow_private: false,
            name: None,
            timeout: default_timeout(),
            max_attempts: default_attempts(),
            backoff_base: default_base(),
            backoff_cap: default_cap(),
            concurrency: default_concurrency(),
        }
    }

    /// Its name: the one given, or the URL without its query (which may carry a key).
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.url.split('?').next().unwrap_or("").to_owned())
    }

    /// Whether it wants events of type `kind` (only [`EVENT_TYPES`] are events: the
    /// journal's other entries, such as operations asked, are not sent).
    pub fn wants(&self, kind: &str) -> bool {
        EVENT_TYPES.contains(&kind) && self.events.iter().any(|e| e == "*" || e == kind)
    }

    /// Checks the webhook and returns its signing key (`None`: unsigned).
    pub fn check(&self) -> Result<Option<Secret>, ConfigError> {
        let name = self.name();
        Target::parse(&self.url).ok_or_else(|| ConfigError::Url(name.clone()))?;
        let secret = match (&self.secret, self.unsigned) {
            (None, false) => return Err(ConfigError::NoSecret(name)),
            (Some(_), true) => return Err(ConfigError::SecretAndUnsigned(name)),
            (None, true) => None,
            (Some(text), false) => {
                Some(Secret::parse(text).map_err(|error| ConfigError::Secret {
                    name: name.clone(),
                    error,
                })?)
            }
        };
        for event in &self.events {
            if event != "*" && !EVENT_TYPES.contains(&event.as_str()) {
                return Err(ConfigError::Event {
                    name,
                    event: event.clone(),
                });
            }
        }
        let range = |message: &str| ConfigError::Range {
            name: name.clone(),
            message: message.into(),
        };
        if self.events.is_empty() {
            return Err(range("events is empty; use [\"*\"] for every event"));
        }
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return Err(range("max_attempts must be 1 to 100"));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            return Err(range("timeout must be more than 0s and at most 5m"));
        }
        if self.backoff_base.is_zero() || self.backoff_cap < self.backoff_base {
            return Err(range(
                "backoff_base must be more than 0s, and backoff_cap at least backoff_base",
            ));
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err(range("concurrency must be 1 to 1024"));
        }
        Ok(secret)
    }
}

/// Checks a list of webhooks: each one, and their names unique.
pub fn check_all(hooks: &[WebhookConfig]) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for hook in hooks {
        hook.check()?;
        if !names.insert(hook.name()) {
            return Err(ConfigError::Duplicate(hook.name()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn hook(url: &str, secret: Option<&str>, unsigned: bool, events: &[&str]) -> WebhookConfig {
        WebhookConfig {
            secret: secret.map(str::to_owned),
            unsigned,
            events: events.iter().map(|e| e.to_string()).collect(),
            ..WebhookConfig::new(url)
        }
    }

    #[test]
    fn a_webhook_needs_a_url_a_secret_or_unsigned_and_known_events() {
        let u = "https://example.com/hooks/whatsapp";
        let rows: [(WebhookConfig, Result<bool, &str>); 9] = [
            (hook(u, Some(SECRET), false, &["*"]), Ok(true)),
            (hook(u, None, true, &["message"]), Ok(false)),
            (hook(u, None, false, &["*"]), Err("has no secret")),
            (hook(u, Some(SECRET), true, &["*"]), Err("choose one")),
            (hook(u, Some("secret"), false, &["*"]), Err("whsec_")),
            (
                hook(u, Some(SECRET), false, &["messages"]),
                Err("unknown event"),
            ),
            (hook(u, Some(SECRET), false, &[]), Err("events is empty")),
            (
                hook("ftp://x/y", Some(SECRET), false, &["*"]),
                Err("not an http"),
            ),
            (
                hook("https://user:pw@x/y", Some(SECRET), false, &["*"]),
                Err("not an http"),
            ),
        ];
        for (i, (config, want)) in rows.into_iter().enumerate() {
            match (config.check(), want) {
                (Ok(secret), Ok(signed)) => assert_eq!(secret.is_some(), signed, "row {i}"),
                (Err(e), Err(text)) => {
                    let message = e.to_string();
                    assert!(message.contains(text), "row {i}: {message}");
                    assert!(!message.contains("MfKQ9r8G"), "row {i} quotes the secret");
                }
                (got, want) => panic!("row {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_fixed_keys_parse_and_the_secret_never_shows_in_debug() {
        let text = r#"
            url = "https://example.com/hooks/whatsapp?key=abc"
            secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            events = ["session.status", "message"]
            allow_private = false
        "#;
        let config: WebhookConfig = toml::from_str(text).unwrap();
        assert!(config.check().unwrap().is_some());
        assert_eq!(config.name(), "https://example.com/hooks/whatsapp");
        assert!(config.wants("message") && !config.wants("session.qr"));
        assert!(!format!("{config:?}").contains("MfKQ"));
        assert_eq!(
            Target::parse("http://[::1]:8080/a?b=c"),
            Some(Target {
                tls: false,
                host: "::1".into(),
                port: 8080,
                path: "/a?b=c".into()
            })
        );
        let twice = [config.clone(), config];
        assert!(matches!(check_all(&twice), Err(ConfigError::Duplicate(_))));
    }
}
