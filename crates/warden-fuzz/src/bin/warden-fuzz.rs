//! `warden-fuzz [TARGET|all] [--inputs N] [--seed S]`: the full fuzzing run (docs/reliability.md).
//! Prints one line per target; exits 1 with the input at fault on a violation.

use std::path::PathBuf;
use std::process::ExitCode;

use warden_fuzz::targets::{Control, DaemonToml, Http, SessionToml, Target};

const USAGE: &str = "usage: warden-fuzz [control|http|daemon_toml|session_toml|all] [--inputs N] [--seed S] [--corpus DIR]";

#[tokio::main]
async fn main() -> ExitCode {
    let mut which = "all".to_string();
    let mut inputs: u64 = 1_000_000;
    let mut seed: u64 = 1;
    let mut corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(USAGE);
        let parsed = match arg.as_str() {
            "--inputs" => value()
                .and_then(|v| v.parse().map_err(|_| USAGE))
                .map(|v| inputs = v),
            "--seed" => value()
                .and_then(|v| v.parse().map_err(|_| USAGE))
                .map(|v| seed = v),
            "--corpus" => value().map(|v| corpus = PathBuf::from(v)),
            "-h" | "--help" => Err(USAGE),
            name if !name.starts_with('-') => {
                which = name.to_string();
                Ok(())
            }
            _ => Err(USAGE),
        };
        if let Err(usage) = parsed {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    }
    let names: Vec<&str> = match which.as_str() {
        "all" => vec!["daemon_toml", "session_toml", "control", "http"],
        name @ ("control" | "http" | "daemon_toml" | "session_toml") => vec![name],
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    for name in names {
        let mut target: Box<dyn Target> = match name {
            "control" => match Control::start().await {
                Ok(t) => Box::new(t),
                Err(e) => return fail(&format!("cannot start the daemon: {e}")),
            },
            "http" => match Http::start().await {
                Ok(t) => Box::new(t),
                Err(e) => return fail(&format!("cannot start the gateway: {e}")),
            },
            "daemon_toml" => Box::new(DaemonToml),
            _ => Box::new(SessionToml),
        };
        match warden_fuzz::run(target.as_mut(), &corpus, seed, inputs).await {
            Ok(report) => println!("{report}"),
            Err(violation) => return fail(&format!("VIOLATION {violation}")),
        }
    }
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}
