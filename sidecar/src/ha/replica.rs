//! Following: be a replica of the holder — clone when there is no data, rejoin (rewind, else re-clone)
//! when the data ran as a primary or diverged, otherwise configure and start. IO: PostgreSQL, the
//! upstream's server (history, rewind source).
//!
//! The multi-step actions are the lifecycle sequences of `postgres` ([`Postgres::clone_replica`],
//! [`Postgres::rejoin`]), the same code the integration tests run.
//!
//! [`Postgres::clone_replica`]: crate::postgres::Postgres::clone_replica
//! [`Postgres::rejoin`]: crate::postgres::Postgres::rejoin

use pgpilot_crds::contract::{MIN_MAJOR, PG_PORT, ROLE_PRIMARY, SidecarConfig};
use tracing::{debug, error, info};

use super::{HaError, HaLoop, Lineage, Phase};
use crate::{
    postgres::{Change, Rejoined, Role, Upstream, slot_name},
    state::PeerState,
};

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
        let upstream_id = leader
            .and_then(|l| self.upstream_peer(l))
            .and_then(|p| p.report.as_ref()?.pgpilot.system_identifier.clone());
        if let Some(why) = self.data_refusal(upstream_id.as_deref()) {
            return self.refuse(why);
        }
        self.mem.refusal = None;
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
                self.note_system_id().await;
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

    /// Why this member must not bootstrap, start, clone onto, rewind or wipe its data (`None`: it may):
    /// a server too old, data of another major version than this image's server, or of another database
    /// system than the cluster's or the primary's (`upstream_id`, its report's).
    pub(super) fn data_refusal(&self, upstream_id: Option<&str>) -> Option<String> {
        let cluster_id = self.elector.record().and_then(|r| r.system_id.clone());
        version_refusal(self.pg.data_major(), self.mem.binary_major).or_else(|| {
            system_mismatch(
                self.mem.system_id.as_deref(),
                upstream_id,
                cluster_id.as_deref(),
            )
        })
    }

    /// Refuses to touch the data (issue 13 hole 4): shown over REST, reported by the operator.
    pub(super) fn refuse(&mut self, why: String) -> Result<(), HaError> {
        if self.mem.refusal.as_ref() != Some(&why) {
            error!(member = %self.me, reason = %why, "refusing to clone, rewind or wipe");
        }
        self.member.phase = Phase::Refusing;
        self.mem.refusal = Some(why);
        Ok(())
    }

    /// Reads the data directory's system identifier after it was (re)created.
    pub(super) async fn note_system_id(&mut self) {
        self.mem.system_id = self
            .pg
            .controldata()
            .await
            .ok()
            .map(|c| c.system_identifier);
    }

    /// A peer to stream from: a member, or the holder a scale-down left outside the members.
    fn upstream_peer(&self, name: &str) -> Option<&PeerState> {
        super::peer_named(&self.mem.peers, self.mem.leaving_holder.as_ref(), name)
    }

    /// The holder's address and timeline, once its report says it runs as primary: only then does it
    /// count as an upstream.
    fn running_upstream(&self, leader: Option<&str>) -> Option<(Upstream, Option<u32>)> {
        let leader = leader.filter(|l| *l != self.me)?;
        let peer = self.upstream_peer(leader)?;
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
        // Its renewals record it on a recreated Lease once it is primary (L4), and the refusals compare it.
        self.note_system_id().await;
        self.member = super::Member {
            phase: Phase::Replica,
            lineage: Lineage::Follows,
        };
        info!(member = %self.me, "replica created and started");
        Ok(())
    }
}

/// Why this member must not clone from, rewind onto or wipe its data for the primary (`None`: no
/// reason): the identifiers of its own data, of the primary's (its REST report) and of the cluster (the
/// Lease), where known, must agree. A Lease recreated empty, a restore from another cluster, or a wrong
/// volume must never make a member replace the cluster's data with another system's.
pub fn system_mismatch(
    mine: Option<&str>,
    upstream: Option<&str>,
    cluster: Option<&str>,
) -> Option<String> {
    match (mine, upstream, cluster) {
        (Some(m), _, Some(c)) if m != c => Some(format!(
            "this member's data belongs to database system {m}, the cluster's is {c}"
        )),
        (_, Some(u), Some(c)) if u != c => Some(format!(
            "the primary's data belongs to database system {u}, the cluster's is {c}"
        )),
        (Some(m), Some(u), _) if m != u => Some(format!(
            "this member's data belongs to database system {m}, the primary's to {u}"
        )),
        _ => None,
    }
}

/// The oldest PostgreSQL major version pgpilot runs (the roles and grants it sets up need 15).
/// Why this image must not bootstrap, start, clone onto, rewind or wipe the data directory (`None`: it
/// may): a server older than [`MIN_MAJOR`], or data made by another major version — read by neither
/// server, and a major upgrade is not an image change: a wipe and re-clone would throw the data away.
pub fn version_refusal(data: Option<u32>, binary: Option<u32>) -> Option<String> {
    match (data, binary) {
        (_, Some(b)) if b < MIN_MAJOR => Some(format!(
            "this image runs PostgreSQL {b}; pgpilot needs PostgreSQL {MIN_MAJOR} or newer"
        )),
        (Some(d), Some(b)) if d != b => Some(format!(
            "the data directory is PostgreSQL {d}'s and this image runs PostgreSQL {b}: set the image back to \
             PostgreSQL {d} (a major version upgrade is not an image change)"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_of_another_major_version_or_a_too_old_server_is_never_touched() {
        assert_eq!(version_refusal(Some(15), Some(15)), None);
        assert_eq!(version_refusal(Some(17), Some(17)), None);
        assert_eq!(version_refusal(None, Some(17)), None, "no data yet");
        assert_eq!(version_refusal(Some(15), None), None, "version unknown");
        let why = version_refusal(Some(15), Some(17)).unwrap();
        assert!(
            why.contains("PostgreSQL 15's") && why.contains("runs PostgreSQL 17"),
            "{why}"
        );
        let why = version_refusal(None, Some(14)).unwrap();
        assert!(why.contains("needs PostgreSQL 15 or newer"), "{why}");
        assert!(version_refusal(Some(14), Some(14)).is_some());
    }

    #[test]
    fn data_of_another_system_is_never_touched() {
        assert_eq!(system_mismatch(Some("1"), Some("1"), Some("1")), None);
        assert_eq!(system_mismatch(None, None, None), None);
        assert_eq!(
            system_mismatch(None, Some("1"), None),
            None,
            "nothing to compare"
        );
        assert!(system_mismatch(Some("2"), Some("1"), Some("1")).is_some());
        assert!(
            system_mismatch(None, Some("2"), Some("1")).is_some(),
            "never clone a stranger"
        );
        assert!(system_mismatch(Some("2"), Some("1"), None).is_some());
        assert!(system_mismatch(Some("2"), None, Some("1")).is_some());
    }
}
