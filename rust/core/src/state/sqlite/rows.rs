//! The rows of `warmslot_executions` (journal entries and execution records) and the in-memory
//! map of where each execution's row is, kept as rows are written and pruned.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use rusqlite::{params, Connection};

use crate::state::{ExecutionRecord, JournalEntry};

/// The main connection, and where each execution id's row is.
///
/// The map is filled from the table at open (one scan) and kept as rows are written and pruned;
/// so one `SqliteDb` (one App, one process) per database file, as the journal's recovery needs.
///
/// NOTE: a unique index on the random 128-bit ids put every insert on a random leaf page: 22k req/s
/// at 52 µs CPU a request with it, 33k at 35 µs with this map (counter bot, `wrk -c64`; stores.md).
pub(super) struct Main {
    pub(super) conn: Connection,
    /// Execution id (as a number) → `seq` of its newest row.
    pub(super) rows: HashMap<u128, i64>,
}

impl Main {
    /// The main connection with the map of the rows already in its table.
    pub(super) fn open(conn: Connection) -> rusqlite::Result<Main> {
        let rows = {
            let mut stmt = conn.prepare("SELECT id, seq FROM warmslot_executions")?;
            let all = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            all.filter_map(Result::ok).map(|(id, seq)| (id_key(&id), seq)).collect()
        };
        Ok(Main { conn, rows })
    }
}

/// An execution id as the key of `Main::rows`: its 128 bits (ids are 32 hex digits), or for any
/// other string a 128-bit hash of it (lookups also compare the stored id).
pub(super) fn id_key(id: &str) -> u128 {
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

/// Rows written in a transaction: `(id, seq)`, added to `Main::rows` once it commits.
pub(super) type NewRows = Vec<(u128, i64)>;

/// Writes an execution's record: into its row when it has one (a journaled execution, `queued`),
/// else as a new row.
pub(super) fn upsert_record(
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
pub(super) fn insert_journal(
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

/// Drops pruned rows from the id → row map (an id whose map entry points at another row keeps it).
pub(super) fn forget(main: &Mutex<Main>, gone: Vec<(String, i64)>) {
    let mut main = main.lock().unwrap_or_else(|e| e.into_inner());
    for (id, seq) in &gone {
        let key = id_key(id);
        if main.rows.get(&key) == Some(seq) {
            main.rows.remove(&key);
        }
    }
}
