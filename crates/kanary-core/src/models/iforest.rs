//! Isolation Forest (Liu, Ting & Zhou, 2008), with scikit-learn's algorithm and scoring.
//!
//! Each tree is grown on a subsample of `max_samples = min(256, n)` rows drawn without
//! replacement: at every node a feature is drawn uniformly among those not constant in the node,
//! a split uniformly in `[min, max)` of that feature, rows `<= split` go left; a node becomes a
//! leaf at depth `ceil(log2(max_samples))`, with one row, or when every feature is constant.
//! The path length of a row is its leaf's depth plus `c(size)`, the average path length of an
//! unsuccessful BST search among the leaf's training rows, and the score is
//! `2^(-E[h] / c(max_samples))`: near 1 for anomalies, below 0.5 for ordinary rows.
//!
//! Scoring layout: every tree is stored *padded to a complete binary tree* of depth `D`, as flat
//! arrays in heap order (children of node `i` at `2i+1`, `2i+2`). A leaf above depth `D` becomes
//! a chain of pass-through nodes (threshold +inf, always left) ending in a bottom slot that holds
//! its path length. Every row then takes exactly `D` steps of `i = 2i + 1 + (x[f] > t)`: no
//! branches to mispredict, and [`IsolationForest::score_batch`] walks each tree for a block of
//! rows at once so that their independent dependency chains overlap in the CPU.
//!
//! Why one file of over 800 lines: growing a tree, its padded scoring layout, the blocked batch
//! walk over that layout and the explanations all read the same node arrays; split apart, each
//! part would need the others' private invariants. Its tests follow the code.

use serde::{Deserialize, Serialize};

use crate::registry::{
    Build, Detector, FitError, FittedModel, FittedPair, InvalidParam, ModelParams, ModelSpec,
    ParamMap, Schema, decode_state, encode_state,
};
use crate::rng::Rng;
use crate::threshold::ThresholdMethod;

/// Euler–Mascheroni constant.
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;
/// Largest subsample accepted (tree depth 12: 4095 internal nodes per tree).
pub const MAX_SAMPLES_LIMIT: usize = 4096;
/// Deepest padded tree accepted.
pub const MAX_DEPTH: u32 = 14;
/// Rows walked through a tree together in batch scoring.
const BLOCK: usize = 128;
/// A feature is constant in a node when its range is at most this (as scikit-learn).
const FEATURE_THRESHOLD: f64 = 1e-7;

/// Average path length of an unsuccessful search in a binary search tree of `n` nodes.
pub fn average_path_length(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

/// Isolation Forest hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IForestParams {
    /// Number of trees.
    #[serde(rename = "trees")]
    pub n_trees: usize,
    /// Rows per tree (capped by the number of training rows).
    pub max_samples: usize,
    /// Range-aware path lengths (see the module docs); `false` scores exactly as scikit-learn.
    #[serde(default = "yes")]
    pub range_aware: bool,
    /// Levels beyond scikit-learn's height limit `ceil(log2(max_samples))`.
    #[serde(default)]
    pub extra_depth: u32,
}

fn yes() -> bool {
    true
}

impl Default for IForestParams {
    fn default() -> Self {
        IForestParams {
            n_trees: 100,
            max_samples: 256,
            range_aware: true,
            extra_depth: 0,
        }
    }
}

/// One split node in the scoring arrays.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[repr(C)]
struct Node {
    threshold: f32,
    feature: u32,
    /// Midpoint and inverse width of the split feature's range `[lo, hi]` among the node's
    /// training rows (pass-through nodes: 0 and 0).
    mid: f32,
    inv_width: f32,
}

const PASS: Node = Node {
    threshold: f32::INFINITY,
    feature: 0,
    mid: 0.0,
    inv_width: 0.0,
};

/// Largest factor by which one node may divide the probability of staying on the path (an
/// escape probability of 0.9999): keeps the products of up to 12 levels finite in f32.
const MAX_STAY_DIVISOR: f32 = 1e4;

impl Node {
    /// `1 / (1 − q)`, where `q` is the probability that a uniform split over the node's range
    /// extended to include `v` would separate `v` from every training row: with `dist` the
    /// distance of `v` beyond `[lo, hi]`, `q = dist / (hi − lo + dist)`, so
    /// `1 / (1 − q) = 1 + dist / (hi − lo) = max(|v − mid| / (hi − lo) + 1/2, 1)`.
    /// 1 inside the range and at pass-through nodes.
    #[inline(always)]
    fn stay_divisor(&self, v: f32) -> f32 {
        ((v - self.mid).abs() * self.inv_width + 0.5).clamp(1.0, MAX_STAY_DIVISOR)
    }
}

/// A fitted Isolation Forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationForest {
    dim: usize,
    n_trees: usize,
    /// Subsample size actually used.
    samples: usize,
    range_aware: bool,
    /// Depth of every padded tree.
    depth: u32,
    /// `n_trees * (2^depth - 1)` split nodes, tree after tree.
    nodes: Vec<Node>,
    /// `n_trees * 2^depth` path lengths at the bottom slots.
    leaves: Vec<f32>,
    /// Training rows that reached each split node (for explanations), parallel to `nodes`.
    sizes: Vec<u16>,
    /// Training rows at each bottom slot, parallel to `leaves`.
    leaf_sizes: Vec<u16>,
}

/// Errors from fitting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IForestError {
    #[error("isolation forest needs at least 2 training rows, got {0}")]
    TooFewRows(usize),
    #[error("isolation forest needs at least one tree")]
    NoTrees,
    #[error("max_samples must be in 2..={MAX_SAMPLES_LIMIT}, got {0}")]
    BadMaxSamples(usize),
    #[error("isolation forest trees may be at most {MAX_DEPTH} levels deep")]
    TooDeep,
    #[error("isolation forest supports at most 2^32 - 1 features, got {0}")]
    TooManyFeatures(usize),
}

impl IsolationForest {
    /// Grows a forest on `data` (row-major, `dim` columns), deterministically from `seed`.
    pub fn fit(
        data: &[f64],
        dim: usize,
        params: &IForestParams,
        seed: u64,
    ) -> Result<Self, IForestError> {
        Self::fit_with_oob(data, dim, params, seed).map(|(f, _)| f)
    }

    /// Grows a forest and also returns each training row's *out-of-bag* score: its score over
    /// the trees whose subsample did not include it (over every tree when all did). These are
    /// what unseen ordinary rows score, unlike in-sample scores, so thresholds fitted on them
    /// hold on the stream.
    pub fn fit_with_oob(
        data: &[f64],
        dim: usize,
        params: &IForestParams,
        seed: u64,
    ) -> Result<(Self, Vec<f64>), IForestError> {
        let n = data.len().checked_div(dim).unwrap_or(0);
        if n < 2 {
            return Err(IForestError::TooFewRows(n));
        }
        if params.n_trees == 0 {
            return Err(IForestError::NoTrees);
        }
        if !(2..=MAX_SAMPLES_LIMIT).contains(&params.max_samples) {
            return Err(IForestError::BadMaxSamples(params.max_samples));
        }
        if (params.max_samples as f64).log2().ceil() as u32 + params.extra_depth > MAX_DEPTH {
            return Err(IForestError::TooDeep);
        }
        if dim > u32::MAX as usize {
            return Err(IForestError::TooManyFeatures(dim));
        }
        let samples = params.max_samples.min(n);
        let depth = (samples as f64).log2().ceil().max(1.0) as u32 + params.extra_depth;
        let n_internal = (1usize << depth) - 1;
        let n_leaves = 1usize << depth;
        let mut forest = IsolationForest {
            dim,
            n_trees: params.n_trees,
            samples,
            range_aware: params.range_aware,
            depth,
            nodes: vec![PASS; params.n_trees * n_internal],
            leaves: vec![0.0; params.n_trees * n_leaves],
            sizes: vec![0; params.n_trees * n_internal],
            leaf_sizes: vec![0; params.n_trees * n_leaves],
        };
        // in_bag[t * n + i]: row i was in tree t's subsample.
        let mut in_bag = vec![false; params.n_trees * n];
        for t in 0..params.n_trees {
            let mut rng = Rng::derive(seed, t as u64);
            let mut rows = rng.sample_indices(n, samples);
            for &r in &rows {
                in_bag[t * n + r] = true;
            }
            let mut builder = TreeBuilder {
                data,
                dim,
                depth,
                rng: &mut rng,
                nodes: &mut forest.nodes[t * n_internal..(t + 1) * n_internal],
                leaves: &mut forest.leaves[t * n_leaves..(t + 1) * n_leaves],
                sizes: &mut forest.sizes[t * n_internal..(t + 1) * n_internal],
                leaf_sizes: &mut forest.leaf_sizes[t * n_leaves..(t + 1) * n_leaves],
                scratch: Vec::with_capacity(dim),
            };
            builder.grow(0, 0, &mut rows);
        }
        let ni = forest.n_internal();
        let nl = ni + 1;
        let c = average_path_length(samples);
        let mut oob = Vec::with_capacity(n);
        let mut xf = vec![0f32; dim];
        for i in 0..n {
            for (dst, &src) in xf.iter_mut().zip(&data[i * dim..(i + 1) * dim]) {
                *dst = src as f32;
            }
            let (mut total, mut trees) = (0.0f64, 0usize);
            for t in (0..params.n_trees).filter(|&t| !in_bag[t * n + i]) {
                total += forest.tree_path(t, ni, nl, &xf) as f64;
                trees += 1;
            }
            if trees == 0 {
                total = forest.total_path_length(&xf) as f64;
                trees = params.n_trees;
            }
            oob.push((-total / (trees as f64 * c)).exp2());
        }
        Ok((forest, oob))
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Checks the invariants scoring relies on (array sizes, feature indices): a forest read
    /// from a file must pass before it is used.
    pub fn validate(&self) -> Result<(), String> {
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return Err(format!("tree depth {} out of range", self.depth));
        }
        if self.n_trees == 0 {
            return Err("no trees".into());
        }
        let ni = self.n_internal();
        let nl = ni + 1;
        if self.nodes.len() != self.n_trees * ni
            || self.sizes.len() != self.nodes.len()
            || self.leaves.len() != self.n_trees * nl
            || self.leaf_sizes.len() != self.leaves.len()
        {
            return Err("node arrays do not match the number of trees and depth".into());
        }
        if self.samples < 2 {
            return Err("subsample size below 2".into());
        }
        if self
            .sizes
            .iter()
            .chain(&self.leaf_sizes)
            .any(|&k| k as usize > self.samples)
        {
            return Err("a node holds more rows than the subsample".into());
        }
        if let Some(n) = self.nodes.iter().find(|n| n.feature as usize >= self.dim) {
            return Err(format!(
                "split on feature {} of a {}-feature forest",
                n.feature, self.dim
            ));
        }
        Ok(())
    }

    pub fn n_trees(&self) -> usize {
        self.n_trees
    }

    /// Subsample size used per tree.
    pub fn samples(&self) -> usize {
        self.samples
    }

    fn n_internal(&self) -> usize {
        (1usize << self.depth) - 1
    }

    fn normaliser(&self) -> f64 {
        self.n_trees as f64 * average_path_length(self.samples)
    }

    /// Mean path length of `x` over the trees.
    pub fn mean_path_length(&self, x: &[f64]) -> f64 {
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        self.total_path_length(&xf) as f64 / self.n_trees as f64
    }

    fn total_path_length(&self, xf: &[f32]) -> f32 {
        let ni = self.n_internal();
        let nl = ni + 1;
        (0..self.n_trees)
            .map(|t| self.tree_path(t, ni, nl, xf))
            .sum()
    }

    /// Path length of one row through tree `t`.
    fn tree_path(&self, t: usize, ni: usize, nl: usize, xf: &[f32]) -> f32 {
        let nodes = &self.nodes[t * ni..(t + 1) * ni];
        let leaves = &self.leaves[t * nl..(t + 1) * nl];
        if self.range_aware {
            tree_path::<true>(nodes, leaves, self.depth, xf)
        } else {
            tree_path::<false>(nodes, leaves, self.depth, xf)
        }
    }

    /// Anomaly score of one row, in (0, 1]; higher is more anomalous.
    pub fn score(&self, x: &[f64]) -> f64 {
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let total = self.total_path_length(&xf) as f64;
        (-total / self.normaliser()).exp2()
    }

    /// Scores `out.len()` rows of `xs` (row-major), several rows in flight per tree.
    pub fn score_batch(&self, xs: &[f64], out: &mut [f64]) {
        let d = self.dim;
        assert_eq!(
            xs.len(),
            out.len() * d,
            "score_batch: rows and outputs differ"
        );
        let ni = self.n_internal();
        let nl = ni + 1;
        let norm = self.normaliser();
        let mut xf = vec![0f32; BLOCK * d];
        for (rows, outs) in xs.chunks(BLOCK * d.max(1)).zip(out.chunks_mut(BLOCK)) {
            let b = outs.len();
            for (dst, &src) in xf.iter_mut().zip(rows) {
                *dst = src as f32;
            }
            // A short last block is padded (with the values of its last row) when walking the
            // whole block still beats walking its rows one at a time.
            if b < BLOCK {
                for j in b..BLOCK {
                    xf.copy_within((b - 1) * d..b * d, j * d);
                }
            }
            let mut acc = [0f32; BLOCK];
            if b >= BLOCK / 4 {
                for (nodes, leaves) in self
                    .nodes
                    .chunks_exact(ni)
                    .zip(self.leaves.chunks_exact(nl))
                {
                    self.walk_block(nodes, leaves, &xf, &mut acc);
                }
            } else {
                for (j, a) in acc.iter_mut().enumerate().take(b) {
                    *a = self.total_path_length(&xf[j * d..(j + 1) * d]);
                }
            }
            for (o, &a) in outs.iter_mut().zip(&acc) {
                *o = (-(a as f64) / norm).exp2();
            }
        }
    }

    /// Adds the path lengths of one block of rows through one tree to `acc`.
    #[inline(always)]
    fn walk_block(&self, nodes: &[Node], leaves: &[f32], xf: &[f32], acc: &mut [f32; BLOCK]) {
        let (depth, d) = (self.depth, self.dim);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a validated forest's trees are padded and complete with features < d, and
        // `xf` holds BLOCK rows of d values.
        unsafe {
            if self.range_aware {
                sse::block_paths::<true>(nodes, leaves, depth, xf, d, acc);
            } else {
                sse::block_paths::<false>(nodes, leaves, depth, xf, d, acc);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        if self.range_aware {
            block_paths::<true>(nodes, leaves, depth, xf, d, acc);
        } else {
            block_paths::<false>(nodes, leaves, depth, xf, d, acc);
        }
    }

    /// Share of the isolation of `x` owed to each feature, written to `out` (sums to 1, or all 0
    /// when no split separated `x` from anything).
    ///
    /// Along the path of `x` in every tree, a split that sends it from a node of `n` training rows
    /// to a child of `m` earns its feature `log2(n / m)` bits: the halvings it contributed to
    /// isolating `x`. Features are credited with the total of their splits' bits.
    pub fn contributions(&self, x: &[f64], out: &mut [f64]) {
        out.fill(0.0);
        let ni = self.n_internal();
        let nl = ni + 1;
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        // log2 of every possible node size (an empty child counts as half a row, so that the
        // split still earns a finite number of bits).
        let log2: Vec<f64> = (0..=self.samples)
            .map(|k| (k as f64).max(0.5).log2())
            .collect();
        for t in 0..self.n_trees {
            let nodes = &self.nodes[t * ni..(t + 1) * ni];
            let sizes = &self.sizes[t * ni..(t + 1) * ni];
            let leaf_sizes = &self.leaf_sizes[t * nl..(t + 1) * nl];
            let mut i = 0usize;
            for _ in 0..self.depth {
                let node = nodes[i];
                let parent = sizes[i];
                let next = 2 * i + 1 + (xf[node.feature as usize] > node.threshold) as usize;
                let child = if next >= ni {
                    leaf_sizes[next - ni]
                } else {
                    sizes[next]
                };
                if node.threshold.is_finite() && parent > 0 {
                    out[node.feature as usize] += log2[parent as usize] - log2[child as usize];
                }
                i = next;
            }
        }
        let total: f64 = out.iter().sum();
        if total > 0.0 {
            out.iter_mut().for_each(|v| *v /= total);
        }
    }
}

/// Path length of one row through one padded tree.
///
/// With `RANGE`, the expected path length when the row escapes at each node with the
/// probability `q` of [`Node::stay_divisor`] (isolated one level down). With `alive_l` the
/// probability of reaching level `l`, the expectation telescopes to
/// `Σ_{l<D} alive_l + alive_D · (leaf − D)`, where `leaf = depth + c(size)` of the leaf reached
/// (pass-through levels below a shallow leaf add exactly what the subtraction removes).
/// `alive_l = 1 / P_l` with `P_l` the product of the divisors so far, so the sum is carried as
/// one fraction `n / P` (`n ← (n + 1) · f`, `P ← P · f` at each level) and divided once per
/// tree. Without escapes it is the leaf's value.
#[inline(always)]
fn tree_path<const RANGE: bool>(nodes: &[Node], leaves: &[f32], depth: u32, x: &[f32]) -> f32 {
    let ni = nodes.len();
    let mut i = 0usize;
    let (mut num, mut den) = (0.0f32, 1.0f32);
    for _ in 0..depth {
        let node = nodes[i];
        let v = x[node.feature as usize];
        if RANGE {
            let f = node.stay_divisor(v);
            num = (num + 1.0) * f;
            den *= f;
        }
        i = 2 * i + 1 + (v > node.threshold) as usize;
    }
    if RANGE {
        (num + leaves[i - ni] - depth as f32) / den
    } else {
        leaves[i - ni]
    }
}

/// Adds the path lengths of `BLOCK` rows through one tree to `acc`, walking the rows together
/// level by level: the node loads are gathered first, then the arithmetic runs over the whole
/// block in SIMD lanes, so that the rows' independent chains overlap.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn block_paths<const RANGE: bool>(
    nodes: &[Node],
    leaves: &[f32],
    depth: u32,
    xf: &[f32],
    d: usize,
    acc: &mut [f32; BLOCK],
) {
    let ni = nodes.len();
    let mut idx = [0usize; BLOCK];
    let mut num = [0.0f32; BLOCK];
    let mut den = [1.0f32; BLOCK];
    debug_assert!(xf.len() >= BLOCK * d);
    for _ in 0..depth {
        for j in 0..BLOCK {
            // SAFETY: `idx[j]` starts at the root and takes `depth` steps `2i + 1 + {0, 1}`,
            // so before each step it is an internal node (< ni = nodes.len()); every stored
            // feature index is < d (checked when the forest is built or loaded), and
            // xf holds BLOCK rows of d values.
            let node = unsafe { *nodes.get_unchecked(idx[j]) };
            let v = unsafe { *xf.get_unchecked(j * d + node.feature as usize) };
            if RANGE {
                let f = node.stay_divisor(v);
                num[j] = (num[j] + 1.0) * f;
                den[j] *= f;
            }
            idx[j] = 2 * idx[j] + 1 + (v > node.threshold) as usize;
        }
    }
    for j in 0..BLOCK {
        let leaf = leaves[idx[j] - ni];
        acc[j] += if RANGE {
            (num[j] + leaf - depth as f32) / den[j]
        } else {
            leaf
        };
    }
}

/// The block walk with SSE2 (part of every x86-64 CPU): four rows per vector, `BLOCK / 4`
/// vectors per block. Each level loads the four rows' nodes as 16-byte vectors, transposes them into
/// threshold / midpoint / inverse-width lanes, and updates the four paths with vector
/// arithmetic; the branch bits come back through one `movemask`.
#[cfg(target_arch = "x86_64")]
mod sse {
    use super::{BLOCK, MAX_STAY_DIVISOR, Node};

    const NODE_BYTES: usize = std::mem::size_of::<Node>();
    use std::arch::x86_64::*;

    const GROUPS: usize = BLOCK / 4;

    /// # Safety
    /// `nodes` is one padded tree of depth `depth` (`2^depth − 1` nodes, every feature `< d`),
    /// `leaves` its `2^depth` bottom slots, and `xf` holds `BLOCK` rows of `d` values.
    #[inline(always)]
    pub unsafe fn block_paths<const RANGE: bool>(
        nodes: &[Node],
        leaves: &[f32],
        depth: u32,
        xf: &[f32],
        d: usize,
        acc: &mut [f32; BLOCK],
    ) {
        let ni = nodes.len();
        let np = nodes.as_ptr() as *const u8;
        let xp = xf.as_ptr();
        // SAFETY (whole body): offsets stay within the tree as in `super::block_paths`; x reads
        // are at `j * d + feature` with `j < BLOCK`, `feature < d`.
        unsafe {
            let one = _mm_set1_ps(1.0);
            let half = _mm_set1_ps(0.5);
            let cap = _mm_set1_ps(MAX_STAY_DIVISOR);
            let abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fff_ffff));
            let node_size = _mm_set1_epi32(NODE_BYTES as i32);
            // Byte offsets of each lane's current node, four lanes per vector.
            let mut off = [_mm_setzero_si128(); GROUPS];
            let mut num = [_mm_setzero_ps(); GROUPS];
            let mut den = [one; GROUPS];
            for _ in 0..depth {
                for g in 0..GROUPS {
                    let j = 4 * g;
                    let o = off[g];
                    let lane = |k: i32| -> usize {
                        let v = match k {
                            0 => o,
                            1 => _mm_shuffle_epi32::<0b01>(o),
                            2 => _mm_shuffle_epi32::<0b10>(o),
                            _ => _mm_shuffle_epi32::<0b11>(o),
                        };
                        _mm_cvtsi128_si32(v) as usize
                    };
                    let p0 = np.add(lane(0)) as *const Node;
                    let p1 = np.add(lane(1)) as *const Node;
                    let p2 = np.add(lane(2)) as *const Node;
                    let p3 = np.add(lane(3)) as *const Node;
                    let v = _mm_setr_ps(
                        *xp.add(j * d + (*p0).feature as usize),
                        *xp.add((j + 1) * d + (*p1).feature as usize),
                        *xp.add((j + 2) * d + (*p2).feature as usize),
                        *xp.add((j + 3) * d + (*p3).feature as usize),
                    );
                    let n0 = _mm_loadu_ps(p0 as *const f32);
                    let n1 = _mm_loadu_ps(p1 as *const f32);
                    let n2 = _mm_loadu_ps(p2 as *const f32);
                    let n3 = _mm_loadu_ps(p3 as *const f32);
                    // [threshold, feature, mid, inv_width] per node → one field per vector.
                    let t0 = _mm_unpacklo_ps(n0, n1);
                    let t1 = _mm_unpacklo_ps(n2, n3);
                    let thr = _mm_movelh_ps(t0, t1);
                    if RANGE {
                        let t2 = _mm_unpackhi_ps(n0, n1);
                        let t3 = _mm_unpackhi_ps(n2, n3);
                        let mid = _mm_movelh_ps(t2, t3);
                        let inv = _mm_movehl_ps(t3, t2);
                        let dist = _mm_mul_ps(_mm_and_ps(_mm_sub_ps(v, mid), abs_mask), inv);
                        let f = _mm_min_ps(_mm_max_ps(_mm_add_ps(dist, half), one), cap);
                        num[g] = _mm_mul_ps(_mm_add_ps(num[g], one), f);
                        den[g] = _mm_mul_ps(den[g], f);
                    }
                    // Child offset: 2·off + size (left) or 2·off + 2·size (right, mask = −1).
                    let right = _mm_castps_si128(_mm_cmpgt_ps(v, thr));
                    off[g] = _mm_add_epi32(
                        _mm_add_epi32(o, o),
                        _mm_add_epi32(node_size, _mm_and_si128(right, node_size)),
                    );
                }
            }
            let lp = leaves.as_ptr();
            let dep = _mm_set1_ps(depth as f32);
            for g in 0..GROUPS {
                let j = 4 * g;
                let mut o = [0i32; 4];
                _mm_storeu_si128(o.as_mut_ptr() as *mut __m128i, off[g]);
                let leaf = |k: usize| *lp.add(o[k] as usize / NODE_BYTES - ni);
                let leaf = _mm_setr_ps(leaf(0), leaf(1), leaf(2), leaf(3));
                let path = if RANGE {
                    _mm_div_ps(_mm_add_ps(num[g], _mm_sub_ps(leaf, dep)), den[g])
                } else {
                    leaf
                };
                let a = _mm_loadu_ps(acc.as_ptr().add(j));
                _mm_storeu_ps(acc.as_mut_ptr().add(j), _mm_add_ps(a, path));
            }
        }
    }
}

struct TreeBuilder<'a> {
    data: &'a [f64],
    dim: usize,
    depth: u32,
    rng: &'a mut Rng,
    nodes: &'a mut [Node],
    leaves: &'a mut [f32],
    sizes: &'a mut [u16],
    leaf_sizes: &'a mut [u16],
    scratch: Vec<(usize, f64, f64)>,
}

impl TreeBuilder<'_> {
    /// Grows the subtree at heap index `node` (at `level`) on `rows`.
    fn grow(&mut self, node: usize, level: u32, rows: &mut [usize]) {
        let n_internal = self.nodes.len();
        let size = rows.len().min(u16::MAX as usize) as u16;
        if node < n_internal {
            self.sizes[node] = size;
        } else {
            self.leaf_sizes[node - n_internal] = size;
        }
        if level >= self.depth || rows.len() < 2 {
            self.leaf(node, level, rows.len());
            return;
        }
        // Features that are not constant in this node, with their ranges.
        self.scratch.clear();
        for f in 0..self.dim {
            let mut lo = f64::INFINITY;
            let mut hi = f64::NEG_INFINITY;
            for &r in rows.iter() {
                let v = self.data[r * self.dim + f];
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if hi > lo + FEATURE_THRESHOLD {
                self.scratch.push((f, lo, hi));
            }
        }
        if self.scratch.is_empty() {
            self.leaf(node, level, rows.len());
            return;
        }
        let (feature, lo, hi) = self.scratch[self.rng.below(self.scratch.len())];
        let mut threshold = self.rng.uniform_range(lo, hi);
        if threshold >= hi {
            threshold = lo;
        }
        // Store the split as f32; route training rows exactly as scoring will.
        let t32 = threshold as f32;
        self.nodes[node] = Node {
            threshold: t32,
            feature: feature as u32,
            mid: (0.5 * (lo + hi)) as f32,
            inv_width: (1.0 / (hi - lo)) as f32,
        };
        let mut left = 0;
        for i in 0..rows.len() {
            if (self.data[rows[i] * self.dim + feature] as f32) <= t32 {
                rows.swap(i, left);
                left += 1;
            }
        }
        let (l, r) = rows.split_at_mut(left);
        self.grow(2 * node + 1, level + 1, l);
        self.grow(2 * node + 2, level + 1, r);
    }

    /// Makes `node` a leaf: pass-through nodes down its left spine to the bottom slot, which
    /// holds the path length `level + c(size)`.
    fn leaf(&mut self, node: usize, level: u32, size: usize) {
        let n_internal = self.nodes.len();
        let mut i = node;
        let size16 = size.min(u16::MAX as usize) as u16;
        while i < n_internal {
            self.nodes[i] = PASS;
            self.sizes[i] = size16;
            i = 2 * i + 1;
        }
        self.leaves[i - n_internal] = (level as f64 + average_path_length(size)) as f32;
        self.leaf_sizes[i - n_internal] = size16;
    }
}

impl ModelParams for IForestParams {
    const HELP: &'static [(&'static str, &'static str)] = &[
        ("trees", "number of trees"),
        ("max_samples", "rows per tree (capped by the training set)"),
        (
            "range_aware",
            "isolate rows beyond a node's training range (false: score exactly as scikit-learn)",
        ),
        (
            "extra_depth",
            "levels beyond scikit-learn's height limit ceil(log2(max_samples))",
        ),
    ];

    fn validate(&self) -> Result<(), InvalidParam> {
        if self.n_trees == 0 {
            return Err(InvalidParam::new("trees", "must be at least 1"));
        }
        if !(2..=MAX_SAMPLES_LIMIT).contains(&self.max_samples) {
            return Err(InvalidParam::new(
                "max_samples",
                format!("must be in 2..={MAX_SAMPLES_LIMIT}"),
            ));
        }
        if self.extra_depth > MAX_DEPTH {
            return Err(InvalidParam::new(
                "extra_depth",
                format!("must be at most {MAX_DEPTH}"),
            ));
        }
        Ok(())
    }
}

impl From<IForestError> for FitError {
    fn from(e: IForestError) -> Self {
        FitError::Model {
            model: SPEC.name,
            reason: e.to_string(),
        }
    }
}

/// The registry entry of `if`.
///
/// Isolation Forest scores are averages over trees, with a short, light upper tail that an
/// exponential tail fit overshoots: they get `median + 5·MAD` (docs/models.md).
pub const SPEC: ModelSpec = ModelSpec {
    name: "if",
    aliases: &["iforest", "isolation-forest"],
    title: "Isolation Forest",
    summary: "Isolation Forest: rows that few random splits isolate score high",
    params: &Schema::<IForestParams>::new(),
    default_threshold: ThresholdMethod::Mad { k: 5.0 },
    reconstruction_error: false,
    build: Build::Fitted {
        fit,
        load,
        robust_refit: true,
    },
};

fn fit(p: &ParamMap, data: &[f64], dim: usize, seed: u64) -> Result<FittedPair, FitError> {
    let p = IForestParams::from_map(SPEC.name, p)?;
    let (f, oob) = IsolationForest::fit_with_oob(data, dim, &p, seed)?;
    Ok((Box::new(f), oob))
}

fn load(bytes: &[u8]) -> Result<Box<dyn FittedModel>, String> {
    let m: IsolationForest = decode_state(bytes)?;
    IsolationForest::validate(&m)?;
    Ok(Box::new(m))
}

impl Detector for IsolationForest {
    fn dim(&self) -> usize {
        IsolationForest::dim(self)
    }
    fn score(&self, x: &[f64]) -> f64 {
        IsolationForest::score(self, x)
    }
    fn score_batch(&self, xs: &[f64], out: &mut [f64]) {
        IsolationForest::score_batch(self, xs, out)
    }
    fn contributions(&self, x: &[f64], out: &mut [f64]) {
        IsolationForest::contributions(self, x, out)
    }
}

impl FittedModel for IsolationForest {
    fn save(&self) -> Vec<u8> {
        encode_state(self)
    }
    fn validate(&self) -> Result<(), String> {
        IsolationForest::validate(self)
    }
    fn clone_box(&self) -> Box<dyn FittedModel> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(n: usize, d: usize, seed: u64) -> Vec<f64> {
        let mut r = Rng::new(seed);
        (0..n * d).map(|_| r.standard_normal()).collect()
    }

    #[test]
    fn average_path_length_matches_formula() {
        assert_eq!(average_path_length(0), 0.0);
        assert_eq!(average_path_length(1), 0.0);
        assert_eq!(average_path_length(2), 1.0);
        // c(256) as computed by scikit-learn's _average_path_length.
        assert!((average_path_length(256) - 10.244_770_920_116_851).abs() < 1e-9);
    }

    #[test]
    fn outlier_scores_higher_than_inliers() {
        let data = gaussian(1000, 3, 1);
        let f = IsolationForest::fit(&data, 3, &IForestParams::default(), 7).unwrap();
        let inlier = f.score(&[0.0, 0.0, 0.0]);
        let outlier = f.score(&[8.0, 0.0, 0.0]);
        assert!(inlier < 0.45, "inlier {inlier}");
        assert!(outlier > inlier + 0.1, "outlier {outlier} inlier {inlier}");
    }

    #[test]
    fn deterministic_under_seed() {
        let data = gaussian(500, 3, 2);
        let a = IsolationForest::fit(&data, 3, &IForestParams::default(), 9).unwrap();
        let b = IsolationForest::fit(&data, 3, &IForestParams::default(), 9).unwrap();
        let c = IsolationForest::fit(&data, 3, &IForestParams::default(), 10).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn batch_scores_equal_single_scores() {
        let data = gaussian(700, 4, 3);
        for range_aware in [true, false] {
            let p = IForestParams {
                range_aware,
                ..IForestParams::default()
            };
            let f = IsolationForest::fit(&data, 4, &p, 1).unwrap();
            // Below a quarter block (scalar path), a padded short block, several full blocks.
            for n in [5, 37, 300] {
                let mut xs = gaussian(n, 4, 4);
                xs[0] = 25.0; // far outside the training range
                let mut out = vec![0.0; n];
                f.score_batch(&xs, &mut out);
                for (i, &s) in out.iter().enumerate() {
                    let single = f.score(&xs[i * 4..(i + 1) * 4]);
                    assert!((s - single).abs() < 1e-6, "n {n} row {i}: {s} vs {single}");
                }
            }
        }
    }

    #[test]
    fn padded_traversal_equals_recursive_path_length() {
        // Every training row of a tiny forest must land in a leaf that holds it: the path
        // length is at least the depth of a real leaf, never beyond the padded depth + c(n).
        let data = gaussian(300, 2, 5);
        let f = IsolationForest::fit(
            &data,
            2,
            &IForestParams {
                n_trees: 1,
                max_samples: 64,
                range_aware: false,
                extra_depth: 0,
            },
            3,
        )
        .unwrap();
        assert_eq!(f.depth, 6);
        for row in data.chunks(2) {
            let h = f.mean_path_length(row);
            assert!(h > 0.0 && h <= 6.0 + average_path_length(64), "{h}");
        }
    }

    #[test]
    fn small_training_sets_and_constant_features() {
        let f = IsolationForest::fit(&[1.0, 1.0, 1.0], 1, &IForestParams::default(), 0).unwrap();
        assert_eq!(f.samples(), 3);
        let s = f.score(&[1.0]);
        assert!(s.is_finite() && s > 0.0 && s <= 1.0);
        assert_eq!(
            IsolationForest::fit(&[1.0], 1, &IForestParams::default(), 0).unwrap_err(),
            IForestError::TooFewRows(1)
        );
    }

    #[test]
    fn contributions_name_the_outlying_feature() {
        let data = gaussian(1000, 3, 6);
        let f = IsolationForest::fit(&data, 3, &IForestParams::default(), 2).unwrap();
        for k in 0..3 {
            let mut x = [0.1, -0.2, 0.3];
            x[k] = 9.0;
            let mut c = [0.0; 3];
            f.contributions(&x, &mut c);
            let top = (0..3).max_by(|&a, &b| c[a].total_cmp(&c[b])).unwrap();
            assert_eq!(top, k, "{c:?}");
            assert!((c.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }
}
