//! The optional TOML configuration file of `kanary detect` (`--config FILE`).
//!
//! Precedence: command-line flag, then its `KANARY_*` environment variable, then the file,
//! then the built-in default. Example:
//!
//! ```toml
//! brokers = "kafka-1:9092,kafka-2:9092"
//! model = "if,ae"
//! topic = "service-metrics"
//! group = "kanary-prod"
//! metrics_addr = "0.0.0.0:9898"
//! anomalies_topic = "anomalies"
//! dlq_topic = "service-metrics-dlq"
//! state_dir = "/var/lib/kanary"
//! train = 1000
//! max_services = 5000        # per model; least recently seen services are evicted
//! memory_budget = "512MiB"
//! max_service_series = 200   # services with their own label on /metrics
//! startup_timeout = 60       # seconds to wait for a broker at start
//! http_timeout = 10          # seconds for a request head / idle keep-alive
//! http_max_connections = 256
//!
//! [models.if]        # model parameters (`kanary models` lists them)
//! trees = 200
//!
//! [kafka]            # any librdkafka property, passed through
//! "security.protocol" = "SASL_SSL"
//! "sasl.mechanism" = "SCRAM-SHA-512"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kanary_core::registry::ParamMap;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub brokers: Option<String>,
    pub model: Option<String>,
    pub topic: Option<String>,
    pub group: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub anomalies_topic: Option<String>,
    pub dlq_topic: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub model_file: Option<PathBuf>,
    pub train: Option<usize>,
    pub batch_size: Option<usize>,
    pub snapshot_every: Option<f64>,
    pub startup_timeout: Option<f64>,
    pub max_services: Option<usize>,
    /// A size such as "256MiB".
    pub memory_budget: Option<String>,
    pub max_service_series: Option<usize>,
    pub http_timeout: Option<f64>,
    pub http_max_connections: Option<usize>,
    /// librdkafka properties.
    #[serde(default)]
    pub kafka: BTreeMap<String, toml::Value>,
    /// Model parameters, one table per model.
    #[serde(default)]
    pub models: BTreeMap<String, toml::Table>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// The `[models.*]` tables as JSON parameter maps (checked later against each model).
    pub fn model_params(&self) -> Result<BTreeMap<String, ParamMap>> {
        self.models
            .iter()
            .map(|(model, table)| {
                let value = serde_json::to_value(table)
                    .with_context(|| format!("config file: [models.{model}]"))?;
                match value {
                    serde_json::Value::Object(m) => Ok((model.clone(), m)),
                    _ => anyhow::bail!("config file: [models.{model}] must be a table"),
                }
            })
            .collect()
    }

    /// The `[kafka]` table as `key=value` strings.
    pub fn kafka_opts(&self) -> Vec<String> {
        self.kafka
            .iter()
            .map(|(k, v)| match v {
                toml::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_passes_kafka_properties() {
        let c = FileConfig::parse(
            r#"
            brokers = "a:9092"
            model = "if,ae"
            metrics_addr = "0.0.0.0:9999"
            train = 500
            [kafka]
            "security.protocol" = "SASL_SSL"
            "session.timeout.ms" = 6000
            "#,
        )
        .unwrap();
        assert_eq!(c.brokers.as_deref(), Some("a:9092"));
        assert_eq!(c.train, Some(500));
        assert_eq!(
            c.kafka_opts(),
            vec!["security.protocol=SASL_SSL", "session.timeout.ms=6000"]
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = FileConfig::parse("brokerz = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
