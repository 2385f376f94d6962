//! Leading: take the Lease, make PostgreSQL the primary under it (bootstrap, start, promote), keep it
//! so, and give it back (release, demote). IO: the Lease, PostgreSQL, the pod label.
//!
//! Every path that can make PostgreSQL writable runs only after this process confirmed the Lease with a
//! conditional write (L4), and every long step runs under [`renewing`] so the renewal deadline keeps
//! being met or the member fences (L5).

use k8s_openapi::jiff::Timestamp;
use pgpilot_crds::contract::SidecarConfig;
use tracing::{error, info, warn};

use super::{HaError, HaLoop, Lineage, Phase, fencing::renewing};
use crate::{
    election::{AcquireReason, lease::LeaseError},
    postgres::{Role, StopMode, SyncStandbys},
    state::HistoryEntry,
};

/// Consecutive failed starts of PostgreSQL as primary after which the holder gives the Lease up.
const MAX_PRIMARY_START_FAILURES: u32 = 3;

impl HaLoop {
    /// L1/L4: a conditional write takes (or confirms) the Lease; only then may PostgreSQL lead. A 409
    /// is a lost race: nothing happens, the next loop re-reads.
    pub(super) async fn acquire(
        &mut self,
        reason: AcquireReason,
        cfg: &SidecarConfig,
    ) -> Result<(), HaError> {
        // A server that cannot run this data (or pgpilot) never takes the Lease only to give it back.
        if !self.pg.is_running()
            && let Some(why) =
                super::replica::version_refusal(self.pg.data_major(), self.mem.binary_major)
        {
            return self.refuse(why);
        }
        // A standby that wins promotes next, onto a timeline ID no primary of the cluster used, even
        // one it never heard from (L4): it reserves them, and records the ID it will take in this very
        // write, so a cut right after the promotion cannot leave the record behind.
        if self.pg.is_running()
            && self.mem.last_pg.in_recovery == Some(true)
            && let Some(current) = self.mem.last_pg.timeline
        {
            let newest = self.elector.record().and_then(|r| r.timeline);
            let next = self
                .pg
                .reserve_timelines(current, newest.unwrap_or(current))?;
            self.elector.set_primary_timeline(Some(next));
        }
        let result = self
            .elector
            .acquire(self.wal_stamp(), self.mem.system_id.as_deref())
            .await;
        self.metrics.lease_write("acquire", result.is_ok());
        if let Err(LeaseError::Conflict) = result {
            info!(reason = ?reason, "lost the race for the Lease");
            return Ok(());
        }
        result?;
        let epoch = self.elector.record().map_or(0, |r| r.transitions);
        info!(reason = ?reason, epoch, "acquired the Lease");
        if reason == AcquireReason::Bootstrap {
            self.member.phase = Phase::Bootstrapping;
        }
        self.mem.primary_start_failures = 0;
        self.lead(cfg).await
    }

    /// Failsafe (L5): the apiserver does not answer but every member confirmed this primary; keep
    /// serving and keep trying to renew.
    pub(super) async fn failsafe_hold(&mut self, cfg: &SidecarConfig) -> Result<(), HaError> {
        // Every member confirmed this primary this loop: the fencing deadline counts from here.
        self.mem.failsafe_held_at = Some(std::time::Instant::now());
        let result = self
            .elector
            .renew(self.wal_stamp(), self.mem.system_id.as_deref())
            .await;
        self.metrics.lease_write("renew", result.is_ok());
        match result {
            Ok(()) => self.lead(cfg).await,
            // Someone else wrote the Lease: no failsafe; the next loop reads it and demotes.
            Err(e @ LeaseError::Conflict) => Err(e.into()),
            Err(e) => {
                warn!(error = %e, "apiserver unreachable: every member confirms this primary, keeping it (failsafe)");
                Ok(())
            }
        }
    }

    /// This member holds the Lease (confirmed by its own write, L4): make PostgreSQL the primary.
    pub(super) async fn lead(&mut self, cfg: &SidecarConfig) -> Result<(), HaError> {
        if cfg.paused {
            return Ok(());
        }
        if let Some(why) = self.data_refusal(None) {
            // Holding the Lease over another system's (or major version's) data: never serve it.
            self.release().await?;
            return self.refuse(why);
        }
        if !self.pg.is_initialized() {
            if self.member.phase != Phase::Bootstrapping {
                // Holding the Lease without data and without having won it to bootstrap: give it back.
                warn!("holding the Lease without a data directory: releasing it");
                return self.release().await;
            }
            return self.bootstrap(cfg).await;
        }
        let running = self.pg.is_running();
        if !running {
            if self.mem.primary_start_failures >= MAX_PRIMARY_START_FAILURES {
                warn!(
                    failures = self.mem.primary_start_failures,
                    "PostgreSQL does not start as primary: releasing the Lease"
                );
                self.mem.primary_start_failures = 0;
                return self.release().await;
            }
            let sync = self.initial_sync(cfg);
            self.start_primary(cfg, sync).await?;
        } else if self.mem.last_pg.in_recovery == Some(true) && self.member.phase != Phase::Primary
        {
            self.promote(cfg).await?;
        }
        if !self.pg.is_running() {
            return Ok(());
        }
        // The primary's own data is the reference: nothing to rewind.
        self.member.lineage = Lineage::Follows;
        self.manage_sync(cfg).await?;
        self.relabel_stale_primaries().await;
        Ok(())
    }

    /// The first holder: initdb, start as primary, roles and database, all while renewing (L4: only
    /// after acquiring). A fresh cluster starts asynchronous: the roles a standby needs to connect do not
    /// exist yet. Any failure stops the server and wipes the half-made directory; the next loop starts
    /// over (no client can have written: the application role did not exist yet).
    async fn bootstrap(&mut self, cfg: &SidecarConfig) -> Result<(), HaError> {
        info!(member = %self.me, "bootstrapping a new cluster (initdb)");
        self.publish(cfg);
        let desired = self.desired(cfg, Role::Primary, None);
        let result = renewing(
            &mut self.elector,
            &self.timings,
            "bootstrap",
            self.pg.bootstrap_primary(&desired),
        )
        .await;
        match result {
            Ok(Ok(())) => {
                self.mem.sync_configured = None;
                self.member.became_primary();
                // Recorded on the Lease by the next renewal: from then on nobody bootstraps again.
                self.note_system_id().await;
                info!(member = %self.me, system_identifier = ?self.mem.system_id, "PostgreSQL started as primary");
                Ok(())
            }
            Ok(Err(e)) => {
                let _ = self.pg.stop(StopMode::Immediate).await;
                let _ = self.pg.wipe().await;
                Err(e.into())
            }
            Err(e) => {
                self.pg.fence().await?;
                let _ = self.pg.wipe().await;
                Err(e)
            }
        }
    }

    pub(super) async fn start_primary(
        &mut self,
        cfg: &SidecarConfig,
        sync: Option<SyncStandbys>,
    ) -> Result<(), HaError> {
        let desired = self.desired(cfg, Role::Primary, sync);
        self.pg.configure(&desired).await?;
        self.mem.sync_configured = desired.synchronous.as_ref().map(|s| s.names.clone());
        self.member.phase = Phase::Starting;
        self.publish(cfg);
        match renewing(&mut self.elector, &self.timings, "start", self.pg.start()).await {
            Ok(Ok(())) => {
                info!(member = %self.me, "PostgreSQL started as primary");
                self.member.became_primary();
                self.mem.primary_start_failures = 0;
                Ok(())
            }
            Ok(Err(e)) => {
                self.mem.primary_start_failures += 1;
                let _ = self.pg.stop(StopMode::Immediate).await;
                Err(e.into())
            }
            Err(e) => {
                self.pg.fence().await?;
                Err(e)
            }
        }
    }

    /// L4: promote only after the Lease was acquired (the caller holds it, confirmed).
    async fn promote(&mut self, cfg: &SidecarConfig) -> Result<(), HaError> {
        info!(member = %self.me, "promoting");
        let desired = self.desired(cfg, Role::Primary, self.initial_sync(cfg));
        match renewing(
            &mut self.elector,
            &self.timings,
            "promote",
            self.pg.promote(),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Never hold the Lease over a member that cannot become primary: another one may.
                error!(member = %self.me, error = %e, "promotion failed: stopping PostgreSQL and releasing the Lease");
                self.metrics.error("promote", e.category());
                self.member.lineage = Lineage::FormerPrimary;
                self.release().await?;
                return Err(e.into());
            }
            Err(e) => {
                self.pg.fence().await?;
                return Err(e);
            }
        }
        self.member.became_primary();
        // `synchronous_standby_names` before the `-rw` Service routes here (the label below): clients of
        // the Service never commit without the synchronous standbys (L3). (It cannot go in before the
        // promotion: PostgreSQL's promotion needs `standby.signal`, which the primary's files drop.)
        self.pg.configure(&desired).await?;
        self.mem.sync_configured = desired.synchronous.as_ref().map(|s| s.names.clone());
        // Route writes here at once; the rest of the primary's upkeep follows in this loop.
        self.label_own_pod().await;
        let obs = self.pg.observe().await;
        self.mem.history.push(HistoryEntry {
            timeline: obs.timeline.unwrap_or(0),
            lsn: obs.current_lsn.unwrap_or(0),
            reason: "promoted by pgpilot".into(),
            timestamp: Timestamp::now().to_string(),
            leader: self.me.clone(),
        });
        self.mem.last_pg = obs;
        Ok(())
    }

    /// Empty holder after PostgreSQL is stopped (L4).
    pub(super) async fn release(&mut self) -> Result<(), HaError> {
        self.member.stopped(Phase::Stopped);
        self.pg.stop(StopMode::Fast).await?;
        let end = self.pg.controldata().await.ok().map(|c| c.checkpoint_lsn);
        let result = self.elector.release(self.synchronous_mode(), end).await;
        self.metrics.lease_write("release", result.is_ok());
        result?;
        info!(member = %self.me, "released the Lease");
        Ok(())
    }

    /// L4: a primary without the Lease stops (a fast shutdown checkpoints) and will rejoin as a replica.
    pub(super) async fn demote(&mut self) -> Result<(), HaError> {
        warn!(member = %self.me, "running as primary without the Lease: demoting");
        self.member.stopped(Phase::Stopped);
        self.member.lineage = Lineage::FormerPrimary;
        self.pg.stop(StopMode::Fast).await?;
        Ok(())
    }
}
