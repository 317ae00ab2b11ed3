//! Streaming detectors: models that score from the first event and keep learning from the
//! stream, one event at a time (the pattern of River's `learn_one` / `score_one` and of random
//! cut forests' `update` / `score`).
//!
//! A streaming detector owns its decision as well as its score: it may hold an alarm on across
//! events (hysteresis), so [`Step::flagged`] is not always `score >= threshold`, and it says
//! when an alarm starts, which is when the service publishes one anomaly record.

use std::fmt;

/// The result of one event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Anomaly score in [0, 1], calibrated so that [`StreamingDetector::threshold`] means the
    /// same on every series.
    pub score: f64,
    /// Whether the event is flagged (the alarm is on).
    pub flagged: bool,
    /// Whether this event starts an alarm (the first flagged event of a run).
    pub alarm_start: bool,
}

/// A per-service streaming model.
pub trait StreamingDetector: fmt::Debug + Send + Sync {
    /// Number of input columns.
    fn dim(&self) -> usize;
    /// Learns from one row (time `ts` in seconds) without judging it: training data that is
    /// taken as normal.
    fn learn(&mut self, ts: f64, x: &[f64]);
    /// Scores and judges one row, then learns from it as the model sees fit.
    fn step(&mut self, ts: f64, x: &[f64]) -> Step;
    /// Each column's share of the last step's score (non-negative, summing to 1, or all zero
    /// when nothing stood out).
    fn contributions(&self, out: &mut [f64]);
    /// The score at and above which an event starts an alarm.
    fn threshold(&self) -> f64;
    /// A boxed copy (engines are cloned for benchmarks and tests).
    fn clone_box(&self) -> Box<dyn StreamingDetector>;
    /// The model's state in the model-file encoding (postcard), restored by its registry
    /// entry's `load`.
    fn save(&self) -> Vec<u8>;
    /// Bytes the state takes in memory: the value, what it owns on the heap and the
    /// allocator's share (for memory budgets). By default an estimate from the encoded size:
    /// buffers, matrices and alignment make a state in memory a few times larger.
    fn memory_bytes(&self) -> usize {
        3 * self.save().len()
    }
}

impl Clone for Box<dyn StreamingDetector> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// Normalises `out` to shares summing to 1 (all zero when the total is not positive).
pub fn normalise_shares(out: &mut [f64]) {
    let total: f64 = out.iter().filter(|v| v.is_finite() && **v > 0.0).sum();
    for v in out.iter_mut() {
        *v = if total > 0.0 && v.is_finite() && *v > 0.0 {
            *v / total
        } else {
            0.0
        };
    }
}
