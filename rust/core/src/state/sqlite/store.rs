//! The store of one pipeline's keys in a `SqliteDb`: loads and commits on the main connection,
//! journal and outcome writes through the database's group-commit writer, and the reads of the
//! journal and the records.

use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{id_key, upsert_record, Main, NewRows};
use super::{err, SqliteDb};
use crate::state::{CommitItem, ExecutionRecord, JournalEntry, Journaled, SeenDelivery, StateStore, StoreError};

/// The store of one pipeline (`SqliteDb::store`).
pub struct SqliteStore {
    pub(super) db: Arc<SqliteDb>,
    pub(super) pipeline: Box<str>,
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

    fn peek(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.load(key) // a read, nothing more
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
        self.db.writer.journal((self.pipeline.clone(), entry), done);
    }

    fn record_outcome(&self, record: ExecutionRecord) {
        self.db.writer.outcome((self.pipeline.clone(), record));
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
