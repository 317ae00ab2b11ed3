//! CoDev, the default detector: a streaming, label-free model of a service's metrics, each in
//! its own time context and all of them together, that pages once per incident start.
//!
//! Per metric, against the last `window` learned values (6 h at 5-minute steps) and the same
//! time on the previous `days` days:
//! - level `L` = median of the window; scale `s` = max(1.4826·MAD, the metric's mean step
//!   between learned values, 1e-9·|L|): the step-size floor keeps metrics that sit still and
//!   then jump from producing huge z-scores; and a count (every learned value whole) at a
//!   whole value has `s` ≥ 1, so a count moving by one is one unit of deviation; in streams
//!   of more than one event a minute, a metric that rarely moves (at most 2% of its window
//!   off its level) has `s` ≥ its typical move (the mean size of its nonzero steps between
//!   events, paged ones included), and one that has never moved counts its first move as
//!   `still` (1) unit at most, so CPU steal read every second blipping by 0.01 s is one unit,
//!   not the clip;
//! - seasonal level `S` = median of the values 1..days days earlier (when the stream has a
//!   whole number of events per day);
//! - three features, each clipped to ±10: the level deviation (the smaller of `x − L` and
//!   `x − S` when both point the same way, else 0), the range deviation (how far `x` lies
//!   beyond the window's min or max, which reacts on the first event of a change), and the
//!   seasonal deviation `(x − S)/s`.
//!
//! Joint structure: a running covariance of the 3M features (a 30-day memory) and its ridge
//! inverse `A`, refreshed daily; `d = fᵀAf` is the one-event channel, and the persistence
//! channel `m` is the median of the last `span` values of `d`: about ten minutes of events,
//! which is the mean of the last two at 5-minute steps and 16 events at one a second (a
//! lasting change, such as a saturated CPU, stands out there while one-event spikes do not).
//! Calibration: each channel keeps a 7-day log-histogram of its
//! own values and extrapolates an exponential tail from its 98th and 96th percentiles to the
//! rate `ρ` per day; `R = max(d/T1, m/T2)` reads "beyond what this service reaches about ρ
//! times a day", on any series and any scale. The knob is stated as expected false pages per
//! service-day and mapped to `ρ` by a calibration measured without labels (docs/models.md).
//!
//! Alarms: `R ≥ 1` starts one; it stays on (every event flagged) while the one-event channel
//! stays above half its threshold, at most `max_hold` events (one page), then waits for
//! `R < 0.5` before it can start again. Flagged events are never learned (an incident is not
//! learnt as normal), and learning resumes after the alarm, which re-baselines a lasting shift
//! within half a window. The score is the held episode score `H = max(R, 0.97·H_prev)` mapped
//! to `H / (1 + H)`: 0.5 at the alarm level, high through an incident.
//!
//! The design and its measurements are in `research/real/FINDINGS.md`; this is a port of its
//! reference implementation, checked against its test vectors.
//!
//! Why one file of about 880 lines before its tests: the per-metric features, the joint
//! distance, the calibration and the alarm logic are one per-event update over one state, in
//! the order the reference implementation fixes (its test vectors check that order).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::registry::{
    Build, InvalidParam, ModelParams, ModelSpec, ParamError, ParamMap, Schema, decode_tagged,
    encode_tagged,
};
use crate::streaming::{Step, StreamingDetector};
use crate::threshold::ThresholdMethod;

/// Clip of every joint feature.
const ZCLIP: f64 = 10.0;
/// Values a metric needs in its window before it is scored.
const MIN_LEVEL: usize = 12;
/// Histogram entries and covariance updates needed before scoring.
const WARM: usize = 288;
/// Covariance updates needed per joint feature before scoring: an inverse covariance from
/// fewer samples stretches distances in directions it has seen little of (a node with 24
/// metrics, 72 features, scraped every second, paged on one-second bursts while its
/// covariance held 5 to 20 minutes of events).
const COV_PER_FEATURE: usize = 20;
/// Covariance updates between refreshes of the inverse.
const INV_EVERY: u64 = 288;
/// Tail fraction of the threshold extrapolation, and the floor of the thresholds.
const TAIL: f64 = 0.02;
const FLOOR: f64 = 3.0;
/// Events whose timestamps give the stream's events per day (their median gap). Fewer than
/// the warm-up needs anyway, so no event that could be scored waits for it: at one event a
/// second (a node scraped every second) the first minute.
const PROBE: usize = 60;
/// Events a day above which a metric that rarely moves has its typical move as its scale
/// floor (more than one a minute: a node scraped every few seconds, not 5-minute
/// aggregates).
const FAST: f64 = 1440.0;
/// Longest persistence channel, in events.
const MAX_SPAN: usize = 16;
/// Seconds the automatic persistence channel spans.
const SPAN_SECONDS: f64 = 600.0;
/// Seconds the hold channel spans (3 to `MAX_SPAN` events).
const HOLD_SECONDS: f64 = 1800.0;
/// Scales, MADs and thresholds are refreshed every this many events.
const REFRESH: u64 = 12;
/// Histogram: bin 0 for x <= 1e-4, 160 bins of 1/8 decade from 1e-4, one overflow bin.
const BINS: usize = 160;
/// Leads a saved state: its layout (numbers as byte strings, histograms as their bins).
const LAYOUT: &[u8] = b"codev/5:";
const BIN_LO: f64 = -4.0;
const BIN_W: f64 = 0.125;

/// Float noise at magnitude `a`: smaller differences are no move, and no scale is smaller.
fn noise(a: f64) -> f64 {
    1e-9 * a.abs() + 1e-12
}

/// Which changes count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Both,
    Up,
    Down,
}

/// The knob's calibration, measured without labels on the unlabelled train split of the real
/// services set: (ρ, alarm pages per service-day).
const KNOB: [(f64, f64); 5] = [
    (0.01, 0.33),
    (0.03, 0.39),
    (0.1, 0.61),
    (0.3, 1.12),
    (1.0, 2.08),
];

/// ρ for an expected number of false pages per service-day (log-log interpolation of the
/// calibration, extrapolated beyond its ends).
pub fn rho_for_pages(pages: f64) -> f64 {
    let lp = pages.max(1e-6).ln();
    let seg = KNOB
        .windows(2)
        .position(|w| lp <= w[1].1.ln())
        .unwrap_or(KNOB.len() - 2);
    let (a, b) = (KNOB[seg], KNOB[seg + 1]);
    let t = (lp - a.1.ln()) / (b.1.ln() - a.1.ln());
    (a.0.ln() + t * (b.0.ln() - a.0.ln())).exp()
}

/// CoDev parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CodevParams {
    /// The sensitivity, as the expected false pages per service-day.
    pub pages_per_day: f64,
    /// `both`, `up` (only increases count) or `down`.
    pub direction: Direction,
    /// Minimum relative change of a metric against its level (0.1: 10%) for its level
    /// deviation to count.
    pub min_change: f64,
    /// Level window, in learned events.
    pub window: usize,
    /// Seasonal lags, in days (0: no seasonal context).
    pub days: usize,
    /// Ridge added to the covariance before inversion.
    pub ridge: f64,
    /// Window of the score histograms, in learned events.
    pub calibration: usize,
    /// Memory of the covariance, in learned events.
    pub memory: usize,
    /// Most flagged events of one alarm (one page).
    pub max_hold: usize,
    /// An alarm ends when the score falls below this share of its threshold.
    pub release: f64,
    /// Events of the persistence channel: the median of the last `span` one-event distances
    /// (2: the mean of two). 0: about ten minutes of events, from 2 at 5-minute steps to 16.
    pub span: usize,
    /// Decay per event of the held episode score.
    pub decay: f64,
    /// In streams of more than one event a minute, the largest deviation (in scale units) of
    /// a metric that is not a count and has never moved, off the one value it held. 0: no
    /// cap.
    pub still: f64,
    /// In streams of at most one event a minute, a metric whose level deviation stays at
    /// least this many scale units off (its median over about 30 minutes of events, 3 to 16)
    /// starts an alarm of its own. 0: off.
    pub hold: f64,
}

impl Default for CodevParams {
    fn default() -> Self {
        CodevParams {
            pages_per_day: 0.61,
            direction: Direction::Both,
            min_change: 0.0,
            window: 72,
            days: 7,
            ridge: 0.3,
            calibration: 2016,
            memory: 8640,
            max_hold: 12,
            release: 0.5,
            span: 0,
            decay: 0.97,
            still: 1.0,
            hold: 0.0,
        }
    }
}

impl ModelParams for CodevParams {
    const HELP: &'static [(&'static str, &'static str)] = &[
        (
            "pages_per_day",
            "sensitivity: expected false pages per service-day (0.61 is rho 0.1)",
        ),
        ("direction", "which changes count: both, up or down"),
        (
            "min_change",
            "minimum relative change against the level for it to count (0.1: 10%; 0: off)",
        ),
        (
            "window",
            "level window, in learned events (72: 6 h at 5-minute steps)",
        ),
        (
            "days",
            "seasonal lags: the same time 1..=days days earlier (0: off, at most 16)",
        ),
        (
            "ridge",
            "ridge added to the feature covariance before inversion",
        ),
        (
            "calibration",
            "window of the score histograms, in learned events",
        ),
        (
            "memory",
            "memory of the feature covariance, in learned events",
        ),
        ("max_hold", "most flagged events of one alarm"),
        ("release", "an alarm ends below this share of its threshold"),
        (
            "span",
            "events of the persistence channel, the median of the last span distances (0: about 10 minutes of events, 2 at 5-minute steps, at most 16)",
        ),
        ("decay", "per-event decay of the held episode score"),
        (
            "still",
            "faster than one event a minute: largest deviation (in scale units) of a metric that is not a count and has never moved, off the one value it held (0: no cap)",
        ),
        (
            "hold",
            "at most one event a minute: a metric held at least this many scale units off its level for most of about 30 minutes starts an alarm of its own (0: off; 8 catches more incidents, later, at more pages)",
        ),
    ];

    fn validate(&self) -> Result<(), InvalidParam> {
        if !(self.pages_per_day > 0.0 && self.pages_per_day.is_finite()) {
            return Err(InvalidParam::new(
                "pages_per_day",
                "must be a positive number",
            ));
        }
        if !(self.min_change >= 0.0 && self.min_change.is_finite()) {
            return Err(InvalidParam::new(
                "min_change",
                "must be 0 or a positive number",
            ));
        }
        if self.window < MIN_LEVEL {
            return Err(InvalidParam::new(
                "window",
                format!("must be at least {MIN_LEVEL}"),
            ));
        }
        if self.days > 16 {
            return Err(InvalidParam::new("days", "must be at most 16"));
        }
        if !(self.ridge > 0.0 && self.ridge.is_finite()) {
            return Err(InvalidParam::new("ridge", "must be a positive number"));
        }
        if self.calibration < WARM {
            return Err(InvalidParam::new(
                "calibration",
                format!("must be at least {WARM}"),
            ));
        }
        if self.memory == 0 || self.max_hold == 0 {
            return Err(InvalidParam::new(
                "memory",
                "and max_hold must be at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.release) {
            return Err(InvalidParam::new("release", "must be in [0, 1]"));
        }
        if self.span == 1 || self.span > MAX_SPAN {
            return Err(InvalidParam::new(
                "span",
                format!("must be 0 (automatic) or 2 to {MAX_SPAN}"),
            ));
        }
        if !(0.0..1.0).contains(&self.decay) {
            return Err(InvalidParam::new("decay", "must be in [0, 1)"));
        }
        if !(self.still >= 0.0 && self.still.is_finite()) {
            return Err(InvalidParam::new("still", "must be 0 or a positive number"));
        }
        if !(0.0..=ZCLIP).contains(&self.hold) {
            return Err(InvalidParam::new(
                "hold",
                format!(
                    "must be 0 (off) or a number of scale units up to {ZCLIP} (features are clipped there)"
                ),
            ));
        }
        Ok(())
    }
}

/// The registry entry of `codev`.
pub const SPEC: ModelSpec = ModelSpec {
    name: "codev",
    aliases: &["default"],
    title: "CoDev (default)",
    summary: "the default: per-metric level, range and seasonal deviations, joined by their covariance, calibrated to a page rate",
    params: &Schema::<CodevParams>::new(),
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
    _seed: u64,
) -> Result<Box<dyn StreamingDetector>, ParamError> {
    Ok(Box::new(Codev::new(
        CodevParams::from_map(SPEC.name, p)?,
        dim,
    )))
}

fn load_streaming(bytes: &[u8]) -> Result<Box<dyn StreamingDetector>, String> {
    let m: Codev = decode_tagged(LAYOUT, bytes)?;
    let f = 3 * m.dim;
    // In its probe a new service has no per-metric state yet (earlier versions saved a fresh
    // one); afterwards every part has its size.
    let probing = m.per_day == 0.0
        && m.metrics.is_empty()
        && m.cov.is_empty()
        && m.mu.is_empty()
        && m.inv.is_none()
        && m.contrib.is_empty();
    let sized = m.metrics.len() == m.dim
        && m.cov.len() == f * f
        && m.mu.len() == f
        && m.inv.as_ref().is_none_or(|v| v.len() == f * f)
        && m.contrib.len() == m.dim;
    let consistent = (probing || sized)
        && m.probe_rows.len() == m.probe_ts.len() * m.dim
        && m.metrics.iter().all(|x| x.sorted.len() == x.ring.len());
    if !consistent {
        return Err("codev: state does not match its number of metrics".into());
    }
    Ok(Box::new(m))
}

/// A sliding histogram of the last `cap` values of a channel (saved as its bins only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "SavedHist")]
struct Hist {
    #[serde(with = "crate::packed::deque")]
    bins: VecDeque<u8>,
    #[serde(skip)]
    counts: Vec<u32>,
}

#[derive(Deserialize)]
struct SavedHist {
    #[serde(with = "crate::packed::deque")]
    bins: VecDeque<u8>,
}

impl TryFrom<SavedHist> for Hist {
    type Error = String;

    fn try_from(h: SavedHist) -> Result<Hist, String> {
        let mut out = Hist::new();
        if !h.bins.is_empty() {
            out.counts = vec![0; BINS + 2];
        }
        for &b in &h.bins {
            *out.counts
                .get_mut(b as usize)
                .ok_or_else(|| format!("codev: histogram bin {b} out of range"))? += 1;
        }
        out.bins = h.bins;
        Ok(out)
    }
}

impl Hist {
    /// An empty histogram; its counts are allocated by the first value (a service that never
    /// gets that far costs no bins).
    fn new() -> Self {
        Hist {
            bins: VecDeque::new(),
            counts: Vec::new(),
        }
    }

    fn bin(x: f64) -> usize {
        if x.is_nan() || x <= 0.0 {
            return 0;
        }
        let b = (x.log10() - BIN_LO) / BIN_W;
        if b < 0.0 {
            0
        } else if b >= BINS as f64 {
            BINS + 1
        } else {
            1 + b as usize
        }
    }

    fn add(&mut self, x: f64, cap: usize) {
        if self.counts.is_empty() {
            self.counts = vec![0; BINS + 2];
        }
        if self.bins.len() == cap
            && let Some(old) = self.bins.pop_front()
        {
            self.counts[old as usize] -= 1;
        }
        let b = Self::bin(x);
        self.bins.push_back(b as u8);
        self.counts[b] += 1;
    }

    /// The q-quantile, log-interpolated inside its bin.
    fn quantile(&self, q: f64) -> f64 {
        if self.counts.is_empty() {
            return 10f64.powf(BIN_LO);
        }
        let tail = (1.0 - q) * self.bins.len() as f64;
        let mut acc = 0.0;
        for b in (0..BINS + 2).rev() {
            let c = self.counts[b] as f64;
            if c > 0.0 && acc + c >= tail {
                if b == BINS + 1 {
                    return 10f64.powf(BIN_LO + BINS as f64 * BIN_W);
                }
                if b == 0 {
                    return 10f64.powf(BIN_LO);
                }
                let frac = (tail - acc) / c;
                return 10f64.powf(BIN_LO + (b as f64 - frac) * BIN_W);
            }
            acc += c;
        }
        10f64.powf(BIN_LO)
    }

    /// The threshold a value exceeds at rate `r` per event: the empirical quantile for high
    /// rates, else an exponential tail above the `1 − TAIL` quantile.
    fn threshold(&self, r: f64) -> f64 {
        if r >= TAIL {
            return self.quantile(1.0 - r).max(FLOOR);
        }
        let q1 = self.quantile(1.0 - TAIL).max(FLOOR);
        let q2 = self.quantile(1.0 - 2.0 * TAIL);
        let a = q1 - q2;
        if a <= 0.0 {
            return q1;
        }
        (q1 + a / std::f64::consts::LN_2 * (TAIL / r).ln()).max(FLOOR)
    }
}

/// One metric's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Metric {
    /// Learned values in arrival order, and the same sorted.
    #[serde(with = "crate::packed::deque")]
    ring: VecDeque<f64>,
    #[serde(with = "crate::packed::vec")]
    sorted: Vec<f64>,
    /// |steps| between consecutive learned values (at most `window`) and their sum.
    #[serde(with = "crate::packed::deque")]
    steps: VecDeque<f64>,
    step_sum: f64,
    last: Option<f64>,
    /// Cached 1.4826·MAD.
    mad: Option<f64>,
    /// A learned value was not a whole number.
    fractional: bool,
    /// The mean size of the nonzero steps between consecutive events, flagged ones too (a
    /// memory of `window` moves), how many there were, and the last event's value.
    move_size: f64,
    moves: u64,
    seen: Option<f64>,
    /// Level deviations of the last events of the hold channel (all but the newest).
    #[serde(with = "crate::packed::deque")]
    held: VecDeque<f64>,
    /// Scratch: this event's held deviation (their median, absolute).
    #[serde(skip)]
    held_dev: f64,
    /// Seasonal history: one value per event (the value if learned, else the level).
    #[serde(with = "crate::packed::deque")]
    season: VecDeque<f64>,
}

impl Metric {
    fn new() -> Self {
        Metric {
            ring: VecDeque::new(),
            sorted: Vec::new(),
            steps: VecDeque::new(),
            step_sum: 0.0,
            last: None,
            mad: None,
            fractional: false,
            move_size: 0.0,
            moves: 0,
            seen: None,
            held: VecDeque::new(),
            held_dev: 0.0,
            season: VecDeque::new(),
        }
    }

    fn median(&self) -> f64 {
        let n = self.sorted.len();
        if n % 2 == 1 {
            self.sorted[n / 2]
        } else {
            0.5 * (self.sorted[n / 2 - 1] + self.sorted[n / 2])
        }
    }

    /// The k-th smallest |w − m| over the sorted window, k = n/2 (0-based), walking out from
    /// the median.
    fn mad_about(&self, m: f64) -> f64 {
        let a = &self.sorted;
        let n = a.len();
        let k = n / 2;
        let mut p = n / 2;
        while p > 0 && a[p - 1] > m {
            p -= 1;
        }
        while p < n && a[p] <= m {
            p += 1;
        }
        let (mut lo, mut hi) = (p as isize - 1, p);
        let mut v = 0.0;
        for _ in 0..=k {
            let dl = if lo >= 0 {
                m - a[lo as usize]
            } else {
                f64::INFINITY
            };
            let dh = if hi < n { a[hi] - m } else { f64::INFINITY };
            if dl <= dh {
                v = dl;
                lo -= 1;
            } else {
                v = dh;
                hi += 1;
            }
        }
        v
    }

    /// At most a share TAIL of the window lies off `level`: moves that rare fall beyond the
    /// upper quantile the thresholds extrapolate from, so the calibration cannot know them.
    fn rarely_moves(&self, level: f64) -> bool {
        let at = self.sorted.partition_point(|v| *v <= level)
            - self.sorted.partition_point(|v| *v < level);
        (self.sorted.len() - at) as f64 <= TAIL * self.sorted.len() as f64
    }

    /// Every event's value, flagged ones too: a metric's moves say what one move of it is,
    /// not what is normal for it (a blip that paged is the metric's resolution all the same).
    fn observe(&mut self, x: f64, window: usize) {
        if let Some(prev) = self.seen {
            let dx = (x - prev).abs();
            if dx > noise(x.abs().max(prev.abs())) {
                self.moves += 1;
                self.move_size += (dx - self.move_size) / self.moves.min(window as u64) as f64;
            }
        }
        self.seen = Some(x);
    }

    fn learn(&mut self, x: f64, window: usize) {
        if x != x.floor() {
            self.fractional = true;
        }
        // The value leaving the window (at `i`) and the one entering (before the `j` values
        // below it) trade places: the values between them move one step, the rest stay.
        let leaving = if self.ring.len() == window {
            self.ring.pop_front()
        } else {
            None
        };
        let i = leaving.map_or(usize::MAX, |old| self.sorted.partition_point(|v| *v < old));
        let j = self.sorted.partition_point(|v| *v < x);
        if i >= self.sorted.len() {
            self.sorted.insert(j, x);
        } else if j <= i {
            self.sorted.copy_within(j..i, j + 1);
            self.sorted[j] = x;
        } else {
            // The leaving value is below `x`: once it is gone, `x` has `j - 1` values below.
            self.sorted.copy_within(i + 1..j, i);
            self.sorted[j - 1] = x;
        }
        self.ring.push_back(x);
        if let Some(prev) = self.last {
            if self.steps.len() == window
                && let Some(old) = self.steps.pop_front()
            {
                self.step_sum -= old;
            }
            let dx = (x - prev).abs();
            self.steps.push_back(dx);
            self.step_sum += dx;
        }
        self.last = Some(x);
    }
}

/// Alarm states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum State {
    Armed,
    Alarm,
    Refractory,
}

/// One service's CoDev state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Codev {
    params: CodevParams,
    dim: usize,
    /// The first events' timestamps and rows, until the events per day are known.
    #[serde(with = "crate::packed::vec")]
    probe_ts: Vec<f64>,
    #[serde(with = "crate::packed::vec")]
    probe_rows: Vec<f64>,
    /// Events per day (for the rate) and per seasonal lag (0: no seasonal context).
    per_day: f64,
    period: usize,
    metrics: Vec<Metric>,
    #[serde(with = "crate::packed::vec")]
    mu: Vec<f64>,
    /// Row-major; only its lower triangle (with the diagonal) is kept up to date.
    #[serde(with = "crate::packed::vec")]
    cov: Vec<f64>,
    #[serde(with = "crate::packed::opt_vec")]
    inv: Option<Vec<f64>>,
    n_cov: u64,
    h1: Hist,
    h2: Hist,
    d_prev: f64,
    /// One-event distances of the last `span − 1` events, oldest first (spans above 2).
    #[serde(with = "crate::packed::deque")]
    d_ring: VecDeque<f64>,
    t1: f64,
    t2: f64,
    t: u64,
    state: State,
    age: usize,
    /// The hold channel's alarm state (armed or refractory).
    hold_state: State,
    held: f64,
    /// Outputs of the last event.
    #[serde(with = "crate::packed::vec")]
    contrib: Vec<f64>,
    /// Scratch: features, A·f and the metrics' levels.
    #[serde(skip)]
    f: Vec<f64>,
    #[serde(skip)]
    af: Vec<f64>,
    #[serde(skip)]
    levels: Vec<f64>,
}

/// The result of one event.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Out {
    r: f64,
    flagged: bool,
    start: bool,
}

impl Codev {
    /// A new service: until its probe ends it holds only its first events; the per-metric
    /// state is allocated then ([`Codev::start`]), so a service seen a few times costs little.
    pub fn new(params: CodevParams, dim: usize) -> Self {
        Codev {
            params,
            dim,
            probe_ts: Vec::new(),
            probe_rows: Vec::new(),
            per_day: 0.0,
            period: 0,
            metrics: Vec::new(),
            mu: Vec::new(),
            cov: Vec::new(),
            inv: None,
            n_cov: 0,
            h1: Hist::new(),
            h2: Hist::new(),
            d_prev: 0.0,
            d_ring: VecDeque::new(),
            t1: 0.0,
            t2: 0.0,
            t: 0,
            state: State::Armed,
            age: 0,
            hold_state: State::Armed,
            held: 0.0,
            contrib: Vec::new(),
            f: Vec::new(),
            af: Vec::new(),
            levels: Vec::new(),
        }
    }

    /// The per-metric state, the features' mean and covariance (identity) and the
    /// contributions, once the probe has ended. States saved by earlier versions have them
    /// from the start, unchanged until then: those are kept.
    fn start(&mut self) {
        if !self.metrics.is_empty() {
            return;
        }
        let f = 3 * self.dim;
        self.metrics = (0..self.dim).map(|_| Metric::new()).collect();
        self.mu = vec![0.0; f];
        self.cov = vec![0.0; f * f];
        for i in 0..f {
            self.cov[i * f + i] = 1.0;
        }
        self.contrib = vec![0.0; self.dim];
    }

    /// Takes one event: while the events per day are unknown it is kept (and not judged);
    /// then every kept event is replayed in order. Returns the event's result once known.
    fn take(&mut self, ts: f64, x: &[f64]) -> Option<Out> {
        if self.per_day > 0.0 {
            return Some(self.update(x));
        }
        self.probe_ts.push(ts);
        self.probe_rows.extend_from_slice(x);
        if self.probe_ts.len() < PROBE {
            return None;
        }
        let mut gaps: Vec<f64> = self.probe_ts.windows(2).map(|w| w[1] - w[0]).collect();
        gaps.sort_by(f64::total_cmp);
        let n = gaps.len();
        let dt = if n % 2 == 1 {
            gaps[n / 2]
        } else {
            0.5 * (gaps[n / 2 - 1] + gaps[n / 2])
        };
        let (per_day, period) = if dt > 0.0 {
            let p = (86_400.0 / dt).round();
            (
                86_400.0 / dt,
                if (24.0..=4032.0).contains(&p) && self.params.days > 0 {
                    p as usize
                } else {
                    0
                },
            )
        } else {
            (288.0, 0)
        };
        self.per_day = per_day;
        self.period = period;
        self.start();
        let rows = std::mem::take(&mut self.probe_rows);
        self.probe_ts = Vec::new();
        let mut last = None;
        for row in rows.chunks_exact(self.dim.max(1)) {
            last = Some(self.update(row));
        }
        last
    }

    /// Events of the persistence channel.
    fn span(&self) -> usize {
        if self.params.span > 0 {
            return self.params.span;
        }
        self.events_in(SPAN_SECONDS, 2)
    }

    /// Events of this stream in `seconds`, rounded, at least `min` and at most `MAX_SPAN`.
    fn events_in(&self, seconds: f64, min: usize) -> usize {
        (seconds * self.per_day / 86_400.0)
            .round()
            .clamp(min as f64, MAX_SPAN as f64) as usize
    }

    /// Events of the hold channel: about 30 minutes of them, 3 to `MAX_SPAN`.
    fn hold_span(&self) -> usize {
        self.events_in(HOLD_SECONDS, 3)
    }

    /// The spec's per-event update (research/real/FINDINGS.md §2).
    fn update(&mut self, x: &[f64]) -> Out {
        let p = &self.params;
        let m_n = self.dim;
        let fdim = 3 * m_n;
        let season_len = p.days * self.period;
        let fast = self.per_day > FAST;
        self.f.clear();
        self.f.resize(fdim, 0.0);
        self.levels.clear();
        self.levels.resize(m_n, 0.0);
        let mut ready = true;
        for (j, (m, &xv)) in self.metrics.iter_mut().zip(x).enumerate() {
            let mut level = xv;
            if m.sorted.len() >= MIN_LEVEL {
                level = m.median();
                if self.t % REFRESH == 0 || m.mad.is_none() {
                    m.mad = Some(1.4826 * m.mad_about(level));
                }
                let mut s = m.mad.unwrap_or(0.0);
                let step = if m.steps.is_empty() {
                    0.0
                } else {
                    m.step_sum / m.steps.len() as f64
                };
                s = s.max(step).max(noise(level));
                // A count (every learned value whole) at a whole value: one is its resolution.
                if !m.fractional && xv == xv.floor() {
                    s = s.max(1.0);
                } else if fast && m.rarely_moves(level) {
                    // It moves by its typical move (CPU time read every second by 0.01 s);
                    // one that never moved counts `still` units at most.
                    if m.moves > 0 {
                        s = s.max(m.move_size);
                    } else if p.still > 0.0 {
                        s = s.max((xv - level).abs() / p.still);
                    }
                }
                let mut dv = xv - level;
                let mut zs = None;
                if season_len > 0 && m.season.len() >= self.period {
                    let mut lags = [0.0f64; 16];
                    let mut nl = 0;
                    for k in 1..=p.days {
                        if k * self.period > m.season.len() {
                            break;
                        }
                        lags[nl] = m.season[m.season.len() - k * self.period];
                        nl += 1;
                    }
                    let lags = &mut lags[..nl];
                    lags.sort_by(f64::total_cmp);
                    let med = if nl % 2 == 1 {
                        lags[nl / 2]
                    } else {
                        0.5 * (lags[nl / 2 - 1] + lags[nl / 2])
                    };
                    let ds = xv - med;
                    zs = Some(ds / s);
                    dv = if (dv > 0.0) == (ds > 0.0) {
                        if dv.abs() < ds.abs() { dv } else { ds }
                    } else {
                        0.0
                    };
                }
                if (xv - level).abs() < p.min_change * level.abs() {
                    dv = 0.0;
                }
                let dir = |v: f64| match p.direction {
                    Direction::Up if v < 0.0 => 0.0,
                    Direction::Down if v > 0.0 => 0.0,
                    _ => v,
                };
                self.f[j] = dir(dv / s).clamp(-ZCLIP, ZCLIP);
                let (lo, hi) = (m.sorted[0], m.sorted[m.sorted.len() - 1]);
                let mut rz = if xv > hi {
                    (xv - hi) / s
                } else if xv < lo {
                    (xv - lo) / s
                } else {
                    0.0
                };
                if let Some(z) = zs
                    && rz != 0.0
                {
                    rz = if (rz > 0.0) == (z > 0.0) {
                        if rz.abs() < z.abs() { rz } else { z }
                    } else {
                        0.0
                    };
                }
                self.f[m_n + j] = dir(rz).clamp(-ZCLIP, ZCLIP);
                self.f[2 * m_n + j] = zs.map_or(0.0, |z| dir(z).clamp(-ZCLIP, ZCLIP));
            } else {
                ready = false;
            }
            self.levels[j] = level;
            if season_len > 0 && m.season.len() < self.period {
                ready = false;
            }
        }
        // Joint distance and contributions.
        self.af.clear();
        self.af.resize(fdim, 0.0);
        let mut d = 0.0;
        match &self.inv {
            Some(a) => {
                for i in 0..fdim {
                    let row = &a[i * fdim..(i + 1) * fdim];
                    let s: f64 = row.iter().zip(&self.f).map(|(a, f)| a * f).sum();
                    self.af[i] = s;
                    d += s * self.f[i];
                }
            }
            None => {
                for i in 0..fdim {
                    self.af[i] = self.f[i] / (1.0 + p.ridge);
                    d += self.af[i] * self.f[i];
                }
            }
        }
        let d = d.max(0.0);
        let mut total = 0.0;
        for j in 0..m_n {
            let c: f64 = (0..3)
                .map(|b| self.f[b * m_n + j] * self.af[b * m_n + j])
                .sum();
            self.contrib[j] = c.max(0.0);
            total += self.contrib[j];
        }
        for c in &mut self.contrib {
            *c = if total > 0.0 {
                *c / total
            } else {
                1.0 / m_n as f64
            };
        }
        let span = self.span();
        let dm = persistence(&mut self.d_ring, span, d, self.d_prev);
        // The hold channel: each metric's level deviation, its median over the hold span.
        let hold_on = p.hold > 0.0 && !fast;
        let mut rh = 0.0f64;
        if hold_on {
            let hs = self.hold_span();
            for (m, &z) in self.metrics.iter_mut().zip(&self.f) {
                let prev = m.held.back().copied().unwrap_or(z);
                m.held_dev = persistence(&mut m.held, hs, z, prev).abs();
                rh = rh.max(m.held_dev / p.hold);
            }
        }
        // Calibration.
        let r = rho_for_pages(p.pages_per_day) / self.per_day;
        if self.t % REFRESH == 0 || self.t1 <= 0.0 {
            self.t1 = self.h1.threshold(r);
            self.t2 = self.h2.threshold(r);
        }
        let scoring = ready
            && self.h1.bins.len() >= WARM
            && self.n_cov >= WARM as u64
            && self.n_cov >= (COV_PER_FEATURE * fdim) as u64;
        let (r1, r2) = if scoring {
            (d / self.t1, dm / self.t2)
        } else {
            (0.0, 0.0)
        };
        // The hold channel waits for a full calibration window: the main channels' quiet
        // start (a week at 5-minute steps) is its too.
        if !scoring || self.h1.bins.len() < p.calibration {
            rh = 0.0;
        }
        let score = r1.max(r2);
        // Alarm state machine.
        let off = p.release;
        let mut flagged = false;
        let mut start = false;
        if self.state == State::Alarm {
            self.age += 1;
            if r1 < off || self.age >= p.max_hold {
                self.state = State::Refractory;
            } else {
                flagged = true;
            }
        }
        if self.state == State::Refractory && score < off {
            self.state = State::Armed;
        }
        if self.state == State::Armed && score >= 1.0 {
            self.state = State::Alarm;
            self.age = 0;
            flagged = true;
            start = true;
        }
        // The hold channel's own alarm: one flagged event, then refractory until it falls
        // below `off`. While the main alarm is on or refractory, a hold is part of its episode.
        if hold_on {
            if self.hold_state == State::Refractory && rh < off {
                self.hold_state = State::Armed;
            }
            if self.hold_state == State::Armed && rh >= 1.0 {
                self.hold_state = State::Refractory;
                if self.state == State::Armed {
                    // Only the hold flags this event: the held metrics are its contributions.
                    let held = |m: &Metric| {
                        if m.held_dev >= p.hold {
                            m.held_dev
                        } else {
                            0.0
                        }
                    };
                    let total: f64 = self.metrics.iter().map(held).sum();
                    for (c, m) in self.contrib.iter_mut().zip(&self.metrics) {
                        *c = held(m) / total;
                    }
                    flagged = true;
                    start = true;
                }
            }
        }
        // Learning: flagged events are not learned.
        let learn = !flagged;
        for (j, (m, &xv)) in self.metrics.iter_mut().zip(x).enumerate() {
            if season_len > 0 {
                if m.season.len() == season_len {
                    m.season.pop_front();
                }
                m.season.push_back(if learn { xv } else { self.levels[j] });
            }
            // Only fast streams read the moves (the scale floor of metrics that rarely move).
            if fast {
                m.observe(xv, p.window);
            }
            if learn {
                m.learn(xv, p.window);
            }
        }
        if learn && ready {
            let a = 1.0 / ((self.n_cov + 1).min(p.memory as u64)) as f64;
            for i in 0..fdim {
                self.mu[i] += a * (self.f[i] - self.mu[i]);
            }
            // The lower triangle only: the inversion reads nothing else.
            for i in 0..fdim {
                let di = self.f[i] - self.mu[i];
                let row = &mut self.cov[i * fdim..=i * fdim + i];
                for ((c, &fk), &mk) in row.iter_mut().zip(&self.f).zip(&self.mu) {
                    *c += a * (di * (fk - mk) - *c);
                }
            }
            self.n_cov += 1;
            if self.n_cov % INV_EVERY == 0 || self.n_cov == WARM as u64 {
                if let Some(inv) = spd_inverse(&self.cov, fdim, p.ridge) {
                    self.inv = Some(inv);
                }
            }
        }
        if ready && learn {
            self.h1.add(d, p.calibration);
            self.h2.add(dm, p.calibration);
        }
        self.d_prev = d;
        let score = score.max(rh);
        self.held = score.max(p.decay * self.held);
        self.t += 1;
        Out {
            r: score,
            flagged,
            start,
        }
    }
}

/// The persistence channel for one-event distance `d`: the median of `d` and the previous
/// `span − 1` distances in `ring` (the mean of `d` and `d_prev` for a span of 2). A median: one
/// spike does not hold it up for `span` events, a change lasting half the span moves it. Keeps
/// `d` in `ring` for spans above 2.
fn persistence(ring: &mut VecDeque<f64>, span: usize, d: f64, d_prev: f64) -> f64 {
    if span == 2 {
        return 0.5 * (d + d_prev);
    }
    let mut v = [0.0f64; MAX_SPAN];
    let n = ring.len() + 1;
    for (slot, x) in v.iter_mut().zip(ring.iter().chain([&d])) {
        *slot = *x;
    }
    let v = &mut v[..n];
    // The middle value (and for an even count the largest below it), without a full sort.
    let (below, &mut mid, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let m = if n % 2 == 1 {
        mid
    } else {
        let lower = below.iter().copied().max_by(f64::total_cmp).unwrap_or(mid);
        0.5 * (lower + mid)
    };
    while ring.len() + 1 >= span {
        ring.pop_front();
    }
    ring.push_back(d);
    m
}

/// (A + ridge·I)⁻¹ of a symmetric positive definite `n × n` matrix by Cholesky; `None` when it
/// is not positive definite.
fn spd_inverse(a: &[f64], n: usize, ridge: f64) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j] + if i == j { ridge } else { 0.0 };
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut out = vec![0.0; n * n];
    let (mut col, mut y) = (vec![0.0; n], vec![0.0; n]);
    for c in 0..n {
        for (i, v) in col.iter_mut().enumerate() {
            *v = if i == c { 1.0 } else { 0.0 };
        }
        for i in 0..n {
            let mut s = col[i];
            for k in 0..i {
                s -= l[i * n + k] * y[k];
            }
            y[i] = s / l[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = y[i];
            for k in i + 1..n {
                s -= l[k * n + i] * col[k];
            }
            col[i] = s / l[i * n + i];
        }
        for i in 0..n {
            out[i * n + c] = col[i];
        }
    }
    Some(out)
}

impl StreamingDetector for Codev {
    fn dim(&self) -> usize {
        self.dim
    }

    /// Training events go through the same update (so the alarm logic keeps incidents in the
    /// training data out of what is learnt); their results are dropped.
    fn learn(&mut self, ts: f64, x: &[f64]) {
        self.take(ts, x);
    }

    fn step(&mut self, ts: f64, x: &[f64]) -> Step {
        match self.take(ts, x) {
            Some(o) => Step {
                score: self.held / (1.0 + self.held),
                flagged: o.flagged,
                alarm_start: o.start,
            },
            None => Step {
                score: 0.0,
                flagged: false,
                alarm_start: false,
            },
        }
        .clamp_score()
    }

    fn contributions(&self, out: &mut [f64]) {
        if self.per_day > 0.0 {
            out.copy_from_slice(&self.contrib);
        } else {
            out.iter_mut().for_each(|v| *v = 0.0);
        }
    }

    fn threshold(&self) -> f64 {
        0.5
    }

    fn clone_box(&self) -> Box<dyn StreamingDetector> {
        Box::new(self.clone())
    }

    fn save(&self) -> Vec<u8> {
        encode_tagged(LAYOUT, self)
    }

    fn memory_bytes(&self) -> usize {
        let deque_bytes = |d: &VecDeque<f64>| heap::<f64>(d.capacity());
        let metrics: usize = self
            .metrics
            .iter()
            .map(|m| {
                deque_bytes(&m.ring)
                    + heap::<f64>(m.sorted.capacity())
                    + deque_bytes(&m.steps)
                    + deque_bytes(&m.season)
                    + deque_bytes(&m.held)
            })
            .sum();
        let hist = |h: &Hist| heap::<u8>(h.bins.capacity()) + heap::<u32>(h.counts.capacity());
        ALLOC_SLACK
            + std::mem::size_of::<Self>()
            + heap::<f64>(self.probe_ts.capacity())
            + heap::<f64>(self.probe_rows.capacity())
            + heap::<Metric>(self.metrics.capacity())
            + metrics
            + heap::<f64>(self.mu.capacity())
            + heap::<f64>(self.cov.capacity())
            + self.inv.as_ref().map_or(0, |v| heap::<f64>(v.capacity()))
            + hist(&self.h1)
            + hist(&self.h2)
            + deque_bytes(&self.d_ring)
            + heap::<f64>(self.contrib.capacity())
            + heap::<f64>(self.f.capacity())
            + heap::<f64>(self.af.capacity())
            + heap::<f64>(self.levels.capacity())
    }
}

/// What an allocation takes beside its bytes (the allocator's header and rounding).
const ALLOC_SLACK: usize = 16;

/// Bytes of a heap buffer of `cap` values of `T` (none when nothing is allocated).
fn heap<T>(cap: usize) -> usize {
    match cap * std::mem::size_of::<T>() {
        0 => 0,
        n => n + ALLOC_SLACK,
    }
}

trait ClampScore {
    fn clamp_score(self) -> Self;
}

impl ClampScore for Step {
    /// Scores stay finite and in [0, 1] whatever the input.
    fn clamp_score(mut self) -> Self {
        if !self.score.is_finite() {
            self.score = if self.flagged { 1.0 } else { 0.0 };
        }
        self.score = self.score.clamp(0.0, 1.0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_restored_from_its_bytes_continues_exactly() {
        // Small windows, so every ring and histogram has wrapped by the time it is saved (a
        // wrapped deque is written as its two halves); a day of 48 events gives seasonal lags.
        let params = CodevParams {
            window: 20,
            calibration: 300,
            memory: 400,
            days: 2,
            span: 4,
            ..CodevParams::default()
        };
        let mut rng = crate::rng::Rng::new(3);
        let rows: Vec<(f64, Vec<f64>)> = (0..1200)
            .map(|i| {
                let day = (i as f64 * std::f64::consts::TAU / 48.0).sin();
                // An incident: an hour of every metric far off.
                let off = if i % 97 < 2 { 30.0 } else { 0.0 };
                let x = vec![
                    10.0 + 3.0 * day + rng.normal(0.0, 0.5) + off,
                    rng.uniform_range(0.0, 1.0) + off,
                    5.0 + off,
                ];
                (i as f64 * 1800.0, x)
            })
            .collect();
        let mut a = Codev::new(params, 3);
        for (ts, x) in &rows[..900] {
            a.step(*ts, x);
        }
        assert!(a.per_day > 0.0 && a.inv.is_some());
        assert!(a.metrics[0].ring.len() == 20 && a.h1.bins.len() == 300);
        let bytes = a.save();
        assert!(bytes.starts_with(LAYOUT));
        let mut b = load_streaming(&bytes).unwrap();
        assert_eq!(b.save(), bytes);
        let mut flagged = 0;
        for (ts, x) in &rows[900..] {
            let (sa, sb) = (a.step(*ts, x), b.step(*ts, x));
            assert_eq!(sa.score.to_bits(), sb.score.to_bits());
            assert_eq!((sa.flagged, sa.alarm_start), (sb.flagged, sb.alarm_start));
            flagged += sa.flagged as usize;
        }
        assert!(flagged > 0, "the incidents are flagged");
        // A state of the layout before this one is refused.
        assert!(load_streaming(&bytes[LAYOUT.len()..]).is_err());
    }

    #[test]
    fn a_new_service_holds_only_its_first_events_and_earlier_probe_states_still_load() {
        let rows: Vec<(f64, Vec<f64>)> = (0..400)
            .map(|i| {
                let x = vec![(i % 13) as f64, 100.0 + (i % 7) as f64 * 0.5, 3.0];
                (i as f64 * 60.0, x)
            })
            .collect();
        let mut lazy = Codev::new(CodevParams::default(), 3);
        for (ts, x) in &rows[..10] {
            lazy.step(*ts, x);
        }
        // In the probe: no per-metric state, histogram bins or covariance; about 1 KB.
        assert!(lazy.metrics.is_empty() && lazy.cov.is_empty() && lazy.h1.counts.is_empty());
        assert!(lazy.memory_bytes() < 1024, "{}", lazy.memory_bytes());
        // Earlier versions allocated the per-metric state up front and saved it so.
        let mut eager = Codev::new(CodevParams::default(), 3);
        eager.start();
        eager.h1.counts = vec![0; BINS + 2];
        eager.h2.counts = vec![0; BINS + 2];
        for (ts, x) in &rows[..10] {
            eager.step(*ts, x);
        }
        let mut a = load_streaming(&lazy.save()).unwrap();
        let mut b = load_streaming(&eager.save()).unwrap();
        assert_ne!(lazy.save(), eager.save());
        for (ts, x) in &rows[10..] {
            let (sa, sb) = (a.step(*ts, x), b.step(*ts, x));
            assert_eq!(sa.score.to_bits(), sb.score.to_bits());
            assert_eq!((sa.flagged, sa.alarm_start), (sb.flagged, sb.alarm_start));
        }
        assert_eq!(a.save(), b.save());
        // Afterwards its memory is what it holds: the rings and the histograms' counts.
        let full = a.memory_bytes();
        assert!(full > 2 * (BINS + 2) * 4 + 3 * 72 * 8, "{full}");
        // A state in the probe with part of the per-metric state is refused.
        let mut odd = Codev::new(CodevParams::default(), 3);
        odd.mu = vec![0.0; 9];
        assert!(load_streaming(&odd.save()).is_err());
    }

    #[test]
    fn a_histogram_bin_out_of_range_is_refused_not_counted() {
        let mut h = Hist::new();
        h.bins.push_back(7);
        let good = postcard::to_stdvec(&h).unwrap();
        let back: Hist = postcard::from_bytes(&good).unwrap();
        assert_eq!((back.counts[7], back.counts.iter().sum::<u32>()), (1, 1));
        h.bins.push_back((BINS + 2) as u8);
        let bad = postcard::to_stdvec(&h).unwrap();
        assert!(postcard::from_bytes::<Hist>(&bad).is_err());
    }

    #[test]
    fn the_knob_maps_pages_to_rho_through_the_calibration() {
        for (rho, pages) in KNOB {
            assert!((rho_for_pages(pages) - rho).abs() < 1e-9 * rho);
        }
        let mid = rho_for_pages(0.8);
        assert!(mid > 0.1 && mid < 0.3, "{mid}");
        // Monotone, and extrapolated beyond the table.
        assert!(rho_for_pages(0.2) < 0.01 && rho_for_pages(4.0) > 1.0);
    }

    #[test]
    fn histogram_quantiles_and_tail_threshold() {
        let mut h = Hist::new();
        for i in 1..=1000 {
            h.add(i as f64 / 100.0, 2016);
        }
        let q = h.quantile(0.5);
        assert!((q - 5.0).abs() < 0.5, "{q}");
        // The exponential tail lies beyond the 98th percentile for rare rates.
        assert!(h.threshold(1e-4) > h.quantile(0.98));
        assert!(h.threshold(0.5) >= FLOOR);
        // A window: old values leave.
        let mut w = Hist::new();
        for _ in 0..10 {
            w.add(100.0, 5);
        }
        for _ in 0..5 {
            w.add(0.01, 5);
        }
        assert_eq!(w.counts.iter().sum::<u32>(), 5);
        assert!(w.quantile(0.99) < 0.02);
    }

    #[test]
    fn the_persistence_channel_spans_about_ten_minutes_and_ignores_one_spike() {
        let mut c = Codev::new(CodevParams::default(), 1);
        for (per_day, span) in [
            (288.0, 2),
            (960.0, 7),
            (86_400.0, 16),
            (864_000.0, 16),
            (24.0, 2),
        ] {
            c.per_day = per_day;
            assert_eq!(c.span(), span, "{per_day} events a day");
        }
        c.params.span = 5;
        assert_eq!(c.span(), 5);
        // Span 2: the mean of this distance and the previous one.
        let mut ring = VecDeque::new();
        assert_eq!(persistence(&mut ring, 2, 4.0, 2.0), 3.0);
        assert!(ring.is_empty());
        // Span 5: one spike among calm distances leaves the median calm; high distances in
        // three of the last five events move it.
        let mut ring = VecDeque::new();
        let calm: Vec<f64> = [1.0, 2.0, 1.0, 100.0, 2.0]
            .iter()
            .map(|&d| persistence(&mut ring, 5, d, 0.0))
            .collect();
        assert_eq!(calm, [1.0, 1.5, 1.0, 1.5, 2.0]);
        assert_eq!(ring.len(), 4);
        assert_eq!(persistence(&mut ring, 5, 50.0, 0.0), 2.0);
        assert_eq!(persistence(&mut ring, 5, 60.0, 0.0), 50.0);
        assert_eq!(ring, [100.0, 2.0, 50.0, 60.0]);
        // Only 0 (automatic) and 2..=16 are spans.
        for (span, ok) in [(0, true), (1, false), (2, true), (16, true), (17, false)] {
            let p = CodevParams {
                span,
                ..CodevParams::default()
            };
            assert_eq!(p.validate().is_ok(), ok, "span {span}");
        }
    }

    #[test]
    fn cholesky_inverse_inverts() {
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let inv = spd_inverse(&a, 3, 0.0).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| a[i * 3 + k] * inv[k * 3 + j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        assert!(spd_inverse(&[-1.0], 1, 0.0).is_none());
    }

    #[test]
    fn mad_walks_out_from_the_median() {
        let mut m = Metric::new();
        for v in [1.0, 2.0, 3.0, 4.0, 100.0] {
            m.learn(v, 72);
        }
        assert_eq!(m.median(), 3.0);
        // |w - 3| = 2, 1, 0, 1, 97: the k = 2 smallest (0-based) is 1.
        assert_eq!(m.mad_about(3.0), 1.0);
        assert_eq!(m.step_sum, 1.0 + 1.0 + 1.0 + 96.0);
    }

    proptest::proptest! {
        /// The sorted window holds exactly the ring's values, in order, whatever leaves and
        /// enters (repeated values, values equal to the one leaving, a window of one).
        #[test]
        fn the_sorted_window_is_the_ring_sorted(
            window in 1usize..12,
            xs in proptest::collection::vec(-3i8..4, 0..80),
        ) {
            let mut m = Metric::new();
            for &x in &xs {
                m.learn(f64::from(x) * 0.5, window);
                let mut want: Vec<f64> = m.ring.iter().copied().collect();
                want.sort_by(f64::total_cmp);
                proptest::prop_assert_eq!(&m.sorted, &want);
            }
        }
    }

    /// One event of a reference vector file: inputs, R, flag, H, contributions.
    type Row = (Vec<f64>, f64, bool, f64, Vec<f64>);

    /// Reads a reference vector file.
    fn vectors(text: &str) -> (usize, Vec<Row>) {
        let mut lines = text.lines().filter(|l| !l.starts_with('#'));
        let header = lines.next().unwrap();
        let m = header.split(',').filter(|c| c.starts_with('x')).count();
        let rows = lines
            .map(|l| {
                let v: Vec<f64> = l.split(',').map(|c| c.parse().unwrap()).collect();
                (
                    v[1..1 + m].to_vec(),
                    v[1 + m],
                    v[2 + m] != 0.0,
                    v[3 + m],
                    v[4 + m..4 + 2 * m].to_vec(),
                )
            })
            .collect();
        (m, rows)
    }

    /// The port against the reference implementation's outputs, from event `from` on (the
    /// reference knows the events per day in advance; the port learns them from the first
    /// `PROBE` events and judges none of those).
    fn check_vectors(text: &str, ts: impl Fn(usize) -> f64) -> Vec<bool> {
        check_vectors_with(CodevParams::default(), text, ts)
    }

    fn check_vectors_with(params: CodevParams, text: &str, ts: impl Fn(usize) -> f64) -> Vec<bool> {
        let (m, rows) = vectors(text);
        let mut c = Codev::new(params, m);
        let mut flags = 0;
        let mut flagged = Vec::with_capacity(rows.len());
        for (t, (x, r, flag, held, contrib)) in rows.iter().enumerate() {
            let s = c.step(ts(t), x);
            flagged.push(s.flagged);
            if t < PROBE {
                continue;
            }
            let want = held / (1.0 + held);
            assert!(
                (s.score - want).abs() <= 1e-9 * want.max(1.0),
                "event {t}: score {} want {want} (R {r})",
                s.score
            );
            assert_eq!(s.flagged, *flag, "event {t}: R {r}");
            flags += usize::from(*flag);
            let mut got = vec![0.0; m];
            c.contributions(&mut got);
            for (g, w) in got.iter().zip(contrib) {
                assert!((g - w).abs() < 1e-9, "event {t}: {got:?} vs {contrib:?}");
            }
        }
        assert!(flags > 0, "the vectors hold flagged events");
        flagged
    }

    #[test]
    fn matches_the_reference_on_a_real_service_with_seasonality() {
        // The first 2400 events of one real service (19 metrics, 5-minute steps).
        check_vectors(include_str!("../../tests/data/codev_d2s00.csv"), |t| {
            1.6e9 + 300.0 * t as f64
        });
    }

    #[test]
    fn matches_the_reference_with_the_hold_channel_on() {
        // The first 1500 events of another real service with `hold` = 8 and a calibration
        // window of 288 events, so that the hold channel (which waits for a full window)
        // starts within them.
        let params = CodevParams {
            hold: 8.0,
            calibration: 288,
            ..CodevParams::default()
        };
        let text = include_str!("../../tests/data/codev_d2s04_hold.csv");
        let flagged = check_vectors_with(params, text, |t| 1.6e9 + 300.0 * t as f64);
        // Without it, fewer alarms start: the held metrics start alarms of their own.
        let (m, rows) = vectors(text);
        let mut plain = Codev::new(
            CodevParams {
                calibration: 288,
                ..CodevParams::default()
            },
            m,
        );
        let starts = |f: &[bool]| (1..f.len()).filter(|&t| f[t] && !f[t - 1]).count();
        let without: Vec<bool> = rows
            .iter()
            .enumerate()
            .map(|(t, (x, ..))| plain.step(1.6e9 + 300.0 * t as f64, x).flagged)
            .collect();
        assert!(
            starts(&flagged) > starts(&without),
            "{} alarm starts with the hold channel, {} without",
            starts(&flagged),
            starts(&without)
        );
        // At one event a second it is off: the node's reference outputs, made without it,
        // hold with it on.
        check_vectors_with(
            CodevParams {
                hold: 8.0,
                ..CodevParams::default()
            },
            include_str!("../../tests/data/codev_node1s.csv"),
            |t| 1.7e9 + t as f64,
        );
        // A hold beyond the features' clip could never start an alarm: refused.
        for bad in [-1.0, ZCLIP + 0.5, f64::NAN] {
            let p = CodevParams {
                hold: bad,
                ..CodevParams::default()
            };
            assert!(p.validate().is_err(), "hold {bad} accepted");
        }
    }

    #[test]
    fn matches_the_reference_on_a_node_read_every_second() {
        // A made-up node scraped every second (research/real/make_vectors.py): CPU time rates
        // in 0.01 s steps with timing jitter, a process count that moves from 0 to 1 once (event
        // 900; without the count floor, a page), a load gauge, and both CPUs saturated from
        // event 1500.
        let flagged = check_vectors(include_str!("../../tests/data/codev_node1s.csv"), |t| {
            1.7e9 + t as f64
        });
        // A count moving by one pages no one; the saturation does at once.
        assert!(
            !flagged[300..1500].contains(&true),
            "a page before the saturation"
        );
        assert!(
            flagged[1500],
            "the saturation is not flagged at its first event"
        );
    }

    /// Alarm starts (records) of a node read every second: busy CPU in 0.01 s steps, a load
    /// gauge, and CPU steal at 0 that takes `steal(t)` from event 2,400 on (the model is warm
    /// and its steal has never moved).
    fn node_pages(steal: impl Fn(usize) -> f64) -> Vec<usize> {
        let mut rng = crate::rng::Rng::new(3);
        let mut c = Codev::new(CodevParams::default(), 3);
        let mut load: f64 = 0.2;
        let mut starts = Vec::new();
        for t in 0..3_600 {
            let busy = (1 + rng.below(3) + if rng.chance(0.1) { 2 } else { 0 }) as f64 / 100.0;
            load += (0.2 - load) / 60.0 + rng.normal(0.0, 0.005);
            let x = [
                busy,
                (load * 100.0).round() / 100.0,
                if t >= 2_400 { steal(t) } else { 0.0 },
            ];
            let step = c.step(1.7e9 + t as f64, &x);
            if step.flagged && c.state == State::Alarm && c.age == 0 {
                starts.push(t);
            }
        }
        starts
    }

    #[test]
    fn one_quantum_blips_of_a_metric_that_sat_at_zero_page_no_one_at_one_event_a_second() {
        // Steal blips by 0.01 s every 40 s: with the scale of a metric that never moved (the
        // 1e-12 floor) each was the largest possible deviation, paged, and (paged events are
        // not learnt) stayed new, so the next one paged too. Now they add no page to the
        // calm node's (the load gauge's jump at event 1188 is one in both: a burst of a few
        // seconds can still page at one event a second).
        let calm = node_pages(|_| 0.0);
        assert!(calm.iter().all(|&t| t < 2_400), "{calm:?}");
        let blips = node_pages(|t| if t % 40 == 0 { 0.01 } else { 0.0 });
        assert_eq!(blips, calm, "one-quantum blips paged");
        // A neighbour stealing 30% of a CPU for a minute, once the blips have shown what one
        // move of steal is, pages at once.
        let both = node_pages(|t| {
            if (3_000..3_060).contains(&t) {
                0.3
            } else if t % 40 == 0 {
                0.01
            } else {
                0.0
            }
        });
        assert_eq!(
            both.iter().find(|&&t| t >= 2_400),
            Some(&3_000),
            "steal of 0.3 s/s after one-quantum blips: {both:?}"
        );
    }

    #[test]
    fn matches_the_reference_on_the_seed_stream() {
        // The first 3000 events of the seed stream (3 features, 10 events/s: no seasonal
        // context).
        // The simulator's timestamps as JSON carries them (tenths of a second, as parsed).
        check_vectors(include_str!("../../tests/data/codev_seed.csv"), |t| {
            (17_324_928_000 + t as u64) as f64 / 10.0
        });
    }
}
