//! A small temporal convolutional network (TCN) forecaster, the sequence model the thesis names
//! as future work, measured against the default detector (docs/models.md).
//!
//! Per service: the first `train` events (or the training file) fit a per-metric robust
//! standardisation and a stack of three causal dilated convolutions (kernel 3, dilations 1, 2,
//! 4: a receptive field of 15 events, `channels` wide, ReLU) with a linear head that forecasts
//! the next event's metrics from the last 15. Trained with Adam on the mean squared error.
//! Each later event is scored by its forecast residuals: per metric `|x − x̂| / σ`, σ the
//! robust scale of that metric's training residuals; the score is the largest of them, its
//! threshold a peaks-over-threshold fit on the training residual scores, mapped to
//! `z / (z + T)` so that 0.5 is the alarm level. The network does not learn after its fit.
//!
//! Gradients are checked against finite differences in the tests (over 600 lines only with
//! them).

use ndarray::{Array1, Array2, Array3};
use serde::{Deserialize, Serialize};

use crate::features::{MAD_TO_SD, median_mad};
use crate::registry::{
    Build, InvalidParam, ModelParams, ModelSpec, ParamError, ParamMap, Schema, decode_state,
    encode_state,
};
use crate::rng::Rng;
use crate::streaming::{Step, StreamingDetector, normalise_shares};
use crate::threshold::ThresholdMethod;

/// Kernel width and dilations of the three layers.
const KERNEL: usize = 3;
const DILATIONS: [usize; 3] = [1, 2, 4];
/// Events the forecast of the next one sees.
pub const RECEPTIVE: usize = 1 + (KERNEL - 1) * (1 + 2 + 4);
/// Standardised inputs are clipped to this.
const CLIP: f64 = 50.0;

/// TCN parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcnParams {
    /// Events per service to fit on (a training file may give more; the last are used).
    pub train: usize,
    /// Channels of every convolution.
    pub channels: usize,
    pub epochs: usize,
    pub learning_rate: f64,
    pub batch_size: usize,
    /// Training windows used per epoch at most (a seeded sample).
    pub max_windows: usize,
}

impl Default for TcnParams {
    fn default() -> Self {
        TcnParams {
            train: 1000,
            channels: 8,
            epochs: 10,
            learning_rate: 0.003,
            batch_size: 32,
            max_windows: 2000,
        }
    }
}

impl ModelParams for TcnParams {
    const HELP: &'static [(&'static str, &'static str)] = &[
        ("train", "events per service to fit on before scoring"),
        ("channels", "channels of each causal convolution"),
        ("epochs", "training epochs"),
        ("learning_rate", "Adam learning rate"),
        ("batch_size", "windows per Adam step"),
        ("max_windows", "training windows per epoch at most"),
    ];

    fn validate(&self) -> Result<(), InvalidParam> {
        if self.train < 2 * RECEPTIVE {
            return Err(InvalidParam::new(
                "train",
                format!("must be at least {}", 2 * RECEPTIVE),
            ));
        }
        for (k, v) in [
            ("channels", self.channels),
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("max_windows", self.max_windows),
        ] {
            if v == 0 {
                return Err(InvalidParam::new(k, "must be at least 1"));
            }
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(InvalidParam::new(
                "learning_rate",
                "must be a positive number",
            ));
        }
        Ok(())
    }
}

/// The registry entry of `tcn`.
pub const SPEC: ModelSpec = ModelSpec {
    name: "tcn",
    aliases: &["sequence"],
    title: "TCN forecaster",
    summary: "causal dilated convolutions forecast the next event; score = largest residual",
    params: &Schema::<TcnParams>::new(),
    default_threshold: ThresholdMethod::Fixed { value: 0.5 },
    reconstruction_error: false,
    build: Build::Streaming {
        new: new_streaming,
        load: load_streaming,
    },
};

fn new_streaming(
    p: &ParamMap,
    dim: usize,
    seed: u64,
) -> Result<Box<dyn StreamingDetector>, ParamError> {
    Ok(Box::new(Tcn::new(
        TcnParams::from_map(SPEC.name, p)?,
        dim,
        seed,
    )))
}

fn load_streaming(bytes: &[u8]) -> Result<Box<dyn StreamingDetector>, String> {
    let m: Tcn = decode_state(bytes)?;
    if m.center.len() != m.dim {
        return Err("tcn: state does not match its number of metrics".into());
    }
    Ok(Box::new(m))
}

/// The network: three causal dilated convolutions and a linear head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Net {
    /// Per layer: weights `[out, in, kernel]` and biases.
    pub w: Vec<Array3<f64>>,
    pub b: Vec<Array1<f64>>,
    /// Head: `[metrics, channels]` and biases.
    pub v: Array2<f64>,
    pub c: Array1<f64>,
}

/// Gradients, shaped as the network.
#[derive(Debug, Clone)]
pub struct Grads {
    pub w: Vec<Array3<f64>>,
    pub b: Vec<Array1<f64>>,
    pub v: Array2<f64>,
    pub c: Array1<f64>,
}

impl Net {
    pub fn new(metrics: usize, channels: usize, rng: &mut Rng) -> Self {
        let mut w = Vec::new();
        let mut b = Vec::new();
        let mut inputs = metrics;
        for _ in DILATIONS {
            let scale = (2.0 / (inputs * KERNEL) as f64).sqrt();
            w.push(Array3::from_shape_fn((channels, inputs, KERNEL), |_| {
                rng.normal(0.0, scale)
            }));
            b.push(Array1::zeros(channels));
            inputs = channels;
        }
        let scale = (1.0 / channels as f64).sqrt();
        Net {
            w,
            b,
            v: Array2::from_shape_fn((metrics, channels), |_| rng.normal(0.0, scale)),
            c: Array1::zeros(metrics),
        }
    }

    fn zeros_like(&self) -> Grads {
        Grads {
            w: self.w.iter().map(|w| Array3::zeros(w.raw_dim())).collect(),
            b: self.b.iter().map(|b| Array1::zeros(b.raw_dim())).collect(),
            v: Array2::zeros(self.v.raw_dim()),
            c: Array1::zeros(self.c.raw_dim()),
        }
    }

    /// Pre-activations and activations of every layer over a window `[RECEPTIVE, metrics]`.
    fn layers(&self, x: &Array2<f64>) -> (Vec<Array2<f64>>, Vec<Array2<f64>>) {
        let t_len = x.nrows();
        let mut pre = Vec::with_capacity(DILATIONS.len());
        let mut act = vec![x.clone()];
        for (l, &d) in DILATIONS.iter().enumerate() {
            let w = &self.w[l];
            let (out, inp, _) = w.dim();
            let h = &act[l];
            let mut a = Array2::zeros((t_len, out));
            for t in 0..t_len {
                for o in 0..out {
                    let mut s = self.b[l][o];
                    for k in 0..KERNEL {
                        if t < k * d {
                            break;
                        }
                        let row = h.row(t - k * d);
                        for i in 0..inp {
                            s += w[[o, i, k]] * row[i];
                        }
                    }
                    a[[t, o]] = s;
                }
            }
            let r = a.mapv(|v: f64| v.max(0.0));
            pre.push(a);
            act.push(r);
        }
        (pre, act)
    }

    /// The forecast of the event after the window.
    pub fn forward(&self, x: &Array2<f64>) -> Array1<f64> {
        let (_, act) = self.layers(x);
        let last = act[DILATIONS.len()].row(x.nrows() - 1).to_owned();
        self.v.dot(&last) + &self.c
    }

    /// Squared error `mean_j (x̂_j − y_j)²` of one window, with its gradients added to `g`.
    pub fn loss_and_grads(&self, x: &Array2<f64>, y: &Array1<f64>, g: &mut Grads) -> f64 {
        let (pre, act) = self.layers(x);
        let t_len = x.nrows();
        let top = DILATIONS.len();
        let last = act[top].row(t_len - 1).to_owned();
        let yhat = self.v.dot(&last) + &self.c;
        let m = y.len() as f64;
        let err = &yhat - y;
        let loss = err.mapv(|e| e * e).sum() / m;
        let dy = err.mapv(|e| 2.0 * e / m);
        // Head.
        for j in 0..dy.len() {
            for c in 0..last.len() {
                g.v[[j, c]] += dy[j] * last[c];
            }
            g.c[j] += dy[j];
        }
        let mut dh = Array2::<f64>::zeros((t_len, last.len()));
        let back = self.v.t().dot(&dy);
        dh.row_mut(t_len - 1).assign(&back);
        // Layers, top down.
        for l in (0..top).rev() {
            let d = DILATIONS[l];
            let w = &self.w[l];
            let (out, inp, _) = w.dim();
            let da = &dh * &pre[l].mapv(|v| if v > 0.0 { 1.0 } else { 0.0 });
            let h = &act[l];
            let mut dprev = Array2::<f64>::zeros((t_len, inp));
            for t in 0..t_len {
                for o in 0..out {
                    let g_o = da[[t, o]];
                    if g_o == 0.0 {
                        continue;
                    }
                    g.b[l][o] += g_o;
                    for k in 0..KERNEL {
                        if t < k * d {
                            break;
                        }
                        let src = t - k * d;
                        for i in 0..inp {
                            g.w[l][[o, i, k]] += g_o * h[[src, i]];
                            dprev[[src, i]] += g_o * w[[o, i, k]];
                        }
                    }
                }
            }
            dh = dprev;
        }
        loss
    }
}

/// Adam over every parameter of the network.
#[derive(Debug, Clone)]
struct Adam {
    m: Grads,
    v: Grads,
    t: i32,
    lr: f64,
}

impl Adam {
    fn new(net: &Net, lr: f64) -> Self {
        Adam {
            m: net.zeros_like(),
            v: net.zeros_like(),
            t: 0,
            lr,
        }
    }

    fn step(&mut self, net: &mut Net, g: &Grads, scale: f64) {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        self.t += 1;
        let c1 = 1.0 - B1.powi(self.t);
        let c2 = 1.0 - B2.powi(self.t);
        let lr = self.lr;
        let upd = |p: &mut f64, g: f64, m: &mut f64, v: &mut f64| {
            let g = g * scale;
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
        };
        for l in 0..net.w.len() {
            ndarray::Zip::from(&mut net.w[l])
                .and(&g.w[l])
                .and(&mut self.m.w[l])
                .and(&mut self.v.w[l])
                .for_each(|p, &g, m, v| upd(p, g, m, v));
            ndarray::Zip::from(&mut net.b[l])
                .and(&g.b[l])
                .and(&mut self.m.b[l])
                .and(&mut self.v.b[l])
                .for_each(|p, &g, m, v| upd(p, g, m, v));
        }
        ndarray::Zip::from(&mut net.v)
            .and(&g.v)
            .and(&mut self.m.v)
            .and(&mut self.v.v)
            .for_each(|p, &g, m, v| upd(p, g, m, v));
        ndarray::Zip::from(&mut net.c)
            .and(&g.c)
            .and(&mut self.m.c)
            .and(&mut self.v.c)
            .for_each(|p, &g, m, v| upd(p, g, m, v));
    }
}

/// One service's forecaster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tcn {
    params: TcnParams,
    dim: usize,
    seed: u64,
    /// Training rows (raw) until the fit.
    rows: Vec<f64>,
    /// Standardisation: centre and scale per metric.
    center: Vec<f64>,
    scale: Vec<f64>,
    net: Option<Net>,
    /// Robust scale of each metric's training residuals, and the score threshold.
    resid_scale: Vec<f64>,
    threshold: f64,
    /// The last RECEPTIVE standardised rows.
    window: Vec<f64>,
    last: Vec<f64>,
}

impl Tcn {
    pub fn new(params: TcnParams, dim: usize, seed: u64) -> Self {
        Tcn {
            params,
            dim,
            seed,
            rows: Vec::new(),
            center: Vec::new(),
            scale: Vec::new(),
            net: None,
            resid_scale: Vec::new(),
            threshold: 0.0,
            window: Vec::new(),
            last: vec![0.0; dim],
        }
    }

    fn standardise(&self, x: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(&self.center)
            .zip(&self.scale)
            .map(|((v, c), s)| ((v - c) / s).clamp(-CLIP, CLIP))
            .collect()
    }

    fn window_array(rows: &[f64], d: usize) -> Array2<f64> {
        Array2::from_shape_vec((rows.len() / d, d), rows.to_vec()).expect("whole rows")
    }

    /// Fits the standardisation, the network, the residual scales and the threshold.
    fn fit(&mut self) {
        let d = self.dim;
        let n = self.rows.len() / d;
        self.center = vec![0.0; d];
        self.scale = vec![1.0; d];
        for j in 0..d {
            let col: Vec<f64> = (0..n).map(|i| self.rows[i * d + j]).collect();
            if let Some((med, mad)) = median_mad(&col) {
                self.center[j] = med;
                let s = mad * MAD_TO_SD;
                let sd = {
                    let mean = col.iter().sum::<f64>() / n as f64;
                    (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
                };
                self.scale[j] = if s > 0.0 && s.is_finite() {
                    s
                } else if sd > 0.0 && sd.is_finite() {
                    sd
                } else {
                    1.0
                };
            }
        }
        let z: Vec<f64> = self
            .rows
            .chunks_exact(d)
            .flat_map(|r| self.standardise(r))
            .collect();
        let mut rng = Rng::new(self.seed ^ 0x7c4);
        let mut net = Net::new(d, self.params.channels, &mut rng);
        let mut adam = Adam::new(&net, self.params.learning_rate);
        // Windows ending at t, forecasting t + 1.
        let starts: Vec<usize> = (0..n.saturating_sub(RECEPTIVE)).collect();
        for _ in 0..self.params.epochs {
            let mut order = starts.clone();
            rng.shuffle(&mut order);
            order.truncate(self.params.max_windows);
            for batch in order.chunks(self.params.batch_size) {
                let mut g = net.zeros_like();
                for &s in batch {
                    let x = Self::window_array(&z[s * d..(s + RECEPTIVE) * d], d);
                    let y = Array1::from(z[(s + RECEPTIVE) * d..(s + RECEPTIVE + 1) * d].to_vec());
                    net.loss_and_grads(&x, &y, &mut g);
                }
                adam.step(&mut net, &g, 1.0 / batch.len() as f64);
            }
        }
        // Residuals of the training windows: their scale per metric and the score threshold.
        let mut resid = vec![Vec::with_capacity(starts.len()); d];
        for &s in &starts {
            let x = Self::window_array(&z[s * d..(s + RECEPTIVE) * d], d);
            let f = net.forward(&x);
            for j in 0..d {
                resid[j].push(z[(s + RECEPTIVE) * d + j] - f[j]);
            }
        }
        self.resid_scale = resid
            .iter()
            .map(|r| {
                let s = median_mad(r).map_or(1.0, |(_, mad)| mad * MAD_TO_SD);
                if s > 1e-3 && s.is_finite() { s } else { 1e-3 }
            })
            .collect();
        let scores: Vec<f64> = (0..starts.len())
            .map(|i| {
                (0..d)
                    .map(|j| (resid[j][i] / self.resid_scale[j]).abs())
                    .fold(0.0, f64::max)
            })
            .collect();
        self.threshold = ThresholdMethod::default()
            .fit(&scores)
            .ok()
            .filter(|t| t.is_finite() && *t > 0.0)
            .unwrap_or(6.0);
        let params_ok = net.v.iter().all(|v| v.is_finite());
        self.net = params_ok.then_some(net);
        // The window continues from the end of the training rows.
        self.window = z[(n - RECEPTIVE.min(n)) * d..].to_vec();
        self.rows = Vec::new();
    }

    fn push_window(&mut self, z: &[f64]) {
        self.window.extend_from_slice(z);
        let keep = RECEPTIVE * self.dim;
        if self.window.len() > keep {
            self.window.drain(..self.window.len() - keep);
        }
    }

    fn take(&mut self, x: &[f64]) -> Option<f64> {
        if self.center.is_empty() {
            self.rows.extend_from_slice(x);
            if self.rows.len() / self.dim.max(1) >= self.params.train {
                self.fit();
            }
            return None;
        }
        let z = self.standardise(x);
        let score = match &self.net {
            Some(net) if self.window.len() == RECEPTIVE * self.dim => {
                let f = net.forward(&Self::window_array(&self.window, self.dim));
                let mut worst = 0.0f64;
                for j in 0..self.dim {
                    let r = ((z[j] - f[j]) / self.resid_scale[j]).abs();
                    self.last[j] = if r.is_finite() { r } else { 0.0 };
                    worst = worst.max(self.last[j]);
                }
                Some(worst)
            }
            _ => None,
        };
        self.push_window(&z);
        score
    }
}

impl StreamingDetector for Tcn {
    fn dim(&self) -> usize {
        self.dim
    }

    /// Training rows (up to `train`, the most recent kept) are what the network is fitted on.
    fn learn(&mut self, _ts: f64, x: &[f64]) {
        if self.center.is_empty() {
            self.rows.extend_from_slice(x);
            let keep = self.params.train * self.dim;
            if self.rows.len() > 4 * keep {
                self.rows.drain(..self.rows.len() - keep);
            }
            return;
        }
        self.take(x);
    }

    fn step(&mut self, _ts: f64, x: &[f64]) -> Step {
        if self.center.is_empty() && self.rows.len() / self.dim.max(1) >= self.params.train {
            // A training file filled the rows: fit on the most recent `train` of them.
            let keep = self.params.train * self.dim;
            if self.rows.len() > keep {
                self.rows.drain(..self.rows.len() - keep);
            }
            self.fit();
        }
        self.last.iter_mut().for_each(|v| *v = 0.0);
        match self.take(x) {
            Some(z) => {
                let flagged = z >= self.threshold;
                Step {
                    score: (z / (z + self.threshold)).clamp(0.0, 1.0),
                    flagged,
                    alarm_start: flagged,
                }
            }
            None => Step {
                score: 0.0,
                flagged: false,
                alarm_start: false,
            },
        }
    }

    fn contributions(&self, out: &mut [f64]) {
        out.copy_from_slice(&self.last);
        normalise_shares(out);
    }

    fn threshold(&self) -> f64 {
        0.5
    }

    fn clone_box(&self) -> Box<dyn StreamingDetector> {
        Box::new(self.clone())
    }

    fn save(&self) -> Vec<u8> {
        encode_state(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every parameter's gradient against a central finite difference.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = Rng::new(3);
        let (m, ch) = (3, 4);
        let net = Net::new(m, ch, &mut rng);
        // Inputs that keep most units active, so the check covers the ReLU's slope.
        let x = Array2::from_shape_fn((RECEPTIVE, m), |_| rng.normal(0.5, 1.0));
        let y = Array1::from_shape_fn(m, |_| rng.normal(0.0, 1.0));
        let mut g = net.zeros_like();
        net.loss_and_grads(&x, &y, &mut g);
        let eps = 1e-6;
        let loss = |n: &Net| {
            let mut scratch = n.zeros_like();
            n.loss_and_grads(&x, &y, &mut scratch)
        };
        let check = |analytic: f64, plus: Net, minus: Net, what: &str| {
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * eps);
            assert!(
                (analytic - numeric).abs() <= 1e-5 * (1.0 + numeric.abs()),
                "{what}: analytic {analytic} numeric {numeric}"
            );
        };
        for l in 0..DILATIONS.len() {
            for (idx, &ga) in g.w[l].indexed_iter() {
                let (mut p, mut q) = (net.clone(), net.clone());
                p.w[l][idx] += eps;
                q.w[l][idx] -= eps;
                check(ga, p, q, &format!("w[{l}]{idx:?}"));
            }
            for (idx, &ga) in g.b[l].indexed_iter() {
                let (mut p, mut q) = (net.clone(), net.clone());
                p.b[l][idx] += eps;
                q.b[l][idx] -= eps;
                check(ga, p, q, &format!("b[{l}][{idx}]"));
            }
        }
        for (idx, &ga) in g.v.indexed_iter() {
            let (mut p, mut q) = (net.clone(), net.clone());
            p.v[idx] += eps;
            q.v[idx] -= eps;
            check(ga, p, q, &format!("v{idx:?}"));
        }
        for (idx, &ga) in g.c.indexed_iter() {
            let (mut p, mut q) = (net.clone(), net.clone());
            p.c[idx] += eps;
            q.c[idx] -= eps;
            check(ga, p, q, &format!("c[{idx}]"));
        }
    }

    #[test]
    fn the_output_is_causal() {
        // Changing the oldest row of a window changes the forecast only through the
        // receptive field; a row after the window never reaches it.
        let mut rng = Rng::new(4);
        let net = Net::new(2, 4, &mut rng);
        let x = Array2::from_shape_fn((RECEPTIVE, 2), |_| rng.normal(0.0, 1.0));
        let mut longer = Array2::zeros((RECEPTIVE + 3, 2));
        longer.slice_mut(ndarray::s![3.., ..]).assign(&x);
        // The extra leading rows lie outside the receptive field of the last output.
        let a = net.forward(&x);
        let b = net.forward(&longer);
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() < 1e-12);
        }
    }

    #[test]
    fn training_lowers_the_forecast_error_and_a_broken_pattern_scores_high() {
        // A clean periodic signal in two metrics: forecastable.
        let p = TcnParams {
            train: 600,
            epochs: 15,
            ..TcnParams::default()
        };
        let mut t = Tcn::new(p, 2, 1);
        let mut rng = Rng::new(9);
        let signal = |i: usize| {
            let ph = 2.0 * std::f64::consts::PI * (i % 24) as f64 / 24.0;
            [10.0 + 3.0 * ph.sin(), 5.0 + 2.0 * ph.cos()]
        };
        let mut scores = Vec::new();
        for i in 0..900 {
            let mut x = signal(i);
            x[0] += rng.normal(0.0, 0.05);
            scores.push(t.step(i as f64, &x).score);
        }
        let net = t.net.as_ref().expect("fitted");
        // The network forecasts far better than predicting zero (the standardised mean).
        let z: Vec<f64> = (876..876 + RECEPTIVE)
            .flat_map(|i| t.standardise(&signal(i)))
            .collect();
        let f = net.forward(&Tcn::window_array(&z, 2));
        let target = t.standardise(&signal(876 + RECEPTIVE));
        let err: f64 = f.iter().zip(&target).map(|(a, b)| (a - b).powi(2)).sum();
        let base: f64 = target.iter().map(|b| b * b).sum();
        assert!(err < 0.1 * base, "error {err} vs {base}");
        // A value off the pattern scores above the ordinary ones.
        let ordinary = scores[700..].iter().cloned().fold(0.0, f64::max);
        let mut x = signal(900);
        x[1] += 3.0;
        let s = t.step(900.0, &x);
        assert!(s.score > ordinary && s.flagged, "{s:?} vs {ordinary}");
        let mut c = [0.0; 2];
        t.contributions(&mut c);
        assert!(c[1] > c[0], "{c:?}");
    }
}
