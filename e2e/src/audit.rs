//! The one reader of the apiserver's audit log: the Kubernetes API writes made in a time window (L9's
//! steady-state writes in the HA scenarios, writes per minute in the benchmark).
//!
//! The log is the running kube-apiserver's `--audit-log-path` (whichever checkout last started the control
//! plane decides where it is), else this checkout's `target/e2e/logs/audit.log`. The apiserver rotates it
//! at 200 MB into `audit-<time>.log` beside it; a window is read from the log and every backup still
//! written to at or after the window's start. It has one Metadata-level event per write (create, update,
//! patch, delete) and nothing for reads (`e2e/templates`' audit policy).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
};

use crate::{
    clock::{Micros, micros_of},
    repo_dir,
};

/// How recently the log must have been written for it to be the running apiserver's: it writes its own
/// Lease every 10 s.
const LIVE_US: Micros = 30_000_000;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("reading {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} was last written before {1} µs: not the running apiserver's log")]
    Stale(PathBuf, Micros),
}

/// One completed write, from the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditWrite {
    /// When the apiserver received the request.
    pub at_us: Micros,
    /// `create`, `update`, `patch`, `delete` or `deletecollection`.
    pub verb: String,
    pub user: String,
    /// The pod the ServiceAccount token was bound to, if it was.
    pub pod: String,
    pub resource: String,
    pub name: String,
}

/// The audit log of the running kube-apiserver, else this checkout's.
pub fn log_path() -> PathBuf {
    let running = std::fs::read_dir("/proc").ok().and_then(|procs| {
        procs.flatten().find_map(|p| {
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.first()?.ends_with("/kube-apiserver") {
                return None;
            }
            let at = args.iter().position(|a| a == "--audit-log-path")?;
            args.get(at + 1).map(PathBuf::from)
        })
    });
    running.unwrap_or_else(|| repo_dir().join("target/e2e/logs/audit.log"))
}

/// The completed writes received in `[from, to)` by users whose name starts with `user_prefix` (a
/// ServiceAccount, `system:serviceaccount:<ns>:` for a whole namespace), in the log's order. The last
/// requests of a window are logged when they complete: read a moment after `to`.
pub fn writes_between(
    from: Micros,
    to: Micros,
    user_prefix: &str,
) -> Result<Vec<AuditWrite>, AuditError> {
    let path = log_path();
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|e| AuditError::Read(path.clone(), e))?;
    if micros_of(modified) < to - LIVE_US {
        return Err(AuditError::Stale(path, to - LIVE_US));
    }
    let mut out = Vec::new();
    for file in files(&path, from) {
        let f = std::fs::File::open(&file).map_err(|e| AuditError::Read(file.clone(), e))?;
        for line in BufReader::new(f).lines() {
            let line = line.map_err(|e| AuditError::Read(file.clone(), e))?;
            // Most lines are other users': skip them before parsing.
            if !line.contains(user_prefix) {
                continue;
            }
            if let Some(w) = completed_write(&line)
                && w.user.starts_with(user_prefix)
                && (from..to).contains(&w.at_us)
            {
                out.push(w);
            }
        }
    }
    Ok(out)
}

/// The log and the backups rotated out of it that were still written to at or after `from`.
fn files(path: &Path, from: Micros) -> Vec<PathBuf> {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else {
        return vec![path.to_owned()];
    };
    let prefix = format!("{stem}-");
    let recent = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| micros_of(t) >= from)
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".log"))
        })
        .filter(|p| recent(p))
        .collect();
    files.sort();
    files.push(path.to_owned());
    files
}

/// An audit event that is a completed write; `None` for anything else.
fn completed_write(line: &str) -> Option<AuditWrite> {
    let e: serde_json::Value = serde_json::from_str(line).ok()?;
    let verb = e["verb"].as_str().unwrap_or_default();
    let write = matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    );
    if e["stage"] != "ResponseComplete" || !write {
        return None;
    }
    let at = e["requestReceivedTimestamp"]
        .as_str()?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    Some(AuditWrite {
        at_us: at.as_microsecond(),
        verb: verb.to_owned(),
        user: text(&e["user"]["username"]),
        pod: text(&e["user"]["extra"]["authentication.kubernetes.io/pod-name"][0]),
        resource: text(&e["objectRef"]["resource"]),
        name: text(&e["objectRef"]["name"]),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(stage: &str, verb: &str) -> String {
        json!({
            "stage": stage,
            "verb": verb,
            "requestReceivedTimestamp": "2026-11-26T09:00:00.000001Z",
            "user": {
                "username": "system:serviceaccount:ns:pg-sidecar",
                "extra": {"authentication.kubernetes.io/pod-name": ["pg-1"]},
            },
            "objectRef": {"resource": "leases", "name": "pg-leader"},
        })
        .to_string()
    }

    #[test]
    fn only_completed_writes_are_counted() {
        let w = completed_write(&event("ResponseComplete", "update")).expect("a write");
        assert_eq!(
            w,
            AuditWrite {
                at_us: "2026-11-26T09:00:00.000001Z"
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .unwrap()
                    .as_microsecond(),
                verb: "update".into(),
                user: "system:serviceaccount:ns:pg-sidecar".into(),
                pod: "pg-1".into(),
                resource: "leases".into(),
                name: "pg-leader".into(),
            }
        );
        assert_eq!(completed_write(&event("ResponseStarted", "patch")), None);
        assert_eq!(completed_write(&event("ResponseComplete", "get")), None);
        assert_eq!(completed_write("not json"), None);
    }

    #[test]
    fn rotated_audit_logs_written_in_the_window_are_read() {
        let dir = std::env::temp_dir().join(format!("pgpilot-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("audit.log");
        for name in [
            "audit.log",
            "audit-2026-11-26T09-00-00.000.log",
            "other.log",
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        assert_eq!(
            files(&log, 0),
            vec![dir.join("audit-2026-11-26T09-00-00.000.log"), log.clone()]
        );
        // A backup last written before the window holds nothing in it.
        assert_eq!(files(&log, i64::MAX), vec![log]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
