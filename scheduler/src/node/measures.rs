//! What a replica's node measures of its own work, for the metrics (`observe::metrics`
//! registers them): how long a proposal takes to be applied here, how long applying a batch of
//! committed entries takes, how long saving a snapshot takes and how large the last one was,
//! and how many jobs were requeued. The clones share the values.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::time::Duration;

/// The node's measures.
#[derive(Debug, Clone)]
pub struct Measures {
    /// Seconds from a proposal to its outcome, applied on the replica that proposed it.
    pub proposal: Histogram,
    /// Seconds to apply one batch of committed entries to the state machine.
    pub apply: Histogram,
    /// Seconds to encode and save one snapshot of this replica's state.
    pub snapshot_save: Histogram,
    /// Bytes of the last snapshot saved.
    pub snapshot_bytes: Gauge,
    /// Jobs that went back to the queue (preempted, drained, lost, failed and retried, idle).
    pub requeues: Counter,
}

impl Default for Measures {
    fn default() -> Self {
        Self {
            proposal: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            apply: Histogram::new(exponential_buckets(0.000_01, 2.0, 18)),
            snapshot_save: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            snapshot_bytes: Gauge::default(),
            requeues: Counter::default(),
        }
    }
}

impl Measures {
    /// Records `took` into `histogram`.
    pub fn time(histogram: &Histogram, took: Duration) {
        histogram.observe(took.as_secs_f64());
    }
}
