//! The [`Detector`] trait, the fixed set of model kinds, and a fitted per-service detector
//! (features + scaler + model + threshold) that both the online service and offline evaluation
//! run.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::features::{StandardScaler, WindowSpec};
use crate::models::autoencoder::{AeParams, Autoencoder};
use crate::models::iforest::{IForestParams, IsolationForest};
use crate::models::novelty::{Novelty, NoveltyParams};
use crate::models::zscore::RobustZ;
use crate::streaming::StreamingDetector;
use crate::threshold::{ThresholdError, ThresholdMethod};

/// A fitted anomaly-scoring model over standardised feature rows.
pub trait Detector {
    /// Number of input features.
    fn dim(&self) -> usize;
    /// Anomaly score of one row; higher is more anomalous.
    fn score(&self, x: &[f64]) -> f64;
    /// Scores `out.len()` rows of `xs` (row-major).
    fn score_batch(&self, xs: &[f64], out: &mut [f64]) {
        let d = self.dim();
        for (o, row) in out.iter_mut().zip(xs.chunks_exact(d)) {
            *o = self.score(row);
        }
    }
    /// Each feature's share of the score of `x` (non-negative, summing to 1 unless all zero).
    fn contributions(&self, x: &[f64], out: &mut [f64]);
}

/// The model kinds kanary knows. The names are the CLI's and the `model` metric label's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ModelKind {
    /// Isolation Forest (`if`).
    #[serde(rename = "if")]
    IForest,
    /// Dense autoencoder, score = reconstruction error (`ae`).
    #[serde(rename = "ae")]
    Autoencoder,
    /// Robust z-score baseline (`zscore`).
    #[serde(rename = "zscore")]
    ZScore,
    /// Streaming record-ratio novelty detector (`novelty`): no fit, keeps learning.
    #[serde(rename = "novelty")]
    Novelty,
}

impl ModelKind {
    pub const ALL: [ModelKind; 4] = [
        ModelKind::IForest,
        ModelKind::Autoencoder,
        ModelKind::ZScore,
        ModelKind::Novelty,
    ];

    /// Streaming models score from the first event and keep learning; they are never fitted.
    pub fn is_streaming(self) -> bool {
        self == ModelKind::Novelty
    }

    /// Short name: `if`, `ae`, `zscore`.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::IForest => "if",
            ModelKind::Autoencoder => "ae",
            ModelKind::ZScore => "zscore",
            ModelKind::Novelty => "novelty",
        }
    }

    /// The threshold rule used when none is configured (docs/models.md gives the measurements
    /// behind each choice).
    ///
    /// Isolation Forest scores are averages over trees, with a short, light upper tail that an
    /// exponential tail fit overshoots: they get `median + 5·MAD`. Reconstruction errors and
    /// z-scores have exponential-like tails: they get the peaks-over-threshold fit.
    pub fn default_threshold(self) -> ThresholdMethod {
        match self {
            ModelKind::IForest => ThresholdMethod::Mad { k: 5.0 },
            ModelKind::Autoencoder | ModelKind::ZScore => ThresholdMethod::default(),
            ModelKind::Novelty => ThresholdMethod::Fixed {
                value: NoveltyParams::THRESHOLD,
            },
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown model name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown model `{0}`: expected one of if, ae, zscore, novelty")]
pub struct UnknownModel(pub String);

impl FromStr for ModelKind {
    type Err = UnknownModel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "if" | "iforest" | "isolation-forest" => Ok(ModelKind::IForest),
            "ae" | "autoencoder" => Ok(ModelKind::Autoencoder),
            "zscore" | "z" | "robust-z" => Ok(ModelKind::ZScore),
            "novelty" | "record-ratio" => Ok(ModelKind::Novelty),
            _ => Err(UnknownModel(s.to_string())),
        }
    }
}

/// Everything needed to fit one detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorConfig {
    pub kind: ModelKind,
    #[serde(default)]
    pub iforest: IForestParams,
    #[serde(default)]
    pub autoencoder: AeParams,
    #[serde(default)]
    pub novelty: NoveltyParams,
    /// Threshold rule; `None` means the model's default.
    #[serde(default)]
    pub threshold: Option<ThresholdMethod>,
    /// Seed for every random choice in fitting.
    #[serde(default)]
    pub seed: u64,
    /// Refit once without the training rows the first fit finds anomalous.
    #[serde(default = "yes")]
    pub robust: bool,
}

fn yes() -> bool {
    true
}

impl DetectorConfig {
    pub fn new(kind: ModelKind) -> Self {
        DetectorConfig {
            kind,
            iforest: IForestParams::default(),
            autoencoder: AeParams::default(),
            novelty: NoveltyParams::default(),
            threshold: None,
            seed: 0,
            robust: true,
        }
    }

    /// A fresh streaming model over `dim` columns, for streaming kinds (`None` for fitted
    /// ones).
    pub fn new_streaming(&self, dim: usize) -> Option<Box<dyn StreamingDetector>> {
        match self.kind {
            ModelKind::Novelty => Some(Box::new(Novelty::new(self.novelty.clone(), dim))),
            ModelKind::IForest | ModelKind::Autoencoder | ModelKind::ZScore => None,
        }
    }

    pub fn threshold_method(&self) -> ThresholdMethod {
        self.threshold
            .unwrap_or_else(|| self.kind.default_threshold())
    }
}

/// A fitted model of any kind (enum dispatch: the set is fixed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Model {
    IForest(IsolationForest),
    Autoencoder(Autoencoder),
    ZScore(RobustZ),
}

impl Model {
    pub fn kind(&self) -> ModelKind {
        match self {
            Model::IForest(_) => ModelKind::IForest,
            Model::Autoencoder(_) => ModelKind::Autoencoder,
            Model::ZScore(_) => ModelKind::ZScore,
        }
    }
}

impl Model {
    /// Checks internal consistency (for models read from files).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Model::IForest(m) => m.validate(),
            Model::Autoencoder(m) => m.validate(),
            Model::ZScore(m) if m.median.len() != m.scale.len() => {
                Err("median and scale lengths differ".into())
            }
            Model::ZScore(_) => Ok(()),
        }
    }
}

impl Detector for Model {
    fn dim(&self) -> usize {
        match self {
            Model::IForest(m) => m.dim(),
            Model::Autoencoder(m) => m.dim(),
            Model::ZScore(m) => m.dim(),
        }
    }

    fn score(&self, x: &[f64]) -> f64 {
        match self {
            Model::IForest(m) => m.score(x),
            Model::Autoencoder(m) => m.score(x),
            Model::ZScore(m) => m.score(x),
        }
    }

    fn score_batch(&self, xs: &[f64], out: &mut [f64]) {
        match self {
            Model::IForest(m) => m.score_batch(xs, out),
            Model::Autoencoder(m) => m.score_batch(xs, out),
            Model::ZScore(m) => {
                let d = m.dim();
                for (o, row) in out.iter_mut().zip(xs.chunks_exact(d)) {
                    *o = m.score(row);
                }
            }
        }
    }

    fn contributions(&self, x: &[f64], out: &mut [f64]) {
        match self {
            Model::IForest(m) => m.contributions(x, out),
            Model::Autoencoder(m) => m.contributions(x, out),
            Model::ZScore(m) => m.contributions(x, out),
        }
    }
}

/// Errors from fitting a detector.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("no features to fit on")]
    NoFeatures,
    #[error("need at least {need} training rows, got {got}")]
    TooFewRows { need: usize, got: usize },
    #[error("isolation forest: {0}")]
    IForest(#[from] crate::models::iforest::IForestError),
    #[error("autoencoder: {0}")]
    Autoencoder(#[from] crate::models::autoencoder::AeError),
    #[error("threshold: {0}")]
    Threshold(#[from] ThresholdError),
    #[error("`{0}` is a streaming model: it scores from the first event and is never fitted")]
    Streaming(ModelKind),
}

/// Fits scaler and model on raw rows once; returns them with the training rows' scores
/// (out-of-bag for the Isolation Forest, in-sample otherwise).
fn fit_once(
    cfg: &DetectorConfig,
    raw: &[f64],
    d: usize,
) -> Result<(StandardScaler, Model, Vec<f64>), FitError> {
    let n = raw.len() / d;
    let scaler = StandardScaler::fit(raw, d);
    let mut data = raw.to_vec();
    scaler.transform(&mut data);
    let (model, scores) = match cfg.kind {
        ModelKind::IForest => {
            let (f, oob) = IsolationForest::fit_with_oob(&data, d, &cfg.iforest, cfg.seed)?;
            (Model::IForest(f), oob)
        }
        ModelKind::Autoencoder => {
            let m = Model::Autoencoder(Autoencoder::fit(&data, d, &cfg.autoencoder, cfg.seed)?);
            let mut s = vec![0.0; n];
            m.score_batch(&data, &mut s);
            (m, s)
        }
        ModelKind::ZScore => {
            let m = Model::ZScore(RobustZ::fit(&data, d).ok_or(FitError::NoFeatures)?);
            let mut s = vec![0.0; n];
            m.score_batch(&data, &mut s);
            (m, s)
        }
        ModelKind::Novelty => return Err(FitError::Streaming(ModelKind::Novelty)),
    };
    Ok((scaler, model, scores))
}

/// A detector fitted for one service: its feature names, scaler, model and threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedDetector {
    pub kind: ModelKind,
    /// Names of the model's input columns (window features when `window` is set).
    pub features: Arc<[String]>,
    /// Event fields the rows are built from.
    pub inputs: Vec<String>,
    /// Sliding-window features computed from `inputs`, if any.
    pub window: Option<WindowSpec>,
    pub scaler: StandardScaler,
    pub model: Model,
    pub threshold: f64,
    pub threshold_method: ThresholdMethod,
    /// Rows the model was fitted on.
    pub train_rows: usize,
    /// When it was fitted (seconds since the epoch, as given by the caller).
    pub trained_at: f64,
}

/// Which training rows a robust refit drops: those an ordinary row would exceed with
/// probability 1% (a lenient cut: it must catch the anomalies a training window holds, and
/// dropping a few ordinary rows costs little).
const TRIM_RULE: ThresholdMethod = ThresholdMethod::Pot {
    risk: 1e-2,
    level: 0.9,
};

/// Minimum number of rows any model is fitted on.
pub const MIN_TRAIN_ROWS: usize = 8;

impl FittedDetector {
    /// Fits scaler, model and threshold on raw rows (row-major, one column per feature).
    pub fn fit(
        cfg: &DetectorConfig,
        features: Vec<String>,
        raw: &[f64],
        trained_at: f64,
    ) -> Result<Self, FitError> {
        let d = features.len();
        if d == 0 {
            return Err(FitError::NoFeatures);
        }
        let n = raw.len() / d;
        if n < MIN_TRAIN_ROWS {
            return Err(FitError::TooFewRows {
                need: MIN_TRAIN_ROWS,
                got: n,
            });
        }
        let (mut scaler, mut model, mut train_scores) = fit_once(cfg, raw, d)?;
        if cfg.robust && cfg.kind != ModelKind::ZScore {
            // Refit without the rows the first fit finds anomalous, so that anomalies in the
            // training window neither stretch the scaler and the model's ranges nor get learnt
            // as normal (which would mask later ones).
            let cut = TRIM_RULE.fit(&train_scores)?;
            let kept: Vec<usize> = (0..n).filter(|&i| train_scores[i] < cut).collect();
            if kept.len() < n && kept.len() >= n / 2 && kept.len() >= MIN_TRAIN_ROWS {
                let clean: Vec<f64> = kept
                    .iter()
                    .flat_map(|&i| raw[i * d..(i + 1) * d].iter().copied())
                    .collect();
                let (s2, m2, kept_scores) = fit_once(cfg, &clean, d)?;
                // Dropped rows are unseen by the new model: their plain scores are honest.
                let mut all = raw.to_vec();
                s2.transform(&mut all);
                let mut scores = vec![0.0; n];
                m2.score_batch(&all, &mut scores);
                for (k, &i) in kept.iter().enumerate() {
                    scores[i] = kept_scores[k];
                }
                (scaler, model, train_scores) = (s2, m2, scores);
            }
        }
        let method = cfg.threshold_method();
        let threshold = method.fit(&train_scores)?;
        Ok(FittedDetector {
            kind: cfg.kind,
            inputs: features.clone(),
            window: None,
            features: features.into(),
            scaler,
            model,
            threshold,
            threshold_method: method,
            train_rows: n,
            trained_at,
        })
    }

    pub fn dim(&self) -> usize {
        self.features.len()
    }

    /// Checks that features, scaler and model agree and the model is consistent.
    pub fn validate(&self) -> Result<(), String> {
        let d = self.dim();
        if d == 0 {
            return Err("no features".into());
        }
        if self.scaler.dim() != d || self.scaler.scale.len() != d {
            return Err(format!(
                "scaler has {} features, model {d}",
                self.scaler.dim()
            ));
        }
        if self.model.dim() != d {
            return Err(format!(
                "model takes {} features but {d} are named",
                self.model.dim()
            ));
        }
        if self.model.kind() != self.kind {
            return Err("model kind differs from the recorded kind".into());
        }
        self.model.validate()
    }

    /// Standardises `rows` in place and writes their scores to `out`.
    pub fn score_raw_batch(&self, rows: &mut [f64], out: &mut [f64]) {
        self.scaler.transform(rows);
        self.model.score_batch(rows, out);
    }

    /// Contributions of a row that [`score_raw_batch`](Self::score_raw_batch) already
    /// standardised.
    pub fn contributions_scaled(&self, row: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.dim()];
        self.model.contributions(row, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_round_trip() {
        for k in ModelKind::ALL {
            assert_eq!(k.name().parse::<ModelKind>().unwrap(), k);
        }
        assert!("svm".parse::<ModelKind>().is_err());
    }
}
