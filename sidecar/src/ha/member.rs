//! The one model of this member: what the HA loop last did with PostgreSQL ([`Phase`]) and what the data
//! directory's history requires before it may follow another primary ([`Lineage`]). Pure.
//!
//! Everything else is derived from these two and the observation of the server, once, here: whether
//! PostgreSQL runs as a primary, the role published on the pod and over REST, and the state string
//! Patroni's tools expect (which appears nowhere else).

use pgpilot_crds::contract::{ROLE_PRIMARY, ROLE_REPLICA};

use crate::postgres;

/// What the HA loop is doing, or last did, with this member's PostgreSQL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// The process just started, or PostgreSQL is being started: nothing is known to run yet.
    #[default]
    Starting,
    /// No data directory and no primary to clone from.
    WaitingForPrimary,
    /// This member won the Lease to create the cluster: `initdb`, start, roles (L4: only after the
    /// Lease was acquired).
    Bootstrapping,
    /// `pg_basebackup` from the primary.
    Cloning,
    /// `pg_rewind` onto the primary's timeline (a former primary or a diverged replica).
    Rewinding,
    /// Started or promoted as primary by this process and not stopped since: it may accept writes.
    Primary,
    /// Started as a replica (streaming, or waiting for a primary to stream from).
    Replica,
    /// Stopped on purpose (demoted, released, handed over, shut down).
    Stopped,
    /// PostgreSQL exited without being asked to.
    Crashed,
    /// Writes stopped at once because the Lease could not be confirmed in time (L5).
    Fenced,
    /// A restart requested over REST.
    Restarting,
    /// A switchover stopped PostgreSQL and waits for the candidate to take the Lease.
    SwitchingOver,
    /// The data or the primary belongs to another database system than the cluster's: nothing is
    /// cloned, rewound or wiped (issue 13 hole 4).
    Refusing,
}

impl Phase {
    /// Patroni's word for the state while PostgreSQL does not answer (it answers: `running`).
    pub fn patroni_state(self) -> &'static str {
        match self {
            Phase::Starting | Phase::Primary | Phase::Replica => "starting",
            Phase::WaitingForPrimary => "waiting for a primary",
            Phase::Bootstrapping => "initializing new cluster",
            Phase::Cloning => "creating replica",
            Phase::Rewinding => "rewinding",
            Phase::Stopped => "stopped",
            Phase::Crashed => "crashed",
            Phase::Fenced => "fenced",
            Phase::Restarting => "restarting",
            Phase::SwitchingOver => "stopping for switchover",
            Phase::Refusing => "refusing",
        }
    }
}

/// What the data directory's history requires before it may stream from another primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lineage {
    /// Cloned or rewound from the current history, or the primary's own data: it may follow as is.
    #[default]
    Follows,
    /// It ran as a primary since its last clone or rewind (or diverged from the primary's timeline):
    /// it must be rewound, or re-cloned, before it follows anyone (L4).
    FormerPrimary,
}

/// The member as the HA loop keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Member {
    pub phase: Phase,
    pub lineage: Lineage,
}

impl Member {
    /// PostgreSQL runs as a primary: the server says so, or — when it cannot answer right now — this
    /// process started it as one (a primary that stops answering may still accept writes).
    pub fn runs_as_primary(&self, pg: &postgres::Observation) -> bool {
        pg.running
            && (pg.in_recovery == Some(false)
                || (pg.in_recovery.is_none() && self.phase == Phase::Primary))
    }

    /// The role Patroni's API reports: `uninitialized`, `primary` or `replica`.
    pub fn role(&self, initialized: bool, pg: &postgres::Observation) -> &'static str {
        if !initialized {
            "uninitialized"
        } else if self.runs_as_primary(pg) {
            ROLE_PRIMARY
        } else {
            ROLE_REPLICA
        }
    }

    /// Patroni's state string: `running` while PostgreSQL answers, else the phase's word.
    pub fn patroni_state(&self, pg: &postgres::Observation) -> &'static str {
        if pg.accepting && pg.running {
            "running"
        } else {
            self.phase.patroni_state()
        }
    }

    /// The server stopped or crashed: a primary's data must be rewound before it follows.
    pub fn stopped(&mut self, phase: Phase) {
        if self.phase == Phase::Primary {
            self.lineage = Lineage::FormerPrimary;
        }
        self.phase = phase;
    }

    /// Now the primary (started or promoted): its data is the reference.
    pub fn became_primary(&mut self) {
        self.phase = Phase::Primary;
        self.lineage = Lineage::Follows;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(running: bool, accepting: bool, in_recovery: Option<bool>) -> postgres::Observation {
        postgres::Observation {
            running,
            accepting,
            in_recovery,
            ..Default::default()
        }
    }

    #[test]
    fn a_primary_that_stops_answering_still_counts_as_primary() {
        let primary = Member {
            phase: Phase::Primary,
            ..Member::default()
        };
        assert!(primary.runs_as_primary(&obs(true, false, None)));
        assert!(!primary.runs_as_primary(&obs(false, false, None)), "dead");
        let replica = Member {
            phase: Phase::Replica,
            ..Member::default()
        };
        assert!(!replica.runs_as_primary(&obs(true, false, None)));
        assert!(
            replica.runs_as_primary(&obs(true, true, Some(false))),
            "the server's word wins"
        );
        assert_eq!(
            replica.role(false, &obs(true, true, Some(false))),
            "uninitialized"
        );
    }

    #[test]
    fn state_strings_only_here() {
        let m = Member {
            phase: Phase::Fenced,
            ..Member::default()
        };
        assert_eq!(m.patroni_state(&obs(false, false, None)), "fenced");
        assert_eq!(m.patroni_state(&obs(true, true, Some(true))), "running");
    }

    #[test]
    fn a_stopped_primary_must_rewind_before_following() {
        let mut m = Member::default();
        m.became_primary();
        m.stopped(Phase::Crashed);
        assert_eq!(m.lineage, Lineage::FormerPrimary);
        let mut r = Member {
            phase: Phase::Replica,
            ..Member::default()
        };
        r.stopped(Phase::Stopped);
        assert_eq!(r.lineage, Lineage::Follows);
    }
}
