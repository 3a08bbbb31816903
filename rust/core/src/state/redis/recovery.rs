//! Recovery of the Redis journal's entries of dead processes.
//!
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

use crossbeam_channel::{RecvTimeoutError, Sender};
use redis::Script;

use super::journal::{decode_entry, JournalKeys};
use super::Conns;
use crate::state::{JournalEntry, StoreError};

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
/// Most entries one `TAKE` call hands over (bounds the script's run and its reply).
const TAKE_CHUNK: usize = 256;

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

fn heartbeat_key(node: &str) -> String {
    format!("warmslot:node:{node}")
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
                    None => log::error!("the journal entry of execution {id} is unreadable; skipped"),
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
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::*;
    use crate::state::redis::journal::tests::{entry, ids, journal, journal_len, record, LEASE};
    use crate::state::redis::tests::RedisServer;
    use crate::state::redis::RedisDb;

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
}
