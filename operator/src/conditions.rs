//! `status.conditions` as a list: find one, set one. Pure, no IO.
//!
//! Shared by the steps that write conditions ([`crate::switchover`] reads its own previous condition,
//! [`crate::status`] derives them all), so neither step depends on the other for it. The types and reasons
//! are `const`s in `pgpilot_crds::cluster::{condition, reason}`.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use pgpilot_crds::PostgresClusterStatus;

/// The condition of type `type_`, if the status has it.
pub fn find_condition<'a>(status: &'a PostgresClusterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Whether condition `type_` is there with status `True`.
pub fn is_true(status: &PostgresClusterStatus, type_: &str) -> bool {
    find_condition(status, type_).is_some_and(|c| c.status == "True")
}

/// Sets condition `type_` in `conds`, keeping its `lastTransitionTime` unless the status changed.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let previous = conds.iter().position(|c| c.type_ == type_);
    let last_transition_time = match previous.map(|i| &conds[i]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(now),
    };
    let new = Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conds[i] = new,
        None => conds.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_flips() {
        let mut s = PostgresClusterStatus::default();
        set_condition(
            &mut s.conditions,
            "Ready",
            false,
            "A",
            "a".into(),
            None,
            t(0),
        );
        set_condition(
            &mut s.conditions,
            "Ready",
            false,
            "B",
            "b".into(),
            Some(2),
            t(5),
        );
        let c = find_condition(&s, "Ready").unwrap();
        assert_eq!((c.reason.as_str(), c.message.as_str()), ("B", "b"));
        assert_eq!(c.last_transition_time, Time(t(0)));
        assert!(!is_true(&s, "Ready"));
        set_condition(
            &mut s.conditions,
            "Ready",
            true,
            "C",
            "c".into(),
            Some(2),
            t(9),
        );
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(
            find_condition(&s, "Ready").unwrap().last_transition_time,
            Time(t(9))
        );
        assert!(is_true(&s, "Ready"));
        assert!(!is_true(&s, "Paused"), "absent is not true");
    }
}
