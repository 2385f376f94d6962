//! The REST API on :8008, Patroni's paths and status codes so existing HAProxy/PgBouncer checks work.
//!
//! - Reads: the latest published [`MemberState`] (a `watch` snapshot). GETs never call Kubernetes or
//!   PostgreSQL.
//! - Mutating calls (`POST`, `PATCH`) need HTTP basic auth with the `api` Secret's credentials (read from
//!   `<secrets>/api/{username,password}` on every call, so a rotated Secret applies at once): 401 without
//!   credentials, 403 with wrong ones. They are checked against the snapshot here (400 malformed, 412 not
//!   possible, with the reason) and then carried out by the HA loop through [`Handles::ask`].
//! - `POST /switchover` and `/failover` on a member that is not the primary are forwarded to the
//!   primary's API (same body, same credentials), so they may be sent to any member. A `/failover`
//!   while no primary serves goes to the candidate instead, whose HA loop takes the Lease as soon as
//!   the Lease rules allow (a manual failover).
//!
//! Routing is one `match` over (method, path) in [`handle`], which is what the unit tests and the
//! OpenAPI route test (`tests/rest.rs`) drive; [`serve`] only adapts warp to it.

pub mod query;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use headers::{Authorization, Header, authorization::Basic};
use k8s_openapi::jiff::Timestamp;
use pgpilot_crds::contract::{REST_PORT, ROLE_PRIMARY};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tracing::{info, warn};
use warp::{Filter, http};

use self::query::{HealthQuery, parse_health_query};
use crate::{
    election::{
        Policy,
        switchover::{self, Target},
    },
    metrics::Metrics,
    state::{Action, Handles, MemberState, Outcome, liveness_bound, loop_alive},
};

/// Every route: (method, path). Health paths also answer HEAD and OPTIONS. `openapi.yaml` lists the same.
pub const HEALTH_PATHS: &[&str] = &[
    "/",
    "/primary",
    "/master",
    "/read-write",
    "/leader",
    "/replica",
    "/read-only",
    "/sync",
    "/synchronous",
    "/async",
    "/asynchronous",
    "/health",
    "/liveness",
    "/readiness",
];
pub const GET_PATHS: &[&str] = &["/patroni", "/cluster", "/history", "/config", "/metrics"];
pub const POST_PATHS: &[&str] = &[
    "/switchover",
    "/failover",
    "/restart",
    "/reload",
    "/reinitialize",
];
pub const PATCH_PATHS: &[&str] = &["/config"];

/// How long a mutating call waits for the HA loop (a switchover stops PostgreSQL and hands over).
const ACTION_TIMEOUT: Duration = Duration::from_secs(60);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(65);
const MAX_BODY: u64 = 64 * 1024;

/// What the handlers need.
#[derive(Clone, Debug)]
pub struct Context {
    pub handles: Handles,
    pub metrics: Arc<Metrics>,
    /// `contract::SECRETS_DIR` in the pod; `<dir>/api/{username,password}`.
    pub secrets_dir: PathBuf,
    /// For forwarding switchovers to the primary.
    pub http: reqwest::Client,
}

/// A request, as far as the API cares.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

/// A response: status, content type, body (empty for HEAD/OPTIONS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub www_authenticate: bool,
}

impl Response {
    fn json(status: u16, value: &impl serde::Serialize) -> Self {
        let body =
            serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        Self {
            status,
            content_type: "application/json",
            body,
            www_authenticate: false,
        }
    }

    fn text(status: u16, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            body,
            www_authenticate: false,
        }
    }

    fn outcome(o: &Outcome) -> Self {
        Self::text(o.status, "text/plain; charset=utf-8", o.message.clone())
    }

    fn error(status: u16, reason: impl Into<String>) -> Self {
        Self::json(status, &json!({ "error": reason.into() }))
    }
}

/// Routes one request.
pub async fn handle(ctx: &Context, req: Request) -> Response {
    let state = ctx.handles.state.borrow().clone();
    let method = req.method.as_str();
    let path = req.path.as_str();
    match method {
        "GET" | "HEAD" | "OPTIONS" if HEALTH_PATHS.contains(&path) => {
            let mut response = match parse_health_query(&req.query) {
                Ok(_) if path == "/liveness" => liveness(&ctx.handles, &state),
                Ok(q) => {
                    let ok = health(path, &state, &q);
                    Response::json(if ok { 200 } else { 503 }, &state.report())
                }
                Err(e) => Response::error(400, e.to_string()),
            };
            if method != "GET" {
                response.body.clear();
            }
            response
        }
        "GET" => match path {
            "/patroni" => Response::json(200, &state.report()),
            "/cluster" => Response::json(200, &cluster(&state)),
            "/history" => Response::json(200, &history(&state)),
            "/config" => Response::json(200, &state.config),
            "/metrics" => Response::text(
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ctx.metrics.render(&state),
            ),
            _ => Response::error(404, format!("no route GET {path}")),
        },
        "POST" if POST_PATHS.contains(&path) => {
            if let Err(denied) = authorize(&ctx.secrets_dir, req.authorization.as_deref()) {
                return denied;
            }
            post(ctx, &state, &req).await
        }
        "PATCH" if PATCH_PATHS.contains(&path) => {
            if let Err(denied) = authorize(&ctx.secrets_dir, req.authorization.as_deref()) {
                return denied;
            }
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(Value::Object(_)) => Response::error(
                    409,
                    "the configuration is owned by the PostgresCluster resource: change its spec \
                     (kubectl edit postgrescluster) and the operator renders it for every member",
                ),
                Ok(_) => Response::error(400, "the body must be a JSON object"),
                Err(e) => Response::error(400, format!("invalid JSON: {e}")),
            }
        }
        _ => Response::error(404, format!("no route {method} {path}")),
    }
}

/// `/liveness`: 200 while the HA loop makes progress, 503 with the reason once it has been silent past
/// [`liveness_bound`] — the kubelet then restarts the container instead of keeping a hung loop that looks
/// alive (the fencing watchdog is a task of its own and fences a stuck holder meanwhile, L5).
fn liveness(handles: &Handles, state: &MemberState) -> Response {
    let retry = Duration::from_secs(u64::from(state.config.ha.retry_period_seconds));
    let age = handles.heartbeat.age();
    if loop_alive(age, retry) {
        return Response::json(200, &state.report());
    }
    let age = age.unwrap_or_default();
    Response::error(
        503,
        format!(
            "the HA loop has made no progress for {:.0} s (bound {} s: 5 retryPeriods, 30 s at the least); last decision: {}",
            age.as_secs_f64(),
            liveness_bound(retry).as_secs(),
            if state.last_decision.is_empty() {
                "none"
            } else {
                &state.last_decision
            }
        ),
    )
}

/// The health checks but `/liveness` (the loop's heartbeat, [`liveness`]): true means 200.
pub fn health(path: &str, s: &MemberState, q: &HealthQuery) -> bool {
    let lag_ok = q
        .max_lag
        .is_none_or(|max| s.lag_bytes.is_some_and(|lag| lag <= max));
    let tags_ok = q
        .tags
        .iter()
        .all(|(k, v)| tag_value(s, k).is_some_and(|mine| mine.eq_ignore_ascii_case(v)));
    let balanced_replica = s.is_replica() && !s.tags.no_load_balance && lag_ok && tags_ok;
    match path {
        "/" | "/primary" | "/master" | "/read-write" | "/leader" => s.is_primary() && tags_ok,
        "/replica" => balanced_replica,
        "/read-only" => (s.is_primary() && tags_ok) || balanced_replica,
        "/sync" | "/synchronous" => balanced_replica && s.is_sync_replica(),
        "/async" | "/asynchronous" => balanced_replica && !s.is_sync_replica(),
        "/health" => s.running,
        "/readiness" => s.is_primary() || s.is_ready_replica(),
        _ => false,
    }
}

/// Our tags under Patroni's names, as strings.
fn tag_value(s: &MemberState, key: &str) -> Option<String> {
    match key {
        "nofailover" => Some(s.tags.no_failover.to_string()),
        "noloadbalance" => Some(s.tags.no_load_balance.to_string()),
        "failover_priority" => Some(s.tags.failover_priority.unwrap_or(1).to_string()),
        _ => None,
    }
}

fn cluster(s: &MemberState) -> Value {
    let role_name = |name: &str, role: &str| {
        if s.leader.as_deref() == Some(name) && role == ROLE_PRIMARY {
            "leader"
        } else if s.sync_members.iter().any(|m| m == name) {
            "sync_standby"
        } else {
            "replica"
        }
    };
    let mut members = vec![json!({
        "name": s.member,
        "role": role_name(&s.member, &s.role),
        "state": s.state,
        "timeline": s.timeline,
        "lag": s.lag_bytes,
        "lsn": s.wal_position(),
    })];
    for p in &s.peers {
        let report = p.report.as_ref();
        members.push(json!({
            "name": p.name,
            "host": p.host,
            "port": pgpilot_crds::contract::PG_PORT,
            "api_url": p.host.as_ref().map(|h| format!("http://{h}:{REST_PORT}/patroni")),
            "role": report.map_or("unknown", |r| role_name(&p.name, &r.role)),
            "state": report.map_or("unreachable", |r| r.state.as_str()),
            "timeline": report.and_then(|r| r.timeline),
            "lag": report.and_then(|r| r.pgpilot.lag_bytes),
            "lsn": p.wal_position(),
        }));
    }
    json!({
        "scope": s.cluster,
        "members": members,
        "pause": s.config.paused,
        "scheduled_switchover": s.scheduled_switchover,
    })
}

fn history(s: &MemberState) -> Value {
    Value::Array(
        s.history
            .iter()
            .map(|h| json!([h.timeline, h.lsn, h.reason, h.timestamp, h.leader]))
            .collect(),
    )
}

/// Basic auth against `<dir>/api/{username,password}`: 401 without (parsable) credentials, 403 wrong.
///
/// The header is parsed by `headers` (scheme case-insensitive, as RFC 7235 has it; base64; UTF-8;
/// `user:password`): anything it refuses is "no credentials". Both fields are compared in constant time
/// (`subtle`; only their lengths show), and both always, so the answer does not tell which was wrong.
fn authorize(dir: &std::path::Path, header: Option<&str>) -> Result<(), Response> {
    let read = |key: &str| {
        std::fs::read_to_string(dir.join("api").join(key))
            .map(|v| v.strip_suffix('\n').unwrap_or(&v).to_owned())
    };
    let (Ok(user), Ok(password)) = (read("username"), read("password")) else {
        warn!(dir = %dir.display(), "the API credentials cannot be read: refusing mutating calls");
        return Err(Response::error(
            403,
            "the API credentials are not available on this member",
        ));
    };
    let Some(given) = header.and_then(basic_credentials) else {
        return Err(Response {
            www_authenticate: true,
            ..Response::error(401, "basic authentication required")
        });
    };
    let matches = given.username().as_bytes().ct_eq(user.as_bytes())
        & given.password().as_bytes().ct_eq(password.as_bytes());
    if bool::from(matches) {
        Ok(())
    } else {
        Err(Response::error(403, "invalid credentials"))
    }
}

/// The credentials of an `Authorization: Basic …` header; `None` for any other or malformed header.
fn basic_credentials(header: &str) -> Option<Authorization<Basic>> {
    // HTTP drops the whitespace around a field value; a header handed in directly is treated the same.
    let value = http::HeaderValue::from_str(header.trim()).ok()?;
    Authorization::<Basic>::decode(&mut std::iter::once(&value)).ok()
}

/// Patroni's switchover/failover body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SwitchoverBody {
    pub leader: Option<String>,
    pub candidate: Option<String>,
    /// RFC 3339; absent means now.
    pub scheduled_at: Option<String>,
    /// A failover without a live primary: accept a candidate that is not synchronous, too far behind or
    /// on an older timeline (losing what only the others have).
    pub force: bool,
}

async fn post(ctx: &Context, state: &MemberState, req: &Request) -> Response {
    match req.path.as_str() {
        "/switchover" | "/failover" => {
            let body: SwitchoverBody = if req.body.iter().all(u8::is_ascii_whitespace) {
                SwitchoverBody::default()
            } else {
                match serde_json::from_slice(&req.body) {
                    Ok(b) => b,
                    Err(e) => return Response::error(400, format!("invalid JSON: {e}")),
                }
            };
            let failover = req.path == "/failover";
            if failover && state.live_leader().is_none() {
                return manual_failover(ctx, state, req, &body).await;
            }
            let plan = match plan_switchover(state, &body, failover, Timestamp::now()) {
                Ok(plan) => plan,
                Err(o) => return Response::outcome(&o),
            };
            if !state.is_primary() {
                return forward(ctx, state, req).await;
            }
            info!(candidate = plan.candidate.as_deref().unwrap_or("(best)"), at = ?plan.at, failover, "switchover requested");
            let action = Action::Switchover {
                candidate: plan.candidate,
                at: plan.at,
            };
            Response::outcome(&ctx.handles.ask(action, ACTION_TIMEOUT).await)
        }
        "/restart" => Response::outcome(&ctx.handles.ask(Action::Restart, ACTION_TIMEOUT).await),
        "/reload" => Response::outcome(&ctx.handles.ask(Action::Reload, ACTION_TIMEOUT).await),
        "/reinitialize" => {
            if state.holder {
                return Response::outcome(&Outcome::new(
                    503,
                    "I am the leader, can not reinitialize",
                ));
            }
            Response::outcome(&ctx.handles.ask(Action::Reinitialize, ACTION_TIMEOUT).await)
        }
        other => Response::error(404, format!("no route POST {other}")),
    }
}

/// A checked switchover request.
#[derive(Debug, PartialEq, Eq)]
pub struct SwitchoverPlan {
    pub candidate: Option<String>,
    pub at: Option<Timestamp>,
}

/// Checks a switchover/failover request against this member's view (Patroni's codes): 400 malformed,
/// 412 impossible (with the reason), 422 scheduled in the past. The HA loop checks again when it acts.
pub fn plan_switchover(
    s: &MemberState,
    body: &SwitchoverBody,
    failover: bool,
    now: Timestamp,
) -> Result<SwitchoverPlan, Outcome> {
    if failover && body.candidate.is_none() {
        return Err(Outcome::new(
            400,
            "Failover could be performed only to a specific candidate",
        ));
    }
    if !failover && body.leader.is_none() {
        return Err(Outcome::new(
            400,
            "Switchover could be performed only from a specific leader",
        ));
    }
    let Some(leader) = s.leader.as_deref() else {
        return Err(Outcome::new(
            412,
            "no primary holds the Lease: pgpilot fails over on its own",
        ));
    };
    if let Some(named) = body.leader.as_deref()
        && named != leader
    {
        return Err(Outcome::new(
            412,
            format!("leader name does not match: the primary is {leader}"),
        ));
    }
    let at = match body.scheduled_at.as_deref() {
        None => None,
        Some(text) => match text.parse::<Timestamp>() {
            Err(e) => {
                return Err(Outcome::new(
                    400,
                    format!("invalid scheduled_at {text:?}: {e}"),
                ));
            }
            Ok(t) if t < now => {
                return Err(Outcome::new(422, "Can't schedule switchover in the past"));
            }
            Ok(t) => Some(t),
        },
    };
    let policy = Policy {
        mode: s.config.replication.mode,
        maximum_lag_on_failover: s.config.replication.maximum_lag_on_failover_bytes,
        tags: s.config.tags.clone(),
        ..Policy::default()
    };
    let usable = |name: &str| -> Result<(), String> {
        // The request may be sent to the candidate itself: it knows its own state best.
        let target = if name == s.member {
            Target {
                name,
                healthy_replica: s.is_replica(),
                wal: s.wal_position(),
            }
        } else {
            let peer = s
                .peers
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| format!("candidate {name} does not exist"))?;
            Target {
                name,
                healthy_replica: peer.healthy_replica().is_some(),
                wal: peer.wal_position(),
            }
        };
        // The primary checks the position again right before it stops.
        switchover::fit(&policy, &s.sync_members, None, &target).map_err(|e| e.to_string())
    };
    match body.candidate.as_deref() {
        Some(c) if c == leader => {
            return Err(Outcome::new(
                412,
                format!("candidate {c} is already the leader"),
            ));
        }
        Some(c) => usable(c).map_err(|why| Outcome::new(412, why))?,
        None => {
            if !s
                .peers
                .iter()
                .any(|p| p.name != leader && usable(&p.name).is_ok())
            {
                return Err(Outcome::new(412, "no good candidates have been found"));
            }
        }
    }
    Ok(SwitchoverPlan {
        candidate: body.candidate.clone(),
        at,
    })
}

/// `POST /failover` while no primary serves (Patroni's manual failover): the candidate's HA loop takes
/// the Lease once the Lease rules allow and promotes; any other member passes the request on to it.
async fn manual_failover(
    ctx: &Context,
    state: &MemberState,
    req: &Request,
    body: &SwitchoverBody,
) -> Response {
    let Some(candidate) = body.candidate.as_deref() else {
        return Response::outcome(&Outcome::new(
            400,
            "Failover could be performed only to a specific candidate",
        ));
    };
    if body.scheduled_at.is_some() {
        return Response::outcome(&Outcome::new(
            400,
            "a failover without a running primary cannot be scheduled",
        ));
    }
    if state.leader.as_deref() == Some(candidate) {
        return Response::outcome(&Outcome::new(
            412,
            format!("candidate {candidate} is the member the Lease names: it takes it back itself"),
        ));
    }
    if candidate == state.member {
        info!(
            force = body.force,
            "manual failover requested: no primary serves"
        );
        let action = Action::Failover { force: body.force };
        return Response::outcome(&ctx.handles.ask(action, ACTION_TIMEOUT).await);
    }
    let Some(peer) = state.peers.iter().find(|p| p.name == candidate) else {
        return Response::outcome(&Outcome::new(
            412,
            format!("candidate {candidate} does not exist"),
        ));
    };
    match peer.host.as_deref() {
        Some(host) => forward_to(ctx, host, req).await,
        None => Response::outcome(&Outcome::new(
            503,
            format!("candidate {candidate} has no address yet"),
        )),
    }
}

/// Sends a switchover/failover to the primary's API and relays its answer.
async fn forward(ctx: &Context, s: &MemberState, req: &Request) -> Response {
    let Some(host) = s
        .leader
        .as_deref()
        .and_then(|l| s.peers.iter().find(|p| p.name == l))
        .and_then(|p| p.host.clone())
    else {
        return Response::outcome(&Outcome::new(
            503,
            "the primary's address is not known here",
        ));
    };
    forward_to(ctx, &host, req).await
}

/// Sends the request to another member's API and relays its answer.
async fn forward_to(ctx: &Context, host: &str, req: &Request) -> Response {
    let url = format!("http://{host}:{REST_PORT}{}", req.path);
    let mut builder = ctx
        .http
        .post(&url)
        .timeout(FORWARD_TIMEOUT)
        .body(req.body.clone());
    if let Some(auth) = &req.authorization {
        builder = builder.header(http::header::AUTHORIZATION, auth);
    }
    match builder.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            Response::text(status, "text/plain; charset=utf-8", text)
        }
        Err(e) => Response::outcome(&Outcome::new(503, format!("cannot reach {url}: {e}"))),
    }
}

/// Serves the API on `addr` until `shutdown` resolves.
pub async fn serve(
    ctx: Arc<Context>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, "REST API listening");
    serve_on(ctx, listener, shutdown).await;
    Ok(())
}

/// Serves the API on a bound listener until `shutdown` resolves.
pub async fn serve_on(
    ctx: Arc<Context>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // A body needs a Content-Length within the limit; a request without one (a health check's GET) has
    // an empty body.
    let body = warp::body::content_length_limit(MAX_BODY)
        .and(warp::body::bytes())
        .or(warp::header::optional::<u64>("content-length").and_then(
            |length: Option<u64>| async move {
                match length {
                    None => Ok(warp::hyper::body::Bytes::new()),
                    Some(_) => Err(warp::reject()),
                }
            },
        ))
        .unify();
    let routes = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(body)
        .then(
            move |method: http::Method,
                  path: warp::path::FullPath,
                  query,
                  headers: http::HeaderMap,
                  body: warp::hyper::body::Bytes| {
                let ctx = ctx.clone();
                // Taken as bytes, not through `warp::header`, which would answer a header that is not
                // visible ASCII with its own 400: a malformed Authorization header is "no credentials".
                let authorization = headers
                    .get(http::header::AUTHORIZATION)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                async move {
                    let req = Request {
                        method: method.to_string(),
                        path: path.as_str().to_owned(),
                        query,
                        authorization,
                        body: body.to_vec(),
                    };
                    to_http(handle(&ctx, req).await)
                }
            },
        );
    warp::serve(routes)
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

fn to_http(r: Response) -> http::Response<String> {
    let mut builder = http::Response::builder()
        .status(r.status)
        .header(http::header::CONTENT_TYPE, r.content_type);
    if r.www_authenticate {
        builder = builder.header(http::header::WWW_AUTHENTICATE, "Basic realm=\"pgpilot\"");
    }
    builder.body(r.body).unwrap_or_else(|e| {
        let mut fallback = http::Response::new(format!("{{\"error\":\"{e}\"}}"));
        *fallback.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        fallback
    })
}

#[cfg(test)]
mod tests;
