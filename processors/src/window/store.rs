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
        let db = tokio::task::spawn_blocking(move || Database::create(&p))
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
                    let db = Arc::new(Database::create(&path).map_err(|e| e.to_string())?);
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
