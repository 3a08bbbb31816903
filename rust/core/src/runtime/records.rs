//! Bounded execution records for `GET /executions/<id>`: the newest executions, at most
//! `capacity` of them and at most `max_bytes` in all.
//!
//! A record is charged `RECORD_OVERHEAD` plus its key when it is inserted, and its reply (or error
//! message) once the execution is settled (`settle`, called by the ingress after the outcome).
//! When either bound is passed the oldest records go first; a record that alone outweighs
//! `max_bytes` is dropped as soon as it is settled.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::outcome::Outcome;
use crate::runtime::execution::Execution;

/// What one record costs besides its key and reply: the `Execution` itself, its id twice (map
/// key and order queue) and the map's bookkeeping, rounded up.
pub const RECORD_OVERHEAD: usize = 320;

pub struct Records {
    capacity: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

struct Entry {
    exec: Arc<Execution>,
    cost: usize,
    settled: bool,
}

/// Hashes execution ids: FxHash-style, a multiply per 8 bytes.
///
/// NOTE: SipHash of the 32-byte ids (three per request: insert, settle, evict) was about 1.4% of
/// the I/O thread's CPU serving the support bot. Ids are 128 random bits chosen here, so they
/// need no keyed hash: only lookups (`GET /executions/<id>`) take ids from clients, and a lookup
/// cannot grow a chain.
#[derive(Default, Clone, Copy)]
struct IdHash(u64);

impl std::hash::Hasher for IdHash {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<Box<str>, V, std::hash::BuildHasherDefault<IdHash>>;

#[derive(Default)]
struct Inner {
    by_id: IdMap<Entry>,
    /// Ids in insertion order; may name records already dropped (skipped when popped).
    order: VecDeque<Box<str>>,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, id: &str) {
        if let Some(e) = self.by_id.remove(id) {
            self.bytes -= e.cost;
        }
    }

    fn evict(&mut self, capacity: usize, max_bytes: usize) {
        while self.by_id.len() > capacity || self.bytes > max_bytes {
            let Some(old) = self.order.pop_front() else { break };
            self.remove(&old);
        }
        if self.by_id.is_empty() {
            self.order.clear();
        }
    }
}

fn outcome_bytes(exec: &Execution) -> usize {
    match exec.outcome() {
        Some((Outcome::Succeeded(reply), _)) => reply.len(),
        Some((Outcome::Failed { message, .. } | Outcome::TimedOut { message }, _)) => message.len(),
        None => 0,
    }
}

impl Records {
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Records { capacity: capacity.max(1), max_bytes, inner: Mutex::new(Inner::default()) }
    }

    pub fn insert(&self, exec: Arc<Execution>) {
        let cost = RECORD_OVERHEAD + exec.key.as_deref().map_or(0, str::len);
        let id = exec.id_str.clone();
        let mut inner = self.inner.lock().unwrap();
        inner.order.push_back(id.clone());
        inner.bytes += cost;
        if let Some(old) = inner.by_id.insert(id, Entry { exec, cost, settled: false }) {
            inner.bytes -= old.cost;
        }
        inner.evict(self.capacity, self.max_bytes);
    }

    /// Charges the reply (or error message) of a finished execution; once per execution.
    pub fn settle(&self, exec: &Execution) {
        let extra = outcome_bytes(exec);
        let mut inner = self.inner.lock().unwrap();
        let Some(entry) = inner.by_id.get_mut(&*exec.id_str) else { return };
        if entry.settled || !exec.status().is_final() {
            return;
        }
        entry.settled = true;
        entry.cost += extra;
        let cost = entry.cost;
        inner.bytes += extra;
        if cost > self.max_bytes {
            inner.remove(&exec.id_str);
        }
        inner.evict(self.capacity, self.max_bytes);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Execution>> {
        self.inner.lock().unwrap().by_id.get(id).map(|e| e.exec.clone())
    }

    /// Every recorded execution, newest first.
    pub fn newest_first(&self) -> Vec<Arc<Execution>> {
        let inner = self.inner.lock().unwrap();
        inner.order.iter().rev().filter_map(|id| inner.by_id.get(id)).map(|e| e.exec.clone()).collect()
    }

    /// Recorded executions without a final outcome yet.
    pub fn unfinished(&self) -> Vec<Arc<Execution>> {
        let inner = self.inner.lock().unwrap();
        inner.by_id.values().filter(|e| !e.exec.status().is_final()).map(|e| e.exec.clone()).collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().by_id.len()
    }

    /// Bytes currently charged to the records.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use crate::config::PipelineConfig;
    use crate::error::ErrorCode;
    use crate::runtime::pipeline::Pipeline;
    use crate::state::MemoryStore;

    fn pipeline() -> Arc<Pipeline> {
        let store = Arc::new(MemoryStore::default());
        Arc::new(Pipeline::new(0, PipelineConfig::new("p"), store))
    }

    fn exec(p: &Arc<Pipeline>, n: u64) -> Arc<Execution> {
        Arc::new(Execution::new(n, format!("{n:032x}").into(), p.clone(), None, Instant::now()))
    }

    #[test]
    fn keeps_the_newest_by_count() {
        let (p, records) = (pipeline(), Records::new(3, usize::MAX));
        let execs: Vec<_> = (0..5).map(|n| exec(&p, n)).collect();
        for e in &execs {
            records.insert(e.clone());
        }
        assert_eq!(records.len(), 3);
        assert!(records.get(&execs[1].id_str).is_none());
        assert!(records.get(&execs[4].id_str).is_some());
        assert_eq!(records.bytes(), 3 * RECORD_OVERHEAD);
    }

    #[test]
    fn settled_replies_count_against_the_byte_budget() {
        let (p, records) = (pipeline(), Records::new(100, 3 * RECORD_OVERHEAD + 1000));
        let a = exec(&p, 1);
        records.insert(a.clone());
        a.abandon(ErrorCode::PipelineError, "x".repeat(800));
        records.settle(&a);
        records.settle(&a); // charged once
        assert_eq!(records.bytes(), RECORD_OVERHEAD + 800);
        // Two more records fit; the third pushes the total over the budget and evicts `a`.
        let (b, c, d) = (exec(&p, 2), exec(&p, 3), exec(&p, 4));
        records.insert(b.clone());
        records.insert(c.clone());
        assert!(records.get(&a.id_str).is_some());
        records.insert(d.clone());
        assert!(records.get(&a.id_str).is_none(), "oldest evicted once over the byte budget");
        assert_eq!(records.len(), 3);
        assert_eq!(records.bytes(), 3 * RECORD_OVERHEAD);
    }

    #[test]
    fn a_record_larger_than_the_budget_is_dropped_when_settled() {
        let (p, records) = (pipeline(), Records::new(100, 2 * RECORD_OVERHEAD));
        let (keep, huge) = (exec(&p, 1), exec(&p, 2));
        records.insert(keep.clone());
        records.insert(huge.clone());
        assert!(records.get(&huge.id_str).is_some(), "unfinished records are kept");
        huge.abandon(ErrorCode::PipelineError, "y".repeat(3 * RECORD_OVERHEAD));
        records.settle(&huge);
        assert!(records.get(&huge.id_str).is_none());
        assert!(records.get(&keep.id_str).is_some(), "a big newcomer does not flush older records");
        assert_eq!(records.bytes(), RECORD_OVERHEAD);
    }
}
