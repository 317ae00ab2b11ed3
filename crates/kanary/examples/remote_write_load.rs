//! Load for `scripts/bench_gateway.sh`: Prometheus remote-write requests as Prometheus sends
//! them (snappy protobuf, one shard per connection, each entity's timestamps in order), sent
//! as fast as the gateway answers. The bodies are encoded before the clock starts.
//!
//!   remote_write_load URL ENTITIES SERIES_PER_ENTITY SCRAPES CONNECTIONS [SAMPLES_PER_REQUEST]
//!
//! Prints one JSON object: samples, requests, events the gateway should make, seconds,
//! samples_per_s.

use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
struct Label {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(double, tag = "1")]
    value: f64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

fn arg(args: &[String], i: usize, default: Option<usize>) -> usize {
    match args.get(i) {
        Some(a) => a.parse().unwrap_or_else(|e| panic!("argument {i} `{a}`: {e}")),
        None => default.unwrap_or_else(|| {
            eprintln!(
                "usage: remote_write_load URL ENTITIES SERIES_PER_ENTITY SCRAPES CONNECTIONS [SAMPLES_PER_REQUEST]"
            );
            std::process::exit(2)
        }),
    }
}

/// The series of one entity at one scrape: half counters (`_total`), half gauges.
fn scrape(entity: usize, series: usize, ts: i64, k: usize) -> Vec<TimeSeries> {
    (0..series)
        .map(|s| {
            let counter = s % 2 == 0;
            let name = if counter {
                format!("bench_ops_{s}_total")
            } else {
                format!("bench_level_{s}")
            };
            let value = if counter {
                (k * (s + 1)) as f64 * 10.0
            } else {
                ((k * 7 + s * 13) % 101) as f64
            };
            TimeSeries {
                labels: vec![
                    Label {
                        name: "__name__".into(),
                        value: name,
                    },
                    Label {
                        name: "instance".into(),
                        value: format!("host-{entity}:9100"),
                    },
                    Label {
                        name: "job".into(),
                        value: "bench".into(),
                    },
                    Label {
                        name: "mode".into(),
                        value: "user".into(),
                    },
                ],
                samples: vec![Sample {
                    value,
                    timestamp: ts,
                }],
            }
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url: hyper::Uri = args
        .get(1)
        .map(|u| u.parse().expect("URL"))
        .unwrap_or_else(|| {
            arg(&args, 99, None);
            unreachable!()
        });
    let entities = arg(&args, 2, None);
    let series = arg(&args, 3, None);
    let scrapes = arg(&args, 4, None);
    let connections = arg(&args, 5, None).max(1);
    let per_request = arg(&args, 6, Some(2000));
    let start_ms = 1_700_000_000_000i64;
    // Connection c sends the entities e with e % connections == c, scrape after scrape, in
    // requests of about `per_request` samples: the order one remote-write shard keeps.
    let mut bodies: Vec<Vec<Bytes>> = vec![Vec::new(); connections];
    let mut samples = 0usize;
    for (c, out) in bodies.iter_mut().enumerate() {
        let mine: Vec<usize> = (c..entities).step_by(connections).collect();
        for k in 0..scrapes {
            let ts = start_ms + k as i64 * 15_000;
            let mut batch = Vec::new();
            for &e in &mine {
                batch.extend(scrape(e, series, ts, k));
                if batch.len() >= per_request {
                    samples += batch.len();
                    out.push(encode(std::mem::take(&mut batch)));
                }
            }
            if !batch.is_empty() {
                samples += batch.len();
                out.push(encode(batch));
            }
        }
    }
    let requests: usize = bodies.iter().map(Vec::len).sum();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    rt.block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut tasks = Vec::new();
        for list in bodies {
            let client = client.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                for body in list {
                    loop {
                        let req = hyper::Request::post(url.clone())
                            .header("Content-Type", "application/x-protobuf")
                            .header("Content-Encoding", "snappy")
                            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                            .body(Full::new(body.clone()))
                            .unwrap();
                        let resp = client.request(req).await.expect("gateway answers");
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        if status.is_success() {
                            break;
                        }
                        // As Prometheus does: 5xx is retried, 4xx is a bug here.
                        assert!(status.is_server_error(), "gateway answered {status}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"samples\":{samples},\"requests\":{requests},\"events\":{},\"seconds\":{secs:.3},\"samples_per_s\":{:.0}}}",
        entities * scrapes.saturating_sub(1),
        samples as f64 / secs
    );
}

fn encode(timeseries: Vec<TimeSeries>) -> Bytes {
    let raw = WriteRequest { timeseries }.encode_to_vec();
    Bytes::from(snap::raw::Encoder::new().compress_vec(&raw).unwrap())
}
