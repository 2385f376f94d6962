//! The state this member publishes for the REST API and the metrics (a `watch` snapshot after every
//! loop and before every long action). No IO. Patroni's role and state words come from [`Member`].
//!
//! [`Member`]: super::Member

use pgpilot_crds::contract::{ROLE_PRIMARY, ROLE_REPLICA, SidecarConfig};

use super::HaLoop;
use crate::state::ScheduledSwitchover;

impl HaLoop {
    pub(super) fn publish(&self, cfg: &SidecarConfig) {
        let pg = &self.mem.last_pg;
        let record = self.elector.record();
        let holder = self.elector.renewed_sent_at().is_some();
        let role = self.member.role(self.pg.is_initialized(), pg);
        let leader_position = record
            .and_then(|r| r.holder())
            .and_then(|h| self.mem.peers.iter().find(|p| p.name == h))
            .and_then(|p| p.report.as_ref()?.xlog.as_ref()?.location);
        let streaming = pg
            .wal_receiver
            .as_ref()
            .is_some_and(|w| w.status == "streaming");
        let lag = match (role, leader_position, pg.replayed_lsn.or(pg.received_lsn)) {
            (ROLE_REPLICA, Some(leader), Some(mine)) => Some(leader.saturating_sub(mine)),
            // The primary's report missed this loop: the last measurement stands while streaming on.
            (ROLE_REPLICA, None, Some(_)) if streaming => self.state.borrow().lag_bytes,
            _ => None,
        };
        let state = self.member.patroni_state(pg);
        let me = &self.me;
        self.state.send_modify(|s| {
            s.role = role.into();
            s.state = state.into();
            s.running = pg.accepting && pg.running;
            s.holder = holder;
            s.leader = record.and_then(|r| r.holder().map(str::to_owned));
            s.epoch = record.map_or(s.epoch, |r| r.transitions);
            s.server_version = pg.server_version;
            s.timeline = pg.timeline;
            s.wal_location = if role == ROLE_PRIMARY {
                pg.current_lsn
            } else {
                None
            };
            s.received_location = pg.received_lsn;
            s.replayed_location = pg.replayed_lsn;
            s.replication_state = pg.wal_receiver.as_ref().map(|w| w.status.clone());
            s.lag_bytes = lag;
            s.pending_restart = !pg.pending_restart.is_empty();
            s.sync_members = record
                .and_then(|r| r.sync_members.clone())
                .unwrap_or_default();
            s.tags = cfg.tags.get(me).cloned().unwrap_or_default();
            s.config = cfg.clone();
            s.last_decision = self
                .mem
                .last_decision
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            s.failover_blocked = self.mem.failover_blocked.clone();
            s.system_identifier = self.mem.system_id.clone();
            s.refusal = self.mem.refusal.clone();
            s.peers = self.mem.peers.clone();
            s.history = self.mem.history.clone();
            s.scheduled_switchover =
                self.mem
                    .scheduled
                    .as_ref()
                    .map(|(c, at)| ScheduledSwitchover {
                        candidate: c.clone(),
                        at: at.to_string(),
                    });
        });
    }
}
