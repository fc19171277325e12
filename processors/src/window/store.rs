//! The window state's checkpoint store: a redb database (one file).
//!
//! redb because it is pure Rust (no C or cmake in the build, unlike RocksDB), crash-safe (a
//! commit is atomic and durable; a `kill -9` leaves the previous checkpoint intact), small and
//! maintained. Window state is small (the open windows), so a B-tree file fits better than an
//! LSM engine. Calls run on the blocking pool, since a commit waits for the disk.
//!
//! A full disk (`ENOSPC`, `EDQUOT`) is an error that may pass: it is returned as
//! [`ProcessorError::Unavailable`], for the caller to retry with backoff, and the database is
//! closed, to be opened again by the next attempt (redb refuses every write after an I/O error
//! until it is reopened). The last complete checkpoint stays in the file meanwhile.

use std::path::PathBuf;
use std::sync::Arc;

use flow_core::processor::ProcessorError;
use redb::{Database, ReadableDatabase, TableDefinition};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("window_state");

/// One processor's state in a database file.
pub struct Store {
    /// `None` after an I/O error: opened again by the next call.
    db: Arc<std::sync::Mutex<Option<Arc<Database>>>>,
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
        let p = path.clone();
        let db = tokio::task::spawn_blocking(move || create_or_open(&p))
            .await
            .map_err(|e| err(&path, "open", e))?
            .map_err(|e| err(&path, "cannot open", e))?;
        Ok(Self {
            db: Arc::new(std::sync::Mutex::new(Some(Arc::new(db)))),
            key: key.to_owned(),
            path,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Database, &str) -> Result<T, String> + Send + 'static,
    ) -> Result<T, ProcessorError> {
        let (slot, key, path) = (self.db.clone(), self.key.clone(), self.path.clone());
        let result = tokio::task::spawn_blocking(move || {
            let mut guard = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let db = match &*guard {
                Some(db) => db.clone(),
                None => {
                    let db = Arc::new(create_or_open(&path)?);
                    *guard = Some(db.clone());
                    db
                }
            };
            let result = f(&db, &key);
            if result.as_ref().is_err_and(|m| may_pass(m)) {
                // Closed now (the last reference goes with `db`), opened again next time.
                *guard = None;
            }
            result
        })
        .await
        .map_err(|e| err(&self.path, what, e))?;
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
