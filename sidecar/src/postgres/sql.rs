//! SQL against the local server over its unix socket, as the superuser: observe, promote, slots, roles.
//! IO: one cached connection; every round-trip is bounded by [`QUERY_TIMEOUT`].

use std::{collections::BTreeSet, time::Duration};

use tokio_postgres::{Client, NoTls, types::PgLsn};
use tracing::{debug, info, instrument, warn};

use super::{Error, Observation, Postgres, ReplicationRow, Result, WalReceiver, slot_name};

/// Bound on connecting and on each query: a wedged server must not stall the HA loop.
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// How long [`Postgres::promote`] waits for the end of recovery.
pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// `application_name` of the sidecar's own sessions, so they are recognisable in `pg_stat_activity`.
const APPLICATION_NAME: &str = "pgpilot-sidecar";

impl Postgres {
    /// A new superuser connection over the socket to the `postgres` database.
    pub(super) async fn connect(&self) -> Result<Client> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.settings.socket_dir)
            .port(self.settings.port)
            .user(&self.creds.superuser.username)
            .password(&self.creds.superuser.password)
            .dbname("postgres")
            .application_name(APPLICATION_NAME)
            .connect_timeout(QUERY_TIMEOUT);
        let (client, connection) = tokio::time::timeout(QUERY_TIMEOUT, config.connect(NoTls))
            .await
            .map_err(|_| Error::Timeout {
                what: "connect to postgres",
                timeout: QUERY_TIMEOUT,
            })?
            .map_err(|source| Error::Sql {
                context: "connect to postgres",
                source,
            })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(error = %err, "local postgres connection closed");
            }
        });
        Ok(client)
    }

    /// Runs `f` on the cached connection, opening one when there is none or it broke.
    async fn with_client<T, F>(&self, what: &'static str, f: F) -> Result<T>
    where
        F: AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    {
        let mut guard = self.client.lock().await;
        let client = match guard.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        let out = tokio::time::timeout(QUERY_TIMEOUT, f(&client))
            .await
            .map_err(|_| Error::Timeout {
                what,
                timeout: QUERY_TIMEOUT,
            })?
            .map_err(|source| Error::Sql {
                context: what,
                source,
            })?;
        *guard = Some(client);
        Ok(out)
    }

    /// A snapshot of the local server. Never fails: what could not be read is `None`, and `error` says why.
    pub async fn observe(&mut self) -> Observation {
        let running = self.is_running();
        let mut obs = Observation {
            running,
            ..Observation::default()
        };
        if !running {
            return obs;
        }
        match self
            .with_client("observe", async |c| query_observation(c).await)
            .await
        {
            Ok(mut o) => {
                o.running = true;
                o.accepting = true;
                // Timelines only grow while the data directory stays: what it was seen on still holds
                // when the standby's WAL receiver is gone (its upstream died) and the checkpoint lags.
                o.timeline = o.timeline.max(self.timeline_seen);
                self.timeline_seen = o.timeline;
                obs = o;
            }
            Err(err) => obs.error = Some(err.to_string()),
        }
        obs
    }

    /// Ends recovery with `pg_promote` and waits (up to [`PROMOTE_TIMEOUT`]) until the server accepts
    /// writes on a new timeline. Call only while holding the Lease (docs/design.md L4); the server removes
    /// `standby.signal` itself. Afterwards render [`super::Role::Primary`] with [`Postgres::configure`] so
    /// `synchronous_standby_names` and the slots follow.
    ///
    /// Signals with `pg_promote(wait => false)`, polls `pg_is_in_recovery()` every 10 ms and repeats the
    /// signal every 200 ms: a startup process waiting for WAL from a vanished primary sometimes sleeps
    /// through the first signal for the whole `wal_retrieve_retry_interval` (measured here: 5 s in one
    /// run of five), and `pg_promote(wait => true)` only checks every 100 ms.
    #[instrument(skip(self), fields(member = %self.settings.member))]
    pub async fn promote(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + PROMOTE_TIMEOUT;
        let mut signalled = false;
        let mut last_signal = tokio::time::Instant::now();
        loop {
            match self.in_recovery().await {
                Some(false) if signalled => {
                    info!("promoted");
                    return Ok(());
                }
                Some(false) => {
                    return Err(Error::Refused("promote: the server is not in recovery"));
                }
                Some(true) if !signalled || last_signal.elapsed() >= Duration::from_millis(200) => {
                    let sent = self
                        .with_client("pg_promote", async |c| {
                            Ok(c.query_one("SELECT pg_catalog.pg_promote(false)", &[])
                                .await?
                                .get::<_, bool>(0))
                        })
                        .await;
                    match sent {
                        Ok(true) => {}
                        // Recovery may have ended between the two queries: the next check tells.
                        Ok(false) | Err(Error::Sql { .. }) if signalled => {}
                        Ok(false) => {
                            return Err(Error::Refused("pg_promote could not signal the server"));
                        }
                        Err(err) => return Err(err),
                    }
                    signalled = true;
                    last_signal = tokio::time::Instant::now();
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "promotion",
                    timeout: PROMOTE_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// On the primary: a physical slot (reserving WAL at once) for every member in `members` except this
    /// one, and drops the slots of this cluster's members no longer listed. Only slots named like this
    /// cluster's members (`<cluster>_<ordinal>`) are dropped, never other slots (a user's, a backup
    /// tool's); an active one is left for the next call.
    #[instrument(skip(self), fields(member = %self.settings.member))]
    pub async fn ensure_slots(&mut self, members: &[String]) -> Result<()> {
        let own = slot_name(&self.settings.member);
        let wanted: BTreeSet<String> = members
            .iter()
            .map(|m| slot_name(m))
            .filter(|s| *s != own)
            .collect();
        let prefix = format!("{}_", slot_name(&self.settings.cluster));
        let existing: Vec<(String, bool)> = self
            .with_client("list slots", async |c| {
                let rows = c
                    .query("SELECT slot_name::text, active FROM pg_replication_slots WHERE slot_type = 'physical'", &[])
                    .await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
            .await?;
        let (create, drop) = plan_slots(&wanted, &existing, &prefix);
        for name in create {
            info!(slot = %name, "creating replication slot");
            self.with_client("create slot", async |c| {
                c.execute(
                    "SELECT pg_catalog.pg_create_physical_replication_slot($1, true)",
                    &[&name],
                )
                .await
            })
            .await?;
        }
        for name in drop {
            info!(slot = %name, "dropping replication slot of a departed member");
            self.with_client("drop slot", async |c| {
                c.execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&name])
                    .await
            })
            .await?;
        }
        Ok(())
    }

    /// On the primary, idempotently: the superuser's password, the replication role (`LOGIN REPLICATION`,
    /// plus EXECUTE on the four functions `pg_rewind` needs and on `pg_control_checkpoint()`, and
    /// membership in `pg_checkpoint`, so rewinds need no superuser over the network), the application role and its database. Passwords are sent as SCRAM verifiers computed
    /// here, never as clear text (statement logging cannot leak them).
    #[instrument(skip(self), fields(member = %self.settings.member))]
    pub async fn bootstrap_roles(&mut self) -> Result<()> {
        let c = self.creds.clone();
        let verifier = |pw: &str| postgres_protocol::password::scram_sha_256(pw.as_bytes());
        let su = (
            c.superuser.username.clone(),
            verifier(&c.superuser.password),
        );
        let repl = (
            c.replication.username.clone(),
            verifier(&c.replication.password),
        );
        let app = (c.app.username.clone(), verifier(&c.app.password));
        let db = c.database.clone();
        self.with_client("bootstrap roles", async |client| {
            client
                .batch_execute(
                    &render_sql(client, "ALTER ROLE %I WITH PASSWORD %L", &[&su.0, &su.1]).await?,
                )
                .await?;
            for ((name, pw), attrs) in [(&repl, "LOGIN REPLICATION"), (&app, "LOGIN")] {
                let exists = !client
                    .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[name])
                    .await?
                    .is_empty();
                let verb = if exists { "ALTER" } else { "CREATE" };
                let fmt = format!("{verb} ROLE %I WITH {attrs} PASSWORD %L");
                client
                    .batch_execute(&render_sql(client, &fmt, &[name, pw]).await?)
                    .await?;
            }
            for function in [
                "pg_catalog.pg_ls_dir(text, boolean, boolean)",
                "pg_catalog.pg_stat_file(text, boolean)",
                "pg_catalog.pg_read_binary_file(text)",
                "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
                "pg_catalog.pg_control_checkpoint()",
            ] {
                let fmt = format!("GRANT EXECUTE ON FUNCTION {function} TO %I");
                client
                    .batch_execute(&render_sql(client, &fmt, &[&repl.0]).await?)
                    .await?;
            }
            // pg_rewind's caller asks the source for a checkpoint right after a promotion (see rewind).
            let grant = render_sql(client, "GRANT pg_checkpoint TO %I", &[&repl.0]).await?;
            client.batch_execute(&grant).await?;
            if client
                .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
                .await?
                .is_empty()
            {
                client
                    .batch_execute(
                        &render_sql(client, "CREATE DATABASE %I OWNER %I", &[&db, &app.0]).await?,
                    )
                    .await?;
            }
            Ok(())
        })
        .await?;
        info!(replication = %c.replication.username, app = %c.app.username, database = %c.database, "roles ready");
        Ok(())
    }

    /// `pg_settings.context` of the given parameters (unknown names are absent).
    pub(super) async fn parameter_contexts(
        &self,
        names: &BTreeSet<String>,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let names: Vec<String> = names.iter().cloned().collect();
        self.with_client("parameter contexts", async |c| {
            let rows = c
                .query(
                    "SELECT name, context FROM pg_settings WHERE name = ANY($1)",
                    &[&names],
                )
                .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await
    }

    /// Whether the server is in recovery, `None` when it cannot say.
    pub(super) async fn in_recovery(&self) -> Option<bool> {
        self.with_client("pg_is_in_recovery", async |c| {
            Ok(c.query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
                .await?
                .get(0))
        })
        .await
        .inspect_err(|err| warn!(error = %err, "cannot read recovery state"))
        .ok()
    }

    pub(super) async fn reload(&self) -> Result<()> {
        self.with_client("pg_reload_conf", async |c| {
            c.execute("SELECT pg_catalog.pg_reload_conf()", &[]).await
        })
        .await
        .map(|_| ())
    }
}

/// Quotes identifiers (`%I`) and literals (`%L`) with the server's own `format()`.
async fn render_sql(
    client: &Client,
    fmt: &str,
    args: &[&String],
) -> Result<String, tokio_postgres::Error> {
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        std::iter::once(&fmt as &(dyn tokio_postgres::types::ToSql + Sync))
            .chain(
                args.iter()
                    .map(|a| *a as &(dyn tokio_postgres::types::ToSql + Sync)),
            )
            .collect();
    let placeholders: Vec<String> = (2..=params.len()).map(|i| format!("${i}::text")).collect();
    let sql = format!("SELECT format($1::text, {})", placeholders.join(", "));
    Ok(client.query_one(&sql, &params).await?.get(0))
}

/// Slots to create and to drop (pure).
fn plan_slots(
    wanted: &BTreeSet<String>,
    existing: &[(String, bool)],
    prefix: &str,
) -> (Vec<String>, Vec<String>) {
    let have: BTreeSet<&String> = existing.iter().map(|(n, _)| n).collect();
    let create = wanted
        .iter()
        .filter(|w| !have.contains(w))
        .cloned()
        .collect();
    // Only slots named like a member (`<cluster>_<ordinal>`) are pgpilot's to drop.
    let member_slot = |n: &str| {
        n.strip_prefix(prefix)
            .is_some_and(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
    };
    let drop = existing
        .iter()
        .filter(|(n, active)| !*active && member_slot(n) && !wanted.contains(n))
        .map(|(n, _)| n.clone())
        .collect();
    (create, drop)
}

async fn query_observation(c: &Client) -> Result<Observation, tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT pg_catalog.pg_is_in_recovery(),
                    current_setting('server_version_num')::int4,
                    CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
                         ELSE pg_catalog.pg_current_wal_lsn() END,
                    CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
                         ELSE pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END,
                    pg_catalog.pg_last_wal_receive_lsn(),
                    pg_catalog.pg_last_wal_replay_lsn(),
                    (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())::int4,
                    ARRAY(SELECT name FROM pg_catalog.pg_settings WHERE pending_restart ORDER BY name),
                    CASE WHEN pg_catalog.pg_is_in_recovery() THEN
                         (SELECT max(name) FROM pg_catalog.pg_ls_waldir()
                           WHERE name ~ '^[0-9A-F]{24}$') END",
            &[],
        )
        .await?;
    let in_recovery: bool = row.get(0);
    let version: i32 = row.get(1);
    let walfile: Option<String> = row.get(3);
    let checkpoint_tli: Option<i32> = row.get(6);
    let mut obs = Observation {
        in_recovery: Some(in_recovery),
        server_version: u32::try_from(version).ok(),
        current_lsn: lsn(row.get(2)),
        received_lsn: lsn(row.get(4)),
        replayed_lsn: lsn(row.get(5)),
        pending_restart: row.get(7),
        ..Observation::default()
    };
    let checkpoint_tli = checkpoint_tli.and_then(|t| u32::try_from(t).ok());
    if in_recovery {
        let rows = c
            .query(
                "SELECT status, received_tli::int4, sender_host, sender_port::int4, slot_name
                   FROM pg_catalog.pg_stat_wal_receiver",
                &[],
            )
            .await?;
        obs.wal_receiver = rows.first().map(|r| WalReceiver {
            status: r.get(0),
            received_timeline: r
                .get::<_, Option<i32>>(1)
                .and_then(|t| u32::try_from(t).ok()),
            upstream_host: r.get(2),
            upstream_port: r
                .get::<_, Option<i32>>(3)
                .and_then(|p| u16::try_from(p).ok()),
            slot_name: r.get(4),
        });
        let received = obs.wal_receiver.as_ref().and_then(|w| w.received_timeline);
        // The newest WAL segment it holds: a promoted server that crashed before its first checkpoint
        // on the new timeline, started again as a standby, has no WAL receiver and the old timeline in
        // its checkpoint, yet wrote (and replays) WAL on the new one. Segments are only written on a
        // timeline the server is on (a received history file alone, as a standby that cannot follow a
        // fork fetches it, is not a segment).
        let newest_segment = row
            .get::<_, Option<String>>(8)
            .as_deref()
            .and_then(timeline_of_walfile);
        obs.timeline = received.max(checkpoint_tli).max(newest_segment);
    } else {
        obs.timeline = walfile
            .as_deref()
            .and_then(timeline_of_walfile)
            .or(checkpoint_tli);
        let rows = c
            .query(
                "SELECT application_name, client_addr::text, state, sync_state,
                        sent_lsn, flush_lsn, replay_lsn, reply_time::text
                   FROM pg_catalog.pg_stat_replication ORDER BY application_name",
                &[],
            )
            .await?;
        obs.replication = rows
            .iter()
            .map(|r| ReplicationRow {
                application_name: r.get::<_, Option<String>>(0).unwrap_or_default(),
                client_addr: r.get(1),
                state: r.get::<_, Option<String>>(2).unwrap_or_default(),
                sync_state: r.get::<_, Option<String>>(3).unwrap_or_default(),
                sent_lsn: lsn(r.get(4)),
                flush_lsn: lsn(r.get(5)),
                replay_lsn: lsn(r.get(6)),
                reply_time: r.get(7),
            })
            .collect();
        // Read after the rows: it bounds every commit a standby the rows show `sync` could have missed
        // (acknowledged before the configuration naming it took effect), so a new synchronous standby
        // is recorded only once it has flushed this far (issue 13 hole 2).
        obs.current_lsn = lsn(c
            .query_one("SELECT pg_catalog.pg_current_wal_lsn()", &[])
            .await?
            .get(0))
        .or(obs.current_lsn);
    }
    Ok(obs)
}

/// A `pg_lsn` column as a byte position.
fn lsn(value: Option<PgLsn>) -> Option<u64> {
    value.map(u64::from)
}

/// `16/B374D848` → byte position, for what the server's tools print (`pg_controldata`, history
/// files); SQL reads `pg_lsn` columns as [`PgLsn`]. Strict: it refuses halves over 32 bits.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u64::from(u32::MAX) && lo <= u64::from(u32::MAX)).then_some((hi << 32) | lo)
}

/// Byte position → `16/B374D848`, as PostgreSQL prints it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The timeline is the first 8 hex digits of a WAL file name.
fn timeline_of_walfile(name: &str) -> Option<u32> {
    u32::from_str_radix(name.get(..8)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parsing() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        assert_eq!(parse_lsn("0/3000148\n"), Some(0x300_0148));
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_lsn("1/"), None);
        assert_eq!(parse_lsn("100000000/0"), None);
        for text in ["0/0", "16/B374D848", "0/3000148"] {
            assert_eq!(format_lsn(parse_lsn(text).unwrap()), text);
        }
    }

    #[test]
    fn timeline_from_walfile_name() {
        assert_eq!(timeline_of_walfile("000000020000000000000003"), Some(2));
        assert_eq!(timeline_of_walfile("0000001A0000000000000003"), Some(26));
        assert_eq!(timeline_of_walfile("short"), None);
    }

    #[test]
    fn slots_the_user_made_are_never_dropped_even_with_the_cluster_prefix() {
        // Issue 13 hole 10: only slots named like a member (`<cluster>_<ordinal>`) are pgpilot's.
        let wanted: BTreeSet<String> = ["db_1".to_owned()].into();
        let existing = vec![
            ("db_backup".to_owned(), false),
            ("db_9".to_owned(), false),
            ("db_1".to_owned(), false),
        ];
        let (create, drop) = plan_slots(&wanted, &existing, "db_");
        assert!(create.is_empty());
        assert_eq!(drop, ["db_9"]);
    }

    #[test]
    fn slot_plan_creates_missing_and_drops_only_inactive_departed_members() {
        let wanted: BTreeSet<String> = ["db_1".to_owned(), "db_2".to_owned()].into();
        let existing = vec![
            ("db_1".to_owned(), true),
            ("db_3".to_owned(), false),
            ("db_4".to_owned(), true),
            ("backup_tool".to_owned(), false),
        ];
        let (create, drop) = plan_slots(&wanted, &existing, "db_");
        assert_eq!(create, ["db_2"]);
        assert_eq!(
            drop,
            ["db_3"],
            "active db_4 waits; foreign backup_tool is never touched"
        );
    }
}
