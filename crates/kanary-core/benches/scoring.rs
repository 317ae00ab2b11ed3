//! Criterion benches of the model core: the default model's per-event path through the
//! engine, and the cost of saving and restoring one service's state (what `detect` pays per
//! eviction and return under a memory budget).
//!
//! `cargo bench -p kanary-core --bench scoring` (add a filter such as `persist` to run a part).
//! Compare numbers within one run: these machines are shared and noisy.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kanary_core::detector::{DetectorConfig, ModelKind};
use kanary_core::engine::{Engine, EngineConfig, Outcome};
use kanary_core::event::Event;
use kanary_core::persist::ModelFile;

/// Events of one service with `dim` metrics: a daily cycle at 5-minute steps and a little
/// deterministic noise, so the model sees ordinary telemetry.
fn events(service: &str, dim: usize, n: usize, start: usize) -> Vec<Event> {
    (start..start + n)
        .map(|i| {
            let mut json = format!(
                r#"{{"service":"{service}","ts":{}"#,
                1_700_000_000 + i * 300
            );
            for m in 0..dim {
                let day = (i as f64 * std::f64::consts::TAU / 288.0 + m as f64).sin();
                let noise = ((i * 7919 + m * 104_729) % 1000) as f64 / 1000.0;
                json.push_str(&format!(
                    r#","m{m}":{:.4}"#,
                    50.0 + 20.0 * day + 3.0 * noise
                ));
            }
            json.push('}');
            Event::parse(json.as_bytes()).expect("a valid event")
        })
        .collect()
}

fn engine(kind: &str) -> Engine {
    let kind = ModelKind::named(kind).expect("a registered model");
    Engine::new(EngineConfig::new(DetectorConfig::new(kind)))
}

/// The default model after `warm` events of one service.
fn warmed(dim: usize, warm: usize) -> Engine {
    let mut e = engine("codev");
    let mut out = Vec::new();
    e.process_batch(&events("svc", dim, warm, 0), 0.0, &mut out);
    e
}

fn scoring(c: &mut Criterion) {
    let mut g = c.benchmark_group("codev-events");
    for dim in [3, 19] {
        let batch = events("svc", dim, 2_000, 5_000);
        g.throughput(Throughput::Elements(batch.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(dim), &batch, |b, batch| {
            let mut e = warmed(dim, 5_000);
            let mut out: Vec<Outcome> = Vec::with_capacity(batch.len());
            b.iter(|| {
                out.clear();
                e.process_batch(black_box(batch), 0.0, &mut out);
                black_box(out.len())
            });
        });
    }
    g.finish();
}

fn persist(c: &mut Criterion) {
    let mut g = c.benchmark_group("persist-one-service");
    for dim in [3, 19] {
        let e = warmed(dim, 3_000);
        let mut file = ModelFile::new(ModelKind::named("codev").unwrap(), 0.0);
        file.streams = e.streams();
        let bytes = file.encode().expect("encodes");
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", dim), &file, |b, file| {
            b.iter(|| black_box(file.encode().unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("decode", dim), &bytes, |b, bytes| {
            b.iter(|| black_box(ModelFile::decode(bytes).unwrap()))
        });
        // What a restore costs in full: decode, then install in an engine.
        g.bench_with_input(BenchmarkId::new("restore", dim), &bytes, |b, bytes| {
            let mut e = engine("codev");
            b.iter(|| {
                let f = ModelFile::decode(bytes).unwrap();
                black_box(f.install_owned(&mut e).unwrap())
            });
        });
    }
    g.finish();
}

criterion_group!(benches, scoring, persist);
criterion_main!(benches);
