//! The consumer's callbacks (drain before giving partitions up, readiness, lag from
//! statistics) and the state the stages share with them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

use crate::commands::Shutdown;
use crate::http::Readiness;
use crate::telemetry::{Metrics, ModelPartition};

/// State shared by the stages and the consumer's callbacks.
pub(super) struct Shared {
    /// Batches handed to the scoring thread whose offsets are not stored yet.
    pub(super) inflight: AtomicUsize,
    pub(super) shutdown: Shutdown,
    /// A delivery failed for good: store no further offsets, exit non-zero.
    pub(super) fatal: AtomicBool,
    pub(super) readiness: Arc<Readiness>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) models: Vec<&'static str>,
    pub(super) topic: String,
}

impl Shared {
    pub(super) fn stop(&self) {
        self.shutdown.trigger();
    }
}

/// Consumer callbacks: drain before giving partitions up, readiness, lag from statistics.
pub(super) struct Ctx(pub(super) Arc<Shared>);

impl ClientContext for Ctx {
    fn stats(&self, stats: Statistics) {
        let Some(topic) = stats.topics.get(&self.0.topic) else {
            return;
        };
        for (p, part) in &topic.partitions {
            if *p < 0 {
                continue; // librdkafka's internal "unassigned" partition
            }
            // Lag of assigned partitions; before the first fetch of a partition librdkafka
            // reports -1, so count from the start of the log (0 for an empty partition).
            let lag = if !part.desired {
                None
            } else if part.consumer_lag >= 0 {
                Some(part.consumer_lag)
            } else if part.hi_offset >= 0 {
                let from = part
                    .lo_offset
                    .max(part.committed_offset)
                    .max(part.app_offset);
                Some((part.hi_offset - from).max(0))
            } else {
                None
            };
            for model in &self.0.models {
                let labels = ModelPartition {
                    model: model.to_string(),
                    topic: self.0.topic.clone(),
                    partition: p.to_string(),
                };
                match lag {
                    Some(l) => {
                        self.0
                            .metrics
                            .consumer_lag
                            .get_or_create_owned(&labels)
                            .set(l);
                    }
                    None => {
                        self.0.metrics.consumer_lag.remove(&labels);
                    }
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.0
                .readiness
                .partitions_assigned
                .store(false, Ordering::Release);
            // Finish what is in flight so its offsets are stored, then commit them: the next
            // owner of these partitions starts right after what we processed.
            let start = Instant::now();
            while self.0.inflight.load(Ordering::Acquire) > 0
                && start.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!("commit on rebalance failed: {e}"),
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?parts, "partitions assigned");
                self.0
                    .readiness
                    .partitions_assigned
                    .store(!parts.is_empty(), Ordering::Release);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!("offset commit failed: {e}"),
        }
    }
}

pub(super) type KanaryConsumer = BaseConsumer<Ctx>;
