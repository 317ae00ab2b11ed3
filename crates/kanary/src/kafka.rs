//! Kafka set-up: client configuration with pass-through properties, topic creation.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

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

/// Creates `topic` with `partitions` partitions (broker-default replication) unless it exists.
/// Returns whether it was created.
pub async fn ensure_topic(base: &ClientConfig, topic: &str, partitions: i32) -> Result<bool> {
    let admin: AdminClient<DefaultClientContext> =
        base.create().context("cannot create Kafka admin client")?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
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
