//! `warden-fakewa`: run the fake WhatsApp server from the command line.
//!
//! Prints `listening on ws://ADDR/ws/chat` as the first line on stdout, logs
//! what clients do on stderr (`RUST_LOG` filters it), and runs until Ctrl-C or
//! SIGTERM.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use warden_fakewa::{FakeServer, ServerConfig};

/// A fake WhatsApp Web server for offline tests of WhatsApp clients.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port). Overrides the file's `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML scenario file. Without one: QR codes with WhatsApp's timings, paired after 3 s,
    /// every login accepted.
    #[arg(long)]
    scenario: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let mut config = match &args.scenario {
        Some(path) => match ServerConfig::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("warden-fakewa: {e}");
                return ExitCode::from(2);
            }
        },
        None => ServerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let server = match FakeServer::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warden-fakewa: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "listening on {}", server.url())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    wait_for_signal().await;
    let snapshot = server.recorder().snapshot();
    tracing::info!(
        connections = snapshot.connections().len(),
        paired = server.registry().devices().len(),
        max_concurrent_per_account = snapshot.max_concurrent_any(),
        "shutting down"
    );
    server.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
