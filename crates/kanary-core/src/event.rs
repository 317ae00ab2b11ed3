//! Metric events: parsing, validation and serialisation.
//!
//! One JSON object per message (see docs/events.md). The thesis producer's flat form is accepted as
//! is: `{"ts": 1732550000.123, "latency": 101.2, "cpu": 35.1, "memory": 498.7, "label": 0}`.
//! `ts` is required, `service` defaults to `"default"`, `label` (0/1) is optional ground truth,
//! every other numeric field is a feature and string fields are metadata.
//!
//! Bad input never panics: it yields an [`EventError`] whose [`EventError::reason`] is a short,
//! stable label used for the `detector_invalid_events_total{reason}` metric and dead-letter
//! headers.
//!
//! (Over 600 lines only with its tests, which stay beside the hand-written parser.)

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

/// Service name used when an event carries none.
pub const DEFAULT_SERVICE: &str = "default";
/// Default upper bound on the size of one serialised event.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;

/// Numeric-field names above this many per event are not shared.
const SHARED_NAMES: usize = 64;

thread_local! {
    /// The numeric-field names of the last event parsed on this thread, by position.
    static LAST_NAMES: RefCell<Vec<Arc<str>>> = const { RefCell::new(Vec::new()) };
}

/// The name of the `i`-th numeric field of an event being parsed: the previous event's
/// `i`-th name when it is the same (one comparison), else a new one, kept for the next event.
fn shared_name(i: usize, k: &str) -> Arc<str> {
    LAST_NAMES.with_borrow_mut(|names| {
        if let Some(n) = names.get(i)
            && **n == *k
        {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(k);
        if i < names.len() {
            names[i] = n.clone();
        } else if i == names.len() && i < SHARED_NAMES {
            names.push(n.clone());
        }
        n
    })
}

/// A parsed, validated metric event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub ts: f64,
    /// The service the event describes (models and windows are kept per service).
    pub service: String,
    /// Numeric fields other than `ts` and `label`, in document order. Names are shared: the
    /// events of a stream repeat them, and a parsed event takes the previous event's name
    /// (parsed on the same thread) when it is the same, instead of allocating it again.
    pub fields: Vec<(Arc<str>, f64)>,
    /// String fields other than `service` (e.g. the simulator's `anomaly`), in document order.
    pub meta: Vec<(String, String)>,
    /// Names of fields whose value is neither a number nor a string (bool, null, array, object).
    pub other: Vec<String>,
    /// Ground truth, when present. Used for evaluation only.
    pub label: Option<bool>,
}

/// Why an input could not be used. Each variant has a distinct [`reason`](EventError::reason).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("event of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("JSON value is not an object")]
    NotObject,
    #[error("missing required field `ts`")]
    MissingTs,
    #[error("missing feature `{0}`")]
    MissingFeature(String),
    #[error("field `{0}` is not a finite number")]
    NonFinite(String),
    #[error("field `{field}` has the wrong type: expected {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
}

impl EventError {
    /// Every reason label, for pre-registering metrics and documentation.
    pub const REASONS: [&'static str; 7] = [
        "too_large",
        "not_json",
        "not_object",
        "missing_ts",
        "missing_feature",
        "non_finite",
        "wrong_type",
    ];

    /// Short stable label for metrics and dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            EventError::TooLarge { .. } => "too_large",
            EventError::NotJson(_) => "not_json",
            EventError::NotObject => "not_object",
            EventError::MissingTs => "missing_ts",
            EventError::MissingFeature(_) => "missing_feature",
            EventError::NonFinite(_) => "non_finite",
            EventError::WrongType { .. } => "wrong_type",
        }
    }
}

impl Event {
    /// A new event with no fields, for building events in code.
    pub fn new(ts: f64, service: impl Into<String>) -> Self {
        Event {
            ts,
            service: service.into(),
            fields: Vec::new(),
            meta: Vec::new(),
            other: Vec::new(),
            label: None,
        }
    }

    /// Adds a numeric field (builder style).
    pub fn with_field(mut self, name: impl Into<Arc<str>>, value: f64) -> Self {
        self.fields.push((name.into(), value));
        self
    }

    /// Parses and validates one serialised event of at most [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn parse(bytes: &[u8]) -> Result<Event, EventError> {
        Event::parse_with_limit(bytes, DEFAULT_MAX_EVENT_BYTES)
    }

    /// Parses and validates one serialised event of at most `limit` bytes.
    pub fn parse_with_limit(bytes: &[u8], limit: usize) -> Result<Event, EventError> {
        Event::parse_into(bytes, limit, Event::empty())
    }

    /// [`Event::parse`] into the buffers of `slot`, an event no longer needed: a stream of
    /// events parsed into recycled ones allocates nothing once they hold the longest service
    /// name and the most fields seen.
    pub fn parse_reusing(bytes: &[u8], slot: Event) -> Result<Event, EventError> {
        Event::parse_into(bytes, DEFAULT_MAX_EVENT_BYTES, slot)
    }

    /// An event with nothing in it (and no buffers), to parse into.
    pub fn empty() -> Event {
        Event {
            ts: 0.0,
            service: String::new(),
            fields: Vec::new(),
            meta: Vec::new(),
            other: Vec::new(),
            label: None,
        }
    }

    fn parse_into(bytes: &[u8], limit: usize, slot: Event) -> Result<Event, EventError> {
        if bytes.len() > limit {
            return Err(EventError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed = EventSeed(slot)
            .deserialize(&mut de)
            .and_then(|ev| de.end().map(|()| ev));
        match parsed {
            Ok(ev) => ev,
            Err(e) => Err(classify_json_error(bytes, e)),
        }
    }

    /// The value of numeric field `name` (the last one if repeated).
    pub fn field(&self, name: &str) -> Option<f64> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| **k == *name)
            .map(|(_, v)| *v)
    }

    /// The value of string field `name` (the last one if repeated).
    pub fn meta(&self, name: &str) -> Option<&str> {
        self.meta
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Names of the numeric features, in document order, without repeats.
    pub fn feature_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::with_capacity(self.fields.len());
        for (k, _) in &self.fields {
            if !names.iter().any(|n| **n == **k) {
                names.push(k.to_string());
            }
        }
        names
    }

    /// Writes the values of `features` into `out` (cleared first), or says which is missing or
    /// of the wrong type.
    pub fn extract_into(&self, features: &[String], out: &mut Vec<f64>) -> Result<(), EventError> {
        out.clear();
        for name in features {
            match self.field(name) {
                Some(v) => out.push(v),
                None => {
                    let present = self.meta.iter().any(|(k, _)| k == name)
                        || self.other.iter().any(|k| k == name)
                        || name == "service";
                    return Err(if present {
                        EventError::WrongType {
                            field: name.clone(),
                            expected: "number",
                        }
                    } else {
                        EventError::MissingFeature(name.clone())
                    });
                }
            }
        }
        Ok(())
    }

    /// Serialises the event as one compact JSON object (no trailing newline). The service is
    /// omitted when it is the default, so that the thesis' flat form round-trips unchanged.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(128);
        self.write_json(&mut s);
        s
    }

    /// Appends the JSON form of the event to `out`.
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"ts\":");
        write_f64(out, self.ts);
        if self.service != DEFAULT_SERVICE {
            out.push_str(",\"service\":");
            write_json_str(out, &self.service);
        }
        for (k, v) in &self.fields {
            out.push(',');
            write_json_str(out, k);
            out.push(':');
            write_f64(out, *v);
        }
        if let Some(l) = self.label {
            out.push_str(if l { ",\"label\":1" } else { ",\"label\":0" });
        }
        for (k, v) in &self.meta {
            out.push(',');
            write_json_str(out, k);
            out.push(':');
            write_json_str(out, v);
        }
        out.push('}');
    }
}

/// Writes a finite f64 in JSON form (integers without a fraction are written as `x.0`-free
/// integers; non-finite values, which events never hold, are written as `null`).
pub fn write_f64(out: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.push_str("null");
    }
}

/// Writes `{"name": value, ...}` for parallel slices of names and values.
pub fn write_json_object(out: &mut String, names: &[String], values: &[f64]) {
    out.push('{');
    for (i, (k, v)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(out, k);
        out.push(':');
        write_f64(out, *v);
    }
    out.push('}');
}

/// Writes `s` as a JSON string literal.
pub fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn classify_json_error(bytes: &[u8], e: serde_json::Error) -> EventError {
    // Our visitor reports validation failures as custom errors carrying an encoded EventError.
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix(CUSTOM_PREFIX) {
        return decode_custom(rest);
    }
    if e.is_syntax() || e.is_eof() {
        // Python's json.dumps writes NaN and Infinity as bare tokens: a non-finite value, not
        // garbage. serde_json reports numbers beyond f64 as "number out of range".
        if msg.contains("number out of range") {
            return EventError::NonFinite(field_before_error(bytes, e.column(), e.line()));
        }
        if let Some(field) = bare_non_finite_token(bytes) {
            return EventError::NonFinite(field);
        }
    }
    if e.is_data() && msg.contains("invalid type") {
        return EventError::NotObject;
    }
    EventError::NotJson(truncate(&msg, 200))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// If `bytes` holds a bare `NaN`, `Infinity` or `-Infinity` token outside a string, the name of
/// the field it belongs to (or `?`).
fn bare_non_finite_token(bytes: &[u8]) -> Option<String> {
    let mut in_str = false;
    let mut escaped = false;
    let mut last_key: Option<(usize, usize)> = None;
    let mut str_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
                // A string followed by ':' is a key.
                let mut j = i + 1;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < bytes.len() && bytes[j] == b':' {
                    last_key = Some((str_start, i));
                }
            }
        } else if b == b'"' {
            in_str = true;
            str_start = i + 1;
        } else if bytes[i..].starts_with(b"NaN") || bytes[i..].starts_with(b"Infinity") {
            let name = last_key
                .map(|(s, e)| String::from_utf8_lossy(&bytes[s..e]).into_owned())
                .unwrap_or_else(|| "?".to_string());
            return Some(name);
        }
        i += 1;
    }
    None
}

fn field_before_error(bytes: &[u8], column: usize, line: usize) -> String {
    // Find the byte offset of (line, column), then the last key before it.
    let mut offset = 0;
    let mut cur_line = 1;
    for (i, &b) in bytes.iter().enumerate() {
        if cur_line == line {
            offset = (i + column).min(bytes.len());
            break;
        }
        if b == b'\n' {
            cur_line += 1;
        }
    }
    let prefix = &bytes[..offset];
    let text = String::from_utf8_lossy(prefix);
    // The last `"key":` before the offending number.
    if let Some(colon) = text.rfind(':') {
        let before = &text[..colon];
        let before = before.trim_end();
        if let Some(stripped) = before.strip_suffix('"')
            && let Some(start) = stripped.rfind('"')
        {
            return stripped[start + 1..].to_string();
        }
    }
    "?".to_string()
}

const CUSTOM_PREFIX: &str = "kanary:";

fn encode_custom(e: &EventError) -> String {
    let arg = match e {
        EventError::MissingFeature(f) | EventError::NonFinite(f) => f.clone(),
        EventError::WrongType { field, expected } => format!("{field}\u{1}{expected}"),
        _ => String::new(),
    };
    format!("{CUSTOM_PREFIX}{}\u{0}{arg}", e.reason())
}

fn decode_custom(s: &str) -> EventError {
    // serde_json appends " at line L column C" to custom messages.
    let s = match s.rfind(" at line ") {
        Some(i) => &s[..i],
        None => s,
    };
    let (reason, arg) = s.split_once('\u{0}').unwrap_or((s, ""));
    match reason {
        "missing_ts" => EventError::MissingTs,
        "non_finite" => EventError::NonFinite(arg.to_string()),
        "missing_feature" => EventError::MissingFeature(arg.to_string()),
        "wrong_type" => {
            let (field, expected) = arg.split_once('\u{1}').unwrap_or((arg, "number"));
            let expected = match expected {
                "string" => "string",
                "0 or 1" => "0 or 1",
                _ => "number",
            };
            EventError::WrongType {
                field: field.to_string(),
                expected,
            }
        }
        _ => EventError::NotObject,
    }
}

fn custom<E: de::Error>(e: EventError) -> E {
    E::custom(encode_custom(&e))
}

/// A JSON value as far as events care.
enum FieldValue<'a> {
    Num(f64),
    /// Borrowed from the input when it has no escapes.
    Str(Cow<'a, str>),
    Bool(bool),
    Null,
    Nested,
}

impl<'de> Deserialize<'de> for FieldValue<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_f64<E>(self, v: f64) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Num(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Num(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Num(v as f64))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Str(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Bool(v))
            }
            fn visit_unit<E>(self) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Null)
            }
            fn visit_none<E>(self) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<FieldValue<'de>, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FieldValue::Nested)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<FieldValue<'de>, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(FieldValue::Nested)
            }
        }
        d.deserialize_any(V)
    }
}

/// A map key, borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Deserialises a whole event; the inner `Result` carries validation errors that are only
/// known once the object is complete (a missing `ts`).
/// Holds the event whose buffers the parsed event reuses.
struct EventSeed(Event);

impl<'de> DeserializeSeed<'de> for EventSeed {
    type Value = Result<Event, EventError>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(EventVisitor(self.0))
    }
}

struct EventVisitor(Event);

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Result<Event, EventError>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Event {
            mut service,
            mut fields,
            mut meta,
            mut other,
            ..
        } = self.0;
        service.clear();
        // The recycled event's fields are overwritten in place: a stream repeats its names
        // in the same order, and one whose name matches keeps it (no lookup, no count
        // change). `nf` fields are parsed so far; the rest are cut off at the end.
        let mut nf = 0;
        meta.clear();
        other.clear();
        if fields.capacity() == 0 {
            fields.reserve(4);
        }
        let mut ts: Option<f64> = None;
        let mut named = false;
        let mut label: Option<bool> = None;
        while let Some(Key(k)) = map.next_key::<Key>()? {
            let v: FieldValue = map.next_value()?;
            match (k.as_ref(), v) {
                ("ts", FieldValue::Num(x)) => {
                    if !x.is_finite() {
                        return Err(custom(EventError::NonFinite("ts".into())));
                    }
                    ts = Some(x);
                }
                ("ts", _) => {
                    return Err(custom(EventError::WrongType {
                        field: "ts".into(),
                        expected: "number",
                    }));
                }
                ("service", FieldValue::Str(s)) => {
                    service.clear();
                    service.push_str(&s);
                    named = true;
                }
                ("service", FieldValue::Null) => {}
                ("service", _) => {
                    return Err(custom(EventError::WrongType {
                        field: "service".into(),
                        expected: "string",
                    }));
                }
                ("label", FieldValue::Null) => label = None,
                ("label", FieldValue::Bool(b)) => label = Some(b),
                ("label", FieldValue::Num(x)) if x == 0.0 || x == 1.0 => label = Some(x == 1.0),
                ("label", _) => {
                    return Err(custom(EventError::WrongType {
                        field: "label".into(),
                        expected: "0 or 1",
                    }));
                }
                (_, FieldValue::Num(x)) => {
                    if !x.is_finite() {
                        return Err(custom(EventError::NonFinite(k.into_owned())));
                    }
                    match fields.get_mut(nf) {
                        Some(f) => {
                            if *f.0 != *k {
                                f.0 = shared_name(nf, &k);
                            }
                            f.1 = x;
                        }
                        None => fields.push((shared_name(nf, &k), x)),
                    }
                    nf += 1;
                }
                (_, FieldValue::Str(s)) => meta.push((k.into_owned(), s.into_owned())),
                (_, FieldValue::Bool(_) | FieldValue::Null | FieldValue::Nested) => {
                    other.push(k.into_owned())
                }
            }
        }
        fields.truncate(nf);
        let Some(ts) = ts else {
            return Ok(Err(EventError::MissingTs));
        };
        if !named {
            service.clear();
            service.push_str(DEFAULT_SERVICE);
        }
        Ok(Ok(Event {
            ts,
            service,
            fields,
            meta,
            other,
            label,
        }))
    }

    // Any other top-level JSON value is valid JSON but not an event.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotObject))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotObject))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotObject))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotObject))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotObject))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotObject))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err(EventError::NotObject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_event_parsed_into_a_recycled_one_is_the_event_parsed_afresh() {
        let inputs: &[&[u8]] = &[
            br#"{"ts":1,"service":"a-rather-long-service-name","cpu":0.5,"mem":2,"anomaly":"cpu","ok":true,"label":1}"#,
            br#"{"ts":2,"cpu":0.7}"#,
            br#"{"ts":3,"service":null,"x":1}"#,
            br#"{"ts":4,"service":"b\u00e9","service":"c","cpu":1,"cpu":2}"#,
            br#"{"ts":5,"service":"d","note":"with \"escapes\"","tags":[1,2]}"#,
            br#"{"cpu":1}"#,
            br#"{"ts":6,"service":7}"#,
            br#"not json"#,
            br#"{"ts":7,"service":"e","mem":3}"#,
        ];
        // Every input parsed into the event of every other (and into a fresh one) reads the
        // same as parsed on its own, errors included.
        for slot_input in inputs {
            for input in inputs {
                let slot = Event::parse(slot_input).unwrap_or_else(|_| Event::empty());
                assert_eq!(
                    Event::parse_reusing(input, slot),
                    Event::parse(input),
                    "{} parsed into {}",
                    String::from_utf8_lossy(input),
                    String::from_utf8_lossy(slot_input)
                );
            }
        }
        // The recycled event's buffers are used: no new service name buffer once it fits.
        let slot = Event::parse(inputs[0]).unwrap();
        let cap = slot.service.capacity();
        let ev = Event::parse_reusing(inputs[8], slot).unwrap();
        assert_eq!(ev.service, "e");
        assert_eq!(ev.service.capacity(), cap);
    }

    #[test]
    fn repeated_field_names_are_shared_and_changed_ones_are_not_mixed_up() {
        let a = Event::parse(br#"{"ts":1,"cpu":0.5,"mem":2}"#).unwrap();
        let b = Event::parse(br#"{"ts":2,"cpu":0.7,"mem":3}"#).unwrap();
        assert!(Arc::ptr_eq(&a.fields[0].0, &b.fields[0].0));
        assert!(Arc::ptr_eq(&a.fields[1].0, &b.fields[1].0));
        // Names that move, change or are new read as written.
        let c = Event::parse(br#"{"ts":3,"mem":4,"cpu":0.1,"disk":9}"#).unwrap();
        let got: Vec<(&str, f64)> = c.fields.iter().map(|(k, v)| (&**k, *v)).collect();
        assert_eq!(got, [("mem", 4.0), ("cpu", 0.1), ("disk", 9.0)]);
        assert_eq!(c.field("cpu"), Some(0.1));
        assert_eq!(b.field("cpu"), Some(0.7));
    }

    #[test]
    fn parses_thesis_flat_form() {
        let ev = Event::parse(
            br#"{"ts": 1732550000.123, "latency": 101.2, "cpu": 35.1, "memory": 498.7, "label": 0}"#,
        )
        .unwrap();
        assert_eq!(ev.ts, 1732550000.123);
        assert_eq!(ev.service, "default");
        assert_eq!(ev.label, Some(false));
        assert_eq!(ev.feature_names(), names(&["latency", "cpu", "memory"]));
        assert_eq!(ev.field("cpu"), Some(35.1));
    }

    #[test]
    fn service_label_and_metadata() {
        let ev = Event::parse(
            br#"{"ts":1,"service":"checkout","latency":5,"anomaly":"latency","label":true,"ok":false}"#,
        )
        .unwrap();
        assert_eq!(ev.service, "checkout");
        assert_eq!(ev.label, Some(true));
        assert_eq!(ev.meta("anomaly"), Some("latency"));
        assert_eq!(ev.other, names(&["ok"]));
        assert_eq!(ev.feature_names(), names(&["latency"]));
    }

    #[test]
    fn each_kind_of_bad_input_has_its_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json at all", "not_json"),
            (b"{\"ts\": 1, \"cpu\": ", "not_json"),
            (b"\xff\xfe", "not_json"),
            (b"[1,2,3]", "not_object"),
            (b"42", "not_object"),
            (b"{\"cpu\": 1}", "missing_ts"),
            (b"{\"ts\": 1, \"cpu\": NaN}", "non_finite"),
            (b"{\"ts\": 1, \"cpu\": Infinity}", "non_finite"),
            (b"{\"ts\": 1, \"cpu\": -Infinity}", "non_finite"),
            (b"{\"ts\": 1, \"cpu\": 1e999}", "non_finite"),
            (b"{\"ts\": \"yesterday\", \"cpu\": 1}", "wrong_type"),
            (b"{\"ts\": 1, \"service\": 7}", "wrong_type"),
            (b"{\"ts\": 1, \"label\": 2}", "wrong_type"),
        ];
        for (input, reason) in cases {
            let err = Event::parse(input).unwrap_err();
            assert_eq!(
                err.reason(),
                *reason,
                "{:?} gave {err:?}",
                String::from_utf8_lossy(input)
            );
        }
        let big = vec![b' '; DEFAULT_MAX_EVENT_BYTES + 1];
        assert_eq!(Event::parse(&big).unwrap_err().reason(), "too_large");
    }

    #[test]
    fn non_finite_names_the_field() {
        let err = Event::parse(br#"{"ts": 1, "latency": 3, "cpu": NaN}"#).unwrap_err();
        assert_eq!(err, EventError::NonFinite("cpu".into()));
        let err = Event::parse(br#"{"ts": 1, "memory": 1e400}"#).unwrap_err();
        assert_eq!(err, EventError::NonFinite("memory".into()));
    }

    #[test]
    fn extraction_distinguishes_missing_and_wrong_type() {
        let ev = Event::parse(br#"{"ts":1,"latency":5,"cpu":"high","memory":null}"#).unwrap();
        let mut out = Vec::new();
        ev.extract_into(&names(&["latency"]), &mut out).unwrap();
        assert_eq!(out, vec![5.0]);
        assert_eq!(
            ev.extract_into(&names(&["latency", "cpu"]), &mut out)
                .unwrap_err()
                .reason(),
            "wrong_type"
        );
        assert_eq!(
            ev.extract_into(&names(&["memory"]), &mut out)
                .unwrap_err()
                .reason(),
            "wrong_type"
        );
        assert_eq!(
            ev.extract_into(&names(&["disk"]), &mut out).unwrap_err(),
            EventError::MissingFeature("disk".into())
        );
    }

    #[test]
    fn json_round_trip() {
        let mut ev = Event::new(1732550000.5, "pay\"ments")
            .with_field("latency", 101.25)
            .with_field("cpu", 35.0);
        ev.label = Some(true);
        ev.meta.push(("anomaly".into(), "latency".into()));
        let back = Event::parse(ev.to_json().as_bytes()).unwrap();
        assert_eq!(back, ev);
        // The default service is omitted, as in the thesis' form.
        let flat = Event::new(1.0, DEFAULT_SERVICE).with_field("cpu", 1.5);
        assert_eq!(flat.to_json(), r#"{"ts":1,"cpu":1.5}"#);
    }

    #[test]
    fn escaped_keys_are_read() {
        let ev = Event::parse(br#"{"ts":1,"c\u0070u":2}"#).unwrap();
        assert_eq!(ev.field("cpu"), Some(2.0));
    }
}
