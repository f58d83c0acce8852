//! [`Store`]: the session store a daemon runs on, whichever database holds it. Its calls are
//! [`Db`]'s, so the supervisor, the outbox and the webhooks are written once:
//!
//! - [`Store::Local`]: this machine's SQLite database, for a daemon on its own.
//! - [`Store::Shared`]: PostgreSQL, shared by the nodes of a cluster. Every write of a session
//!   carries the fence this node holds it under, asked of its [`Leases`] at the time of the
//!   write; a session this node does not hold is refused ([`DbError::NotHeld`]) and one whose
//!   lease moved on is refused by the database ([`DbError::StaleFence`]). Creating a session
//!   adds it to the cluster ([`Store::create_session`]), unowned, for a node to claim.

use std::collections::HashMap;
use std::sync::Arc;

use crate::Db;
use crate::error::DbError;
use crate::journal::{DeadLetter, JournalChange, JournalEntry};
use crate::outbox::{NewOutboxMessage, OutboxChange, OutboxRow};
use crate::pg::{Fence, PgDb};
use crate::records::RecordChange;

/// Which sessions this node holds, and under which fence (`warden_cluster::Node` in a daemon).
pub trait Leases: Send + Sync + 'static {
    /// The fence this node holds `token` under, or `None` when it does not hold it.
    fn fence(&self, token: &str) -> Option<Fence>;
}

/// The store on PostgreSQL, with the leases its writes are made under.
#[derive(Clone)]
pub struct Shared {
    /// The database.
    pub db: PgDb,
    /// This node's leases.
    pub leases: Arc<dyn Leases>,
}

/// The session store; see the module docs. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    /// This machine's SQLite database.
    Local(Db),
    /// PostgreSQL, shared by the nodes of a cluster.
    Shared(Shared),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Local(db) => f.debug_tuple("Local").field(db).finish(),
            Store::Shared(_) => f.debug_tuple("Shared").finish_non_exhaustive(),
        }
    }
}

impl From<Db> for Store {
    fn from(db: Db) -> Self {
        Store::Local(db)
    }
}

/// The same call on whichever database `$store` is (the calls that carry no fence).
macro_rules! on_either {
    ($store:expr, $db:ident => $call:expr) => {
        match $store {
            Store::Local($db) => $call,
            Store::Shared(Shared { db: $db, .. }) => $call,
        }
    };
}

impl Shared {
    /// The fence this node holds `token` under, or [`DbError::NotHeld`].
    fn fence(&self, token: &str) -> Result<Fence, DbError> {
        self.leases
            .fence(token)
            .ok_or_else(|| DbError::NotHeld(token.to_owned()))
    }
}

impl Store {
    /// The local database, when this is one.
    pub fn local(&self) -> Option<&Db> {
        match self {
            Store::Local(db) => Some(db),
            Store::Shared(_) => None,
        }
    }

    /// Every stored record (of the whole cluster, on PostgreSQL), ordered by token.
    pub async fn load_records(&self) -> Result<Vec<(String, String)>, DbError> {
        on_either!(self, db => db.load_records().await)
    }

    /// The stored record of `token`, if it has one.
    pub async fn load_record(&self, token: &str) -> Result<Option<String>, DbError> {
        on_either!(self, db => db.load_record(token).await)
    }

    /// Adds session `token` with its record `text` unless it has one already; whether it was
    /// added. On PostgreSQL it joins the cluster unowned, for a node to claim.
    pub async fn create_session(&self, token: &str, text: &str) -> Result<bool, DbError> {
        match self {
            Store::Local(db) => db.import_record(token, text).await,
            Store::Shared(shared) => shared.db.create_session(token, text).await,
        }
    }

    /// Applies the record changes, then the journal changes, in one transaction: all are
    /// kept, or none. Returns the number of the last journal entry appended. On PostgreSQL,
    /// every session touched must be held by this node under a current fence.
    pub async fn commit(
        &self,
        changes: Vec<RecordChange>,
        journal: Vec<JournalChange>,
    ) -> Result<Option<i64>, DbError> {
        match self {
            Store::Local(db) => db.commit(changes, journal).await,
            Store::Shared(shared) => {
                let mut fences = HashMap::new();
                let tokens = changes
                    .iter()
                    .map(RecordChange::token)
                    .chain(journal.iter().filter_map(JournalChange::token));
                for token in tokens {
                    if !fences.contains_key(token) {
                        fences.insert(token.to_owned(), shared.fence(token)?);
                    }
                }
                shared.db.commit(fences, changes, journal).await
            }
        }
    }

    /// Entries after `after`, oldest first, at most `limit`: one session's, or everyone's.
    pub async fn read_journal(
        &self,
        token: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, DbError> {
        on_either!(self, db => db.read_journal(token, after, limit).await)
    }

    /// One session's newest `limit` entries, oldest first.
    pub async fn journal_tail(
        &self,
        token: String,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, DbError> {
        on_either!(self, db => db.journal_tail(token, limit).await)
    }

    /// Up to `limit` of `token`'s entries of `kind` before entry `seq`, oldest first.
    pub async fn journal_before(
        &self,
        token: String,
        seq: i64,
        kind: String,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, DbError> {
        on_either!(self, db => db.journal_before(token, seq, kind, limit).await)
    }

    /// Accepts `message` unless its session has one with the same key; see
    /// [`Db::outbox_insert`].
    pub async fn outbox_insert(
        &self,
        message: NewOutboxMessage,
    ) -> Result<(OutboxRow, bool), DbError> {
        match self {
            Store::Local(db) => db.outbox_insert(message).await,
            Store::Shared(shared) => {
                let fence = shared.fence(&message.token)?;
                shared.db.outbox_insert(message, &fence).await
            }
        }
    }

    /// The message of `token` whose id, or else whose key, is `id_or_key`.
    pub async fn outbox_get(
        &self,
        token: &str,
        id_or_key: &str,
    ) -> Result<Option<OutboxRow>, DbError> {
        on_either!(self, db => db.outbox_get(token, id_or_key).await)
    }

    /// The message of `token` stored under idempotency key `key`.
    pub async fn outbox_by_key(
        &self,
        token: &str,
        key: &str,
    ) -> Result<Option<OutboxRow>, DbError> {
        on_either!(self, db => db.outbox_by_key(token, key).await)
    }

    /// `token`'s messages whose status is one of `statuses`, in send order, at most `limit`.
    pub async fn outbox_list(
        &self,
        token: &str,
        statuses: &[&str],
        limit: usize,
    ) -> Result<Vec<OutboxRow>, DbError> {
        on_either!(self, db => db.outbox_list(token, statuses, limit).await)
    }

    /// Every session's messages in `status` that expire at or before `now`, oldest first.
    pub async fn outbox_expiring(&self, status: &str, now: i64) -> Result<Vec<OutboxRow>, DbError> {
        on_either!(self, db => db.outbox_expiring(status, now).await)
    }

    /// Whether `token` has a message to `to` in one of `statuses`.
    pub async fn outbox_has_chat(
        &self,
        token: &str,
        to: &str,
        statuses: &[&str],
    ) -> Result<bool, DbError> {
        on_either!(self, db => db.outbox_has_chat(token, to, statuses).await)
    }

    /// Reads message `id` of `token`, lets `decide` choose what to write, writes it; see
    /// [`Db::outbox_apply`].
    pub async fn outbox_apply<F>(
        &self,
        token: &str,
        id: &str,
        decide: F,
    ) -> Result<Option<(OutboxRow, bool)>, DbError>
    where
        F: FnOnce(&OutboxRow) -> Option<OutboxChange> + Send + 'static,
    {
        match self {
            Store::Local(db) => db.outbox_apply(token, id, decide).await,
            Store::Shared(shared) => {
                let fence = shared.fence(token)?;
                shared.db.outbox_apply(token, id, &fence, decide).await
            }
        }
    }

    /// Removes every finished message that last changed before `before`; how many.
    pub async fn outbox_prune(&self, keep_status: &str, before: i64) -> Result<u64, DbError> {
        on_either!(self, db => db.outbox_prune(keep_status, before).await)
    }

    /// Registers webhook `hook` if it is new, at the journal's head; where it starts.
    pub async fn webhook_register(&self, hook: String) -> Result<i64, DbError> {
        on_either!(self, db => db.webhook_register(hook).await)
    }

    /// What webhook `hook` has not yet done; see [`Db::webhook_pending`].
    pub async fn webhook_pending(
        &self,
        hook: String,
        only: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, DbError> {
        on_either!(self, db => db.webhook_pending(hook, only, after, limit).await)
    }

    /// Records that webhook `hook` is done with `token`'s entries up to `seq`, dead-lettering
    /// `dead` in the same commit.
    pub async fn webhook_advance(
        &self,
        hook: String,
        token: String,
        seq: i64,
        dead: Option<DeadLetter>,
    ) -> Result<(), DbError> {
        on_either!(self, db => db.webhook_advance(hook, token, seq, dead).await)
    }

    /// Records that webhook `hook` is done with each session's entries up to its number,
    /// dead-lettering the given ones, in one commit.
    pub async fn webhook_advance_all(
        &self,
        hook: String,
        done: Vec<(String, i64, Option<DeadLetter>)>,
    ) -> Result<(), DbError> {
        on_either!(self, db => db.webhook_advance_all(hook, done).await)
    }

    /// Records that webhook `hook` skipped each session's entries up to its number.
    pub async fn webhook_skip(
        &self,
        hook: String,
        done: Vec<(String, i64)>,
    ) -> Result<(), DbError> {
        on_either!(self, db => db.webhook_skip(hook, done).await)
    }

    /// Moves webhook `hook`'s cursors back to just before `from`: a replay.
    pub async fn webhook_rewind(&self, hook: String, from: i64) -> Result<(), DbError> {
        on_either!(self, db => db.webhook_rewind(hook, from).await)
    }

    /// Webhook `hook`'s dead letters (every webhook's with `None`), oldest first.
    pub async fn dead_letters(
        &self,
        hook: Option<String>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DbError> {
        on_either!(self, db => db.dead_letters(hook, limit).await)
    }

    /// Removes and returns dead letters of `hook` (all, or only entry `seq`).
    pub async fn take_dead_letters(
        &self,
        hook: String,
        seq: Option<i64>,
    ) -> Result<Vec<DeadLetter>, DbError> {
        on_either!(self, db => db.take_dead_letters(hook, seq).await)
    }

    /// The database's identity, made once from `candidate`.
    pub async fn identity(&self, candidate: String) -> Result<String, DbError> {
        on_either!(self, db => db.identity(candidate).await)
    }

    /// Stores (or replaces) webhook `hook` of session `token`.
    pub async fn put_session_webhook(
        &self,
        hook: String,
        token: String,
        config: String,
    ) -> Result<(), DbError> {
        on_either!(self, db => db.put_session_webhook(hook, token, config).await)
    }

    /// Removes webhook `hook` of a session with its progress; whether it was there.
    pub async fn remove_session_webhook(&self, hook: String) -> Result<bool, DbError> {
        on_either!(self, db => db.remove_session_webhook(hook).await)
    }

    /// Every session's webhooks: (hook, token, configuration).
    pub async fn session_webhooks(&self) -> Result<Vec<(String, String, String)>, DbError> {
        on_either!(self, db => db.session_webhooks().await)
    }

    /// Resolves once every write queued before it is committed: a barrier.
    pub async fn sync(&self) -> Result<(), DbError> {
        on_either!(self, db => db.sync().await)
    }
}
