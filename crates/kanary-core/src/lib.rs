//! kanary-core: the pure part of kanary, real-time anomaly detection for microservice telemetry.
//!
//! No I/O, no async, no clocks: every function is deterministic given its inputs and seed, so
//! the same code scores events online (`kanary detect`) and offline (`kanary eval`).
//!
//! Layout:
//! - [`event`]: the event schema; parsing and validation with a distinct reason per bad input.
//! - [`features`]: standardisation, robust statistics, per-service sliding-window features.
//! - [`detector`]: a fitted per-service detector (features + scaler + model + threshold) and
//!   its configuration.
//! - [`models`]: Isolation Forest, autoencoder (with its small neural-network library), robust
//!   z-score.
//! - [`streaming`]: the [`streaming::StreamingDetector`] trait of models that learn from the
//!   stream one event at a time.
//! - [`registry`]: what a model is (traits, parameters, the spec that describes it once);
//!   [`catalog`]: the list of models, one line each.
//! - [`threshold`]: turning scores into decisions without labels.
//! - [`engine`]: per-service warm-up, fitting and batch scoring of a stream.
//! - [`eval`]: precision/recall/F1 and PR-AUC against labels; [`operator`]: incidents caught,
//!   delay and false pages per service-day; [`nab`]: NAB scoring.
//! - [`simulate`]: deterministic scenario generators.
//! - [`persist`]: versioned model files.
//! - [`rng`]: the seedable generator behind every random choice.

pub mod catalog;
pub mod detector;
pub mod engine;
pub mod eval;
pub mod event;
pub mod features;
pub mod models;
pub mod nab;
pub mod operator;
pub mod packed;
pub mod persist;
pub mod registry;
pub mod rng;
pub mod simulate;
pub mod streaming;
pub mod threshold;

pub use detector::{Detector, DetectorConfig, FittedDetector, Model, ModelKind};
pub use engine::{Engine, EngineConfig, Explain, Outcome, Scored};
pub use event::{Event, EventError};
