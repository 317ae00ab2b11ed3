//! The command line (stable: scripts and users depend on it; see docs/cli.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kanary_core::detector::{DetectorConfig, ModelKind, UnknownModel};
use kanary_core::engine::EngineConfig;
use kanary_core::features::WindowSpec;
use kanary_core::models::autoencoder::AeParams;
use kanary_core::models::iforest::IForestParams;
use kanary_core::models::nn::Activation;
use kanary_core::models::novelty::NoveltyParams;
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
    Detect(Box<crate::commands::detect::DetectArgs>),
    /// Replay a JSONL file through the detectors offline and report precision/recall/F1/PR-AUC.
    Eval(EvalArgs),
    /// Fit per-service models on a JSONL file and save them to a model file.
    Train(TrainArgs),
    /// Run a detector over the Numenta Anomaly Benchmark and score it.
    Nab(NabArgs),
    /// Measure scoring throughput (events/s on one core) against the per-event path.
    Bench(BenchArgs),
    /// Simulator, Isolation Forest and autoencoder in one process with metrics and a live page;
    /// no Kafka needed.
    Demo(DemoArgs),
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

fn parse_activation(s: &str) -> Result<Activation, String> {
    match s {
        "relu" => Ok(Activation::Relu),
        "tanh" => Ok(Activation::Tanh),
        "identity" | "linear" => Ok(Activation::Identity),
        _ => Err(format!(
            "unknown activation `{s}`: expected relu, tanh or identity"
        )),
    }
}

/// Model settings shared by every command that fits models.
#[derive(Debug, Clone, Args)]
pub struct ModelOpts {
    /// Threshold rule, fitted on each service's training scores without labels:
    /// `pot[:RISK]` (default; tail fit, RISK = false-alarm probability per event, 1e-4),
    /// `mad[:K]` (median + K·MAD), `contamination:RATE` (the thesis' quantile rule) or
    /// `fixed:SCORE`.
    #[arg(long, env = "KANARY_THRESHOLD", value_parser = parse_threshold)]
    pub threshold: Option<ThresholdMethod>,
    /// Features to use (comma-separated); default: every numeric field except ts and label.
    #[arg(long, env = "KANARY_FEATURES", value_delimiter = ',')]
    pub features: Option<Vec<String>>,
    /// Fit once only, keeping the training rows the first fit finds anomalous (by default
    /// models are refitted without them, so anomalies in the training window are not learnt).
    #[arg(long, env = "KANARY_NO_ROBUST_FIT")]
    pub no_robust_fit: bool,
    /// Seed for every random choice in fitting.
    #[arg(long = "model-seed", env = "KANARY_MODEL_SEED", default_value_t = 42)]
    pub model_seed: u64,
    /// Isolation Forest: number of trees.
    #[arg(long, env = "KANARY_TREES", default_value_t = 100)]
    pub trees: usize,
    /// Isolation Forest: rows per tree (capped by the training set).
    #[arg(long, env = "KANARY_MAX_SAMPLES", default_value_t = 256)]
    pub max_samples: usize,
    /// Isolation Forest path lengths: `range` (default) also isolates a row that lies beyond a
    /// node's training range with the probability a split over the extended range would;
    /// `sklearn` scores exactly as scikit-learn (a row far outside the training data scores
    /// like the most extreme training row).
    #[arg(long, env = "KANARY_IF_SCORING", default_value = "range", value_parser = ["range", "sklearn"])]
    pub if_scoring: String,
    /// Isolation Forest: levels beyond scikit-learn's height limit ceil(log2(max-samples)).
    #[arg(long, env = "KANARY_IF_EXTRA_DEPTH", default_value_t = 0)]
    pub if_extra_depth: u32,
    /// Autoencoder: hidden layer widths, e.g. `16,8,16` (the thesis' shape); default: a
    /// narrow code sized to the input, `h,ceil(d/2),h` with h = clamp(4d, 16, 64) (see
    /// docs/models.md).
    #[arg(long, env = "KANARY_AE_HIDDEN", value_delimiter = ',')]
    pub ae_hidden: Option<Vec<usize>>,
    /// Autoencoder: activation of the hidden layers.
    #[arg(long, env = "KANARY_AE_ACTIVATION", value_parser = parse_activation, default_value = "tanh")]
    pub ae_activation: Activation,
    /// Autoencoder: activation of the code (narrowest) layer.
    #[arg(long, env = "KANARY_AE_CODE_ACTIVATION", value_parser = parse_activation, default_value = "tanh")]
    pub ae_code_activation: Activation,
    /// Novelty: the alarm level of the record ratio, its sensitivity (1.05: flag a deviation 5%
    /// beyond the largest seen before; lower flags more).
    #[arg(long, env = "KANARY_NOVELTY_ALERT", default_value_t = 1.05)]
    pub novelty_alert: f64,
    /// Novelty: events after an alarm during which no new alarm is raised.
    #[arg(long, env = "KANARY_NOVELTY_COOLDOWN", default_value_t = 20)]
    pub novelty_cooldown: usize,
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
    /// Autoencoder: maximum training epochs (early stopping on a 10% validation split).
    #[arg(long, env = "KANARY_AE_EPOCHS", default_value_t = 200)]
    pub ae_epochs: usize,
    /// Autoencoder: Adam learning rate.
    #[arg(long, env = "KANARY_AE_LEARNING_RATE", default_value_t = 0.01)]
    pub ae_learning_rate: f64,
    /// Autoencoder: mini-batch size.
    #[arg(long, env = "KANARY_AE_BATCH_SIZE", default_value_t = 32)]
    pub ae_batch_size: usize,
    /// Autoencoder: epochs without a better validation loss before stopping.
    #[arg(long, env = "KANARY_AE_PATIENCE", default_value_t = 15)]
    pub ae_patience: usize,
    /// Autoencoder: standard deviation of the noise added to training inputs (denoising), in
    /// standardised units; 0 trains a plain autoencoder.
    #[arg(long, env = "KANARY_AE_NOISE", default_value_t = 1.0)]
    pub ae_noise: f64,
}

impl ModelOpts {
    /// The engine configuration of a model: detector, training events, features, windows.
    pub fn engine_config(&self, kind: ModelKind, train: usize) -> anyhow::Result<EngineConfig> {
        let detector = self.detector_config(kind);
        detector.novelty.validate().map_err(anyhow::Error::msg)?;
        let mut c = EngineConfig::new(detector);
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

    pub fn detector_config(&self, kind: ModelKind) -> DetectorConfig {
        DetectorConfig {
            kind,
            iforest: IForestParams {
                n_trees: self.trees,
                max_samples: self.max_samples,
                range_aware: self.if_scoring == "range",
                extra_depth: self.if_extra_depth,
            },
            autoencoder: AeParams {
                hidden: self.ae_hidden.clone().unwrap_or_default(),
                activation: self.ae_activation,
                code_activation: self.ae_code_activation,
                epochs: self.ae_epochs,
                learning_rate: self.ae_learning_rate,
                batch_size: self.ae_batch_size,
                patience: self.ae_patience,
                noise: self.ae_noise,
                ..AeParams::default()
            },
            novelty: NoveltyParams {
                alert: self.novelty_alert,
                cooldown: self.novelty_cooldown,
                ..NoveltyParams::default()
            },
            threshold: self.threshold,
            seed: self.model_seed,
            robust: !self.no_robust_fit,
        }
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
    /// Models to evaluate, comma-separated: if, ae, zscore, novelty.
    #[arg(long, default_value = "if")]
    pub model: ModelList,
    /// Fit each service's model on its first N events (they are not scored).
    #[arg(long, default_value_t = 1000)]
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
pub struct TrainArgs {
    /// JSONL file of events to fit on.
    #[arg(long)]
    pub input: PathBuf,
    /// Model to fit: if, ae or zscore (novelty is streaming: it needs no fit).
    #[arg(long, default_value = "if")]
    pub model: ModelKind,
    /// Fit each service on at most its first N events (default: all of them).
    #[arg(long)]
    pub train: Option<usize>,
    /// Model file to write (atomically).
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub opts: ModelOpts,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model to benchmark: if, ae or zscore.
    #[arg(long, default_value = "if")]
    pub model: ModelKind,
    /// Events scored per timed run.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Training events (seed scenario).
    #[arg(long, default_value_t = 1000)]
    pub train: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub opts: ModelOpts,
}

#[derive(Debug, Args)]
pub struct NabArgs {
    /// NAB data directory (holding `<category>/<file>.csv`).
    #[arg(long)]
    pub data: PathBuf,
    /// NAB windows file (`labels/combined_windows.json` format).
    #[arg(long)]
    pub windows: PathBuf,
    /// Detector(s), comma-separated: novelty, if, ae, zscore. With several, results go to
    /// `--results/<model>/`.
    #[arg(long, default_value = "novelty")]
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
    #[arg(long, default_value_t = 1000)]
    pub train: usize,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Print no per-second summary line.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub opts: ModelOpts,
}
