//! Helpers for driving the real supervisor with the real `WaLink` against the fake server.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use wa_rs_core::net::{HttpClient, HttpRequest, HttpResponse};
pub use warden_core::scripted::EventWaiter;
use warden_core::{
    AdmissionConfig, PolicyConfig, SessionInfo, SessionState, Supervisor, SupervisorConfig,
};
use warden_fakewa::{
    FakeServer, PairSpec, Plan, QrSpec, Recorder, Scenario, Script, ServerConfig, Step,
};
use warden_store::Db;
use warden_whatsapp::{WaConfig, WaLink};

/// A version recent enough that wa-rs never looks one up over HTTP.
pub const VERSION: &str = "2.3000.1027868167";
/// Upper bound on anything a test waits for; nothing normally comes close.
pub const LIMIT: Duration = Duration::from_secs(20);
/// How long sockets, tasks and threads may take to go once sessions are stopped.
pub const SETTLE: Duration = Duration::from_secs(30);
/// How long a wa-rs client may outlive its session: a QR rotation task that missed the
/// pairing's cancel holds it until its 60 s code expires. (Queries in flight no longer hold
/// it: the patched wa-rs fails them when their connection ends; query_in_flight.rs.)
pub const CLIENT_LINGER: Duration = Duration::from_secs(90);

/// Refuses every request: nothing here may need HTTP.
pub struct NoHttp;

#[async_trait]
impl HttpClient for NoHttp {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        anyhow::bail!("unexpected HTTP request to {}", request.url)
    }
}

/// Short timeouts for loopback.
pub fn wa_config(url: &str) -> WaConfig {
    WaConfig {
        url: url.into(),
        version: VERSION.into(),
        connect_timeout: Duration::from_secs(2),
        liveness_timeout: Duration::from_secs(5),
        ack_timeout: Duration::from_secs(5),
        proxy: None,
    }
}

/// A link keeping credentials in `db`.
pub fn link(config: WaConfig, db: &Db) -> Arc<WaLink> {
    Arc::new(
        WaLink::new(config, db.clone())
            .expect("valid config")
            .with_http_client(Arc::new(NoHttp)),
    )
}

/// Short backoff, no jitter, admission out of the way, on `db`.
pub fn supervisor_config(dir: &Path, db: &Db) -> SupervisorConfig {
    let mut config = SupervisorConfig::new(dir).with_db(db.clone());
    config.policy = PolicyConfig {
        jitter: 0.0,
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_millis(400),
        max_attempts: 5,
        ..PolicyConfig::default()
    };
    config.admission = AdmissionConfig {
        max_in_flight: 100_000,
        per_second: 1_000_000.0,
        burst: 100_000,
    };
    config.close_timeout = Duration::from_secs(5);
    config.event_capacity = 1 << 16;
    // No pacing worth waiting for on loopback (the pacing itself is tested in warden-core).
    config.outbox.per_minute = 60_000;
    config
}

/// Registration: one QR ref, "scanned" after `scan`, paired as `phone`.
pub fn pairing(phone: &str, scan: Duration) -> Plan {
    Plan::always(Scenario::new([
        Step::Qr(QrSpec::new(
            1,
            Duration::from_secs(30),
            Duration::from_secs(30),
        )),
        Step::wait(scan),
        Step::Pair(PairSpec {
            restart_after: Duration::from_millis(20),
            ..PairSpec::phone(phone)
        }),
    ]))
}

/// Registration for many sessions: one QR ref, "scanned" after 20 ms, paired as the next
/// phone number of the server's pool, restarted (515) 20 ms later.
pub fn pairing_any() -> Plan {
    Plan::always(Scenario::new([
        Step::Qr(QrSpec::new(
            1,
            Duration::from_secs(30),
            Duration::from_secs(30),
        )),
        Step::wait(Duration::from_millis(20)),
        Step::Pair(PairSpec {
            restart_after: Duration::from_millis(20),
            ..PairSpec::default()
        }),
    ]))
}

/// A server that pairs registrations as `phone` and plays `login` for its logins.
pub async fn server(phone: &str, login: Plan) -> FakeServer {
    server_with(
        Script::default()
            .with_registration(pairing(phone, Duration::from_millis(50)))
            .with_account(phone, login),
    )
    .await
}

/// A server playing `script`.
pub async fn server_with(script: Script) -> FakeServer {
    FakeServer::start(ServerConfig {
        online_timeout: Duration::from_secs(5),
        ..ServerConfig::with_script(script)
    })
    .await
    .expect("fake server")
}

/// The device JID the fake server gives the first device of `phone`.
pub fn device_jid(phone: &str) -> String {
    format!("{phone}:1@s.whatsapp.net")
}

/// The event waiter, on real time: each wait fails after [`LIMIT`].
pub type Events = EventWaiter;

/// A supervisor with a `WaLink`, against one fake server.
pub struct Harness {
    pub server: FakeServer,
    pub supervisor: Supervisor,
    pub link: Arc<WaLink>,
    pub events: Events,
    pub dir: tempfile::TempDir,
    /// The session database the supervisor and the link share.
    pub db: Db,
}

impl Harness {
    /// A harness against `server`, with the link's config adjusted by `adjust`.
    pub async fn new(server: FakeServer, adjust: impl FnOnce(&mut WaConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = wa_config(&server.url());
        adjust(&mut config);
        let db = Db::open_in(dir.path()).expect("session database");
        let link = link(config, &db);
        Self::with_link(server, dir, db, link).await
    }

    /// A harness against `server` whose link keeps the credentials in `credentials` (the
    /// supervisor's records stay in the harness's own database).
    pub async fn with_credentials(
        server: FakeServer,
        credentials: Arc<dyn warden_whatsapp::Credentials>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open_in(dir.path()).expect("session database");
        let link = Arc::new(
            WaLink::new(wa_config(&server.url()), db.clone())
                .expect("valid config")
                .with_http_client(Arc::new(NoHttp))
                .with_credentials(credentials),
        );
        Self::with_link(server, dir, db, link).await
    }

    /// A supervisor on `db` (in `dir`) driving `link`.
    async fn with_link(
        server: FakeServer,
        dir: tempfile::TempDir,
        db: Db,
        link: Arc<WaLink>,
    ) -> Self {
        let (supervisor, _) = Supervisor::start(supervisor_config(dir.path(), &db), link.clone())
            .await
            .expect("supervisor starts");
        let events = EventWaiter::new(&supervisor, LIMIT);
        Self {
            server,
            supervisor,
            link,
            events,
            dir,
            db,
        }
    }

    /// Creates `token` and starts it.
    pub async fn start(&mut self, token: &str) {
        self.supervisor
            .create(None, Some(token))
            .await
            .expect("create");
        self.supervisor
            .start_session(token, Default::default())
            .await
            .expect("start");
    }

    /// Creates, starts and pairs `token` as `phone` (the server's registration plan must pair
    /// as `phone`), returning once it is connected.
    pub async fn paired(&mut self, token: &str, phone: &str) -> SessionInfo {
        self.start(token).await;
        self.events
            .wait(token, |i| {
                i.state == SessionState::WaitingForScan && i.qr.is_some()
            })
            .await;
        self.events.state(token, SessionState::Pairing).await;
        let info = self.events.state(token, SessionState::Connected).await;
        assert_eq!(info.jid.as_deref(), Some(device_jid(phone).as_str()));
        info
    }

    /// Creates sessions `s0` … `s{n-1}` (stopped) and returns their tokens.
    pub async fn create_many(&mut self, n: usize) -> Vec<String> {
        let tokens: Vec<String> = (0..n).map(|n| format!("s{n}")).collect();
        for t in &tokens {
            self.supervisor.create(None, Some(t)).await.expect("create");
        }
        tokens
    }

    /// Starts every token at once and waits until each has connected `times` times in all.
    pub async fn start_all_until_connected(&mut self, tokens: &[String], times: usize) {
        let starts = tokens
            .iter()
            .map(|t| self.supervisor.start_session(t, Default::default()));
        for started in futures_util::future::join_all(starts).await {
            started.expect("start");
        }
        for t in tokens {
            self.events
                .wait(t, |i| {
                    i.state == SessionState::Connected && i.counters.connects as usize >= times
                })
                .await;
        }
    }

    /// Stops every token at once; each must end `stopped`.
    pub async fn stop_all(&mut self, tokens: &[String]) {
        let stops = tokens.iter().map(|t| self.supervisor.stop(t));
        for stopped in futures_util::future::join_all(stops).await {
            assert_eq!(stopped.expect("stop").state, SessionState::Stopped);
        }
    }

    /// Whether `token` has credentials in the database.
    pub async fn has_credentials(&self, token: &str) -> bool {
        has_credentials(&self.db, token).await
    }

    /// The recorder of the fake server.
    pub fn recorder(&self) -> &Recorder {
        self.server.recorder()
    }

    /// Connections the server saw for `account`.
    pub fn connections(&self, account: &str) -> usize {
        self.recorder()
            .inspect(|s| s.connections_for(account).len())
    }

    /// Asserts no account ever had two live connections at once.
    pub fn assert_one_at_a_time(&self) {
        let max = self.recorder().inspect(|s| s.max_concurrent_any());
        assert!(max <= 1, "an account had {max} live connections at once");
    }
}

/// Whether `token` has credentials (a device row) in `db`.
pub async fn has_credentials(db: &Db, token: &str) -> bool {
    db.find_device(token).await.expect("database").is_some()
}

/// Closes `db` (every other handle must be gone too) and opens the file in `dir` again.
pub async fn reopen(db: Db, dir: &Path) -> Db {
    tokio::time::timeout(LIMIT, db.close())
        .await
        .expect("every handle on the database was dropped");
    Db::open_in(dir).expect("reopening the database")
}

/// The process's OS threads, except the moka stand-in's sweeper (`crates/patches/moka`): one
/// thread for the whole process, started with the first cache entry that can expire and kept.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() != "moka-sweeper")
        .count()
}

/// How many entries `dir` has (`/proc/self/fd`: open descriptors; `/proc/self/task`: threads).
pub fn entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The process's resident memory, in kB.
pub fn rss_kb() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The tokio tasks alive in the current runtime.
pub fn tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded by `within`) until `measure` gives at most `expected`; returns the last value.
pub async fn settles_within(
    within: Duration,
    expected: usize,
    measure: impl Fn() -> usize,
) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = measure();
        if now <= expected || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `measure` gives the same value for a while (the settling of wa-rs's one-shot
/// tasks), and returns it.
pub async fn steady(measure: impl Fn() -> usize) -> usize {
    let mut last = measure();
    let mut same = 0;
    while same < 5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = measure();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Asserts that open descriptors and threads (the sweeper aside) settle back to where they
/// were before the sessions existed.
pub async fn assert_fds_and_threads_back(fds_before: usize, threads_before: usize) {
    let fds_after = settles_within(SETTLE, fds_before, || entries("/proc/self/fd")).await;
    assert!(
        fds_after <= fds_before,
        "{fds_after} fds open, {fds_before} before the sessions"
    );
    let threads_after = settles_within(SETTLE, threads_before, threads).await;
    assert!(
        threads_after <= threads_before,
        "{threads_after} threads, {threads_before} before the sessions"
    );
}
