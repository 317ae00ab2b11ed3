//! Helpers for the integration tests: the kanary binary as a child process, HTTP scraping,
//! Kafka producing/inspection against the real broker of `scripts/test.sh`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub const BIN: &str = env!("CARGO_BIN_EXE_kanary");

/// The broker `scripts/test.sh` started. Tests that need Kafka fail (never skip) without it.
pub fn brokers() -> String {
    std::env::var("KANARY_TEST_BROKERS").unwrap_or_else(|_| {
        panic!(
            "KANARY_TEST_BROKERS is not set: these tests need a real Kafka broker; \
             run scripts/test.sh, which starts one"
        )
    })
}

/// Repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A fresh directory for a test's files (logs, state), under target/test-output.
pub fn out_dir(test: &str) -> PathBuf {
    let d = repo().join("target/test-output").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A unique suffix for topic and group names, so reruns never see old data.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `count` microservices events (`kanary simulate`, seed `seed`): the JSONL text, and the
/// events as `(service, payload)` records.
pub fn simulated(count: usize, seed: u64) -> (String, Vec<(String, Vec<u8>)>) {
    let lines = kanary(&[
        "simulate",
        "--scenario",
        "microservices",
        "--count",
        &count.to_string(),
        "--seed",
        &seed.to_string(),
    ]);
    let records = lines
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["service"].as_str().unwrap().to_string(),
                l.as_bytes().to_vec(),
            )
        })
        .collect();
    (lines, records)
}

/// Runs kanary to completion; panics with its output on failure. Returns stdout.
pub fn kanary(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kanary");
    assert!(
        out.status.success(),
        "kanary {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `kanary detect` (or any long-running kanary) child, stopped on drop.
pub struct Service {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Service {
    pub fn start(args: &[String], port: u16, log: PathBuf) -> Service {
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env("KANARY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawn kanary");
        Service { child, port, log }
    }

    /// `kanary detect` for `model` on `topic`, with its own group, state and output topics
    /// unless given in `extra`.
    pub fn detect(
        model: &str,
        topic: &str,
        group: &str,
        state: &Path,
        log: PathBuf,
        extra: &[&str],
    ) -> Service {
        let port = free_port();
        let mut args: Vec<String> = [
            "detect",
            "--model",
            model,
            "--brokers",
            &brokers(),
            "--topic",
            topic,
            "--group",
            group,
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
            state.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Service::start(&args, port, log)
    }

    pub fn metrics(&self) -> Option<String> {
        http_get(self.port, "/metrics").map(|(_, body)| body)
    }

    pub fn status(&self, path: &str) -> Option<u16> {
        http_get(self.port, path).map(|(code, _)| code)
    }

    /// Sum of every sample of `name` whose labels contain all of `labels`.
    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.metrics().map(|m| sum_samples(&m, name, labels))
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait for exit; returns whether it exited successfully.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if let Some((st, _)) = self.wait_exit(timeout) {
            return st.success();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// Waits up to `timeout` for the process to exit: its status and how long that took.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some((st, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL: no chance to commit or clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.alive() {
            self.terminate(Duration::from_secs(20));
        }
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// A minimal HTTP/1.0 POST on loopback with extra header lines: (status, body).
pub fn http_post(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut head = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    // A server may answer (413) before it has read the whole body.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let buf = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Sum of the samples of metric `name` (exact name) whose label set contains `labels`.
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, lbl) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| lbl.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            total += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_every(Duration::from_millis(200), timeout, what, f)
}

/// [`wait_for`], calling `f` every `step`.
pub fn wait_for_every<T>(
    step: Duration,
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(step);
    }
}

pub fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap()
}

pub fn create_topic(topic: &str, partitions: i32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = admin()
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
        for x in r {
            x.unwrap();
        }
    });
}

pub fn producer() -> BaseProducer {
    producer_to(&brokers())
}

fn producer_to(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces `(key, payload)` records in order and waits for every delivery.
pub fn produce(topic: &str, records: &[(String, Vec<u8>)]) {
    produce_to(&brokers(), topic, records);
}

/// [`produce`] to the brokers at `bootstrap` (a mock cluster, say).
pub fn produce_to(bootstrap: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    let p = producer_to(bootstrap);
    for (k, v) in records {
        let mut rec = BaseRecord::to(topic).key(k.as_str()).payload(v.as_slice());
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// High watermark per partition. Right after a topic is created its partitions may have no
/// leader for a moment: errors are retried for up to 20 s.
pub fn end_offsets(topic: &str) -> HashMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("probe"))
        .create()
        .unwrap();
    let start = Instant::now();
    loop {
        let attempt = || -> rdkafka::error::KafkaResult<HashMap<i32, i64>> {
            let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let mut out = HashMap::new();
            for t in md.topics() {
                for p in t.partitions() {
                    let (_, hi) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                    out.insert(p.id(), hi);
                }
            }
            Ok(out)
        };
        match attempt() {
            Ok(out) => return out,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                eprintln!("end offsets of {topic}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => panic!("cannot read the end offsets of {topic}: {e}"),
        }
    }
}

/// Number of messages in a topic (sum of high watermarks; topics here are never truncated).
pub fn count_messages(topic: &str) -> i64 {
    end_offsets(topic).values().sum()
}

/// Committed offsets of `group` on `topic` (missing partitions: none committed).
pub fn committed(group: &str, topic: &str) -> HashMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in end_offsets(topic).keys() {
        tpl.add_partition(topic, *p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Every message of a topic with its headers, read from the beginning.
pub fn read_all(topic: &str, expected: usize) -> Vec<(Vec<u8>, HashMap<String, String>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    while out.len() < expected && start.elapsed() < Duration::from_secs(60) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for hd in h.iter() {
                    headers.insert(
                        hd.key.to_string(),
                        String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push((m.payload().unwrap_or_default().to_vec(), headers));
        }
    }
    out
}
