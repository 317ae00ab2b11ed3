//! The consumer's callbacks (drain before giving partitions up, readiness, errors and broker
//! states into [`KafkaHealth`]), the consumer lag, and the state the stages share.

use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::commands::Shutdown;
use crate::http::Readiness;
use crate::kafka::{self, KafkaHealth};
use crate::telemetry::{Metrics, ModelPartition};

/// State shared by the stages and the consumer's callbacks.
pub(super) struct Shared {
    /// Batches handed to the scoring thread whose offsets are not stored yet.
    pub(super) inflight: AtomicUsize,
    pub(super) shutdown: Shutdown,
    /// A delivery failed for good: store no further offsets, exit non-zero.
    pub(super) fatal: AtomicBool,
    pub(super) readiness: Arc<Readiness>,
    pub(super) health: Arc<KafkaHealth>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) models: Vec<&'static str>,
    pub(super) topic: String,
}

impl Shared {
    pub(super) fn stop(&self) {
        self.shutdown.trigger();
    }

    /// A stage failed for good: `/healthz` turns 503, no further offsets are stored, and
    /// everything stops (the process exits non-zero; a restart reprocesses from the last
    /// committed offsets). The first failure is the one reported.
    pub(super) fn fail(&self, why: String) {
        if self.readiness.failed.set(why.clone()).is_ok() {
            tracing::error!("{why}");
        }
        self.fatal.store(true, Ordering::Release);
        self.stop();
    }
}

/// Consumer callbacks: drain before giving partitions up, readiness, broker health.
pub(super) struct Ctx(pub(super) Arc<Shared>);

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        kafka::log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.health.on_error(&error, reason);
    }

    fn stats(&self, stats: Statistics) {
        self.0.health.on_stats(&stats);
    }
}

impl Shared {
    /// `detector_consumer_lag` of the assigned partitions: the partition's high watermark
    /// (as of the last fetch) minus the consumer's position, i.e. events received by Kafka
    /// and not yet taken by this consumer. Called by the poll stage about once a second.
    pub(super) fn update_lag(&self, consumer: &KanaryConsumer, shown: &mut Vec<i32>) {
        let Ok(position) = consumer.position() else {
            return;
        };
        let Ok(topic) = CString::new(self.topic.as_str()) else {
            return;
        };
        let mut now: Vec<i32> = Vec::new();
        for e in position.elements_for_topic(&self.topic) {
            let Offset::Offset(pos) = e.offset() else {
                continue; // nothing fetched from this partition yet
            };
            let (mut lo, mut hi) = (-1i64, -1i64);
            // SAFETY: a live client handle, a NUL-terminated topic name and two out-pointers
            // to locals; librdkafka only reads its cached watermarks (no network I/O).
            let err = unsafe {
                rdkafka::bindings::rd_kafka_get_watermark_offsets(
                    consumer.client().native_ptr(),
                    topic.as_ptr(),
                    e.partition(),
                    &mut lo,
                    &mut hi,
                )
            };
            if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hi < 0 {
                continue;
            }
            now.push(e.partition());
            for model in &self.models {
                self.metrics
                    .consumer_lag
                    .get_or_create_owned(&self.lag_labels(model, e.partition()))
                    .set((hi - pos).max(0));
            }
        }
        for gone in shown.iter().filter(|p| !now.contains(p)) {
            for model in &self.models {
                self.metrics
                    .consumer_lag
                    .remove(&self.lag_labels(model, *gone));
            }
        }
        *shown = now;
    }

    fn lag_labels(&self, model: &str, partition: i32) -> ModelPartition {
        ModelPartition {
            model: model.to_string(),
            topic: self.topic.clone(),
            partition: partition.to_string(),
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
            // (After a failure nothing more is stored: nothing to wait for.)
            while self.0.inflight.load(Ordering::Acquire) > 0
                && !self.0.fatal.load(Ordering::Acquire)
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
