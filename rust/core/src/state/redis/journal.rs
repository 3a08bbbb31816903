//! The Redis journal: every async (`202`) event is in Redis from before its `202` until its
//! execution ends, so a process that dies (SIGKILL) loses none of them.
//!
//! - **Layout.** Per pipeline, `<prefix>:journal` maps an execution id to `<seq>\n<entry>`
//!   (`seq` from `INCR <prefix>:journal:seq`: arrival order across every process) and
//!   `<prefix>:journal:owner` maps it to the node (process) that runs it. Both are written and
//!   removed together, in one script.
//! - **Group commit.** One writer thread per `RedisDb` writes the arrivals of a moment, of every
//!   pipeline, in one script call (one round trip), then calls each one's `done`; the ingress
//!   sends the `202` after that.
//! - **Done.** A succeeded execution's commit removes its entry in the script that writes its
//!   state and record (`COMMIT`, in `redis.rs`). Failed and timed-out executions' records remove
//!   it the same way, from the writer thread a moment later.
//! - **Heartbeat.** Each node sets `warmslot:node:<node>` every `HEARTBEAT_EVERY` with a
//!   `HEARTBEAT_TTL` expiry, and deletes it when its store is closed or dropped.
//! - **Recovery.** At start, `take_over` finds the entries whose owner is dead: its heartbeat key
//!   is gone, or vanishes while watched (a SIGKILLed process leaves its key for up to
//!   `HEARTBEAT_TTL`); a key whose value changes belongs to a live node. `TAKE` hands an entry
//!   over only while the dead node still owns it, so two processes recovering at once never
//!   both get one.
//! - **Fencing.** An execution journaled by this node commits only while its entry is still
//!   this node's (`COMMIT` checks the owner): a node whose heartbeat lapsed may have had its
//!   entries taken over; its commits of those then write nothing, so an entry applies once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::Script;

use super::{CommitCall, Conns, COMMIT};
use crate::state::{JournalEntry, Journaled, StoreError};

/// How often a node refreshes its heartbeat key, and how long the key outlives the last refresh.
/// Tests use shorter times so that a death is seen sooner.
#[cfg(not(test))]
pub(super) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
#[cfg(not(test))]
pub(super) const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
#[cfg(test)]
pub(super) const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);
#[cfg(test)]
pub(super) const HEARTBEAT_TTL: Duration = Duration::from_secs(1);
/// How often a watched heartbeat key is read again during recovery.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// Most writes one group commit takes.
const MAX_GROUP: usize = 512;
/// Most entries one `TAKE` call hands over (bounds the script's run and its reply).
const TAKE_CHUNK: usize = 256;

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

// KEYS[1]: a pipeline's journal, KEYS[2]: its owners. ARGV[1]: the dead node, ARGV[2]: this
// node, then ids. Hands each entry still owned by the dead node to this one and returns
// {id, entry, ...} of those now ours (ours already: a repeat after a lost reply).
const TAKE: &str = r"
local out = {}
for i = 3, #ARGV do
  local owner = redis.call('HGET', KEYS[2], ARGV[i])
  if owner == ARGV[1] or owner == ARGV[2] then
    local entry = redis.call('HGET', KEYS[1], ARGV[i])
    if entry then
      redis.call('HSET', KEYS[2], ARGV[i], ARGV[2])
      out[#out + 1] = ARGV[i]
      out[#out + 1] = entry
    else
      redis.call('HDEL', KEYS[2], ARGV[i])
    end
  end
end
return out";

// KEYS: lock keys. ARGV[1]: a dead node's token prefix (`<node>-`). Drops the leases it held.
const RELEASE_DEAD: &str = r"
local n = 0
for i = 1, #KEYS do
  local token = redis.call('GET', KEYS[i])
  if token and string.sub(token, 1, #ARGV[1]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    n = n + 1
  end
end
return n";

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

fn heartbeat_key(node: &str) -> String {
    format!("warmslot:node:{node}")
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

/// What the writer thread writes.
pub(super) enum Write {
    /// An accepted event; `done` is called once it is in Redis (or could not be written).
    Journal { keys: Arc<JournalKeys>, id: Box<str>, entry: Vec<u8>, done: Journaled },
    /// The record of an execution that ended without a commit (failed, timed out).
    Outcome(OutcomeWrite),
    /// Answered once everything sent before it is written.
    Flush(Sender<()>),
}

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

/// The group-commit writer: takes what has arrived (up to `MAX_GROUP`), writes the journal
/// entries in one script call, tells each one's waiter, then writes the outcomes. Ends when the
/// `RedisDb` is dropped.
pub(super) fn write_groups(conns: Arc<Conns>, node: String, writes: Receiver<Write>) {
    let (journal, unjournal, commit) = (Script::new(JOURNAL), Script::new(UNJOURNAL), Script::new(COMMIT));
    let mut group = Vec::with_capacity(MAX_GROUP);
    while crate::state::next_group(&writes, MAX_GROUP, &mut group) {
        // The arrivals go in script calls of at most `JOURNAL_CALL_BYTES` each (one call unless
        // bodies are large); each arrival is told how its own call went.
        let mut results: Vec<Option<Result<(), StoreError>>> = vec![None; group.len()];
        let mut chunk: Vec<usize> = Vec::new();
        let mut bytes = 0;
        for i in 0..=group.len() {
            let size = match group.get(i) {
                Some(Write::Journal { entry, .. }) => Some(entry.len()),
                Some(_) => continue,
                None => None,
            };
            if !chunk.is_empty() && size.is_none_or(|n| bytes + n > JOURNAL_CALL_BYTES) {
                let result = write_arrivals(&conns, &journal, &unjournal, &node, &group, &chunk);
                for &j in &chunk {
                    results[j] = Some(result.clone());
                }
                chunk.clear();
                bytes = 0;
            }
            if let Some(n) = size {
                chunk.push(i);
                bytes += n;
            }
        }
        for (w, result) in group.drain(..).zip(results) {
            match w {
                Write::Journal { done, .. } => done(result.unwrap_or(Ok(()))),
                Write::Outcome(o) => write_outcome(&conns, &commit, &node, &o),
                Write::Flush(done) => drop(done.send(())),
            }
        }
    }
}

/// Most bytes of journal entries one script call carries.
const JOURNAL_CALL_BYTES: usize = 8 << 20;

/// Writes the journal entries `group[i]` for `i` in `chunk` in one script call.
fn write_arrivals(
    conns: &Conns,
    journal: &Script,
    unjournal: &Script,
    node: &str,
    group: &[Write],
    chunk: &[usize],
) -> Result<(), StoreError> {
    let arrivals: Vec<_> = chunk
        .iter()
        .filter_map(|&i| match &group[i] {
            Write::Journal { keys, id, entry, .. } => Some((keys, id, entry)),
            _ => None,
        })
        .collect();
    let written = conns.with_conn(|c| {
        let mut call = journal.prepare_invoke();
        call.arg(node);
        for (keys, id, entry) in &arrivals {
            call.key(&keys.entries).key(&keys.owners).key(&keys.seq).arg(&***id).arg(&entry[..]);
        }
        call.invoke::<i64>(c)
    });
    if written.is_err() {
        // The script may have run (a reply lost to a timeout): take the entries back, so an event
        // whose client is told it failed does not run after a restart.
        let _ = conns.with_conn(|c| {
            let mut call = unjournal.prepare_invoke();
            call.arg(node);
            for (keys, id, _) in &arrivals {
                call.key(&keys.entries).key(&keys.owners).arg(&***id);
            }
            call.invoke::<i64>(c)
        });
    }
    written.map(drop)
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
        Ok(3) => eprintln!(
            "warmslot: the outcome of execution {} is not recorded: its journal entry was taken over by \
             another process (this one's heartbeat lapsed), which runs it",
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
                eprintln!("warmslot: could not list the outcome of execution {}: {e}", o.id);
            }
        }
        Err(e) => eprintln!("warmslot: could not record the outcome of execution {}: {e}", o.id),
    }
}

/// A thread that keeps this node's heartbeat key alive.
pub(super) struct Heartbeat {
    stop: Mutex<Option<(Sender<bool>, JoinHandle<()>)>>,
}

impl Heartbeat {
    /// Sets the key once (the node is alive before its first journal write), then every
    /// `HEARTBEAT_EVERY` from a thread.
    pub(super) fn start(conns: Arc<Conns>, node: &str) -> Result<Heartbeat, StoreError> {
        let key = heartbeat_key(node);
        beat(&conns, &key, 0)?;
        let (stop, stopped) = crossbeam_channel::bounded::<bool>(1);
        let thread = std::thread::Builder::new()
            .name("warmslot-redis-heartbeat".into())
            .spawn(move || {
                let mut n = 0u64;
                let goodbye = loop {
                    match stopped.recv_timeout(HEARTBEAT_EVERY) {
                        Err(RecvTimeoutError::Timeout) => {
                            n += 1;
                            // A failed beat is retried at the next tick; the key outlives a few.
                            let _ = beat(&conns, &key, n);
                        }
                        Ok(goodbye) => break goodbye,
                        Err(RecvTimeoutError::Disconnected) => break true,
                    }
                };
                if goodbye {
                    let _ = conns.with_conn(|c| redis::cmd("DEL").arg(&key).query::<i64>(c));
                }
            })
            .map_err(|e| StoreError(format!("cannot start the heartbeat thread: {e}")))?;
        Ok(Heartbeat { stop: Mutex::new(Some((stop, thread))) })
    }

    /// Stops beating, once. With `goodbye` the key is deleted, so other processes may take over
    /// this node's journal entries at once; without, they wait for it to expire (as after a
    /// SIGKILL).
    pub(super) fn stop(&self, goodbye: bool) {
        let Some((stop, thread)) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let _ = stop.send(goodbye);
        let _ = thread.join();
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop(true);
    }
}

/// Sets the heartbeat key to a value that differs at every beat (watchers tell a live node by it).
fn beat(conns: &Conns, key: &str, n: u64) -> Result<(), StoreError> {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let ttl = HEARTBEAT_TTL.as_millis() as u64;
    conns.with_conn(|c| redis::cmd("SET").arg(key).arg(format!("{ms} {n}")).arg("PX").arg(ttl).query::<()>(c))
}

/// Which of `nodes` are dead: their heartbeat key is gone, or vanishes while watched. A key whose
/// value changes is a live node's. Watching ends when every node is decided or after
/// `HEARTBEAT_TTL + HEARTBEAT_EVERY` (a key set before watching began has expired by then unless
/// refreshed); a key that neither changes nor expires is left alone, as a live node's.
fn dead_nodes(conns: &Conns, nodes: Vec<String>) -> Result<Vec<String>, StoreError> {
    let read = |nodes: &[String]| -> Result<Vec<Option<String>>, StoreError> {
        let keys: Vec<String> = nodes.iter().map(|n| heartbeat_key(n)).collect();
        conns.with_conn(|c| redis::cmd("MGET").arg(&keys).query(c))
    };
    let (mut watched, mut first_beats) = (Vec::new(), Vec::new());
    let mut dead = Vec::new();
    for (node, beat) in nodes.iter().zip(read(&nodes)?) {
        match beat {
            None => dead.push(node.clone()),
            Some(beat) => {
                watched.push(node.clone());
                first_beats.push(beat);
            }
        }
    }
    let deadline = Instant::now() + HEARTBEAT_TTL + HEARTBEAT_EVERY;
    while !watched.is_empty() && Instant::now() < deadline {
        std::thread::sleep(WATCH_EVERY);
        let beats = read(&watched)?;
        let (mut still, mut still_first) = (Vec::new(), Vec::new());
        for ((node, first), beat) in watched.into_iter().zip(first_beats).zip(beats) {
            match beat {
                None => dead.push(node),
                Some(beat) if beat != first => {} // alive
                Some(_) => {
                    still.push(node);
                    still_first.push(first);
                }
            }
        }
        (watched, first_beats) = (still, still_first);
    }
    Ok(dead)
}

/// The entries of one pipeline's journal whose owner is dead, now owned by `node`, in journal
/// order. `verdicts` remembers which nodes were found dead (true) or alive, so that the
/// pipelines recovered after the first do not watch the same heartbeats again. The leases a dead
/// node still holds on the keys of those entries (`lock_key` of each) are dropped: the node was
/// running them when it died, and its lease would hold up their recovery until it expires.
pub(super) fn take_over(
    conns: &Conns,
    node: &str,
    keys: &JournalKeys,
    lock_key: &dyn Fn(&str) -> String,
    verdicts: &Mutex<HashMap<String, bool>>,
) -> Result<Vec<JournalEntry>, StoreError> {
    let owners: Vec<(String, String)> = conns.with_conn(|c| redis::cmd("HGETALL").arg(&keys.owners).query(c))?;
    let mut by_owner: HashMap<String, Vec<String>> = HashMap::new();
    for (id, owner) in owners {
        if owner != node {
            by_owner.entry(owner).or_default().push(id);
        }
    }
    let unknown: Vec<String> = {
        let verdicts = verdicts.lock().unwrap_or_else(|e| e.into_inner());
        by_owner.keys().filter(|n| !verdicts.contains_key(*n)).cloned().collect()
    };
    if !unknown.is_empty() {
        let dead = dead_nodes(conns, unknown.clone())?;
        let mut verdicts = verdicts.lock().unwrap_or_else(|e| e.into_inner());
        for n in unknown {
            let is_dead = dead.contains(&n);
            verdicts.insert(n, is_dead);
        }
    }
    let dead: Vec<String> = {
        let verdicts = verdicts.lock().unwrap_or_else(|e| e.into_inner());
        by_owner.keys().filter(|n| verdicts.get(*n) == Some(&true)).cloned().collect()
    };
    let (take, release_dead) = (Script::new(TAKE), Script::new(RELEASE_DEAD));
    let mut taken = Vec::new();
    for dead_node in dead {
        let from = taken.len();
        for ids in by_owner[&dead_node].chunks(TAKE_CHUNK) {
            let got: Vec<Vec<u8>> = conns.with_conn(|c| {
                let mut call = take.key(&keys.entries);
                call.key(&keys.owners).arg(&dead_node).arg(node);
                for id in ids {
                    call.arg(id);
                }
                call.invoke(c)
            })?;
            for pair in got.chunks_exact(2) {
                let id = String::from_utf8_lossy(&pair[0]);
                // One unreadable entry (written by something else) must not keep every start from
                // recovering the rest: it is left in the journal, for a person to look at.
                match decode_entry(&id, &pair[1]) {
                    Some(entry) => taken.push(entry),
                    None => eprintln!("warmslot: the journal entry of execution {id} is unreadable; skipped"),
                }
            }
        }
        let mut locks: Vec<String> = taken[from..].iter().filter_map(|(_, e)| e.key.as_deref().map(lock_key)).collect();
        locks.sort_unstable();
        locks.dedup();
        let prefix = format!("{dead_node}-");
        for locks in locks.chunks(TAKE_CHUNK) {
            conns.with_conn(|c| release_dead.key(locks).arg(&prefix).invoke::<i64>(c))?;
        }
    }
    taken.sort_by_key(|(seq, _)| *seq);
    Ok(taken.into_iter().map(|(_, e)| e).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::redis::tests::RedisServer;
    use crate::state::redis::RedisDb;
    use crate::state::{ExecutionRecord, StateStore};

    const LEASE: Duration = Duration::from_secs(5);

    fn entry(id: &str, key: Option<&str>, delivery: Option<&str>) -> JournalEntry {
        JournalEntry {
            id: id.into(),
            key: key.map(Into::into),
            delivery: delivery.map(Into::into),
            body: Bytes::from(format!("{{\"id\":\"{id}\",\"text\":\"two\\nlines\"}}\n\0")),
            headers: Bytes::from_static(b"webhook-id: d1\nx-other: a b\n"),
            received_unix: 1_700_000_000.123_456,
        }
    }

    fn record(id: &str, status: &'static str) -> ExecutionRecord {
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

    fn journal(store: &Arc<dyn StateStore>, e: JournalEntry) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        store.journal(e, Box::new(move |r| tx.send(r).unwrap()));
        rx.recv().unwrap()
    }

    fn ids(entries: &[JournalEntry]) -> Vec<&str> {
        entries.iter().map(|e| &*e.id).collect()
    }

    fn journal_len(db: &RedisDb, pipeline: &str) -> (i64, i64) {
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
    fn a_dead_nodes_entries_are_recovered_in_order_and_finished_ones_are_not() {
        let server = RedisServer::start();
        let a = RedisDb::open(&server.url).unwrap();
        let p = a.store("p", LEASE);
        for (id, key) in [("e1", "u"), ("e2", "u"), ("e3", "v"), ("e4", "v"), ("e5", "u")] {
            journal(&p, entry(id, Some(key), (id == "e1").then_some("d1"))).unwrap();
        }
        journal(&a.store("other", LEASE), entry("o1", None, None)).unwrap();
        assert_eq!(journal_len(&a, "p"), (5, 5));
        // e2 succeeds (state, record and journal removal in one script); e4 fails.
        p.load("u").unwrap();
        p.commit_execution(Some("u"), Some(Bytes::from_static(b"{\"n\":1}")), Some(&record("e2", "succeeded")))
            .unwrap();
        p.record_outcome(record("e4", "failed"));
        p.flush();
        assert_eq!(journal_len(&a, "p"), (3, 3));
        // The process dies while running e3 (holding key v's lease): no goodbye, its heartbeat
        // key expires on its own.
        p.load("v").unwrap();
        p.load("z").unwrap();
        a.halt_heartbeat();
        drop((p, a));

        let b = RedisDb::open(&server.url).unwrap();
        let p = b.store("p", LEASE);
        let started = Instant::now();
        let recovered = p.unfinished().unwrap();
        assert_eq!(ids(&recovered), ["e1", "e3", "e5"], "in journal order");
        assert!(started.elapsed() < HEARTBEAT_TTL + HEARTBEAT_EVERY + Duration::from_secs(1));
        assert_eq!(recovered[0], entry("e1", Some("u"), Some("d1")), "every field comes back");
        assert_eq!(p.record("e2").unwrap().status, "succeeded");
        assert_eq!(p.record("e4").unwrap().status, "failed");
        assert_eq!(p.load("u").unwrap().unwrap(), Bytes::from_static(b"{\"n\":1}"));
        p.release("u");
        // The dead node's lease on v (a recovered entry's key) is dropped; on z it runs out.
        let started = Instant::now();
        assert_eq!(p.load("v").unwrap(), None);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        p.release("v");
        let z = b.with_conn(|c| redis::cmd("PTTL").arg("warmslot:p:lock:z").query::<i64>(c)).unwrap();
        assert!(z > 0, "{z}");
        assert!(p.unfinished().unwrap().is_empty(), "taken over: the entries are this node's now");
        assert_eq!(ids(&b.store("other", LEASE).unfinished().unwrap()), ["o1"], "pipelines are separate");
        // Each recovered execution commits once (a keyless one: record and journal removal).
        for e in &recovered {
            p.commit_execution(None, None, Some(&record(&e.id, "succeeded"))).unwrap();
        }
        assert_eq!(journal_len(&b, "p"), (0, 0));
    }

    #[test]
    fn a_live_nodes_entries_stay_with_it() {
        let server = RedisServer::start();
        let a = RedisDb::open(&server.url).unwrap();
        let pa = a.store("p", LEASE);
        journal(&pa, entry("e1", Some("u"), None)).unwrap();
        let b = RedisDb::open(&server.url).unwrap();
        let started = Instant::now();
        assert!(b.store("p", LEASE).unfinished().unwrap().is_empty());
        assert!(started.elapsed() < HEARTBEAT_TTL, "a live node is told by its next beat");
        pa.load("u").unwrap();
        pa.commit_execution(Some("u"), Some(Bytes::from_static(b"1")), Some(&record("e1", "succeeded"))).unwrap();
        assert_eq!(journal_len(&a, "p"), (0, 0));
        // A node that closes (a shutdown) hands its entries over at once.
        journal(&pa, entry("e2", None, None)).unwrap();
        a.close();
        let c = RedisDb::open(&server.url).unwrap();
        let started = Instant::now();
        assert_eq!(ids(&c.store("p", LEASE).unfinished().unwrap()), ["e2"]);
        assert!(started.elapsed() < WATCH_EVERY * 5, "no waiting for a node that said goodbye");
    }

    #[test]
    fn a_taken_over_entry_cannot_be_committed_by_its_old_owner() {
        let server = RedisServer::start();
        let a = RedisDb::open(&server.url).unwrap();
        let pa = a.store("p", LEASE);
        journal(&pa, entry("e1", Some("u"), None)).unwrap();
        journal(&pa, entry("e2", Some("w"), None)).unwrap();
        pa.load("u").unwrap();
        // A stalls past its heartbeat's expiry; B starts meanwhile and takes its entries over.
        a.halt_heartbeat();
        let b = RedisDb::open(&server.url).unwrap();
        let pb = b.store("p", LEASE);
        assert_eq!(ids(&pb.unfinished().unwrap()), ["e1", "e2"]);
        // A wakes up and commits: nothing is written, and the key's lease is released.
        let late = pa.commit_execution(Some("u"), Some(Bytes::from_static(b"late")), Some(&record("e1", "succeeded")));
        assert!(late.unwrap_err().0.contains("taken over by another process"));
        pa.record_outcome(record("e1", "failed"));
        pa.record_outcome(record("e2", "timed_out"));
        pa.flush();
        assert!(pb.record("e1").is_none() && pb.record("e2").is_none(), "the old owner records nothing");
        assert_eq!(journal_len(&b, "p"), (2, 2));
        // B runs them: its commits apply, once.
        assert_eq!(pb.load("u").unwrap(), None, "the late commit wrote nothing");
        pb.commit_execution(Some("u"), Some(Bytes::from_static(b"b")), Some(&record("e1", "succeeded"))).unwrap();
        pb.commit_execution(None, None, Some(&record("e2", "succeeded"))).unwrap();
        assert_eq!(journal_len(&b, "p"), (0, 0));
        assert_eq!(pb.record("e1").unwrap().status, "succeeded");
        assert_eq!(pb.load("u").unwrap().unwrap(), Bytes::from_static(b"b"));
        pb.release("u");
    }

    #[test]
    fn two_recovering_nodes_never_both_take_an_entry() {
        let server = RedisServer::start();
        let a = RedisDb::open(&server.url).unwrap();
        let pa = a.store("p", LEASE);
        let all: Vec<String> = (0..600).map(|i| format!("e{i:03}")).collect();
        // Many writers at once: the writer thread groups them (several per script call).
        std::thread::scope(|s| {
            for chunk in all.chunks(100) {
                let pa = pa.clone();
                s.spawn(move || chunk.iter().for_each(|id| journal(&pa, entry(id, Some("u"), None)).unwrap()));
            }
        });
        a.halt_heartbeat();
        drop((pa, a));
        let takers: Vec<_> = (0..2).map(|_| RedisDb::open(&server.url).unwrap()).collect();
        let taken: Vec<Vec<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = takers
                .iter()
                .map(|db| s.spawn(move || ids(&db.store("p", LEASE).unfinished().unwrap()).join(" ")))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().split_whitespace().map(String::from).collect()).collect()
        });
        let mut union: Vec<String> = taken.concat();
        union.sort();
        assert_eq!(union, all, "every entry taken once: {} + {}", taken[0].len(), taken[1].len());
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
