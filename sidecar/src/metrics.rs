//! Prometheus metrics (prometheus-client). Gauges are set from the published [`MemberState`] when scraped;
//! counters are incremented by the HA loop as things happen. No IO.

use std::sync::Mutex;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::state::MemberState;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Mutex<Registry>,
    primary: Gauge,
    replica: Gauge,
    running: Gauge,
    holder: Gauge,
    timeline: Gauge,
    epoch: Gauge,
    wal_location: Gauge,
    received_location: Gauge,
    replayed_location: Gauge,
    lag_bytes: Gauge,
    streaming: Gauge,
    pending_restart: Gauge,
    paused: Gauge,
    sync_standby: Gauge,
    /// HA loop decisions by kind.
    pub decisions: Family<Labels, Counter>,
    /// Errors by module and category (the thiserror variant's name).
    pub errors: Family<Labels, Counter>,
    /// Lease writes by kind (renew, acquire, release, handover, sync-members) and result.
    pub lease_writes: Family<Labels, Counter>,
    /// Log lines dropped because the container's stdout was not drained (crate::logsink).
    log_lines_dropped: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pgpilot");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            primary: Gauge::default(),
            replica: Gauge::default(),
            running: Gauge::default(),
            holder: Gauge::default(),
            timeline: Gauge::default(),
            epoch: Gauge::default(),
            wal_location: Gauge::default(),
            received_location: Gauge::default(),
            replayed_location: Gauge::default(),
            lag_bytes: Gauge::default(),
            streaming: Gauge::default(),
            pending_restart: Gauge::default(),
            paused: Gauge::default(),
            sync_standby: Gauge::default(),
            decisions: Family::default(),
            errors: Family::default(),
            lease_writes: Family::default(),
            log_lines_dropped: Counter::default(),
        };
        let gauges: [(&str, &str, &Gauge); 14] = [
            (
                "primary",
                "1 when this member is the running primary holding the Lease",
                &m.primary,
            ),
            (
                "replica",
                "1 when this member runs as a replica",
                &m.replica,
            ),
            (
                "postgres_running",
                "1 when PostgreSQL runs and answers",
                &m.running,
            ),
            (
                "lease_holder",
                "1 when this member holds the Lease",
                &m.holder,
            ),
            ("postgres_timeline", "PostgreSQL timeline", &m.timeline),
            (
                "lease_epoch",
                "leaseTransitions as last read (the fencing epoch)",
                &m.epoch,
            ),
            (
                "xlog_location",
                "primary: current WAL write position (bytes)",
                &m.wal_location,
            ),
            (
                "xlog_received_location",
                "replica: last received WAL position (bytes)",
                &m.received_location,
            ),
            (
                "xlog_replayed_location",
                "replica: last replayed WAL position (bytes)",
                &m.replayed_location,
            ),
            (
                "replication_lag_bytes",
                "replica: replay lag behind the primary (bytes)",
                &m.lag_bytes,
            ),
            (
                "postgres_streaming",
                "1 when the replica's WAL receiver streams",
                &m.streaming,
            ),
            (
                "pending_restart",
                "1 when parameters wait for a restart",
                &m.pending_restart,
            ),
            ("is_paused", "1 in pause mode", &m.paused),
            (
                "sync_standby",
                "1 when this replica is recorded as synchronous",
                &m.sync_standby,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "ha_decisions",
            "HA loop decisions by kind",
            m.decisions.clone(),
        );
        registry.register("errors", "errors by module and category", m.errors.clone());
        registry.register(
            "lease_writes",
            "conditional Lease writes by kind and result",
            m.lease_writes.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "log lines dropped because the container's stdout was not drained",
            m.log_lines_dropped.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            ..m
        }
    }

    /// Counts an error of `module` with its `category()`.
    pub fn error(&self, module: &str, category: &str) {
        self.errors
            .get_or_create(&vec![
                ("module".into(), module.into()),
                ("category".into(), category.into()),
            ])
            .inc();
    }

    pub fn lease_write(&self, kind: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.lease_writes
            .get_or_create(&vec![
                ("kind".into(), kind.into()),
                ("result".into(), result.into()),
            ])
            .inc();
    }

    pub fn decision(&self, kind: &str) {
        self.decisions
            .get_or_create(&vec![("decision".into(), kind.into())])
            .inc();
    }

    /// The text exposition, gauges taken from `state`.
    pub fn render(&self, state: &MemberState) -> String {
        let flag = |b: bool| i64::from(b);
        let num = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok()).unwrap_or(0);
        self.primary.set(flag(state.is_primary()));
        self.replica.set(flag(state.is_replica()));
        self.running.set(flag(state.running));
        self.holder.set(flag(state.holder));
        self.timeline.set(num(state.timeline.map(u64::from)));
        self.epoch.set(num(Some(state.epoch)));
        self.wal_location.set(num(state.wal_location));
        self.received_location.set(num(state.received_location));
        self.replayed_location.set(num(state.replayed_location));
        self.lag_bytes.set(num(state.lag_bytes));
        self.streaming.set(flag(
            state.replication_state.as_deref() == Some("streaming"),
        ));
        self.pending_restart.set(flag(state.pending_restart));
        self.paused.set(flag(state.config.paused));
        self.sync_standby.set(flag(state.is_sync_replica()));
        let dropped = crate::logsink::dropped() as u64;
        self.log_lines_dropped
            .inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        let mut out = String::new();
        let registry = match self.registry.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_reflects_state_and_counters() {
        let m = Metrics::new();
        let mut s = MemberState::new("c", "c-0");
        s.role = "primary".into();
        s.running = true;
        s.holder = true;
        s.timeline = Some(3);
        s.wal_location = Some(123_456);
        m.decision("renew");
        m.decision("renew");
        m.error("lease", "Conflict");
        let text = m.render(&s);
        assert!(text.contains("pgpilot_primary 1\n"), "{text}");
        assert!(text.contains("pgpilot_postgres_timeline 3\n"), "{text}");
        assert!(text.contains("pgpilot_xlog_location 123456\n"), "{text}");
        assert!(
            text.contains("pgpilot_ha_decisions_total{decision=\"renew\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("pgpilot_errors_total{module=\"lease\",category=\"Conflict\"} 1\n"),
            "{text}"
        );
        s.holder = false;
        assert!(m.render(&s).contains("pgpilot_primary 0\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
