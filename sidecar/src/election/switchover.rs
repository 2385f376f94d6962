//! Who may take over in a planned switchover (pure): the one rule the REST API checks a request with
//! and the primary's loop checks again right before it stops PostgreSQL.

use super::Policy;

/// A member as a switchover target, from its last report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub name: &'a str,
    /// It runs PostgreSQL as a replica and answers.
    pub healthy_replica: bool,
    pub wal: Option<u64>,
}

/// Why a member may not be the target.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    #[error("candidate {0} is not running as a replica")]
    NotAReplica(String),
    #[error("candidate {0} is tagged noFailover")]
    NoFailover(String),
    /// L3: in the sync modes only a recorded synchronous standby holds every acknowledged commit.
    #[error("candidate {0} is not a synchronous standby")]
    NotSynchronous(String),
    #[error("candidate {name} is {behind} bytes behind the primary (maximumLagOnFailover)")]
    Behind { name: String, behind: u64 },
}

/// Whether `t` may take over from a primary at `primary_wal` (`None`: position not checked here — the
/// primary checks it). `sync_members`: the Lease's record of synchronous members (L3).
pub fn fit(
    policy: &Policy,
    sync_members: &[String],
    primary_wal: Option<u64>,
    t: &Target<'_>,
) -> Result<(), Unfit> {
    let name = t.name.to_owned();
    if !t.healthy_replica {
        return Err(Unfit::NotAReplica(name));
    }
    if !policy.may_fail_over(t.name) {
        return Err(Unfit::NoFailover(name));
    }
    if policy.mode != pgpilot_crds::contract::ReplicationMode::Async
        && !sync_members.iter().any(|m| m == t.name)
    {
        return Err(Unfit::NotSynchronous(name));
    }
    if let Some(primary) = primary_wal {
        let wal = t.wal.unwrap_or(0);
        if wal + policy.maximum_lag_on_failover < primary {
            return Err(Unfit::Behind {
                name,
                behind: primary - wal,
            });
        }
    }
    Ok(())
}

/// The target: the named `candidate` if fit, else (no name) the fit member furthest ahead.
pub fn choose<'a>(
    policy: &Policy,
    sync_members: &[String],
    primary_wal: Option<u64>,
    targets: &[Target<'a>],
    candidate: Option<&str>,
) -> Option<Target<'a>> {
    let fits = |t: &&Target<'a>| fit(policy, sync_members, primary_wal, t).is_ok();
    match candidate {
        Some(name) => targets
            .iter()
            .find(|t| t.name == name)
            .filter(fits)
            .cloned(),
        None => targets.iter().filter(fits).max_by_key(|t| t.wal).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use pgpilot_crds::contract::{MemberTags, ReplicationMode};

    use super::*;

    fn t(name: &str, replica: bool, wal: u64) -> Target<'_> {
        Target {
            name,
            healthy_replica: replica,
            wal: Some(wal),
        }
    }

    #[test]
    fn the_furthest_fit_replica_or_the_named_one() {
        let mut policy = Policy {
            maximum_lag_on_failover: 10,
            ..Policy::default()
        };
        let targets = [t("b", true, 95), t("c", true, 99), t("d", false, 100)];
        assert_eq!(
            choose(&policy, &[], Some(100), &targets, None).map(|t| t.name),
            Some("c")
        );
        assert_eq!(
            choose(&policy, &[], Some(100), &targets, Some("b")).map(|t| t.name),
            Some("b")
        );
        assert_eq!(
            choose(&policy, &[], Some(100), &targets, Some("d")),
            None,
            "not a replica"
        );
        assert_eq!(
            fit(&policy, &[], Some(200), &targets[0]),
            Err(Unfit::Behind {
                name: "b".into(),
                behind: 105
            })
        );
        assert_eq!(
            fit(&policy, &[], None, &targets[0]),
            Ok(()),
            "position not checked"
        );
        policy.tags.insert(
            "c".into(),
            MemberTags {
                no_failover: true,
                ..MemberTags::default()
            },
        );
        assert_eq!(
            choose(&policy, &[], Some(100), &targets, None).map(|t| t.name),
            Some("b")
        );
        policy.mode = ReplicationMode::Sync;
        assert_eq!(choose(&policy, &[], Some(100), &targets, None), None);
        assert_eq!(
            choose(&policy, &["b".into()], Some(100), &targets, None).map(|t| t.name),
            Some("b"),
            "L3: only recorded synchronous standbys in the sync modes"
        );
    }
}
