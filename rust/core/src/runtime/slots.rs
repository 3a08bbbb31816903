//! The slot pool of one pipeline: mailboxes that hand jobs to pre-warmed workers, and the counters
//! the scheduler uses to keep per-key order and bound what each slot holds.
//!
//! A slot is a worker (a host-language thread, or a task on an event loop) whose pipeline instance
//! was set up before traffic came. Only warm slots receive jobs. Accounting, per slot:
//! - `assigned` counts jobs the scheduler handed over (written by the scheduler only);
//! - `completed` counts jobs that left the slot, whatever their outcome (written when a job drops).
//!
//! `assigned - completed` is what the slot still holds. A key is pinned to a slot while the slot
//! holds one of its jobs (`completed < seq` of the key's newest job); because a slot runs its
//! mailbox in order, same-key jobs then run one after another, in arrival order.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::CachePadded;

use crate::runtime::execution::Job;
use crate::runtime::scheduler::SchedulerWaker;

#[derive(Default)]
pub struct Slot {
    pub(crate) warm: AtomicBool,
    pub(crate) assigned: CachePadded<AtomicU64>,
    pub(crate) completed: CachePadded<AtomicU64>,
}

impl Slot {
    /// Jobs handed to this slot that have not left it.
    pub fn outstanding(&self) -> u64 {
        let completed = self.completed.load(Ordering::Acquire);
        self.assigned.load(Ordering::Acquire).saturating_sub(completed)
    }

    pub fn is_warm(&self) -> bool {
        self.warm.load(Ordering::Acquire)
    }
}

pub struct SlotPool {
    pub(crate) slots: Box<[Slot]>,
    receivers: Vec<Receiver<Job>>,
    /// Taken by the scheduler when it starts; dropping them disconnects the slots.
    senders: Mutex<Option<Vec<Sender<Job>>>>,
    /// Set by the scheduler while it holds a job back because every eligible slot is full.
    pub(crate) backlogged: AtomicBool,
    waker: Arc<SchedulerWaker>,
}

impl SlotPool {
    /// `shared_mailbox`: one mailbox for all slots (an event loop demultiplexes by `Job::slot`).
    pub fn new(max_slots: usize, shared_mailbox: bool, waker: Arc<SchedulerWaker>) -> Self {
        let mailboxes = if shared_mailbox { 1 } else { max_slots };
        let (senders, receivers) = (0..mailboxes).map(|_| crossbeam_channel::unbounded()).unzip();
        SlotPool {
            slots: (0..max_slots).map(|_| Slot::default()).collect(),
            receivers,
            senders: Mutex::new(Some(senders)),
            backlogged: AtomicBool::new(false),
            waker,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn slot(&self, index: usize) -> &Slot {
        &self.slots[index]
    }

    /// The mailbox a worker for `slot` reads (the shared one for event-loop pools).
    pub fn receiver(&self, slot: usize) -> Option<Receiver<Job>> {
        if self.receivers.len() == 1 {
            return self.receivers.first().cloned();
        }
        self.receivers.get(slot).cloned()
    }

    pub(crate) fn take_senders(&self) -> Option<Vec<Sender<Job>>> {
        self.senders.lock().unwrap().take()
    }

    /// A slot whose instance is set up; from now on it receives jobs.
    pub fn mark_warm(&self, slot: usize) {
        self.slots[slot].warm.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// A slot that stopped (its worker exited); it receives no more jobs.
    pub fn mark_cold(&self, slot: usize) {
        self.slots[slot].warm.store(false, Ordering::Release);
    }

    pub fn warm_count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_warm()).count()
    }

    pub fn busy_count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_warm() && s.outstanding() > 0).count()
    }

    /// Called when a job leaves its slot (the job's drop).
    pub(crate) fn job_left(&self, slot: usize) {
        self.slots[slot].completed.fetch_add(1, Ordering::AcqRel);
        // Pairs with the fence in the scheduler's park path: either it sees this completion, or we
        // see that it is backlogged and wake it.
        fence(Ordering::SeqCst);
        if self.backlogged.load(Ordering::Relaxed) {
            self.waker.wake();
        }
    }
}
