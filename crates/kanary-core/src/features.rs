//! Feature vectors: standardisation and per-service sliding-window features.
//!
//! Data passed between the pieces of the core is row-major: `n` rows of `d` features in one
//! `&[f64]` of length `n * d`.

use serde::{Deserialize, Serialize};

/// Removes the mean and scales to unit variance per feature (population standard deviation,
/// as scikit-learn's `StandardScaler`). A constant feature keeps scale 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl StandardScaler {
    /// Fits on `data` (row-major, `d` columns). With no rows, the identity transform.
    pub fn fit(data: &[f64], d: usize) -> Self {
        let n = data.len().checked_div(d).unwrap_or(0);
        let mut mean = vec![0.0; d];
        let mut m2 = vec![0.0; d];
        // Welford's algorithm: stable for large offsets (timestamps, memory in bytes).
        for (i, row) in data.chunks_exact(d.max(1)).take(n).enumerate() {
            let k = (i + 1) as f64;
            for j in 0..d {
                let delta = row[j] - mean[j];
                mean[j] += delta / k;
                m2[j] += delta * (row[j] - mean[j]);
            }
        }
        let scale = m2
            .iter()
            .map(|&s| {
                let sd = if n > 0 { (s / n as f64).sqrt() } else { 0.0 };
                if sd > f64::EPSILON * 1e3 && sd.is_finite() {
                    sd
                } else {
                    1.0
                }
            })
            .collect();
        StandardScaler { mean, scale }
    }

    /// The identity transform on `d` features.
    pub fn identity(d: usize) -> Self {
        StandardScaler {
            mean: vec![0.0; d],
            scale: vec![1.0; d],
        }
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Standardises one row in place.
    #[inline]
    pub fn transform_row(&self, row: &mut [f64]) {
        for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
            *x = (*x - m) / s;
        }
    }

    /// Standardises every row of `data` in place.
    pub fn transform(&self, data: &mut [f64]) {
        let d = self.dim();
        if d == 0 {
            return;
        }
        for row in data.chunks_exact_mut(d) {
            self.transform_row(row);
        }
    }

    /// Maps one standardised row back to the original units in place.
    pub fn inverse_row(&self, row: &mut [f64]) {
        for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
            *x = *x * s + m;
        }
    }
}

/// Sliding-window features, computed per service from its recent events: univariate streams
/// need context (a value is anomalous relative to its neighbours, not on its own).
///
/// For each input feature `f` and each window length `L` (in events) the extractor can emit:
/// the value itself (`f`), the change from the previous event (`f.d1`), the rolling mean and
/// standard deviation over the last `L` events (`f.meanL`, `f.stdL`), the value's z-score
/// against the `L` events before it (`f.zL`), and the rate of change over `L` events
/// (`f.rocL`, `(x_t − x_{t−L}) / L`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WindowSpec {
    pub lengths: Vec<usize>,
    pub value: bool,
    pub delta: bool,
    pub mean: bool,
    pub std: bool,
    pub zscore: bool,
    pub rate: bool,
}

impl Default for WindowSpec {
    fn default() -> Self {
        WindowSpec {
            lengths: vec![8, 32, 128],
            value: true,
            delta: true,
            mean: false,
            std: false,
            zscore: true,
            rate: false,
        }
    }
}

/// Error for a window specification that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window lengths must be at least 2, got {0}")]
    TooShort(usize),
    #[error("a window must emit at least one feature")]
    Empty,
}

impl WindowSpec {
    pub fn validate(&self) -> Result<(), WindowError> {
        if let Some(&l) = self.lengths.iter().find(|&&l| l < 2) {
            return Err(WindowError::TooShort(l));
        }
        let per_len = self.mean || self.std || self.zscore || self.rate;
        if !(self.value || self.delta || (per_len && !self.lengths.is_empty())) {
            return Err(WindowError::Empty);
        }
        Ok(())
    }

    /// Events of history needed before every feature is defined.
    pub fn history(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(1).max(1) + 1
    }

    /// Names of the derived features, in output order.
    pub fn names(&self, base: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for f in base {
            if self.value {
                out.push(f.clone());
            }
            if self.delta {
                out.push(format!("{f}.d1"));
            }
            for l in &self.lengths {
                if self.mean {
                    out.push(format!("{f}.mean{l}"));
                }
                if self.std {
                    out.push(format!("{f}.std{l}"));
                }
                if self.zscore {
                    out.push(format!("{f}.z{l}"));
                }
                if self.rate {
                    out.push(format!("{f}.roc{l}"));
                }
            }
        }
        out
    }
}

/// The running state of a [`WindowSpec`] for one service: a ring of recent raw rows.
#[derive(Debug, Clone)]
pub struct WindowState {
    spec: WindowSpec,
    dim: usize,
    cap: usize,
    /// Ring of the last `cap` raw rows (row-major).
    ring: Vec<f64>,
    /// Rows pushed so far.
    seen: usize,
}

impl WindowState {
    /// Heap bytes of the ring.
    pub fn bytes(&self) -> usize {
        self.ring.capacity() * 8
    }

    pub fn new(spec: WindowSpec, dim: usize) -> Self {
        let cap = spec.history();
        WindowState {
            spec,
            dim,
            cap,
            ring: vec![0.0; cap * dim],
            seen: 0,
        }
    }

    /// Row `back` events ago (0 = the latest pushed), feature `f`.
    fn at(&self, back: usize, f: usize) -> f64 {
        let slot = (self.seen - 1 - back) % self.cap;
        self.ring[slot * self.dim + f]
    }

    /// Adds the raw row `x` and writes its derived features to `out` (cleared first). Returns
    /// false while the history is too short for every feature (`out` is then left empty).
    pub fn push(&mut self, x: &[f64], out: &mut Vec<f64>) -> bool {
        debug_assert_eq!(x.len(), self.dim);
        let slot = self.seen % self.cap;
        self.ring[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(x);
        self.seen += 1;
        out.clear();
        if self.seen < self.cap {
            return false;
        }
        for (f, &v) in x.iter().enumerate() {
            if self.spec.value {
                out.push(v);
            }
            if self.spec.delta {
                out.push(v - self.at(1, f));
            }
            for &l in &self.spec.lengths {
                // Statistics of the l events before this one (so a spike does not dilute its
                // own baseline), computed two-pass for accuracy.
                let mean = (1..=l).map(|b| self.at(b, f)).sum::<f64>() / l as f64;
                let var = (1..=l).map(|b| (self.at(b, f) - mean).powi(2)).sum::<f64>() / l as f64;
                let sd = var.sqrt();
                if self.spec.mean {
                    out.push(mean);
                }
                if self.spec.std {
                    out.push(sd);
                }
                if self.spec.zscore {
                    // A floor on the spread keeps flat stretches from dividing by zero.
                    let floor = 1e-3 * mean.abs().max(1e-3);
                    out.push((v - mean) / sd.max(floor));
                }
                if self.spec.rate {
                    out.push((v - self.at(l, f)) / l as f64);
                }
            }
        }
        true
    }
}

/// Median of a slice (NaN-free); `None` when empty. Reorders the slice.
pub fn median_in_place(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len();
    let mid = n / 2;
    let (_, &mut hi, _) = xs.select_nth_unstable_by(mid, f64::total_cmp);
    if n % 2 == 1 {
        Some(hi)
    } else {
        let lo = xs[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((lo + hi) / 2.0)
    }
}

/// Scale factor that makes the MAD a consistent estimator of a normal standard deviation.
pub const MAD_TO_SD: f64 = 1.482_602_218_505_602;

/// Median and median absolute deviation of `xs` (unscaled MAD).
pub fn median_mad(xs: &[f64]) -> Option<(f64, f64)> {
    let mut v = xs.to_vec();
    let med = median_in_place(&mut v)?;
    for x in v.iter_mut() {
        *x = (*x - med).abs();
    }
    let mad = median_in_place(&mut v)?;
    Some((med, mad))
}

/// The `q` quantile (0..=1) of `xs` with linear interpolation (NumPy's default); `None` when
/// empty.
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    Some(quantile_sorted(&v, q))
}

/// The `q` quantile of an ascending, non-empty slice, linear interpolation.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let q = q.clamp(0.0, 1.0);
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_matches_population_moments() {
        let data = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0];
        let s = StandardScaler::fit(&data, 2);
        assert!((s.mean[0] - 2.5).abs() < 1e-12);
        assert!((s.mean[1] - 25.0).abs() < 1e-12);
        assert!((s.scale[0] - 1.25f64.sqrt()).abs() < 1e-12);
        assert!((s.scale[1] - 125f64.sqrt()).abs() < 1e-12);
        let mut t = data;
        s.transform(&mut t);
        let m0: f64 = t.iter().step_by(2).sum::<f64>() / 4.0;
        assert!(m0.abs() < 1e-12);
        let mut row = [t[2], t[3]];
        s.inverse_row(&mut row);
        assert!((row[0] - 2.0).abs() < 1e-12 && (row[1] - 20.0).abs() < 1e-12);
    }

    #[test]
    fn constant_feature_keeps_unit_scale() {
        let s = StandardScaler::fit(&[5.0, 5.0, 5.0], 1);
        assert_eq!(s.scale, vec![1.0]);
        let mut r = [5.0];
        s.transform_row(&mut r);
        assert_eq!(r, [0.0]);
    }

    #[test]
    fn window_features_by_hand() {
        let spec = WindowSpec {
            lengths: vec![2],
            value: true,
            delta: true,
            mean: true,
            std: true,
            zscore: true,
            rate: true,
        };
        spec.validate().unwrap();
        assert_eq!(
            spec.names(&["v".to_string()]),
            ["v", "v.d1", "v.mean2", "v.std2", "v.z2", "v.roc2"]
        );
        let mut w = WindowState::new(spec, 1);
        let mut out = Vec::new();
        assert!(!w.push(&[1.0], &mut out));
        assert!(!w.push(&[3.0], &mut out));
        assert!(out.is_empty());
        assert!(w.push(&[8.0], &mut out));
        // Previous two: 1, 3 -> mean 2, sd 1; z = (8 - 2)/1; roc = (8 - 1)/2.
        assert_eq!(out, vec![8.0, 5.0, 2.0, 1.0, 6.0, 3.5]);
        assert!(w.push(&[8.0], &mut out));
        // Previous two: 3, 8 -> mean 5.5, sd 2.5.
        assert_eq!(out, vec![8.0, 0.0, 5.5, 2.5, 1.0, 2.5]);
    }

    #[test]
    fn window_specs_are_checked() {
        let bad = WindowSpec {
            lengths: vec![1],
            ..WindowSpec::default()
        };
        assert_eq!(bad.validate(), Err(WindowError::TooShort(1)));
        let empty = WindowSpec {
            lengths: vec![],
            value: false,
            delta: false,
            ..WindowSpec::default()
        };
        assert_eq!(empty.validate(), Err(WindowError::Empty));
        // Flat stretches give finite z-scores.
        let mut w = WindowState::new(WindowSpec::default(), 1);
        let mut out = Vec::new();
        for _ in 0..200 {
            w.push(&[5.0], &mut out);
        }
        assert!(out.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn median_mad_and_quantiles() {
        assert_eq!(median_mad(&[1.0, 2.0, 3.0, 4.0, 100.0]), Some((3.0, 1.0)));
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), Some(3.0));
        assert_eq!(quantile(&[0.0, 10.0], 0.25), Some(2.5));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
