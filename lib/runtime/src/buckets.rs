//! The one set of latency histogram buckets every reco service exports, so
//! that series of different services aggregate and compare in PromQL.

use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds in seconds, from 100 µs (a feature-store read, one ANN
/// query) to 60 s (a snapshot of a large store, a stuck call): fine around
/// the 20–100 ms deadlines where the p99 guardrail looks.
pub const LATENCY_SECONDS: [f64; 23] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A latency histogram with [`LATENCY_SECONDS`] buckets.
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_SECONDS)
}
