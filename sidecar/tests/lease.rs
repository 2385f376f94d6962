//! The Lease protocol against the real apiserver of the local cluster (no pods, no PostgreSQL): the
//! election's IO shell ([`Elector`]) driven by the same pure [`decide`] the HA loop uses.
//!
//! Each test works in its own namespace and deletes it at the end.

// Test helpers panic on a broken environment, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{
    coordination::v1::{Lease, LeaseSpec},
    core::v1::Namespace,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ObjectMeta, PostParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use pgpilot_crds::contract::HaTimings;
use pgpilot_sidecar::election::{
    AcquireReason, Decision, Observation, PgView, PodStatus, Policy, Timings, decide,
    lease::{Elector, LeaseClient, LeaseError},
};

const IGNORE: &str = "needs the local cluster (make cluster)";

async fn client() -> Client {
    let path = std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e/kubeconfig")
        });
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("{IGNORE}: {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A fresh namespace with an empty Lease `c-leader` in it, as the operator creates it.
struct Fixture {
    client: Client,
    namespace: String,
}

impl Fixture {
    async fn new(tag: &str) -> Self {
        let client = client().await;
        let namespace = format!("lease-{tag}-{}", std::process::id());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some("c-leader".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        // The namespace's admission may need a moment (ServiceAccount controller); retry briefly.
        let api = Api::<Lease>::namespaced(client.clone(), &namespace);
        let mut tries = 0;
        while let Err(e) = api.create(&PostParams::default(), &lease).await {
            tries += 1;
            assert!(tries < 20, "cannot create the Lease: {e}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Self { client, namespace }
    }

    fn elector(&self, me: &str, timings: &Timings) -> Elector {
        Elector::new(
            LeaseClient::new(
                self.client.clone(),
                &self.namespace,
                "c-leader",
                me,
                Duration::from_secs(2),
            ),
            *timings,
        )
    }

    async fn lease(&self) -> Lease {
        Api::<Lease>::namespaced(self.client.clone(), &self.namespace)
            .get("c-leader")
            .await
            .unwrap()
    }

    async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client)
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

fn short_timings() -> Timings {
    Timings::new(&HaTimings {
        lease_duration_seconds: 3,
        renew_deadline_seconds: 2,
        retry_period_seconds: 1,
    })
    .unwrap()
}

/// One loop of the election as the HA loop runs it: observe, decide, and carry out a Lease write.
async fn step(
    elector: &mut Elector,
    timings: &Timings,
) -> (Decision, Option<Result<(), LeaseError>>) {
    let record = elector
        .observe(|_| PodStatus::Unknown)
        .await
        .map(|(r, _)| r);
    let obs = Observation {
        me: elector.me().to_owned(),
        member: true,
        lease: record,
        watch: elector.watch().clone(),
        holder_pod: PodStatus::Unknown,
        local: PgView {
            initialized: true,
            healthy: true,
            primary: false,
            timeline: Some(1),
            wal: Some(100),
        },
        peers: vec![],
        renewed_sent_at: elector.renewed_sent_at(),
        last_renewal: elector.last_renewal(),
        failsafe_held_at: None,
        primary_wal_seen: None,
        streamed_at: Some(Instant::now()),
        failsafe_confirmed: false,
        policy: Policy {
            maximum_lag_on_failover: 1 << 20,
            ..Policy::default()
        },
    };
    let decision = decide(&obs, Instant::now(), timings);
    let result = match &decision {
        Decision::Renew => Some(elector.renew(None, None).await),
        Decision::Acquire(_) => Some(elector.acquire(None, None).await),
        _ => None,
    };
    (decision, result)
}

fn transitions(lease: &Lease) -> i32 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn l1_two_contenders_one_wins_the_loser_rereads() {
    let f = Fixture::new("race").await;
    let t = short_timings();
    let (mut a, mut b) = (f.elector("c-0", &t), f.elector("c-1", &t));
    // Both read the same empty record ...
    a.observe(|_| PodStatus::Unknown).await.unwrap();
    b.observe(|_| PodStatus::Unknown).await.unwrap();
    // ... and both write conditionally on it: exactly one succeeds.
    let (ra, rb) = tokio::join!(a.acquire(None, None), b.acquire(None, None));
    let (winner, loser, mut loser_elector) = match (&ra, &rb) {
        (Ok(()), Err(LeaseError::Conflict)) => ("c-0", "c-1", b),
        (Err(LeaseError::Conflict), Ok(())) => ("c-1", "c-0", a),
        other => panic!("expected one winner and one 409, got {other:?}"),
    };
    let lease = f.lease().await;
    assert_eq!(holder(&lease).as_deref(), Some(winner));
    assert_eq!(transitions(&lease), 1, "one holder change, one transition");
    // The loser forgot its copy: it cannot write again without re-reading.
    assert!(loser_elector.renewed_sent_at().is_none());
    assert!(matches!(
        loser_elector.acquire(None, None).await,
        Err(LeaseError::NotFound { .. })
    ));
    let (decision, _) = step(&mut loser_elector, &t).await;
    assert!(
        matches!(decision, Decision::Follow { leader: Some(ref l), .. } if l == winner),
        "{loser}: {decision:?}"
    );
    f.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn l2_takeover_only_after_lease_duration_unchanged_and_transitions_increment() {
    let f = Fixture::new("expiry").await;
    let t = short_timings();
    let (mut holder_e, mut other) = (f.elector("c-0", &t), f.elector("c-1", &t));
    let (d, r) = step(&mut holder_e, &t).await;
    assert_eq!(d, Decision::Acquire(AcquireReason::Released));
    r.unwrap().unwrap();
    // While the holder renews every retry period, the other never acquires (3 lease durations).
    let start = Instant::now();
    while start.elapsed() < 3 * t.lease_duration {
        let (d, r) = step(&mut holder_e, &t).await;
        assert!(matches!(d, Decision::Renew | Decision::Hold), "{d:?}");
        if let Some(result) = r {
            result.unwrap();
        }
        let (d, _) = step(&mut other, &t).await;
        assert!(matches!(d, Decision::Follow { .. }), "{d:?}");
        tokio::time::sleep(t.retry_period / 2).await;
    }
    // The holder goes silent. The other takes over no earlier than leaseDuration after it last saw a change.
    let silent_since = Instant::now();
    let acquired_at = loop {
        let (d, r) = step(&mut other, &t).await;
        if let Decision::Acquire(why) = d {
            assert_eq!(why, AcquireReason::Expired);
            r.unwrap().unwrap();
            break Instant::now();
        }
        assert!(
            silent_since.elapsed() < 3 * t.lease_duration,
            "never took over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let waited = acquired_at - silent_since;
    assert!(
        waited >= t.lease_duration - t.retry_period,
        "took over after only {waited:?}"
    );
    let lease = f.lease().await;
    assert_eq!(holder(&lease).as_deref(), Some("c-1"));
    assert_eq!(transitions(&lease), 2);
    // The old holder's next renewal is refused (409) and it learns it lost.
    assert!(matches!(
        holder_e.renew(None, None).await,
        Err(LeaseError::Conflict)
    ));
    let (d, _) = step(&mut holder_e, &t).await;
    assert!(
        matches!(d, Decision::Follow { leader: Some(ref l), .. } if l == "c-1"),
        "{d:?}"
    );
    f.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn l2_a_released_lease_is_claimed_at_once_keeping_the_epoch() {
    let f = Fixture::new("release").await;
    let t = short_timings();
    let (mut a, mut b) = (f.elector("c-0", &t), f.elector("c-1", &t));
    step(&mut a, &t).await.1.unwrap().unwrap();
    step(&mut b, &t).await;
    a.release(false, None).await.unwrap();
    let released = f.lease().await;
    assert_eq!(holder(&released), None);
    assert_eq!(transitions(&released), 1, "release keeps the epoch");
    let before = Instant::now();
    let (d, r) = step(&mut b, &t).await;
    assert_eq!(d, Decision::Acquire(AcquireReason::Released));
    r.unwrap().unwrap();
    assert!(before.elapsed() < t.retry_period, "claimed without waiting");
    let lease = f.lease().await;
    assert_eq!(
        (holder(&lease).as_deref(), transitions(&lease)),
        (Some("c-1"), 2)
    );
    f.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn l4_handover_is_confirmed_by_the_candidate() {
    let f = Fixture::new("handover").await;
    let t = short_timings();
    let (mut a, mut b) = (f.elector("c-0", &t), f.elector("c-1", &t));
    step(&mut a, &t).await.1.unwrap().unwrap();
    a.hand_over("c-1", None).await.unwrap();
    assert!(
        a.renewed_sent_at().is_none(),
        "the old primary no longer holds it"
    );
    let (d, r) = step(&mut b, &t).await;
    assert_eq!(d, Decision::Acquire(AcquireReason::Handover));
    r.unwrap().unwrap();
    let lease = f.lease().await;
    assert_eq!(
        (holder(&lease).as_deref(), transitions(&lease)),
        (Some("c-1"), 2)
    );
    assert!(
        !lease
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(pgpilot_crds::contract::ANNOTATION_HANDOVER)
    );
    f.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn l9_steady_state_only_the_holders_renewals_write() {
    let f = Fixture::new("writes").await;
    let t = short_timings();
    let (mut a, mut b, mut c) = (
        f.elector("c-0", &t),
        f.elector("c-1", &t),
        f.elector("c-2", &t),
    );
    step(&mut a, &t).await.1.unwrap().unwrap();
    let from = f.lease().await.metadata.resource_version.unwrap();
    // Count every write of the Lease from here on, as the apiserver reports them.
    let api = Api::<Lease>::namespaced(f.client.clone(), &f.namespace);
    let params = WatchParams::default()
        .fields("metadata.name=c-leader")
        .timeout(10);
    let mut events = api.watch(&params, &from).await.unwrap().boxed();
    let counter = tokio::spawn(async move {
        let mut modified = 0;
        while let Some(Ok(event)) = events.next().await {
            if matches!(event, WatchEvent::Modified(_)) {
                modified += 1;
            }
        }
        modified
    });
    let mut writes = 0;
    let started = Instant::now();
    for _ in 0..8 {
        for e in [&mut b, &mut c] {
            assert!(step(e, &t).await.1.is_none(), "a follower wrote");
        }
        if let (_, Some(result)) = step(&mut a, &t).await {
            result.unwrap();
            writes += 1;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let elapsed = started.elapsed();
    assert!(writes >= 2, "the holder kept renewing ({writes})");
    let budget = elapsed.as_secs_f64() / t.renew_interval().as_secs_f64() + 1.0;
    assert!(
        f64::from(writes) <= budget,
        "{writes} renewals in {elapsed:?}: more than one per renew interval"
    );
    assert_eq!(
        counter.await.unwrap(),
        writes,
        "the apiserver saw exactly the holder's renewals"
    );
    f.cleanup().await;
}
