//! The one group-commit writer of the durable stores. Journal writes (accepted events), outcomes
//! (executions that ended without a commit) and flushes go to one thread per database, which
//! takes what has arrived (up to `MAX_GROUP`), has the store write it ([`GroupBackend`]: SQLite
//! in one transaction, Redis in one script call), then answers the waiters in arrival order: a
//! journal write only once it is durable, every write of a failed group with that failure, a
//! flush once everything sent before it is written.
//!
//! A store plugs in by implementing `GroupBackend` and starting a [`GroupWriter`] with it.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::state::{Journaled, StoreError};

/// Most writes one group commit takes.
const MAX_GROUP: usize = 512;
/// How long `flush` waits for the writer.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// What the writer thread writes. `E` and `O` are a store's own forms of a journal entry and of
/// an outcome (with the pipeline or keys they belong to).
pub(crate) enum Write<E, O> {
    /// An accepted event; `done` is called once it is durable (or could not be written).
    Journal(E, Journaled),
    /// The record of an execution that ended without a commit (failed, timed out).
    Outcome(O),
    /// Answered once everything sent before it is written.
    Flush(Sender<()>),
}

/// The writes taken at once, in arrival order, and the answer each one gets.
pub(crate) struct Group<E, O> {
    writes: Vec<Write<E, O>>,
    answers: Vec<Option<Result<(), StoreError>>>,
}

impl<E, O> Group<E, O> {
    pub(crate) fn writes(&self) -> &[Write<E, O>] {
        &self.writes
    }

    /// The answer of `writes()[i]`.
    pub(crate) fn answer(&mut self, i: usize, result: Result<(), StoreError>) {
        self.answers[i] = Some(result);
    }

    /// One answer for every write (a group written in one transaction: all of it or none).
    pub(crate) fn answer_all(&mut self, result: Result<(), StoreError>) {
        self.answers.iter_mut().for_each(|a| *a = Some(result.clone()));
    }
}

/// How one store writes a group.
pub(crate) trait GroupBackend: Send + 'static {
    /// A journal write as the store takes it.
    type Entry: Send + 'static;
    /// An outcome write as the store takes it.
    type Outcome: Send + 'static;

    /// Writes the group's journal entries durably, in one transaction or script call where it
    /// can, and gives each its answer (`Group::answer`, `Group::answer_all`). A journal write
    /// left unanswered is told it failed. A store that writes outcomes in the same transaction
    /// answers them too.
    fn write_group(&mut self, group: &mut Group<Self::Entry, Self::Outcome>);

    /// Called for each outcome, in arrival order, once the journal writes before it are answered:
    /// with the answer `write_group` gave it, or `None` when it left the outcome to be written
    /// here (Redis: one script call each). Nobody waits for an outcome: a failure is logged.
    fn finish_outcome(&mut self, outcome: Self::Outcome, written: Option<Result<(), StoreError>>);
}

/// The sending side of a store's writer thread; the thread ends once this is dropped, after
/// writing what was sent.
pub(crate) struct GroupWriter<E, O> {
    writes: Sender<Write<E, O>>,
}

impl<E: Send + 'static, O: Send + 'static> GroupWriter<E, O> {
    /// Starts the writer thread, named `thread`, writing with `backend`.
    pub(crate) fn start<B>(thread: &str, backend: B) -> Result<Self, StoreError>
    where
        B: GroupBackend<Entry = E, Outcome = O>,
    {
        let (writes, queue) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || write_groups(backend, queue))
            .map_err(|e| StoreError(format!("cannot start the journal thread: {e}")))?;
        Ok(GroupWriter { writes })
    }

    /// Queues a journal write; `done` is called once it is durable (or could not be written).
    pub(crate) fn journal(&self, entry: E, done: Journaled) {
        if let Err(e) = self.writes.send(Write::Journal(entry, done)) {
            if let Write::Journal(_, done) = e.into_inner() {
                done(Err(StoreError("the journal writer has stopped".into())));
            }
        }
    }

    /// Queues an outcome write (written in the background).
    pub(crate) fn outcome(&self, outcome: O) {
        let _ = self.writes.send(Write::Outcome(outcome));
    }

    /// Waits (up to `FLUSH_WAIT`) until every write sent so far is written.
    pub(crate) fn flush(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.writes.send(Write::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(FLUSH_WAIT);
        }
    }
}

/// The writer thread: a group at a time, until every sender is gone.
fn write_groups<B: GroupBackend>(mut backend: B, writes: Receiver<Write<B::Entry, B::Outcome>>) {
    let mut group = Group { writes: Vec::with_capacity(MAX_GROUP), answers: Vec::with_capacity(MAX_GROUP) };
    while next_group(&writes, MAX_GROUP, &mut group.writes) {
        group.answers.resize_with(group.writes.len(), || None);
        backend.write_group(&mut group);
        for (w, answer) in group.writes.drain(..).zip(group.answers.drain(..)) {
            match w {
                Write::Journal(_, done) => {
                    done(answer.unwrap_or_else(|| Err(StoreError("the journal writer did not write it".into()))))
                }
                Write::Outcome(outcome) => backend.finish_outcome(outcome, answer),
                Write::Flush(done) => drop(done.send(())),
            }
        }
    }
}

/// Waits for the next write, then takes whatever else has arrived, up to `max` in all (a group
/// commit's group). False once every sender is gone.
fn next_group<T>(writes: &Receiver<T>, max: usize, group: &mut Vec<T>) -> bool {
    let Ok(first) = writes.recv() else { return false };
    group.push(first);
    while group.len() < max {
        match writes.try_recv() {
            Ok(w) => group.push(w),
            Err(_) => break,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use rusqlite::Connection;

    use super::*;
    use crate::state::sqlite::tests::{entry, record, TempDir};
    use crate::state::sqlite::SqliteDb;
    use crate::state::{ExecutionRecord, JournalEntry};

    type Entry = (Box<str>, JournalEntry);
    type Outcome = (Box<str>, ExecutionRecord);
    type Answer = Option<Result<(), StoreError>>;

    /// The SQLite backend, counting the groups it writes and keeping the answers its outcomes got.
    struct Counted<B> {
        inner: B,
        groups: Arc<AtomicUsize>,
        outcomes: Arc<Mutex<Vec<Answer>>>,
        /// Time each group takes on top of its write (a slow disk).
        slow: Duration,
    }

    impl<B: GroupBackend> Counted<B> {
        fn new(inner: B) -> Counted<B> {
            Counted { inner, groups: Arc::default(), outcomes: Arc::default(), slow: Duration::ZERO }
        }
    }

    impl<B: GroupBackend> GroupBackend for Counted<B> {
        type Entry = B::Entry;
        type Outcome = B::Outcome;

        fn write_group(&mut self, group: &mut Group<B::Entry, B::Outcome>) {
            self.groups.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.slow);
            self.inner.write_group(group);
        }

        fn finish_outcome(&mut self, outcome: B::Outcome, written: Option<Result<(), StoreError>>) {
            self.outcomes.lock().unwrap().push(written.clone());
            self.inner.finish_outcome(outcome, written);
        }
    }

    /// Runs the writer over `queued`, all sent before it starts, so that the grouping is known.
    fn write_queued<B: GroupBackend>(backend: B, queued: Vec<Write<B::Entry, B::Outcome>>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        queued.into_iter().for_each(|w| tx.send(w).unwrap());
        drop(tx);
        write_groups(backend, rx);
    }

    /// The answers the journal writes got, in the order they came: (id, answer, rows with that id
    /// that another connection saw when it came).
    type Answers = Arc<Mutex<Vec<(String, Result<(), StoreError>, i64)>>>;

    fn journal_write(id: &str, reader: &Arc<Mutex<Connection>>, answers: &Answers) -> Write<Entry, Outcome> {
        let (id, reader, answers) = (id.to_string(), reader.clone(), answers.clone());
        let e = entry(&id, "u", None);
        Write::Journal(
            ("p".into(), e),
            Box::new(move |result| {
                let seen = reader
                    .lock()
                    .unwrap()
                    .query_row("SELECT count(*) FROM warmslot_executions WHERE id = ?1", [&id], |r| r.get(0))
                    .unwrap();
                answers.lock().unwrap().push((id, result, seen));
            }),
        )
    }

    fn open(dir: &TempDir) -> (Arc<SqliteDb>, Arc<Mutex<Connection>>) {
        let path = dir.join("group.db");
        let db = SqliteDb::open(path.to_str().unwrap()).unwrap();
        (db, Arc::new(Mutex::new(Connection::open(&path).unwrap())))
    }

    #[test]
    fn a_group_of_many_journal_writes_is_answered_once_durable() {
        let dir = TempDir::new("group-durable");
        let (db, reader) = open(&dir);
        let answers = Answers::default();
        let ids: Vec<String> = (0..600).map(|i| format!("e{i:03}")).collect();
        let queued = ids.iter().map(|id| journal_write(id, &reader, &answers)).collect();
        let backend = Counted::new(db.group_backend());
        let groups = backend.groups.clone();
        write_queued(backend, queued);
        assert_eq!(groups.load(Ordering::SeqCst), 2, "600 writes: a group of MAX_GROUP, then the rest");
        let answers = answers.lock().unwrap();
        assert_eq!(answers.iter().map(|(id, ..)| id.clone()).collect::<Vec<_>>(), ids, "answered in arrival order");
        for (id, result, seen) in answers.iter() {
            assert_eq!(result, &Ok(()), "{id}");
            assert_eq!(*seen, 1, "{id} was committed (another connection sees it) before its answer");
        }
        assert_eq!(db.store("p").unfinished().unwrap().len(), 600);
    }

    #[test]
    fn a_failing_write_answers_every_waiter_of_its_group_with_the_error() {
        let dir = TempDir::new("group-fails");
        let (db, reader) = open(&dir);
        reader
            .lock()
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON warmslot_executions WHEN NEW.id = 'bad'
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
            )
            .unwrap();
        let answers = Answers::default();
        let mut queued: Vec<_> = (0..50).map(|i| journal_write(&format!("e{i}"), &reader, &answers)).collect();
        queued.insert(25, journal_write("bad", &reader, &answers));
        queued.push(Write::Outcome(("p".into(), record("r1", None, "failed"))));
        let (flushed, flush) = crossbeam_channel::bounded(1);
        queued.push(Write::Flush(flushed));
        let backend = Counted::new(db.group_backend());
        let (groups, outcomes) = (backend.groups.clone(), backend.outcomes.clone());
        write_queued(backend, queued);
        assert_eq!(groups.load(Ordering::SeqCst), 1);
        let answers = answers.lock().unwrap();
        assert_eq!(answers.len(), 51);
        for (id, result, seen) in answers.iter() {
            let e = result.as_ref().unwrap_err();
            assert!(e.0.starts_with("sqlite:") && e.0.contains("refused by the test"), "{id}: {e}");
            assert_eq!(*seen, 0, "{id}: the group's transaction was rolled back");
        }
        let outcomes = outcomes.lock().unwrap();
        assert!(matches!(&outcomes[..], [Some(Err(e))] if e.0.contains("refused by the test")), "{outcomes:?}");
        assert!(flush.try_recv().is_ok(), "the flush is answered too");
        let p = db.store("p");
        assert!(p.unfinished().unwrap().is_empty() && p.record("r1").is_none(), "nothing of the group is written");
    }

    #[test]
    fn flush_waits_for_what_was_queued_before_it() {
        let dir = TempDir::new("group-flush");
        let (db, reader) = open(&dir);
        let mut backend = Counted::new(db.group_backend());
        backend.slow = Duration::from_millis(20);
        let groups = backend.groups.clone();
        let writer = GroupWriter::start("warmslot-test-writer", backend).unwrap();
        let answers = Answers::default();
        for i in 0..200 {
            let Write::Journal(entry, done) = journal_write(&format!("e{i}"), &reader, &answers) else {
                unreachable!()
            };
            writer.journal(entry, done);
            if i % 50 == 0 {
                writer.outcome(("p".into(), record(&format!("r{i}"), None, "failed")));
            }
        }
        writer.flush();
        assert_eq!(answers.lock().unwrap().len(), 200, "every journal write sent before the flush is answered");
        assert!(answers.lock().unwrap().iter().all(|(_, result, seen)| result.is_ok() && *seen == 1));
        let p = db.store("p");
        for i in (0..200).step_by(50) {
            assert_eq!(p.record(&format!("r{i}")).unwrap().status, "failed", "the outcomes are written too");
        }
        assert!(groups.load(Ordering::SeqCst) < 200, "writes that wait are grouped");
    }
}
