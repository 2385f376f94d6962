//! Leader election between operator replicas, through a Lease in the operator's own namespace.
//!
//! Only the holder reconciles. The same rules as the members' election, in small: every write is a replace
//! conditional on the `resourceVersion` just read (L1); a foreign holder is taken over only after its
//! record stayed unchanged for the lease duration on the local monotonic clock (L2); the holder renews
//! every retry period and gives up — the process exits — when it could not renew for the renew
//! deadline (L5), before anyone else may take over. [`decide`] is the pure core; [`run`] the IO shell.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, Client, api::PostParams};
use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not renew the operator lease for {0:?}: another replica may take over")]
    RenewDeadline(Duration),
}

/// The part of the Lease that identifies one renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub resource_version: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// We hold it: renew.
    Renew,
    /// Free, or its holder stopped renewing: take it.
    TakeOver,
    /// Someone else holds it and renews.
    Wait,
}

/// `seen_since`: when this replica first saw `record` exactly as it is now (monotonic clock).
pub fn decide(me: &str, record: &Record, seen_since: Instant, now: Instant) -> Step {
    match record.holder.as_deref() {
        Some(h) if h == me => Step::Renew,
        None | Some("") => Step::TakeOver,
        Some(_) if now.duration_since(seen_since) >= LEASE_DURATION => Step::TakeOver,
        Some(_) => Step::Wait,
    }
}

fn record(lease: &Lease) -> Record {
    Record {
        holder: lease.spec.as_ref().and_then(|s| s.holder_identity.clone()),
        resource_version: lease.metadata.resource_version.clone(),
    }
}

fn claim(lease: &Lease, me: &str, now: Timestamp) -> Lease {
    let mut next = lease.clone();
    let spec = next.spec.get_or_insert_with(LeaseSpec::default);
    let takeover = spec.holder_identity.as_deref() != Some(me);
    if takeover {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.acquire_time = Some(MicroTime(now));
    }
    spec.holder_identity = Some(me.to_owned());
    spec.lease_duration_seconds = i32::try_from(LEASE_DURATION.as_secs()).ok();
    spec.renew_time = Some(MicroTime(now));
    next
}

/// Campaigns for and holds the Lease `name`, publishing leadership on `leader`. Returns only with an
/// error: the caller must end the process, since another replica may be about to take over.
pub async fn run(
    client: Client,
    namespace: &str,
    name: &str,
    me: &str,
    leader: watch::Sender<bool>,
) -> Error {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let mut last_renewal: Option<Instant> = None;
    let mut seen: Option<(Record, Instant)> = None;
    loop {
        let now = Instant::now();
        if let Some(t) = last_renewal
            && now.duration_since(t) > RENEW_DEADLINE
        {
            let _ = leader.send(false);
            return Error::RenewDeadline(RENEW_DEADLINE);
        }
        match api.get_opt(name).await {
            Ok(None) => {
                let fresh = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        namespace: Some(namespace.into()),
                        ..ObjectMeta::default()
                    },
                    spec: None,
                };
                let sent = Instant::now();
                match api
                    .create(&PostParams::default(), &claim(&fresh, me, Timestamp::now()))
                    .await
                {
                    Ok(_) => {
                        info!(identity = me, "acquired operator lease");
                        last_renewal = Some(sent);
                        let _ = leader.send(true);
                    }
                    Err(e) => warn!(error = %e, "creating the operator lease"),
                }
            }
            Ok(Some(lease)) => {
                let r = record(&lease);
                let since = match &seen {
                    Some((old, t)) if *old == r => *t,
                    _ => now,
                };
                seen = Some((r.clone(), since));
                match decide(me, &r, since, now) {
                    Step::Wait => {}
                    step => {
                        let sent = Instant::now();
                        // `replace` carries the resourceVersion just read: a concurrent writer makes it fail (L1).
                        match api
                            .replace(
                                name,
                                &PostParams::default(),
                                &claim(&lease, me, Timestamp::now()),
                            )
                            .await
                        {
                            Ok(_) => {
                                if step == Step::TakeOver {
                                    info!(identity = me, "acquired operator lease");
                                }
                                last_renewal = Some(sent);
                                let _ = leader.send(true);
                            }
                            Err(e) => warn!(error = %e, ?step, "writing the operator lease"),
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "reading the operator lease"),
        }
        tokio::time::sleep(RETRY_PERIOD).await;
    }
}

/// Hands the Lease over on shutdown: clears the holder (conditional on the version just read, L1) so a
/// standby replica takes over at once instead of after the lease duration.
pub async fn release(client: Client, namespace: &str, name: &str, me: &str) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let lease = match api.get_opt(name).await {
        Ok(Some(l)) if record(&l).holder.as_deref() == Some(me) => l,
        Ok(_) => return,
        Err(e) => {
            warn!(error = %e, "reading the operator lease to release it");
            return;
        }
    };
    let mut released = lease.clone();
    if let Some(spec) = released.spec.as_mut() {
        spec.holder_identity = None;
        spec.renew_time = None;
    }
    match api.replace(name, &PostParams::default(), &released).await {
        Ok(_) => info!(identity = me, "released operator lease"),
        Err(e) => warn!(error = %e, "releasing the operator lease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(holder: Option<&str>) -> Record {
        Record {
            holder: holder.map(Into::into),
            resource_version: Some("7".into()),
        }
    }

    #[test]
    fn decide_branches() {
        let t0 = Instant::now();
        assert_eq!(decide("a", &rec(Some("a")), t0, t0), Step::Renew);
        assert_eq!(
            decide("a", &rec(None), t0, t0),
            Step::TakeOver,
            "free lease: at once"
        );
        assert_eq!(decide("a", &rec(Some("")), t0, t0), Step::TakeOver);
        assert_eq!(
            decide("a", &rec(Some("b")), t0, t0 + Duration::from_secs(14)),
            Step::Wait
        );
        assert_eq!(
            decide("a", &rec(Some("b")), t0, t0 + LEASE_DURATION),
            Step::TakeOver,
            "unchanged for a lease duration"
        );
    }

    #[test]
    fn claim_counts_transitions_only_on_takeover() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("b".into()),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        let taken = claim(&lease, "a", now);
        let spec = taken.spec.clone().unwrap();
        assert_eq!(
            (spec.holder_identity.as_deref(), spec.lease_transitions),
            (Some("a"), Some(4))
        );
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        let renewed = claim(
            &taken,
            "a",
            now + k8s_openapi::jiff::SignedDuration::from_secs(2),
        )
        .spec
        .unwrap();
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(now)));
        assert_eq!(renewed.lease_duration_seconds, Some(15));
    }

    #[test]
    fn timings_satisfy_l6() {
        assert!(LEASE_DURATION > RENEW_DEADLINE);
        assert!(RENEW_DEADLINE.as_millis() * 10 > RETRY_PERIOD.as_millis() * 12);
    }
}
