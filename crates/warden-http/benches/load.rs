//! Load benchmark of the gateway's read routes at 10,000 sessions, measured with `wrk`
//! (Debian's `wrk` package) or `oha` (crates.io), whichever is installed.
//!
//! ```text
//! cargo bench -p warden-http --bench load
//! WARDEN_BENCH_SESSIONS=10000 WARDEN_BENCH_SECS=10 WARDEN_BENCH_CONNECTIONS=32 cargo bench -p warden-http --bench load
//! ```
//!
//! Every session is connected through the scripted link, then the tool hammers
//! `GET /session/status/{token}` (a random token per request) and `GET /sessions`, each for a
//! bounded time, over 127.0.0.1 only. It prints requests per second and the p99 latency.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_core::scripted::{Script, ScriptedLink};
use warden_core::{AdmissionConfig, SessionEvent, SessionState, Supervisor, SupervisorConfig};
use warden_http::{HttpConfig, Metrics};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn find(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(tool))
        .find(|p| p.exists())
}

/// One measurement.
struct Figures {
    rps: f64,
    p99: String,
    errors: u64,
}

fn wrk(wrk: &PathBuf, url: &str, script: Option<&PathBuf>, connections: u64, secs: u64) -> Figures {
    let mut command = std::process::Command::new(wrk);
    command.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{secs}s"),
        "--timeout",
        "10s",
        "--latency",
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command.arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    Figures {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p99: field("99%").unwrap_or_else(|| "?".into()),
        errors: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

fn oha(oha: &PathBuf, url: &str, connections: u64, secs: u64) -> Figures {
    let output = std::process::Command::new(oha)
        .args([
            "--no-tui",
            "--json",
            "-c",
            &connections.to_string(),
            "-z",
            &format!("{secs}s"),
            url,
        ])
        .output()
        .expect("run oha");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("oha's JSON");
    let ok = json["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    let all: u64 = json["statusCodeDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    Figures {
        rps: json["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p99: format!(
            "{:.2}ms",
            json["latencyPercentiles"]["p99"]
                .as_f64()
                .unwrap_or(f64::NAN)
                * 1000.0
        ),
        errors: all - ok,
    }
}

fn main() {
    let sessions = env_or("WARDEN_BENCH_SESSIONS", 10_000);
    let secs = env_or("WARDEN_BENCH_SECS", 10);
    let connections = env_or("WARDEN_BENCH_CONNECTIONS", 32);
    let (wrk_path, oha_path) = (find("wrk"), find("oha"));
    if wrk_path.is_none() && oha_path.is_none() {
        eprintln!("no load tool: apt-get install -y wrk (or cargo install oha)");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (base, stop, served, supervisor) = runtime.block_on(async {
        let mut config = SupervisorConfig::new(dir.path().join("sessions"));
        config.admission = AdmissionConfig {
            max_in_flight: 100_000,
            per_second: 1_000_000.0,
            burst: 100_000,
        };
        config.event_capacity = 1 << 16;
        let link = ScriptedLink::new(Script::login("15551234567@s.whatsapp.net"));
        let (supervisor, _) = Supervisor::start(config, Arc::new(link)).await.unwrap();
        let started = Instant::now();
        let mut events = supervisor.subscribe();
        for i in 0..sessions {
            let token = format!("s{i:05}");
            supervisor
                .create(Some(format!("Session {i}")), Some(&token))
                .await
                .unwrap();
            supervisor
                .start_session(&token, Default::default())
                .await
                .unwrap();
        }
        let mut connected = supervisor
            .list()
            .counts
            .get(&SessionState::Connected)
            .copied()
            .unwrap_or(0) as u64;
        while connected < sessions {
            match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
                Ok(Ok(SessionEvent::Updated(info))) if info.state == SessionState::Connected => {
                    connected += 1;
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => {
                    connected = supervisor
                        .list()
                        .counts
                        .get(&SessionState::Connected)
                        .copied()
                        .unwrap_or(0) as u64;
                }
            }
        }
        eprintln!(
            "{sessions} sessions connected in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = HttpConfig {
            bind: addr,
            ..HttpConfig::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(warden_http::serve(
            listener,
            supervisor.clone(),
            config,
            Arc::new(Metrics::new()),
            async {
                let _ = stopped.await;
            },
        ));
        (format!("http://{addr}"), stop, served, supervisor)
    });

    let script = dir.path().join("random-token.lua");
    std::fs::write(
        &script,
        format!(
            "math.randomseed(42)\nrequest = function()\n  return wrk.format(\"GET\", \"/session/status/s\" .. string.format(\"%05d\", math.random(0, {})))\nend\n",
            sessions - 1
        ),
    )
    .unwrap();
    let list_connections = connections.min(8);
    let (status, list, tool) = if let Some(wrk_path) = &wrk_path {
        (
            wrk(
                wrk_path,
                &format!("{base}/session/status/s00000"),
                Some(&script),
                connections,
                secs,
            ),
            wrk(
                wrk_path,
                &format!("{base}/sessions"),
                None,
                list_connections,
                secs,
            ),
            "wrk",
        )
    } else {
        let oha_path = oha_path.as_ref().unwrap();
        (
            oha(
                oha_path,
                &format!("{base}/session/status/s{:05}", sessions / 2),
                connections,
                secs,
            ),
            oha(
                oha_path,
                &format!("{base}/sessions"),
                list_connections,
                secs,
            ),
            "oha",
        )
    };
    println!("\nwarden-http load ({tool}, {sessions} sessions, {secs} s per route, 127.0.0.1)");
    println!(
        "{:<34} {:>6} {:>12} {:>10} {:>8}",
        "route", "conns", "requests/s", "p99", "errors"
    );
    println!(
        "{:<34} {:>6} {:>12.0} {:>10} {:>8}",
        "GET /session/status/{token}", connections, status.rps, status.p99, status.errors
    );
    println!(
        "{:<34} {:>6} {:>12.1} {:>10} {:>8}",
        "GET /sessions", list_connections, list.rps, list.p99, list.errors
    );

    runtime.block_on(async {
        let _ = stop.send(());
        let _ = served.await;
        let _ = supervisor.shutdown().await;
    });
}
