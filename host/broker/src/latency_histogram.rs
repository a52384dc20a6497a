//! [`LatencyHistogram`]: a fixed-bucket histogram of durations that the hot path records
//! into with two relaxed atomic adds, and that `/metrics` renders as a Prometheus histogram.
//!
//! Why fixed buckets and not an HDR histogram: recording must be lock-free from many tasks
//! at once, and a scrape wants cumulative `le` buckets anyway. The bounds run from 50 µs
//! (one stage of a send on loopback) to 5 s (a send's whole deadline).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (microseconds) of the buckets; `+Inf` follows.
pub const BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];

#[derive(Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let bucket = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Appends the samples of the Prometheus histogram `name`, in seconds: the cumulative
    /// buckets, `_sum`, `_count` (the `# HELP`/`# TYPE` lines are the caller's).
    pub fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0u64;
        for (count, bound_us) in self.counts.iter().zip(BUCKETS_US) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", bound_us as f64 / 1e6);
        }
        cumulative += self.counts[BUCKETS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = LatencyHistogram::default();
        for us in [50, 51, 900, 7_000_000] {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 4);
        let mut out = String::new();
        h.render(&mut out, "x_seconds");
        assert!(out.starts_with("x_seconds_bucket{le=\"0.00005\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.001\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"5\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_sum 7.001001\n"), "{out}");
        assert!(out.contains("x_seconds_count 4\n"), "{out}");
    }
}
