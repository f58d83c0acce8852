//! Issue #16's benchmark: three `warden serve` nodes over a real PostgreSQL and the fake
//! WhatsApp server, every session linked and online; then, repeatedly, SIGKILL to a random
//! node holding sessions, the time until every one of its sessions is online again on the
//! others (its accounts' logins seen by the server), and the node started again; then the
//! same with SIGTERM (a graceful hand-over). It records the distribution of those times and
//! the most live connections any one account ever had at the server (which must be 1).
//!
//! `cargo test --release -p warden --test cluster_bench -- --ignored --nocapture`, with
//! `WARDEN_BENCH_SESSIONS` (300), `WARDEN_BENCH_KILLS` (20), `WARDEN_BENCH_STOPS` (5) and
//! `WARDEN_BENCH_SCALE` (1.0: the default lease timings, dead after 15 s).

#[path = "common/cluster.rs"]
mod cluster_support;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use cluster_support::{
    Postgres, add_sessions, held, phone_of, start_nodes, until_online, until_online_after,
};
use common::{Daemon, fake_whatsapp_with, pair_any, workspace};

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark (about 10 minutes): run it on its own, in release"]
async fn takeover_times_after_kill_9_of_a_node() {
    let sessions: usize = setting("WARDEN_BENCH_SESSIONS", "300").parse().unwrap();
    let kills: usize = setting("WARDEN_BENCH_KILLS", "20").parse().unwrap();
    let stops: usize = setting("WARDEN_BENCH_STOPS", "5").parse().unwrap();
    let scale = setting("WARDEN_BENCH_SCALE", "1.0");
    let server = Postgres::start().expect("PostgreSQL's server binaries are installed");
    let whatsapp = fake_whatsapp_with(pair_any(Duration::from_millis(200))).await;
    let recorder = whatsapp.recorder();
    let url = server.url();
    let names = ["a", "b", "c"];
    let dirs: Vec<tempfile::TempDir> = names.iter().map(|_| workspace(&whatsapp.url())).collect();
    let start = |i: usize| {
        let env = [
            ("WARDEN_CLUSTER_DATABASE_URL", url.clone()),
            ("WARDEN_CLUSTER_NODE", names[i].to_owned()),
            ("WARDEN_CLUSTER_TIMING_SCALE", scale.clone()),
        ];
        let dir = dirs[i].path().to_owned();
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Daemon::start_with(&dir, &env).await
        }
    };
    let mut daemons = Vec::new();
    for i in 0..names.len() {
        daemons.push(start(i).await);
    }
    add_sessions(&server, sessions).await;
    let linked = Instant::now();
    until_online(recorder, sessions, Duration::from_secs(600), &mut daemons).await;
    eprintln!(
        "{sessions} sessions linked and online in {:.1?}",
        linked.elapsed()
    );

    // A fixed sequence of victims, so that runs compare (xorshift): `kills` SIGKILLs, then
    // `stops` SIGTERMs (graceful hand-overs).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut takeovers = Vec::new();
    let mut handovers = Vec::new();
    let rounds = (0..kills).map(|_| false).chain((0..stops).map(|_| true));
    for (round, graceful) in rounds.enumerate() {
        let mut shares = Vec::new();
        for daemon in &daemons {
            shares.push(held(daemon).await);
        }
        let holding: Vec<usize> = (0..daemons.len())
            .filter(|&i| !shares[i].is_empty())
            .collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = holding[(seed % holding.len() as u64) as usize];
        let phones: BTreeSet<String> = shares[victim]
            .values()
            .map(|jid| phone_of(jid.as_deref().expect("linked")).to_owned())
            .collect();
        let boundary = recorder.inspect(|s| s.connections().len()) as u64;
        let stopped = Instant::now();
        if graceful {
            let pid = daemons[victim].child.id().expect("running").to_string();
            let term = tokio::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .await
                .unwrap();
            assert!(term.success());
        } else {
            daemons[victim].child.start_kill().unwrap();
        }
        until_online_after(recorder, boundary, &phones, "the stopped node's").await;
        let took = stopped.elapsed();
        let _ = daemons[victim].child.wait().await;
        eprintln!(
            "{} {}: node {} with {} sessions; all online again on the others after {took:.2?}",
            if graceful { "SIGTERM" } else { "kill" },
            round + 1,
            names[victim],
            phones.len()
        );
        if graceful {
            handovers.push(took);
        } else {
            takeovers.push(took);
        }
        daemons[victim] = start(victim).await;
    }

    let doubles = recorder.inspect(|s| s.max_concurrent_any());
    for (what, times) in [
        ("takeover after kill -9", &mut takeovers),
        ("hand-over after SIGTERM", &mut handovers),
    ] {
        if times.is_empty() {
            continue;
        }
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        eprintln!(
            "{what} ({} times, {sessions} sessions, 3 nodes, timing scale {scale}): min {:.2?}, \
             median {:.2?}, p90 {:.2?}, max {:.2?}",
            times.len(),
            at(0.0),
            at(0.5),
            at(0.9),
            at(1.0)
        );
    }
    eprintln!("most live connections of one account: {doubles}");
    assert_eq!(doubles, 1, "never two live connections of one account");
}

/// The control plane's cost: `status` answered by the node that runs the session, and the
/// same `status` asked of the other node (carried through PostgreSQL and back), then `list`
/// of the whole cluster; two nodes, every session linked and online.
///
/// `cargo test --release -p warden --test cluster_bench latency -- --ignored --nocapture`,
/// with `WARDEN_BENCH_SESSIONS` (100) and `WARDEN_BENCH_ASKS` (500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on its own, in release"]
async fn latency_of_operations_carried_to_another_node() {
    use warden_control::{ControlClient, Op};

    let sessions: usize = setting("WARDEN_BENCH_SESSIONS", "100").parse().unwrap();
    let asks: usize = setting("WARDEN_BENCH_ASKS", "500").parse().unwrap();
    let server = Postgres::start().expect("PostgreSQL's server binaries are installed");
    let whatsapp = fake_whatsapp_with(pair_any(Duration::from_millis(200))).await;
    let recorder = whatsapp.recorder();
    let url = server.url();
    let (mut daemons, _dirs) = start_nodes(&whatsapp.url(), &url, &["a", "b"], &[]).await;
    let tokens = add_sessions(&server, sessions).await;
    until_online(recorder, sessions, Duration::from_secs(600), &mut daemons).await;
    let on_a: BTreeSet<String> = held(&daemons[0]).await.into_keys().collect();
    let mut clients = Vec::new();
    for daemon in &daemons {
        clients.push(ControlClient::connect(&daemon.socket).await.unwrap());
    }
    let mut here = Vec::new();
    let mut carried = Vec::new();
    for i in 0..asks {
        let token = &tokens[i % tokens.len()];
        let (owner, other) = if on_a.contains(token) { (0, 1) } else { (1, 0) };
        for (node, times) in [(owner, &mut here), (other, &mut carried)] {
            let op = Op::Status {
                token: token.clone(),
            };
            let asked = Instant::now();
            let view: serde_json::Value = clients[node].call(&op).await.expect("status");
            times.push(asked.elapsed());
            assert_eq!(view["token"], token.as_str());
        }
    }
    let mut lists = Vec::new();
    for i in 0..50 {
        let asked = Instant::now();
        let list: serde_json::Value = clients[i % 2].call(&Op::List {}).await.expect("list");
        lists.push(asked.elapsed());
        assert_eq!(list["sessions"].as_array().unwrap().len(), sessions);
    }
    let figures = |name: &str, times: &mut Vec<Duration>| {
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        eprintln!(
            "{name}: {} asks, p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}",
            times.len(),
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        );
    };
    eprintln!("{sessions} sessions over two nodes ({} on a)", on_a.len());
    figures("status on the node that runs the session", &mut here);
    figures("status carried from the other node", &mut carried);
    figures("list of the whole cluster", &mut lists);
}
