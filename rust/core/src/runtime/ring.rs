//! The per-pipeline ring: a bounded, lock-free MPMC queue between the ingress and the scheduler.
//!
//! Invariants:
//! - Capacity is fixed at construction; `push` never blocks and never allocates. A full ring hands
//!   the item back (`Err(item)`), which the ingress turns into `429 overloaded`: admission control
//!   happens before anything is accepted, so nothing accepted is ever dropped here.
//! - Items leave in FIFO order of their successful `push` (crossbeam's `ArrayQueue` guarantees it
//!   with a head/tail stamp protocol on cache-padded indices). Per-key order therefore starts here:
//!   the ingress pushes an event only after its request body was read, and the scheduler is the
//!   only consumer.
//! - `ArrayQueue` has no waker. The consumer (the scheduler thread) spins, yields, then parks on its
//!   own; producers wake it through [`crate::runtime::scheduler::SchedulerWaker`] after a successful push.

use crossbeam_queue::ArrayQueue;

pub struct Ring<T> {
    queue: ArrayQueue<T>,
}

impl<T> Ring<T> {
    /// # Panics
    /// If `capacity` is zero.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a ring needs room for at least one event");
        Ring { queue: ArrayQueue::new(capacity) }
    }

    /// Adds `item` at the tail, or hands it back when the ring is full.
    pub fn push(&self, item: T) -> Result<(), T> {
        self.queue.push(item)
    }

    /// Takes the oldest item, if any.
    pub fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    /// Items waiting now. Racy by nature: a snapshot for gauges and heuristics only.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn full_ring_hands_the_item_back() {
        let ring = Ring::new(2);
        ring.push(1).unwrap();
        ring.push(2).unwrap();
        assert_eq!(ring.push(3), Err(3));
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.pop(), Some(1));
        ring.push(3).unwrap();
        assert_eq!(ring.pop(), Some(2));
        assert_eq!(ring.pop(), Some(3));
        assert_eq!(ring.pop(), None);
    }

    #[test]
    fn concurrent_producers_lose_nothing_and_keep_their_own_order() {
        let producers = 4u64;
        let per = if cfg!(miri) { 50 } else { 20_000u64 };
        let ring = Arc::new(Ring::new(64));
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        let mut item = (p, i);
                        while let Err(back) = ring.push(item) {
                            item = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = vec![0u64; producers as usize];
        let mut seen = 0;
        while seen < producers * per {
            if let Some((p, i)) = ring.pop() {
                assert_eq!(next[p as usize], i, "producer {p} out of order");
                next[p as usize] += 1;
                seen += 1;
            } else {
                std::thread::yield_now();
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        assert!(ring.is_empty());
    }
}
