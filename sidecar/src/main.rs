//! `pgpilot-sidecar run`: the per-pod agent. Entry point of the PostgreSQL container (contract.rs).
//!
//! Start-up: the REST API (so probes answer at once), the cluster's configuration from its ConfigMap,
//! the timing rule (L6, refused at start), the credentials, then the HA loop. SIGTERM stops the HA loop,
//! which stops PostgreSQL (fast) and releases the Lease if it holds it. If the HA loop or the API server
//! ends on its own, the process exits non-zero so the kubelet restarts the container.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use pgpilot_crds::contract::{
    ENV_CLUSTER, ENV_POD_NAME, ENV_POD_NAMESPACE, REST_PORT, SECRETS_DIR, lease_name,
};
use pgpilot_sidecar::{
    config::watch_config,
    election::{
        Timings,
        lease::{Elector, LeaseClient},
    },
    ha::{HaLoop, Parts},
    logsink,
    metrics::Metrics,
    peers::Peers,
    postgres::{Credentials, PgSettings, Postgres},
    rest,
    state::{Handles, Heartbeat, MemberState},
};
use tokio::sync::Notify;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "pgpilot-sidecar",
    version,
    about = "pgpilot's per-pod HA agent for PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: elect through the Lease, supervise PostgreSQL, serve the REST API.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The PostgresCluster's name.
    #[arg(long, env = ENV_CLUSTER)]
    cluster: String,
    /// This member's name (the pod name).
    #[arg(long, env = ENV_POD_NAME)]
    member: String,
    #[arg(long, env = ENV_POD_NAMESPACE)]
    namespace: String,
    /// Address of the REST API.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], REST_PORT)))]
    listen: SocketAddr,
    /// Where the Secrets are mounted (`<dir>/<kind>/{username,password}`).
    #[arg(long, default_value = SECRETS_DIR)]
    secrets_dir: PathBuf,
    /// `text` or `json`.
    #[arg(long, env = "PGPILOT_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args).await,
    }
}

/// `RUST_LOG` in the `target=level,...` form (default `info`). A plain per-target filter rather than
/// `EnvFilter`: it keeps the regex engine out of the binary, which matters for the sidecar's memory.
///
/// Lines go through [`logsink`]'s writer, which never blocks; the guard it returns flushes at exit.
fn init_tracing(format: &str) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::{filter::Targets, fmt, prelude::*};
    let (writer, guard) = logsink::install(std::io::stdout());
    let targets: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(targets);
    if format == "json" {
        registry
            .with(fmt::layer().json().with_writer(writer))
            .init();
    } else {
        // Colours only on a terminal: container logs stay plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        registry
            .with(fmt::layer().with_ansi(ansi).with_writer(writer))
            .init();
    }
    guard
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let _log_guard = init_tracing(&args.log_format);
    info!(cluster = %args.cluster, member = %args.member, namespace = %args.namespace, "pgpilot-sidecar starting");

    let (state_tx, state_rx) = watch::channel(MemberState::new(&args.cluster, &args.member));
    let (commands_tx, commands_rx) = mpsc::channel(8);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let heartbeat = Heartbeat::default();
    let ctx = Arc::new(rest::Context {
        handles: Handles {
            state: state_rx,
            commands: commands_tx,
            heartbeat: heartbeat.clone(),
        },
        metrics: metrics.clone(),
        secrets_dir: args.secrets_dir.clone(),
        http: reqwest::Client::new(),
    });
    let mut rest_shutdown = shutdown_rx.clone();
    let mut api = tokio::spawn(rest::serve(ctx, args.listen, async move {
        let _ = rest_shutdown.changed().await;
    }));

    let client = kube::Client::try_default()
        .await
        .context("Kubernetes client")?;
    let config = watch_config(client.clone(), &args.namespace, &args.cluster).await?;
    let cfg = config.borrow().clone();
    // L6: refuse timings under which a holder could still serve when another may take over.
    let timings = Timings::new(&cfg.ha)?;
    let creds =
        Credentials::load(&args.secrets_dir, &cfg.bootstrap.database).context("credentials")?;
    let mut pg = Postgres::new(PgSettings::for_pod(&args.cluster, &args.member), creds);
    pg.set_heartbeat(heartbeat.clone());
    let request_timeout = timings.retry_period.min(Duration::from_secs(2));
    // The HA loop's own requests (Lease, pod labels) go through a client whose connections time out
    // like the requests: a connection that died with a network cut is dropped, not waited on for
    // minutes (watches keep the default client and their own idle timeouts).
    let mut bounded = kube::Config::infer().await.context("Kubernetes client")?;
    bounded.connect_timeout = Some(request_timeout);
    bounded.read_timeout = Some(request_timeout);
    bounded.write_timeout = Some(request_timeout);
    bounded.reset_reader_on_write = true;
    let writes = kube::Client::try_from(bounded).context("Kubernetes client")?;
    let elector = Elector::new(
        LeaseClient::new(
            writes.clone(),
            &args.namespace,
            &lease_name(&args.cluster),
            &args.member,
            request_timeout,
        ),
        timings,
    );
    let peer_timeout = (timings.retry_period / 2).min(Duration::from_secs(1));
    let peers = Peers::start(
        client.clone(),
        &args.namespace,
        &args.cluster,
        &args.member,
        peer_timeout,
    );
    // A follower's loop also wakes on every Lease change: a release or a handover is acted on at once.
    tokio::spawn(wake_on_lease_changes(
        Api::<Lease>::namespaced(client.clone(), &args.namespace),
        lease_name(&args.cluster),
        peers.changed.clone(),
    ));
    let ha = HaLoop::new(Parts {
        me: args.member.clone(),
        timings,
        config,
        elector,
        pg,
        peers,
        pods: Api::<Pod>::namespaced(writes, &args.namespace),
        request_timeout,
        state: state_tx,
        commands: commands_rx,
        metrics,
        heartbeat,
    });
    let mut ha = tokio::spawn(ha.run(shutdown_rx));

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
        result = &mut ha => {
            error!(?result, "the HA loop ended: exiting");
            std::process::exit(1);
        }
        result = &mut api => {
            error!(?result, "the REST API ended: exiting");
            std::process::exit(1);
        }
    }
    let _ = shutdown_tx.send(true);
    if let Err(e) = ha.await {
        error!(error = %e, "the HA loop failed during shutdown");
    }
    info!("stopped");
    Ok(())
}

/// Notifies `wake` on every change of the Lease (watched by name, as the sidecars' Role allows).
async fn wake_on_lease_changes(api: Api<Lease>, name: String, wake: Arc<Notify>) {
    let mut stream = std::pin::pin!(watcher::watch_object(api, &name).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => wake.notify_one(),
            Err(error) => warn!(%error, "Lease watch error (retrying)"),
        }
    }
}
