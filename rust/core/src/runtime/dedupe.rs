//! Deduplication of webhook deliveries: a map from (pipeline, delivery id) to the execution the
//! first delivery started, checked and filled at admission under one lock, so that concurrent
//! repeats collapse into one execution.
//!
//! An entry lives for its pipeline's `dedupe_window`. Entries are also bounded in number
//! (`capacity`, the app's `max_records`): past it the oldest go first. An entry holds its
//! execution weakly (the execution records own it, within their count and byte bounds): once the
//! record is evicted, a repeat is answered from the durable store's record, or (memory store) runs
//! again. On a durable store the
//! deliveries of finished executions are loaded at start (`Seen::Stored`: only the execution id
//! is kept; its answer is read from the store when a repeat comes).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::runtime::execution::Execution;

/// The execution a delivery id already started.
#[derive(Clone)]
pub enum Seen {
    Live(Arc<Execution>),
    /// Finished before this process started; its record is in the durable store.
    Stored(Box<str>),
}

type Id = (usize, Box<str>);

enum Held {
    Live(Weak<Execution>, Box<str>),
    Stored(Box<str>),
}

struct Entry {
    held: Held,
    expires: Instant,
}

impl Entry {
    fn seen(&self) -> Seen {
        match &self.held {
            Held::Live(weak, id) => weak.upgrade().map_or_else(|| Seen::Stored(id.clone()), Seen::Live),
            Held::Stored(id) => Seen::Stored(id.clone()),
        }
    }
}

fn hold(seen: Seen) -> Held {
    match seen {
        Seen::Live(exec) => Held::Live(Arc::downgrade(&exec), exec.id_str.clone()),
        Seen::Stored(id) => Held::Stored(id),
    }
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<Id, Entry>,
    /// Insertion order with each entry's expiry; may name entries already replaced.
    order: VecDeque<(Instant, Id)>,
}

pub struct Deliveries {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Deliveries {
    pub fn new(capacity: usize) -> Self {
        Deliveries { capacity: capacity.max(1), inner: Mutex::new(Inner::default()) }
    }

    fn insert(inner: &mut Inner, capacity: usize, id: Id, seen: Seen, expires: Instant) {
        inner.order.push_back((expires, id.clone()));
        inner.by_id.insert(id, Entry { held: hold(seen), expires });
        let now = Instant::now();
        while let Some((at, _)) = inner.order.front() {
            if *at > now && inner.by_id.len() <= capacity {
                break;
            }
            let (at, old) = inner.order.pop_front().expect("front exists");
            // Only drop the entry this order slot was pushed for (not a later replacement).
            if inner.by_id.get(&old).is_some_and(|e| e.expires == at) {
                inner.by_id.remove(&old);
            }
        }
    }

    /// Records `exec` as the execution of `delivery` unless a live entry exists: then returns
    /// what that delivery started.
    pub fn claim(&self, pipeline: usize, delivery: &str, window: Duration, exec: &Arc<Execution>) -> Result<(), Seen> {
        let now = Instant::now();
        let id: Id = (pipeline, delivery.into());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = inner.by_id.get(&id) {
            if e.expires > now {
                return Err(e.seen());
            }
        }
        Self::insert(&mut inner, self.capacity, id, Seen::Live(exec.clone()), now + window);
        Ok(())
    }

    /// Replaces whatever `delivery` maps to with `exec` (a stored record that is gone).
    pub fn replace(&self, pipeline: usize, delivery: &str, window: Duration, exec: &Arc<Execution>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Self::insert(
            &mut inner,
            self.capacity,
            (pipeline, delivery.into()),
            Seen::Live(exec.clone()),
            Instant::now() + window,
        );
    }

    /// Loads a delivery seen by an earlier run, `age` ago.
    pub fn remember(&self, pipeline: usize, delivery: &str, seen: Seen, window: Duration, age: Duration) {
        let Some(left) = window.checked_sub(age) else { return };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Self::insert(&mut inner, self.capacity, (pipeline, delivery.into()), seen, Instant::now() + left);
    }

    /// Forgets `delivery` if it still maps to `exec` (its admission was refused).
    pub fn forget(&self, pipeline: usize, delivery: &str, exec: &Arc<Execution>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let id: Id = (pipeline, delivery.into());
        if matches!(inner.by_id.get(&id), Some(Entry { held: Held::Live(e, _), .. }) if e.as_ptr() == Arc::as_ptr(exec))
        {
            inner.by_id.remove(&id);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;
    use crate::runtime::pipeline::Pipeline;
    use crate::state::MemoryStore;

    fn exec(n: u64) -> Arc<Execution> {
        let p = Arc::new(Pipeline::new(0, PipelineConfig::new("p"), Arc::new(MemoryStore::default())));
        Arc::new(Execution::new(n, format!("{n:032x}").into(), p, None, Instant::now()))
    }

    #[test]
    fn a_repeat_gets_the_first_execution_until_the_window_ends() {
        let d = Deliveries::new(100);
        let (a, b) = (exec(1), exec(2));
        let day = Duration::from_secs(86400);
        assert!(d.claim(0, "x", day, &a).is_ok());
        match d.claim(0, "x", day, &b) {
            Err(Seen::Live(first)) => assert!(Arc::ptr_eq(&first, &a)),
            _ => panic!("the repeat must see the first execution"),
        }
        assert!(d.claim(1, "x", day, &b).is_ok(), "pipelines are separate");
        assert!(d.claim(0, "y", Duration::ZERO, &b).is_ok());
        assert!(d.claim(0, "y", day, &a).is_ok(), "an expired entry is replaced");
        d.forget(0, "x", &b);
        assert!(d.claim(0, "x", day, &b).is_err(), "forget leaves another execution's entry");
        d.forget(0, "x", &a);
        assert!(d.claim(0, "x", day, &b).is_ok());
        // Once nothing else holds the execution, a repeat is pointed at its stored record.
        let c = exec(3);
        assert!(d.claim(0, "z", day, &c).is_ok());
        drop(c);
        assert!(
            matches!(d.claim(0, "z", day, &a), Err(Seen::Stored(id)) if &*id == "00000000000000000000000000000003")
        );
    }

    #[test]
    fn bounded_by_capacity_oldest_first() {
        let d = Deliveries::new(3);
        let day = Duration::from_secs(86400);
        for i in 0..5 {
            assert!(d.claim(0, &format!("d{i}"), day, &exec(i)).is_ok());
        }
        assert_eq!(d.len(), 3);
        assert!(d.claim(0, "d0", day, &exec(9)).is_ok(), "the oldest was dropped");
        assert!(d.claim(0, "d4", day, &exec(9)).is_err());
    }
}
