//! A short fuzzing run of every target, as CI affords: each target gets its seeds and then
//! mutated inputs; none may break a rule, and the run must reach both accepted and refused
//! inputs (a mutator that only ever makes garbage would prove nothing). The full run is the
//! `warden-fuzz` binary (docs/reliability.md).

use std::path::PathBuf;

use warden_fuzz::targets::{Control, DaemonToml, Http, SessionToml, Target};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

async fn short_run(target: &mut dyn Target, inputs: u64) {
    let report = warden_fuzz::run(target, &corpus(), 20261204, inputs)
        .await
        .unwrap_or_else(|violation| panic!("VIOLATION {violation}"));
    println!("{report}");
    assert_eq!(report.inputs, inputs);
    assert!(report.accepted > 0, "nothing accepted: {report}");
    assert!(report.refused > 0, "nothing refused: {report}");
    assert!(report.outcomes >= 5, "too few distinct outcomes: {report}");
}

#[tokio::test]
async fn daemon_toml() {
    short_run(&mut DaemonToml, 20_000).await;
}

#[tokio::test]
async fn session_toml() {
    short_run(&mut SessionToml, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_protocol() {
    let mut control = Control::start().await.unwrap();
    short_run(&mut control, 5_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gateway() {
    let mut http = Http::start().await.unwrap();
    short_run(&mut http, 3_000).await;
}
