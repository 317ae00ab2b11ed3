//! The wire formats the gateway accepts, decoded into [`SeriesIn`]: Prometheus remote write
//! 1.0 (snappy block-compressed protobuf `WriteRequest`) and OTLP/HTTP metrics (protobuf or
//! JSON `ExportMetricsServiceRequest`).

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, metric::Data, number_data_point,
};
use prost::Message;

use super::series::{Drops, Kind, SeriesIn};

/// Why a request body was refused (`gateway_rejected_requests_total{reason}`); each maps to
/// one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// 413: the body, or what it decompresses to, is larger than `--max-body`.
    TooLarge(usize),
    /// 400: not valid snappy / gzip.
    Corrupt(String),
    /// 400: not a valid protobuf message of the expected type.
    Protobuf(String),
    /// 400: not valid OTLP JSON.
    Json(String),
    /// 415: a content type or encoding the endpoint does not speak.
    Unsupported(String),
}

impl Reject {
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::TooLarge(_) => "too_large",
            Reject::Corrupt(_) => "corrupt_body",
            Reject::Protobuf(_) => "bad_protobuf",
            Reject::Json(_) => "bad_json",
            Reject::Unsupported(_) => "unsupported_media_type",
        }
    }

    pub fn message(&self, limit: usize) -> String {
        match self {
            Reject::TooLarge(n) => {
                format!(
                    "body of {n} bytes (decompressed) is over the limit of {limit} (--max-body)"
                )
            }
            Reject::Corrupt(e) => format!("body cannot be decompressed: {e}"),
            Reject::Protobuf(e) => format!("body is not a valid protobuf message: {e}"),
            Reject::Json(e) => format!("body is not valid OTLP JSON: {e}"),
            Reject::Unsupported(e) => e.clone(),
        }
    }
}

// --- Prometheus remote write 1.0 (prometheus/prompb: remote.proto, types.proto) ------------

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    /// Native histograms: not converted, only counted.
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<NativeHistogram>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// A native histogram sample; its fields are not read.
#[derive(Clone, PartialEq, Message)]
pub struct NativeHistogram {}

#[derive(Clone, PartialEq, Message)]
pub struct MetricMetadata {
    /// UNKNOWN 0, COUNTER 1, GAUGE 2, HISTOGRAM 3, GAUGEHISTOGRAM 4, SUMMARY 5, INFO 6,
    /// STATESET 7.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
}

/// Decompresses and decodes a remote-write body.
pub fn decode_remote_write(body: &[u8], limit: usize) -> Result<WriteRequest, Reject> {
    let len = snap::raw::decompress_len(body).map_err(|e| Reject::Corrupt(e.to_string()))?;
    if len > limit {
        return Err(Reject::TooLarge(len));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| Reject::Corrupt(e.to_string()))?;
    WriteRequest::decode(raw.as_slice()).map_err(|e| Reject::Protobuf(e.to_string()))
}

/// The metric types a write request's metadata declares, for [`super::series::Converter`].
pub fn family_types(req: &WriteRequest) -> Vec<(String, Kind)> {
    req.metadata
        .iter()
        .filter_map(|m| {
            // A histogram's or summary's own name is its quantiles (gauges); its `_sum` and
            // `_count` are counters by their suffix, its `_bucket` is skipped.
            let kind = match m.r#type {
                1 => Kind::Counter,
                2..=7 => Kind::Gauge,
                _ => return None,
            };
            Some((m.metric_family_name.clone(), kind))
        })
        .collect()
}

/// The series of a write request. Native histograms are counted in `drops`.
pub fn remote_write_series(req: WriteRequest, drops: &mut Drops) -> Vec<SeriesIn> {
    let mut out = Vec::with_capacity(req.timeseries.len());
    for ts in req.timeseries {
        drops.add("native_histogram", ts.histograms.len() as u64);
        if ts.samples.is_empty() {
            continue;
        }
        let mut name = String::new();
        let mut labels = Vec::with_capacity(ts.labels.len());
        for l in ts.labels {
            if l.name == "__name__" {
                name = l.value;
            } else {
                labels.push((l.name, l.value));
            }
        }
        let mut samples: Vec<(i64, f64)> =
            ts.samples.iter().map(|s| (s.timestamp, s.value)).collect();
        samples.sort_by_key(|s| s.0);
        out.push(SeriesIn {
            name,
            labels,
            context: Vec::new(),
            kind: Kind::FromName,
            samples,
        });
    }
    out
}

// --- OTLP/HTTP metrics -----------------------------------------------------------------------

/// Decodes an OTLP metrics body: `json` for `application/json`, protobuf otherwise.
pub fn decode_otlp(body: &[u8], json: bool) -> Result<ExportMetricsServiceRequest, Reject> {
    if json {
        serde_json::from_slice(body).map_err(|e| Reject::Json(e.to_string()))
    } else {
        ExportMetricsServiceRequest::decode(body).map_err(|e| Reject::Protobuf(e.to_string()))
    }
}

fn any_text(v: &Option<AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn attrs(kv: &[KeyValue]) -> Vec<(String, String)> {
    kv.iter()
        .filter_map(|a| Some((a.key.clone(), any_text(&a.value)?)))
        .collect()
}

/// Resource attributes (they may name the entity, never a feature), with `job` and
/// `instance` made as Prometheus makes them from OTLP: job = `service.namespace/service.name` (or `service.name`), instance =
/// `service.instance.id`.
fn resource_labels(kv: &[KeyValue]) -> Vec<(String, String)> {
    let mut labels = attrs(kv);
    let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let job = match (get("service.namespace"), get("service.name")) {
        (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
        (None, Some(name)) => Some(name),
        _ => None,
    };
    let instance = get("service.instance.id");
    for (k, v) in [("job", job), ("instance", instance)] {
        if let Some(v) = v
            && !labels.iter().any(|(n, _)| n == k)
        {
            labels.push((k.to_string(), v));
        }
    }
    labels
}

fn ms(nanos: u64) -> i64 {
    (nanos / 1_000_000) as i64
}

/// The data points of an OTLP request as series. Gauges pass through, monotonic sums are
/// counters (cumulative) or rates (delta, over their own interval), non-monotonic sums are
/// gauges; histograms (and exponential ones) give `<name>_count` and `<name>_sum` the same
/// way (the converter adds `<name>:mean`); summaries give those and one gauge per quantile.
pub fn otlp_series(req: ExportMetricsServiceRequest, drops: &mut Drops) -> Vec<SeriesIn> {
    let mut out = Vec::new();
    for rm in req.resource_metrics {
        let resource = resource_labels(
            rm.resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or_default(),
        );
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                let Some(data) = m.data else { continue };
                let mut push = |name: String, point_attrs: &[KeyValue], kind, t: i64, v: f64| {
                    out.push(SeriesIn {
                        name,
                        labels: attrs(point_attrs),
                        context: resource.clone(),
                        kind,
                        samples: vec![(t, v)],
                    });
                };
                let number =
                    |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
                        Some(number_data_point::Value::AsDouble(d)) => Some(d),
                        Some(number_data_point::Value::AsInt(i)) => Some(i as f64),
                        None => None,
                    };
                let is_delta = |t: i32| t == AggregationTemporality::Delta as i32;
                match data {
                    Data::Gauge(g) => {
                        for p in &g.data_points {
                            if let Some(v) = number(p) {
                                push(
                                    m.name.clone(),
                                    &p.attributes,
                                    Kind::Gauge,
                                    ms(p.time_unix_nano),
                                    v,
                                );
                            }
                        }
                    }
                    Data::Sum(s) => {
                        let delta = is_delta(s.aggregation_temporality);
                        for p in &s.data_points {
                            let Some(v) = number(p) else { continue };
                            let t = ms(p.time_unix_nano);
                            if !s.is_monotonic {
                                push(m.name.clone(), &p.attributes, Kind::Gauge, t, v);
                            } else if let Some((kind, v)) =
                                monotonic(delta, p.start_time_unix_nano, p.time_unix_nano, v)
                            {
                                push(m.name.clone(), &p.attributes, kind, t, v);
                            } else {
                                drops.add("no_interval", 1);
                            }
                        }
                    }
                    Data::Histogram(h) => {
                        let delta = is_delta(h.aggregation_temporality);
                        for p in &h.data_points {
                            let point =
                                (&p.attributes[..], p.start_time_unix_nano, p.time_unix_nano);
                            let parts = [p.count as f64, p.sum.unwrap_or(f64::NAN)];
                            count_sum(&mut push, drops, &m.name, point, delta, parts);
                        }
                    }
                    Data::ExponentialHistogram(h) => {
                        let delta = is_delta(h.aggregation_temporality);
                        for p in &h.data_points {
                            let point =
                                (&p.attributes[..], p.start_time_unix_nano, p.time_unix_nano);
                            let parts = [p.count as f64, p.sum.unwrap_or(f64::NAN)];
                            count_sum(&mut push, drops, &m.name, point, delta, parts);
                        }
                    }
                    Data::Summary(s) => {
                        for p in &s.data_points {
                            let t = ms(p.time_unix_nano);
                            let point =
                                (&p.attributes[..], p.start_time_unix_nano, p.time_unix_nano);
                            count_sum(
                                &mut push,
                                drops,
                                &m.name,
                                point,
                                false,
                                [p.count as f64, p.sum],
                            );
                            for q in &p.quantile_values {
                                let mut a = p.attributes.clone();
                                a.push(KeyValue {
                                    key: "quantile".into(),
                                    value: Some(AnyValue {
                                        value: Some(any_value::Value::StringValue(
                                            q.quantile.to_string(),
                                        )),
                                    }),
                                    ..Default::default()
                                });
                                push(m.name.clone(), &a, Kind::Gauge, t, q.value);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// A monotonic value: a counter when cumulative; when delta, a per-second rate over the
/// point's own interval (`None` without one).
fn monotonic(delta: bool, start: u64, time: u64, v: f64) -> Option<(Kind, f64)> {
    if !delta {
        Some((Kind::Counter, v))
    } else if time > start && start > 0 {
        Some((Kind::Rate, v * 1e9 / (time - start) as f64))
    } else {
        None
    }
}

/// `<name>_count` and `<name>_sum` of a histogram or summary point `(attributes, start,
/// time)`, as [`monotonic`] values. A missing sum (NaN) is skipped.
fn count_sum(
    push: &mut impl FnMut(String, &[KeyValue], Kind, i64, f64),
    drops: &mut Drops,
    name: &str,
    (attrs, start, time): (&[KeyValue], u64, u64),
    delta: bool,
    [count, sum]: [f64; 2],
) {
    for (suffix, v) in [("_count", count), ("_sum", sum)] {
        if v.is_nan() {
            continue;
        }
        match monotonic(delta, start, time, v) {
            Some((kind, v)) => push(format!("{name}{suffix}"), attrs, kind, ms(time), v),
            None => drops.add("no_interval", 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_request() -> WriteRequest {
        WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    Label {
                        name: "__name__".into(),
                        value: "up".into(),
                    },
                    Label {
                        name: "job".into(),
                        value: "node".into(),
                    },
                ],
                samples: vec![
                    Sample {
                        value: 1.0,
                        timestamp: 2000,
                    },
                    Sample {
                        value: 0.0,
                        timestamp: 1000,
                    },
                ],
                histograms: vec![NativeHistogram {}],
            }],
            metadata: vec![MetricMetadata {
                r#type: 1,
                metric_family_name: "reqs".into(),
            }],
        }
    }

    #[test]
    fn remote_write_round_trips_and_samples_come_out_in_time_order() {
        let body = snap::raw::Encoder::new()
            .compress_vec(&write_request().encode_to_vec())
            .unwrap();
        let req = decode_remote_write(&body, 1 << 20).unwrap();
        assert_eq!(
            family_types(&req),
            vec![("reqs".to_string(), Kind::Counter)]
        );
        let mut d = Drops::default();
        let s = remote_write_series(req, &mut d);
        assert_eq!(s[0].name, "up");
        assert_eq!(s[0].labels, vec![("job".to_string(), "node".to_string())]);
        assert_eq!(s[0].samples, vec![(1000, 0.0), (2000, 1.0)]);
        assert_eq!(d.0.get("native_histogram"), Some(&1));
    }

    #[test]
    fn bad_bodies_are_refused_with_their_reason() {
        let proto = write_request().encode_to_vec();
        let body = snap::raw::Encoder::new().compress_vec(&proto).unwrap();
        assert_eq!(
            decode_remote_write(&body, 10).unwrap_err().reason(),
            "too_large"
        );
        assert_eq!(
            decode_remote_write(b"\xff\xff\xff\xff\xff", 1 << 20)
                .unwrap_err()
                .reason(),
            "corrupt_body"
        );
        // Valid snappy around bytes that are not a WriteRequest.
        let garbage = snap::raw::Encoder::new()
            .compress_vec(b"\x0a\xff\xff\xff\xff\x0f")
            .unwrap();
        assert_eq!(
            decode_remote_write(&garbage, 1 << 20).unwrap_err().reason(),
            "bad_protobuf"
        );
        assert_eq!(
            decode_otlp(b"{\"resourceMetrics\": 3}", true)
                .unwrap_err()
                .reason(),
            "bad_json"
        );
        assert_eq!(
            decode_otlp(b"\x0a\xff\xff\xff\xff\x0f", false)
                .unwrap_err()
                .reason(),
            "bad_protobuf"
        );
    }

    #[test]
    fn otlp_json_maps_resources_to_job_and_instance_and_kinds_to_rules() {
        let body = r#"{"resourceMetrics":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"cart"}},
            {"key":"service.namespace","value":{"stringValue":"shop"}},
            {"key":"service.instance.id","value":{"stringValue":"p1"}}]},
          "scopeMetrics":[{"metrics":[
            {"name":"queue","gauge":{"dataPoints":[{"timeUnixNano":"2000000000","asDouble":4.5,
               "attributes":[{"key":"q","value":{"stringValue":"a"}}]}]}},
            {"name":"reqs","sum":{"isMonotonic":true,"aggregationTemporality":2,
               "dataPoints":[{"timeUnixNano":"2000000000","asInt":"7"}]}},
            {"name":"sent","sum":{"isMonotonic":true,"aggregationTemporality":1,
               "dataPoints":[{"startTimeUnixNano":"1000000000","timeUnixNano":"3000000000","asInt":"8"}]}},
            {"name":"lat","histogram":{"aggregationTemporality":2,
               "dataPoints":[{"timeUnixNano":"2000000000","count":"3","sum":1.5}]}}
          ]}]}]}"#;
        let req = decode_otlp(body.as_bytes(), true).unwrap();
        let mut d = Drops::default();
        let s = otlp_series(req, &mut d);
        let find = |n: &str| s.iter().find(|x| x.name == n).unwrap();
        let q = find("queue");
        assert_eq!(
            (q.kind, q.samples.clone()),
            (Kind::Gauge, vec![(2000, 4.5)])
        );
        assert!(q.context.contains(&("job".into(), "shop/cart".into())));
        assert!(q.context.contains(&("instance".into(), "p1".into())));
        assert_eq!(q.labels, vec![("q".to_string(), "a".to_string())]);
        assert_eq!(find("reqs").kind, Kind::Counter);
        let sent = find("sent");
        assert_eq!((sent.kind, sent.samples[0].1), (Kind::Rate, 4.0));
        assert_eq!(find("lat_count").samples[0].1, 3.0);
        assert_eq!(find("lat_sum").samples[0].1, 1.5);
    }
}
