//! Scale benchmark of the supervisor (a bench binary; figures go to docs/performance.md).
//!
//! 1. Spawns N scripted sessions that log in at once, and measures the time until all are
//!    connected and the resident memory each costs.
//! 2. Shuts down and starts a new supervisor on the same folder: the time to load N persisted
//!    records, and to have every session connected again.
//!
//! ```text
//! cargo bench -p warden-core --bench scale            # N = 10000
//! WARDEN_BENCH_SESSIONS=1000 cargo bench -p warden-core --bench scale
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_core::link::{Outgoing, SendFuture, SendOutcome};
use warden_core::scripted::{Script, ScriptedLink};
use warden_core::{
    AdmissionConfig, Connection, LifecycleEvent, LifecycleSink, Link, LinkError, OpenOptions,
    SessionEvent, SessionState, Supervisor, SupervisorConfig, Token,
};

/// A link whose connections log in at once and then hold nothing but their sink: what is left
/// is the supervisor's own cost per session.
struct IdleLink;

struct IdleConnection {
    _sink: LifecycleSink,
}

#[async_trait::async_trait]
impl Connection for IdleConnection {
    async fn close(&mut self) {}
    fn send(&self, _message: Outgoing) -> SendFuture<Result<SendOutcome, LinkError>> {
        Box::pin(async { Err(LinkError::NotConnected) })
    }
}

#[async_trait::async_trait]
impl Link for IdleLink {
    async fn open(
        &self,
        _token: &Token,
        _options: OpenOptions,
        sink: LifecycleSink,
    ) -> Result<Box<dyn Connection>, LinkError> {
        sink.emit(LifecycleEvent::Connected {
            jid: "15551234567@s.whatsapp.net".into(),
            name: None,
        });
        Ok(Box::new(IdleConnection { _sink: sink }))
    }
    async fn delete_credentials(&self, _token: &Token) -> Result<(), LinkError> {
        Ok(())
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

fn config(dir: &std::path::Path) -> SupervisorConfig {
    let mut config = SupervisorConfig::new(dir);
    // Admission out of the way: this measures the supervisor, not the rate limit.
    config.admission = AdmissionConfig {
        max_in_flight: usize::MAX,
        per_second: 1e12,
        burst: u32::MAX,
    };
    config.event_capacity = 1024;
    config.shutdown_timeout = Duration::from_secs(60);
    config
}

async fn wait_connected(
    supervisor: &Supervisor,
    events: &mut tokio::sync::broadcast::Receiver<SessionEvent>,
    n: usize,
) {
    loop {
        let connected = supervisor
            .list()
            .counts
            .get(&SessionState::Connected)
            .copied()
            .unwrap_or(0);
        if connected >= n {
            return;
        }
        // Any event may be the last one needed.
        let _ = events.recv().await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("WARDEN_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let link = ScriptedLink::new(Script::login("15551234567@s.whatsapp.net"));
    let (supervisor, _) = Supervisor::start(config(dir.path()), Arc::new(link.clone()))
        .await
        .expect("start");
    let tokens: Vec<String> = (0..n).map(|i| format!("bench{i:05}")).collect();

    let t = Instant::now();
    for token in &tokens {
        supervisor.create(None, Some(token)).await.expect("create");
    }
    let created = t.elapsed();
    supervisor.flush().await.expect("flush");
    let created_flushed = t.elapsed();

    let mut events = supervisor.subscribe();
    let rss_before = rss_kib();
    let t = Instant::now();
    for token in &tokens {
        supervisor
            .start_session(token, Default::default())
            .await
            .expect("start");
    }
    let started = t.elapsed();
    wait_connected(&supervisor, &mut events, n).await;
    let connected = t.elapsed();
    let rss_after = rss_kib();
    supervisor.flush().await.expect("flush");
    let flushed = t.elapsed();

    println!("sessions: {n}");
    println!(
        "create {n} sessions (records queued): {created:.2?}; on disk after {created_flushed:.2?}"
    );
    println!("start {n} sessions (spawn calls answered): {started:.2?}");
    println!("all {n} connected: {connected:.2?}; records on disk after {flushed:.2?}");
    println!(
        "RSS: {rss_before} KiB before start, {rss_after} KiB when all connected: {:.2} KiB per supervised session (session actor, registry entry, snapshot, timers, scripted connection task)",
        (rss_after.saturating_sub(rss_before)) as f64 / n as f64
    );
    println!("max live connections per token: {}", link.max_live_any());

    let t = Instant::now();
    supervisor.shutdown().await.expect("shutdown");
    println!("graceful shutdown of {n} sessions: {:.2?}", t.elapsed());
    drop(events);
    drop(supervisor);

    // A new supervisor on the same folder (the daemon restarting).
    let t = Instant::now();
    let rss_before = rss_kib();
    let (supervisor, report) = Supervisor::start(config(dir.path()), Arc::new(IdleLink))
        .await
        .expect("restart");
    let loaded = t.elapsed();
    let mut events = supervisor.subscribe();
    wait_connected(&supervisor, &mut events, n).await;
    let restored = t.elapsed();
    let rss_after = rss_kib();
    println!(
        "restart: {} records loaded and supervisor up in {loaded:.2?}; all {n} connected again after {restored:.2?}",
        report.loaded
    );
    println!(
        "RSS with an idle link (the supervisor's own cost): {:.2} KiB per session",
        (rss_after.saturating_sub(rss_before)) as f64 / n as f64
    );
    supervisor.shutdown().await.expect("shutdown");
}
