//! `kanary simulate`: a labelled event stream to a file, stdout or Kafka.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kanary_core::event::Event;
use kanary_core::simulate::{DEFAULT_START_TS, Simulator};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::cli::SimulateArgs;
use crate::modelio::now;
use crate::{commands, kafka};

/// Keeps a stream at `rate` events per second.
pub struct Pacer {
    start: Instant,
    rate: Option<f64>,
    /// The number of the event due at `start`.
    first: u64,
}

impl Pacer {
    pub fn new(rate: Option<f64>) -> Self {
        Pacer::starting_at(rate, 0)
    }

    /// A pacer whose event number `first` is due now.
    pub fn starting_at(rate: Option<f64>, first: u64) -> Self {
        Pacer {
            start: Instant::now(),
            rate: rate.filter(|r| *r > 0.0),
            first,
        }
    }

    /// How long to wait before sending event number `sent` (0-based), if at all.
    pub fn delay(&self, sent: u64) -> Option<Duration> {
        let rate = self.rate?;
        let due = Duration::from_secs_f64(sent.saturating_sub(self.first) as f64 / rate);
        let elapsed = self.start.elapsed();
        (due > elapsed + Duration::from_millis(1)).then(|| due - elapsed)
    }
}

pub fn run(args: SimulateArgs) -> Result<()> {
    if let Some(r) = args.rate
        && !(r > 0.0 && r.is_finite())
    {
        bail!("--rate must be a positive number of events per second");
    }
    let realtime = args.realtime || args.rate.is_some() || args.brokers.is_some();
    let start = if realtime { now() } else { DEFAULT_START_TS };
    let mut sim = Simulator::new(args.scenario, args.seed, start);
    if let Some(brokers) = args.brokers.clone() {
        let rt = commands::runtime()?;
        return rt.block_on(produce(&args, &brokers, &mut sim, realtime));
    }
    if args.count == 0 && args.rate.is_none() && args.output.as_os_str() != "-" {
        bail!("--count 0 (forever) to a file needs --rate");
    }
    let sink: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            File::create(&args.output)
                .with_context(|| format!("cannot create {}", args.output.display()))?,
        )
    };
    let mut w = BufWriter::with_capacity(1 << 20, sink);
    let pacer = Pacer::new(args.rate);
    let mut line = String::with_capacity(256);
    let mut sent = 0u64;
    while args.count == 0 || sent < args.count {
        if let Some(d) = pacer.delay(sent) {
            w.flush().ok();
            std::thread::sleep(d);
        }
        let ev = next(&mut sim, realtime);
        line.clear();
        ev.write_json(&mut line);
        line.push('\n');
        if let Err(e) = w.write_all(line.as_bytes()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(()); // e.g. `kanary simulate | head`
            }
            return Err(e).context("cannot write events");
        }
        sent += 1;
    }
    match w.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write events")
        }
        _ => Ok(()),
    }
}

fn next(sim: &mut Simulator, realtime: bool) -> Event {
    let mut ev = sim.next_event();
    if realtime {
        ev.ts = (now() * 1000.0).round() / 1000.0;
    }
    ev
}

/// Produces to Kafka with the idempotent producer, keyed by service.
async fn produce(
    args: &SimulateArgs,
    brokers: &str,
    sim: &mut Simulator,
    realtime: bool,
) -> Result<()> {
    let opts: Vec<String> = args
        .kafka_opts
        .iter()
        .flat_map(|o| kafka::split_opts(o))
        .collect();
    let mut cfg = kafka::client_config(brokers, &opts)?;
    if kafka::ensure_topic(
        &cfg,
        rdkafka::client::DefaultClientContext,
        &args.topic,
        args.partitions,
    )
    .await?
    {
        tracing::info!(topic = %args.topic, partitions = args.partitions, "created topic");
    }
    for (k, v) in [
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
        ("queue.buffering.max.messages", "500000"),
    ] {
        if cfg.get(k).is_none() {
            cfg.set(k, v);
        }
    }
    let producer: FutureProducer = cfg.create().context("cannot create Kafka producer")?;
    let mut pacer = Pacer::new(args.rate);
    let mut pending = VecDeque::new();
    let mut line = String::with_capacity(256);
    let (mut sent, mut failed) = (0u64, 0u64);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let stop = commands::Shutdown::new();
    stop.on_signal("interrupted");
    loop {
        if args.count != 0 && sent >= args.count {
            break;
        }
        if stop.is_triggered() {
            tracing::info!("flushing what was sent");
            break;
        }
        if let Some(d) = pacer.delay(sent) {
            tokio::time::sleep(d.min(Duration::from_millis(100))).await;
            continue;
        }
        let ev = next(sim, realtime);
        line.clear();
        ev.write_json(&mut line);
        let mut record = FutureRecord::to(&args.topic)
            .key(ev.service.as_str())
            .payload(line.as_str());
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                Err((e, r)) => {
                    record = r;
                    // Queue full: wait for the oldest delivery, then retry.
                    match pending.pop_front() {
                        Some(f) => failed += delivery_failed(f.await),
                        None => {
                            tracing::debug!("producer queue: {e}");
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }
        }
        sent += 1;
        if sent == 1 {
            // The pace starts once the first event is on the topic: events are stamped when
            // they are made, and until the producer is connected and holds its producer id
            // (about half a second) they would wait in it, a delay a consumer measuring
            // event-to-detection latency would count against itself.
            if let Some(f) = pending.pop_front() {
                failed += delivery_failed(f.await);
            }
            pacer = Pacer::starting_at(args.rate, sent);
        }
        while pending.len() > 100_000 {
            if let Some(f) = pending.pop_front() {
                failed += delivery_failed(f.await);
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            tracing::info!(
                sent,
                rate = format!("{:.0}/s", sent as f64 / started.elapsed().as_secs_f64()),
                "producing to {}",
                args.topic
            );
        }
    }
    for f in pending {
        failed += delivery_failed(f.await);
    }
    tracing::info!(
        sent,
        failed,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "done producing to {}",
        args.topic
    );
    if failed > 0 {
        bail!("{failed} of {sent} events were not delivered");
    }
    Ok(())
}

fn delivery_failed(r: <DeliveryFuture as std::future::Future>::Output) -> u64 {
    match r {
        Ok(Ok(_)) => 0,
        Ok(Err((e, _))) => {
            tracing::warn!("delivery failed: {e}");
            1
        }
        Err(_) => {
            tracing::warn!("delivery cancelled");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pacer_started_late_counts_from_its_first_event() {
        let p = Pacer::starting_at(Some(1000.0), 5);
        // Event 5 is due now, event 1005 a second from now; earlier numbers are overdue.
        assert!(p.delay(5).is_none());
        assert!(p.delay(0).is_none());
        let d = p.delay(1005).unwrap();
        assert!(
            d > Duration::from_millis(900) && d <= Duration::from_secs(1),
            "{d:?}"
        );
        assert!(Pacer::new(None).delay(1_000_000).is_none());
    }
}
