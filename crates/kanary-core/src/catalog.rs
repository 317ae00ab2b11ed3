//! The list of models kanary knows (the registry's one line per model) and the look-ups that
//! read it: by name, every kind, `MODEL.KEY=VALUE` parameters.

use serde::{Deserialize, Deserializer};

use crate::models::{autoencoder, codev, hst, iforest, novelty, tcn, zscore};
use crate::registry::{ModelKind, ModelSpec, ParamError, UnknownModel};

/// Every registered model (the first is the default), in the order `--help` and `kanary models` list them.
pub static MODELS: &[&ModelSpec] = &[
    &codev::SPEC,
    &iforest::SPEC,
    &autoencoder::SPEC,
    &zscore::SPEC,
    &novelty::SPEC,
    &hst::SPEC,
    &tcn::SPEC,
];

/// The default detector: what `eval`, `detect`, `demo` and `nab` run without `--model`.
pub const DEFAULT_MODEL: &str = "codev";

impl ModelKind {
    /// The default detector ([`DEFAULT_MODEL`]).
    pub fn default_model() -> ModelKind {
        ModelKind::named(DEFAULT_MODEL).expect("the default model is registered")
    }

    /// Every registered model.
    pub fn all() -> impl Iterator<Item = ModelKind> {
        MODELS.iter().map(|s| ModelKind::of(s))
    }

    /// The model called `name` (or one of its aliases), case-insensitively.
    pub fn named(name: &str) -> Result<ModelKind, UnknownModel> {
        let n = name.trim().to_ascii_lowercase();
        Self::all()
            .find(|k| k.spec().name == n || k.spec().aliases.contains(&n.as_str()))
            .ok_or_else(|| UnknownModel {
                name: name.to_string(),
                known: Self::names(),
            })
    }

    /// The registered names, comma-separated, for messages and help texts.
    pub fn names() -> String {
        Self::all().map(|k| k.name()).collect::<Vec<_>>().join(", ")
    }
}

impl std::str::FromStr for ModelKind {
    type Err = UnknownModel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelKind::named(s)
    }
}

impl<'de> Deserialize<'de> for ModelKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ModelKind::named(&name).map_err(serde::de::Error::custom)
    }
}

/// Parses `MODEL.KEY=VALUE` into the model, the key and a JSON value: JSON when the text is
/// JSON (`200`, `true`, `[16,8,16]`, `"x"`), a list of numbers for comma-separated numbers
/// (`16,8,16`), a string otherwise.
pub fn parse_param(text: &str) -> Result<(ModelKind, String, serde_json::Value), ParamError> {
    let syntax = || ParamError::Syntax(text.to_string());
    let (lhs, value) = text.split_once('=').ok_or_else(syntax)?;
    let (model, key) = lhs.trim().split_once('.').ok_or_else(syntax)?;
    if key.trim().is_empty() {
        return Err(syntax());
    }
    let kind = ModelKind::named(model)?;
    let value = value.trim();
    let parsed = serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .or_else(|| {
            let parts: Option<Vec<serde_json::Value>> = value
                .split(',')
                .map(|p| serde_json::from_str::<serde_json::Number>(p.trim()).ok())
                .map(|n| n.map(serde_json::Value::Number))
                .collect();
            parts.filter(|p| p.len() > 1).map(serde_json::Value::Array)
        })
        .unwrap_or_else(|| serde_json::Value::String(value.to_string()));
    Ok((kind, key.trim().to_string(), parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ParamMap;

    #[test]
    fn names_and_aliases_round_trip() {
        for k in ModelKind::all() {
            assert_eq!(k.name().parse::<ModelKind>().unwrap(), k);
            for a in k.spec().aliases {
                assert_eq!(a.parse::<ModelKind>().unwrap(), k);
            }
        }
        let err = "svm".parse::<ModelKind>().unwrap_err().to_string();
        assert!(err.contains("svm") && err.contains("if"), "{err}");
    }

    #[test]
    fn names_are_unique_and_every_parameter_has_help() {
        let mut seen = std::collections::HashSet::new();
        for k in ModelKind::all() {
            let spec = k.spec();
            for n in std::iter::once(&spec.name).chain(spec.aliases) {
                assert!(seen.insert(*n), "`{n}` is registered twice");
            }
            assert!(!spec.summary.is_empty() && !spec.title.is_empty());
            let defaults = spec.params.defaults();
            let help: Vec<&str> = spec.params.help().iter().map(|(k, _)| *k).collect();
            for key in defaults.keys() {
                assert!(
                    help.contains(&key.as_str()),
                    "{}: `{key}` has no help",
                    spec.name
                );
            }
            for key in &help {
                assert!(
                    defaults.contains_key(*key),
                    "{}: help for unknown `{key}`",
                    spec.name
                );
            }
            // The defaults pass their own checks.
            spec.params.check(spec.name, &defaults).unwrap();
        }
    }

    #[test]
    fn parameters_parse_from_text_with_clear_errors() {
        let (k, key, v) = parse_param("if.trees=200").unwrap();
        assert_eq!((k.name(), key.as_str()), ("if", "trees"));
        assert_eq!(v, serde_json::json!(200));
        let (_, _, v) = parse_param("ae.hidden=16,8,16").unwrap();
        assert_eq!(v, serde_json::json!([16, 8, 16]));
        let (_, _, v) = parse_param("ae.activation=relu").unwrap();
        assert_eq!(v, serde_json::json!("relu"));
        assert!(matches!(parse_param("trees=3"), Err(ParamError::Syntax(_))));
        assert!(matches!(
            parse_param("svm.c=1"),
            Err(ParamError::UnknownModel(_))
        ));
        let ifk = ModelKind::named("if").unwrap();
        let mut m = ParamMap::new();
        m.insert("treez".into(), serde_json::json!(1));
        let err = ifk.spec().params.check("if", &m).unwrap_err();
        assert!(matches!(err, ParamError::UnknownKey { .. }), "{err}");
        assert!(err.to_string().contains("trees"), "{err}");
        let mut m = ParamMap::new();
        m.insert("trees".into(), serde_json::json!("many"));
        let err = ifk.spec().params.check("if", &m).unwrap_err();
        assert!(matches!(err, ParamError::BadValue { .. }), "{err}");
        let mut m = ParamMap::new();
        m.insert("trees".into(), serde_json::json!(0));
        let err = ifk.spec().params.check("if", &m).unwrap_err();
        assert!(matches!(err, ParamError::Invalid { .. }), "{err}");
    }
}
