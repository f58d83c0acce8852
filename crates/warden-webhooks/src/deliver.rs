//! One webhook's delivery loop: reads what it has not done from the journal, sends each
//! session's events in order (sessions concurrently, up to `concurrency` requests at once),
//! retries per [`crate::retry`], and records its progress per session in the database after
//! each event: at least once across restarts.
//!
//! - **Bounded.** At most [`BUFFER`] events are read ahead; past it, reading waits (the
//!   journal keeps the rest). A slow or dead receiver holds back only its own webhook, and
//!   within it only the sessions whose events wait on it.
//! - **Never the supervisor.** The loop only reads the journal; the supervisor never waits
//!   for it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use warden_store::{DbError, DeadLetter, JournalEntry, Store};

use crate::client::{self, Request};
use crate::config::{Target, WebhookConfig};
use crate::payload;
use crate::retry::{Backoff, Outcome, Verdict, verdict};
use crate::secret::Secret;
use crate::stats::Stats;

/// The most events one webhook reads ahead of its deliveries.
pub const BUFFER: usize = 4096;
/// How many of a session's earlier transitions a `session.status` event carries.
pub const RECENT: usize = 4;
/// The pause before trying a failed database call again.
const DB_RETRY: Duration = Duration::from_secs(1);

/// What a webhook is, once checked.
pub(crate) struct Hook {
    /// Its name (its identity in the database).
    pub name: String,
    /// Its configuration.
    pub config: WebhookConfig,
    /// Its URL, split.
    pub target: Target,
    /// Its signing key (`None`: unsigned).
    pub secret: Option<Secret>,
    /// Its counters.
    pub stats: Stats,
    /// The one session it serves (set through the API), or `None`: every session.
    pub only: Option<String>,
    /// Its kept connections.
    pub pool: client::Pool,
}

impl Hook {
    fn backoff(&self) -> Backoff {
        Backoff {
            max_attempts: self.config.max_attempts,
            base: self.config.backoff_base,
            cap: self.config.backoff_cap,
        }
    }

    /// One attempt to send `body` as event `id`, signed now.
    pub async fn attempt(&self, id: &str, body: &Bytes) -> Outcome {
        let now = unix_secs(SystemTime::now());
        let headers = payload::headers(id, now, body, self.secret.as_ref());
        client::post(
            &self.pool,
            Request {
                target: &self.target,
                headers: &headers,
                body: body.clone(),
                allow_private: self.config.allow_private,
                timeout: self.config.timeout,
            },
        )
        .await
    }
}

/// Asks a delivery loop to do something.
pub(crate) enum Command {
    /// Send everything from entry `from` on again.
    Replay {
        from: i64,
        done: oneshot::Sender<Result<(), DbError>>,
    },
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn since_millis(ms: i64) -> Duration {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    SystemTime::now().duration_since(at).unwrap_or_default()
}

/// Runs a database call until it works (the loop has nothing better to do meanwhile).
async fn persist<T, F, Fut>(what: &str, hook: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut logged = false;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) => {
                if !logged {
                    tracing::error!(hook, error = %e, "webhook: {what} failed; retrying");
                    logged = true;
                }
                tokio::time::sleep(DB_RETRY).await;
            }
        }
    }
}

/// Sends one event until it is delivered or given up on; returns its dead letter if it was.
async fn deliver(
    hook: Arc<Hook>,
    db: Store,
    identity: Arc<str>,
    entry: JournalEntry,
    slots: Arc<Semaphore>,
) -> (String, i64, Option<DeadLetter>) {
    let recent = if entry.kind == "session.status" {
        db.journal_before(entry.token.clone(), entry.seq, entry.kind.clone(), RECENT)
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let body = Bytes::from(payload::body(&entry, &recent));
    let id = payload::event_id(&identity, entry.seq);
    let backoff = hook.backoff();
    let mut attempts = 0;
    loop {
        let outcome = {
            let _slot = slots.acquire().await;
            attempts += 1;
            hook.attempt(&id, &body).await
        };
        match verdict(&outcome, attempts, &backoff, rand::random::<f64>()) {
            Verdict::Delivered => {
                hook.stats.delivered(since_millis(entry.at));
                return (entry.token, entry.seq, None);
            }
            Verdict::Retry(after) => {
                hook.stats
                    .retried
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if attempts == 1 {
                    tracing::warn!(
                        hook = %hook.name, event = %id, outcome = %outcome.text(),
                        "webhook delivery failed; retrying with backoff"
                    );
                }
                tokio::time::sleep(after).await;
            }
            Verdict::Dead(reason) => {
                hook.stats
                    .dead
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    hook = %hook.name, event = %id, %reason,
                    "webhook event given up on; it is in the dead letters (warden webhooks dead)"
                );
                let dead = DeadLetter {
                    hook: hook.name.clone(),
                    seq: entry.seq,
                    token: entry.token.clone(),
                    kind: entry.kind.clone(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                    reason,
                    attempts,
                    failed_at: unix_secs(SystemTime::now()).saturating_mul(1000),
                };
                return (entry.token, entry.seq, Some(dead));
            }
        }
    }
}

/// A delivery task that panicked: its event goes to the dead letters (from which it can be
/// redelivered), so that its session's next events go on.
fn panicked(hook: &Hook, identity: &str, entry: JournalEntry) -> (String, i64, Option<DeadLetter>) {
    let reason = "the delivery panicked (a bug in warden)".to_owned();
    tracing::error!(
        hook = %hook.name, event = %payload::event_id(identity, entry.seq), %reason,
        "webhook event given up on; it is in the dead letters (warden webhooks dead)"
    );
    hook.stats
        .dead
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dead = DeadLetter {
        hook: hook.name.clone(),
        seq: entry.seq,
        token: entry.token.clone(),
        kind: entry.kind.clone(),
        body: payload::body(&entry, &[]),
        reason,
        attempts: 0,
        failed_at: unix_secs(SystemTime::now()).saturating_mul(1000),
    };
    (entry.token, entry.seq, Some(dead))
}

/// Whether `entry` is its session's deletion.
fn is_deletion(entry: &JournalEntry) -> bool {
    entry.kind == "session.status"
        && serde_json::from_str::<serde_json::Value>(&entry.data)
            .is_ok_and(|d| d["to"] == "deleted")
}

/// What the loop holds: each session's events read and not yet done.
#[derive(Default)]
struct Queues {
    waiting: HashMap<String, VecDeque<JournalEntry>>,
    busy: HashSet<String>,
    len: usize,
}

/// The delivery loop of `hook`; ends when `commands` closes.
pub(crate) async fn run(
    hook: Arc<Hook>,
    db: Store,
    identity: Arc<str>,
    mut head: watch::Receiver<i64>,
    mut commands: mpsc::Receiver<Command>,
) {
    let name = hook.name.clone();
    let slots = Arc::new(Semaphore::new(hook.config.concurrency));
    let mut queues = Queues::default();
    let mut running: JoinSet<(String, i64, Option<DeadLetter>)> = JoinSet::new();
    // What each delivery task carries, for the one that panics.
    let mut in_flight: HashMap<tokio::task::Id, JournalEntry> = HashMap::new();
    let mut scan = 0i64;
    let mut unread = true;
    // A session's own webhook ends after sending the session's deletion (its configuration
    // went with the session).
    let mut last_seq: Option<i64> = None;
    loop {
        if unread && queues.len < BUFFER {
            head.borrow_and_update();
            let want = BUFFER - queues.len;
            let rows = persist("reading the journal", &name, || {
                db.webhook_pending(name.clone(), hook.only.clone(), scan, want)
            })
            .await;
            unread = rows.len() == want;
            let mut skipped: HashMap<String, i64> = HashMap::new();
            for row in rows {
                scan = scan.max(row.seq);
                let idle = !queues.busy.contains(&row.token)
                    && queues
                        .waiting
                        .get(&row.token)
                        .is_none_or(VecDeque::is_empty);
                if hook.only.is_some() && is_deletion(&row) {
                    last_seq = Some(row.seq);
                }
                if hook.config.wants(&row.kind) {
                    skipped.remove(&row.token);
                    queues.len += 1;
                    queues
                        .waiting
                        .entry(row.token.clone())
                        .or_default()
                        .push_back(row);
                } else if idle {
                    skipped.insert(row.token.clone(), row.seq);
                }
            }
            if !skipped.is_empty() {
                let done: Vec<(String, i64)> = skipped.into_iter().collect();
                persist("skipping unwanted events", &name, || {
                    db.webhook_skip(name.clone(), done.clone())
                })
                .await;
            }
        }
        for (token, waiting) in &mut queues.waiting {
            if queues.busy.contains(token) {
                continue;
            }
            if let Some(entry) = waiting.front().cloned() {
                queues.busy.insert(token.clone());
                let task = running.spawn(deliver(
                    hook.clone(),
                    db.clone(),
                    identity.clone(),
                    entry.clone(),
                    slots.clone(),
                ));
                in_flight.insert(task.id(), entry);
            }
        }
        queues
            .waiting
            .retain(|token, w| !w.is_empty() || queues.busy.contains(token));
        hook.stats.queued.store(
            i64::try_from(queues.len).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        tokio::select! {
            Some(first) = running.join_next_with_id() => {
                // Every delivery finished by now is recorded in one commit: under a storm of
                // writes, a commit per event would hold the whole loop back.
                let finished: Vec<(String, i64, Option<DeadLetter>)> = std::iter::once(first)
                    .chain(std::iter::from_fn(|| running.try_join_next_with_id()))
                    .filter_map(|joined| match joined {
                        Ok((id, done)) => {
                            in_flight.remove(&id);
                            Some(done)
                        }
                        Err(e) => in_flight
                            .remove(&e.id())
                            .map(|entry| panicked(&hook, &identity, entry)),
                    })
                    .collect();
                if let Some((_, _, dead)) = finished.iter().find(|(_, seq, _)| last_seq == Some(*seq)) {
                    match dead {
                        // Nothing would be left to redeliver it through.
                        Some(dead) => tracing::warn!(
                            hook = %name,
                            reason = %dead.reason,
                            "the session's deletion could not be delivered; its webhook ends with it"
                        ),
                        None => {
                            tracing::info!(hook = %name, "the session was deleted; its webhook ends");
                        }
                    }
                    persist("removing the webhook", &name, || {
                        db.remove_session_webhook(name.clone())
                    })
                    .await;
                    return;
                }
                persist("recording deliveries", &name, || {
                    db.webhook_advance_all(name.clone(), finished.clone())
                })
                .await;
                for (token, seq, _) in finished {
                    queues.busy.remove(&token);
                    hook.stats.done.send_modify(|n| *n += 1);
                    if let Some(waiting) = queues.waiting.get_mut(&token)
                        && waiting.front().is_some_and(|e| e.seq == seq)
                    {
                        waiting.pop_front();
                        queues.len -= 1;
                    }
                }
            }
            changed = head.changed(), if !unread => {
                if changed.is_err() {
                    // The supervisor is gone; finish what is running, record it, then stop.
                    let mut finished = Vec::new();
                    while let Some(joined) = running.join_next().await {
                        finished.extend(joined.ok());
                    }
                    if !finished.is_empty() {
                        let _ = db.webhook_advance_all(name.clone(), finished).await;
                    }
                    return;
                }
                unread = true;
            }
            command = commands.recv() => match command {
                None => return,
                Some(Command::Replay { from, done }) => {
                    let result = db.webhook_rewind(name.clone(), from).await;
                    if result.is_ok() {
                        // Keep only the events in flight; read everything else again.
                        for (token, waiting) in &mut queues.waiting {
                            let keep = usize::from(queues.busy.contains(token)).min(waiting.len());
                            waiting.truncate(keep);
                        }
                        queues.len = queues.waiting.values().map(VecDeque::len).sum();
                        scan = from.saturating_sub(1).max(0);
                        unread = true;
                        tracing::info!(hook = %name, from, "webhook replay from entry {from}");
                    }
                    let _ = done.send(result);
                }
            },
        }
    }
}
