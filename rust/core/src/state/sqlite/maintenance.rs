//! The background connection of a database file: it checkpoints the WAL every
//! `CHECKPOINT_EVERY` and prunes finished records every `PRUNE_EVERY`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::rows::{forget, Main};
use super::{now_unix, SqliteOptions};
use crate::state::StoreError;

const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// A WAL of more frames than this (4 MiB) is restarted after the passive checkpoint.
const RESTART_ABOVE_FRAMES: i64 = 1024;
/// How long a `RESTART` checkpoint waits for another process's readers.
const RESTART_WAIT: Duration = Duration::from_millis(20);
/// What a restarted WAL file is truncated to when it grew larger (after a burst).
pub(super) const WAL_KEEP_BYTES: i64 = 64 << 20;
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Takes the WAL's checkpoints off the main connection and starts the background thread, which
/// runs until `stop` is set.
pub(super) fn start(
    path: &str,
    main: &Arc<Mutex<Main>>,
    options: &SqliteOptions,
    stop: Arc<AtomicBool>,
) -> Result<(), StoreError> {
    // NOTE: an automatic checkpoint copies the WAL back and fsyncs inside the request that crosses
    // 1000 pages; from a background connection instead, wrk -c1 p99 went 3.9-4.1 ms → 579-649 µs
    // (support bot, 2-core VM; docs/design/stores.md).
    main.lock()
        .unwrap()
        .conn
        .execute_batch(&format!("PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit={WAL_KEEP_BYTES};"))
        .map_err(|e| StoreError(format!("cannot configure state database {path:?}: {e}")))?;
    let background =
        Connection::open(path).map_err(|e| StoreError(format!("cannot open state database {path:?}: {e}")))?;
    let _ = background.busy_timeout(Duration::from_secs(5));
    let (main, options) = (main.clone(), options.clone());
    std::thread::Builder::new()
        .name("warmslot-sqlite-checkpoint".into())
        .spawn(move || {
            let mut pruned = Instant::now();
            prune_now(&background, &main, &options);
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(CHECKPOINT_EVERY);
                checkpoint(&background, &main);
                if pruned.elapsed() >= PRUNE_EVERY {
                    pruned = Instant::now();
                    prune_now(&background, &main, &options);
                }
            }
        })
        .map_err(|e| StoreError(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(())
}

/// Copies the WAL back into the database, from the background connection.
///
/// A passive pass first; when it copied every frame it saw and the WAL is longer than
/// `RESTART_ABOVE_FRAMES`, a `RESTART` pass (holding the main connection) lets the next commit
/// write from the start of the WAL. Another process's open read transaction prevents the restart.
///
/// NOTE: passive checkpoints alone never let the WAL start over under steady commits: it reached
/// 600 MB in 30 s, a third of the slots' CPU zeroing new blocks (counter bot, `wrk -c64`); the
/// restart's hold is why SQLite's p99 is above memory's (docs/design/stores.md).
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

/// Deletes finished records past `records_ttl` and beyond `max_records`; adds each deleted row's
/// `(id, seq)` to `gone` (also those of a first statement when the second fails).
pub(super) fn prune(conn: &Connection, options: &SqliteOptions, gone: &mut Vec<(String, i64)>) -> rusqlite::Result<()> {
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
        log::warn!("could not prune execution records: {e}");
    }
    forget(main, gone);
}
