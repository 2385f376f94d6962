//! What the REST API asks of the loop, carried out between two loops so no action ever runs
//! concurrently with the loop's own: switchover (now or scheduled), restart, reload, reinitialize, a
//! manual failover.
//! IO: PostgreSQL, the Lease (the handover), the candidate's server.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use pgpilot_crds::contract::{PG_PORT, SidecarConfig};
use tracing::{debug, info, instrument, warn};

use super::{HaError, HaLoop, Lineage, Phase, fencing::renewing};
use crate::{
    election::{
        Decision, ManualStep, decide, manual_failover,
        switchover::{self, Target},
    },
    postgres::{Change, Role, StopMode, Upstream, slot_name},
    state::{Action, Outcome},
};

/// How long a switchover waits for the candidate to receive the old primary's shutdown checkpoint.
const SWITCHOVER_CATCH_UP: Duration = Duration::from_secs(15);

/// The longest a manual failover waits for the Lease to become takeable (within the REST API's wait
/// for an answer).
const MANUAL_FAILOVER_PATIENCE: Duration = Duration::from_secs(50);

impl HaLoop {
    /// A REST command, between two loops.
    pub(super) async fn command(&mut self, action: Action) -> Outcome {
        info!(?action, "REST command");
        let cfg = self.config.borrow().clone();
        let outcome = match action {
            Action::Switchover {
                candidate,
                at: Some(at),
            } if at > Timestamp::now() => {
                self.mem.scheduled = Some((candidate, at));
                Outcome::new(202, format!("Switchover scheduled at {at}"))
            }
            Action::Switchover { candidate, .. } => self.switchover(candidate).await,
            Action::Restart => self.restart(&cfg).await,
            Action::Reload => self.reload(&cfg).await,
            Action::Reinitialize => self.reinitialize().await,
            Action::Failover { force } => self.manual_failover(force, &cfg).await,
        };
        self.publish(&cfg);
        outcome
    }

    /// `POST /failover` to this member while no primary serves: loops of its own — each a fresh
    /// observation and [`manual_failover`] — until the Lease may be taken, then the conditional write
    /// and the promotion of any takeover (L1, L4), or a refusal. It waits at most as long as a holder's
    /// record takes to expire after its last renewal (`leaseDuration`, then one retry period), so a
    /// failover asked for right after the primary's node died completes in the same call.
    async fn manual_failover(&mut self, force: bool, cfg: &SidecarConfig) -> Outcome {
        let patience = (self.timings.lease_duration + 2 * self.timings.retry_period)
            .min(MANUAL_FAILOVER_PATIENCE);
        let until = Instant::now() + patience;
        loop {
            let obs = self.observe(cfg).await;
            match manual_failover(&obs, Instant::now(), &self.timings, force) {
                ManualStep::Refused(why) => {
                    info!(reason = %why, "manual failover refused");
                    return Outcome::new(412, why);
                }
                ManualStep::NotYet(why) if Instant::now() >= until => {
                    return Outcome::new(503, format!("{why} after {patience:?}; try again"));
                }
                ManualStep::NotYet(why) => {
                    debug!(reason = %why, "manual failover waits");
                    self.heartbeat.beat();
                    tokio::time::sleep(self.timings.retry_period).await;
                }
                ManualStep::Acquire(reason) => {
                    info!(?reason, force, "manual failover: taking the Lease");
                    if let Err(e) = self.acquire(reason, cfg).await {
                        return Outcome::new(503, format!("manual failover failed: {e}"));
                    }
                    if self.elector.renewed_sent_at().is_none() {
                        return Outcome::new(
                            409,
                            "the Lease changed meanwhile: another member took over first",
                        );
                    }
                    let epoch = self.elector.record().map_or(0, |r| r.transitions);
                    return Outcome::new(
                        200,
                        format!("Successfully failed over to {} (epoch {epoch})", self.me),
                    );
                }
            }
        }
    }

    async fn reload(&mut self, cfg: &SidecarConfig) -> Outcome {
        let primary = self.member.phase == Phase::Primary;
        let role = if primary {
            Role::Primary
        } else {
            match &self.mem.last_pg.wal_receiver {
                Some(w) if w.upstream_host.is_some() => Role::Replica {
                    upstream: Upstream {
                        host: w.upstream_host.clone().unwrap_or_default(),
                        port: PG_PORT,
                    },
                    slot: Some(slot_name(&self.me)),
                },
                _ => return Outcome::new(503, "not following a primary yet: nothing to reload"),
            }
        };
        let sync = if primary {
            self.current_sync(cfg)
        } else {
            None
        };
        match self.pg.configure(&self.desired(cfg, role, sync)).await {
            Ok(Change::NeedsRestart(p)) => {
                Outcome::new(200, format!("reloaded; pending restart: {}", p.join(", ")))
            }
            Ok(_) => Outcome::new(200, "reloaded"),
            Err(e) => Outcome::new(503, format!("reload failed: {e}")),
        }
    }

    async fn reinitialize(&mut self) -> Outcome {
        if self.elector.renewed_sent_at().is_some() {
            return Outcome::new(503, "I am the leader, can not reinitialize");
        }
        let _ = self.pg.stop(StopMode::Immediate).await;
        if let Some(why) = &self.mem.refusal {
            return Outcome::new(503, format!("refusing to reinitialize: {why}"));
        }
        match self.pg.wipe().await {
            Ok(()) => {
                self.mem.system_id = None;
                self.member.phase = Phase::Cloning;
                self.member.lineage = Lineage::Follows;
                Outcome::new(
                    200,
                    "reinitialize started: the member clones from the primary",
                )
            }
            Err(e) => Outcome::new(503, format!("reinitialize failed: {e}")),
        }
    }

    /// `POST /restart` runs as one loop of its own (issue 13 hole 9): a fresh read of the Lease and the
    /// same [`decide`] as every loop choose the role the server comes back in. The confirmed holder
    /// restarts as primary while renewing (a slow stop cannot let the Lease expire, L5); anyone else
    /// comes back as a replica, its files saying so first (a fenced former holder never restarts
    /// writable from its primary files, L4). Any other decision is carried out instead, and the
    /// restart refused.
    async fn restart(&mut self, cfg: &SidecarConfig) -> Outcome {
        let obs = self.observe(cfg).await;
        let decision = decide(&obs, Instant::now(), &self.timings);
        info!(decision = %decision, "restart requested");
        let result = match &decision {
            Decision::Hold | Decision::Renew if self.is_leading() => {
                self.restart_primary(&decision, cfg).await
            }
            Decision::Follow { leader, .. } => {
                self.member.phase = Phase::Restarting;
                self.publish(cfg);
                let stopped = self.pg.stop(StopMode::Fast).await;
                self.member.phase = Phase::Stopped;
                match stopped {
                    Ok(()) => self.follow(leader.clone().as_deref(), cfg).await,
                    Err(e) => Err(e.into()),
                }
            }
            other => {
                let acted = self.act(other, cfg).await;
                self.arm_watchdog();
                return Outcome::new(
                    503,
                    format!("not restarted: this loop decided {other} ({acted:?})"),
                );
            }
        };
        self.arm_watchdog();
        match result {
            Ok(()) if self.pg.is_running() => Outcome::new(200, "restarted successfully"),
            Ok(()) => Outcome::new(503, "stopped; the HA loop starts it again"),
            Err(e) => Outcome::new(503, format!("restart failed: {e}")),
        }
    }

    /// The confirmed holder's restart: stop (fast) and start again as primary, renewing throughout.
    async fn restart_primary(
        &mut self,
        decision: &Decision,
        cfg: &SidecarConfig,
    ) -> Result<(), HaError> {
        if *decision == Decision::Renew {
            self.elector
                .renew(self.wal_stamp(), self.mem.system_id.as_deref())
                .await?;
        }
        self.member.phase = Phase::Restarting;
        self.publish(cfg);
        let restarted = renewing(&mut self.elector, &self.timings, "restart", async {
            self.pg.stop(StopMode::Fast).await?;
            self.pg.start().await
        })
        .await;
        match restarted {
            Ok(Ok(())) => {
                // The same primary comes back (crash-free, no new timeline).
                self.member.became_primary();
                Ok(())
            }
            Ok(Err(e)) => {
                // Not running: the next loop's lead() starts it again as primary.
                self.member.stopped(Phase::Stopped);
                self.member.lineage = Lineage::Follows;
                Err(e.into())
            }
            Err(e) => {
                self.fence().await?;
                Err(e)
            }
        }
    }

    /// Switchover (primary only): check the candidate, stop PostgreSQL (fast: a shutdown checkpoint
    /// every connected standby receives), wait until the candidate has that checkpoint, then hand it the
    /// Lease with a conditional write; it confirms and promotes (L4). If the candidate does not catch up,
    /// this member (still the confirmed holder) starts again as primary.
    #[instrument(skip(self), fields(member = %self.me))]
    pub(super) async fn switchover(&mut self, candidate: Option<String>) -> Outcome {
        let cfg = self.config.borrow().clone();
        if !self.is_leading() {
            return Outcome::new(503, "this member is not the primary");
        }
        self.mem.peers = self.peers.poll(cfg.instances).await;
        let my_position = self.pg.observe().await.current_lsn.unwrap_or(0);
        let sync_members = self
            .elector
            .record()
            .and_then(|r| r.sync_members.clone())
            .unwrap_or_default();
        let targets: Vec<Target<'_>> = self
            .mem
            .peers
            .iter()
            .map(|p| Target {
                name: &p.name,
                healthy_replica: p.healthy_replica().is_some(),
                wal: p.wal_position(),
            })
            .collect();
        let policy = self.policy(&cfg);
        let chosen = switchover::choose(
            &policy,
            &sync_members,
            Some(my_position),
            &targets,
            candidate.as_deref(),
        )
        .map(|t| t.name.to_owned());
        let Some(target) =
            chosen.and_then(|n| self.mem.peers.iter().find(|p| p.name == n).cloned())
        else {
            return Outcome::new(
                412,
                "no fit candidate: it must be a healthy replica, allowed to fail over, caught up (and synchronous in sync mode)",
            );
        };
        let Some(host) = target.host.clone() else {
            return Outcome::new(412, format!("candidate {} has no pod IP", target.name));
        };
        info!(candidate = %target.name, "switchover: stopping PostgreSQL");
        self.member.phase = Phase::SwitchingOver;
        self.arm_watchdog();
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            return Outcome::new(503, format!("cannot stop PostgreSQL: {e}"));
        }
        let checkpoint = self
            .pg
            .controldata()
            .await
            .map(|c| c.checkpoint_lsn)
            .unwrap_or(my_position);
        let upstream = Upstream {
            host,
            port: PG_PORT,
        };
        if !self.wait_caught_up(&upstream, checkpoint).await {
            warn!(candidate = %target.name, checkpoint, "candidate did not receive the shutdown checkpoint: staying primary");
            let restarted = self.start_primary(&cfg, self.current_sync(&cfg)).await;
            return Outcome::new(
                412,
                format!(
                    "candidate {} did not catch up; primary restarted: {:?}",
                    target.name,
                    restarted.err()
                ),
            );
        }
        let result = self.elector.hand_over(&target.name, Some(checkpoint)).await;
        self.metrics.lease_write("handover", result.is_ok());
        match result {
            Ok(()) => {
                self.member.lineage = Lineage::FormerPrimary;
                self.member.phase = Phase::Stopped;
                info!(candidate = %target.name, "switchover: Lease handed over");
                self.label_own_pod().await;
                Outcome::new(
                    200,
                    format!("Successfully switched over to \"{}\"", target.name),
                )
            }
            Err(e) => {
                let restarted = if self.elector.renewed_sent_at().is_some() {
                    self.start_primary(&cfg, self.current_sync(&cfg))
                        .await
                        .err()
                } else {
                    None
                };
                Outcome::new(
                    503,
                    format!("handing over the Lease failed: {e}; restart: {restarted:?}"),
                )
            }
        }
    }

    /// Polls the candidate's server until its received WAL is past `checkpoint`, the old primary's
    /// shutdown checkpoint: then it has every committed write.
    async fn wait_caught_up(&self, candidate: &Upstream, checkpoint: u64) -> bool {
        let until = Instant::now() + SWITCHOVER_CATCH_UP;
        while Instant::now() < until {
            if let Some(received) = self.pg.received_lsn_of(candidate).await
                && received > checkpoint
            {
                debug!(
                    received,
                    checkpoint, "candidate has the shutdown checkpoint"
                );
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}
