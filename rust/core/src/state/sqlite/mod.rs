//! The embedded durable store: per-key state, the journal of accepted events and the execution
//! records, in one SQLite file (WAL mode) shared by every pipeline of the app.
//!
//! - **Journal.** An async (`202`) event is inserted into `warmslot_executions` with status
//!   `queued` before its `202` is sent. A writer thread batches the arrivals of a moment into one
//!   transaction (group commit) and calls each one's `done` when the batch is written.
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

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use rusqlite::{params, Connection, OptionalExtension};

use crate::state::{CommitItem, ExecutionRecord, JournalEntry, Journaled, SeenDelivery, StateStore, StoreError};

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

enum Write {
    Journal(Box<str>, JournalEntry, Journaled),
    Outcome(Box<str>, ExecutionRecord),
    /// Answered once everything sent before it is written.
    Flush(Sender<()>),
}

/// The main connection, and where each execution id's row is.
///
/// NOTE: execution ids are 128 random bits, so a unique index on them put every insert on a random
/// leaf page: each execution wrote about one more 4 KiB page to the WAL, most of a commit's cost.
/// Measured (counter bot, 2 thread slots, `wrk -c64`, sync, one run after another): 22k req/s at
/// 52 µs of CPU per request with that index, 33k at 35 µs with this map (memory store: 47-58k at
/// 22-27 µs). So the id → row map lives in memory, filled from the table at open (one scan) and
/// kept as rows are written and pruned. Its limit: one `SqliteDb` (one App, one process) per
/// database file, which the journal's recovery needs anyway.
struct Main {
    conn: Connection,
    /// Execution id (as a number) → `seq` of its newest row.
    rows: HashMap<u128, i64>,
}

/// An execution id as the key of `Main::rows`: its 128 bits (ids are 32 hex digits), or for any
/// other string a 128-bit hash of it (lookups also compare the stored id).
fn id_key(id: &str) -> u128 {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        if let Ok(k) = u128::from_str_radix(id, 16) {
            return k;
        }
    }
    let half = |salt: u8| {
        let mut h = std::hash::DefaultHasher::new();
        (salt, id).hash(&mut h);
        h.finish() as u128
    };
    half(1) << 64 | half(2)
}

pub struct SqliteDb {
    main: Arc<Mutex<Main>>,
    path: String,
    writes: Sender<Write>,
    /// Stops the background checkpoint thread when the database is dropped.
    stop: Arc<AtomicBool>,
}

impl Drop for SqliteDb {
    fn drop(&mut self) {
        self.flush();
        self.stop.store(true, Ordering::Release);
    }
}

const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// SQLite's page cache of the main connection (negative: KiB), 16 MiB.
const CACHE_KIB: i64 = -16 * 1024;
/// A WAL of more frames than this (4 MiB) is restarted after the passive checkpoint.
const RESTART_ABOVE_FRAMES: i64 = 1024;
/// How long a `RESTART` checkpoint waits for another process's readers.
const RESTART_WAIT: Duration = Duration::from_millis(20);
/// What a restarted WAL file is truncated to when it grew larger (after a burst).
const WAL_KEEP_BYTES: i64 = 64 << 20;
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// Most writes one group commit takes.
const MAX_GROUP: usize = 512;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS warmslot_state (
        pipeline TEXT NOT NULL,
        key TEXT NOT NULL,
        state BLOB NOT NULL,
        updated_at REAL NOT NULL DEFAULT (unixepoch('subsec')),
        PRIMARY KEY (pipeline, key)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS warmslot_executions (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        pipeline TEXT NOT NULL,
        key TEXT,
        delivery TEXT,
        body BLOB,
        headers BLOB,
        received_at REAL NOT NULL,
        status TEXT NOT NULL,
        http_status INTEGER,
        reply BLOB,
        record TEXT,
        finished_at REAL
    );
    CREATE INDEX IF NOT EXISTS warmslot_executions_queued
        ON warmslot_executions (pipeline, seq) WHERE status = 'queued';
    CREATE INDEX IF NOT EXISTS warmslot_executions_by_delivery
        ON warmslot_executions (pipeline, received_at) WHERE delivery IS NOT NULL;";

/// The layout this code writes (`PRAGMA user_version`): 2 since execution ids left the file's
/// unique index (`migrate`). Databases of a higher version are refused; once upgraded, a database
/// cannot be used by an older warmslot (its commits would fail).
const SCHEMA_VERSION: i64 = 2;

/// Databases written before the id → row map moved into memory had a unique index on
/// `warmslot_executions.id`: rebuild the table without it (once, at open).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let sql: Option<String> = conn
        .query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'warmslot_executions'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if !sql.is_some_and(|sql| sql.contains("UNIQUE")) {
        return Ok(());
    }
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         ALTER TABLE warmslot_executions RENAME TO warmslot_executions_old;
         DROP INDEX IF EXISTS warmslot_executions_queued;
         DROP INDEX IF EXISTS warmslot_executions_by_delivery;
         {SCHEMA}
         INSERT INTO warmslot_executions SELECT * FROM warmslot_executions_old;
         DROP TABLE warmslot_executions_old;
         COMMIT;"
    ))
}

/// Rows written in a transaction: `(id, seq)`, added to `Main::rows` once it commits.
type NewRows = Vec<(u128, i64)>;

fn upsert_record(
    conn: &Connection,
    rows: &HashMap<u128, i64>,
    new: &mut NewRows,
    pipeline: &str,
    r: &ExecutionRecord,
) -> rusqlite::Result<()> {
    let key = id_key(&r.id);
    // An execution with a row already (a journaled one, `queued`) gets its outcome in that row.
    if let Some(seq) = rows.get(&key) {
        let finished = conn
            .prepare_cached(
                "UPDATE warmslot_executions SET status = ?3, http_status = ?4, reply = ?5, record = ?6,
                     delivery = ?7, finished_at = unixepoch('subsec'), body = NULL, headers = NULL
                 WHERE seq = ?1 AND id = ?2",
            )?
            .execute(params![seq, &*r.id, r.status, r.http_status, &r.reply[..], r.json, r.delivery.as_deref()])?;
        if finished > 0 {
            return Ok(());
        }
    }
    conn.prepare_cached(
        "INSERT INTO warmslot_executions
             (id, pipeline, key, delivery, received_at, status, http_status, reply, record, finished_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, unixepoch('subsec'))",
    )?
    .execute(params![
        &*r.id,
        pipeline,
        r.key.as_deref(),
        r.delivery.as_deref(),
        r.received_unix,
        r.status,
        r.http_status,
        &r.reply[..],
        r.json,
    ])?;
    new.push((key, conn.last_insert_rowid()));
    Ok(())
}

/// Journals an accepted event (once: an id that already has a row is left as it is).
fn insert_journal(
    conn: &Connection,
    rows: &HashMap<u128, i64>,
    new: &mut NewRows,
    pipeline: &str,
    e: &JournalEntry,
) -> rusqlite::Result<()> {
    let key = id_key(&e.id);
    if rows.contains_key(&key) || new.iter().any(|(k, _)| *k == key) {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO warmslot_executions (id, pipeline, key, delivery, body, headers, received_at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued')",
    )?
    .execute(params![
        &*e.id,
        pipeline,
        e.key.as_deref(),
        e.delivery.as_deref(),
        &e.body[..],
        &e.headers[..],
        e.received_unix
    ])?;
    new.push((key, conn.last_insert_rowid()));
    Ok(())
}

/// The group-commit writer: takes what has arrived (up to `MAX_GROUP`), writes it in one
/// transaction, then tells each journal write's waiter. Ends when the database is dropped.
fn write_groups(main: Arc<Mutex<Main>>, writes: Receiver<Write>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while crate::state::next_group(&writes, MAX_GROUP, &mut group) {
        let result = {
            let mut guard = main.lock().unwrap_or_else(|e| e.into_inner());
            let Main { conn, rows } = &mut *guard;
            let mut new = NewRows::new();
            let written = (|| {
                let tx = conn.transaction()?;
                for w in &group {
                    match w {
                        Write::Journal(pipeline, entry, _) => insert_journal(&tx, rows, &mut new, pipeline, entry)?,
                        Write::Outcome(pipeline, record) => upsert_record(&tx, rows, &mut new, pipeline, record)?,
                        Write::Flush(_) => {}
                    }
                }
                tx.commit()
            })()
            .map_err(|e| e.to_string());
            if written.is_ok() {
                rows.extend(new);
            }
            written
        };
        for w in group.drain(..) {
            match w {
                Write::Journal(_, _, done) => done(result.clone().map_err(|e| StoreError(format!("sqlite: {e}")))),
                Write::Outcome(..) => {
                    if let Err(e) = &result {
                        eprintln!("warmslot: could not record an execution outcome: {e}");
                    }
                }
                Write::Flush(done) => drop(done.send(())),
            }
        }
    }
}

/// Copies the WAL back into the database, from the background connection.
///
/// NOTE: a passive checkpoint alone never lets the WAL start over under steady writes: a writer
/// restarts the WAL only if every frame was checkpointed when its transaction began, and commits
/// keep appending while the checkpoint runs. Measured (2 thread slots, counter bot, `wrk -c64`):
/// the WAL reached 600 MB in 30 s, and a third of the slots' CPU went to ext4 zeroing the new
/// blocks that every commit appended. So when the passive pass copied every frame it saw and the
/// WAL is longer than `RESTART_ABOVE_FRAMES`, a `RESTART` checkpoint copies the frames appended
/// meanwhile, holding the main connection so that none of our commits or loads waits in SQLite's
/// busy handler; the next commit then writes from the start of the WAL, over pages the OS still
/// caches. That hold (the last frames, and with `synchronous=NORMAL` an fsync of the database
/// file) stalls commits, loads and journal writes: it is why SQLite's p99 at 64 connections is
/// higher than the memory store's. When another process holds a read transaction (a `sqlite3`
/// shell, a backup), the passive pass cannot copy every frame and no restart is tried: the WAL
/// then grows until that reader lets go.
fn checkpoint(background: &Connection, main: &Mutex<Main>) {
    // (busy, frames in the WAL when it began, frames checkpointed).
    let passive = background.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    if matches!(passive, Ok((0, log, done)) if log == done && log > RESTART_ABOVE_FRAMES) {
        let _quiet = main.lock().unwrap_or_else(|e| e.into_inner());
        // A reader of another process that began meanwhile can still hold the restart up: give
        // up after a moment rather than stall our commits for the whole busy timeout.
        let _ = background.busy_timeout(RESTART_WAIT);
        let _ = background.execute_batch("PRAGMA wal_checkpoint(RESTART);");
        let _ = background.busy_timeout(Duration::from_secs(5));
    }
}

/// Deletes finished records past `records_ttl` and beyond `max_records`; returns their ids.
/// Deletes finished records past `records_ttl` and beyond `max_records`; adds each deleted row's
/// `(id, seq)` to `gone` (also those of a first statement when the second fails).
fn prune(conn: &Connection, options: &SqliteOptions, gone: &mut Vec<(String, i64)>) -> rusqlite::Result<()> {
    let oldest = now_unix() - options.records_ttl.as_secs_f64();
    let row = |r: &rusqlite::Row<'_>| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?));
    {
        let mut stmt = conn.prepare(
            "DELETE FROM warmslot_executions WHERE status != 'queued' AND finished_at < ?1 RETURNING id, seq",
        )?;
        gone.extend(stmt.query_map(params![oldest], row)?.filter_map(Result::ok));
    }
    let mut stmt = conn.prepare(
        "DELETE FROM warmslot_executions WHERE status != 'queued' AND seq <= (
             SELECT seq FROM warmslot_executions WHERE status != 'queued' ORDER BY seq DESC LIMIT 1 OFFSET ?1)
         RETURNING id, seq",
    )?;
    gone.extend(stmt.query_map(params![options.max_records as i64], row)?.filter_map(Result::ok));
    Ok(())
}

fn prune_now(background: &Connection, main: &Mutex<Main>, options: &SqliteOptions) {
    let mut gone = Vec::new();
    if let Err(e) = prune(background, options, &mut gone) {
        eprintln!("warmslot: could not prune execution records: {e}");
    }
    forget(main, gone);
}

/// Drops pruned rows from the id → row map (an id whose map entry points at another row keeps it).
fn forget(main: &Mutex<Main>, gone: Vec<(String, i64)>) {
    let mut main = main.lock().unwrap_or_else(|e| e.into_inner());
    for (id, seq) in &gone {
        let key = id_key(id);
        if main.rows.get(&key) == Some(seq) {
            main.rows.remove(&key);
        }
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
        let synchronous = if options.synchronous_full { "FULL" } else { "NORMAL" };
        let prepare = |e: rusqlite::Error| StoreError(format!("cannot prepare state database {path:?}: {e}"));
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; PRAGMA busy_timeout=5000;
             PRAGMA cache_size={CACHE_KIB};"
        ))
        .map_err(prepare)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(prepare)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError(format!(
                "state database {path:?} was written by a newer warmslot (schema {version}, this one knows \
                 {SCHEMA_VERSION})"
            )));
        }
        migrate(&conn).map_err(|e| StoreError(format!("cannot upgrade state database {path:?}: {e}")))?;
        conn.execute_batch(&format!("{SCHEMA}; PRAGMA user_version = {SCHEMA_VERSION};")).map_err(prepare)?;
        let rows = {
            let mut stmt = conn.prepare("SELECT id, seq FROM warmslot_executions").map_err(prepare)?;
            let all = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(prepare)?;
            all.filter_map(Result::ok).map(|(id, seq)| (id_key(&id), seq)).collect()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Main { conn, rows }));
        if path != ":memory:" && !path.is_empty() {
            // NOTE: with SQLite's automatic checkpoints, the commit that crosses 1000 WAL pages
            // copies them back into the database and fsyncs, inside the request: wrk -c1 against
            // the support bot saw p99 of 3.9-4.1 ms (p50 66-116 µs). Checkpointing from a
            // background connection takes that off the request path: p99 579-649 µs (p50 89-104
            // µs), for some throughput at 64 connections (16.0-16.4k req/s against 18.1-19.3k).
            shared
                .lock()
                .unwrap()
                .conn
                .execute_batch(&format!("PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit={WAL_KEEP_BYTES};"))
                .map_err(|e| StoreError(format!("cannot configure state database {path:?}: {e}")))?;
            let background =
                Connection::open(path).map_err(|e| StoreError(format!("cannot open state database {path:?}: {e}")))?;
            let _ = background.busy_timeout(Duration::from_secs(5));
            let stop = stop.clone();
            let options = options.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("warmslot-sqlite-checkpoint".into())
                .spawn(move || {
                    let mut pruned = Instant::now();
                    prune_now(&background, &shared, &options);
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(CHECKPOINT_EVERY);
                        checkpoint(&background, &shared);
                        if pruned.elapsed() >= PRUNE_EVERY {
                            pruned = Instant::now();
                            prune_now(&background, &shared, &options);
                        }
                    }
                })
                .map_err(|e| StoreError(format!("cannot start the checkpoint thread: {e}")))?;
        }
        let (writes, queue) = crossbeam_channel::unbounded();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("warmslot-sqlite-journal".into())
            .spawn(move || write_groups(writer, queue))
            .map_err(|e| StoreError(format!("cannot start the journal thread: {e}")))?;
        Ok(Arc::new(SqliteDb { main: shared, path: path.to_string(), writes, stop }))
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
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.writes.send(Write::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    fn main(&self) -> std::sync::MutexGuard<'_, Main> {
        self.main.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct SqliteStore {
    db: Arc<SqliteDb>,
    pipeline: Box<str>,
}

fn select_state(conn: &Connection, pipeline: &str, key: &str) -> Result<Option<Bytes>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT state FROM warmslot_state WHERE pipeline = ?1 AND key = ?2").map_err(err)?;
    stmt.query_row(params![pipeline, key], |row| row.get::<_, Vec<u8>>(0))
        .optional()
        .map(|v| v.map(Bytes::from))
        .map_err(err)
}

impl SqliteStore {
    /// Writes the new states and records of `items` in one transaction: all of them or none.
    fn write_in_one_transaction(&self, items: Vec<CommitItem<'_>>) -> Result<(), StoreError> {
        let mut guard = self.db.main();
        let Main { conn, rows } = &mut *guard;
        let mut new = NewRows::new();
        let tx = conn.transaction().map_err(err)?;
        for (key, state, record) in items {
            if let (Some(key), Some(state)) = (key, state) {
                tx.prepare_cached(
                    "INSERT INTO warmslot_state (pipeline, key, state) VALUES (?1, ?2, ?3)
                     ON CONFLICT (pipeline, key) DO UPDATE SET state = excluded.state, updated_at = unixepoch('subsec')",
                )
                .map_err(err)?
                .execute(params![&*self.pipeline, key, &state[..]])
                .map_err(err)?;
            }
            if let Some(record) = record {
                upsert_record(&tx, rows, &mut new, &self.pipeline, record).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        rows.extend(new);
        Ok(())
    }
}

impl StateStore for SqliteStore {
    fn load(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        select_state(&self.db.main().conn, &self.pipeline, key)
    }

    // NOTE: one read transaction for a batch's keys: each autocommit SELECT takes and drops
    // SQLite's shared WAL lock (fcntl calls on the -shm file), about 6% of a slot's CPU with
    // the counter bot at 64 connections.
    fn load_many(&self, keys: &[&str]) -> Vec<Result<Option<Bytes>, StoreError>> {
        let mut main = self.db.main();
        let tx = match main.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let e = err(e);
                return keys.iter().map(|_| Err(e.clone())).collect();
            }
        };
        let out = keys.iter().map(|k| select_state(&tx, &self.pipeline, k)).collect();
        let _ = tx.commit();
        out
    }

    fn commit(&self, key: &str, state: Bytes) -> Result<(), StoreError> {
        self.commit_execution(Some(key), Some(state), None)
    }

    fn commit_execution(
        &self,
        key: Option<&str>,
        state: Option<Bytes>,
        record: Option<&ExecutionRecord>,
    ) -> Result<(), StoreError> {
        self.write_in_one_transaction(vec![(key, state, record)])
    }

    // NOTE: one transaction per batch instead of one per execution: each commit writes the
    // state row and the execution record (about 8 WAL pages); a batch shares the page writes.
    fn commit_executions(&self, items: Vec<CommitItem<'_>>) -> (usize, Option<StoreError>) {
        let result = self.write_in_one_transaction(items);
        match result {
            Ok(()) => (usize::MAX, None),
            Err(e) => (0, Some(e)), // rolled back: none of them
        }
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn commits_in_batches(&self) -> bool {
        true
    }

    fn journal(&self, entry: JournalEntry, done: Journaled) {
        if let Err(e) = self.db.writes.send(Write::Journal(self.pipeline.clone(), entry, done)) {
            if let Write::Journal(_, _, done) = e.into_inner() {
                done(Err(StoreError("the journal writer has stopped".into())));
            }
        }
    }

    fn record_outcome(&self, record: ExecutionRecord) {
        let _ = self.db.writes.send(Write::Outcome(self.pipeline.clone(), record));
    }

    fn flush(&self) {
        self.db.flush();
    }

    fn record(&self, id: &str) -> Option<ExecutionRecord> {
        let main = self.db.main();
        let conn = &main.conn;
        let seq = *main.rows.get(&id_key(id))?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, key, delivery, received_at, status, http_status, reply, record FROM warmslot_executions
                 WHERE seq = ?1 AND id = ?2 AND pipeline = ?3 AND status != 'queued'",
            )
            .ok()?;
        stmt.query_row(params![seq, id, &*self.pipeline], |row| {
            let status: String = row.get(4)?;
            Ok(ExecutionRecord {
                id: row.get::<_, String>(0)?.into(),
                key: row.get::<_, Option<String>>(1)?.map(Into::into),
                delivery: row.get::<_, Option<String>>(2)?.map(Into::into),
                received_unix: row.get(3)?,
                status: match status.as_str() {
                    "succeeded" => "succeeded",
                    "timed_out" => "timed_out",
                    _ => "failed",
                },
                http_status: row.get(5)?,
                reply: Bytes::from(row.get::<_, Vec<u8>>(6)?),
                json: row.get(7)?,
            })
        })
        .optional()
        .ok()
        .flatten()
    }

    fn unfinished(&self) -> Result<Vec<JournalEntry>, StoreError> {
        let main = self.db.main();
        let conn = &main.conn;
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, key, delivery, body, headers, received_at FROM warmslot_executions
                 WHERE status = 'queued' AND pipeline = ?1 ORDER BY seq",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![&*self.pipeline], |row| {
                Ok(JournalEntry {
                    id: row.get::<_, String>(0)?.into(),
                    key: row.get::<_, Option<String>>(1)?.map(Into::into),
                    delivery: row.get::<_, Option<String>>(2)?.map(Into::into),
                    body: Bytes::from(row.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default()),
                    headers: Bytes::from(row.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default()),
                    received_unix: row.get(5)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn deliveries(&self, since_unix: f64, limit: usize) -> Vec<SeenDelivery> {
        let main = self.db.main();
        let conn = &main.conn;
        let Ok(mut stmt) = conn.prepare_cached(
            "SELECT delivery, id, received_at FROM warmslot_executions
             WHERE pipeline = ?1 AND delivery IS NOT NULL AND received_at >= ?2 AND status != 'queued'
             ORDER BY received_at DESC LIMIT ?3",
        ) else {
            return Vec::new();
        };
        let rows = stmt.query_map(params![&*self.pipeline, since_unix, limit as i64], |row| {
            Ok(SeenDelivery { delivery: row.get(0)?, execution_id: row.get(1)?, received_unix: row.get(2)? })
        });
        rows.map(|r| r.filter_map(Result::ok).collect()).unwrap_or_default()
    }

    fn list(&self, status: &str, limit: usize) -> Vec<String> {
        let main = self.db.main();
        let conn = &main.conn;
        let Ok(mut stmt) = conn.prepare_cached(
            "SELECT record FROM warmslot_executions WHERE status = ?1 AND pipeline = ?2 AND record IS NOT NULL
             ORDER BY seq DESC LIMIT ?3",
        ) else {
            return Vec::new();
        };
        let rows = stmt.query_map(params![status, &*self.pipeline, limit as i64], |row| row.get::<_, String>(0));
        rows.map(|r| r.filter_map(Result::ok).collect()).unwrap_or_default()
    }

    fn does_io(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private directory for one test's database files, removed when the test ends, whether it
    /// passed or not.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("warmslot-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn join(&self, file: &str) -> std::path::PathBuf {
            self.0.join(file)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_batch_of_commits_lands_in_one_transaction() {
        let dir = TempDir::new("sqlite-batch");
        let path = dir.join("state.db");
        let db = SqliteDb::open(path.to_str().unwrap()).unwrap();
        let store = db.store("p");
        let items: Vec<CommitItem<'_>> = vec![
            (Some("a"), Some(Bytes::from_static(b"{\"n\":1}")), None),
            (Some("b"), Some(Bytes::from_static(b"{\"n\":2}")), None),
            (None, None, None),
        ];
        let (committed, error) = store.commit_executions(items);
        assert!(error.is_none() && committed >= 3, "{error:?}");
        assert_eq!(store.load("a").unwrap().as_deref(), Some(&b"{\"n\":1}"[..]));
        assert_eq!(store.load("b").unwrap().as_deref(), Some(&b"{\"n\":2}"[..]));
        drop(db);
    }

    /// The WAL header's checkpoint sequence number: SQLite adds one each time the WAL starts over.
    fn wal_restarts(path: &std::path::Path) -> u32 {
        let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
        wal.get(12..16).map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()))
    }

    #[test]
    fn the_wal_starts_over_under_steady_commits() {
        let dir = TempDir::new("sqlite-wal");
        let path = dir.join("state.db");
        let db = SqliteDb::open(path.to_str().unwrap()).unwrap();
        let first = wal_restarts(&path);
        let stop = Arc::new(AtomicBool::new(false));
        // Two slots commit batches back to back: the checkpoint never finds a quiet moment.
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (store, stop) = (db.store(&format!("p{w}")), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        let keys: Vec<String> = (0..32).map(|i| format!("k{}", (n + i) % 64)).collect();
                        let items =
                            keys.iter().map(|k| (Some(k.as_str()), Some(Bytes::from(vec![b'x'; 300])), None)).collect();
                        assert!(store.commit_executions(items).1.is_none());
                        n += 32;
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut largest = 0;
        while wal_restarts(&path) < first + 5 && Instant::now() < deadline {
            let wal = std::fs::metadata(path.with_extension("db-wal")).map(|m| m.len()).unwrap_or(0);
            largest = largest.max(wal);
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Release);
        writers.into_iter().for_each(|w| w.join().unwrap());
        assert!(
            wal_restarts(&path) >= first + 5,
            "the WAL started over {} times in 60 s (largest {largest} bytes)",
            wal_restarts(&path) - first
        );
        assert!(largest <= WAL_KEEP_BYTES as u64, "WAL of {largest} bytes");
        drop(db);
    }

    #[test]
    fn state_survives_reopening_and_pipelines_are_separate() {
        let dir = TempDir::new("sqlite-test");
        let path = dir.join("state.db");
        let path = path.to_str().unwrap();
        {
            let db = SqliteDb::open(path).unwrap();
            let a = db.store("a");
            let b = db.store("b");
            assert_eq!(a.load("k").unwrap(), None);
            a.commit("k", Bytes::from_static(b"{\"n\":1}")).unwrap();
            a.commit("k", Bytes::from_static(b"{\"n\":2}")).unwrap();
            b.commit("k", Bytes::from_static(b"{\"other\":true}")).unwrap();
        }
        let db = SqliteDb::open(path).unwrap();
        assert_eq!(db.store("a").load("k").unwrap().unwrap(), Bytes::from_static(b"{\"n\":2}"));
        assert_eq!(db.store("b").load("k").unwrap().unwrap(), Bytes::from_static(b"{\"other\":true}"));
        assert_eq!(db.store("c").load("k").unwrap(), None);
    }

    fn entry(id: &str, key: &str, delivery: Option<&str>) -> JournalEntry {
        JournalEntry {
            id: id.into(),
            key: Some(key.into()),
            delivery: delivery.map(Into::into),
            body: Bytes::from_static(b"{\"user\":\"u\"}"),
            headers: Bytes::from_static(b"webhook-id: d1\n"),
            received_unix: now_unix(),
        }
    }

    fn record(id: &str, delivery: Option<&str>, status: &'static str) -> ExecutionRecord {
        ExecutionRecord {
            id: id.into(),
            key: Some("u".into()),
            delivery: delivery.map(Into::into),
            received_unix: now_unix(),
            status,
            http_status: if status == "succeeded" { 200 } else { 500 },
            reply: Bytes::from_static(b"{\"ok\":1}"),
            json: format!("{{\"id\":\"{id}\",\"status\":\"{status}\"}}"),
        }
    }

    fn journal(store: &Arc<dyn StateStore>, e: JournalEntry) {
        let (tx, rx) = std::sync::mpsc::channel();
        store.journal(e, Box::new(move |r| tx.send(r).unwrap()));
        rx.recv().unwrap().unwrap();
    }

    #[test]
    fn a_database_with_the_old_unique_id_index_is_upgraded_and_keeps_its_records() {
        let dir = TempDir::new("sqlite-migrate");
        let path = dir.join("old.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(&SCHEMA.replace("id TEXT NOT NULL,", "id TEXT NOT NULL UNIQUE,")).unwrap();
            upsert_record(&old, &HashMap::new(), &mut Vec::new(), "p", &record("e1", Some("d1"), "succeeded")).unwrap();
            insert_journal(&old, &HashMap::new(), &mut Vec::new(), "p", &entry("q1", "u", None)).unwrap();
        }
        let db = SqliteDb::open(path.to_str().unwrap()).unwrap();
        let sql: String = db
            .main()
            .conn
            .query_row("SELECT sql FROM sqlite_master WHERE name = 'warmslot_executions'", [], |r| r.get(0))
            .unwrap();
        assert!(!sql.contains("UNIQUE"), "{sql}");
        let p = db.store("p");
        assert_eq!(p.record("e1").unwrap().delivery.as_deref(), Some("d1"), "kept across the upgrade");
        p.commit_execution(None, None, Some(&record("e2", None, "succeeded"))).unwrap();
        assert_eq!(p.record("e2").unwrap().status, "succeeded");
        // The journaled event is still unfinished, and finishing it leaves nothing queued.
        let unfinished: Vec<_> = p.unfinished().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(unfinished, vec!["q1".into()] as Vec<Box<str>>);
        p.commit_execution(Some("u"), Some(Bytes::from_static(b"{}")), Some(&record("q1", None, "succeeded"))).unwrap();
        drop((p, db));
        let db = SqliteDb::open(path.to_str().unwrap()).unwrap();
        let p = db.store("p");
        assert!(p.unfinished().unwrap().is_empty(), "finished once, after a reopen too");
        assert_eq!(p.record("q1").unwrap().status, "succeeded");
        let version: i64 = db.main().conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        db.main().conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop((p, db));
        let refused = SqliteDb::open(path.to_str().unwrap()).err().unwrap();
        assert!(refused.to_string().contains("written by a newer warmslot"), "{refused}");
    }

    #[test]
    fn journal_commit_and_recovery() {
        let dir = TempDir::new("journal-test");
        let path = dir.join("j.db");
        let path = path.to_str().unwrap();
        {
            let db = SqliteDb::open(path).unwrap();
            let p = db.store("p");
            journal(&p, entry("e1", "u", Some("d1")));
            journal(&p, entry("e2", "u", None));
            journal(&p, entry("e3", "v", None));
            journal(&db.store("other"), entry("e4", "u", None));
            // e1 succeeds: state and record in one transaction; its journal entry is done.
            p.commit_execution(
                Some("u"),
                Some(Bytes::from_static(b"{\"n\":1}")),
                Some(&record("e1", Some("d1"), "succeeded")),
            )
            .unwrap();
            let unfinished: Vec<_> = p.unfinished().unwrap().into_iter().map(|e| e.id).collect();
            assert_eq!(unfinished, vec!["e2".into(), "e3".into()] as Vec<Box<str>>, "in journal order");
            // A repeated journal write of a finished execution does not bring it back.
            journal(&p, entry("e1", "u", Some("d1")));
            assert_eq!(p.unfinished().unwrap().len(), 2);
            p.record_outcome(record("e3", None, "failed"));
        }
        let db = SqliteDb::open(path).unwrap();
        let p = db.store("p");
        let unfinished = p.unfinished().unwrap();
        assert_eq!(unfinished.len(), 1, "the failed e3 is recorded; only e2 is left");
        assert_eq!(&*unfinished[0].id, "e2");
        assert_eq!(&unfinished[0].headers[..], b"webhook-id: d1\n");
        assert_eq!(p.load("u").unwrap().unwrap(), Bytes::from_static(b"{\"n\":1}"));
        let r = p.record("e1").unwrap();
        assert_eq!((r.status, r.http_status, &r.reply[..]), ("succeeded", 200, &b"{\"ok\":1}"[..]));
        assert!(p.record("e2").is_none(), "an unfinished execution has no record yet");
        assert!(db.store("other").record("e1").is_none(), "records are per pipeline");
        let seen = p.deliveries(0.0, 10);
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].delivery.as_str(), seen[0].execution_id.as_str()), ("d1", "e1"));
        assert_eq!(p.list("failed", 10), vec!["{\"id\":\"e3\",\"status\":\"failed\"}".to_string()]);
    }

    #[test]
    fn prune_keeps_the_newest_finished_records_and_every_queued_one() {
        let db = SqliteDb::open(":memory:").unwrap();
        let p = db.store("p");
        for i in 0..5 {
            p.commit_execution(None, None, Some(&record(&format!("r{i}"), None, "succeeded"))).unwrap();
        }
        journal(&p, entry("q", "u", None));
        let options = SqliteOptions { max_records: 2, ..SqliteOptions::default() };
        let mut gone = Vec::new();
        prune(&db.main().conn, &options, &mut gone).unwrap();
        forget(&db.main, gone);
        assert!(p.record("r2").is_none() && p.record("r3").is_some() && p.record("r4").is_some());
        assert_eq!(p.unfinished().unwrap().len(), 1, "queued events are never pruned");
        let options = SqliteOptions { records_ttl: Duration::ZERO, ..SqliteOptions::default() };
        std::thread::sleep(Duration::from_millis(5)); // finished_at must be in the past
        let mut gone = Vec::new();
        prune(&db.main().conn, &options, &mut gone).unwrap();
        forget(&db.main, gone);
        assert!(p.record("r4").is_none(), "older than records_ttl");
        assert_eq!(p.unfinished().unwrap().len(), 1);
    }

    #[test]
    fn unopenable_path_is_a_clear_error() {
        let e = SqliteDb::open("/nonexistent-dir/x/state.db").err().unwrap();
        assert!(e.to_string().contains("cannot open state database"), "{e}");
    }
}
