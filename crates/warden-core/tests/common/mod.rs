//! Helpers shared by the supervisor's integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use warden_core::scripted::{EventWaiter, Script, ScriptedLink};
use warden_core::{
    AdmissionConfig, PolicyConfig, SessionInfo, SessionState, Supervisor, SupervisorConfig,
};
use warden_store::Db;

/// A config for tests: no jitter, admission out of the way, room for many events, and a
/// session database in memory whose calls run inline (a commit on another thread would let
/// tokio's paused clock jump while a test waits for it).
pub fn config(dir: &std::path::Path) -> SupervisorConfig {
    let mut config = SupervisorConfig::new(dir).with_db(Db::in_memory().expect("database"));
    config.policy = PolicyConfig {
        jitter: 0.0,
        ..PolicyConfig::default()
    };
    config.admission = AdmissionConfig {
        max_in_flight: 100_000,
        per_second: 1_000_000.0,
        burst: 100_000,
    };
    config.event_capacity = 1 << 16;
    config
}

/// The event waiter, on tokio's (paused) clock: a day of virtual time per wait.
pub type Events = EventWaiter;

/// Events of `supervisor` from now on.
pub fn events_of(supervisor: &Supervisor) -> Events {
    EventWaiter::new(supervisor, Duration::from_secs(24 * 3600))
}

/// A running supervisor with a scripted link, its event stream and its folder.
pub struct Harness {
    pub supervisor: Supervisor,
    pub link: ScriptedLink,
    pub events: Events,
    pub dir: tempfile::TempDir,
    /// The session database (what a restarted supervisor finds again).
    pub db: Db,
}

impl Harness {
    /// A supervisor whose connections play `default` unless a token has its own script.
    pub async fn new(default: Script) -> Self {
        Self::with_config(default, config).await
    }

    /// Same, with a config adjusted by `adjust`.
    pub async fn with_config(
        default: Script,
        adjust: impl FnOnce(&std::path::Path) -> SupervisorConfig,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let link = ScriptedLink::new(default);
        let config = adjust(dir.path());
        let db = config
            .store
            .as_ref()
            .and_then(|store| store.local().cloned())
            .expect("the test config has a local database");
        let (supervisor, _) = Supervisor::start(config, Arc::new(link.clone()))
            .await
            .expect("supervisor starts");
        let events = events_of(&supervisor);
        Self {
            supervisor,
            link,
            events,
            dir,
            db,
        }
    }

    /// Creates `token` with `scripts` queued, and starts it.
    pub async fn run(&mut self, token: &str, scripts: impl IntoIterator<Item = Script>) {
        self.link.script(token, scripts);
        self.supervisor
            .create(None, Some(token))
            .await
            .expect("create");
        self.supervisor
            .start_session(token, Default::default())
            .await
            .expect("start");
    }

    /// Waits for the next update of `token` matching `pred`.
    pub async fn wait(&mut self, token: &str, pred: impl Fn(&SessionInfo) -> bool) -> SessionInfo {
        self.events.wait(token, pred).await
    }

    /// Waits for `token` to reach `state`.
    pub async fn wait_state(&mut self, token: &str, state: SessionState) -> SessionInfo {
        self.events.state(token, state).await
    }
}

/// Seconds between consecutive connection opens.
pub fn gaps(opens: &[tokio::time::Instant]) -> Vec<u64> {
    opens.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect()
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}
