//! The embedded durable store: per-key state, the journal of accepted events and the execution
//! records, in one SQLite file (WAL mode) shared by every pipeline of the app.
//!
//! - **Journal.** An async (`202`) event is inserted into `warmslot_executions` with status
//!   `queued` before its `202` is sent. The group-commit writer (`state::group`) batches the
//!   arrivals of a moment into one transaction and calls each one's `done` once it commits.
//! - **Exactly-once state effect.** A succeeded execution's new key state and its record (which
//!   turns its journal row from `queued` to `succeeded`) are written in one transaction: after a
//!   crash either both are there or neither, so a recovered event never applies twice.
//! - **Recovery.** On start the engine re-admits the `queued` rows in arrival (`seq`) order.
//! - **Indexes.** Only journaled rows while `queued` and rows with a delivery id are indexed: a
//!   sync execution's record costs one appended row. The id → row map is kept in memory (see
//!   `Main`), so one warmslot process uses a database file at a time; listing failed executions
//!   (an admin route) scans the table.
//! - **Retention.** Finished records older than `records_ttl`, and all but the newest
//!   `max_records`, are deleted by the background connection (every `PRUNE_EVERY`).
//!
//! `synchronous=NORMAL` (the default) in WAL mode: a commit survives a crash of the process; the
//! last commits before a power loss may be lost. `synchronous=FULL` fsyncs every commit.
//! A background connection checkpoints the WAL every 200 ms. Reads and writes share one
//! connection behind a mutex: events of one key are already serialised by the lanes, and a
//! commit is a two-row upsert.
//!
//! The modules: `schema` (tables and migrations), `rows` (the executions table's rows and the id
//! → row map), `writer` (the group-commit backend), `maintenance` (checkpoint and prune) and
//! `store` (the per-pipeline `StateStore`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use crate::state::group::GroupWriter;
use crate::state::{StateStore, StoreError};

mod maintenance;
mod rows;
mod schema;
mod store;
#[cfg(test)]
pub(in crate::state) mod tests;
mod writer;

use rows::Main;
pub use store::SqliteStore;

fn err(e: rusqlite::Error) -> StoreError {
    StoreError(format!("sqlite: {e}"))
}

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// How the database is opened.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// `PRAGMA synchronous=FULL` (fsync at every commit: a power cut loses nothing acknowledged)
    /// instead of `NORMAL` (a power cut may lose the last commits; a process crash loses none).
    pub synchronous_full: bool,
    /// Finished execution records older than this are deleted.
    pub records_ttl: Duration,
    /// At most this many finished execution records are kept (the oldest go first).
    pub max_records: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions { synchronous_full: false, records_ttl: Duration::from_secs(7 * 24 * 3600), max_records: 100_000 }
    }
}

/// One SQLite database file, shared by every pipeline of the app: its main connection (behind a
/// mutex), its group-commit writer and its background checkpoint thread.
pub struct SqliteDb {
    main: Arc<Mutex<Main>>,
    path: String,
    writer: writer::Writer,
    /// Stops the background checkpoint thread when the database is dropped.
    stop: Arc<AtomicBool>,
}

impl Drop for SqliteDb {
    fn drop(&mut self) {
        self.flush();
        self.stop.store(true, Ordering::Release);
    }
}

impl SqliteDb {
    /// Opens (creating if needed) the database at `path` (`:memory:` for a private in-memory one).
    pub fn open(path: &str) -> Result<Arc<SqliteDb>, StoreError> {
        SqliteDb::open_with(path, SqliteOptions::default())
    }

    pub fn open_with(path: &str, options: SqliteOptions) -> Result<Arc<SqliteDb>, StoreError> {
        let conn =
            Connection::open(path).map_err(|e| StoreError(format!("cannot open state database {path:?}: {e}")))?;
        schema::prepare(&conn, path, &options)?;
        let main = Main::open(conn).map_err(|e| StoreError(format!("cannot prepare state database {path:?}: {e}")))?;
        let main = Arc::new(Mutex::new(main));
        let stop = Arc::new(AtomicBool::new(false));
        if path != ":memory:" && !path.is_empty() {
            maintenance::start(path, &main, &options, stop.clone())?;
        }
        let writer = GroupWriter::start("warmslot-sqlite-journal", writer::SqliteWriter { main: main.clone() })?;
        Ok(Arc::new(SqliteDb { main, path: path.to_string(), writer, stop }))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The store of one pipeline's keys.
    pub fn store(self: &Arc<Self>, pipeline: &str) -> Arc<dyn StateStore> {
        Arc::new(SqliteStore { db: self.clone(), pipeline: pipeline.into() })
    }

    /// Waits until every journal entry and outcome sent so far is written.
    pub fn flush(&self) {
        self.writer.flush();
    }

    fn main(&self) -> std::sync::MutexGuard<'_, Main> {
        self.main.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A second group-commit backend on this database (for the tests of `state::group`).
    #[cfg(test)]
    pub(in crate::state) fn group_backend(&self) -> writer::SqliteWriter {
        writer::SqliteWriter { main: self.main.clone() }
    }
}
