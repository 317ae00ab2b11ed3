//! `kanary detect`: the detector service on Kafka.
//!
//! Three stages, connected by bounded channels (backpressure: a slow stage stops the poll):
//! 1. the poll thread drains the consumer into batches (owned bytes);
//! 2. the scoring thread runs each batch through the [`Pipeline`] and hands anomaly records and
//!    dead letters to the producer;
//! 3. the committer task waits for every delivery of a batch, then stores the batch's offsets.
//!
//! At-least-once: `enable.auto.offset.store=false`, so an offset is stored only after the
//! outputs of every event up to it are delivered and its metrics updated; librdkafka commits
//! stored offsets every second, the rebalance callback drains in-flight batches and commits
//! before partitions are given up, and shutdown drains and commits before leaving the group.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kanary_core::registry::ParamMap;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::cli::{DetectArgs, ModelList, ModelOpts};
use crate::config::FileConfig;
use crate::http::{AppState, Readiness};
use crate::live::Live;
use crate::pipeline::{BatchOutput, Message, Pipeline};
use crate::telemetry::{Metrics, ModelPartition};
use crate::{commands, kafka, modelio};
use kanary_core::persist::ModelFile;

/// Settings after merging flags, environment and the config file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub models: ModelList,
    /// The config file's `[models.MODEL]` tables.
    pub model_params: BTreeMap<String, ParamMap>,
    /// How often streaming models' states are saved (each save is also the point up to which
    /// offsets are committed).
    pub snapshot_every: Duration,
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub metrics_addr: SocketAddr,
    pub anomalies_topic: String,
    pub dlq_topic: String,
    pub model_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub train: usize,
    pub batch_size: usize,
    pub kafka_opts: Vec<String>,
}

impl Settings {
    pub fn resolve(a: &DetectArgs) -> Result<Self> {
        let file = match &a.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let models = match (&a.model, &file.model) {
            (Some(m), _) => m.clone(),
            (None, Some(s)) => s
                .parse::<ModelList>()
                .map_err(|e| anyhow::anyhow!("config file: model: {e}"))?,
            (None, None) => bail!(
                "no model given: pass --model with one of {} (or KANARY_MODEL)",
                kanary_core::registry::ModelKind::names()
            ),
        };
        let Some(brokers) = a.brokers.clone().or(file.brokers.clone()) else {
            bail!("no Kafka brokers given: pass --brokers HOST:PORT (or KANARY_BROKERS)");
        };
        let names: Vec<&str> = models.0.iter().map(|m| m.name()).collect();
        let mut kafka_opts = file.kafka_opts();
        kafka_opts.extend(a.kafka_opts.iter().flat_map(|o| kafka::split_opts(o)));
        for o in &kafka_opts {
            kafka::parse_opt(o)?;
        }
        let snapshot_every = a.snapshot_every.or(file.snapshot_every).unwrap_or(30.0);
        if !(snapshot_every > 0.0 && snapshot_every.is_finite()) {
            bail!("--snapshot-every must be a positive number of seconds");
        }
        let batch_size = a.batch_size.or(file.batch_size).unwrap_or(2000);
        if batch_size == 0 {
            bail!("--batch-size must be > 0");
        }
        Ok(Settings {
            brokers,
            topic: pick(&a.topic, &file.topic, "service-metrics"),
            group: a
                .group
                .clone()
                .or(file.group.clone())
                .unwrap_or_else(|| format!("kanary-{}", names.join("-"))),
            metrics_addr: a
                .metrics_addr
                .or(file.metrics_addr)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9898))),
            anomalies_topic: pick(&a.anomalies_topic, &file.anomalies_topic, "anomalies"),
            dlq_topic: pick(&a.dlq_topic, &file.dlq_topic, "service-metrics-dlq"),
            model_file: a.model_file.clone().or(file.model_file.clone()),
            state_dir: a
                .state_dir
                .clone()
                .or(file.state_dir.clone())
                .unwrap_or_else(|| PathBuf::from("kanary-state")),
            train: a.train.or(file.train).unwrap_or(1000),
            batch_size,
            kafka_opts,
            model_params: file.model_params()?,
            snapshot_every: Duration::from_secs_f64(snapshot_every),
            models,
        })
    }
}

fn pick(flag: &Option<String>, file: &Option<String>, default: &str) -> String {
    flag.clone()
        .or_else(|| file.clone())
        .unwrap_or_else(|| default.to_string())
}

/// State shared by the stages and the consumer's callbacks.
struct Shared {
    /// Batches handed to the scoring thread whose offsets are not stored yet.
    inflight: AtomicUsize,
    shutdown: AtomicBool,
    /// A delivery failed for good: store no further offsets, exit non-zero.
    fatal: AtomicBool,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    models: Vec<&'static str>,
    topic: String,
}

impl Shared {
    fn stop(&self) {
        self.shutdown.store(true, Ordering::Release);
    }
}

/// Consumer callbacks: drain before giving partitions up, readiness, lag from statistics.
struct Ctx(Arc<Shared>);

impl ClientContext for Ctx {
    fn stats(&self, stats: Statistics) {
        let Some(topic) = stats.topics.get(&self.0.topic) else {
            return;
        };
        for (p, part) in &topic.partitions {
            if *p < 0 {
                continue; // librdkafka's internal "unassigned" partition
            }
            // Lag of assigned partitions; before the first fetch of a partition librdkafka
            // reports -1, so count from the start of the log (0 for an empty partition).
            let lag = if !part.desired {
                None
            } else if part.consumer_lag >= 0 {
                Some(part.consumer_lag)
            } else if part.hi_offset >= 0 {
                let from = part
                    .lo_offset
                    .max(part.committed_offset)
                    .max(part.app_offset);
                Some((part.hi_offset - from).max(0))
            } else {
                None
            };
            for model in &self.0.models {
                let labels = ModelPartition {
                    model: model.to_string(),
                    topic: self.0.topic.clone(),
                    partition: p.to_string(),
                };
                match lag {
                    Some(l) => {
                        self.0
                            .metrics
                            .consumer_lag
                            .get_or_create_owned(&labels)
                            .set(l);
                    }
                    None => {
                        self.0.metrics.consumer_lag.remove(&labels);
                    }
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.0
                .readiness
                .partitions_assigned
                .store(false, Ordering::Release);
            // Finish what is in flight so its offsets are stored, then commit them: the next
            // owner of these partitions starts right after what we processed.
            let start = Instant::now();
            while self.0.inflight.load(Ordering::Acquire) > 0
                && start.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!("commit on rebalance failed: {e}"),
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?parts, "partitions assigned");
                self.0
                    .readiness
                    .partitions_assigned
                    .store(!parts.is_empty(), Ordering::Release);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!("offset commit failed: {e}"),
        }
    }
}

type KanaryConsumer = BaseConsumer<Ctx>;

/// Messages of one poll batch, as owned bytes.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    meta: Vec<Meta>,
}

struct Meta {
    payload: Range<usize>,
    key: Option<Range<usize>>,
    partition: i32,
    offset: i64,
}

/// A batch whose outputs are on their way.
struct Pending {
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
}

pub fn run(args: DetectArgs) -> Result<()> {
    let settings = Settings::resolve(&args)?;
    let rt = commands::runtime()?;
    rt.block_on(serve(settings, args.opts))
}

async fn serve(s: Settings, opts: ModelOpts) -> Result<()> {
    let models: Vec<&'static str> = s.models.0.iter().map(|m| m.name()).collect();
    let metrics = Metrics::new(&models);
    let live = Arc::new(Live::new("kanary detect", &models));
    let readiness = Arc::new(Readiness::default());
    let shared = Arc::new(Shared {
        inflight: AtomicUsize::new(0),
        shutdown: AtomicBool::new(false),
        fatal: AtomicBool::new(false),
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        models: models.clone(),
        topic: s.topic.clone(),
    });

    // Models: a model file, or those saved by an earlier run, or fit on the stream.
    let configs = s
        .models
        .0
        .iter()
        .map(|&k| opts.engine_config_with(k, s.train, &s.model_params))
        .collect::<Result<Vec<_>>>()?;
    let mut pipeline = Pipeline::new(configs, metrics.clone(), live.clone());
    std::fs::create_dir_all(&s.state_dir)
        .with_context(|| format!("cannot create state directory {}", s.state_dir.display()))?;
    if let Some(path) = &s.model_file {
        let file = modelio::load(path, None)?;
        match pipeline.load(&file) {
            Some(n) => {
                tracing::info!(path = %path.display(), services = n, "loaded {} models", file.kind)
            }
            None => bail!(
                "model file {} holds `{}` models, but --model is {}",
                path.display(),
                file.kind,
                models.join(",")
            ),
        }
    }
    // Offsets below which every event is already reflected in a resumed streaming state
    // (and its outputs delivered): such events are skipped if they come again.
    let mut floor: BTreeMap<i32, i64> = BTreeMap::new();
    for kind in pipeline.kinds() {
        let path = state_file(&s.state_dir, kind.name());
        if s.model_file.is_none() && path.exists() {
            let file = modelio::load(&path, Some(kind))?;
            let n = pipeline.load(&file).unwrap_or(0);
            if kind.is_streaming() {
                let offsets: Vec<String> = file
                    .offsets
                    .iter()
                    .filter(|(t, _, _)| *t == s.topic)
                    .map(|(_, p, o)| format!("{p}:{o}"))
                    .collect();
                for (t, p, o) in &file.offsets {
                    if *t == s.topic {
                        let f = floor.entry(*p).or_insert(*o);
                        *f = (*f).min(*o);
                    }
                }
                tracing::info!(
                    path = %path.display(), services = n, offsets = %offsets.join(","),
                    "resumed {kind} streaming state"
                );
            } else {
                tracing::info!(path = %path.display(), services = n, "resumed {kind} models");
            }
        }
    }
    readiness
        .models_ready
        .store(pipeline.has_models(), Ordering::Release);

    // Kafka clients.
    let base = kafka::client_config(&s.brokers, &s.kafka_opts)?;
    for t in [&s.anomalies_topic, &s.dlq_topic] {
        if let Err(e) = kafka::ensure_topic(&base, t, 1).await {
            tracing::warn!("{e:#} (producing will create it if the broker allows)");
        }
    }
    let mut pcfg = base.clone();
    for (k, v) in [
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
        ("queue.buffering.max.messages", "1000000"),
    ] {
        if pcfg.get(k).is_none() {
            pcfg.set(k, v);
        }
    }
    let producer: FutureProducer = pcfg.create().context("cannot create Kafka producer")?;
    let mut ccfg = base.clone();
    ccfg.set("group.id", &s.group);
    ccfg.set("enable.auto.offset.store", "false");
    for (k, v) in [
        ("enable.auto.commit", "true"),
        ("auto.commit.interval.ms", "1000"),
        ("auto.offset.reset", "earliest"),
        ("session.timeout.ms", "10000"),
        ("statistics.interval.ms", "5000"),
        ("fetch.wait.max.ms", "50"),
        // librdkafka stops fetching while its local queue holds queued.min.messages and then
        // waits fetch.queue.backoff.ms (1 s by default) before looking again: at a few
        // hundred thousand events/s the queue drains far sooner, and the scorer would starve.
        ("fetch.queue.backoff.ms", "5"),
    ] {
        if ccfg.get(k).is_none() {
            ccfg.set(k, v);
        }
    }
    let consumer: Arc<KanaryConsumer> = Arc::new(
        ccfg.create_with_context(Ctx(shared.clone()))
            .context("cannot create Kafka consumer")?,
    );
    consumer
        .subscribe(&[&s.topic])
        .with_context(|| format!("cannot subscribe to {}", s.topic))?;

    // HTTP.
    let http_stop = Arc::new(tokio::sync::Notify::new());
    let stop_wait = http_stop.clone();
    let (addr, http_task) = crate::http::serve(
        s.metrics_addr,
        AppState {
            metrics: metrics.clone(),
            live: live.clone(),
            readiness: readiness.clone(),
        },
        async move { stop_wait.notified().await },
    )
    .await?;
    tracing::info!(
        %addr, brokers = %s.brokers, topic = %s.topic, group = %s.group,
        models = %models.join(","), "kanary detect started"
    );

    // Once a second: live page history and throughput gauges.
    let handles = pipeline.handles();
    let ticker_live = live.clone();
    let ticker = tokio::spawn(async move {
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        loop {
            iv.tick().await;
            ticker_live.tick(&handles);
        }
    });

    // Signals.
    let sig_shared = shared.clone();
    tokio::spawn(async move {
        commands::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight work");
        sig_shared.stop();
    });

    // Stages.
    let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel::<Batch>(4);
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(8);
    let poll_thread = {
        let consumer = consumer.clone();
        let shared = shared.clone();
        let batch_size = s.batch_size;
        std::thread::Builder::new()
            .name("kanary-poll".into())
            .spawn(move || poll_loop(&consumer, &shared, batch_size, batch_tx))?
    };
    let score_thread = {
        let shared = shared.clone();
        let producer = producer.clone();
        let s = s.clone();
        std::thread::Builder::new()
            .name("kanary-score".into())
            .spawn(move || {
                score_loop(
                    pipeline, floor, batch_rx, pending_tx, &producer, &shared, &s,
                )
            })?
    };
    let committed = commit_loop(
        pending_rx,
        &consumer,
        &producer,
        &shared,
        &s.topic,
        &s.state_dir,
    )
    .await;

    // Shutdown: the poll thread stopped, the scorer drained, the committer finished.
    let polled = poll_thread
        .join()
        .map_err(|_| anyhow::anyhow!("poll thread panicked"))?;
    let scored = score_thread
        .join()
        .map_err(|_| anyhow::anyhow!("scoring thread panicked"))?;
    if let Err(e) = scored {
        tracing::error!("scoring stopped: {e:#}");
        shared.fatal.store(true, Ordering::Release);
    }
    if !shared.fatal.load(Ordering::Acquire) {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!("final commit failed: {e}"),
        }
    }
    consumer.unsubscribe();
    drop(consumer);
    let _ = rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10));
    ticker.abort();
    http_stop.notify_one();
    let _ = http_task.await;
    tracing::info!(events = committed, "kanary detect stopped");
    polled?;
    if shared.fatal.load(Ordering::Acquire) {
        bail!("stopped after an unrecoverable error; uncommitted events will be reprocessed");
    }
    Ok(())
}

fn state_file(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("{model}.kanary"))
}

/// Stage 1: poll the consumer into batches until shutdown. A batch is whatever is ready once
/// the first message arrives, up to `batch_size`: small at low rates (low latency), large at
/// high rates (throughput).
fn poll_loop(
    consumer: &KanaryConsumer,
    shared: &Shared,
    batch_size: usize,
    tx: std::sync::mpsc::SyncSender<Batch>,
) -> Result<()> {
    let mut batch = Batch::default();
    while !shared.shutdown.load(Ordering::Acquire) {
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
                tracing::warn!("consumer error: {e}");
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

/// Stage 2: score batches and hand their outputs to the producer.
///
/// With streaming models, offsets are stored only with a snapshot of their states (every
/// `--snapshot-every` seconds and at shutdown), so a restart resumes a state that reflects
/// exactly the events before the committed offsets.
fn score_loop(
    mut pipeline: Pipeline,
    floor: BTreeMap<i32, i64>,
    rx: std::sync::mpsc::Receiver<Batch>,
    tx: mpsc::Sender<Pending>,
    producer: &FutureProducer,
    shared: &Shared,
    s: &Settings,
) -> Result<()> {
    let mut out = BatchOutput::default();
    let mut stats = StageStats::default();
    let streaming = pipeline.has_streaming();
    // Next offset per partition over every batch so far, and events since the last snapshot.
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut unsaved = 0usize;
    let mut last_snapshot = Instant::now();
    let mut skipped = 0u64;
    loop {
        let waited = Instant::now();
        let batch = if streaming {
            // While the stream is idle, save what is unsaved so its offsets get committed.
            match rx.recv_timeout(s.snapshot_every) {
                Ok(b) => b,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if unsaved > 0 {
                        let idle = Pending {
                            deliveries: Vec::new(),
                            offsets: next.iter().map(|(&p, &o)| (p, o)).collect(),
                            snapshot: Some(snapshot(&pipeline, &next, &s.topic)),
                            events: std::mem::take(&mut unsaved),
                            polled: false,
                        };
                        last_snapshot = Instant::now();
                        if tx.blocking_send(idle).is_err() {
                            bail!("commit stage stopped");
                        }
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            let Ok(b) = rx.recv() else { break };
            b
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
        for &i in &out.fitted {
            // Save before the offsets of the events that completed training are stored, so a
            // restart resumes with the model instead of refitting.
            let file = pipeline.model_file(i, now);
            let path = state_file(&s.state_dir, file.kind.name());
            modelio::save(&path, &file)
                .with_context(|| format!("cannot save {}", path.display()))?;
            tracing::info!(path = %path.display(), services = file.detectors.len(), "saved {} models", file.kind);
        }
        shared
            .readiness
            .models_ready
            .store(pipeline.has_models(), Ordering::Release);
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
        let mut pending = Pending {
            deliveries,
            offsets,
            snapshot: None,
            events: batch.meta.len(),
            polled: true,
        };
        if streaming {
            unsaved += batch.meta.len();
            if last_snapshot.elapsed() >= s.snapshot_every {
                pending.offsets = next.iter().map(|(&p, &o)| (p, o)).collect();
                pending.snapshot = Some(snapshot(&pipeline, &next, &s.topic));
                pending.events = std::mem::take(&mut unsaved);
                last_snapshot = Instant::now();
            } else {
                pending.offsets.clear();
                pending.events = 0;
            }
        }
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
    if streaming && unsaved > 0 && !shared.fatal.load(Ordering::Acquire) {
        // Shutdown: one last snapshot, after every batch before it.
        let last = Pending {
            deliveries: Vec::new(),
            offsets: next.iter().map(|(&p, &o)| (p, o)).collect(),
            snapshot: Some(snapshot(&pipeline, &next, &s.topic)),
            events: unsaved,
            polled: false,
        };
        if tx.blocking_send(last).is_err() {
            bail!("commit stage stopped before the final snapshot");
        }
    }
    Ok(())
}

/// The streaming models' states with the offsets they reflect.
fn snapshot(pipeline: &Pipeline, next: &BTreeMap<i32, i64>, topic: &str) -> Vec<ModelFile> {
    let offsets: Vec<(String, i32, i64)> = next
        .iter()
        .map(|(&p, &o)| (topic.to_string(), p, o))
        .collect();
    pipeline.snapshots(modelio::now(), &offsets)
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
fn send<K, P>(producer: &FutureProducer, mut rec: FutureRecord<'_, K, P>) -> DeliveryFuture
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

/// Stage 3: wait for each batch's deliveries, then store its offsets. Returns the number of
/// events whose offsets were stored.
async fn commit_loop(
    mut rx: mpsc::Receiver<Pending>,
    consumer: &KanaryConsumer,
    producer: &FutureProducer,
    shared: &Shared,
    topic: &str,
    state_dir: &Path,
) -> usize {
    let mut committed = 0;
    while let Some(p) = rx.recv().await {
        let mut ok = true;
        for d in p.deliveries {
            if !deliver(d, producer).await {
                ok = false;
            }
        }
        if !ok {
            // Never store offsets past an event whose output is lost: stop, and let a restart
            // reprocess from the last stored offset.
            shared.fatal.store(true, Ordering::Release);
            shared.stop();
        }
        if let Some(files) = p.snapshot.filter(|_| !shared.fatal.load(Ordering::Acquire)) {
            // Save the states before their offsets are stored: a restart then finds a state
            // that reflects every event before the committed offsets.
            let dir = state_dir.to_path_buf();
            let saved = tokio::task::spawn_blocking(move || -> Result<usize> {
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
                Ok(Err(e)) => {
                    tracing::error!("{e:#}");
                    shared.fatal.store(true, Ordering::Release);
                    shared.stop();
                }
                Err(e) => {
                    tracing::error!("saving streaming states failed: {e}");
                    shared.fatal.store(true, Ordering::Release);
                    shared.stop();
                }
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
                Ok(()) => committed += p.events,
                // The partition was revoked meanwhile: its new owner reprocesses (at least once).
                Err(e) => tracing::debug!("cannot store offsets: {e}"),
            }
        }
        if p.polled {
            shared.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }
    committed
}

/// Awaits one delivery, re-sending a failed record a few times. Returns false when it is lost.
async fn deliver(d: DeliveryFuture, producer: &FutureProducer) -> bool {
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
