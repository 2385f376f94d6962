//! L5: the holder stops accepting writes before anyone else may take over. IO: the Lease (renewals
//! during long actions), signals to the postmaster.
//!
//! Three mechanisms, from the most to the least cooperative:
//! - [`renewing`] keeps renewing while a long action (initdb, start, promote) runs and gives up at the
//!   deadline, so the caller fences;
//! - [`HaLoop::fence`] is the loop's own answer to a missed deadline ([`Decision::Fence`]);
//! - [`watchdog`] is a separate task armed with the deadline and the postmaster's pid: it sends SIGQUIT
//!   (immediate shutdown: no commit after delivery) when the deadline passes, even if the loop is stuck
//!   in a slow call.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, warn};

use super::{HaError, HaLoop, Lineage, Phase};
use crate::election::{Timings, fencing_deadline_of, lease::Elector};

impl HaLoop {
    /// L5: stop accepting writes now.
    pub(super) async fn fence(&mut self) -> Result<(), HaError> {
        error!(member = %self.me, "no successful Lease renewal within renewDeadline: fencing PostgreSQL");
        self.member.phase = Phase::Fenced;
        self.member.lineage = Lineage::FormerPrimary;
        self.pg.fence().await?;
        Ok(())
    }

    /// Arms the fencing watchdog with the fencing deadline whenever PostgreSQL serves as primary (L5):
    /// the deadline `decide` fences by, from the last confirmed write (kept across a lost race) or the
    /// last failsafe hold — paused or not.
    pub(super) fn arm_watchdog(&self) {
        let deadline = fencing_deadline_of(
            self.elector.renewed_sent_at(),
            self.elector.last_renewal(),
            self.mem.failsafe_held_at,
            &self.timings,
        );
        let armed = match (deadline, self.pg.pid()) {
            (Some(deadline), Some(pid)) if self.member.phase == Phase::Primary => {
                Some((deadline, pid))
            }
            _ => None,
        };
        self.watchdog.send_if_modified(|current| {
            let changed = *current != armed;
            *current = armed;
            changed
        });
    }
}

/// Runs `op` while renewing the Lease every [`Timings::renew_interval`]. Fails with
/// [`HaError::DeadlinePassed`] (dropping `op`) once no renewal has succeeded within `renewDeadline` (L5):
/// the caller fences.
pub(super) async fn renewing<T>(
    elector: &mut Elector,
    timings: &Timings,
    what: &'static str,
    op: impl Future<Output = T>,
) -> Result<T, HaError> {
    let interval = timings.renew_interval();
    let mut op = std::pin::pin!(op);
    loop {
        let (Some(sent), Some(deadline)) = (
            elector.renewed_sent_at(),
            fencing_deadline_of(
                elector.renewed_sent_at(),
                elector.last_renewal(),
                None,
                timings,
            ),
        ) else {
            return Err(HaError::DeadlinePassed(what));
        };
        let next = (sent + interval).min(deadline);
        tokio::select! {
            out = &mut op => return Ok(out),
            () = tokio::time::sleep_until(next.into()) => {
                if Instant::now() >= deadline {
                    return Err(HaError::DeadlinePassed(what));
                }
                if let Err(e) = elector.renew(None, None).await {
                    warn!(error = %e, during = what, "renewal failed");
                    // Retry within the retry period, bounded by the deadline check above.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// L5's last line: fences the postmaster with SIGQUIT when the armed deadline passes.
pub(super) async fn watchdog(mut armed: watch::Receiver<Option<(Instant, u32)>>) {
    loop {
        let current = *armed.borrow_and_update();
        match current {
            None => {
                if armed.changed().await.is_err() {
                    return;
                }
            }
            Some((deadline, pid)) => {
                tokio::select! {
                    changed = armed.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep_until(deadline.into()) => {
                        if *armed.borrow() == Some((deadline, pid)) {
                            error!(pid, "renewal deadline passed with PostgreSQL still primary: watchdog fences it (SIGQUIT)");
                            if let Ok(raw) = i32::try_from(pid) {
                                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGQUIT);
                            }
                            // Disarmed until the loop arms it again.
                            let _ = armed.changed().await;
                        }
                    }
                }
            }
        }
    }
}
