//! The split-brain probe: what one member's PostgreSQL says about itself, every ~100 ms.
//!
//! [`run`] is the loop the `pgpilot-probe` binary runs inside a pod's network namespace (so a pod whose
//! link is cut, or whose node is partitioned, is still observed over its own loopback). Each tick it asks,
//! as the superuser: in recovery? `default_transaction_read_only`? WAL receiver streaming? — and, on a
//! server that claims to be a writable primary, performs a real write to a probe table. A member is
//! *writable* only when that write commits. The write uses `synchronous_commit = local`: the probe asks
//! "does this server accept writes", which a stale primary in synchronous mode does even while its
//! commits wait for a standby; it must not block on the standby itself.
//!
//! Every tick is bounded by a timeout (a frozen server yields a failed sample, and a fresh connection on
//! the next tick); the loop stops at EOF on stdin (its supervisor is gone) or after a maximum run time.

use std::time::Duration;

use pgpilot_crds::contract::error_chain;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, error::SqlState};

use super::pg::{self, Conn, PgError, Target};
use crate::clock::{Micros, now_us};

/// One observation of one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Which probe took it: `<member>@<pod uid prefix>`, one stream per pod incarnation.
    pub stream: String,
    /// When the tick started and ended (host clock).
    pub t_us: Micros,
    pub end_us: Micros,
    /// Not in recovery, not read-only, and the probe's write committed.
    pub writable: bool,
    /// When the server executed the committed write (`clock_timestamp()`), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrote_at_us: Option<Micros>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_recovery: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// A replica's WAL receiver reports `streaming`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Sample {
    /// The instant this sample proves the member writable, if it does.
    pub fn writable_at(&self) -> Option<Micros> {
        if self.writable {
            self.wrote_at_us.or(Some(self.end_us))
        } else {
            None
        }
    }
}

/// Where and how often to probe.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub stream: String,
    /// The server, as the superuser.
    pub target: Target,
    pub interval: Duration,
    /// Upper bound of one tick, connection included.
    pub timeout: Duration,
    /// The loop ends by itself after this long.
    pub max_run: Duration,
}

const STATE_SQL: &str = "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')::bool, \
     coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver LIMIT 1), false)";
const WRITE_SQL: &str = "INSERT INTO pgpilot_probe (stream, beat) VALUES ($1, clock_timestamp()) \
     ON CONFLICT (stream) DO UPDATE SET beat = excluded.beat \
     RETURNING (extract(epoch FROM clock_timestamp()) * 1000000)::int8";
const CREATE_SQL: &str =
    "CREATE TABLE IF NOT EXISTS pgpilot_probe (stream text PRIMARY KEY, beat timestamptz NOT NULL)";

async fn connect(o: &ProbeOptions) -> Result<Conn, PgError> {
    let conn = pg::connect(&o.target, "pgpilot-probe", o.timeout).await?;
    // The probe's own writes must never wait for a standby (see the module docs).
    conn.client
        .batch_execute("SET synchronous_commit = local")
        .await
        .map_err(PgError::query("setting synchronous_commit"))?;
    Ok(conn)
}

/// One observation on an open connection.
async fn observe(client: &Client, stream: &str, sample: &mut Sample) -> Result<(), PgError> {
    let row = client
        .query_one(STATE_SQL, &[])
        .await
        .map_err(PgError::query("reading the server state"))?;
    let (in_recovery, read_only, streaming): (bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2));
    sample.in_recovery = Some(in_recovery);
    sample.read_only = Some(read_only);
    sample.streaming = Some(streaming);
    if in_recovery || read_only {
        return Ok(());
    }
    let wrote = match client.query_one(WRITE_SQL, &[&stream]).await {
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            client
                .batch_execute(CREATE_SQL)
                .await
                .map_err(PgError::query("creating the probe table"))?;
            client.query_one(WRITE_SQL, &[&stream]).await
        }
        other => other,
    };
    match wrote {
        Ok(row) => {
            sample.writable = true;
            sample.wrote_at_us = Some(row.get(0));
        }
        // Refused by the server: up, but not accepting writes (fenced, shutting down …).
        Err(e) if e.as_db_error().is_some() => sample.error = Some(format!("write refused: {e}")),
        Err(source) => {
            return Err(PgError::Query {
                what: "writing the probe row",
                source,
            });
        }
    }
    Ok(())
}

/// Probes until `stop` resolves or `max_run` has elapsed, handing every sample to `emit`.
pub async fn run(
    o: &ProbeOptions,
    stop: impl std::future::Future<Output = ()>,
    mut emit: impl FnMut(&Sample),
) {
    let started = tokio::time::Instant::now();
    let mut conn: Option<Conn> = None;
    let mut ticker = tokio::time::interval(o.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    while started.elapsed() < o.max_run {
        tokio::select! {
            () = &mut stop => return,
            _ = ticker.tick() => {}
        }
        let mut sample = Sample {
            stream: o.stream.clone(),
            t_us: now_us(),
            end_us: 0,
            writable: false,
            wrote_at_us: None,
            in_recovery: None,
            read_only: None,
            streaming: None,
            error: None,
        };
        let tick = async {
            if conn.is_none() {
                conn = Some(connect(o).await?);
            }
            match &conn {
                Some(c) => observe(&c.client, &o.stream, &mut sample).await,
                None => Ok(()),
            }
        };
        let outcome = match tokio::time::timeout(o.timeout, tick).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Timeout(o.timeout)),
        };
        if let Err(e) = outcome {
            // Any failure: start over with a fresh connection on the next tick.
            conn = None;
            sample.writable = false;
            sample.wrote_at_us = None;
            sample.error = Some(error_chain(&e));
        }
        sample.end_us = now_us();
        emit(&sample);
    }
}
