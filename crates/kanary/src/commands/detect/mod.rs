//! `kanary detect`: the detector service on Kafka. This module resolves the settings and wires
//! the service together; [`consumer`] holds the consumer's callbacks and the state the stages
//! share, [`stages`] the three stages.
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

mod consumer;
mod stages;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kanary_core::registry::ParamMap;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use tokio::sync::mpsc;

use self::consumer::{Ctx, KanaryConsumer, Shared};
use self::stages::{Batch, Pending, commit_loop, poll_loop, score_loop};
use crate::cli::{DetectArgs, ModelList, ModelOpts};
use crate::commands::Shutdown;
use crate::config::FileConfig;
use crate::http::{AppState, Readiness};
use crate::live::Live;
use crate::pipeline::Pipeline;
use crate::telemetry::Metrics;
use crate::{commands, kafka, modelio};

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
            (None, None) => ModelList(vec![kanary_core::registry::ModelKind::default_model()]),
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
            train: match a.train.or(file.train).unwrap_or(1000) {
                0 => bail!("train must be at least 1 event per service (config file: train = 0)"),
                n => n,
            },
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
        shutdown: Shutdown::new(),
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
    // The HTTP server outlives the drain (metrics stay up): its own shutdown, at the end.
    let http_stop = Shutdown::new();
    let stop_wait = http_stop.clone();
    let (addr, http_task) = crate::http::serve(
        s.metrics_addr,
        AppState {
            metrics: metrics.clone(),
            live: live.clone(),
            readiness: readiness.clone(),
        },
        async move { stop_wait.wait().await },
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

    shared
        .shutdown
        .on_signal("shutting down: finishing in-flight work");

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
    http_stop.trigger();
    let _ = http_task.await;
    tracing::info!(events = committed, "kanary detect stopped");
    polled?;
    if shared.fatal.load(Ordering::Acquire) {
        bail!("stopped after an unrecoverable error; uncommitted events will be reprocessed");
    }
    Ok(())
}

pub(crate) fn state_file(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("{model}.kanary"))
}
