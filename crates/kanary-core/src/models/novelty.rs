//! Record-ratio novelty detector: a streaming model that needs no fit and no labels.
//!
//! Per input column it derives four deviation features from the stream itself:
//! - `up`, `down`: how far the value lies above / below the median of the previous 1000 values
//!   (refreshed every 10 events);
//! - `dev`: how far the mean of the last 16 values lies from that median (sustained shifts,
//!   ignoring single-sample noise);
//! - `seas`: how far the value lies from the median of its values 1…7 days earlier (the last
//!   earlier event at or before `t − k·86400 s`), which catches broken daily patterns.
//!
//! Each feature is compared with the **largest value it reached earlier in the stream** (over
//! the previous 4032 events): `q = f / max`. The row's ratio `r` is the largest `q`; `r = 1.05`
//! reads "5% beyond anything seen so far". Dividing by the stream's own record makes the ratio
//! scale- and shift-free, so one threshold means the same on CPU percentages, byte counts and
//! prices. After an alarm (`r ≥ alert`), `r` is capped at 1 for `cooldown` events, so one
//! incident raises one alarm. The score is `r / (alert + r)` in [0, 1]: it is 0.5 exactly at
//! the alarm level, which is therefore the threshold.
//!
//! The records learn from every event, alarms included (a deviation already seen is no longer
//! novel), and the median re-baselines within about 500 events after a lasting level shift.
//! Designed and measured on the Numenta Anomaly Benchmark (docs/models.md).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::features::median_in_place;
use crate::registry::{
    Build, InvalidParam, ModelParams, ModelSpec, ParamError, ParamMap, Schema, decode_state,
    encode_state,
};
use crate::streaming::{Step, StreamingDetector, normalise_shares};
use crate::threshold::ThresholdMethod;

/// Seconds per day, for the seasonal lags.
const DAY: f64 = 86_400.0;
const EPS: f64 = 1e-12;
/// Ratio of a feature that appears after a perfectly flat history.
const FIRST_CHANGE: f64 = 1e6;
/// Features per column.
const NF: usize = 4;
/// Feature names, for explanations.
pub const FEATURES: [&str; NF] = ["up", "down", "dev", "seas"];

/// Parameters (defaults: the configuration measured on NAB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NoveltyParams {
    /// Baseline median over this many previous values.
    pub baseline: usize,
    /// Recompute the median every this many events.
    pub every: usize,
    /// Values needed before the median is defined.
    pub min_history: usize,
    /// Window of the windowed mean.
    pub mean_window: usize,
    /// Seasonal lags: 1..=days days.
    pub days: usize,
    /// Seasonal history kept per column, in events (older lags count as missing).
    pub seasonal_cap: usize,
    /// Events at the start of a stream that are never flagged.
    pub warm: usize,
    /// Alarm level of the ratio (the sensitivity: lower flags more).
    pub alert: f64,
    /// Events after an alarm during which the ratio is capped at 1.
    pub cooldown: usize,
    /// Records are the maxima over this many previous events.
    pub horizon: usize,
}

impl Default for NoveltyParams {
    fn default() -> Self {
        NoveltyParams {
            baseline: 1000,
            every: 10,
            min_history: 10,
            mean_window: 16,
            days: 7,
            seasonal_cap: 20_160,
            warm: 10,
            alert: 1.05,
            cooldown: 20,
            horizon: 4032,
        }
    }
}

impl NoveltyParams {
    /// The score at and above which an event is flagged: `alert / (alert + alert)`.
    pub const THRESHOLD: f64 = 0.5;
}

impl ModelParams for NoveltyParams {
    const HELP: &'static [(&'static str, &'static str)] = &[
        ("baseline", "baseline median over this many previous values"),
        ("every", "recompute the median every this many events"),
        ("min_history", "values needed before the median is defined"),
        ("mean_window", "window of the windowed mean"),
        (
            "days",
            "seasonal lags: the same time 1..=days days earlier (at most 16)",
        ),
        (
            "seasonal_cap",
            "seasonal history kept per column, in events",
        ),
        (
            "warm",
            "events at the start of a stream that are never flagged",
        ),
        (
            "alert",
            "alarm level of the record ratio (1.05: 5% beyond every earlier deviation; lower flags more)",
        ),
        (
            "cooldown",
            "events after an alarm during which no new alarm is raised",
        ),
        (
            "horizon",
            "records are the maxima over this many previous events",
        ),
    ];

    fn validate(&self) -> Result<(), InvalidParam> {
        for (key, v) in [
            ("every", self.every),
            ("mean_window", self.mean_window),
            ("horizon", self.horizon),
            ("baseline", self.baseline),
        ] {
            if v == 0 {
                return Err(InvalidParam::new(key, "must be at least 1"));
            }
        }
        if self.baseline < self.min_history {
            return Err(InvalidParam::new(
                "baseline",
                "must be at least min_history",
            ));
        }
        if !(self.alert > 0.0 && self.alert.is_finite()) {
            return Err(InvalidParam::new("alert", "must be a positive number"));
        }
        if self.days > 16 {
            return Err(InvalidParam::new("days", "must be at most 16"));
        }
        Ok(())
    }
}

/// The registry entry of `novelty`.
pub const SPEC: ModelSpec = ModelSpec {
    name: "novelty",
    aliases: &["record-ratio"],
    title: "Novelty (record ratio)",
    summary: "record-ratio novelty: deviations beyond every earlier one, per column",
    params: &Schema::<NoveltyParams>::new(),
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
    _seed: u64,
) -> Result<Box<dyn StreamingDetector>, ParamError> {
    Ok(Box::new(Novelty::new(
        NoveltyParams::from_map(SPEC.name, p)?,
        dim,
    )))
}

fn load_streaming(bytes: &[u8]) -> Result<Box<dyn StreamingDetector>, String> {
    let m: Novelty = decode_state(bytes)?;
    Ok(Box::new(m))
}

/// A value's ratio to its record: 0 for nothing, a large constant for the first change after
/// a perfectly flat history.
fn record_ratio(f: f64, record: f64) -> f64 {
    if f <= EPS {
        0.0
    } else if record <= EPS {
        FIRST_CHANGE
    } else {
        f / record
    }
}

/// Warm-up, cooldown after an alarm, and the mapping of a ratio to a score.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Alarm {
    cool_until: Option<u64>,
}

impl Alarm {
    /// The score of event `i` with record ratio `r`: `r / (alert + r)`, 0 during warm-up,
    /// the ratio capped at 1 for `cooldown` events after an alarm.
    fn score(&mut self, p: &NoveltyParams, i: u64, mut r: f64) -> (f64, f64) {
        if (i as usize) < p.warm {
            r = 0.0;
        }
        match self.cool_until {
            Some(c) if i <= c => r = r.min(1.0),
            _ => {
                if r >= p.alert {
                    self.cool_until = Some(i + p.cooldown as u64);
                }
            }
        }
        (r / (p.alert + r), r)
    }
}

/// Sliding maximum over the last `horizon` events (monotone deque).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SlidingMax {
    q: VecDeque<(u64, f64)>,
}

impl SlidingMax {
    fn max(&self) -> f64 {
        self.q.front().map(|&(_, v)| v).unwrap_or(0.0)
    }

    fn push(&mut self, i: u64, v: f64, horizon: usize) {
        while self.q.back().is_some_and(|&(_, b)| b <= v) {
            self.q.pop_back();
        }
        self.q.push_back((i, v));
        while self
            .q
            .front()
            .is_some_and(|&(j, _)| j + horizon as u64 <= i)
        {
            self.q.pop_front();
        }
    }
}

/// The state of one input column.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Column {
    /// Previous `baseline` values (ring) and a scratch copy for the median.
    ring: VecDeque<f64>,
    scratch: Vec<f64>,
    median: Option<f64>,
    /// Last `mean_window` values and their sum.
    window: VecDeque<f64>,
    window_sum: f64,
    /// Seasonal history (t, x) and, per lag, the absolute index of the last event at or before
    /// the lag's target time (`None`: none yet).
    history: VecDeque<(f64, f64)>,
    /// Absolute index of `history[0]`.
    history_start: u64,
    lag: Vec<Option<u64>>,
    records: [SlidingMax; NF],
}

impl Column {
    fn new(p: &NoveltyParams) -> Self {
        Column {
            ring: VecDeque::with_capacity(p.baseline),
            scratch: Vec::with_capacity(p.baseline),
            median: None,
            window: VecDeque::with_capacity(p.mean_window),
            window_sum: 0.0,
            history: VecDeque::new(),
            history_start: 0,
            lag: vec![None; p.days],
            records: Default::default(),
        }
    }

    /// The four features of value `x` at time `t`, the `i`-th event (before the state takes it).
    fn features(&mut self, p: &NoveltyParams, i: u64, t: f64, x: f64) -> [f64; NF] {
        if i % p.every as u64 == 0 && self.ring.len() >= p.min_history {
            self.scratch.clear();
            self.scratch.extend(self.ring.iter().copied());
            self.median = median_in_place(&mut self.scratch);
        }
        if self.window.len() == p.mean_window {
            self.window_sum -= self.window.pop_front().unwrap_or(0.0);
        }
        self.window.push_back(x);
        self.window_sum += x;
        let mut f = [0.0; NF];
        if let Some(med) = self.median {
            f[0] = (x - med).max(0.0);
            f[1] = (med - x).max(0.0);
            if self.window.len() == p.mean_window {
                f[2] = (self.window_sum / p.mean_window as f64 - med).abs();
            }
        }
        // Seasonal: pointers only move forward; an evicted row counts as missing.
        let mut lags = [0.0f64; 16];
        let mut n = 0;
        let end = self.history_start + self.history.len() as u64;
        for k in 1..=p.days {
            let target = t - k as f64 * DAY;
            let mut ptr = self.lag[k - 1];
            loop {
                let next = ptr.map_or(0, |q| q + 1);
                if next >= end {
                    break;
                }
                if next < self.history_start {
                    // Rows before the kept history: skip to just before its start.
                    ptr = Some(self.history_start - 1).filter(|_| self.history_start > 0);
                    if ptr.is_none() {
                        break;
                    }
                    continue;
                }
                if self.history[(next - self.history_start) as usize].0 <= target {
                    ptr = Some(next);
                } else {
                    break;
                }
            }
            self.lag[k - 1] = ptr;
            if let Some(q) = ptr
                && q >= self.history_start
                && n < lags.len()
            {
                lags[n] = self.history[(q - self.history_start) as usize].1;
                n += 1;
            }
        }
        if n > 0 {
            let lag_median = median_in_place(&mut lags[..n]).unwrap_or(x);
            f[3] = (x - lag_median).abs();
        }
        f
    }

    /// Takes the event into the state.
    fn push(&mut self, p: &NoveltyParams, i: u64, t: f64, x: f64, f: &[f64; NF]) {
        for (rec, &v) in self.records.iter_mut().zip(f) {
            rec.push(i, v, p.horizon);
        }
        if self.ring.len() == p.baseline {
            self.ring.pop_front();
        }
        self.ring.push_back(x);
        if p.days > 0 {
            if self.history.len() == p.seasonal_cap.max(1) {
                self.history.pop_front();
                self.history_start += 1;
            }
            self.history.push_back((t, x));
        }
    }
}

/// The detector's state for one stream (one service): one [`Column`] per input feature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Novelty {
    params: NoveltyParams,
    columns: Vec<Column>,
    i: u64,
    alarm: Alarm,
    /// Column ratios of the last event, for contributions.
    last: Vec<f64>,
}

/// One scored event.
#[derive(Debug, Clone, PartialEq)]
pub struct NoveltyScore {
    /// `r / (alert + r)` in [0, 1]; flagged at 0.5 and above.
    pub score: f64,
    /// The record ratio.
    pub ratio: f64,
    /// Per input column, its largest ratio (the column's share of the alarm).
    pub column_ratios: Vec<f64>,
}

impl Novelty {
    pub fn new(params: NoveltyParams, columns: usize) -> Self {
        let cols = (0..columns).map(|_| Column::new(&params)).collect();
        Novelty {
            params,
            columns: cols,
            i: 0,
            alarm: Alarm::default(),
            last: vec![0.0; columns],
        }
    }

    pub fn dim(&self) -> usize {
        self.columns.len()
    }

    /// Scores the next event (time `t` in seconds, one value per column) and learns from it.
    pub fn update(&mut self, t: f64, x: &[f64]) -> NoveltyScore {
        debug_assert_eq!(x.len(), self.columns.len());
        let p = &self.params;
        let i = self.i;
        let mut r = 0.0f64;
        let mut column_ratios = Vec::with_capacity(x.len());
        for (col, &v) in self.columns.iter_mut().zip(x) {
            let f = col.features(p, i, t, v);
            let best = col
                .records
                .iter()
                .zip(&f)
                .map(|(rec, &fj)| record_ratio(fj, rec.max()))
                .fold(0.0f64, f64::max);
            col.push(p, i, t, v, &f);
            column_ratios.push(best);
            r = r.max(best);
        }
        let (score, ratio) = self.alarm.score(p, i, r);
        self.i += 1;
        self.last.clone_from(&column_ratios);
        NoveltyScore {
            score,
            ratio,
            column_ratios,
        }
    }
}

impl StreamingDetector for Novelty {
    fn dim(&self) -> usize {
        self.columns.len()
    }

    /// Novelty learns from every event anyway: learning is scoring without a decision.
    fn learn(&mut self, ts: f64, x: &[f64]) {
        self.update(ts, x);
    }

    /// After an alarm the cooldown holds the score below the alarm level, so every flagged
    /// event starts an alarm of its own.
    fn step(&mut self, ts: f64, x: &[f64]) -> Step {
        let s = self.update(ts, x);
        let flagged = s.score >= NoveltyParams::THRESHOLD;
        Step {
            score: s.score,
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

/// The record-ratio normalisation of [`Novelty`] applied to any score stream: each score over
/// the largest score of the previous `horizon` events, capped for `cooldown` events after an
/// alarm, mapped to `r / (alert + r)` in [0, 1] (0.5 at the alarm level). Stable across streams
/// of any scale, which a fixed squashing of raw scores is not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordRatio {
    params: NoveltyParams,
    record: SlidingMax,
    i: u64,
    alarm: Alarm,
}

impl RecordRatio {
    pub fn new(params: NoveltyParams) -> Self {
        RecordRatio {
            params,
            record: SlidingMax::default(),
            i: 0,
            alarm: Alarm::default(),
        }
    }

    /// Normalises the next score (`None`: no score for this event, e.g. during warm-up).
    pub fn update(&mut self, score: Option<f64>) -> f64 {
        let p = &self.params;
        let i = self.i;
        self.i += 1;
        let Some(s) = score.filter(|s| s.is_finite()) else {
            return 0.0;
        };
        let r = record_ratio(s, self.record.max());
        self.record.push(i, s.max(0.0), p.horizon);
        self.alarm.score(p, i, r).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(values: &[f64], step: f64) -> Vec<f64> {
        let mut d = Novelty::new(NoveltyParams::default(), 1);
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| d.update(i as f64 * step, &[v]).score)
            .collect()
    }

    #[test]
    fn a_spike_beyond_every_earlier_deviation_alarms_once() {
        let mut r = crate::rng::Rng::new(1);
        let mut v: Vec<f64> = (0..3000).map(|_| 50.0 + r.normal(0.0, 2.0)).collect();
        v[2500] = 90.0;
        v[2501] = 90.0;
        let s = run(&v, 300.0);
        assert!(s[2500] >= 0.5, "{}", s[2500]);
        // The cooldown keeps the next rows below the alarm level.
        assert!(s[2501..2521].iter().all(|&x| x < 0.5));
        // Ordinary rows after warm-up rarely reach a new record by 5%.
        let alarms = s[100..2500].iter().filter(|&&x| x >= 0.5).count();
        assert!(alarms < 10, "{alarms}");
        assert!(s.iter().all(|&x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn scale_and_shift_free() {
        let mut r = crate::rng::Rng::new(2);
        let v: Vec<f64> = (0..2000).map(|_| r.normal(0.0, 1.0)).collect();
        let scaled: Vec<f64> = v.iter().map(|x| 1e6 + 1e4 * x).collect();
        let (a, b) = (run(&v, 60.0), run(&scaled, 60.0));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn a_broken_daily_pattern_is_seen_by_the_seasonal_feature() {
        // A clean daily sine at 5-minute steps for 10 days; on day 9 the pattern flattens at
        // its mean, which no level feature notices but the same-time-yesterday one does.
        let per_day = 288;
        let mut v: Vec<f64> = (0..per_day * 10)
            .map(|i| (2.0 * std::f64::consts::PI * i as f64 / per_day as f64).sin())
            .collect();
        let start = per_day * 9 + per_day / 8;
        for x in v.iter_mut().skip(start).take(60) {
            *x = 0.0;
        }
        let s = run(&v, 300.0);
        assert!(s[start..start + 60].iter().any(|&x| x >= 0.5));
        assert!(s[per_day * 2..start].iter().all(|&x| x < 0.5));
    }

    #[test]
    fn flat_streams_score_zero_and_the_first_change_alarms() {
        let mut v = vec![7.0; 500];
        v[400] = 7.5;
        let s = run(&v, 1.0);
        assert!(s[..400].iter().all(|&x| x == 0.0));
        assert!(s[400] >= 0.5);
    }

    #[test]
    fn record_ratio_normalises_any_scale() {
        let mut a = RecordRatio::new(NoveltyParams::default());
        let mut b = RecordRatio::new(NoveltyParams::default());
        for i in 0..300 {
            let s = 1.0 + (i % 7) as f64 * 0.01;
            let (x, y) = (a.update(Some(s)), b.update(Some(1000.0 * s)));
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
        assert!(a.update(Some(2.0)) >= 0.5);
        assert_eq!(a.update(None), 0.0);
        assert!(a.update(Some(3.0)) < 0.5, "cooldown");
    }

    #[test]
    fn seasonal_history_is_capped() {
        let p = NoveltyParams {
            seasonal_cap: 100,
            ..NoveltyParams::default()
        };
        let mut d = Novelty::new(p, 1);
        for i in 0..5000 {
            let s = d.update(i as f64 * 3600.0, &[(i % 24) as f64]);
            assert!(s.score.is_finite());
        }
        assert!(d.columns[0].history.len() <= 100);
    }
}
