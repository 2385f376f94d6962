//! `sidecar/openapi.yaml` matches the implementation: the real server (warp on a loopback port) answers
//! every operation the document lists with one of the codes documented for it, and every route the
//! server has is in the document.

// Test helpers panic on a broken environment, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeSet, path::PathBuf, sync::Arc};

use base64::Engine;
use pgpilot_crds::contract::{MemberReport, ROLE_PRIMARY, ROLE_REPLICA, Xlog};
use pgpilot_sidecar::{
    metrics::Metrics,
    rest::{self, Context, GET_PATHS, HEALTH_PATHS, PATCH_PATHS, POST_PATHS},
    state::{Handles, Heartbeat, MemberState, Outcome, PeerState},
};
use tokio::sync::{mpsc, oneshot, watch};
use yaml_serde::Value;

fn openapi() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml");
    yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const METHODS: [&str; 5] = ["get", "head", "options", "post", "patch"];

/// (method, path) → documented status codes.
fn operations(doc: &Value) -> Vec<(String, String, BTreeSet<u16>)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        for method in METHODS {
            if let Some(op) = item.get(method) {
                let codes = op["responses"]
                    .as_mapping()
                    .unwrap()
                    .keys()
                    .map(|k| k.as_str().unwrap().parse().unwrap())
                    .collect();
                ops.push((method.to_uppercase(), path.to_owned(), codes));
            }
        }
    }
    ops
}

fn primary_state() -> MemberState {
    let mut s = MemberState::new("c", "c-0");
    s.role = ROLE_PRIMARY.into();
    s.state = "running".into();
    s.running = true;
    s.holder = true;
    s.leader = Some("c-0".into());
    s.wal_location = Some(100);
    s.peers = vec![PeerState {
        name: "c-1".into(),
        host: Some("127.0.0.1".into()),
        report: Some(MemberReport {
            role: ROLE_REPLICA.into(),
            state: "running".into(),
            xlog: Some(Xlog {
                received_location: Some(100),
                replayed_location: Some(100),
                location: None,
            }),
            ..MemberReport::default()
        }),
    }];
    s
}

struct Server {
    base: String,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real API on 127.0.0.1:<free port>, with a stand-in HA loop that accepts every command.
async fn server() -> Server {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pgpilot-rest-it-{}-{n}", std::process::id()));
    std::fs::create_dir_all(dir.join("api")).unwrap();
    std::fs::write(dir.join("api/username"), "admin").unwrap();
    std::fs::write(dir.join("api/password"), "pw").unwrap();
    let (_state_tx, state) = watch::channel(primary_state());
    let (commands, mut rx) = mpsc::channel::<pgpilot_sidecar::state::Command>(4);
    tokio::spawn(async move {
        let _keep = _state_tx;
        while let Some(cmd) = rx.recv().await {
            let _ = cmd
                .reply
                .send(Outcome::new(200, format!("done: {:?}", cmd.action)));
        }
    });
    let ctx = Arc::new(Context {
        handles: Handles {
            state,
            commands,
            heartbeat: Heartbeat::default(),
        },
        metrics: Arc::new(Metrics::new()),
        secrets_dir: dir.clone(),
        http: reqwest::Client::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(rest::serve_on(ctx, listener, async move {
        let _ = stopped.await;
    }));
    Server {
        base,
        http: reqwest::Client::new(),
        _stop: stop,
        dir,
    }
}

fn auth() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:pw")
    )
}

#[tokio::test]
async fn every_documented_operation_answers_with_a_documented_code() {
    let doc = openapi();
    let s = server().await;
    let ops = operations(&doc);
    assert!(ops.len() >= 50, "{} operations", ops.len());
    for (method, path, codes) in &ops {
        let url = format!("{}{path}", s.base);
        let mut req = s.http.request(method.parse().unwrap(), &url);
        if method == "POST" || method == "PATCH" {
            req = req.header("authorization", auth());
            let body = match path.as_str() {
                "/switchover" | "/failover" => r#"{"leader":"c-0","candidate":"c-1"}"#,
                _ => "{}",
            };
            req = req.body(body);
        }
        let response = req.send().await.unwrap();
        let status = response.status().as_u16();
        assert!(
            codes.contains(&status),
            "{method} {path} answered {status}, documented {codes:?}"
        );
        assert_ne!(status, 404, "{method} {path} has no route");
        if method == "POST" || method == "PATCH" {
            let anonymous = s
                .http
                .request(method.parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            assert_eq!(
                anonymous.status().as_u16(),
                401,
                "{method} {path} without credentials"
            );
            assert!(codes.contains(&401), "{method} {path}: 401 undocumented");
        }
    }
}

#[tokio::test]
async fn every_route_of_the_server_is_documented() {
    let doc = openapi();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let mut routes = Vec::new();
    for path in HEALTH_PATHS {
        for m in ["GET", "HEAD", "OPTIONS"] {
            routes.push((m.to_owned(), (*path).to_owned()));
        }
    }
    routes.extend(
        GET_PATHS
            .iter()
            .map(|p| ("GET".to_owned(), (*p).to_owned())),
    );
    routes.extend(
        POST_PATHS
            .iter()
            .map(|p| ("POST".to_owned(), (*p).to_owned())),
    );
    routes.extend(
        PATCH_PATHS
            .iter()
            .map(|p| ("PATCH".to_owned(), (*p).to_owned())),
    );
    for route in &routes {
        assert!(
            documented.contains(route),
            "{route:?} is served but not in openapi.yaml"
        );
    }
    assert_eq!(
        routes.len(),
        documented.len(),
        "openapi.yaml documents routes the server lacks"
    );
    // And an undocumented path really is absent.
    let s = server().await;
    let r = s
        .http
        .get(format!("{}/no-such-route", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn health_checks_over_http_like_haproxy() {
    let s = server().await;
    let code = |path: &'static str| {
        let http = s.http.clone();
        let url = format!("{}{path}", s.base);
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(code("/primary").await, 200);
    assert_eq!(code("/replica").await, 503);
    assert_eq!(code("/replica?lag=16MB").await, 503);
    assert_eq!(code("/replica?lag=oops").await, 400);
    let head = s
        .http
        .head(format!("{}/primary", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    let report: MemberReport = s
        .http
        .get(format!("{}/patroni", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report.role, ROLE_PRIMARY);
    let metrics = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("pgpilot_primary 1"), "{metrics}");
}

#[tokio::test]
async fn malformed_authorization_over_http_is_401_and_health_checks_ignore_it() {
    let s = server().await;
    let header = reqwest::header::HeaderValue::from_bytes(b"Basic \xff\xfe").unwrap();
    let r = s
        .http
        .post(format!("{}/restart", s.base))
        .header("authorization", header.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let reason: serde_json::Value = r.json().await.unwrap();
    assert_eq!(reason["error"], "basic authentication required");
    let r = s
        .http
        .get(format!("{}/primary", s.base))
        .header("authorization", header)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "a health check does not read credentials"
    );
    // reqwest's own basic auth (an encoder independent of the server's parser) is accepted.
    let r = s
        .http
        .post(format!("{}/reload", s.base))
        .basic_auth("admin", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn a_bad_query_over_http_is_400_with_a_json_reason() {
    let s = server().await;
    let r = s
        .http
        .get(format!("{}/replica?tag_zone=%zz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let reason: serde_json::Value = r.json().await.unwrap();
    assert!(
        reason["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid query string"),
        "{reason}"
    );
}
