//! SQLite's backend of the group-commit writer (`state::group`): a group's journal entries and
//! outcomes, of every pipeline, in one transaction on the main connection.

use std::sync::{Arc, Mutex};

use super::rows::{insert_journal, upsert_record, Main, NewRows};
use crate::state::group::{Group, GroupBackend, GroupWriter, Write};
use crate::state::{ExecutionRecord, JournalEntry, StoreError};

/// The pipeline and the accepted event of a journal write.
pub(super) type Entry = (Box<str>, JournalEntry);
/// The pipeline and the record of an execution that ended without a commit.
pub(super) type Outcome = (Box<str>, ExecutionRecord);
/// The sending side of the database's writer thread.
pub(super) type Writer = GroupWriter<Entry, Outcome>;

pub(in crate::state) struct SqliteWriter {
    pub(super) main: Arc<Mutex<Main>>,
}

impl GroupBackend for SqliteWriter {
    type Entry = Entry;
    type Outcome = Outcome;

    fn write_group(&mut self, group: &mut Group<Entry, Outcome>) {
        let result = {
            let mut guard = self.main.lock().unwrap_or_else(|e| e.into_inner());
            let Main { conn, rows } = &mut *guard;
            let mut new = NewRows::new();
            let written = (|| {
                let tx = conn.transaction()?;
                for w in group.writes() {
                    match w {
                        Write::Journal((pipeline, entry), _) => insert_journal(&tx, rows, &mut new, pipeline, entry)?,
                        Write::Outcome((pipeline, record)) => upsert_record(&tx, rows, &mut new, pipeline, record)?,
                        Write::Flush(_) => {}
                    }
                }
                tx.commit()
            })();
            if written.is_ok() {
                rows.extend(new);
            }
            written
        };
        group.answer_all(result.map_err(|e| StoreError(format!("sqlite: {e}"))));
    }

    fn finish_outcome(&mut self, (pipeline, record): Outcome, written: Option<Result<(), StoreError>>) {
        if let Some(Err(e)) = written {
            log::error!("could not record the outcome of execution {} (pipeline {pipeline}): {e}", record.id);
        }
    }
}
