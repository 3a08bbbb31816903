//! Wake-ups of the requests that wait for executions finished on other threads (slot threads),
//! handed to one task on the I/O runtime so that a burst of results costs one cross-thread wake.
//!
//! ```text
//! slot thread: finish → push the execution, ring the bell only if the drain task sleeps
//! I/O thread:  drain task → notify each execution's waiters (local wakes, no syscall) → sleep
//! ```
//!
//! Invariants:
//! - Every execution pushed while a drain task runs is notified by it: the producer pushes, then
//!   swaps `asleep` to false; the drain task stores `asleep = true`, then looks at the queue again
//!   before it waits (both `SeqCst`). Either it sees the push, or the producer sees `true` and
//!   rings the bell (`Notify::notify_one` keeps a permit for a task not yet waiting).
//! - Without a drain task (no runtime yet, or it stopped), or on a runtime thread, executions are
//!   notified at once by the finishing thread. A drain task that stops (its runtime ends) stops
//!   counting in `running`, then notifies what the queue holds; a producer that pushed after its
//!   first look at `running` looks again after the push and empties the queue itself when it sees
//!   0 (both `SeqCst`: either the drain's pops see the push or the producer sees 0). So nothing
//!   stays queued.

// NOTE: a task woken from outside a current-thread tokio runtime costs a lock of its inject queue and
// an eventfd write every time (tokio 1.54 `current_thread::schedule`). Finishing thread slots' events
// through this one task: 0.12 eventfd writes per response instead of ~0.5 (strace, support bot,
// wrk -c64, 2-core VM). Throughput runs: docs/design/code-notes.md.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;
use tokio::sync::Notify;

use crate::runtime::execution::Execution;

/// How many executions the drain task notifies before it lets other tasks run.
const DRAIN_TURN: usize = 64;

#[derive(Default)]
pub struct Wakes {
    queue: SegQueue<Arc<Execution>>,
    /// Drain tasks running (one per I/O runtime start; 0 or 1 but for a restart's overlap).
    running: AtomicUsize,
    asleep: AtomicBool,
    bell: Notify,
}

impl Wakes {
    /// Wakes whoever waits for `exec` (its outcome is published): now on a runtime thread or
    /// without a drain task, else through the drain task.
    pub(crate) fn wake(&self, exec: &Arc<Execution>) {
        if self.running.load(Ordering::SeqCst) == 0 || tokio::runtime::Handle::try_current().is_ok() {
            exec.notify_waiters();
            return;
        }
        self.queue.push(exec.clone());
        if self.running.load(Ordering::SeqCst) == 0 {
            // The drain task ended after our first look: its last pops may have missed this push
            // (and a queued execution would keep its pipeline alive through `wakes`).
            while let Some(exec) = self.queue.pop() {
                exec.notify_waiters();
            }
            return;
        }
        if self.asleep.swap(false, Ordering::SeqCst) {
            self.bell.notify_one();
        }
    }

    /// The drain task: runs on the I/O runtime until the runtime drops it.
    pub(crate) async fn drain(self: Arc<Self>) {
        struct Running(Arc<Wakes>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.running.fetch_sub(1, Ordering::SeqCst);
                while let Some(exec) = self.0.queue.pop() {
                    exec.notify_waiters();
                }
            }
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        let _running = Running(self.clone());
        loop {
            let mut turn = 0;
            while let Some(exec) = self.queue.pop() {
                exec.notify_waiters();
                turn += 1;
                if turn == DRAIN_TURN {
                    turn = 0;
                    tokio::task::yield_now().await;
                }
            }
            self.asleep.store(true, Ordering::SeqCst);
            if !self.queue.is_empty() {
                self.asleep.store(false, Ordering::SeqCst);
                continue;
            }
            self.bell.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::config::PipelineConfig;
    use crate::error::ErrorCode;
    use crate::runtime::execution::Execution;
    use crate::runtime::pipeline::Pipeline;
    use crate::state::MemoryStore;

    fn executions(n: u64) -> (Arc<Pipeline>, Vec<Arc<Execution>>) {
        let p = Arc::new(Pipeline::new(0, PipelineConfig::new("p"), Arc::new(MemoryStore::default())));
        let execs =
            (0..n).map(|i| Arc::new(Execution::new(i, format!("{i:032x}").into(), p.clone(), None, Instant::now())));
        (p.clone(), execs.collect())
    }

    /// Executions finished by other threads in bursts wake every waiter. Each round ends in
    /// silence, so a wake-up lost between the drain task's last look at the queue and its sleep
    /// is not rescued by a later push: the round's waiters time out.
    #[test]
    fn every_waiter_wakes_when_other_threads_finish() {
        let (p, execs) = executions(20_000);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let finishers: Vec<_> = (0..2)
            .map(|t| {
                let (tx, rx) = std::sync::mpsc::channel::<Vec<Arc<Execution>>>();
                let thread = std::thread::spawn(move || {
                    for (round, burst) in rx.into_iter().enumerate() {
                        for (i, e) in burst.iter().enumerate() {
                            assert!(e.abandon(ErrorCode::PipelineError, format!("{t}/{i}")));
                            // Uneven gaps, so pushes land anywhere in the drain task's cycle.
                            let spin = Instant::now() + Duration::from_micros(((round * 7 + i * 13) % 23) as u64);
                            while Instant::now() < spin {
                                std::hint::spin_loop();
                            }
                        }
                    }
                });
                (tx, thread)
            })
            .collect();
        rt.block_on(async {
            tokio::spawn(p.wakes.clone().drain());
            tokio::task::yield_now().await; // the drain task runs (and counts itself) first
            assert_eq!(p.wakes.running.load(std::sync::atomic::Ordering::SeqCst), 1);
            for (round, chunk) in execs.chunks(40).enumerate() {
                let waiters: Vec<_> = chunk
                    .iter()
                    .map(|e| {
                        let e = e.clone();
                        tokio::spawn(async move { e.wait().await.0.clone() })
                    })
                    .collect();
                let (a, b) = chunk.split_at(chunk.len() / 2);
                finishers[0].0.send(a.to_vec()).unwrap();
                finishers[1].0.send(b.to_vec()).unwrap();
                for w in waiters {
                    let outcome = tokio::time::timeout(Duration::from_secs(10), w).await;
                    assert!(
                        matches!(outcome, Ok(Ok(crate::runtime::execution::Outcome::Failed { .. }))),
                        "round {round}: a waiter was not woken"
                    );
                }
            }
        });
        for (tx, thread) in finishers {
            drop(tx);
            thread.join().unwrap();
        }
        drop(rt); // drops the drain task: it no longer counts, later finishes notify at once
        assert_eq!(p.wakes.running.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(p.wakes.queue.is_empty());
    }

    /// One execution at a time, finished by another thread while its waiter waits: a missed
    /// wake-up shows at once (no later push would rescue it). Executions finished on the runtime
    /// thread itself are woken directly, never queued.
    #[test]
    fn one_at_a_time_every_waiter_wakes() {
        let (p, execs) = executions(3_000);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (to_finisher, finish) = std::sync::mpsc::channel::<Arc<Execution>>();
        let (finished, acks) = std::sync::mpsc::channel::<()>();
        let finisher = std::thread::spawn(move || {
            for e in finish {
                assert!(e.abandon(ErrorCode::PipelineError, "x".into()));
                finished.send(()).unwrap();
            }
        });
        rt.block_on(async {
            tokio::spawn(p.wakes.clone().drain());
            tokio::task::yield_now().await;
            for (i, e) in execs.iter().enumerate() {
                let waiter = {
                    let e = e.clone();
                    tokio::spawn(async move { e.wait().await.0.clone() })
                };
                if i % 2 == 0 {
                    to_finisher.send(e.clone()).unwrap();
                } else {
                    assert!(e.abandon(ErrorCode::PipelineError, "here".into()));
                    assert!(p.wakes.queue.is_empty(), "finished on the runtime thread: woken directly");
                }
                let outcome = tokio::time::timeout(Duration::from_secs(10), waiter).await;
                assert!(
                    matches!(outcome, Ok(Ok(crate::runtime::execution::Outcome::Failed { .. }))),
                    "execution {i}: its waiter was not woken"
                );
                if i % 2 == 0 {
                    // A waiter first polled after the finish completes without the wake-up, so the
                    // finisher may queue it after that: let its push land and the drain take it
                    // before the next step looks at the queue.
                    acks.recv().unwrap();
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while !p.wakes.queue.is_empty() {
                        assert!(std::time::Instant::now() < deadline, "the drain task left execution {i} queued");
                        tokio::task::yield_now().await;
                    }
                }
            }
        });
        drop(to_finisher);
        finisher.join().unwrap();
    }

    /// Without a drain task (no I/O runtime), the finishing thread wakes the waiters itself.
    #[test]
    fn without_a_drain_task_finishing_wakes_at_once() {
        let (_p, execs) = executions(1);
        let e = execs[0].clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let waiter = {
                let e = e.clone();
                tokio::spawn(async move { e.wait().await.0.clone() })
            };
            tokio::task::yield_now().await;
            std::thread::spawn(move || assert!(e.abandon(ErrorCode::PipelineError, "x".into()))).join().unwrap();
            let outcome = tokio::time::timeout(Duration::from_secs(10), waiter).await;
            assert!(matches!(outcome, Ok(Ok(crate::runtime::execution::Outcome::Failed { .. }))));
        });
    }
}
