//! A lock-free latency histogram, shared by the bus, the coordinator and the server's
//! `/metrics` (which renders [`HistogramSnapshot`]s as Prometheus histograms).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: 100 µs to 10 min, roughly ×2.5 apart, so
/// one set serves publish latency (sub-millisecond) and lease waits (minutes).
pub const BUCKETS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Counts of observations per bucket, their number and their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or under each bound and over the previous one.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or under it)`, cumulative.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (*bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            // Read after the buckets: a record racing the snapshot lands in `+Inf`
            // rather than making a bucket exceed the count.
            count: self.count.load(Ordering::Relaxed).max(cumulative),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_cumulatively() {
        let h = Histogram::default();
        h.record(Duration::from_micros(50));
        h.record(Duration::from_micros(100));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(3600));
        let s = h.snapshot();
        assert_eq!(s.buckets[0], (0.0001, 2));
        assert_eq!(s.buckets[4], (0.0025, 2));
        assert_eq!(s.buckets[5], (0.005, 3));
        assert_eq!(s.buckets.last(), Some(&(600.0, 3)));
        assert_eq!(s.count, 4, "the hour is counted, in +Inf only");
        assert!((s.sum_seconds - 3600.00315).abs() < 1e-9);
    }
}
