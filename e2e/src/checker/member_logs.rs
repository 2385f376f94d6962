//! The members' own words for a failed scenario's timeline: each sidecar's warnings, decisions and
//! synchronous-replication steps, and PostgreSQL's replication messages, taken from the pod logs at the
//! end of a round. A failure in CI then shows why each member did what it did, in the part of the report
//! that is printed first. [`parse_line`] is pure.

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, LogParams},
};
use pgpilot_crds::contract;

use super::verdict::Event;
use crate::clock::Micros;

/// At most this many lines per member: the first [`HEAD_LINES`] of the round and the last ones (how it
/// began and how it ended), each at most [`LINE_CHARS`] long.
const LINES_PER_MEMBER: usize = 40;
const HEAD_LINES: usize = 15;
const LINE_CHARS: usize = 220;

/// PostgreSQL messages worth a line: replication, synchronous standbys, promotion, shutdowns, failures.
const PG_WORDS: [&str; 8] = [
    "walsender",
    "synchronous",
    "replication",
    "promot",
    "shutting down",
    "FATAL",
    "PANIC",
    "timeline",
];

/// The log lines of `members` (in `namespace`) written since `since` as timeline events; a member whose
/// log cannot be read is left out (the report says what it can).
pub async fn events(
    client: &Client,
    namespace: &str,
    members: &[String],
    since: Micros,
) -> Vec<Event> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    for member in members {
        let Some(text) = log_since(&pods, member, Some(contract::POSTGRES_CONTAINER), since).await
        else {
            continue;
        };
        let lines = squeeze(text.lines().filter_map(|l| parse_line(member, l)));
        out.extend(ends(lines, HEAD_LINES, LINES_PER_MEMBER));
    }
    // The operator's own: a spec change (an unpause) reaches the members only through it.
    let operators = pods
        .list(&ListParams::default().labels(crate::OPERATOR_PODS))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for pod in operators {
        let Some(text) = log_since(&pods, &pod.name_any(), None, since).await else {
            continue;
        };
        let lines = squeeze(text.lines().filter_map(operator_line));
        out.extend(ends(lines, HEAD_LINES, LINES_PER_MEMBER));
    }
    out
}

/// What `pod`'s `container` (its only one: `None`) logged since `since`; `None` when it cannot be
/// read within 5 s.
async fn log_since(
    pods: &Api<Pod>,
    pod: &str,
    container: Option<&str>,
    since: Micros,
) -> Option<String> {
    let params = LogParams {
        container: container.map(str::to_owned),
        since_time: Timestamp::from_microsecond(since).ok(),
        ..LogParams::default()
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), pods.logs(pod, &params))
        .await
        .ok()?
        .ok()
}

/// One log line as an event, when it is one worth showing: a sidecar line (`<RFC 3339> <LEVEL> <spans>:
/// <target>: <message>`) at WARN or ERROR, or naming a decision, synchronous replication or fencing; a
/// PostgreSQL line (`<date> <time> GMT [pid] LEVEL: message`) about replication.
pub fn parse_line(member: &str, line: &str) -> Option<Event> {
    let (at_us, rest) = sidecar_line(line).or_else(|| postgres_line(line))?;
    Some(Event {
        at_us,
        what: cut(format!("{member} log: {rest}")),
    })
}

/// `what` cut to [`LINE_CHARS`] on a character boundary.
fn cut(mut what: String) -> String {
    if what.len() > LINE_CHARS {
        let mut at = LINE_CHARS;
        while !what.is_char_boundary(at) {
            at -= 1;
        }
        what.truncate(at);
        what.push('…');
    }
    what
}

/// Runs of the same line (a member retrying the same failing call each loop) as their first line with
/// the count.
pub fn squeeze(events: impl IntoIterator<Item = Event>) -> Vec<Event> {
    let mut out: Vec<(Event, usize)> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some((last, n)) if last.what == e.what => *n += 1,
            _ => out.push((e, 1)),
        }
    }
    out.into_iter()
        .map(|(mut e, n)| {
            if n > 1 {
                e.what.push_str(&format!(" (×{n})"));
            }
            e
        })
        .collect()
}

/// At most `max` of `lines`: the first `head` and the last `max - head`, with a line saying how many
/// were left out between them.
pub fn ends(mut lines: Vec<Event>, head: usize, max: usize) -> Vec<Event> {
    if lines.len() <= max {
        return lines;
    }
    let left_out = lines.len() - max;
    let tail = lines.split_off(head + left_out);
    let gap_at = lines[head].at_us;
    let member = lines[head]
        .what
        .split(" log: ")
        .next()
        .unwrap_or("")
        .to_owned();
    lines.truncate(head);
    lines.push(Event {
        at_us: gap_at,
        what: format!("{member} log: … {left_out} line(s) left out"),
    });
    lines.extend(tail);
    lines
}

/// A `tracing` line of `krate` itself: `<RFC 3339> <LEVEL> <spans>: <krate>::<target>: <message>` as
/// its time, level, target (without the crate) and message. Its libraries' lines are left out (their
/// errors repeat what it says itself).
fn tracing_line<'a>(line: &'a str, krate: &str) -> Option<(Micros, &'a str, &'a str, &'a str)> {
    let (stamp, rest) = line.split_once(' ')?;
    let at: Timestamp = stamp.parse().ok()?;
    let (level, rest) = rest.trim_start().split_once(' ')?;
    let (target, message) = rest
        .split_once(krate)
        .and_then(|(_, m)| m.split_once(": "))
        .map(|(t, m)| (t.trim_start_matches("::"), m))?;
    Some((micros(at), level, target, message))
}

fn sidecar_line(line: &str) -> Option<(Micros, String)> {
    // `iteration{member=pg-1}: pgpilot_sidecar::ha::sync: message` → `ha::sync`, `message`.
    let (at, level, target, message) = tracing_line(line, "pgpilot_sidecar")?;
    let wanted = matches!(level, "WARN" | "ERROR")
        || message.starts_with("decision")
        || message.starts_with("configuration changed")
        || target.ends_with("sync")
        || target.contains("fenc")
        || message.contains("fenc");
    wanted.then(|| (at, format!("{level} {target}: {message}")))
}

/// An operator line worth showing: a warning or error (a slow reconcile step, a failed one), or a
/// status it wrote.
pub fn operator_line(line: &str) -> Option<Event> {
    let (at_us, level, target, message) = tracing_line(line, "pgpilot_operator")?;
    let wanted = matches!(level, "WARN" | "ERROR") || message.starts_with("status updated");
    wanted.then(|| Event {
        at_us,
        what: cut(format!("operator log: {level} {target}: {message}")),
    })
}

fn postgres_line(line: &str) -> Option<(Micros, String)> {
    // 2026-12-03 13:09:24.296 GMT [34] LOG:  terminating walsender process due to replication timeout
    let mut parts = line.splitn(4, ' ');
    let (date, time, zone, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if zone != "GMT" {
        return None;
    }
    let at: Timestamp = format!("{date}T{time}Z").parse().ok()?;
    let rest = rest.split_once("] ").map_or(rest, |(_, r)| r);
    PG_WORDS.iter().any(|w| rest.contains(w)).then(|| {
        (
            micros(at),
            format!(
                "postgres {}",
                rest.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
        )
    })
}

fn micros(t: Timestamp) -> Micros {
    Micros::try_from(t.as_microsecond()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_warnings_decisions_and_sync_steps_are_kept_the_rest_left_out() {
        let warn = "2026-12-03T13:09:17.560282Z  WARN iteration{member=pg-2}: pgpilot_sidecar::election::lease: cannot read the Lease error=Lease request failed";
        let e = parse_line("pg-2", warn).expect("a warning");
        assert_eq!(
            e.what,
            "pg-2 log: WARN election::lease: cannot read the Lease error=Lease request failed"
        );
        assert_eq!(e.at_us, 1_796_303_357_560_282);
        let sync = "2026-12-03T13:09:21.623714Z  INFO iteration{member=pg-1}: pgpilot_sidecar::ha::sync: recorded the synchronous members members=[]";
        assert_eq!(
            parse_line("pg-1", sync).expect("a sync step").what,
            "pg-1 log: INFO ha::sync: recorded the synchronous members members=[]"
        );
        let decision = "2026-12-03T13:09:12.571017Z  INFO iteration{member=pg-1}: pgpilot_sidecar::ha: decision decision=hold epoch=1";
        assert!(parse_line("pg-1", decision).is_some());
        let label = "2026-12-03T13:09:11.224359Z  INFO iteration{member=pg-0}: pgpilot_sidecar::ha::labels: pod role label updated role=Some(\"replica\") epoch=Some(1)";
        assert_eq!(parse_line("pg-0", label), None);
        assert_eq!(
            parse_line("pg-0", "\t\tThis probably means the server terminated"),
            None
        );
        let library = "2026-12-03T13:39:53.821Z ERROR iteration{member=pg-0}: kube_client::client::builder: failed with error client error (Connect)";
        assert_eq!(parse_line("pg-0", library), None);
    }

    #[test]
    fn operator_warnings_and_status_writes_are_kept() {
        let slow = "2026-12-03T17:18:45.784505Z  WARN reconciling object{object.ref=PostgresCluster.v1alpha1.pgpilot.io/pg.ns object.reason=reconciler requested retry}:reconcile{cluster=pg namespace=\"ns\"}: pgpilot_operator::controller: slow reconcile step step=\"read the cluster\" took_ms=27457";
        let e = operator_line(slow).expect("a warning is kept");
        assert_eq!(
            e.what,
            "operator log: WARN controller: slow reconcile step step=\"read the cluster\" took_ms=27457"
        );
        let status = "2026-12-03T17:18:45.900000Z  INFO reconciling object{}:reconcile{}: pgpilot_operator::controller: status updated phase=\"NoPrimary\" primary=\"\" ready=0";
        assert!(operator_line(status).is_some());
        let other = "2026-12-03T17:18:45.900000Z  INFO kube_runtime::controller: press ctrl+c to shut down gracefully";
        assert!(
            operator_line(other).is_none(),
            "not the operator's own line"
        );
        let sidecar = "2026-12-03T17:18:45.900000Z  WARN iteration{member=pg-1}: pgpilot_sidecar::ha: action failed";
        assert!(operator_line(sidecar).is_none());
    }

    #[test]
    fn a_long_log_keeps_how_the_round_began_and_how_it_ended() {
        let lines: Vec<Event> = (0..100)
            .map(|i| Event {
                at_us: i,
                what: format!("pg-1 log: line {i}"),
            })
            .collect();
        let kept = ends(lines.clone(), 3, 10);
        let whats: Vec<&str> = kept.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "pg-1 log: line 0",
                "pg-1 log: line 1",
                "pg-1 log: line 2",
                "pg-1 log: … 90 line(s) left out",
                "pg-1 log: line 93",
                "pg-1 log: line 94",
                "pg-1 log: line 95",
                "pg-1 log: line 96",
                "pg-1 log: line 97",
                "pg-1 log: line 98",
                "pg-1 log: line 99",
            ]
        );
        assert_eq!(kept[3].at_us, 3);
        assert_eq!(
            ends(lines[..10].to_vec(), 3, 10).len(),
            10,
            "short logs stay whole"
        );
    }

    #[test]
    fn a_repeated_line_is_shown_once_with_its_count() {
        let e = |at_us, what: &str| Event {
            at_us,
            what: what.into(),
        };
        let out = squeeze([e(1, "a"), e(2, "a"), e(3, "a"), e(4, "b"), e(5, "a")]);
        assert_eq!(out, vec![e(1, "a (×3)"), e(4, "b"), e(5, "a")]);
    }

    #[test]
    fn postgres_replication_messages_are_kept() {
        let line = "2026-12-03 13:09:24.296 GMT [34] LOG:  terminating walsender process due to replication timeout";
        let e = parse_line("pg-1", line).expect("a replication message");
        assert_eq!(
            e.what,
            "pg-1 log: postgres LOG: terminating walsender process due to replication timeout"
        );
        assert_eq!(e.at_us, 1_796_303_364_296_000);
        let other = "2026-12-03 13:09:11.109 GMT [12] LOG:  listening on IPv4 address \"0.0.0.0\", port 5432";
        assert_eq!(parse_line("pg-1", other), None);
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let line = format!(
            "2026-12-03T13:09:17.560282Z  WARN x: pgpilot_sidecar::ha: {}",
            "é".repeat(300)
        );
        let e = parse_line("pg-0", &line).expect("a warning");
        assert!(e.what.len() <= LINE_CHARS + '…'.len_utf8());
        assert!(e.what.ends_with('…'));
    }
}
