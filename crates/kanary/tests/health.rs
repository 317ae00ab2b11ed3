//! `kanary detect` when things around it go wrong: no broker at start, a broker that goes
//! away (librdkafka's mock cluster, for fault injection), slow or idle HTTP clients, a corrupt
//! state file, a taken port. None of these needs the real broker.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::mocking::MockCluster;

/// A port nothing listens on (1 needs root to bind, and nothing here does).
const NO_BROKER: &str = "127.0.0.1:1";

fn detect_at(brokers: &str, dir: &Path, extra: &[&str]) -> Service {
    let port = free_port();
    let mut args: Vec<String> = [
        "detect",
        "--brokers",
        brokers,
        "--topic",
        "health-metrics",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--state-dir",
        dir.join("state").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Service::start(&args, port, dir.join("detect.log"))
}

#[test]
fn no_broker_at_start_health_answers_at_once_and_the_process_gives_up_after_the_timeout() {
    let dir = out_dir("health-no-broker");
    let started = Instant::now();
    let mut d = detect_at(NO_BROKER, &dir, &["--startup-timeout", "3"]);
    let healthy = wait_for(Duration::from_secs(1), "/healthz within 1 s", || {
        d.status("/healthz")
    });
    assert_eq!(healthy, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let (code, body) = http_get(d.port, "/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("no Kafka broker reachable"), "{body}");
    let (status, _) = d
        .wait_exit(Duration::from_secs(8))
        .expect("exit after the timeout");
    assert!(!status.success());
    assert!(started.elapsed() >= Duration::from_secs(3));
    let log = d.log_text();
    assert!(
        log.contains("no Kafka broker answered at 127.0.0.1:1 within 3 s")
            && log.contains("Connection refused"),
        "{log}"
    );
    // Said once, not once per reconnect attempt.
    let refused = log.matches("Connection refused").count();
    assert!(refused <= 3, "{refused} lines about it:\n{log}");
}

#[test]
fn a_taken_port_is_reported_before_any_kafka_setup() {
    let dir = out_dir("health-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let args: Vec<String> = [
        "detect",
        "--brokers",
        NO_BROKER,
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--state-dir",
        dir.join("state").to_str().unwrap(),
        "--startup-timeout",
        "30",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut d = Service::start(&args, port, dir.join("detect.log"));
    let (status, after) = d.wait_exit(Duration::from_secs(5)).expect("exits at once");
    assert!(!status.success());
    assert!(after < Duration::from_secs(2), "{after:?}");
    assert!(
        d.log_text().contains("cannot listen on"),
        "{}",
        d.log_text()
    );
}

#[test]
fn http_closes_half_sent_and_idle_connections_and_caps_how_many_it_serves() {
    let dir = out_dir("health-http");
    let d = detect_at(
        NO_BROKER,
        &dir,
        &[
            "--startup-timeout",
            "60",
            "--http-timeout",
            "1",
            "--http-max-connections",
            "4",
        ],
    );
    wait_for(Duration::from_secs(5), "/healthz", || d.status("/healthz"));
    // Four clients that start a request and never finish it, and one that sends nothing.
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Every slot is taken: a fifth client is not served until the timeout frees one.
    let asked = Instant::now();
    let (code, _) = http_get(d.port, "/healthz").unwrap();
    assert_eq!(code, 200);
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "the fifth request waited {waited:?}"
    );
    // The half-sent requests were closed by the server.
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || text.starts_with("HTTP/1.1 408"),
            "held connection answered: {text}"
        );
    }
    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = idle.read_to_end(&mut buf);
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "idle connection kept {:?}",
        start.elapsed()
    );
}

#[test]
fn a_corrupt_state_file_is_moved_aside_and_does_not_block_start_up() {
    let dir = out_dir("health-corrupt");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("codev.kanary"), b"not a model file at all").unwrap();
    let d = detect_at(NO_BROKER, &dir, &["--startup-timeout", "30"]);
    wait_for(Duration::from_secs(5), "the file moved aside", || {
        std::fs::read_dir(&state)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("codev.kanary.corrupt-")
            })
    });
    assert!(!state.join("codev.kanary").exists());
    assert_eq!(d.status("/healthz"), Some(200));
    let log = d.log_text();
    assert!(log.contains("state file unreadable"), "{log}");
}

/// A mock broker with `topic` holding `events` microservices events.
fn mock_with_events(
    topic: &str,
    events: usize,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(topic, 2, 1).unwrap();
    let (_, records) = simulated(events, 3);
    produce_to(&cluster.bootstrap_servers(), topic, &records);
    cluster
}

#[test]
fn broker_gone_readyz_turns_false_at_once_and_sigterm_still_exits_in_10_s() {
    let dir = out_dir("health-broker-gone");
    let cluster = mock_with_events("health-metrics", 20_000);
    let mut d = detect_at(
        &cluster.bootstrap_servers(),
        &dir,
        &["--model", "zscore", "--train", "200"],
    );
    wait_for(Duration::from_secs(60), "ready", || {
        (d.status("/readyz")? == 200).then_some(())
    });
    wait_for(Duration::from_secs(60), "every event processed", || {
        (d.sample("detector_events_total", &[])? >= 20_000.0).then_some(())
    });
    cluster.broker_down(1).unwrap();
    let down = Instant::now();
    wait_for(
        Duration::from_secs(3),
        "/readyz 503 after the broker went",
        || (d.status("/readyz")? == 503).then_some(()),
    );
    assert!(down.elapsed() < Duration::from_secs(3));
    assert_eq!(d.status("/healthz"), Some(200));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status();
    let (_, took) = d
        .wait_exit(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}:\n{}",
        d.log_text()
    );
}
