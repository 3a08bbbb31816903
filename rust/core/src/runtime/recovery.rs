//! Recovery at start: a durable store's recent deliveries (so that repeats after a restart are
//! answered) and the journaled events whose executions had not ended (run again, first).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::DedupeSpec;
use crate::runtime::dedupe::Seen;
use crate::runtime::engine::{Engine, EngineError};
use crate::runtime::execution::{Execution, Job};

impl Engine {
    /// Before serving: loads the recent deliveries of a durable store (so repeats after a restart
    /// are answered), and re-admits the journaled events whose executions had not ended, in their
    /// arrival order, ahead of any new event. Returns the recovered executions.
    pub(crate) fn recover(&self) -> Result<Vec<Arc<Execution>>, EngineError> {
        let now_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let mut recovered = Vec::new();
        for p in &self.pipelines {
            if !p.store.is_durable() {
                continue;
            }
            let window = p.config.dedupe_window;
            if p.config.dedupe != DedupeSpec::Off {
                for d in p.store.deliveries(now_unix - window.as_secs_f64(), self.config.max_records) {
                    let age = Duration::from_secs_f64((now_unix - d.received_unix).max(0.0));
                    self.deliveries.remember(p.index, &d.delivery, Seen::Stored(d.execution_id.into()), window, age);
                }
            }
            let entries =
                p.store.unfinished().map_err(|source| EngineError::Store { pipeline: p.name().into(), source })?;
            for entry in entries {
                let (seq, _) = self.next_id(); // arrival order in this process; the public id is kept
                let exec = Execution::new(seq, entry.id.clone(), p.clone(), entry.key.clone(), Instant::now())
                    .with_delivery(entry.delivery.clone(), true)
                    .recovered(entry.received_unix);
                let exec = Arc::new(exec);
                p.arrived();
                p.accepted_one();
                let job = Job::new(exec.clone(), entry.body.clone(), decode_headers(&entry.headers));
                // Past queue_size too: it was accepted before the restart (the intake's waiting
                // count then exceeds queue_size until these run, so new events get 429 meanwhile).
                p.intake.admit_recovered(job);
                if let Some(d) = &entry.delivery {
                    self.deliveries.replace(p.index, d, window, &exec);
                }
                self.records.insert(exec.clone());
                recovered.push(exec);
            }
        }
        Ok(recovered)
    }
}

/// Headers as journaled: `name: value` lines.
pub(crate) fn encode_headers(headers: &hyper::HeaderMap) -> bytes::Bytes {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.into()
}

fn decode_headers(lines: &[u8]) -> hyper::HeaderMap {
    let mut headers = hyper::HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii_start());
        if let (Ok(n), Ok(v)) =
            (hyper::header::HeaderName::from_bytes(name), hyper::header::HeaderValue::from_bytes(value))
        {
            headers.append(n, v);
        }
    }
    headers
}
