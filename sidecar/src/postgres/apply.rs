//! Applying a [`Desired`] configuration: read the files in PGDATA → plan (pure, [`super::config`]) →
//! write what differs and reload. IO: PGDATA's `postgresql.conf`, `pg_hba.conf`, `standby.signal`, and
//! on a running server `pg_settings` and `pg_reload_conf()`.

use tracing::{info, instrument};

use super::{
    Desired, Error, Postgres, Result, Role,
    config::{Change, changed_parameters, parse_conf, plan_change, render},
    tools::write_private,
};

impl Postgres {
    /// Writes `postgresql.conf`, `pg_hba.conf` and `standby.signal` for `desired` and applies them:
    ///
    /// - nothing differs: [`Change::Unchanged`];
    /// - the server is stopped: files written, [`Change::Reloaded`] (the next start reads them);
    /// - running: `pg_reload_conf()`; [`Change::NeedsRestart`] lists the changed parameters of
    ///   `postmaster` context (reported as `pending_restart` until a restart). A replica told to be
    ///   primary is not changed here: that is [`Postgres::promote`].
    /// - a running primary told to be a replica: [`Error::Refused`], nothing written (stop it first).
    /// - running primary: the slots of `desired.member_slots` are ensured ([`Postgres::ensure_slots`]).
    ///
    /// Safety: with [`Role::Primary`] the next start is writable — call it only while holding the Lease
    /// (docs/design.md L4).
    #[instrument(skip(self, desired), fields(member = %self.settings.member))]
    pub async fn configure(&mut self, desired: &Desired) -> Result<Change> {
        // A running primary is never given the replica role (issue 13 hole 1): `standby.signal` and an
        // empty `synchronous_standby_names` would be reloaded into a server that stays writable. It is
        // demoted by stopping it first.
        let running_recovery = if self.is_running() {
            Some(self.in_recovery().await.ok_or(Error::NotRunning)?)
        } else {
            None
        };
        if matches!(desired.role, Role::Replica { .. }) && running_recovery == Some(false) {
            return Err(Error::Refused(
                "a running primary is never reconfigured as a replica: it is stopped (demoted) first",
            ));
        }
        let rendered = render(&self.settings, desired, &self.creds);
        let data = self.settings.data_dir.clone();
        let conf_path = data.join("postgresql.conf");
        let hba_path = data.join("pg_hba.conf");
        let signal_path = data.join("standby.signal");
        let old_conf = std::fs::read_to_string(&conf_path).unwrap_or_default();
        let old_hba = std::fs::read_to_string(&hba_path).unwrap_or_default();
        let changed = changed_parameters(&parse_conf(&old_conf), &rendered.parameters);
        let hba_changed = old_hba != rendered.pg_hba_conf;
        let signal_changed = signal_path.exists() != rendered.standby_signal;

        if old_conf != rendered.postgresql_conf {
            self.replace_file(&conf_path, &rendered.postgresql_conf)?;
        }
        if hba_changed {
            self.replace_file(&hba_path, &rendered.pg_hba_conf)?;
        }
        if signal_changed {
            if rendered.standby_signal {
                self.write_standby_signal()?;
            } else {
                std::fs::remove_file(&signal_path).map_err(|source| Error::Io {
                    context: format!("remove {}", signal_path.display()),
                    source,
                })?;
            }
        }

        let Some(in_recovery) = running_recovery else {
            let any = !changed.is_empty() || hba_changed || signal_changed;
            return Ok(if any {
                Change::Reloaded
            } else {
                Change::Unchanged
            });
        };
        let contexts = if changed.is_empty() {
            Default::default()
        } else {
            self.parameter_contexts(&changed).await?
        };
        let change = plan_change(&changed, hba_changed, &contexts);
        if change != Change::Unchanged {
            self.reload().await?;
            info!(?change, changed = ?changed, hba_changed, "configuration applied");
        }
        if matches!(desired.role, Role::Primary) && !in_recovery {
            self.ensure_slots(&desired.member_slots).await?;
        }
        Ok(change)
    }

    /// Replaces a file atomically (write a temporary sibling, then rename), owned by `run_as`, mode 0600.
    fn replace_file(&self, path: &std::path::Path, contents: &str) -> Result<()> {
        let mut tmp = path.to_path_buf().into_os_string();
        tmp.push(".pgpilot-tmp");
        let tmp = std::path::PathBuf::from(tmp);
        write_private(&tmp, contents)?;
        self.chown(&tmp)?;
        std::fs::rename(&tmp, path).map_err(|source| Error::Io {
            context: format!("rename to {}", path.display()),
            source,
        })
    }
}
