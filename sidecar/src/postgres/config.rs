//! Pure rendering of the files pgpilot manages in PGDATA, and the plan for applying a difference.
//!
//! Reads nothing and writes nothing: [`render`] maps settings + desired state + credentials to file
//! contents; [`parse_conf`] reads back the `postgresql.conf` we (or `initdb`) wrote; [`plan_change`]
//! decides between "nothing", "reload" and "restart" from the two parameter sets and the servers'
//! `pg_settings.context` of the changed names.

use std::collections::{BTreeMap, BTreeSet};

use super::{Credentials, Desired, PgSettings, Role, SyncMethod, SyncStandbys};

/// Parameters pgpilot renders itself; values for them in the spec are ignored. The CRD rejects the
/// ones in `pgpilot_crds::cluster::OWNED_PARAMETERS` (one list, so the two cannot disagree); the few
/// below it lets through are handled here: `wal_level` may be raised to `logical`, the `max_*` limits
/// may be raised above pgpilot's floor, and `password_encryption` stays `scram-sha-256` because
/// pg_hba.conf accepts SCRAM only.
pub fn is_owned(name: &str) -> bool {
    pgpilot_crds::cluster::OWNED_PARAMETERS.contains(&name)
        || [
            "wal_level",
            "max_wal_senders",
            "max_replication_slots",
            "password_encryption",
        ]
        .contains(&name)
}

/// A parameter the server's configuration grammar can hold as `name = 'value'` on one line: the name
/// is an identifier (letters, digits, `_`, and `.` for extensions' `class.name`), the value has no
/// control character. The operator validates the spec the same way; this keeps a bad entry from ever
/// reaching `postgresql.conf` (issue 13 hole 12: a key with a newline could override pgpilot's own).
pub fn is_valid_parameter(name: &str, value: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !value.chars().any(char::is_control)
}

/// Floors for the replication limits: enough for nine members plus a backup.
const MIN_WAL_SENDERS: u32 = 10;
const MIN_REPLICATION_SLOTS: u32 = 10;

/// Defaults for a container, overridable from the spec.
const DEFAULT_PARAMETERS: &[(&str, &str)] = &[
    ("shared_buffers", "128MB"),
    ("max_connections", "100"),
    // Lets a diverged former primary find the WAL pg_rewind and streaming need on the new primary.
    ("wal_keep_size", "128MB"),
    ("max_wal_size", "1GB"),
    ("hot_standby_feedback", "on"),
    // A replica retries its upstream after this long: PostgreSQL's 5 s default adds up to 5 s before
    // replicas stream from a newly promoted primary.
    ("wal_retrieve_retry_interval", "1s"),
    // A slot of a member that is away keeps WAL for it, but never without bound (issue 13 hole 10).
    ("max_slot_wal_keep_size", "1GB"),
];

/// File contents for PGDATA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The whole `postgresql.conf` (ALTER SYSTEM's `postgresql.auto.conf` is left alone).
    pub postgresql_conf: String,
    /// The whole `pg_hba.conf`.
    pub pg_hba_conf: String,
    /// Whether `standby.signal` must exist (replica).
    pub standby_signal: bool,
    /// The effective parameters written to `postgresql_conf`, for [`plan_change`].
    pub parameters: BTreeMap<String, String>,
}

/// What applying a new configuration to a running server needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Files already said this.
    Unchanged,
    /// Written and applied with `pg_reload_conf()` (or the server is stopped and the next start reads it).
    Reloaded,
    /// Written; some parameters (listed) or the role (`standby.signal`) take effect only after a restart.
    /// Until then the server reports them as `pending_restart`.
    NeedsRestart(Vec<String>),
}

/// Renders `postgresql.conf`, `pg_hba.conf` and whether `standby.signal` must exist.
pub fn render(settings: &PgSettings, desired: &Desired, creds: &Credentials) -> Rendered {
    let mut p: BTreeMap<String, String> = DEFAULT_PARAMETERS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    p.insert("cluster_name".into(), settings.cluster.clone());
    for (k, v) in &desired.parameters {
        if is_owned(k) {
            continue;
        }
        if is_valid_parameter(k, v) {
            p.insert(k.clone(), v.clone());
        } else {
            tracing::warn!(parameter = ?k, "ignoring a parameter that is not `name = value`");
        }
    }
    let spec = |name: &str| {
        desired
            .parameters
            .get(name)
            .map(|v| v.trim().to_ascii_lowercase())
    };
    let wal_level = if spec("wal_level").as_deref() == Some("logical") {
        "logical"
    } else {
        "replica"
    };
    let at_least = |name: &str, floor: u32| {
        spec(name)
            .and_then(|v| v.parse::<u32>().ok())
            .map_or(floor, |v| v.max(floor))
            .to_string()
    };
    let owned = [
        ("listen_addresses", settings.listen_addresses.clone()),
        ("port", settings.port.to_string()),
        (
            "unix_socket_directories",
            settings.socket_dir.display().to_string(),
        ),
        ("hot_standby", "on".into()),
        ("wal_level", wal_level.into()),
        (
            "max_wal_senders",
            at_least("max_wal_senders", MIN_WAL_SENDERS),
        ),
        (
            "max_replication_slots",
            at_least("max_replication_slots", MIN_REPLICATION_SLOTS),
        ),
        ("wal_log_hints", "on".into()),
        ("password_encryption", "scram-sha-256".into()),
        ("recovery_target_timeline", "latest".into()),
    ];
    // Replication timeouts follow the Lease timings (issue 13 hole 3): a dead standby connection is
    // dropped after about `renewDeadline`, and standbys reply every second, so a standby that stops
    // replying is noticed within a few seconds whatever the load.
    let timeouts = desired.replication_timeout.map(|t| {
        let ms = format!("{}ms", t.as_millis());
        [
            ("wal_sender_timeout", ms.clone()),
            ("wal_receiver_timeout", ms),
            ("wal_receiver_status_interval", "1s".to_owned()),
        ]
    });
    for (k, v) in owned.into_iter().chain(timeouts.into_iter().flatten()) {
        p.insert(k.into(), v);
    }
    // Inert on a replica until it is promoted: the HA loop can set the standbys the new primary must wait
    // for before promoting, so no commit after the promotion is acknowledged asynchronously.
    let sync_names = desired
        .synchronous
        .as_ref()
        .map(synchronous_standby_names)
        .unwrap_or_default();
    p.insert("synchronous_standby_names".into(), sync_names);
    let standby_signal = match &desired.role {
        Role::Primary => false,
        // An empty upstream host means "no primary to follow yet" (a standby waiting for an election):
        // no `primary_conninfo`, so the WAL receiver stays idle instead of dialling the local socket.
        Role::Replica { upstream, .. } if upstream.host.is_empty() => {
            p.insert("primary_conninfo".into(), String::new());
            p.insert("primary_slot_name".into(), String::new());
            p.insert("synchronous_standby_names".into(), String::new());
            true
        }
        Role::Replica { upstream, slot } => {
            let conninfo = conninfo(&[
                ("host", &upstream.host),
                ("port", &upstream.port.to_string()),
                ("user", &creds.replication.username),
                ("password", &creds.replication.password),
                ("application_name", &settings.member),
                ("connect_timeout", "5"),
                ("keepalives_idle", "5"),
                ("keepalives_interval", "2"),
                ("keepalives_count", "3"),
            ]);
            p.insert("primary_conninfo".into(), conninfo);
            p.insert("primary_slot_name".into(), slot.clone().unwrap_or_default());
            true
        }
    };
    let mut conf =
        String::from("# Managed by pgpilot: rewritten on every change; use the cluster spec.\n");
    for (k, v) in &p {
        // The server's parser treats `\` as an escape inside quotes, and `''` as a quote.
        conf.push_str(&format!(
            "{k} = '{}'\n",
            v.replace('\\', "\\\\").replace('\'', "''")
        ));
    }
    Rendered {
        postgresql_conf: conf,
        pg_hba_conf: render_hba(desired, creds),
        standby_signal,
        parameters: p,
    }
}

/// `pg_hba.conf`: the spec's lines first, then pgpilot's: everything needs a SCRAM password; the
/// replication user may stream and (through the `postgres` database) run `pg_rewind` from any address.
fn render_hba(desired: &Desired, creds: &Credentials) -> String {
    let repl = quote_hba(&creds.replication.username);
    let mut hba =
        String::from("# Managed by pgpilot: rewritten on every change; use the cluster spec.\n");
    for line in &desired.pg_hba {
        hba.push_str(line.trim());
        hba.push('\n');
    }
    hba.push_str(&format!(
        "local all all scram-sha-256\n\
         local replication {repl} scram-sha-256\n\
         host replication {repl} all scram-sha-256\n\
         host all all all scram-sha-256\n"
    ));
    hba
}

fn quote_hba(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A libpq keyword/value connection string; every value single-quoted with `\` and `'` escaped.
pub fn conninfo(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `FIRST n ("a", "b")`, `ANY n ("a")`, or `FIRST n (*)` when no names are given.
pub fn synchronous_standby_names(s: &SyncStandbys) -> String {
    let method = match s.method {
        SyncMethod::First => "FIRST",
        SyncMethod::Any => "ANY",
    };
    let names = if s.names.is_empty() {
        "*".to_owned()
    } else {
        s.names
            .iter()
            .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("{method} {} ({names})", s.count.max(1))
}

/// Reads the parameters of a `postgresql.conf` in the shapes we and `initdb` write: `name = value` or
/// `name = 'quoted value'`, `#` comments. `include` lines and anything unparsable are skipped.
pub fn parse_conf(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, rest)) = line
            .split_once('=')
            .or_else(|| line.split_once(char::is_whitespace))
        else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        if name.starts_with("include") {
            continue;
        }
        let rest = rest.trim();
        let value = if let Some(body) = rest.strip_prefix('\'') {
            let mut v = String::new();
            let mut chars = body.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\'' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        v.push('\'');
                    }
                    '\'' => break,
                    '\\' => {
                        if let Some(n) = chars.next() {
                            v.push(n);
                        }
                    }
                    c => v.push(c),
                }
            }
            v
        } else {
            rest.split('#').next().unwrap_or_default().trim().to_owned()
        };
        out.insert(name, value);
    }
    out
}

/// Names whose value differs between `old` and `new` (added, removed or changed).
pub fn changed_parameters(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    old.keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// The change a running server needs. `contexts` maps parameter names to `pg_settings.context`;
/// a changed parameter with context `postmaster` needs a restart; unknown names (extensions' custom
/// parameters) are treated as reloadable. A change of role never reaches here: a running primary
/// refuses the replica role, and promotion is [`super::Postgres::promote`]'s job.
pub fn plan_change(
    changed: &BTreeSet<String>,
    hba_changed: bool,
    contexts: &BTreeMap<String, String>,
) -> Change {
    let restart: Vec<String> = changed
        .iter()
        .filter(|n| contexts.get(*n).is_some_and(|c| c == "postmaster"))
        .cloned()
        .collect();
    if !restart.is_empty() {
        Change::NeedsRestart(restart)
    } else if changed.is_empty() && !hba_changed {
        Change::Unchanged
    } else {
        Change::Reloaded
    }
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use super::*;
    use crate::postgres::{Upstream, UserPassword};

    fn settings() -> PgSettings {
        PgSettings {
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            data_dir: PathBuf::from("/data/pgdata"),
            port: 5432,
            socket_dir: PathBuf::from("/run/pg"),
            listen_addresses: "*".into(),
            run_as: None,
            member: "db-1".into(),
            cluster: "db".into(),
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
            log_file: None,
        }
    }

    fn creds() -> Credentials {
        let up = |u: &str, p: &str| UserPassword {
            username: u.into(),
            password: p.into(),
        };
        Credentials {
            superuser: up("postgres", "s3cret"),
            replication: up("standby", "it's\\x"),
            app: up("app", "a"),
            database: "app".into(),
        }
    }

    fn desired(role: Role) -> Desired {
        Desired {
            role,
            parameters: BTreeMap::new(),
            pg_hba: vec![],
            synchronous: None,
            member_slots: vec![],
            replication_timeout: None,
        }
    }

    #[test]
    fn primary_renders_owned_parameters_and_no_standby_signal() {
        let r = render(&settings(), &desired(Role::Primary), &creds());
        assert!(!r.standby_signal);
        let p = parse_conf(&r.postgresql_conf);
        assert_eq!(
            p, r.parameters,
            "the file reads back as the parameters it was rendered from"
        );
        assert_eq!(p["wal_level"], "replica");
        assert_eq!(p["wal_log_hints"], "on");
        assert_eq!(p["port"], "5432");
        assert_eq!(p["unix_socket_directories"], "/run/pg");
        assert_eq!(p["synchronous_standby_names"], "");
        assert_eq!(p["recovery_target_timeline"], "latest");
        assert!(!p.contains_key("primary_conninfo"));
    }

    #[test]
    fn a_parameter_key_or_value_cannot_inject_lines() {
        // Issue 13 hole 12: a key with a newline (or a trailing space) would add its own line to
        // postgresql.conf, overriding pgpilot's synchronous_standby_names.
        let mut d = desired(Role::Primary);
        d.synchronous = Some(SyncStandbys {
            method: SyncMethod::First,
            count: 1,
            names: vec!["c-1".into()],
        });
        d.parameters
            .insert("x = 1\nsynchronous_standby_names".into(), "".into());
        d.parameters
            .insert("synchronous_standby_names ".into(), "".into());
        d.parameters
            .insert("work_mem".into(), "4MB'\nfsync = 'off".into());
        d.parameters
            .insert("pg_stat_statements.max".into(), "1000".into());
        let r = render(&settings(), &d, &creds());
        assert_eq!(
            parse_conf(&r.postgresql_conf)["synchronous_standby_names"],
            "FIRST 1 (\"c-1\")"
        );
        assert!(
            !r.postgresql_conf.contains("fsync"),
            "{}",
            r.postgresql_conf
        );
        assert_eq!(
            r.parameters["pg_stat_statements.max"], "1000",
            "extension parameters pass"
        );
        assert_eq!(
            r.postgresql_conf
                .lines()
                .filter(|l| l.starts_with("synchronous_standby_names"))
                .count(),
            1
        );
    }

    #[test]
    fn replication_timeouts_follow_the_lease_timings() {
        let mut d = desired(Role::Primary);
        d.replication_timeout = Some(std::time::Duration::from_secs(10));
        d.parameters
            .insert("wal_sender_timeout".into(), "5min".into());
        let p = render(&settings(), &d, &creds()).parameters;
        assert_eq!(
            p["wal_sender_timeout"], "10000ms",
            "pgpilot's, not the spec's"
        );
        assert_eq!(p["wal_receiver_timeout"], "10000ms");
        assert_eq!(p["wal_receiver_status_interval"], "1s");
    }

    #[test]
    fn spec_may_raise_replication_settings_but_not_lower_them() {
        let mut d = desired(Role::Primary);
        d.parameters.insert("wal_level".into(), "logical".into());
        d.parameters.insert("max_wal_senders".into(), "20".into());
        d.parameters
            .insert("max_replication_slots".into(), "2".into());
        d.parameters
            .insert("password_encryption".into(), "md5".into());
        let p = render(&settings(), &d, &creds()).parameters;
        assert_eq!(p["wal_level"], "logical");
        assert_eq!(p["max_wal_senders"], "20");
        assert_eq!(p["max_replication_slots"], "10");
        assert_eq!(p["password_encryption"], "scram-sha-256");
        d.parameters.insert("wal_level".into(), "minimal".into());
        assert_eq!(
            render(&settings(), &d, &creds()).parameters["wal_level"],
            "replica"
        );
    }

    #[test]
    fn spec_parameters_override_defaults_but_never_owned_ones() {
        let mut d = desired(Role::Primary);
        d.parameters.insert("shared_buffers".into(), "256MB".into());
        d.parameters.insert("wal_level".into(), "minimal".into());
        d.parameters.insert("port".into(), "1".into());
        d.parameters.insert("work_mem".into(), "8MB".into());
        let p = render(&settings(), &d, &creds()).parameters;
        assert_eq!(p["shared_buffers"], "256MB");
        assert_eq!(p["work_mem"], "8MB");
        assert_eq!(p["wal_level"], "replica");
        assert_eq!(p["port"], "5432");
    }

    #[test]
    fn replica_streams_from_upstream_as_its_member_name_through_its_slot() {
        let role = Role::Replica {
            upstream: Upstream {
                host: "10.0.0.7".into(),
                port: 5433,
            },
            slot: Some("db_1".into()),
        };
        let r = render(&settings(), &desired(role), &creds());
        assert!(r.standby_signal);
        let p = parse_conf(&r.postgresql_conf);
        assert_eq!(p["primary_slot_name"], "db_1");
        assert_eq!(
            p["primary_conninfo"],
            "host='10.0.0.7' port='5433' user='standby' password='it\\'s\\\\x' application_name='db-1' \
             connect_timeout='5' keepalives_idle='5' keepalives_interval='2' keepalives_count='3'"
        );
        assert_eq!(p["synchronous_standby_names"], "");
    }

    #[test]
    fn replica_without_upstream_waits_instead_of_streaming_from_itself() {
        let role = Role::Replica {
            upstream: Upstream {
                host: String::new(),
                port: 5432,
            },
            slot: Some("db_1".into()),
        };
        let r = render(&settings(), &desired(role), &creds());
        assert!(r.standby_signal);
        assert_eq!(
            r.parameters["primary_conninfo"], "",
            "an empty host would dial the local socket"
        );
        assert_eq!(r.parameters["primary_slot_name"], "");
    }

    #[test]
    fn synchronous_standby_names_by_method() {
        let s = |method, count, names: &[&str]| SyncStandbys {
            method,
            count,
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        assert_eq!(
            synchronous_standby_names(&s(SyncMethod::First, 1, &["db-1"])),
            "FIRST 1 (\"db-1\")"
        );
        assert_eq!(
            synchronous_standby_names(&s(SyncMethod::Any, 2, &["db-1", "db-2", "db-3"])),
            "ANY 2 (\"db-1\", \"db-2\", \"db-3\")"
        );
        assert_eq!(
            synchronous_standby_names(&s(SyncMethod::First, 1, &[])),
            "FIRST 1 (*)"
        );
        assert_eq!(
            synchronous_standby_names(&s(SyncMethod::First, 0, &["a"])),
            "FIRST 1 (\"a\")"
        );
        let mut d = desired(Role::Primary);
        d.synchronous = Some(s(SyncMethod::Any, 1, &["db-2"]));
        let p = parse_conf(&render(&settings(), &d, &creds()).postgresql_conf);
        assert_eq!(p["synchronous_standby_names"], "ANY 1 (\"db-2\")");
        // Set on a replica ahead of its promotion (inert until then).
        d.role = Role::Replica {
            upstream: Upstream {
                host: "h".into(),
                port: 1,
            },
            slot: None,
        };
        let p = parse_conf(&render(&settings(), &d, &creds()).postgresql_conf);
        assert_eq!(p["synchronous_standby_names"], "ANY 1 (\"db-2\")");
    }

    #[test]
    fn hba_puts_spec_lines_first_and_requires_scram() {
        let mut d = desired(Role::Primary);
        d.pg_hba = vec!["hostssl all all 10.0.0.0/8 scram-sha-256".into()];
        let hba = render(&settings(), &d, &creds()).pg_hba_conf;
        let lines: Vec<&str> = hba.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines[0], "hostssl all all 10.0.0.0/8 scram-sha-256");
        assert!(lines.contains(&"host replication \"standby\" all scram-sha-256"));
        assert!(
            lines.iter().all(|l| l.ends_with("scram-sha-256")),
            "no trust or peer line: {hba}"
        );
    }

    #[test]
    fn parse_conf_reads_initdb_style_files() {
        let text = "# comment\nmax_connections = 100\t\t\t# (change requires restart)\n\
                    shared_buffers = 128MB  # min 128kB\n#port = 5432\n\
                    datestyle = 'iso, mdy'\nlog_line_prefix = '%m [%p] '\n\
                    include_dir = 'conf.d'\nq = 'it''s'\n";
        let p = parse_conf(text);
        assert_eq!(p["max_connections"], "100");
        assert_eq!(p["shared_buffers"], "128MB");
        assert_eq!(p["datestyle"], "iso, mdy");
        assert_eq!(p["log_line_prefix"], "%m [%p] ");
        assert_eq!(p["q"], "it's");
        assert!(!p.contains_key("port"));
        assert!(!p.contains_key("include_dir"));
    }

    #[test]
    fn plan_change_reload_vs_restart() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let old = map(&[
            ("work_mem", "4MB"),
            ("shared_buffers", "128MB"),
            ("gone", "x"),
        ]);
        let new = map(&[
            ("work_mem", "8MB"),
            ("shared_buffers", "128MB"),
            ("added", "y"),
        ]);
        let changed = changed_parameters(&old, &new);
        assert_eq!(
            changed.iter().map(String::as_str).collect::<Vec<_>>(),
            ["added", "gone", "work_mem"]
        );
        let contexts = map(&[("work_mem", "user"), ("shared_buffers", "postmaster")]);
        assert_eq!(plan_change(&changed, false, &contexts), Change::Reloaded);
        assert_eq!(
            plan_change(&BTreeSet::new(), false, &contexts),
            Change::Unchanged
        );
        assert_eq!(
            plan_change(&BTreeSet::new(), true, &contexts),
            Change::Reloaded
        );
        let sb = changed_parameters(&old, &map(&[("shared_buffers", "1GB")]));
        assert_eq!(
            plan_change(&sb, false, &contexts),
            Change::NeedsRestart(vec!["shared_buffers".into()])
        );
    }
}
