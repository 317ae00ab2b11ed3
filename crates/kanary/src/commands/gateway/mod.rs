//! `kanary gateway`: Prometheus remote write and OTLP/HTTP metrics in, kanary events out to
//! Kafka (docs/telemetry.md).
//!
//! A write request is answered 2xx only after Kafka has acknowledged every event made from
//! it; while Kafka is unreachable it gets 503, so the writer (Prometheus, an OpenTelemetry
//! exporter) retries and nothing is lost. A body that cannot be used gets 4xx with the
//! reason, and nothing of it is produced.

mod backfill;
mod series;
mod wire;

pub use backfill::parse_duration;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use prost::Message as _;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use regex::RegexSet;

use crate::cli::GatewayArgs;
use crate::commands::{self, Shutdown};
use crate::http::{Limits, Readiness};
use crate::kafka::{self, KafkaHealth};
use crate::telemetry::{Endpoint, EndpointCode, EndpointReason, GatewayMetrics, Reason};
use series::{Config, Converter, Drops, Outgoing};
use wire::Reject;

/// Producer context: errors and broker states into [`KafkaHealth`] (for `/readyz` and the
/// fast 503 while Kafka is down).
#[derive(Clone)]
struct Ctx(Arc<KafkaHealth>);

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        kafka::log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.on_error(&error, reason);
    }

    fn stats(&self, stats: Statistics) {
        self.0.on_stats(&stats);
    }
}

/// Who may write: none configured lets everyone in.
#[derive(Default)]
struct Auth {
    /// `Authorization` header values accepted (`Bearer <token>`, `Basic <base64>`).
    accepted: Vec<String>,
}

impl Auth {
    fn load(token: Option<&Path>, basic: Option<&Path>) -> Result<Auth> {
        let mut accepted = Vec::new();
        if let Some(p) = token {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read --auth-token-file {}", p.display()))?;
            let t = t.trim();
            if t.is_empty() {
                bail!("--auth-token-file {} is empty", p.display());
            }
            accepted.push(format!("Bearer {t}"));
        }
        if let Some(p) = basic {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read --basic-auth-file {}", p.display()))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if !line.contains(':') {
                    bail!(
                        "--basic-auth-file {} line {}: expected user:password",
                        p.display(),
                        i + 1
                    );
                }
                let b64 = base64::engine::general_purpose::STANDARD.encode(line);
                accepted.push(format!("Basic {b64}"));
            }
            if accepted.is_empty() {
                bail!(
                    "--basic-auth-file {} has no user:password line",
                    p.display()
                );
            }
        }
        Ok(Auth { accepted })
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        if self.accepted.is_empty() {
            return true;
        }
        let Some(got) = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes().trim_ascii())
        else {
            return false;
        };
        // Every candidate is compared in full, in time independent of where they differ.
        self.accepted
            .iter()
            .fold(false, |ok, a| ok | same(a.as_bytes(), got))
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

struct Gateway {
    converter: Mutex<Converter>,
    producer: FutureProducer<Ctx>,
    topic: String,
    auth: Auth,
    max_body: usize,
    delivery_timeout: Duration,
    metrics: Arc<GatewayMetrics>,
    readiness: Arc<Readiness>,
    health: Arc<KafkaHealth>,
    /// The topic exists, a broker answered once and the backfill is over.
    started: AtomicBool,
    backfilling: AtomicBool,
    stopping: AtomicBool,
    inflight: AtomicUsize,
}

pub fn run(args: GatewayArgs) -> Result<()> {
    let rt = commands::runtime()?;
    let result = rt.block_on(serve(args));
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

fn regexes(list: &[String], flag: &str) -> Result<Option<RegexSet>> {
    if list.is_empty() {
        return Ok(None);
    }
    RegexSet::new(list)
        .map(Some)
        .with_context(|| format!("invalid {flag} regex"))
}

fn seconds(v: f64, flag: &str) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{flag} must be a positive number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

async fn serve(a: GatewayArgs) -> Result<()> {
    let entity_labels: Vec<String> = a
        .entity_labels
        .iter()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if entity_labels.is_empty() {
        bail!("--entity-labels needs at least one label name");
    }
    let cfg = Config {
        entity_labels,
        include: regexes(&a.include, "--include")?,
        exclude: regexes(&a.exclude, "--exclude")?,
        max_series: a.max_series,
        max_entity_features: a.max_entity_features,
        stale_ms: (seconds(a.stale_after, "--stale-after")?.as_millis() as i64).max(1),
        ..Config::default()
    };
    let auth = Auth::load(a.auth_token_file.as_deref(), a.basic_auth_file.as_deref())?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(crate::http::tls_config(c, k)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let delivery_timeout = seconds(a.delivery_timeout, "--delivery-timeout")?;
    let startup_timeout = seconds(a.startup_timeout, "--startup-timeout")?;
    let limits = Limits {
        timeout: seconds(a.http_timeout, "--http-timeout")?,
        max_connections: a.http_max_connections,
    };
    let opts: Vec<String> = a
        .kafka_opts
        .iter()
        .flat_map(|o| kafka::split_opts(o))
        .collect();
    let base = kafka::client_config(&a.brokers, &opts)?;
    let readiness = Arc::new(Readiness::default());
    let health = Arc::new(KafkaHealth::new(readiness.clone()));
    let mut pc = base.clone();
    for (k, v) in [
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
        ("statistics.interval.ms", "1000"),
        (
            "message.timeout.ms",
            &delivery_timeout.as_millis().to_string(),
        ),
    ] {
        // Flags win over --kafka-opt only where kanary's guarantees depend on them: the
        // delivery deadline, and the statistics that tell a broker is back.
        if matches!(k, "message.timeout.ms" | "statistics.interval.ms") || pc.get(k).is_none() {
            pc.set(k, v);
        }
    }
    let producer: FutureProducer<Ctx> = pc
        .create_with_context(Ctx(health.clone()))
        .context("cannot create Kafka producer")?;
    let metrics = GatewayMetrics::new();
    let gw = Arc::new(Gateway {
        converter: Mutex::new(Converter::new(cfg)),
        producer,
        topic: a.topic.clone(),
        auth,
        max_body: a.max_body.min(usize::MAX as u64) as usize,
        delivery_timeout,
        metrics,
        readiness,
        health: health.clone(),
        started: AtomicBool::new(false),
        backfilling: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        inflight: AtomicUsize::new(0),
    });

    // HTTP first: probes answer (and a taken port fails) before Kafka is contacted.
    let http_stop = Shutdown::new();
    let wait = http_stop.clone();
    let (addr, http_task) =
        crate::http::serve_router(a.listen, router(gw.clone()), limits, tls, async move {
            wait.wait().await
        })
        .await?;
    tracing::info!(%addr, scheme, topic = %a.topic, "gateway listening: POST /api/v1/write (remote write), POST /v1/metrics (OTLP); /metrics /healthz /readyz");
    let shutdown = Shutdown::new();
    shutdown.on_signal("shutting down: answering in-flight requests");

    let result = async {
        let fetch = {
            let g = gw.clone();
            move || {
                g.producer
                    .client()
                    .fetch_metadata(None, Duration::from_secs(1))
                    .map(|_| ())
            }
        };
        if !kafka::wait_for_brokers(&health, &a.brokers, startup_timeout, &shutdown, fetch)
            .await?
        {
            return Ok(());
        }
        // Created only if missing: a writer without the right to create topics still works.
        let g = gw.clone();
        let exists = tokio::task::spawn_blocking(move || {
            g.producer
                .client()
                .fetch_metadata(Some(&g.topic), Duration::from_secs(5))
                .map(|m| {
                    m.topics()
                        .first()
                        .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty())
                })
                .unwrap_or(false)
        })
        .await?;
        if !exists
            && kafka::ensure_topic(&base, Ctx(health.clone()), &a.topic, a.partitions).await?
        {
            tracing::info!(topic = %a.topic, partitions = a.partitions, "created topic");
        }
        if let Some(from) = &a.backfill_from {
            gw.backfilling.store(true, Ordering::Release);
            let selector = a
                .backfill_match
                .clone()
                .unwrap_or_else(|| backfill::selector(&a.include));
            let done = run_backfill(&gw, from, &selector, a.backfill_range, a.backfill_step, &shutdown).await;
            gw.backfilling.store(false, Ordering::Release);
            match done {
                Ok((events, secs)) => tracing::info!(
                    from = %from, events, "backfilled {:.0} s of history in {secs:.1} s", a.backfill_range
                ),
                // The live path does not depend on it: go on without (or with part of) it.
                Err(e) => tracing::error!(from = %from, "backfill failed, going on without it: {e:#}"),
            }
        }
        gw.started.store(true, Ordering::Release);
        // Entities gone quiet are forgotten (their features count against --max-series).
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tick.tick() => {
                    let mut c = gw.converter.lock().unwrap();
                    c.sweep(now_ms());
                    gw.metrics.series.set(c.series() as i64);
                    gw.metrics.entities.set(c.entities() as i64);
                }
            }
        }
        Ok(())
    }
    .await;
    // New writes get 503 from here on; those in flight get their answer.
    gw.stopping.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(6);
    while gw.inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    http_stop.trigger();
    let _ = http_task.await;
    result
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// GET `url` and its body, within 60 s; an answer other than 200 is an error with its body.
async fn http_get(url: &str) -> Result<Bytes> {
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let uri: hyper::Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--backfill-from must be an http:// URL (got {url})");
    }
    let client: Client<_, http_body_util::Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(Duration::from_secs(60), async {
        let r = client.get(uri).await?;
        let status = r.status();
        let body = r.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    })
    .await
    .with_context(|| format!("no answer from {url} within 60 s"))??;
    let (status, body) = response;
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&body);
        bail!(
            "{url} answered {status}: {}",
            text.chars().take(300).collect::<String>()
        );
    }
    Ok(body)
}

/// Reads `range` seconds of history up to now from Prometheus at `base`, `step` apart, in
/// time order, and produces its events. Returns the events produced and the time it took.
async fn run_backfill(
    gw: &Arc<Gateway>,
    base: &str,
    selector: &str,
    range: f64,
    step: f64,
    shutdown: &Shutdown,
) -> Result<(u64, f64)> {
    let started = Instant::now();
    let meta = http_get(&backfill::url(base, "/api/v1/metadata", &[])).await?;
    let families = backfill::parse_metadata(&meta).map_err(|e| anyhow::anyhow!("{base}: {e}"))?;
    {
        let mut c = gw.converter.lock().unwrap();
        for (f, k) in &families {
            c.set_family(f, *k);
        }
    }
    let step_ms = ((step * 1000.0).round() as i64).max(1);
    let end = now_ms() / step_ms * step_ms;
    let mut from = end - (range * 1000.0) as i64;
    let mut produced = 0u64;
    tracing::info!(base, selector, range, step, "backfilling");
    while from <= end && !shutdown.is_triggered() {
        let to = (from + step_ms * (backfill::POINTS_PER_QUERY - 1)).min(end);
        let secs = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);
        let url = backfill::url(
            base,
            "/api/v1/query_range",
            &[
                ("query", selector.to_string()),
                ("start", secs(from)),
                ("end", secs(to)),
                ("step", format!("{step}")),
            ],
        );
        let body = http_get(&url).await?;
        let input = backfill::parse_matrix(&body).map_err(|e| anyhow::anyhow!("{base}: {e}"))?;
        let mut drops = Drops::default();
        let events = gw.converter.lock().unwrap().ingest(input, &mut drops);
        count_drops(gw, &drops);
        let (n, failed) = deliver(gw, events).await;
        produced += n;
        if let Some(e) = failed {
            bail!("Kafka did not acknowledge backfilled events: {e}");
        }
        from = to + step_ms;
    }
    Ok((produced, started.elapsed().as_secs_f64()))
}

fn count_drops(gw: &Gateway, drops: &Drops) {
    for (reason, n) in &drops.0 {
        gw.metrics
            .dropped
            .get_or_create_owned(&Reason {
                reason: reason.to_string(),
            })
            .inc_by(*n);
    }
}

fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/api/v1/write", post(remote_write))
        .route("/v1/metrics", post(otlp))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Bodies are read with --max-body by the handlers themselves (to count refusals).
        .layer(DefaultBodyLimit::disable())
        .with_state(gw)
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    {
        let c = gw.converter.lock().unwrap();
        gw.metrics.series.set(c.series() as i64);
        gw.metrics.entities.set(c.entities() as i64);
    }
    (
        [(header::CONTENT_TYPE, crate::telemetry::CONTENT_TYPE)],
        gw.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.readiness.failed.get() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

fn not_ready(gw: &Gateway) -> Option<&'static str> {
    if gw.stopping.load(Ordering::Acquire) {
        Some("shutting down")
    } else if !gw.health.is_up() {
        Some("no Kafka broker reachable")
    } else if gw.backfilling.load(Ordering::Acquire) {
        Some("backfilling from Prometheus")
    } else if !gw.started.load(Ordering::Acquire) {
        Some("starting: creating the topic")
    } else {
        None
    }
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    match not_ready(&gw) {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// A refusal: status, reason label, message.
struct Refusal(StatusCode, &'static str, String);

impl Refusal {
    fn from_reject(r: Reject, limit: usize) -> Refusal {
        let status = match r {
            Reject::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        Refusal(status, r.reason(), r.message(limit))
    }
}

/// What a write endpoint does with a body: decode it into series (and remote-write metadata).
type Decoded = (Vec<series::SeriesIn>, Vec<(String, series::Kind)>, Drops);

/// The common path of both endpoints: auth, body, decode, convert, produce, answer.
async fn write(
    gw: &Arc<Gateway>,
    endpoint: &'static str,
    headers: &HeaderMap,
    body: Body,
    decode: impl FnOnce(&[u8], &HeaderMap, usize) -> Result<Decoded, Reject>,
) -> Result<u64, Refusal> {
    if !gw.auth.allows(headers) {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong credentials (Authorization header)".into(),
        ));
    }
    if gw.stopping.load(Ordering::Acquire) {
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the gateway is shutting down; retry".into(),
        ));
    }
    let bytes: Bytes = axum::body::to_bytes(body, gw.max_body).await.map_err(|e| {
        // axum says so only in the text of the error (or of its source).
        let too_large = e.to_string().contains("length limit")
            || std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"));
        if too_large {
            Refusal::from_reject(Reject::TooLarge(gw.max_body + 1), gw.max_body)
        } else {
            Refusal(
                StatusCode::BAD_REQUEST,
                "corrupt_body",
                format!("cannot read the body: {e}"),
            )
        }
    })?;
    let (input, families, mut drops) =
        decode(&bytes, headers, gw.max_body).map_err(|r| Refusal::from_reject(r, gw.max_body))?;
    if !gw.started.load(Ordering::Acquire) {
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "the gateway is not ready yet ({}); retry",
                not_ready(gw).unwrap_or("starting")
            ),
        ));
    }
    if !gw.health.is_up() {
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            format!(
                "Kafka is unavailable ({}); retry",
                gw.health
                    .last_error()
                    .unwrap_or_else(|| "no broker answered yet".into())
            ),
        ));
    }
    let samples: u64 = input.iter().map(|s| s.samples.len() as u64).sum();
    gw.metrics
        .samples
        .get_or_create_owned(&Endpoint {
            endpoint: endpoint.into(),
        })
        .inc_by(samples);
    let events = {
        let mut c = gw.converter.lock().unwrap();
        for (family, kind) in &families {
            c.set_family(family, *kind);
        }
        c.ingest(input, &mut drops)
    };
    count_drops(gw, &drops);
    let total = events.len() as u64;
    let (delivered, failed) = deliver(gw, events).await;
    if let Some(e) = failed {
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "delivery_failed",
            format!(
                "Kafka did not acknowledge {} of {total} events: {e}; retry",
                total - delivered
            ),
        ));
    }
    if let Some(n) = drops.0.get(series::AWAITING_ACK) {
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            series::AWAITING_ACK,
            format!(
                "{n} samples belong to events that an earlier request sent and that Kafka has \
                 not yet acknowledged or refused; retry"
            ),
        ));
    }
    Ok(drops.rejected())
}

/// How long past `--delivery-timeout` a request waits for librdkafka's own verdict (its
/// timeout scan runs once a second) before it answers 503 by itself.
const DELIVERY_GRACE: Duration = Duration::from_secs(1);

/// Produces `events` and records in the converter what became of each: returns how many
/// Kafka acknowledged and the first error. An event still without an answer at the deadline
/// (librdkafka can hold one that was on the wire when its broker went away well past
/// `message.timeout.ms`) counts as not acknowledged and is marked unsettled; its answer,
/// when it comes, is recorded in the background.
async fn deliver(gw: &Arc<Gateway>, events: Vec<Outgoing>) -> (u64, Option<String>) {
    let (acks, mut first_err) = produce(gw, &events).await;
    let mut late = Vec::new();
    let mut delivered = 0;
    {
        let mut c = gw.converter.lock().unwrap();
        for (ev, ack) in events.into_iter().zip(acks) {
            match ack {
                Ack::Yes => {
                    c.settle(&ev, true);
                    delivered += 1;
                }
                Ack::No => c.settle(&ev, false),
                Ack::Pending(f) => {
                    c.unsettle(&ev);
                    late.push((ev, f));
                }
            }
        }
    }
    gw.metrics.events.inc_by(delivered);
    if !late.is_empty() {
        first_err.get_or_insert_with(|| {
            format!(
                "no answer from Kafka within --delivery-timeout ({:?})",
                gw.delivery_timeout
            )
        });
        let gw = gw.clone();
        tokio::spawn(async move {
            for (ev, f) in late {
                let ok = matches!(f.await, Ok(Ok(_)));
                gw.converter.lock().unwrap().settle(&ev, ok);
                if ok {
                    gw.metrics.events.inc();
                }
            }
        });
    }
    (delivered, first_err)
}

/// What became of one produced event by the request's deadline.
enum Ack {
    Yes,
    No,
    Pending(DeliveryFuture),
}

/// Produces every event; returns what became of each by the deadline and the first error.
async fn produce(gw: &Gateway, events: &[Outgoing]) -> (Vec<Ack>, Option<String>) {
    let deadline = Instant::now() + gw.delivery_timeout;
    let mut pending = Vec::with_capacity(events.len());
    let mut first_err: Option<String> = None;
    for ev in events {
        let mut record = FutureRecord::to(&gw.topic)
            .key(ev.entity.as_str())
            .payload(ev.payload.as_bytes());
        loop {
            match gw.producer.send_result(record) {
                Ok(f) => {
                    pending.push(Some(f));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if Instant::now() < deadline =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    first_err.get_or_insert_with(|| e.to_string());
                    pending.push(None);
                    break;
                }
            }
        }
    }
    let wait_until = tokio::time::Instant::from_std(deadline + DELIVERY_GRACE);
    let mut acks = Vec::with_capacity(events.len());
    for f in pending {
        let ack = match f {
            None => Ack::No,
            Some(mut f) => match tokio::time::timeout_at(wait_until, &mut f).await {
                Ok(Ok(Ok(_))) => Ack::Yes,
                Ok(Ok(Err((e, _)))) => {
                    first_err.get_or_insert_with(|| e.to_string());
                    Ack::No
                }
                Ok(Err(_)) => {
                    first_err.get_or_insert_with(|| "producer closed".into());
                    Ack::No
                }
                Err(_) => Ack::Pending(f),
            },
        };
        acks.push(ack);
    }
    (acks, first_err)
}

/// Counts and times one answered request.
fn answer(
    gw: &Gateway,
    endpoint: &'static str,
    started: Instant,
    result: Result<Response, Refusal>,
) -> Response {
    let response = match result {
        Ok(r) => r,
        Err(Refusal(status, reason, message)) => {
            gw.metrics
                .rejected
                .get_or_create_owned(&EndpointReason {
                    endpoint: endpoint.into(),
                    reason: reason.into(),
                })
                .inc();
            if status.is_server_error() {
                tracing::debug!(endpoint, reason, "{message}");
            } else {
                tracing::debug!(endpoint, reason, "refused: {message}");
            }
            let mut r = (status, format!("{message}\n")).into_response();
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer, Basic realm=\"kanary\""),
                );
            }
            r
        }
    };
    gw.metrics
        .requests
        .get_or_create_owned(&EndpointCode {
            endpoint: endpoint.into(),
            code: response.status().as_u16().to_string(),
        })
        .inc();
    gw.metrics
        .duration
        .get_or_create_owned(&Endpoint {
            endpoint: endpoint.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Counts a request in flight for the shutdown to wait on.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn remote_write(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let _inflight = InFlight::new(&gw.inflight);
    let result = write(
        &gw,
        "remote_write",
        &headers,
        body,
        |bytes, headers, limit| {
            // Remote write 2.0 says so in its content type and version header; its messages
            // would decode as an empty 1.0 request.
            let version = header_text(
                headers,
                header::HeaderName::from_static("x-prometheus-remote-write-version"),
            );
            let content_type = header_text(headers, header::CONTENT_TYPE);
            if version.starts_with("2.") || content_type.contains("io.prometheus.write.v2") {
                return Err(Reject::Unsupported(format!(
                    "remote write {} is not supported: send remote write 1.0 (Prometheus' \
                     default, protobuf_message: prometheus.WriteRequest)",
                    if version.is_empty() {
                        "2.0"
                    } else {
                        version.as_str()
                    }
                )));
            }
            let encoding = header_text(headers, header::CONTENT_ENCODING);
            if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("snappy") {
                return Err(Reject::Unsupported(format!(
                    "Content-Encoding `{encoding}`: remote write bodies are snappy-compressed"
                )));
            }
            let req = wire::decode_remote_write(bytes, limit)?;
            let families = wire::family_types(&req);
            let mut drops = Drops::default();
            let series = wire::remote_write_series(req, &mut drops);
            Ok((series, families, drops))
        },
    )
    .await
    .map(|_| StatusCode::NO_CONTENT.into_response());
    answer(&gw, "remote_write", started, result)
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_string()
}

async fn otlp(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let _inflight = InFlight::new(&gw.inflight);
    let content_type = header_text(&headers, header::CONTENT_TYPE);
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = mime == "application/json";
    let result = write(&gw, "otlp", &headers, body, |bytes, headers, limit| {
        if !json && mime != "application/x-protobuf" {
            return Err(Reject::Unsupported(format!(
                "Content-Type `{content_type}`: OTLP/HTTP is application/x-protobuf or application/json"
            )));
        }
        let encoding = header_text(headers, header::CONTENT_ENCODING);
        let plain;
        let bytes = match encoding.to_ascii_lowercase().as_str() {
            "" | "identity" => bytes,
            "gzip" => {
                plain = gunzip(bytes, limit)?;
                &plain[..]
            }
            other => {
                return Err(Reject::Unsupported(format!(
                    "Content-Encoding `{other}`: gzip or none"
                )));
            }
        };
        let req = wire::decode_otlp(bytes, json)?;
        let mut drops = Drops::default();
        let series = wire::otlp_series(req, &mut drops);
        Ok((series, Vec::new(), drops))
    })
    .await
    .map(|rejected| otlp_response(json, rejected));
    answer(&gw, "otlp", started, result)
}

fn gunzip(bytes: &[u8], limit: usize) -> Result<Vec<u8>, Reject> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Reject::Corrupt(format!("gzip: {e}")))?;
    if out.len() > limit {
        return Err(Reject::TooLarge(out.len()));
    }
    Ok(out)
}

/// OTLP's success answer, in the request's encoding, with the data points not used as a
/// partial success.
fn otlp_response(json: bool, rejected: u64) -> Response {
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
    };
    let resp = ExportMetricsServiceResponse {
        partial_success: (rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: rejected as i64,
            error_message: "data points dropped by the gateway's limits or rules; see \
                            gateway_samples_dropped_total"
                .into(),
        }),
    };
    if json {
        let body = match resp.partial_success {
            // The serializer would write `"partialSuccess":null`.
            None => b"{}".to_vec(),
            Some(_) => serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec()),
        };
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            resp.encode_to_vec(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_and_basic_credentials_are_checked_exactly() {
        let dir = std::env::temp_dir().join(format!("kanary-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        let users = dir.join("users");
        std::fs::write(&token, "s3cret\n").unwrap();
        std::fs::write(&users, "# writers\nprom:pa:ss\n").unwrap();
        let auth = Auth::load(Some(&token), Some(&users)).unwrap();
        assert!(auth.allows(&headers(Some("Bearer s3cret"))));
        // prom:pa:ss in base64: the password may hold a colon.
        assert!(auth.allows(&headers(Some("Basic cHJvbTpwYTpzcw=="))));
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic cHJvbTpwYQ=="),
        ] {
            assert!(!auth.allows(&headers(bad)), "{bad:?} let in");
        }
        assert!(Auth::default().allows(&headers(None)));
        std::fs::write(&token, " \n").unwrap();
        assert!(Auth::load(Some(&token), None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
