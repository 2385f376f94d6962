//! The writer: an application inserting sequential ids through the cluster's `-rw` Service, recording
//! every id whose commit was acknowledged.
//!
//! It behaves like a careful application: short connect timeout, a client-side bound on each statement,
//! reconnect on any error. Each id is tried once; a statement that failed or timed out after it was sent
//! leaves its id *in doubt* (it may or may not have committed) and the next statement uses the next id.
//!
//! The statement bound is enforced on the client, by dropping the connection, and never with
//! `statement_timeout` or a cancel request: PostgreSQL answers a *cancelled* wait for a synchronous standby
//! with success (and a warning) although the commit was not replicated, which would count a write that
//! synchronous replication never guaranteed as acknowledged.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use pgpilot_crds::contract::error_chain;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info};

pub use super::pg::Target;
use super::{
    pg::{self, Conn, PgError},
    verdict::{Ack, Event},
};
use crate::clock::now_us;

/// Pace and bounds of the writer.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Time between two inserts (their resolution bounds every unavailability the writer measures).
    pub every: Duration,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    /// Wait after a failure before reconnecting.
    pub backoff: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            every: Duration::from_millis(20),
            connect_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(50),
        }
    }
}

/// What the writer recorded so far.
#[derive(Clone, Debug, Default)]
pub struct Log {
    pub acks: Vec<Ack>,
    pub in_doubt: Vec<u64>,
    /// Errors, recorded when the message changes (not once per retry).
    pub errors: Vec<Event>,
    /// The first id this writer used (ids below it were written by an earlier writer).
    pub first_id: u64,
}

/// A running writer; [`Writer::stop`] ends it and returns its [`Log`].
pub struct Writer {
    log: Arc<Mutex<Log>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

const TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS pgpilot_checker (id int8 PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())";
const INSERT_SQL: &str =
    "INSERT INTO pgpilot_checker (id) VALUES ($1) RETURNING host(inet_server_addr())";

const APPLICATION: &str = "pgpilot-checker";

impl Writer {
    /// Starts writing through `target`, continuing after the highest id already in the table.
    pub fn start(target: Target, pace: Pace) -> Self {
        let log = Arc::new(Mutex::new(Log::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(write_loop(target, pace, Arc::clone(&log), stopped));
        Self { log, stop, task }
    }

    /// A copy of what was recorded so far.
    pub fn snapshot(&self) -> Log {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// When the first acknowledgement at or after `since_us` arrived, if one did.
    pub fn first_ack_since(&self, since_us: i64) -> Option<i64> {
        let log = self.log.lock().ok()?;
        log.acks
            .iter()
            .rev()
            .take_while(|a| a.at_us >= since_us)
            .last()
            .map(|a| a.at_us)
    }

    /// When the first acknowledgement at or after `since_us` by a server other than `not_from` arrived.
    pub fn first_ack_since_not_from(&self, since_us: i64, not_from: &str) -> Option<i64> {
        let log = self.log.lock().ok()?;
        log.acks
            .iter()
            .rev()
            .take_while(|a| a.at_us >= since_us)
            .filter(|a| a.server != not_from)
            .last()
            .map(|a| a.at_us)
    }

    /// Stops writing and returns the log.
    pub async fn stop(self) -> Log {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

async fn write_loop(
    target: Target,
    pace: Pace,
    log: Arc<Mutex<Log>>,
    mut stopped: watch::Receiver<bool>,
) {
    let record_error = |e: &PgError| {
        let text = error_chain(e);
        if let Ok(mut l) = log.lock()
            && l.errors.last().is_none_or(|last| last.what != text)
        {
            debug!(error = %text, "writer");
            l.errors.push(Event {
                at_us: now_us(),
                what: text,
            });
        }
    };
    let mut next_id: Option<u64> = None;
    let mut conn: Option<Conn> = None;
    let mut ticker = tokio::time::interval(pace.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stopped.borrow() {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = ticker.tick() => {}
        }
        let Some(c) = &conn else {
            match open(&target, pace, next_id.is_none()).await {
                Ok((c, max_id)) => {
                    if next_id.is_none() {
                        let first = max_id + 1;
                        info!(first_id = first, host = %target.host, "writer connected");
                        if let Ok(mut l) = log.lock() {
                            l.first_id = first;
                        }
                        next_id = Some(first);
                    }
                    conn = Some(c);
                }
                Err(e) => {
                    record_error(&e);
                    tokio::time::sleep(pace.backoff).await;
                }
            }
            continue;
        };
        let Some(id) = next_id else { continue };
        next_id = Some(id + 1);
        let sent = tokio::time::timeout(
            pace.statement_timeout,
            c.client
                .query_one(INSERT_SQL, &[&i64::try_from(id).unwrap_or(i64::MAX)]),
        )
        .await;
        match sent {
            Ok(Ok(row)) => {
                let server: Option<String> = row.get(0);
                if let Ok(mut l) = log.lock() {
                    l.acks.push(Ack {
                        id,
                        at_us: now_us(),
                        server: server.unwrap_or_default(),
                    });
                }
            }
            Ok(Err(source)) => {
                if let Ok(mut l) = log.lock() {
                    l.in_doubt.push(id);
                }
                record_error(&PgError::Query {
                    what: "inserting",
                    source,
                });
                conn = None;
                tokio::time::sleep(pace.backoff).await;
            }
            Err(_) => {
                if let Ok(mut l) = log.lock() {
                    l.in_doubt.push(id);
                }
                record_error(&PgError::Timeout(pace.statement_timeout));
                conn = None;
            }
        }
    }
}

/// Connects, makes sure the table exists and, for a fresh writer, reads the highest id already written.
async fn open(target: &Target, pace: Pace, read_max: bool) -> Result<(Conn, u64), PgError> {
    let bounded = async {
        let conn = pg::connect(target, APPLICATION, pace.connect_timeout).await?;
        conn.client
            .batch_execute(TABLE_SQL)
            .await
            .map_err(PgError::query("creating the table"))?;
        let max_id = if read_max {
            let row = conn
                .client
                .query_one("SELECT coalesce(max(id), 0) FROM pgpilot_checker", &[])
                .await
                .map_err(PgError::query("reading the highest id"))?;
            u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)
        } else {
            0
        };
        Ok((conn, max_id))
    };
    tokio::time::timeout(pace.statement_timeout + pace.connect_timeout, bounded)
        .await
        .map_err(|_| PgError::Timeout(pace.statement_timeout + pace.connect_timeout))?
}

/// The ids at or above `from_id` that the server behind `target` holds, checked to be the server at
/// `expected_server` (the final primary's pod IP) so the loss is computed against the right member.
pub async fn final_ids(
    target: &Target,
    from_id: u64,
    expected_server: &str,
) -> Result<BTreeSet<u64>, PgError> {
    let conn = pg::connect(target, APPLICATION, Duration::from_secs(2)).await?;
    let row = conn
        .client
        .query_one("SELECT host(inet_server_addr())", &[])
        .await
        .map_err(PgError::query("reading the server address"))?;
    let got: Option<String> = row.get(0);
    let got = got.unwrap_or_default();
    if got != expected_server {
        return Err(PgError::WrongServer {
            got,
            expected: expected_server.to_owned(),
        });
    }
    let rows = conn
        .client
        .query(
            "SELECT id FROM pgpilot_checker WHERE id >= $1",
            &[&i64::try_from(from_id).unwrap_or(i64::MAX)],
        )
        .await
        .map_err(PgError::query("reading the ids"))?;
    Ok(rows
        .iter()
        .filter_map(|r| u64::try_from(r.get::<_, i64>(0)).ok())
        .collect())
}
