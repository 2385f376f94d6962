//! What this machine shows of the cluster's pods: the network namespace behind a pod IP (CNI's
//! `/run/netns`), and the processes in a pod's cgroup with their memory and CPU — the one RSS reader (the
//! HA scenarios print the sidecars' RSS, the benchmark measures it); and the connections a node's
//! apiserver proxy holds to pods that are gone ([`reset_dead_proxy_links`]). Every node's kubelet puts its pods
//! under `/sys/fs/cgroup/<hierarchy>/pgpilot/<node>/kubepods` (`e2e/lib/daemons.sh`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::cluster::MemberPod;

/// Where CNI puts the pods' network namespaces on this machine.
pub const NETNS_DIR: &str = "/run/netns";

/// USER_HZ on Linux: the unit of the CPU times in `/proc/<pid>/stat`.
const TICKS_PER_SECOND: f64 = 100.0;

/// The network namespace (under [`NETNS_DIR`]) whose `eth0` holds `ip`, if any.
pub async fn netns_of(ip: &str) -> Result<Option<PathBuf>, std::io::Error> {
    let mut entries = tokio::fs::read_dir(NETNS_DIR).await?;
    let needle = format!(" {ip}/");
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let out = tokio::process::Command::new("ip")
            .args(["-n", &name, "-4", "-o", "addr", "show", "dev", "eth0"])
            .output()
            .await?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&needle) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// The port of each node's Toxiproxy proxy in front of the apiserver, on the node's bridge address
/// `10.244.<i>.1` (`e2e/lib/common.sh`: `APISERVER_PROXY_PORT`).
const APISERVER_PROXY_PORT: u16 = 6444;

/// Resets the connections the apiserver proxy of `node` (`node-<i>`) holds to addresses no pod has any
/// more; returns those addresses. A pod deleted while cut off (a cut link, a partition) leaves its
/// connections there established, with replies the proxy cannot deliver, for as long as TCP retransmits
/// (about 15 minutes); and Toxiproxy changes a toxic only once every link of the proxy took the change,
/// so until then `e2e/fault slow-apiserver` hangs, and with it every new connection through that proxy.
/// Worse, a link that then fails while a change waits for it deadlocks that proxy for good (Toxiproxy
/// 2.5.0: the failing link's clean-up needs the lock the change holds). The hook should reset them itself
/// (as `network-up.sh` resets connections that bypass the proxy); until it does, the slow-apiserver
/// faults call this first.
pub async fn reset_dead_proxy_links(node: &str) -> Result<Vec<String>, std::io::Error> {
    let Some(local) = proxy_address(node) else {
        return Ok(Vec::new());
    };
    let mut dead = Vec::new();
    for (peer, _) in proxy_links(&local).await? {
        if netns_of(&peer).await?.is_none() && !dead.contains(&peer) {
            dead.push(peer);
        }
    }
    for peer in &dead {
        let filter = format!("( src {local} and dst {peer} )");
        tokio::process::Command::new("ss")
            .args(["-4", "-t", "-K", "state", "established", &filter])
            .output()
            .await?;
    }
    Ok(dead)
}

/// The bytes the apiserver proxy of `node` has not yet got acknowledged per pod it writes to, for the
/// connections with any (a pod frozen or cut off, or reading slowly). Toxiproxy's toxic change waits
/// until each such link took the next chunk.
pub async fn proxy_backlog(node: &str) -> Result<Vec<(String, u64)>, std::io::Error> {
    let Some(local) = proxy_address(node) else {
        return Ok(Vec::new());
    };
    Ok(proxy_links(&local)
        .await?
        .into_iter()
        .filter(|(_, send_q)| *send_q > 0)
        .collect())
}

/// `10.244.<i>.1:<proxy port>` of `node-<i>`.
fn proxy_address(node: &str) -> Option<String> {
    let index = node.strip_prefix("node-")?;
    Some(format!("10.244.{index}.1:{APISERVER_PROXY_PORT}"))
}

/// The established connections whose local end is `local`: each peer address with its send queue.
async fn proxy_links(local: &str) -> Result<Vec<(String, u64)>, std::io::Error> {
    let out = tokio::process::Command::new("ss")
        .args(["-4", "-t", "-n", "-H", "state", "established"])
        .output()
        .await?;
    Ok(proxy_peers(&String::from_utf8_lossy(&out.stdout), local))
}

/// The peer addresses and send queues of the connections whose local end is `local` in `ss -t -n -H
/// state established` (columns: Recv-Q, Send-Q, local, peer).
fn proxy_peers(ss: &str, local: &str) -> Vec<(String, u64)> {
    ss.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.get(2) != Some(&local) {
                return None;
            }
            let (ip, _) = cols.get(3)?.rsplit_once(':')?;
            Some((ip.to_owned(), cols.get(1)?.parse().ok()?))
        })
        .collect()
}

/// One member's agent as the kernel shows it: the sum over the processes named `comm` in its pod (Patroni
/// runs as two: a PID-1 reaper and the agent).
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    pub member: String,
    pub rss_bytes: u64,
    /// User and system CPU time since the processes started.
    pub cpu_secs: f64,
}

/// Each member's agent named `comm` (as `/proc/<pid>/comm` shows it, at most 15 characters), found
/// through its pod's cgroup; members without one are left out.
pub fn agents(pods: &[MemberPod], comm: &str) -> Vec<Agent> {
    let mut per_member: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for p in pods {
        let Some(node) = &p.node else { continue };
        let root = PathBuf::from(format!("/sys/fs/cgroup/freezer/pgpilot/{node}/kubepods"));
        for pid in cgroup_pids(&root, &format!("pod{}", p.uid)) {
            let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
                continue;
            };
            if c.trim() != comm {
                continue;
            }
            let e = per_member.entry(p.name.clone()).or_default();
            e.0 += rss_bytes(pid).unwrap_or(0);
            e.1 += cpu_secs(pid).unwrap_or(0.0);
        }
    }
    per_member
        .into_iter()
        .map(|(member, (rss_bytes, cpu_secs))| Agent {
            member,
            rss_bytes,
            cpu_secs,
        })
        .collect()
}

/// `VmRSS` of a process, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss_kib(&status).map(|kib| kib * 1024)
}

fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User + system CPU seconds of a process (`utime` and `stime` of `/proc/<pid>/stat`).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_secs(&stat)
}

fn parse_cpu_secs(stat: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses: the fields start after the last `)`.
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / TICKS_PER_SECOND)
}

/// Every pid in the cgroup directory named `pod_dir` below `root` (two levels down: qos/pod), containers
/// included.
fn cgroup_pids(root: &Path, pod_dir: &str) -> Vec<u32> {
    let mut dirs = vec![root.join(pod_dir)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(pod_dir)));
    }
    let mut pids = Vec::new();
    for pod in dirs.into_iter().filter(|d| d.is_dir()) {
        let mut stack = vec![pod];
        while let Some(d) = stack.pop() {
            if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_and_cpu_are_read_from_proc() {
        assert_eq!(
            parse_vm_rss_kib("Name:\tx\nVmRSS:\t    9876 kB\nVmData: 1 kB\n"),
            Some(9876)
        );
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
        // pid (comm) state ppid … utime(14th) stime(15th): 250 + 50 ticks.
        let stat = "42 (pgpilot (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_cpu_secs(stat), Some(3.0));
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }

    #[test]
    fn the_proxy_peers_are_the_remote_ends_of_its_connections() {
        let ss = "0      104208    10.244.0.1:6444  10.244.0.95:48092\n\
                  0      0         10.244.1.1:6444  10.244.1.202:48540\n\
                  0      0         10.244.0.1:6444  10.244.0.129:51352\n\
                  0      0         10.244.0.1:41000 10.244.0.1:6443\n";
        assert_eq!(
            proxy_peers(ss, "10.244.0.1:6444"),
            vec![
                ("10.244.0.95".to_owned(), 104_208),
                ("10.244.0.129".to_owned(), 0)
            ]
        );
        assert_eq!(proxy_address("node-2").as_deref(), Some("10.244.2.1:6444"));
        assert_eq!(proxy_address("elsewhere"), None);
    }
}
