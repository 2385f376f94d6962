//! Handlers' status codes from in-memory states; mutating calls reach a stand-in HA loop that records
//! the action it was asked for.

use std::{path::PathBuf, sync::Arc};

use base64::Engine;
use pgpilot_crds::contract::{
    MemberReport, MemberTags, ROLE_PRIMARY, ROLE_REPLICA, ReplicationMode, SidecarConfig, Xlog,
};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::state::{Command, Heartbeat, PeerState};

fn primary_state() -> MemberState {
    let mut s = MemberState::new("c", "c-0");
    s.role = ROLE_PRIMARY.into();
    s.state = "running".into();
    s.running = true;
    s.holder = true;
    s.leader = Some("c-0".into());
    s.timeline = Some(2);
    s.wal_location = Some(5000);
    s.peers = vec![peer("c-1", true), peer("c-2", true)];
    s
}

fn replica_state(lag: u64) -> MemberState {
    let mut s = MemberState::new("c", "c-1");
    s.role = ROLE_REPLICA.into();
    s.state = "running".into();
    s.running = true;
    s.leader = Some("c-0".into());
    s.received_location = Some(5000 - lag);
    s.replayed_location = Some(5000 - lag);
    s.lag_bytes = Some(lag);
    s.replication_state = Some("streaming".into());
    s.peers = vec![PeerState {
        name: "c-0".into(),
        host: None,
        report: None,
    }];
    s
}

fn peer(name: &str, running_replica: bool) -> PeerState {
    PeerState {
        name: name.into(),
        host: Some("127.0.0.1".into()),
        report: Some(MemberReport {
            role: ROLE_REPLICA.into(),
            state: if running_replica {
                "running"
            } else {
                "stopped"
            }
            .into(),
            xlog: Some(Xlog {
                received_location: Some(5000),
                replayed_location: Some(5000),
                location: None,
            }),
            ..MemberReport::default()
        }),
    }
}

struct Harness {
    ctx: Context,
    actions: mpsc::Receiver<Command>,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn harness(state: MemberState) -> Harness {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pgpilot-rest-{}-{n}", std::process::id()));
    std::fs::create_dir_all(dir.join("api")).unwrap();
    std::fs::write(dir.join("api/username"), "admin\n").unwrap();
    std::fs::write(dir.join("api/password"), "s3cret").unwrap();
    let (_tx, state) = watch::channel(state);
    let (commands, actions) = mpsc::channel(4);
    let ctx = Context {
        handles: Handles {
            state,
            commands,
            heartbeat: Heartbeat::default(),
        },
        metrics: Arc::new(Metrics::new()),
        secrets_dir: dir.clone(),
        http: reqwest::Client::new(),
    };
    Harness {
        ctx,
        actions,
        _dir: TempDir(dir),
    }
}

fn get(path: &str) -> Request {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    Request {
        method: "GET".into(),
        path: path.into(),
        query: query.into(),
        ..Request::default()
    }
}

fn basic(user: &str, password: &str) -> Option<String> {
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    ))
}

fn post(path: &str, body: &str) -> Request {
    Request {
        method: "POST".into(),
        path: path.into(),
        authorization: basic("admin", "s3cret"),
        body: body.as_bytes().to_vec(),
        ..Request::default()
    }
}

async fn status(h: &Harness, req: Request) -> u16 {
    handle(&h.ctx, req).await.status
}

#[tokio::test]
async fn primary_health_codes() {
    let h = harness(primary_state());
    for (path, code) in [
        ("/", 200),
        ("/primary", 200),
        ("/master", 200),
        ("/read-write", 200),
        ("/leader", 200),
        ("/read-only", 200),
        ("/health", 200),
        ("/readiness", 200),
        ("/liveness", 200),
        ("/replica", 503),
        ("/sync", 503),
        ("/async", 503),
    ] {
        assert_eq!(status(&h, get(path)).await, code, "{path}");
    }
    let body: MemberReport =
        serde_json::from_str(&handle(&h.ctx, get("/patroni")).await.body).unwrap();
    assert_eq!(
        (body.role.as_str(), body.xlog.unwrap().location),
        (ROLE_PRIMARY, Some(5000))
    );
}

#[tokio::test]
async fn a_primary_that_lost_the_lease_is_not_primary() {
    let mut s = primary_state();
    s.holder = false;
    let h = harness(s);
    assert_eq!(status(&h, get("/primary")).await, 503);
}

#[tokio::test]
async fn replica_health_codes_and_lag() {
    let h = harness(replica_state(1000));
    for (path, code) in [
        ("/", 503),
        ("/primary", 503),
        ("/replica", 200),
        ("/read-only", 200),
        ("/async", 200),
        ("/sync", 503),
        ("/replica?lag=1kB", 200),
        ("/replica?lag=1000", 200),
        ("/replica?lag=999", 503),
        ("/replica?lag=16MB", 200),
        ("/replica?lag=lots", 400),
        ("/replica?tag_nofailover=false", 200),
        ("/replica?tag_nofailover=true", 503),
        ("/replica?tag_zone=eu", 503),
    ] {
        assert_eq!(status(&h, get(path)).await, code, "{path}");
    }
}

#[tokio::test]
async fn replica_sync_noloadbalance_and_unknown_lag() {
    let mut s = replica_state(0);
    s.sync_members = vec!["c-1".into()];
    let h = harness(s.clone());
    assert_eq!(status(&h, get("/sync")).await, 200);
    assert_eq!(status(&h, get("/synchronous")).await, 200);
    assert_eq!(status(&h, get("/async")).await, 503);
    s.tags = MemberTags {
        no_load_balance: true,
        ..MemberTags::default()
    };
    s.lag_bytes = None;
    let h = harness(s.clone());
    assert_eq!(status(&h, get("/replica")).await, 503, "noloadbalance");
    s.tags = MemberTags::default();
    let h = harness(s);
    assert_eq!(status(&h, get("/replica")).await, 200);
    assert_eq!(
        status(&h, get("/replica?lag=1MB")).await,
        503,
        "unknown lag fails a lag limit"
    );
}

#[tokio::test]
async fn stopped_member_is_unhealthy_but_alive() {
    let mut s = replica_state(0);
    s.running = false;
    s.state = "stopped".into();
    let h = harness(s);
    assert_eq!(status(&h, get("/health")).await, 503);
    assert_eq!(status(&h, get("/readiness")).await, 503);
    assert_eq!(status(&h, get("/replica")).await, 503);
    assert_eq!(status(&h, get("/liveness")).await, 200);
}

#[tokio::test(start_paused = true)]
async fn a_silent_ha_loop_fails_liveness_with_the_reason() {
    let mut s = primary_state();
    s.last_decision = "renew".into();
    let h = harness(s);
    // Before the loop's first beat (it waits for its configuration) the member counts as alive.
    assert_eq!(status(&h, get("/liveness")).await, 200);
    h.ctx.handles.heartbeat.beat();
    tokio::time::advance(std::time::Duration::from_secs(30)).await;
    assert_eq!(status(&h, get("/liveness")).await, 200);
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    let r = handle(&h.ctx, get("/liveness")).await;
    assert_eq!(r.status, 503);
    let reason: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let reason = reason["error"].as_str().unwrap();
    assert!(
        reason.contains("no progress for 32 s") && reason.contains("renew"),
        "{reason}"
    );
    // The other checks do not depend on it, and the next beat makes it alive again.
    assert_eq!(status(&h, get("/primary")).await, 200);
    h.ctx.handles.heartbeat.beat();
    assert_eq!(status(&h, get("/liveness")).await, 200);
}

#[tokio::test]
async fn head_and_options_same_codes_no_body() {
    let h = harness(replica_state(0));
    for method in ["HEAD", "OPTIONS"] {
        let r = handle(
            &h.ctx,
            Request {
                method: method.into(),
                ..get("/replica")
            },
        )
        .await;
        assert_eq!((r.status, r.body.as_str()), (200, ""));
        let r = handle(
            &h.ctx,
            Request {
                method: method.into(),
                ..get("/primary")
            },
        )
        .await;
        assert_eq!(r.status, 503);
    }
}

#[tokio::test]
async fn reads_and_unknown_routes() {
    let h = harness(primary_state());
    for path in GET_PATHS {
        assert_eq!(status(&h, get(path)).await, 200, "{path}");
    }
    let cluster: Value = serde_json::from_str(&handle(&h.ctx, get("/cluster")).await.body).unwrap();
    assert_eq!(cluster["members"][0]["role"], "leader");
    assert_eq!(cluster["members"].as_array().unwrap().len(), 3);
    assert!(
        handle(&h.ctx, get("/metrics"))
            .await
            .body
            .contains("pgpilot_primary 1")
    );
    assert_eq!(status(&h, get("/nope")).await, 404);
    assert_eq!(
        status(
            &h,
            Request {
                method: "DELETE".into(),
                ..get("/config")
            }
        )
        .await,
        404
    );
}

#[tokio::test]
async fn mutating_calls_need_credentials() {
    let h = harness(primary_state());
    let mut req = post("/restart", "");
    req.authorization = None;
    let r = handle(&h.ctx, req.clone()).await;
    assert_eq!(r.status, 401);
    assert!(r.www_authenticate);
    req.authorization = basic("admin", "wrong");
    assert_eq!(status(&h, req.clone()).await, 403);
    req.authorization = Some("Basic !!!".into());
    assert_eq!(status(&h, req.clone()).await, 401);
    req.authorization = Some("Bearer x".into());
    assert_eq!(status(&h, req).await, 401);
    let mut patch = post("/config", "{}");
    patch.method = "PATCH".into();
    patch.authorization = None;
    assert_eq!(status(&h, patch).await, 401);
}

#[tokio::test]
async fn malformed_credentials_are_no_credentials() {
    let h = harness(primary_state());
    let encoded = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let invalid_utf8 = base64::engine::general_purpose::STANDARD.encode([0xff, b':', b'x']);
    for header in [
        "Basic".to_owned(),
        "Basic ".to_owned(),
        "Basicx".to_owned(),
        format!("Basic {}", encoded("admin-s3cret")),
        format!("Basic {invalid_utf8}"),
        format!("Basic {}===", encoded("admin:s3cret")),
        "Basic \u{e9}\u{e9}".to_owned(),
        "Basic a\nb".to_owned(),
        format!("Digest {}", encoded("admin:s3cret")),
    ] {
        let mut req = post("/restart", "");
        req.authorization = Some(header.clone());
        let r = handle(&h.ctx, req).await;
        assert_eq!((r.status, r.www_authenticate), (401, true), "{header:?}");
        let reason: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            reason["error"], "basic authentication required",
            "{header:?}"
        );
    }
    // The scheme is case-insensitive (RFC 7235) and whitespace around the value is not part of it.
    for header in [
        format!("basic {}", encoded("admin:s3cret")),
        format!("BASIC  {}", encoded("admin:s3cret")),
        format!(" Basic {} ", encoded("admin:s3cret")),
    ] {
        let mut req = post("/reload", "");
        req.authorization = Some(header.clone());
        let mut h = harness(primary_state());
        let ctx = h.ctx.clone();
        let request = tokio::spawn(async move { handle(&ctx, req).await.status });
        let cmd = h.actions.recv().await.unwrap();
        assert!(matches!(cmd.action, Action::Reload), "{header:?}");
        cmd.reply.send(Outcome::new(200, "reloaded")).unwrap();
        assert_eq!(request.await.unwrap(), 200, "{header:?}");
    }
    // A password with a colon: the user name ends at the first one.
    std::fs::write(h.ctx.secrets_dir.join("api/password"), "s3:cret").unwrap();
    let mut req = post("/reinitialize", "");
    req.authorization = basic("admin", "s3:cret");
    assert_eq!(
        status(&h, req).await,
        503,
        "authorized, refused on the leader"
    );
    let mut req = post("/reinitialize", "");
    req.authorization = basic("admin", "s3");
    assert_eq!(status(&h, req).await, 403);
    let mut req = post("/reinitialize", "");
    req.authorization = basic("root", "s3:cret");
    assert_eq!(status(&h, req).await, 403, "right password, wrong user");
}

#[tokio::test]
async fn a_bad_query_gets_400_with_a_json_reason() {
    let h = harness(replica_state(0));
    for (path, reason) in [
        ("/replica?lag=lots", "invalid lag"),
        ("/replica?tag_zone=%zz", "invalid query string"),
        ("/read-only?lag=%ff", "invalid query string"),
    ] {
        let r = handle(&h.ctx, get(path)).await;
        assert_eq!(
            (r.status, r.content_type),
            (400, "application/json"),
            "{path}"
        );
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with(reason)),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn patch_config_is_refused_with_the_reason() {
    let h = harness(primary_state());
    let mut patch = post("/config", r#"{"ttl": 30}"#);
    patch.method = "PATCH".into();
    let r = handle(&h.ctx, patch.clone()).await;
    assert_eq!(r.status, 409);
    assert!(r.body.contains("PostgresCluster"));
    patch.body = b"not json".to_vec();
    assert_eq!(status(&h, patch.clone()).await, 400);
    patch.body = b"[1]".to_vec();
    assert_eq!(status(&h, patch).await, 400);
}

#[tokio::test]
async fn switchover_is_checked_before_the_ha_loop_sees_it() {
    let h = harness(primary_state());
    for (body, code) in [
        ("{", 400),
        (r#"{"candidate":"c-1"}"#, 400),
        (r#"{"leader":"c-9"}"#, 412),
        (r#"{"leader":"c-0","candidate":"c-0"}"#, 412),
        (r#"{"leader":"c-0","candidate":"c-7"}"#, 412),
        (r#"{"leader":"c-0","scheduled_at":"yesterday"}"#, 400),
        (
            r#"{"leader":"c-0","scheduled_at":"2001-01-01T00:00:00Z"}"#,
            422,
        ),
    ] {
        assert_eq!(status(&h, post("/switchover", body)).await, code, "{body}");
    }
    assert_eq!(
        status(&h, post("/failover", r#"{"leader":"c-0"}"#)).await,
        400,
        "failover needs a candidate"
    );
}

#[tokio::test]
async fn switchover_refuses_unfit_candidates() {
    let mut s = primary_state();
    s.peers = vec![peer("c-1", false), peer("c-2", true)];
    s.config.tags.insert(
        "c-2".into(),
        MemberTags {
            no_failover: true,
            ..MemberTags::default()
        },
    );
    let h = harness(s.clone());
    let r = handle(
        &h.ctx,
        post("/switchover", r#"{"leader":"c-0","candidate":"c-1"}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.body.contains("not running as a replica")),
        (412, true),
        "{}",
        r.body
    );
    let r = handle(
        &h.ctx,
        post("/switchover", r#"{"leader":"c-0","candidate":"c-2"}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.body.contains("noFailover")),
        (412, true),
        "{}",
        r.body
    );
    let r = handle(&h.ctx, post("/switchover", r#"{"leader":"c-0"}"#)).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (412, "no good candidates have been found")
    );
    // Synchronous mode: only a recorded synchronous standby.
    s.peers = vec![peer("c-1", true)];
    s.config.replication.mode = ReplicationMode::Sync;
    let h = harness(s.clone());
    assert_eq!(
        status(
            &h,
            post("/switchover", r#"{"leader":"c-0","candidate":"c-1"}"#)
        )
        .await,
        412
    );
    s.sync_members = vec!["c-1".into()];
    let mut h = harness(s);
    let ctx = h.ctx.clone();
    let request = tokio::spawn(async move {
        handle(
            &ctx,
            post("/switchover", r#"{"leader":"c-0","candidate":"c-1"}"#),
        )
        .await
    });
    let cmd = h.actions.recv().await.unwrap();
    assert!(matches!(&cmd.action, Action::Switchover { candidate: Some(c), .. } if c == "c-1"));
    cmd.reply
        .send(Outcome::new(200, "switched over to c-1"))
        .unwrap();
    assert_eq!(request.await.unwrap().status, 200);
}

#[tokio::test]
async fn switchover_reaches_the_ha_loop() {
    let mut h = harness(primary_state());
    let ctx = h.ctx.clone();
    let request = tokio::spawn(async move {
        handle(
            &ctx,
            post("/switchover", r#"{"leader":"c-0","candidate":"c-2"}"#),
        )
        .await
    });
    let cmd = h.actions.recv().await.unwrap();
    assert!(
        matches!(&cmd.action, Action::Switchover { candidate: Some(c), at: None } if c == "c-2"),
        "{:?}",
        cmd.action
    );
    cmd.reply
        .send(Outcome::new(200, "Successfully switched over to \"c-2\""))
        .unwrap();
    let r = request.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("c-2"));
}

#[tokio::test]
async fn a_replica_accepts_itself_as_candidate() {
    // Sent to the candidate: it checks itself, then (not being the primary) forwards to the primary;
    // the primary's address is unknown here, so the forward answers 503 — not a 412 "does not exist".
    let h = harness(replica_state(0));
    let r = handle(
        &h.ctx,
        post("/switchover", r#"{"leader":"c-0","candidate":"c-1"}"#),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("address"), "{}", r.body);
    let r = handle(
        &h.ctx,
        post("/switchover", r#"{"leader":"c-0","candidate":"c-9"}"#),
    )
    .await;
    assert_eq!(r.status, 412);
}

#[tokio::test]
async fn reinitialize_is_refused_on_the_leader() {
    let h = harness(primary_state());
    let r = handle(&h.ctx, post("/reinitialize", "")).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn a_missing_ha_loop_answers_503() {
    let h = harness(replica_state(0));
    let Harness { ctx, actions, _dir } = h;
    drop(actions);
    assert_eq!(handle(&ctx, post("/restart", "")).await.status, 503);
}

#[tokio::test]
async fn a_replica_is_ready_only_while_it_streams_within_the_lag_limit() {
    // Issue 13 hole 10: `-ro` routes to Ready replicas, so a replica that stopped streaming or fell
    // behind must not be Ready (arbitrarily stale reads).
    let limit = SidecarConfig::default()
        .replication
        .maximum_lag_on_failover_bytes;
    let h = harness(replica_state(0));
    assert_eq!(status(&h, get("/readiness")).await, 200);
    let mut s = replica_state(0);
    s.lag_bytes = Some(limit + 1);
    let h = harness(s);
    assert_eq!(status(&h, get("/readiness")).await, 503, "too far behind");
    let mut s = replica_state(0);
    s.replication_state = None;
    let h = harness(s);
    assert_eq!(status(&h, get("/readiness")).await, 503, "not streaming");
    let mut s = replica_state(0);
    s.lag_bytes = None;
    let h = harness(s);
    assert_eq!(status(&h, get("/readiness")).await, 503, "lag unknown");
}

#[tokio::test]
async fn a_failover_without_a_serving_primary_goes_to_the_candidates_ha_loop() {
    // c-1's view: the Lease names c-0, whose API does not answer — no primary serves.
    let mut s = replica_state(0);
    s.peers.push(PeerState {
        name: "c-2".into(),
        host: None,
        report: None,
    });
    assert_eq!(s.live_leader(), None);
    for (body, code, what) in [
        (r#"{"leader":"c-0"}"#, 400, "a candidate is required"),
        (
            r#"{"candidate":"c-1","scheduled_at":"2999-01-01T00:00:00Z"}"#,
            400,
            "not scheduled",
        ),
        (r#"{"candidate":"c-9"}"#, 412, "no such member"),
        (r#"{"candidate":"c-0"}"#, 412, "the Lease's own holder"),
        (r#"{"candidate":"c-2"}"#, 503, "no address to pass it on to"),
    ] {
        let h = harness(s.clone());
        assert_eq!(status(&h, post("/failover", body)).await, code, "{what}");
    }
    let mut h = harness(s.clone());
    let ctx = h.ctx.clone();
    let request = tokio::spawn(async move {
        handle(
            &ctx,
            post("/failover", r#"{"candidate":"c-1","force":true}"#),
        )
        .await
    });
    let cmd = h.actions.recv().await.unwrap();
    assert!(
        matches!(cmd.action, Action::Failover { force: true }),
        "{:?}",
        cmd.action
    );
    cmd.reply
        .send(Outcome::new(
            200,
            "Successfully failed over to c-1 (epoch 3)",
        ))
        .unwrap();
    assert_eq!(request.await.unwrap().status, 200);
    // With the primary serving (its report says so), the same request is a switchover, passed on to it.
    let mut serving = s;
    serving.peers = vec![PeerState {
        name: "c-0".into(),
        host: None,
        report: Some(MemberReport {
            role: ROLE_PRIMARY.into(),
            state: "running".into(),
            ..MemberReport::default()
        }),
    }];
    assert_eq!(serving.live_leader(), Some("c-0"));
}
