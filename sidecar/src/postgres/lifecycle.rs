//! The multi-step sequences the HA loop runs as one action, built from the primitives: bootstrap a new
//! cluster, clone a replica, rejoin a former primary. IO: everything the primitives do. Each returns
//! with the server running in the wanted role, or an error with the server stopped.

use tracing::{info, instrument, warn};

use super::{Desired, Error, Postgres, Result, Role, StopMode};

/// How [`Postgres::rejoin`] made the member a replica again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejoined {
    /// `pg_rewind` (or "no rewind required") kept the data directory.
    Rewound,
    /// The data directory was wiped and cloned again.
    Recloned,
}

impl Postgres {
    /// A brand-new cluster: `initdb`, configuration for `desired` (must be [`Role::Primary`]; the caller
    /// holds the Lease, docs/design.md L4), start, roles and database, slots.
    #[instrument(skip(self, desired), fields(member = %self.settings.member))]
    pub async fn bootstrap_primary(&mut self, desired: &Desired) -> Result<()> {
        debug_assert!(matches!(desired.role, Role::Primary));
        self.initdb().await?;
        self.configure(desired).await?;
        self.start().await?;
        self.bootstrap_roles().await?;
        // Slots are created on a running primary only: apply once more now that it runs.
        self.configure(desired).await?;
        info!("bootstrapped a new cluster");
        Ok(())
    }

    /// A replica from scratch: clone `desired`'s upstream (leftovers of a failed clone are removed), write
    /// its configuration, start. `desired` must be a [`Role::Replica`].
    #[instrument(skip(self, desired), fields(member = %self.settings.member))]
    pub async fn clone_replica(&mut self, desired: &Desired) -> Result<()> {
        let Role::Replica { upstream, .. } = &desired.role else {
            return Err(not_a_replica());
        };
        self.basebackup(upstream, None).await?;
        self.configure(desired).await?;
        self.start().await
    }

    /// Makes a (former primary's or diverged replica's) data directory follow `desired`'s upstream:
    /// stop (fast) if running, `pg_rewind`, configure, start.
    ///
    /// The directory is wiped and cloned again only when `pg_rewind` itself ran and could not make it
    /// follow: the rewind failed half-way (WAL back to the divergence recycled, a half-done earlier
    /// rewind), or the rewound copy does not start — so a member never loops half-rewound. A failure
    /// before `pg_rewind` touches anything (the upstream unreachable, not yet a primary, a transient SQL
    /// error) returns the error with the data untouched: the caller retries later (issue 13 hole 13).
    #[instrument(skip(self, desired), fields(member = %self.settings.member))]
    pub async fn rejoin(&mut self, desired: &Desired) -> Result<Rejoined> {
        let Role::Replica { upstream, .. } = &desired.role else {
            return Err(not_a_replica());
        };
        self.stop(StopMode::Fast).await?;
        if self.is_initialized() {
            match self.rewind(upstream).await {
                Ok(()) => match self.configure_and_start(desired).await {
                    Ok(()) => return Ok(Rejoined::Rewound),
                    Err(err) => {
                        warn!(error = %err, category = err.category(), "the rewound copy does not start: re-cloning");
                        self.stop(StopMode::Immediate).await?;
                    }
                },
                // pg_rewind never ran: nothing was touched.
                Err(err) if self.is_initialized() => return Err(err),
                Err(err) => {
                    warn!(error = %err, category = err.category(), "pg_rewind failed: re-cloning");
                }
            }
        }
        self.wipe().await?;
        self.clone_replica(desired).await?;
        Ok(Rejoined::Recloned)
    }

    async fn configure_and_start(&mut self, desired: &Desired) -> Result<()> {
        self.configure(desired).await?;
        self.start().await
    }
}

fn not_a_replica() -> Error {
    Error::Refused("the desired role is not a replica")
}
