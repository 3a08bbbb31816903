//! The scheduler loop: one thread that polls every pipeline's ring and hands jobs to slots.
//!
//! Per-key order. A key is pinned to the slot that holds its newest job until that job leaves the
//! slot (see [`crate::runtime::slots`]). A new job of a pinned key goes to the same slot; a slot runs its
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

use crate::runtime::execution::Job;
use crate::runtime::pipeline::Pipeline;

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
            let has_room = |s: &usize| self.pipeline.slots.slots[*s].outstanding() < max_batch;
            let mut target = self.target(h).filter(has_room);
            if target.is_none() {
                // Announce the backlog before the last look, so a slot that completes a job either
                // is seen by that look or sees `backlogged` and wakes us (pairs with `job_left`).
                self.pipeline.slots.backlogged.store(true, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                target = self.target(h).filter(has_room);
            }
            let Some(slot) = target else {
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
    /// `AppConfig::idle_spin`: spin before parking (see the NOTE on `idle`).
    idle_spin: Duration,
    waker: Arc<SchedulerWaker>,
    stop: Arc<AtomicBool>,
}

impl Scheduler {
    /// Returns `None` if a pipeline's mailboxes were already taken by another scheduler.
    pub fn new(
        pipelines: &[Arc<Pipeline>],
        waker: Arc<SchedulerWaker>,
        stop: Arc<AtomicBool>,
        idle_spin: Duration,
    ) -> Option<Self> {
        let routes = pipelines.iter().cloned().map(Route::new).collect::<Option<Vec<_>>>()?;
        Some(Scheduler { routes, idle_spin, waker, stop })
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

    /// Spins (then yields) for `idle_spin`, then parks until woken.
    // NOTE: with one connection each request otherwise pays two futex wake-ups (scheduler, then
    // slot) on top of the loopback round trip. wrk -t1 -c1 against the support bot, 2 slots, four
    // alternating 3 s runs each on the 2-core VM (2026-11-28), best p50: 79 µs with no spin, 58 µs
    // with 50 µs, 62 µs with 200 µs. The VM is noisy (every setting also had runs at 100-113 µs),
    // so 50 µs is kept as the default for its lower CPU cost; `App(spin_us=0)` turns it off.
    // After 64 spins the loop yields, so a busy machine gets the core back.
    fn idle(&mut self) {
        let spin_start = Instant::now();
        let mut spins = 0u32;
        while spin_start.elapsed() < self.idle_spin {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeySpec, PipelineConfig};
    use crate::runtime::execution::Execution;
    use crate::state::MemoryStore;
    use bytes::Bytes;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::thread;

    fn pipeline(slots: usize, max_batch: usize, ring: usize, waker: &Arc<SchedulerWaker>) -> Arc<Pipeline> {
        let mut cfg = PipelineConfig::new("t");
        cfg.key = KeySpec::Field("k".into());
        cfg.min_slots = slots;
        cfg.max_slots = slots;
        cfg.max_batch = max_batch;
        cfg.ring_capacity = ring;
        cfg.timeout = None;
        Arc::new(Pipeline::new(0, cfg, Arc::new(MemoryStore::default()), waker.clone()))
    }

    fn job(p: &Arc<Pipeline>, id: u64, key: &str, seq: u64) -> Job {
        let exec = Arc::new(Execution::new(id, id.to_string().into(), p.clone(), Some(key.into()), Instant::now()));
        p.accepted_one();
        Job::new(exec, Bytes::from(seq.to_string()), Default::default())
    }

    fn start(p: &Arc<Pipeline>, waker: &Arc<SchedulerWaker>) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let sched =
            Scheduler::new(std::slice::from_ref(p), waker.clone(), stop.clone(), Duration::from_micros(50)).unwrap();
        (stop, thread::spawn(move || sched.run()))
    }

    #[test]
    fn same_key_runs_in_order_and_never_concurrently_while_keys_spread() {
        let waker = Arc::new(SchedulerWaker::default());
        let p = pipeline(4, 8, 64, &waker);
        let (stop, sched) = start(&p, &waker);
        let running: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
        let log: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
        let violations = Arc::new(AtomicUsize::new(0));
        let per_slot: Arc<Vec<AtomicUsize>> = Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
        let workers: Vec<_> = (0..4)
            .map(|slot| {
                let rx = p.slots.receiver(slot).unwrap();
                p.slots.mark_warm(slot);
                let (running, log, violations, per_slot) =
                    (running.clone(), log.clone(), violations.clone(), per_slot.clone());
                thread::spawn(move || {
                    while let Ok(mut job) = rx.recv() {
                        assert_eq!(job.slot, slot);
                        per_slot[slot].fetch_add(1, Ordering::Relaxed);
                        job.begin().unwrap();
                        let key = job.exec.key.as_deref().unwrap().to_string();
                        if running.lock().unwrap().insert(key.clone(), true) == Some(true) {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        thread::yield_now();
                        let seq: u64 = std::str::from_utf8(&job.body).unwrap().parse().unwrap();
                        log.lock().unwrap().entry(key.clone()).or_default().push(seq);
                        running.lock().unwrap().insert(key, false);
                        assert!(job.succeed(Bytes::from_static(b"{}"), Some(Bytes::from_static(b"{}"))));
                    }
                })
            })
            .collect();

        let keys = 10u64;
        let per_key = if cfg!(miri) { 5 } else { 300u64 };
        let mut id = 0;
        for seq in 0..per_key {
            for k in 0..keys {
                id += 1;
                let mut j = job(&p, id, &format!("key{k}"), seq);
                while let Err(back) = p.ring.push(j) {
                    j = back;
                    thread::yield_now();
                }
                waker.wake();
            }
        }
        while p.inflight() > 0 {
            thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Release);
        waker.wake();
        sched.join().unwrap();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(violations.load(Ordering::Relaxed), 0, "a key ran on two slots at once");
        let log = log.lock().unwrap();
        assert_eq!(log.len(), keys as usize);
        for (k, seqs) in log.iter() {
            assert_eq!(*seqs, (0..per_key).collect::<Vec<_>>(), "key {k} out of order or lost events");
        }
        let used = per_slot.iter().filter(|n| n.load(Ordering::Relaxed) > 0).count();
        assert!(used >= 2, "independent keys should spread over slots, used {used}");
    }

    #[test]
    fn full_slots_hold_jobs_back_until_the_ring_refuses_more() {
        let waker = Arc::new(SchedulerWaker::default());
        let p = pipeline(1, 2, 4, &waker);
        let (stop, sched) = start(&p, &waker);
        p.slots.mark_warm(0);
        let rx = p.slots.receiver(0).unwrap();
        // The slot takes nothing: 2 jobs fill it, 1 is held back by the scheduler, 4 wait in the ring.
        let mut accepted = Vec::new();
        let mut refused = 0;
        for i in 0..20u64 {
            let j = job(&p, i, &format!("k{i}"), i);
            match p.ring.push(j) {
                Ok(()) => accepted.push(i),
                Err(j) => {
                    j.discard();
                    p.finished_one();
                    refused += 1;
                }
            }
            waker.wake();
            thread::sleep(Duration::from_millis(2));
        }
        assert!(refused > 0, "the ring must refuse once slots and ring are full");
        assert_eq!(accepted.len(), 2 + 1 + 4);
        assert!(p.slots.slot(0).outstanding() <= 2);
        assert!(p.slots.backlogged.load(Ordering::Relaxed));
        // Draining the slot lets every accepted job through, in order.
        let mut got = Vec::new();
        while got.len() < accepted.len() {
            let mut j = rx.recv_timeout(Duration::from_secs(5)).expect("held jobs must flow once the slot drains");
            j.begin().unwrap();
            got.push(std::str::from_utf8(&j.body).unwrap().parse::<u64>().unwrap());
            j.succeed(Bytes::from_static(b"1"), None);
        }
        assert_eq!(got, accepted);
        stop.store(true, Ordering::Release);
        waker.wake();
        sched.join().unwrap();
    }

    #[test]
    fn shutdown_fails_queued_jobs_instead_of_dropping_them_silently() {
        let waker = Arc::new(SchedulerWaker::default());
        let p = pipeline(1, 1, 8, &waker);
        let execs: Vec<_> = (0..3u64)
            .map(|i| {
                let j = job(&p, i, "k", i);
                let e = j.exec.clone();
                assert!(p.ring.push(j).is_ok());
                e
            })
            .collect();
        // No warm slot: nothing can run. Stop the scheduler.
        let (stop, sched) = start(&p, &waker);
        thread::sleep(Duration::from_millis(5));
        stop.store(true, Ordering::Release);
        waker.wake();
        sched.join().unwrap();
        for e in execs {
            assert_eq!(e.status(), crate::runtime::execution::Status::Failed);
            assert!(matches!(
                e.outcome(),
                Some((
                    crate::runtime::execution::Outcome::Failed { code: crate::error::ErrorCode::ShuttingDown, .. },
                    _
                ))
            ));
        }
        assert_eq!(p.inflight(), 0);
    }
}
