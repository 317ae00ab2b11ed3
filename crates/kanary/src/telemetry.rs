//! Every Prometheus metric kanary exports, in one place (documented in docs/metrics.md).
//!
//! Names are the thesis' where it had one (`detector_latency_seconds`,
//! `detector_throughput_mps`, `detector_anomalies_total`, `detector_true_positives_total`,
//! `detector_false_positives_total`, `detector_reconstruction_error`), so its dashboards carry
//! over. Every series carries the `model` label. Counters are registered without `_total`;
//! the client library appends it.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use kanary_core::event::EventError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Metric names (without the `_total` suffix the client adds to counters).
pub mod names {
    pub const LATENCY: &str = "detector_latency_seconds";
    pub const THROUGHPUT: &str = "detector_throughput_mps";
    pub const ANOMALIES: &str = "detector_anomalies";
    pub const TRUE_POSITIVES: &str = "detector_true_positives";
    pub const FALSE_POSITIVES: &str = "detector_false_positives";
    pub const FALSE_NEGATIVES: &str = "detector_false_negatives";
    pub const TRUE_NEGATIVES: &str = "detector_true_negatives";
    pub const RECONSTRUCTION_ERROR: &str = "detector_reconstruction_error";
    pub const EVENTS: &str = "detector_events";
    pub const INVALID: &str = "detector_invalid_events";
    pub const EVENT_LATENCY: &str = "detector_event_latency_seconds";
    pub const SCORE: &str = "detector_score";
    pub const THRESHOLD: &str = "detector_threshold";
    pub const PRECISION: &str = "detector_precision";
    pub const RECALL: &str = "detector_recall";
    pub const F1: &str = "detector_f1";
    pub const CONSUMER_LAG: &str = "detector_consumer_lag";
    pub const MODEL_INFO: &str = "detector_model_info";
    pub const SERVICES: &str = "detector_services";
    pub const SERVICES_EVICTED: &str = "detector_services_evicted";
    pub const SERVICES_RESTORED: &str = "detector_services_restored";
    pub const WARMUPS_DROPPED: &str = "detector_service_warmups_dropped";
    pub const SERVICE_SCORE: &str = "detector_service_score";
    pub const SERVICE_ANOMALOUS: &str = "detector_service_anomalous";
    // `kanary gateway`
    pub const GW_REQUESTS: &str = "gateway_requests";
    pub const GW_REJECTED: &str = "gateway_rejected_requests";
    pub const GW_SAMPLES: &str = "gateway_samples";
    pub const GW_DROPPED: &str = "gateway_samples_dropped";
    pub const GW_EVENTS: &str = "gateway_events";
    pub const GW_SERIES: &str = "gateway_series";
    pub const GW_ENTITIES: &str = "gateway_entities";
    pub const GW_DURATION: &str = "gateway_request_duration_seconds";
}

/// The `service` label value of services beyond `--max-service-series` (their events and
/// anomalies are counted under it; per-service gauges are not kept for them).
pub const OTHER_SERVICES: &str = "_other";

/// Buckets of `detector_event_latency_seconds`: 1 ms to ~65 s.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0,
];

/// Buckets of `detector_score`: fine over (0, 1], where Isolation Forest scores live, and wide
/// above, where reconstruction errors and z-scores go.
pub const SCORE_BUCKETS: [f64; 24] = [
    0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0, 1.5, 2.0,
    3.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelService {
    pub model: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelReason {
    pub model: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelPartition {
    pub model: String,
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelInfo {
    pub model: String,
    pub version: String,
    pub trained_at: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// The registry and every metric family.
pub struct Metrics {
    pub registry: Registry,
    pub latency: Family<ModelLabel, FGauge>,
    pub throughput: Family<ModelLabel, FGauge>,
    pub anomalies: Family<ModelService, Counter>,
    pub true_positives: Family<ModelLabel, Counter>,
    pub false_positives: Family<ModelLabel, Counter>,
    pub false_negatives: Family<ModelLabel, Counter>,
    pub true_negatives: Family<ModelLabel, Counter>,
    pub reconstruction_error: Family<ModelService, FGauge>,
    pub events: Family<ModelService, Counter>,
    pub invalid: Family<ModelReason, Counter>,
    pub event_latency: Family<ModelLabel, Histogram, fn() -> Histogram>,
    pub score: Family<ModelLabel, Histogram, fn() -> Histogram>,
    pub threshold: Family<ModelService, FGauge>,
    pub precision: Family<ModelLabel, FGauge>,
    pub recall: Family<ModelLabel, FGauge>,
    pub f1: Family<ModelLabel, FGauge>,
    pub consumer_lag: Family<ModelPartition, Gauge>,
    pub model_info: Family<ModelInfo, Gauge>,
    pub services: Family<ModelLabel, Gauge>,
    pub services_evicted: Family<ModelLabel, Counter>,
    pub services_restored: Family<ModelLabel, Counter>,
    pub warmups_dropped: Family<ModelLabel, Counter>,
    pub service_score: Family<ModelService, FGauge>,
    pub service_anomalous: Family<ModelService, Gauge>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn score_histogram() -> Histogram {
    Histogram::new(SCORE_BUCKETS)
}

impl Metrics {
    /// Registers every metric and pre-creates the series of `models` that must exist before
    /// the first event (confusion counters, invalid reasons, gauges), so dashboards and alerts
    /// see zeros rather than nothing.
    pub fn new(models: &[&str]) -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Metrics {
            latency: Family::default(),
            throughput: Family::default(),
            anomalies: Family::default(),
            true_positives: Family::default(),
            false_positives: Family::default(),
            false_negatives: Family::default(),
            true_negatives: Family::default(),
            reconstruction_error: Family::default(),
            events: Family::default(),
            invalid: Family::default(),
            event_latency: Family::new_with_constructor(latency_histogram),
            score: Family::new_with_constructor(score_histogram),
            threshold: Family::default(),
            precision: Family::default(),
            recall: Family::default(),
            f1: Family::default(),
            consumer_lag: Family::default(),
            model_info: Family::default(),
            services: Family::default(),
            services_evicted: Family::default(),
            services_restored: Family::default(),
            warmups_dropped: Family::default(),
            service_score: Family::default(),
            service_anomalous: Family::default(),
            registry: Registry::default(),
        };
        use names::*;
        registry.register(
            LATENCY,
            "Event-to-detection latency of the last scored event (detected_at - ts), seconds",
            m.latency.clone(),
        );
        registry.register(
            THROUGHPUT,
            "Events processed per second over the last second",
            m.throughput.clone(),
        );
        registry.register(
            ANOMALIES,
            "Events flagged as anomalous",
            m.anomalies.clone(),
        );
        registry.register(
            TRUE_POSITIVES,
            "Flagged events labelled anomalous",
            m.true_positives.clone(),
        );
        registry.register(
            FALSE_POSITIVES,
            "Flagged events labelled normal",
            m.false_positives.clone(),
        );
        registry.register(
            FALSE_NEGATIVES,
            "Unflagged events labelled anomalous",
            m.false_negatives.clone(),
        );
        registry.register(
            TRUE_NEGATIVES,
            "Unflagged events labelled normal",
            m.true_negatives.clone(),
        );
        registry.register(
            RECONSTRUCTION_ERROR,
            "Autoencoder reconstruction error (its score) of the last scored event",
            m.reconstruction_error.clone(),
        );
        registry.register(
            EVENTS,
            "Valid events consumed (training and scored)",
            m.events.clone(),
        );
        registry.register(
            INVALID,
            "Inputs that could not be used, by reason; each is dead-lettered",
            m.invalid.clone(),
        );
        registry.register(
            EVENT_LATENCY,
            "Event-to-detection latency of scored events, seconds",
            m.event_latency.clone(),
        );
        registry.register(SCORE, "Anomaly scores of scored events", m.score.clone());
        registry.register(
            THRESHOLD,
            "Score at or above which an event is flagged",
            m.threshold.clone(),
        );
        registry.register(
            PRECISION,
            "tp / (tp + fp) over labelled scored events since start",
            m.precision.clone(),
        );
        registry.register(
            RECALL,
            "tp / (tp + fn) over labelled scored events since start",
            m.recall.clone(),
        );
        registry.register(
            F1,
            "Harmonic mean of precision and recall since start",
            m.f1.clone(),
        );
        registry.register(
            CONSUMER_LAG,
            "Messages between the consumer position and the end of the partition",
            m.consumer_lag.clone(),
        );
        registry.register(
            MODEL_INFO,
            "Fitted model: kanary version and when the latest service model was fitted (1)",
            m.model_info.clone(),
        );
        registry.register(
            SERVICES,
            "Services whose state is held in memory",
            m.services.clone(),
        );
        registry.register(
            SERVICES_EVICTED,
            "Services taken out of memory (least recently seen first) to keep within \
             --max-services / --memory-budget; their state is saved and comes back with their \
             next event",
            m.services_evicted.clone(),
        );
        registry.register(
            SERVICES_RESTORED,
            "Evicted services brought back from their saved state",
            m.services_restored.clone(),
        );
        registry.register(
            WARMUPS_DROPPED,
            "Evicted services that were still collecting training rows: the rows are dropped and \
             the service warms up again if it comes back",
            m.warmups_dropped.clone(),
        );
        registry.register(
            SERVICE_SCORE,
            "Score of the service's last scored event (services with their own series, \
             see --max-service-series)",
            m.service_score.clone(),
        );
        registry.register(
            SERVICE_ANOMALOUS,
            "1 while the service is anomalous: its last event flagged, its score at or above its \
             threshold, or an alarm started within --anomalous-hold seconds; else 0",
            m.service_anomalous.clone(),
        );
        let m = Metrics { registry, ..m };
        for model in models {
            let l = ModelLabel {
                model: model.to_string(),
            };
            m.latency.get_or_create_owned(&l);
            m.throughput.get_or_create_owned(&l);
            m.true_positives.get_or_create_owned(&l);
            m.false_positives.get_or_create_owned(&l);
            m.false_negatives.get_or_create_owned(&l);
            m.true_negatives.get_or_create_owned(&l);
            m.event_latency.get_or_create_owned(&l);
            m.score.get_or_create_owned(&l);
            m.precision.get_or_create_owned(&l);
            m.recall.get_or_create_owned(&l);
            m.f1.get_or_create_owned(&l);
            m.services.get_or_create_owned(&l);
            m.services_evicted.get_or_create_owned(&l);
            m.services_restored.get_or_create_owned(&l);
            m.warmups_dropped.get_or_create_owned(&l);
            for reason in EventError::REASONS {
                m.invalid.get_or_create_owned(&ModelReason {
                    model: model.to_string(),
                    reason: reason.to_string(),
                });
            }
        }
        Arc::new(m)
    }

    /// Every metric in the Prometheus text format (version 0.0.4), which Prometheus, promtool
    /// and every scraper read.
    ///
    /// The client library writes OpenMetrics, where a counter family is declared without its
    /// `_total` suffix and the text ends with `# EOF`; the Prometheus format declares the
    /// sample name itself. Lines are rewritten accordingly.
    pub fn encode(&self) -> String {
        encode_registry(&self.registry)
    }
}

/// A registry in the Prometheus text format (see [`Metrics::encode`]).
fn encode_registry(registry: &Registry) -> String {
    let mut om = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut om, registry);
    openmetrics_to_prometheus(&om)
}

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn openmetrics_to_prometheus(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Endpoint {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointCode {
    pub endpoint: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointReason {
    pub endpoint: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

/// The metrics of `kanary gateway`.
pub struct GatewayMetrics {
    pub registry: Registry,
    pub requests: Family<EndpointCode, Counter>,
    pub rejected: Family<EndpointReason, Counter>,
    pub samples: Family<Endpoint, Counter>,
    pub dropped: Family<Reason, Counter>,
    pub events: Counter,
    pub series: Gauge,
    pub entities: Gauge,
    pub duration: Family<Endpoint, Histogram, fn() -> Histogram>,
}

/// Endpoints of the gateway, as its `endpoint` label says them.
pub const GATEWAY_ENDPOINTS: [&str; 2] = ["remote_write", "otlp"];

/// Reasons a gateway request is refused (`gateway_rejected_requests_total`).
pub const GATEWAY_REJECT_REASONS: [&str; 11] = [
    "unauthorized",
    "not_ready",
    "too_large",
    "corrupt_body",
    "bad_protobuf",
    "bad_json",
    "unsupported_media_type",
    "kafka_unavailable",
    "delivery_failed",
    "awaiting_ack",
    "shutting_down",
];

/// Reasons gateway samples are not used (`gateway_samples_dropped_total`).
pub const GATEWAY_DROP_REASONS: [&str; 11] = [
    "excluded",
    "no_entity",
    "series_limit",
    "feature_limit",
    "histogram_bucket",
    "native_histogram",
    "non_finite",
    "out_of_order",
    "late",
    "awaiting_ack",
    "no_interval",
];

impl GatewayMetrics {
    pub fn new() -> Arc<Self> {
        use names::*;
        let m = GatewayMetrics {
            registry: Registry::default(),
            requests: Family::default(),
            rejected: Family::default(),
            samples: Family::default(),
            dropped: Family::default(),
            events: Counter::default(),
            series: Gauge::default(),
            entities: Gauge::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        let mut registry = Registry::default();
        registry.register(
            GW_REQUESTS,
            "Write requests answered, by endpoint and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            GW_REJECTED,
            "Write requests refused, by endpoint and reason (answered 4xx or 5xx; after \
             delivery_failed, the events Kafka did acknowledge stay on the topic)",
            m.rejected.clone(),
        );
        registry.register(
            GW_SAMPLES,
            "Samples (data points) received in accepted requests",
            m.samples.clone(),
        );
        registry.register(
            GW_DROPPED,
            "Samples not turned into event values, by reason",
            m.dropped.clone(),
        );
        registry.register(GW_EVENTS, "Events acknowledged by Kafka", m.events.clone());
        registry.register(
            GW_SERIES,
            "Features tracked over all entities (bounded by --max-series)",
            m.series.clone(),
        );
        registry.register(GW_ENTITIES, "Entities tracked", m.entities.clone());
        registry.register(
            GW_DURATION,
            "Time from a write request's arrival to its answer, seconds",
            m.duration.clone(),
        );
        for e in GATEWAY_ENDPOINTS {
            let endpoint = e.to_string();
            m.samples.get_or_create_owned(&Endpoint {
                endpoint: endpoint.clone(),
            });
            m.duration.get_or_create_owned(&Endpoint {
                endpoint: endpoint.clone(),
            });
            for reason in GATEWAY_REJECT_REASONS {
                m.rejected.get_or_create_owned(&EndpointReason {
                    endpoint: endpoint.clone(),
                    reason: reason.to_string(),
                });
            }
        }
        for reason in GATEWAY_DROP_REASONS {
            m.dropped.get_or_create_owned(&Reason {
                reason: reason.to_string(),
            });
        }
        Arc::new(GatewayMetrics { registry, ..m })
    }

    /// Every metric in the Prometheus text format, as [`Metrics::encode`].
    pub fn encode(&self) -> String {
        encode_registry(&self.registry)
    }
}

/// Handles of one model's label-only series, fetched once.
pub struct ModelHandles {
    pub latency: FGauge,
    pub throughput: FGauge,
    pub tp: Counter,
    pub fp: Counter,
    pub fn_: Counter,
    pub tn: Counter,
    pub event_latency: Histogram,
    pub score: Histogram,
    pub precision: FGauge,
    pub recall: FGauge,
    pub f1: FGauge,
}

impl ModelHandles {
    pub fn new(m: &Metrics, model: &str) -> Self {
        let l = ModelLabel {
            model: model.to_string(),
        };
        ModelHandles {
            latency: m.latency.get_or_create_owned(&l),
            throughput: m.throughput.get_or_create_owned(&l),
            tp: m.true_positives.get_or_create_owned(&l),
            fp: m.false_positives.get_or_create_owned(&l),
            fn_: m.false_negatives.get_or_create_owned(&l),
            tn: m.true_negatives.get_or_create_owned(&l),
            event_latency: m.event_latency.get_or_create_owned(&l),
            score: m.score.get_or_create_owned(&l),
            precision: m.precision.get_or_create_owned(&l),
            recall: m.recall.get_or_create_owned(&l),
            f1: m.f1.get_or_create_owned(&l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_metric_for_every_model() {
        let m = Metrics::new(&["if", "ae"]);
        let text = m.encode();
        for name in [
            "detector_latency_seconds",
            "detector_throughput_mps",
            "detector_true_positives_total",
            "detector_false_positives_total",
            "detector_false_negatives_total",
            "detector_true_negatives_total",
            "detector_invalid_events_total",
            "detector_event_latency_seconds_bucket",
            "detector_score_bucket",
            "detector_precision",
            "detector_recall",
            "detector_f1",
        ] {
            for model in ["if", "ae"] {
                assert!(
                    text.lines()
                        .any(|l| l.starts_with(name) && l.contains(&format!("model=\"{model}\""))),
                    "{name} for {model} missing:\n{text}"
                );
            }
        }
        assert!(text.contains("reason=\"not_json\""));
        assert!(text.contains("# TYPE detector_true_positives_total counter\n"));
        assert!(text.contains("# HELP detector_invalid_events_total "));
        assert!(!text.contains("# EOF"));
    }
}
