//! Logging: human-readable lines on stderr (colours only on a terminal) and, when a log folder
//! is configured, daily-rolling files written by a background thread that never drops lines.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Log targets that carry pairing secrets or credentials, dropped at every level: wa-rs's
/// stanza dumps (QR references, pairing and key material) and its pairing-code messages.
const SECRET_TARGETS: [&str; 4] = [
    "Client/Recv",
    "Client/Send",
    "Client/PairCode",
    "Client/PairTest",
];

/// Whether events of `target` may be logged.
fn may_log(target: &str) -> bool {
    !SECRET_TARGETS.contains(&target)
}

/// Keeps logging alive: hold it for the life of the process (dropping it flushes the files).
pub struct Logging {
    /// Flushes the file writer when dropped.
    _guard: Option<WorkerGuard>,
    /// Swaps the level filter on reload.
    filter: reload::Handle<EnvFilter, Registry>,
}

/// Picks the filter: `--log-level` first, then `RUST_LOG`, then the configuration.
pub fn choose_filter(flag: Option<&str>, config_level: &str) -> String {
    match (flag, std::env::var("RUST_LOG").ok()) {
        (Some(flag), _) => flag.to_owned(),
        (None, Some(env)) if !env.trim().is_empty() => env,
        _ => config_level.to_owned(),
    }
}

/// Starts logging at `filter` to stderr and, if `log_dir` is not empty, to
/// `log_dir/warden.log.YYYY-MM-DD`.
pub fn init(filter: &str, log_dir: &Path) -> anyhow::Result<Logging> {
    let filter = EnvFilter::try_new(filter).with_context(|| format!("log level {filter:?}"))?;
    let (filter_layer, handle) = reload::Layer::new(filter);
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let (file_layer, guard) = if log_dir.as_os_str().is_empty() {
        (None, None)
    } else {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating the log folder {}", log_dir.display()))?;
        let appender = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("warden")
            .filename_suffix("log")
            .max_log_files(14)
            .build(log_dir)
            .with_context(|| format!("opening log files in {}", log_dir.display()))?;
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .finish(appender);
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false);
        (Some(layer), Some(guard))
    };
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(tracing_subscriber::filter::filter_fn(|meta| {
            may_log(meta.target())
        }))
        .with(stderr)
        .with(file_layer)
        .try_init()
        .context("logging was already set up")?;
    Ok(Logging {
        _guard: guard,
        filter: handle,
    })
}

impl Logging {
    /// Replaces the level filter (SIGHUP).
    pub fn set_filter(&self, filter: &str) -> anyhow::Result<()> {
        let filter = EnvFilter::try_new(filter).with_context(|| format!("log level {filter:?}"))?;
        self.filter
            .reload(filter)
            .context("the log filter could not be replaced")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_the_log() {
        for target in SECRET_TARGETS {
            assert!(!may_log(target), "{target}");
        }
        assert!(may_log("warden_core::supervisor"));
        assert!(may_log("wa_rs::client"));
    }
}
