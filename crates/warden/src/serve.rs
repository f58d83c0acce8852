//! `warden serve`: the daemon. One main loop over signals and timers; the control socket and the
//! supervisor run beside it; shutdown is a bounded protocol.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use warden::cluster::{Adopted, NodeCredentials, NodeLeases, follow, hand_over};
use warden_control::{ControlServer, LocalAnswers, ServerConfig};
use warden_core::{Supervisor, SupervisorConfig};
use warden_store::{Db, PgDb, PgOptions, Shared, Store};
use warden_webhooks::Webhooks;
use warden_whatsapp::WaLink;

use crate::heap;
use crate::limits;
use crate::logging::{self, Logging};
use crate::systemd;
use tokio_util::sync::CancellationToken;
use warden::config::{self, Config};
use warden::peers::{ClusterPeers, RequestLink, answer_requests};
use warden::rebalance::rebalance;

/// `sysexits.h`'s EX_CONFIG: the configuration is wrong; systemd should not restart us.
pub const EX_CONFIG: u8 = 78;
/// `sysexits.h`'s EX_SOFTWARE: an internal failure (the supervisor ended on its own); the
/// service manager should restart us.
const EX_SOFTWARE: u8 = 70;

/// How often the systemd status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Added to `shutdown_timeout`: the whole shutdown (HTTP, control socket, supervisor, database)
/// ends within `shutdown_timeout + SHUTDOWN_MARGIN`, whatever is stuck.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// After the shutdown's deadline, how long a wedged process gets before a plain thread ends
/// it (when even the async runtime cannot make progress).
const BACKSTOP_AFTER: Duration = Duration::from_secs(3);

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path, explicit: bool, log_flag: Option<&str>) -> ExitCode {
    let loaded = match config::load(config_path, explicit) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("warden: invalid configuration: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let config = loaded.config;
    // File descriptors first, before anything big is opened.
    let fd_limit = limits::raise_nofile();
    let filter = logging::choose_filter(log_flag, &config.daemon.log_level);
    let logging = match logging::init(&filter, &config.daemon.log_dir) {
        Ok(logging) => logging,
        Err(e) => {
            eprintln!("warden: cannot set up logging: {e:#}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    match &loaded.path {
        Some(path) => tracing::info!(config = %path.display(), "configuration loaded"),
        None => tracing::info!(
            config = %config_path.display(),
            "no configuration file; running on the defaults"
        ),
    }
    let capacity = match fd_limit.map(|limit| capacity(&config, &limit)) {
        Ok(Some(capacity)) => capacity,
        Ok(None) => return ExitCode::FAILURE,
        Err(e) => {
            tracing::error!("warden could not start: cannot read the file-descriptor limit: {e}");
            return ExitCode::FAILURE;
        }
    };
    match serve(config, config_path, explicit, log_flag, &logging, capacity).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("warden could not start: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs the file-descriptor limits and works out how many sessions may be live at once;
/// `None` (after logging why) when not a single session fits.
fn capacity(config: &Config, limit: &limits::FdLimit) -> Option<usize> {
    match &limit.error {
        None => tracing::info!(
            before = limit.before,
            after = limit.soft,
            hard = limit.hard,
            "file-descriptor limit: soft {} -> {} (hard {})",
            limit.before,
            limit.soft,
            limit.hard
        ),
        Some(e) => tracing::warn!(
            before = limit.before,
            after = limit.soft,
            hard = limit.hard,
            "file-descriptor limit: soft {} could not be raised to the hard limit {}: {e}",
            limit.before,
            limit.hard
        ),
    }
    let reserve = limits::Reserve::new(
        config.daemon.max_clients,
        config.http.enabled.then_some(config.http.max_connections),
    );
    let capacity = limits::capacity(limit.soft, &reserve, config.daemon.max_sessions);
    if capacity == 0 {
        tracing::error!(
            "warden could not start: the file-descriptor limit {} leaves no room for a single \
             session after the reserve of {} (the process, {} control clients, HTTP, a margin); \
             raise it (LimitNOFILE=, ulimit -n) or lower [daemon] max_clients",
            limit.soft,
            reserve.total(),
            config.daemon.max_clients
        );
        return None;
    }
    let set_by = if config.daemon.max_sessions != 0 && capacity == config.daemon.max_sessions {
        "; [daemon] max_sessions"
    } else {
        ""
    };
    tracing::info!(
        capacity,
        soft_limit = limit.soft,
        reserve = reserve.total(),
        "capacity: {capacity} live sessions (fd soft limit {}, reserve {}{set_by})",
        limit.soft,
        reserve.total()
    );
    Some(capacity)
}

async fn serve(
    config: Config,
    config_path: &Path,
    explicit: bool,
    log_flag: Option<&str>,
    logging: &Logging,
    capacity: usize,
) -> anyhow::Result<ExitCode> {
    // One daemon per sessions folder, whatever socket it is given.
    let _lock = lock_sessions_dir(&config.daemon.sessions_dir)?;
    // The socket next: a second daemon must refuse before it touches a single session.
    let server = ControlServer::bind(ServerConfig {
        path: config.daemon.socket.clone(),
        mode: config.daemon.socket_mode.0,
        max_line_bytes: config.daemon.max_line_bytes,
        max_clients: config.daemon.max_clients,
        write_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(300),
    })
    .await
    .context("cannot open the control socket")?;
    tracing::info!(socket = %server.path().display(), "control socket ready");
    // Handlers before anything slow: a SIGTERM from here on is a graceful shutdown.
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;

    // One database for every session, shared by the supervisor and the link.
    let sessions_dir = config.daemon.sessions_dir.clone();
    let db = tokio::task::spawn_blocking(move || Db::open_in(&sessions_dir))
        .await
        .context("opening the session database")??;
    tracing::info!(database = %db.path().display(), "session database open");
    let import = warden_whatsapp::import_legacy(&db, &config.daemon.sessions_dir).await;
    for (token, why) in &import.failed {
        tracing::warn!(
            token = %token,
            "WhatsApp store of an earlier release not imported, its folder is left as it is: {why}"
        );
    }
    tracing::info!(
        imported = import.imported.len(),
        failed = import.failed.len(),
        "legacy WhatsApp stores: {} imported into the session database, {} failed",
        import.imported.len(),
        import.failed.len()
    );
    let link = match WaLink::new(config.whatsapp.clone(), db.clone()) {
        Ok(link) => link,
        Err(e) => {
            tracing::error!("invalid [whatsapp] configuration: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    // In a cluster, the sessions, their credentials and their history are on PostgreSQL, and
    // this node runs only what it holds the lease of.
    let (store, link, member) = if config.cluster.enabled() {
        let joined = join_cluster(&config.cluster).await?;
        let adopted = Adopted::default();
        let link = link.with_credentials(Arc::new(NodeCredentials {
            gate: joined.node.gate(),
            adopted: adopted.clone(),
            db: joined.db.clone(),
        }));
        let store = Store::Shared(Shared {
            db: joined.db,
            leases: Arc::new(NodeLeases {
                gate: joined.node.gate(),
                adopted: adopted.clone(),
            }),
        });
        (
            store,
            Arc::new(link),
            Some((joined.node, adopted, joined.tls)),
        )
    } else {
        (Store::Local(db.clone()), Arc::new(link), None)
    };

    let http_listener = if config.http.enabled {
        let listener = tokio::net::TcpListener::bind(config.http.bind)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", config.http.bind))?;
        let addr = listener.local_addr().context("HTTP listener address")?;
        tracing::info!(
            "HTTP gateway listening on http://{addr} (dashboard at /, API key {})",
            if config.http.api_key.is_some() {
                "required"
            } else {
                "not set: loopback only"
            }
        );
        Some(listener)
    } else {
        None
    };

    let supervisor_config = SupervisorConfig {
        policy: config.policy.clone(),
        janitor: config.janitor.clone(),
        admission: config.admission.clone(),
        outbox: config.outbox.clone(),
        journal: config.journal,
        close_timeout: config.daemon.close_timeout,
        shutdown_timeout: config.daemon.shutdown_timeout,
        max_active: Some(capacity),
        store: Some(store.clone()),
        ..SupervisorConfig::new(&config.daemon.sessions_dir)
    };
    let (supervisor, report) = Supervisor::start(supervisor_config, link)
        .await
        .context("cannot start the supervisor")?;
    for problem in &report.problems {
        tracing::warn!("unreadable session entry left alone: {problem}");
    }

    let webhooks = Arc::new(
        Webhooks::start(&config.webhooks, store.clone(), supervisor.journal_head())
            .await
            .context("cannot start the webhooks")?,
    );
    let metrics = Arc::new(warden_http::Metrics::new().with_gauge(
        "warden_wa_clients",
        "WhatsApp clients alive: one per connected session, plus those still finishing.",
        || warden_whatsapp::clients_alive() as u64,
    )
    .with_gauge(
        "warden_heap_in_use_bytes",
        "Heap handed out by the allocator and not yet freed (0 where the allocator is not glibc's).",
        || heap::figures().map_or(0, |f| f.in_use),
    )
    .with_gauge(
        "warden_heap_free_bytes",
        "Heap freed but kept by the allocator (0 where the allocator is not glibc's).",
        || heap::figures().map_or(0, |f| f.free),
    ));
    let observer_metrics = metrics.clone();
    let mut server = server
        .with_observer(Arc::new(move |op: &str, ok: bool| {
            observer_metrics.record_socket_request(op, ok)
        }))
        .with_webhooks(webhooks.clone());
    // In a cluster, operations and HTTP requests reach the node that runs their session,
    // whichever node they are asked of; this node carries out those asked of it.
    let answering = CancellationToken::new();
    let mut elsewhere: Option<Arc<dyn warden_http::Elsewhere>> = None;
    if let Some((node, _, tls)) = &member {
        let link = Arc::new(RequestLink::new(
            &config.cluster.database_url,
            config.cluster.answer_timeout,
            tls.clone(),
        ));
        let peers = Arc::new(ClusterPeers::new(link.clone(), &config.cluster.node));
        server = server.with_peers(peers.clone());
        elsewhere = Some(peers);
        let http_answers = warden_http::LocalHttp::new(
            supervisor.clone(),
            Some(webhooks.clone()),
            metrics.clone(),
            config.http.max_body_bytes,
            warden::peers::CARRY_HTTP_WITHIN,
        );
        tokio::spawn(answer_requests(
            link,
            LocalAnswers::new(supervisor.clone(), Some(webhooks.clone())),
            http_answers,
            node.gate(),
            answering.clone(),
        ));
    }
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server.run(supervisor.clone(), async {
        let _ = server_stopped.await;
    }));
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http = if let Some(listener) = http_listener {
        Some(tokio::spawn(warden_http::serve_with_webhooks(
            listener,
            supervisor.clone(),
            Some(webhooks.clone()),
            elsewhere,
            config.http.clone(),
            metrics,
            async {
                let _ = http_stopped.await;
            },
        )))
    } else {
        None
    };
    // A cluster node runs what it holds: what it claims comes in, what it loses goes.
    // It also hands sessions to a node that joined, when placement prefers it for them.
    let member = member.map(|(node, adopted, _)| {
        let follower = tokio::spawn(follow(
            supervisor.clone(),
            node.ownership(),
            adopted.clone(),
        ));
        let rebalancer = tokio::spawn(rebalance(
            supervisor.clone(),
            node.releaser(),
            node.subscribe(),
            adopted.clone(),
        ));
        (node, follower, rebalancer, adopted)
    });
    let summary = systemd::summary(&supervisor.list());
    tracing::info!(
        sessions_dir = %config.daemon.sessions_dir.display(),
        loaded = report.loaded,
        capacity,
        "warden is ready ({summary})"
    );
    systemd::ready(&summary);

    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    let watchdog_every = systemd::watchdog_interval();
    let mut watchdog_tick =
        tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut supervisor_died = false;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            () = supervisor.stopped() => {
                // It ended without being asked (a panic in its handler): no session is managed
                // any more. Exit non-zero so that the service manager restarts the daemon,
                // which restores every session from the database.
                tracing::error!(
                    "the supervisor stopped on its own: no session is managed any more; \
                     exiting with status {EX_SOFTWARE} so that warden is restarted"
                );
                supervisor_died = true;
                break;
            }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => reload(config_path, explicit, log_flag, logging, &supervisor).await,
            _ = status_tick.tick() => systemd::status(&systemd::summary(&supervisor.list())),
            _ = watchdog_tick.tick(), if watchdog_every.is_some() => {
                // Pet the watchdog only if the supervisor's own loop answers.
                let bound = watchdog_every.unwrap_or_default();
                if let Ok(Ok(())) = tokio::time::timeout(bound, supervisor.ping()).await {
                    systemd::watchdog();
                } else {
                    tracing::error!("the supervisor did not answer; not petting the watchdog");
                }
            }
        }
    }

    systemd::stopping();
    let bound = config.daemon.shutdown_timeout + SHUTDOWN_MARGIN;
    let deadline = Instant::now() + bound;
    backstop(bound + BACKSTOP_AFTER);
    let _ = stop_server.send(());
    let _ = stop_http.send(());
    answering.cancel();
    if let Some((node, follower, rebalancer, adopted)) = member {
        rebalancer.abort();
        // Close every session here, then hand them all over at once: the other nodes claim
        // them now instead of after declaring this one dead.
        let leaving = hand_over(&supervisor, node, follower, &adopted);
        match tokio::time::timeout_at(deadline, leaving).await {
            Ok(Ok(handed)) => tracing::info!(handed, "left the cluster; sessions handed over"),
            Ok(Err(e)) => tracing::error!(
                "could not leave the cluster cleanly ({e}); the other nodes take over once they declare this one dead"
            ),
            Err(_) => tracing::error!(
                "leaving the cluster did not finish in time; the other nodes take over once they declare this one dead"
            ),
        }
    }
    let stuck = shutdown(deadline, bound, &supervisor, &store, http, served).await;
    if supervisor_died {
        return Ok(ExitCode::from(EX_SOFTWARE));
    }
    if stuck.is_empty() {
        tracing::info!("warden stopped: every session closed, every record flushed");
        Ok(ExitCode::SUCCESS)
    } else {
        tracing::error!(
            "warden stopped, but the shutdown did not complete: {}",
            stuck.join("; ")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// How long joining the cluster (reaching PostgreSQL, registering) may take at startup.
const JOIN_WITHIN: Duration = Duration::from_secs(30);

/// This node's membership and its session store on PostgreSQL.
struct Joined {
    node: warden_cluster::Node,
    db: PgDb,
    tls: Option<warden_cluster::PgTls>,
}

/// Joins the cluster `[cluster]` describes: registers this node and opens the session store,
/// each within [`JOIN_WITHIN`]. The database URL is never logged.
async fn join_cluster(cluster: &config::ClusterConfig) -> anyhow::Result<Joined> {
    let tls = cluster.pg_tls().context("[cluster] tls")?;
    let node = tokio::time::timeout(
        JOIN_WITHIN,
        warden_cluster::Node::start(warden_cluster::NodeConfig {
            database_url: cluster.database_url.clone(),
            node: cluster.node.clone(),
            addr: None,
            cap: (cluster.cap > 0).then_some(cluster.cap),
            timing: cluster.timing(),
            tls: tls.clone(),
        }),
    )
    .await
    .context("joining the cluster: PostgreSQL did not answer in time")?
    .context("cannot join the cluster")?;
    let url = cluster.database_url.clone();
    let options = PgOptions {
        connections: cluster.connections,
        answer_timeout: cluster.answer_timeout,
        tls: tls.clone(),
        ..PgOptions::default()
    };
    let db = tokio::time::timeout(
        JOIN_WITHIN,
        tokio::task::spawn_blocking(move || PgDb::connect(&url, &options)),
    )
    .await
    .context("opening the session store on PostgreSQL: no answer in time")?
    .context("opening the session store on PostgreSQL")??;
    tracing::info!(
        node = %cluster.node,
        tls = tls.is_some(),
        "joined the cluster; the session store is on PostgreSQL"
    );
    Ok(Joined { node, db, tls })
}

/// The bounded part of the shutdown: the HTTP gateway, the control socket and the supervisor
/// stop side by side (the database commits what is queued once the supervisor is done), all
/// before `deadline`.
/// Returns what was stuck (empty: everything closed and every record is saved).
async fn shutdown(
    deadline: Instant,
    bound: Duration,
    supervisor: &Supervisor,
    db: &Store,
    http: Option<JoinHandle<Result<(), warden_http::ServeError>>>,
    mut served: JoinHandle<()>,
) -> Vec<String> {
    let late = |what: &str| format!("{what} did not finish within {} s", bound.as_secs_f64());
    let http_stopped = async {
        let mut http = http?;
        match tokio::time::timeout_at(deadline, &mut http).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => {
                tracing::error!("HTTP gateway: {e}");
                None
            }
            Ok(Err(e)) => {
                tracing::error!("HTTP gateway task: {e}");
                None
            }
            Err(_) => {
                http.abort();
                Some(late("the HTTP gateway"))
            }
        }
    };
    let socket_stopped = async {
        match tokio::time::timeout_at(deadline, &mut served).await {
            Ok(_) => None,
            Err(_) => {
                served.abort();
                Some(late("the control socket"))
            }
        }
    };
    let supervisor_stopped = async {
        let mut stuck = Vec::new();
        match tokio::time::timeout_at(deadline, supervisor.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(warden_core::Error::Unavailable(what))) => stuck.push(what),
            Ok(Err(e)) => stuck.push(e.to_string()),
            Err(_) => stuck.push(late(
                "the supervisor's shutdown (closing sessions, saving records)",
            )),
        }
        // Then a barrier: whatever the link queued (credentials, keys) is committed too.
        if Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, db.sync()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => stuck.push(format!("the session database: {e}")),
                Err(_) => stuck.push(late("committing the session database's queued writes")),
            }
        }
        stuck
    };
    let (http, socket, mut stuck) = tokio::join!(http_stopped, socket_stopped, supervisor_stopped);
    stuck.extend(socket);
    stuck.extend(http);
    stuck
}

/// Ends the process after `after`, from a plain thread, if it is still running then: the last
/// resort when the async runtime itself is wedged and cannot honour its own deadlines.
fn backstop(after: Duration) {
    let spawned = std::thread::Builder::new()
        .name("warden-shutdown-backstop".into())
        .spawn(move || {
            std::thread::sleep(after);
            eprintln!(
                "warden: the shutdown is still stuck after {} s; exiting now",
                after.as_secs_f64()
            );
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        tracing::warn!("no shutdown backstop thread: {e}");
    }
}

/// SIGHUP: re-reads the file and applies `[policy]`, `[janitor]`, `[admission]` and the log
/// level. Live sessions are not touched; an invalid file changes nothing.
async fn reload(
    config_path: &Path,
    explicit: bool,
    log_flag: Option<&str>,
    logging: &Logging,
    supervisor: &Supervisor,
) {
    systemd::reloading();
    match config::load(config_path, explicit) {
        Err(e) => tracing::error!("SIGHUP: configuration not reloaded: {e}"),
        Ok(loaded) => {
            let config = loaded.config;
            let applied = supervisor
                .reload(config.policy, config.janitor, config.admission)
                .await;
            let filter = logging::choose_filter(log_flag, &config.daemon.log_level);
            match (applied, logging.set_filter(&filter)) {
                (Ok(()), Ok(())) => {
                    tracing::info!(log_level = %filter, "SIGHUP: configuration reloaded")
                }
                (Err(e), _) => tracing::error!("SIGHUP: configuration not applied: {e}"),
                (_, Err(e)) => tracing::error!("SIGHUP: log level not changed: {e:#}"),
            }
        }
    }
    systemd::ready(&systemd::summary(&supervisor.list()));
}

/// Takes an exclusive lock on `<sessions_dir>/.warden.lock` for the life of the daemon.
fn lock_sessions_dir(sessions_dir: &Path) -> anyhow::Result<std::fs::File> {
    use fs4::fs_std::FileExt;
    std::fs::create_dir_all(sessions_dir)
        .with_context(|| format!("cannot create {}", sessions_dir.display()))?;
    let path = sessions_dir.join(".warden.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match FileExt::try_lock_exclusive(&file) {
        Ok(true) => Ok(file),
        Ok(false) => anyhow::bail!(
            "another warden daemon is already running on {}; stop it first",
            sessions_dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::{
        Connection, LifecycleEvent, LifecycleSink, Link, LinkError, OpenOptions, Outgoing,
        SendOutcome,
    };
    use warden_core::{Token, link::SendFuture};

    /// Connections that log in at once and never finish closing.
    struct Stuck;

    struct StuckConnection(#[allow(dead_code)] LifecycleSink);

    #[async_trait::async_trait]
    impl Link for Stuck {
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
            Ok(Box::new(StuckConnection(sink)))
        }

        async fn delete_credentials(&self, _token: &Token) -> Result<(), LinkError> {
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl Connection for StuckConnection {
        async fn close(&mut self) {
            std::future::pending::<()>().await;
        }

        fn send(&self, _message: Outgoing) -> SendFuture<Result<SendOutcome, LinkError>> {
            Box::pin(async { Err(LinkError::NotConnected) })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_shutdown_is_bounded_and_says_what_was_stuck() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_in(dir.path()).unwrap();
        let config = SupervisorConfig {
            close_timeout: Duration::from_millis(100),
            shutdown_timeout: Duration::from_millis(300),
            store: Some(db.clone().into()),
            ..SupervisorConfig::new(dir.path())
        };
        let (supervisor, _) = Supervisor::start(config, Arc::new(Stuck)).await.unwrap();
        supervisor.create(None, Some("shop1")).await.unwrap();
        supervisor
            .start_session("shop1", OpenOptions::default())
            .await
            .unwrap();
        let mut events = supervisor.subscribe();
        while supervisor.status("shop1").unwrap().state != warden_core::SessionState::Connected {
            let _ = events.recv().await;
        }
        let never = tokio::spawn(std::future::pending::<()>());
        let bound = Duration::from_millis(300) + SHUTDOWN_MARGIN;
        let started = Instant::now();
        let store = Store::Local(db.clone());
        let stuck = shutdown(started + bound, bound, &supervisor, &store, None, never).await;
        assert!(started.elapsed() <= bound + Duration::from_millis(200));
        assert!(!stuck.is_empty());
        let said = stuck.join("; ");
        // The supervisor bounded the close itself; the control socket never finished.
        assert_eq!(
            said, "the control socket did not finish within 2.3 s",
            "{said}"
        );
    }
}
