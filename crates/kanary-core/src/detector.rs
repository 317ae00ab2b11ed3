//! A fitted per-service detector (features + scaler + model + threshold) that both the online
//! service and offline evaluation run, and the configuration it is fitted from. The model
//! traits live in [`crate::registry`], the list of models in [`crate::catalog`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::features::{StandardScaler, WindowSpec};
use crate::registry::{Build, ParamError, ParamMap};
pub use crate::registry::{Detector, FitError, Model, ModelKind, UnknownModel};
use crate::streaming::StreamingDetector;
use crate::threshold::ThresholdMethod;

/// Everything needed to fit one detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorConfig {
    pub kind: ModelKind,
    /// The model's parameters (its registry entry checks them; missing keys take defaults).
    #[serde(default)]
    pub params: ParamMap,
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
            params: ParamMap::new(),
            threshold: None,
            seed: 0,
            robust: true,
        }
    }

    /// Checks the parameters against the model's parameter struct.
    pub fn check(&self) -> Result<(), ParamError> {
        let spec = self.kind.spec();
        spec.params.check(spec.name, &self.params)
    }

    /// A fresh streaming model over `dim` columns, for streaming kinds (`None` for fitted
    /// ones, or when the parameters are invalid: [`check`](Self::check) them first).
    pub fn new_streaming(&self, dim: usize) -> Option<Box<dyn StreamingDetector>> {
        match self.kind.spec().build {
            Build::Streaming { new, .. } => new(&self.params, dim, self.seed).ok(),
            Build::Fitted { .. } => None,
        }
    }

    pub fn threshold_method(&self) -> ThresholdMethod {
        self.threshold
            .unwrap_or_else(|| self.kind.default_threshold())
    }
}

/// Fits scaler and model on raw rows once; returns them with the training rows' scores
/// (out-of-bag for the Isolation Forest, in-sample otherwise).
fn fit_once(
    cfg: &DetectorConfig,
    raw: &[f64],
    d: usize,
) -> Result<(StandardScaler, Model, Vec<f64>), FitError> {
    let scaler = StandardScaler::fit(raw, d);
    let mut data = raw.to_vec();
    scaler.transform(&mut data);
    let Build::Fitted { fit, .. } = cfg.kind.spec().build else {
        return Err(FitError::Streaming(cfg.kind));
    };
    let (inner, scores) = fit(&cfg.params, &data, d, cfg.seed)?;
    let model = Model::new(cfg.kind, inner);
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
        let robust_refit = matches!(
            cfg.kind.spec().build,
            Build::Fitted {
                robust_refit: true,
                ..
            }
        );
        if cfg.robust && robust_refit {
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
