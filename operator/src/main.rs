//! `pgpilot-operator`: the controller, `/metrics` and `/healthz`, and leader election between replicas.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use clap::Parser;
use kube::Client;
use pgpilot_operator::{controller, leader, metrics::Metrics};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::sync::watch;
use tracing::info;
use warp::Filter;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Kubernetes operator for PostgresCluster (pgpilot.io/v1alpha1)"
)]
struct Args {
    /// Image holding /usr/local/bin/pgpilot-sidecar, copied into every PostgreSQL pod.
    #[arg(long, env = "PGPILOT_SIDECAR_IMAGE")]
    sidecar_image: String,
    /// Watch only this namespace; all namespaces when empty.
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
    watch_namespace: String,
    /// Address of /metrics and /healthz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect one active replica through a Lease (needed when running more than one).
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Namespace of the election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE",
        default_value = "pgpilot-operator"
    )]
    lease_name: String,
    /// This replica's identity in the election.
    #[arg(long, env = "POD_NAME", default_value = "pgpilot-operator")]
    identity: String,
    /// `json` or `text` logs.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    log_format: String,
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init()
    } else {
        // Colours only on a terminal, as the sidecar does: container logs stay plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        builder.with_ansi(ansi).init()
    }
}

async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> anyhow::Result<()> {
    let healthz = warp::path!("healthz").map(|| String::from("ok"));
    let metrics = warp::path!("metrics").map(move || {
        let mut text = String::new();
        match encode(&mut text, &registry) {
            Ok(()) => warp::reply::with_header(
                text,
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            Err(e) => warp::reply::with_header(
                format!("encoding metrics: {e}"),
                "content-type",
                "text/plain",
            ),
        }
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    info!(%addr, "serving /metrics and /healthz");
    warp::serve(healthz.or(metrics))
        .incoming(listener)
        .run()
        .await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let server = tokio::spawn(serve(args.metrics_addr, Arc::new(registry)));
    let namespace = Some(args.watch_namespace.clone()).filter(|n| !n.is_empty());
    info!(namespace = namespace.as_deref().unwrap_or("*"), sidecar_image = %args.sidecar_image, leader_elect = args.leader_elect, "starting");

    let run = controller::run(
        client.clone(),
        namespace,
        args.sidecar_image.clone(),
        metrics,
    );
    if !args.leader_elect {
        tokio::select! {
            () = run => {}
            r = server => r.context("metrics server task")??,
        }
        return Ok(());
    }
    let (tx, mut rx) = watch::channel(false);
    let elector = leader::run(
        client.clone(),
        &args.lease_namespace,
        &args.lease_name,
        &args.identity,
        tx,
    );
    tokio::pin!(elector);
    // Wait for leadership; losing it, or the election task ending, ends the process.
    tokio::select! {
        e = &mut elector => return Err(e.into()),
        r = rx.wait_for(|leader| *leader) => { r.context("election channel closed")?; }
    }
    info!(identity = %args.identity, "leading: reconciling");
    tokio::select! {
        () = run => {
            // Shut down by a signal: hand over at once.
            leader::release(client, &args.lease_namespace, &args.lease_name, &args.identity).await;
            Ok(())
        }
        e = elector => Err(e.into()),
        r = rx.wait_for(|leader| !*leader) => { r.context("election channel closed")?; anyhow::bail!("lost the operator lease") }
        r = server => { r.context("metrics server task")??; Ok(()) }
    }
}
