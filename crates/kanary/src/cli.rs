//! The command line (stable: scripts and users depend on it; see docs/cli.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kanary_core::catalog::parse_param;
use kanary_core::detector::{DetectorConfig, ModelKind, UnknownModel};
use kanary_core::engine::EngineConfig;
use kanary_core::features::WindowSpec;
use kanary_core::registry::{ParamError, ParamMap};
use kanary_core::simulate::Scenario;
use kanary_core::threshold::ThresholdMethod;

#[derive(Debug, Parser)]
#[command(
    name = "kanary",
    version,
    about = "Real-time anomaly detection for microservice telemetry",
    long_about = "kanary scores metric events as they stream through Apache Kafka with Isolation \
                  Forest, autoencoder, robust z-score and streaming novelty detectors, publishes \
                  anomalies to a topic, dead-letters bad input and exports Prometheus metrics.\n\n\
                  Start with `kanary demo`: the whole pipeline in one process, no Kafka needed."
)]
pub struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `kanary=debug`.
    #[arg(long, global = true, env = "KANARY_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a labelled event stream to a file, stdout or a Kafka topic.
    Simulate(SimulateArgs),
    /// The detector service: consume events from Kafka, score them, publish anomalies and
    /// serve Prometheus metrics.
    Detect(Box<DetectArgs>),
    /// Replay a JSONL file through the detectors offline and report incidents caught, delay,
    /// false pages per service-day, precision/recall/F1 and PR-AUC.
    Eval(EvalArgs),
    /// Fit per-service models on a JSONL file and save them to a model file.
    Train(TrainArgs),
    /// Run a detector over the Numenta Anomaly Benchmark and score it.
    Nab(NabArgs),
    /// List every model with its parameters, their defaults and one line of help each.
    Models(ModelsArgs),
    /// Measure scoring throughput (events/s on one core) against the per-event path.
    Bench(BenchArgs),
    /// Simulator, Isolation Forest and autoencoder in one process with metrics and a live page;
    /// no Kafka needed.
    Demo(DemoArgs),
    /// Prometheus remote write and OTLP/HTTP metrics in, kanary events out to Kafka: an entity
    /// (job/instance) per event, counters as rates (docs/telemetry.md).
    Gateway(Box<GatewayArgs>),
}

/// A comma-separated list of model names, without repeats, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelList(pub Vec<ModelKind>);

impl std::str::FromStr for ModelList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let k: ModelKind = part.parse().map_err(|e: UnknownModel| e.to_string())?;
            if !out.contains(&k) {
                out.push(k);
            }
        }
        if out.is_empty() {
            return Err("no model given".into());
        }
        Ok(ModelList(out))
    }
}

fn parse_threshold(s: &str) -> Result<ThresholdMethod, String> {
    s.parse()
        .map_err(|e: kanary_core::threshold::ThresholdError| e.to_string())
}

/// How a model is built and thresholded, whatever events it sees (every command that fits
/// or times models).
#[derive(Debug, Clone, Args)]
pub struct DetectorOpts {
    /// Threshold rule, fitted on each service's training scores without labels:
    /// `pot[:RISK]` (default; tail fit, RISK = false-alarm probability per event, 1e-4),
    /// `mad[:K]` (median + K·MAD), `contamination:RATE` (the thesis' quantile rule) or
    /// `fixed:SCORE`.
    #[arg(long, env = "KANARY_THRESHOLD", value_parser = parse_threshold)]
    pub threshold: Option<ThresholdMethod>,
    /// Fit once only, keeping the training rows the first fit finds anomalous (by default
    /// models are refitted without them, so anomalies in the training window are not learnt).
    #[arg(long, env = "KANARY_NO_ROBUST_FIT")]
    pub no_robust_fit: bool,
    /// Seed for every random choice in fitting.
    #[arg(long = "model-seed", env = "KANARY_MODEL_SEED", default_value_t = 42)]
    pub model_seed: u64,
    /// A model parameter, `MODEL.KEY=VALUE` (repeatable; e.g. `if.trees=200`,
    /// `ae.hidden=16,8,16`, `novelty.alert=1.1`). `kanary models` lists every model's
    /// parameters with their defaults.
    #[arg(
        long = "param",
        value_name = "MODEL.KEY=VALUE",
        env = "KANARY_PARAMS",
        value_delimiter = ';'
    )]
    pub params: Vec<String>,
}

/// Model settings shared by every command that fits models on events: the detector, and
/// which of an event's fields it sees.
#[derive(Debug, Clone, Args)]
pub struct ModelOpts {
    #[command(flatten)]
    pub detector: DetectorOpts,
    /// Features to use (comma-separated); default: every numeric field except ts and label.
    #[arg(long, env = "KANARY_FEATURES", value_delimiter = ',')]
    pub features: Option<Vec<String>>,
    /// Sliding windows, lengths in events (e.g. `8,32,128`): each feature is replaced by
    /// window features computed per service over its recent events (see
    /// --window-features). Univariate streams need this context. Default: none (nab: its own).
    #[arg(long = "window", env = "KANARY_WINDOW", value_delimiter = ',')]
    pub window: Option<Vec<usize>>,
    /// Window features to emit: value, d1 (change from the previous event), mean, std,
    /// z (z-score against the window before the event), roc (rate of change).
    #[arg(
        long = "window-features",
        env = "KANARY_WINDOW_FEATURES",
        value_delimiter = ',',
        default_value = "value,d1,z"
    )]
    pub window_features: Vec<String>,
}

impl DetectorOpts {
    /// The checked configuration of model `kind` (`--param` over the config file's tables).
    pub fn config(
        &self,
        kind: ModelKind,
        file_params: &BTreeMap<String, ParamMap>,
    ) -> anyhow::Result<DetectorConfig> {
        let mut params = self.model_params(file_params)?;
        let detector = self.detector_config(kind, params.remove(&kind).unwrap_or_default());
        detector.check()?;
        Ok(detector)
    }

    /// The parameters given for each model, `--param` over the config file's
    /// `[models.MODEL]` tables, each checked against its model's parameter struct.
    pub fn model_params(
        &self,
        file: &BTreeMap<String, ParamMap>,
    ) -> Result<BTreeMap<ModelKind, ParamMap>, ParamError> {
        let mut out: BTreeMap<ModelKind, ParamMap> = BTreeMap::new();
        for (model, table) in file {
            let kind = ModelKind::named(model)?;
            out.entry(kind).or_default().extend(table.clone());
        }
        for text in &self.params {
            let (kind, key, value) = parse_param(text)?;
            out.entry(kind).or_default().insert(key, value);
        }
        for (kind, map) in &out {
            kind.spec().params.check(kind.name(), map)?;
        }
        Ok(out)
    }

    pub fn detector_config(&self, kind: ModelKind, params: ParamMap) -> DetectorConfig {
        DetectorConfig {
            kind,
            params,
            threshold: self.threshold,
            seed: self.model_seed,
            robust: !self.no_robust_fit,
        }
    }
}

impl ModelOpts {
    /// The engine configuration of a model: detector, training events, features, windows.
    pub fn engine_config(&self, kind: ModelKind, train: usize) -> anyhow::Result<EngineConfig> {
        self.engine_config_with(kind, train, &BTreeMap::new())
    }

    /// [`engine_config`](Self::engine_config) with the `[models.*]` tables of a config file.
    pub fn engine_config_with(
        &self,
        kind: ModelKind,
        train: usize,
        file_params: &BTreeMap<String, ParamMap>,
    ) -> anyhow::Result<EngineConfig> {
        let mut c = EngineConfig::new(self.detector.config(kind, file_params)?);
        c.train_events = train;
        c.features = self.features.clone();
        c.window = self.window_spec().map_err(anyhow::Error::msg)?;
        Ok(c)
    }

    /// The sliding-window specification, if --window is given.
    pub fn window_spec(&self) -> Result<Option<WindowSpec>, String> {
        let Some(lengths) = &self.window else {
            return Ok(None);
        };
        let mut spec = WindowSpec {
            lengths: lengths.clone(),
            value: false,
            delta: false,
            mean: false,
            std: false,
            zscore: false,
            rate: false,
        };
        for f in &self.window_features {
            match f.trim() {
                "value" => spec.value = true,
                "d1" | "delta" => spec.delta = true,
                "mean" => spec.mean = true,
                "std" => spec.std = true,
                "z" | "zscore" => spec.zscore = true,
                "roc" | "rate" => spec.rate = true,
                other => {
                    return Err(format!(
                        "unknown window feature `{other}`: expected value, d1, mean, std, z, roc"
                    ));
                }
            }
        }
        spec.validate().map_err(|e| e.to_string())?;
        Ok(Some(spec))
    }
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Scenario: `seed` (the thesis producer) or `microservices` (four services, daily cycle,
    /// five incident shapes).
    #[arg(long, default_value = "seed")]
    pub scenario: Scenario,
    /// Number of events; 0 = forever (Kafka or stdout with --rate).
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Random seed: the same seed gives the same stream.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Events per second (real time; events are stamped with the wall clock). Default: as fast
    /// as possible, with simulated timestamps.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Output file, or `-` for stdout (JSON lines). Ignored with --brokers.
    #[arg(long, short, default_value = "-")]
    pub output: PathBuf,
    /// Kafka bootstrap servers: produce to --topic instead of writing a file.
    #[arg(long, env = "KANARY_BROKERS")]
    pub brokers: Option<String>,
    /// Kafka topic (created when missing).
    #[arg(long, env = "KANARY_TOPIC", default_value = "service-metrics")]
    pub topic: String,
    /// Partitions when creating the topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Extra librdkafka producer properties, `key=value` (repeatable).
    #[arg(long = "kafka-opt", value_name = "KEY=VALUE")]
    pub kafka_opts: Vec<String>,
    /// Stamp events with the wall clock even without --rate (default with --brokers).
    #[arg(long)]
    pub realtime: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// JSONL file of events to replay (`.jsonl.gz` is read directly).
    #[arg(long)]
    pub input: PathBuf,
    /// Models to evaluate, comma-separated.
    #[arg(long, help = models_help("Models to evaluate, comma-separated [default: codev; with --model-file: its model]"))]
    pub model: Option<ModelList>,
    /// Fit each service's model on its first N events (they are not scored). Streaming models
    /// (`kanary models` marks them) ignore it and score every event.
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    pub train: usize,
    /// Fit on this JSONL file (`.jsonl` or `.jsonl.gz`) instead; every event of --input is
    /// then scored. Streaming models learn from its events without judging them.
    #[arg(long, conflicts_with = "model_file")]
    pub train_file: Option<PathBuf>,
    /// Use the models of this model file (from `kanary train` or `kanary detect`); every event
    /// of --input is scored.
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// Write one JSON line per scored event to this file.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Write a self-contained HTML report comparing the models.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print one JSON line per model instead of a table (with a `services` array: the same
    /// figures per service).
    #[arg(long)]
    pub json: bool,
    /// An incident counts as caught early when its first flag comes at most N events after its
    /// start.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub early: usize,
    /// Also print a table per service (text output).
    #[arg(long)]
    pub per_service: bool,
    #[command(flatten)]
    pub opts: ModelOpts,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Print one JSON object per model instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A count that must be at least 1 (`--train 0` would score before anything was learnt).
/// A byte size: `268435456`, `256MiB`, `256M`, `2GiB`, `500MB` (KB/MB/GB are powers of 1000,
/// KiB/MiB/GiB and K/M/G powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 256MiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        u => {
            return Err(format!(
                "unknown size unit `{u}` (use KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    let bytes = n * mult;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(format!("`{s}` must be a positive size"));
    }
    Ok(bytes as u64)
}

fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A model-list help line that names the registered models.
fn models_help(lead: &str) -> String {
    format!(
        "{lead}: {} (`kanary models` describes each)",
        ModelKind::names()
    )
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// JSONL file of events to fit on.
    #[arg(long)]
    pub input: PathBuf,
    /// Model to fit (a streaming model learns the file instead).
    #[arg(long, default_value = "if", help = models_help("Model to fit (a streaming model learns the file instead)"))]
    pub model: ModelKind,
    /// Fit each service on at most its first N events (default: all of them).
    #[arg(long, value_parser = positive)]
    pub train: Option<usize>,
    /// Model file to write (atomically).
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub opts: ModelOpts,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model to benchmark.
    #[arg(long, default_value = "codev", help = models_help("Model to benchmark"))]
    pub model: ModelKind,
    /// Events scored per timed run.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Training events (seed scenario; warm-up events for streaming models).
    #[arg(long, default_value_t = 1000)]
    pub train: usize,
    /// Streaming models: columns of the synthetic service they are timed on.
    #[arg(long, default_value_t = 3)]
    pub features: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The detector's options; which features it sees is fixed by the timed rows.
    #[command(flatten)]
    pub opts: DetectorOpts,
}

#[derive(Debug, Args)]
pub struct NabArgs {
    /// NAB data directory (holding `<category>/<file>.csv`).
    #[arg(long)]
    pub data: PathBuf,
    /// NAB windows file (`labels/combined_windows.json` format).
    #[arg(long)]
    pub windows: PathBuf,
    /// Detector(s), comma-separated. With several, results go to `--results/<model>/`.
    #[arg(long, default_value = "codev", help = models_help("Detector(s), comma-separated; with several, results go to `--results/<model>/`"))]
    pub model: ModelList,
    /// Directory for `<category>/<file>.csv` results.
    #[arg(long)]
    pub results: PathBuf,
    /// Print one JSON line per model and profile.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub opts: ModelOpts,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// HTTP address for /metrics, the live page and the JSON API.
    #[arg(long, env = "KANARY_DEMO_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Simulated events per second.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Scenario to simulate.
    #[arg(long, default_value = "microservices")]
    pub scenario: Scenario,
    /// Simulator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Events per service to fit on before scoring.
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    pub train: usize,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Print no per-second summary line.
    #[arg(long)]
    pub quiet: bool,
    /// Models shown side by side.
    #[arg(long, default_value = "codev,if,ae", help = models_help("Models shown side by side, comma-separated"))]
    pub model: ModelList,
    #[command(flatten)]
    pub opts: ModelOpts,
}

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Models to run, comma-separated; they share one consumer.
    #[arg(long, env = "KANARY_MODEL", help = models_help("Models to run, comma-separated; they share one consumer [default: codev]"))]
    pub model: Option<ModelList>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KANARY_BROKERS")]
    pub brokers: Option<String>,
    /// Topic to consume [default: service-metrics].
    #[arg(long, env = "KANARY_TOPIC")]
    pub topic: Option<String>,
    /// Consumer group [default: kanary-<model>, e.g. kanary-if or kanary-if-ae].
    #[arg(long, env = "KANARY_GROUP")]
    pub group: Option<String>,
    /// HTTP address for /metrics, /healthz, /readyz and the live page [default: 0.0.0.0:9898].
    #[arg(long, env = "KANARY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Topic for anomaly records [default: anomalies].
    #[arg(long, env = "KANARY_ANOMALIES_TOPIC")]
    pub anomalies_topic: Option<String>,
    /// Dead-letter topic for unusable input, reason in the `kanary-reason` header
    /// [default: service-metrics-dlq].
    #[arg(long, env = "KANARY_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,
    /// Load this model file (from `kanary train`) for the model of its kind instead of fitting.
    #[arg(long, env = "KANARY_MODEL_FILE")]
    pub model_file: Option<PathBuf>,
    /// Directory where fitted models and streaming states are saved (`<model>.kanary`) and
    /// reloaded on restart [default: ./kanary-state].
    #[arg(long, env = "KANARY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Events per service to fit on before scoring [default: 1000].
    #[arg(long, env = "KANARY_TRAIN", value_parser = positive)]
    pub train: Option<usize>,
    /// Streaming models: seconds between saves of their states to the state directory; each
    /// save carries the Kafka offsets it reflects, and offsets are committed only with a save,
    /// so a restart resumes exactly [default: 30].
    #[arg(long, env = "KANARY_SNAPSHOT_EVERY", value_name = "SECONDS")]
    pub snapshot_every: Option<f64>,
    /// Largest batch taken from the consumer at once [default: 2000].
    #[arg(long, env = "KANARY_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Services held in memory per model; beyond it the least recently seen are evicted:
    /// their state is saved to the state directory and comes back with their next event
    /// [default: no limit].
    #[arg(long, env = "KANARY_MAX_SERVICES", value_name = "N", value_parser = positive)]
    pub max_services: Option<usize>,
    /// Memory for the whole process, e.g. 256MiB or 2GiB: services are evicted (as with
    /// --max-services) so that their estimated state stays within 45% of it, leaving room
    /// for snapshots, Kafka buffers and the rest [default: no limit].
    #[arg(long, env = "KANARY_MEMORY_BUDGET", value_name = "BYTES", value_parser = parse_bytes)]
    pub memory_budget: Option<u64>,
    /// Services per model with their own `service` label on /metrics; the others are counted
    /// under service="_other" [default: 200].
    #[arg(long, env = "KANARY_MAX_SERVICE_SERIES", value_name = "N")]
    pub max_service_series: Option<usize>,
    /// Seconds detector_service_anomalous stays 1 after a service's alarm starts (also while
    /// its events are flagged or its score is at or above its threshold), so that scrapes
    /// see it and alerts can wait with `for` [default: 300].
    #[arg(long, env = "KANARY_ANOMALOUS_HOLD", value_name = "SECONDS")]
    pub anomalous_hold: Option<f64>,
    /// Seconds to wait at start for a Kafka broker to answer; after that, exit non-zero with
    /// the last error librdkafka reported. HTTP (/healthz, /readyz) answers meanwhile
    /// [default: 60].
    #[arg(long, env = "KANARY_STARTUP_TIMEOUT", value_name = "SECONDS")]
    pub startup_timeout: Option<f64>,
    /// HTTP server: seconds a connection may take to send a request head, and may stay idle
    /// between requests, before it is closed [default: 10].
    #[arg(long, env = "KANARY_HTTP_TIMEOUT", value_name = "SECONDS")]
    pub http_timeout: Option<f64>,
    /// HTTP server: connections served at once; more wait in the listen backlog
    /// [default: 256].
    #[arg(long, env = "KANARY_HTTP_MAX_CONNECTIONS", value_name = "N", value_parser = positive)]
    pub http_max_connections: Option<usize>,
    /// librdkafka property `key=value`, passed through (repeatable), e.g.
    /// security.protocol=SASL_SSL. One value may hold several, comma-separated
    /// (`a=1,b=2`, handy in the environment variable); a comma not followed by `key=` belongs
    /// to the value (`partition.assignment.strategy=range,roundrobin`).
    #[arg(long = "kafka-opt", env = "KANARY_KAFKA_OPT", value_name = "KEY=VALUE")]
    pub kafka_opts: Vec<String>,
    /// TOML configuration file (flags and environment variables take precedence).
    #[arg(long, env = "KANARY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub opts: ModelOpts,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// HTTP address: POST /api/v1/write (Prometheus remote write), POST /v1/metrics (OTLP),
    /// GET /metrics, /healthz, /readyz.
    #[arg(long, env = "KANARY_GATEWAY_LISTEN", default_value = "0.0.0.0:9201")]
    pub listen: SocketAddr,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KANARY_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// Topic the events go to (created with --partitions if missing).
    #[arg(long, env = "KANARY_TOPIC", default_value = "service-metrics")]
    pub topic: String,
    /// Partitions of the topic when the gateway creates it.
    #[arg(long, env = "KANARY_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Labels whose values name the entity (the event's `service`), joined by `/`. For OTLP,
    /// `job` is `service.namespace/service.name` and `instance` is `service.instance.id`.
    #[arg(
        long,
        env = "KANARY_ENTITY_LABELS",
        value_delimiter = ',',
        default_value = "job,instance"
    )]
    pub entity_labels: Vec<String>,
    /// Keep only metrics whose name matches this regex (repeatable: any of them).
    #[arg(long, env = "KANARY_INCLUDE", value_name = "REGEX")]
    pub include: Vec<String>,
    /// Drop metrics whose name matches this regex (repeatable), after --include.
    #[arg(long, env = "KANARY_EXCLUDE", value_name = "REGEX")]
    pub exclude: Vec<String>,
    /// Largest request body, compressed or decompressed; larger ones get 413.
    #[arg(long, env = "KANARY_MAX_BODY", value_name = "BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub max_body: u64,
    /// Features tracked over all entities; samples of new series beyond it are dropped and
    /// counted (reason series_limit).
    #[arg(long, env = "KANARY_MAX_SERIES", default_value_t = 100_000, value_parser = positive)]
    pub max_series: usize,
    /// Features per entity; beyond it new series are dropped and counted (feature_limit).
    #[arg(long, env = "KANARY_MAX_ENTITY_FEATURES", default_value_t = 400, value_parser = positive)]
    pub max_entity_features: usize,
    /// Seconds an entity is kept without a sample (sample time, checked every 30 s); then it
    /// is forgotten and its next sample starts it afresh. Until then every feature it has
    /// carries its last value in its events.
    #[arg(
        long,
        env = "KANARY_STALE_AFTER",
        value_name = "SECONDS",
        default_value_t = 300.0
    )]
    pub stale_after: f64,
    /// File holding a bearer token writers must send (`Authorization: Bearer <token>`).
    #[arg(long, env = "KANARY_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// File of `user:password` lines accepted as HTTP basic auth.
    #[arg(long, env = "KANARY_BASIC_AUTH_FILE")]
    pub basic_auth_file: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, env = "KANARY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "KANARY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// At start, before accepting writes, read the selected series' recent history from this
    /// Prometheus (its HTTP API, e.g. http://prometheus:9090) into Kafka, so the detectors
    /// are warm before live samples arrive.
    #[arg(long, env = "KANARY_BACKFILL_FROM", value_name = "URL")]
    pub backfill_from: Option<String>,
    /// How far back --backfill-from reads, e.g. 6h, 30m, 2d.
    #[arg(long, env = "KANARY_BACKFILL_RANGE", value_name = "DURATION", default_value = "6h", value_parser = crate::commands::gateway::parse_duration)]
    pub backfill_range: f64,
    /// Seconds between backfilled points; use the scrape interval.
    #[arg(long, env = "KANARY_BACKFILL_STEP", value_name = "SECONDS", default_value = "15s", value_parser = crate::commands::gateway::parse_duration)]
    pub backfill_step: f64,
    /// PromQL series selector of what to backfill [default: metric names matching --include,
    /// or every series].
    #[arg(long, env = "KANARY_BACKFILL_MATCH", value_name = "SELECTOR")]
    pub backfill_match: Option<String>,
    /// Seconds Kafka may take to acknowledge a request's events; after that it gets 503 and
    /// the writer retries.
    #[arg(
        long,
        env = "KANARY_DELIVERY_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 10.0
    )]
    pub delivery_timeout: f64,
    /// Seconds to wait at start for a Kafka broker; then exit non-zero with the last error.
    #[arg(
        long,
        env = "KANARY_STARTUP_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 60.0
    )]
    pub startup_timeout: f64,
    /// HTTP server: seconds to send a request head, and to stay idle between requests.
    #[arg(
        long,
        env = "KANARY_HTTP_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 10.0
    )]
    pub http_timeout: f64,
    /// HTTP server: connections served at once.
    #[arg(long, env = "KANARY_HTTP_MAX_CONNECTIONS", value_name = "N", default_value_t = 256, value_parser = positive)]
    pub http_max_connections: usize,
    /// librdkafka property `key=value` (repeatable; comma-separated in the variable).
    #[arg(long = "kafka-opt", env = "KANARY_KAFKA_OPT", value_name = "KEY=VALUE")]
    pub kafka_opts: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn no_command_defines_a_flag_or_its_variable_twice() {
        // clap checks this only in debug builds: `bench --features` was defined twice (its
        // column count and the model options' feature list), and the release build panicked
        // whenever KANARY_FEATURES was set.
        use clap::CommandFactory;
        let cli = super::Cli::command();
        let global: Vec<_> = cli.get_arguments().filter(|a| a.is_global_set()).collect();
        for cmd in cli.get_subcommands() {
            let mut longs = std::collections::HashSet::new();
            let mut envs = std::collections::HashSet::new();
            for a in cmd.get_arguments().chain(global.iter().copied()) {
                if let Some(l) = a.get_long() {
                    assert!(longs.insert(l), "{} --{l} twice", cmd.get_name());
                }
                if let Some(e) = a.get_env() {
                    assert!(envs.insert(e), "{} {e:?} twice", cmd.get_name());
                }
            }
        }
    }

    #[test]
    fn memory_sizes_parse_with_binary_and_decimal_units_and_reject_the_rest() {
        assert_eq!(parse_bytes("256MiB"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_bytes("256M"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_bytes("2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes(" 1.5 gib "), Ok(1_610_612_736));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in ["", "MiB", "0", "-5MiB", "12 parsecs", "1e9"] {
            assert!(parse_bytes(bad).is_err(), "{bad} parsed");
        }
    }
}
