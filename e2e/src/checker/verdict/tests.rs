//! The verdict as a whole: a clean recording passes, each broken property and requirement fails it.

use super::{test_samples::*, *};

fn recording() -> Recording {
    let m = members(2);
    let mut samples = every("pg-0@a", 0, 1000, "w");
    samples.extend(every("pg-0@a", 1000, 6000, "r"));
    samples.extend(every("pg-1@b", 0, 1200, "r"));
    samples.extend(every("pg-1@b", 1200, 6000, "w"));
    let acks: Vec<Ack> = (0..50)
        .map(|i| Ack {
            id: i,
            at_us: i as i64 * 100_000,
            server: "x".into(),
        })
        .collect();
    let mut timeline = Timeline::default();
    timeline.push(900_000, "fault: kill pg-0");
    Recording {
        scenario: "kill-primary".into(),
        mode: "sync".into(),
        members: m,
        samples,
        acks,
        in_doubt: vec![50],
        final_ids: (0..50).collect(),
        final_primary: Some("pg-1".into()),
        timeline,
        fault_at_us: 900_000,
        healed_at_us: 900_000,
        writes_until_us: 5_000_000,
        end_us: 6_000_000,
        last_decisions: BTreeMap::new(),
        final_lease: Some(LeaseRecord {
            holder: Some("pg-1".into()),
            transitions: 2,
            ..LeaseRecord::default()
        }),
        requirements: vec![],
    }
}

#[test]
fn a_clean_recording_passes() {
    let v = Verdict::new(
        &recording(),
        Expectations {
            max_lost: Some(0),
            converge_within_us: 10_000_000,
            rw_unreachable_within_us: 1_000_000,
        },
    );
    assert!(v.passed(), "{}", v.table());
    assert_eq!(v.rw_resumed_us, Some(0), "writes never stopped");
    assert_eq!(
        v.converge_us.map(|t| t / 100_000),
        Some(3),
        "converged ~0.3 s after the fault"
    );
    assert_eq!(v.in_doubt_kept, 0);
    assert!(v.table().contains("PASS"));
    let json = serde_json::to_string(&v).unwrap();
    let back: Verdict = serde_json::from_str(&json).unwrap();
    assert_eq!(back, v);
}

#[test]
fn each_broken_property_fails_the_verdict() {
    let expect = Expectations {
        max_lost: Some(0),
        converge_within_us: 10_000_000,
        rw_unreachable_within_us: 1_000_000,
    };

    let mut lost = recording();
    lost.final_ids.remove(&7);
    let v = Verdict::new(&lost, expect);
    assert_eq!(v.lost, vec![7]);
    assert!(!v.passed());
    assert!(v.table().contains("lost ids: 7"), "{}", v.table());
    assert!(
        v.table().contains("fault: kill pg-0"),
        "a failing verdict prints the timeline"
    );
    // The same loss in async mode is reported, not failed.
    assert!(
        Verdict::new(
            &lost,
            Expectations {
                max_lost: None,
                ..expect
            }
        )
        .passed()
    );

    let mut split = recording();
    split.samples.extend(every("pg-0@a", 3000, 3500, "w"));
    split.samples.retain(|s| {
        !(s.stream == "pg-0@a" && (3000..3500).contains(&(s.t_us / 1000)) && !s.writable)
    });
    let v = Verdict::new(&split, expect);
    assert_eq!(v.split_brain.len(), 1, "{:?}", v.split_brain);
    assert!(!v.passed());

    let slow = Verdict::new(
        &recording(),
        Expectations {
            converge_within_us: 100_000,
            ..expect
        },
    );
    assert!(!slow.passed());
    assert!(
        slow.failures[0].contains("bound 100 ms"),
        "{:?}",
        slow.failures
    );

    let with = |r: Requirement| {
        let mut rec = recording();
        rec.requirements = vec![r];
        Verdict::new(&rec, expect)
    };
    let gap = with(Requirement::WriteGapAtMost(50_000));
    assert!(
        gap.failures
            .iter()
            .any(|f| f.starts_with("writes unavailable for")),
        "{:?}",
        gap.failures
    );
    let ok = with(Requirement::WriteGapAtMost(1_000_000));
    assert!(ok.passed(), "{:?}", ok.failures);

    // -rw acknowledges nothing from 1 s to 5 s while pg-1 accepts writes from 1.2 s on.
    let mut dark = recording();
    dark.acks
        .retain(|a| a.at_us < 1_000_000 || a.at_us >= 4_000_000);
    let v = Verdict::new(&dark, expect);
    assert_eq!(v.rw_resumed_us, Some(0), "an ack at 0.9 s, the heal");
    let u = v.rw_unreachable.clone().expect("a span");
    assert_eq!(u.member, "pg-1");
    assert!(
        v.failures
            .iter()
            .any(|f| f.starts_with("pg-1 accepted writes for 27")
                || f.starts_with("pg-1 accepted writes for 2")),
        "{:?}",
        v.failures
    );
    dark.acks.retain(|a| a.at_us < 900_000);
    let v = Verdict::new(&dark, expect);
    assert!(
        v.failures
            .iter()
            .any(|f| f == "writes through -rw never resumed after the heal"),
        "{:?}",
        v.failures
    );
    let mut late = recording();
    late.acks
        .retain(|a| a.at_us < 900_000 || a.at_us >= 3_000_000);
    let v = Verdict::new(
        &late,
        Expectations {
            converge_within_us: 2_000_000,
            rw_unreachable_within_us: 10_000_000,
            ..expect
        },
    );
    assert_eq!(v.rw_resumed_us, Some(2_100_000));
    assert!(
        v.failures
            .iter()
            .any(|f| f.starts_with("writes through -rw resumed 2100 ms after the heal")),
        "{:?}",
        v.failures
    );

    let mut never = recording();
    never.samples.retain(|s| s.stream != "pg-1@b");
    never.final_primary = None;
    never.final_ids.clear();
    let v = Verdict::new(&never, expect);
    assert!(
        v.lost.is_empty(),
        "no final primary: the loss is unknown, not every id"
    );
    assert!(
        v.table().contains("unknown (no final primary)"),
        "{}",
        v.table()
    );
    assert!(v.failures.iter().any(|f| f.contains("no final primary")));
    assert!(
        Verdict::new(&never, expect)
            .failures
            .iter()
            .any(|f| f.contains("never converged"))
    );
}

#[test]
fn each_requirement_is_checked_against_what_was_recorded() {
    let expect = Expectations {
        max_lost: Some(0),
        converge_within_us: 10_000_000,
        rw_unreachable_within_us: 1_000_000,
    };
    let check = |r: Requirement| {
        let mut rec = recording();
        rec.requirements = vec![r];
        Verdict::new(&rec, expect).failures
    };
    assert!(check(Requirement::FinalPrimary("pg-1".into())).is_empty());
    let moved = check(Requirement::FinalPrimary("pg-0".into()));
    assert!(moved[0].contains("moved again"), "{moved:?}");
    let lease = |holder: &str, transitions| Requirement::FinalLease {
        holder: holder.into(),
        transitions,
    };
    assert!(check(lease("pg-1", 2)).is_empty());
    assert_eq!(check(lease("pg-1", 3)).len(), 1, "one takeover too few");
    assert_eq!(check(lease("pg-0", 2)).len(), 1);
    // pg-1 first wrote at 1201 ms, 301 ms after the fault at 900 ms.
    let v = Verdict::new(&recording(), expect);
    assert_eq!(v.takeover_us, Some(301_000));
    assert!(check(Requirement::TakeoverWithin(400_000)).is_empty());
    let slow = check(Requirement::TakeoverWithin(300_000));
    assert!(slow[0].contains("301 ms after the fault"), "{slow:?}");
    assert!(
        v.table().contains("holder pg-1, transitions 2"),
        "{}",
        v.table()
    );
}
