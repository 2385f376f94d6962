//! The role label, epoch annotation and load-balance label on the pods (L7, L9): this member's own, patched only when it
//! differs, and a stale primary's, overwritten once by the new holder. IO: pod patches.

use std::time::Instant;

use kube::api::{Patch, PatchParams};
use pgpilot_crds::contract::{
    ANNOTATION_EPOCH, LABEL_LOAD_BALANCE, LABEL_ROLE, ROLE_PRIMARY, ROLE_REPLICA,
    SIDECAR_FIELD_MANAGER,
};
use serde_json::json;
use tracing::{info, warn};

use super::{HaError, HaLoop};
use crate::election::{RoleMark, role_patch, stale_primaries, wanted_mark};

impl HaLoop {
    /// L7: the new holder overwrites any other pod's primary label once, so `-rw` never routes there.
    pub(super) async fn relabel_stale_primaries(&mut self) {
        let marks = self.peers.role_marks();
        let stale = stale_primaries(
            marks.iter().map(|(n, m)| (n.as_str(), m)),
            &self.me,
            ROLE_PRIMARY,
        );
        let epoch = self.elector.record().map_or(0, |r| r.transitions);
        for pod in stale {
            info!(pod = %pod, epoch, "relabelling a stale primary's pod as replica (L7)");
            let mark = RoleMark {
                role: Some(ROLE_REPLICA.into()),
                ..RoleMark::default()
            };
            if let Err(e) = self.patch_mark(&pod, &mark).await {
                warn!(error = %e, pod = %pod, "cannot relabel");
            }
        }
    }

    /// L7/L9: this pod's role label, epoch annotation and load-balance label, patched only when they
    /// differ.
    pub(super) async fn label_own_pod(&mut self) {
        let primary = self.is_leading();
        let no_load_balance = self
            .config
            .borrow()
            .tags
            .get(&self.me)
            .is_some_and(|t| t.no_load_balance);
        let wanted = wanted_mark(
            if primary { ROLE_PRIMARY } else { ROLE_REPLICA },
            self.elector.record().map(|r| r.transitions),
            no_load_balance,
        );
        let Some(current) = self.peers.own_mark() else {
            return;
        };
        let Some(patch) = role_patch(&current, &wanted) else {
            return;
        };
        if let Some((last, at)) = &self.mem.patched
            && *last == patch
            && at.elapsed() < self.timings.retry_period * 3
        {
            return; // just written; the pod cache has not caught up yet
        }
        match self.patch_mark(&self.me.clone(), &patch).await {
            Ok(()) => {
                info!(role = ?patch.role, epoch = ?patch.epoch, "pod role label updated");
                self.mem.patched = Some((patch, Instant::now()));
            }
            Err(e) => {
                warn!(error = %e, "cannot label the own pod");
                self.metrics.error("pod", e.category());
            }
        }
    }

    async fn patch_mark(&self, pod: &str, mark: &RoleMark) -> Result<(), HaError> {
        let mut metadata = json!({ "labels": { LABEL_ROLE: mark.role } });
        if let Some(balance) = &mark.load_balance {
            metadata["labels"][LABEL_LOAD_BALANCE] = json!(balance);
        }
        if let Some(epoch) = mark.epoch {
            metadata["annotations"] = json!({ ANNOTATION_EPOCH: epoch.to_string() });
        }
        let params = PatchParams {
            field_manager: Some(SIDECAR_FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        // Bounded: the loop must never wait on the apiserver past its own pace (a label patch stuck on
        // a dead connection kept `-rw` empty for 27 s after a heal).
        let patch = Patch::Merge(json!({ "metadata": metadata }));
        let request = self.pods.patch(pod, &params, &patch);
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(result) => result.map(|_| ()).map_err(|source| HaError::Pod { source }),
            Err(_) => Err(HaError::PodTimeout(self.request_timeout)),
        }
    }
}
