//! Robust z-score baseline: per feature, the distance from the training median in units of the
//! scaled median absolute deviation; the score of a row is the largest of them.
//!
//! It is the reference that every other model must beat, and a cheap ensemble member.

use serde::{Deserialize, Serialize};

pub use crate::features::MAD_TO_SD;
use crate::features::median_mad;
use crate::registry::{
    Build, Detector, FitError, FittedModel, FittedPair, ModelSpec, NoParams, ParamMap, Schema,
    decode_state, encode_state,
};
use crate::threshold::ThresholdMethod;

/// A fitted robust z-score model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustZ {
    pub median: Vec<f64>,
    /// Robust standard deviation per feature (scaled MAD, with fallbacks when it is zero).
    pub scale: Vec<f64>,
}

impl RobustZ {
    /// Fits medians and MADs on `data` (row-major, `dim` columns); needs at least one row.
    pub fn fit(data: &[f64], dim: usize) -> Option<Self> {
        let n = data.len().checked_div(dim).unwrap_or(0);
        if n == 0 {
            return None;
        }
        let mut median = Vec::with_capacity(dim);
        let mut scale = Vec::with_capacity(dim);
        let mut col = Vec::with_capacity(n);
        for f in 0..dim {
            col.clear();
            col.extend(data.chunks_exact(dim).map(|r| r[f]));
            let (med, mad) = median_mad(&col)?;
            let mut s = mad * MAD_TO_SD;
            if s <= f64::EPSILON {
                // More than half the values are equal: fall back to the mean absolute deviation.
                let mean_ad = col.iter().map(|v| (v - med).abs()).sum::<f64>() / n as f64;
                s = mean_ad * 1.253_314_137_315_500_3;
            }
            if s <= f64::EPSILON || !s.is_finite() {
                s = 1.0;
            }
            median.push(med);
            scale.push(s);
        }
        Some(RobustZ { median, scale })
    }

    pub fn dim(&self) -> usize {
        self.median.len()
    }

    /// Largest absolute robust z-score of the row.
    #[inline]
    pub fn score(&self, x: &[f64]) -> f64 {
        x.iter()
            .zip(&self.median)
            .zip(&self.scale)
            .map(|((v, m), s)| ((v - m) / s).abs())
            .fold(0.0, f64::max)
    }

    /// Shares of the squared z-scores.
    pub fn contributions(&self, x: &[f64], out: &mut [f64]) {
        for (((o, v), m), s) in out.iter_mut().zip(x).zip(&self.median).zip(&self.scale) {
            *o = ((v - m) / s).powi(2);
        }
        let total: f64 = out.iter().sum();
        if total > 0.0 {
            out.iter_mut().for_each(|o| *o /= total);
        }
    }
}

/// The registry entry of `zscore`.
pub const SPEC: ModelSpec = ModelSpec {
    name: "zscore",
    aliases: &["z", "robust-z"],
    title: "Robust z-score",
    summary: "robust z-score baseline: largest distance from the training median in MADs",
    params: &Schema::<NoParams>::new(),
    default_threshold: ThresholdMethod::Pot {
        risk: 1e-4,
        level: 0.9,
    },
    reconstruction_error: false,
    build: Build::Fitted {
        fit,
        load,
        robust_refit: false,
    },
};

fn fit(_: &ParamMap, data: &[f64], dim: usize, _seed: u64) -> Result<FittedPair, FitError> {
    let m = RobustZ::fit(data, dim).ok_or(FitError::NoFeatures)?;
    let n = data.len() / dim.max(1);
    let mut scores = vec![0.0; n];
    m.score_batch(data, &mut scores);
    Ok((Box::new(m), scores))
}

fn load(bytes: &[u8]) -> Result<Box<dyn FittedModel>, String> {
    let m: RobustZ = decode_state(bytes)?;
    FittedModel::validate(&m)?;
    Ok(Box::new(m))
}

impl Detector for RobustZ {
    fn dim(&self) -> usize {
        self.median.len()
    }
    fn score(&self, x: &[f64]) -> f64 {
        RobustZ::score(self, x)
    }
    fn contributions(&self, x: &[f64], out: &mut [f64]) {
        RobustZ::contributions(self, x, out)
    }
}

impl FittedModel for RobustZ {
    fn save(&self) -> Vec<u8> {
        encode_state(self)
    }
    fn validate(&self) -> Result<(), String> {
        if self.median.len() != self.scale.len() {
            return Err("median and scale lengths differ".into());
        }
        if self.scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err("scales must be positive".into());
        }
        Ok(())
    }
    fn clone_box(&self) -> Box<dyn FittedModel> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_robust_z() {
        let data = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0, 100.0, 50.0];
        let m = RobustZ::fit(&data, 2).unwrap();
        assert_eq!(m.median, vec![3.0, 30.0]);
        assert!((m.scale[0] - MAD_TO_SD).abs() < 1e-12);
        let s = m.score(&[3.0 + 2.0 * MAD_TO_SD, 30.0]);
        assert!((s - 2.0).abs() < 1e-9);
        let mut c = [0.0; 2];
        m.contributions(&[3.0, 30.0 + 10.0 * m.scale[1]], &mut c);
        assert_eq!(c, [0.0, 1.0]);
    }

    #[test]
    fn constant_columns_get_a_usable_scale() {
        let m = RobustZ::fit(&[5.0, 5.0, 5.0, 5.0], 1).unwrap();
        assert_eq!(m.scale, vec![1.0]);
        let m = RobustZ::fit(&[5.0, 5.0, 5.0, 9.0], 1).unwrap();
        assert!(m.scale[0] > 0.0);
        assert!(RobustZ::fit(&[], 1).is_none());
    }
}
