//! `kanary gateway` end to end: Prometheus remote write and OTLP/HTTP requests in, events on
//! the real Kafka broker of `scripts/test.sh` out; refusals by reason; and a broker outage
//! (librdkafka's mock cluster, for fault injection) answered 503 and made good by the retry.
//! The wire messages are declared here again, independently of the gateway's own code.
//!
//! Run: `KANARY_TEST_BROKERS=127.0.0.1:9092 cargo test -p kanary --test gateway`

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::mocking::MockCluster;

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

/// One series of a request: name, extra labels, value.
type Series<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// A refusal case: reason, path, headers, body, status.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16);

/// A snappy remote-write body: `(name, extra labels, value)` for job `node`, instance `h1`,
/// all at `ts_ms`.
fn remote_write(ts_ms: i64, series: &[Series]) -> Vec<u8> {
    let req = WriteRequest {
        timeseries: series
            .iter()
            .map(|(name, extra, v)| {
                let mut labels = vec![
                    Label {
                        name: "__name__".into(),
                        value: name.to_string(),
                    },
                    Label {
                        name: "instance".into(),
                        value: "h1".into(),
                    },
                    Label {
                        name: "job".into(),
                        value: "node".into(),
                    },
                ];
                labels.extend(extra.iter().map(|(k, v)| Label {
                    name: k.to_string(),
                    value: v.to_string(),
                }));
                TimeSeries {
                    labels,
                    samples: vec![Sample {
                        value: *v,
                        timestamp: ts_ms,
                    }],
                }
            })
            .collect(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

/// One scrape of a node at `t` seconds (since 1,700,000,000 s).
fn node_scrape(t: i64, load: f64, cpu_seconds: f64) -> Vec<u8> {
    remote_write(
        (1_700_000_000 + t) * 1000,
        &[
            ("node_load1", &[], load),
            (
                "node_cpu_seconds_total",
                &[("mode", "user"), ("cpu", "0")],
                cpu_seconds,
            ),
            ("go_goroutines", &[], 7.0),
        ],
    )
}

const RW: [(&str, &str); 2] = [
    ("Content-Type", "application/x-protobuf"),
    ("Content-Encoding", "snappy"),
];

/// OTLP JSON for resource `app`/`instance`: a gauge, a cumulative counter and a cumulative
/// histogram at `t` seconds.
fn otlp_json(instance: &str, t: i64, gauge: f64, total: i64, count: u64, sum: f64) -> String {
    let ns = (1_700_000_000 + t) as u128 * 1_000_000_000;
    format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[
            {{"key":"service.name","value":{{"stringValue":"app"}}}},
            {{"key":"service.instance.id","value":{{"stringValue":"{instance}"}}}}]}},
          "scopeMetrics":[{{"metrics":[
            {{"name":"app_queue","gauge":{{"dataPoints":[{{"timeUnixNano":"{ns}","asDouble":{gauge}}}]}}}},
            {{"name":"app_requests","sum":{{"isMonotonic":true,"aggregationTemporality":2,
               "dataPoints":[{{"startTimeUnixNano":"1","timeUnixNano":"{ns}","asInt":"{total}"}}]}}}},
            {{"name":"app_latency","histogram":{{"aggregationTemporality":2,
               "dataPoints":[{{"startTimeUnixNano":"1","timeUnixNano":"{ns}","count":"{count}","sum":{sum}}}]}}}}
          ]}}]}}]}}"#
    )
}

struct Gw {
    svc: Service,
}

impl Gw {
    fn start(brokers: &str, topic: &str, dir: &Path, extra: &[&str]) -> Gw {
        let port = free_port();
        let mut args: Vec<String> = [
            "gateway",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--partitions",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let svc = Service::start(&args, port, dir.join("gateway.log"));
        let gw = Gw { svc };
        wait_for(Duration::from_secs(30), "gateway ready", || {
            (gw.svc.status("/readyz") == Some(200)).then_some(())
        });
        gw
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
        http_post(self.svc.port, path, headers, body).expect("gateway answers")
    }
}

fn events(records: &[(Vec<u8>, HashMap<String, String>)]) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = records
        .iter()
        .map(|(p, _)| serde_json::from_slice(p).unwrap())
        .collect();
    v.sort_by(|a, b| {
        (a["service"].as_str(), a["ts"].as_f64())
            .partial_cmp(&(b["service"].as_str(), b["ts"].as_f64()))
            .unwrap()
    });
    v
}

#[test]
#[ignore = "needs the Kafka broker of scripts/test.sh (KANARY_TEST_BROKERS)"]
fn remote_write_and_otlp_become_events_on_kafka_after_the_credential_check() {
    let dir = out_dir("gateway-e2e");
    let topic = unique("gw-metrics");
    let token = dir.join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let gw = Gw::start(
        &brokers(),
        &topic,
        &dir,
        &[
            "--auth-token-file",
            token.to_str().unwrap(),
            "--include",
            "^node_",
            "--include",
            "^app_",
        ],
    );
    let auth = ("Authorization", "Bearer t0ken");
    // Without the token, or with another, nothing gets in.
    assert_eq!(
        gw.post("/api/v1/write", &RW, &node_scrape(0, 0.5, 100.0)).0,
        401
    );
    let wrong = [RW[0], RW[1], ("Authorization", "Bearer t0ke")];
    assert_eq!(
        gw.post("/api/v1/write", &wrong, &node_scrape(0, 0.5, 100.0))
            .0,
        401
    );
    // Three scrapes, 15 s apart: the first only starts the counter.
    for (t, load, cpu) in [(0, 0.5, 100.0), (15, 0.75, 103.0), (30, 2.0, 118.0)] {
        let (code, body) = gw.post(
            "/api/v1/write",
            &[RW[0], RW[1], auth],
            &node_scrape(t, load, cpu),
        );
        assert_eq!(code, 204, "{body}");
    }
    let json = [("Content-Type", "application/json"), auth];
    for (t, gauge, total, count, sum) in [(0, 1.0, 10, 4, 2.0), (10, 4.5, 60, 8, 4.4)] {
        let body = otlp_json("j1", t, gauge, total, count, sum);
        let (code, resp) = gw.post("/v1/metrics", &json, body.as_bytes());
        assert_eq!(code, 200, "{resp}");
        assert_eq!(resp.trim(), "{}", "a full success has no partial_success");
    }
    // The same in protobuf, another instance.
    let proto = [("Content-Type", "application/x-protobuf"), auth];
    for (t, gauge, total, count, sum) in [(0, 2.0, 0, 0, 0.0), (20, 3.0, 40, 5, 10.0)] {
        let req: ExportMetricsServiceRequest =
            serde_json::from_str(&otlp_json("p1", t, gauge, total, count, sum)).unwrap();
        let (code, _) = gw.post("/v1/metrics", &proto, &req.encode_to_vec());
        assert_eq!(code, 200);
    }

    let ev = events(&read_all(&topic, 4));
    assert_eq!(ev.len(), 4, "{ev:?}");
    let (j, p, a, b) = (&ev[0], &ev[1], &ev[2], &ev[3]);
    assert_eq!(j["service"], "app/j1");
    assert_eq!(j["job"], "app");
    assert_eq!(j["instance"], "j1");
    assert_eq!(j["app_queue"], 4.5);
    assert_eq!(j["app_requests:rate"], 5.0);
    // (4.4 - 2.0) / (8 - 4), in floating point.
    assert!(
        (j["app_latency:mean"].as_f64().unwrap() - 0.6).abs() < 1e-12,
        "{j}"
    );
    assert_eq!(j["app_latency_count:rate"], 0.4);
    assert_eq!(
        (p["service"].as_str(), p["app_latency:mean"].as_f64()),
        (Some("app/p1"), Some(2.0))
    );
    assert_eq!(a["service"], "node/h1");
    assert_eq!(
        (a["ts"].as_f64(), b["ts"].as_f64()),
        (Some(1_700_000_015.0), Some(1_700_000_030.0))
    );
    assert_eq!(a["node_load1"], 0.75);
    assert_eq!(
        a["node_cpu_seconds_total:rate{cpu=\"0\",mode=\"user\"}"],
        0.2
    );
    assert_eq!(
        b["node_cpu_seconds_total:rate{cpu=\"0\",mode=\"user\"}"],
        1.0
    );
    assert!(
        a.get("go_goroutines").is_none(),
        "--include keeps node_ and app_ only"
    );

    let m = gw.svc.metrics().unwrap();
    assert_eq!(sum_samples(&m, "gateway_events_total", &[]), 4.0);
    assert_eq!(
        sum_samples(
            &m,
            "gateway_rejected_requests_total",
            &[("reason", "unauthorized")]
        ),
        2.0
    );
    assert_eq!(
        sum_samples(
            &m,
            "gateway_samples_dropped_total",
            &[("reason", "excluded")]
        ),
        3.0
    );
    assert_eq!(
        sum_samples(&m, "gateway_requests_total", &[("code", "204")]),
        3.0
    );
    assert_eq!(
        sum_samples(
            &m,
            "gateway_requests_total",
            &[("endpoint", "otlp"), ("code", "200")]
        ),
        4.0
    );
}

#[test]
#[ignore = "needs the Kafka broker of scripts/test.sh (KANARY_TEST_BROKERS)"]
fn unusable_bodies_get_their_4xx_and_nothing_is_produced() {
    let dir = out_dir("gateway-refusals");
    let topic = unique("gw-refusals");
    let gw = Gw::start(&brokers(), &topic, &dir, &["--max-body", "4KiB"]);
    let json = [("Content-Type", "application/json")];
    let proto = [("Content-Type", "application/x-protobuf")];
    let big: Vec<Series> = vec![("node_load1", &[], 1.0); 400];
    let garbage_proto = snap::raw::Encoder::new()
        .compress_vec(b"\x0a\xff\xff\xff\xff\x0f")
        .unwrap();
    let cases: Vec<Case> = vec![
        (
            "corrupt_body",
            "/api/v1/write",
            RW.to_vec(),
            b"\xff\xff\xff\xff\xff not snappy".to_vec(),
            400,
        ),
        (
            "bad_protobuf",
            "/api/v1/write",
            RW.to_vec(),
            garbage_proto,
            400,
        ),
        (
            "too_large",
            "/api/v1/write",
            RW.to_vec(),
            remote_write(0, &big),
            413,
        ),
        (
            "too_large",
            "/api/v1/write",
            RW.to_vec(),
            vec![0u8; 5000],
            413,
        ),
        (
            "unsupported_media_type",
            "/api/v1/write",
            vec![("Content-Encoding", "zstd")],
            node_scrape(0, 1.0, 1.0),
            415,
        ),
        (
            "bad_json",
            "/v1/metrics",
            json.to_vec(),
            b"{\"resourceMetrics\": 7}".to_vec(),
            400,
        ),
        (
            "bad_protobuf",
            "/v1/metrics",
            proto.to_vec(),
            b"\x0a\xff\xff\xff\xff\x0f".to_vec(),
            400,
        ),
        (
            "unsupported_media_type",
            "/v1/metrics",
            vec![("Content-Type", "text/plain")],
            b"x".to_vec(),
            415,
        ),
        (
            "corrupt_body",
            "/v1/metrics",
            vec![json[0], ("Content-Encoding", "gzip")],
            b"not gzip".to_vec(),
            400,
        ),
    ];
    let mut expected: HashMap<&str, f64> = HashMap::new();
    for (reason, path, headers, body, status) in &cases {
        let (code, text) = gw.post(path, headers, body);
        assert_eq!(code, *status, "{reason} on {path}: {text}");
        assert!(!text.trim().is_empty(), "{reason}: the answer says why");
        *expected.entry(reason).or_default() += 1.0;
    }
    let m = gw.svc.metrics().unwrap();
    for (reason, n) in expected {
        assert_eq!(
            sum_samples(&m, "gateway_rejected_requests_total", &[("reason", reason)]),
            n,
            "{reason}"
        );
    }
    assert_eq!(sum_samples(&m, "gateway_events_total", &[]), 0.0);
    assert_eq!(count_messages(&topic), 0);
}

/// Every message of `topic` on the mock cluster.
fn mock_messages(bootstrap: &str, topic: &str, expected: usize) -> Vec<serde_json::Value> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(15) && out.len() <= expected {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(serde_json::from_slice(m.payload().unwrap_or_default()).unwrap());
        } else if out.len() == expected && start.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    out
}

#[test]
fn a_broker_outage_gets_503_and_the_retried_request_delivers_each_event_once() {
    let dir = out_dir("gateway-outage");
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("gw-outage", 1, 1).unwrap();
    let gw = Gw::start(
        &cluster.bootstrap_servers(),
        "gw-outage",
        &dir,
        &["--delivery-timeout", "3"],
    );
    for t in [0, 1] {
        assert_eq!(
            gw.post("/api/v1/write", &RW, &node_scrape(t, 1.0, t as f64))
                .0,
            204
        );
    }
    // A scrape on its way while the broker goes away: librdkafka can hold an event that was
    // on the wire well past its message timeout (7-9 s with a 3 s timeout was seen), and
    // the writer must still get its answer within --delivery-timeout and a second.
    let port = gw.svc.port;
    let racer = std::thread::spawn(move || {
        let sent = std::time::Instant::now();
        let answer = http_post(port, "/api/v1/write", &RW, &node_scrape(2, 1.0, 2.0));
        (sent.elapsed(), answer)
    });
    std::thread::sleep(Duration::from_millis(1));
    cluster.broker_down(1).unwrap();
    let start = std::time::Instant::now();
    let (took, answer) = racer.join().unwrap();
    let (code, body) = answer.expect("the gateway answers the scrape caught by the outage");
    assert!(
        took < Duration::from_millis(5500),
        "the scrape caught by the outage was answered after {took:?}: {code} {body}"
    );
    assert!(code == 204 || code == 503, "{code} {body}");
    // Each attempt is a new scrape, as Prometheus sends them: one that went out before the
    // outage took effect is acknowledged (a repeat of it would be a no-op 204 of late
    // samples, which says nothing about the outage).
    let mut t = if code == 204 { 3 } else { 2 };
    let down = wait_for(
        Duration::from_secs(20),
        "a 503 while the broker is down",
        || {
            let (code, body) = gw.post("/api/v1/write", &RW, &node_scrape(t, 1.0, t as f64));
            if code == 204 {
                t += 1;
                return None;
            }
            Some((code, body))
        },
    );
    assert_eq!(down.0, 503, "{}", down.1);
    assert!(down.1.contains("retry"), "{}", down.1);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the first 503 came {:?} into the outage, after {} acknowledged scrape(s)",
        start.elapsed(),
        t - 2
    );
    assert_eq!(gw.svc.status("/readyz"), Some(503));
    cluster.broker_up(1).unwrap();
    // The writer retries the refused scrape until it gets through, then goes on.
    wait_for(Duration::from_secs(30), "the retry to get through", || {
        let (code, _) = gw.post("/api/v1/write", &RW, &node_scrape(t, 1.0, t as f64));
        (code == 204).then_some(())
    });
    assert_eq!(
        gw.post(
            "/api/v1/write",
            &RW,
            &node_scrape(t + 1, 1.0, (t + 1) as f64)
        )
        .0,
        204
    );
    let ev = mock_messages(&cluster.bootstrap_servers(), "gw-outage", t as usize + 1);
    let mut ts: Vec<f64> = ev
        .iter()
        .map(|e| e["ts"].as_f64().unwrap() - 1_700_000_000.0)
        .collect();
    // At least once, as documented: the scrape caught by the outage, answered 503, may have
    // been stored by the broker before the connection closed and still be reported failed by
    // librdkafka; its retry then stores it again, right after the first copy. Nothing else
    // may repeat.
    if code == 503 && ts.iter().filter(|s| **s == 2.0).count() == 2 {
        let first = ts.iter().position(|s| *s == 2.0).unwrap();
        assert_eq!(ts.get(first + 1), Some(&2.0), "{ts:?}");
        ts.remove(first);
    }
    let want: Vec<f64> = (1..=t + 1).map(|s| s as f64).collect();
    assert_eq!(ts, want, "each acknowledged scrape once, in order");
    let m = gw.svc.metrics().unwrap();
    assert!(
        sum_samples(
            &m,
            "gateway_rejected_requests_total",
            &[("reason", "kafka_unavailable")]
        ) + sum_samples(
            &m,
            "gateway_rejected_requests_total",
            &[("reason", "delivery_failed")]
        ) >= 1.0
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
fn test_ca(dir: &Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=kanary test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
}

/// `curl` over HTTPS: the status, or `None` if the connection or the verification failed.
fn curl(url: &str, ca: Option<&Path>, args: &[&str]) -> Option<u16> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ]);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    let out = cmd.args(args).arg(url).output().expect("curl");
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

#[test]
fn the_tls_listener_serves_clients_that_trust_its_ca_and_no_plain_http() {
    let dir = out_dir("gateway-tls");
    test_ca(&dir);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("gw-tls", 1, 1).unwrap();
    let port = free_port();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let args: Vec<String> = [
        "gateway",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--brokers",
        &cluster.bootstrap_servers(),
        "--topic",
        "gw-tls",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _gw = Service::start(&args, port, dir.join("gateway.log"));
    let base = format!("https://127.0.0.1:{port}");
    let ca = dir.join("ca.crt");
    wait_for(Duration::from_secs(30), "HTTPS /readyz 200", || {
        (curl(&format!("{base}/readyz"), Some(&ca), &[]) == Some(200)).then_some(())
    });
    let body = dir.join("scrape.bin");
    std::fs::write(&body, node_scrape(0, 1.0, 1.0)).unwrap();
    let post = [
        "-H",
        "Content-Type: application/x-protobuf",
        "-H",
        "Content-Encoding: snappy",
        "--data-binary",
        &format!("@{}", body.display()),
    ];
    assert_eq!(
        curl(&format!("{base}/api/v1/write"), Some(&ca), &post),
        Some(204)
    );
    // A client that does not trust the CA refuses the server; plain HTTP gets no answer.
    assert_eq!(curl(&format!("{base}/healthz"), None, &[]), None);
    assert_eq!(http_get(port, "/healthz"), None);
    // A key that is not the certificate's is refused at start, with the reason.
    let out = std::process::Command::new(BIN)
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
        ])
        .arg(dir.join("ca.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("do not go together"), "{err}");
}
