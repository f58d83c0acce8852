//! `warden`: the daemon (`warden serve`) and the command-line client for it.

mod cli;
mod commands;

mod exit;
mod heap;
mod limits;
mod logging;
mod output;
mod serve;
mod systemd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use warden::config;

use cli::{Cli, Command};

/// The configuration file used when `--config` is not given.
const DEFAULT_CONFIG: &str = "daemon.toml";

/// How long the runtime's leftover tasks (a blocking call that never returns, a task that
/// ignores cancellation) may hold the process once the main future is done.
const RUNTIME_GRACE: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    no_library_backtraces();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("warden: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli));
    // Not a plain drop, which would wait for every blocking task however long it takes.
    runtime.shutdown_timeout(RUNTIME_GRACE);
    code
}

/// Errors from the WhatsApp library (anyhow) capture a backtrace whenever `RUST_BACKTRACE` is
/// set, unless `RUST_LIB_BACKTRACE` says otherwise, and logging one symbolizes the binary's
/// debug information: measured at about 33 MB held and CPU spent for routine warnings (an app
/// state sync that fails on login). Unless the operator set `RUST_LIB_BACKTRACE`, it is set to
/// `0`: errors carry no backtrace, and panics still print theirs per `RUST_BACKTRACE`.
#[allow(unsafe_code)]
fn no_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in `main`, before the runtime or anything else starts a
        // thread, so nothing can read the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

async fn run(cli: Cli) -> ExitCode {
    let explicit = cli.config.is_some();
    let config_path = cli.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    match cli.command {
        Command::Serve { log_level } => {
            serve::run(&config_path, explicit, log_level.as_deref()).await
        }
        command => {
            let socket = match cli.socket {
                Some(socket) => socket,
                None => match socket_from_config(&config_path, explicit) {
                    Ok(socket) => socket,
                    Err(code) => return code,
                },
            };
            commands::run(&socket, command, cli.json).await
        }
    }
}

/// The socket named by the configuration file (or its default).
fn socket_from_config(path: &Path, explicit: bool) -> Result<PathBuf, ExitCode> {
    match config::load(path, explicit) {
        Ok(loaded) => Ok(loaded.config.daemon.socket),
        Err(e) => {
            eprintln!("warden: cannot find the socket: invalid configuration: {e}");
            Err(ExitCode::from(serve::EX_CONFIG))
        }
    }
}
