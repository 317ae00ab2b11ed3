//! `--backfill-from`: the recent history of the selected series, read from the Prometheus
//! HTTP API (`/api/v1/query_range`, `/api/v1/metadata`) and turned into events like live
//! samples, so the detectors are warm before live samples arrive. This file holds the parts
//! without I/O: the selector, the query URLs and the response parsing.

use regex::Regex;
use serde::Deserialize;

use super::series::{Kind, SeriesIn};

/// Points per series in one `query_range` request (Prometheus refuses more than 11,000).
pub const POINTS_PER_QUERY: i64 = 1_000;

/// The PromQL selector for `--include` regexes: metric names matching any of them (PromQL
/// regexes are anchored; `--include` searches, so each is wrapped in `.*`). Everything
/// without `--include`.
pub fn selector(include: &[String]) -> String {
    if include.is_empty() {
        return r#"{__name__=~".+"}"#.to_string();
    }
    let alternatives: Vec<String> = include.iter().map(|r| format!(".*(?:{r}).*")).collect();
    let re = alternatives
        .join("|")
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!("{{__name__=~\"{re}\"}}")
}

/// `base` + `path` + `?k=v&...`, percent-encoded.
pub fn url(base: &str, path: &str, params: &[(&str, String)]) -> String {
    let mut u = format!("{}{path}", base.trim_end_matches('/'));
    for (i, (k, v)) in params.iter().enumerate() {
        u.push(if i == 0 { '?' } else { '&' });
        u.push_str(k);
        u.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                u.push(b as char);
            } else {
                u.push_str(&format!("%{b:02X}"));
            }
        }
    }
    u
}

/// `6h`, `30m`, `90s`, `2d` or plain seconds.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let re = Regex::new(r"^([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?$").expect("valid regex");
    let c = re
        .captures(t)
        .ok_or_else(|| format!("`{s}` is not a duration (e.g. 90s, 30m, 6h, 2d)"))?;
    let n: f64 = c[1].parse().map_err(|e| format!("`{s}`: {e}"))?;
    let unit = match c.get(2).map(|m| m.as_str()) {
        Some("ms") => 0.001,
        None | Some("s") => 1.0,
        Some("m") => 60.0,
        Some("h") => 3600.0,
        Some("d") => 86_400.0,
        Some("w") => 604_800.0,
        Some(_) => unreachable!("the regex allows no other unit"),
    };
    let secs = n * unit;
    if secs <= 0.0 {
        return Err(format!("`{s}` must be longer than 0"));
    }
    Ok(secs)
}

#[derive(Deserialize)]
struct ApiResponse<T> {
    status: String,
    // A missing field is `None`.
    data: Option<T>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Matrix {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<MatrixSeries>,
}

#[derive(Deserialize)]
struct MatrixSeries {
    metric: std::collections::BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

fn unwrap_api<T>(r: ApiResponse<T>) -> Result<T, String> {
    if r.status != "success" {
        return Err(r.error.unwrap_or_else(|| format!("status {}", r.status)));
    }
    r.data.ok_or_else(|| "no data in the answer".to_string())
}

/// A `query_range` answer as series (samples in ms, values as Prometheus wrote them: `NaN`,
/// `+Inf` are parsed and then dropped as non-finite by the converter).
pub fn parse_matrix(body: &[u8]) -> Result<Vec<SeriesIn>, String> {
    let r: ApiResponse<Matrix> =
        serde_json::from_slice(body).map_err(|e| format!("not a Prometheus API answer: {e}"))?;
    let m = unwrap_api(r)?;
    if m.result_type != "matrix" {
        return Err(format!("expected a matrix, got a {}", m.result_type));
    }
    Ok(m.result
        .into_iter()
        .map(|s| {
            let mut name = String::new();
            let mut labels = Vec::with_capacity(s.metric.len());
            for (k, v) in s.metric {
                if k == "__name__" {
                    name = v;
                } else {
                    labels.push((k, v));
                }
            }
            let samples = s
                .values
                .iter()
                .map(|(t, v)| {
                    let value = match v.as_str() {
                        "+Inf" => f64::INFINITY,
                        "-Inf" => f64::NEG_INFINITY,
                        other => other.parse().unwrap_or(f64::NAN),
                    };
                    ((t * 1000.0).round() as i64, value)
                })
                .collect();
            SeriesIn {
                name,
                labels,
                context: Vec::new(),
                kind: Kind::FromName,
                samples,
            }
        })
        .collect())
}

#[derive(Deserialize)]
struct MetadataEntry {
    #[serde(rename = "type")]
    kind: String,
}

/// A `/api/v1/metadata` answer: each metric family's type, as the converter uses it.
pub fn parse_metadata(body: &[u8]) -> Result<Vec<(String, Kind)>, String> {
    let r: ApiResponse<std::collections::BTreeMap<String, Vec<MetadataEntry>>> =
        serde_json::from_slice(body).map_err(|e| format!("not a Prometheus API answer: {e}"))?;
    Ok(unwrap_api(r)?
        .into_iter()
        .filter_map(|(family, entries)| {
            let kind = match entries.first()?.kind.as_str() {
                "counter" => Kind::Counter,
                // As in remote-write metadata: a summary's own name is its quantiles.
                "gauge" | "histogram" | "summary" | "gaugehistogram" | "info" | "stateset" => {
                    Kind::Gauge
                }
                _ => return None,
            };
            Some((family, kind))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_regexes_become_one_anchored_promql_selector() {
        assert_eq!(selector(&[]), r#"{__name__=~".+"}"#);
        assert_eq!(
            selector(&["^node_load".into(), "cpu\\d".into()]),
            r#"{__name__=~".*(?:^node_load).*|.*(?:cpu\\d).*"}"#
        );
        let u = url(
            "http://p:9090/",
            "/api/v1/query_range",
            &[("query", "{a=~\"x y\"}".into())],
        );
        assert_eq!(
            u,
            "http://p:9090/api/v1/query_range?query=%7Ba%3D~%22x%20y%22%7D"
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("6h"), Ok(21_600.0));
        assert_eq!(parse_duration("90s"), Ok(90.0));
        assert_eq!(parse_duration("1.5m"), Ok(90.0));
        assert_eq!(parse_duration("45"), Ok(45.0));
        for bad in ["", "h", "-1h", "0s", "6 hours"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_range_answer_becomes_series_and_an_error_says_why() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"node_load1","job":"node","instance":"h"},
             "values":[[1700000000,"0.5"],[1700000001.5,"NaN"]]}]}}"#;
        let s = parse_matrix(body).unwrap();
        assert_eq!(s[0].name, "node_load1");
        assert_eq!(s[0].labels.len(), 2);
        assert_eq!(s[0].samples[0], (1_700_000_000_000, 0.5));
        assert_eq!(s[0].samples[1].0, 1_700_000_001_500);
        assert!(s[0].samples[1].1.is_nan());
        let err = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert_eq!(parse_matrix(err).unwrap_err(), "parse error at char 3");
        let meta = br#"{"status":"success","data":{"node_cpu_seconds_total":[{"type":"counter","help":"","unit":""}],
            "node_load1":[{"type":"gauge","help":"","unit":""}],"x":[{"type":"unknown"}]}}"#;
        let m = parse_metadata(meta).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m.contains(&("node_cpu_seconds_total".to_string(), Kind::Counter)));
    }
}
