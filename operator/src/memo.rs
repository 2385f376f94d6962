//! What the operator remembers between reconciles, in memory only (lost on restart, which costs one more
//! apply, one more status write and perhaps one repeated Event). No IO.
//!
//! [`Memo`]: per cluster, the fingerprint of the children last applied and when they and the status were
//! written, so an unchanged cluster costs no API writes. [`AnnouncedFailures`]: per cluster, the failure
//! last announced, so a failure repeating every retry is one Event.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use kube::ResourceExt;
use pgpilot_crds::{PostgresCluster, PostgresClusterStatus};
use tokio::time::Instant;

use crate::status;

/// Unchanged children are applied again this often, to undo edits by others (a deleted child is
/// re-created at the next reconcile).
pub const REAPPLY_EVERY: Duration = Duration::from_secs(300);
/// Status changes that are only WAL positions are written at most this often.
pub const VOLATILE_STATUS_EVERY: Duration = Duration::from_secs(60);

/// What the operator remembers about one cluster between reconciles.
#[derive(Clone, Copy, Debug)]
pub struct Memo {
    /// [`crate::apply::fingerprint`] of the children last applied.
    pub fingerprint: u64,
    pub applied_at: Instant,
    pub status_written_at: Option<Instant>,
}

/// Whether the built children must be applied: they changed, or it is time to re-assert them.
pub fn needs_apply(memo: Option<&Memo>, fingerprint: u64, now: Instant) -> bool {
    memo.is_none_or(|m| {
        m.fingerprint != fingerprint || now.duration_since(m.applied_at) >= REAPPLY_EVERY
    })
}

impl Memo {
    /// The memo after this reconcile's apply step: `applied` says whether the children were applied at
    /// `at`; otherwise the last apply's time and the last status write carry over.
    pub fn after_apply(
        previous: Option<Memo>,
        fingerprint: u64,
        applied: bool,
        at: Instant,
    ) -> Self {
        Self {
            fingerprint,
            applied_at: match previous {
                Some(m) if !applied => m.applied_at,
                _ => at,
            },
            status_written_at: previous.and_then(|m| m.status_written_at),
        }
    }

    /// Whether a status write can wait: it changes only WAL positions, and the status was written less
    /// than [`VOLATILE_STATUS_EVERY`] ago.
    pub fn defers(&self, prev: &PostgresClusterStatus, next: &PostgresClusterStatus) -> bool {
        status::only_volatile_changes(prev, next)
            && self
                .status_written_at
                .is_some_and(|t| t.elapsed() < VOLATILE_STATUS_EVERY)
    }
}

/// The operator's memory of every cluster, by [`cluster_key`]. A poisoned lock only loses the memory.
#[derive(Debug, Default)]
pub struct Memos(Mutex<HashMap<String, Memo>>);

impl Memos {
    pub fn get(&self, key: &str) -> Option<Memo> {
        self.0.lock().ok().and_then(|m| m.get(key).copied())
    }

    pub fn put(&self, key: String, memo: Memo) {
        if let Ok(mut memos) = self.0.lock() {
            memos.insert(key, memo);
        }
    }
}

/// The failure category last announced per cluster, so a failure repeating every retry is one Event.
#[derive(Debug, Default)]
pub struct AnnouncedFailures(Mutex<HashMap<String, String>>);

impl AnnouncedFailures {
    /// Records the outcome of a reconcile of `key` (`category`: its failure, if it failed); true when it is
    /// a failure not announced yet. A success forgets the last one, so the same failure coming back is
    /// announced again.
    pub fn record(&self, key: &str, category: Option<&str>) -> bool {
        let Ok(mut seen) = self.0.lock() else {
            return false;
        };
        match category {
            Some(c) if seen.get(key).map(String::as_str) != Some(c) => {
                seen.insert(key.to_owned(), c.to_owned());
                true
            }
            Some(_) => false,
            None => {
                seen.remove(key);
                false
            }
        }
    }
}

/// `<namespace>/<name>`: the key of a cluster in [`Memos`] and [`AnnouncedFailures`].
pub fn cluster_key(cluster: &PostgresCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_children_are_applied_again_only_every_few_minutes() {
        let t0 = Instant::now();
        let memo = Memo {
            fingerprint: 7,
            applied_at: t0,
            status_written_at: None,
        };
        assert!(needs_apply(None, 7, t0), "first sight");
        assert!(needs_apply(Some(&memo), 8, t0), "the children changed");
        assert!(!needs_apply(Some(&memo), 7, t0 + Duration::from_secs(10)));
        assert!(needs_apply(Some(&memo), 7, t0 + REAPPLY_EVERY));
    }

    #[test]
    fn the_apply_time_moves_only_with_an_apply() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        let first = Memo::after_apply(None, 7, false, t0);
        assert_eq!(
            first.applied_at, t0,
            "nothing remembered: as if applied now"
        );
        let written = Memo {
            status_written_at: Some(t0),
            ..first
        };
        let skipped = Memo::after_apply(Some(written), 7, false, t1);
        assert_eq!(
            (skipped.applied_at, skipped.status_written_at),
            (t0, Some(t0))
        );
        let applied = Memo::after_apply(Some(written), 8, true, t1);
        assert_eq!(
            (
                applied.fingerprint,
                applied.applied_at,
                applied.status_written_at
            ),
            (8, t1, Some(t0))
        );
    }

    #[test]
    fn a_failure_is_announced_once_until_the_cluster_recovers() {
        let seen = AnnouncedFailures::default();
        assert!(seen.record("db/pg", Some("ApplyStatefulSetFailed")));
        assert!(!seen.record("db/pg", Some("ApplyStatefulSetFailed")));
        assert!(seen.record("db/other", Some("ApplyStatefulSetFailed")));
        assert!(
            seen.record("db/pg", Some("ReadLeaseFailed")),
            "a new category"
        );
        assert!(!seen.record("db/pg", None));
        assert!(
            seen.record("db/pg", Some("ReadLeaseFailed")),
            "failing again"
        );
    }
}
