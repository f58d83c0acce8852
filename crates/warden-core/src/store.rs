//! The session store: `sessions/<token>/session.toml`, written atomically, read at start.
//!
//! Every write goes through one writer task, in order, off the actors' threads: the file is
//! written to a temporary name, fsynced, renamed over `session.toml`, and the folder fsynced,
//! so a crash mid-write leaves either the old or the new file, never half of one.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;
use crate::state::{Counters, Desired, SessionState};
use crate::token::Token;

/// The file name of a session's record inside its folder.
pub const RECORD_FILE: &str = "session.toml";
/// The temporary name a record is written under before the rename.
const TEMP_FILE: &str = ".session.toml.tmp";

/// What `session.toml` holds.
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
}

impl SessionRecord {
    /// A fingerprint of the record, to skip writes that would change nothing.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
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
        }
    }
}

/// The folder of one session.
pub fn session_dir(sessions_dir: &Path, token: &Token) -> PathBuf {
    sessions_dir.join(token.as_str())
}

/// What [`load_all`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The readable records, ordered by token.
    pub records: Vec<(Token, SessionRecord)>,
    /// What could not be read; these folders are left untouched.
    pub problems: Vec<StoreError>,
}

/// Reads every `sessions/<token>/session.toml`. Unreadable entries are reported, never deleted.
/// A missing `sessions_dir` is created.
pub fn load_all(sessions_dir: &Path) -> Result<Loaded, StoreError> {
    fs::create_dir_all(sessions_dir).map_err(|e| StoreError::io(sessions_dir, &e))?;
    let mut loaded = Loaded::default();
    let entries = fs::read_dir(sessions_dir).map_err(|e| StoreError::io(sessions_dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(sessions_dir, &e))?;
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue; // .gitkeep and other files
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let token = match Token::parse(&name) {
            Ok(token) => token,
            Err(reason) => {
                loaded
                    .problems
                    .push(StoreError::BadFolderName { path, reason });
                continue;
            }
        };
        match read_record(&path.join(RECORD_FILE)) {
            Ok(record) => loaded.records.push((token, record)),
            Err(problem) => loaded.problems.push(problem),
        }
    }
    loaded.records.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(loaded)
}

/// Reads and parses one record file.
pub fn read_record(path: &Path) -> Result<SessionRecord, StoreError> {
    let text = fs::read_to_string(path).map_err(|e| StoreError::io(path, &e))?;
    toml::from_str(&text).map_err(|e| StoreError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// Writes `record` as `session.toml` in the session's folder, atomically and durably.
pub fn write_record(
    sessions_dir: &Path,
    token: &Token,
    record: &SessionRecord,
) -> Result<(), StoreError> {
    let dir = session_dir(sessions_dir, token);
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, &e))?;
        sync_dir(sessions_dir)?;
    }
    let text = toml::to_string(record).map_err(|e| StoreError::Io {
        path: dir.join(RECORD_FILE),
        message: format!("cannot encode the record: {e}"),
    })?;
    atomic_write(&dir.join(RECORD_FILE), text.as_bytes())
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the folder.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = dir.join(TEMP_FILE);
    let mut file = fs::File::create(&temp).map_err(|e| StoreError::io(&temp, &e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io(&temp, &e))?;
    drop(file);
    fs::rename(&temp, path).map_err(|e| StoreError::io(path, &e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, &e))
}

/// Removes a session's folder and everything in it.
pub fn remove_session(sessions_dir: &Path, token: &Token) -> Result<(), StoreError> {
    let dir = session_dir(sessions_dir, token);
    match fs::remove_dir_all(&dir) {
        Ok(()) => sync_dir(sessions_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(&dir, &e)),
    }
}

enum StoreOp {
    Write(Token, Box<SessionRecord>),
    Remove(Token, oneshot::Sender<Result<(), StoreError>>),
    Flush(oneshot::Sender<()>),
}

/// The handle to the writer task. Writes are queued in order and coalesced per token.
#[derive(Clone)]
pub(crate) struct StoreWriter {
    tx: mpsc::UnboundedSender<StoreOp>,
}

impl StoreWriter {
    /// Starts the writer task for `sessions_dir`.
    pub(crate) fn spawn(sessions_dir: PathBuf) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_writer(sessions_dir, rx));
        Self { tx }
    }

    /// Queues a write of `record`.
    pub(crate) fn write(&self, token: &Token, record: SessionRecord) {
        let _ = self
            .tx
            .send(StoreOp::Write(token.clone(), Box::new(record)));
    }

    /// Removes the session's folder after every write queued before it.
    pub(crate) async fn remove(&self, token: &Token) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        if self.tx.send(StoreOp::Remove(token.clone(), done)).is_err() {
            return Ok(());
        }
        wait.await.unwrap_or(Ok(()))
    }

    /// Resolves once every write queued before it is on disk.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(StoreOp::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// How long a failed write waits before it is tried again (unless newer work comes first).
const RETRY_FAILED_WRITES: std::time::Duration = std::time::Duration::from_secs(1);

async fn run_writer(sessions_dir: PathBuf, mut rx: mpsc::UnboundedReceiver<StoreOp>) {
    let mut batch = Vec::new();
    // Writes that failed (disk full, permissions): retried until they succeed or a newer
    // write of the same session replaces them, so a record on disk never stays stale.
    let mut failed: Vec<StoreOp> = Vec::new();
    loop {
        let received = if failed.is_empty() {
            rx.recv_many(&mut batch, 4096).await
        } else {
            tokio::time::timeout(RETRY_FAILED_WRITES, rx.recv_many(&mut batch, 4096))
                .await
                .unwrap_or(usize::MAX)
        };
        if received == 0 {
            return; // every sender is gone
        }
        let mut ops = std::mem::take(&mut failed);
        ops.append(&mut batch);
        let ops = coalesce(ops);
        let dir = sessions_dir.clone();
        match tokio::task::spawn_blocking(move || apply(&dir, ops)).await {
            Ok(still_failing) => failed = still_failing,
            Err(e) => tracing::error!(error = %e, "session store writer failed"),
        }
    }
}

/// Keeps only the last write of each token between removals, preserving order otherwise.
fn coalesce(ops: Vec<StoreOp>) -> Vec<StoreOp> {
    let mut last_write: HashMap<Token, usize> = HashMap::new();
    let mut out: Vec<Option<StoreOp>> = Vec::with_capacity(ops.len());
    for op in ops {
        match &op {
            StoreOp::Write(token, _) => {
                if let Some(i) = last_write.insert(token.clone(), out.len()) {
                    out[i] = None;
                }
            }
            StoreOp::Remove(token, _) => {
                last_write.remove(token);
            }
            StoreOp::Flush(_) => {}
        }
        out.push(Some(op));
    }
    out.into_iter().flatten().collect()
}

/// Applies `ops` in order; returns the writes that failed, to be tried again.
fn apply(sessions_dir: &Path, ops: Vec<StoreOp>) -> Vec<StoreOp> {
    let mut failed = Vec::new();
    for op in ops {
        match op {
            StoreOp::Write(token, record) => {
                if let Err(e) = write_record(sessions_dir, &token, &record) {
                    tracing::error!(token = %token, error = %e, "could not save the session record; will retry");
                    failed.push(StoreOp::Write(token, record));
                }
            }
            StoreOp::Remove(token, done) => {
                failed.retain(|f| !matches!(f, StoreOp::Write(t, _) if *t == token));
                let _ = done.send(remove_session(sessions_dir, &token));
            }
            StoreOp::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> Token {
        Token::parse(s).unwrap()
    }

    #[test]
    fn records_round_trip_and_survive_a_torn_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = SessionRecord::new("Shop one".into(), SystemTime::UNIX_EPOCH);
        record.desired = Desired::Running;
        record.state = SessionState::Banned;
        record.banned_until = Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(90));
        record.attempts = 2;
        write_record(dir.path(), &token("shop1"), &record).unwrap();
        // A crash mid-write leaves a partial temp file beside the good record.
        fs::write(dir.path().join("shop1").join(TEMP_FILE), "name = \"tor").unwrap();
        let loaded = load_all(dir.path()).unwrap();
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert_eq!(loaded.records, vec![(token("shop1"), record)]);
    }

    #[test]
    fn unreadable_entries_are_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let record = SessionRecord::new("ok".into(), SystemTime::UNIX_EPOCH);
        write_record(dir.path(), &token("good"), &record).unwrap();
        fs::create_dir(dir.path().join("bad")).unwrap();
        fs::write(dir.path().join("bad").join(RECORD_FILE), "name = 3\n[[[").unwrap();
        fs::create_dir(dir.path().join("empty")).unwrap();
        fs::create_dir(dir.path().join("not a token")).unwrap();
        fs::write(dir.path().join(".gitkeep"), "").unwrap();

        let loaded = load_all(dir.path()).unwrap();
        assert_eq!(loaded.records.len(), 1);
        assert_eq!(loaded.records[0].0, token("good"));
        let mut problems: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
        problems.sort();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("bad/session.toml") && p.contains("line"))
        );
        assert!(problems.iter().any(|p| p.contains("empty/session.toml")));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("not a valid session token"))
        );
        // Nothing was deleted.
        assert!(dir.path().join("bad").join(RECORD_FILE).exists());
        assert!(dir.path().join("not a token").exists());
    }

    #[tokio::test]
    async fn a_failed_write_is_retried_until_it_lands() {
        let dir = tempfile::tempdir().unwrap();
        let writer = StoreWriter::spawn(dir.path().to_owned());
        let t = token("t1");
        // A file where the session's folder should be: the write fails.
        fs::write(dir.path().join("t1"), "in the way").unwrap();
        writer.write(&t, SessionRecord::new("a".into(), SystemTime::UNIX_EPOCH));
        writer.flush().await;
        assert!(!dir.path().join("t1").is_dir());
        // Once the obstacle is gone, the retry lands without a new write.
        fs::remove_file(dir.path().join("t1")).unwrap();
        let path = dir.path().join("t1").join(RECORD_FILE);
        let landed = async {
            while !path.exists() {
                writer.flush().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), landed)
            .await
            .expect("the failed write is retried");
        assert_eq!(read_record(&path).unwrap().name, "a");
    }

    #[tokio::test]
    async fn the_writer_keeps_order_between_writes_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let writer = StoreWriter::spawn(dir.path().to_owned());
        let t = token("t1");
        let mut record = SessionRecord::new("a".into(), SystemTime::UNIX_EPOCH);
        writer.write(&t, record.clone());
        record.name = "b".into();
        writer.write(&t, record.clone());
        writer.flush().await;
        assert_eq!(
            read_record(&dir.path().join("t1").join(RECORD_FILE))
                .unwrap()
                .name,
            "b"
        );
        writer.remove(&t).await.unwrap();
        assert!(!dir.path().join("t1").exists());
        writer.write(&t, record);
        writer.flush().await;
        assert!(dir.path().join("t1").join(RECORD_FILE).exists());
    }
}
