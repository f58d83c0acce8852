//! `warden serve`: the daemon. One main loop over signals and timers; the control socket and the
//! supervisor run beside it; shutdown is a bounded protocol.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use warden_control::{ControlServer, ServerConfig};
use warden_core::{Supervisor, SupervisorConfig};
use warden_whatsapp::WaLink;

use crate::config::{self, Config};
use crate::logging::{self, Logging};
use crate::systemd;

/// `sysexits.h`'s EX_CONFIG: the configuration is wrong; systemd should not restart us.
pub const EX_CONFIG: u8 = 78;

/// How often the systemd status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);

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
    let link = match WaLink::new(config.whatsapp.clone(), &config.daemon.sessions_dir) {
        Ok(link) => link,
        Err(e) => {
            tracing::error!("invalid [whatsapp] configuration: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    match serve(
        config,
        config_path,
        explicit,
        log_flag,
        &logging,
        Arc::new(link),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("warden stopped: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: Config,
    config_path: &Path,
    explicit: bool,
    log_flag: Option<&str>,
    logging: &Logging,
    link: Arc<WaLink>,
) -> anyhow::Result<()> {
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
        close_timeout: config.daemon.close_timeout,
        shutdown_timeout: config.daemon.shutdown_timeout,
        ..SupervisorConfig::new(&config.daemon.sessions_dir)
    };
    let (supervisor, report) = Supervisor::start(supervisor_config, link)
        .await
        .context("cannot start the supervisor")?;
    for problem in &report.problems {
        tracing::warn!("unreadable session entry left alone: {problem}");
    }

    let metrics = Arc::new(warden_http::Metrics::new());
    let observer_metrics = metrics.clone();
    let server = server.with_observer(Arc::new(move |op: &str, ok: bool| {
        observer_metrics.record_socket_request(op, ok)
    }));
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server.run(supervisor.clone(), async {
        let _ = server_stopped.await;
    }));
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http = if let Some(listener) = http_listener {
        Some(tokio::spawn(warden_http::serve(
            listener,
            supervisor.clone(),
            config.http.clone(),
            metrics,
            async {
                let _ = http_stopped.await;
            },
        )))
    } else {
        None
    };
    let summary = systemd::summary(&supervisor.list());
    tracing::info!(
        sessions_dir = %config.daemon.sessions_dir.display(),
        loaded = report.loaded,
        "warden is ready ({summary})"
    );
    systemd::ready(&summary);

    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    let watchdog_every = systemd::watchdog_interval();
    let mut watchdog_tick =
        tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
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
    let _ = stop_server.send(());
    let _ = stop_http.send(());
    if let Some(http) = http {
        match http.await {
            Ok(Err(e)) => tracing::error!("HTTP gateway: {e}"),
            Err(e) => tracing::error!("HTTP gateway task: {e}"),
            Ok(Ok(())) => {}
        }
    }
    let stopped = supervisor.shutdown().await;
    let _ = served.await;
    stopped.context("graceful shutdown")?;
    tracing::info!("warden stopped: every session closed, every record flushed");
    Ok(())
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
