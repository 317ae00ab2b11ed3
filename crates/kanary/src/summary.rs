//! What an evaluation run produced, per model: the summary line (`eval --json`), the same
//! figures per service, and the per-event points a report draws. Written by `commands::eval`,
//! read by `report`.

use std::collections::BTreeMap;

use kanary_core::operator::OperatorSummary;
use serde::Serialize;

/// The summary line of one model.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummary {
    pub model: String,
    /// Valid events replayed.
    pub events: u64,
    /// Events scored (after each service's training events).
    pub scored: u64,
    /// Events used for fitting.
    pub train_events: u64,
    /// Lines or events that could not be used, by reason.
    pub invalid: BTreeMap<&'static str, u64>,
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub pr_auc: Option<f64>,
    /// Engine throughput over the whole replay, fitting included.
    pub events_per_sec: f64,
    /// Seconds spent fitting models.
    pub fit_seconds: f64,
    /// Threshold per service.
    pub thresholds: BTreeMap<String, f64>,
    /// An incident counts as caught early when flagged within this many events of its start.
    pub early_within: usize,
    /// Incidents caught, early, delay, false pages per service-day, normal events flagged.
    #[serde(flatten)]
    pub operator: OperatorSummary,
    /// PR-AUC per service, averaged over the services that have labelled anomalies.
    pub pr_auc_services: Option<f64>,
    /// The same figures per service.
    pub services: Vec<ServiceSummary>,
}

/// The figures of one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceSummary {
    pub service: String,
    pub scored: u64,
    pub f1: Option<f64>,
    pub pr_auc: Option<f64>,
    #[serde(flatten)]
    pub operator: OperatorSummary,
}

/// Per-event results of one model, for reports.
pub struct ModelRun {
    pub summary: EvalSummary,
    /// Index into the input events, score, threshold, flagged; for scored events only.
    pub scored: Vec<ScoredPoint>,
}

#[derive(Debug, Clone, Copy)]
pub struct ScoredPoint {
    pub index: usize,
    pub score: f64,
    pub threshold: f64,
    pub flagged: bool,
}
