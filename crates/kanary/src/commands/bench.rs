//! `kanary bench`: scoring throughput on one core.
//!
//! Fits the model on the seed scenario's first events, then times the batch scoring path over
//! `--events` standardised rows, `--runs` times, and reports the median. In the same command it
//! times the per-event path (one `score` call per event, as the thesis scored) as a baseline, so
//! the ratio is meaningful on a shared, noisy machine.
//!
//! Streaming models have no batch path: each event is scored and learnt in turn. They are timed
//! over `--features` columns of a synthetic service (a daily cycle with noise and rare steps, at
//! 5-minute steps, so that seasonal context is used), after `--train` events of warm-up, against
//! the `novelty` streaming model on the same rows as the baseline.

use std::time::Instant;

use anyhow::{Result, bail};
use kanary_core::detector::{Detector, DetectorConfig, FittedDetector, ModelKind};
use kanary_core::rng::Rng;
use kanary_core::simulate::{DEFAULT_START_TS, Scenario, Simulator};
use serde::Serialize;

use crate::cli::BenchArgs;

#[derive(Debug, Serialize)]
struct BenchResult {
    model: String,
    events: usize,
    features: usize,
    runs: usize,
    threads: usize,
    /// Median events/s of the batch path.
    events_per_sec: f64,
    /// Fastest and slowest runs.
    min_events_per_sec: f64,
    max_events_per_sec: f64,
    baseline: &'static str,
    baseline_events_per_sec: f64,
    /// events_per_sec / baseline_events_per_sec.
    speedup: f64,
    fit_seconds: f64,
    /// Share of the scored events that were flagged (a sanity check that work was done).
    flagged_fraction: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.events == 0 || args.runs == 0 {
        bail!("--events and --runs must be > 0");
    }
    if args.model.is_streaming() {
        return run_streaming(&args);
    }
    if args.features != 3 {
        bail!(
            "--features applies to streaming models; fitted models are timed on the seed stream's 3 features"
        );
    }
    let features: Vec<String> = ["latency", "cpu", "memory"].map(String::from).into();
    let mut sim = Simulator::new(Scenario::Seed, 1, DEFAULT_START_TS);
    let mut rows = Vec::with_capacity((args.train + args.events) * 3);
    let mut row = Vec::with_capacity(3);
    for _ in 0..args.train + args.events {
        let ev = sim.next_event();
        ev.extract_into(&features, &mut row)?;
        rows.extend_from_slice(&row);
    }
    let (train, test) = rows.split_at_mut(args.train * 3);
    let cfg = args.opts.config(args.model, &Default::default())?;
    let t = Instant::now();
    let fitted = FittedDetector::fit(&cfg, features.clone(), train, 0.0)?;
    let fit_seconds = t.elapsed().as_secs_f64();
    fitted.scaler.transform(test);
    let test: &[f64] = test;

    let mut out = vec![0.0; args.events];
    // Warm-up run (caches, page faults), then timed runs.
    fitted.model.score_batch(test, &mut out);
    let mut rates = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t = Instant::now();
        fitted.model.score_batch(test, &mut out);
        rates.push(args.events as f64 / t.elapsed().as_secs_f64());
        std::hint::black_box(&out);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let flagged = out.iter().filter(|&&s| s >= fitted.threshold).count();

    // Baseline: the per-event path on a tenth of the events (it is much slower).
    let base_n = (args.events / 10).max(1);
    let mut base_rates = Vec::with_capacity(args.runs);
    for _ in 0..args.runs.min(3) {
        let t = Instant::now();
        let mut acc = 0.0;
        for r in test.chunks_exact(3).take(base_n) {
            acc += fitted.model.score(r);
        }
        std::hint::black_box(acc);
        base_rates.push(base_n as f64 / t.elapsed().as_secs_f64());
    }
    base_rates.sort_by(f64::total_cmp);
    let baseline = base_rates[base_rates.len() / 2];

    let result = BenchResult {
        model: args.model.name().to_string(),
        events: args.events,
        features: 3,
        runs: args.runs,
        threads: 1,
        events_per_sec: median,
        min_events_per_sec: rates[0],
        max_events_per_sec: rates[rates.len() - 1],
        baseline: "per-event score() calls",
        baseline_events_per_sec: baseline,
        speedup: median / baseline,
        fit_seconds,
        flagged_fraction: flagged as f64 / args.events as f64,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{}: {:.0} events/s (median of {} runs of {} events, one core; range {:.0}–{:.0})\n\
             baseline (per-event calls): {:.0} events/s — batch path is {:.1}× faster\n\
             fit on {} events: {:.3} s; flagged {:.2}% of scored events",
            result.model,
            result.events_per_sec,
            result.runs,
            result.events,
            result.min_events_per_sec,
            result.max_events_per_sec,
            result.baseline_events_per_sec,
            result.speedup,
            args.train,
            result.fit_seconds,
            100.0 * result.flagged_fraction
        );
    }
    Ok(())
}

/// Rows of a synthetic service: per column a daily cycle (288 events a day), noise, and a step
/// every few thousand events in the first column.
fn synthetic(n: usize, d: usize) -> Vec<f64> {
    let mut r = Rng::new(12345);
    let mut rows = Vec::with_capacity(n * d);
    for t in 0..n {
        let day = (2.0 * std::f64::consts::PI * (t % 288) as f64 / 288.0).sin();
        for j in 0..d {
            let step = if j == 0 && (t / 5000) % 2 == 1 {
                10.0
            } else {
                0.0
            };
            rows.push(100.0 + 20.0 * day + r.normal(0.0, 2.0) + step + j as f64);
        }
    }
    rows
}

/// A streaming model's timed runs: sorted events/s of each, flagged events of the last, and the
/// seconds its warm-up took.
struct Timed {
    rates: Vec<f64>,
    flagged: usize,
    warm_seconds: f64,
}

/// Warms a fresh `cfg` model up on `warm`, then times `runs` passes of scoring and learning
/// `test`, each from a copy of the warmed-up state; rows at 5-minute steps.
fn time_streaming(
    cfg: &DetectorConfig,
    d: usize,
    warm: &[f64],
    test: &[f64],
    runs: usize,
) -> Result<Timed> {
    let ts = |i: usize| 1.6e9 + 300.0 * i as f64;
    let t = Instant::now();
    let mut model = cfg
        .new_streaming(d)
        .ok_or_else(|| anyhow::anyhow!("{} cannot start", cfg.kind))?;
    let n_warm = warm.len() / d;
    for (i, r) in warm.chunks_exact(d).enumerate() {
        model.learn(ts(i), r);
    }
    let warm_seconds = t.elapsed().as_secs_f64();
    let events = test.len() / d;
    let mut rates = Vec::with_capacity(runs);
    let mut flagged = 0usize;
    for _ in 0..runs {
        let mut m = model.clone_box();
        flagged = 0;
        let t = Instant::now();
        for (i, r) in test.chunks_exact(d).enumerate() {
            flagged += usize::from(m.step(ts(n_warm + i), r).flagged);
        }
        rates.push(events as f64 / t.elapsed().as_secs_f64());
        std::hint::black_box(&m);
    }
    rates.sort_by(f64::total_cmp);
    Ok(Timed {
        rates,
        flagged,
        warm_seconds,
    })
}

fn run_streaming(args: &BenchArgs) -> Result<()> {
    let d = args.features;
    if d == 0 {
        bail!("--features must be at least 1");
    }
    let cfg = args.opts.config(args.model, &Default::default())?;
    let rows = synthetic(args.train + args.events, d);
    let (warm, test) = rows.split_at(args.train * d);
    let timed = time_streaming(&cfg, d, warm, test, args.runs)?;
    let rates = &timed.rates;
    let median = rates[rates.len() / 2];
    // Baseline: the record-ratio novelty model, the first streaming model, over the same rows
    // in the same command.
    let novelty = DetectorConfig::new(ModelKind::named("novelty")?);
    let base = time_streaming(&novelty, d, warm, test, args.runs)?;
    let baseline = base.rates[base.rates.len() / 2];
    let (fit_seconds, flagged) = (timed.warm_seconds, timed.flagged);
    let result = BenchResult {
        model: args.model.name().to_string(),
        events: args.events,
        features: d,
        runs: args.runs,
        threads: 1,
        events_per_sec: median,
        min_events_per_sec: rates[0],
        max_events_per_sec: rates[rates.len() - 1],
        baseline: "novelty (streaming) on the same rows",
        baseline_events_per_sec: baseline,
        speedup: median / baseline,
        fit_seconds,
        flagged_fraction: flagged as f64 / args.events as f64,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{}: {:.0} events/s over {} features (median of {} runs of {} events, one core; range {:.0}–{:.0})\n\
             baseline (novelty, same rows): {:.0} events/s — ratio {:.2}\n\
             warm-up on {} events: {:.3} s; flagged {:.2}% of scored events",
            result.model,
            result.events_per_sec,
            d,
            result.runs,
            result.events,
            result.min_events_per_sec,
            result.max_events_per_sec,
            result.baseline_events_per_sec,
            result.speedup,
            args.train,
            result.fit_seconds,
            100.0 * result.flagged_fraction
        );
    }
    Ok(())
}
