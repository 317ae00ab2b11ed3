//! Dense autoencoder: trained to reproduce standardised rows through a narrow code, it scores a
//! row by its reconstruction error, and the per-feature squared errors explain the score.
//!
//! Default (see docs/models.md for the measurements behind it): for `d` features,
//! `d → h → c → h → d` with `h = clamp(4d, 16, 64)`, a code of `c = ceil(d / 2)`, tanh on every
//! hidden layer, a linear output, trained as a *denoising* autoencoder (inputs corrupted with
//! N(0, 1) noise, targets clean). Three choices matter:
//! - the network cannot learn the identity: the code is narrower than the input, and the
//!   denoising objective makes the identity wrong anyway (the thesis' 16-8-16 on 3 features has
//!   an 8-wide code and reproduces anomalies as well as normal rows);
//! - denoising teaches the network to pull a row back towards the data, so the reconstruction
//!   error grows with the distance from it in every direction, and the per-feature errors point
//!   at the features that moved;
//! - bounded (tanh) units keep reconstructions near the training data however far a row lies
//!   outside it: ReLU units extrapolate linearly and can faithfully reproduce a large excursion.

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::nn::{Activation, Adam, Mlp};
use crate::registry::{
    Build, Detector, FitError, FittedModel, FittedPair, InvalidParam, ModelParams, ModelSpec,
    ParamMap, Schema, decode_state, encode_state,
};
use crate::rng::Rng;
use crate::threshold::ThresholdMethod;

/// Autoencoder hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AeParams {
    /// Hidden widths from the first encoder layer to the last decoder layer (the code is one of
    /// them). Empty: the default shape for the input width.
    pub hidden: Vec<usize>,
    /// Activation of every hidden layer except the code.
    pub activation: Activation,
    /// Activation of the code (the narrowest hidden layer).
    pub code_activation: Activation,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Fraction of training rows held out for early stopping (0 disables it).
    pub validation_fraction: f64,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    /// Standard deviation of the Gaussian noise added to training inputs (denoising); 0 trains
    /// a plain autoencoder.
    pub noise: f64,
}

impl Default for AeParams {
    fn default() -> Self {
        AeParams {
            hidden: Vec::new(),
            activation: Activation::Tanh,
            code_activation: Activation::Tanh,
            epochs: 200,
            batch_size: 32,
            learning_rate: 0.01,
            validation_fraction: 0.1,
            patience: 15,
            noise: 1.0,
        }
    }
}

impl AeParams {
    /// The thesis' network: 16-8-16 ReLU, linear output, a plain (not denoising) autoencoder.
    pub fn thesis() -> Self {
        AeParams {
            hidden: vec![16, 8, 16],
            activation: Activation::Relu,
            code_activation: Activation::Relu,
            noise: 0.0,
            ..AeParams::default()
        }
    }

    /// Hidden widths for `d` input features.
    pub fn hidden_for(&self, d: usize) -> Vec<usize> {
        if !self.hidden.is_empty() {
            return self.hidden.clone();
        }
        let h = (4 * d).clamp(16, 64);
        vec![h, d.div_ceil(2).max(1), h]
    }
}

/// Errors from fitting an autoencoder.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AeError {
    #[error("autoencoder needs at least 2 training rows, got {0}")]
    TooFewRows(usize),
    #[error("autoencoder hidden layer widths must be > 0")]
    ZeroWidth,
    #[error("batch size and epochs must be > 0")]
    BadSchedule,
    #[error("training diverged (non-finite loss)")]
    Diverged,
}

/// A trained autoencoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Autoencoder {
    net: Mlp,
    /// Epochs actually run and the best validation (or training) loss, for reports.
    pub epochs_run: usize,
    pub best_loss: f64,
}

/// Rows scored together by [`Autoencoder::score_batch`].
const BLOCK: usize = 256;

impl Autoencoder {
    /// Trains on `data` (row-major standardised rows, `dim` columns), deterministically from
    /// `seed`.
    pub fn fit(data: &[f64], dim: usize, p: &AeParams, seed: u64) -> Result<Self, AeError> {
        let n = data.len().checked_div(dim).unwrap_or(0);
        if n < 2 {
            return Err(AeError::TooFewRows(n));
        }
        let hidden = p.hidden_for(dim);
        if hidden.contains(&0) {
            return Err(AeError::ZeroWidth);
        }
        if p.batch_size == 0 || p.epochs == 0 {
            return Err(AeError::BadSchedule);
        }
        let code = hidden
            .iter()
            .enumerate()
            .min_by_key(|&(i, w)| (*w, i))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let mut sizes = vec![dim];
        sizes.extend(&hidden);
        sizes.push(dim);
        let mut acts: Vec<Activation> = (0..hidden.len())
            .map(|i| {
                if i == code {
                    p.code_activation
                } else {
                    p.activation
                }
            })
            .collect();
        acts.push(Activation::Identity);

        let mut rng = Rng::new(seed);
        let mut net = Mlp::new(&sizes, &acts, &mut rng);
        let all = ArrayView2::from_shape((n, dim), data).expect("row-major data");

        // Hold out a validation split (when there is enough data for one).
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        let n_val = ((n as f64) * p.validation_fraction.clamp(0.0, 0.5)).round() as usize;
        let n_val = if n - n_val < 2 { 0 } else { n_val };
        let (val_idx, train_idx) = order.split_at(n_val);
        let val = select_rows(&all, val_idx);
        let mut train_idx = train_idx.to_vec();

        let mut opt = Adam::new(&net, p.learning_rate);
        let mut best = (f64::INFINITY, net.clone());
        let mut since_best = 0;
        let mut epochs_run = 0;
        let mut batch = Array2::<f64>::zeros((0, dim));
        for _ in 0..p.epochs {
            epochs_run += 1;
            rng.shuffle(&mut train_idx);
            let mut train_loss = 0.0;
            for chunk in train_idx.chunks(p.batch_size) {
                batch = select_rows_into(&all, chunk, batch);
                let (loss, grads) = if p.noise > 0.0 {
                    let noisy = batch.mapv(|v| v + p.noise * rng.standard_normal());
                    net.mse_and_grads(&noisy.view(), &batch.view())
                } else {
                    net.mse_and_grads(&batch.view(), &batch.view())
                };
                if !loss.is_finite() {
                    return Err(AeError::Diverged);
                }
                train_loss += loss * chunk.len() as f64;
                opt.step(&mut net, &grads);
            }
            let monitored = if n_val > 0 {
                net.mse(&val.view(), &val.view())
            } else {
                train_loss / train_idx.len() as f64
            };
            if !monitored.is_finite() {
                return Err(AeError::Diverged);
            }
            if monitored < best.0 * (1.0 - 1e-4) {
                best = (monitored, net.clone());
                since_best = 0;
            } else {
                since_best += 1;
                if p.patience > 0 && since_best >= p.patience {
                    break;
                }
            }
        }
        Ok(Autoencoder {
            net: best.1,
            epochs_run,
            best_loss: best.0,
        })
    }

    pub fn dim(&self) -> usize {
        self.net.inputs()
    }

    /// Checks that the layers chain and the output width equals the input width.
    pub fn validate(&self) -> Result<(), String> {
        let layers = &self.net.layers;
        if layers.is_empty() {
            return Err("no layers".into());
        }
        for (i, l) in layers.iter().enumerate() {
            if l.b.len() != l.outputs() {
                return Err(format!("layer {i}: bias length differs from its width"));
            }
            if i > 0 && layers[i - 1].outputs() != l.inputs() {
                return Err(format!(
                    "layer {i}: input width differs from the previous layer"
                ));
            }
        }
        if self.net.outputs() != self.net.inputs() {
            return Err("output width differs from input width".into());
        }
        Ok(())
    }

    /// The underlying network.
    pub fn network(&self) -> &Mlp {
        &self.net
    }

    /// Reconstruction of one row.
    pub fn reconstruct(&self, x: &[f64]) -> Vec<f64> {
        let v = ArrayView2::from_shape((1, x.len()), x).expect("one row");
        self.net.forward(&v).into_iter().collect()
    }

    /// Mean squared reconstruction error of one row.
    pub fn score(&self, x: &[f64]) -> f64 {
        let r = self.reconstruct(x);
        r.iter().zip(x).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / x.len() as f64
    }

    /// Scores `out.len()` rows of `xs`, a block of rows per matrix product.
    pub fn score_batch(&self, xs: &[f64], out: &mut [f64]) {
        let d = self.dim();
        assert_eq!(
            xs.len(),
            out.len() * d,
            "score_batch: rows and outputs differ"
        );
        for (rows, outs) in xs.chunks(BLOCK * d).zip(out.chunks_mut(BLOCK)) {
            let x = ArrayView2::from_shape((outs.len(), d), rows).expect("row-major block");
            let r = self.net.forward(&x);
            for ((o, rr), xr) in outs.iter_mut().zip(r.rows()).zip(x.rows()) {
                *o = rr
                    .iter()
                    .zip(xr.iter())
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    / d as f64;
            }
        }
    }

    /// Per-feature squared reconstruction errors as shares of their sum.
    pub fn contributions(&self, x: &[f64], out: &mut [f64]) {
        let r = self.reconstruct(x);
        for ((o, a), b) in out.iter_mut().zip(&r).zip(x) {
            *o = (a - b).powi(2);
        }
        let total: f64 = out.iter().sum();
        if total > 0.0 {
            out.iter_mut().for_each(|o| *o /= total);
        }
    }
}

fn select_rows(all: &ArrayView2<f64>, idx: &[usize]) -> Array2<f64> {
    select_rows_into(all, idx, Array2::zeros((0, all.ncols())))
}

fn select_rows_into(all: &ArrayView2<f64>, idx: &[usize], buf: Array2<f64>) -> Array2<f64> {
    let d = all.ncols();
    let mut v = buf.into_raw_vec_and_offset().0;
    v.clear();
    for &i in idx {
        v.extend(all.row(i).iter());
    }
    Array2::from_shape_vec((idx.len(), d), v).expect("selected rows")
}

impl ModelParams for AeParams {
    const HELP: &'static [(&'static str, &'static str)] = &[
        (
            "hidden",
            "hidden widths, e.g. [16,8,16] (the thesis' shape); empty: h,ceil(d/2),h with h = clamp(4d, 16, 64)",
        ),
        (
            "activation",
            "activation of the hidden layers: relu, tanh or identity",
        ),
        (
            "code_activation",
            "activation of the code (narrowest) layer",
        ),
        (
            "epochs",
            "maximum training epochs (early stopping on a validation split)",
        ),
        ("batch_size", "mini-batch size"),
        ("learning_rate", "Adam learning rate"),
        (
            "validation_fraction",
            "share of training rows held out for early stopping (0 disables it)",
        ),
        (
            "patience",
            "epochs without a better validation loss before stopping",
        ),
        (
            "noise",
            "standard deviation of the denoising input noise, standardised units (0: plain)",
        ),
    ];

    fn validate(&self) -> Result<(), InvalidParam> {
        if self.hidden.contains(&0) {
            return Err(InvalidParam::new("hidden", "widths must be at least 1"));
        }
        if self.epochs == 0 {
            return Err(InvalidParam::new("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(InvalidParam::new("batch_size", "must be at least 1"));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(InvalidParam::new(
                "learning_rate",
                "must be a positive number",
            ));
        }
        if !(0.0..0.9).contains(&self.validation_fraction) {
            return Err(InvalidParam::new(
                "validation_fraction",
                "must be in [0, 0.9)",
            ));
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(InvalidParam::new("noise", "must be 0 or a positive number"));
        }
        Ok(())
    }
}

impl From<AeError> for FitError {
    fn from(e: AeError) -> Self {
        FitError::Model {
            model: SPEC.name,
            reason: e.to_string(),
        }
    }
}

/// The registry entry of `ae`. Reconstruction errors have exponential-like tails: the
/// peaks-over-threshold fit.
pub const SPEC: ModelSpec = ModelSpec {
    name: "ae",
    aliases: &["autoencoder"],
    title: "Autoencoder",
    summary: "dense denoising autoencoder: score = reconstruction error",
    params: &Schema::<AeParams>::new(),
    default_threshold: ThresholdMethod::Pot {
        risk: 1e-4,
        level: 0.9,
    },
    reconstruction_error: true,
    build: Build::Fitted {
        fit,
        load,
        robust_refit: true,
    },
};

fn fit(p: &ParamMap, data: &[f64], dim: usize, seed: u64) -> Result<FittedPair, FitError> {
    let p = AeParams::from_map(SPEC.name, p)?;
    let m = Autoencoder::fit(data, dim, &p, seed)?;
    let mut scores = vec![0.0; data.len() / dim.max(1)];
    m.score_batch(data, &mut scores);
    Ok((Box::new(m), scores))
}

fn load(bytes: &[u8]) -> Result<Box<dyn FittedModel>, String> {
    let m: Autoencoder = decode_state(bytes)?;
    Autoencoder::validate(&m)?;
    Ok(Box::new(m))
}

impl Detector for Autoencoder {
    fn dim(&self) -> usize {
        Autoencoder::dim(self)
    }
    fn score(&self, x: &[f64]) -> f64 {
        Autoencoder::score(self, x)
    }
    fn score_batch(&self, xs: &[f64], out: &mut [f64]) {
        Autoencoder::score_batch(self, xs, out)
    }
    fn contributions(&self, x: &[f64], out: &mut [f64]) {
        Autoencoder::contributions(self, x, out)
    }
}

impl FittedModel for Autoencoder {
    fn save(&self) -> Vec<u8> {
        encode_state(self)
    }
    fn validate(&self) -> Result<(), String> {
        Autoencoder::validate(self)
    }
    fn clone_box(&self) -> Box<dyn FittedModel> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points on a 1-D curve embedded in 3-D, standardised-ish.
    fn manifold(n: usize, seed: u64) -> Vec<f64> {
        let mut r = Rng::new(seed);
        let mut v = Vec::with_capacity(3 * n);
        for _ in 0..n {
            let t = r.uniform_range(-1.5, 1.5);
            v.extend([t, 0.5 * t * t - 0.4, -t + 0.05 * r.standard_normal()]);
        }
        v
    }

    #[test]
    fn training_reduces_loss_and_learns_the_manifold() {
        let data = manifold(800, 1);
        let p = AeParams {
            hidden: vec![16, 1, 16],
            noise: 0.0,
            ..AeParams::default()
        };
        let untrained = {
            let mut q = p.clone();
            q.epochs = 1;
            q.learning_rate = 1e-9;
            Autoencoder::fit(&data, 3, &q, 5).unwrap()
        };
        let ae = Autoencoder::fit(&data, 3, &p, 5).unwrap();
        let mean_err = |m: &Autoencoder| data.chunks(3).map(|r| m.score(r)).sum::<f64>() / 800.0;
        let (before, after) = (mean_err(&untrained), mean_err(&ae));
        assert!(after < before / 10.0, "{before} -> {after}");
        // On the curve: small error; off it: large.
        let on = ae.score(&[0.5, 0.5 * 0.25 - 0.4, -0.5]);
        let off = ae.score(&[0.5, 1.5, 0.5]);
        assert!(off > 20.0 * on, "on {on} off {off}");
    }

    #[test]
    fn deterministic_under_seed() {
        let data = manifold(200, 2);
        let p = AeParams {
            epochs: 5,
            ..AeParams::default()
        };
        let a = Autoencoder::fit(&data, 3, &p, 9).unwrap();
        let b = Autoencoder::fit(&data, 3, &p, 9).unwrap();
        let c = Autoencoder::fit(&data, 3, &p, 10).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn batch_equals_single_and_contributions_sum_to_one() {
        let data = manifold(300, 3);
        let ae = Autoencoder::fit(
            &data,
            3,
            &AeParams {
                epochs: 10,
                ..AeParams::default()
            },
            1,
        )
        .unwrap();
        let xs = manifold(300, 4);
        let mut out = vec![0.0; 300];
        ae.score_batch(&xs, &mut out);
        for (i, s) in out.iter().enumerate() {
            assert!((s - ae.score(&xs[3 * i..3 * i + 3])).abs() < 1e-12);
        }
        let mut c = [0.0; 3];
        ae.contributions(&[5.0, 0.0, 0.0], &mut c);
        assert!((c.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(c[0] > 0.5, "{c:?}");
    }

    #[test]
    fn default_shape_has_a_narrow_bounded_code() {
        let p = AeParams::default();
        assert_eq!(p.hidden_for(3), vec![16, 2, 16]);
        assert_eq!(p.hidden_for(1), vec![16, 1, 16]);
        assert_eq!(p.hidden_for(20), vec![64, 10, 64]);
        assert_eq!(AeParams::thesis().hidden_for(3), vec![16, 8, 16]);
    }
}
