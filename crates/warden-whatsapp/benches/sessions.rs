//! What a session costs with `WaLink`: N sessions against the fake WhatsApp server running in
//! its own process, in two states — waiting in the handshake (a `silent_ws` listener) and
//! connected idle — with RSS, OS threads, tokio tasks and file descriptors per session, and the
//! time to get all of them there.
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-wa cargo build --release -p warden-fakewa
//! CARGO_TARGET_DIR=/work/target-wa cargo bench -p warden-whatsapp --bench sessions -j 2
//! # N defaults to "100,1000"; WARDEN_BENCH_N=100 for a quick run;
//! # WARDEN_FAKEWA=/path/to/warden-fakewa if the binary is not beside the bench's target dir.
//! ```
//!
//! The link is driven directly (no supervisor), on a multi-threaded runtime with 2 workers,
//! so the figures are the WhatsApp side of a session only.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use wa_rs_core::net::{HttpClient, HttpRequest, HttpResponse};
use warden_core::{Connection, LifecycleEvent, LifecycleSink, Link, OpenOptions, Token};
use warden_whatsapp::{WaConfig, WaLink};

struct NoHttp;

#[async_trait]
impl HttpClient for NoHttp {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        anyhow::bail!("unexpected HTTP request to {}", request.url)
    }
}

const NORMAL: &str = r#"
[server]
online_timeout = "30s"
handshake_timeout = "10m"
[registration]
default = [
  { qr = { refs = 1, first = "50s", then = "50s" } },
  { wait = "10ms" },
  { pair = { restart_after = "10ms" } },
]
[login]
default = ["login"]
"#;

const SILENT: &str = r#"
[server]
handshake_timeout = "10m"
[[listener]]
mode = "silent_ws"
"#;

/// The fake server in its own process; killed on drop.
struct FakeServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl FakeServer {
    fn start(scenario: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("scenario.toml");
        std::fs::write(&file, scenario).expect("scenario");
        let mut child = Command::new(fakewa_binary())
            .args(["--listen", "127.0.0.1:0", "--scenario"])
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn warden-fakewa");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("first line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("the URL")
            .to_string();
        Self {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fakewa_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WARDEN_FAKEWA") {
        return path.into();
    }
    // target/release/deps/sessions-… → target/{release,debug}/warden-fakewa
    let exe = std::env::current_exe().expect("current exe");
    let target = exe.ancestors().nth(3).expect("target dir").to_path_buf();
    for profile in ["release", "debug"] {
        let candidate = target.join(profile).join("warden-fakewa");
        if candidate.exists() {
            return candidate;
        }
    }
    eprintln!(
        "warden-fakewa not found under {}: run `cargo build --release -p warden-fakewa` first \
         (with the same CARGO_TARGET_DIR), or set WARDEN_FAKEWA",
        target.display()
    );
    std::process::exit(2);
}

/// The process's footprint.
#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_kb: u64,
    peak_kb: u64,
    threads: u64,
    fds: u64,
    tasks: u64,
}

impl Usage {
    fn now() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Self {
            rss_kb: field("VmRSS:"),
            peak_kb: field("VmHWM:"),
            threads: field("Threads:"),
            fds: std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as u64)
                .unwrap_or(0),
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as u64,
        }
    }

    fn sockets() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|t| t.to_string_lossy().starts_with("socket:"))
                    .count()
            })
            .unwrap_or(0)
    }
}

fn row(state: &str, n: usize, base: Usage, at: Usage, time: Duration) {
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / n as f64;
    println!(
        "| {n} | {state} | {:.0} kB | {:.0} MB / {:.0} MB | {:.2} | {:.2} | {:.2} | {:.2} s |",
        per(at.rss_kb, base.rss_kb),
        at.rss_kb as f64 / 1024.0,
        at.peak_kb as f64 / 1024.0,
        per(at.threads, base.threads),
        per(at.tasks, base.tasks),
        per(at.fds, base.fds),
        time.as_secs_f64(),
    );
}

fn sink() -> (LifecycleSink, mpsc::UnboundedReceiver<LifecycleEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        LifecycleSink::new(move |e| {
            let _ = tx.send(e);
        }),
        rx,
    )
}

async fn until(
    rx: &mut mpsc::UnboundedReceiver<LifecycleEvent>,
    want: fn(&LifecycleEvent) -> bool,
) -> bool {
    loop {
        match rx.recv().await {
            Some(e) if want(&e) => return true,
            Some(LifecycleEvent::Disconnected { reason }) => {
                eprintln!("unexpected end: {reason}");
                return false;
            }
            Some(_) => {}
            None => return false,
        }
    }
}

fn link(url: &str, dir: &std::path::Path) -> Arc<WaLink> {
    let config = WaConfig {
        url: url.into(),
        version: "2.3000.1027868167".into(),
        connect_timeout: Duration::from_secs(600),
        liveness_timeout: Duration::from_secs(600),
        ack_timeout: Duration::from_secs(30),
        proxy: None,
    };
    // One measurement per process: the database is opened once, by this link.
    let db = warden_store::Db::open_in(dir).expect("session database");
    Arc::new(
        WaLink::new(config, db)
            .expect("config")
            .with_http_client(Arc::new(NoHttp)),
    )
}

/// Opens one connection per token; returns them with their event receivers.
async fn open_all(
    link: &Arc<WaLink>,
    tokens: &[Token],
) -> Vec<(Box<dyn Connection>, mpsc::UnboundedReceiver<LifecycleEvent>)> {
    let opens = tokens.iter().map(|t| {
        let link = link.clone();
        let t = t.clone();
        tokio::spawn(async move {
            let (s, rx) = sink();
            let conn = link
                .open(&t, OpenOptions::default(), s)
                .await
                .expect("open");
            (conn, rx)
        })
    });
    let mut out = Vec::new();
    for handle in futures_util::future::join_all(opens).await {
        out.push(handle.expect("open task"));
    }
    out
}

async fn close_all(
    conns: Vec<(Box<dyn Connection>, mpsc::UnboundedReceiver<LifecycleEvent>)>,
) -> Duration {
    let started = Instant::now();
    let closing = conns
        .into_iter()
        .map(|(mut c, _)| tokio::spawn(async move { c.close().await }));
    futures_util::future::join_all(closing).await;
    started.elapsed()
}

fn tokens(n: usize) -> Vec<Token> {
    (0..n)
        .map(|i| Token::parse(&format!("s{i}")).unwrap())
        .collect()
}

/// N sessions waiting in the handshake (the server never answers the Noise hello).
async fn in_handshake(n: usize, url: &str) {
    let tokens = tokens(n);
    let dir = tempfile::tempdir().expect("temp dir");
    let base = Usage::now();
    let sockets = Usage::sockets();
    let started = Instant::now();
    let link = link(url, dir.path());
    let conns = open_all(&link, &tokens).await;
    while Usage::sockets() < sockets + n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    row("in handshake", n, base, Usage::now(), took);
    let stop = close_all(conns).await;
    eprintln!(
        "  stopped {n} sessions in the handshake in {:.0} ms",
        stop.as_secs_f64() * 1e3
    );
}

/// Pairs N sessions in `dir` (QR, pair-success, 515, first login).
async fn pair(n: usize, url: &str, dir: &std::path::Path) {
    let tokens = tokens(n);
    let link = link(url, dir);
    let started = Instant::now();
    let mut pairing = open_all(&link, &tokens).await;
    let waits = pairing
        .iter_mut()
        .map(|(_, rx)| until(rx, |e| matches!(e, LifecycleEvent::Disconnected { .. })));
    futures_util::future::join_all(waits).await;
    eprintln!(
        "  {n} QR pairings (QR, pair-success, 515) took {:.2} s",
        started.elapsed().as_secs_f64()
    );
    drop(pairing);
    let mut conns = open_all(&link, &tokens).await;
    let waits = conns
        .iter_mut()
        .map(|(_, rx)| until(rx, |e| matches!(e, LifecycleEvent::Connected { .. })));
    futures_util::future::join_all(waits).await;
    close_all(conns).await;
}

/// N paired sessions in `dir` log in with their stored credentials and stay connected, idle.
async fn connected(n: usize, url: &str, dir: &std::path::Path) {
    let tokens = tokens(n);
    let base = Usage::now();
    let link = link(url, dir);
    let started = Instant::now();
    let mut conns = open_all(&link, &tokens).await;
    let waits = conns
        .iter_mut()
        .map(|(_, rx)| until(rx, |e| matches!(e, LifecycleEvent::Connected { .. })));
    let ok = futures_util::future::join_all(waits)
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count();
    let took = started.elapsed();
    assert_eq!(ok, n, "every session connected");
    tokio::time::sleep(Duration::from_secs(8)).await;
    row("connected idle", n, base, Usage::now(), took);
    let stop = close_all(conns).await;
    eprintln!(
        "  stopped {n} connected sessions in {:.0} ms",
        stop.as_secs_f64() * 1e3
    );
    for t in &tokens {
        link.forget(t).await.expect("forget");
    }
    let after = Usage::now();
    eprintln!(
        "  after forgetting all: {} fds (of {} at the start), {} tasks",
        after.fds, base.fds, after.tasks
    );
}

/// Runs one measurement in this (fresh) process.
fn child(args: &[String]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let n: usize = args[1].parse().expect("N");
    runtime.block_on(async {
        match args[0].as_str() {
            "handshake" => in_handshake(n, &args[2]).await,
            "pair" => pair(n, &args[2], std::path::Path::new(&args[3])).await,
            "connected" => connected(n, &args[2], std::path::Path::new(&args[3])).await,
            other => panic!("unknown measurement {other}"),
        }
    });
}

/// Runs one measurement in a fresh process, so one state's memory does not count in another.
fn measure(args: &[&str]) {
    let status = Command::new(std::env::current_exe().expect("current exe"))
        .arg("--child")
        .args(args)
        .status()
        .expect("run the measurement");
    assert!(status.success(), "measurement {args:?} failed");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` lists; nothing to list
    }
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if let Some(at) = args.iter().position(|a| a == "--child") {
        child(&args[at + 1..]);
        return;
    }
    eprintln!("open files limit: {limit}");
    let sizes: Vec<usize> = std::env::var("WARDEN_BENCH_N")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let normal = FakeServer::start(NORMAL);
    let silent = FakeServer::start(SILENT);
    println!(
        "| N | state | RSS / session | RSS total / peak | OS threads / session | tokio tasks / session | fds / session | time to reach it |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let n_text = n.to_string();
        measure(&["handshake", &n_text, &silent.url]);
        let dir = tempfile::tempdir().expect("temp dir");
        let dir_text = dir.path().to_str().expect("utf-8 temp dir").to_owned();
        measure(&["pair", &n_text, &normal.url, &dir_text]);
        measure(&["connected", &n_text, &normal.url, &dir_text]);
    }
}
