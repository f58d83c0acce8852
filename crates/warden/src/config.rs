//! `daemon.toml`: every key has a default, unknown keys and bad values are refused with the
//! file, the line and what was expected, and `WARDEN_<TABLE>_<KEY>` variables override keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use warden_core::{AdmissionConfig, JanitorConfig, JournalConfig, OutboxConfig, PolicyConfig};
use warden_http::HttpConfig;
use warden_webhooks::WebhookConfig;
use warden_whatsapp::WaConfig;

/// The tables `daemon.toml` may have (and the `WARDEN_<TABLE>_` prefixes that override them).
/// (`[[webhooks]]`, a list, has no overrides.)
pub const TABLES: [&str; 9] = [
    "daemon",
    "cluster",
    "policy",
    "janitor",
    "admission",
    "outbox",
    "journal",
    "whatsapp",
    "http",
];

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[daemon]`: paths, socket, logs, limits.
    pub daemon: DaemonConfig,
    /// `[policy]`: the restart policy.
    pub policy: PolicyConfig,
    /// `[janitor]`: the periodic cleanup.
    pub janitor: JanitorConfig,
    /// `[admission]`: limits on connection attempts.
    pub admission: AdmissionConfig,
    /// `[outbox]`: how long messages wait, how fast they go.
    pub outbox: OutboxConfig,
    /// `[journal]`: how much of each session's history is kept.
    pub journal: JournalConfig,
    /// `[[webhooks]]`: where events are delivered.
    pub webhooks: Vec<WebhookConfig>,
    /// `[whatsapp]`: how to reach WhatsApp.
    pub whatsapp: WaConfig,
    /// `[http]`: the HTTP gateway and dashboard.
    pub http: HttpConfig,
    /// `[cluster]`: one node of several over PostgreSQL (off unless `database_url` is set).
    pub cluster: ClusterConfig,
}

/// `[cluster]` (docs/cluster.md): with `database_url` set, the daemon is one node of a
/// cluster: sessions, credentials and history live on PostgreSQL, and each session runs on the
/// one node that holds its lease.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `postgres://user:password@host/db` or a `key=value` string; never logged. Empty: a
    /// daemon on its own, on `sessions/warden.db`.
    pub database_url: String,
    /// This node's name, stable across restarts (sessions are placed by it); unique in the
    /// cluster.
    pub node: String,
    /// At most this many sessions on this node; 0: no cap beyond `[daemon] max_sessions`.
    pub cap: usize,
    /// Every lease timing multiplied by this: 1.0 is renew every 2 s, fence after 10 s, dead
    /// after 15 s. Below 1 only for tests on one machine.
    pub timing_scale: f64,
    /// The session store's PostgreSQL connections (whatever the number of sessions).
    pub connections: usize,
    /// How long a call to PostgreSQL may wait for its answer before it is reported
    /// unconfirmed (a write) or failed (a read).
    #[serde(with = "humantime_serde")]
    pub answer_timeout: Duration,
    /// `off` (plain connections) or `verify`: TLS required, the server's certificate verified
    /// against `ca_file` (or the public web roots) and its name against the host.
    pub tls: TlsMode,
    /// The CA certificates (PEM) that `tls = "verify"` trusts (relative to the config file's
    /// folder); empty: the public web roots.
    pub ca_file: PathBuf,
}

/// `[cluster] tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain connections.
    #[default]
    Off,
    /// TLS, the server verified.
    Verify,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            node: String::new(),
            cap: 0,
            timing_scale: 1.0,
            connections: 4,
            answer_timeout: Duration::from_secs(10),
            tls: TlsMode::Off,
            ca_file: PathBuf::new(),
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field(
                "database_url",
                &(!self.database_url.is_empty()).then_some("(set)"),
            )
            .field("node", &self.node)
            .field("cap", &self.cap)
            .field("timing_scale", &self.timing_scale)
            .field("connections", &self.connections)
            .field("answer_timeout", &self.answer_timeout)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl ClusterConfig {
    /// Whether the daemon runs as a node of a cluster.
    pub fn enabled(&self) -> bool {
        !self.database_url.is_empty()
    }

    /// The TLS connector for PostgreSQL (`None`: `tls = "off"`); fails on an unreadable CA
    /// file.
    pub fn pg_tls(&self) -> Result<Option<warden_cluster::PgTls>, warden_cluster::ClusterError> {
        if self.tls == TlsMode::Off {
            return Ok(None);
        }
        let ca_file = (!self.ca_file.as_os_str().is_empty()).then_some(self.ca_file.as_path());
        warden_cluster::PgTls::new(ca_file).map(Some)
    }

    /// The lease timings, scaled.
    pub fn timing(&self) -> warden_cluster::Timing {
        warden_cluster::Timing::scaled(self.timing_scale)
    }

    /// Checks the values (only when the cluster is on).
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.node.trim().is_empty() {
            return Err("node must name this node when database_url is set".into());
        }
        if !(self.timing_scale.is_finite() && self.timing_scale > 0.0 && self.timing_scale <= 10.0)
        {
            return Err("timing_scale must be above 0 and at most 10".into());
        }
        if !(1..=64).contains(&self.connections) {
            return Err("connections must be between 1 and 64".into());
        }
        if self.answer_timeout.is_zero() {
            return Err("answer_timeout must be more than 0s".into());
        }
        if self.tls == TlsMode::Off && !self.ca_file.as_os_str().is_empty() {
            return Err("ca_file is only used with tls = \"verify\"".into());
        }
        self.timing()
            .validate()
            .map_err(|e| format!("timing_scale {}: {e}", self.timing_scale))
    }
}

/// `[daemon]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Where `sessions/<token>/` folders live (relative to the config file's folder).
    pub sessions_dir: PathBuf,
    /// The control socket (relative to the config file's folder).
    pub socket: PathBuf,
    /// The control socket's mode, an octal string such as `"0660"`; never world-writable.
    pub socket_mode: SocketMode,
    /// Where daily log files go (relative to the config file's folder); empty: no log files.
    pub log_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace` (or a full `RUST_LOG`-style filter).
    pub log_level: String,
    /// The longest request line accepted on the socket, in bytes.
    pub max_line_bytes: usize,
    /// How many control clients may be connected at once.
    pub max_clients: usize,
    /// The most sessions live (connecting or connected) at once; 0: as many as the
    /// file-descriptor limit allows. When set, the smaller of the two applies.
    pub max_sessions: usize,
    /// The bound on a graceful shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The bound on closing one connection.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            sessions_dir: "sessions".into(),
            socket: "warden.sock".into(),
            socket_mode: SocketMode(0o660),
            log_dir: "logs".into(),
            log_level: "info".into(),
            max_line_bytes: 64 * 1024,
            max_clients: 256,
            max_sessions: 0,
            shutdown_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Permission bits of the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only a string: a TOML integer cannot say whether 660 was meant in octal.
        let text = String::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected an octal mode as a string, such as \"0660\"")
        })?;
        let mode = u32::from_str_radix(text.trim().trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("{text:?} is not an octal mode such as \"0660\""))
            })?;
        if mode & 0o002 != 0 {
            return Err(serde::de::Error::custom(format!(
                "socket mode {mode:04o} is world-writable; use \"0660\" or \"0600\""
            )));
        }
        Ok(Self(mode))
    }
}

/// The configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file (or an override) has a bad key or value.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's message: the line, the column, and what was expected.
        message: String,
    },
}

/// Where the configuration came from, and what it says.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration, with paths resolved.
    pub config: Config,
    /// The file it was read from (`None`: no file, defaults only).
    pub path: Option<PathBuf>,
}

/// Reads `path` (a missing file is an error only if `required`), applies the environment's
/// overrides, checks every value, and resolves relative paths against the file's folder.
pub fn load(path: &Path, required: bool) -> Result<Loaded, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let (text, found) = match std::fs::read_to_string(path) {
        Ok(text) => (text, true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => (String::new(), false),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut config = parse(&text, &env).map_err(|message| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = base.join(&*p);
        }
    };
    resolve(&mut config.daemon.sessions_dir);
    resolve(&mut config.daemon.socket);
    resolve(&mut config.daemon.log_dir);
    resolve(&mut config.cluster.ca_file);
    Ok(Loaded {
        config,
        path: found.then(|| path.to_owned()),
    })
}

/// Parses the file's text with `env`'s `WARDEN_<TABLE>_<KEY>` overrides, and validates it.
/// An error quotes the offending line with any URL password in it masked (a proxy's).
pub fn parse(text: &str, env: &[(String, String)]) -> Result<Config, String> {
    parse_unmasked(text, env)
        .map_err(|e| mask_webhook_secrets(&warden_core::proxy::mask_passwords(&e)))
}

/// `text` with every `whsec_...` webhook secret replaced by `whsec_***` (a parser error
/// quotes the offending line, which may hold one).
fn mask_webhook_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("whsec_") {
        out.push_str(&rest[..at]);
        out.push_str("whsec_***");
        let after = &rest[at + "whsec_".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || "+/=".contains(c)))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn parse_unmasked(text: &str, env: &[(String, String)]) -> Result<Config, String> {
    // First the file alone, so errors point at its lines.
    let mut config: Config =
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
    let overrides = overrides(env);
    if !overrides.is_empty() {
        let names: Vec<&str> = overrides.iter().map(|o| o.3.as_str()).collect();
        // Values read as TOML first (numbers, booleans); if that does not fit, every value as
        // plain text (an API key made of digits is still a string).
        let typed = with_overrides(text, &overrides, false)?;
        config = match Config::deserialize(typed) {
            Ok(config) => config,
            Err(e) => with_overrides(text, &overrides, true)
                .and_then(|t| Config::deserialize(t).map_err(|e| e.to_string()))
                .map_err(|_| {
                    format!(
                        "after the environment overrides ({}): {e}",
                        names.join(", ")
                    )
                })?,
        };
    }
    validate(&config, text)?;
    Ok(config)
}

type Override = (String, String, toml::Value, String);

/// The file's table with `overrides` applied (all as strings when `as_text`).
fn with_overrides(
    text: &str,
    overrides: &[Override],
    as_text: bool,
) -> Result<toml::Value, String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    for (table_name, key, value, var) in overrides {
        let section = table
            .entry(table_name.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        let toml::Value::Table(section) = section else {
            return Err(format!("{var}: [{table_name}] is not a table in the file"));
        };
        let value = match (as_text, value) {
            (true, toml::Value::String(_)) | (false, _) => value.clone(),
            (true, other) => toml::Value::String(other.to_string()),
        };
        section.insert(key.clone(), value);
    }
    Ok(toml::Value::Table(table))
}

/// `(table, key, value, variable)` for every `WARDEN_<TABLE>_<KEY>` in `env`.
fn overrides(env: &[(String, String)]) -> Vec<Override> {
    let mut out = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("WARDEN_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some((table, key)) = lower.split_once('_') else {
            continue;
        };
        if !TABLES.contains(&table) || key.is_empty() {
            continue;
        }
        // A TOML value when it reads as one (numbers, booleans, quoted strings), else a string.
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        out.push((table.to_owned(), key.to_owned(), value, var.clone()));
    }
    out.sort_by(|a, b| a.3.cmp(&b.3));
    out
}

/// Checks what types alone cannot, naming the line of the offending key when it is in the file.
fn validate(config: &Config, text: &str) -> Result<(), String> {
    let checks: [(&str, Result<(), String>); 8] = [
        ("policy", config.policy.validate()),
        ("janitor", config.janitor.validate()),
        ("admission", config.admission.validate()),
        ("outbox", config.outbox.validate()),
        ("journal", config.journal.validate()),
        (
            "whatsapp",
            config.whatsapp.validate().map_err(|e| e.to_string()),
        ),
        ("http", config.http.validate().map_err(|e| e.to_string())),
        ("cluster", config.cluster.validate()),
    ];

    for (table, result) in checks {
        if let Err(message) = result {
            let key = message.split_whitespace().next().unwrap_or("");
            return Err(match locate(text, table, key) {
                Some(line) => format!("line {line}: [{table}] {message}"),
                None => format!("[{table}] {message}"),
            });
        }
    }
    warden_webhooks::check_all(&config.webhooks).map_err(|e| format!("[[webhooks]] {e}"))?;
    if config.daemon.max_line_bytes < 256 {
        return Err("[daemon] max_line_bytes must be at least 256".into());
    }
    if config.daemon.max_clients == 0 {
        return Err("[daemon] max_clients must be at least 1".into());
    }
    tracing_subscriber::EnvFilter::try_new(&config.daemon.log_level)
        .map_err(|e| format!("[daemon] log_level {:?}: {e}", config.daemon.log_level))?;
    Ok(())
}

/// The 1-based line where `key` is set inside `[table]`.
fn locate(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
        } else if current == table && line.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_proxy_is_reported_without_its_password() {
        let e = err("[whatsapp]\nproxy = \"socks5://gw:hunter2@proxy:0\"\n", &[]);
        assert!(e.contains("proxy port"), "{e}");
        assert!(e.contains("socks5://gw:***@proxy:0"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = err("", &[("WARDEN_WHATSAPP_PROXY", "ftp://gw:hunter2@proxy")]);
        assert!(!e.contains("hunter2"), "{e}");
        let c = ok(
            "",
            &[("WARDEN_WHATSAPP_PROXY", "http://gw:hunter2@proxy:3128")],
        );
        let proxy = c.whatsapp.proxy.unwrap();
        assert_eq!(proxy.credentials(), Some(("gw", "hunter2")));
        let e = err("[whatsapp]\nproxy = \"http://gw:ab/cd@proxy:1\"\n", &[]);
        assert!(!e.contains("ab/cd"), "{e}");
    }

    fn err(text: &str, env: &[(&str, &str)]) -> String {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(text, &env).unwrap_err()
    }

    #[test]
    fn cluster_tls_is_off_or_verify_and_a_ca_file_needs_verify() {
        let base = "[cluster]\ndatabase_url = \"host=db\"\nnode = \"a\"\n";
        let plain = ok(base, &[]);
        assert_eq!(plain.cluster.tls, TlsMode::Off);
        assert!(plain.cluster.pg_tls().unwrap().is_none());
        let verify = ok(&format!("{base}tls = \"verify\"\n"), &[]);
        assert_eq!(verify.cluster.tls, TlsMode::Verify);
        assert!(verify.cluster.pg_tls().unwrap().is_some(), "the web roots");
        let with_env = ok(
            base,
            &[
                ("WARDEN_CLUSTER_TLS", "verify"),
                ("WARDEN_CLUSTER_CA_FILE", "/etc/warden/pg-ca.pem"),
            ],
        );
        assert_eq!(
            with_env.cluster.ca_file,
            PathBuf::from("/etc/warden/pg-ca.pem")
        );
        let e = err(&format!("{base}tls = \"maybe\"\n"), &[]);
        assert!(e.contains("maybe"), "{e}");
        let e = err(&format!("{base}ca_file = \"ca.pem\"\n"), &[]);
        assert!(e.contains("ca_file is only used with tls"), "{e}");
        assert!(e.contains("line 4"), "names the line: {e}");
        let missing = ok(
            &format!("{base}tls = \"verify\"\nca_file = \"/nonexistent/ca.pem\"\n"),
            &[],
        );
        let e = missing.cluster.pg_tls().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    fn ok(text: &str, env: &[(&str, &str)]) -> Config {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(text, &env).unwrap()
    }

    #[test]
    fn every_key_has_a_default() {
        let config = ok("", &[]);
        assert_eq!(config.daemon.socket_mode, SocketMode(0o660));
        assert_eq!(config.policy.max_attempts, 3);
        assert_eq!(config.janitor.interval, Duration::from_secs(300));
        assert_eq!(config.admission.max_in_flight, 16);
        assert_eq!(config.whatsapp.url, "wss://web.whatsapp.com/ws/chat");
    }

    #[test]
    fn durations_and_modes_read_as_people_write_them() {
        let config = ok(
            "[daemon]\nsocket_mode = \"0600\"\n[policy]\nbackoff_base = \"5s\"\nstable_after = \"15m\"\n[janitor]\nmax_qr = \"2m 30s\"\n",
            &[],
        );
        assert_eq!(config.daemon.socket_mode, SocketMode(0o600));
        assert_eq!(config.policy.backoff_base, Duration::from_secs(5));
        assert_eq!(config.policy.stable_after, Duration::from_secs(900));
        assert_eq!(config.janitor.max_qr, Duration::from_secs(150));
        assert_eq!(
            ok("[daemon]\nsocket_mode = \"0o640\"\n", &[])
                .daemon
                .socket_mode,
            SocketMode(0o640)
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_line_and_what_was_expected() {
        let e = err("[policy]\nmax_attempts = \"three\"\n", &[]);
        assert!(e.contains("line 2") && e.contains("expected u32"), "{e}");
        let e = err("[daemon]\nsokcet = \"x\"\n", &[]);
        assert!(
            e.contains("line 2") && e.contains("unknown field `sokcet`"),
            "{e}"
        );
        let e = err("[polcy]\n", &[]);
        assert!(
            e.contains("line 1") && e.contains("unknown field `polcy`"),
            "{e}"
        );
        let e = err("[janitor]\ninterval = \"soon\"\n", &[]);
        assert!(e.contains("line 2"), "{e}");
        let e = err("[daemon]\nsocket_mode = \"0666\"\n", &[]);
        assert!(e.contains("world-writable"), "{e}");
        let e = err("[daemon]\nsocket_mode = 660\n", &[]);
        assert!(e.contains("octal mode as a string"), "{e}");
        let e = err("[daemon]\nsocket_mode = \"0999\"\n", &[]);
        assert!(e.contains("not an octal mode"), "{e}");
        let e = err("\n\n[policy]\nbackoff_base = \"1s\"\njitter = 3.0\n", &[]);
        assert!(e.starts_with("line 5: [policy] jitter"), "{e}");
        let e = err("[daemon]\nlog_level = \"loud[\"\n", &[]);
        assert!(e.contains("log_level"), "{e}");
        let e = err("[whatsapp]\nurl = \"http://x\"\n", &[]);
        assert!(e.contains("[whatsapp]"), "{e}");
    }

    #[test]
    fn max_sessions_defaults_to_the_fd_limit_and_can_be_set() {
        assert_eq!(ok("", &[]).daemon.max_sessions, 0);
        assert_eq!(
            ok("[daemon]\nmax_sessions = 500\n", &[])
                .daemon
                .max_sessions,
            500
        );
        assert_eq!(
            ok("", &[("WARDEN_DAEMON_MAX_SESSIONS", "40")])
                .daemon
                .max_sessions,
            40
        );
        let e = err("[daemon]\nmax_sessions = -1\n", &[]);
        assert!(e.contains("line 2") && e.contains("max_sessions"), "{e}");
        let e = err("", &[("WARDEN_DAEMON_MAX_SESSIONS", "lots")]);
        assert!(e.contains("WARDEN_DAEMON_MAX_SESSIONS"), "{e}");
    }

    #[test]
    fn environment_variables_override_keys() {
        let config = ok(
            "[policy]\nmax_attempts = 3\n",
            &[
                ("WARDEN_POLICY_MAX_ATTEMPTS", "7"),
                ("WARDEN_DAEMON_SOCKET", "/run/warden/warden.sock"),
                ("WARDEN_JANITOR_INTERVAL", "1m"),
                ("WARDEN_DAEMON_SOCKET_MODE", "0600"),
                ("WARDEN_SOCKET", "ignored: not a table key"),
                ("HOME", "/root"),
            ],
        );
        assert_eq!(config.policy.max_attempts, 7);
        assert_eq!(
            config.daemon.socket,
            PathBuf::from("/run/warden/warden.sock")
        );
        assert_eq!(config.janitor.interval, Duration::from_secs(60));
        assert_eq!(config.daemon.socket_mode, SocketMode(0o600));
        let e = err("", &[("WARDEN_POLICY_MAX_ATTEMPTS", "many")]);
        assert!(e.contains("WARDEN_POLICY_MAX_ATTEMPTS"), "{e}");
        let e = err("", &[("WARDEN_POLICY_NOPE", "1")]);
        assert!(e.contains("unknown field `nope`"), "{e}");
    }

    #[test]
    fn the_http_gateway_needs_a_key_beyond_loopback() {
        let e = err("[http]\nbind = \"0.0.0.0:3000\"\n", &[]);
        assert!(e.contains("[http]"), "{e}");
        let config = ok(
            "[http]\nbind = \"0.0.0.0:3000\"\n",
            &[("WARDEN_HTTP_API_KEY", "k3y-with-enough-length")],
        );
        assert_eq!(
            config.http.api_key.as_deref(),
            Some("k3y-with-enough-length")
        );
        let digits = ok("", &[("WARDEN_HTTP_API_KEY", "1234567890123456")]);
        assert_eq!(digits.http.api_key.as_deref(), Some("1234567890123456"));
        assert!(ok("", &[]).http.enabled);
    }

    #[test]
    fn the_committed_daemon_toml_is_valid() {
        let text = include_str!("../../../daemon.toml");
        let config = ok(text, &[]);
        assert_eq!(config.daemon.sessions_dir, PathBuf::from("sessions"));
    }

    #[test]
    fn webhooks_need_a_secret_or_unsigned_and_errors_never_quote_the_secret() {
        let hook = |extra: &str| {
            format!(
                "[[webhooks]]\nurl = \"https://example.com/h\"\nevents = [\"message\"]\n{extra}"
            )
        };
        let config = ok(
            &hook("secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n[journal]\nkeep = 10"),
            &[],
        );
        assert_eq!(config.webhooks.len(), 1);
        assert_eq!(config.journal.keep, 10);
        assert_eq!(ok(&hook("unsigned = true"), &[]).webhooks.len(), 1);
        let none = parse(&hook(""), &[]).unwrap_err();
        assert!(none.contains("has no secret"), "{none}");
        let short = parse(&hook("secret = \"whsec_c2hvcnQtYnV0LXNlY3JldA==\""), &[]).unwrap_err();
        assert!(
            short.contains("16 bytes") && !short.contains("c2hvcnQ"),
            "{short}"
        );
        let unknown = parse(
            &hook("secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\ncolour = 1"),
            &[],
        )
        .unwrap_err();
        assert!(unknown.contains("colour"), "{unknown}");
        let garbled = parse(
            "[[webhooks]]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            &[],
        )
        .unwrap_err();
        assert!(
            garbled.contains("whsec_***") && !garbled.contains("MfKQ9r8G"),
            "{garbled}"
        );
        let keep = parse("[journal]\nkeep = 0", &[]).unwrap_err();
        assert!(keep.contains("keep must be at least 1"), "{keep}");
    }
}
