//! L7/L9: the role label and epoch annotation on the pods, and the load-balance label (pure).

use pgpilot_crds::contract::BALANCED;

/// One pod's role label and epoch annotation (L7), and its load-balance label, as read from the pod or
/// as wanted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleMark {
    pub role: Option<String>,
    pub epoch: Option<u64>,
    /// `"true"` or `"false"` (`noLoadBalance`); `None` in a patch leaves the label alone.
    pub load_balance: Option<String>,
}

/// What this member's own pod should say: its role, the epoch it holds it under, and whether read
/// traffic may come to it (`noLoadBalance` keeps it out of `-ro` and `-r`).
pub fn wanted_mark(role: &str, epoch: Option<u64>, no_load_balance: bool) -> RoleMark {
    RoleMark {
        role: Some(role.into()),
        epoch,
        load_balance: Some(if no_load_balance { "false" } else { BALANCED }.into()),
    }
}

/// L9: the label patch this member's own pod needs, `None` when the pod already says it — pods are
/// patched on change only, never every loop.
pub fn role_patch(current: &RoleMark, wanted: &RoleMark) -> Option<RoleMark> {
    (current != wanted).then(|| wanted.clone())
}

/// L7: pods other than the new holder's that still carry the primary label: a stale primary's claim
/// the new holder overwrites once (to `replica`) so the `-rw` Service never routes to it.
pub fn stale_primaries<'a>(
    pods: impl IntoIterator<Item = (&'a str, &'a RoleMark)>,
    me: &str,
    primary_role: &str,
) -> Vec<String> {
    pods.into_iter()
        .filter(|(name, mark)| *name != me && mark.role.as_deref() == Some(primary_role))
        .map(|(name, _)| name.to_owned())
        .collect()
}
