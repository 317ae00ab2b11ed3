//! What a model is, for the registry: the traits a model implements, its parameters, and the
//! [`ModelSpec`] that describes it once (name, one-line summary, parameter schema, default
//! threshold rule, constructor, how its state is saved).
//!
//! A model is one file under `models/` that defines its parameters (a serde struct with
//! defaults and typed validation), its state, and its `SPEC`; adding a model means writing that
//! file and adding one line to the list in [`crate::catalog`]. `--model` parsing, `--help`,
//! `kanary models`, model files, `kanary nab`, the live page and the conformance tests all read
//! that list. This module imports no model, so models depend on it and never the reverse.
//!
//! Two shapes of model exist:
//! - *fitted* ([`Build::Fitted`]): fitted once per service on training rows, then scores
//!   ([`FittedModel`], a [`Detector`] whose state can be saved);
//! - *streaming* ([`Build::Streaming`]): scores from the first event and keeps learning
//!   ([`StreamingDetector`]).

use std::cell::Cell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::thread::LocalKey;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::streaming::StreamingDetector;
use crate::threshold::{ThresholdError, ThresholdMethod};

/// A model's parameters as given by a user: keys and JSON values (from `--param` or a TOML
/// table), checked against the model's parameter struct.
pub type ParamMap = serde_json::Map<String, serde_json::Value>;

/// A fitted anomaly-scoring model over standardised feature rows.
pub trait Detector {
    /// Number of input features.
    fn dim(&self) -> usize;
    /// Anomaly score of one row; higher is more anomalous.
    fn score(&self, x: &[f64]) -> f64;
    /// Scores `out.len()` rows of `xs` (row-major).
    fn score_batch(&self, xs: &[f64], out: &mut [f64]) {
        let d = self.dim();
        for (o, row) in out.iter_mut().zip(xs.chunks_exact(d)) {
            *o = self.score(row);
        }
    }
    /// Each feature's share of the score of `x` (non-negative, summing to 1 unless all zero).
    fn contributions(&self, x: &[f64], out: &mut [f64]);
}

/// Errors from fitting a detector.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("no features to fit on")]
    NoFeatures,
    #[error("need at least {need} training rows, got {got}")]
    TooFewRows { need: usize, got: usize },
    /// The model's own fitting failed (its error, in its words).
    #[error("{model}: {reason}")]
    Model { model: &'static str, reason: String },
    #[error("threshold: {0}")]
    Threshold(#[from] ThresholdError),
    #[error("`{0}` is a streaming model: it scores from the first event and is never fitted")]
    Streaming(ModelKind),
    #[error("{0}")]
    Params(#[from] ParamError),
}

/// A fitted model: a [`Detector`] whose state can be saved and checked.
pub trait FittedModel: Detector + fmt::Debug + Send + Sync {
    /// The model's state in the model-file encoding (postcard).
    fn save(&self) -> Vec<u8>;
    /// Checks internal consistency (for models read from files).
    fn validate(&self) -> Result<(), String>;
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn FittedModel>;
}

/// Fits a model on standardised rows (row-major, `dim` columns) with a seed; returns it with
/// the training rows' scores (out-of-bag where the model has them, in-sample otherwise).
pub type FitFn = fn(&ParamMap, &[f64], usize, u64) -> Result<FittedPair, FitError>;
/// A fitted model and the scores of its training rows.
pub type FittedPair = (Box<dyn FittedModel>, Vec<f64>);
/// Restores a fitted model from [`FittedModel::save`].
pub type LoadFittedFn = fn(&[u8]) -> Result<Box<dyn FittedModel>, String>;
/// Makes a fresh streaming model over `dim` columns with a seed.
pub type NewStreamingFn =
    fn(&ParamMap, usize, u64) -> Result<Box<dyn StreamingDetector>, ParamError>;
/// Restores a streaming model from [`StreamingDetector::save`].
pub type LoadStreamingFn = fn(&[u8]) -> Result<Box<dyn StreamingDetector>, String>;

/// How a model comes to exist.
pub enum Build {
    Fitted {
        fit: FitFn,
        load: LoadFittedFn,
        /// Refit once without the training rows the first fit finds anomalous.
        robust_refit: bool,
    },
    Streaming {
        new: NewStreamingFn,
        load: LoadStreamingFn,
    },
}

/// One model, described once.
pub struct ModelSpec {
    /// The name on the command line and in the `model` metric label.
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// Display name (the live page's card title).
    pub title: &'static str,
    /// One line for `--help` and `kanary models`.
    pub summary: &'static str,
    pub params: &'static dyn ParamsSchema,
    /// The threshold rule used when none is configured.
    pub default_threshold: ThresholdMethod,
    /// The score is a reconstruction error (exported as `detector_reconstruction_error`).
    pub reconstruction_error: bool,
    pub build: Build,
}

/// A registered model, by reference: cheap to copy, compared and serialised by name.
#[derive(Clone, Copy)]
pub struct ModelKind(&'static ModelSpec);

impl ModelKind {
    /// The kind of a registered spec (the catalog's list makes these; see
    /// [`ModelKind::all`](crate::catalog)).
    pub const fn of(spec: &'static ModelSpec) -> Self {
        ModelKind(spec)
    }

    pub fn spec(self) -> &'static ModelSpec {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// Streaming models score from the first event and keep learning; they are never fitted.
    pub fn is_streaming(self) -> bool {
        matches!(self.0.build, Build::Streaming { .. })
    }

    pub fn default_threshold(self) -> ThresholdMethod {
        self.0.default_threshold
    }
}

impl PartialEq for ModelKind {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ModelKind {}

impl Hash for ModelKind {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.name.hash(state);
    }
}

impl PartialOrd for ModelKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ModelKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.name.cmp(other.0.name)
    }
}

impl fmt::Debug for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelKind({})", self.0.name)
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl Serialize for ModelKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name)
    }
}

/// Error for an unknown model name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown model `{name}`: expected one of {known}")]
pub struct UnknownModel {
    pub name: String,
    /// The registered names, comma-separated.
    pub known: String,
}

/// A parameter a model rejects, from the model's own validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{key}` {reason}")]
pub struct InvalidParam {
    pub key: &'static str,
    pub reason: String,
}

impl InvalidParam {
    pub fn new(key: &'static str, reason: impl Into<String>) -> Self {
        InvalidParam {
            key,
            reason: reason.into(),
        }
    }
}

/// Why model parameters cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("bad parameter `{0}`: expected MODEL.KEY=VALUE, e.g. if.trees=200")]
    Syntax(String),
    #[error(transparent)]
    UnknownModel(#[from] UnknownModel),
    #[error("model `{model}` has no parameter `{key}`; its parameters: {known}")]
    UnknownKey {
        model: &'static str,
        key: String,
        known: String,
    },
    #[error("`{model}.{key}`: {reason}")]
    BadValue {
        model: &'static str,
        key: String,
        reason: String,
    },
    #[error("`{model}.{}`: {}", .error.key, .error.reason)]
    Invalid {
        model: &'static str,
        error: InvalidParam,
    },
}

/// A model's parameter struct: serde with defaults for every key, one help line per key and
/// a typed validation.
pub trait ModelParams:
    Serialize + DeserializeOwned + Default + Clone + fmt::Debug + 'static
{
    /// One line of help per key, in the order `kanary models` lists them.
    const HELP: &'static [(&'static str, &'static str)];

    /// Checks values that parse but make no sense (zero windows, negative rates, ...).
    fn validate(&self) -> Result<(), InvalidParam> {
        Ok(())
    }

    /// Reads parameters given as a map over the defaults, checking keys, types and values.
    fn from_map(model: &'static str, map: &ParamMap) -> Result<Self, ParamError> {
        let serde_json::Value::Object(defaults) =
            serde_json::to_value(Self::default()).expect("parameters serialise to JSON")
        else {
            panic!("`{model}` parameters must serialise to a JSON object");
        };
        let mut merged = defaults.clone();
        for (key, value) in map {
            if !defaults.contains_key(key) {
                return Err(ParamError::UnknownKey {
                    model,
                    key: key.clone(),
                    known: defaults.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
            // Each key on its own over the defaults, so a type error names its key.
            let mut one = defaults.clone();
            one.insert(key.clone(), value.clone());
            if let Err(e) = serde_json::from_value::<Self>(serde_json::Value::Object(one)) {
                return Err(ParamError::BadValue {
                    model,
                    key: key.clone(),
                    reason: e.to_string(),
                });
            }
            merged.insert(key.clone(), value.clone());
        }
        let p: Self = serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| {
            ParamError::BadValue {
                model,
                key: "(all)".into(),
                reason: e.to_string(),
            }
        })?;
        p.validate()
            .map_err(|error| ParamError::Invalid { model, error })?;
        Ok(p)
    }
}

/// A parameter struct seen without its type: defaults, help and checks.
pub trait ParamsSchema: Sync {
    /// Every key with its default value.
    fn defaults(&self) -> ParamMap;
    /// One help line per key.
    fn help(&self) -> &'static [(&'static str, &'static str)];
    /// Checks a user's map (keys, types, values).
    fn check(&self, model: &'static str, map: &ParamMap) -> Result<(), ParamError>;
}

/// The [`ParamsSchema`] of a parameter struct `P`.
pub struct Schema<P>(PhantomData<fn() -> P>);

impl<P> Schema<P> {
    pub const fn new() -> Self {
        Schema(PhantomData)
    }
}

impl<P> Default for Schema<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: ModelParams> ParamsSchema for Schema<P> {
    fn defaults(&self) -> ParamMap {
        match serde_json::to_value(P::default()) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => ParamMap::new(),
        }
    }

    fn help(&self) -> &'static [(&'static str, &'static str)] {
        P::HELP
    }

    fn check(&self, model: &'static str, map: &ParamMap) -> Result<(), ParamError> {
        P::from_map(model, map).map(|_| ())
    }
}

/// A model without parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

impl ModelParams for NoParams {
    const HELP: &'static [(&'static str, &'static str)] = &[];
}

/// A fitted model of any registered kind, with its kind: cloned, compared and saved through
/// the registry.
pub struct Model {
    kind: ModelKind,
    inner: Box<dyn FittedModel>,
}

impl Model {
    pub fn new(kind: ModelKind, inner: Box<dyn FittedModel>) -> Self {
        Model { kind, inner }
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    pub fn validate(&self) -> Result<(), String> {
        self.inner.validate()
    }

    /// Restores a model of `kind` from its saved bytes.
    pub fn load(kind: ModelKind, bytes: &[u8]) -> Result<Model, String> {
        match kind.spec().build {
            Build::Fitted { load, .. } => Ok(Model::new(kind, load(bytes)?)),
            Build::Streaming { .. } => Err(format!("`{kind}` is a streaming model")),
        }
    }
}

impl Clone for Model {
    fn clone(&self) -> Self {
        Model {
            kind: self.kind,
            inner: self.inner.clone_box(),
        }
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Model({}: {:?})", self.kind, self.inner)
    }
}

impl PartialEq for Model {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.inner.save() == other.inner.save()
    }
}

impl Detector for Model {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn score(&self, x: &[f64]) -> f64 {
        self.inner.score(x)
    }
    fn score_batch(&self, xs: &[f64], out: &mut [f64]) {
        self.inner.score_batch(xs, out)
    }
    fn contributions(&self, x: &[f64], out: &mut [f64]) {
        self.inner.contributions(x, out)
    }
}

/// How a model's state travels: its kind's name and its own bytes.
#[derive(Serialize, Deserialize)]
struct Saved {
    kind: ModelKind,
    #[serde(with = "byte_string")]
    state: Vec<u8>,
}

/// A state's bytes as one byte string rather than a sequence of numbers: the same postcard
/// encoding (a length, then the bytes), read and written in one copy instead of byte by byte.
mod byte_string {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a model state's bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            // Formats without byte strings write a sequence of numbers.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

impl Serialize for Model {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Saved {
            kind: self.kind,
            state: self.inner.save(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Model {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let saved = Saved::deserialize(d)?;
        Model::load(saved.kind, &saved.state).map_err(serde::de::Error::custom)
    }
}

/// A streaming model's state of any registered kind, saved and restored through the
/// registry: the model itself, or its saved bytes (a snapshot that costs its encoded size
/// rather than a copy of the model).
pub struct StreamState {
    kind: ModelKind,
    held: Held,
}

enum Held {
    Live(Box<dyn StreamingDetector>),
    Saved(Vec<u8>),
}

impl StreamState {
    pub fn new(kind: ModelKind, inner: Box<dyn StreamingDetector>) -> Self {
        StreamState {
            kind,
            held: Held::Live(inner),
        }
    }

    /// `model`'s state as saved bytes, for writing it out while the model goes on.
    pub fn saved(kind: ModelKind, model: &dyn StreamingDetector) -> Self {
        StreamState {
            kind,
            held: Held::Saved(model.save()),
        }
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The model (restored from its bytes when it was held as saved).
    pub fn into_inner(self) -> Result<Box<dyn StreamingDetector>, String> {
        match self.held {
            Held::Live(m) => Ok(m),
            Held::Saved(bytes) => StreamState::load(self.kind, &bytes)?.into_inner(),
        }
    }

    /// Number of input columns (a state held as saved bytes is decoded to tell).
    pub fn dim(&self) -> Result<usize, String> {
        match &self.held {
            Held::Live(m) => Ok(m.dim()),
            Held::Saved(bytes) => StreamState::load(self.kind, bytes)?.dim(),
        }
    }

    /// The saved bytes of the state.
    pub fn bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.held {
            Held::Live(m) => std::borrow::Cow::Owned(m.save()),
            Held::Saved(b) => std::borrow::Cow::Borrowed(b),
        }
    }

    /// Restores a streaming model of `kind` from its saved bytes.
    pub fn load(kind: ModelKind, bytes: &[u8]) -> Result<StreamState, String> {
        match kind.spec().build {
            Build::Streaming { load, .. } => Ok(StreamState::new(kind, load(bytes)?)),
            Build::Fitted { .. } => Err(format!("`{kind}` is not a streaming model")),
        }
    }
}

impl Clone for StreamState {
    fn clone(&self) -> Self {
        StreamState {
            kind: self.kind,
            held: match &self.held {
                Held::Live(m) => Held::Live(m.clone_box()),
                Held::Saved(b) => Held::Saved(b.clone()),
            },
        }
    }
}

impl fmt::Debug for StreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamState({})", self.kind)
    }
}

impl PartialEq for StreamState {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.bytes() == other.bytes()
    }
}

/// [`Saved`] borrowing its bytes (the same encoding).
#[derive(Serialize)]
struct SavedRef<'a> {
    kind: ModelKind,
    #[serde(with = "byte_string")]
    state: &'a [u8],
}

impl Serialize for StreamState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SavedRef {
            kind: self.kind,
            state: &self.bytes(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for StreamState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let saved = Saved::deserialize(d)?;
        StreamState::load(saved.kind, &saved.state).map_err(serde::de::Error::custom)
    }
}

/// postcard encoding of a model's state (the format of model files).
pub fn encode_state<T: Serialize>(state: &T) -> Vec<u8> {
    encode_tagged(b"", state)
}

/// [`encode_state`] after `tag`, which names the layout for [`decode_tagged`].
pub fn encode_tagged<T: Serialize>(tag: &[u8], state: &T) -> Vec<u8> {
    thread_local! {
        static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    }
    encode_reusing(&SCRATCH, tag, state).expect("model state serialises")
}

/// Decodes [`encode_tagged`] bytes; bytes without `tag` are of an older layout.
pub fn decode_tagged<T: DeserializeOwned>(tag: &[u8], bytes: &[u8]) -> Result<T, String> {
    match bytes.strip_prefix(tag) {
        Some(rest) => decode_state(rest),
        None => Err(
            "the state was saved by an earlier version of kanary in a layout this one does not read"
                .into(),
        ),
    }
}

/// A scratch buffer larger than this is freed after use instead of kept.
const SCRATCH_KEEP: usize = 4 << 20;

/// `head` followed by the postcard encoding of `value`, serialised through a per-thread
/// buffer that keeps its capacity: the result is one allocation of its exact size, where
/// encoding into a fresh vector grows and copies it a dozen times. (Each caller has its own
/// buffer; a nested call on the same one finds it taken and simply starts a new one.)
pub(crate) fn encode_reusing<T: Serialize + ?Sized>(
    scratch: &'static LocalKey<Cell<Vec<u8>>>,
    head: &[u8],
    value: &T,
) -> postcard::Result<Vec<u8>> {
    let mut buf = scratch.take();
    buf.clear();
    buf.extend_from_slice(head);
    let buf = postcard::to_extend(value, buf)?;
    let out = buf.to_vec();
    if buf.capacity() <= SCRATCH_KEEP {
        scratch.set(buf);
    }
    Ok(out)
}

/// Decodes [`encode_state`] bytes.
pub fn decode_state<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout model files had before states were written as byte strings.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain {
        kind: ModelKind,
        state: Vec<u8>,
    }

    #[test]
    fn states_as_byte_strings_keep_the_model_file_encoding() {
        let kind = ModelKind::named("codev").unwrap();
        let state: Vec<u8> = (0..=255).chain(0..40).collect();
        let plain = postcard::to_stdvec(&Plain {
            kind,
            state: state.clone(),
        })
        .unwrap();
        let saved = postcard::to_stdvec(&Saved {
            kind,
            state: state.clone(),
        })
        .unwrap();
        assert_eq!(saved, plain);
        let back: Saved = postcard::from_bytes(&plain).unwrap();
        assert_eq!((back.kind, back.state), (kind, state.clone()));
        // JSON has no byte strings: a sequence of numbers there.
        let json = serde_json::to_string(&Plain { kind, state }).unwrap();
        let back: Saved = serde_json::from_str(&json).unwrap();
        assert_eq!(back.state.len(), 296);
    }
}
