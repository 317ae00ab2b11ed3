//! Rolling state behind the live page (`/api/summary`): per model, counters, one history point
//! per second, the latest scores and anomalies.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use kanary_core::eval::Confusion;
use serde::Serialize;

use crate::telemetry::ModelHandles;

/// History points kept (one per second).
pub const HISTORY: usize = 300;
/// Recent scores kept.
pub const RECENT_SCORES: usize = 300;
/// Recent anomalies kept.
pub const RECENT_ANOMALIES: usize = 20;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// No event yet.
    Waiting,
    /// Collecting training events; no service has a model.
    WarmingUp,
    /// At least one service has a model.
    Scoring,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryPoint {
    pub t: f64,
    pub throughput_eps: f64,
    pub anomaly_rate: f64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScorePoint {
    pub ts: f64,
    pub score: f64,
    pub threshold: f64,
    pub flagged: bool,
    pub label: Option<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnomalyView {
    pub ts: f64,
    pub service: String,
    pub score: f64,
    pub threshold: f64,
    pub label: Option<u8>,
    pub contributions: serde_json::Map<String, serde_json::Value>,
}

/// One model's live figures.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub model: String,
    /// The model's display name, from the registry.
    pub title: &'static str,
    pub state: ModelState,
    pub events: u64,
    pub scored: u64,
    pub anomalies: u64,
    pub invalid: u64,
    pub throughput_eps: f64,
    pub anomaly_rate: f64,
    pub latency_seconds: Option<f64>,
    pub threshold: Option<f64>,
    pub labelled: bool,
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub history: VecDeque<HistoryPoint>,
    pub recent_scores: VecDeque<ScorePoint>,
    pub recent_anomalies: VecDeque<AnomalyView>,
    #[serde(skip)]
    tick: (u64, u64, u64),
}

impl ModelSummary {
    fn new(model: &str) -> Self {
        ModelSummary {
            model: model.to_string(),
            title: kanary_core::registry::ModelKind::named(model)
                .map(|k| k.spec().title)
                .unwrap_or(""),
            state: ModelState::Waiting,
            events: 0,
            scored: 0,
            anomalies: 0,
            invalid: 0,
            throughput_eps: 0.0,
            anomaly_rate: 0.0,
            latency_seconds: None,
            threshold: None,
            labelled: false,
            tp: 0,
            fp: 0,
            fn_: 0,
            tn: 0,
            precision: None,
            recall: None,
            f1: None,
            history: VecDeque::with_capacity(HISTORY),
            recent_scores: VecDeque::with_capacity(RECENT_SCORES),
            recent_anomalies: VecDeque::with_capacity(RECENT_ANOMALIES),
            tick: (0, 0, 0),
        }
    }

    pub fn set_confusion(&mut self, c: &Confusion) {
        self.tp = c.tp;
        self.fp = c.fp;
        self.fn_ = c.fn_;
        self.tn = c.tn;
        self.labelled = c.total() > 0;
        self.precision = c.precision();
        self.recall = c.recall();
        self.f1 = c.f1();
    }

    pub fn push_score(&mut self, p: ScorePoint) {
        if self.recent_scores.len() == RECENT_SCORES {
            self.recent_scores.pop_front();
        }
        self.recent_scores.push_back(p);
    }

    pub fn push_anomaly(&mut self, a: AnomalyView) {
        if self.recent_anomalies.len() == RECENT_ANOMALIES {
            self.recent_anomalies.pop_back();
        }
        self.recent_anomalies.push_front(a);
    }
}

/// The whole page's state.
pub struct Live {
    pub service: String,
    started: Instant,
    last_tick: Mutex<Instant>,
    models: Vec<Mutex<ModelSummary>>,
}

#[derive(Serialize)]
pub struct Summary {
    pub service: String,
    pub uptime_seconds: f64,
    pub generated_at: f64,
    pub models: Vec<ModelSummary>,
}

impl Live {
    pub fn new(service: &str, models: &[&str]) -> Self {
        Live {
            service: service.to_string(),
            started: Instant::now(),
            last_tick: Mutex::new(Instant::now()),
            models: models
                .iter()
                .map(|m| Mutex::new(ModelSummary::new(m)))
                .collect(),
        }
    }

    /// Runs `f` on model `i`'s summary under its lock.
    pub fn update<R>(&self, i: usize, f: impl FnOnce(&mut ModelSummary) -> R) -> R {
        let mut g = self.models[i].lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// A consistent copy for the API.
    pub fn summary(&self) -> Summary {
        Summary {
            service: self.service.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            generated_at: crate::modelio::now(),
            models: self
                .models
                .iter()
                .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).clone())
                .collect(),
        }
    }

    /// Once a second: throughput and anomaly rate since the last tick, a history point, and
    /// the throughput gauges.
    pub fn tick(&self, handles: &[ModelHandles]) {
        let dt = {
            let mut last = self.last_tick.lock().unwrap_or_else(|e| e.into_inner());
            let dt = last.elapsed().as_secs_f64();
            *last = Instant::now();
            dt.max(1e-3)
        };
        let now = crate::modelio::now();
        for (i, m) in self.models.iter().enumerate() {
            let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
            let (e0, s0, a0) = m.tick;
            let (de, ds, da) = (m.events - e0, m.scored - s0, m.anomalies - a0);
            m.tick = (m.events, m.scored, m.anomalies);
            m.throughput_eps = de as f64 / dt;
            m.anomaly_rate = if ds > 0 { da as f64 / ds as f64 } else { 0.0 };
            if let Some(h) = handles.get(i) {
                h.throughput.set(m.throughput_eps);
            }
            if m.history.len() == HISTORY {
                m.history.pop_front();
            }
            let point = HistoryPoint {
                t: now,
                throughput_eps: m.throughput_eps,
                anomaly_rate: m.anomaly_rate,
                precision: m.precision,
                recall: m.recall,
                f1: m.f1,
            };
            m.history.push_back(point);
        }
    }
}
