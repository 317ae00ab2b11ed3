//! `kanary demo`: the whole pipeline in one process, no Kafka needed.
//!
//! A simulator thread produces JSON events at `--rate` onto an in-process bus (a bounded
//! channel standing in for the topic); a scoring thread runs them through the same
//! [`Pipeline`] as `kanary detect` with an Isolation Forest and an autoencoder; anomaly
//! records go to an in-process anomalies "topic" (counted, and shown on the live page); the
//! HTTP server serves `/metrics`, `/healthz`, `/readyz`, `/api/summary` and the live page; and
//! one summary line per second goes to the terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kanary_core::simulate::Simulator;

use crate::cli::DemoArgs;
use crate::commands::simulate::Pacer;
use crate::http::{AppState, Readiness};
use crate::live::Live;
use crate::pipeline::{BatchOutput, Message, Pipeline};
use crate::telemetry::Metrics;
use crate::{commands, modelio};

/// Events per message batch on the in-process bus.
const BUS_BATCH: usize = 256;

pub fn run(args: DemoArgs) -> Result<()> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        anyhow::bail!("--rate must be a positive number of events per second");
    }
    let rt = commands::runtime()?;
    rt.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> Result<()> {
    let kinds = args.model.0.clone();
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let metrics = Metrics::new(&names);
    let live = Arc::new(Live::new("kanary demo", &names));
    let readiness = Arc::new(Readiness::default());
    // No Kafka here: the simulator feeds the pipeline directly.
    readiness.brokers_up.store(true, Ordering::Release);
    readiness.partitions_assigned.store(true, Ordering::Release);
    let configs = kinds
        .iter()
        .map(|&k| args.opts.engine_config(k, args.train))
        .collect::<Result<Vec<_>>>()?;
    let pipeline = Pipeline::new(configs, metrics.clone(), live.clone());
    let handles = pipeline.handles();

    let stop = commands::Shutdown::new();
    stop.on_signal("stopping");
    let wait = stop.clone();
    let (addr, http_task) = crate::http::serve(
        args.addr,
        AppState {
            metrics: metrics.clone(),
            live: live.clone(),
            readiness: readiness.clone(),
        },
        crate::http::Limits::default(),
        async move { wait.wait().await },
    )
    .await?;
    println!(
        "kanary demo: {} at {:.0} events/s, models {}\n  live page  http://{addr}/\n  metrics    http://{addr}/metrics\n  Ctrl-C to stop",
        args.scenario,
        args.rate,
        names.join(" + ")
    );

    // The bus: batches of serialised events, as a topic would carry them.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<String>>(64);
    let producer = {
        let stop = stop.clone();
        let (scenario, seed, rate) = (args.scenario, args.seed, args.rate);
        std::thread::Builder::new()
            .name("kanary-sim".into())
            .spawn(move || {
                let mut sim = Simulator::new(scenario, seed, modelio::now());
                let pacer = Pacer::new(Some(rate));
                let mut sent = 0u64;
                while !stop.is_triggered() {
                    if let Some(d) = pacer.delay(sent) {
                        std::thread::sleep(d.min(Duration::from_millis(50)));
                        continue;
                    }
                    // Whatever is due now, in one bus message batch.
                    let mut batch = Vec::with_capacity(BUS_BATCH);
                    while batch.len() < BUS_BATCH && pacer.delay(sent).is_none() {
                        let mut ev = sim.next_event();
                        ev.ts = modelio::now();
                        batch.push(ev.to_json());
                        sent += 1;
                    }
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
            })
            .context("cannot start the simulator thread")?
    };
    let published = Arc::new(AtomicU64::new(0));
    let scorer = {
        let readiness = readiness.clone();
        let published = published.clone();
        let mut pipeline = pipeline;
        std::thread::Builder::new()
            .name("kanary-score".into())
            .spawn(move || {
                let mut out = BatchOutput::default();
                let mut offset = 0i64;
                while let Ok(batch) = rx.recv() {
                    let msgs: Vec<Message> = batch
                        .iter()
                        .map(|p| {
                            offset += 1;
                            Message {
                                payload: p.as_bytes(),
                                key: None,
                                partition: 0,
                                offset: offset - 1,
                            }
                        })
                        .collect();
                    pipeline.process(&msgs, modelio::now(), &mut out);
                    // The in-process anomalies topic: records are complete JSON, counted here.
                    published.fetch_add(out.anomalies.len() as u64, Ordering::Relaxed);
                    readiness
                        .models_ready
                        .store(pipeline.has_models(), Ordering::Release);
                }
            })
            .context("cannot start the scoring thread")?
    };

    let started = Instant::now();
    let mut iv = tokio::time::interval(Duration::from_secs(1));
    iv.tick().await;
    let signalled = stop.clone();
    let mut shutdown = std::pin::pin!(signalled.wait());
    loop {
        tokio::select! {
            _ = iv.tick() => {}
            _ = &mut shutdown => break,
        }
        live.tick(&handles);
        if !args.quiet {
            println!(
                "{}",
                summary_line(&live, started.elapsed(), published.load(Ordering::Relaxed))
            );
        }
        if args
            .duration
            .is_some_and(|d| started.elapsed().as_secs_f64() >= d)
        {
            break;
        }
    }
    stop.trigger();
    let _ = producer.join();
    let _ = scorer.join();
    let _ = http_task.await;
    Ok(())
}

/// `[  12s] if: 24,000 events 2,001/s 31 anomalies F1 0.91 | ae: ...`
fn summary_line(live: &Live, elapsed: Duration, published: u64) -> String {
    let s = live.summary();
    let parts: Vec<String> = s
        .models
        .iter()
        .map(|m| {
            let quality = match m.f1 {
                Some(f) => format!(" F1 {f:.2}"),
                None => String::new(),
            };
            let state = match m.state {
                crate::live::ModelState::Scoring => String::new(),
                crate::live::ModelState::WarmingUp => " (warming up)".into(),
                crate::live::ModelState::Waiting => " (waiting)".into(),
            };
            format!(
                "{}: {} events {:.0}/s {} anomalies{quality}{state}",
                m.model, m.events, m.throughput_eps, m.anomalies
            )
        })
        .collect();
    format!(
        "[{:>5.0}s] {} | {} records published",
        elapsed.as_secs_f64(),
        parts.join(" | "),
        published
    )
}
