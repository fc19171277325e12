//! The window state's checkpoint store: a redb database (one file).
//!
//! redb because it is pure Rust (no C or cmake in the build, unlike RocksDB), crash-safe (a
//! commit is atomic and durable; a `kill -9` leaves the previous checkpoint intact), small and
//! maintained. Window state is small (the open windows), so a B-tree file fits better than an
//! LSM engine.
//!
//! Calls run on a thread of the store's own, since a commit waits for the disk. Not on the
//! blocking pool: each checkpoint ran on whichever of its threads was idle, and the allocator
//! keeps the pages a thread freed until that thread allocates again, so every pool thread that
//! ever stored a checkpoint held a share of it (the sensors flow's peak RSS grew by about
//! 1 MB a checkpoint up to the pool's size: 56 MB instead of 40 at 10,000,000 events with
//! checkpoints every 100 ms, docs/performance.md step 24).
//!
//! A full disk (`ENOSPC`, `EDQUOT`) is an error that may pass: it is returned as
//! [`ProcessorError::Unavailable`], for the caller to retry with backoff, and the database is
//! closed, to be opened again by the next attempt (redb refuses every write after an I/O error
//! until it is reopened). The last complete checkpoint stays in the file meanwhile.

use std::path::{Path, PathBuf};

use flow_core::processor::ProcessorError;
use redb::{Database, ReadableDatabase, TableDefinition};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("window_state");

/// Work for the store's thread, given the database (`None` until opened, and after an I/O
/// error: opened again by the next call) and the file's path.
type Job = Box<dyn FnOnce(&mut Option<Database>, &Path) + Send>;

/// One processor's state in a database file.
pub struct Store {
    /// To the store's thread; taken when the store is dropped, which ends the thread.
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    /// Joined when the store is dropped: the database is closed (its file lock released)
    /// by the time the drop returns, for a next run to open it again.
    thread: Option<std::thread::JoinHandle<()>>,
    key: String,
    path: PathBuf,
}

fn err(path: &std::path::Path, what: &str, e: impl std::fmt::Display) -> ProcessorError {
    ProcessorError::other(format!("window state {}: {what}: {e}", path.display()))
}

/// Whether a redb error is a full disk, or the refusal redb answers every write with after an
/// I/O error until the database is reopened: both may pass.
fn may_pass(message: &str) -> bool {
    [
        "No space left on device",
        "Disk quota exceeded",
        "Previous I/O error",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// Open the database at `path`, creating it first if there is none. A new database is made
/// under a temporary name and renamed into place once complete: redb writes a new file's
/// header after sizing it, so a `kill -9` in between left a file every later start refused
/// ("Not a redb database: magic number mismatch"), and the flow could never start again. An
/// empty file at `path` (left by an older version that way) holds no state: made anew.
fn create_or_open(path: &std::path::Path) -> Result<Database, String> {
    let exists = match std::fs::metadata(path) {
        Ok(m) => m.len() > 0,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.to_string()),
    };
    if !exists {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".creating");
        let tmp = path.with_file_name(name);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.to_string()),
        }
        drop(Database::create(&tmp).map_err(|e| e.to_string())?);
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename itself, durable (best effort: not every filesystem syncs folders).
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
    }
    Database::create(path).map_err(|e| e.to_string())
}

impl Store {
    /// Open (or create) the database at `path`; the state is kept under `key`.
    pub async fn open(path: &str, key: &str) -> Result<Self, ProcessorError> {
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| err(&path, "cannot create its folder", e))?;
        }
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("window-state".into())
            .spawn(move || {
                let mut db = None;
                while let Ok(job) = rx.recv() {
                    // A job that panicked has already told its caller (its answer was
                    // dropped); the database is opened afresh for the next.
                    let run = std::panic::AssertUnwindSafe(|| job(&mut db, &p));
                    if std::panic::catch_unwind(run).is_err() {
                        db = None;
                    }
                }
            })
            .map_err(|e| err(&path, "cannot start its thread", e))?;
        let store = Self {
            jobs: Some(jobs),
            thread: Some(thread),
            key: key.to_owned(),
            path,
        };
        store
            .call(|db, path, _| {
                if db.is_none() {
                    *db = Some(create_or_open(path)?);
                }
                Ok(())
            })
            .await
            .and_then(|opened| opened.map_err(|e| err(&store.path, "cannot open", e)))?;
        Ok(store)
    }

    /// Run `f` on the store's thread with the database and the key; `Err` if `f` panicked
    /// (its answer is dropped; the thread goes on, the database closed) or the thread is
    /// gone.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Option<Database>, &Path, &str) -> Result<T, String> + Send + 'static,
    ) -> Result<Result<T, String>, ProcessorError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let key = self.key.clone();
        let job: Job = Box::new(move |db, path| {
            // The caller may have stopped waiting: the answer is then not needed.
            let _ = tx.send(f(db, path, &key));
        });
        let gone = || err(&self.path, "its thread", "a call panicked");
        match &self.jobs {
            Some(jobs) if jobs.send(job).is_ok() => rx.await.map_err(|_| gone()),
            _ => Err(gone()),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Database, &str) -> Result<T, String> + Send + 'static,
    ) -> Result<T, ProcessorError> {
        let result = self
            .call(move |slot, path, key| {
                let db = match slot {
                    Some(db) => db,
                    None => slot.insert(create_or_open(path)?),
                };
                let result = f(db, key);
                if result.as_ref().is_err_and(|m| may_pass(m)) {
                    // Closed now, opened again next time.
                    *slot = None;
                }
                result
            })
            .await?;
        result.map_err(|e| {
            if may_pass(&e) {
                ProcessorError::unavailable(format!(
                    "window state {}: {what}: {e}",
                    self.path.display()
                ))
            } else {
                err(&self.path, what, e)
            }
        })
    }

    /// The stored state, if any.
    pub async fn load(&self) -> Result<Option<Vec<u8>>, ProcessorError> {
        self.blocking("cannot read", |db, key| {
            let tx = db.begin_read().map_err(|e| e.to_string())?;
            let table = match tx.open_table(TABLE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            let v = table.get(key).map_err(|e| e.to_string())?;
            Ok(v.map(|v| v.value().to_vec()))
        })
        .await
    }

    /// Replace the stored state (atomically and durably).
    pub async fn save(&self, bytes: Vec<u8>) -> Result<(), ProcessorError> {
        self.blocking("cannot write", move |db, key| {
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = tx.open_table(TABLE).map_err(|e| e.to_string())?;
                table
                    .insert(key, bytes.as_slice())
                    .map_err(|e| e.to_string())?;
            }
            tx.commit().map_err(|e| e.to_string())
        })
        .await
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The thread ends once its queue is empty and closed, the database with it.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash while the database was being made leaves the temporary file, never a broken
    /// one at the state's path: the next start makes it anew, and the state works.
    #[tokio::test]
    async fn a_crash_while_creating_leaves_nothing_a_restart_refuses() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("w.redb");
        let tmp = dir.path().join("w.redb.creating");
        std::fs::write(&tmp, vec![0u8; 4096]).expect("half made");
        let store = Store::open(path.to_str().expect("utf-8"), "k")
            .await
            .expect("opens");
        assert_eq!(store.load().await.expect("reads"), None);
        store.save(b"state".to_vec()).await.expect("saves");
        assert_eq!(store.load().await.expect("reads"), Some(b"state".to_vec()));
        assert!(!tmp.exists(), "the temporary file is gone");
        drop(store);
        let again = Store::open(path.to_str().expect("utf-8"), "k")
            .await
            .expect("opens again");
        assert_eq!(again.load().await.expect("reads"), Some(b"state".to_vec()));
    }

    /// An empty file at the state's path holds no state: made anew. A file that is not a
    /// database and not empty may be someone's data: refused, not overwritten.
    #[tokio::test]
    async fn an_empty_file_is_made_anew_and_a_foreign_one_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let empty = dir.path().join("empty.redb");
        std::fs::write(&empty, b"").expect("empty");
        let store = Store::open(empty.to_str().expect("utf-8"), "k")
            .await
            .expect("opens");
        assert_eq!(store.load().await.expect("reads"), None);
        let foreign = dir.path().join("foreign.redb");
        std::fs::write(&foreign, b"not a database, but something").expect("foreign");
        let e = Store::open(foreign.to_str().expect("utf-8"), "k")
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("cannot open"), "{e}");
        assert_eq!(
            std::fs::read(&foreign).expect("kept"),
            b"not a database, but something"
        );
    }
}
