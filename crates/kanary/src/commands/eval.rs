//! `kanary eval`: replay a JSONL file through exactly the engine `kanary detect` runs, and
//! report per model what an operator asks (incidents caught, how early, false pages per
//! service-day; docs/evaluation.md) beside precision/recall/F1/PR-AUC, for the whole run and
//! per service.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kanary_core::detector::ModelKind;
use kanary_core::engine::{Engine, Explain, Outcome};
use kanary_core::eval::{Confusion, average_precision};
use kanary_core::event::Event;
use kanary_core::operator::{OperatorCounts, OperatorRules, typical_step};

use crate::cli::EvalArgs;
use crate::input::read_events;
use crate::records::{Shape, write_scored};
use crate::summary::{EvalSummary, ModelRun, ScoredPoint, ServiceSummary};
use crate::{modelio, report};

/// Events handed to the engine per call, as the service's poll batches.
pub const BATCH: usize = 1024;

pub fn run(args: EvalArgs) -> Result<()> {
    let input = read_events(&args.input)?;
    if input.events.is_empty() {
        bail!(
            "{} holds no valid events ({} invalid lines)",
            args.input.display(),
            input.invalid.values().sum::<u64>()
        );
    }
    let train = match &args.train_file {
        Some(p) => Some(read_events(p)?),
        None => None,
    };
    let model_file = match &args.model_file {
        Some(p) => Some(modelio::load(p, None)?),
        None => None,
    };
    let models = match (&model_file, &args.model) {
        // A model file holds one kind: evaluate that kind.
        (Some(mf), None) => vec![mf.kind],
        (Some(mf), Some(list)) if list.0 != [mf.kind] => bail!(
            "--model {} asks for other models than the model file holds (`{}`): drop --model or pass --model {}",
            list.0
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(","),
            mf.kind,
            mf.kind
        ),
        (_, Some(list)) => list.0.clone(),
        (None, None) => vec![ModelKind::default_model()],
    };
    let mut scores_out = match &args.scores {
        Some(p) => Some(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let rules = OperatorRules {
        early: args.early,
        ..OperatorRules::default()
    };
    let mut runs = Vec::new();
    for kind in models {
        let mut cfg = args.opts.engine_config(kind, args.train)?;
        if scores_out.is_some() {
            cfg.explain = Explain::All;
        }
        let mut engine = Engine::new(cfg);
        let fit_start = Instant::now();
        if let Some(t) = &train {
            engine
                .fit_all(&t.events, modelio::now())
                .map_err(|(svc, e)| {
                    anyhow::anyhow!("cannot fit `{svc}` on the training file: {e}")
                })?;
        }
        if let Some(mf) = &model_file {
            mf.install(&mut engine).map_err(anyhow::Error::msg)?;
        }
        let prefit = fit_start.elapsed().as_secs_f64();
        let run = replay(
            &mut engine,
            kind,
            &input.events,
            &input.invalid,
            prefit,
            &rules,
            scores_out.as_mut(),
        )?;
        if run.summary.scored == 0 {
            bail!(
                "`{kind}` scored no event of {}: every service was still training ({} of {} events \
                 were training events; a fitted model needs --train N events per service first, \
                 now {}: lower --train or pass --train-file)",
                args.input.display(),
                run.summary.train_events,
                run.summary.events,
                args.train
            );
        }
        if args.json {
            println!("{}", serde_json::to_string(&run.summary)?);
        }
        runs.push(run);
    }
    if let Some(mut w) = scores_out {
        w.flush().context("cannot write scores")?;
    }
    if !args.json {
        print_table(&runs);
        if args.per_service {
            for r in &runs {
                print_services(r);
            }
        }
    }
    if let Some(path) = &args.report {
        let title = format!("kanary eval — {}", args.input.display());
        let html = report::render(&title, &input.events, &runs);
        std::fs::write(path, html).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote report {}", path.display());
    }
    Ok(())
}

/// Replays `events` through `engine` in batches, tallying decisions against labels.
pub fn replay(
    engine: &mut Engine,
    kind: ModelKind,
    events: &[Event],
    parse_invalid: &BTreeMap<&'static str, u64>,
    prefit_seconds: f64,
    rules: &OperatorRules,
    mut scores_out: Option<&mut BufWriter<File>>,
) -> Result<ModelRun> {
    let progress = progress_bar(events.len() as u64, kind.name());
    let mut confusion = Confusion::default();
    let mut invalid = parse_invalid.clone();
    let mut scored = Vec::new();
    let (mut labelled_scores, mut labels) = (Vec::new(), Vec::new());
    let mut train_events = 0u64;
    let mut fit_seconds = prefit_seconds;
    let mut engine_seconds = 0.0;
    let mut outcomes = Vec::with_capacity(BATCH);
    let mut line = String::with_capacity(256);
    let now = modelio::now();
    for (b, chunk) in events.chunks(BATCH).enumerate() {
        outcomes.clear();
        let t = Instant::now();
        engine.process_batch(chunk, now, &mut outcomes);
        let dt = t.elapsed().as_secs_f64();
        engine_seconds += dt;
        let mut fitted_here = false;
        for (k, (ev, o)) in chunk.iter().zip(&outcomes).enumerate() {
            match o {
                Outcome::Invalid(e) => *invalid.entry(e.reason()).or_default() += 1,
                // (eval fits inline: nothing waits for a fit.)
                Outcome::Training { fitted, error } => {
                    train_events += 1;
                    fitted_here |= *fitted;
                    if let Some(e) = error {
                        tracing::warn!("{}: fitting `{}` failed: {e}", kind, ev.service);
                    }
                }
                Outcome::Waiting { .. } => train_events += 1,
                Outcome::Scored(s) => {
                    scored.push(ScoredPoint {
                        index: b * BATCH + k,
                        score: s.score,
                        threshold: s.threshold,
                        flagged: s.flagged,
                    });
                    if let Some(l) = ev.label {
                        confusion.record(s.flagged, l);
                        labelled_scores.push(s.score);
                        labels.push(l);
                    }
                    if let Some(w) = scores_out.as_deref_mut() {
                        line.clear();
                        write_scored(&mut line, ev, kind.name(), s, Shape::Score);
                        w.write_all(line.as_bytes())
                            .context("cannot write scores")?;
                    }
                }
            }
        }
        if fitted_here {
            // Fitting happened inside this batch: count the batch's time as fitting time.
            fit_seconds += dt;
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let thresholds = engine
        .models()
        .map(|(s, m)| (s.to_string(), m.threshold))
        .collect();
    let (operator, services) = per_service(events, &scored, rules);
    let service_aps: Vec<f64> = services.iter().filter_map(|s| s.pr_auc).collect();
    let pr_auc_services = (!service_aps.is_empty())
        .then(|| service_aps.iter().sum::<f64>() / service_aps.len() as f64);
    let summary = EvalSummary {
        model: kind.name().to_string(),
        events: events.len() as u64,
        scored: scored.len() as u64,
        train_events,
        invalid,
        tp: confusion.tp,
        fp: confusion.fp,
        fn_: confusion.fn_,
        tn: confusion.tn,
        precision: confusion.precision(),
        recall: confusion.recall(),
        f1: confusion.f1(),
        pr_auc: average_precision(&labelled_scores, &labels),
        events_per_sec: events.len() as f64 / engine_seconds.max(1e-9),
        fit_seconds,
        thresholds,
        early_within: rules.early,
        operator: operator.summary(),
        pr_auc_services,
        services,
    };
    Ok(ModelRun { summary, scored })
}

/// Operator figures of the whole run and of each service (in name order). Events without a
/// label count as normal.
fn per_service(
    events: &[Event],
    scored: &[ScoredPoint],
    rules: &OperatorRules,
) -> (OperatorCounts, Vec<ServiceSummary>) {
    #[derive(Default)]
    struct Track {
        ts: Vec<f64>,
        labels: Vec<bool>,
        flags: Vec<bool>,
        scores: Vec<f64>,
        confusion: Confusion,
    }
    let mut tracks: BTreeMap<&str, Track> = BTreeMap::new();
    for p in scored {
        let ev = &events[p.index];
        let t = tracks.entry(ev.service.as_str()).or_default();
        let label = ev.label.unwrap_or(false);
        t.ts.push(ev.ts);
        t.labels.push(label);
        t.flags.push(p.flagged);
        t.scores.push(p.score);
        if ev.label.is_some() {
            t.confusion.record(p.flagged, label);
        }
    }
    let mut total = OperatorCounts::default();
    let mut out = Vec::with_capacity(tracks.len());
    for (service, t) in tracks {
        let step = typical_step(&t.ts).unwrap_or(0.0);
        let c = OperatorCounts::of_service(&t.labels, &t.flags, step, rules);
        total.merge(&c);
        out.push(ServiceSummary {
            service: service.to_string(),
            scored: t.labels.len() as u64,
            f1: t.confusion.f1(),
            pr_auc: average_precision(&t.scores, &t.labels),
            operator: c.summary(),
        });
    }
    (total, out)
}

fn progress_bar(len: u64, label: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>6} {bar:40} {pos}/{len} events {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_prefix(label.to_string());
    // Only worth drawing for long runs; indicatif hides it when stderr is not a terminal.
    if len < 200_000 {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb
}

fn fmt_rate(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn fmt_pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}%", 100.0 * x))
        .unwrap_or_else(|| "-".into())
}

fn print_table(runs: &[ModelRun]) {
    let early = runs.first().map_or(3, |r| r.summary.early_within);
    println!(
        "{:<8} {:>9} {:>9} {:>7} {:>7} {:>7} {:>6} {:>6} {:>9} {:>8} {:>7} {:>7} {:>7} {:>7} {:>11}",
        "model",
        "events",
        "scored",
        "incid.",
        "caught",
        format!("<={early}"),
        "delay",
        "pages/d",
        "normal%",
        "prec.",
        "recall",
        "f1",
        "pr_auc",
        "ap/svc",
        "events/s"
    );
    for r in runs {
        let s = &r.summary;
        let o = &s.operator;
        println!(
            "{:<8} {:>9} {:>9} {:>7} {:>7} {:>7} {:>6} {:>6} {:>9} {:>8} {:>7} {:>7} {:>7} {:>7} {:>11.0}",
            s.model,
            s.events,
            s.scored,
            o.incidents,
            fmt_rate(o.caught, 3),
            fmt_rate(o.early, 3),
            fmt_rate(o.median_delay, 1),
            fmt_rate(o.false_pages_per_day, 2),
            fmt_pct(o.normal_flagged),
            fmt_rate(s.precision, 3),
            fmt_rate(s.recall, 3),
            fmt_rate(s.f1, 3),
            fmt_rate(s.pr_auc, 3),
            fmt_rate(s.pr_auc_services, 3),
            s.events_per_sec
        );
    }
}

fn print_services(run: &ModelRun) {
    let s = &run.summary;
    println!("\n{} per service", s.model);
    println!(
        "{:<24} {:>8} {:>7} {:>7} {:>7} {:>6} {:>8} {:>9} {:>7} {:>7}",
        "service",
        "scored",
        "incid.",
        "caught",
        format!("<={}", s.early_within),
        "delay",
        "pages/d",
        "normal%",
        "f1",
        "pr_auc"
    );
    for v in &s.services {
        let o = &v.operator;
        println!(
            "{:<24} {:>8} {:>7} {:>7} {:>7} {:>6} {:>8} {:>9} {:>7} {:>7}",
            v.service,
            v.scored,
            o.incidents,
            fmt_rate(o.caught, 3),
            fmt_rate(o.early, 3),
            fmt_rate(o.median_delay, 1),
            fmt_rate(o.false_pages_per_day, 2),
            fmt_pct(o.normal_flagged),
            fmt_rate(v.f1, 3),
            fmt_rate(v.pr_auc, 3),
        );
    }
}
