//! The scheduler loop: one thread that polls every pipeline's ring and hands jobs to slots.
//!
//! Per-key order. A key is pinned to the slot that holds its newest job until that job leaves the
//! slot (see [`crate::slots`]). A new job of a pinned key goes to the same slot; a slot runs its
//! mailbox in order; so jobs of one key never run at once and run in arrival order, while other
//! keys spread over the least-loaded warm slots.
//!
//! Micro-batches. A slot's mailbox collects every job the scheduler routed to it since the slot's
//! worker last looked; the worker takes them all (up to `max_batch`) in one hand-over, so one
//! attach to the host language serves many events under load.
//!
//! Bounds. A slot holds at most `max_batch` jobs. When the job at the head of a ring has no room,
//! the scheduler holds it back (one per pipeline, to keep ring order) and stops draining that
//! ring; the ring then fills and the ingress answers 429. Nothing is queued without bound.
//!
//! Idling. `ArrayQueue` has no waker, so the loop spins, then yields, then parks; producers and
//! completions wake it through [`SchedulerWaker`] (a Dekker-style handshake on `sleeping`).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::execution::Job;
use crate::pipeline::Pipeline;

// NOTE: spinning for up to 50 µs after the last event before parking keeps a waiting scheduler
// out of the futex path between back-to-back requests of one connection (a loopback round trip is
// ~40-80 µs here); parking earlier added a wake-up (~10-30 µs on this VM) to every request at c=1.
// The spin yields the core after the first few microseconds, so it costs little to the other
// threads when the machine is busy. See loadtests/README.md for the measurements.
const IDLE_SPIN: Duration = Duration::from_micros(50);
/// Safety net: even with no wake-up, the loop looks again this often.
const PARK_TIMEOUT: Duration = Duration::from_millis(20);
/// Jobs moved from one ring before looking at the next pipeline.
const FAIRNESS_BUDGET: usize = 512;

/// Lets producers wake the parked scheduler thread.
#[derive(Default)]
pub struct SchedulerWaker {
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
}

impl SchedulerWaker {
    /// Wakes the scheduler if it is parked (or about to park). Cheap when it is awake.
    pub fn wake(&self) {
        // Pairs with the fence in `Scheduler::park`: a producer's push (before this call) is either
        // seen by the scheduler's last look, or the scheduler's `sleeping = true` is seen here.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

/// The scheduler's private view of one pipeline.
struct Route {
    pipeline: Arc<Pipeline>,
    senders: Vec<Sender<Job>>,
    keyed: bool,
    /// Key hash → (slot, that slot's `assigned` count right after the key's newest job).
    pins: HashMap<u64, (usize, u64)>,
    /// The ring's head when it could not be placed; always the oldest job not yet routed.
    held: Option<Job>,
    hasher: RandomState,
}

impl Route {
    fn new(pipeline: Arc<Pipeline>) -> Option<Self> {
        let senders = pipeline.slots.take_senders()?;
        let keyed = !matches!(pipeline.config.key, crate::config::KeySpec::None);
        Some(Route { pipeline, senders, keyed, pins: HashMap::new(), held: None, hasher: RandomState::new() })
    }

    /// The slot for a job of key hash `h`: its pinned slot, or the least-loaded warm slot.
    fn target(&self, h: Option<u64>) -> Option<usize> {
        let slots = &self.pipeline.slots.slots;
        if let Some((slot, seq)) = h.and_then(|h| self.pins.get(&h)) {
            if slots[*slot].completed.load(Ordering::Acquire) < *seq {
                return Some(*slot);
            }
        }
        let mut best: Option<(usize, u64)> = None;
        for (i, s) in slots.iter().enumerate() {
            if !s.is_warm() {
                continue;
            }
            let load = s.outstanding();
            if best.is_none_or(|(_, b)| load < b) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Moves jobs from the ring to slots; returns how many moved.
    fn schedule(&mut self) -> usize {
        let max_batch = self.pipeline.config.max_batch.max(1) as u64;
        let mut moved = 0;
        while moved < FAIRNESS_BUDGET {
            let Some(mut job) = self.held.take().or_else(|| self.pipeline.ring.pop()) else { break };
            let h = match (&job.exec.key, self.keyed) {
                (Some(k), true) => Some(self.hasher.hash_one(k.as_bytes())),
                _ => None,
            };
            let target = self.target(h);
            let Some(slot) = target.filter(|&s| self.pipeline.slots.slots[s].outstanding() < max_batch) else {
                self.held = Some(job);
                break;
            };
            let s = &self.pipeline.slots.slots[slot];
            let seq = s.assigned.load(Ordering::Relaxed) + 1;
            // Release: a worker that sees the job also sees the count that accounts for it.
            s.assigned.store(seq, Ordering::Release);
            if let Some(h) = h {
                self.pins.insert(h, (slot, seq));
            }
            job.slot = slot;
            job.assigned = true;
            let mailbox = if self.senders.len() == 1 { 0 } else { slot };
            // Unbounded channel: send fails only when every receiver is gone, and the pool keeps one.
            if let Err(e) = self.senders[mailbox].send(job) {
                drop(e.into_inner());
            }
            moved += 1;
        }
        self.pipeline.slots.backlogged.store(self.held.is_some(), Ordering::Relaxed);
        self.prune_pins(max_batch);
        moved
    }

    /// Drops pins whose slot no longer holds the key's jobs, so the map stays bounded.
    fn prune_pins(&mut self, max_batch: u64) {
        let bound = (self.pipeline.slots.len() as u64 * max_batch * 4 + 1024) as usize;
        if self.pins.len() > bound {
            let slots = &self.pipeline.slots.slots;
            self.pins.retain(|_, (slot, seq)| slots[*slot].completed.load(Ordering::Acquire) < *seq);
        }
    }

    /// Fails what is still queued (shutdown); dropping a job answers its request.
    fn abandon_queued(&mut self) {
        drop(self.held.take());
        while let Some(job) = self.pipeline.ring.pop() {
            drop(job);
        }
    }
}

pub struct Scheduler {
    routes: Vec<Route>,
    waker: Arc<SchedulerWaker>,
    stop: Arc<AtomicBool>,
}

impl Scheduler {
    /// Returns `None` if a pipeline's mailboxes were already taken by another scheduler.
    pub fn new(pipelines: &[Arc<Pipeline>], waker: Arc<SchedulerWaker>, stop: Arc<AtomicBool>) -> Option<Self> {
        let routes = pipelines.iter().cloned().map(Route::new).collect::<Option<Vec<_>>>()?;
        Some(Scheduler { routes, waker, stop })
    }

    fn schedule_all(&mut self) -> usize {
        self.routes.iter_mut().map(Route::schedule).sum()
    }

    /// Runs until `stop` is set; then fails whatever is still in the rings and returns, which
    /// drops the senders and disconnects the slots once they have emptied their mailboxes.
    pub fn run(mut self) {
        let _ = self.waker.thread.set(std::thread::current());
        while !self.stop.load(Ordering::Acquire) {
            if self.schedule_all() > 0 {
                continue;
            }
            self.idle();
        }
        for route in &mut self.routes {
            route.abandon_queued();
        }
    }

    fn idle(&mut self) {
        let spin_start = Instant::now();
        let mut spins = 0u32;
        while spin_start.elapsed() < IDLE_SPIN {
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            spins += 1;
            if self.schedule_all() > 0 || self.stop.load(Ordering::Acquire) {
                return;
            }
        }
        self.waker.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.schedule_all() == 0 && !self.stop.load(Ordering::Acquire) {
            std::thread::park_timeout(PARK_TIMEOUT);
        }
        self.waker.sleeping.store(false, Ordering::Relaxed);
    }

    /// Wakes the loop so it notices `stop`.
    pub fn waker(&self) -> Arc<SchedulerWaker> {
        self.waker.clone()
    }
}
