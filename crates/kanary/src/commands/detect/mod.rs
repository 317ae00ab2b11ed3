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
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kanary_core::registry::ParamMap;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::mpsc;

use self::consumer::{Ctx, KanaryConsumer, Shared};
use self::stages::{Batch, Pending, Producer, Sinks, commit_loop, poll_loop, score_loop};
use self::store::ServiceStore;
use crate::cli::{DetectArgs, ModelList, ModelOpts};
use crate::commands::Shutdown;
use crate::config::FileConfig;
use crate::http::{AppState, Limits, Readiness};
use crate::kafka::{KafkaCtx, KafkaHealth};
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
    /// Services held in memory per model.
    pub max_services: Option<usize>,
    /// Memory for the whole process, in bytes.
    pub memory_budget: Option<u64>,
    pub max_service_series: usize,
    /// How long to wait at start for a broker to answer before exiting non-zero.
    pub startup_timeout: Duration,
    pub anomalous_hold: f64,
    pub http: Limits,
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
        let seconds = |name: &str, v: Option<f64>, default: f64| -> Result<Duration> {
            let v = v.unwrap_or(default);
            if !(v > 0.0 && v.is_finite()) {
                bail!("--{name} must be a positive number of seconds");
            }
            Ok(Duration::from_secs_f64(v))
        };
        let anomalous_hold = a.anomalous_hold.unwrap_or(300.0);
        if !(anomalous_hold >= 0.0 && anomalous_hold.is_finite()) {
            bail!("--anomalous-hold must be a number of seconds >= 0");
        }
        let startup_timeout = seconds(
            "startup-timeout",
            a.startup_timeout.or(file.startup_timeout),
            60.0,
        )?;
        let http = Limits {
            timeout: seconds("http-timeout", a.http_timeout.or(file.http_timeout), 10.0)?,
            max_connections: match a.http_max_connections.or(file.http_max_connections) {
                Some(0) => bail!("http_max_connections must be at least 1"),
                Some(n) => n,
                None => Limits::default().max_connections,
            },
        };
        let memory_budget = match (&a.memory_budget, &file.memory_budget) {
            (Some(b), _) => Some(*b),
            (None, Some(s)) => Some(
                crate::cli::parse_bytes(s)
                    .map_err(|e| anyhow::anyhow!("config file: memory_budget: {e}"))?,
            ),
            (None, None) => None,
        };
        Ok(Settings {
            max_services: match a.max_services.or(file.max_services) {
                Some(0) => bail!("max_services must be at least 1"),
                n => n,
            },
            memory_budget,
            max_service_series: a
                .max_service_series
                .or(file.max_service_series)
                .unwrap_or(crate::pipeline::MAX_SERVICE_SERIES),
            startup_timeout,
            anomalous_hold,
            http,
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
    let result = rt.block_on(serve(settings, args.opts));
    // A Kafka client stuck closing (see `bounded`) must not hold the process.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
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
        health: Arc::new(KafkaHealth::new(readiness.clone())),
        metrics: metrics.clone(),
        models: models.clone(),
        topic: s.topic.clone(),
    });

    // HTTP before anything else, so probes get an answer (and a taken port an error) at once.
    // It outlives the drain (metrics stay up): its own shutdown, at the end.
    let http_stop = Shutdown::new();
    let stop_wait = http_stop.clone();
    let (addr, http_task) = crate::http::serve(
        s.metrics_addr,
        AppState {
            metrics: metrics.clone(),
            live: live.clone(),
            readiness: readiness.clone(),
        },
        s.http,
        async move { stop_wait.wait().await },
    )
    .await?;
    tracing::info!(%addr, "HTTP listening: /metrics /healthz /readyz and the live page");
    shared
        .shutdown
        .on_signal("shutting down: finishing in-flight work");

    let result = run_service(&s, opts, &shared, &live).await;
    http_stop.trigger();
    let _ = http_task.await;
    result
}

async fn run_service(
    s: &Settings,
    opts: ModelOpts,
    shared: &Arc<Shared>,
    live: &Arc<Live>,
) -> Result<()> {
    let models = &shared.models;
    let metrics = &shared.metrics;
    let readiness = &shared.readiness;
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
        if s.model_file.is_some() || !path.exists() {
            continue;
        }
        let file = match modelio::load(&path, Some(kind)) {
            Ok(f) => f,
            Err(e) => {
                // An unreadable state must not keep the service down: keep it for a look,
                // and start as if it were not there (offsets come from the consumer group).
                let aside = quarantine(&path)?;
                tracing::error!(
                    path = %path.display(), moved_to = %aside.display(),
                    "state file unreadable ({e:#}); moved aside, starting without it"
                );
                continue;
            }
        };
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
    // Services kept out of memory (evicted, or fitted on the stream): append-only segments,
    // each state loaded when its service's next event comes.
    let kinds = pipeline.kinds();
    let store = ServiceStore::open(&s.state_dir, &kinds)?;
    for &kind in &kinds {
        let n = store.count(kind);
        if n > 0 {
            tracing::info!(
                dir = %store::services_dir(&s.state_dir, kind).display(), services = n,
                "resumed {kind} models: saved per service, loaded with each service's next event"
            );
        }
    }
    {
        let store = store.clone();
        pipeline.set_restore(Box::new(move |kind, service| store.get(kind, service)));
    }
    pipeline.set_max_service_series(s.max_service_series);
    pipeline.set_anomalous_hold(s.anomalous_hold);
    readiness.models_ready.store(
        pipeline.has_models_or(|k| store.count(k) > 0),
        Ordering::Release,
    );

    // Kafka clients. Creating them does no network I/O; the first broker contact is
    // `wait_for_brokers`, bounded by --startup-timeout.
    let base = kafka::client_config(&s.brokers, &s.kafka_opts)?;
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
    let producer: Producer = pcfg
        .create_with_context(KafkaCtx(shared.health.clone()))
        .context("cannot create Kafka producer")?;
    let mut ccfg = base.clone();
    if let Some(budget) = s.memory_budget
        && ccfg.get("queued.max.messages.kbytes").is_none()
    {
        // librdkafka prefetches up to 64 MiB per consumer by default: a sixteenth of the
        // budget instead (between 1 and 64 MiB).
        let kb = (budget / 16 / 1024).clamp(1024, 65536);
        ccfg.set("queued.max.messages.kbytes", kb.to_string());
    }
    ccfg.set("group.id", &s.group);
    ccfg.set("enable.auto.offset.store", "false");
    for (k, v) in [
        ("enable.auto.commit", "true"),
        ("auto.commit.interval.ms", "1000"),
        ("auto.offset.reset", "earliest"),
        ("session.timeout.ms", "10000"),
        // Broker states for /readyz.
        ("statistics.interval.ms", "1000"),
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
    let fetch = {
        let (c, topic) = (consumer.clone(), s.topic.clone());
        move || {
            c.fetch_metadata(Some(&topic), Duration::from_secs(1))
                .map(|_| ())
        }
    };
    if !kafka::wait_for_brokers(
        &shared.health,
        &s.brokers,
        s.startup_timeout,
        &shared.shutdown,
        fetch,
    )
    .await?
    {
        tracing::info!("stopped before a Kafka broker answered");
        return Ok(());
    }
    for t in [&s.anomalies_topic, &s.dlq_topic] {
        let ctx = KafkaCtx(shared.health.clone());
        if let Err(e) = kafka::ensure_topic(&base, ctx, t, 1).await {
            tracing::warn!("{e:#} (producing will create it if the broker allows)");
        }
    }
    consumer
        .subscribe(&[&s.topic])
        .with_context(|| format!("cannot subscribe to {}", s.topic))?;
    tracing::info!(
        brokers = %s.brokers, topic = %s.topic, group = %s.group,
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

    // Stages.
    let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel::<Batch>(4);
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(8);
    let poll_thread = {
        let consumer = consumer.clone();
        let shared = shared.clone();
        let batch_size = s.batch_size;
        std::thread::Builder::new()
            .name("kanary-poll".into())
            .spawn(move || {
                let r = poll_loop(&consumer, &shared, batch_size, batch_tx);
                if let Err(e) = &r {
                    shared.fail(format!("poll stage: {e:#}"));
                }
                r
            })?
    };
    let score_thread = {
        let shared = shared.clone();
        let store = store.clone();
        let producer = producer.clone();
        let s = s.clone();
        std::thread::Builder::new()
            .name("kanary-score".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    score_loop(
                        pipeline,
                        floor,
                        batch_rx,
                        pending_tx,
                        Sinks {
                            producer: &producer,
                            store: &store,
                        },
                        &shared,
                        &s,
                    )
                }))
                .unwrap_or_else(|p| Err(anyhow::anyhow!("panicked: {}", panic_text(&p))));
                if let Err(e) = &r {
                    shared.fail(format!("scoring stage: {e:#}"));
                }
            })?
    };
    let outcome = commit_loop(
        pending_rx,
        &consumer,
        &producer,
        shared,
        &s.topic,
        &s.state_dir,
        &store,
    )
    .await;

    // Shutdown: the poll thread stopped, the scorer drained, the committer finished.
    let _ = poll_thread.join();
    let _ = score_thread.join();
    ticker.abort();
    if let Err(e) = store.flush(SHUTDOWN_GRACE / 2) {
        tracing::warn!("{e}: those services start afresh next time");
    }
    let clean = !shared.fatal.load(Ordering::Acquire) && outcome.abandoned == 0;
    let deadline = Instant::now() + SHUTDOWN_GRACE / 2;
    let consumer_closed = {
        let shared = shared.clone();
        bounded(deadline, move || {
            if clean && shared.health.is_up() {
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(e) => tracing::warn!("final commit failed: {e}"),
                }
            }
            consumer.unsubscribe();
            drop(consumer);
        })
    };
    let flushed = bounded(deadline, move || {
        let _ = rdkafka::producer::Producer::flush(&producer, Duration::from_secs(5));
    });
    if !consumer_closed.await || !flushed.await {
        tracing::warn!("Kafka clients did not close in time (broker unreachable?); leaving anyway");
    }
    tracing::info!(events = outcome.committed, "kanary detect stopped");
    if let Some(why) = readiness.failed.get() {
        bail!(
            "stopped after an unrecoverable error ({why}); uncommitted events will be reprocessed"
        );
    }
    if outcome.abandoned > 0 {
        bail!(
            "stopped before the outputs of {} events were delivered (broker unreachable?); \
             they will be reprocessed",
            outcome.abandoned
        );
    }
    Ok(())
}

/// After a stop is asked for, how long in-flight outputs may take to be delivered before the
/// service gives up on them (they are reprocessed after a restart: their offsets are not
/// committed), and the Kafka clients get to close.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(6);

/// Runs `f` on its own thread; true if it finished before `deadline`. A Kafka client that
/// cannot reach its broker may block in close: the process then leaves without it.
async fn bounded(deadline: Instant, f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("kanary-close".into())
        .spawn(move || {
            f();
            let _ = tx.send(());
        });
    if spawned.is_err() {
        return false;
    }
    tokio::time::timeout_at(deadline.into(), rx).await.is_ok()
}

/// Moves an unreadable state file aside (`<name>.corrupt-<unix seconds>`); returns where.
fn quarantine(path: &Path) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{secs}"));
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside).with_context(|| {
        format!(
            "state file {} is unreadable and cannot be moved aside",
            path.display()
        )
    })?;
    Ok(aside)
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

pub(crate) fn state_file(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("{model}.kanary"))
}
