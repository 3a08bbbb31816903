//! The tests of the SQLite store (its group writer is also tested in `state::group`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::Connection;

use super::maintenance::{prune, WAL_KEEP_BYTES};
use super::rows::{forget, insert_journal, upsert_record};
use super::schema::{SCHEMA, SCHEMA_VERSION};
use super::{now_unix, SqliteDb, SqliteOptions};
use crate::state::{CommitItem, ExecutionRecord, JournalEntry, StateStore};

/// A private directory for one test's database files, removed when the test ends, whether it
/// passed or not.
pub(in crate::state) struct TempDir(std::path::PathBuf);

impl TempDir {
    pub(in crate::state) fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("warmslot-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(in crate::state) fn join(&self, file: &str) -> std::path::PathBuf {
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

pub(in crate::state) fn entry(id: &str, key: &str, delivery: Option<&str>) -> JournalEntry {
    JournalEntry {
        id: id.into(),
        key: Some(key.into()),
        delivery: delivery.map(Into::into),
        body: Bytes::from_static(b"{\"user\":\"u\"}"),
        headers: Bytes::from_static(b"webhook-id: d1\n"),
        received_unix: now_unix(),
    }
}

pub(in crate::state) fn record(id: &str, delivery: Option<&str>, status: &'static str) -> ExecutionRecord {
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
