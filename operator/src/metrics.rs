//! The operator's Prometheus metrics: reconciles, failures by reason, reconcile duration.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ReasonLabel, Counter>,
    pub duration: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them under `pgpilot_operator_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
        };
        let sub = registry.sub_registry_with_prefix("pgpilot_operator");
        sub.register("reconciles", "Reconciles started", m.reconciles.clone());
        sub.register(
            "reconcile_failures",
            "Reconciles that failed, by reason",
            m.failures.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            m.duration.clone(),
        );
        m
    }

    pub fn observe(&self, elapsed: Duration, failure: Option<String>) {
        self.reconciles.inc();
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(reason) = failure {
            self.failures.get_or_create(&ReasonLabel { reason }).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn failures_are_counted_by_reason() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.observe(Duration::from_millis(20), None);
        m.observe(
            Duration::from_millis(30),
            Some("ApplyStatefulSetFailed".into()),
        );
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("pgpilot_operator_reconciles_total 2"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"pgpilot_operator_reconcile_failures_total{reason="ApplyStatefulSetFailed"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("pgpilot_operator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
    }
}
