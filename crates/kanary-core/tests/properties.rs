//! Property tests of the pieces (parsing, the forest's scores, thresholds, windows, NAB): for any
//! finite input, nothing panics and every score is finite and in range. What every registered
//! model must satisfy is in `conformance.rs`.

use kanary_core::event::Event;
use kanary_core::features::{WindowSpec, WindowState};
use kanary_core::models::iforest::{IForestParams, IsolationForest};
use kanary_core::nab::{self, PROFILES, ScoredFile, Window};
use kanary_core::threshold::ThresholdMethod;
use proptest::prelude::*;

/// Finite values over many magnitudes, including exact repeats (constant columns).
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e6f64..1e6,
        -1.0f64..1.0,
        Just(0.0),
        Just(5.0),
        (-300i32..300).prop_map(|e| 10f64.powi(e / 10)),
    ]
}

fn rows(d: usize, min: usize, max: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(value(), (min * d)..=(max * d)).prop_map(move |mut v| {
        v.truncate(v.len() / d * d);
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn parsing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Event::parse(&bytes);
    }

    #[test]
    fn parsing_json_like_text_never_panics(s in "[{}\\[\\]\":,0-9a-zNIfe.+ -]{0,80}") {
        if let Ok(ev) = Event::parse(s.as_bytes()) {
            prop_assert!(ev.ts.is_finite());
            prop_assert!(ev.fields.iter().all(|(_, v)| v.is_finite()));
        }
    }

    #[test]
    fn isolation_forest_scores_are_in_range(data in rows(3, 2, 300), probe in rows(3, 1, 40)) {
        for range_aware in [true, false] {
            let p = IForestParams { n_trees: 20, range_aware, ..IForestParams::default() };
            let f = IsolationForest::fit(&data, 3, &p, 1).unwrap();
            let mut out = vec![0.0; probe.len() / 3];
            f.score_batch(&probe, &mut out);
            for (i, s) in out.iter().enumerate() {
                prop_assert!(s.is_finite() && *s > 0.0 && *s <= 1.0, "score {s}");
                let single = f.score(&probe[3 * i..3 * i + 3]);
                prop_assert!((single - s).abs() < 1e-5);
            }
            let mut c = [0.0; 3];
            f.contributions(&probe[..3], &mut c);
            let total: f64 = c.iter().sum();
            prop_assert!(c.iter().all(|v| v.is_finite() && *v >= 0.0));
            prop_assert!(total == 0.0 || (total - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn thresholds_are_finite(scores in prop::collection::vec(value(), 1..200)) {
        for m in [
            ThresholdMethod::default(),
            ThresholdMethod::Mad { k: 5.0 },
            ThresholdMethod::Contamination { rate: 0.02 },
        ] {
            let t = m.fit(&scores).unwrap();
            prop_assert!(t.is_finite(), "{m}: {t}");
        }
    }

    #[test]
    fn window_features_are_finite(values in prop::collection::vec(value(), 1..300)) {
        let mut w = WindowState::new(WindowSpec { lengths: vec![2, 8], mean: true, std: true, rate: true, ..WindowSpec::default() }, 1);
        let mut out = Vec::new();
        for v in values {
            if w.push(&[v], &mut out) {
                prop_assert!(out.iter().all(|x| x.is_finite()), "{out:?}");
            }
        }
    }

    #[test]
    fn nab_scores_never_exceed_perfect(scores in prop::collection::vec(0.0f64..=1.0, 600..900), start in 200usize..500, width in 1usize..90) {
        let n = scores.len();
        let w = Window { start: start.min(n - 1), end: (start + width).min(n - 1) };
        let files = vec![ScoredFile { scores, windows: vec![w] }];
        for p in PROFILES {
            let o = nab::optimize(&files, &p);
            prop_assert!(o.score <= 100.0 + 1e-9 && o.score >= -1e9, "{o:?}");
            // The optimum is at least the null detector's.
            prop_assert!(o.score >= -1e-9);
        }
    }
}
