//! `kanary nab`: run a detector over the Numenta Anomaly Benchmark and score it.
//!
//! Every CSV listed in the windows file (`{"category/file.csv": [[start, end], ...]}`) is read
//! from `--data`, streamed row by row through a fresh engine (the file is one service; its
//! probation period — the first 15%, at most 750 rows — is the warm-up: window features fill
//! and the model fits on it, without labels), and written to `--results/<category>/<file>.csv`
//! as `timestamp,value,anomaly_score,label` with one row per data row and the score in [0, 1].
//! Then the NAB score of every profile is computed over the whole corpus, with one threshold
//! per profile, and printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kanary_core::detector::ModelKind;
use kanary_core::engine::{Engine, EngineConfig, Outcome};
use kanary_core::event::Event;
use kanary_core::features::WindowSpec;
use kanary_core::models::novelty::{NoveltyParams, RecordRatio};
use kanary_core::nab::{self, PROFILES, ScoredFile, Window};
use kanary_core::registry::ModelParams;
use serde::Serialize;

use crate::cli::NabArgs;

/// One NAB data file.
pub struct NabFile {
    /// `category/file.csv`.
    pub name: String,
    pub timestamps: Vec<String>,
    pub ts: Vec<f64>,
    pub values: Vec<f64>,
    pub windows: Vec<Window>,
}

#[derive(Debug, Serialize)]
struct NabResult {
    model: String,
    profile: &'static str,
    score: f64,
    threshold: f64,
    files: usize,
    windows: usize,
    rows: usize,
    rows_per_sec: f64,
}

pub fn run(args: NabArgs) -> Result<()> {
    let files = load_corpus(&args.data, &args.windows)?;
    let rows: usize = files.iter().map(|f| f.values.len()).sum();
    let windows: usize = files.iter().map(|f| f.windows.len()).sum();
    eprintln!("NAB: {} files, {rows} rows, {windows} windows", files.len());
    let models = args.model.0.clone();
    let mut table = Vec::new();
    for &kind in &models {
        let dir = if models.len() == 1 {
            args.results.clone()
        } else {
            args.results.join(kind.name())
        };
        let started = Instant::now();
        let mut scored = Vec::with_capacity(files.len());
        for f in &files {
            let scores = score_file(kind, f, &args)?;
            write_results(&dir, f, &scores)?;
            scored.push(ScoredFile {
                scores,
                windows: f.windows.clone(),
            });
        }
        let rate = rows as f64 / started.elapsed().as_secs_f64();
        for p in PROFILES {
            let o = nab::optimize(&scored, &p);
            table.push(NabResult {
                model: kind.name().to_string(),
                profile: p.name,
                score: o.score,
                threshold: o.threshold,
                files: files.len(),
                windows,
                rows,
                rows_per_sec: rate,
            });
        }
    }
    if args.json {
        for r in &table {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "{:<7} {:<20} {:>8} {:>10} {:>12}",
            "model", "profile", "score", "threshold", "rows/s"
        );
        for r in &table {
            println!(
                "{:<7} {:<20} {:>8.2} {:>10.4} {:>12.0}",
                r.model, r.profile, r.score, r.threshold, r.rows_per_sec
            );
        }
    }
    Ok(())
}

/// Window features for NAB when --window is not given.
pub fn nab_window() -> WindowSpec {
    WindowSpec::default()
}

/// The engine configuration `kanary nab` uses for a model on a file of `rows` rows: the
/// probation period fills the windows and trains the model.
pub fn nab_config(kind: ModelKind, args: &NabArgs, rows: usize) -> Result<EngineConfig> {
    let mut cfg = args.opts.engine_config(kind, 0)?;
    if kind.is_streaming() {
        // Streaming models derive their own context from the stream.
        return Ok(cfg);
    }
    let window = cfg.window.take().unwrap_or_else(nab_window);
    cfg.train_events = nab::probation(rows)
        .saturating_sub(window.history())
        .max(kanary_core::detector::MIN_TRAIN_ROWS);
    cfg.window = Some(window);
    Ok(cfg)
}

/// Scores of every row of one file in [0, 1] (0 during warm-up).
pub fn score_file(kind: ModelKind, f: &NabFile, args: &NabArgs) -> Result<Vec<f64>> {
    let mut engine = Engine::new(nab_config(kind, args, f.values.len())?);
    let events: Vec<Event> =
        f.ts.iter()
            .zip(&f.values)
            .map(|(&t, &v)| Event::new(t, f.name.clone()).with_field("value", v))
            .collect();
    let mut outcomes = Vec::with_capacity(events.len());
    engine.process_batch(&events, 0.0, &mut outcomes);
    // Fitted models' raw scores are normalised by their record ratio (see RecordRatio): a
    // fixed squashing cannot make one threshold fit files whose scores differ by orders of
    // magnitude.
    let novelty = ModelKind::named("novelty")?;
    let params = args
        .opts
        .detector
        .model_params(&Default::default())?
        .remove(&novelty)
        .unwrap_or_default();
    let mut norm = RecordRatio::new(NoveltyParams::from_map(novelty.name(), &params)?);
    let mut scores = Vec::with_capacity(events.len());
    for o in &outcomes {
        scores.push(match o {
            // Streaming scores are already in [0, 1] with a fixed alarm level.
            Outcome::Scored(s) if kind.is_streaming() => s.score,
            Outcome::Scored(s) => norm.update(Some(s.score)),
            Outcome::Training { error: Some(e), .. } => {
                bail!("{}: fitting failed: {e}", f.name)
            }
            Outcome::Training { .. } | Outcome::Waiting { .. } => norm.update(None),
            Outcome::Invalid(e) => bail!("{}: {e}", f.name),
        });
    }
    Ok(scores)
}

fn write_results(dir: &Path, f: &NabFile, scores: &[f64]) -> Result<()> {
    let path = dir.join(&f.name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut out = String::with_capacity(scores.len() * 48);
    out.push_str("timestamp,value,anomaly_score,label\n");
    let mut wi = 0;
    for (i, ((t, v), s)) in f.timestamps.iter().zip(&f.values).zip(scores).enumerate() {
        while wi < f.windows.len() && f.windows[wi].end < i {
            wi += 1;
        }
        let label = u8::from(wi < f.windows.len() && f.windows[wi].start <= i);
        let _ = writeln!(out, "{t},{v},{s:.6},{label}");
    }
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads every file listed in the windows file.
pub fn load_corpus(data: &Path, windows_file: &Path) -> Result<Vec<NabFile>> {
    let text = std::fs::read_to_string(windows_file)
        .with_context(|| format!("cannot read {}", windows_file.display()))?;
    let spec: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a NAB windows file", windows_file.display()))?;
    if spec.is_empty() {
        bail!("{} lists no files", windows_file.display());
    }
    let mut files = Vec::with_capacity(spec.len());
    for (name, wins) in spec {
        let path = data.join(&name);
        let csv = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut f = NabFile {
            name: name.clone(),
            timestamps: Vec::new(),
            ts: Vec::new(),
            values: Vec::new(),
            windows: Vec::new(),
        };
        for (k, line) in csv.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let (t, v) = line.split_once(',').with_context(|| {
                format!("{}:{}: expected timestamp,value", path.display(), k + 1)
            })?;
            let ts = parse_timestamp(t)
                .with_context(|| format!("{}:{}: bad timestamp `{t}`", path.display(), k + 1))?;
            let v: f64 = v
                .trim()
                .parse()
                .with_context(|| format!("{}:{}: bad value `{v}`", path.display(), k + 1))?;
            f.timestamps.push(t.to_string());
            f.ts.push(ts);
            f.values.push(v);
        }
        if f.values.is_empty() {
            bail!("{} has no rows", path.display());
        }
        for (start, end) in wins {
            let (a, b) = (parse_timestamp(&start)?, parse_timestamp(&end)?);
            let first = f.ts.iter().position(|&t| t >= a);
            let last = f.ts.iter().rposition(|&t| t <= b);
            if let (Some(s), Some(e)) = (first, last)
                && s <= e
            {
                f.windows.push(Window { start: s, end: e });
            }
        }
        f.windows.sort_by_key(|w| w.start);
        files.push(f);
    }
    Ok(files)
}

/// Seconds since the epoch of `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC).
pub fn parse_timestamp(s: &str) -> Result<f64> {
    let s = s.trim();
    let bad = || anyhow::anyhow!("expected YYYY-MM-DD HH:MM:SS, got `{s}`");
    let (date, time) = s.split_once([' ', 'T']).ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse::<i64>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    let (hms, frac) = match time.split_once('.') {
        Some((h, f)) => (h, format!("0.{f}").parse::<f64>().map_err(|_| bad())?),
        None => (time, 0.0),
    };
    let t: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse::<i64>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_utc() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00").unwrap(), 0.0);
        assert_eq!(
            parse_timestamp("2014-04-10 16:15:00.000000").unwrap(),
            1_397_146_500.0
        );
        assert_eq!(
            parse_timestamp("2000-03-01 00:00:01.5").unwrap(),
            951_868_801.5
        );
        assert!(parse_timestamp("yesterday").is_err());
    }
}
