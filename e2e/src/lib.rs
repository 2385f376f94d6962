//! Helpers for the end-to-end tests on the local cluster (`make cluster`, `make images`).
//!
//! Tests talk to the real apiserver through kube-rs and, where a user would, through the real `kubectl` and
//! `helm` from `target/e2e/bin`. Each test owns a [`TestNamespace`]: created with a unique name, deleted
//! with everything in it (and the Helm release installed into it) when the test ends, passed or failed.
//!
//! - [`cluster`]: the one reader of a cluster from Kubernetes (pods, Secrets, Services, the Lease);
//!   [`rest`]: the members' REST API; [`host`]: what this machine shows of the pods (network namespaces,
//!   processes, RSS); [`audit`]: the apiserver's audit log; [`fault`]: the fault hooks.
//! - [`deploy`]: the `PostgresCluster` under test, through the chart's operator.
//! - [`checker`]: the fault-matrix checker (writer, probes, verdict, harness); [`scenarios`]: the faults
//!   the matrix and the soak inject, one body each; [`bench`]: `make bench`.

pub mod audit;
pub mod bench;
pub mod checker;
pub mod clock;
pub mod cluster;
pub mod deploy;
pub mod fault;
pub mod host;
pub mod rest;
pub mod scenarios;

use std::{
    future::Future,
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// The repository root. `cargo test` and `e2e/bench.sh` name the crate's directory at run time; the
/// compile-time value is only the fallback, because a library compiled by another clone sharing
/// `CARGO_TARGET_DIR` carries that clone's path.
pub fn repo_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}

/// `$KUBECONFIG`, else the local cluster's `target/e2e/kubeconfig`.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("target/e2e/kubeconfig"))
}

/// A client for the local cluster.
pub async fn client() -> Result<Client> {
    let path = kubeconfig_path();
    let kubeconfig =
        Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn tool(name: &str) -> PathBuf {
    let local = repo_dir().join("target/e2e/bin").join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

/// What a command printed, and whether it succeeded.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The standard output of a command that must succeed.
    pub fn ok(self) -> Result<String> {
        if self.success {
            Ok(self.stdout)
        } else {
            bail!("command failed: {}{}", self.stderr, self.stdout)
        }
    }
}

/// Runs a tool of `target/e2e/bin` against the local cluster, feeding it `stdin`.
pub fn run(tool_name: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut child = Command::new(tool(tool_name))
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {tool_name}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

pub fn kubectl(args: &[&str]) -> Result<String> {
    run("kubectl", args, None)?.ok()
}

/// Polls `check` every `every` until it returns `Some`, or fails after `timeout` with `what` and the last
/// error.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("never satisfied");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// The PostgresCluster CRD as committed, applied server-side (so a test sees the current schema even
/// when an older one is installed), then waited for until Established.
pub fn install_crd() -> Result<()> {
    let crd = repo_dir().join("charts/pgpilot/crds/postgresclusters.pgpilot.io.yaml");
    let crd = crd.to_string_lossy();
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=pgpilot-e2e",
        "-f",
        &crd,
    ])?;
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/postgresclusters.pgpilot.io",
        "--timeout=60s",
    ])?;
    Ok(())
}

/// The label selector of the operator's pods (the chart's component label).
pub const OPERATOR_PODS: &str = "app.kubernetes.io/component=operator";

/// Fails when a running pgpilot operator outside the tests manages every namespace: it would reconcile
/// each test's cluster beside the test's own operator, and two operators race (one asks for the spec's
/// switchover while the other sees the primary change unasked and records a failover — seen in CI, where
/// an earlier `make demo` had left such an operator on the machine's cluster).
fn no_operator_for_every_namespace() -> Result<()> {
    let listed = kubectl(&[
        "get",
        "deployments",
        "--all-namespaces",
        "-l",
        "app.kubernetes.io/name=pgpilot,app.kubernetes.io/component=operator",
        "-o",
        r#"jsonpath={range .items[?(@.spec.replicas>0)]}{.metadata.namespace}/{.metadata.name} {.spec.template.spec.containers[0].env[?(@.name=="WATCH_NAMESPACE")].value}{"\n"}{end}"#,
    ])?;
    let everywhere: Vec<&str> = listed
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let deployment = parts.next()?;
            parts.next().is_none().then_some(deployment)
        })
        .collect();
    ensure!(
        everywhere.is_empty(),
        "the pgpilot operator {} manages every namespace and would reconcile the tests' clusters too; \
         run `make demo` again (its operator watches pgpilot-demo only) or uninstall that release",
        everywhere.join(", ")
    );
    Ok(())
}

/// A namespace of one test; deleted with its Helm release when dropped.
pub struct TestNamespace {
    pub name: String,
    release: Option<String>,
}

impl TestNamespace {
    /// Creates `<prefix>-<unique suffix>`.
    pub fn create(prefix: &str) -> Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let name = format!(
            "{prefix}-{:x}{:x}",
            std::process::id() % 0xfff,
            nanos % 0xffff
        );
        kubectl(&["create", "namespace", &name])?;
        Ok(Self {
            name,
            release: None,
        })
    }

    /// `helm install` of the chart into this namespace, watching only this namespace, with the local
    /// images (`e2e/demo-values.yaml`); waits until the operator Deployment is available.
    /// `sets` are extra `--set key=value` pairs. Returns what helm printed (the NOTES).
    pub fn install_operator(&mut self, sets: &[&str]) -> Result<String> {
        no_operator_for_every_namespace()?;
        install_crd()?;
        let release = format!("pgpilot-{}", self.name);
        let chart = repo_dir().join("charts/pgpilot");
        let values = repo_dir().join("e2e/demo-values.yaml");
        self.release = Some(release.clone());
        let (chart, values) = (chart.to_string_lossy(), values.to_string_lossy());
        let watch = format!("watchNamespace={}", self.name);
        let mut args = vec![
            "install",
            &release,
            &chart,
            "--namespace",
            &self.name,
            "--values",
            &values,
            "--set",
            &watch,
            "--set",
            "logFormat=text",
            "--wait",
            "--timeout",
            "180s",
        ];
        for set in sets {
            args.extend(["--set", set]);
        }
        run("helm", &args, None)?.ok().context("helm install")
    }

    /// The Helm release's full name (the operator Deployment, its election Lease).
    pub fn release(&self) -> Option<&str> {
        self.release.as_deref()
    }

    /// `kubectl -n <namespace> ...`
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_output(args, None)?.ok()
    }

    /// `kubectl -n <namespace> ...` with `stdin`, success or not.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("kubectl", &all, stdin)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if let Some(release) = &self.release {
            let _ = run(
                "helm",
                &[
                    "uninstall",
                    release,
                    "--namespace",
                    &self.name,
                    "--wait",
                    "--timeout",
                    "60s",
                ],
                None,
            );
        }
        let _ = run(
            "kubectl",
            &["delete", "namespace", &self.name, "--wait=false"],
            None,
        );
    }
}
