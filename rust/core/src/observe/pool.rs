//! Prometheus text for the slot pool's counters: warm-ups, crashes, recycles, cold starts, idle
//! slot-seconds and worker memory.

use std::fmt::Write;

use crate::observe::metrics::escape;

/// One pipeline's pool counters, read at scrape time.
pub struct PoolCounters<'a> {
    pub name: &'a str,
    /// (reason label, count)
    pub warmups: Vec<(&'static str, u64)>,
    pub crashes: Vec<(&'static str, u64)>,
    pub recycles: Vec<(&'static str, u64)>,
    pub cold_starts: u64,
    pub idle_slot_seconds: f64,
    pub worker_rss_bytes: u64,
    pub waiting: usize,
    /// CPU time of the slots' runs, seconds.
    pub cpu_seconds: f64,
    /// The predictor's warm-slot target and (phase, is current) for each of its phases.
    pub target_slots: usize,
    pub predictor_phases: Vec<(String, bool)>,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn render(pools: &[PoolCounters<'_>]) -> String {
    let mut out = String::with_capacity(2048);
    let labelled = [
        ("warmslot_slot_warmups_total", "Slots that finished warming up, by reason (ahead of demand, on demand, replacing a crashed or recycled one).", 0),
        ("warmslot_slot_crashes_total", "Slots whose worker died (exit, signal, hang, protocol).", 1),
        ("warmslot_slot_recycles_total", "Worker processes recycled (max_executions, max_memory).", 2),
    ];
    for (metric, help, which) in labelled {
        family(&mut out, metric, "counter", help);
        for p in pools {
            let rows = match which {
                0 => &p.warmups,
                1 => &p.crashes,
                _ => &p.recycles,
            };
            for (reason, v) in rows {
                let _ = writeln!(out, "{metric}{{pipeline=\"{}\",reason=\"{reason}\"}} {v}", escape(p.name));
            }
        }
    }
    family(
        &mut out,
        "warmslot_cold_starts_total",
        "counter",
        "Events that ran on a slot whose warm-up finished after they arrived.",
    );
    for p in pools {
        let _ = writeln!(out, "warmslot_cold_starts_total{{pipeline=\"{}\"}} {}", escape(p.name), p.cold_starts);
    }
    family(&mut out, "warmslot_idle_slot_seconds_total", "counter", "Time integral of warm slots running nothing.");
    for p in pools {
        let _ = writeln!(
            out,
            "warmslot_idle_slot_seconds_total{{pipeline=\"{}\"}} {:.6}",
            escape(p.name),
            p.idle_slot_seconds
        );
    }
    family(
        &mut out,
        "warmslot_worker_rss_bytes",
        "gauge",
        "Resident memory of the pipeline's worker processes (0 for thread slots).",
    );
    for p in pools {
        let _ = writeln!(out, "warmslot_worker_rss_bytes{{pipeline=\"{}\"}} {}", escape(p.name), p.worker_rss_bytes);
    }
    family(
        &mut out,
        "warmslot_slot_cpu_seconds_total",
        "counter",
        "CPU time the slots spent running the pipeline (thread CPU time, or the worker process's user + system time).",
    );
    for p in pools {
        let _ =
            writeln!(out, "warmslot_slot_cpu_seconds_total{{pipeline=\"{}\"}} {:.6}", escape(p.name), p.cpu_seconds);
    }
    family(&mut out, "warmslot_predictor_target_slots", "gauge", "Warm slots the scaling policy asks for now.");
    for p in pools {
        let _ = writeln!(out, "warmslot_predictor_target_slots{{pipeline=\"{}\"}} {}", escape(p.name), p.target_slots);
    }
    family(
        &mut out,
        "warmslot_predictor_state",
        "gauge",
        "The scaling policy's phase: 1 for the current one, 0 for the others.",
    );
    for p in pools {
        for (state, current) in &p.predictor_phases {
            let _ = writeln!(
                out,
                "warmslot_predictor_state{{pipeline=\"{}\",state=\"{}\"}} {}",
                escape(p.name),
                escape(state),
                u8::from(*current)
            );
        }
    }
    family(&mut out, "warmslot_waiting", "gauge", "Events admitted and not yet running (bounded by queue_size).");
    for p in pools {
        let _ = writeln!(out, "warmslot_waiting{{pipeline=\"{}\"}} {}", escape(p.name), p.waiting);
    }
    out
}
