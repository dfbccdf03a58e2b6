//! Counters, gauges and histograms, written in the Prometheus text format by `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS_S: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = BUCKETS_S.iter().position(|&b| seconds <= b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add((seconds.max(0.0) * 1e6) as u64, Relaxed);
    }

    /// Observations so far and their sum in seconds.
    pub fn count_and_sum(&self) -> (u64, f64) {
        (
            self.count.load(Relaxed),
            self.sum_us.load(Relaxed) as f64 / 1e6,
        )
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in BUCKETS_S.iter().zip(&self.counts) {
            cum += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Everything the server measures.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by (route, status code).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Prompt tokens of finished generations.
    pub prompt_tokens: AtomicU64,
    /// Of those, tokens whose KV state was reused from a slot's cache.
    pub cached_prompt_tokens: AtomicU64,
    /// Generated tokens.
    pub completion_tokens: AtomicU64,
    /// Requests waiting for a slot.
    pub queue_depth: AtomicU64,
    /// Slots generating.
    pub active_slots: AtomicU64,
    /// Generations cancelled because the client went away.
    pub cancelled: AtomicU64,
    /// Generations cut short by the request timeout.
    pub timed_out: AtomicU64,
    /// Requests refused with 429.
    pub rejected: AtomicU64,
    /// Decode steps run, and sequences decoded in them (their ratio is the mean batch size).
    pub decode_steps: AtomicU64,
    /// Sequences decoded over all steps.
    pub decode_seqs: AtomicU64,
    /// Queue wait.
    pub queue_seconds: Histogram,
    /// Request arrival to first generated token.
    pub ttft_seconds: Histogram,
    /// Request arrival to the end of generation.
    pub request_seconds: Histogram,
}

impl Metrics {
    /// Counts one response.
    pub fn count_request(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.to_string(), status)).or_insert(0) += 1;
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP edgelm_requests_total HTTP responses by route and status.\n# TYPE edgelm_requests_total counter"
        );
        {
            let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            for ((route, code), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "edgelm_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let scalar = |out: &mut String, name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        };
        scalar(
            &mut out,
            "edgelm_prompt_tokens_total",
            "counter",
            "Prompt tokens of finished generations.",
            &self.prompt_tokens,
        );
        scalar(
            &mut out,
            "edgelm_prompt_tokens_cached_total",
            "counter",
            "Prompt tokens whose KV state was reused from the prompt cache.",
            &self.cached_prompt_tokens,
        );
        scalar(
            &mut out,
            "edgelm_completion_tokens_total",
            "counter",
            "Generated tokens.",
            &self.completion_tokens,
        );
        scalar(
            &mut out,
            "edgelm_queue_depth",
            "gauge",
            "Requests waiting for a generation slot.",
            &self.queue_depth,
        );
        scalar(
            &mut out,
            "edgelm_active_slots",
            "gauge",
            "Slots generating now.",
            &self.active_slots,
        );
        scalar(
            &mut out,
            "edgelm_cancelled_total",
            "counter",
            "Generations cancelled by a client disconnect.",
            &self.cancelled,
        );
        scalar(
            &mut out,
            "edgelm_timed_out_total",
            "counter",
            "Generations ended by the request timeout.",
            &self.timed_out,
        );
        scalar(
            &mut out,
            "edgelm_rejected_total",
            "counter",
            "Requests refused with 429 (queue full).",
            &self.rejected,
        );
        scalar(
            &mut out,
            "edgelm_decode_steps_total",
            "counter",
            "Batched decode steps.",
            &self.decode_steps,
        );
        scalar(
            &mut out,
            "edgelm_decode_sequences_total",
            "counter",
            "Sequences decoded over all steps (divided by steps: mean batch size).",
            &self.decode_seqs,
        );
        self.queue_seconds.write(
            &mut out,
            "edgelm_queue_wait_seconds",
            "Time from arrival to a generation slot.",
        );
        self.ttft_seconds.write(
            &mut out,
            "edgelm_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
        );
        self.request_seconds.write(
            &mut out,
            "edgelm_request_duration_seconds",
            "Time from arrival to the end of generation.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.ttft_seconds.observe(0.003);
        m.ttft_seconds.observe(0.2);
        m.ttft_seconds.observe(500.0);
        m.count_request("/v1/models", 200);
        let text = m.render();
        assert!(text.contains("edgelm_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("edgelm_time_to_first_token_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("edgelm_time_to_first_token_seconds_bucket{le=\"120\"} 2\n"));
        assert!(text.contains("edgelm_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("edgelm_time_to_first_token_seconds_count 3\n"));
        assert!(text.contains("edgelm_requests_total{route=\"/v1/models\",code=\"200\"} 1\n"));
    }
}
