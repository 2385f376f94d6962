//! The `postgres` child: start (and wait until it accepts connections), stop, fence.
//! IO: spawns and signals the postmaster; reads and may remove a stale `postmaster.pid`.

use std::{path::Path, process::Stdio, time::Duration};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{process::Command, time::Instant};
use tracing::{info, instrument, warn};

use super::{Error, Postgres, Result, StopMode};

/// Environment variables that would silently redirect the server's tools.
const CLEARED_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGOPTIONS",
];

impl Postgres {
    /// A command for one of the server's programs: run as `run_as` when set, without PG* client
    /// variables, stdin closed.
    pub(super) fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.settings.bin(tool));
        if let Some((uid, gid)) = self.settings.run_as {
            cmd.uid(uid).gid(gid);
        }
        for var in CLEARED_ENV {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Spawns `postgres -D PGDATA` as a child and waits until it accepts superuser connections over the
    /// socket, at most `start_timeout`.
    ///
    /// The role comes from the files (`standby.signal` or not): render them with
    /// [`Postgres::configure`] first. A `postmaster.pid` left by a dead server is removed; one naming a live
    /// `postgres` process fails with [`Error::AlreadyRunning`].
    ///
    /// Failure modes: [`Error::Exited`] when the server died while starting (the child is gone);
    /// [`Error::Timeout`] when it is still not accepting connections — it is left running (crash
    /// recovery or a replica catching up to consistency may simply be slow): observe it, or stop it.
    #[instrument(skip(self), fields(member = %self.settings.member))]
    pub async fn start(&mut self) -> Result<()> {
        if let Some(pid) = self.child.as_ref().and_then(tokio::process::Child::id)
            && self.is_running()
        {
            return Err(Error::AlreadyRunning { pid });
        }
        self.crashed = None;
        self.clear_stale_pid_file()?;
        self.restrict_data_dir()?;
        self.ensure_dir(&self.settings.socket_dir.clone(), 0o2775)?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(&self.settings.data_dir);
        let sink = crate::logsink::writer();
        match &self.settings.log_file {
            Some(path) => {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| Error::Io {
                        context: format!("open {}", path.display()),
                        source,
                    })?;
                let err = log.try_clone().map_err(|source| Error::Io {
                    context: "dup log file".into(),
                    source,
                })?;
                cmd.stdout(log).stderr(err);
            }
            // Through the sidecar's log writer when it has one: a container log that is not drained
            // drops the server's lines instead of blocking its processes (crate::logsink).
            None if sink.is_some() => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            None => {
                cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            }
        }
        let mut child = cmd.spawn().map_err(|source| Error::Io {
            context: "spawn postgres".into(),
            source,
        })?;
        // Only the piped arm above leaves the child's stdout and stderr to take.
        if let Some(to) = sink {
            if let Some(out) = child.stdout.take() {
                tokio::spawn(crate::logsink::forward(out, to.clone()));
            }
            if let Some(err) = child.stderr.take() {
                tokio::spawn(crate::logsink::forward(err, to));
            }
        }
        info!(pid = child.id(), "postgres started");
        self.child = Some(child);
        self.wait_ready(self.settings.start_timeout).await
    }

    /// Polls until a superuser connection succeeds, the child exits, or `timeout` passes.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // The server runs (crash recovery, a replica reaching consistency): progress.
            self.heartbeat.beat();
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(Error::Exited {
                    status: status.to_string(),
                });
            }
            match self.connect().await {
                Ok(client) => {
                    *self.client.lock().await = Some(client);
                    info!(member = %self.settings.member, "postgres accepts connections");
                    return Ok(());
                }
                Err(err) if Instant::now() >= deadline => {
                    warn!(member = %self.settings.member, error = %err, "postgres not ready in time");
                    return Err(Error::Timeout {
                        what: "postgres start",
                        timeout,
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Stops the server and waits for the postmaster to exit. `Fast` escalates to `Immediate` after
    /// `stop_timeout`, and that to SIGKILL after another `stop_timeout`. No child: nothing to do.
    #[instrument(skip(self), fields(member = %self.settings.member))]
    pub async fn stop(&mut self, mode: StopMode) -> Result<()> {
        *self.client.lock().await = None;
        self.crashed = None;
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let Some(pid) = child.id() else {
            return Ok(());
        };
        let timeout = self.settings.stop_timeout;
        let steps: &[Signal] = match mode {
            StopMode::Fast => &[Signal::SIGINT, Signal::SIGQUIT, Signal::SIGKILL],
            StopMode::Immediate => &[Signal::SIGQUIT, Signal::SIGKILL],
        };
        for signal in steps {
            send(pid, *signal)?;
            let waited = self
                .heartbeat
                .while_running(tokio::time::timeout(timeout, child.wait()));
            match waited.await {
                Ok(Ok(status)) => {
                    info!(%status, ?signal, "postgres stopped");
                    return Ok(());
                }
                Ok(Err(source)) => {
                    return Err(Error::Io {
                        context: "wait for postgres".into(),
                        source,
                    });
                }
                Err(_) => warn!(
                    ?signal,
                    ?timeout,
                    "postgres did not stop in time; escalating"
                ),
            }
        }
        self.child = Some(child);
        Err(Error::Timeout {
            what: "postgres stop",
            timeout,
        })
    }

    /// Stops accepting writes now (docs/design.md L5): an immediate shutdown. SIGQUIT makes the postmaster
    /// terminate every backend at once — no transaction commits after the signal is delivered, including
    /// those waiting for a synchronous standby, and new connections are refused — then exit without a
    /// checkpoint. Chosen over `default_transaction_read_only` (a session can override it) and over
    /// killing only the postmaster (its backends could keep running). The data stays crash-consistent;
    /// the next start runs crash recovery, and a member that lost the Lease meanwhile rejoins with
    /// [`Postgres::rewind`].
    #[instrument(skip(self), fields(member = %self.settings.member))]
    pub async fn fence(&mut self) -> Result<()> {
        warn!("fencing: immediate shutdown");
        self.stop(StopMode::Immediate).await
    }

    /// Removes `postmaster.pid` when the process it names is not a live `postgres` (a crash or a container
    /// restart leaves it, and the pid may since belong to another process).
    fn clear_stale_pid_file(&self) -> Result<()> {
        let path = self.settings.data_dir.join("postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let pid = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok());
        if let Some(pid) = pid
            && is_postgres_process(pid)
        {
            return Err(Error::AlreadyRunning { pid });
        }
        info!(path = %path.display(), ?pid, "removing stale postmaster.pid");
        std::fs::remove_file(&path).map_err(|source| Error::Io {
            context: format!("remove {}", path.display()),
            source,
        })
    }

    /// PostgreSQL refuses to start on a data directory with more than `u=rwx,g=rx`; a volume's group
    /// ownership change (the pod's `fsGroup`) can add group write. Resets it to 0700 when it has more.
    fn restrict_data_dir(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = &self.settings.data_dir;
        let io = |source| Error::Io {
            context: format!("permissions of {}", data.display()),
            source,
        };
        let mode = std::fs::metadata(data).map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o027 != 0 {
            warn!(data_dir = %data.display(), mode = format!("{mode:o}"), "restricting the data directory to 0700");
            std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        Ok(())
    }

    /// Creates `dir` if missing, owned by `run_as`.
    pub(super) fn ensure_dir(&self, dir: &Path, mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if dir.is_dir() {
            return Ok(());
        }
        let io = |source| Error::Io {
            context: format!("create {}", dir.display()),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        self.chown(dir)
    }

    pub(super) fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.settings.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| Error::Io {
                context: format!("chown {}", path.display()),
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(tokio::process::Child::id) {
            warn!(member = %self.settings.member, pid, "dropping a running postgres: immediate shutdown");
            // Best effort: the process is going away; the signal is the point, not its result.
            let _ = send(pid, Signal::SIGQUIT);
        }
    }
}

fn send(pid: u32, signal: Signal) -> Result<()> {
    let raw = i32::try_from(pid).map_err(|_| Error::Signal(format!("pid {pid} out of range")))?;
    kill(Pid::from_raw(raw), signal)
        .map_err(|errno| Error::Signal(format!("{signal} to {pid}: {errno}")))
}

/// Whether `pid` is alive and runs a `postgres` binary.
fn is_postgres_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let name = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
        name.starts_with(b"postgres") || name.starts_with(b"postmaster")
    })
}
