//! The memory the election rules need across loops (pure): the Lease record as last read, since when it
//! has been unchanged on this member's monotonic clock (L2), and what the holder's pod looked like when
//! it last changed (L8).

use std::time::{Duration, Instant};

/// The Lease as last read. Remote timestamps are opaque: compared for equality only (L2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `spec.holderIdentity`; `None` or empty means released (or never held).
    pub holder: Option<String>,
    /// `spec.renewTime` as the apiserver returned it.
    pub renew_time: Option<String>,
    pub resource_version: String,
    /// `spec.leaseTransitions`: the fencing epoch (L7).
    pub transitions: u64,
    /// The members recorded as synchronous (annotation `pgpilot.io/sync-members`), `None` when absent.
    pub sync_members: Option<Vec<String>>,
    /// The member a switchover handed the Lease to, until it confirms (annotation `pgpilot.io/handover-to`).
    pub handover_to: Option<String>,
    /// `spec.leaseDurationSeconds` as the holder wrote it: followers wait at least this long (L2, L6).
    pub lease_duration: Option<Duration>,
    /// The holder's WAL position when it last wrote the record (annotation `pgpilot.io/wal-position`):
    /// the reference a restarted member measures its lag against (L3).
    pub wal_position: Option<u64>,
    /// The newest timeline a primary of the cluster ran on (annotation `pgpilot.io/timeline`): a
    /// promotion picks an ID above it.
    pub timeline: Option<u32>,
    /// The cluster's database system identifier (annotation `pgpilot.io/system-identifier`): once set,
    /// nobody bootstraps.
    pub system_id: Option<String>,
    /// The `renewDeadline` the holder fences by (annotation `pgpilot.io/renew-deadline-seconds`).
    pub renew_deadline: Option<Duration>,
}

impl LeaseRecord {
    /// The holder, treating an empty identity as none.
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }

    fn key(&self) -> RecordKey {
        RecordKey {
            holder: self.holder().map(str::to_owned),
            renew_time: self.renew_time.clone(),
            resource_version: self.resource_version.clone(),
        }
    }
}

/// What L2 compares: the record is "unchanged" while all three are equal.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RecordKey {
    holder: Option<String>,
    renew_time: Option<String>,
    resource_version: String,
}

/// A member's pod and PostgreSQL container as the kubelet reports them (L8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PodStatus {
    /// Pods not listed yet, or the member has no pod to judge by (tests without pods).
    #[default]
    Unknown,
    /// The pod list is complete and has no pod of that name.
    Gone,
    Present {
        uid: String,
        /// The PostgreSQL container's current state is `terminated`.
        terminated: bool,
        /// The PostgreSQL container's `restartCount`.
        restarts: u32,
    },
}

/// Local memory of the Lease record: since when it has been unchanged on this member's monotonic clock
/// (L2), and what the holder's pod looked like when it last changed (L8). Pure: the caller passes `now`.
#[derive(Clone, Debug, Default)]
pub struct LeaseWatch {
    key: Option<RecordKey>,
    since: Option<Instant>,
    /// The holder pod's uid and container restart count when the record last changed.
    holder_baseline: Option<(String, u32)>,
    /// A read failed since the last successful one.
    outage: bool,
}

impl LeaseWatch {
    /// The Lease could not be read this loop. The next successful read restarts the clock (L2): while
    /// this member could not read, neither could the holder perhaps write — a failsafe holder that the
    /// apiserver did not answer must get a whole `leaseDuration` to renew once it answers again.
    pub fn read_failed(&mut self) {
        self.outage = true;
    }

    /// Records one observation of the Lease and of its holder's pod.
    pub fn observe(&mut self, record: &LeaseRecord, holder_pod: &PodStatus, now: Instant) {
        let key = record.key();
        if self.key.as_ref() != Some(&key) || std::mem::take(&mut self.outage) {
            self.key = Some(key);
            self.since = Some(now);
            self.holder_baseline = baseline(holder_pod);
        } else if self.holder_baseline.is_none() {
            // The pod became known after the record changed: what it says now is the earliest we know.
            self.holder_baseline = baseline(holder_pod);
        }
    }

    /// How long the record has been unchanged (zero before the first observation).
    pub fn unchanged_for(&self, now: Instant) -> Duration {
        self.since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// L8: the kubelet says the holder's PostgreSQL container, in the pod that held the record when it
    /// last changed, terminated or restarted since: the processes that could accept writes under this
    /// record are dead.
    pub fn holder_dead(&self, holder_pod: &PodStatus) -> bool {
        match holder_pod {
            PodStatus::Present {
                uid,
                terminated,
                restarts,
            } => {
                *terminated
                    || self
                        .holder_baseline
                        .as_ref()
                        .is_some_and(|(base_uid, base_restarts)| {
                            base_uid == uid && restarts > base_restarts
                        })
            }
            PodStatus::Unknown | PodStatus::Gone => false,
        }
    }

    /// The holder's pod is gone from the API, or was replaced by a new one. That alone proves nothing
    /// about its processes: a pod force-deleted on a partitioned node keeps running there (L8 needs an
    /// observed termination). It only lets a member stop waiting once the holder must have fenced.
    pub fn holder_gone(&self, holder_pod: &PodStatus) -> bool {
        match holder_pod {
            PodStatus::Gone => true,
            PodStatus::Present { uid, .. } => self
                .holder_baseline
                .as_ref()
                .is_some_and(|(base_uid, _)| base_uid != uid),
            PodStatus::Unknown => false,
        }
    }
}

fn baseline(pod: &PodStatus) -> Option<(String, u32)> {
    match pod {
        PodStatus::Present {
            uid,
            terminated: false,
            restarts,
        } => Some((uid.clone(), *restarts)),
        _ => None,
    }
}
