//! Half-Space Trees (Tan, Ting & Liu, "Fast Anomaly Detection for Streaming Data", IJCAI
//! 2011): a streaming model whose behaviour follows River's `HalfSpaceTrees`.
//!
//! Each tree splits the (scaled) input space in half at every node, on a random feature, at the
//! middle of the node's work range; the work range of each feature is the unit interval
//! stretched around a random point, so that values beyond the learnt limits still fall in a
//! half. Every node counts how many events of the *latest* window reached it (`l_mass`); when a
//! window of `window` events is full, those counts become the *reference* mass (`r_mass`) and
//! the latest counts restart. An event's raw score sums, along its path in each tree, the
//! reference mass times `2^depth`, stopping at the first node whose reference mass is below
//! `size_limit · window`; `1 − sum / max` is high where few recent events went.
//!
//! Two choices differ from River, both because kanary feeds raw telemetry rather than features
//! scaled to [0, 1]: the per-feature limits are learnt from the first window (River takes them
//! as a parameter), and the raw score is normalised by its record ratio (the largest raw score
//! of the previous `horizon` events, as `novelty` does), so the threshold 0.5 means the same on
//! every series. No event is flagged before the first reference window exists.
//!
//! Contributions: on each tree's path, every split is credited with the share of reference
//! mass it cut away (`r_mass(parent) − r_mass(child)`), summed over trees per feature.

use serde::{Deserialize, Serialize};

use crate::models::novelty::{NoveltyParams, RecordRatio};
use crate::registry::{
    Build, InvalidParam, ModelParams, ModelSpec, ParamError, ParamMap, Schema, decode_state,
    encode_state,
};
use crate::rng::Rng;
use crate::streaming::{Step, StreamingDetector, normalise_shares};
use crate::threshold::ThresholdMethod;

/// Half-Space Trees parameters (River's defaults where River has them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HstParams {
    /// Number of trees.
    pub trees: usize,
    /// Depth of every tree.
    pub height: u32,
    /// Events per window (reference and latest mass).
    pub window: usize,
    /// A path stops at a node whose reference mass is below this share of a window.
    pub size_limit: f64,
    /// Alarm level of the record ratio of the raw score (lower flags more).
    pub alert: f64,
    /// Events after an alarm during which no new alarm is raised.
    pub cooldown: usize,
    /// The record is the largest raw score over this many previous events.
    pub horizon: usize,
}

impl Default for HstParams {
    fn default() -> Self {
        HstParams {
            trees: 10,
            height: 8,
            window: 250,
            size_limit: 0.1,
            alert: 1.05,
            cooldown: 20,
            horizon: 4032,
        }
    }
}

impl ModelParams for HstParams {
    const HELP: &'static [(&'static str, &'static str)] = &[
        ("trees", "number of trees"),
        ("height", "depth of every tree (at most 16)"),
        (
            "window",
            "events per window: the reference mass is the previous window's",
        ),
        (
            "size_limit",
            "a path stops at a node with less than this share of a window's mass",
        ),
        (
            "alert",
            "alarm level of the raw score's record ratio (1.05: 5% beyond every recent score)",
        ),
        (
            "cooldown",
            "events after an alarm during which no new alarm is raised",
        ),
        (
            "horizon",
            "the record is the largest raw score over this many previous events",
        ),
    ];

    fn validate(&self) -> Result<(), InvalidParam> {
        if self.trees == 0 {
            return Err(InvalidParam::new("trees", "must be at least 1"));
        }
        if !(1..=16).contains(&self.height) {
            return Err(InvalidParam::new("height", "must be in 1..=16"));
        }
        if self.window < 2 {
            return Err(InvalidParam::new("window", "must be at least 2"));
        }
        if !(0.0..1.0).contains(&self.size_limit) {
            return Err(InvalidParam::new("size_limit", "must be in [0, 1)"));
        }
        if !(self.alert > 0.0 && self.alert.is_finite()) {
            return Err(InvalidParam::new("alert", "must be a positive number"));
        }
        if self.horizon == 0 {
            return Err(InvalidParam::new("horizon", "must be at least 1"));
        }
        Ok(())
    }
}

/// The registry entry of `hst`.
pub const SPEC: ModelSpec = ModelSpec {
    name: "hst",
    aliases: &["half-space-trees"],
    title: "Half-Space Trees",
    summary: "Half-Space Trees: events that land where few recent events went score high",
    params: &Schema::<HstParams>::new(),
    default_threshold: ThresholdMethod::Fixed {
        value: NoveltyParams::THRESHOLD,
    },
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
    Ok(Box::new(HalfSpaceTrees::new(
        HstParams::from_map(SPEC.name, p)?,
        dim,
        seed,
    )))
}

fn load_streaming(bytes: &[u8]) -> Result<Box<dyn StreamingDetector>, String> {
    let m: HalfSpaceTrees = decode_state(bytes)?;
    let nodes = (1usize << (m.params.height + 1)) - 1;
    if m.split.len() != m.params.trees * nodes || m.r_mass.len() != m.split.len() {
        return Err("half-space trees: node arrays do not match trees and height".into());
    }
    Ok(Box::new(m))
}

/// One stream's Half-Space Trees.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HalfSpaceTrees {
    params: HstParams,
    dim: usize,
    seed: u64,
    /// Per feature, the limits learnt from the first window: offset and inverse width.
    lo: Vec<f64>,
    inv_width: Vec<f64>,
    /// The first window's values, until the trees are grown.
    first: Vec<f64>,
    /// Per node of every tree (trees one after another, each a complete binary tree in
    /// breadth-first order): split feature, split value (scaled), reference and latest mass.
    feature: Vec<u32>,
    split: Vec<f64>,
    r_mass: Vec<u32>,
    l_mass: Vec<u32>,
    /// Events in the latest window, and whether a reference window exists.
    in_window: usize,
    reference: bool,
    norm: RecordRatio,
    /// Contributions of the last scored event.
    last: Vec<f64>,
    /// Scratch: the scaled row.
    #[serde(skip)]
    scaled: Vec<f64>,
}

impl HalfSpaceTrees {
    pub fn new(params: HstParams, dim: usize, seed: u64) -> Self {
        let norm = RecordRatio::new(NoveltyParams {
            alert: params.alert,
            cooldown: params.cooldown,
            horizon: params.horizon,
            warm: 0,
            ..NoveltyParams::default()
        });
        HalfSpaceTrees {
            first: Vec::with_capacity(params.window * dim),
            params,
            dim,
            seed,
            lo: Vec::new(),
            inv_width: Vec::new(),
            feature: Vec::new(),
            split: Vec::new(),
            r_mass: Vec::new(),
            l_mass: Vec::new(),
            in_window: 0,
            reference: false,
            norm,
            last: vec![0.0; dim],
            scaled: Vec::new(),
        }
    }

    fn nodes_per_tree(&self) -> usize {
        (1usize << (self.params.height + 1)) - 1
    }

    /// Learns the limits from the first window and grows the trees (Tan et al.'s
    /// `BuildSingleHSTree` with River's random work ranges).
    fn grow(&mut self) {
        let d = self.dim;
        let n = self.first.len() / d.max(1);
        self.lo = vec![0.0; d];
        self.inv_width = vec![1.0; d];
        for j in 0..d {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for i in 0..n {
                let v = self.first[i * d + j];
                lo = lo.min(v);
                hi = hi.max(v);
            }
            let width = hi - lo;
            // A constant feature gets a unit width around its value.
            let (lo, width) = if width > 0.0 && width.is_finite() {
                (lo, width)
            } else {
                (lo - 0.5, 1.0)
            };
            self.lo[j] = lo;
            self.inv_width[j] = 1.0 / width;
        }
        self.first = Vec::new();
        let per_tree = self.nodes_per_tree();
        let internal = per_tree / 2;
        let t = self.params.trees;
        self.feature = vec![0; t * per_tree];
        self.split = vec![0.0; t * per_tree];
        self.r_mass = vec![0; t * per_tree];
        self.l_mass = vec![0; t * per_tree];
        for tree in 0..t {
            let mut rng = Rng::derive(self.seed, tree as u64);
            // Work ranges: the unit interval stretched around a random point per feature.
            let mut lo = vec![0.0; d];
            let mut hi = vec![0.0; d];
            for j in 0..d {
                let s = rng.uniform();
                let r = 2.0 * s.max(1.0 - s);
                lo[j] = s - r;
                hi[j] = s + r;
            }
            // Breadth-first: node k's range is its parent's halved; ranges per node on a stack.
            let mut ranges: Vec<(Vec<f64>, Vec<f64>)> = vec![(lo, hi)];
            ranges.reserve(per_tree);
            for k in 0..internal {
                let (lo, hi) = ranges[k].clone();
                let q = rng.below(d.max(1));
                let mid = 0.5 * (lo[q] + hi[q]);
                self.feature[tree * per_tree + k] = q as u32;
                self.split[tree * per_tree + k] = mid;
                let mut left_hi = hi.clone();
                left_hi[q] = mid;
                let mut right_lo = lo.clone();
                right_lo[q] = mid;
                ranges.push((lo, left_hi));
                ranges.push((right_lo, hi));
            }
        }
    }

    fn scale(&mut self, x: &[f64]) {
        self.scaled.clear();
        self.scaled.extend(
            x.iter()
                .zip(&self.lo)
                .zip(&self.inv_width)
                .map(|((v, lo), iw)| (v - lo) * iw),
        );
    }

    /// The child of node `k` that the scaled row takes.
    #[inline]
    fn child(&self, base: usize, k: usize) -> usize {
        let go_right = self.scaled[self.feature[base + k] as usize] >= self.split[base + k];
        2 * k + 1 + usize::from(go_right)
    }

    /// Raw anomaly score of the scaled row in [0, 1], and the contributions per feature.
    fn raw_score(&mut self) -> f64 {
        let per_tree = self.nodes_per_tree();
        let internal = per_tree / 2;
        let limit = self.params.size_limit * self.params.window as f64;
        let mut total = 0.0;
        self.last.iter_mut().for_each(|c| *c = 0.0);
        for tree in 0..self.params.trees {
            let base = tree * per_tree;
            let root = f64::from(self.r_mass[base]).max(1.0);
            let mut k = 0;
            let mut depth = 0;
            loop {
                let mass = f64::from(self.r_mass[base + k]);
                total += mass * f64::from(1u32 << depth);
                if mass < limit || k >= internal {
                    break;
                }
                let c = self.child(base, k);
                let cut = mass - f64::from(self.r_mass[base + c]);
                self.last[self.feature[base + k] as usize] += cut / root;
                k = c;
                depth += 1;
            }
        }
        let max = (self.params.trees * self.params.window) as f64
            * ((1u64 << (self.params.height + 1)) - 1) as f64;
        (1.0 - total / max).clamp(0.0, 1.0)
    }

    /// Adds the scaled row to the latest mass; swaps windows when one is full.
    fn learn_scaled(&mut self) {
        let per_tree = self.nodes_per_tree();
        let internal = per_tree / 2;
        for tree in 0..self.params.trees {
            let base = tree * per_tree;
            let mut k = 0;
            loop {
                self.l_mass[base + k] += 1;
                if k >= internal {
                    break;
                }
                k = self.child(base, k);
            }
        }
        self.in_window += 1;
        if self.in_window == self.params.window {
            std::mem::swap(&mut self.r_mass, &mut self.l_mass);
            self.l_mass.iter_mut().for_each(|m| *m = 0);
            self.in_window = 0;
            self.reference = true;
        }
    }

    /// Takes a row: collects the first window, then learns. Returns whether trees exist.
    fn take(&mut self, x: &[f64]) -> bool {
        if self.split.is_empty() {
            self.first.extend_from_slice(x);
            if self.first.len() / self.dim.max(1) >= self.params.window {
                self.grow();
            }
            return false;
        }
        self.scale(x);
        self.learn_scaled();
        true
    }
}

impl StreamingDetector for HalfSpaceTrees {
    fn dim(&self) -> usize {
        self.dim
    }

    fn learn(&mut self, _ts: f64, x: &[f64]) {
        self.take(x);
        // Keep the record of raw scores warm on training data as well.
        if self.reference {
            let raw = self.raw_score();
            self.norm.update(Some(raw));
        }
    }

    /// Scores against the reference window, then learns (River's `score_one` then
    /// `learn_one`).
    fn step(&mut self, _ts: f64, x: &[f64]) -> Step {
        let score = if self.reference {
            self.scale(x);
            let raw = self.raw_score();
            self.norm.update(Some(raw))
        } else {
            self.last.iter_mut().for_each(|c| *c = 0.0);
            self.norm.update(None)
        };
        self.take(x);
        let flagged = score >= NoveltyParams::THRESHOLD;
        Step {
            score,
            flagged,
            alarm_start: flagged,
        }
    }

    fn contributions(&self, out: &mut [f64]) {
        out.copy_from_slice(&self.last);
        normalise_shares(out);
    }

    fn threshold(&self) -> f64 {
        NoveltyParams::THRESHOLD
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

    fn stream(n: usize, seed: u64) -> Vec<[f64; 2]> {
        let mut r = Rng::new(seed);
        (0..n)
            .map(|_| [r.normal(10.0, 1.0), r.normal(1000.0, 50.0)])
            .collect()
    }

    #[test]
    fn mass_moves_from_the_latest_to_the_reference_window() {
        let p = HstParams {
            window: 50,
            ..HstParams::default()
        };
        let mut h = HalfSpaceTrees::new(p, 2, 1);
        for x in stream(50, 1) {
            h.learn(0.0, &x);
        }
        assert!(!h.split.is_empty(), "trees grow after the first window");
        assert!(!h.reference);
        for x in stream(50, 2) {
            h.learn(0.0, &x);
        }
        assert!(h.reference);
        let per_tree = h.nodes_per_tree();
        for t in 0..h.params.trees {
            // Every event of a window passes the root; children split the root's mass.
            assert_eq!(h.r_mass[t * per_tree], 50);
            assert_eq!(h.r_mass[t * per_tree + 1] + h.r_mass[t * per_tree + 2], 50);
            assert_eq!(h.l_mass[t * per_tree], 0);
        }
    }

    #[test]
    fn an_outlier_scores_above_ordinary_events_and_names_its_feature() {
        let mut h = HalfSpaceTrees::new(HstParams::default(), 2, 3);
        for x in stream(2000, 4) {
            h.step(0.0, &x);
        }
        h.scale(&[10.0, 1000.0]);
        let ordinary = h.raw_score();
        h.scale(&[10.0, 1600.0]);
        let outlier = h.raw_score();
        assert!(outlier > ordinary, "{outlier} vs {ordinary}");
        let mut c = [0.0; 2];
        h.contributions(&mut c);
        assert!(c[1] > c[0], "{c:?}");
    }

    #[test]
    fn nothing_is_flagged_before_a_reference_window_exists() {
        let mut h = HalfSpaceTrees::new(HstParams::default(), 2, 5);
        for (i, x) in stream(499, 6).into_iter().enumerate() {
            let s = h.step(0.0, &x);
            assert!(!s.flagged, "event {i}");
            assert_eq!(s.score, 0.0);
        }
    }

    #[test]
    fn constant_features_do_not_break_the_limits() {
        let mut h = HalfSpaceTrees::new(HstParams::default(), 2, 7);
        for i in 0..1000 {
            let s = h.step(0.0, &[5.0, i as f64]);
            assert!(s.score.is_finite());
        }
        assert!(h.inv_width.iter().all(|w| w.is_finite() && *w > 0.0));
    }
}
