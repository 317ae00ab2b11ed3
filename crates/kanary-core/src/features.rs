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
        let n = if d == 0 { 0 } else { data.len() / d };
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
    fn median_mad_and_quantiles() {
        assert_eq!(median_mad(&[1.0, 2.0, 3.0, 4.0, 100.0]), Some((3.0, 1.0)));
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), Some(3.0));
        assert_eq!(quantile(&[0.0, 10.0], 0.25), Some(2.5));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
