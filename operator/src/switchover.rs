//! Switchover on request: `spec.switchover.targetInstance` names the member that should become primary.
//!
//! [`plan`] (pure) reads the spec, the previous `SwitchoverInProgress` condition and the observed primary,
//! and decides whether to ask now. [`run`] (IO) carries a request out: it POSTs
//! `{"leader": <primary>, "candidate": <target>}` to the primary's sidecar `/switchover` with the
//! credentials of the `<c>-api` Secret. A request is made at most once per `metadata.generation`: the
//! condition records the generation it was made for, and a finished or requested switchover is not
//! repeated until the spec changes. The sidecars do the switchover itself; the operator only asks and
//! watches the primary change.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use pgpilot_crds::{
    PostgresClusterStatus,
    cluster::{condition, reason},
    contract::{self, REST_PORT, error_chain},
};
use serde_json::json;
use tracing::info;

use crate::{conditions::find_condition, events::Transition, validate::ValidatedCluster};

/// How long a requested switchover may take before the operator gives up waiting for it.
pub const COMPLETION_TIMEOUT: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Reasons after which the same generation is never asked again.
const SETTLED: [&str; 4] = [
    reason::REQUESTED,
    reason::COMPLETED,
    reason::ALREADY_PRIMARY,
    reason::NOT_COMPLETED,
];

/// Where the switchover stands after this reconcile; becomes the `SwitchoverInProgress` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchoverOutcome {
    /// No switchover in the spec.
    None,
    Scheduled {
        target: String,
        at: Timestamp,
    },
    WaitingForPrimary {
        target: String,
    },
    AlreadyPrimary {
        target: String,
    },
    InProgress {
        from: String,
        target: String,
    },
    Completed {
        target: String,
    },
    NotCompleted {
        target: String,
    },
    RequestFailed {
        target: String,
        error: String,
    },
}

impl SwitchoverOutcome {
    /// `(status, reason, message)` of the `SwitchoverInProgress` condition.
    pub fn condition(&self) -> (bool, &'static str, String) {
        match self {
            Self::None => (
                false,
                reason::NO_SWITCHOVER_REQUESTED,
                "spec.switchover is not set".into(),
            ),
            Self::Scheduled { target, at } => (
                false,
                reason::SCHEDULED,
                format!("switchover to {target} scheduled at {at}"),
            ),
            Self::WaitingForPrimary { target } => (
                false,
                reason::WAITING_FOR_PRIMARY,
                format!("switchover to {target} waits for a primary"),
            ),
            Self::AlreadyPrimary { target } => (
                false,
                reason::ALREADY_PRIMARY,
                format!("{target} is already the primary"),
            ),
            Self::InProgress { from, target } => (
                true,
                reason::REQUESTED,
                format!("asked {from} to hand over to {target}"),
            ),
            Self::Completed { target } => {
                (false, reason::COMPLETED, format!("{target} is the primary"))
            }
            Self::NotCompleted { target } => (
                false,
                reason::NOT_COMPLETED,
                format!(
                    "{target} did not become primary within {} s; change spec.switchover to try again",
                    COMPLETION_TIMEOUT.as_secs()
                ),
            ),
            Self::RequestFailed { target, error } => (
                false,
                reason::REQUEST_FAILED,
                format!("switchover to {target} failed, retrying: {error}"),
            ),
        }
    }

    /// Whether a change of primary to `member` is the one this switchover asked for.
    pub fn targets(&self, member: &str) -> bool {
        matches!(self, Self::InProgress { target, .. } | Self::Completed { target } if target == member)
    }
}

/// What [`run`] should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Settled(SwitchoverOutcome),
    Request { from: String, target: String },
}

/// Decides about the switchover in the spec, given the previous status and the primary observed now.
pub fn plan(
    c: &ValidatedCluster,
    prev: &PostgresClusterStatus,
    primary: Option<&str>,
    now: Timestamp,
) -> Plan {
    let Some(sw) = &c.spec.switchover else {
        return Plan::Settled(SwitchoverOutcome::None);
    };
    let target = sw.target_instance.clone();
    let previous = find_condition(prev, condition::SWITCHOVER_IN_PROGRESS).filter(|cond| {
        cond.observed_generation == c.generation && SETTLED.contains(&cond.reason.as_str())
    });
    if let Some(cond) = previous {
        let outcome = match cond.reason.as_str() {
            reason::REQUESTED if primary == Some(target.as_str()) => {
                SwitchoverOutcome::Completed { target }
            }
            reason::REQUESTED => {
                let asked = cond.last_transition_time.0;
                let waited = now.duration_since(asked).unsigned_abs();
                if waited > COMPLETION_TIMEOUT {
                    SwitchoverOutcome::NotCompleted { target }
                } else {
                    let from = prev.last_primary.clone().unwrap_or_default();
                    SwitchoverOutcome::InProgress { from, target }
                }
            }
            reason::COMPLETED => SwitchoverOutcome::Completed { target },
            reason::ALREADY_PRIMARY => SwitchoverOutcome::AlreadyPrimary { target },
            _ => SwitchoverOutcome::NotCompleted { target },
        };
        return Plan::Settled(outcome);
    }
    if let Some(at) = sw.scheduled_at.as_ref().map(|t| t.0)
        && at > now
    {
        return Plan::Settled(SwitchoverOutcome::Scheduled { target, at });
    }
    match primary {
        None => Plan::Settled(SwitchoverOutcome::WaitingForPrimary { target }),
        Some(p) if p == target => Plan::Settled(SwitchoverOutcome::AlreadyPrimary { target }),
        Some(p) => Plan::Request {
            from: p.to_owned(),
            target,
        },
    }
}

#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("reading the API credentials")]
    Credentials(#[source] kube::Error),
    #[error("the API Secret has no {0}")]
    MissingKey(&'static str),
    #[error("the primary {0} has no pod IP")]
    NoPodIp(String),
    #[error("POST /switchover")]
    Http(#[source] reqwest::Error),
    #[error("the primary answered {status}: {body}")]
    Refused { status: u16, body: String },
}

async fn credentials(
    client: &Client,
    c: &ValidatedCluster,
) -> Result<(String, String), RequestError> {
    let secret = Api::<Secret>::namespaced(client.clone(), &c.namespace)
        .get(&contract::secret_name(&c.name, "api"))
        .await
        .map_err(RequestError::Credentials)?;
    let data = secret.data.unwrap_or_default();
    let field = |k: &'static str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or(RequestError::MissingKey(k))
    };
    Ok((field("username")?, field("password")?))
}

async fn request(
    client: &Client,
    http: &reqwest::Client,
    c: &ValidatedCluster,
    primary_ip: Option<&str>,
    from: &str,
    target: &str,
) -> Result<(), RequestError> {
    let ip = primary_ip.ok_or_else(|| RequestError::NoPodIp(from.to_owned()))?;
    let (user, password) = credentials(client, c).await?;
    let response = http
        .post(format!("http://{ip}:{REST_PORT}/switchover"))
        .basic_auth(user, Some(password))
        .json(&json!({"leader": from, "candidate": target}))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await;
    match response {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status().as_u16();
            let body: String = r
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            Err(RequestError::Refused { status, body })
        }
        // The primary got the request but did not answer in time: the switchover may well be under
        // way; asking again could start a second one, so it counts as requested.
        Err(e) if e.is_timeout() => Ok(()),
        Err(e) => Err(RequestError::Http(e)),
    }
}

/// Asks `from` to hand over to `target` (the operator's own switchover: [`crate::scale`]); the error's
/// whole chain as text.
pub async fn ask(
    client: &Client,
    http: &reqwest::Client,
    c: &ValidatedCluster,
    primary_ip: Option<&str>,
    from: &str,
    target: &str,
) -> Result<(), String> {
    request(client, http, c, primary_ip, from, target)
        .await
        .map_err(|e| error_chain(&e))
}

/// Carries out the plan; returns the outcome and the transitions to announce.
pub async fn run(
    client: &Client,
    http: &reqwest::Client,
    c: &ValidatedCluster,
    plan: Plan,
    primary_ip: Option<&str>,
    prev: &PostgresClusterStatus,
) -> (SwitchoverOutcome, Vec<Transition>) {
    match plan {
        Plan::Settled(outcome) => {
            let was_requested = find_condition(prev, condition::SWITCHOVER_IN_PROGRESS)
                .is_some_and(|cond| cond.reason == reason::REQUESTED);
            let events = match &outcome {
                SwitchoverOutcome::NotCompleted { target } if was_requested => {
                    vec![Transition::SwitchoverFailed {
                        to: target.clone(),
                        error: format!("not primary within {} s", COMPLETION_TIMEOUT.as_secs()),
                    }]
                }
                _ => Vec::new(),
            };
            (outcome, events)
        }
        Plan::Request { from, target } => {
            match request(client, http, c, primary_ip, &from, &target).await {
                Ok(()) => {
                    info!(%from, %target, "switchover requested");
                    let event = Transition::SwitchoverRequested {
                        from: from.clone(),
                        to: target.clone(),
                    };
                    (SwitchoverOutcome::InProgress { from, target }, vec![event])
                }
                Err(e) => {
                    let error = error_chain(&e);
                    let already_failed = find_condition(prev, condition::SWITCHOVER_IN_PROGRESS)
                        .is_some_and(|cond| cond.reason == reason::REQUEST_FAILED);
                    let events = if already_failed {
                        Vec::new()
                    } else {
                        vec![Transition::SwitchoverFailed {
                            to: target.clone(),
                            error: error.clone(),
                        }]
                    };
                    (SwitchoverOutcome::RequestFailed { target, error }, events)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use pgpilot_crds::cluster::SwitchoverSpec;

    use super::*;
    use crate::{conditions::set_condition, testutil::example, validate::validate};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn cluster(target: Option<&str>, at: Option<Timestamp>) -> ValidatedCluster {
        let mut c = validate(&example("cluster-3.yaml"), "s").unwrap();
        c.spec.switchover = target.map(|t| SwitchoverSpec {
            target_instance: t.into(),
            scheduled_at: at.map(Time),
        });
        c
    }

    fn status_with(why: &str, generation: i64, since: Timestamp) -> PostgresClusterStatus {
        let mut s = PostgresClusterStatus {
            last_primary: Some("pg-0".into()),
            ..Default::default()
        };
        let status = why == reason::REQUESTED;
        set_condition(
            &mut s.conditions,
            condition::SWITCHOVER_IN_PROGRESS,
            status,
            why,
            String::new(),
            Some(generation),
            since,
        );
        s
    }

    #[test]
    fn no_switchover_in_the_spec() {
        let p = plan(
            &cluster(None, None),
            &PostgresClusterStatus::default(),
            Some("pg-0"),
            t(0),
        );
        assert_eq!(p, Plan::Settled(SwitchoverOutcome::None));
    }

    #[test]
    fn requests_once_then_waits_then_completes() {
        let c = cluster(Some("pg-2"), None);
        let fresh = PostgresClusterStatus::default();
        assert_eq!(
            plan(&c, &fresh, Some("pg-0"), t(0)),
            Plan::Request {
                from: "pg-0".into(),
                target: "pg-2".into()
            }
        );
        let requested = status_with(reason::REQUESTED, 1, t(0));
        assert_eq!(
            plan(&c, &requested, Some("pg-0"), t(5)),
            Plan::Settled(SwitchoverOutcome::InProgress {
                from: "pg-0".into(),
                target: "pg-2".into()
            }),
            "not asked again for the same generation"
        );
        assert_eq!(
            plan(&c, &requested, Some("pg-2"), t(6)),
            Plan::Settled(SwitchoverOutcome::Completed {
                target: "pg-2".into()
            })
        );
        assert_eq!(
            plan(&c, &requested, None, t(200)),
            Plan::Settled(SwitchoverOutcome::NotCompleted {
                target: "pg-2".into()
            })
        );
        let done = status_with(reason::COMPLETED, 1, t(6));
        assert_eq!(
            plan(&c, &done, Some("pg-1"), t(300)),
            Plan::Settled(SwitchoverOutcome::Completed {
                target: "pg-2".into()
            }),
            "a later failover does not re-trigger the same generation's switchover"
        );
    }

    #[test]
    fn a_new_generation_asks_again() {
        let mut c = cluster(Some("pg-2"), None);
        c.generation = Some(2);
        let done = status_with(reason::COMPLETED, 1, t(0));
        assert_eq!(
            plan(&c, &done, Some("pg-1"), t(10)),
            Plan::Request {
                from: "pg-1".into(),
                target: "pg-2".into()
            }
        );
    }

    #[test]
    fn waits_for_schedule_and_primary_and_skips_a_no_op() {
        let fresh = PostgresClusterStatus::default();
        let scheduled = cluster(Some("pg-1"), Some(t(60)));
        assert_eq!(
            plan(&scheduled, &fresh, Some("pg-0"), t(0)),
            Plan::Settled(SwitchoverOutcome::Scheduled {
                target: "pg-1".into(),
                at: t(60)
            })
        );
        assert_eq!(
            plan(&scheduled, &fresh, Some("pg-0"), t(61)),
            Plan::Request {
                from: "pg-0".into(),
                target: "pg-1".into()
            }
        );
        let c = cluster(Some("pg-1"), None);
        assert_eq!(
            plan(&c, &fresh, None, t(0)),
            Plan::Settled(SwitchoverOutcome::WaitingForPrimary {
                target: "pg-1".into()
            })
        );
        assert_eq!(
            plan(&c, &fresh, Some("pg-1"), t(0)),
            Plan::Settled(SwitchoverOutcome::AlreadyPrimary {
                target: "pg-1".into()
            })
        );
        let failed = status_with(reason::REQUEST_FAILED, 1, t(0));
        assert_eq!(
            plan(&c, &failed, Some("pg-0"), t(5)),
            Plan::Request {
                from: "pg-0".into(),
                target: "pg-1".into()
            },
            "a failed request is retried"
        );
    }

    #[test]
    fn only_an_in_progress_condition_is_true() {
        let in_progress = SwitchoverOutcome::InProgress {
            from: "a".into(),
            target: "b".into(),
        };
        assert!(in_progress.condition().0);
        assert!(in_progress.targets("b") && !in_progress.targets("a"));
        assert!(
            !SwitchoverOutcome::Completed { target: "b".into() }
                .condition()
                .0
        );
        assert!(!SwitchoverOutcome::None.condition().0);
    }
}
