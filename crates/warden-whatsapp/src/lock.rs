//! [`SessionLock`]: an exclusive `flock` on `<sessions_dir>/<token>/lock`, the per-session
//! lock of earlier releases. Sessions no longer have folders (the daemon's exclusive hold on
//! the session database keeps a second process out); the import of an earlier release's
//! folder takes this lock, so it never reads credentials an older process still writes.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

/// The name of the lock file in a session folder.
pub const LOCK_FILE: &str = "lock";

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it.
    #[error("session folder {} is in use by another warden (or another link in this process)", .0.display())]
    Busy(PathBuf),
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Holds the lock until dropped (closing the file releases it).
#[derive(Debug)]
pub struct SessionLock {
    file: File,
    path: PathBuf,
}

impl SessionLock {
    /// Takes the lock of the session folder `dir` (created if missing), without waiting.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match FileExt::try_lock_exclusive(&file) {
            Ok(true) => Ok(Self { file, path }),
            Ok(false) => Err(LockError::Busy(dir.to_path_buf())),
            Err(e) => Err(io(e)),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let session = dir.path().join("shop1");
        let first = SessionLock::acquire(&session).unwrap();
        assert!(first.path().ends_with("shop1/lock"));
        assert!(matches!(
            SessionLock::acquire(&session),
            Err(LockError::Busy(_))
        ));
        drop(first);
        SessionLock::acquire(&session).unwrap();
    }
}
