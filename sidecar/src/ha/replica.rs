//! Following: be a replica of the holder — clone when there is no data, rejoin (rewind, else re-clone)
//! when the data ran as a primary or diverged, otherwise configure and start. IO: PostgreSQL, the
//! upstream's server (history, rewind source).
//!
//! The multi-step actions are the lifecycle sequences of `postgres` ([`Postgres::clone_replica`],
//! [`Postgres::rejoin`]), the same code the integration tests run.
//!
//! [`Postgres::clone_replica`]: crate::postgres::Postgres::clone_replica
//! [`Postgres::rejoin`]: crate::postgres::Postgres::rejoin

use pgpilot_crds::contract::{PG_PORT, ROLE_PRIMARY, SidecarConfig};
use tracing::{debug, info};

use super::{HaError, HaLoop, Lineage, Phase};
use crate::postgres::{Change, Rejoined, Role, Upstream, slot_name};

impl HaLoop {
    /// Be a replica of `leader` (clone, rewind or reconfigure as needed), or a standby waiting for one.
    pub(super) async fn follow(
        &mut self,
        leader: Option<&str>,
        cfg: &SidecarConfig,
    ) -> Result<(), HaError> {
        if cfg.paused {
            return Ok(());
        }
        let leader_report = self.running_upstream(leader);
        let upstream = leader_report.as_ref().map(|(up, _)| up.clone());
        if !self.pg.is_initialized() {
            let Some(up) = upstream else {
                self.member.phase = Phase::WaitingForPrimary;
                return Ok(());
            };
            return self.clone_from(&up, cfg).await;
        }
        if self.member.lineage == Lineage::Follows
            && let Some((up, Some(upstream_timeline))) = &leader_report
            && self.replica_diverged(up, *upstream_timeline).await
        {
            self.member.lineage = Lineage::FormerPrimary;
        }
        let role = Role::Replica {
            // An empty host: no primary to stream from yet (a standby waiting for an election).
            upstream: upstream.clone().unwrap_or(Upstream {
                host: String::new(),
                port: PG_PORT,
            }),
            slot: Some(slot_name(&self.me)),
        };
        let desired = self.desired(cfg, role, None);
        if self.member.lineage == Lineage::FormerPrimary
            && let Some(up) = &upstream
        {
            self.member.phase = Phase::Rewinding;
            self.publish(cfg);
            let how = self.pg.rejoin(&desired).await?;
            if how == Rejoined::Recloned {
                self.metrics.error("rewind", "Recloned");
            }
            info!(member = %self.me, upstream = %up.host, ?how, "rejoined the new primary's timeline");
            self.member = super::Member {
                phase: Phase::Replica,
                lineage: Lineage::Follows,
            };
            self.mem.sync_configured = None;
            return Ok(());
        }
        let change = self.pg.configure(&desired).await?;
        self.mem.sync_configured = None;
        if !self.pg.is_running() {
            if self.member.lineage == Lineage::FormerPrimary && upstream.is_none() {
                // Read-only, replaying its own WAL; rewound once a primary is there to rewind from.
                debug!("former primary waiting as a standby until a primary appears");
            }
            self.member.phase = Phase::Starting;
            self.publish(cfg);
            self.pg.start().await?;
            self.member.phase = Phase::Replica;
            info!(member = %self.me, upstream = upstream.as_ref().map_or("none", |u| u.host.as_str()), "PostgreSQL started as replica");
        } else if let Change::NeedsRestart(what) = change {
            debug!(
                ?what,
                "parameters wait for a restart (reported as pending_restart)"
            );
        }
        Ok(())
    }

    /// The holder's address and timeline, once its report says it runs as primary: only then does it
    /// count as an upstream.
    fn running_upstream(&self, leader: Option<&str>) -> Option<(Upstream, Option<u32>)> {
        let leader = leader.filter(|l| *l != self.me)?;
        let peer = self.mem.peers.iter().find(|p| p.name == leader)?;
        let report = peer.report.as_ref()?;
        let host = peer.host.clone()?;
        (report.role == ROLE_PRIMARY && report.state == "running").then_some((
            Upstream {
                host,
                port: PG_PORT,
            },
            report.timeline,
        ))
    }

    /// A running replica on an older timeline than its upstream whose WAL went past the upstream's fork
    /// point: it can never stream from it (after a failover it had received more of the old primary's
    /// WAL than the promoted member). A failed check counts as "not diverged" and is retried next loop.
    async fn replica_diverged(&self, up: &Upstream, upstream_timeline: u32) -> bool {
        let obs = &self.mem.last_pg;
        let (Some(true), Some(timeline), Some(lsn)) =
            (obs.in_recovery, obs.timeline, obs.wal_position())
        else {
            return false;
        };
        match self
            .pg
            .diverged_from(up, upstream_timeline, timeline, lsn)
            .await
        {
            Ok(diverged) => diverged,
            Err(e) => {
                debug!(error = %e, upstream = %up.host, "cannot compare with the upstream's history yet");
                false
            }
        }
    }

    /// An empty member clones the primary and starts streaming in this same loop.
    async fn clone_from(&mut self, up: &Upstream, cfg: &SidecarConfig) -> Result<(), HaError> {
        info!(member = %self.me, upstream = %up.host, "cloning with pg_basebackup");
        self.member.phase = Phase::Cloning;
        self.publish(cfg);
        let role = Role::Replica {
            upstream: up.clone(),
            slot: Some(slot_name(&self.me)),
        };
        // A failed clone leaves PGDATA incomplete; the next loop clones again (leftovers are removed).
        self.pg
            .clone_replica(&self.desired(cfg, role, None))
            .await?;
        self.member = super::Member {
            phase: Phase::Replica,
            lineage: Lineage::Follows,
        };
        info!(member = %self.me, "replica created and started");
        Ok(())
    }
}
