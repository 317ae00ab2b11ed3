//! The conformance suite: what every registered model must do. It loops over the registry, so
//! a new model is covered by adding it there, without editing this file.
//!
//! - finite scores for any finite input (and streaming scores in [0, 1]);
//! - the same results under the same seed;
//! - batch processing equal to one event at a time (to 1e-6: batch paths may use single
//!   precision);
//! - a save/load round trip through a model file continues exactly (fitted and streaming);
//! - contributions non-negative and summing to 1 (or all zero).

use kanary_core::detector::{DetectorConfig, FittedDetector, ModelKind};
use kanary_core::engine::{Engine, EngineConfig, Explain, Outcome};
use kanary_core::event::Event;
use kanary_core::persist::ModelFile;
use kanary_core::rng::Rng;
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

fn engine(kind: ModelKind, train: usize) -> Engine {
    let mut cfg = EngineConfig::new(DetectorConfig::new(kind));
    cfg.train_events = train;
    cfg.explain = Explain::All;
    Engine::new(cfg)
}

/// Events of three services with two features, at 5-minute steps.
fn events(data: &[(u8, f64, f64)]) -> Vec<Event> {
    data.iter()
        .enumerate()
        .map(|(i, (s, a, b))| {
            Event::new(1.6e9 + i as f64 * 300.0, format!("s{s}"))
                .with_field("a", *a)
                .with_field("b", *b)
        })
        .collect()
}

/// An ordinary stream: a daily cycle with noise, and a few jumps.
fn ordinary(n: usize, seed: u64) -> Vec<Event> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|i| {
            let t = 1.6e9 + (i / 2) as f64 * 300.0;
            let day = (2.0 * std::f64::consts::PI * (i / 2) as f64 / 288.0).sin();
            let jump = if i % 397 == 0 { 25.0 } else { 0.0 };
            Event::new(t, if i % 2 == 0 { "web" } else { "db" })
                .with_field("latency", 100.0 + 10.0 * day + r.normal(0.0, 2.0) + jump)
                .with_field("cpu", 40.0 + 5.0 * day + r.normal(0.0, 1.0))
                .with_field("memory", 500.0 + r.normal(0.0, 5.0))
        })
        .collect()
}

fn scored(outcomes: &[Outcome]) -> Vec<&kanary_core::Scored> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Scored(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn check_contributions(kind: ModelKind, c: &[f64]) -> Result<(), TestCaseError> {
    prop_assert!(
        c.iter().all(|v| v.is_finite() && *v >= 0.0),
        "{kind}: contributions {c:?}"
    );
    let total: f64 = c.iter().sum();
    prop_assert!(
        total == 0.0 || (total - 1.0).abs() < 1e-9,
        "{kind}: contributions sum to {total}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn every_model_gives_finite_scores_and_valid_contributions(
        data in prop::collection::vec((0u8..3, value(), value()), 1..400)
    ) {
        let evs = events(&data);
        for kind in ModelKind::all() {
            let mut e = engine(kind, 20);
            let mut out = Vec::new();
            e.process_batch(&evs, 0.0, &mut out);
            prop_assert_eq!(out.len(), evs.len());
            for s in scored(&out) {
                prop_assert!(s.score.is_finite() && s.score >= 0.0, "{kind}: score {}", s.score);
                prop_assert!(s.threshold.is_finite(), "{kind}: threshold {}", s.threshold);
                if kind.is_streaming() {
                    prop_assert!(s.score <= 1.0, "{kind}: streaming score {}", s.score);
                }
                prop_assert!(!s.alarm_start || s.flagged, "{kind}: an alarm starts on a flag");
                prop_assert_eq!(s.contributions.len(), 2);
                check_contributions(kind, &s.contributions)?;
            }
        }
    }

    #[test]
    fn every_model_fits_or_learns_any_finite_training_set(
        data in prop::collection::vec((Just(0u8), value(), value()), 8..200),
        probe in prop::collection::vec((Just(0u8), value(), value()), 1..30),
    ) {
        let (train, test) = (events(&data), events(&probe));
        for kind in ModelKind::all() {
            let mut e = engine(kind, 1000);
            e.fit_all(&train, 0.0).map_err(|(s, err)| TestCaseError::fail(format!("{kind} {s}: {err}")))?;
            let mut out = Vec::new();
            e.process_batch(&test, 0.0, &mut out);
            let s = scored(&out);
            prop_assert_eq!(s.len(), test.len(), "{}: every event after training is scored", kind);
            for x in s {
                prop_assert!(x.score.is_finite(), "{kind}: {}", x.score);
                check_contributions(kind, &x.contributions)?;
            }
        }
    }
}

#[test]
fn every_model_is_deterministic_under_its_seed() {
    let evs = ordinary(3000, 5);
    for kind in ModelKind::all() {
        let run = || {
            let mut e = engine(kind, 500);
            let mut out = Vec::new();
            e.process_batch(&evs, 0.0, &mut out);
            out
        };
        assert_eq!(run(), run(), "{kind}: two runs differ");
    }
}

#[test]
fn every_model_scores_batches_as_one_event_at_a_time() {
    let evs = ordinary(3000, 6);
    for kind in ModelKind::all() {
        let mut single = engine(kind, 500);
        let one: Vec<Outcome> = evs.iter().map(|ev| single.process(ev, 0.0)).collect();
        let mut batched = engine(kind, 500);
        let mut many = Vec::new();
        for chunk in evs.chunks(97) {
            batched.process_batch(chunk, 0.0, &mut many);
        }
        assert_eq!(one.len(), many.len());
        for (i, (x, y)) in one.iter().zip(&many).enumerate() {
            match (x, y) {
                (Outcome::Scored(x), Outcome::Scored(y)) => {
                    assert!(
                        (x.score - y.score).abs() <= 1e-6 * x.score.abs().max(1.0),
                        "{kind}: event {i}: {} vs {}",
                        x.score,
                        y.score
                    );
                    assert_eq!(x.flagged, y.flagged, "{kind}: event {i}");
                    assert_eq!(x.alarm_start, y.alarm_start, "{kind}: event {i}");
                }
                (x, y) => assert_eq!(x, y, "{kind}: event {i}"),
            }
        }
    }
}

#[test]
fn every_model_continues_exactly_after_a_save_and_load() {
    let evs = ordinary(4000, 7);
    let (first, rest) = evs.split_at(2500);
    for kind in ModelKind::all() {
        let mut a = engine(kind, 500);
        let mut sink = Vec::new();
        a.process_batch(first, 0.0, &mut sink);
        // Save everything the engine knows into a model file and restore it elsewhere.
        let mut detectors: Vec<(String, FittedDetector)> = a
            .models()
            .map(|(s, m)| (s.to_string(), (**m).clone()))
            .collect();
        detectors.sort_by(|x, y| x.0.cmp(&y.0));
        let file = ModelFile {
            kanary_version: "test".into(),
            kind,
            created_at: 0.0,
            offsets: vec![("t".into(), 0, 2500)],
            detectors,
            streams: a.streams(),
        };
        assert_eq!(
            file.detectors.len() + file.streams.len(),
            2,
            "{kind}: both services saved"
        );
        let bytes = file.encode().unwrap();
        let back = ModelFile::decode(&bytes).unwrap();
        assert_eq!(back, file, "{kind}: the file round-trips");
        let mut b = engine(kind, 500);
        assert_eq!(back.install(&mut b).unwrap(), 2);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.process_batch(rest, 0.0, &mut x);
        b.process_batch(rest, 0.0, &mut y);
        assert_eq!(x, y, "{kind}: a restored model scores as the original");
        assert_eq!(scored(&x).len(), rest.len(), "{kind}");
    }
}

#[test]
fn every_model_ranks_a_large_jump_above_ordinary_events() {
    // Not a quality bar (docs/models.md has those), a check that scores rank: a 30-sigma jump
    // in latency after a long ordinary stream scores above 99% of the service's ordinary
    // events, and its contributions name latency.
    let mut evs = ordinary(6000, 8);
    let last = evs.len() - 2;
    evs[last] = Event::new(evs[last].ts, "web")
        .with_field("latency", 400.0)
        .with_field("cpu", 40.0)
        .with_field("memory", 500.0);
    for kind in ModelKind::all() {
        let mut e = engine(kind, 1000);
        let mut out = Vec::new();
        e.process_batch(&evs, 0.0, &mut out);
        let Outcome::Scored(s) = &out[last] else {
            panic!("{kind}: the jump is not scored")
        };
        let mut web: Vec<f64> = out[..last]
            .iter()
            .zip(&evs)
            .filter_map(|(o, ev)| match o {
                Outcome::Scored(x) if ev.service == "web" => Some(x.score),
                _ => None,
            })
            .collect();
        web.sort_by(f64::total_cmp);
        let p99 = web[web.len() * 99 / 100];
        assert!(s.score > p99, "{kind}: jump {} vs p99 {p99}", s.score);
        let top = s
            .contributions
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| s.features[i].as_str());
        assert_eq!(top, Some("latency"), "{kind}: {:?}", s.contributions);
    }
}

#[test]
fn registered_parameters_are_checked_with_clear_errors() {
    for kind in ModelKind::all() {
        let mut cfg = DetectorConfig::new(kind);
        cfg.params
            .insert("no_such_parameter".into(), serde_json::json!(1));
        let err = cfg.check().unwrap_err().to_string();
        assert!(
            err.contains(kind.name()) && err.contains("no_such_parameter"),
            "{kind}: {err}"
        );
    }
}
