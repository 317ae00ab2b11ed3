//! Turning scores into decisions without labels.
//!
//! A threshold is fitted on the scores a model gives its own training data (which may hold a
//! few unlabelled anomalies): an event is flagged when its score is at or above it. Labels are
//! never used here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::features::{MAD_TO_SD, median_mad, quantile_sorted};

/// How a threshold is chosen from training scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMethod {
    /// The thesis' rule: flag the top `rate` fraction of training scores (the `1 - rate`
    /// quantile). Needs a guess of the anomaly rate.
    Contamination { rate: f64 },
    /// `median + k · σ̂` with σ̂ the scaled MAD of the training scores.
    Mad { k: f64 },
    /// Peaks over threshold (after Siffer et al., KDD 2017): an exponential tail fitted to the
    /// training scores above their `level` quantile, extrapolated to the score an ordinary event
    /// exceeds with probability `risk`. The tail is fitted robustly (median of the excesses),
    /// so a few anomalies in the training data do not inflate it. Needs no guess of the
    /// anomaly rate.
    Pot { risk: f64, level: f64 },
    /// A fixed score.
    Fixed { value: f64 },
}

impl Default for ThresholdMethod {
    fn default() -> Self {
        ThresholdMethod::Pot {
            risk: 1e-4,
            level: 0.9,
        }
    }
}

/// Errors from fitting or parsing a threshold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ThresholdError {
    #[error("no training scores to fit a threshold on")]
    NoScores,
    #[error(
        "invalid threshold spec `{0}`: expected pot[:RISK], mad[:K], contamination:RATE or fixed:VALUE"
    )]
    BadSpec(String),
    #[error("threshold parameter out of range: {0}")]
    OutOfRange(String),
}

impl ThresholdMethod {
    /// Checks the parameters' ranges.
    pub fn validate(&self) -> Result<(), ThresholdError> {
        let bad = |m: &str| Err(ThresholdError::OutOfRange(m.to_string()));
        match *self {
            ThresholdMethod::Contamination { rate } if !(rate > 0.0 && rate < 0.5) => {
                bad("contamination rate must be in (0, 0.5)")
            }
            ThresholdMethod::Mad { k } if !(k > 0.0 && k.is_finite()) => bad("mad k must be > 0"),
            ThresholdMethod::Pot { risk, level }
                if !(risk > 0.0 && risk < 1.0 - level && level > 0.5 && level < 1.0) =>
            {
                bad("pot needs 0.5 < level < 1 and 0 < risk < 1 - level")
            }
            ThresholdMethod::Fixed { value } if !value.is_finite() => {
                bad("fixed threshold must be finite")
            }
            _ => Ok(()),
        }
    }

    /// The threshold for these training scores.
    pub fn fit(&self, scores: &[f64]) -> Result<f64, ThresholdError> {
        self.validate()?;
        let mut sorted: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
        if sorted.is_empty() {
            return match *self {
                ThresholdMethod::Fixed { value } => Ok(value),
                _ => Err(ThresholdError::NoScores),
            };
        }
        sorted.sort_unstable_by(f64::total_cmp);
        Ok(match *self {
            ThresholdMethod::Contamination { rate } => quantile_sorted(&sorted, 1.0 - rate),
            ThresholdMethod::Mad { k } => {
                let (med, mad) = median_mad(&sorted).ok_or(ThresholdError::NoScores)?;
                med + k * mad * MAD_TO_SD
            }
            ThresholdMethod::Pot { risk, level } => pot_threshold(&sorted, risk, level),
            ThresholdMethod::Fixed { value } => value,
        })
    }
}

/// Peaks-over-threshold extrapolation on ascending scores.
///
/// Excesses `y = s - u` over the `level` quantile `u` are modelled as exponential, the
/// generalised Pareto tail with shape 0 (the domain of light-tailed scores such as squared
/// errors and path-length scores). Its scale is estimated from the *median* excess
/// (`σ = median / ln 2`), not the mean, so the handful of true anomalies a training window may
/// hold (which sit at the very top of the excesses) barely move it; a fitted shape would be far
/// noisier on a thousand training scores than the bias it removes. The threshold is the score
/// an ordinary event exceeds with probability `risk`: `u + σ · ln(n_u / (n · risk))`.
fn pot_threshold(sorted: &[f64], risk: f64, level: f64) -> f64 {
    let n = sorted.len();
    let u = quantile_sorted(sorted, level);
    let excesses: Vec<f64> = sorted.iter().map(|s| s - u).filter(|&y| y > 0.0).collect();
    let top = sorted[n - 1];
    if excesses.len() < 5 {
        // Too few points above the initial level to fit a tail: use the largest score.
        return top.max(u);
    }
    let sigma = quantile_sorted(&excesses, 0.5) / std::f64::consts::LN_2;
    let tail_fraction = excesses.len() as f64 / n as f64;
    let z = u + sigma * (tail_fraction / risk).max(1.0).ln();
    if z.is_finite() { z } else { top }
}

impl fmt::Display for ThresholdMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThresholdMethod::Contamination { rate } => write!(f, "contamination:{rate}"),
            ThresholdMethod::Mad { k } => write!(f, "mad:{k}"),
            ThresholdMethod::Pot { risk, .. } => write!(f, "pot:{risk}"),
            ThresholdMethod::Fixed { value } => write!(f, "fixed:{value}"),
        }
    }
}

impl FromStr for ThresholdMethod {
    type Err = ThresholdError;

    /// `pot`, `pot:RISK`, `mad`, `mad:K`, `contamination:RATE`, `fixed:VALUE`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ThresholdError::BadSpec(s.to_string());
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a.parse::<f64>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let m = match (name, arg) {
            ("pot", r) => {
                let ThresholdMethod::Pot { risk, level } = ThresholdMethod::default() else {
                    unreachable!()
                };
                ThresholdMethod::Pot {
                    risk: r.unwrap_or(risk),
                    level,
                }
            }
            ("mad", k) => ThresholdMethod::Mad {
                k: k.unwrap_or(3.0),
            },
            ("contamination", Some(rate)) => ThresholdMethod::Contamination { rate },
            ("fixed", Some(value)) => ThresholdMethod::Fixed { value },
            _ => return Err(bad()),
        };
        m.validate()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn contamination_is_a_quantile() {
        let scores: Vec<f64> = (0..=100).map(|i| i as f64).collect();
        let t = ThresholdMethod::Contamination { rate: 0.02 }
            .fit(&scores)
            .unwrap();
        assert!((t - 98.0).abs() < 1e-9);
    }

    #[test]
    fn mad_rule() {
        let t = ThresholdMethod::Mad { k: 3.0 }
            .fit(&[1.0, 2.0, 3.0, 4.0, 100.0])
            .unwrap();
        assert!((t - (3.0 + 3.0 * MAD_TO_SD)).abs() < 1e-9);
    }

    #[test]
    fn pot_recovers_an_exponential_tail() {
        // Exponential(1) scores: P(S > z) = e^-z, so the 1e-4 risk threshold is ln(1e4) ≈ 9.21.
        let mut r = Rng::new(11);
        let scores: Vec<f64> = (0..20_000).map(|_| r.exponential(1.0)).collect();
        let t = ThresholdMethod::Pot {
            risk: 1e-4,
            level: 0.9,
        }
        .fit(&scores)
        .unwrap();
        assert!((t - 1e4f64.ln()).abs() < 0.8, "{t}");
    }

    #[test]
    fn pot_barely_moves_with_a_few_huge_outliers() {
        let mut r = Rng::new(12);
        let mut scores: Vec<f64> = (0..1000).map(|_| r.normal(0.45, 0.03)).collect();
        let clean = ThresholdMethod::default().fit(&scores).unwrap();
        for _ in 0..10 {
            scores.push(r.normal(0.75, 0.05));
        }
        let dirty = ThresholdMethod::default().fit(&scores).unwrap();
        assert!(clean > 0.5 && clean < 0.65, "{clean}");
        assert!((dirty - clean).abs() < 0.03, "{clean} -> {dirty}");
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(
            "contamination:0.02".parse::<ThresholdMethod>().unwrap(),
            ThresholdMethod::Contamination { rate: 0.02 }
        );
        assert_eq!(
            "mad:5".parse::<ThresholdMethod>().unwrap(),
            ThresholdMethod::Mad { k: 5.0 }
        );
        assert!(matches!(
            "pot".parse::<ThresholdMethod>().unwrap(),
            ThresholdMethod::Pot { .. }
        ));
        assert!("contamination".parse::<ThresholdMethod>().is_err());
        assert!("contamination:0.7".parse::<ThresholdMethod>().is_err());
        assert!("bogus:1".parse::<ThresholdMethod>().is_err());
        assert_eq!(
            ThresholdMethod::Mad { k: 4.0 }
                .to_string()
                .parse::<ThresholdMethod>(),
            Ok(ThresholdMethod::Mad { k: 4.0 })
        );
    }

    #[test]
    fn empty_scores_are_an_error() {
        assert_eq!(
            ThresholdMethod::default().fit(&[]),
            Err(ThresholdError::NoScores)
        );
        assert_eq!(ThresholdMethod::Fixed { value: 0.6 }.fit(&[]), Ok(0.6));
    }
}
