//! The session store: every session's record, in the shared session database
//! ([`warden_store::Db`]), written through one writer task.
//!
//! - **Committed before acknowledged.** The supervisor marks a record dirty; the writer task
//!   takes every dirty record at once and commits them in one transaction (group commit).
//!   [`StoreWriter::flush`] resolves once everything marked before it is committed, and the
//!   [`Supervisor`](crate::Supervisor) handle awaits it before answering any operation.
//! - **Bounded.** At most one pending change per session: a newer change of the same session
//!   replaces the older one, so the writer's backlog never exceeds the number of sessions.
//!   Journal entries ([`crate::journal`]) ride the same commits, in order, at most
//!   [`JOURNAL_QUEUE`] waiting (past it they are dropped and counted).
//! - **Failures are retried** with backoff (100 ms doubling to 30 s), logged once when writes
//!   start failing and once when they recover, never once per try.
//! - **A session this node no longer holds** (on a cluster's store, its lease moved on: the
//!   commit is refused whole, naming it) has its pending changes dropped, never retried, and
//!   the rest is committed at once without it. An operation on that session (start, stop,
//!   delete...) whose change was dropped is answered with the refusal
//!   ([`StoreWriter::refusal_since`]), not with success; the operations on no one session
//!   (reap, reload) answer as before.
//! - **Upgrade.** [`import_legacy_records`] moves `sessions/<token>/session.toml` files written by
//!   earlier releases into the database, deleting each file only after its row is committed.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use warden_store::{JournalChange, NewJournalEntry, RecordChange, Store};

use crate::error::StoreError;
use crate::journal::JournalConfig;
use crate::proxy::ProxyUrl;
use crate::state::{Counters, Desired, LastDisconnect, SessionState};
use crate::token::Token;

/// The file name of a session's record in the folders of earlier releases.
pub const RECORD_FILE: &str = "session.toml";
/// The credentials file of earlier releases; a folder that still has one was not imported.
const LEGACY_DB_FILE: &str = "session.db";
/// The lock file of earlier releases.
const LEGACY_LOCK_FILE: &str = "lock";

/// What the store keeps about one session (stored as TOML text, as `session.toml` was).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's human name.
    pub name: String,
    /// When it was created.
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
    /// Whether the operator wants it running.
    pub desired: Desired,
    /// The last state recorded.
    pub state: SessionState,
    /// Why it is in that state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The linked account (JID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jid: Option<String>,
    /// The linked account's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// When a temporary ban ends.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub banned_until: Option<SystemTime>,
    /// Reconnect attempts counted so far (they survive a daemon restart).
    #[serde(default)]
    pub attempts: u32,
    /// Lifetime counters.
    #[serde(default)]
    pub counters: Counters,
    /// The proxy every connection of this session goes through (the link's default when
    /// none). Stored whole, password included: the database file is mode 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyUrl>,
    /// Why its last connection ended, and what followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_disconnect: Option<LastDisconnect>,
}

impl SessionRecord {
    /// A fingerprint of the record, to skip writes that would change nothing.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }

    /// The record of a session created now as `token`, named `name` (the token when none or
    /// blank), connecting through `proxy`.
    pub(crate) fn created(name: Option<String>, token: &Token, proxy: Option<ProxyUrl>) -> Self {
        let name = name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| token.to_string());
        Self {
            proxy,
            ..Self::new(name, SystemTime::now())
        }
    }

    /// A record for a session just created.
    pub fn new(name: String, created_at: SystemTime) -> Self {
        Self {
            name,
            created_at,
            desired: Desired::Stopped,
            state: SessionState::Stopped,
            reason: None,
            jid: None,
            account_name: None,
            banned_until: None,
            attempts: 0,
            counters: Counters::default(),
            proxy: None,
            last_disconnect: None,
        }
    }
}

impl SessionRecord {
    /// The record as stored (TOML, the format of the old `session.toml`).
    pub fn encode(&self) -> Result<String, StoreError> {
        toml::to_string(self).map_err(|e| StoreError::Encode(e.to_string()))
    }

    /// A stored record of `token`. The error quotes the line at fault with any proxy
    /// password masked (it is logged).
    pub fn decode(token: &str, text: &str) -> Result<Self, StoreError> {
        toml::from_str(text).map_err(|e| StoreError::Record {
            token: token.to_owned(),
            message: crate::proxy::mask_passwords(e.to_string().trim_end()),
        })
    }
}

/// What [`load_all`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The readable records, ordered by token.
    pub records: Vec<(Token, SessionRecord)>,
    /// What could not be read; these rows and folders are left untouched.
    pub problems: Vec<StoreError>,
}

/// Reads every record in the database. Unreadable rows are reported, never deleted.
pub async fn load_all(db: &Store) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    for (name, text) in db.load_records().await? {
        let token = match Token::parse(&name) {
            Ok(token) => token,
            Err(reason) => {
                loaded.problems.push(StoreError::BadToken { name, reason });
                continue;
            }
        };
        match SessionRecord::decode(&name, &text) {
            Ok(record) => loaded.records.push((token, record)),
            Err(problem) => loaded.problems.push(problem),
        }
    }
    Ok(loaded)
}

/// What [`import_legacy_records`] did.
#[derive(Debug, Default)]
pub struct Imported {
    /// Sessions whose `session.toml` moved into the database.
    pub imported: Vec<Token>,
    /// Folders left on disk, with the reason.
    pub problems: Vec<StoreError>,
}

/// Moves each `sessions/<token>/session.toml` of an earlier release into the database. A file
/// is deleted only after its row is committed (a record already in the database wins); the
/// folder goes too once nothing else is in it. A folder whose credentials (`session.db`) are
/// still there was not imported by the link, and is left whole.
pub async fn import_legacy_records(db: &Store, sessions_dir: &Path) -> Imported {
    let mut done = Imported::default();
    if db.local().is_none() {
        return done; // a cluster's store: nothing of one machine's folders belongs in it
    }
    let Ok(entries) = std::fs::read_dir(sessions_dir) else {
        return done; // no folder, nothing to import
    };
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|p| p.join(RECORD_FILE).is_file())
        .collect();
    folders.sort();
    for dir in folders {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match import_one(db, &dir, &name).await {
            Ok(token) => done.imported.push(token),
            Err(problem) => done.problems.push(problem),
        }
    }
    done
}

async fn import_one(db: &Store, dir: &Path, name: &str) -> Result<Token, StoreError> {
    let token = Token::parse(name).map_err(|reason| StoreError::BadFolderName {
        path: dir.to_owned(),
        reason,
    })?;
    if dir.join(LEGACY_DB_FILE).exists() {
        return Err(StoreError::Io {
            path: dir.join(LEGACY_DB_FILE),
            message: "its credentials were not imported; the session is left on disk".into(),
        });
    }
    let path = dir.join(RECORD_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| StoreError::io(&path, &e))?;
    toml::from_str::<SessionRecord>(&text).map_err(|e| StoreError::Parse {
        path: path.clone(),
        message: crate::proxy::mask_passwords(e.to_string().trim_end()),
    })?;
    db.create_session(token.as_str(), &text).await?;
    for leftover in [RECORD_FILE, LEGACY_LOCK_FILE, ".session.toml.tmp"] {
        match std::fs::remove_file(dir.join(leftover)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(dir.join(leftover), &e)),
        }
    }
    let _ = std::fs::remove_dir(dir); // only if empty: anything unknown stays
    Ok(token)
}

/// One pending change of one session, with the order it was made in.
enum Pending {
    Put(u64, Box<SessionRecord>),
    /// A removal, with its own journal entry: appended in the commit that applies it, and
    /// dropped with it (a removal replaced by a newer record never reports a deletion).
    Remove(u64, Option<Box<NewJournalEntry>>),
}

impl Pending {
    fn seq(&self) -> u64 {
        match self {
            Pending::Put(seq, _) | Pending::Remove(seq, _) => *seq,
        }
    }
}

/// How far the writer got.
#[derive(Debug, Default)]
struct Progress {
    /// Every change with a sequence number up to this one is committed.
    committed: u64,
    /// The last write error, while writes are failing.
    failing: Option<String>,
}

/// What waits for the writer: the latest uncommitted change of each session, the journal
/// entries in order, and the next sequence number.
#[derive(Default)]
struct Queued {
    records: HashMap<Token, Pending>,
    journal: VecDeque<Numbered>,
    next: u64,
}

impl Queued {
    /// The oldest change still waiting.
    fn oldest(&self) -> Option<u64> {
        let records = self.records.values().map(Pending::seq).min();
        let journal = self.journal.front().map(|(seq, _)| *seq);
        records.into_iter().chain(journal).min()
    }
}

/// What the supervisor and the writer task share.
struct Shared {
    queued: Mutex<Queued>,
    /// Wakes the writer task.
    wake: Notify,
    /// How far the writer got.
    progress: watch::Sender<Progress>,
    /// The number of the last journal entry committed.
    journal_head: watch::Sender<i64>,
    /// Journal entries dropped because [`JOURNAL_QUEUE`] entries were already waiting.
    journal_dropped: AtomicU64,
    /// How entries are kept.
    journal: JournalConfig,
    /// Every handle is gone: the task commits what is pending, then ends (letting go of the
    /// database).
    closed: std::sync::atomic::AtomicBool,
    /// The sessions whose changes were dropped because this node no longer holds them: the
    /// number of the last change dropped, and why (at most [`REFUSALS_KEPT`]).
    refused: Mutex<HashMap<Token, (u64, String)>>,
}

/// How many sessions' refusals are remembered; past it the oldest half is forgotten (an
/// operation still waiting on one of those would then be answered as saved).
const REFUSALS_KEPT: usize = 4096;

/// The handle to the writer task; see the module docs.
#[derive(Clone)]
pub(crate) struct StoreWriter {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Tells the writer task when the last handle is dropped.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

/// Backoff bounds for failing writes.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(30);
/// How many journal entries may wait for the writer. Past it (the database has been failing
/// for a long time) new entries are dropped and counted, never queued without bound.
pub const JOURNAL_QUEUE: usize = 65_536;
/// How often entries older than the journal's `max_age` are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl StoreWriter {
    /// Starts the writer task on `db`.
    pub(crate) fn spawn(db: Store, journal: JournalConfig) -> Self {
        let shared = Arc::new(Shared {
            queued: Mutex::new(Queued {
                next: 1,
                ..Queued::default()
            }),
            wake: Notify::new(),
            progress: watch::channel(Progress::default()).0,
            journal_head: watch::channel(0).0,
            journal_dropped: AtomicU64::new(0),
            journal,
            closed: std::sync::atomic::AtomicBool::new(false),
            refused: Mutex::new(HashMap::new()),
        });
        tokio::spawn(run_writer(db, shared.clone()));
        Self {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        }
    }

    fn queued(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.shared.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark(&self, token: &Token, change: impl FnOnce(u64) -> Pending) -> u64 {
        let mut queued = self.queued();
        let seq = queued.next;
        queued.next += 1;
        queued.records.insert(token.clone(), change(seq));
        drop(queued);
        self.shared.wake.notify_one();
        seq
    }

    /// Marks `record` as `token`'s record to commit.
    pub(crate) fn write(&self, token: &Token, record: SessionRecord) {
        self.mark(token, |seq| Pending::Put(seq, Box::new(record)));
    }

    /// Queues a journal entry of `token`, committed with (or after) the record changes
    /// marked before it.
    pub(crate) fn journal(&self, token: &Token, entry: crate::journal::Entry) {
        let new = self.new_entry(token, entry);
        let mut queued = self.queued();
        if queued.journal.len() >= JOURNAL_QUEUE {
            drop(queued);
            if self.shared.journal_dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::error!(
                    "the journal queue is full ({JOURNAL_QUEUE} entries waiting for the database); new entries are dropped and counted"
                );
            }
            return;
        }
        let seq = queued.next;
        queued.next += 1;
        queued.journal.push_back((seq, new));
        drop(queued);
        self.shared.wake.notify_one();
    }

    /// The number of the last journal entry committed; it changes after each commit that
    /// appended entries.
    pub(crate) fn journal_head(&self) -> watch::Receiver<i64> {
        self.shared.journal_head.subscribe()
    }

    /// How many journal entries were dropped because the queue was full.
    pub(crate) fn journal_dropped(&self) -> u64 {
        self.shared.journal_dropped.load(Ordering::Relaxed)
    }

    fn new_entry(&self, token: &Token, entry: crate::journal::Entry) -> NewJournalEntry {
        NewJournalEntry {
            token: token.to_string(),
            kind: entry.kind.to_string(),
            key: entry.key,
            data: entry.data.to_string(),
            at: unix_millis(entry.at),
            keep: self.shared.journal.keep,
        }
    }

    /// Removes the session's record, credentials and keys, with `entry` (its deletion's own
    /// journal entry) in the commit that applies the removal: the removal takes the session's
    /// journal, and the entry stays; a removal that does not happen writes no entry. Resolves
    /// once committed (or with the error while writes are failing, or the refusal when this
    /// node no longer holds it).
    pub(crate) async fn remove(
        &self,
        token: &Token,
        entry: Option<crate::journal::Entry>,
    ) -> Result<(), StoreError> {
        let entry = entry.map(|entry| Box::new(self.new_entry(token, entry)));
        let seq = self.mark(token, |seq| Pending::Remove(seq, entry));
        self.wait_for(seq).await?;
        match self.refusal_since(token, seq - 1) {
            Some(refusal) => Err(StoreError::NotSaved(refusal)),
            None => Ok(()),
        }
    }

    /// Drops whatever of `token` waits to be committed (its record change and journal
    /// entries): this node no longer holds the session. Those who wait for them are answered
    /// with the refusal ([`StoreWriter::refusal_since`]).
    pub(crate) fn forget(&self, token: &Token) {
        let mut queued = self.queued();
        let mut last = queued.records.remove(token).map(|change| change.seq());
        queued.journal.retain(|(seq, new)| {
            let keep = new.token != token.as_str();
            if !keep {
                last = last.max(Some(*seq));
            }
            keep
        });
        // Remembered before the queue lock goes: the writer, finding the queue empty, counts
        // what was dropped as done, and those waiting must then find the refusal.
        if let Some(last) = last {
            remember_refusal(
                &self.shared,
                token.clone(),
                last,
                "this node no longer holds the session".into(),
            );
        }
        drop(queued);
        self.shared.wake.notify_one();
    }

    /// The number of the last change marked so far: a point to ask
    /// [`StoreWriter::refusal_since`] from.
    pub(crate) fn mark_point(&self) -> u64 {
        self.queued().next - 1
    }

    /// Why a change of `token` marked after `point` was dropped unsaved (this node no longer
    /// holds the session), if one was.
    pub(crate) fn refusal_since(&self, token: &Token, point: u64) -> Option<String> {
        let refused = self
            .shared
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        refused
            .get(token)
            .filter(|(seq, _)| *seq > point)
            .map(|(_, why)| why.clone())
    }

    /// Resolves once every change marked (and journal entry queued) before it is committed,
    /// or at once with the error while writes are failing (the writer keeps retrying them).
    ///
    /// It sets no timer of its own (a commit happens on the database thread, outside tokio's
    /// clock); callers that need a bound wrap it in one.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let seq = self.queued().next - 1;
        self.wait_for(seq).await
    }

    async fn wait_for(&self, seq: u64) -> Result<(), StoreError> {
        let mut progress = self.shared.progress.subscribe();
        let seen = progress
            .wait_for(|p| p.committed >= seq || p.failing.is_some())
            .await
            .map_err(|_| StoreError::NotSaved("the session store writer stopped".into()))?;
        match (&seen.failing, seen.committed >= seq) {
            (_, true) => Ok(()),
            (Some(e), false) => Err(StoreError::NotSaved(format!(
                "writes are failing ({e}); retrying"
            ))),
            (None, false) => unreachable!("waited for one of the two"),
        }
    }
}

/// Unix milliseconds of `t` (0 before the epoch).
pub(crate) fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A journal entry with its place in the order of changes.
type Numbered = (u64, NewJournalEntry);

async fn run_writer(db: Store, shared: Arc<Shared>) {
    let mut retry = RETRY_FIRST;
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        let (mut taken, mut journal, marked): (Vec<(Token, Pending)>, Vec<Numbered>, u64) = {
            let mut queued = shared.queued.lock().unwrap_or_else(|e| e.into_inner());
            (
                queued.records.drain().collect(),
                queued.journal.drain(..).collect(),
                queued.next - 1,
            )
        };
        if taken.is_empty() && journal.is_empty() {
            // Nothing waits and no commit is in flight: every change marked so far was
            // committed, or dropped (a session this node let go of).
            shared.progress.send_if_modified(|p| {
                let advanced = marked > p.committed;
                p.committed = p.committed.max(marked);
                advanced
            });
            if shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            shared.wake.notified().await;
            continue;
        }
        let top = taken
            .iter()
            .map(|(_, p)| p.seq())
            .chain(journal.iter().map(|(seq, _)| *seq))
            .max()
            .unwrap_or(0);
        let changes = taken
            .iter()
            .map(|(token, change)| {
                Ok(match change {
                    Pending::Put(_, record) => RecordChange::Put {
                        token: token.to_string(),
                        text: record.encode()?,
                    },
                    Pending::Remove(..) => RecordChange::Remove {
                        token: token.to_string(),
                    },
                })
            })
            .collect::<Result<Vec<_>, StoreError>>();
        // A removal's own entry comes after the removal (which takes the session's journal).
        let removals = taken.iter().filter_map(|(_, change)| match change {
            Pending::Remove(_, Some(entry)) => Some(JournalChange::Append((**entry).clone())),
            _ => None,
        });
        let mut journal_changes: Vec<JournalChange> = journal
            .iter()
            .map(|(_, new)| JournalChange::Append(new.clone()))
            .chain(removals)
            .collect();
        let now = tokio::time::Instant::now();
        let prune = last_prune.is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY);
        if prune {
            let before = SystemTime::now()
                .checked_sub(shared.journal.max_age)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            journal_changes.push(JournalChange::Prune {
                before: unix_millis(before),
            });
        }
        let result = match changes {
            Ok(changes) => db
                .commit(changes, journal_changes)
                .await
                .map_err(StoreError::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(head) => {
                retry = RETRY_FIRST;
                if prune {
                    last_prune = Some(now);
                }
                if let Some(head) = head {
                    shared.journal_head.send_replace(head);
                }
                advance(&shared, top, true);
            }
            Err(e)
                if refused_session(&e).is_some_and(|lost| {
                    drop_refused(&shared, lost, &e, &mut taken, &mut journal)
                }) =>
            {
                // The rest goes again at once; what was dropped counts as done.
                put_back(&shared, taken, journal);
                advance(&shared, top, false);
            }
            Err(e) => {
                // Put back what no newer change replaced, and the journal entries in front
                // of any queued since.
                put_back(&shared, taken, journal);
                shared.progress.send_modify(|p| {
                    if p.failing.is_none() {
                        tracing::error!(error = %e, "could not save session records; retrying with backoff until it works");
                    }
                    p.failing = Some(e.to_string());
                });
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_CAP);
            }
        }
    }
}

/// Everything up to `top` that is not pending any more was committed (or dropped), now or
/// before: those waiting for it are answered. `recovered`: a commit went through, so writes
/// that were failing work again.
fn advance(shared: &Shared, top: u64, recovered: bool) {
    let oldest_pending = shared
        .queued
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .oldest();
    let through = oldest_pending.map_or(top, |s| top.min(s - 1));
    shared.progress.send_modify(|p| {
        if recovered && p.failing.take().is_some() {
            tracing::info!("session records are being saved again");
        }
        p.committed = p.committed.max(through);
    });
}

/// Puts back what a commit did not keep: each session's change unless a newer one replaced
/// it, and the journal entries in front of any queued since.
fn put_back(shared: &Shared, taken: Vec<(Token, Pending)>, journal: Vec<Numbered>) {
    let mut queued = shared.queued.lock().unwrap_or_else(|e| e.into_inner());
    for (token, change) in taken {
        queued.records.entry(token).or_insert(change);
    }
    for entry in journal.into_iter().rev() {
        queued.journal.push_front(entry);
    }
}

/// The session a commit was refused for because this node does not hold it (any more).
fn refused_session(e: &StoreError) -> Option<&str> {
    match e {
        StoreError::Db(
            warden_store::DbError::StaleFence { token, .. } | warden_store::DbError::NotHeld(token),
        ) => Some(token),
        _ => None,
    }
}

/// Drops `lost`'s changes and journal entries from what a refused commit carried, and
/// remembers the refusal for the operations that made them. Whether anything was dropped
/// (nothing: the refusal named a session the commit did not carry, and it is a plain failure).
fn drop_refused(
    shared: &Shared,
    lost: &str,
    e: &StoreError,
    taken: &mut Vec<(Token, Pending)>,
    journal: &mut Vec<Numbered>,
) -> bool {
    let mut last = None;
    taken.retain(|(token, change)| {
        let keep = token.as_str() != lost;
        if !keep {
            last = last.max(Some(change.seq()));
        }
        keep
    });
    journal.retain(|(seq, new)| {
        let keep = new.token != lost;
        if !keep {
            last = last.max(Some(*seq));
        }
        keep
    });
    let (Some(last), Ok(token)) = (last, Token::parse(lost)) else {
        return false;
    };
    tracing::warn!(session = %token, error = %e, "this node no longer holds the session: its unsaved changes are dropped");
    remember_refusal(shared, token, last, e.to_string());
    true
}

/// Remembers that `token`'s changes up to number `last` were dropped, and why.
fn remember_refusal(shared: &Shared, token: Token, last: u64, why: String) {
    let mut refused = shared.refused.lock().unwrap_or_else(|e| e.into_inner());
    if refused.len() >= REFUSALS_KEPT {
        let mut seqs: Vec<u64> = refused.values().map(|(seq, _)| *seq).collect();
        seqs.sort_unstable();
        let median = seqs[seqs.len() / 2];
        refused.retain(|_, (seq, _)| *seq > median);
    }
    let entry = refused.entry(token).or_insert((last, why.clone()));
    if entry.0 <= last {
        *entry = (last, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_store::Db;

    #[test]
    fn an_unreadable_record_is_reported_without_its_proxy_password() {
        let text = "name = \"s\"\nproxy = \"socks5://gw:hunter2@h:0\"\n";
        let error = SessionRecord::decode("s", text).unwrap_err().to_string();
        assert!(error.contains("gw:***@h:0"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    fn token(s: &str) -> Token {
        Token::parse(s).unwrap()
    }

    #[tokio::test]
    async fn a_flushed_record_is_in_the_database_and_a_removal_takes_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_in(dir.path()).unwrap();
        let writer = StoreWriter::spawn(db.clone().into(), JournalConfig::default());
        let mut record = SessionRecord::new("Shop one".into(), SystemTime::UNIX_EPOCH);
        record.desired = Desired::Running;
        record.state = SessionState::Banned;
        record.banned_until = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(90));
        record.attempts = 2;
        writer.write(
            &token("shop1"),
            SessionRecord::new("old".into(), SystemTime::UNIX_EPOCH),
        );
        writer.write(&token("shop1"), record.clone());
        writer.flush().await.unwrap();
        let loaded = load_all(&db.clone().into()).await.unwrap();
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert_eq!(loaded.records, vec![(token("shop1"), record)]);

        db.open_device("shop1").await.unwrap();
        writer.remove(&token("shop1"), None).await.unwrap();
        assert_eq!(db.rows_of("shop1").await.unwrap(), 0);
        assert!(
            load_all(&db.clone().into())
                .await
                .unwrap()
                .records
                .is_empty()
        );
    }

    #[tokio::test]
    async fn unreadable_rows_are_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_in(dir.path()).unwrap();
        let good = SessionRecord::new("ok".into(), SystemTime::UNIX_EPOCH)
            .encode()
            .unwrap();
        db.write_records(vec![
            RecordChange::Put {
                token: "good".into(),
                text: good,
            },
            RecordChange::Put {
                token: "bad".into(),
                text: "name = 3\n[[[".into(),
            },
            RecordChange::Put {
                token: "not a token".into(),
                text: "x".into(),
            },
        ])
        .await
        .unwrap();
        let loaded = load_all(&db.clone().into()).await.unwrap();
        assert_eq!(loaded.records.len(), 1);
        assert_eq!(loaded.records[0].0, token("good"));
        let problems: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("session bad") && p.contains("line"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("not a valid session token"))
        );
        assert_eq!(
            db.load_records().await.unwrap().len(),
            3,
            "nothing was deleted"
        );
    }

    #[tokio::test]
    async fn records_of_an_earlier_release_move_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = dir.path();
        let record = SessionRecord::new("Shop".into(), SystemTime::UNIX_EPOCH);
        for name in ["shop1", "shop2", "not a token", "creds"] {
            std::fs::create_dir(sessions.join(name)).unwrap();
            std::fs::write(
                sessions.join(name).join(RECORD_FILE),
                record.encode().unwrap(),
            )
            .unwrap();
        }
        std::fs::write(sessions.join("shop1").join(LEGACY_LOCK_FILE), "").unwrap();
        std::fs::write(sessions.join("shop2").join("notes.txt"), "mine").unwrap();
        std::fs::write(sessions.join("creds").join(LEGACY_DB_FILE), "keys").unwrap();
        let db = Db::open_in(sessions).unwrap();

        let done = import_legacy_records(&db.clone().into(), sessions).await;
        assert_eq!(done.imported, vec![token("shop1"), token("shop2")]);
        assert_eq!(done.problems.len(), 2, "{:?}", done.problems);
        assert!(!sessions.join("shop1").exists(), "an emptied folder goes");
        assert!(
            sessions.join("shop2").join("notes.txt").exists(),
            "unknown files stay"
        );
        assert!(!sessions.join("shop2").join(RECORD_FILE).exists());
        assert!(
            sessions.join("creds").join(RECORD_FILE).exists(),
            "left whole"
        );
        assert!(sessions.join("not a token").join(RECORD_FILE).exists());
        let loaded = load_all(&db.clone().into()).await.unwrap();
        let tokens: Vec<_> = loaded.records.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(tokens, vec![token("shop1"), token("shop2")]);

        // Running it again finds nothing more to do.
        let again = import_legacy_records(&db.clone().into(), sessions).await;
        assert!(again.imported.is_empty());
    }
}
