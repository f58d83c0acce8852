//! Soak and leaks (#13 item 4): sessions of the real `warden` binary go through connect/drop
//! cycles against the fake WhatsApp server, each cycle ended a different way (the server drops
//! the TCP connection, closes the WebSocket cleanly, stalls until the daemon's liveness check
//! gives up, or refuses the login with 503), and every cycle that logs in first delivers an
//! incoming message. Afterwards, with every session connected again and settled, the daemon's
//! OS threads, descriptors and tokio tasks are back within 5% of the baseline taken with every
//! session connected after its first login, and its RSS and heap in use (the allocator's own
//! figure, `warden_heap_in_use_bytes`) within 5% of the midpoint taken the same way after half
//! the cycles (the first reconnects warm up a fixed few megabytes, and the allocator keeps the
//! storms' peaks as free heap; a leak grows with cycles). It prints the figures at the
//! baseline, the midpoint and the end, and RSS's change from the baseline.
//!
//! In the suite: 30 sessions, 8 cycles each. Full size (a benchmark, not CI):
//! `WARDEN_SOAK_SESSIONS=1000 WARDEN_SOAK_CYCLES=100 cargo test --release -p warden --test
//! soak -- --nocapture`; docs/reliability.md has the last figures.
//!
//! `WARDEN_SOAK_WRAPPER` runs the daemon through a command that execs it (a profiler's preload).
//!
//! The daemon runs in its own process, measured from `/proc/<pid>` and its `/metrics`; the fake
//! server runs in the test's process (its recorder grows with the run; the daemon does not).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_control::{ControlClient, Op};
use warden_fakewa::{FailureSpec, FakeServer, MessageSpec, Plan, Scenario, ServerConfig, Step};

use common::{Daemon, workspace};

const SESSIONS: usize = 30;
const CYCLES: u32 = 8;
/// How far the figures may end from the baseline.
const TOLERANCE: f64 = 0.05;
/// The longest settle period after the run.
const SETTLE: Duration = Duration::from_secs(120);
/// What the daemon's liveness check waits for before it gives a stalled connection up.
const LIVENESS: &str = "2s";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How cycle `n` (from 1) ends: drop, close, stall, 503 in turn, or only those named in
/// `WARDEN_SOAK_ENDINGS` (e.g. `stall,503`), to find which one leaves something behind.
fn cycle(n: u32) -> Scenario {
    let endings: Vec<String> = std::env::var("WARDEN_SOAK_ENDINGS")
        .unwrap_or_else(|_| "drop,close,stall,503".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let message = Step::Message(MessageSpec::text(
        "15550001111@s.whatsapp.net",
        format!("soak-{n}"),
        "still there?",
    ));
    let linger = Step::wait(Duration::from_millis(100));
    match endings[n as usize % endings.len()].as_str() {
        "drop" => Scenario::new([Step::Login, message, linger, Step::Drop]),
        "close" => Scenario::new([Step::Login, message, linger, Step::Close]),
        "stall" => Scenario::new([Step::Login, message, linger, Step::Stall]),
        "503" => Scenario::new([Step::Failure(FailureSpec::reason(503))]),
        "quiet" => Scenario::new([Step::Login, linger, Step::Drop]),
        other => panic!("WARDEN_SOAK_ENDINGS: unknown ending {other}"),
    }
}

/// The attempt (per account) that holds every session still for the midpoint measure.
fn midpoint_attempt(cycles: u32) -> u32 {
    cycles / 2 + 2
}

/// The fake server: every registration pairs a new account; an account's first login lasts
/// `base` (the baseline is taken meanwhile), then half the cycles, then a login that lasts
/// `base` again (the midpoint is taken meanwhile), then the other half, then it stays logged
/// in.
async fn fake_whatsapp(cycles: u32, base: Duration) -> FakeServer {
    let registration = common::pair_any(Duration::from_millis(20));
    let hold = || Scenario::new([Step::Login, Step::wait(base), Step::Drop]);
    let mut attempts = vec![hold()];
    attempts.extend((1..=cycles / 2).map(cycle));
    attempts.push(hold());
    attempts.extend((cycles / 2 + 1..=cycles).map(cycle));
    let login = Plan {
        attempts,
        default: Scenario::login(),
    };
    let script = warden_fakewa::Script::default()
        .with_registration(registration)
        .with_login(login);
    FakeServer::start(ServerConfig::with_script(script))
        .await
        .unwrap()
}

/// The daemon's threads, descriptors, RSS, anonymous RSS and file-backed RSS (kB), from
/// `/proc`.
fn proc_figures(pid: u32) -> (u64, u64, u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    (
        field("Threads:"),
        fds,
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
    )
}

/// Gauges of the daemon's `/metrics`, read from one request.
async fn gauges<const N: usize>(http: std::net::SocketAddr, names: [&str; N]) -> [u64; N] {
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    names.map(|name| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("/metrics has {name}"))
    })
}

/// A gauge of the daemon's `/metrics`.
async fn gauge(http: std::net::SocketAddr, name: &str) -> u64 {
    let [value] = gauges(http, [name]).await;
    value
}

/// The daemon's `warden_runtime_tasks`.
async fn runtime_tasks(http: std::net::SocketAddr) -> u64 {
    gauge(http, "warden_runtime_tasks").await
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    threads: u64,
    fds: u64,
    tasks: u64,
    rss_kb: u64,
    /// The anonymous part of RSS (heap, stacks), and the file-backed part (the binary's
    /// pages as code paths are first run, the database's shared-memory index).
    anon_kb: u64,
    file_kb: u64,
    /// WhatsApp clients alive (`warden_wa_clients`): one per connected session, plus those
    /// still finishing.
    clients: u64,
    /// The allocator's heap in use (`warden_heap_in_use_bytes`, kB): what is live, whatever
    /// the allocator kept of what was freed.
    heap_kb: u64,
    /// The heap freed but kept by the allocator (`warden_heap_free_bytes`, kB).
    heap_free_kb: u64,
}

/// The figures once tasks and descriptors have held still for a second (a connection's
/// last tasks end a little after it is reported connected).
async fn settled(daemon: &Daemon) -> Figures {
    let pid = daemon.child.id().unwrap();
    let mut last = (0, 0);
    let mut same = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let tasks = runtime_tasks(daemon.http).await;
        let (_, fds, ..) = proc_figures(pid);
        same = if (tasks, fds) == last { same + 1 } else { 0 };
        last = (tasks, fds);
        if same >= 4 {
            break;
        }
    }
    let (threads, fds, rss_kb, anon_kb, file_kb) = proc_figures(pid);
    let [tasks, clients, heap, heap_free] = gauges(
        daemon.http,
        [
            "warden_runtime_tasks",
            "warden_wa_clients",
            "warden_heap_in_use_bytes",
            "warden_heap_free_bytes",
        ],
    )
    .await;
    Figures {
        threads,
        fds,
        tasks,
        rss_kb,
        anon_kb,
        file_kb,
        clients,
        heap_kb: heap / 1024,
        heap_free_kb: heap_free / 1024,
    }
}

/// Sessions per state, asked on a connection of its own (a long-lived one would be closed by
/// the control server's idle timeout while the cycles run).
async fn counts(socket: &std::path::Path) -> BTreeMap<String, usize> {
    let mut client = ControlClient::connect(socket).await.unwrap();
    let health: serde_json::Value = client.call(&Op::Health {}).await.unwrap();
    serde_json::from_value(health["counts"].clone()).unwrap()
}

/// Waits until `n` sessions are connected.
async fn all_connected(socket: &std::path::Path, n: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let counts = counts(socket).await;
        if counts.get("connected").copied().unwrap_or(0) >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all {n} sessions connected within {limit:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn within(before: u64, after: u64) -> bool {
    after as f64 <= before as f64 * (1.0 + TOLERANCE)
}

/// Whether the figures are back: threads, descriptors and tasks to the baseline, memory (RSS
/// and the heap in use) to the midpoint (see the test's last assertions).
fn back(before: &Figures, mid: &Figures, after: &Figures) -> bool {
    within(before.threads, after.threads)
        && within(before.fds, after.fds)
        && within(before.tasks, after.tasks)
        && within(mid.rss_kb, after.rss_kb)
        && within(mid.heap_kb, after.heap_kb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_through_many_connect_drop_cycles_leave_nothing_behind() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let sessions: usize = env_or("WARDEN_SOAK_SESSIONS", SESSIONS);
    let cycles: u32 = env_or("WARDEN_SOAK_CYCLES", CYCLES);
    // Long enough for every session to pair and log in, and for the baseline to be taken.
    let base = Duration::from_secs(15) + Duration::from_millis(30 * sessions as u64);
    let server = fake_whatsapp(cycles, base).await;
    let dir = workspace(&server.url());
    let per_second = (sessions as f64 / 4.0).clamp(50.0, 400.0).to_string();
    let in_flight = (sessions / 4).clamp(16, 256).to_string();
    // WARDEN_SOAK_WRAPPER: a command that execs the daemon (e.g. a heap profiler's preload;
    // docs/reliability.md), split on spaces.
    let wrapper = std::env::var("WARDEN_SOAK_WRAPPER").unwrap_or_default();
    let wrapper: Vec<&str> = wrapper.split_whitespace().collect();
    let daemon = Daemon::start_under(
        dir.path(),
        &wrapper,
        &[
            ("WARDEN_DAEMON_LOG_LEVEL", "info,warden_whatsapp=warn"),
            ("WARDEN_ADMISSION_PER_SECOND", &per_second),
            ("WARDEN_ADMISSION_BURST", "50"),
            ("WARDEN_ADMISSION_MAX_IN_FLIGHT", &in_flight),
            ("WARDEN_POLICY_MAX_ATTEMPTS", "100000"),
            ("WARDEN_POLICY_BACKOFF_BASE", "100ms"),
            ("WARDEN_POLICY_BACKOFF_CAP", "500ms"),
            ("WARDEN_WHATSAPP_LIVENESS_TIMEOUT", LIVENESS),
            ("WARDEN_OUTBOX_EXPIRY_CHECK", "1h"),
        ],
    )
    .await;
    let mut client = ControlClient::connect(&daemon.socket).await.unwrap();
    let tokens: Vec<String> = (0..sessions).map(|n| format!("soak{n:04}")).collect();
    for token in &tokens {
        let op = Op::Create {
            name: None,
            token: Some(token.clone()),
            proxy: None,
        };
        client.request(&op).await.unwrap();
    }
    for token in &tokens {
        let op = Op::Start {
            token: token.clone(),
            phone: None,
        };
        let reply = client.request(&op).await.unwrap();
        assert!(reply.ok, "{reply:?}");
    }
    let started = std::time::Instant::now();
    all_connected(&daemon.socket, sessions, base).await;
    let before = settled(&daemon).await;
    // The baseline counts only if every session was still in its first login meanwhile.
    let still = counts(&daemon.socket).await;
    assert_eq!(
        still.get("connected").copied().unwrap_or(0),
        sessions,
        "the baseline window ({base:?}) closed before the baseline was taken: {still:?}"
    );

    // Every account plays half its cycles, then holds still: the midpoint. A leak shows as
    // growth from there to the end, whatever the first cycles warm up.
    let recorder = server.recorder().clone();
    let limit =
        Duration::from_secs(120) + Duration::from_millis(60 * sessions as u64 * cycles as u64);
    let mid_attempt = midpoint_attempt(cycles);
    let holding = move |s: &warden_fakewa::Snapshot| {
        let mut held = BTreeMap::<&str, bool>::new();
        for c in s.connections() {
            if let Some(account) = c.account.as_deref()
                && !account.starts_with("unpaired:")
            {
                let holds = c.attempt == mid_attempt && c.closed.is_none();
                *held.entry(account).or_default() |= holds;
            }
        }
        held.len() == sessions && held.values().all(|h| *h)
    };
    let deadline = tokio::time::Instant::now() + limit;
    while !recorder.inspect(holding) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every account reached the midpoint within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all_connected(&daemon.socket, sessions, Duration::from_secs(60)).await;
    let mid = settled(&daemon).await;
    assert!(
        recorder.inspect(holding),
        "the midpoint window ({base:?}) closed before the midpoint was taken"
    );

    // Then the other half, and every account logs in for good: done when each has a live
    // connection past its last cycle.
    let last_attempt = cycles + 3;
    // Polled, not awaited on every record: at full size the recorder holds 100,000
    // connections, and a check on each new record would cost more than the run.
    let done = |s: &warden_fakewa::Snapshot| {
        let mut done = BTreeMap::<&str, bool>::new();
        for c in s.connections() {
            if let Some(account) = c.account.as_deref()
                && !account.starts_with("unpaired:")
            {
                let live_last = c.attempt >= last_attempt && c.closed.is_none();
                *done.entry(account).or_default() |= live_last;
            }
        }
        done.len() == sessions && done.values().all(|d| *d)
    };
    let deadline = tokio::time::Instant::now() + limit;
    while !recorder.inspect(done) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every account went through its cycles within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    all_connected(&daemon.socket, sessions, Duration::from_secs(60)).await;
    let soaked = started.elapsed();
    // The settle period: what a connection leaves for a while ends by itself (wa-rs's
    // post-login task of a connection that ended while logging in waits up to 5 s for the
    // offline sync; a chat worker made by a message processed after its connection ended
    // holds its client until the queue's five-minute time to live). Measured until all four
    // are back, or for `SETTLE` at most.
    let settling = std::time::Instant::now();
    let mut after = settled(&daemon).await;
    let settle_for = Duration::from_secs(env_or("WARDEN_SOAK_SETTLE_SECS", SETTLE.as_secs()));
    let mut reported = Duration::ZERO;
    while !back(&before, &mid, &after) && settling.elapsed() < settle_for {
        tokio::time::sleep(Duration::from_secs(2)).await;
        after = settled(&daemon).await;
        if settling.elapsed() >= reported + Duration::from_secs(30) {
            reported = settling.elapsed();
            eprintln!(
                "settling, {reported:.0?}: {} tasks, {} WhatsApp clients, RSS {} kB, heap in use \
                 {} kB, heap free {} kB",
                after.tasks, after.clients, after.rss_kb, after.heap_kb, after.heap_free_kb
            );
        }
    }
    let settle = settling.elapsed();

    let connections = recorder.inspect(|s| s.connections().len());
    let messages = recorder
        .inspect(|s| s.count(|r| matches!(r.event, warden_fakewa::ServerEvent::ClientAck { .. })));
    let most = recorder.inspect(|s| s.max_concurrent_any());
    eprintln!(
        "soak: {sessions} sessions x {cycles} cycles (drop, close, stall, 503; a message \
         before each ending that logs in) in {soaked:.1?}; {connections} connections, \
         {messages} client acks; at most {most} live connection(s) per account"
    );
    eprintln!("settled after {settle:.1?}");
    let db = std::fs::metadata(dir.path().join("sessions/warden.db")).map_or(0, |m| m.len());
    let wal = std::fs::metadata(dir.path().join("sessions/warden.db-wal")).map_or(0, |m| m.len());
    eprintln!("database {db} bytes, WAL {wal} bytes");
    for (when, f) in [("before", before), ("middle", mid), ("after ", after)] {
        eprintln!(
            "{when}: {} threads, {} fds, {} tasks, {} WhatsApp clients, RSS {} kB (anonymous {} \
             kB, file-backed {} kB), heap in use {} kB, heap free {} kB",
            f.threads,
            f.fds,
            f.tasks,
            f.clients,
            f.rss_kb,
            f.anon_kb,
            f.file_kb,
            f.heap_kb,
            f.heap_free_kb
        );
    }
    assert_eq!(most, 1, "an account had {most} live connections at once");
    // Every connection started a ten-minute stability timer; those of the connections that
    // ended must have left the queue with them (one per connected session is left).
    let timers = gauge(daemon.http, "warden_supervisor_timers").await;
    eprintln!("supervisor timers queued: {timers} for {sessions} connected sessions");
    assert!(
        timers <= 2 * sessions as u64,
        "{timers} timers queued for {sessions} sessions: cancelled timers stay queued"
    );
    let percent = |b: u64, a: u64| (a as f64 / b as f64 - 1.0) * 100.0;
    eprintln!(
        "RSS: {:+.1}% from the baseline, {:+.1}% over the second half of the cycles",
        percent(before.rss_kb, after.rss_kb),
        percent(mid.rss_kb, after.rss_kb)
    );
    for (name, b, a) in [
        ("threads", before.threads, after.threads),
        ("fds", before.fds, after.fds),
        ("tokio tasks", before.tasks, after.tasks),
    ] {
        assert!(
            within(b, a),
            "{name}: {a} after the soak, {b} before: more than {}% up",
            TOLERANCE * 100.0
        );
    }
    // Memory: the first reconnects take a fixed few megabytes that do not grow with more
    // cycles (docs/reliability.md, "Soak and leaks": where they are, and what is not yet
    // known), which is more than 5% of a small daemon's baseline. A leak grows with cycles:
    // none over the second half of them.
    assert!(
        within(mid.rss_kb, after.rss_kb),
        "RSS: {} kB after the soak, {} kB at its midpoint: it grows with cycles",
        after.rss_kb,
        mid.rss_kb
    );
    // The live heap (what the allocator handed out and was not freed), which the allocator's
    // own keepings do not blur: no growth over the second half either.
    assert!(
        within(mid.heap_kb, after.heap_kb),
        "heap in use: {} kB after the soak, {} kB at its midpoint: it grows with cycles",
        after.heap_kb,
        mid.heap_kb
    );
}
