//! Per-pipeline counters and latency histograms (HdrHistogram, microseconds), and their
//! Prometheus text exposition.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::error::ErrorCode;
use crate::runtime::execution::{Status, Timings};

/// Every `status` label of `warmslot_requests_total`.
pub const REQUEST_STATUSES: [&str; 10] = [
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
];

pub const PHASES: [&str; 4] = ["queue", "run", "commit", "total"];

pub struct PipelineMetrics {
    requests: [AtomicU64; REQUEST_STATUSES.len()],
    /// Executions that ran (succeeded or failed) and their summed run time: the service time.
    ran: AtomicU64,
    run_us_sum: AtomicU64,
    latency: Mutex<[Histogram<u64>; 4]>,
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
    }

    pub fn requests(&self, status: &str) -> u64 {
        REQUEST_STATUSES.iter().position(|s| *s == status).map_or(0, |i| self.requests[i].load(Ordering::Relaxed))
    }

    /// Records a finished execution. Only successes enter the latency histograms: they are the
    /// executions that reached the state commit, the boundary the figures promise.
    pub(crate) fn record(&self, status: Status, t: &Timings) {
        if t.run_us > 0 {
            self.ran.fetch_add(1, Ordering::Relaxed);
            self.run_us_sum.fetch_add(t.run_us, Ordering::Relaxed);
        }
        match status {
            Status::Succeeded => {
                self.count("succeeded");
                let mut h = self.latency.lock().unwrap();
                for (hist, v) in h.iter_mut().zip([t.queue_us, t.run_us, t.commit_us, t.total_us]) {
                    hist.saturating_record(v.max(1));
                }
            }
            Status::TimedOut => self.count("timed_out"),
            _ => self.count("failed"),
        }
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

fn escape(label: &str) -> String {
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
        "# HELP warmslot_latency_seconds Execution latency by phase, request read to state committed.\n\
         # TYPE warmslot_latency_seconds summary\n",
    );
    for (g, m) in pipelines {
        let name = escape(g.name);
        let qs = m.quantiles();
        for (phase, q) in PHASES.iter().zip(qs.iter()) {
            for (label, v) in [("0.5", q.p50_us), ("0.95", q.p95_us), ("0.99", q.p99_us)] {
                let _ = writeln!(
                    out,
                    "warmslot_latency_seconds{{pipeline=\"{name}\",phase=\"{phase}\",quantile=\"{label}\"}} {:.6}",
                    v as f64 / 1e6
                );
            }
            let _ = writeln!(
                out,
                "warmslot_latency_seconds_sum{{pipeline=\"{name}\",phase=\"{phase}\"}} {:.6}",
                q.mean_us * q.count as f64 / 1e6
            );
            let _ =
                writeln!(out, "warmslot_latency_seconds_count{{pipeline=\"{name}\",phase=\"{phase}\"}} {}", q.count);
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
