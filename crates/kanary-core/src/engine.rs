//! The detection engine: per-service warm-up, fitting and scoring of events, shared by the
//! online service (`kanary detect`, `kanary demo`) and offline evaluation (`kanary eval`), so
//! that offline numbers predict online behaviour.
//!
//! Each service's first `train_events` valid events are collected; the service's detector is
//! fitted on them, and every later event is scored. Events are processed in order per service;
//! [`Engine::process_batch`] scores each service's events of a batch in one call to the
//! model's batch path.
//!
//! (Over 600 lines only with its tests, which stay beside the engine.)

use std::collections::HashMap;
use std::sync::Arc;

use crate::detector::{DetectorConfig, FitError, FittedDetector, MIN_TRAIN_ROWS};
use crate::event::{Event, EventError};
use crate::features::{WindowSpec, WindowState};
use crate::registry::StreamState;
use crate::streaming::StreamingDetector;

/// A streaming model's saved state for one service: what it reads and what it has learnt.
/// Window features, when configured, refill from the events after a restore (as they do for
/// fitted models).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamSnapshot {
    /// Event fields the rows are built from (shared with the engine's services).
    pub inputs: Arc<[String]>,
    /// The model's input columns (window features when `window` is set).
    pub features: Arc<[String]>,
    pub window: Option<WindowSpec>,
    pub state: StreamState,
}

/// When to compute per-feature contributions of a scored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Explain {
    /// Only for flagged events (what anomaly records need).
    #[default]
    Flagged,
    /// For every scored event.
    All,
}

/// Engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub detector: DetectorConfig,
    /// Events per service to fit on before scoring.
    pub train_events: usize,
    /// Features to use; `None`: every numeric field of each service's first event.
    pub features: Option<Vec<String>>,
    /// Sliding-window features computed from them, per service.
    pub window: Option<WindowSpec>,
    pub explain: Explain,
    /// Hand each new service's fit out ([`Engine::take_fits`]) to run elsewhere instead of
    /// fitting it inside [`Engine::process_batch`]; the service's events meanwhile wait
    /// ([`Outcome::Waiting`]) and are scored when the fit is installed
    /// ([`Engine::finish_fit`]).
    pub background_fits: bool,
}

impl EngineConfig {
    pub fn new(detector: DetectorConfig) -> Self {
        EngineConfig {
            detector,
            train_events: 1000,
            features: None,
            window: None,
            explain: Explain::Flagged,
            background_fits: false,
        }
    }
}

/// A new service's fit, handed out by an engine with
/// [`background_fits`](EngineConfig::background_fits): run it on any thread, then give the
/// result back with [`Engine::finish_fit`].
#[derive(Debug, Clone)]
pub struct FitJob {
    service: String,
    job: u64,
    inputs: Vec<String>,
    rows: Vec<f64>,
    trained_at: f64,
    detector: DetectorConfig,
    window: Option<WindowSpec>,
}

impl FitJob {
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Fits the model: the work `process_batch` does inline without background fits.
    pub fn run(self) -> FitDone {
        let result = fit_rows(
            &self.detector,
            self.window.as_ref(),
            self.inputs,
            &self.rows,
            self.trained_at,
        );
        FitDone {
            service: self.service,
            job: self.job,
            result,
        }
    }
}

/// A finished [`FitJob`].
#[derive(Debug)]
pub struct FitDone {
    service: String,
    job: u64,
    result: Result<FittedDetector, FitError>,
}

impl FitDone {
    pub fn service(&self) -> &str {
        &self.service
    }
}

/// A fit installed by [`Engine::finish_fit`]: its result, and the outcomes of the events
/// that waited for it, under the ids their [`Outcome::Waiting`] gave, in their order.
#[derive(Debug)]
pub struct Finished {
    pub service: String,
    pub result: Result<(), FitError>,
    pub outcomes: Vec<(u64, Outcome)>,
}

/// Fits a detector on rows built from `inputs` (window features when `window` is set).
fn fit_rows(
    detector: &DetectorConfig,
    window: Option<&WindowSpec>,
    inputs: Vec<String>,
    rows: &[f64],
    trained_at: f64,
) -> Result<FittedDetector, FitError> {
    let names = match window {
        Some(w) => w.names(&inputs),
        None => inputs.clone(),
    };
    let mut m = FittedDetector::fit(detector, names, rows, trained_at)?;
    m.inputs = inputs;
    m.window = window.cloned();
    Ok(m)
}

/// What happened to one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The event cannot be used; it is not scored.
    Invalid(EventError),
    /// The event was kept for fitting its service's model (or to fill its feature windows).
    /// `fitted` is set on the event that completed the training set (the model now exists);
    /// `error` if fitting failed, in which case the service starts collecting again.
    Training {
        fitted: bool,
        error: Option<FitError>,
    },
    /// The event was scored.
    Scored(Scored),
    /// The service's model is being fitted elsewhere
    /// ([`background_fits`](EngineConfig::background_fits)): the event waits, and its outcome
    /// comes with the fit ([`Engine::finish_fit`]) under this id.
    Waiting { id: u64 },
}

/// A scored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub score: f64,
    pub threshold: f64,
    pub flagged: bool,
    /// The event starts an alarm: the service publishes one anomaly record for it. Every
    /// flagged event of a fitted model starts one; a streaming model with an alarm hold flags
    /// every event while the alarm lasts but starts it once.
    pub alarm_start: bool,
    /// Names of the model's input columns.
    pub features: Arc<[String]>,
    /// The model's input row (before standardisation), with the contributions (per
    /// [`Explain`]); empty otherwise.
    pub values: Vec<f64>,
    /// Each column's share of the score (per [`Explain`]); empty otherwise.
    pub contributions: Vec<f64>,
}

#[derive(Debug, Clone)]
enum Phase {
    Warming {
        rows: Vec<f64>,
    },
    Ready(Arc<FittedDetector>),
    /// Its training rows are being fitted elsewhere (fit `job`, see [`FitJob`]); the rows of
    /// the events that arrived meanwhile wait, with their ids.
    Fitting {
        job: u64,
        rows: Vec<f64>,
        ids: Vec<u64>,
    },
    /// A streaming model's state: scores from the first event, learns from every one.
    Streaming {
        model: Box<dyn StreamingDetector>,
        names: Arc<[String]>,
    },
}

#[derive(Debug, Clone)]
struct Service {
    /// Event fields the rows are built from (shared by services with the same fields).
    inputs: Arc<[String]>,
    window: Option<WindowState>,
    phase: Phase,
    /// The engine's event count when this service last had an event (least recently seen
    /// services are evicted first).
    seen: u64,
}

/// A service taken out of the engine by [`Engine::evict`]: what can be saved of it.
#[derive(Debug, Clone)]
pub enum Evicted {
    Fitted(FittedDetector),
    Stream(StreamSnapshot),
    /// Still collecting training rows (or filling windows): nothing worth keeping; the
    /// service warms up again if it comes back.
    Warming,
}

/// A service's training rows while a training file is read: its inputs, windows and rows.
type TrainingSet = (Vec<String>, Option<WindowState>, Vec<f64>);

/// Per-service models and their warm-up state.
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: EngineConfig,
    services: HashMap<String, Service>,
    /// Events seen (the clock of `Service::seen`).
    clock: u64,
    /// Scratch: per-service pending rows in the current batch.
    pending: HashMap<String, Pending>,
    /// A new streaming model per number of columns, copied for each new service (building one
    /// parses the model's parameters, which costs more than the copy).
    fresh: HashMap<usize, Box<dyn StreamingDetector>>,
    /// Lists of field and feature names services share (most services of a stream have the
    /// same ones): a new or restored service takes one of these instead of its own copy.
    lists: Vec<Arc<[String]>>,
    /// Fits handed out by `process_batch` and not yet taken; the next fit's number and the
    /// next waiting event's id.
    jobs: Vec<FitJob>,
    next_job: u64,
    next_wait: u64,
}

/// Distinct name lists kept for sharing, at most (the oldest is dropped first).
const SHARED_LISTS: usize = 16;

#[derive(Debug, Clone, Default)]
struct Pending {
    rows: Vec<f64>,
    indices: Vec<usize>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            cfg,
            services: HashMap::new(),
            clock: 0,
            pending: HashMap::new(),
            fresh: HashMap::new(),
            lists: Vec::new(),
            jobs: Vec::new(),
            next_job: 0,
            next_wait: 0,
        }
    }

    /// Hands new services' fits out ([`take_fits`](Self::take_fits)) from now on, or fits
    /// them inline again.
    pub fn set_background_fits(&mut self, on: bool) {
        self.cfg.background_fits = on;
    }

    /// The fits of services whose training rows are complete, with
    /// [`background_fits`](EngineConfig::background_fits).
    pub fn take_fits(&mut self) -> Vec<FitJob> {
        std::mem::take(&mut self.jobs)
    }

    /// Services whose fit is handed out and not yet installed.
    pub fn fitting(&self) -> usize {
        self.services
            .values()
            .filter(|s| matches!(s.phase, Phase::Fitting { .. }))
            .count()
    }

    /// Installs a finished fit and scores the events that waited for it. `None` when its
    /// service no longer waits for it. When fitting failed, the waiting events are the
    /// start of the service's next training set (as events after a failed inline fit are).
    pub fn finish_fit(&mut self, done: FitDone) -> Option<Finished> {
        let explain_all = self.cfg.explain == Explain::All;
        let svc = self.services.get_mut(done.service.as_str())?;
        let Phase::Fitting { job, .. } = &svc.phase else {
            return None;
        };
        if *job != done.job {
            return None;
        }
        let Phase::Fitting { mut rows, ids, .. } =
            std::mem::replace(&mut svc.phase, Phase::Warming { rows: Vec::new() })
        else {
            unreachable!("matched above")
        };
        let (result, outcomes) = match done.result {
            Ok(m) => {
                let scored = score_rows(&m, &mut rows, explain_all);
                svc.phase = Phase::Ready(Arc::new(m));
                let outcomes = ids
                    .into_iter()
                    .zip(scored)
                    .map(|(id, s)| (id, Outcome::Scored(s)))
                    .collect();
                (Ok(()), outcomes)
            }
            Err(e) => {
                svc.phase = Phase::Warming { rows };
                let outcomes = ids
                    .into_iter()
                    .map(|id| {
                        let o = Outcome::Training {
                            fitted: false,
                            error: None,
                        };
                        (id, o)
                    })
                    .collect();
                (Err(e), outcomes)
            }
        };
        Some(Finished {
            service: done.service,
            result,
            outcomes,
        })
    }

    /// `list` as a shared list: one already kept if equal, else a new one (then kept).
    fn shared(&mut self, list: &[String]) -> Arc<[String]> {
        if let Some(a) = self.lists.iter().rev().find(|a| ***a == *list) {
            return a.clone();
        }
        let a: Arc<[String]> = list.into();
        if self.lists.len() >= SHARED_LISTS {
            self.lists.remove(0);
        }
        self.lists.push(a.clone());
        a
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Installs a fitted model for `service` (from a model file or a training file).
    pub fn insert_model(&mut self, service: impl Into<String>, model: FittedDetector) {
        let window = model
            .window
            .clone()
            .map(|w| WindowState::new(w, model.inputs.len()));
        let inputs = self.shared(&model.inputs);
        self.services.insert(
            service.into(),
            Service {
                inputs,
                window,
                phase: Phase::Ready(Arc::new(model)),
                seen: self.clock,
            },
        );
    }

    /// The streaming models' states, by service (sorted), for a model file.
    pub fn streams(&self) -> Vec<(String, StreamSnapshot)> {
        let mut out: Vec<(String, StreamSnapshot)> = self
            .services
            .iter()
            .filter_map(|(s, st)| match &st.phase {
                Phase::Streaming { model, names } => Some((
                    s.clone(),
                    self.snapshot(
                        st.inputs.clone(),
                        names.clone(),
                        StreamState::saved(self.cfg.detector.kind, &**model),
                    ),
                )),
                Phase::Warming { .. } | Phase::Fitting { .. } | Phase::Ready(_) => None,
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// A streaming model's state with what it reads, for a model file.
    fn snapshot(
        &self,
        inputs: Arc<[String]>,
        features: Arc<[String]>,
        state: StreamState,
    ) -> StreamSnapshot {
        StreamSnapshot {
            inputs,
            features,
            window: self.cfg.window.clone(),
            state,
        }
    }

    /// Resumes a streaming model for `service` from a snapshot of the same kind.
    pub fn insert_stream(
        &mut self,
        service: impl Into<String>,
        snap: StreamSnapshot,
    ) -> Result<(), String> {
        if snap.state.kind() != self.cfg.detector.kind {
            return Err(format!(
                "a `{}` state cannot resume a `{}` engine",
                snap.state.kind(),
                self.cfg.detector.kind
            ));
        }
        let window = snap
            .window
            .clone()
            .map(|w| WindowState::new(w, snap.inputs.len()));
        let inputs = self.shared(&snap.inputs);
        let names = self.shared(&snap.features);
        self.services.insert(
            service.into(),
            Service {
                inputs,
                window,
                phase: Phase::Streaming {
                    model: snap.state.into_inner()?,
                    names,
                },
                seen: self.clock,
            },
        );
        Ok(())
    }

    /// The fitted models, by service.
    pub fn models(&self) -> impl Iterator<Item = (&str, &Arc<FittedDetector>)> {
        self.services.iter().filter_map(|(s, st)| match &st.phase {
            Phase::Ready(m) => Some((s.as_str(), m)),
            Phase::Warming { .. } | Phase::Fitting { .. } | Phase::Streaming { .. } => None,
        })
    }

    /// The fitted model of one service.
    pub fn model(&self, service: &str) -> Option<&Arc<FittedDetector>> {
        match &self.services.get(service)?.phase {
            Phase::Ready(m) => Some(m),
            Phase::Warming { .. } | Phase::Fitting { .. } | Phase::Streaming { .. } => None,
        }
    }

    /// Whether the engine can score: some service has a fitted model, or (streaming models)
    /// some service has been seen.
    pub fn ready(&self) -> bool {
        self.services
            .values()
            .any(|s| matches!(s.phase, Phase::Ready(_) | Phase::Streaming { .. }))
    }

    /// Services seen, fitted or not.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Whether `service` is held in the engine.
    pub fn contains(&self, service: &str) -> bool {
        self.services.contains_key(service)
    }

    /// Removes the `n` least recently seen services and returns what can be saved of each.
    pub fn evict(&mut self, n: usize) -> Vec<(String, Evicted)> {
        if n == 0 || self.services.is_empty() {
            return Vec::new();
        }
        // A service whose fit is running stays: its waiting events are scored by the fit.
        let mut by_age: Vec<(u64, &String)> = self
            .services
            .iter()
            .filter(|(_, s)| !matches!(s.phase, Phase::Fitting { .. }))
            .map(|(k, s)| (s.seen, k))
            .collect();
        if by_age.is_empty() {
            return Vec::new();
        }
        let n = n.min(by_age.len());
        if n < by_age.len() {
            by_age.select_nth_unstable(n - 1);
        }
        let names: Vec<String> = by_age[..n].iter().map(|(_, k)| (*k).clone()).collect();
        let mut out = Vec::with_capacity(n);
        for name in names {
            let svc = self.services.remove(&name).expect("listed above");
            self.pending.remove(&name);
            let saved = match svc.phase {
                Phase::Ready(m) => Evicted::Fitted(Arc::unwrap_or_clone(m)),
                Phase::Streaming { model, names } => Evicted::Stream(self.snapshot(
                    svc.inputs,
                    names,
                    StreamState::new(self.cfg.detector.kind, model),
                )),
                Phase::Warming { .. } => Evicted::Warming,
                Phase::Fitting { .. } => unreachable!("not evicted"),
            };
            out.push((name, saved));
        }
        out
    }

    /// Mean bytes a service takes in memory over up to `n` services (the map's iteration
    /// order: an arbitrary sample). `None` without services.
    pub fn sample_service_bytes(&self, n: usize) -> Option<f64> {
        // The map's slot (a table between half and seven eighths full: twice the entry) and
        // the name's buffer; field and feature names are shared between services. A fitted
        // model in memory takes a few times its encoded size (growable buffers, matrices,
        // alignment); a streaming model says what it takes.
        const ENTRY: usize = 2 * std::mem::size_of::<(String, Service)>();
        const IN_MEMORY: usize = 3;
        let mut total = 0usize;
        let mut k = 0usize;
        for (name, svc) in self.services.iter().take(n.max(1)) {
            let state = match &svc.phase {
                Phase::Warming { rows } => rows.capacity() * 8,
                Phase::Fitting { rows, ids, .. } => rows.capacity() * 8 + ids.capacity() * 8,
                Phase::Ready(m) => {
                    IN_MEMORY * postcard::to_stdvec(&**m).map(|b| b.len()).unwrap_or(0)
                }
                Phase::Streaming { model, .. } => model.memory_bytes(),
            };
            let window = svc.window.as_ref().map_or(0, |w| w.bytes());
            total += ENTRY + name.capacity() + 16 + state + window;
            k += 1;
        }
        (k > 0).then(|| total as f64 / k as f64)
    }

    fn inputs_for(&self, ev: &Event) -> Vec<String> {
        self.cfg
            .features
            .clone()
            .unwrap_or_else(|| ev.feature_names())
    }

    /// A new service's first phase: collecting training rows, or a fresh streaming model.
    fn new_phase(&mut self, inputs: &[String]) -> Phase {
        let names: Vec<String> = match &self.cfg.window {
            Some(w) => w.names(inputs),
            None => inputs.to_vec(),
        };
        let dim = names.len();
        if !self.fresh.contains_key(&dim)
            && let Some(model) = self.cfg.detector.new_streaming(dim)
        {
            self.fresh.insert(dim, model);
        }
        match self.fresh.get(&dim) {
            Some(model) => Phase::Streaming {
                model: model.clone_box(),
                names: self.shared(&names),
            },
            None => Phase::Warming { rows: Vec::new() },
        }
    }

    /// Whether the configured model is a streaming one.
    pub fn is_streaming(&self) -> bool {
        self.cfg.detector.kind.is_streaming()
    }

    /// Fits one model per service on `events` (a training set), replacing existing ones; a
    /// streaming model learns from them instead, without judging them.
    /// Invalid events are skipped and counted in the returned map by reason.
    pub fn fit_all(
        &mut self,
        events: &[Event],
        trained_at: f64,
    ) -> Result<HashMap<&'static str, u64>, (String, FitError)> {
        let mut invalid: HashMap<&'static str, u64> = HashMap::new();
        if self.is_streaming() {
            self.learn_all(events, &mut invalid);
            return Ok(invalid);
        }
        // Per service: inputs, window state, rows.
        let mut by_service: HashMap<&str, TrainingSet> = HashMap::new();
        let (mut raw, mut derived) = (Vec::new(), Vec::new());
        for ev in events {
            let inputs = self.inputs_for(ev);
            let window = self.cfg.window.clone();
            let entry = by_service.entry(ev.service.as_str()).or_insert_with(|| {
                let w = window.map(|w| WindowState::new(w, inputs.len()));
                (inputs, w, Vec::new())
            });
            if let Err(e) = ev.extract_into(&entry.0, &mut raw) {
                *invalid.entry(e.reason()).or_default() += 1;
                continue;
            }
            match &mut entry.1 {
                Some(w) => {
                    if w.push(&raw, &mut derived) {
                        entry.2.extend_from_slice(&derived);
                    }
                }
                None => entry.2.extend_from_slice(&raw),
            }
        }
        let mut services: Vec<_> = by_service.into_iter().collect();
        services.sort_by(|a, b| a.0.cmp(b.0));
        for (service, (inputs, _, rows)) in services {
            let m = self
                .fit_rows(inputs, &rows, trained_at)
                .map_err(|e| (service.to_string(), e))?;
            self.insert_model(service, m);
        }
        Ok(invalid)
    }

    /// The state of the event's service, created on its first event (an event without any
    /// numeric field cannot start a service).
    fn service_of(&mut self, ev: &Event) -> Result<&mut Service, EventError> {
        if !self.services.contains_key(ev.service.as_str()) {
            let inputs = self.inputs_for(ev);
            if inputs.is_empty() {
                return Err(EventError::MissingFeature("(no numeric fields)".into()));
            }
            let window = self
                .cfg
                .window
                .clone()
                .map(|w| WindowState::new(w, inputs.len()));
            let phase = self.new_phase(&inputs);
            let inputs = self.shared(&inputs);
            self.services.insert(
                ev.service.clone(),
                Service {
                    inputs,
                    window,
                    phase,
                    seen: 0,
                },
            );
        }
        self.clock += 1;
        let svc = self
            .services
            .get_mut(ev.service.as_str())
            .expect("inserted above");
        svc.seen = self.clock;
        Ok(svc)
    }

    /// Streaming models: learns from every valid event in order, per service.
    fn learn_all(&mut self, events: &[Event], invalid: &mut HashMap<&'static str, u64>) {
        let (mut raw, mut derived) = (Vec::new(), Vec::new());
        for ev in events {
            let svc = match self.service_of(ev) {
                Ok(svc) => svc,
                Err(e) => {
                    *invalid.entry(e.reason()).or_default() += 1;
                    continue;
                }
            };
            if let Err(e) = ev.extract_into(&svc.inputs, &mut raw) {
                *invalid.entry(e.reason()).or_default() += 1;
                continue;
            }
            let row: &[f64] = match &mut svc.window {
                Some(w) => {
                    if !w.push(&raw, &mut derived) {
                        continue;
                    }
                    &derived
                }
                None => &raw,
            };
            if let Phase::Streaming { model, .. } = &mut svc.phase {
                model.learn(ev.ts, row);
            }
        }
    }

    /// Fits a detector on rows built from `inputs` (window features when configured).
    fn fit_rows(
        &self,
        inputs: Vec<String>,
        rows: &[f64],
        trained_at: f64,
    ) -> Result<FittedDetector, FitError> {
        fit_rows(
            &self.cfg.detector,
            self.cfg.window.as_ref(),
            inputs,
            rows,
            trained_at,
        )
    }

    /// Processes one event.
    pub fn process(&mut self, ev: &Event, now: f64) -> Outcome {
        let mut out = Vec::with_capacity(1);
        self.process_batch(std::slice::from_ref(ev), now, &mut out);
        out.pop().expect("one outcome per event")
    }

    /// Processes events in order, appending one outcome per event to `out`. Events of services
    /// that have a model are scored together per service.
    pub fn process_batch(&mut self, events: &[Event], now: f64, out: &mut Vec<Outcome>) {
        let base = out.len();
        let train_events = self.cfg.train_events.max(MIN_TRAIN_ROWS);
        let explain_all = self.cfg.explain == Explain::All;
        let background = self.cfg.background_fits;
        for p in self.pending.values_mut() {
            p.rows.clear();
            p.indices.clear();
        }
        let (mut raw, mut derived) = (Vec::new(), Vec::new());
        for (i, ev) in events.iter().enumerate() {
            // The id of the event if it waits for its service's fit.
            let wait_id = self.next_wait;
            let svc = match self.service_of(ev) {
                Ok(svc) => svc,
                Err(e) => {
                    out.push(Outcome::Invalid(e));
                    continue;
                }
            };
            if let Err(e) = ev.extract_into(&svc.inputs, &mut raw) {
                out.push(Outcome::Invalid(e));
                continue;
            }
            let row: &[f64] = match &mut svc.window {
                Some(w) => {
                    if !w.push(&raw, &mut derived) {
                        // Still filling the windows: part of the warm-up.
                        out.push(Outcome::Training {
                            fitted: false,
                            error: None,
                        });
                        continue;
                    }
                    &derived
                }
                None => &raw,
            };
            match &mut svc.phase {
                Phase::Streaming { model, names } => {
                    let s = model.step(ev.ts, row);
                    let (values, contributions) = if s.flagged || explain_all {
                        let mut shares = vec![0.0; row.len()];
                        model.contributions(&mut shares);
                        (row.to_vec(), shares)
                    } else {
                        (Vec::new(), Vec::new())
                    };
                    out.push(Outcome::Scored(Scored {
                        score: s.score,
                        threshold: model.threshold(),
                        flagged: s.flagged,
                        alarm_start: s.alarm_start,
                        features: names.clone(),
                        values,
                        contributions,
                    }));
                }
                Phase::Warming { rows } => {
                    rows.extend_from_slice(row);
                    out.push(Outcome::Training {
                        fitted: false,
                        error: None,
                    });
                    if rows.len() / row.len() >= train_events {
                        let rows = std::mem::take(rows);
                        let inputs = svc.inputs.to_vec();
                        if background {
                            let job = self.next_job;
                            self.next_job += 1;
                            let svc = self.services.get_mut(ev.service.as_str()).expect("present");
                            svc.phase = Phase::Fitting {
                                job,
                                rows: Vec::new(),
                                ids: Vec::new(),
                            };
                            self.jobs.push(FitJob {
                                service: ev.service.clone(),
                                job,
                                inputs,
                                rows,
                                trained_at: now,
                                detector: self.cfg.detector.clone(),
                                window: self.cfg.window.clone(),
                            });
                            continue;
                        }
                        // Fit now, so that the service's next event is scored.
                        let result = self.fit_rows(inputs, &rows, now);
                        let svc = self.services.get_mut(ev.service.as_str()).expect("present");
                        let last = out.last_mut().expect("pushed above");
                        match result {
                            Ok(m) => {
                                svc.phase = Phase::Ready(Arc::new(m));
                                *last = Outcome::Training {
                                    fitted: true,
                                    error: None,
                                };
                            }
                            Err(e) => {
                                *last = Outcome::Training {
                                    fitted: false,
                                    error: Some(e),
                                };
                            }
                        }
                    }
                }
                Phase::Fitting { rows, ids, .. } => {
                    rows.extend_from_slice(row);
                    ids.push(wait_id);
                    out.push(Outcome::Waiting { id: wait_id });
                    self.next_wait += 1;
                }
                Phase::Ready(_) => {
                    let p = match self.pending.get_mut(ev.service.as_str()) {
                        Some(p) => p,
                        None => self.pending.entry(ev.service.clone()).or_default(),
                    };
                    p.rows.extend_from_slice(row);
                    p.indices.push(i);
                    // Placeholder, replaced once the batch is scored.
                    out.push(Outcome::Training {
                        fitted: false,
                        error: None,
                    });
                }
            }
        }
        // Score each service's pending rows in one batch.
        for (service, p) in self.pending.iter_mut() {
            if p.indices.is_empty() {
                continue;
            }
            let Some(Service {
                phase: Phase::Ready(m),
                ..
            }) = self.services.get(service)
            else {
                continue;
            };
            for (s, &i) in score_rows(m, &mut p.rows, explain_all)
                .into_iter()
                .zip(&p.indices)
            {
                out[base + i] = Outcome::Scored(s);
            }
        }
    }
}

/// Scores rows of raw inputs (scaled in place) with a fitted model.
fn score_rows(m: &FittedDetector, rows: &mut [f64], explain_all: bool) -> Vec<Scored> {
    let d = m.dim();
    let raw = rows.to_vec();
    let mut scores = vec![0.0; rows.len() / d];
    m.score_raw_batch(rows, &mut scores);
    scores
        .iter()
        .enumerate()
        .map(|(k, &score)| {
            let flagged = score >= m.threshold;
            // Values and explanations are only needed for anomaly records and reports.
            let (values, contributions) = if flagged || explain_all {
                (
                    raw[k * d..(k + 1) * d].to_vec(),
                    m.contributions_scaled(&rows[k * d..(k + 1) * d]),
                )
            } else {
                (Vec::new(), Vec::new())
            };
            Scored {
                score,
                threshold: m.threshold,
                flagged,
                alarm_start: flagged,
                features: m.features.clone(),
                values,
                contributions,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::ModelKind;
    use crate::features::WindowSpec;
    use crate::simulate::{DEFAULT_START_TS, Scenario, Simulator};

    fn engine(kind: ModelKind, train: usize) -> Engine {
        let mut cfg = EngineConfig::new(DetectorConfig::new(kind));
        cfg.train_events = train;
        Engine::new(cfg)
    }

    #[test]
    fn warms_up_then_scores() {
        let mut e = engine(ModelKind::named("zscore").unwrap(), 100);
        let evs: Vec<Event> = Simulator::new(Scenario::Seed, 1, DEFAULT_START_TS)
            .take(150)
            .collect();
        let outs: Vec<Outcome> = evs.iter().map(|ev| e.process(ev, 0.0)).collect();
        for o in &outs[..99] {
            assert!(matches!(
                o,
                Outcome::Training {
                    fitted: false,
                    error: None
                }
            ));
        }
        assert!(matches!(outs[99], Outcome::Training { fitted: true, .. }));
        assert!(outs[100..].iter().all(|o| matches!(o, Outcome::Scored(_))));
        assert!(e.model("default").is_some());
    }

    #[test]
    fn a_background_fit_holds_the_services_events_and_scores_them_as_an_inline_fit_would() {
        let kind = ModelKind::named("if").unwrap();
        let evs: Vec<Event> = Simulator::new(Scenario::Seed, 1, DEFAULT_START_TS)
            .take(400)
            .collect();
        let mut inline = engine(kind, 100);
        let want: Vec<Outcome> = evs.iter().map(|ev| inline.process(ev, 0.0)).collect();
        let mut bg = engine(kind, 100);
        bg.set_background_fits(true);
        let mut outs: Vec<Outcome> = Vec::new();
        bg.process_batch(&evs[..130], 0.0, &mut outs);
        // The training set completes at event 100: its fit is handed out, and the events
        // after it wait, numbered in order.
        assert!(outs[..100].iter().all(|o| matches!(
            o,
            Outcome::Training {
                fitted: false,
                error: None
            }
        )));
        let ids: Vec<u64> = outs[100..]
            .iter()
            .map(|o| match o {
                Outcome::Waiting { id } => *id,
                o => panic!("{o:?} instead of waiting"),
            })
            .collect();
        assert_eq!(ids, (0..30).collect::<Vec<u64>>());
        assert!(bg.model("default").is_none() && bg.fitting() == 1);
        let jobs = bg.take_fits();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].service(), "default");
        assert!(bg.take_fits().is_empty());
        // A fitting service is not evicted: its waiting events need the fit.
        assert!(bg.evict(1).is_empty());
        // Installed: the waiting events get the outcomes an inline fit gives them, and the
        // events after them are scored as they come.
        let fin = bg
            .finish_fit(jobs.into_iter().next().unwrap().run())
            .unwrap();
        assert_eq!(fin.service, "default");
        assert!(fin.result.is_ok());
        let got: Vec<Outcome> = fin.outcomes.into_iter().map(|(_, o)| o).collect();
        assert_eq!(got, want[100..130]);
        let rest: Vec<Outcome> = evs[130..].iter().map(|ev| bg.process(ev, 0.0)).collect();
        assert_eq!(rest, want[130..]);
        assert_eq!(bg.fitting(), 0);
        // A fit whose service was evicted and came back meanwhile is not installed.
        let mut bg = engine(kind, 100);
        bg.set_background_fits(true);
        for ev in &evs[..100] {
            bg.process(ev, 0.0);
        }
        let job = bg.take_fits().pop().unwrap();
        let stale = job.clone().run();
        bg.services.get_mut("default").unwrap().phase = Phase::Warming { rows: Vec::new() };
        assert!(bg.finish_fit(stale).is_none());
    }

    #[test]
    fn eviction_takes_the_least_recently_seen_and_a_restored_stream_continues_exactly() {
        let evs: Vec<Event> = Simulator::new(Scenario::Microservices, 4, DEFAULT_START_TS)
            .take(3000)
            .collect();
        let kind = ModelKind::named("codev").unwrap();
        let mut whole = engine(kind, 100);
        let mut parted = engine(kind, 100);
        let (a, b) = evs.split_at(2000);
        for ev in a {
            whole.process(ev, 0.0);
            parted.process(ev, 0.0);
        }
        let n = parted.service_count();
        assert!(n >= 3, "{n} services");
        // The service seen last stays; the two seen longest ago go first.
        let last = a.last().unwrap().service.clone();
        let mut order: Vec<(usize, &str)> = Vec::new();
        for (i, ev) in a.iter().enumerate() {
            order.retain(|(_, s)| *s != ev.service);
            order.push((i, ev.service.as_str()));
        }
        let evicted = parted.evict(2);
        let names: Vec<&str> = evicted.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names.len(), 2);
        for (_, s) in &order[..2] {
            assert!(names.contains(s), "{names:?} vs {order:?}");
        }
        assert!(parted.contains(&last));
        assert_eq!(parted.service_count(), n - 2);
        // Put back, the services score the rest exactly as if never evicted.
        for (service, saved) in evicted {
            let Evicted::Stream(snap) = saved else {
                panic!("a streaming model is saved as its state");
            };
            parted.insert_stream(service, snap).unwrap();
        }
        for ev in b {
            assert_eq!(whole.process(ev, 0.0), parted.process(ev, 0.0));
        }
        assert!(parted.sample_service_bytes(8).unwrap() > 1000.0);
    }

    #[test]
    fn batch_and_single_processing_agree() {
        let evs: Vec<Event> = Simulator::new(Scenario::Microservices, 2, DEFAULT_START_TS)
            .take(1200)
            .collect();
        let mut a = engine(ModelKind::named("if").unwrap(), 100);
        let single: Vec<Outcome> = evs.iter().map(|ev| a.process(ev, 0.0)).collect();
        let mut b = engine(ModelKind::named("if").unwrap(), 100);
        let mut batched = Vec::new();
        for chunk in evs.chunks(97) {
            b.process_batch(chunk, 0.0, &mut batched);
        }
        assert_eq!(single.len(), batched.len());
        for (x, y) in single.iter().zip(&batched) {
            match (x, y) {
                (Outcome::Scored(x), Outcome::Scored(y)) => {
                    assert!((x.score - y.score).abs() < 1e-9);
                    assert_eq!(x.flagged, y.flagged);
                }
                (x, y) => assert_eq!(x, y),
            }
        }
        assert_eq!(b.service_count(), 4);
    }

    #[test]
    fn window_features_warm_up_then_score_and_survive_a_model_file() {
        let mut cfg = EngineConfig::new(DetectorConfig::new(ModelKind::named("zscore").unwrap()));
        cfg.train_events = 50;
        cfg.window = Some(WindowSpec {
            lengths: vec![4],
            ..WindowSpec::default()
        });
        let mut e = Engine::new(cfg);
        let evs: Vec<Event> = (0..100)
            .map(|i| Event::new(i as f64, "svc").with_field("v", (i % 7) as f64))
            .collect();
        let outs: Vec<Outcome> = evs.iter().map(|ev| e.process(ev, 0.0)).collect();
        // 4 events fill the window, 50 train, the rest are scored.
        let training = outs
            .iter()
            .filter(|o| matches!(o, Outcome::Training { .. }))
            .count();
        assert_eq!(training, 4 + 50);
        let Outcome::Scored(s) = &outs[99] else {
            panic!("not scored")
        };
        assert_eq!(&*s.features, ["v", "v.d1", "v.z4"]);
        // A model from a file brings its window along and rebuilds it from events.
        let m = (**e.model("svc").unwrap()).clone();
        assert_eq!(m.inputs, vec!["v".to_string()]);
        let mut fresh = Engine::new(EngineConfig::new(DetectorConfig::new(
            ModelKind::named("zscore").unwrap(),
        )));
        fresh.insert_model("svc", m);
        let outs: Vec<Outcome> = evs[..10].iter().map(|ev| fresh.process(ev, 0.0)).collect();
        assert!(
            outs[..4]
                .iter()
                .all(|o| matches!(o, Outcome::Training { .. }))
        );
        assert!(outs[4..].iter().all(|o| matches!(o, Outcome::Scored(_))));
    }

    #[test]
    fn missing_features_are_invalid_and_not_fatal() {
        let mut e = engine(ModelKind::named("zscore").unwrap(), 10);
        for i in 0..10 {
            let ev = Event::new(i as f64, "svc")
                .with_field("a", i as f64)
                .with_field("b", 1.0);
            e.process(&ev, 0.0);
        }
        let bad = Event::new(11.0, "svc").with_field("a", 1.0);
        assert_eq!(
            e.process(&bad, 0.0),
            Outcome::Invalid(EventError::MissingFeature("b".into()))
        );
        let good = Event::new(12.0, "svc")
            .with_field("a", 1.0)
            .with_field("b", 1.0);
        assert!(matches!(e.process(&good, 0.0), Outcome::Scored(_)));
    }

    #[test]
    fn contributions_on_flagged_events() {
        let mut e = engine(ModelKind::named("zscore").unwrap(), 100);
        for ev in Simulator::new(Scenario::Seed, 3, DEFAULT_START_TS).take(100) {
            e.process(&ev, 0.0);
        }
        let ev = Event::new(1.0, "default")
            .with_field("latency", 100.0)
            .with_field("cpu", 95.0)
            .with_field("memory", 500.0);
        let Outcome::Scored(s) = e.process(&ev, 0.0) else {
            panic!("not scored")
        };
        assert!(s.flagged);
        assert_eq!(s.contributions.len(), 3);
        assert!(s.contributions[1] > 0.9);
        assert_eq!(s.values, vec![100.0, 95.0, 500.0]);
    }
}
