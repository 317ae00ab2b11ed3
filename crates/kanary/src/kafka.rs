//! Kafka set-up: client configuration with pass-through properties, topic creation, and
//! [`KafkaHealth`]: what librdkafka says about the brokers, logged once and kept for `/readyz`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

use crate::commands::Shutdown;
use crate::http::Readiness;

/// The same message is logged at most once per this interval; the next one says how many
/// were suppressed.
const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// What the Kafka clients of one process know about the brokers: whether one answers, the
/// last error, and the rate limit of repeated errors. Fed by librdkafka's error and
/// statistics callbacks ([`KafkaCtx`], and `detect`'s consumer context).
pub struct KafkaHealth {
    /// Where "a broker answers" is kept: `/readyz` reads it.
    readiness: Arc<Readiness>,
    last_error: Mutex<Option<String>>,
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl KafkaHealth {
    pub fn new(readiness: Arc<Readiness>) -> Self {
        KafkaHealth {
            readiness,
            last_error: Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// A broker connection is up (as of the last statistics or successful request).
    pub fn is_up(&self) -> bool {
        self.readiness.brokers_up.load(Ordering::Acquire)
    }

    pub fn set_up(&self, up: bool) {
        self.readiness.brokers_up.store(up, Ordering::Release);
    }

    /// The last error librdkafka reported, for messages that explain a failure.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    /// librdkafka's error callback: remembered, and logged unless the same error was logged
    /// within [`REPEAT_EVERY`]. "All brokers down" also marks the brokers unreachable at once.
    pub fn on_error(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.set_up(false);
        }
        let text = if reason.is_empty() || error.to_string().contains(reason) {
            error.to_string()
        } else {
            format!("{error}: {reason}")
        };
        {
            // "All brokers down" says less than the error before it (refused, TLS, SASL).
            let mut last = self.last_error.lock().unwrap();
            if code != Some(RDKafkaErrorCode::AllBrokersDown) || last.is_none() {
                *last = Some(text.clone());
            }
        }
        if let Some(suppressed) = self.should_log(error_key(code, reason)) {
            if suppressed > 0 {
                tracing::warn!(suppressed, "Kafka: {text}");
            } else {
                tracing::warn!("Kafka: {text}");
            }
        }
    }

    /// `Some(suppressed since the last time)` if a message keyed `key` may be logged now.
    fn should_log(&self, key: String) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap();
        let now = Instant::now();
        match seen.get_mut(&key) {
            Some((at, n)) if now.duration_since(*at) < REPEAT_EVERY => {
                *n += 1;
                None
            }
            Some((at, n)) => {
                let suppressed = *n;
                *at = now;
                *n = 0;
                Some(suppressed)
            }
            None => {
                seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }

    /// From librdkafka's statistics: up iff a broker connection is in state `UP`.
    pub fn on_stats(&self, stats: &Statistics) {
        let up = stats
            .brokers
            .values()
            .any(|b| b.source != "internal" && b.state == "UP");
        self.set_up(up);
    }
}

/// What makes two errors "the same" for the rate limit: the code and the reason without its
/// changing parts: counts, and the "(after 3ms in state CONNECT, 2 identical error(s)
/// suppressed)" librdkafka appends.
fn error_key(code: Option<RDKafkaErrorCode>, reason: &str) -> String {
    let stable = reason.split(" (").next().unwrap_or_default();
    format!(
        "{code:?} {}",
        stable.replace(|c: char| c.is_ascii_digit(), "")
    )
}

/// librdkafka's logs go to `tracing` at debug level (target `librdkafka`): what matters in
/// them also comes through the error callback, which [`KafkaHealth::on_error`] logs once.
pub fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
            tracing::error!(target: "librdkafka", "{fac} {message}")
        }
        _ => tracing::debug!(target: "librdkafka", "{fac} {message}"),
    }
}

/// Client context of kanary's producers and admin clients: errors into [`KafkaHealth`].
#[derive(Clone)]
pub struct KafkaCtx(pub Arc<KafkaHealth>);

impl ClientContext for KafkaCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.on_error(&error, reason);
    }

    fn stats(&self, _stats: Statistics) {}
}

/// A client configuration for `brokers` with every `key=value` of `opts` passed to librdkafka
/// as is (security.protocol, sasl.*, ssl.*, ...).
pub fn client_config(brokers: &str, opts: &[String]) -> Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for o in opts {
        let (k, v) = parse_opt(o)?;
        c.set(k, v);
    }
    Ok(c)
}

/// Splits `a=1,b=2` into `a=1`, `b=2`; a comma-separated piece without `=` continues the
/// previous value (`partition.assignment.strategy=range,roundrobin` stays whole).
pub fn split_opts(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in s.split(',') {
        match out.last_mut() {
            Some(prev) if !piece.contains('=') => {
                prev.push(',');
                prev.push_str(piece);
            }
            _ => out.push(piece.to_string()),
        }
    }
    out.retain(|o| !o.trim().is_empty());
    out
}

/// Splits `key=value`.
pub fn parse_opt(o: &str) -> Result<(&str, &str)> {
    match o.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v.trim())),
        _ => bail!(
            "invalid Kafka option `{o}`: expected key=value (e.g. security.protocol=SASL_SSL)"
        ),
    }
}

/// Waits at start until `fetch` (a metadata request of at most 1 s, run on a blocking
/// thread) succeeds: `Ok(true)`, and the brokers count as up. `Ok(false)` if `shutdown` came
/// first. After `timeout` (--startup-timeout), an error naming the last error librdkafka
/// reported. The wait is logged once.
pub async fn wait_for_brokers(
    health: &KafkaHealth,
    brokers: &str,
    timeout: Duration,
    shutdown: &Shutdown,
    fetch: impl Fn() -> Result<(), KafkaError> + Clone + Send + 'static,
) -> Result<bool> {
    let start = Instant::now();
    let mut told = false;
    loop {
        let answered = tokio::task::spawn_blocking(fetch.clone()).await?;
        match answered {
            Ok(()) => {
                health.set_up(true);
                if told {
                    tracing::info!(brokers, "a Kafka broker answered");
                }
                return Ok(true);
            }
            Err(e) => {
                let why = health.last_error().unwrap_or_else(|| e.to_string());
                if start.elapsed() >= timeout {
                    bail!(
                        "no Kafka broker answered at {brokers} within {:.0} s (--startup-timeout): {why}",
                        timeout.as_secs_f64()
                    );
                }
                if !told {
                    tracing::warn!(
                        brokers,
                        "waiting for a Kafka broker (giving up after {:.0} s): {why}",
                        timeout.as_secs_f64()
                    );
                    told = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return Ok(false),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Creates `topic` with `partitions` partitions (broker-default replication) unless it exists.
/// Returns whether it was created.
pub async fn ensure_topic<C: ClientContext + 'static>(
    base: &ClientConfig,
    ctx: C,
    topic: &str,
    partitions: i32,
) -> Result<bool> {
    let admin: AdminClient<C> = base
        .create_with_context(ctx)
        .context("cannot create Kafka admin client")?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(-1),
            )],
            &opts,
        )
        .await
        .with_context(|| format!("cannot create topic `{topic}`"))?;
    // One topic was asked for: one result.
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(false),
        Some(Err((t, e))) => bail!("cannot create topic `{t}`: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_error_is_logged_once_a_minute_and_all_brokers_down_marks_them_unreachable() {
        let readiness = Arc::new(Readiness::default());
        let h = KafkaHealth::new(readiness.clone());
        h.set_up(true);
        let refused = |n: u32| {
            format!(
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused \
                 (after 0ms in state CONNECT, {n} identical error(s) suppressed)"
            )
        };
        let transport = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        h.on_error(&transport, &refused(0));
        let again = error_key(transport.rdkafka_error_code(), &refused(1));
        assert_eq!(h.should_log(again), None, "same error, other count");
        assert!(h.is_up());
        h.on_error(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert!(!h.is_up());
        assert!(!readiness.brokers_up.load(Ordering::Acquire));
        // The more telling error is kept for messages.
        assert!(h.last_error().unwrap().contains("Connection refused"));
    }

    #[test]
    fn options_pass_through() {
        let c = client_config(
            "b:9092",
            &[
                "security.protocol=SASL_SSL".into(),
                "sasl.mechanism = PLAIN".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.mechanism"), Some("PLAIN"));
        assert!(client_config("b", &["nonsense".into()]).is_err());
        assert_eq!(
            split_opts("security.protocol=SASL_SSL,partition.assignment.strategy=range,roundrobin"),
            [
                "security.protocol=SASL_SSL",
                "partition.assignment.strategy=range,roundrobin"
            ]
        );
        assert_eq!(split_opts("a=1"), ["a=1"]);
        assert!(client_config("b", &["=x".into()]).is_err());
    }
}
