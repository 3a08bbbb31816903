//! The SQLite schema: the tables, the layout version (`PRAGMA user_version`), the migration of
//! older databases, and the settings every main connection is opened with.

use rusqlite::{Connection, OptionalExtension};

use super::SqliteOptions;
use crate::state::StoreError;

pub(super) const SCHEMA: &str = "
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
pub(super) const SCHEMA_VERSION: i64 = 2;

/// SQLite's page cache of the main connection (negative: KiB), 16 MiB.
const CACHE_KIB: i64 = -16 * 1024;

/// Sets up the main connection of the database at `path`: WAL mode and its settings, then the
/// schema, upgrading an older layout and refusing a newer one.
pub(super) fn prepare(conn: &Connection, path: &str, options: &SqliteOptions) -> Result<(), StoreError> {
    let synchronous = if options.synchronous_full { "FULL" } else { "NORMAL" };
    let failed = |e: rusqlite::Error| StoreError(format!("cannot prepare state database {path:?}: {e}"));
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; PRAGMA busy_timeout=5000;
         PRAGMA cache_size={CACHE_KIB};"
    ))
    .map_err(failed)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(failed)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError(format!(
            "state database {path:?} was written by a newer warmslot (schema {version}, this one knows \
             {SCHEMA_VERSION})"
        )));
    }
    migrate(conn).map_err(|e| StoreError(format!("cannot upgrade state database {path:?}: {e}")))?;
    conn.execute_batch(&format!("{SCHEMA}; PRAGMA user_version = {SCHEMA_VERSION};")).map_err(failed)
}

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
