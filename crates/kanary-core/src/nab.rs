//! Numenta Anomaly Benchmark scoring, written from its description (docs/evaluation.md).
//!
//! Each data file is scored row by row with a score in [0, 1]; a row is a detection when its
//! score is at or above a threshold. The first 15% of a file (at most 750 rows) is probation
//! and ignored. Within a labelled window `[L, R]` of width `W`, a detection at row `i` earns
//! `A·σ(y)/σ(−1)` with `y = −(R − i + 1)/W` and `σ(y) = 2/(1 + e^(5y)) − 1`; only the earliest
//! detection in a window counts; a window with none costs the false-negative weight. A
//! detection outside every window scores `B·σ(y)`, `y = (i − R′)/(W′ − 1)` its distance past
//! the preceding window; σ is taken as −1 once `y > 3`; with no preceding window it scores
//! `−B`. One threshold per profile is chosen over the whole corpus to maximise the total, which
//! is normalised to `100·(S − S_null)/(S_perfect − S_null)`.
//!
//! Conventions where the description is silent: the scoreable part of a window starts at the
//! first row after probation; a window that lies wholly inside probation is not scored (no
//! detector can earn or lose anything on it); the perfect detector flags the first scoreable
//! row of every window; after a window of width 1, `W′ − 1` is taken as 1.

use serde::{Deserialize, Serialize};

/// A labelled window, as inclusive row indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: usize,
    pub end: usize,
}

/// Weights of one scoring profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    #[serde(rename = "fn")]
    pub fn_: f64,
    pub fp: f64,
}

/// NAB's three profiles.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fn_: 1.0,
        fp: 0.11,
    },
    Profile {
        name: "reward_low_FP_rate",
        tp: 1.0,
        fn_: 1.0,
        fp: 0.22,
    },
    Profile {
        name: "reward_low_FN_rate",
        tp: 1.0,
        fn_: 2.0,
        fp: 0.11,
    },
];

/// One scored file: a score per row and its windows (sorted, non-overlapping).
#[derive(Debug, Clone)]
pub struct ScoredFile {
    pub scores: Vec<f64>,
    pub windows: Vec<Window>,
}

/// Rows of probation at the start of a file of `n` rows.
pub fn probation(n: usize) -> usize {
    ((0.15 * n as f64).floor() as usize).min(750)
}

/// NAB's scaled sigmoid.
pub fn sigma(y: f64) -> f64 {
    2.0 / (1.0 + (5.0 * y).exp()) - 1.0
}

/// Credit of a detection at row `i` inside window `w`.
fn tp_credit(p: &Profile, w: Window, i: usize) -> f64 {
    let width = (w.end - w.start + 1) as f64;
    let y = -((w.end - i + 1) as f64) / width;
    p.tp * sigma(y) / sigma(-1.0)
}

/// Cost (negative) of a detection at row `i` outside every window, given the preceding
/// window if any.
fn fp_cost(p: &Profile, prev: Option<Window>, i: usize) -> f64 {
    match prev {
        None => -p.fp,
        Some(w) => {
            let width = (w.end - w.start + 1) as f64;
            let y = (i - w.end) as f64 / (width - 1.0).max(1.0);
            if y > 3.0 { -p.fp } else { p.fp * sigma(y) }
        }
    }
}

/// The scoreable part of each window (after probation); windows wholly in probation dropped.
fn scoreable(file: &ScoredFile) -> Vec<Window> {
    let prob = probation(file.scores.len());
    file.windows
        .iter()
        .filter(|w| w.end >= prob)
        .map(|w| Window {
            start: w.start.max(prob),
            end: w.end.min(file.scores.len().saturating_sub(1)),
        })
        .collect()
}

/// Raw score of one file at one threshold.
pub fn file_score(file: &ScoredFile, threshold: f64, p: &Profile) -> f64 {
    let n = file.scores.len();
    let prob = probation(n);
    let windows = scoreable(file);
    let mut total = 0.0;
    for w in &windows {
        match (w.start..=w.end).find(|&i| file.scores[i] >= threshold) {
            Some(i) => total += tp_credit(p, *w, i),
            None => total -= p.fn_,
        }
    }
    for (i, prev) in outside_windows(n, prob, &windows) {
        if file.scores[i] >= threshold {
            total += fp_cost(p, prev, i);
        }
    }
    total
}

/// The rows from `prob` on that lie outside every window, each with the window before it.
fn outside_windows(
    n: usize,
    prob: usize,
    windows: &[Window],
) -> impl Iterator<Item = (usize, Option<Window>)> + '_ {
    let mut wi = 0;
    let mut prev: Option<Window> = None;
    (prob..n).filter_map(move |i| {
        while wi < windows.len() && windows[wi].end < i {
            prev = Some(windows[wi]);
            wi += 1;
        }
        let inside = wi < windows.len() && windows[wi].start <= i;
        (!inside).then_some((i, prev))
    })
}

/// Score of the detector that flags nothing.
pub fn null_score(files: &[ScoredFile], p: &Profile) -> f64 {
    files
        .iter()
        .map(|f| -p.fn_ * scoreable(f).len() as f64)
        .sum()
}

/// Score of the detector that flags exactly the first scoreable row of every window.
pub fn perfect_score(files: &[ScoredFile], p: &Profile) -> f64 {
    files
        .iter()
        .map(|f| {
            scoreable(f)
                .iter()
                .map(|w| tp_credit(p, *w, w.start))
                .sum::<f64>()
        })
        .sum()
}

/// The best corpus-wide threshold of a profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Optimum {
    pub profile: &'static str,
    pub threshold: f64,
    pub raw: f64,
    /// 100·(S − S_null)/(S_perfect − S_null).
    pub score: f64,
}

/// Sweeps every distinct score as the threshold over the whole corpus (exactly, in
/// O(N log N)): each file's raw score only changes where the threshold crosses a score that
/// is either a false positive's or a new running maximum inside a window.
pub fn optimize(files: &[ScoredFile], p: &Profile) -> Optimum {
    // (threshold at which the change applies, change in total score).
    let mut events: Vec<(f64, f64)> = Vec::new();
    let mut base = 0.0; // threshold above every score: nothing flagged
    for f in files {
        let n = f.scores.len();
        let prob = probation(n);
        let windows = scoreable(f);
        for w in &windows {
            base -= p.fn_;
            // Running maxima from the window's start: (row, score), strictly increasing.
            let mut records: Vec<(usize, f64)> = Vec::new();
            for i in w.start..=w.end {
                let s = f.scores[i];
                if records.last().is_none_or(|&(_, m)| s > m) {
                    records.push((i, s));
                }
            }
            // Lowering the threshold to a record's score moves the earliest detection to it.
            let mut credit = -p.fn_;
            for &(i, s) in records.iter().rev() {
                let c = tp_credit(p, *w, i);
                events.push((s, c - credit));
                credit = c;
            }
        }
        for (i, prev) in outside_windows(n, prob, &windows) {
            events.push((f.scores[i], fp_cost(p, prev, i)));
        }
    }
    events.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut best = (f64::INFINITY, base);
    let mut total = base;
    let mut k = 0;
    while k < events.len() {
        let t = events[k].0;
        while k < events.len() && events[k].0 == t {
            total += events[k].1;
            k += 1;
        }
        if total > best.1 {
            best = (t, total);
        }
    }
    let null = null_score(files, p);
    let perfect = perfect_score(files, p);
    let score = if perfect > null {
        100.0 * (best.1 - null) / (perfect - null)
    } else {
        0.0
    };
    Optimum {
        profile: p.name,
        threshold: best.0,
        raw: best.1,
        score,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: Profile = PROFILES[0];

    /// 1000 rows (probation 150) with one window [400, 499].
    fn file(scores: Vec<f64>) -> ScoredFile {
        ScoredFile {
            scores,
            windows: vec![Window {
                start: 400,
                end: 499,
            }],
        }
    }

    fn flags_at(rows: &[usize]) -> Vec<f64> {
        let mut s = vec![0.0; 1000];
        for &r in rows {
            s[r] = 1.0;
        }
        s
    }

    #[test]
    fn sigmoid_values() {
        assert!((sigma(0.0)).abs() < 1e-12);
        assert!((sigma(-1.0) - 0.986_614_298_151_430_3).abs() < 1e-12);
        assert!(sigma(1.0) < 0.0);
    }

    #[test]
    fn probation_is_15_percent_capped_at_750() {
        assert_eq!(probation(1000), 150);
        assert_eq!(probation(4032), 604);
        assert_eq!(probation(10_000), 750);
    }

    #[test]
    fn detection_at_left_edge_earns_the_full_weight() {
        let f = file(flags_at(&[400]));
        assert!((file_score(&f, 0.5, &STD) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn detection_at_right_edge_earns_little() {
        // y = -(499 - 499 + 1)/100 = -0.01: σ(-0.01)/σ(-1).
        let f = file(flags_at(&[499]));
        let expected = sigma(-0.01) / sigma(-1.0);
        assert!((file_score(&f, 0.5, &STD) - expected).abs() < 1e-12);
        assert!(expected > 0.0 && expected < 0.03);
    }

    #[test]
    fn only_the_earliest_detection_in_a_window_counts() {
        let one = file_score(&file(flags_at(&[450])), 0.5, &STD);
        let many = file_score(&file(flags_at(&[450, 460, 499])), 0.5, &STD);
        assert_eq!(one, many);
        // y = -(499 - 450 + 1)/100 = -0.5.
        assert!((one - sigma(-0.5) / sigma(-1.0)).abs() < 1e-12);
    }

    #[test]
    fn missed_window_costs_the_fn_weight() {
        assert_eq!(file_score(&file(flags_at(&[])), 0.5, &STD), -1.0);
        assert_eq!(file_score(&file(flags_at(&[])), 0.5, &PROFILES[2]), -2.0);
    }

    #[test]
    fn detections_in_probation_are_ignored() {
        let f = file(flags_at(&[10, 149]));
        assert_eq!(file_score(&f, 0.5, &STD), -1.0);
    }

    #[test]
    fn false_positives_before_and_after_a_window() {
        // Before any window: -B.
        let f = file(flags_at(&[200]));
        assert!((file_score(&f, 0.5, &STD) - (-1.0 - 0.11)).abs() < 1e-12);
        // Just after the window: y = (505 - 499)/(100 - 1), a small penalty σ(y) < 0.
        let f = file(flags_at(&[505]));
        let y = 6.0 / 99.0;
        assert!((file_score(&f, 0.5, &STD) - (-1.0 + 0.11 * sigma(y))).abs() < 1e-12);
        assert!(sigma(y) < 0.0 && sigma(y) > -1.0);
        // Far after it (y > 3): the full -B.
        let f = file(flags_at(&[900]));
        assert!((file_score(&f, 0.5, &STD) - (-1.0 - 0.11)).abs() < 1e-12);
    }

    #[test]
    fn null_scores_0_and_perfect_scores_100() {
        let files = vec![
            file(flags_at(&[])),
            ScoredFile {
                scores: vec![0.0; 2000],
                windows: vec![
                    Window {
                        start: 100,
                        end: 400,
                    }, // starts in probation (300 rows)
                    Window {
                        start: 1500,
                        end: 1600,
                    },
                ],
            },
        ];
        for p in PROFILES {
            let o = optimize(&files, &p);
            assert!(o.score.abs() < 1e-9, "{o:?}");
        }
        let mut perfect = files.clone();
        perfect[0].scores[400] = 1.0;
        perfect[1].scores[300] = 1.0; // first scoreable row of the first window
        perfect[1].scores[1500] = 1.0;
        for p in PROFILES {
            let o = optimize(&perfect, &p);
            assert!((o.score - 100.0).abs() < 1e-9, "{o:?}");
            assert_eq!(o.threshold, 1.0);
        }
    }

    #[test]
    fn sweep_matches_brute_force() {
        let mut r = crate::rng::Rng::new(4);
        let files: Vec<ScoredFile> = (0..5)
            .map(|k| {
                let n = 800 + 100 * k;
                ScoredFile {
                    scores: (0..n)
                        .map(|_| (r.uniform() * 50.0).round() / 50.0)
                        .collect(),
                    windows: vec![
                        Window {
                            start: 300,
                            end: 340,
                        },
                        Window {
                            start: 500 + 10 * k,
                            end: 560 + 10 * k,
                        },
                    ],
                }
            })
            .collect();
        for p in PROFILES {
            let o = optimize(&files, &p);
            let at = |t: f64| files.iter().map(|f| file_score(f, t, &p)).sum::<f64>();
            assert!((at(o.threshold) - o.raw).abs() < 1e-9);
            for k in 0..=51 {
                let t = k as f64 / 50.0;
                assert!(at(t) <= o.raw + 1e-9, "threshold {t} beats the optimum");
            }
        }
    }
}
