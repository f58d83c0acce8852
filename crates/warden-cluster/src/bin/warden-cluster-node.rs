//! `warden-cluster-node`: one cluster member without WhatsApp. It joins, renews, declares
//! silent peers dead, claims what placement gives it, and prints every change of ownership as
//! a line on stdout:
//!
//! ```text
//! registered INCARNATION
//! claimed TOKEN FENCE
//! lost TOKEN
//! fenced INCARNATION deadline|reaped
//! reaped NODE INCARNATION
//! rebalance TOKEN
//! database-down
//! left RELEASED            (after SIGTERM or Ctrl-C: a graceful hand-over)
//! ```
//!
//! It checks a database and its latency against the lease timings before daemons move onto
//! it, and it is what the cluster's process tests and failover benchmark run.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use warden_cluster::{FenceReason, Node, NodeConfig, NodeEvent, Timing};

/// One cluster member without WhatsApp, printing its ownership changes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The database (never printed).
    #[arg(long, env = "WARDEN_CLUSTER_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// This node's name (the placement key).
    #[arg(long)]
    node: String,
    /// At most this many sessions.
    #[arg(long)]
    cap: Option<usize>,
    /// Adds sessions s0000 .. s(N-1) to the cluster at start (those present are kept).
    #[arg(long, default_value_t = 0)]
    sessions: usize,
    /// Multiplies every default timing (T 15 s, D 10 s, R 2 s, P 1 s, 3 s minimum and grace,
    /// 2 s statement deadline).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Hands sessions over when placement suggests it (as a daemon does after closing them).
    #[arg(long)]
    rebalance: bool,
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let (node, mut events) = match Node::start_with_events(NodeConfig {
        database_url: args.database_url.clone(),
        node: args.node.clone(),
        addr: None,
        cap: args.cap,
        timing: Timing::scaled(args.scale),
        tls: None,
    })
    .await
    {
        Ok(started) => started,
        Err(e) => {
            eprintln!("warden-cluster-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    for i in 0..args.sessions {
        if let Err(e) = node.add_session(&format!("s{i:04}")).await {
            eprintln!("warden-cluster-node: adding sessions: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    loop {
        let event = tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            event = events.recv() => event,
        };
        match event {
            Ok(NodeEvent::Registered { incarnation }) => {
                say(format_args!("registered {incarnation}"))
            }
            Ok(NodeEvent::Claimed { token, fence }) => say(format_args!("claimed {token} {fence}")),
            Ok(NodeEvent::Lost { token }) => say(format_args!("lost {token}")),
            Ok(NodeEvent::Fenced { incarnation, why }) => {
                let why = match why {
                    FenceReason::Deadline => "deadline",
                    FenceReason::Reaped => "reaped",
                };
                say(format_args!("fenced {incarnation} {why}"));
            }
            Ok(NodeEvent::Reaped { peer }) => {
                say(format_args!("reaped {} {}", peer.node, peer.incarnation));
            }
            Ok(NodeEvent::Rebalance { token }) => {
                say(format_args!("rebalance {token}"));
                if args.rebalance {
                    let _ = node.release(&token).await;
                }
            }
            Ok(NodeEvent::DatabaseDown { .. }) => say(format_args!("database-down")),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                eprintln!("warden-cluster-node: {n} events lost (slow stdout)");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
    match node.leave().await {
        Ok(released) => {
            say(format_args!("left {released}"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warden-cluster-node: leaving: {e}");
            ExitCode::FAILURE
        }
    }
}
