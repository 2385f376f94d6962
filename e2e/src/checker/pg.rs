//! The checker's PostgreSQL connections, shared by the probe and the writer: one error type, one bounded
//! connect, and a connection whose driving task ends with it (so a frozen server does not leave a task
//! waiting on its socket).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// Where to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("connecting to {host}:{port}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the -rw Service reached {got}, expected the primary at {expected}")]
    WrongServer { got: String, expected: String },
}

impl PgError {
    /// A failed statement: `what` it was doing.
    pub fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Query { what, source }
    }
}

/// An open connection; the task driving it is aborted when it is dropped.
pub struct Conn {
    pub client: Client,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Connects to `t` as `application`, the whole handshake bounded by `timeout`.
pub async fn connect(t: &Target, application: &str, timeout: Duration) -> Result<Conn, PgError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.host)
        .port(t.port)
        .user(&t.user)
        .password(&t.password)
        .dbname(&t.dbname)
        .application_name(application)
        .connect_timeout(timeout);
    let (client, connection) = tokio::time::timeout(timeout, cfg.connect(NoTls))
        .await
        .map_err(|_| PgError::Timeout(timeout))?
        .map_err(|source| PgError::Connect {
            host: t.host.clone(),
            port: t.port,
            source,
        })?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Conn { client, driver })
}

/// The database system identifier of the server at `t` (`pg_control_system()`, any role): members of one
/// cluster share it, a server that ran its own `initdb` does not.
pub async fn system_identifier(t: &Target, timeout: Duration) -> Result<String, PgError> {
    let read = async {
        let conn = connect(t, "pgpilot-checker", timeout).await?;
        let row = conn
            .client
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await
            .map_err(PgError::query("reading the system identifier"))?;
        Ok(row.get::<_, String>(0))
    };
    tokio::time::timeout(timeout * 2, read)
        .await
        .map_err(|_| PgError::Timeout(timeout * 2))?
}
