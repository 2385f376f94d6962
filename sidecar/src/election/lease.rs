//! The Lease IO shell: read the cluster's Lease and write it *only* conditionally (docs/design.md L1).
//!
//! Every write is a `replace` carrying the `metadata.resourceVersion` of the object just read, so the
//! apiserver refuses it with 409 when anyone wrote in between; that surfaces as
//! [`LeaseError::Conflict`] and the caller re-reads — nothing here retries. Every request has a timeout
//! so a hanging apiserver cannot stall the HA loop past its fencing deadline (L5).
//!
//! The new object for each write is computed by a pure function ([`renewed`], [`acquired`],
//! [`released`], [`handed_over`], [`with_sync_members`]), unit-tested below.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use pgpilot_crds::contract::{
    ANNOTATION_HANDOVER, ANNOTATION_RENEW_DEADLINE, ANNOTATION_SYNC_MEMBERS, ANNOTATION_SYSTEM_ID,
    ANNOTATION_TIMELINE, ANNOTATION_WAL_POSITION, SIDECAR_FIELD_MANAGER,
};
use tracing::{debug, warn};

use super::{LeaseRecord, LeaseWatch, PodStatus, Renewal, Timings};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// 409: someone wrote the Lease since it was read (L1). Re-read; never retry the same write.
    #[error("lost the race: the Lease changed since it was read")]
    Conflict,
    #[error("Lease {name} does not exist (the operator creates it)")]
    NotFound { name: String },
    #[error("Lease request failed: {source}")]
    Api {
        #[source]
        source: kube::Error,
    },
    #[error("Lease request timed out after {0:?}")]
    Timeout(Duration),
}

impl LeaseError {
    /// The variant's name: the metric label and the Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            LeaseError::Conflict => "Conflict",
            LeaseError::NotFound { .. } => "NotFound",
            LeaseError::Api { .. } => "Api",
            LeaseError::Timeout(_) => "Timeout",
        }
    }
}

/// The cluster's Lease: exactly two calls, a read and a replace conditional on the `resourceVersion`
/// of the object it replaces (L1). What to write is computed by the pure builders below.
#[derive(Clone)]
pub struct LeaseClient {
    api: Api<Lease>,
    name: String,
    me: String,
    timeout: Duration,
}

impl LeaseClient {
    /// `timeout` bounds every request; use at most the retry period.
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, timeout: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            me: me.to_owned(),
            timeout,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Reads the Lease.
    pub async fn read(&self) -> Result<Lease, LeaseError> {
        let name = self.name.clone();
        self.bounded(async { self.api.get(&name).await }).await
    }

    /// Replaces the Lease with `lease`, which carries the `resourceVersion` it was built from: the
    /// apiserver refuses it with 409 ([`LeaseError::Conflict`]) when anyone wrote in between.
    pub async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        debug!(
            lease = %self.name,
            holder = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).unwrap_or(""),
            resource_version = lease.metadata.resource_version.as_deref().unwrap_or(""),
            "conditional Lease write"
        );
        let params = PostParams {
            field_manager: Some(SIDECAR_FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let name = self.name.clone();
        self.bounded(async { self.api.replace(&name, &params, lease).await })
            .await
    }

    async fn bounded(
        &self,
        request: impl Future<Output = Result<Lease, kube::Error>>,
    ) -> Result<Lease, LeaseError> {
        match tokio::time::timeout(self.timeout, request).await {
            Err(_) => Err(LeaseError::Timeout(self.timeout)),
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(kube::Error::Api(status))) if status.is_conflict() => Err(LeaseError::Conflict),
            Ok(Err(kube::Error::Api(status))) if status.is_not_found() => {
                Err(LeaseError::NotFound {
                    name: self.name.clone(),
                })
            }
            Ok(Err(source)) => Err(LeaseError::Api { source }),
        }
    }
}

/// The Lease object as last read or written, with its record converted once.
struct Current {
    lease: Lease,
    record: LeaseRecord,
}

impl Current {
    fn new(lease: Lease) -> Self {
        let record = record_of(&lease);
        Self { lease, record }
    }
}

/// The election's IO state for one member: the Lease as last read, the [`LeaseWatch`] (L2/L8), and when
/// this process's last successful write was *sent* (L5 measures from there).
pub struct Elector {
    client: LeaseClient,
    watch: LeaseWatch,
    current: Option<Current>,
    renewed_sent_at: Option<Instant>,
    /// The last successful write naming this member holder; a lost race does not clear it (L5).
    last_renewal: Option<Renewal>,
    /// The timings this member writes with: `leaseDurationSeconds` is its `leaseDuration`, and its own
    /// fencing deadline for that write is the `renewDeadline` paired with it (L6).
    timings: Timings,
    /// The highest `leaseTransitions` read or written: the floor of the next epoch (L7).
    max_epoch: u64,
    /// See [`Elector::set_primary_timeline`].
    primary_timeline: Option<u32>,
}

impl Elector {
    pub fn new(client: LeaseClient, timings: Timings) -> Self {
        Self {
            client,
            watch: LeaseWatch::default(),
            current: None,
            renewed_sent_at: None,
            last_renewal: None,
            timings,
            max_epoch: 0,
            primary_timeline: None,
        }
    }

    pub fn me(&self) -> &str {
        self.client.me()
    }

    /// Reads the Lease and feeds the watch; `holder_pod` says what the kubelet reports about the holder's
    /// pod (L8). `None` when the read failed: the caller decides without a record (L5 still applies).
    pub async fn observe(
        &mut self,
        holder_pod: impl Fn(&str) -> PodStatus,
    ) -> Option<(LeaseRecord, PodStatus)> {
        match self.client.read().await {
            Ok(lease) => {
                let current = Current::new(lease);
                let record = current.record.clone();
                self.max_epoch = self.max_epoch.max(record.transitions);
                let pod = record.holder().map_or(PodStatus::Unknown, &holder_pod);
                self.watch.observe(&record, &pod, Instant::now());
                if record.holder() != Some(self.me()) {
                    // Someone else holds it (or nobody): whatever this process wrote before is void.
                    self.renewed_sent_at = None;
                }
                self.current = Some(current);
                Some((record, pod))
            }
            Err(error) => {
                warn!(error = %error, category = error.category(), "cannot read the Lease");
                self.watch.read_failed();
                None
            }
        }
    }

    pub fn watch(&self) -> &LeaseWatch {
        &self.watch
    }

    /// When this process's last successful write was sent; `None` if it does not hold the Lease.
    pub fn renewed_sent_at(&self) -> Option<Instant> {
        self.renewed_sent_at
    }

    /// The last successful write naming this member holder, even after a lost race (L5).
    pub fn last_renewal(&self) -> Option<Renewal> {
        self.last_renewal
    }

    /// The record as last read or written.
    pub fn record(&self) -> Option<&LeaseRecord> {
        self.current.as_ref().map(|c| &c.record)
    }

    /// The timings this member writes (and fences) with from its next write on (L6: a changed
    /// `renewDeadline` counts only from the write that records the `leaseDuration` paired with it).
    pub fn set_timings(&mut self, timings: Timings) {
        self.timings = timings;
    }

    /// The timeline this member runs on as primary, or the one a standby takeover will promote onto
    /// (`None` otherwise): recorded with its next writes.
    pub fn set_primary_timeline(&mut self, timeline: Option<u32>) {
        self.primary_timeline = timeline;
    }

    fn stamp(&self, wal_position: Option<u64>, system_id: Option<&str>) -> Stamp {
        Stamp {
            lease_duration: self.timings.lease_duration,
            renew_deadline: self.timings.renew_deadline,
            wal_position,
            timeline: self.primary_timeline,
            system_id: system_id.map(str::to_owned),
            min_epoch: self.max_epoch,
        }
    }

    /// The holder's renewal (L5), recording its WAL position and its data's system identifier.
    pub async fn renew(
        &mut self,
        wal_position: Option<u64>,
        system_id: Option<&str>,
    ) -> Result<(), LeaseError> {
        let me = self.me().to_owned();
        let stamp = self.stamp(wal_position, system_id);
        self.write(|l| renewed(l, &me, now(), &stamp)).await
    }

    /// A conditional takeover (L1); on success this member holds the Lease and may promote (L4).
    pub async fn acquire(
        &mut self,
        wal_position: Option<u64>,
        system_id: Option<&str>,
    ) -> Result<(), LeaseError> {
        let me = self.me().to_owned();
        let stamp = self.stamp(wal_position, system_id);
        self.write(|l| acquired(l, &me, now(), &stamp)).await
    }

    /// Empty holder, epoch kept; call only after PostgreSQL is stopped or demoted (L4). `synchronous`
    /// (the sync modes): the releasing primary records itself as having every acknowledged commit.
    pub async fn release(
        &mut self,
        synchronous: bool,
        wal_position: Option<u64>,
    ) -> Result<(), LeaseError> {
        let me = self.me().to_owned();
        self.write(|l| released(l, synchronous.then_some(me.as_str()), wal_position))
            .await
    }

    /// Switchover: the candidate becomes holder; call only after PostgreSQL is stopped (L4).
    /// `wal_position`: the stopped primary's shutdown checkpoint.
    pub async fn hand_over(
        &mut self,
        candidate: &str,
        wal_position: Option<u64>,
    ) -> Result<(), LeaseError> {
        let stamp = self.stamp(wal_position, None);
        self.write(|l| handed_over(l, candidate, now(), &stamp))
            .await
    }

    /// Holder: record the synchronous members if they differ from the Lease's (L3, L9: on change only).
    pub async fn record_sync_members(&mut self, members: &[String]) -> Result<bool, LeaseError> {
        if self.record().and_then(|r| r.sync_members.as_deref()) == Some(members) {
            return Ok(false);
        }
        self.write(|l| with_sync_members(l, members))
            .await
            .map(|()| true)
    }

    /// Builds the new object from the one last read (a pure builder) and replaces it conditionally (L1).
    async fn write(&mut self, build: impl FnOnce(&Lease) -> Lease) -> Result<(), LeaseError> {
        let Some(current) = &self.current else {
            return Err(LeaseError::NotFound {
                name: self.client.name.clone(),
            });
        };
        let next = build(&current.lease);
        let sent = Instant::now();
        match self.client.replace(&next).await {
            Ok(lease) => {
                let current = Current::new(lease);
                self.max_epoch = self.max_epoch.max(current.record.transitions);
                let holding = current.record.holder() == Some(self.me());
                self.renewed_sent_at = holding.then_some(sent);
                if holding {
                    self.last_renewal = Some(Renewal {
                        sent_at: sent,
                        renew_deadline: self.timings.renew_deadline,
                    });
                }
                self.watch
                    .observe(&current.record, &PodStatus::Unknown, sent);
                self.current = Some(current);
                Ok(())
            }
            Err(error) => {
                if matches!(error, LeaseError::Conflict) {
                    // L1: lost the race. Forget the stale copy and any belief of holding it; re-read next.
                    self.current = None;
                    self.renewed_sent_at = None;
                }
                Err(error)
            }
        }
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// What the election rules read from a Lease object.
pub fn record_of(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.clone().unwrap_or_default();
    let annotation = |key: &str| {
        lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    LeaseRecord {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        renew_time: spec.renew_time.map(|t| t.0.to_string()),
        resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
        transitions: spec
            .lease_transitions
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(0),
        sync_members: annotation(ANNOTATION_SYNC_MEMBERS).map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        handover_to: annotation(ANNOTATION_HANDOVER).filter(|h| !h.is_empty()),
        lease_duration: spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs),
        wal_position: annotation(ANNOTATION_WAL_POSITION).and_then(|p| p.parse().ok()),
        timeline: annotation(ANNOTATION_TIMELINE).and_then(|t| t.parse().ok()),
        system_id: annotation(ANNOTATION_SYSTEM_ID).filter(|h| !h.is_empty()),
        renew_deadline: annotation(ANNOTATION_RENEW_DEADLINE)
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs),
    }
}

/// A copy that keeps `metadata.resourceVersion` (the condition of the write, L1) and drops what the
/// server manages.
fn base(current: &Lease) -> (ObjectMeta, LeaseSpec) {
    let meta = ObjectMeta {
        managed_fields: None,
        ..current.metadata.clone()
    };
    (meta, current.spec.clone().unwrap_or_default())
}

fn remove_annotation(meta: &mut ObjectMeta, key: &str) {
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(key);
    }
}

fn transitions(spec: &LeaseSpec) -> i32 {
    spec.lease_transitions.unwrap_or(0)
}

/// What a holder's write records besides its identity and times. It rides on the writes the holder
/// makes anyway (L9: no extra write).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// `leaseDurationSeconds`: followers wait at least this long (L2, L6).
    pub lease_duration: Duration,
    /// The `renewDeadline` the writer fences by: how long a member waits for a holder whose pod
    /// vanished (L8).
    pub renew_deadline: Duration,
    /// The writer's WAL position, the reference for lag (L3); `None` keeps the recorded one.
    pub wal_position: Option<u64>,
    /// The writer's timeline while it runs as primary; the recorded one only ever rises.
    pub timeline: Option<u32>,
    /// The data's database system identifier, recorded once: no member bootstraps after that.
    pub system_id: Option<String>,
    /// The highest epoch this member has seen: a recreated Lease never restarts the epoch below it (L7).
    pub min_epoch: u64,
}

fn apply_stamp(meta: &mut ObjectMeta, spec: &mut LeaseSpec, stamp: &Stamp) {
    spec.lease_duration_seconds =
        Some(i32::try_from(stamp.lease_duration.as_secs()).unwrap_or(i32::MAX));
    let annotations = meta.annotations.get_or_insert_default();
    annotations.insert(
        ANNOTATION_RENEW_DEADLINE.into(),
        stamp.renew_deadline.as_secs().to_string(),
    );
    if let Some(position) = stamp.wal_position {
        annotations.insert(ANNOTATION_WAL_POSITION.into(), position.to_string());
    }
    if let Some(timeline) = stamp.timeline {
        let recorded = annotations
            .get(ANNOTATION_TIMELINE)
            .and_then(|t| t.parse::<u32>().ok())
            .unwrap_or(0);
        annotations.insert(
            ANNOTATION_TIMELINE.into(),
            timeline.max(recorded).to_string(),
        );
    }
    if let Some(id) = &stamp.system_id {
        annotations
            .entry(ANNOTATION_SYSTEM_ID.into())
            .or_insert_with(|| id.clone());
    }
}

/// The next epoch after `spec`'s, never below `min_epoch` + 1 (L7).
fn next_epoch(spec: &LeaseSpec, min_epoch: u64) -> i32 {
    let floor = i32::try_from(min_epoch).unwrap_or(i32::MAX);
    transitions(spec).max(floor).saturating_add(1)
}

/// The holder's renewal: `renewTime` moves, the stamp is refreshed (and a handover to it is confirmed).
pub fn renewed(current: &Lease, me: &str, now: Timestamp, stamp: &Stamp) -> Lease {
    let (mut meta, mut spec) = base(current);
    spec.holder_identity = Some(me.to_owned());
    spec.renew_time = Some(MicroTime(now));
    apply_stamp(&mut meta, &mut spec, stamp);
    remove_annotation(&mut meta, ANNOTATION_HANDOVER);
    Lease {
        metadata: meta,
        spec: Some(spec),
    }
}

/// A takeover: a new epoch (L7) unless this member already was the holder (a restart's confirmation or a
/// handover, whose epoch the previous holder already advanced).
pub fn acquired(current: &Lease, me: &str, now: Timestamp, stamp: &Stamp) -> Lease {
    let (mut meta, mut spec) = base(current);
    let already = spec.holder_identity.as_deref() == Some(me);
    if !already {
        spec.lease_transitions = Some(next_epoch(&spec, stamp.min_epoch));
        spec.acquire_time = Some(MicroTime(now));
    }
    spec.holder_identity = Some(me.to_owned());
    spec.renew_time = Some(MicroTime(now));
    apply_stamp(&mut meta, &mut spec, stamp);
    remove_annotation(&mut meta, ANNOTATION_HANDOVER);
    Lease {
        metadata: meta,
        spec: Some(spec),
    }
}

/// A clean release (L4): no holder, so anyone eligible may claim it at once (L2); the epoch is kept.
///
/// `synchronous_member`: in the sync modes the releasing primary adds itself to the recorded synchronous
/// members. The holder always has every acknowledged commit, but once it is no longer the holder only the
/// record can say so; without this, a primary that ran without a recorded standby (degraded `sync`) and
/// then shut down cleanly would leave no member allowed to lead (L3). `wal_position`: where the stopped
/// primary's WAL ends, the reference for whoever claims the Lease next.
pub fn released(
    current: &Lease,
    synchronous_member: Option<&str>,
    wal_position: Option<u64>,
) -> Lease {
    let (mut meta, mut spec) = base(current);
    if let Some(me) = synchronous_member {
        let mut members = record_of(current).sync_members.unwrap_or_default();
        if !members.iter().any(|m| m == me) {
            members.push(me.to_owned());
            members.sort();
        }
        meta.annotations
            .get_or_insert_default()
            .insert(ANNOTATION_SYNC_MEMBERS.into(), members.join(","));
    }
    if let Some(position) = wal_position {
        meta.annotations
            .get_or_insert_default()
            .insert(ANNOTATION_WAL_POSITION.into(), position.to_string());
    }
    spec.holder_identity = None;
    spec.acquire_time = None;
    spec.renew_time = None;
    remove_annotation(&mut meta, ANNOTATION_HANDOVER);
    Lease {
        metadata: meta,
        spec: Some(spec),
    }
}

/// A switchover: the candidate becomes holder under a new epoch, marked as a handover it must confirm.
pub fn handed_over(current: &Lease, candidate: &str, now: Timestamp, stamp: &Stamp) -> Lease {
    let (mut meta, mut spec) = base(current);
    spec.holder_identity = Some(candidate.to_owned());
    spec.lease_transitions = Some(next_epoch(&spec, stamp.min_epoch));
    spec.acquire_time = Some(MicroTime(now));
    spec.renew_time = Some(MicroTime(now));
    apply_stamp(&mut meta, &mut spec, stamp);
    meta.annotations
        .get_or_insert_default()
        .insert(ANNOTATION_HANDOVER.into(), candidate.to_owned());
    Lease {
        metadata: meta,
        spec: Some(spec),
    }
}

/// The synchronous members annotation (L3), comma-separated.
pub fn with_sync_members(current: &Lease, members: &[String]) -> Lease {
    let (mut meta, spec) = base(current);
    meta.annotations
        .get_or_insert_default()
        .insert(ANNOTATION_SYNC_MEMBERS.into(), members.join(","));
    Lease {
        metadata: meta,
        spec: Some(spec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("c-leader".into()),
                resource_version: Some("41".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_transitions: Some(transitions),
                renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
                ..LeaseSpec::default()
            }),
        }
    }

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn st() -> Stamp {
        Stamp {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            ..Stamp::default()
        }
    }

    #[test]
    fn the_recorded_timeline_only_rises_and_survives_a_takeover_by_a_standby() {
        let on = |timeline| Stamp { timeline, ..st() };
        let first = renewed(&lease(Some("a"), 3), "a", ts(5), &on(Some(2)));
        assert_eq!(record_of(&first).timeline, Some(2));
        // A standby's takeover knows no timeline of its own yet: the record keeps the primary's, which
        // the new holder reserves before it promotes.
        let taken = acquired(&first, "b", ts(9), &on(None));
        assert_eq!(record_of(&taken).timeline, Some(2));
        let promoted = renewed(&taken, "b", ts(10), &on(Some(3)));
        assert_eq!(record_of(&promoted).timeline, Some(3));
        let older = renewed(&promoted, "b", ts(11), &on(Some(1)));
        assert_eq!(record_of(&older).timeline, Some(3), "never lowered");
        let handed = handed_over(&promoted, "c", ts(12), &on(None));
        assert_eq!(record_of(&handed).timeline, Some(3));
    }

    #[test]
    fn renewals_carry_the_stamp_and_record_the_system_identifier_once() {
        let current = lease(Some("a"), 3);
        let stamp = Stamp {
            wal_position: Some(4096),
            system_id: Some("742".into()),
            ..st()
        };
        let r = record_of(&renewed(&current, "a", ts(5), &stamp));
        assert_eq!(r.lease_duration, Some(Duration::from_secs(15)));
        assert_eq!(r.renew_deadline, Some(Duration::from_secs(10)));
        assert_eq!(r.wal_position, Some(4096));
        assert_eq!(r.system_id.as_deref(), Some("742"));
        let other = Stamp {
            system_id: Some("999".into()),
            wal_position: None,
            ..st()
        };
        let again = record_of(&renewed(
            &renewed(&current, "a", ts(5), &stamp),
            "a",
            ts(6),
            &other,
        ));
        assert_eq!(again.system_id.as_deref(), Some("742"), "never overwritten");
        assert_eq!(again.wal_position, Some(4096), "kept when not known");
    }

    #[test]
    fn l7_a_recreated_lease_never_restarts_the_epoch_below_what_was_seen() {
        let recreated = lease(None, 0);
        let stamp = Stamp {
            min_epoch: 7,
            ..st()
        };
        assert_eq!(
            record_of(&acquired(&recreated, "a", ts(1), &stamp)).transitions,
            8
        );
        assert_eq!(
            record_of(&handed_over(&recreated, "b", ts(1), &stamp)).transitions,
            8
        );
        assert_eq!(
            record_of(&acquired(&lease(Some("a"), 9), "b", ts(1), &stamp)).transitions,
            10
        );
    }

    #[test]
    fn l1_every_write_carries_the_resource_version_read() {
        let current = lease(Some("a"), 3);
        for written in [
            renewed(&current, "a", ts(5), &st()),
            acquired(&current, "b", ts(5), &st()),
            released(&current, None, None),
            handed_over(&current, "b", ts(5), &st()),
            with_sync_members(&current, &["b".into()]),
        ] {
            assert_eq!(written.metadata.resource_version.as_deref(), Some("41"));
        }
    }

    #[test]
    fn l7_transitions_count_holder_changes_only() {
        let current = lease(Some("a"), 3);
        assert_eq!(
            record_of(&renewed(&current, "a", ts(5), &st())).transitions,
            3
        );
        assert_eq!(
            record_of(&acquired(&current, "b", ts(5), &st())).transitions,
            4
        );
        assert_eq!(
            record_of(&acquired(&current, "a", ts(5), &st())).transitions,
            3,
            "a restart's confirmation"
        );
        let released = released(&current, None, None);
        assert_eq!(record_of(&released).holder, None);
        assert_eq!(
            record_of(&released).transitions,
            3,
            "release keeps the epoch"
        );
        assert_eq!(
            record_of(&acquired(&released, "a", ts(6), &st())).transitions,
            4
        );
        let handed = handed_over(&current, "b", ts(5), &st());
        let rec = record_of(&handed);
        assert_eq!(
            (
                rec.holder.as_deref(),
                rec.transitions,
                rec.handover_to.as_deref()
            ),
            (Some("b"), 4, Some("b"))
        );
        // The candidate's confirmation keeps the epoch and clears the mark.
        let confirmed = record_of(&acquired(&handed, "b", ts(6), &st()));
        assert_eq!((confirmed.transitions, confirmed.handover_to), (4, None));
    }

    #[test]
    fn renewal_moves_renew_time_only() {
        let current = lease(Some("a"), 3);
        let r = record_of(&renewed(&current, "a", ts(99), &st()));
        assert_ne!(r.renew_time, record_of(&current).renew_time);
        assert_eq!(r.holder.as_deref(), Some("a"));
    }

    #[test]
    fn a_synchronous_release_records_the_releasing_primary() {
        let current = with_sync_members(&lease(Some("a"), 3), &["b".into()]);
        let r = record_of(&released(&current, Some("a"), None));
        assert_eq!(r.sync_members, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(r.holder, None);
        let r = record_of(&released(&lease(Some("a"), 3), Some("a"), None));
        assert_eq!(r.sync_members, Some(vec!["a".to_owned()]));
        assert_eq!(
            record_of(&released(&current, None, None)).sync_members,
            Some(vec!["b".to_owned()])
        );
    }

    #[test]
    fn sync_members_round_trip() {
        let current = with_sync_members(&lease(Some("a"), 1), &["b".into(), "c".into()]);
        assert_eq!(
            record_of(&current).sync_members,
            Some(vec!["b".to_owned(), "c".to_owned()])
        );
        let empty = with_sync_members(&current, &[]);
        assert_eq!(record_of(&empty).sync_members, Some(vec![]));
    }
}
