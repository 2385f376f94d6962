//! L7/L9: the role label and epoch annotation on the pods (pure).

/// One pod's role label and epoch annotation (L7), as read from the pod or as wanted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleMark {
    pub role: Option<String>,
    pub epoch: Option<u64>,
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
