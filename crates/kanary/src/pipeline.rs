//! The online path shared by `kanary detect` (Kafka) and `kanary demo` (in-process bus):
//! parse a batch of messages once, run it through every configured model's engine (the same
//! engine `kanary eval` replays files through), update metrics and the live page, and return
//! the records to publish (anomalies, dead letters). The caller delivers them and only then
//! marks the batch's offsets as processed.
//!
//! (Over 600 lines only with its tests, which stay beside the pipeline.)

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use kanary_core::detector::{FittedDetector, ModelKind};
use kanary_core::engine::{Engine, EngineConfig, Evicted, FitDone, FitJob, Outcome};
use kanary_core::eval::Confusion;
use kanary_core::event::Event;
use kanary_core::persist::ModelFile;
use prometheus_client::metrics::counter::Counter;

use crate::live::{AnomalyView, Live, ModelState, ScorePoint};
use crate::records::{Shape, write_scored};
use crate::telemetry::{
    Metrics, ModelHandles, ModelInfo, ModelLabel, ModelReason, ModelService, OTHER_SERVICES,
};

/// One consumed message.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub payload: &'a [u8],
    pub key: Option<&'a [u8]>,
    pub partition: i32,
    pub offset: i64,
}

/// A record for the anomalies topic.
#[derive(Debug, Clone)]
pub struct AnomalyRecord {
    pub service: String,
    pub json: String,
}

/// An input that could not be used, to forward to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Index of the message in the batch.
    pub index: usize,
    pub reason: &'static str,
    pub error: String,
    /// The model whose features the event lacked (None: unusable for every model).
    pub model: Option<&'static str>,
}

/// What a batch produced.
#[derive(Debug, Default)]
pub struct BatchOutput {
    pub anomalies: Vec<AnomalyRecord>,
    pub dead_letters: Vec<DeadLetter>,
    /// Models (by index) that fitted a service's model during the batch.
    pub fitted: Vec<usize>,
    /// The services whose models were fitted during the batch: (model index, service).
    pub new_models: Vec<(usize, String)>,
}

impl BatchOutput {
    pub fn clear(&mut self) {
        self.anomalies.clear();
        self.dead_letters.clear();
        self.fitted.clear();
        self.new_models.clear();
    }
}

struct Runner {
    kind: ModelKind,
    engine: Engine,
    handles: ModelHandles,
    confusion: Confusion,
    /// Per-service counter handles (events, anomalies) of the services that have their own
    /// series, at most `Pipeline::max_service_series`.
    services: HashMap<String, (Counter, Counter)>,
    /// The handles of every other service (`service="_other"`).
    other: (Counter, Counter),
    /// When (wall clock) each service with its own series last started an alarm.
    alarm_at: HashMap<String, f64>,
    info: Option<ModelInfo>,
    outcomes: Vec<Outcome>,
    /// Events waiting for their service's fit, by the id of their [`Outcome::Waiting`].
    waiting: HashMap<u64, Waiting>,
    /// Per service being fitted, where the event that completed its training set came from:
    /// its output is the model, so it is not marked processed before the model is saved.
    fitting_from: HashMap<String, (i32, i64)>,
}

/// An event waiting for its service's fit, with where it came from.
struct Waiting {
    event: Event,
    partition: i32,
    offset: i64,
}

/// The thread fitting new services' models ([`Pipeline::fit_in_background`]).
struct Fitter {
    jobs: mpsc::Sender<(usize, FitJob)>,
    done: mpsc::Receiver<(usize, FitDone)>,
    /// Fits handed to the thread and not yet installed.
    running: usize,
    /// Fits received by [`Pipeline::wait_for_fits`] and not yet installed.
    received: Vec<(usize, FitDone)>,
}

/// Per-model engines plus their telemetry.
pub struct Pipeline {
    runners: Vec<Runner>,
    /// Services per model with their own `service` label; the rest share `_other`.
    max_service_series: usize,
    /// Seconds `detector_service_anomalous` stays 1 after an alarm starts.
    anomalous_hold: f64,
    /// Brings an evicted service's saved state back (`detect`); see [`Pipeline::set_restore`].
    restore: Option<Restore>,
    metrics: Arc<Metrics>,
    live: Arc<Live>,
    /// Fits new services' models off the scoring thread, once asked to.
    fitter: Option<Fitter>,
    events: Vec<Event>,
    /// The events of the last batch, parsed into again ([`Event::parse_reusing`]): a stream
    /// is parsed without allocating.
    spare: Vec<Event>,
    index: Vec<usize>,
    dead: Vec<bool>,
}

/// Looks up the saved state of a service that is not in memory: a model file holding it.
pub type Restore = Box<dyn FnMut(ModelKind, &str) -> Option<ModelFile> + Send>;

/// Events waiting for fits, at most: beyond it the next batch waits for the running fits
/// (a waiting event takes a few hundred bytes).
const MAX_WAITING: usize = 100_000;

/// Default of `--max-service-series`.
pub const MAX_SERVICE_SERIES: usize = 200;

impl Pipeline {
    pub fn new(configs: Vec<EngineConfig>, metrics: Arc<Metrics>, live: Arc<Live>) -> Self {
        let runners = configs
            .into_iter()
            .map(|cfg| {
                let kind = cfg.detector.kind;
                let other = ModelService {
                    model: kind.name().to_string(),
                    service: OTHER_SERVICES.to_string(),
                };
                Runner {
                    kind,
                    handles: ModelHandles::new(&metrics, kind.name()),
                    engine: Engine::new(cfg),
                    confusion: Confusion::default(),
                    services: HashMap::new(),
                    other: (
                        metrics.events.get_or_create_owned(&other),
                        metrics.anomalies.get_or_create_owned(&other),
                    ),
                    info: None,
                    outcomes: Vec::new(),
                    alarm_at: HashMap::new(),
                    waiting: HashMap::new(),
                    fitting_from: HashMap::new(),
                }
            })
            .collect();
        Pipeline {
            max_service_series: MAX_SERVICE_SERIES,
            anomalous_hold: 0.0,
            restore: None,
            runners,
            metrics,
            live,
            fitter: None,
            events: Vec::new(),
            spare: Vec::new(),
            index: Vec::new(),
            dead: Vec::new(),
        }
    }

    /// From now on, new services' models are fitted on a thread of their own (`kanary-fit`):
    /// a service's events wait while its model is fitted, and are scored (and their outputs
    /// returned) by the first batch after the fit is done (an empty batch will do), while
    /// other services' events go on. Without it, fits run inside [`Pipeline::process`].
    pub fn fit_in_background(&mut self) -> std::io::Result<()> {
        if self.fitter.is_some() {
            return Ok(());
        }
        let (jobs, jobs_rx) = mpsc::channel::<(usize, FitJob)>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("kanary-fit".into())
            .spawn(move || {
                // Ends when the pipeline (the jobs' sender) is dropped.
                for (ri, job) in jobs_rx {
                    if done_tx.send((ri, job.run())).is_err() {
                        break;
                    }
                }
            })?;
        for r in &mut self.runners {
            r.engine.set_background_fits(true);
        }
        self.fitter = Some(Fitter {
            jobs,
            done,
            running: 0,
            received: Vec::new(),
        });
        Ok(())
    }

    /// Fits running or done and not yet installed (their services' events wait).
    pub fn fits_running(&self) -> usize {
        self.fitter.as_ref().map_or(0, |f| f.running)
    }

    /// Waits up to `timeout` for every running fit to finish (the next batch installs them).
    pub fn wait_for_fits(&mut self, timeout: Duration) {
        let Some(f) = &mut self.fitter else { return };
        let deadline = std::time::Instant::now() + timeout;
        while f.received.len() < f.running {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match f.done.recv_timeout(left) {
                Ok(d) => f.received.push(d),
                Err(_) => break,
            }
        }
    }

    /// Per partition, the offset of its first event waiting for a fit: what may be marked
    /// processed there stops before it.
    pub fn waiting_from(&self) -> BTreeMap<i32, i64> {
        let mut first = BTreeMap::new();
        for r in &self.runners {
            let waiting = r.waiting.values().map(|w| (w.partition, w.offset));
            for (p, at) in waiting.chain(r.fitting_from.values().copied()) {
                let o = first.entry(p).or_insert(at);
                *o = (*o).min(at);
            }
        }
        first
    }

    /// Installs the fits that are done and emits the outputs of the events that waited for
    /// them into `out`.
    fn install_fits(&mut self, now: f64, out: &mut BatchOutput) {
        let Some(f) = &mut self.fitter else { return };
        let mut done = std::mem::take(&mut f.received);
        while done.len() < f.running {
            match f.done.try_recv() {
                Ok(d) => done.push(d),
                Err(mpsc::TryRecvError::Empty) => break,
                // Its events would wait for good: the scoring stage fails instead (and the
                // process exits non-zero), as a fit that panicked on it did.
                Err(mpsc::TryRecvError::Disconnected) => {
                    panic!("the fitting thread stopped (a fit panicked)")
                }
            }
        }
        f.running -= done.len();
        for (ri, d) in done {
            self.runners[ri].fitting_from.remove(d.service());
            let Some(fin) = self.runners[ri].engine.finish_fit(d) else {
                continue;
            };
            let r = &mut self.runners[ri];
            match &fin.result {
                Ok(()) => {
                    let fitted = [(ri, fin.service.clone())];
                    out.new_models.push((ri, fin.service.clone()));
                    if !out.fitted.contains(&ri) {
                        out.fitted.push(ri);
                    }
                    self.after_fit(ri, Some(&fitted));
                }
                Err(e) => {
                    tracing::warn!(model = r.kind.name(), service = %fin.service, "fitting failed: {e}");
                }
            }
            // The waiting events go through the scored path as a batch of their own.
            let r = &mut self.runners[ri];
            self.events.clear();
            self.index.clear();
            r.outcomes.clear();
            let mut msgs = Vec::with_capacity(fin.outcomes.len());
            for (id, o) in fin.outcomes {
                let Some(w) = r.waiting.remove(&id) else {
                    continue;
                };
                self.index.push(msgs.len());
                msgs.push(Message {
                    payload: &[],
                    key: None,
                    partition: w.partition,
                    offset: w.offset,
                });
                self.events.push(w.event);
                r.outcomes.push(o);
            }
            self.dead.clear();
            self.dead.resize(msgs.len(), false);
            self.emit(ri, &msgs, now, &HashMap::new(), out, true);
            self.spare.append(&mut self.events);
        }
    }

    /// Services per model with their own `service` label on `/metrics`.
    pub fn set_max_service_series(&mut self, n: usize) {
        self.max_service_series = n;
    }

    /// `detector_service_anomalous` stays 1 for `seconds` after each alarm start, so that a
    /// scrape (every 15 s or so) sees it and an alert's `for` can hold, however short the
    /// alarm is in events.
    pub fn set_anomalous_hold(&mut self, seconds: f64) {
        self.anomalous_hold = seconds.max(0.0);
    }

    /// Before each batch, services not in memory are looked up with `restore`.
    pub fn set_restore(&mut self, restore: Restore) {
        self.restore = Some(restore);
    }

    /// Services in memory of the model holding the most.
    pub fn max_services_per_model(&self) -> usize {
        self.runners
            .iter()
            .map(|r| r.engine.service_count())
            .max()
            .unwrap_or(0)
    }

    /// Services in memory, summed over models.
    pub fn service_count(&self) -> usize {
        self.runners.iter().map(|r| r.engine.service_count()).sum()
    }

    /// Estimated bytes of the services' states in memory (sampled, see
    /// [`Engine::sample_service_bytes`]).
    pub fn estimated_bytes(&self) -> f64 {
        self.runners
            .iter()
            .map(|r| {
                r.engine.sample_service_bytes(32).unwrap_or(0.0) * r.engine.service_count() as f64
            })
            .sum()
    }

    /// Evicts the least recently seen services of every model holding more than `keep`, down
    /// to `keep`. Returns what can be saved of them.
    pub fn evict_to(&mut self, keep: usize) -> Vec<(ModelKind, String, Evicted)> {
        let mut out = Vec::new();
        for r in &mut self.runners {
            let n = r.engine.service_count().saturating_sub(keep);
            if n == 0 {
                continue;
            }
            let label = ModelLabel {
                model: r.kind.name().to_string(),
            };
            for (service, saved) in r.engine.evict(n) {
                if matches!(saved, Evicted::Warming) {
                    self.metrics.warmups_dropped.get_or_create(&label).inc();
                }
                out.push((r.kind, service, saved));
            }
            self.metrics
                .services_evicted
                .get_or_create(&label)
                .inc_by(n as u64);
        }
        self.update_service_gauges();
        out
    }

    fn update_service_gauges(&self) {
        for r in &self.runners {
            self.metrics
                .services
                .get_or_create(&ModelLabel {
                    model: r.kind.name().to_string(),
                })
                .set(r.engine.service_count() as i64);
        }
    }

    /// Brings back the saved state of the batch's services that are not in memory.
    fn restore_services(&mut self) {
        let Some(restore) = &mut self.restore else {
            return;
        };
        for r in &mut self.runners {
            let mut restored = 0u64;
            for ev in &self.events {
                if r.engine.contains(&ev.service) {
                    continue;
                }
                if let Some(file) = restore(r.kind, &ev.service) {
                    match file.install_owned(&mut r.engine) {
                        Ok(_) => restored += 1,
                        Err(e) => tracing::warn!(
                            model = r.kind.name(), service = %ev.service,
                            "saved state not restored: {e}"
                        ),
                    }
                }
            }
            if restored > 0 {
                self.metrics
                    .services_restored
                    .get_or_create(&ModelLabel {
                        model: r.kind.name().to_string(),
                    })
                    .inc_by(restored);
            }
        }
    }

    pub fn kinds(&self) -> Vec<ModelKind> {
        self.runners.iter().map(|r| r.kind).collect()
    }

    /// Installs the models of a model file for the runner of its kind. Returns the number of
    /// services loaded, or `None` when no configured model has that kind.
    pub fn load(&mut self, file: &ModelFile) -> Option<usize> {
        let i = self.runners.iter().position(|r| r.kind == file.kind)?;
        let n = file.install(&mut self.runners[i].engine).ok()?;
        self.after_fit(i, None);
        Some(n)
    }

    /// A model file holding one service's fitted model, of model `i`.
    pub fn service_file(&self, i: usize, service: &str, now: f64) -> Option<ModelFile> {
        let r = &self.runners[i];
        let m = r.engine.model(service)?;
        Self::one_service_file(
            r.kind,
            service.to_string(),
            Evicted::Fitted((**m).clone()),
            now,
        )
    }

    /// A model file holding what was saved of one service of `kind` (`None` for a service
    /// still warming up: nothing to keep).
    pub fn one_service_file(
        kind: ModelKind,
        service: String,
        saved: Evicted,
        now: f64,
    ) -> Option<ModelFile> {
        let mut file = ModelFile::new(kind, now);
        match saved {
            Evicted::Fitted(m) => file.detectors.push((service, m)),
            Evicted::Stream(st) => file.streams.push((service, st)),
            Evicted::Warming => return None,
        }
        Some(file)
    }

    /// Whether any model is a streaming one (its state is saved with the offsets it reflects).
    pub fn has_streaming(&self) -> bool {
        self.runners.iter().any(|r| r.kind.is_streaming())
    }

    /// Model files of the streaming models' states, reflecting every event before `offsets`
    /// (topic, partition, next offset).
    pub fn snapshots(&self, now: f64, offsets: &[(String, i32, i64)]) -> Vec<ModelFile> {
        self.runners
            .iter()
            .filter(|r| r.kind.is_streaming())
            .map(|r| ModelFile {
                offsets: offsets.to_vec(),
                streams: r.engine.streams(),
                ..ModelFile::new(r.kind, now)
            })
            .collect()
    }

    /// Every model can score (a fitted service, or a streaming model that has seen one).
    pub fn has_models(&self) -> bool {
        self.runners.iter().all(|r| r.engine.ready())
    }

    /// Like [`has_models`](Self::has_models), counting a model whose services are saved out
    /// of memory (`saved(kind)`) as ready.
    pub fn has_models_or(&self, saved: impl Fn(ModelKind) -> bool) -> bool {
        self.runners
            .iter()
            .all(|r| r.engine.ready() || saved(r.kind))
    }

    /// Metric handles per model (for the once-a-second ticker).
    pub fn handles(&self) -> Vec<ModelHandles> {
        self.runners
            .iter()
            .map(|r| ModelHandles::new(&self.metrics, r.kind.name()))
            .collect()
    }

    /// Threshold gauges, model info and live state after model `i` gained fitted services:
    /// `fitted` names them (`None`: look at every fitted service, as after loading a file).
    fn after_fit(&mut self, i: usize, fitted: Option<&[(usize, String)]>) {
        let r = &mut self.runners[i];
        let model = r.kind.name();
        let mut latest = f64::NEG_INFINITY;
        let mut last_threshold = None;
        let mut seen = |service: &str, m: &FittedDetector| {
            // Per-service gauges only for services with their own series.
            if r.services.contains_key(service) {
                self.metrics
                    .threshold
                    .get_or_create_owned(&ModelService {
                        model: model.to_string(),
                        service: service.to_string(),
                    })
                    .set(m.threshold);
            }
            latest = latest.max(m.trained_at);
            last_threshold = Some(m.threshold);
        };
        match fitted {
            Some(list) => {
                for (_, service) in list.iter().filter(|(ri, _)| *ri == i) {
                    if let Some(m) = r.engine.model(service) {
                        seen(service, m);
                    }
                }
            }
            None => {
                for (service, m) in r.engine.models() {
                    seen(service, m);
                }
            }
        }
        if latest.is_finite() {
            let info = ModelInfo {
                model: model.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                trained_at: rfc3339(latest),
            };
            if r.info.as_ref() != Some(&info) {
                if let Some(old) = r.info.take() {
                    self.metrics.model_info.remove(&old);
                }
                self.metrics.model_info.get_or_create_owned(&info).set(1);
                r.info = Some(info);
            }
        }
        self.live.update(i, |s| {
            s.state = ModelState::Scoring;
            if s.threshold.is_none() {
                s.threshold = last_threshold;
            }
        });
    }

    /// Processes one batch, filling `out`.
    pub fn process(&mut self, msgs: &[Message<'_>], now: f64, out: &mut BatchOutput) {
        out.clear();
        if self.runners.iter().map(|r| r.waiting.len()).sum::<usize>() > MAX_WAITING {
            // Memory stays bounded when fits cannot keep up: wait for them.
            self.wait_for_fits(Duration::from_secs(60));
        }
        self.install_fits(now, out);
        self.spare.append(&mut self.events);
        self.index.clear();
        self.dead.clear();
        self.dead.resize(msgs.len(), false);
        let mut parse_invalid: HashMap<&'static str, u64> = HashMap::new();
        for (i, m) in msgs.iter().enumerate() {
            let slot = self.spare.pop().unwrap_or_else(Event::empty);
            match Event::parse_reusing(m.payload, slot) {
                Ok(ev) => {
                    self.events.push(ev);
                    self.index.push(i);
                }
                Err(e) => {
                    *parse_invalid.entry(e.reason()).or_default() += 1;
                    self.dead[i] = true;
                    out.dead_letters.push(DeadLetter {
                        index: i,
                        reason: e.reason(),
                        error: e.to_string(),
                        model: None,
                    });
                }
            }
        }
        self.restore_services();
        for ri in 0..self.runners.len() {
            let fitted = self.run_model(ri, msgs, now, &parse_invalid, out);
            if let Some(f) = &mut self.fitter {
                let r = &mut self.runners[ri];
                for job in r.engine.take_fits() {
                    // The last event of the service that was not left waiting completed the
                    // training set.
                    let last = (0..r.outcomes.len()).rev().find(|&k| {
                        self.events[k].service == job.service()
                            && matches!(r.outcomes[k], Outcome::Training { .. })
                    });
                    if let Some(k) = last {
                        let m = &msgs[self.index[k]];
                        r.fitting_from
                            .insert(job.service().to_string(), (m.partition, m.offset));
                    }
                    if f.jobs.send((ri, job)).is_ok() {
                        f.running += 1;
                    }
                }
            }
            if fitted {
                out.fitted.push(ri);
                let new_models = std::mem::take(&mut out.new_models);
                self.after_fit(ri, Some(&new_models));
                out.new_models = new_models;
            }
        }
        self.update_service_gauges();
    }

    /// Runs model `ri` over the parsed events of the batch. Returns whether a service's model
    /// was fitted.
    fn run_model(
        &mut self,
        ri: usize,
        msgs: &[Message<'_>],
        now: f64,
        parse_invalid: &HashMap<&'static str, u64>,
        out: &mut BatchOutput,
    ) -> bool {
        let r = &mut self.runners[ri];
        r.outcomes.clear();
        r.engine.process_batch(&self.events, now, &mut r.outcomes);
        self.emit(ri, msgs, now, parse_invalid, out, false)
    }

    /// Counts, records and publishes model `ri`'s outcomes of `self.events` (the messages
    /// `self.index` points to). `resumed`: the events waited for a fit and were counted
    /// when they arrived.
    fn emit(
        &mut self,
        ri: usize,
        msgs: &[Message<'_>],
        now: f64,
        parse_invalid: &HashMap<&'static str, u64>,
        out: &mut BatchOutput,
        resumed: bool,
    ) -> bool {
        let metrics = &self.metrics;
        let max_series = self.max_service_series;
        let hold = self.anomalous_hold;
        let r = &mut self.runners[ri];
        let model = r.kind.name();
        let mut invalid = parse_invalid.clone();
        let (mut valid, mut scored, mut flagged_n) = (0u64, 0u64, 0u64);
        let mut fitted = false;
        let mut training = false;
        let mut last_latency = None;
        let mut last_error: HashMap<&str, f64> = HashMap::new();
        // Per service: threshold, score and whether it is anomalous, of its last scored event.
        let mut last_threshold: HashMap<&str, (f64, f64, bool)> = HashMap::new();
        let mut recent = Vec::new();
        let mut anomalies = Vec::new();
        for (k, o) in r.outcomes.iter().enumerate() {
            let ev = &self.events[k];
            let mi = self.index[k];
            if let Outcome::Invalid(e) = o {
                *invalid.entry(e.reason()).or_default() += 1;
                if !self.dead[mi] {
                    self.dead[mi] = true;
                    out.dead_letters.push(DeadLetter {
                        index: mi,
                        reason: e.reason(),
                        error: e.to_string(),
                        model: Some(model),
                    });
                }
                continue;
            }
            if !resumed {
                valid += 1;
            }
            // Whether the service has (or now gets) its own series.
            let own_series =
                r.services.contains_key(ev.service.as_str()) || r.services.len() < max_series;
            let svc = match r.services.get(ev.service.as_str()) {
                Some(h) => h,
                None if r.services.len() >= max_series => &r.other,
                None => {
                    let l = ModelService {
                        model: model.to_string(),
                        service: ev.service.clone(),
                    };
                    let h = (
                        metrics.events.get_or_create_owned(&l),
                        metrics.anomalies.get_or_create_owned(&l),
                    );
                    r.services.entry(ev.service.clone()).or_insert(h)
                }
            };
            if !resumed {
                svc.0.inc();
            }
            match o {
                Outcome::Invalid(_) => unreachable!("handled above"),
                Outcome::Waiting { id } => {
                    training = true;
                    let m = &msgs[mi];
                    r.waiting.insert(
                        *id,
                        Waiting {
                            event: ev.clone(),
                            partition: m.partition,
                            offset: m.offset,
                        },
                    );
                }
                Outcome::Training { fitted: f, error } => {
                    training = true;
                    fitted |= *f;
                    if *f {
                        out.new_models.push((ri, ev.service.clone()));
                    }
                    if let Some(e) = error {
                        tracing::warn!(model, service = %ev.service, "fitting failed: {e}");
                    }
                }
                Outcome::Scored(s) => {
                    scored += 1;
                    let latency = (now - ev.ts).max(0.0);
                    last_latency = Some(latency);
                    r.handles.event_latency.observe(latency);
                    r.handles.score.observe(s.score);
                    if r.kind.spec().reconstruction_error {
                        last_error.insert(ev.service.as_str(), s.score);
                    }
                    // Anomalous: flagged, or the score still at or above the threshold (codev's held
                    // episode score stays there through an incident, past its alarm's last page).
                    last_threshold.insert(
                        ev.service.as_str(),
                        (s.threshold, s.score, s.flagged || s.score >= s.threshold),
                    );
                    if let Some(l) = ev.label {
                        r.confusion.record(s.flagged, l);
                    }
                    recent.push(ScorePoint {
                        ts: ev.ts,
                        score: s.score,
                        threshold: s.threshold,
                        flagged: s.flagged,
                        label: ev.label.map(u8::from),
                    });
                    // One record per alarm: a model that holds an alarm on flags every event
                    // of it but starts it once.
                    if s.alarm_start {
                        if own_series {
                            r.alarm_at.insert(ev.service.clone(), now);
                        }
                        flagged_n += 1;
                        svc.1.inc();
                        let m = &msgs[mi];
                        out.anomalies.push(AnomalyRecord {
                            service: ev.service.clone(),
                            json: {
                                let mut json = String::with_capacity(256);
                                write_scored(
                                    &mut json,
                                    ev,
                                    model,
                                    s,
                                    Shape::Anomaly {
                                        detected_at: now,
                                        partition: m.partition,
                                        offset: m.offset,
                                    },
                                );
                                json
                            },
                        });
                        anomalies.push(AnomalyView {
                            ts: ev.ts,
                            service: ev.service.clone(),
                            score: s.score,
                            threshold: s.threshold,
                            label: ev.label.map(u8::from),
                            contributions: s
                                .features
                                .iter()
                                .zip(&s.contributions)
                                .map(|(f, c)| (f.clone(), serde_json::json!(c)))
                                .collect(),
                        });
                    }
                }
            }
        }
        for (reason, n) in &invalid {
            metrics
                .invalid
                .get_or_create_owned(&ModelReason {
                    model: model.to_string(),
                    reason: reason.to_string(),
                })
                .inc_by(*n);
        }
        // Per-service gauges only for services with their own series.
        last_error.retain(|s, _| r.services.contains_key(*s));
        last_threshold.retain(|s, _| r.services.contains_key(*s));
        for (service, e) in &last_error {
            metrics
                .reconstruction_error
                .get_or_create_owned(&ModelService {
                    model: model.to_string(),
                    service: service.to_string(),
                })
                .set(*e);
        }
        r.alarm_at.retain(|s, _| r.services.contains_key(s));
        for (service, (t, score, anomalous)) in &last_threshold {
            let held = r.alarm_at.get(*service).is_some_and(|at| now - at < hold);
            let anomalous = *anomalous || held;
            let l = ModelService {
                model: model.to_string(),
                service: service.to_string(),
            };
            metrics.threshold.get_or_create_owned(&l).set(*t);
            metrics.service_score.get_or_create_owned(&l).set(*score);
            metrics
                .service_anomalous
                .get_or_create_owned(&l)
                .set(i64::from(anomalous));
        }
        if r.kind.is_streaming() && scored > 0 && r.info.is_none() {
            // A streaming model exists from its first scored event.
            let info = ModelInfo {
                model: model.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                trained_at: rfc3339(now),
            };
            metrics.model_info.get_or_create_owned(&info).set(1);
            r.info = Some(info);
        }
        if let Some(l) = last_latency {
            r.handles.latency.set(l);
        }
        let c = r.confusion;
        // Counters move by the batch's differences from what was recorded so far.
        let record = |counter: &Counter, total: u64| {
            let have = counter.get();
            if total > have {
                counter.inc_by(total - have);
            }
        };
        record(&r.handles.tp, c.tp);
        record(&r.handles.fp, c.fp);
        record(&r.handles.fn_, c.fn_);
        record(&r.handles.tn, c.tn);
        if let Some(p) = c.precision() {
            r.handles.precision.set(p);
        }
        if let Some(v) = c.recall() {
            r.handles.recall.set(v);
        }
        if let Some(f) = c.f1() {
            r.handles.f1.set(f);
        }
        let n_invalid: u64 = invalid.values().sum();
        self.live.update(ri, |s| {
            s.events += valid;
            s.scored += scored;
            s.anomalies += flagged_n;
            s.invalid += n_invalid;
            if let Some(l) = last_latency {
                s.latency_seconds = Some(l);
            }
            if training && s.state == ModelState::Waiting {
                s.state = ModelState::WarmingUp;
            }
            if scored > 0 {
                s.state = ModelState::Scoring;
            }
            if let Some(p) = recent.last() {
                s.threshold = Some(p.threshold);
            }
            s.set_confusion(&c);
            let skip = recent.len().saturating_sub(crate::live::RECENT_SCORES);
            for p in recent.into_iter().skip(skip) {
                s.push_score(p);
            }
            for a in anomalies {
                s.push_anomaly(a);
            }
        });
        fitted
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn rfc3339(ts: f64) -> String {
    let secs = ts.floor() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kanary_core::detector::DetectorConfig;
    use kanary_core::simulate::{DEFAULT_START_TS, Scenario, Simulator};

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_732_492_800.5), "2024-11-25T00:00:00Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00Z");
    }

    /// Messages of `payloads` at consecutive offsets from `first` on `partition`.
    fn messages(payloads: &[String], partition: i32, first: i64) -> Vec<Message<'_>> {
        payloads
            .iter()
            .enumerate()
            .map(|(i, s)| Message {
                payload: s.as_bytes(),
                key: None,
                partition,
                offset: first + i as i64,
            })
            .collect()
    }

    fn pipeline(models: &[ModelKind], train: usize) -> (Pipeline, Arc<Metrics>) {
        let names: Vec<&str> = models.iter().map(|m| m.name()).collect();
        let metrics = Metrics::new(&names);
        let live = Arc::new(Live::new("test", &names));
        let cfgs = models
            .iter()
            .map(|&k| {
                let mut c = EngineConfig::new(DetectorConfig::new(k));
                c.train_events = train;
                c
            })
            .collect();
        (Pipeline::new(cfgs, metrics.clone(), live), metrics)
    }

    #[test]
    fn bad_input_is_counted_and_dead_lettered_once() {
        let (mut p, metrics) = pipeline(
            &[
                ModelKind::named("zscore").unwrap(),
                ModelKind::named("if").unwrap(),
            ],
            50,
        );
        let mut payloads: Vec<String> = Simulator::new(Scenario::Seed, 1, DEFAULT_START_TS)
            .take(100)
            .map(|e| e.to_json())
            .collect();
        payloads.push("garbage".into());
        payloads.push(r#"{"ts": 1, "latency": 1, "cpu": 2}"#.into()); // missing memory
        let msgs = messages(&payloads, 0, 0);
        let mut out = BatchOutput::default();
        p.process(&msgs, 2e9, &mut out);
        assert_eq!(out.dead_letters.len(), 2);
        assert_eq!(out.dead_letters[0].reason, "not_json");
        assert_eq!(out.dead_letters[1].reason, "missing_feature");
        assert_eq!(out.fitted, vec![0, 1]);
        let text = metrics.encode();
        assert!(
            text.contains(
                "detector_invalid_events_total{model=\"if\",reason=\"missing_feature\"} 1"
            )
        );
        assert!(
            text.contains("detector_invalid_events_total{model=\"zscore\",reason=\"not_json\"} 1")
        );
        assert!(text.contains("detector_events_total{model=\"if\",service=\"default\"} 100"));
        assert!(p.has_models());
    }

    #[test]
    fn a_service_fitted_in_the_background_publishes_its_waiting_events_once_the_fit_is_in() {
        let (mut p, metrics) = pipeline(&[ModelKind::named("zscore").unwrap()], 100);
        p.fit_in_background().unwrap();
        let mut events: Vec<Event> = Simulator::new(Scenario::Seed, 2, DEFAULT_START_TS)
            .take(110)
            .collect();
        // An anomaly among the events after the training set.
        events[105] = Event::new(DEFAULT_START_TS + 20.0, "default")
            .with_field("latency", 100.0)
            .with_field("cpu", 99.0)
            .with_field("memory", 500.0);
        let payloads: Vec<String> = events.iter().map(|e| e.to_json()).collect();
        let msgs = messages(&payloads, 1, 500);
        let mut out = BatchOutput::default();
        p.process(&msgs, DEFAULT_START_TS + 21.0, &mut out);
        // Inline, the events after the 100th would be scored in this batch; here they wait
        // for the fit, and the partition's offset to mark processed stops at the first.
        assert!(out.anomalies.is_empty() && out.new_models.is_empty());
        assert_eq!(p.fits_running(), 1);
        // (From the event that completed the training set: its output is the model.)
        assert_eq!(p.waiting_from(), BTreeMap::from([(1, 599)]));
        p.wait_for_fits(Duration::from_secs(30));
        p.process(&[], DEFAULT_START_TS + 22.0, &mut out);
        assert_eq!(p.fits_running(), 0);
        assert!(p.waiting_from().is_empty());
        assert_eq!(out.new_models, vec![(0, "default".to_string())]);
        assert_eq!(out.fitted, vec![0]);
        assert_eq!(out.anomalies.len(), 1, "{:?}", out.anomalies);
        let v: serde_json::Value = serde_json::from_str(&out.anomalies[0].json).unwrap();
        assert_eq!(
            (v["partition"].clone(), v["offset"].clone()),
            (1.into(), 605.into())
        );
        let text = metrics.encode();
        // Counted once, when they arrived; scored once, after the fit.
        assert!(text.contains("detector_events_total{model=\"zscore\",service=\"default\"} 110"));
        assert!(text.contains("detector_anomalies_total{model=\"zscore\",service=\"default\"} 1"));
        // Later events are scored as they come.
        let more: Vec<String> = Simulator::new(Scenario::Seed, 3, DEFAULT_START_TS + 30.0)
            .take(5)
            .map(|e| e.to_json())
            .collect();
        p.process(&messages(&more, 1, 610), DEFAULT_START_TS + 40.0, &mut out);
        assert_eq!(p.fits_running(), 0);
        assert!(
            metrics
                .encode()
                .contains("detector_events_total{model=\"zscore\",service=\"default\"} 115")
        );
    }

    #[test]
    #[should_panic(expected = "the fitting thread stopped")]
    fn a_fitting_thread_that_died_fails_the_batch_instead_of_leaving_events_waiting() {
        let (mut p, _) = pipeline(&[ModelKind::named("zscore").unwrap()], 100);
        p.fit_in_background().unwrap();
        // A fit was handed out, and the thread that would return it is gone.
        let f = p.fitter.as_mut().unwrap();
        let (gone, done) = mpsc::channel();
        drop(gone);
        f.done = done;
        f.running = 1;
        p.process(&[], DEFAULT_START_TS, &mut BatchOutput::default());
    }

    #[test]
    fn anomaly_records_follow_the_schema() {
        let (mut p, _) = pipeline(&[ModelKind::named("zscore").unwrap()], 100);
        let mut events: Vec<Event> = Simulator::new(Scenario::Seed, 2, DEFAULT_START_TS)
            .take(100)
            .collect();
        let mut odd = Event::new(DEFAULT_START_TS + 20.0, "default")
            .with_field("latency", 100.0)
            .with_field("cpu", 99.0)
            .with_field("memory", 500.0);
        odd.label = Some(true);
        events.push(odd);
        let payloads: Vec<String> = events.iter().map(|e| e.to_json()).collect();
        let msgs = messages(&payloads, 2, 1000);
        let mut out = BatchOutput::default();
        p.process(&msgs, DEFAULT_START_TS + 21.0, &mut out);
        assert_eq!(out.anomalies.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&out.anomalies[0].json).unwrap();
        for key in [
            "ts",
            "detected_at",
            "service",
            "model",
            "score",
            "threshold",
            "features",
            "contributions",
            "labels",
            "label",
            "partition",
            "offset",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["model"], "zscore");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 1100);
        assert_eq!(v["features"]["cpu"], 99.0);
        assert_eq!(v["label"], 1);
        let c = v["contributions"].as_object().unwrap();
        let top = c
            .iter()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .unwrap();
        assert_eq!(top.0, "cpu");
    }

    /// `detector_service_anomalous{service}` after one batch at wall time `now`.
    fn anomalous(metrics: &Metrics, service: &str) -> String {
        let text = metrics.encode();
        let prefix =
            format!("detector_service_anomalous{{model=\"zscore\",service=\"{service}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or("missing")
            .to_string()
    }

    #[test]
    fn the_anomalous_gauge_holds_for_the_hold_after_an_alarm_starts_and_then_clears() {
        let (mut p, metrics) = pipeline(&[ModelKind::named("zscore").unwrap()], 100);
        p.set_anomalous_hold(60.0);
        let mut sim = Simulator::new(Scenario::Seed, 3, DEFAULT_START_TS);
        let mut batch = |events: Vec<Event>, now: f64| {
            let payloads: Vec<String> = events.iter().map(|e| e.to_json()).collect();
            let msgs = messages(&payloads, 0, 0);
            let mut out = BatchOutput::default();
            p.process(&msgs, now, &mut out);
            out.anomalies.len()
        };
        let t0 = DEFAULT_START_TS + 100.0;
        // Training, then one wild event: an alarm starts.
        batch((&mut sim).take(101).collect(), t0);
        let odd = Event::new(t0, "default")
            .with_field("latency", 900.0)
            .with_field("cpu", 99.0)
            .with_field("memory", 5000.0);
        assert_eq!(batch(vec![odd], t0), 1);
        assert_eq!(anomalous(&metrics, "default"), "1");
        // Ordinary events 30 s later: still within the hold.
        let normal = |sim: &mut Simulator| {
            sim.by_ref()
                .filter(|e| e.label != Some(true))
                .take(5)
                .collect::<Vec<_>>()
        };
        batch(normal(&mut sim), t0 + 30.0);
        assert_eq!(anomalous(&metrics, "default"), "1");
        // After the hold, the next ordinary events clear it.
        batch(normal(&mut sim), t0 + 61.0);
        assert_eq!(anomalous(&metrics, "default"), "0");
    }
}
