//! Per-pipeline counters and latency histograms, and their Prometheus text exposition.
//!
//! Every finished execution is recorded three ways: in fixed-bucket Prometheus histograms
//! (atomics; exact `_sum` and `_count`, so Grafana computes quantiles over any window), in
//! cumulative HdrHistograms (the quantiles of `stats()` and `warmslot_latency_quantile_seconds`)
//! and in the per-second [`Series`] behind `/stats`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::error::ErrorCode;
use crate::observe::series::{Latency, Series};
use crate::outcome::{Status, Timings};

/// Every `status` label of `warmslot_requests_total`.
pub const REQUEST_STATUSES: [&str; 11] = [
    "succeeded",
    "failed",
    "timed_out",
    "overloaded",
    "invalid_json",
    "bad_signature",
    "payload_too_large",
    "shutting_down",
    "bad_request",
    "request_timeout",
    // Answered `200 {"ignored": true}` by an `events=` filter, before admission.
    "ignored",
];

pub const PHASES: [&str; 4] = ["queue", "run", "commit", "total"];

/// Upper bounds (µs) of the Prometheus latency buckets, `+Inf` implied: 100 µs (an in-process
/// echo) to 60 s (a slow pipeline near a long timeout).
pub const BUCKETS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// A Prometheus histogram of one phase: per-bucket counts (not cumulative; cumulated when
/// rendered) and the exact sum, all relaxed atomics.
struct PhaseHistogram {
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl PhaseHistogram {
    fn new() -> Self {
        PhaseHistogram { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_us: AtomicU64::new(0) }
    }

    fn record(&self, us: u64) {
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Cumulative counts (the last is `+Inf`, the count) and the sum in µs. The buckets come
    /// from one pass of loads, so they never decrease along `le` and `+Inf` is `_count`; a
    /// scrape racing a record may see `_sum` one execution ahead of or behind `_count`.
    fn snapshot(&self) -> ([u64; BUCKETS_US.len() + 1], u64) {
        let mut acc = 0;
        let cumulative = std::array::from_fn(|i| {
            acc += self.counts[i].load(Ordering::Relaxed);
            acc
        });
        (cumulative, self.sum_us.load(Ordering::Relaxed))
    }
}

pub struct PipelineMetrics {
    requests: [AtomicU64; REQUEST_STATUSES.len()],
    /// Executions that ran (succeeded or failed) and their summed run time: the service time.
    ran: AtomicU64,
    run_us_sum: AtomicU64,
    /// queue, run, commit, total (the order of `PHASES`)
    latency: Mutex<[Histogram<u64>; 4]>,
    buckets: [PhaseHistogram; 4],
    series: Series,
}

/// Quantiles of one phase, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant digits; values above saturate instead of failing.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        PipelineMetrics {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            ran: AtomicU64::new(0),
            run_us_sum: AtomicU64::new(0),
            latency: Mutex::new(std::array::from_fn(|_| histogram())),
            buckets: std::array::from_fn(|_| PhaseHistogram::new()),
            series: Series::default(),
        }
    }
}

impl PipelineMetrics {
    fn count(&self, status: &str) {
        if let Some(i) = REQUEST_STATUSES.iter().position(|s| *s == status) {
            self.requests[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a webhook refused before admission (its `status` label is the error code).
    pub fn refused(&self, code: ErrorCode) {
        self.count(code.as_str());
        self.series.refused(code == ErrorCode::Overloaded);
    }

    /// Counts a webhook that `events=` ignored (not admitted, not run, not journaled).
    pub fn ignored(&self) {
        self.count("ignored");
    }

    /// The per-second series of this pipeline.
    pub fn series(&self) -> &Series {
        &self.series
    }

    pub fn requests(&self, status: &str) -> u64 {
        REQUEST_STATUSES.iter().position(|s| *s == status).map_or(0, |i| self.requests[i].load(Ordering::Relaxed))
    }

    /// Records a finished execution, failures and timeouts included: a 504 is latency a client
    /// saw. `total` counts every execution; `queue` and `run` those that ran; `commit` those
    /// that committed.
    pub(crate) fn record(&self, status: Status, t: &Timings) {
        if t.run_us > 0 {
            self.ran.fetch_add(1, Ordering::Relaxed);
            self.run_us_sum.fetch_add(t.run_us, Ordering::Relaxed);
        }
        self.count(match status {
            Status::Succeeded => "succeeded",
            Status::TimedOut => "timed_out",
            _ => "failed",
        });
        let l = latency(status, t);
        let phases = [l.queue_us, l.run_us, l.commit_us, Some(l.total_us)];
        for (b, v) in self.buckets.iter().zip(phases) {
            if let Some(v) = v {
                b.record(v);
            }
        }
        {
            let mut h = self.latency.lock().unwrap();
            for (hist, v) in h.iter_mut().zip(phases) {
                if let Some(v) = v {
                    hist.saturating_record(v.max(1));
                }
            }
        }
        self.series.finished(&l);
    }

    /// (executions that ran, their summed run time in µs), for service-time estimates.
    pub fn service(&self) -> (u64, u64) {
        (self.ran.load(Ordering::Relaxed), self.run_us_sum.load(Ordering::Relaxed))
    }

    pub fn quantiles(&self) -> [Quantiles; 4] {
        let h = self.latency.lock().unwrap();
        std::array::from_fn(|i| {
            let hist = &h[i];
            Quantiles {
                count: hist.len(),
                mean_us: if hist.is_empty() { 0.0 } else { hist.mean() },
                p50_us: hist.value_at_quantile(0.5),
                p95_us: hist.value_at_quantile(0.95),
                p99_us: hist.value_at_quantile(0.99),
                max_us: hist.max(),
            }
        })
    }

    pub fn reset_latency(&self) {
        for h in self.latency.lock().unwrap().iter_mut() {
            h.reset();
        }
    }
}

/// The phases an execution went through, from its final status and timings.
fn latency(status: Status, t: &Timings) -> Latency {
    let ok = status == Status::Succeeded;
    let ran = ok || t.run_us > 0;
    Latency {
        ok,
        total_us: t.total_us,
        queue_us: ran.then_some(t.queue_us),
        run_us: ran.then_some(t.run_us),
        commit_us: ok.then_some(t.commit_us),
    }
}

/// Gauges read at scrape time.
pub struct PipelineGauges<'a> {
    pub name: &'a str,
    pub ring_depth: usize,
    pub ring_capacity: usize,
    pub slots_warm: usize,
    pub slots_busy: usize,
    pub slots_max: usize,
    pub slots_min: usize,
    pub slots_target: usize,
    pub forecast_rps: f64,
    pub arrivals: u64,
}

pub(crate) fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render(pipelines: &[(PipelineGauges<'_>, &PipelineMetrics)]) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str(
        "# HELP warmslot_requests_total Webhook requests by outcome.\n# TYPE warmslot_requests_total counter\n",
    );
    for (g, m) in pipelines {
        for status in REQUEST_STATUSES {
            let _ = writeln!(
                out,
                "warmslot_requests_total{{pipeline=\"{}\",status=\"{status}\"}} {}",
                escape(g.name),
                m.requests(status)
            );
        }
    }
    out.push_str(
        "# HELP warmslot_latency_seconds Execution latency by phase, request read to state committed \
         (failures and timeouts included).\n# TYPE warmslot_latency_seconds histogram\n",
    );
    for (g, m) in pipelines {
        let name = escape(g.name);
        for (phase, b) in PHASES.iter().zip(m.buckets.iter()) {
            let (cumulative, sum_us) = b.snapshot();
            for (i, n) in cumulative.iter().enumerate() {
                let le = BUCKETS_US.get(i).map_or_else(|| "+Inf".to_string(), |&us| (us as f64 / 1e6).to_string());
                let _ = writeln!(
                    out,
                    "warmslot_latency_seconds_bucket{{pipeline=\"{name}\",phase=\"{phase}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "warmslot_latency_seconds_sum{{pipeline=\"{name}\",phase=\"{phase}\"}} {}.{:06}",
                sum_us / 1_000_000,
                sum_us % 1_000_000
            );
            let count = cumulative[BUCKETS_US.len()];
            let _ = writeln!(out, "warmslot_latency_seconds_count{{pipeline=\"{name}\",phase=\"{phase}\"}} {count}");
        }
    }
    out.push_str(
        "# HELP warmslot_latency_quantile_seconds Latency quantiles by phase since the server started \
         (for windows, use histogram_quantile over warmslot_latency_seconds_bucket).\n\
         # TYPE warmslot_latency_quantile_seconds gauge\n",
    );
    for (g, m) in pipelines {
        let name = escape(g.name);
        let qs = m.quantiles();
        for (phase, q) in PHASES.iter().zip(qs.iter()) {
            for (label, v) in [("0.5", q.p50_us), ("0.95", q.p95_us), ("0.99", q.p99_us)] {
                let _ = writeln!(
                    out,
                    "warmslot_latency_quantile_seconds{{pipeline=\"{name}\",phase=\"{phase}\",quantile=\"{label}\"}} {:.6}",
                    v as f64 / 1e6
                );
            }
        }
    }
    out.push_str("# HELP warmslot_slots Slots of each pipeline by state.\n# TYPE warmslot_slots gauge\n");
    for (g, _) in pipelines {
        let name = escape(g.name);
        for (state, v) in [
            ("warm", g.slots_warm),
            ("busy", g.slots_busy),
            ("idle", g.slots_warm.saturating_sub(g.slots_busy)),
            ("min", g.slots_min),
            ("max", g.slots_max),
            ("target", g.slots_target),
        ] {
            let _ = writeln!(out, "warmslot_slots{{pipeline=\"{name}\",state=\"{state}\"}} {v}");
        }
    }
    out.push_str(
        "# HELP warmslot_ring_depth Events waiting in the pipeline's ring.\n# TYPE warmslot_ring_depth gauge\n",
    );
    for (g, _) in pipelines {
        let _ = writeln!(out, "warmslot_ring_depth{{pipeline=\"{}\"}} {}", escape(g.name), g.ring_depth);
    }
    out.push_str("# HELP warmslot_arrivals_total Webhooks that reached admission.\n");
    out.push_str("# TYPE warmslot_arrivals_total counter\n");
    for (g, _) in pipelines {
        let _ = writeln!(out, "warmslot_arrivals_total{{pipeline=\"{}\"}} {}", escape(g.name), g.arrivals);
    }
    out.push_str("# HELP warmslot_forecast_rps The predictor's arrival-rate forecast.\n");
    out.push_str("# TYPE warmslot_forecast_rps gauge\n");
    for (g, _) in pipelines {
        let _ = writeln!(out, "warmslot_forecast_rps{{pipeline=\"{}\"}} {:.3}", escape(g.name), g.forecast_rps);
    }
    out.push_str(
        "# HELP warmslot_ring_capacity Capacity of the pipeline's ring.\n# TYPE warmslot_ring_capacity gauge\n",
    );
    for (g, _) in pipelines {
        let _ = writeln!(out, "warmslot_ring_capacity{{pipeline=\"{}\"}} {}", escape(g.name), g.ring_capacity);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_one(m: &PipelineMetrics) -> String {
        let g = PipelineGauges {
            name: "p",
            ring_depth: 0,
            ring_capacity: 8,
            slots_warm: 1,
            slots_busy: 0,
            slots_max: 1,
            slots_min: 1,
            slots_target: 1,
            forecast_rps: 0.0,
            arrivals: 0,
        };
        render(&[(g, m)])
    }

    fn sample(text: &str, series: &str) -> f64 {
        let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '));
        line.unwrap_or_else(|| panic!("{series} missing in\n{text}"))[series.len() + 1..].parse().unwrap()
    }

    #[test]
    fn histograms_are_cumulative_with_exact_sums_and_count_failures() {
        let m = PipelineMetrics::default();
        let ok = |total_us| Timings { queue_us: 50, run_us: 300, commit_us: 7, total_us };
        m.record(Status::Succeeded, &ok(400));
        m.record(Status::Succeeded, &ok(2_000_001));
        m.record(Status::Failed, &Timings { queue_us: 20, run_us: 900, commit_us: 1, total_us: 950 });
        m.record(Status::TimedOut, &Timings { total_us: 5_000_000, ..Timings::default() });
        let text = render_one(&m);
        let total = |le: &str| {
            sample(&text, &format!("warmslot_latency_seconds_bucket{{pipeline=\"p\",phase=\"total\",le=\"{le}\"}}"))
        };
        assert_eq!((total("0.00025"), total("0.0005"), total("0.001")), (0.0, 1.0, 2.0));
        assert_eq!((total("2.5"), total("5"), total("+Inf")), (3.0, 4.0, 4.0), "a value on a bound counts in it");
        assert_eq!(sample(&text, "warmslot_latency_seconds_count{pipeline=\"p\",phase=\"total\"}"), 4.0);
        assert!(text.contains("warmslot_latency_seconds_sum{pipeline=\"p\",phase=\"total\"} 7.001351\n"), "{text}");
        // The timeout never ran; the failure ran but committed nothing.
        assert_eq!(sample(&text, "warmslot_latency_seconds_count{pipeline=\"p\",phase=\"run\"}"), 3.0);
        assert_eq!(sample(&text, "warmslot_latency_seconds_count{pipeline=\"p\",phase=\"commit\"}"), 2.0);
        assert!(text.contains("warmslot_latency_seconds_sum{pipeline=\"p\",phase=\"commit\"} 0.000014\n"), "{text}");
        assert!(text.contains("# TYPE warmslot_latency_seconds histogram"));
        let p99 = sample(&text, "warmslot_latency_quantile_seconds{pipeline=\"p\",phase=\"total\",quantile=\"0.99\"}");
        assert!((4.99..5.01).contains(&p99), "the timeout is the p99: {p99}");
        assert_eq!(m.quantiles()[3].count, 4);
        assert_eq!((m.requests("succeeded"), m.requests("failed"), m.requests("timed_out")), (2, 1, 1));
    }

    #[test]
    fn refusals_count_in_the_series_as_refused_or_errors() {
        let m = PipelineMetrics::default();
        m.refused(ErrorCode::Overloaded);
        m.refused(ErrorCode::InvalidJson);
        m.refused(ErrorCode::ShuttingDown);
        m.record(Status::TimedOut, &Timings { total_us: 10, ..Timings::default() });
        m.series().tick(1, crate::observe::series::Gauges::default());
        let s = m.series().since(0.0);
        assert_eq!((s[0].refused, s[0].errors, s[0].completed), (1, 3, 0));
        assert_eq!(m.requests("overloaded"), 1);
    }
}
