//! The one runner of the fault hooks: everything the Rust side does to the cluster through `e2e/fault
//! <verb> <target> [<argument>]` (kill a container, freeze or cut a pod, partition or stop a node, stop or
//! slow the apiserver, recreate the Lease, force-delete a pod — the script's header lists the verbs), and
//! the sweep that undoes whatever a failed scenario may have left.

use std::path::PathBuf;

use crate::clock::{Micros, now_us};

/// The repository's `e2e/fault` hook.
pub fn hook() -> PathBuf {
    crate::repo_dir().join("e2e/fault")
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("running the fault hook `{0}`")]
    Spawn(String, #[source] std::io::Error),
    #[error("the fault hook `{command}` failed: {output}")]
    Failed { command: String, output: String },
}

/// What a hook did.
#[derive(Clone, Debug)]
pub struct Acted {
    /// `e2e/fault <verb> <target>`.
    pub command: String,
    /// The instant the hook stamped on what it did (the time before includes its `kubectl` look-ups), else
    /// when it was started.
    pub at_us: Micros,
    /// What it printed.
    pub output: String,
}

/// Runs `e2e/fault <verb> <target>` (`target` empty for the apiserver verbs) against this checkout's
/// cluster.
pub async fn run(verb: &str, target: &str) -> Result<Acted, FaultError> {
    run_with(verb, &[target]).await
}

/// Runs `e2e/fault <verb> <args…>` (empty arguments are left out): the verbs that take more than a
/// target, such as `slow-apiserver <node> <ms>`.
pub async fn run_with(verb: &str, args: &[&str]) -> Result<Acted, FaultError> {
    let args: Vec<&str> = std::iter::once(verb)
        .chain(args.iter().copied())
        .filter(|a| !a.is_empty())
        .collect();
    let command = format!("e2e/fault {}", args.join(" "));
    let started = now_us();
    let out = tokio::process::Command::new(hook())
        .args(args)
        .env("KUBECONFIG", crate::kubeconfig_path())
        .output()
        .await
        .map_err(|e| FaultError::Spawn(command.clone(), e))?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    if !out.status.success() {
        return Err(FaultError::Failed { command, output });
    }
    Ok(Acted {
        at_us: acted_at(&output).unwrap_or(started),
        command,
        output,
    })
}

/// The timestamp a fault hook printed with what it did (`2026-11-26T04:05:32.452Z fault: killed …`).
pub fn acted_at(output: &str) -> Option<Micros> {
    output
        .lines()
        .filter(|l| l.contains(" fault: "))
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .parse::<k8s_openapi::jiff::Timestamp>()
                .ok()
        })
        .map(k8s_openapi::jiff::Timestamp::as_microsecond)
        .next_back()
}

/// Undoes whatever faults a scenario in `namespace` may have left (after a failure): heals the nodes (a
/// partition and a slowed apiserver) and starts them, starts the apiserver, thaws and heals the pods `<cluster>-0` … `<cluster>-(pods-1)`. Each step
/// is a no-op when there is nothing to undo; failures are ignored (this is the last resort).
pub async fn undo_all(namespace: &str, cluster: &str, pods: usize) {
    for node in ["node-0", "node-1", "node-2"] {
        let _ = run("heal", node).await;
        let frozen = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/freezer/pgpilot/{node}/freezer.state"
        ))
        .is_ok_and(|s| s.trim() == "FROZEN");
        if frozen {
            let _ = run("start", node).await;
        }
    }
    if crate::kubectl(&["get", "--raw", "/readyz"]).is_err() {
        let _ = run("apiserver-start", "").await;
    }
    for i in 0..pods {
        let pod = format!("{namespace}/{cluster}-{i}");
        let _ = run("thaw", &pod).await;
        let _ = run("heal", &pod).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_stamp_is_the_fault_instant() {
        let out = "04:05:31.100 [fault] looking up\n2026-11-26T04:05:32.452Z fault: killed container postgres of ns/pg-2";
        assert_eq!(acted_at(out), Some(1_795_665_932_452_000));
        assert_eq!(acted_at("no stamp here"), None);
    }
}
