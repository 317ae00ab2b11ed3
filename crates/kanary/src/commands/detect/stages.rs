//! The three stages of `kanary detect`: poll, score, commit (see the parent module).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kanary_core::persist::ModelFile;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::consumer::{KanaryConsumer, Shared};
use super::store::ServiceStore;
use super::{SHUTDOWN_GRACE, Settings, state_file};
use crate::kafka::KafkaCtx;
use crate::modelio;
use crate::pipeline::{BatchOutput, Message, Pipeline};

/// The producer of anomaly records and dead letters.
pub(super) type Producer = rdkafka::producer::FutureProducer<KafkaCtx>;

/// Messages of one poll batch, as owned bytes.
#[derive(Default)]
pub(super) struct Batch {
    data: Vec<u8>,
    meta: Vec<Meta>,
}

pub(super) struct Meta {
    payload: Range<usize>,
    key: Option<Range<usize>>,
    partition: i32,
    offset: i64,
}

/// A batch whose outputs are on their way.
pub(super) struct Pending {
    deliveries: Vec<DeliveryFuture>,
    /// Next offset to consume per partition, stored once the deliveries are done (empty:
    /// store nothing, as between two snapshots of streaming models).
    offsets: Vec<(i32, i64)>,
    /// Streaming models' states reflecting every event before `offsets`: saved before the
    /// offsets are stored and committed.
    snapshot: Option<Vec<ModelFile>>,
    /// Events whose offsets this stores.
    events: usize,
    /// A batch of the poll stage (counted in `inflight`), not the final snapshot.
    polled: bool,
    /// The batch handed service states to the store (new models, evictions): they are
    /// written before its offsets are stored.
    wait_for_store: bool,
}

/// Stage 1: poll the consumer into batches until shutdown. A batch is whatever is ready once
/// the first message arrives, up to `batch_size`: small at low rates (low latency), large at
/// high rates (throughput).
pub(super) fn poll_loop(
    consumer: &KanaryConsumer,
    shared: &Shared,
    batch_size: usize,
    tx: std::sync::mpsc::SyncSender<Batch>,
) -> Result<()> {
    let mut batch = Batch::default();
    let mut lag_at = Instant::now();
    let mut lag_shown = Vec::new();
    while !shared.shutdown.is_triggered() {
        if lag_at.elapsed() >= Duration::from_secs(1) {
            shared.update_lag(consumer, &mut lag_shown);
            lag_at = Instant::now();
        }
        let timeout = if batch.meta.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        let got = match consumer.poll(timeout) {
            Some(Ok(m)) => {
                let start = batch.data.len();
                batch
                    .data
                    .extend_from_slice(m.payload().unwrap_or_default());
                let payload = start..batch.data.len();
                let key = m.key().map(|k| {
                    let s = batch.data.len();
                    batch.data.extend_from_slice(k);
                    s..batch.data.len()
                });
                batch.meta.push(Meta {
                    payload,
                    key,
                    partition: m.partition(),
                    offset: m.offset(),
                });
                true
            }
            Some(Err(e)) => {
                shared.health.on_error(&e, "");
                false
            }
            None => false,
        };
        if !batch.meta.is_empty() && (!got || batch.meta.len() >= batch_size) {
            shared.inflight.fetch_add(1, Ordering::AcqRel);
            if tx.send(std::mem::take(&mut batch)).is_err() {
                shared.inflight.fetch_sub(1, Ordering::AcqRel);
                bail!("scoring stage stopped");
            }
        }
    }
    Ok(())
}

/// Where the scoring stage's outputs go: records to Kafka, service states to their files.
pub(super) struct Sinks<'a> {
    pub producer: &'a Producer,
    pub store: &'a ServiceStore,
}

/// Stage 2: score batches and hand their outputs to the producer.
///
/// With streaming models, offsets are stored only with a snapshot of their states (every
/// `--snapshot-every` seconds and at shutdown), so a restart resumes a state that reflects
/// exactly the events before the committed offsets.
pub(super) fn score_loop(
    mut pipeline: Pipeline,
    floor: BTreeMap<i32, i64>,
    rx: std::sync::mpsc::Receiver<Batch>,
    tx: mpsc::Sender<Pending>,
    sinks: Sinks<'_>,
    shared: &Shared,
    s: &Settings,
) -> Result<()> {
    let Sinks { producer, store } = sinks;
    let mut out = BatchOutput::default();
    let mut budget = Budget::new(s);
    let mut stats = StageStats::default();
    let streaming = pipeline.has_streaming();
    // Next offset per partition over every batch so far, and events since the last snapshot.
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut unsaved = 0usize;
    let mut last_snapshot = Instant::now();
    let mut skipped = 0u64;
    // New services' models are fitted on a thread of their own; their events wait meanwhile.
    pipeline
        .fit_in_background()
        .context("cannot start the fitting thread")?;
    // Partitions whose stored offset stopped before an event waiting for a fit, with the
    // offset to store once nothing there waits.
    let mut held: BTreeMap<i32, i64> = BTreeMap::new();
    let mut closing = false;
    loop {
        let waited = Instant::now();
        let fitting = pipeline.fits_running() > 0;
        // Wake at least once a second while idle: to notice a failed state write, and (with
        // streaming models) to save what is unsaved once the stream goes quiet, so that its
        // offsets get committed; every few milliseconds while fits run, to install them and
        // publish what waited for them.
        let wake = if fitting {
            FIT_POLL
        } else {
            s.snapshot_every.min(Duration::from_secs(1))
        };
        let (batch, polled) = match rx.recv_timeout(wake) {
            Ok(b) => (b, true),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some(e) = store.failure() {
                    bail!("{e}");
                }
                if fitting {
                    // An empty batch installs the fits that are done.
                    (Batch::default(), false)
                } else {
                    if streaming && unsaved > 0 && last_snapshot.elapsed() >= s.snapshot_every {
                        let idle = with_snapshot(
                            Vec::new(),
                            false,
                            std::mem::take(&mut unsaved),
                            &pipeline,
                            &next,
                            &s.topic,
                        );
                        last_snapshot = Instant::now();
                        if tx.blocking_send(idle).is_err() {
                            bail!("commit stage stopped");
                        }
                    }
                    continue;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if fitting && !closing {
                    // Shutdown: let running fits finish, and publish what waited for them.
                    closing = true;
                    pipeline.wait_for_fits(FIT_GRACE);
                    (Batch::default(), false)
                } else {
                    break;
                }
            }
        };
        stats.idle += waited.elapsed();
        let busy = Instant::now();
        let msgs: Vec<Message> = Vec::from_iter(
            batch
                .meta
                .iter()
                .filter(|m| floor.get(&m.partition).is_none_or(|&f| m.offset >= f))
                .map(|m| Message {
                    payload: &batch.data[m.payload.clone()],
                    key: m.key.clone().map(|k| &batch.data[k]),
                    partition: m.partition,
                    offset: m.offset,
                }),
        );
        if msgs.len() < batch.meta.len() {
            skipped += (batch.meta.len() - msgs.len()) as u64;
            tracing::info!(
                skipped,
                "skipped events the resumed streaming state already reflects"
            );
        }
        let now = modelio::now();
        pipeline.process(&msgs, now, &mut out);
        // New models are saved per service in the background (a restart, or an eviction
        // and return, then resumes them instead of refitting).
        let mut handed = false;
        for (i, service) in &out.new_models {
            if let Some(file) = pipeline.service_file(*i, service, now) {
                store.put(file.kind, service.clone(), file);
                handed = true;
            }
        }
        if let Some(keep) = budget.over(&pipeline) {
            for (kind, service, saved) in pipeline.evict_to(keep) {
                if let Some(file) = Pipeline::one_service_file(kind, service.clone(), saved, now) {
                    store.put(kind, service, file);
                    handed = true;
                }
            }
        }
        if let Some(e) = store.failure() {
            bail!("{e}");
        }
        shared.readiness.models_ready.store(
            pipeline.has_models_or(|k| store.count(k) > 0),
            Ordering::Release,
        );
        let mut deliveries = Vec::with_capacity(out.anomalies.len() + out.dead_letters.len());
        for a in &out.anomalies {
            let rec = FutureRecord::to(&s.anomalies_topic)
                .key(a.service.as_str())
                .payload(a.json.as_str());
            deliveries.push(send(producer, rec));
        }
        for d in &out.dead_letters {
            let m = &msgs[d.index];
            let source = format!("{}/{}/{}", s.topic, m.partition, m.offset);
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: "kanary-reason",
                    value: Some(d.reason),
                })
                .insert(Header {
                    key: "kanary-error",
                    value: Some(d.error.as_str()),
                })
                .insert(Header {
                    key: "kanary-source",
                    value: Some(source.as_str()),
                });
            if let Some(model) = d.model {
                headers = headers.insert(Header {
                    key: "kanary-model",
                    value: Some(model),
                });
            }
            let mut rec = FutureRecord::to(&s.dlq_topic)
                .payload(m.payload)
                .headers(headers);
            if let Some(k) = m.key {
                rec = rec.key(k);
            }
            deliveries.push(send(producer, rec));
        }
        let mut offsets: Vec<(i32, i64)> = Vec::new();
        for m in &batch.meta {
            match offsets.iter_mut().find(|(p, _)| *p == m.partition) {
                Some((_, o)) => *o = (*o).max(m.offset + 1),
                None => offsets.push((m.partition, m.offset + 1)),
            }
            let n = next.entry(m.partition).or_insert(0);
            *n = (*n).max(m.offset + 1);
        }
        let pending = if !streaming {
            hold_back(&mut offsets, &mut held, &pipeline.waiting_from());
            Pending {
                deliveries,
                offsets,
                snapshot: None,
                events: batch.meta.len(),
                polled,
                wait_for_store: handed,
            }
        } else {
            unsaved += batch.meta.len();
            // A snapshot's offsets are those its states reflect: none is taken while events
            // wait for a fit (a fitted model next to a streaming one), as they would be
            // skipped after a restart from it.
            if last_snapshot.elapsed() >= s.snapshot_every && pipeline.fits_running() == 0 {
                last_snapshot = Instant::now();
                let events = std::mem::take(&mut unsaved);
                with_snapshot(deliveries, polled, events, &pipeline, &next, &s.topic)
            } else {
                // Between snapshots nothing is stored.
                Pending {
                    deliveries,
                    offsets: Vec::new(),
                    snapshot: None,
                    events: 0,
                    polled,
                    wait_for_store: false,
                }
            }
        };
        stats.busy += busy.elapsed();
        let blocked = Instant::now();
        if tx.blocking_send(pending).is_err() {
            bail!("commit stage stopped");
        }
        stats.blocked += blocked.elapsed();
        stats.batches += 1;
        stats.events += batch.meta.len() as u64;
        stats.maybe_log();
        if shared.fatal.load(Ordering::Acquire) {
            bail!("a delivery failed for good");
        }
    }
    // (Not while events still wait for a fit that did not finish in time: a restart resumes
    // the snapshot before and processes them again.)
    if streaming
        && unsaved > 0
        && !shared.fatal.load(Ordering::Acquire)
        && pipeline.fits_running() == 0
    {
        // Shutdown: one last snapshot, after every batch before it.
        let last = with_snapshot(Vec::new(), false, unsaved, &pipeline, &next, &s.topic);
        if tx.blocking_send(last).is_err() {
            bail!("commit stage stopped before the final snapshot");
        }
    }
    Ok(())
}

/// How often the scoring stage looks for finished fits while the stream is idle.
const FIT_POLL: Duration = Duration::from_millis(5);

/// How long a shutdown waits for running fits (their services' events then get published).
const FIT_GRACE: Duration = Duration::from_secs(2);

/// Stops each partition's offset to store (`offsets`: the next offset per partition) at its
/// first event waiting for a fit (`waiting_from`), so that a restart processes it again.
/// `held` keeps the offsets held back; they are stored with a later batch, once nothing
/// there waits.
fn hold_back(
    offsets: &mut Vec<(i32, i64)>,
    held: &mut BTreeMap<i32, i64>,
    waiting_from: &BTreeMap<i32, i64>,
) {
    for (p, o) in std::mem::take(held) {
        match offsets.iter_mut().find(|(q, _)| *q == p) {
            Some((_, x)) => *x = (*x).max(o),
            None => offsets.push((p, o)),
        }
    }
    for (p, o) in offsets.iter_mut() {
        if let Some(&w) = waiting_from.get(p)
            && w < *o
        {
            held.insert(*p, *o);
            *o = w;
        }
    }
}

/// A commit-stage entry that saves the streaming models' states and then stores every offset
/// they reflect (`next`: the next offset per partition).
fn with_snapshot(
    deliveries: Vec<DeliveryFuture>,
    polled: bool,
    events: usize,
    pipeline: &Pipeline,
    next: &BTreeMap<i32, i64>,
    topic: &str,
) -> Pending {
    let offsets: Vec<(String, i32, i64)> = next
        .iter()
        .map(|(&p, &o)| (topic.to_string(), p, o))
        .collect();
    Pending {
        deliveries,
        offsets: next.iter().map(|(&p, &o)| (p, o)).collect(),
        snapshot: Some(pipeline.snapshots(modelio::now(), &offsets)),
        events,
        polled,
        wait_for_store: false,
    }
}

/// `--max-services` and `--memory-budget`: how many services per model may stay in memory.
struct Budget {
    max_services: Option<usize>,
    /// Bytes for the services' states, per model.
    state_bytes: Option<f64>,
    /// Mean bytes per service, re-estimated every few seconds.
    per_service: f64,
    /// How much the process' resident memory says the estimate falls short (>= 1).
    correction: f64,
    budget: Option<f64>,
    measured: Option<Instant>,
}

impl Budget {
    /// The share of `--memory-budget` the services' states may take; the rest is for a
    /// snapshot (the states' saved bytes, about half their size in memory, until written),
    /// librdkafka's buffers, batches and the allocator.
    const STATE_SHARE: f64 = 0.45;

    fn new(s: &Settings) -> Self {
        let models = s.models.0.len().max(1) as f64;
        Budget {
            max_services: s.max_services,
            state_bytes: s
                .memory_budget
                .map(|b| b as f64 * Self::STATE_SHARE / models),
            per_service: 0.0,
            correction: 1.0,
            budget: s.memory_budget.map(|b| b as f64),
            measured: None,
        }
    }

    /// `Some(keep)` when a model holds more services than allowed: evict down to `keep`
    /// (a tenth below the limit, so evictions come in batches).
    fn over(&mut self, p: &Pipeline) -> Option<usize> {
        let mut limit = self.max_services.unwrap_or(usize::MAX);
        if let Some(bytes) = self.state_bytes {
            let n = p.service_count();
            if n > 0
                && self
                    .measured
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
            {
                // The estimate is from encoded sizes; the resident set is the truth. Above
                // 80% of the budget, the estimate is scaled up by how far over it is.
                if let (Some(rss), Some(budget)) = (resident_bytes(), self.budget)
                    && rss > 0.8 * budget
                {
                    self.correction = (self.correction * rss / (0.8 * budget)).min(64.0);
                }
                self.per_service = p.estimated_bytes() / n as f64 * self.correction;
                self.measured = Some(Instant::now());
            }
            if self.per_service > 0.0 {
                limit = limit.min((bytes / self.per_service) as usize);
            }
        }
        let limit = limit.max(1);
        let largest = p.max_services_per_model();
        (largest > limit).then(|| (limit - limit / 10).max(1))
    }
}

/// The process' resident set size (Linux; `None` elsewhere).
fn resident_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0)
}

/// Where the scoring thread's time goes, logged at debug level every 10 s.
struct StageStats {
    since: Instant,
    batches: u64,
    events: u64,
    busy: Duration,
    idle: Duration,
    blocked: Duration,
}

impl Default for StageStats {
    fn default() -> Self {
        StageStats {
            since: Instant::now(),
            batches: 0,
            events: 0,
            busy: Duration::ZERO,
            idle: Duration::ZERO,
            blocked: Duration::ZERO,
        }
    }
}

impl StageStats {
    fn maybe_log(&mut self) {
        if self.since.elapsed() < Duration::from_secs(10) {
            return;
        }
        tracing::debug!(
            batches = self.batches,
            events = self.events,
            mean_batch = self.events / self.batches.max(1),
            busy_ms = self.busy.as_millis() as u64,
            waiting_for_input_ms = self.idle.as_millis() as u64,
            blocked_on_commit_ms = self.blocked.as_millis() as u64,
            "scoring stage"
        );
        *self = StageStats::default();
    }
}

/// Queues one record, waiting while the producer's queue is full.
fn send<K, P>(producer: &Producer, mut rec: FutureRecord<'_, K, P>) -> DeliveryFuture
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send_result(rec) {
            Ok(f) => return f,
            Err((e, r)) => {
                tracing::debug!("producer queue: {e}");
                rec = r;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// What the commit stage did.
pub(super) struct Outcome {
    /// Events whose offsets were stored.
    pub committed: usize,
    /// Events whose outputs were still undelivered when the shutdown grace ran out: their
    /// offsets were not stored.
    pub abandoned: usize,
}

/// Stage 3: wait for each batch's deliveries, then store its offsets. Once a stop is asked
/// for, deliveries get [`SHUTDOWN_GRACE`]; what is still undelivered then is abandoned (its
/// offsets are not stored, so a restart reprocesses it).
pub(super) async fn commit_loop(
    mut rx: mpsc::Receiver<Pending>,
    consumer: &KanaryConsumer,
    producer: &Producer,
    shared: &Shared,
    topic: &str,
    state_dir: &Path,
    store: &ServiceStore,
) -> Outcome {
    let mut out = Outcome {
        committed: 0,
        abandoned: 0,
    };
    let grace = async {
        shared.shutdown.wait().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let mut grace = std::pin::pin!(grace);
    let mut expired = false;
    while let Some(p) = rx.recv().await {
        let mut ok = true;
        for d in p.deliveries {
            let delivered = tokio::select! {
                ok = deliver(d, producer), if !expired => ok,
                _ = &mut grace, if !expired => {
                    expired = true;
                    tracing::warn!(
                        "outputs still undelivered {} s after the stop; giving up on them \
                         (their events are reprocessed after a restart)",
                        SHUTDOWN_GRACE.as_secs()
                    );
                    false
                }
                else => false,
            };
            ok &= delivered;
        }
        if expired {
            // Nothing more is stored or saved: every later offset is reprocessed.
            out.abandoned += p.events;
            if p.polled {
                shared.inflight.fetch_sub(1, Ordering::AcqRel);
            }
            continue;
        }
        if !ok {
            // Never store offsets past an event whose output is lost: stop, and let a restart
            // reprocess from the last stored offset.
            shared.fail("an output could not be delivered to Kafka".into());
        }
        if p.wait_for_store && !shared.fatal.load(Ordering::Acquire) {
            // New models and evicted services are on disk before the offsets of the events
            // that made them are stored.
            let store = store.clone();
            let written =
                tokio::task::spawn_blocking(move || store.flush(Duration::from_secs(60))).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => shared.fail(format!("commit stage: {e}")),
                Err(e) => shared.fail(format!("commit stage: waiting for the store: {e}")),
            }
        }
        if let Some(files) = p.snapshot.filter(|_| !shared.fatal.load(Ordering::Acquire)) {
            // Save the states before their offsets are stored: a restart then finds a state
            // that reflects every event before the committed offsets.
            let dir = state_dir.to_path_buf();
            let store = store.clone();
            let saved = tokio::task::spawn_blocking(move || -> Result<usize> {
                // Services evicted before this snapshot are saved before its offsets are
                // stored, like the states it holds.
                store
                    .flush(Duration::from_secs(60))
                    .map_err(|e| anyhow::anyhow!("evicted services' states: {e}"))?;
                for file in &files {
                    let path = state_file(&dir, file.kind.name());
                    modelio::save(&path, file)
                        .with_context(|| format!("cannot save {}", path.display()))?;
                }
                Ok(files.iter().map(|f| f.streams.len()).sum())
            })
            .await;
            match saved {
                Ok(Ok(n)) => tracing::debug!(services = n, "saved streaming states"),
                Ok(Err(e)) => shared.fail(format!("commit stage: {e:#}")),
                Err(e) => shared.fail(format!("commit stage: saving streaming states: {e}")),
            }
        }
        if !shared.fatal.load(Ordering::Acquire) && !p.offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (partition, next) in &p.offsets {
                if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                    tracing::warn!("bad offset {partition}/{next}: {e}");
                }
            }
            match consumer.store_offsets(&tpl) {
                Ok(()) => out.committed += p.events,
                // The partition was revoked meanwhile: its new owner reprocesses (at least once).
                Err(e) => tracing::debug!("cannot store offsets: {e}"),
            }
        }
        if p.polled {
            shared.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }
    out
}

/// Awaits one delivery, re-sending a failed record a few times. Returns false when it is lost.
async fn deliver(d: DeliveryFuture, producer: &Producer) -> bool {
    let (mut err, mut msg) = match d.await {
        Ok(Ok(_)) => return true,
        Ok(Err((e, m))) => (e, m),
        Err(_) => {
            tracing::error!("delivery cancelled: the producer went away");
            return false;
        }
    };
    for attempt in 1..=3 {
        tracing::warn!(
            topic = msg.topic(),
            attempt,
            "delivery failed ({err}); retrying"
        );
        tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
        let mut headers = OwnedHeaders::new();
        if let Some(h) = msg.headers() {
            for i in 0..h.count() {
                let hd = h.get(i);
                headers = headers.insert(Header {
                    key: hd.key,
                    value: hd.value,
                });
            }
        }
        let mut rec = FutureRecord::to(msg.topic())
            .payload(msg.payload().unwrap_or_default())
            .headers(headers);
        if let Some(k) = msg.key() {
            rec = rec.key(k);
        }
        match producer.send(rec, Duration::from_secs(30)).await {
            Ok(_) => return true,
            Err((e, m)) => {
                err = e;
                msg = m;
            }
        }
    }
    tracing::error!(topic = msg.topic(), "delivery failed for good: {err}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_stop_at_an_event_waiting_for_a_fit_and_move_on_once_it_is_scored() {
        let mut held = BTreeMap::new();
        // Partition 0 has an event at 105 waiting: its offset stops there; 1 moves on.
        let mut offsets = vec![(0, 120), (1, 50)];
        hold_back(&mut offsets, &mut held, &BTreeMap::from([(0, 105)]));
        assert_eq!(offsets, vec![(0, 105), (1, 50)]);
        // A batch without partition 0 while the event still waits: nothing more stored there.
        let mut offsets = vec![(1, 60)];
        hold_back(&mut offsets, &mut held, &BTreeMap::from([(0, 105)]));
        assert_eq!(offsets, vec![(1, 60), (0, 105)]);
        // Scored: the next batch stores what was held back, even without events of its own
        // on that partition.
        let mut offsets = vec![(1, 70)];
        hold_back(&mut offsets, &mut held, &BTreeMap::new());
        assert_eq!(offsets, vec![(1, 70), (0, 120)]);
        assert!(held.is_empty());
    }
}
