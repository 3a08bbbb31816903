//! The process backend: each slot is a warm worker process (`python -m warmslot.worker ...`)
//! that the slot's Rust thread spawns, feeds batches and watches.
//!
//! - **Spawn, never fork.** The server runs tokio and many threads, so workers are spawned with
//!   `Command` (fork+exec of a fresh interpreter that imports the app from its target). The
//!   worker's end of a Unix socketpair is its stdin; it moves it away and reopens stdin on
//!   `/dev/null`. Our end is close-on-exec, so no other worker inherits it.
//! - **Crash.** EOF on the socket means the worker died: we reap it (`wait`, so no zombie) and
//!   report the exit code or signal; the slot loop fails the event it was running and requeues
//!   the rest of the batch.
//! - **Hang.** Reading a result is bounded by the running event's deadline plus a grace period;
//!   past it the worker gets SIGUSR1 (it registered `faulthandler` on it, so its Python stack goes
//!   to the log, even from inside C code), then SIGKILL, and is reaped.
//! - **Stop.** Dropping the backend closes our end (the worker reads EOF and exits), waits a
//!   moment, then kills and reaps. A worker also asks the kernel for SIGKILL when its parent dies
//!   (`PR_SET_PDEATHSIG`), so a SIGKILLed server leaves no orphans.

// NOTE: IPC: a Unix socketpair, length-prefixed batch frames, one write per batch and one per result
// (a result that left the worker survives its death: a crash fails only the running event). Light
// support bot, 2 slots, wrk -c64: ~22 µs of server CPU per request, uvicorn --workers 2 24 µs
// (per-thread /proc, 2-core VM). What else was measured: docs/design/process-slots.md.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::WorkerCommand;
use crate::runtime::pipeline::Pipeline;
use crate::runtime::slot_loop::{Backend, Begun, CommitNow, More, RunResult, SlotDied};
use crate::runtime::wire::{self, WireResult};

/// After a run's deadline, how long its worker gets before it is killed.
const HANG_GRACE: Duration = Duration::from_secs(1);
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Without `max_memory_mb`, how often a worker's resident memory is read for the gauge.
const RSS_GAUGE_EVERY: Duration = Duration::from_secs(1);
/// How long a hung worker gets to print its stack (SIGUSR1) before it is killed.
const STACK_DUMP_GRACE: Duration = Duration::from_millis(300);
const MAX_FRAME: usize = 256 << 20;

pub struct ProcessBackend {
    pipeline: Arc<Pipeline>,
    slot: usize,
    child: Option<Child>,
    sock: UnixStream,
    reader: FrameReader,
    pid: u32,
    executions: u64,
    recycle_after: Option<u64>,
    /// The worker's last CPU-time reading, and whether a batch is between its two readings.
    cpu_last: Option<u64>,
    cpu_in_batch: bool,
    cpu_read_at: Option<Instant>,
    rss_read_at: Option<Instant>,
    /// How long an idle slot spins (the app's `spin_us`): also how long this slot polls for its
    /// worker's next result while results come faster than that.
    spin: Duration,
    /// Moving average of the time between a worker's results (µs).
    result_gap_us: f64,
}

/// Why a worker did not become warm.
#[derive(Debug)]
pub enum SpawnError {
    /// The worker reported that importing the app or warming the pipeline failed.
    Warmup(String),
    /// The worker could not be started or died while warming.
    Process(String),
    /// The pipeline closed while the worker warmed.
    Stopped,
}

fn describe(status: ExitStatus) -> (&'static str, String) {
    if let Some(sig) = status.signal() {
        let name = match sig {
            6 => " (SIGABRT)",
            9 => " (SIGKILL)",
            11 => " (SIGSEGV)",
            15 => " (SIGTERM)",
            7 => " (SIGBUS)",
            8 => " (SIGFPE)",
            _ => "",
        };
        ("signal", format!("was killed by signal {sig}{name}"))
    } else {
        ("exit", format!("exited with code {}", status.code().unwrap_or(-1)))
    }
}

/// Reads result frames from a worker through a buffer: one `read` usually brings several.
// NOTE: reading frame by frame (a 1-byte read, the rest of the length, the payload, two
// `setsockopt`s) cost ~60 µs of server CPU per light event at 64 connections (2-core CI VM);
// buffered reads with the timeout set only when it changes cost a fraction. The buffer is zeroed
// only when it grows (docs/design/process-slots.md).
struct FrameReader {
    /// Bytes `[start, end)` are read and not yet taken; `buf.len()` is the capacity in use.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The socket's read timeout as last set (`None` before the first).
    timeout: Option<Option<Duration>>,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader { buf: vec![0; 64 * 1024], start: 0, end: 0, timeout: None }
    }
}

impl FrameReader {
    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// A whole frame from the buffer, if one is there.
    fn take(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let have = self.buffered();
        if have.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([have[0], have[1], have[2], have[3]]) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::new(ErrorKind::InvalidData, "oversized frame from a worker"));
        }
        if have.len() < 4 + len {
            return Ok(None);
        }
        let frame = have[4..4 + len].to_vec();
        self.start += 4 + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 1 << 20 {
                self.buf = vec![0; 64 * 1024]; // a large frame passed: do not keep its buffer
            }
        }
        Ok(Some(frame))
    }

    // NOTE: the wait is "until the running event's deadline", a little shorter each read, so a timeout
    // set when it changes was still a `setsockopt` per read. One that ends no later than wanted and at
    // most 10% (or 1 ms) earlier is kept: an early wake-up costs a turn of the caller's loop, never a
    // missed deadline. `exact` (the rest of a begun frame, bounded by the hang grace) sets it as asked.
    fn set_timeout(&mut self, sock: &UnixStream, t: Option<Duration>, exact: bool) -> std::io::Result<()> {
        let t = t.map(|t| t.max(Duration::from_micros(100)));
        let keep = match (self.timeout, t) {
            (Some(set), want) if set == want => true,
            (Some(Some(set)), Some(want)) if !exact => {
                set <= want && want - set <= (want / 10).max(Duration::from_millis(1))
            }
            _ => false,
        };
        if !keep {
            sock.set_read_timeout(t)?;
            self.timeout = Some(t);
        }
        Ok(())
    }

    /// Polls `sock` (non-blocking reads, spinning, then yielding) until bytes come or `until`;
    /// true when bytes came.
    fn poll(&mut self, sock: &UnixStream, until: Instant) -> std::io::Result<bool> {
        let mut turn = 0u32;
        loop {
            match rustix::net::recv(sock, &mut self.buf[self.end..], rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok((got, _)) => {
                    self.end += got;
                    return Ok(true);
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            turn += 1;
            if Instant::now() >= until {
                return Ok(false);
            }
            if turn < 16 {
                std::hint::spin_loop()
            } else {
                std::thread::yield_now()
            }
        }
    }

    /// Reads one frame. `wait` bounds the wait when no frame has begun; once one has, the rest is
    /// read with `rest` as the bound (so a timeout never splits a frame). Before a blocking read
    /// for a frame not yet begun, polls for up to `spin` (within `wait`).
    fn next(
        &mut self,
        sock: &mut UnixStream,
        wait: Option<Duration>,
        rest: Option<Duration>,
        spin: Duration,
    ) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(frame) = self.take()? {
                return Ok(frame);
            }
            let begun = !self.buffered().is_empty();
            let t = if begun { rest.map(|r| r.max(Duration::from_millis(1))) } else { wait };
            self.set_timeout(sock, t, begun)?;
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < 16 * 1024 {
                // A frame larger than the buffer: grow it (zeroed once).
                let grown = (self.buf.len() * 2).min(MAX_FRAME + 4).max(self.end + 16 * 1024);
                self.buf.resize(grown, 0);
            }
            if spin > Duration::ZERO
                && !begun
                && self.poll(sock, Instant::now() + wait.map_or(spin, |w| w.min(spin)))?
            {
                continue;
            }
            let end = self.end;
            let got = loop {
                match sock.read(&mut self.buf[end..]) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            match got {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.end += n,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Waits up to `grace` for `child` to exit, then kills it; always reaps it (no zombie).
fn reap_within(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Resident set size of `pid` in bytes (Linux `/proc`), if readable.
fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// User + system CPU time of process `pid` in µs (Linux `/proc/<pid>/stat`, fields 14 and 15),
/// if readable.
fn process_cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some((utime + stime) * 1_000_000 / hz)
}

impl ProcessBackend {
    /// Starts a worker for `slot` and waits until it is warm (or fails, or the pipeline closes).
    pub fn spawn(
        pipeline: &Arc<Pipeline>,
        slot: usize,
        cmd: &WorkerCommand,
        spin: Duration,
    ) -> Result<ProcessBackend, SpawnError> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| SpawnError::Process(format!("socketpair: {e}")))?;
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .env("WARMSLOT_WORKER", "1")
            .env("WARMSLOT_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .spawn()
            .map_err(|e| SpawnError::Process(format!("cannot start {:?}: {e}", cmd.program)))?;
        let pid = child.id();
        let mut sock = ours;
        // Wait for the hello frame in slices so a shutdown is not held up by a slow warm-up.
        let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut len = [0u8; 4];
        let mut got = 0;
        loop {
            match sock.read(&mut len[got..]) {
                Ok(0) => {
                    let status = child.wait().map_err(|e| SpawnError::Process(e.to_string()))?;
                    let (_, how) = describe(status);
                    return Err(SpawnError::Process(format!("worker process (pid {pid}) {how} while warming up")));
                }
                Ok(n) => {
                    got += n;
                    if got == 4 {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    if pipeline.is_closed() {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(SpawnError::Stopped);
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(SpawnError::Process(format!("worker process (pid {pid}): {e}")));
                }
            }
        }
        let _ = sock.set_read_timeout(Some(Duration::from_secs(30)));
        let n = u32::from_le_bytes(len) as usize;
        let mut payload = vec![0u8; n.min(MAX_FRAME)];
        let hello = sock
            .read_exact(&mut payload)
            .map_err(|e| e.to_string())
            .and_then(|_| wire::decode_result(&payload).map_err(|e| e.0.to_string()));
        let _ = sock.set_read_timeout(None);
        let _ = sock.set_write_timeout(Some(WRITE_TIMEOUT));
        match hello {
            Ok(WireResult::Ready) => {}
            Ok(WireResult::WarmupFailed(message)) => {
                reap_within(&mut child, STOP_GRACE);
                return Err(SpawnError::Warmup(message));
            }
            Ok(_) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::Process(format!("worker process (pid {pid}) sent no valid hello")));
            }
        }
        let cfg = &pipeline.config;
        // Jitter (up to +10%) keeps workers started together from recycling together.
        let recycle_after = cfg.max_executions.map(|n| n + (u64::from(pid) * 7919) % (n / 10 + 1));
        Ok(ProcessBackend {
            pipeline: pipeline.clone(),
            slot,
            child: Some(child),
            sock,
            reader: FrameReader::default(),
            pid,
            executions: 0,
            recycle_after,
            cpu_last: None,
            cpu_in_batch: false,
            cpu_read_at: None,
            rss_read_at: None,
            spin,
            result_gap_us: f64::INFINITY,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reaps the dead (or killed) worker and says how it ended.
    fn reap(&mut self, kill: bool, hung: bool) -> (&'static str, String) {
        let Some(mut child) = self.child.take() else { return ("exit", "exited".into()) };
        if hung {
            // The worker registered faulthandler on SIGUSR1: its Python stack goes to the log.
            if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
                if rustix::process::kill_process(pid, rustix::process::Signal::USR1).is_ok() {
                    reap_within(&mut child, STACK_DUMP_GRACE);
                }
            }
        }
        if kill {
            let _ = child.kill();
        }
        match child.wait() {
            Ok(status) => describe(status),
            Err(e) => ("exit", format!("could not be reaped: {e}")),
        }
    }

    /// The worker died (or is killed now) with `batch[..sent]` sent to it: in order, the first
    /// event without a result was running (all of them with concurrency > 1); the rest never
    /// started.
    fn died(&mut self, batch: &[Begun], sent: usize, reason_hint: Option<&'static str>, kill: bool) -> SlotDied {
        let (reason, how) = self.reap(kill, reason_hint == Some("hang"));
        let concurrent = self.pipeline.config.concurrency > 1;
        let started =
            if concurrent { sent } else { batch[..sent].iter().position(|b| !b.has_result()).map_or(sent, |i| i + 1) };
        let hung = reason_hint == Some("hang")
            || batch.iter().take(started).any(|b| !b.has_result() && b.job.exec.status().is_final());
        let reason = if hung { "hang" } else { reason_hint.unwrap_or(reason) };
        let name = &self.pipeline.config.name;
        let message = if hung {
            format!(
                "pipeline {name:?} ran past its timeout; its worker process (pid {}) {how} and was replaced",
                self.pid
            )
        } else {
            format!("the worker process (pid {}) of pipeline {name:?} {how} while running this execution", self.pid)
        };
        SlotDied { reason, message, started }
    }
}

impl ProcessBackend {
    fn send(&mut self, batch: &[Begun], base: usize) -> bool {
        self.sock.write_all(&wire::encode_batch(base as u32, &batch[base..])).is_ok()
    }
}

// NOTE: while results come faster than `spin_us`, the slot polls for the next one (non-blocking
// reads, then `sched_yield`) up to `spin_us` before it blocks in `read`, which woke the slot thread
// for every light event. 2 process slots, wrk -c64: 42.1k/44.0k req/s at the default 50 µs against
// 34.9k/33.3k at `spin_us=0` (2-core VM, release; docs/design/process-slots.md).
// NOTE: a slot with `concurrency > 1` tops itself up while its worker runs: when it has room, it
// waits for results at most TOP_UP_POLL, then takes newly runnable events (without blocking) and
// sends them. New events wait at most this long for a busy async slot that has room.
const TOP_UP_POLL: Duration = Duration::from_millis(2);
/// How often a slot reads its worker's CPU time (see `cpu_clock_us`).
const CPU_READ_EVERY: Duration = Duration::from_millis(10);
/// Longest a result waits for a batched commit (`commits_inline` false).
const COMMIT_AFTER: Duration = Duration::from_millis(1);
/// Without a deadline, a slot waiting for its worker looks this often whether the server stopped.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// A worker that does not take a batch frame within this long is treated as hung.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

impl Backend for ProcessBackend {
    // NOTE: results commit as they arrive, except on a store that commits a batch in one transaction
    // (SQLite: a transaction per event cost 86 µs of CPU per event against 56 µs, counter bot, 2 process
    // slots, wrk -c64). There `run` commits what came back when the worker leaves it waiting
    // `COMMIT_AFTER`, or the oldest held result is that old: none is held behind a slow or hung event.
    fn commits_inline(&self) -> bool {
        !self.pipeline.store.commits_in_batches()
    }

    fn run(
        &mut self,
        batch: &mut Vec<Begun>,
        more: &mut More<'_>,
        done: &mut dyn FnMut(&mut Begun, RunResult),
        commit_now: &mut CommitNow<'_>,
    ) -> Result<(), SlotDied> {
        if batch.is_empty() {
            return Ok(());
        }
        // When the oldest result held for a batched commit arrived (see `commits_inline`).
        let mut held_since: Option<Instant> = None;
        let concurrency = self.pipeline.config.concurrency.max(1);
        let concurrent = concurrency > 1;
        // A concurrent slot stops topping up after this many events, so that retirement and
        // recycling (checked between runs) get their turn under steady load.
        let top_up_limit = 4 * self.pipeline.config.max_batch.max(concurrency);
        if concurrent {
            batch.iter_mut().for_each(Begun::start_run);
        } else {
            batch[0].start_run();
        }
        if !self.send(batch, 0) {
            return Err(self.died(batch, 0, None, true));
        }
        let mut sent = batch.len();
        let mut left = batch.len();
        let mut last_result = Instant::now();
        while left > 0 {
            if concurrent && left < concurrency && sent < top_up_limit && !self.pipeline.is_closed() {
                let mut extra = more((concurrency - left).min(top_up_limit - sent));
                if !extra.is_empty() {
                    extra.iter_mut().for_each(Begun::start_run);
                    left += extra.len();
                    batch.append(&mut extra);
                    if !self.send(batch, sent) {
                        return Err(self.died(batch, sent, None, true));
                    }
                    sent = batch.len();
                }
            }
            // Bound the wait by the deadline of what runs now: the first event without a result
            // when the worker runs them in order, the earliest of those out with concurrency > 1.
            let running = batch.iter().filter(|b| !b.has_result());
            let deadline = if concurrent {
                running.filter_map(|b| b.job.exec.deadline).min()
            } else {
                running.take(1).find_map(|b| b.job.exec.deadline)
            };
            let hang_at = deadline.map(|d| d + HANG_GRACE);
            let mut wait = hang_at.map(|t| t.saturating_duration_since(Instant::now()));
            if concurrent && left < concurrency && sent < top_up_limit {
                wait = Some(wait.map_or(TOP_UP_POLL, |t| t.min(TOP_UP_POLL)));
            } else if wait.is_none() {
                wait = Some(IDLE_POLL); // no deadline: look up now and then to see if we stopped
            }
            if let Some(since) = held_since {
                let left = (since + COMMIT_AFTER).saturating_duration_since(Instant::now());
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            let rest = hang_at.map(|t| t.saturating_duration_since(Instant::now()) + HANG_GRACE);
            // Poll only while results come fast and one came just now (not through a slow event).
            let spin_us = self.spin.as_secs_f64() * 1e6;
            let fast = self.result_gap_us < spin_us && last_result.elapsed() < self.spin;
            let poll = if fast { self.spin } else { Duration::ZERO };
            let frame = match self.reader.next(&mut self.sock, wait, rest, poll) {
                Ok(f) => f,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    // A timeout may end a little early (see `set_timeout`): commit only when due.
                    if held_since.is_some_and(|since| since.elapsed() >= COMMIT_AFTER) {
                        held_since = None;
                        commit_now(batch);
                    }
                    if hang_at.is_some_and(|t| Instant::now() >= t) {
                        return Err(self.died(batch, sent, Some("hang"), true));
                    }
                    if hang_at.is_none() && self.pipeline.is_closed() {
                        // The server stopped and its drain is over: this run's answer was given.
                        return Err(self.died(batch, sent, Some("hang"), true));
                    }
                    continue; // a poll (a frame that has begun is never split by a timeout)
                }
                Err(e) if e.kind() == ErrorKind::InvalidData => {
                    return Err(self.died(batch, sent, Some("protocol"), true))
                }
                Err(_) => return Err(self.died(batch, sent, None, false)),
            };
            let now = Instant::now();
            let gap = now.duration_since(last_result).as_secs_f64() * 1e6;
            last_result = now;
            self.result_gap_us =
                if self.result_gap_us.is_finite() { 0.8 * self.result_gap_us + 0.2 * gap } else { gap };
            match wire::decode_result(&frame) {
                Ok(WireResult::Event(i, result)) if (i as usize) < sent => {
                    let b = &mut batch[i as usize];
                    if !b.has_result() {
                        left -= 1;
                    }
                    done(b, result);
                    if b.awaits_commit() {
                        let since = *held_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= COMMIT_AFTER {
                            held_since = None;
                            commit_now(batch);
                        }
                    }
                    if !concurrent {
                        // In order: the next event starts as this one's result leaves the worker.
                        if let Some(next) = batch.iter_mut().find(|b| !b.has_result()) {
                            next.start_run();
                        }
                    }
                }
                _ => return Err(self.died(batch, sent, Some("protocol"), true)),
            }
        }
        self.executions += batch.len() as u64;
        Ok(())
    }

    // NOTE: from `/proc/<pid>/stat` (10 ms ticks), read at most every `CPU_READ_EVERY`; the reading
    // after one batch starts the next, so the differences telescope and lose no time. Reading it after
    // every batch was 12% of a slot thread's CPU (perf, support bot, 64 connections, release build;
    // details and limits: docs/design/process-slots.md).
    fn cpu_clock_us(&mut self) -> Option<u64> {
        // The slot loop asks before and after each batch, in pairs.
        self.cpu_in_batch = !self.cpu_in_batch;
        let fresh = self.cpu_read_at.is_some_and(|t| t.elapsed() < CPU_READ_EVERY);
        if self.cpu_last.is_some() && (self.cpu_in_batch || fresh) {
            return self.cpu_last;
        }
        self.cpu_read_at = Some(Instant::now());
        self.cpu_last = process_cpu_us(self.pid);
        self.cpu_last
    }

    fn recycle(&mut self) -> Option<&'static str> {
        if self.executions == 0 {
            return None; // a fresh worker runs at least one batch, whatever its size
        }
        if self.recycle_after.is_some_and(|n| self.executions >= n) {
            return Some("max_executions");
        }
        // NOTE: `/proc` reads cost tens of µs, as much as a light event's round trip: RSS is read
        // after every batch only to enforce `max_memory_mb`, else at most once a second (gauge).
        let limit = self.pipeline.config.max_memory_mb;
        if limit.is_none() && self.rss_read_at.is_some_and(|t| t.elapsed() < RSS_GAUGE_EVERY) {
            return None;
        }
        self.rss_read_at = Some(Instant::now());
        let rss = rss_bytes(self.pid).unwrap_or(0);
        self.pipeline.slots.set_rss(self.slot, rss);
        match limit {
            Some(mb) if rss > mb * 1024 * 1024 => Some("max_memory"),
            _ => None,
        }
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        reap_within(&mut child, STOP_GRACE);
    }
}

/// Runs one process slot until it retires or the pipeline closes: spawns a warm worker, runs
/// batches on it, replaces it after a crash or a recycle, and backs off while warm-ups keep
/// failing. `report(kind, message)` tells the host about `warm`, `warmup_failed`, `crashed`,
/// `recycled` (for its log).
pub fn run_process_slot(
    pipeline: &Arc<Pipeline>,
    slot: usize,
    cmd: &WorkerCommand,
    spin: Duration,
    first_reason: crate::runtime::slots::WarmupReason,
    report: &dyn Fn(&str, &str),
) {
    use crate::runtime::slot_loop::{run_slot, LoopEnd, LoopSettings};
    use crate::runtime::slots::WarmupReason;
    let live = pipeline.slots.live_loop();
    let mut reason = first_reason;
    let mut failures = 0u32;
    loop {
        if pipeline.is_closed() {
            return;
        }
        if reason == WarmupReason::Replace && pipeline.slots.should_retire() {
            live.retired(); // the pool shrinks: do not replace this worker
            return;
        }
        let begun = Instant::now();
        let mut backend = match ProcessBackend::spawn(pipeline, slot, cmd, spin) {
            Ok(b) => b,
            Err(SpawnError::Stopped) => return,
            Err(SpawnError::Warmup(m) | SpawnError::Process(m)) => {
                failures += 1;
                let backoff = Duration::from_millis(500) * 2u32.pow(failures.min(6) - 1);
                let backoff = backoff.min(Duration::from_secs(30));
                let message = format!(
                    "slot {slot} of pipeline {:?} failed to warm up (attempt {failures}, retrying in {:.1}s): {m}",
                    pipeline.config.name,
                    backoff.as_secs_f64()
                );
                pipeline.slots.set_error(slot, message.clone());
                report("warmup_failed", &message);
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if pipeline.is_closed() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                continue;
            }
        };
        failures = 0;
        let warm_at = Instant::now();
        pipeline.slots.mark_warm(slot, reason, warm_at.duration_since(begun).as_micros() as u64);
        report("warm", &format!("pid {}", backend.pid()));
        let end = run_slot(pipeline, slot, &mut backend, &LoopSettings { spin, warm_from: begun, warm_at });
        pipeline.slots.mark_cold(slot);
        match end {
            LoopEnd::Retired => {
                live.retired();
                return; // dropping the backend stops the worker
            }
            LoopEnd::Stopped => return,
            LoopEnd::Died(d) => {
                pipeline.slots.count_crash(slot, d.reason, &d.message);
                report("crashed", &d.message);
            }
            LoopEnd::Recycle(why) => {
                pipeline.slots.count_recycle(why);
                report("recycled", why);
            }
        }
        drop(backend);
        reason = WarmupReason::Replace;
    }
}

#[cfg(test)]
mod cpu_tests {
    use super::process_cpu_us;
    use std::time::Instant;

    #[test]
    fn process_cpu_time_is_read_from_proc() {
        let pid = std::process::id();
        let a = process_cpu_us(pid).expect("/proc/self/stat is readable");
        let t = Instant::now();
        let mut x = 0u64;
        // Clock ticks are 10 ms: spin until the counter moves (bounded by a deadline).
        while process_cpu_us(pid).unwrap() <= a {
            x = x.wrapping_add(std::hint::black_box(1));
            assert!(t.elapsed().as_secs() < 10, "the CPU time of this process did not move (x={x})");
        }
        assert_eq!(process_cpu_us(u32::MAX), None, "no such process");
    }
}
