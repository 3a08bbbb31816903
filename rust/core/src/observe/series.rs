//! Per-second series of one pipeline: a bounded ring of samples (one per second, the last hour)
//! behind `GET /stats` and the dashboard.
//!
//! Who touches what:
//! - a finished execution (`Series::finished`) locks `current`, the pipeline's own mutex for the
//!   second in progress, and records its latencies into per-second HdrHistograms. Only that
//!   pipeline's completions and the ticker take this lock: there is no lock shared by pipelines.
//! - a webhook refused before admission (`Series::refused`) is one relaxed atomic increment.
//! - the ticker (`Series::tick`, once a second) closes the second: it takes the counts and
//!   quantiles out of `current` and resets it, swaps the refusal counters to zero, reads the
//!   pool's gauges and pushes one `Sample` into `history`, dropping the oldest past `CAPACITY`.
//! - readers (`/stats`) lock `history` only; they never delay a completion.
//!
//! A completion that lands while the ticker closes a second counts in one second or the next,
//! never in both and never lost: counts and histograms move together under `current`.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Samples kept per pipeline: one hour at one per second.
pub const CAPACITY: usize = 3600;

/// What the slot pool and the predictor show at one instant. Counters (`*_total`) are cumulative;
/// the ticker turns them into per-second increments.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Gauges {
    /// Events admitted and not yet running.
    pub queue: u64,
    pub warm: u64,
    pub busy: u64,
    /// The predictor's warm-slot target and its arrival-rate forecast (req/s).
    pub target: u64,
    pub forecast_rps: f64,
    /// Webhooks that reached admission (accepted or refused with 429), since start.
    pub arrivals_total: u64,
    /// Slots started because an event found no warm slot, since start.
    pub cold_starts_total: u64,
}

/// A source of gauges, read once a second by the ticker.
pub trait PoolGauges {
    fn gauges(&self) -> Gauges;
}

/// The latencies of one finished execution, in microseconds. A phase the execution never went
/// through (a timeout while queued has no run, a failure no commit) is `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    pub ok: bool,
    pub total_us: u64,
    pub queue_us: Option<u64>,
    pub run_us: Option<u64>,
    pub commit_us: Option<u64>,
}

/// One second of one pipeline. Latencies are of the executions that finished in that second
/// (failures and timeouts included), 0 when none did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Unix time of the second's start.
    pub t: u64,
    pub arrivals: u64,
    /// Executions that succeeded.
    pub completed: u64,
    /// Webhooks refused with `429 overloaded`.
    pub refused: u64,
    /// Answers with another 4xx/5xx: failed and timed-out executions, and webhooks refused
    /// before admission (bad JSON, bad signature, too large, shutting down).
    pub errors: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub queue_p99_us: u64,
    pub run_p99_us: u64,
    pub commit_p99_us: u64,
    pub queue: u64,
    pub warm: u64,
    pub busy: u64,
    pub target: u64,
    pub forecast_rps: f64,
    pub cold_starts: u64,
}

struct Current {
    completed: u64,
    failed: u64,
    /// total, queue, run, commit
    phases: [Histogram<u64>; 4],
}

struct History {
    samples: VecDeque<Sample>,
    arrivals_total: u64,
    cold_starts_total: u64,
}

pub struct Series {
    current: Mutex<Current>,
    refused: AtomicU64,
    rejected: AtomicU64,
    history: Mutex<History>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour at 2 significant digits (1% resolution): a per-second chart needs no more,
    // and the ticker resets 4 small histograms a second instead of 4 large ones.
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid")
}

impl Default for Series {
    fn default() -> Self {
        Series {
            current: Mutex::new(Current { completed: 0, failed: 0, phases: std::array::from_fn(|_| histogram()) }),
            refused: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            history: Mutex::new(History {
                samples: VecDeque::with_capacity(CAPACITY),
                arrivals_total: 0,
                cold_starts_total: 0,
            }),
        }
    }
}

impl Series {
    /// Records a finished execution in the second in progress.
    pub fn finished(&self, l: &Latency) {
        let mut cur = self.current.lock().unwrap();
        if l.ok {
            cur.completed += 1;
        } else {
            cur.failed += 1;
        }
        for (h, v) in cur.phases.iter_mut().zip([Some(l.total_us), l.queue_us, l.run_us, l.commit_us]) {
            if let Some(v) = v {
                h.saturating_record(v.max(1));
            }
        }
    }

    /// Counts a webhook answered with an error before admission; `overloaded` is a 429.
    pub fn refused(&self, overloaded: bool) {
        let counter = if overloaded { &self.refused } else { &self.rejected };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes the second that started at unix time `t` with the pool's gauges read now. A `t` not
    /// after the last sample's (a clock step back) becomes the last one's + 1: `t` only grows.
    pub fn tick(&self, t: u64, g: Gauges) {
        let (completed, failed, q) = {
            let mut cur = self.current.lock().unwrap();
            let at = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
            let [total, queue, run, commit] = &cur.phases;
            let q =
                [at(total, 0.5), at(total, 0.95), at(total, 0.99), at(queue, 0.99), at(run, 0.99), at(commit, 0.99)];
            let counts = (cur.completed, cur.failed);
            cur.completed = 0;
            cur.failed = 0;
            for h in cur.phases.iter_mut() {
                h.reset();
            }
            (counts.0, counts.1, q)
        };
        let refused = self.refused.swap(0, Ordering::Relaxed);
        let rejected = self.rejected.swap(0, Ordering::Relaxed);
        let mut hist = self.history.lock().unwrap();
        let t = match hist.samples.back() {
            Some(last) if t <= last.t => last.t + 1,
            _ => t,
        };
        let sample = Sample {
            t,
            arrivals: g.arrivals_total.saturating_sub(hist.arrivals_total),
            completed,
            refused,
            errors: failed + rejected,
            p50_us: q[0],
            p95_us: q[1],
            p99_us: q[2],
            queue_p99_us: q[3],
            run_p99_us: q[4],
            commit_p99_us: q[5],
            queue: g.queue,
            warm: g.warm,
            busy: g.busy,
            target: g.target,
            forecast_rps: g.forecast_rps,
            cold_starts: g.cold_starts_total.saturating_sub(hist.cold_starts_total),
        };
        hist.arrivals_total = g.arrivals_total;
        hist.cold_starts_total = g.cold_starts_total;
        if hist.samples.len() == CAPACITY {
            hist.samples.pop_front();
        }
        hist.samples.push_back(sample);
    }

    /// The samples whose second started after `since` (unix seconds), oldest first.
    pub fn since(&self, since: f64) -> Vec<Sample> {
        let hist = self.history.lock().unwrap();
        let from = hist.samples.partition_point(|s| s.t as f64 <= since);
        hist.samples.range(from..).copied().collect()
    }

    /// Appends the samples after `since` to `out` as a JSON array of `/stats` objects.
    pub fn write_json(&self, since: f64, out: &mut String) {
        let hist = self.history.lock().unwrap();
        let from = hist.samples.partition_point(|s| s.t as f64 <= since);
        out.push('[');
        for (i, s) in hist.samples.range(from..).enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_sample(s, out);
        }
        out.push(']');
    }
}

/// Microseconds as milliseconds with 3 decimals, without going through floats.
fn ms(out: &mut String, us: u64) {
    let _ = write!(out, "{}.{:03}", us / 1000, us % 1000);
}

fn write_sample(s: &Sample, out: &mut String) {
    let _ = write!(
        out,
        "{{\"t\":{},\"arrivals\":{},\"completed\":{},\"refused\":{},\"errors\":{}",
        s.t, s.arrivals, s.completed, s.refused, s.errors
    );
    for (name, us) in [
        ("p50_ms", s.p50_us),
        ("p95_ms", s.p95_us),
        ("p99_ms", s.p99_us),
        ("queue_p99_ms", s.queue_p99_us),
        ("run_p99_ms", s.run_p99_us),
        ("commit_p99_ms", s.commit_p99_us),
    ] {
        let _ = write!(out, ",\"{name}\":");
        ms(out, us);
    }
    let forecast = if s.forecast_rps.is_finite() { s.forecast_rps } else { 0.0 };
    let _ = write!(
        out,
        ",\"queue\":{},\"warm\":{},\"busy\":{},\"target\":{},\"forecast\":{:.3},\"cold_starts\":{}}}",
        s.queue, s.warm, s.busy, s.target, forecast, s.cold_starts
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(total_us: u64) -> Latency {
        Latency { ok: true, total_us, queue_us: Some(10), run_us: Some(total_us / 2), commit_us: Some(5) }
    }

    #[test]
    fn a_tick_closes_the_second_with_its_counts_quantiles_and_gauges() {
        let s = Series::default();
        for v in 1..=100 {
            s.finished(&ok(v * 1000));
        }
        s.finished(&Latency { ok: false, total_us: 500_000, ..Latency::default() });
        s.refused(true);
        s.refused(true);
        s.refused(false);
        let g = Gauges {
            queue: 3,
            warm: 4,
            busy: 2,
            target: 5,
            forecast_rps: 12.5,
            arrivals_total: 104,
            cold_starts_total: 1,
        };
        s.tick(1000, g);
        let [x] = s.since(0.0)[..] else { panic!("one sample") };
        assert_eq!((x.t, x.arrivals, x.completed, x.refused, x.errors), (1000, 104, 100, 2, 2));
        // 101 executions, the failure (500 ms) included: p50 is the 51st value, p99 the 100th.
        assert!((50_500..=51_500).contains(&x.p50_us), "{}", x.p50_us);
        assert!((99_000..=101_000).contains(&x.p99_us), "{}", x.p99_us);
        assert!(x.p95_us >= x.p50_us && x.p99_us >= x.p95_us);
        assert!((9..=11).contains(&x.queue_p99_us) && (4..=6).contains(&x.commit_p99_us));
        assert!((49_000..=51_000).contains(&x.run_p99_us), "{}", x.run_p99_us);
        assert_eq!((x.queue, x.warm, x.busy, x.target, x.forecast_rps, x.cold_starts), (3, 4, 2, 5, 12.5, 1));

        // The next second starts empty; cumulative gauges become increments.
        s.tick(1001, Gauges { arrivals_total: 110, cold_starts_total: 1, ..g });
        let y = s.since(1000.0);
        assert_eq!(y.len(), 1);
        assert_eq!((y[0].t, y[0].arrivals, y[0].completed, y[0].refused, y[0].errors), (1001, 6, 0, 0, 0));
        assert_eq!((y[0].p50_us, y[0].p99_us, y[0].cold_starts), (0, 0, 0));
    }

    #[test]
    fn the_ring_keeps_the_last_hour_and_time_only_grows() {
        let s = Series::default();
        for t in 0..(CAPACITY as u64 + 10) {
            s.tick(5000 + t, Gauges::default());
        }
        let all = s.since(0.0);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].t, 5010);
        assert!(all.windows(2).all(|w| w[1].t == w[0].t + 1));
        let last = all[CAPACITY - 1].t;
        s.tick(last - 30, Gauges::default()); // the clock stepped back
        assert_eq!(s.since(last as f64).iter().map(|x| x.t).collect::<Vec<_>>(), vec![last + 1]);
        assert_eq!(s.since(last as f64 + 0.5).len(), 1, "since may be fractional");
        assert!(s.since(1e12).is_empty());
    }

    /// The figures of the NOTE in `http/stats.rs`:
    /// `cargo test --release -p warmslot-core write_json_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check; run it in release"]
    fn write_json_cost() {
        let s = Series::default();
        let start = 1_796_000_000;
        for t in 0..CAPACITY as u64 {
            for v in 0..50 {
                s.finished(&ok(300 + v * 37 + t));
            }
            let g = Gauges { queue: t % 7, warm: 4, busy: 2, target: 5, forecast_rps: 123.456, ..Gauges::default() };
            s.tick(start + t, g);
        }
        let time = |n: u32, since: f64| {
            let t0 = std::time::Instant::now();
            let mut len = 0;
            for _ in 0..n {
                let mut out = String::new();
                s.write_json(since, &mut out);
                len = out.len();
            }
            (t0.elapsed().as_secs_f64() / f64::from(n) * 1e6, len)
        };
        let (full, bytes) = time(200, 0.0);
        let (last, _) = time(100_000, (start + CAPACITY as u64 - 2) as f64);
        let t0 = std::time::Instant::now();
        for i in 0..1_000_000 {
            s.finished(&ok(300 + i % 5000));
        }
        let record_ns = t0.elapsed().as_secs_f64() * 1e3;
        println!("full hour: {full:.0} µs ({bytes} bytes); last second: {last:.2} µs; finished(): {record_ns:.0} ns");
    }

    #[test]
    fn json_has_every_documented_field() {
        let s = Series::default();
        s.finished(&ok(2_345));
        s.tick(7, Gauges { forecast_rps: 1.25, warm: 1, ..Gauges::default() });
        let mut out = String::new();
        s.write_json(0.0, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let x = &v[0];
        for k in [
            "t",
            "arrivals",
            "completed",
            "refused",
            "errors",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "queue_p99_ms",
            "run_p99_ms",
            "commit_p99_ms",
            "queue",
            "warm",
            "busy",
            "target",
            "forecast",
            "cold_starts",
        ] {
            assert!(x[k].is_number(), "{k} in {out}");
        }
        assert_eq!(x["t"], 7);
        assert!((x["p99_ms"].as_f64().unwrap() - 2.345).abs() < 0.03, "{out}");
        assert_eq!(x["forecast"].as_f64(), Some(1.25));
        let mut empty = String::new();
        s.write_json(7.0, &mut empty);
        assert_eq!(empty, "[]");
    }
}
