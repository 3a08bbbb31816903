//! The Redis journal: every async (`202`) event is in Redis from before its `202` until its
//! execution ends, so a process that dies (SIGKILL) loses none of them (its recovery by another
//! process: `recovery`).
//!
//! - **Layout.** Per pipeline, `<prefix>:journal` maps an execution id to `<seq>\n<entry>`
//!   (`seq` from `INCR <prefix>:journal:seq`: arrival order across every process) and
//!   `<prefix>:journal:owner` maps it to the node (process) that runs it. Both are written and
//!   removed together, in one script.
//! - **Group commit.** The `RedisDb`'s group-commit writer (`state::group`, with `RedisWriter`
//!   here) writes the arrivals of a moment, of every pipeline, in one script call (one round
//!   trip), then calls each one's `done`; the ingress sends the `202` after that.
//! - **Done.** A succeeded execution's commit removes its entry in the script that writes its
//!   state and record (`COMMIT`, in `scripts.rs`). Failed and timed-out executions' records
//!   remove it the same way, from the writer thread a moment later.

use std::sync::Arc;

use bytes::Bytes;
use redis::Script;

use super::scripts::{CommitCall, COMMIT};
use super::Conns;
use crate::state::group::{Group, GroupBackend, GroupWriter, Write};
use crate::state::{JournalEntry, StoreError};

// KEYS: per entry its pipeline's journal, owners and seq counter. ARGV[1]: this node; then per
// entry its id and its encoded entry. A repeat (after a lost reply) rewrites the same entries.
const JOURNAL: &str = r"
for i = 0, #KEYS / 3 - 1 do
  local seq = redis.call('INCR', KEYS[3 * i + 3])
  local id = ARGV[2 * i + 2]
  redis.call('HSET', KEYS[3 * i + 1], id, string.format('%d\n', seq) .. ARGV[2 * i + 3])
  redis.call('HSET', KEYS[3 * i + 2], id, ARGV[1])
end
return #KEYS / 3";

// KEYS: per entry its pipeline's journal and owners. ARGV[1]: this node; then the ids. Removes
// the entries this node still owns.
const UNJOURNAL: &str = r"
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[2 * i - 2], ARGV[i]) == ARGV[1] then
    redis.call('HDEL', KEYS[2 * i - 3], ARGV[i])
    redis.call('HDEL', KEYS[2 * i - 2], ARGV[i])
  end
end
return 1";

/// The Redis keys of one pipeline's journal.
pub(super) struct JournalKeys {
    pub(super) entries: String,
    pub(super) owners: String,
    seq: String,
}

impl JournalKeys {
    pub(super) fn new(prefix: &str) -> JournalKeys {
        JournalKeys {
            entries: format!("{prefix}:journal"),
            owners: format!("{prefix}:journal:owner"),
            seq: format!("{prefix}:journal:seq"),
        }
    }
}

/// An entry as stored, after the `<seq>\n` that `JOURNAL` puts before it:
/// `<received_unix> <key length or -> <delivery length or -> <headers length>\n` then the key,
/// the delivery id, the headers and the body, back to back.
pub(super) fn encode_entry(e: &JournalEntry) -> Vec<u8> {
    let len = |s: &Option<Box<str>>| s.as_ref().map_or("-".to_string(), |s| s.len().to_string());
    let mut out =
        format!("{} {} {} {}\n", e.received_unix, len(&e.key), len(&e.delivery), e.headers.len()).into_bytes();
    out.extend_from_slice(e.key.as_deref().unwrap_or("").as_bytes());
    out.extend_from_slice(e.delivery.as_deref().unwrap_or("").as_bytes());
    out.extend_from_slice(&e.headers);
    out.extend_from_slice(&e.body);
    out
}

/// The sequence number and the entry of a stored `<seq>\n<entry>`.
pub(super) fn decode_entry(id: &str, raw: &[u8]) -> Option<(u64, JournalEntry)> {
    let mut parts = raw.splitn(3, |&b| b == b'\n');
    let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let mut head = std::str::from_utf8(parts.next()?).ok()?.split(' ');
    let mut rest = parts.next()?;
    let received_unix: f64 = head.next()?.parse().ok()?;
    let mut take_str = |field: &str| -> Option<Option<Box<str>>> {
        if field == "-" {
            return Some(None);
        }
        let n: usize = field.parse().ok()?;
        let s = std::str::from_utf8(rest.get(..n)?).ok()?.into();
        rest = &rest[n..];
        Some(Some(s))
    };
    let key = take_str(head.next()?)?;
    let delivery = take_str(head.next()?)?;
    let headers_len: usize = head.next()?.parse().ok()?;
    let headers = Bytes::copy_from_slice(rest.get(..headers_len)?);
    let body = Bytes::copy_from_slice(&rest[headers_len..]);
    Some((seq, JournalEntry { id: id.into(), key, delivery, body, headers, received_unix }))
}

/// A journal write: the pipeline's journal, the execution id and its encoded entry.
pub(super) struct JournalWrite {
    pub(super) keys: Arc<JournalKeys>,
    pub(super) id: Box<str>,
    pub(super) entry: Vec<u8>,
}

/// The record of an execution that ended without a commit (failed, timed out), to write.
pub(super) struct OutcomeWrite {
    pub(super) keys: Arc<JournalKeys>,
    pub(super) id: Box<str>,
    pub(super) record_key: String,
    pub(super) record: Vec<u8>,
    pub(super) ttl_ms: u64,
    /// Journaled by this node: its entry is removed with the record, if it is still ours.
    pub(super) journaled: bool,
    /// `<prefix>:failed` or `<prefix>:timed_out`: the sorted set, by time, that lists this outcome.
    pub(super) listed_in: Option<String>,
}

/// Most ids one outcome list (`<prefix>:failed`, `<prefix>:timed_out`) keeps.
pub(super) const LISTED_MAX: isize = 100_000;

/// The sending side of a `RedisDb`'s writer thread.
pub(super) type Writer = GroupWriter<JournalWrite, OutcomeWrite>;

/// Redis's backend of the group-commit writer: a group's journal entries in one script call
/// (several when they are large); then, as the waiters are answered in arrival order, each
/// outcome in its own `COMMIT` call.
pub(super) struct RedisWriter {
    conns: Arc<Conns>,
    node: String,
    journal: Script,
    unjournal: Script,
    commit: Script,
}

impl RedisWriter {
    pub(super) fn new(conns: Arc<Conns>, node: String) -> RedisWriter {
        RedisWriter {
            conns,
            node,
            journal: Script::new(JOURNAL),
            unjournal: Script::new(UNJOURNAL),
            commit: Script::new(COMMIT),
        }
    }

    /// Writes the journal entries of `chunk` in one script call.
    fn write_arrivals(&self, chunk: &[(usize, &JournalWrite)]) -> Result<(), StoreError> {
        let written = self.conns.with_conn(|c| {
            let mut call = self.journal.prepare_invoke();
            call.arg(&self.node);
            for (_, w) in chunk {
                call.key(&w.keys.entries).key(&w.keys.owners).key(&w.keys.seq).arg(&*w.id).arg(&w.entry[..]);
            }
            call.invoke::<i64>(c)
        });
        if written.is_err() {
            // The script may have run (a reply lost to a timeout): take the entries back, so an event
            // whose client is told it failed does not run after a restart.
            let _ = self.conns.with_conn(|c| {
                let mut call = self.unjournal.prepare_invoke();
                call.arg(&self.node);
                for (_, w) in chunk {
                    call.key(&w.keys.entries).key(&w.keys.owners).arg(&*w.id);
                }
                call.invoke::<i64>(c)
            });
        }
        written.map(drop)
    }
}

/// Most bytes of journal entries one script call carries.
const JOURNAL_CALL_BYTES: usize = 8 << 20;

impl GroupBackend for RedisWriter {
    type Entry = JournalWrite;
    type Outcome = OutcomeWrite;

    fn write_group(&mut self, group: &mut Group<JournalWrite, OutcomeWrite>) {
        // The arrivals go in script calls of at most `JOURNAL_CALL_BYTES` each (one call unless
        // bodies are large); each arrival is told how its own call went.
        let mut answers = Vec::new();
        let mut chunk: Vec<(usize, &JournalWrite)> = Vec::new();
        let mut bytes = 0;
        let arrivals = group.writes().iter().enumerate().filter_map(|(i, w)| match w {
            Write::Journal(j, _) => Some((i, j)),
            _ => None,
        });
        for (i, j) in arrivals {
            if !chunk.is_empty() && bytes + j.entry.len() > JOURNAL_CALL_BYTES {
                let result = self.write_arrivals(&chunk);
                answers.extend(chunk.drain(..).map(|(i, _)| (i, result.clone())));
                bytes = 0;
            }
            chunk.push((i, j));
            bytes += j.entry.len();
        }
        if !chunk.is_empty() {
            let result = self.write_arrivals(&chunk);
            answers.extend(chunk.drain(..).map(|(i, _)| (i, result.clone())));
        }
        for (i, result) in answers {
            group.answer(i, result);
        }
    }

    fn finish_outcome(&mut self, outcome: OutcomeWrite, _written: Option<Result<(), StoreError>>) {
        write_outcome(&self.conns, &self.commit, &self.node, &outcome);
    }
}

fn write_outcome(conns: &Conns, commit: &Script, node: &str, o: &OutcomeWrite) {
    let call = CommitCall {
        lease: None,
        record: Some((&o.record_key, &o.record)),
        ttl_ms: o.ttl_ms,
        id: &o.id,
        journal: &o.keys,
        node: o.journaled.then_some(node),
    };
    match conns.with_conn(|c| call.invoke(commit, c)) {
        Ok(3) => log::warn!(
            "the outcome of execution {} is not recorded: its journal entry was taken over by another \
             process (this one's heartbeat lapsed), which runs it",
            o.id
        ),
        Ok(_) => {
            let Some(listed_in) = &o.listed_in else { return };
            // Listed for `GET /executions?status=...` on every process, for as long as records
            // are kept (the oldest past `LISTED_MAX` go first).
            let now_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let listed = conns.with_conn(|c| {
                redis::pipe()
                    .atomic()
                    .zadd(listed_in, &*o.id, now_ms)
                    .ignore()
                    .zrembyscore(listed_in, 0, now_ms.saturating_sub(o.ttl_ms))
                    .ignore()
                    .zremrangebyrank(listed_in, 0, -LISTED_MAX - 1)
                    .ignore()
                    .query::<()>(c)
            });
            if let Err(e) = listed {
                log::warn!("could not list the outcome of execution {}: {e}", o.id);
            }
        }
        Err(e) => log::error!("could not record the outcome of execution {}: {e}", o.id),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::state::redis::tests::RedisServer;
    use crate::state::redis::RedisDb;
    use crate::state::{ExecutionRecord, StateStore};

    pub(in crate::state::redis) const LEASE: Duration = Duration::from_secs(5);

    pub(in crate::state::redis) fn entry(id: &str, key: Option<&str>, delivery: Option<&str>) -> JournalEntry {
        JournalEntry {
            id: id.into(),
            key: key.map(Into::into),
            delivery: delivery.map(Into::into),
            body: Bytes::from(format!("{{\"id\":\"{id}\",\"text\":\"two\\nlines\"}}\n\0")),
            headers: Bytes::from_static(b"webhook-id: d1\nx-other: a b\n"),
            received_unix: 1_700_000_000.123_456,
        }
    }

    pub(in crate::state::redis) fn record(id: &str, status: &'static str) -> ExecutionRecord {
        ExecutionRecord {
            id: id.into(),
            key: Some("u".into()),
            delivery: None,
            received_unix: 1.0,
            status,
            http_status: if status == "succeeded" { 200 } else { 500 },
            reply: Bytes::from_static(b"{\"ok\":1}"),
            json: format!("{{\"id\":\"{id}\",\"status\":\"{status}\"}}"),
        }
    }

    pub(in crate::state::redis) fn journal(store: &Arc<dyn StateStore>, e: JournalEntry) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        store.journal(e, Box::new(move |r| tx.send(r).unwrap()));
        rx.recv().unwrap()
    }

    pub(in crate::state::redis) fn ids(entries: &[JournalEntry]) -> Vec<&str> {
        entries.iter().map(|e| &*e.id).collect()
    }

    pub(in crate::state::redis) fn journal_len(db: &RedisDb, pipeline: &str) -> (i64, i64) {
        let keys = JournalKeys::new(&format!("warmslot:{pipeline}"));
        let len = |k: &str| db.with_conn(|c| redis::cmd("HLEN").arg(k).query::<i64>(c)).unwrap();
        (len(&keys.entries), len(&keys.owners))
    }

    #[test]
    fn entries_round_trip_through_their_encoding() {
        for e in [entry("a", Some("k\n1"), Some("d 1")), entry("b", None, None), entry("c", Some(""), None)] {
            let stored = [b"42\n".as_slice(), &encode_entry(&e)].concat();
            assert_eq!(decode_entry(&e.id, &stored), Some((42, e)));
        }
        assert_eq!(decode_entry("x", b"1\n1.5 9 - 0\nab"), None, "a key longer than what is left");
    }

    #[test]
    fn large_entries_go_in_several_script_calls_and_all_arrive() {
        let server = RedisServer::start();
        let a = RedisDb::open(&server.url).unwrap();
        let pa = a.store("p", LEASE);
        // 6 entries of 3 MiB written at once: more than one call's `JOURNAL_CALL_BYTES`.
        std::thread::scope(|s| {
            for i in 0..6 {
                let pa = pa.clone();
                s.spawn(move || {
                    let mut e = entry(&format!("big{i}"), Some("u"), None);
                    e.body = Bytes::from(vec![b'x'; 3 << 20]);
                    journal(&pa, e).unwrap();
                });
            }
        });
        assert_eq!(journal_len(&a, "p"), (6, 6));
        a.halt_heartbeat();
        drop((pa, a));
        let b = RedisDb::open(&server.url).unwrap();
        let taken = b.store("p", LEASE).unfinished().unwrap();
        assert_eq!(taken.len(), 6);
        assert!(taken.iter().all(|e| e.body.len() == 3 << 20));
    }

    #[test]
    fn a_journal_write_that_fails_reports_it() {
        let server = RedisServer::start();
        let db = RedisDb::open(&server.url).unwrap();
        let p = db.store("p", LEASE);
        journal(&p, entry("e1", None, None)).unwrap();
        drop(server); // Redis goes away
        let e = journal(&p, entry("e2", None, None)).unwrap_err();
        assert!(e.0.starts_with("redis:"), "{e}");
    }
}
