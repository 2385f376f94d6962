//! The members' REST API as a test uses it: each member's report (`GET /patroni`), whether it is a
//! synchronous standby (`GET /sync`), the mutating calls with the cluster's API credentials, and
//! convergence as the members report it. Pods are reached on their pod IPs (routable from this host);
//! every call is bounded in time.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use pgpilot_crds::contract::{self, MemberReport, error_chain};

use crate::cluster::{self, ClusterError, MemberPod};

/// The bound of a read (`GET`).
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The bound of a mutating call: a switchover waits for the candidate, a restart for PostgreSQL.
const POST_TIMEOUT: Duration = Duration::from_secs(70);

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Http(String, #[source] reqwest::Error),
    #[error("{0} has no pod IP")]
    NoIp(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

fn url(ip: &str, path: &str) -> String {
    format!("http://{ip}:{}{path}", contract::REST_PORT)
}

/// `GET /patroni` of the member at `ip`.
pub async fn report(ip: &str) -> Result<MemberReport, RestError> {
    let url = url(ip, "/patroni");
    let http = |e| RestError::Http(url.clone(), e);
    reqwest::Client::new()
        .get(&url)
        .timeout(READ_TIMEOUT)
        .send()
        .await
        .map_err(http)?
        .json()
        .await
        .map_err(http)
}

/// Each member's report, or why it could not be read, by pod name.
pub async fn member_reports(pods: &[MemberPod]) -> BTreeMap<String, Result<MemberReport, String>> {
    let mut out = BTreeMap::new();
    for pod in pods {
        let report = match &pod.ip {
            None => Err("no pod IP".to_owned()),
            Some(ip) => report(ip).await.map_err(|e| error_chain(&e)),
        };
        out.insert(pod.name.clone(), report);
    }
    out
}

/// Every member's report, by pod name; fails when one cannot be read.
pub async fn reports(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
) -> Result<BTreeMap<String, MemberReport>, RestError> {
    let mut out = BTreeMap::new();
    for pod in cluster::member_pods(client, ns, cluster).await? {
        let ip = pod
            .ip
            .clone()
            .ok_or_else(|| RestError::NoIp(pod.name.clone()))?;
        out.insert(pod.name, report(&ip).await?);
    }
    Ok(out)
}

/// Each member's last HA decision in one line (role, state, epoch, decision), for a failing verdict.
pub async fn last_decisions(pods: &[MemberPod]) -> BTreeMap<String, String> {
    member_reports(pods)
        .await
        .into_iter()
        .map(|(name, r)| {
            let line = match r {
                Ok(r) => format!(
                    "role={} state={} epoch={} decision: {}",
                    r.role, r.state, r.pgpilot.epoch, r.pgpilot.last_decision
                ),
                Err(e) => format!("unknown ({e})"),
            };
            (name, line)
        })
        .collect()
}

/// The value of the sample `series` (a metric name with its labels as the member prints them, e.g.
/// `pgpilot_lease_writes_total{kind="renew",result="error"}`) in `GET /metrics` of the member at `ip`; 0
/// when the member has not counted any yet.
pub async fn metric(ip: &str, series: &str) -> Result<f64, RestError> {
    let url = url(ip, "/metrics");
    let http = |e| RestError::Http(url.clone(), e);
    let text = reqwest::Client::new()
        .get(&url)
        .timeout(READ_TIMEOUT)
        .send()
        .await
        .map_err(http)?
        .text()
        .await
        .map_err(http)?;
    Ok(sample_value(&text, series).unwrap_or(0.0))
}

/// The value of `series` in an OpenMetrics text.
fn sample_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|v| v.split_whitespace().next()?.parse().ok())
}

/// Whether the member at `ip` answers `GET /sync` with 200 (it is a synchronous standby).
pub async fn is_sync(ip: &str) -> bool {
    reqwest::Client::new()
        .get(url(ip, "/sync"))
        .timeout(READ_TIMEOUT)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// A mutating call on `ip` with `auth` (user, password), bounded by `timeout`; returns (status, body).
pub async fn post_as(
    ip: &str,
    path: &str,
    body: Option<serde_json::Value>,
    auth: Option<(String, String)>,
    timeout: Duration,
) -> Result<(u16, String), RestError> {
    let url = url(ip, path);
    let mut request = reqwest::Client::new().post(&url).timeout(timeout);
    if let Some((user, password)) = auth {
        request = request.basic_auth(user, Some(password));
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request
        .send()
        .await
        .map_err(|e| RestError::Http(url.clone(), e))?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.unwrap_or_default()))
}

/// A mutating call on `ip` with the cluster's API credentials; returns (status, body).
pub async fn post(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
    ip: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, String), RestError> {
    let auth = cluster::credentials(client, ns, cluster, "api").await?;
    post_as(ip, path, body, Some(auth), POST_TIMEOUT).await
}

/// `POST /switchover` on `ip` (the primary, or a replica that forwards it) from `leader` to `candidate`.
pub async fn switchover(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
    ip: &str,
    leader: &str,
    candidate: &str,
) -> Result<(u16, String), RestError> {
    let body = serde_json::json!({ "leader": leader, "candidate": candidate });
    post(client, ns, cluster, ip, "/switchover", Some(body)).await
}

/// The one member whose report says running primary, if exactly one does.
pub fn single_primary(reports: &BTreeMap<String, MemberReport>) -> Option<String> {
    let primaries: Vec<&String> = reports
        .iter()
        .filter(|(_, r)| r.role == contract::ROLE_PRIMARY && r.state == "running")
        .map(|(n, _)| n)
        .collect();
    (primaries.len() == 1).then(|| primaries[0].clone())
}

/// Waits until the members report one running primary and every other member streaming from it (for
/// tests that run no probes); returns the primary.
pub async fn wait_converged(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
    timeout: Duration,
) -> Result<String, RestError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("never converged");
    loop {
        match reports(client, ns, cluster).await {
            Ok(reports) => {
                if let Some(primary) = single_primary(&reports) {
                    let streaming = reports
                        .iter()
                        .filter(|(n, _)| **n != primary)
                        .all(|(_, r)| {
                            r.role == contract::ROLE_REPLICA
                                && r.replication_state.as_deref() == Some("streaming")
                        });
                    if streaming {
                        return Ok(primary);
                    }
                }
            }
            Err(e) => last = error_chain(&e),
        }
        if Instant::now() > deadline {
            return Err(RestError::Timeout(
                timeout,
                format!("one primary and streaming replicas ({last})"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_read_by_its_name_and_labels() {
        let text = "# TYPE pgpilot_lease_writes counter\n\
            pgpilot_lease_writes_total{kind=\"renew\",result=\"ok\"} 12\n\
            pgpilot_lease_writes_total{kind=\"renew\",result=\"error\"} 2\n\
            pgpilot_errors_total{module=\"ha\",category=\"Conflict\"} 1\n# EOF\n";
        let renew = r#"pgpilot_lease_writes_total{kind="renew",result="error"}"#;
        assert_eq!(sample_value(text, renew), Some(2.0));
        let conflict = r#"pgpilot_errors_total{module="ha",category="Conflict"}"#;
        assert_eq!(sample_value(text, conflict), Some(1.0));
        assert_eq!(sample_value(text, "pgpilot_lease_writes_total"), None);
    }
}
