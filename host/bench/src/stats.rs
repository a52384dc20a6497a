//! Counters shared by the load tasks, latency histograms, the per-second progress line and
//! the final report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, 1 µs ..= 60 s, 3 significant digits.
pub const LATENCY_US_MAX: u64 = 60_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static histogram bounds are valid")
}

pub fn record_latency(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, LATENCY_US_MAX);
    h.record(us).expect("value clamped into the histogram's range");
}

#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub send_errors: AtomicU64,
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    pub receive_errors: AtomicU64,
    /// The latest error text of each kind, for the report (a run of only errors says why).
    pub last_send_error: std::sync::Mutex<Option<String>>,
    pub last_receive_error: std::sync::Mutex<Option<String>>,
}

impl Counters {
    pub fn send_error(&self, e: &dyn std::fmt::Display) {
        self.send_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_send_error.lock().expect("not poisoned") = Some(e.to_string());
    }

    pub fn receive_error(&self, e: &dyn std::fmt::Display) {
        self.receive_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_receive_error.lock().expect("not poisoned") = Some(e.to_string());
    }

    pub fn snapshot(&self) -> [u64; 4] {
        [
            self.sent.load(Ordering::Relaxed),
            self.send_errors.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
            self.receive_errors.load(Ordering::Relaxed),
        ]
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub label: String,
    pub topic: String,
    pub size_bytes: usize,
    pub producers: u32,
    /// Messages per send request.
    pub batch: u32,
    pub consumers: u32,
    pub elapsed_s: f64,
    pub sent: u64,
    pub send_errors: u64,
    pub received: u64,
    pub receive_errors: u64,
    pub last_send_error: Option<String>,
    pub last_receive_error: Option<String>,
    pub send_msgs_per_s: f64,
    /// Payload bytes only, 10^6 bytes per MB.
    pub send_mb_per_s: f64,
    pub receive_msgs_per_s: f64,
    /// Send → acknowledged, microseconds.
    pub send_latency_us: LatencySummary,
    /// Send → delivered to a consumer (from the timestamp in the body), microseconds.
    pub e2e_latency_us: Option<LatencySummary>,
    /// mqbench's own CPU time (user + system) per message sent or received, microseconds:
    /// what the load generator took from the machine it shares with the servers.
    pub client_cpu_us_per_msg: Option<f64>,
    /// Runtime worker threads mqbench ran with.
    pub client_threads: u32,
}

impl Report {
    pub fn human(&self) -> String {
        let l = &self.send_latency_us;
        let mut s = format!(
            "{target} {label}: {producers} producers (batches of {batch}), {consumers} consumers, {size} B messages, {elapsed:.1} s\n\
             sent {sent} ({errors} errors): {rate:.0} msgs/s, {mb:.2} MB/s\n\
             send latency us: p50 {p50}  p99 {p99}  p99.9 {p999}  max {max}  mean {mean:.0}\n",
            target = self.target,
            label = self.label,
            producers = self.producers,
            batch = self.batch,
            consumers = self.consumers,
            size = self.size_bytes,
            elapsed = self.elapsed_s,
            sent = self.sent,
            errors = self.send_errors,
            rate = self.send_msgs_per_s,
            mb = self.send_mb_per_s,
            p50 = l.p50,
            p99 = l.p99,
            p999 = l.p999,
            max = l.max,
            mean = l.mean,
        );
        if let Some(cpu) = self.client_cpu_us_per_msg {
            s.push_str(&format!("client cpu: {cpu:.1} us per message ({} threads)\n", self.client_threads));
        }
        if let Some(e) = &self.last_send_error {
            s.push_str(&format!("last send error: {e}\n"));
        }
        if self.consumers > 0 {
            if let Some(e) = &self.last_receive_error {
                s.push_str(&format!("last receive error: {e}\n"));
            }
            s.push_str(&format!(
                "received {} ({} errors): {:.0} msgs/s\n",
                self.received, self.receive_errors, self.receive_msgs_per_s
            ));
            if let Some(e) = &self.e2e_latency_us {
                s.push_str(&format!(
                    "end-to-end latency us: p50 {}  p99 {}  p99.9 {}  max {}\n",
                    e.p50, e.p99, e.p999, e.max
                ));
            }
        }
        s
    }
}

/// One progress line: totals and the rate over the last interval.
pub fn progress_line(elapsed: Duration, now: [u64; 4], before: [u64; 4], interval: Duration) -> String {
    let secs = interval.as_secs_f64().max(1e-9);
    format!(
        "[{:>5.1}s] sent {} ({:.0}/s, {} errors)  received {} ({:.0}/s, {} errors)",
        elapsed.as_secs_f64(),
        now[0],
        (now[0] - before[0]) as f64 / secs,
        now[1],
        now[2],
        (now[2] - before[2]) as f64 / secs,
        now[3],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_quantiles() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record_latency(&mut h, Duration::from_micros(us));
        }
        record_latency(&mut h, Duration::from_secs(3600)); // clamped, not a panic
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1001);
        assert!((499..=501).contains(&s.p50), "{s:?}");
        assert!((989..=992).contains(&s.p99), "{s:?}");
        assert!(s.max >= LATENCY_US_MAX - LATENCY_US_MAX / 1000, "{s:?}");
    }

    #[test]
    fn progress_rates() {
        let line = progress_line(Duration::from_secs(2), [300, 1, 50, 0], [100, 0, 0, 0], Duration::from_secs(1));
        assert!(line.contains("sent 300 (200/s, 1 errors)"), "{line}");
        assert!(line.contains("received 50 (50/s"), "{line}");
    }
}
