//! From telemetry samples to kanary events: the rules of docs/telemetry.md, with no I/O.
//!
//! - An *entity* (the event's `service`) is the values of the entity labels, joined by `/`.
//! - A *feature* is named by the metric name and its other labels in Prometheus' form, sorted
//!   by label name: `node_load1`, `http_requests_total:rate{code="200",method="get"}`.
//!   Counters become per-second rates (`:rate`), resets included; gauges pass through; a
//!   `<x>_sum` / `<x>_count` pair (histograms, summaries) also gives `<x>:mean{...}`, the mean
//!   of the observations in the interval.
//! - All samples of one entity at one timestamp form one event. Every feature the entity has
//!   reported is in it: a feature without a sample at this timestamp carries its last value,
//!   so the detectors see the same columns every time (a scrape that Prometheus splits
//!   between two requests still makes whole events, and a series that ended keeps its last
//!   value: `detect` fixes a service's columns at its first event). An entity with no sample
//!   for [`Config::stale_ms`] is forgotten.
//! - An entity's first timestamp makes no event (its counters have no rate yet).
//! - Each timestamp of an entity makes one event. The converter remembers, for the last
//!   [`Config::history`] timestamps of each entity, whether its event was delivered: a retry
//!   of a request whose delivery failed sends the same events again; samples for a timestamp
//!   already delivered (or being delivered) only update the values carried forward.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

use kanary_core::event::{write_f64, write_json_str};
use regex::RegexSet;

/// What a sample's value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Passed through.
    Gauge,
    /// Cumulative: becomes a per-second rate between consecutive samples.
    Counter,
    /// Already a per-second rate (an OTLP delta sum divided by its interval).
    Rate,
    /// Remote write: decided from the metric metadata Prometheus sends, else from the name
    /// (`_total`, `_sum`, `_count` are counters; `_bucket` with `le` is skipped).
    FromName,
}

/// One series of one request: a metric name, its labels (without `__name__`) and samples
/// `(unix ms, value)` in time order.
#[derive(Debug, Clone)]
pub struct SeriesIn {
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// Labels that may name the entity but never a feature (OTLP resource attributes).
    pub context: Vec<(String, String)>,
    pub kind: Kind,
    pub samples: Vec<(i64, f64)>,
}

/// Prometheus' staleness marker: the series ended.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

#[derive(Debug, Clone)]
pub struct Config {
    /// Labels whose values name the entity, in order.
    pub entity_labels: Vec<String>,
    /// Metric names to keep (all if `None`).
    pub include: Option<RegexSet>,
    /// Metric names to drop.
    pub exclude: Option<RegexSet>,
    /// Features tracked over all entities; a new one beyond it is dropped.
    pub max_series: usize,
    /// Features per entity; a new one beyond it is dropped.
    pub max_entity_features: usize,
    /// An entity with no sample for this long (sample time) is forgotten.
    pub stale_ms: i64,
    /// Timestamps per entity whose delivery is remembered.
    pub history: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            entity_labels: vec!["job".into(), "instance".into()],
            include: None,
            exclude: None,
            max_series: 100_000,
            max_entity_features: 400,
            stale_ms: 5 * 60 * 1000,
            history: 64,
        }
    }
}

/// Why samples were not used, with counts (`gateway_samples_dropped_total{reason}`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drops(pub BTreeMap<&'static str, u64>);

/// The [`Drops`] reason of samples whose event an earlier request sent and Kafka has not yet
/// acknowledged or refused: the request that carries them gets 503 (retry later).
pub const AWAITING_ACK: &str = "awaiting_ack";

impl Drops {
    pub fn add(&mut self, reason: &'static str, n: u64) {
        if n > 0 {
            *self.0.entry(reason).or_default() += n;
        }
    }

    /// Samples refused for a limit or a bad value, as OTLP's partial success reports them;
    /// not those the configuration excludes, histogram buckets, or late copies.
    pub fn rejected(&self) -> u64 {
        self.0
            .iter()
            .filter(|(r, _)| !matches!(**r, "excluded" | "late" | "histogram_bucket"))
            .map(|(_, n)| n)
            .sum()
    }
}

/// An event to produce: key `entity`, JSON `payload`.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub entity: String,
    pub ts_ms: i64,
    pub payload: Arc<str>,
}

#[derive(Debug, Clone)]
enum Slot {
    /// The entity's first timestamp: no event.
    First,
    InFlight,
    /// Its request was answered 503 before Kafka said whether it has the event: a retry
    /// waits for that answer (the event may still arrive) instead of sending a second copy.
    Unsettled,
    Delivered,
    /// Delivery failed: a retry sends this again.
    Failed(Arc<str>),
}

#[derive(Debug)]
struct Feature {
    /// Latest output value and the sample time it belongs to.
    value: Option<f64>,
    at: i64,
    /// Counters: the last raw sample `(ms, value)` and the rate computed at it.
    counter: Option<(i64, f64, Option<f64>)>,
}

#[derive(Debug)]
struct Entity {
    labels: Vec<(String, String)>,
    features: BTreeMap<String, Feature>,
    recent: VecDeque<(i64, Slot)>,
}

/// The converter's state: entities, their features and counters, and metric types.
pub struct Converter {
    cfg: Config,
    entities: HashMap<String, Entity>,
    series: usize,
    /// Metric family types from remote-write metadata.
    families: HashMap<String, Kind>,
}

/// Keys of a kanary event that labels must not take.
const RESERVED: [&str; 3] = ["ts", "service", "label"];

/// Largest number of metric families whose type is remembered.
const MAX_FAMILIES: usize = 100_000;

/// One feature value at one timestamp, from one request.
struct Update {
    key: String,
    value: f64,
    /// What a mean divides: a counter's increase (exact), else the value.
    amount: f64,
    /// `<x>_sum` / `<x>_count` of a pair: the key of `<x>:mean{...}` and whether this is the sum.
    mean: Option<(String, bool)>,
}

impl Converter {
    pub fn new(cfg: Config) -> Self {
        Converter {
            cfg,
            entities: HashMap::new(),
            series: 0,
            families: HashMap::new(),
        }
    }

    /// Features tracked over all entities.
    pub fn series(&self) -> usize {
        self.series
    }

    pub fn entities(&self) -> usize {
        self.entities.len()
    }

    /// Remote-write metadata: the type of a metric family (`counter`, `gauge`, ...).
    pub fn set_family(&mut self, family: &str, kind: Kind) {
        if self.families.len() < MAX_FAMILIES || self.families.contains_key(family) {
            self.families.insert(family.to_string(), kind);
        }
    }

    /// What a remote-write series is, from its family's metadata or its name. `None`: skip it
    /// (a histogram bucket).
    fn resolve(&self, name: &str, labels: &[(String, String)]) -> Option<Kind> {
        let has = |l: &str| labels.iter().any(|(k, _)| k == l);
        if name.ends_with("_bucket") && has("le") {
            return None;
        }
        if let Some(&k) = self.families.get(name) {
            return Some(k);
        }
        for suffix in ["_total", "_sum", "_count"] {
            if let Some(family) = name.strip_suffix(suffix) {
                return Some(match self.families.get(family) {
                    Some(Kind::Gauge) if suffix == "_total" => Kind::Gauge,
                    _ => Kind::Counter,
                });
            }
        }
        Some(Kind::Gauge)
    }

    /// Turns one request's series into events. Returns the events to produce (in time order
    /// per entity); what was not used is counted in `drops`.
    pub fn ingest(&mut self, input: Vec<SeriesIn>, drops: &mut Drops) -> Vec<Outgoing> {
        // entity -> ts -> updates
        let mut updates: HashMap<String, BTreeMap<i64, Vec<Update>>> = HashMap::new();
        for s in input {
            let n = s.samples.len() as u64;
            let keep = self
                .cfg
                .include
                .as_ref()
                .is_none_or(|r| r.is_match(&s.name))
                && !self
                    .cfg
                    .exclude
                    .as_ref()
                    .is_some_and(|r| r.is_match(&s.name));
            if !keep {
                drops.add("excluded", n);
                continue;
            }
            let kind = match s.kind {
                Kind::FromName => match self.resolve(&s.name, &s.labels) {
                    Some(k) => k,
                    None => {
                        drops.add("histogram_bucket", n);
                        continue;
                    }
                },
                k => k,
            };
            let Some((entity, labels, rest)) = self.split(s.labels, s.context) else {
                drops.add("no_entity", n);
                continue;
            };
            let key = feature_key(&s.name, kind, &rest);
            let mean = match kind {
                Kind::Counter | Kind::Rate => s
                    .name
                    .strip_suffix("_sum")
                    .map(|b| (b, true))
                    .or_else(|| s.name.strip_suffix("_count").map(|b| (b, false)))
                    .map(|(base, is_sum)| (format!("{base}:mean{}", label_text(&rest)), is_sum)),
                _ => None,
            };
            if !self.entities.contains_key(&entity) {
                self.entities.insert(
                    entity.clone(),
                    Entity {
                        labels,
                        features: BTreeMap::new(),
                        recent: VecDeque::new(),
                    },
                );
            }
            let ent = self.entities.get_mut(&entity).expect("inserted above");
            let Some(f) = admit(ent, &key, &mut self.series, &self.cfg) else {
                drops.add(
                    if self.series >= self.cfg.max_series {
                        "series_limit"
                    } else {
                        "feature_limit"
                    },
                    n,
                );
                continue;
            };
            let per_ts = updates.entry(entity).or_default();
            for (ts, v) in s.samples {
                if v.to_bits() == STALE_NAN {
                    // The series ended (target gone, series no longer exported): its last
                    // value stays in the entity's events.
                    continue;
                }
                if !v.is_finite() {
                    drops.add("non_finite", 1);
                    continue;
                }
                let out = match kind {
                    Kind::Gauge | Kind::Rate | Kind::FromName => Some((v, v)),
                    Kind::Counter => match f.counter {
                        None => {
                            f.counter = Some((ts, v, None));
                            None
                        }
                        // The same sample again (a retried request): the same rate.
                        Some((t, _, rate)) if t == ts => rate.map(|r| (r, r)),
                        Some((t, _, _)) if ts < t => {
                            drops.add("out_of_order", 1);
                            None
                        }
                        Some((t, last, _)) => {
                            // A counter that went down was reset: it counted `v` since.
                            let increase = if v >= last { v - last } else { v };
                            let rate = increase * 1000.0 / (ts - t) as f64;
                            f.counter = Some((ts, v, Some(rate)));
                            Some((rate, increase))
                        }
                    },
                };
                // A timestamp counts even without a value yet (a counter's first sample):
                // it is the entity's first.
                let group = per_ts.entry(ts).or_default();
                if let Some((value, amount)) = out {
                    group.push(Update {
                        key: key.clone(),
                        value,
                        amount,
                        mean: mean.clone(),
                    });
                }
            }
        }
        let mut out = Vec::new();
        for (entity, per_ts) in updates {
            for (ts, ups) in per_ts {
                self.group(&entity, ts, ups, drops, &mut out);
            }
        }
        out
    }

    /// Entity name, entity labels and the other labels (sorted), or `None` without any
    /// entity label. `context` labels only count for the entity.
    #[allow(clippy::type_complexity)]
    fn split(
        &self,
        labels: Vec<(String, String)>,
        context: Vec<(String, String)>,
    ) -> Option<(String, Vec<(String, String)>, Vec<(String, String)>)> {
        let mut ent: Vec<(String, String)> = Vec::with_capacity(self.cfg.entity_labels.len());
        let mut rest = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            if k == "__name__" {
                continue;
            }
            if self.cfg.entity_labels.contains(&k) {
                if !v.is_empty() {
                    ent.push((k, v));
                }
            } else {
                rest.push((k, v));
            }
        }
        for (k, v) in context {
            if self.cfg.entity_labels.contains(&k)
                && !v.is_empty()
                && !ent.iter().any(|(e, _)| *e == k)
            {
                ent.push((k, v));
            }
        }
        if ent.is_empty() {
            return None;
        }
        ent.sort_by_key(|(k, _)| self.cfg.entity_labels.iter().position(|e| e == k));
        rest.sort();
        let name = ent
            .iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join("/");
        Some((name, ent, rest))
    }

    /// One entity at one timestamp: applies the values, and makes its event if this
    /// timestamp is new (or resends it if its delivery failed).
    fn group(
        &mut self,
        entity: &str,
        ts: i64,
        ups: Vec<Update>,
        drops: &mut Drops,
        out: &mut Vec<Outgoing>,
    ) {
        let n = ups.len() as u64;
        // Means of `_sum` / `_count` pairs updated together.
        let mut pairs: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
        for u in &ups {
            if let Some((k, is_sum)) = &u.mean {
                let p = pairs.entry(k.clone()).or_default();
                if *is_sum {
                    p.0 = Some(u.amount)
                } else {
                    p.1 = Some(u.amount)
                }
            }
        }
        let mut values: Vec<(String, f64)> = ups.into_iter().map(|u| (u.key, u.value)).collect();
        let ent = self.entities.get_mut(entity).expect("entity exists");
        for (k, p) in pairs {
            if let (Some(sum), Some(count)) = p
                && count > 0.0
            {
                if admit(ent, &k, &mut self.series, &self.cfg).is_some() {
                    values.push((k, sum / count));
                } else {
                    drops.add("feature_limit", 1);
                }
            }
        }
        let history = self.cfg.history;
        let newest = ent.recent.back().map(|(t, _)| *t);
        let slot = ent.recent.iter_mut().find(|(t, _)| *t == ts);
        let fresh = match (newest, slot) {
            (None, _) => {
                ent.recent.push_back((ts, Slot::First));
                false
            }
            (_, Some((_, slot))) => {
                match slot {
                    Slot::Failed(payload) => {
                        out.push(Outgoing {
                            entity: entity.to_string(),
                            ts_ms: ts,
                            payload: payload.clone(),
                        });
                        *slot = Slot::InFlight;
                    }
                    Slot::Unsettled => drops.add(AWAITING_ACK, n),
                    _ => drops.add("late", n),
                }
                false
            }
            (Some(newest), None) if ts > newest => true,
            (Some(_), None) => {
                drops.add("out_of_order", n);
                return;
            }
        };
        for (k, v) in values {
            if let Some(f) = ent.features.get_mut(&k)
                && ts >= f.at
            {
                f.value = Some(v);
                f.at = ts;
            }
        }
        if !fresh {
            return;
        }
        let mut json = String::with_capacity(64 + 48 * ent.features.len());
        json.push_str("{\"ts\":");
        write_f64(&mut json, ts as f64 / 1000.0);
        json.push_str(",\"service\":");
        write_json_str(&mut json, entity);
        for (k, v) in &ent.labels {
            if RESERVED.contains(&k.as_str()) {
                // Already the event's own keys (the entity is `service`).
                continue;
            }
            json.push(',');
            write_json_str(&mut json, k);
            json.push(':');
            write_json_str(&mut json, v);
        }
        let mut any = false;
        for (k, f) in &ent.features {
            if let Some(v) = f.value {
                json.push(',');
                write_json_str(&mut json, k);
                json.push(':');
                write_f64(&mut json, v);
                any = true;
            }
        }
        json.push('}');
        if !any {
            return;
        }
        ent.recent.push_back((ts, Slot::InFlight));
        while ent.recent.len() > history {
            ent.recent.pop_front();
        }
        out.push(Outgoing {
            entity: entity.to_string(),
            ts_ms: ts,
            payload: json.into(),
        });
    }

    /// After delivery: a failed event is kept so that the request's retry sends it again.
    pub fn settle(&mut self, ev: &Outgoing, delivered: bool) {
        if let Some(slot) = self.slot(ev) {
            *slot = if delivered {
                Slot::Delivered
            } else {
                Slot::Failed(ev.payload.clone())
            };
        }
    }

    /// The request gave up waiting for Kafka's answer on `ev`: until [`Converter::settle`]
    /// records that answer, a retry's samples at its time are dropped as
    /// [`AWAITING_ACK`] (the retry gets 503 and comes again).
    pub fn unsettle(&mut self, ev: &Outgoing) {
        if let Some(slot) = self.slot(ev) {
            *slot = Slot::Unsettled;
        }
    }

    fn slot(&mut self, ev: &Outgoing) -> Option<&mut Slot> {
        let ent = self.entities.get_mut(&ev.entity)?;
        let (_, slot) = ent.recent.iter_mut().find(|(t, _)| *t == ev.ts_ms)?;
        Some(slot)
    }

    /// Forgets entities with no sample newer than `now_ms - stale_ms`.
    pub fn sweep(&mut self, now_ms: i64) {
        let limit = now_ms - self.cfg.stale_ms;
        let mut freed = 0;
        self.entities.retain(|_, e| {
            let newest = e.recent.back().map_or(i64::MIN, |(t, _)| *t);
            let keep = newest >= limit;
            if !keep {
                freed += e.features.len();
            }
            keep
        });
        self.series -= freed;
    }
}

/// The feature `key` of `ent`, made if it is new; `None` when a cap refuses it (`series`
/// counts the features of every entity).
fn admit<'a>(
    ent: &'a mut Entity,
    key: &str,
    series: &mut usize,
    cfg: &Config,
) -> Option<&'a mut Feature> {
    if !ent.features.contains_key(key) {
        if *series >= cfg.max_series || ent.features.len() >= cfg.max_entity_features {
            return None;
        }
        *series += 1;
        ent.features.insert(
            key.to_string(),
            Feature {
                value: None,
                at: i64::MIN,
                counter: None,
            },
        );
    }
    ent.features.get_mut(key)
}

/// `name[:rate]{k="v",...}` (no braces without labels).
fn feature_key(name: &str, kind: Kind, labels: &[(String, String)]) -> String {
    let mut k = String::with_capacity(name.len() + 16 * labels.len() + 5);
    k.push_str(name);
    if matches!(kind, Kind::Counter | Kind::Rate) {
        k.push_str(":rate");
    }
    k.push_str(&label_text(labels));
    k
}

/// `{k="v",...}` with Prometheus' escapes (`\\`, `\"`, `\n`), or "" without labels.
fn label_text(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, labels: &[(&str, &str)], kind: Kind, samples: &[(i64, f64)]) -> SeriesIn {
        SeriesIn {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            context: Vec::new(),
            kind,
            samples: samples.to_vec(),
        }
    }

    fn node(name: &str, extra: &[(&str, &str)], samples: &[(i64, f64)]) -> SeriesIn {
        let mut l = vec![("job", "node"), ("instance", "h:9100")];
        l.extend_from_slice(extra);
        series(name, &l, Kind::FromName, samples)
    }

    fn json(o: &Outgoing) -> serde_json::Value {
        serde_json::from_str(&o.payload).unwrap()
    }

    fn deliver(c: &mut Converter, out: &[Outgoing]) {
        for o in out {
            c.settle(o, true);
        }
    }

    #[test]
    fn samples_of_one_entity_and_timestamp_make_one_event_with_rates_and_names() {
        let mut c = Converter::new(Config::default());
        let mut d = Drops::default();
        let first = c.ingest(
            vec![
                node("node_load1", &[], &[(1000, 0.5)]),
                node(
                    "node_cpu_seconds_total",
                    &[("mode", "user"), ("cpu", "0")],
                    &[(1000, 100.0)],
                ),
            ],
            &mut d,
        );
        assert!(first.is_empty(), "the first timestamp makes no event");
        let out = c.ingest(
            vec![
                node("node_load1", &[], &[(3000, 0.75)]),
                node(
                    "node_cpu_seconds_total",
                    &[("mode", "user"), ("cpu", "0")],
                    &[(3000, 101.5)],
                ),
            ],
            &mut d,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].entity, "node/h:9100");
        let v = json(&out[0]);
        assert_eq!(v["ts"], 3.0);
        assert_eq!(v["service"], "node/h:9100");
        assert_eq!(v["job"], "node");
        assert_eq!(v["instance"], "h:9100");
        assert_eq!(v["node_load1"], 0.75);
        assert_eq!(
            v["node_cpu_seconds_total:rate{cpu=\"0\",mode=\"user\"}"],
            0.75
        );
        assert_eq!(d, Drops::default());
        // The event parses as kanary input with both features.
        let ev = kanary_core::event::Event::parse(out[0].payload.as_bytes()).unwrap();
        assert_eq!(ev.feature_names().len(), 2);
        assert_eq!(ev.service, "node/h:9100");
    }

    #[test]
    fn a_counter_reset_counts_from_zero_and_a_retry_gives_the_same_rate() {
        let mut c = Converter::new(Config::default());
        let mut d = Drops::default();
        let s = |t, v| node("reqs_total", &[], &[(t, v)]);
        c.ingest(vec![s(0, 50.0)], &mut d);
        let a = c.ingest(vec![s(10_000, 150.0)], &mut d);
        assert_eq!(json(&a[0])["reqs_total:rate"], 10.0);
        // Restarted: the counter went down to 20, so it counted 20 in those 10 s.
        let b = c.ingest(vec![s(20_000, 20.0)], &mut d);
        assert_eq!(json(&b[0])["reqs_total:rate"], 2.0);
        // Its delivery failed: the retried request sends exactly the same event.
        c.settle(&b[0], false);
        let again = c.ingest(vec![s(20_000, 20.0)], &mut d);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].payload, b[0].payload);
        // Delivered now: a third copy is only counted.
        deliver(&mut c, &again);
        assert!(c.ingest(vec![s(20_000, 20.0)], &mut d).is_empty());
        assert_eq!(d.0.get("late"), Some(&1));
    }

    #[test]
    fn a_retry_waits_for_kafkas_late_verdict_and_then_sends_only_what_kafka_lacks() {
        let mut c = Converter::new(Config::default());
        let mut d = Drops::default();
        let s = |t, v| node("node_load1", &[], &[(t, v)]);
        c.ingest(vec![s(0, 1.0)], &mut d);
        for verdict in [false, true] {
            let t = if verdict { 2000 } else { 1000 };
            let sent = c.ingest(vec![s(t, 2.0)], &mut d);
            assert_eq!(sent.len(), 1);
            // The request was answered before Kafka's verdict: its retry sends nothing.
            c.unsettle(&sent[0]);
            assert!(c.ingest(vec![s(t, 2.0)], &mut d).is_empty());
            assert_eq!(d.0.remove(AWAITING_ACK), Some(1));
            c.settle(&sent[0], verdict);
            let retry = c.ingest(vec![s(t, 2.0)], &mut d);
            if verdict {
                // Kafka has it: the retry's samples are only late.
                assert!(retry.is_empty());
                assert_eq!(d.0.remove("late"), Some(1));
            } else {
                assert_eq!(retry.len(), 1);
                assert_eq!(retry[0].payload, sent[0].payload);
                deliver(&mut c, &retry);
            }
            assert_eq!(d, Drops::default());
        }
    }

    #[test]
    fn a_scrape_split_between_requests_still_makes_whole_events() {
        let mut c = Converter::new(Config::default());
        let mut d = Drops::default();
        c.ingest(
            vec![node("a", &[], &[(0, 1.0)]), node("b", &[], &[(0, 2.0)])],
            &mut d,
        );
        // `b` at 1000 comes in a later request than `a` at 1000.
        let out = c.ingest(vec![node("a", &[], &[(1000, 3.0)])], &mut d);
        let v = json(&out[0]);
        assert_eq!((v["a"].as_f64(), v["b"].as_f64()), (Some(3.0), Some(2.0)));
        deliver(&mut c, &out);
        assert!(
            c.ingest(vec![node("b", &[], &[(1000, 4.0)])], &mut d)
                .is_empty()
        );
        // Its value is carried into the next event.
        let out = c.ingest(vec![node("a", &[], &[(2000, 5.0)])], &mut d);
        let v = json(&out[0]);
        assert_eq!((v["a"].as_f64(), v["b"].as_f64()), (Some(5.0), Some(4.0)));
    }

    #[test]
    fn several_timestamps_in_one_request_make_one_event_each_in_order() {
        let mut c = Converter::new(Config::default());
        let mut d = Drops::default();
        let out = c.ingest(
            vec![
                node("g", &[], &[(0, 1.0), (1000, 2.0), (2000, 3.0)]),
                node("c_total", &[], &[(0, 0.0), (1000, 5.0), (2000, 5.0)]),
            ],
            &mut d,
        );
        let got: Vec<(f64, f64, f64)> = out
            .iter()
            .map(|o| {
                let v = json(o);
                (
                    v["ts"].as_f64().unwrap(),
                    v["g"].as_f64().unwrap(),
                    v["c_total:rate"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, vec![(1.0, 2.0, 5.0), (2.0, 3.0, 0.0)]);
    }

    #[test]
    fn histograms_give_count_and_sum_rates_and_the_mean_and_buckets_are_skipped() {
        let mut c = Converter::new(Config::default());
        let mut d = Drops::default();
        let h = |t: i64, count: f64, sum: f64| {
            vec![
                node("lat_seconds_count", &[("path", "/")], &[(t, count)]),
                node("lat_seconds_sum", &[("path", "/")], &[(t, sum)]),
                node(
                    "lat_seconds_bucket",
                    &[("path", "/"), ("le", "1")],
                    &[(t, count)],
                ),
            ]
        };
        c.ingest(h(0, 10.0, 1.0), &mut d);
        let out = c.ingest(h(2000, 14.0, 3.0), &mut d);
        let v = json(&out[0]);
        assert_eq!(v["lat_seconds_count:rate{path=\"/\"}"], 2.0);
        assert_eq!(v["lat_seconds_sum:rate{path=\"/\"}"], 1.0);
        assert_eq!(v["lat_seconds:mean{path=\"/\"}"], 0.5);
        assert_eq!(d.0.get("histogram_bucket"), Some(&2));
        // No new observations: the mean carries its last value, it does not become 0/0.
        let out = c.ingest(h(4000, 14.0, 3.0), &mut d);
        assert_eq!(json(&out[0])["lat_seconds:mean{path=\"/\"}"], 0.5);
    }

    #[test]
    fn metadata_types_override_the_name_rules() {
        let mut c = Converter::new(Config::default());
        c.set_family("process_cpu_seconds", Kind::Counter);
        c.set_family("weird_total", Kind::Gauge);
        let mut d = Drops::default();
        c.ingest(
            vec![
                node("process_cpu_seconds", &[], &[(0, 1.0)]),
                node("weird_total", &[], &[(0, 7.0)]),
            ],
            &mut d,
        );
        let out = c.ingest(
            vec![
                node("process_cpu_seconds", &[], &[(1000, 1.5)]),
                node("weird_total", &[], &[(1000, 8.0)]),
            ],
            &mut d,
        );
        let v = json(&out[0]);
        assert_eq!(v["process_cpu_seconds:rate"], 0.5);
        assert_eq!(v["weird_total"], 8.0);
    }

    #[test]
    fn filters_entities_and_caps_are_counted_never_silent() {
        let cfg = Config {
            include: Some(RegexSet::new(["^node_"]).unwrap()),
            exclude: Some(RegexSet::new(["^node_skip"]).unwrap()),
            max_entity_features: 2,
            ..Config::default()
        };
        let mut c = Converter::new(cfg);
        let mut d = Drops::default();
        c.ingest(
            vec![
                node("go_goroutines", &[], &[(0, 1.0)]),
                node("node_skip_me", &[], &[(0, 1.0)]),
                series("node_x", &[("other", "1")], Kind::FromName, &[(0, 1.0)]),
                node("node_a", &[], &[(0, 1.0)]),
                node("node_b", &[], &[(0, 1.0)]),
                node("node_c", &[], &[(0, 1.0), (1000, 2.0)]),
                node("node_a", &[], &[(500, f64::NAN)]),
            ],
            &mut d,
        );
        assert_eq!(d.0.get("excluded"), Some(&2));
        assert_eq!(d.0.get("no_entity"), Some(&1));
        assert_eq!(d.0.get("feature_limit"), Some(&2));
        assert_eq!(d.0.get("non_finite"), Some(&1));
        assert_eq!(c.series(), 2);
    }

    #[test]
    fn the_series_cap_holds_over_entities_and_stale_entities_are_forgotten() {
        let mut c = Converter::new(Config {
            max_series: 3,
            ..Config::default()
        });
        let mut d = Drops::default();
        for i in 0..5 {
            let inst = format!("h{i}");
            c.ingest(
                vec![series(
                    "up",
                    &[("job", "j"), ("instance", &inst)],
                    Kind::Gauge,
                    &[(0, 1.0)],
                )],
                &mut d,
            );
        }
        assert_eq!(c.series(), 3);
        assert_eq!(d.0.get("series_limit"), Some(&2));
        c.sweep(10 * 60 * 1000);
        assert_eq!((c.series(), c.entities()), (0, 0));
    }

    #[test]
    fn a_series_that_ended_keeps_its_last_value_so_the_columns_stay_the_same() {
        let mut c = Converter::new(Config::default());
        let mut d = Drops::default();
        c.ingest(
            vec![node("a", &[], &[(0, 1.0)]), node("b", &[], &[(0, 1.0)])],
            &mut d,
        );
        let out = c.ingest(
            vec![
                node("a", &[], &[(1000, 2.0)]),
                node("b", &[], &[(1000, f64::from_bits(STALE_NAN))]),
            ],
            &mut d,
        );
        let v = json(&out[0]);
        assert_eq!((v["a"].as_f64(), v["b"].as_f64()), (Some(2.0), Some(1.0)));
        assert_eq!(c.series(), 2);
        assert_eq!(d, Drops::default());
    }

    #[test]
    fn label_values_are_escaped_and_entity_labels_keep_their_order() {
        let c = Converter::new(Config {
            entity_labels: vec!["service".into(), "pod".into()],
            ..Config::default()
        });
        let (name, ent, rest) = c
            .split(
                vec![
                    ("pod".into(), "p-1".into()),
                    ("zz".into(), "a\"b\\c\nd".into()),
                    ("service".into(), "cart".into()),
                    ("__name__".into(), "x".into()),
                    ("aa".into(), "1".into()),
                ],
                vec![
                    ("service".into(), "ignored: a label wins".into()),
                    ("zone".into(), "z".into()),
                ],
            )
            .unwrap();
        assert_eq!(name, "cart/p-1");
        assert_eq!(ent[0].0, "service");
        assert_eq!(
            feature_key("m", Kind::Gauge, &rest),
            "m{aa=\"1\",zz=\"a\\\"b\\\\c\\nd\"}"
        );
    }
}
