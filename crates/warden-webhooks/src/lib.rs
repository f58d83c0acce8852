//! # warden-webhooks: events out of the journal, to HTTP receivers
//!
//! Each `[[webhooks]]` entry of `daemon.toml` gets one delivery loop ([`deliver`]) that reads
//! the session journal (`warden_store::journal`) and POSTs every event it wants:
//!
//! - **Standard Webhooks.** Headers `webhook-id` (stable across retries and replays:
//!   `evt_<database identity>_<seq>`), `webhook-timestamp` and `webhook-signature`
//!   (`v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`, keyed with the secret's
//!   decoded bytes). The body is `{"type", "timestamp", "data"}`; `data.token` names the
//!   session. No API key or credential is ever in it. There is no default secret.
//! - **At least once, across restarts.** Progress is kept per webhook and session in the
//!   database, after each event: a kill -9 sends again at most what was in flight.
//! - **Ordered per session, concurrent across sessions**, and a slow or dead receiver holds
//!   back nothing but its own webhook's events.
//! - **Retries** ([`retry`]): exponential backoff with jitter, a timeout per request, no
//!   retry on 4xx but 408 and 429 (whose `Retry-After` is honoured), then the dead letters,
//!   which can be listed and delivered again; a replay sends again from any entry.
//! - **SSRF guard** ([`guard`]): loopback, private and link-local addresses are refused
//!   unless `allow_private = true`.

pub mod client;
pub mod config;
mod deliver;
pub mod guard;
pub mod payload;
#[cfg(feature = "receiver")]
pub mod receiver;
pub mod retry;
pub mod secret;
pub mod sign;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use warden_store::{DbError, DeadLetter, Store};

pub use config::{ConfigError, EVENT_TYPES, Target, WebhookConfig, check_all};
pub use deliver::BUFFER;
pub use retry::Outcome;

use deliver::{Command, Hook};

/// What went wrong with a webhook request of an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// No webhook has that name.
    #[error("no webhook is named {0:?}; `warden webhooks` lists them")]
    Unknown(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The delivery loop has stopped (the daemon is stopping).
    #[error("the webhook's delivery loop has stopped")]
    Stopped,
    /// A configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// One webhook as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookInfo {
    /// Its name.
    pub name: String,
    /// The one session it serves (set through the API), or `None`: `daemon.toml`'s.
    pub token: Option<String>,
    /// Its URL without the query.
    pub url: String,
    /// The event types it gets.
    pub events: Vec<String>,
    /// Whether its deliveries are signed.
    pub signed: bool,
    /// Whether it may reach private addresses.
    pub allow_private: bool,
    /// Events delivered since the daemon started.
    pub delivered: u64,
    /// Attempts retried since the daemon started.
    pub retried: u64,
    /// Events given up on since the daemon started.
    pub dead: u64,
    /// Events read and not yet done.
    pub queued: u64,
}

fn info(r: &Running) -> HookInfo {
    let h = &r.hook;
    HookInfo {
        name: h.name.clone(),
        token: h.only.clone(),
        url: h.config.url.split('?').next().unwrap_or("").to_owned(),
        events: h.config.events.clone(),
        signed: h.secret.is_some(),
        allow_private: h.config.allow_private,
        delivered: h.stats.delivered.load(Ordering::Relaxed),
        retried: h.stats.retried.load(Ordering::Relaxed),
        dead: h.stats.dead.load(Ordering::Relaxed),
        queued: u64::try_from(h.stats.queued.load(Ordering::Relaxed)).unwrap_or(0),
    }
}

/// What a redelivery of dead letters did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redelivered {
    /// Delivered now (and out of the dead letters).
    pub delivered: Vec<i64>,
    /// Failed again (and back in the dead letters, with the new reason).
    pub failed: Vec<(i64, String)>,
}

struct Running {
    hook: Arc<Hook>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every webhook's delivery loop: `daemon.toml`'s, and those set for one session through the
/// API (kept in the database). Dropping it stops them (what was in flight is sent again
/// after a restart).
pub struct Webhooks {
    db: Store,
    identity: Arc<str>,
    head: watch::Receiver<i64>,
    hooks: std::sync::Mutex<Vec<Arc<Running>>>,
}

/// The name of webhook `name` of session `token`.
pub fn session_hook_name(token: &str, name: &str) -> String {
    format!("{token}:{name}")
}

impl Webhooks {
    /// Checks `configs` and starts a delivery loop for each, and for each session's webhook
    /// kept in `db`, reading `db`'s journal and woken by `head` (the number of the last
    /// journal entry committed). A webhook seen for the first time starts at the journal's
    /// current end; one seen before resumes where it got to.
    pub async fn start(
        configs: &[WebhookConfig],
        db: impl Into<Store>,
        head: watch::Receiver<i64>,
    ) -> Result<Self, WebhookError> {
        check_all(configs)?;
        let db: Store = db.into();
        let candidate = format!("{:016x}", rand::random::<u64>());
        let identity: Arc<str> = db.identity(candidate).await?.into();
        let webhooks = Self {
            db,
            identity,
            head,
            hooks: std::sync::Mutex::new(Vec::new()),
        };
        for config in configs {
            let _ = webhooks.launch(config.name(), config.clone(), None).await?;
        }
        for (name, token, text) in webhooks.db.session_webhooks().await? {
            match serde_json::from_str::<WebhookConfig>(&text) {
                Ok(config) => {
                    let _ = webhooks.launch(name, config, Some(token)).await?;
                }
                Err(e) => {
                    tracing::error!(hook = %name, error = %e, "a stored session webhook cannot be read; it is not started")
                }
            }
        }
        Ok(webhooks)
    }

    /// Registers and starts one webhook (replacing a running one of the same name).
    async fn launch(
        &self,
        name: String,
        config: WebhookConfig,
        only: Option<String>,
    ) -> Result<HookInfo, WebhookError> {
        let secret = config.check()?;
        let target = Target::parse(&config.url).expect("checked above");
        // Registered before it runs: a new webhook sends what happens from here.
        self.db.webhook_register(name.clone()).await?;
        let concurrency = config.concurrency;
        let hook = Arc::new(Hook {
            name: name.clone(),
            config,
            target,
            secret,
            stats: Default::default(),
            only,
            pool: client::Pool::new(concurrency),
        });
        let (commands, receiver) = mpsc::channel(8);
        let task = tokio::spawn(deliver::run(
            hook.clone(),
            self.db.clone(),
            self.identity.clone(),
            self.head.clone(),
            receiver,
        ));
        tracing::info!(hook = %hook.name, session = ?hook.only, events = ?hook.config.events, signed = hook.secret.is_some(), "webhook started");
        let running = Arc::new(Running {
            hook,
            commands,
            task,
        });
        let info = info(&running);
        let mut hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        hooks.retain(|r| r.hook.name != name);
        hooks.push(running);
        Ok(info)
    }

    /// Sets webhook `config` for session `token` alone (replacing one of the same name): kept
    /// in the database (committed before this returns) and started. Its name is
    /// `<token>:<name>`. The caller checks that the session exists. Deleting the session
    /// removes it: it sends the deletion, then ends.
    pub async fn set_for_session(
        &self,
        token: &str,
        config: WebhookConfig,
    ) -> Result<HookInfo, WebhookError> {
        config.check()?;
        let name = session_hook_name(token, &config.name());
        let text = serde_json::to_string(&config).map_err(|e| {
            WebhookError::Db(DbError::Corrupt(format!("cannot encode the webhook: {e}")))
        })?;
        self.db
            .put_session_webhook(name.clone(), token.to_owned(), text)
            .await?;
        self.launch(name, config, Some(token.to_owned())).await
    }

    /// Removes webhook `hook` of a session (its name as listed): stopped, and gone from the
    /// database with its progress and dead letters.
    pub async fn remove_for_session(&self, hook: &str) -> Result<(), WebhookError> {
        let running = self.find(hook)?;
        if running.hook.only.is_none() {
            return Err(WebhookError::Config(ConfigError::Range {
                name: hook.to_owned(),
                message: "it is set in daemon.toml; remove it there".into(),
            }));
        }
        self.db.remove_session_webhook(hook.to_owned()).await?;
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| r.hook.name != hook);
        Ok(())
    }

    fn find(&self, name: &str) -> Result<Arc<Running>, WebhookError> {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|r| r.hook.name == name)
            .cloned()
            .ok_or_else(|| WebhookError::Unknown(name.to_owned()))
    }

    /// Every webhook with its counters.
    pub fn list(&self) -> Vec<HookInfo> {
        let mut hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        // A session's webhook ends by itself after sending the session's deletion.
        hooks.retain(|r| !r.task.is_finished());
        hooks.iter().map(|r| info(r)).collect()
    }

    /// The dead letters of `hook` (of every webhook with `None`), oldest first.
    pub async fn dead_letters(
        &self,
        hook: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, WebhookError> {
        if let Some(name) = hook {
            self.find(name)?;
        }
        Ok(self.db.dead_letters(hook.map(str::to_owned), limit).await?)
    }

    /// Sends `hook`'s dead letters again (only entry `seq`'s, if given), one attempt each.
    /// Each one delivered leaves the dead letters; each one that fails again goes back with
    /// its new reason.
    pub async fn redeliver(
        &self,
        hook: &str,
        seq: Option<i64>,
    ) -> Result<Redelivered, WebhookError> {
        let running = self.find(hook)?;
        let taken = self.db.take_dead_letters(hook.to_owned(), seq).await?;
        let mut report = Redelivered::default();
        for mut dead in taken {
            let id = payload::event_id(&self.identity, dead.seq);
            let body = Bytes::from(dead.body.clone());
            let outcome = running.hook.attempt(&id, &body).await;
            if matches!(outcome, Outcome::Status { code, .. } if (200..300).contains(&code)) {
                running.hook.stats.delivered(std::time::Duration::ZERO);
                report.delivered.push(dead.seq);
                continue;
            }
            dead.reason = format!("redelivery: {}", outcome.text());
            dead.attempts += 1;
            report.failed.push((dead.seq, dead.reason.clone()));
            let (token, seq) = (dead.token.clone(), dead.seq);
            self.db
                .webhook_advance(hook.to_owned(), token, seq, Some(dead))
                .await?;
        }
        Ok(report)
    }

    /// Sends every event of `hook` from journal entry `from` on again (those the journal
    /// still holds), in order per session.
    pub async fn replay(&self, hook: &str, from: i64) -> Result<(), WebhookError> {
        let running = self.find(hook)?;
        let (done, answer) = oneshot::channel();
        running
            .commands
            .send(Command::Replay { from, done })
            .await
            .map_err(|_| WebhookError::Stopped)?;
        answer.await.map_err(|_| WebhookError::Stopped)??;
        Ok(())
    }

    /// Sends a `webhook.test` event to `hook` now, once, and says how it went.
    pub async fn test(&self, hook: &str) -> Result<Outcome, WebhookError> {
        let running = self.find(hook)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
        let id = format!("evt_{}_test_{ms}", self.identity);
        let body = Bytes::from(payload::test_body(hook, ms));
        Ok(running.hook.attempt(&id, &body).await)
    }

    /// How many events `hook` has done (delivered or given up on, and recorded) since it
    /// started; it changes after each one.
    pub fn done(&self, hook: &str) -> Result<watch::Receiver<u64>, WebhookError> {
        Ok(self.find(hook)?.hook.stats.done.subscribe())
    }

    /// Appends the webhooks' metrics to a Prometheus exposition.
    pub fn render_metrics(&self, out: &mut String) {
        if self
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            return;
        }
        let hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let pairs: Vec<(&str, &stats::Stats)> = hooks
            .iter()
            .map(|r| (r.hook.name.as_str(), &r.hook.stats))
            .collect();
        stats::render(&pairs, out);
    }
}
