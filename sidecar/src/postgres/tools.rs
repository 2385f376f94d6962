//! The server's own programs on the data directory: `initdb`, `pg_basebackup`, `pg_rewind`,
//! `pg_controldata`, and wiping PGDATA for a re-clone. IO: runs those programs and writes PGDATA.
//! None of them runs while the child does.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Stdio};

use tokio_postgres::NoTls;
use tracing::{info, instrument, warn};

use super::{ControlData, Error, Postgres, Result, Upstream, config::conninfo, sql::QUERY_TIMEOUT};

impl Postgres {
    /// Runs a server program to completion; its stderr (tail) is the error on failure.
    async fn run(
        &self,
        tool: &'static str,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> Result<String> {
        let mut cmd = self.command(tool);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = self
            .heartbeat
            .while_running(cmd.output())
            .await
            .map_err(|source| Error::Io {
                context: format!("run {tool}"),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
            return Err(Error::Tool {
                tool,
                status: out.status.to_string(),
                stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The start of every tool that changes PGDATA (initdb, a clone, a rewind, a wipe): refused while the
    /// server runs; what was seen of the old directory (its timeline) no longer holds.
    fn begin_data_dir_change(&mut self) -> Result<()> {
        if let Some(pid) = self.pid()
            && self.is_running()
        {
            return Err(Error::AlreadyRunning { pid });
        }
        self.timeline_seen = None;
        Ok(())
    }

    /// A fresh cluster in PGDATA (leftovers of a failed clone or rewind are removed; a complete data
    /// directory is refused with [`Error::NotEmpty`]): data checksums on, SCRAM for local and host connections, the
    /// superuser from the credentials (its password passed in a file that is removed afterwards). The
    /// other roles and the database are created by [`Postgres::bootstrap_roles`] once it runs as primary.
    #[instrument(skip(self), fields(member = %self.settings.member))]
    pub async fn initdb(&mut self) -> Result<()> {
        self.begin_data_dir_change()?;
        self.remove_incomplete_data_dir()?;
        let data = self.settings.data_dir.clone();
        self.prepare_empty_data_dir()?;
        let pwfile = sibling(&data, ".pgpilot-pwfile");
        write_private(&pwfile, &self.creds.superuser.password)?;
        self.chown(&pwfile)?;
        let username = format!("--username={}", self.creds.superuser.username);
        let pwarg = format!("--pwfile={}", pwfile.display());
        let result = self
            .run(
                "initdb",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "--data-checksums".as_ref(),
                    "--auth-local=scram-sha-256".as_ref(),
                    "--auth-host=scram-sha-256".as_ref(),
                    username.as_ref(),
                    pwarg.as_ref(),
                    "--encoding=UTF8".as_ref(),
                    "--locale=C".as_ref(),
                ],
                &[],
            )
            .await;
        if let Err(err) = std::fs::remove_file(&pwfile) {
            warn!(path = %pwfile.display(), error = %err, "cannot remove the initdb password file");
        }
        result?;
        info!(data_dir = %data.display(), "initdb done");
        Ok(())
    }

    /// Clones the upstream into PGDATA with `pg_basebackup` (WAL streamed alongside, fast checkpoint) as
    /// the replication user, and writes `standby.signal` so the copy can never start as a primary. PGDATA
    /// must not hold a complete data directory ([`Error::NotEmpty`]: wipe it first); leftovers of a
    /// failed clone or rewind are removed. A failed clone leaves the incomplete marker (not initialized).
    /// `slot`: use that existing slot on the upstream for the backup's WAL (None: a temporary one).
    #[instrument(skip(self), fields(member = %self.settings.member))]
    pub async fn basebackup(&mut self, from: &Upstream, slot: Option<&str>) -> Result<()> {
        self.begin_data_dir_change()?;
        self.remove_incomplete_data_dir()?;
        let data = self.settings.data_dir.clone();
        self.prepare_empty_data_dir()?;
        self.mark_incomplete("basebackup")?;
        let port = from.port.to_string();
        let conn = conninfo(&[
            ("host", &from.host),
            ("port", &port),
            ("user", &self.creds.replication.username),
            ("application_name", &self.settings.member),
            ("connect_timeout", "5"),
        ]);
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "-D".as_ref(),
            data.as_os_str(),
            "-d".as_ref(),
            conn.as_ref(),
            "-X".as_ref(),
            "stream".as_ref(),
            "--checkpoint=fast".as_ref(),
            "--no-password".as_ref(),
        ];
        if let Some(slot) = slot {
            args.push("-S".as_ref());
            args.push(slot.as_ref());
        }
        self.run(
            "pg_basebackup",
            &args,
            &[("PGPASSWORD", &self.creds.replication.password)],
        )
        .await?;
        self.write_standby_signal()?;
        self.clear_incomplete()?;
        info!(upstream = %from.host, port = from.port, "basebackup done");
        Ok(())
    }

    /// Rewinds a stopped, diverged former primary to the upstream's history with `pg_rewind` (which first
    /// completes crash recovery itself when the server was not shut down cleanly, e.g. after
    /// [`Postgres::fence`]), then writes `standby.signal`: the rewound directory only ever starts as a
    /// replica. "No rewind required" is success.
    ///
    /// An unreachable upstream fails with [`Error::Unreachable`] before anything is touched. Any other
    /// failure may leave PGDATA half-rewound: the marker beside PGDATA stays, [`Postgres::is_initialized`]
    /// turns false, and the caller must [`Postgres::wipe`] and re-clone — never rewind again.
    #[instrument(skip(self), fields(member = %self.settings.member))]
    pub async fn rewind(&mut self, from: &Upstream) -> Result<()> {
        self.begin_data_dir_change()?;
        if !self.is_initialized() {
            return Err(Error::Refused(
                "no complete data directory to rewind: re-clone",
            ));
        }
        let conn = self.source_conninfo(from);
        checkpoint_source_timeline(from, &conn).await?;
        self.mark_incomplete("pg_rewind")?;
        let data = format!("--target-pgdata={}", self.settings.data_dir.display());
        let source = format!("--source-server={conn}");
        let out = self
            .run("pg_rewind", &[data.as_ref(), source.as_ref()], &[])
            .await?;
        self.write_standby_signal()?;
        self.clear_incomplete()?;
        info!(upstream = %from.host, output = %out.trim(), "pg_rewind done");
        Ok(())
    }

    /// Whether this replica's WAL (timeline `timeline`, up to `lsn`) went past the point where the
    /// upstream's history (it runs on `upstream_timeline`) left ours: such a replica can never stream from
    /// it and must be rewound. Right after a failover, a replica that had received more of the old
    /// primary's WAL than the promoted one is in exactly this state. Reads the upstream's timeline history
    /// file as the replication user (EXECUTE on `pg_read_binary_file` is granted for `pg_rewind`).
    /// Only meaningful when `timeline < upstream_timeline`; otherwise `false`.
    #[instrument(skip(self), fields(member = %self.settings.member))]
    pub async fn diverged_from(
        &self,
        from: &Upstream,
        upstream_timeline: u32,
        timeline: u32,
        lsn: u64,
    ) -> Result<bool> {
        if timeline >= upstream_timeline {
            return Ok(false);
        }
        let client = connect_source(from, &self.source_conninfo(from)).await?;
        let file = format!("pg_wal/{upstream_timeline:08X}.history");
        let row = tokio::time::timeout(
            QUERY_TIMEOUT,
            client.query_one("SELECT pg_catalog.pg_read_binary_file($1)", &[&file]),
        )
        .await
        .map_err(|_| Error::Timeout {
            what: "read the upstream's timeline history",
            timeout: QUERY_TIMEOUT,
        })?
        .map_err(|source| Error::Sql {
            context: "read the upstream's timeline history",
            source,
        })?;
        let history: Vec<u8> = row.get(0);
        let diverged = diverged(&String::from_utf8_lossy(&history), timeline, lsn);
        if diverged {
            info!(
                timeline,
                lsn = %super::sql::format_lsn(lsn),
                upstream_timeline,
                "this replica's WAL is past the upstream's fork point"
            );
        }
        Ok(diverged)
    }

    /// Another member's `pg_last_wal_receive_lsn()` as a byte position (as the replication user, over
    /// TCP); `None` on any failure. A switchover polls its candidate with it.
    pub async fn received_lsn_of(&self, from: &Upstream) -> Option<u64> {
        let client = connect_source(from, &self.source_conninfo(from))
            .await
            .ok()?;
        let row = tokio::time::timeout(
            QUERY_TIMEOUT,
            client.query_one("SELECT pg_catalog.pg_last_wal_receive_lsn()", &[]),
        )
        .await
        .ok()?
        .ok()?;
        row.try_get::<_, Option<tokio_postgres::types::PgLsn>>(0)
            .ok()?
            .map(u64::from)
    }

    /// A connection string to `from` as the replication user, for SQL (pg_rewind's source, history).
    fn source_conninfo(&self, from: &Upstream) -> String {
        let port = from.port.to_string();
        let repl = &self.creds.replication;
        conninfo(&[
            ("host", &from.host),
            ("port", &port),
            ("user", &repl.username),
            ("password", &repl.password),
            ("dbname", "postgres"),
            ("application_name", &self.settings.member),
            ("connect_timeout", "5"),
        ])
    }

    /// Removes PGDATA entirely (and the incomplete-operation marker), for a re-clone. The server must
    /// be stopped.
    #[instrument(skip(self), fields(member = %self.settings.member))]
    pub async fn wipe(&mut self) -> Result<()> {
        self.begin_data_dir_change()?;
        let data = self.settings.data_dir.clone();
        if data.exists() {
            remove_dir(&data)?;
        }
        self.clear_incomplete()?;
        warn!(data_dir = %data.display(), "data directory wiped");
        Ok(())
    }

    /// What `pg_controldata` says about PGDATA (meaningful while stopped).
    pub async fn controldata(&self) -> Result<ControlData> {
        let out = self
            .run(
                "pg_controldata",
                &["-D".as_ref(), self.settings.data_dir.as_os_str()],
                &[("LC_ALL", "C")],
            )
            .await?;
        parse_controldata(&out).ok_or_else(|| Error::Tool {
            tool: "pg_controldata",
            status: "unparsable output".into(),
            stderr: out.lines().take(8).collect::<Vec<_>>().join("\n"),
        })
    }

    /// Removes what a failed clone or rewind left in PGDATA; refuses a complete data directory
    /// ([`Error::NotEmpty`]: wipe it explicitly).
    fn remove_incomplete_data_dir(&self) -> Result<()> {
        let data = &self.settings.data_dir;
        if self.is_initialized() {
            return Err(Error::NotEmpty(data.clone()));
        }
        if data.exists() {
            warn!(data_dir = %data.display(), "removing an incomplete data directory");
            remove_dir(data)?;
        }
        Ok(())
    }

    /// Creates PGDATA (0700, owned by `run_as`) when missing; fails when it holds anything.
    fn prepare_empty_data_dir(&self) -> Result<()> {
        let data = &self.settings.data_dir;
        if let Some(parent) = data.parent() {
            std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                context: format!("create {}", parent.display()),
                source,
            })?;
        }
        let io = |source| Error::Io {
            context: format!("prepare {}", data.display()),
            source,
        };
        if data.exists() {
            if std::fs::read_dir(data).map_err(io)?.next().is_some() {
                return Err(Error::NotEmpty(data.clone()));
            }
        } else {
            std::fs::create_dir(data).map_err(io)?;
        }
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        self.chown(data)
    }

    /// Before a promotion: makes sure PostgreSQL picks a timeline ID above `newest_used`, the newest one
    /// the cluster's primaries ran on (the Lease records it), and returns the ID it will pick.
    /// PostgreSQL takes the ID after the newest one it has a history file for, counting up from its
    /// `current` one, so a standby that never received a later primary's history file would reuse that
    /// primary's ID, and pg_rewind, which compares only the IDs, would then leave that primary's diverged
    /// WAL in place when it rejoins ("the same timeline"). A file reserving each missing ID (comments
    /// only: no parent, never anyone's real history) closes the gap.
    pub fn reserve_timelines(&self, current: u32, newest_used: u32) -> Result<u32> {
        let history = |timeline: u32| {
            self.settings
                .data_dir
                .join("pg_wal")
                .join(format!("{timeline:08X}.history"))
        };
        let mut reserved = Vec::new();
        for timeline in current.saturating_add(1)..=newest_used {
            let path = history(timeline);
            if path.exists() {
                continue;
            }
            write_private(
                &path,
                &format!(
                    "# pgpilot: timeline {timeline} was another primary's; this file only keeps a \
                     promotion here from reusing its ID\n"
                ),
            )?;
            self.chown(&path)?;
            reserved.push(timeline);
        }
        let mut newest = current.max(newest_used);
        while history(newest.saturating_add(1)).exists() {
            newest += 1;
        }
        if !reserved.is_empty() {
            warn!(
                ?reserved,
                current,
                newest_used,
                "reserved timeline IDs this member never received, before promoting"
            );
        }
        Ok(newest.saturating_add(1))
    }

    pub(super) fn write_standby_signal(&self) -> Result<()> {
        let path = self.settings.data_dir.join("standby.signal");
        write_private(&path, "")?;
        self.chown(&path)
    }

    fn mark_incomplete(&self, operation: &str) -> Result<()> {
        let marker = self.incomplete_marker();
        write_private(&marker, operation)
    }

    fn clear_incomplete(&self) -> Result<()> {
        let marker = self.incomplete_marker();
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                context: format!("remove {}", marker.display()),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// Makes sure the rewind source's control file names its current timeline, requesting a `CHECKPOINT`
/// when it does not. Right after a promotion it still names the old one until the first checkpoint ends,
/// and pg_rewind, which reads the timeline there, would then wrongly find "no rewind required" and let
/// a diverged former primary stream on top of its own extra WAL. The replication role may checkpoint
/// (`pg_checkpoint`, see [`Postgres::bootstrap_roles`]).
async fn checkpoint_source_timeline(from: &Upstream, conn: &str) -> Result<()> {
    let client = connect_source(from, conn).await?;
    let sql = |context| move |source| Error::Sql { context, source };
    let row = client
        .query_one(
            "SELECT (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())::int4,
                    pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn())",
            &[],
        )
        .await
        .map_err(sql("read the rewind source's timeline"))?;
    let control: i32 = row.get(0);
    let walfile: String = row.get(1);
    let current = walfile
        .get(..8)
        .and_then(|t| i32::from_str_radix(t, 16).ok())
        .unwrap_or(control);
    if control < current {
        info!(
            control,
            current, "checkpointing the rewind source so its control file shows its timeline"
        );
        client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(sql("checkpoint the rewind source"))?;
    }
    Ok(())
}

/// A connection to another member's server; its connection task ends when the client is dropped.
async fn connect_source(from: &Upstream, conn: &str) -> Result<tokio_postgres::Client> {
    let unreachable = |source| Error::Unreachable {
        host: from.host.clone(),
        port: from.port,
        source,
    };
    let (client, connection) =
        tokio::time::timeout(QUERY_TIMEOUT, tokio_postgres::connect(conn, NoTls))
            .await
            .map_err(|_| unreachable(None))?
            .map_err(|e| unreachable(Some(e)))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Whether a server whose WAL on `timeline` reaches `lsn` is past the fork point recorded for that
/// timeline in a timeline history file (`<parent timeline>\t<switch LSN>\t<reason>` per line). A
/// timeline the history does not list at all is another branch: diverged.
fn diverged(history: &str, timeline: u32, lsn: u64) -> bool {
    let switch_point = history.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let tli: u32 = fields.next()?.parse().ok()?;
        let at = super::sql::parse_lsn(fields.next()?)?;
        (tli == timeline).then_some(at)
    });
    switch_point.is_none_or(|at| lsn > at)
}

/// `path` with `suffix` appended to its last component.
fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.to_path_buf().into_os_string();
    name.push(suffix);
    name.into()
}

/// Writes a file readable by its owner only.
pub(super) fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let io = |source| Error::Io {
        context: format!("write {}", path.display()),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

fn remove_dir(path: &Path) -> Result<()> {
    std::fs::remove_dir_all(path).map_err(|source| Error::Io {
        context: format!("remove {}", path.display()),
        source,
    })
}

/// Reads the fields of [`ControlData`] from `pg_controldata` output (C locale).
fn parse_controldata(text: &str) -> Option<ControlData> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(str::trim)
        })
    };
    Some(ControlData {
        state: field("Database cluster state")?.to_owned(),
        timeline: field("Latest checkpoint's TimeLineID")?.parse().ok()?,
        checkpoint_lsn: super::sql::parse_lsn(field("Latest checkpoint location")?)?,
        data_checksums: field("Data page checksum version")?.parse::<u32>().ok()? > 0,
        system_identifier: field("Database system identifier")?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controldata_fields() {
        let text = "pg_control version number:            1300\n\
                    Database system identifier:           7412345678901234567\n\
                    Database cluster state:               shut down in recovery\n\
                    Latest checkpoint location:           0/5000060\n\
                    Latest checkpoint's REDO location:    0/5000028\n\
                    Latest checkpoint's TimeLineID:       3\n\
                    Data page checksum version:           1\n";
        let c = parse_controldata(text).unwrap();
        assert_eq!(c.state, "shut down in recovery");
        assert_eq!(c.timeline, 3);
        assert_eq!(c.checkpoint_lsn, 0x500_0060);
        assert!(c.data_checksums);
        assert_eq!(c.system_identifier, "7412345678901234567");
        assert!(!c.is_clean_primary_shutdown());
        assert_eq!(parse_controldata("garbage"), None);
    }

    #[test]
    fn divergence_from_a_timeline_history() {
        let history = "1\t0/5000A0\tno recovery target specified\n\n\
                       2\t0/70001C8\tno recovery target specified\n";
        assert!(
            !diverged(history, 1, 0x50_00A0),
            "exactly at the fork point"
        );
        assert!(!diverged(history, 1, 0x30_0000), "behind it: streams on");
        assert!(diverged(history, 1, 0x50_00A1), "past it");
        assert!(!diverged(history, 2, 0x700_01C8));
        assert!(diverged(history, 2, 0x700_0200));
        assert!(diverged(history, 5, 0), "a branch the history never had");
    }
}
