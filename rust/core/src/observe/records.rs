//! Bounded execution records for `GET /executions/<id>`: the newest `capacity` executions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::runtime::execution::Execution;

pub struct Records {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<u64, Arc<Execution>>,
    order: VecDeque<u64>,
}

impl Records {
    pub fn new(capacity: usize) -> Self {
        Records { capacity: capacity.max(1), inner: Mutex::new(Inner::default()) }
    }

    pub fn insert(&self, exec: Arc<Execution>) {
        let mut inner = self.inner.lock().unwrap();
        inner.order.push_back(exec.id);
        inner.by_id.insert(exec.id, exec);
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.by_id.remove(&old);
            }
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<Execution>> {
        self.inner.lock().unwrap().by_id.get(&id).cloned()
    }

    /// Recorded executions without a final outcome yet.
    pub fn unfinished(&self) -> Vec<Arc<Execution>> {
        let inner = self.inner.lock().unwrap();
        inner.by_id.values().filter(|e| !e.status().is_final()).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
