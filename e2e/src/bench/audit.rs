//! API writes per minute in a window, from the apiserver's audit log ([`crate::audit`]): the agents'
//! ServiceAccount, and every ServiceAccount of the namespace (the agents plus pgpilot's operator).

use anyhow::Result;

use crate::{audit, clock::Micros};

/// (the agents' writes per minute, all of the namespace's ServiceAccounts' writes per minute) in
/// `[from, to)`.
pub fn writes_per_minute(from: Micros, to: Micros, ns: &str, agent_sa: &str) -> Result<(f64, f64)> {
    let ns_prefix = format!("system:serviceaccount:{ns}:");
    let agent_user = format!("{ns_prefix}{agent_sa}");
    let writes = audit::writes_between(from, to, &ns_prefix)?;
    let per_min = |n: usize| n as f64 * 60.0 / ((to - from) as f64 / 1e6);
    let agent = writes.iter().filter(|w| w.user == agent_user).count();
    Ok((per_min(agent), per_min(writes.len())))
}
