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
use warden_store::{Db, DbError, DeadLetter};

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

/// Every webhook's delivery loop. Dropping it stops them (what was in flight is sent again
/// after a restart).
pub struct Webhooks {
    db: Db,
    identity: Arc<str>,
    hooks: Vec<Running>,
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        for running in &self.hooks {
            running.task.abort();
        }
    }
}

impl Webhooks {
    /// Checks `configs` and starts a delivery loop for each, reading `db`'s journal and
    /// woken by `head` (the number of the last journal entry committed). A webhook seen for
    /// the first time starts at the journal's current end; one seen before resumes where it
    /// got to.
    pub async fn start(
        configs: &[WebhookConfig],
        db: Db,
        head: watch::Receiver<i64>,
    ) -> Result<Self, WebhookError> {
        check_all(configs)?;
        let candidate = format!("{:016x}", rand::random::<u64>());
        let identity: Arc<str> = db.identity(candidate).await?.into();
        let mut hooks = Vec::new();
        for config in configs {
            let secret = config.check()?;
            // Registered before `start` returns: a new webhook sends what happens from here.
            db.webhook_register(config.name()).await?;
            let target = Target::parse(&config.url).expect("checked above");
            let hook = Arc::new(Hook {
                name: config.name(),
                config: config.clone(),
                target,
                secret,
                stats: Default::default(),
            });
            let (commands, receiver) = mpsc::channel(8);
            let task = tokio::spawn(deliver::run(
                hook.clone(),
                db.clone(),
                identity.clone(),
                head.clone(),
                receiver,
            ));
            tracing::info!(hook = %hook.name, events = ?config.events, signed = hook.secret.is_some(), "webhook started");
            hooks.push(Running {
                hook,
                commands,
                task,
            });
        }
        Ok(Self {
            db,
            identity,
            hooks,
        })
    }

    fn find(&self, name: &str) -> Result<&Running, WebhookError> {
        self.hooks
            .iter()
            .find(|r| r.hook.name == name)
            .ok_or_else(|| WebhookError::Unknown(name.to_owned()))
    }

    /// Every webhook with its counters.
    pub fn list(&self) -> Vec<HookInfo> {
        self.hooks
            .iter()
            .map(|r| {
                let h = &r.hook;
                HookInfo {
                    name: h.name.clone(),
                    url: h.config.url.split('?').next().unwrap_or("").to_owned(),
                    events: h.config.events.clone(),
                    signed: h.secret.is_some(),
                    allow_private: h.config.allow_private,
                    delivered: h.stats.delivered.load(Ordering::Relaxed),
                    retried: h.stats.retried.load(Ordering::Relaxed),
                    dead: h.stats.dead.load(Ordering::Relaxed),
                    queued: u64::try_from(h.stats.queued.load(Ordering::Relaxed)).unwrap_or(0),
                }
            })
            .collect()
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
        if self.hooks.is_empty() {
            return;
        }
        let pairs: Vec<(&str, &stats::Stats)> = self
            .hooks
            .iter()
            .map(|r| (r.hook.name.as_str(), &r.hook.stats))
            .collect();
        stats::render(&pairs, out);
    }
}
